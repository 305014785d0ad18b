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
