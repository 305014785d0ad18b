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
//! Certificate, key and client CA are re-read when they change ([`TlsReloader`]), so renewed
//! certificates need no restart. Failed password checks are rate limited per client address
//! and in total ([`FailureLimiter`]): each costs a bcrypt computation.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{ConnectInfo, Request, State},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use prometheus::proto::{MetricFamily, MetricType};
use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use serde::Deserialize;
use tokio::{net::TcpStream, sync::mpsc};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tracing::{debug, info, warn};

use crate::exporter::metrics::{counter, family, gauge, label};

#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    #[error("cannot read web config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
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
        let text = std::fs::read_to_string(path).map_err(|source| WebConfigError::Read {
            path: path.display().to_string(),
            source,
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

    /// The rustls server config, reading the certificate and key files (exit 2 naming the
    /// file when one is missing or not PEM).
    pub fn tls_config(&self, origin: &str) -> Result<Option<Arc<ServerConfig>>, WebConfigError> {
        self.tls
            .as_ref()
            .map(|t| t.server_config(origin))
            .transpose()
    }
}

impl TlsSettings {
    /// The files the server config is built from (certificate, key, client CA).
    fn files(&self) -> Vec<&Path> {
        let mut v = vec![self.cert_file.as_path(), self.key_file.as_path()];
        v.extend(self.client_ca_file.as_deref());
        v
    }

    /// Reads the certificate, key and client CA files and builds the rustls server config;
    /// errors name the key, the file and the fix.
    pub fn server_config(&self, origin: &str) -> Result<Arc<ServerConfig>, WebConfigError> {
        let t = self;
        let file_err = |key, file: &Path, message: String| WebConfigError::File {
            path: origin.to_string(),
            key,
            file: file.display().to_string(),
            message,
        };
        let read = |key, file: &Path| {
            std::fs::read(file).map_err(|e| {
                file_err(
                    key,
                    file,
                    format!(
                        "cannot read it: {e}; fix the path (relative paths are relative to the \
                         web config's directory) or the file's permissions"
                    ),
                )
            })
        };
        let pem_certs = |key, file: &Path| -> Result<Vec<CertificateDer<'static>>, _> {
            let pem = read(key, file)?;
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| file_err(key, file, format!("not a PEM certificate file: {e}")))?;
            if certs.is_empty() {
                return Err(file_err(
                    key,
                    file,
                    "holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
                ));
            }
            Ok(certs)
        };
        let certs = pem_certs("tls_server_config.cert_file", &t.cert_file)?;
        let key_pem = read("tls_server_config.key_file", &t.key_file)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            file_err(
                "tls_server_config.key_file",
                &t.key_file,
                format!("holds no PEM private key ({e})"),
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: Vec<&'static rustls::SupportedProtocolVersion> = t
            .versions
            .iter()
            .map(|v| match v {
                TlsVersion::TLS13 => &rustls::version::TLS13,
                _ => &rustls::version::TLS12,
            })
            .collect();
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| file_err("tls_server_config", Path::new(""), e.to_string()))?;
        let builder =
            match (&t.client_ca_file, t.client_auth) {
                (Some(ca), auth) => {
                    let mut roots = RootCertStore::empty();
                    for c in pem_certs("tls_server_config.client_ca_file", ca)? {
                        roots.add(c).map_err(|e| {
                            file_err("tls_server_config.client_ca_file", ca, e.to_string())
                        })?;
                    }
                    let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                    let v = if auth == ClientAuth::VerifyClientCertIfGiven {
                        v.allow_unauthenticated()
                    } else {
                        v
                    };
                    builder.with_client_cert_verifier(v.build().map_err(|e| {
                        file_err("tls_server_config.client_ca_file", ca, e.to_string())
                    })?)
                }
                (None, _) => builder.with_no_client_auth(),
            };
        let mut cfg = builder.with_single_cert(certs, key).map_err(|e| {
            file_err(
                "tls_server_config.key_file",
                &t.key_file,
                format!("does not go with cert_file {}: {e}", t.cert_file.display()),
            )
        })?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

// ------------------------------------------------------------------------- web metrics

/// Why a request to /metrics was refused (`reason` label of schedlat_web_auth_failures_total).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthFailure {
    /// No `Authorization: Basic` header (or a malformed one): 401, no password check.
    NoCredentials,
    /// A password check (bcrypt) that failed: 401.
    WrongCredentials,
    /// Too many failed checks from the client's address or in total: 429, no password check.
    RateLimited,
}

