//! Command-line interface: clap types only (a leaf: the commands import it, never the reverse).
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::model::{Buckets, FutexMode, SortKey};

#[derive(Debug, Parser)]
#[command(
    name = "schedlat",
    version,
    about = "Scheduler latency from eBPF: run-queue delay, futex blocking and wakeups"
)]
pub struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. info, debug, schedlat=debug [default:
    /// `info` for the daemon; `warn` for the other commands, so a capture that has nothing
    /// to warn about prints only its report; `info` adds the "capturing" line scripts can
    /// wait for].
    #[arg(long, global = true, env = "SCHEDLAT_LOG")]
    pub log: Option<String>,
    /// More detail on stderr: -v is `--log debug` (what was attached where, kernel features,
    /// offsets), -vv `--log trace`. Overrides --log.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// tracefs mount point (default: /sys/kernel/tracing, then /sys/kernel/debug/tracing).
    #[arg(long, global = true)]
    pub tracefs: Option<PathBuf>,
    /// Kernel BTF file.
    #[arg(long, global = true, default_value = "/sys/kernel/btf/vmlinux")]
    pub btf: PathBuf,
    /// Tests only: per-task run-queue state in the hash map (RUNQ_START) of the build for
    /// kernels without task storage (before 5.12), even where the kernel has task storage.
    #[arg(long, global = true, hide = true)]
    pub hash_stamps: bool,
    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// The log filter in effect: -v, else --log / SCHEDLAT_LOG, else the command's default.
    pub fn log_filter(&self) -> &str {
        match (self.verbose, &self.log) {
            (1, _) => "debug",
            (2.., _) => "trace",
            (0, Some(f)) => f,
            (0, None) if matches!(self.command, Command::Daemon(_)) => "info",
            (0, None) => "warn",
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// One-shot capture: host-wide or filtered by process / cgroup, printed at the end.
    Capture(CaptureArgs),
    /// Serve Prometheus metrics (GET /metrics, /healthz) until SIGINT/SIGTERM.
    Daemon(DaemonArgs),
    /// A Go program's own scheduler statistics read from its memory (GOMAXPROCS, goroutines,
    /// the runtime's scheduling-latency histogram); no eBPF, needs ptrace access to PID.
    GoStats(GoStatsArgs),
    /// Live view of run-queue delay per cgroup, task and CPU and futex waits, refreshed
    /// every interval; keys sort (d delay, w waits, m max, p preempted, f futex), q quits.
    Top(TopArgs),
    /// What this kernel and these privileges allow: kernel features (present, missing, the
    /// fallback in use), capabilities, mounts, and whether capture, daemon and Go probes work
    /// here (loaded and attached for real, then detached). Exit 2 if one does not.
    Check(CheckArgs),
    /// Benchmark only (`cargo xtask bench`): schedlat's hooks with empty bodies, attached
    /// until SIGINT/SIGTERM (the cost of attaching at all).
    #[command(hide = true)]
    BenchFloor(BenchFloorArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// How long to capture (e.g. 10s, 500ms, 2m) [default: 10s; with --interval, until
    /// --count blocks or Ctrl-C]. Ctrl-C stops early and still prints.
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Print a report block every INTERVAL (e.g. 1s), each covering only that interval, like
    /// runqlat's `runqlat 1 10`; with `--format json`, one JSON object per line (JSON Lines).
    /// Ctrl-C prints the current (shorter) block and exits.
    #[arg(long, value_name = "INTERVAL", value_parser = parse_duration)]
    pub interval: Option<Duration>,
    /// Also write a self-contained HTML report to FILE (no network needed to view it):
    /// latency heatmaps over the capture's intervals (--interval, or about 120 columns of at
    /// least 1 s) beside the summary tables.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// With --interval: stop after N blocks.
    #[arg(long, value_name = "N", requires = "interval",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Only tasks of this process (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only tasks in this cgroup v2 path (relative to the cgroup2 mount) or below it.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Report run-queue delays at or above this as slow events, with who ran instead.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub threshold: Duration,
    /// Rows in each "top" table of the text output [default: 10; 5 per --interval block].
    #[arg(long)]
    pub top: Option<usize>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Histogram rows in the text output: `compact` (one per power of two) or `fine` (every
    /// kernel bucket, 8 per power of two). JSON always has every bucket.
    #[arg(long, value_enum, default_value_t = Buckets::Compact)]
    pub buckets: Buckets,
    /// How to trace futex waits: `syscall` (exact, with how each wait ended; slows every
    /// syscall on the host by ~125 ns while the capture runs), `sched` (from the scheduler
    /// probes: no extra cost, no return codes; x86_64) or `off`.
    #[arg(long, value_enum, default_value_t = FutexMode::Syscall)]
    pub futex: FutexMode,
    /// Same as `--futex off`.
    #[arg(long)]
    pub no_futex: bool,
    /// Slow events allowed per CPU per second (in-kernel rate limit).
    #[arg(long, default_value_t = 200)]
    pub max_slow_per_sec: u32,
    /// Most slow events kept in the report (the rest are counted as dropped).
    #[arg(long, default_value_t = 10_000)]
    pub max_slow_events: usize,
    /// Require the Go section for every --pid (an error if one is not a Go program readable
    /// here); without it, Go programs among the --pid processes get one automatically
    #[arg(long)]
    pub go: bool,
    /// Per-event Go probes (a uprobe on runtime.casgstatus of one --pid Go program, for the
    /// capture only): every goroutine's scheduling latency split into P wait and thread
    /// run-queue wait, blocking by wait reason, goroutines created. Costs the target about
    /// 1 µs of CPU per goroutine status change while the capture runs; `off` keeps the Go
    /// section to the runtime's own statistics, which cost it nothing
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub go_probes: OnOff,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// TOML config file (see deploy/schedlat.toml for every key).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Listen address for /metrics and /healthz [default: 127.0.0.1:9725, or the config's].
    #[arg(long)]
    pub listen: Option<String>,
    /// Web config (YAML, as Prometheus exporters use) for TLS and basic auth on /metrics
    /// [default: the config's `web_config`, else plain HTTP without auth].
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub web_config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Check the daemon with this config (its futex mode and map sizes) [default: defaults].
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Check captures with this futex mode (as `capture --futex`).
    #[arg(long, value_enum, default_value_t = FutexMode::Syscall)]
    pub futex: FutexMode,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Refresh every INTERVAL.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Only tasks of this process (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,
    /// Only tasks in this cgroup v2 path (relative to the cgroup2 mount) or below it.
    #[arg(long)]
    pub cgroup: Option<String>,
    /// Sort cgroups and tasks by this at start (keys change it while running).
    #[arg(long, value_enum, default_value_t = SortKey::Delay)]
    pub sort: SortKey,
    /// How to trace futex waits (as `capture --futex`); `auto` is `sched` where the kernel
    /// allows it (no extra cost), else `off`.
    #[arg(long, value_enum, default_value_t = FutexMode::Auto)]
    pub futex: FutexMode,
    /// Also show Go processes (those of --pid, else those in --cgroup, else every Go program
    /// on the host; 64 at most, lowest pids first): GOMAXPROCS against the CPUs each may use,
    /// goroutines (by state on Go >= 1.26), the runtime's own scheduling latency and GC
    /// pauses, read from their memory (no probe, no cost to them; needs ptrace access).
    #[arg(long)]
    pub go: bool,
}

#[derive(Debug, Args)]
pub struct BenchFloorArgs {
    /// Instead, only an empty uprobe at the runtime.casgstatus instruction a Go capture of
    /// PID probes.
    #[arg(long, value_name = "PID")]
    pub go_pid: Option<u32>,
}

#[derive(Debug, Args)]
pub struct GoStatsArgs {
    /// Process id of a running Go program (built without -ldflags='-s -w').
    #[arg(long)]
    pub pid: u32,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Histogram rows in the text output: one per power of two, or every runtime bucket.
    #[arg(long, value_enum, default_value_t = Buckets::Compact)]
    pub buckets: Buckets,
}

/// Durations like `10s`, `250ms`, `1m30s`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let d = if let Ok(secs) = t.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return Err(format!(
                "invalid duration {s:?}: must be a non-negative number of seconds"
            ));
        }
        Duration::from_secs_f64(secs)
    } else {
        humantime::parse_duration(t)
            .map_err(|e| format!("invalid duration {s:?} ({e}); use e.g. 10s, 500ms, 2m"))?
    };
    if d.is_zero() {
        return Err(format!("invalid duration {s:?}: must be greater than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        for bad in ["", "abc", "-1", "0s", "10 parsecs", "NaN"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_parses() {
        Cli::command_for_test();
        let c = Cli::try_parse_from([
            "schedlat", "capture", "--pid", "1", "--pid", "2", "--format", "json",
        ])
        .unwrap();
        match c.command {
            Command::Capture(a) => {
                assert_eq!(a.pids, vec![1, 2]);
                assert_eq!(a.format, Format::Json);
                assert_eq!(a.duration, None);
                assert_eq!((a.interval, a.count), (None, None));
                assert_eq!(a.threshold, Duration::from_millis(10));
            }
            _ => panic!("wrong subcommand"),
        }
        assert!(Cli::try_parse_from(["schedlat", "capture", "--duration", "soon"]).is_err());
        let c = Cli::try_parse_from(["schedlat", "capture", "--interval", "1s", "--count", "3"])
            .unwrap();
        match c.command {
            Command::Capture(a) => {
                assert_eq!(a.interval, Some(Duration::from_secs(1)));
                assert_eq!(a.count, Some(3));
            }
            _ => panic!("wrong subcommand"),
        }
        // --count needs --interval, and at least one block.
        assert!(Cli::try_parse_from(["schedlat", "capture", "--count", "3"]).is_err());
        assert!(
            Cli::try_parse_from(["schedlat", "capture", "--interval", "1s", "--count", "0"])
                .is_err()
        );
    }

    #[test]
    fn log_levels_per_command_and_verbosity() {
        let filter = |args: &[&str]| {
            let mut full = vec!["schedlat"];
            full.extend_from_slice(args);
            Cli::try_parse_from(full).unwrap().log_filter().to_string()
        };
        // Not read from the environment here: SCHEDLAT_LOG would change the defaults.
        if std::env::var_os("SCHEDLAT_LOG").is_some() {
            return;
        }
        assert_eq!(filter(&["capture"]), "warn");
        assert_eq!(filter(&["daemon"]), "info");
        assert_eq!(filter(&["capture", "-v"]), "debug");
        assert_eq!(filter(&["-vv", "check"]), "trace");
        assert_eq!(filter(&["--log", "info", "capture"]), "info");
        assert_eq!(filter(&["--log", "info", "capture", "-v"]), "debug");
    }

    impl Cli {
        fn command_for_test() {
            use clap::CommandFactory;
            Self::command().debug_assert();
        }
    }
}
