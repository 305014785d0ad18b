//! Debian packages by purpose: what is missing is named with why, then installed with
//! apt-get (one `update` per run at most). Every other xtask module asks here.
use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context, Result, bail};

use crate::{cmd::cmdline, cmd::is_root, cmd::run_cmd};

/// Debian packages needed for one purpose.
pub struct Group {
    pub name: &'static str,
    pub why: &'static str,
    pub packages: &'static [&'static str],
}

/// `apt-get update` runs at most once per xtask invocation, and only if something is missing.
static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Install whichever packages of `groups` are not installed yet.
pub fn ensure_packages(groups: &[&Group]) -> Result<()> {
    let mut missing = Vec::new();
    for g in groups {
        for &pkg in g.packages {
            if !is_installed(pkg)? {
                println!(
                    "setup: missing Debian package {pkg} ({}: {})",
                    g.name, g.why
                );
                missing.push(pkg);
            }
        }
    }
    let names = groups.iter().map(|g| g.name).fold(Vec::new(), |mut v, n| {
        if !v.contains(&n) {
            v.push(n);
        }
        v
    });
    if missing.is_empty() {
        println!(
            "setup: Debian packages for {} are installed",
            names.join(", ")
        );
        return Ok(());
    }
    require_root("installing Debian packages")?;
    let hint = "check the apt sources and network access, then re-run `cargo xtask setup`";
    if !APT_UPDATED.swap(true, Ordering::Relaxed) {
        run_cmd(apt_get().arg("update"), hint)?;
    }
    run_cmd(
        apt_get()
            // Another apt (an unattended upgrade, a second checkout's setup) may hold the lock.
            .args(["-o", "DPkg::Lock::Timeout=300"])
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing),
        hint,
    )?;
    for pkg in missing {
        if !is_installed(pkg)? {
            bail!("apt-get install reported success but {pkg} is still not installed: {hint}");
        }
    }
    Ok(())
}

fn apt_get() -> Command {
    let mut c = Command::new("apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive");
    c
}

fn is_installed(pkg: &str) -> Result<bool> {
    let mut c = Command::new("dpkg-query");
    c.args(["-W", "-f=${Status}", pkg]);
    let out = c.output().with_context(|| {
        format!(
            "could not run `{}`: setup supports Debian/Ubuntu only; install {pkg} by hand",
            cmdline(&c)
        )
    })?;
    // Not-installed packages make dpkg-query fail ("no packages found") or report another status.
    Ok(out.status.success()
        && String::from_utf8_lossy(&out.stdout).trim() == "install ok installed")
}

pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what}: run as root (apt-get/mount need it), e.g. `sudo -E cargo xtask setup`");
    }
    Ok(())
}
