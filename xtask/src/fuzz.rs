//! `cargo xtask fuzz`: the cargo-fuzz targets of probe-user/fuzz (parsers of input anyone can
//! plant while schedlat runs as root: Go executables, the daemon and web configs), seeded from
//! the Go fixtures and deploy/, each run for a bounded time. `cargo xtask test` runs them briefly
//! so a crash fails CI.
//!
//! cargo-fuzz needs a nightly rustc (`-Zsanitizer=address`, sancov passes). The one used is the
//! nightly preinstalled on the project's machines, checked by its commit date, never a floating
//! `nightly` that could move to another LLVM (shared/docs/toolchain.md).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{
    cmd::{capture, probe, run_cmd},
    gofix, setup,
    ws::{Workspace, cargo_home},
};

/// cargo-fuzz from crates.io, `cargo install --locked`.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const FUZZ_DIR: &str = "probe-user/fuzz";
/// Every target in probe-user/fuzz/Cargo.toml.
pub(crate) const TARGETS: &[&str] = &[
    "go_elf",
    "go_buildinfo",
    "go_dwarf",
    "daemon_config",
    "web_config",
];
/// Seconds per target under `cargo xtask test`: 5 x 25 s stays under 3 minutes of fuzzing.
pub(crate) const TEST_SECONDS: u64 = 25;
/// libFuzzer's limit on a single allocation: above the largest buffer schedlat allows itself
/// (a 512 MiB DWARF section, goruntime/dwarf.rs), so what trips it is an allocation no cap
/// bounds.
const MALLOC_LIMIT_MB: u64 = 640;
/// Virtual address at which the go_buildinfo target maps its input (fuzz_targets/go_buildinfo.rs).
const BUILDINFO_SECTION_ADDR: u64 = 0x40_1000;

pub(crate) const FUZZ: crate::apt::Group = crate::apt::Group {
    name: "fuzz",
    why: "g++ compiles libFuzzer (libfuzzer-sys); binutils' objcopy cuts the Go fixtures' \
          .go.buildinfo and DWARF sections into seeds",
    packages: &["g++", "binutils"],
};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// How long to fuzz each target.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// Targets to run (default: all).
    #[arg(value_name = "TARGET")]
    targets: Vec<String>,
}

/// `cargo xtask fuzz`: setup, then fuzz.
pub(crate) fn fuzz(ws: &Workspace, args: Args) -> Result<()> {
    setup::setup(ws)?;
    let targets: Vec<&str> = if args.targets.is_empty() {
        TARGETS.to_vec()
    } else {
        for t in &args.targets {
            if !TARGETS.contains(&t.as_str()) {
                bail!(
                    "no fuzz target {t:?}: the targets are {}",
                    TARGETS.join(", ")
                );
            }
        }
        args.targets.iter().map(String::as_str).collect()
    };
    run(ws, &targets, args.seconds)
}

