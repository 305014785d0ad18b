//! What `schedlat top` shows: rates over the last interval per cgroup, task and CPU, from one
//! interval's report (report::since, report::build), sorted by a key, drawn with ratatui; with
//! `--go`, Go processes from their runtime's own statistics (crate::goruntime::live).
//! Pure: rendered into any backend (unit tests use ratatui's TestBackend).
use std::collections::HashMap;

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Paragraph, Row, Table},
};

use crate::{
    go::capture::{gc_window, window},
    goruntime::live::Stats,
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

/// One Go process (`top --go`): its runtime's own statistics, read from its memory, and the
/// growth of its cumulative histograms over the interval.
#[derive(Clone, Debug, PartialEq)]
pub struct GoLine {
    pub pid: u32,
    /// The executable's file name.
    pub binary: String,
    pub go_version: String,
    pub gomaxprocs: i32,
    /// CPUs the process may use (cgroup quota, affinity); None where unknown.
    pub usable_cpus: Option<f64>,
    /// runtime.NumGoroutine.
    pub goroutines: Option<i64>,
    /// Go >= 1.26: goroutines runnable, running, waiting, not in Go.
    pub states: Option<[u64; 4]>,
    pub threads: Option<u64>,
    /// The runtime's sampled scheduling latency (1 transition in 8) over the interval; None
    /// before a process's second reading.
    pub sched: Option<(u64, Option<u64>)>,
    /// GC stop-the-world pauses over the interval: how many, the longest (a bucket's upper
    /// bound on Go >= 1.22, exact before); None before a second reading.
    pub gc: Option<(u64, Option<u64>)>,
}

impl GoLine {
    /// The line for reading `now` of a process, `prev` its reading an interval earlier.
    pub fn new(binary: &str, prev: Option<&Stats>, now: &Stats, usable_cpus: Option<f64>) -> Self {
        let sched = prev.map(|p| {
            let w = window(&p.sched_latencies, &now.sched_latencies);
            (w.count, w.p99_ns)
        });
        let gc = prev.and_then(|p| {
            match (&p.stw_pauses, &now.stw_pauses, &p.gc_pauses, &now.gc_pauses) {
                (Some(a), Some(b), _, _) => {
                    let w = window(&a.total_gc, &b.total_gc);
                    Some((w.count, w.max_ns))
                }
                (_, _, Some(a), Some(b)) => {
                    let w = gc_window(a, b);
                    Some((w.count, w.max_ns))
                }
                _ => None,
            }
        });
        GoLine {
            pid: now.pid,
            binary: binary.to_string(),
            go_version: now.go_version.clone(),
            gomaxprocs: now.gomaxprocs,
            usable_cpus,
            goroutines: now.goroutines.as_ref().map(|g| g.num_goroutine),
            states: now
                .sched_stats
                .as_ref()
                .map(|t| [t.runnable, t.running, t.waiting, t.not_in_go]),
            threads: now.sched_stats.as_ref().map(|t| t.threads),
            sched,
            gc,
        }
    }

    /// GOMAXPROCS above the CPUs the process may use (half a CPU of slack, as go-stats warns).
    pub fn oversubscribed(&self) -> bool {
        self.usable_cpus
            .is_some_and(|c| f64::from(self.gomaxprocs) > c + 0.5)
    }
}

/// The Go panel of `top --go`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GoPanel {
    pub lines: Vec<GoLine>,
    /// Selected Go processes left out by the cap, and processes whose executable is still
    /// being analysed.
    pub skipped: usize,
    pub pending: usize,
    /// Failed reads since top started (stripped or unsupported binaries, permission, ...),
    /// by reason.
    pub errors: Vec<(&'static str, u64)>,
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
    /// With `--go`.
    pub go: Option<GoPanel>,
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
        go: None,
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

/// One column of a table: its header and width.
fn col(header: impl Into<String>, width: u16) -> (String, Constraint) {
    (header.into(), Constraint::Length(width))
}

/// The rate columns the cgroup and task tables share, the sort key's header starred; `third`
/// heads a latency of the row's own (P99, AVG).
fn rate_columns(k: SortKey, third: &str) -> [(String, Constraint); 7] {
    let sel = |c: SortKey, header: &str| format!("{}{header}", if c == k { "*" } else { "" });
    [
        col(sel(SortKey::Delay, "MS/S"), 10),
        col(sel(SortKey::Waits, "WAITS/S"), 8),
        col(third, 9),
        col(sel(SortKey::Max, "MAX"), 9),
        col(sel(SortKey::Preempted, "PRE"), 6),
        col("FUTEX/S", 8),
        col(sel(SortKey::Futex, "FUTEX MS/S"), 11),
    ]
}

/// A row's cells under [`rate_columns`], `third_ns` in the third.
fn rate_cells(r: &Rates, third_ns: u64) -> [String; 7] {
    [
        ms_per_s(r.delay_per_s),
        format!("{:.0}", r.waits_per_s),
        fmt_ns(third_ns),
        fmt_ns(r.max_ns),
        pct(r.preempted),
        format!("{:.0}", r.futex_per_s),
        ms_per_s(r.futex_blocked_per_s),
    ]
}

/// A bordered table titled `title` with `columns` (header, width) over `rows`.
fn table<'a>(
    f: &mut Frame,
    area: Rect,
    title: String,
    columns: impl IntoIterator<Item = (String, Constraint)>,
    rows: impl IntoIterator<Item = Row<'a>>,
) {
    let (headers, widths): (Vec<String>, Vec<Constraint>) = columns.into_iter().unzip();
    let header_style = Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED);
    f.render_widget(
        Table::new(rows, widths)
            .header(Row::new(headers).style(header_style))
            .block(Block::bordered().title(title)),
        area,
    );
}

