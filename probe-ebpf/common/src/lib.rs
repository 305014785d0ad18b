//! Kernel/user shared types for schedlat, defined once.
//!
//! Every type here is `#[repr(C)]`, has no implicit padding and pins its size, because the
//! eBPF programs write these bytes and userspace reads them back out of maps.
#![no_std]

pub mod hist;

pub use hist::{NUM_BUCKETS, bucket_index, bucket_lower_ns, bucket_upper_ns};

/// Length of `task_struct.comm` (TASK_COMM_LEN, include/linux/sched.h).
pub const COMM_LEN: usize = 16;

/// What a histogram or a delay is about.
pub mod kind {
    /// Run-queue delay of a task that was woken (sched_waking / sched_wakeup_new).
    pub const RUNQ_WOKEN: u32 = 0;
    /// Run-queue delay of a task that was switched out while still runnable (preempted).
    pub const RUNQ_PREEMPTED: u32 = 1;
    /// Time blocked in a futex wait.
    pub const FUTEX: u32 = 2;
    /// RunqStart cause only: switched out blocking in a futex syscall, not yet woken
    /// (futex tracking from sched_switch, [`super::flags::FUTEX_SCHED`]).
    pub const FUTEX_BLOCKED: u32 = 3;
}

/// Futex commands we treat as blocking (include/uapi/linux/futex.h), plus pseudo-ops for the
/// futex2 syscalls, which have their own tracepoints.
pub mod futex_op {
    pub const WAIT: u32 = 0;
    pub const LOCK_PI: u32 = 6;
    pub const WAIT_BITSET: u32 = 9;
    pub const WAIT_REQUEUE_PI: u32 = 11;
    pub const LOCK_PI2: u32 = 13;
    /// FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME: masked off to get the command.
    pub const FLAG_MASK: u32 = 128 | 256;
    /// sys_futex_waitv (Linux 5.16).
    pub const WAITV: u32 = 1000;
    /// sys_futex_wait, futex2 (Linux 6.7).
    pub const FUTEX2_WAIT: u32 = 1001;

    /// Whether `cmd` (op with the flag bits masked off) can block the caller.
    #[inline(always)]
    pub const fn is_blocking(cmd: u32) -> bool {
        matches!(
            cmd,
            WAIT | LOCK_PI | WAIT_BITSET | WAIT_REQUEUE_PI | LOCK_PI2
        )
    }
}

/// How a futex wait ended, indexes into the `FUTEX_OUT` counters.
pub mod futex_outcome {
    /// Returned 0: woken (or lock acquired).
    pub const WOKEN: u32 = 0;
    /// -ETIMEDOUT.
    pub const TIMEOUT: u32 = 1;
    /// -EINTR / -ERESTARTSYS family: interrupted by a signal.
    pub const INTERRUPTED: u32 = 2;
    /// -EAGAIN / -EWOULDBLOCK: the futex word had changed, the caller never slept.
    /// Counted here, but not recorded as a wait.
    pub const VALUE_CHANGED: u32 = 3;
    /// Any other error.
    pub const OTHER_ERROR: u32 = 4;
    pub const COUNT: usize = 5;
}

/// Reasons an event was lost. Every drop is counted in the `DROPS` per-CPU array.
pub mod drop_reason {
    /// A run-queue start stamp could not be kept: RUNQ_START was full (the hash fallback).
    /// One delay lost.
    pub const RUNQ_START_FULL: u32 = 0;
    /// FUTEX_START was full: one futex wait lost.
    pub const FUTEX_START_FULL: u32 = 1;
    /// HISTS (futex series) or the run-queue slots (RQ_SLOTS) were full: a cgroup's series
    /// could not be created; one value lost.
    pub const HIST_FULL: u32 = 2;
    /// TASK_STATS was full (captures): per-task totals for one event lost.
    pub const TASK_FULL: u32 = 3;
    /// WAKE_PAIRS was full (captures): one waker->wakee count lost.
    pub const WAKE_PAIR_FULL: u32 = 4;
    /// A slow event exceeded the in-kernel rate limit.
    pub const SLOW_RATE_LIMITED: u32 = 5;
    /// The slow-event ring buffer was full.
    pub const SLOW_RINGBUF_FULL: u32 = 6;
    /// bpf_probe_read_kernel of a task field failed; the event was skipped.
    pub const READ_FAILED: u32 = 7;
    /// A switch-in found a stamp from before the task's previous switch-in (a consume and a
    /// stamp were lost since): discarded, one delay lost rather than a wrong one counted.
    pub const STALE_STAMP: u32 = 8;
    /// The task's local storage refused an access (bpf_task_storage_get returned NULL: its
    /// per-CPU lock was held, e.g. by a task exit freeing storage on this CPU, or no memory):
    /// one stamp or one delay lost.
    pub const TASK_STORAGE_BUSY: u32 = 9;
    /// PREEMPTS was full: one involuntary switch's (cgroup, preempting cgroup) count lost.
    pub const PREEMPT_FULL: u32 = 10;
    pub const COUNT: usize = 11;

