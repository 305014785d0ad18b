//! The overhead floor (`cargo xtask bench` only): schedlat's hooks with empty bodies.
//!
//! Same program names and attach points as schedlat-probes, no maps and no work, so that a
//! benchmark can tell what attaching at all costs from what schedlat's bodies cost.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{btf_tracepoint, uprobe},
    programs::{BtfTracePointContext, ProbeContext},
};

#[btf_tracepoint(function = "sched_waking")]
fn sched_waking(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sched_wakeup_new")]
fn sched_wakeup_new(_ctx: BtfTracePointContext) -> i32 {
    0
}

#[btf_tracepoint(function = "sched_switch")]
fn sched_switch(_ctx: BtfTracePointContext) -> i32 {
    0
}

/// Attached at the same runtime.casgstatus instruction a Go capture probes.
#[uprobe]
fn go_casgstatus(_ctx: ProbeContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
