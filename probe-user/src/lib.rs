//! schedlat: where time goes between "ready to run" and "running".
//!
//! Modules with no aya types (`hist`, `report`, `metrics`, `config`, `cgroup`, `tracefs`,
//! `btf`, `web`) hold the pure logic and are unit tested without root; `probes` is the only
//! one that talks to the kernel.
pub mod btf;
pub mod capture;
pub mod cgroup;
pub mod check;
pub mod cli;
pub mod config;
pub mod cpulimit;
pub mod daemon;
pub mod features;
pub mod go_stats;
pub mod gocapture;
pub mod goruntime;
pub mod gowatch;
pub mod hist;
pub mod metrics;
pub mod model;
pub mod privs;
pub mod probes;
pub mod report;
pub mod series;
pub mod tracefs;
pub mod web;

/// An error the user must fix (bad argument, missing privilege, unsupported kernel): exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Exit code for an error chain: 2 for the user's problems, 1 for runtime failures.
pub fn exit_code_for(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.is::<UsageError>()
            || cause.is::<config::ConfigError>()
            || cause.is::<web::WebConfigError>()
            || cause.is::<privs::UserError>()
            || cause.is::<features::MissingFeature>()
        {
            return 2;
        }
        if let Some(g) = cause.downcast_ref::<goruntime::GoError>() {
            return if g.is_usage() { 2 } else { 1 };
        }
        if let Some(p) = cause.downcast_ref::<probes::ProbeError>() {
            return if p.is_usage() { 2 } else { 1 };
        }
    }
    1
}
