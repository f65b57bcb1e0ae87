//! The model-state store: what several replicas share.
//!
//! Per policy the store holds
//! - **pending events**: what a later reward needs (each slate slot's arm and
//!   feature vector), the reward deadline, the deferred/activated flags and
//!   the decision response (so a retried decide gets the same answer);
//! - the **learned stream**: every (event, action, reward) to learn, appended
//!   exactly once — by the reward that claims it, or by the sweep that
//!   applies the default reward when the window closes;
//! - a **snapshot**: the encoded [`ModelState`](crate::model::ModelState) up
//!   to a stream position, plus an epoch bumped by resets.
//!
//! Every replica folds the stream, in order, into its local model; since
//! entries are appended once and applied in the same order from the same
//! snapshot, all replicas converge on identical statistics and nothing is
//! learned twice or lost. Snapshots let the stream be trimmed and new
//! replicas start quickly.
//!
//! Two implementations share these semantics exactly: [`MemoryStore`]
//! (embedded, one process) and [`RedisStore`] (production; Lua scripts make
//! each operation atomic, and every key of a policy shares a Redis Cluster
//! hash tag).

mod memory;
pub mod outbox;
mod redis;
pub mod users;

pub use memory::MemoryStore;
pub use redis::RedisStore;
pub use users::{BudgetSlot, Reservation, SendReservation};

use crate::guardrails::UserHistory;

use std::fmt;
use std::str::FromStr;

/// A position in a policy's learned stream (`<ms>-<seq>`, as Redis stream
/// ids; the memory store uses `0-<seq>`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct StreamId {
    /// Milliseconds part.
    pub ms: u64,
    /// Sequence part.
    pub seq: u64,
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for StreamId {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        let bad = || StoreError::Corrupt(format!("bad stream id {s:?}"));
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(StreamId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

/// One slate position of a decided event: what learning needs.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Slot {
    /// The action's id (an arm, or a shared-mode candidate).
    pub action: String,
    /// The model arm (0 in shared mode).
    pub arm: u32,
    /// The feature vector the decision saw.
    pub x: Vec<f64>,
}

/// A decided event, stored until its reward window closes.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EventRecord {
    /// The event id.
    pub event_id: String,
    /// Slot 0 is the chosen action; more for slates.
    pub slots: Vec<Slot>,
    /// Unix ms after which the window is closed (for a deferred event not
    /// yet activated: the activation deadline).
    pub deadline_ms: i64,
    /// Decided with `defer`: learned only once activated.
    pub deferred: bool,
    /// The decision response, returned verbatim to a retried decide.
    pub response: String,
}

/// Whether a decision was new or a retry.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// Stored now: log it.
    New,
    /// The event id was decided before: answer with this stored response
    /// and log nothing.
    Existing(String),
}

/// What a policy's reward settings tell the store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardRules {
    /// `true`: rewards add up until the window closes; `false`: the first
    /// reward is learned at once and another is refused.
    pub sum: bool,
    /// Learned for a slot that got no reward when the window closes.
    pub default_reward: f64,
    /// The reward window, in ms.
    pub window_ms: i64,
    /// How long a closed event is still remembered (to answer a late or
    /// second reward precisely), in ms.
    pub retention_ms: i64,
}

/// The result of a reward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RewardOutcome {
    /// Appended to the learned stream (first-reward aggregation), for this
    /// action.
    Learned(String),
    /// Added to the event's sum for this action, learned when the window
    /// closes.
    Accumulated(String),
    /// This reward id was applied to this event before (for this action):
    /// nothing changed.
    Duplicate(String),
    /// No such event (never decided, or forgotten after retention).
    UnknownEvent,
    /// The reward window has closed.
    Expired,
    /// This action of this event was already rewarded (first aggregation).
    AlreadyRewarded,
    /// A deferred decision that was never activated.
    NotActivated,
    /// The named action is not in this event's slate.
    UnknownAction,
}

/// The result of an activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivateOutcome {
    /// Activated now; the reward window starts now.
    Activated,
    /// Already activated (idempotent).
    AlreadyActive,
    /// The decision was not deferred.
    NotDeferred,
    /// No such event.
    UnknownEvent,
    /// Not activated in time; it will never be learned.
    Expired,
}

