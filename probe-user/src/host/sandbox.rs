//! The daemon's seccomp filter, installed once attached and before any other thread exists
//! (a filter is per thread and inherited by the threads created after it).
//!
//! With `[go]` the daemon keeps CAP_SYS_PTRACE to *read* other processes' memory
//! (process_vm_readv, /proc/PID/exe). The same capability would let a compromised daemon write
//! into any process on the host; the filter takes the writing ways away, so what is left is
//! reading. Everything else is allowed: an allow-list of every syscall tokio, rustls and both
//! libcs make would break on the next upgrade; the unit adds systemd's allow-list on top
//! (SystemCallFilter=).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("seccomp filter for {arch}: {cause}")]
    Build {
        arch: &'static str,
        cause: seccompiler::BackendError,
    },
    #[error(
        "installing the seccomp filter failed at {step}: {cause}; an outer seccomp policy (a unit's SystemCallFilter=, a container's profile) must allow prctl(2), and the kernel needs CONFIG_SECCOMP_FILTER (every distribution kernel has it)"
    )]
    Apply {
        step: &'static str,
        cause: std::io::Error,
    },
}

/// What the filter refuses with EPERM, by syscall:
/// - `ptrace`: attaching to a process would let it write its memory and registers;
/// - `process_vm_writev`: writing another process's memory;
/// - `pidfd_getfd`: taking a descriptor out of another process;
/// - `open`/`openat` for writing, creating or truncating (`creat` always), which covers
///   /proc/PID/mem (and every other file: the daemon writes none once attached); `openat2`
///   hides its flags in a struct seccomp cannot read, so it is refused whole (nothing the
///   daemon links uses it);
/// - `open_by_handle_at`, and io_uring, whose queued operations bypass seccomp.
pub const DENIED: &[&str] = &[
    "ptrace",
    "process_vm_writev",
    "pidfd_getfd",
    "open (write, create, truncate)",
    "openat (write, create, truncate)",
    "creat",
    "openat2",
    "open_by_handle_at",
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
];

fn arch() -> Result<TargetArch, SandboxError> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|cause| SandboxError::Build {
        arch: std::env::consts::ARCH,
        cause,
    })
}

/// Conditions on an open flags argument (`arg`) that mean "may write": write-only or
/// read-write access, O_CREAT, O_TRUNC. One rule each (rules of a syscall are OR-ed).
fn write_open_rules(arg: u8) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
    let masked = |mask: i32, value: i32| {
        SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::MaskedEq(mask as u64),
            value as u64,
        )
        .and_then(|c| SeccompRule::new(vec![c]))
    };
    Ok(vec![
        masked(libc::O_ACCMODE, libc::O_WRONLY)?,
        masked(libc::O_ACCMODE, libc::O_RDWR)?,
        masked(libc::O_CREAT, libc::O_CREAT)?,
        masked(libc::O_TRUNC, libc::O_TRUNC)?,
    ])
}

