//! The kernel side: what this kernel has (BTF, tracefs, the feature table) and the loader,
//! `probes`, the only module that talks to aya.
pub mod btf;
pub mod features;
pub mod probes;
pub mod tracefs;
