//! Function names and addresses from `.gopclntab`, the table the Go runtime itself needs for
//! stack traces, so it survives `-ldflags=-s -w` (which drops .symtab and DWARF).
//!
//! Layout of Go 1.18+ (runtime/symtab.go `pcHeader`, cmd/link/internal/ld/pcln.go): a header,
//! then `funcnametab` and `functab` at offsets the header gives. `functab` is nfunc+1 pairs
//! `{entryoff, funcoff uint32}` (the last entry is the end of text); `funcoff` points into the
//! same table at a `_func` whose first two words are `entryOff uint32, nameOff int32`.
//! Everything is bounds-checked against the section: the file may be planted.
use object::{ObjectSection, ReadRef};

use super::GoError;

/// Go 1.18 and 1.19 (symtab.go go118magic).
const MAGIC_118: u32 = 0xffff_fff0;
/// Go 1.20 and later (go120magic).
const MAGIC_120: u32 = 0xffff_fff1;
const HEADER_LEN: usize = 8 + 8 * 8;
/// Largest .gopclntab we read (a large Go binary's is tens of MiB; the daemon's unit caps its
/// memory at 256 MB).
const MAX_PCLNTAB: u64 = 128 << 20;
/// Most functions we accept (a large Go binary has ~100,000); bounds each name lookup's walk.
const MAX_FUNCS: usize = 1 << 21;
/// Longest function name compared.
const MAX_NAME: usize = 4096;

/// A function's link-time address range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Func {
    pub addr: u64,
    pub size: u64,
}

/// .gopclntab, parsed just enough to look functions up by name.
pub struct Pclntab<'d> {
    data: &'d [u8],
    nfunc: usize,
    text_start: u64,
    funcnames: usize,
    functab: usize,
}

fn malformed(what: impl Into<String>) -> GoError {
    GoError::Malformed {
        what: format!(".gopclntab: {}", what.into()),
    }
}

fn u32_at(data: &[u8], off: usize) -> Option<u32> {
    let b = data.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(b.try_into().ok()?))
}

fn u64_at(data: &[u8], off: usize) -> Option<u64> {
    let b = data.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(b.try_into().ok()?))
}

impl<'d> Pclntab<'d> {
    /// The table of `file`, read from `.gopclntab` (or `.data.rel.ro.gopclntab` in PIE).
    pub fn load<R: ReadRef<'d>>(file: &object::File<'d, R>) -> Result<Pclntab<'d>, GoError> {
        let section = super::section_by_name(file, ".gopclntab")
            .or_else(|| super::section_by_name(file, ".data.rel.ro.gopclntab"))
            .ok_or_else(|| malformed("no .gopclntab section: not a Go binary the linker made?"))?;
        if section.size() > MAX_PCLNTAB {
            return Err(GoError::Unsupported {
                what: format!(
                    ".gopclntab is {} bytes, over the {MAX_PCLNTAB}-byte cap",
                    section.size()
                ),
            });
        }
        let data = section
            .data()
            .map_err(|_| malformed("the section lies outside the file"))?;
        // Go 1.27 writes textStart as 0 and relies on moduledata.text; its .text starts with
        // runtime.text (cmd/link's textaddress), as in Go 1.19 where both are written.
        let text = super::section_by_name(file, ".text").map(|s| s.address());
        Self::parse(data, text)
    }

    /// Parse the section's bytes; `text` is the .text address, used if the header's is 0.
    pub fn parse(data: &'d [u8], text: Option<u64>) -> Result<Pclntab<'d>, GoError> {
        if data.len() < HEADER_LEN {
            return Err(malformed("shorter than its header"));
        }
        let magic = u32_at(data, 0).unwrap_or(0);
        if magic != MAGIC_118 && magic != MAGIC_120 {
            return Err(GoError::Unsupported {
                what: format!(
                    ".gopclntab magic {magic:#x}: schedlat reads the Go 1.18+ format \
                     (0xfffffff0, 0xfffffff1)"
                ),
            });
        }
        if data[6] != 1 || data[7] != 8 {
            return Err(GoError::Unsupported {
                what: format!(
                    ".gopclntab for instruction size {} and pointer size {}: only amd64 is read",
                    data[6], data[7]
                ),
            });
        }
        let word = |i: usize| u64_at(data, 8 + 8 * i).unwrap_or(0);
        let in_range = |v: u64, what: &str| {
            usize::try_from(v)
                .ok()
                .filter(|v| *v < data.len())
                .ok_or_else(|| malformed(format!("{what} offset {v:#x} is past its end")))
        };
        let funcnames = in_range(word(3), "funcnametab")?;
        let functab = in_range(word(7), "functab")?;
        // Each function takes 8 bytes of functab: a count past that is a lie, refused before
        // any lookup walks it.
        let nfunc = usize::try_from(word(0))
            .ok()
            .filter(|n| {
                *n <= MAX_FUNCS
                    && n.checked_add(1)
                        .and_then(|e| e.checked_mul(8))
                        .and_then(|b| b.checked_add(functab))
                        .is_some_and(|end| end <= data.len())
            })
            .ok_or_else(|| malformed(format!("{} functions do not fit", word(0))))?;
        let text_start = match (word(2), text) {
            (0, Some(t)) => t,
            (0, None) => return Err(malformed("no text start and no .text section")),
            (t, _) => t,
        };
        Ok(Pclntab {
            data,
            nfunc,
            text_start,
            funcnames,
            functab,
        })
    }

    /// The function called `name`; None if absent (or its entry is malformed).
    pub fn find(&self, name: &str) -> Option<Func> {
        (0..self.nfunc).find_map(|i| (self.name(i)? == name.as_bytes()).then(|| self.func(i))?)
    }

    /// Every function, as (name, range), in address order; entries that do not parse are
    /// skipped.
    pub fn funcs(&self) -> impl Iterator<Item = (&'d [u8], Func)> + '_ {
        (0..self.nfunc).filter_map(|i| Some((self.name(i)?, self.func(i)?)))
    }

    fn entry(&self, i: usize) -> Option<(u32, u32)> {
        let off = self.functab.checked_add(i.checked_mul(8)?)?;
        Some((u32_at(self.data, off)?, u32_at(self.data, off + 4)?))
    }

    fn name(&self, i: usize) -> Option<&'d [u8]> {
        let (_, funcoff) = self.entry(i)?;
        let f = self.functab.checked_add(funcoff as usize)?;
        let name_off = u32_at(self.data, f.checked_add(4)?)?;
        let start = self.funcnames.checked_add(name_off as usize)?;
        let tail = self.data.get(start..)?;
        let tail = &tail[..tail.len().min(MAX_NAME)];
        let end = tail.iter().position(|b| *b == 0)?;
        Some(&tail[..end])
    }

    fn func(&self, i: usize) -> Option<Func> {
        let (start, _) = self.entry(i)?;
        let (end, _) = self.entry(i + 1)?;
        let size = end.checked_sub(start).filter(|s| *s > 0)?;
        Some(Func {
            addr: self.text_start.checked_add(u64::from(start))?,
            size: u64::from(size),
        })
    }
}
