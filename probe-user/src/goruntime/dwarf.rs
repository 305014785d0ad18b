//! Just enough DWARF to find runtime struct layouts in a Go binary: struct members (name,
//! offset, type), array lengths and type sizes, indexed by global .debug_info offset.
//!
//! Go's linker emits zlib-compressed DWARF (.zdebug_* before Go 1.21?, SHF_COMPRESSED later);
//! `object` decompresses both. Everything read from the file is capped.
use std::{borrow::Cow, collections::HashMap};

use gimli::{
    AttributeValue, DebugInfoOffset, EndianSlice, LittleEndian, Section as _, UnitSectionOffset,
};
use object::{CompressionFormat, ObjectSection, ReadRef};

use super::{GoError, budget::Budget};

/// Deflate expands at most ~1032:1 (a 258-byte match per 2-bit code, RFC 1951); `object`
/// reserves the claimed uncompressed size up front, so a larger claim (a forged header) is
/// refused before it allocates.
const MAX_ZLIB_RATIO: u64 = 1032;
/// Most type DIEs we index; a real Go binary has well under a million.
const MAX_TYPES: usize = 4_000_000;
/// Longest member path followed through typedefs/anonymous structs.
const MAX_HOPS: usize = 16;
/// Most members kept per struct (runtime.m, the largest the layouts read, has ~100); more are
/// not kept, so a forged struct of millions of members costs its DIEs' parsing, not memory.
pub const MAX_MEMBERS: usize = 4096;
/// Memory charged per indexed DIE besides its name: the TypeDie or Member and its map slot.
const DIE_COST: u64 = size_of::<TypeDie>() as u64 + 32;
const MEMBER_COST: u64 = size_of::<Member>() as u64;

#[derive(Debug, Default)]
pub struct TypeDie {
    pub tag: u16,
    pub name: Option<String>,
    pub byte_size: Option<u64>,
    pub type_ref: Option<u64>,
    /// DW_TAG_array_type: DW_AT_count (or upper_bound + 1) of its subrange.
    pub count: Option<u64>,
    pub members: Vec<Member>,
}

#[derive(Debug)]
pub struct Member {
    pub name: String,
    pub offset: u64,
    pub type_ref: Option<u64>,
}

enum IndexError {
    Gimli(gimli::Error),
    TooMany,
    Budget(GoError),
    /// Abbreviation tables overlapping beyond the work budget.
    AbbrevWork(u64),
}

impl From<gimli::Error> for IndexError {
    fn from(e: gimli::Error) -> Self {
        IndexError::Gimli(e)
    }
}

/// Bytes of the abbreviation table at `offset` (entries up to and including the null code,
/// DWARF 5 section 7.5.3), scanning at most `limit` bytes; None past `limit`. A table cut
/// short by the section's end counts to the end (gimli then reports the error).
fn abbrev_table_len(section: &[u8], offset: u64, limit: u64) -> Option<u64> {
    let start = usize::try_from(offset).unwrap_or(usize::MAX);
    let end = section
        .len()
        .min(start.saturating_add(usize::try_from(limit).unwrap_or(usize::MAX)));
    // Scanning stops at `end`, so the scan itself stays within the budget.
    let window = &section[..end];
    let mut pos = start;
    let uleb = |pos: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let b = *window.get(*pos)?;
            *pos += 1;
            if shift < 64 {
                v |= u64::from(b & 0x7f) << shift;
            }
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        Some(v)
    };
    let run = |pos: &mut usize| -> Option<()> {
        loop {
            if uleb(pos)? == 0 {
                return Some(()); // null code: end of the table
            }
            uleb(pos)?; // tag
            *pos += 1; // DW_CHILDREN_*
            loop {
                let (name, form) = (uleb(pos)?, uleb(pos)?);
                if form == u64::from(gimli::DW_FORM_implicit_const.0) {
                    uleb(pos)?; // its (signed) LEB128 value: same length rules
                }
                if name == 0 && form == 0 {
                    break;
                }
            }
        }
    };
    let done = run(&mut pos).is_some();
    if !done && end < section.len() {
        return None;
    }
    Some(pos.min(end).saturating_sub(start) as u64)
}

