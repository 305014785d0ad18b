//! Every map and load-time global of schedlat-probes, in one place. Sizes here are defaults;
//! the loader resizes maps from config (set_max_entries) and fills the globals before load.
//! Per-task run-queue state (RunqStart) is in stamps.rs: its map kind depends on the build.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, Queue, RingBuf},
};
use schedlat_common::{
    Config, CpuStat, FutexStart, GoConfig, GoGState, GoRunqRing, Hist, HistKey, PreemptKey,
    RateWindow, RunqHists, TaskStat, WakeCount, WakePair, drop_reason, futex_outcome, go,
};

/// Set by the loader before load (read-only data: the verifier sees the values as constants).
#[unsafe(no_mangle)]
pub(crate) static CONFIG: Config = Config {
    task_pid: 0,
    task_tgid: 0,
    task_state: 0,
    task_comm: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    tp_futex_op: 0,
    tp_exit_ret: 0,
    flags: 0,
    slow_max_per_sec: 0,
    slow_threshold_ns: u64::MAX,
    regs_syscall_nr: 0,
    regs_arg2: 0,
    nr_futex: u32::MAX,
    nr_futex_waitv: u32::MAX,
    nr_futex_wait: u32::MAX,
    task_pcount: 0,
};

// Map sizes here are defaults; the loader resizes them from config (set_max_entries).

// Per-task run-queue state (RunqStart) lives in src/stamps.rs: task-local storage, or a hash
// by task_struct address on kernels without task storage for tracing programs.

/// task_struct address -> when it entered a blocking futex op.
#[map]
pub(crate) static FUTEX_START: HashMap<u64, FutexStart> = HashMap::with_max_entries(65536, 0);
/// (cgroup, kind::FUTEX, op) -> histogram. Run-queue series are in RQ_HISTS.
#[map]
pub(crate) static HISTS: HashMap<HistKey, Hist> = HashMap::with_max_entries(4096, 0);
/// cgroup id -> its slot in RQ_HISTS. Looked up only when a task's cached slot is stale.
#[map]
pub(crate) static RQ_SLOTS: HashMap<u64, u32> = HashMap::with_max_entries(2048, 0);
/// Free RQ_HISTS slots: the loader pushes them all; the daemon pushes back the slots of
/// removed cgroups after zeroing them.
#[map]
pub(crate) static RQ_FREE: Queue<u32> = Queue::with_max_entries(2048, 0);
/// Run-queue histograms by slot (one cgroup each, woken and preempted).
#[map]
pub(crate) static RQ_HISTS: Array<RunqHists> = Array::with_max_entries(2048, 0);
/// (cgroup, cgroup that got its CPU) -> involuntary switches (flags::PREEMPTORS, the daemon).
#[map]
pub(crate) static PREEMPTS: HashMap<PreemptKey, u64> = HashMap::with_max_entries(4096, 0);
/// One zeroed histogram: the value used to create HISTS entries (too big for the stack).
#[map]
pub(crate) static ZERO_HIST: Array<Hist> = Array::with_max_entries(1, 0);
/// tid -> totals (captures).
#[map]
pub(crate) static TASK_STATS: HashMap<u32, TaskStat> = HashMap::with_max_entries(32768, 0);
/// waker/wakee tids -> count (captures).
#[map]
pub(crate) static WAKE_PAIRS: HashMap<WakePair, WakeCount> = HashMap::with_max_entries(32768, 0);
/// Per-CPU run-queue totals.
#[map]
pub(crate) static CPU_STATS: PerCpuArray<CpuStat> = PerCpuArray::with_max_entries(1, 0);
/// Lost events, by drop_reason.
#[map]
pub(crate) static DROPS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(drop_reason::COUNT as u32, 0);
/// Futex waits by how they ended, by futex_outcome.
#[map]
pub(crate) static FUTEX_OUT: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(futex_outcome::COUNT as u32, 0);
/// Slow-event rate limiter, one window per CPU.
#[map]
pub(crate) static SLOW_RATE: PerCpuArray<RateWindow> = PerCpuArray::with_max_entries(1, 0);
/// Slow run-queue delays for userspace.
#[map]
pub(crate) static SLOW_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);
/// Capture filters: tgids and cgroup ids to record (used when the FILTER_* flags are set).
#[map]
pub(crate) static FILTER_TGID: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);
#[map]
pub(crate) static FILTER_CG: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

/// Go capture target (see schedlat_common::GoConfig); all zero unless a Go capture runs.
#[unsafe(no_mangle)]
pub(crate) static GO_CONFIG: GoConfig = GoConfig::NONE;
/// g address -> since when it is runnable or waiting (Go captures).
#[map]
pub(crate) static GO_G: HashMap<u64, GoGState> = HashMap::with_max_entries(65536, 0);
/// Go histograms, indexed by schedlat_common::go::hist.
#[map]
pub(crate) static GO_HISTS: Array<Hist> = Array::with_max_entries(go::hist::COUNT, 0);
/// Go counters, indexed by schedlat_common::go::counter.
#[map]
pub(crate) static GO_COUNTS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(go::counter::COUNT as u32, 0);
/// tid of a Go target thread -> its recent kernel run-queue waits.
#[map]
pub(crate) static GO_RUNQ: HashMap<u32, GoRunqRing> = HashMap::with_max_entries(4096, 0);

#[inline(always)]
pub(crate) fn cfg() -> &'static Config {
    // read_volatile so the compiler does not constant-fold the zero-initialised defaults.
    unsafe { &*read_volatile(&addr_of!(CONFIG)) }
}

#[inline(always)]
pub(crate) fn cfg_flags() -> u32 {
    unsafe { read_volatile(addr_of!(CONFIG.flags)) }
}

/// Per drop reason, whether its first drop was logged (kernel diagnostics, see [`first`]).
#[map]
pub(crate) static LOGGED: Array<u32> = Array::with_max_entries(drop_reason::COUNT as u32 + 1, 0);
/// LOGGED's slot for "a clock read earlier than the stamp it is compared with".
#[cfg(not(feature = "no-log"))]
pub(crate) const LOGGED_CLOCK: u32 = drop_reason::COUNT as u32;
