//! Daemon configuration (TOML). Unknown keys are errors that name the key.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    http::HttpLimits,
    model::{ClassOf, Classify, ErrorClass, FutexMode, MapSizes},
};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9725";

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Address for GET /metrics and /healthz. Loopback by default: metrics reveal workload
    /// names (cgroup paths).
    pub listen: SocketAddr,
    /// How to trace futex waits: "auto" ("sched" where the kernel can, else "off"), "sched"
    /// (from the scheduler probes, no extra cost, no return codes), "syscall" (exact with outcomes; every syscall on the host pays ~125 ns for the
    /// syscall tracepoints' slow path) or "off".
    pub futex: FutexMode,
    /// Most distinct `cgroup` label values per metric; more are folded into `cgroup="other"`.
    pub max_cgroups: usize,
    /// Per cgroup, how many preempting cgroups keep their own `by` label in
    /// `schedlat_preemptions_total` (the most frequent); the rest are counted as `by="other"`.
    pub preemptors_per_cgroup: usize,
    /// Prometheus buckets per power of two (1, 2, 4 or 8). The kernel keeps 8.
    pub buckets_per_octave: u32,
    /// How long the final counts of a removed cgroup keep being exported under its own label.
    pub removed_cgroup_ttl_secs: u64,
    /// Export the programs' own run time (`schedlat_program_run_seconds_total`), from the
    /// kernel's BPF run-time accounting, on while the daemon runs. It is not free: the kernel
    /// then reads its clock twice around every program run (~50 ns per switch measured here).
    pub self_cost: bool,
    /// Drop every capability once the programs are attached (nothing after needs one).
    pub drop_capabilities: bool,
    /// Switch to this user (name or uid; group from its passwd entry) once attached.
    pub user: Option<String>,
    /// Web config (YAML, the Prometheus exporters' format): TLS and basic auth for /metrics.
    pub web_config: Option<PathBuf>,
    /// What HTTP clients may cost: connections, timeouts, shared renders.
    pub http: HttpLimits,
    pub maps: MapSizes,
    /// Go programs' own scheduler statistics, read from their memory at scrape time.
    pub go: GoConfig,
}

/// `[go]`: which Go processes to read (see crate::go::watch). A process is selected when it is a
/// Go program (has .go.buildinfo) and, if any selector list is non-empty, matches one entry of
/// any list.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct GoConfig {
    pub enabled: bool,
    /// Executable paths as /proc/PID/exe shows them (in the process's mount namespace).
    pub binaries: Vec<String>,
    /// Process names (/proc/PID/comm, 15 characters at most).
    pub comms: Vec<String>,
    /// cgroup v2 paths: processes in this cgroup or below it.
    pub cgroups: Vec<String>,
    /// Most processes read per scrape (lowest pids first); the rest are counted, not read.
    pub max_processes: usize,
    /// Most distinct (binary, cgroup) label sets; more are folded into binary="other".
    pub max_series: usize,
    /// How long a (binary, cgroup) series whose processes all exited keeps being exported
    /// with its final counts; then it is dropped (and restarts from 0 if the binary returns).
    pub exited_series_ttl_secs: u64,
}

impl Default for GoConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            binaries: Vec::new(),
            comms: Vec::new(),
            cgroups: Vec::new(),
            max_processes: 256,
            max_series: 200,
            exited_series_ttl_secs: 600,
        }
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            futex: FutexMode::Auto,
            max_cgroups: 500,
            preemptors_per_cgroup: 5,
            buckets_per_octave: 2,
            removed_cgroup_ttl_secs: 600,
            self_cost: false,
            drop_capabilities: true,
            user: None,
            web_config: None,
            http: HttpLimits::default(),
            maps: MapSizes::default(),
            go: GoConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("invalid config {path}: {message}")]
    Parse { path: String, message: String },
    #[error("invalid config {path}: {key} = {value}: {fix}")]
    Value {
        path: String,
        key: &'static str,
        value: String,
        fix: &'static str,
    },
}