/// Type DIEs by global .debug_info offset, and named structs by name.
pub struct Types {
    by_offset: HashMap<u64, TypeDie>,
    struct_by_name: HashMap<String, u64>,
    /// The runtime package's named constants (DW_TAG_constant, e.g. runtime._Grunning).
    consts: HashMap<String, i64>,
}

/// Load the DWARF sections needed (`None` if the binary has no .debug_info: stripped).
fn load_section<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    name: &str,
    budget: &Budget,
) -> Result<Cow<'d, [u8]>, GoError> {
    let Some(section) = super::section_by_name(file, name) else {
        return Ok(Cow::Borrowed(&[]));
    };
    let bad = |what: String| GoError::Malformed {
        what: format!("DWARF section {name}: {what}"),
    };
    let compressed = section
        .compressed_data()
        .map_err(|e| bad(format!("unreadable compression header ({e})")))?;
    match compressed.format {
        CompressionFormat::None | CompressionFormat::Zlib => {}
        // Go writes zlib; zstd would decompress without a size bound in `object`.
        other => return Err(bad(format!("unsupported compression {other:?}"))),
    }
    let most = (compressed.data.len() as u64)
        .saturating_mul(MAX_ZLIB_RATIO)
        .saturating_add(64);
    if compressed.format == CompressionFormat::Zlib && compressed.uncompressed_size > most {
        return Err(bad(format!(
            "claims {} bytes uncompressed from {} compressed, more than zlib can expand to",
            compressed.uncompressed_size,
            compressed.data.len()
        )));
    }
    // The claimed size is allocated up front (object reserves it): charged before.
    if compressed.format != CompressionFormat::None {
        budget.charge(
            compressed.uncompressed_size,
            &format!("decompressing DWARF section {name}"),
        )?;
    }
    compressed
        .decompress()
        .map_err(|e| bad(format!("cannot decompress ({e})")))
}

pub fn has_debug_info<'d, R: ReadRef<'d>>(file: &object::File<'d, R>) -> bool {
    super::section_by_name(file, ".debug_info").is_some()
}

impl Types {
    /// Index every type DIE of interest in the binary's .debug_info.
    pub fn load<'d, R: ReadRef<'d>>(
        file: &object::File<'d, R>,
        budget: &Budget,
    ) -> Result<Types, GoError> {
        let info = load_section(file, ".debug_info", budget)?;
        let abbrev = load_section(file, ".debug_abbrev", budget)?;
        let str_ = load_section(file, ".debug_str", budget)?;
        Self::from_sections(&info, &abbrev, &str_, budget)
    }

    /// Index uncompressed .debug_info / .debug_abbrev / .debug_str contents, charging the
    /// index to `budget`.
    pub fn from_sections(
        info: &[u8],
        abbrev: &[u8],
        str_: &[u8],
        budget: &Budget,
    ) -> Result<Types, GoError> {
        let dwarf = gimli::Dwarf {
            debug_info: gimli::DebugInfo::new(info, LittleEndian),
            debug_abbrev: gimli::DebugAbbrev::new(abbrev, LittleEndian),
            debug_str: gimli::DebugStr::new(str_, LittleEndian),
            ..Default::default()
        };
        Self::index(&dwarf, budget).map_err(|e| GoError::Malformed {
            what: match e {
                IndexError::Budget(e) => return e,
                IndexError::Gimli(e) => format!("DWARF .debug_info: {e}"),
                IndexError::TooMany => format!("DWARF .debug_info has over {MAX_TYPES} types"),
                IndexError::AbbrevWork(budget) => format!(
                    "DWARF units' abbreviation tables overlap: parsing them would read over \
                     {budget} bytes of .debug_abbrev (twice its size plus 64 KiB)"
                ),
            },
        })
    }

