//! Debian packages by purpose: what is missing is named with why, then installed with
//! apt-get (one `update` per run at most). Every other xtask module asks here.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context, Result, bail};

use crate::cmd::{cmdline, is_root, run_cmd};

/// Debian packages needed for one purpose.
pub(crate) struct Group {
    pub name: &'static str,
    pub why: &'static str,
    pub packages: &'static [&'static str],
}

/// `apt-get update` runs at most once per xtask invocation, and only if something is missing.
static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Install whichever packages of `groups` are not installed yet.
pub(crate) fn ensure_packages(groups: &[&Group]) -> Result<()> {
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

pub(crate) fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!("{what}: run as root (apt-get/mount need it), e.g. `sudo -E cargo xtask setup`");
    }
    Ok(())
}

// ---- Packages for tests, not for this machine: a private apt (own sources, lists, cache) ----

/// The private apt configuration's arguments, rooted at `dir`.
pub(crate) fn private_opts(dir: &Path) -> Vec<String> {
    vec![
        format!(
            "-oDir::Etc::sourcelist={}",
            dir.join("sources.list").display()
        ),
        "-oDir::Etc::sourceparts=/dev/null".into(),
        format!("-oDir::State::Lists={}", dir.join("lists").display()),
        format!("-oDir::Cache={}", dir.join("cache").display()),
        // Its own lists and cache: no lock on the machine's apt state is needed.
        "-oDebug::NoLocking=1".into(),
        "-oAPT::Sandbox::User=root".into(),
    ]
}

/// The Debian archive this machine's apt uses (the first `.../debian` URI of its sources).
pub(crate) fn debian_mirror() -> Result<String> {
    let mut texts = vec![fs::read_to_string("/etc/apt/sources.list").unwrap_or_default()];
    if let Ok(rd) = fs::read_dir("/etc/apt/sources.list.d") {
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "sources" || x == "list") {
                texts.push(fs::read_to_string(&p).unwrap_or_default());
            }
        }
    }
    texts
        .iter()
        .flat_map(|t| t.split_whitespace())
        .find(|w| (w.starts_with("http://") || w.starts_with("https://")) && w.ends_with("/debian"))
        .map(str::to_owned)
        .context(
            "no Debian archive (a URI ending in /debian) in /etc/apt/sources.list{,.d}: the project \
             fetches test kernels and programs from the same archive",
        )
}

/// Download `package` at exactly `version` from `suite` through the private apt state under
/// `dir` (the machine's apt sources stay untouched) and unpack it into `into`.
pub(crate) fn fetch_deb(
    dir: &Path,
    suite: &str,
    package: &str,
    version: &str,
    into: &Path,
) -> Result<()> {
    for d in ["lists/partial", "cache/archives/partial"] {
        fs::create_dir_all(dir.join(d))?;
    }
    let key = "/usr/share/keyrings/debian-archive-keyring.gpg";
    let mirror = debian_mirror()?;
    fs::write(
        dir.join("sources.list"),
        format!("deb [signed-by={key}] {mirror} {suite} main\n"),
    )?;
    let opts = private_opts(dir);
    let hint = "the Debian archive must be reachable; the unpacked package is cached, so reruns \
                are offline";
    run_cmd(
        Command::new("apt-get")
            .args(&opts)
            .args(["-q", "update"])
            .stdout(Stdio::null()),
        hint,
    )?;
    let debs = dir.join("debs");
    fs::create_dir_all(&debs)?;
    let pin = format!("{package}={version}");
    run_cmd(
        Command::new("apt-get")
            .current_dir(&debs)
            .args(&opts)
            .args(["-q", "download", &pin]),
        &format!("{hint}; if {suite} no longer has {pin}, update the pin"),
    )?;
    // apt-get download names it package_version_arch.deb, with ':' in the version escaped.
    let deb: PathBuf = fs::read_dir(&debs)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
        })
        .with_context(|| {
            format!(
                "apt-get download left no {package}_*.deb in {}",
                debs.display()
            )
        })?;
    let mut tmp = into.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    run_cmd(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp),
        "dpkg-deb is part of Debian's dpkg",
    )?;
    let _ = fs::remove_dir_all(into);
    fs::rename(&tmp, into)?;
    fs::remove_file(&deb)?;
    Ok(())
}
