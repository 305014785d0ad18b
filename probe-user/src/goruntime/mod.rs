//! Go programs read from outside, with no probe: the runtime keeps its own scheduling-latency
//! histogram (`runtime.sched.timeToRun`, the data behind runtime/metrics'
//! /sched/latencies:seconds), `runtime.gomaxprocs` and the goroutine bookkeeping in ordinary
//! globals (Go >= 1.22 adds stop-the-world pause histograms; older runtimes keep a ring of
//! the last 256 GC pauses in runtime.memstats). This module finds them in the ELF file
//! (symbols from .symtab, layouts from DWARF; pure, no root) and `live` reads them with
//! process_vm_readv.
//!
//! The binaries parsed here may be planted by anyone while we run as root: nothing in this
//! module panics or allocates without a cap on malformed input.
pub mod budget;
pub mod buildinfo;
pub mod dwarf;
pub mod events;
pub mod hist;
pub mod live;
pub mod pclntab;
pub mod probesite;
pub mod status;
pub mod table;

use object::{
    Object, ObjectSection, ObjectSegment, ReadRef,
    read::elf::{FileHeader, SectionHeader, Sym},
};
use serde::{Deserialize, Serialize};

pub use self::{buildinfo::GoVersion, hist::Scheme};
use crate::model::{ClassOf, Classify, ErrorClass};

/// Largest executable we open. Only the parts parsed are read, each charged to the analysis'
/// [`budget`]: the file's size alone costs nothing.
pub const MAX_BINARY: u64 = 2 << 30;

#[derive(Debug, thiserror::Error)]
pub enum GoError {
    #[error("not a Go program: {why}")]
    NotGo { why: &'static str },
    #[error(
        "Go binary ({version}) is stripped (-s -w): no DWARF or symbols, and schedlat's layout \
         table has no entry for its Go release (it has {known}; `cargo xtask go-layouts` \
         builds them from the toolchains the project installs); rebuild it without \
         -ldflags='-s -w' to read its scheduler statistics"
    )]
    Stripped { version: String, known: String },
    #[error(
        "Go binary without build info (its .go.buildinfo section was removed, so `go version` \
         cannot tell its release either): {why}. schedlat needs the exact Go release: it reads \
         the runtime's own version string (runtime.buildVersion) through the layout table, \
         which knows {known}; keep .go.buildinfo in the binary (do not remove it after \
         building) to read any other release"
    )]
    NoBuildInfo { why: String, known: String },
    #[error(
        "Go binary ({version}) has no .symtab entry for {symbol}: it was linked with -s; rebuild \
         without -ldflags=-s"
    )]
    MissingSymbol {
        version: String,
        symbol: &'static str,
    },
    #[error("Go binary ({version}): {what} not found in its DWARF (Go version not supported?)")]
    MissingDwarf { version: String, what: String },
    #[error(
        "Go binary ({version}): unknown runtime.timeHistogram layout (counts[{len}], overflow field: \
         {has_overflow}); schedlat knows Go 1.17-1.19 (counts[720]) and 1.20+ (counts[160] + overflow)"
    )]
    UnknownHistogram {
        version: String,
        len: u64,
        has_overflow: bool,
    },
    #[error("malformed binary: {what}")]
    Malformed { what: String },
    #[error(
        "refusing to analyse the executable: {what} (schedlat caps one analysis at {budget} \
         bytes of memory, well inside the daemon's 256 MiB limit, and bounds the bytes it \
         scans; a real Go binary needs far less unless its DWARF is huge: rebuild with \
         -ldflags=-w to drop DWARF, and the layout table reads it if its release is known)"
    )]
    OverBudget { what: String, budget: u64 },
    #[error("unsupported binary: {what}")]
    Unsupported { what: String },
    #[error(
        "{what}: the program kept writing it while we read; try again (if this persists, this \
         Go version records GC pauses differently from runtime/mgc.go of Go 1.19-1.27)"
    )]
    Inconsistent { what: String },
    #[error("no process with pid {pid} (it exited, or never existed)")]
    ProcessGone { pid: u32 },
    #[error("pid {pid} no longer names the process read: {what}; its reading was discarded")]
    ProcessChanged { pid: u32, what: String },
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
}

