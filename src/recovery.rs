//! Replaying the outbox ([`crate::store::outbox`]) once the model store
//! answers again: each queued operation, in order, as the request would
//! have applied it — with the time it arrived, so a reward that came inside
//! its window counts even if the store returns after the window closed.
//!
//! While the outbox is not empty the sweeper closes no window (see
//! [`crate::startup`]): a queued reward must reach the store before its
//! event's default reward could. Other replicas must wait too, since the
//! reward may be for an event they decided: the replay is announced in the
//! store ([`crate::store::ModelStore::announce_replay`]) before every batch, and no
//! replica sweeps while an announcement lives, nor for
//! [`SWEEP_HOLD_MS`] after a store failure it saw itself (time for every
//! replica with a queue to notice the store is back and announce).
//!
//! Replicas replay independently, so a reward can arrive before the
//! decision it rewards, still in another replica's outbox: a reward or
//! activation refused as `unknown_event` is parked and retried (see
//! [`crate::store::outbox`]) instead of being rejected at once.

use crate::http::AppState;
use crate::log::{ActivationRow, LogRecord};
use crate::runtime::PolicyRuntime;
use crate::service::reward::{reward_value, rewarded};
use crate::store::outbox::Op;
use crate::store::{ActivateOutcome, Recorded, RewardOutcome, RewardRequest, StoreError};
use futures_util::future::join_all;
use std::collections::HashMap;
use std::sync::Arc;

