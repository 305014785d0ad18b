//! Privileged: `schedlat top` in a tmux pane, driven the way a person would (tmux send-keys)
//! and read off the screen (tmux capture-pane).
use std::{
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use schedlat_tests::{Workload, privileged_or_skip, schedlat_bin};

/// A detached tmux session running one command, killed on drop.
struct Tmux {
    session: String,
}

impl Tmux {
    fn start(session: &str, command: &str) -> Tmux {
        let out = Command::new("tmux")
            .args(["new-session", "-d", "-s", session, "-x", "200", "-y", "50"])
            .arg(command)
            .output()
            .expect("running tmux (`cargo xtask setup` installs Debian's tmux)");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmux {
            session: session.to_string(),
        }
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.session])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        let st = Command::new("tmux")
            .args(["send-keys", "-t", &self.session, keys])
            .status()
            .unwrap();
        assert!(st.success(), "tmux send-keys {keys}");
    }

    /// Polls the screen until `ok` holds; panics with the last screen after `timeout`.
    fn wait_for(&self, what: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "schedlat top: no {what} within {timeout:?}; screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .output();
    }
}

/// The TID column of the first row of the tasks table.
fn first_task_tid(screen: &str) -> Option<u64> {
    let mut lines = screen.lines().skip_while(|l| !l.contains("TID"));
    lines.next()?;
    lines
        .next()?
        .trim_start_matches(['│', ' '])
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Two threads sharing one CPU and a thread sleeping in futex waits: sorted by delay (the
/// default) a contended thread is the top task; `f` sorts by time blocked in futex and puts
/// the sleeper on top; `q` quits with exit 0 and the terminal back.
#[test]
fn top_shows_the_contended_task_first_sorts_by_key_and_quits_on_q() {
    if !privileged_or_skip() {
        return;
    }
    let mut spin = Workload::start(&["spin", "--threads", "2", "--cpu", "0", "--secs", "8"]);
    let mut futex = Workload::start(&[
        "futex",
        "--timeouts",
        "80",
        "--woken",
        "0",
        "--wait-ms",
        "100",
    ]);
    let spinners: Vec<u64> = spin.ready["tids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    let sleeper = u64::from(futex.ready_tid("waiter_tid"));
    let rc: PathBuf = std::env::temp_dir().join(format!("schedlat-top-rc-{}", std::process::id()));
    let _ = std::fs::remove_file(&rc);
    let command = format!(
        "{} top --pid {} --pid {}; echo $? > {}",
        schedlat_bin().display(),
        spin.pid,
        futex.pid,
        rc.display()
    );
    let tmux = Tmux::start(&format!("schedlat-top-{}", std::process::id()), &command);
    tmux.wait_for("attach", Duration::from_secs(60), |s| {
        s.contains("schedlat top:")
    });
    spin.go();
    futex.go();

    let s = tmux.wait_for(
        "contended thread at the top",
        Duration::from_secs(20),
        |s| first_task_tid(s).is_some_and(|t| spinners.contains(&t)),
    );
    assert!(s.contains("sort: Delay") && s.contains("*MS/S"), "{s}");
    assert!(s.contains("per CPU"), "{s}");
    tmux.keys("f");
    let s = tmux.wait_for(
        "the futex sleeper on top after `f`",
        Duration::from_secs(10),
        |s| s.contains("sort: Futex") && first_task_tid(s) == Some(sleeper),
    );
    eprintln!(
        "figure: top screen after `f`:\n{}",
        s.lines().take(12).collect::<Vec<_>>().join("\n")
    );
    tmux.keys("q");
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        if let Ok(c) = std::fs::read_to_string(&rc) {
            if !c.is_empty() {
                break c;
            }
        }
        assert!(Instant::now() < deadline, "schedlat top did not exit on q");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(code.trim(), "0", "exit status of schedlat top after q");
    let _ = std::fs::remove_file(&rc);
    spin.result();
    futex.result();
}

/// `top --go --pid`: a Go fixture (the newest release: goroutines by state) shows up in the
/// Go panel with its pid, name, GOMAXPROCS and as many goroutines as it reports itself
/// (runtime.NumGoroutine, stable while it waits for its next command).
#[test]
fn top_go_shows_the_go_program_with_its_own_goroutine_count() {
    if !privileged_or_skip() {
        return;
    }
    let versions = schedlat_tests::gofixture::go_fixture_versions();
    let (version, dir) = versions.last().unwrap();
    let mut go = schedlat_tests::gofixture::GoFixture::start(&dir.join("gosched"));
    let metrics = go.go();
    let goroutines = metrics["num_goroutine"].as_u64().expect("num_goroutine");
    let maxprocs = metrics["gomaxprocs"].as_u64().expect("gomaxprocs");
    let command = format!("{} top --go --pid {}", schedlat_bin().display(), go.pid);
    let tmux = Tmux::start(&format!("schedlat-topgo-{}", std::process::id()), &command);
    let pid = go.pid.to_string();
    // The row: PID, binary, version, GOMAXPROCS (`!` above the CPUs it may use), CPUs,
    // goroutines, ...
    let row = |s: &str| -> Option<Vec<String>> {
        s.lines()
            .map(|l| {
                l.split_whitespace()
                    .map(|w| w.trim_matches('│').to_string())
                    .filter(|w| !w.is_empty())
                    .collect::<Vec<_>>()
            })
            .find(|w| w.first() == Some(&pid) && w.get(1).map(String::as_str) == Some("gosched"))
    };
    let s = tmux.wait_for("the Go program's row", Duration::from_secs(30), |s| {
        row(s).is_some()
    });
    let r = row(&s).unwrap();
    eprintln!(
        "figure: top --go row: {r:?}; the program says {goroutines} goroutines, GOMAXPROCS \
         {maxprocs}"
    );
    assert!(s.contains("Go processes (1;"), "{s}");
    assert_eq!(r[2], *version, "{r:?}");
    assert_eq!(r[3].trim_end_matches('!'), maxprocs.to_string(), "{r:?}");
    assert_eq!(r[5], goroutines.to_string(), "goroutines: {r:?}");
    tmux.keys("q");
    go.exit();
}
