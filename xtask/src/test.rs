//! `cargo xtask test`: what CI runs (.ci/run). Unit tests need no root; the integration tests
//! in tests/ load real eBPF programs, so they run as root and serially (shared kernel state).
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

use crate::{
    cmd::{cmdline, is_root, run_cmd},
    fuzz, gofix, image, setup,
    ws::Workspace,
};

pub(crate) fn test(ws: &Workspace, args: &[String]) -> Result<()> {
    header("setup");
    // setup also builds the Go fixtures (tests/go) that unit and integration tests read.
    setup::setup(ws)?;
    let go_fixtures = gofix::fixtures_dir(ws);

    // A unit test failure should not hide the integration results: note it, fail at the end.
    let mut failed = Vec::new();
    let mut totals = Totals::default();
    header(
        "lint: rustfmt --check (pinned nightly), cargo clippy -D warnings (host crates, and the eBPF crate)",
    );
    // rustfmt.toml's import grouping is unstable: the pinned nightly's rustfmt applies it.
    if let Err(e) = crate::fmt::run(ws, true) {
        eprintln!("error: {e:#}");
        failed.push("lint");
    }
    // The eBPF crate builds only for bpfel-unknown-none with Debian's compiler, which ships no
    // clippy: it is linted below with the pinned nightly (build-std), both of its builds.
    let clippy = [
        "clippy",
        "--workspace",
        "--exclude",
        "schedlat-ebpf",
        "--exclude",
        "schedlat-fuzz",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ];
    if let Err(e) = run_cmd(ws.cargo().args(clippy), "fix the clippy findings above") {
        eprintln!("error: {e:#}");
        if !failed.contains(&"lint") {
            failed.push("lint");
        }
    }

    if let Err(e) = lint_ebpf(ws) {
        eprintln!("error: {e:#}");
        if !failed.contains(&"lint") {
            failed.push("lint");
        }
    }

    header("1/5 unit tests");
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

    header("2/5 release build (static) and container image");
    run_cmd(
        ws.cargo()
            .args(["build", "--release", "-p", "schedlat-tests"]),
        "fix the build errors above, then re-run `cargo xtask test`",
    )?;
    let bin = crate::release::build_static(ws)?;
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

    header("3/5 integration tests (root, --test-threads=1)");
    let pytools = setup::pytools_venv(ws);
    let envs = [
        ("SCHEDLAT_BIN", &bin),
        ("SCHEDLAT_WORKLOAD", &workload),
        ("SCHEDLAT_PYTOOLS", &pytools),
        (gofix::FIXTURES_ENV, &go_fixtures),
        (gofix::THIRD_PARTY_ENV, &gofix::third_party_dir(ws)),
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
        for exe in crate::release::integration_test_binaries(ws)? {
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
        "4/5 the kernel matrix under qemu ({})",
        crate::vmtest::KERNELS
            .iter()
            .map(|k| k.name)
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if is_root() {
        let built = crate::vmtest::Built {
            schedlat: bin.clone(),
            workload: workload.clone(),
            test_exes: crate::release::integration_test_binaries(ws)?,
        };
        if let Err(e) = crate::vmtest::run(ws, &built, &[]) {
            eprintln!("error: {e:#}");
            failed.push("the kernel matrix (vmtest)");
        }
    } else {
        eprintln!(
            "error: the kernel matrix needs root (qemu is not, but its setup installs packages)"
        );
        failed.push("the kernel matrix (vmtest)");
    }

    header(&format!(
        "5/5 fuzzing ({} targets, {} s each)",
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

/// clippy -D warnings on the eBPF crate: the pinned nightly checks it for bpfel-unknown-none
/// (core built from rust-src), with and without its `hash-stamps` feature (the 5.10 build).
fn lint_ebpf(ws: &Workspace) -> Result<()> {
    let nightly = crate::nightly::ensure_with_clippy()?;
    for features in [&[][..], &["--features", "hash-stamps"][..]] {
        let mut c = crate::nightly::cargo(&nightly, &ws.root);
        c.args(["clippy", "-p", "schedlat-ebpf", "--bins", "--release"])
            .args(["--target", "bpfel-unknown-none", "-Zbuild-std=core"])
            .arg("--target-dir")
            .arg(ws.target.join("ebpf-clippy"))
            .args(features)
            .args(["--", "-D", "warnings"]);
        run_cmd(&mut c, "fix the eBPF crate's clippy findings above")?;
    }
    Ok(())
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
