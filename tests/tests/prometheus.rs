//! deploy/prometheus: the example scrape config and rules are valid, and a real Prometheus
//! scraping a real daemon computes run-queue quantiles per cgroup from them.
//! deploy/grafana: every dashboard query runs on that Prometheus and finds the daemon's series.
use std::{
    net::TcpListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use schedlat_tests::{
    TestCgroup, Workload,
    gofixture::{GoHttpServer, go_fixture_versions},
    privileged_or_skip,
    scrape::{Daemon, get, get_response, go_daemon_with},
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
    // metrics included) and not on the healthy neighbour.
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
        Self::start_with(target, &[])
    }

    /// [`Prometheus::start`] with more command-line flags, e.g. a feature flag.
    fn start_with(target: &str, flags: &[&str]) -> Self {
        Self::start_jobs(target, flags, "")
    }

    /// [`Prometheus::start_with`] with more scrape jobs (YAML list items, indented by 2).
    fn start_jobs(target: &str, flags: &[&str], jobs: &str) -> Self {
        static STARTED: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "schedlat-prom-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
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
            .replace("- schedlat-rules.yml", &format!("- {}", rules.display()))
            + jobs;
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
            .args(flags)
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
        self.until(promql, f64::is_finite, timeout)
    }

    /// Poll `promql` until it returns a value for which `ok` holds.
    fn until(&self, promql: &str, ok: impl Fn(f64) -> bool, timeout: Duration) -> f64 {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.query(promql);
            if let Some((_, v)) = r.iter().find(|(_, v)| ok(*v)) {
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
    if !privileged_or_skip() {
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

/// Headers of GET /metrics with `accept` as the Accept header (curl).
fn metrics_headers(addr: &str, accept: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-D", "-", "-o", "/dev/null", "-H"])
        .arg(format!("Accept: {accept}"))
        .arg(format!("http://{addr}/metrics"))
        .output()
        .expect("curl not found: `cargo xtask setup` installs it");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().to_ascii_lowercase()
}

/// The Accept header of Prometheus 2.42 with native histograms enabled (as seen on the wire).
const ACCEPT_PROTOBUF: &str = "application/vnd.google.protobuf;\
    proto=io.prometheus.client.MetricFamily;encoding=delimited,\
    application/openmetrics-text;version=1.0.0;q=0.8,\
    application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

#[test]
fn a_real_prometheus_stores_native_histograms_that_agree_with_the_classic_ones() {
    if !privileged_or_skip() {
        return;
    }
    let d = Daemon::start();
    // Content negotiation: protobuf to a scraper asking for it, text to anyone else.
    let h = metrics_headers(&d.addr, ACCEPT_PROTOBUF);
    assert!(
        h.contains("content-type: application/vnd.google.protobuf; proto=io.prometheus.client.metricfamily; encoding=delimited"),
        "{h}"
    );
    let h = metrics_headers(&d.addr, "text/plain;version=0.0.4;q=0.5,*/*;q=0.1");
    assert!(h.contains("content-type: text/plain; version=0.0.4"), "{h}");

    // The same daemon scraped by two real Prometheus servers: one asks for native histograms
    // (protobuf), the other reads the text format's classic buckets.
    let native = Prometheus::start_with(&d.addr, &["--enable-feature=native-histograms"]);
    let classic = Prometheus::start(&d.addr);
    let wait = Duration::from_secs(30);
    for p in [&native, &classic] {
        assert_eq!(p.finite("up{job=\"schedlat\"}", wait), 1.0, "target up");
    }
    // Known delays, each in a cgroup of its own, long enough for a few scrapes: two threads
    // sharing CPU 0 (preemption), and a thread blocked in futex 200 times for 20 ms (and in
    // no other futex wait).
    let (cg_spin, cg_futex) = (
        TestCgroup::create("native-spin"),
        TestCgroup::create("native-futex"),
    );
    let mut spin = Workload::start(&["spin", "--threads", "2", "--cpu", "0", "--secs", "6"]);
    let mut futex = Workload::start(&[
        "futex",
        "--timeouts",
        "100",
        "--woken",
        "100",
        "--wait-ms",
        "20",
    ]);
    cg_spin.add(spin.pid);
    cg_futex.add(futex.pid);
    spin.go();
    futex.go();
    let spin_sel = format!("cgroup=\"{}\"", cg_spin.path());
    let futex_sel = format!("cgroup=\"{}\"", cg_futex.path());
    // Stored natively: histogram functions see a count, and there are no _bucket series.
    for (name, sel) in [
        ("schedlat_runqueue_latency_seconds", &spin_sel),
        ("schedlat_futex_wait_seconds", &futex_sel),
    ] {
        // Waits per second, from the native histogram alone.
        native.until(
            &format!("sum(histogram_count(rate({name}{{{sel}}}[30s])))"),
            |n| n > 0.0,
            wait,
        );
        let raw = native.api(&format!(
            "query?query={}",
            encode(&format!("{name}{{{sel}}}"))
        ));
        let first = &raw["result"][0];
        assert!(
            first["histogram"].is_array(),
            "{name} is not a native histogram: {raw}"
        );
        assert!(
            native.query(&format!("{name}_bucket")).is_empty(),
            "{name}: classic buckets stored although native ones came"
        );
    }
    spin.result();
    futex.result();
    // Both servers scrape the final counts (the workloads are done; their cgroup is quiet).
    std::thread::sleep(Duration::from_secs(3));

    // p99 of the same histogram, natively and from the classic buckets (2 per power of two):
    // the native estimate lies inside the classic bucket holding the classic one.
    let per_octave = 2.0f64;
    for (what, native_series, classic_series) in [
        (
            "run-queue, preempted",
            format!("schedlat_runqueue_latency_seconds{{{spin_sel},cause=\"preempted\"}}"),
            format!("schedlat_runqueue_latency_seconds_bucket{{{spin_sel},cause=\"preempted\"}}"),
        ),
        (
            "futex",
            format!("schedlat_futex_wait_seconds{{{futex_sel}}}"),
            format!("schedlat_futex_wait_seconds_bucket{{{futex_sel}}}"),
        ),
    ] {
        for q in [0.5, 0.99] {
            let n = native.finite(&format!("histogram_quantile({q}, {native_series})"), wait);
            let c = classic.finite(&format!("histogram_quantile({q}, {classic_series})"), wait);
            // Classic le are 2^(k/2) s (as integer ns, so a hair below).
            let k = (c.log2() * per_octave).ceil();
            let (lo, hi) = (2f64.powf((k - 1.0) / per_octave), 2f64.powf(k / per_octave));
            eprintln!(
                "figure: {what} p{}: native {:.6} s, classic {:.6} s (classic bucket {lo:.6}..{hi:.6} s)",
                q * 100.0,
                n,
                c
            );
            assert!(
                n >= lo * (1.0 - 1e-6) && n <= hi * (1.0 + 1e-6),
                "{what} p{q}: native {n} s outside the classic bucket {lo}..{hi} s of {c} s"
            );
            if what == "futex" && q == 0.5 {
                // 20 ms waits (timer slack and wake-up on top): the native bucket holding
                // most is 2^(-45/8) s = 20.3 ms or the next, 22.1 ms. (The slowest woken
                // waits also hold the waker's wake-up, which a busy machine stretches: seen
                // 40 ms at p99 under a load of 13 on 2 CPUs.)
                assert!(
                    (0.0185..=0.0221).contains(&n),
                    "futex p{q} {n} s for 20 ms waits"
                );
            }
        }
    }
    assert!(d.stop().success());
}

/// Serves `body` as a Prometheus text exposition to every request on a loopback port until
/// dropped (kube-state-metrics for the tests: it has no state to fake beyond its output).
struct StaticExposition {
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StaticExposition {
    fn start(body: String) -> Self {
        use std::io::{Read as _, Write as _};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut c, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    let _ = c.set_nonblocking(false);
                    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
                    // The request head fits one read for Prometheus; its content is not needed.
                    let mut buf = [0u8; 8192];
                    let _ = c.read(&mut buf);
                    let _ = write!(
                        c,
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            })
        };
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for StaticExposition {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn recording_rules_name_kubernetes_pods_and_containers_of_real_cgroups() {
    if !privileged_or_skip() {
        return;
    }
    // Real cgroups with the kubelet's and the runtimes' path shapes (each under a test root of
    // its own, as a kubelet nested in a node container would be), a spinner in each.
    struct Case {
        shape: &'static str,
        rel: String,
        pod_uid: &'static str,
        container_id: String,
        // kube-state-metrics: namespace, pod, container, runtime prefix of container_id.
        kube: Option<(&'static str, &'static str, &'static str, &'static str)>,
    }
    let hex = |c: char| c.to_string().repeat(64);
    let cases = [
        Case {
            shape: "systemd driver, containerd, burstable",
            rel: format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b4e28ba_2fa1_11d2_883f_0016d3cca427.slice/cri-containerd-{}.scope",
                hex('a')
            ),
            pod_uid: "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
            container_id: hex('a'),
            kube: Some(("shop", "cart-7d9f5", "cart", "containerd")),
        },
        Case {
            shape: "systemd driver, CRI-O, guaranteed",
            rel: format!(
                "kubepods.slice/kubepods-pod2c5f39cb_3fb2_42e3_994f_1127e4ddb538.slice/crio-{}.scope",
                hex('b')
            ),
            pod_uid: "2c5f39cb-3fb2-42e3-994f-1127e4ddb538",
            container_id: hex('b'),
            kube: Some(("db", "postgres-0", "postgres", "cri-o")),
        },
        Case {
            shape: "cgroupfs driver, Docker, besteffort",
            rel: format!(
                "kubepods/besteffort/pod3d6a4adc-40c3-43f4-aa50-2238f5eec649/{}",
                hex('c')
            ),
            pod_uid: "3d6a4adc-40c3-43f4-aa50-2238f5eec649",
            container_id: hex('c'),
            kube: Some(("batch", "report-28391", "report", "docker")),
        },
        Case {
            shape: "Docker outside Kubernetes",
            rel: format!("system.slice/docker-{}.scope", hex('d')),
            pod_uid: "",
            container_id: hex('d'),
            kube: None,
        },
        Case {
            shape: "Podman",
            rel: format!("machine.slice/libpod-{}.scope", hex('e')),
            pod_uid: "",
            container_id: hex('e'),
            kube: None,
        },
    ];
    /// A test root and the cgroups below it, removed leaf first.
    struct Chain(Vec<TestCgroup>);
    impl Drop for Chain {
        fn drop(&mut self) {
            while let Some(c) = self.0.pop() {
                drop(c);
            }
        }
    }
    let mut roots = Vec::new();
    let mut leaves = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let mut chain = Chain(vec![TestCgroup::create(&format!("k8s{i}"))]);
        for name in c.rel.split('/') {
            let next = chain.0.last().unwrap().child(name);
            chain.0.push(next);
        }
        leaves.push(chain.0.last().unwrap().path().to_string());
        roots.push(chain);
    }
    let mut ksm =
        String::from("# HELP kube_pod_info Information about pod.\n# TYPE kube_pod_info gauge\n");
    for c in &cases {
        if let Some((ns, pod, _, _)) = c.kube {
            ksm += &format!(
                "kube_pod_info{{namespace=\"{ns}\",pod=\"{pod}\",uid=\"{}\",host_ip=\"10.0.0.1\",pod_ip=\"10.1.0.7\",node=\"node1\",created_by_kind=\"ReplicaSet\",created_by_name=\"x\",priority_class=\"\",host_network=\"false\"}} 1\n",
                c.pod_uid
            );
        }
    }
    ksm += "# HELP kube_pod_container_info Information about a container in a pod.\n\
            # TYPE kube_pod_container_info gauge\n";
    for c in &cases {
        if let Some((ns, pod, container, runtime)) = c.kube {
            ksm += &format!(
                "kube_pod_container_info{{namespace=\"{ns}\",pod=\"{pod}\",container=\"{container}\",image_spec=\"x\",image=\"x\",image_id=\"x\",container_id=\"{runtime}://{}\"}} 1\n",
                c.container_id
            );
            // A sidecar not started yet: no id, matches no cgroup.
            ksm += &format!(
                "kube_pod_container_info{{namespace=\"{ns}\",pod=\"{pod}\",container=\"sidecar\",image_spec=\"x\",image=\"x\",image_id=\"\",container_id=\"\"}} 1\n"
            );
        }
    }
    let ksm = StaticExposition::start(ksm);

    let d = Daemon::start();
    let prom = Prometheus::start_jobs(
        &d.addr,
        &["--enable-feature=native-histograms"],
        &format!(
            "  - job_name: kube-state-metrics\n    static_configs:\n      - targets: [\"{}\"]\n",
            ksm.addr
        ),
    );
    let mut spins = Vec::new();
    for chain in &roots {
        let w = Workload::start(&["spin", "--threads", "1", "--cpu", "0", "--secs", "8"]);
        chain.0.last().unwrap().add(w.pid);
        spins.push(w);
    }
    for w in &mut spins {
        w.go();
    }
    let wait = Duration::from_secs(30);
    assert_eq!(
        prom.finite("up{job=\"kube-state-metrics\"}", wait),
        1.0,
        "the static kube-state-metrics is scraped"
    );

    // The daemon's own labels, from the path alone.
    let text = get(&d.addr, "/metrics").unwrap();
    for (c, leaf) in cases.iter().zip(&leaves) {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("schedlat_runqueue_latency_seconds_count{")
                    && l.contains(&format!("cgroup=\"{leaf}\""))
            })
            .unwrap_or_else(|| panic!("{}: no series for {leaf}", c.shape));
        let pod_label = format!("pod_uid=\"{}\"", c.pod_uid);
        assert_eq!(
            line.contains(&pod_label),
            !c.pod_uid.is_empty(),
            "{}: {line}",
            c.shape
        );
        assert_eq!(
            c.pod_uid.is_empty(),
            !line.contains("pod_uid="),
            "{}: {line}",
            c.shape
        );
        assert!(
            line.contains(&format!("container_id=\"{}\"", c.container_id)),
            "{}: {line}",
            c.shape
        );
    }

    // The recording rules join them with kube-state-metrics: each cgroup's namespace, pod
    // and container, and the p99s by container.
    for (c, leaf) in cases.iter().zip(&leaves) {
        let q = format!("cgroup:schedlat_kube:info{{cgroup=\"{leaf}\"}}");
        let deadline = Instant::now() + wait;
        let labels = loop {
            let r = prom.query(&q);
            let done = match c.kube {
                Some(_) => r.iter().any(|(m, _)| m["pod"].is_string()),
                None => !r.is_empty(),
            };
            if done {
                break r[0].0.clone();
            }
            assert!(Instant::now() < deadline, "{}: {q} gave {r:?}", c.shape);
            std::thread::sleep(Duration::from_millis(500));
        };
        match c.kube {
            Some((ns, pod, container, _)) => {
                assert_eq!(labels["namespace"], ns, "{}: {labels}", c.shape);
                assert_eq!(labels["pod"], pod, "{}: {labels}", c.shape);
                assert_eq!(labels["container"], container, "{}: {labels}", c.shape);
                let p99 = prom.finite(
                    &format!(
                        "namespace_pod_container:schedlat_runqueue_latency_seconds:p99_5m\
                         {{namespace=\"{ns}\",pod=\"{pod}\",container=\"{container}\"}}"
                    ),
                    wait,
                );
                eprintln!(
                    "figure: {}: {ns}/{pod}/{container} run-queue p99 {p99:.6} s",
                    c.shape
                );
                // Five spinners share CPU 0 on a machine that runs other work: some delay.
                assert!(p99 > 0.0, "{}: p99 {p99}", c.shape);
            }
            None => {
                assert!(
                    labels["pod"].is_null() && labels["namespace"].is_null(),
                    "{}: {labels}",
                    c.shape
                );
                assert_eq!(
                    labels["container_id"],
                    c.container_id.as_str(),
                    "{}: {labels}",
                    c.shape
                );
            }
        }
    }

    // The dashboard's pod variable offers exactly these pods (as Grafana asks with All
    // instances and namespaces).
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/grafana/schedlat-dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let pod_var = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "pod")
        .expect("a pod variable");
    let inner = pod_var["query"]["query"]
        .as_str()
        .unwrap()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(", pod)"))
        .expect("label_values(..., pod)");
    let offered: std::collections::BTreeSet<String> = prom
        .query(&format!("count by (pod) ({})", substitute(inner)))
        .into_iter()
        .filter_map(|(m, _)| m["pod"].as_str().map(str::to_string))
        .collect();
    let want: std::collections::BTreeSet<String> = cases
        .iter()
        .filter_map(|c| c.kube.map(|k| k.1.to_string()))
        .collect();
    assert_eq!(offered, want);

    for w in spins {
        w.result();
    }
    assert!(d.stop().success());
    drop(ksm);
    drop(roots);
}