/// An entry of the learned stream.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LearnedEntry {
    /// Stream position.
    pub id: StreamId,
    /// The event.
    pub event_id: String,
    /// The action learned.
    pub action: String,
    /// Model arm.
    pub arm: u32,
    /// Feature vector.
    pub x: Vec<f64>,
    /// Reward.
    pub reward: f64,
    /// Whether it is the policy's default (no reward in the window).
    pub is_default: bool,
}

/// What a sweep of closed windows did.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SweepResult {
    /// Slots learned at window close: `(event, action, reward, is_default)`
    /// (a sum-mode slot with rewards learns their sum, not the default).
    pub learned: Vec<(String, String, f64, bool)>,
    /// Deferred events dropped because they were never activated.
    pub dropped: Vec<String>,
}

/// A policy's snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Encoded model state ([`crate::model::codec`]); `None` before the first
    /// snapshot (a fresh model).
    pub blob: Option<Vec<u8>>,
    /// The stream position the snapshot includes.
    pub cursor: StreamId,
}

/// What a replica must fold into its model.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncBatch {
    /// The policy's reset epoch.
    pub epoch: u64,
    /// Set when the replica must first replace its model with this snapshot
    /// (its epoch changed, or its cursor fell behind the snapshot).
    pub snapshot: Option<Snapshot>,
    /// Entries after the replica's cursor (or the snapshot's), in order.
    pub entries: Vec<LearnedEntry>,
}

/// A store failure (never a caller's fault).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The store could not be reached or answered an error.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The call took longer than the configured timeout.
    #[error("store call timed out")]
    Timeout,
    /// Stored data could not be read.
    #[error("corrupt store data: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the store may answer if asked again later (unreachable, or
    /// too slow), as opposed to data it will never accept.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Timeout)
    }
}

/// The store of a service: one of the two implementations.
///
/// Contract, for both: every operation is atomic with respect to all
/// replicas; a [`RewardOutcome::Learned`] or a sweep appends each
/// (event, action) to the stream at most once, and the sweep appends every
/// slot not yet learned exactly once when its window closes.
#[derive(Clone)]
pub enum Store {
    /// In-process (embedded default).
    Memory(MemoryStore),
    /// Redis (production).
    Redis(std::sync::Arc<RedisStore>),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match $self {
            Store::Memory($s) => $call,
            Store::Redis($s) => $call,
        }
    };
}

impl Store {
    /// Stores a new decision, or returns the earlier response for a retried
    /// event id.
    pub async fn record(
        &self,
        policy: &str,
        event: &EventRecord,
        rules: &RewardRules,
        now_ms: i64,
    ) -> Result<Recorded, StoreError> {
        dispatch!(self, s => s.record(policy, event, rules, now_ms).await)
    }

