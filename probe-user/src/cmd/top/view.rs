//! What `schedlat top` shows: rates over the last interval per cgroup, task and CPU, from one
//! interval's report (report::since, report::build), sorted by a key, drawn with ratatui.
//! Pure: rendered into any backend (unit tests use ratatui's TestBackend).
use std::collections::HashMap;

use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Paragraph, Row, Table},
};

use crate::{
    hist::{HistSummary, fmt_ns},
    model::SortKey,
    report::CaptureReport,
};

/// Running maxima since `top` started (the kernel's own, read from the cumulative maps).
#[derive(Clone, Debug, Default)]
pub struct MaxSinceStart {
    pub tasks: HashMap<u32, u64>,
    /// Indexed by CPU number.
    pub cpus: Vec<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rates {
    pub waits_per_s: f64,
    /// Seconds spent waiting on a run queue per second (summed over tasks: can exceed 1).
    pub delay_per_s: f64,
    /// Share of the delay after preemption (vs after a wakeup), 0..=1.
    pub preempted: f64,
    pub max_ns: u64,
    /// Futex waits per second and seconds blocked in futex per second.
    pub futex_per_s: f64,
    pub futex_blocked_per_s: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CgroupLine {
    pub cgroup: String,
    pub rates: Rates,
    pub p99_ns: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TaskLine {
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
    pub rates: Rates,
    pub avg_ns: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CpuLine {
    pub cpu: u32,
    pub rates: Rates,
}

/// One screen's data.
#[derive(Clone, Debug, PartialEq)]
pub struct TopModel {
    pub scope: String,
    pub interval_s: f64,
    /// Wall-clock end of the interval (RFC 3339).
    pub at: String,
    pub runqueue: HistSummary,
    pub futex: HistSummary,
    pub cgroups: Vec<CgroupLine>,
    pub tasks: Vec<TaskLine>,
    pub cpus: Vec<CpuLine>,
    pub dropped: u64,
}

fn share(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// The screen of one interval's report `r`. `max_since_start`: each task's (by tid) and each
/// CPU's (by CPU number) largest run-queue wait since `top` started: exact, unlike an
/// interval's, which the kernel's running maxima only bound.
pub fn model(r: &CaptureReport, max_since_start: &MaxSinceStart, scope: &str) -> TopModel {
    let s = r.duration_s.max(1e-9);
    let cgroups = r
        .cgroups
        .iter()
        .map(|c| {
            let pre = r
                .tasks
                .iter()
                .filter(|t| t.cgroup == c.cgroup)
                .map(|t| t.runqueue_preempted_sum_ns)
                .sum::<u64>();
            let blocked = r
                .tasks
                .iter()
                .filter(|t| t.cgroup == c.cgroup)
                .map(|t| t.futex_sum_ns)
                .sum::<u64>();
            CgroupLine {
                cgroup: c.cgroup.clone(),
                p99_ns: c.runqueue.p99_ns,
                rates: Rates {
                    waits_per_s: c.runqueue.count as f64 / s,
                    delay_per_s: c.runqueue.sum_ns as f64 / 1e9 / s,
                    preempted: share(pre, c.runqueue.sum_ns),
                    max_ns: c.runqueue.max_ns,
                    futex_per_s: c.futex_count as f64 / s,
                    futex_blocked_per_s: blocked as f64 / 1e9 / s,
                },
            }
        })
        .collect();
    let tasks = r
        .tasks
        .iter()
        .map(|t| TaskLine {
            tid: t.tid,
            pid: t.pid,
            comm: t.comm.clone(),
            avg_ns: t.runqueue_sum_ns / t.runqueue_count.max(1),
            rates: Rates {
                waits_per_s: t.runqueue_count as f64 / s,
                delay_per_s: t.runqueue_sum_ns as f64 / 1e9 / s,
                preempted: share(t.runqueue_preempted_sum_ns, t.runqueue_sum_ns),
                max_ns: max_since_start
                    .tasks
                    .get(&t.tid)
                    .copied()
                    .unwrap_or(t.runqueue_max_ns),
                futex_per_s: t.futex_count as f64 / s,
                futex_blocked_per_s: t.futex_sum_ns as f64 / 1e9 / s,
            },
        })
        .collect();
    let cpus = r
        .per_cpu
        .iter()
        .map(|c| CpuLine {
            cpu: c.cpu,
            rates: Rates {
                waits_per_s: c.count as f64 / s,
                delay_per_s: c.sum_ns as f64 / 1e9 / s,
                preempted: share(c.preempted_count, c.count),
                max_ns: max_since_start
                    .cpus
                    .get(c.cpu as usize)
                    .copied()
                    .unwrap_or(c.max_ns),
                futex_per_s: 0.0,
                futex_blocked_per_s: 0.0,
            },
        })
        .collect();
    TopModel {
        scope: scope.to_string(),
        interval_s: r.duration_s,
        at: r.interval_end.clone(),
        runqueue: r.runqueue.all.clone(),
        futex: r.futex.all.clone(),
        cgroups,
        tasks,
        cpus,
        dropped: r.dropped.get("total").copied().unwrap_or(0),
    }
}

fn key(r: &Rates, k: SortKey) -> f64 {
    match k {
        SortKey::Delay => r.delay_per_s,
        SortKey::Waits => r.waits_per_s,
        SortKey::Max => r.max_ns as f64,
        SortKey::Preempted => r.preempted,
        SortKey::Futex => r.futex_blocked_per_s,
    }
}

/// Sort cgroups and tasks by `k`, largest first (ties: by delay, then name / tid).
pub fn sort(m: &mut TopModel, k: SortKey) {
    let cmp = |a: &Rates, b: &Rates| {
        key(b, k)
            .total_cmp(&key(a, k))
            .then(b.delay_per_s.total_cmp(&a.delay_per_s))
    };
    m.cgroups
        .sort_by(|a, b| cmp(&a.rates, &b.rates).then(a.cgroup.cmp(&b.cgroup)));
    m.tasks
        .sort_by(|a, b| cmp(&a.rates, &b.rates).then(a.tid.cmp(&b.tid)));
}

fn pct(x: f64) -> String {
    format!("{:.0}%", x * 100.0)
}

fn ms_per_s(x: f64) -> String {
    format!("{:.1}", x * 1e3)
}

/// Draw `m` (None: before the first interval) sorted by `k`.
pub fn draw(f: &mut Frame, m: Option<&TopModel>, k: SortKey, every: &str) {
    let header_style = Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED);
    let sel = |c: SortKey| if c == k { "*" } else { "" };
    let Some(m) = m else {
        f.render_widget(
            Paragraph::new(format!(
                "schedlat top: attached; the first figures come after {every} (q quits)"
            )),
            f.area(),
        );
        return;
    };
    let ncg = m.cgroups.len().min(8) as u16;
    let ncpu = m.cpus.len().min(16) as u16;
    let [head, cg, tasks, cpus] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(ncg + 3),
        Constraint::Min(5),
        Constraint::Length(ncpu + 3),
    ])
    .areas(f.area());
    let r = &m.runqueue;
    f.render_widget(
        Paragraph::new(vec![
            Line::from(format!(
                "schedlat top: {}, every {every}, at {} (UTC); sort: {:?}; keys: d delay, w waits, \
                 m max, p preempted, f futex; q quits",
                m.scope,
                m.at.get(11..19).unwrap_or(&m.at),
                k
            )),
            Line::from(format!(
                "run-queue: {:.0} waits/s, {} ms waited/s, p50 {} p99 {} max {}   futex: {:.0} \
                 waits/s   dropped: {}",
                r.count as f64 / m.interval_s.max(1e-9),
                ms_per_s(r.sum_ns as f64 / 1e9 / m.interval_s.max(1e-9)),
                fmt_ns(r.p50_ns),
                fmt_ns(r.p99_ns),
                fmt_ns(r.max_ns),
                m.futex.count as f64 / m.interval_s.max(1e-9),
                m.dropped
            )),
        ]),
        head,
    );
    let cg_rows = m.cgroups.iter().take(ncg as usize).map(|c| {
        Row::new(vec![
            ms_per_s(c.rates.delay_per_s),
            format!("{:.0}", c.rates.waits_per_s),
            fmt_ns(c.p99_ns),
            fmt_ns(c.rates.max_ns),
            pct(c.rates.preempted),
            format!("{:.0}", c.rates.futex_per_s),
            ms_per_s(c.rates.futex_blocked_per_s),
            c.cgroup.clone(),
        ])
    });
    let widths = [
        Constraint::Length(10),
        Constraint::Length(8),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Length(8),
        Constraint::Length(11),
        Constraint::Min(10),
    ];
    f.render_widget(
        Table::new(cg_rows, widths)
            .header(
                Row::new(vec![
                    format!("{}MS/S", sel(SortKey::Delay)),
                    format!("{}WAITS/S", sel(SortKey::Waits)),
                    "P99".to_string(),
                    format!("{}MAX", sel(SortKey::Max)),
                    format!("{}PRE", sel(SortKey::Preempted)),
                    "FUTEX/S".to_string(),
                    format!("{}FUTEX MS/S", sel(SortKey::Futex)),
                    "CGROUP".to_string(),
                ])
                .style(header_style),
            )
            .block(Block::bordered().title(" cgroups: run-queue delay (ms waited per s) ")),
        cg,
    );
    let task_rows = m.tasks.iter().map(|t| {
        Row::new(vec![
            t.tid.to_string(),
            t.pid.to_string(),
            t.comm.clone(),
            ms_per_s(t.rates.delay_per_s),
            format!("{:.0}", t.rates.waits_per_s),
            fmt_ns(t.avg_ns),
            fmt_ns(t.rates.max_ns),
            pct(t.rates.preempted),
            format!("{:.0}", t.rates.futex_per_s),
            ms_per_s(t.rates.futex_blocked_per_s),
        ])
    });
    f.render_widget(
        Table::new(
            task_rows,
            [
                Constraint::Length(8),
                Constraint::Length(8),
                Constraint::Length(16),
                Constraint::Length(10),
                Constraint::Length(8),
                Constraint::Length(9),
                Constraint::Length(9),
                Constraint::Length(6),
                Constraint::Length(8),
                Constraint::Length(11),
            ],
        )
        .header(
            Row::new(vec![
                "TID".to_string(),
                "PID".to_string(),
                "COMM".to_string(),
                format!("{}MS/S", sel(SortKey::Delay)),
                format!("{}WAITS/S", sel(SortKey::Waits)),
                "AVG".to_string(),
                format!("{}MAX", sel(SortKey::Max)),
                format!("{}PRE", sel(SortKey::Preempted)),
                "FUTEX/S".to_string(),
                format!("{}FUTEX MS/S", sel(SortKey::Futex)),
            ])
            .style(header_style),
        )
        .block(Block::bordered().title(format!(
            " tasks ({} active; MAX since top started) ",
            m.tasks.len()
        ))),
        tasks,
    );
    let cpu_rows = m.cpus.iter().take(ncpu as usize).map(|c| {
        Row::new(vec![
            c.cpu.to_string(),
            ms_per_s(c.rates.delay_per_s),
            format!("{:.0}", c.rates.waits_per_s),
            fmt_ns(c.rates.max_ns),
            pct(c.rates.preempted),
        ])
    });
    f.render_widget(
        Table::new(
            cpu_rows,
            [
                Constraint::Length(5),
                Constraint::Length(10),
                Constraint::Length(8),
                Constraint::Length(9),
                Constraint::Length(12),
            ],
        )
        .header(Row::new(vec!["CPU", "MS/S", "WAITS/S", "MAX", "PREEMPTED"]).style(header_style))
        .block(
            Block::bordered().title(" per CPU (PREEMPTED: share of waits; MAX since top started) "),
        ),
        cpus,
    );
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};
    use schedlat_common::{COMM_LEN, HistKey, TaskStat, kind};

    use super::*;
    use crate::{
        hist::Histogram,
        model::RawSnapshot,
        report::{Filter, ReportInput, build},
    };

    fn comm(s: &str) -> [u8; COMM_LEN] {
        let mut c = [0; COMM_LEN];
        c[..s.len()].copy_from_slice(s.as_bytes());
        c
    }

    fn report() -> CaptureReport {
        let mut h = Histogram::default();
        h.record(2_000_000);
        let task = |tgid, runq: u64, sum, pre, futex: u64, fsum, name| TaskStat {
            tgid,
            cgroup_id: 1,
            runq_count: runq,
            runq_sum_ns: sum,
            runq_max_ns: sum / runq.max(1),
            runq_preempted_count: runq,
            runq_preempted_sum_ns: pre,
            futex_count: futex,
            futex_sum_ns: fsum,
            comm: comm(name),
            ..Default::default()
        };
        let snap = RawSnapshot {
            hists: vec![(
                HistKey {
                    cgroup_id: 1,
                    kind: kind::RUNQ_PREEMPTED,
                    op: 0,
                },
                h,
            )],
            tasks: vec![
                (10, task(10, 100, 500_000_000, 500_000_000, 0, 0, "spinner")),
                (11, task(11, 5, 1_000_000, 0, 40, 900_000_000, "sleeper")),
            ],
            ..Default::default()
        };
        build(
            &snap,
            ReportInput {
                duration_s: 1.0,
                window: (std::time::UNIX_EPOCH, std::time::UNIX_EPOCH),
                filter: Filter::default(),
                slow_events: &[],
                slow_threshold_ns: 1,
                slow_dropped_user: 0,
            },
            |_| "/".into(),
        )
    }

    fn screen(k: SortKey) -> Vec<String> {
        let max = MaxSinceStart {
            tasks: HashMap::from([(10, 9_000_000)]),
            cpus: Vec::new(),
        };
        let mut m = model(&report(), &max, "host-wide");
        sort(&mut m, k);
        let mut t = Terminal::new(TestBackend::new(120, 30)).unwrap();
        t.draw(|f| draw(f, Some(&m), k, "1s")).unwrap();
        let buf = t.backend().buffer().clone();
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect()
    }

    /// The first task row under the tasks table's header.
    fn first_task(lines: &[String]) -> String {
        let h = lines.iter().position(|l| l.contains("TID")).unwrap();
        lines[h + 1].clone()
    }

    #[test]
    fn rates_per_second_and_the_sort_key_picks_the_top_task() {
        let m = model(&report(), &MaxSinceStart::default(), "host-wide");
        let spinner = m.tasks.iter().find(|t| t.tid == 10).unwrap();
        assert_eq!(spinner.rates.delay_per_s, 0.5);
        assert_eq!(spinner.rates.preempted, 1.0);
        assert_eq!(spinner.avg_ns, 5_000_000);

        let by_delay = screen(SortKey::Delay);
        assert!(first_task(&by_delay).contains("spinner"), "{by_delay:#?}");
        assert!(first_task(&by_delay).contains("500.0"), "ms waited per s");
        assert!(first_task(&by_delay).contains("9.00ms"), "max since start");
        let by_futex = screen(SortKey::Futex);
        assert!(first_task(&by_futex).contains("sleeper"), "{by_futex:#?}");
        assert!(by_futex.iter().any(|l| l.contains("*FUTEX MS/S")));
    }
}
