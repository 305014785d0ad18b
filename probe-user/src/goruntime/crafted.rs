//! Planted binaries that claim the most of what the parsers read (a DWARF section inflating
//! to 512 MiB, a 256 MiB string table and 128 MiB .gopclntab in a 2 GiB sparse file, a 1 GiB
//! .go.buildinfo, a struct of 5 million members), each analysed in a child process whose
//! peak RSS (VmHWM) must stay inside the analysis budget; and a forged .gopclntab whose 2^21
//! names share one unterminated run, looked up as a stripped analysis does.
use std::{
    fs::File,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::*;

/// One section of a crafted ELF: `claimed` larger than `data` leaves the rest sparse.
struct Sec {
    name: &'static str,
    ty: u32,
    flags: u64,
    addr: u64,
    data: Vec<u8>,
    claimed: Option<u64>,
    link: u32,
    info: u32,
    entsize: u64,
}

fn sec(name: &'static str, ty: u32, data: Vec<u8>) -> Sec {
    Sec {
        name,
        ty,
        flags: 0,
        addr: 0,
        data,
        claimed: None,
        link: 0,
        info: 0,
        entsize: 0,
    }
}

/// Write an ELF64 executable of `secs` (section 0 is the null one, added here) to `path`,
/// sparse where sections claim more than their data.
fn write_elf(path: &Path, secs: &[Sec], min_len: u64) {
    let mut shstr = vec![0u8];
    let mut name_off = Vec::new();
    for s in secs.iter().map(|s| s.name).chain([".shstrtab"]) {
        name_off.push(shstr.len() as u32);
        shstr.extend_from_slice(s.as_bytes());
        shstr.push(0);
    }
    let n = secs.len() + 2;
    let shoff = 64u64;
    let mut at = shoff + 64 * n as u64;
    let shstr_off = at;
    at += shstr.len() as u64;
    let mut offsets = Vec::new();
    for s in secs {
        at = at.next_multiple_of(8);
        offsets.push(at);
        at += s.claimed.unwrap_or(s.data.len() as u64);
    }
    let f = File::create(path).unwrap();
    f.set_len(at.max(min_len)).unwrap();
    let mut eh = vec![0u8; 64];
    eh[..4].copy_from_slice(b"\x7fELF");
    eh[4..7].copy_from_slice(&[2, 1, 1]);
    eh[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    eh[18..20].copy_from_slice(&62u16.to_le_bytes()); // x86-64
    eh[20..24].copy_from_slice(&1u32.to_le_bytes());
    eh[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
    eh[0x34..0x36].copy_from_slice(&64u16.to_le_bytes());
    eh[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
    eh[0x3c..0x3e].copy_from_slice(&(n as u16).to_le_bytes());
    eh[0x3e..0x40].copy_from_slice(&((n - 1) as u16).to_le_bytes());
    f.write_all_at(&eh, 0).unwrap();
    let header = |name: u32, ty: u32, flags: u64, addr: u64, off: u64, size: u64, s: &Sec| {
        let mut h = vec![0u8; 64];
        h[0..4].copy_from_slice(&name.to_le_bytes());
        h[4..8].copy_from_slice(&ty.to_le_bytes());
        h[8..16].copy_from_slice(&flags.to_le_bytes());
        h[16..24].copy_from_slice(&addr.to_le_bytes());
        h[24..32].copy_from_slice(&off.to_le_bytes());
        h[32..40].copy_from_slice(&size.to_le_bytes());
        h[40..44].copy_from_slice(&s.link.to_le_bytes());
        h[44..48].copy_from_slice(&s.info.to_le_bytes());
        h[48..56].copy_from_slice(&8u64.to_le_bytes());
        h[56..64].copy_from_slice(&s.entsize.to_le_bytes());
        h
    };
    let mut sh = vec![0u8; 64];
    for (i, s) in secs.iter().enumerate() {
        let size = s.claimed.unwrap_or(s.data.len() as u64);
        sh.extend(header(
            name_off[i],
            s.ty,
            s.flags,
            s.addr,
            offsets[i],
            size,
            s,
        ));
        f.write_all_at(&s.data, offsets[i]).unwrap();
    }
    let blank = sec("", 0, Vec::new());
    sh.extend(header(
        name_off[secs.len()],
        3,
        0,
        0,
        shstr_off,
        shstr.len() as u64,
        &blank,
    ));
    f.write_all_at(&sh, shoff).unwrap();
    f.write_all_at(&shstr, shstr_off).unwrap();
}

/// .go.buildinfo of go1.27.3 (inline format).
fn buildinfo() -> Sec {
    let mut d = b"\xff Go buildinf:".to_vec();
    d.extend([8, 2]);
    d.extend([0u8; 16]);
    d.push(8);
    d.extend(b"go1.27.3");
    Sec {
        flags: 3,
        addr: 0x1000,
        ..sec(".go.buildinfo", 1, d)
    }
}

/// .symtab (linked to section `strtab_index`, 1-based) naming the three globals analyse needs
/// first, and its string table.
fn symbols(strtab_index: u32) -> (Sec, Sec) {
    let mut strtab = vec![0u8];
    let mut syms = vec![0u8; 24];
    for (i, n) in ["runtime.sched", "runtime.gomaxprocs", "runtime.allglen"]
        .iter()
        .enumerate()
    {
        let mut s = vec![0u8; 24];
        s[0..4].copy_from_slice(&(strtab.len() as u32).to_le_bytes());
        s[4] = 0x11;
        s[8..16].copy_from_slice(&(0x1000 + 8 * i as u64).to_le_bytes());
        s[16..24].copy_from_slice(&8u64.to_le_bytes());
        syms.extend(s);
        strtab.extend(n.as_bytes());
        strtab.push(0);
    }
    (
        Sec {
            link: strtab_index,
            info: 1,
            entsize: 24,
            ..sec(".symtab", 2, syms)
        },
        sec(".strtab", 3, strtab),
    )
}

/// A zlib stream of `n` zero bytes (fixed-Huffman deflate: one literal, then 258-byte copies
/// at distance 1), built directly: compressing 512 MiB in a debug build would take minutes.
fn zlib_zeros(n: u64) -> Vec<u8> {
    struct Bits {
        out: Vec<u8>,
        acc: u64,
        len: u32,
    }
    impl Bits {
        fn put(&mut self, v: u64, n: u32) {
            self.acc |= v << self.len;
            self.len += n;
            while self.len >= 8 {
                self.out.push(self.acc as u8);
                self.acc >>= 8;
                self.len -= 8;
            }
        }
        /// Huffman codes go most significant bit first.
        fn code(&mut self, code: u64, n: u32) {
            let rev = (0..n).fold(0, |r, i| r | ((code >> i) & 1) << (n - 1 - i));
            self.put(rev, n);
        }
    }
    let mut b = Bits {
        out: vec![0x78, 0x01],
        acc: 0,
        len: 0,
    };
    b.put(1, 1); // BFINAL
    b.put(1, 2); // fixed Huffman
    b.code(0x30, 8); // literal 0
    let copies = (n - 1) / 258;
    for _ in 0..copies {
        b.code(0b1100_0101, 8); // length 258 (code 285)
        b.code(0, 5); // distance 1
    }
    for _ in 0..(n - 1) % 258 {
        b.code(0x30, 8);
    }
    b.code(0, 7); // end of block
    b.put(0, 7);
    let adler = ((n % 65521) << 16) | 1;
    let mut out = b.out;
    out.extend((adler as u32).to_be_bytes());
    out
}

/// The crafted binaries, written under `dir`.
fn craft(dir: &Path) -> Vec<(&'static str, PathBuf)> {
    const SHF_COMPRESSED: u64 = 0x800;
    let mut out = Vec::new();
    let mut put = |name: &'static str, secs: Vec<Sec>, len: u64| {
        let p = dir.join(name);
        write_elf(&p, &secs, len);
        out.push((name, p));
    };
    // 1. .debug_info inflating to 512 MiB (the old cap; ~1,000:1 passes the ratio check).
    let mut chdr = Vec::new();
    chdr.extend(1u32.to_le_bytes()); // ELFCOMPRESS_ZLIB
    chdr.extend(0u32.to_le_bytes());
    chdr.extend((512u64 << 20).to_le_bytes());
    chdr.extend(1u64.to_le_bytes());
    chdr.extend(zlib_zeros(512 << 20));
    let (symtab, strtab) = symbols(3);
    put(
        "dwarf-512m",
        vec![
            buildinfo(),
            symtab,
            strtab,
            Sec {
                flags: SHF_COMPRESSED,
                ..sec(".debug_info", 1, chdr)
            },
        ],
        0,
    );
    // 2. A 2 GiB file whose string table claims 256 MiB (the old cap).
    let (symtab, mut strtab) = symbols(3);
    strtab.claimed = Some(256 << 20);
    put(
        "strtab-256m-in-2g",
        vec![
            buildinfo(),
            symtab,
            strtab,
            sec(".debug_info", 1, vec![0; 16]),
        ],
        2 << 30,
    );
    // 3. A stripped binary whose .gopclntab claims 128 MiB (the old cap).
    let mut pcln = vec![0u8; 72];
    pcln[..4].copy_from_slice(&pclntab::MAGIC_120.to_le_bytes());
    pcln[6] = 1;
    pcln[7] = 8;
    put(
        "pclntab-128m",
        vec![
            buildinfo(),
            Sec {
                claimed: Some(128 << 20),
                ..sec(".gopclntab", 1, pcln)
            },
        ],
        0,
    );
    // 4. .go.buildinfo claiming 1 GiB (read without a cap before).
    put(
        "buildinfo-1g",
        vec![Sec {
            claimed: Some(1 << 30),
            ..buildinfo()
        }],
        2 << 30,
    );
    // 5. One struct of 5 million members (no cap before).
    let abbrev = vec![
        1, 0x11, 1, 0, 0, // compile unit, children
        2, 0x13, 1, 0x03, 0x08, 0, 0, // struct, children: name string
        3, 0x0d, 0, 0x03, 0x08, 0x38, 0x0b, 0, 0, // member: name string, location data1
        0,
    ];
    let mut dies = vec![1, 2];
    dies.extend(b"runtime.schedt\0");
    for i in 0..5_000_000u32 {
        dies.extend([3, b'm', 0, i as u8]);
    }
    dies.extend([0, 0]);
    let mut info = Vec::new();
    info.extend((dies.len() as u32 + 7).to_le_bytes());
    info.extend(4u16.to_le_bytes());
    info.extend(0u32.to_le_bytes());
    info.push(8);
    info.extend(dies);
    let (symtab, strtab) = symbols(3);
    put(
        "members-5m",
        vec![
            buildinfo(),
            symtab,
            strtab,
            sec(".debug_info", 1, info),
            sec(".debug_abbrev", 1, abbrev),
        ],
        0,
    );
    out
}

/// Peak RSS of this process (kB).
fn vm_hwm_kb() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The child side of [`planted_binaries_stay_within_the_memory_budget`]: analyse the file
/// SCHEDLAT_CRAFTED names, as the daemon does, and print the outcome and peak RSS. A no-op
/// test otherwise.
#[test]
fn crafted_child() {
    let Some(path) = std::env::var_os("SCHEDLAT_CRAFTED") else {
        return;
    };
    let before = vm_hwm_kb();
    let r = live::analyse_file(File::open(&path).unwrap());
    println!(
        "CRAFTED before_kb={before} hwm_kb={} result={:?}",
        vm_hwm_kb(),
        r.map(|_| ()).map_err(|e| e.to_string())
    );
}

#[test]
fn planted_binaries_stay_within_the_memory_budget() {
    let dir = std::env::temp_dir().join(format!("schedlat-crafted-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let files = craft(&dir);
    let mut report = Vec::new();
    for (name, path) in &files {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "goruntime::crafted::crafted_child",
                "--nocapture",
            ])
            .env("SCHEDLAT_CRAFTED", path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .find_map(|l| l.split_once("CRAFTED ").map(|x| x.1.to_owned()))
            .unwrap_or_else(|| {
                panic!(
                    "{name}: the child printed no result ({}):\n{text}\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                )
            });
        let kb = |key: &str| -> u64 {
            line.split(' ')
                .find_map(|f| f.strip_prefix(key))
                .unwrap()
                .parse()
                .unwrap()
        };
        let grew_mib = (kb("hwm_kb=") - kb("before_kb=")) / 1024;
        report.push(format!("{name}: +{grew_mib} MiB peak: {line}"));
        assert!(line.contains("result=Err"), "{name} was accepted: {line}");
        // The analysis' whole budget, and nothing beyond it.
        assert!(
            grew_mib <= budget::MEMORY >> 20,
            "{name}: peak RSS grew by {grew_mib} MiB during the analysis, over the {} MiB \
             budget:\n{}",
            budget::MEMORY >> 20,
            report.join("\n")
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
    eprintln!("{}", report.join("\n"));
}

/// A stripped analysis looks up ~14 functions by name. With 2^21 functions whose names are
/// offsets into one run of 4 KiB without a NUL, reading each name once per lookup scanned
/// 8 GiB per lookup; indexed once, the table is refused or answered in well under a second
/// of scanning (bounded by the budget's scan limit either way).
#[test]
fn a_forged_pclntab_costs_one_pass_over_its_names() {
    let n: u32 = 1 << 21;
    let funcnametab = 72usize;
    let names = (n as usize) + 4096;
    let functab = funcnametab + names;
    let funcs = functab + 8 * (n as usize + 1);
    let mut d = vec![0u8; funcs + 8 * n as usize];
    d[..4].copy_from_slice(&pclntab::MAGIC_120.to_le_bytes());
    d[6] = 1;
    d[7] = 8;
    let word = |d: &mut Vec<u8>, i: usize, v: u64| {
        d[8 + 8 * i..16 + 8 * i].copy_from_slice(&v.to_le_bytes())
    };
    word(&mut d, 0, u64::from(n));
    word(&mut d, 2, 0x40_0000);
    word(&mut d, 3, funcnametab as u64);
    word(&mut d, 7, functab as u64);
    d[funcnametab..functab].fill(b'A');
    for i in 0..n as usize {
        let e = functab + 8 * i;
        let funcoff = (funcs + 8 * i - functab) as u32;
        d[e..e + 4].copy_from_slice(&(i as u32).to_le_bytes());
        d[e + 4..e + 8].copy_from_slice(&funcoff.to_le_bytes());
        let f = funcs + 8 * i;
        d[f + 4..f + 8].copy_from_slice(&(i as u32).to_le_bytes());
    }
    let t = pclntab::Pclntab::parse(&d, None).unwrap();
    let budget = budget::Budget::default();
    let start = Instant::now();
    for name in table::SYMBOLS.iter().chain(&["runtime.casgstatus"; 7]) {
        let _ = t.find(name, &budget);
    }
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "14 lookups took {took:?} ({} bytes scanned)",
        budget.scanned()
    );
    assert!(budget.scanned() <= budget::SCAN);
}
