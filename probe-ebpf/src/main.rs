//! schedlat kernel-side programs.
//!
//! Thin entries around shared handlers. All aggregation happens here, into bounded maps;
//! userspace only reads them. Every failed insert or lost event bumps a `DROPS` counter.
//!
//! Run-queue delay follows the kernel's own definition (sched_info in kernel/sched/stats.h):
//! from becoming runnable (woken, or switched out while still runnable) to being switched in.
#![no_std]
#![no_main]
// BPF atomic add needs inline asm: the bpfel target has no atomic-cas, so core's fetch_add is
// unavailable. Built with RUSTC_BOOTSTRAP=aya_ebpf,schedlat_probes (see probe-user/build.rs).
#![feature(asm_experimental_arch)]

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_get_smp_processor_id, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user, bpf_task_pt_regs,
    },
    macros::{btf_tracepoint, map, tracepoint, uprobe},
    maps::{Array, HashMap, PerCpuArray, Queue, RingBuf},
    programs::{BtfTracePointContext, ProbeContext, TracePointContext},
};
use aya_log_ebpf::debug;
use schedlat_common::{
    COMM_LEN, Config, CpuStat, FutexStart, GoConfig, GoGState, GoRunqRing, Hist, HistKey,
    RateWindow, RunqHists, RunqStart, SlowEvent, TaskStat, WakeCount, WakePair, bucket_index,
    drop_reason, flags, futex_op, futex_outcome, go, kind,
};

mod stamps;
use stamps::{consume, forget, stamp, stamp_woken, state_of};

/// Set by the loader before load (read-only data: the verifier sees the values as constants).
#[unsafe(no_mangle)]
static CONFIG: Config = Config {
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
static FUTEX_START: HashMap<u64, FutexStart> = HashMap::with_max_entries(65536, 0);
/// (cgroup, kind::FUTEX, op) -> histogram. Run-queue series are in RQ_HISTS.
#[map]
static HISTS: HashMap<HistKey, Hist> = HashMap::with_max_entries(4096, 0);
/// cgroup id -> its slot in RQ_HISTS. Looked up only when a task's cached slot is stale.
#[map]
static RQ_SLOTS: HashMap<u64, u32> = HashMap::with_max_entries(2048, 0);
/// Free RQ_HISTS slots: the loader pushes them all; the daemon pushes back the slots of
/// removed cgroups after zeroing them.
#[map]
static RQ_FREE: Queue<u32> = Queue::with_max_entries(2048, 0);
/// Run-queue histograms by slot (one cgroup each, woken and preempted).
#[map]
static RQ_HISTS: Array<RunqHists> = Array::with_max_entries(2048, 0);
/// One zeroed histogram: the value used to create HISTS entries (too big for the stack).
#[map]
static ZERO_HIST: Array<Hist> = Array::with_max_entries(1, 0);
/// tid -> totals (captures).
#[map]
static TASK_STATS: HashMap<u32, TaskStat> = HashMap::with_max_entries(32768, 0);
/// waker/wakee tids -> count (captures).
#[map]
static WAKE_PAIRS: HashMap<WakePair, WakeCount> = HashMap::with_max_entries(32768, 0);
/// Per-CPU run-queue totals.
#[map]
static CPU_STATS: PerCpuArray<CpuStat> = PerCpuArray::with_max_entries(1, 0);
/// Lost events, by drop_reason.
#[map]
static DROPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(drop_reason::COUNT as u32, 0);
/// Futex waits by how they ended, by futex_outcome.
#[map]
static FUTEX_OUT: PerCpuArray<u64> = PerCpuArray::with_max_entries(futex_outcome::COUNT as u32, 0);
/// Slow-event rate limiter, one window per CPU.
#[map]
static SLOW_RATE: PerCpuArray<RateWindow> = PerCpuArray::with_max_entries(1, 0);
/// Slow run-queue delays for userspace.
#[map]
static SLOW_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);
/// Capture filters: tgids and cgroup ids to record (used when the FILTER_* flags are set).
#[map]
static FILTER_TGID: HashMap<u32, u8> = HashMap::with_max_entries(1024, 0);
#[map]
static FILTER_CG: HashMap<u64, u8> = HashMap::with_max_entries(4096, 0);

/// Go capture target (see schedlat_common::GoConfig); all zero unless a Go capture runs.
#[unsafe(no_mangle)]
static GO_CONFIG: GoConfig = GoConfig {
    tgid: 0,
    g_waitreason: 0,
    st_idle: u32::MAX,
    st_runnable: u32::MAX,
    st_running: u32::MAX,
    st_syscall: u32::MAX,
    st_waiting: u32::MAX,
    st_dead: u32::MAX,
};
/// g address -> since when it is runnable or waiting (Go captures).
#[map]
static GO_G: HashMap<u64, GoGState> = HashMap::with_max_entries(65536, 0);
/// Go histograms, indexed by schedlat_common::go::hist.
#[map]
static GO_HISTS: Array<Hist> = Array::with_max_entries(go::hist::COUNT, 0);
/// Go counters, indexed by schedlat_common::go::counter.
#[map]
static GO_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(go::counter::COUNT as u32, 0);
/// tid of a Go target thread -> its recent kernel run-queue waits.
#[map]
static GO_RUNQ: HashMap<u32, GoRunqRing> = HashMap::with_max_entries(4096, 0);

