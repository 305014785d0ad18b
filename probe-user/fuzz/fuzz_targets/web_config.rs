//! `--web.config.file`: exporter-toolkit YAML (TLS, basic auth users and bcrypt hashes), and
//! the `Authorization: Basic` header every /metrics request brings. Seeds: deploy/web.yml.
#![no_main]

use libfuzzer_sys::fuzz_target;
use schedlat::http::{WebConfig, parse_basic};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        // A base that does not exist: parsing never opens the files it names.
        let _ = WebConfig::parse(text, "fuzz.yml", std::path::Path::new("/nonexistent"));
    }
    if let Ok(v) = http::HeaderValue::from_bytes(data) {
        let _ = parse_basic(&v);
    }
});
