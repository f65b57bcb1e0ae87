//! The Redis store, on one node or a Redis Cluster. Each operation that
//! must be atomic is one Lua script within one hash slot. Key layout, with
//! prefix `P`, `S` shards (`NUDGE_REDIS_SHARDS`) and an event's shard
//! `n = xxh3(event id) mod S`:
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `P:{s<n>}:e:<event>` | string | a decided event, immutable: policy, deadline, deferred flag, stored response, slots (see [`blob`]) |
//! | `P:{s<n>}:st:<event>` | hash | what happened to it since: activation, moved deadline, per-slot learned flag, sum and count, reward ids |
//! | `P:{s<n>}:<pid>:dq:<b>` | list | event ids whose window ends in the 100 ms bucket `b` (rounded up) |
//! | `P:{s<n>}:<pid>:dqs` | zset | the buckets that have such a list |
//! | `P:{s<n>}:<pid>:n` | string | the policy's pending events in the shard |
//! | `P:{s<n>}:<pid>:ls` | stream | the shard's entries to learn, in order |
//! | `P:{s<n>}:<pid>:lt` | string | the shard's trim point: entries before it may be gone |
//! | `P:{<pid>}:snap` | hash | `blob`, `cursor` (one position per shard), `epoch` |
//! | `P:{u:<user>}:h` | hash | a user's sends (guardrails; see [`super::users`]) |
//! | `P:{b:<scope>}:<window>` | string | a budget window's send count |
//!
//! **Spread.** Shards are hash tags of their own, so one hot policy's
//! events, rewards, sweeps and learned entries use `S` slots, i.e. every
//! node of a cluster with at most `S` masters; users spread by user. An
//! event's key does not name its policy (the blob does): a reward, which
//! names only the event, finds it in one read, and no per-event index key
//! is needed. A pending event is one string key of about 220 bytes plus
//! one list entry (see `bench/redis_memory.sh` for the measurement).
//!
//! **Order.** Every replica folds a policy's shards in one total order,
//! `(ms, shard, seq)` of the entries' stream ids. A sync reads each shard
//! after the replica's cursor together with the shard node's clock, and
//! hands out only the entries below the point no shard can still add to:
//! a shard's later entries get ids at or after its clock (Redis stream ids
//! never go back), and a shard read that hit its count limit bounds the
//! order at its last entry. So every replica folds the same prefix in the
//! same order, and replicas at the same cursor hold bit-identical models.
//!
//! **Durability.** With `NUDGE_REDIS_WAIT_REPLICAS = r > 0`, every write
//! is acknowledged only once `r` replicas of its node have it (`WAIT`);
//! one that is not is reported as a store failure, so the outbox replays
//! it (every write is idempotent). Syncs then fold only entries older than
//! twice the wait timeout, which every acknowledged write has reached a
//! replica by, so a failover cannot take back an entry a replica learned.
//!
//! Deciding costs one script (`SET NX GET`, the due list, the pending
//! count). Needs Redis 7.0 or newer.
//!
//! Policy and event ids are validated to `[A-Za-z0-9_.:-]` before they reach
//! a key, so no input can break out of its key (no braces, no spaces).
//! Nothing is built as a command string: keys and values travel as
//! separate protocol arguments.

mod blob;
mod conn;

use super::users::{BudgetSlot, Reservation, SendReservation};
use super::{
    ActivateOutcome, Cursor, EventRecord, LearnedEntry, ModelStore, Recorded, RewardOutcome,
    RewardRequest, RewardRules, Snapshot, StoreError, StreamId, SweepResult, SyncBatch,
};
use crate::guardrails::{MAX_USER_SENDS, SendRecord, UserHistory};
use blob::{decode_head, encode_event, parse_entry_or_skip};
use conn::{Client, Conn};
use redis::{Script, Value};
use std::sync::Arc;
use std::time::Duration;

struct Scripts {
    record: Script,
    reward: Script,
    activate: Script,
    sweep: Script,
    shard_read: Script,
    trim: Script,
    snapshot: Script,
    reset: Script,
    user_reserve: Script,
    budget: Script,
    outcome: Script,
}

fn script(body: &str) -> Script {
    Script::new(&format!("{}\n{body}", include_str!("../lua/common.lua")))
}

/// How to reach Redis and lay the keys out.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// One URL (a single node), or a cluster's seed nodes.
    pub urls: Vec<String>,
    /// Talk to a Redis Cluster (`NUDGE_REDIS_CLUSTER`).
    pub cluster: bool,
    /// Prefix of every key.
    pub prefix: String,
    /// Bound on every call.
    pub timeout: Duration,
    /// Shards per policy (`NUDGE_REDIS_SHARDS`, 1..=1024). Fixed for a
    /// deployment's life: it decides which key holds an event.
    pub shards: u16,
    /// Replicas that must acknowledge each write (`WAIT`; 0 = none).
    pub wait_replicas: u32,
    /// How long a write waits for them.
    pub wait_timeout: Duration,
}

