//! The host as procfs and cgroupfs show it: cgroup paths, CPU limits, this process's
//! privileges and its seccomp filter. No aya, no eBPF.
pub mod cgroup;
pub mod cpulimit;
pub mod privs;
pub mod sandbox;
