//! Counters of the HTTP layer, exported with the daemon's metrics.
use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use prometheus::proto::{MetricFamily, MetricType};

use crate::metrics::{counter, family, gauge, label};

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
    pub(super) auth_failures: [AtomicU64; 3],
    pub(super) tls_reloads_ok: AtomicU64,
    pub(super) tls_reloads_failed: AtomicU64,
    /// The files on disk changed and could not be loaded: the previous certificate is served.
    pub(super) tls_stale: AtomicBool,
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
