//! Go programs over time: a capture's window on one process (`capture`) and the daemon's
//! watcher over every Go process (`watch`), built on `goruntime`'s binary analysis and reads.
pub mod capture;
pub mod watch;
