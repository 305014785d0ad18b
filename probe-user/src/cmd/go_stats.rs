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
    goruntime::live::{self, Stats},
    host::cgroup::v2_mount,
    host::cpulimit::{self, CpuBudget},
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
        Format::Text => print!("{}", text(&r)),
    }
    Ok(())
}

fn text(r: &Report) -> String {
    let s = &r.stats;
    let mut o = String::new();
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
    );
    match &s.stw_pauses {
        Some(p) => {
            hist(
                &mut o,
                "stop-the-world pauses, GC: stopping",
                &p.stopping_gc,
            );
            hist(&mut o, "stop-the-world pauses, GC: total", &p.total_gc);
            hist(
                &mut o,
                "stop-the-world pauses, other: stopping",
                &p.stopping_other,
            );
            hist(
                &mut o,
                "stop-the-world pauses, other: total",
                &p.total_other,
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
                        crate::hist::fmt_ns(*last),
                        crate::hist::fmt_ns(*max)
                    );
                }
                hist(
                    &mut o,
                    &format!("GC pauses, the {} most recent cycles", g.recent_ns.len()),
                    &g.recent,
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

fn hist(o: &mut String, title: &str, h: &live::LatencyHist) {
    let _ = writeln!(o, "{title}: {} samples", h.total);
    for (i, c) in h.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
        let _ = writeln!(
            o,
            "  [{:>12}, {:>12})  {c}",
            secs(h.boundaries[i]),
            secs(h.boundaries[i + 1])
        );
    }
}

fn secs(v: f64) -> String {
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    humantime::format_duration(std::time::Duration::from_secs_f64(v)).to_string()
}
