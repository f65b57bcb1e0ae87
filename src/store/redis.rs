//! The Redis store. Each operation is one Lua script (atomic on the server);
//! every key of a policy carries the hash tag `{<policy>}` so a policy lives
//! in one Redis Cluster slot. Key layout, with prefix `P`:
//!
//! | key | type | what |
//! | --- | --- | --- |
//! | `P:{pid}:ev:<event>` | string | a decided event, immutable: deadline, deferred flag, response, slots (see [`encode_event`]) |
//! | `P:{pid}:st:<event>` | hash | what happened to it since: activation, moved deadline, per-slot learned flag, sum and count |
//! | `P:{pid}:due` | zset | event ids by reward deadline |
//! | `P:{pid}:learned` | stream | entries to learn, in order |
//! | `P:{pid}:snap` | hash | `blob`, `cursor`, `epoch` |
//! | `P:event:<event>` | string | the policy of an event (rewards name only the event) |
//! | `P:{u:<user>}:h` | hash | a user's sends (guardrails; see [`super::users`]) |
//! | `P:{b:<scope>}:<window>` | string | a budget window's send count |
//!
//! Deciding costs three plain commands in one pipeline (`SET … NX GET PX`,
//! `ZADD NX`, the index `SET`): no script runs on the request path. Rewards,
//! activations and sweeps are Lua scripts, atomic on the server. Needs Redis
//! 7.0 or newer (`SET` with both `NX` and `GET`).
//!
//! Policy and event ids are validated to `[A-Za-z0-9_.:-]` before they reach
//! a key, so no input can break out of its key (no braces, no spaces).
//! Nothing is built as a command string: keys and values travel as
//! separate protocol arguments.

use super::users::{BudgetSlot, Reservation, SendReservation};
use super::{
    ActivateOutcome, EventRecord, LearnedEntry, Recorded, RewardOutcome, RewardRules, Snapshot,
    StoreError, StreamId, SweepResult, SyncBatch, decode_vector, encode_vector,
};
use crate::guardrails::{MAX_USER_SENDS, SendRecord, UserHistory};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use std::sync::Arc;
use std::time::Duration;

struct Scripts {
    reward: Script,
    activate: Script,
    sweep: Script,
    sync: Script,
    snapshot: Script,
    reset: Script,
    user_reserve: Script,
    budget: Script,
    outcome: Script,
}

fn script(body: &str) -> Script {
    Script::new(&format!("{}\n{body}", include_str!("lua/common.lua")))
}

/// Redis-backed store (production).
///
/// Each thread gets its own multiplexed connection, created on first use in
/// that thread's runtime: an HTTP worker's store calls then never hop to
/// another thread (with one shared connection, every call woke the thread
/// running its driver task, and context switches cost more than Redis).
#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    config: ConnectionManagerConfig,
    /// Tells this store's connections apart in the per-thread cache.
    id: u64,
    prefix: Arc<str>,
    timeout: Duration,
    scripts: Arc<Scripts>,
}