/// What replaying one operation did.
enum Applied {
    /// The store took it (or had it already: replays are idempotent).
    Done,
    /// The store refused it for good: recorded as rejected.
    Rejected(&'static str),
}

/// Most operations replayed at once.
const BATCH: usize = 512;

/// How long an announced replay holds every sweeper: several batches, so a
/// replay that announces before each batch holds them throughout.
pub const REPLAY_TTL_MS: u64 = 3_000;

/// How long a replica does not sweep after a store failure it saw: more
/// than the replayers' ping interval plus an announcement, with margin.
pub const SWEEP_HOLD_MS: i64 = 3_000;

/// Replays queued operations while the store answers; returns how many were
/// applied or rejected.
///
/// Operations go in batches: within a batch, those of one event are applied
/// in order and different events concurrently (their order does not
/// matter), so the replay outruns the traffic that keeps queuing behind it.
/// At the first transient store failure the replay stops and the whole
/// batch stays queued: applying part of it again later is harmless (see
/// [`crate::store::outbox`]).
pub async fn drain(state: &AppState) -> usize {
    let mut done = 0;
    loop {
        let batch = state.outbox.peek(BATCH);
        if batch.is_empty() {
            return done;
        }
        if let Err(e) = state.store.announce_replay(REPLAY_TTL_MS).await {
            state.store_result("replay", &Err::<(), _>(e));
            return done;
        }
        let mut groups: Vec<(&str, Vec<&Op>)> = Vec::new();
        let mut group_of: HashMap<&str, usize> = HashMap::new();
        for op in &batch {
            let event = op.event_id();
            match group_of.get(event) {
                Some(&g) => groups[g].1.push(op),
                None => {
                    group_of.insert(event, groups.len());
                    groups.push((event, vec![op]));
                }
            }
        }
        let results = join_all(groups.iter().map(|(_, ops)| async move {
            let mut out = Vec::with_capacity(ops.len());
            for op in ops {
                let r = apply(state, op).await;
                let transient = matches!(&r, Err(e) if e.is_transient());
                out.push((*op, r));
                if transient {
                    break;
                }
            }
            out
        }))
        .await;
        let mut failed = None;
        let mut outcomes = Vec::with_capacity(batch.len());
        for (op, r) in results.into_iter().flatten() {
            match r {
                Ok(a) => outcomes.push((op, a)),
                Err(e) if e.is_transient() => failed = Some(e),
                Err(e) => outcomes.push((op, refused(op, &e))),
            }
        }
        if let Some(e) = failed {
            state.store_result("replay", &Err::<(), _>(e));
            return done;
        }
        let now = crate::service::unix_ms();
        for (op, applied) in outcomes {
            let applied = match applied {
                Applied::Rejected("unknown_event") if parkable(op) => {
                    match state.outbox.park(op, now) {
                        Ok(()) => continue,
                        Err(e) => {
                            tracing::error!(error = %e, "outbox: cannot park an operation");
                            Applied::Rejected("unknown_event")
                        }
                    }
                }
                a => a,
            };
            settle(state, op, applied);
        }
        if let Err(e) = state.outbox.pop(batch.len()) {
            // The queue is in memory; the file keeps the operations, and
            // replaying them after a restart is harmless.
            tracing::error!(error = %e, "outbox: cannot truncate the queue file");
        }
        done += batch.len();
    }
}

/// A store error that is not an outage: the operation is refused for good.
fn refused(op: &Op, e: &StoreError) -> Applied {
    tracing::error!(op = op.kind(), error = %e, "outbox: store refused the operation");
    Applied::Rejected("store_error")
}

/// Counts an applied operation; records a refused one (warning, metric,
/// `rejected.jsonl`), so nothing acknowledged disappears silently.
fn settle(state: &AppState, op: &Op, applied: Applied) {
    match applied {
        Applied::Done => state
            .metrics
            .outbox_replayed
            .with_label_values(&[op.kind()])
            .inc(),
        Applied::Rejected(reason) => {
            tracing::warn!(
                op = op.kind(),
                reason,
                "outbox: operation rejected at replay"
            );
            state
                .metrics
                .outbox_rejected
                .with_label_values(&[op.kind(), reason])
                .inc();
            if let Err(e) = state.outbox.reject(op, reason) {
                tracing::error!(error = %e, "outbox: cannot write rejected.jsonl");
            }
        }
    }
}

/// Rewards and activations wait for their event; a decision waits for
/// nothing.
fn parkable(op: &Op) -> bool {
    matches!(op, Op::Reward { .. } | Op::Activate { .. })
}

/// Retries the parked operations (see [`crate::store::outbox`]): applied
/// ones leave, those still refused as `unknown_event` stay until
/// `NUDGE_OUTBOX_PARK_MS` after they were parked, then are rejected.
/// Returns how many left the parking.
pub async fn retry_parked(state: &AppState) -> usize {
    let parked = state.outbox.parked();
    let now = crate::service::unix_ms();
    let mut gone = Vec::new();
    for p in parked {
        let applied = match apply(state, &p.op).await {
            Ok(a) => a,
            Err(e) if e.is_transient() => {
                state.store_result("replay", &Err::<(), _>(e));
                break;
            }
            Err(e) => refused(&p.op, &e),
        };
        match applied {
            Applied::Rejected("unknown_event")
                if now - p.since_ms < state.settings.outbox_park_ms as i64 => {}
            applied => {
                settle(state, &p.op, applied);
                gone.push(p.op);
            }
        }
    }
    if let Err(e) = state.outbox.unpark(&gone) {
        tracing::error!(error = %e, "outbox: cannot rewrite parked.json");
    }
    gone.len()
}

/// The runtime of a queued operation: the policy it names, or the one the
/// store's index has for the event.
async fn runtime_of(
    state: &AppState,
    policy: Option<&str>,
    event_id: &str,
) -> Result<Option<Arc<PolicyRuntime>>, StoreError> {
    let id = match policy {
        Some(p) => p.to_string(),
        None => match state.store.event_policy(event_id).await? {
            Some(p) => p,
            None => return Ok(None),
        },
    };
    Ok(state.policies.load().live.get(&id).cloned())
}

async fn apply(state: &AppState, op: &Op) -> Result<Applied, StoreError> {
    match op {
        Op::Record {
            policy,
            event,
            now_ms,
        } => {
            let Some(rt) = state.policies.load().live.get(policy).cloned() else {
                return Ok(Applied::Rejected("unknown_policy"));
            };
            // `Existing` means it was stored already (a replay): fine.
            match state
                .store
                .record(policy, event, &rt.rules, *now_ms)
                .await?
            {
                Recorded::New | Recorded::Existing(_) => Ok(Applied::Done),
                Recorded::OtherPolicy(_) => Ok(Applied::Rejected("event_id_taken")),
            }
        }
        Op::Reward {
            reward_id,
            policy,
            event_id,
            action,
            value,
            raw,
            signals,
            received_at,
        } => {
            let Some(rt) = runtime_of(state, policy.as_deref(), event_id).await? else {
                return Ok(Applied::Rejected("unknown_event"));
            };
            let value = match value {
                Some(v) => *v,
                None => match reward_value(&rt, *raw, signals.as_ref()) {
                    Ok(v) => v,
                    Err(_) => return Ok(Applied::Rejected("invalid_reward")),
                },
            };
            let outcome = state
                .store
                .reward(&RewardRequest {
                    policy: rt.id(),
                    event_id,
                    action: action.as_deref(),
                    reward: value,
                    rules: &rt.rules,
                    now_ms: received_at.timestamp_millis(),
                    reward_id: Some(&reward_id.to_string()),
                })
                .await?;
            let action = match outcome {
                RewardOutcome::Learned(a)
                | RewardOutcome::Accumulated(a)
                // Applied before a crash: its log row has the same key, so
                // logging it again cannot duplicate it.
                | RewardOutcome::Duplicate(a) => a,
                RewardOutcome::UnknownEvent => return Ok(Applied::Rejected("unknown_event")),
                RewardOutcome::Expired => return Ok(Applied::Rejected("expired")),
                RewardOutcome::AlreadyRewarded => {
                    return Ok(Applied::Rejected("already_rewarded"));
                }
                RewardOutcome::NotActivated => return Ok(Applied::Rejected("not_activated")),
                RewardOutcome::UnknownAction => return Ok(Applied::Rejected("unknown_action")),
            };
            rewarded(
                state,
                &rt,
                *reward_id,
                event_id,
                action,
                value,
                signals.as_ref(),
                *received_at,
            )
            .await;
            Ok(Applied::Done)
        }
        Op::Activate {
            policy,
            event_id,
            activated_at,
        } => {
            let Some(rt) = runtime_of(state, policy.as_deref(), event_id).await? else {
                return Ok(Applied::Rejected("unknown_event"));
            };
            let outcome = state
                .store
                .activate(
                    rt.id(),
                    event_id,
                    &rt.rules,
                    activated_at.timestamp_millis(),
                )
                .await?;
            match outcome {
                ActivateOutcome::Activated => {
                    state.log.record(LogRecord::Activation(ActivationRow {
                        event_id: event_id.clone(),
                        policy: rt.id().to_string(),
                        activated_at: *activated_at,
                    }));
                    Ok(Applied::Done)
                }
                ActivateOutcome::AlreadyActive => Ok(Applied::Done),
                ActivateOutcome::NotDeferred => Ok(Applied::Rejected("not_deferred")),
                ActivateOutcome::UnknownEvent => Ok(Applied::Rejected("unknown_event")),
                ActivateOutcome::Expired => Ok(Applied::Rejected("activation_expired")),
            }
        }
    }
}
