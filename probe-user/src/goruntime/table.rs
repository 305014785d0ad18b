//! Stripped Go binaries (`-ldflags=-s -w`: no .symtab, no DWARF): what DWARF would say comes
//! from a table keyed by Go version, and the runtime globals' addresses from the code that
//! uses them.
//!
//! The table (layouts.json) is made by `cargo xtask go-layouts` from the fixtures the project
//! builds with its own toolchains: [`learn`] reads each unstripped fixture's DWARF and symbols.
//! Struct offsets and constants are per Go version. Addresses are per binary, so instead of an
//! address the table keeps *recipes*: "the k-th RIP-relative operand of function F points at
//! the symbol plus A". The runtime package is compiled once per toolchain, so F's code (found
//! by name in .gopclntab, which stripping keeps) is the same in every program built with that
//! Go; [`learn`] keeps only recipes that hold in every fixture (plain and PIE), and
//! [`Resolver::symbol`] demands that all of a symbol's recipes agree in the target.
use std::{collections::BTreeMap, sync::LazyLock};

use iced_x86::{Decoder, DecoderOptions};
use object::{ReadRef, elf};
use serde::{Deserialize, Serialize};

use super::{
    DwarfLayouts, EXTRA_M_IN_USE, EXTRA_M_LENGTH, GCountLayout, GcRingLayout, GoError, GoVersion,
    HistLayout, SchedStatsLayout, StwLayout,
    budget::Budget,
    dwarf,
    pclntab::{Func, Pclntab},
    probesite::MAX_FUNCTION,
    status::{self, Statuses},
};

/// The runtime globals schedlat reads (runtime/runtime2.go, proc.go, mstats.go, traceback.go,
/// extern.go).
pub const SYMBOLS: &[&str] = &[
    "runtime.sched",
    "runtime.gomaxprocs",
    "runtime.allglen",
    "runtime.allp",
    "runtime.memstats",
    "runtime.waitReasonStrings",
    BUILD_VERSION,
];
/// The release string runtime.Version returns (runtime/extern.go), written by the linker: how
/// a binary without build info tells its release. Only runtime.schedinit (proc.go) is sure to
/// use it, so one recipe is enough; what it points at must then read as that minor release
/// ([`version_without_buildinfo`]).
pub const BUILD_VERSION: &str = "runtime.buildVersion";
/// Recipes kept per symbol, each from a different function.
const RECIPES: usize = 3;

/// "The `operand`-th RIP-relative memory operand in `function` addresses symbol + `addend`."
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipe {
    pub function: String,
    pub operand: usize,
    pub addend: u64,
}

/// One Go version's layouts, as DWARF gives them for its unstripped binaries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The exact toolchain version the entry was learned from, e.g. "go1.19.8".
    pub version: String,
    pub hist: HistLayout,
    pub stw: Option<StwLayout>,
    pub gc_ring: Option<GcRingLayout>,
    pub gcount: Option<GCountLayout>,
    /// Go >= 1.26: goroutines by state, created, threads.
    pub sched_stats: Option<SchedStatsLayout>,
    /// Offset of runtime.g.waitreason, the goroutine status values, len(waitReasonStrings).
    pub g_waitreason: u64,
    pub statuses: Statuses,
    pub wait_reasons_len: u64,
    /// Symbol name -> recipes.
    pub symbols: BTreeMap<String, Vec<Recipe>>,
}

/// The table compiled into schedlat.
pub static TABLE: LazyLock<Vec<Entry>> = LazyLock::new(|| {
    serde_json::from_str(include_str!("layouts.json"))
        .expect("goruntime/layouts.json is valid (checked by the unit tests)")
});

