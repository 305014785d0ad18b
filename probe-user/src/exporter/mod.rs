//! Prometheus exposition: metric families from snapshots, and the retirement of series whose
//! subject is gone.
pub mod metrics;
pub mod preempt;
pub mod proto;
pub mod series;
