//! `cargo xtask test`: what CI runs (.ci/run). Unit tests need no root; the integration tests
//! in tests/ load real eBPF programs, so they run as root and serially (shared kernel state).
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{Workspace, cmdline, fuzz, gofix, image, is_root, run_cmd, setup};

pub fn test(ws: &Workspace, args: &[String]) -> Result<()> {
    header("setup");
    // setup also builds the Go fixtures (tests/go) that unit and integration tests read.
    setup::setup(ws)?;
    let go_fixtures = gofix::fixtures_dir(ws);

    // A unit test failure should not hide the integration results: note it, fail at the end.
    let mut failed = Vec::new();
    let mut totals = Totals::default();
    header("1/4 unit tests");
    // schedlat-ebpf only builds for the bpf target (probe-user/build.rs compiles it).
    let mut unit = ws.cargo();
    unit.args([
        "test",
        "--workspace",
        "--exclude",
        "schedlat-tests",
        "--exclude",
        "schedlat-ebpf",
        // Fuzz targets build with cargo-fuzz and nightly (step 4).
        "--exclude",
        "schedlat-fuzz",
    ]);
    unit.env(gofix::FIXTURES_ENV, &go_fixtures)
        .env(gofix::PATCH_FIXTURES_ENV, gofix::patch_fixtures_dir(ws));
    if let Err(e) = run_tests(&mut unit, "fix the failing unit tests above", &mut totals) {
        eprintln!("error: {e:#}");
        failed.push("unit tests");
    }

    header("2/4 release build and container image");
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

    // The container image test runs this very binary from the image.
    let image = image::from_binary(ws, &bin)?;

    header("3/4 integration tests (root, --test-threads=1)");
    let pytools = setup::pytools_venv(ws);
    let envs = [
        ("SCHEDLAT_BIN", &bin),
        ("SCHEDLAT_WORKLOAD", &workload),
        ("SCHEDLAT_PYTOOLS", &pytools),
        (gofix::FIXTURES_ENV, &go_fixtures),
        ("SCHEDLAT_IMAGE", &image),
    ];
    let hint = "see the failing integration tests above";
    let result = if is_root() {
        let mut c = ws.cargo();
        c.envs(envs)
            .args([
                "test",
                "--release",
                "-p",
                "schedlat-tests",
                "--tests",
                // Every test binary runs, so one failure does not hide the rest.
                "--no-fail-fast",
                "--",
                "--test-threads=1",
            ])
            .args(args);
        run_tests(&mut c, hint, &mut totals)
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
            if let Err(e) = run_tests(&mut c, hint, &mut totals) {
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

    header(&format!(
        "4/4 fuzzing ({} targets, {} s each)",
        fuzz::TARGETS.len(),
        fuzz::TEST_SECONDS
    ));
    if let Err(e) = fuzz::run(ws, fuzz::TARGETS, fuzz::TEST_SECONDS) {
        eprintln!("error: {e:#}");
        failed.push("fuzzing");
    }

    // One plain closing line over every test binary, for people and for CI's reader.
    println!("\n{} passed, {} failed", totals.passed, totals.failed);
    if !failed.is_empty() {
        bail!("cargo xtask test: {} failed", failed.join(" and "));
    }
    if totals.passed == 0 {
        bail!("cargo xtask test: no test ran");
    }
    println!("cargo xtask test: all steps passed");
    Ok(())
}

#[derive(Default)]
struct Totals {
    passed: u64,
    failed: u64,
}

/// Like `run_cmd`, but passes the test output through while adding up libtest's
/// `test result: ... N passed; M failed; ...` lines.
fn run_tests(c: &mut Command, what_to_do: &str, totals: &mut Totals) -> Result<()> {
    let line = cmdline(c);
    println!("+ {line}");
    let mut child = c
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{line}`: {what_to_do}"))?;
    let out = child.stdout.take().expect("piped stdout");
    for l in BufReader::new(out).lines() {
        let l = l.context("reading test output")?;
        println!("{l}");
        if let Some((p, f)) = parse_test_result(&l) {
            totals.passed += p;
            totals.failed += f;
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("`{line}` failed ({status}): {what_to_do}");
    }
    Ok(())
}

/// (passed, failed) from a libtest summary line.
fn parse_test_result(l: &str) -> Option<(u64, u64)> {
    let rest = l.strip_prefix("test result: ")?;
    let num = |word: &str| -> Option<u64> {
        rest.split(';').find_map(|part| {
            let part = part
                .trim()
                .trim_start_matches("ok.")
                .trim_start_matches("FAILED.")
                .trim();
            part.strip_suffix(word).and_then(|n| n.trim().parse().ok())
        })
    };
    Some((num("passed")?, num("failed")?))
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

#[cfg(test)]
mod tests {
    use super::parse_test_result;

    #[test]
    fn parses_libtest_summaries() {
        assert_eq!(
            parse_test_result(
                "test result: ok. 26 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.49s"
            ),
            Some((26, 0))
        );
        assert_eq!(
            parse_test_result(
                "test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out"
            ),
            Some((1, 2))
        );
        assert_eq!(parse_test_result("running 3 tests"), None);
    }
}