/// The table's entry for `version`: the exact release, else one of the same minor release
/// (struct layouts change between minor releases, not patch releases).
pub fn lookup(version: &str) -> Result<&'static Entry, GoError> {
    let parsed = GoVersion::parse(version);
    let minor = |v: &str| GoVersion::parse(v).map(|p| (p.major, p.minor));
    TABLE
        .iter()
        .find(|e| e.version == version)
        .or_else(|| {
            let want = parsed.as_ref().map(|p| (p.major, p.minor))?;
            TABLE.iter().find(|e| minor(&e.version) == Some(want))
        })
        .ok_or_else(|| GoError::Stripped {
            version: version.to_owned(),
            known: TABLE
                .iter()
                .map(|e| e.version.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Targets of the RIP-relative memory operands in `code` (linked at `addr`), in order.
fn rip_targets(code: &[u8], addr: u64) -> Vec<u64> {
    let mut d = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut out = Vec::new();
    while d.can_decode() {
        let i = d.decode();
        if i.is_ip_rel_memory_operand() {
            out.push(i.ip_rel_memory_address());
        }
    }
    out
}

/// Looks functions and symbols up in one stripped (or unstripped) binary.
pub struct Resolver<'d, 'f, R: ReadRef<'d>> {
    file: &'f object::File<'d, R>,
    pcln: Pclntab<'d>,
    text: object::Section<'d, 'f, R>,
    budget: &'f Budget,
}

impl<'d, 'f, R: ReadRef<'d>> Resolver<'d, 'f, R> {
    pub fn new(file: &'f object::File<'d, R>, budget: &'f Budget) -> Result<Self, GoError> {
        let pcln = Pclntab::load(file, budget)?;
        let text = super::section_by_name(file, ".text").ok_or_else(|| GoError::Malformed {
            what: "no .text section".into(),
        })?;
        Ok(Resolver {
            file,
            pcln,
            text,
            budget,
        })
    }

    /// A function's range from .gopclntab (its name index is built on the first call).
    pub fn function(&self, name: &str) -> Result<Option<Func>, GoError> {
        self.pcln.find(name, self.budget)
    }

    /// A function's code (None if it is not inside .text or over the size cap).
    pub fn code(&self, f: Func) -> Option<&'d [u8]> {
        if f.size > MAX_FUNCTION as u64 {
            return None;
        }
        super::section_bytes(self.file, &self.text, f.addr, f.size)
    }

    fn targets(&self, function: &str) -> Result<Option<Vec<u64>>, GoError> {
        let Some(f) = self.function(function)? else {
            return Ok(None);
        };
        let Some(code) = self.code(f) else {
            return Ok(None);
        };
        self.budget
            .scan(code.len() as u64, "decoding runtime functions")?;
        Ok(Some(rip_targets(code, f.addr)))
    }

    /// Whether `addr` lies in an allocated, writable section (where Go's globals live:
    /// .data, .bss, .noptrdata, .noptrbss).
    fn in_data(&self, addr: u64) -> bool {
        super::in_section_with(self.file, addr, elf::SHF_ALLOC | elf::SHF_WRITE)
    }

    /// The address of `symbol` by its recipes: every recipe whose function exists must give
    /// the same address, inside a data section.
    pub fn symbol(&self, entry: &Entry, symbol: &str) -> Result<u64, GoError> {
        let unsupported = |why: String| GoError::Unsupported {
            what: format!(
                "stripped {}: {symbol} {why}; the layout table (from {}) does not fit this \
                 binary: rebuild it without -ldflags='-s -w'",
                self.version_hint(),
                entry.version
            ),
        };
        let recipes = entry
            .symbols
            .get(symbol)
            .ok_or_else(|| unsupported("has no recipe in the table".into()))?;
        let mut found: Option<u64> = None;
        for r in recipes {
            let Some(targets) = self.targets(&r.function)? else {
                continue;
            };
            let addr = targets
                .get(r.operand)
                .and_then(|t| t.checked_sub(r.addend))
                .filter(|a| self.in_data(*a))
                .ok_or_else(|| {
                    unsupported(format!(
                        "is not where {} operand {} should point",
                        r.function, r.operand
                    ))
                })?;
            match found {
                Some(prev) if prev != addr => {
                    return Err(unsupported(format!(
                        "is at {prev:#x} by one function and {addr:#x} by {}",
                        r.function
                    )));
                }
                _ => found = Some(addr),
            }
        }
        found.ok_or_else(|| unsupported("is used by none of the functions the table names".into()))
    }

    fn version_hint(&self) -> String {
        // Not version(): without build info that would come back here.
        match super::buildinfo::from_section(self.file) {
            Ok(Some(v)) => v,
            _ => "Go binary".into(),
        }
    }
}

