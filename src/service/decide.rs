//! Deciding: guardrails first, then score → explore → sample over the
//! eligible arms, then store the event (or queue it while the store is
//! away) and log the decision.

use super::Service;
use super::stored;
use crate::features::{FeatureValue, Features};
use crate::guardrails::{self, Eligibility, Exclusion, Guardrails, Situation, Tz};
use crate::log::{DecisionRow, JsonText, LogRecord};
use crate::monitor::{DecisionSample, GuardrailOutcome};
use crate::policy::{Candidate, DecideError, DecideRequest, Decision, Followed, Learning, Mode};
use crate::runtime::PolicyRuntime;
use crate::store::outbox::Op;
use crate::store::{EventRecord, Recorded, Reservation, Slot};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;

/// How often a decision is made again after its send could not be
/// reserved (another decision for the same user got there first, or a
/// budget ran out) before every send is held.
const MAX_ATTEMPTS: usize = 4;

/// One decision request, parsed and checked for shape by the caller.
pub struct DecideInput {
    /// The policy.
    pub runtime: Arc<PolicyRuntime>,
    /// The event id (given or generated).
    pub event_id: String,
    /// Context features.
    pub context: Features,
    /// The context as sent (what the log keeps when nothing is added).
    pub context_text: Box<RawValue>,
    /// Shared mode: the candidates.
    pub actions: Vec<Candidate<Features>>,
    /// Arms or candidates the caller excludes.
    pub excluded: Vec<String>,
    /// Slate size.
    pub k: usize,
    /// Learned (and, for sends, counted) only once activated.
    pub defer: bool,
    /// The user the decision is for.
    pub user: Option<String>,
    /// The user's time zone.
    pub timezone: Option<Tz>,
    /// The decision's clock.
    pub now: DateTime<Utc>,
    /// The caller's own choice (apprentice mode follows it; other modes
    /// ignore it).
    pub default_action: Option<String>,
}

/// A request the policy cannot decide.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecideFailure {
    /// The policy refused the request (names a field).
    #[error(transparent)]
    Invalid(#[from] DecideError),
    /// The policy's guardrails require `user`.
    #[error("this policy's guardrails need the `user` the decision is for")]
    UserRequired,
    /// The context sets a feature Nudge computes from the user's history.
    #[error("`{0}` is a history feature: Nudge computes it from the user's sends; do not send it")]
    HistoryFeatureSent(String),
    /// The event id was decided by another policy (rewards name only the
    /// event, so an id is unique across policies while it is remembered).
    #[error("event_id was already decided by policy `{0}`; event ids are unique across policies")]
    EventIdTaken(String),
    /// An apprentice policy got no `default_action`.
    #[error("this policy is in apprentice mode: send your own choice as `default_action`")]
    DefaultRequired,
    /// `default_action` names no arm or candidate.
    #[error("default_action {0:?} is not an arm or candidate of this request")]
    DefaultUnknown(String),
    /// An apprentice decision asked for a slate.
    #[error("apprentice mode follows one action: k must be 1")]
    DefaultSlate,
    /// `default_action` is excluded: by the caller, or by a guardrail.
    #[error("default_action {action:?} cannot be chosen now: excluded by {reason}")]
    DefaultIneligible {
        /// The action.
        action: String,
        /// Why (`excluded`, `cap`, `quiet_hours`, …).
        reason: &'static str,
    },
}

impl DecideFailure {
    /// The request field at fault.
    pub fn field(&self) -> Option<String> {
        match self {
            DecideFailure::Invalid(e) => e.field(),
            DecideFailure::UserRequired => Some("user".into()),
            DecideFailure::HistoryFeatureSent(name) => Some(format!("context.{name}")),
            DecideFailure::EventIdTaken(_) => Some("event_id".into()),
            DecideFailure::DefaultRequired
            | DecideFailure::DefaultUnknown(_)
            | DecideFailure::DefaultIneligible { .. } => Some("default_action".into()),
            DecideFailure::DefaultSlate => Some("k".into()),
        }
    }
}