impl AuthFailure {
    const ALL: [Self; 3] = [
        Self::NoCredentials,
        Self::WrongCredentials,
        Self::RateLimited,
    ];
    fn name(self) -> &'static str {
        match self {
            Self::NoCredentials => "no_credentials",
            Self::WrongCredentials => "wrong_credentials",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// Counters of the web layer, exported with the daemon's metrics.
#[derive(Debug, Default)]
pub struct WebStats {
    basic_auth: bool,
    tls: bool,
    auth_failures: [AtomicU64; 3],
    tls_reloads_ok: AtomicU64,
    tls_reloads_failed: AtomicU64,
    /// The files on disk changed and could not be loaded: the previous certificate is served.
    tls_stale: AtomicBool,
}

impl WebStats {
    pub fn new(basic_auth: bool, tls: bool) -> Arc<Self> {
        Arc::new(Self {
            basic_auth,
            tls,
            ..Self::default()
        })
    }

    pub fn count_auth_failure(&self, why: AuthFailure) {
        self.auth_failures[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn auth_failures(&self, why: AuthFailure) -> u64 {
        self.auth_failures[why as usize].load(Ordering::Relaxed)
    }

    /// Only the families of what is configured, each with every label value from the start
    /// (so rate() sees the first failure).
    pub fn families(&self) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        if self.basic_auth {
            out.extend(family(
                "schedlat_web_auth_failures_total",
                "Requests to /metrics refused: no_credentials and wrong_credentials got 401, \
                 rate_limited got 429 without a password check (too many failed checks).",
                MetricType::COUNTER,
                AuthFailure::ALL
                    .iter()
                    .map(|&r| {
                        counter(
                            vec![label("reason", r.name())],
                            self.auth_failures(r) as f64,
                        )
                    })
                    .collect(),
            ));
        }
        if self.tls {
            out.extend(family(
                "schedlat_web_tls_reloads_total",
                "Reloads of the TLS certificate, key and client CA after their files changed, by result.",
                MetricType::COUNTER,
                vec![
                    counter(
                        vec![label("result", "success")],
                        self.tls_reloads_ok.load(Ordering::Relaxed) as f64,
                    ),
                    counter(
                        vec![label("result", "error")],
                        self.tls_reloads_failed.load(Ordering::Relaxed) as f64,
                    ),
                ],
            ));
            out.extend(family(
                "schedlat_web_tls_reload_failing",
                "1 while the TLS files on disk cannot be loaded and the previous certificate is still served.",
                MetricType::GAUGE,
                vec![gauge(
                    vec![],
                    f64::from(u8::from(self.tls_stale.load(Ordering::Relaxed))),
                )],
            ));
        }
        out
    }
}

// ------------------------------------------------------------------------- TLS reload

/// The TLS files are checked for changes at most this often, when a connection arrives.
const TLS_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// A file's version without reading it: a rename over it (new inode), a rewrite in place
/// (mtime, ctime, size) and a Kubernetes secret update (the symlink resolves to another file)
/// all change it. None: it cannot be stat'ed now (e.g. in the middle of a rotation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

fn stamp(p: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(p).ok()?;
    Some(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
        ctime: (m.ctime(), m.ctime_nsec()),
    })
}

/// The TLS server config, rebuilt when its files change, so a renewed certificate is served
/// without a restart (exporter-toolkit re-reads them per handshake; this stats them at most
/// once per second and reads them only when they changed). New files that do not load
/// (half-written, key not matching, unreadable) are logged and counted, and the previous
/// certificate stays in use until the files change again.
pub struct TlsReloader {
    settings: TlsSettings,
    origin: String,
    stats: Arc<WebStats>,
    state: Mutex<ReloadState>,
}

struct ReloadState {
    config: Arc<ServerConfig>,
    /// Stamps of the files at the last load attempt, good or bad: a bad set is retried only
    /// once it changes, not every second.
    stamps: Vec<Option<FileStamp>>,
    next_check: Instant,
}

impl TlsReloader {
    /// Loads the files now: at start a bad file is an error (exit 2).
    pub fn new(
        settings: TlsSettings,
        origin: String,
        stats: Arc<WebStats>,
    ) -> Result<Self, WebConfigError> {
        // Stamps before reading: a change during the read is seen at the next check.
        let stamps = settings.files().into_iter().map(stamp).collect();
        let config = settings.server_config(&origin)?;
        Ok(Self {
            settings,
            origin,
            stats,
            state: Mutex::new(ReloadState {
                config,
                stamps,
                next_check: Instant::now() + TLS_CHECK_INTERVAL,
            }),
        })
    }

    /// The config for a new connection (reloaded first if the files changed).
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current_at(Instant::now())
    }

    fn current_at(&self, now: Instant) -> Arc<ServerConfig> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now >= st.next_check {
            st.next_check = now + TLS_CHECK_INTERVAL;
            let stamps: Vec<_> = self.settings.files().into_iter().map(stamp).collect();
            if stamps != st.stamps {
                st.stamps = stamps;
                self.reload(&mut st);
            }
        }
        st.config.clone()
    }

