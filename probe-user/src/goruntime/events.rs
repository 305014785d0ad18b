//! What a per-event Go capture needs from the binary: where runtime.casgstatus is and where in
//! it the uprobe goes (probesite), the goroutine status values and runtime.g.waitreason's
//! offset from DWARF, and where runtime.waitReasonStrings (the wait reasons' names) lives.
//! Pure: parses bytes, needs no root.
use iced_x86::Register;
use object::{Object, ObjectSection, ObjectSegment, ReadRef};

use super::{
    GoBinary, GoError, GoVersion,
    probesite::{self, ProbeSite},
    status::{Statuses, WAIT_REASONS, dwarf_facts, wait_reasons_len},
    table,
};

/// The probed function: every goroutine status change goes through it (runtime/proc.go).
pub const FUNCTION: &str = "runtime.casgstatus";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventPlan {
    pub version: String,
    pub pie: bool,
    /// Page-aligned virtual address of the segment at file offset 0 (load bias, as Layout).
    pub base_vaddr: u64,
    /// Link-time address of runtime.casgstatus and its offset in the file.
    pub function_vaddr: u64,
    pub function_file_offset: u64,
    pub site: ProbeSite,
    pub g_waitreason: u64,
    pub statuses: Statuses,
    /// runtime.waitReasonStrings: [N]string at this link-time address.
    pub wait_reasons_vaddr: u64,
    pub wait_reasons_len: u64,
    /// How syscalls are seen.
    pub syscalls: SyscallPlan,
}

/// How a capture sees a goroutine's system calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SyscallPlan {
    /// Go <= 1.25: casgstatus carries _Grunning -> _Gsyscall and back.
    Casgstatus,
    /// Go >= 1.26: one more probe on each of these functions.
    Probes(Vec<SyscallProbe>),
    /// Go >= 1.26, but the probes cannot be placed: why.
    Unavailable(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyscallProbe {
    /// The eBPF program (probe-ebpf's `go_syscall_*`).
    pub program: &'static str,
    pub function: &'static str,
    pub function_file_offset: u64,
    pub site: ProbeSite,
}

impl SyscallProbe {
    pub fn probe_file_offset(&self) -> u64 {
        self.function_file_offset + self.site.offset
    }
}

impl EventPlan {
    /// File offset of the probed instruction (what the kernel's uprobe takes).
    pub fn probe_file_offset(&self) -> u64 {
        self.function_file_offset + self.site.offset
    }
}

/// Plan the probe for the Go executable `data` (see [`GoBinary`] to also read its layout).
pub fn plan<'d, R: ReadRef<'d>>(data: R) -> Result<EventPlan, GoError> {
    GoBinary::parse(data)?.event_plan()
}

pub(super) fn plan_for<'d, R: ReadRef<'d>>(bin: &GoBinary<'d, R>) -> Result<EventPlan, GoError> {
    let (file, version) = (bin.file(), bin.version().to_owned());
    let unsupported = |what: String| GoError::Unsupported { what };
    if file.architecture() != object::Architecture::X86_64 {
        return Err(unsupported(format!(
            "per-event Go probes read arguments from amd64 registers; this binary is {:?}",
            file.architecture()
        )));
    }
    // The register ABI (ABIInternal) arrived on amd64 in Go 1.17 (cmd/compile/abi-internal.md).
    let parsed = GoVersion::parse(&version);
    if parsed.as_ref().is_some_and(|v| !v.at_least(1, 17)) {
        return Err(unsupported(format!(
            "{version} passes arguments on the stack; per-event probes need Go >= 1.17"
        )));
    }
    // Unstripped: .symtab and DWARF. Stripped: .gopclntab and the layout table.
    let stripped = !super::symbolic(file);
    let malformed = |what: String| GoError::Malformed { what };
    let resolver = if stripped {
        Some(table::Resolver::new(file)?)
    } else {
        None
    };
    // Address and size of a runtime function, from .symtab or .gopclntab.
    let function = |name: &'static str| -> Result<(u64, u64), GoError> {
        match &resolver {
            Some(res) => res
                .function(name)
                .map(|f| (f.addr, f.size))
                .ok_or_else(|| malformed(format!("{name} is not in .gopclntab"))),
            None => {
                let mut want = [(name, None)];
                super::find_symbols_sized(file, &mut want)?;
                want[0].1.ok_or_else(|| GoError::MissingSymbol {
                    version: version.clone(),
                    symbol: name,
                })
            }
        }
    };
    let (reasons, g_waitreason, statuses) = match &resolver {
        Some(res) => {
            let entry = table::lookup(&version)?;
            let reasons = res.symbol(entry, WAIT_REASONS)?;
            (
                (reasons, entry.wait_reasons_len * 16),
                entry.g_waitreason,
                entry.statuses,
            )
        }
        None => {
            let mut want = [(WAIT_REASONS, None)];
            super::find_symbols_sized(file, &mut want)?;
            let reasons = want[0].1.ok_or_else(|| GoError::MissingSymbol {
                version: version.clone(),
                symbol: WAIT_REASONS,
            })?;
            let (g_waitreason, statuses) = dwarf_facts(bin.types()?, &version)?;
            (reasons, g_waitreason, statuses)
        }
    };
    let (rvaddr, rsize) = reasons;
    let reasons_len = wait_reasons_len(rsize)?;
    // gp, oldval, newval: RAX, RBX, RCX under ABIInternal.
    let (fvaddr, fsize) = function(FUNCTION)?;
    let (function_file_offset, site) = place(
        file,
        FUNCTION,
        fvaddr,
        fsize,
        &[Register::RAX, Register::RBX, Register::RCX],
    )?;
    // Go 1.26 enters and leaves _Gsyscall by CAS, around casgstatus (runtime/proc.go
    // reentersyscall, exitsyscall): three more probes see syscalls there.
    let syscalls = if parsed.is_some_and(|v| v.at_least(1, 26)) {
        let plan = SYSCALL_PROBES
            .iter()
            .map(|&(program, name, keep)| {
                let (vaddr, size) = function(name)?;
                let (function_file_offset, site) = place(file, name, vaddr, size, &[keep])?;
                Ok(SyscallProbe {
                    program,
                    function: name,
                    function_file_offset,
                    site,
                })
            })
            .collect::<Result<Vec<_>, GoError>>();
        match plan {
            Ok(p) => SyscallPlan::Probes(p),
            Err(e) => SyscallPlan::Unavailable(e.to_string()),
        }
    } else {
        SyscallPlan::Casgstatus
    };
    let base_vaddr = super::base_vaddr(file)?;
    Ok(EventPlan {
        version,
        pie: file.kind() == object::ObjectKind::Dynamic,
        base_vaddr,
        function_vaddr: fvaddr,
        function_file_offset,
        site,
        g_waitreason,
        statuses,
        wait_reasons_vaddr: rvaddr,
        wait_reasons_len: reasons_len,
        syscalls,
    })
}

