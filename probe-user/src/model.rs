//! Plain types shared by the loader, the config, the CLI and the outputs (no aya, no I/O):
//! what the loader reads out of the kernel ([`RawSnapshot`]) and what it attached, map sizes,
//! modes, error classes. The outputs import these, never `kernel::probes`.
use schedlat_common::{
    CpuStat, HistKey, PreemptKey, TaskStat, WakeCount, WakePair, drop_reason, futex_outcome, go,
};

use crate::hist::Histogram;

/// How futex waits are traced.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Deserialize,
    serde::Serialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum FutexMode {
    /// Not at all.
    Off,
    /// `sched` where the kernel has what it needs (bpf_task_pt_regs, Linux 5.15+, x86_64),
    /// else `off`; which one is logged and shown by `schedlat check`.
    #[default]
    Auto,
    /// From sched_switch/sched_waking: a task switched out while its syscall is a futex wait
    /// is blocked in futex until woken. Costs nothing beyond the run-queue probes, but cannot
    /// tell how a wait ended (no return codes). x86_64.
    Sched,
    /// From the futex syscall tracepoints: exact, with outcomes (timeout, interrupted, ...).
    /// Enabling any syscall tracepoint sends every syscall on the host through the kernel's
    /// slow path (~125 ns each measured here), futex or not.
    Syscall,
}

impl std::fmt::Display for FutexMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Off => "off",
            Self::Auto => "auto",
            Self::Sched => "sched",
            Self::Syscall => "syscall",
        })
    }
}

/// Histogram rows in the text output (JSON always carries every kernel bucket).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Buckets {
    /// One row per power of two (runqlat's shape).
    #[default]
    Compact,
    /// Every kernel bucket: 8 per power of two (9% resolution).
    Fine,
}

/// What `schedlat top` sorts cgroups and tasks by (largest first).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Time waited on a run queue per second.
    #[default]
    Delay,
    /// Run-queue waits per second.
    Waits,
    /// Longest run-queue wait.
    Max,
    /// Share of the delay after preemption.
    Preempted,
    /// Time blocked in futex waits per second.
    Futex,
}

/// Names of the futex wait outcomes, indexed as the kernel side counts them
/// (`schedlat_common::futex_outcome`).
pub const FUTEX_OUTCOME_NAMES: [&str; futex_outcome::COUNT] =
    ["woken", "timeout", "interrupted", "value_changed", "error"];

/// The drop reason of program runs the kernel skipped ([`RawSnapshot::skipped`]), beside
/// schedlat_common::drop_reason's own.
pub const KERNEL_SKIPPED: &str = "kernel_skipped_recursion";

/// Map capacities. Defaults fit a busy host; every overflow is counted in DROPS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MapSizes {
    /// Tasks with a stamp at once: runnable but not yet running, and, with futex mode
    /// `sched`, blocked in a futex (a parked thread keeps its stamp while it sleeps). Only on
    /// kernels without task storage in tracing programs (before 5.12); elsewhere a task's
    /// stamp lives in its own storage and there is no such limit. 0: as many as the host can
    /// have tasks (`kernel::probes::task_map_for_host`).
    pub runq_start: u32,
    /// Tasks inside a blocking futex call at once, with futex mode `syscall` (parked threads
    /// count: thread pools, Go's idle Ms). 0: as many as the host can have tasks.
    pub futex_start: u32,
    /// Histograms: run-queue delay (woken and preempted) of `hists / 2` cgroups (RQ_SLOTS),
    /// and `hists / 2` futex series, one per cgroup and futex op (HISTS).
    pub hists: u32,
    /// Distinct tids in a capture.
    pub tasks: u32,
    /// Distinct waker->wakee pairs in a capture.
    pub wake_pairs: u32,
    /// Distinct (cgroup, preempting cgroup) pairs the daemon counts involuntary switches of
    /// (`schedlat_preemptions_total`); entries of removed cgroups are deleted at each scrape.
    pub preempts: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            runq_start: 0,
            futex_start: 0,
            hists: 8192,
            tasks: 65536,
            wake_pairs: 65536,
            preempts: 4096,
        }
    }
}

/// A program and where it is attached.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Attached {
    pub program: String,
    pub target: String,
    pub attached: bool,
    /// Why it is not attached, when it is not.
    pub note: Option<String>,
}

