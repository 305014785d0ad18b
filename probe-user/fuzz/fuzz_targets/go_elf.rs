//! A whole executable, as `schedlat go-stats` / the daemon meet it through /proc/PID/exe:
//! the daemon's cheap Go check (.go.buildinfo or .gopclntab), version (from runtime.buildVersion
//! when the build info was removed), layouts (and the capture's uprobe plan), both from a byte
//! slice and through the on-demand ReadCache the daemon uses. Seeds: the Go fixtures (plain,
//! PIE, stripped, without build info; every Go release of the fixtures).
#![no_main]

use std::{
    cell::Cell,
    io::{Cursor, Read, Seek, SeekFrom},
    rc::Rc,
};

use libfuzzer_sys::fuzz_target;
use schedlat::{go::watch, goruntime};

/// Reads through ReadCache, which keeps every distinct range it reads: a parser that asks
/// for the same bytes again and again (one read per name) multiplies a small file into
/// hundreds of MB. Each part we parse is read once, so about ten file-sized reads at most.
const MAX_READ_PER_BYTE: u64 = 16;

struct Counting {
    inner: Cursor<Vec<u8>>,
    read: Rc<Cell<u64>>,
}

impl Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

impl Seek for Counting {
    fn seek(&mut self, p: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(p)
    }
}

fuzz_target!(|data: &[u8]| {
    let _ = watch::has_go_section_at(|buf, off| {
        let src = usize::try_from(off)
            .ok()
            .and_then(|o| data.get(o..o.checked_add(buf.len())?))
            .ok_or(std::io::ErrorKind::UnexpectedEof)?;
        buf.copy_from_slice(src);
        Ok(())
    });
    let _ = goruntime::go_version(data);
    // The capture's per-event plan: symbols, DWARF constants and disassembly of casgstatus.
    let _ = goruntime::events::plan(data);
    let slice = goruntime::analyse(data);
    let read = Rc::new(Cell::new(0));
    let cache = object::ReadCache::new(Counting {
        inner: Cursor::new(data.to_vec()),
        read: read.clone(),
    });
    let cached = goruntime::analyse(&cache);
    // Both readers see the same bytes: they must agree.
    assert_eq!(slice.as_ref().ok(), cached.as_ref().ok());
    let limit = MAX_READ_PER_BYTE * data.len() as u64 + (64 << 10);
    assert!(
        read.get() <= limit,
        "{} bytes read through ReadCache for a {}-byte input",
        read.get(),
        data.len()
    );
});
