//! The Go fixtures (tests/go/<name>, built by `cargo xtask setup` into target/go-fixtures/<go
//! version>/) and their stdin/stdout protocol: ready line, `go`, metrics line, then `metrics`
//! (print runtime/metrics again), `memstats`, `gc N` any number of times, `exit`.
use std::{
    io::Write,
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError},
    time::Duration,
};

use serde_json::Value;

use crate::{WORKLOAD_TIMEOUT, line_reader, wait_with_timeout};

/// `$SCHEDLAT_GO_FIXTURES`, else `<workspace>/target/go-fixtures`: one directory per Go version.
/// Panics with a build hint if absent or holding fewer than two Go versions.
pub fn go_fixture_versions() -> Vec<(String, PathBuf)> {
    let root = match std::env::var_os("SCHEDLAT_GO_FIXTURES") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => crate::workspace_dir().join("target").join("go-fixtures"),
    };
    let mut dirs: Vec<(String, PathBuf)> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| {
            panic!(
                "Go fixtures not found at {} ({e}): run `cargo xtask setup` (or set SCHEDLAT_GO_FIXTURES)",
                root.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 2,
        "want Go fixtures of two toolchains in {}, found {dirs:?}: run `cargo xtask setup`",
        root.display()
    );
    dirs
}

/// A running Go fixture.
pub struct GoFixture {
    child: Child,
    pub pid: u32,
    pub ready: Value,
    stdin: ChildStdin,
    lines: Receiver<String>,
    what: String,
}

impl GoFixture {
    /// Starts `path` and waits for its ready line.
    pub fn start(path: &std::path::Path) -> GoFixture {
        GoFixture::start_command(Command::new(path))
    }

    /// Starts a command that execs a fixture (e.g. through `setpriv`), keeping its pid.
    pub fn start_command(mut cmd: Command) -> GoFixture {
        let what = format!("{cmd:?}");
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        let pid = child.id();
        let stdin = child.stdin.take().expect("piped stdin");
        let lines = line_reader(
            child.stdout.take().expect("piped stdout"),
            format!("go-{pid}-stdout"),
        );
        let mut f = GoFixture {
            child,
            pid,
            ready: Value::Null,
            stdin,
            lines,
            what,
        };
        let ready = f.next_json("ready line");
        assert_eq!(ready["ready"], Value::Bool(true), "{}: {ready}", f.what);
        assert_eq!(
            ready["pid"].as_u64(),
            Some(pid as u64),
            "{}: {ready}",
            f.what
        );
        f.ready = ready;
        f
    }

    fn next_json(&mut self, what: &str) -> Value {
        let line = match self.lines.recv_timeout(WORKLOAD_TIMEOUT) {
            Ok(l) => l,
            Err(RecvTimeoutError::Timeout) => {
                panic!("{}: no {what} within {WORKLOAD_TIMEOUT:?}", self.what)
            }
            Err(RecvTimeoutError::Disconnected) => {
                let st = wait_with_timeout(&mut self.child, Duration::from_secs(5));
                panic!("{}: stdout closed before {what}; exit {st:?}", self.what)
            }
        };
        serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{}: {what} is not JSON ({e}): {line:?}", self.what))
    }

    fn send(&mut self, cmd: &str) {
        writeln!(self.stdin, "{cmd}")
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("{}: writing {cmd:?}: {e}", self.what));
    }

    /// Sends `go`; returns the runtime/metrics line printed after the load phase.
    pub fn go(&mut self) -> Value {
        self.send("go");
        self.next_json("metrics line after go")
    }

    /// Asks the program to read runtime/metrics again.
    pub fn metrics(&mut self) -> Value {
        self.send("metrics");
        self.next_json("metrics line")
    }

    /// The program's runtime.ReadMemStats: `{"num_gc": N, "pause_ns": [oldest .. latest]}`
    /// (the pauses still in MemStats.PauseNs, at most 256).
    pub fn memstats(&mut self) -> Value {
        self.send("memstats");
        self.next_json("memstats line")
    }

    /// Runs runtime.GC() `n` times in the program; returns its memstats afterwards.
    pub fn gc(&mut self, n: u32) -> Value {
        self.send(&format!("gc {n}"));
        self.next_json("memstats line after gc")
    }

    /// Sends `exit` and waits for a clean exit.
    pub fn exit(mut self) {
        self.send("exit");
        let st = wait_with_timeout(&mut self.child, WORKLOAD_TIMEOUT);
        assert!(
            st.is_some_and(|s| s.success()),
            "{}: exit status {st:?}",
            self.what
        );
    }
}

impl Drop for GoFixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `httpserver` fixture (tests/go/httpserver) on a free loopback port, killed on drop.
pub struct GoHttpServer {
    child: Child,
    pub pid: u32,
    /// host:port it accepts connections on.
    pub addr: String,
}

impl GoHttpServer {
    /// Starts `path` on 127.0.0.1:0 and waits for its `listening ADDR` line.
    pub fn start(path: &std::path::Path) -> GoHttpServer {
        let mut child = Command::new(path)
            .arg("127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", path.display()));
        let pid = child.id();
        let lines = line_reader(
            child.stdout.take().expect("piped stdout"),
            format!("go-{pid}-stdout"),
        );
        let line = match lines.recv_timeout(WORKLOAD_TIMEOUT) {
            Ok(l) => l,
            Err(e) => {
                let _ = child.kill();
                let st = wait_with_timeout(&mut child, Duration::from_secs(5));
                panic!(
                    "{}: no `listening` line ({e:?}); exit {st:?}",
                    path.display()
                )
            }
        };
        let addr = line
            .strip_prefix("listening ")
            .unwrap_or_else(|| panic!("{}: unexpected first line {line:?}", path.display()))
            .to_string();
        GoHttpServer { child, pid, addr }
    }
}

impl Drop for GoHttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
