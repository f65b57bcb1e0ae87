//! Per-user send histories and global send budgets: what the guardrails
//! read before a decision and reserve after it.
//!
//! Contract, for both backends:
//! - [`UserHistory`] comes with a version; [`SendReservation`] names the
//!   version the decision was made on. A reservation adds the send only if
//!   the history is still at that version ([`Reservation::Conflict`]
//!   otherwise: the caller reads it again and decides again), so two
//!   concurrent decisions for one user can never both pass a cap that only
//!   one of them fits under, on any number of replicas.
//! - A send already kept for the event id is not added again
//!   ([`Reservation::Duplicate`]): retried decides and replayed
//!   activations count once.
//! - Budgets count per fixed window; a budget counter never exceeds its
//!   `max` (checked and incremented atomically). When a later budget of
//!   the same reservation is spent, the earlier increments and the user's
//!   send are withdrawn before [`Reservation::BudgetSpent`] is returned.
//! - A user's history expires by itself `retention_ms` after the last send
//!   (the longest window any rule of any policy that wrote it needs) and
//!   keeps at most [`MAX_USER_SENDS`](crate::guardrails::MAX_USER_SENDS)
//!   sends.
//!
//! In Redis a user's sends are one hash keyed `P:{u:<user>}:h` (so users
//! spread over a cluster's slots; each reservation touches one slot), and a
//! budget window one counter `P:{b:<scope>}:<window>`.

use crate::guardrails::SendRecord;

/// A budget window to count a send in.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetSlot {
    /// `policy:<id>` or `group:<id>` and the window index: the counter's
    /// identity.
    pub scope: String,
    /// The window index.
    pub window: i64,
    /// Sends allowed in the window.
    pub max: u64,
    /// How long the counter must live (until its window has passed), ms.
    pub ttl_ms: i64,
}

/// A send to add to a user's history, counted in budgets.
#[derive(Debug, Clone, PartialEq)]
pub struct SendReservation<'a> {
    /// The user (`None`: only budgets apply; they then dedupe by event id).
    pub user: Option<&'a str>,
    /// The send.
    pub send: &'a SendRecord,
    /// The history version the decision was made on.
    pub version: u64,
    /// Budget windows to count it in.
    pub budgets: &'a [BudgetSlot],
    /// How long the user's history must be kept from now, ms.
    pub retention_ms: i64,
    /// Now, unix ms.
    pub now_ms: i64,
}

/// The result of a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Added and counted.
    Reserved,
    /// This event's send was reserved before: nothing changed.
    Duplicate,
    /// The user's history changed since it was read: read it again.
    Conflict,
    /// A budget is spent: nothing changed.
    BudgetSpent,
}
