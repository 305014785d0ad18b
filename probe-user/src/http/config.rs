//! Optional TLS and basic auth for the daemon's HTTP endpoint, configured by a YAML file in
//! the format of the Prometheus exporters' web config (exporter-toolkit's `web-config.yml`):
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt        # relative paths are relative to this file's directory
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert   # optional
//!   client_ca_file: clients-ca.crt                 # required when verifying clients
//!   min_version: TLS12                             # optional: TLS12 (default) or TLS13
//!   max_version: TLS13                             # optional
//! basic_auth_users:
//!   prometheus: $2y$10$...                         # bcrypt hash (htpasswd -nBC 10 USER)
//! ```
//!
//! Basic auth protects /metrics only; /healthz stays open (it says "ok" and nothing else) so
//! liveness probes need no credentials. TLS, and client certificates when required, cover
//! the whole port, /healthz included.
//!
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::model::{ClassOf, Classify, ErrorClass};

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("cannot read web config file {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("invalid web config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid web config {path}: {key}: {value}: {fix}")]
    Value {
        path: String,
        key: String,
        value: String,
        fix: String,
    },
    #[error("web config {path}: {key} {file}: {message}")]
    File {
        path: String,
        key: &'static str,
        file: String,
        message: String,
    },
}

impl Classify for WebConfigError {
    /// A web config the user wrote or pointed at.
    fn class(&self) -> ErrorClass {
        ErrorClass::Usage
    }
}
inventory::submit!(ClassOf::of::<WebConfigError>());

/// Deepest flow nesting accepted. The YAML scanner (unsafe-libyaml, a port of libyaml) takes
/// time quadratic in the open flow collections: 64,000 unclosed `[` took 10 s here.
const MAX_FLOW_DEPTH: usize = 64;

