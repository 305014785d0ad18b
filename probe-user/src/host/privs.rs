//! Dropping privileges once the programs are attached.
//!
//! After loading, the daemon only reads and deletes map entries through file descriptors it
//! already holds, reads cgroupfs (world-readable) and serves HTTP: none of that needs a
//! capability, so a compromised daemon should not keep CAP_BPF/CAP_PERFMON (or root's full set).

use crate::model::{ClassOf, Classify, ErrorClass};

/// Effective capability bits of this process (/proc/self/status CapEff).
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// _LINUX_CAPABILITY_VERSION_3 (include/uapi/linux/capability.h): two 32-bit data words.
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// CAP_SYS_PTRACE (include/uapi/linux/capability.h).
pub const CAP_SYS_PTRACE: u32 = 19;
/// CAP_BPF (include/uapi/linux/capability.h, Linux 5.8+).
pub const CAP_BPF: u32 = 39;

/// Like [`drop_all_capabilities`], but keep those of `keep` that are currently permitted.
/// Returns the kept ones.
pub fn drop_capabilities_except(keep: &[u32]) -> std::io::Result<Vec<u32>> {
    let cur = capget()?;
    let kept: Vec<u32> = keep
        .iter()
        .copied()
        .filter(|&c| holds(&cur, c, |d| d.permitted))
        .collect();
    set_no_new_privs()?;
    set_caps(&kept)?;
    Ok(kept)
}

/// Clear this process's effective, permitted and inheritable capability sets (which clears
/// the ambient set too) and set no_new_privs, so nothing can be regained, even through exec.
pub fn drop_all_capabilities() -> std::io::Result<()> {
    set_no_new_privs()?;
    set_caps(&[])
}

/// PR_SET_NO_NEW_PRIVS: nothing gained through exec (setuid files, file capabilities).
fn set_no_new_privs() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;

/// This thread's capability sets (capget(2), version 3).
fn capget() -> std::io::Result<[CapData; 2]> {
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget(2) writes two data structs (version 3) into `data`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &header as *const CapHeader,
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(data)
}

/// Whether the set `set` picks out of `data` holds `cap` (bit number,
/// include/uapi/linux/capability.h).
fn holds(data: &[CapData; 2], cap: u32, set: fn(&CapData) -> u32) -> bool {
    cap < 64 && set(&data[(cap / 32) as usize]) & (1 << (cap % 32)) != 0
}

/// Whether this thread's effective set holds `cap`.
fn has_effective(cap: u32) -> std::io::Result<bool> {
    Ok(holds(&capget()?, cap, |d| d.effective))
}

/// Whether this thread's permitted set holds `cap`.
fn has_permitted(cap: u32) -> std::io::Result<bool> {
    Ok(holds(&capget()?, cap, |d| d.permitted))
}

/// A user to run as once attached, from the passwd database.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    /// The passwd entry's primary group.
    pub gid: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(
        "user = {0:?}: no such user in the passwd database; use an existing user name, or a uid (1..=2147483647; without a passwd entry its group is the same number)"
    )]
    Unknown(String),
    #[error("user = {spec:?}: looking it up failed: {cause}")]
    Lookup { spec: String, cause: std::io::Error },
    #[error(
        "switching to user {name} (uid {uid}, gid {gid}; {origin}) after attaching failed at {step}: {cause}; leaving root needs CAP_SETUID and CAP_SETGID: add both to the bounding set (a unit's CapabilityBoundingSet, a container's capabilities.add: SETUID, SETGID), or start schedlat as a non-root user with ambient CAP_BPF and CAP_PERFMON (the shipped unit's DynamicUser=yes), or set user = \"root\" to stay root (not recommended)"
    )]
    Switch {
        name: String,
        uid: u32,
        gid: u32,
        /// Where the user came from: the `user` key or the default.
        origin: &'static str,
        step: &'static str,
        cause: std::io::Error,
    },
}

impl Classify for UserError {
    /// The account to run as, or the privileges to switch to it, are the deployment's to fix.
    fn class(&self) -> ErrorClass {
        ErrorClass::Usage
    }
}
inventory::submit!(ClassOf::of::<UserError>());