/// One ranked candidate of a decision response.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema, PartialEq)]
pub struct Ranked {
    /// Action id.
    pub id: String,
    /// For slate positions: the probability of this action at this position
    /// given the positions before it. For the rest: its probability of
    /// being chosen first (exactly 0 for an excluded arm).
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub probability: f64,
    /// Why this arm could not be chosen: `excluded` (by the caller), `cap`,
    /// `gap`, `quiet_hours`, `budget`, `recovery`, or `unavailable` (the
    /// user's history could not be read, so sends are held). Absent for
    /// eligible arms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::http::openapi::ExcludedBy>)]
    pub excluded_by: Option<Exclusion>,
}

/// A decision.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema, PartialEq)]
pub struct DecideResponse {
    /// The event id (echoed or generated).
    #[schema(value_type = crate::http::openapi::EventId)]
    pub event_id: String,
    /// Policy id.
    #[schema(value_type = crate::http::openapi::PolicyId)]
    pub policy: String,
    /// The policy definition's version.
    pub policy_version: u32,
    /// The model version the decision was made with.
    pub model_version: u64,
    /// The chosen action (slate position 1).
    pub action: String,
    /// Its propensity: the probability it was chosen with (never 0).
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub probability: f64,
    /// Every candidate: the slate first, in order, then the other eligible
    /// ones by decreasing probability, then the excluded ones (probability
    /// 0, with `excluded_by`).
    pub ranking: Vec<Ranked>,
    /// Whether the decision waits for activation.
    pub deferred: bool,
    /// The user, echoed (guardrailed policies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::http::openapi::UserId>)]
    pub user: Option<String>,
    /// The time zone the guardrails used (guardrailed policies): the
    /// request's, or the policy's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// For a send: when to deliver it (RFC 3339, UTC): now, a delivery
    /// slot, or the end of the user's quiet hours; never inside them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub send_at: Option<String>,
    /// Only the fallback was eligible (the policy's guardrails allowed no
    /// send): it was taken with probability 1. Always present.
    #[serde(default)]
    #[schema(required = true)]
    pub forced: bool,
}

/// What the guardrails settled for one decision.
struct Guarded {
    eligibility: Eligibility,
    /// The context with the history features added.
    context: Features,
    decision: Decision,
    tz: Tz,
    /// Apprentice mode: what the policy itself would have done.
    followed: Option<Followed>,
}

