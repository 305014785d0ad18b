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
pub mod floor;
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

/// Parse the command line, set up logging and run the command.
pub fn run() -> anyhow::Result<()> {
    let cli = <cli::Cli as clap::Parser>::parse();
    init_logging(&cli.log)?;
    match &cli.command {
        cli::Command::Capture(a) => crate::capture::run(&cli, a),
        cli::Command::Daemon(a) => crate::daemon::run(&cli, a),
        cli::Command::GoStats(a) => crate::go_stats::run(a),
        cli::Command::Check(a) => crate::check::run(&cli, a),
        cli::Command::BenchFloor(a) => crate::floor::run(a),
    }
}

fn init_logging(filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| UsageError(format!("invalid --log filter {filter:?}: {e}")))?;
    // Colour only for a person at a terminal: not in files, pipes or journald, nor with
    // NO_COLOR set (no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    // init() also routes the `log` records aya emits into tracing (tracing-log feature).
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    Ok(())
}

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
