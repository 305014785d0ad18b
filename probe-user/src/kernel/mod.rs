//! The kernel side: what this kernel has (BTF, tracefs, the feature table) and the loader,
//! `probes`, the only module that talks to aya. Nothing outside `kernel` imports aya: what the
//! loader reads leaves as `crate::model` types, so no output needs the loader.
pub mod btf;
pub mod features;
pub mod probes;
pub mod tracefs;
