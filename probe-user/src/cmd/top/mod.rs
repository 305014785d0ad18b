//! `schedlat top`: a live terminal view, refreshed every interval, of run-queue delay per
//! cgroup, task and CPU and futex waits, from the capture's programs; with `--go`, Go
//! processes from their runtime's own statistics (the daemon's watcher: crate::go::watch).
//! `q` (or Esc, Ctrl-C) quits: the terminal is restored and the programs detach as the process
//! exits.
use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Instant, SystemTime},
};

use anyhow::Context as _;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use crate::{
    cli::{Cli, TopArgs},
    cmd::capture::resolve_pid,
    config::GoConfig,
    go::watch::GoWatcher,
    goruntime::live::Stats,
    host::{
        cgroup::{CgroupNames, v2_mount},
        cpulimit,
    },
    kernel::probes::{ProbeOptions, Probes},
    model::{RawSnapshot, SortKey, UsageError},
    report::{self, Filter, ReportInput},
};

pub mod view;

pub fn run(cli: &Cli, a: &TopArgs) -> anyhow::Result<()> {
    if !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        return Err(UsageError(
            "schedlat top draws on a terminal and stdout is not one; for pipes and files use \
             `schedlat capture --interval 1s` (text or --format json)"
                .into(),
        )
        .into());
    }
    let mut pids = Vec::new();
    for &p in &a.pids {
        let t = resolve_pid(p)?;
        if !pids.contains(&t) {
            pids.push(t);
        }
    }
    let mut names = CgroupNames::new(v2_mount().map_err(|e| UsageError(e.to_string()))?);
    let filter_cgroups = match &a.cgroup {
        Some(path) => names
            .subtree_ids(path)
            .map_err(|e| UsageError(e.to_string()))?,
        None => Vec::new(),
    };
    let opts = ProbeOptions {
        track_tasks: true,
        futex: a.futex,
        filter_tgids: pids.clone(),
        filter_cgroups,
        tracefs: cli.tracefs.clone(),
        btf: cli.btf.clone(),
        hash_stamps: cli.hash_stamps,
        ..Default::default()
    };
    let probes = Probes::load(&opts).context("starting schedlat top")?;
    let scope = match (pids.is_empty(), &a.cgroup) {
        (true, None) => "host-wide".to_string(),
        (_, cg) => {
            let mut s: Vec<String> = pids.iter().map(|p| format!("pid {p}")).collect();
            s.extend(cg.iter().map(|c| format!("cgroup {c}")));
            s.join(", ")
        }
    };
    let mut go = a.go.then(|| GoView::new(&pids, a.cgroup.as_deref()));
    if let Some(g) = go.as_mut() {
        // A first reading, so the first screen has an interval's growth.
        g.read();
    }
    let filter = Filter {
        pids,
        cgroup: a.cgroup.clone(),
    };
    // Alternate screen and raw mode; ratatui's panic hook restores the terminal on a panic.
    let mut terminal = ratatui::init();
    let res = ui(&mut terminal, probes, a, &scope, &filter, &mut names, go);
    ratatui::restore();
    res
}