/// Largest uid taken without a passwd entry (Kubernetes' runAsUser range).
const MAX_BARE_UID: u32 = i32::MAX as u32;

/// Look up `spec`, a user name or a numeric uid: its group comes from its passwd entry; a uid
/// (1..=2147483647) with no entry gets the group of the same number.
pub fn lookup_user(spec: &str) -> Result<Account, UserError> {
    let name = std::ffi::CString::new(spec).map_err(|_| UserError::Unknown(spec.to_string()))?;
    let uid = spec.parse::<u32>().ok();
    let mut buf = vec![0u8; 1024];
    loop {
        // SAFETY: an all-zero passwd is a valid out-parameter; buf outlives the reads of the
        // strings it points into (we copy pw_name before returning).
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: pointers to live locals and to buf with its true length.
        let rc = unsafe {
            match uid {
                Some(uid) => libc::getpwuid_r(
                    uid,
                    &mut pwd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                ),
                None => libc::getpwnam_r(
                    name.as_ptr(),
                    &mut pwd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    &mut result,
                ),
            }
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(UserError::Lookup {
                spec: spec.to_string(),
                cause: std::io::Error::from_raw_os_error(rc),
            });
        }
        if result.is_null() {
            // A numeric uid needs no entry (a container image's passwd rarely has the uid a
            // DaemonSet picks): its group is the same number.
            return match uid {
                Some(uid @ 1..=MAX_BARE_UID) => Ok(Account {
                    name: format!("uid {uid}"),
                    uid,
                    gid: uid,
                }),
                _ => Err(UserError::Unknown(spec.to_string())),
            };
        }
        // SAFETY: on success pw_name points to a NUL-terminated string inside buf.
        let pw_name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        return Ok(Account {
            name: pw_name.to_string_lossy().into_owned(),
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        });
    }
}

/// The user a daemon started as root becomes once attached when `user` is unset: "nobody"
/// from the passwd database, else the kernel's overflow ids (65534, /proc/sys/kernel/overflowuid),
/// which every Linux reserves for "no one" (a minimal image or initramfs may have no passwd).
pub const DEFAULT_USER: &str = "nobody";

pub fn default_account() -> Account {
    lookup_user(DEFAULT_USER).unwrap_or_else(|_| Account {
        name: DEFAULT_USER.to_string(),
        uid: 65534,
        gid: 65534,
    })
}

/// `user = "..."` in the config, or the default ([`DEFAULT_USER`]).
pub const ORIGIN_CONFIG: &str = "the `user` key";
pub const ORIGIN_DEFAULT: &str = "the default when started as root without a `user` key";

/// Whether this process already runs as `a` (real, effective and saved ids): then there is
/// nothing to switch, and no CAP_SETUID/CAP_SETGID is needed.
pub fn is_current(a: &Account) -> bool {
    let (mut r, mut e, mut s) = (0, 0, 0);
    let (mut rg, mut eg, mut sg) = (0, 0, 0);
    // SAFETY: getresuid/getresgid write three ids into live locals.
    let ok = unsafe {
        libc::getresuid(&mut r, &mut e, &mut s) == 0
            && libc::getresgid(&mut rg, &mut eg, &mut sg) == 0
    };
    ok && [r, e, s] == [a.uid; 3] && [rg, eg, sg] == [a.gid; 3]
}

/// Fail before anything is attached if [`switch_user`] is bound to fail for lack of
/// CAP_SETUID/CAP_SETGID (e.g. under a unit whose bounding set lacks them).
pub fn check_can_switch(a: &Account, origin: &'static str) -> Result<(), UserError> {
    for (cap, step) in [(CAP_SETGID, "CAP_SETGID"), (CAP_SETUID, "CAP_SETUID")] {
        if !has_effective(cap).unwrap_or(false) {
            return Err(UserError::Switch {
                name: a.name.clone(),
                uid: a.uid,
                gid: a.gid,
                origin,
                step,
                cause: std::io::Error::from_raw_os_error(libc::EPERM),
            });
        }
    }
    Ok(())
}

