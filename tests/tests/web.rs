//! Privileged: `schedlat daemon` with a web config (TLS + basic auth), scraped with Debian's
//! curl against a certificate made by Debian's openssl and a hash made by htpasswd.
use std::{
    path::PathBuf,
    process::{Command, Output},
};

use schedlat_tests::{
    privileged_or_skip,
    scrape::{Daemon, get},
};

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("running {cmd}: {e} (`cargo xtask setup` installs openssl, curl, apache2-utils)")
    })
}

fn ok(cmd: &str, args: &[&str]) -> String {
    let out = run(cmd, args);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("schedlat-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Self(d)
    }
    fn path(&self, f: &str) -> String {
        self.0.join(f).to_str().unwrap().to_string()
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed server certificate for 127.0.0.1 (it is its own CA for curl).
fn self_signed(dir: &TempDir) {
    ok(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=schedlat-test",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            &dir.path("server.key"),
            "-out",
            &dir.path("server.crt"),
        ],
    );
}

/// bcrypt hash of `password` by htpasswd (an implementation other than the daemon's).
fn htpasswd(user: &str, password: &str) -> String {
    let line = ok("htpasswd", &["-nbBC", "10", user, password]);
    let (u, hash) = line.trim().split_once(':').expect("user:hash");
    assert_eq!(u, user);
    hash.to_string()
}

/// curl over HTTPS trusting only `ca`: (exit code, HTTP status, response headers + body).
fn curl(ca: &str, url: &str, creds: Option<&str>) -> (i32, u16, String) {
    let mut args = vec![
        "-sS",
        "--max-time",
        "30",
        "--cacert",
        ca,
        "-i",
        "-w",
        "\n%{http_code}",
    ];
    if let Some(c) = creds {
        args.extend(["-u", c]);
    }
    args.push(url);
    let out = run("curl", &args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .rsplit('\n')
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    (out.status.code().unwrap_or(-1), status, text)
}

#[test]
fn tls_and_basic_auth_guard_metrics() {
    if !privileged_or_skip("tls_and_basic_auth_guard_metrics") {
        return;
    }
    let dir = TempDir::new("web");
    self_signed(&dir);
    let hash = htpasswd("prom", "s3cret");
    // Relative paths: taken relative to the web config's directory.
    let web = dir.path("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n\
             basic_auth_users:\n  prom: '{hash}'\n"
        ),
    )
    .unwrap();
    let ca = dir.path("server.crt");
    let d = Daemon::start_until(&["--web.config.file", &web], |addr| {
        curl(&ca, &format!("https://{addr}/healthz"), None).1 == 200
    });
    let url = format!("https://{}/metrics", d.addr);

    let (rc, status, body) = curl(&ca, &url, Some("prom:s3cret"));
    assert_eq!((rc, status), (0, 200), "{body}");
    assert!(
        body.contains("schedlat_program_attached{program=\"sched_switch\""),
        "{body}"
    );
    // Again: served from the verification cache, same answer.
    assert_eq!(curl(&ca, &url, Some("prom:s3cret")).1, 200);

    for creds in [Some("prom:wrong"), Some("root:s3cret"), Some("prom:")] {
        let (rc, status, body) = curl(&ca, &url, creds);
        assert_eq!((rc, status), (0, 401), "{creds:?}: {body}");
        assert!(!body.contains("schedlat_"), "{body}");
    }
    let (_, status, head) = curl(&ca, &url, None);
    assert_eq!(status, 401, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"schedlat\""),
        "{head}"
    );
    // /healthz is outside basic auth (liveness probes), but inside TLS.
    assert_eq!(
        curl(&ca, &format!("https://{}/healthz", d.addr), None).1,
        200
    );

    // Plain HTTP to the TLS port gets no answer, and no metrics.
    assert!(get(&d.addr, "/healthz").is_none());
    let (rc, status, out) = curl(&ca, &format!("http://{}/metrics", d.addr), None);
    assert!(rc != 0 && status != 200, "plain http: rc {rc}: {out}");
    // A client that does not trust the certificate refuses it (exit 60: peer certificate).
    let (rc, _, _) = curl(
        "/etc/ssl/certs/ca-certificates.crt",
        &url,
        Some("prom:s3cret"),
    );
    assert_eq!(rc, 60, "curl trusting only the system CAs");
    // TLS 1.2 and 1.3 are offered by default.
    for v in ["--tlsv1.2", "--tlsv1.3"] {
        let out = run(
            "curl",
            &[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--cacert",
                &ca,
                v,
                "--tls-max",
                &v[6..],
                "-u",
                "prom:s3cret",
                &url,
            ],
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{v}");
    }
    assert!(d.stop().success());
}

#[test]
fn min_version_tls13_refuses_tls12_clients() {
    if !privileged_or_skip("min_version_tls13_refuses_tls12_clients") {
        return;
    }
    let dir = TempDir::new("web13");
    self_signed(&dir);
    let web = dir.path("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n  min_version: TLS13\n",
            dir.path("server.crt"),
            dir.path("server.key")
        ),
    )
    .unwrap();
    // Through the config file key this time, not the flag.
    let cfg = dir.path("schedlat.toml");
    std::fs::write(&cfg, format!("web_config = \"{web}\"\n")).unwrap();
    let ca = dir.path("server.crt");
    let d = Daemon::start_until(&["--config", &cfg], |addr| {
        curl(&ca, &format!("https://{addr}/healthz"), None).1 == 200
    });
    let url = format!("https://{}/metrics", d.addr);
    // No basic_auth_users: no credentials needed.
    let (rc, status, body) = curl(&ca, &url, None);
    assert_eq!((rc, status), (0, 200), "{body}");
    let out = run(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "--cacert",
            &ca,
            "--tls-max",
            "1.2",
            &url,
        ],
    );
    // 35: SSL connect error (protocol version alert).
    assert_eq!(
        out.status.code(),
        Some(35),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(d.stop().success());
}

