//! Capture reports: pure aggregation of a [`RawSnapshot`] into the report model (serialized
//! as the JSON output; [`text`] renders it for people). Snapshots come as `crate::model`
//! types: nothing here imports the loader.
use std::collections::BTreeMap;

use schedlat_common::{COMM_LEN, SlowEvent, drop_reason, futex_op, kind};
use serde::Serialize;

use crate::{
    hist::{HistSummary, Histogram},
    model::{FUTEX_OUTCOME_NAMES, KERNEL_SKIPPED, ProgStats, RawSnapshot},
};

mod delta;
mod html;
pub mod text;
pub mod timeline;
pub use delta::since;
pub use html::render_html;
pub use text::{TextOptions, render_text};

#[derive(Clone, Debug, Serialize)]
pub struct CaptureReport {
    pub duration_s: f64,
    /// Wall-clock bounds of what the report covers (RFC 3339, UTC, milliseconds): the whole
    /// capture, or one interval of `--interval`.
    pub interval_start: String,
    pub interval_end: String,
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
    /// Lost events by reason; `total` sums them. `kernel_skipped_recursion` (where the
    /// kernel reports it) is the sum of `kernel_skipped`.
    pub dropped: BTreeMap<String, u64>,
    /// Runs of each program that the kernel skipped (another run of it, or for classic
    /// tracepoints any kprobe or tracepoint program, already running on that CPU): each is
    /// one event lost. None where the kernel does not report them (before 5.12).
    pub kernel_skipped: Option<BTreeMap<String, u64>>,
    /// Kernel map use at the end of the capture: a full map is where drops come from, and
    /// per-task maps (RUNQ_START, FUTEX_START) must not keep entries of exited tasks.
    pub maps: BTreeMap<String, MapUse>,
    /// Go programs among the --pid processes (crate::go::capture); filled in by the capture.
    pub go: Vec<crate::go::capture::GoSection>,
    /// What the capture's own eBPF programs cost, from the kernel's accounting; absent where
    /// the kernel could not turn it on.
    pub cost: Option<CostSection>,
}

/// The capture's own cost: the kernel's run-time accounting of its eBPF programs
/// (bpf_prog_info run_time_ns / run_cnt, BPF_ENABLE_STATS on for the capture's duration).
/// Every program's run time is added to the event it serves; the host's tasks pay it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CostSection {
    /// sched_switch runs: every context switch on the host.
    pub switches: u64,
    /// Run time of the scheduler programs (sched_switch, sched_waking, sched_wakeup_new)
    /// per sched_switch.
    pub ns_per_switch: f64,
    /// futex mode `syscall`: futex syscall exits, and the futex programs' (enter and exit)
    /// run time per exit.
    pub futex_exits: Option<u64>,
    pub ns_per_futex_exit: Option<f64>,
    /// Per-event Go probes: their hits, and run time per hit.
    pub go_probe_hits: Option<u64>,
    pub ns_per_go_probe_hit: Option<f64>,
    /// Each program: runs, run time and run time per run.
    pub programs: BTreeMap<String, ProgramCost>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProgramCost {
    pub runs: u64,
    pub run_time_ns: u64,
    pub ns_per_run: f64,
}

