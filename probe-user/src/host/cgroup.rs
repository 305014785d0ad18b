//! cgroup v2 ids <-> paths.
//!
//! BPF sees v2 cgroup ids (kernfs node ids). On 64-bit kernels a cgroup directory's inode
//! number is its id (kernfs_gen_ino, fs/kernfs/dir.c), so walking the v2 mount and stat-ing
//! directories maps ids to paths. Hosts may be v2-only (/sys/fs/cgroup) or hybrid
//! (/sys/fs/cgroup/unified); the mount is found in /proc/self/mountinfo.
use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted (no cgroup2 entry in /proc/self/mountinfo)")]
    NoV2Mount,
    #[error("cgroup {path:?} not found under the cgroup v2 mount {mount}: {cause}")]
    NotFound {
        path: String,
        mount: String,
        cause: std::io::Error,
    },
}

/// The cgroup2 mount point from a mountinfo text (fields per proc(5): the 5th is the mount
/// point; the filesystem type follows the " - " separator): the first cgroup2 mount whose
/// mount point `visible` says is still cgroup2. In a container on a hybrid host the runtime's
/// own (namespaced) cgroup2 at /sys/fs/cgroup comes first but is covered by the host's
/// hierarchy mounted over it (a tmpfs, with the host's cgroup2 at /sys/fs/cgroup/unified):
/// walking the covered path would label cgroups "/unified/...".
pub fn v2_mount_from_mountinfo(
    mountinfo: &str,
    visible: impl Fn(&Path) -> bool,
) -> Option<PathBuf> {
    mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let p = PathBuf::from(left.split_whitespace().nth(4)?);
        visible(&p).then_some(p)
    })
}

/// Whether the filesystem at `p` now is cgroup2 (statfs(2) f_type).
fn is_cgroup2(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct; `c` is NUL-terminated.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        // f_type's and the constant's integer types differ between glibc and musl.
        libc::statfs(c.as_ptr(), &mut st) == 0
            && st.f_type as u64 == libc::CGROUP2_SUPER_MAGIC as u64
    }
}

/// The root field (4th) of the mountinfo line mounted at `mount_point`: for cgroup2, the
/// mount's root relative to the reader's cgroup namespace root ("/" on the host; "/../.." for
/// the host's hierarchy seen from a container two levels down, as kernfs_path_from_node
/// writes it).
pub fn mount_root_from_mountinfo(mountinfo: &str, mount_point: &Path) -> Option<String> {
    mountinfo.lines().find_map(|l| {
        let (left, _) = l.split_once(" - ")?;
        let mut f = left.split_whitespace();
        let root = f.nth(3)?;
        (Path::new(f.next()?) == mount_point).then(|| root.to_owned())
    })
}

/// A cgroup path as /proc/PID/cgroup gives it (relative to the reader's cgroup namespace
/// root, so "/../../kubepods/..." when the reader sits in a container's namespace) made
/// relative to the cgroup2 mount whose root is `mount_root` (same frame): the host's path when
/// the host's hierarchy is mounted, the label the kernel-side series use. None when the
/// process's cgroup is not under the mount's root lexically (inside the reader's own
/// namespace while the mount is above it: the names above the namespace root are not known).
pub fn host_view(ns_path: &str, mount_root: &str) -> Option<String> {
    let parts = |p: &str| -> Vec<String> {
        p.split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .map(str::to_owned)
            .collect()
    };
    let (path, root) = (parts(ns_path), parts(mount_root));
    let rest = path.strip_prefix(&root[..])?;
    // A ".." left after the mount's root would climb above it.
    (!rest.iter().any(|c| c == "..")).then(|| format!("/{}", rest.join("/")))
}

pub fn v2_mount() -> Result<PathBuf, CgroupError> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    v2_mount_from_mountinfo(&mi, is_cgroup2).ok_or(CgroupError::NoV2Mount)
}

/// Kubernetes and container identity of a cgroup, parsed from its path: empty where the path
/// says nothing (not in a pod, not a container). A function of the path, so labels made from
/// it never add series.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The pod's UID (with dashes, as `kube_pod_info{uid}` has it).
    pub pod_uid: String,
    /// The container's 64-hex id (as `kube_pod_container_info{container_id}` has it after
    /// the `<runtime>://` prefix).
    pub container_id: String,
}

