//! The release builds other tasks start from: the static `schedlat`, the integration tests.
use std::{path::PathBuf, process::Stdio};

use anyhow::{Context, Result, bail};

use crate::{
    cmd::{cmdline, run_cmd},
    setup,
    ws::{STATIC_TARGET, Workspace},
};

/// Setup, then build the release `schedlat` binary (static); returns its path.
pub(crate) fn build(ws: &Workspace) -> Result<PathBuf> {
    setup::setup(ws)?;
    build_static(ws)
}

/// Build the static release `schedlat` (setup done); returns its path.
pub(crate) fn build_static(ws: &Workspace) -> Result<PathBuf> {
    run_cmd(
        ws.cargo().args([
            "build",
            "--release",
            "-p",
            "schedlat",
            "--target",
            STATIC_TARGET,
        ]),
        "fix the build errors above, then re-run `cargo xtask build`",
    )?;
    let bin = ws.static_bin();
    if !bin.exists() {
        bail!(
            "cargo reported success but {} does not exist",
            bin.display()
        );
    }
    Ok(bin)
}

/// Test executables of schedlat-tests, from cargo's JSON build messages.
pub(crate) fn integration_test_binaries(ws: &Workspace) -> Result<Vec<PathBuf>> {
    let mut c = ws.cargo();
    c.args(["test", "--release", "-p", "schedlat-tests", "--no-run"])
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit());
    let line = cmdline(&c);
    println!("+ {line}");
    let out = c
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): fix the build errors above",
            out.status
        );
    }
    let mut exes = Vec::new();
    for msg in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(msg) else {
            continue;
        };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        if let Some(exe) = v["executable"].as_str() {
            exes.push(exe.into());
        }
    }
    if exes.is_empty() {
        bail!("`{line}` built no test executables for schedlat-tests");
    }
    Ok(exes)
}
