//! `schedlat bench-floor` (hidden; for `cargo xtask bench`): attach schedlat's hooks with
//! empty bodies and wait for SIGINT/SIGTERM, so that the benchmark can measure the cost of
//! attaching at all, side by side with schedlat's own, in the same run.
use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use crate::{cli::BenchFloorArgs, go::capture as gocapture, kernel::probes::Floor};

pub fn run(a: &BenchFloorArgs) -> anyhow::Result<()> {
    let go = match a.go_pid {
        Some(pid) => {
            let start = gocapture::start(pid, None, true)
                .with_context(|| format!("planning the Go probe of pid {pid}"))?;
            let target = start.probe_target().with_context(|| {
                format!(
                    "pid {pid}: {}",
                    start
                        .events_unavailable
                        .as_deref()
                        .unwrap_or("no Go probe site")
                )
            })?;
            Some(target)
        }
        None => None,
    };
    let floor = Floor::load(go.as_ref())?;
    for a in &floor.attached {
        tracing::debug!(program = %a.program, target = %a.target, "attached (empty body)");
    }
    // The benchmark waits for this line.
    eprintln!(
        "schedlat: floor attached ({} empty programs)",
        floor.attached.len()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        anyhow::Ok(())
    })?;
    drop(floor);
    Ok(())
}
