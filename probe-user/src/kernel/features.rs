//! What the running kernel offers schedlat, decided once at load time.
//!
//! One table ([`TABLE`]): each kernel feature schedlat uses, how it is detected (BTF or
//! tracefs/sysfs, never a version number) and what schedlat does without it. The loader
//! (`probes`) acts on [`KernelFeatures`] and nothing else; `schedlat check` prints it; the
//! README's Requirements table is checked against it by a unit test. No aya here.
use std::path::Path;

use crate::{
    kernel::{btf::KernelBtf, tracefs::Tracefs},
    model::{ClassOf, Classify, ErrorClass, FutexMode},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Feature {
    BtfTracepoints,
    SwitchPrevState,
    TaskPtRegs,
    RingBuf,
    TaskStorage,
    SyscallTracepoints,
    FutexWaitvTracepoints,
    Futex2Tracepoints,
    Uprobes,
}

/// One row of the table.
#[derive(Debug)]
pub struct Spec {
    pub feature: Feature,
    /// Short name, as `schedlat check` and the README print it.
    pub name: &'static str,
    /// The mainline release that added it (for people; detection never uses it).
    pub since: &'static str,
    pub detected_by: &'static str,
    pub used_for: &'static str,
    /// What schedlat does on a kernel without it.
    pub without: &'static str,
}

pub const TABLE: &[Spec] = &[
    Spec {
        feature: Feature::BtfTracepoints,
        name: "tp_btf",
        since: "5.5",
        detected_by: "BTF typedef btf_trace_sched_switch",
        used_for: "run-queue delay, wakeups (sched_switch, sched_waking, sched_wakeup_new)",
        without: "capture and daemon refuse to start (exit 2)",
    },
    Spec {
        feature: Feature::SwitchPrevState,
        name: "sched_switch prev_state",
        since: "5.18",
        detected_by: "btf_trace_sched_switch has 5 arguments",
        used_for: "whether the task switched out is still runnable",
        without: "reads task_struct.__state (state before 5.14) at switch-out: same result",
    },
    Spec {
        feature: Feature::TaskPtRegs,
        name: "bpf_task_pt_regs",
        since: "5.15",
        detected_by: "BTF enum bpf_func_id has BPF_FUNC_task_pt_regs",
        used_for: "futex mode `sched` (the blocked task's syscall from its saved registers)",
        without: "futex mode `auto` (the daemon's default) is `off`; `sched` is refused (exit 2): use `syscall`",
    },
    Spec {
        feature: Feature::RingBuf,
        name: "BPF ring buffer",
        since: "5.8",
        detected_by: "BTF enum bpf_map_type has BPF_MAP_TYPE_RINGBUF",
        used_for: "slow events (with who ran instead)",
        without: "capture and daemon refuse to start (exit 2)",
    },
    Spec {
        feature: Feature::TaskStorage,
        name: "task storage in tracing programs",
        since: "5.12",
        detected_by: "BTF struct task_struct has member bpf_storage",
        used_for: "per-task run-queue state with no map to fill and a cached histogram slot (the cheap hot path)",
        without: "per-task state in a hash map (`maps.runq_start` entries, drops counted), one hash lookup more per switch",
    },
    Spec {
        feature: Feature::SyscallTracepoints,
        name: "syscall tracepoints",
        since: "2.6.37",
        detected_by: "tracefs has syscalls:sys_enter_futex (CONFIG_FTRACE_SYSCALLS)",
        used_for: "futex mode `syscall` (waits with how they ended)",
        without: "futex mode `syscall` (the capture's default) is refused (exit 2): use `sched` or `off`",
    },
    Spec {
        feature: Feature::FutexWaitvTracepoints,
        name: "futex_waitv tracepoints",
        since: "5.16",
        detected_by: "tracefs has syscalls:sys_enter_futex_waitv",
        used_for: "futex mode `syscall`: waits in futex_waitv",
        without: "not attached (the kernel has no futex_waitv to trace)",
    },
    Spec {
        feature: Feature::Futex2Tracepoints,
        name: "futex2 futex_wait tracepoints",
        since: "6.7",
        detected_by: "tracefs has syscalls:sys_enter_futex_wait",
        used_for: "futex mode `syscall`: waits in futex2 futex_wait",
        without: "not attached (the kernel has no futex2 futex_wait to trace)",
    },
    Spec {
        feature: Feature::Uprobes,
        name: "uprobes",
        since: "4.17",
        detected_by: "sysfs has bus/event_source/devices/uprobe (CONFIG_UPROBE_EVENTS)",
        used_for: "per-event Go probes in captures (runtime.casgstatus)",
        without: "captures keep the Go runtime's own statistics; `--go-probes on` is refused (exit 2)",
    },
];

/// What this kernel has, by [`TABLE`] row.
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelFeatures {
    /// `uname -r`.
    pub release: String,
    present: Vec<(Feature, bool)>,
}

/// A feature the user asked for is missing: exit 2, naming it, the kernel and the way out.
#[derive(Debug, thiserror::Error)]
#[error(
    "{what} needs {name} (Linux {since}+; detected as: {detected_by}), which this kernel \
     ({release}) lacks: {way_out}"
)]
pub struct MissingFeature {
    pub what: String,
    pub name: &'static str,
    pub since: &'static str,
    pub detected_by: &'static str,
    pub release: String,
    pub way_out: String,
}