/// Fuzz `targets` for `seconds` each (setup already done); fails on the first crash, naming
/// the input that caused it.
pub(crate) fn run(ws: &Workspace, targets: &[&str], seconds: u64) -> Result<()> {
    crate::apt::ensure_packages(&[&FUZZ])?;
    let toolchain = crate::nightly::ensure()?;
    ensure_cargo_fuzz(ws)?;
    let root = ws.target.join("fuzz");
    write_seeds(ws, &root.join("seeds"))?;
    for t in targets {
        let corpus = root.join("corpus").join(t);
        let seeds = root.join("seeds").join(t);
        let artifacts = root.join("artifacts").join(t);
        // Each run starts from the seeds: go_elf alone adds ~200 MB of multi-megabyte
        // inputs in 25 s, which must not pile up across runs. The last run's corpus stays for
        // inspection; crashes go to `artifacts`.
        if corpus.exists() {
            fs::remove_dir_all(&corpus)
                .with_context(|| format!("removing {}", corpus.display()))?;
        }
        for d in [&corpus, &artifacts] {
            fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        // Executables and DWARF run to megabytes: let mutations work on whole seeds from the
        // start (libFuzzer otherwise grows the mutated length slowly from a few bytes).
        let whole_seeds = largest_file(&seeds)?.max(4096);
        let mut c = Command::new("rustup");
        c.current_dir(&ws.root)
            // The outer (stable) cargo's settings must not leak into the nightly build.
            .env_remove("RUSTUP_TOOLCHAIN")
            .env_remove("RUSTC")
            .env_remove("RUSTDOC")
            .env_remove("CARGO")
            .args([
                "run",
                &toolchain,
                "cargo",
                "fuzz",
                "run",
                "--fuzz-dir",
                FUZZ_DIR,
            ])
            // Overflow checks on: an arithmetic overflow on a forged value is a bug too.
            .arg("--debug-assertions")
            .arg(t)
            .arg(&corpus)
            .arg(&seeds)
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-max_len={whole_seeds}"))
            .arg("-len_control=0")
            .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
            .arg("-rss_limit_mb=2048")
            .arg("-timeout=30")
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1");
        run_cmd(
            &mut c,
            &format!(
                "the fuzz target {t} crashed: the input is in {} (above: its stack); reproduce \
                 with `rustup run {toolchain} cargo fuzz run --fuzz-dir {FUZZ_DIR} {t} <that \
                 file>`, fix the parser and add the input as a regression unit test",
                artifacts.display()
            ),
        )?;
    }
    println!(
        "fuzz: {} target(s), {seconds} s each, no crash",
        targets.len()
    );
    Ok(())
}

/// cargo-fuzz CARGO_FUZZ_VERSION in $CARGO_HOME/bin.
fn ensure_cargo_fuzz(ws: &Workspace) -> Result<()> {
    let installed = cargo_home()
        .map(|h| h.join("bin").join("cargo-fuzz"))
        .and_then(|bin| probe(Command::new(bin).arg("--version")))
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    // `cargo-fuzz 0.13.2`
    if installed.as_deref() == Some(&format!("cargo-fuzz {CARGO_FUZZ_VERSION}")) {
        println!("setup: cargo-fuzz {CARGO_FUZZ_VERSION} ok");
        return Ok(());
    }
    println!(
        "setup: cargo-fuzz {} ; need {CARGO_FUZZ_VERSION} (runs the fuzz targets in {FUZZ_DIR})",
        installed.unwrap_or_else(|| "not installed".into())
    );
    run_cmd(
        ws.cargo()
            .args(["install", "--locked", "--force"])
            .arg(format!("cargo-fuzz@{CARGO_FUZZ_VERSION}")),
        "check that crates.io is reachable, then re-run",
    )
}

/// Seeds, rewritten every run from what the repository and the Go fixtures hold (no binary
/// is committed): whole executables, their .go.buildinfo sections, their DWARF, the configs.
fn write_seeds(ws: &Workspace, seeds: &Path) -> Result<()> {
    if seeds.exists() {
        fs::remove_dir_all(seeds).with_context(|| format!("removing {}", seeds.display()))?;
    }
    let dir = |t: &str| -> Result<PathBuf> {
        let d = seeds.join(t);
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        Ok(d)
    };
    let (elf, buildinfo, dwarf) = (dir("go_elf")?, dir("go_buildinfo")?, dir("go_dwarf")?);
    let tmp = ws.target.join("fuzz").join("tmp");
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let fixtures = gofix::fixtures_dir(ws);
    let mut n = 0;
    for version in sorted_dirs(&fixtures)? {
        let v = version
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        for name in [
            "gosched",
            "gosched-pie",
            "gosched-stripped",
            "gosched-pie-stripped",
        ] {
            let exe = version.join(name);
            let seed = format!("{v}-{name}");
            copy(&exe, &elf.join(&seed))?;
            n += 1;
            let bi = buildinfo.join(&seed);
            objcopy(
                &[&format!("--dump-section=.go.buildinfo={}", bi.display())],
                &exe,
                None,
            )?;
        }
        // Without build info: the release from runtime.buildVersion through the table.
        let name = "gosched-pie-stripped-nobuildinfo";
        copy(&version.join(name), &elf.join(format!("{v}-{name}")))?;
        n += 1;
        // DWARF: decompressed .debug_abbrev, then the whole .debug_info and, smaller, the
        // unit holding runtime.schedt (the runtime's types), as the go_dwarf target reads them.
        let exe = version.join("gosched");
        let plain = tmp.join("decompressed");
        objcopy(&["--decompress-debug-sections"], &exe, Some(&plain))?;
        let (info, abbrev) = (tmp.join("info"), tmp.join("abbrev"));
        objcopy(
            &[
                &format!("--dump-section=.debug_info={}", info.display()),
                &format!("--dump-section=.debug_abbrev={}", abbrev.display()),
            ],
            &plain,
            None,
        )?;
        let (info, abbrev) = (read(&info)?, read(&abbrev)?);
        let input = |info: &[u8]| {
            let mut s = (abbrev.len() as u32).to_le_bytes().to_vec();
            s.extend_from_slice(&abbrev);
            s.extend_from_slice(info);
            s
        };
        write(&dwarf.join(format!("{v}-all")), &input(&info))?;
        let unit = unit_containing(&info, b"runtime.schedt\0").with_context(|| {
            format!("no DWARF unit of {} defines runtime.schedt", exe.display())
        })?;
        write(&dwarf.join(format!("{v}-runtime-unit")), &input(unit))?;
    }
    if n == 0 {
        bail!(
            "no Go fixtures in {}: run `cargo xtask setup`",
            fixtures.display()
        );
    }
    // The pre-Go 1.18 format: pointers to a string header, then the bytes, inside the section.
    let version = b"go1.17.13";
    let mut old = b"\xff Go buildinf:".to_vec();
    old.extend_from_slice(&[8, 0]);
    old.extend_from_slice(&(BUILDINFO_SECTION_ADDR + 32).to_le_bytes());
    old.resize(32, 0);
    old.extend_from_slice(&(BUILDINFO_SECTION_ADDR + 64).to_le_bytes());
    old.extend_from_slice(&(version.len() as u64).to_le_bytes());
    old.resize(64, 0);
    old.extend_from_slice(version);
    write(&buildinfo.join("pre-go1.18"), &old)?;

    let cfg = dir("daemon_config")?;
    copy(
        &ws.root.join("deploy/schedlat.toml"),
        &cfg.join("schedlat.toml"),
    )?;
    write(
        &cfg.join("go"),
        b"listen = \"0.0.0.0:9725\"\nfutex = \"off\"\n[go]\nenabled = true\ncgroups = [\"/kubepods\"]\n",
    )?;
    let web = dir("web_config")?;
    copy(&ws.root.join("deploy/web.yml"), &web.join("web.yml"))?;
    write(
        &web.join("tls-auth"),
        b"tls_server_config:\n  cert_file: c.pem\n  key_file: k.pem\n  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n  min_version: TLS13\nbasic_auth_users:\n  alice: '$2y$10$CFqwly8efMDni1MvjFGtVe3Enuyqphp0RR2a88N959GMLNMexEEhG'\n",
    )?;
    write(&web.join("basic-header"), b"Basic YWxpY2U6c2VjcmV0")?;
    println!("fuzz: seeds in {}", seeds.display());
    Ok(())
}

/// The DWARF 32-bit unit of `.debug_info` whose bytes contain `needle`.
fn unit_containing<'a>(info: &'a [u8], needle: &[u8]) -> Option<&'a [u8]> {
    let mut off = 0usize;
    while let Some(len) = info.get(off..off + 4) {
        let len = u32::from_le_bytes(len.try_into().ok()?) as usize;
        // 0xffffffff starts a 64-bit unit, which Go does not write.
        let end = off.checked_add(4)?.checked_add(len)?;
        let unit = info.get(off..end)?;
        if unit.windows(needle.len()).any(|w| w == needle) {
            return Some(unit);
        }
        off = end;
    }
    None
}