#[inline(always)]
fn cfg() -> &'static Config {
    // read_volatile so the compiler does not constant-fold the zero-initialised defaults.
    unsafe { &*read_volatile(&addr_of!(CONFIG)) }
}

#[inline(always)]
fn cfg_flags() -> u32 {
    unsafe { read_volatile(addr_of!(CONFIG.flags)) }
}

/// Per drop reason, whether its first drop was logged (kernel diagnostics, see [`first`]).
#[map]
static LOGGED: Array<u32> = Array::with_max_entries(drop_reason::COUNT as u32 + 1, 0);
/// LOGGED's slot for "a clock read earlier than the stamp it is compared with".
const LOGGED_CLOCK: u32 = drop_reason::COUNT as u32;

/// Kernel-side diagnostics go through aya-log at debug level. The loader sets AYA_LOG_LEVEL
/// (read-only data) to 0 unless schedlat logs at debug, so the verifier removes the log code
/// and the LOGGED update (callers test the level before calling this, for that reason); a
/// load and a compare per site stay. Each kind is logged the first time it happens only.
#[inline(always)]
fn first(slot: u32) -> bool {
    match LOGGED.get_ptr_mut(slot) {
        Some(p) => unsafe {
            let was = *p;
            *p = 1;
            was == 0
        },
        None => false,
    }
}

#[inline(always)]
fn count_drop(reason: u32) {
    if let Some(p) = DROPS.get_ptr_mut(reason) {
        unsafe { *p += 1 };
    }
    if aya_log_ebpf::macro_support::level_enabled(aya_log_ebpf::macro_support::Level::Debug)
        && first(reason)
    {
        // aya-log-ebpf 0.2 does not use the context argument.
        debug!(
            &(),
            "first event lost: drop reason {} (a map full or a failed read)", reason
        );
    }
}

#[inline(always)]
fn atomic_add(p: *mut u64, v: u64) {
    // BPF_ATOMIC | BPF_ADD without BPF_FETCH: available on every kernel with eBPF.
    unsafe {
        core::arch::asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) p, v = in(reg) v);
    }
}

/// Read a field of a kernel object at a byte offset known only at load time.
#[inline(always)]
unsafe fn read_field<T>(base: *const u8, off: u32) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const T) }
}

/// Direct load of a field of a BTF-typed kernel pointer (a tp_btf argument, or a pointer
/// field loaded from one). The verifier checks the access against BTF and the JIT emits one
/// fault-guarded load: far cheaper than a bpf_probe_read_kernel call. `off` is a verifier-known
/// constant because CONFIG lives in frozen read-only data.
#[inline(always)]
unsafe fn btf_load<T: Copy>(base: *const u8, off: u32) -> T {
    unsafe { read_volatile(base.add(off as usize) as *const T) }
}

/// The task's generation: its switch-ins so far (task_struct.sched_info.pcount), 0 without
/// CONFIG_SCHED_INFO (no check then). At sched_switch next's count does not include this
/// switch-in yet: sched_info_arrive runs in context_switch, after the tracepoint
/// (kernel/sched/core.c __schedule). Not nvcsw: a wakeup racing a task's switch-out can stamp
/// it before its nvcsw moves, and that stamp is good.
#[inline(always)]
fn task_generation(task: *const u8) -> u64 {
    let off = cfg().task_pcount;
    if off == 0 {
        return 0;
    }
    unsafe { btf_load::<u64>(task, off) }
}

#[inline(always)]
fn task_pid(task: *const u8) -> Result<u32, i32> {
    Ok(unsafe { btf_load::<i32>(task, cfg().task_pid) } as u32)
}

#[inline(always)]
fn task_tgid(task: *const u8) -> Result<u32, i32> {
    Ok(unsafe { btf_load::<i32>(task, cfg().task_tgid) } as u32)
}

#[inline(always)]
fn task_comm(task: *const u8) -> [u8; COMM_LEN] {
    unsafe { read_field::<[u8; COMM_LEN]>(task, cfg().task_comm).unwrap_or([0; COMM_LEN]) }
}

/// task->cgroups->dfl_cgrp->kn->id: the v2 cgroup id, as bpf_get_current_cgroup_id() gives
/// for the current task (kernel/bpf/helpers.c), but for any task.
#[inline(always)]
fn task_cgroup_id(task: *const u8) -> Result<u64, i32> {
    let c = cfg();
    unsafe {
        let cset: *const u8 = btf_load(task, c.task_cgroups);
        let cgrp: *const u8 = btf_load(cset, c.css_set_dfl_cgrp);
        let kn: *const u8 = btf_load(cgrp, c.cgroup_kn);
        Ok(btf_load::<u64>(kn, c.kernfs_node_id))
    }
}

/// Whether a task passes the capture filters. `tgid`/`cgroup` are only read when a filter
/// needs them.
#[inline(always)]
fn wanted(f: u32, tgid: u32, cgroup_id: u64) -> bool {
    if f & flags::FILTER_TGID != 0 && unsafe { FILTER_TGID.get(tgid) }.is_none() {
        return false;
    }
    if f & flags::FILTER_CGROUP != 0 && unsafe { FILTER_CG.get(cgroup_id) }.is_none() {
        return false;
    }
    true
}

