//! Helpers for the schedlat integration tests (`tests/tests/*.rs`).
//!
//! * locating the binaries: [`schedlat_bin`], [`workload_bin`];
//! * gating privileged tests: [`privileged_or_skip`];
//! * driving `schedlat-workload` through its ready/go/result protocol: [`Workload`];
//! * running `schedlat capture` in the background: [`Schedlat`] / [`Running`], and one-shot
//!   invocations: [`run_schedlat`];
//! * `schedlat daemon` and its /metrics: [`scrape`]; its HTTPS set-up (TLS, basic auth): [`tls`];
//! * the project's Python tools and YAML reading: [`pytools_bin`], [`yaml_documents`];
//! * reading a thread's `/proc/<pid>/task/<tid>/schedstat`: [`read_schedstat`], [`parse_schedstat`];
//! * a test's own scratch directory: [`TempDir`].
//!
//! Nothing here blocks forever: every read of a child's output has a timeout and panics with
//! context (what was expected, what the child printed so far) when it expires.

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError},
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod gofixture;
pub mod inject;
pub mod scrape;
pub mod tls;

/// How long [`Workload`] waits for each protocol line and for the workload to exit.
pub const WORKLOAD_TIMEOUT: Duration = Duration::from_secs(60);
/// Default time [`Running::stop`] / [`Running::wait`] / [`run_schedlat`] give schedlat to exit.
pub const SCHEDLAT_EXIT_TIMEOUT: Duration = Duration::from_secs(120);
/// The stderr line `schedlat capture` prints once its programs are attached (at `--log info`,
/// which [`Running`] sets through `SCHEDLAT_LOG`).
pub const CAPTURE_READY_MARKER: &str = "schedlat: capturing";

const BUILD_HINT: &str = "build it with `cargo xtask build` / run tests via `cargo xtask test`";

/// A fresh directory `schedlat-<tag>-<pid>` under the temp dir (what an earlier run left
/// there is removed first), removed on drop; kept when the test fails, for a look at what
/// it wrote. Derefs to its path.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("schedlat-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
        Self(d)
    }

    /// The path of `f` in the directory, as a string (for command-line arguments).
    pub fn path(&self, f: &str) -> String {
        self.0.join(f).to_str().unwrap().to_string()
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;

    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("kept {} (the test failed)", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn workspace_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn locate(env_var: &str, name: &str) -> PathBuf {
    let path = match std::env::var_os(env_var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_dir().join("target").join("release").join(name),
    };
    if !path.is_file() {
        panic!(
            "{name} binary not found at {} (set {env_var} to override): {BUILD_HINT}",
            path.display()
        );
    }
    path
}

/// The schedlat agent binary: `$SCHEDLAT_BIN`, else `<workspace>/target/release/schedlat`.
/// Panics with a build hint if it does not exist.
pub fn schedlat_bin() -> PathBuf {
    locate("SCHEDLAT_BIN", "schedlat")
}

/// The workload binary: `$SCHEDLAT_WORKLOAD`, else `<workspace>/target/release/schedlat-workload`.
/// Panics with a build hint if it does not exist.
pub fn workload_bin() -> PathBuf {
    locate("SCHEDLAT_WORKLOAD", "schedlat-workload")
}

/// A program from the project's Python venv (`$SCHEDLAT_PYTOOLS/bin/<name>`, else
/// `<workspace>/target/pytools/venv/bin/<name>`), where `cargo xtask setup` installs
/// kubernetes-validate (and with it PyYAML). Panics with a setup hint if it is missing.
pub fn pytools_bin(name: &str) -> PathBuf {
    let venv = match std::env::var_os("SCHEDLAT_PYTOOLS") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_dir().join("target").join("pytools").join("venv"),
    };
    let path = venv.join("bin").join(name);
    if !path.is_file() {
        panic!(
            "{} not found: `cargo xtask setup` installs the project's Python tools there \
             (set SCHEDLAT_PYTOOLS to another venv)",
            path.display()
        );
    }
    path
}

/// Run `script` (Python source) with the project venv's python, `files` as its arguments.
pub fn pytools_python(script: &str, files: &[PathBuf]) -> Output {
    Command::new(pytools_bin("python"))
        .arg("-c")
        .arg(script)
        .args(files)
        .output()
        .expect("running the venv's python")
}

/// Every YAML document of `files`, as JSON, read by PyYAML from the project venv (the same
/// parser kubernetes-validate uses). Each document gets `"__file"`: the file it came from.
pub fn yaml_documents(files: &[PathBuf]) -> Vec<Value> {
    let script = r#"
import json, sys, yaml
docs = []
for f in sys.argv[1:]:
    for d in yaml.safe_load_all(open(f)):
        if d is not None:
            d["__file"] = f
            docs.append(d)
json.dump(docs, sys.stdout)
"#;
    let out = pytools_python(script, files);
    assert!(
        out.status.success(),
        "parsing YAML {files:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_slice(&out.stdout).expect("python printed JSON") {
        Value::Array(docs) => docs,
        other => panic!("expected a list of documents, got {other}"),
    }
}

/// Runs a tool `cargo xtask setup` installs (openssl, curl, htpasswd, ldd, ...); panics naming
/// it if it cannot start.
pub fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e} (`cargo xtask setup` installs it)"))
}

