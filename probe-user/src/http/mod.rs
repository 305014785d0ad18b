//! The daemon's HTTP side: optional TLS and basic auth configured by a YAML web config in the
//! Prometheus exporters' format, the TLS certificate's reload, and accepting connections.
//!
//! One concept per file; each imports only from those listed before it:
//! `config` (the web config file), `stats` (self-metrics), `limiter` (failed logins),
//! `tls` (rustls config and reload), `auth` (basic auth), `server` (connections).
pub mod auth;
pub mod config;
mod limiter;
pub mod server;
pub mod stats;
pub mod tls;

pub use auth::{BasicAuth, parse_basic, require_auth};
pub use config::{WebConfig, WebConfigError};
pub use server::TlsListener;
pub use stats::{AuthFailure, WebStats};
pub use tls::TlsReloader;