#[inline(always)]
fn hist_add(key: &HistKey, ns: u64) {
    let h = match HISTS.get_ptr_mut(key) {
        Some(h) => h,
        None => {
            let Some(zero) = ZERO_HIST.get(0) else { return };
            // BPF_NOEXIST: another CPU may have created it meanwhile; that is fine.
            let _ = HISTS.insert(key, zero, BPF_NOEXIST as u64);
            match HISTS.get_ptr_mut(key) {
                Some(h) => h,
                None => {
                    count_drop(drop_reason::HIST_FULL);
                    return;
                }
            }
        }
    };
    hist_bump(h, ns);
}

#[inline(always)]
fn hist_bump(h: *mut Hist, ns: u64) {
    let idx = bucket_index(ns);
    unsafe {
        if idx < (*h).buckets.len() {
            atomic_add(&mut (*h).buckets[idx], 1);
        }
        atomic_add(&mut (*h).sum_ns, ns);
        if ns > (*h).max_ns {
            (*h).max_ns = ns;
        }
    }
}

/// The RQ_HISTS slot of `cgroup_id`, found in RQ_SLOTS or taken from RQ_FREE.
#[inline(always)]
fn rq_slot(cgroup_id: u64) -> Option<u32> {
    if let Some(s) = unsafe { RQ_SLOTS.get(cgroup_id) } {
        return Some(*s);
    }
    let Ok(Some(slot)) = RQ_FREE.pop() else {
        count_drop(drop_reason::HIST_FULL);
        return None;
    };
    if RQ_SLOTS.insert(cgroup_id, slot, BPF_NOEXIST as u64).is_ok() {
        if let Some(h) = RQ_HISTS.get_ptr_mut(slot) {
            unsafe { (*h).cgroup_id = cgroup_id };
        }
        return Some(slot);
    }
    // Another CPU gave this cgroup a slot meanwhile (or RQ_SLOTS is full): return ours.
    let _ = RQ_FREE.push(slot, 0);
    match unsafe { RQ_SLOTS.get(cgroup_id) } {
        Some(s) => Some(*s),
        None => {
            count_drop(drop_reason::HIST_FULL);
            None
        }
    }
}

/// `cgroup_id`'s run-queue histograms. With task storage the slot is cached in the task's
/// state `st` and used while the slot still belongs to that cgroup: no hash lookup on the
/// steady path. A task that moved to another cgroup, or a slot the daemon freed and gave to
/// another cgroup, fails the check and is resolved again.
#[inline(always)]
fn runq_hists(st: Option<*mut RunqStart>, cgroup_id: u64) -> Option<*mut RunqHists> {
    if let Some(st) = st {
        let (cached_cg, cached_slot) = unsafe { ((*st).cgroup_id, (*st).slot) };
        if cached_cg == cgroup_id
            && let Some(h) = RQ_HISTS.get_ptr_mut(cached_slot)
            && unsafe { (*h).cgroup_id } == cgroup_id
        {
            return Some(h);
        }
    }
    let slot = rq_slot(cgroup_id)?;
    if let Some(st) = st {
        unsafe {
            (*st).cgroup_id = cgroup_id;
            (*st).slot = slot;
        }
    }
    RQ_HISTS.get_ptr_mut(slot)
}

/// The futex op `task` is blocking in, from its saved user registers: the syscall number and
/// second argument (arch/x86/include/asm/ptrace.h; syscall numbers from
/// arch/x86/entry/syscalls/syscall_64.tbl, passed in by the loader).
#[inline(always)]
fn futex_block_op(task: *const u8) -> Option<u32> {
    let c = cfg();
    let regs = unsafe { bpf_task_pt_regs(task as *mut _) } as *const u8;
    if regs.is_null() {
        return None;
    }
    // bpf_task_pt_regs returns a BTF pointer (struct pt_regs): direct loads, no helper call.
    let nr = unsafe { btf_load::<u64>(regs, c.regs_syscall_nr) };
    if nr == c.nr_futex as u64 {
        let op = unsafe { btf_load::<u64>(regs, c.regs_arg2) };
        let cmd = op as u32 & !futex_op::FLAG_MASK;
        return if futex_op::is_blocking(cmd) {
            Some(cmd)
        } else {
            None
        };
    }
    if nr == c.nr_futex_waitv as u64 {
        return Some(futex_op::WAITV);
    }
    if nr == c.nr_futex_wait as u64 {
        return Some(futex_op::FUTEX2_WAIT);
    }
    None
}

