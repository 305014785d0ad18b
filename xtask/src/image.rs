//! `cargo xtask image`: an OCI image of the release `schedlat`, built without a container
//! engine (this machine has none): one gzip layer holding the binary at
//! /usr/local/bin/schedlat, exactly the shared libraries `ldd` says it loads (none for the
//! static musl build that `cargo xtask build` makes), a three-line /etc/passwd and /etc/group
//! (root, nobody, and schedlat: uid 9725, the DaemonSet's `user`; the `user` setting looks
//! names up) and the DaemonSet's mount points; written as an OCI image layout
//! at target/image/schedlat, tagged with the crate version. `skopeo copy oci:...` pushes or
//! converts it (README, Deploying).
//!
//! Reproducible: entries sorted, owner 0:0, every timestamp the last commit's time
//! (SOURCE_DATE_EPOCH overrides), gzip without a timestamp; the same binary gives the same
//! digests.
use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use serde_json::json;
use sha2::{Digest as _, Sha256};

use crate::{cmd::capture, ws::Workspace};

/// The image's name (the OCI layout's directory) and tag (its ref.name).
pub(crate) const NAME: &str = "schedlat";
pub(crate) const TAG: &str = env!("CARGO_PKG_VERSION");
/// Where the binary goes; deploy/kubernetes/base/daemonset.yaml runs it from there.
const BIN_PATH: &str = "usr/local/bin/schedlat";

/// The OCI image layout directory: `skopeo copy oci:<this>:<TAG> ...`.
pub(crate) fn layout_dir(ws: &Workspace) -> PathBuf {
    ws.target.join("image").join(NAME)
}

/// Build the release binary, then the image; returns the layout directory.
pub(crate) fn image(ws: &Workspace) -> Result<PathBuf> {
    let bin = crate::release::build(ws)?;
    from_binary(ws, &bin)
}

/// The image of an already built `bin`; returns the layout directory.
pub(crate) fn from_binary(ws: &Workspace, bin: &Path) -> Result<PathBuf> {
    let ldd = capture(Command::new("ldd").arg(bin)).with_context(|| {
        format!(
            "listing the shared libraries of {} (ldd is part of Debian's libc-bin)",
            bin.display()
        )
    })?;
    let libs = parse_ldd(&ldd).with_context(|| format!("ldd {}", bin.display()))?;
    let mut files = vec![LayerFile::from_host(bin, BIN_PATH, 0o755)?];
    for lib in &libs {
        // ldd's path, possibly through /lib -> usr/lib: the loader looks it up there.
        let rel = lib.to_string_lossy().trim_start_matches('/').to_string();
        let mode = fs::metadata(lib)
            .with_context(|| format!("stat {}", lib.display()))?
            .permissions()
            .mode()
            & 0o755;
        files.push(LayerFile::from_host(lib, &rel, mode)?);
    }
    files.push(LayerFile::text(
        "etc/passwd",
        "root:x:0:0:root:/root:/usr/sbin/nologin\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n\
         schedlat:x:9725:9725:schedlat:/nonexistent:/usr/sbin/nologin\n",
    ));
    files.push(LayerFile::text(
        "etc/group",
        "root:x:0:\nnogroup:x:65534:\nschedlat:x:9725:\n",
    ));
    // Mount points of the DaemonSet (config, /proc, /sys with BTF, tracefs, cgroup) and /dev:
    // with a read-only root a runtime cannot always create them.
    for d in ["etc/schedlat", "proc", "sys", "dev"] {
        files.push(LayerFile::dir(d));
    }
    let epoch = source_date_epoch(ws);
    let revision = capture(ws_git(ws).args(["rev-parse", "HEAD"]))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let dir = layout_dir(ws);
    let img = write_layout(&dir, &files, epoch, &revision)?;
    println!(
        "image: {}:{TAG} (OCI layout {}), manifest {}, {} files, layer {} bytes gzipped",
        NAME,
        dir.display(),
        img.manifest_digest,
        files.len(),
        img.layer_size
    );
    println!(
        "  shared libraries (ldd): {}",
        libs.iter()
            .map(|l| l.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  push:  skopeo copy oci:{}:{TAG} docker://REGISTRY/{NAME}:{TAG}",
        dir.display()
    );
    println!(
        "  load:  skopeo copy oci:{}:{TAG} docker-archive:{NAME}.tar:{NAME}:{TAG}  (then docker load / kind load image-archive / ctr images import)",
        dir.display()
    );
    Ok(dir)
}

fn ws_git(ws: &Workspace) -> Command {
    let mut c = Command::new("git");
    c.current_dir(&ws.root);
    c
}

/// SOURCE_DATE_EPOCH, else the last commit's time, else 0.
fn source_date_epoch(ws: &Workspace) -> u64 {
    if let Some(v) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return v;
    }
    capture(ws_git(ws).args(["log", "-1", "--format=%ct"]))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// The absolute paths of the libraries in `ldd` output, the loader included (linux-vdso is
/// the kernel's, not a file). A library ldd cannot find is an error naming it.
pub(crate) fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not a dynamic executable") || line.contains("statically linked") {
            continue;
        }
        let path = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    bail!("shared library {} not found: install it", name.trim());
                }
                rest.split(" (").next().unwrap_or("").trim()
            }
            None => line.split(" (").next().unwrap_or("").trim(),
        };
        if path.starts_with('/') {
            out.push(PathBuf::from(path));
        } else if !path.starts_with("linux-vdso") && !path.starts_with("linux-gate") {
            bail!("unexpected ldd line {line:?}");
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// One entry of the layer.
pub(crate) struct LayerFile {
    /// Relative to the image root, no leading '/'.
    path: String,
    /// None: a directory.
    data: Option<Vec<u8>>,
    mode: u32,
}

impl LayerFile {
    fn from_host(src: &Path, path: &str, mode: u32) -> Result<Self> {
        Ok(Self {
            path: path.to_string(),
            // fs::read follows symlinks: the image holds the file itself at ldd's path.
            data: Some(fs::read(src).with_context(|| format!("reading {}", src.display()))?),
            mode,
        })
    }
    fn text(path: &str, text: &str) -> Self {
        Self {
            path: path.to_string(),
            data: Some(text.as_bytes().to_vec()),
            mode: 0o644,
        }
    }
    fn dir(path: &str) -> Self {
        Self {
            path: path.to_string(),
            data: None,
            mode: 0o755,
        }
    }
}

/// The uncompressed layer: every parent directory before its contents, sorted, 0:0, `mtime`.
fn layer_tar(files: &[LayerFile], mtime: u64) -> Result<Vec<u8>> {
    let mut entries: BTreeMap<String, Option<&LayerFile>> = BTreeMap::new();
    for f in files {
        let mut parent = Path::new(&f.path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            entries
                .entry(p.to_string_lossy().into_owned())
                .or_insert(None);
            parent = p.parent();
        }
        entries.insert(f.path.clone(), Some(f));
    }
    let mut tar = tar::Builder::new(Vec::new());
    for (path, f) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        match f.and_then(|f| f.data.as_ref().map(|d| (f, d))) {
            Some((f, data)) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(f.mode);
                h.set_size(data.len() as u64);
                tar.append_data(&mut h, &path, data.as_slice())
            }
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(f.map_or(0o755, |f| f.mode));
                h.set_size(0);
                tar.append_data(&mut h, format!("{path}/"), std::io::empty())
            }
        }
        .with_context(|| format!("adding {path} to the layer"))?;
    }
    Ok(tar.into_inner()?)
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(b))
}