impl Classify for ConfigError {
    /// A config the user wrote or pointed at.
    fn class(&self) -> ErrorClass {
        ErrorClass::Usage
    }
}
inventory::submit!(ClassOf::of::<ConfigError>());

impl DaemonConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            cause: source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parse and validate; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            // toml's message names unknown keys, but not the key of a bad value: quote the line.
            message: match e.span() {
                Some(span) => {
                    let line_no = text[..span.start.min(text.len())].matches('\n').count() + 1;
                    let line = text.lines().nth(line_no - 1).unwrap_or("").trim();
                    let hint = key_of_line(text, line_no)
                        .and_then(|k| hint_for(&k))
                        .map(|h| format!("; {h}"))
                        .unwrap_or_default();
                    format!("line {line_no}: `{line}`: {}{hint}", e.message().trim())
                }
                None => e.message().trim().to_string(),
            },
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Every key, dotted, with what a valid value looks like.
    pub const KEYS: &'static [(&'static str, &'static str)] = &[
        ("listen", "use HOST:PORT, e.g. \"127.0.0.1:9725\""),
        ("futex", "use \"auto\", \"sched\", \"syscall\" or \"off\""),
        ("max_cgroups", "use an integer 1..=100000"),
        ("preemptors_per_cgroup", "use an integer 1..=100"),
        ("buckets_per_octave", "use 1, 2, 4 or 8"),
        (
            "removed_cgroup_ttl_secs",
            "use a whole number of seconds, e.g. 600",
        ),
        ("self_cost", "use true or false"),
        ("drop_capabilities", "use true or false"),
        (
            "user",
            "use a user name or uid as a string, e.g. \"nobody\"",
        ),
        (
            "web_config",
            "use the path of a YAML web config, e.g. \"/etc/schedlat/web.yml\"",
        ),
        (
            "http",
            "[http] is a table: max_connections, header_read_timeout_secs, idle_timeout_secs, \
             tls_handshake_timeout_secs, metrics_cache_ms, render_timeout_secs, max_waiting_scrapes",
        ),
        ("http.max_connections", "use 8..=65536"),
        ("http.header_read_timeout_secs", "use 1..=3600 seconds"),
        ("http.idle_timeout_secs", "use 1..=3600 seconds"),
        ("http.tls_handshake_timeout_secs", "use 1..=3600 seconds"),
        ("http.metrics_cache_ms", "use 0..=60000 milliseconds"),
        ("http.render_timeout_secs", "use 1..=3600 seconds"),
        ("http.max_waiting_scrapes", "use 1..=65536"),
        ("maps", "[maps] is a table of map sizes"),
        ("maps.runq_start", TASK_MAP_FIX),
        ("maps.futex_start", TASK_MAP_FIX),
        ("maps.hists", MAP_FIX),
        ("maps.tasks", MAP_FIX),
        ("maps.wake_pairs", MAP_FIX),
        ("maps.preempts", MAP_FIX),
        (
            "go",
            "[go] is a table: enabled, binaries, comms, cgroups, max_processes, max_series",
        ),
        ("go.enabled", "use true or false"),
        (
            "go.binaries",
            "use a list of executable paths, e.g. [\"/usr/local/bin/api\"]",
        ),
        ("go.comms", "use a list of process names, e.g. [\"api\"]"),
        (
            "go.cgroups",
            "use a list of cgroup v2 paths, e.g. [\"/kubepods.slice\"]",
        ),
        ("go.max_processes", "use an integer 1..=100000"),
        ("go.max_series", "use an integer 1..=100000"),
        (
            "go.exited_series_ttl_secs",
            "use a whole number of seconds, e.g. 600 (0 drops a series at its first scrape without processes)",
        ),
    ];

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let err = |key, value: String, fix| ConfigError::Value {
            path: origin.to_string(),
            key,
            value,
            fix,
        };
        if !matches!(self.buckets_per_octave, 1 | 2 | 4 | 8) {
            return Err(err(
                "buckets_per_octave",
                self.buckets_per_octave.to_string(),
                "use 1, 2, 4 or 8",
            ));
        }
        if self.max_cgroups == 0 || self.max_cgroups > 100_000 {
            return Err(err(
                "max_cgroups",
                self.max_cgroups.to_string(),
                "use 1..=100000",
            ));
        }
        if !(1..=100).contains(&self.preemptors_per_cgroup) {
            return Err(err(
                "preemptors_per_cgroup",
                self.preemptors_per_cgroup.to_string(),
                "use 1..=100",
            ));
        }
        if self.user.as_deref().is_some_and(|u| u.trim().is_empty()) {
            return Err(err(
                "user",
                "\"\"".into(),
                "use a user name or uid, e.g. \"nobody\", or remove the key to stay root",
            ));
        }
        if self
            .web_config
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(err(
                "web_config",
                "\"\"".into(),
                "use the path of a YAML web config, or remove the key for plain HTTP",
            ));
        }
        let g = &self.go;
        if g.max_processes == 0 || g.max_processes > 100_000 {
            return Err(err(
                "go.max_processes",
                g.max_processes.to_string(),
                "use 1..=100000",
            ));
        }
        if g.max_series == 0 || g.max_series > 100_000 {
            return Err(err(
                "go.max_series",
                g.max_series.to_string(),
                "use 1..=100000",
            ));
        }
        if let Some((key, value, fix)) = self.http.invalid() {
            return Err(err(key, value, fix));
        }
        let m = &self.maps;
        // 0: sized from the host's task limit (kernel::probes::task_map_for_host).
        for (key, v) in [
            ("maps.runq_start", m.runq_start),
            ("maps.futex_start", m.futex_start),
        ] {
            if v != 0 && !(16..=4_194_304).contains(&v) {
                return Err(err(key, v.to_string(), TASK_MAP_FIX));
            }
        }
        for (key, v) in [
            ("maps.hists", m.hists),
            ("maps.tasks", m.tasks),
            ("maps.wake_pairs", m.wake_pairs),
            ("maps.preempts", m.preempts),
        ] {
            if !(16..=4_194_304).contains(&v) {
                return Err(err(key, v.to_string(), MAP_FIX));
            }
        }
        Ok(())
    }
}

