//! Dropping privileges once the programs are attached.
//!
//! After loading, the daemon only reads and deletes map entries through file descriptors it
//! already holds, reads cgroupfs (world-readable) and serves HTTP: none of that needs a
//! capability, so a compromised daemon should not keep CAP_BPF/CAP_PERFMON (or root's full set).

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
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let mut cur = [CapData::default(); 2];
    // SAFETY: capget(2) writes two data structs (version 3) into `cur`, which outlives the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &header as *const CapHeader,
            cur.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let kept: Vec<u32> = keep
        .iter()
        .copied()
        .filter(|&c| c < 64 && cur[(c / 32) as usize].permitted & (1 << (c % 32)) != 0)
        .collect();
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut data = [CapData::default(); 2];
    for &c in &kept {
        let bit = 1 << (c % 32);
        data[(c / 32) as usize].permitted |= bit;
        data[(c / 32) as usize].effective |= bit;
    }
    // SAFETY: as in drop_all_capabilities.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(kept)
}

/// Clear this process's effective, permitted and inheritable capability sets (which clears
/// the ambient set too) and set no_new_privs, so nothing can be regained, even through exec.
pub fn drop_all_capabilities() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: capset(2) reads one header and two data structs (version 3) that outlive the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &header as *const CapHeader, data.as_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

const CAP_SETGID: u32 = 6;
const CAP_SETUID: u32 = 7;

/// Whether this thread's effective set holds `cap` (bit number, include/uapi/linux/capability.h).
fn has_effective(cap: u32) -> std::io::Result<bool> {
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
    Ok(data[(cap / 32) as usize].effective & (1 << (cap % 32)) != 0)
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
        "user = {0:?}: no such user in the passwd database; use an existing user name or uid (e.g. \"nobody\")"
    )]
    Unknown(String),
    #[error("user = {spec:?}: looking it up failed: {cause}")]
    Lookup { spec: String, cause: std::io::Error },
    #[error(
        "switching to user {name} (uid {uid}, gid {gid}) failed at {step}: {cause}; this needs CAP_SETUID and CAP_SETGID (run as root with both in the bounding set, e.g. add them to the unit's CapabilityBoundingSet, or remove `user` and let the service manager pick the user)"
    )]
    Switch {
        name: String,
        uid: u32,
        gid: u32,
        step: &'static str,
        cause: std::io::Error,
    },
}

/// Look up `spec`, a user name or a numeric uid (which must have a passwd entry: its group
/// comes from there).
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
            return Err(UserError::Unknown(spec.to_string()));
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

/// Fail before anything is attached if [`switch_user`] is bound to fail for lack of
/// CAP_SETUID/CAP_SETGID (e.g. under a unit whose bounding set lacks them).
pub fn check_can_switch(a: &Account) -> Result<(), UserError> {
    for (cap, step) in [(CAP_SETGID, "CAP_SETGID"), (CAP_SETUID, "CAP_SETUID")] {
        if !has_effective(cap).unwrap_or(false) {
            return Err(UserError::Switch {
                name: a.name.clone(),
                uid: a.uid,
                gid: a.gid,
                step,
                cause: std::io::Error::from_raw_os_error(libc::EPERM),
            });
        }
    }
    Ok(())
}

/// Become `a`: supplementary groups first (to just its primary group: root's go), then the
/// gid, then the uid (after which the first two would be refused). glibc applies each to every
/// thread. Leaving uid 0 clears the permitted and effective capability sets.
pub fn switch_user(a: &Account) -> Result<(), UserError> {
    let fail = |step, source| UserError::Switch {
        name: a.name.clone(),
        uid: a.uid,
        gid: a.gid,
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
    let groups = [a.gid];
    // SAFETY: plain syscalls; `groups` outlives setgroups.
    unsafe {
        check(libc::setgroups(1, groups.as_ptr()), "setgroups")?;
        check(libc::setresgid(a.gid, a.gid, a.gid), "setresgid")?;
        check(libc::setresuid(a.uid, a.uid, a.uid), "setresuid")?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn looks_up_users_by_name_and_uid() {
        let root = lookup_user("root").unwrap();
        assert_eq!((root.uid, root.gid, root.name.as_str()), (0, 0, "root"));
        assert_eq!(lookup_user("0").unwrap(), root);
        let nobody = lookup_user("nobody").unwrap();
        assert_eq!(lookup_user(&nobody.uid.to_string()).unwrap(), nobody);
        for bad in ["no-such-user-schedlat", "4000000000", "a\0b", ""] {
            let e = lookup_user(bad).unwrap_err().to_string();
            assert!(
                e.contains("no such user") && e.contains(&format!("{bad:?}")),
                "{e}"
            );
        }
    }
}
