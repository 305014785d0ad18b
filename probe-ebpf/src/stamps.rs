//! Where a task's run-queue state ([`RunqStart`]) lives.
//!
//! Task-local storage (BPF_MAP_TYPE_TASK_STORAGE) where tracing programs may use it (Linux
//! 5.12, a10787e6d58c "bpf: Enable task local storage for tracing programs", which moved the
//! storage into task_struct.bpf_storage): one helper call per access, freed by the kernel with
//! its task, nothing to clean up at exit and no capacity to run out of; a consumed stamp is
//! zeroed in place, so the entry also caches the task's histogram slot. Older kernels (Debian
//! 11's 5.10) load the `hash-stamps` build of this crate instead: a hash keyed by task_struct
//! address, bounded, every failed insert counted, entries deleted at switch-in and exit.
//! The loader picks the object (probe-user/src/features.rs decides).
#[cfg(feature = "hash-stamps")]
pub(crate) use hash::*;
use schedlat_common::RunqStart;
#[cfg(not(feature = "hash-stamps"))]
pub(crate) use storage::*;

#[cfg(not(feature = "hash-stamps"))]
mod storage {
    use core::ptr;

    use aya_ebpf::{
        bindings::{BPF_F_NO_PREALLOC, bpf_map_type::BPF_MAP_TYPE_TASK_STORAGE},
        helpers::bpf_task_storage_get,
        macros::btf_map,
    };
    use schedlat_common::{drop_reason, flags, kind};

    use super::RunqStart;
    use crate::helpers::count_drop;

    /// A BTF-defined task storage map, in the layout libbpf and aya's loader read from
    /// `.maps` (the same as aya-ebpf's own SkStorage/CgrpStorage, which has no task storage
    /// type in 0.2). The kernel requires BTF for local storage maps, key int, no entries
    /// limit and BPF_F_NO_PREALLOC (bpf_local_storage_map_alloc_check).
    #[repr(C)]
    pub(crate) struct TaskStorage<T> {
        r#type: *const [i32; BPF_MAP_TYPE_TASK_STORAGE as usize],
        key: *const i32,
        value: *const T,
        max_entries: *const [i32; 0],
        map_flags: *const [i32; BPF_F_NO_PREALLOC as usize],
    }

    // SAFETY: placeholders the loader reads as BTF; never dereferenced.
    unsafe impl<T> Sync for TaskStorage<T> {}

    impl<T> TaskStorage<T> {
        pub(crate) const fn new() -> Self {
            Self {
                r#type: ptr::null(),
                key: ptr::null(),
                value: ptr::null(),
                max_entries: ptr::null(),
                map_flags: ptr::null(),
            }
        }
    }

    /// Per-task run-queue state.
    #[btf_map]
    static TASK_STORE: TaskStorage<RunqStart> = TaskStorage::new();

    /// BPF_LOCAL_STORAGE_GET_F_CREATE (include/uapi/linux/bpf.h).
    const F_CREATE: u64 = 1;

    /// `task`'s storage (zeroed when created); null when absent, or when it could not be
    /// created (out of memory, or the storage busy on this CPU).
    #[inline(always)]
    fn get(task: *const u8, flags: u64) -> *mut RunqStart {
        unsafe {
            bpf_task_storage_get(
                ptr::from_ref(&TASK_STORE).cast_mut().cast(),
                task as *mut _,
                ptr::null_mut(),
                flags,
            )
        }
        .cast()
    }

    /// Stamp `task` (tid `tid`) as runnable from now (or, for FUTEX_BLOCKED, blocked from now).
    #[inline(always)]
    pub(crate) fn stamp(task: *const u8, tid: u32, cause: u32, op: u32, now: u64, generation: u64) {
        let s = get(task, F_CREATE);
        if s.is_null() {
            count_drop(drop_reason::TASK_STORAGE_BUSY);
            return;
        }
        unsafe {
            (*s).ts_ns = now;
            (*s).cause = cause;
            (*s).futex_op = op;
            (*s).futex_ns = 0;
            (*s).tid = tid;
            (*s).generation = generation;
        }
    }

    /// Stamp a woken task. With FUTEX_SCHED, a task that was blocked in futex gets the length
    /// of that wait carried to its switch-in, where its cgroup is known.
    #[inline(always)]
    pub(crate) fn stamp_woken(task: *const u8, tid: u32, f: u32, now: u64, generation: u64) {
        let s = get(task, F_CREATE);
        if s.is_null() {
            count_drop(drop_reason::TASK_STORAGE_BUSY);
            return;
        }
        unsafe {
            // Any other live stamp is stale (woken while still on CPU, then it slept).
            (*s).futex_ns = if f & flags::FUTEX_SCHED != 0
                && (*s).ts_ns != 0
                && (*s).cause == kind::FUTEX_BLOCKED
            {
                now.saturating_sub((*s).ts_ns) + 1
            } else {
                0
            };
            (*s).ts_ns = now;
            (*s).cause = kind::RUNQ_WOKEN;
            (*s).tid = tid;
            (*s).generation = generation;
        }
    }