thread_local! {
    static CONNECTIONS: std::cell::RefCell<Vec<(u64, ConnectionManager)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

static NEXT_STORE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl RedisStore {
    /// A store on `url` with keys under `prefix`. Connects lazily (and
    /// reconnects by itself), so a Redis that is down at start only degrades
    /// the service; every call is bounded by `timeout`.
    pub fn new(url: &str, prefix: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client =
            redis::Client::open(url).map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        // Validate the configuration once, up front.
        ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        Ok(RedisStore {
            client,
            config,
            id: NEXT_STORE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            prefix: prefix.into(),
            timeout,
            scripts: Arc::new(Scripts {
                reward: script(include_str!("lua/reward.lua")),
                activate: script(include_str!("lua/activate.lua")),
                sweep: script(include_str!("lua/sweep.lua")),
                sync: script(include_str!("lua/sync.lua")),
                snapshot: script(include_str!("lua/snapshot.lua")),
                reset: script(include_str!("lua/reset.lua")),
                user_reserve: Script::new(include_str!("lua/user_reserve.lua")),
                budget: Script::new(include_str!("lua/budget.lua")),
                outcome: Script::new(include_str!("lua/outcome.lua")),
            }),
        })
    }

    /// This thread's connection (lazily connected, reconnecting by itself).
    fn conn(&self) -> Result<ConnectionManager, StoreError> {
        CONNECTIONS.with(|cache| {
            let mut cache = cache.borrow_mut();
            if let Some((_, c)) = cache.iter().find(|(id, _)| *id == self.id) {
                return Ok(c.clone());
            }
            let c =
                ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())
                    .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            cache.push((self.id, c.clone()));
            Ok(c)
        })
    }

    fn key(&self, policy: &str, what: &str) -> String {
        format!("{}:{{{policy}}}:{what}", self.prefix)
    }

    fn event_key(&self, policy: &str, event_id: &str) -> String {
        format!("{}:{{{policy}}}:ev:{event_id}", self.prefix)
    }

    fn state_key(&self, policy: &str, event_id: &str) -> String {
        format!("{}:{{{policy}}}:st:{event_id}", self.prefix)
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

    fn index_key(&self, event_id: &str) -> String {
        format!("{}:event:{event_id}", self.prefix)
    }

    /// Bounds a call by the store timeout and maps its errors.
    async fn timed<T>(
        &self,
        call: impl Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(StoreError::Unavailable(e.to_string())),
            Err(_) => Err(StoreError::Timeout),
        }
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        // redis-rs loads a script the server does not know and retries once;
        // a `SCRIPT FLUSH` (or a failover to a fresh replica) between that
        // load and the retry still answers NOSCRIPT: load it again. Scripts
        // are atomic, so a NOSCRIPT answer means nothing ran.
        for _ in 0..2 {
            match tokio::time::timeout(self.timeout, inv.invoke_async::<T>(&mut conn)).await {
                Ok(Err(e))
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    continue;
                }
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => return Err(StoreError::Unavailable(e.to_string())),
                Err(_) => return Err(StoreError::Timeout),
            }
        }
        self.timed(inv.invoke_async(&mut conn)).await
    }

    async fn cmd<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        self.timed(cmd.query_async(&mut conn)).await
    }

    async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn()?;
        self.timed(pipe.query_async(&mut conn)).await
    }

    pub(super) async fn record(
        &self,
        policy: &str,
        event: &EventRecord,
        rules: &RewardRules,
        now_ms: i64,
    ) -> Result<Recorded, StoreError> {
        let ttl = (event.deadline_ms - now_ms).max(1) + rules.retention_ms;
        let mut pipe = redis::pipe();
        // Created only if absent; a retry gets the first decision back.
        pipe.cmd("SET")
            .arg(self.event_key(policy, &event.event_id))
            .arg(encode_event(event))
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(ttl)
            .cmd("ZADD")
            .arg(self.key(policy, "due"))
            .arg("NX")
            .arg(event.deadline_ms)
            .arg(&event.event_id)
            .ignore()
            // The index (event → policy) lives outside the policy's slot; a
            // retry rewrites it with the same value, which is harmless.
            .cmd("SET")
            .arg(self.index_key(&event.event_id))
            .arg(policy)
            .arg("PX")
            .arg(ttl)
            .ignore();
        let (existing,): (Option<Vec<u8>>,) = self.query_pipe(&pipe).await?;
        match existing {
            None => Ok(Recorded::New),
            Some(blob) => Ok(Recorded::Existing(decode_response(&blob)?)),
        }
    }

    pub(super) async fn event_policy(&self, event_id: &str) -> Result<Option<String>, StoreError> {
        self.cmd(redis::cmd("GET").arg(self.index_key(event_id)))
            .await
    }

    #[allow(clippy::too_many_arguments)] // mirrors `Store::reward_once`
    pub(super) async fn reward(
        &self,
        policy: &str,
        event_id: &str,
        action: Option<&str>,
        reward: f64,
        rules: &RewardRules,
        now_ms: i64,
        reward_id: &str,
    ) -> Result<RewardOutcome, StoreError> {
        let mut inv = self.scripts.reward.prepare_invoke();
        inv.key(self.event_key(policy, event_id))
            .key(self.state_key(policy, event_id))
            .key(self.key(policy, "learned"))
            .arg(event_id)
            .arg(action.unwrap_or(""))
            .arg(format_f64(reward))
            .arg(u8::from(rules.sum))
            .arg(now_ms)
            .arg(reward_id);
        let (outcome, action): (String, String) = self.run(&inv).await?;
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

    pub(super) async fn activate(
        &self,
        policy: &str,
        event_id: &str,
        rules: &RewardRules,
        now_ms: i64,
    ) -> Result<ActivateOutcome, StoreError> {
        let mut inv = self.scripts.activate.prepare_invoke();
        inv.key(self.event_key(policy, event_id))
            .key(self.state_key(policy, event_id))
            .key(self.key(policy, "due"))
            .arg(event_id)
            .arg(now_ms)
            .arg(rules.window_ms)
            .arg(rules.retention_ms);
        let outcome: String = self.run(&inv).await?;
        let result = match outcome.as_str() {
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
        };
        if result == ActivateOutcome::Activated {
            let ttl = rules.window_ms + rules.retention_ms;
            let () = self
                .cmd(redis::cmd("PEXPIRE").arg(self.index_key(event_id)).arg(ttl))
                .await
                .map(|_: i64| ())?;
        }
        Ok(result)
    }

    pub(super) async fn sweep(
        &self,
        policy: &str,
        rules: &RewardRules,
        now_ms: i64,
        limit: usize,
    ) -> Result<SweepResult, StoreError> {
        let mut inv = self.scripts.sweep.prepare_invoke();
        inv.key(self.key(policy, "due"))
            .key(self.key(policy, "learned"))
            .arg(now_ms)
            .arg(limit)
            .arg(self.event_key(policy, ""))
            .arg(self.state_key(policy, ""))
            .arg(format_f64(rules.default_reward))
            .arg(u8::from(rules.sum));
        let rows: Vec<(String, String, String, String)> = self.run(&inv).await?;
        let mut result = SweepResult::default();
        for (event, action, reward, flag) in rows {
            if flag == "dropped" {
                result.dropped.push(event);
                continue;
            }
            let reward = parse_f64(&reward)?;
            result.learned.push((event, action, reward, flag == "1"));
        }
        Ok(result)
    }

    pub(super) async fn sync(
        &self,
        policy: &str,
        epoch: Option<u64>,
        cursor: StreamId,
        limit: usize,
    ) -> Result<SyncBatch, StoreError> {
        let mut inv = self.scripts.sync.prepare_invoke();
        inv.key(self.key(policy, "snap"))
            .key(self.key(policy, "learned"))
            .arg(epoch.map(|e| e.to_string()).unwrap_or_default())
            .arg(cursor.to_string())
            .arg(limit);
        let value: Value = self.run(&inv).await?;
        let corrupt = |what: &str| StoreError::Corrupt(format!("sync reply: {what}"));
        let Value::Array(parts) = value else {
            return Err(corrupt("not an array"));
        };
        let [epoch, snap_cursor, blob, entries]: [Value; 4] =
            parts.try_into().map_err(|_| corrupt("expected 4 parts"))?;
        let epoch: u64 = text(&epoch)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| corrupt("epoch"))?;
        let snapshot = match (snap_cursor, blob) {
            (Value::Nil, _) => None,
            (c, b) => Some(Snapshot {
                cursor: text(&c).ok_or_else(|| corrupt("cursor"))?.parse()?,
                blob: match b {
                    Value::BulkString(bytes) if !bytes.is_empty() => Some(bytes),
                    _ => None,
                },
            }),
        };
        let Value::Array(raw) = entries else {
            return Err(corrupt("entries"));
        };
        let entries = raw
            .into_iter()
            .map(parse_entry_or_skip)
            .collect::<Result<_, _>>()?;
        Ok(SyncBatch {
            epoch,
            snapshot,
            entries,
        })
    }

    pub(super) async fn save_snapshot(
        &self,
        policy: &str,
        epoch: u64,
        blob: &[u8],
        cursor: StreamId,
    ) -> Result<bool, StoreError> {
        let mut inv = self.scripts.snapshot.prepare_invoke();
        inv.key(self.key(policy, "snap"))
            .key(self.key(policy, "learned"))
            .arg(blob)
            .arg(cursor.to_string())
            .arg(epoch.to_string());
        let saved: i64 = self.run(&inv).await?;
        Ok(saved == 1)
    }

    pub(super) async fn reset(&self, policy: &str, blob: &[u8]) -> Result<(), StoreError> {
        let mut inv = self.scripts.reset.prepare_invoke();
        inv.key(self.key(policy, "snap"))
            .key(self.key(policy, "learned"))
            .arg(blob);
        let _: i64 = self.run(&inv).await?;
        Ok(())
    }

    pub(super) async fn pending(&self, policy: &str) -> Result<u64, StoreError> {
        self.cmd(redis::cmd("ZCARD").arg(self.key(policy, "due")))
            .await
    }

    pub(super) async fn ping(&self) -> Result<(), StoreError> {
        let _: String = self.cmd(&redis::cmd("PING")).await?;
        Ok(())
    }

    pub(super) async fn event_response(
        &self,
        policy: &str,
        event_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let blob: Option<Vec<u8>> = self
            .cmd(redis::cmd("GET").arg(self.event_key(policy, event_id)))
            .await?;
        blob.map(|b| decode_response(&b)).transpose()
    }

    pub(super) async fn user_history(&self, user: &str) -> Result<UserHistory, StoreError> {
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

    pub(super) async fn budget_used(&self, slots: &[BudgetSlot]) -> Result<Vec<u64>, StoreError> {
        if slots.is_empty() {
            return Ok(vec![]);
        }
        // One GET each (the windows live in different slots of a cluster).
        let mut pipe = redis::pipe();
        for b in slots {
            pipe.cmd("GET").arg(self.budget_key(b));
        }
        let used: Vec<Option<u64>> = self.query_pipe(&pipe).await?;
        Ok(used.into_iter().map(Option::unwrap_or_default).collect())
    }

    pub(super) async fn reserve_send(
        &self,
        r: &SendReservation<'_>,
    ) -> Result<Reservation, StoreError> {
        let event = r.send.event_id.as_str();
        if let Some(user) = r.user {
            let mut inv = self.scripts.user_reserve.prepare_invoke();
            inv.key(self.user_key(user))
                .arg(event)
                .arg(r.send.encode())
                .arg(r.version.to_string())
                .arg(r.retention_ms)
                .arg(r.now_ms)
                .arg(MAX_USER_SENDS);
            let outcome: String = self.run(&inv).await?;
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
            let mut inv = self.scripts.budget.prepare_invoke();
            inv.key(self.budget_key(b));
            if r.user.is_none() {
                inv.key(self.budget_event_key(b, event));
            }
            inv.arg(b.max).arg(b.ttl_ms);
            let outcome: String = self.run(&inv).await?;
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

    /// Takes back a reservation's send and the budget counts made so far.
    async fn withdraw(
        &self,
        r: &SendReservation<'_>,
        counted: &[BudgetSlot],
    ) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        for b in counted {
            pipe.cmd("DECR").arg(self.budget_key(b)).ignore();
            if r.user.is_none() {
                pipe.cmd("DEL")
                    .arg(self.budget_event_key(b, &r.send.event_id))
                    .ignore();
            }
        }
        if let Some(user) = r.user {
            pipe.cmd("HDEL")
                .arg(self.user_key(user))
                .arg(&r.send.event_id)
                .ignore()
                .cmd("HINCRBY")
                .arg(self.user_key(user))
                .arg("#v")
                .arg(1)
                .ignore();
        }
        let () = self.query_pipe(&pipe).await?;
        Ok(())
    }

    pub(super) async fn note_outcome(
        &self,
        user: &str,
        event_id: &str,
        outcome: f64,
    ) -> Result<bool, StoreError> {
        let mut inv = self.scripts.outcome.prepare_invoke();
        inv.key(self.user_key(user))
            .arg(event_id)
            .arg(format_f64(outcome));
        let changed: i64 = self.run(&inv).await?;
        Ok(changed == 1)
    }
}

/// Encodes the immutable part of an event as `<len>:<bytes>` fields, read by
/// the Lua scripts' `fields()`: format, deadline, deferred, response, slot
/// count, then each slot's action, arm and little-endian feature vector.
fn encode_event(event: &EventRecord) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(bytes.len().to_string().as_bytes());
        out.push(b':');
        out.extend_from_slice(bytes);
    }
    let mut out = Vec::with_capacity(64 + event.response.len() + event.slots.len() * 300);
    field(&mut out, b"1");
    field(&mut out, event.deadline_ms.to_string().as_bytes());
    field(&mut out, if event.deferred { b"1" } else { b"0" });
    field(&mut out, event.response.as_bytes());
    field(&mut out, event.slots.len().to_string().as_bytes());
    for s in &event.slots {
        field(&mut out, s.action.as_bytes());
        field(&mut out, s.arm.to_string().as_bytes());
        field(&mut out, &encode_vector(&s.x));
    }
    out
}

