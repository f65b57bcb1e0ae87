//! The embedded store: the same semantics as the Redis store, in-process.
//! One mutex guards everything; every operation is short and never awaits
//! while holding it.
//!
//! With a state path configured (`NUDGE_STATE_PATH`), the whole store —
//! every policy's snapshot, the learned stream after it, reset epochs, the
//! pending events with their responses, partial sums and activation flags,
//! and the event index — is saved to that file ([`MemoryStore::save`], a
//! write to a temporary file, fsync, then rename) and loaded at start
//! ([`MemoryStore::load`]). What happened after the last save is lost on a
//! crash; a graceful stop saves last.

use super::users::{BudgetSlot, Reservation, SendReservation};
use super::{
    ActivateOutcome, Cursor, EventRecord, LearnedEntry, ModelStore, Recorded, RewardOutcome,
    RewardRequest, RewardRules, Snapshot, StoreError, StreamId, SweepResult, SyncBatch,
};
use crate::guardrails::UserHistory;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

/// The state file's header: what it is, and its layout version.
#[derive(Serialize, Deserialize)]
struct StateFile {
    format: String,
    version: u32,
    state: Inner,
}

const STATE_FORMAT: &str = "nudge-memory-store";
const STATE_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct SlotState {
    learned: bool,
    sum: f64,
    count: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Event {
    record: EventRecord,
    state: Vec<SlotState>,
    activated: bool,
    /// Ids of the rewards applied (a replayed id is not applied again).
    reward_ids: Vec<String>,
    /// Forgotten after this (unix ms).
    expires_ms: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PolicyData {
    /// Boxed: growing the map moves 32-byte entries, not whole events (a
    /// resize happens under the store's one lock).
    events: Sharded<Box<Event>>,
    due: BTreeSet<(i64, String)>,
    /// `(expires_ms, event)`, so that forgetting the expired events visits
    /// only them (a scan of every event under the lock stalled requests).
    /// May hold stale pairs (an activation moves the expiry; an id reused
    /// after retention): a pair forgets its event only if it has expired.
    /// Rebuilt from `events` on load.
    #[serde(skip)]
    expiring: BTreeSet<(i64, String)>,
    stream: VecDeque<LearnedEntry>,
    next_seq: u64,
    snapshot_blob: Option<Vec<u8>>,
    snapshot_cursor: StreamId,
    epoch: u64,
}

impl PolicyData {
    fn append(&mut self, event_id: &str, slot: usize, reward: f64, is_default: bool) {
        self.next_seq += 1;
        let id = StreamId {
            ms: 0,
            seq: self.next_seq,
        };
        let event = &self.events[event_id];
        let s = &event.record.slots[slot];
        let entry = LearnedEntry {
            shard: 0,
            id,
            event_id: event_id.to_string(),
            action: s.action.clone(),
            arm: s.arm,
            x: s.x.clone(),
            reward,
            is_default,
            aux: s.aux.clone(),
        };
        self.stream.push_back(entry);
    }

    /// Forgets events past their retention, as Redis key expiry would.
    fn live(&mut self, event_id: &str, now_ms: i64) -> Option<&mut Event> {
        if self
            .events
            .get(event_id)
            .is_some_and(|e| e.expires_ms <= now_ms)
        {
            self.events.remove(event_id);
        }
        self.events.get_mut(event_id).map(|e| &mut **e)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Inner {
    policies: HashMap<String, PolicyData>,
    index: Sharded<(String, i64)>,
    /// Per user: the kept sends and when the whole history expires.
    #[serde(default)]
    users: HashMap<String, (UserHistory, i64)>,
    /// Per budget window (`scope@window`): sends counted, expiry.
    #[serde(default)]
    budgets: HashMap<String, (u64, i64)>,
    /// Budgeted sends without a user, by `scope@window/event`: expiry.
    #[serde(default)]
    budget_events: HashMap<String, i64>,
    /// Until when an announced outbox replay holds sweeps (not saved).
    #[serde(skip)]
    replay_until: Option<std::time::Instant>,
    /// The published policy set: generation, manifest.
    #[serde(default)]
    policy_set: Option<(u64, Vec<u8>)>,
    /// Snapshots of replaced models, by `policy@version`.
    #[serde(default)]
    kept: HashMap<String, Vec<u8>>,
}

impl Inner {
    /// A policy's data, created empty on first use (no allocation once it
    /// exists: this runs under the lock on every call).
    fn policy(&mut self, policy: &str) -> &mut PolicyData {
        if !self.policies.contains_key(policy) {
            self.policies
                .insert(policy.to_string(), PolicyData::default());
        }
        self.policies.get_mut(policy).expect("inserted above")
    }
}

/// Maps that grow to millions of entries under the store's one lock: a
/// resize rehashes every key (a cache miss each), which stalled every
/// request for tens of milliseconds at a few hundred thousand events.
/// Split over [`SHARDS`] maps, a resize touches a small share of them.
/// (De)serialized as one map, so the state file's layout is unchanged.
#[derive(Debug, Clone)]
struct Sharded<V> {
    shards: Vec<HashMap<String, V>>,
}

/// Maps per [`Sharded`].
const SHARDS: usize = 64;

impl<V> Default for Sharded<V> {
    fn default() -> Self {
        Sharded {
            shards: (0..SHARDS).map(|_| HashMap::new()).collect(),
        }
    }
}

impl<V> Sharded<V> {
    fn shard(key: &str) -> usize {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        key.hash(&mut h);
        (h.finish() % SHARDS as u64) as usize
    }

    fn get(&self, key: &str) -> Option<&V> {
        self.shards[Self::shard(key)].get(key)
    }

    fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        self.shards[Self::shard(key)].get_mut(key)
    }

    fn insert(&mut self, key: String, value: V) -> Option<V> {
        self.shards[Self::shard(&key)].insert(key, value)
    }

    fn remove(&mut self, key: &str) -> Option<V> {
        self.shards[Self::shard(key)].remove(key)
    }

    fn iter(&self) -> impl Iterator<Item = (&String, &V)> {
        self.shards.iter().flatten()
    }
}

impl<V> std::ops::Index<&str> for Sharded<V> {
    type Output = V;

    /// Panics if the key is absent, as `HashMap`'s index does.
    fn index(&self, key: &str) -> &V {
        self.get(key).expect("a key of the map")
    }
}

impl<V: Serialize> Serialize for Sharded<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Sharded<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let all = HashMap::<String, V>::deserialize(d)?;
        let mut sharded = Sharded::default();
        for (k, v) in all {
            sharded.insert(k, v);
        }
        Ok(sharded)
    }
}

/// In-process store (the embedded default).
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store with the state saved at `path` by [`MemoryStore::save`], or
    /// an empty one if the file does not exist. A file that cannot be read
    /// is an error (starting empty would silently forget the models).
    pub fn load(path: &Path) -> Result<Self, StoreError> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::new()),
            Err(e) => {
                return Err(StoreError::Unavailable(format!(
                    "cannot read {}: {e}",
                    path.display()
                )));
            }
        };
        let file: StateFile = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::Corrupt(format!("state file {}: {e}", path.display())))?;
        if file.format != STATE_FORMAT || file.version != STATE_VERSION {
            return Err(StoreError::Corrupt(format!(
                "state file {}: format {:?} version {}, expected {STATE_FORMAT:?} version {STATE_VERSION}",
                path.display(),
                file.format,
                file.version
            )));
        }
        let mut state = file.state;
        for data in state.policies.values_mut() {
            data.expiring = data
                .events
                .iter()
                .map(|(id, e)| (e.expires_ms, id.clone()))
                .collect();
        }
        Ok(MemoryStore {
            inner: Arc::new(Mutex::new(state)),
        })
    }

    /// Saves the whole store to `path` atomically
    /// ([`crate::log::write_atomically`]). The lock is held only to copy the state; encoding and
    /// writing happen after, so requests are not held up by the disk.
    pub async fn save(&self, path: &Path) -> Result<(), StoreError> {
        let state = self.lock().clone();
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let file = StateFile {
                format: STATE_FORMAT.into(),
                version: STATE_VERSION,
                state,
            };
            crate::log::write_atomically(&path, |out| {
                serde_json::to_writer(out, &file).map_err(std::io::Error::other)
            })
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
        .map_err(|e| StoreError::Unavailable(format!("cannot save state: {e}")))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way later calls trip over: continue with the data.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One shard: every entry's cursor position is `cursor.get(0)`.
#[async_trait::async_trait]
impl ModelStore for MemoryStore {
    fn kind(&self) -> &'static str {
        "memory"
    }

    async fn record(
        &self,
        policy: &str,
        event: &EventRecord,
        rules: &RewardRules,
        now_ms: i64,
    ) -> Result<Recorded, StoreError> {
        // Everything allocated before the lock: it is held only to look up
        // and to link.
        let id = event.event_id.clone();
        let expires_ms = event.deadline_ms + rules.retention_ms;
        let fresh = Box::new(Event {
            state: event
                .slots
                .iter()
                .map(|_| SlotState {
                    learned: false,
                    sum: 0.0,
                    count: 0,
                })
                .collect(),
            record: event.clone(),
            activated: false,
            reward_ids: Vec::new(),
            expires_ms,
        });
        let (due, expiring) = ((event.deadline_ms, id.clone()), (expires_ms, id.clone()));
        let indexed = (policy.to_string(), expires_ms);
        let mut guard = self.lock();
        let inner = &mut *guard;
        if let Some((other, expires)) = inner.index.get(&id)
            && other != policy
            && *expires > now_ms
        {
            return Ok(Recorded::OtherPolicy(other.clone()));
        }
        let data = inner.policy(policy);
        if let Some(existing) = data.live(&id, now_ms) {
            return Ok(Recorded::Existing(existing.record.response.clone()));
        }
        data.due.insert(due);
        data.expiring.insert(expiring);
        data.events.insert(id.clone(), fresh);
        inner.index.insert(id, indexed);
        Ok(Recorded::New)
    }

    async fn event_policy(&self, event_id: &str) -> Result<Option<String>, StoreError> {
        let inner = self.lock();
        Ok(inner.index.get(event_id).map(|(p, _)| p.clone()))
    }

    async fn reward(&self, r: &RewardRequest<'_>) -> Result<RewardOutcome, StoreError> {
        let &RewardRequest {
            policy,
            event_id,
            action,
            reward,
            rules,
            now_ms,
            reward_id,
        } = r;
        let reward_id = reward_id.unwrap_or("");
        let mut inner = self.lock();
        let data = inner.policy(policy);
        let Some(event) = data.live(event_id, now_ms) else {
            return Ok(RewardOutcome::UnknownEvent);
        };
        if event.record.deferred && !event.activated {
            return Ok(RewardOutcome::NotActivated);
        }
        let slot = match action {
            None => 0,
            Some(a) => match event.record.slots.iter().position(|s| s.action == a) {
                Some(i) => i,
                None => return Ok(RewardOutcome::UnknownAction),
            },
        };
        if !reward_id.is_empty() && event.reward_ids.iter().any(|r| r == reward_id) {
            return Ok(RewardOutcome::Duplicate(
                event.record.slots[slot].action.clone(),
            ));
        }
        if now_ms > event.record.deadline_ms {
            return Ok(RewardOutcome::Expired);
        }
        if event.state[slot].learned {
            return Ok(RewardOutcome::AlreadyRewarded);
        }
        let action = event.record.slots[slot].action.clone();
        if !reward_id.is_empty() {
            event.reward_ids.push(reward_id.to_string());
        }
        let state = &mut event.state[slot];
        if rules.sum {
            state.sum += reward;
            state.count += 1;
            return Ok(RewardOutcome::Accumulated(action));
        }
        state.learned = true;
        data.append(event_id, slot, reward, false);
        Ok(RewardOutcome::Learned(action))
    }

    async fn activate(
        &self,
        policy: &str,
        event_id: &str,
        rules: &RewardRules,
        now_ms: i64,
    ) -> Result<ActivateOutcome, StoreError> {
        let mut inner = self.lock();
        let data = inner.policy(policy);
        let Some(event) = data.live(event_id, now_ms) else {
            return Ok(ActivateOutcome::UnknownEvent);
        };
        if !event.record.deferred {
            return Ok(ActivateOutcome::NotDeferred);
        }
        if event.activated {
            return Ok(ActivateOutcome::AlreadyActive);
        }
        if now_ms > event.record.deadline_ms {
            return Ok(ActivateOutcome::Expired);
        }
        let old = event.record.deadline_ms;
        let deadline = now_ms + rules.window_ms;
        event.activated = true;
        event.record.deadline_ms = deadline;
        event.expires_ms = deadline + rules.retention_ms;
        let expires = event.expires_ms;
        data.due.remove(&(old, event_id.to_string()));
        data.due.insert((deadline, event_id.to_string()));
        data.expiring.insert((expires, event_id.to_string()));
        if let Some(entry) = inner.index.get_mut(event_id) {
            entry.1 = expires;
        }
        Ok(ActivateOutcome::Activated)
    }

    async fn sweep(
        &self,
        policy: &str,
        rules: &RewardRules,
        now_ms: i64,
        limit: usize,
    ) -> Result<SweepResult, StoreError> {
        let mut inner = self.lock();
        let mut result = SweepResult::default();
        let mut forgotten = Vec::new();
        {
            let data = inner.policy(policy);
            let due: Vec<(i64, String)> = data
                .due
                .iter()
                .take_while(|(deadline, _)| *deadline <= now_ms)
                .take(limit)
                .cloned()
                .collect();
            for key in due {
                data.due.remove(&key);
                let event_id = key.1;
                let Some(event) = data.live(&event_id, now_ms) else {
                    continue;
                };
                if event.record.deferred && !event.activated {
                    result.dropped.push(event_id);
                    continue;
                }
                let mut to_learn = Vec::new();
                for (slot, state) in event.state.iter_mut().enumerate() {
                    if state.learned {
                        continue;
                    }
                    state.learned = true;
                    let (reward, is_default) = if rules.sum && state.count > 0 {
                        (state.sum, false)
                    } else {
                        (rules.default_reward, true)
                    };
                    to_learn.push((slot, reward, is_default));
                }
                for (slot, reward, is_default) in to_learn {
                    let action = data.events[event_id.as_str()].record.slots[slot]
                        .action
                        .clone();
                    data.append(&event_id, slot, reward, is_default);
                    result
                        .learned
                        .push((event_id.clone(), action, reward, is_default));
                }
            }
            // Expire closed events past retention, as Redis would.
            while let Some(first) = data.expiring.first()
                && first.0 <= now_ms
            {
                let (_, id) = data.expiring.pop_first().expect("a first pair");
                if data.events.get(&id).is_some_and(|e| e.expires_ms <= now_ms) {
                    data.events.remove(&id);
                }
                forgotten.push(id);
            }
        }
        for id in forgotten {
            if inner.index.get(&id).is_some_and(|(_, e)| *e <= now_ms) {
                inner.index.remove(&id);
            }
        }
        Ok(result)
    }

    async fn sync(
        &self,
        policy: &str,
        epoch: Option<u64>,
        cursor: &Cursor,
        limit: usize,
    ) -> Result<SyncBatch, StoreError> {
        let cursor = cursor.get(0);
        let mut inner = self.lock();
        let data = inner.policy(policy);
        let reload = epoch != Some(data.epoch) || data.snapshot_cursor > cursor;
        let from = if reload { data.snapshot_cursor } else { cursor };
        // The stream is in id order: find the start, do not scan to it
        // (this runs every sync_ms under the lock).
        let start = data.stream.partition_point(|e| e.id <= from);
        let entries = data.stream.range(start..).take(limit).cloned().collect();
        Ok(SyncBatch {
            epoch: data.epoch,
            snapshot: reload.then(|| {
                let mut cursor = Cursor::default();
                cursor.advance(0, data.snapshot_cursor);
                Snapshot {
                    blob: data.snapshot_blob.clone(),
                    cursor,
                }
            }),
            entries,
        })
    }

    async fn save_snapshot(
        &self,
        policy: &str,
        epoch: u64,
        blob: &[u8],
        cursor: &Cursor,
    ) -> Result<bool, StoreError> {
        let cursor = cursor.get(0);
        let mut inner = self.lock();
        let data = inner.policy(policy);
        if data.epoch != epoch || cursor <= data.snapshot_cursor {
            return Ok(false);
        }
        data.snapshot_blob = Some(blob.to_vec());
        data.snapshot_cursor = cursor;
        let before = data.stream.partition_point(|e| e.id < cursor);
        data.stream.drain(..before);
        Ok(true)
    }

    async fn reset(&self, policy: &str, blob: &[u8]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let data = inner.policy(policy);
        let last = data.stream.back().map_or(data.snapshot_cursor, |e| e.id);
        data.epoch += 1;
        data.snapshot_blob = Some(blob.to_vec());
        data.snapshot_cursor = last;
        data.stream.retain(|e| e.id >= last);
        Ok(())
    }

    async fn pending(&self, policy: &str) -> Result<u64, StoreError> {
        let inner = self.lock();
        Ok(inner.policies.get(policy).map_or(0, |d| d.due.len() as u64))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn announce_replay(&self, ttl_ms: u64) -> Result<(), StoreError> {
        let until = std::time::Instant::now() + std::time::Duration::from_millis(ttl_ms);
        let mut inner = self.lock();
        inner.replay_until = inner.replay_until.max(Some(until));
        Ok(())
    }

    async fn replaying(&self) -> Result<bool, StoreError> {
        let inner = self.lock();
        Ok(inner
            .replay_until
            .is_some_and(|t| t > std::time::Instant::now()))
    }

    async fn publish_policies(&self, manifest: &[u8]) -> Result<u64, StoreError> {
        let mut inner = self.lock();
        let generation = inner.policy_set.as_ref().map_or(0, |(g, _)| *g) + 1;
        inner.policy_set = Some((generation, manifest.to_vec()));
        Ok(generation)
    }

    async fn policy_set(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        Ok(self.lock().policy_set.clone())
    }

    async fn keep_snapshot(
        &self,
        policy: &str,
        version: u32,
        blob: &[u8],
    ) -> Result<(), StoreError> {
        self.lock()
            .kept
            .insert(format!("{policy}@{version}"), blob.to_vec());
        Ok(())
    }

    async fn kept_snapshot(
        &self,
        policy: &str,
        version: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .lock()
            .kept
            .get(&format!("{policy}@{version}"))
            .cloned())
    }

    async fn event_response(
        &self,
        policy: &str,
        event_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .policies
            .get(policy)
            .and_then(|d| d.events.get(event_id))
            .map(|e| e.record.response.clone()))
    }

    // Reads do not expire anything: every rule counts only the sends inside
    // its own window, and reservations forget what is past the retention
    // (by the decision's clock, not the system's).
    async fn user_history(&self, user: &str) -> Result<UserHistory, StoreError> {
        let inner = self.lock();
        Ok(inner
            .users
            .get(user)
            .map(|(h, _)| h.clone())
            .unwrap_or_default())
    }

    async fn budget_used(&self, slots: &[BudgetSlot]) -> Result<Vec<u64>, StoreError> {
        // A window's counter is keyed by its index: an old one is never read.
        let inner = self.lock();
        Ok(slots
            .iter()
            .map(|b| inner.budgets.get(&budget_key(b)).map_or(0, |(n, _)| *n))
            .collect())
    }

    async fn reserve_send(&self, r: &SendReservation<'_>) -> Result<Reservation, StoreError> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let now = r.now_ms;
        // Everything below happens under one lock: check all, then apply.
        let mut history = match r.user {
            Some(user) => {
                let mut h = inner
                    .users
                    .get(user)
                    .map(|(h, _)| h.clone())
                    .unwrap_or_default();
                if h.sends.iter().any(|s| s.event_id == r.send.event_id) {
                    return Ok(Reservation::Duplicate);
                }
                if h.version != r.version {
                    return Ok(Reservation::Conflict);
                }
                h.forget_before(now - r.retention_ms);
                Some(h)
            }
            None => {
                let first = r.budgets.first().map(|b| event_key(b, &r.send.event_id));
                if let Some(key) = first
                    && inner.budget_events.get(&key).is_some_and(|e| *e > now)
                {
                    return Ok(Reservation::Duplicate);
                }
                None
            }
        };
        for b in r.budgets {
            if let Some((n, _)) = inner.budgets.get(&budget_key(b))
                && *n >= b.max
            {
                return Ok(Reservation::BudgetSpent);
            }
        }
        for b in r.budgets {
            let entry = inner
                .budgets
                .entry(budget_key(b))
                .or_insert((0, now + b.ttl_ms));
            entry.0 += 1;
            if r.user.is_none() {
                inner
                    .budget_events
                    .insert(event_key(b, &r.send.event_id), now + b.ttl_ms);
            }
        }
        if let (Some(user), Some(h)) = (r.user, history.as_mut()) {
            h.push(r.send.clone());
            h.version += 1;
            let expires = inner
                .users
                .get(user)
                .map_or(0, |(_, e)| *e)
                .max(now + r.retention_ms);
            inner.users.insert(user.to_string(), (h.clone(), expires));
        }
        // Forget what expired now and then, so memory stays bounded by the
        // live users and windows.
        if inner.users.len().is_power_of_two() && inner.users.len() >= 1024 {
            inner.users.retain(|_, (_, e)| *e > now);
        }
        if inner.budget_events.len().is_power_of_two() && inner.budget_events.len() >= 1024 {
            inner.budget_events.retain(|_, e| *e > now);
            inner.budgets.retain(|_, (_, e)| *e > now);
        }
        Ok(Reservation::Reserved)
    }

    async fn note_outcome(
        &self,
        user: &str,
        event_id: &str,
        outcome: f64,
    ) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        Ok(inner
            .users
            .get_mut(user)
            .is_some_and(|(h, _)| h.set_outcome(event_id, outcome)))
    }
}

