//! deploy/: the systemd unit is valid and its capability set is enough; the Kubernetes
//! manifests validate against the API schemas, fit together, and run the daemon with a config
//! it accepts.
use std::{collections::BTreeSet, path::PathBuf, process::Command};

use schedlat_tests::{
    privileged_or_skip, pytools_bin, pytools_python, schedlat_bin, scrape::get, yaml_documents,
};
use serde_json::Value;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn systemd_unit_verifies() {
    // Point the unit at this build's binary and config: verify checks that ExecStart exists.
    let unit = std::fs::read_to_string(repo().join("deploy/schedlat.service")).unwrap();
    let unit = unit
        .replace("/usr/local/bin/schedlat", schedlat_bin().to_str().unwrap())
        .replace(
            "/etc/schedlat/schedlat.toml",
            repo().join("deploy/schedlat.toml").to_str().unwrap(),
        );
    let dir = std::env::temp_dir().join(format!("schedlat-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("schedlat.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !stderr.contains("schedlat.service:"),
        "systemd-analyze verify:\n{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn example_config_is_valid_for_the_daemon() {
    // Every key in deploy/schedlat.toml parses: a bad key would fail start-up with exit 2,
    // before binding. Use a port of our own so the check does not depend on 9725 being free.
    let cfg = std::fs::read_to_string(repo().join("deploy/schedlat.toml")).unwrap();
    assert!(
        cfg.contains("listen = \"127.0.0.1:9725\""),
        "default listen documented"
    );
    let dir = std::env::temp_dir().join(format!("schedlat-cfgex-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    std::fs::write(&path, cfg.replace("127.0.0.1:9725", &addr)).unwrap();
    // The port is held, so a valid config gets exactly as far as binding.
    let out = schedlat_tests::run_schedlat(&["daemon", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already in use"),
        "config rejected before binding:\n{stderr}"
    );
    // The commented-out examples are valid too: `user` resolves and still gets as far as
    // binding; `web_config` pointing at deploy/web.yml parses it and goes on to read its
    // (absent) certificate, named with its path.
    let cfg = cfg.replace("127.0.0.1:9725", &addr);
    assert!(
        cfg.contains("\n# user = \"nobody\"\n"),
        "user example documented"
    );
    std::fs::write(&path, cfg.replace("\n# user = ", "\nuser = ")).unwrap();
    let out = schedlat_tests::run_schedlat(&["daemon", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already in use"),
        "user example rejected:\n{stderr}"
    );
    let example = "\n# web_config = \"/etc/schedlat/web.yml\"\n";
    assert!(cfg.contains(example), "web_config example documented");
    let web = repo().join("deploy/web.yml");
    std::fs::write(
        &path,
        cfg.replace(
            example,
            &format!("\nweb_config = {:?}\n", web.to_str().unwrap()),
        ),
    )
    .unwrap();
    let out = schedlat_tests::run_schedlat(&["daemon", "--config", path.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let cert = repo().join("deploy/tls/server.crt");
    assert!(
        out.status.code() == Some(2) && stderr.contains(cert.to_str().unwrap()),
        "deploy/web.yml: want exit 2 naming {}:\n{stderr}",
        cert.display()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn daemon_works_with_only_cap_bpf_and_cap_perfmon() {
    if !privileged_or_skip("daemon_works_with_only_cap_bpf_and_cap_perfmon") {
        return;
    }
    // What the systemd unit grants (AmbientCapabilities/CapabilityBoundingSet).
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut child = Command::new("setpriv")
        .args([
            "--inh-caps=-all,+bpf,+perfmon",
            "--ambient-caps=+bpf,+perfmon",
            "--bounding-set=-all,+bpf,+perfmon",
            "--",
        ])
        .arg(schedlat_bin())
        .args(["daemon", "--listen", &addr])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let body = loop {
        if let Some(b) = get(&addr, "/metrics") {
            break b;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "daemon exited with only CAP_BPF+CAP_PERFMON"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "daemon not serving within 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .unwrap()
        .trim()
        .to_string();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    // Started with bits 38 (CAP_PERFMON) and 39 (CAP_BPF) only, attached, then dropped them.
    assert_eq!(
        u64::from_str_radix(&cap_eff, 16).unwrap(),
        0,
        "CapEff {cap_eff}"
    );
    assert!(
        body.contains("schedlat_program_attached{program=\"sched_switch\""),
        "{body}"
    );
}

// ------------------------------------------------------------------------- deploy/kubernetes

fn k8s_dir() -> PathBuf {
    repo().join("deploy/kubernetes")
}

/// The manifests kustomization.yaml lists, after checking it lists every manifest in the
/// directory (a file left out would never be applied, nor validated here).
fn k8s_manifests() -> Vec<PathBuf> {
    let kust = yaml_documents(&[k8s_dir().join("kustomization.yaml")]);
    let listed: BTreeSet<String> = kust[0]["resources"]
        .as_array()
        .expect("kustomization.yaml has resources")
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(k8s_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "kustomization.yaml resources vs files");
    listed.iter().map(|n| k8s_dir().join(n)).collect()
}

/// `kubernetes-validate --strict <files>`: (success, stdout+stderr).
fn kubernetes_validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(pytools_bin("kubernetes-validate"))
        .arg("--strict")
        .args(files)
        .output()
        .expect("running kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Checks every ServiceMonitor in `files` against prometheus-operator's CRD schema (the
/// models of cloudcoil-models-prometheus-operator, generated from the CRDs): types and
/// patterns by validation, unknown fields by comparing the document with the model's dump.
/// (success, output).
fn servicemonitor_validate(files: &[PathBuf]) -> (bool, String) {
    let script = r#"
import sys, yaml
from cloudcoil.models.prometheus_operator import v1
failed = False
for f in sys.argv[1:]:
    for d in yaml.safe_load_all(open(f)):
        if not d or d.get("kind") != "ServiceMonitor":
            continue
        try:
            m = v1.ServiceMonitor.model_validate(d)
        except Exception as e:
            print(f"{f}: {e}")
            failed = True
            continue
        back = m.model_dump(mode="json", by_alias=True, exclude_unset=True)
        if back != d:
            print(f"{f}: fields the schema does not know:\n  given  {d}\n  schema {back}")
            failed = True
        else:
            print(f"{f}: ServiceMonitor {m.metadata.name} valid")
sys.exit(1 if failed else 0)
"#;
    let out = pytools_python(script, files);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn kubernetes_manifests_validate_against_the_api_schemas() {
    let files = k8s_manifests();
    let (ok, out) = kubernetes_validate(&files);
    assert!(ok, "kubernetes-validate --strict:\n{out}");
    // Every core resource was checked against its schema (strict: unknown fields rejected).
    // kubernetes-validate has no schema for CRDs: for the ServiceMonitor it only warns, so
    // servicemonitor_validate checks it against the CRD's, and
    // kubernetes_manifests_fit_together checks it selects the Service.
    for doc in yaml_documents(&files) {
        let kind = doc["kind"].as_str().unwrap();
        let name = doc["metadata"]["name"].as_str().unwrap();
        if kind == "ServiceMonitor" {
            assert!(
                out.contains("Couldn't find schema for kind ServiceMonitor"),
                "kubernetes-validate now knows ServiceMonitor? check its result:\n{out}"
            );
            continue;
        }
        let passed = format!("passed for resource {}/{name}", kind.to_lowercase());
        assert!(out.contains(&passed), "no {passed:?} in:\n{out}");
    }
    // The validator rejects what the API server would: a misspelt field and a wrong type.
    let dir = std::env::temp_dir().join(format!("schedlat-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ds = std::fs::read_to_string(k8s_dir().join("daemonset.yaml")).unwrap();
    for (from, to, expect) in [
        ("hostPID: true", "hostPId: true", "'hostPId' was unexpected"),
        (
            "containerPort: 9725",
            "containerPort: \"9725\"",
            "is not of type 'integer'",
        ),
    ] {
        assert!(ds.contains(from), "daemonset.yaml lost {from:?}");
        let bad = dir.join("daemonset.yaml");
        std::fs::write(&bad, ds.replace(from, to)).unwrap();
        let (ok, out) = kubernetes_validate(&[bad]);
        assert!(!ok && out.contains(expect), "{to:?} accepted:\n{out}");
    }
    let (ok, out) = servicemonitor_validate(&files);
    assert!(
        ok && out.contains("ServiceMonitor schedlat valid"),
        "ServiceMonitor against the prometheus-operator CRD:\n{out}"
    );
    let sm = std::fs::read_to_string(k8s_dir().join("servicemonitor.yaml")).unwrap();
    for (from, to, expect) in [
        (
            "targetLabel:",
            "targetLabell:",
            "fields the schema does not know",
        ),
        ("interval: 15s", "interval: fifteen", "should match pattern"),
    ] {
        assert!(sm.contains(from), "servicemonitor.yaml lost {from:?}");
        let bad = dir.join("servicemonitor.yaml");
        std::fs::write(&bad, sm.replace(from, to)).unwrap();
        let (ok, out) = servicemonitor_validate(&[bad]);
        assert!(!ok && out.contains(expect), "{to:?} accepted:\n{out}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The one document of `kind` among `docs`.
fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let mut it = docs.iter().filter(|d| d["kind"] == kind);
    let d = it
        .next()
        .unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"));
    assert!(it.next().is_none(), "more than one {kind}");
    d
}

/// `sub`'s key/value pairs all appear in `labels` (a label selector matching).
fn selects(sub: &Value, labels: &Value) -> bool {
    let sub = sub.as_object().expect("selector is a map");
    !sub.is_empty() && sub.iter().all(|(k, v)| labels[k] == *v)
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap()).collect())
        .unwrap_or_default()
}

#[test]
fn kubernetes_manifests_fit_together() {
    let docs = yaml_documents(&k8s_manifests());
    let ns = one(&docs, "Namespace")["metadata"]["name"]
        .as_str()
        .unwrap();
    for d in docs.iter().filter(|d| d["kind"] != "Namespace") {
        assert_eq!(
            d["metadata"]["namespace"], ns,
            "{} {} not in namespace {ns}",
            d["kind"], d["metadata"]["name"]
        );
    }
    let ds = one(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"];
    let spec = &pod["spec"];
    assert!(selects(
        &ds["spec"]["selector"]["matchLabels"],
        &pod["metadata"]["labels"]
    ));
    assert_eq!(spec["hostPID"], true);
    assert_eq!(
        spec["serviceAccountName"],
        one(&docs, "ServiceAccount")["metadata"]["name"]
    );
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    // Least privilege: not privileged, every capability dropped but BPF and PERFMON.
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true, "privileged container");
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    let mut add = strings(&sc["capabilities"]["add"]);
    add.sort();
    assert_eq!(add, ["BPF", "PERFMON"], "capabilities beyond eBPF tracing");

    // Host paths the daemon reads, mounted read-only at the same place.
    let volumes = spec["volumes"].as_array().unwrap();
    let mount_of = |path: &str| {
        c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("no volumeMount at {path}"))
    };
    for path in ["/sys/kernel/btf", "/sys/kernel/tracing", "/sys/fs/cgroup"] {
        let m = mount_of(path);
        assert_eq!(m["readOnly"], true, "{path} mounted writable");
        let v = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .unwrap_or_else(|| panic!("no volume {} for {path}", m["name"]));
        assert_eq!(v["hostPath"]["path"], path, "volume for {path}");
    }

    // Requests and limits for CPU and memory.
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                c["resources"][kind][res].is_string(),
                "resources.{kind}.{res} unset"
            );
        }
    }

    // Probes hit /healthz on the named metrics port.
    let ports = c["ports"].as_array().unwrap();
    let metrics = ports
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a container port named metrics");
    let container_port = metrics["containerPort"].as_u64().unwrap();
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], "/healthz", "{probe}");
        assert!(
            get["port"] == "metrics" || get["port"] == container_port,
            "{probe} port {}",
            get["port"]
        );
    }

    // The config file the args name is the ConfigMap's key, mounted where the args look.
    let cm = one(&docs, "ConfigMap");
    let args = strings(&c["args"]);
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let (dir, key) = config_path.rsplit_once('/').unwrap();
    let m = mount_of(dir);
    let v = volumes.iter().find(|v| v["name"] == m["name"]).unwrap();
    assert_eq!(v["configMap"]["name"], cm["metadata"]["name"]);
    assert!(cm["data"][key].is_string(), "ConfigMap has no {key}");

    // The Service selects the daemon's pods and exposes the container's metrics port.
    let svc = one(&docs, "Service");
    assert!(selects(
        &svc["spec"]["selector"],
        &pod["metadata"]["labels"]
    ));
    let svc_ports = svc["spec"]["ports"].as_array().unwrap();
    let sp = svc_ports
        .iter()
        .find(|p| p["name"] == "metrics")
        .expect("a Service port named metrics");
    assert!(sp["targetPort"] == "metrics" || sp["targetPort"] == container_port);
    let ann = &svc["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(
        ann["prometheus.io/port"],
        sp["port"].as_u64().unwrap().to_string()
    );
    assert_eq!(ann["prometheus.io/path"], "/metrics");

    // The ServiceMonitor (a CRD, not schema-checked) selects that Service by its labels and
    // scrapes a port the Service has, by name.
    let sm = one(&docs, "ServiceMonitor");
    assert_eq!(sm["apiVersion"], "monitoring.coreos.com/v1");
    assert!(selects(
        &sm["spec"]["selector"]["matchLabels"],
        &svc["metadata"]["labels"]
    ));
    assert!(strings(&sm["spec"]["namespaceSelector"]["matchNames"]).contains(&ns));
    let endpoints = sm["spec"]["endpoints"].as_array().unwrap();
    assert!(!endpoints.is_empty());
    for e in endpoints {
        let port = e["port"].as_str().expect("endpoint port by name");
        assert!(
            svc_ports.iter().any(|p| p["name"] == port),
            "ServiceMonitor port {port} not on the Service"
        );
        assert_eq!(e["path"], "/metrics");
    }
}

#[test]
fn kubernetes_container_args_and_config_are_accepted_by_the_daemon() {
    let docs = yaml_documents(&k8s_manifests());
    let c = &one(&docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    let cfg = one(&docs, "ConfigMap")["data"]["schedlat.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let port = c["ports"][0]["containerPort"].as_u64().unwrap();
    // Reachable from other pods, on the port the pod declares.
    let listen = format!("listen = \"0.0.0.0:{port}\"");
    assert!(cfg.contains(&listen), "ConfigMap lacks {listen}");
    assert_eq!(
        c["command"][0].as_str().unwrap().rsplit('/').next(),
        Some("schedlat")
    );

    // Run the real binary with the container's args, the config path pointing at the
    // ConfigMap's text. Its port is held here, so a config and args the daemon accepts get
    // exactly as far as binding (before loading any program: no root needed).
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let held = taken.local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("schedlat-k8scfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("schedlat.toml");
    std::fs::write(
        &path,
        cfg.replace(&format!("0.0.0.0:{port}"), &format!("0.0.0.0:{held}")),
    )
    .unwrap();
    let args: Vec<String> = strings(&c["args"])
        .into_iter()
        .map(|a| {
            if a.ends_with("/schedlat.toml") {
                path.to_str().unwrap().to_string()
            } else {
                a.to_string()
            }
        })
        .collect();
    assert!(args.iter().any(|a| a == path.to_str().unwrap()), "{args:?}");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = schedlat_tests::run_schedlat(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("0.0.0.0:{held} is already in use")),
        "container args {args:?} or ConfigMap config rejected before binding:\n{stderr}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A mount and cgroup namespace laid out as the DaemonSet's container sees it: the runtime's
/// namespaced cgroup2 at /sys/fs/cgroup with the host's hierarchy bind-mounted read-only over
/// it, tracefs and BTF read-only, only CAP_BPF + CAP_PERFMON, the ConfigMap's config. The
/// daemon must attach there and label a host cgroup by its host path.
#[test]
fn daemon_runs_in_the_daemonset_container_layout() {
    if !privileged_or_skip("daemon_runs_in_the_daemonset_container_layout") {
        return;
    }
    let docs = yaml_documents(&k8s_manifests());
    let cfg = one(&docs, "ConfigMap")["data"]["schedlat.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("schedlat-k8sns-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("host-cgroup")).unwrap();
    let cfg_path = dir.join("schedlat.toml");
    std::fs::write(
        &cfg_path,
        cfg.replace("0.0.0.0:9725", &format!("0.0.0.0:{port}")),
    )
    .unwrap();
    // The runtime's own (namespaced) cgroup2 goes first; the hostPath volume is a recursive
    // bind (as CRI runtimes mount them), so on a hybrid v1/v2 host it brings the v2 hierarchy
    // at /sys/fs/cgroup/unified along. Private propagation: nothing reaches the host.
    let script = r#"
        mount --rbind /sys/fs/cgroup "$1"
        mount -t cgroup2 cgroup2 /sys/fs/cgroup
        mount --rbind "$1" /sys/fs/cgroup
        for p in /sys/fs/cgroup /sys/fs/cgroup/unified; do
            if mountpoint -q "$p"; then mount -o remount,bind,ro "$p"; fi
        done
        for p in /sys/kernel/tracing /sys/kernel/btf; do
            mount --bind "$p" "$p"
            mount -o remount,bind,ro "$p"
        done
        exec setpriv --inh-caps=-all,+bpf,+perfmon --ambient-caps=+bpf,+perfmon \
            --bounding-set=-all,+bpf,+perfmon -- "$2" daemon --config "$3"
    "#;
    let mut child = Command::new("unshare")
        .args(["--mount", "--cgroup", "--propagation", "private", "--"])
        .args(["sh", "-ec", script, "sh"])
        .arg(dir.join("host-cgroup"))
        .arg(schedlat_bin())
        .arg(&cfg_path)
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let cg = schedlat_tests::TestCgroup::create("k8sns");
    let mut spin =
        schedlat_tests::Workload::start(&["spin", "--threads", "2", "--cpu", "0", "--secs", "3"]);
    cg.add(spin.pid);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while get(&addr, "/healthz").is_none() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "daemon exited in the container layout"
        );
        assert!(std::time::Instant::now() < deadline, "no /healthz in 30 s");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // It really is in a cgroup namespace of its own, so its own view of /sys/fs/cgroup would
    // not show the workload's cgroup: only the host hierarchy mounted over it does.
    let ns = |pid: String| std::fs::read_link(format!("/proc/{pid}/ns/cgroup")).unwrap();
    assert_ne!(ns(child.id().to_string()), ns("self".into()));
    spin.go();
    spin.result();
    let series = format!(
        "schedlat_runqueue_latency_seconds_count{{cgroup=\"{}\",cause=\"preempted\"}} ",
        cg.path()
    );
    let body = get(&addr, "/metrics").unwrap();
    let count = body
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.parse::<f64>().unwrap());
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        count.is_some_and(|c| c > 10.0),
        "host cgroup {} not labelled by its host path: {count:?}\n{}",
        cg.path(),
        body.lines()
            .filter(|l| l.starts_with("schedlat_runqueue_latency_seconds_count"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(
        status.lines().any(|l| l == "CapEff:\t0000000000000000"),
        "capabilities kept after attaching:\n{status}"
    );
}

#[test]
fn user_switch_under_the_units_capabilities_fails_early_and_says_what_to_add() {
    if !privileged_or_skip(
        "user_switch_under_the_units_capabilities_fails_early_and_says_what_to_add",
    ) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("schedlat-unituser-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, "user = \"nobody\"\n").unwrap();
    // Root with the unit's bounding set: CAP_SETUID/CAP_SETGID are out of reach.
    let out = Command::new("setpriv")
        .args(["--bounding-set=-all,+bpf,+perfmon", "--"])
        .arg(schedlat_bin())
        .args([
            "daemon",
            "--listen",
            "127.0.0.1:0",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("nobody")
            && stderr.contains("CAP_SETUID and CAP_SETGID")
            && stderr.contains("CapabilityBoundingSet"),
        "{stderr}"
    );
    // Refused before attaching: nothing was loaded.
    assert!(!stderr.contains("attached"), "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}