impl Classify for GoError {
    /// Errors about the target the user chose are theirs; failing to read it is a runtime one.
    fn class(&self) -> ErrorClass {
        match self {
            GoError::Io { .. } | GoError::Inconsistent { .. } | GoError::ProcessChanged { .. } => {
                ErrorClass::Runtime
            }
            _ => ErrorClass::Usage,
        }
    }
}
inventory::submit!(ClassOf::of::<GoError>());

/// A field to read: offset and size (4 or 8 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Field {
    pub offset: u64,
    pub size: u64,
}

/// Where `sched.timeToRun` is and how it is laid out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistLayout {
    /// Offset of `timeToRun` in `runtime.schedt` (runtime/runtime2.go).
    pub offset: u64,
    /// sizeof(runtime.timeHistogram).
    pub size: u64,
    /// Offsets inside the histogram.
    pub counts: u64,
    pub underflow: u64,
    pub overflow: Option<u64>,
    pub scheme: Scheme,
}

/// runtime.schedt's stop-the-world histograms (runtime2.go, Go >= 1.22): time to stop every P,
/// and the whole pause, for GC and for other reasons (ReadMemStats, GOMAXPROCS, ...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StwLayout {
    pub stopping_gc: HistLayout,
    pub stopping_other: HistLayout,
    pub total_gc: HistLayout,
    pub total_other: HistLayout,
}

/// runtime.memstats' ring of recent GC pauses (runtime/mstats.go): `pause_ns[256]` holds the
/// stop-the-world time of each GC cycle (both pauses of the cycle summed, mgc.go work.pauseNS),
/// written at index `numgc % 256` just before `numgc++`, so the latest is at `(numgc-1) % 256`.
/// Read on Go < 1.22, which keeps no stop-the-world histograms.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRingLayout {
    /// Address of `runtime.memstats` (per binary: not in the layout table).
    #[serde(skip)]
    pub memstats: u64,
    /// Offsets inside runtime.mstats.
    pub last_gc_unix: u64,
    pub pause_ns: u64,
    pub pause_end: u64,
    pub numgc: u64,
    /// Entries of `pause_ns` and `pause_end` (256 in every Go release).
    pub len: u64,
}

/// What runtime.gcount (proc.go) subtracts from allglen: free g's on the global and per-P free
/// lists, and (depending on the caller) system goroutines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GCountLayout {
    /// Free-list sizes inside runtime.schedt: 1.19 `gFree.n`; 1.27 `gFree.stack.size` and
    /// `gFree.noStack.size`.
    pub sched_free: Vec<Field>,
    /// `runtime.schedt.ngsys`.
    pub ngsys: Field,
    /// Free-list size inside runtime.p: 1.19 `gFree.n`; 1.27 `gFree.size`.
    pub p_free: Field,
    /// Address of `runtime.allp` ([]*p) (per binary: not in the layout table).
    #[serde(skip)]
    pub allp: u64,
}

/// Everything needed to read a Go process's scheduler statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub version: String,
    /// Where the layout came from: "DWARF", or the layout table's entry for a stripped binary.
    pub source: String,
    /// True for position-independent executables (ELF ET_DYN): symbol addresses need the load
    /// bias of the running process.
    pub pie: bool,
    /// Page-aligned virtual address of the PT_LOAD segment at file offset 0.
    pub base_vaddr: u64,
    pub sched: u64,
    pub gomaxprocs: u64,
    pub allglen: u64,
    pub hist: HistLayout,
    /// Stop-the-world pause histograms (Go >= 1.22); None before.
    pub stw: Option<StwLayout>,
    /// The GC pause ring, resolved only where `stw` is None (older runtimes); None if its
    /// fields are not found.
    pub gc_ring: Option<GcRingLayout>,
    /// None if this Go version's free-list fields are not recognised.
    pub gcount: Option<GCountLayout>,
    /// Goroutines by state, created, threads (Go >= 1.26; None before).
    pub sched_stats: Option<SchedStatsLayout>,
}

