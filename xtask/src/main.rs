//! `cargo xtask <task>`: the project's developer and CI entry points.
//!
//! Everything a fresh Debian 12 machine needs is installed by `setup` (the other tasks call it),
//! so CI and new contributors run the same commands. See shared/docs/toolchain.md for why the
//! toolchain is pinned the way it is.
mod apt;
mod bench;
mod fuzz;
mod gofix;
mod image;
mod setup;
mod test;
mod vmtest;

use std::{
    env,
    ffi::{OsStr, OsString},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Output, Stdio},
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "schedlat developer tasks",
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install and check the toolchain: Debian packages, bpf-linker 0.13 on LLVM 22, tracefs.
    /// Idempotent: prints what is missing and why before installing anything.
    Setup,
    /// Setup, then build the release binary, static (musl):
    /// target/x86_64-unknown-linux-musl/release/schedlat.
    Build,
    /// Build, then run schedlat with ARGS (default: `capture --duration 10s`), via sudo if not root.
    Run {
        /// Arguments for schedlat, e.g. `cargo xtask run -- daemon --listen 127.0.0.1:9725`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
    /// Setup, unit tests, release build, the privileged integration tests (serially), then each
    /// fuzz target for a short bounded time.
    Test {
        /// Passed to the integration test harness, e.g. a test name filter.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<String>,
    },
    /// Overhead benchmark: interleaved bare / schedlat / runqlat runs of scheduler-heavy workloads.
    Bench(bench::Args),
    /// Build, then an OCI image layout of the release binary and the shared libraries it needs
    /// at target/image/schedlat (tag: the crate version), for deploy/kubernetes.
    Image,
    /// Setup, then run the cargo-fuzz targets (probe-user/fuzz) for a bounded time each, seeded
    /// from the Go fixtures and deploy/; installs cargo-fuzz and uses the pinned nightly.
    Fuzz(fuzz::Args),
    /// Boot Debian 11's 5.10, Debian 12's 6.1 (cloud and PREEMPT_RT) and Debian 13's 6.12
    /// under qemu and run the kernel-facing tests inside each with the static binary.
    Vmtest(vmtest::Args),
    /// Install the Go toolchains and build their fixtures (as setup does), then regenerate the
    /// layout table for stripped Go binaries, probe-user/src/goruntime/layouts.json, from them.
    GoLayouts,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The chain without anyhow's backtrace (RUST_BACKTRACE is often set for the tests).
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let Cli { task } = Cli::parse();
    add_cargo_bin_to_path();
    let ws = Workspace::locate();
    match task {
        Task::Setup => setup::setup(&ws),
        Task::Build => build(&ws).map(|bin| println!("built {}", bin.display())),
        Task::Run { args } => run_schedlat(&ws, args),
        Task::Test { args } => test::test(&ws, &args),
        Task::Bench(args) => bench::bench(&ws, args),
        Task::Image => image::image(&ws).map(drop),
        Task::Fuzz(args) => fuzz::fuzz(&ws, args),
        Task::Vmtest(args) => vmtest::vmtest(&ws, &args),
        Task::GoLayouts => {
            // Only the Go toolchains and fixtures are needed.
            gofix::build_fixtures(&ws)?;
            gofix::go_layouts(&ws)
        }
    }
}

/// Paths of this workspace and the cargo that runs us.
pub struct Workspace {
    pub root: PathBuf,
    pub target: PathBuf,
    /// Cargo sets `CARGO` for processes it runs; use the same cargo for nested builds.
    pub cargo: PathBuf,
}

impl Workspace {
    fn locate() -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("xtask lives one level below the workspace root")
            .to_path_buf();
        let target =
            env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), |t| root.join(t));
        let cargo = env::var_os("CARGO").map_or_else(|| PathBuf::from("cargo"), PathBuf::from);
        Self {
            root,
            target,
            cargo,
        }
    }

    pub fn release_bin(&self, name: &str) -> PathBuf {
        self.target.join("release").join(name)
    }

    /// The shipped `schedlat`: static (musl), so it starts on any x86_64 Linux userspace,
    /// glibc or not, old or new (the glibc build needs GLIBC_2.34: not Debian 11's 2.31).
    pub fn static_bin(&self) -> PathBuf {
        self.target
            .join(STATIC_TARGET)
            .join("release")
            .join("schedlat")
    }

    /// A `cargo` command run from the workspace root.
    pub fn cargo(&self) -> Command {
        let mut c = Command::new(&self.cargo);
        c.current_dir(&self.root);
        c
    }
}