/// The cost section from the programs' accounting; None when there is none.
fn cost(programs: &[(String, ProgStats)]) -> Option<CostSection> {
    if programs.is_empty() {
        return None;
    }
    // (runs of the program that counts the events, run time of the family)
    let family = |is: &dyn Fn(&str) -> bool, counter: &dyn Fn(&str) -> bool| {
        let mut runs = 0;
        let mut time = 0;
        for (name, s) in programs.iter().filter(|(n, _)| is(n)) {
            time += s.run_time_ns;
            if counter(name) {
                runs += s.run_count;
            }
        }
        (runs, time)
    };
    let per = |(runs, time): (u64, u64)| {
        if runs == 0 {
            0.0
        } else {
            time as f64 / runs as f64
        }
    };
    let sched = family(&|n| n.starts_with("sched_"), &|n| n == "sched_switch");
    let futex = family(&|n| n.starts_with("sys_"), &|n| n.starts_with("sys_exit_"));
    let go = family(&|n| n.starts_with("go_"), &|_| true);
    let attached = |prefix: &str| programs.iter().any(|(n, _)| n.starts_with(prefix));
    Some(CostSection {
        switches: sched.0,
        ns_per_switch: per(sched),
        futex_exits: attached("sys_").then_some(futex.0),
        ns_per_futex_exit: attached("sys_").then(|| per(futex)),
        go_probe_hits: attached("go_").then_some(go.0),
        ns_per_go_probe_hit: attached("go_").then(|| per(go)),
        programs: programs
            .iter()
            .map(|(n, s)| {
                (
                    n.clone(),
                    ProgramCost {
                        runs: s.run_count,
                        run_time_ns: s.run_time_ns,
                        ns_per_run: per((s.run_count, s.run_time_ns)),
                    },
                )
            })
            .collect(),
    })
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
    /// The CPU whose interrupt raised the wakeup, when an idle CPU's was (waker_tid 0).
    pub waker_cpu: Option<u32>,
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

/// The waker of a wakeup raised while a CPU's idle task was current (pid 0): an interrupt
/// (a timer expiring, a device, a softirq run on the way out of one) on an idle CPU, named by
/// that CPU (the kernel keeps one pid-0 task per CPU, `swapper/N`, all with pid 0). An
/// interrupt taken while an ordinary task runs is credited to that task: the kernel does not
/// tell the two apart at sched_waking.
pub const IRQ_WAKER: &str = "(irq)";

/// How the report names a waker: `comm[tid]`, or `(irq) on CPU N` for an idle CPU's interrupt.
pub fn waker_label(w: &WakeRow) -> String {
    match w.waker_cpu {
        Some(cpu) => format!("{IRQ_WAKER} on CPU {cpu}"),
        None => format!("{}[{}]", w.waker_comm, w.waker_tid),
    }
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
    /// Wall-clock start and end of what the maps cover.
    pub window: (std::time::SystemTime, std::time::SystemTime),
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
            waker_comm: if k.waker_tid == 0 {
                IRQ_WAKER.to_string()
            } else {
                comm_str(&v.waker_comm)
            },
            waker_cpu: (k.waker_tid == 0).then_some(k.waker_cpu),
            wakee_tid: k.wakee_tid,
            wakee_comm: comm_str(&v.wakee_comm),
            count: v.count,
        })
        .collect();
    wakeups.sort_by(|a, b| {
        b.count
            .cmp(&a.count)
            .then((a.waker_tid, a.waker_cpu, a.wakee_tid).cmp(&(
                b.waker_tid,
                b.waker_cpu,
                b.wakee_tid,
            )))
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
    let kernel_skipped: Option<BTreeMap<String, u64>> =
        snap.skipped.as_ref().map(|s| s.iter().cloned().collect());
    if let Some(k) = &kernel_skipped {
        dropped.insert(KERNEL_SKIPPED.into(), k.values().sum());
    }
    let total = dropped.values().sum();
    dropped.insert("total".into(), total);

    CaptureReport {
        duration_s: input.duration_s,
        interval_start: humantime::format_rfc3339_millis(input.window.0).to_string(),
        interval_end: humantime::format_rfc3339_millis(input.window.1).to_string(),
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
        kernel_skipped,
        maps: snap
            .map_entries
            .iter()
            .map(|&(name, entries, capacity)| (name.to_string(), MapUse { entries, capacity }))
            .collect(),
        go: Vec::new(),
        cost: cost(&snap.programs),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use schedlat_common::{CpuStat, HistKey, TaskStat, WakeCount, WakePair};

    use super::*;
    use crate::{hist::fmt_ns, model::Buckets};

    /// A task's comm as the kernel stores it.
    pub(crate) fn comm(s: &str) -> [u8; COMM_LEN] {
        let mut c = [0; COMM_LEN];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    /// One second at the epoch, host-wide, no slow event: the input the tests vary.
    pub(crate) fn one_second() -> ReportInput<'static> {
        ReportInput {
            duration_s: 1.0,
            window: (std::time::UNIX_EPOCH, std::time::UNIX_EPOCH),
            filter: Filter::default(),
            slow_events: &[],
            slow_threshold_ns: 1,
            slow_dropped_user: 0,
        }
    }

    /// The report of [`snapshot`] over `input`, cgroup ids named /cg<id>.
    fn report(input: ReportInput<'_>) -> CaptureReport {
        build(&snapshot(), input, |id| format!("/cg{id}"))
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
            wake_pairs: vec![
                (
                    WakePair {
                        waker_tid: 10,
                        wakee_tid: 11,
                        waker_cpu: 0,
                    },
                    WakeCount {
                        count: 4,
                        waker_comm: comm("a"),
                        wakee_comm: comm("b"),
                    },
                ),
                (
                    WakePair {
                        waker_tid: 0,
                        wakee_tid: 11,
                        waker_cpu: 1,
                    },
                    WakeCount {
                        count: 2,
                        waker_comm: comm("swapper/1"),
                        wakee_comm: comm("b"),
                    },
                ),
            ],
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
    fn cost_is_per_switch_per_futex_exit_and_per_go_hit() {
        let p = |name: &str, run_time_ns, run_count| {
            (
                name.to_string(),
                ProgStats {
                    run_time_ns,
                    run_count,
                },
            )
        };
        assert_eq!(cost(&[]), None);
        // The scheduler programs' time over sched_switch runs; futex programs' over exits.
        let c = cost(&[
            p("sched_switch", 1_000, 10),
            p("sched_wakeup", 500, 5),
            p("sched_waking", 500, 5),
            p("sys_enter_futex", 300, 4),
            p("sys_exit_futex", 100, 2),
        ])
        .unwrap();
        assert_eq!((c.switches, c.ns_per_switch), (10, 200.0));
        assert_eq!((c.futex_exits, c.ns_per_futex_exit), (Some(2), Some(200.0)));
        assert_eq!((c.go_probe_hits, c.ns_per_go_probe_hit), (None, None));
        assert_eq!(c.programs["sched_wakeup"].ns_per_run, 100.0);
        let c = cost(&[p("sched_switch", 0, 0), p("go_casgstatus", 900, 3)]).unwrap();
        assert_eq!(c.ns_per_switch, 0.0, "no run, no division by zero");
        assert_eq!(
            (c.go_probe_hits, c.ns_per_go_probe_hit),
            (Some(3), Some(300.0))
        );
        assert_eq!(c.futex_exits, None);
    }

    /// Runs the kernel skipped are lost events: in `dropped` (and its total) as one reason,
    /// by program in `kernel_skipped`, zeros included; the text names the programs.
    #[test]
    fn kernel_skipped_runs_are_drops_by_program() {
        let snap = RawSnapshot {
            skipped: Some(vec![("sched_switch".into(), 2), ("sched_waking".into(), 0)]),
            ..snapshot()
        };
        let input = ReportInput {
            slow_threshold_ns: 10_000_000,
            ..one_second()
        };
        let r = build(&snap, input, |id| format!("/cg{id}"));
        assert_eq!(r.dropped[KERNEL_SKIPPED], 2);
        // runq_start_map_full 3 + these 2.
        assert_eq!(r.dropped["total"], 5);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v["kernel_skipped"],
            serde_json::json!({"sched_switch": 2, "sched_waking": 0})
        );
        let text = render_text(
            &r,
            &TextOptions {
                top: 5,
                buckets: Buckets::Compact,
                block: false,
            },
        );
        assert!(text.contains("kernel_skipped_recursion=2"), "{text}");
        assert!(
            text.contains("sched_switch=2") && !text.contains("sched_waking=0"),
            "{text}"
        );
    }

    #[test]
    fn aggregates_causes_ops_cgroups_and_drops() {
        let r = report(ReportInput {
            slow_threshold_ns: 10_000_000,
            slow_dropped_user: 2,
            ..one_second()
        });
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
        let opts = |top| TextOptions {
            top,
            buckets: Buckets::Compact,
            block: false,
        };
        assert!(render_text(&r, &opts(5)).contains("RUNQ_START 3/65536, TASK_STATS 2/65536"));
        let text = render_text(&r, &opts(10));
        assert!(
            text.contains("Run-queue delay") && text.contains("a[10] -> b[11]"),
            "{text}"
        );
        assert!(text.contains("runq_start_map_full=3"), "{text}");
        // No kernel report in this snapshot (before 5.12): no such reason, null in JSON.
        assert!(!r.dropped.contains_key(KERNEL_SKIPPED));
        assert_eq!(
            serde_json::to_value(&r).unwrap()["kernel_skipped"],
            serde_json::Value::Null
        );
        // Woken from an interrupt on an idle CPU (the idle task, pid 0, was current): said so,
        // not as the idle task waking someone.
        assert_eq!(r.wakeups[1].waker_comm, IRQ_WAKER);
        assert_eq!(r.wakeups[1].waker_cpu, Some(1));
        assert_eq!(r.wakeups[0].waker_cpu, None);
        assert!(
            text.contains("        2  (irq) on CPU 1 -> b[11]\n") && !text.contains("swapper"),
            "{text}"
        );
    }

    #[test]
    fn text_histograms_compact_by_default_fine_on_request() {
        let r = report(one_second());
        let rows = |buckets| {
            let t = render_text(
                &r,
                &TextOptions {
                    top: 10,
                    buckets,
                    block: false,
                },
            );
            // The run-queue histogram: the rows after "all:" up to the blank line.
            let section = t.split("== Run-queue delay").nth(1).unwrap();
            let hist = section.split("\nall:").nth(1).unwrap();
            hist.split("\n\n")
                .next()
                .unwrap()
                .lines()
                .skip(2)
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        // 2 µs, 4 µs and 3 ms: compact is one row per power of two of seconds from
        // (2^-19 s, 2^-18 s] to (2^-9 s, 2^-8 s], empty ones included; fine is the three
        // kernel buckets.
        let compact = rows(Buckets::Compact);
        assert_eq!(compact.len(), 11, "{compact:#?}");
        assert!(
            compact[0].starts_with("      1.9µs .. 3.8µs             1 |*"),
            "{compact:#?}"
        );
        assert!(
            compact[1].contains("3.8µs .. 7.6µs             1 |*"),
            "{compact:#?}"
        );
        assert!(
            compact[2].ends_with("0 |                                        |"),
            "empty row: {compact:#?}"
        );
        assert!(
            compact[10].contains("1.95ms .. 3.91ms            1 |*"),
            "{compact:#?}"
        );
        let fine = rows(Buckets::Fine);
        assert_eq!(fine.len(), 3, "{fine:#?}");
        assert_eq!(
            fine.iter()
                .map(|l| l.split_whitespace().nth(3).unwrap())
                .collect::<Vec<_>>(),
            ["1", "1", "1"]
        );
    }

    #[test]
    fn interval_blocks_are_timestamped_and_short() {
        let r = report(ReportInput {
            window: (
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_000),
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(2_000),
            ),
            ..one_second()
        });
        assert_eq!(r.interval_start, "1970-01-01T00:00:01.000Z");
        let t = render_text(
            &r,
            &TextOptions {
                top: 5,
                buckets: Buckets::Compact,
                block: true,
            },
        );
        assert!(
            t.starts_with(
                "schedlat capture: host-wide, 1970-01-01T00:00:01.000Z to \
                 1970-01-01T00:00:02.000Z (1.00s)\n"
            ),
            "{t}"
        );
        for kept in ["Run-queue delay", "Futex waits", "Top cgroups", "Top tasks"] {
            assert!(t.contains(kept), "{kept}: {t}");
        }
        for left_out in ["Per CPU", "Top wakeups", "maps (entries"] {
            assert!(!t.contains(left_out), "{left_out}: {t}");
        }
    }

    #[test]
    fn json_has_the_documented_keys() {
        let r = report(one_second());
        let v = serde_json::to_value(&r).unwrap();
        for k in [
            "duration_s",
            "interval_start",
            "interval_end",
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