/// Shared body of sched_waking (in the waker's context) and sched_wakeup_new.
///
/// Kept to one field read and one map update on the host-wide path (the daemon): wakeups per
/// cgroup are the cause=woken run-queue waits counted at switch-in, where the wakee's cgroup
/// is read anyway.
#[inline(always)]
fn on_wake(p: *const u8, count_waker: bool) -> Result<(), i32> {
    let f = cfg_flags();
    let tid = task_pid(p)?;
    if tid == 0 {
        return Ok(());
    }
    let needs_tgid = f & flags::FILTER_TGID != 0;
    let needs_cg = f & flags::FILTER_CGROUP != 0;
    let tgid = if needs_tgid { task_tgid(p)? } else { 0 };
    let cgroup_id = if needs_cg { task_cgroup_id(p)? } else { 0 };
    if !wanted(f, tgid, cgroup_id) {
        return Ok(());
    }
    stamp_woken(p, tid, f, unsafe { bpf_ktime_get_ns() }, task_generation(p));
    if !count_waker {
        return Ok(());
    }
    if f & flags::TRACK_TASKS != 0 {
        let waker_tid = bpf_get_current_pid_tgid() as u32;
        let key = WakePair {
            waker_tid,
            wakee_tid: tid,
        };
        match WAKE_PAIRS.get_ptr_mut(key) {
            Some(c) => atomic_add(unsafe { &mut (*c).count }, 1),
            None => {
                let v = WakeCount {
                    count: 1,
                    waker_comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
                    wakee_comm: task_comm(p),
                };
                if WAKE_PAIRS.insert(key, v, BPF_NOEXIST as u64).is_err() {
                    match WAKE_PAIRS.get_ptr_mut(key) {
                        Some(c) => atomic_add(unsafe { &mut (*c).count }, 1),
                        None => count_drop(drop_reason::WAKE_PAIR_FULL),
                    }
                }
            }
        }
    }
    Ok(())
}

/// TASK_RUNNING (include/linux/sched.h).
const TASK_RUNNING: u64 = 0;
/// TASK_DEAD (include/linux/sched.h, 0x80 since 4.14): the state of a task's last switch-out
/// (do_task_dead, kernel/sched/core.c).
const TASK_DEAD: u64 = 0x80;

/// Shared body of sched_switch. Runs on the CPU doing the switch, in prev's context.
#[inline(always)]
fn on_switch(preempt: bool, prev: *const u8, next: *const u8, prev_state: u64) -> Result<(), i32> {
    let f = cfg_flags();
    let now = unsafe { bpf_ktime_get_ns() };

    // prev is still runnable if it was preempted, or switched out with state TASK_RUNNING
    // (yield, cond_resched, or woken before it could sleep). The classic tracepoint reports
    // TASK_REPORT_MAX for preemption, so checking `prev_state == 0` there misses it
    // (kernel/sched/core.c __schedule, include/trace/events/sched.h).
    let prev_state = if f & flags::READ_PREV_STATE != 0 {
        unsafe { read_field::<u32>(prev, cfg().task_state)? as u64 }
    } else {
        prev_state
    };
    let prev_tid = task_pid(prev)?;
    let runnable = preempt || prev_state == TASK_RUNNING;
    if prev_tid != 0 && !runnable && prev_state & TASK_DEAD != 0 {
        // prev never switches in again, so nothing else would delete its stamps: one left by
        // a wakeup that raced its exit, and the futex stamp its saved registers would earn a
        // thread killed while blocked in futex (they still show that syscall). Two deletes
        // per task exit, whatever the filter.
        forget(prev);
        let _ = FUTEX_START.remove(prev as u64);
        // A Go capture's thread ring too (a reused tid must not inherit old waits).
        if unsafe { read_volatile(addr_of!(GO_CONFIG.tgid)) } != 0 {
            let _ = GO_RUNQ.remove(prev_tid);
        }
    } else if prev_tid != 0 && (runnable || f & flags::FUTEX_SCHED != 0) {
        let wanted_prev = if f & (flags::FILTER_TGID | flags::FILTER_CGROUP) != 0 {
            let tgid = task_tgid(prev)?;
            // prev is current here: its cgroup id is one helper call away.
            let cg = unsafe { bpf_get_current_cgroup_id() };
            wanted(f, tgid, cg)
        } else {
            true
        };
        if wanted_prev {
            if runnable {
                stamp(
                    prev,
                    prev_tid,
                    kind::RUNQ_PREEMPTED,
                    0,
                    now,
                    task_generation(prev),
                );
            } else if let Some(op) = futex_block_op(prev) {
                // Overwrites a stale stamp; a waking that raced ahead of this switch-out is
                // handled at switch-in (cause still FUTEX_BLOCKED).
                stamp(
                    prev,
                    prev_tid,
                    kind::FUTEX_BLOCKED,
                    op,
                    now,
                    task_generation(prev),
                );
            }
        }
    }

    let tid = task_pid(next)?;
    if tid == 0 {
        // The idle task is always "runnable"; it has no run-queue delay.
        return Ok(());
    }
    let Some(st) = state_of(next) else {
        return Ok(());
    };
    let (ts, cause, futex_op, mut futex_ns, generation) = unsafe {
        (
            (*st).ts_ns,
            (*st).cause,
            (*st).futex_op,
            (*st).futex_ns,
            (*st).generation,
        )
    };
    let st = consume(next, st);
    if generation != task_generation(next) {
        count_drop(drop_reason::STALE_STAMP);
        return Ok(());
    }
    // A task woken on one CPU and switched in on another at once can read an earlier time
    // there: bpf_ktime_get_ns (ktime_get_mono_fast_ns) is not guaranteed ordered across
    // CPUs. Its delay is ~0, and it must still count: saturate, never drop.
    let delay = now.saturating_sub(ts);
    if now < ts
        && aya_log_ebpf::macro_support::level_enabled(aya_log_ebpf::macro_support::Level::Debug)
        && first(LOGGED_CLOCK)
    {
        debug!(
            &(),
            "clock behind a stamp from another CPU by {} ns at switch-in of tid {} (counted as 0)",
            ts - now,
            tid
        );
    }
    if cause == kind::FUTEX_BLOCKED {
        // Its waking ran before its own switch-out was traced: it was woken as it blocked.
        futex_ns = 1;
    }
    let cause = if cause == kind::RUNQ_PREEMPTED {
        kind::RUNQ_PREEMPTED
    } else {
        kind::RUNQ_WOKEN
    };
    let go_tgid = unsafe { read_volatile(addr_of!(GO_CONFIG.tgid)) };
    if go_tgid != 0 && task_tgid(next)? == go_tgid {
        go_runq_interval(tid, ts, now);
    }
    let cgroup_id = task_cgroup_id(next)?;
    if let Some(h) = runq_hists(st, cgroup_id) {
        hist_bump(
            unsafe { core::ptr::addr_of_mut!((*h).hists[(cause & 1) as usize]) },
            delay,
        );
    }
    if futex_ns != 0 {
        let wait = futex_ns - 1;
        hist_add(
            &HistKey {
                cgroup_id,
                kind: kind::FUTEX,
                op: futex_op,
            },
            wait,
        );
        if f & flags::TRACK_TASKS != 0 {
            let tgid = task_tgid(next)?;
            task_futex(tid, tgid, cgroup_id, task_comm(next), wait, false);
        }
    }

    if let Some(c) = CPU_STATS.get_ptr_mut(0) {
        let i = cause as usize & 1;
        unsafe {
            (*c).count[i] += 1;
            (*c).sum_ns[i] += delay;
            if delay > (*c).max_ns {
                (*c).max_ns = delay;
            }
        }
    }

    let needs_tgid = f & (flags::TRACK_TASKS | flags::SLOW_EVENTS) != 0;
    let tgid = if needs_tgid { task_tgid(next)? } else { 0 };

    if f & flags::TRACK_TASKS != 0 {
        task_runq(tid, tgid, cgroup_id, next, cause, delay);
    }
    if f & flags::SLOW_EVENTS != 0 && delay >= cfg().slow_threshold_ns {
        slow_event(
            now, delay, cgroup_id, tid, tgid, cause, next, prev, prev_tid,
        );
    }
    Ok(())
}