impl RedisConfig {
    /// One node, one shard, no replication wait.
    pub fn single(url: &str, prefix: &str, timeout: Duration) -> Self {
        RedisConfig {
            urls: vec![url.to_string()],
            cluster: false,
            prefix: prefix.to_string(),
            timeout,
            shards: 1,
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(100),
        }
    }
}

/// Redis-backed store (production).
///
/// Each thread gets its own connection, created on first use in that
/// thread's runtime: an HTTP worker's store calls then never hop to
/// another thread (with one shared connection, every call woke the thread
/// running its driver task, and context switches cost more than Redis).
#[derive(Clone)]
pub struct RedisStore {
    client: Client,
    /// Tells this store's connections apart in the per-thread cache.
    id: u64,
    prefix: Arc<str>,
    timeout: Duration,
    shards: u16,
    wait_replicas: u32,
    wait_timeout: Duration,
    scripts: Arc<Scripts>,
}

thread_local! {
    static CONNECTIONS: std::cell::RefCell<Vec<(u64, Conn)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

static NEXT_STORE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One shard's read for a sync.
struct ShardRead {
    /// The shard node's clock (unix ms) when it was read.
    now_ms: u64,
    /// Entries before this may have been trimmed.
    trim: StreamId,
    entries: Vec<LearnedEntry>,
}

impl RedisStore {
    /// A single-node store on `url` with keys under `prefix` (one shard).
    /// Connects lazily (and reconnects by itself), so a Redis that is down
    /// at start only degrades the service; every call is bounded by
    /// `timeout`.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        Self::with_config(&RedisConfig::single(url, prefix, timeout))
    }

    /// A store as configured.
    pub fn with_config(config: &RedisConfig) -> Result<Self, StoreError> {
        if !(1..=1024).contains(&config.shards) {
            return Err(StoreError::Unavailable(format!(
                "shards must be 1..=1024, got {}",
                config.shards
            )));
        }
        Ok(RedisStore {
            client: Client::new(&config.urls, config.cluster, config.timeout)?,
            id: NEXT_STORE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            prefix: config.prefix.as_str().into(),
            timeout: config.timeout,
            shards: config.shards,
            wait_replicas: config.wait_replicas,
            wait_timeout: config.wait_timeout,
            scripts: Arc::new(Scripts {
                record: script(include_str!("../lua/record.lua")),
                reward: script(include_str!("../lua/reward.lua")),
                activate: script(include_str!("../lua/activate.lua")),
                sweep: script(include_str!("../lua/sweep.lua")),
                shard_read: script(include_str!("../lua/shard_read.lua")),
                trim: script(include_str!("../lua/trim.lua")),
                snapshot: script(include_str!("../lua/snapshot.lua")),
                reset: script(include_str!("../lua/reset.lua")),
                user_reserve: Script::new(include_str!("../lua/user_reserve.lua")),
                budget: Script::new(include_str!("../lua/budget.lua")),
                outcome: Script::new(include_str!("../lua/outcome.lua")),
            }),
        })
    }

    /// This thread's connection (reconnecting by itself).
    async fn conn(&self) -> Result<Conn, StoreError> {
        let cached = CONNECTIONS.with(|cache| {
            cache
                .borrow()
                .iter()
                .find(|(id, _)| *id == self.id)
                .map(|(_, c)| c.clone())
        });
        if let Some(c) = cached {
            return Ok(c);
        }
        let c = match tokio::time::timeout(self.timeout, self.client.connect()).await {
            Ok(c) => c?,
            Err(_) => return Err(StoreError::Timeout),
        };
        Ok(CONNECTIONS.with(|cache| {
            let mut cache = cache.borrow_mut();
            match cache.iter().find(|(id, _)| *id == self.id) {
                // Another task of this thread connected meanwhile.
                Some((_, existing)) => existing.clone(),
                None => {
                    cache.push((self.id, c.clone()));
                    c
                }
            }
        }))
    }

    /// Drops this thread's connection to a cluster after a failure, so the
    /// next call connects afresh (reading the slot map again): after a
    /// failover, a cluster connection was seen timing out for a minute
    /// against a healthy cluster. A single node's connection manager
    /// reconnects by itself.
    fn forget_connection(&self) {
        if self.client.is_cluster() {
            CONNECTIONS.with(|cache| cache.borrow_mut().retain(|(id, _)| *id != self.id));
        }
    }

    /// Passes `result` on; a transient failure forgets the connection.
    fn checked<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        if result.as_ref().is_err_and(StoreError::is_transient) {
            self.forget_connection();
        }
        result
    }

    fn shard_of(&self, event_id: &str) -> u16 {
        (xxhash_rust::xxh3::xxh3_64(event_id.as_bytes()) % u64::from(self.shards)) as u16
    }

    fn tag(&self, shard: u16) -> String {
        format!("{}:{{s{shard}}}", self.prefix)
    }

    fn event_key(&self, event_id: &str) -> String {
        format!("{}:e:{event_id}", self.tag(self.shard_of(event_id)))
    }

    fn state_key(&self, event_id: &str) -> String {
        format!("{}:st:{event_id}", self.tag(self.shard_of(event_id)))
    }

    /// A policy's key in a shard.
    fn shard_key(&self, shard: u16, policy: &str, what: &str) -> String {
        format!("{}:{policy}:{what}", self.tag(shard))
    }

    /// Set while some replica replays its outbox (one slot of its own).
    fn replay_key(&self) -> String {
        format!("{}:{{replay}}", self.prefix)
    }

    /// The published policy set: one hash (generation, manifest) for the
    /// whole deployment, so publishing is atomic in one slot.
    fn policy_set_key(&self) -> String {
        format!("{}:{{policyset}}", self.prefix)
    }

    fn kept_key(&self, policy: &str, version: u32) -> String {
        format!("{}:{{{policy}}}:kept:{version}", self.prefix)
    }

    fn snap_key(&self, policy: &str) -> String {
        format!("{}:{{{policy}}}:snap", self.prefix)
    }

    /// A user's send history: its own hash tag, so users spread over a
    /// cluster's slots.
    fn user_key(&self, user: &str) -> String {
        format!("{}:{{u:{user}}}:h", self.prefix)
    }

    fn budget_key(&self, b: &BudgetSlot) -> String {
        format!("{}:{{b:{}}}:{}", self.prefix, b.scope, b.window)
    }

    fn budget_event_key(&self, b: &BudgetSlot, event_id: &str) -> String {
        format!(
            "{}:{{b:{}}}:{}:ev:{event_id}",
            self.prefix, b.scope, b.window
        )
    }

    /// Bounds a call by the store timeout and maps its errors.
    async fn timed<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        self.checked(match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            Err(_) => Err(StoreError::Timeout),
        })
    }

    /// Runs a script; with `wait_replicas`, also waits for its write to
    /// reach them (`key`: one of its keys, naming the node).
    async fn run<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
        write: Option<&str>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        let mut result = None;
        // redis-rs loads a script the server does not know and retries once;
        // a `SCRIPT FLUSH` (or a failover to a fresh replica) between that
        // load and the retry still answers NOSCRIPT: load it again. Scripts
        // are atomic, so a NOSCRIPT answer means nothing ran.
        for _ in 0..3 {
            match tokio::time::timeout(self.timeout, inv.invoke_async::<T>(&mut conn)).await {
                Ok(Err(e))
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    continue;
                }
                Ok(Ok(v)) => {
                    result = Some(v);
                    break;
                }
                Ok(Err(e)) => return self.checked(Err(StoreError::Unavailable(e.to_string()))),
                Err(_) => return self.checked(Err(StoreError::Timeout)),
            }
        }
        let Some(v) = result else {
            return Err(StoreError::Unavailable(
                "script not loaded after three attempts".into(),
            ));
        };
        if let Some(key) = write {
            self.acknowledged(&mut conn, key).await?;
        }
        Ok(v)
    }

    /// With `wait_replicas`, waits for this connection's writes to the node
    /// of `key` to reach them.
    async fn acknowledged(&self, conn: &mut Conn, key: &str) -> Result<(), StoreError> {
        if self.wait_replicas == 0 {
            return Ok(());
        }
        self.timed(conn.wait_replicas(key, self.wait_replicas, self.wait_timeout))
            .await
    }

    async fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        self.timed(cmd.query_async(&mut conn)).await
    }

    async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
        write: Option<&str>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        let v = self.timed(pipe.query_async(&mut conn)).await?;
        if let Some(key) = write {
            self.acknowledged(&mut conn, key).await?;
        }
        Ok(v)
    }

    /// Entries older than this (ms) may be folded: with a replication wait,
    /// only what every acknowledged write has certainly reached a replica by.
    fn grace_ms(&self) -> u64 {
        if self.wait_replicas == 0 {
            0
        } else {
            2 * self.wait_timeout.as_millis() as u64
        }
    }

    async fn read_shard(
        &self,
        policy: &str,
        shard: u16,
        from: StreamId,
        limit: usize,
    ) -> Result<ShardRead, StoreError> {
        let mut inv = self.scripts.shard_read.prepare_invoke();
        inv.key(self.shard_key(shard, policy, "ls"))
            .key(self.shard_key(shard, policy, "lt"))
            .arg(from.to_string())
            .arg(limit);
        let value: Value = self.run(&inv, None).await?;
        let corrupt = |what: &str| StoreError::Corrupt(format!("shard read: {what}"));
        let Value::Array(parts) = value else {
            return Err(corrupt("not an array"));
        };
        let [now, trim, entries]: [Value; 3] =
            parts.try_into().map_err(|_| corrupt("expected 3 parts"))?;
        let now_ms = blob::text(&now)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt("time"))?;
        let trim = blob::text(&trim).ok_or_else(|| corrupt("trim"))?.parse()?;
        let Value::Array(raw) = entries else {
            return Err(corrupt("entries"));
        };
        let entries = raw
            .into_iter()
            .map(|v| parse_entry_or_skip(v, shard))
            .collect::<Result<_, _>>()?;
        Ok(ShardRead {
            now_ms,
            trim,
            entries,
        })
    }

    /// The snapshot hash's epoch and cursor, and its blob if `with_blob`.
    async fn read_snapshot(
        &self,
        policy: &str,
        with_blob: bool,
    ) -> Result<(u64, Cursor, Option<Vec<u8>>), StoreError> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.snap_key(policy)).arg("epoch").arg("cursor");
        if with_blob {
            cmd.arg("blob");
        }
        let mut parts: Vec<Option<Vec<u8>>> = self.cmd(&cmd).await?;
        let corrupt = |what: &str| StoreError::Corrupt(format!("snapshot {what}"));
        let blob = if with_blob {
            parts.pop().flatten()
        } else {
            None
        };
        let [epoch, cursor]: [Option<Vec<u8>>; 2] =
            parts.try_into().map_err(|_| corrupt("reply"))?;
        let epoch = match epoch {
            None => 0,
            Some(e) => std::str::from_utf8(&e)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| corrupt("epoch"))?,
        };
        let cursor = match cursor {
            None => Cursor::default(),
            Some(c) => std::str::from_utf8(&c)
                .map_err(|_| corrupt("cursor"))?
                .parse()?,
        };
        Ok((epoch, cursor, blob.filter(|b| !b.is_empty())))
    }

    /// Trims each shard's stream to `cursor` (entries it includes).
    async fn trim_shards(&self, policy: &str, cursor: &Cursor) -> Result<(), StoreError> {
        let trims = (0..self.shards).map(|s| async move {
            let mut inv = self.scripts.trim.prepare_invoke();
            inv.key(self.shard_key(s, policy, "ls"))
                .key(self.shard_key(s, policy, "lt"))
                .arg(cursor.get(usize::from(s)).to_string());
            let key = self.shard_key(s, policy, "ls");
            self.run::<i64>(&inv, Some(&key)).await
        });
        for r in futures_util::future::join_all(trims).await {
            r?;
        }
        Ok(())
    }
}