    /// Label values, in index order.
    pub const NAMES: [&str; COUNT] = [
        "runq_start_map_full",
        "futex_start_map_full",
        "hist_map_full",
        "task_map_full",
        "wake_pair_map_full",
        "slow_event_rate_limited",
        "slow_event_ringbuf_full",
        "kernel_read_failed",
        "stale_stamp",
        "task_storage_busy",
        "preempt_map_full",
    ];
}

/// Bits of [`Config::flags`].
pub mod flags {
    /// Keep per-task totals and waker->wakee pairs (captures).
    pub const TRACK_TASKS: u32 = 1 << 0;
    /// Only record tasks whose tgid is in FILTER_TGID.
    pub const FILTER_TGID: u32 = 1 << 1;
    /// Only record tasks whose cgroup id is in FILTER_CGROUP.
    pub const FILTER_CGROUP: u32 = 1 << 2;
    /// sched_switch has no prev_state argument (kernel < 5.18): read prev's state instead.
    pub const READ_PREV_STATE: u32 = 1 << 3;
    /// Emit slow events to the ring buffer.
    pub const SLOW_EVENTS: u32 = 1 << 4;
    /// Track futex waits from sched_switch/sched_waking: a task switched out blocking while
    /// its syscall (pt_regs) is a futex wait is "blocked in futex" until it is woken. No
    /// syscall tracepoints, so no host-wide syscall slow path; no return codes either.
    pub const FUTEX_SCHED: u32 = 1 << 5;
    /// Count involuntary switches by (prev's cgroup, next's cgroup) in PREEMPTS (the daemon's
    /// noisy-neighbour attribution).
    pub const PREEMPTORS: u32 = 1 << 6;
}

/// Load-time configuration, one global (`CONFIG`) set by the loader with `override_global`.
/// Kernel struct offsets come from /sys/kernel/btf/vmlinux and tracepoint offsets from tracefs
/// `format` files (aya-ebpf cannot emit CO-RE relocations yet, aya issue #349).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// task_struct.pid
    pub task_pid: u32,
    /// task_struct.tgid
    pub task_tgid: u32,
    /// task_struct.__state (or .state before 5.14); used only with READ_PREV_STATE.
    pub task_state: u32,
    /// task_struct.comm
    pub task_comm: u32,
    /// task_struct.cgroups (struct css_set *)
    pub task_cgroups: u32,
    /// css_set.dfl_cgrp (struct cgroup *)
    pub css_set_dfl_cgrp: u32,
    /// cgroup.kn (struct kernfs_node *)
    pub cgroup_kn: u32,
    /// kernfs_node.id (u64; the cgroup id on 64-bit kernels)
    pub kernfs_node_id: u32,
    /// syscalls:sys_enter_futex field `op`
    pub tp_futex_op: u32,
    /// syscalls:sys_exit_* field `ret`
    pub tp_exit_ret: u32,
    /// Bits from [`flags`].
    pub flags: u32,
    /// Slow events allowed per CPU per second.
    pub slow_max_per_sec: u32,
    /// Delays at or above this are sent to userspace as slow events.
    pub slow_threshold_ns: u64,
    /// FUTEX_SCHED: pt_regs field holding the syscall number (x86_64 orig_ax).
    pub regs_syscall_nr: u32,
    /// FUTEX_SCHED: pt_regs field holding the second syscall argument (x86_64 si): futex op.
    pub regs_arg2: u32,
    /// FUTEX_SCHED: syscall numbers of futex, futex_waitv and futex_wait on this arch.
    pub nr_futex: u32,
    pub nr_futex_waitv: u32,
    pub nr_futex_wait: u32,
    /// task_struct.sched_info.pcount (unsigned long; 0 = absent, no CONFIG_SCHED_INFO): how
    /// many times the task was switched in, its "generation".
    pub task_pcount: u32,
}
const _: () = assert!(size_of::<Config>() == 80);

