//! `[http]` of the daemon config: what one client, or many, may cost the daemon.
use std::time::Duration;

use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpLimits {
    /// Open connections at most (lowered at start to fit the open-files limit). At the cap a
    /// new connection closes the least recently active one that has no request in progress.
    pub max_connections: usize,
    /// A request's headers must be complete this long after the connection is accepted (or
    /// its TLS handshake is done) or, on a kept-alive connection, after the request's first
    /// byte.
    pub header_read_timeout_secs: u64,
    /// A kept-alive connection with no request for this long is closed.
    pub idle_timeout_secs: u64,
    /// A TLS handshake must be done this long after the connection is accepted.
    pub tls_handshake_timeout_secs: u64,
    /// While more than one scrape is in flight, a /metrics body rendered less than this ago
    /// is served again instead of a new render (0: only scrapes that arrive during a render
    /// share it).
    pub metrics_cache_ms: u64,
    /// A scrape waits this long for a render before it is answered 503; a render running
    /// longer makes /healthz unhealthy.
    pub render_timeout_secs: u64,
    /// Scrapes waiting for the render in progress, at most; more are answered 503 at once.
    pub max_waiting_scrapes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 128,
            header_read_timeout_secs: 10,
            idle_timeout_secs: 60,
            tls_handshake_timeout_secs: 5,
            metrics_cache_ms: 1000,
            render_timeout_secs: 10,
            max_waiting_scrapes: 100,
        }
    }
}

impl HttpLimits {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
    pub fn tls_handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.tls_handshake_timeout_secs)
    }
    pub fn metrics_cache(&self) -> Duration {
        Duration::from_millis(self.metrics_cache_ms)
    }
    pub fn render_timeout(&self) -> Duration {
        Duration::from_secs(self.render_timeout_secs)
    }

    /// Keys out of range, with the fix (the daemon config names the file).
    pub fn invalid(&self) -> Option<(&'static str, String, &'static str)> {
        let Self {
            max_connections,
            header_read_timeout_secs,
            idle_timeout_secs,
            tls_handshake_timeout_secs,
            metrics_cache_ms,
            render_timeout_secs,
            max_waiting_scrapes,
        } = *self;
        let secs = "use 1..=3600 seconds";
        for (key, v, ok, fix) in [
            (
                "http.max_connections",
                max_connections as u64,
                (8..=65_536).contains(&max_connections),
                "use 8..=65536",
            ),
            (
                "http.header_read_timeout_secs",
                header_read_timeout_secs,
                (1..=3600).contains(&header_read_timeout_secs),
                secs,
            ),
            (
                "http.idle_timeout_secs",
                idle_timeout_secs,
                (1..=3600).contains(&idle_timeout_secs),
                secs,
            ),
            (
                "http.tls_handshake_timeout_secs",
                tls_handshake_timeout_secs,
                (1..=3600).contains(&tls_handshake_timeout_secs),
                secs,
            ),
            (
                "http.metrics_cache_ms",
                metrics_cache_ms,
                metrics_cache_ms <= 60_000,
                "use 0..=60000 milliseconds",
            ),
            (
                "http.render_timeout_secs",
                render_timeout_secs,
                (1..=3600).contains(&render_timeout_secs),
                secs,
            ),
            (
                "http.max_waiting_scrapes",
                max_waiting_scrapes as u64,
                (1..=65_536).contains(&max_waiting_scrapes),
                "use 1..=65536",
            ),
        ] {
            if !ok {
                return Some((key, v.to_string(), fix));
            }
        }
        None
    }
}
