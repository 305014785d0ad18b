//! `cargo xtask bench`: what does tracing cost the traced workload?
//!
//! Method (shared/docs/toolchain.md, "Benchmarking here"): this machine is small and noisy, so
//! runs are interleaved (bare, floor, schedlat, runqlat, bpftrace, bare, ...) and compared as
//! medians of per-round ratios. The anchors: the floor (schedlat's own hooks with empty bodies,
//! `schedlat bench-floor`: what attaching at all costs), libbpf-tools runqlat, the classic tool
//! for the same question, and bpftrace's runqlat.bt script.
//!
//! A last section measures the daemon itself: CPU and RSS while idle with a scrape every 15 s,
//! and scrape latency under a wrk flood of /metrics.
//!
//! Throughput ratios swing by +-15% here, so traced rounds also record a direct figure that needs
//! no bare run: the kernel's own run-time statistics of the tracer's eBPF programs
//! (`bpf_stats_enabled`, read with `bpftool prog show`), summed and divided by the runs of its
//! sched_switch program.
//!
//! Files, each importing only those listed after it: `goserver` and `pingpong` (the Go
//! sections, measured and rendered), `daemon` (the daemon alone), `report` (the workload tables),
//! `runner` (the interleaved rounds), `arms` (what each arm starts: schedlat, the floor,
//! runqlat, bpftrace, a Go capture), `tracer` (a tracer process and its programs' kernel
//! statistics), `workload` (the workloads and their output), `wrk`, `procfs`, `stats`.
use std::fs;

use anyhow::{Context, Result, bail};

use crate::{cmd::is_root, release::build, setup, ws::Workspace};

mod arms;
mod cost;
mod daemon;
mod goserver;
mod pingpong;
mod procfs;
mod report;
mod runner;
mod stats;
mod tracer;
mod workload;
mod wrk;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Interleaved rounds of (bare, floor, schedlat, runqlat, bpftrace) per workload [default: 5, 2 with --quick]
    #[arg(long, value_name = "N")]
    pairs: Option<usize>,
    /// Smoke test: 2 rounds and short workloads (numbers are not meaningful)
    #[arg(long)]
    quick: bool,
    /// Only the Go HTTP server section
    #[arg(long)]
    go_only: bool,
}

pub(crate) fn bench(ws: &Workspace, args: Args) -> Result<()> {
    let Args {
        pairs,
        quick,
        go_only,
    } = args;
    let pairs = pairs.unwrap_or(if quick { 2 } else { 5 });
    if pairs == 0 {
        bail!("--pairs must be at least 1");
    }
    if !is_root() {
        bail!(
            "bench loads eBPF programs and runs `perf stat -a`: run as root, e.g. `sudo -E cargo xtask bench`"
        );
    }
    crate::apt::ensure_packages(&[&setup::BENCH])?;
    let bin = build(ws)?;
    if go_only {
        let pp = pingpong::go_pingpong_cost(ws, &bin, pairs, quick)?;
        let go = goserver::go_server_cost(ws, &bin, pairs, quick)?;
        let mut report = String::new();
        pingpong::render_pingpong(&mut report, &pp);
        goserver::render_go(&mut report, &go);
        println!("\n{report}");
        return Ok(());
    }
    let workloads = workload::workloads(quick);
    let results = runner::run(ws, &bin, &workloads, pairs)?;
    println!("\n==> kernel log sites and a capture's own cost, pinned pipe");
    let self_cost = cost::self_cost(&bin, &workloads[0], pairs.min(3))?;
    let daemon = daemon::daemon_cost(&bin, quick)?;
    let pp = pingpong::go_pingpong_cost(ws, &bin, pairs, quick)?;
    let go = goserver::go_server_cost(ws, &bin, pairs, quick)?;

    let mut report = report::render(&workloads, &results, pairs, quick);
    cost::render(&mut report, &self_cost);
    daemon::render_daemon(&mut report, &daemon);
    pingpong::render_pingpong(&mut report, &pp);
    goserver::render_go(&mut report, &go);
    println!("\n{report}");
    let dir = ws.target.join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join("results.md");
    fs::write(&path, &report).with_context(|| format!("write {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
}
