//! Loading, attaching and reading schedlat's eBPF programs (the only module that uses aya).
//!
//! Everything read out of the kernel is turned into plain structs ([`RawSnapshot`], in
//! `crate::model`) so the aggregation and reporting code needs no root and no aya types.
use std::{path::PathBuf, time::Duration};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, Queue, RingBuf},
    programs::{
        BtfTracePoint, TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
};
use aya_obj::generated::{bpf_cmd, bpf_prog_info};
use schedlat_common::{
    Config, CpuStat, GoConfig, Hist, HistKey, PreemptKey, RunqHists, SlowEvent, TaskStat,
    WakeCount, WakePair, flags, go, kind,
};
use tracing::{debug, warn};

use crate::{
    hist::Histogram,
    host::privs::effective_caps,
    kernel::{
        btf::{BtfError, KernelBtf},
        features::{Feature, KernelFeatures, MissingFeature},
        tracefs::{Tracefs, TracefsError},
    },
    model::{
        Attached, ClassOf, Classify, ErrorClass, FutexMode, GoRaw, MapSizes, ProgStats, RawSnapshot,
    },
};

/// The compiled eBPF object (probe-ebpf), built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/schedlat-probes"));
/// The same programs with per-task state in a hash map (RUNQ_START), for kernels without task
/// storage in tracing programs (probe-ebpf feature hash-stamps; features::Feature::TaskStorage).
static OBJECT_HASH: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/schedlat-probes-hash"));
/// The benchmark's proof that log sites cost nothing with the logger off: the programs with
/// every aya-log call compiled out (probe-ebpf feature no-log; `daemon --bench-no-log`).
static OBJECT_NOLOG: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/schedlat-probes-nolog"));
/// The benchmark's floor (probe-ebpf/src/floor.rs): the same hooks with empty bodies.
static FLOOR_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/schedlat-floor"));

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "missing privileges: schedlat needs CAP_BPF and CAP_PERFMON (or CAP_SYS_ADMIN) to load \
         eBPF programs; effective capabilities here are {have}. Run it as root (sudo) or grant \
         them, e.g. `setcap cap_bpf,cap_perfmon+ep schedlat`"
    )]
    Privileges { have: String },
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("loading the eBPF object failed")]
    Load(#[source] Box<aya::EbpfError>),
    #[error(
        "the kernel ({release}) rejected eBPF program {program}: {reason}. This is a schedlat \
         bug on this kernel: please report it with the output of `schedlat check` and of this \
         command with `--log debug`, which prints the verifier's whole log"
    )]
    Verifier {
        program: String,
        release: String,
        /// The verifier's last word (the whole log goes to the debug log).
        reason: String,
    },
    #[error("loading program {program} failed")]
    Program {
        program: String,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("attaching {program} to {target} failed")]
    Attach {
        program: String,
        target: String,
        source: Box<aya::programs::ProgramError>,
    },
    #[error("eBPF map {map}: {detail}")]
    Map { map: &'static str, detail: String },
    #[error(transparent)]
    Missing(#[from] MissingFeature),
}

impl Classify for ProbeError {
    /// Privileges, tracefs, BTF and kernel features are the user's to fix; a load, verifier,
    /// attach or map failure is a runtime one.
    fn class(&self) -> ErrorClass {
        match self {
            Self::Privileges { .. } | Self::Tracefs(_) | Self::Btf(_) | Self::Missing(_) => {
                ErrorClass::Usage
            }
            _ => ErrorClass::Runtime,
        }
    }
}
inventory::submit!(ClassOf::of::<ProbeError>());

/// Entries of a per-task stamp map sized automatically (`maps.runq_start` or
/// `maps.futex_start` 0) when the host's task limit cannot be read.
pub const TASK_MAP_FALLBACK: u32 = 65536;
/// At most this many entries chosen automatically for a per-task stamp map (RUNQ_START ~96
/// bytes each, FUTEX_START ~72, preallocated: 24 and 18 MiB); `maps.*` may set more.
pub const TASK_MAP_AUTO_MAX: u32 = 262_144;

/// The capacity of a per-task stamp map (RUNQ_START, FUTEX_START) on this host: every task
/// can hold a stamp at once (runnable, or parked in a futex: thread pools, Go's idle Ms), and a
/// host has at most min(kernel.threads-max, kernel.pid_max) tasks; at least
/// [`TASK_MAP_FALLBACK`], at most [`TASK_MAP_AUTO_MAX`]. With /proc/sys unreadable (e.g. a
/// unit's ProcSubset=pid), the fallback and a warning naming `map`'s setting.
pub fn task_map_for_host(map: &str, setting: &str) -> u32 {
    let read = |k: &str| -> Option<u64> {
        std::fs::read_to_string(format!("/proc/sys/kernel/{k}"))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    match (read("threads-max"), read("pid_max")) {
        (Some(t), Some(p)) => task_map_for(t, p),
        _ => {
            warn!(
                map,
                entries = TASK_MAP_FALLBACK,
                "cannot read kernel.threads-max and kernel.pid_max: the per-task stamp map \
                 keeps the fallback size; set {setting} to the most tasks this host runs at once"
            );
            TASK_MAP_FALLBACK
        }
    }
}

/// [`task_map_for_host`] from the two sysctls.
pub fn task_map_for(threads_max: u64, pid_max: u64) -> u32 {
    threads_max
        .min(pid_max)
        .clamp(u64::from(TASK_MAP_FALLBACK), u64::from(TASK_MAP_AUTO_MAX)) as u32
}

/// Syscall numbers of futex, futex_waitv and futex_wait (futex2) on this arch
/// (arch/x86/entry/syscalls/syscall_64.tbl).
const FUTEX_SYSCALLS: Option<(u32, u32, u32)> = if cfg!(target_arch = "x86_64") {
    Some((202, 449, 454))
} else {
    None
};

#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Per-task totals and waker->wakee pairs (captures).
    pub track_tasks: bool,
    /// How to trace futex waits (see [`FutexMode`]).
    pub futex: FutexMode,
    /// Send run-queue delays at or above this to userspace.
    pub slow_threshold: Option<Duration>,
    pub slow_max_per_sec: u32,
    pub filter_tgids: Vec<u32>,
    pub filter_cgroups: Vec<u64>,
    pub map_sizes: MapSizes,
    pub tracefs: Option<PathBuf>,
    pub btf: PathBuf,
    /// A Go process to trace per event (captures): a uprobe on its runtime.casgstatus.
    pub go_events: Option<GoEventTarget>,
    /// Tests: per-task state in the hash map (RUNQ_START) of the build for kernels without
    /// task storage, even where the kernel has it.
    pub hash_stamps: bool,
    /// Count involuntary switches by (cgroup, preempting cgroup) (the daemon).
    pub preemptors: bool,
    /// Benchmark only: load the programs with their log calls compiled out (task storage
    /// kernels; no kernel log then).
    pub no_log: bool,
    /// Turn on the kernel's run-time accounting of BPF programs (BPF_ENABLE_STATS) while the
    /// programs are loaded, so that snapshots carry their own cost (captures).
    pub run_stats: bool,
}

/// Where the Go uprobe goes and what it needs to know (crate::goruntime::events::EventPlan).
#[derive(Clone, Debug)]
pub struct GoEventTarget {
    pub pid: u32,
    /// The process and its executable as analysed: the uprobe goes on this descriptor's file
    /// (not /proc/PID/exe looked up again, which a reused pid would make another file).
    pub exe: std::sync::Arc<crate::goruntime::live::Target>,
    /// Probed instruction's offset in the executable file.
    pub file_offset: u64,
    /// Shown in errors and `attached`, e.g. "runtime.casgstatus+0x20 (jb)".
    pub site: String,
    /// Go >= 1.26: the syscall probes (crate::goruntime::events::SyscallPlan).
    pub syscall_probes: Vec<GoProbe>,
    pub config: GoConfig,
}

/// One more uprobe in the Go target: which program, where, and how to name it.
#[derive(Clone, Debug)]
pub struct GoProbe {
    pub program: &'static str,
    pub file_offset: u64,
    pub site: String,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            track_tasks: false,
            futex: FutexMode::Sched,
            slow_threshold: None,
            slow_max_per_sec: 100,
            filter_tgids: Vec::new(),
            filter_cgroups: Vec::new(),
            map_sizes: MapSizes::default(),
            tracefs: None,
            btf: PathBuf::from("/sys/kernel/btf/vmlinux"),
            go_events: None,
            hash_stamps: false,
            preemptors: false,
            no_log: false,
            run_stats: false,
        }
    }
}

