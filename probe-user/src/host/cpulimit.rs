//! The CPU a process may really use, and how often its cgroup was throttled.
//!
//! Three limits stack (Documentation/admin-guide/cgroup-v2.rst): the CFS bandwidth quota
//! (`cpu.max` = "$MAX $PERIOD", of the cgroup and of every ancestor: each level throttles on
//! its own, so the smallest wins), the cpuset (`cpuset.cpus.effective`) and the task's own
//! affinity (`Cpus_allowed_list` in /proc/PID/status, already within the cpuset). A Go
//! program that sets GOMAXPROCS above this gets its Ps' threads preempted or throttled.
//!
//! Everything here reads small text files; the parsers are pure and bound what they accept.
use std::path::{Path, PathBuf};

use serde::Serialize;

/// More CPUs than any Linux build supports (NR_CPUS max is 8192): a CPU list naming a higher
/// one is malformed.
const MAX_CPU: u32 = 1 << 16;

#[derive(Debug, thiserror::Error)]
pub enum CpuLimitError {
    #[error("cannot read {path}: {cause} (has process {pid} exited?)")]
    Read {
        pid: u32,
        path: String,
        cause: std::io::Error,
    },
    #[error("unexpected content in {path}: {content:?}")]
    Parse { path: String, content: String },
}

/// CFS bandwidth counters of a cgroup (`cpu.stat`), cumulative.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Throttling {
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_usec: u64,
}

impl Throttling {
    /// What happened between `earlier` and `self` (counters only grow; a reset reads as 0).
    pub fn since(&self, earlier: &Throttling) -> Throttling {
        Throttling {
            nr_periods: self.nr_periods.saturating_sub(earlier.nr_periods),
            nr_throttled: self.nr_throttled.saturating_sub(earlier.nr_throttled),
            throttled_usec: self.throttled_usec.saturating_sub(earlier.throttled_usec),
        }
    }
}

/// The CPU budget of one process.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CpuBudget {
    /// cgroup v2 path of the process ("/" for the root).
    pub cgroup: String,
    /// Smallest CFS quota along the path, in CPUs (quota / period); None if unlimited: v2
    /// `cpu.max`, and v1 `cpu.cfs_quota_us` on hosts with a v1 cpu hierarchy.
    pub quota_cpus: Option<f64>,
    /// The cgroup whose quota sets `quota_cpus`: a v2 path, or `cpu:<v1 path>`.
    pub quota_cgroup: Option<String>,
    /// CPUs in the process's affinity mask (within its cpuset).
    pub affinity_cpus: u32,
    /// min(quota, affinity): how many CPUs' worth of time the process can get at most.
    pub usable_cpus: f64,
    /// `cpu.stat` of the cgroup setting the quota (None without a quota or without the file).
    pub throttling: Option<Throttling>,
}

/// `cpu.max`: "max 100000" (no limit) or "50000 100000". Returns (quota, period) in µs.
pub fn parse_cpu_max(s: &str) -> Option<Option<(u64, u64)>> {
    let mut f = s.split_whitespace();
    let (max, period) = (f.next()?, f.next()?);
    if f.next().is_some() {
        return None;
    }
    let period: u64 = period.parse().ok().filter(|&p| p > 0)?;
    if max == "max" {
        return Some(None);
    }
    Some(Some((max.parse().ok().filter(|&q| q > 0)?, period)))
}

/// A kernel CPU list ("0-3,8,10-11", cpulist_parse format) -> number of CPUs. None if it is
/// malformed or names a CPU beyond [`MAX_CPU`]. Ranges may overlap only if malformed; the
/// kernel never prints that, and the count would then be too high, not unbounded.
pub fn parse_cpu_list(s: &str) -> Option<u32> {
    let s = s.trim();
    if s.is_empty() {
        return Some(0);
    }
    let mut n: u32 = 0;
    for part in s.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<u32>().ok()?, b.parse::<u32>().ok()?),
            None => {
                let c = part.parse::<u32>().ok()?;
                (c, c)
            }
        };
        if lo > hi || hi >= MAX_CPU {
            return None;
        }
        n = n.checked_add(hi - lo + 1)?;
    }
    Some(n)
}