    fn index(
        dwarf: &gimli::Dwarf<EndianSlice<'_, LittleEndian>>,
        budget: &Budget,
    ) -> Result<Types, IndexError> {
        let charge = |bytes: u64| {
            budget
                .charge(bytes, "indexing DWARF types")
                .map_err(IndexError::Budget)
        };
        let mut by_offset = HashMap::new();
        let mut struct_by_name = HashMap::new();
        let mut consts = HashMap::new();
        // Each unit names the offset of its abbreviation table, which runs to a null entry.
        // Parsed once per offset; and since tables of a real binary do not overlap (Go writes
        // one for all units), the bytes they span add up to at most the section: a budget of
        // twice that stops forged units pointing into one long table at every offset, which
        // made the work quadratic (20,000 units over 120 KB: 40 s).
        let abbrev_section = dwarf.debug_abbrev.reader().slice();
        let budget = (abbrev_section.len() as u64)
            .saturating_mul(2)
            .saturating_add(64 << 10);
        let mut spent = 0u64;
        let mut tables: HashMap<u64, std::sync::Arc<gimli::Abbreviations>> = HashMap::new();
        let mut units = dwarf.units();
        while let Some(header) = units.next()? {
            // Not `dwarf.unit()`: that also parses the line program, which we do not need.
            let at = header.debug_abbrev_offset().0 as u64;
            let abbrevs = match tables.get(&at) {
                Some(a) => a.clone(),
                None => {
                    let left = budget.saturating_sub(spent);
                    spent += abbrev_table_len(abbrev_section, at, left)
                        .ok_or(IndexError::AbbrevWork(budget))?;
                    let a = dwarf.abbreviations(&header)?;
                    tables.insert(at, a.clone());
                    a
                }
            };
            let base = match header.offset() {
                UnitSectionOffset::DebugInfoOffset(o) => o.0 as u64,
                _ => continue,
            };
            let mut entries = header.entries(&abbrevs);
            // The struct or array whose children (members, subranges) we are reading.
            let mut parent: Option<(isize, u64)> = None;
            let mut depth: isize = 0;
            while let Some((delta, entry)) = entries.next_dfs()? {
                depth += delta;
                if parent.is_some_and(|(d, _)| depth <= d) {
                    parent = None;
                }
                let off = base + entry.offset().0 as u64;
                let tag = entry.tag();
                let name = || -> gimli::Result<Option<String>> {
                    Ok(match entry.attr_value(gimli::DW_AT_name)? {
                        // Go writes names inline (DW_FORM_string); accept .debug_str too.
                        Some(AttributeValue::String(s)) => Some(s.to_string_lossy().into_owned()),
                        Some(AttributeValue::DebugStrRef(o)) => {
                            Some(dwarf.debug_str.get_str(o)?.to_string_lossy().into_owned())
                        }
                        _ => None,
                    })
                };
                let type_ref =
                    |entry: &gimli::DebuggingInformationEntry<_>| -> gimli::Result<Option<u64>> {
                        Ok(match entry.attr_value(gimli::DW_AT_type)? {
                            Some(AttributeValue::UnitRef(r)) => Some(base + r.0 as u64),
                            Some(AttributeValue::DebugInfoRef(DebugInfoOffset(r))) => {
                                Some(r as u64)
                            }
                            _ => None,
                        })
                    };
                let udata = |at| -> gimli::Result<Option<u64>> {
                    Ok(entry.attr_value(at)?.and_then(|v| v.udata_value()))
                };
                match tag {
                    gimli::DW_TAG_structure_type
                    | gimli::DW_TAG_array_type
                    | gimli::DW_TAG_typedef
                    | gimli::DW_TAG_base_type
                    | gimli::DW_TAG_pointer_type => {
                        if by_offset.len() >= MAX_TYPES {
                            return Err(IndexError::TooMany);
                        }
                        let name = name()?;
                        charge(DIE_COST + name.as_ref().map_or(0, |n| n.len() as u64))?;
                        if tag == gimli::DW_TAG_structure_type {
                            if let Some(n) = &name {
                                if !struct_by_name.contains_key(n) {
                                    charge(n.len() as u64 + 32)?;
                                    struct_by_name.insert(n.clone(), off);
                                }
                            }
                        }
                        by_offset.insert(
                            off,
                            TypeDie {
                                tag: tag.0,
                                name,
                                byte_size: udata(gimli::DW_AT_byte_size)?,
                                type_ref: type_ref(entry)?,
                                ..Default::default()
                            },
                        );
                        if matches!(tag, gimli::DW_TAG_structure_type | gimli::DW_TAG_array_type)
                            && entry.has_children()
                        {
                            parent = Some((depth, off));
                        }
                    }
                    gimli::DW_TAG_member => {
                        if let (Some((_, p)), Some(n)) = (parent, name()?) {
                            let offset = udata(gimli::DW_AT_data_member_location)?;
                            let t = type_ref(entry)?;
                            let die = by_offset
                                .get_mut(&p)
                                .filter(|d| d.members.len() < MAX_MEMBERS);
                            if let (Some(die), Some(offset)) = (die, offset) {
                                charge(MEMBER_COST + n.len() as u64)?;
                                die.members.push(Member {
                                    name: n,
                                    offset,
                                    type_ref: t,
                                });
                            }
                        }
                    }
                    gimli::DW_TAG_constant => {
                        if let Some(n) = name()?.filter(|n| n.starts_with("runtime.")) {
                            if by_offset.len() + consts.len() >= MAX_TYPES {
                                return Err(IndexError::TooMany);
                            }
                            let v = entry.attr_value(gimli::DW_AT_const_value)?;
                            if let Some(v) = v
                                .and_then(|v| v.sdata_value().or(v.udata_value().map(|u| u as i64)))
                            {
                                if let std::collections::hash_map::Entry::Vacant(e) =
                                    consts.entry(n)
                                {
                                    charge(e.key().len() as u64 + 48)?;
                                    e.insert(v);
                                }
                            }
                        }
                    }
                    gimli::DW_TAG_subrange_type => {
                        if let Some((_, p)) = parent {
                            let count = match udata(gimli::DW_AT_count)? {
                                Some(c) => Some(c),
                                None => {
                                    udata(gimli::DW_AT_upper_bound)?.and_then(|u| u.checked_add(1))
                                }
                            };
                            if let Some(die) = by_offset.get_mut(&p) {
                                die.count = count;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(Types {
            by_offset,
            struct_by_name,
            consts,
        })
    }

    /// A runtime constant, e.g. "runtime._Gwaiting".
    pub fn constant(&self, name: &str) -> Option<i64> {
        self.consts.get(name).copied()
    }

    pub fn struct_named(&self, name: &str) -> Option<&TypeDie> {
        self.by_offset.get(self.struct_by_name.get(name)?)
    }

    /// Follow typedefs to the underlying type.
    pub fn resolve(&self, mut off: u64) -> Option<&TypeDie> {
        for _ in 0..MAX_HOPS {
            let t = self.by_offset.get(&off)?;
            if t.tag != gimli::DW_TAG_typedef.0 {
                return Some(t);
            }
            off = t.type_ref?;
        }
        None
    }

    /// Offset from the start of struct `root` of the member at `path` (e.g. ["gFree", "n"]),
    /// and that member's type.
    pub fn member_path(&self, root: &str, path: &[&str]) -> Option<(u64, &TypeDie)> {
        let mut t = self.struct_named(root)?;
        let mut offset = 0u64;
        for (hop, name) in path.iter().enumerate() {
            if hop >= MAX_HOPS {
                return None;
            }
            let m = t.members.iter().find(|m| m.name == *name)?;
            offset = offset.checked_add(m.offset)?;
            t = self.resolve(m.type_ref?)?;
        }
        Some((offset, t))
    }
}
