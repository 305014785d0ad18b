//! The text form of a capture report (stdout of `schedlat capture`).
use std::fmt::Write as _;

use super::{CaptureReport, SlowRow, TaskRow};
use crate::{
    hist::{HistSummary, fmt_ns, fold_octaves},
    model::Buckets,
};

/// How to render: rows in each top table, histogram resolution.
#[derive(Clone, Copy, Debug)]
pub struct TextOptions {
    pub top: usize,
    pub buckets: Buckets,
    /// One block of `--interval`: timestamped, and only the summaries, histograms and top
    /// tables (no per-CPU, wakeup or map tables).
    pub block: bool,
}

fn write_hist(out: &mut String, title: &str, h: &HistSummary, bars: Option<Buckets>) {
    let _ = writeln!(
        out,
        "{title}: count={} total={} p50={} p90={} p99={} max={}",
        h.count,
        fmt_ns(h.sum_ns),
        fmt_ns(h.p50_ns),
        fmt_ns(h.p90_ns),
        fmt_ns(h.p99_ns),
        fmt_ns(h.max_ns)
    );
    let Some(buckets) = bars.filter(|_| h.count > 0) else {
        return;
    };
    // (lower bound, upper bound as printed, count)
    let rows: Vec<(u64, String, u64)> = match buckets {
        Buckets::Compact => fold_octaves(&h.buckets)
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
            .buckets
            .iter()
            .map(|b| {
                let i = schedlat_common::bucket_index(b.le_ns);
                (
                    schedlat_common::bucket_lower_ns(i),
                    fmt_ns(b.le_ns),
                    b.count,
                )
            })
            .collect(),
    };
    write_bars(out, rows);
}

/// Histogram rows (lower bound, upper bound as printed, count) with a bar each, scaled to the
/// largest count: the one layout every histogram schedlat prints as text uses.
pub fn write_bars(out: &mut String, rows: Vec<(u64, String, u64)>) {
    let peak = rows.iter().map(|r| r.2).max().unwrap_or(1).max(1);
    let _ = writeln!(
        out,
        "  {:>9} .. {:<9} {:>9}  distribution",
        "from", "to", "count"
    );
    for (lo, hi, count) in rows {
        let bar = ((count as f64 / peak as f64) * 40.0).ceil() as usize;
        let _ = writeln!(
            out,
            "  {:>9} .. {:<9} {:>9} |{:<40}|",
            fmt_ns(lo),
            hi,
            count,
            "*".repeat(bar)
        );
    }
}

