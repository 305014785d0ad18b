//! A tracer process in the background (started, watched for its ready line, stopped, killed
//! on drop) and the kernel's run-time statistics of its eBPF programs.
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fs,
    io::{BufRead, BufReader, Read},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::cmd::{capture, cmdline};

/// A tracer running in the background for one arm. Dropping it kills it, so an error mid-run
/// leaves nothing attached.
pub(super) struct Tracer {
    name: &'static str,
    child: Child,
    /// Last 200 lines of its stdout and stderr (errors; the end of a capture report).
    pub(super) tail: Arc<Mutex<VecDeque<String>>>,
}

impl Tracer {
    /// Spawn `c` and wait until a line of its output contains `ready`.
    pub(super) fn start(
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

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Run-time statistics of the tracer's eBPF programs so far (needs a [`BpfStatsGuard`]).
    pub(super) fn bpf_progs(&self) -> Result<BpfProgs> {
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

    pub(super) fn tail(&self) -> String {
        self.tail
            .lock()
            .unwrap()
            .iter()
            .map(|l| format!("  {l}\n"))
            .collect()
    }

    /// Send `sig` and wait for a clean exit (10 s at most).
    pub(super) fn stop(&mut self, sig: libc::c_int, sig_name: &str) -> Result<()> {
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

const BPF_STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Kernel BPF run-time statistics (run_time_ns, run_cnt per program) on while alive; dropping it
/// restores the previous setting, also on errors. (Not on a signal that kills xtask: after a
/// Ctrl-C, check the sysctl.) Counting costs two clock reads per program run, also in the
/// throughput of the traced arms.
pub(super) struct BpfStatsGuard {
    previous: String,
}

impl BpfStatsGuard {
    pub(super) fn enable() -> Result<Self> {
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

/// Kernel run-time statistics (bpf_stats_enabled) of one tracer's programs with one name.
#[derive(Clone, Copy, Default, Debug, PartialEq)]
pub(super) struct ProgStats {
    pub(super) run_cnt: u64,
    pub(super) run_time_ns: u64,
}

/// A tracer's programs by name, cumulative since load (the tracer is started fresh every round).
pub(super) type BpfProgs = BTreeMap<String, ProgStats>;

/// The program every tracer runs on every context switch; its run count is the event count that
/// "BPF ns per switch" divides by. schedlat's and libbpf-tools runqlat's (tp_btf) and bpftrace's
/// (classic tracepoint) are all named so (checked with `bpftool prog show` while they ran).
pub(super) const SWITCH_PROG: &str = "sched_switch";

/// All the programs' run time per run of the sched_switch program, in ns; NaN if it never ran.
pub(super) fn bpf_ns_per_switch(progs: &BpfProgs) -> f64 {
    let total: u64 = progs.values().map(|p| p.run_time_ns).sum();
    match progs.get(SWITCH_PROG) {
        Some(sw) if sw.run_cnt > 0 => total as f64 / sw.run_cnt as f64,
        _ => f64::NAN,
    }
}

/// IDs of the BPF programs process `pid` holds, as program fds or as BPF link fds, from
/// /proc/<pid>/fd and fdinfo. This is what `bpftool prog show` reports as "pids", which bpftool
/// builds without skeletons (Debian 12's bpftool 7.1) leave out.
pub(super) fn prog_ids_of(pid: u32) -> Result<BTreeSet<u64>> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
