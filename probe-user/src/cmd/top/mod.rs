//! `schedlat top`: a live terminal view, refreshed every interval, of run-queue delay per
//! cgroup, task and CPU and futex waits, from the capture's programs. `q` (or Esc, Ctrl-C)
//! quits: the terminal is restored and the programs detach as the process exits.
use std::time::{Instant, SystemTime};

use anyhow::Context as _;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};

use crate::{
    cli::{Cli, TopArgs},
    cmd::capture::resolve_pid,
    host::cgroup::{CgroupNames, v2_mount},
    kernel::probes::{ProbeOptions, Probes, RawSnapshot},
    model::{SortKey, UsageError},
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
    let filter = Filter {
        pids,
        cgroup: a.cgroup.clone(),
    };
    // Alternate screen and raw mode; ratatui's panic hook restores the terminal on a panic.
    let mut terminal = ratatui::init();
    let res = ui(&mut terminal, probes, a, &scope, &filter, &mut names);
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
        view::sort(&mut m, sort);
        screen = Some(m);
        prev = now;
        start = at;
    }
}
