//! Futex blocking: the futex syscall tracepoints (offsets from their format files), and in
//! futex mode `sched` the op a task blocks in, read from its saved registers at switch-out.

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_task, bpf_ktime_get_ns, bpf_task_pt_regs,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use schedlat_common::{
    COMM_LEN, FutexStart, HistKey, drop_reason, flags, futex_op, futex_outcome, kind,
};

use crate::{helpers::*, maps::*};

/// The futex op `task` is blocking in, from its saved user registers: the syscall number and
/// second argument (arch/x86/include/asm/ptrace.h; syscall numbers from
/// arch/x86/entry/syscalls/syscall_64.tbl, passed in by the loader).
#[inline(always)]
pub(crate) fn futex_block_op(task: *const u8) -> Option<u32> {
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

// ---- futex blocking: syscall tracepoints (offsets from their format files) ----

#[inline(always)]
pub(crate) fn futex_enter(op: u32) {
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
fn sys_enter_futex(ctx: TracePointContext) -> u32 {
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
fn sys_enter_futex_waitv(_ctx: TracePointContext) -> u32 {
    futex_enter(futex_op::WAITV);
    0
}

#[tracepoint(category = "syscalls", name = "sys_enter_futex_wait")]
fn sys_enter_futex_wait(_ctx: TracePointContext) -> u32 {
    futex_enter(futex_op::FUTEX2_WAIT);
    0
}

/// Shared exit handler for every futex syscall we enter-trace.
#[tracepoint(category = "syscalls", name = "sys_exit_futex")]
fn sys_exit_futex(ctx: TracePointContext) -> u32 {
    futex_exit(&ctx);
    0
}

#[inline(always)]
pub(crate) fn futex_exit(ctx: &TracePointContext) {
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
pub(crate) fn task_futex(
    tid: u32,
    tgid: u32,
    cgroup_id: u64,
    comm: [u8; COMM_LEN],
    delay: u64,
    timeout: bool,
) {
    let Some(s) = task_stat(tid, tgid, cgroup_id, || comm) else {
        return;
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
fn sys_exit_futex_waitv(ctx: TracePointContext) -> u32 {
    futex_exit(&ctx);
    0
}

#[tracepoint(category = "syscalls", name = "sys_exit_futex_wait")]
fn sys_exit_futex_wait(ctx: TracePointContext) -> u32 {
    futex_exit(&ctx);
    0
}