impl Classify for MissingFeature {
    /// The user asked for what this kernel cannot do.
    fn class(&self) -> ErrorClass {
        ErrorClass::Usage
    }
}
inventory::submit!(ClassOf::of::<MissingFeature>());

impl KernelFeatures {
    /// Detect every row of [`TABLE`] on the running kernel.
    pub fn detect(btf: &KernelBtf, tracefs: &Tracefs, sysfs: &Path) -> Self {
        let present = TABLE
            .iter()
            .map(|s| {
                let has = match s.feature {
                    Feature::BtfTracepoints => btf.has_type("btf_trace_sched_switch"),
                    // The typedef's prototype: (void *ctx, bool preempt, prev, next
                    // [, unsigned int prev_state]) — prev_state since 5.18 (fa2c3254d7cf).
                    Feature::SwitchPrevState => btf
                        .tracepoint_arg_count("btf_trace_sched_switch")
                        .is_some_and(|n| n >= 5),
                    Feature::TaskPtRegs => {
                        btf.has_enum_value("bpf_func_id", "BPF_FUNC_task_pt_regs")
                    }
                    Feature::RingBuf => btf.has_enum_value("bpf_map_type", "BPF_MAP_TYPE_RINGBUF"),
                    // Task storage came in 5.11 for BPF LSM only, its pointer in the LSM blob;
                    // 5.12 moved it into task_struct to open it to tracing programs
                    // (a10787e6d58c, kernel/bpf/bpf_task_storage.c).
                    Feature::TaskStorage => btf.has_member("task_struct", "bpf_storage"),
                    Feature::SyscallTracepoints => tracefs.has("syscalls", "sys_enter_futex"),
                    Feature::FutexWaitvTracepoints => {
                        tracefs.has("syscalls", "sys_enter_futex_waitv")
                    }
                    Feature::Futex2Tracepoints => tracefs.has("syscalls", "sys_enter_futex_wait"),
                    Feature::Uprobes => sysfs.join("bus/event_source/devices/uprobe").exists(),
                };
                (s.feature, has)
            })
            .collect();
        Self {
            release: kernel_release(),
            present,
        }
    }

    /// A fixed set, for tests of the decisions.
    pub fn with(release: &str, missing: &[Feature]) -> Self {
        Self {
            release: release.into(),
            present: TABLE
                .iter()
                .map(|s| (s.feature, !missing.contains(&s.feature)))
                .collect(),
        }
    }

    pub fn has(&self, f: Feature) -> bool {
        self.present.iter().any(|&(g, p)| g == f && p)
    }

