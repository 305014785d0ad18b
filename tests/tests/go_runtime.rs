//! `schedlat go-stats` against the Go runtime's own runtime/metrics, on Go 1.19 and a current
//! Go, plain and PIE. Both read the same memory: /sched/latencies:seconds is
//! `sched.timeToRun` (runtime/metrics.go of 1.19.8 copies underflow + counts; 1.27.3 calls
//! timeHistogram.write: underflow, counts, overflow), so the counts must match exactly.
use std::process::Command;

use schedlat_tests::{
    TestCgroup,
    gofixture::{GoFixture, go_fixture_versions},
    privileged_or_skip, run_schedlat,
    scrape::{Daemon, get, promtool_check, sample},
};
use serde_json::Value;

fn go_stats(pid: u32) -> Value {
    let out = run_schedlat(&["go-stats", "--pid", &pid.to_string(), "--format", "json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "go-stats --pid {pid}: {:?}\n{stderr}",
        out.status
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("go-stats output is not JSON ({e}): {stderr}"))
}

fn counts(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect()
}

/// The goroutine count runtime/metrics reports, from go-stats' live and system counts.
/// Go 1.19.8 metrics.go: gcount(), which excludes system goroutines (sched.ngsys);
/// Go 1.27.3 metrics.go: schedStats.gTotal = gcount(true), which includes them.
fn metrics_goroutines(version: &str, stats: &Value) -> i64 {
    let g = &stats["goroutines"];
    let (live, sys) = (g["live"].as_i64().unwrap(), g["system"].as_i64().unwrap());
    let v = if version.starts_with("go1.19.") {
        live - sys
    } else if version.starts_with("go1.27.") {
        live
    } else {
        panic!("{version}: check which gcount runtime/metrics.go uses, then add it here")
    };
    v.max(1) // gcount clamps to 1
}

#[test]
fn go_stats_match_runtime_metrics() {
    for (version, dir) in go_fixture_versions() {
        for name in ["gosched", "gosched-pie"] {
            let what = format!("{version}/{name}");
            let mut fx = GoFixture::start(&dir.join(name));
            let after_load = fx.go();
            let samples: u64 = counts(&after_load["sched_latencies"]["counts"])
                .iter()
                .sum();
            assert!(
                samples > 100,
                "{what}: the load phase left only {samples} samples"
            );
            // Counters only grow. Read from outside (A), ask the program (M), read again (B):
            // A <= M <= B bucket by bucket, and when nothing ran in between (A == B), M == A.
            let mut exact = false;
            for round in 0..20 {
                let a = go_stats(fx.pid);
                let m = fx.metrics();
                let b = go_stats(fx.pid);
                assert_eq!(a["go_version"], Value::String(version.clone()), "{what}");
                assert_eq!(a["pie"], Value::Bool(name.ends_with("-pie")), "{what}");
                assert_eq!(a["gomaxprocs"], m["gomaxprocs"], "{what}: gomaxprocs");
                let bounds: Vec<f64> = m["sched_latencies"]["buckets"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s.as_str().unwrap().parse::<f64>().unwrap())
                    .collect();
                let ours: Vec<f64> = a["sched_latencies"]["boundaries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| match v {
                        // serde_json writes infinities as null.
                        Value::Null => f64::NAN,
                        v => v.as_f64().unwrap(),
                    })
                    .collect();
                assert_eq!(ours.len(), bounds.len(), "{what}: number of boundaries");
                for (i, (o, g)) in ours.iter().zip(&bounds).enumerate() {
                    assert!(
                        o == g || (o.is_nan() && g.is_infinite()),
                        "{what}: boundary {i}: ours {o}, runtime/metrics {g}"
                    );
                }
                let (ca, cm, cb) = (
                    counts(&a["sched_latencies"]["counts"]),
                    counts(&m["sched_latencies"]["counts"]),
                    counts(&b["sched_latencies"]["counts"]),
                );
                assert_eq!(ca.len(), cm.len(), "{what}: number of buckets");
                for i in 0..ca.len() {
                    assert!(
                        ca[i] <= cm[i] && cm[i] <= cb[i],
                        "{what}: bucket {i} (from {}): before {} runtime/metrics {} after {}",
                        bounds[i],
                        ca[i],
                        cm[i],
                        cb[i]
                    );
                }
                let total: u64 = cm.iter().sum();
                assert!(
                    total > 100,
                    "{what}: the load phase left only {total} samples"
                );
                if ca == cb
                    && a["goroutines"] == b["goroutines"]
                    && a["stw_pauses"] == b["stw_pauses"]
                {
                    assert_eq!(ca, cm, "{what}: quiescent, so counts must be equal");
                    check_stw(&what, &a, &m);
                    assert_eq!(
                        metrics_goroutines(&version, &a),
                        m["goroutines"].as_i64().unwrap(),
                        "{what}: goroutines, go-stats {} vs runtime/metrics {}",
                        a["goroutines"],
                        m["goroutines"]
                    );
                    eprintln!(
                        "{what}: equal in round {round}: {total} samples in {} buckets, \
                         gomaxprocs {}, goroutines {}",
                        cm.len(),
                        m["gomaxprocs"],
                        m["goroutines"]
                    );
                    exact = true;
                    break;
                }
                eprintln!("{what}: round {round}: the runtime recorded samples meanwhile, again");
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            assert!(exact, "{what}: never quiescent over 20 rounds");
            fx.exit();
        }
    }
}

/// Stop-the-world pause histograms: equal to runtime/metrics' /sched/pauses/* on Go >= 1.22
/// (same memory), absent before; the fixture's 3 runtime.GC() calls stop the world 6 times.
fn check_stw(what: &str, ours: &Value, m: &Value) {
    if m.get("pauses_total_gc").is_none() {
        assert_eq!(
            ours["stw_pauses"],
            Value::Null,
            "{what}: no STW histograms before Go 1.22"
        );
        return;
    }
    for (key, theirs) in [
        ("stopping_gc", "pauses_stopping_gc"),
        ("total_gc", "pauses_total_gc"),
        ("stopping_other", "pauses_stopping_other"),
        ("total_other", "pauses_total_other"),
    ] {
        let (o, t) = (
            counts(&ours["stw_pauses"][key]["counts"]),
            counts(&m[theirs]["counts"]),
        );
        assert_eq!(o, t, "{what}: {key} vs runtime/metrics {theirs}");
    }
    let gc: u64 = counts(&ours["stw_pauses"]["total_gc"]["counts"])
        .iter()
        .sum();
    assert!(
        gc >= 6,
        "{what}: {gc} GC stop-the-world pauses after 3 runtime.GC() calls"
    );
    eprintln!("{what}: {gc} GC stop-the-world pauses, equal to runtime/metrics");
}

fn assert_exit2(out: &std::process::Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "want exit 2: {:?}\n{stderr}",
        out.status
    );
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}:\n{stderr}");
    }
}

