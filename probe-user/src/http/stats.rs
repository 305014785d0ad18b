//! Counters of the HTTP layer, exported with the daemon's metrics.
use std::sync::{
    Arc,
    atomic::{AtomicBool, AtomicU64, Ordering},
};

use prometheus::proto::{MetricFamily, MetricType};

use crate::exporter::metrics::{counter, family, gauge, label};
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

/// Why the daemon closed a connection it had not finished with (`reason` label of
/// schedlat_http_connections_dropped_total).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnDrop {
    /// At the connection cap: closed, as the least recently active without a request in
    /// progress, to make room for a new one.
    EvictedIdle,
    /// At the connection cap with every connection busy: the new one was closed at once.
    OverLimit,
    /// A request's headers were not complete within header_read_timeout_secs.
    HeaderTimeout,
    /// Kept alive with no request for idle_timeout_secs.
    IdleTimeout,
    /// No TLS handshake within tls_handshake_timeout_secs.
    TlsHandshakeTimeout,
    /// The TLS handshake failed (not TLS, no acceptable version, a bad client certificate).
    TlsHandshakeFailed,
    /// accept(2) failed (e.g. out of file descriptors): the connection never reached us.
    AcceptError,
}

impl ConnDrop {
    const ALL: [Self; 7] = [
        Self::EvictedIdle,
        Self::OverLimit,
        Self::HeaderTimeout,
        Self::IdleTimeout,
        Self::TlsHandshakeTimeout,
        Self::TlsHandshakeFailed,
        Self::AcceptError,
    ];
    fn name(self) -> &'static str {
        match self {
            Self::EvictedIdle => "evicted_idle",
            Self::OverLimit => "over_limit",
            Self::HeaderTimeout => "header_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::TlsHandshakeTimeout => "tls_handshake_timeout",
            Self::TlsHandshakeFailed => "tls_handshake_failed",
            Self::AcceptError => "accept_error",
        }
    }
}

/// Why a request was answered 503 without doing its work (`reason` label of
/// schedlat_http_requests_shed_total).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shed {
    /// max_waiting_scrapes scrapes were already waiting for the render in progress.
    RenderQueueFull,
    /// The render did not finish within render_timeout_secs.
    RenderTimeout,
    /// The password checks' queue was full (a flood of wrong passwords).
    AuthQueueFull,
}

impl Shed {
    const ALL: [Self; 3] = [
        Self::RenderQueueFull,
        Self::RenderTimeout,
        Self::AuthQueueFull,
    ];
    fn name(self) -> &'static str {
        match self {
            Self::RenderQueueFull => "render_queue_full",
            Self::RenderTimeout => "render_timeout",
            Self::AuthQueueFull => "auth_queue_full",
        }
    }
    /// The 503's body.
    pub fn message(self) -> &'static str {
        match self {
            Self::RenderQueueFull => "Too many scrapes waiting for the render in progress: retry",
            Self::RenderTimeout => {
                "The render did not finish within render_timeout_secs: retry (see /healthz)"
            }
            Self::AuthQueueFull => "Too many password checks queued: retry",
        }
    }
}

/// How a /metrics render ended (`result` label of schedlat_http_renders_total).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenderResult {
    Ok,
    Error,
    Panic,
}

impl RenderResult {
    const ALL: [Self; 3] = [Self::Ok, Self::Error, Self::Panic];
    fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Panic => "panic",
        }
    }
}

/// Counters of the web layer, exported with the daemon's metrics.
#[derive(Debug, Default)]
pub struct WebStats {
    basic_auth: bool,
    tls: bool,
    conn_drops: [AtomicU64; 7],
    connections_open: AtomicU64,
    connections_max: AtomicU64,
    sheds: [AtomicU64; 3],
    renders: [AtomicU64; 3],
    shared: AtomicU64,
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

    pub fn count_drop(&self, why: ConnDrop) {
        self.conn_drops[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn drops(&self, why: ConnDrop) -> u64 {
        self.conn_drops[why as usize].load(Ordering::Relaxed)
    }

    pub fn set_connections_open(&self, n: usize) {
        self.connections_open.store(n as u64, Ordering::Relaxed);
    }

    pub fn set_connections_max(&self, n: usize) {
        self.connections_max.store(n as u64, Ordering::Relaxed);
    }

    pub fn count_shed(&self, why: Shed) {
        self.sheds[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn sheds(&self, why: Shed) -> u64 {
        self.sheds[why as usize].load(Ordering::Relaxed)
    }

    pub fn count_render(&self, r: RenderResult) {
        self.renders[r as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn renders(&self, r: RenderResult) -> u64 {
        self.renders[r as usize].load(Ordering::Relaxed)
    }

    pub fn count_shared(&self) {
        self.shared.fetch_add(1, Ordering::Relaxed);
    }

    pub fn shared(&self) -> u64 {
        self.shared.load(Ordering::Relaxed)
    }

    /// Only the families of what is configured, each with every label value from the start
    /// (so rate() sees the first failure).
    pub fn families(&self) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        out.extend(family(
            "schedlat_http_connections",
            "HTTP connections open now.",
            MetricType::GAUGE,
            vec![gauge(vec![], load(&self.connections_open))],
        ));
        out.extend(family(
            "schedlat_http_connections_max",
            "HTTP connections open at most (max_connections, lowered to fit the open-files limit).",
            MetricType::GAUGE,
            vec![gauge(vec![], load(&self.connections_max))],
        ));
        out.extend(family(
            "schedlat_http_connections_dropped_total",
            "HTTP connections the daemon closed before the client did, or could not accept, by reason.",
            MetricType::COUNTER,
            ConnDrop::ALL
                .iter()
                .map(|&r| counter(vec![label("reason", r.name())], self.drops(r) as f64))
                .collect(),
        ));
        out.extend(family(
            "schedlat_http_requests_shed_total",
            "Requests answered 503 without doing their work (overload), by reason.",
            MetricType::COUNTER,
            Shed::ALL
                .iter()
                .map(|&r| counter(vec![label("reason", r.name())], self.sheds(r) as f64))
                .collect(),
        ));
        out.extend(family(
            "schedlat_http_renders_total",
            "Renders of the /metrics body (kernel maps and Go programs read), by result.",
            MetricType::COUNTER,
            RenderResult::ALL
                .iter()
                .map(|&r| counter(vec![label("result", r.name())], self.renders(r) as f64))
                .collect(),
        ));
        out.extend(family(
            "schedlat_http_scrapes_shared_total",
            "Scrapes answered with a body rendered for another scrape (during its render, or just after a shared one).",
            MetricType::COUNTER,
            vec![counter(vec![], load(&self.shared))],
        ));
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
