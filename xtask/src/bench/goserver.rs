//! A Go HTTP server under wrk: bare, with the daemon, with the daemon reading the server's
//! runtime statistics (`[go]`), and under a capture with per-event Go probes.
use std::{
    fmt::Write as _,
    fs,
    net::TcpListener,
    path::Path,
    process::Command,
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    arms::{start_go_capture, stop_go_capture},
    procfs::threads_cpu_seconds,
    stats::median,
    tracer::Tracer,
    wrk::{http_get, parse_wrk},
};
use crate::{
    cmd::{capture, cmdline},
    gofix,
    ws::Workspace,
};

/// A Go HTTP server under wrk load: bare, with the daemon ([go] off), with the daemon reading
/// the server's runtime statistics ([go] on); both daemons scraped every second.
pub(super) struct GoServerCost {
    wrk: String,
    scrape_interval: Duration,
    /// Requests/s per round, indexed like GO_ARMS.
    rps: [Vec<f64>; 4],
    /// Probe hits per request in the capture arm (median over rounds).
    hits_per_request: f64,
    /// Median scrape latency (ms) per daemon arm over all rounds.
    scrape_ms: [f64; 2],
    /// The daemon's own CPU per scrape (ms; it does nothing else while idle), per daemon arm.
    cpu_per_scrape_ms: [f64; 2],
}

const GO_ARMS: [&str; 4] = ["bare", "daemon", "daemon + [go]", "capture + Go probes"];

pub(super) fn go_server_cost(
    ws: &Workspace,
    bin: &Path,
    pairs: usize,
    quick: bool,
) -> Result<GoServerCost> {
    let fixtures = gofix::build_fixtures(ws)?;
    let server = fixtures.join(gofix::GO_BIN_VERSION).join("httpserver");
    let secs = if quick { 1 } else { 5 };
    let scrape_interval = Duration::from_secs(1);
    println!(
        "\n==> Go HTTP server ({}), wrk {secs} s per run",
        server.display()
    );
    let mut c = Command::new(&server);
    c.arg("127.0.0.1:0");
    let srv = Tracer::start("Go httpserver", c, "listening", Duration::from_secs(30))?;
    let addr = srv
        .tail
        .lock()
        .unwrap()
        .iter()
        .find_map(|l| l.strip_prefix("listening ").map(str::to_owned))
        .context("httpserver printed no address")?;
    let dir = ws.target.join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let go_cfg = dir.join("go.toml");
    fs::write(
        &go_cfg,
        format!(
            "[go]\nenabled = true\nbinaries = [\"{}\"]\n",
            server.display()
        ),
    )
    .with_context(|| format!("write {}", go_cfg.display()))?;
    let mut wrk = Command::new("wrk");
    wrk.args([
        "-t",
        "1",
        "-c",
        "16",
        "-d",
        &format!("{secs}s"),
        "--latency",
    ])
    .arg(format!("http://{addr}/"));
    let wrk_line = cmdline(&wrk);
    let mut rps: [Vec<f64>; 4] = Default::default();
    let mut hits_per_request = Vec::new();
    let mut scrapes: [Vec<f64>; 2] = Default::default();
    let mut cpu_per_scrape: [Vec<f64>; 2] = Default::default();
    for round in 1..=pairs {
        for (i, arm) in GO_ARMS.iter().enumerate() {
            let mut daemon = None;
            // A capture of the server with per-event Go probes, for the whole wrk run.
            let probe_capture = if i == 3 {
                Some(start_go_capture(bin, srv.pid(), true)?)
            } else {
                None
            };
            if i == 1 || i == 2 {
                let daemon_addr = TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .context("finding a free local port for the daemon")?
                    .to_string();
                let mut c = Command::new(bin);
                c.args(["daemon", "--listen", &daemon_addr]);
                if i == 2 {
                    c.arg("--config").arg(&go_cfg);
                }
                let t = Tracer::start(
                    "schedlat daemon",
                    c,
                    "serving metrics on",
                    Duration::from_secs(30),
                )?;
                daemon = Some((t, daemon_addr));
            }
            // Scrape every second in the background while wrk runs.
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let scraper = daemon.as_ref().map(|(_, a)| {
                let (a, stop) = (a.clone(), Arc::clone(&stop));
                thread::spawn(move || -> Result<(Vec<f64>, String)> {
                    let mut lat = Vec::new();
                    let mut last = String::new();
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let t0 = Instant::now();
                        last = http_get(&a, "/metrics")?;
                        lat.push(t0.elapsed().as_secs_f64() * 1e3);
                        thread::sleep(scrape_interval);
                    }
                    Ok((lat, last))
                })
            });
            let cpu0 = match &daemon {
                Some((t, _)) => threads_cpu_seconds(t.pid())?,
                None => 0.0,
            };
            let out =
                capture(&mut wrk).context("is wrk installed? (`cargo xtask bench` installs it)")?;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let daemon_cpu = match &daemon {
                Some((t, _)) => threads_cpu_seconds(t.pid())? - cpu0,
                None => 0.0,
            };
            let r = parse_wrk(&out).with_context(|| format!("parsing `{wrk_line}`:\n{out}"))?;
            if let Some(c) = probe_capture {
                let hits = stop_go_capture(c)?;
                hits_per_request.push(hits as f64 / (r.requests_per_sec * secs as f64));
            }
            if !r.errors.is_empty() {
                bail!(
                    "`{wrk_line}` had errors against the Go server: {:?}",
                    r.errors
                );
            }
            if let Some(h) = scraper {
                let (lat, last) = h
                    .join()
                    .map_err(|_| anyhow::anyhow!("scraper panicked"))??;
                // The [go] arm must really read the server, or the comparison means nothing.
                let reads_go = last.contains("schedlat_go_processes{binary=\"httpserver\"");
                if (i == 2) != reads_go {
                    bail!(
                        "daemon arm `{arm}`: schedlat_go_processes for httpserver {} in the last scrape",
                        if reads_go { "present" } else { "missing" }
                    );
                }
                if !lat.is_empty() {
                    cpu_per_scrape[i - 1].push(daemon_cpu * 1e3 / lat.len() as f64);
                }
                scrapes[i - 1].extend(lat);
            }
            if let Some((mut t, _)) = daemon {
                t.stop(libc::SIGTERM, "SIGTERM")?;
            }
            println!(
                "  round {round}/{pairs} {arm:<14} {:>10.0} req/s",
                r.requests_per_sec
            );
            rps[i].push(r.requests_per_sec);
        }
    }
    drop(srv);
    let [a, b] = scrapes;
    let [ca, cb] = cpu_per_scrape;
    Ok(GoServerCost {
        hits_per_request: median(hits_per_request),
        cpu_per_scrape_ms: [median(ca), median(cb)],
        wrk: wrk_line,
        scrape_interval,
        rps,
        scrape_ms: [median(a), median(b)],
    })
}

