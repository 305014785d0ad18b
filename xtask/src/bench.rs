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
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    env, fmt,
    fmt::Write as _,
    fs,
    io::{BufRead, BufReader, Read},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    cmd::capture, cmd::cmdline, cmd::is_root, cmd::probe, gofix, release::build, setup,
    ws::Workspace,
};

#[derive(clap::Args)]
pub struct Args {
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

#[derive(Clone, Copy)]
enum Arm {
    Bare,
    /// schedlat's hooks with empty bodies (probe-ebpf/src/floor.rs).
    Floor,
    Schedlat,
    Runqlat,
    Bpftrace,
}

const ARMS: [Arm; 5] = [
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

struct Workload {
    name: &'static str,
    argv: Vec<String>,
    unit: &'static str,
    /// CPUs the workload keeps saturated: extra wall time x busy CPUs ~ extra CPU time.
    busy_cpus: f64,
    /// (operations done, throughput) from the workload's stdout and stderr.
    parse: fn(&str) -> Option<Run>,
}

/// What one run of a workload reports about itself.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Run {
    ops: f64,
    throughput: f64,
}

impl Workload {
    fn command(&self) -> Command {
        let mut c = Command::new(&self.argv[0]);
        c.args(&self.argv[1..]);
        c
    }
}

fn workloads(quick: bool) -> Vec<Workload> {
    let (pipe_loops, msg_loops, stress_secs) = if quick {
        (20_000, 200, 1)
    } else {
        (200_000, 2_000, 5)
    };
    let cpus = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let argv = |s: &str| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
    vec![
        // Pinned: unpinned pipe swings 3x between runs here and is useless for ratios.
        Workload {
            name: "pipe (pinned)",
            argv: argv(&format!(
                "taskset -c 0 perf bench sched pipe -l {pipe_loops}"
            )),
            unit: "ops/s",
            busy_cpus: 1.0,
            parse: parse_perf_pipe,
        },
        // 160 processes keep every CPU busy.
        Workload {
            name: "messaging",
            argv: argv(&format!("perf bench sched messaging -g 4 -l {msg_loops}")),
            unit: "runs/s",
            busy_cpus: cpus,
            parse: parse_perf_messaging,
        },
        // Two pipe ping-pong pairs: the highest context-switch rate (~760k/s here).
        Workload {
            name: "stress-ng switch",
            argv: argv(&format!(
                "stress-ng --switch 2 -t {stress_secs} --metrics-brief"
            )),
            unit: "bogo ops/s",
            busy_cpus: cpus,
            parse: parse_stress_ng,
        },
        // Futex wait/wake storms: what schedlat's futex tracing adds and runqlat lacks.
        Workload {
            name: "stress-ng futex",
            argv: argv(&format!(
                "stress-ng --futex 2 -t {stress_secs} --metrics-brief"
            )),
            unit: "bogo ops/s",
            busy_cpus: cpus,
            parse: parse_stress_ng,
        },
    ]
}

/// `     Total time: 0.579 [sec]`
fn perf_total_time(out: &str) -> Option<f64> {
    out.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("Total time:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// `Total time: 1.006 [sec]` and `         198801 ops/sec`.
fn parse_perf_pipe(out: &str) -> Option<Run> {
    let throughput: f64 = out
        .lines()
        .find_map(|l| l.trim().strip_suffix("ops/sec")?.trim().parse().ok())?;
    Some(Run {
        ops: throughput * perf_total_time(out)?,
        throughput,
    })
}

/// One run in `Total time` seconds.
fn parse_perf_messaging(out: &str) -> Option<Run> {
    let secs = perf_total_time(out)?;
    (secs > 0.0).then(|| Run {
        ops: 1.0,
        throughput: 1.0 / secs,
    })
}

/// `stress-ng: metrc: [15050] switch  1274070  2.00  0.59  3.41  636918.64  318662.81`:
/// stressor, bogo ops, real/usr/sys time, bogo ops/s (real time), bogo ops/s (usr+sys).
fn parse_stress_ng(out: &str) -> Option<Run> {
    out.lines().find_map(|l| {
        let (_, rest) = l.split_once("metrc:")?;
        let f: Vec<&str> = rest.split_whitespace().collect();
        // [pid] name ops real usr sys ops/s-real ops/s-cpu
        if f.len() != 8 || !f[0].starts_with('[') {
            return None;
        }
        Some(Run {
            ops: f[2].parse().ok()?,
            throughput: f[6].parse().ok()?,
        })
    })
}

struct Sample {
    throughput: f64,
    /// The tracer process's own CPU seconds during the workload (traced arms only).
    tracer_cpu: Option<f64>,
    /// The tracer's eBPF programs over the round (traced arms only).
    bpf: Option<BpfProgs>,
}

/// Kernel run-time statistics (bpf_stats_enabled) of one tracer's programs with one name.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
struct ProgStats {
    run_cnt: u64,
    run_time_ns: u64,
}

/// A tracer's programs by name, cumulative since load (the tracer is started fresh every round).
type BpfProgs = BTreeMap<String, ProgStats>;

/// The program every tracer runs on every context switch; its run count is the event count that
/// "BPF ns per switch" divides by. schedlat's and libbpf-tools runqlat's (tp_btf) and bpftrace's
/// (classic tracepoint) are all named so (checked with `bpftool prog show` while they ran).
const SWITCH_PROG: &str = "sched_switch";

/// All the programs' run time per run of the sched_switch program, in ns; NaN if it never ran.
fn bpf_ns_per_switch(progs: &BpfProgs) -> f64 {
    let total: u64 = progs.values().map(|p| p.run_time_ns).sum();
    match progs.get(SWITCH_PROG) {
        Some(sw) if sw.run_cnt > 0 => total as f64 / sw.run_cnt as f64,
        _ => f64::NAN,
    }
}

struct WorkloadResult {
    /// System-wide sched_switch events per workload operation.
    switches_per_op: f64,
    switch_rate: f64,
    /// Indexed like ARMS.
    samples: [Vec<Sample>; ARMS.len()],
}

pub fn bench(ws: &Workspace, args: Args) -> Result<()> {
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
        let pp = go_pingpong_cost(ws, &bin, pairs, quick)?;
        let go = go_server_cost(ws, &bin, pairs, quick)?;
        let mut report = String::new();
        render_pingpong(&mut report, &pp);
        render_go(&mut report, &go);
        println!("\n{report}");
        return Ok(());
    }
    let runqlat = find_runqlat()?;
    let bpftrace_script = bpftrace_runqlat(ws)?;
    let workloads = workloads(quick);

    let mut results = Vec::new();
    for w in &workloads {
        println!("\n==> {}: {}", w.name, w.argv.join(" "));
        let (switches_per_op, switch_rate) = count_switches(w)?;
        println!(
            "sched_switch: {switches_per_op:.2} per op, {switch_rate:.0}/s (separate untimed perf stat -a run)"
        );
        let mut samples: [Vec<Sample>; ARMS.len()] = Default::default();
        for round in 1..=pairs {
            for (i, arm) in ARMS.into_iter().enumerate() {
                let s = match arm {
                    Arm::Bare => Sample {
                        throughput: run_workload(w)?.throughput,
                        tracer_cpu: None,
                        bpf: None,
                    },
                    Arm::Floor => with_floor(&bin, w)?,
                    Arm::Schedlat => with_schedlat(&bin, w)?,
                    Arm::Runqlat => with_runqlat(&runqlat, w)?,
                    Arm::Bpftrace => with_bpftrace(&bpftrace_script, w)?,
                };
                let cpu = s
                    .tracer_cpu
                    .map(|c| format!("  (tracer CPU {c:.2} s)"))
                    .unwrap_or_default();
                let bpf = s
                    .bpf
                    .as_ref()
                    .map(|p| format!("  BPF {} ns/switch", num_or_na(bpf_ns_per_switch(p))))
                    .unwrap_or_default();
                println!(
                    "  round {round}/{pairs} {arm:<8} {:>12} {}{cpu}{bpf}",
                    num(s.throughput),
                    w.unit
                );
                samples[i].push(s);
            }
        }
        results.push(WorkloadResult {
            switches_per_op,
            switch_rate,
            samples,
        });
    }
    let daemon = daemon_cost(&bin, quick)?;
    let pp = go_pingpong_cost(ws, &bin, pairs, quick)?;
    let go = go_server_cost(ws, &bin, pairs, quick)?;

    let mut report = render(&workloads, &results, pairs, quick);
    render_daemon(&mut report, &daemon);
    render_pingpong(&mut report, &pp);
    render_go(&mut report, &go);
    println!("\n{report}");
    let dir = ws.target.join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    let path = dir.join("results.md");
    fs::write(&path, &report).with_context(|| format!("write {}", path.display()))?;
    println!("wrote {}", path.display());
    Ok(())
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

/// Run the workload once; what it reports about the run.
fn run_workload(w: &Workload) -> Result<Run> {
    let mut c = w.command();
    let line = cmdline(&c);
    let out = c.output().with_context(|| {
        format!("could not start `{line}`: are linux-perf and stress-ng installed?")
    })?;
    // perf bench reports on stdout, stress-ng on stderr.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("`{line}` failed ({}): {text}", out.status);
    }
    (w.parse)(&text).with_context(|| format!("no throughput in the output of `{line}`:\n{text}"))
}

/// sched_switch events per workload operation, system-wide, and per second. perf stat itself
/// slows the workload, so this is a separate run, not one of the timed ones.
fn count_switches(w: &Workload) -> Result<(f64, f64)> {
    let mut c = Command::new("perf");
    c.args(["stat", "-e", "sched:sched_switch", "-a", "-x,", "--"])
        .args(&w.argv);
    let line = cmdline(&c);
    println!("+ {line}");
    let start = Instant::now();
    let out = c
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    let secs = start.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("`{line}` failed ({}): {stderr}", out.status);
    }
    let text = format!("{}{stderr}", String::from_utf8_lossy(&out.stdout));
    let run = (w.parse)(&text)
        .with_context(|| format!("no operation count in the output of `{line}`:\n{text}"))?;
    // CSV: count,unit,event,...; the count is `<not supported>` if the tracepoint is unavailable.
    let count = stderr
        .lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&"sched:sched_switch"))
        .and_then(|f| f[0].parse::<f64>().ok());
    match count {
        Some(n) if run.ops > 0.0 => Ok((n / run.ops, n / secs)),
        Some(_) => bail!("`{line}` reported no operations:\n{text}"),
        None => bail!(
            "no sched:sched_switch count from `{line}` (is tracefs mounted? `cargo xtask setup`):\n{stderr}"
        ),
    }
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
fn traced_run(
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

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Kernel BPF run-time statistics (run_time_ns, run_cnt per program) on while alive; dropping it
/// restores the previous setting, also on errors. (Not on a signal that kills xtask: after a
/// Ctrl-C, check the sysctl.) Counting costs two clock reads per program run, also in the
/// throughput of the traced arms.
struct BpfStatsGuard {
    previous: String,
}

impl BpfStatsGuard {
    fn enable() -> Result<Self> {
        let previous = fs::read_to_string(BPF_STATS_SYSCTL)
            .with_context(|| {
                format!("read {BPF_STATS_SYSCTL} (the kernel needs CONFIG_BPF_SYSCALL, 5.1+)")
            })?
            .trim()
            .to_owned();
        fs::write(BPF_STATS_SYSCTL, "1")
            .with_context(|| format!("write 1 to {BPF_STATS_SYSCTL}"))?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStatsGuard {
    fn drop(&mut self) {
        if let Err(e) = fs::write(BPF_STATS_SYSCTL, &self.previous) {
            eprintln!(
                "warning: could not restore {BPF_STATS_SYSCTL} to {}: {e}",
                self.previous
            );
        }
    }
}

/// IDs of the BPF programs process `pid` holds, as program fds or as BPF link fds, from
/// /proc/<pid>/fd and fdinfo. This is what `bpftool prog show` reports as "pids", which bpftool
/// builds without skeletons (Debian 12's bpftool 7.1) leave out.
fn prog_ids_of(pid: u32) -> Result<BTreeSet<u64>> {
    let dir = format!("/proc/{pid}/fd");
    let mut ids = BTreeSet::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("list {dir}"))? {
        // An fd closed meanwhile is simply skipped.
        let Ok(entry) = entry else { continue };
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if target != "anon_inode:bpf-prog" && target != "anon_inode:bpf_link" {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let Ok(info) = fs::read_to_string(&info) else {
            continue;
        };
        if let Some(id) = fdinfo_field(&info, "prog_id") {
            ids.insert(id);
        }
    }
    Ok(ids)
}

/// `prog_id:\t835` -> 835.
fn fdinfo_field(info: &str, key: &str) -> Option<u64> {
    info.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().parse().ok())?
    })
}