    fn reload(&self, st: &mut ReloadState) {
        match self.settings.server_config(&self.origin) {
            Ok(c) => {
                st.config = c;
                self.stats.tls_reloads_ok.fetch_add(1, Ordering::Relaxed);
                self.stats.tls_stale.store(false, Ordering::Relaxed);
                info!(cert_file = %self.settings.cert_file.display(), "TLS files changed: reloaded");
            }
            Err(e) => {
                self.stats
                    .tls_reloads_failed
                    .fetch_add(1, Ordering::Relaxed);
                self.stats.tls_stale.store(true, Ordering::Relaxed);
                warn!(
                    error = %e,
                    "TLS files changed but do not load: still serving the previous certificate; \
                     fix the files (they are tried again when they change)"
                );
            }
        }
    }
}

// ------------------------------------------------------------------------- basic auth

/// Successful verifications remembered, at most (bcrypt costs ~50-250 ms per check by design;
/// a scraper sends the same credentials every time).
const AUTH_CACHE_MAX: usize = 256;

pub struct BasicAuth {
    users: HashMap<String, String>,
    /// SHA-256 of (user, password) pairs that verified: the plaintext is never kept.
    cache: Mutex<HashSet<[u8; 32]>>,
    /// Checked for unknown users, so their answer takes as long as a wrong password.
    dummy_hash: String,
    limiter: FailureLimiter,
    stats: Arc<WebStats>,
}

impl BasicAuth {
    /// None when there are no users (auth off).
    pub fn new(users: &BTreeMap<String, String>, stats: Arc<WebStats>) -> Option<Arc<Self>> {
        if users.is_empty() {
            return None;
        }
        let cost = users
            .values()
            .filter_map(|h| h.parse::<bcrypt::HashParts>().ok())
            .map(|p| p.get_cost())
            .max()
            .unwrap_or(bcrypt::DEFAULT_COST);
        let dummy_hash = bcrypt::hash("schedlat-no-such-user", cost).expect("valid bcrypt cost");
        Some(Arc::new(Self {
            users: users.clone().into_iter().collect(),
            cache: Mutex::new(HashSet::new()),
            dummy_hash,
            limiter: FailureLimiter::new(),
            stats,
        }))
    }

    fn cache_key(user: &str, password: &str) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(user.as_bytes());
        ctx.update(&[0]);
        ctx.update(password.as_bytes());
        ctx.finish()
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes")
    }

    /// Verified before (cheap: one SHA-256).
    fn is_cached(&self, user: &str, password: &str) -> bool {
        let key = Self::cache_key(user, password);
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key)
    }

    /// The bcrypt check (constant-time compare); successes are cached, so every wrong guess
    /// pays the full cost.
    fn check(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match self.users.get(user) {
            Some(h) => (h.as_str(), true),
            None => (self.dummy_hash.as_str(), false),
        };
        let ok = bcrypt::verify(password, hash).unwrap_or(false) && known;
        if ok {
            remember(
                &mut self.cache.lock().unwrap_or_else(|e| e.into_inner()),
                Self::cache_key(user, password),
            );
        }
        ok
    }

    pub fn verify(&self, user: &str, password: &str) -> bool {
        self.is_cached(user, password) || self.check(user, password)
    }

    #[cfg(test)]
    fn cached(&self) -> usize {
        self.cache.lock().unwrap().len()
    }
}