/// The Rust target of the shipped binary (setup installs it and musl-gcc, which `ring` needs).
pub const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

/// Setup, then build the release `schedlat` binary (static); returns its path.
pub fn build(ws: &Workspace) -> Result<PathBuf> {
    setup::setup(ws)?;
    build_static(ws)
}

/// Build the static release `schedlat` (setup done); returns its path.
pub fn build_static(ws: &Workspace) -> Result<PathBuf> {
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
pub fn integration_test_binaries(ws: &Workspace) -> Result<Vec<std::path::PathBuf>> {
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

fn run_schedlat(ws: &Workspace, args: Vec<OsString>) -> Result<()> {
    let bin = build(ws)?;
    let args = if args.is_empty() {
        ["capture", "--duration", "10s"]
            .map(OsString::from)
            .to_vec()
    } else {
        args
    };
    // Loading BPF programs needs root.
    let mut c = if is_root() {
        Command::new(&bin)
    } else {
        println!("not root: running schedlat through `sudo -E` (loading eBPF programs needs root)");
        let mut c = Command::new("sudo");
        c.arg("-E").arg(&bin);
        c
    };
    c.args(&args);
    println!("+ {}", cmdline(&c));
    // exec: schedlat gets the terminal's Ctrl-C directly and its exit code becomes ours.
    let err = c.exec();
    Err(err).with_context(|| format!("could not start `{}`", cmdline(&c)))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// bpf-linker is installed by `cargo install` into $CARGO_HOME/bin, which is not on PATH for
/// e.g. a fresh root shell or CI; rustc (linking the eBPF crate) and probe-user/build.rs look it
/// up on PATH.
fn add_cargo_bin_to_path() {
    let Some(bin) = cargo_home().map(|h| h.join("bin")) else {
        return;
    };
    let path = env::var_os("PATH").unwrap_or_default();
    if env::split_paths(&path).any(|p| p == bin) {
        return;
    }
    let joined =
        env::join_paths(env::split_paths(&path).chain([bin])).expect("PATH entries have no ':'");
    // SAFETY: called at the start of `run`, before xtask starts any thread.
    unsafe { env::set_var("PATH", joined) };
}

pub fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
}

/// Shell-like rendering of a command for the `+ ...` trace and error messages.
pub fn cmdline(c: &Command) -> String {
    let mut parts: Vec<String> = c
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), quote(v))))
        .collect();
    let program = c.get_program();
    // The `CARGO` path is a long toolchain path; `cargo` reads better and is what the user typed.
    if Path::new(program).file_name() == Some(OsStr::new("cargo")) {
        parts.push("cargo".into());
    } else {
        parts.push(quote(program));
    }
    parts.extend(c.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_./:=@,+%".contains(ch));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Print `+ command`, run it with inherited stdio, and fail if it fails. `what_to_do` ends up in
/// the error so the reader knows the next step.
pub fn run_cmd(c: &mut Command, what_to_do: &str) -> Result<()> {
    let line = cmdline(c);
    println!("+ {line}");
    let status = c
        .status()
        .with_context(|| format!("could not start `{line}`: {what_to_do}"))?;
    if !status.success() {
        bail!("`{line}` failed ({status}): {what_to_do}");
    }
    Ok(())
}

/// Run a command quietly and return its output, whatever its exit status; `None` if it could
/// not be started (e.g. not installed). For probing the machine's state.
pub fn probe(c: &mut Command) -> Option<Output> {
    c.output().ok()
}

/// Run a command quietly and return its stdout; fail (naming it) if it cannot start or fails.
pub fn capture(c: &mut Command) -> Result<String> {
    let line = cmdline(c);
    let out = c
        .output()
        .with_context(|| format!("could not start `{line}`"))?;
    if !out.status.success() {
        bail!(
            "`{line}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