/// The programs in `bpftool -j prog show` output that belong to `pid`: listed with it in "pids",
/// or with an id in `held` (from [`prog_ids_of`]). Programs with the same name are summed.
fn parse_prog_show(json: &str, pid: u32, held: &BTreeSet<u64>) -> Result<BpfProgs> {
    let progs: serde_json::Value =
        serde_json::from_str(json).context("parsing the output of `bpftool -j prog show`")?;
    let progs = progs
        .as_array()
        .context("the output of `bpftool -j prog show` is not a JSON array")?;
    let mut out = BpfProgs::new();
    for p in progs {
        let id = p["id"].as_u64();
        let by_pid = p["pids"]
            .as_array()
            .is_some_and(|a| a.iter().any(|o| o["pid"].as_u64() == Some(pid.into())));
        if !by_pid && !id.is_some_and(|id| held.contains(&id)) {
            continue;
        }
        let name = match p["name"].as_str() {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => format!("<id {}>", id.unwrap_or(0)),
        };
        // bpftool leaves out run_time_ns and run_cnt while run_time_ns is 0.
        let field = |k: &str| p[k].as_u64().unwrap_or(0);
        let e = out.entry(name).or_default();
        e.run_cnt += field("run_cnt");
        e.run_time_ns += field("run_time_ns");
    }
    Ok(out)
}