/// What [`write_layout`] wrote.
pub(crate) struct Written {
    pub manifest_digest: String,
    pub layer_size: usize,
}

/// RFC 3339 UTC of a Unix time (civil-from-days, H. Hinnant).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Writes the OCI image layout (image-spec v1.1: oci-layout, index.json, blobs/sha256/*) at
/// `dir`, replacing what was there (old blobs would pile up otherwise).
pub(crate) fn write_layout(
    dir: &Path,
    files: &[LayerFile],
    epoch: u64,
    revision: &str,
) -> Result<Written> {
    let tar = layer_tar(files, epoch)?;
    let diff_id = sha256(&tar);
    // GzEncoder writes no file name and mtime 0: the bytes depend on the tar only.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar)?;
    let layer = gz.finish()?;
    let created = rfc3339(epoch);
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => bail!("no OCI architecture name known for {other}"),
    };
    let mut labels = json!({
        "org.opencontainers.image.title": NAME,
        "org.opencontainers.image.version": TAG,
        "org.opencontainers.image.created": created,
        "org.opencontainers.image.description": "schedlat: scheduler-latency agent (eBPF); run as deploy/kubernetes/base/daemonset.yaml does",
    });
    if !revision.is_empty() {
        labels["org.opencontainers.image.revision"] = json!(revision);
    }
    let config = json!({
        "created": created,
        "architecture": arch,
        "os": "linux",
        "config": {
            "User": "0:0",
            "Env": ["PATH=/usr/local/bin"],
            "Entrypoint": ["/usr/local/bin/schedlat"],
            "Cmd": ["daemon", "--config", "/etc/schedlat/schedlat.toml"],
            "ExposedPorts": { "9725/tcp": {} },
            "Labels": labels,
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
        "history": [{
            "created": created,
            "created_by": "cargo xtask image",
            "comment": "the release schedlat and the shared libraries ldd lists (none: static)",
        }],
    });
    let config = serde_json::to_vec(&config)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": sha256(&config),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": sha256(&layer),
            "size": layer.len(),
        }],
        "annotations": { "org.opencontainers.image.created": created },
    });
    let manifest = serde_json::to_vec(&manifest)?;
    let manifest_digest = sha256(&manifest);
    let index = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest.len(),
            "platform": { "architecture": arch, "os": "linux" },
            "annotations": { "org.opencontainers.image.ref.name": TAG },
        }],
    });

    let tmp = dir.with_extension("tmp");
    let _ = fs::remove_dir_all(&tmp);
    let blobs = tmp.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    for blob in [&layer, &config, &manifest] {
        let name = sha256(blob);
        fs::write(blobs.join(name.trim_start_matches("sha256:")), blob)?;
    }
    fs::write(
        tmp.join("oci-layout"),
        serde_json::to_vec(&json!({ "imageLayoutVersion": "1.0.0" }))?,
    )?;
    fs::write(tmp.join("index.json"), serde_json::to_vec(&index)?)?;
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing the old {}", dir.display()))?;
    }
    fs::rename(&tmp, dir)
        .with_context(|| format!("moving {} to {}", tmp.display(), dir.display()))?;
    Ok(Written {
        manifest_digest,
        layer_size: layer.len(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// The JSON of blob `digest` in the layout at `dir`.
    fn read_blob(dir: &Path, digest: &str) -> Result<Value> {
        let p = dir
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"));
        Ok(serde_json::from_slice(
            &fs::read(&p).with_context(|| format!("reading {}", p.display()))?,
        )?)
    }

    #[test]
    fn ldd_output_gives_library_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        let e = parse_ldd("\tlibfoo.so.1 => not found\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("libfoo.so.1"), "{e}");
        assert!(parse_ldd("\tstatically linked\n").unwrap().is_empty());
    }

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_384_800), "2026-11-22T22:00:00Z");
    }

    fn files() -> Vec<LayerFile> {
        vec![
            LayerFile::text("usr/local/bin/schedlat", "#!binary"),
            LayerFile::text("etc/passwd", "root:x:0:0::/:/x\n"),
            LayerFile::dir("proc"),
        ]
    }

    #[test]
    fn layout_is_reproducible_and_its_digests_match_the_blobs() {
        let base = std::env::temp_dir().join(format!("xtask-image-{}", std::process::id()));
        let (a, b) = (base.join("a"), base.join("b"));
        let wa = write_layout(&a, &files(), 1_700_000_000, "abc").unwrap();
        let wb = write_layout(&b, &files(), 1_700_000_000, "abc").unwrap();
        assert_eq!(
            wa.manifest_digest, wb.manifest_digest,
            "same input, same image"
        );
        // Written again over itself: replaced, not accumulated.
        write_layout(&a, &files(), 1_700_000_000, "abc").unwrap();
        let index: Value =
            serde_json::from_slice(&fs::read(a.join("index.json")).unwrap()).unwrap();
        let m = &index["manifests"][0];
        assert_eq!(m["annotations"]["org.opencontainers.image.ref.name"], TAG);
        assert_eq!(m["digest"], wa.manifest_digest.as_str());
        let manifest = read_blob(&a, m["digest"].as_str().unwrap()).unwrap();
        let blobs: Vec<_> = fs::read_dir(a.join("blobs/sha256")).unwrap().collect();
        assert_eq!(blobs.len(), 3, "layer, config, manifest");
        for d in [&manifest["config"], &manifest["layers"][0]] {
            let digest = d["digest"].as_str().unwrap();
            let bytes = fs::read(a.join("blobs/sha256").join(&digest[7..])).unwrap();
            assert_eq!(sha256(&bytes), digest);
            assert_eq!(d["size"].as_u64().unwrap() as usize, bytes.len());
        }
        // diff_id is the uncompressed layer's digest; its entries, parents first.
        let config = read_blob(&a, manifest["config"]["digest"].as_str().unwrap()).unwrap();
        let gz = fs::read(
            a.join("blobs/sha256")
                .join(&manifest["layers"][0]["digest"].as_str().unwrap()[7..]),
        )
        .unwrap();
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar).unwrap();
        assert_eq!(config["rootfs"]["diff_ids"][0], sha256(&tar).as_str());
        let mut ar = tar::Archive::new(&tar[..]);
        let names: Vec<(String, u32, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.uid().unwrap() as u32,
                    h.mtime().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            names.iter().map(|n| n.0.as_str()).collect::<Vec<_>>(),
            [
                "etc/",
                "etc/passwd",
                "proc/",
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "usr/local/bin/schedlat"
            ]
        );
        assert!(
            names.iter().all(|n| n.1 == 0 && n.2 == 1_700_000_000),
            "{names:?}"
        );
        assert_eq!(config["created"], "2023-11-14T22:13:20Z");
        assert_eq!(
            config["config"]["Labels"]["org.opencontainers.image.revision"],
            "abc"
        );
        let _ = fs::remove_dir_all(&base);
    }
}