#[test]
fn go_stats_stripped_binary() {
    for (version, dir) in go_fixture_versions() {
        let fx = GoFixture::start(&dir.join("gosched-stripped"));
        let out = run_schedlat(&["go-stats", "--pid", &fx.pid.to_string()]);
        assert_exit2(
            &out,
            &[&version, "stripped (-s -w)", "no DWARF", "runtime.schedt"],
        );
    }
}

#[test]
fn go_stats_not_go() {
    let mut sleep = Command::new("sleep").arg("30").spawn().unwrap();
    let out = run_schedlat(&["go-stats", "--pid", &sleep.id().to_string()]);
    let _ = sleep.kill();
    let _ = sleep.wait();
    assert_exit2(&out, &["not a Go program", ".go.buildinfo"]);
}

#[test]
fn go_stats_kernel_thread() {
    // pid 2 is kthreadd: a process without an executable.
    let out = run_schedlat(&["go-stats", "--pid", "2"]);
    assert_exit2(&out, &["not a Go program", "no executable"]);
}

#[test]
fn go_stats_exited_pid() {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    let out = run_schedlat(&["go-stats", "--pid", &pid.to_string()]);
    assert_exit2(&out, &[&format!("no process with pid {pid}")]);
}

// ------------------------------------------------------------------------------- daemon

/// Lines of the `schedlat_go_*` series, for comparing two scrapes.
/// `schedlat daemon` reading the Go programs in `cg` (`[go]` plus `extra` lines), with its
/// config in a directory of its own, returned for removal.
fn go_daemon(name: &str, cg: &TestCgroup, extra: &str) -> (Daemon, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("go.toml");
    std::fs::write(
        &cfg,
        format!(
            "[go]\nenabled = true\ncgroups = [\"{}\"]\n{extra}",
            cg.path()
        ),
    )
    .unwrap();
    (
        Daemon::start_with(&["--config", cfg.to_str().unwrap()]),
        dir,
    )
}

fn go_lines(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("schedlat_go_sched_latency"))
        .map(str::to_owned)
        .collect()
}

/// Expected cumulative count at each `le` (seconds) of the daemon's histogram, from the
/// programs' own runtime/metrics histograms: every Go bucket whose upper bound is <= le + 1 ns.
fn expected_cumulative(ms: &[&Value], le: f64) -> u64 {
    let limit_ns = (le * 1e9).round() + 1.0;
    let mut n = 0;
    for m in ms {
        let h = &m["sched_latencies"];
        let bounds = h["buckets"].as_array().unwrap();
        for (i, c) in counts(&h["counts"]).iter().enumerate() {
            let upper: f64 = bounds[i + 1].as_str().unwrap().parse().unwrap();
            if (upper * 1e9).round() <= limit_ns {
                n += c;
            }
        }
    }
    n
}

