//! Prometheus exposition: metric families from snapshots, and the retirement of series whose
//! subject is gone. Snapshots come as `crate::model` types: nothing here imports the loader.
pub mod metrics;
pub mod preempt;
pub mod proto;
pub mod series;
