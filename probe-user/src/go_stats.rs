//! `schedlat go-stats`: a Go process's own scheduler statistics, read from its memory (no
//! probe, no cost to the target): GOMAXPROCS, goroutines, and the runtime's scheduling-latency
//! histogram (the data behind runtime/metrics' /sched/latencies:seconds).
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
    let h = &s.sched_latencies;
    let _ = writeln!(
        o,
        "scheduling latency (runtime-sampled, 1 in 8 transitions): {} samples",
        h.total
    );
    for (i, c) in h.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
        let _ = writeln!(
            o,
            "  [{:>12}, {:>12})  {c}",
            secs(h.boundaries[i]),
            secs(h.boundaries[i + 1])
        );
    }
    o
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