/// Draw `m` (None: before the first interval) sorted by `k`.
pub fn draw(f: &mut Frame, m: Option<&TopModel>, k: SortKey, every: &str) {
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
    // The Go panel (--go) takes a header line more than its rows; none without --go.
    let ngo =
        m.go.as_ref()
            .map_or(0, |g| g.lines.len().clamp(1, 8) as u16 + 3);
    let [head, cg, tasks, go, cpus] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Length(ncg + 3),
        Constraint::Min(5),
        Constraint::Length(ngo),
        Constraint::Length(ncpu + 3),
    ])
    .areas(f.area());
    if let Some(g) = &m.go {
        draw_go(f, g, go);
    }
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
        let cells = rate_cells(&c.rates, c.p99_ns);
        Row::new(cells.into_iter().chain([c.cgroup.clone()]))
    });
    table(
        f,
        cg,
        " cgroups: run-queue delay (ms waited per s) ".into(),
        rate_columns(k, "P99")
            .into_iter()
            .chain([("CGROUP".to_string(), Constraint::Min(10))]),
        cg_rows,
    );
    let task_rows = m.tasks.iter().map(|t| {
        let ids = [t.tid.to_string(), t.pid.to_string(), t.comm.clone()];
        Row::new(ids.into_iter().chain(rate_cells(&t.rates, t.avg_ns)))
    });
    let ids = [col("TID", 8), col("PID", 8), col("COMM", 16)];
    table(
        f,
        tasks,
        format!(" tasks ({} active; MAX since top started) ", m.tasks.len()),
        ids.into_iter().chain(rate_columns(k, "AVG")),
        task_rows,
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
    table(
        f,
        cpus,
        " per CPU (PREEMPTED: share of waits; MAX since top started) ".into(),
        [
            col("CPU", 5),
            col("MS/S", 10),
            col("WAITS/S", 8),
            col("MAX", 9),
            col("PREEMPTED", 12),
        ],
        cpu_rows,
    );
}

