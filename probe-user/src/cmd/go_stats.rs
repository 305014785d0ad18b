//! `schedlat go-stats`: a Go process's own scheduler statistics, read from its memory (no
//! probe, no cost to the target): GOMAXPROCS, goroutines (on Go >= 1.26 also by state, created
//! and threads, as runtime/metrics' /sched/goroutines/*), and the runtime's scheduling-latency
//! histogram (the data behind runtime/metrics' /sched/latencies:seconds) and, on Go >= 1.22,
//! its stop-the-world pause histograms (/sched/pauses/*); before 1.22, the GC cycle count and
//! the pauses of the last 256 cycles (runtime.memstats' ring, MemStats.NumGC/PauseNs).
use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    cli::{Format, GoStatsArgs},
    go::capture::{WindowHist, window},
    goruntime::live::{self, LatencyHist, Stats},
    hist::{fmt_ns, fold_pow2_ns, quantile},
    host::{
        cgroup::v2_mount,
        cpulimit::{self, CpuBudget},
    },
    model::Buckets,
    report::text::write_bars,
};

/// The JSON output: the runtime's statistics, and the CPU the process may really use.
#[derive(Serialize)]
struct Report {
    #[serde(flatten)]
    stats: Stats,
    /// cgroup v2 quota, affinity, throttling counters; null if there is no cgroup v2 mount or
    /// the process is gone.
    cpu_budget: Option<CpuBudget>,
    /// Plain-words warnings (GOMAXPROCS above the usable CPU).
    warnings: Vec<String>,
}

pub fn run(a: &GoStatsArgs) -> anyhow::Result<()> {
    let stats = live::read(a.pid)?;
    // Best effort: the Go statistics stand without it (e.g. a cgroup v1-only host).
    let cpu_budget = v2_mount()
        .ok()
        .and_then(|m| cpulimit::budget(a.pid, &m).ok());
    let warnings = cpu_budget
        .as_ref()
        .and_then(|b| cpulimit::gomaxprocs_warning(stats.gomaxprocs.max(0) as u32, b))
        .into_iter()
        .collect();
    let r = Report {
        stats,
        cpu_budget,
        warnings,
    };
    match a.format {
        Format::Json => println!("{}", serde_json::to_string(&r)?),
        Format::Text => print!("{}", text(&r, a.buckets)),
    }
    Ok(())
}

