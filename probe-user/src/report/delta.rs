//! One interval of a capture: the difference of two readings of the kernel maps, which only
//! ever grow during a capture (entries are added, never deleted), so counts and sums subtract
//! exactly. Maxima do not: the kernel keeps a running maximum per histogram, task and CPU. An
//! interval's maximum is exact when it rose during the interval; otherwise histograms bound it
//! by their highest grown bucket ([`Histogram::since`]), and tasks and CPUs by the lesser of
//! the earlier maximum and the interval's total (exact for a single wait).
use std::collections::HashMap;

use schedlat_common::{CpuStat, TaskStat};

use crate::{
    hist::Histogram,
    model::{GoRaw, ProgStats, RawSnapshot},
};

/// What happened between `prev` and `now` (two snapshots of the same loaded programs).
/// Entries with nothing new are left out; `map_entries` is `now`'s (occupancy, not a rate).
pub fn since(now: &RawSnapshot, prev: &RawSnapshot) -> RawSnapshot {
    let prev_hists: HashMap<_, _> = prev.hists.iter().map(|(k, h)| (*k, h)).collect();
    let hists = now
        .hists
        .iter()
        .map(|(k, h)| match prev_hists.get(k) {
            Some(p) => (*k, h.since(p)),
            None => (*k, h.clone()),
        })
        .filter(|(_, h)| h.count() > 0)
        .collect();

    let prev_tasks: HashMap<u32, &TaskStat> = prev.tasks.iter().map(|(t, s)| (*t, s)).collect();
    let tasks = now
        .tasks
        .iter()
        .filter_map(|(tid, s)| {
            let d = match prev_tasks.get(tid) {
                Some(p) => task_since(s, p),
                None => *s,
            };
            (d.runq_count > 0 || d.futex_count > 0).then_some((*tid, d))
        })
        .collect();

    let prev_pairs: HashMap<_, _> = prev.wake_pairs.iter().map(|(k, v)| (*k, v)).collect();
    let wake_pairs = now
        .wake_pairs
        .iter()
        .filter_map(|(k, v)| {
            let mut d = *v;
            d.count = v
                .count
                .saturating_sub(prev_pairs.get(k).map_or(0, |p| p.count));
            (d.count > 0).then_some((*k, d))
        })
        .collect();

    let cpus = now
        .cpus
        .iter()
        .enumerate()
        .map(|(i, c)| match prev.cpus.get(i) {
            Some(p) => cpu_since(c, p),
            None => *c,
        })
        .collect();

    RawSnapshot {
        hists,
        tasks,
        wake_pairs,
        cpus,
        drops: std::array::from_fn(|i| now.drops[i].saturating_sub(prev.drops[i])),
        futex_outcomes: std::array::from_fn(|i| {
            now.futex_outcomes[i].saturating_sub(prev.futex_outcomes[i])
        }),
        map_entries: now.map_entries.clone(),
        go: match (&now.go, &prev.go) {
            (Some(n), Some(p)) => Some(go_since(n, p)),
            (n, _) => n.clone(),
        },
        // The daemon's only (never in a capture's windows).
        preempts: Vec::new(),
        programs: now
            .programs
            .iter()
            .map(|(name, s)| {
                let p = prev
                    .programs
                    .iter()
                    .find(|(n, _)| n == name)
                    .map_or(ProgStats::default(), |(_, p)| *p);
                let d = ProgStats {
                    run_time_ns: s.run_time_ns.saturating_sub(p.run_time_ns),
                    run_count: s.run_count.saturating_sub(p.run_count),
                };
                (name.clone(), d)
            })
            .collect(),
        skipped: now.skipped.as_ref().map(|now_s| {
            now_s
                .iter()
                .map(|(name, n)| {
                    let p = prev
                        .skipped
                        .iter()
                        .flatten()
                        .find(|(x, _)| x == name)
                        .map_or(0, |(_, p)| *p);
                    (name.clone(), n.saturating_sub(p))
                })
                .collect()
        }),
    }
}

/// The interval's maximum of a running maximum, given the interval's count and total.
fn max_since(now_max: u64, prev_max: u64, count: u64, sum: u64) -> u64 {
    if now_max > prev_max {
        now_max
    } else if count == 0 {
        0
    } else {
        // A single wait is the total; several are each below both bounds.
        prev_max.min(sum)
    }
}

fn task_since(s: &TaskStat, p: &TaskStat) -> TaskStat {
    let TaskStat {
        tgid,
        _pad,
        cgroup_id,
        runq_count,
        runq_sum_ns,
        runq_max_ns,
        runq_preempted_count,
        runq_preempted_sum_ns,
        futex_count,
        futex_sum_ns,
        futex_max_ns,
        futex_timeouts,
        comm,
    } = *s;
    let runq_count = runq_count.saturating_sub(p.runq_count);
    let runq_sum_ns = runq_sum_ns.saturating_sub(p.runq_sum_ns);
    let futex_count = futex_count.saturating_sub(p.futex_count);
    let futex_sum_ns = futex_sum_ns.saturating_sub(p.futex_sum_ns);
    TaskStat {
        tgid,
        _pad,
        cgroup_id,
        runq_count,
        runq_sum_ns,
        runq_max_ns: max_since(runq_max_ns, p.runq_max_ns, runq_count, runq_sum_ns),
        runq_preempted_count: runq_preempted_count.saturating_sub(p.runq_preempted_count),
        runq_preempted_sum_ns: runq_preempted_sum_ns.saturating_sub(p.runq_preempted_sum_ns),
        futex_count,
        futex_sum_ns,
        futex_max_ns: max_since(futex_max_ns, p.futex_max_ns, futex_count, futex_sum_ns),
        futex_timeouts: futex_timeouts.saturating_sub(p.futex_timeouts),
        comm,
    }
}