/// The version string of a Go binary: from its build info, or for a Go binary whose
/// .go.buildinfo was removed, from the runtime's own version string
/// ([`version_without_buildinfo`]); `GoError::NotGo` if it is not Go at all.
pub fn version<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    budget: &Budget,
) -> Result<String, GoError> {
    match super::buildinfo::from_section(file)? {
        Some(v) => Ok(v),
        None => version_without_buildinfo(file, budget),
    }
}

/// Longest release string accepted from runtime.buildVersion ("go1.26.6 X:nodwarf5" is 19).
const MAX_BUILD_VERSION: u64 = 64;

/// The release of a Go binary whose .go.buildinfo was removed: runtime.buildVersion, the
/// string header {ptr, len} the linker fills in (runtime/extern.go), at the address the table
/// entries' recipes give (or .symtab's, if the binary has one). Each entry of the binary's
/// .gopclntab generation is tried; an address counts only if it holds a release string of the
/// entry's own minor release, and all that do must agree. `NotGo` only for a binary without a
/// Go .gopclntab.
pub fn version_without_buildinfo<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    budget: &Budget,
) -> Result<String, GoError> {
    use super::pclntab::{MAGIC_118, MAGIC_120};
    let magic = super::pclntab::magic(file).ok_or(GoError::NotGo {
        why: "no .go.buildinfo section and no Go .gopclntab",
    })?;
    let known = || {
        TABLE
            .iter()
            .map(|e| e.version.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let refuse = |why: String| GoError::NoBuildInfo {
        why,
        known: known(),
    };
    let minor = |v: &str| GoVersion::parse(v).map(|p| (p.major, p.minor));
    // The magic is the format generation (runtime/symtab.go): go118magic for 1.18-1.19,
    // go120magic from 1.20 on.
    let generation = |e: &&Entry| match (magic, minor(&e.version)) {
        (MAGIC_118, Some(m)) => ((1, 18)..(1, 20)).contains(&m),
        (MAGIC_120, Some(m)) => m >= (1, 20),
        _ => false,
    };
    if !matches!(magic, MAGIC_118 | MAGIC_120) {
        return Err(refuse(format!(
            ".gopclntab magic {magic:#x} is of Go before 1.18, whose runtime schedlat does not read"
        )));
    }
    let mut sym = [(BUILD_VERSION, None)];
    super::find_symbols(file, &mut sym, budget)?;
    let res = Resolver::new(file, budget).map_err(|e| match e {
        e @ GoError::OverBudget { .. } => e,
        e => refuse(format!("its .gopclntab: {e}")),
    })?;
    let relocs = std::cell::OnceCell::new();
    let mut found: Vec<String> = Vec::new();
    let mut unknown: Vec<String> = Vec::new();
    for entry in TABLE.iter().filter(generation) {
        // Where the entry's recipes could point: schedinit's operands are numbered
        // differently between patch releases (operand 35 in go1.25.0, 36 in go1.25.5), so
        // every RIP-relative operand of the recipe's function is tried with its addend; only
        // a release string of the entry's own minor counts, and all must agree (below).
        let addrs: Vec<u64> = match sym[0].1 {
            Some(a) => vec![a],
            None => {
                let mut addrs = Vec::new();
                for r in entry.symbols.get(BUILD_VERSION).into_iter().flatten() {
                    let targets = res.targets(&r.function)?.unwrap_or_default();
                    addrs.extend(
                        targets
                            .into_iter()
                            .filter_map(|t| t.checked_sub(r.addend))
                            .filter(|a| res.in_data(*a)),
                    );
                }
                addrs
            }
        };
        for addr in addrs {
            let Some(v) = read_string(file, addr, || {
                relocs.get_or_init(|| super::pclntab::relative_relocations(file, budget))
            }) else {
                continue;
            };
            let Some(m) = minor(&v) else {
                continue;
            };
            let list = if Some(m) == minor(&entry.version) {
                &mut found
            } else {
                &mut unknown
            };
            if !list.contains(&v) {
                list.push(v);
            }
        }
    }
    match (&found[..], &unknown[..]) {
        ([v], _) => Ok(v.clone()),
        ([], []) => Err(refuse(
            "runtime.buildVersion is not where any layout table entry of its .gopclntab \
             generation puts it, so its release is not one the table knows"
                .into(),
        )),
        ([], [v]) => Err(refuse(format!(
            "runtime.buildVersion reads {v:?}, a release the layout table lacks"
        ))),
        _ => Err(refuse(format!(
            "runtime.buildVersion is read as different releases ({}) by different table \
             entries; refusing to guess",
            [found, unknown].concat().join(", ")
        ))),
    }
}

/// A Go string {ptr, len} at link-time address `addr` in the file, if it is a plausible
/// release string ("go1.", printable, at most MAX_BUILD_VERSION bytes). In a PIE the pointer
/// is 0 in the file and filled by an R_X86_64_RELATIVE relocation.
fn read_string<'d, 'r, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    addr: u64,
    relocs: impl FnOnce() -> &'r Vec<(u64, u64)>,
) -> Option<String> {
    let header = super::buildinfo::read_at(file, addr, 16)?;
    let word = |i: usize| Some(u64::from_le_bytes(header.get(i..i + 8)?.try_into().ok()?));
    let (mut ptr, len) = (word(0)?, word(8)?);
    if ptr == 0 {
        ptr = relocs()
            .iter()
            .find(|(at, _)| *at == addr)
            .map(|(_, v)| *v)?;
    }
    if !(1..=MAX_BUILD_VERSION).contains(&len) {
        return None;
    }
    let bytes = super::buildinfo::read_at(file, ptr, len)?;
    (bytes.starts_with(b"go1.") && bytes.iter().all(|b| (0x20..0x7f).contains(b)))
        .then(|| String::from_utf8_lossy(bytes).into_owned())
}

/// Learn one Go version's entry from unstripped binaries built with it (the first is where
/// recipes are looked for; the rest must agree). Used by `cargo xtask go-layouts` through the
/// example `go_layout_table`.
pub fn learn(binaries: &[&[u8]]) -> Result<Entry, GoError> {
    let (first, rest) = binaries.split_first().ok_or_else(|| GoError::Unsupported {
        what: "learn needs at least one binary".into(),
    })?;
    let file = super::parse_elf(*first)?;
    // The project's own fixtures, read whole: no budget.
    let budget = Budget::new(u64::MAX, u64::MAX);
    let version = version(&file, &budget)?;
    let mut entry = dwarf_entry(&file, &version, &budget)?;
    // Every RIP-relative reference in every function, once.
    let res = Resolver::new(&file, &budget)?;
    let mut refs: Vec<(u64, &[u8], Vec<u64>)> = res
        .pcln
        .funcs()
        .filter(|(name, _)| runtime_code(name))
        .filter_map(|(name, f)| Some((f.size, name, rip_targets(res.code(f)?, f.addr))))
        .collect();
    // Short functions first (less code to change), then by name: a stable order.
    refs.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let others: Vec<_> = rest
        .iter()
        .map(|b| super::parse_elf(*b))
        .collect::<Result<_, _>>()?;
    // The globals of the goroutine state counts only where the entry has those (Go >= 1.26).
    let extra: &[&'static str] = if entry.sched_stats.is_some() {
        &[EXTRA_M_IN_USE, EXTRA_M_LENGTH]
    } else {
        &[]
    };
    let mut want: Vec<(&'static str, Option<(u64, u64)>)> =
        SYMBOLS.iter().chain(extra).map(|s| (*s, None)).collect();
    super::find_symbols_sized(&file, &mut want, &budget)?;
    for (symbol, sym) in want {
        let (addr, size) = sym.ok_or_else(|| GoError::MissingSymbol {
            version: version.clone(),
            symbol,
        })?;
        let mut recipes: Vec<Recipe> = Vec::new();
        for (_, name, targets) in &refs {
            if recipes.len() == RECIPES {
                break;
            }
            let Some((operand, t)) = targets
                .iter()
                .enumerate()
                .find(|(_, t)| (addr..addr.saturating_add(size.max(1))).contains(*t))
            else {
                continue;
            };
            let r = Recipe {
                function: String::from_utf8_lossy(name).into_owned(),
                operand,
                addend: t - addr,
            };
            let holds = others
                .iter()
                .all(|o| holds_in(o, &r, symbol, &budget).unwrap_or(false));
            if holds {
                recipes.push(r);
            }
        }
        let least = if symbol == BUILD_VERSION { 1 } else { 2 };
        if recipes.len() < least {
            return Err(GoError::Unsupported {
                what: format!(
                    "{version}: only {} recipe(s) for {symbol} hold in every binary",
                    recipes.len()
                ),
            });
        }
        entry.symbols.insert(symbol.to_owned(), recipes);
    }
    Ok(entry)
}

/// Whether a function is the runtime's own code, the same in every program built with one
/// toolchain: the runtime packages, and functions they provide to others by linkname
/// (`sync.runtime_canSpin`, ...). Not the program's: main.main inlines runtime.Version, so its
/// loads of runtime.buildVersion hold in every build of that one program, and nowhere else.
fn runtime_code(name: &[u8]) -> bool {
    name.starts_with(b"runtime.")
        || name.starts_with(b"internal/runtime/")
        || name.windows(9).any(|w| w == b".runtime_")
}

/// [`learn`] from the unstripped executables in `dir` (one Go version's fixtures, plain and
/// PIE), in a fixed order: gosched first, then by name. The layout table is exactly this for
/// each target/go-fixtures/<version>/ (`cargo xtask go-layouts`; a unit test compares).
pub fn learn_dir(dir: &std::path::Path) -> anyhow::Result<Entry> {
    use anyhow::Context as _;
    let mut exes: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    // Unstripped only: not -stripped, nor -stripped-nobuildinfo.
    exes.retain(|p| p.is_file() && !p.to_string_lossy().contains("-stripped"));
    exes.sort_by_key(|p| (!p.ends_with("gosched"), p.clone()));
    let bytes: Vec<Vec<u8>> = exes
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<_>>()?;
    let refs: Vec<&[u8]> = bytes.iter().map(|b| &b[..]).collect();
    learn(&refs).with_context(|| format!("learning layouts from {}", dir.display()))
}

/// Whether `r` finds `symbol`'s .symtab address in `file`.
fn holds_in<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    r: &Recipe,
    symbol: &'static str,
    budget: &Budget,
) -> Result<bool, GoError> {
    let mut want = [(symbol, None)];
    super::find_symbols(file, &mut want, budget)?;
    let res = Resolver::new(file, budget)?;
    Ok(match (want[0].1, res.targets(&r.function)?) {
        (Some(addr), Some(targets)) => targets.get(r.operand) == Some(&(addr + r.addend)),
        _ => false,
    })
}

/// The DWARF half of an entry (no recipes yet).
fn dwarf_entry<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    version: &str,
    budget: &Budget,
) -> Result<Entry, GoError> {
    let types = dwarf::Types::load(file, budget)?;
    // Addresses are per binary: 0 here, filled in from recipes.
    let DwarfLayouts {
        hist,
        stw,
        gc_ring,
        gcount,
        sched_stats,
    } = super::dwarf_layouts(&types, version, Some(0), Some(0))?;
    let ev = status::dwarf_facts(&types, version)?;
    let mut want = [(status::WAIT_REASONS, None)];
    super::find_symbols_sized(file, &mut want, budget)?;
    let (_, size) = want[0].1.ok_or_else(|| GoError::MissingSymbol {
        version: version.to_owned(),
        symbol: status::WAIT_REASONS,
    })?;
    Ok(Entry {
        version: version.to_owned(),
        hist,
        stw,
        gc_ring,
        gcount,
        sched_stats,
        g_waitreason: ev.0,
        statuses: ev.1,
        wait_reasons_len: status::wait_reasons_len(size)?,
        symbols: BTreeMap::new(),
    })
}