fn text(r: &Report, buckets: Buckets) -> String {
    let s = &r.stats;
    let mut o = String::new();
    let _ = writeln!(o, "{}", headline(r));
    let _ = writeln!(
        o,
        "pid {} ({}{}, layout from {}): GOMAXPROCS {}",
        s.pid,
        s.go_version,
        if s.pie { ", PIE" } else { "" },
        s.layout,
        s.gomaxprocs
    );
    if let Some(g) = &s.goroutines {
        let _ = writeln!(
            o,
            "goroutines: {} (runtime.NumGoroutine), {} live with {} system, {} ever allocated \
             (allglen)",
            g.num_goroutine, g.live, g.system, g.allglen
        );
    }
    if let Some(t) = &s.sched_stats {
        let _ = writeln!(
            o,
            "goroutines by state: {} runnable, {} running, {} waiting, {} not in Go (system \
             calls, cgo); {} created; {} threads",
            t.runnable, t.running, t.waiting, t.not_in_go, t.created, t.threads
        );
    }
    if let Some(b) = &r.cpu_budget {
        let quota = match (&b.quota_cpus, &b.quota_cgroup) {
            (Some(q), Some(cg)) => format!("quota {q:.2} CPUs (cpu.max of {cg})"),
            _ => "no CPU quota".into(),
        };
        let _ = writeln!(
            o,
            "CPU it may use: {:.2} ({quota}, affinity {} CPUs; cgroup {})",
            b.usable_cpus, b.affinity_cpus, b.cgroup
        );
        if let Some(t) = &b.throttling {
            let _ = writeln!(
                o,
                "throttling (since the cgroup was created): {} of {} periods throttled, {:.3} s",
                t.nr_throttled,
                t.nr_periods,
                t.throttled_usec as f64 / 1e6
            );
        }
    }
    for w in &r.warnings {
        let _ = writeln!(o, "warning: {w}");
    }
    hist(
        &mut o,
        "scheduling latency (runtime-sampled, 1 in 8 transitions)",
        &s.sched_latencies,
        buckets,
    );
    match &s.stw_pauses {
        Some(p) => {
            hist(
                &mut o,
                "stop-the-world pauses, GC: stopping",
                &p.stopping_gc,
                buckets,
            );
            hist(
                &mut o,
                "stop-the-world pauses, GC: total",
                &p.total_gc,
                buckets,
            );
            hist(
                &mut o,
                "stop-the-world pauses, other: stopping",
                &p.stopping_other,
                buckets,
            );
            hist(
                &mut o,
                "stop-the-world pauses, other: total",
                &p.total_other,
                buckets,
            );
        }
        None => match &s.gc_pauses {
            Some(g) => {
                let _ = writeln!(
                    o,
                    "GC cycles: {} (Go < 1.22 keeps no stop-the-world histograms; \
                     memstats.pause_ns holds the pause of the last {}, each cycle's two \
                     stop-the-world pauses summed)",
                    g.num_gc,
                    g.recent_ns.len()
                );
                if let (Some(last), Some(max)) = (g.recent_ns.last(), g.recent_ns.iter().max()) {
                    let _ = writeln!(
                        o,
                        "  latest {}, longest of those {}",
                        fmt_ns(*last),
                        fmt_ns(*max)
                    );
                }
                hist(
                    &mut o,
                    &format!("GC pauses, the {} most recent cycles", g.recent_ns.len()),
                    &g.recent,
                    buckets,
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
    o
}

fn hist(o: &mut String, title: &str, h: &LatencyHist, buckets: Buckets) {
    let _ = writeln!(o, "{title}: {} samples", h.total);
    if h.total == 0 {
        return;
    }
    // Bucket i holds [boundaries[i], boundaries[i+1]) seconds; the first may start at -Inf.
    let ns = |s: f64| -> u64 {
        if s.is_finite() && s > 0.0 {
            (s * 1e9).round() as u64
        } else if s > 0.0 {
            u64::MAX
        } else {
            0
        }
    };
    let lo = |i: usize| ns(h.boundaries[i]);
    let rows: Vec<(u64, String, u64)> = match buckets {
        Buckets::Compact => fold_pow2_ns(h.counts.iter().enumerate().map(|(i, &c)| (lo(i), c)))
            .into_iter()
            .map(|r| {
                (
                    r.lo_ns,
                    r.hi_ns.map_or_else(|| "inf".into(), fmt_ns),
                    r.count,
                )
            })
            .collect(),
        Buckets::Fine => h
            .counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, &c)| (lo(i), fmt_ns(ns(h.boundaries[i + 1])), c))
            .collect(),
    };
    write_bars(o, rows);
}

/// The first line: what a person reads at a glance. Release, GOMAXPROCS against the CPU the
/// process may use, goroutines (by state on Go >= 1.26), scheduling latency and GC pauses
/// (p50/p99/max), throttling.
fn headline(r: &Report) -> String {
    let s = &r.stats;
    let mut parts = vec![format!("{} pid {}", s.go_version, s.pid)];
    parts.push(match &r.cpu_budget {
        Some(b) => format!(
            "GOMAXPROCS {} on {:.2} CPUs it may use",
            s.gomaxprocs, b.usable_cpus
        ),
        None => format!("GOMAXPROCS {}", s.gomaxprocs),
    });
    match (&s.sched_stats, &s.goroutines) {
        (Some(t), _) => parts.push(format!(
            "goroutines {} runnable, {} running, {} waiting, {} not in Go",
            t.runnable, t.running, t.waiting, t.not_in_go
        )),
        (None, Some(g)) => parts.push(format!("{} goroutines", g.num_goroutine)),
        (None, None) => {}
    }
    let lat = window(&empty(&s.sched_latencies), &s.sched_latencies);
    parts.push(format!("scheduling latency {}", pcts(&lat)));
    if let Some(p) = &s.stw_pauses {
        let w = window(&empty(&p.total_gc), &p.total_gc);
        parts.push(format!("GC pauses {} of {} pauses", pcts(&w), w.count));
    } else if let Some(g) = &s.gc_pauses {
        let mut v = g.recent_ns.clone();
        v.sort_unstable();
        let q = |q: f64| quantile(v.iter().map(|&x| (x, Some(x), 1)), q);
        let opt = |x: Option<u64>| x.map_or_else(|| "-".into(), fmt_ns);
        parts.push(format!(
            "GC pauses p50 {} p99 {} max {} of the last {} ({} cycles)",
            opt(q(0.5)),
            opt(q(0.99)),
            opt(v.last().copied()),
            v.len(),
            g.num_gc
        ));
    }
    if let Some(t) = r.cpu_budget.as_ref().and_then(|b| b.throttling.as_ref()) {
        parts.push(format!(
            "throttled {} of {} periods ({:.3} s)",
            t.nr_throttled,
            t.nr_periods,
            t.throttled_usec as f64 / 1e6
        ));
    }
    parts.join(" | ")
}

/// p50/p99/max of a runtime histogram ("-" while empty; "+Inf" in the overflow bucket).
fn pcts(w: &WindowHist) -> String {
    if w.count == 0 {
        return "- (no samples)".into();
    }
    let f = |v: Option<u64>| v.map_or_else(|| "+Inf".into(), fmt_ns);
    format!(
        "p50 {} p99 {} max {}",
        f(w.p50_ns),
        f(w.p99_ns),
        f(w.max_ns)
    )
}

/// A histogram of the same buckets with nothing in it (the base of a since-start window).
fn empty(h: &LatencyHist) -> LatencyHist {
    LatencyHist {
        counts: vec![0; h.counts.len()],
        total: 0,
        ..h.clone()
    }
}