#[inline(always)]
fn task_runq(tid: u32, tgid: u32, cgroup_id: u64, task: *const u8, cause: u32, delay: u64) {
    let s = match TASK_STATS.get_ptr_mut(tid) {
        Some(s) => s,
        None => {
            let v = TaskStat {
                tgid,
                cgroup_id,
                comm: task_comm(task),
                ..Default::default()
            };
            if TASK_STATS.insert(tid, v, BPF_NOEXIST as u64).is_err() {
                // Not a race: a tid's switch-ins are serialised. The map is full.
                count_drop(drop_reason::TASK_FULL);
                return;
            }
            match TASK_STATS.get_ptr_mut(tid) {
                Some(s) => s,
                None => return,
            }
        }
    };
    unsafe {
        (*s).runq_count += 1;
        (*s).runq_sum_ns += delay;
        if delay > (*s).runq_max_ns {
            (*s).runq_max_ns = delay;
        }
        if cause == kind::RUNQ_PREEMPTED {
            (*s).runq_preempted_count += 1;
            (*s).runq_preempted_sum_ns += delay;
        }
        // The comm can change (exec, prctl): keep the latest.
        (*s).comm = task_comm(task);
    }
}

#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; a struct would cost stack"
)]
fn slow_event(
    now: u64,
    delay: u64,
    cgroup_id: u64,
    tid: u32,
    tgid: u32,
    cause: u32,
    next: *const u8,
    prev: *const u8,
    prev_tid: u32,
) {
    if let Some(w) = SLOW_RATE.get_ptr_mut(0) {
        unsafe {
            if now.wrapping_sub((*w).start_ns) >= 1_000_000_000 {
                (*w).start_ns = now;
                (*w).count = 0;
            }
            if (*w).count >= cfg().slow_max_per_sec as u64 {
                count_drop(drop_reason::SLOW_RATE_LIMITED);
                return;
            }
            (*w).count += 1;
        }
    }
    let Some(mut e) = SLOW_EVENTS.reserve::<SlowEvent>(0) else {
        count_drop(drop_reason::SLOW_RINGBUF_FULL);
        return;
    };
    let ev = SlowEvent {
        ts_ns: now,
        delay_ns: delay,
        cgroup_id,
        tid,
        tgid,
        cpu: unsafe { bpf_get_smp_processor_id() },
        cause,
        prev_tid,
        prev_tgid: task_tgid(prev).unwrap_or(0),
        comm: task_comm(next),
        prev_comm: task_comm(prev),
    };
    e.write(ev);
    e.submit(0);
}

// ---- run-queue delay and wakeups: BTF-enabled tracepoints (cheaper than classic ones) ----

/// sched_waking(struct task_struct *p): fires in the waker's context (kernel/sched/core.c
/// try_to_wake_up), so the waker is `current`.
#[btf_tracepoint(function = "sched_waking")]
pub fn sched_waking(ctx: BtfTracePointContext) -> i32 {
    let p: *const u8 = ctx.arg(0);
    if on_wake(p, true).is_err() {
        count_drop(drop_reason::READ_FAILED);
    }
    0
}