pub struct Probes {
    ebpf: Ebpf,
    slow: Option<RingBuf<MapData>>,
    pub attached: Vec<Attached>,
    pub sizes: MapSizes,
    /// A Go uprobe is attached (GO_* maps in use).
    go: bool,
    /// The futex mode in use (`auto` resolved).
    pub futex: FutexMode,
    /// What the kernel offers (crate::kernel::features::TABLE), as detected at load.
    pub features: KernelFeatures,
    /// Per-task state in task-local storage (else in RUNQ_START).
    task_storage: bool,
    /// PREEMPTS is in use (the daemon).
    preemptors: bool,
    /// The programs' aya-log records (with --log debug only), logged at each snapshot.
    kernel_log: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    /// Holds the kernel's BPF run-time accounting on ([`ProbeOptions::run_stats`]): it ends
    /// when this descriptor closes, with the programs.
    run_stats: Option<std::os::fd::OwnedFd>,
}

const CAP_SYS_ADMIN: u64 = 21;
const CAP_PERFMON: u64 = 38;
const CAP_BPF: u64 = 39;

/// Fail early, with the capability names, rather than with EPERM from bpf().
pub fn check_privileges() -> Result<(), ProbeError> {
    let caps = effective_caps();
    let has = |c: u64| caps & (1 << c) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    let mut have = Vec::new();
    for (c, n) in [
        (CAP_BPF, "CAP_BPF"),
        (CAP_PERFMON, "CAP_PERFMON"),
        (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    ] {
        if has(c) {
            have.push(n);
        }
    }
    Err(ProbeError::Privileges {
        have: if have.is_empty() {
            "none of them".into()
        } else {
            have.join(", ")
        },
    })
}

/// Program `name` of the object, as its kind `T` (an error names it if missing or mistyped).
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, ProbeError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| ProbeError::Map {
            map: "programs",
            detail: format!("{name} missing from object"),
        })?
        .try_into()
        .map_err(prog_err(name))
}

fn prog_err(program: &str) -> impl FnOnce(aya::programs::ProgramError) -> ProbeError + '_ {
    move |source| match &source {
        aya::programs::ProgramError::LoadError { verifier_log, .. } => {
            let log = verifier_log.to_string();
            debug!(program, verifier_log = %log, "the verifier rejected a program");
            ProbeError::Verifier {
                program: program.to_string(),
                release: crate::kernel::features::kernel_release(),
                reason: verifier_reason(&log),
            }
        }
        _ => ProbeError::Program {
            program: program.to_string(),
            source: Box::new(source),
        },
    }
}

/// The line of a verifier log that says why: the last one before its statistics
/// ("verification time ...", "stack depth ...", "processed N insns ...").
fn verifier_reason(log: &str) -> String {
    log.lines()
        .rev()
        .map(str::trim)
        .find(|l| {
            !l.is_empty()
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
                && !l.starts_with("processed ")
        })
        .unwrap_or("no verifier log")
        .to_owned()
}

