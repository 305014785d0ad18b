//! The `.go.buildinfo` section alone: the input becomes that section of a minimal ELF (one
//! PT_LOAD segment holding it), so the fuzzer mutates only what the version parser reads,
//! including the pre-1.18 format's pointers (which must land inside a loaded segment).
//! Seeds: the fixtures' sections, and a pre-1.18 one, written by `cargo xtask fuzz`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use schedlat::goruntime;

/// Virtual address of the section; `cargo xtask fuzz` points the pre-1.18 seed's pointers here.
const SECTION_ADDR: u64 = 0x40_1000;
const SEGMENT_ADDR: u64 = 0x40_0000;
const SECTION_OFF: u64 = SECTION_ADDR - SEGMENT_ADDR;

fuzz_target!(|data: &[u8]| {
    let _ = goruntime::go_version(&elf_with_buildinfo(data)[..]);
});

/// ELF64 little-endian: header, one PT_LOAD from file offset 0, the section at SECTION_OFF,
/// then .shstrtab and the section headers (null, .go.buildinfo, .shstrtab).
fn elf_with_buildinfo(section: &[u8]) -> Vec<u8> {
    let names = b"\0.go.buildinfo\0.shstrtab\0";
    let strtab_off = SECTION_OFF + section.len() as u64;
    let shoff = (strtab_off + names.len() as u64).next_multiple_of(8);
    let mut f = Vec::with_capacity(shoff as usize + 3 * 64);
    let (u16_, u32_, u64_) = (
        |f: &mut Vec<u8>, v: u16| f.extend_from_slice(&v.to_le_bytes()),
        |f: &mut Vec<u8>, v: u32| f.extend_from_slice(&v.to_le_bytes()),
        |f: &mut Vec<u8>, v: u64| f.extend_from_slice(&v.to_le_bytes()),
    );
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    u16_(&mut f, 2); // ET_EXEC
    u16_(&mut f, 62); // EM_X86_64
    u32_(&mut f, 1);
    u64_(&mut f, SEGMENT_ADDR); // e_entry
    u64_(&mut f, 64); // e_phoff
    u64_(&mut f, shoff);
    u32_(&mut f, 0);
    for v in [64u16, 56, 1, 64, 3, 2] {
        // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
        u16_(&mut f, v);
    }
    // PT_LOAD, R+W, the whole file.
    u32_(&mut f, 1);
    u32_(&mut f, 6);
    for v in [0, SEGMENT_ADDR, SEGMENT_ADDR, shoff, shoff, 0x1000] {
        u64_(&mut f, v);
    }
    f.resize(SECTION_OFF as usize, 0);
    f.extend_from_slice(section);
    f.extend_from_slice(names);
    f.resize(shoff as usize, 0);
    f.extend_from_slice(&[0u8; 64]);
    // .go.buildinfo: PROGBITS, WA.
    let mut sh = |name: u32, ty: u32, flags: u64, addr: u64, off: u64, size: u64| {
        u32_(&mut f, name);
        u32_(&mut f, ty);
        for v in [flags, addr, off, size] {
            u64_(&mut f, v);
        }
        u32_(&mut f, 0);
        u32_(&mut f, 0);
        u64_(&mut f, 1);
        u64_(&mut f, 0);
    };
    sh(1, 1, 3, SECTION_ADDR, SECTION_OFF, section.len() as u64);
    sh(15, 3, 0, 0, strtab_off, names.len() as u64);
    f
}