/// A tracer running in the background for one arm. Dropping it kills it, so an error mid-run
/// leaves nothing attached.
struct Tracer {
    name: &'static str,
    child: Child,
    /// Last 200 lines of its stdout and stderr (errors; the end of a capture report).
    tail: Arc<Mutex<VecDeque<String>>>,
}

impl Tracer {
    /// Spawn `c` and wait until a line of its output contains `ready`.
    fn start(
        name: &'static str,
        mut c: Command,
        ready: &'static str,
        timeout: Duration,
    ) -> Result<Self> {
        let line = cmdline(&c);
        println!("+ {line} &");
        let mut child = c
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start `{line}`"))?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let (tx, rx) = mpsc::channel();
        let streams: [Box<dyn Read + Send>; 2] = [
            Box::new(child.stdout.take().expect("piped")),
            Box::new(child.stderr.take().expect("piped")),
        ];
        // Keep draining after `ready` so the tracer never blocks on a full pipe.
        for stream in streams {
            let (tx, tail) = (tx.clone(), Arc::clone(&tail));
            thread::spawn(move || {
                for l in BufReader::new(stream).lines().map_while(Result::ok) {
                    // Into the tail before signalling: callers read the ready line from it.
                    let is_ready = l.contains(ready);
                    {
                        let mut t = tail.lock().unwrap();
                        t.push_back(l);
                        if t.len() > 200 {
                            t.pop_front();
                        }
                    }
                    if is_ready {
                        let _ = tx.send(());
                    }
                }
            });
        }
        drop(tx);
        let mut tracer = Self { name, child, tail };
        match rx.recv_timeout(timeout) {
            Ok(()) => Ok(tracer),
            Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                "{name} printed no `{ready}` line within {} s (`{line}`); last output:\n{}",
                timeout.as_secs(),
                tracer.tail()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Both readers hit EOF (and stored every line): it exited or closed its output.
                let status = tracer
                    .child
                    .wait()
                    .map_or_else(|e| e.to_string(), |s| s.to_string());
                bail!(
                    "{name} exited before it was ready ({status}, `{line}`); last output:\n{}",
                    tracer.tail()
                )
            }
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Run-time statistics of the tracer's eBPF programs so far (needs a [`BpfStatsGuard`]).
    fn bpf_progs(&self) -> Result<BpfProgs> {
        let pid = self.pid();
        let held = prog_ids_of(pid)?;
        let json = capture(Command::new("bpftool").args(["-j", "prog", "show"]))
            .context("is bpftool installed? (`cargo xtask bench` installs the bench packages)")?;
        let progs = parse_prog_show(&json, pid, &held)?;
        if progs.is_empty() {
            bail!(
                "`bpftool -j prog show` lists no program of {} (pid {pid}; ids held per /proc: {held:?})",
                self.name
            );
        }
        Ok(progs)
    }

    fn tail(&self) -> String {
        self.tail
            .lock()
            .unwrap()
            .iter()
            .map(|l| format!("  {l}\n"))
            .collect()
    }

    /// Send `sig` and wait for a clean exit (10 s at most).
    fn stop(&mut self, sig: libc::c_int, sig_name: &str) -> Result<()> {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill has no memory-safety preconditions; the child is unreaped, so `pid` is ours.
        unsafe { libc::kill(pid, sig) };
        let deadline = Instant::now() + Duration::from_secs(10);
        let status: ExitStatus = loop {
            if let Some(s) = self
                .child
                .try_wait()
                .with_context(|| format!("waiting for {}", self.name))?
            {
                break s;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not exit within 10 s of {sig_name} (killed it); last output:\n{}",
                    self.name,
                    self.tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        if !status.success() {
            eprintln!(
                "warning: {} exited with {status} after {sig_name}; last output:\n{}",
                self.name,
                self.tail()
            );
        }
        Ok(())
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The daemon's own cost, without any workload.
struct DaemonCost {
    scrape_interval: Duration,
    scrapes: usize,
    idle_secs: f64,
    idle_cpu_secs: f64,
    idle_rss_kb: u64,
    /// Median and max of the idle scrapes' latency, in ms.
    scrape_ms: (f64, f64),
    flood: Flood,
}

/// A wrk flood of /metrics.
struct Flood {
    argv: String,
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: Vec<String>,
    rss_before_kb: u64,
    rss_peak_kb: u64,
    rss_after_kb: u64,
    cpu_secs: f64,
}

/// Idle CPU and RSS at Prometheus' usual 15 s scrape interval, then a wrk flood of /metrics.
fn daemon_cost(bin: &Path, quick: bool) -> Result<DaemonCost> {
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

/// `Requests/sec:  9876.54`, the `--latency` distribution (`     99%   12.34ms`), error lines.
fn parse_wrk(out: &str) -> Option<Flood> {
    let percentile = |p: &str| {
        out.lines().find_map(|l| {
            let (pct, v) = l.trim().split_once(char::is_whitespace)?;
            (pct == p).then(|| duration_ms(v.trim()))?
        })
    };
    let requests_per_sec = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:")?.trim().parse().ok())?;
    let errors = out
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Non-2xx") || l.starts_with("Socket errors"))
        .map(str::to_owned)
        .collect();
    Some(Flood {
        argv: String::new(),
        requests_per_sec,
        p50_ms: percentile("50%")?,
        p99_ms: percentile("99%")?,
        errors,
        rss_before_kb: 0,
        rss_peak_kb: 0,
        rss_after_kb: 0,
        cpu_secs: 0.0,
    })
}

/// wrk's durations: `812.00us`, `1.23ms`, `2.00s`, `1.5m`.
fn duration_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1e3,
        "ms" => n,
        "s" => n * 1e3,
        "m" => n * 60e3,
        _ => return None,
    })
}

/// A minimal HTTP/1.1 GET on loopback; the body of a 200 answer.
fn http_get(addr: &str, path: &str) -> Result<String> {
    use std::io::Write as _;
    let mut s = std::net::TcpStream::connect(addr).with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)
        .with_context(|| format!("read the answer to GET {path}"))?;
    if !resp.starts_with("HTTP/1.1 200") {
        bail!(
            "GET http://{addr}{path}: {}",
            resp.lines().next().unwrap_or("no answer")
        );
    }
    Ok(resp)
}

/// A `kB` field of /proc/PID/status (VmRSS, VmHWM).
fn status_kb(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let s = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    s.lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .with_context(|| format!("no {field} in {path}"))
}

fn render_daemon(s: &mut String, d: &DaemonCost) {
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

/// CPU time of the live threads of `pid` in seconds, with ns resolution: the sum of field 1
/// (time on CPU) of /proc/PID/task/*/schedstat. Threads that exited meanwhile are not counted.
fn threads_cpu_seconds(pid: u32) -> Result<f64> {
    let dir = format!("/proc/{pid}/task");
    let mut ns = 0u64;
    for t in fs::read_dir(&dir).with_context(|| format!("list {dir}"))? {
        let Ok(t) = t else { continue };
        // A thread that exits between the listing and the read is skipped.
        let Ok(stat) = fs::read_to_string(t.path().join("schedstat")) else {
            continue;
        };
        ns += stat
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .with_context(|| format!("bad {}/schedstat: {stat:?}", t.path().display()))?;
    }
    Ok(ns as f64 / 1e9)
}

/// A Go HTTP server under wrk load: bare, with the daemon ([go] off), with the daemon reading
/// the server's runtime statistics ([go] on); both daemons scraped every second.
struct GoServerCost {
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

fn go_server_cost(ws: &Workspace, bin: &Path, pairs: usize, quick: bool) -> Result<GoServerCost> {
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

/// `schedlat capture --pid` of a Go program, text output, with or without per-event probes;
/// returned once attached.
fn start_go_capture(bin: &Path, pid: u32, probes: bool) -> Result<Tracer> {
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
fn stop_go_capture(mut c: Tracer) -> Result<u64> {
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

/// Channel ping-pong (tests/go/goevents pingpong): bare, under a capture without Go probes,
/// and under one with them. The difference between the last two is the probes' cost.
struct PingPongCost {
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

fn go_pingpong_cost(ws: &Workspace, bin: &Path, pairs: usize, quick: bool) -> Result<PingPongCost> {
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

fn render_pingpong(s: &mut String, p: &PingPongCost) {
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

fn render_go(s: &mut String, g: &GoServerCost) {
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

/// utime + stime of a whole process (all threads), in seconds, from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // Fields after the parenthesised comm (which may contain spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15 (proc(5)).
    let fields: Vec<&str> = stat[stat.rfind(')').context("no ')' in /proc/pid/stat")? + 1..]
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> Result<f64> {
        let f = fields
            .get(i)
            .with_context(|| format!("{path} has too few fields"))?;
        Ok(f.parse::<u64>()
            .with_context(|| format!("field {} of {path}: {f:?}", i + 3))? as f64)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((ticks(11)? + ticks(12)?) / hz)
}

/// Median of the values that are not NaN; NaN if there are none.
fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Median, min and max of the per-round traced/bare throughput ratios.
fn ratios(bare: &[Sample], traced: &[Sample]) -> (f64, f64, f64) {
    let r: Vec<f64> = bare
        .iter()
        .zip(traced)
        .map(|(b, t)| t.throughput / b.throughput)
        .collect();
    let min = r.iter().copied().fold(f64::INFINITY, f64::min);
    let max = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (median(r), min, max)
}

/// Extra CPU per sched_switch a tracer costs the traced tasks, in ns:
///   time per op   t_bare   = 1 / median bare throughput
///   traced        t_traced = t_bare / ratio          (ratio = traced/bare throughput)
///   extra CPU/op  = (t_traced - t_bare) x busy CPUs  (the workload saturates those CPUs)
///   per switch    = extra CPU per op / sched_switch events per op (from the perf stat run)
/// It is an estimate: noise can make it negative when the ratio is close to 1.
fn ns_per_switch(w: &Workload, r: &WorkloadResult, bare_median: f64, ratio: f64) -> f64 {
    let t_bare = 1.0 / bare_median;
    let extra_cpu = (t_bare / ratio - t_bare) * w.busy_cpus;
    extra_cpu / r.switches_per_op * 1e9
}

fn num(x: f64) -> String {
    match x.abs() {
        a if a >= 100.0 => format!("{x:.0}"),
        a if a >= 1.0 => format!("{x:.2}"),
        _ => format!("{x:.3}"),
    }
}

fn num_or_na(x: f64) -> String {
    if x.is_nan() { "n/a".into() } else { num(x) }
}

/// Median over rounds of BPF ns per switch, with min and max.
fn bpf_switch_summary(traced: &[Sample]) -> String {
    let v: Vec<f64> = traced
        .iter()
        .filter_map(|s| s.bpf.as_ref().map(bpf_ns_per_switch))
        .filter(|x| !x.is_nan())
        .collect();
    if v.is_empty() {
        return "n/a".into();
    }
    let min = v.iter().copied().fold(f64::INFINITY, f64::min);
    let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{} ({}-{})", num(median(v)), num(min), num(max))
}

/// Per-program rows of one tracer: median ns/run and median runs per round, then the total.
fn render_bpf_programs(s: &mut String, arm: Arm, traced: &[Sample]) {
    let rounds: Vec<&BpfProgs> = traced.iter().filter_map(|x| x.bpf.as_ref()).collect();
    let names: BTreeSet<&String> = rounds.iter().flat_map(|p| p.keys()).collect();
    for name in names {
        let per_round = || rounds.iter().filter_map(|p| p.get(name));
        let ns_per_run = median(
            per_round()
                .filter(|p| p.run_cnt > 0)
                .map(|p| p.run_time_ns as f64 / p.run_cnt as f64)
                .collect(),
        );
        // Shown as a whole count (an even number of rounds can give a median ending in .5).
        let runs = median(per_round().map(|p| p.run_cnt as f64).collect());
        let _ = writeln!(
            s,
            "| {arm} | {name} | {} | {runs:.0} |",
            num_or_na(ns_per_run)
        );
    }
    let _ = writeln!(
        s,
        "| {arm} | **all, per {SWITCH_PROG} run** | **{}** | |",
        bpf_switch_summary(traced)
    );
}

fn render(workloads: &[Workload], results: &[WorkloadResult], pairs: usize, quick: bool) -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    let traced = &ARMS[1..];
    let mut s = String::new();
    let _ = writeln!(s, "# schedlat overhead benchmark\n");
    let _ = writeln!(
        s,
        "Kernel {}, {cpus} CPUs, {pairs} interleaved rounds ({}){}.\n",
        kernel.trim(),
        ARMS.map(|a| a.to_string()).join(", "),
        if quick {
            ", --quick: short runs, smoke test only"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "| workload | bare throughput (median) | sched_switch/s | tracer | traced/bare | traced/floor | tracer CPU s/run | extra ns/switch | BPF ns/switch |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
    for (w, r) in workloads.iter().zip(results) {
        let bare = &r.samples[0];
        let bare_med = median(bare.iter().map(|x| x.throughput).collect());
        for (k, arm) in traced.iter().enumerate() {
            let t = &r.samples[k + 1];
            let (ratio, min, max) = ratios(bare, t);
            let vs_floor = if matches!(arm, Arm::Floor) {
                "-".to_string()
            } else {
                let (r, lo, hi) = ratios(&r.samples[1], t);
                format!("{r:.3} ({lo:.2}-{hi:.2})")
            };
            let cpu = median(t.iter().filter_map(|x| x.tracer_cpu).collect());
            let (name, thr, rate) = if k == 0 {
                (
                    w.name.to_string(),
                    format!("{} {}", num(bare_med), w.unit),
                    format!("{:.0}", r.switch_rate),
                )
            } else {
                Default::default()
            };
            let _ = writeln!(
                s,
                "| {name} | {thr} | {rate} | {arm} | {ratio:.3} ({min:.2}-{max:.2}) | {vs_floor} | {cpu:.3} | {:.0} | {} |",
                ns_per_switch(w, r, bare_med, ratio),
                bpf_switch_summary(t),
            );
        }
    }
    let _ = writeln!(
        s,
        "\n- traced/bare: median of per-round throughput ratios (min-max in brackets); higher is better, 1 = free.\n\
         - floor: schedlat's hooks with empty bodies (`schedlat bench-floor`), what attaching at all costs;\n  \
           traced/floor: the same per-round ratios against the floor of the same round.\n\
         - Tracer CPU: the tracer process's own utime+stime during the workload. The probes' cost is charged\n  \
           to the traced tasks and shows up in the ratio, not here.\n\
         - sched_switch/s: system-wide, from a separate untimed `perf stat -e sched:sched_switch -a` run.\n\
         - Extra ns/switch = (t_bare / ratio - t_bare) x busy CPUs / sched_switch per op, with\n  \
           t_bare = 1 / median bare throughput; busy CPUs = 1 for the pinned pipe, all for the others.\n\
         - BPF ns/switch: see below.\n\
         - bpftrace runs Debian's /usr/sbin/runqlat.bt with its `#include <linux/sched.h>` removed and\n  \
           TASK_RUNNING written as 0 (bpftrace 0.17 cannot compile that header here); runqlat and\n  \
           runqlat.bt trace run-queue delay only, schedlat also futex waits and wakeups.\n"
    );
    render_bpf(&mut s, workloads, results);
    let _ = writeln!(s, "## Raw runs\n");
    for (w, r) in workloads.iter().zip(results) {
        let _ = writeln!(
            s,
            "{} (`{}`), throughput in {}; tracer CPU s and BPF ns/switch in brackets:\n",
            w.name,
            w.argv.join(" "),
            w.unit
        );
        let _ = writeln!(
            s,
            "| round | {} |\n|---|{}",
            ARMS.map(|a| a.to_string()).join(" | "),
            "---|".repeat(ARMS.len())
        );
        let cell = |x: &Sample| match (&x.tracer_cpu, &x.bpf) {
            (Some(cpu), Some(b)) => format!(
                "{} ({cpu:.2} s, {} ns)",
                num(x.throughput),
                num_or_na(bpf_ns_per_switch(b))
            ),
            _ => num(x.throughput),
        };
        for i in 0..r.samples[0].len() {
            let cells: Vec<String> = r.samples.iter().map(|arm| cell(&arm[i])).collect();
            let _ = writeln!(s, "| {} | {} |", i + 1, cells.join(" | "));
        }
        let _ = writeln!(s);
    }
    s
}

/// The second, steadier figure: the tracers' eBPF run time per sched_switch, from the kernel.
fn render_bpf(s: &mut String, workloads: &[Workload], results: &[WorkloadResult]) {
    let _ = writeln!(s, "## BPF run time per sched_switch (kernel bpf_stats)\n");
    let _ = writeln!(
        s,
        "BPF ns/switch is the tracer's eBPF programs' own run time, as measured by the kernel with\n\
         `kernel.bpf_stats_enabled=1` and read with `bpftool prog show` after the workload, summed over\n\
         all its programs and divided by the runs of its `{SWITCH_PROG}` program; the tracer is started\n\
         fresh every round, so this covers the round including its short warm-up. Unlike the ratios it\n\
         needs no bare run to compare with, but it is wall-clock time (sched_clock), so a slow round on\n\
         this VM (host steal, cold caches) still inflates it. It is a lower bound of the cost: it\n\
         excludes the fixed tracepoint dispatch cost (and the stats' own clock reads) and, for syscall\n\
         tracepoints, the syscall slow path that enabling them imposes on all tasks. Median over\n\
         rounds (min-max in brackets).\n"
    );
    let _ = writeln!(
        s,
        "| workload | {} |\n|---|{}",
        ARMS[1..]
            .iter()
            .map(|a| format!("{a} BPF ns/switch"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(ARMS.len() - 1)
    );
    for (w, r) in workloads.iter().zip(results) {
        let cells: Vec<String> = r.samples[1..]
            .iter()
            .map(|t| bpf_switch_summary(t))
            .collect();
        let _ = writeln!(s, "| {} | {} |", w.name, cells.join(" | "));
    }
    let _ = writeln!(s);
    for (w, r) in workloads.iter().zip(results) {
        let _ = writeln!(s, "{}, per program (medians over rounds):\n", w.name);
        let _ = writeln!(
            s,
            "| tracer | program | ns/run | runs/round |\n|---|---|---|---|"
        );
        for (i, arm) in ARMS.into_iter().enumerate() {
            if !matches!(arm, Arm::Bare) {
                render_bpf_programs(s, arm, &r.samples[i]);
            }
        }
        let _ = writeln!(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_workload_output() {
        let pipe = "# Running 'sched/pipe' benchmark:\n\n     Total time: 0.100 [sec]\n\n       5.030150 usecs/op\n         198801 ops/sec\n";
        let r = parse_perf_pipe(pipe).unwrap();
        assert_eq!(r.throughput, 198801.0);
        assert!((r.ops - 19880.1).abs() < 1e-6);
        let msg = "# 4 groups == 160 processes run\n\n     Total time: 0.500 [sec]\n       5.4 usecs/op\n";
        assert_eq!(
            parse_perf_messaging(msg),
            Some(Run {
                ops: 1.0,
                throughput: 2.0
            })
        );
        assert_eq!(parse_perf_pipe("nothing"), None);
        // stress-ng 0.15 --metrics-brief, on stderr; the header lines must not match.
        let sng = "stress-ng: metrc: [15050] stressor       bogo ops real time  usr time  sys time   bogo ops/s     bogo ops/s\n\
                   stress-ng: metrc: [15050]                           (secs)    (secs)    (secs)   (real time) (usr+sys time)\n\
                   stress-ng: metrc: [15050] switch          1274070      2.00      0.59      3.41    636918.64      318662.81\n\
                   stress-ng: metrc: [15050] miscellaneous metrics:\n";
        assert_eq!(
            parse_stress_ng(sng),
            Some(Run {
                ops: 1274070.0,
                throughput: 636918.64
            })
        );
        assert_eq!(
            parse_stress_ng("stress-ng: info: [1] dispatching hogs"),
            None
        );
    }

    #[test]
    fn parses_wrk_output() {
        let out = "Running 2s test @ http://127.0.0.1:1/metrics\n  2 threads and 32 connections\n\
            \x20 Latency Distribution\n     50%    2.51ms\n     75%    3.10ms\n     90%  812.00us\n     99%    1.20s\n\
            \x20 20000 requests in 2.00s, 600.00MB read\nRequests/sec:  9999.50\nTransfer/sec:    300.00MB\n";
        let f = parse_wrk(out).unwrap();
        assert_eq!(f.requests_per_sec, 9999.5);
        assert_eq!(f.p50_ms, 2.51);
        assert_eq!(f.p99_ms, 1200.0);
        assert!(f.errors.is_empty());
        let bad = format!("{out}  Non-2xx or 3xx responses: 5\n");
        assert_eq!(
            parse_wrk(&bad).unwrap().errors,
            ["Non-2xx or 3xx responses: 5"]
        );
        assert_eq!(duration_ms("812.00us"), Some(0.812));
        assert_eq!(duration_ms("1.5m"), Some(90_000.0));
        assert_eq!(duration_ms("12"), None);
    }

    #[test]
    fn median_and_overhead() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![f64::NAN, 1.0]), 1.0);
        assert!(median(vec![]).is_nan());
        // The toolchain notes' runqlat figure: 170k ops/s pinned pipe, 2 switches per op, ratio 0.78.
        let w = &workloads(false)[0];
        let r = WorkloadResult {
            switches_per_op: 2.0,
            switch_rate: 0.0,
            samples: Default::default(),
        };
        let ns = ns_per_switch(w, &r, 170_000.0, 0.78);
        assert!((800.0..850.0).contains(&ns), "{ns}");
    }

    #[test]
    fn parses_bpftool_prog_show() {
        let json = r#"[{"id":821,"type":"tracing","name":"sched_switch","run_time_ns":780591,"run_cnt":338},
            {"id":826,"type":"tracing","name":"sched_waking","run_time_ns":636322,"run_cnt":127,
             "pids":[{"pid":42,"comm":"schedlat"}]},
            {"id":827,"type":"tracing","name":"sched_wakeup_new"},
            {"id":900,"type":"tracing","name":"sched_switch","run_time_ns":5,"run_cnt":5,
             "pids":[{"pid":7,"comm":"other"}]}]"#;
        let progs = parse_prog_show(json, 42, &BTreeSet::from([821, 827])).unwrap();
        let names: Vec<&str> = progs.keys().map(String::as_str).collect();
        assert_eq!(names, ["sched_switch", "sched_wakeup_new", "sched_waking"]);
        assert_eq!(
            progs["sched_switch"],
            ProgStats {
                run_cnt: 338,
                run_time_ns: 780591
            }
        );
        assert_eq!(progs["sched_wakeup_new"], ProgStats::default());
        let ns = bpf_ns_per_switch(&progs);
        assert!((ns - (780591.0 + 636322.0) / 338.0).abs() < 1e-9, "{ns}");
        assert!(bpf_ns_per_switch(&BpfProgs::new()).is_nan());
        assert_eq!(
            fdinfo_field("prog_type:\t26\nprog_id:\t835\n", "prog_id"),
            Some(835)
        );
        assert_eq!(fdinfo_field("link_id:\t1\n", "prog_id"), None);
    }

    #[test]
    fn reads_own_cpu_time() {
        assert!(cpu_seconds(std::process::id()).unwrap() >= 0.0);
        // This test has run for some µs at least.
        assert!(threads_cpu_seconds(std::process::id()).unwrap() > 0.0);
    }
}
