//! deploy/: the systemd unit is valid and its capability set is enough; the Kubernetes
//! manifests validate against the API schemas, fit together, and run the daemon with a config
//! it accepts; the container image `cargo xtask image` builds runs the daemon as the DaemonSet
//! does.
use std::{collections::BTreeSet, path::PathBuf, process::Command};

use schedlat_tests::{
    TempDir, privileged_or_skip, pytools_bin, pytools_python, schedlat_bin, scrape::get,
    yaml_documents,
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
    let dir = TempDir::new("unit");
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
    let dir = TempDir::new("cfgex");
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
}

/// The values of `key=` lines in the shipped unit, split on whitespace.
fn unit_values(key: &str) -> Vec<String> {
    let unit = std::fs::read_to_string(repo().join("deploy/schedlat.service")).unwrap();
    unit.lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace().map(String::from))
        .collect()
}

/// A capability set (as /proc/PID/status prints it) of `CAP_*` names.
fn cap_mask(names: &[String]) -> u64 {
    names.iter().fold(0, |m, n| {
        m | 1 << cap_number(n.strip_prefix("CAP_").unwrap_or(n))
    })
}

/// `systemd-analyze security` rates the shipped unit 3.0 or lower (it was 5.8 MEDIUM with
/// root, no device, kernel or syscall restrictions). Offline: no running systemd needed.
#[test]
fn systemd_unit_is_rated_3_or_lower_by_systemd_analyze_security() {
    let dir = TempDir::new("unitsec");
    let path = dir.join("schedlat.service");
    std::fs::copy(repo().join("deploy/schedlat.service"), &path).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian's systemd package; `cargo xtask setup` installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let score: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for schedlat.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no overall exposure in systemd-analyze security:\n{text}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    eprintln!("systemd-analyze security: {score}");
    assert!(
        score <= 3.0,
        "deploy/schedlat.service is rated {score} (want <= 3.0):\n{text}"
    );
}

/// What the unit grants, outside systemd: a user that is not root, with the unit's ambient
/// capabilities. The daemon attaches, drops them all and serves.
#[test]
fn daemon_works_as_a_non_root_user_with_the_units_ambient_capabilities() {
    if !privileged_or_skip() {
        return;
    }
    let caps: Vec<String> = unit_values("AmbientCapabilities")
        .iter()
        .map(|c| format!("+{}", c.strip_prefix("CAP_").unwrap().to_lowercase()))
        .collect();
    assert_eq!(
        unit_values("CapabilityBoundingSet"),
        unit_values("AmbientCapabilities")
    );
    let caps = caps.join(",");
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let mut child = Command::new("setpriv")
        .args([
            "--reuid=61999",
            "--regid=61999",
            "--clear-groups",
            &format!("--inh-caps=-all,{caps}"),
            &format!("--ambient-caps={caps}"),
            &format!("--bounding-set=-all,{caps}"),
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
            "daemon exited as uid 61999 with {caps}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "daemon not serving within 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let field = |f: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(f))
            .unwrap()
            .trim()
            .to_string()
    };
    // Stayed the user it was started as, attached, then dropped every capability.
    assert_eq!(field("Uid:"), "61999\t61999\t61999\t61999", "{status}");
    for set in ["CapEff:", "CapPrm:", "CapAmb:"] {
        assert_eq!(u64::from_str_radix(&field(set), 16).unwrap(), 0, "{status}");
    }
    assert_eq!(field("Seccomp:"), "2", "{status}");
    assert!(
        body.contains("schedlat_program_attached{program=\"sched_switch\""),
        "{body}"
    );
}

/// The cgroup2 mount point and, on hybrid hosts, the name=systemd v1 one.
fn cgroup_mounts() -> (PathBuf, Option<PathBuf>) {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut v2 = None;
    let mut v1 = None;
    for l in mountinfo.lines() {
        let Some((left, right)) = l.split_once(" - ") else {
            continue;
        };
        let point = left.split_whitespace().nth(4).unwrap();
        let mut r = right.split_whitespace();
        match (r.next(), r.nth(1)) {
            (Some("cgroup2"), _) => v2 = v2.or(Some(PathBuf::from(point))),
            (Some("cgroup"), Some(opts)) if opts.split(',').any(|o| o == "name=systemd") => {
                v1 = Some(PathBuf::from(point))
            }
            _ => {}
        }
    }
    (v2.expect("a cgroup2 mount"), v1)
}

/// Remove `dir` and every cgroup below it, deepest first, retrying while processes exit.
fn remove_cgroup_tree(dir: &std::path::Path) {
    for _ in 0..100 {
        let mut dirs = vec![];
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(e.path());
                    }
                }
            }
            dirs.push(d);
        }
        for d in dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        if !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    panic!("cgroup {} still exists", dir.display());
}

