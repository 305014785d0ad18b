//! Daemon configuration (TOML). Unknown keys are errors that name the key.
use std::{net::SocketAddr, path::Path};

use serde::Deserialize;

use crate::probes::{FutexMode, MapSizes};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9725";

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// Address for GET /metrics and /healthz. Loopback by default: metrics reveal workload
    /// names (cgroup paths).
    pub listen: SocketAddr,
    /// How to trace futex waits: "sched" (from the scheduler probes, no extra cost, no return
    /// codes), "syscall" (exact with outcomes; every syscall on the host pays ~125 ns for the
    /// syscall tracepoints' slow path) or "off".
    pub futex: FutexMode,
    /// Most distinct `cgroup` label values per metric; more are folded into `cgroup="other"`.
    pub max_cgroups: usize,
    /// Prometheus buckets per power of two (1, 2, 4 or 8). The kernel keeps 8.
    pub buckets_per_octave: u32,
    /// How long the final counts of a removed cgroup keep being exported under its own label.
    pub removed_cgroup_ttl_secs: u64,
    /// Drop every capability once the programs are attached (nothing after needs one).
    pub drop_capabilities: bool,
    pub maps: MapSizes,
    /// Go programs' own scheduler statistics, read from their memory at scrape time.
    pub go: GoConfig,
}

/// `[go]`: which Go processes to read (see crate::gowatch). A process is selected when it is a
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
        }
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            futex: FutexMode::Sched,
            max_cgroups: 500,
            buckets_per_octave: 2,
            removed_cgroup_ttl_secs: 600,
            drop_capabilities: true,
            maps: MapSizes::default(),
            go: GoConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
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

impl DaemonConfig {
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
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
                    format!("line {line_no}: `{line}`: {}", e.message().trim())
                }
                None => e.message().trim().to_string(),
            },
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

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
        let m = &self.maps;
        for (key, v) in [
            ("maps.runq_start", m.runq_start),
            ("maps.futex_start", m.futex_start),
            ("maps.hists", m.hists),
            ("maps.tasks", m.tasks),
            ("maps.wake_pairs", m.wake_pairs),
        ] {
            if !(16..=4_194_304).contains(&v) {
                return Err(err(
                    key,
                    v.to_string(),
                    "map sizes must be 16..=4194304 entries",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
