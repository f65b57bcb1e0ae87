//! Rewards and activations: what the handlers and the outbox replay share.

use super::Service;
use super::decide::DecideResponse;
use crate::guardrails::{self, Exclusion, HistoryStat, SendRecord, Situation};
use crate::log::{JsonText, LogRecord, RewardRow};
use crate::policy::RewardError;
use crate::runtime::PolicyRuntime;
use crate::store::{BudgetSlot, Reservation, SendReservation, StoreError};
use std::collections::BTreeMap;

/// A reward request that cannot stand for a reward of this policy.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RewardInputError {
    /// The number or the signals are refused; `signals` says which was sent.
    #[error("{error}")]
    Invalid {
        /// Why.
        #[source]
        error: RewardError,
        /// The reward came as signals.
        signals: bool,
    },
    /// Neither or both of `reward` and `signals`.
    #[error("give exactly one of `reward` or `signals`")]
    NotExactlyOne,
}

/// The reward `raw` (a number) or `signals` stand for under `runtime`'s
/// policy, checked against its declared range and signal names.
pub fn reward_value(
    runtime: &PolicyRuntime,
    raw: Option<f64>,
    signals: Option<&BTreeMap<String, f64>>,
) -> Result<f64, RewardInputError> {
    let spec = runtime.policy.spec();
    match (raw, signals) {
        (Some(r), None) => spec
            .reward
            .check(r)
            .map_err(|error| RewardInputError::Invalid {
                error,
                signals: false,
            }),
        (None, Some(signals)) => spec
            .reward
            .from_signals(signals.iter().map(|(k, v)| (k.as_str(), *v)))
            .map_err(|error| RewardInputError::Invalid {
                error,
                signals: true,
            }),
        _ => Err(RewardInputError::NotExactlyOne),
    }
}

/// Logs a reward the store applied, counts it, and — for policies with
/// outcome history features — notes it in the user's history.
#[allow(clippy::too_many_arguments)]
pub async fn rewarded(
    svc: &Service,
    runtime: &PolicyRuntime,
    reward_id: uuid::Uuid,
    event_id: &str,
    action: String,
    value: f64,
    signals: Option<&BTreeMap<String, f64>>,
    received_at: chrono::DateTime<chrono::Utc>,
) {
    let kind = if signals.is_some() {
        "signals"
    } else {
        "reward"
    };
    svc.metrics
        .rewards
        .with_label_values(&[runtime.id(), kind])
        .inc();
    runtime.monitor.reward(
        super::unix_ms(),
        runtime.policy.spec().arm_index(&action),
        value,
        false,
    );
    svc.log.record(LogRecord::Reward(RewardRow {
        reward_id,
        event_id: event_id.to_string(),
        policy: runtime.id().to_string(),
        action,
        reward: value,
        signals: signals.map(JsonText::of),
        is_default: false,
        received_at,
    }));
    note_outcome(svc, runtime, event_id, value).await;
}

/// Records a send's reward in its user's history, where an outcome-rate
/// feature reads it. Best effort: a store failure only leaves the rate a
/// little stale (the reward itself is already learned).
async fn note_outcome(svc: &Service, runtime: &PolicyRuntime, event_id: &str, value: f64) {
    let Some(g) = &runtime.policy.spec().guardrails else {
        return;
    };
    if !g
        .history
        .iter()
        .any(|f| matches!(f.stat, HistoryStat::OutcomeRate { .. }))
    {
        return;
    }
    let Ok(Some(response)) = svc.store.event_response(runtime.id(), event_id).await else {
        return;
    };
    let Ok(response) = stored_response(runtime, event_id, &response) else {
        return;
    };
    if let Some(user) = &response.user {
        let noted = svc.store.note_outcome(user, event_id, value).await;
        svc.store_result("note_outcome", &noted);
    }
}

/// Whether a deferred decision may be activated now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActivationCheck {
    /// Nothing to check (no guardrails, a hold, or an unknown event that
    /// the store's activation will answer for), or the send is reserved.
    Allowed,
    /// Activating it would break this rule: the caller must not deliver.
    Refused(Exclusion),
}