/// [`run`], which must succeed: its stdout.
pub fn ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// True when running as root (the capture tests need CAP_BPF + CAP_PERFMON). Otherwise panics
/// under CI (`CI=true`: a skipped privileged test there is a failure) or prints a loud SKIPPED
/// line and returns false; use as `if !privileged_or_skip() { return; }` at the top of a test.
/// The test is named by its thread: libtest runs each test on a thread named after it, also
/// with `--test-threads=1`.
pub fn privileged_or_skip() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    privileged_or_skip_as(root, std::env::var("CI").as_deref() == Ok("true"))
}

fn privileged_or_skip_as(root: bool, ci: bool) -> bool {
    if root {
        return true;
    }
    let thread = thread::current();
    let test = thread.name().unwrap_or("(a test off its own thread)");
    if ci {
        panic!("privileged test {test} cannot run: not root; under CI this is a failure");
    }
    eprintln!("\n*** SKIPPED {test}: needs root (CAP_BPF+CAP_PERFMON) ***\n");
    false
}

/// Set by `cargo xtask vmtest` inside its qemu (TCG) guests, where timers fire late and
/// programs run ~10x slower. Windows that describe the machine's timing, not schedlat (how
/// close to its deadline a timed wait ends), widen by one histogram bucket there; comparisons
/// with the oracles (schedstat, counts) do not loosen.
pub fn emulated() -> bool {
    std::env::var("SCHEDLAT_TEST_EMULATED").as_deref() == Ok("1")
}

/// Whether `schedlat check` finds kernel feature `feature` (its JSON `feature` name, e.g.
/// `task_pt_regs`) on this kernel: tests of a fallback take the fallback's branch.
pub fn kernel_has(feature: &str) -> bool {
    let out = Command::new(schedlat_bin())
        .args(["check", "--format", "json"])
        .output()
        .expect("running schedlat check");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "schedlat check --format json printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let row = v["features"]
        .as_array()
        .and_then(|f| f.iter().find(|r| r["feature"] == feature))
        .unwrap_or_else(|| panic!("schedlat check has no feature {feature:?}: {v}"));
    row["present"] == true
}

/// Whether the running kernel's release (/proc/sys/kernel/osrelease, e.g. "6.1.0-37-amd64")
/// is at least `major.minor`: for what the kernel reports by version rather than by a feature
/// `schedlat check` names (a bpf_prog_info field).
pub fn kernel_release_at_least(major: u32, minor: u32) -> bool {
    let r = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("reading osrelease");
    let v = release_version(&r).unwrap_or_else(|| panic!("kernel release {r:?}: no x.y"));
    v >= (major, minor)
}

