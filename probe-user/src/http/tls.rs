//! The rustls server config from the web config's files, and its reload when they change
//! ([`TlsReloader`]), so renewed certificates need no restart.
use std::{
    os::unix::fs::MetadataExt as _,
    path::Path,
    sync::{Arc, Mutex, atomic::Ordering},
    time::{Duration, Instant},
};

use rustls::{
    RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tracing::{info, warn};

use super::{
    config::{ClientAuth, TlsSettings, TlsVersion, WebConfigError},
    stats::WebStats,
};

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

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::http::config::WebConfig;

    fn parse(text: &str) -> Result<WebConfig, String> {
        WebConfig::parse(text, "/etc/schedlat/web.yml", Path::new("/etc/schedlat"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn missing_cert_names_the_file() {
        let c = parse("tls_server_config:\n  cert_file: /no/such.crt\n  key_file: /no/such.key\n")
            .unwrap();
        let e = c
            .tls
            .unwrap()
            .server_config("web.yml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such.crt") && e.contains("cert_file"), "{e}");
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
