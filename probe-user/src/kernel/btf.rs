//! Kernel struct offsets from BTF (/sys/kernel/btf/vmlinux).
//!
//! aya-ebpf cannot emit CO-RE relocations (aya issue #349), so the eBPF programs read kernel
//! structs at offsets we look up here and pass in as load-time globals.
use std::path::Path;

use btf_rs::{Btf, Type};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error(
        "cannot read kernel BTF at {path}: {cause}. schedlat needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y"
    )]
    Read { path: String, cause: btf_rs::Error },
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF: struct {strukt} has no field {field} (tried {tried})")]
    NoField {
        strukt: String,
        field: String,
        tried: String,
    },
    #[error("kernel BTF: {0}")]
    Other(String),
}

/// Byte offsets of the kernel fields the programs read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_state: u32,
    pub task_comm: u32,
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// task_struct.sched_info.pcount where the kernel has CONFIG_SCHED_INFO: a task's
    /// generation, which tells a stamp from an older one.
    pub task_pcount: Option<u32>,
    /// pt_regs fields with the syscall number and its second argument (x86_64 only), for
    /// futex tracking from sched_switch. None where the arch or BTF lacks them.
    pub regs_syscall_nr: Option<u32>,
    pub regs_arg2: Option<u32>,
}

/// The running kernel's BTF, parsed once: struct offsets for the programs, and the type and
/// enum facts crate::kernel::features detects kernel features from.
pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn open(path: &Path) -> Result<Self, BtfError> {
        let btf = Btf::from_file(path).map_err(|source| BtfError::Read {
            path: path.display().to_string(),
            cause: source,
        })?;
        Ok(Self { btf })
    }

    pub fn offsets(&self) -> Result<KernelOffsets, BtfError> {
        let btf = &self.btf;
        let off = |s: &str, fields: &[&str]| field_offset(btf, s, fields);
        Ok(KernelOffsets {
            task_pid: off("task_struct", &["pid"])?,
            task_tgid: off("task_struct", &["tgid"])?,
            // Renamed from `state` to `__state` in 5.14 (2f064a59a11f).
            task_state: off("task_struct", &["__state", "state"])?,
            task_comm: off("task_struct", &["comm"])?,
            task_cgroups: off("task_struct", &["cgroups"])?,
            css_set_dfl_cgrp: off("css_set", &["dfl_cgrp"])?,
            cgroup_kn: off("cgroup", &["kn"])?,
            kernfs_node_id: off("kernfs_node", &["id"])?,
            task_pcount: off("task_struct", &["sched_info"])
                .and_then(|s| Ok(s + off("sched_info", &["pcount"])?))
                .ok(),
            // x86_64 struct pt_regs (arch/x86/include/asm/ptrace.h): the syscall number is
            // saved in orig_ax, arguments in di, si, dx, r10, r8, r9.
            regs_syscall_nr: if cfg!(target_arch = "x86_64") {
                off("pt_regs", &["orig_ax"]).ok()
            } else {
                None
            },
            regs_arg2: if cfg!(target_arch = "x86_64") {
                off("pt_regs", &["si"]).ok()
            } else {
                None
            },
        })
    }

    /// Whether a type of this name exists (struct, typedef, ...).
    pub fn has_type(&self, name: &str) -> bool {
        self.btf
            .resolve_types_by_name(name)
            .is_ok_and(|t| !t.is_empty())
    }

    /// Whether `enum enum_name` has a member `value` (e.g. a helper in `enum bpf_func_id`):
    /// what libbpf's bpf_core_enum_value_exists() asks.
    pub fn has_enum_value(&self, enum_name: &str, value: &str) -> bool {
        let Ok(types) = self.btf.resolve_types_by_name(enum_name) else {
            return false;
        };
        types.iter().any(|t| match t {
            Type::Enum(e) => e
                .members
                .iter()
                .any(|m| self.btf.resolve_name(m).is_ok_and(|n| n == value)),
            _ => false,
        })
    }

    /// Whether `struct strukt` has a member `field` (also inside anonymous members).
    pub fn has_member(&self, strukt: &str, field: &str) -> bool {
        field_offset(&self.btf, strukt, &[field]).is_ok()
    }

    /// Number of arguments of a tracepoint's BTF typedef (`btf_trace_<name>`), context
    /// included; None if the kernel has no such typedef (no BTF tracepoints).
    pub fn tracepoint_arg_count(&self, typedef: &str) -> Option<usize> {
        tracepoint_arg_count(&self.btf, typedef).ok()
    }
}