/// (major, minor) of a kernel release string.
fn release_version(r: &str) -> Option<(u32, u32)> {
    let mut it = r.trim().split(['.', '-']);
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

// ------------------------------------------------------------------------- schedstat

/// Parses the contents of a `schedstat` file: `(on-CPU ns, run-queue wait ns, timeslices)`.
pub fn parse_schedstat(s: &str) -> Option<(u64, u64, u64)> {
    let mut it = s.split_ascii_whitespace().map(str::parse::<u64>);
    let t = (it.next()?.ok()?, it.next()?.ok()?, it.next()?.ok()?);
    it.next().is_none().then_some(t)
}

/// Reads `/proc/<pid>/task/<tid>/schedstat`: `(on-CPU ns, run-queue wait ns, timeslices)`.
/// Panics if the thread is gone or the file is unreadable/unparsable (schedstats disabled).
pub fn read_schedstat(pid: u32, tid: u32) -> (u64, u64, u64) {
    let path = format!("/proc/{pid}/task/{tid}/schedstat");
    let s = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    parse_schedstat(&s).unwrap_or_else(|| panic!("unparsable {path}: {s:?}"))
}

// ------------------------------------------------------------------------- child helpers

/// Reads `r` line by line on a thread and forwards each line (without newline) to the channel.
fn line_reader(r: impl Read + Send + 'static, what: String) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new()
        .name(what)
        .spawn(move || {
            for line in BufReader::new(r).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        })
        .expect("spawning a reader thread");
    rx
}

/// Waits for `child` to exit; after `timeout` kills it and returns None.
fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            Err(e) => panic!("waiting for child {}: {e}", child.id()),
        }
    }
}

fn send_signal(pid: u32, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a pid we spawned and have not reaped yet.
    let r = unsafe { libc::kill(pid as libc::pid_t, sig) };
    if r != 0 {
        panic!("kill({pid}, {sig}): {}", std::io::Error::last_os_error());
    }
}

// ------------------------------------------------------------------------- Workload

/// A running `schedlat-workload` that has printed its ready line and is waiting for go.
///
/// ```ignore
/// let mut w = Workload::start(&["futex", "--timeouts", "3", "--woken", "3", "--wait-ms", "20"]);
/// let cap = Schedlat::capture(&["--pid", &w.pid.to_string(), "--json"]);
/// cap.wait_ready(Duration::from_secs(30));
/// w.go();
/// let res = w.result();
/// ```
pub struct Workload {
    child: Child,
    /// Process id of the workload (also in `ready["pid"]`).
    pub pid: u32,
    /// The parsed ready line: `{"ready":true,"pid":P, ...}` plus per-subcommand tids
    /// (`tids` for spin, `waiter_tid`/`waker_tid` for futex, `waker_tid`/`wakee_tid` for wake).
    pub ready: Value,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    args: Vec<String>,
    finished: bool,
}

impl Workload {
    /// Spawns `schedlat-workload <args>` (stdin/stdout piped, stderr inherited) and waits up to
    /// [`WORKLOAD_TIMEOUT`] for its ready line.
    pub fn start(args: &[&str]) -> Workload {
        let bin = workload_bin();
        let mut child = Command::new(&bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} {args:?}: {e}", bin.display()));
        let pid = child.id();
        let stdin = child.stdin.take();
        let lines = line_reader(
            child.stdout.take().expect("piped stdout"),
            format!("workload-{pid}-stdout"),
        );
        let mut w = Workload {
            child,
            pid,
            ready: Value::Null,
            stdin,
            lines,
            args: args.iter().map(|s| s.to_string()).collect(),
            finished: false,
        };
        let ready = w.next_json("the ready line");
        assert_eq!(
            ready["ready"],
            Value::Bool(true),
            "workload {:?}: unexpected ready line {ready}",
            w.args
        );
        assert_eq!(
            ready["pid"].as_u64(),
            Some(pid as u64),
            "workload {:?}: ready line pid mismatch: {ready}",
            w.args
        );
        w.ready = ready;
        w
    }