    /// `task`'s state if it holds a stamp. Created if absent, so that NULL means a refused
    /// access (counted), never "no stamp": a task that ran before without one gets an empty
    /// entry here, freed with it.
    #[inline(always)]
    pub(crate) fn state_of(task: *const u8) -> Option<*mut RunqStart> {
        let s = get(task, F_CREATE);
        if s.is_null() {
            count_drop(drop_reason::TASK_STORAGE_BUSY);
            return None;
        }
        if unsafe { (*s).ts_ns } == 0 {
            return None;
        }
        Some(s)
    }

    /// Use up `task`'s stamp; the state stays (with its cached slot) for the next one.
    #[inline(always)]
    pub(crate) fn consume(_task: *const u8, s: *mut RunqStart) -> Option<*mut RunqStart> {
        unsafe { (*s).ts_ns = 0 };
        Some(s)
    }

    /// At a task's last switch-out: nothing, the kernel frees its storage with it.
    #[inline(always)]
    pub(crate) fn forget(_task: *const u8) {}
}

#[cfg(feature = "hash-stamps")]
mod hash {
    use aya_ebpf::{macros::map, maps::HashMap};
    use schedlat_common::{drop_reason, flags, kind};

    use super::RunqStart;
    use crate::helpers::count_drop;

    /// task_struct address -> when it became runnable. Keyed by task, not tid: an exiting
    /// task's tid is freed (release_task, in exit_notify or the parent's wait) before its last
    /// switch-out, and a new task may take it at once (pid_max is 32768 on many hosts), so two
    /// live tasks can share a tid; a task_struct is not freed before its last switch.
    #[map]
    static RUNQ_START: HashMap<u64, RunqStart> = HashMap::with_max_entries(65536, 0);

    /// Stamp `task` (tid `tid`) as runnable from now (or, for FUTEX_BLOCKED, blocked from now).
    #[inline(always)]
    pub(crate) fn stamp(task: *const u8, tid: u32, cause: u32, op: u32, now: u64, generation: u64) {
        let v = RunqStart {
            ts_ns: now,
            cause,
            futex_op: op,
            futex_ns: 0,
            tid,
            slot: 0,
            cgroup_id: 0,
            generation,
        };
        if RUNQ_START.insert(task as u64, v, 0).is_err() {
            count_drop(drop_reason::RUNQ_START_FULL);
        }
    }

    /// Stamp a woken task. With FUTEX_SCHED, a task that was blocked in futex gets the length
    /// of that wait carried to its switch-in, where its cgroup is known.
    #[inline(always)]
    pub(crate) fn stamp_woken(task: *const u8, tid: u32, f: u32, now: u64, generation: u64) {
        if f & flags::FUTEX_SCHED != 0
            && let Some(s) = RUNQ_START.get_ptr_mut(task as u64)
        {
            unsafe {
                // Any other existing stamp is stale (woken while still on CPU, then it slept).
                (*s).futex_ns = if (*s).cause == kind::FUTEX_BLOCKED {
                    now.saturating_sub((*s).ts_ns) + 1
                } else {
                    0
                };
                (*s).ts_ns = now;
                (*s).cause = kind::RUNQ_WOKEN;
                (*s).tid = tid;
                (*s).generation = generation;
            }
            return;
        }
        stamp(task, tid, kind::RUNQ_WOKEN, 0, now, generation);
    }

    /// `task`'s stamp, if it has one.
    #[inline(always)]
    pub(crate) fn state_of(task: *const u8) -> Option<*mut RunqStart> {
        RUNQ_START.get_ptr_mut(task as u64)
    }

    /// Use up `task`'s stamp (read it first): the entry is deleted, nothing is cached.
    #[inline(always)]
    pub(crate) fn consume(task: *const u8, _s: *mut RunqStart) -> Option<*mut RunqStart> {
        let _ = RUNQ_START.remove(task as u64);
        None
    }

    /// At a task's last switch-out: delete a stamp left by a wakeup that raced its exit.
    #[inline(always)]
    pub(crate) fn forget(task: *const u8) {
        let _ = RUNQ_START.remove(task as u64);
    }
}