/// Decides, stores and logs one request; returns the response JSON (the
/// first answer again, for a retried event id).
pub async fn decide(svc: &Service, input: DecideInput) -> Result<String, DecideFailure> {
    let runtime = input.runtime.clone();
    let policy = &runtime.policy;
    let spec = policy.spec();
    let model = runtime.decision_model();
    let guarded = match &spec.guardrails {
        Some(g) => Some(decide_guarded(svc, &input, g).await?),
        None => None,
    };
    let follow = following(&input)?;
    let mut followed = guarded.as_ref().and_then(|g| g.followed);
    let arm_ids: Vec<&str> = match spec.mode {
        Mode::Disjoint => spec.arms.iter().map(String::as_str).collect(),
        Mode::Shared => input.actions.iter().map(|a| a.id.as_str()).collect(),
    };
    let decision = match &guarded {
        Some(g) => g.decision.clone(),
        None => {
            let mut decision = policy.decide(
                &model,
                &DecideRequest {
                    event_id: &input.event_id,
                    context: &input.context,
                    actions: &input.actions,
                    excluded: &input.excluded,
                    k: input.k,
                },
            )?;
            if let Some(default) = follow {
                let arm = arm_ids
                    .iter()
                    .position(|id| *id == default)
                    .expect("checked by `following`");
                followed = Some(follow_arm(&mut decision, arm, default, None)?);
            }
            decision
        }
    };
    let ids: Vec<&str> = decision.candidates.iter().map(|&c| arm_ids[c]).collect();
    let shadow = shadow_scores(&runtime, &decision, &input, guarded.as_ref(), &arm_ids);
    let chosen_arm = decision.candidates[decision.chosen()];
    let send_at = guarded
        .as_ref()
        .and_then(|g| g.eligibility.send_at[chosen_arm])
        .and_then(DateTime::from_timestamp_millis);
    let ranking = ranking(&decision, &ids, &arm_ids, guarded.as_ref());
    let response = DecideResponse {
        event_id: input.event_id.clone(),
        policy: spec.id.clone(),
        policy_version: spec.version,
        model_version: decision.model_version,
        action: ids[decision.chosen()].to_string(),
        probability: decision.propensity(),
        ranking,
        deferred: input.defer,
        user: guarded.as_ref().and(input.user.clone()),
        timezone: guarded.as_ref().map(|g| g.tz.name().to_string()),
        send_at: send_at.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true)),
        forced: guarded.as_ref().is_some_and(|g| g.eligibility.forced),
    };
    let response_json = serde_json::to_string(&response).expect("a response serialises");
    let stored_arms: &[String] = match spec.mode {
        Mode::Disjoint => &spec.arms,
        Mode::Shared => &[],
    };

    let now = input.now;
    let record = EventRecord {
        event_id: input.event_id.clone(),
        slots: decision
            .slate
            .iter()
            .enumerate()
            .map(|(i, slot)| Slot {
                action: ids[slot.index].to_string(),
                arm: decision.arm_of(slot.index, spec.mode) as u32,
                x: decision.vector(slot.index).to_vec(),
                // The weights the shadow estimates need, learned back with
                // the reward: the logged propensity, then each
                // challenger's probability of this action.
                aux: match (&shadow, i) {
                    (Some(scores), 0) => std::iter::once(decision.propensity())
                        .chain(scores.iter().map(|(_, p)| p[slot.index]))
                        .collect(),
                    _ => Vec::new(),
                },
            })
            .collect(),
        deadline_ms: now.timestamp_millis() + runtime.rules.window_ms,
        deferred: input.defer,
        response: stored::encode(&response, stored_arms),
    };
    let recorded = if svc.outbox.active() {
        // Earlier operations wait for the store: this one queues behind
        // them (the store is not even tried, so an outage costs no latency).
        None
    } else {
        let r = svc
            .store
            .record(
                spec.id.as_str(),
                &record,
                &runtime.rules,
                now.timestamp_millis(),
            )
            .await;
        svc.store_result("record", &r);
        Some(r)
    };
    let degraded = match recorded {
        // A retry: the first answer stands, and it is logged once.
        Some(Ok(Recorded::Existing(previous))) => {
            return match stored::decode(&previous, &input.event_id, &spec.id, stored_arms) {
                Ok(r) => Ok(serde_json::to_string(&r).expect("a response serialises")),
                Err(e) => {
                    // The first answer cannot be read back (corrupt, or the
                    // policy lost arms since): this answer stands, unlogged,
                    // rather than failing the retry.
                    tracing::error!(event = input.event_id, error = %e, "stored response unreadable");
                    Ok(response_json)
                }
            };
        }
        Some(Ok(Recorded::OtherPolicy(other))) => {
            return Err(DecideFailure::EventIdTaken(other));
        }
        Some(Ok(Recorded::New)) => false,
        // The store is unavailable: answer anyway, from the last model this
        // replica has, and queue the event for the store, so it is learned
        // from once the store is back. The decision row says `degraded`.
        None | Some(Err(_)) => {
            let queued = svc.outbox.push(Op::Record {
                policy: spec.id.clone(),
                event: record.clone(),
                now_ms: now.timestamp_millis(),
            });
            if let Err(e) = queued {
                // Still answered and logged, but it cannot be learned from.
                tracing::error!(error = %e, "outbox write failed; decision will not be learned");
                svc.metrics
                    .store_errors
                    .with_label_values(&["outbox"])
                    .inc();
            }
            svc.metrics
                .degraded_decisions
                .with_label_values(&[&spec.id])
                .inc();
            true
        }
    };

    if let Some(f) = followed {
        runtime.apprentice.note(f);
    }
    let action_label = match spec.mode {
        Mode::Disjoint => response.action.as_str(),
        Mode::Shared => "*",
    };
    svc.metrics
        .decisions
        .with_label_values(&[&spec.id, action_label])
        .inc();
    runtime.monitor.decision(&DecisionSample {
        now_ms: super::unix_ms(),
        arm: (spec.mode == Mode::Disjoint).then_some(chosen_arm),
        propensity: response.probability,
        eligible: decision.probabilities.iter().filter(|p| **p > 0.0).count(),
        degraded,
        guardrails: guarded.as_ref().map_or_else(Default::default, |g| {
            GuardrailOutcome::of(
                g.eligibility.forced,
                g.eligibility.reasons.iter().flatten().copied(),
            )
        }),
        entropy: crate::monitor::normalised_entropy(&decision.probabilities),
    });
    if let Some(g) = &guarded {
        for reason in g.eligibility.reasons.iter().flatten() {
            svc.metrics
                .guardrail_exclusions
                .with_label_values(&[&spec.id, reason.name()])
                .inc();
        }
        if g.eligibility.forced {
            svc.metrics
                .guardrail_forced
                .with_label_values(&[&spec.id])
                .inc();
        }
    }
    let context = match &guarded {
        // The history features are part of what the model saw.
        Some(g)
            if !spec
                .guardrails
                .as_ref()
                .is_some_and(|r| r.history.is_empty()) =>
        {
            JsonText::of(&g.context)
        }
        _ => JsonText::verbatim(input.context_text).unwrap_or_else(|| JsonText::of(&input.context)),
    };
    let guardrails_json = guarded.as_ref().map(|g| {
        JsonText::of(&GuardrailsLog {
            user: input.user.as_deref(),
            timezone: g.tz.name(),
            forced: g.eligibility.forced,
            send_at: response.send_at.as_deref(),
        })
    });
    svc.log.record(LogRecord::Decision(DecisionRow {
        event_id: input.event_id,
        policy: spec.id.clone(),
        policy_version: spec.version as i32,
        model_version: decision.model_version as i64,
        decided_at: now,
        context,
        actions: (spec.mode == Mode::Shared).then(|| JsonText::of(&input.actions)),
        candidates: JsonText::of(&response.ranking_in_request_order(&arm_ids)),
        action: response.action.clone(),
        probability: response.probability,
        slate: (input.k > 1).then(|| JsonText::of(&response.ranking[..input.k])),
        deferred: input.defer,
        degraded,
        guardrails: guardrails_json,
        challengers: shadow.as_ref().filter(|s| s.len() > 1).map(|scores| {
            let mut out = serde_json::Map::new();
            // The greedy scorer (first) is the model's own; the log keeps
            // the declared challengers.
            for (id, probs) in &scores[1..] {
                let dist: serde_json::Map<String, serde_json::Value> = ids
                    .iter()
                    .zip(probs)
                    .map(|(a, p)| ((*a).to_string(), serde_json::Value::from(*p)))
                    .collect();
                out.insert(id.to_string(), serde_json::Value::Object(dist));
            }
            JsonText::of(&out)
        }),
    }));
    Ok(response_json)
}

