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