/// Everything read from the maps at one instant.
#[derive(Clone, Debug, Default)]
pub struct RawSnapshot {
    pub hists: Vec<(HistKey, Histogram)>,
    pub tasks: Vec<(u32, TaskStat)>,
    pub wake_pairs: Vec<(WakePair, WakeCount)>,
    /// Indexed by CPU id.
    pub cpus: Vec<CpuStat>,
    pub drops: [u64; drop_reason::COUNT],
    pub futex_outcomes: [u64; futex_outcome::COUNT],
    /// Current entry counts, for self-metrics.
    pub map_entries: Vec<(&'static str, usize, u32)>,
    pub go: Option<GoRaw>,
    /// Involuntary switches by (cgroup, preempting cgroup) (the daemon).
    pub preempts: Vec<(PreemptKey, u64)>,
    /// The kernel's run-time accounting of each attached program, by program name (empty
    /// unless `ProbeOptions::run_stats` and the kernel has BPF_ENABLE_STATS, 5.8+).
    pub programs: Vec<(String, ProgStats)>,
    /// Runs of each attached program that the kernel skipped without running it, by program
    /// name: the same program (tp_btf), or for classic tracepoints any kprobe or tracepoint
    /// program, was already running on that CPU (bpf_prog_info.recursion_misses). Read
    /// always, run stats or not. None where the kernel does not report it (before 5.12).
    pub skipped: Option<Vec<(String, u64)>>,
}

/// What the kernel counted for one program while its statistics were on (bpf_prog_info
/// run_time_ns and run_cnt: every run, on every CPU).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub run_time_ns: u64,
    pub run_count: u64,
}

/// The Go maps at one instant (captures with `kernel::probes::ProbeOptions::go_events`).
#[derive(Clone, Debug)]
pub struct GoRaw {
    /// Indexed by schedlat_common::go::hist.
    pub hists: Vec<Histogram>,
    /// Indexed by schedlat_common::go::counter.
    pub counts: [u64; go::counter::COUNT],
}

/// Whose problem an error is; it decides the process' exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The user's to fix (bad argument or config, missing privilege, unsupported kernel or
    /// binary): exit 2.
    Usage,
    /// A failure at run time: exit 1.
    Runtime,
}

impl ErrorClass {
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Usage => 2,
            Self::Runtime => 1,
        }
    }

    /// The class of the outermost cause in the chain whose type has one; runtime if none has.
    pub fn of(e: &anyhow::Error) -> Self {
        e.chain()
            .find_map(|cause| {
                inventory::iter::<ClassOf>
                    .into_iter()
                    .find_map(|c| (c.0)(cause))
            })
            .unwrap_or(Self::Runtime)
    }
}

/// An error type that decides its own [`ErrorClass`]. Beside the impl, register the type with
/// `inventory::submit!(ClassOf::of::<T>())` so that [`ErrorClass::of`] finds it in any
/// error chain (each type's unit test goes through `ErrorClass::of`, so a missing one fails).
pub trait Classify: std::error::Error + 'static {
    fn class(&self) -> ErrorClass;
}

/// The class of one registered error type, if a cause is of that type.
pub struct ClassOf(fn(&(dyn std::error::Error + 'static)) -> Option<ErrorClass>);

impl ClassOf {
    pub const fn of<E: Classify>() -> Self {
        fn ask<E: Classify>(e: &(dyn std::error::Error + 'static)) -> Option<ErrorClass> {
            e.downcast_ref::<E>().map(E::class)
        }
        Self(ask::<E>)
    }
}

inventory::collect!(ClassOf);

/// An error the user must fix (bad argument, missing privilege, unsupported kernel): exit 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl Classify for UsageError {
    fn class(&self) -> ErrorClass {
        ErrorClass::Usage
    }
}
inventory::submit!(ClassOf::of::<UsageError>());

/// An error and its causes on one line, as anyhow's `{:#}` prints them: for errors shown
/// outside an anyhow chain (check verdicts, log fields).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The outermost classified cause decides, whatever context wraps it; a chain with no
    /// classified cause is a runtime failure.
    #[test]
    fn the_outermost_classified_cause_decides() {
        let usage = anyhow::Error::from(UsageError("bad --pid".into())).context("capture");
        assert_eq!(ErrorClass::of(&usage), ErrorClass::Usage);
        assert_eq!(ErrorClass::of(&usage).exit_code(), 2);
        let plain = anyhow::anyhow!("disk full").context("writing the report");
        assert_eq!(ErrorClass::of(&plain), ErrorClass::Runtime);
        assert_eq!(ErrorClass::of(&plain).exit_code(), 1);
    }
}
