//! Reading a running Go process's scheduler statistics: its executable through /proc/PID/exe,
//! its memory with process_vm_readv(2).
//!
//! /proc/PID/exe opens the very file the process runs, even from another mount namespace (a
//! container). process_vm_readv, unlike opening /proc/PID/mem (mode 0600, owned by the target),
//! needs no file permission, only ptrace access: of another user's process that is CAP_SYS_PTRACE (ptrace
//! access mode PTRACE_MODE_ATTACH_FSCREDS).
use std::{fs::File, os::unix::fs::MetadataExt, path::Path};

use serde::Serialize;

use super::{GoError, Layout, MAX_BINARY, Scheme, budget::BudgetedFile};

/// Most Ps (GOMAXPROCS) we walk in runtime.allp; the runtime caps GOMAXPROCS at 1<<8 ... 1<<16
/// depending on version (runtime/proc.go _MaxGomaxprocs).
const MAX_PROCS: u64 = 1 << 16;

/// Goroutine counts as runtime.gcount computes them (proc.go): all g's ever allocated
/// (allglen) minus those on the global and per-P free lists. `live` includes system goroutines
/// (GC workers, finalizer, ...); `system` is sched.ngsys.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Goroutines {
    pub allglen: u64,
    pub live: i64,
    pub system: i64,
    /// What runtime.NumGoroutine returns: gcount without system goroutines, at least 1
    /// (runtime/debug.go, proc.go), on every Go release.
    pub num_goroutine: i64,
}

/// Goroutines by state, goroutines created and threads, computed as runtime/metrics.go's
/// schedStatsAggregate.compute does (Go >= 1.26): the data behind
/// /sched/goroutines/{runnable,running,waiting,not-in-go}:goroutines,
/// /sched/goroutines-created:goroutines and /sched/threads/total:threads. Like the runtime's,
/// the split by state is a racy snapshot; read from outside it never counts the reader.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SchedStats {
    pub runnable: u64,
    pub running: u64,
    pub waiting: u64,
    pub not_in_go: u64,
    pub created: u64,
    pub threads: u64,
}

/// The sched-latency histogram in runtime/metrics form: `boundaries` (seconds, from -Inf to
/// +Inf) has one more element than `counts` (underflow first, overflow last when present).
#[derive(Clone, Debug, Serialize)]
pub struct LatencyHist {
    #[serde(skip)]
    pub scheme: Scheme,
    pub boundaries: Vec<f64>,
    pub counts: Vec<u64>,
    pub total: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct Stats {
    pub pid: u32,
    pub go_version: String,
    pub pie: bool,
    /// Where the binary's layout came from: "DWARF", or "layout table (goX.Y.Z)" if stripped.
    pub layout: String,
    pub gomaxprocs: i32,
    pub goroutines: Option<Goroutines>,
    /// Go >= 1.26 (null before).
    pub sched_stats: Option<SchedStats>,
    pub sched_latencies: LatencyHist,
    /// Stop-the-world pauses (Go >= 1.22; null before), runtime/metrics form.
    pub stw_pauses: Option<StwPauses>,
    /// GC pauses from runtime.memstats' ring (Go < 1.22, where `stw_pauses` is null).
    pub gc_pauses: Option<GcPauses>,
}

/// The runtime's record of recent GC cycles (runtime/mstats.go `numgc`, `pause_ns`), as
/// runtime.ReadMemStats reports them in MemStats.NumGC and PauseNs.
#[derive(Clone, Debug, Serialize)]
pub struct GcPauses {
    /// GC cycles completed since the program started.
    pub num_gc: u32,
    /// Stop-the-world time of each of the most recent cycles (both pauses of a cycle summed),
    /// oldest first: min(num_gc, 256) entries.
    pub recent_ns: Vec<u64>,
    /// `recent_ns` in runtime/metrics form, on the buckets of this binary's timeHistogram.
    pub recent: LatencyHist,
}

/// Attempts at a consistent read of the GC ring before giving up (a GC's mark termination
/// writes it for microseconds; retrying meets a quiet moment at once in practice).
const GC_RING_ATTEMPTS: u32 = 32;

/// /sched/pauses/{stopping,total}/{gc,other}:seconds.
#[derive(Clone, Debug, Serialize)]
pub struct StwPauses {
    pub stopping_gc: LatencyHist,
    pub stopping_other: LatencyHist,
    pub total_gc: LatencyHist,
    pub total_other: LatencyHist,
}

/// The executable, opened through /proc/PID/exe.
pub fn open_exe(pid: u32) -> Result<(File, std::fs::Metadata), GoError> {
    let path = format!("/proc/{pid}/exe");
    let f = File::open(&path).map_err(|e| {
        // /proc/PID exists but has no exe: a kernel thread (or a zombie).
        if e.kind() == std::io::ErrorKind::NotFound && Path::new(&format!("/proc/{pid}")).exists() {
            return GoError::NotGo {
                why: "the process has no executable (a kernel thread, or exiting)",
            };
        }
        gone_or(pid, e, format!("opening {path}"))
    })?;
    let meta = f
        .metadata()
        .map_err(|e| gone_or(pid, e, format!("stat {path}")))?;
    if meta.len() > MAX_BINARY {
        return Err(GoError::Unsupported {
            what: format!(
                "{path} is {} bytes, over the {MAX_BINARY}-byte cap",
                meta.len()
            ),
        });
    }
    Ok((f, meta))
}

/// An executable file's identity: what the daemon caches analyses by, and what a reading is
/// checked against (a file replaced in place keeps neither its mtime nor, usually, its size).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExeKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: (i64, i64),
}

impl ExeKey {
    pub fn of(m: &std::fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    }
}