/// What runtime/metrics.go's schedStatsAggregate.compute reads for
/// /sched/goroutines/{runnable,running,waiting,not-in-go}, /sched/goroutines-created and
/// /sched/threads/total (Go >= 1.26): fields of runtime.schedt, p, m and g, status constants
/// (runtime2.go) and two globals (proc.go).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchedStatsLayout {
    /// runtime.schedt: goroutinesCreated (atomic.Uint64), nGsyscallNoP (atomic.Int32),
    /// runq.size (int32), mnext and nmfreed (int64).
    pub sched_created: Field,
    pub sched_syscall_no_p: Field,
    pub sched_runq_size: Field,
    pub sched_mnext: Field,
    pub sched_nmfreed: Field,
    /// runtime.p: status, m (muintptr), runqhead, runqtail, runnext (guintptr),
    /// goroutinesCreated.
    pub p_status: Field,
    pub p_m: Field,
    pub p_runqhead: Field,
    pub p_runqtail: Field,
    pub p_runnext: Field,
    pub p_created: Field,
    /// runtime.m: curg, p (puintptr); runtime.g: atomicstatus, m.
    pub m_curg: Field,
    pub m_p: Field,
    pub g_status: Field,
    pub g_m: Field,
    /// _Prunning, _Pdead, _Gsyscall, _Gdeadextra, _Gscan.
    pub p_running: u32,
    pub p_dead: u32,
    pub g_syscall: u32,
    pub g_deadextra: u32,
    pub g_scan: u32,
    /// Addresses of runtime.extraMInUse and runtime.extraMLength (atomic.Uint32; per binary:
    /// not in the layout table).
    #[serde(skip)]
    pub extra_m_in_use: u64,
    #[serde(skip)]
    pub extra_m_length: u64,
}

/// The globals only [`SchedStatsLayout`] needs (Go >= 1.26).
pub const EXTRA_M_IN_USE: &str = "runtime.extraMInUse";
pub const EXTRA_M_LENGTH: &str = "runtime.extraMLength";

/// Whether `data` is a Go program, and its version.
pub fn go_version<'d, R: ReadRef<'d>>(data: R) -> Result<String, GoError> {
    let file = parse_elf(data)?;
    table::version(&file, &Default::default())
}

fn parse_elf<'d, R: ReadRef<'d>>(data: R) -> Result<object::File<'d, R>, GoError> {
    let file = object::File::parse(data).map_err(|_| GoError::NotGo {
        why: "not an ELF file",
    })?;
    if file.format() != object::BinaryFormat::Elf {
        return Err(GoError::NotGo {
            why: "not an ELF file",
        });
    }
    if !file.is_64() || !file.is_little_endian() {
        return Err(GoError::Unsupported {
            what: "only 64-bit little-endian Go binaries are supported".into(),
        });
    }
    Ok(file)
}

/// Analyse a Go executable: its bytes (`&[u8]`), or a `&object::ReadCache<File>` that reads
/// only the parts parsed (headers, symbols, the DWARF sections), not the whole file.
pub fn analyse<'d, R: ReadRef<'d>>(data: R) -> Result<Layout, GoError> {
    GoBinary::parse(data)?.layout()
}

/// One Go executable, parsed once: its ELF structure and release, and its DWARF types the
/// first time something needs them. It answers both the layout of the runtime's globals
/// ([`Self::layout`], for live reads) and the per-event probe plan ([`Self::event_plan`]), so a
/// capture that wants both opens and parses the file once.
pub struct GoBinary<'d, R: ReadRef<'d>> {
    file: object::File<'d, R>,
    version: String,
    types: std::cell::OnceCell<dwarf::Types>,
    budget: std::rc::Rc<budget::Budget>,
}

impl<'d> GoBinary<'d, &'d budget::BudgetedFile> {
    /// Parse an executable read on demand, charging the file's budget for everything.
    pub fn from_file(file: &'d budget::BudgetedFile) -> Result<Self, GoError> {
        Self::parse_with(file, file.budget().clone())
    }
}