/// Scrape, ask every program for runtime/metrics, scrape again, until the two scrapes agree
/// (nothing recorded in between); returns that scrape and the programs' metrics.
fn quiescent(d: &Daemon, fxs: &mut [&mut GoFixture]) -> (String, Vec<Value>) {
    for _ in 0..20 {
        let a = get(&d.addr, "/metrics").expect("scrape");
        let ms: Vec<Value> = fxs.iter_mut().map(|f| f.metrics()).collect();
        let b = get(&d.addr, "/metrics").expect("scrape");
        if go_lines(&a) == go_lines(&b) {
            return (b, ms);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("Go programs never quiescent between two scrapes");
}

fn check_hist(metrics: &str, series: &str, ms: &[&Value]) {
    let total: u64 = ms
        .iter()
        .map(|m| counts(&m["sched_latencies"]["counts"]).iter().sum::<u64>())
        .sum();
    let count = sample(
        metrics,
        &format!("schedlat_go_sched_latency_seconds_count{{{series}}}"),
    )
    .unwrap_or_else(|| panic!("no count for {series}:\n{}", go_lines(metrics).join("\n")));
    assert_eq!(count as u64, total, "{series}: count vs runtime/metrics");
    let prefix = format!("schedlat_go_sched_latency_seconds_bucket{{{series},le=\"");
    let mut n = 0;
    for l in metrics.lines().filter(|l| l.starts_with(&prefix)) {
        let le = &l[prefix.len()..l[prefix.len()..].find('"').unwrap() + prefix.len()];
        let v: f64 = l.rsplit(' ').next().unwrap().parse().unwrap();
        let want = if le == "+Inf" {
            total
        } else {
            expected_cumulative(ms, le.parse().unwrap())
        };
        assert_eq!(v as u64, want, "{series} le={le}");
        n += 1;
    }
    assert!(n > 10, "{series}: only {n} buckets");
}

#[test]
fn daemon_exports_go_runtime_metrics() {
    if !privileged_or_skip("daemon_exports_go_runtime_metrics") {
        return;
    }
    let versions = go_fixture_versions();
    let cg = TestCgroup::create("go");
    let (d, dir) = go_daemon("schedlat-go", &cg, "");
    let series = format!("binary=\"gosched\",cgroup=\"{}\"", cg.path());

    // One program (the newest Go), started after the daemon: picked up without restart.
    let (_, new_dir) = versions.last().unwrap();
    let mut a = GoFixture::start(&new_dir.join("gosched"));
    cg.add(a.pid);
    a.go();
    let (m, ms) = quiescent(&d, &mut [&mut a]);
    promtool_check(&m);
    check_hist(&m, &series, &[&ms[0]]);
    // Its stop-the-world pauses (Go >= 1.22 keeps them), each phase and kind: the count is
    // runtime/metrics' /sched/pauses/<phase>/<kind>:seconds total.
    if ms[0].get("pauses_total_gc").is_some() {
        for (phase, kind) in [
            ("stopping", "gc"),
            ("total", "gc"),
            ("stopping", "other"),
            ("total", "other"),
        ] {
            let want: u64 = counts(&ms[0][format!("pauses_{phase}_{kind}")]["counts"])
                .iter()
                .sum();
            let got = sample(
                &m,
                &format!(
                    "schedlat_go_stw_pause_seconds_count{{{series},phase=\"{phase}\",kind=\"{kind}\"}}"
                ),
            );
            assert_eq!(got, Some(want as f64), "STW {phase}/{kind}");
        }
        assert!(
            sample(
                &m,
                &format!(
                    "schedlat_go_stw_pause_seconds_count{{{series},phase=\"total\",kind=\"gc\"}}"
                )
            )
            .unwrap()
                >= 6.0,
            "3 runtime.GC() calls stop the world 6 times"
        );
    }
    assert_eq!(
        sample(&m, &format!("schedlat_go_gomaxprocs{{{series}}}")),
        Some(3.0)
    );
    assert_eq!(
        sample(&m, &format!("schedlat_go_processes{{{series}}}")),
        Some(1.0)
    );
    let goroutines = sample(&m, &format!("schedlat_go_goroutines{{{series}}}")).unwrap();
    assert!(
        goroutines >= ms[0]["goroutines"].as_f64().unwrap(),
        "goroutines {goroutines} vs runtime/metrics {}",
        ms[0]["goroutines"]
    );

    // A second program with the other layout (Go 1.19) under the same binary name: one series,
    // both histograms merged onto the same buckets.
    let (_, old_dir) = versions.first().unwrap();
    let mut b = GoFixture::start(&old_dir.join("gosched"));
    cg.add(b.pid);
    b.go();
    let (m, ms) = quiescent(&d, &mut [&mut a, &mut b]);
    check_hist(&m, &series, &[&ms[0], &ms[1]]);
    assert_eq!(
        sample(&m, &format!("schedlat_go_gomaxprocs{{{series}}}")),
        Some(6.0)
    );
    assert_eq!(
        sample(&m, &format!("schedlat_go_processes{{{series}}}")),
        Some(2.0)
    );

    // The first exits: its final counts stay in the series (a counter never goes back).
    let last_a = a.metrics();
    a.exit();
    let (m, ms) = quiescent(&d, &mut [&mut b]);
    check_hist(&m, &series, &[&last_a, &ms[0]]);
    assert_eq!(
        sample(&m, &format!("schedlat_go_processes{{{series}}}")),
        Some(1.0)
    );

    // A stripped program in the cgroup: counted as an error, not read.
    let s = GoFixture::start(&new_dir.join("gosched-stripped"));
    cg.add(s.pid);
    let m = get(&d.addr, "/metrics").unwrap();
    assert_eq!(
        sample(&m, "schedlat_go_read_errors_total{reason=\"stripped\"}"),
        Some(1.0),
        "{}",
        m.lines()
            .filter(|l| l.contains("schedlat_go_"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    drop(s);
    b.exit();
    d.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn daemon_drops_an_exited_go_programs_series_after_its_ttl() {
    if !privileged_or_skip("daemon_drops_an_exited_go_programs_series_after_its_ttl") {
        return;
    }
    let versions = go_fixture_versions();
    let cg = TestCgroup::create("goexit");
    let (d, dir) = go_daemon("schedlat-goexit", &cg, "exited_series_ttl_secs = 2\n");
    let series = format!("binary=\"gosched\",cgroup=\"{}\"", cg.path());
    let count = |m: &str| {
        sample(
            m,
            &format!("schedlat_go_sched_latency_seconds_count{{{series}}}"),
        )
    };

    // Started after the daemon: appears.
    let (_, new_dir) = versions.last().unwrap();
    let mut fx = GoFixture::start(&new_dir.join("gosched"));
    cg.add(fx.pid);
    fx.go();
    let m = get(&d.addr, "/metrics").unwrap();
    let live = count(&m).unwrap_or_else(|| panic!("no series {series} while the program runs"));
    assert!(live > 0.0);
    assert_eq!(
        sample(&m, &format!("schedlat_go_processes{{{series}}}")),
        Some(1.0)
    );

    // Exits: the counts of its last reading stay for the TTL, the gauges go at once.
    fx.exit();
    let m = get(&d.addr, "/metrics").unwrap();
    assert_eq!(count(&m), Some(live), "last reading kept after exit");
    assert_eq!(
        sample(&m, &format!("schedlat_go_processes{{{series}}}")),
        None
    );
    assert_eq!(
        sample(&m, &format!("schedlat_go_gomaxprocs{{{series}}}")),
        None
    );

    // After the TTL: gone, and its exit was no error.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let m = get(&d.addr, "/metrics").unwrap();
    assert!(
        !m.contains(&series),
        "series still exported after its TTL:\n{}",
        m.lines()
            .filter(|l| l.contains(&series))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let errors: Vec<&str> = m
        .lines()
        .filter(|l| l.starts_with("schedlat_go_read_errors_total{") && !l.ends_with(" 0"))
        .collect();
    assert!(errors.is_empty(), "read errors: {errors:?}");
    assert!(d.stop().success());
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The daemon drops its capabilities after attaching but keeps CAP_SYS_PTRACE for [go]:
/// without it, /proc/PID/mem of another user's process is refused.
#[test]
fn daemon_reads_other_users_go_processes() {
    if !privileged_or_skip("daemon_reads_other_users_go_processes") {
        return;
    }
    let (_, new_dir) = go_fixture_versions().pop().unwrap();
    let cg = TestCgroup::create("go-user");
    let (d, dir) = go_daemon("schedlat-gouser", &cg, "");
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(new_dir.join("gosched"));
    let mut fx = GoFixture::start_command(cmd);
    let status = std::fs::read_to_string(format!("/proc/{}/status", fx.pid)).unwrap();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534")),
        "fixture not running as nobody:\n{status}"
    );
    cg.add(fx.pid);
    fx.go();
    let (m, ms) = quiescent(&d, &mut [&mut fx]);
    let series = format!("binary=\"gosched\",cgroup=\"{}\"", cg.path());
    check_hist(&m, &series, &[&ms[0]]);
    assert_eq!(
        sample(&m, "schedlat_go_read_errors_total{reason=\"permission\"}"),
        None,
        "permission errors reading a nobody-owned process"
    );
    // Every thread kept CAP_SYS_PTRACE (bit 19) and nothing else.
    for t in std::fs::read_dir(format!("/proc/{}/task", d.child.id())).unwrap() {
        let status = std::fs::read_to_string(t.unwrap().path().join("status")).unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .unwrap()
            .trim();
        assert_eq!(
            u64::from_str_radix(eff, 16).unwrap(),
            1 << 19,
            "CapEff {eff}"
        );
    }
    fx.exit();
    d.stop();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn go_stats_warns_when_gomaxprocs_exceeds_the_cpu_it_may_use() {
    let versions = go_fixture_versions();
    let (_, dir) = versions.last().unwrap();
    // GOMAXPROCS 3 (the fixture's), pinned to one CPU: Ps outnumber the CPU by three.
    let mut cmd = Command::new("taskset");
    cmd.args(["-c", "0"]).arg(dir.join("gosched"));
    let mut fx = GoFixture::start_command(cmd);
    fx.go();
    let v = go_stats(fx.pid);
    let b = &v["cpu_budget"];
    assert_eq!(b["affinity_cpus"], 1, "{b}");
    assert!(b["usable_cpus"].as_f64().unwrap() <= 1.0, "{b}");
    let warnings: Vec<&str> = v["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    // Whichever limit is tighter is named: the affinity here, unless the test runs in a cgroup
    // with a quota below one CPU.
    let by_quota = b["quota_cpus"].as_f64().is_some_and(|q| q < 1.0);
    let why = if by_quota {
        "CPU quota of cgroup"
    } else {
        "affinity allows 1 CPUs"
    };
    assert!(
        warnings[0].contains("GOMAXPROCS=3") && warnings[0].contains(why),
        "{}",
        warnings[0]
    );
    // The text form says it too.
    let out = run_schedlat(&["go-stats", "--pid", &fx.pid.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("warning: GOMAXPROCS=3"), "{text}");
    assert!(text.contains("CPU it may use:"), "{text}");
    fx.exit();
}

fn total_of(m: &Value, key: &str) -> u64 {
    counts(&m[key]["counts"]).iter().sum()
}

#[test]
fn capture_of_a_go_program_has_a_go_section_that_agrees_with_runtime_metrics() {
    if !privileged_or_skip(
        "capture_of_a_go_program_has_a_go_section_that_agrees_with_runtime_metrics",
    ) {
        return;
    }
    for (version, dir) in go_fixture_versions() {
        let mut fx = GoFixture::start(&dir.join("gosched"));
        // Before the capture, from outside (go-stats equals runtime/metrics, tested above):
        // the fixture answers `metrics` only after its load phase.
        let s0 = go_stats(fx.pid);
        let (sched0, gc0) = (
            total_of(&s0, "sched_latencies"),
            s0["stw_pauses"]
                .get("total_gc")
                .map_or(0, |h| counts(&h["counts"]).iter().sum()),
        );
        let pid = fx.pid.to_string();
        let cap = schedlat_tests::Schedlat::capture(&[
            "--duration",
            "120s",
            "--format",
            "json",
            "--pid",
            &pid,
        ]);
        cap.wait_ready(std::time::Duration::from_secs(60));
        fx.go();
        let m1 = fx.metrics();
        let (status, stdout, stderr) = cap.stop();
        assert!(
            status.success(),
            "{version}: capture failed: {status}\n{stderr}"
        );
        let m2 = fx.metrics();
        let report: Value = serde_json::from_str(&stdout).unwrap();
        let go = &report["go"][0];
        assert_eq!(go["pid"], fx.pid, "{version}: {}", report["go"]);
        assert_eq!(go["go_version"], Value::String(version.clone()));
        assert_eq!(go["gomaxprocs"], 3);
        // The window lies between the reading before the capture and the program's own m2
        // (after it), and covers the whole load phase, which ended before m1.
        let n = go["sched_latency"]["count"].as_u64().unwrap();
        let key = "sched_latencies";
        let (lo, hi) = (total_of(&m1, key) - sched0, total_of(&m2, key) - sched0);
        assert!(
            n <= hi && n * 10 >= lo * 9,
            "{version}: {n} samples in the window; runtime/metrics grew by {lo} (load) .. {hi}"
        );
        assert!(n > 100, "{version}: {n}");
        assert!(go["sched_latency"]["p99_ns"].as_u64().is_some());
        // The program's threads waited on the kernel run queue too (3 Ps, 2 CPUs).
        assert!(go["threads_runqueue_waits"].as_u64().unwrap() > 0, "{go}");
        if m1.get("pauses_total_gc").is_some() {
            let stw = go["stw_pauses"]["total_gc"]["count"].as_u64().unwrap();
            let hi = total_of(&m2, "pauses_total_gc") - gc0;
            assert!(
                (6..=hi).contains(&stw),
                "{version}: {stw} GC pauses (runtime: <= {hi})"
            );
        } else {
            assert_eq!(go["stw_pauses"], Value::Null);
        }
        // GOMAXPROCS 3 on this 2-CPU kind of machine: more Ps than CPUs, said plainly.
        let cpus = std::thread::available_parallelism().unwrap().get();
        if cpus < 3 {
            let w = go["warnings"].to_string();
            assert!(w.contains("GOMAXPROCS=3"), "{version}: {w}");
        }
        fx.exit();
    }
}

#[test]
fn capture_go_flag_on_a_non_go_process_is_a_usage_error() {
    let mut sleep = Command::new("sleep").arg("30").spawn().unwrap();
    let out = run_schedlat(&[
        "capture",
        "--duration",
        "1s",
        "--go",
        "--pid",
        &sleep.id().to_string(),
    ]);
    let _ = sleep.kill();
    let _ = sleep.wait();
    assert_exit2(&out, &["--go", "not a Go program"]);
}

// ------------------------------------------- GC pauses of Go < 1.22 (runtime.memstats ring)

/// Go minor version from "go1.19.8".
fn go_minor(version: &str) -> u32 {
    version
        .strip_prefix("go1.")
        .and_then(|r| r.split(['.', 'r', 'b']).next())
        .and_then(|m| m.parse().ok())
        .unwrap_or_else(|| panic!("unexpected Go version {version:?}"))
}

/// The Go < 1.22 fixtures (the pause ring path); the suite must have at least one.
fn old_go_fixtures() -> Vec<(String, std::path::PathBuf)> {
    let old: Vec<_> = go_fixture_versions()
        .into_iter()
        .filter(|(v, _)| go_minor(v) < 22)
        .collect();
    assert!(
        !old.is_empty(),
        "no Go < 1.22 fixture: `cargo xtask setup` builds one with golang-1.19-go"
    );
    old
}

fn u64s(v: &Value) -> Vec<u64> {
    counts(v)
}

/// go-stats and the program's own runtime.ReadMemStats at a moment when no GC ran in between
/// (go-stats before and after agree on num_gc).
fn gc_quiescent(fx: &mut GoFixture) -> (Value, Value) {
    for _ in 0..20 {
        let a = go_stats(fx.pid);
        let m = fx.memstats();
        let b = go_stats(fx.pid);
        if a["gc_pauses"]["num_gc"] == b["gc_pauses"]["num_gc"] {
            return (a, m);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("the program never stopped collecting between two reads");
}

#[test]
fn go_stats_gc_pauses_equal_memstats_before_go_1_22() {
    for (version, dir) in go_fixture_versions() {
        for name in ["gosched", "gosched-pie"] {
            let what = format!("{version}/{name}");
            let mut fx = GoFixture::start(&dir.join(name));
            fx.go();
            if go_minor(&version) >= 22 {
                // The histogram path stays: no ring read where the runtime keeps histograms.
                let s = go_stats(fx.pid);
                assert_eq!(s["gc_pauses"], Value::Null, "{what}");
                assert!(s["stw_pauses"].is_object(), "{what}");
                fx.exit();
                continue;
            }
            let mut expected_gc = fx.memstats()["num_gc"].as_u64().unwrap();
            // 5 cycles fit the ring of 256; after 300 more it holds only the latest 256.
            for n in [5u32, 300] {
                let printed = fx.gc(n);
                let (s, m) = gc_quiescent(&mut fx);
                assert_eq!(s["stw_pauses"], Value::Null, "{what}");
                let g = &s["gc_pauses"];
                assert_eq!(g["num_gc"], m["num_gc"], "{what}: num_gc vs MemStats.NumGC");
                let ours = u64s(&g["recent_ns"]);
                assert_eq!(
                    ours,
                    u64s(&m["pause_ns"]),
                    "{what}: pauses vs MemStats.PauseNs"
                );
                // Each runtime.GC() is exactly one cycle (no background GC in this idle program).
                let num_gc = m["num_gc"].as_u64().unwrap();
                assert_eq!(num_gc, expected_gc + u64::from(n), "{what}: after gc {n}");
                assert_eq!(printed["num_gc"], m["num_gc"], "{what}");
                expected_gc = num_gc;
                assert_eq!(ours.len() as u64, num_gc.min(256), "{what}");
                assert!(ours.iter().all(|&p| p > 0), "{what}: {ours:?}");
                // The histogram holds exactly those pauses, each in the bucket holding it.
                let h = &g["recent"];
                let hc = u64s(&h["counts"]);
                assert_eq!(hc.iter().sum::<u64>(), ours.len() as u64, "{what}");
                assert_eq!(h["total"], ours.len() as u64, "{what}");
                let bounds: Vec<f64> = h["boundaries"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|b| b.as_f64().unwrap_or(f64::INFINITY))
                    .collect();
                let mut want = vec![0u64; hc.len()];
                for &p in &ours {
                    let s = p as f64 / 1e9;
                    let i = (1..hc.len())
                        .find(|&i| bounds[i] <= s && s < bounds[i + 1])
                        .unwrap_or_else(|| panic!("{what}: no bucket for {p} ns"));
                    want[i] += 1;
                }
                assert_eq!(hc, want, "{what}: histogram of the recent pauses");
                eprintln!(
                    "{what}: gc {n}: num_gc {num_gc}, {} pauses equal to MemStats.PauseNs, \
                     latest {} ns, max {} ns",
                    ours.len(),
                    ours.last().unwrap(),
                    ours.iter().max().unwrap()
                );
            }
            let out = run_schedlat(&["go-stats", "--pid", &fx.pid.to_string()]);
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                text.contains(&format!("GC cycles: {expected_gc}"))
                    && text.contains("GC pauses, the 256 most recent cycles: 256 samples"),
                "{what}: {text}"
            );
            fx.exit();
        }
    }
}

#[test]
fn capture_reports_each_gc_pause_of_the_window_before_go_1_22() {
    if !privileged_or_skip("capture_reports_each_gc_pause_of_the_window_before_go_1_22") {
        return;
    }
    for (version, dir) in old_go_fixtures() {
        let mut fx = GoFixture::start(&dir.join("gosched"));
        fx.go();
        let pid = fx.pid.to_string();
        // 5 cycles: every pause; 300: the ring's last 256, and 44 counted as overwritten.
        for n in [5u64, 300] {
            let m0 = fx.memstats();
            let cap = schedlat_tests::Schedlat::capture(&[
                "--duration",
                "120s",
                "--format",
                "json",
                "--futex",
                "off",
                "--pid",
                &pid,
            ]);
            cap.wait_ready(std::time::Duration::from_secs(60));
            let m1 = fx.gc(n as u32);
            let (status, stdout, stderr) = cap.stop();
            assert!(
                status.success(),
                "{version}: capture failed: {status}\n{stderr}"
            );
            let report: Value = serde_json::from_str(&stdout).unwrap();
            let go = &report["go"][0];
            assert_eq!(go["stw_pauses"], Value::Null, "{version}");
            let g = &go["gc_pauses"];
            let delta = m1["num_gc"].as_u64().unwrap() - m0["num_gc"].as_u64().unwrap();
            assert_eq!(
                delta, n,
                "{version}: the program's own NumGC grew by {delta}"
            );
            assert_eq!(g["count"], n, "{version}: {g}");
            let printed = u64s(&m1["pause_ns"]);
            let new = &printed[printed.len() - n.min(256) as usize..];
            assert_eq!(
                u64s(&g["pauses_ns"]),
                new,
                "{version}: pauses vs MemStats.PauseNs"
            );
            assert_eq!(g["lost"], n.saturating_sub(256), "{version}");
            assert_eq!(g["total_ns"], new.iter().sum::<u64>(), "{version}");
            assert_eq!(g["max_ns"], *new.iter().max().unwrap(), "{version}");
            let warnings = go["warnings"].to_string();
            assert_eq!(
                warnings.contains("overwritten"),
                n > 256,
                "{version}: {warnings}"
            );
            eprintln!(
                "{version}: capture of gc {n}: count {}, {} pauses equal to MemStats.PauseNs \
                 (total {} ns), lost {}",
                g["count"],
                new.len(),
                g["total_ns"],
                g["lost"]
            );
        }
        fx.exit();
    }
}

/// Lines of the daemon's Go pause series, for comparing two scrapes.
fn stw_lines(metrics: &str) -> Vec<String> {
    metrics
        .lines()
        .filter(|l| l.starts_with("schedlat_go_stw_pause") || l.starts_with("schedlat_go_gc_"))
        .map(str::to_owned)
        .collect()
}

/// A scrape and the program's memstats with no GC cycle in between.
fn gc_quiescent_scrape(d: &Daemon, fx: &mut GoFixture) -> (String, Value) {
    for _ in 0..20 {
        let a = get(&d.addr, "/metrics").expect("scrape");
        let m = fx.memstats();
        let b = get(&d.addr, "/metrics").expect("scrape");
        if stw_lines(&a) == stw_lines(&b) {
            return (b, m);
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    panic!("the program never stopped collecting between two scrapes");
}

/// The daemon's (total, gc) pause histogram of `series` holds exactly `pauses` (ns).
fn check_pause_hist(metrics: &str, series: &str, pauses: &[u64]) {
    let s = format!("{series},phase=\"total\",kind=\"gc\"");
    let count = sample(
        metrics,
        &format!("schedlat_go_stw_pause_seconds_count{{{s}}}"),
    );
    assert_eq!(count, Some(pauses.len() as f64), "{s}: count");
    let sum = sample(
        metrics,
        &format!("schedlat_go_stw_pause_seconds_sum{{{s}}}"),
    )
    .unwrap();
    let want: u64 = pauses.iter().sum();
    assert!(
        (sum * 1e9 - want as f64).abs() <= 1e-6 * want as f64 + 1.0,
        "{s}: _sum {sum} s, the pauses add up to {want} ns"
    );
    let prefix = format!("schedlat_go_stw_pause_seconds_bucket{{{s},le=\"");
    let mut n = 0;
    for l in metrics.lines().filter(|l| l.starts_with(&prefix)) {
        let le = &l[prefix.len()..l[prefix.len()..].find('"').unwrap() + prefix.len()];
        let v: f64 = l.rsplit(' ').next().unwrap().parse().unwrap();
        let want = if le == "+Inf" {
            pauses.len()
        } else {
            let le_ns = (le.parse::<f64>().unwrap() * 1e9).round() as u64;
            pauses.iter().filter(|&&p| p <= le_ns).count()
        };
        assert_eq!(v as usize, want, "{s} le={le}");
        n += 1;
    }
    assert!(n > 10, "{s}: only {n} buckets");
    // Go < 1.22 has only the whole pause of GC cycles.
    for (phase, kind) in [
        ("stopping", "gc"),
        ("stopping", "other"),
        ("total", "other"),
    ] {
        assert!(
            !metrics.contains(&format!(
                "schedlat_go_stw_pause_seconds_count{{{series},phase=\"{phase}\",kind=\"{kind}\"}}"
            )),
            "{series}: no {phase}/{kind} series before Go 1.22"
        );
    }
}

#[test]
fn daemon_accumulates_gc_pauses_before_go_1_22() {
    if !privileged_or_skip("daemon_accumulates_gc_pauses_before_go_1_22") {
        return;
    }
    let (version, dir) = old_go_fixtures().remove(0);
    let cg = TestCgroup::create("gogc");
    let (d, cfg_dir) = go_daemon("schedlat-gogc", &cg, "");
    let series = format!("binary=\"gosched\",cgroup=\"{}\"", cg.path());
    let lost = format!("schedlat_go_gc_pauses_lost_total{{{series}}}");
    let mut fx = GoFixture::start(&dir.join("gosched"));
    cg.add(fx.pid);
    fx.go();

    // First reading: every cycle so far (all in the ring).
    let (m, ms) = gc_quiescent_scrape(&d, &mut fx);
    promtool_check(&m);
    let mut all = u64s(&ms["pause_ns"]);
    assert_eq!(
        all.len() as u64,
        ms["num_gc"].as_u64().unwrap(),
        "{version}"
    );
    assert!(all.len() >= 3, "{version}: the load phase runs 3 GCs");
    check_pause_hist(&m, &series, &all);
    assert_eq!(sample(&m, &lost), None, "{version}: nothing lost yet");

    // 5 more between two scrapes: exactly those 5 are added.
    fx.gc(5);
    let (m, ms) = gc_quiescent_scrape(&d, &mut fx);
    let ring = u64s(&ms["pause_ns"]);
    all.extend_from_slice(&ring[ring.len() - 5..]);
    assert_eq!(ring, all, "{version}: the ring still holds every cycle");
    check_pause_hist(&m, &series, &all);
    assert_eq!(sample(&m, &lost), None, "{version}");

    // 300 between two scrapes: the ring's 256 are added, 44 counted as lost.
    let before = ms["num_gc"].as_u64().unwrap();
    fx.gc(300);
    let (m, ms) = gc_quiescent_scrape(&d, &mut fx);
    assert_eq!(ms["num_gc"].as_u64().unwrap(), before + 300, "{version}");
    let ring = u64s(&ms["pause_ns"]);
    assert_eq!(ring.len(), 256);
    all.extend_from_slice(&ring);
    check_pause_hist(&m, &series, &all);
    assert_eq!(sample(&m, &lost), Some(44.0), "{version}");
    promtool_check(&m);
    eprintln!(
        "{version}: daemon holds {} GC pauses ({} ns in all), 44 lost beyond the ring",
        all.len(),
        all.iter().sum::<u64>()
    );
    fx.exit();
    d.stop();
    std::fs::remove_dir_all(&cfg_dir).unwrap();
}
