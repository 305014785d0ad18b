//! Make a running thread of another process execute system calls of the test's choosing,
//! through ptrace (as a debugger's `call` does): the way to ask what a running daemon *could*
//! do with its credentials, capabilities and seccomp filter, with no test hook compiled into it.
//! x86_64 only.

/// A thread held stopped under ptrace; its registers are put back and it is let go on drop.
pub struct Tracee {
    tid: i32,
    saved: libc::user_regs_struct,
    /// Address of a `syscall` instruction (0f 05) in its text.
    syscall_insn: u64,
    /// Scratch memory on its stack, well below the red zone.
    scratch: u64,
}

fn check(rc: libc::c_long, what: &str, tid: i32) {
    assert!(
        rc != -1,
        "{what} on thread {tid}: {}",
        std::io::Error::last_os_error()
    );
}

fn wait_stop(tid: i32) {
    let mut status = 0;
    // SAFETY: waitpid writes the status into a live local.
    let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
    assert_eq!(r, tid, "waitpid {tid}: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFSTOPPED(status),
        "thread {tid} not stopped: {status:#x}"
    );
}

impl Tracee {
    /// Seize and stop `tid`. It must be blocked in a system call (a daemon's idle threads
    /// are), which gives the address of a `syscall` instruction: the one it entered by.
    pub fn seize(tid: i32) -> Self {
        // SAFETY: ptrace requests with integer arguments.
        unsafe {
            check(
                libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0),
                "PTRACE_SEIZE",
                tid,
            );
            check(
                libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0),
                "PTRACE_INTERRUPT",
                tid,
            );
        }
        wait_stop(tid);
        let mut t = Tracee {
            tid,
            // SAFETY: plain-old-data registers, filled in by get_regs.
            saved: unsafe { std::mem::zeroed() },
            syscall_insn: 0,
            scratch: 0,
        };
        t.saved = t.get_regs();
        let at = t.saved.rip - 2;
        let word = t.peek(at);
        assert_eq!(
            word & 0xffff,
            0x050f,
            "thread {tid} is not stopped after a syscall instruction (rip {:#x})",
            t.saved.rip
        );
        t.syscall_insn = at;
        t.scratch = (t.saved.rsp - 2048) & !0xf;
        t
    }

    fn get_regs(&self) -> libc::user_regs_struct {
        // SAFETY: GETREGS fills a user_regs_struct that outlives the call.
        unsafe {
            let mut r: libc::user_regs_struct = std::mem::zeroed();
            check(
                libc::ptrace(
                    libc::PTRACE_GETREGS,
                    self.tid,
                    0,
                    &mut r as *mut libc::user_regs_struct,
                ),
                "PTRACE_GETREGS",
                self.tid,
            );
            r
        }
    }

    fn set_regs(&self, r: &libc::user_regs_struct) {
        // SAFETY: SETREGS reads a user_regs_struct that outlives the call.
        let rc = unsafe {
            libc::ptrace(
                libc::PTRACE_SETREGS,
                self.tid,
                0,
                r as *const libc::user_regs_struct,
            )
        };
        check(rc, "PTRACE_SETREGS", self.tid);
    }

    fn peek(&self, addr: u64) -> u64 {
        // SAFETY: PEEKDATA returns the word; errors are told apart through errno.
        unsafe {
            *libc::__errno_location() = 0;
            let w = libc::ptrace(libc::PTRACE_PEEKDATA, self.tid, addr, 0);
            assert!(
                *libc::__errno_location() == 0,
                "PTRACE_PEEKDATA {addr:#x} of {}: {}",
                self.tid,
                std::io::Error::last_os_error()
            );
            w as u64
        }
    }

    /// Write `bytes` into the tracee's scratch memory at `offset`; returns their address.
    pub fn put(&self, offset: u64, bytes: &[u8]) -> u64 {
        let addr = self.scratch + offset;
        for (i, chunk) in bytes.chunks(8).enumerate() {
            let a = addr + 8 * i as u64;
            let mut word = self.peek(a).to_le_bytes();
            word[..chunk.len()].copy_from_slice(chunk);
            // SAFETY: POKEDATA writes one word of the stopped tracee.
            let rc = unsafe {
                libc::ptrace(libc::PTRACE_POKEDATA, self.tid, a, u64::from_le_bytes(word))
            };
            check(rc, "PTRACE_POKEDATA", self.tid);
        }
        addr
    }

    /// Run system call `nr` with `args` in the tracee; its return value (-errno on failure).
    pub fn syscall(&self, nr: libc::c_long, args: [u64; 6]) -> i64 {
        let mut r = self.saved;
        r.rax = nr as u64;
        // No syscall in progress: the kernel must not restart the interrupted one here.
        r.orig_rax = u64::MAX;
        r.rip = self.syscall_insn;
        (r.rdi, r.rsi, r.rdx, r.r10, r.r8, r.r9) =
            (args[0], args[1], args[2], args[3], args[4], args[5]);
        self.set_regs(&r);
        // SAFETY: SINGLESTEP with integer arguments: the syscall instruction, then a stop.
        let rc = unsafe { libc::ptrace(libc::PTRACE_SINGLESTEP, self.tid, 0, 0) };
        check(rc, "PTRACE_SINGLESTEP", self.tid);
        wait_stop(self.tid);
        self.get_regs().rax as i64
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        // The interrupted syscall restarts as if nothing happened.
        self.set_regs(&self.saved);
        // SAFETY: DETACH with no signal.
        unsafe { libc::ptrace(libc::PTRACE_DETACH, self.tid, 0, 0) };
    }
}
