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
//! [`ModelStore`] states the contract; two implementations share these
//! semantics exactly: [`MemoryStore`] (embedded, one process) and
//! [`RedisStore`] (production, on one Redis node or a Redis Cluster; Lua
//! scripts make each operation atomic within one hash slot, and a policy's
//! per-event keys are spread over shards with their own hash tags).

pub mod compact;
mod memory;
pub mod outbox;
mod redis;
pub mod users;

pub use memory::MemoryStore;
pub use redis::{RedisConfig, RedisStore};
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
    /// Numbers the learned entry carries back unchanged, opaque to the
    /// store: for slot 0 of a policy with shadow challengers, the logged
    /// propensity then each challenger's probability of this action
    /// (see [`crate::runtime`]). Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aux: Vec<f64>,
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
    /// The decision response in the service's stored form (opaque to the
    /// store), returned to a retried decide.
    #[serde(deserialize_with = "response_bytes")]
    pub response: Vec<u8>,
}

/// Reads a stored response as bytes, also from an outbox line written
/// before responses were bytes (a JSON string: its UTF-8 text).
fn response_bytes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Either {
        Text(String),
        Bytes(Vec<u8>),
    }
    Ok(match serde::Deserialize::deserialize(d)? {
        Either::Text(s) => s.into_bytes(),
        Either::Bytes(b) => b,
    })
}

/// Whether a decision was new or a retry.
#[derive(Debug, Clone, PartialEq)]
pub enum Recorded {
    /// Stored now: log it.
    New,
    /// The event id was decided before: answer with this stored response
    /// and log nothing.
    Existing(Vec<u8>),
    /// The event id was decided by this other policy (still remembered):
    /// nothing was stored.
    OtherPolicy(String),
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
    /// The shard whose stream holds it.
    pub shard: u16,
    /// Stream position (within its shard).
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
    /// The slot's [`Slot::aux`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aux: Vec<f64>,
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
    /// The stream positions the snapshot includes.
    pub cursor: Cursor,
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

/// The model store: what every replica shares. One implementation per
/// backend ([`MemoryStore`], [`RedisStore`] on one node or a Redis Cluster);
/// a service holds it as a [`Store`].
///
/// # Contract (every implementation)
/// - **Atomicity.** Each call is atomic with respect to every other call
///   from any replica: no reader sees half of a record, reward, activation
///   or sweep.
/// - **Exactly once.** Each slot of a recorded event is appended to the
///   policy's learned stream exactly once: by the first reward
///   ([`RewardOutcome::Learned`]) or, when its window closes, by a sweep
///   (its sum, or the default reward). A reward with a `reward_id` already
///   applied to the event changes nothing and answers
///   [`RewardOutcome::Duplicate`]; a retried [`ModelStore::record`] returns
///   the first response ([`Recorded::Existing`]).
/// - **Ordering.** [`ModelStore::sync`] hands every replica the same
///   entries in the same order (a prefix of one total order over all
///   shards of the policy, see [`Cursor`]), from the same snapshot, so
///   replicas that folded to the same cursor hold bit-identical models.
/// - **Failure.** An `Err` means the store may or may not have applied the
///   call (a timeout after the server acted). Every mutating call is
///   idempotent when retried with the same arguments (event id, reward
///   id), which is how the outbox replays them; a caller must never assume
///   an error means "nothing happened". [`StoreError::is_transient`] tells
///   an outage from data the store will never accept.
/// - **Time.** Every deadline is judged by the caller's `now_ms`, never by
///   the store's clock (Redis key expiry only forgets events after their
///   retention).
#[async_trait::async_trait]
pub trait ModelStore: Send + Sync + 'static {
    /// A short name for health reports (`memory`, `redis`, `redis-cluster`).
    fn kind(&self) -> &'static str;

