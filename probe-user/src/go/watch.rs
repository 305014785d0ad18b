//! The daemon's Go programs: at each scrape, find the selected Go processes (new ones are
//! picked up, exited ones dropped, no restart), read their runtime's own scheduler statistics
//! from memory (crate::goruntime::live) and export them by (binary, cgroup), no pid label.
//!
//! Cost: per selected process and scrape, a pidfd, its start time and one open of
//! /proc/PID/exe; each distinct executable (device, inode, size, mtime of the descriptor
//! opened) is classified (Go or not, layout) once, by a background thread, so a scrape never
//! waits for an analysis: it reads the processes whose executable is classified and hands new
//! ones to the thread. Then a few process_vm_readv calls per Go process, after which the
//! process is checked to be the one opened, running the file analysed. Nothing runs in the
//! target processes.
use std::{
    collections::{BTreeMap, HashMap, HashSet},
    fs::File,
    os::unix::fs::FileExt,
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use prometheus::proto::{Bucket, Histogram as PromHist, Metric, MetricFamily, MetricType};
use tracing::warn;

use crate::{
    config::GoConfig,
    exporter::metrics::{counter, family, gauge, label},
    goruntime::{self, GoError, Layout, Scheme, live::ExeKey},
};

/// Cached classifications of executables; cleared when full (re-classified on demand).
const MAX_CACHE: usize = 4096;
/// Prometheus buckets: powers of two from 2^9 ns (512 ns) to 2^47 ns (~39 h). Both known Go
/// layouts have a boundary at each of these, so no Go bucket straddles one (runtime/histogram.go).
const FIRST_BIT: u32 = 9;
const LAST_BIT: u32 = 47;

/// Upper bounds (exclusive, ns) of the Prometheus buckets for `per_octave` (1, 2 or 4; the
/// finest both Go layouts support is 4 per power of two).
pub fn prom_bounds_ns(per_octave: u32) -> Vec<u64> {
    let per = per_octave.clamp(1, 4);
    let mut v = Vec::new();
    for bit in FIRST_BIT..LAST_BIT {
        for j in 0..per {
            v.push((1u64 << bit) + (u64::from(j) << bit) / u64::from(per));
        }
    }
    v.push(1u64 << LAST_BIT);
    v
}

/// Go counts (runtime/metrics order: underflow, counts..., [overflow]) to non-cumulative
/// counts per Prometheus bucket (`bounds.len() + 1`, last = +Inf), and a lower-bound estimate
/// of the sum in ns (the runtime keeps no sum; each sample counted at its bucket's lower
/// bound, as Prometheus' Go client does for runtime/metrics histograms).
pub fn to_prom(scheme: Scheme, metrics_counts: &[u64], bounds: &[u64]) -> (Vec<u64>, f64) {
    let mut out = vec![0u64; bounds.len() + 1];
    let mut sum = 0f64;
    let n = scheme.counts_len();
    for (idx, &c) in metrics_counts.iter().enumerate() {
        if c == 0 {
            continue;
        }
        let (slot, lower) = match idx {
            // Underflow (negative durations: a clock step) goes to the first bucket.
            0 => (0, 0),
            i if i <= n => {
                let k = i - 1;
                let slot = match scheme.upper_ns(k) {
                    Some(hi) => bounds.partition_point(|&b| b < hi),
                    None => bounds.len(),
                };
                (slot, scheme.lower_ns(k))
            }
            // Overflow: >= 2^47 ns.
            _ => (bounds.len(), 1u64 << LAST_BIT),
        };
        out[slot] = out[slot].saturating_add(c);
        sum += c as f64 * lower as f64;
    }
    (out, sum)
}

#[derive(Clone)]
enum Class {
    NotGo,
    Go(Arc<Layout>),
    /// A Go program we cannot read (stripped, unknown layout): the reason label.
    Unreadable(&'static str),
}

/// The histograms read from each process, in Prometheus buckets with a sum estimate:
/// scheduling latency, then the stop-the-world pauses in STW_SERIES order (empty before Go
/// 1.22, which keeps no pause histograms).
const NHIST: usize = 5;
type Reading = [(Vec<u64>, f64); NHIST];
/// (phase, kind) labels of readings 1..5.
const STW_SERIES: [(&str, &str); 4] = [
    ("stopping", "gc"),
    ("stopping", "other"),
    ("total", "gc"),
    ("total", "other"),
];

/// Index in a Reading of the (total, gc) pause histogram, the one Go < 1.22 can fill.
const GC_TOTAL: usize = 3;

/// Add exact durations (ns) to non-cumulative counts per Prometheus bucket (`bounds` are
/// exclusive upper bounds; last slot +Inf) and to the sum.
fn add_pauses(acc: &mut (Vec<u64>, f64), durations_ns: &[u64], bounds: &[u64]) {
    if acc.0.len() < bounds.len() + 1 {
        acc.0.resize(bounds.len() + 1, 0);
    }
    for &d in durations_ns {
        let slot = bounds.partition_point(|&b| b <= d);
        acc.0[slot] = acc.0[slot].saturating_add(1);
        acc.1 += d as f64;
    }
}

/// The last reading of a live process.
struct Proc {
    reading: Reading,
    /// memstats.numgc at that reading (Go < 1.22): the cycles already in reading[GC_TOTAL].
    num_gc: Option<u32>,
}

/// Add `r` into `acc` (either may have empty vectors: a histogram nobody kept).
fn add_reading(acc: &mut Reading, r: &Reading) {
    for ((a, asum), (c, csum)) in acc.iter_mut().zip(r) {
        if a.len() < c.len() {
            a.resize(c.len(), 0);
        }
        for (x, y) in a.iter_mut().zip(c) {
            *x = x.saturating_add(*y);
        }
        *asum += csum;
    }
}

#[derive(Default)]
struct Series {
    /// Counts of processes gone since the daemon started (so the series never goes back).
    base: Reading,
    /// The last reading of each live pid.
    live: HashMap<u32, Proc>,
    /// GC pauses of Go < 1.22 processes the ring had overwritten before we read them.
    gc_lost: u64,
    seen: HashSet<u32>,
    /// GOMAXPROCS summed over the live processes (their Ps together), and its extremes (what
    /// one process may use, to hold against the CPU its container may use).
    gomaxprocs: i64,
    gomaxprocs_max: i64,
    gomaxprocs_min: i64,
    goroutines: i64,
    /// Go >= 1.26 processes: goroutines runnable, running, waiting, not in Go; threads.
    states: [u64; 4],
    threads: u64,
    with_states: u64,
    processes: u64,
    /// When the last process of the series was gone; None while one is live.
    idle_since: Option<Instant>,
}

/// Executables waiting for classification (each an open descriptor): beyond this, new ones
/// wait for a later scrape (counted as `classify_queue_full`).
const MAX_QUEUE: usize = 64;
/// Processes whose failure was logged (one line per process, not per scrape); cleared when
/// full.
const MAX_LOGGED: usize = 4096;

/// Classifications made by the background thread, read by scrapes.
#[derive(Default)]
struct Classified {
    done: HashMap<ExeKey, Class>,
    /// Sent to the thread, not classified yet.
    pending: HashSet<ExeKey>,
    /// Failures reading an executable (not cached: retried at a later scrape), by reason.
    failed: Vec<(ExeKey, &'static str)>,
}

/// Classifies executables off the scrape path: a planted binary that takes long to refuse
/// delays only its own classification, never /metrics.
struct Classifier {
    tx: std::sync::mpsc::SyncSender<(ExeKey, File)>,
    /// Results, and a condition variable signalled at each.
    shared: Arc<(Mutex<Classified>, Condvar)>,
}

/// How long a scrape waits for the executables it handed over (a real binary's analysis takes
/// tens of ms, so new programs are read at their first scrape); past it, they are read at a
/// later scrape.
const CLASSIFY_WAIT: Duration = Duration::from_millis(500);

impl Classifier {
    /// `log`: warn about an unreadable Go executable (not from `schedlat top`, whose screen
    /// a log line would scribble over; it shows the counts instead).
    fn spawn(log: bool) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(ExeKey, File)>(MAX_QUEUE);
        let shared: Arc<(Mutex<Classified>, Condvar)> = Default::default();
        let out = shared.clone();
        // Exits when the watcher (the sender) is dropped.
        std::thread::Builder::new()
            .name("go-classify".into())
            .spawn(move || {
                while let Ok((key, f)) = rx.recv() {
                    let class = classify_file(f, log);
                    let mut st = out.0.lock().unwrap_or_else(|e| e.into_inner());
                    st.pending.remove(&key);
                    match class {
                        Ok(c) => {
                            if st.done.len() >= MAX_CACHE {
                                st.done.clear();
                            }
                            st.done.insert(key, c);
                        }
                        Err(r) => st.failed.push((key, r)),
                    }
                    out.1.notify_all();
                }
            })?;
        Ok(Self { tx, shared })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Classified> {
        self.shared.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wait (at most CLASSIFY_WAIT) until none of `keys` is pending.
    fn wait_for(&self, keys: &[ExeKey]) {
        let deadline = Instant::now() + CLASSIFY_WAIT;
        let mut st = self.lock();
        while keys.iter().any(|k| st.pending.contains(k)) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            st = match self.shared.1.wait_timeout(st, left) {
                Ok((g, _)) => g,
                Err(e) => e.into_inner().0,
            };
        }
    }
}

/// Go or not, and how to read it; Err(reason) for a failure of reading the file, which is
/// not the executable's fault and not cached.
fn classify_file(f: File, log: bool) -> Result<Class, &'static str> {
    if !has_go_section(&f) {
        return Ok(Class::NotGo);
    }
    match goruntime::live::analyse_file(f) {
        Ok(l) => Ok(Class::Go(Arc::new(l))),
        // Counted by the scrape that finds it (each time: it is retried), not logged here.
        Err(e @ GoError::Io { .. }) => Err(reason(&e)),
        Err(e) => {
            if log {
                warn!(error = %e, "Go executable not readable; counted in schedlat_go_read_errors_total");
            }
            Ok(Class::Unreadable(reason(&e)))
        }
    }
}

pub struct GoWatcher {
    cfg: GoConfig,
    bounds: Vec<u64>,
    self_pid: u32,
    classifier: Option<Classifier>,
    series: BTreeMap<(String, String), Series>,
    errors: BTreeMap<&'static str, u64>,
    skipped: usize,
    /// Selected processes whose executable is not classified yet at this scrape.
    pending: usize,
    warned: HashSet<ExeKey>,
    /// (pid, reason) already logged.
    logged: HashSet<(u32, &'static str)>,
    /// The cgroup2 mount's root as our cgroup namespace sees it (e.g. "/../.." inside a
    /// container): process cgroup paths are made relative to it (the host's view).
    mount_root: Option<String>,
    /// Only these pids are looked at (`schedlat top --go --pid`), instead of all of /proc.
    only_pids: Option<Vec<u32>>,
    /// Whether failures are logged (else only counted).
    log: bool,
}

/// A selected Go process, opened (pidfd, start time, executable), whose executable's layout
/// is known: what a scrape reads.
pub struct Found {
    pub pid: u32,
    pub layout: Arc<Layout>,
    pub target: goruntime::live::Target,
    /// The executable's file name (the `binary` label).
    pub binary: String,
    /// cgroup v2 path in the host's view.
    pub cgroup: String,
}

impl Found {
    /// Its runtime's statistics, read now; an error if the pid no longer names the process
    /// opened running the file analysed (the reading of another program is discarded).
    pub fn read(&self) -> Result<goruntime::live::Stats, GoError> {
        #[cfg(test)]
        goruntime::live::test_hook::between_scan_and_read(self.pid);
        self.target.checked(goruntime::live::read_with(
            self.pid,
            &self.layout,
            &self.target.meta,
        ))
    }
}

fn reason(e: &GoError) -> &'static str {
    match e {
        GoError::Stripped { .. } | GoError::MissingSymbol { .. } | GoError::NoBuildInfo { .. } => {
            "stripped"
        }
        GoError::MissingDwarf { .. } | GoError::UnknownHistogram { .. } => "unsupported_version",
        GoError::Unsupported { .. } | GoError::Malformed { .. } => "unsupported_binary",
        GoError::OverBudget { .. } => "over_budget",
        GoError::ProcessGone { .. } => "exited",
        GoError::ProcessChanged { .. } => "process_changed",
        GoError::NotGo { .. } => "not_go",
        GoError::Io { cause, .. } if cause.kind() == std::io::ErrorKind::PermissionDenied => {
            "permission"
        }
        GoError::Io { .. } => "read_failed",
        GoError::Inconsistent { .. } => "inconsistent",
    }
}

/// Cheap Go check with a few preads (no full read): does the ELF have a .go.buildinfo section,
/// or (a Go binary whose build info was removed) a .gopclntab?
fn has_go_section(f: &File) -> bool {
    has_go_section_at(|buf, off| f.read_exact_at(buf, off))
}

/// [`has_go_section`] over any positioned reader: the daemon's first look at every
/// selected executable, so the go_elf fuzz target runs it too.
pub fn has_go_section_at(read_at: impl Fn(&mut [u8], u64) -> std::io::Result<()>) -> bool {
    let mut eh = [0u8; 64];
    if read_at(&mut eh, 0).is_err() || &eh[..4] != b"\x7fELF" || eh[4] != 2 || eh[5] != 1 {
        return false;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]) as u64;
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or([0; 8]));
    let (shoff, shentsize, shnum, shstrndx) = (
        u64_at(&eh, 0x28),
        u16_at(&eh, 0x3a),
        u16_at(&eh, 0x3c),
        u16_at(&eh, 0x3e),
    );
    if shentsize != 64 || shnum == 0 || shstrndx >= shnum {
        return false;
    }
    let mut sh = vec![0u8; (shnum * 64) as usize]; // <= 64 Ki * 64 B = 4 MiB
    if read_at(&mut sh, shoff).is_err() {
        return false;
    }
    let str_hdr = &sh[(shstrndx * 64) as usize..][..64];
    let (str_off, str_size) = (u64_at(str_hdr, 0x18), u64_at(str_hdr, 0x20));
    if str_size > 1 << 20 {
        return false;
    }
    let mut names = vec![0u8; str_size as usize];
    if read_at(&mut names, str_off).is_err() {
        return false;
    }
    sh.chunks_exact(64).any(|h| {
        let name = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize;
        names.get(name..).is_some_and(|n| {
            [
                &b".go.buildinfo\0"[..],
                b".gopclntab\0",
                b".data.rel.ro.gopclntab\0",
            ]
            .iter()
            .any(|s| n.starts_with(s))
        })
    })
}

