//! `schedlat daemon --config FILE`: TOML with validation. Seeds: deploy/schedlat.toml and
//! the kubernetes ConfigMap's copy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use schedlat::config::DaemonConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = DaemonConfig::parse(text, "fuzz.toml");
    }
});
