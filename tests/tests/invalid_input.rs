//! Bad input gets a clear error naming the problem, and exit code 2.
use std::{net::TcpListener, path::Path, process::Command};

use schedlat_tests::{privileged_or_skip, run_schedlat, schedlat_bin};

fn assert_usage_error(out: &std::process::Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(2),
        "want exit 2, got {:?}; stderr:\n{stderr}",
        out.status
    );
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}:\n{stderr}");
    }
}

#[test]
fn unknown_pid() {
    assert_usage_error(
        &run_schedlat(&["capture", "--pid", "999999999"]),
        &["no process with pid 999999999"],
    );
}

#[test]
fn exited_pid() {
    let mut c = Command::new("true").spawn().unwrap();
    let pid = c.id();
    c.wait().unwrap();
    assert_usage_error(
        &run_schedlat(&["capture", "--pid", &pid.to_string()]),
        &[&format!("no process with pid {pid}")],
    );
}

#[test]
fn bad_duration() {
    assert_usage_error(
        &run_schedlat(&["capture", "--duration", "10parsecs"]),
        &["invalid duration", "10parsecs"],
    );
    assert_usage_error(
        &run_schedlat(&["capture", "--duration", "0s"]),
        &["greater than zero"],
    );
}

#[test]
fn bad_cgroup() {
    assert_usage_error(
        &run_schedlat(&["capture", "--cgroup", "/no/such/cgroup"]),
        &["/no/such/cgroup", "not found"],
    );
}

#[test]
fn unknown_config_key() {
    let dir = std::env::temp_dir().join(format!("schedlat-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("bad.toml");
    std::fs::write(&f, "listen = \"127.0.0.1:0\"\nfutx = true\n").unwrap();
    assert_usage_error(
        &run_schedlat(&["daemon", "--config", f.to_str().unwrap()]),
        &["futx", "bad.toml"],
    );
    std::fs::write(&f, "buckets_per_octave = 5\n").unwrap();
    assert_usage_error(
        &run_schedlat(&["daemon", "--config", f.to_str().unwrap()]),
        &["buckets_per_octave", "1, 2, 4 or 8"],
    );
    assert_usage_error(
        &run_schedlat(&["daemon", "--config", "/no/such.toml"]),
        &["/no/such.toml"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_web_config_and_unknown_user() {
    // All checked before binding or attaching, so no root needed.
    let dir = std::env::temp_dir().join(format!("schedlat-webcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let web = dir.join("web.yml");
    let web_s = web.to_str().unwrap();
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: a.crt\n  key_file: a.key\n  ciphers: [x]\n",
    )
    .unwrap();
    assert_usage_error(
        &run_schedlat(&["daemon", "--web.config.file", web_s]),
        &["ciphers", "web.yml"],
    );
    // Missing certificate: named with its resolved path.
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n",
    )
    .unwrap();
    let missing = dir.join("missing.crt");
    assert_usage_error(
        &run_schedlat(&["daemon", "--web.config.file", web_s]),
        &[missing.to_str().unwrap(), "cert_file", "cannot read"],
    );
    // A file that is not a certificate.
    std::fs::write(&missing, "hello\n").unwrap();
    assert_usage_error(
        &run_schedlat(&["daemon", "--web.config.file", web_s]),
        &[missing.to_str().unwrap(), "no PEM certificate"],
    );
    std::fs::write(&web, "basic_auth_users:\n  prom: hunter2\n").unwrap();
    assert_usage_error(
        &run_schedlat(&["daemon", "--web.config.file", web_s]),
        &["basic_auth_users.prom", "htpasswd"],
    );
    assert_usage_error(
        &run_schedlat(&["daemon", "--web.config.file", "/no/such/web.yml"]),
        &["/no/such/web.yml", "web config"],
    );
    let cfg = dir.join("user.toml");
    std::fs::write(&cfg, "user = \"no-such-user-schedlat\"\n").unwrap();
    assert_usage_error(
        &run_schedlat(&["daemon", "--config", cfg.to_str().unwrap()]),
        &["no-such-user-schedlat", "no such user"],
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn listen_address_in_use() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    assert_usage_error(
        &run_schedlat(&["daemon", "--listen", &addr]),
        &[&addr, "already in use"],
    );
    assert_usage_error(
        &run_schedlat(&["daemon", "--listen", "not-an-address"]),
        &["--listen", "HOST:PORT"],
    );
}

#[test]
fn missing_privileges_names_the_capabilities() {
    if !privileged_or_skip() {
        return;
    }
    // Drop to nobody with no capabilities (setpriv is in util-linux).
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
        ])
        .arg(schedlat_bin())
        .args(["capture", "--duration", "1s"])
        .output()
        .expect("run setpriv");
    assert_usage_error(&out, &["CAP_BPF", "CAP_PERFMON"]);
}

#[test]
fn kernel_lacking_a_tracepoint() {
    if !privileged_or_skip() {
        return;
    }
    // A tracefs that has the sched tracepoints but no futex syscall tracepoints, as on a kernel
    // built without CONFIG_FTRACE_SYSCALLS.
    let root = std::env::temp_dir().join(format!("schedlat-tracefs-{}", std::process::id()));
    for tp in ["sched_switch", "sched_waking", "sched_wakeup_new"] {
        let d = root.join("events/sched").join(tp);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(
            Path::new("/sys/kernel/tracing/events/sched")
                .join(tp)
                .join("format"),
            d.join("format"),
        )
        .unwrap();
    }
    let out = run_schedlat(&[
        "--tracefs",
        root.to_str().unwrap(),
        "capture",
        "--duration",
        "1s",
    ]);
    assert_usage_error(&out, &["syscalls:sys_enter_futex", "--futex sched"]);
    // And the suggested fix works on such a kernel.
    let out = run_schedlat(&[
        "--tracefs",
        root.to_str().unwrap(),
        "capture",
        "--duration",
        "1s",
        "--no-futex",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_schedlat(&["--tracefs", "/nonexistent", "capture", "--duration", "1s"]);
    assert_usage_error(&out, &["tracefs not found", "mount -t tracefs"]);
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn logs_carry_no_colour_codes_when_stderr_is_not_a_terminal() {
    // stderr is a pipe here; debug logging makes sure there are log lines to look at.
    let out = run_schedlat(&["--log", "debug", "check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kernel feature"), "no log lines:\n{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "ANSI escape codes in piped stderr:\n{stderr}"
    );
}
