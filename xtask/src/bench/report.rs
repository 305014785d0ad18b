//! The workload tables: per tracer the throughput ratios against bare and against the floor,
//! the extra ns per switch they imply, and the kernel's BPF run time per switch; raw runs.
use std::{collections::BTreeSet, fmt::Write as _, fs, thread};

use super::{
    arms::{ARMS, Arm, Sample},
    runner::WorkloadResult,
    stats::{median, num, num_or_na},
    tracer::{BpfProgs, SWITCH_PROG, bpf_ns_per_switch},
    workload::Workload,
};

/// Median, min and max of the per-round traced/bare throughput ratios.
fn ratios(bare: &[Sample], traced: &[Sample]) -> (f64, f64, f64) {
    let r: Vec<f64> = bare
        .iter()
        .zip(traced)
        .map(|(b, t)| t.throughput / b.throughput)
        .collect();
    let min = r.iter().copied().fold(f64::INFINITY, f64::min);
    let max = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(r), min, max)
}

/// Extra CPU per sched_switch a tracer costs the traced tasks, in ns:
///   time per op   t_bare   = 1 / median bare throughput
///   traced        t_traced = t_bare / ratio          (ratio = traced/bare throughput)
///   extra CPU/op  = (t_traced - t_bare) x busy CPUs  (the workload saturates those CPUs)
///   per switch    = extra CPU per op / sched_switch events per op (from the perf stat run)
/// It is an estimate: noise can make it negative when the ratio is close to 1.
fn ns_per_switch(w: &Workload, r: &WorkloadResult, bare_median: f64, ratio: f64) -> f64 {
    let t_bare = 1.0 / bare_median;
    let extra_cpu = (t_bare / ratio - t_bare) * w.busy_cpus;
    extra_cpu / r.switches_per_op * 1e9
}