impl Probes {
    /// Check privileges and kernel support, load the programs with `opts`, fill the filters
    /// and attach. Dropping the returned value detaches everything.
    pub fn load(opts: &ProbeOptions) -> Result<Self, ProbeError> {
        check_privileges()?;
        let tracefs = match &opts.tracefs {
            Some(p) => Tracefs::new(p)?,
            None => Tracefs::discover()?,
        };
        let kbtf = KernelBtf::open(&opts.btf)?;
        let offs = kbtf.offsets()?;
        debug!(?offs, "kernel offsets from BTF");
        let features = KernelFeatures::detect(&kbtf, &tracefs, std::path::Path::new("/sys"));
        drop(kbtf);
        for (s, present) in features.rows() {
            debug!(feature = s.name, present, "kernel feature");
        }
        let run = "run-queue delay (capture and daemon)";
        let upgrade = "run schedlat on a newer kernel";
        features.require(Feature::BtfTracepoints, run, upgrade)?;
        features.require(Feature::RingBuf, run, upgrade)?;
        for tp in ["sched_switch", "sched_waking", "sched_wakeup_new"] {
            tracefs.require("sched", tp, "run-queue delay", "")?;
        }
        let futex = features.futex_mode(opts.futex)?;
        if futex != opts.futex {
            debug!(asked = %opts.futex, using = %futex, "futex mode");
        }
        if opts.go_events.is_some() {
            features.require(
                Feature::Uprobes,
                "per-event Go probes",
                "capture with `--go-probes off` (the Go runtime's own statistics need no probe)",
            )?;
        }
        let (tp_futex_op, tp_exit_ret) = if futex == FutexMode::Syscall {
            tracefs.require("syscalls", "sys_exit_futex", "futex mode `syscall`", "")?;
            (
                tracefs.field_offset("syscalls", "sys_enter_futex", "op")?,
                tracefs.field_offset("syscalls", "sys_exit_futex", "ret")?,
            )
        } else {
            (0, 0)
        };

        let mut f = 0;
        if opts.track_tasks {
            f |= flags::TRACK_TASKS;
        }
        if !opts.filter_tgids.is_empty() {
            f |= flags::FILTER_TGID;
        }
        if !opts.filter_cgroups.is_empty() {
            f |= flags::FILTER_CGROUP;
        }
        if !features.has(Feature::SwitchPrevState) {
            f |= flags::READ_PREV_STATE;
        }
        if opts.slow_threshold.is_some() {
            f |= flags::SLOW_EVENTS;
        }
        if opts.preemptors {
            f |= flags::PREEMPTORS;
        }
        let (mut regs_syscall_nr, mut regs_arg2, mut nrs) = (0, 0, (u32::MAX, u32::MAX, u32::MAX));
        if futex == FutexMode::Sched {
            let (Some(n), Some(a), Some(s)) =
                (offs.regs_syscall_nr, offs.regs_arg2, FUTEX_SYSCALLS)
            else {
                return Err(ProbeError::Btf(BtfError::Other(format!(
                    "futex mode `sched` reads the syscall from struct pt_regs, implemented for \
                     x86_64 only (this is {}): use futex mode `syscall` or `off`",
                    std::env::consts::ARCH
                ))));
            };
            (regs_syscall_nr, regs_arg2, nrs) = (n, a, s);
            f |= flags::FUTEX_SCHED;
        }
        let config = Config {
            task_pid: offs.task_pid,
            task_tgid: offs.task_tgid,
            task_state: offs.task_state,
            task_comm: offs.task_comm,
            task_cgroups: offs.task_cgroups,
            css_set_dfl_cgrp: offs.css_set_dfl_cgrp,
            cgroup_kn: offs.cgroup_kn,
            kernfs_node_id: offs.kernfs_node_id,
            task_pcount: offs.task_pcount.unwrap_or(0),
            tp_futex_op,
            tp_exit_ret,
            flags: f,
            slow_max_per_sec: opts.slow_max_per_sec,
            slow_threshold_ns: opts
                .slow_threshold
                .map_or(u64::MAX, |d| d.as_nanos() as u64),
            regs_syscall_nr,
            regs_arg2,
            nr_futex: nrs.0,
            nr_futex_waitv: nrs.1,
            nr_futex_wait: nrs.2,
        };

        // Pre-6.x kernels charge BPF memory to RLIMIT_MEMLOCK; 5.11+ uses memcg and this fails
        // harmlessly in some sandboxes.
        let rlim = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) } != 0 {
            debug!("setrlimit(RLIMIT_MEMLOCK) failed; fine on kernels with memcg accounting");
        }

        let mut s = opts.map_sizes;
        let task_storage = features.has(Feature::TaskStorage) && !opts.hash_stamps;
        if !task_storage && s.runq_start == 0 {
            s.runq_start = task_map_for_host("RUNQ_START", "maps.runq_start");
        }
        // FUTEX_START holds a stamp per task inside a futex call: only futex mode `syscall`
        // writes it (the other modes delete from it at task exit, a miss).
        s.futex_start = match futex {
            FutexMode::Syscall if s.futex_start == 0 => {
                task_map_for_host("FUTEX_START", "maps.futex_start")
            }
            FutexMode::Syscall => s.futex_start,
            _ => 1,
        };
        let rq_slots = rq_slots(&s);
        let filter_tgid = (opts.filter_tgids.len() as u32).max(1);
        let filter_cg = (opts.filter_cgroups.len() as u32).max(1);
        let mut loader = EbpfLoader::new();
        loader
            .override_global("CONFIG", &config, true)
            .map_max_entries("RUNQ_START", s.runq_start)
            .map_max_entries("FUTEX_START", s.futex_start)
            .map_max_entries("HISTS", futex_hists(&s))
            .map_max_entries("RQ_SLOTS", rq_slots)
            .map_max_entries("RQ_FREE", rq_slots)
            .map_max_entries("RQ_HISTS", rq_slots)
            // Maps a mode does not use get one entry, not the default thousands.
            .map_max_entries("TASK_STATS", if opts.track_tasks { s.tasks } else { 1 })
            .map_max_entries(
                "WAKE_PAIRS",
                if opts.track_tasks { s.wake_pairs } else { 1 },
            )
            .map_max_entries("PREEMPTS", if opts.preemptors { s.preempts } else { 1 })
            .map_max_entries("FILTER_TGID", filter_tgid)
            .map_max_entries("FILTER_CG", filter_cg);
        let go_cfg = opts.go_events.as_ref().map_or(GoConfig::NONE, |g| g.config);
        loader.override_global("GO_CONFIG", &go_cfg, true);
        // The programs' diagnostics (aya-log) only when someone reads them: at level 0 the
        // verifier removes every log site (the global is read-only data).
        let no_log = opts.no_log && task_storage;
        let kernel_log = tracing::enabled!(tracing::Level::DEBUG) && !no_log;
        let log_level: u8 = if kernel_log { 4 } else { 0 }; // aya_log_common::Level::Debug
        loader.override_global("AYA_LOG_LEVEL", &log_level, !no_log);
        if opts.go_events.is_none() {
            // Not a Go capture: no ~450 KiB of Go histograms in the daemon.
            loader
                .map_max_entries("GO_G", 1)
                .map_max_entries("GO_HISTS", 1)
                .map_max_entries("GO_RUNQ", 1);
        } else {
            loader
                .map_max_entries("GO_G", GO_G_ENTRIES)
                .map_max_entries("GO_RUNQ", GO_RUNQ_ENTRIES);
        }
        debug!(
            task_storage,
            runq_start = if task_storage { 0 } else { s.runq_start },
            "per-task state (in task storage, else in RUNQ_START of this capacity)"
        );
        // aya has no userspace type for task storage (TASK_STORE); nothing here reads it.
        loader.allow_unsupported_maps();
        let mut ebpf = loader
            .load(match (task_storage, no_log) {
                (true, true) => OBJECT_NOLOG,
                (true, false) => OBJECT,
                (false, _) => OBJECT_HASH,
            })
            .map_err(|e| ProbeError::Load(Box::new(e)))?;

        // Every run-queue histogram slot is free; in before anything is attached.
        {
            let mut q: Queue<_, u32> = map_mut(&mut ebpf, "RQ_FREE")?;
            for slot in 0..rq_slots {
                q.push(slot, 0).map_err(|e| ProbeError::Map {
                    map: "RQ_FREE",
                    detail: e.to_string(),
                })?;
            }
        }

        // Filters go in before anything is attached.
        if !opts.filter_tgids.is_empty() {
            let mut m: BpfHashMap<_, u32, u8> = map_mut(&mut ebpf, "FILTER_TGID")?;
            for t in &opts.filter_tgids {
                m.insert(t, 1, 0).map_err(|e| ProbeError::Map {
                    map: "FILTER_TGID",
                    detail: e.to_string(),
                })?;
            }
        }
        if !opts.filter_cgroups.is_empty() {
            let mut m: BpfHashMap<_, u64, u8> = map_mut(&mut ebpf, "FILTER_CG")?;
            for c in &opts.filter_cgroups {
                m.insert(c, 1, 0).map_err(|e| ProbeError::Map {
                    map: "FILTER_CG",
                    detail: e.to_string(),
                })?;
            }
        }

        // On before the first attach, so that every run is counted. Not fatal: the report
        // just has no cost then.
        let run_stats = if opts.run_stats {
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    warn!(
                        error = %e,
                        "the kernel's BPF run-time accounting (BPF_ENABLE_STATS, Linux 5.8+) \
                         could not be turned on: the report will not state its own cost"
                    );
                    None
                }
            }
        } else {
            None
        };

        let mut attached = Vec::new();
        let btf = Btf::from_sys_fs().map_err(|e| {
            ProbeError::Btf(BtfError::Other(format!(
                "reading /sys/kernel/btf/vmlinux for tp_btf: {e}"
            )))
        })?;
        for name in ["sched_waking", "sched_wakeup_new", "sched_switch"] {
            let p: &mut BtfTracePoint = program(&mut ebpf, name)?;
            p.load(name, &btf).map_err(prog_err(name))?;
            p.attach().map_err(|source| ProbeError::Attach {
                program: name.into(),
                target: format!("tp_btf/{name}"),
                source: Box::new(source),
            })?;
            attached.push(Attached {
                program: name.into(),
                target: format!("tp_btf/{name}"),
                attached: true,
                note: None,
            });
        }
        if futex == FutexMode::Syscall {
            // futex_waitv (5.16) and futex2 futex_wait (6.7) are optional: attach where present.
            for (prog, feature) in [
                ("sys_enter_futex", Feature::SyscallTracepoints),
                ("sys_exit_futex", Feature::SyscallTracepoints),
                ("sys_enter_futex_waitv", Feature::FutexWaitvTracepoints),
                ("sys_exit_futex_waitv", Feature::FutexWaitvTracepoints),
                ("sys_enter_futex_wait", Feature::Futex2Tracepoints),
                ("sys_exit_futex_wait", Feature::Futex2Tracepoints),
            ] {
                let tp = prog;
                let target = format!("tracepoint/syscalls/{tp}");
                if !features.has(feature) || !tracefs.has("syscalls", tp) {
                    attached.push(Attached {
                        program: prog.into(),
                        target,
                        attached: false,
                        note: Some("tracepoint not present on this kernel".into()),
                    });
                    continue;
                }
                let p: &mut TracePoint = program(&mut ebpf, prog)?;
                p.load().map_err(prog_err(prog))?;
                p.attach("syscalls", tp)
                    .map_err(|source| ProbeError::Attach {
                        program: prog.into(),
                        target: target.clone(),
                        source: Box::new(source),
                    })?;
                attached.push(Attached {
                    program: prog.into(),
                    target,
                    attached: true,
                    note: None,
                });
            }
        }
        if let Some(g) = &opts.go_events {
            attached.extend(attach_go(&mut ebpf, g)?);
        }
        for a in &attached {
            if a.attached {
                debug!(program = %a.program, target = %a.target, "attached");
            } else {
                debug!(program = %a.program, target = %a.target, note = ?a.note, "not attached");
            }
        }
        let slow = if opts.slow_threshold.is_some() {
            let m = ebpf.take_map("SLOW_EVENTS").ok_or(ProbeError::Map {
                map: "SLOW_EVENTS",
                detail: "missing".into(),
            })?;
            Some(RingBuf::try_from(m).map_err(|e| ProbeError::Map {
                map: "SLOW_EVENTS",
                detail: e.to_string(),
            })?)
        } else {
            None
        };
        let kernel_log = if kernel_log {
            match aya_log::EbpfLogger::init(&mut ebpf) {
                Ok(l) => Some(l),
                Err(e) => {
                    warn!(error = %crate::model::error_chain(&e), "kernel-side diagnostics unavailable");
                    None
                }
            }
        } else {
            None
        };
        // Report the sizes actually used (maps a mode does not use were shrunk to one entry).
        let sizes = MapSizes {
            tasks: if opts.track_tasks { s.tasks } else { 1 },
            wake_pairs: if opts.track_tasks { s.wake_pairs } else { 1 },
            preempts: if opts.preemptors { s.preempts } else { 1 },
            ..s
        };
        Ok(Self {
            ebpf,
            slow,
            attached,
            sizes,
            go: opts.go_events.is_some(),
            futex,
            features,
            task_storage,
            preemptors: opts.preemptors,
            kernel_log,
            run_stats,
        })
    }

    /// Whether a thread without capabilities can read the maps through the descriptors held
    /// here. Newer kernels check privileges when a map is created, not on each access; older
    /// ones (__sys_bpf in kernel/bpf/syscall.c, 5.10 seen here) refuse every bpf() command
    /// without CAP_BPF while kernel.unprivileged_bpf_disabled is set, as Debian sets it. Probed,
    /// not guessed: a scratch thread drops its own capabilities (they are per-thread) and
    /// looks up ZERO_HIST's one entry.
    pub fn maps_readable_unprivileged(&self) -> bool {
        let Some(aya::maps::Map::Array(m)) = self.ebpf.map("ZERO_HIST") else {
            return false;
        };
        use std::os::fd::{AsFd, AsRawFd};
        let fd = m.fd().as_fd().as_raw_fd();
        std::thread::scope(|s| {
            s.spawn(|| {
                if crate::host::privs::drop_all_capabilities().is_err() {
                    return false;
                }
                lookup_raw(fd, 0, size_of::<Hist>())
            })
            .join()
            .unwrap_or(false)
        })
    }

    /// Drain pending slow events.
    pub fn drain_slow_events(&mut self, out: &mut Vec<SlowEvent>, limit: usize) -> u64 {
        let mut dropped = 0;
        if let Some(rb) = self.slow.as_mut() {
            while let Some(item) = rb.next() {
                if item.len() < size_of::<SlowEvent>() {
                    warn!(len = item.len(), "short slow event record");
                    continue;
                }
                if out.len() >= limit {
                    // Kept bounded in userspace too; counted, never silently lost.
                    dropped += 1;
                    continue;
                }
                // SAFETY: the kernel wrote a SlowEvent (repr(C), Pod) and we checked the length.
                let ev = unsafe { core::ptr::read_unaligned(item.as_ptr() as *const SlowEvent) };
                out.push(ev);
            }
        }
        dropped
    }

    /// Delete the series of removed cgroups: futex series from HISTS; a run-queue series
    /// frees its cgroup's slot (out of RQ_SLOTS, zeroed, back on RQ_FREE). Missing keys are
    /// not an error.
    pub fn remove_hists(&mut self, keys: &[HistKey]) -> Result<(), ProbeError> {
        let err = |map: &'static str, what: &'static str| {
            move |e: aya::maps::MapError| ProbeError::Map {
                map,
                detail: format!("{what}: {e}"),
            }
        };
        let mut cgroups: Vec<u64> = keys
            .iter()
            .filter(|k| k.kind != kind::FUTEX)
            .map(|k| k.cgroup_id)
            .collect();
        cgroups.sort_unstable();
        cgroups.dedup();
        for cg in cgroups {
            let mut slots: BpfHashMap<_, u64, u32> = map_mut(&mut self.ebpf, "RQ_SLOTS")?;
            let slot = match slots.get(&cg, 0) {
                Ok(s) => s,
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(err("RQ_SLOTS", "lookup")(e)),
            };
            // Out of the index first: a switch-in that finds the cgroup again gets a new slot.
            remove_present(&mut slots, &cg, "RQ_SLOTS")?;
            let mut hists: Array<_, RunqHists> = map_mut(&mut self.ebpf, "RQ_HISTS")?;
            hists
                .set(slot, RunqHists::ZERO, 0)
                .map_err(err("RQ_HISTS", "zero"))?;
            let mut free: Queue<_, u32> = map_mut(&mut self.ebpf, "RQ_FREE")?;
            free.push(slot, 0).map_err(err("RQ_FREE", "push"))?;
        }
        let mut m: BpfHashMap<_, HistKey, Hist> = map_mut(&mut self.ebpf, "HISTS")?;
        for k in keys.iter().filter(|k| k.kind == kind::FUTEX) {
            remove_present(&mut m, k, "HISTS")?;
        }
        Ok(())
    }

    /// Delete the involuntary-switch counts of pairs with a removed cgroup (PREEMPTS). Missing
    /// keys are not an error.
    pub fn remove_preempts(&mut self, keys: &[PreemptKey]) -> Result<(), ProbeError> {
        let mut m: BpfHashMap<_, PreemptKey, u64> = map_mut(&mut self.ebpf, "PREEMPTS")?;
        for k in keys {
            remove_present(&mut m, k, "PREEMPTS")?;
        }
        Ok(())
    }

    /// Log what the programs reported (kernel-side diagnostics; debug level).
    pub fn flush_kernel_log(&mut self) {
        if let Some(l) = self.kernel_log.as_mut() {
            l.flush();
        }
    }

    /// The kernel's accounting of each attached program, one BPF_OBJ_GET_INFO_BY_FD each: run
    /// time and runs (empty without [`ProbeOptions::run_stats`]), and, always, the runs it
    /// skipped (None where the kernel does not report them). A program attached at several
    /// sites is one program. Into `snap.programs` and `snap.skipped`.
    fn program_stats(&self, snap: &mut RawSnapshot) {
        let mut skipped: Vec<(String, u64)> = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for a in self.attached.iter().filter(|a| a.attached) {
            if seen.contains(&a.program.as_str()) {
                continue;
            }
            seen.push(&a.program);
            let Some(p) = self.ebpf.program(&a.program) else {
                continue;
            };
            let info = p
                .fd()
                .map_err(std::io::Error::other)
                .and_then(|fd| prog_info(std::os::fd::AsFd::as_fd(fd)));
            let (info, len) = match info {
                Ok(i) => i,
                Err(e) => {
                    debug!(program = %a.program, error = %e, "no program info");
                    continue;
                }
            };
            if self.run_stats.is_some() {
                snap.programs.push((
                    a.program.clone(),
                    ProgStats {
                        run_time_ns: info.run_time_ns,
                        run_count: info.run_cnt,
                    },
                ));
            }
            if let Some(n) = recursion_misses(&info, len) {
                skipped.push((a.program.clone(), n));
            }
        }
        snap.skipped = (!skipped.is_empty()).then_some(skipped);
    }

    /// Read every map.
    pub fn snapshot(&self) -> Result<RawSnapshot, ProbeError> {
        let mut snap = RawSnapshot::default();
        self.program_stats(&mut snap);
        let hists: BpfHashMap<_, HistKey, Hist> = map_ref(&self.ebpf, "HISTS")?;
        // Entries are never deleted by the kernel, so an error here is transient; skip it.
        for (k, v) in hists.iter().flatten() {
            snap.hists.push((k, Histogram::from(&v)));
        }
        snap.map_entries
            .push(("HISTS", snap.hists.len(), futex_hists(&self.sizes)));
        // Run-queue series: each cgroup's slot holds woken and preempted; a kind that never
        // had a value is not a series (as when HISTS held them).
        let slots: BpfHashMap<_, u64, u32> = map_ref(&self.ebpf, "RQ_SLOTS")?;
        let rq: Array<_, RunqHists> = map_ref(&self.ebpf, "RQ_HISTS")?;
        let mut used = 0;
        for (cgroup_id, slot) in slots.iter().flatten() {
            used += 1;
            let Ok(h) = rq.get(&slot, 0) else { continue };
            for (i, kind) in [kind::RUNQ_WOKEN, kind::RUNQ_PREEMPTED]
                .into_iter()
                .enumerate()
            {
                let hist = Histogram::from(&h.hists[i]);
                if hist.count() > 0 {
                    let key = HistKey {
                        cgroup_id,
                        kind,
                        op: 0,
                    };
                    snap.hists.push((key, hist));
                }
            }
        }
        snap.map_entries
            .push(("RQ_SLOTS", used, rq_slots(&self.sizes)));
        let tasks: BpfHashMap<_, u32, TaskStat> = map_ref(&self.ebpf, "TASK_STATS")?;
        snap.tasks = tasks.iter().filter_map(Result::ok).collect();
        let pairs: BpfHashMap<_, WakePair, WakeCount> = map_ref(&self.ebpf, "WAKE_PAIRS")?;
        snap.wake_pairs = pairs.iter().filter_map(Result::ok).collect();
        if !self.task_storage {
            let cap = self.sizes.runq_start;
            self.count_stamps::<u64, schedlat_common::RunqStart>(&mut snap, "RUNQ_START", cap)?;
        }
        if self.futex == FutexMode::Syscall {
            let cap = self.sizes.futex_start;
            self.count_stamps::<u64, schedlat_common::FutexStart>(&mut snap, "FUTEX_START", cap)?;
        }
        snap.map_entries
            .push(("TASK_STATS", snap.tasks.len(), self.sizes.tasks));
        snap.map_entries
            .push(("WAKE_PAIRS", snap.wake_pairs.len(), self.sizes.wake_pairs));
        if self.preemptors {
            // Only the daemon deletes entries (of removed cgroups), never during this walk.
            let preempts: BpfHashMap<_, PreemptKey, u64> = map_ref(&self.ebpf, "PREEMPTS")?;
            snap.preempts = preempts.iter().filter_map(Result::ok).collect();
            snap.map_entries
                .push(("PREEMPTS", snap.preempts.len(), self.sizes.preempts));
        }

        let cpu: PerCpuArray<_, CpuStat> = map_ref(&self.ebpf, "CPU_STATS")?;
        let per_cpu = cpu.get(&0, 0).map_err(|e| ProbeError::Map {
            map: "CPU_STATS",
            detail: e.to_string(),
        })?;
        snap.cpus = per_cpu.iter().copied().collect();
        self.per_cpu_sums("DROPS", &mut snap.drops)?;
        self.per_cpu_sums("FUTEX_OUT", &mut snap.futex_outcomes)?;
        if self.go {
            snap.go = Some(self.go_snapshot()?);
            self.count_stamps::<u64, schedlat_common::GoGState>(&mut snap, "GO_G", GO_G_ENTRIES)?;
            let cap = GO_RUNQ_ENTRIES;
            self.count_stamps::<u32, schedlat_common::GoRunqRing>(&mut snap, "GO_RUNQ", cap)?;
        }
        Ok(snap)
    }

    /// The map_entries row of hash map `name`, which the kernel keeps changing (start
    /// stamps): its entries counted in bounded time by [`count_keys`].
    fn count_stamps<K: aya::Pod, V: aya::Pod>(
        &self,
        snap: &mut RawSnapshot,
        name: &'static str,
        capacity: u32,
    ) -> Result<(), ProbeError> {
        let m: BpfHashMap<_, K, V> = map_ref(&self.ebpf, name)?;
        let entries = count_keys(m.keys(), capacity);
        snap.map_entries.push((name, entries, capacity));
        Ok(())
    }

    /// Each counter of the per-CPU array `name`, summed over the CPUs, into `out` (as many
    /// as it holds).
    fn per_cpu_sums(&self, name: &'static str, out: &mut [u64]) -> Result<(), ProbeError> {
        let m: PerCpuArray<_, u64> = map_ref(&self.ebpf, name)?;
        for (i, d) in out.iter_mut().enumerate() {
            let v = m.get(&(i as u32), 0).map_err(|e| ProbeError::Map {
                map: name,
                detail: e.to_string(),
            })?;
            *d = v.iter().sum();
        }
        Ok(())
    }

    fn go_snapshot(&self) -> Result<GoRaw, ProbeError> {
        let err = |map: &'static str| {
            move |e: aya::maps::MapError| ProbeError::Map {
                map,
                detail: e.to_string(),
            }
        };
        let hists: Array<_, Hist> = map_ref(&self.ebpf, "GO_HISTS")?;
        let mut out = Vec::with_capacity(go::hist::COUNT as usize);
        for i in 0..go::hist::COUNT {
            out.push(Histogram::from(&hists.get(&i, 0).map_err(err("GO_HISTS"))?));
        }
        let mut c = [0u64; go::counter::COUNT];
        self.per_cpu_sums("GO_COUNTS", &mut c)?;
        Ok(GoRaw {
            hists: out,
            counts: c,
        })
    }
}