/// The text report, with the top `o.top` tasks, pairs, cgroups and slow events.
pub fn render_text(r: &CaptureReport, o: &TextOptions) -> String {
    let top = o.top;
    let mut out = String::new();
    let scope = match (&r.filter.pids.is_empty(), &r.filter.cgroup) {
        (true, None) => "host-wide".to_string(),
        (_, cg) => {
            let mut s = Vec::new();
            if !r.filter.pids.is_empty() {
                s.push(format!(
                    "pid {}",
                    r.filter
                        .pids
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                ));
            }
            if let Some(c) = cg {
                s.push(format!("cgroup {c}"));
            }
            s.join(", ")
        }
    };
    if o.block {
        let _ = writeln!(
            out,
            "schedlat capture: {scope}, {} to {} ({:.2}s)\n",
            r.interval_start, r.interval_end, r.duration_s
        );
    } else {
        let _ = writeln!(out, "schedlat capture: {scope}, {:.2}s\n", r.duration_s);
    }
    let _ = writeln!(out, "== Run-queue delay (runnable -> running) ==");
    write_hist(&mut out, "woken", &r.runqueue.by_cause.woken, None);
    write_hist(&mut out, "preempted", &r.runqueue.by_cause.preempted, None);
    write_hist(&mut out, "all", &r.runqueue.all, Some(o.buckets));
    let _ = writeln!(out, "\n== Futex waits ==");
    write_hist(&mut out, "all", &r.futex.all, Some(o.buckets));
    if !o.block {
        write_details(&mut out, r);
    }

    let _ = writeln!(out, "\n== Top cgroups by run-queue delay ==");
    for c in r.cgroups.iter().take(top) {
        let _ = writeln!(
            out,
            "  {:>11} waits={:<8} p99={:<9} futex={} ({})  {}",
            fmt_ns(c.runqueue.sum_ns),
            c.runqueue.count,
            fmt_ns(c.runqueue.p99_ns),
            c.futex_count,
            fmt_ns(c.futex_sum_ns),
            c.cgroup
        );
    }

    let _ = writeln!(
        out,
        "\n== Top tasks by run-queue delay ({} tasks seen) ==",
        r.tasks.len()
    );
    let _ = writeln!(
        out,
        "  {:>8} {:>8} {:<16} {:>8} {:>11} {:>10} {:>10} {:>8} {:>11}",
        "TID",
        "PID",
        "COMM",
        "WAITS",
        "RUNQ TOTAL",
        // A block's maxima are bounds unless they rose in it (report::since); averages are exact.
        if o.block { "RUNQ AVG" } else { "RUNQ MAX" },
        "PREEMPTED",
        "FUTEX",
        "FUTEX TOTAL"
    );
    for t in r.tasks.iter().take(top) {
        let pre = if t.runqueue_sum_ns > 0 {
            format!(
                "{:.0}%",
                100.0 * t.runqueue_preempted_sum_ns as f64 / t.runqueue_sum_ns as f64
            )
        } else {
            "-".into()
        };
        let _ = writeln!(
            out,
            "  {:>8} {:>8} {:<16} {:>8} {:>11} {:>10} {:>10} {:>8} {:>11}",
            t.tid,
            t.pid,
            t.comm,
            t.runqueue_count,
            fmt_ns(t.runqueue_sum_ns),
            fmt_ns(if o.block {
                t.runqueue_sum_ns / t.runqueue_count.max(1)
            } else {
                t.runqueue_max_ns
            }),
            pre,
            t.futex_count,
            fmt_ns(t.futex_sum_ns)
        );
    }
    let mut by_futex: Vec<&TaskRow> = r.tasks.iter().filter(|t| t.futex_count > 0).collect();
    by_futex.sort_by_key(|t| std::cmp::Reverse(t.futex_sum_ns));
    if !by_futex.is_empty() {
        let _ = writeln!(out, "\n== Top tasks by futex wait ==");
        for t in by_futex.iter().take(top) {
            let _ = writeln!(
                out,
                "  {:>8} {:>8} {:<16} waits={:<7} total={:<10} {}={:<10} timeouts={}",
                t.tid,
                t.pid,
                t.comm,
                t.futex_count,
                fmt_ns(t.futex_sum_ns),
                if o.block { "avg" } else { "max" },
                fmt_ns(if o.block {
                    t.futex_sum_ns / t.futex_count.max(1)
                } else {
                    t.futex_max_ns
                }),
                t.futex_timeouts
            );
        }
    }

    if !o.block {
        write_wakeups(&mut out, r, top);
    }

    let _ = writeln!(
        out,
        "\n== Slow run-queue delays (>= {}): {} ==",
        fmt_ns(r.slow_threshold_ns),
        r.slow_events.len()
    );
    let mut slow: Vec<&SlowRow> = r.slow_events.iter().collect();
    slow.sort_by_key(|e| std::cmp::Reverse(e.delay_ns));
    for e in slow.iter().take(top) {
        let _ = writeln!(
            out,
            "  {:>10} {}[{}] cpu{} {} — ran instead: {}[{}]",
            fmt_ns(e.delay_ns),
            e.comm,
            e.tid,
            e.cpu,
            e.cause,
            e.ran_instead.comm,
            e.ran_instead.tid
        );
    }

    let lost: Vec<String> = r
        .dropped
        .iter()
        .filter(|(k, v)| **v > 0 && k.as_str() != "total")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(
        out,
        "\n== Dropped events: {} ==",
        if lost.is_empty() {
            "none".to_string()
        } else {
            lost.join(" ")
        }
    );
    let skipped: Vec<String> = r
        .kernel_skipped
        .iter()
        .flatten()
        .filter(|(_, n)| **n > 0)
        .map(|(p, n)| format!("{p}={n}"))
        .collect();
    if !skipped.is_empty() {
        let _ = writeln!(
            out,
            "kernel_skipped_recursion by program (runs the kernel skipped while a BPF program \
             was running on that CPU): {}",
            skipped.join(" ")
        );
    }
    if !o.block {
        let maps: Vec<String> = r
            .maps
            .iter()
            .map(|(k, m)| format!("{k} {}/{}", m.entries, m.capacity))
            .collect();
        let _ = writeln!(out, "maps (entries/capacity): {}", maps.join(", "));
    }
    if let Some(c) = &r.cost {
        let _ = writeln!(out, "{}", cost_line(c));
    }
    out
}

/// One line: what the capture's programs cost per event, from the kernel's accounting.
pub fn cost_line(c: &super::CostSection) -> String {
    let mut s = format!(
        "capture cost (kernel bpf_stats): {:.0} ns per sched_switch ({} switches)",
        c.ns_per_switch, c.switches
    );
    if let (Some(n), Some(ns)) = (c.futex_exits, c.ns_per_futex_exit) {
        let _ = write!(s, ", {ns:.0} ns per futex syscall ({n} exits)");
    }
    if let (Some(n), Some(ns)) = (c.go_probe_hits, c.ns_per_go_probe_hit) {
        let _ = write!(s, ", {ns:.0} ns per Go probe hit ({n} hits)");
    }
    s
}

/// The tables only the whole-capture report has: futex waits by op and outcome, per CPU.
fn write_details(out: &mut String, r: &CaptureReport) {
    for (op, h) in &r.futex.by_op {
        let _ = writeln!(
            out,
            "  {op}: count={} p50={} p99={} max={}",
            h.count,
            fmt_ns(h.p50_ns),
            fmt_ns(h.p99_ns),
            fmt_ns(h.max_ns)
        );
    }
    let outcomes: Vec<String> = r
        .futex
        .outcomes
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let _ = writeln!(out, "  ended: {}", outcomes.join(" "));

    let _ = writeln!(out, "\n== Per CPU ==");
    let _ = writeln!(
        out,
        "  {:>4} {:>9} {:>11} {:>10} {:>9} {:>9}",
        "CPU", "WAITS", "TOTAL", "MAX", "WOKEN", "PREEMPTED"
    );
    for c in &r.per_cpu {
        let _ = writeln!(
            out,
            "  {:>4} {:>9} {:>11} {:>10} {:>9} {:>9}",
            c.cpu,
            c.count,
            fmt_ns(c.sum_ns),
            fmt_ns(c.max_ns),
            c.woken_count,
            c.preempted_count
        );
    }
}

fn write_wakeups(out: &mut String, r: &CaptureReport, top: usize) {
    let _ = writeln!(out, "\n== Top wakeups (waker -> wakee) ==");
    for w in r.wakeups.iter().take(top) {
        let _ = writeln!(
            out,
            "  {:>9}  {} -> {}[{}]",
            w.count,
            super::waker_label(w),
            w.wakee_comm,
            w.wakee_tid
        );
    }
}
