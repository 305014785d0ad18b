//! Where the workspace is, and the toolchain paths every task shares.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// Paths of this workspace and the cargo that runs us.
pub(crate) struct Workspace {
    pub root: PathBuf,
    pub target: PathBuf,
    /// Cargo sets `CARGO` for processes it runs; use the same cargo for nested builds.
    pub cargo: PathBuf,
}

impl Workspace {
    pub(crate) fn locate() -> Self {
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

    pub(crate) fn release_bin(&self, name: &str) -> PathBuf {
        self.target.join("release").join(name)
    }

    /// The shipped `schedlat`: static (musl), so it starts on any x86_64 Linux userspace,
    /// glibc or not, old or new (the glibc build needs GLIBC_2.34: not Debian 11's 2.31).
    pub(crate) fn static_bin(&self) -> PathBuf {
        self.target
            .join(STATIC_TARGET)
            .join("release")
            .join("schedlat")
    }

    /// A `cargo` command run from the workspace root.
    pub(crate) fn cargo(&self) -> Command {
        let mut c = Command::new(&self.cargo);
        c.current_dir(&self.root);
        c
    }
}

/// The Rust target of the shipped binary (setup installs it and musl-gcc, which `ring` needs).
pub(crate) const STATIC_TARGET: &str = "x86_64-unknown-linux-musl";

/// bpf-linker is installed by `cargo install` into $CARGO_HOME/bin, which is not on PATH for
/// e.g. a fresh root shell or CI; rustc (linking the eBPF crate) and probe-user/build.rs look it
/// up on PATH.
pub(crate) fn add_cargo_bin_to_path() {
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

pub(crate) fn cargo_home() -> Option<PathBuf> {
    env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
}