impl<'d, R: ReadRef<'d>> GoBinary<'d, R> {
    /// Parse the ELF headers and find the Go release (`NotGo` for anything else), with the
    /// default budget for what the analysis allocates and scans.
    pub fn parse(data: R) -> Result<Self, GoError> {
        Self::parse_with(data, Default::default())
    }

    /// [`Self::parse`] charging `budget` (shared with a [`budget::BudgetedFile`] `data`).
    pub fn parse_with(data: R, budget: std::rc::Rc<budget::Budget>) -> Result<Self, GoError> {
        let explain = |e| budget.explain(e);
        let file = parse_elf(data).map_err(explain)?;
        let version = table::version(&file, &budget).map_err(explain)?;
        Ok(Self {
            file,
            version,
            types: std::cell::OnceCell::new(),
            budget,
        })
    }

    pub fn budget(&self) -> &budget::Budget {
        &self.budget
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub(crate) fn file(&self) -> &object::File<'d, R> {
        &self.file
    }

    /// The DWARF types, loaded on first use.
    pub(crate) fn types(&self) -> Result<&dwarf::Types, GoError> {
        if let Some(t) = self.types.get() {
            return Ok(t);
        }
        let t = dwarf::Types::load(&self.file, &self.budget)?;
        Ok(self.types.get_or_init(|| t))
    }

    /// Plan the per-event probe (see [`events`]).
    pub fn event_plan(&self) -> Result<events::EventPlan, GoError> {
        events::plan_for(self).map_err(|e| self.budget.explain(e))
    }

    /// Where the runtime's statistics live: from .symtab and DWARF, or for a stripped binary
    /// from .gopclntab and the layout table.
    pub fn layout(&self) -> Result<Layout, GoError> {
        self.layout_inner().map_err(|e| self.budget.explain(e))
    }

    fn layout_inner(&self) -> Result<Layout, GoError> {
        let (file, version) = (&self.file, self.version.clone());
        let (source, [sched, gomaxprocs, allglen], layouts) = if symbolic(file) {
            let mut want: [(&'static str, Option<u64>); 7] = [
                ("runtime.sched", None),
                ("runtime.gomaxprocs", None),
                ("runtime.allglen", None),
                ("runtime.allp", None),
                ("runtime.memstats", None),
                (EXTRA_M_IN_USE, None),
                (EXTRA_M_LENGTH, None),
            ];
            find_symbols(file, &mut want, &self.budget)?;
            let sym = |i: usize| {
                want[i].1.ok_or(GoError::MissingSymbol {
                    version: version.clone(),
                    symbol: want[i].0,
                })
            };
            // allp and memstats are optional: without them, their layouts are skipped.
            let addrs = [sym(0)?, sym(1)?, sym(2)?];
            let types = self.types()?;
            let mut layouts = dwarf_layouts(types, &version, want[3].1, want[4].1)?;
            // Without the two globals, the state counts are skipped.
            layouts.sched_stats = match (layouts.sched_stats.take(), want[5].1, want[6].1) {
                (Some(s), Some(in_use), Some(length)) => Some(SchedStatsLayout {
                    extra_m_in_use: in_use,
                    extra_m_length: length,
                    ..s
                }),
                _ => None,
            };
            ("DWARF".to_owned(), addrs, layouts)
        } else {
            let entry = table::lookup(&version)?;
            let res = table::Resolver::new(file, &self.budget)?;
            let sym = |name: &str| res.symbol(entry, name);
            let addrs = [
                sym("runtime.sched")?,
                sym("runtime.gomaxprocs")?,
                sym("runtime.allglen")?,
            ];
            let layouts = DwarfLayouts {
                hist: entry.hist.clone(),
                stw: entry.stw.clone(),
                gc_ring: match entry.gc_ring.clone() {
                    Some(r) => Some(GcRingLayout {
                        memstats: sym("runtime.memstats")?,
                        ..r
                    }),
                    None => None,
                },
                gcount: match entry.gcount.clone() {
                    Some(g) => Some(GCountLayout {
                        allp: sym("runtime.allp")?,
                        ..g
                    }),
                    None => None,
                },
                sched_stats: match entry.sched_stats.clone() {
                    Some(s) => Some(SchedStatsLayout {
                        extra_m_in_use: sym(EXTRA_M_IN_USE)?,
                        extra_m_length: sym(EXTRA_M_LENGTH)?,
                        ..s
                    }),
                    None => None,
                },
            };
            (format!("layout table ({})", entry.version), addrs, layouts)
        };
        let DwarfLayouts {
            hist,
            stw,
            gc_ring,
            gcount,
            sched_stats,
        } = layouts;
        // The state counts walk allp like gcount does.
        let sched_stats = sched_stats.filter(|_| gcount.is_some());
        let base_vaddr = base_vaddr(file)?;
        Ok(Layout {
            version,
            source,
            pie: file.kind() == object::ObjectKind::Dynamic,
            base_vaddr,
            sched,
            gomaxprocs,
            allglen,
            hist,
            stw,
            gc_ring,
            gcount,
            sched_stats,
        })
    }
}

/// Page-aligned link-time address of the segment mapped from file offset 0: the load bias of
/// a PIE is computed against it.
pub(crate) fn base_vaddr<'d, R: ReadRef<'d>>(file: &object::File<'d, R>) -> Result<u64, GoError> {
    file.segments()
        .find(|s| s.file_range().0 == 0)
        .map(|s| s.address() & !0xfff)
        .ok_or_else(|| GoError::Malformed {
            what: "no loadable segment at file offset 0".into(),
        })
}

