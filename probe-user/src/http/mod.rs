//! The daemon's HTTP side: the app (/metrics, /healthz), the connections it is served on,
//! with bounds on what slow clients and scrape storms can cost, optional TLS and basic auth
//! configured by a YAML web config in the Prometheus exporters' format, and self-metrics.
//!
//! One concept per file; each imports only from those listed before it:
//! `config` (the web config file), `limits` (the daemon config's `[http]`), `stats`
//! (self-metrics), `limiter` (failed logins), `tls` (rustls config and reload), `auth`
//! (basic auth), `render` (shared /metrics renders), `conns` (the connection cap and
//! timeouts), `app` (the router), `server` (accepting and serving connections).
pub mod app;
pub mod auth;
pub mod config;
pub mod conns;
mod limiter;
pub mod limits;
pub mod render;
pub mod server;
pub mod stats;
pub mod tls;

pub use app::router;
pub use auth::{BasicAuth, parse_basic, require_auth};
pub use config::{WebConfig, WebConfigError};
pub use limits::HttpLimits;
pub use render::{Render, Renders};
pub use stats::{AuthFailure, WebStats};
pub use tls::TlsReloader;
