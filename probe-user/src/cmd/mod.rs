//! One module per subcommand: each turns its `cli` arguments into work on the layers below.
pub mod capture;
pub mod check;
pub mod daemon;
pub mod floor;
pub mod go_stats;
pub mod top;