/// Run-queue histogram slots (one cgroup each, woken and preempted): half of `hists`.
fn rq_slots(s: &MapSizes) -> u32 {
    (s.hists / 2).max(1)
}

/// HISTS entries (futex series): the other half.
fn futex_hists(s: &MapSizes) -> u32 {
    (s.hists - s.hists / 2).max(1)
}

/// BPF_MAP_LOOKUP_ELEM of a u32 `key` in the map behind `fd`, by the raw syscall (the probe
/// above runs it in a thread that has dropped its capabilities).
fn lookup_raw(fd: i32, key: u32, value_size: usize) -> bool {
    // union bpf_attr, the BPF_MAP_*_ELEM member (include/uapi/linux/bpf.h).
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    let mut value = vec![0u8; value_size];
    let attr = ElemAttr {
        map_fd: fd as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value: value.as_mut_ptr() as u64,
        flags: 0,
    };
    // SAFETY: `attr` points at a live key and a value buffer of the map's value size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_LOOKUP_ELEM,
            &attr as *const ElemAttr,
            size_of::<ElemAttr>(),
        )
    };
    rc == 0
}

/// BPF_OBJ_GET_INFO_BY_FD of the program behind `fd`: its bpf_prog_info, and how many bytes of
/// it the kernel filled (its own struct's size when that is smaller than aya-obj's: older
/// kernels know fewer fields and leave the rest zero; kernel/bpf/syscall.c
/// bpf_prog_get_info_by_fd). aya 0.14's ProgramInfo makes the same call but keeps
/// recursion_misses to itself.
fn prog_info(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<(bpf_prog_info, u32)> {
    use std::os::fd::AsRawFd;
    // union bpf_attr, the BPF_OBJ_GET_INFO_BY_FD member `info` (include/uapi/linux/bpf.h).
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: bpf_prog_info is plain integers (bindgen output); all zeroes is a valid value,
    // and the kernel requires the fields it does not know to be zero.
    let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<bpf_prog_info>() as u32,
        info: &raw mut info as u64,
    };
    // SAFETY: `attr` points at a live, writable bpf_prog_info of the length it states; the
    // kernel writes at most that many bytes, then the length it wrote into `attr`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &raw mut attr,
            size_of::<InfoAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((info, attr.info_len))
}