fn cpu_since(c: &CpuStat, p: &CpuStat) -> CpuStat {
    let count = std::array::from_fn(|i| c.count[i].saturating_sub(p.count[i]));
    let sum_ns: [u64; 2] = std::array::from_fn(|i| c.sum_ns[i].saturating_sub(p.sum_ns[i]));
    CpuStat {
        count,
        sum_ns,
        max_ns: max_since(
            c.max_ns,
            p.max_ns,
            count[0] + count[1],
            sum_ns[0] + sum_ns[1],
        ),
    }
}

fn go_since(n: &GoRaw, p: &GoRaw) -> GoRaw {
    GoRaw {
        hists: n
            .hists
            .iter()
            .zip(p.hists.iter().map(Some).chain(std::iter::repeat(None)))
            .map(|(h, prev)| prev.map_or_else(|| h.clone(), |prev| h.since(prev)))
            .collect::<Vec<Histogram>>(),
        counts: std::array::from_fn(|i| n.counts[i].saturating_sub(p.counts[i])),
    }
}

#[cfg(test)]
mod tests {
    use schedlat_common::{HistKey, WakeCount, WakePair, drop_reason, kind};

    use super::*;

    fn key(cgroup_id: u64) -> HistKey {
        HistKey {
            cgroup_id,
            kind: kind::RUNQ_WOKEN,
            op: 0,
        }
    }

    fn task(runq: &[u64]) -> TaskStat {
        TaskStat {
            tgid: 1,
            runq_count: runq.len() as u64,
            runq_sum_ns: runq.iter().sum(),
            runq_max_ns: runq.iter().copied().max().unwrap_or(0),
            ..Default::default()
        }
    }

    #[test]
    fn intervals_add_up_to_the_whole() {
        let mut h1 = Histogram::default();
        h1.record(5_000);
        let mut h2 = h1.clone();
        h2.record(7_000_000);
        let mut drops = [0; drop_reason::COUNT];
        let first = RawSnapshot {
            hists: vec![(key(1), h1.clone())],
            tasks: vec![(10, task(&[5_000])), (11, task(&[900]))],
            wake_pairs: vec![(
                WakePair {
                    waker_tid: 10,
                    wakee_tid: 11,
                    waker_cpu: 0,
                },
                WakeCount {
                    count: 3,
                    ..Default::default()
                },
            )],
            cpus: vec![CpuStat {
                count: [1, 0],
                sum_ns: [5_000, 0],
                max_ns: 5_000,
            }],
            drops,
            skipped: Some(vec![("sched_switch".into(), 1)]),
            ..Default::default()
        };
        drops[0] = 2;
        let second = RawSnapshot {
            hists: vec![(key(1), h2.clone()), (key(2), h1.clone())],
            tasks: vec![
                (10, task(&[5_000, 7_000_000])),
                (11, task(&[900])),
                (12, task(&[1_000, 2_000])),
            ],
            wake_pairs: first.wake_pairs.clone(),
            cpus: vec![CpuStat {
                count: [4, 1],
                sum_ns: [7_008_000, 100],
                max_ns: 7_000_000,
            }],
            drops,
            map_entries: vec![("TASK_STATS", 3, 16)],
            skipped: Some(vec![("sched_switch".into(), 4), ("sched_waking".into(), 1)]),
            ..Default::default()
        };
        let d = since(&second, &first);
        // Histograms: key 1 grew by the 7 ms wait, key 2 is new; nothing unchanged is kept.
        assert_eq!(d.hists.len(), 2);
        let h = |k| &d.hists.iter().find(|(x, _)| *x == key(k)).unwrap().1;
        assert_eq!(
            (h(1).count(), h(1).sum_ns, h(1).max_ns),
            (1, 7_000_000, 7_000_000)
        );
        assert_eq!(h(2), &h1);
        // Tasks: 10 waited once more (a new max: exact), 11 not at all (left out), 12 is new.
        let t = |tid| d.tasks.iter().find(|(x, _)| *x == tid).map(|(_, s)| *s);
        let t10 = t(10).unwrap();
        assert_eq!(
            (t10.runq_count, t10.runq_sum_ns, t10.runq_max_ns),
            (1, 7_000_000, 7_000_000)
        );
        assert!(t(11).is_none());
        assert_eq!(t(12).unwrap().runq_max_ns, 2_000);
        assert!(d.wake_pairs.is_empty(), "no new wakeups");
        assert_eq!(d.cpus[0].count, [3, 1]);
        assert_eq!(d.cpus[0].sum_ns, [7_003_000, 100]);
        assert_eq!(d.cpus[0].max_ns, 7_000_000);
        assert_eq!(d.drops[0], 2);
        // The kernel's skipped runs by program, a program new since then in full.
        assert_eq!(
            d.skipped,
            Some(vec![("sched_switch".into(), 3), ("sched_waking".into(), 1)])
        );
        assert_eq!(d.map_entries, second.map_entries);
        // Adding the intervals back gives the whole.
        let mut whole = h1.clone();
        whole.merge(&h(1).clone());
        assert_eq!(whole.buckets, h2.buckets);
    }

    #[test]
    fn an_interval_below_the_running_max_is_bounded() {
        let before = task(&[9_000_000, 1_000]);
        let after = task(&[9_000_000, 1_000, 2_000, 3_000]);
        let d = task_since(&after, &before);
        assert_eq!((d.runq_count, d.runq_sum_ns), (2, 5_000));
        // Not exact (the kernel kept 9 ms), but never above the interval's total.
        assert_eq!(d.runq_max_ns, 5_000);
        let one = task_since(&task(&[9_000_000, 1_000, 2_000]), &before);
        assert_eq!(one.runq_max_ns, 2_000, "a single wait is exact");
    }
}