/// Checks and reserves the send of a deferred decision at activation: a
/// deferred send counts when it is activated, against the caps, gap,
/// recovery, quiet hours and budgets at that moment. Retries of an
/// activation count once. A store failure is an error (the activation is
/// refused rather than risk a cap).
pub async fn reserve_activation(
    svc: &Service,
    runtime: &PolicyRuntime,
    event_id: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<ActivationCheck, StoreError> {
    let spec = runtime.policy.spec();
    let Some(g) = &spec.guardrails else {
        return Ok(ActivationCheck::Allowed);
    };
    let Some(response) = svc.store.event_response(spec.id.as_str(), event_id).await? else {
        return Ok(ActivationCheck::Allowed);
    };
    let response = stored_response(runtime, event_id, &response)
        .map_err(|e| StoreError::Corrupt(format!("stored response: {e}")))?;
    let Some(arm) = spec.arm_index(&response.action).filter(|a| g.send[*a]) else {
        return Ok(ActivationCheck::Allowed);
    };
    if !response.deferred {
        return Ok(ActivationCheck::Allowed);
    }
    let tz = response
        .timezone
        .as_deref()
        .and_then(guardrails::parse_timezone)
        .unwrap_or(g.default_tz);
    let now_ms = now.timestamp_millis();
    let slots = budget_slots(g, &spec.id, now_ms);
    let user = response.user.as_deref();
    for _ in 0..4 {
        let history = match user {
            Some(u) => svc.store.user_history(u).await?,
            None => Default::default(),
        };
        let used = svc.store.budget_used(&slots).await?;
        let eligibility = guardrails::eligibility(
            g,
            &Situation {
                policy: &spec.id,
                now_ms,
                tz,
                history: user.map(|_| &history),
                budget_used: &used,
                unavailable: false,
                excluded: &[],
            },
        );
        if let Some(reason) = eligibility.reasons[arm] {
            // Its own earlier reservation (a retried activation) is no
            // reason to refuse it.
            if history.sends.iter().any(|s| s.event_id == event_id) {
                return Ok(ActivationCheck::Allowed);
            }
            return Ok(ActivationCheck::Refused(reason));
        }
        let at = eligibility.send_at[arm].unwrap_or(now_ms);
        let send = Send {
            g,
            policy: &spec.id,
            arm: &response.action,
            event_id,
            user,
            at_ms: at,
            version: history.version,
            budgets: &slots,
            now_ms,
        };
        let reserved = reserve(svc, &send).await?;
        match reserved {
            Reservation::Reserved | Reservation::Duplicate => return Ok(ActivationCheck::Allowed),
            Reservation::Conflict | Reservation::BudgetSpent => continue,
        }
    }
    // The user's history kept moving: refuse rather than over-send.
    Ok(ActivationCheck::Refused(Exclusion::Cap))
}

/// A send to reserve for a decision (at decide time, or at activation).
pub(super) struct Send<'a> {
    pub g: &'a guardrails::Guardrails,
    pub policy: &'a str,
    pub arm: &'a str,
    pub event_id: &'a str,
    pub user: Option<&'a str>,
    pub at_ms: i64,
    /// The user's history version the decision was made on.
    pub version: u64,
    pub budgets: &'a [BudgetSlot],
    pub now_ms: i64,
}

/// Adds the send to the user's history and its budgets, atomically
/// against every concurrent reservation (see [`crate::store::users`]).
pub(super) async fn reserve(svc: &Service, s: &Send<'_>) -> Result<Reservation, StoreError> {
    let record = SendRecord {
        event_id: s.event_id.to_string(),
        at_ms: s.at_ms,
        policy: s.policy.to_string(),
        arm: s.arm.to_string(),
        groups: s.g.groups.clone(),
        outcome: None,
    };
    svc.store
        .reserve_send(&SendReservation {
            user: s.user,
            send: &record,
            version: s.version,
            budgets: s.budgets,
            retention_ms: s.g.retention_ms(),
            now_ms: s.now_ms,
        })
        .await
}

/// The budget windows a send at `now_ms` counts in.
pub fn budget_slots(g: &guardrails::Guardrails, policy: &str, now_ms: i64) -> Vec<BudgetSlot> {
    g.budgets
        .iter()
        .map(|b| BudgetSlot {
            scope: match &b.scope {
                guardrails::Scope::Group(name) => format!("group:{name}"),
                _ => format!("policy:{policy}"),
            },
            window: b.window(now_ms),
            max: b.max,
            // Until the window has passed, and a minute for clock skew.
            ttl_ms: (b.window(now_ms) + 1) * b.per_ms - now_ms + 60_000,
        })
        .collect()
}

/// A pending event's stored response, read back.
fn stored_response(
    runtime: &PolicyRuntime,
    event_id: &str,
    bytes: &[u8],
) -> Result<DecideResponse, crate::store::compact::CodecError> {
    let spec = runtime.policy.spec();
    let arms: &[String] = match spec.mode {
        crate::policy::Mode::Disjoint => &spec.arms,
        crate::policy::Mode::Shared => &[],
    };
    super::stored::decode(bytes, event_id, &spec.id, arms)
}