/// The decision row's `guardrails` column.
#[derive(Serialize)]
struct GuardrailsLog<'a> {
    user: Option<&'a str>,
    timezone: &'a str,
    forced: bool,
    send_at: Option<&'a str>,
}

impl DecideResponse {
    /// Every candidate in request (arm) order, as the log keeps them.
    fn ranking_in_request_order<'a>(&'a self, ids: &[&str]) -> Vec<&'a Ranked> {
        let mut out: Vec<&Ranked> = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(r) = self.ranking.iter().find(|r| r.id == *id) {
                out.push(r);
            }
        }
        out
    }
}

/// Reads the user's history and the budgets, decides among the eligible
/// arms, and reserves the send (for decisions not deferred). A reservation
/// refused because the history moved on (a concurrent decision for the
/// user) or a budget ran out is decided again on fresh data, so every
/// logged distribution is the one the action was drawn from, and caps and
/// budgets hold exactly. A store that cannot be read holds every send.
async fn decide_guarded(
    svc: &Service,
    input: &DecideInput,
    g: &Guardrails,
) -> Result<Guarded, DecideFailure> {
    let runtime = &input.runtime;
    let spec = runtime.policy.spec();
    if g.require_user && input.user.is_none() {
        return Err(DecideFailure::UserRequired);
    }
    for h in &g.history {
        if input
            .context
            .0
            .iter()
            .any(|(name, _)| name.as_str() == h.name)
        {
            return Err(DecideFailure::HistoryFeatureSent(h.name.clone()));
        }
    }
    let mut excluded = Vec::with_capacity(input.excluded.len());
    for id in &input.excluded {
        let arm = spec
            .arm_index(id)
            .ok_or_else(|| DecideError::UnknownExcluded(id.clone()))?;
        excluded.push(arm);
    }
    let tz = input.timezone.unwrap_or(g.default_tz);
    let now_ms = input.now.timestamp_millis();
    let slots = super::reward::budget_slots(g, &spec.id, now_ms);
    let user = input.user.as_deref();
    let mut force_hold = false;
    for attempt in 0..=MAX_ATTEMPTS {
        let mut unavailable = force_hold || attempt == MAX_ATTEMPTS || svc.outbox.active();
        let mut history = guardrails::UserHistory::default();
        if !unavailable && let Some(user) = user {
            let read = svc.store.user_history(user).await;
            svc.store_result("user_history", &read);
            match read {
                Ok(h) => history = h,
                Err(_) => unavailable = true,
            }
        }
        let mut used = vec![0; slots.len()];
        if !unavailable && !slots.is_empty() {
            let read = svc.store.budget_used(&slots).await;
            svc.store_result("budget_used", &read);
            match read {
                Ok(u) => used = u,
                Err(_) => unavailable = true,
            }
        }
        let situation = Situation {
            policy: &spec.id,
            now_ms,
            tz,
            history: user.map(|_| &history),
            budget_used: &used,
            unavailable,
            excluded: &excluded,
        };
        let eligibility = guardrails::eligibility(g, &situation);
        let mut context = input.context.clone();
        // Without a user or a readable history the features read an empty
        // one: no sends (counts 0; recency and rates take their defaults).
        for (name, value) in guardrails::history_features(g, &spec.id, &history, now_ms) {
            context.0.push((name.into(), FeatureValue::Number(value)));
        }
        let ineligible = eligibility.ineligible_ids(&spec.arms);
        let mut decision = runtime.policy.decide(
            &runtime.decision_model(),
            &DecideRequest::<Features, Features> {
                event_id: &input.event_id,
                context: &context,
                actions: &[],
                excluded: &ineligible,
                k: input.k,
            },
        )?;
        let followed = match following(input)? {
            Some(default) => {
                let arm = spec.arm_index(default).expect("checked by `following`");
                Some(follow_arm(&mut decision, arm, default, Some(&eligibility))?)
            }
            None => None,
        };
        let arm = decision.candidates[decision.chosen()];
        let at = eligibility.send_at[arm];
        let done = Guarded {
            eligibility,
            context,
            decision,
            tz,
            followed,
        };
        // Holds, deferred decisions (counted when activated) and decisions
        // that could not read the store reserve nothing.
        let (Some(at), false, false) = (at, input.defer, unavailable) else {
            return Ok(done);
        };
        let send = super::reward::Send {
            g,
            policy: &spec.id,
            arm: &spec.arms[arm],
            event_id: &input.event_id,
            user,
            at_ms: at,
            version: history.version,
            budgets: &slots,
            now_ms,
        };
        let reserved = super::reward::reserve(svc, &send).await;
        svc.store_result("reserve_send", &reserved);
        match reserved {
            Ok(Reservation::Reserved | Reservation::Duplicate) => return Ok(done),
            Ok(Reservation::Conflict | Reservation::BudgetSpent) => {
                svc.metrics
                    .guardrail_retries
                    .with_label_values(&[&spec.id])
                    .inc();
            }
            // The send cannot be counted: hold rather than risk a cap.
            Err(_) => force_hold = true,
        }
    }
    unreachable!("the last attempt holds every send and returns")
}

