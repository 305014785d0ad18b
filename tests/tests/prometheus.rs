//! deploy/prometheus: the example scrape config and rules are valid, and a real Prometheus
//! scraping a real daemon computes run-queue quantiles per cgroup from them.
//! deploy/grafana: every dashboard query runs on that Prometheus and finds the daemon's series.
use std::{
    io::{Read as _, Write as _},
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use schedlat_tests::{
    TestCgroup, Workload, privileged_or_skip, scrape::Daemon, scrape::get, scrape::get_response,
};
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
        Self::start_with_targets(&[target])
    }

    /// Like [`start`](Self::start), scraping several targets in the `schedlat` job.
    fn start_with_targets(targets: &[&str]) -> Self {
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
            .replace("127.0.0.1:9725", &targets.join("\", \""))
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
        // A bad query is a 400 whose JSON body says why: show that, not just the log.
        let (status, body) = get_response(&self.addr, &format!("/api/v1/{path}"))
            .unwrap_or_else(|| panic!("GET /api/v1/{path}: no answer:\n{}", self.log()));
        let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| {
            panic!("GET /api/v1/{path}: HTTP {status}, not JSON ({e}): {body}")
        });
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

// ------------------------------------------------------------------------- deploy/grafana

/// Every metric a Go-runtime exporter will add (names fixed ahead of it): the dashboard's Go
/// panels may only use these.
const GO_METRICS: &[&str] = &[
    "schedlat_go_sched_latency_seconds_bucket",
    "schedlat_go_sched_latency_seconds_count",
    "schedlat_go_sched_latency_seconds_sum",
    "schedlat_go_stw_pause_seconds_bucket",
    "schedlat_go_stw_pause_seconds_count",
    "schedlat_go_stw_pause_seconds_sum",
    "schedlat_go_gomaxprocs",
    "schedlat_go_goroutines",
];

/// The `schedlat_*` metric names in a PromQL expression (recording rules excepted: they
/// have colons).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("schedlat_") {
        let before = rest[..i].chars().last();
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            out.push(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    out
}

/// The dashboard's template variables as a real Grafana would fill them for "All" (the
/// variables' `allValue`) and a 5 s rate window; panics on a variable it does not know.
fn substitute(expr: &str) -> String {
    let s = expr
        .replace("$__rate_interval", "5s")
        .replace("$instance", ".+")
        .replace("$cgroup", ".+");
    assert!(!s.contains('$'), "unknown template variable in {expr}");
    s
}

/// Exposition of the Go-runtime metrics, with their fixed names and labels, for the Go panels
/// until the daemon exports them: one process of /srv/api; counts grow with `n` (the scrape
/// number) so rates are not zero.
fn go_exposition(n: u64) -> String {
    let l = r#"binary="/srv/api",cgroup="/kubepods/api""#;
    let mut out = String::new();
    let mut histogram = |name: &str, labels: &str, buckets: &[(&str, u64)]| {
        out.push_str(&format!("# TYPE {name} histogram\n"));
        for (le, per) in buckets {
            out.push_str(&format!(
                "{name}_bucket{{{labels},le=\"{le}\"}} {}\n",
                per * n
            ));
        }
        let total = buckets.last().unwrap().1 * n;
        out.push_str(&format!("{name}_sum{{{labels}}} {}\n", total as f64 * 1e-4));
        out.push_str(&format!("{name}_count{{{labels}}} {total}\n"));
    };
    let b = [("0.0001", 90), ("0.01", 100), ("+Inf", 100)];
    histogram("schedlat_go_sched_latency_seconds", l, &b);
    let stw = "schedlat_go_stw_pause_seconds";
    out.push_str(&format!("# TYPE {stw} histogram\n"));
    for phase in ["stopping", "total"] {
        let labels = format!("{l},phase=\"{phase}\"");
        for (le, per) in [("0.0001", 3), ("0.001", 4), ("+Inf", 4)] {
            out.push_str(&format!(
                "{stw}_bucket{{{labels},le=\"{le}\"}} {}\n",
                per * n
            ));
        }
        out.push_str(&format!("{stw}_sum{{{labels}}} {}\n", n as f64 * 1e-3));
        out.push_str(&format!("{stw}_count{{{labels}}} {}\n", 4 * n));
    }
    out.push_str(&format!(
        "# TYPE schedlat_go_gomaxprocs gauge\nschedlat_go_gomaxprocs{{{l}}} 2\n\
         # TYPE schedlat_go_goroutines gauge\nschedlat_go_goroutines{{{l}}} {}\n",
        40 + n % 7
    ));
    out
}

