//! Where to put a uprobe in a Go function so the kernel never single-steps it.
//!
//! A uprobe replaces one instruction with int3; on a hit the kernel either emulates the
//! original instruction or copies it to an XOL slot and single-steps it there. Single-stepping
//! costs ~12 µs per hit in this VM against ~0.8 µs emulated (shared/docs/toolchain.md), so it
//! decides whether tracing a Go scheduler function is usable at all. x86's
//! branch_setup_xol_ops (arch/x86/kernel/uprobes.c) emulates relative jumps, conditional
//! jumps and relative calls on every kernel with uprobes, so we look for the first of those.
//!
//! The probe then fires before that instruction, not at the entry: valid only if every call
//! runs the instructions before it exactly once (straight-line code that no branch of the
//! function jumps back into) and none of them writes a register the program reads.
use iced_x86::{
    Decoder, DecoderOptions, FlowControl, Formatter, GasFormatter, Instruction,
    InstructionInfoFactory, OpAccess, Register,
};

/// AT&T syntax, as objdump prints it.
fn text(i: &Instruction) -> String {
    let mut out = String::new();
    GasFormatter::new().format(i, &mut out);
    out
}

/// Longest function we decode (casgstatus is under 1 KiB).
pub const MAX_FUNCTION: usize = 64 << 10;
/// How far into the function we look for an emulated instruction.
const MAX_PREFIX: usize = 64;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSite {
    /// Byte offset from the function's start.
    pub offset: u64,
    /// The probed instruction, e.g. "jb 0x4397ec".
    pub instruction: String,
    /// Instructions before it (which run unprobed, and write none of the kept registers).
    pub skipped: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SiteError {
    #[error("function is {0} bytes, over the {MAX_FUNCTION}-byte cap")]
    TooLong(usize),
    #[error("undecodable instruction at +{0:#x}")]
    Invalid(u64),
    #[error(
        "`{insn}` at +{offset:#x} writes {reg:?}, which the probe reads, before any emulated instruction"
    )]
    Clobbers {
        offset: u64,
        insn: String,
        reg: Register,
    },
    #[error("`{insn}` at +{offset:#x} changes control flow before any emulated instruction")]
    ControlFlow { offset: u64, insn: String },
    #[error("a branch at +{from:#x} jumps to +{to:#x}, at or before the candidate site +{site:#x}")]
    JumpIntoPrologue { from: u64, to: u64, site: u64 },
    #[error("no emulated instruction in the first {MAX_PREFIX} instructions")]
    NotFound,
}

/// Whether the kernel emulates `bytes`' instruction on x86-64: jmp rel8/rel32, call rel32,
/// jcc rel8/rel32, with no prefix (branch_setup_xol_ops' opcode switch).
pub fn kernel_emulates(bytes: &[u8]) -> bool {
    matches!(
        bytes,
        [0x70..=0x7f | 0xe8 | 0xe9 | 0xeb, ..] | [0x0f, 0x80..=0x8f, ..]
    )
}

