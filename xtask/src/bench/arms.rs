//! What each arm of a round starts: schedlat's daemon, its floor (empty programs on the same
//! hooks), libbpf-tools runqlat, bpftrace's runqlat.bt; and a schedlat capture of a Go program
//! for the Go sections. Each traced arm runs the workload under a fresh tracer.
use std::{
    env, fmt, fs,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::{
    procfs::threads_cpu_seconds,
    tracer::{BpfProgs, BpfStatsGuard, Tracer},
    workload::{Workload, run_workload},
};
use crate::{cmd::probe, ws::Workspace};

#[derive(Clone, Copy)]
pub(super) enum Arm {
    Bare,
    /// schedlat's hooks with empty bodies (probe-ebpf/src/floor.rs).
    Floor,
    Schedlat,
    Runqlat,
    Bpftrace,
}

pub(super) const ARMS: [Arm; 5] = [
    Arm::Bare,
    Arm::Floor,
    Arm::Schedlat,
    Arm::Runqlat,
    Arm::Bpftrace,
];

impl fmt::Display for Arm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Arm::Bare => "bare",
            Arm::Floor => "floor",
            Arm::Schedlat => "schedlat",
            Arm::Runqlat => "runqlat",
            Arm::Bpftrace => "bpftrace",
        })
    }
}

pub(super) struct Sample {
    pub(super) throughput: f64,
    /// The tracer process's own CPU seconds during the workload (traced arms only).
    pub(super) tracer_cpu: Option<f64>,
    /// The tracer's eBPF programs over the round (traced arms only).
    pub(super) bpf: Option<BpfProgs>,
}

/// What the arms need found or written once, before the first round.
pub(super) struct Arms<'a> {
    bin: &'a Path,
    runqlat: PathBuf,
    bpftrace_script: PathBuf,
}

impl<'a> Arms<'a> {
    pub(super) fn prepare(ws: &Workspace, bin: &'a Path) -> Result<Self> {
        Ok(Self {
            bin,
            runqlat: find_runqlat()?,
            bpftrace_script: bpftrace_runqlat(ws)?,
        })
    }

    /// One run of the workload under this arm.
    pub(super) fn sample(&self, arm: Arm, w: &Workload) -> Result<Sample> {
        Ok(match arm {
            Arm::Bare => Sample {
                throughput: run_workload(w)?.throughput,
                tracer_cpu: None,
                bpf: None,
            },
            Arm::Floor => with_floor(self.bin, w)?,
            Arm::Schedlat => with_schedlat(self.bin, w)?,
            Arm::Runqlat => with_runqlat(&self.runqlat, w)?,
            Arm::Bpftrace => with_bpftrace(&self.bpftrace_script, w)?,
        })
    }
}

/// libbpf-tools installs runqlat in /usr/sbin, which is not on a normal user's PATH.
fn find_runqlat() -> Result<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    let dirs = env::split_paths(&path).chain(["/usr/sbin", "/sbin"].map(PathBuf::from));
    let listed = probe(Command::new("dpkg").args(["-L", "libbpf-tools"]))
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(PathBuf::from)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    dirs.map(|d| d.join("runqlat"))
        .chain(listed.into_iter().filter(|p| p.file_name().is_some_and(|n| n == "runqlat")))
        .find(|p| p.is_file())
        .context("runqlat not found on PATH, in /usr/sbin or in `dpkg -L libbpf-tools`: install libbpf-tools")
}

fn with_schedlat(bin: &Path, w: &Workload) -> Result<Sample> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free local port for the daemon")?
        .port();
    let mut c = Command::new(bin);
    c.args(["daemon", "--listen", &format!("127.0.0.1:{port}")]);
    // Declared before the tracer so that it is dropped (restored) after the tracer is gone.
    let _stats = BpfStatsGuard::enable()?;
    let mut tracer = Tracer::start(
        "schedlat daemon",
        c,
        "serving metrics on",
        Duration::from_secs(30),
    )?;
    traced_run(&mut tracer, w, libc::SIGTERM, "SIGTERM")
}

/// schedlat's hooks with empty bodies: the cost of attaching at all.
fn with_floor(bin: &Path, w: &Workload) -> Result<Sample> {
    let mut c = Command::new(bin);
    c.arg("bench-floor");
    let _stats = BpfStatsGuard::enable()?;
    let mut tracer = Tracer::start(
        "schedlat bench-floor",
        c,
        "floor attached",
        Duration::from_secs(30),
    )?;
    traced_run(&mut tracer, w, libc::SIGTERM, "SIGTERM")
}

