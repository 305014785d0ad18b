//! Go captures: uprobes on the target's runtime (casgstatus, and for Go >= 1.26 the syscall
//! entry and exits), plus the per-thread kernel run-queue ring that splits a goroutine's
//! scheduling latency into waiting for a P and its M waiting for a CPU.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::uprobe,
    programs::ProbeContext,
};
use schedlat_common::{GoGState, GoRunqRing, go};

use crate::{helpers::*, maps::*};

// ---- Go captures: one uprobe on runtime.casgstatus(gp *g, oldval, newval uint32) ----
//
// Every goroutine status change but a few CAS shortcuts goes through casgstatus
// (runtime/proc.go): newproc1 (_Gdead -> _Grunnable), execute (_Grunnable -> _Grunning), park_m
// (_Grunning -> _Gwaiting, after gopark stored g.waitreason), ready (_Gwaiting -> _Grunnable),
// goschedImpl and preemption (_Grunning -> _Grunnable), goexit0 (-> _Gdead). Userspace places
// the probe on an instruction the kernel emulates, before which no argument register is written.

#[inline(always)]
pub(crate) fn go_count(i: u32) {
    // Atomic although per CPU: uprobe programs run with migration, not preemption, disabled
    // on newer kernels, so another task's probe can interleave on this CPU (a plain += would
    // lose counts).
    if let Some(p) = GO_COUNTS.get_ptr_mut(i) {
        atomic_add(p, 1);
    }
}

#[inline(always)]
pub(crate) fn go_hist(i: u32, ns: u64) {
    if let Some(h) = GO_HISTS.get_ptr_mut(i) {
        hist_bump(h, ns);
    }
}

/// Remember a kernel run-queue wait [start, end) of a Go target thread.
#[inline(always)]
pub(crate) fn go_runq_interval(tid: u32, start: u64, end: u64) {
    let Some(r) = get_or_insert(&GO_RUNQ, &tid, || Some(GoRunqRing::default())) else {
        go_count(go::counter::RUNQ_MAP_FULL);
        return;
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
pub(crate) fn go_runq_overlap(tid: u32, from: u64, to: u64) -> u64 {
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
fn go_casgstatus(ctx: ProbeContext) -> u32 {
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
fn go_syscall_enter(ctx: ProbeContext) -> u32 {
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
fn go_syscall_exit(ctx: ProbeContext) -> u32 {
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
fn go_syscall_exit_no_p(ctx: ProbeContext) -> u32 {
    let gp = unsafe { (*ctx.regs).rax };
    go_count(go::counter::SYSCALL_LOST_P);
    if let Some(st) = GO_G.get_ptr_mut(gp) {
        unsafe { (*st).state = go::SYSCALL_NO_P };
    }
    0
}
