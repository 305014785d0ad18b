//! Running `schedlat daemon` and reading its /metrics the way Prometheus would.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{TestCgroup, schedlat_bin};

/// A `schedlat daemon` on a free loopback port, killed on drop.
pub struct Daemon {
    pub child: Child,
    pub addr: String,
}

impl Daemon {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_until(extra, |addr| get(addr, "/healthz").is_some())
    }

    /// Starts the daemon and waits (up to 60 s) until `ready(addr)` holds, e.g. an HTTPS
    /// /healthz for a daemon with TLS. Panics if the daemon exits first.
    pub fn start_until(extra: &[&str], ready: impl Fn(&str) -> bool) -> Self {
        Self::start_limited(extra, None, ready)
    }

    /// [`Daemon::start_until`], with its open-files limit (soft and hard) set to `nofile`
    /// when given, as a unit's `LimitNOFILE=` or a container runtime would.
    pub fn start_limited(
        extra: &[&str],
        nofile: Option<u64>,
        ready: impl Fn(&str) -> bool,
    ) -> Self {
        // Find a free port; the daemon binds it right after.
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let mut cmd = Command::new(schedlat_bin());
        cmd.args(["daemon", "--listen", &addr])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        if let Some(n) = nofile {
            let lim = libc::rlimit {
                rlim_cur: n,
                rlim_max: n,
            };
            // SAFETY: setrlimit is async-signal-safe; `lim` is a plain value moved in.
            unsafe {
                std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = cmd.spawn().expect("start schedlat daemon");
        let mut d = Self { child, addr };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready(&d.addr) {
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!("daemon {extra:?} exited before it was ready: {st}");
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not become ready within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        d
    }

    pub fn stop(mut self) -> std::process::ExitStatus {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait().unwrap()
    }
}

impl Drop for Daemon {
    /// A failing test must not leave a daemon (and its programs) behind.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `schedlat daemon` reading the Go programs in `cg` (`[go]` plus `extra` lines), with its
/// config in a directory of its own, returned for removal.
pub fn go_daemon(name: &str, cg: &TestCgroup, extra: &str) -> (Daemon, std::path::PathBuf) {
    go_daemon_with(name, cg, "", extra)
}

/// [`go_daemon`] with top-level config keys `top` too (lines, before the `[go]` table).
pub fn go_daemon_with(
    name: &str,
    cg: &TestCgroup,
    top: &str,
    extra: &str,
) -> (Daemon, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("go.toml");
    std::fs::write(
        &cfg,
        format!(
            "{top}[go]\nenabled = true\ncgroups = [\"{}\"]\n{extra}",
            cg.path()
        ),
    )
    .unwrap();
    (
        Daemon::start_with(&["--config", cfg.to_str().unwrap()]),
        dir,
    )
}

/// A minimal HTTP/1.1 GET (no client dependency), returning the body of a 200 answer.
pub fn get(addr: &str, path: &str) -> Option<String> {
    match get_response(addr, path)? {
        (200, body) => Some(body),
        _ => None,
    }
}

/// A minimal HTTP/1.1 GET: the status code and body of any answer (None if there was none).
pub fn get_response(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    let status = head
        .strip_prefix("HTTP/1.1 ")?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    // axum uses Content-Length for these bodies; tolerate chunked just in case.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = body;
        while let Some((len, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(len.trim(), 16).ok()?;
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        return Some((status, out));
    }
    Some((status, body.to_string()))
}

/// Sum of every sample of `name` (any labels).
pub fn total(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

pub fn promtool_check(metrics: &str) {
    let mut p = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool not found: `cargo xtask setup` installs Debian's prometheus package");
    p.stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = p.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the first sample line starting with `prefix` (name and labels).
pub fn sample(metrics: &str, prefix: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
}
