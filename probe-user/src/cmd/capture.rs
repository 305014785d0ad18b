//! `schedlat capture`: load, wait for the duration (or Ctrl-C), print the report.
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, info, warn};

use crate::{
    cli::{CaptureArgs, Cli, Format, OnOff},
    go::capture as gocapture,
    goruntime::GoError,
    host::cgroup::{CgroupNames, v2_mount},
    kernel::probes::{ProbeOptions, Probes},
    model::{FutexMode, RawSnapshot, UsageError},
    report::{self, Filter, ReportInput},
};

/// Load and attach. The Go uprobe goes on the file analysed (its descriptor, not
/// /proc/PID/exe looked up again) and its scope is the pid: refused (and detached) unless the
/// pid still names the process analysed, running that file.
fn load_checked(opts: &ProbeOptions) -> anyhow::Result<Probes> {
    #[cfg(test)]
    if let Some(t) = &opts.go_events {
        crate::goruntime::live::test_hook::between_scan_and_read(t.pid);
    }
    let probes = Probes::load(opts).context("starting the capture")?;
    if let Some(t) = &opts.go_events {
        t.exe
            .verify()
            .with_context(|| format!("after attaching the Go uprobe to pid {}", t.pid))?;
        debug!(pid = t.pid, site = %t.site, file_offset = t.file_offset, "Go uprobe attached");
    }
    Ok(probes)
}

/// The tgid of `pid`, or a usage error naming it when there is no such process.
pub(crate) fn resolve_pid(pid: u32) -> Result<u32, UsageError> {
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

/// "The programs are attached from here on": an info event scripts and tests can wait for
/// (`--log info`); at the default level, a person at a terminal still sees it, while a pipe or
/// a file gets nothing but the report.
fn announce(what: &str) {
    if tracing::enabled!(tracing::Level::INFO) {
        info!("schedlat: {what}");
    } else if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!("schedlat: {what}");
    }
}

pub fn run(cli: &Cli, a: &CaptureArgs) -> anyhow::Result<()> {
    let mut pids = Vec::new();
    for &p in &a.pids {
        let t = resolve_pid(p)?;
        if !pids.contains(&t) {
            pids.push(t);
        }
    }
    let names = CgroupNames::new(v2_mount().map_err(|e| UsageError(e.to_string()))?);
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
        hash_stamps: cli.hash_stamps,
        // The report states what the capture itself cost.
        run_stats: true,
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
    // Created before attaching: a path that cannot be written fails now, not after the capture.
    let html = match &a.html {
        Some(p) => Some((
            std::fs::File::create(p)
                .map_err(|e| UsageError(format!("--html: cannot create {}: {e}", p.display())))?,
            p.as_path(),
        )),
        None => None,
    };
    let probes = load_checked(&opts)?;
    let scope = if pids.is_empty() && a.cgroup.is_none() {
        "host-wide"
    } else {
        "filtered"
    };
    let total = match (a.duration, a.interval) {
        (Some(d), _) => Some(d),
        (None, None) => Some(Duration::from_secs(10)),
        (None, Some(_)) => None,
    };
    announce(&match (a.interval, total) {
        (None, total) => format!(
            "capturing {scope} for {} (Ctrl-C to stop early)",
            humantime::format_duration(total.unwrap_or_default())
        ),
        (Some(i), total) => format!(
            "capturing {scope}, a report every {}{}{} (Ctrl-C to stop)",
            humantime::format_duration(i),
            a.count
                .map_or_else(String::new, |n| format!(", {n} of them")),
            total.map_or_else(String::new, |d| format!(
                " for at most {}",
                humantime::format_duration(d)
            )),
        ),
    });

    let ctx = BlockContext {
        a,
        opts: &opts,
        filter: Filter {
            pids,
            cgroup: a.cgroup.clone(),
        },
        mount: mount.as_deref(),
        text: report::TextOptions {
            top: a.top.unwrap_or(if a.interval.is_some() { 5 } else { 10 }),
            buckets: a.buckets,
            block: a.interval.is_some(),
        },
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(capture_blocks(&ctx, probes, go, names, total, html))
}

/// What every block of a capture shares.
struct BlockContext<'a> {
    a: &'a CaptureArgs,
    opts: &'a ProbeOptions,
    filter: Filter,
    mount: Option<&'a std::path::Path>,
    text: report::TextOptions,
}