/// bpf_prog_info.recursion_misses where the kernel has the field (5.12, 9ed9e9ba2337 "bpf:
/// Count the number of times recursion was prevented"), given the length it filled: the runs
/// it skipped because the program could not run there. tp_btf and raw tracepoint programs:
/// the same program already running on that CPU (kernel/trace/bpf_trace.c __bpf_trace_run,
/// `prog->active`; counted since 6.1, 05b24ff9b2cf "bpf: Prevent bpf program recursion for raw
/// tracepoint probes": before it such a run was nested, not skipped). Classic tracepoints
/// (the futex syscall programs): any kprobe or tracepoint program running on that CPU, or a
/// bpf() map syscall in progress there (preemptible; the per-CPU bpf_prog_active of
/// trace_call_bpf and of include/linux/bpf.h bpf_disable_instrumentation); skipped on every
/// kernel, counted since 6.7 (dd8657894c11 "bpf: Count missed stats in trace_call_bpf").
/// Uprobes have no such check (kernel/trace/trace_uprobe.c, bpf_prog_run_array_uprobe).
fn recursion_misses(info: &bpf_prog_info, filled: u32) -> Option<u64> {
    let end = std::mem::offset_of!(bpf_prog_info, recursion_misses) + size_of::<u64>();
    (filled as usize >= end).then_some(info.recursion_misses)
}