/// The filter as a BPF program (pure: testable without installing it).
pub fn filter() -> Result<BpfProgram, SandboxError> {
    let arch = arch()?;
    let build = |cause| SandboxError::Build {
        arch: std::env::consts::ARCH,
        cause,
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in [
        libc::SYS_ptrace,
        libc::SYS_process_vm_writev,
        libc::SYS_pidfd_getfd,
        libc::SYS_openat2,
        libc::SYS_open_by_handle_at,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
    ] {
        // No condition: every call.
        rules.insert(nr, vec![]);
    }
    // openat(dirfd, path, flags, mode): flags are argument 2.
    rules.insert(libc::SYS_openat, write_open_rules(2).map_err(build)?);
    #[cfg(target_arch = "x86_64")]
    {
        // open(path, flags, mode) and creat(path, mode): x86_64 only (aarch64 has openat alone).
        rules.insert(libc::SYS_open, write_open_rules(1).map_err(build)?);
        rules.insert(libc::SYS_creat, vec![]);
        // The x32 ABI enters with the same AUDIT_ARCH_X86_64 and the syscall number ORed with
        // __X32_SYSCALL_BIT (arch/x86/include/uapi/asm/unistd.h), so the same calls again under
        // those numbers; ptrace and process_vm_writev have x32 numbers of their own (521, 540 in
        // arch/x86/entry/syscalls/syscall_64.tbl). (i386's int 0x80 has another arch value:
        // seccompiler's filter kills the process for it.)
        const X32: i64 = 0x4000_0000;
        let x32: Vec<(i64, Vec<SeccompRule>)> = rules
            .iter()
            .map(|(nr, r)| (nr | X32, r.clone()))
            .chain([(521 | X32, vec![]), (540 | X32, vec![])])
            .collect();
        rules.extend(x32);
    }
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(build)?;
    f.try_into().map_err(build)
}

/// Install [`filter`] on this thread (and so on every thread it creates afterwards). Sets
/// no_new_privs, which a filter needs without CAP_SYS_ADMIN. Cannot be undone. Through
/// prctl(PR_SET_SECCOMP), not seccomp(2) (which seccompiler's apply_filter calls): systemd's
/// @system-service allows the former only.
pub fn deny_writes_to_other_processes() -> Result<(), SandboxError> {
    let prog = filter()?;
    let fail = |step| SandboxError::Apply {
        step,
        cause: std::io::Error::last_os_error(),
    };
    let fprog = libc::sock_fprog {
        len: u16::try_from(prog.len()).map_err(|_| SandboxError::Apply {
            step: "length",
            cause: std::io::Error::other(format!("{} instructions", prog.len())),
        })?,
        // seccompiler's sock_filter is the kernel's struct sock_filter (repr(C), same fields).
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(fail("PR_SET_NO_NEW_PRIVS"));
    }
    // SAFETY: `fprog` points at `prog`'s instructions, both alive across the call; the kernel
    // copies the program.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(fail("PR_SET_SECCOMP"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a thread of its own (a filter cannot be removed): the denied calls fail with EPERM,
    /// reading stays possible.
    #[test]
    fn the_filter_denies_writes_and_allows_reads() {
        std::thread::spawn(|| {
            deny_writes_to_other_processes().unwrap();
            let me = std::process::id();
            // Writing our own memory through /proc: refused at open.
            let e = std::fs::OpenOptions::new()
                .write(true)
                .open(format!("/proc/{me}/mem"))
                .unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
            let e =
                std::fs::File::create(std::env::temp_dir().join("schedlat-seccomp-x")).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
            // Reading still works.
            assert!(std::fs::read_to_string("/proc/self/status").is_ok());
            let mut word = 0u64;
            let local = libc::iovec {
                iov_base: (&mut word as *mut u64).cast(),
                iov_len: 8,
            };
            let src = 0x5eed_u64;
            let remote = libc::iovec {
                iov_base: (&src as *const u64).cast_mut().cast(),
                iov_len: 8,
            };
            // SAFETY: both iovecs point at live 8-byte locals of this thread.
            let n = unsafe { libc::process_vm_readv(me as i32, &local, 1, &remote, 1, 0) };
            assert_eq!((n, word), (8, 0x5eed));
            // SAFETY: as above, reversed.
            let n = unsafe { libc::process_vm_writev(me as i32, &remote, 1, &local, 1, 0) };
            assert_eq!(
                (n, std::io::Error::last_os_error().raw_os_error()),
                (-1, Some(libc::EPERM))
            );
            // SAFETY: ptrace(PTRACE_TRACEME) with null arguments.
            let r = unsafe { libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0) };
            assert_eq!(
                (r, std::io::Error::last_os_error().raw_os_error()),
                (-1, Some(libc::EPERM))
            );
        })
        .join()
        .unwrap();
    }
}
