//! The host as procfs and cgroupfs show it: cgroup paths, CPU limits, this process's
//! privileges. No aya, no eBPF.
pub mod cgroup;
pub mod cpulimit;
pub mod privs;