/// Run the capture: one block for the whole duration, or one per `--interval` until
/// `--count`, the duration, SIGINT or SIGTERM (which end the current block early and print
/// it: every block printed is whole). With `--html`, the maps are also read once per column
/// of the heatmaps (the interval, or an automatic one) and the page is written at the end.
async fn capture_blocks(
    ctx: &BlockContext<'_>,
    probes: Probes,
    mut go: Vec<gocapture::GoStart>,
    mut names: CgroupNames,
    total: Option<Duration>,
    html: Option<(std::fs::File, &std::path::Path)>,
) -> anyhow::Result<()> {
    let a = ctx.a;
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let started = tokio::time::Instant::now();
    let started_wall = SystemTime::now();
    let end = total.map(|d| started + d);
    // Heatmap columns: the blocks, or ~120 columns of at least 1 s over the duration.
    let column = a.interval.or_else(|| {
        a.html.as_ref().map(|_| {
            total
                .map_or(Duration::from_secs(1), |d| d / 120)
                .max(Duration::from_secs(1))
        })
    });
    let mut timeline = a
        .html
        .as_ref()
        .map(|_| report::timeline::Timeline::new(ctx.opts.go_events.is_some()));
    let mut probes = Some(probes);
    let mut prev = RawSnapshot::default();
    let mut block_start = (started, started_wall);
    let mut blocks = 0u64;
    // Slow events of the whole capture (its report, the page), bounded as one block's are.
    let mut all_slow = Vec::new();
    let mut all_slow_dropped = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut stdout_gone = false;
    // Where the last block ended (the snapshot): the end of the whole capture.
    let mut finished;
    let now = loop {
        let p = probes.as_mut().expect("attached until the last block");
        let block_end = match (column, end) {
            (Some(i), Some(e)) => (block_start.0 + i).min(e),
            (Some(i), None) => block_start.0 + i,
            (None, e) => e.expect("a duration without --interval"),
        };
        let mut slow = Vec::new();
        let mut slow_dropped = 0;
        let mut stop = false;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(block_end) => break,
                _ = int.recv() => { stop = true; break }
                _ = term.recv() => { stop = true; break }
                _ = tick.tick() => slow_dropped += p.drain_slow_events(&mut slow, a.max_slow_events),
            }
        }
        slow_dropped += p.drain_slow_events(&mut slow, a.max_slow_events);
        p.flush_kernel_log();
        let now = p.snapshot().context("reading the capture maps")?;
        // The block ends at this reading (not after the detaching below, which takes time).
        let at = (tokio::time::Instant::now(), SystemTime::now());
        let window = (block_start.1, at.1);
        let elapsed = at.0 - block_start.0;
        blocks += 1;
        let last = stop
            || column.is_none()
            || a.count.is_some_and(|n| blocks >= n)
            || end.is_some_and(|e| at.0 + Duration::from_millis(1) >= e);
        if last {
            drop(probes.take()); // detach before the (possibly slow) output
        }
        block_start = at;
        finished = at;
        let snap = report::since(&now, &prev);
        if let Some(t) = timeline.as_mut() {
            t.push(report::timeline::Column::of(&snap, window));
        }
        if a.interval.is_some() {
            let r = build_block(
                ctx,
                &snap,
                &mut go,
                &mut names,
                BlockInput {
                    elapsed,
                    window,
                    slow: &slow,
                    slow_dropped,
                },
            )?;
            let out = match a.format {
                // JSON Lines: one object per line.
                Format::Json => serde_json::to_string(&r)? + "\n",
                Format::Text => format!(
                    "{}{}\n",
                    report::render_text(&r, &ctx.text),
                    gocapture::render_text(&r.go)
                ),
            };
            // A closed pipe (`| head`) ends the capture like Ctrl-C.
            stdout_gone = !emit(&out)?;
        }
        all_slow_dropped += slow_dropped;
        let room = a.max_slow_events.saturating_sub(all_slow.len());
        all_slow_dropped += slow.len().saturating_sub(room) as u64;
        all_slow.extend(slow.into_iter().take(room));
        if last || stdout_gone {
            drop(probes.take());
            break now;
        }
        prev = now;
    };

    // The whole capture: the report (without --interval) and the page.
    if a.interval.is_some() && a.html.is_none() {
        return Ok(());
    }
    // Go sections cover the whole capture only when no block has taken a reading.
    let mut no_go = Vec::new();
    let whole = build_block(
        ctx,
        &now,
        if a.interval.is_none() {
            &mut go
        } else {
            &mut no_go
        },
        &mut names,
        BlockInput {
            elapsed: finished.0 - started,
            window: (started_wall, finished.1),
            slow: &all_slow,
            slow_dropped: all_slow_dropped,
        },
    )?;
    if let (Some((mut file, path)), Some(mut t)) = (html, timeline) {
        t.finish();
        use std::io::Write as _;
        file.write_all(report::render_html(&whole, &t).as_bytes())
            .with_context(|| format!("writing the HTML report to {}", path.display()))?;
    }
    if a.interval.is_none() {
        let out = match a.format {
            Format::Json => serde_json::to_string_pretty(&whole)? + "\n",
            Format::Text => format!(
                "{}{}",
                report::render_text(&whole, &ctx.text),
                gocapture::render_text(&whole.go)
            ),
        };
        emit(&out)?;
    }
    Ok(())
}

