//! A whole executable, as `schedlat go-stats` / the daemon meet it through /proc/PID/exe:
//! the daemon's cheap .go.buildinfo check, version, layouts, both from a byte slice and
//! through the on-demand ReadCache the daemon uses. Seeds: the Go fixtures (plain, PIE, stripped; Go 1.19 and current).
#![no_main]

use libfuzzer_sys::fuzz_target;
use schedlat::{goruntime, gowatch};

fuzz_target!(|data: &[u8]| {
    let _ = gowatch::has_buildinfo_section_at(|buf, off| {
        let src = usize::try_from(off)
            .ok()
            .and_then(|o| data.get(o..o.checked_add(buf.len())?))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    });
    let _ = goruntime::go_version(data);
    let slice = goruntime::analyse(data);
    let cached = goruntime::analyse(&object::ReadCache::new(std::io::Cursor::new(data)));
    // Both readers see the same bytes: they must agree.
    assert_eq!(slice.as_ref().ok(), cached.as_ref().ok());
});
