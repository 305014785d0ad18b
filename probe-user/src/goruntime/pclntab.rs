//! Function names and addresses from `.gopclntab`, the table the Go runtime itself needs for
//! stack traces, so it survives `-ldflags=-s -w` (which drops .symtab and DWARF).
//!
//! Layout of Go 1.18+ (runtime/symtab.go `pcHeader`, cmd/link/internal/ld/pcln.go): a header,
//! then `funcnametab` and `functab` at offsets the header gives. `functab` is nfunc+1 pairs
//! `{entryoff, funcoff uint32}` (the last entry is the end of text); `funcoff` points into the
//! same table at a `_func` whose first two words are `entryOff uint32, nameOff int32`.
//! Everything is bounds-checked against the section: the file may be planted.
use object::{
    Object, ObjectSection, ReadRef, RelocationFlags, SectionFlags, elf,
    read::elf::SectionHeader as _,
};

use super::{GoError, budget::Budget};

/// Go 1.2-1.15 and 1.16-1.17 (symtab.go go12magic, go116magic): Go, but a format not read.
const MAGIC_12: u32 = 0xffff_fffb;
const MAGIC_116: u32 = 0xffff_fffa;
/// Go 1.18 and 1.19 (symtab.go go118magic).
pub const MAGIC_118: u32 = 0xffff_fff0;
/// Go 1.20 and later (go120magic).
pub const MAGIC_120: u32 = 0xffff_fff1;
const HEADER_LEN: usize = 8 + 8 * 8;
/// Largest .gopclntab we read (a large Go binary's is tens of MiB; the daemon's unit caps its
/// memory at 256 MB).
const MAX_PCLNTAB: u64 = 128 << 20;
/// Most functions we accept (a large Go binary has ~100,000); bounds each name lookup's walk.
const MAX_FUNCS: usize = 1 << 21;
/// Longest function name compared.
const MAX_NAME: usize = 4096;
/// Longest name [`Pclntab::find`] looks up: every function schedlat needs has a short name,
/// so the index holds only names up to this long and reads at most this much of each.
pub const MAX_LOOKUP_NAME: usize = 128;

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
    /// (keyed hash of the name, function index), sorted: built on the first lookup, so
    /// each name is read once per analysis, not once per lookup (a forged table whose
    /// 2^21 names share one long unterminated run made each lookup scan gigabytes).
    index: std::cell::OnceCell<Vec<(u32, u32)>>,
    hasher: std::hash::RandomState,
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
    pub fn load<R: ReadRef<'d>>(
        file: &object::File<'d, R>,
        budget: &Budget,
    ) -> Result<Pclntab<'d>, GoError> {
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
        // Function entries are offsets from runtime.text. Go 1.18-1.25 write it in the header;
        // later releases write 0 there (symtab.go: "no longer stored as it requires a
        // relocation") and keep it only in runtime.firstmoduledata. Not the .text section's
        // start: with external linking (cgo) C code comes first.
        let header_text = u64_at(data, 24).unwrap_or(0);
        let text = if header_text == 0 {
            moduledata_text(file, section.address(), budget)?
        } else {
            None
        };
        Self::parse(data, text)
    }

    /// Parse the section's bytes; `text` (runtime.text) is used if the header's is 0.
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
            (0, None) => {
                return Err(malformed(
                    "no text start in the header, and runtime.firstmoduledata (which holds it) \
                     was not found",
                ));
            }
            (t, _) => t,
        };
        Ok(Pclntab {
            data,
            nfunc,
            text_start,
            funcnames,
            functab,
            index: std::cell::OnceCell::new(),
            hasher: std::hash::RandomState::new(),
        })
    }

    fn hash(&self, name: &[u8]) -> u32 {
        use std::hash::BuildHasher as _;
        // Keyed (SipHash, a random key per table): a planted table cannot aim collisions.
        self.hasher.hash_one(name) as u32
    }

    /// The name index, built once: each function's name read once, at most
    /// MAX_LOOKUP_NAME + 1 bytes of it, both charged to `budget` first.
    fn index(&self, budget: &Budget) -> Result<&[(u32, u32)], GoError> {
        if let Some(ix) = self.index.get() {
            return Ok(ix);
        }
        let n = self.nfunc as u64;
        budget.charge(n * 8, "the .gopclntab name index")?;
        budget.scan(
            n * (16 + MAX_LOOKUP_NAME as u64 + 1),
            "indexing .gopclntab names",
        )?;
        let mut ix: Vec<(u32, u32)> = Vec::with_capacity(self.nfunc);
        for i in 0..self.nfunc {
            if let Some(name) = self.name_within(i, MAX_LOOKUP_NAME) {
                ix.push((self.hash(name), i as u32));
            }
        }
        ix.sort_unstable();
        Ok(self.index.get_or_init(|| ix))
    }

    /// The function called `name`: the first in table order that is well formed; None if
    /// absent (names over MAX_LOOKUP_NAME bytes are never found).
    pub fn find(&self, name: &str, budget: &Budget) -> Result<Option<Func>, GoError> {
        if name.len() > MAX_LOOKUP_NAME {
            return Ok(None);
        }
        let ix = self.index(budget)?;
        let h = self.hash(name.as_bytes());
        let from = ix.partition_point(|e| e.0 < h);
        Ok(ix[from..]
            .iter()
            .take_while(|e| e.0 == h)
            .find_map(|&(_, i)| {
                let i = i as usize;
                (self.name_within(i, MAX_LOOKUP_NAME)? == name.as_bytes()).then(|| self.func(i))?
            }))
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
        self.name_within(i, MAX_NAME)
    }

    /// Function `i`'s name if it ends (NUL) within `max` bytes; reads at most `max + 1`.
    fn name_within(&self, i: usize, max: usize) -> Option<&'d [u8]> {
        let (_, funcoff) = self.entry(i)?;
        let f = self.functab.checked_add(funcoff as usize)?;
        let name_off = u32_at(self.data, f.checked_add(4)?)?;
        let start = self.funcnames.checked_add(name_off as usize)?;
        let tail = self.data.get(start..)?;
        let tail = &tail[..tail.len().min(max + 1)];
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

