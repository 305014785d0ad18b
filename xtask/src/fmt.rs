//! `cargo xtask fmt [--check]`: rustfmt over the workspace with the pinned nightly. The house
//! style's import grouping (rustfmt.toml: `group_imports`, `imports_granularity`) is unstable:
//! stable rustfmt warns that it ignores those two options and formats everything else the same,
//! so a plain `cargo fmt` on stable keeps a tree formatted here as it is, but does not group new
//! imports; this does, and `cargo xtask test` checks with it.
use anyhow::Result;

use crate::{cmd::run_cmd, nightly, ws::Workspace};

#[derive(clap::Args)]
pub(crate) struct Args {
    /// Only check: fail, listing the differences, where a file is not formatted
    #[arg(long)]
    check: bool,
}

pub(crate) fn fmt(ws: &Workspace, args: Args) -> Result<()> {
    let Args { check } = args;
    run(ws, check)
}

/// rustfmt over every workspace member (the eBPF and fuzz crates too).
pub(crate) fn run(ws: &Workspace, check: bool) -> Result<()> {
    let name = nightly::ensure_with(&["rustfmt"])?;
    let mut c = nightly::cargo(&name, &ws.root);
    c.args(["fmt", "--all"]);
    if check {
        c.args(["--", "--check"]);
    }
    run_cmd(
        &mut c,
        if check {
            "run `cargo xtask fmt` and commit the result"
        } else {
            "fix the syntax errors rustfmt reports above"
        },
    )
}