/// Key of the HISTS map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HistKey {
    /// cgroup v2 id of the task that waited.
    pub cgroup_id: u64,
    /// One of [`kind`].
    pub kind: u32,
    /// For kind::FUTEX, the futex command ([`futex_op`]); 0 otherwise.
    pub op: u32,
}
const _: () = assert!(size_of::<HistKey>() == 16);

/// Key of PREEMPTS: a task of `cgroup_id` switched out still runnable (the kernel's nivcsw)
/// and the CPU went to a task of `by_cgroup_id` (the idle task is not counted).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PreemptKey {
    pub cgroup_id: u64,
    pub by_cgroup_id: u64,
}
const _: () = assert!(size_of::<PreemptKey>() == 16);

/// A log-linear histogram of nanosecond values (see [`hist`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Hist {
    pub buckets: [u64; NUM_BUCKETS],
    pub sum_ns: u64,
    /// Racy maximum (BPF has no atomic max): exact on one CPU, may miss a concurrent larger
    /// value across CPUs by one update.
    pub max_ns: u64,
}
const _: () = assert!(size_of::<Hist>() == NUM_BUCKETS * 8 + 16);

impl Hist {
    pub const ZERO: Self = Self {
        buckets: [0; NUM_BUCKETS],
        sum_ns: 0,
        max_ns: 0,
    };
}

/// A task's run-queue state: its task-local storage (TASK_STORE), or on kernels without task
/// storage for tracing programs the value of RUNQ_START: when it became runnable, and why.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunqStart {
    /// When it became runnable (or, for kind::FUTEX_BLOCKED, when it blocked); 0 = no stamp
    /// (task storage: consumed at switch-in; RUNQ_START deletes the entry instead).
    pub ts_ns: u64,
    /// kind::RUNQ_WOKEN, kind::RUNQ_PREEMPTED or kind::FUTEX_BLOCKED
    pub cause: u32,
    /// FUTEX_SCHED: the futex op of the wait that just ended; valid when `futex_ns` is set.
    pub futex_op: u32,
    /// FUTEX_SCHED: how long it was blocked in futex before this wakeup, plus one (0 = none).
    pub futex_ns: u64,
    /// The task's tid (the map is keyed by task_struct address; this is for inspection).
    pub tid: u32,
    /// Task storage only: the RQ_HISTS slot of `cgroup_id`, cached so that a switch-in finds
    /// its cgroup's histograms without a hash lookup (checked against the slot's owner).
    pub slot: u32,
    /// The cgroup `slot` was resolved for (0: none yet; cgroup ids start at 1).
    pub cgroup_id: u64,
    /// The task's generation (sched_info.pcount, its switch-ins so far) when stamped. A stamp
    /// is valid only at the next switch-in: if a consume was lost there (task storage busy)
    /// and the next stamp too, the older stamp must not be taken for a later wait, or the
    /// time the task ran in between would count as run-queue delay.
    pub generation: u64,
}
const _: () = assert!(size_of::<RunqStart>() == 48);

/// One cgroup's run-queue histograms (RQ_HISTS, indexed by the slot RQ_SLOTS gives it), by
/// kind::RUNQ_WOKEN / kind::RUNQ_PREEMPTED.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RunqHists {
    /// The cgroup that owns the slot (0: free). A cached slot is used only while it matches.
    pub cgroup_id: u64,
    pub hists: [Hist; 2],
}
const _: () = assert!(size_of::<RunqHists>() == 8 + 2 * size_of::<Hist>());

impl RunqHists {
    pub const ZERO: Self = Self {
        cgroup_id: 0,
        hists: [Hist::ZERO; 2],
    };
}

/// Value of FUTEX_START: when a task entered a blocking futex op.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FutexStart {
    pub ts_ns: u64,
    pub op: u32,
    /// The task's tid (the map is keyed by task_struct address; this is for inspection).
    pub tid: u32,
}
const _: () = assert!(size_of::<FutexStart>() == 16);

/// Per-task totals (captures only), keyed by tid.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskStat {
    pub tgid: u32,
    pub _pad: u32,
    pub cgroup_id: u64,
    pub runq_count: u64,
    pub runq_sum_ns: u64,
    pub runq_max_ns: u64,
    pub runq_preempted_count: u64,
    pub runq_preempted_sum_ns: u64,
    pub futex_count: u64,
    pub futex_sum_ns: u64,
    pub futex_max_ns: u64,
    pub futex_timeouts: u64,
    pub comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<TaskStat>() == 104);

