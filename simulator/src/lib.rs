//! The Nudge simulator: off-policy evaluation, synthetic environments and
//! reward tuning, built on the same policy code as the service (`nudge`).

/// The policy engine the simulator runs offline, re-exported so offline and
/// online code paths are provably the same.
pub use nudge::policy;

pub mod env;
pub mod export;
pub mod logfmt;
pub mod ope;
pub mod tune;

/// Output format of every command's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A readable table.
    Table,
    /// JSON (each command documents its shape).
    Json,
}