/// Choose the probe site in `code`, the bytes of a function linked at `addr`, such that the
/// registers in `keep` (full 64-bit names) still hold their entry values there.
pub fn choose(code: &[u8], addr: u64, keep: &[Register]) -> Result<ProbeSite, SiteError> {
    if code.len() > MAX_FUNCTION {
        return Err(SiteError::TooLong(code.len()));
    }
    let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut insns: Vec<Instruction> = Vec::new();
    while decoder.can_decode() {
        let i = decoder.decode();
        if i.is_invalid() {
            // Padding after the last RET may not decode; only the prefix must.
            if insns.len() < MAX_PREFIX {
                return Err(SiteError::Invalid(i.ip() - addr));
            }
            break;
        }
        insns.push(i);
    }
    let end = addr + code.len() as u64;
    let targets: Vec<(u64, u64)> = insns
        .iter()
        .filter(|i| {
            matches!(
                i.flow_control(),
                FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch
            )
        })
        // 0 for indirect jumps, whose targets we cannot know (Go uses them for switch tables,
        // never into a prologue).
        .map(|i| (i.ip(), i.near_branch_target()))
        .filter(|(_, t)| *t >= addr && *t < end)
        .collect();
    let mut info = InstructionInfoFactory::new();
    for (n, i) in insns.iter().take(MAX_PREFIX).enumerate() {
        let off = i.ip() - addr;
        let start = off as usize;
        let bytes = &code[start..start + i.len()];
        if kernel_emulates(bytes) {
            if let Some((from, to)) = targets.iter().find(|(_, t)| *t > addr && *t <= i.ip()) {
                return Err(SiteError::JumpIntoPrologue {
                    from: from - addr,
                    to: to - addr,
                    site: off,
                });
            }
            return Ok(ProbeSite {
                offset: off,
                instruction: text(i),
                skipped: n,
            });
        }
        if i.flow_control() != FlowControl::Next {
            return Err(SiteError::ControlFlow {
                offset: off,
                insn: text(i),
            });
        }
        for r in info.info(i).used_registers() {
            let written = matches!(
                r.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            );
            if written && keep.contains(&r.register().full_register()) {
                return Err(SiteError::Clobbers {
                    offset: off,
                    insn: text(i),
                    reg: r.register().full_register(),
                });
            }
        }
    }
    Err(SiteError::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARGS: &[Register] = &[Register::RAX, Register::RBX, Register::RCX];

    /// runtime.casgstatus of Go 1.19.8 (objdump of tests/go/gosched): a frame set up with
    /// `sub rsp` (single-stepped), argument spills, then the first jcc.
    const GO119: &[u8] = &[
        0x48, 0x83, 0xec, 0x40, // sub $0x40,%rsp
        0x48, 0x89, 0x6c, 0x24, 0x38, // mov %rbp,0x38(%rsp)
        0x48, 0x8d, 0x6c, 0x24, 0x38, // lea 0x38(%rsp),%rbp
        0x48, 0x89, 0x44, 0x24, 0x48, // mov %rax,0x48(%rsp)
        0x89, 0x5c, 0x24, 0x50, // mov %ebx,0x50(%rsp)
        0x89, 0x4c, 0x24, 0x54, // mov %ecx,0x54(%rsp)
        0x0f, 0xba, 0xe3, 0x0c, // bt $0xc,%ebx
        0x90, // nop
        0x72, 0x0a, // jb +0x2c
        0x0f, 0xba, 0xe1, 0x0c, // bt $0xc,%ecx
        0x72, 0x04, // jb +0x2c
        0x39, 0xd9, // cmp %ebx,%ecx
        0x75, 0x42, // jne +0x6e
        0xc3, // (ret, stands for the rest)
    ];

    #[test]
    fn picks_the_first_jcc_of_go119_casgstatus() {
        let s = choose(GO119, 0x4397c0, ARGS).unwrap();
        assert_eq!(s.offset, 0x20);
        assert_eq!(s.skipped, 8);
        assert!(s.instruction.starts_with("jb"), "{}", s.instruction);
    }

    #[test]
    fn stack_check_prologue_probes_the_jbe() {
        // cmp 0x10(%r14),%rsp; jbe +0x40 (the morestack check of a splittable function)
        let code = [0x49, 0x3b, 0x66, 0x10, 0x76, 0x3a, 0xc3];
        let s = choose(&code, 0x1000, &[Register::RAX, Register::R14]).unwrap();
        assert_eq!(s.offset, 4);
    }

    #[test]
    fn refuses_a_prefix_that_writes_an_argument() {
        // mov %rbx,%rax; jmp +0
        let code = [0x48, 0x89, 0xd8, 0xeb, 0x00];
        match choose(&code, 0, ARGS) {
            Err(SiteError::Clobbers { reg, offset: 0, .. }) => assert_eq!(reg, Register::RAX),
            other => panic!("{other:?}"),
        }
        // A write to a sub-register (xor %ecx,%ecx) counts too.
        let code = [0x31, 0xc9, 0xeb, 0x00];
        assert!(matches!(
            choose(&code, 0, ARGS),
            Err(SiteError::Clobbers {
                reg: Register::RCX,
                ..
            })
        ));
    }

    #[test]
    fn refuses_a_site_a_loop_jumps_back_into() {
        // 0: nop; 1: jne 0x1 (jumps onto itself: the probe would fire more than once a call)
        let code = [0x90, 0x75, 0xfe, 0xc3];
        assert!(matches!(
            choose(&code, 0, ARGS),
            Err(SiteError::JumpIntoPrologue { to: 1, .. })
        ));
    }

    #[test]
    fn refuses_control_flow_before_the_site() {
        // ret first: nothing after it runs
        assert!(matches!(
            choose(&[0xc3, 0xeb, 0x00], 0, ARGS),
            Err(SiteError::ControlFlow { offset: 0, .. })
        ));
        // indirect jmp *%rax is not emulated either
        assert!(matches!(
            choose(&[0xff, 0xe0], 0, ARGS),
            Err(SiteError::ControlFlow { .. })
        ));
    }

    #[test]
    fn garbage_and_caps() {
        assert_eq!(choose(&[], 0, ARGS), Err(SiteError::NotFound));
        assert!(matches!(
            choose(&[0x06], 0, ARGS),
            Err(SiteError::Invalid(0))
        ));
        assert!(matches!(
            choose(&vec![0x90; MAX_FUNCTION + 1], 0, ARGS),
            Err(SiteError::TooLong(_))
        ));
        assert_eq!(
            choose(&[0x90; 200], 0, ARGS),
            Err(SiteError::NotFound),
            "64 nops: not emulated (by branch_setup_xol_ops), so no site"
        );
    }

    #[test]
    fn kernel_emulation_table() {
        assert!(kernel_emulates(&[0xeb, 0]));
        assert!(kernel_emulates(&[0x0f, 0x86, 0, 0, 0, 0]));
        assert!(kernel_emulates(&[0xe8, 0, 0, 0, 0]));
        assert!(!kernel_emulates(&[0x66, 0xeb, 0])); // operand-size prefix
        assert!(!kernel_emulates(&[0x55])); // push %rbp: emulated only on newer kernels
        assert!(!kernel_emulates(&[0xc3])); // ret
    }
}