/// Key of WAKE_PAIRS.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct WakePair {
    pub waker_tid: u32,
    pub wakee_tid: u32,
    /// With waker_tid 0 (a CPU's idle task was current: an interrupt woke the wakee), the CPU
    /// it was raised on; 0 otherwise, so that ordinary pairs do not multiply by CPU.
    pub waker_cpu: u32,
}
const _: () = assert!(size_of::<WakePair>() == 12);

/// Value of WAKE_PAIRS. Comms are captured when the pair is first seen.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WakeCount {
    pub count: u64,
    pub waker_comm: [u8; COMM_LEN],
    pub wakee_comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<WakeCount>() == 40);

/// Per-CPU run-queue totals (PerCpuArray, one entry).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuStat {
    /// Indexed by kind::RUNQ_WOKEN / kind::RUNQ_PREEMPTED.
    pub count: [u64; 2],
    pub sum_ns: [u64; 2],
    pub max_ns: u64,
}
const _: () = assert!(size_of::<CpuStat>() == 40);

/// Per-CPU slow-event rate limiter state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateWindow {
    pub start_ns: u64,
    pub count: u64,
}

/// A run-queue delay at or above the threshold, sent through the SLOW_EVENTS ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlowEvent {
    /// bpf_ktime_get_ns() at switch-in.
    pub ts_ns: u64,
    pub delay_ns: u64,
    pub cgroup_id: u64,
    pub tid: u32,
    pub tgid: u32,
    pub cpu: u32,
    /// kind::RUNQ_WOKEN or kind::RUNQ_PREEMPTED
    pub cause: u32,
    /// The task that ran on this CPU just before the waiting task got it.
    pub prev_tid: u32,
    pub prev_tgid: u32,
    pub comm: [u8; COMM_LEN],
    pub prev_comm: [u8; COMM_LEN],
}
const _: () = assert!(size_of::<SlowEvent>() == 80);

/// Go per-event capture: a uprobe on `runtime.casgstatus` in one target process (captures
/// only; the daemon reads the runtime's own statistics instead and attaches no uprobe).
pub mod go {
    /// Histograms in GO_HISTS, by index.
    pub mod hist {
        /// Runnable -> running, per transition (not sampled).
        pub const SCHED_LATENCY: u32 = 0;
        /// The part of SCHED_LATENCY its M (thread) did not spend on the kernel run queue:
        /// waiting for a P / for the scheduler to pick it.
        pub const WAIT_P: u32 = 1;
        /// The part of SCHED_LATENCY its M spent runnable on the kernel run queue.
        pub const WAIT_M_RUNQ: u32 = 2;
        /// Time in a system call: _Grunning -> _Gsyscall (entersyscall) until the goroutine
        /// leaves _Gsyscall (exitsyscall), whether it kept its P or not.
        pub const SYSCALL: u32 = 3;
        /// Runnable -> running of goroutines whose syscall returned without a P (exitsyscall0:
        /// _Gsyscall -> _Grunnable): the scheduling latency a blocking syscall cost them.
        pub const SYSCALL_LOST_P_LATENCY: u32 = 4;
        /// Blocked (waiting) time by wait reason: `BLOCKED + reason` (runtime.waitReason, u8).
        pub const BLOCKED: u32 = 16;
        pub const COUNT: u32 = BLOCKED + 256;
    }
    /// Counters in GO_COUNTS (per CPU), by index.
    pub mod counter {
        /// Uprobe hits (every casgstatus call of the target).
        pub const HITS: u32 = 0;
        /// _Gdead -> _Grunnable: goroutines started (runtime.newproc1).
        pub const CREATED: u32 = 1;
        /// -> _Gdead: goroutines that ended (runtime.goexit0).
        pub const EXITED: u32 = 2;
        /// GO_G was full: a transition's start was not kept, one interval lost.
        pub const G_MAP_FULL: u32 = 3;
        /// Reading g.waitreason from the target failed; recorded under reason 255.
        pub const REASON_READ_FAILED: u32 = 4;
        /// GO_RUNQ was full: a thread's run-queue intervals not kept (split less exact).
        pub const RUNQ_MAP_FULL: u32 = 5;
        /// Runnable -> running with more run-queue intervals of its M in the window than the
        /// ring keeps: the M-run-queue part is a lower bound for these.
        pub const RING_OVERRUN: u32 = 6;
        /// _Gsyscall -> _Grunning: a syscall return that kept its P (exitsyscall's fast
        /// path). Not a scheduling latency, but runtime/metrics counts these as 0 s samples.
        pub const SYSCALL_FAST_RETURNS: u32 = 7;
        /// _Gsyscall -> _Grunnable: a syscall return that found its P taken (the runtime
        /// handed it to another M while the thread was blocked) and had to be scheduled again.
        pub const SYSCALL_LOST_P: u32 = 8;
        /// Syscall returns (a goroutine leaving _Gsyscall): from casgstatus up to Go 1.25,
        /// from the uprobe on runtime.exitsyscall on Go >= 1.26.
        pub const SYSCALL_EXITS: u32 = 9;
        /// _Gwaiting -> _Grunning with no runnable time between: the GC's own switches
        /// (gcBgMarkWorker, mark assists scanning their stack, stopTheWorldWithSema; runtime/
        /// mgc.go, mgcmark.go, proc.go). Not a scheduling latency, but runtime/metrics counts
        /// each (of the sampled goroutines) as a 0 s sample.
        pub const WAITING_TO_RUNNING: u32 = 10;
        pub const COUNT: usize = 11;
    }
    /// Run-queue intervals kept per thread of the target ([`super::GoRunqRing`]).
    pub const RING: usize = 8;
    /// GoGState::state values.
    pub const SINCE_RUNNABLE: u32 = 1;
    pub const SINCE_WAITING: u32 = 2;
    pub const SINCE_SYSCALL: u32 = 3;
    /// Go >= 1.26: exitsyscallNoP is putting the goroutine back on a run queue (its next
    /// casgstatus, _Grunning -> _Grunnable, is a lost-P return, not a preemption).
    pub const SYSCALL_NO_P: u32 = 4;
    /// GoGState::reason of a SINCE_RUNNABLE entry whose goroutine came back from a syscall
    /// without its P.
    pub const RUNNABLE_AFTER_SYSCALL: u32 = 1;
}

