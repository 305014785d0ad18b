//! deploy/prometheus: the example scrape config and rules are valid, and a real Prometheus
//! scraping a real daemon computes run-queue quantiles per cgroup from them.
use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use schedlat_tests::{TestCgroup, Workload, privileged_or_skip, scrape::Daemon, scrape::get};
use serde_json::Value;

fn deploy() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool not found: `cargo xtask setup` installs Debian's prometheus package");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn example_scrape_config_and_rules_pass_promtool() {
    let dir = deploy();
    // `check config` also loads the rule files the config names.
    promtool(&[
        "check",
        "config",
        dir.join("prometheus.yml").to_str().unwrap(),
    ]);
    promtool(&[
        "check",
        "rules",
        dir.join("schedlat-rules.yml").to_str().unwrap(),
    ]);
    // The rules' unit tests: each alert fires on synthetic series of what it describes (Go
    // metrics included, which no daemon here exports) and not on the healthy neighbour.
    promtool(&[
        "test",
        "rules",
        dir.join("schedlat-rules.test.yml").to_str().unwrap(),
    ]);
}

/// Prometheus on a free loopback port with its own TSDB directory; killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
    dir: PathBuf,
}

impl Prometheus {
    /// The example config, pointed at `target`, scraping and evaluating rules every second.
    fn start(target: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("schedlat-prom-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let example = std::fs::read_to_string(deploy().join("prometheus.yml")).unwrap();
        for needle in [
            "127.0.0.1:9725",
            "scrape_interval: 15s",
            "evaluation_interval: 15s",
        ] {
            assert!(example.contains(needle), "example config lost {needle:?}");
        }
        let rules = deploy().join("schedlat-rules.yml");
        let cfg = example
            .replace("127.0.0.1:9725", target)
            .replace("scrape_interval: 15s", "scrape_interval: 1s")
            .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
            .replace("- schedlat-rules.yml", &format!("- {}", rules.display()));
        std::fs::write(dir.join("prometheus.yml"), cfg).unwrap();
        let addr = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect(
                "prometheus not found: `cargo xtask setup` installs Debian's prometheus package",
            );
        let p = Self { child, addr, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while get(&p.addr, "/-/ready").is_none() {
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 60 s:\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>`, the `data` of a successful answer.
    fn api(&self, path: &str) -> Value {
        let body = get(&self.addr, &format!("/api/v1/{path}"))
            .unwrap_or_else(|| panic!("GET /api/v1/{path} failed:\n{}", self.log()));
        let v: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{body}");
        v["data"].clone()
    }

    /// An instant query's vector result as (labels, value).
    fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let data = self.api(&format!("query?query={}", encode(promql)));
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let v = s["value"][1].as_str().unwrap().parse::<f64>().unwrap();
                (s["metric"].clone(), v)
            })
            .collect()
    }

    /// Poll `promql` until it returns a finite value (series appear after two scrapes).
    fn finite(&self, promql: &str, timeout: Duration) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.query(promql);
            if let Some((_, v)) = r.iter().find(|(_, v)| v.is_finite()) {
                return *v;
            }
            assert!(
                Instant::now() < deadline,
                "{promql} gave no finite value in {timeout:?}: {r:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encode a query parameter (RFC 3986 unreserved characters pass).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn a_real_prometheus_computes_runqueue_p99_per_cgroup() {
    if !privileged_or_skip("a_real_prometheus_computes_runqueue_p99_per_cgroup") {
        return;
    }
    let d = Daemon::start();
    let prom = Prometheus::start(&d.addr);
    // Two threads sharing CPU 0 in a cgroup of their own: steady preemption delay.
    let cg = TestCgroup::create("prometheus");
    let mut spin = Workload::start(&["spin", "--threads", "2", "--cpu", "0", "--secs", "12"]);
    cg.add(spin.pid);
    spin.go();

    let wait = Duration::from_secs(30);
    assert_eq!(prom.finite("up{job=\"schedlat\"}", wait), 1.0, "target up");
    let sel = format!("cgroup=\"{}\"", cg.path());
    let p99 = prom.finite(
        &format!(
            "histogram_quantile(0.99, sum by (le) \
             (rate(schedlat_runqueue_latency_seconds_bucket{{{sel}}}[5s])))"
        ),
        wait,
    );
    // Each thread waits about one slice of the other (a few ms under EEVDF/CFS); anything
    // from 100 µs to 1 s is plausible, 0 or +Inf is not.
    assert!(
        (1e-4..1.0).contains(&p99),
        "p99 run-queue delay of {sel}: {p99} s"
    );
    let preempted = prom.finite(
        &format!(
            "sum(rate(schedlat_runqueue_latency_seconds_count{{{sel},cause=\"preempted\"}}[5s]))"
        ),
        wait,
    );
    assert!(
        preempted > 10.0,
        "preempted switch-ins/s in {sel}: {preempted}"
    );
    // The example recording rules evaluate to a value for the workload's cgroup.
    let rec = prom.finite(
        &format!("cgroup:schedlat_runqueue_latency_seconds:p99_5m{{{sel}}}"),
        wait,
    );
    assert!((1e-4..1.0).contains(&rec), "recorded p99 {rec}");
    let ratio = prom.finite(
        &format!("cgroup:schedlat_runqueue_preempted_ratio:5m{{{sel}}}"),
        wait,
    );
    assert!(
        ratio > 0.9,
        "two spinners share a CPU by preemption: ratio {ratio}"
    );
    let rec_preempted = prom.finite(
        &format!("cgroup:schedlat_runqueue_latency_seconds:p99_preempted_5m{{{sel}}}"),
        wait,
    );
    assert!(
        (1e-4..1.0).contains(&rec_preempted),
        "recorded preempted p99 {rec_preempted}"
    );
    eprintln!(
        "prometheus: {sel} p99 {p99:.6} s (recorded {rec:.6} s), preempted {preempted:.0}/s, ratio {ratio:.3}"
    );
    // Every rule (recording and alerting) loaded and evaluates without error.
    let groups = prom.api("rules");
    let rules: Vec<&Value> = groups["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .collect();
    assert!(rules.len() >= 11, "{groups}");
    for r in rules {
        assert_eq!(r["health"], "ok", "rule {}", r["name"]);
    }
    spin.result();
    assert!(d.stop().success());
}