    /// Stores a new decision, or returns the earlier response for a retried
    /// event id ([`Recorded::OtherPolicy`] if another policy decided it:
    /// rewards name only the event, so an id is unique across policies).
    async fn record(
        &self,
        policy: &str,
        event: &EventRecord,
        rules: &RewardRules,
        now_ms: i64,
    ) -> Result<Recorded, StoreError>;

    /// The policy that decided `event_id`, if it is still remembered.
    async fn event_policy(&self, event_id: &str) -> Result<Option<String>, StoreError>;

    /// Applies a reward (see [`RewardRequest`]).
    async fn reward(&self, r: &RewardRequest<'_>) -> Result<RewardOutcome, StoreError>;

    /// Activates a deferred decision: its reward window starts now.
    async fn activate(
        &self,
        policy: &str,
        event_id: &str,
        rules: &RewardRules,
        now_ms: i64,
    ) -> Result<ActivateOutcome, StoreError>;

    /// Closes windows due by `now_ms` (at most about `limit` events per
    /// call): learns defaults (or sums), drops unactivated deferred events.
    /// A window ending at `d` is closed by a sweep at any `now_ms >= d`
    /// rounded up to the store's granularity (the Redis store groups
    /// deadlines into 100 ms buckets); rewards are judged by the exact deadline.
    async fn sweep(
        &self,
        policy: &str,
        rules: &RewardRules,
        now_ms: i64,
        limit: usize,
    ) -> Result<SweepResult, StoreError>;

    /// What a replica at `(epoch, cursor)` must fold next (at most about
    /// `limit` entries), in the order every replica folds them.
    async fn sync(
        &self,
        policy: &str,
        epoch: Option<u64>,
        cursor: &Cursor,
        limit: usize,
    ) -> Result<SyncBatch, StoreError>;

    /// Saves a snapshot that includes the stream up to `cursor`, if it is
    /// newer than the stored one (no shard behind, one ahead) and no reset
    /// happened since `epoch`; trims the stream before it. Returns whether
    /// it was saved.
    async fn save_snapshot(
        &self,
        policy: &str,
        epoch: u64,
        blob: &[u8],
        cursor: &Cursor,
    ) -> Result<bool, StoreError>;

    /// Resets the model to `blob` (a fresh state): bumps the epoch so every
    /// replica reloads, and drops the stream learned so far.
    async fn reset(&self, policy: &str, blob: &[u8]) -> Result<(), StoreError>;

    /// Events whose window is still open (or awaiting activation).
    async fn pending(&self, policy: &str) -> Result<u64, StoreError>;

    /// The stored decision response of a pending event (what a retried
    /// decide gets), if the event is still remembered.
    async fn event_response(
        &self,
        policy: &str,
        event_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError>;

    /// A user's kept sends and their version (empty, version 0, for a user
    /// never sent to).
    async fn user_history(&self, user: &str) -> Result<UserHistory, StoreError>;

    /// Sends counted so far in each budget window.
    async fn budget_used(&self, slots: &[BudgetSlot]) -> Result<Vec<u64>, StoreError>;

    /// Adds a send to a user's history and counts it in its budgets,
    /// atomically against concurrent reservations (see [`users`]).
    async fn reserve_send(&self, r: &SendReservation<'_>) -> Result<Reservation, StoreError>;

    /// Records the reward a user's send earned (for outcome features).
    /// Returns whether the send was still kept.
    async fn note_outcome(
        &self,
        user: &str,
        event_id: &str,
        outcome: f64,
    ) -> Result<bool, StoreError>;

    /// Whether the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Announces, to every replica, that one of them is replaying its
    /// outbox, for the next `ttl_ms` (by the store's clock: this is a
    /// liveness hint, not a deadline). A replayer refreshes it before each
    /// batch.
    async fn announce_replay(&self, ttl_ms: u64) -> Result<(), StoreError>;

    /// Whether an announced replay is still live. While it is, no replica
    /// closes reward windows: a queued reward must reach its event before
    /// a sweep can give the event its default.
    async fn replaying(&self) -> Result<bool, StoreError>;

    /// Publishes the deployment's policy set (an opaque manifest, see
    /// [`crate::service::reload`]) under a new generation, atomically, and
    /// returns that generation (1 for the first). Every replica polls
    /// [`ModelStore::policy_set`] and switches when it sees a newer one.
    async fn publish_policies(&self, manifest: &[u8]) -> Result<u64, StoreError>;

    /// The last published policy set: its generation and manifest (`None`
    /// before the first).
    async fn policy_set(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError>;

    /// Keeps the snapshot of a model a reload replaced (its layout
    /// changed), under the policy and the version it was learned by. Kept
    /// until overwritten by the same (policy, version), never trimmed.
    async fn keep_snapshot(
        &self,
        policy: &str,
        version: u32,
        blob: &[u8],
    ) -> Result<(), StoreError>;

    /// A snapshot kept by [`ModelStore::keep_snapshot`].
    async fn kept_snapshot(
        &self,
        policy: &str,
        version: u32,
    ) -> Result<Option<Vec<u8>>, StoreError>;
}

/// A reward for one action of one event.
#[derive(Debug, Clone, Copy)]
pub struct RewardRequest<'a> {
    /// The policy that decided the event.
    pub policy: &'a str,
    /// The event.
    pub event_id: &'a str,
    /// The rewarded slate action (`None`: the chosen one).
    pub action: Option<&'a str>,
    /// The reward value.
    pub reward: f64,
    /// The policy's reward rules.
    pub rules: &'a RewardRules,
    /// The caller's clock (unix ms): judged against the event's deadline.
    pub now_ms: i64,
    /// An idempotency key: a reward id already applied to this event is
    /// not applied again, so a reward retried after a timeout (or replayed
    /// from the outbox after a crash) is learned once.
    pub reward_id: Option<&'a str>,
}

/// The store of a service (cheap to clone; every clone is the same store).
#[derive(Clone)]
pub struct Store(std::sync::Arc<dyn ModelStore>);

impl Store {
    /// Wraps an implementation.
    pub fn new(store: impl ModelStore) -> Self {
        Store(std::sync::Arc::new(store))
    }
}

impl std::ops::Deref for Store {
    type Target = dyn ModelStore;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

/// Where a replica stands in a policy's learned stream: one position per
/// shard (the Redis store spreads a policy over shards; the memory store
/// has one). Text form: `ms-seq,ms-seq,…`.
///
/// The order every replica folds entries in is fixed by the entries, not by
/// when a replica reads them: entries are ordered by `(ms, shard, seq)`,
/// and a sync hands out only a prefix of that order that can no longer
/// grow (see [`RedisStore`]), so two replicas at the same cursor folded the
/// same entries in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cursor(Vec<StreamId>);

impl Cursor {
    /// The position in `shard` (`0-0` before its first entry).
    pub fn get(&self, shard: usize) -> StreamId {
        self.0.get(shard).copied().unwrap_or_default()
    }

    /// Moves `shard` to `id`.
    pub fn advance(&mut self, shard: usize, id: StreamId) {
        if self.0.len() <= shard {
            self.0.resize(shard + 1, StreamId::default());
        }
        self.0[shard] = id;
    }

    /// Whether this cursor is at or past `other` in every shard.
    pub fn covers(&self, other: &Cursor) -> bool {
        let n = self.0.len().max(other.0.len());
        (0..n).all(|s| self.get(s) >= other.get(s))
    }

    /// The positions, shard by shard.
    pub fn shards(&self) -> &[StreamId] {
        &self.0
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return write!(f, "0-0");
        }
        for (i, id) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ",")?;
            }
            write!(f, "{id}")?;
        }
        Ok(())
    }
}

impl FromStr for Cursor {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        let ids = s
            .split(',')
            .map(str::parse)
            .collect::<Result<Vec<StreamId>, _>>()?;
        Ok(Cursor(ids))
    }
}

#[cfg(test)]
mod tests;