/// The flow nesting depth of `text` if it exceeds `max` ([ and { outside quoted scalars and
/// comments; a rough YAML lexer, enough to bound the real parser's work).
fn flow_depth_over(text: &str, max: usize) -> Option<usize> {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut chars = text.chars().peekable();
    let mut prev = '\n';
    while let Some(c) = chars.next() {
        match c {
            '#' if prev.is_whitespace() => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                prev = '\n';
                continue;
            }
            '\'' => {
                // '' is an escaped quote inside single quotes.
                while let Some(c) = chars.next() {
                    if c == '\'' && chars.next_if_eq(&'\'').is_none() {
                        break;
                    }
                }
            }
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        _ => {}
                    }
                }
            }
            '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    (deepest > max).then_some(deepest)
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawWebConfig {
    tls_server_config: Option<RawTlsConfig>,
    #[serde(default)]
    basic_auth_users: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
struct RawTlsConfig {
    cert_file: PathBuf,
    key_file: PathBuf,
    #[serde(default)]
    client_auth_type: ClientAuth,
    client_ca_file: Option<PathBuf>,
    min_version: Option<TlsVersion>,
    max_version: Option<TlsVersion>,
}

/// exporter-toolkit's names (Go's tls.ClientAuthType).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
pub enum ClientAuth {
    #[default]
    NoClientCert,
    RequestClientCert,
    RequireAnyClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    TLS10,
    TLS11,
    TLS12,
    TLS13,
}

/// A parsed, validated web config (paths resolved; files not read yet).
#[derive(Clone, Debug, PartialEq)]
pub struct WebConfig {
    pub tls: Option<TlsSettings>,
    /// user -> bcrypt hash
    pub users: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TlsSettings {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_auth: ClientAuth,
    pub client_ca_file: Option<PathBuf>,
    /// Versions offered, oldest first (non-empty).
    pub versions: Vec<TlsVersion>,
}

impl WebConfig {
    pub fn from_file(path: &Path) -> Result<Self, WebConfigError> {
        let text = std::fs::read_to_string(path).map_err(|cause| WebConfigError::Read {
            path: path.display().to_string(),
            cause,
        })?;
        Self::parse(
            &text,
            &path.display().to_string(),
            path.parent().unwrap_or(Path::new(".")),
        )
    }

    /// Parse and validate; relative file paths are taken relative to `base` (the config's
    /// directory, as exporter-toolkit does).
    pub fn parse(text: &str, origin: &str, base: &Path) -> Result<Self, WebConfigError> {
        // An empty file is a valid, empty config (plain HTTP, no auth).
        let raw: RawWebConfig = if text.trim().is_empty() {
            RawWebConfig::default()
        } else if let Some(depth) = flow_depth_over(text, MAX_FLOW_DEPTH) {
            return Err(WebConfigError::Parse {
                path: origin.to_string(),
                message: format!(
                    "flow collections ([ ], {{ }}) nested {depth} deep, over {MAX_FLOW_DEPTH}: \
                     the web config needs none, write its keys as a plain YAML mapping"
                ),
            });
        } else {
            // The YAML error names unknown keys and has the line and column.
            serde_yaml_ng::from_str(text).map_err(|e| WebConfigError::Parse {
                path: origin.to_string(),
                message: e.to_string(),
            })?
        };
        let value = |key: &str, value: String, fix: &str| WebConfigError::Value {
            path: origin.to_string(),
            key: key.to_string(),
            value,
            fix: fix.to_string(),
        };
        let tls = match raw.tls_server_config {
            None => None,
            Some(t) => {
                let RawTlsConfig {
                    cert_file,
                    key_file,
                    client_auth_type,
                    client_ca_file,
                    min_version,
                    max_version,
                } = t;
                for (key, p) in [
                    ("tls_server_config.cert_file", &cert_file),
                    ("tls_server_config.key_file", &key_file),
                ] {
                    if p.as_os_str().is_empty() {
                        return Err(value(key, "\"\"".into(), "set the path of a PEM file"));
                    }
                }
                match client_auth_type {
                    ClientAuth::RequestClientCert | ClientAuth::RequireAnyClientCert => {
                        return Err(value(
                            "tls_server_config.client_auth_type",
                            format!("{client_auth_type:?}"),
                            "client certificates that are not verified are not supported: use \
                             VerifyClientCertIfGiven or RequireAndVerifyClientCert with client_ca_file",
                        ));
                    }
                    ClientAuth::VerifyClientCertIfGiven
                    | ClientAuth::RequireAndVerifyClientCert
                        if client_ca_file.is_none() =>
                    {
                        return Err(value(
                            "tls_server_config.client_ca_file",
                            "(missing)".into(),
                            "set client_ca_file to the CA that signs client certificates",
                        ));
                    }
                    ClientAuth::NoClientCert if client_ca_file.is_some() => {
                        return Err(value(
                            "tls_server_config.client_auth_type",
                            "NoClientCert".into(),
                            "client_ca_file is set but unused: set client_auth_type to \
                             RequireAndVerifyClientCert (or VerifyClientCertIfGiven), or remove client_ca_file",
                        ));
                    }
                    _ => {}
                }
                for (key, v) in [
                    ("tls_server_config.min_version", min_version),
                    ("tls_server_config.max_version", max_version),
                ] {
                    if matches!(v, Some(TlsVersion::TLS10 | TlsVersion::TLS11)) {
                        return Err(value(
                            key,
                            format!("{:?}", v.expect("matched")),
                            "TLS 1.0 and 1.1 are not supported: use TLS12 or TLS13",
                        ));
                    }
                }
                let min = min_version.unwrap_or(TlsVersion::TLS12);
                let max = max_version.unwrap_or(TlsVersion::TLS13);
                if min > max {
                    return Err(value(
                        "tls_server_config.min_version",
                        format!("{min:?} (max_version {max:?})"),
                        "min_version must not be above max_version",
                    ));
                }
                let versions = [TlsVersion::TLS12, TlsVersion::TLS13]
                    .into_iter()
                    .filter(|v| (min..=max).contains(v))
                    .collect();
                Some(TlsSettings {
                    cert_file: base.join(cert_file),
                    key_file: base.join(key_file),
                    client_auth: client_auth_type,
                    client_ca_file: client_ca_file.map(|p| base.join(p)),
                    versions,
                })
            }
        };
        for (user, hash) in &raw.basic_auth_users {
            if user.is_empty() || user.contains(':') {
                return Err(value(
                    "basic_auth_users",
                    format!("{user:?}"),
                    "user names must be non-empty and contain no ':'",
                ));
            }
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(value(
                    &format!("basic_auth_users.{user}"),
                    "(not shown)".into(),
                    "not a bcrypt hash: make one with `htpasswd -nBC 10 USER` (the part after ':')",
                ));
            }
        }
        Ok(Self {
            tls,
            users: raw.basic_auth_users,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A web config the user wrote is theirs to fix: exit 2.
    #[test]
    fn web_config_errors_are_usage() {
        let e = WebConfigError::Parse {
            path: "/etc/schedlat/web.yml".into(),
            message: "expected a mapping".into(),
        };
        assert_eq!(ErrorClass::of(&e.into()), ErrorClass::Usage);
    }

    fn parse(text: &str) -> Result<WebConfig, String> {
        WebConfig::parse(text, "/etc/schedlat/web.yml", Path::new("/etc/schedlat"))
            .map_err(|e| e.to_string())
    }

    // bcrypt("secret", cost 4), made with the bcrypt crate; cost 4 keeps the tests fast.
    fn hash_of(pw: &str) -> String {
        bcrypt::hash(pw, 4).unwrap()
    }

    #[test]
    fn empty_file_is_plain_http_without_auth() {
        for t in ["", "\n# nothing\n", "{}"] {
            let c = parse(t).unwrap();
            assert_eq!((c.tls, c.users.len()), (None, 0), "{t:?}");
        }
    }

    /// Found probing the web_config fuzz target with deep inputs: 64,000 unclosed `[` kept
    /// the YAML scanner busy 10 s (quadratic). Refused up front now, and quickly.
    #[test]
    fn deep_flow_nesting_is_refused_before_the_yaml_parser() {
        let t = std::time::Instant::now();
        let deep = format!("basic_auth_users: {}\n", "[".repeat(64_000));
        let e = parse(&deep).unwrap_err();
        assert!(
            e.contains("nested 64000 deep") && e.contains("plain YAML mapping"),
            "{e}"
        );
        assert!(
            t.elapsed() < std::time::Duration::from_secs(1),
            "{:?}",
            t.elapsed()
        );
        // Brackets in quoted scalars and comments do not count; flat flow style is fine.
        let quoted = format!(
            "# {}\nbasic_auth_users: {{\"a[{}\": '{}'}}\n",
            "[".repeat(100),
            "[".repeat(100),
            "{''".repeat(100)
        );
        assert_eq!(flow_depth_over(&quoted, MAX_FLOW_DEPTH), None);
        let e = parse(&quoted).unwrap_err();
        assert!(e.contains("not a bcrypt hash"), "{e}");
        let flat = format!("basic_auth_users: [{}]\n", "[],".repeat(10_000));
        assert_eq!(flow_depth_over(&flat, MAX_FLOW_DEPTH), None);
        assert_eq!(flow_depth_over(&"[".repeat(65), MAX_FLOW_DEPTH), Some(65));
    }

    #[test]
    fn full_config_resolves_relative_paths() {
        let h = hash_of("secret");
        let c = parse(&format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: /abs/server.key\n  \
             client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n  \
             min_version: TLS13\nbasic_auth_users:\n  prom: '{h}'\n"
        ))
        .unwrap();
        let t = c.tls.unwrap();
        assert_eq!(t.cert_file, Path::new("/etc/schedlat/server.crt"));
        assert_eq!(t.key_file, Path::new("/abs/server.key"));
        assert_eq!(t.client_ca_file.unwrap(), Path::new("/etc/schedlat/ca.crt"));
        assert_eq!(t.client_auth, ClientAuth::RequireAndVerifyClientCert);
        assert_eq!(t.versions, vec![TlsVersion::TLS13]);
        assert_eq!(c.users["prom"], h);
        let c = parse("tls_server_config:\n  cert_file: a\n  key_file: b\n").unwrap();
        assert_eq!(
            c.tls.unwrap().versions,
            vec![TlsVersion::TLS12, TlsVersion::TLS13]
        );
    }

    #[test]
    fn bad_configs_name_the_key_and_the_fix() {
        for (text, needles) in [
            (
                "tls_server_conifg: {}\n",
                &["tls_server_conifg", "tls_server_config"][..],
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [x]\n",
                &["cipher_suites", "line 4"],
            ),
            ("tls_server_config:\n  key_file: b\n", &["cert_file"]),
            ("tls_server_config:\n  cert_file: a\n", &["key_file"]),
            (
                "tls_server_config:\n  cert_file: ''\n  key_file: b\n",
                &["tls_server_config.cert_file", "PEM"],
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: Maybe\n",
                &["Maybe", "RequireAndVerifyClientCert"],
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAnyClientCert\n",
                &["client_auth_type", "RequireAndVerifyClientCert"],
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_auth_type: RequireAndVerifyClientCert\n",
                &["client_ca_file", "set client_ca_file"],
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n",
                &["client_auth_type", "NoClientCert"],
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS11\n",
                &["min_version", "TLS12 or TLS13"],
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS13\n  max_version: TLS12\n",
                &["min_version", "max_version"],
            ),
            (
                "tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: SSL3\n",
                &["SSL3", "TLS13"],
            ),
            (
                "basic_auth_users:\n  prom: plaintext\n",
                &["basic_auth_users.prom", "htpasswd"],
            ),
            (
                "basic_auth_users:\n  'a:b': x\n",
                &["basic_auth_users", "':'"],
            ),
            (
                "basic_auth_users: [a, b]\n",
                &["basic_auth_users", "line 1"],
            ),
            ("- just\n- a list\n", &["web.yml"]),
            (
                "tls_server_config: {cert_file: [1], key_file: b}\n",
                &["line 1"],
            ),
        ] {
            let e = parse(text).expect_err(text);
            assert!(e.contains("/etc/schedlat/web.yml"), "{e}");
            for n in needles {
                assert!(e.contains(n), "{text:?}: error lacks {n:?}: {e}");
            }
        }
    }

    #[test]
    fn deploy_example_is_valid() {
        let c = WebConfig::parse(
            include_str!("../../../deploy/web.yml"),
            "deploy/web.yml",
            Path::new("/etc/schedlat"),
        )
        .unwrap();
        let t = c.tls.unwrap();
        assert_eq!(t.cert_file, Path::new("/etc/schedlat/tls/server.crt"));
        assert_eq!(t.client_auth, ClientAuth::NoClientCert);
        assert!(c.users.contains_key("prometheus"));
    }
}