fn objcopy(args: &[&str], input: &Path, output: Option<&Path>) -> Result<()> {
    let mut c = Command::new("objcopy");
    c.args(args).arg(input);
    match output {
        Some(o) => c.arg(o),
        None => c.arg("/dev/null"),
    };
    capture(&mut c).map(drop).with_context(|| {
        format!(
            "cutting fuzz seeds out of {} (objcopy is in Debian's binutils)",
            input.display()
        )
    })
}

fn largest_file(dir: &Path) -> Result<usize> {
    let mut max = 0;
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let m = e
            .and_then(|e| e.metadata())
            .with_context(|| format!("listing {}", dir.display()))?;
        max = max.max(m.len() as usize);
    }
    Ok(max)
}

fn sorted_dirs(p: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = fs::read_dir(p)
        .with_context(|| format!("listing {}: run `cargo xtask setup`", p.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    Ok(v)
}

fn read(p: &Path) -> Result<Vec<u8>> {
    fs::read(p).with_context(|| format!("reading {}", p.display()))
}

fn write(p: &Path, b: &[u8]) -> Result<()> {
    fs::write(p, b).with_context(|| format!("writing {}", p.display()))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

#[cfg(test)]
mod tests {
    use super::unit_containing;

    #[test]
    fn finds_the_unit_by_name() {
        let mut info = Vec::new();
        for body in [&b"aaaa"[..], b"xx runtime.schedt\0 yy", b"zz"] {
            info.extend_from_slice(&(body.len() as u32).to_le_bytes());
            info.extend_from_slice(body);
        }
        let u = unit_containing(&info, b"runtime.schedt\0").unwrap();
        assert_eq!(&u[4..], b"xx runtime.schedt\0 yy");
        assert_eq!(unit_containing(&info, b"nothing"), None);
        // A length past the end: none, no panic.
        assert_eq!(unit_containing(&[0xff, 0xff, 0xff, 0x7f, 1], b"x"), None);
    }
}