/// Offsets in runtime.moduledata (runtime/symtab.go, the same from Go 1.18 to 1.27):
/// `pcHeader *pcHeader`, six slices (funcnametab, cutab, filetab, pctab, pclntable, ftab),
/// `findfunctab`, then `minpc, maxpc, text, etext uintptr`.
const MD_MINPC: u64 = 8 + 6 * 24 + 8;
/// Most bytes of data sections scanned, and of relocation tables read, looking for moduledata
/// (a large Go binary has a few MiB of data and of .rela.dyn).
const MAX_SCAN: u64 = 64 << 20;
const MAX_RELA: u64 = 32 << 20;
/// Most words pointing at the pcHeader that are tried as moduledata (Go has one per module).
const MAX_CANDIDATES: usize = 16;

/// runtime.text from runtime.firstmoduledata: the data word that points at the pcHeader (the
/// start of .gopclntab) and whose minpc/maxpc/text/etext are consistent. In PIE those words are
/// 0 in the file and filled by R_X86_64_RELATIVE relocations, whose addends are the values.
fn moduledata_text<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    pcheader: u64,
    budget: &Budget,
) -> Result<Option<u64>, GoError> {
    let flags = |s: &object::Section<'d, '_, R>| match s.flags() {
        SectionFlags::Elf { sh_flags } => sh_flags,
        _ => 0,
    };
    let alloc_write = u64::from(elf::SHF_ALLOC | elf::SHF_WRITE);
    // Sizes are checked before any section is read (through ReadCache, data() reads it all).
    let mut left = MAX_SCAN;
    let mut data_sections: Vec<(u64, &'d [u8])> = Vec::new();
    for s in file.sections() {
        if flags(&s) & alloc_write != alloc_write || s.file_range().is_none() {
            continue;
        }
        let Some(l) = left.checked_sub(s.size()) else {
            return Ok(None);
        };
        left = l;
        budget.scan(s.size(), "looking for runtime.firstmoduledata")?;
        let Ok(d) = s.data() else {
            return Ok(None);
        };
        data_sections.push((s.address(), d));
    }
    let relocs = relative_relocations(file, budget);
    // The value of the word at `addr`: in the file, or (0 there) its relocation's addend.
    let word = |addr: u64| -> Option<u64> {
        let in_file = data_sections.iter().find_map(|(a, d)| {
            let off = usize::try_from(addr.checked_sub(*a)?).ok()?;
            u64_at(d, off)
        });
        match in_file {
            Some(v) if v != 0 => Some(v),
            _ => relocs.iter().find(|(at, _)| *at == addr).map(|(_, v)| *v),
        }
    };
    // Candidates: words holding the pcHeader's address, in the file or by relocation.
    let mut candidates: Vec<u64> = Vec::new();
    for (a, d) in &data_sections {
        for (i, w) in d.chunks_exact(8).enumerate() {
            if u64::from_le_bytes(w.try_into().unwrap_or([0; 8])) == pcheader {
                candidates.push(a.wrapping_add(8 * i as u64));
            }
        }
    }
    candidates.extend(
        relocs
            .iter()
            .filter(|(_, v)| *v == pcheader)
            .map(|(at, _)| *at),
    );
    candidates.truncate(MAX_CANDIDATES);
    Ok(candidates.into_iter().find_map(|m| {
        let f = |i: u64| word(m.wrapping_add(MD_MINPC + 8 * i));
        let (minpc, maxpc, text, etext) = (f(0)?, f(1)?, f(2)?, f(3)?);
        (text <= minpc
            && minpc < maxpc
            && maxpc <= etext
            && super::in_section_with(file, text, elf::SHF_EXECINSTR))
        .then_some(text)
    }))
}

/// The R_X86_64_RELATIVE relocations (address, addend) of a PIE: the values of pointer words
/// the file holds as 0. Empty when the relocation tables exceed the cap (MAX_RELA).
pub(crate) fn relative_relocations<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    budget: &Budget,
) -> Vec<(u64, u64)> {
    let rela_size: u64 = match file {
        object::File::Elf64(e) => {
            let endian = e.endian();
            e.elf_section_table()
                .iter()
                .filter(|h| matches!(h.sh_type(endian), elf::SHT_RELA | elf::SHT_REL))
                .map(|h| h.sh_size(endian))
                .fold(0u64, u64::saturating_add)
        }
        _ => u64::MAX,
    };
    // Each 24-byte Elf64_Rela read (through a BudgetedFile, charged there) becomes 16 bytes
    // here; scanned once.
    let fits = rela_size <= MAX_RELA
        && budget.charge(rela_size / 24 * 16, "relocations").is_ok()
        && budget.scan(rela_size, "reading relocations").is_ok();
    if fits {
        file.dynamic_relocations()
            .into_iter()
            .flatten()
            .filter(|(_, r)| {
                r.flags()
                    == RelocationFlags::Elf {
                        r_type: elf::R_X86_64_RELATIVE,
                    }
            })
            .map(|(at, r)| (at, r.addend() as u64))
            .collect()
    } else {
        Vec::new()
    }
}

/// The magic at the start of the binary's .gopclntab if it is one of Go's (runtime/symtab.go):
/// None for a binary without one, i.e. not made by the Go linker.
pub fn magic<'d, R: ReadRef<'d>>(file: &object::File<'d, R>) -> Option<u32> {
    let section = super::section_by_name(file, ".gopclntab")
        .or_else(|| super::section_by_name(file, ".data.rel.ro.gopclntab"))?;
    let head = super::section_bytes(file, &section, section.address(), 4)?;
    let m = u32_at(head, 0)?;
    [MAGIC_12, MAGIC_116, MAGIC_118, MAGIC_120]
        .contains(&m)
        .then_some(m)
}
