//! One budget for everything an analysis of one executable holds in memory and scans, so a
//! planted binary cannot push the daemon past its memory limit (256 MiB in the shipped unit
//! and DaemonSet) or keep it busy for minutes, whatever sizes its headers claim.
//!
//! Memory is charged before it is allocated: file bytes read ([`BudgetedFile`], a `ReadRef`
//! that charges each read before allocating its buffer, unlike `object::ReadCache`), DWARF
//! sections decompressed, the DWARF type index and the .gopclntab name index. Scanning is
//! charged in bytes examined (function names, data words, instructions decoded).
use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    fs::File,
    ops::Range,
    os::unix::fs::FileExt,
    rc::Rc,
};

use super::GoError;

/// Memory one analysis may hold: a quarter of the deployed limit, leaving room for the
/// daemon's own state and a second analysis (a capture's) at once.
pub const MEMORY: u64 = 64 << 20;
/// Bytes one analysis may examine (names, data words, code): a large real binary needs a few
/// tens of MiB; this is well under a second of work.
pub const SCAN: u64 = 512 << 20;

#[derive(Debug)]
pub struct Budget {
    memory: u64,
    scan: u64,
    used_memory: Cell<u64>,
    used_scan: Cell<u64>,
    /// What went over, kept so a failure deep inside `object` (which reports only `()`)
    /// is reported as the budget it is.
    over: RefCell<Option<String>>,
}

impl Default for Budget {
    fn default() -> Self {
        Self::new(MEMORY, SCAN)
    }
}

impl Budget {
    pub fn new(memory: u64, scan: u64) -> Self {
        Self {
            memory,
            scan,
            used_memory: Cell::new(0),
            used_scan: Cell::new(0),
            over: RefCell::new(None),
        }
    }

    /// Take `bytes` of memory for `what`, or refuse (nothing is taken then).
    pub fn charge(&self, bytes: u64, what: &str) -> Result<(), GoError> {
        let used = self.used_memory.get().saturating_add(bytes);
        if used > self.memory {
            return Err(self.refuse(format!(
                "{what} would take {bytes} bytes, and {} are already held",
                self.used_memory.get()
            )));
        }
        self.used_memory.set(used);
        Ok(())
    }

    /// Account for examining `bytes` for `what`, or refuse.
    pub fn scan(&self, bytes: u64, what: &str) -> Result<(), GoError> {
        let used = self.used_scan.get().saturating_add(bytes);
        if used > self.scan {
            return Err(self.refuse(format!(
                "{what}: over the {}-byte scanning budget",
                self.scan
            )));
        }
        self.used_scan.set(used);
        Ok(())
    }

    fn refuse(&self, what: String) -> GoError {
        self.over.borrow_mut().get_or_insert_with(|| what.clone());
        GoError::OverBudget {
            what,
            budget: self.memory,
        }
    }

    /// Memory taken so far.
    pub fn used(&self) -> u64 {
        self.used_memory.get()
    }

    /// Bytes scanned so far.
    pub fn scanned(&self) -> u64 {
        self.used_scan.get()
    }

    /// The budget error, if something went over: an error from a parser that cannot say why
    /// (object's `ReadRef` errors are `()`) is replaced by it.
    pub fn explain(&self, e: GoError) -> GoError {
        match &*self.over.borrow() {
            Some(what) if !matches!(e, GoError::OverBudget { .. }) => GoError::OverBudget {
                what: what.clone(),
                budget: self.memory,
            },
            _ => e,
        }
    }
}

/// Cached reads by (offset, size), as object::ReadCache keys them.
type Cache = HashMap<(u64, u64), Box<[u8]>>;
/// Cached strings by (offset, delimiter).
type Strings = HashMap<(u64, u8), Box<[u8]>>;

/// An executable read on demand (positioned reads of the descriptor opened once), each range
/// cached for the analysis' lifetime and charged to the budget *before* its buffer exists.
pub struct BudgetedFile {
    file: File,
    len: u64,
    budget: Rc<Budget>,
    cache: RefCell<Cache>,
    strings: RefCell<Strings>,
}