/// The distributions of the model's greedy policy (first; for progressive
/// validation) and of each shadow challenger over the decision's
/// candidates (aligned with `decision.candidates`): the same request,
/// context (with the history features) and eligible set, scored with the
/// live model. `None` for slates (not evaluated yet), or if a scorer
/// cannot score the request (logged; the decision stands).
fn shadow_scores<'a>(
    runtime: &'a PolicyRuntime,
    decision: &Decision,
    input: &DecideInput,
    guarded: Option<&Guarded>,
    arm_ids: &[&str],
) -> Option<Vec<(&'a str, Vec<f64>)>> {
    if input.k != 1 {
        return None;
    }
    let context = guarded.map_or(&input.context, |g| &g.context);
    let excluded: Vec<String> = (0..arm_ids.len())
        .filter(|i| !decision.candidates.contains(i))
        .map(|i| arm_ids[i].to_string())
        .collect();
    let model = runtime.model();
    let mut out = Vec::with_capacity(1 + runtime.challengers.len());
    for c in std::iter::once(&runtime.greedy).chain(&runtime.challengers) {
        let scored = c.decide(
            &model,
            &DecideRequest {
                event_id: &input.event_id,
                context,
                actions: &input.actions,
                excluded: &excluded,
                k: 1,
            },
        );
        match scored {
            Ok(d) if d.candidates == decision.candidates => out.push((c.id(), d.probabilities)),
            Ok(_) => {
                tracing::error!(
                    challenger = c.id(),
                    "challenger saw other candidates; shadow skipped"
                );
                return None;
            }
            Err(e) => {
                tracing::warn!(challenger = c.id(), error = %e, "challenger could not score; shadow skipped");
                return None;
            }
        }
    }
    Some(out)
}

