//! `schedlat capture`: load, wait for the duration (or Ctrl-C), print the report.
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::{
    cli::{CaptureArgs, Cli, Format, OnOff},
    go::capture as gocapture,
    goruntime::GoError,
    host::cgroup::{CgroupNames, v2_mount},
    kernel::probes::{FutexMode, ProbeOptions, Probes},
    model::UsageError,
    report::{self, Filter, ReportInput},
};

/// The tgid of `pid`, or a usage error naming it when there is no such process.
fn resolve_pid(pid: u32) -> Result<u32, UsageError> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|_| UsageError(format!("no process with pid {pid} (it may have exited)")))?;
    let tgid = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| {
            UsageError(format!(
                "cannot read the Tgid of pid {pid} from /proc/{pid}/status"
            ))
        })?;
    if tgid != pid {
        warn!(
            tid = pid,
            pid = tgid,
            "--pid {pid} is a thread; capturing its whole process {tgid}"
        );
    }
    Ok(tgid)
}

pub fn run(cli: &Cli, a: &CaptureArgs) -> anyhow::Result<()> {
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
    let mut opts = ProbeOptions {
        track_tasks: true,
        futex: if a.no_futex { FutexMode::Off } else { a.futex },
        slow_threshold: Some(a.threshold),
        slow_max_per_sec: a.max_slow_per_sec,
        filter_tgids: pids.clone(),
        filter_cgroups,
        tracefs: cli.tracefs.clone(),
        btf: cli.btf.clone(),
        ..Default::default()
    };
    // Go programs among the targets: their runtime's own statistics at the window's start.
    let mount = v2_mount().ok();
    let mut go = Vec::new();
    for &pid in &pids {
        // One GO_CONFIG per load: per-event probes for the first Go program only.
        let probes = a.go_probes == OnOff::On && go.is_empty();
        match gocapture::start(pid, mount.as_deref(), probes) {
            Ok(g) => go.push(g),
            Err(e) if a.go => {
                return Err(UsageError(format!(
                    "--go: cannot read the Go runtime of pid {pid}: {e}"
                ))
                .into());
            }
            Err(GoError::NotGo { .. }) => {}
            Err(e) => warn!(pid, error = %e, "Go program not readable; no Go section for it"),
        }
    }
    if a.go && pids.is_empty() {
        return Err(UsageError("--go needs --pid PID (the Go program to read)".into()).into());
    }
    opts.go_events = go.iter().find_map(|g| g.probe_target());
    let mut probes = Probes::load(&opts).context("starting the capture")?;
    if let Some(t) = &opts.go_events {
        // The uprobe's scope is the pid: refuse if it names another process by now.
        t.exe
            .verify()
            .with_context(|| format!("after attaching the Go uprobe to pid {}", t.pid))?;
        info!(pid = t.pid, site = %t.site, file_offset = t.file_offset, "Go uprobe attached");
    }
    let scope = if pids.is_empty() && a.cgroup.is_none() {
        "host-wide".to_string()
    } else {
        "filtered".to_string()
    };
    // Tests and scripts wait for this line: the programs are attached from here on.
    eprintln!(
        "schedlat: capturing {scope} for {} (Ctrl-C to stop early)",
        humantime::format_duration(a.duration)
    );

    let started = Instant::now();
    let mut slow = Vec::new();
    let mut slow_dropped = 0;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        let deadline = tokio::time::sleep(a.duration);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tokio::select! {
                _ = &mut deadline => break,
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = tick.tick() => slow_dropped += probes.drain_slow_events(&mut slow, a.max_slow_events),
            }
        }
        anyhow::Ok(())
    })?;
    let elapsed = started.elapsed();
    slow_dropped += probes.drain_slow_events(&mut slow, a.max_slow_events);
    probes.flush_kernel_log();
    let snap = probes.snapshot().context("reading the capture maps")?;
    drop(probes); // detach before the (possibly slow) output
    // The Go end readings right after the maps, so both cover the same window.
    let mut go_sections = Vec::new();
    for g in go {
        let pid = g.pid;
        let raw = snap
            .go
            .as_ref()
            .filter(|_| opts.go_events.as_ref().is_some_and(|t| t.pid == pid));
        match g.finish(mount.as_deref(), raw) {
            Ok(mut sec) => {
                if let Some(t) = opts.go_events.as_ref().filter(|t| t.pid != pid) {
                    sec.warnings.push(format!(
                        "no per-event Go probes for this program: one Go program per capture \
                         gets them (pid {}); capture it on its own for its events",
                        t.pid
                    ));
                }
                go_sections.push(sec)
            }
            // Exited during the window: its start reading alone says nothing of the window.
            Err(e) => warn!(pid, error = %e, "Go program not readable at the end of the capture"),
        }
    }

    let mut r = report::build(
        &snap,
        ReportInput {
            duration_s: elapsed.as_secs_f64(),
            filter: Filter {
                pids,
                cgroup: a.cgroup.clone(),
            },
            slow_events: &slow,
            slow_threshold_ns: a.threshold.as_nanos() as u64,
            slow_dropped_user: slow_dropped,
        },
        |id| names.label(id),
    );
    for mut sec in go_sections {
        for t in r.tasks.iter().filter(|t| t.pid == sec.pid) {
            sec.threads_runqueue_delay_ns += t.runqueue_sum_ns;
            sec.threads_runqueue_waits += t.runqueue_count;
        }
        r.go.push(sec);
    }
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&r)?),
        Format::Text => print!(
            "{}{}",
            report::render_text(&r, a.top),
            gocapture::render_text(&r.go)
        ),
    }
    Ok(())
}