#[test]
fn series_budget_per_cgroup_in_each_exposition_mode() {
    if !privileged_or_skip() {
        return;
    }
    // N busy cgroups, each with every kind of series: a thread preempted on CPU 0 and
    // futex waits (woken ones make wakeups).
    const N: usize = 4;
    let d = Daemon::start();
    let native = Prometheus::start_with(&d.addr, &["--enable-feature=native-histograms"]);
    let classic = Prometheus::start(&d.addr);
    let wait = Duration::from_secs(30);
    for p in [&native, &classic] {
        assert_eq!(p.finite("up{job=\"schedlat\"}", wait), 1.0, "target up");
    }
    let cgs: Vec<TestCgroup> = (0..N)
        .map(|i| TestCgroup::create(&format!("budget{i}")))
        .collect();
    let mut work = Vec::new();
    for cg in &cgs {
        for args in [
            &["spin", "--threads", "1", "--cpu", "0", "--secs", "3"][..],
            &[
                "futex",
                "--timeouts",
                "20",
                "--woken",
                "20",
                "--wait-ms",
                "20",
            ][..],
        ] {
            let w = Workload::start(args);
            cg.add(w.pid);
            work.push(w);
        }
    }
    for w in &mut work {
        w.go();
    }
    for w in work {
        w.result();
    }
    let re = "/schedlat-test-budget[0-9]+-[0-9]+";
    // Each cgroup's preemption series (schedlat_preemptions_total, one per preempting cgroup
    // kept and `other`), as the daemon has them now that the workloads are done: its spinner
    // was preempted by the other cgroups' on CPU 0.
    let text = get(&d.addr, "/metrics").unwrap();
    let preemption_series = |cg: &str| {
        text.lines()
            .filter(|l| {
                l.starts_with("schedlat_preemptions_total{")
                    && l.contains(&format!("cgroup=\"{cg}\""))
            })
            .count() as f64
    };
    let preempt: std::collections::BTreeMap<String, f64> = cgs
        .iter()
        .map(|cg| (cg.path().to_string(), preemption_series(cg.path())))
        .collect();
    for (cg, n) in &preempt {
        assert!(
            (1.0..=6.0).contains(n),
            "{cg}: {n} preemption series (default preemptors_per_cgroup 5, + other)"
        );
    }
    // Series per cgroup as each server stores them, once every cgroup has all of its own:
    // `base` per busy cgroup plus its preemption series.
    let per_cgroup = |p: &Prometheus, base: f64| -> Vec<f64> {
        let q = format!("count by (cgroup) ({{job=\"schedlat\", cgroup=~\"{re}\"}})");
        let deadline = Instant::now() + wait;
        loop {
            let r = p.query(&q);
            let complete = r.len() == N
                && r.iter().all(|(m, v)| {
                    let cg = m["cgroup"].as_str().unwrap();
                    *v == base + preempt[cg]
                });
            if complete {
                return r.into_iter().map(|(_, v)| v).collect();
            }
            assert!(
                Instant::now() < deadline,
                "{q}: {r:?}, want {base} + the preemption series {preempt:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    // Native: one series per histogram (run-queue woken and preempted, futex) and the
    // wakeups counter. Classic (2 buckets per power of two): 51 finite le, +Inf, _sum and
    // _count per histogram, and wakeups.
    let (n_native, n_classic) = (
        per_cgroup(&native, 4.0),
        per_cgroup(&classic, 3.0 * (51.0 + 3.0) + 1.0),
    );
    // The rest of a node's series: no cgroup label (per CPU, per program, per map, ...).
    let rest = |p: &Prometheus| {
        p.finite(
            "count({job=\"schedlat\", cgroup=\"\", __name__=~\"schedlat_.+\"})",
            wait,
        )
    };
    let (r_native, r_classic) = (rest(&native), rest(&classic));
    let cpus = std::thread::available_parallelism().unwrap().get();
    eprintln!(
        "figure: series per busy cgroup: native {n_native:?}, classic {n_classic:?}; \
         per node without cgroups: native {r_native}, classic {r_classic} ({cpus} CPUs)"
    );
    for n in &n_native {
        assert!(*n <= 15.0, "native budget is 15 per active cgroup: {n}");
    }
    // The protobuf and text answers describe the same series (counted by a third reader,
    // the daemon's own text, for the classic side).
    for cg in &cgs {
        let lines = text
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(&format!("cgroup=\"{}\"", cg.path())))
            .count();
        assert_eq!(
            lines as f64,
            3.0 * (51.0 + 3.0) + 1.0 + preempt[cg.path()],
            "{}",
            cg.path()
        );
    }
    assert_eq!(
        r_native, r_classic,
        "series without a cgroup are the same in both modes"
    );
    assert!(d.stop().success());
}

// ------------------------------------------------------------------------- deploy/grafana

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
        .replace("$namespace", ".*")
        .replace("$container", ".*")
        .replace("$pod", ".*")
        .replace("$cgroup", ".+");
    assert!(!s.contains('$'), "unknown template variable in {expr}");
    s
}

#[test]
fn grafana_dashboard_queries_run_on_a_real_prometheus() {
    if !privileged_or_skip() {
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

    // Each panel query: (panel title, expr, is a Go panel). Queries of cAdvisor's CFS
    // throttling (beside schedlat's, to tell a quota from a neighbour) must run; this
    // Prometheus scrapes no kubelet, so they return nothing.
    let mut queries = Vec::new();
    let mut external = Vec::new();
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
            if names.is_empty() && expr.contains("container_cpu_cfs_throttled_periods_total") {
                external.push((title.to_string(), expr));
                continue;
            }
            assert!(
                !names.is_empty(),
                "panel {title}: no schedlat metric in {expr}"
            );
            let go = names.iter().any(|n| n.starts_with("schedlat_go_"));
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
    assert!(
        queries
            .iter()
            .any(|q| q.3.iter().any(|n| n == "schedlat_preemptions_total")),
        "no noisy-neighbour panel"
    );
    assert!(!external.is_empty(), "no CFS throttling query");
    assert!(queries.iter().any(|q| q.2), "no Go panel");

    // A real Go service (the newest Go: it keeps stop-the-world pause histograms) in a cgroup
    // of its own, read by a real daemon with [go] for that cgroup, under steady requests so
    // its scheduling latency and GC pauses keep growing between scrapes.
    let (_, go_dir) = go_fixture_versions().pop().unwrap();
    let go_cg = TestCgroup::create("grafana-go");
    let server = GoHttpServer::start(&go_dir.join("httpserver"));
    go_cg.add(server.pid);
    // self_cost on: the agent's own-cost panel has series.
    let (d, cfg_dir) = go_daemon_with("schedlat-grafana", &go_cg, "self_cost = true\n", "");
    let stop = Arc::new(AtomicBool::new(false));
    let requests = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, requests, addr) = (stop.clone(), requests.clone(), server.addr.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                get(&addr, "/").expect("the Go server answers");
                requests.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let prom = Prometheus::start(&d.addr);
    // CPU contention in a cgroup of its own, so preempted and woken delay both show up.
    let cg = TestCgroup::create("grafana");
    let mut spin = Workload::start(&["spin", "--threads", "2", "--cpu", "0", "--secs", "12"]);
    cg.add(spin.pid);
    spin.go();
    let wait = Duration::from_secs(30);
    let up = format!("up{{job=\"schedlat\",instance=\"{}\"}}", d.addr);
    assert_eq!(prom.finite(&up, wait), 1.0, "daemon up");

    // Every metric a panel names is one the daemon exports, the Go ones included.
    let exposed = get(&d.addr, "/metrics").unwrap();
    for (title, _, _, names) in &queries {
        for n in names {
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
    // with its error) and returns a series with a finite value: quantiles of histograms that
    // grew in the window, not NaN from idle ones. The Go panels' series are the Go server's.
    let cpus = std::thread::available_parallelism().unwrap().get() as f64;
    for (title, expr, go, _) in &queries {
        let promql = substitute(expr);
        let deadline = Instant::now() + wait;
        let finite = loop {
            let r = prom.query(&promql);
            let finite: Vec<_> = r.iter().filter(|(_, v)| v.is_finite()).cloned().collect();
            if !finite.is_empty() {
                break finite;
            }
            assert!(
                Instant::now() < deadline,
                "panel {title}: {promql} returned no finite value in {wait:?}: {r:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        };
        eprintln!("dashboard: {title}: {finite:?}");
        if expr.contains("schedlat_program_run_seconds_total") {
            // ns per run of each program, by the kernel's accounting: sched_switch ran.
            assert!(
                finite
                    .iter()
                    .any(|(m, v)| m["program"] == "sched_switch" && (1.0..100_000.0).contains(v)),
                "panel {title}: no plausible ns per sched_switch run: {finite:?}"
            );
        }
        if expr.starts_with("sum by (cgroup, by) (rate(schedlat_preemptions_total") {
            // The spinners' two threads share CPU 0: each takes the other's.
            assert!(
                finite
                    .iter()
                    .any(|(m, v)| m["cgroup"] == cg.path() && m["by"] == "self" && *v > 0.0),
                "panel {title}: no preemptions of {} by itself: {finite:?}",
                cg.path()
            );
        }
        if !go {
            continue;
        }
        for (labels, v) in &finite {
            assert_eq!(labels["binary"], "httpserver", "panel {title}: {labels}");
            if !labels["cgroup"].is_null() {
                assert_eq!(labels["cgroup"], go_cg.path(), "panel {title}: {labels}");
            }
            assert!(*v >= 0.0, "panel {title}: {labels} {v}");
        }
        // What each Go panel shows, against what the program is known to be.
        let v = finite[0].1;
        if expr.contains("schedlat_go_gomaxprocs") {
            assert_eq!(v, cpus, "panel {title}: GOMAXPROCS is the CPUs Go sees");
        } else if expr.contains("schedlat_go_goroutines_by_state") {
            // Runnable goroutines of a server under load: some, or none at that instant.
            assert!(
                (0.0..1000.0).contains(&v),
                "panel {title}: runnable goroutines {v}"
            );
        } else if expr.contains("schedlat_go_goroutines") {
            assert!((2.0..1000.0).contains(&v), "panel {title}: goroutines {v}");
        } else if expr.contains("histogram_quantile") {
            // Runnable goroutines wait microseconds to milliseconds; STW pauses likewise.
            assert!(v > 0.0 && v < 1.0, "panel {title}: quantile {v} s");
        } else {
            assert!(v > 0.0, "panel {title}: GC pauses per second {v}");
        }
    }
    for (title, expr) in &external {
        // Parses and runs (else `query` panics with Prometheus' error).
        prom.query(&substitute(expr));
        eprintln!("dashboard: {title}: {expr} runs (no cAdvisor here)");
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    eprintln!(
        "dashboard: {} requests to the Go server",
        requests.load(Ordering::Relaxed)
    );
    spin.result();
    assert!(d.stop().success());
    drop(server);
    std::fs::remove_dir_all(&cfg_dir).unwrap();
}
