//! schedlat kernel-side programs.
//!
//! Thin entries around shared handlers, one file per hook family (sched.rs, futex.rs, go.rs),
//! the maps and load-time globals in maps.rs and shared helpers in helpers.rs. All aggregation
//! happens here, into bounded maps; userspace only reads them. Every failed insert or lost
//! event bumps a `DROPS` counter.
#![no_std]
#![no_main]
// BPF atomic add needs inline asm: the bpfel target has no atomic-cas, so core's fetch_add is
// unavailable. Built with RUSTC_BOOTSTRAP=aya_ebpf,schedlat_probes (see probe-user/build.rs).
#![feature(asm_experimental_arch)]

mod futex;
mod go;
mod helpers;
mod maps;
mod sched;
mod stamps;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
