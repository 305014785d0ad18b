//! Run-queue delay and wakeups: the sched_waking, sched_wakeup_new and sched_switch
//! BTF tracepoints (cheaper than the classic ones), with per-task stamps from stamps.rs.
//!
//! Run-queue delay follows the kernel's own definition (sched_info in kernel/sched/stats.h):
//! from becoming runnable (woken, or switched out while still runnable) to being switched in.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_smp_processor_id, bpf_ktime_get_ns,
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
#[cfg(not(feature = "no-log"))]
use aya_log_ebpf::debug;
use schedlat_common::{
    COMM_LEN, HistKey, PreemptKey, RunqHists, RunqStart, SlowEvent, WakeCount, WakePair,
    drop_reason, flags, kind,
};

use crate::{
    futex::{futex_block_op, task_futex},
    go::go_runq_interval,
    helpers::*,
    maps::*,
    stamps::{consume, forget, stamp, stamp_woken, state_of},
};

/// The RQ_HISTS slot of `cgroup_id`, found in RQ_SLOTS or taken from RQ_FREE.
#[inline(always)]
pub(crate) fn rq_slot(cgroup_id: u64) -> Option<u32> {
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
pub(crate) fn runq_hists(st: Option<*mut RunqStart>, cgroup_id: u64) -> Option<*mut RunqHists> {
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

/// Shared body of sched_waking (in the waker's context) and sched_wakeup_new.
///
/// Kept to one field read and one map update on the host-wide path (the daemon): wakeups per
/// cgroup are the cause=woken run-queue waits counted at switch-in, where the wakee's cgroup
/// is read anyway.
#[inline(always)]
pub(crate) fn on_wake(p: *const u8, count_waker: bool) -> Result<(), i32> {
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
            waker_cpu: if waker_tid == 0 {
                unsafe { bpf_get_smp_processor_id() }
            } else {
                0
            },
        };
        let pair = get_or_insert(&WAKE_PAIRS, &key, || {
            Some(WakeCount {
                count: 0,
                waker_comm: bpf_get_current_comm().unwrap_or([0; COMM_LEN]),
                wakee_comm: task_comm(p),
            })
        });
        match pair {
            Some(c) => atomic_add(unsafe { &mut (*c).count }, 1),
            None => count_drop(drop_reason::WAKE_PAIR_FULL),
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
pub(crate) fn on_switch(
    preempt: bool,
    prev: *const u8,
    next: *const u8,
    prev_state: u64,
) -> Result<(), i32> {
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
    // Noisy-neighbour attribution (the daemon): prev gave its CPU away still runnable, which
    // is what the kernel counts in nivcsw; counted against next's cgroup where that is read.
    // prev is current: its cgroup is one helper call, on involuntary switches only.
    let preempted_cg = if f & flags::PREEMPTORS != 0 && runnable && prev_tid != 0 {
        unsafe { bpf_get_current_cgroup_id() }
    } else {
        0
    };
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
        // The idle task is always "runnable"; it has no run-queue delay. Nor is a switch to
        // idle a preemption by a cgroup (a throttled or migrated prev).
        return Ok(());
    }
    let Some(st) = state_of(next) else {
        if preempted_cg != 0 {
            count_preemption(preempted_cg, task_cgroup_id(next)?);
        }
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
        if preempted_cg != 0 {
            count_preemption(preempted_cg, task_cgroup_id(next)?);
        }
        return Ok(());
    }
    // A task woken on one CPU and switched in on another at once can read an earlier time
    // there: bpf_ktime_get_ns (ktime_get_mono_fast_ns) is not guaranteed ordered across
    // CPUs. Its delay is ~0, and it must still count: saturate, never drop.
    let delay = now.saturating_sub(ts);
    #[cfg(not(feature = "no-log"))]
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
    if preempted_cg != 0 {
        count_preemption(preempted_cg, cgroup_id);
    }
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

/// One involuntary switch of a task of `cgroup_id` whose CPU went to a task of `by`.
#[inline(always)]
fn count_preemption(cgroup_id: u64, by: u64) {
    let key = PreemptKey {
        cgroup_id,
        by_cgroup_id: by,
    };
    match get_or_insert(&PREEMPTS, &key, || Some(0u64)) {
        Some(c) => atomic_add(c, 1),
        None => count_drop(drop_reason::PREEMPT_FULL),
    }
}

#[inline(always)]
pub(crate) fn task_runq(
    tid: u32,
    tgid: u32,
    cgroup_id: u64,
    task: *const u8,
    cause: u32,
    delay: u64,
) {
    let Some(s) = task_stat(tid, tgid, cgroup_id, || task_comm(task)) else {
        return;
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
pub(crate) fn slow_event(
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
fn sched_waking(ctx: BtfTracePointContext) -> i32 {
    let p: *const u8 = ctx.arg(0);
    if on_wake(p, true).is_err() {
        count_drop(drop_reason::READ_FAILED);
    }
    0
}

/// sched_wakeup_new(struct task_struct *p): a new task's first enqueue (wake_up_new_task).
#[btf_tracepoint(function = "sched_wakeup_new")]
fn sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    let p: *const u8 = ctx.arg(0);
    if on_wake(p, false).is_err() {
        count_drop(drop_reason::READ_FAILED);
    }
    0
}

/// sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state) — prev_state since 5.18 (fa2c3254d7cf).
#[btf_tracepoint(function = "sched_switch")]
fn sched_switch(ctx: BtfTracePointContext) -> i32 {
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
