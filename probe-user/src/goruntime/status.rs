//! Runtime facts both the event plan and the layout table need: the goroutine status values,
//! runtime.g.waitreason's offset and the wait-reason names' array (runtime/runtime2.go).
//! Pure: parses bytes, needs no root.
use super::{GoError, dwarf};

pub const WAIT_REASONS: &str = "runtime.waitReasonStrings";
/// waitReason is a uint8 (runtime/runtime2.go): at most 256 names.
pub const MAX_WAIT_REASONS: u64 = 256;

/// Goroutine status values (runtime2.go `_Gidle` ... `_Gdead`), as this binary defines them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Statuses {
    pub idle: u32,
    pub runnable: u32,
    pub running: u32,
    pub syscall: u32,
    pub waiting: u32,
    pub dead: u32,
}

/// Entries of runtime.waitReasonStrings, a [N]string of `size` bytes (a string header is 16
/// bytes on 64-bit).
pub fn wait_reasons_len(size: u64) -> Result<u64, GoError> {
    let len = size / 16;
    if !size.is_multiple_of(16) || len == 0 || len > MAX_WAIT_REASONS {
        return Err(GoError::Malformed {
            what: format!("{WAIT_REASONS} has size {size}"),
        });
    }
    Ok(len)
}

/// runtime.g.waitreason's offset and the goroutine status constants, from DWARF.
pub fn dwarf_facts(types: &dwarf::Types, version: &str) -> Result<(u64, Statuses), GoError> {
    let missing = |what: &str| GoError::MissingDwarf {
        version: version.to_owned(),
        what: what.to_owned(),
    };
    let status = |name: &str| -> Result<u32, GoError> {
        let full = format!("runtime.{name}");
        types
            .constant(&full)
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| missing(&format!("the constant {full}")))
    };
    let statuses = Statuses {
        idle: status("_Gidle")?,
        runnable: status("_Grunnable")?,
        running: status("_Grunning")?,
        syscall: status("_Gsyscall")?,
        waiting: status("_Gwaiting")?,
        dead: status("_Gdead")?,
    };
    let (g_waitreason, t) = types
        .member_path("runtime.g", &["waitreason"])
        .ok_or_else(|| missing("runtime.g.waitreason"))?;
    if t.byte_size != Some(1) {
        return Err(missing("runtime.g.waitreason as a 1-byte type"));
    }
    Ok((g_waitreason, statuses))
}
