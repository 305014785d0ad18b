//! `schedlat go-stats`: a Go process's own scheduler statistics, read from its memory (no
//! probe, no cost to the target): GOMAXPROCS, goroutines, and the runtime's scheduling-latency
//! histogram (the data behind runtime/metrics' /sched/latencies:seconds) and, on Go >= 1.22,
//! its stop-the-world pause histograms (/sched/pauses/*).
use std::fmt::Write as _;

use crate::{
    cli::{Format, GoStatsArgs},
    goruntime::live::{self, Stats},
};

pub fn run(a: &GoStatsArgs) -> anyhow::Result<()> {
    let stats = live::read(a.pid)?;
    match a.format {
        Format::Json => println!("{}", serde_json::to_string(&stats)?),
        Format::Text => print!("{}", text(&stats)),
    }
    Ok(())
}

fn text(s: &Stats) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "pid {} ({}{}): GOMAXPROCS {}",
        s.pid,
        s.go_version,
        if s.pie { ", PIE" } else { "" },
        s.gomaxprocs
    );
    if let Some(g) = &s.goroutines {
        let _ = writeln!(
            o,
            "goroutines: {} live ({} system), {} ever allocated (allglen)",
            g.live, g.system, g.allglen
        );
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
        None => {
            let _ = writeln!(
                o,
                "stop-the-world pauses: not kept by this Go version (histograms since Go 1.22)"
            );
        }
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
