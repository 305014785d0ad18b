//! DWARF alone, where the layout code does most of its work: input is
//! `u32 LE length of .debug_abbrev | .debug_abbrev | .debug_info` (uncompressed). Seeds: the
//! fixtures' runtime compilation units, cut out by `cargo xtask fuzz`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use schedlat::goruntime;

fuzz_target!(|data: &[u8]| {
    let Some((len, rest)) = data.split_first_chunk::<4>() else {
        return;
    };
    let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
    let (abbrev, info) = rest.split_at(len);
    // Both bucket layouts' version checks.
    for version in ["go1.19.8", "go1.27.3"] {
        let _ = goruntime::layouts_from_dwarf(info, abbrev, version);
    }
});