/// One process and the executable it ran when opened: a pidfd taken first, the process's
/// start time, and /proc/PID/exe opened once. Everything about the process is read by pid
/// (process_vm_readv, /proc/PID/maps), so [`Self::verify`] after reading discards a reading
/// of another process that reused the pid, or of a new program after an exec.
#[derive(Debug)]
pub struct Target {
    pub pid: u32,
    /// None where pidfd_open(2) is missing (before 5.3): the start time still tells reuse.
    pidfd: Option<std::os::fd::OwnedFd>,
    start_time: u64,
    pub exe: File,
    pub meta: std::fs::Metadata,
}

impl Target {
    pub fn open(pid: u32) -> Result<Self, GoError> {
        // SAFETY: pidfd_open takes a pid and flags; a returned descriptor is ours to own.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        let pidfd = if fd >= 0 {
            use std::os::fd::FromRawFd as _;
            // SAFETY: a fresh descriptor nothing else owns.
            Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
        } else {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::ENOSYS) => None,
                Some(libc::ESRCH) => return Err(GoError::ProcessGone { pid }),
                _ => return Err(gone_or(pid, e, format!("pidfd_open({pid})"))),
            }
        };
        let start_time = start_time(pid)?;
        let (exe, meta) = open_exe(pid)?;
        Ok(Self {
            pid,
            pidfd,
            start_time,
            exe,
            meta,
        })
    }

    pub fn key(&self) -> ExeKey {
        ExeKey::of(&self.meta)
    }

    /// `read` (of this process, by pid) if the pid still names the process opened, running
    /// the file opened; otherwise why not (also when the read failed: reading another
    /// process's memory with this layout fails for that reason).
    pub fn checked<T>(&self, read: Result<T, GoError>) -> Result<T, GoError> {
        match read {
            Ok(v) => self.verify().map(|()| v),
            Err(e) => Err(self.verify().err().unwrap_or(e)),
        }
    }

    /// Whether the pid still names the process opened, running the executable opened: call
    /// after reading, and discard the reading on error (`ProcessGone` if it exited,
    /// `ProcessChanged` if the pid was reused or the process exec'd another program).
    pub fn verify(&self) -> Result<(), GoError> {
        let pid = self.pid;
        let exited = self.pidfd.as_ref().is_some_and(|fd| {
            use std::os::fd::AsRawFd as _;
            let mut p = libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one pollfd on a descriptor we own; a pidfd is readable once it exited.
            let n = unsafe { libc::poll(&mut p, 1, 0) };
            n > 0 && p.revents & libc::POLLIN != 0
        });
        let changed = |what: String| GoError::ProcessChanged { pid, what };
        // ProcessGone when nothing has the pid now.
        let now = start_time(pid)?;
        if exited && now == self.start_time {
            // Exited, not reaped yet.
            return Err(GoError::ProcessGone { pid });
        }
        if exited || now != self.start_time {
            return Err(changed(format!(
                "the process opened exited and another (started {now} ticks after boot, the \
                 one opened at {}) has its pid",
                self.start_time
            )));
        }
        let exe = std::fs::metadata(format!("/proc/{pid}/exe"))
            .map_err(|e| gone_or(pid, e, format!("stat /proc/{pid}/exe")))?;
        if (exe.dev(), exe.ino()) != (self.meta.dev(), self.meta.ino()) {
            return Err(changed(
                "it runs another executable than the one analysed (an exec)".into(),
            ));
        }
        Ok(())
    }
}

/// A process's start time (/proc/PID/stat field 22, clock ticks after boot), which a pid
/// reused by another process does not keep.
fn start_time(pid: u32) -> Result<u64, GoError> {
    let path = format!("/proc/{pid}/stat");
    let stat =
        std::fs::read_to_string(&path).map_err(|e| gone_or(pid, e, format!("reading {path}")))?;
    // comm (field 2) may hold spaces and parentheses: fields after it follow the last ')'.
    stat.rsplit_once(')')
        .and_then(|(_, rest)| rest.split_ascii_whitespace().nth(19)?.parse().ok())
        .ok_or_else(|| GoError::Malformed {
            what: format!("{path} has no start time"),
        })
}

/// Analyse an opened executable, reading only the parts parsed (ELF headers, .symtab,
/// .go.buildinfo, DWARF), everything charged to one [`budget::Budget`]: Go binaries run to
/// hundreds of MiB, the daemon's memory is capped.
pub fn analyse_file(f: File) -> Result<Layout, GoError> {
    let bf = BudgetedFile::new(f, Default::default()).map_err(|e| GoError::Io {
        what: "stat of the executable".into(),
        cause: e,
    })?;
    super::GoBinary::from_file(&bf)?.layout()
}

/// Analyse the process's executable.
pub fn analyse_exe(pid: u32) -> Result<(Layout, std::fs::Metadata), GoError> {
    let (f, meta) = open_exe(pid)?;
    Ok((analyse_file(f)?, meta))
}

/// Analyse the process's executable and read its statistics; the reading is discarded if the
/// pid no longer names that process running that executable afterwards.
pub fn read(pid: u32) -> Result<Stats, GoError> {
    let t = Target::open(pid)?;
    let layout = analyse_file(t.exe.try_clone().map_err(|e| GoError::Io {
        what: format!("duplicating the descriptor of /proc/{pid}/exe"),
        cause: e,
    })?)?;
    #[cfg(test)]
    test_hook::between_scan_and_read(pid);
    t.checked(read_with(pid, &layout, &t.meta))
}