/// The stored response of an event blob (its fourth field).
fn decode_response(blob: &[u8]) -> Result<String, StoreError> {
    let corrupt = || StoreError::Corrupt("event blob".into());
    let mut rest = blob;
    for index in 0..4 {
        let colon = rest.iter().position(|b| *b == b':').ok_or_else(corrupt)?;
        let len: usize = std::str::from_utf8(&rest[..colon])
            .ok()
            .and_then(|n| n.parse().ok())
            .ok_or_else(corrupt)?;
        // `len` comes from the blob: a huge one must not overflow the sum.
        let end = (colon + 1).checked_add(len).ok_or_else(corrupt)?;
        let value = rest.get(colon + 1..end).ok_or_else(corrupt)?;
        if index == 3 {
            return String::from_utf8(value.to_vec()).map_err(|_| corrupt());
        }
        rest = &rest[end..];
    }
    Err(corrupt())
}

/// Shortest text that parses back to the same f64 (Rust's `Display`).
fn format_f64(v: f64) -> String {
    format!("{v}")
}

fn parse_f64(s: &str) -> Result<f64, StoreError> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .ok_or_else(|| StoreError::Corrupt(format!("bad number {s:?}")))
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// `[id, [field, value, …]]` of an XRANGE reply.
/// A stream entry, or — when only its id can be read — a placeholder the
/// model refuses (no such arm), so the replica counts it as skipped and
/// moves its cursor past it: one unreadable entry must not stop a policy
/// from learning everything after it. An entry without a readable id is an
/// error (the cursor could not move past it).
fn parse_entry_or_skip(v: Value) -> Result<LearnedEntry, StoreError> {
    let id = match &v {
        Value::Array(parts) => parts.first().and_then(text),
        _ => None,
    };
    let Some(id) = id else {
        return Err(StoreError::Corrupt("stream entry without an id".into()));
    };
    let id: StreamId = id.parse()?;
    parse_entry(v).or_else(|e| {
        tracing::error!(%id, error = %e, "unreadable learned-stream entry skipped");
        Ok(LearnedEntry {
            id,
            event_id: String::new(),
            action: String::new(),
            arm: u32::MAX,
            x: Vec::new(),
            reward: 0.0,
            is_default: false,
        })
    })
}

