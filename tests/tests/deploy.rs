//! deploy/: the systemd unit is valid and its capability set is enough.
use std::{path::PathBuf, process::Command};

use schedlat_tests::{privileged_or_skip, schedlat_bin, scrape::get};

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