    fn next_json(&mut self, what: &str) -> Value {
        let line = loop {
            match self.lines.recv_timeout(WORKLOAD_TIMEOUT) {
                Ok(l) if l.trim().is_empty() => continue,
                Ok(l) => break l,
                Err(RecvTimeoutError::Timeout) => {
                    let _ = self.child.kill();
                    panic!(
                        "workload {:?} (pid {}): no {what} within {WORKLOAD_TIMEOUT:?}; killed it",
                        self.args, self.pid
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let st = wait_with_timeout(&mut self.child, Duration::from_secs(5));
                    self.finished = true;
                    panic!(
                        "workload {:?} (pid {}): stdout closed before {what}; exit status {st:?}",
                        self.args, self.pid
                    )
                }
            }
        };
        serde_json::from_str(&line).unwrap_or_else(|e| {
            panic!(
                "workload {:?}: {what} is not JSON ({e}): {line:?}",
                self.args
            )
        })
    }

    /// A tid from the ready line (`"waiter_tid"`, `"wakee_tid"`, ...); panics if absent.
    pub fn ready_tid(&self, key: &str) -> u32 {
        self.ready[key]
            .as_u64()
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or_else(|| {
                panic!(
                    "workload {:?}: no {key:?} in ready line {}",
                    self.args, self.ready
                )
            })
    }

    /// Tells the workload to run (writes `go\n` to its stdin).
    /// Closes stdin afterwards, so `result()` knows not to send it again.
    pub fn go(&mut self) {
        let mut stdin = self.stdin.take().expect("go() called twice");
        stdin
            .write_all(b"go\n")
            .and_then(|()| stdin.flush())
            .unwrap_or_else(|e| panic!("workload {:?}: writing go: {e}", self.args));
    }

    /// Waits for the result line and a successful exit (each up to [`WORKLOAD_TIMEOUT`]).
    /// Calls [`go`](Self::go) first if the test did not.
    pub fn result(mut self) -> Value {
        if self.stdin.is_some() {
            self.go();
        }
        self.stdin = None;
        let res = self.next_json("result line");
        let st = wait_with_timeout(&mut self.child, WORKLOAD_TIMEOUT);
        self.finished = true;
        match st {
            Some(st) if st.success() => res,
            Some(st) => panic!(
                "workload {:?} failed with {st} after printing {res}",
                self.args
            ),
            None => panic!(
                "workload {:?} did not exit within {WORKLOAD_TIMEOUT:?} after its result; killed it",
                self.args
            ),
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ------------------------------------------------------------------------- Schedlat

enum StderrEvent {
    Ready,
    Closed,
}

/// Entry point for running the schedlat binary in the background.
pub struct Schedlat;

impl Schedlat {
    /// Spawns `schedlat capture <args>` with stdout and stderr piped. stderr lines are echoed to
    /// the test's stderr (prefixed `[schedlat]`) and collected; stdout is collected.
    pub fn capture(args: &[&str]) -> Running {
        let mut full = vec!["capture"];
        full.extend_from_slice(args);
        Running::spawn(&full)
    }
}

/// A background schedlat process (see [`Schedlat::capture`]). Dropping it kills the process.
pub struct Running {
    child: Mutex<Child>,
    /// Process id of schedlat.
    pub pid: u32,
    args: Vec<String>,
    events: Receiver<StderrEvent>,
    ready: AtomicBool,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
    stdout_thread: Option<JoinHandle<String>>,
    finished: bool,
}

impl Running {
    /// Spawns schedlat with arbitrary arguments (`args` includes the subcommand).
    pub fn spawn(args: &[&str]) -> Running {
        Running::spawn_bin(schedlat_bin(), args)
    }

    fn spawn_bin(bin: PathBuf, args: &[&str]) -> Running {
        let mut child = Command::new(&bin)
            .args(args)
            // The "capturing" line is an info event; a capture's default level is warn.
            // A `--log` argument still wins over this.
            .env("SCHEDLAT_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {} {args:?}: {e}", bin.display()));
        let pid = child.id();
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, events) = mpsc::channel();
        let err_pipe = child.stderr.take().expect("piped stderr");
        let collected = stderr.clone();
        let stderr_thread = thread::Builder::new()
            .name(format!("schedlat-{pid}-stderr"))
            .spawn(move || {
                let mut signalled = false;
                for line in BufReader::new(err_pipe).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("[schedlat] {line}");
                    {
                        let mut s = collected.lock().unwrap_or_else(|e| e.into_inner());
                        s.push_str(&line);
                        s.push('\n');
                    }
                    if !signalled && line.contains(CAPTURE_READY_MARKER) {
                        signalled = true;
                        let _ = tx.send(StderrEvent::Ready);
                    }
                }
                let _ = tx.send(StderrEvent::Closed);
            })
            .expect("spawning the stderr reader");
        let mut out_pipe = child.stdout.take().expect("piped stdout");
        let stdout_thread = thread::Builder::new()
            .name(format!("schedlat-{pid}-stdout"))
            .spawn(move || {
                let mut buf = Vec::new();
                let _ = out_pipe.read_to_end(&mut buf);
                String::from_utf8_lossy(&buf).into_owned()
            })
            .expect("spawning the stdout reader");
        Running {
            child: Mutex::new(child),
            pid,
            args: args.iter().map(|s| s.to_string()).collect(),
            events,
            ready: AtomicBool::new(false),
            stderr,
            stderr_thread: Some(stderr_thread),
            stdout_thread: Some(stdout_thread),
            finished: false,
        }
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stderr collected so far.
    pub fn stderr_so_far(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until schedlat prints its "schedlat: capturing ..." line (programs attached).
    /// Panics, with the collected stderr, if it exits first or `timeout` expires.
    pub fn wait_ready(&self, timeout: Duration) {
        if self.ready.load(Ordering::SeqCst) {
            return;
        }
        match self.events.recv_timeout(timeout) {
            Ok(StderrEvent::Ready) => self.ready.store(true, Ordering::SeqCst),
            Ok(StderrEvent::Closed) | Err(RecvTimeoutError::Disconnected) => {
                let st = wait_with_timeout(&mut self.child(), Duration::from_secs(10));
                panic!(
                    "schedlat {:?} exited before printing {CAPTURE_READY_MARKER:?} (status {st:?}); stderr:\n{}",
                    self.args,
                    self.stderr_so_far()
                );
            }
            Err(RecvTimeoutError::Timeout) => {
                {
                    let mut c = self.child();
                    let _ = c.kill();
                    let _ = c.wait();
                }
                panic!(
                    "schedlat {:?} did not print {CAPTURE_READY_MARKER:?} within {timeout:?}; killed it; stderr:\n{}",
                    self.args,
                    self.stderr_so_far()
                );
            }
        }
    }

    /// Sends SIGINT (like Ctrl-C), then waits up to [`SCHEDLAT_EXIT_TIMEOUT`] for the exit.
    /// Returns (status, stdout, stderr).
    pub fn stop(self) -> (ExitStatus, String, String) {
        self.stop_timeout(SCHEDLAT_EXIT_TIMEOUT)
    }

    /// [`stop`](Self::stop) with an explicit exit timeout.
    pub fn stop_timeout(mut self, timeout: Duration) -> (ExitStatus, String, String) {
        if let Ok(None) = self.child().try_wait() {
            send_signal(self.pid, libc::SIGINT);
        }
        self.collect(timeout, "after SIGINT")
    }

    /// Waits up to [`SCHEDLAT_EXIT_TIMEOUT`] for schedlat to exit on its own (e.g. `--duration`).
    /// Returns (status, stdout, stderr).
    pub fn wait(self) -> (ExitStatus, String, String) {
        self.wait_timeout(SCHEDLAT_EXIT_TIMEOUT)
    }

    /// [`wait`](Self::wait) with an explicit timeout.
    pub fn wait_timeout(mut self, timeout: Duration) -> (ExitStatus, String, String) {
        self.collect(timeout, "")
    }

    fn collect(&mut self, timeout: Duration, when: &str) -> (ExitStatus, String, String) {
        let st = wait_with_timeout(&mut self.child(), timeout);
        self.finished = true;
        // The pipes close when the process exits (schedlat spawns no long-lived children).
        let stdout = self
            .stdout_thread
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        if let Some(h) = self.stderr_thread.take() {
            let _ = h.join();
        }
        let stderr = self.stderr_so_far();
        match st {
            Some(st) => (st, stdout, stderr),
            None => panic!(
                "schedlat {:?} did not exit within {timeout:?} {when}; killed it; stdout:\n{stdout}\nstderr:\n{stderr}",
                self.args
            ),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.finished {
            let c = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `schedlat <args>` to completion (stdin null, output captured, the command's default log
/// level), killing it and panicking after [`SCHEDLAT_EXIT_TIMEOUT`]. For one-shot commands and
/// invalid-input tests.
pub fn run_schedlat(args: &[&str]) -> Output {
    run_schedlat_timeout(args, SCHEDLAT_EXIT_TIMEOUT)
}

/// [`run_schedlat`] with an explicit timeout.
pub fn run_schedlat_timeout(args: &[&str], timeout: Duration) -> Output {
    let bin = schedlat_bin();
    let mut child = Command::new(&bin)
        .args(args)
        // Each command's own default log level, whatever the test's environment says.
        .env_remove("SCHEDLAT_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {} {args:?}: {e}", bin.display()));
    let drain = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            buf
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let st = wait_with_timeout(&mut child, timeout);
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match st {
        Some(status) => Output {
            status,
            stdout,
            stderr,
        },
        None => panic!(
            "schedlat {args:?} did not exit within {timeout:?}; killed it; stdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        ),
    }
}

/// A cgroup v2 directory for one test, removed on drop (its processes must have exited).
pub struct TestCgroup {
    dir: PathBuf,
    rel: String,
}

impl TestCgroup {
    /// Create `<cgroup2 mount>/schedlat-test-<name>-<pid>`.
    pub fn create(name: &str) -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
        let mount = mountinfo
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                (right.split_whitespace().next()? == "cgroup2")
                    .then(|| left.split_whitespace().nth(4))?
            })
            .expect("no cgroup2 mount");
        let rel = format!("/schedlat-test-{name}-{}", std::process::id());
        let dir = PathBuf::from(mount).join(rel.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self { dir, rel }
    }

    /// The path relative to the cgroup2 mount, as schedlat names it.
    pub fn path(&self) -> &str {
        &self.rel
    }

    /// The cgroup id the kernel (and so the BPF maps) uses: the directory's inode number.
    pub fn id(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&self.dir)
            .unwrap_or_else(|e| panic!("stat {}: {e}", self.dir.display()))
            .ino()
    }

    /// Create `name` (one level) below this cgroup; drop it before its parent.
    pub fn child(&self, name: &str) -> Self {
        assert!(!name.contains('/'), "one level at a time: {name}");
        let dir = self.dir.join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self {
            dir,
            rel: format!("{}/{name}", self.rel),
        }
    }

    /// Move process `pid` (all its threads) into this cgroup.
    pub fn add(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.dir.display()));
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // rmdir fails while a process is still inside; retry briefly while it exits.
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() || !self.dir.exists() {
                return;
            }
            thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "warning: could not remove test cgroup {}",
            self.dir.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_release_versions() {
        assert_eq!(release_version("6.18.44-fc-v657\n"), Some((6, 18)));
        assert_eq!(release_version("5.10.0-35-amd64"), Some((5, 10)));
        assert_eq!(release_version("6.1.0-37-rt-amd64"), Some((6, 1)));
        assert_eq!(release_version("6"), None);
        assert!((5, 10) < (5, 12) && (6, 1) >= (5, 12));
    }

    /// The gate names the test it guards from its thread's name, with no argument.
    #[test]
    #[should_panic(
        expected = "privileged test tests::a_privileged_test_names_itself_under_ci cannot run"
    )]
    fn a_privileged_test_names_itself_under_ci() {
        privileged_or_skip_as(false, true);
    }

    #[test]
    fn a_privileged_test_runs_as_root_and_skips_otherwise() {
        assert!(privileged_or_skip_as(true, true));
        assert!(!privileged_or_skip_as(false, false));
    }

    #[test]
    fn parses_schedstat() {
        assert_eq!(parse_schedstat("123 456 7\n"), Some((123, 456, 7)));
        assert_eq!(parse_schedstat("0 0 0"), Some((0, 0, 0)));
        assert_eq!(
            parse_schedstat("18446744073709551615 1 2\n"),
            Some((u64::MAX, 1, 2))
        );
    }

    #[test]
    fn rejects_bad_schedstat() {
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("1 2\n"), None);
        assert_eq!(parse_schedstat("1 2 3 4\n"), None);
        assert_eq!(parse_schedstat("1 x 3\n"), None);
        assert_eq!(parse_schedstat("-1 2 3\n"), None);
    }

    #[test]
    fn reads_own_schedstat() {
        let pid = std::process::id();
        // SAFETY: no preconditions.
        let tid = unsafe { libc::gettid() } as u32;
        let path = format!("/proc/{pid}/task/{tid}/schedstat");
        if !Path::new(&path).exists() {
            eprintln!("no {path} (CONFIG_SCHEDSTATS/SCHED_INFO off?); skipping");
            return;
        }
        // on-CPU time of the running task may still read 0 (updated at ticks/switches).
        let (_, _, slices) = read_schedstat(pid, tid);
        assert!(slices > 0);
    }

    fn fake_schedlat(script: &str) -> Running {
        Running::spawn_bin(PathBuf::from("/bin/sh"), &["-c", script])
    }

    #[test]
    fn running_ready_then_sigint() {
        // The trap is set before the ready line, as the real capture handles SIGINT before it
        // says it is capturing: otherwise the signal can land first and kill the shell.
        let r = fake_schedlat(
            "trap 'echo report; echo bye >&2; exit 0' INT; echo 'log line' >&2; \
             echo 'schedlat: capturing host-wide for 1m' >&2; while :; do sleep 0.05; done",
        );
        r.wait_ready(Duration::from_secs(10));
        let (st, out, err) = r.stop();
        assert!(st.success(), "{st}");
        assert_eq!(out, "report\n");
        assert!(
            err.contains("log line\n") && err.ends_with("bye\n"),
            "{err:?}"
        );
    }

    #[test]
    fn running_wait_collects_output() {
        let r = fake_schedlat("echo out; echo err >&2; exit 3");
        let (st, out, err) = r.wait();
        assert_eq!(st.code(), Some(3));
        assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
    }

    #[test]
    #[should_panic(expected = "exited before printing")]
    fn running_exit_before_ready_panics() {
        fake_schedlat("echo 'error: no BTF' >&2; exit 1").wait_ready(Duration::from_secs(10));
    }

    #[test]
    #[should_panic(expected = "did not print")]
    fn running_ready_timeout_panics() {
        fake_schedlat("sleep 30").wait_ready(Duration::from_millis(200));
    }

    /// Exercises the ready/go/result protocol against the real workload binary when it has been
    /// built (`cargo build -p schedlat-tests --release`); skipped otherwise.
    fn have_workload() -> bool {
        let ok = std::panic::catch_unwind(workload_bin).is_ok();
        if !ok {
            eprintln!("schedlat-workload not built; skipping");
        }
        ok
    }

    #[test]
    fn workload_wake_protocol() {
        if !have_workload() {
            return;
        }
        let mut w = Workload::start(&["wake", "--count", "20"]);
        let (a, b) = (w.ready_tid("waker_tid"), w.ready_tid("wakee_tid"));
        assert!(a != b && a != w.pid && b != w.pid);
        w.go();
        let r = w.result();
        assert_eq!(r["waker_tid"].as_u64(), Some(u64::from(a)));
        assert_eq!(r["wakee_tid"].as_u64(), Some(u64::from(b)));
        assert_eq!(r["count"], 20);
        assert_eq!(
            r["woken"].as_u64().unwrap()
                + r["eagain"].as_u64().unwrap()
                + r["eintr"].as_u64().unwrap(),
            20
        );
    }

    #[test]
    fn workload_futex_protocol() {
        if !have_workload() {
            return;
        }
        let w = Workload::start(&["futex", "--timeouts", "2", "--woken", "2", "--wait-ms", "5"]);
        assert_eq!(w.ready["waiter_tid"].as_u64(), Some(w.pid as u64));
        let r = w.result(); // implicit go
        assert_eq!(
            (r["timeouts"].as_u64(), r["wait_ms"].as_u64()),
            (Some(2), Some(5))
        );
        assert_eq!(
            r["woken"].as_u64().unwrap()
                + r["eagain"].as_u64().unwrap()
                + r["eintr"].as_u64().unwrap(),
            2
        );
    }

    #[test]
    #[should_panic(expected = "stdout closed before the ready line")]
    fn workload_setup_failure_panics() {
        if !have_workload() {
            panic!("stdout closed before the ready line (skipped: workload not built)");
        }
        Workload::start(&["spin", "--cpu", "100000"]);
    }

    #[test]
    fn missing_binary_panics_with_hint() {
        let err =
            std::panic::catch_unwind(|| locate("SCHEDLAT_TESTS_NO_SUCH_VAR", "no-such-binary-xyz"))
                .unwrap_err();
        let msg = err.downcast_ref::<String>().expect("string panic");
        assert!(msg.contains("cargo xtask build"), "{msg}");
    }
}