/// Run the workload under a started tracer: throughput, the tracer's CPU, its programs' stats.
pub(super) fn traced_run(
    tracer: &mut Tracer,
    w: &Workload,
    sig: libc::c_int,
    sig_name: &str,
) -> Result<Sample> {
    // ns resolution: a tracer's CPU during one run is often below one clock tick.
    let before = threads_cpu_seconds(tracer.pid())?;
    let throughput = run_workload(w)?.throughput;
    let after = threads_cpu_seconds(tracer.pid())?;
    let bpf = tracer.bpf_progs()?;
    tracer.stop(sig, sig_name)?;
    Ok(Sample {
        throughput,
        tracer_cpu: Some(after - before),
        bpf: Some(bpf),
    })
}

fn with_runqlat(runqlat: &Path, w: &Workload) -> Result<Sample> {
    // No arguments: trace until SIGINT. stdbuf: its "Tracing run queue latency..." line (printed
    // once attached) would otherwise sit in a pipe buffer until exit.
    let mut c = Command::new("stdbuf");
    c.arg("-oL").arg(runqlat);
    let _stats = BpfStatsGuard::enable()?;
    // stdbuf execs runqlat, so the child's pid is runqlat's.
    let mut tracer = Tracer::start("runqlat", c, "Tracing", Duration::from_secs(30))?;
    traced_run(&mut tracer, w, libc::SIGINT, "SIGINT")
}

const BPFTRACE_RUNQLAT: &str = "/usr/sbin/runqlat.bt";

/// bpftrace's runqlat.bt as Debian ships it, made loadable: bpftrace 0.17 cannot compile its
/// `#include <linux/sched.h>` against Debian 12's uapi headers ("unknown type name
/// '__aligned_u64'"), and the include is only there for TASK_RUNNING, which is 0
/// (include/linux/sched.h). The probes and maps are unchanged.
fn bpftrace_runqlat(ws: &Workspace) -> Result<PathBuf> {
    let text = fs::read_to_string(BPFTRACE_RUNQLAT)
        .with_context(|| format!("read {BPFTRACE_RUNQLAT}: is Debian's bpftrace installed?"))?;
    let fixed: String = text
        .lines()
        .filter(|l| !l.starts_with("#include"))
        .map(|l| format!("{}\n", l.replace("TASK_RUNNING", "0")))
        .collect();
    if !fixed.contains("tracepoint:sched:sched_switch") {
        bail!(
            "{BPFTRACE_RUNQLAT} no longer traces tracepoint:sched:sched_switch: check the bench's assumptions"
        );
    }
    let dir = ws.target.join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join("runqlat.bt");
    fs::write(&path, fixed).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

fn with_bpftrace(script: &Path, w: &Workload) -> Result<Sample> {
    let mut c = Command::new("bpftrace");
    c.arg(script);
    let _stats = BpfStatsGuard::enable()?;
    // bpftrace compiles the script with LLVM first: allow it time.
    let mut tracer = Tracer::start(
        "bpftrace runqlat.bt",
        c,
        "Tracing CPU scheduler",
        Duration::from_secs(60),
    )?;
    traced_run(&mut tracer, w, libc::SIGINT, "SIGINT")
}

/// `schedlat capture --pid` of a Go program, text output, with or without per-event probes;
/// returned once attached.
pub(super) fn start_go_capture(bin: &Path, pid: u32, probes: bool) -> Result<Tracer> {
    let mut c = Command::new(bin);
    // --log info: the "capturing" line the tracer waits for.
    c.args(["--log", "info", "capture", "--duration", "1h"]);
    c.args(["--pid", &pid.to_string()]);
    c.args(["--go-probes", if probes { "on" } else { "off" }]);
    c.env("RUST_LOG", "warn");
    Tracer::start("schedlat capture", c, "capturing", Duration::from_secs(60))
}

/// Stop a capture (Ctrl-C: it prints its report) and return its Go probe hits (0 without
/// probes).
pub(super) fn stop_go_capture(mut c: Tracer) -> Result<u64> {
    c.stop(libc::SIGINT, "SIGINT")?;
    // The report is on stdout; the Go section is its end, in the tail's last 20 lines.
    let tail = c.tail.lock().unwrap().iter().cloned().collect::<Vec<_>>();
    let hits = tail.iter().find_map(|l| {
        let l = l.trim_end();
        let rest = l.strip_suffix(" hits):")?;
        rest.rsplit(' ').next()?.parse::<u64>().ok()
    });
    Ok(hits.unwrap_or(0))
}