    /// Each row with whether this kernel has it.
    pub fn rows(&self) -> impl Iterator<Item = (&'static Spec, bool)> + '_ {
        TABLE.iter().map(|s| (s, self.has(s.feature)))
    }

    /// Ok, or the error that names `f`, this kernel and `way_out`.
    pub fn require(&self, f: Feature, what: &str, way_out: &str) -> Result<(), MissingFeature> {
        if self.has(f) {
            return Ok(());
        }
        let s = spec(f);
        Err(MissingFeature {
            what: what.into(),
            name: s.name,
            since: s.since,
            detected_by: s.detected_by,
            release: self.release.clone(),
            way_out: way_out.into(),
        })
    }

    /// The futex mode to load for `asked`: `auto` becomes `sched` or `off`; a mode the kernel
    /// cannot do is an error that says what to use instead.
    pub fn futex_mode(&self, asked: FutexMode) -> Result<FutexMode, MissingFeature> {
        let sched_ok = self.has(Feature::TaskPtRegs) && cfg!(target_arch = "x86_64");
        match asked {
            FutexMode::Auto if sched_ok => Ok(FutexMode::Sched),
            FutexMode::Auto => Ok(FutexMode::Off),
            FutexMode::Sched => {
                self.require(
                    Feature::TaskPtRegs,
                    "futex mode `sched`",
                    "use futex mode `syscall` (--futex syscall, or futex = \"syscall\" in the \
                     daemon config), or `auto`/`off`",
                )?;
                Ok(FutexMode::Sched)
            }
            FutexMode::Syscall => {
                self.require(
                    Feature::SyscallTracepoints,
                    "futex mode `syscall`",
                    "use `--futex sched` or `--futex off` (daemon config: futex = \"auto\", \
                     \"sched\" or \"off\")",
                )?;
                Ok(FutexMode::Syscall)
            }
            FutexMode::Off => Ok(FutexMode::Off),
        }
    }
}

pub fn spec(f: Feature) -> &'static Spec {
    TABLE
        .iter()
        .find(|s| s.feature == f)
        .expect("every Feature has a TABLE row")
}