/// Deadlines are grouped into buckets of this many ms: a due list per
/// bucket (rather than a sorted set of every event) keeps a pending event
/// at one list entry.
const DUE_BUCKET_MS: i64 = 100;

/// The bucket a deadline's window is swept in: rounded up, so a sweep at
/// `now_ms` closes every window with `deadline_ms <= now_ms` once `now_ms`
/// reaches the bucket's end (at most 100 ms late).
fn due_bucket(deadline_ms: i64) -> i64 {
    deadline_ms.div_euclid(DUE_BUCKET_MS) + i64::from(deadline_ms.rem_euclid(DUE_BUCKET_MS) != 0)
}

/// Merges shard reads into the one order every replica folds: entries by
/// `(ms, shard, seq)`, below the first point some shard may still add to.
fn merge(reads: Vec<ShardRead>, limit: usize, grace_ms: u64) -> Vec<LearnedEntry> {
    type Key = (u64, u16, u64);
    let key = |e: &LearnedEntry| (e.id.ms, e.shard, e.id.seq);
    let single = reads.len() == 1;
    let mut bound: Key = (u64::MAX, u16::MAX, u64::MAX);
    for (s, read) in reads.iter().enumerate() {
        let shard_bound = match read.entries.last() {
            // The read stopped at its limit: later entries of this shard
            // are unknown, and come after its last one.
            Some(last) if read.entries.len() >= limit => {
                if single && grace_ms == 0 {
                    continue;
                }
                (last.id.ms, s as u16, last.id.seq.saturating_add(1))
            }
            // Everything up to the node's clock was read; what comes later
            // gets an id at or after it.
            _ if single && grace_ms == 0 => continue,
            _ => (read.now_ms.saturating_sub(grace_ms), 0, 0),
        };
        bound = bound.min(shard_bound);
    }
    let mut out: Vec<LearnedEntry> = reads
        .into_iter()
        .flat_map(|r| r.entries)
        .filter(|e| key(e) < bound)
        .collect();
    out.sort_by_key(key);
    out
}