/// `cpu.stat` lines "key value"; the bandwidth keys are absent on cgroups without the cpu
/// controller enabled and then read as 0.
pub fn parse_cpu_stat(s: &str) -> Throttling {
    let mut t = Throttling::default();
    for l in s.lines() {
        let Some((k, v)) = l.split_once(' ') else {
            continue;
        };
        let Ok(v) = v.trim().parse::<u64>() else {
            continue;
        };
        match k {
            "nr_periods" => t.nr_periods = v,
            "nr_throttled" => t.nr_throttled = v,
            "throttled_usec" => t.throttled_usec = v,
            _ => {}
        }
    }
    t
}

/// The v2 path from /proc/PID/cgroup ("0::/system.slice/x.service").
pub fn parse_proc_cgroup(s: &str) -> Option<String> {
    s.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim().to_string())
        .filter(|p| p.starts_with('/'))
}

/// `Cpus_allowed_list:\t0-1` from /proc/PID/status.
pub fn parse_affinity(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(parse_cpu_list)
}

fn read(pid: u32, path: &Path) -> Result<String, CpuLimitError> {
    std::fs::read_to_string(path).map_err(|source| CpuLimitError::Read {
        pid,
        path: path.display().to_string(),
        cause: source,
    })
}

/// The budget of process `pid`, with cgroup files under `cgroup_mount` (the v2 mount), and
/// the cgroup v1 cpu hierarchy when the host mounts one.
pub fn budget(pid: u32, cgroup_mount: &Path) -> Result<CpuBudget, CpuLimitError> {
    let proc_cgroup = PathBuf::from(format!("/proc/{pid}/cgroup"));
    let text = read(pid, &proc_cgroup)?;
    let cgroup = parse_proc_cgroup(&text).ok_or_else(|| CpuLimitError::Parse {
        path: proc_cgroup.display().to_string(),
        content: text.clone(),
    })?;
    let status_path = PathBuf::from(format!("/proc/{pid}/status"));
    let status = read(pid, &status_path)?;
    let affinity_cpus = parse_affinity(&status).ok_or_else(|| CpuLimitError::Parse {
        path: status_path.display().to_string(),
        content: "no valid Cpus_allowed_list line".into(),
    })?;

    // Walk from the process's cgroup up to the root; the root has no cpu.max.
    let mut quota: Option<(f64, String)> = None;
    let mut at = cgroup.as_str();
    loop {
        let dir = cgroup_mount.join(at.trim_start_matches('/'));
        // No cpu.max: the cpu controller is not enabled at this level (or this is the root).
        if let Ok(max) = std::fs::read_to_string(dir.join("cpu.max")) {
            match parse_cpu_max(&max) {
                Some(Some((q, p))) => {
                    let cpus = q as f64 / p as f64;
                    if quota.as_ref().is_none_or(|(c, _)| cpus < *c) {
                        quota = Some((cpus, at.to_string()));
                    }
                }
                Some(None) => {}
                None => {
                    return Err(CpuLimitError::Parse {
                        path: dir.join("cpu.max").display().to_string(),
                        content: max,
                    });
                }
            }
        }
        match at.rfind('/') {
            Some(0) if at.len() > 1 => at = "/",
            Some(i) if i > 0 => at = &at[..i],
            _ => break,
        }
    }
    let mut throttling = quota.as_ref().and_then(|(_, cg)| {
        let p = cgroup_mount
            .join(cg.trim_start_matches('/'))
            .join("cpu.stat");
        std::fs::read_to_string(p).ok().map(|s| parse_cpu_stat(&s))
    });
    // Hybrid and legacy hosts keep the cpu controller on cgroup v1: its quota applies too.
    if let Some((q, cg, t)) = v1_quota(&text) {
        if quota.as_ref().is_none_or(|(c, _)| q < *c) {
            quota = Some((q, cg));
            throttling = t;
        }
    }
    let usable_cpus = match &quota {
        Some((q, _)) => q.min(affinity_cpus as f64),
        None => affinity_cpus as f64,
    };
    Ok(CpuBudget {
        cgroup,
        quota_cpus: quota.as_ref().map(|(q, _)| *q),
        quota_cgroup: quota.map(|(_, cg)| cg),
        affinity_cpus,
        usable_cpus,
        throttling,
    })
}

