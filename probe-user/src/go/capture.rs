//! The Go section of `schedlat capture --pid`: the runtime's own statistics read from the
//! process's memory at the start and at the end of the window (crate::goruntime::live), so the
//! section costs the target nothing. Differences of the runtime's cumulative histograms give
//! the window's goroutine scheduling latency (runtime-sampled: 1 transition in 8) and
//! stop-the-world pauses; cgroup counters give the window's throttling.
use std::sync::Arc;

use schedlat_common::{GoConfig, go};
use serde::Serialize;

use crate::{
    goruntime::{
        GoBinary, GoError,
        events::{self, EventPlan, SyscallPlan},
        live::{self, GcPauses, LatencyHist, SchedStats, Stats},
    },
    hist::{HistSummary, quantile},
    host::cpulimit::{self, CpuBudget, Throttling},
    kernel::probes::{GoEventTarget, GoProbe},
    model::GoRaw,
};

/// Summary of a runtime histogram's growth over the window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WindowHist {
    pub count: u64,
    /// 50th/90th/99th percentile by [`crate::hist::quantile`] (None when empty or in the
    /// overflow bucket), and the upper bound of the largest sample's bucket. Go buckets: within
    /// 25% above 512 ns (Go >= 1.20), 1/16 of a power of two on Go 1.19.
    pub p50_ns: Option<u64>,
    pub p90_ns: Option<u64>,
    pub p99_ns: Option<u64>,
    pub max_ns: Option<u64>,
    /// Non-empty buckets: `le_ns` inclusive upper bound (None: +Inf).
    pub buckets: Vec<WindowBucket>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WindowBucket {
    pub le_ns: Option<u64>,
    pub count: u64,
}

/// `after - before`, bucket by bucket (runtime/metrics form: boundaries in seconds, one more
/// than counts). Counters only grow; a smaller value (another process reusing the pid) reads
/// as 0 rather than wrapping.
pub fn window(before: &LatencyHist, after: &LatencyHist) -> WindowHist {
    let counts: Vec<u64> = after
        .counts
        .iter()
        .enumerate()
        .map(|(i, a)| a.saturating_sub(before.counts.get(i).copied().unwrap_or(0)))
        .collect();
    // Largest whole ns below the bucket's exclusive upper bound.
    let le = |i: usize| -> Option<u64> {
        let hi = *after.boundaries.get(i + 1)?;
        (hi.is_finite() && hi > 0.0).then(|| ((hi * 1e9).round() as u64).saturating_sub(1))
    };
    let count: u64 = counts.iter().sum();
    // Bucket i holds [boundaries[i], boundaries[i+1]) seconds; the first may start at -Inf.
    let lo = |i: usize| -> u64 {
        let b = after.boundaries.get(i).copied().unwrap_or(0.0);
        if b.is_finite() && b > 0.0 {
            (b * 1e9).round() as u64
        } else {
            0
        }
    };
    let pct = |q: f64| {
        quantile(
            counts.iter().enumerate().map(|(i, &c)| (lo(i), le(i), c)),
            q,
        )
    };
    let max_ns = counts.iter().rposition(|&c| c > 0).and_then(le);
    WindowHist {
        count,
        p50_ns: pct(0.5),
        p90_ns: pct(0.9),
        p99_ns: pct(0.99),
        max_ns,
        buckets: counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, &c)| WindowBucket {
                le_ns: le(i),
                count: c,
            })
            .collect(),
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct StwWindow {
    pub total_gc: WindowHist,
    pub stopping_gc: WindowHist,
    pub total_other: WindowHist,
    pub stopping_other: WindowHist,
}

/// GC cycles in the window on Go < 1.22 (runtime.memstats' pause ring): one pause per cycle,
/// the cycle's two stop-the-world pauses summed (mgc.go work.pauseNS).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GcWindow {
    /// GC cycles completed in the window (memstats.numgc difference).
    pub count: u64,
    /// Each new cycle's pause (ns), oldest first; the ring keeps only the last 256, so with
    /// more cycles in the window these are the last 256.
    pub pauses_ns: Vec<u64>,
    /// Cycles whose pause the ring had already overwritten at the end of the window.
    pub lost: u64,
    pub total_ns: u64,
    pub max_ns: Option<u64>,
}

/// The cycles recorded between two reads of the ring. A smaller `num_gc` after (another
/// process reusing the pid) reads as no cycle.
pub fn gc_window(before: &GcPauses, after: &GcPauses) -> GcWindow {
    let count = u64::from(after.num_gc.saturating_sub(before.num_gc));
    let have = (after.recent_ns.len() as u64).min(count);
    let pauses_ns = after.recent_ns[after.recent_ns.len() - have as usize..].to_vec();
    GcWindow {
        count,
        lost: count - have,
        total_ns: pauses_ns.iter().fold(0u64, |a, p| a.saturating_add(*p)),
        max_ns: pauses_ns.iter().copied().max(),
        pauses_ns,
    }
}