/// `uname -r` of the running kernel (uname(2): /proc/sys may be hidden, e.g. by a unit's
/// ProcSubset=pid).
pub fn kernel_release() -> String {
    // SAFETY: an all-zero utsname is a valid out-parameter for uname(2).
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` outlives the call; on success `release` is NUL-terminated.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    // SAFETY: NUL-terminated by uname(2), inside `u`.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// A kernel of the VM matrix (`cargo xtask vmtest`) and the features it lacks. The README's
/// Requirements table is rendered from this and [`TABLE`] (a unit test keeps them equal), and
/// vmtest checks each VM's `schedlat check` against that table: what the README says is what
/// the VMs saw.
pub struct TestedKernel {
    /// The table's column header; vmtest finds its kernel's column by it.
    pub column: &'static str,
    pub missing: &'static [Feature],
}

pub const TESTED: &[TestedKernel] = &[
    TestedKernel {
        column: "5.10 (Debian 11)",
        missing: &[
            Feature::SwitchPrevState,
            Feature::TaskPtRegs,
            Feature::TaskStorage,
            Feature::FutexWaitvTracepoints,
            Feature::Futex2Tracepoints,
        ],
    },
    TestedKernel {
        column: "6.1 (Debian 12)",
        missing: &[Feature::Futex2Tracepoints],
    },
    TestedKernel {
        column: "6.1 PREEMPT_RT",
        missing: &[Feature::Futex2Tracepoints],
    },
    TestedKernel {
        column: "6.12 (Debian 13)",
        missing: &[],
    },
];

/// The README's Requirements table: one row per [`TABLE`] entry, one column per [`TESTED`]
/// kernel (`yes` / `missing`).
pub fn requirements_table() -> String {
    let cols: Vec<&str> = TESTED.iter().map(|k| k.column).collect();
    let mut out = format!(
        "| feature | since | detected by | without it | {} |\n|---|---|---|---|{}\n",
        cols.join(" | "),
        "---|".repeat(cols.len())
    );
    for s in TABLE {
        let cells: Vec<&str> = TESTED
            .iter()
            .map(|k| {
                if k.missing.contains(&s.feature) {
                    "missing"
                } else {
                    "yes"
                }
            })
            .collect();
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            s.name,
            s.since,
            s.detected_by,
            s.without,
            cells.join(" | ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A feature the user asked for and the kernel lacks: exit 2.
    #[test]
    fn a_missing_feature_is_usage() {
        let e = MissingFeature {
            what: "--futex syscall".into(),
            name: "futex syscall tracepoints",
            since: "2.6.30",
            detected_by: "tracefs",
            release: "5.10.0".into(),
            way_out: "use --futex off".into(),
        };
        assert_eq!(ErrorClass::of(&e.into()), ErrorClass::Usage);
    }

    #[test]
    fn readme_requirements_table_is_the_code_table() {
        let readme = include_str!("../../../README.md");
        let table = requirements_table();
        assert!(
            readme.contains(&table),
            "README.md's Requirements table differs from features::TABLE and TESTED; put this \
             there:\n{table}"
        );
    }

    #[test]
    fn every_feature_has_one_row() {
        for (i, a) in TABLE.iter().enumerate() {
            for b in &TABLE[i + 1..] {
                assert_ne!(a.feature, b.feature, "{} twice", a.name);
            }
        }
        assert_eq!(TABLE.len(), 9);
    }

    #[test]
    fn futex_auto_is_sched_where_possible_and_off_otherwise() {
        let all = KernelFeatures::with("6.1.0", &[]);
        let sched = if cfg!(target_arch = "x86_64") {
            FutexMode::Sched
        } else {
            FutexMode::Off
        };
        assert_eq!(all.futex_mode(FutexMode::Auto).unwrap(), sched);
        let old = KernelFeatures::with("5.10.0-32-cloud-amd64", &[Feature::TaskPtRegs]);
        assert_eq!(old.futex_mode(FutexMode::Auto).unwrap(), FutexMode::Off);
        assert_eq!(
            old.futex_mode(FutexMode::Syscall).unwrap(),
            FutexMode::Syscall
        );
        let e = old.futex_mode(FutexMode::Sched).unwrap_err().to_string();
        for needle in [
            "futex mode `sched`",
            "bpf_task_pt_regs",
            "5.15+",
            "5.10.0-32-cloud-amd64",
            "syscall",
        ] {
            assert!(e.contains(needle), "{needle:?} missing from: {e}");
        }
        let no_sys = KernelFeatures::with("6.1.0", &[Feature::SyscallTracepoints]);
        let e = no_sys
            .futex_mode(FutexMode::Syscall)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("syscalls:sys_enter_futex") && e.contains("--futex sched"),
            "{e}"
        );
    }

    // Reads this machine's BTF and tracefs (world-readable; no root needed).
    #[test]
    fn this_kernel_has_what_its_btf_says() {
        let btf = Path::new("/sys/kernel/btf/vmlinux");
        let Ok(tracefs) = Tracefs::discover() else {
            eprintln!("SKIPPED this_kernel_has_what_its_btf_says: no tracefs mounted");
            return;
        };
        if !btf.exists() {
            eprintln!("SKIPPED this_kernel_has_what_its_btf_says: no BTF");
            return;
        }
        let k = KernelBtf::open(btf).unwrap();
        let f = KernelFeatures::detect(&k, &tracefs, Path::new("/sys"));
        // Every kernel schedlat supports has these; a false here is a detection bug.
        assert!(f.has(Feature::BtfTracepoints), "{f:?}");
        assert!(f.has(Feature::RingBuf), "{f:?}");
        assert!(!f.release.is_empty() && f.release != "unknown");
    }
}