/// Entries of a hash map that the kernel side keeps changing (start stamps), approximately and
/// in bounded time: the kernel's key walk (BPF_MAP_GET_NEXT_KEY) starts over from the first
/// key when the current one is deleted meanwhile, so `keys().count()` could count some keys
/// twice and, under churn, walk on and on. At most twice the capacity is walked and the count
/// never exceeds the capacity.
fn count_keys<K, E>(keys: impl Iterator<Item = Result<K, E>>, capacity: u32) -> usize {
    let cap = capacity as usize;
    keys.take(cap.saturating_mul(2).saturating_add(1))
        .filter(Result::is_ok)
        .count()
        .min(cap)
}

/// Capacity of GO_G (goroutines runnable or waiting at once that a Go capture can time).
const GO_G_ENTRIES: u32 = 65536;
/// Capacity of GO_RUNQ (threads of the Go target whose run-queue waits are kept).
const GO_RUNQ_ENTRIES: u32 = 4096;

/// Attach the Go uprobes to one process, at the planned instructions.
fn attach_go(ebpf: &mut Ebpf, g: &GoEventTarget) -> Result<Vec<Attached>, ProbeError> {
    let pid = std::num::NonZeroU32::new(g.pid).ok_or_else(|| ProbeError::Map {
        map: "programs",
        detail: "Go target pid 0".into(),
    })?;
    let main = GoProbe {
        program: "go_casgstatus",
        file_offset: g.file_offset,
        site: g.site.clone(),
    };
    // The magic link of our own descriptor resolves to the file analysed, even in another
    // mount namespace (a container); /proc/PID/exe looked up again could be another file.
    let opened = format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&g.exe.exe)
    );
    let mut out = Vec::new();
    for probe in std::iter::once(&main).chain(&g.syscall_probes) {
        let name = probe.program;
        let exe = format!("/proc/{}/exe", g.pid);
        let target = format!(
            "uprobe:{exe}:{} (file offset {:#x})",
            probe.site, probe.file_offset
        );
        let p: &mut UProbe = program(ebpf, name)?;
        p.load().map_err(prog_err(name))?;
        p.attach(
            UProbeAttachLocation::AbsoluteOffset(probe.file_offset),
            &opened,
            UProbeScope::OneProcess(pid),
        )
        .map_err(|source| ProbeError::Attach {
            program: name.into(),
            target: target.clone(),
            source: Box::new(source),
        })?;
        out.push(Attached {
            program: name.into(),
            target,
            attached: true,
            note: None,
        });
    }
    Ok(out)
}