/// Load-time configuration of the Go uprobe (`GO_CONFIG`). Goroutine status values and the
/// offset of runtime.g.waitreason come from the target's DWARF (runtime2.go constants).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoConfig {
    /// The traced process; 0 = no Go capture (the run-queue ring is not kept).
    pub tgid: u32,
    /// Offset of runtime.g.waitreason (uint8).
    pub g_waitreason: u32,
    pub st_idle: u32,
    pub st_runnable: u32,
    pub st_running: u32,
    pub st_syscall: u32,
    pub st_waiting: u32,
    pub st_dead: u32,
}
const _: () = assert!(size_of::<GoConfig>() == 32);

impl GoConfig {
    /// No Go capture: tgid 0, and statuses no goroutine can have (so no branch matches).
    pub const NONE: Self = Self {
        tgid: 0,
        g_waitreason: 0,
        st_idle: u32::MAX,
        st_runnable: u32::MAX,
        st_running: u32::MAX,
        st_syscall: u32::MAX,
        st_waiting: u32::MAX,
        st_dead: u32::MAX,
    };
}

/// Value of GO_G, keyed by the g's address: since when it has been runnable or waiting.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoGState {
    pub ts_ns: u64,
    /// go::SINCE_RUNNABLE or go::SINCE_WAITING
    pub state: u32,
    /// runtime.waitReason when waiting.
    pub reason: u32,
}
const _: () = assert!(size_of::<GoGState>() == 16);

/// Value of GO_RUNQ, keyed by tid: the last [`go::RING`] kernel run-queue waits of a target
/// thread, [start, end) in bpf_ktime_get_ns time; `next` counts every interval ever written.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoRunqRing {
    pub next: u64,
    pub start: [u64; go::RING],
    pub end: [u64; go::RING],
}
const _: () = assert!(size_of::<GoRunqRing>() == 8 + 16 * go::RING);

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)], Copy, have no padding (sizes pinned above) and any
    // bit pattern is a valid value.
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for HistKey {}
    unsafe impl aya::Pod for PreemptKey {}
    unsafe impl aya::Pod for Hist {}
    unsafe impl aya::Pod for RunqStart {}
    unsafe impl aya::Pod for RunqHists {}
    unsafe impl aya::Pod for FutexStart {}
    unsafe impl aya::Pod for TaskStat {}
    unsafe impl aya::Pod for WakePair {}
    unsafe impl aya::Pod for WakeCount {}
    unsafe impl aya::Pod for CpuStat {}
    unsafe impl aya::Pod for SlowEvent {}
    unsafe impl aya::Pod for GoConfig {}
    unsafe impl aya::Pod for GoGState {}
    unsafe impl aya::Pod for GoRunqRing {}
}