#[async_trait::async_trait]
impl ModelStore for RedisStore {
    fn kind(&self) -> &'static str {
        if self.client.is_cluster() {
            "redis-cluster"
        } else {
            "redis"
        }
    }

    async fn record(
        &self,
        policy: &str,
        event: &EventRecord,
        rules: &RewardRules,
        now_ms: i64,
    ) -> Result<Recorded, StoreError> {
        let ttl = (event.deadline_ms - now_ms).max(1) + rules.retention_ms;
        let shard = self.shard_of(&event.event_id);
        let bucket = due_bucket(event.deadline_ms);
        let key = self.event_key(&event.event_id);
        let mut inv = self.scripts.record.prepare_invoke();
        inv.key(&key)
            .key(self.shard_key(shard, policy, "dqs"))
            .key(self.shard_key(shard, policy, &format!("dq:{bucket}")))
            .key(self.shard_key(shard, policy, "n"))
            .arg(encode_event(policy, event))
            .arg(ttl)
            .arg(bucket)
            .arg(&event.event_id);
        let existing: Option<Vec<u8>> = self.run(&inv, Some(&key)).await?;
        let Some(blob) = existing else {
            return Ok(Recorded::New);
        };
        let head = decode_head(&blob)?;
        if head.policy != policy {
            return Ok(Recorded::OtherPolicy(head.policy));
        }
        Ok(Recorded::Existing(head.response))
    }

    async fn event_policy(&self, event_id: &str) -> Result<Option<String>, StoreError> {
        let blob: Option<Vec<u8>> = self
            .cmd(redis::cmd("GET").arg(self.event_key(event_id)))
            .await?;
        blob.map(|b| decode_head(&b).map(|h| h.policy)).transpose()
    }

    async fn reward(&self, r: &RewardRequest<'_>) -> Result<RewardOutcome, StoreError> {
        let shard = self.shard_of(r.event_id);
        let key = self.event_key(r.event_id);
        let mut inv = self.scripts.reward.prepare_invoke();
        inv.key(&key)
            .key(self.state_key(r.event_id))
            .key(self.shard_key(shard, r.policy, "ls"))
            .arg(r.event_id)
            .arg(r.action.unwrap_or(""))
            .arg(blob::format_f64(r.reward))
            .arg(u8::from(r.rules.sum))
            .arg(r.now_ms)
            .arg(r.reward_id.unwrap_or(""))
            .arg(r.policy);
        let (outcome, action): (String, String) = self.run(&inv, Some(&key)).await?;
        Ok(match outcome.as_str() {
            "learned" => RewardOutcome::Learned(action),
            "accumulated" => RewardOutcome::Accumulated(action),
            "duplicate" => RewardOutcome::Duplicate(action),
            "unknown_event" => RewardOutcome::UnknownEvent,
            "expired" => RewardOutcome::Expired,
            "already_rewarded" => RewardOutcome::AlreadyRewarded,
            "not_activated" => RewardOutcome::NotActivated,
            "unknown_action" => RewardOutcome::UnknownAction,
            other => return Err(StoreError::Corrupt(format!("reward script said {other:?}"))),
        })
    }

    async fn activate(
        &self,
        policy: &str,
        event_id: &str,
        rules: &RewardRules,
        now_ms: i64,
    ) -> Result<ActivateOutcome, StoreError> {
        let shard = self.shard_of(event_id);
        let deadline = now_ms + rules.window_ms;
        let bucket = due_bucket(deadline);
        let key = self.event_key(event_id);
        let mut inv = self.scripts.activate.prepare_invoke();
        inv.key(&key)
            .key(self.state_key(event_id))
            .key(self.shard_key(shard, policy, "dqs"))
            .key(self.shard_key(shard, policy, &format!("dq:{bucket}")))
            .arg(event_id)
            .arg(now_ms)
            .arg(deadline)
            .arg(rules.window_ms + rules.retention_ms)
            .arg(bucket)
            .arg(policy);
        let outcome: String = self.run(&inv, Some(&key)).await?;
        Ok(match outcome.as_str() {
            "activated" => ActivateOutcome::Activated,
            "already_active" => ActivateOutcome::AlreadyActive,
            "not_deferred" => ActivateOutcome::NotDeferred,
            "unknown_event" => ActivateOutcome::UnknownEvent,
            "expired" => ActivateOutcome::Expired,
            other => {
                return Err(StoreError::Corrupt(format!(
                    "activate script said {other:?}"
                )));
            }
        })
    }

    async fn sweep(
        &self,
        policy: &str,
        rules: &RewardRules,
        now_ms: i64,
        limit: usize,
    ) -> Result<SweepResult, StoreError> {
        let per_shard = limit.div_ceil(usize::from(self.shards)).max(1);
        let sweeps = (0..self.shards).map(|s| async move {
            let dqs = self.shard_key(s, policy, "dqs");
            let mut inv = self.scripts.sweep.prepare_invoke();
            inv.key(&dqs)
                .key(self.shard_key(s, policy, "ls"))
                .key(self.shard_key(s, policy, "n"))
                .arg(now_ms)
                .arg(per_shard)
                .arg(format!("{}:e:", self.tag(s)))
                .arg(format!("{}:st:", self.tag(s)))
                .arg(self.shard_key(s, policy, "dq:"))
                .arg(blob::format_f64(rules.default_reward))
                .arg(u8::from(rules.sum))
                .arg(policy)
                .arg(now_ms.div_euclid(DUE_BUCKET_MS));
            self.run::<Vec<(String, String, String, String)>>(&inv, Some(&dqs))
                .await
        });
        let mut result = SweepResult::default();
        for rows in futures_util::future::join_all(sweeps).await {
            for (event, action, reward, flag) in rows? {
                if flag == "dropped" {
                    result.dropped.push(event);
                    continue;
                }
                let reward = blob::parse_f64(&reward)?;
                result.learned.push((event, action, reward, flag == "1"));
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
        let mut force_reload = false;
        // A snapshot saved (and the shards trimmed) between reading the
        // snapshot and reading a shard shows as a trim point past the
        // cursor: read the newer snapshot and try again.
        for _ in 0..4 {
            let (snap_epoch, snap_cursor, _) = self.read_snapshot(policy, false).await?;
            let reload = force_reload || epoch != Some(snap_epoch) || !cursor.covers(&snap_cursor);
            let (snapshot, from) = if reload {
                let (e, c, blob) = self.read_snapshot(policy, true).await?;
                if e != snap_epoch && !force_reload {
                    // A reset in between: start over with its state.
                    force_reload = true;
                    continue;
                }
                (
                    Some(Snapshot {
                        blob,
                        cursor: c.clone(),
                    }),
                    c,
                )
            } else {
                (None, cursor.clone())
            };
            let reads = (0..self.shards)
                .map(|s| self.read_shard(policy, s, from.get(usize::from(s)), limit));
            let reads = futures_util::future::try_join_all(reads).await?;
            if reads.iter().enumerate().any(|(s, r)| r.trim > from.get(s)) {
                force_reload = true;
                continue;
            }
            return Ok(SyncBatch {
                epoch: snap_epoch,
                snapshot,
                entries: merge(reads, limit, self.grace_ms()),
            });
        }
        Err(StoreError::Unavailable(
            "the learned stream kept being trimmed under this sync".into(),
        ))
    }

    async fn save_snapshot(
        &self,
        policy: &str,
        epoch: u64,
        blob: &[u8],
        cursor: &Cursor,
    ) -> Result<bool, StoreError> {
        let key = self.snap_key(policy);
        let mut inv = self.scripts.snapshot.prepare_invoke();
        inv.key(&key)
            .arg(blob)
            .arg(cursor.to_string())
            .arg(epoch.to_string());
        let saved: i64 = self.run(&inv, Some(&key)).await?;
        if saved == 1 {
            self.trim_shards(policy, cursor).await?;
        }
        Ok(saved == 1)
    }

    async fn reset(&self, policy: &str, blob: &[u8]) -> Result<(), StoreError> {
        // Every shard's last entry: what the fresh model starts after.
        // Entries learned while the reset runs land after these and are
        // folded on top of the fresh model, like anything learned later.
        let lasts = (0..self.shards).map(|s| async move {
            let last: Vec<(String, Value)> = self
                .cmd(
                    redis::cmd("XREVRANGE")
                        .arg(self.shard_key(s, policy, "ls"))
                        .arg("+")
                        .arg("-")
                        .arg("COUNT")
                        .arg(1),
                )
                .await?;
            match last.first() {
                Some((id, _)) => id.parse::<StreamId>(),
                None => Ok(StreamId::default()),
            }
        });
        let mut cursor = Cursor::default();
        for (s, last) in futures_util::future::join_all(lasts)
            .await
            .into_iter()
            .enumerate()
        {
            cursor.advance(s, last?);
        }
        let (_, snap_cursor, _) = self.read_snapshot(policy, false).await?;
        for (s, id) in snap_cursor.shards().iter().enumerate() {
            if *id > cursor.get(s) {
                cursor.advance(s, *id);
            }
        }
        let key = self.snap_key(policy);
        let mut inv = self.scripts.reset.prepare_invoke();
        inv.key(&key).arg(blob).arg(cursor.to_string());
        let _: i64 = self.run(&inv, Some(&key)).await?;
        self.trim_shards(policy, &cursor).await
    }

    async fn pending(&self, policy: &str) -> Result<u64, StoreError> {
        let counts = (0..self.shards).map(|s| async move {
            self.cmd::<Option<i64>>(redis::cmd("GET").arg(self.shard_key(s, policy, "n")))
                .await
        });
        let mut total = 0u64;
        for n in futures_util::future::join_all(counts).await {
            total += n?.unwrap_or(0).max(0) as u64;
        }
        Ok(total)
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.cmd(&redis::cmd("PING")).await?;
        Ok(())
    }

    async fn announce_replay(&self, ttl_ms: u64) -> Result<(), StoreError> {
        // One key for the whole deployment: any replica's replay holds
        // every sweeper (every replica announces with the same ttl).
        let _: Option<String> = self
            .cmd(
                redis::cmd("SET")
                    .arg(self.replay_key())
                    .arg(1)
                    .arg("PX")
                    .arg(ttl_ms.max(1)),
            )
            .await?;
        Ok(())
    }

    async fn replaying(&self) -> Result<bool, StoreError> {
        let n: i64 = self
            .cmd(redis::cmd("EXISTS").arg(self.replay_key()))
            .await?;
        Ok(n > 0)
    }

    async fn publish_policies(&self, manifest: &[u8]) -> Result<u64, StoreError> {
        let key = self.policy_set_key();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HINCRBY")
            .arg(&key)
            .arg("generation")
            .arg(1)
            .cmd("HSET")
            .arg(&key)
            .arg("manifest")
            .arg(manifest)
            .ignore();
        let (generation,): (u64,) = self.query_pipe(&pipe, Some(&key)).await?;
        Ok(generation)
    }

    async fn policy_set(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let (generation, manifest): (Option<u64>, Option<Vec<u8>>) = self
            .cmd(
                redis::cmd("HMGET")
                    .arg(self.policy_set_key())
                    .arg("generation")
                    .arg("manifest"),
            )
            .await?;
        Ok(generation.zip(manifest))
    }

    async fn keep_snapshot(
        &self,
        policy: &str,
        version: u32,
        blob: &[u8],
    ) -> Result<(), StoreError> {
        let key = self.kept_key(policy, version);
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(&key).arg(blob).ignore();
        let () = self.query_pipe(&pipe, Some(&key)).await?;
        Ok(())
    }

    async fn kept_snapshot(
        &self,
        policy: &str,
        version: u32,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.cmd(redis::cmd("GET").arg(self.kept_key(policy, version)))
            .await
    }

    async fn event_response(
        &self,
        policy: &str,
        event_id: &str,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let blob: Option<Vec<u8>> = self
            .cmd(redis::cmd("GET").arg(self.event_key(event_id)))
            .await?;
        let Some(blob) = blob else {
            return Ok(None);
        };
        let head = decode_head(&blob)?;
        Ok((head.policy == policy).then_some(head.response))
    }

    async fn user_history(&self, user: &str) -> Result<UserHistory, StoreError> {
        let fields: Vec<(String, String)> = self
            .cmd(redis::cmd("HGETALL").arg(self.user_key(user)))
            .await?;
        let mut history = UserHistory::default();
        for (field, value) in fields {
            if field == "#v" {
                history.version = value
                    .parse()
                    .map_err(|_| StoreError::Corrupt(format!("user history version {value:?}")))?;
            } else if let Some(send) = SendRecord::decode(&field, &value) {
                history.sends.push(send);
            } else {
                // One unreadable entry must not block the user's decisions.
                tracing::error!(user, field, "unreadable send record skipped");
            }
        }
        Ok(history)
    }

    async fn budget_used(&self, slots: &[BudgetSlot]) -> Result<Vec<u64>, StoreError> {
        // One GET each (the windows live in different slots of a cluster).
        let reads = slots.iter().map(|b| async move {
            self.cmd::<Option<u64>>(redis::cmd("GET").arg(self.budget_key(b)))
                .await
        });
        futures_util::future::join_all(reads)
            .await
            .into_iter()
            .map(|r| r.map(Option::unwrap_or_default))
            .collect()
    }

    async fn reserve_send(&self, r: &SendReservation<'_>) -> Result<Reservation, StoreError> {
        let event = r.send.event_id.as_str();
        if let Some(user) = r.user {
            let key = self.user_key(user);
            let mut inv = self.scripts.user_reserve.prepare_invoke();
            inv.key(&key)
                .arg(event)
                .arg(r.send.encode())
                .arg(r.version.to_string())
                .arg(r.retention_ms)
                .arg(r.now_ms)
                .arg(MAX_USER_SENDS);
            let outcome: String = self.run(&inv, Some(&key)).await?;
            match outcome.as_str() {
                "ok" => {}
                "duplicate" => return Ok(Reservation::Duplicate),
                "conflict" => return Ok(Reservation::Conflict),
                other => {
                    return Err(StoreError::Corrupt(format!(
                        "reserve script said {other:?}"
                    )));
                }
            }
        }
        for (i, b) in r.budgets.iter().enumerate() {
            let key = self.budget_key(b);
            let mut inv = self.scripts.budget.prepare_invoke();
            inv.key(&key);
            if r.user.is_none() {
                inv.key(self.budget_event_key(b, event));
            }
            inv.arg(b.max).arg(b.ttl_ms);
            let outcome: String = self.run(&inv, Some(&key)).await?;
            match outcome.as_str() {
                "ok" => {}
                "duplicate" => return Ok(Reservation::Duplicate),
                "spent" => {
                    self.withdraw(r, &r.budgets[..i]).await?;
                    return Ok(Reservation::BudgetSpent);
                }
                other => {
                    return Err(StoreError::Corrupt(format!("budget script said {other:?}")));
                }
            }
        }
        Ok(Reservation::Reserved)
    }

    async fn note_outcome(
        &self,
        user: &str,
        event_id: &str,
        outcome: f64,
    ) -> Result<bool, StoreError> {
        let key = self.user_key(user);
        let mut inv = self.scripts.outcome.prepare_invoke();
        inv.key(&key).arg(event_id).arg(blob::format_f64(outcome));
        let changed: i64 = self.run(&inv, Some(&key)).await?;
        Ok(changed == 1)
    }
}

impl RedisStore {
    /// Takes back a reservation's send and the budget counts made so far
    /// (each key on its own: they live in different slots of a cluster).
    async fn withdraw(
        &self,
        r: &SendReservation<'_>,
        counted: &[BudgetSlot],
    ) -> Result<(), StoreError> {
        for b in counted {
            let key = self.budget_key(b);
            let mut pipe = redis::pipe();
            pipe.cmd("DECR").arg(&key).ignore();
            if r.user.is_none() {
                pipe.cmd("DEL")
                    .arg(self.budget_event_key(b, &r.send.event_id))
                    .ignore();
            }
            let () = self.query_pipe(&pipe, Some(&key)).await?;
        }
        if let Some(user) = r.user {
            let key = self.user_key(user);
            let mut pipe = redis::pipe();
            pipe.cmd("HDEL")
                .arg(&key)
                .arg(&r.send.event_id)
                .ignore()
                .cmd("HINCRBY")
                .arg(&key)
                .arg("#v")
                .arg(1)
                .ignore();
            let () = self.query_pipe(&pipe, Some(&key)).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod fuzz;

#[cfg(test)]
mod merge_tests {
    use super::*;

    fn entry(shard: u16, ms: u64, seq: u64) -> LearnedEntry {
        LearnedEntry {
            shard,
            id: StreamId { ms, seq },
            event_id: format!("e{shard}-{ms}-{seq}"),
            action: "a".into(),
            arm: 0,
            x: vec![1.0],
            reward: 1.0,
            is_default: false,
            aux: vec![],
        }
    }

    fn read(now_ms: u64, entries: Vec<LearnedEntry>) -> ShardRead {
        ShardRead {
            now_ms,
            trim: StreamId::default(),
            entries,
        }
    }

    fn ids(entries: &[LearnedEntry]) -> Vec<(u16, u64, u64)> {
        entries
            .iter()
            .map(|e| (e.shard, e.id.ms, e.id.seq))
            .collect()
    }

    #[test]
    fn shards_merge_by_time_then_shard_below_every_shards_clock() {
        let merged = merge(
            vec![
                read(100, vec![entry(0, 10, 0), entry(0, 50, 0), entry(0, 99, 0)]),
                read(60, vec![entry(1, 10, 0), entry(1, 20, 1), entry(1, 60, 0)]),
            ],
            100,
            0,
        );
        // Shard 1's clock read 60: an entry at 60 may still get siblings,
        // and so may anything later in shard 0.
        assert_eq!(
            ids(&merged),
            vec![(0, 10, 0), (1, 10, 0), (1, 20, 1), (0, 50, 0)]
        );
    }

    #[test]
    fn a_shard_read_cut_at_its_limit_bounds_the_order_at_its_last_entry() {
        let merged = merge(
            vec![
                read(100, vec![entry(0, 10, 0), entry(0, 30, 0)]),
                read(100, vec![entry(1, 5, 0), entry(1, 20, 0)]),
            ],
            2,
            0,
        );
        // Both reads are full: shard 0 may continue after 30, shard 1 after
        // 20; nothing after (20, shard 1) is certain.
        assert_eq!(ids(&merged), vec![(1, 5, 0), (0, 10, 0), (1, 20, 0)]);
    }

    #[test]
    fn one_shard_without_a_grace_folds_everything_it_read() {
        let merged = merge(vec![read(10, vec![entry(0, 10, 0), entry(0, 10, 1)])], 2, 0);
        assert_eq!(merged.len(), 2);
    }

    #[test]
    fn a_grace_holds_back_entries_younger_than_it() {
        let merged = merge(
            vec![read(1_000, vec![entry(0, 700, 0), entry(0, 900, 0)])],
            10,
            200,
        );
        assert_eq!(ids(&merged), vec![(0, 700, 0)]);
    }

    #[test]
    fn any_interleaving_of_reads_folds_the_same_order() {
        // Two replicas read the same two shards at different times; the
        // concatenation of what each folds is the same sequence.
        let all0: Vec<_> = (0..6).map(|i| entry(0, 10 * i + 5, 0)).collect();
        let all1: Vec<_> = (0..6).map(|i| entry(1, 10 * i + 5, 0)).collect();
        let fold = |cuts: &[(u64, usize, usize)]| {
            let mut done: Vec<LearnedEntry> = Vec::new();
            for &(now, n0, n1) in cuts {
                let pos = |shard: u16| done.iter().filter(|e| e.shard == shard).count();
                let (p0, p1) = (pos(0), pos(1));
                let r0 = all0[p0..n0].to_vec();
                let r1 = all1[p1..n1].to_vec();
                done.extend(merge(vec![read(now, r0), read(now, r1)], 100, 0));
            }
            ids(&done)
        };
        let a = fold(&[(20, 2, 2), (46, 5, 5), (100, 6, 6)]);
        let b = fold(&[(33, 3, 3), (100, 6, 6)]);
        assert_eq!(a, b);
        assert_eq!(a.len(), 12);
    }
}
