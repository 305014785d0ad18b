//! The daemon alone: CPU and RSS while idle with a scrape every 15 s, then scrape latency and
//! memory under a wrk flood of /metrics.
use std::{
    fmt::Write as _,
    fs,
    net::TcpListener,
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{
    procfs::{cpu_seconds, status_kb, threads_cpu_seconds},
    stats::median,
    tracer::Tracer,
    wrk::{Flood, http_get, parse_wrk},
};
use crate::cmd::{capture, cmdline};

/// The daemon's own cost, without any workload.
pub(super) struct DaemonCost {
    scrape_interval: Duration,
    scrapes: usize,
    idle_secs: f64,
    idle_cpu_secs: f64,
    idle_rss_kb: u64,
    /// Median and max of the idle scrapes' latency, in ms.
    scrape_ms: (f64, f64),
    flood: Flood,
}

/// Idle CPU and RSS at Prometheus' usual 15 s scrape interval, then a wrk flood of /metrics.
pub(super) fn daemon_cost(bin: &Path, quick: bool) -> Result<DaemonCost> {
    let (scrape_interval, scrapes, flood_secs) = if quick {
        (Duration::from_secs(1), 3, 2)
    } else {
        (Duration::from_secs(15), 4, 10)
    };
    let addr = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free local port for the daemon")?
        .to_string();
    let mut c = Command::new(bin);
    c.args(["daemon", "--listen", &addr]);
    println!(
        "\n==> daemon: idle, a scrape every {} s ({scrapes} scrapes), then a {flood_secs} s wrk flood",
        scrape_interval.as_secs()
    );
    let mut tracer = Tracer::start(
        "schedlat daemon",
        c,
        "serving metrics on",
        Duration::from_secs(30),
    )?;
    let pid = tracer.pid();
    // Let start-up (BTF parsing, loading) finish before counting.
    thread::sleep(Duration::from_secs(1));
    // Idle CPU is a few ms a minute: clock ticks (10 ms) are too coarse, schedstat has ns.
    let cpu0 = threads_cpu_seconds(pid)?;
    let t0 = Instant::now();
    let mut latencies = Vec::new();
    for _ in 0..scrapes {
        thread::sleep(scrape_interval);
        let start = Instant::now();
        http_get(&addr, "/metrics")?;
        latencies.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let idle_secs = t0.elapsed().as_secs_f64();
    let idle_cpu_secs = threads_cpu_seconds(pid)? - cpu0;
    let idle_rss_kb = status_kb(pid, "VmRSS:")?;
    let max = latencies.iter().copied().fold(0.0, f64::max);
    let scrape_ms = (median(latencies), max);

    // Reset the peak RSS (proc(5), clear_refs) so VmHWM covers the flood only.
    fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .with_context(|| format!("reset the peak RSS of the daemon (pid {pid})"))?;
    let mut wrk = Command::new("wrk");
    wrk.args([
        "-t",
        "2",
        "-c",
        "32",
        "-d",
        &format!("{flood_secs}s"),
        "--latency",
    ])
    .arg(format!("http://{addr}/metrics"));
    let argv = cmdline(&wrk);
    println!("+ {argv}");
    let cpu0 = cpu_seconds(pid)?;
    let out = capture(&mut wrk).context("is wrk installed? (`cargo xtask bench` installs it)")?;
    let cpu_secs = cpu_seconds(pid)? - cpu0;
    let mut flood =
        parse_wrk(&out).with_context(|| format!("parsing the output of `{argv}`:\n{out}"))?;
    flood.argv = argv;
    flood.cpu_secs = cpu_secs;
    flood.rss_before_kb = idle_rss_kb;
    flood.rss_peak_kb = status_kb(pid, "VmHWM:")?;
    http_get(&addr, "/healthz").context("the daemon stopped answering after the flood")?;
    flood.rss_after_kb = status_kb(pid, "VmRSS:")?;
    tracer.stop(libc::SIGTERM, "SIGTERM")?;
    Ok(DaemonCost {
        scrape_interval,
        scrapes,
        idle_secs,
        idle_cpu_secs,
        idle_rss_kb,
        scrape_ms,
        flood,
    })
}

pub(super) fn render_daemon(s: &mut String, d: &DaemonCost) {
    let f = &d.flood;
    let _ = writeln!(
        s,
        "## The daemon's own cost
"
    );
    let _ = writeln!(
        s,
        "Idle host, a scrape every {} s for {:.0} s ({} scrapes): **{:.3}% of one CPU** ({:.4} s CPU), \
         **RSS {:.1} MB**; scrape latency median {:.2} ms, max {:.2} ms.
",
        d.scrape_interval.as_secs(),
        d.idle_secs,
        d.scrapes,
        d.idle_cpu_secs / d.idle_secs * 100.0,
        d.idle_cpu_secs,
        d.idle_rss_kb as f64 / 1024.0,
        d.scrape_ms.0,
        d.scrape_ms.1,
    );
    let _ = writeln!(
        s,
        "Scrape flood (`{}`): **{:.0} scrapes/s**, latency p50 {:.2} ms, **p99 {:.2} ms**; daemon CPU \
         {:.2} s; RSS {:.1} MB before, peak {:.1} MB during, {:.1} MB after; errors: {}.
",
        f.argv,
        f.requests_per_sec,
        f.p50_ms,
        f.p99_ms,
        f.cpu_secs,
        f.rss_before_kb as f64 / 1024.0,
        f.rss_peak_kb as f64 / 1024.0,
        f.rss_after_kb as f64 / 1024.0,
        if f.errors.is_empty() { "none".to_string() } else { f.errors.join("; ") },
    );
}
