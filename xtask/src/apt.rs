//! Debian packages by purpose: what is missing is named with why, then installed with
//! apt-get (one `update` per run at most). Every other xtask module asks here.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context, Result, bail};

use crate::cmd::{capture, cmdline, is_root, run_cmd};

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

/// An apt configuration of its own under `dir` (sources, lists, cache): test kernels and
/// programs come from the same Debian archive as the machine's packages, while the machine's
/// apt state stays untouched.
pub(crate) struct PrivateApt {
    opts: Vec<String>,
    debs: PathBuf,
    hint: &'static str,
}

impl PrivateApt {
    /// Lists `suites` of the machine's Debian archive under `dir` (one `apt-get update`).
    /// `hint` says what makes reruns offline; it ends every download error.
    pub(crate) fn new(dir: &Path, suites: &[&str], hint: &'static str) -> Result<Self> {
        for d in ["lists/partial", "cache/archives/partial", "debs"] {
            fs::create_dir_all(dir.join(d))?;
        }
        let key = "/usr/share/keyrings/debian-archive-keyring.gpg";
        let mirror = debian_mirror()?;
        let mut sources = String::new();
        for (i, s) in suites.iter().enumerate() {
            if !suites[..i].contains(s) {
                sources.push_str(&format!("deb [signed-by={key}] {mirror} {s} main\n"));
            }
        }
        fs::write(dir.join("sources.list"), sources)?;
        let apt = Self {
            opts: vec![
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
            ],
            debs: dir.join("debs"),
            hint,
        };
        let hint = format!("the Debian archive must be reachable; {hint}");
        run_cmd(
            apt.command("apt-get")
                .args(["-q", "update"])
                .stdout(Stdio::null()),
            &hint,
        )?;
        Ok(apt)
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.args(&self.opts);
        c
    }

    /// Whether the lists hold a version of `package` to download.
    pub(crate) fn has(&self, package: &str) -> Result<bool> {
        let policy = capture(self.command("apt-cache").args(["policy", package]))?;
        Ok(policy.contains("Candidate:") && !policy.contains("Candidate: (none)"))
    }

    /// Names of the packages whose name matches the regex `pattern`.
    pub(crate) fn search_names(&self, pattern: &str) -> Result<Vec<String>> {
        let found = capture(
            self.command("apt-cache")
                .args(["search", "--names-only", pattern]),
        )?;
        Ok(found
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect())
    }

    /// Download `package` (`name` or `name=version`) and unpack it into `into`, replacing it;
    /// the .deb itself is not kept.
    pub(crate) fn unpack(&self, package: &str, into: &Path) -> Result<()> {
        let name = package.split('=').next().unwrap_or(package);
        run_cmd(
            self.command("apt-get")
                .current_dir(&self.debs)
                .args(["-q", "download", package]),
            &format!(
                "the Debian archive must be reachable; {}; if the archive no longer has \
                 {package}, update the pin",
                self.hint
            ),
        )?;
        // apt-get download names it name_version_arch.deb, with ':' in the version escaped.
        let deb: PathBuf = fs::read_dir(&self.debs)?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{name}_")))
            })
            .with_context(|| {
                format!(
                    "apt-get download left no {name}_*.deb in {}",
                    self.debs.display()
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
}

/// The Debian archive this machine's apt uses (the first `.../debian` URI of its sources).
fn debian_mirror() -> Result<String> {
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
