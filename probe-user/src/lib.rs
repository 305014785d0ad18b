//! schedlat: where time goes between "ready to run" and "running".
//!
//! Layers, each importing only those below it:
//! - `cli` (clap types) and `cmd` (one module per subcommand) on top;
//! - outputs: `exporter` (Prometheus exposition), `http` (the HTTP server), `report` (the
//!   capture report), `go` (a capture's and the daemon's view of Go processes);
//! - `kernel`: the feature table and the loader (`kernel::probes`, the only aya user);
//! - pure ground: `model` (plain shared types: the snapshot the loader reads, what it
//!   attached, map sizes, modes, and the error classes that decide the exit code), `hist`,
//!   `config`, `host` (procfs, cgroups, privileges), `goruntime` (Go binary analysis and live
//!   reads).
//!
//! Everything but `kernel::probes` and `cmd` is unit tested without root.
pub mod cli;
pub mod cmd;
pub mod config;
pub mod exporter;
pub mod go;
pub mod goruntime;
pub mod hist;
pub mod host;
pub mod http;
pub mod kernel;
pub mod model;
pub mod report;

/// Parse the command line, set up logging and run the command.
pub fn run() -> anyhow::Result<()> {
    let cli = <cli::Cli as clap::Parser>::parse();
    init_logging(cli.log_filter())?;
    match &cli.command {
        cli::Command::Capture(a) => cmd::capture::run(&cli, a),
        cli::Command::Daemon(a) => cmd::daemon::run(&cli, a),
        cli::Command::GoStats(a) => cmd::go_stats::run(a),
        cli::Command::Check(a) => cmd::check::run(&cli, a),
        cli::Command::Top(a) => cmd::top::run(&cli, a),
        cli::Command::BenchFloor(a) => cmd::floor::run(a),
    }
}

fn init_logging(filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| model::UsageError(format!("invalid --log filter {filter:?}: {e}")))?;
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

/// Exit code for an error chain: 2 for the user's problems, 1 for runtime failures; each
/// error type decides its own class where it is defined (`model::Classify`).
pub fn exit_code_for(e: &anyhow::Error) -> u8 {
    model::ErrorClass::of(e).exit_code()
}