/// The v1 path of the cgroup holding `controller` ("4:cpu,cpuacct:/a/b" -> "/a/b").
pub fn parse_proc_cgroup_v1(s: &str, controller: &str) -> Option<String> {
    s.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_id, ctrls, path) = (f.next()?, f.next()?, f.next()?);
        (ctrls.split(',').any(|c| c == controller) && path.starts_with('/'))
            .then(|| path.trim().to_string())
    })
}

/// Where the cgroup v1 hierarchy of `controller` is mounted, from a mountinfo file: (mount
/// point, root of the mount within the hierarchy). proc(5): fields 4 (root) and 5 (mount
/// point), then after " - " the fs type and the super options naming the controllers.
pub fn parse_v1_mount(mountinfo: &str, controller: &str) -> Option<(String, String)> {
    mountinfo.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        let mut p = post.split_whitespace();
        let (fstype, _src, opts) = (p.next()?, p.next()?, p.next()?);
        if fstype != "cgroup" || !opts.split(',').any(|o| o == controller) {
            return None;
        }
        let f: Vec<&str> = pre.split_whitespace().collect();
        Some((f.get(4)?.to_string(), f.get(3)?.to_string()))
    })
}

/// `cpu.cfs_quota_us` ("-1": none) and `cpu.cfs_period_us` -> CPUs, or None for no limit.
pub fn parse_cfs_quota(quota: &str, period: &str) -> Option<f64> {
    let q: i64 = quota.trim().parse().ok()?;
    let p: u64 = period.trim().parse().ok().filter(|&p| p > 0)?;
    (q > 0).then(|| q as f64 / p as f64)
}

/// v1 `cpu.stat`: throttled_time is in ns (Documentation/scheduler/sched-bwc.rst).
pub fn parse_cpu_stat_v1(s: &str) -> Throttling {
    let mut t = parse_cpu_stat(s);
    if let Some(ns) = s
        .lines()
        .find_map(|l| l.strip_prefix("throttled_time "))
        .and_then(|v| v.trim().parse::<u64>().ok())
    {
        t.throttled_usec = ns / 1000;
    }
    t
}

/// The smallest cgroup v1 CFS quota along the process's cpu-controller path: (CPUs,
/// `cpu:<path>`, that cgroup's throttling). None without a v1 cpu hierarchy or a quota. Paths are
/// resolved in our mount namespace; a hierarchy mounted at a sub-root (a container's view)
/// is matched by stripping that root.
fn v1_quota(proc_cgroup: &str) -> Option<(f64, String, Option<Throttling>)> {
    let path = parse_proc_cgroup_v1(proc_cgroup, "cpu")?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let (mount, root) = parse_v1_mount(&mountinfo, "cpu")?;
    let rel = path
        .strip_prefix(root.trim_end_matches('/'))
        .unwrap_or(&path);
    let mut best: Option<(f64, String)> = None;
    let mut at = if rel.is_empty() { "/" } else { rel };
    loop {
        let dir = Path::new(&mount).join(at.trim_start_matches('/'));
        let q = std::fs::read_to_string(dir.join("cpu.cfs_quota_us")).ok();
        let p = std::fs::read_to_string(dir.join("cpu.cfs_period_us")).ok();
        if let Some(cpus) = q.zip(p).and_then(|(q, p)| parse_cfs_quota(&q, &p)) {
            if best.as_ref().is_none_or(|(c, _)| cpus < *c) {
                best = Some((cpus, at.to_string()));
            }
        }
        match at.rfind('/') {
            Some(0) if at.len() > 1 => at = "/",
            Some(i) if i > 0 => at = &at[..i],
            _ => break,
        }
    }
    let (cpus, at) = best?;
    let stat = Path::new(&mount)
        .join(at.trim_start_matches('/'))
        .join("cpu.stat");
    let t = std::fs::read_to_string(stat)
        .ok()
        .map(|s| parse_cpu_stat_v1(&s));
    Some((cpus, format!("cpu:{at}"), t))
}