/// The caller's choice an apprentice policy follows (`None` in the other
/// modes, which ignore it), checked to name an arm or candidate.
fn following(input: &DecideInput) -> Result<Option<&str>, DecideFailure> {
    let spec = input.runtime.policy.spec();
    if spec.learning != Learning::Apprentice {
        return Ok(None);
    }
    let default = input
        .default_action
        .as_deref()
        .ok_or(DecideFailure::DefaultRequired)?;
    if input.k != 1 {
        return Err(DecideFailure::DefaultSlate);
    }
    let known = match spec.mode {
        Mode::Disjoint => spec.arm_index(default).is_some(),
        Mode::Shared => input.actions.iter().any(|a| a.id == default),
    };
    if !known {
        return Err(DecideFailure::DefaultUnknown(default.to_string()));
    }
    Ok(Some(default))
}

/// Replaces the policy's draw with the caller's choice, model arm (or
/// request candidate) `arm`, which must be eligible.
fn follow_arm(
    decision: &mut Decision,
    arm: usize,
    default: &str,
    eligibility: Option<&Eligibility>,
) -> Result<Followed, DecideFailure> {
    let Some(position) = decision.candidates.iter().position(|&c| c == arm) else {
        let reason = eligibility
            .and_then(|e| e.reasons[arm])
            .map_or("excluded", Exclusion::name);
        return Err(DecideFailure::DefaultIneligible {
            action: default.to_string(),
            reason,
        });
    };
    Ok(decision.follow(position))
}

/// The slate in order with its position probabilities, then every other
/// eligible candidate by decreasing first-choice probability (ties in
/// request order), then the excluded ones with probability 0 and why.
fn ranking(
    decision: &Decision,
    ids: &[&str],
    all: &[&str],
    guarded: Option<&Guarded>,
) -> Vec<Ranked> {
    let mut out: Vec<Ranked> = decision
        .slate
        .iter()
        .map(|s| Ranked {
            id: ids[s.index].to_string(),
            probability: s.probability,
            excluded_by: None,
        })
        .collect();
    let mut rest: Vec<usize> = (0..ids.len())
        .filter(|i| !decision.slate.iter().any(|s| s.index == *i))
        .collect();
    rest.sort_by(|a, b| decision.probabilities[*b].total_cmp(&decision.probabilities[*a]));
    out.extend(rest.into_iter().map(|i| Ranked {
        id: ids[i].to_string(),
        probability: decision.probabilities[i],
        excluded_by: None,
    }));
    for (arm, id) in all.iter().enumerate() {
        if decision.candidates.contains(&arm) {
            continue;
        }
        // Without guardrails only the caller excludes arms.
        let reason = guarded
            .and_then(|g| g.eligibility.reasons[arm])
            .unwrap_or(Exclusion::Excluded);
        out.push(Ranked {
            id: id.to_string(),
            probability: 0.0,
            excluded_by: Some(reason),
        });
    }
    out
}