/// Bounded: when full, forget an arbitrary entry (it is re-verified on its next use).
fn remember(cache: &mut HashSet<[u8; 32]>, key: [u8; 32]) {
    if cache.len() >= AUTH_CACHE_MAX && !cache.contains(&key) {
        if let Some(k) = cache.iter().next().copied() {
            cache.remove(&k);
        }
    }
    cache.insert(key);
}

/// Failed password checks allowed per client address: a burst of 5, then 2 per second.
const PER_CLIENT_BURST: f64 = 5.0;
const PER_CLIENT_RATE: f64 = 2.0;
/// And from all addresses together (an attacker may have many, e.g. an IPv6 range): at
/// bcrypt cost 10 each check is ~50-100 ms of CPU, so this caps wrong guesses at about one CPU.
const GLOBAL_BURST: f64 = 10.0;
const GLOBAL_RATE: f64 = 10.0;
/// Client addresses tracked at most. Full buckets are forgotten first (they hold nothing);
/// an address that finds no room is limited by the global budget alone.
const MAX_CLIENTS: usize = 4096;

/// A token bucket: one token per failed check, refilled at `rate` per second up to `burst`.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            at: now,
        }
    }
    fn refill(&mut self, now: Instant, burst: f64, rate: f64) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.at = now;
    }
    /// Time until a token is there.
    fn wait(&self, rate: f64) -> Duration {
        Duration::from_secs_f64(((1.0 - self.tokens) / rate).max(0.0))
    }
}

/// Bounds what failed logins cost: each password check is reserved here first, and given
/// back if it succeeds, so only failures count against a client and the total. Credentials
/// that verified before (cached) never reach it: a scraper with the right password keeps
/// working while someone else's guesses are refused.
pub struct FailureLimiter {
    state: Mutex<LimiterState>,
}

struct LimiterState {
    global: Bucket,
    clients: HashMap<IpAddr, Bucket>,
}

impl FailureLimiter {
    fn new() -> Self {
        Self {
            state: Mutex::new(LimiterState {
                global: Bucket::full(GLOBAL_BURST, Instant::now()),
                clients: HashMap::new(),
            }),
        }
    }

    /// Takes a token from the client's and the global budget for one password check, or
    /// says how long until one is there.
    fn reserve(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let LimiterState { global, clients } = &mut *st;
        global.refill(now, GLOBAL_BURST, GLOBAL_RATE);
        if !clients.contains_key(&ip) && clients.len() >= MAX_CLIENTS {
            clients.retain(|_, b| {
                b.refill(now, PER_CLIENT_BURST, PER_CLIENT_RATE);
                b.tokens < PER_CLIENT_BURST
            });
        }
        let client = if clients.len() < MAX_CLIENTS || clients.contains_key(&ip) {
            let b = clients
                .entry(ip)
                .or_insert_with(|| Bucket::full(PER_CLIENT_BURST, now));
            b.refill(now, PER_CLIENT_BURST, PER_CLIENT_RATE);
            Some(b)
        } else {
            None
        };
        let client_wait = client
            .as_ref()
            .filter(|b| b.tokens < 1.0)
            .map(|b| b.wait(PER_CLIENT_RATE));
        let global_wait = (global.tokens < 1.0).then(|| global.wait(GLOBAL_RATE));
        if let Some(w) = client_wait.into_iter().chain(global_wait).max() {
            return Err(w);
        }
        if let Some(b) = client {
            b.tokens -= 1.0;
        }
        global.tokens -= 1.0;
        Ok(())
    }

    /// The check succeeded: it was no failure.
    fn refund(&self, ip: IpAddr) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.global.tokens = (st.global.tokens + 1.0).min(GLOBAL_BURST);
        if let Some(b) = st.clients.get_mut(&ip) {
            b.tokens = (b.tokens + 1.0).min(PER_CLIENT_BURST);
        }
    }

    #[cfg(test)]
    fn clients(&self) -> usize {
        self.state.lock().unwrap().clients.len()
    }
}