/// Read statistics with an already-analysed layout (`exe` = metadata of /proc/PID/exe).
pub fn read_with(pid: u32, layout: &Layout, exe: &std::fs::Metadata) -> Result<Stats, GoError> {
    let bias = if layout.pie {
        load_bias(pid, layout.base_vaddr, exe)?
    } else {
        0
    };
    let mem = Mem(pid);
    let path = "process memory";
    let at = |addr: u64| addr.wrapping_add(bias);
    let read = |addr: u64, buf: &mut [u8], what: &str| -> Result<(), GoError> {
        mem.read_exact_at(buf, addr).map_err(|e| {
            gone_or(
                pid,
                e,
                format!(
                    "reading {what} ({} bytes at {addr:#x}) from {path}",
                    buf.len()
                ),
            )
        })
    };
    let u = |b: &[u8]| -> u64 {
        let mut w = [0u8; 8];
        w[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
        u64::from_le_bytes(w)
    };

    let mut b4 = [0u8; 4];
    read(at(layout.gomaxprocs), &mut b4, "runtime.gomaxprocs")?;
    let gomaxprocs = i32::from_le_bytes(b4);

    // Each histogram in one read; the runtime adds to it atomically meanwhile, so each
    // counter is a consistent 8-byte value (aligned: proc.go checks timeToRun's alignment).
    let hist = |h: &super::HistLayout, what: &str| -> Result<LatencyHist, GoError> {
        let mut buf = vec![0u8; h.size as usize];
        read(at(layout.sched.wrapping_add(h.offset)), &mut buf, what)?;
        let word = |off: u64| u(&buf[off as usize..off as usize + 8]);
        let n = h.scheme.counts_len();
        let counts: Vec<u64> = (0..n as u64).map(|i| word(h.counts + 8 * i)).collect();
        let underflow = word(h.underflow);
        let overflow = h.overflow.map_or(0, word);
        let counts = h.scheme.metrics_counts(&counts, underflow, overflow);
        let total = counts.iter().fold(0u64, |a, c| a.saturating_add(*c));
        Ok(LatencyHist {
            scheme: h.scheme,
            boundaries: h.scheme.metrics_boundaries(),
            counts,
            total,
        })
    };
    let sched_latencies = hist(&layout.hist, "runtime.sched.timeToRun")?;
    let stw_pauses = match &layout.stw {
        None => None,
        Some(l) => Some(StwPauses {
            stopping_gc: hist(&l.stopping_gc, "runtime.sched.stwStoppingTimeGC")?,
            stopping_other: hist(&l.stopping_other, "runtime.sched.stwStoppingTimeOther")?,
            total_gc: hist(&l.total_gc, "runtime.sched.stwTotalTimeGC")?,
            total_other: hist(&l.total_other, "runtime.sched.stwTotalTimeOther")?,
        }),
    };

    let gc_pauses = match &layout.gc_ring {
        None => None,
        Some(r) => Some(read_gc_ring(r, layout.hist.scheme, &|addr, buf, what| {
            read(at(addr), buf, what)
        })?),
    };

    let mut b8 = [0u8; 8];
    read(at(layout.allglen), &mut b8, "runtime.allglen")?;
    let allglen = u64::from_le_bytes(b8);
    let mut allp: Vec<u64> = Vec::new();
    // Heap words (address -> value) read in batches; see [`prefetch`].
    let heap_cache: std::cell::RefCell<std::collections::HashMap<u64, u64>> = Default::default();
    let goroutines = match &layout.gcount {
        None => None,
        Some(g) => {
            let field = |addr: u64, f: super::Field, what: &str| -> Result<i64, GoError> {
                let mut b = [0u8; 8];
                let b = &mut b[..f.size as usize];
                read(at(addr.wrapping_add(f.offset)), b, what)?;
                // int32 fields: sign-extend.
                Ok(if f.size == 4 {
                    i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                } else {
                    u(b) as i64
                })
            };
            let mut free = 0i64;
            for f in &g.sched_free {
                free = free.saturating_add(field(layout.sched, *f, "runtime.sched.gFree")?);
            }
            let system = field(layout.sched, g.ngsys, "runtime.sched.ngsys")?;
            // allp is a []*p: {data, len, cap} (runtime2.go), GOMAXPROCS long (procresize):
            // bounded by it, so a forged or torn length cannot make us walk 65,536 Ps.
            let mut slice = [0u8; 16];
            read(at(g.allp), &mut slice, "runtime.allp")?;
            let (data, len) = (u(&slice[..8]), u(&slice[8..]));
            let procs = u64::try_from(gomaxprocs).unwrap_or(0).max(1);
            if len > MAX_PROCS || len > procs {
                return Err(GoError::Inconsistent {
                    what: format!(
                        "runtime.allp has {len} entries but GOMAXPROCS is {gomaxprocs} (a \
                         resize in progress, or not a Go runtime's memory)"
                    ),
                });
            }
            let mut ptrs = vec![0u8; 8 * len as usize];
            // allp's backing array is heap memory: absolute address, no bias. One call.
            read_abs(&mem, data, &mut ptrs, pid, path)?;
            allp = ptrs.chunks_exact(8).map(u).collect();
            // Every field of every P read, in one process_vm_readv per 1,024 fields: the free
            // list sizes here, and what the state counts need (below).
            let mut fields = vec![g.p_free];
            if let Some(l) = &layout.sched_stats {
                fields.extend([
                    l.p_status,
                    l.p_created,
                    l.p_m,
                    l.p_runqhead,
                    l.p_runqtail,
                    l.p_runnext,
                ]);
            }
            let ps: Vec<u64> = allp.iter().copied().filter(|p| *p != 0).collect();
            prefetch(&mem, &heap_cache, &ps, &fields, pid, path)?;
            for &p in &ps {
                let f = g.p_free;
                let v = heap_cache
                    .borrow()
                    .get(&p.wrapping_add(f.offset))
                    .copied()
                    .unwrap_or(0);
                free = free.saturating_add(i64::from(v as u32 as i32));
            }
            let live = (allglen as i64).saturating_sub(free);
            Some(Goroutines {
                allglen,
                live,
                system,
                num_goroutine: live.saturating_sub(system).max(1),
            })
        }
    };
    let sched_stats = match (&layout.sched_stats, &goroutines) {
        (Some(l), Some(g)) => {
            let sched = |f: super::Field, what: &str| -> Result<u64, GoError> {
                let mut b = [0u8; 8];
                read(
                    at(layout.sched.wrapping_add(f.offset)),
                    &mut b[..f.size as usize],
                    what,
                )?;
                Ok(u(&b[..f.size as usize]))
            };
            let global = |addr: u64, what: &str| -> Result<u64, GoError> {
                let mut b = [0u8; 4];
                read(at(addr), &mut b, what)?;
                Ok(u64::from(u32::from_le_bytes(b)))
            };
            // The Ms of running Ps, then their current goroutines: one batch each.
            let running: Vec<u64> = allp
                .iter()
                .copied()
                .take_while(|p| *p != 0)
                .filter(|p| {
                    heap_cache
                        .borrow()
                        .get(&p.wrapping_add(l.p_status.offset))
                        .copied()
                        == Some(u64::from(l.p_running))
                })
                .collect();
            let field_of = |objs: &[u64], f: super::Field| -> Vec<u64> {
                let c = heap_cache.borrow();
                objs.iter()
                    .filter_map(|o| c.get(&o.wrapping_add(f.offset)).copied())
                    .filter(|v| *v != 0)
                    .collect()
            };
            let ms = field_of(&running, l.p_m);
            prefetch(&mem, &heap_cache, &ms, &[l.m_curg, l.m_p], pid, path)?;
            let gs = field_of(&ms, l.m_curg);
            prefetch(&mem, &heap_cache, &gs, &[l.g_status, l.g_m], pid, path)?;
            // Heap objects (p, m, g): absolute addresses; prefetched above, read if not.
            let heap = |addr: u64, f: super::Field| -> Result<u64, GoError> {
                if let Some(v) = heap_cache.borrow().get(&addr.wrapping_add(f.offset)) {
                    return Ok(*v);
                }
                let mut b = [0u8; 8];
                read_abs(
                    &mem,
                    addr.wrapping_add(f.offset),
                    &mut b[..f.size as usize],
                    pid,
                    path,
                )?;
                Ok(u(&b[..f.size as usize]))
            };
            read_sched_stats(l, g, &allp, &sched, &global, &heap)?
        }
        _ => None,
    };
    Ok(Stats {
        pid,
        go_version: layout.version.clone(),
        pie: layout.pie,
        layout: layout.source.clone(),
        gomaxprocs,
        goroutines,
        sched_stats,
        sched_latencies,
        stw_pauses,
        gc_pauses,
    })
}

/// runtime/metrics.go (Go 1.26.6, 1.27.3) schedStatsAggregate.compute, from outside: threads
/// are Ms made minus Ms freed minus extra Ms (cgo callbacks) in use or listed; for each P in
/// allp up to the first nil or _Pdead one, its goroutines created, 1 running or (its M's
/// current goroutine in a system call, on that M and P) 1 not in Go, and its run queue
/// (tail - head, plus runnext) runnable; the global run queue runnable; goroutines in system
/// calls without a P not in Go; waiting is the rest of gcount(true) (`live`).
fn read_sched_stats(
    l: &super::SchedStatsLayout,
    g: &Goroutines,
    allp: &[u64],
    sched: &dyn Fn(super::Field, &str) -> Result<u64, GoError>,
    global: &dyn Fn(u64, &str) -> Result<u64, GoError>,
    heap: &dyn Fn(u64, super::Field) -> Result<u64, GoError>,
) -> Result<Option<SchedStats>, GoError> {
    let mnext = sched(l.sched_mnext, "runtime.sched.mnext")? as i64;
    let nmfreed = sched(l.sched_nmfreed, "runtime.sched.nmfreed")? as i64;
    let in_use = global(l.extra_m_in_use, "runtime.extraMInUse")? as i64;
    let length = global(l.extra_m_length, "runtime.extraMLength")? as i64;
    let threads = mnext
        .saturating_sub(nmfreed)
        .saturating_sub(in_use)
        .saturating_sub(length)
        .max(0) as u64;
    let mut created = sched(l.sched_created, "runtime.sched.goroutinesCreated")?;
    let (mut running, mut runnable, mut not_in_go) = (0u64, 0u64, 0u64);
    for &p in allp {
        if p == 0 {
            break;
        }
        let status = heap(p, l.p_status)? as u32;
        if status == l.p_dead {
            break;
        }
        created = created.saturating_add(heap(p, l.p_created)?);
        if status == l.p_running {
            // proc.go setBlockOnExitSyscall: the P's M runs a goroutine in a system call
            // (_Gsyscall, or _Gdeadextra for an extra M) still attached to this M and P.
            let m = heap(p, l.p_m)?;
            let curg = if m == 0 { 0 } else { heap(m, l.m_curg)? };
            let in_syscall = curg != 0 && {
                let st = heap(curg, l.g_status)? as u32 & !l.g_scan;
                (st == l.g_syscall || st == l.g_deadextra)
                    && heap(curg, l.g_m)? == m
                    && heap(m, l.m_p)? == p
            };
            if in_syscall {
                not_in_go += 1;
            } else {
                running += 1;
            }
        }
        let (head, tail) = (heap(p, l.p_runqhead)? as u32, heap(p, l.p_runqtail)? as u32);
        let queued = tail.wrapping_sub(head) as i32;
        if queued >= 0 {
            runnable += queued as u64;
        }
        if heap(p, l.p_runnext)? != 0 {
            runnable += 1;
        }
    }
    let global_runq = sched(l.sched_runq_size, "runtime.sched.runq.size")? as u32 as i32;
    runnable += global_runq.max(0) as u64;
    // nGsyscallNoP can go negative during races (metrics.go).
    let no_p = sched(l.sched_syscall_no_p, "runtime.sched.nGsyscallNoP")? as u32 as i32;
    not_in_go += no_p.max(0) as u64;
    // gcount(true) clamps to 1; waiting is the rest, never below 0 (metrics.go of 1.27.3).
    let total = g.live.max(1) as u64;
    let waiting = total.saturating_sub(running + runnable + not_in_go);
    Ok(Some(SchedStats {
        runnable,
        running,
        waiting,
        not_in_go,
        created,
        threads,
    }))
}

/// The names of the runtime's wait reasons (runtime.waitReasonStrings, runtime2.go), read from
/// the process's memory: [N]string headers pointing into .rodata (relocated in a PIE). Index =
/// runtime.waitReason value; names longer than 64 bytes are cut.
pub fn wait_reason_names(
    pid: u32,
    plan: &super::events::EventPlan,
    exe: &std::fs::Metadata,
) -> Result<Vec<String>, GoError> {
    let bias = if plan.pie {
        load_bias(pid, plan.base_vaddr, exe)?
    } else {
        0
    };
    let mem = Mem(pid);
    let path = "process memory (runtime.waitReasonStrings)";
    let n = plan.wait_reasons_len.min(super::status::MAX_WAIT_REASONS) as usize;
    let mut headers = vec![0u8; n * 16];
    read_abs(
        &mem,
        plan.wait_reasons_vaddr.wrapping_add(bias),
        &mut headers,
        pid,
        path,
    )?;
    let mut names = Vec::with_capacity(n);
    for h in headers.chunks_exact(16) {
        let ptr = u64::from_le_bytes(h[..8].try_into().expect("8 bytes"));
        let len = u64::from_le_bytes(h[8..].try_into().expect("8 bytes")).min(64) as usize;
        let mut b = vec![0u8; len];
        if len > 0 {
            read_abs(&mem, ptr, &mut b, pid, path)?;
        }
        names.push(String::from_utf8_lossy(&b).into_owned());
    }
    Ok(names)
}

type ReadFn<'a> = dyn Fn(u64, &mut [u8], &str) -> Result<(), GoError> + 'a;

/// Read the pause ring consistently while the program runs. gcMarkTermination (mgc.go) stores
/// `last_gc_unix` (atomically), then `pause_ns[numgc%256]`, `pause_end[numgc%256]` (= the same
/// unix time), then `numgc++` after taking a lock; so we read in the opposite order
/// (last_gc_unix, numgc, pause_end, pause_ns, last_gc_unix again) and accept the read only if
/// both `last_gc_unix` agree with `pause_end` of the latest cycle: otherwise a cycle was being
/// recorded meanwhile, and the slot it overwrites may be torn.
pub fn read_gc_ring(
    r: &super::GcRingLayout,
    scheme: Scheme,
    read: &ReadFn<'_>,
) -> Result<GcPauses, GoError> {
    let len = r.len as usize;
    let mut ends = vec![0u8; len * 8];
    let mut pauses = vec![0u8; len * 8];
    let word =
        |b: &[u8], i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
    let at = |off: u64| r.memstats.wrapping_add(off);
    for _ in 0..GC_RING_ATTEMPTS {
        let (mut before, mut after, mut n) = ([0u8; 8], [0u8; 8], [0u8; 4]);
        read(
            at(r.last_gc_unix),
            &mut before,
            "runtime.memstats.last_gc_unix",
        )?;
        read(at(r.numgc), &mut n, "runtime.memstats.numgc")?;
        read(at(r.pause_end), &mut ends, "runtime.memstats.pause_end")?;
        read(at(r.pause_ns), &mut pauses, "runtime.memstats.pause_ns")?;
        read(
            at(r.last_gc_unix),
            &mut after,
            "runtime.memstats.last_gc_unix",
        )?;
        let num_gc = u32::from_le_bytes(n);
        let latest = (num_gc as usize + len - 1) % len;
        let consistent =
            before == after && (num_gc == 0 || word(&ends, latest) == u64::from_le_bytes(before));
        if !consistent {
            std::thread::yield_now();
            continue;
        }
        let k = (num_gc as usize).min(len);
        // Oldest first: cycles num_gc-k .. num_gc-1, at slot (cycle % len).
        let recent_ns: Vec<u64> = (num_gc as usize - k..num_gc as usize)
            .map(|c| word(&pauses, c % len))
            .collect();
        let recent = pause_hist(scheme, &recent_ns);
        return Ok(GcPauses {
            num_gc,
            recent_ns,
            recent,
        });
    }
    Err(GoError::Inconsistent {
        what: format!(
            "runtime.memstats' GC pause ring changed during each of {GC_RING_ATTEMPTS} reads \
             (last_gc_unix never matched the latest pause_end)"
        ),
    })
}

/// Durations in runtime/metrics form on `scheme`'s buckets (the runtime's own record logic).
pub fn pause_hist(scheme: Scheme, durations_ns: &[u64]) -> LatencyHist {
    let n = scheme.counts_len();
    let mut counts = vec![0u64; n];
    let mut overflow = 0u64;
    for &d in durations_ns {
        match scheme.record_index(d) {
            Some(i) => counts[i] += 1,
            None => overflow += 1,
        }
    }
    let counts = scheme.metrics_counts(&counts, 0, overflow);
    LatencyHist {
        scheme,
        boundaries: scheme.metrics_boundaries(),
        total: durations_ns.len() as u64,
        counts,
    }
}

/// Read field `f` of each object in `objs` (heap addresses) into `cache` (address of the
/// field -> value), with as few process_vm_readv calls as the iovec limit allows.
fn prefetch(
    mem: &Mem,
    cache: &std::cell::RefCell<std::collections::HashMap<u64, u64>>,
    objs: &[u64],
    fields: &[super::Field],
    pid: u32,
    path: &str,
) -> Result<(), GoError> {
    let want: Vec<(u64, usize)> = objs
        .iter()
        .flat_map(|o| {
            fields
                .iter()
                .map(move |f| (o.wrapping_add(f.offset), f.size as usize))
        })
        .collect();
    let mut buf = vec![0u8; want.iter().map(|w| w.1).sum()];
    mem.read_many(&want, &mut buf).map_err(|e| {
        gone_or(
            pid,
            e,
            format!(
                "reading {} fields of the runtime's Ps, Ms and Gs from {path}",
                want.len()
            ),
        )
    })?;
    let mut c = cache.borrow_mut();
    let mut at = 0;
    for (addr, size) in want {
        let mut w = [0u8; 8];
        w[..size.min(8)].copy_from_slice(&buf[at..at + size.min(8)]);
        c.insert(addr, u64::from_le_bytes(w));
        at += size;
    }
    Ok(())
}

fn read_abs(mem: &Mem, addr: u64, buf: &mut [u8], pid: u32, path: &str) -> Result<(), GoError> {
    mem.read_exact_at(buf, addr).map_err(|e| {
        gone_or(
            pid,
            e,
            format!("reading {} bytes at {addr:#x} from {path}", buf.len()),
        )
    })
}

/// Another process's memory, read with process_vm_readv(2).
struct Mem(u32);

// process_vm_readv calls made by this thread (tests count them per reading).
#[cfg(test)]
thread_local! {
    pub static READV_CALLS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Most iovecs per process_vm_readv (UIO_MAXIOV).
const MAX_IOV: usize = 1024;

impl Mem {
    /// Read each (address, length) into consecutive parts of `buf`, up to MAX_IOV ranges a
    /// call. Fails if any range is not mapped.
    fn read_many(&self, ranges: &[(u64, usize)], buf: &mut [u8]) -> std::io::Result<()> {
        let mut at = 0usize;
        for chunk in ranges.chunks(MAX_IOV) {
            let total: usize = chunk.iter().map(|r| r.1).sum();
            let local = libc::iovec {
                iov_base: buf[at..at + total].as_mut_ptr().cast(),
                iov_len: total,
            };
            let remote: Vec<libc::iovec> = chunk
                .iter()
                .map(|&(addr, len)| libc::iovec {
                    iov_base: addr as usize as *mut libc::c_void,
                    iov_len: len,
                })
                .collect();
            #[cfg(test)]
            READV_CALLS.with(|c| c.set(c.get() + 1));
            // SAFETY: `local` covers `total` bytes of `buf`, which we exclusively borrow; the
            // remote ranges are checked by the kernel (EFAULT, or a short count).
            let n = unsafe {
                libc::process_vm_readv(
                    self.0 as libc::pid_t,
                    &local,
                    1,
                    remote.as_ptr(),
                    remote.len() as libc::c_ulong,
                    0,
                )
            };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // A short count: a range not mapped (the kernel stops at the first).
            if n as usize != total {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "address not mapped in the process",
                ));
            }
            at += total;
        }
        Ok(())
    }

    fn read_exact_at(&self, buf: &mut [u8], addr: u64) -> std::io::Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let local = libc::iovec {
                iov_base: buf[done..].as_mut_ptr().cast(),
                iov_len: buf.len() - done,
            };
            let remote = libc::iovec {
                iov_base: (addr.wrapping_add(done as u64)) as usize as *mut libc::c_void,
                iov_len: buf.len() - done,
            };
            #[cfg(test)]
            READV_CALLS.with(|c| c.set(c.get() + 1));
            // SAFETY: `local` covers the unread tail of `buf`, which we exclusively borrow; the
            // kernel checks the remote range and fails with EFAULT rather than touching ours.
            let n =
                unsafe { libc::process_vm_readv(self.0 as libc::pid_t, &local, 1, &remote, 1, 0) };
            match n {
                n if n < 0 => return Err(std::io::Error::last_os_error()),
                0 => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "address not mapped in the process",
                    ));
                }
                n => done += n as usize,
            }
        }
        Ok(())
    }
}

