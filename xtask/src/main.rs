//! `cargo xtask <task>`: the project's developer and CI entry points.
//!
//! Everything a fresh Debian 12 machine needs is installed by `setup` (the other tasks call it),
//! so CI and new contributors run the same commands. See shared/docs/toolchain.md for why the
//! toolchain is pinned the way it is.
mod apt;
mod bench;
mod cmd;
mod fmt;
mod fuzz;
mod gofix;
mod image;
mod nightly;
mod release;
mod setup;
mod test;
mod vmtest;
mod ws;

use std::{
    ffi::OsString,
    os::unix::process::CommandExt,
    process::{Command, ExitCode},
};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::{
    cmd::{cmdline, is_root},
    release::build,
    ws::{Workspace, add_cargo_bin_to_path},
};

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
    /// rustfmt over the workspace with the pinned nightly, which applies rustfmt.toml's import
    /// grouping (stable rustfmt ignores it); `--check` is the lint step of `test`.
    Fmt(fmt::Args),
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
        Task::Fmt(args) => fmt::fmt(&ws, args),
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
