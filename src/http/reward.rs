//! `POST /v1/reward` and `POST /v1/events/{event_id}/activate`.

use super::error::ApiError;
use super::openapi::{AcceptedStatus, ActionId, EventId, PolicyId, SignalValue};
use super::{AppState, check_event_id, parse_json, read_body, unavailable};
use crate::log::{ActivationRow, LogRecord};
use crate::policy::RewardError;
use crate::runtime::PolicyRuntime;
use crate::service::{self, reward::ActivationCheck, reward::RewardInputError};
use crate::store::outbox::Op;
use crate::store::{ActivateOutcome, RewardOutcome, RewardRequest, StoreError};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use utoipa::ToSchema;

/// A reward for an earlier decision: a number, or named outcome signals
/// that the policy's reward function turns into one. Exactly one of the
/// two.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RewardBody {
    /// The decision's event id.
    #[schema(value_type = EventId)]
    pub event_id: String,
    /// The reward (exclusive with `signals`): within the policy's `min` and
    /// `max` (`GET /v1/policies/{id}`, `reward`), which are never wider than
    /// ±1e12 (the schema's bounds); outside is 400 `reward_out_of_range`.
    pub reward: Option<f64>,
    /// Named signals (exclusive with `reward`), e.g. `{"opened": 1,
    /// "dwell_seconds": 12.5}`: each a signal the policy's reward function
    /// declares (else 400 `unknown_signal`), whose weighted sum must lie in
    /// the policy's range (else 400 `reward_out_of_range`).
    #[schema(value_type = Option<BTreeMap<String, SignalValue>>)]
    pub signals: Option<BTreeMap<String, f64>>,
    /// For slates: which ranked action is rewarded (default: the first);
    /// one of the decision's slate (else 400 `unknown_action`).
    #[schema(value_type = Option<ActionId>)]
    pub action: Option<String>,
    /// The policy, if the caller knows it (saves a lookup); naming another
    /// policy than the event's is 404 `unknown_event`.
    #[schema(value_type = Option<PolicyId>)]
    pub policy: Option<String>,
}

/// Accepted.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// The event id.
    #[schema(value_type = EventId)]
    pub event_id: String,
    /// `learned` (applied now), `accumulated` (summed until the window
    /// closes), `duplicate` (this very reward was applied before),
    /// `activated`, or `queued` (the model store is unavailable: kept in the
    /// outbox and applied, in order, when it answers again).
    #[schema(value_type = AcceptedStatus)]
    pub status: String,
}

fn unknown_event(event_id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_event",
        format!("no open decision {event_id:?} (never made, window closed, or forgotten)"),
    )
    .at("event_id")
}

/// The policy of `event_id`: the one named in the request, or the store's.
/// `Ok(None)` when only the store could tell and it is unavailable (or
/// operations are queuing): the request is then queued, and the policy
/// looked up at replay.
async fn resolve(
    state: &AppState,
    event_id: &str,
    named: Option<&str>,
) -> Result<Option<Arc<PolicyRuntime>>, ApiError> {
    if let Some(p) = named {
        return state.policy(p, "policy").map(Some);
    }
    if state.outbox.active() {
        return Ok(None);
    }
    let found = state.store.event_policy(event_id).await;
    state.store_result("event_policy", &found);
    match found {
        Ok(Some(p)) => state.policy(&p, "policy").map(Some),
        Ok(None) => Err(unknown_event(event_id)),
        Err(e) if e.is_transient() => Ok(None),
        Err(e) => Err(unavailable(e)),
    }
}

fn reward_error(e: RewardError, signals: bool) -> ApiError {
    let field = match &e {
        RewardError::UnknownSignal(name) | RewardError::NotFinite(name) if signals => {
            format!("signals.{name}")
        }
        _ if signals => "signals".to_string(),
        _ => "reward".to_string(),
    };
    let code = match e {
        RewardError::UnknownSignal(_) => "unknown_signal",
        RewardError::OutOfRange { .. } => "reward_out_of_range",
        RewardError::NotFinite(_) => "invalid_field",
    };
    ApiError::field(code, field, e.to_string())
}

/// The reward of a request, or the 400 that says why not.
fn value_of(
    runtime: &PolicyRuntime,
    raw: Option<f64>,
    signals: Option<&BTreeMap<String, f64>>,
) -> Result<f64, ApiError> {
    service::reward::reward_value(runtime, raw, signals).map_err(|e| match e {
        RewardInputError::Invalid { error, signals } => reward_error(error, signals),
        RewardInputError::NotExactlyOne => not_exactly_one(),
    })
}