/// schedlat's hooks with empty bodies, attached where schedlat attaches them: what attaching
/// at all costs (`schedlat bench-floor`, for `cargo xtask bench`). Dropping it detaches.
pub struct Floor {
    _ebpf: Ebpf,
    pub attached: Vec<Attached>,
}

impl Floor {
    /// The three scheduler hooks; with `go`, instead, only the Go uprobe at the same site a
    /// capture would probe (the benchmark runs it beside a capture without Go probes, which
    /// has the scheduler hooks already).
    pub fn load(go: Option<&GoEventTarget>) -> Result<Self, ProbeError> {
        check_privileges()?;
        let mut ebpf = EbpfLoader::new()
            .load(FLOOR_OBJECT)
            .map_err(|e| ProbeError::Load(Box::new(e)))?;
        let btf = Btf::from_sys_fs().map_err(|e| {
            ProbeError::Btf(BtfError::Other(format!(
                "reading /sys/kernel/btf/vmlinux for tp_btf: {e}"
            )))
        })?;
        let mut attached = Vec::new();
        if let Some(g) = go {
            // The floor of the casgstatus probe only (its object has no syscall programs).
            let g = GoEventTarget {
                syscall_probes: Vec::new(),
                ..g.clone()
            };
            attached.extend(attach_go(&mut ebpf, &g)?);
            return Ok(Self {
                _ebpf: ebpf,
                attached,
            });
        }
        for name in ["sched_waking", "sched_wakeup_new", "sched_switch"] {
            let p: &mut BtfTracePoint = program(&mut ebpf, name)?;
            p.load(name, &btf).map_err(prog_err(name))?;
            p.attach().map_err(|source| ProbeError::Attach {
                program: name.into(),
                target: format!("tp_btf/{name}"),
                source: Box::new(source),
            })?;
            attached.push(Attached {
                program: name.into(),
                target: format!("tp_btf/{name}"),
                attached: true,
                note: None,
            });
        }
        Ok(Self {
            _ebpf: ebpf,
            attached,
        })
    }
}