/// `Authorization: Basic base64(user:password)` -> (user, password).
pub fn parse_basic(v: &HeaderValue) -> Option<(String, String)> {
    let v = v.to_str().ok()?;
    let (scheme, b64) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let (u, p) = std::str::from_utf8(&raw).ok()?.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Basic realm=\"schedlat\"")],
        "Unauthorized\n",
    )
        .into_response()
}

/// Middleware: 401 with a Basic challenge unless the request carries valid credentials; 429
/// without checking them when its address (or everyone) failed too often lately.
pub async fn require_auth(
    State(auth): State<Arc<BasicAuth>>,
    req: Request,
    next: Next,
) -> Response {
    let Some((user, password)) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(parse_basic)
    else {
        auth.stats.count_auth_failure(AuthFailure::NoCredentials);
        debug!("request without credentials");
        return unauthorized();
    };
    if auth.is_cached(&user, &password) {
        return next.run(req).await;
    }
    // Requests served without a socket (unit tests) share the unspecified address.
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| {
            c.0.ip().to_canonical()
        });
    if let Err(wait) = auth.limiter.reserve(ip, Instant::now()) {
        auth.stats.count_auth_failure(AuthFailure::RateLimited);
        let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
        debug!(%ip, user, "too many failed logins: 429");
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, secs.to_string())],
            format!("Too many failed logins: retry in {secs} s\n"),
        )
            .into_response();
    }
    let checker = auth.clone();
    let u = user.clone();
    // bcrypt is slow on purpose: keep it off the async workers.
    let ok = tokio::task::spawn_blocking(move || checker.check(&u, &password))
        .await
        .unwrap_or(false);
    if ok {
        auth.limiter.refund(ip);
        return next.run(req).await;
    }
    auth.stats.count_auth_failure(AuthFailure::WrongCredentials);
    debug!(%ip, user, "wrong credentials");
    unauthorized()
}

// ------------------------------------------------------------------------- TLS listener

/// How long a client gets to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once, at most.
const MAX_HANDSHAKES: usize = 256;