/// A plain-words warning when `gomaxprocs` exceeds what the process can use, else None.
pub fn gomaxprocs_warning(gomaxprocs: u32, b: &CpuBudget) -> Option<String> {
    // Half a CPU of slack: a quota of 1.5 CPUs with GOMAXPROCS=2 is a sensible choice.
    if gomaxprocs as f64 <= b.usable_cpus + 0.5 {
        return None;
    }
    let why = match (&b.quota_cpus, &b.quota_cgroup) {
        (Some(q), Some(cg)) if *q <= b.affinity_cpus as f64 => {
            format!("the CPU quota of cgroup {cg} allows {q:.2} CPUs")
        }
        _ => format!("its CPU affinity allows {} CPUs", b.affinity_cpus),
    };
    Some(format!(
        "GOMAXPROCS={gomaxprocs} but {why}: runnable goroutines wait on the kernel's run queue \
         (or the cgroup is throttled) instead of for a P; set GOMAXPROCS to {} or raise the limit",
        (b.usable_cpus.ceil() as u32).max(1)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_v1_parsers() {
        let pc = "12:pids:/x\n4:cpu,cpuacct:/kubepods/pod1/c1\n0::/system.slice\n";
        assert_eq!(
            parse_proc_cgroup_v1(pc, "cpu").as_deref(),
            Some("/kubepods/pod1/c1")
        );
        assert_eq!(
            parse_proc_cgroup_v1(pc, "cpuacct").as_deref(),
            Some("/kubepods/pod1/c1")
        );
        assert_eq!(parse_proc_cgroup_v1(pc, "cpuset"), None);
        // cpu,cpuacct co-mounted, and a separate cpuset that must not match "cpu".
        let mi = "30 25 0:26 / /sys/fs/cgroup/cpuset rw,relatime shared:9 - cgroup cgroup rw,cpuset\n\
                  31 25 0:27 /kubepods /sys/fs/cgroup/cpu,cpuacct rw shared:10 - cgroup cgroup rw,cpu,cpuacct\n";
        assert_eq!(
            parse_v1_mount(mi, "cpu"),
            Some(("/sys/fs/cgroup/cpu,cpuacct".into(), "/kubepods".into()))
        );
        assert_eq!(parse_v1_mount("garbage\n", "cpu"), None);
        assert_eq!(parse_cfs_quota("50000\n", "100000\n"), Some(0.5));
        assert_eq!(parse_cfs_quota("-1", "100000"), None);
        assert_eq!(parse_cfs_quota("50000", "0"), None);
        assert_eq!(parse_cfs_quota("x", "100000"), None);
        let t = parse_cpu_stat_v1("nr_periods 10\nnr_throttled 4\nthrottled_time 2500000\n");
        assert_eq!(
            t,
            Throttling {
                nr_periods: 10,
                nr_throttled: 4,
                throttled_usec: 2500
            }
        );
    }

    #[test]
    fn cpu_max() {
        assert_eq!(parse_cpu_max("max 100000\n"), Some(None));
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(Some((50000, 100000))));
        for bad in [
            "",
            "max",
            "50000 0",
            "-1 100000",
            "0 100000",
            "1 2 3",
            "x 100000",
        ] {
            assert_eq!(parse_cpu_max(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-3,8,10-11\n"), Some(7));
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list(""), Some(0));
        for bad in ["3-1", "a", "0-", ",", "0-4294967295", "70000"] {
            assert_eq!(parse_cpu_list(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn cpu_stat_and_deltas() {
        let a = parse_cpu_stat(
            "usage_usec 100\nnr_periods 10\nnr_throttled 4\nthrottled_usec 9000\nnr_bursts 0\n",
        );
        assert_eq!(
            a,
            Throttling {
                nr_periods: 10,
                nr_throttled: 4,
                throttled_usec: 9000
            }
        );
        let b = Throttling {
            nr_periods: 30,
            nr_throttled: 5,
            throttled_usec: 10_000,
        };
        assert_eq!(
            b.since(&a),
            Throttling {
                nr_periods: 20,
                nr_throttled: 1,
                throttled_usec: 1000
            }
        );
        assert_eq!(a.since(&b), Throttling::default());
        assert_eq!(
            parse_cpu_stat("garbage\nnr_periods x\n"),
            Throttling::default()
        );
    }

    #[test]
    fn proc_files() {
        assert_eq!(
            parse_proc_cgroup("0::/system.slice/a.service\n").as_deref(),
            Some("/system.slice/a.service")
        );
        // Hybrid hosts list v1 hierarchies first.
        assert_eq!(
            parse_proc_cgroup("12:cpu,cpuacct:/x\n0::/y\n").as_deref(),
            Some("/y")
        );
        assert_eq!(parse_proc_cgroup("1:name=systemd:/x\n"), None);
        assert_eq!(
            parse_affinity("Name:\tx\nCpus_allowed:\t3\nCpus_allowed_list:\t0-1\n"),
            Some(2)
        );
    }

    fn b(quota: Option<f64>, affinity: u32) -> CpuBudget {
        CpuBudget {
            cgroup: "/k".into(),
            quota_cpus: quota,
            quota_cgroup: quota.map(|_| "/k".into()),
            affinity_cpus: affinity,
            usable_cpus: quota.unwrap_or(f64::MAX).min(affinity as f64),
            throttling: None,
        }
    }

    #[test]
    fn warns_only_when_gomaxprocs_exceeds_the_budget() {
        assert_eq!(gomaxprocs_warning(2, &b(None, 2)), None);
        assert_eq!(gomaxprocs_warning(2, &b(Some(1.5), 2)), None);
        let w = gomaxprocs_warning(8, &b(Some(1.0), 8)).unwrap();
        assert!(w.contains("GOMAXPROCS=8") && w.contains("quota of cgroup /k allows 1.00 CPUs"));
        assert!(w.contains("set GOMAXPROCS to 1"), "{w}");
        let w = gomaxprocs_warning(4, &b(None, 2)).unwrap();
        assert!(w.contains("affinity allows 2 CPUs"), "{w}");
    }

    /// `budget` of this very process against a fake cgroup tree that mirrors its real cgroup
    /// path, with quotas at two levels: the smaller one wins, wherever it is.
    #[test]
    fn budget_takes_the_smallest_quota_along_the_path() {
        let pid = std::process::id();
        let real = parse_proc_cgroup(&std::fs::read_to_string("/proc/self/cgroup").unwrap())
            .expect("cgroup v2 path of the test process");
        let root = std::env::temp_dir().join(format!("schedlat-cpulimit-{pid}"));
        let leaf = root.join(real.trim_start_matches('/'));
        std::fs::create_dir_all(&leaf).unwrap();
        let affinity =
            parse_affinity(&std::fs::read_to_string("/proc/self/status").unwrap()).unwrap();

        std::fs::write(leaf.join("cpu.max"), "50000 100000\n").unwrap();
        std::fs::write(
            leaf.join("cpu.stat"),
            "usage_usec 5\nnr_periods 7\nnr_throttled 3\nthrottled_usec 42\n",
        )
        .unwrap();
        // The parent level (or the root itself for a process in "/"): a looser limit.
        let parent = leaf.parent().unwrap().to_path_buf();
        std::fs::write(parent.join("cpu.max"), "300000 100000\n").unwrap();
        let b = budget(pid, &root).unwrap();
        assert_eq!(b.cgroup, real);
        assert_eq!(b.quota_cpus, Some(0.5));
        assert_eq!(b.quota_cgroup.as_deref(), Some(real.as_str()));
        assert_eq!(b.usable_cpus, 0.5_f64.min(affinity as f64));
        assert_eq!(b.throttling.unwrap().nr_throttled, 3);

        // Tighter at the parent (when there is one): it wins.
        if real != "/" {
            std::fs::write(parent.join("cpu.max"), "20000 100000\n").unwrap();
            let b = budget(pid, &root).unwrap();
            assert_eq!(b.quota_cpus, Some(0.2));
            assert_ne!(b.quota_cgroup.as_deref(), Some(real.as_str()));
        }
        // Unlimited everywhere: the affinity is the budget.
        std::fs::write(leaf.join("cpu.max"), "max 100000\n").unwrap();
        std::fs::write(parent.join("cpu.max"), "max 100000\n").unwrap();
        let b = budget(pid, &root).unwrap();
        assert_eq!((b.quota_cpus, b.throttling), (None, None));
        assert_eq!(b.usable_cpus, affinity as f64);
        // A corrupt cpu.max is an error naming the file.
        std::fs::write(leaf.join("cpu.max"), "lots\n").unwrap();
        let e = budget(pid, &root).unwrap_err().to_string();
        assert!(e.contains("cpu.max") && e.contains("lots"), "{e}");
        std::fs::remove_dir_all(&root).unwrap();
        // An exited process: the error says so.
        let e = budget(u32::MAX - 1, &root).unwrap_err().to_string();
        assert!(e.contains("exited"), "{e}");
    }
}