fn parse_entry(v: Value) -> Result<LearnedEntry, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("stream entry: {what}"));
    let Value::Array(parts) = v else {
        return Err(corrupt("not an array"));
    };
    let [id, fields]: [Value; 2] = parts.try_into().map_err(|_| corrupt("shape"))?;
    let id: StreamId = text(&id).ok_or_else(|| corrupt("id"))?.parse()?;
    let Value::Array(fields) = fields else {
        return Err(corrupt("fields"));
    };
    let mut entry = LearnedEntry {
        id,
        event_id: String::new(),
        action: String::new(),
        arm: 0,
        x: vec![],
        reward: 0.0,
        is_default: false,
    };
    for pair in fields.chunks(2) {
        let [name, value] = pair else {
            return Err(corrupt("odd field list"));
        };
        let name = text(name).ok_or_else(|| corrupt("field name"))?;
        match name.as_str() {
            "x" => {
                let Value::BulkString(bytes) = value else {
                    return Err(corrupt("x"));
                };
                entry.x = decode_vector(bytes)?;
            }
            other => {
                let value = text(value).ok_or_else(|| corrupt(other))?;
                match other {
                    "e" => entry.event_id = value,
                    "a" => entry.action = value,
                    "m" => entry.arm = value.parse().map_err(|_| corrupt("arm"))?,
                    "r" => entry.reward = parse_f64(&value)?,
                    "d" => entry.is_default = value == "1",
                    _ => {}
                }
            }
        }
    }
    Ok(entry)
}

#[cfg(test)]
#[path = "redis_fuzz.rs"]
mod fuzz;
