//! The HTTPS set-up of the daemon's web tests: a self-signed certificate for 127.0.0.1 made by
//! Debian's openssl, bcrypt hashes made by htpasswd (implementations other than the daemon's),
//! curl against them, and [`TlsSite`], the TLS + basic-auth web config and a daemon serving it.
use crate::{TempDir, ok, run, scrape::Daemon};

/// A self-signed server certificate for 127.0.0.1 (it is its own CA for curl), as
/// `server.crt` and `server.key` in `dir`.
pub fn self_signed(dir: &TempDir) {
    cert_into(&dir.0, "schedlat-test", None);
}

/// A self-signed certificate for 127.0.0.1 with subject CN=`cn` (and serial `serial`, hex,
/// when given), as `<dir>/server.crt` and `<dir>/server.key`.
pub fn cert_into(dir: &std::path::Path, cn: &str, serial: Option<&str>) {
    std::fs::create_dir_all(dir).unwrap();
    let subject = format!("/CN={cn}");
    let (key, crt) = (dir.join("server.key"), dir.join("server.crt"));
    let mut args = vec![
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
        &subject,
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        crt.to_str().unwrap(),
    ];
    let serial = serial.map(|s| format!("0x{s}"));
    if let Some(s) = &serial {
        args.extend(["-set_serial", s]);
    }
    ok("openssl", &args);
}

/// bcrypt hash of `password` at `cost` by htpasswd.
pub fn htpasswd(user: &str, password: &str, cost: u32) -> String {
    let line = ok("htpasswd", &["-nbBC", &cost.to_string(), user, password]);
    let (u, hash) = line.trim().split_once(':').expect("user:hash");
    assert_eq!(u, user);
    hash.to_string()
}

/// curl over HTTPS trusting only `ca`: (exit code, HTTP status, response headers + body).
pub fn curl(ca: &str, url: &str, creds: Option<&str>) -> (i32, u16, String) {
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

/// A web config serving TLS with a self-signed certificate and, optionally, basic auth: the
/// files in a fresh [`TempDir`], paths in web.yml relative to its directory.
pub struct TlsSite {
    pub dir: TempDir,
    /// The web config (`--web.config.file`, or `web_config` in a config file).
    pub web: String,
    /// The server certificate, which is its own CA.
    pub ca: String,
}

impl TlsSite {
    /// `users` (name, password) go into `basic_auth_users`, hashed by htpasswd at bcrypt
    /// `cost`; none: no authentication.
    pub fn new(tag: &str, users: &[(&str, &str)], cost: u32) -> Self {
        let dir = TempDir::new(tag);
        self_signed(&dir);
        let mut yaml =
            String::from("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n");
        if !users.is_empty() {
            yaml.push_str("basic_auth_users:\n");
            for (user, password) in users {
                yaml.push_str(&format!("  {user}: '{}'\n", htpasswd(user, password, cost)));
            }
        }
        let web = dir.path("web.yml");
        std::fs::write(&web, yaml).unwrap();
        let ca = dir.path("server.crt");
        Self { dir, web, ca }
    }

    /// A daemon started with `args` (e.g. `["--web.config.file", &site.web]`), once its
    /// HTTPS /healthz answers 200.
    pub fn start_daemon(&self, args: &[&str]) -> Daemon {
        Daemon::start_until(args, |addr| {
            curl(&self.ca, &format!("https://{addr}/healthz"), None).1 == 200
        })
    }
}