/// The pod and container a cgroup belongs to, from the path shapes the kubelet and the
/// runtimes make (cgroup v2; the same names on v1):
/// - kubelet, systemd driver: `/kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<UID,
///   '-' as '_'>.slice/<runtime>-<64 hex>.scope` (Guaranteed pods have no qos level), with
///   runtime `cri-containerd` (containerd), `crio` (CRI-O) or `docker` (cri-dockerd);
/// - kubelet, cgroupfs driver: `/kubepods/<qos>/pod<UID>/<64 hex>` (CRI-O: `crio-<64 hex>`);
/// - outside Kubernetes: Docker `/system.slice/docker-<64 hex>.scope` (cgroupfs driver:
///   `/docker/<64 hex>`), Podman `/machine.slice/libpod-<64 hex>.scope` (also under a user's
///   slice when rootless; cgroupfs: `/libpod_parent/libpod-<64 hex>`).
///
/// The deepest component that names a container wins (a container may make cgroups of its
/// own below its scope); the pod is any `pod<UID>` component under a `kubepods` one, so a
/// kubelet nested in another cgroup (kind, a node in a VM slice) is recognised. CRI-O's
/// `crio-conmon-<id>.scope` is its monitor process, not the container: no container id.
pub fn identity(path: &str) -> Identity {
    let mut id = Identity::default();
    let mut in_kubepods = false;
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        let name = comp
            .strip_suffix(".slice")
            .or_else(|| comp.strip_suffix(".scope"))
            .unwrap_or(comp);
        // `kubepods`, `kubepods-*`, or with a cgroup root prefix (`kubelet-kubepods-*`).
        if name == "kubepods" || name.starts_with("kubepods-") || name.contains("-kubepods") {
            in_kubepods = true;
        }
        if in_kubepods {
            // `kubepods-burstable-pod<uid_>` (systemd) or `pod<uid>` (cgroupfs).
            let pod = name
                .rsplit_once("-pod")
                .filter(|(head, _)| head.starts_with("kubepods") || head.contains("-kubepods"))
                .map(|(_, uid)| uid)
                .or_else(|| name.strip_prefix("pod"));
            if let Some(uid) = pod.map(|u| u.replace('_', "-")).filter(|u| is_uid(u)) {
                id.pod_uid = uid;
                continue;
            }
        }
        let container = ["cri-containerd-", "crio-", "docker-", "libpod-"]
            .iter()
            .find_map(|p| name.strip_prefix(p))
            .or(Some(name))
            .filter(|h| is_container_id(h));
        if let Some(c) = container {
            id.container_id = c.to_string();
        }
    }
    id
}

/// 64 lowercase hex digits: a container id of containerd, CRI-O, Docker and Podman.
fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A UUID as Kubernetes writes pod UIDs: 8-4-4-4-12 hex digits.
fn is_uid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Most cgroup names remembered, removed ones included.
const MAX_REMEMBERED: usize = 100_000;

/// Maps cgroup ids to paths relative to the v2 mount ("/" is the root), with a cache that
/// remembers cgroups after they are removed (their series keep their label).
#[derive(Debug)]
pub struct CgroupNames {
    mount: PathBuf,
    names: HashMap<u64, String>,
    /// Ids present at the last scan.
    live: HashSet<u64>,
    last_scan: Option<Instant>,
    /// Rescan at most this often when an unknown id shows up (a walk of the hierarchy: ~ms
    /// on a host with thousands of cgroups; scrapes come every 15 s or so).
    min_rescan: Duration,
}