/// Overhead charged per cached read on top of its bytes (the map entry and the allocation).
const PER_READ: u64 = 64;
/// Longest string `read_bytes_at_until` looks at (object's ReadCache uses the same bound).
const MAX_STRING: u64 = 4096;

impl BudgetedFile {
    pub fn new(file: File, budget: Rc<Budget>) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(Self {
            file,
            len,
            budget,
            cache: RefCell::new(HashMap::new()),
            strings: RefCell::new(HashMap::new()),
        })
    }

    pub fn budget(&self) -> &Rc<Budget> {
        &self.budget
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    fn read_new(&self, offset: u64, size: u64) -> Result<Box<[u8]>, ()> {
        self.budget
            .charge(size.saturating_add(PER_READ), "reading the executable")
            .map_err(|_| ())?;
        let mut buf = vec![0u8; usize::try_from(size).map_err(|_| ())?].into_boxed_slice();
        self.file.read_exact_at(&mut buf, offset).map_err(|_| ())?;
        Ok(buf)
    }
}

impl<'a> object::ReadRef<'a> for &'a BudgetedFile {
    fn len(self) -> Result<u64, ()> {
        Ok(self.len)
    }

    fn read_bytes_at(self, offset: u64, size: u64) -> Result<&'a [u8], ()> {
        if size == 0 {
            return Ok(&[]);
        }
        let end = offset.checked_add(size).ok_or(())?;
        if end > self.len {
            return Err(());
        }
        let mut cache = self.cache.borrow_mut();
        let buf: &[u8] = match cache.get(&(offset, size)) {
            Some(b) => b,
            None => {
                let b = self.read_new(offset, size)?;
                cache.entry((offset, size)).or_insert(b)
            }
        };
        // SAFETY: the boxed slice lives in the cache until `self` is dropped and is never
        // mutated or removed (only inserted next to), so its heap bytes outlive `'a`, the
        // borrow of `self`; moving the Box within the map does not move its contents.
        Ok(unsafe { std::mem::transmute::<&[u8], &'a [u8]>(buf) })
    }

    fn read_bytes_at_until(self, range: Range<u64>, delimiter: u8) -> Result<&'a [u8], ()> {
        if range.start > range.end || range.end > self.len {
            return Err(());
        }
        let mut strings = self.strings.borrow_mut();
        let buf: &[u8] = match strings.get(&(range.start, delimiter)) {
            Some(b) => b,
            None => {
                let n = (range.end - range.start).min(MAX_STRING);
                let chunk = self.read_new(range.start, n)?;
                let end = chunk.iter().position(|b| *b == delimiter).ok_or(())?;
                let s: Box<[u8]> = chunk[..end].into();
                strings.entry((range.start, delimiter)).or_insert(s)
            }
        };
        // SAFETY: as in read_bytes_at.
        Ok(unsafe { std::mem::transmute::<&[u8], &'a [u8]>(buf) })
    }
}

#[cfg(test)]
mod tests {
    use object::ReadRef as _;

    use super::*;

    #[test]
    fn reads_are_charged_before_they_are_made() {
        let path = std::env::temp_dir().join(format!("schedlat-budget-{}", std::process::id()));
        std::fs::write(&path, vec![7u8; 10_000]).unwrap();
        let budget = Rc::new(Budget::new(4096, SCAN));
        let f = BudgetedFile::new(File::open(&path).unwrap(), budget.clone()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!((&f).read_bytes_at(0, 1000).unwrap(), &[7u8; 1000][..]);
        // The same range again is the cached copy: no second charge.
        let used = budget.used();
        (&f).read_bytes_at(0, 1000).unwrap();
        assert_eq!(budget.used(), used);
        // Over the budget: refused, and the reason is kept for errors that cannot carry it.
        assert!((&f).read_bytes_at(1000, 5000).is_err());
        let e = budget.explain(GoError::Malformed { what: "x".into() });
        assert!(matches!(e, GoError::OverBudget { .. }), "{e}");
        assert!(budget.used() <= 4096);
        // Past the end of the file: refused without a charge.
        assert!((&f).read_bytes_at(9_999, 2).is_err());
    }
}
