//! The one nightly toolchain the project uses: cargo-fuzz (sanitizers), clippy on the eBPF
//! crate (build-std for bpfel-unknown-none, which Debian's eBPF toolchain cannot lint: it ships
//! no clippy) and rustfmt (rustfmt.toml's import grouping is unstable: `cargo xtask fmt`).
//! Pinned by commit date, never a floating `nightly` that could move to another LLVM
//! (shared/docs/toolchain.md).
use std::process::Command;

use anyhow::Result;

use crate::cmd::{probe, run_cmd};

/// The pinned nightly: rustc 1.97.0-nightly (e50aa6fba 2026-05-19), LLVM 22.1.4.
const NIGHTLY: &str = "nightly-2026-05-19";
const NIGHTLY_COMMIT_DATE: &str = "2026-05-19";

/// The installed toolchain that is the pinned nightly: `nightly-2026-05-19` if installed by
/// that name, else the preinstalled `nightly` channel when it is that build.
pub(crate) fn ensure() -> Result<String> {
    for name in [NIGHTLY, "nightly"] {
        let out = probe(
            Command::new("rustup")
                .args(["run", name, "rustc", "-vV"])
                .env_remove("RUSTUP_TOOLCHAIN"),
        );
        let Some(out) = out.filter(|o| o.status.success()) else {
            continue;
        };
        let vv = String::from_utf8_lossy(&out.stdout);
        if vv
            .lines()
            .any(|l| l.trim() == format!("commit-date: {NIGHTLY_COMMIT_DATE}"))
        {
            println!("setup: nightly rustup toolchain {name} ({NIGHTLY})");
            return Ok(name.to_owned());
        }
        println!(
            "setup: rustup toolchain {name} is not {NIGHTLY}:\n{}",
            vv.trim()
        );
    }
    println!(
        "setup: no {NIGHTLY} toolchain (cargo-fuzz and the eBPF lint gate need one): installing it"
    );
    run_cmd(
        Command::new("rustup").args(["toolchain", "install", NIGHTLY, "--profile", "minimal"]),
        "install the nightly of 2026-05-19 with rustup (the project's machines have it \
         preinstalled as `nightly`), then re-run",
    )?;
    Ok(NIGHTLY.to_owned())
}

/// `ensure()`, plus the components clippy on the eBPF crate needs (rust-src for build-std).
pub(crate) fn ensure_with_clippy() -> Result<String> {
    ensure_with(&["clippy", "rust-src"])
}

/// `ensure()`, plus `components` (rustup adds only those missing).
pub(crate) fn ensure_with(components: &[&str]) -> Result<String> {
    let name = ensure()?;
    run_cmd(
        Command::new("rustup")
            .args(["component", "add", "--toolchain", &name])
            .args(components)
            .env_remove("RUSTUP_TOOLCHAIN"),
        &format!(
            "rustup must reach static.rust-lang.org once to add {} to the nightly",
            components.join(" and ")
        ),
    )?;
    Ok(name)
}

/// `cargo` of the pinned nightly, run in `dir`, with none of the outer (stable) cargo's
/// settings leaking into it.
pub(crate) fn cargo(name: &str, dir: &std::path::Path) -> Command {
    let mut c = Command::new("rustup");
    c.current_dir(dir)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("RUSTDOC")
        .env_remove("CARGO")
        .args(["run", name, "cargo"]);
    c
}
