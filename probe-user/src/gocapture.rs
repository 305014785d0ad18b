//! The Go section of `schedlat capture --pid`: the runtime's own statistics read from the
//! process's memory at the start and at the end of the window (crate::goruntime::live), so the
//! section costs the target nothing. Differences of the runtime's cumulative histograms give
//! the window's goroutine scheduling latency (runtime-sampled: 1 transition in 8) and
//! stop-the-world pauses; cgroup counters give the window's throttling.
use serde::Serialize;

use crate::{
    cpulimit::{self, CpuBudget, Throttling},
    goruntime::{
        GoError,
        live::{self, GcPauses, LatencyHist, Stats},
    },
};

/// Summary of a runtime histogram's growth over the window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WindowHist {
    pub count: u64,
    /// Upper bounds (ns) of the buckets holding the 50th/90th/99th percentile and the largest
    /// sample; None when empty or in the overflow bucket. Go buckets: within 25% above 512 ns
    /// (Go >= 1.20), 1/16 of a power of two on Go 1.19.
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
    let pct = |q: f64| -> Option<u64> {
        if count == 0 {
            return None;
        }
        let rank = ((q * count as f64).ceil() as u64).max(1);
        let mut cum = 0;
        for (i, c) in counts.iter().enumerate() {
            cum += c;
            if cum >= rank {
                return le(i);
            }
        }
        None
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
    pub gomaxprocs: i32,
    /// Live goroutines at the end (system goroutines included), and allglen.
    pub goroutines: Option<i64>,
    pub goroutines_ever_allocated: u64,
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
    pub warnings: Vec<String>,
}

/// State taken at the start of the window.
pub struct GoStart {
    pub pid: u32,
    layout: crate::goruntime::Layout,
    exe: std::fs::Metadata,
    before: Stats,
    budget_before: Option<CpuBudget>,
}

/// Read the process at the start of the window. `Err(NotGo)` for non-Go processes.
pub fn start(pid: u32, cgroup_mount: Option<&std::path::Path>) -> Result<GoStart, GoError> {
    let (layout, exe) = live::analyse_exe(pid)?;
    let before = live::read_with(pid, &layout, &exe)?;
    let budget_before = cgroup_mount.and_then(|m| cpulimit::budget(pid, m).ok());
    Ok(GoStart {
        pid,
        layout,
        exe,
        before,
        budget_before,
    })
}

impl GoStart {
    /// Read again at the end of the window (before the kernel maps are read, so both cover
    /// the same time) and build the section; the threads' run-queue delay is filled in from
    /// the capture report afterwards ([`GoSection::threads_runqueue_delay_ns`]).
    pub fn finish(self, cgroup_mount: Option<&std::path::Path>) -> Result<GoSection, GoError> {
        let after = live::read_with(self.pid, &self.layout, &self.exe)?;
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
        Ok(GoSection {
            pid: self.pid,
            go_version: after.go_version.clone(),
            gomaxprocs: after.gomaxprocs,
            goroutines: after.goroutines.as_ref().map(|g| g.live),
            goroutines_ever_allocated: after.goroutines.as_ref().map_or(0, |g| g.allglen),
            sched_latency: window(&self.before.sched_latencies, &after.sched_latencies),
            stw_pauses,
            gc_pauses,
            cpu_budget: budget,
            throttling,
            threads_runqueue_delay_ns: 0,
            threads_runqueue_waits: 0,
            warnings,
        })
    }
}

/// The text form of the Go sections.
pub fn render_text(sections: &[GoSection]) -> String {
    use crate::report::fmt_ns;
    use std::fmt::Write as _;
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
            "\n== Go: pid {} ({}), GOMAXPROCS {}, goroutines {} ==",
            g.pid,
            g.go_version,
            g.gomaxprocs,
            g.goroutines.map_or_else(|| "?".into(), |n| n.to_string())
        );
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
        // 90 in [1,2) µs, 3 in [2,4) µs, 1 in overflow.
        assert_eq!(w.p50_ns, Some(1999));
        assert_eq!(w.p90_ns, Some(1999));
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

    fn ring(num_gc: u32, recent_ns: &[u64]) -> GcPauses {
        GcPauses {
            num_gc,
            recent_ns: recent_ns.to_vec(),
            recent: live::pause_hist(Scheme::SuperSub, recent_ns),
        }
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