/// A CA and a client certificate it signs, named `<name>-ca.crt`, `<name>.crt`, `<name>.key`.
fn client_pki(dir: &TempDir, name: &str) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let (ca_crt, ca_key) = (
        dir.path(&format!("{name}-ca.crt")),
        dir.path(&format!("{name}-ca.key")),
    );
    let mut args = vec!["req", "-x509", "-days", "1", "-subj", "/CN=test-clients-ca"];
    args.extend(ec);
    args.extend(["-keyout", &ca_key, "-out", &ca_crt]);
    ok("openssl", &args);
    let (csr, key, crt) = (
        dir.path(&format!("{name}.csr")),
        dir.path(&format!("{name}.key")),
        dir.path(&format!("{name}.crt")),
    );
    let mut args = vec!["req", "-new", "-subj", "/CN=prometheus"];
    args.extend(ec);
    args.extend(["-keyout", &key, "-out", &csr]);
    ok("openssl", &args);
    let ext = dir.path("client-ext.cnf");
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
    )
    .unwrap();
    ok(
        "openssl",
        &[
            "x509",
            "-req",
            "-days",
            "1",
            "-in",
            &csr,
            "-CA",
            &ca_crt,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ],
    );
}

/// curl with a client certificate (`name` as made by [`client_pki`]) or none.
fn curl_cert(dir: &TempDir, url: &str, name: Option<&str>) -> (i32, String) {
    let ca = dir.path("server.crt");
    let mut args = vec![
        "-sS".to_string(),
        "--max-time".into(),
        "30".into(),
        "-o".into(),
        "/dev/null".into(),
        "-w".into(),
        "%{http_code}".into(),
        "--cacert".into(),
        ca,
    ];
    if let Some(n) = name {
        args.extend([
            "--cert".into(),
            dir.path(&format!("{n}.crt")),
            "--key".into(),
            dir.path(&format!("{n}.key")),
        ]);
    }
    args.push(url.into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("curl", &args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn client_certificates_are_verified_against_client_ca_file() {
    if !privileged_or_skip("client_certificates_are_verified_against_client_ca_file") {
        return;
    }
    let dir = TempDir::new("mtls");
    self_signed(&dir);
    client_pki(&dir, "good");
    client_pki(&dir, "rogue"); // same subject, a CA the daemon does not trust
    for (mode, anonymous_ok) in [
        ("RequireAndVerifyClientCert", false),
        ("VerifyClientCertIfGiven", true),
    ] {
        let web = dir.path("web.yml");
        std::fs::write(
            &web,
            format!(
                "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  \
                 client_auth_type: {mode}\n  client_ca_file: good-ca.crt\n"
            ),
        )
        .unwrap();
        let d = Daemon::start_until(&["--web.config.file", &web], |addr| {
            curl_cert(&dir, &format!("https://{addr}/healthz"), Some("good")).1 == "200"
        });
        let url = format!("https://{}/metrics", d.addr);
        assert_eq!(
            curl_cert(&dir, &url, Some("good")),
            (0, "200".into()),
            "{mode}"
        );
        let (rc, code) = curl_cert(&dir, &url, Some("rogue"));
        assert!(
            rc != 0 && code != "200",
            "{mode}: rogue cert: rc {rc} {code}"
        );
        let (rc, code) = curl_cert(&dir, &url, None);
        if anonymous_ok {
            assert_eq!((rc, code.as_str()), (0, "200"), "{mode}: no cert");
        } else {
            assert!(rc != 0 && code != "200", "{mode}: no cert: rc {rc} {code}");
        }
        assert!(d.stop().success());
    }
}
