//! `schedlat check`: what this kernel and this process's privileges allow, and whether
//! capture, daemon and Go probes work here. Capture and daemon are proven by loading and
//! attaching their programs for real (then detaching), not guessed from the feature table.
use std::path::Path;

use crate::{
    cli::{CheckArgs, Cli, Format},
    config::DaemonConfig,
    host::privs::effective_caps,
    kernel::{
        btf::KernelBtf,
        features::{Feature, KernelFeatures},
        probes::{ProbeOptions, Probes},
        tracefs::Tracefs,
    },
    model::UsageError,
};

/// Capabilities schedlat cares about (include/uapi/linux/capability.h).
const CAPS: &[(u32, &str, &str)] = &[
    (39, "CAP_BPF", "load programs"),
    (38, "CAP_PERFMON", "attach tracepoints and uprobes"),
    (21, "CAP_SYS_ADMIN", "instead of CAP_BPF + CAP_PERFMON"),
    (
        19,
        "CAP_SYS_PTRACE",
        "read other users' Go processes (daemon [go], go-stats)",
    ),
];

#[derive(Debug, serde::Serialize)]
struct Verdict {
    what: &'static str,
    works: bool,
    detail: String,
}

#[derive(Debug, serde::Serialize)]
struct FeatureRow {
    name: &'static str,
    feature: Feature,
    present: bool,
    since: &'static str,
    detected_by: &'static str,
    used_for: &'static str,
    without: &'static str,
}

#[derive(Debug, serde::Serialize)]
struct Capability {
    name: &'static str,
    held: bool,
    why: &'static str,
}

#[derive(Debug, serde::Serialize)]
struct Report {
    kernel: String,
    arch: &'static str,
    features: Vec<FeatureRow>,
    capabilities: Vec<Capability>,
    tracefs: Option<String>,
    cgroup_v2: Option<String>,
    cgroup_v1_cpu: Option<String>,
    verdicts: Vec<Verdict>,
}

pub fn run(cli: &Cli, a: &CheckArgs) -> anyhow::Result<()> {
    let tracefs = match &cli.tracefs {
        Some(p) => Tracefs::new(p),
        None => Tracefs::discover(),
    };
    let btf = KernelBtf::open(&cli.btf);
    let features = match (&btf, &tracefs) {
        (Ok(b), Ok(t)) => Some(KernelFeatures::detect(b, t, Path::new("/sys"))),
        _ => None,
    };
    // Kept for the text report; the parsed BTF (megabytes) is not needed past detection.
    let btf_err = btf.err().map(|e| e.to_string());
    let caps = effective_caps();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let daemon_cfg = match &a.config {
        Some(p) => DaemonConfig::from_file(p)?,
        None => DaemonConfig::default(),
    };

    let mut verdicts = Vec::new();
    let capture = ProbeOptions {
        track_tasks: true,
        futex: a.futex,
        slow_threshold: Some(std::time::Duration::from_millis(10)),
        tracefs: cli.tracefs.clone(),
        btf: cli.btf.clone(),
        hash_stamps: cli.hash_stamps,
        ..Default::default()
    };
    verdicts.push(trial("capture", &capture));
    let daemon = ProbeOptions {
        futex: daemon_cfg.futex,
        map_sizes: daemon_cfg.maps,
        tracefs: cli.tracefs.clone(),
        btf: cli.btf.clone(),
        hash_stamps: cli.hash_stamps,
        ..Default::default()
    };
    verdicts.push(trial("daemon", &daemon));
    let probes_ok = verdicts.iter().all(|v| v.works);
    let uprobes = features.as_ref().is_some_and(|f| f.has(Feature::Uprobes));
    verdicts.push(Verdict {
        what: "go probes",
        works: uprobes && probes_ok,
        detail: match (uprobes, probes_ok) {
            (true, true) => "uprobes present; programs load here".into(),
            (false, _) => "no uprobes on this kernel (CONFIG_UPROBE_EVENTS): captures keep \
                           the Go runtime's own statistics (--go-probes off)"
                .into(),
            (true, false) => {
                "uprobes present, but schedlat's programs do not load here (above)".into()
            }
        },
    });

    let report = Report {
        kernel: features
            .as_ref()
            .map_or_else(crate::kernel::features::kernel_release, |f| {
                f.release.clone()
            }),
        arch: std::env::consts::ARCH,
        features: features
            .iter()
            .flat_map(|f| f.rows())
            .map(|(s, present)| FeatureRow {
                name: s.name,
                feature: s.feature,
                present,
                since: s.since,
                detected_by: s.detected_by,
                used_for: s.used_for,
                without: s.without,
            })
            .collect(),
        capabilities: CAPS
            .iter()
            .map(|&(bit, name, why)| Capability {
                name,
                held: caps & (1u64 << bit) != 0,
                why,
            })
            .collect(),
        tracefs: tracefs
            .as_ref()
            .ok()
            .map(|t| t.root().display().to_string()),
        cgroup_v2: crate::host::cgroup::v2_mount()
            .ok()
            .map(|p| p.display().to_string()),
        cgroup_v1_cpu: crate::host::cpulimit::parse_v1_mount(&mountinfo, "cpu").map(|(m, _)| m),
        verdicts,
    };
    match a.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Text => print_text(&report, btf_err, tracefs.err()),
    }
    let failed: Vec<&str> = report
        .verdicts
        .iter()
        .filter(|v| !v.works)
        .map(|v| v.what)
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(UsageError(format!("will not work here: {}", failed.join(", "))).into())
    }
}