pub(super) fn render_go(s: &mut String, g: &GoServerCost) {
    let _ = writeln!(s, "## Go HTTP server\n");
    let _ = writeln!(
        s,
        "`tests/go/httpserver` ({}) under `{}`, rounds interleaved ({}); each daemon scraped every {} s \
         during the run (15 s is usual: this is 15x the reading rate).\n",
        gofix::GO_BIN_VERSION,
        g.wrk,
        GO_ARMS.join(", "),
        g.scrape_interval.as_secs()
    );
    let ratio = |num: &[f64], den: &[f64]| -> (f64, f64, f64) {
        let r: Vec<f64> = num.iter().zip(den).map(|(n, d)| n / d).collect();
        let min = r.iter().copied().fold(f64::INFINITY, f64::min);
        let max = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (median(r), min, max)
    };
    let _ = writeln!(
        s,
        "| comparison | throughput ratio (median, min-max) |\n|---|---|"
    );
    for (label, n, d) in [
        ("daemon / bare", 1, 0),
        ("daemon + [go] / bare", 2, 0),
        (
            "daemon + [go] / daemon: the cost of reading Go statistics",
            2,
            1,
        ),
        ("capture with per-event Go probes / bare", 3, 0),
    ] {
        let (m, lo, hi) = ratio(&g.rps[n], &g.rps[d]);
        let _ = writeln!(s, "| {label} | {m:.4} ({lo:.3}-{hi:.3}) |");
    }
    let _ = writeln!(
        s,
        "\nBare median {:.0} req/s. Scrape latency median: {:.2} ms without [go], {:.2} ms with it. \
         The daemon's own CPU per scrape (median over rounds): {:.2} ms without [go], {:.2} ms with \
         it (each round starts a fresh daemon: this includes its one-time DWARF analysis of the \
         executable, spread over the round's few scrapes). Reading costs the Go program no CPU of its own (process_vm_readv copies its memory \
         on the daemon's side), so at a 15 s scrape interval [go] adds about {:.4}% of one CPU.\n",
        median(g.rps[0].clone()),
        g.scrape_ms[0],
        g.scrape_ms[1],
        g.cpu_per_scrape_ms[0],
        g.cpu_per_scrape_ms[1],
        (g.cpu_per_scrape_ms[1] - g.cpu_per_scrape_ms[0]).max(0.0) / 15_000.0 * 100.0,
    );
    let _ = writeln!(
        s,
        "The capture's uprobe fired {:.1} times per request (median).\n",
        g.hits_per_request
    );
    let _ = writeln!(
        s,
        "| round | {} |\n|---|---|---|---|---|",
        GO_ARMS.join(" | ")
    );
    for i in 0..g.rps[0].len() {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} |",
            i + 1,
            g.rps[0][i],
            g.rps[1][i],
            g.rps[2][i],
            g.rps[3][i]
        );
    }
    let _ = writeln!(s);
}