    /// The policy that decided `event_id`, if it is still remembered.
    pub async fn event_policy(&self, event_id: &str) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.event_policy(event_id).await)
    }

    /// Applies a reward for `action` of `event_id` (`None`: the chosen one).
    pub async fn reward(
        &self,
        policy: &str,
        event_id: &str,
        action: Option<&str>,
        reward: f64,
        rules: &RewardRules,
        now_ms: i64,
    ) -> Result<RewardOutcome, StoreError> {
        dispatch!(self, s => s.reward(policy, event_id, action, reward, rules, now_ms, "").await)
    }

    /// [`Store::reward`] with an idempotency key: a `reward_id` already
    /// applied to this event is not applied again and answers
    /// [`RewardOutcome::Duplicate`], so a reward retried after a timeout (or
    /// replayed from the outbox after a crash) is learned once.
    #[allow(clippy::too_many_arguments)]
    pub async fn reward_once(
        &self,
        policy: &str,
        event_id: &str,
        action: Option<&str>,
        reward: f64,
        rules: &RewardRules,
        now_ms: i64,
        reward_id: &str,
    ) -> Result<RewardOutcome, StoreError> {
        dispatch!(self, s => s.reward(policy, event_id, action, reward, rules, now_ms, reward_id).await)
    }

    /// Activates a deferred decision: its reward window starts now.
    pub async fn activate(
        &self,
        policy: &str,
        event_id: &str,
        rules: &RewardRules,
        now_ms: i64,
    ) -> Result<ActivateOutcome, StoreError> {
        dispatch!(self, s => s.activate(policy, event_id, rules, now_ms).await)
    }

    /// Closes every window due by `now_ms` (at most `limit` events): learns
    /// defaults (or sums), drops unactivated deferred events.
    pub async fn sweep(
        &self,
        policy: &str,
        rules: &RewardRules,
        now_ms: i64,
        limit: usize,
    ) -> Result<SweepResult, StoreError> {
        dispatch!(self, s => s.sweep(policy, rules, now_ms, limit).await)
    }

    /// What a replica at `(epoch, cursor)` must fold next (at most `limit`
    /// entries).
    pub async fn sync(
        &self,
        policy: &str,
        epoch: Option<u64>,
        cursor: StreamId,
        limit: usize,
    ) -> Result<SyncBatch, StoreError> {
        dispatch!(self, s => s.sync(policy, epoch, cursor, limit).await)
    }

    /// Saves a snapshot that includes the stream up to `cursor`, if it is
    /// newer than the stored one and no reset happened since `epoch`; trims
    /// the stream before it. Returns whether it was saved.
    pub async fn save_snapshot(
        &self,
        policy: &str,
        epoch: u64,
        blob: &[u8],
        cursor: StreamId,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.save_snapshot(policy, epoch, blob, cursor).await)
    }

    /// Resets the model to `blob` (a fresh state): bumps the epoch so every
    /// replica reloads, and drops the stream learned so far.
    pub async fn reset(&self, policy: &str, blob: &[u8]) -> Result<(), StoreError> {
        dispatch!(self, s => s.reset(policy, blob).await)
    }

    /// Events whose window is still open (or awaiting activation).
    pub async fn pending(&self, policy: &str) -> Result<u64, StoreError> {
        dispatch!(self, s => s.pending(policy).await)
    }

    /// The stored decision response of a pending event (what a retried
    /// decide gets), if the event is still remembered.
    pub async fn event_response(
        &self,
        policy: &str,
        event_id: &str,
    ) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.event_response(policy, event_id).await)
    }

    /// A user's kept sends and their version (empty, version 0, for a user
    /// never sent to).
    pub async fn user_history(&self, user: &str) -> Result<UserHistory, StoreError> {
        dispatch!(self, s => s.user_history(user).await)
    }

    /// Sends counted so far in each budget window.
    pub async fn budget_used(&self, slots: &[BudgetSlot]) -> Result<Vec<u64>, StoreError> {
        dispatch!(self, s => s.budget_used(slots).await)
    }

    /// Adds a send to a user's history and counts it in its budgets,
    /// atomically against concurrent reservations (see [`users`]).
    pub async fn reserve_send(&self, r: &SendReservation<'_>) -> Result<Reservation, StoreError> {
        dispatch!(self, s => s.reserve_send(r).await)
    }

    /// Records the reward a user's send earned (for outcome features).
    /// Returns whether the send was still kept.
    pub async fn note_outcome(
        &self,
        user: &str,
        event_id: &str,
        outcome: f64,
    ) -> Result<bool, StoreError> {
        dispatch!(self, s => s.note_outcome(user, event_id, outcome).await)
    }

    /// Whether the store answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping().await)
    }

    /// A short name for health reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
        }
    }
}

/// Encodes a feature vector as little-endian f64 bytes (what the Redis
/// scripts copy around without parsing).
pub(crate) fn encode_vector(x: &[f64]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Decodes [`encode_vector`] output; every value must be finite.
pub(crate) fn decode_vector(bytes: &[u8]) -> Result<Vec<f64>, StoreError> {
    if !bytes.len().is_multiple_of(8) {
        return Err(StoreError::Corrupt(format!(
            "vector of {} bytes",
            bytes.len()
        )));
    }
    let x: Vec<f64> = bytes
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    if x.iter().any(|v| !v.is_finite()) {
        return Err(StoreError::Corrupt(
            "non-finite value in a stored vector".into(),
        ));
    }
    Ok(x)
}

#[cfg(test)]
mod tests;