fn opt_ns(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), fmt_ns)
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn draw_go(f: &mut Frame, g: &GoPanel, area: Rect) {
    let rows = g.lines.iter().take(8).map(|l| {
        let [runnable, running, waiting, _] = l.states.map_or([None; 4], |s| s.map(Some));
        Row::new(vec![
            l.pid.to_string(),
            l.binary.clone(),
            l.go_version.clone(),
            format!(
                "{}{}",
                l.gomaxprocs,
                if l.oversubscribed() { "!" } else { "" }
            ),
            l.usable_cpus
                .map_or_else(|| "-".into(), |c| format!("{c:.2}")),
            opt(l.goroutines),
            opt(runnable),
            opt(running),
            opt(waiting),
            opt(l.threads),
            l.sched.map_or_else(
                || "-".into(),
                |(n, p99)| if n == 0 { "-".into() } else { opt_ns(p99) },
            ),
            l.gc.map_or_else(|| "-".into(), |(n, _)| n.to_string()),
            l.gc.map_or_else(|| "-".into(), |(_, max)| opt_ns(max)),
        ])
    });
    let mut title = format!(
        " Go processes ({}; runtime's own statistics; ! GOMAXPROCS above the CPUs it may use",
        g.lines.len()
    );
    if g.skipped > 0 {
        title.push_str(&format!("; {} more not shown", g.skipped));
    }
    if g.pending > 0 {
        title.push_str(&format!("; {} being analysed", g.pending));
    }
    if !g.errors.is_empty() {
        let e: Vec<String> = g.errors.iter().map(|(r, n)| format!("{r} {n}")).collect();
        title.push_str(&format!("; not read: {}", e.join(", ")));
    }
    title.push_str(") ");
    let columns = [
        col("PID", 8),
        col("GO BINARY", 16),
        col("VERSION", 10),
        col("GOMAXPROCS", 10),
        col("CPUS", 6),
        col("GOROUTINES", 10),
        col("RUNNABLE", 8),
        col("RUNNING", 7),
        col("WAITING", 7),
        col("THREADS", 7),
        col("SCHED P99", 10),
        col("GC", 5),
        col("GC MAX", 9),
    ];
    table(f, area, title, columns, rows);
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};
    use schedlat_common::{HistKey, TaskStat, kind};

    use super::*;
    use crate::{
        hist::Histogram,
        model::RawSnapshot,
        report::{
            build,
            tests::{comm, one_second},
        },
    };

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
        build(&snap, one_second(), |_| "/".into())
    }

    fn screen(k: SortKey) -> Vec<String> {
        let max = MaxSinceStart {
            tasks: HashMap::from([(10, 9_000_000)]),
            cpus: Vec::new(),
        };
        let mut m = model(&report(), &max, "host-wide");
        sort(&mut m, k);
        drawn(&m, k, 120, 30)
    }

    /// The lines of `m` drawn sorted by `k` on a `width` x `height` terminal.
    fn drawn(m: &TopModel, k: SortKey, width: u16, height: u16) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(width, height)).unwrap();
        t.draw(|f| draw(f, Some(m), k, "1s")).unwrap();
        let buf = t.backend().buffer();
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect()
            })
            .collect()
    }

    /// The first task row under the tasks table's header.
    fn first_task(lines: &[String]) -> String {
        let h = lines.iter().position(|l| l.contains("TID")).unwrap();
        lines[h + 1].clone()
    }

    /// The Go panel: one row per process with what the runtime said, `!` where GOMAXPROCS
    /// exceeds the CPUs the process may use, `-` for what a release does not keep.
    #[test]
    fn go_panel_shows_each_process_and_flags_oversubscription() {
        let mut m = model(&report(), &MaxSinceStart::default(), "host-wide");
        let line = |pid, binary: &str, maxprocs, cpus, states| GoLine {
            pid,
            binary: binary.into(),
            go_version: "go1.27.3".into(),
            gomaxprocs: maxprocs,
            usable_cpus: cpus,
            goroutines: Some(42),
            states,
            threads: states.map(|_| 7),
            sched: Some((16, Some(1_500_000))),
            gc: Some((2, Some(350_000))),
        };
        m.go = Some(GoPanel {
            lines: vec![
                line(4242, "gosched", 8, Some(2.0), Some([5, 2, 35, 0])),
                line(4343, "httpserver", 2, None, None),
            ],
            errors: vec![("stripped", 1)],
            ..Default::default()
        });
        let lines = drawn(&m, SortKey::Delay, 160, 40);
        let row = |pid: &str| {
            lines
                .iter()
                .find(|l| l.contains(pid))
                .unwrap_or_else(|| panic!("no row for {pid}: {lines:#?}"))
                .split_whitespace()
                .map(|w| w.trim_matches('│'))
                .filter(|w| !w.is_empty())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            row("4242"),
            [
                "4242", "gosched", "go1.27.3", "8!", "2.00", "42", "5", "2", "35", "7", "1.50ms",
                "2", "350.0µs"
            ]
        );
        assert_eq!(
            row("4343"),
            [
                "4343",
                "httpserver",
                "go1.27.3",
                "2",
                "-",
                "42",
                "-",
                "-",
                "-",
                "-",
                "1.50ms",
                "2",
                "350.0µs"
            ]
        );
        assert!(
            lines
                .iter()
                .any(|l| l.contains("Go processes (2;") && l.contains("not read: stripped 1")),
            "{lines:#?}"
        );
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