fn budget_key(b: &BudgetSlot) -> String {
    format!("{}@{}", b.scope, b.window)
}

fn event_key(b: &BudgetSlot, event_id: &str) -> String {
    format!("{}@{}/{event_id}", b.scope, b.window)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Slot;

    const T0: i64 = 1_800_000_000_000;

    fn rules() -> RewardRules {
        RewardRules {
            sum: false,
            default_reward: 0.0,
            window_ms: 1_000,
            retention_ms: 10_000,
        }
    }

    fn event(id: &str, deadline_ms: i64, deferred: bool) -> EventRecord {
        EventRecord {
            event_id: id.into(),
            slots: vec![Slot {
                action: "a".into(),
                arm: 0,
                x: vec![1.0],
                aux: vec![],
            }],
            deadline_ms,
            deferred,
            response: id.as_bytes().to_vec(),
        }
    }

    async fn known(s: &MemoryStore, id: &str) -> bool {
        s.event_response("p", id).await.unwrap().is_some()
            && s.event_policy(id).await.unwrap().is_some()
    }

    /// Events are forgotten by the expiry queue exactly when their
    /// retention ends: an activation moves it, a stale pair forgets
    /// nothing, and a state file restores the queue.
    #[tokio::test]
    async fn events_are_forgotten_when_their_retention_ends_and_not_before() {
        let s = MemoryStore::new();
        let r = rules();
        for (id, deferred) in [("plain", false), ("deferred", true)] {
            s.record("p", &event(id, T0 + 1_000, deferred), &r, T0)
                .await
                .unwrap();
        }
        // Activated at T0 + 500: its window ends at T0 + 1_500, its
        // retention at T0 + 11_500 (its first pair says T0 + 11_000).
        s.activate("p", "deferred", &r, T0 + 500).await.unwrap();
        s.sweep("p", &r, T0 + 10_999, 100).await.unwrap();
        assert!(known(&s, "plain").await && known(&s, "deferred").await);
        s.sweep("p", &r, T0 + 11_000, 100).await.unwrap();
        assert!(!known(&s, "plain").await, "past its retention");
        assert!(
            known(&s, "deferred").await,
            "activation moved its retention"
        );

        // A saved and loaded store keeps forgetting on time.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        s.save(&path).await.unwrap();
        let loaded = MemoryStore::load(&path).unwrap();
        loaded.sweep("p", &r, T0 + 11_499, 100).await.unwrap();
        assert!(known(&loaded, "deferred").await);
        loaded.sweep("p", &r, T0 + 11_500, 100).await.unwrap();
        assert!(!known(&loaded, "deferred").await);

        // An id decided again after its retention, before any sweep, is a
        // new event: its old pair (T0 + 31_000) must not forget it.
        loaded
            .record("p", &event("again", T0 + 21_000, false), &r, T0 + 20_000)
            .await
            .unwrap();
        let reused = event("again", T0 + 33_000, false);
        assert_eq!(
            loaded.record("p", &reused, &r, T0 + 32_000).await.unwrap(),
            Recorded::New
        );
        loaded.sweep("p", &r, T0 + 32_000, 100).await.unwrap();
        assert!(known(&loaded, "again").await);
    }
}