/// Set this thread's permitted and effective sets to `caps` (inheritable and so ambient
/// cleared). Only ever lowers: capset(2) refuses to add what is not permitted.
fn set_caps(caps: &[u32]) -> std::io::Result<()> {
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    for &c in caps {
        let bit = 1 << (c % 32);
        data[(c / 32) as usize].permitted |= bit;
        data[(c / 32) as usize].effective |= bit;
    }
    // SAFETY: capset(2) reads one header and two data structs (version 3) that outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Become `a`: supplementary groups first (to just its primary group: root's go), then the
/// gid, then the uid (after which the first two would be refused). glibc and musl apply each
/// to every thread. Leaving uid 0 clears the permitted and effective capability sets, except
/// that those of `keep` that are permitted now stay (PR_SET_KEEPCAPS keeps the permitted set
/// across the uid change; they are made effective again): CAP_SYS_PTRACE for [go], CAP_BPF
/// where the kernel checks it on map reads. The kernel also marks the process non-dumpable
/// (suid_dumpable), so its /proc files become root's and no core dump is written.
pub fn switch_user(a: &Account, keep: &[u32], origin: &'static str) -> Result<(), UserError> {
    let fail = |step, source| UserError::Switch {
        name: a.name.clone(),
        uid: a.uid,
        gid: a.gid,
        origin,
        step,
        cause: source,
    };
    let check = |rc: libc::c_int, step| {
        if rc == 0 {
            Ok(())
        } else {
            Err(fail(step, std::io::Error::last_os_error()))
        }
    };
    let keep: Vec<u32> = keep
        .iter()
        .copied()
        .filter(|&c| has_permitted(c).unwrap_or(false))
        .collect();
    let groups = [a.gid];
    // SAFETY: plain syscalls with integer arguments; `groups` outlives setgroups.
    unsafe {
        if !keep.is_empty() {
            check(
                libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0),
                "PR_SET_KEEPCAPS",
            )?;
        }
        check(libc::setgroups(1, groups.as_ptr()), "setgroups")?;
        check(libc::setresgid(a.gid, a.gid, a.gid), "setresgid")?;
        check(libc::setresuid(a.uid, a.uid, a.uid), "setresuid")?;
        if !keep.is_empty() {
            check(
                libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0),
                "PR_SET_KEEPCAPS",
            )?;
        }
    }
    if !keep.is_empty() {
        set_caps(&keep).map_err(|e| fail("capset", e))?;
    }
    // Root cannot come back (unless the target is root itself).
    // SAFETY: setuid with an integer argument.
    if a.uid != 0 && unsafe { libc::setuid(0) } == 0 {
        return Err(fail(
            "verification",
            std::io::Error::other("could regain uid 0 after switching"),
        ));
    }
    Ok(())
}

/// Not dumpable: no core dump (it would hold the TLS key and whatever Go memory was read),
/// /proc/PID files owned by root, and no ptrace from processes of the same uid. Leaving root
/// does this already; a daemon started unprivileged (a unit's DynamicUser) needs it said.
pub fn make_undumpable() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Who to run as is the deployment's to fix: exit 2.
    #[test]
    fn user_errors_are_usage() {
        let e = UserError::Unknown("no-such-user".into());
        assert_eq!(ErrorClass::of(&e.into()), ErrorClass::Usage);
    }

    #[test]
    fn looks_up_users_by_name_and_uid() {
        let root = lookup_user("root").unwrap();
        assert_eq!((root.uid, root.gid, root.name.as_str()), (0, 0, "root"));
        assert_eq!(lookup_user("0").unwrap(), root);
        let nobody = lookup_user("nobody").unwrap();
        assert_eq!(lookup_user(&nobody.uid.to_string()).unwrap(), nobody);
        // A uid with no passwd entry: that uid, and the group of the same number.
        let bare = lookup_user("9725").unwrap();
        if bare.name == "uid 9725" {
            assert_eq!((bare.uid, bare.gid), (9725, 9725));
        }
        for bad in ["no-such-user-schedlat", "4000000000", "a\0b", ""] {
            let e = lookup_user(bad).unwrap_err().to_string();
            assert!(
                e.contains("no such user") && e.contains(&format!("{bad:?}")),
                "{e}"
            );
        }
    }
}