fn map_ref<'a, V: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<V, ProbeError> {
    let m = ebpf.map(name).ok_or(ProbeError::Map {
        map: name,
        detail: "missing from object".into(),
    })?;
    V::try_from(m).map_err(|e| ProbeError::Map {
        map: name,
        detail: e.to_string(),
    })
}

/// Delete `key` from hash map `name`; a key already gone (the kernel or an earlier pass
/// deleted it) is not an error.
fn remove_present<K: aya::Pod, V: aya::Pod>(
    m: &mut BpfHashMap<&mut MapData, K, V>,
    key: &K,
    name: &'static str,
) -> Result<(), ProbeError> {
    match m.remove(key) {
        Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(ProbeError::Map {
            map: name,
            detail: format!("delete: {e}"),
        }),
    }
}

fn map_mut<'a, V: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<V, ProbeError> {
    let m = ebpf.map_mut(name).ok_or(ProbeError::Map {
        map: name,
        detail: "missing from object".into(),
    })?;
    V::try_from(m).map_err(|e| ProbeError::Map {
        map: name,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::{TASK_MAP_AUTO_MAX, TASK_MAP_FALLBACK, task_map_for};
    use crate::{kernel::probes::ProbeError, model::ErrorClass};

    /// Privileges and kernel features are the user's to fix (exit 2); a map that fails is a
    /// runtime failure (exit 1).
    #[test]
    fn probe_errors_decide_their_class() {
        let usage = ProbeError::Privileges {
            have: "cap_net_bind_service".into(),
        };
        assert_eq!(ErrorClass::of(&usage.into()), ErrorClass::Usage);
        let runtime = ProbeError::Map {
            map: "DROPS",
            detail: "lookup failed".into(),
        };
        assert_eq!(ErrorClass::of(&runtime.into()), ErrorClass::Runtime);
    }

    /// Sized for every task the host can have (parked threads hold stamps too), bounded.
    #[test]
    fn task_maps_sized_from_the_hosts_task_limit() {
        // pid_max 32768 (a common default): the floor.
        assert_eq!(task_map_for(192_730, 32_768), TASK_MAP_FALLBACK);
        // Raised pid_max: threads-max or pid_max, whichever is lower.
        assert_eq!(task_map_for(192_730, 4_194_304), 192_730);
        assert_eq!(task_map_for(1_000_000, 150_000), 150_000);
        // A large host: capped.
        assert_eq!(task_map_for(4_000_000, 4_194_304), TASK_MAP_AUTO_MAX);
    }

    /// recursion_misses only where the kernel filled it: 5.10's bpf_prog_info ends at run_cnt,
    /// the field after it is then "not available", not 0.
    #[test]
    fn recursion_misses_read_only_where_the_kernel_has_the_field() {
        use aya_obj::generated::bpf_prog_info;
        // SAFETY: plain integers; all zeroes is valid.
        let mut info: bpf_prog_info = unsafe { std::mem::zeroed() };
        info.recursion_misses = 7;
        let full = size_of::<bpf_prog_info>() as u32;
        assert_eq!(super::recursion_misses(&info, full), Some(7));
        let before_5_12 = std::mem::offset_of!(bpf_prog_info, recursion_misses) as u32;
        assert_eq!(super::recursion_misses(&info, before_5_12), None);
        assert_eq!(super::recursion_misses(&info, before_5_12 + 8), Some(7));
    }

    /// A walk that keeps starting over (its current key deleted each time) ends, with at
    /// most the capacity counted.
    #[test]
    fn a_churning_map_is_counted_in_bounded_time() {
        let restarting = [1u64, 2, 3].into_iter().map(Ok::<_, ()>).cycle();
        assert_eq!(super::count_keys(restarting, 10), 10);
        assert_eq!(
            super::count_keys([Ok::<u64, ()>(1), Ok(2)].into_iter(), 10),
            2
        );
    }
}
