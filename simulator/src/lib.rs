//! The Nudge simulator: off-policy evaluation, synthetic environments and
//! reward tuning, built on the same policy code as the service (`nudge`).
//!
//! This crate is a skeleton until its own issue lands: the binary parses its
//! commands and says plainly that they are not implemented yet.

/// The policy engine the simulator runs offline, re-exported so offline and
/// online code paths are provably the same.
pub use nudge::policy;