const MAP_FIX: &str = "map sizes must be 16..=4194304 entries";
const TASK_MAP_FIX: &str =
    "use 0 (as many as the host can have tasks, the default) or 16..=4194304 entries";

/// The dotted key set on line `line_no` (1-based), e.g. `maps.hists` under `[maps]`.
fn key_of_line(text: &str, line_no: usize) -> Option<String> {
    let lines: Vec<&str> = text.lines().collect();
    let line = lines.get(line_no.checked_sub(1)?)?.trim();
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches(['"', '\'']);
    let table = lines[..line_no - 1].iter().rev().find_map(|l| {
        let l = l.trim();
        l.strip_prefix('[')
            .and_then(|l| l.split(']').next())
            .map(|t| t.trim().to_string())
    });
    Some(match table {
        Some(t) => format!("{t}.{key}"),
        None => key.to_string(),
    })
}

fn hint_for(key: &str) -> Option<&'static str> {
    DaemonConfig::KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, h)| *h)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A config the user wrote is theirs to fix: exit 2, also under added context.
    #[test]
    fn config_errors_are_usage() {
        let e = ConfigError::Parse {
            path: "/etc/schedlat/schedlat.toml".into(),
            message: "expected a table".into(),
        };
        let e = anyhow::Error::from(e).context("starting the daemon");
        assert_eq!(ErrorClass::of(&e), ErrorClass::Usage);
    }

    /// Errors put their cause in the message and do not return it again as `source()`, so
    /// the chain the CLI prints (`{:#}`) names it once.
    #[test]
    fn a_cause_is_printed_once() {
        let e = DaemonConfig::from_file(Path::new("/nonexistent/schedlat.toml")).unwrap_err();
        let chain = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(
            chain.matches("No such file or directory").count(),
            1,
            "{chain}"
        );
        let e = crate::host::cpulimit::CpuLimitError::Read {
            pid: 1,
            path: "/proc/1/cgroup".into(),
            cause: std::io::Error::from_raw_os_error(libc::ENOENT),
        };
        let chain = format!("{:#}", anyhow::Error::from(e));
        assert_eq!(
            chain.matches("No such file or directory").count(),
            1,
            "{chain}"
        );
    }

    #[test]
    fn defaults_and_full_file() {
        assert_eq!(
            DaemonConfig::parse("", "t").unwrap(),
            DaemonConfig::default()
        );
        let c = DaemonConfig::parse(
            "listen = \"0.0.0.0:9999\"\nfutex = \"off\"\nmax_cgroups = 10\nbuckets_per_octave = 4\n\
             [maps]\nrunq_start = 1024\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.futex, FutexMode::Off);
        assert_eq!(
            DaemonConfig::parse("futex = \"syscall\"", "t")
                .unwrap()
                .futex,
            FutexMode::Syscall
        );
        assert_eq!(c.maps.runq_start, 1024);
        assert_eq!(c.maps.hists, MapSizes::default().hists);
        let c = DaemonConfig::parse("[go]\nenabled = true\ncomms = [\"api\"]\n", "t").unwrap();
        assert!(c.go.enabled);
        assert_eq!(c.go.comms, vec!["api".to_string()]);
        let e = DaemonConfig::parse("[go]\ncomm = []\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("comm"), "{e}");
        let e = DaemonConfig::parse("[go]\nmax_processes = 0\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("go.max_processes"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = DaemonConfig::parse("listne = \"x\"", "/etc/schedlat.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("listne") && e.contains("/etc/schedlat.toml"),
            "{e}"
        );
        let e = DaemonConfig::parse("[maps]\nrunq = 5", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("runq"), "{e}");
    }

    #[test]
    fn bad_values_name_key_and_fix() {
        let e = DaemonConfig::parse("buckets_per_octave = 3", "t")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("buckets_per_octave") && e.contains("1, 2, 4 or 8"),
            "{e}"
        );
        let e = DaemonConfig::parse("[maps]\nhists = 1", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("maps.hists"), "{e}");
        let e = DaemonConfig::parse("listen = \"nope\"", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen") || e.contains("socket address"), "{e}");
        let e = DaemonConfig::parse("\nfutex = true", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2: `futex = true`"), "{e}");
        let e = DaemonConfig::parse("futex = \"fast\"", "t")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("fast") && e.contains("sched") && e.contains("syscall"),
            "{e}"
        );
    }

    /// Every key with bad values: the error names the key and says what to use.
    #[test]
    fn each_keys_bad_values_name_the_key_and_the_fix() {
        for (text, key, fix) in [
            ("listen = \"nope\"", "listen", "HOST:PORT"),
            ("listen = 9725", "listen", "HOST:PORT"),
            ("listen = \"127.0.0.1\"", "listen", "HOST:PORT"),
            (
                "futex = \"fast\"",
                "futex",
                "\"sched\", \"syscall\" or \"off\"",
            ),
            ("futex = 1", "futex", "\"sched\""),
            ("max_cgroups = 0", "max_cgroups", "1..=100000"),
            ("max_cgroups = 100001", "max_cgroups", "1..=100000"),
            ("max_cgroups = -1", "max_cgroups", "1..=100000"),
            ("max_cgroups = \"5\"", "max_cgroups", "1..=100000"),
            (
                "preemptors_per_cgroup = 0",
                "preemptors_per_cgroup",
                "1..=100",
            ),
            (
                "preemptors_per_cgroup = 101",
                "preemptors_per_cgroup",
                "1..=100",
            ),
            (
                "preemptors_per_cgroup = \"all\"",
                "preemptors_per_cgroup",
                "1..=100",
            ),
            (
                "buckets_per_octave = 3",
                "buckets_per_octave",
                "1, 2, 4 or 8",
            ),
            (
                "buckets_per_octave = 1.5",
                "buckets_per_octave",
                "1, 2, 4 or 8",
            ),
            (
                "removed_cgroup_ttl_secs = -5",
                "removed_cgroup_ttl_secs",
                "seconds",
            ),
            (
                "removed_cgroup_ttl_secs = \"10m\"",
                "removed_cgroup_ttl_secs",
                "seconds",
            ),
            (
                "drop_capabilities = \"yes\"",
                "drop_capabilities",
                "true or false",
            ),
            ("user = \"\"", "user", "\"nobody\""),
            ("user = 65534", "user", "as a string"),
            ("web_config = \"\"", "web_config", "YAML"),
            ("web_config = true", "web_config", "YAML"),
            ("maps = 5", "maps", "table"),
            ("[maps]\nrunq_start = 15", "maps.runq_start", "0 (as many"),
            (
                "[maps]\nfutex_start = 4194305",
                "maps.futex_start",
                "0 (as many",
            ),
            ("[maps]\nhists = 0", "maps.hists", "16..=4194304"),
            ("[maps]\ntasks = \"big\"", "maps.tasks", "16..=4194304"),
            ("[maps]\nwake_pairs = -1", "maps.wake_pairs", "16..=4194304"),
            ("[maps]\npreempts = 8", "maps.preempts", "16..=4194304"),
            ("http = 5", "http", "table"),
            (
                "[http]\nmax_connections = 7",
                "http.max_connections",
                "8..=65536",
            ),
            (
                "[http]\nheader_read_timeout_secs = 0",
                "http.header_read_timeout_secs",
                "1..=3600",
            ),
            (
                "[http]\nidle_timeout_secs = \"1m\"",
                "http.idle_timeout_secs",
                "1..=3600",
            ),
            (
                "[http]\ntls_handshake_timeout_secs = 3601",
                "http.tls_handshake_timeout_secs",
                "1..=3600",
            ),
            (
                "[http]\nmetrics_cache_ms = 60001",
                "http.metrics_cache_ms",
                "0..=60000",
            ),
            (
                "[http]\nrender_timeout_secs = -1",
                "http.render_timeout_secs",
                "1..=3600",
            ),
            (
                "[http]\nmax_waiting_scrapes = 0",
                "http.max_waiting_scrapes",
                "1..=65536",
            ),
        ] {
            let e = DaemonConfig::parse(text, "t.toml")
                .expect_err(text)
                .to_string();
            let key_shown = e.contains(&format!("{key} ="))
                || e.contains(&format!("`{}", key.rsplit('.').next().unwrap()));
            assert!(key_shown, "{text:?}: error does not name {key}: {e}");
            assert!(
                e.contains(fix),
                "{text:?}: error lacks the fix {fix:?}: {e}"
            );
            assert!(e.contains("t.toml"), "{e}");
        }
        let c = DaemonConfig::parse(
            "user = \"nobody\"\nweb_config = \"/etc/schedlat/web.yml\"",
            "t",
        )
        .unwrap();
        assert_eq!(c.user.as_deref(), Some("nobody"));
        assert_eq!(
            c.web_config.as_deref(),
            Some(Path::new("/etc/schedlat/web.yml"))
        );
    }

    mod prop {
        use proptest::prelude::*;

        use super::super::*;

        /// Values of every TOML type, good and bad for any key.
        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<i64>().prop_map(|v| v.to_string()),
                (0u64..5_000_000).prop_map(|v| v.to_string()),
                prop::sample::select(vec![1u32, 2, 3, 4, 8, 16]).prop_map(|v| v.to_string()),
                any::<f64>().prop_map(|v| format!("{v:?}")),
                any::<bool>().prop_map(|v| v.to_string()),
                "[a-z0-9.:/ ]{0,12}".prop_map(|v| format!("{v:?}")),
                prop::sample::select(vec![
                    "\"127.0.0.1:0\"",
                    "\"sched\"",
                    "\"off\"",
                    "\"nobody\"",
                    "[1, 2]",
                    "{ a = 1 }",
                    "\"\"",
                ])
                .prop_map(str::to_string),
            ]
        }

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                prop::sample::select(
                    DaemonConfig::KEYS
                        .iter()
                        .map(|(k, _)| k.to_string())
                        .collect::<Vec<_>>()
                ),
                "[a-z_]{1,10}",
            ]
        }

        /// A config line by line: `key = value` at top level or under [maps].
        fn document() -> impl Strategy<Value = String> {
            (
                prop::collection::vec((key(), value()), 0..6),
                prop::collection::vec(("[a-z_]{1,10}", value()), 0..3),
                any::<bool>(),
            )
                .prop_map(|(top, maps, with_maps)| {
                    let mut s = String::new();
                    for (k, v) in top {
                        // Dotted keys only make sense as [maps] entries here.
                        let k = k.replace("maps.", "");
                        s.push_str(&format!("{k} = {v}\n"));
                    }
                    if with_maps {
                        s.push_str("[maps]\n");
                        for (k, v) in maps {
                            s.push_str(&format!("{k} = {v}\n"));
                        }
                    }
                    s
                })
        }

        /// Random byte-level damage to a valid file: deletions, insertions, replacements.
        fn mutated() -> impl Strategy<Value = String> {
            let base = include_str!("../../deploy/schedlat.toml");
            prop::collection::vec(
                (
                    any::<prop::sample::Index>(),
                    0u8..3,
                    "[\\[\\]=\"'#a-z0-9 .\n-]{0,4}",
                ),
                1..6,
            )
            .prop_map(move |edits| {
                let mut s: Vec<char> = base.chars().collect();
                for (at, kind, ins) in edits {
                    let i = at.index(s.len() + 1);
                    match kind {
                        0 => {
                            let end = (i + ins.len().max(1)).min(s.len());
                            s.drain(i..end);
                        }
                        1 => {
                            s.splice(i..i, ins.chars());
                        }
                        _ => {
                            let end = (i + ins.chars().count()).min(s.len());
                            s.splice(i..end, ins.chars());
                        }
                    }
                }
                s.into_iter().collect()
            })
        }

        /// An error names the offending key (value errors) or the line (everything the TOML
        /// layer rejects), and always the file.
        fn check(text: &str) -> Result<(), TestCaseError> {
            match DaemonConfig::parse(text, "f.toml") {
                Ok(_) => {}
                Err(e @ ConfigError::Value { key, .. }) => {
                    prop_assert!(DaemonConfig::KEYS.iter().any(|(k, _)| *k == key));
                    let msg = e.to_string();
                    prop_assert!(msg.contains(key) && msg.contains("f.toml"), "{}", msg);
                }
                Err(e @ ConfigError::Parse { .. }) => {
                    let msg = e.to_string();
                    prop_assert!(
                        msg.starts_with("invalid config f.toml: line "),
                        "no line in {:?} for {:?}",
                        msg,
                        text
                    );
                }
                Err(e @ ConfigError::Read { .. }) => prop_assert!(false, "read error {}", e),
            }
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            #[test]
            fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
                check(&text)?;
            }

            #[test]
            fn arbitrary_documents_are_accepted_or_name_key_or_line(text in document()) {
                check(&text)?;
            }

            #[test]
            fn mutated_example_config_is_accepted_or_names_key_or_line(text in mutated()) {
                check(&text)?;
            }
        }
    }
}