/// `POST /v1/reward`.
///
/// While the model store is unavailable (or earlier operations are still
/// queued for it), a well-formed reward is acknowledged `202` with status
/// `queued`: it is kept in the outbox and applied, in order, when the store
/// answers again (see [`crate::store::outbox`]).
#[utoipa::path(
    post,
    path = "/v1/reward",
    request_body = RewardBody,
    responses(
        (status = 202, description = "Accepted: `learned`, `accumulated`, `duplicate`, or `queued` while the store is unavailable", body = Accepted),
        (status = 400, description = "An invalid reward, `field` naming the culprit: `invalid_json`, `invalid_body`, \
            `invalid_field`, `invalid_event_id`, `invalid_policy_id` (the schema's rules); `unknown_signal`, \
            `reward_out_of_range`, `unknown_action` (the policy's and the decision's)",
            body = super::error::ErrorBody),
        (status = 404, description = "`unknown_event` (never decided, window closed, forgotten, or another policy's) or `unknown_policy`", body = super::error::ErrorBody),
        (status = 409, description = "`already_rewarded` (aggregation `first`), or `not_activated` (a deferred decision)", body = super::error::ErrorBody),
        (status = 413, description = "`body_too_large`: over `NUDGE_MAX_BODY_BYTES`", body = super::error::ErrorBody),
        (status = 503, description = "`store_unavailable`: the model store failed and the outbox cannot take the reward", body = super::error::ErrorBody),
    )
)]
pub async fn reward(
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body = read_body(payload, state.settings.max_body_bytes).await?;
    let body: RewardBody = parse_json(&body)?;
    check_event_id(&body.event_id, "event_id")?;
    if body.reward.is_some() == body.signals.is_some() {
        // Checked before the policy is known: a queued reward must be
        // well-formed too.
        return Err(not_exactly_one());
    }
    let runtime = resolve(&state, &body.event_id, body.policy.as_deref()).await?;
    let value = match &runtime {
        Some(rt) => Some(value_of(rt, body.reward, body.signals.as_ref())?),
        None => None,
    };
    let reward_id = uuid::Uuid::now_v7();
    let now = chrono::Utc::now();
    let outcome = match (&runtime, value) {
        (Some(rt), Some(value)) if !state.outbox.active() => {
            let outcome = state
                .store
                .reward(&RewardRequest {
                    policy: rt.id(),
                    event_id: &body.event_id,
                    action: body.action.as_deref(),
                    reward: value,
                    rules: &rt.rules,
                    now_ms: now.timestamp_millis(),
                    reward_id: Some(&reward_id.to_string()),
                })
                .await;
            queue_unless_stored(&state, "reward", outcome)?
        }
        _ => None,
    };
    let Some(outcome) = outcome else {
        return queue(
            &state,
            Op::Reward {
                reward_id,
                policy: runtime.as_ref().map(|rt| rt.id().to_string()),
                event_id: body.event_id.clone(),
                action: body.action.clone(),
                value,
                raw: body.reward,
                signals: body.signals.clone(),
                received_at: now,
            },
        );
    };
    let runtime = runtime.expect("a store outcome needs the policy");
    let value = value.expect("a store outcome needs the value");
    let (status, action) = match outcome {
        RewardOutcome::Learned(action) => ("learned", action),
        RewardOutcome::Accumulated(action) => ("accumulated", action),
        // A fresh id cannot have been applied before.
        RewardOutcome::Duplicate(action) => ("duplicate", action),
        RewardOutcome::UnknownEvent | RewardOutcome::Expired => {
            return Err(unknown_event(&body.event_id));
        }
        RewardOutcome::AlreadyRewarded => return Err(already_rewarded()),
        RewardOutcome::NotActivated => return Err(not_activated()),
        RewardOutcome::UnknownAction => {
            return Err(ApiError::field(
                "unknown_action",
                "action",
                "this action is not in the decision's slate",
            ));
        }
    };
    service::reward::rewarded(
        &state,
        &runtime,
        reward_id,
        &body.event_id,
        action,
        value,
        body.signals.as_ref(),
        now,
    )
    .await;
    state
        .metrics
        .latency
        .with_label_values(&["reward"])
        .observe(started.elapsed().as_secs_f64());
    Ok(HttpResponse::Accepted().json(Accepted {
        event_id: body.event_id,
        status: status.into(),
    }))
}

/// A store call's outcome on the request path, or `None` when the operation
/// must be queued in the outbox instead (the store is unavailable).
fn queue_unless_stored<T>(
    state: &AppState,
    op: &str,
    outcome: Result<T, StoreError>,
) -> Result<Option<T>, ApiError> {
    state.store_result(op, &outcome);
    match outcome {
        Ok(o) => Ok(Some(o)),
        Err(e) if e.is_transient() => Ok(None),
        Err(e) => Err(unavailable(e)),
    }
}

/// Keeps `op` in the outbox and answers 202 `queued` (503 if the outbox
/// cannot take it: then nothing was acknowledged).
fn queue(state: &AppState, op: Op) -> Result<HttpResponse, ApiError> {
    let event_id = op.event_id().to_string();
    state.outbox.push(op).map_err(unavailable)?;
    Ok(HttpResponse::Accepted().json(Accepted {
        event_id,
        status: "queued".into(),
    }))
}