/// The `go` section of a capture for one process.
#[derive(Clone, Debug, Serialize)]
pub struct GoSection {
    pub pid: u32,
    pub go_version: String,
    /// "DWARF", or "layout table (goX.Y.Z)" for a stripped binary.
    pub layout: String,
    pub gomaxprocs: i32,
    /// Live goroutines at the end (system goroutines included), and allglen.
    pub goroutines: Option<i64>,
    pub goroutines_ever_allocated: u64,
    /// Go >= 1.26 at the end: goroutines by state, created (since the start), threads, as
    /// runtime/metrics' /sched/goroutines/* computes them (null before).
    pub sched_stats: Option<SchedStats>,
    /// Goroutine scheduling latency in the window, as the runtime samples it (1 in 8).
    pub sched_latency: WindowHist,
    /// Stop-the-world pauses in the window (Go >= 1.22; null before).
    pub stw_pauses: Option<StwWindow>,
    /// GC pauses in the window from the runtime's pause ring (Go < 1.22; null otherwise).
    pub gc_pauses: Option<GcWindow>,
    pub cpu_budget: Option<CpuBudget>,
    /// The cgroup's throttling during the window (quota set only).
    pub throttling: Option<Throttling>,
    /// Run-queue delay of the process's threads (Ms) in the window, from the kernel probes:
    /// time Ms waited for a CPU, next to the goroutines' runnable time above.
    pub threads_runqueue_delay_ns: u64,
    pub threads_runqueue_waits: u64,
    /// From the per-event uprobe (`--go-probes on`, one Go program per capture); null when
    /// not attached (the reason is among the warnings).
    pub events: Option<GoEvents>,
    pub warnings: Vec<String>,
}

/// What the per-event uprobe on runtime.casgstatus saw in the window.
#[derive(Clone, Debug, Serialize)]
pub struct GoEvents {
    pub probe: ProbeInfo,
    /// Every runnable -> running transition (not sampled): the time a goroutine was runnable
    /// before it ran.
    pub sched_latency: HistSummary,
    /// The same transitions split in two: the time the thread (M) that then ran the goroutine
    /// was itself waiting on the kernel run queue (CPU contention: quota, other processes),
    /// and the rest (waiting for a P, i.e. for the Go scheduler: GOMAXPROCS contention).
    pub wait_m_runqueue: HistSummary,
    pub wait_p: HistSummary,
    /// wait_m_runqueue.sum_ns / sched_latency.sum_ns (0 when nothing ran).
    pub m_runqueue_share: f64,
    /// Time goroutines spent blocked, by the runtime's wait reason (names read from the
    /// binary's runtime.waitReasonStrings), largest total first.
    pub blocked: Vec<BlockedRow>,
    /// Goroutines started (_Gdead -> _Grunnable) and ended (-> _Gdead) in the window.
    pub goroutines_created: u64,
    pub goroutines_exited: u64,
    /// Syscall returns that kept their P (_Gsyscall -> _Grunning): no scheduling latency, but
    /// runtime/metrics' /sched/latencies counts each as a 0 s sample.
    pub syscall_fast_returns: u64,
    /// Waiting -> running with no runnable time between (the GC's own switches: mark workers,
    /// assists, stop-the-world): no scheduling latency, but runtime/metrics' /sched/latencies
    /// counts each as a 0 s sample too.
    pub waiting_to_running: u64,
    /// Time goroutines spent in system calls and what the blocking ones cost them; null when
    /// the probes they need on Go >= 1.26 cannot be placed (the reason is among the warnings).
    pub syscalls: Option<GoSyscalls>,
    /// Lost or approximate: by reason (see schedlat_common::go::counter).
    pub dropped: GoEventDrops,
}

/// System calls: entersyscall (_Grunning -> _Gsyscall) until exitsyscall, back to _Grunning
/// with a P, or to _Grunnable without one (exitsyscall0; exitsyscallNoP on Go >= 1.26). Up to
/// Go 1.25 casgstatus carries these; Go 1.26 switches by CAS, so three more probes
/// (reentersyscall, exitsyscall, exitsyscallNoP) see them there.
#[derive(Clone, Debug, Serialize)]
pub struct GoSyscalls {
    /// Time in the syscall, per syscall that returned in the window.
    pub time: HistSummary,
    /// Returns that kept (or at once re-took) a P: the goroutine ran on.
    pub kept_p: u64,
    /// Returns that found no P (the runtime handed it to another thread while this one was
    /// blocked): the goroutine went back to the run queue, the classic "goroutines starve
    /// although CPUs are idle" sign of blocking syscalls under a small GOMAXPROCS.
    pub lost_p: u64,
    /// The scheduling latency those `lost_p` returns then paid (runnable -> running).
    pub lost_p_sched_latency: HistSummary,
}