/// sched_wakeup_new(struct task_struct *p): a new task's first enqueue (wake_up_new_task).
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    let p: *const u8 = ctx.arg(0);
    if on_wake(p, false).is_err() {
        count_drop(drop_reason::READ_FAILED);
    }
    0
}

/// sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state) — prev_state since 5.18 (fa2c3254d7cf).
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let preempt: u64 = ctx.arg(0);
    let prev: *const u8 = ctx.arg(1);
    let next: *const u8 = ctx.arg(2);
    let prev_state: u64 = if cfg_flags() & flags::READ_PREV_STATE != 0 {
        0
    } else {
        ctx.arg(3)
    };
    if on_switch(preempt & 0xff != 0, prev, next, prev_state & 0xffff_ffff).is_err() {
        count_drop(drop_reason::READ_FAILED);
    }
    0
}

// ---- futex blocking: syscall tracepoints (offsets from their format files) ----

#[inline(always)]
fn futex_enter(op: u32) {
    let f = cfg_flags();
    let pid_tgid = bpf_get_current_pid_tgid();
    let task = unsafe { bpf_get_current_task() };
    if f & (flags::FILTER_TGID | flags::FILTER_CGROUP) != 0 {
        let cg = unsafe { bpf_get_current_cgroup_id() };
        if !wanted(f, (pid_tgid >> 32) as u32, cg) {
            return;
        }
    }
    let v = FutexStart {
        ts_ns: unsafe { bpf_ktime_get_ns() },
        op,
        tid: pid_tgid as u32,
    };
    if FUTEX_START.insert(task, v, 0).is_err() {
        count_drop(drop_reason::FUTEX_START_FULL);
    }
}

