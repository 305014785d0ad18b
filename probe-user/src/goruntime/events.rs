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
    if GoVersion::parse(&version).is_some_and(|v| !v.at_least(1, 17)) {
        return Err(unsupported(format!(
            "{version} passes arguments on the stack; per-event probes need Go >= 1.17"
        )));
    }
    // Unstripped: .symtab and DWARF. Stripped: .gopclntab and the layout table.
    let stripped = !super::symbolic(file);
    let malformed = |what: String| GoError::Malformed { what };
    let (func, reasons, g_waitreason, statuses) = if stripped {
        let entry = table::lookup(&version)?;
        let res = table::Resolver::new(file, bin.budget())?;
        let f = res
            .function(FUNCTION)?
            .ok_or_else(|| malformed(format!("{FUNCTION} is not in .gopclntab")))?;
        let reasons = res.symbol(entry, WAIT_REASONS)?;
        (
            (f.addr, f.size),
            (reasons, entry.wait_reasons_len * 16),
            entry.g_waitreason,
            entry.statuses,
        )
    } else {
        // One read of the string table (super::find_symbols_sized says why).
        let mut want = [(FUNCTION, None), (WAIT_REASONS, None)];
        super::find_symbols_sized(file, &mut want, bin.budget())?;
        let [(_, func), (_, reasons)] = want;
        let missing_sym = |symbol| GoError::MissingSymbol {
            version: version.clone(),
            symbol,
        };
        let (g_waitreason, statuses) = dwarf_facts(bin.types()?, &version)?;
        (
            func.ok_or_else(|| missing_sym(FUNCTION))?,
            reasons.ok_or_else(|| missing_sym(WAIT_REASONS))?,
            g_waitreason,
            statuses,
        )
    };
    let ((fvaddr, fsize), (rvaddr, rsize)) = (func, reasons);
    if fsize == 0 || fsize > probesite::MAX_FUNCTION as u64 {
        return Err(malformed(format!("{FUNCTION} has size {fsize}")));
    }
    let reasons_len = wait_reasons_len(rsize)?;

    // Only the function's bytes.
    let code = super::section_by_name(file, ".text")
        .filter(|s| {
            s.address() <= fvaddr
                && fvaddr.saturating_add(fsize) <= s.address().saturating_add(s.size())
        })
        .and_then(|s| super::section_bytes(file, &s, fvaddr, fsize))
        .ok_or_else(|| malformed(format!("{FUNCTION} is not inside .text")))?;
    // gp, oldval, newval: RAX, RBX, RCX under ABIInternal.
    let site = probesite::choose(code, fvaddr, &[Register::RAX, Register::RBX, Register::RCX])
        .map_err(|e| {
            unsupported(format!(
                "no uprobe site in {FUNCTION} that avoids single-stepping: {e}"
            ))
        })?;
    let function_file_offset = file
        .segments()
        .find_map(|s| {
            let (off, len) = s.file_range();
            let rel = fvaddr.checked_sub(s.address())?;
            (rel.checked_add(fsize)? <= len).then(|| off + rel)
        })
        .ok_or_else(|| malformed(format!("{FUNCTION} is not inside a loaded segment")))?;
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
    })
}