impl GoWatcher {
    pub fn new(cfg: GoConfig, per_octave: u32) -> Self {
        Self::with(cfg, per_octave, None, true)
    }

    /// `schedlat top --go`: only `pids` when given (else every process the selectors pick),
    /// failures counted, not logged.
    pub fn for_top(cfg: GoConfig, pids: Option<Vec<u32>>) -> Self {
        Self::with(cfg, 4, pids, false)
    }

    fn with(cfg: GoConfig, per_octave: u32, only_pids: Option<Vec<u32>>, log: bool) -> Self {
        let classifier = Classifier::spawn(log)
            .inspect_err(|e| {
                warn!(error = %e, "starting the Go classification thread; no Go process will be read");
            })
            .ok();
        let mount_root = crate::host::cgroup::v2_mount().ok().and_then(|m| {
            let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
            crate::host::cgroup::mount_root_from_mountinfo(&mi, &m)
        });
        Self {
            cfg,
            bounds: prom_bounds_ns(per_octave),
            self_pid: std::process::id(),
            classifier,
            series: BTreeMap::new(),
            errors: BTreeMap::new(),
            skipped: 0,
            pending: 0,
            warned: HashSet::new(),
            logged: HashSet::new(),
            mount_root,
            only_pids,
            log,
        }
    }