/// The uprobe programs for Go >= 1.26 syscalls, the function each goes on, and the register
/// it reads there (R14: the current g under ABIInternal; RAX: the first argument).
const SYSCALL_PROBES: [(&str, &str, Register); 3] = [
    ("go_syscall_enter", "runtime.reentersyscall", Register::R14),
    ("go_syscall_exit", "runtime.exitsyscall", Register::R14),
    (
        "go_syscall_exit_no_p",
        "runtime.exitsyscallNoP",
        Register::RAX,
    ),
];

/// The file offset of function `name` (linked at `vaddr`, `size` bytes) and a probe site in it
/// that leaves `keep` untouched and is never single-stepped.
fn place<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    name: &str,
    vaddr: u64,
    size: u64,
    keep: &[Register],
) -> Result<(u64, ProbeSite), GoError> {
    let malformed = |what: String| GoError::Malformed { what };
    if size == 0 || size > probesite::MAX_FUNCTION as u64 {
        return Err(malformed(format!("{name} has size {size}")));
    }
    // Only the function's bytes (data_range reads just them through ReadCache).
    let code = super::section_by_name(file, ".text")
        .filter(|s| {
            s.address() <= vaddr
                && vaddr.saturating_add(size) <= s.address().saturating_add(s.size())
        })
        .and_then(|s| s.data_range(vaddr, size).ok().flatten())
        .ok_or_else(|| malformed(format!("{name} is not inside .text")))?;
    let site = probesite::choose(code, vaddr, keep).map_err(|e| GoError::Unsupported {
        what: format!("no uprobe site in {name} that avoids single-stepping: {e}"),
    })?;
    let file_offset = file
        .segments()
        .find_map(|s| {
            let (off, len) = s.file_range();
            let rel = vaddr.checked_sub(s.address())?;
            (rel.checked_add(size)? <= len).then(|| off + rel)
        })
        .ok_or_else(|| malformed(format!("{name} is not inside a loaded segment")))?;
    Ok((file_offset, site))
}