/// An `axum::serve` listener that hands over connections once their TLS handshake is done.
/// Handshakes run in their own tasks, so a slow or silent client holds up no one else.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Must be called inside the tokio runtime.
    pub fn new(listener: tokio::net::TcpListener, tls: Arc<TlsReloader>) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        // E.g. out of file descriptors: back off instead of spinning.
                        warn!(error = %e, "accepting a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                // Bounded: a connection flood waits in the kernel's backlog, not in our memory.
                let Ok(permit) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                // A few stats at most once per second; files are read only when they changed.
                let acceptor = TlsAcceptor::from(tls.current());
                let tx = tx.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task never ends while the runtime lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            include_str!("../../deploy/web.yml"),
            "deploy/web.yml",
            Path::new("/etc/schedlat"),
        )
        .unwrap();
        let t = c.tls.unwrap();
        assert_eq!(t.cert_file, Path::new("/etc/schedlat/tls/server.crt"));
        assert_eq!(t.client_auth, ClientAuth::NoClientCert);
        assert!(c.users.contains_key("prometheus"));
    }

    #[test]
    fn missing_cert_names_the_file() {
        let c = parse("tls_server_config:\n  cert_file: /no/such.crt\n  key_file: /no/such.key\n")
            .unwrap();
        let e = c.tls_config("web.yml").unwrap_err().to_string();
        assert!(e.contains("/no/such.crt") && e.contains("cert_file"), "{e}");
    }

    #[test]
    fn basic_auth_verifies_caches_and_bounds_the_cache() {
        let users = BTreeMap::from([("prom".to_string(), hash_of("secret"))]);
        let a = BasicAuth::new(&users, WebStats::new(true, false)).unwrap();
        assert!(!a.verify("prom", "wrong"));
        assert!(!a.verify("nobody", "secret"));
        assert!(!a.verify("prom", ""));
        assert_eq!(a.cached(), 0, "failures are not cached");
        assert!(a.verify("prom", "secret"));
        assert!(a.verify("prom", "secret"));
        assert_eq!(a.cached(), 1);
        // A password that only differs after the cached one is still checked.
        assert!(!a.verify("prom", "secret2"));
        // Many other verified pairs: the cache stays bounded, and a pair it forgot still
        // verifies (the slow way).
        for i in 0..AUTH_CACHE_MAX * 2 {
            remember(
                &mut a.cache.lock().unwrap(),
                BasicAuth::cache_key("x", &i.to_string()),
            );
            assert!(a.cached() <= AUTH_CACHE_MAX);
        }
        assert!(a.verify("prom", "secret"));
        assert_eq!(a.cached(), AUTH_CACHE_MAX);
        assert!(BasicAuth::new(&BTreeMap::new(), WebStats::new(false, false)).is_none());
    }

    #[test]
    fn basic_header_parsing() {
        let h = |s: &str| parse_basic(&HeaderValue::from_str(s).unwrap());
        assert_eq!(
            h("Basic cHJvbTpzZTpjcmV0"),
            Some(("prom".into(), "se:cret".into()))
        );
        assert_eq!(h("basic cHJvbTo="), Some(("prom".into(), String::new())));
        assert_eq!(h("Bearer cHJvbTpzZWNyZXQ="), None);
        assert_eq!(h("Basic !!!"), None);
        assert_eq!(h("Basic cHJvbQ=="), None, "no colon");
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn failed_checks_are_limited_per_client_then_refill() {
        let l = FailureLimiter::new();
        let t0 = Instant::now();
        for i in 0..PER_CLIENT_BURST as usize {
            assert_eq!(l.reserve(ip(1), t0), Ok(()), "failure {i} of the burst");
        }
        let wait = l.reserve(ip(1), t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs_f64(1.0 / PER_CLIENT_RATE),
            "{wait:?}"
        );
        // Another client is not affected.
        assert_eq!(l.reserve(ip(2), t0), Ok(()));
        // Refilled at PER_CLIENT_RATE per second: one more check after 1/rate s, not two.
        let t1 = t0 + Duration::from_secs_f64(1.0 / PER_CLIENT_RATE);
        assert_eq!(l.reserve(ip(1), t1), Ok(()));
        assert!(l.reserve(ip(1), t1).is_err());
        // A successful check gives its token back: it was no failure.
        l.refund(ip(1));
        assert_eq!(l.reserve(ip(1), t1), Ok(()));
    }

    #[test]
    fn failed_checks_are_limited_in_total_across_clients() {
        let l = FailureLimiter::new();
        let t0 = Instant::now();
        let mut allowed = 0;
        for i in 0..100u8 {
            if l.reserve(ip(i), t0).is_ok() {
                allowed += 1;
            }
        }
        assert_eq!(
            allowed, GLOBAL_BURST as usize,
            "one check each from 100 addresses"
        );
        // A second later GLOBAL_RATE more, whoever asks.
        let t1 = t0 + Duration::from_secs(1);
        let allowed = (100..200u8)
            .filter(|&i| l.reserve(ip(i), t1).is_ok())
            .count();
        assert_eq!(allowed, GLOBAL_RATE as usize);
    }

    #[test]
    fn tracked_clients_are_bounded() {
        let l = FailureLimiter::new();
        let t0 = Instant::now();
        // Far more addresses than tracked, over time (the global budget refilled for each).
        for i in 0..(MAX_CLIENTS as u32 * 3) {
            let a = IpAddr::V6(std::net::Ipv6Addr::from(u128::from(i)));
            let now = t0 + Duration::from_secs(u64::from(i));
            assert_eq!(l.reserve(a, now), Ok(()), "{i}");
            assert!(l.clients() <= MAX_CLIENTS);
        }
    }

    fn testdata(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/testdata")
            .join(name)
    }

    /// A directory with cert/key `which` ("a" or "b") as server.crt / server.key.
    fn tls_dir(tag: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("schedlat-unit-tls-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Replace `to` atomically (write a temporary file, rename it over).
    fn install(from: &Path, to: &Path) {
        let tmp = to.with_extension("new");
        std::fs::copy(from, &tmp).unwrap();
        std::fs::rename(&tmp, to).unwrap();
    }

    #[test]
    fn tls_files_are_reloaded_when_they_change_and_bad_ones_keep_the_old_config() {
        let d = tls_dir("reload");
        let (crt, key) = (d.join("server.crt"), d.join("server.key"));
        install(&testdata("unit-a.crt"), &crt);
        install(&testdata("unit-a.key"), &key);
        let cfg = parse(&format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            crt.display(),
            key.display()
        ))
        .unwrap();
        let stats = WebStats::new(false, true);
        let r = TlsReloader::new(cfg.tls.unwrap(), "web.yml".into(), stats.clone()).unwrap();
        let t0 = Instant::now();
        let first = r.current_at(t0);
        // Unchanged files: the same config, whenever asked.
        assert!(Arc::ptr_eq(
            &first,
            &r.current_at(t0 + Duration::from_secs(5))
        ));

        // Renewed: picked up at the next check, not before the interval is over.
        install(&testdata("unit-b.crt"), &crt);
        install(&testdata("unit-b.key"), &key);
        let t = t0 + Duration::from_secs(5) + TLS_CHECK_INTERVAL / 2;
        assert!(
            Arc::ptr_eq(&first, &r.current_at(t)),
            "checked twice within the interval"
        );
        let t = t0 + Duration::from_secs(7);
        let second = r.current_at(t);
        assert!(!Arc::ptr_eq(&first, &second), "renewed files not reloaded");
        assert_eq!(stats.tls_reloads_ok.load(Ordering::Relaxed), 1);

        // A key that does not go with the certificate, then garbage: counted, logged, and
        // the renewed config stays in use; no retry until the files change again.
        install(&testdata("unit-a.key"), &key);
        let t = t + Duration::from_secs(2);
        assert!(Arc::ptr_eq(&second, &r.current_at(t)));
        assert_eq!(stats.tls_reloads_failed.load(Ordering::Relaxed), 1);
        assert!(stats.tls_stale.load(Ordering::Relaxed));
        let t = t + Duration::from_secs(2);
        assert!(Arc::ptr_eq(&second, &r.current_at(t)));
        assert_eq!(
            stats.tls_reloads_failed.load(Ordering::Relaxed),
            1,
            "retried unchanged files"
        );
        std::fs::write(&crt, "not a certificate").unwrap();
        let t = t + Duration::from_secs(2);
        assert!(Arc::ptr_eq(&second, &r.current_at(t)));
        assert_eq!(stats.tls_reloads_failed.load(Ordering::Relaxed), 2);
        std::fs::remove_file(&crt).unwrap();
        let t = t + Duration::from_secs(2);
        assert!(
            Arc::ptr_eq(&second, &r.current_at(t)),
            "file missing mid-rotation"
        );
        assert_eq!(stats.tls_reloads_failed.load(Ordering::Relaxed), 3);

        // Fixed: loaded, and the failing gauge clears.
        install(&testdata("unit-a.crt"), &crt);
        let t = t + Duration::from_secs(2);
        assert!(!Arc::ptr_eq(&second, &r.current_at(t)));
        assert_eq!(stats.tls_reloads_ok.load(Ordering::Relaxed), 2);
        assert!(!stats.tls_stale.load(Ordering::Relaxed));
        let text = crate::exporter::metrics::encode(&stats.families()).unwrap();
        for line in [
            "schedlat_web_tls_reloads_total{result=\"success\"} 2",
            "schedlat_web_tls_reloads_total{result=\"error\"} 3",
            "schedlat_web_tls_reload_failing 0",
        ] {
            assert!(text.contains(line), "{line}:\n{text}");
        }
        assert!(
            !text.contains("auth_failures"),
            "no basic auth configured:\n{text}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_bad_tls_file_at_start_is_an_error_naming_it() {
        let d = tls_dir("bad");
        let (crt, key) = (d.join("server.crt"), d.join("server.key"));
        install(&testdata("unit-a.crt"), &crt);
        install(&testdata("unit-b.key"), &key);
        let cfg = parse(&format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            crt.display(),
            key.display()
        ))
        .unwrap();
        let e = TlsReloader::new(
            cfg.tls.unwrap(),
            "web.yml".into(),
            WebStats::new(false, true),
        )
        .err()
        .expect("mismatched key accepted")
        .to_string();
        assert!(
            e.contains("key_file") && e.contains("does not go with cert_file"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&d);
    }
}