pub fn kernel_offsets(path: &Path) -> Result<KernelOffsets, BtfError> {
    KernelBtf::open(path)?.offsets()
}

/// Byte offset of the first of `fields` that `strukt` has, looking through anonymous
/// struct/union members.
fn field_offset(btf: &Btf, strukt: &str, fields: &[&str]) -> Result<u32, BtfError> {
    let types = btf
        .resolve_types_by_name(strukt)
        .map_err(|_| BtfError::NoStruct(strukt.into()))?;
    // Several types can share a name (forward declarations); take the one with members.
    let s = types
        .iter()
        .find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s),
            _ => None,
        })
        .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
    for f in fields {
        if let Some(bits) = find_member(btf, s, f, 0, 0)? {
            if bits % 8 != 0 {
                return Err(BtfError::Other(format!("{strukt}.{f} is a bitfield")));
            }
            return Ok(bits / 8);
        }
    }
    Err(BtfError::NoField {
        strukt: strukt.into(),
        field: fields[0].into(),
        tried: fields.join(", "),
    })
}

fn find_member(
    btf: &Btf,
    s: &btf_rs::Struct,
    name: &str,
    base_bits: u32,
    depth: u32,
) -> Result<Option<u32>, BtfError> {
    if depth > 8 {
        return Ok(None);
    }
    for m in &s.members {
        let mname = btf.resolve_name(m).unwrap_or_default();
        if mname == name {
            return Ok(Some(base_bits + m.bit_offset()));
        }
        if mname.is_empty() {
            let mut t = btf
                .resolve_chained_type(m)
                .map_err(|e| BtfError::Other(e.to_string()))?;
            // Skip qualifiers to reach the anonymous struct/union.
            for _ in 0..8 {
                match &t {
                    Type::Const(_) | Type::Volatile(_) | Type::Typedef(_) => {
                        let bt = t.as_btf_type().expect("qualifier has a btf type");
                        t = btf
                            .resolve_chained_type(bt)
                            .map_err(|e| BtfError::Other(e.to_string()))?;
                    }
                    _ => break,
                }
            }
            if let Type::Struct(inner) | Type::Union(inner) = &t
                && let Some(b) =
                    find_member(btf, inner, name, base_bits + m.bit_offset(), depth + 1)?
            {
                return Ok(Some(b));
            }
        }
    }
    Ok(None)
}

/// Number of arguments of a tracepoint's BTF typedef (`btf_trace_<name>`: a pointer to a
/// function whose first argument is the `void *` context).
fn tracepoint_arg_count(btf: &Btf, typedef: &str) -> Result<usize, BtfError> {
    let types = btf
        .resolve_types_by_name(typedef)
        .map_err(|_| BtfError::Other(format!("no {typedef}: the kernel lacks BTF tracepoints")))?;
    let mut t = types
        .into_iter()
        .next()
        .ok_or_else(|| BtfError::Other(format!("no {typedef}")))?;
    for _ in 0..8 {
        match &t {
            Type::FuncProto(fp) => return Ok(fp.parameters.len()),
            other => {
                let bt = other
                    .as_btf_type()
                    .ok_or_else(|| BtfError::Other(format!("{typedef}: unexpected type")))?;
                t = btf
                    .resolve_chained_type(bt)
                    .map_err(|e| BtfError::Other(e.to_string()))?;
            }
        }
    }
    Err(BtfError::Other(format!("{typedef}: no function prototype")))
}

#[cfg(test)]
mod tests {
    use super::*;

    // Reads this machine's BTF (no root needed: /sys/kernel/btf/vmlinux is world-readable).
    #[test]
    fn offsets_from_this_kernel() {
        let p = Path::new("/sys/kernel/btf/vmlinux");
        if !p.exists() {
            eprintln!("SKIPPED offsets_from_this_kernel: no /sys/kernel/btf/vmlinux");
            return;
        }
        let o = kernel_offsets(p).unwrap();
        // pid and tgid are adjacent pid_t fields (include/linux/sched.h).
        assert_eq!(o.task_tgid, o.task_pid + 4);
        assert!(o.task_comm > o.task_tgid);
        assert!(o.task_cgroups > 0 && o.cgroup_kn > 0);
    }

    #[test]
    fn missing_btf_file_names_the_path_and_fix() {
        let e = kernel_offsets(Path::new("/nonexistent/vmlinux"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/nonexistent/vmlinux") && e.contains("CONFIG_DEBUG_INFO_BTF"),
            "{e}"
        );
    }
}