fn not_exactly_one() -> ApiError {
    ApiError::field(
        "invalid_field",
        "reward",
        "send exactly one of `reward` (a number) or `signals` (an object of numbers)",
    )
}

fn already_rewarded() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "already_rewarded",
        "this decision was already rewarded (the policy learns the first reward)",
    )
    .at("event_id")
}

fn not_activated() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "not_activated",
        "a deferred decision takes rewards only after it is activated",
    )
    .at("event_id")
}

/// Optional body of an activation.
#[derive(Debug, Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ActivateBody {
    /// The policy, if the caller knows it.
    #[schema(value_type = Option<PolicyId>)]
    pub policy: Option<String>,
}

/// `POST /v1/events/{event_id}/activate`.
#[utoipa::path(
    post,
    path = "/v1/events/{event_id}/activate",
    params(("event_id" = EventId, Path, description = "The deferred decision's event id")),
    request_body(content = Option<ActivateBody>, description = "Optional: no body, a blank one, or an `ActivateBody`."),
    responses(
        (status = 200, description = "`activated` (or already active)", body = Accepted),
        (status = 202, description = "`queued`: the model store is unavailable; applied when it returns", body = Accepted),
        (status = 400, description = "`invalid_event_id` (the path), `invalid_json`, `invalid_body`, `invalid_field`, `invalid_policy_id`", body = super::error::ErrorBody),
        (status = 404, description = "`unknown_event` or `unknown_policy`", body = super::error::ErrorBody),
        (status = 409, description = "`not_deferred`, or `activation_expired` (the window is over)", body = super::error::ErrorBody),
        (status = 413, description = "`body_too_large`: over `NUDGE_MAX_BODY_BYTES`", body = super::error::ErrorBody),
        (status = 503, description = "`store_unavailable`: the model store failed and the outbox cannot take the activation", body = super::error::ErrorBody),
    )
)]
pub async fn activate(
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let event_id = path.into_inner();
    check_event_id(&event_id, "event_id")?;
    let body = read_body(payload, state.settings.max_body_bytes).await?;
    let body: ActivateBody = if body.iter().all(u8::is_ascii_whitespace) {
        ActivateBody::default()
    } else {
        parse_json(&body)?
    };
    let runtime = resolve(&state, &event_id, body.policy.as_deref()).await?;
    let now = state.clock.now();
    if let Some(rt) = runtime
        .as_ref()
        .filter(|rt| rt.policy.spec().guardrails.is_some())
    {
        // A deferred send counts when activated: check and reserve it now,
        // or refuse, so the caller does not deliver it. Without the store
        // there is no way to know the caps: refuse rather than over-send.
        if state.outbox.active() {
            return Err(unavailable("operations are queued for the store"));
        }
        let checked = service::reward::reserve_activation(&state, rt, &event_id, now).await;
        state.store_result("reserve_activation", &checked);
        match checked.map_err(unavailable)? {
            ActivationCheck::Allowed => {}
            ActivationCheck::Refused(reason) => {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "guardrail",
                    format!(
                        "activating this send now would break the policy's guardrails ({}); do not deliver it",
                        reason.name()
                    ),
                )
                .at("event_id"));
            }
        }
    }
    let outcome = match &runtime {
        Some(rt) if !state.outbox.active() => {
            let outcome = state
                .store
                .activate(rt.id(), &event_id, &rt.rules, now.timestamp_millis())
                .await;
            queue_unless_stored(&state, "activate", outcome)?
        }
        _ => None,
    };
    let Some(outcome) = outcome else {
        return queue(
            &state,
            Op::Activate {
                policy: runtime.as_ref().map(|rt| rt.id().to_string()),
                event_id: event_id.clone(),
                activated_at: now,
            },
        );
    };
    let runtime = runtime.expect("a store outcome needs the policy");
    match outcome {
        ActivateOutcome::Activated => {
            state.log.record(LogRecord::Activation(ActivationRow {
                event_id: event_id.clone(),
                policy: runtime.id().to_string(),
                activated_at: now,
            }));
        }
        ActivateOutcome::AlreadyActive => {}
        ActivateOutcome::UnknownEvent => return Err(unknown_event(&event_id)),
        ActivateOutcome::NotDeferred => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "not_deferred",
                "this decision was not made with `defer`; it is active already",
            )
            .at("event_id"));
        }
        ActivateOutcome::Expired => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "activation_expired",
                "the decision was not activated within its window and will not be learned",
            )
            .at("event_id"));
        }
    }
    Ok(HttpResponse::Ok().json(Accepted {
        event_id,
        status: "activated".into(),
    }))
}