/// Where the executable's file offset 0 is mapped, minus its link-time address.
fn load_bias(pid: u32, base_vaddr: u64, exe: &std::fs::Metadata) -> Result<u64, GoError> {
    let path = format!("/proc/{pid}/maps");
    let maps =
        std::fs::read_to_string(&path).map_err(|e| gone_or(pid, e, format!("reading {path}")))?;
    let start = exe_mapping(
        &maps,
        exe.ino(),
        libc::major(exe.dev()),
        libc::minor(exe.dev()),
    )
    .ok_or_else(|| GoError::Malformed {
        what: format!("{path} has no mapping of the executable at file offset 0"),
    })?;
    Ok(start.wrapping_sub(base_vaddr))
}

/// Start of the mapping of (dev major:minor, inode) at file offset 0 in a maps file.
pub fn exe_mapping(maps: &str, ino: u64, major: u32, minor: u32) -> Option<u64> {
    maps.lines().find_map(|l| {
        let mut f = l.split_ascii_whitespace();
        let range = f.next()?;
        let _perms = f.next()?;
        let offset = u64::from_str_radix(f.next()?, 16).ok()?;
        let (ma, mi) = f.next()?.split_once(':')?;
        let inode: u64 = f.next()?.parse().ok()?;
        let ok = offset == 0
            && inode == ino
            && u32::from_str_radix(ma, 16).ok()? == major
            && u32::from_str_radix(mi, 16).ok()? == minor;
        ok.then(|| u64::from_str_radix(range.split_once('-')?.0, 16).ok())
            .flatten()
    })
}

