//! Privileged: `schedlat daemon` with a web config (TLS + basic auth), scraped with Debian's
//! curl against a certificate made by Debian's openssl and a hash made by htpasswd.
use schedlat_tests::{
    TempDir, ok, privileged_or_skip, run,
    scrape::{Daemon, get},
    tls::{TlsSite, cert_into, curl, self_signed},
};

#[test]
fn tls_and_basic_auth_guard_metrics() {
    if !privileged_or_skip() {
        return;
    }
    // Relative paths: taken relative to the web config's directory.
    let site = TlsSite::new("web", &[("prom", "s3cret")], 10);
    let ca = site.ca.clone();
    let d = site.start_daemon(&["--web.config.file", &site.web]);
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
    if !privileged_or_skip() {
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
    if !privileged_or_skip() {
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

/// The certificate curl is served, trusting only `ca`: Ok((subject, serial)) from curl's
/// `%{certs}`, or Err(curl's exit code) when the handshake or verification failed.
fn served_cert(ca: &str, addr: &str) -> Result<(String, String), i32> {
    let out = run(
        "curl",
        &[
            "-sS",
            "--max-time",
            "30",
            "--cacert",
            ca,
            "-o",
            "/dev/null",
            "-w",
            "%{certs}",
            &format!("https://{addr}/healthz"),
        ],
    );
    if !out.status.success() {
        return Err(out.status.code().unwrap_or(-1));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("no {name} in curl's %{{certs}}:\n{text}"))
            .trim()
            .to_string()
    };
    Ok((field("Subject:"), field("Serial Number:")))
}

/// Polls (up to 15 s, a connection every 200 ms: each may trigger the daemon's check) until
/// curl trusting only `ca` is served the certificate with `serial`.
fn wait_for_cert(ca: &str, addr: &str, serial: &str) -> (String, String) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let got = served_cert(ca, addr);
        if let Ok((subject, s)) = &got {
            if s.eq_ignore_ascii_case(serial) {
                return (subject.clone(), s.clone());
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "certificate {serial} not served within 15 s: last {got:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The value of a sample line of the daemon's metrics, scraped over TLS trusting `ca`.
fn web_metric(ca: &str, addr: &str, series: &str) -> Option<f64> {
    let (rc, status, body) = curl(ca, &format!("https://{addr}/metrics"), None);
    assert_eq!((rc, status), (0, 200), "{body}");
    schedlat_tests::scrape::sample(&body, &format!("{series} "))
}

#[test]
fn a_renewed_certificate_is_served_without_restart_and_bad_files_keep_the_old_one() {
    if !privileged_or_skip() {
        return;
    }
    let dir = TempDir::new("rotate");
    // As a Kubernetes secret volume lays them out: `tls` is a symlink to the current version's
    // directory, and an update swaps the symlink atomically.
    // The daemon reads renewals as the user it became after attaching (nobody): the files are
    // that user's, as a renewal hook (or a secret volume's fsGroup) makes them.
    let swap_to = |version: &str| {
        for f in ["server.crt", "server.key"] {
            let p = dir.0.join(version).join(f);
            std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        }
        let link = dir.0.join("tls.new");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(version, &link).unwrap();
        std::fs::rename(&link, dir.0.join("tls")).unwrap();
    };
    cert_into(&dir.0.join("v1"), "schedlat-a", Some("5A1001"));
    swap_to("v1");
    let web = dir.path("web.yml");
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: tls/server.crt\n  key_file: tls/server.key\n",
    )
    .unwrap();
    let ca_a = dir.path("v1/server.crt");
    let d = Daemon::start_until(&["--web.config.file", &web], |addr| {
        served_cert(&ca_a, addr).is_ok()
    });
    assert_eq!(
        served_cert(&ca_a, &d.addr),
        Ok(("CN = schedlat-a".into(), "5a1001".into()))
    );

    // Renewed: a new certificate and key, swapped in at once.
    cert_into(&dir.0.join("v2"), "schedlat-b", Some("5B1002"));
    swap_to("v2");
    let ca_b = dir.path("v2/server.crt");
    let (subject, serial) = wait_for_cert(&ca_b, &d.addr, "5b1002");
    eprintln!("after the swap curl sees {subject}, serial {serial}");
    assert_eq!(subject, "CN = schedlat-b");
    // The old certificate is gone: a client trusting only it now fails verification (60).
    assert_eq!(served_cert(&ca_a, &d.addr), Err(60));
    let reloads = "schedlat_web_tls_reloads_total{result=\"success\"}";
    let errors = "schedlat_web_tls_reloads_total{result=\"error\"}";
    let failing = "schedlat_web_tls_reload_failing";
    assert_eq!(web_metric(&ca_b, &d.addr, reloads), Some(1.0));
    assert_eq!(web_metric(&ca_b, &d.addr, errors), Some(0.0));

    // A bad update: a certificate whose key is another one's, then a certificate file that is
    // not PEM. Each is counted, and the renewed certificate keeps being served.
    cert_into(&dir.0.join("v3"), "schedlat-c", Some("5C1003"));
    cert_into(&dir.0.join("other"), "schedlat-x", Some("5F1009"));
    std::fs::copy(dir.0.join("other/server.key"), dir.0.join("v3/server.key")).unwrap();
    swap_to("v3");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while web_metric(&ca_b, &d.addr, errors) != Some(1.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "mismatched key not counted"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(web_metric(&ca_b, &d.addr, failing), Some(1.0));
    std::fs::write(
        dir.0.join("v3/server.crt"),
        "-----BEGIN CERTIFICATE-----\ngarbage\n",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while web_metric(&ca_b, &d.addr, errors) != Some(2.0) {
        assert!(
            std::time::Instant::now() < deadline,
            "garbage certificate not counted"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(
        served_cert(&ca_b, &d.addr),
        Ok(("CN = schedlat-b".into(), "5b1002".into())),
        "bad files replaced the working certificate"
    );
    // HTTPS scrapes with the renewed certificate go on working meanwhile.
    let (rc, status, _) = curl(&ca_b, &format!("https://{}/metrics", d.addr), None);
    assert_eq!((rc, status), (0, 200));

    // Fixed in place (same files rewritten: mtime and size change, not the inode).
    cert_into(&dir.0.join("v3"), "schedlat-d", Some("5D1004"));
    let ca_d = dir.path("v3/server.crt");
    let (subject, _) = wait_for_cert(&ca_d, &d.addr, "5d1004");
    assert_eq!(subject, "CN = schedlat-d");
    assert_eq!(web_metric(&ca_d, &d.addr, failing), Some(0.0));
    // A rewrite of two files can be seen half done (new certificate, old key): that is one
    // more counted error at most, then the complete pair loads.
    let (ok_n, err_n) = (
        web_metric(&ca_d, &d.addr, reloads).unwrap(),
        web_metric(&ca_d, &d.addr, errors).unwrap(),
    );
    assert!(
        ok_n >= 2.0 && (2.0..=3.0).contains(&err_n),
        "reloads {ok_n} ok, {err_n} failed"
    );
    assert!(d.stop().success());
}

#[test]
fn failed_logins_get_429_after_a_burst_and_are_counted() {
    if !privileged_or_skip() {
        return;
    }
    let site = TlsSite::new("authlimit", &[("prom", "s3cret")], 10);
    let ca = site.ca.clone();
    let d = site.start_daemon(&["--web.config.file", &site.web]);
    let url = format!("https://{}/metrics", d.addr);
    // The scraper's credentials verify once (and are remembered).
    assert_eq!(curl(&ca, &url, Some("prom:s3cret")).1, 200);

    // 20 wrong passwords back to back from 127.0.0.1, one curl, one connection.
    let codes = |from: &str, creds: &str, n: usize| -> (Vec<u16>, f64) {
        let mut args = vec![
            "-sS".to_string(),
            "--cacert".into(),
            ca.clone(),
            "--interface".into(),
            from.into(),
            "-u".into(),
            creds.into(),
            "-w".into(),
            "%{http_code} %header{retry-after}\n".into(),
        ];
        for _ in 0..n {
            args.extend(["-o".into(), "/dev/null".into(), url.clone()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let t = std::time::Instant::now();
        let out = ok("curl", &args);
        let secs = t.elapsed().as_secs_f64();
        let mut v = Vec::new();
        for l in out.lines() {
            let (code, retry) = l.split_once(' ').unwrap();
            let code: u16 = code.parse().unwrap();
            if code == 429 {
                assert_eq!(retry, "1", "429 says when to retry: {l}");
            }
            v.push(code);
        }
        assert_eq!(v.len(), n, "{out}");
        (v, secs)
    };
    let (first, secs) = codes("127.0.0.1", "prom:wrong", 20);
    let n401 = first.iter().filter(|&&c| c == 401).count();
    let n429 = first.iter().filter(|&&c| c == 429).count();
    eprintln!(
        "20 wrong passwords in {secs:.2} s: {n401} checked (401), {n429} refused unchecked (429): {first:?}"
    );
    assert_eq!(&first[..5], &[401; 5], "the burst is checked: {first:?}");
    assert_eq!(n401 + n429, 20, "{first:?}");
    // A burst of 5, refilled at 2 per second while curl ran.
    let allowed = 5.0 + 2.0 * secs + 1.0;
    assert!(
        (n401 as f64) <= allowed && n429 >= 10,
        "{n401} checks in {secs:.2} s (at most {allowed:.1}): {first:?}"
    );
    // Meanwhile: the scraper with the right credentials gets its metrics, and another
    // address has a budget of its own.
    assert_eq!(curl(&ca, &url, Some("prom:s3cret")).1, 200);
    let (other, _) = codes("127.0.0.2", "prom:wrong", 1);
    assert_eq!(other, [401], "127.0.0.2 limited by 127.0.0.1's failures");
    // Refilled after a pause: checked again.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let (later, _) = codes("127.0.0.1", "prom:wrong", 1);
    assert_eq!(later, [401]);

    // Every refusal counted, by reason, exactly as curl saw them.
    let (rc, status, body) = curl(&ca, &url, Some("prom:s3cret"));
    assert_eq!((rc, status), (0, 200));
    let sample = |reason: &str| {
        schedlat_tests::scrape::sample(
            &body,
            &format!("schedlat_web_auth_failures_total{{reason=\"{reason}\"}} "),
        )
    };
    assert_eq!(
        sample("wrong_credentials"),
        Some((n401 + 2) as f64),
        "{body}"
    );
    assert_eq!(sample("rate_limited"), Some(n429 as f64));
    assert_eq!(sample("no_credentials"), Some(0.0));
    assert!(d.stop().success());
}

// ------------------------------------------------------------------ slow clients and storms

/// `n` TCP connections to `addr` that send nothing (as a port scanner or a stalled client).
fn idle_connections(addr: &str, n: usize) -> Vec<std::net::TcpStream> {
    (0..n)
        .map(|i| {
            std::net::TcpStream::connect(addr)
                .unwrap_or_else(|e| panic!("idle connection {i} to {addr}: {e}"))
        })
        .collect()
}

/// Whether the server closed `c` (a read sees EOF or a reset rather than nothing yet).
fn closed_by_server(c: &std::net::TcpStream) -> bool {
    use std::io::Read as _;
    c.set_nonblocking(true).unwrap();
    let mut b = [0u8; 64];
    let closed = match (&*c).read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    };
    c.set_nonblocking(false).unwrap();
    closed
}

/// curl `url` (trusting `ca` for https) with a hard 2 s limit: (exit code, status, body, s).
fn curl_2s(ca: Option<&str>, url: &str, creds: Option<&str>) -> (i32, u16, String, f64) {
    let mut args = vec!["-sS", "--max-time", "2", "-w", "\n%{http_code}"];
    if let Some(ca) = ca {
        args.extend(["--cacert", ca]);
    }
    if let Some(c) = creds {
        args.extend(["-u", c]);
    }
    args.push(url);
    let t = std::time::Instant::now();
    let out = run("curl", &args);
    let secs = t.elapsed().as_secs_f64();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        out.status.code().unwrap_or(-1),
        code.trim().parse().unwrap_or(0),
        body.to_string(),
        secs,
    )
}

fn metric(body: &str, series: &str) -> f64 {
    schedlat_tests::scrape::sample(body, &format!("{series} "))
        .unwrap_or_else(|| panic!("no {series} in:\n{body}"))
}

fn dropped(body: &str, reason: &str) -> f64 {
    metric(
        body,
        &format!("schedlat_http_connections_dropped_total{{reason=\"{reason}\"}}"),
    )
}

/// 300 silent connections, then a scrape: it must be answered within 2 s, the connections
/// over the cap closed (least recently active first) and each one counted. Checked against
/// the kernel's view: the connections curl's scrape found closed are exactly those counted.
fn idle_connections_then_scrape(d: &Daemon, ca: Option<&str>, scheme: &str) {
    let conns = idle_connections(&d.addr, 300);
    // Let the daemon accept them all before the scrape arrives.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let url = format!("{scheme}://{}/metrics", d.addr);
    let (rc, status, body, secs) = curl_2s(ca, &url, None);
    eprintln!(
        "{scheme}: scrape behind 300 idle connections: curl exit {rc}, {status}, {secs:.3} s"
    );
    assert_eq!((rc, status), (0, 200), "{body}");
    assert!(
        body.contains("schedlat_program_attached{program=\"sched_switch\""),
        "{body}"
    );
    let max = metric(&body, "schedlat_http_connections_max");
    let evicted = dropped(&body, "evicted_idle");
    let open = metric(&body, "schedlat_http_connections");
    let closed = conns.iter().filter(|c| closed_by_server(c)).count();
    eprintln!(
        "{scheme}: cap {max}, open {open}, evicted {evicted}, closed as the client sees it {closed}"
    );
    assert!((8.0..300.0).contains(&max), "cap in effect {max}");
    assert!(open <= max, "{open} open over the cap {max}");
    assert!(
        evicted >= 301.0 - max,
        "300 idle + curl's over a cap of {max}: only {evicted} evicted"
    );
    assert_eq!(closed as f64, evicted, "closed connections vs counted");
    assert_eq!(dropped(&body, "over_limit"), 0.0, "no connection was busy");
}

#[test]
fn idle_connections_do_not_block_plain_scrapes_and_are_counted() {
    if !privileged_or_skip() {
        return;
    }
    // 256 open files, as a small LimitNOFILE would give: held connections must not use up
    // the descriptors the next scrape needs.
    let d = Daemon::start_limited(&[], Some(256), |addr| get(addr, "/healthz").is_some());
    idle_connections_then_scrape(&d, None, "http");
    assert!(d.stop().success());
}

#[test]
fn idle_connections_do_not_block_tls_scrapes_and_are_counted() {
    if !privileged_or_skip() {
        return;
    }
    let site = TlsSite::new("web-idle-tls", &[], 10);
    let ca = site.ca.clone();
    let d = site.start_daemon(&["--web.config.file", &site.web]);
    // Silent connections never send a ClientHello: each holds a handshake.
    idle_connections_then_scrape(&d, Some(&ca), "https");
    assert!(d.stop().success());
}

/// Polls until `cond` holds, at most `secs`; false if it never did.
fn within(secs: f64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64(secs);
    loop {
        if cond() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn silent_slow_and_idle_clients_are_cut_off_by_the_timeouts_and_counted() {
    if !privileged_or_skip() {
        return;
    }
    use std::io::{Read as _, Write as _};
    let dir = TempDir::new("web-timeouts");
    let cfg = dir.path("schedlat.toml");
    std::fs::write(
        &cfg,
        "[http]\nheader_read_timeout_secs = 1\nidle_timeout_secs = 4\n",
    )
    .unwrap();
    let d = Daemon::start_with(&["--config", &cfg]);
    let t0 = std::time::Instant::now();
    // Silent from the start.
    let silent = std::net::TcpStream::connect(&d.addr).unwrap();
    // Slowloris: a header byte every 200 ms, never the end of the headers.
    let slow = std::net::TcpStream::connect(&d.addr).unwrap();
    let dribble = {
        let mut s = slow.try_clone().unwrap();
        std::thread::spawn(move || {
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n");
            for _ in 0..25 {
                std::thread::sleep(std::time::Duration::from_millis(200));
                if s.write_all(b"X").is_err() {
                    break;
                }
            }
        })
    };
    // Keep-alive: one whole request and its answer, then quiet.
    let mut idle = std::net::TcpStream::connect(&d.addr).unwrap();
    write!(idle, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 256];
    let n = idle.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    let idle_since = std::time::Instant::now();
    assert!(
        within(3.0, || closed_by_server(&silent) && closed_by_server(&slow)),
        "silent and slow clients still connected after {:?} (header_read_timeout_secs 1)",
        t0.elapsed()
    );
    eprintln!(
        "silent and slowloris clients closed after {:?}",
        t0.elapsed()
    );
    assert!(
        idle_since.elapsed().as_secs_f64() < 3.5 && !closed_by_server(&idle),
        "keep-alive connection closed before idle_timeout_secs 4"
    );
    assert!(
        within(6.0, || closed_by_server(&idle)),
        "keep-alive connection open after {:?} idle (idle_timeout_secs 4)",
        idle_since.elapsed()
    );
    eprintln!("idle keep-alive closed after {:?}", idle_since.elapsed());
    dribble.join().unwrap();
    let body = get(&d.addr, "/metrics").unwrap();
    assert_eq!(dropped(&body, "header_timeout"), 2.0, "{body}");
    assert_eq!(dropped(&body, "idle_timeout"), 1.0);
    assert!(d.stop().success());
}

#[test]
fn a_silent_tls_client_is_cut_off_by_the_handshake_timeout_and_counted() {
    if !privileged_or_skip() {
        return;
    }
    let site = TlsSite::new("web-hs-timeout", &[], 10);
    let cfg = site.dir.path("schedlat.toml");
    std::fs::write(
        &cfg,
        format!(
            "web_config = \"{}\"\n[http]\ntls_handshake_timeout_secs = 1\n",
            site.web
        ),
    )
    .unwrap();
    let ca = site.ca.clone();
    let d = site.start_daemon(&["--config", &cfg]);
    let t0 = std::time::Instant::now();
    let silent = std::net::TcpStream::connect(&d.addr).unwrap();
    assert!(
        within(3.0, || closed_by_server(&silent)),
        "silent TLS client still connected after {:?}",
        t0.elapsed()
    );
    eprintln!("silent TLS client closed after {:?}", t0.elapsed());
    let (rc, status, body, _) = curl_2s(Some(&ca), &format!("https://{}/metrics", d.addr), None);
    assert_eq!((rc, status), (0, 200), "{body}");
    assert_eq!(dropped(&body, "tls_handshake_timeout"), 1.0, "{body}");
    assert!(d.stop().success());
}

#[test]
fn concurrent_scrapes_share_renders() {
    if !privileged_or_skip() {
        return;
    }
    let d = Daemon::start();
    let renders = |body: &str| metric(body, "schedlat_http_renders_total{result=\"ok\"}");
    let before = renders(&get(&d.addr, "/metrics").unwrap());
    // 32 scrapers at once, as a storm (or many Prometheus replicas) would.
    let start = std::sync::Arc::new(std::sync::Barrier::new(32));
    let scrapers: Vec<_> = (0..32)
        .map(|_| {
            let (addr, start) = (d.addr.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                get(&addr, "/metrics").expect("scrape in the storm")
            })
        })
        .collect();
    let bodies: Vec<String> = scrapers.into_iter().map(|s| s.join().unwrap()).collect();
    for b in &bodies {
        assert!(b.contains("schedlat_program_attached{program=\"sched_switch\""));
    }
    let after = get(&d.addr, "/metrics").unwrap();
    let made = renders(&after) - before;
    let shared = metric(&after, "schedlat_http_scrapes_shared_total");
    eprintln!("32 concurrent scrapes: {made} renders, {shared} answered with a shared body");
    assert!(
        (1.0..=9.0).contains(&made),
        "{made} renders for 32 concurrent scrapes"
    );
    assert!(shared >= 24.0, "{shared} shared");
    assert!(d.stop().success());
}

#[test]
fn a_flood_of_wrong_passwords_at_bcrypt_cost_12_does_not_starve_scrapes() {
    if !privileged_or_skip() {
        return;
    }
    let site = TlsSite::new("web-bcrypt12", &[("prom", "s3cret")], 12);
    let ca = site.ca.clone();
    let d = site.start_daemon(&["--web.config.file", &site.web]);
    let url = format!("https://{}/metrics", d.addr);
    // The scraper's credentials verify once, before the flood.
    assert_eq!(curl(&ca, &url, Some("prom:s3cret")).1, 200);

    // 8 client addresses guessing as fast as the daemon answers, for 8 s: the per-client
    // limits let ~10 checks a second through in total, each ~0.2-0.4 s of bcrypt.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (1..=8)
        .map(|i| {
            let (ca, url, stop) = (ca.clone(), url.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut codes = std::collections::BTreeMap::<String, u32>::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let out = run(
                        "curl",
                        &[
                            "-s",
                            "--max-time",
                            "30",
                            "--cacert",
                            &ca,
                            "--interface",
                            &format!("127.0.0.{}", 10 + i),
                            "-u",
                            "prom:wrong",
                            "-o",
                            "/dev/null",
                            "-w",
                            "%{http_code}",
                            &url,
                        ],
                    );
                    *codes
                        .entry(String::from_utf8_lossy(&out.stdout).into_owned())
                        .or_default() += 1;
                }
                codes
            })
        })
        .collect();
    std::thread::sleep(std::time::Duration::from_secs(2));
    let mut latencies = Vec::new();
    for _ in 0..8 {
        let (rc, status, body, secs) = curl_2s(Some(&ca), &url, Some("prom:s3cret"));
        latencies.push(secs);
        assert_eq!(
            (rc, status),
            (0, 200),
            "valid scrape during the flood after {latencies:?} s: {body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut codes = std::collections::BTreeMap::<String, u32>::new();
    for f in flooders {
        for (c, n) in f.join().unwrap() {
            *codes.entry(c).or_default() += n;
        }
    }
    eprintln!("valid scrapes during the flood took {latencies:?} s; the flood got {codes:?}");
    let (_, _, body, _) = curl_2s(Some(&ca), &url, Some("prom:s3cret"));
    let wrong = metric(
        &body,
        "schedlat_web_auth_failures_total{reason=\"wrong_credentials\"}",
    );
    let shed = metric(
        &body,
        "schedlat_http_requests_shed_total{reason=\"auth_queue_full\"}",
    );
    eprintln!("{wrong} wrong passwords checked, {shed} refused with 503 (checks queue full)");
    assert!(wrong >= 4.0, "the flood's passwords were checked: {wrong}");
    assert_eq!(
        codes.get("503").copied().unwrap_or(0) as f64,
        shed,
        "503s seen vs counted"
    );
    assert!(d.stop().success());
}