/// deploy/schedlat.service, run by systemd itself: systemd as PID 1 of a pid, mount and cgroup
/// namespace of its own (this machine's init is not systemd, so systemd-run has no manager to
/// ask), with the unit as shipped: only ExecStart's binary and config paths point at this
/// build, and a drop-in says `DefaultDependencies=no` (boot nothing else of the host) and
/// where stdout goes (no journald there). Every sandboxing property is applied by systemd:
/// DynamicUser, the capability sets, ProtectSystem..., SystemCallFilter. The daemon must
/// attach, serve a workload's run-queue delay under its cgroup, and run as a non-root user
/// with no capability left, no_new_privs and seccomp in every thread.
#[test]
fn the_unit_runs_the_daemon_under_systemd() {
    if !privileged_or_skip() {
        return;
    }
    let name = format!("schedlat-systemd-{}", std::process::id());
    let dir = TempDir::new("systemd");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let unit = std::fs::read_to_string(repo().join("deploy/schedlat.service")).unwrap();
    assert!(
        unit.contains(
            "ExecStart=/usr/local/bin/schedlat daemon --config /etc/schedlat/schedlat.toml"
        )
    );
    // The binary goes to /run inside, like the config: the unit's PrivateTmp and ProtectHome
    // would hide it where the tests found it (a clone under /tmp or /root).
    std::fs::copy(schedlat_bin(), dir.join("schedlat")).unwrap();
    let unit = unit
        .replace("/usr/local/bin/schedlat", "/run/schedlat-test/schedlat")
        .replace(
            "/etc/schedlat/schedlat.toml",
            "/run/schedlat-test/schedlat.toml",
        );
    std::fs::write(dir.join("schedlat.service"), unit).unwrap();
    std::fs::write(
        dir.join("test.conf"),
        "[Unit]\nDefaultDependencies=no\n[Service]\n\
         StandardOutput=append:/run/schedlat-test/daemon.log\nStandardError=inherit\n",
    )
    .unwrap();
    let cfg = std::fs::read_to_string(repo().join("deploy/schedlat.toml")).unwrap();
    std::fs::write(
        dir.join("schedlat.toml"),
        cfg.replace("127.0.0.1:9725", &format!("127.0.0.1:{port}")),
    )
    .unwrap();
    let (v2, v1) = cgroup_mounts();
    let v2_dir = v2.join(&name);
    let v1_dir = v1.as_ref().map(|m| m.join(&name));
    std::fs::create_dir_all(&v2_dir).unwrap();
    if let Some(d) = &v1_dir {
        std::fs::create_dir_all(d).unwrap();
    }
    // The cgroup hierarchy inside is the host's as seen from the new cgroup namespace (its
    // root is v2_dir), laid out as on the host: cgroup2 alone, or hybrid.
    let cgroups = match &v1 {
        None => format!("mount -t cgroup2 cgroup2 {}", v2.display()),
        Some(v1m) => format!(
            "mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup\n\
             mkdir -p {v2m} {v1m}\n\
             mount -t cgroup2 cgroup2 {v2m}\n\
             mount -t cgroup -o none,name=systemd cgroup {v1m}",
            v2m = v2.display(),
            v1m = v1m.display()
        ),
    };
    let inner = format!(
        r#"
        mount -t tmpfs tmpfs /run
        mkdir -p /run/systemd/system/schedlat.service.d /run/schedlat-test
        cp "$1/schedlat.service" /run/systemd/system/
        cp "$1/test.conf" /run/systemd/system/schedlat.service.d/
        cp "$1/schedlat.toml" "$1/schedlat" /run/schedlat-test/
        # PrivateTmp= directories, and nothing else, land here, not on the host.
        mount -t tmpfs tmpfs /tmp
        mount -t tmpfs tmpfs /var/tmp
        {cgroups}
        # Nothing in here may change the host's sysctls.
        mount --bind /proc/sys /proc/sys
        mount -o remount,bind,ro /proc/sys
        export container=schedlat-test
        exec /lib/systemd/systemd --unit=schedlat.service --log-target=console
        "#
    );
    let outer = format!(
        "echo $$ > {}/cgroup.procs\n{}\nexec unshare --pid --fork --kill-child --mount --cgroup \
         --propagation private --mount-proc sh -ec '{}' sh \"$1\"",
        v2_dir.display(),
        v1_dir
            .as_ref()
            .map(|d| format!("echo $$ > {}/cgroup.procs", d.display()))
            .unwrap_or_default(),
        inner.replace('\'', "'\\''")
    );
    let log = dir.join("systemd.log");
    let mut systemd = Command::new("sh")
        .args(["-ec", &outer, "sh"])
        .arg(&*dir)
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("systemd.err")).unwrap())
        .spawn()
        .unwrap();
    // PID 1 inside is the one process of init.scope; the daemon is in the unit's cgroup.
    let procs = |rel: &str| -> Vec<u32> {
        std::fs::read_to_string(v2_dir.join(rel).join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.parse().ok())
            .collect()
    };
    let daemon_log = || {
        procs("init.scope")
            .first()
            .and_then(|p| {
                std::fs::read_to_string(format!("/proc/{p}/root/run/schedlat-test/daemon.log")).ok()
            })
            .unwrap_or_default()
    };
    let addr = format!("127.0.0.1:{port}");
    let workload = v2_dir.join("workload");
    std::fs::create_dir_all(&workload).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let pid = loop {
        if let (Some(_), Some(&pid)) = (
            get(&addr, "/healthz"),
            procs("system.slice/schedlat.service").first(),
        ) {
            break pid;
        }
        if let Some(st) = systemd.try_wait().unwrap() {
            panic!(
                "systemd exited ({st}):\n{}{}",
                std::fs::read_to_string(&log).unwrap(),
                std::fs::read_to_string(dir.join("systemd.err")).unwrap()
            );
        }
        if std::time::Instant::now() > deadline {
            let dlog = daemon_log();
            let _ = systemd.kill();
            let _ = systemd.wait();
            remove_cgroup_tree(&v2_dir);
            if let Some(d) = &v1_dir {
                remove_cgroup_tree(d);
            }
            panic!(
                "the unit's daemon not serving within 60 s; systemd:\n{}\ndaemon:\n{dlog}",
                std::fs::read_to_string(&log).unwrap(),
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let mut spin =
        schedlat_tests::Workload::start(&["spin", "--threads", "2", "--cpu", "0", "--secs", "1"]);
    std::fs::write(workload.join("cgroup.procs"), spin.pid.to_string()).unwrap();
    spin.go();
    spin.result();
    let body = get(&addr, "/metrics").unwrap_or_default();
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
        .map(|t| std::fs::read_to_string(t.path().join("status")).unwrap())
        .collect();
    let dlog = daemon_log();
    let _ = systemd.kill();
    let _ = systemd.wait();
    remove_cgroup_tree(&v2_dir);
    if let Some(d) = &v1_dir {
        remove_cgroup_tree(d);
    }
    drop(dir);

    assert!(
        dlog.contains("seccomp filter installed"),
        "daemon log:\n{dlog}"
    );
    // Labels are paths in the daemon's view: the cgroup namespace's root is v2_dir.
    let series =
        "schedlat_runqueue_latency_seconds_count{cgroup=\"/workload\",cause=\"preempted\"} ";
    let n: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .unwrap_or_else(|| panic!("no {series}in the unit's daemon's metrics:\n{body}\n{dlog}"))
        .parse()
        .unwrap();
    assert!(n > 10.0, "{series}{n}");
    let bounding = cap_mask(&unit_values("CapabilityBoundingSet"));
    assert!(threads.len() >= 3, "{} threads", threads.len());
    for status in &threads {
        let field = |f: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(f))
                .unwrap_or_else(|| panic!("no {f} in {status}"))
                .trim()
                .to_string()
        };
        // DynamicUser: one uid of systemd's range (61184-65519), never root.
        let uids: Vec<u32> = field("Uid:")
            .split_whitespace()
            .map(|u| u.parse().unwrap())
            .collect();
        assert!(
            uids.iter()
                .all(|&u| u == uids[0] && (61184..=65519).contains(&u)),
            "{status}"
        );
        for set in ["CapEff:", "CapPrm:", "CapInh:", "CapAmb:"] {
            assert_eq!(u64::from_str_radix(&field(set), 16).unwrap(), 0, "{status}");
        }
        assert_eq!(
            u64::from_str_radix(&field("CapBnd:"), 16).unwrap(),
            bounding,
            "{status}"
        );
        assert_eq!(field("NoNewPrivs:"), "1", "{status}");
        assert_eq!(field("Seccomp:"), "2", "{status}");
    }
    eprintln!(
        "under systemd: {series}{n}; {}",
        threads[0].lines().find(|l| l.starts_with("Uid:")).unwrap()
    );
}

