//! A whole executable, as `schedlat go-stats` / the daemon meet it through /proc/PID/exe:
//! version, layouts, both from a byte slice and through the on-demand ReadCache the daemon
//! uses. Seeds: the Go fixtures (plain, PIE, stripped; Go 1.19 and current).
#![no_main]

use libfuzzer_sys::fuzz_target;
use schedlat::goruntime;

fuzz_target!(|data: &[u8]| {
    let _ = goruntime::go_version(data);
    let slice = goruntime::analyse(data);
    let cached = goruntime::analyse(&object::ReadCache::new(std::io::Cursor::new(data)));
    // Both readers see the same bytes: they must agree.
    assert_eq!(slice.as_ref().ok(), cached.as_ref().ok());
});