/// Serves [`go_exposition`] on a loopback port (for as long as the test runs); its address.
fn serve_go_metrics() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for (n, conn) in (1u64..).zip(listener.incoming()) {
            let Ok(mut conn) = conn else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => req.extend_from_slice(&buf[..k]),
                }
            }
            let body = go_exposition(n);
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    addr
}

#[test]
fn grafana_dashboard_queries_run_on_a_real_prometheus() {
    if !privileged_or_skip("grafana_dashboard_queries_run_on_a_real_prometheus") {
        return;
    }
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/schedlat-dashboard.json");
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    assert!(
        dash["schemaVersion"].as_u64().unwrap() >= 36,
        "schemaVersion"
    );

    // Template variables: a datasource variable that every panel and query uses, and
    // instance/cgroup from label_values().
    let vars = dash["templating"]["list"].as_array().unwrap();
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no template variable {name}"))
    };
    assert_eq!(var("DS_PROMETHEUS")["type"], "datasource");
    assert_eq!(var("DS_PROMETHEUS")["query"], "prometheus");
    let ds_ok = |ds: &Value| ds["type"] == "prometheus" && ds["uid"] == "${DS_PROMETHEUS}";

    // Each panel query: (panel title, expr, is a Go panel).
    let mut queries = Vec::new();
    let mut heatmaps = 0;
    for p in dash["panels"].as_array().unwrap() {
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().unwrap();
        assert!(ds_ok(&p["datasource"]), "panel {title}: datasource");
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            assert!(ds_ok(&t["datasource"]), "panel {title}: target datasource");
            let expr = t["expr"].as_str().unwrap().to_string();
            let names = metric_names(&expr);
            assert!(
                !names.is_empty(),
                "panel {title}: no schedlat metric in {expr}"
            );
            let go = names.iter().any(|n| n.starts_with("schedlat_go_"));
            if go {
                for n in &names {
                    assert!(GO_METRICS.contains(&n.as_str()), "panel {title}: {n}");
                }
            }
            if p["type"] == "heatmap" {
                heatmaps += 1;
                assert_eq!(t["format"], "heatmap", "panel {title}");
                assert!(
                    expr.contains("sum by (le)") && expr.contains("_bucket"),
                    "heatmap {title} from buckets: {expr}"
                );
            }
            queries.push((title.to_string(), expr, go, names));
        }
    }
    assert!(heatmaps >= 1, "no heatmap panel");
    assert!(queries.iter().any(|q| q.2), "no Go panel");

    let d = Daemon::start();
    let go_addr = serve_go_metrics();
    let prom = Prometheus::start_with_targets(&[&d.addr, &go_addr]);
    // CPU contention in a cgroup of its own, so preempted and woken delay both show up.
    let cg = TestCgroup::create("grafana");
    let mut spin = Workload::start(&["spin", "--threads", "2", "--cpu", "0", "--secs", "12"]);
    cg.add(spin.pid);
    spin.go();
    let wait = Duration::from_secs(30);
    for target in [&d.addr, &go_addr] {
        let up = format!("up{{job=\"schedlat\",instance=\"{target}\"}}");
        assert_eq!(prom.finite(&up, wait), 1.0, "{target} up");
    }

    // Every non-Go metric a panel names is one the daemon exports.
    let exposed = get(&d.addr, "/metrics").unwrap();
    for (title, _, go, names) in &queries {
        for n in names.iter().filter(|_| !go) {
            assert!(
                exposed.contains(&format!("\n{n}{{")) || exposed.contains(&format!("\n{n} ")),
                "panel {title}: {n} is not exported by the daemon"
            );
        }
    }

    // Variables: label_values(m, l) is the set of l over the series of m.
    for (name, want) in [
        ("instance", d.addr.clone()),
        ("cgroup", cg.path().to_string()),
    ] {
        let q = var(name)["query"]["query"].as_str().unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: {q}"));
        let (metric, label) = inner.rsplit_once(',').unwrap();
        let promql = format!("count by ({}) ({})", label.trim(), substitute(metric));
        let deadline = Instant::now() + wait;
        loop {
            let r = prom.query(&promql);
            if r.iter().any(|(m, _)| m[label.trim()] == want.as_str()) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "variable {name} ({q}) never offered {want}: {r:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    // Every query parses and runs (Prometheus answers status success, else `query` panics
    // with its error) and returns series: the daemon's, and for the Go panels those of the
    // Go metrics' fixed names and labels (binary, cgroup, phase) served above.
    for (title, expr, _, _) in &queries {
        let promql = substitute(expr);
        let deadline = Instant::now() + wait;
        loop {
            let r = prom.query(&promql);
            if !r.is_empty() {
                eprintln!("dashboard: {title}: {} series", r.len());
                break;
            }
            assert!(
                Instant::now() < deadline,
                "panel {title}: {promql} returned nothing in {wait:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    spin.result();
    assert!(d.stop().success());
}
