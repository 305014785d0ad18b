//! Compiles the eBPF programs (probe-ebpf) with the pinned eBPF toolchain and hands the object
//! to the userspace crate through OUT_DIR.
//!
//! The eBPF crate is compiled by Debian's rustc 1.96 (LLVM 22.1.8), which ships a prebuilt
//! `core` for bpfel-unknown-none, and linked by bpf-linker 0.13 built against LLVM 22. The rule
//! (shared/docs/toolchain.md): the compiling rustc's LLVM must not be newer than bpf-linker's.
//! `cargo xtask setup` installs both; override with SCHEDLAT_EBPF_RUSTC / SCHEDLAT_EBPF_CARGO.
use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap().to_path_buf();
    let ebpf_dir = root.join("probe-ebpf");
    for p in [
        "src",
        "common/src",
        "Cargo.toml",
        "common/Cargo.toml",
        "build.rs",
    ] {
        println!("cargo:rerun-if-changed={}", ebpf_dir.join(p).display());
    }
    println!("cargo:rerun-if-env-changed=SCHEDLAT_EBPF_RUSTC");
    println!("cargo:rerun-if-env-changed=SCHEDLAT_EBPF_CARGO");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());

    let rustc = env::var("SCHEDLAT_EBPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    let cargo = env::var("SCHEDLAT_EBPF_CARGO").unwrap_or_else(|_| "/usr/bin/cargo".into());
    let missing: Vec<&str> = [rustc.as_str(), cargo.as_str()]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !missing.is_empty() || !linker_ok {
        panic!(
            "\n\nschedlat: the eBPF toolchain is not installed (missing: {}{}).\n\
             Run `cargo xtask setup` (installs Debian's rustc-web/cargo-web/libstd-rust-web-dev-bpf \
             and bpf-linker 0.13 on LLVM 22), or set SCHEDLAT_EBPF_RUSTC/SCHEDLAT_EBPF_CARGO.\n\n",
            missing.join(", "),
            if linker_ok { "" } else { " bpf-linker" }
        );
    }

    let target_dir = root.join("target").join("ebpf");
    let release = target_dir.join("bpfel-unknown-none/release");
    // Every bin with task-local storage (schedlat-floor: the same hooks with empty bodies, for
    // the benchmark's floor row), then the programs again with per-task state in a hash map for
    // kernels without task storage in tracing programs (feature hash-stamps).
    /// (cargo arguments, [(bin built, name in OUT_DIR)]).
    type Build<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let builds: [Build; 3] = [
        (
            &["--bins"],
            &[
                ("schedlat-probes", "schedlat-probes"),
                ("schedlat-floor", "schedlat-floor"),
            ],
        ),
        (
            &["--bin", "schedlat-probes", "--features", "hash-stamps"],
            &[("schedlat-probes", "schedlat-probes-hash")],
        ),
        // The benchmark's: the same programs with every log call compiled out.
        (
            &["--bin", "schedlat-probes", "--features", "no-log"],
            &[("schedlat-probes", "schedlat-probes-nolog")],
        ),
    ];
    for (args, outputs) in builds {
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(&root)
            .args(["build", "-p", "schedlat-ebpf", "--release"])
            .args(args)
            .args(["--target", "bpfel-unknown-none", "--target-dir"])
            .arg(&target_dir);
        // Start from a clean slate: the outer cargo's settings are for the host build.
        for (k, _) in env::vars() {
            if k.starts_with("CARGO_") && k != "CARGO_HOME"
                || k.starts_with("RUSTC")
                || k == "RUSTFLAGS"
                || k == "RUSTDOCFLAGS"
                || k == "RUSTUP_TOOLCHAIN"
            {
                cmd.env_remove(&k);
            }
        }
        cmd.env("RUSTC", &rustc)
            // aya-ebpf and our crate use asm on the bpf target (an unstable feature).
            .env("RUSTC_BOOTSTRAP", "aya_ebpf,schedlat_probes")
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                [
                    "--cfg=bpf_target_arch=\"x86_64\"",
                    "-Cdebuginfo=2",
                    "-Clink-arg=--btf",
                ]
                .join("\x1f"),
            );
        let status = cmd
            .status()
            .unwrap_or_else(|e| panic!("running {cargo}: {e}"));
        if !status.success() {
            panic!("building the eBPF programs (probe-ebpf {args:?}) failed: see the errors above");
        }
        for (bin, name) in outputs {
            let obj = release.join(bin);
            let out = out_dir.join(name);
            std::fs::copy(&obj, &out)
                .unwrap_or_else(|e| panic!("copy {} -> {}: {e}", obj.display(), out.display()));
        }
    }
}