/// `size` bytes at link-time address `addr` inside `section`, read from the file on their
/// own. Not `section.data_range`: that reads the whole section first (through a
/// [`budget::BudgetedFile`], all of .text for one function, all of .go.buildinfo for its
/// header). None outside the section's bytes in the file.
pub(crate) fn section_bytes<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    section: &object::Section<'d, '_, R>,
    addr: u64,
    size: u64,
) -> Option<&'d [u8]> {
    let (off, len) = section.file_range()?;
    let rel = addr.checked_sub(section.address())?;
    if rel.checked_add(size)? > len {
        return None;
    }
    let object::File::Elf64(elf) = file else {
        return None;
    };
    elf.data().read_bytes_at(off.checked_add(rel)?, size).ok()
}

/// `len` bytes at virtual address `addr`, from whichever loadable segment holds them in the
/// file, read on their own (not `segment.data_range`, which reads the whole segment).
pub(crate) fn segment_bytes<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    addr: u64,
    len: u64,
) -> Option<&'d [u8]> {
    let object::File::Elf64(elf) = file else {
        return None;
    };
    file.segments().find_map(|seg| {
        let (off, flen) = seg.file_range();
        let rel = addr.checked_sub(seg.address())?;
        if rel.checked_add(len)? > flen {
            return None;
        }
        elf.data().read_bytes_at(off.checked_add(rel)?, len).ok()
    })
}

/// Whether `addr` lies in a section whose ELF flags include all of `flags` (SHF_*).
pub(crate) fn in_section_with<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    addr: u64,
    flags: u32,
) -> bool {
    file.sections().any(|s| {
        matches!(s.flags(), object::SectionFlags::Elf { sh_flags }
            if sh_flags & u64::from(flags) == u64::from(flags))
            && s.address() <= addr
            && addr < s.address().saturating_add(s.size())
    })
}

/// Whether the binary keeps its symbols and DWARF (else it is read through the layout table).
pub(crate) fn symbolic<'d, R: ReadRef<'d>>(file: &object::File<'d, R>) -> bool {
    let has_symtab = match file {
        object::File::Elf64(elf) => !elf.elf_symbol_table().is_empty(),
        _ => false,
    };
    has_symtab && dwarf::has_debug_info(file)
}

/// The section called `name`, comparing names in place in one read of the section-name
/// string table. Not `file.section_by_name`: through ReadCache each name is a separate cached
/// read of up to 4 KiB, so 65,000 sections with distinct names (a 4 MB file) held 262 MB.
pub(crate) fn section_by_name<'d, 'f, R: ReadRef<'d>>(
    file: &'f object::File<'d, R>,
    name: &str,
) -> Option<object::Section<'d, 'f, R>> {
    let object::File::Elf64(elf) = file else {
        return None;
    };
    let endian = elf.endian();
    let shstrndx = elf.elf_header().shstrndx(endian, elf.data()).ok()?;
    let names = file
        .section_by_index(object::SectionIndex(shstrndx as usize))
        .ok()?
        .data()
        .ok()?;
    let index = elf.elf_section_table().iter().position(|h| {
        names.get(h.sh_name(endian) as usize..).is_some_and(|n| {
            n.get(..name.len()) == Some(name.as_bytes()) && n.get(name.len()) == Some(&0)
        })
    })?;
    file.section_by_index(object::SectionIndex(index)).ok()
}

/// Largest symbol string table we read (a large Go binary's is a few MiB): the whole budget
/// (through a [`budget::BudgetedFile`] its read is charged too).
const MAX_STRTAB: u64 = budget::MEMORY;