#[tracepoint(category = "syscalls", name = "sys_enter_futex")]
pub fn sys_enter_futex(ctx: TracePointContext) -> u32 {
    let Ok(op) = (unsafe { ctx.read_at::<u64>(cfg().tp_futex_op as usize) }) else {
        count_drop(drop_reason::READ_FAILED);
        return 0;
    };
    let cmd = op as u32 & !futex_op::FLAG_MASK;
    if futex_op::is_blocking(cmd) {
        futex_enter(cmd);
    }
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_futex_waitv")]
pub fn sys_enter_futex_waitv(_ctx: TracePointContext) -> u32 {
    futex_enter(futex_op::WAITV);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_futex_wait")]
pub fn sys_enter_futex_wait(_ctx: TracePointContext) -> u32 {
    futex_enter(futex_op::FUTEX2_WAIT);
    0
}

/// Shared exit handler for every futex syscall we enter-trace.
#[tracepoint(category = "syscalls", name = "sys_exit_futex")]
pub fn sys_exit_futex(ctx: TracePointContext) -> u32 {
    futex_exit(&ctx);
    0
}

#[inline(always)]
fn futex_exit(ctx: &TracePointContext) {
    let now = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let task = unsafe { bpf_get_current_task() };
    let Some(start) = (unsafe { FUTEX_START.get(task) }) else {
        return;
    };
    let (ts, op) = (start.ts_ns, start.op);
    let _ = FUTEX_START.remove(task);
    let ret = unsafe { ctx.read_at::<i64>(cfg().tp_exit_ret as usize) }.unwrap_or(0);
    // errno values: include/uapi/asm-generic/errno{,-base}.h, include/linux/errno.h.
    let outcome = match -ret {
        0 => futex_outcome::WOKEN,
        110 => futex_outcome::TIMEOUT, // ETIMEDOUT
        4 | 512 | 513 | 514 | 516 => futex_outcome::INTERRUPTED, // EINTR, ERESTART*
        11 => futex_outcome::VALUE_CHANGED, // EAGAIN
        _ if ret >= 0 => futex_outcome::WOKEN, // futex_waitv: index woken
        _ => futex_outcome::OTHER_ERROR,
    };
    if let Some(c) = FUTEX_OUT.get_ptr_mut(outcome) {
        unsafe { *c += 1 };
    }
    if outcome == futex_outcome::VALUE_CHANGED {
        // The futex word had changed: the caller never slept.
        return;
    }
    // Enter and exit ran on this task, but it may have migrated between them (see on_switch).
    let delay = now.saturating_sub(ts);
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    hist_add(
        &HistKey {
            cgroup_id,
            kind: kind::FUTEX,
            op,
        },
        delay,
    );
    if cfg_flags() & flags::TRACK_TASKS != 0 {
        let comm = bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
        task_futex(
            tid,
            (pid_tgid >> 32) as u32,
            cgroup_id,
            comm,
            delay,
            outcome == futex_outcome::TIMEOUT,
        );
    }
}

/// Add one futex wait to a task's totals (captures).
#[inline(always)]
fn task_futex(
    tid: u32,
    tgid: u32,
    cgroup_id: u64,
    comm: [u8; COMM_LEN],
    delay: u64,
    timeout: bool,
) {
    let s = match TASK_STATS.get_ptr_mut(tid) {
        Some(s) => s,
        None => {
            let v = TaskStat {
                tgid,
                cgroup_id,
                comm,
                ..Default::default()
            };
            if TASK_STATS.insert(tid, v, BPF_NOEXIST as u64).is_err() {
                count_drop(drop_reason::TASK_FULL);
                return;
            }
            match TASK_STATS.get_ptr_mut(tid) {
                Some(s) => s,
                None => return,
            }
        }
    };
    unsafe {
        (*s).futex_count += 1;
        (*s).futex_sum_ns += delay;
        if delay > (*s).futex_max_ns {
            (*s).futex_max_ns = delay;
        }
        if timeout {
            (*s).futex_timeouts += 1;
        }
    }
}

#[tracepoint(category = "syscalls", name = "sys_exit_futex_waitv")]
pub fn sys_exit_futex_waitv(ctx: TracePointContext) -> u32 {
    futex_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_futex_wait")]
pub fn sys_exit_futex_wait(ctx: TracePointContext) -> u32 {
    futex_exit(&ctx);
    0
}

// ---- Go captures: one uprobe on runtime.casgstatus(gp *g, oldval, newval uint32) ----
//
// Every goroutine status change but a few CAS shortcuts goes through casgstatus
// (runtime/proc.go): newproc1 (_Gdead -> _Grunnable), execute (_Grunnable -> _Grunning), park_m
// (_Grunning -> _Gwaiting, after gopark stored g.waitreason), ready (_Gwaiting -> _Grunnable),
// goschedImpl and preemption (_Grunning -> _Grunnable), goexit0 (-> _Gdead). Userspace places
// the probe on an instruction the kernel emulates, before which no argument register is written.

#[inline(always)]
fn go_count(i: u32) {
    // Atomic although per CPU: uprobe programs run with migration, not preemption, disabled
    // on newer kernels, so another task's probe can interleave on this CPU (a plain += would
    // lose counts).
    if let Some(p) = GO_COUNTS.get_ptr_mut(i) {
        atomic_add(p, 1);
    }
}

#[inline(always)]
fn go_hist(i: u32, ns: u64) {
    if let Some(h) = GO_HISTS.get_ptr_mut(i) {
        hist_bump(h, ns);
    }
}

/// Remember a kernel run-queue wait [start, end) of a Go target thread.
#[inline(always)]
fn go_runq_interval(tid: u32, start: u64, end: u64) {
    let r = match GO_RUNQ.get_ptr_mut(tid) {
        Some(r) => r,
        None => {
            let v = GoRunqRing::default();
            if GO_RUNQ.insert(tid, v, BPF_NOEXIST as u64).is_err() {
                go_count(go::counter::RUNQ_MAP_FULL);
                return;
            }
            match GO_RUNQ.get_ptr_mut(tid) {
                Some(r) => r,
                None => return,
            }
        }
    };
    // Only this thread's own switch-in writes its ring: no concurrent writer.
    unsafe {
        let i = ((*r).next as usize) % go::RING;
        (*r).start[i] = start;
        (*r).end[i] = end;
        (*r).next += 1;
    }
}

/// How much of [from, to) thread `tid` spent on the kernel run queue, from its ring.
#[inline(always)]
fn go_runq_overlap(tid: u32, from: u64, to: u64) -> u64 {
    let Some(r) = (unsafe { GO_RUNQ.get(tid) }) else {
        return 0;
    };
    let mut sum = 0u64;
    let mut oldest_end = u64::MAX;
    for i in 0..go::RING {
        let (s, e) = (r.start[i], r.end[i]);
        if e == 0 {
            continue;
        }
        if e < oldest_end {
            oldest_end = e;
        }
        let lo = if s > from { s } else { from };
        let hi = if e < to { e } else { to };
        if hi > lo {
            sum += hi - lo;
        }
    }
    // The ring is full and its oldest wait ended inside the window: older waits that might
    // also overlap were overwritten.
    if r.next as usize > go::RING && oldest_end > from {
        go_count(go::counter::RING_OVERRUN);
    }
    sum
}

#[uprobe]
pub fn go_casgstatus(ctx: ProbeContext) -> u32 {
    let c = unsafe { &*read_volatile(&addr_of!(GO_CONFIG)) };
    // Go's register ABI (ABIInternal, amd64): arguments in RAX, RBX, RCX.
    let (gp, old, new) = unsafe {
        let r = &*ctx.regs;
        (r.rax, r.rbx as u32, r.rcx as u32)
    };
    let now = unsafe { bpf_ktime_get_ns() };
    go_count(go::counter::HITS);

    // One hash lookup per hit in the steady state: a g's entry is updated in place and only
    // deleted when the goroutine ends. Transitions of one g are serialised by the status CAS
    // (casgstatus spins until it owns the change), so no other CPU writes this entry meanwhile.
    if old == c.st_syscall {
        go_count(go::counter::SYSCALL_EXITS);
    }
    let entry = GO_G.get_ptr_mut(gp);
    let mut prev_state = 0;
    if let Some(st) = entry {
        let (ts, state, reason) = unsafe { ((*st).ts_ns, (*st).state, (*st).reason) };
        prev_state = state;
        let d = now.saturating_sub(ts);
        if old == c.st_waiting && state == go::SINCE_WAITING {
            go_hist(go::hist::BLOCKED + (reason & 0xff), d);
        } else if old == c.st_syscall && state == go::SINCE_SYSCALL {
            go_hist(go::hist::SYSCALL, d);
        } else if old == c.st_runnable && state == go::SINCE_RUNNABLE && new == c.st_running {
            go_hist(go::hist::SCHED_LATENCY, d);
            if reason == go::RUNNABLE_AFTER_SYSCALL {
                go_hist(go::hist::SYSCALL_LOST_P_LATENCY, d);
            }
            let tid = bpf_get_current_pid_tgid() as u32;
            let m = go_runq_overlap(tid, ts, now);
            let m = if m > d { d } else { m };
            go_hist(go::hist::WAIT_M_RUNQ, m);
            go_hist(go::hist::WAIT_P, d - m);
        }
    }

    let (state, reason) = if new == c.st_runnable {
        if old == c.st_dead || old == c.st_idle {
            go_count(go::counter::CREATED);
        }
        if old == c.st_syscall {
            // exitsyscall0 (runtime/proc.go, Go <= 1.25): back without a P, to be scheduled
            // again.
            go_count(go::counter::SYSCALL_LOST_P);
            (go::SINCE_RUNNABLE, go::RUNNABLE_AFTER_SYSCALL)
        } else if prev_state == go::SYSCALL_NO_P {
            // exitsyscallNoP (Go >= 1.26), counted by its own probe.
            (go::SINCE_RUNNABLE, go::RUNNABLE_AFTER_SYSCALL)
        } else {
            (go::SINCE_RUNNABLE, 0)
        }
    } else if new == c.st_syscall {
        // entersyscall / entersyscallblock (runtime/proc.go): _Grunning -> _Gsyscall.
        (go::SINCE_SYSCALL, 0)
    } else if new == c.st_waiting {
        // gopark stored the reason before mcall(park_m) (runtime/proc.go).
        let p = (gp + c.g_waitreason as u64) as *const u8;
        let reason = match unsafe { bpf_probe_read_user(p) } {
            Ok(r) => r as u32,
            Err(_) => {
                go_count(go::counter::REASON_READ_FAILED);
                255
            }
        };
        (go::SINCE_WAITING, reason)
    } else if new == c.st_dead {
        go_count(go::counter::EXITED);
        if entry.is_some() {
            let _ = GO_G.remove(gp);
        }
        return 0;
    } else {
        if old == c.st_syscall && new == c.st_running {
            go_count(go::counter::SYSCALL_FAST_RETURNS);
        } else if old == c.st_waiting && new == c.st_running {
            go_count(go::counter::WAITING_TO_RUNNING);
        }
        // Running, ...: nothing to time from here; mark the entry stale.
        if let Some(st) = entry {
            unsafe { (*st).state = 0 };
        }
        return 0;
    };
    match entry {
        Some(st) => unsafe {
            (*st).ts_ns = now;
            (*st).state = state;
            (*st).reason = reason;
        },
        None => {
            let v = GoGState {
                ts_ns: now,
                state,
                reason,
            };
            if GO_G.insert(gp, v, 0).is_err() {
                go_count(go::counter::G_MAP_FULL);
            }
        }
    }
    0
}

// ---- Go >= 1.26 syscalls: three more uprobes ----
//
// Go 1.26 switches _Grunning <-> _Gsyscall with a plain CAS in reentersyscall and exitsyscall
// (runtime/proc.go), around casgstatus, so the probe above no longer sees syscalls. These see
// them instead: reentersyscall and exitsyscall (the current g in R14, Go's ABIInternal g
// register) and exitsyscallNoP(gp) (gp in RAX), which sends a goroutine that lost its P back
// to a run queue through casgstatus(_Grunning, _Grunnable).

#[uprobe]
pub fn go_syscall_enter(ctx: ProbeContext) -> u32 {
    let gp = unsafe { (*ctx.regs).r14 };
    let now = unsafe { bpf_ktime_get_ns() };
    match GO_G.get_ptr_mut(gp) {
        Some(st) => unsafe {
            (*st).ts_ns = now;
            (*st).state = go::SINCE_SYSCALL;
            (*st).reason = 0;
        },
        None => {
            let v = GoGState {
                ts_ns: now,
                state: go::SINCE_SYSCALL,
                reason: 0,
            };
            if GO_G.insert(gp, v, 0).is_err() {
                go_count(go::counter::G_MAP_FULL);
            }
        }
    }
    0
}

#[uprobe]
pub fn go_syscall_exit(ctx: ProbeContext) -> u32 {
    let gp = unsafe { (*ctx.regs).r14 };
    let now = unsafe { bpf_ktime_get_ns() };
    go_count(go::counter::SYSCALL_EXITS);
    if let Some(st) = GO_G.get_ptr_mut(gp) {
        let (ts, state) = unsafe { ((*st).ts_ns, (*st).state) };
        if state == go::SINCE_SYSCALL {
            go_hist(go::hist::SYSCALL, now.saturating_sub(ts));
        }
        unsafe { (*st).state = 0 };
    }
    0
}

#[uprobe]
pub fn go_syscall_exit_no_p(ctx: ProbeContext) -> u32 {
    let gp = unsafe { (*ctx.regs).rax };
    go_count(go::counter::SYSCALL_LOST_P);
    if let Some(st) = GO_G.get_ptr_mut(gp) {
        unsafe { (*st).state = go::SYSCALL_NO_P };
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