    /// Failures so far, by reason (what schedlat_go_read_errors_total exports).
    pub fn errors(&self) -> &BTreeMap<&'static str, u64> {
        &self.errors
    }

    /// At the last scan: selected Go processes left out by `max_processes`, and processes
    /// whose executable was still being classified.
    pub fn left_out(&self) -> (usize, usize) {
        (self.skipped, self.pending)
    }

    fn count_error(&mut self, r: &'static str) {
        *self.errors.entry(r).or_default() += 1;
    }

    /// Count a failure of one process by reason (at every scrape it happens) and log it once
    /// per process and reason.
    pub fn process_error(&mut self, pid: u32, e: &GoError) {
        let r = reason(e);
        self.count_error(r);
        if r == "exited" || !self.log {
            return;
        }
        if self.logged.len() >= MAX_LOGGED {
            self.logged.clear();
        }
        if self.logged.insert((pid, r)) {
            warn!(pid, reason = r, error = %e, "Go process not read (logged once per process; counted in schedlat_go_read_errors_total)");
        }
    }

    /// Hand the executables not classified yet to the background thread (each once) and
    /// wait briefly for those; then the classification of each, None while pending.
    fn classify_all(&mut self, targets: &[&goruntime::live::Target]) -> Vec<Option<Class>> {
        let Some(c) = &self.classifier else {
            return vec![None; targets.len()];
        };
        let mut submitted = Vec::new();
        let mut full = 0u64;
        {
            let mut st = c.lock();
            for t in targets {
                let key = t.key();
                if st.done.contains_key(&key) || st.pending.contains(&key) {
                    continue;
                }
                match t.exe.try_clone().map(|f| c.tx.try_send((key, f))) {
                    Ok(Ok(())) => {
                        st.pending.insert(key);
                        submitted.push(key);
                    }
                    _ => full += 1,
                }
            }
        }
        if !submitted.is_empty() {
            c.wait_for(&submitted);
        }
        let (classes, failed) = {
            let mut st = c.lock();
            let classes: Vec<Option<Class>> = targets
                .iter()
                .map(|t| st.done.get(&t.key()).cloned())
                .collect();
            (classes, std::mem::take(&mut st.failed))
        };
        for (_, r) in failed {
            self.count_error(r);
        }
        for _ in 0..full {
            self.count_error("classify_queue_full");
        }
        classes
    }

    /// Wait until no classification is pending (tests).
    #[cfg(test)]
    fn settle(&self) {
        let Some(c) = &self.classifier else { return };
        for _ in 0..600 {
            if c.lock().pending.is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("Go classification still pending after 30 s");
    }

    /// Whether `pid` passes the configured selectors (all pass when none is set).
    fn selected(&self, pid: u32, exe_path: &str, cgroup: &str) -> bool {
        let c = &self.cfg;
        if c.binaries.is_empty() && c.comms.is_empty() && c.cgroups.is_empty() {
            return true;
        }
        if c.binaries.iter().any(|b| b == exe_path) {
            return true;
        }
        if !c.comms.is_empty() {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if c.comms.iter().any(|x| x == comm.trim_end_matches('\n')) {
                return true;
            }
        }
        c.cgroups.iter().any(|p| {
            let p = p.trim_end_matches('/');
            cgroup == p || p.is_empty() || cgroup.starts_with(&format!("{p}/"))
        })
    }

    /// The process's cgroup v2 path in the host's view (as the kernel-side series label it):
    /// /proc/PID/cgroup is relative to our own cgroup namespace, so inside a container it
    /// reads "/../../kubepods/..."; made relative to the mounted hierarchy's root.
    fn cgroup_of(&self, pid: u32) -> String {
        let unknown = || crate::exporter::metrics::UNKNOWN.to_owned();
        let Some(ns_path) = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("0::").map(str::to_owned))
            })
        else {
            return unknown();
        };
        match &self.mount_root {
            Some(root) => crate::host::cgroup::host_view(&ns_path, root).unwrap_or_else(unknown),
            None if ns_path.contains("/..") => unknown(),
            None => ns_path,
        }
    }

    /// Scan /proc (or the given pids) for the selected Go processes whose executable is
    /// classified, opened, lowest pids first, at most `max_processes` (the rest counted).
    /// None if /proc cannot be read (counted).
    pub fn scan(&mut self) -> Option<Vec<Found>> {
        use goruntime::live::Target;
        let mut found: Vec<Found> = Vec::new();
        let mut candidates: Vec<(Target, String, String)> = Vec::new();
        let pids: Vec<u32> = match &self.only_pids {
            Some(p) => p.clone(),
            None => {
                let Ok(dir) = std::fs::read_dir("/proc") else {
                    self.count_error("proc_unreadable");
                    return None;
                };
                dir.flatten()
                    .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
                    .collect()
            }
        };
        self.pending = 0;
        for pid in pids {
            if pid == self.self_pid {
                continue;
            }
            let exe_path = match std::fs::read_link(format!("/proc/{pid}/exe")) {
                Ok(p) => p
                    .to_string_lossy()
                    .trim_end_matches(" (deleted)")
                    .to_owned(),
                // Kernel threads and processes that just exited have no exe: not ours.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                // Another user's process without CAP_SYS_PTRACE: selectable by comm or
                // cgroup, then counted as a permission failure below.
                Err(_) => String::new(),
            };
            let cgroup = self.cgroup_of(pid);
            if !self.selected(pid, &exe_path, &cgroup) {
                continue;
            }
            // The process (pidfd, start time) and its executable, opened once: the file
            // classified, keyed and read is this descriptor's.
            let t = match Target::open(pid) {
                Ok(t) => t,
                Err(GoError::ProcessGone { .. } | GoError::NotGo { .. }) => continue,
                Err(e) => {
                    self.process_error(pid, &e);
                    continue;
                }
            };
            candidates.push((t, exe_path, cgroup));
        }
        let targets: Vec<&Target> = candidates.iter().map(|c| &c.0).collect();
        let classes = self.classify_all(&targets);
        for ((t, exe_path, cgroup), class) in candidates.into_iter().zip(classes) {
            let key = t.key();
            match class {
                None => self.pending += 1,
                Some(Class::NotGo) => {}
                Some(Class::Go(layout)) => {
                    let binary = exe_path.rsplit('/').next().unwrap_or("").to_owned();
                    found.push(Found {
                        pid: t.pid,
                        layout,
                        target: t,
                        binary,
                        cgroup,
                    });
                }
                // Selected but unreadable: counted once per executable, not per scrape.
                Some(Class::Unreadable(r)) => {
                    if self.warned.len() >= MAX_CACHE {
                        self.warned.clear();
                    }
                    if self.warned.insert(key) {
                        self.count_error(r);
                    }
                }
            }
        }
        found.sort_by_key(|f| f.pid);
        self.skipped = found.len().saturating_sub(self.cfg.max_processes);
        found.truncate(self.cfg.max_processes);
        Some(found)
    }

    /// Scan /proc and read every selected Go process whose executable is classified.
    pub fn scrape(&mut self) {
        let Some(found) = self.scan() else {
            return;
        };
        for s in self.series.values_mut() {
            s.seen.clear();
            s.gomaxprocs = 0;
            s.gomaxprocs_max = 0;
            s.gomaxprocs_min = i64::MAX;
            s.goroutines = 0;
            s.states = [0; 4];
            s.threads = 0;
            s.with_states = 0;
            s.processes = 0;
        }
        for f in found {
            let pid = f.pid;
            // Read, then check the pid still names the process opened, running the file
            // analysed: otherwise the reading is of another program and is discarded.
            let read = f.read();
            let mut key = (f.binary, f.cgroup);
            if !self.series.contains_key(&key) && self.series.len() >= self.cfg.max_series {
                key = ("other".into(), "other".into());
            }
            let stats = match read {
                Ok(s) => s,
                Err(e) => {
                    let r = reason(&e);
                    self.process_error(pid, &e);
                    if r != "exited" {
                        // Still running: keep its last reading live rather than banking it,
                        // or the next good read would add its whole history a second time.
                        if let Some(s) = self.series.get_mut(&key) {
                            if s.live.contains_key(&pid) {
                                s.seen.insert(pid);
                            }
                        }
                    }
                    continue;
                }
            };
            let bounds = &self.bounds;
            let prom = |h: &goruntime::live::LatencyHist| to_prom(h.scheme, &h.counts, bounds);
            let mut reading: Reading = Default::default();
            reading[0] = prom(&stats.sched_latencies);
            if let Some(p) = &stats.stw_pauses {
                for (i, h) in [
                    &p.stopping_gc,
                    &p.stopping_other,
                    &p.total_gc,
                    &p.total_other,
                ]
                .into_iter()
                .enumerate()
                {
                    reading[i + 1] = prom(h);
                }
            }
            let s = self.series.entry(key).or_default();
            let total: u64 = reading[0].0.iter().sum();
            let mut prev = s.live.remove(&pid);
            // A smaller total (or GC count) under the same pid is a new process that reused
            // it: bank the old one.
            let reused = prev.as_ref().is_some_and(|p| {
                p.reading[0].0.iter().sum::<u64>() > total
                    || matches!((p.num_gc, &stats.gc_pauses), (Some(n), Some(g)) if n > g.num_gc)
            });
            if reused {
                if let Some(p) = prev.take() {
                    add_reading(&mut s.base, &p.reading);
                }
            }
            // Go < 1.22: no pause histogram in the runtime, so build one from the pause ring,
            // adding the cycles recorded since this process's previous reading.
            let mut num_gc = None;
            if let Some(g) = &stats.gc_pauses {
                let (seen, mut acc) = match &prev {
                    Some(Proc {
                        num_gc: Some(n),
                        reading,
                    }) => (*n, reading[GC_TOTAL].clone()),
                    _ => (0, Default::default()),
                };
                let new = g.num_gc.saturating_sub(seen) as usize;
                let have = new.min(g.recent_ns.len());
                let fresh = &g.recent_ns[g.recent_ns.len() - have..];
                add_pauses(&mut acc, fresh, &self.bounds);
                reading[GC_TOTAL] = acc;
                s.gc_lost = s.gc_lost.saturating_add((new - have) as u64);
                num_gc = Some(g.num_gc);
            }
            s.live.insert(pid, Proc { reading, num_gc });
            s.seen.insert(pid);
            s.gomaxprocs += i64::from(stats.gomaxprocs);
            s.gomaxprocs_max = s.gomaxprocs_max.max(i64::from(stats.gomaxprocs));
            s.gomaxprocs_min = s.gomaxprocs_min.min(i64::from(stats.gomaxprocs));
            s.goroutines += stats.goroutines.as_ref().map_or(0, |g| g.live);
            if let Some(t) = &stats.sched_stats {
                for (sum, v) in
                    s.states
                        .iter_mut()
                        .zip([t.runnable, t.running, t.waiting, t.not_in_go])
                {
                    *sum += v;
                }
                s.threads += t.threads;
                s.with_states += 1;
            }
            s.processes += 1;
        }
        // A series whose processes all exited keeps its final counts for exited_series_ttl_secs
        // (a last scrape sees them), then goes: exited programs must not pile up.
        let ttl = Duration::from_secs(self.cfg.exited_series_ttl_secs);
        let now = Instant::now();
        self.series.retain(|_, s| {
            if s.processes > 0 {
                s.idle_since = None;
                return true;
            }
            let since = *s.idle_since.get_or_insert(now);
            now.duration_since(since) < ttl
        });
        // Processes gone: their last counts join the base (a failed read of a live one kept it
        // `seen` above).
        for s in self.series.values_mut() {
            let Series {
                base, live, seen, ..
            } = s;
            live.retain(|pid, p| {
                if seen.contains(pid) {
                    return true;
                }
                add_reading(base, &p.reading);
                false
            });
        }
    }

    /// A Prometheus histogram from counts per bucket (`bounds.len() + 1`, or empty: all 0).
    fn prom_hist(
        &self,
        labels: Vec<prometheus::proto::LabelPair>,
        (counts, sum): &(Vec<u64>, f64),
    ) -> Metric {
        let at = |i: usize| counts.get(i).copied().unwrap_or(0);
        let mut p = PromHist::default();
        let mut cum = 0u64;
        let mut buckets = Vec::new();
        for (i, &le) in self.bounds.iter().enumerate() {
            cum = cum.saturating_add(at(i));
            let mut b = Bucket::default();
            // Largest whole ns the bucket holds: Go buckets are [lo, hi) in ns.
            b.set_upper_bound((le - 1) as f64 / 1e9);
            b.set_cumulative_count(cum);
            buckets.push(b);
        }
        cum = cum.saturating_add(at(self.bounds.len()));
        p.set_bucket(buckets);
        p.set_sample_count(cum);
        p.set_sample_sum(sum / 1e9);
        let mut m = Metric::default();
        m.set_label(labels);
        m.set_histogram(p);
        m
    }

    pub fn families(&self) -> Vec<MetricFamily> {
        let mut hists = Vec::new();
        let mut stw = Vec::new();
        let (mut maxprocs, mut gors, mut procs) = (Vec::new(), Vec::new(), Vec::new());
        let (mut maxprocs_max, mut maxprocs_min) = (Vec::new(), Vec::new());
        let (mut states, mut threads) = (Vec::new(), Vec::new());
        let mut lost = Vec::new();
        for ((binary, cgroup), s) in &self.series {
            let labels = || vec![label("binary", binary), label("cgroup", cgroup)];
            let mut all = s.base.clone();
            for p in s.live.values() {
                add_reading(&mut all, &p.reading);
            }
            if s.gc_lost > 0 {
                lost.push(counter(labels(), s.gc_lost as f64));
            }
            hists.push(self.prom_hist(labels(), &all[0]));
            // Pause histograms only where some process keeps them (Go >= 1.22).
            for (k, (phase, kind)) in STW_SERIES.iter().enumerate() {
                if !all[k + 1].0.is_empty() {
                    let mut l = labels();
                    l.push(label("phase", phase));
                    l.push(label("kind", kind));
                    stw.push(self.prom_hist(l, &all[k + 1]));
                }
            }
            if s.processes > 0 {
                maxprocs.push(gauge(labels(), s.gomaxprocs as f64));
                maxprocs_max.push(gauge(labels(), s.gomaxprocs_max as f64));
                maxprocs_min.push(gauge(labels(), s.gomaxprocs_min as f64));
                gors.push(gauge(labels(), s.goroutines as f64));
                procs.push(gauge(labels(), s.processes as f64));
            }
            if s.with_states > 0 {
                for (state, v) in ["runnable", "running", "waiting", "not_in_go"]
                    .iter()
                    .zip(s.states)
                {
                    let mut l = labels();
                    l.push(label("state", state));
                    states.push(gauge(l, v as f64));
                }
                threads.push(gauge(labels(), s.threads as f64));
            }
        }
        let mut out = Vec::new();
        out.extend(family(
            "schedlat_go_sched_latency_seconds",
            "Go runtime's own goroutine scheduling latency (runnable to running; the runtime samples 1 transition in 8), read from sched.timeToRun of the selected Go processes, summed by binary and cgroup. _sum is a lower-bound estimate (bucket lower bounds).",
            MetricType::HISTOGRAM,
            hists,
        ));
        out.extend(family(
            "schedlat_go_stw_pause_seconds",
            "Go runtime's own stop-the-world pauses (Go >= 1.22: sched.stwStoppingTime*/stwTotalTime*, the data behind /sched/pauses/*), by phase (stopping: until every P stopped; total: the whole pause) and kind (gc, other), summed by binary and cgroup; _sum is a lower-bound estimate. Go < 1.22 has only phase=total kind=gc: one sample per GC cycle (its stop-the-world pauses summed), from runtime.memstats.pause_ns, with an exact _sum.",
            MetricType::HISTOGRAM,
            stw,
        ));
        out.extend(family(
            "schedlat_go_gc_pauses_lost_total",
            "GC cycles of Go < 1.22 programs whose pause is missing from schedlat_go_stw_pause_seconds: more than 256 cycles between two reads, so runtime.memstats' ring had overwritten them.",
            MetricType::COUNTER,
            lost,
        ));
        out.extend(family(
            "schedlat_go_gomaxprocs",
            "GOMAXPROCS summed over the live processes of the binary in the cgroup: their Ps together, to compare with schedlat_go_goroutines_by_state{state=\"runnable\"}, summed the same way. Per process see schedlat_go_gomaxprocs_max and _min.",
            MetricType::GAUGE,
            maxprocs,
        ));
        out.extend(family(
            "schedlat_go_gomaxprocs_max",
            "The largest GOMAXPROCS among the live processes of the binary in the cgroup: what one process may run at once, to hold against the CPUs its cgroup may use.",
            MetricType::GAUGE,
            maxprocs_max,
        ));
        out.extend(family(
            "schedlat_go_gomaxprocs_min",
            "The smallest GOMAXPROCS among the live processes of the binary in the cgroup (equal to _max when every process has the same setting).",
            MetricType::GAUGE,
            maxprocs_min,
        ));
        out.extend(family(
            "schedlat_go_goroutines",
            "Goroutines (allglen minus free g's, system goroutines included), summed over the live processes of the binary in the cgroup.",
            MetricType::GAUGE,
            gors,
        ));
        out.extend(family(
            "schedlat_go_goroutines_by_state",
            "Go >= 1.26: goroutines by state as runtime/metrics' /sched/goroutines/* computes them (runnable: in run queues; running: on a P; not_in_go: in system calls or cgo; waiting: the rest, system goroutines included), summed over the live Go >= 1.26 processes of the binary in the cgroup. Runnable goroutines well above GOMAXPROCS while CPUs idle point at P starvation.",
            MetricType::GAUGE,
            states,
        ));
        out.extend(family(
            "schedlat_go_threads",
            "Go >= 1.26: threads owned by the Go runtime (/sched/threads/total: Ms made minus freed, minus extra Ms of cgo callbacks), summed over the live Go >= 1.26 processes of the binary in the cgroup.",
            MetricType::GAUGE,
            threads,
        ));
        out.extend(family(
            "schedlat_go_processes",
            "Go processes read at this scrape.",
            MetricType::GAUGE,
            procs,
        ));
        out.extend(family(
            "schedlat_go_processes_skipped",
            "Selected Go processes not read at this scrape because of go.max_processes.",
            MetricType::GAUGE,
            vec![gauge(vec![], self.skipped as f64)],
        ));
        out.extend(family(
            "schedlat_go_processes_pending",
            "Selected processes not read at this scrape because their executable is still being classified (in the background).",
            MetricType::GAUGE,
            vec![gauge(vec![], self.pending as f64)],
        ));
        out.extend(family(
            "schedlat_go_read_errors_total",
            "Go processes that could not be read, by reason, at each scrape it happens (stripped, unsupported_version, unsupported_binary and over_budget once per executable; process_changed: the pid was reused or the program exec'd between opening and reading, the reading discarded).",
            MetricType::COUNTER,
            self.errors
                .iter()
                .map(|(r, n)| counter(vec![label("reason", r)], *n as f64))
                .collect(),
        ));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every Go bucket lands whole in one Prometheus bucket: its [lo, hi) lies within
    /// (previous bound, bound], for both layouts and every supported resolution.
    #[test]
    fn go_buckets_never_straddle() {
        for scheme in [Scheme::SuperSub, Scheme::MinMaxBits] {
            for per in [1, 2, 4, 8] {
                let bounds = prom_bounds_ns(per);
                assert!(bounds.windows(2).all(|w| w[0] < w[1]));
                for k in 0..scheme.counts_len() {
                    let mut c = vec![0u64; scheme.counts_len() + 2];
                    c[k + 1] = 1;
                    let (out, sum) = to_prom(scheme, &c, &bounds);
                    let slot = out.iter().position(|&x| x == 1).unwrap();
                    let lo = scheme.lower_ns(k);
                    assert_eq!(sum, lo as f64);
                    if slot > 0 {
                        assert!(lo >= bounds[slot - 1], "{scheme:?} {per} k={k}");
                    }
                    if let (Some(hi), Some(b)) = (scheme.upper_ns(k), bounds.get(slot)) {
                        assert!(hi <= *b, "{scheme:?} {per} k={k}");
                    }
                }
                // Underflow to the first bucket, overflow to +Inf.
                let c = scheme.metrics_counts(&vec![0; scheme.counts_len()], 3, 5);
                let (out, _) = to_prom(scheme, &c, &bounds);
                assert_eq!(out[0], 3);
                assert_eq!(
                    out[bounds.len()],
                    if scheme == Scheme::MinMaxBits { 5 } else { 0 }
                );
            }
        }
    }

    /// Pause ring durations land in the bucket whose exclusive upper bound is above them
    /// (the exposition's `le` is that bound minus 1 ns), and the sum is exact.
    #[test]
    fn exact_pauses_in_prometheus_buckets() {
        let bounds = [512, 1024];
        let mut acc = (Vec::new(), 0.0);
        add_pauses(&mut acc, &[0, 511, 512, 1023], &bounds);
        add_pauses(&mut acc, &[1024, 5000], &bounds);
        assert_eq!(acc, (vec![2, 2, 2], 8070.0));
    }

    /// The pid of the Go program scanned is taken over by another Go program (of another
    /// release, so another layout) before the read: the reading is discarded and counted,
    /// never taken as the first program's.
    #[test]
    fn a_pid_reused_between_scan_and_read_discards_the_reading() {
        use crate::goruntime::tests::{Fixture, fixture_versions, root_or_skip};
        let Some(dirs) = fixture_versions() else {
            return;
        };
        // Placing a process at a given pid (ns_last_pid) needs root.
        if !root_or_skip() {
            return;
        }
        let _one = goruntime::live::test_hook::exclusive();
        // A copy of its own, so the selector picks no other test's fixture.
        let tmp = std::env::temp_dir().join(format!("schedlat-reuse-{}", std::process::id()));
        std::fs::create_dir_all(&tmp).unwrap();
        let a_exe = tmp.join("gosched");
        std::fs::copy(dirs.last().unwrap().join("gosched"), &a_exe).unwrap();
        // Same release, another program: A's addresses are mapped in it, so reading it with
        // A's layout succeeds, with meaningless numbers.
        let b_exe = dirs.last().unwrap().join("goevents");
        let a = Fixture::start(&a_exe, 3);
        let pid = a.pid();
        let mut w = GoWatcher::new(
            GoConfig {
                enabled: true,
                binaries: vec![a_exe.to_string_lossy().into_owned()],
                ..Default::default()
            },
            4,
        );
        w.scrape();
        w.settle();
        w.scrape();
        let series = |w: &GoWatcher| w.series.values().map(|s| s.processes).sum::<u64>();
        assert_eq!(series(&w), 1, "the first program is read");

        // Between this scrape's scan and its read: the program exits and another takes its
        // pid (the kernel hands out ns_last_pid + 1 next; retried if someone else forks).
        let a = Mutex::new(Some(a));
        let b: Arc<Mutex<Option<Fixture>>> = Default::default();
        let b2 = b.clone();
        let b_exe2 = b_exe;
        goruntime::live::test_hook::set(Some(Box::new(move |p| {
            if p != pid {
                return;
            }
            drop(a.lock().unwrap().take());
            for _ in 0..200 {
                std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
                let fx = Fixture::start(&b_exe2, 5);
                if fx.pid() == pid {
                    *b2.lock().unwrap() = Some(fx);
                    return;
                }
            }
            panic!("could not start a process at pid {pid}");
        })));
        w.scrape();
        goruntime::live::test_hook::set(None);
        assert_eq!(
            b.lock().unwrap().as_ref().map(Fixture::pid),
            Some(pid),
            "the second program took the pid"
        );
        assert_eq!(
            series(&w),
            0,
            "a reading of the program that reused the pid was taken"
        );
        assert_eq!(w.errors.get("process_changed"), Some(&1), "{:?}", w.errors);
        drop(b);
        let _ = std::fs::remove_dir_all(&tmp);
    }

    #[test]
    fn cheap_go_check() {
        let me = File::open(std::env::current_exe().unwrap()).unwrap();
        assert!(!has_go_section(&me));
        if let Some(root) = std::env::var_os("SCHEDLAT_GO_FIXTURES") {
            for d in std::fs::read_dir(root).unwrap() {
                let d = d.unwrap().path();
                for n in [
                    "gosched",
                    "gosched-pie",
                    "gosched-stripped",
                    // Go without build info: recognised by its .gopclntab.
                    "gosched-pie-stripped-nobuildinfo",
                ] {
                    let f = File::open(d.join(n)).unwrap();
                    assert!(has_go_section(&f), "{}/{n}", d.display());
                }
            }
        }
    }
}