// ------------------------------------------------------------------------- deploy/kubernetes

/// The base manifests (deploy/kubernetes builds just them; go/ is the [go] overlay).
fn k8s_dir() -> PathBuf {
    repo().join("deploy/kubernetes/base")
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

/// `kubectl kustomize` of deploy/kubernetes (`overlay` "") or of an overlay under it ("go"):
/// what `kubectl apply -k` would send, written to a file; (that file, its documents).
fn kustomize(overlay: &str) -> (PathBuf, Vec<Value>) {
    let dir = repo().join("deploy/kubernetes").join(overlay);
    let out = Command::new(pytools_bin("kubectl"))
        .arg("kustomize")
        .arg(&dir)
        .output()
        .expect("running kubectl kustomize");
    assert!(
        out.status.success(),
        "kubectl kustomize {}:\n{}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let path = std::env::temp_dir().join(format!(
        "schedlat-kustomize-{}-{}.yaml",
        if overlay.is_empty() { "base" } else { overlay },
        std::process::id()
    ));
    std::fs::write(&path, &out.stdout).unwrap();
    let docs = yaml_documents(std::slice::from_ref(&path));
    (path, docs)
}

/// The two ways to deploy: the base, and the [go] overlay (hostPID, SYS_PTRACE, [go]).
const VARIANTS: [(&str, bool); 2] = [("", false), ("go", true)];

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
    let dir = TempDir::new("k8s");
    let ds = std::fs::read_to_string(k8s_dir().join("daemonset.yaml")).unwrap();
    for (from, to, expect) in [
        (
            "hostPID: false",
            "hostPId: false",
            "'hostPId' was unexpected",
        ),
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
    // What kustomize makes of the base and of the [go] overlay validates too.
    for (overlay, _) in VARIANTS {
        let (rendered, _) = kustomize(overlay);
        let (ok, out) = kubernetes_validate(std::slice::from_ref(&rendered));
        std::fs::remove_file(&rendered).unwrap();
        assert!(
            ok && out.contains("passed for resource daemonset/schedlat")
                && out.contains("passed for resource configmap/schedlat-config"),
            "kubernetes-validate --strict of kustomize {overlay:?}:\n{out}"
        );
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
    // deploy/kubernetes is the base and nothing else.
    let top = yaml_documents(&[repo().join("deploy/kubernetes/kustomization.yaml")]);
    assert_eq!(strings(&top[0]["resources"]), ["base"]);
    // The files as they are, then what kustomize renders of the base and of the overlay.
    manifests_fit_together(&yaml_documents(&k8s_manifests()), false);
    let mut configs = vec![];
    for (overlay, go) in VARIANTS {
        let (rendered, docs) = kustomize(overlay);
        std::fs::remove_file(&rendered).unwrap();
        manifests_fit_together(&docs, go);
        configs.push(
            one(&docs, "ConfigMap")["data"]["schedlat.toml"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    // The overlay's config is the base's plus a [go] section (a patch replaces the whole
    // key, so the overlay repeats the base's text: it must not drift).
    let (base, go) = (&configs[0], &configs[1]);
    let extra = go.strip_prefix(base.as_str()).unwrap_or_else(|| {
        panic!("go/configmap-go.yaml is not the base's config plus [go]:\n{go}")
    });
    assert!(extra.contains("\n[go]\nenabled = true\n"), "{extra}");
    assert!(!base.contains("[go]"), "{base}");
}

/// `docs` (one deployment's manifests) are consistent; `go`: the [go] overlay's.
fn manifests_fit_together(docs: &[Value], go: bool) {
    let ns = one(docs, "Namespace")["metadata"]["name"].as_str().unwrap();
    for d in docs.iter().filter(|d| d["kind"] != "Namespace") {
        assert_eq!(
            d["metadata"]["namespace"], ns,
            "{} {} not in namespace {ns}",
            d["kind"], d["metadata"]["name"]
        );
    }
    let ds = one(docs, "DaemonSet");
    let pod = &ds["spec"]["template"];
    let spec = &pod["spec"];
    assert!(selects(
        &ds["spec"]["selector"]["matchLabels"],
        &pod["metadata"]["labels"]
    ));
    // The host's pid namespace only for [go]: without it the daemon cannot see, nor signal,
    // the node's processes.
    assert_eq!(spec["hostPID"], go, "hostPID");
    assert_eq!(
        spec["serviceAccountName"],
        one(docs, "ServiceAccount")["metadata"]["name"]
    );
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    // Least privilege: not privileged, every capability dropped but BPF and PERFMON (to
    // attach) and SETUID, SETGID (to leave root after it); SYS_PTRACE only for [go].
    let sc = &c["securityContext"];
    assert_ne!(sc["privileged"], true, "privileged container");
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    let mut add = strings(&sc["capabilities"]["add"]);
    add.sort();
    let mut want = vec!["BPF", "PERFMON", "SETGID", "SETUID"];
    if go {
        want.push("SYS_PTRACE");
    }
    assert_eq!(add, want, "capabilities");
    let cfg = one(docs, "ConfigMap")["data"]["schedlat.toml"]
        .as_str()
        .unwrap();
    assert_eq!(cfg.contains("[go]\nenabled = true"), go, "{cfg}");
    // The daemon leaves root for a uid of its own, not root and not the shared nobody.
    assert!(cfg.contains("\nuser = \"9725\"\n"), "{cfg}");

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
    let cm = one(docs, "ConfigMap");
    let args = strings(&c["args"]);
    let config_path = args[args.iter().position(|a| *a == "--config").unwrap() + 1];
    let (dir, key) = config_path.rsplit_once('/').unwrap();
    let m = mount_of(dir);
    let v = volumes.iter().find(|v| v["name"] == m["name"]).unwrap();
    assert_eq!(v["configMap"]["name"], cm["metadata"]["name"]);
    assert!(cm["data"][key].is_string(), "ConfigMap has no {key}");

    // The Service selects the daemon's pods and exposes the container's metrics port.
    let svc = one(docs, "Service");
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
    let sm = one(docs, "ServiceMonitor");
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
    for (overlay, _) in VARIANTS {
        let (rendered, docs) = kustomize(overlay);
        std::fs::remove_file(&rendered).unwrap();
        container_args_and_config_are_accepted(&docs);
    }
}

fn container_args_and_config_are_accepted(docs: &[Value]) {
    let c = &one(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0];
    let cfg = one(docs, "ConfigMap")["data"]["schedlat.toml"]
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
    let dir = TempDir::new("k8scfg");
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
}

/// A mount and cgroup namespace laid out as the DaemonSet's container sees it: the runtime's
/// namespaced cgroup2 at /sys/fs/cgroup with the host's hierarchy bind-mounted read-only over
/// it, tracefs and BTF read-only, only CAP_BPF + CAP_PERFMON, the ConfigMap's config. The
/// daemon must attach there and label a host cgroup by its host path.
#[test]
fn daemon_runs_in_the_daemonset_container_layout() {
    if !privileged_or_skip() {
        return;
    }
    let docs = yaml_documents(&k8s_manifests());
    let cfg = one(&docs, "ConfigMap")["data"]["schedlat.toml"]
        .as_str()
        .unwrap()
        .to_string();
    let pod = &one(&docs, "DaemonSet")["spec"]["template"]["spec"];
    // The container's capabilities, as setpriv takes them: +bpf,+perfmon,...
    let caps = strings(&pod["containers"][0]["securityContext"]["capabilities"]["add"])
        .iter()
        .map(|c| format!("+{}", c.to_lowercase()))
        .collect::<Vec<_>>()
        .join(",");
    // Without hostPID the pod has a pid namespace of its own, with its own /proc.
    let pid_ns = if pod["hostPID"] == true {
        ""
    } else {
        "--pid --fork --mount-proc"
    };
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = TempDir::new("k8sns");
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
        exec setpriv --inh-caps=-all,$4 --ambient-caps=$4 \
            --bounding-set=-all,$4 -- "$2" daemon --config "$3"
    "#;
    let mut child = Command::new("unshare")
        .args(["--mount", "--cgroup", "--propagation", "private"])
        .args(pid_ns.split_whitespace())
        .args(["--", "sh", "-ec", script, "sh"])
        .arg(dir.join("host-cgroup"))
        .arg(schedlat_bin())
        .arg(&cfg_path)
        .arg(&caps)
        .spawn()
        .unwrap();
    // With a pid namespace, the daemon is the child of the namespace's init (unshare's fork).
    let unshare_pid = child.id();
    let daemon_pid = || -> u32 {
        if pid_ns.is_empty() {
            return unshare_pid;
        }
        let children = |p: u32| -> Vec<u32> {
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .map(|c| c.parse().unwrap())
                .collect()
        };
        children(unshare_pid)
            .first()
            .copied()
            .unwrap_or(unshare_pid)
    };
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
    let daemon = daemon_pid();
    let ns =
        |kind: &str, pid: String| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    assert_ne!(
        ns("cgroup", daemon.to_string()),
        ns("cgroup", "self".into())
    );
    assert_eq!(
        ns("pid", daemon.to_string()) == ns("pid", "self".into()),
        pid_ns.is_empty(),
        "pid namespace vs hostPID"
    );
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
    let status = std::fs::read_to_string(format!("/proc/{daemon}/status")).unwrap();
    unsafe { libc::kill(daemon as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
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
    // Left root for the ConfigMap's uid of schedlat's own (the host's passwd lacks it: the
    // group is the same number), not a uid other containers share.
    assert!(
        status.lines().any(|l| l == "Uid:\t9725\t9725\t9725\t9725")
            && status.lines().any(|l| l == "Gid:\t9725\t9725\t9725\t9725"),
        "not uid/gid 9725 after attaching:\n{status}"
    );
}

/// Root without CAP_SETUID/CAP_SETGID cannot leave root: the daemon says so at start, before
/// attaching anything, whether `user` is set or left to its default.
#[test]
fn leaving_root_without_cap_setuid_fails_early_and_says_what_to_add() {
    if !privileged_or_skip() {
        return;
    }
    let dir = TempDir::new("unituser");
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, "user = \"nobody\"\n").unwrap();
    for config in [Some(&cfg), None] {
        // Root with only the eBPF capabilities: CAP_SETUID/CAP_SETGID are out of reach.
        let mut cmd = Command::new("setpriv");
        cmd.args(["--bounding-set=-all,+bpf,+perfmon", "--"])
            .arg(schedlat_bin())
            .args(["daemon", "--listen", "127.0.0.1:0"]);
        if let Some(c) = config {
            cmd.arg("--config").arg(c);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{config:?}: {stderr}");
        let origin = if config.is_some() {
            "the `user` key"
        } else {
            "the default"
        };
        assert!(
            stderr.contains("nobody")
                && stderr.contains(origin)
                && stderr.contains("CAP_SETUID and CAP_SETGID")
                && stderr.contains("CapabilityBoundingSet")
                && stderr.contains("SETUID, SETGID"),
            "{stderr}"
        );
        // Refused before attaching: nothing was loaded.
        assert!(!stderr.contains("attached"), "{stderr}");
    }
}

// ------------------------------------------------------------------------- container image

/// `$SCHEDLAT_IMAGE`, else target/image/schedlat: the OCI image layout `cargo xtask image`
/// writes.
fn image_layout() -> PathBuf {
    let p = match std::env::var_os("SCHEDLAT_IMAGE") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo().join("target/image/schedlat"),
    };
    assert!(
        p.join("index.json").is_file(),
        "no OCI image layout at {}: build it with `cargo xtask image` (set SCHEDLAT_IMAGE to use another)",
        p.display()
    );
    p
}

/// Regular files (and symlinks, marked "-> target") under `root`, relative, sorted.
fn files_under(root: &std::path::Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let t = e.file_type().unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_symlink() {
                out.insert(format!(
                    "{rel} -> {}",
                    std::fs::read_link(e.path()).unwrap().display()
                ));
            } else {
                out.insert(rel);
            }
        }
    }
    out
}

/// A mount the container runtime or a volume makes in the container's root.
struct Mount {
    src: std::ffi::CString,
    /// Absolute, inside the unpacked rootfs.
    dst: std::ffi::CString,
    fstype: Option<std::ffi::CString>,
    flags: libc::c_ulong,
    /// Make the mount read-only once made: the top mount, or (true) every submount too.
    read_only: Option<bool>,
}

/// Linux capability numbers (include/uapi/linux/capability.h) of the names Kubernetes takes.
fn cap_number(name: &str) -> u32 {
    match name {
        "DAC_READ_SEARCH" => 2,
        "SETGID" => 6,
        "SETUID" => 7,
        "SYS_PTRACE" => 19,
        "SYS_ADMIN" => 21,
        "PERFMON" => 38,
        "BPF" => 39,
        other => panic!("capability {other}: add its number to cap_number"),
    }
}

/// In the child, before exec: what a container runtime does for the DaemonSet's container.
/// A new mount and cgroup namespace (private propagation: nothing reaches the host); `rootfs`
/// bind-mounted on itself; the mounts in order; the root made read-only; chroot; the bounding
/// set cut to `keep` (uid 0 then gets exactly those at exec); no_new_privs. Only syscalls:
/// this runs between fork and exec. On failure, says which step on stderr.
fn enter_container(
    rootfs: &std::ffi::CStr,
    mounts: &[Mount],
    keep: u64,
    last_cap: u32,
    no_new_privs: bool,
) -> std::io::Result<()> {
    use std::ptr::null;
    let fail = |what: &[u8], path: &std::ffi::CStr| {
        let e = std::io::Error::last_os_error();
        // SAFETY: write(2) of valid buffers to stderr.
        unsafe {
            libc::write(2, b"container setup failed: ".as_ptr().cast(), 24);
            libc::write(2, what.as_ptr().cast(), what.len());
            libc::write(2, b" ".as_ptr().cast(), 1);
            let p = path.to_bytes();
            libc::write(2, p.as_ptr().cast(), p.len());
            libc::write(2, b"\n".as_ptr().cast(), 1);
        }
        Err(e)
    };
    let check = |r: libc::c_long, what: &[u8], path: &std::ffi::CStr| {
        if r < 0 { fail(what, path) } else { Ok(()) }
    };
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 1;
    const AT_RECURSIVE: libc::c_int = 0x8000;
    let root = c"/";
    // SAFETY: plain syscalls on NUL-terminated paths that outlive them.
    unsafe {
        check(
            libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWCGROUP).into(),
            b"unshare",
            root,
        )?;
        check(
            libc::mount(
                null(),
                root.as_ptr(),
                null(),
                libc::MS_REC | libc::MS_PRIVATE,
                null(),
            )
            .into(),
            b"make / private",
            root,
        )?;
        check(
            libc::mount(
                rootfs.as_ptr(),
                rootfs.as_ptr(),
                null(),
                libc::MS_BIND | libc::MS_REC,
                null(),
            )
            .into(),
            b"bind",
            rootfs,
        )?;
        for m in mounts {
            let fstype = m.fstype.as_ref().map_or(null(), |f| f.as_ptr());
            check(
                libc::mount(m.src.as_ptr(), m.dst.as_ptr(), fstype, m.flags, null()).into(),
                b"mount",
                &m.dst,
            )?;
            match m.read_only {
                None => {}
                Some(false) => check(
                    libc::mount(
                        null(),
                        m.dst.as_ptr(),
                        null(),
                        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                        null(),
                    )
                    .into(),
                    b"remount read-only",
                    &m.dst,
                )?,
                Some(true) => {
                    let attr = MountAttr {
                        attr_set: MOUNT_ATTR_RDONLY,
                        attr_clr: 0,
                        propagation: 0,
                        userns_fd: 0,
                    };
                    check(
                        libc::syscall(
                            libc::SYS_mount_setattr,
                            libc::AT_FDCWD,
                            m.dst.as_ptr(),
                            AT_RECURSIVE,
                            &attr as *const MountAttr,
                            size_of::<MountAttr>(),
                        ),
                        b"make read-only recursively",
                        &m.dst,
                    )?
                }
            }
        }
        check(
            libc::mount(
                null(),
                rootfs.as_ptr(),
                null(),
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
                null(),
            )
            .into(),
            b"read-only root",
            rootfs,
        )?;
        check(libc::chroot(rootfs.as_ptr()).into(), b"chroot", rootfs)?;
        check(libc::chdir(root.as_ptr()).into(), b"chdir", root)?;
        for cap in 0..=last_cap {
            if keep & (1 << cap) == 0 {
                check(
                    libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0).into(),
                    b"drop from the bounding set",
                    root,
                )?;
            }
        }
        if no_new_privs {
            check(
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0).into(),
                b"no_new_privs",
                root,
            )?;
        }
    }
    Ok(())
}