impl CgroupNames {
    pub fn new(mount: PathBuf) -> Self {
        Self {
            mount,
            names: HashMap::new(),
            live: HashSet::new(),
            last_scan: None,
            min_rescan: Duration::from_secs(1),
        }
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// The path of cgroup `id`, or None if it is not (or no longer) under the mount.
    pub fn name(&mut self, id: u64) -> Option<&str> {
        if !self.names.contains_key(&id)
            && self
                .last_scan
                .is_none_or(|t| t.elapsed() >= self.min_rescan)
        {
            self.rescan();
        }
        self.names.get(&id).map(String::as_str)
    }

    /// Label for `id`: its path, or `unknown` when it cannot be resolved (a cgroup created and
    /// removed between two scans).
    pub fn label(&mut self, id: u64) -> String {
        self.name(id)
            .map_or_else(|| "unknown".to_string(), str::to_string)
    }

    pub fn rescan(&mut self) {
        self.last_scan = Some(Instant::now());
        // Names of removed cgroups are kept (a capture reports them at its end), but bounded:
        // past the cap, start over from what exists now.
        if self.names.len() > MAX_REMEMBERED {
            self.names.clear();
        }
        self.live.clear();
        let mut stack = vec![self.mount.clone()];
        // Bounded: at most 1M directories (hosts have thousands).
        let mut budget = 1_000_000usize;
        while let Some(dir) = stack.pop() {
            let Ok(md) = std::fs::metadata(&dir) else {
                continue;
            };
            let rel = dir
                .strip_prefix(&self.mount)
                .map(|p| format!("/{}", p.display()))
                .unwrap_or_default();
            self.names.insert(md.ino(), rel);
            self.live.insert(md.ino());
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                if budget == 0 {
                    return;
                }
                budget -= 1;
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }

    /// Which of `ids` no longer exist. A known cgroup is checked with one stat of its path
    /// (same inode = same cgroup); an id not seen at the last scan triggers a rescan, so a
    /// cgroup created since then is not mistaken for a removed one (the ids come from a
    /// snapshot taken before this call).
    pub fn dead(&mut self, ids: &[u64]) -> Vec<u64> {
        if ids.iter().any(|id| !self.live.contains(id)) {
            self.rescan();
        }
        let mut dead = Vec::new();
        for &id in ids {
            let alive = self.live.contains(&id)
                && self.names.get(&id).is_some_and(|rel| {
                    let p = self.mount.join(rel.trim_start_matches('/'));
                    std::fs::metadata(p).is_ok_and(|m| m.ino() == id)
                });
            if !alive {
                self.live.remove(&id);
                dead.push(id);
            }
        }
        dead
    }

    /// Ids of `path` (relative to the mount, or absolute under it) and every cgroup below it.
    pub fn subtree_ids(&self, path: &str) -> Result<Vec<u64>, CgroupError> {
        let p = Path::new(path);
        let full = if p.starts_with(&self.mount) {
            p.to_path_buf()
        } else {
            self.mount.join(path.trim_start_matches('/'))
        };
        let md = std::fs::metadata(&full).map_err(|source| CgroupError::NotFound {
            path: path.to_string(),
            mount: self.mount.display().to_string(),
            cause: source,
        })?;
        let mut ids = vec![md.ino()];
        let mut stack = vec![full];
        while let Some(dir) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    if let Ok(m) = e.metadata() {
                        ids.push(m.ino());
                    }
                    stack.push(e.path());
                }
            }
        }
        Ok(ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_from_a_namespace_in_the_hosts_view() {
        // The reader in the host's namespace: paths are the host's.
        assert_eq!(host_view("/a/b", "/").as_deref(), Some("/a/b"));
        assert_eq!(host_view("/", "/").as_deref(), Some("/"));
        // The reader in a cgroup namespace two levels down, the host's hierarchy mounted.
        assert_eq!(
            host_view("/../../kubepods/pod1/c1", "/../..").as_deref(),
            Some("/kubepods/pod1/c1")
        );
        assert_eq!(host_view("/../..", "/../..").as_deref(), Some("/"));
        // Inside the reader's own namespace: the names above it are unknown.
        assert_eq!(host_view("/child", "/../.."), None);
        assert_eq!(host_view("/../x", "/../.."), None);
        let mi = "30 25 0:26 /../.. /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        assert_eq!(
            mount_root_from_mountinfo(mi, Path::new("/sys/fs/cgroup")).as_deref(),
            Some("/../..")
        );
    }

