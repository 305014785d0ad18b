//! Running commands: the `+ command` trace, quoting, and errors that say what to do next.
use std::{
    ffi::OsStr,
    path::Path,
    process::{Command, Output},
};

use anyhow::{Context, Result, bail};

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Shell-like rendering of a command for the `+ ...` trace and error messages.
pub(crate) fn cmdline(c: &Command) -> String {
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
pub(crate) fn run_cmd(c: &mut Command, what_to_do: &str) -> Result<()> {
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
pub(crate) fn probe(c: &mut Command) -> Option<Output> {
    c.output().ok()
}

/// Run a command quietly and return its stdout; fail (naming it) if it cannot start or fails.
pub(crate) fn capture(c: &mut Command) -> Result<String> {
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