/// `cargo xtask image`'s OCI layout, unpacked by umoci, runs `schedlat daemon` the way the
/// DaemonSet does: its command, args and env, the ConfigMap's config, its volume mounts
/// (hostPath binds, read-only, recursively where it says so) over what a runtime provides
/// (/proc of the host pid namespace, sysfs read-only, a tmpfs /dev, a namespaced cgroup2), a
/// read-only root, uid 0 with only the capabilities it adds, no_new_privs. The daemon must
/// attach, become uid 9725 (schedlat's own), drop them, and serve the host cgroup of a workload by its host path; everything it
/// maps comes from the image, which holds the binary and exactly the libraries ldd lists.
/// (Not reproduced: the seccomp profile and the pod network namespace.)
#[test]
fn the_container_image_runs_the_daemon_with_the_daemonsets_mounts() {
    if !privileged_or_skip() {
        return;
    }
    let layout = image_layout();
    let index: Value =
        serde_json::from_str(&std::fs::read_to_string(layout.join("index.json")).unwrap()).unwrap();
    let manifest = &index["manifests"][0];
    let tag = manifest["annotations"]["org.opencontainers.image.ref.name"]
        .as_str()
        .expect("index.json names its tag")
        .to_string();
    assert_eq!(
        tag,
        env!("CARGO_PKG_VERSION"),
        "image tag is the crate version"
    );

    // The manifests deploy this image.
    let docs = yaml_documents(&k8s_manifests());
    let pod = &one(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["image"], format!("schedlat:{tag}").as_str());
    let kust = yaml_documents(&[k8s_dir().join("kustomization.yaml")]);
    let images = kust[0]["images"].as_array().expect("kustomization images");
    assert!(
        images
            .iter()
            .any(|i| i["name"] == "schedlat" && i["newTag"] == tag.as_str()),
        "kustomization images {images:?}"
    );

    let dir = TempDir::new("image");
    let reference = format!("oci:{}:{tag}", layout.display());
    // skopeo reads it the way the README pushes it: platform, digest, and a conversion to a
    // docker-archive (what `docker load` / `kind load image-archive` take).
    let inspect: Value = serde_json::from_str(&schedlat_tests::ok(
        "skopeo",
        &["--insecure-policy", "inspect", &reference],
    ))
    .unwrap();
    assert_eq!(inspect["Digest"], manifest["digest"]);
    assert_eq!(
        (inspect["Os"].as_str(), inspect["Architecture"].as_str()),
        (Some("linux"), Some("amd64"))
    );
    let archive = dir.join("schedlat.tar");
    schedlat_tests::ok(
        "skopeo",
        &[
            "--insecure-policy",
            "copy",
            "-q",
            &reference,
            &format!("docker-archive:{}:schedlat:{tag}", archive.display()),
        ],
    );
    assert!(
        std::fs::metadata(&archive).unwrap().len() > 1 << 20,
        "docker-archive written"
    );

    // Unpacked by an independent implementation (umoci checks every digest on the way).
    let bundle = dir.join("bundle");
    schedlat_tests::ok(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:{tag}", layout.display()),
            bundle.to_str().unwrap(),
        ],
    );
    let rootfs = bundle.join("rootfs");
    // The shipped binary is static (musl): the image holds it and nothing for it to load.
    let ldd = schedlat_tests::ok("ldd", &[schedlat_bin().to_str().unwrap()]);
    assert!(ldd.contains("statically linked"), "not static: {ldd}");
    let want: BTreeSet<String> = ["usr/local/bin/schedlat", "etc/passwd", "etc/group"]
        .map(String::from)
        .into();
    assert_eq!(
        files_under(&rootfs),
        want,
        "the image's files vs the static binary and its two account files"
    );
    assert!(
        std::fs::read(rootfs.join("usr/local/bin/schedlat")).unwrap()
            == std::fs::read(schedlat_bin()).unwrap(),
        "the image holds another schedlat than {}: rebuild it with `cargo xtask image`",
        schedlat_bin().display()
    );

    // The ConfigMap's config, on a free port (the host network: no pod network here).
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg_dir = dir.join("config");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    let cfg = one(&docs, "ConfigMap")["data"]["schedlat.toml"]
        .as_str()
        .unwrap();
    assert!(cfg.contains("0.0.0.0:9725"), "{cfg}");
    std::fs::write(
        cfg_dir.join("schedlat.toml"),
        cfg.replace("0.0.0.0:9725", &format!("0.0.0.0:{port}")),
    )
    .unwrap();

    let cstr =
        |p: &std::path::Path| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    let inside = |p: &str| cstr(&rootfs.join(p.trim_start_matches('/')));
    // What the runtime provides, then the volumes in the order the container lists them.
    let (nosuid, nodev, noexec) = (libc::MS_NOSUID, libc::MS_NODEV, libc::MS_NOEXEC);
    // A new filesystem of type `fs` (its source named as the type) at `at`.
    let new_fs = |fs: &std::ffi::CStr, at: &str, flags| Mount {
        src: fs.into(),
        dst: inside(at),
        fstype: Some(fs.into()),
        flags,
        read_only: None,
    };
    let mut mounts = vec![
        new_fs(c"proc", "/proc", nosuid | nodev | noexec),
        new_fs(c"tmpfs", "/dev", nosuid),
        new_fs(c"sysfs", "/sys", nosuid | nodev | noexec | libc::MS_RDONLY),
        new_fs(
            c"cgroup2",
            "/sys/fs/cgroup",
            nosuid | nodev | noexec | libc::MS_RDONLY,
        ),
    ];
    let volumes = pod["volumes"].as_array().unwrap();
    for vm in c["volumeMounts"].as_array().unwrap() {
        let v = volumes.iter().find(|v| v["name"] == vm["name"]).unwrap();
        let src = if v["configMap"].is_object() {
            cfg_dir.clone()
        } else {
            PathBuf::from(
                v["hostPath"]["path"]
                    .as_str()
                    .unwrap_or_else(|| panic!("volume {v}")),
            )
        };
        let read_only = (vm["readOnly"] == true).then(|| {
            matches!(
                vm["recursiveReadOnly"].as_str(),
                Some("IfPossible" | "Enabled")
            )
        });
        mounts.push(Mount {
            src: cstr(&src),
            dst: inside(vm["mountPath"].as_str().unwrap()),
            fstype: None,
            // CRI runtimes bind volumes recursively.
            flags: libc::MS_BIND | libc::MS_REC,
            read_only,
        });
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsUser"], 0);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"][0], "ALL");
    let keep = sc["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .fold(0u64, |k, n| k | 1 << cap_number(n.as_str().unwrap()));
    let no_new_privs = sc["allowPrivilegeEscalation"] == false;
    let last_cap: u32 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let root_c = cstr(&rootfs);

    let mut cmd = Command::new(c["command"][0].as_str().unwrap());
    cmd.args(strings(&c["args"])).env_clear();
    for e in c["env"].as_array().into_iter().flatten() {
        cmd.env(e["name"].as_str().unwrap(), e["value"].as_str().unwrap());
    }
    let log = dir.join("daemon.log");
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    // SAFETY: the closure only makes syscalls (enter_container), as required after fork.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
            enter_container(&root_c, &mounts, keep, last_cap, no_new_privs)
        });
    }
    let mut child = cmd.spawn().unwrap_or_else(|e| {
        panic!(
            "starting the image's daemon: {e}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    let pid = child.id();
    let addr = format!("127.0.0.1:{port}");
    let cg = schedlat_tests::TestCgroup::create("image");
    let mut spin =
        schedlat_tests::Workload::start(&["spin", "--threads", "2", "--cpu", "0", "--secs", "1"]);
    cg.add(spin.pid);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while get(&addr, "/healthz").is_none() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "the image's daemon exited ({st}):\n{}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no /healthz in 30 s:\n{}",
            std::fs::read_to_string(&log).unwrap()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    spin.go();
    spin.result();
    let body = get(&addr, "/metrics").unwrap();

    // It runs from the image: its root is the unpacked rootfs and every file it maps is there.
    let proc_root = std::fs::read_link(format!("/proc/{pid}/root")).unwrap();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let exit = child.wait().unwrap();
    let daemon_log = std::fs::read_to_string(&log).unwrap();
    assert!(exit.success(), "exit {exit}:\n{daemon_log}");
    assert_eq!(proc_root, rootfs);
    let mapped: BTreeSet<&str> = maps
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/'))
        .collect();
    // Static: the one file it maps is its own binary, from the image.
    assert_eq!(
        mapped,
        BTreeSet::from([rootfs.join("usr/local/bin/schedlat").to_str().unwrap()]),
        "{maps}"
    );
    for p in &mapped {
        assert!(
            p.starts_with(rootfs.to_str().unwrap()),
            "{p} mapped from outside the image:\n{maps}"
        );
    }
    // Bounding set: exactly what the DaemonSet adds; attached, then dropped all.
    let field = |f: &str| {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(f))
            .unwrap()
            .trim();
        u64::from_str_radix(v, 16).unwrap()
    };
    assert_eq!(field("CapBnd:"), keep, "{status}");
    assert_eq!(field("CapEff:"), 0, "{status}");
    // Became the ConfigMap's uid, named schedlat in the image's /etc/passwd.
    assert!(
        status.lines().any(|l| l == "Uid:\t9725\t9725\t9725\t9725")
            && status.lines().any(|l| l == "Gid:\t9725\t9725\t9725\t9725"),
        "{status}"
    );
    assert!(
        std::fs::read_to_string(rootfs.join("etc/passwd"))
            .unwrap()
            .lines()
            .any(|l| l.starts_with("schedlat:x:9725:9725:")),
        "the image names uid 9725"
    );
    assert!(status.lines().any(|l| l == "NoNewPrivs:\t1"), "{status}");
    assert!(
        body.contains(
            "schedlat_program_attached{program=\"sched_switch\",target=\"tp_btf/sched_switch\"} 1"
        ),
        "{body}"
    );
    let series = format!(
        "schedlat_runqueue_latency_seconds_count{{cgroup=\"{}\",cause=\"preempted\"}} ",
        cg.path()
    );
    let n: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .unwrap_or_else(|| panic!("no {series}in the image's daemon's metrics:\n{body}"))
        .parse()
        .unwrap();
    assert!(n > 10.0, "{series}{n}");
    eprintln!(
        "image {tag} ({}): {} files, daemon mapped {mapped:?}; {series}{n}",
        manifest["digest"],
        want.len()
    );
    drop(cg);
}