fn ui(
    terminal: &mut ratatui::DefaultTerminal,
    probes: Probes,
    a: &TopArgs,
    scope: &str,
    filter: &Filter,
    names: &mut CgroupNames,
    mut go: Option<GoView>,
) -> anyhow::Result<()> {
    let every = humantime::format_duration(a.interval).to_string();
    let mut sort = a.sort;
    let mut prev = RawSnapshot::default();
    let mut start = (Instant::now(), SystemTime::now());
    let mut screen: Option<view::TopModel> = None;
    loop {
        terminal
            .draw(|f| view::draw(f, screen.as_ref(), sort, &every))
            .context("drawing on the terminal")?;
        let due = start.0 + a.interval;
        let wait = due.saturating_duration_since(Instant::now());
        if !wait.is_zero() && event::poll(wait).context("reading the terminal")? {
            if let Event::Key(k) = event::read().context("reading the terminal")? {
                if k.kind != KeyEventKind::Press {
                    continue;
                }
                let key = match k.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(());
                    }
                    KeyCode::Char('d') => Some(SortKey::Delay),
                    KeyCode::Char('w') => Some(SortKey::Waits),
                    KeyCode::Char('m') => Some(SortKey::Max),
                    KeyCode::Char('p') => Some(SortKey::Preempted),
                    KeyCode::Char('f') => Some(SortKey::Futex),
                    _ => None,
                };
                if let Some(k) = key {
                    sort = k;
                    if let Some(m) = screen.as_mut() {
                        view::sort(m, sort);
                    }
                }
            }
            // Keys and resizes redraw at once; figures change only when the interval is up.
            continue;
        }
        let now = probes.snapshot().context("reading the maps")?;
        let at = (Instant::now(), SystemTime::now());
        let delta = report::since(&now, &prev);
        let r = report::build(
            &delta,
            ReportInput {
                duration_s: (at.0 - start.0).as_secs_f64(),
                window: (start.1, at.1),
                filter: filter.clone(),
                slow_events: &[],
                slow_threshold_ns: 0,
                slow_dropped_user: 0,
            },
            |id| names.label(id),
        );
        // Each task's running maximum since top started: exact, unlike an interval's.
        let max_since_start = view::MaxSinceStart {
            tasks: now.tasks.iter().map(|(t, s)| (*t, s.runq_max_ns)).collect(),
            cpus: now.cpus.iter().map(|c| c.max_ns).collect(),
        };
        let mut m = view::model(&r, &max_since_start, scope);
        m.go = go.as_mut().map(GoView::read);
        view::sort(&mut m, sort);
        screen = Some(m);
        prev = now;
        start = at;
    }
}

/// Most Go processes `top --go` reads per interval.
const MAX_GO: usize = 64;

/// The Go processes of `top --go`: found and read as the daemon's `[go]` does (pidfd and
/// identity checks, executables analysed once in the background), one line per process.
struct GoView {
    watcher: GoWatcher,
    /// Each process's previous reading (by pid; a pid reused by another program is told by
    /// the watcher's identity checks and by the runtime's counters, which only grow).
    prev: HashMap<u32, Stats>,
    mount: Option<PathBuf>,
}

impl GoView {
    fn new(pids: &[u32], cgroup: Option<&str>) -> Self {
        let cfg = GoConfig {
            enabled: true,
            // The watcher's cgroup selector takes /proc/PID/cgroup's form: a leading slash.
            cgroups: cgroup
                .map(|c| format!("/{}", c.trim_start_matches('/')))
                .into_iter()
                .collect(),
            max_processes: MAX_GO,
            ..Default::default()
        };
        Self {
            watcher: GoWatcher::for_top(cfg, (!pids.is_empty()).then(|| pids.to_vec())),
            prev: HashMap::new(),
            mount: v2_mount().ok(),
        }
    }

    /// Read every selected Go process now: the panel of the interval since the last call.
    fn read(&mut self) -> view::GoPanel {
        let found = self.watcher.scan().unwrap_or_default();
        let mut lines = Vec::new();
        let mut now = HashMap::new();
        for f in &found {
            match f.read() {
                Ok(s) => {
                    let cpus = self
                        .mount
                        .as_deref()
                        .and_then(|m| cpulimit::budget(f.pid, m).ok())
                        .map(|b| b.usable_cpus);
                    let prev = self
                        .prev
                        .get(&f.pid)
                        .filter(|p| p.go_version == s.go_version);
                    lines.push(view::GoLine::new(&f.binary, prev, &s, cpus));
                    now.insert(f.pid, s);
                }
                Err(e) => self.watcher.process_error(f.pid, &e),
            }
        }
        self.prev = now;
        let (skipped, pending) = self.watcher.left_out();
        view::GoPanel {
            lines,
            skipped,
            pending,
            errors: self
                .watcher
                .errors()
                .iter()
                .filter(|(r, _)| **r != "exited")
                .map(|(r, n)| (*r, *n))
                .collect(),
        }
    }
}