/// Load and attach with `opts`, then detach: the only proof that the verifier takes it.
fn trial(what: &'static str, opts: &ProbeOptions) -> Verdict {
    match Probes::load(opts) {
        Ok(p) => Verdict {
            what,
            works: true,
            detail: format!(
                "programs load and attach (futex mode {}{}){}",
                p.futex,
                if p.futex == opts.futex {
                    String::new()
                } else {
                    format!(", asked {}", opts.futex)
                },
                if what != "daemon" || p.maps_readable_unprivileged() {
                    ""
                } else {
                    "; this kernel checks CAP_BPF on every map read, so the daemon keeps CAP_BPF"
                }
            ),
        },
        Err(e) => Verdict {
            what,
            works: false,
            detail: crate::model::error_chain(&e),
        },
    }
}

fn print_text(
    r: &Report,
    btf_err: Option<String>,
    tracefs_err: Option<crate::kernel::tracefs::TracefsError>,
) {
    println!("kernel {} ({})", r.kernel, r.arch);
    if let Some(e) = btf_err {
        println!("  BTF: {e}");
    }
    if let Some(e) = tracefs_err {
        println!("  tracefs: {e}");
    }
    println!("\nkernel features (detected, not assumed from the version):");
    for f in &r.features {
        let state = if f.present { "present" } else { "MISSING" };
        println!(
            "  {state:<8} {:<30} since {:<8} {}",
            f.name, f.since, f.used_for
        );
        if !f.present {
            println!("  {:<8} {:<30} without it: {}", "", "", f.without);
        }
    }
    println!("\ncapabilities (effective):");
    for c in &r.capabilities {
        let held = if c.held { "yes" } else { "no" };
        println!("  {held:<4} {:<15} {}", c.name, c.why);
    }
    println!("\nmounts:");
    let show = |o: &Option<String>| o.clone().unwrap_or_else(|| "not mounted".into());
    println!("  tracefs        {}", show(&r.tracefs));
    println!("  cgroup v2      {}", show(&r.cgroup_v2));
    println!("  cgroup v1 cpu  {}", show(&r.cgroup_v1_cpu));
    println!("\nhere:");
    for v in &r.verdicts {
        println!(
            "  {:<10} {:<4} {}",
            v.what,
            if v.works { "yes" } else { "NO" },
            v.detail
        );
    }
}
