//! Two more readings on the pinned pipe, in interleaved rounds:
//! - the kernel log sites (issue 11): the daemon at its default log level (logger off, the
//!   verifier removes the log code) beside the same programs with every log call compiled out
//!   (probe-ebpf feature `no-log`, `daemon --bench-no-log`) and with the logger on
//!   (`--log debug`): BPF ns per switch and the verifier's instruction count of sched_switch;
//! - what a capture reports as its own cost (its report's last line, from the kernel's
//!   accounting it turns on) beside this benchmark's bpf_stats reading of the same programs.
use std::{
    fmt::Write as _, net::TcpListener, path::Path, process::Command, thread, time::Duration,
};

use anyhow::{Context, Result};

use super::{
    arms::{Sample, traced_run},
    stats::{median, num_or_na},
    tracer::{BpfStatsGuard, Tracer, bpf_ns_per_switch, prog_ids_of},
    workload::Workload,
};
use crate::cmd::capture;

/// The daemon's log variants, in the order they run each round.
const LOG_ARMS: [(&str, &[&str]); 3] = [
    ("logger off (default)", &[]),
    ("log calls compiled out", &["--bench-no-log"]),
    ("logger on (--log debug)", &["--log", "debug"]),
];

pub(super) struct SelfCost {
    /// Per LOG_ARMS entry: BPF ns per switch per round, and sched_switch's xlated instructions.
    log: Vec<(Vec<f64>, u64)>,
    /// Per round: the capture's own figure and this benchmark's, ns per switch.
    capture: Vec<(f64, f64)>,
}

pub(super) fn self_cost(bin: &Path, w: &Workload, rounds: usize) -> Result<SelfCost> {
    let mut log = vec![(Vec::new(), 0); LOG_ARMS.len()];
    let mut captured = Vec::new();
    for round in 1..=rounds {
        for (i, (name, args)) in LOG_ARMS.iter().enumerate() {
            let port = TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .context("finding a free local port for the daemon")?
                .port();
            let mut c = Command::new(bin);
            c.args(["daemon", "--listen", &format!("127.0.0.1:{port}")])
                .args(*args);
            let _stats = BpfStatsGuard::enable()?;
            let mut t = Tracer::start(
                "schedlat daemon",
                c,
                "serving metrics on",
                Duration::from_secs(30),
            )?;
            let insns = switch_insns(t.pid())?;
            let s = traced_run(&mut t, w, libc::SIGTERM, "SIGTERM")?;
            let ns = ns_of(&s);
            println!(
                "  round {round}/{rounds} daemon, {name}: BPF {} ns/switch, sched_switch {insns} insns",
                num_or_na(ns)
            );
            log[i].0.push(ns);
            log[i].1 = insns;
        }
        let mut c = Command::new(bin);
        c.args(["--log", "info", "capture", "--duration", "1h"]);
        let _stats = BpfStatsGuard::enable()?;
        let mut t = Tracer::start("schedlat capture", c, "capturing", Duration::from_secs(30))?;
        let s = traced_run(&mut t, w, libc::SIGINT, "SIGINT")?;
        let ours = ns_of(&s);
        // The reader threads may still be taking in the report's last lines.
        let mut reported = None;
        for _ in 0..100 {
            reported = reported_cost(&t.tail());
            if reported.is_some() {
                break;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let reported = reported.with_context(|| {
            format!(
                "the capture's report has no `capture cost` line; last output:\n{}",
                t.tail()
            )
        })?;
        println!(
            "  round {round}/{rounds} capture: reports {reported:.0} ns/switch, bpf_stats here {} ns/switch",
            num_or_na(ours)
        );
        captured.push((reported, ours));
    }
    Ok(SelfCost {
        log,
        capture: captured,
    })
}

fn ns_of(s: &Sample) -> f64 {
    s.bpf.as_ref().map_or(f64::NAN, bpf_ns_per_switch)
}

/// Instructions of process `pid`'s sched_switch program as the verifier left them.
fn switch_insns(pid: u32) -> Result<u64> {
    for id in prog_ids_of(pid)? {
        let json =
            capture(Command::new("bpftool").args(["-j", "prog", "show", "id", &id.to_string()]))?;
        let v: serde_json::Value = serde_json::from_str(&json)
            .with_context(|| format!("parsing `bpftool -j prog show id {id}`"))?;
        if v["name"] == "sched_switch" {
            // BPF instructions are 8 bytes.
            return Ok(v["bytes_xlated"].as_u64().unwrap_or(0) / 8);
        }
    }
    anyhow::bail!("no sched_switch program held by pid {pid}")
}

/// `capture cost (kernel bpf_stats): 123 ns per sched_switch (...)` -> 123.
fn reported_cost(tail: &str) -> Option<f64> {
    tail.lines().find_map(|l| {
        let rest = l.split("capture cost (kernel bpf_stats): ").nth(1)?;
        rest.split(" ns per sched_switch")
            .next()?
            .trim()
            .parse()
            .ok()
    })
}

fn range(v: &[f64]) -> String {
    let v: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return "n/a".into();
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.0} ({min:.0}-{max:.0})", median(v))
}

pub(super) fn render(s: &mut String, c: &SelfCost) {
    let _ = writeln!(
        s,
        "\n## Kernel log sites (pinned pipe, {} rounds)\n\n\
         | daemon programs | BPF ns/switch, median (min-max) | sched_switch instructions after the verifier |\n|---|---|---|",
        c.capture.len()
    );
    for ((name, _), (ns, insns)) in LOG_ARMS.iter().zip(&c.log) {
        let _ = writeln!(s, "| {name} | {} | {insns} |", range(ns));
    }
    let _ = writeln!(
        s,
        "\nWith the logger off the verifier removes the log code (AYA_LOG_LEVEL is read-only \
         data set to 0): what stays is a load and a compare per site.\n\n\
         ## A capture's own cost (pinned pipe, host-wide capture with per-task tracking and \
         futex mode `syscall`)\n\n\
         | | ns per sched_switch, median (min-max) |\n|---|---|"
    );
    let reported: Vec<f64> = c.capture.iter().map(|x| x.0).collect();
    let ours: Vec<f64> = c.capture.iter().map(|x| x.1).collect();
    let _ = writeln!(
        s,
        "| the capture's report (its `capture cost` line) | {} |",
        range(&reported)
    );
    let _ = writeln!(
        s,
        "| this benchmark's bpf_stats reading | {} |",
        range(&ours)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_reported_cost() {
        let tail = "  maps (entries/capacity): HISTS 1/4096\n  capture cost (kernel bpf_stats): 697 ns per sched_switch (6522 switches), 180 ns per futex syscall (12 exits)\n";
        assert_eq!(reported_cost(tail), Some(697.0));
        assert_eq!(reported_cost("nothing"), None);
    }
}
