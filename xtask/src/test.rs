//! `cargo xtask test`: what CI runs (.ci/run). Unit tests need no root; the integration tests
//! in tests/ load real eBPF programs, so they run as root and serially (shared kernel state).
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::{Workspace, cmdline, is_root, run_cmd, setup};

pub fn test(ws: &Workspace, args: &[String]) -> Result<()> {
    header("setup");
    setup::setup(ws)?;

    // A unit test failure should not hide the integration results: note it, fail at the end.
    let mut failed = Vec::new();
    header("1/3 unit tests");
    // schedlat-ebpf only builds for the bpf target (probe-user/build.rs compiles it).
    let mut unit = ws.cargo();
    unit.args([
        "test",
        "--workspace",
        "--exclude",
        "schedlat-tests",
        "--exclude",
        "schedlat-ebpf",
    ]);
    if let Err(e) = run_cmd(&mut unit, "fix the failing unit tests above") {
        eprintln!("error: {e:#}");
        failed.push("unit tests");
    }

    header("2/3 release build");
    run_cmd(
        ws.cargo().args([
            "build",
            "--release",
            "-p",
            "schedlat",
            "-p",
            "schedlat-tests",
        ]),
        "fix the build errors above, then re-run `cargo xtask test`",
    )?;
    let bin = ws.release_bin("schedlat");
    let workload = ws.release_bin("schedlat-workload");
    for p in [&bin, &workload] {
        if !p.exists() {
            bail!(
                "{} is missing after the release build (expected from packages schedlat / schedlat-tests)",
                p.display()
            );
        }
    }

    header("3/3 integration tests (root, --test-threads=1)");
    let envs = [("SCHEDLAT_BIN", &bin), ("SCHEDLAT_WORKLOAD", &workload)];
    let hint = "see the failing integration tests above";
    let result = if is_root() {
        let mut c = ws.cargo();
        c.envs(envs)
            .args([
                "test",
                "--release",
                "-p",
                "schedlat-tests",
                "--",
                "--test-threads=1",
            ])
            .args(args);
        run_cmd(&mut c, hint)
    } else {
        // Build as the user (no root-owned files in target/), run only the test binaries as root.
        println!("not root: building the integration tests, then running them through `sudo`");
        let mut errors = Vec::new();
        for exe in integration_test_binaries(ws)? {
            let mut c = Command::new("sudo");
            c.args(["--preserve-env", "env"]);
            for (k, v) in envs {
                c.arg(format!("{k}={}", v.display()));
            }
            c.arg(&exe).arg("--test-threads=1").args(args);
            if let Err(e) = run_cmd(&mut c, hint) {
                eprintln!("error: {e:#}");
                errors.push(exe.display().to_string());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            bail!("failed: {}", errors.join(", "))
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        failed.push("integration tests");
    }

    if !failed.is_empty() {
        bail!("cargo xtask test: {} failed", failed.join(" and "));
    }
    println!("\ncargo xtask test: all steps passed");
    Ok(())
}

fn header(step: &str) {
    println!("\n==> {step}");
}

/// Test executables of schedlat-tests, from cargo's JSON build messages.
fn integration_test_binaries(ws: &Workspace) -> Result<Vec<std::path::PathBuf>> {
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
