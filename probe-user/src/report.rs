//! Capture reports: pure aggregation of a [`RawSnapshot`] into the text and JSON output.
use std::{collections::BTreeMap, fmt::Write as _};

use schedlat_common::{COMM_LEN, SlowEvent, drop_reason, futex_op, kind};

use crate::model::FUTEX_OUTCOME_NAMES;
use serde::Serialize;

use crate::hist::fmt_ns;
use crate::{
    hist::{HistSummary, Histogram},
    kernel::probes::RawSnapshot,
};

#[derive(Clone, Debug, Serialize)]
pub struct CaptureReport {
    pub duration_s: f64,
    pub filter: Filter,
    pub runqueue: RunqSection,
    pub futex: FutexSection,
    pub per_cpu: Vec<CpuRow>,
    pub cgroups: Vec<CgroupRow>,
    /// Every task seen (not only the top N), sorted by total run-queue delay.
    pub tasks: Vec<TaskRow>,
    pub wakeups: Vec<WakeRow>,
    pub slow_events: Vec<SlowRow>,
    pub slow_threshold_ns: u64,
    /// Lost events by reason; `total` sums them.
    pub dropped: BTreeMap<String, u64>,
    /// Kernel map use at the end of the capture: a full map is where drops come from, and
    /// per-task maps (RUNQ_START, FUTEX_START) must not keep entries of exited tasks.
    pub maps: BTreeMap<String, MapUse>,
    /// Go programs among the --pid processes (crate::go::capture); filled in by the capture.
    pub go: Vec<crate::go::capture::GoSection>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct MapUse {
    pub entries: usize,
    pub capacity: u32,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Filter {
    pub pids: Vec<u32>,
    pub cgroup: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RunqSection {
    #[serde(flatten)]
    pub all: HistSummary,
    pub by_cause: ByCause,
}

#[derive(Clone, Debug, Serialize)]
pub struct ByCause {
    pub woken: HistSummary,
    pub preempted: HistSummary,
}

#[derive(Clone, Debug, Serialize)]
pub struct FutexSection {
    #[serde(flatten)]
    pub all: HistSummary,
    /// By futex command (wait, wait_bitset, lock_pi, ...).
    pub by_op: BTreeMap<String, HistSummary>,
    /// How the waits ended; value_changed calls never slept and are not in the histogram.
    pub outcomes: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CpuRow {
    pub cpu: u32,
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
    pub woken_count: u64,
    pub preempted_count: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CgroupRow {
    pub cgroup: String,
    pub runqueue: HistSummary,
    pub futex_count: u64,
    pub futex_sum_ns: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TaskRow {
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
    pub cgroup: String,
    pub runqueue_count: u64,
    pub runqueue_sum_ns: u64,
    pub runqueue_max_ns: u64,
    pub runqueue_preempted_count: u64,
    pub runqueue_preempted_sum_ns: u64,
    pub futex_count: u64,
    pub futex_sum_ns: u64,
    pub futex_max_ns: u64,
    pub futex_timeouts: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WakeRow {
    pub waker_tid: u32,
    pub waker_comm: String,
    pub wakee_tid: u32,
    pub wakee_comm: String,
    pub count: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SlowRow {
    /// Monotonic (CLOCK_MONOTONIC) time of the switch-in, ns.
    pub ts_ns: u64,
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
    pub cgroup: String,
    pub delay_ns: u64,
    pub cpu: u32,
    pub cause: &'static str,
    /// Who ran on the CPU just before the waiting task got it.
    pub ran_instead: RanInstead,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RanInstead {
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
}

pub fn comm_str(c: &[u8; COMM_LEN]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
    String::from_utf8_lossy(&c[..end]).into_owned()
}

pub fn futex_op_name(op: u32) -> String {
    match op {
        futex_op::WAIT => "wait".into(),
        futex_op::LOCK_PI => "lock_pi".into(),
        futex_op::WAIT_BITSET => "wait_bitset".into(),
        futex_op::WAIT_REQUEUE_PI => "wait_requeue_pi".into(),
        futex_op::LOCK_PI2 => "lock_pi2".into(),
        futex_op::WAITV => "futex_waitv".into(),
        futex_op::FUTEX2_WAIT => "futex_wait2".into(),
        other => format!("op{other}"),
    }
}

pub fn cause_name(cause: u32) -> &'static str {
    if cause == kind::RUNQ_PREEMPTED {
        "preempted"
    } else {
        "woken"
    }
}

/// Inputs besides the maps.
pub struct ReportInput<'a> {
    pub duration_s: f64,
    pub filter: Filter,
    pub slow_events: &'a [SlowEvent],
    pub slow_threshold_ns: u64,
    /// Slow events dropped in userspace (beyond the kept limit).
    pub slow_dropped_user: u64,
}

/// Build the report. `cgroup_name` maps cgroup ids to paths.
pub fn build(
    snap: &RawSnapshot,
    input: ReportInput<'_>,
    mut cgroup_name: impl FnMut(u64) -> String,
) -> CaptureReport {
    let mut woken = Histogram::default();
    let mut preempted = Histogram::default();
    let mut futex = Histogram::default();
    let mut by_op: BTreeMap<String, Histogram> = BTreeMap::new();
    let mut by_cg: BTreeMap<u64, (Histogram, u64, u64)> = BTreeMap::new();
    for (k, h) in &snap.hists {
        match k.kind {
            kind::RUNQ_WOKEN => woken.merge(h),
            kind::RUNQ_PREEMPTED => preempted.merge(h),
            kind::FUTEX => {
                futex.merge(h);
                by_op.entry(futex_op_name(k.op)).or_default().merge(h);
            }
            _ => continue,
        }
        let e = by_cg.entry(k.cgroup_id).or_default();
        if k.kind == kind::FUTEX {
            e.1 += h.count();
            e.2 += h.sum_ns;
        } else {
            e.0.merge(h);
        }
    }
    let mut all = woken.clone();
    all.merge(&preempted);

    let mut cgroups: Vec<CgroupRow> = by_cg
        .into_iter()
        .map(|(id, (h, fc, fs))| CgroupRow {
            cgroup: cgroup_name(id),
            runqueue: HistSummary::from(&h),
            futex_count: fc,
            futex_sum_ns: fs,
        })
        .collect();
    cgroups.sort_by(|a, b| {
        b.runqueue
            .sum_ns
            .cmp(&a.runqueue.sum_ns)
            .then(a.cgroup.cmp(&b.cgroup))
    });

    let per_cpu = snap
        .cpus
        .iter()
        .enumerate()
        .filter(|(_, c)| c.count[0] + c.count[1] > 0)
        .map(|(i, c)| CpuRow {
            cpu: i as u32,
            count: c.count[0] + c.count[1],
            sum_ns: c.sum_ns[0] + c.sum_ns[1],
            max_ns: c.max_ns,
            woken_count: c.count[kind::RUNQ_WOKEN as usize],
            preempted_count: c.count[kind::RUNQ_PREEMPTED as usize],
        })
        .collect();

    let mut tasks: Vec<TaskRow> = snap
        .tasks
        .iter()
        .map(|(tid, t)| TaskRow {
            tid: *tid,
            pid: t.tgid,
            comm: comm_str(&t.comm),
            cgroup: cgroup_name(t.cgroup_id),
            runqueue_count: t.runq_count,
            runqueue_sum_ns: t.runq_sum_ns,
            runqueue_max_ns: t.runq_max_ns,
            runqueue_preempted_count: t.runq_preempted_count,
            runqueue_preempted_sum_ns: t.runq_preempted_sum_ns,
            futex_count: t.futex_count,
            futex_sum_ns: t.futex_sum_ns,
            futex_max_ns: t.futex_max_ns,
            futex_timeouts: t.futex_timeouts,
        })
        .collect();
    tasks.sort_by(|a, b| {
        b.runqueue_sum_ns
            .cmp(&a.runqueue_sum_ns)
            .then(a.tid.cmp(&b.tid))
    });

    let mut wakeups: Vec<WakeRow> = snap
        .wake_pairs
        .iter()
        .map(|(k, v)| WakeRow {
            waker_tid: k.waker_tid,
            waker_comm: comm_str(&v.waker_comm),
            wakee_tid: k.wakee_tid,
            wakee_comm: comm_str(&v.wakee_comm),
            count: v.count,
        })
        .collect();
    wakeups.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then((a.waker_tid, a.wakee_tid).cmp(&(b.waker_tid, b.wakee_tid)))
    });

    let slow_events = input
        .slow_events
        .iter()
        .map(|e| SlowRow {
            ts_ns: e.ts_ns,
            tid: e.tid,
            pid: e.tgid,
            comm: comm_str(&e.comm),
            cgroup: cgroup_name(e.cgroup_id),
            delay_ns: e.delay_ns,
            cpu: e.cpu,
            cause: cause_name(e.cause),
            ran_instead: RanInstead {
                tid: e.prev_tid,
                pid: e.prev_tgid,
                comm: comm_str(&e.prev_comm),
            },
        })
        .collect();

    let mut dropped: BTreeMap<String, u64> = drop_reason::NAMES
        .iter()
        .zip(snap.drops)
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    dropped.insert("slow_event_report_limit".into(), input.slow_dropped_user);
    let total = dropped.values().sum();
    dropped.insert("total".into(), total);

    CaptureReport {
        duration_s: input.duration_s,
        filter: input.filter,
        runqueue: RunqSection {
            all: HistSummary::from(&all),
            by_cause: ByCause {
                woken: HistSummary::from(&woken),
                preempted: HistSummary::from(&preempted),
            },
        },
        futex: FutexSection {
            all: HistSummary::from(&futex),
            by_op: by_op
                .iter()
                .map(|(k, h)| (k.clone(), HistSummary::from(h)))
                .collect(),
            outcomes: FUTEX_OUTCOME_NAMES
                .iter()
                .zip(snap.futex_outcomes)
                .map(|(n, v)| (n.to_string(), v))
                .collect(),
        },
        per_cpu,
        cgroups,
        tasks,
        wakeups,
        slow_events,
        slow_threshold_ns: input.slow_threshold_ns,
        dropped,
        maps: snap
            .map_entries
            .iter()
            .map(|&(name, entries, capacity)| (name.to_string(), MapUse { entries, capacity }))
            .collect(),
        go: Vec::new(),
    }
}

fn write_hist(out: &mut String, title: &str, h: &HistSummary, bars: bool) {
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
    if h.count == 0 || !bars {
        return;
    }
    let peak = h.buckets.iter().map(|b| b.count).max().unwrap_or(1);
    for b in &h.buckets {
        let lower = schedlat_common::bucket_lower_ns(schedlat_common::bucket_index(b.le_ns));
        let bar = ((b.count as f64 / peak as f64) * 40.0).ceil() as usize;
        let _ = writeln!(
            out,
            "  {:>9} .. {:<9} {:>9} |{:<40}|",
            fmt_ns(lower),
            fmt_ns(b.le_ns),
            b.count,
            "*".repeat(bar)
        );
    }
}

/// The text report, with the top `top` tasks, pairs, cgroups and slow events.
pub fn render_text(r: &CaptureReport, top: usize) -> String {
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
    let _ = writeln!(out, "schedlat capture: {scope}, {:.2}s\n", r.duration_s);
    let _ = writeln!(out, "== Run-queue delay (runnable -> running) ==");
    write_hist(&mut out, "woken", &r.runqueue.by_cause.woken, false);
    write_hist(&mut out, "preempted", &r.runqueue.by_cause.preempted, false);
    write_hist(&mut out, "all", &r.runqueue.all, true);
    let _ = writeln!(out, "\n== Futex waits ==");
    write_hist(&mut out, "all", &r.futex.all, true);
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
        "RUNQ MAX",
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
            fmt_ns(t.runqueue_max_ns),
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
                "  {:>8} {:>8} {:<16} waits={:<7} total={:<10} max={:<10} timeouts={}",
                t.tid,
                t.pid,
                t.comm,
                t.futex_count,
                fmt_ns(t.futex_sum_ns),
                fmt_ns(t.futex_max_ns),
                t.futex_timeouts
            );
        }
    }

    let _ = writeln!(out, "\n== Top wakeups (waker -> wakee) ==");
    for w in r.wakeups.iter().take(top) {
        let _ = writeln!(
            out,
            "  {:>9}  {}[{}] -> {}[{}]",
            w.count, w.waker_comm, w.waker_tid, w.wakee_comm, w.wakee_tid
        );
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
    let maps: Vec<String> = r
        .maps
        .iter()
        .map(|(k, m)| format!("{k} {}/{}", m.entries, m.capacity))
        .collect();
    let _ = writeln!(out, "maps (entries/capacity): {}", maps.join(", "));
    out
}

#[cfg(test)]
mod tests {
    use schedlat_common::{CpuStat, HistKey, TaskStat, WakeCount, WakePair};

    use super::*;

    fn comm(s: &str) -> [u8; COMM_LEN] {
        let mut c = [0; COMM_LEN];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    fn snapshot() -> RawSnapshot {
        let mut w = Histogram::default();
        w.record(2_000);
        w.record(4_000);
        let mut p = Histogram::default();
        p.record(3_000_000);
        let mut f = Histogram::default();
        f.record(5_000_000);
        let mut drops = [0; drop_reason::COUNT];
        drops[drop_reason::RUNQ_START_FULL as usize] = 3;
        RawSnapshot {
            hists: vec![
                (
                    HistKey {
                        cgroup_id: 1,
                        kind: kind::RUNQ_WOKEN,
                        op: 0,
                    },
                    w,
                ),
                (
                    HistKey {
                        cgroup_id: 7,
                        kind: kind::RUNQ_PREEMPTED,
                        op: 0,
                    },
                    p,
                ),
                (
                    HistKey {
                        cgroup_id: 7,
                        kind: kind::FUTEX,
                        op: futex_op::WAIT_BITSET,
                    },
                    f,
                ),
            ],
            tasks: vec![
                (
                    10,
                    TaskStat {
                        tgid: 10,
                        runq_count: 1,
                        runq_sum_ns: 5,
                        comm: comm("a"),
                        ..Default::default()
                    },
                ),
                (
                    11,
                    TaskStat {
                        tgid: 10,
                        runq_count: 1,
                        runq_sum_ns: 50,
                        comm: comm("b"),
                        ..Default::default()
                    },
                ),
            ],
            wake_pairs: vec![(
                WakePair {
                    waker_tid: 10,
                    wakee_tid: 11,
                },
                WakeCount {
                    count: 4,
                    waker_comm: comm("a"),
                    wakee_comm: comm("b"),
                },
            )],
            cpus: vec![
                CpuStat {
                    count: [2, 1],
                    sum_ns: [6_000, 3_000_000],
                    max_ns: 3_000_000,
                },
                CpuStat::default(),
            ],
            drops,
            map_entries: vec![("RUNQ_START", 3, 65536), ("TASK_STATS", 2, 65536)],
            ..Default::default()
        }
    }

    #[test]
    fn aggregates_causes_ops_cgroups_and_drops() {
        let snap = snapshot();
        let r = build(
            &snap,
            ReportInput {
                duration_s: 1.0,
                filter: Filter::default(),
                slow_events: &[],
                slow_threshold_ns: 10_000_000,
                slow_dropped_user: 2,
            },
            |id| format!("/cg{id}"),
        );
        assert_eq!(r.runqueue.all.count, 3);
        assert_eq!(r.runqueue.by_cause.woken.count, 2);
        assert_eq!(r.runqueue.by_cause.preempted.count, 1);
        assert_eq!(r.runqueue.all.sum_ns, 3_006_000);
        assert_eq!(r.futex.all.count, 1);
        assert_eq!(r.futex.by_op["wait_bitset"].count, 1);
        assert_eq!(r.cgroups[0].cgroup, "/cg7"); // most delay first
        assert_eq!(r.cgroups[0].futex_count, 1);
        assert_eq!(r.tasks[0].tid, 11); // sorted by delay
        assert_eq!(r.tasks.len(), 2);
        assert_eq!(r.wakeups[0].count, 4);
        assert_eq!(r.per_cpu.len(), 1); // idle CPUs omitted
        assert_eq!(r.dropped["runq_start_map_full"], 3);
        assert_eq!(r.dropped["slow_event_report_limit"], 2);
        assert_eq!(r.dropped["total"], 5);
        assert_eq!(
            r.maps["RUNQ_START"],
            MapUse {
                entries: 3,
                capacity: 65536
            }
        );
        assert!(render_text(&r, 5).contains("RUNQ_START 3/65536, TASK_STATS 2/65536"));
        let text = render_text(&r, 10);
        assert!(
            text.contains("Run-queue delay") && text.contains("a[10] -> b[11]"),
            "{text}"
        );
        assert!(text.contains("runq_start_map_full=3"), "{text}");
    }

    #[test]
    fn json_has_the_documented_keys() {
        let r = build(
            &snapshot(),
            ReportInput {
                duration_s: 1.0,
                filter: Filter::default(),
                slow_events: &[],
                slow_threshold_ns: 1,
                slow_dropped_user: 0,
            },
            |id| format!("/cg{id}"),
        );
        let v = serde_json::to_value(&r).unwrap();
        for k in [
            "duration_s",
            "runqueue",
            "futex",
            "tasks",
            "wakeups",
            "slow_events",
            "dropped",
            "maps",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        for k in [
            "count", "sum_ns", "max_ns", "p50_ns", "p90_ns", "p99_ns", "buckets",
        ] {
            assert!(v["runqueue"].get(k).is_some(), "runqueue.{k}");
            assert!(v["futex"].get(k).is_some(), "futex.{k}");
            assert!(v["runqueue"]["by_cause"]["woken"].get(k).is_some());
            assert!(v["runqueue"]["by_cause"]["preempted"].get(k).is_some());
        }
        for k in [
            "tid",
            "pid",
            "comm",
            "runqueue_count",
            "runqueue_sum_ns",
            "runqueue_max_ns",
            "futex_count",
            "futex_sum_ns",
        ] {
            assert!(v["tasks"][0].get(k).is_some(), "tasks[].{k}");
        }
        for k in [
            "waker_tid",
            "waker_comm",
            "wakee_tid",
            "wakee_comm",
            "count",
        ] {
            assert!(v["wakeups"][0].get(k).is_some(), "wakeups[].{k}");
        }
        assert!(v["runqueue"]["buckets"][0].get("le_ns").is_some());
    }

    #[test]
    fn formats_durations() {
        assert_eq!(fmt_ns(999), "999ns");
        assert_eq!(fmt_ns(1_500), "1.5µs");
        assert_eq!(fmt_ns(2_500_000), "2.50ms");
        assert_eq!(fmt_ns(3_000_000_000), "3.00s");
    }
}