/// Median over rounds of BPF ns per switch, with min and max.
fn bpf_switch_summary(traced: &[Sample]) -> String {
    let v: Vec<f64> = traced
        .iter()
        .filter_map(|s| s.bpf.as_ref().map(bpf_ns_per_switch))
        .filter(|x| !x.is_nan())
        .collect();
    if v.is_empty() {
        return "n/a".into();
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{} ({}-{})", num(median(v)), num(min), num(max))
}

/// Per-program rows of one tracer: median ns/run and median runs per round, then the total.
fn render_bpf_programs(s: &mut String, arm: Arm, traced: &[Sample]) {
    let rounds: Vec<&BpfProgs> = traced.iter().filter_map(|x| x.bpf.as_ref()).collect();
    let names: BTreeSet<&String> = rounds.iter().flat_map(|p| p.keys()).collect();
    for name in names {
        let per_round = || rounds.iter().filter_map(|p| p.get(name));
        let ns_per_run = median(
            per_round()
                .filter(|p| p.run_cnt > 0)
                .map(|p| p.run_time_ns as f64 / p.run_cnt as f64)
                .collect(),
        );
        // Shown as a whole count (an even number of rounds can give a median ending in .5).
        let runs = median(per_round().map(|p| p.run_cnt as f64).collect());
        let _ = writeln!(
            s,
            "| {arm} | {name} | {} | {runs:.0} |",
            num_or_na(ns_per_run)
        );
    }
    let _ = writeln!(
        s,
        "| {arm} | **all, per {SWITCH_PROG} run** | **{}** | |",
        bpf_switch_summary(traced)
    );
}

pub(super) fn render(
    workloads: &[Workload],
    results: &[WorkloadResult],
    pairs: usize,
    quick: bool,
) -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let traced = &ARMS[1..];
    let mut s = String::new();
    let _ = writeln!(s, "# schedlat overhead benchmark\n");
    let _ = writeln!(
        s,
        "Kernel {}, {cpus} CPUs, {pairs} interleaved rounds ({}){}.\n",
        kernel.trim(),
        ARMS.map(|a| a.to_string()).join(", "),
        if quick {
            ", --quick: short runs, smoke test only"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "| workload | bare throughput (median) | sched_switch/s | tracer | traced/bare | traced/floor | tracer CPU s/run | extra ns/switch | BPF ns/switch |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for (w, r) in workloads.iter().zip(results) {
        let bare = &r.samples[0];
        let bare_med = median(bare.iter().map(|x| x.throughput).collect());
        for (k, arm) in traced.iter().enumerate() {
            let t = &r.samples[k + 1];
            let (ratio, min, max) = ratios(bare, t);
            let vs_floor = if matches!(arm, Arm::Floor) {
                "-".to_string()
            } else {
                let (r, lo, hi) = ratios(&r.samples[1], t);
                format!("{r:.3} ({lo:.2}-{hi:.2})")
            };
            let cpu = median(t.iter().filter_map(|x| x.tracer_cpu).collect());
            let (name, thr, rate) = if k == 0 {
                (
                    w.name.to_string(),
                    format!("{} {}", num(bare_med), w.unit),
                    format!("{:.0}", r.switch_rate),
                )
            } else {
                Default::default()
            };
            let _ = writeln!(
                s,
                "| {name} | {thr} | {rate} | {arm} | {ratio:.3} ({min:.2}-{max:.2}) | {vs_floor} | {cpu:.3} | {:.0} | {} |",
                ns_per_switch(w, r, bare_med, ratio),
                bpf_switch_summary(t),
            );
        }
    }
    let _ = writeln!(
        s,
        "\n- traced/bare: median of per-round throughput ratios (min-max in brackets); higher is better, 1 = free.\n\
         - floor: schedlat's hooks with empty bodies (`schedlat bench-floor`), what attaching at all costs;\n  \
           traced/floor: the same per-round ratios against the floor of the same round.\n\
         - Tracer CPU: the tracer process's own utime+stime during the workload. The probes' cost is charged\n  \
           to the traced tasks and shows up in the ratio, not here.\n\
         - sched_switch/s: system-wide, from a separate untimed `perf stat -e sched:sched_switch -a` run.\n\
         - Extra ns/switch = (t_bare / ratio - t_bare) x busy CPUs / sched_switch per op, with\n  \
           t_bare = 1 / median bare throughput; busy CPUs = 1 for the pinned pipe, all for the others.\n\
         - BPF ns/switch: see below.\n\
         - bpftrace runs Debian's /usr/sbin/runqlat.bt with its `#include <linux/sched.h>` removed and\n  \
           TASK_RUNNING written as 0 (bpftrace 0.17 cannot compile that header here); runqlat and\n  \
           runqlat.bt trace run-queue delay only, schedlat also futex waits and wakeups.\n"
    );
    render_bpf(&mut s, workloads, results);
    let _ = writeln!(s, "## Raw runs\n");
    for (w, r) in workloads.iter().zip(results) {
        let _ = writeln!(
            s,
            "{} (`{}`), throughput in {}; tracer CPU s and BPF ns/switch in brackets:\n",
            w.name,
            w.argv.join(" "),
            w.unit
        );
        let _ = writeln!(
            s,
            "| round | {} |\n|---|{}",
            ARMS.map(|a| a.to_string()).join(" | "),
            "---|".repeat(ARMS.len())
        );
        let cell = |x: &Sample| match (&x.tracer_cpu, &x.bpf) {
            (Some(cpu), Some(b)) => format!(
                "{} ({cpu:.2} s, {} ns)",
                num(x.throughput),
                num_or_na(bpf_ns_per_switch(b))
            ),
            _ => num(x.throughput),
        };
        for i in 0..r.samples[0].len() {
            let cells: Vec<String> = r.samples.iter().map(|arm| cell(&arm[i])).collect();
            let _ = writeln!(s, "| {} | {} |", i + 1, cells.join(" | "));
        }
        let _ = writeln!(s);
    }
    s
}

/// The second, steadier figure: the tracers' eBPF run time per sched_switch, from the kernel.
fn render_bpf(s: &mut String, workloads: &[Workload], results: &[WorkloadResult]) {
    let _ = writeln!(s, "## BPF run time per sched_switch (kernel bpf_stats)\n");
    let _ = writeln!(
        s,
        "BPF ns/switch is the tracer's eBPF programs' own run time, as measured by the kernel with\n\
         `kernel.bpf_stats_enabled=1` and read with `bpftool prog show` after the workload, summed over\n\
         all its programs and divided by the runs of its `{SWITCH_PROG}` program; the tracer is started\n\
         fresh every round, so this covers the round including its short warm-up. Unlike the ratios it\n\
         needs no bare run to compare with, but it is wall-clock time (sched_clock), so a slow round on\n\
         this VM (host steal, cold caches) still inflates it. It is a lower bound of the cost: it\n\
         excludes the fixed tracepoint dispatch cost (and the stats' own clock reads) and, for syscall\n\
         tracepoints, the syscall slow path that enabling them imposes on all tasks. Median over\n\
         rounds (min-max in brackets).\n"
    );
    let _ = writeln!(
        s,
        "| workload | {} |\n|---|{}",
        ARMS[1..]
            .iter()
            .map(|a| format!("{a} BPF ns/switch"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(ARMS.len() - 1)
    );
    for (w, r) in workloads.iter().zip(results) {
        let cells: Vec<String> = r.samples[1..]
            .iter()
            .map(|t| bpf_switch_summary(t))
            .collect();
        let _ = writeln!(s, "| {} | {} |", w.name, cells.join(" | "));
    }
    let _ = writeln!(s);
    for (w, r) in workloads.iter().zip(results) {
        let _ = writeln!(s, "{}, per program (medians over rounds):\n", w.name);
        let _ = writeln!(
            s,
            "| tracer | program | ns/run | runs/round |\n|---|---|---|---|"
        );
        for (i, arm) in ARMS.into_iter().enumerate() {
            if !matches!(arm, Arm::Bare) {
                render_bpf_programs(s, arm, &r.samples[i]);
            }
        }
        let _ = writeln!(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::workload::workloads;

    #[test]
    fn overhead_per_switch() {
        // The toolchain notes' runqlat figure: 170k ops/s pinned pipe, 2 switches per op, ratio 0.78.
        let w = &workloads(false)[0];
        let r = WorkloadResult {
            switches_per_op: 2.0,
            switch_rate: 0.0,
            samples: Default::default(),
        };
        let ns = ns_per_switch(w, &r, 170_000.0, 0.78);
        assert!((800.0..850.0).contains(&ns), "{ns}");
    }
}