/// Fill in the addresses of the `want`ed names from .symtab, comparing names in place in its
/// string table, read once. Not `file.symbols()` + `name_bytes()`: through ReadCache (the
/// daemon's path) each name is a separate cached read of up to 4 KiB, so a planted table of
/// distinct names costs 4 KiB per symbol (200,000 symbols in a 5 MB file held 815 MB).
pub(crate) fn find_symbols<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    want: &mut [(&'static str, Option<u64>)],
    budget: &budget::Budget,
) -> Result<(), GoError> {
    let mut sized: Vec<(&'static str, Option<(u64, u64)>)> =
        want.iter().map(|w| (w.0, None)).collect();
    find_symbols_sized(file, &mut sized, budget)?;
    for (w, s) in want.iter_mut().zip(sized) {
        w.1 = w.1.or(s.1.map(|(addr, _)| addr));
    }
    Ok(())
}

/// [`find_symbols`] with each symbol's size: `(address, size)`.
pub(crate) fn find_symbols_sized<'d, R: ReadRef<'d>>(
    file: &object::File<'d, R>,
    want: &mut [(&'static str, Option<(u64, u64)>)],
    budget: &budget::Budget,
) -> Result<(), GoError> {
    let object::File::Elf64(elf) = file else {
        return Ok(());
    };
    let table = elf.elf_symbol_table();
    if table.is_empty() {
        return Ok(());
    }
    let strtab = file
        .section_by_index(table.string_section())
        .map_err(|_| GoError::Malformed {
            what: ".symtab links to a string table that does not exist".into(),
        })?;
    if strtab.size() > MAX_STRTAB {
        return Err(GoError::Unsupported {
            what: format!(
                "the symbol string table is {} bytes, over the {MAX_STRTAB}-byte cap",
                strtab.size()
            ),
        });
    }
    let names = strtab.data().map_err(|_| GoError::Malformed {
        what: "the symbol string table lies outside the file".into(),
    })?;
    let endian = elf.endian();
    // Each symbol: its 24-byte entry, and at most the longest wanted name compared.
    let longest = want.iter().map(|w| w.0.len() as u64 + 1).max().unwrap_or(0);
    budget.scan(
        (table.symbols().len() as u64).saturating_mul(24 + longest),
        "reading .symtab",
    )?;
    for sym in table.symbols() {
        let Some(name) = names.get(sym.st_name(endian) as usize..) else {
            continue;
        };
        let wanted = want.iter_mut().find(|w| {
            name.get(..w.0.len()) == Some(w.0.as_bytes()) && name.get(w.0.len()) == Some(&0)
        });
        if let Some(w) = wanted {
            w.1.get_or_insert((sym.st_value(endian), sym.st_size(endian)));
        }
    }
    Ok(())
}

/// Most entries we accept in the pause ring (Go's is 256; the cap bounds the read buffer).
const MAX_GC_RING: u64 = 1 << 12;

/// runtime.mstats' pause ring fields (mstats.go: last_gc_unix, pause_ns, pause_end, numgc);
/// None unless every one has the expected shape.
fn gc_ring_layout(types: &dwarf::Types, memstats: u64) -> Option<GcRingLayout> {
    let sized = |name: &str, size: u64| {
        let (offset, t) = types.member_path("runtime.mstats", &[name])?;
        (t.byte_size == Some(size)).then_some(offset)
    };
    let ring = |name: &str| {
        let (offset, t) = types.member_path("runtime.mstats", &[name])?;
        let len = t
            .count
            .filter(|n| (1..=MAX_GC_RING).contains(n) && t.tag == gimli::DW_TAG_array_type.0)?;
        (t.byte_size == Some(len * 8)).then_some((offset, len))
    };
    let (pause_ns, len) = ring("pause_ns")?;
    let (pause_end, end_len) = ring("pause_end")?;
    (len == end_len).then_some(GcRingLayout {
        memstats,
        last_gc_unix: sized("last_gc_unix", 8)?,
        pause_ns,
        pause_end,
        numgc: sized("numgc", 4)?,
        len,
    })
}

/// What analyse() reads from DWARF.
#[derive(Debug)]
pub struct DwarfLayouts {
    pub hist: HistLayout,
    pub stw: Option<StwLayout>,
    pub gc_ring: Option<GcRingLayout>,
    pub gcount: Option<GCountLayout>,
    pub sched_stats: Option<SchedStatsLayout>,
}

/// The runtime layouts in indexed DWARF; `allp` and `memstats` are the symbols' addresses
/// (their layouts are skipped without them).
fn dwarf_layouts(
    types: &dwarf::Types,
    version: &str,
    allp: Option<u64>,
    memstats: Option<u64>,
) -> Result<DwarfLayouts, GoError> {
    let parsed = GoVersion::parse(version);
    let hist = hist_layout(types, "timeToRun", version, parsed.as_ref())?.ok_or_else(|| {
        GoError::MissingDwarf {
            version: version.to_owned(),
            what: "runtime.schedt.timeToRun".into(),
        }
    })?;
    // Go >= 1.22 (runtime2.go): stop-the-world pause histograms next to timeToRun, the data
    // behind /sched/pauses/{stopping,total}/{gc,other}:seconds. All four or none.
    let stw = match (
        hist_layout(types, "stwStoppingTimeGC", version, parsed.as_ref())?,
        hist_layout(types, "stwStoppingTimeOther", version, parsed.as_ref())?,
        hist_layout(types, "stwTotalTimeGC", version, parsed.as_ref())?,
        hist_layout(types, "stwTotalTimeOther", version, parsed.as_ref())?,
    ) {
        (Some(stopping_gc), Some(stopping_other), Some(total_gc), Some(total_other)) => {
            Some(StwLayout {
                stopping_gc,
                stopping_other,
                total_gc,
                total_other,
            })
        }
        _ => None,
    };
    // Older runtimes keep only the ring of per-cycle GC pauses (mstats.go).
    let gc_ring = match (&stw, memstats) {
        (None, Some(m)) => gc_ring_layout(types, m),
        _ => None,
    };
    let gcount = allp.and_then(|allp| gcount_layout(types, allp));
    let sched_stats = sched_stats_layout(types);
    Ok(DwarfLayouts {
        hist,
        stw,
        gc_ring,
        gcount,
        sched_stats,
    })
}

/// [`dwarf_layouts`] on raw, uncompressed .debug_info and .debug_abbrev contents (Go writes
/// names inline, so no .debug_str): the same code analyse() runs after decompressing, exposed
/// for the fuzz target `go_dwarf` (probe-user/fuzz).
pub fn layouts_from_dwarf(
    info: &[u8],
    abbrev: &[u8],
    version: &str,
) -> Result<DwarfLayouts, GoError> {
    let types = dwarf::Types::from_sections(info, abbrev, &[], &Default::default())?;
    dwarf_layouts(&types, version, Some(0), Some(0))
}

/// The layout of the runtime.timeHistogram field `field` of runtime.schedt; None if the
/// field does not exist in this Go version.
fn hist_layout(
    types: &dwarf::Types,
    field: &str,
    version: &str,
    parsed: Option<&GoVersion>,
) -> Result<Option<HistLayout>, GoError> {
    let missing = |what: &str| GoError::MissingDwarf {
        version: version.to_owned(),
        what: what.to_owned(),
    };
    let Some((offset, th)) = types.member_path("runtime.schedt", &[field]) else {
        return Ok(None);
    };
    let member = |name: &str| th.members.iter().find(|m| m.name == name);
    let counts = member("counts").ok_or_else(|| missing("runtime.timeHistogram.counts"))?;
    let underflow =
        member("underflow").ok_or_else(|| missing("runtime.timeHistogram.underflow"))?;
    let overflow = member("overflow").map(|m| m.offset);
    let arr = counts
        .type_ref
        .and_then(|t| types.resolve(t))
        .filter(|a| a.tag == gimli::DW_TAG_array_type.0)
        .ok_or_else(|| missing("the array type of runtime.timeHistogram.counts"))?;
    let len = arr.count.unwrap_or(0);
    let scheme = Scheme::from_shape(len, overflow.is_some()).ok_or(GoError::UnknownHistogram {
        version: version.to_owned(),
        len,
        has_overflow: overflow.is_some(),
    })?;
    // Both schemes count in 8-byte words (uint64 / atomic.Uint64): check rather than assume.
    if arr.byte_size != Some(len * 8) {
        return Err(missing(&format!(
            "8-byte elements in runtime.timeHistogram.counts (array of {len} is {:?} bytes)",
            arr.byte_size
        )));
    }
    // The version, where known, must agree with the layout (the shape changed in Go 1.20).
    if let Some(v) = parsed {
        let new = v.at_least(1, 20);
        if new != (scheme == Scheme::MinMaxBits) || !v.at_least(1, 17) {
            return Err(GoError::UnknownHistogram {
                version: version.to_owned(),
                len,
                has_overflow: overflow.is_some(),
            });
        }
    }
    let size = th
        .byte_size
        // A real timeHistogram is under 6 KiB; the cap keeps a forged size from sizing a buffer.
        .filter(|s| *s <= 1 << 16)
        .filter(|s| {
            let end = |o: u64| o.checked_add(8).is_some_and(|e| e <= *s);
            counts.offset.checked_add(len * 8).is_some_and(|e| e <= *s)
                && end(underflow.offset)
                && overflow.is_none_or(end)
        })
        .ok_or_else(|| missing("a consistent size of runtime.timeHistogram"))?;
    Ok(Some(HistLayout {
        offset,
        size,
        counts: counts.offset,
        underflow: underflow.offset,
        overflow,
        scheme,
    }))
}

/// The fields runtime.gcount reads, for the Go versions whose names we know.
fn gcount_layout(types: &dwarf::Types, allp: u64) -> Option<GCountLayout> {
    let field = |root: &str, path: &[&str]| {
        let (offset, t) = types.member_path(root, path)?;
        let size = t.byte_size.filter(|s| *s == 4 || *s == 8)?;
        Some(Field { offset, size })
    };
    // atomic.Int32 is a struct { noCopy; value int32 } (internal/runtime/atomic/types.go).
    let ngsys = field("runtime.schedt", &["ngsys"])
        .filter(|f| f.size == 4)
        .or_else(|| field("runtime.schedt", &["ngsys", "value"]))?;
    // Go 1.19 (runtime2.go): gFree struct { ...; n int32 } in both schedt and p.
    if let (Some(s), Some(p)) = (
        field("runtime.schedt", &["gFree", "n"]),
        field("runtime.p", &["gFree", "n"]),
    ) {
        return Some(GCountLayout {
            sched_free: vec![s],
            ngsys,
            p_free: p,
            allp,
        });
    }
    // Go 1.27 (runtime2.go, proc.go): gList/gQueue carry `size int32`.
    let s1 = field("runtime.schedt", &["gFree", "stack", "size"])?;
    let s2 = field("runtime.schedt", &["gFree", "noStack", "size"])?;
    let p = field("runtime.p", &["gFree", "size"])?;
    Some(GCountLayout {
        sched_free: vec![s1, s2],
        ngsys,
        p_free: p,
        allp,
    })
}

/// [`SchedStatsLayout`] from DWARF (the globals' addresses 0); None unless every field and
/// constant is there with the expected size (Go >= 1.26: runtime2.go's schedt.nGsyscallNoP
/// and p.goroutinesCreated, proc.go's _Gdeadextra).
fn sched_stats_layout(types: &dwarf::Types) -> Option<SchedStatsLayout> {
    let field = |root: &str, path: &[&str], size: u64| {
        let (offset, t) = types.member_path(root, path)?;
        // Go writes no byte size for pointer types (m.curg, g.m): 8 bytes on 64-bit.
        let pointer = t.tag == gimli::DW_TAG_pointer_type.0;
        let t_size = t.byte_size.or(pointer.then_some(8));
        (t_size == Some(size)).then_some(Field { offset, size })
    };
    // atomic.Uint64 / Int32 / Uint32 are structs around `value` (internal/runtime/atomic).
    let constant = |name: &str| u32::try_from(types.constant(name)?).ok();
    Some(SchedStatsLayout {
        sched_created: field("runtime.schedt", &["goroutinesCreated", "value"], 8)?,
        sched_syscall_no_p: field("runtime.schedt", &["nGsyscallNoP", "value"], 4)?,
        sched_runq_size: field("runtime.schedt", &["runq", "size"], 4)?,
        sched_mnext: field("runtime.schedt", &["mnext"], 8)?,
        sched_nmfreed: field("runtime.schedt", &["nmfreed"], 8)?,
        p_status: field("runtime.p", &["status"], 4)?,
        p_m: field("runtime.p", &["m"], 8)?,
        p_runqhead: field("runtime.p", &["runqhead"], 4)?,
        p_runqtail: field("runtime.p", &["runqtail"], 4)?,
        p_runnext: field("runtime.p", &["runnext"], 8)?,
        p_created: field("runtime.p", &["goroutinesCreated"], 8)?,
        m_curg: field("runtime.m", &["curg"], 8)?,
        m_p: field("runtime.m", &["p"], 8)?,
        g_status: field("runtime.g", &["atomicstatus", "value"], 4)?,
        g_m: field("runtime.g", &["m"], 8)?,
        p_running: constant("runtime._Prunning")?,
        p_dead: constant("runtime._Pdead")?,
        g_syscall: constant("runtime._Gsyscall")?,
        g_deadextra: constant("runtime._Gdeadextra")?,
        g_scan: constant("runtime._Gscan")?,
        extra_m_in_use: 0,
        extra_m_length: 0,
    })
}

#[cfg(test)]
pub(crate) mod tests;

#[cfg(test)]
mod crafted;
