//! `schedlat go-stats` against the Go runtime's own runtime/metrics, on Go 1.19 and a current
//! Go, plain and PIE. Both read the same memory: /sched/latencies:seconds is
//! `sched.timeToRun` (runtime/metrics.go of 1.19.8 copies underflow + counts; 1.27.3 calls
//! timeHistogram.write: underflow, counts, overflow), so the counts must match exactly.
use std::process::Command;

use schedlat_tests::{
    gofixture::{GoFixture, go_fixture_versions},
    run_schedlat,
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
                if ca == cb && a["goroutines"] == b["goroutines"] {
                    assert_eq!(ca, cm, "{what}: quiescent, so counts must be equal");
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
fn go_stats_exited_pid() {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    let out = run_schedlat(&["go-stats", "--pid", &pid.to_string()]);
    assert_exit2(&out, &[&format!("no process with pid {pid}")]);
}