struct BlockInput<'a> {
    elapsed: Duration,
    window: (SystemTime, SystemTime),
    slow: &'a [schedlat_common::SlowEvent],
    slow_dropped: u64,
}

/// The report of one block from the maps' growth over it (`snap`), with the Go programs'
/// readings over the same interval (taken right after the maps, so both cover the same time).
fn build_block(
    ctx: &BlockContext<'_>,
    snap: &RawSnapshot,
    go: &mut Vec<gocapture::GoStart>,
    names: &mut CgroupNames,
    b: BlockInput<'_>,
) -> anyhow::Result<report::CaptureReport> {
    let mut go_sections = Vec::new();
    let mut gone = Vec::new();
    for (i, g) in go.iter_mut().enumerate() {
        let pid = g.pid;
        let raw = snap
            .go
            .as_ref()
            .filter(|_| ctx.opts.go_events.as_ref().is_some_and(|t| t.pid == pid));
        match g.next(ctx.mount, raw) {
            Ok(mut sec) => {
                if let Some(t) = ctx.opts.go_events.as_ref().filter(|t| t.pid != pid) {
                    sec.warnings.push(format!(
                        "no per-event Go probes for this program: one Go program per capture \
                         gets them (pid {}); capture it on its own for its events",
                        t.pid
                    ));
                }
                go_sections.push(sec)
            }
            // Exited: its last reading alone says nothing of this interval.
            Err(e) => {
                warn!(pid, error = %e, "Go program no longer readable; no Go section for it");
                gone.push(i);
            }
        }
    }
    for i in gone.into_iter().rev() {
        go.remove(i);
    }
    let mut r = report::build(
        snap,
        ReportInput {
            duration_s: b.elapsed.as_secs_f64(),
            window: b.window,
            filter: ctx.filter.clone(),
            slow_events: b.slow,
            slow_threshold_ns: ctx.a.threshold.as_nanos() as u64,
            slow_dropped_user: b.slow_dropped,
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
    Ok(r)
}

/// Write one whole block to stdout. `Ok(false)` when the reader has gone (a closed pipe, as
/// with `| head`): the capture ends quietly, as other command-line tools do.
fn emit(block: &str) -> anyhow::Result<bool> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(block.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("writing the report to stdout"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, Write as _};

    use super::*;
    use crate::goruntime::{
        live::test_hook,
        tests::{Fixture, fixture_versions, root_or_skip},
    };

    /// Start `exe` as pid `pid` (the kernel hands out ns_last_pid + 1 next; retried when
    /// another fork takes it first).
    fn start_at(pid: u32, exe: &std::path::Path) -> Fixture {
        for _ in 0..200 {
            std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
            let fx = Fixture::start(exe, 3);
            if fx.pid() == pid {
                return fx;
            }
        }
        panic!("could not start a process at pid {pid}");
    }

    /// The Go program analysed exits after its analysis and, before the uprobe is attached,
    /// another one takes its pid: a copy of the same executable (another file, the same
    /// code), so a uprobe placed through /proc/PID/exe, looked up again, would land on a
    /// valid instruction of the newcomer and count its goroutines. The capture refuses with an
    /// error naming the pid reuse; and the uprobe, attached through the descriptor analysed,
    /// sits on the first program's file: the newcomer's goroutine switches never hit it.
    #[test]
    fn a_pid_reused_before_the_go_uprobe_is_attached_is_refused_and_never_probed() {
        let Some(dirs) = fixture_versions() else {
            return;
        };
        if !root_or_skip() {
            return;
        }
        let _one = test_hook::exclusive();
        let tmp = std::env::temp_dir().join(format!("schedlat-attach-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        // The newest release: its casgstatus is probed at an emulated instruction.
        let src = dirs.last().unwrap().join("gosched");
        let (a_exe, b_exe) = (tmp.join("gosched-a"), tmp.join("gosched-b"));
        std::fs::copy(&src, &a_exe).unwrap();
        std::fs::copy(&src, &b_exe).unwrap();

        let a = Fixture::start(&a_exe, 3);
        let pid = a.pid();
        let g = gocapture::start(pid, None, true).expect("analysing the first program");
        let opts = ProbeOptions {
            futex: FutexMode::Off,
            go_events: Some(
                g.probe_target()
                    .expect("a per-event probe plan for this release"),
            ),
            ..Default::default()
        };
        let a = std::sync::Mutex::new(Some(a));
        let b: std::sync::Arc<std::sync::Mutex<Option<Fixture>>> = Default::default();
        let b2 = b.clone();
        test_hook::set(Some(Box::new(move |p| {
            if p != pid {
                return;
            }
            drop(a.lock().unwrap().take());
            *b2.lock().unwrap() = Some(start_at(pid, &b_exe));
        })));
        let refused = load_checked(&opts);
        test_hook::set(None);
        let e = format!(
            "{:#}",
            refused.err().expect("the capture attached to a reused pid")
        );
        assert!(
            e.contains(&format!("pid {pid}")) && e.contains("another"),
            "the error names the pid and its reuse: {e}"
        );

        // Attached anyway (what the check above refuses), the probe is on the first file.
        let probes = Probes::load(&opts).expect("loading");
        let mut guard = b.lock().unwrap();
        let b = guard.as_mut().expect("the second program took the pid");
        let mut stdin = b.0.stdin.take().unwrap();
        writeln!(stdin, "go").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(b.0.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.contains("sched_latencies"),
            "the newcomer's load ran: {line}"
        );
        let hits = probes.snapshot().unwrap().go.unwrap().counts
            [schedlat_common::go::counter::HITS as usize];
        assert_eq!(hits, 0, "the uprobe hit the program that reused the pid");
        drop(probes);
        drop(guard);
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