    #[test]
    fn finds_cgroup2_in_hybrid_and_v2_only_mountinfo() {
        let all = |_: &Path| true;
        let hybrid = "35 25 0:30 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755\n\
                      36 35 0:31 / /sys/fs/cgroup/unified rw,nosuid,nodev - cgroup2 cgroup2 rw\n\
                      37 35 0:32 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            v2_mount_from_mountinfo(hybrid, all),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            v2_mount_from_mountinfo(v2, all),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(
            v2_mount_from_mountinfo("1 2 0:1 / / rw - ext4 /dev/vda rw\n", all),
            None
        );
        // A container on a hybrid host: the runtime's namespaced cgroup2, then the host's
        // hierarchy (a tmpfs) bound over it, with the host's cgroup2 below.
        let container = "600 500 0:40 / /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n\
                         601 600 0:30 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755\n\
                         602 601 0:31 / /sys/fs/cgroup/unified ro - cgroup2 cgroup2 rw\n";
        let covered = |p: &Path| p != Path::new("/sys/fs/cgroup");
        assert_eq!(
            v2_mount_from_mountinfo(container, covered),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    const UID: &str = "5c1e7f1a-2b3c-4d5e-8f90-0123456789ab";
    const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn ident(pod_uid: &str, container_id: &str) -> Identity {
        Identity {
            pod_uid: pod_uid.into(),
            container_id: container_id.into(),
        }
    }

    #[test]
    fn kubelet_and_runtime_paths_give_pod_and_container() {
        let u = UID.replace('-', "_");
        for (path, want) in [
            // kubelet, systemd driver: containerd, CRI-O, cri-dockerd; burstable, besteffort,
            // guaranteed (no qos level); the pod's own slice; a cgroup a container made.
            (
                format!(
                    "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-{CID}.scope"
                ),
                ident(UID, CID),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/crio-{CID}.scope"
                ),
                ident(UID, CID),
            ),
            (
                format!("/kubepods.slice/kubepods-pod{u}.slice/docker-{CID}.scope"),
                ident(UID, CID),
            ),
            (
                format!("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice"),
                ident(UID, ""),
            ),
            (
                format!(
                    "/kubepods.slice/kubepods-pod{u}.slice/cri-containerd-{CID}.scope/init.scope"
                ),
                ident(UID, CID),
            ),
            // CRI-O's monitor process is not the container.
            (
                format!("/kubepods.slice/kubepods-pod{u}.slice/crio-conmon-{CID}.scope"),
                ident(UID, ""),
            ),
            // kubelet, cgroupfs driver: containerd/Docker (bare id), CRI-O; guaranteed.
            (
                format!("/kubepods/burstable/pod{UID}/{CID}"),
                ident(UID, CID),
            ),
            (
                format!("/kubepods/besteffort/pod{UID}/crio-{CID}"),
                ident(UID, CID),
            ),
            (format!("/kubepods/pod{UID}/{CID}"), ident(UID, CID)),
            (format!("/kubepods/pod{UID}"), ident(UID, "")),
            // A kubelet nested in another cgroup (kind's node container).
            (
                format!(
                    "/system.slice/docker-{CID}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{u}.slice/cri-containerd-{}.scope",
                    "f".repeat(64)
                ),
                ident(UID, &"f".repeat(64)),
            ),
            // Outside Kubernetes: Docker (systemd and cgroupfs drivers), Podman (root,
            // rootless, cgroupfs).
            (format!("/system.slice/docker-{CID}.scope"), ident("", CID)),
            (format!("/docker/{CID}"), ident("", CID)),
            (format!("/machine.slice/libpod-{CID}.scope"), ident("", CID)),
            (
                format!(
                    "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{CID}.scope"
                ),
                ident("", CID),
            ),
            (format!("/libpod_parent/libpod-{CID}"), ident("", CID)),
            // Not a pod, not a container.
            ("/".into(), ident("", "")),
            ("/system.slice/sshd.service".into(), ident("", "")),
            (
                "/user.slice/user-1000.slice/session-3.scope".into(),
                ident("", ""),
            ),
            ("other".into(), ident("", "")),
            ("unknown".into(), ident("", "")),
            // Look-alikes: a pod outside kubepods, a short or upper-case id, a bad UID.
            (format!("/pod{UID}"), ident("", "")),
            (
                format!("/system.slice/docker-{}.scope", &CID[..63]),
                ident("", ""),
            ),
            (format!("/docker/{}", CID.to_uppercase()), ident("", "")),
            ("/kubepods/burstable/podnot-a-uid".into(), ident("", "")),
        ] {
            assert_eq!(identity(&path), want, "{path}");
        }
    }

    #[test]
    fn this_hosts_cgroup2_mount_is_cgroup2() {
        let m = v2_mount().expect("a cgroup2 mount");
        assert!(is_cgroup2(&m), "{}", m.display());
        assert!(!is_cgroup2(Path::new("/proc")));
    }

    #[test]
    fn resolves_ids_of_a_directory_tree() {
        // Any directory tree works: ids are inode numbers.
        let root = std::env::temp_dir().join(format!("schedlat-cg-test-{}", std::process::id()));
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        let mut names = CgroupNames::new(root.clone());
        let b_ino = std::fs::metadata(root.join("a/b")).unwrap().ino();
        let root_ino = std::fs::metadata(&root).unwrap().ino();
        assert_eq!(names.name(b_ino), Some("/a/b"));
        assert_eq!(names.name(root_ino), Some("/"));
        let ids = names.subtree_ids("/a").unwrap();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&b_ino));
        let e = names.subtree_ids("/nope").unwrap_err().to_string();
        assert!(e.contains("/nope"), "{e}");
        assert_eq!(names.dead(&[b_ino, root_ino]), Vec::<u64>::new());
        std::fs::remove_dir_all(&root).unwrap();
        // Removed cgroups keep their name, and are reported dead.
        assert_eq!(names.name(b_ino), Some("/a/b"));
        assert_eq!(names.dead(&[b_ino, root_ino]), vec![b_ino, root_ino]);
    }
}
