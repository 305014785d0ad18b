//! Helpers every hook family shares: drop counting and first-event logging, atomic adds,
//! task field reads, capture filters, histogram updates and the one get-or-insert of a hash.

use core::{borrow::Borrow, ptr::read_volatile};

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_probe_read_kernel, maps::HashMap};
#[cfg(not(feature = "no-log"))]
use aya_log_ebpf::debug;
use schedlat_common::{COMM_LEN, Hist, HistKey, TaskStat, bucket_index, drop_reason, flags};

#[cfg(not(feature = "no-log"))]
use crate::maps::LOGGED;
use crate::maps::{DROPS, FILTER_CG, FILTER_TGID, HISTS, TASK_STATS, ZERO_HIST, cfg};

/// Kernel-side diagnostics go through aya-log at debug level. The loader sets AYA_LOG_LEVEL
/// (read-only data) to 0 unless schedlat logs at debug, so the verifier removes the log code
/// and the LOGGED update (callers test the level before calling this, for that reason); a
/// load and a compare per site stay. Each kind is logged the first time it happens only.
#[cfg(not(feature = "no-log"))]
#[inline(always)]
pub(crate) fn first(slot: u32) -> bool {
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
pub(crate) fn count_drop(reason: u32) {
    if let Some(p) = DROPS.get_ptr_mut(reason) {
        unsafe { *p += 1 };
    }
    #[cfg(not(feature = "no-log"))]
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
pub(crate) fn atomic_add(p: *mut u64, v: u64) {
    // BPF_ATOMIC | BPF_ADD without BPF_FETCH: available on every kernel with eBPF.
    unsafe {
        core::arch::asm!("lock *(u64 *)({p} + 0) += {v}", p = in(reg) p, v = in(reg) v);
    }
}

/// Read a field of a kernel object at a byte offset known only at load time.
#[inline(always)]
pub(crate) unsafe fn read_field<T>(base: *const u8, off: u32) -> Result<T, i32> {
    unsafe { bpf_probe_read_kernel(base.add(off as usize) as *const T) }
}

/// Direct load of a field of a BTF-typed kernel pointer (a tp_btf argument, or a pointer
/// field loaded from one). The verifier checks the access against BTF and the JIT emits one
/// fault-guarded load: far cheaper than a bpf_probe_read_kernel call. `off` is a verifier-known
/// constant because CONFIG lives in frozen read-only data.
#[inline(always)]
pub(crate) unsafe fn btf_load<T: Copy>(base: *const u8, off: u32) -> T {
    unsafe { read_volatile(base.add(off as usize) as *const T) }
}

/// The task's generation: its switch-ins so far (task_struct.sched_info.pcount), 0 without
/// CONFIG_SCHED_INFO (no check then). At sched_switch next's count does not include this
/// switch-in yet: sched_info_arrive runs in context_switch, after the tracepoint
/// (kernel/sched/core.c __schedule). Not nvcsw: a wakeup racing a task's switch-out can stamp
/// it before its nvcsw moves, and that stamp is good.
#[inline(always)]
pub(crate) fn task_generation(task: *const u8) -> u64 {
    let off = cfg().task_pcount;
    if off == 0 {
        return 0;
    }
    unsafe { btf_load::<u64>(task, off) }
}

#[inline(always)]
pub(crate) fn task_pid(task: *const u8) -> Result<u32, i32> {
    Ok(unsafe { btf_load::<i32>(task, cfg().task_pid) } as u32)
}

#[inline(always)]
pub(crate) fn task_tgid(task: *const u8) -> Result<u32, i32> {
    Ok(unsafe { btf_load::<i32>(task, cfg().task_tgid) } as u32)
}

#[inline(always)]
pub(crate) fn task_comm(task: *const u8) -> [u8; COMM_LEN] {
    unsafe { read_field::<[u8; COMM_LEN]>(task, cfg().task_comm).unwrap_or([0; COMM_LEN]) }
}

/// task->cgroups->dfl_cgrp->kn->id: the v2 cgroup id, as bpf_get_current_cgroup_id() gives
/// for the current task (kernel/bpf/helpers.c), but for any task.
#[inline(always)]
pub(crate) fn task_cgroup_id(task: *const u8) -> Result<u64, i32> {
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
pub(crate) fn wanted(f: u32, tgid: u32, cgroup_id: u64) -> bool {
    if f & flags::FILTER_TGID != 0 && unsafe { FILTER_TGID.get(tgid) }.is_none() {
        return false;
    }
    if f & flags::FILTER_CGROUP != 0 && unsafe { FILTER_CG.get(cgroup_id) }.is_none() {
        return false;
    }
    true
}

#[inline(always)]
pub(crate) fn hist_add(key: &HistKey, ns: u64) {
    // The zero value comes from a map: a Hist is too big for the stack.
    match get_or_insert(&HISTS, key, || ZERO_HIST.get(0)) {
        Some(h) => hist_bump(h, ns),
        None => count_drop(drop_reason::HIST_FULL),
    }
}

/// Task `tid`'s totals (captures), created on its first event; None when TASK_STATS is full
/// (counted). `comm` is read only then.
#[inline(always)]
pub(crate) fn task_stat(
    tid: u32,
    tgid: u32,
    cgroup_id: u64,
    comm: impl FnOnce() -> [u8; COMM_LEN],
) -> Option<*mut TaskStat> {
    let init = || {
        Some(TaskStat {
            tgid,
            cgroup_id,
            comm: comm(),
            ..Default::default()
        })
    };
    let s = get_or_insert(&TASK_STATS, &tid, init);
    if s.is_none() {
        count_drop(drop_reason::TASK_FULL);
    }
    s
}

/// `key`'s entry in `map`, created from `init()` when absent; None when the map is full (the
/// caller counts its own drop reason) or `init` has nothing to give. BPF_NOEXIST: when another
/// CPU created the entry meanwhile, the second lookup finds theirs and nothing is lost.
#[inline(always)]
pub(crate) fn get_or_insert<K, V, B: Borrow<V>>(
    map: &HashMap<K, V>,
    key: &K,
    init: impl FnOnce() -> Option<B>,
) -> Option<*mut V> {
    if let Some(p) = map.get_ptr_mut(key) {
        return Some(p);
    }
    let _ = map.insert(key, init()?, BPF_NOEXIST as u64);
    map.get_ptr_mut(key)
}

#[inline(always)]
pub(crate) fn hist_bump(h: *mut Hist, ns: u64) {
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