#[derive(Clone, Debug, Serialize)]
pub struct ProbeInfo {
    pub function: String,
    /// Offset of the probed instruction in the function, and the instruction: one the kernel
    /// emulates, so a hit is never single-stepped.
    pub offset: u64,
    pub instruction: String,
    pub skipped_instructions: usize,
    /// Probe hits in the window (each costs the target roughly a microsecond of CPU).
    pub hits: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct BlockedRow {
    pub reason: String,
    /// runtime.waitReason value.
    pub reason_id: u32,
    #[serde(flatten)]
    pub time: HistSummary,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct GoEventDrops {
    /// Goroutine transitions whose start could not be kept (GO_G full).
    pub g_map_full: u64,
    /// Blocks whose wait reason could not be read (reported as "unknown").
    pub reason_read_failed: u64,
    /// Threads whose run-queue waits could not be kept (their M share reads 0).
    pub runq_map_full: u64,
    /// Transitions whose M had more run-queue waits in the window than kept: M share is a
    /// lower bound for these.
    pub ring_overrun: u64,
}

/// Build the events section from the Go maps and the wait reasons' names.
pub fn events_section(raw: &GoRaw, plan: &EventPlan, reasons: &[String]) -> GoEvents {
    use go::{counter as c, hist as h};
    let summary = |i: u32| HistSummary::from(&raw.hists[i as usize]);
    let latency = summary(h::SCHED_LATENCY);
    let m = summary(h::WAIT_M_RUNQ);
    let mut blocked: Vec<BlockedRow> = (0..256u32)
        .filter_map(|r| {
            let s = summary(h::BLOCKED + r);
            (s.count > 0).then(|| BlockedRow {
                reason: reasons
                    .get(r as usize)
                    .filter(|n| !n.is_empty())
                    .cloned()
                    .unwrap_or_else(|| format!("unknown ({r})")),
                reason_id: r,
                time: s,
            })
        })
        .collect();
    blocked.sort_by(|a, b| {
        b.time
            .sum_ns
            .cmp(&a.time.sum_ns)
            .then(a.reason_id.cmp(&b.reason_id))
    });
    GoEvents {
        probe: ProbeInfo {
            function: events::FUNCTION.to_string(),
            offset: plan.site.offset,
            instruction: plan.site.instruction.clone(),
            skipped_instructions: plan.site.skipped,
            hits: raw.counts[c::HITS as usize],
        },
        m_runqueue_share: if latency.sum_ns == 0 {
            0.0
        } else {
            m.sum_ns as f64 / latency.sum_ns as f64
        },
        sched_latency: latency,
        wait_m_runqueue: m,
        wait_p: summary(h::WAIT_P),
        blocked,
        goroutines_created: raw.counts[c::CREATED as usize],
        goroutines_exited: raw.counts[c::EXITED as usize],
        syscall_fast_returns: raw.counts[c::SYSCALL_FAST_RETURNS as usize],
        waiting_to_running: raw.counts[c::WAITING_TO_RUNNING as usize],
        syscalls: match plan.syscalls {
            SyscallPlan::Unavailable(_) => None,
            SyscallPlan::Casgstatus | SyscallPlan::Probes(_) => {
                let lost_p = raw.counts[c::SYSCALL_LOST_P as usize];
                Some(GoSyscalls {
                    time: summary(h::SYSCALL),
                    kept_p: raw.counts[c::SYSCALL_EXITS as usize].saturating_sub(lost_p),
                    lost_p,
                    lost_p_sched_latency: summary(h::SYSCALL_LOST_P_LATENCY),
                })
            }
        },
        dropped: GoEventDrops {
            g_map_full: raw.counts[c::G_MAP_FULL as usize],
            reason_read_failed: raw.counts[c::REASON_READ_FAILED as usize],
            runq_map_full: raw.counts[c::RUNQ_MAP_FULL as usize],
            ring_overrun: raw.counts[c::RING_OVERRUN as usize],
        },
    }
}

/// State taken at the start of the window.
pub struct GoStart {
    pub pid: u32,
    layout: crate::goruntime::Layout,
    /// The process and the executable analysed, opened once: the uprobe goes on this very
    /// file, and each reading is checked against it.
    target: Arc<live::Target>,
    before: Stats,
    budget_before: Option<CpuBudget>,
    /// The per-event probe's plan and the wait reasons' names, when requested and possible.
    pub events: Option<(EventPlan, Vec<String>)>,
    /// Why per-event probes were requested but are not possible.
    pub events_unavailable: Option<String>,
}

/// Read the process at the start of the window (and plan the per-event probe if `probes`).
/// `Err(NotGo)` for non-Go processes. The executable is opened and parsed once for both.
pub fn start(
    pid: u32,
    cgroup_mount: Option<&std::path::Path>,
    probes: bool,
) -> Result<GoStart, GoError> {
    let target = live::Target::open(pid)?;
    let exe = &target.meta;
    let file = target.exe.try_clone().map_err(|e| GoError::Io {
        what: format!("duplicating the descriptor of /proc/{pid}/exe"),
        cause: e,
    })?;
    let file =
        crate::goruntime::budget::BudgetedFile::new(file, Default::default()).map_err(|e| {
            GoError::Io {
                what: format!("stat /proc/{pid}/exe"),
                cause: e,
            }
        })?;
    let bin = GoBinary::from_file(&file)?;
    let layout = bin.layout()?;
    // The per-event probe's plan and the wait reasons' names (an error says why not).
    let plan = probes.then(|| {
        bin.event_plan().and_then(|plan| {
            let names = live::wait_reason_names(pid, &plan, exe)?;
            Ok((plan, names))
        })
    });
    drop(bin);
    drop(file);
    // Everything above read by pid: discarded unless it is still the process analysed.
    let before = target.checked(live::read_with(pid, &layout, exe))?;
    let plan = match plan {
        Some(Ok(p)) => Some(target.checked(Ok(p))),
        other => other,
    };
    let budget_before = cgroup_mount.and_then(|m| cpulimit::budget(pid, m).ok());
    let (events, events_unavailable) = match plan {
        Some(plan) => match plan {
            Ok(e) => {
                tracing::debug!(
                    pid,
                    function = events::FUNCTION,
                    offset = e.0.site.offset,
                    instruction = %e.0.site.instruction,
                    skipped = e.0.site.skipped,
                    file_offset = e.0.probe_file_offset(),
                    "Go probe site: an instruction the kernel emulates"
                );
                (Some(e), None)
            }
            Err(e) => (None, Some(format!("per-event Go probes not possible: {e}"))),
        },
        None => (None, None),
    };
    Ok(GoStart {
        pid,
        layout,
        target: Arc::new(target),
        before,
        budget_before,
        events,
        events_unavailable,
    })
}

impl GoStart {
    /// Whether the pid still names the process analysed, running that executable (after the
    /// uprobe is attached: its scope is the pid).
    pub fn verify(&self) -> Result<(), GoError> {
        self.target.verify()
    }

    /// The uprobe to attach for this process, if planned.
    pub fn probe_target(&self) -> Option<GoEventTarget> {
        let (p, _) = self.events.as_ref()?;
        let s = p.statuses;
        Some(GoEventTarget {
            pid: self.pid,
            exe: self.target.clone(),
            file_offset: p.probe_file_offset(),
            site: format!(
                "{}+{:#x} ({})",
                events::FUNCTION,
                p.site.offset,
                p.site.instruction
            ),
            syscall_probes: match &p.syscalls {
                SyscallPlan::Probes(probes) => probes
                    .iter()
                    .map(|s| GoProbe {
                        program: s.program,
                        file_offset: s.probe_file_offset(),
                        site: format!(
                            "{}+{:#x} ({})",
                            s.function, s.site.offset, s.site.instruction
                        ),
                    })
                    .collect(),
                _ => Vec::new(),
            },
            config: GoConfig {
                tgid: self.pid,
                g_waitreason: p.g_waitreason as u32,
                st_idle: s.idle,
                st_runnable: s.runnable,
                st_running: s.running,
                st_syscall: s.syscall,
                st_waiting: s.waiting,
                st_dead: s.dead,
            },
        })
    }

    /// Read again at the end of the window (before the kernel maps are read, so both cover
    /// the same time) and build the section; the threads' run-queue delay is filled in from
    /// the capture report afterwards ([`GoSection::threads_runqueue_delay_ns`]).
    /// `raw`: the Go maps, when this process's uprobe was attached.
    pub fn finish(
        mut self,
        cgroup_mount: Option<&std::path::Path>,
        raw: Option<&GoRaw>,
    ) -> Result<GoSection, GoError> {
        self.next(cgroup_mount, raw)
    }

    /// [`finish`](Self::finish) for one interval of a capture: the section covers the time
    /// since the previous call (or the start), and this reading starts the next interval.
    /// `raw`: the Go maps' growth over the same interval.
    pub fn next(
        &mut self,
        cgroup_mount: Option<&std::path::Path>,
        raw: Option<&GoRaw>,
    ) -> Result<GoSection, GoError> {
        let mut exited = None;
        let read = live::read_with(self.pid, &self.layout, &self.target.meta);
        let after = match self.target.checked(read) {
            Ok(a) => a,
            // Exited during the window: the per-event data still covers it until then; the
            // runtime's own statistics have no end reading (an empty window, said so).
            Err(GoError::ProcessGone { .. }) if raw.is_some() && self.events.is_some() => {
                exited = Some(
                    "the program exited during the capture: the runtime's own statistics have \
                     no end reading (empty window; GOMAXPROCS and goroutines are from the start); \
                     the per-event data covers it until it exited"
                        .to_string(),
                );
                self.before.clone()
            }
            Err(e) => return Err(e),
        };
        let budget = cgroup_mount.and_then(|m| cpulimit::budget(self.pid, m).ok());
        let throttling = match (&budget, &self.budget_before) {
            (Some(a), Some(b)) => match (&a.throttling, &b.throttling) {
                (Some(ta), Some(tb)) if a.quota_cgroup == b.quota_cgroup => Some(ta.since(tb)),
                _ => None,
            },
            _ => None,
        };
        let mut warnings: Vec<String> = budget
            .as_ref()
            .and_then(|b| cpulimit::gomaxprocs_warning(after.gomaxprocs.max(0) as u32, b))
            .into_iter()
            .collect();
        if let Some(t) = throttling.as_ref().filter(|t| t.nr_throttled > 0) {
            warnings.push(format!(
                "the cgroup was throttled in {} of {} CFS periods ({:.3} s) during the capture: \
                 its CPU quota, not GOMAXPROCS, limited the program",
                t.nr_throttled,
                t.nr_periods,
                t.throttled_usec as f64 / 1e6
            ));
        }
        let stw_pauses = match (&self.before.stw_pauses, &after.stw_pauses) {
            (Some(b), Some(a)) => Some(StwWindow {
                total_gc: window(&b.total_gc, &a.total_gc),
                stopping_gc: window(&b.stopping_gc, &a.stopping_gc),
                total_other: window(&b.total_other, &a.total_other),
                stopping_other: window(&b.stopping_other, &a.stopping_other),
            }),
            _ => None,
        };
        let gc_pauses = match (&self.before.gc_pauses, &after.gc_pauses) {
            (Some(b), Some(a)) => Some(gc_window(b, a)),
            _ => None,
        };
        if let Some(g) = gc_pauses.as_ref().filter(|g| g.lost > 0) {
            warnings.push(format!(
                "{} GC cycles in the window, more than the runtime's ring of {} pauses holds: \
                 the durations of the first {} were overwritten before the end of the capture \
                 (counted, not measured); capture a shorter window to see every pause",
                g.count,
                g.pauses_ns.len(),
                g.lost
            ));
        }
        if let Some(why) = &self.events_unavailable {
            warnings.push(why.clone());
        }
        if let Some((plan, _)) = &self.events {
            if let SyscallPlan::Unavailable(why) = &plan.syscalls {
                warnings.push(format!(
                    "system calls not seen (Go >= 1.26 needs three more probes): {why}"
                ));
            }
        }
        warnings.extend(exited);
        let events = match (&self.events, raw) {
            (Some((plan, names)), Some(raw)) => Some(events_section(raw, plan, names)),
            _ => None,
        };
        let sched_latency = window(&self.before.sched_latencies, &after.sched_latencies);
        let section = GoSection {
            pid: self.pid,
            go_version: after.go_version.clone(),
            layout: after.layout.clone(),
            gomaxprocs: after.gomaxprocs,
            goroutines: after.goroutines.as_ref().map(|g| g.live),
            goroutines_ever_allocated: after.goroutines.as_ref().map_or(0, |g| g.allglen),
            sched_stats: after.sched_stats.clone(),
            sched_latency,
            stw_pauses,
            gc_pauses,
            cpu_budget: budget.clone(),
            throttling,
            threads_runqueue_delay_ns: 0,
            threads_runqueue_waits: 0,
            events,
            warnings,
        };
        self.before = after;
        self.budget_before = budget;
        Ok(section)
    }
}

/// The text form of the Go sections.
pub fn render_text(sections: &[GoSection]) -> String {
    use std::fmt::Write as _;

    use crate::hist::fmt_ns;
    let mut o = String::new();
    // None with samples means the overflow bucket.
    let opt = |v: Option<u64>| v.map_or_else(|| "+Inf".to_string(), fmt_ns);
    let summary = |h: &WindowHist| {
        if h.count == 0 {
            String::new()
        } else {
            format!(" (p99 {}, max {})", opt(h.p99_ns), opt(h.max_ns))
        }
    };
    for g in sections {
        let _ = writeln!(
            o,
            "\n== Go: pid {} ({}, layout from {}), GOMAXPROCS {}, goroutines {} ==",
            g.pid,
            g.go_version,
            g.layout,
            g.gomaxprocs,
            g.goroutines.map_or_else(|| "?".into(), |n| n.to_string())
        );
        if let Some(t) = &g.sched_stats {
            let _ = writeln!(
                o,
                "goroutines at the end: {} runnable, {} running, {} waiting, {} not in Go; {} \
                 created since start; {} threads",
                t.runnable, t.running, t.waiting, t.not_in_go, t.created, t.threads
            );
        }
        let h = &g.sched_latency;
        let _ = writeln!(
            o,
            "goroutine scheduling latency (runtime-sampled, 1 in 8): {} samples, p50 {} p90 {} p99 {} max {}",
            h.count,
            opt(h.p50_ns),
            opt(h.p90_ns),
            opt(h.p99_ns),
            opt(h.max_ns)
        );
        let _ = writeln!(
            o,
            "its threads' kernel run-queue delay: {} over {} waits (time Ms waited for a CPU)",
            fmt_ns(g.threads_runqueue_delay_ns),
            g.threads_runqueue_waits
        );
        if let Some(e) = &g.events {
            render_events(&mut o, e);
        }
        match &g.stw_pauses {
            Some(p) => {
                let _ = writeln!(
                    o,
                    "stop-the-world pauses: GC {}{}, other {}{}",
                    p.total_gc.count,
                    summary(&p.total_gc),
                    p.total_other.count,
                    summary(&p.total_other)
                );
            }
            None => match &g.gc_pauses {
                Some(p) => {
                    let list: Vec<String> = p.pauses_ns.iter().map(|n| fmt_ns(*n)).collect();
                    let _ = writeln!(
                        o,
                        "GC pauses (memstats.pause_ns: one per GC cycle, its stop-the-world \
                         pauses summed): {} cycles, total {}{}{}{}",
                        p.count,
                        fmt_ns(p.total_ns),
                        p.max_ns
                            .map_or_else(String::new, |m| format!(", max {}", fmt_ns(m))),
                        if p.lost > 0 {
                            format!(" ({} overwritten before the end: not measured)", p.lost)
                        } else {
                            String::new()
                        },
                        if list.is_empty() {
                            String::new()
                        } else {
                            format!("\n  each: {}", list.join(" "))
                        }
                    );
                }
                None => {
                    let _ = writeln!(
                        o,
                        "stop-the-world pauses: not found in this binary (neither \
                         sched.stwTotalTime* of Go >= 1.22 nor memstats.pause_ns)"
                    );
                }
            },
        }
        if let Some(b) = &g.cpu_budget {
            let _ = writeln!(
                o,
                "CPU it may use: {:.2} (quota {}, affinity {} CPUs)",
                b.usable_cpus,
                b.quota_cpus
                    .map_or_else(|| "none".into(), |q| format!("{q:.2}")),
                b.affinity_cpus
            );
        }
        if let Some(t) = &g.throttling {
            let _ = writeln!(
                o,
                "throttled in the window: {} of {} periods, {}",
                t.nr_throttled,
                t.nr_periods,
                fmt_ns(t.throttled_usec.saturating_mul(1000))
            );
        }
        for w in &g.warnings {
            let _ = writeln!(o, "warning: {w}");
        }
    }
    o
}

fn render_events(o: &mut String, e: &GoEvents) {
    use std::fmt::Write as _;

    use crate::hist::fmt_ns;
    let line = |h: &HistSummary| {
        format!(
            "{} (p50 {} p90 {} p99 {} max {}, total {})",
            h.count,
            fmt_ns(h.p50_ns),
            fmt_ns(h.p90_ns),
            fmt_ns(h.p99_ns),
            fmt_ns(h.max_ns),
            fmt_ns(h.sum_ns)
        )
    };
    let _ = writeln!(
        o,
        "per event (uprobe at {}+{:#x} `{}`, {} hits):",
        e.probe.function, e.probe.offset, e.probe.instruction, e.probe.hits
    );
    let _ = writeln!(o, "  runnable -> running: {}", line(&e.sched_latency));
    let _ = writeln!(
        o,
        "    of which its thread waited on the kernel run queue: {} of the time ({}), waiting \
         for a P / the Go scheduler: {}",
        fmt_pct(e.m_runqueue_share),
        fmt_ns(e.wait_m_runqueue.sum_ns),
        fmt_ns(e.wait_p.sum_ns)
    );
    let _ = writeln!(
        o,
        "  goroutines created {}, ended {}; syscall returns without a wait {}",
        e.goroutines_created, e.goroutines_exited, e.syscall_fast_returns
    );
    match &e.syscalls {
        Some(s) => {
            let _ = writeln!(o, "  in system calls: {}", line(&s.time));
            let _ = writeln!(
                o,
                "    returns that kept their P {}, that lost it {}; those then waited to run: {}",
                s.kept_p,
                s.lost_p,
                line(&s.lost_p_sched_latency)
            );
        }
        None => {
            let _ = writeln!(o, "  system calls: not seen (see the warnings)");
        }
    }
    if !e.blocked.is_empty() {
        let _ = writeln!(o, "  blocked, by wait reason:");
        for b in &e.blocked {
            let _ = writeln!(o, "    {:<28} {}", b.reason, line(&b.time));
        }
    }
    let d = &e.dropped;
    if d.g_map_full + d.reason_read_failed + d.runq_map_full + d.ring_overrun > 0 {
        let _ = writeln!(
            o,
            "  lost: {} transitions (map full), {} unreadable wait reasons, {} threads' run-queue \
             waits (map full); {} latencies with the thread share a lower bound",
            d.g_map_full, d.reason_read_failed, d.runq_map_full, d.ring_overrun
        );
    }
}

fn fmt_pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::goruntime::Scheme;

    fn hist(bounds: &[f64], counts: &[u64]) -> LatencyHist {
        LatencyHist {
            scheme: Scheme::MinMaxBits,
            boundaries: bounds.to_vec(),
            counts: counts.to_vec(),
            total: counts.iter().sum(),
        }
    }

    #[test]
    fn window_subtracts_and_ranks() {
        let b = [f64::NEG_INFINITY, 1e-6, 2e-6, 4e-6, f64::INFINITY];
        let before = hist(&b, &[0, 5, 1, 0]);
        let after = hist(&b, &[0, 95, 4, 1]);
        let w = window(&before, &after);
        assert_eq!(w.count, 94);
        // 90 in [1,2) µs, 3 in [2,4) µs, 1 in overflow: ranks 47 and 85 of the 90 in the first.
        assert_eq!(w.p50_ns, Some(1000 + 999 * 47 / 90));
        assert_eq!(w.p90_ns, Some(1000 + 999 * 85 / 90));
        // Rank 94 of 94 is the overflow sample.
        assert_eq!(w.p99_ns, None);
        assert_eq!(
            w.max_ns, None,
            "the largest sample is in the overflow bucket"
        );
        assert_eq!(
            w.buckets,
            vec![
                WindowBucket {
                    le_ns: Some(1999),
                    count: 90
                },
                WindowBucket {
                    le_ns: Some(3999),
                    count: 3
                },
                WindowBucket {
                    le_ns: None,
                    count: 1
                },
            ]
        );
    }

    fn plan() -> EventPlan {
        EventPlan {
            version: "go1.27.3".into(),
            pie: false,
            base_vaddr: 0x400000,
            function_vaddr: 0x44fd80,
            function_file_offset: 0x4fd80,
            site: crate::goruntime::probesite::ProbeSite {
                offset: 0x19,
                instruction: "jb 0x44fda6".into(),
                skipped: 7,
            },
            g_waitreason: 0xb0,
            statuses: crate::goruntime::status::Statuses {
                idle: 0,
                runnable: 1,
                running: 2,
                syscall: 3,
                waiting: 4,
                dead: 6,
            },
            wait_reasons_vaddr: 0x686f00,
            wait_reasons_len: 3,
            syscalls: SyscallPlan::Probes(Vec::new()),
        }
    }

    fn ring(num_gc: u32, recent_ns: &[u64]) -> GcPauses {
        GcPauses {
            num_gc,
            recent_ns: recent_ns.to_vec(),
            recent: live::pause_hist(Scheme::SuperSub, recent_ns),
        }
    }

    #[test]
    fn events_section_names_reasons_and_splits_latency() {
        use crate::hist::Histogram;
        let mut hists = vec![Histogram::default(); go::hist::COUNT as usize];
        let mut rec = |i: u32, v: &[u64]| {
            for &ns in v {
                hists[i as usize].record(ns);
            }
        };
        rec(go::hist::SCHED_LATENCY, &[1_000, 3_000, 100_000]);
        rec(go::hist::WAIT_M_RUNQ, &[0, 1_000, 60_000]);
        rec(go::hist::WAIT_P, &[1_000, 2_000, 40_000]);
        rec(go::hist::BLOCKED + 1, &[5_000_000]); // a name from the binary
        rec(go::hist::BLOCKED + 2, &[50_000_000, 50_000_000]);
        rec(go::hist::BLOCKED + 7, &[1_000]); // beyond the binary's table
        let mut counts = [0u64; go::counter::COUNT];
        counts[go::counter::HITS as usize] = 42;
        counts[go::counter::CREATED as usize] = 3;
        counts[go::counter::RING_OVERRUN as usize] = 1;
        let raw = GoRaw { hists, counts };
        let names = ["".to_string(), "sleep".into(), "chan receive".into()];
        let e = events_section(&raw, &plan(), &names);
        assert_eq!(e.probe.hits, 42);
        assert_eq!(e.probe.offset, 0x19);
        assert_eq!(e.goroutines_created, 3);
        assert_eq!(e.dropped.ring_overrun, 1);
        assert_eq!(e.sched_latency.count, 3);
        assert!((e.m_runqueue_share - 61_000.0 / 104_000.0).abs() < 1e-9);
        // Largest total first; a reason past the binary's table is named by number.
        let rows: Vec<(&str, u64)> = e
            .blocked
            .iter()
            .map(|b| (b.reason.as_str(), b.time.count))
            .collect();
        assert_eq!(
            rows,
            [("chan receive", 2), ("sleep", 1), ("unknown (7)", 1)]
        );
        let text = {
            let mut o = String::new();
            render_events(&mut o, &e);
            o
        };
        assert!(
            text.contains("runtime.casgstatus+0x19 `jb 0x44fda6`, 42 hits"),
            "{text}"
        );
        assert!(text.contains("58.7% of the time"), "{text}");
        assert!(
            text.contains("1 latencies with the thread share a lower bound"),
            "{text}"
        );
        // No syscall in the maps: an empty section, not a missing one.
        assert_eq!(e.syscalls.as_ref().map(|s| s.time.count), Some(0));
    }

    #[test]
    fn events_section_reports_syscalls_unless_their_probes_are_missing() {
        use crate::hist::Histogram;
        let mut hists = vec![Histogram::default(); go::hist::COUNT as usize];
        for ns in [2_000, 20_000_000, 21_000_000] {
            hists[go::hist::SYSCALL as usize].record(ns);
        }
        for ns in [4_000_000, 9_000_000] {
            hists[go::hist::SYSCALL_LOST_P_LATENCY as usize].record(ns);
        }
        let mut counts = [0u64; go::counter::COUNT];
        counts[go::counter::SYSCALL_EXITS as usize] = 3;
        counts[go::counter::SYSCALL_LOST_P as usize] = 2;
        let raw = GoRaw { hists, counts };
        for (syscalls, seen) in [
            (SyscallPlan::Casgstatus, true),
            (SyscallPlan::Probes(Vec::new()), true),
            (SyscallPlan::Unavailable("no site".into()), false),
        ] {
            let e = events_section(
                &raw,
                &EventPlan {
                    syscalls: syscalls.clone(),
                    ..plan()
                },
                &[],
            );
            assert_eq!(e.syscalls.is_some(), seen, "{syscalls:?}");
        }
        let e = events_section(&raw, &plan(), &[]);
        let s = e.syscalls.as_ref().unwrap();
        assert_eq!((s.time.count, s.kept_p, s.lost_p), (3, 1, 2));
        assert_eq!(s.lost_p_sched_latency.count, 2);
        let mut text = String::new();
        render_events(&mut text, &e);
        assert!(text.contains("in system calls: 3 "), "{text}");
        assert!(
            text.contains("that kept their P 1, that lost it 2"),
            "{text}"
        );
    }

    #[test]
    fn gc_window_takes_the_new_cycles_and_counts_the_overwritten() {
        // 3 cycles before, 5 after: the last two pauses are the window's.
        let w = gc_window(&ring(3, &[10, 20, 30]), &ring(5, &[10, 20, 30, 40, 55]));
        assert_eq!(
            w,
            GcWindow {
                count: 2,
                pauses_ns: vec![40, 55],
                lost: 0,
                total_ns: 95,
                max_ns: Some(55),
            }
        );
        // 300 cycles in the window, the ring holds the last 256: 44 counted, not measured.
        let full: Vec<u64> = (1000..1256).collect();
        let w = gc_window(&ring(8, &[1; 8]), &ring(308, &full));
        assert_eq!((w.count, w.lost, w.pauses_ns.len()), (300, 44, 256));
        assert_eq!(w.pauses_ns, full);
        // Exactly 256: every one measured.
        let w = gc_window(&ring(52, &full), &ring(308, &full));
        assert_eq!((w.count, w.lost), (256, 0));
        // No cycle, and a num_gc that went down (pid reuse): nothing.
        let w = gc_window(&ring(5, &[1, 2, 3, 4, 5]), &ring(5, &[1, 2, 3, 4, 5]));
        assert_eq!((w.count, w.lost, w.max_ns), (0, 0, None));
        let w = gc_window(&ring(9, &[1; 9]), &ring(2, &[7, 8]));
        assert_eq!((w.count, w.pauses_ns.len()), (0, 0));
    }

    #[test]
    fn empty_and_reset_windows() {
        let b = [f64::NEG_INFINITY, 1e-6, f64::INFINITY];
        let w = window(&hist(&b, &[0, 3]), &hist(&b, &[0, 3]));
        assert_eq!((w.count, w.p50_ns, w.max_ns), (0, None, None));
        // A counter that went down (pid reuse): 0, not a wrap.
        let w = window(&hist(&b, &[0, 9]), &hist(&b, &[0, 2]));
        assert_eq!(w.count, 0);
    }
}