/// An I/O error on /proc/PID/...: "process exited" if /proc/PID is gone, else the error.
fn gone_or(pid: u32, e: std::io::Error, what: String) -> GoError {
    if !Path::new(&format!("/proc/{pid}")).exists() || e.raw_os_error() == Some(libc::ESRCH) {
        return GoError::ProcessGone { pid };
    }
    GoError::Io { what, cause: e }
}

/// A test-only hook run between opening a process (and analysing its executable) and reading
/// it, where a pid reuse or an exec does harm.
#[cfg(test)]
pub mod test_hook {
    use std::sync::Mutex;

    type Hook = Box<dyn FnMut(u32) + Send>;
    static HOOK: Mutex<Option<Hook>> = Mutex::new(None);

    pub fn set(h: Option<Hook>) {
        *HOOK.lock().unwrap_or_else(|e| e.into_inner()) = h;
    }

    pub fn between_scan_and_read(pid: u32) {
        if let Some(h) = HOOK.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            h(pid);
        }
    }

    /// Held by each test that sets the hook: one at a time (tests run in parallel threads).
    pub fn exclusive() -> std::sync::MutexGuard<'static, ()> {
        static ONE: Mutex<()> = Mutex::new(());
        ONE.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::goruntime::GcRingLayout;

    /// A fake runtime.memstats: last_gc_unix @0, pause_ns @16, pause_end @16+8*len,
    /// numgc @16+16*len, as in mstats.go.
    struct FakeMemstats {
        len: u64,
        mem: std::cell::RefCell<Vec<u8>>,
    }

    impl FakeMemstats {
        fn new(len: u64) -> Self {
            Self {
                len,
                mem: vec![0u8; 16 + 16 * len as usize + 8].into(),
            }
        }
        fn layout(&self) -> GcRingLayout {
            GcRingLayout {
                memstats: 0x1000,
                last_gc_unix: 0,
                pause_ns: 16,
                pause_end: 16 + 8 * self.len,
                numgc: 16 + 16 * self.len,
                len: self.len,
            }
        }
        fn put(&self, off: u64, v: &[u8]) {
            self.mem.borrow_mut()[off as usize..off as usize + v.len()].copy_from_slice(v);
        }
        /// What gcMarkTermination does for one cycle (mgc.go), all at once.
        fn gc(&self, pause: u64, unix: u64) {
            let l = self.layout();
            let n = u32::from_le_bytes(
                self.mem.borrow()[l.numgc as usize..][..4]
                    .try_into()
                    .unwrap(),
            );
            let slot = u64::from(n) % self.len;
            self.put(l.last_gc_unix, &unix.to_le_bytes());
            self.put(l.pause_ns + 8 * slot, &pause.to_le_bytes());
            self.put(l.pause_end + 8 * slot, &unix.to_le_bytes());
            self.put(l.numgc, &(n + 1).to_le_bytes());
        }
        fn read(&self, addr: u64, buf: &mut [u8]) {
            let off = (addr - 0x1000) as usize;
            buf.copy_from_slice(&self.mem.borrow()[off..off + buf.len()]);
        }
    }

    #[test]
    fn gc_ring_oldest_first_and_wraps() {
        let m = FakeMemstats::new(4);
        let read = |a: u64, b: &mut [u8], _: &str| -> Result<(), GoError> {
            m.read(a, b);
            Ok(())
        };
        let r = read_gc_ring(&m.layout(), Scheme::SuperSub, &read).unwrap();
        assert_eq!((r.num_gc, r.recent_ns.len(), r.recent.total), (0, 0, 0));
        for i in 1..=3 {
            m.gc(100 * i, 1_000 + i);
        }
        let r = read_gc_ring(&m.layout(), Scheme::SuperSub, &read).unwrap();
        assert_eq!((r.num_gc, r.recent_ns), (3, vec![100, 200, 300]));
        // Three more: 6 cycles in a ring of 4 keep cycles 3..6, oldest first.
        for i in 4..=6 {
            m.gc(100 * i, 1_000 + i);
        }
        let r = read_gc_ring(&m.layout(), Scheme::SuperSub, &read).unwrap();
        assert_eq!(
            (r.num_gc, r.recent_ns.clone()),
            (6, vec![300, 400, 500, 600])
        );
        // Each pause in the bucket the runtime's own record() picks.
        assert_eq!(r.recent.total, 4);
        for p in [300u64, 400, 500, 600] {
            let i = Scheme::SuperSub.record_index(p).unwrap();
            assert!(r.recent.counts[i + 1] >= 1, "{p} ns not in bucket {i}");
        }
    }

    /// A cycle half-recorded while we read (last_gc_unix and pause_ns written, numgc not yet
    /// bumped) is not taken: the read is retried until the cycle is complete.
    #[test]
    fn gc_ring_retries_a_cycle_being_recorded() {
        let m = FakeMemstats::new(4);
        for i in 1..=5 {
            m.gc(10 * i, 500 + i);
        }
        let l = m.layout();
        // Cycle 6 in progress: it overwrites slot 5 % 4 = 1 (cycle 2's) before numgc++.
        m.put(l.last_gc_unix, &999u64.to_le_bytes());
        m.put(l.pause_ns + 8, &777u64.to_le_bytes());
        let calls = Cell::new(0);
        let read = |a: u64, b: &mut [u8], _: &str| -> Result<(), GoError> {
            calls.set(calls.get() + 1);
            // The runtime finishes the cycle after our first attempt (5 reads).
            if calls.get() == 6 {
                m.put(l.pause_end + 8, &999u64.to_le_bytes());
                m.put(l.numgc, &6u32.to_le_bytes());
            }
            m.read(a, b);
            Ok(())
        };
        let r = read_gc_ring(&l, Scheme::MinMaxBits, &read).unwrap();
        assert_eq!((r.num_gc, r.recent_ns), (6, vec![30, 40, 50, 777]));
        assert!(calls.get() >= 10, "the torn first attempt was accepted");

        // Never completed: an error that says what changed, not wrong numbers.
        let m = FakeMemstats::new(4);
        m.gc(10, 1);
        m.put(m.layout().last_gc_unix, &2u64.to_le_bytes());
        let read = |a: u64, b: &mut [u8], _: &str| -> Result<(), GoError> {
            m.read(a, b);
            Ok(())
        };
        let e = read_gc_ring(&m.layout(), Scheme::SuperSub, &read).unwrap_err();
        assert!(matches!(e, GoError::Inconsistent { .. }), "{e}");
        assert!(e.to_string().contains("pause_end"), "{e}");
    }

    /// One reading walks every P of allp: a bounded number of process_vm_readv calls, the
    /// same for 2 Ps as for 64 (it was several calls per P: up to 65,536 Ps).
    #[test]
    fn reading_a_process_makes_few_calls_whatever_gomaxprocs() {
        let Some(dirs) = crate::goruntime::tests::fixture_versions() else {
            return;
        };
        for dir in [dirs.first().unwrap(), dirs.last().unwrap()] {
            let mut calls = Vec::new();
            for procs in [2, 64] {
                let fx = crate::goruntime::tests::Fixture::start(&dir.join("gosched"), procs);
                let before = READV_CALLS.with(|c| c.get());
                let s = read(fx.pid()).unwrap();
                assert_eq!(s.gomaxprocs, procs as i32);
                calls.push(READV_CALLS.with(|c| c.get()) - before);
            }
            eprintln!(
                "{}: process_vm_readv calls at GOMAXPROCS 2, 64: {calls:?}",
                dir.display()
            );
            assert!(
                calls.iter().all(|c| *c <= 24),
                "{}: process_vm_readv calls for GOMAXPROCS 2 and 64: {calls:?}",
                dir.display()
            );
        }
    }

    #[test]
    fn finds_exe_mapping() {
        let maps = "\
55d0c0000000-55d0c0100000 r--p 00000000 08:01 1234 /usr/bin/other
55d0c1000000-55d0c1100000 r--p 00001000 fd:00 777 /app/gosched-pie
55d0c2000000-55d0c2100000 r--p 00000000 fd:00 777 /app/gosched-pie
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
";
        assert_eq!(exe_mapping(maps, 777, 0xfd, 0), Some(0x55d0c2000000));
        assert_eq!(exe_mapping(maps, 777, 8, 1), None);
        assert_eq!(exe_mapping("garbage\n- - - -", 777, 0xfd, 0), None);
    }

    /// metrics.go's schedStatsAggregate.compute on a fake runtime: Ps running Go code, in a
    /// system call (on the same M and P, or not), idle with queued work, a wrapped run queue,
    /// a _Pdead P ending the walk, extra Ms, and a negative nGsyscallNoP (a race the runtime
    /// tolerates).
    #[test]
    fn sched_stats_as_metrics_go_computes_them() {
        use crate::goruntime::{Field, SchedStatsLayout};
        let f = |offset: u64, size: u64| Field { offset, size };
        let l = SchedStatsLayout {
            sched_created: f(0, 8),
            sched_syscall_no_p: f(8, 4),
            sched_runq_size: f(12, 4),
            sched_mnext: f(16, 8),
            sched_nmfreed: f(24, 8),
            p_status: f(0, 4),
            p_m: f(8, 8),
            p_runqhead: f(16, 4),
            p_runqtail: f(20, 4),
            p_runnext: f(24, 8),
            p_created: f(32, 8),
            m_curg: f(0, 8),
            m_p: f(8, 8),
            g_status: f(0, 4),
            g_m: f(8, 8),
            p_running: 1,
            p_dead: 4,
            g_syscall: 3,
            g_deadextra: 11,
            g_scan: 0x1000,
            extra_m_in_use: 0x100,
            extra_m_length: 0x104,
        };
        let mem: std::collections::HashMap<u64, u64> = [
            // sched: 5 created, nGsyscallNoP -1, 2 on the global run queue, 9 Ms made,
            // 1 freed; extra Ms: 1 in use, 2 listed.
            (0x0, 5),
            (0x8, u64::from((-1i32) as u32)),
            (0xc, 2),
            (0x10, 9),
            (0x18, 1),
            (0x100, 1),
            (0x104, 2),
            // P 0x1000: running Go code (M 0x5000's curg 0x6000 is _Grunning); 3 queued.
            (0x1000, 1),
            (0x1008, 0x5000),
            (0x1010, 10),
            (0x1014, 13),
            (0x1020, 7),
            (0x5000, 0x6000),
            (0x5008, 0x1000),
            (0x6000, 2),
            (0x6008, 0x5000),
            // P 0x2000: its M's goroutine is in a system call (scan bit set), same M and P;
            // run queue wrapped (head near u32::MAX) holding 2, plus runnext.
            (0x2000, 1),
            (0x2008, 0x5100),
            (0x2010, u64::from(u32::MAX)),
            (0x2014, 1),
            (0x2018, 0x7777),
            (0x2020, 4),
            (0x5100, 0x6100),
            (0x5108, 0x2000),
            (0x6100, 0x1003),
            (0x6108, 0x5100),
            // P 0x3000: running, but its M's goroutine in a system call belongs to another P
            // (a stale view): running.
            (0x3000, 1),
            (0x3008, 0x5200),
            (0x5200, 0x6200),
            (0x5208, 0x9999),
            (0x6200, 3),
            (0x6208, 0x5200),
            // P 0x4000: _Pdead: the walk stops here, its counts are not added.
            (0x4000, 4),
            (0x4020, 1000),
        ]
        .into_iter()
        .collect();
        let word = |a: u64, size: u64| {
            let v = mem.get(&a).copied().unwrap_or(0);
            if size == 4 { v & 0xffff_ffff } else { v }
        };
        let g = Goroutines {
            allglen: 40,
            live: 30,
            system: 4,
            num_goroutine: 26,
        };
        let s = read_sched_stats(
            &l,
            &g,
            &[0x1000, 0x2000, 0x3000, 0x4000, 0x1000],
            &|f, _| Ok(word(f.offset, f.size)),
            &|a, _| Ok(word(a, 4)),
            &|a, f| Ok(word(a + f.offset, f.size)),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s,
            SchedStats {
                // 3 (P 0x1000) + 2 and runnext (P 0x2000) + 2 global.
                runnable: 8,
                running: 2,
                // P 0x2000; nGsyscallNoP -1 adds nothing.
                not_in_go: 1,
                waiting: 30 - 8 - 2 - 1,
                created: 5 + 7 + 4,
                threads: 9 - 1 - 1 - 2,
            }
        );
    }
}
