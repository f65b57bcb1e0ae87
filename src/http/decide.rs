//! `POST /v1/decide`: one action, or a ranked slate, with its propensities.

use super::error::ApiError;
use super::openapi::{ActionId, EventId, ExcludedBy, PolicyId, UserId};
use super::{AppState, check_event_id, parse_field, parse_json, read_body};
use crate::features::Features;
use crate::log::{DecisionRow, JsonText, LogRecord};
use crate::policy::{DecideError, DecideRequest, Decision, Mode};
use crate::store::outbox::Op;
use crate::store::{EventRecord, Recorded, Slot};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::time::Instant;
use utoipa::ToSchema;

/// A decision request. Which fields a policy needs is the policy's: a
/// disjoint policy (fixed arms) takes no `actions` (400 `invalid_field`), a
/// shared one needs at least one (400 `no_candidates`); see
/// `GET /v1/policies/{id}`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecideBody {
    /// The policy that decides.
    #[schema(value_type = PolicyId)]
    pub policy: String,
    /// Idempotency key: a retry with the same id gets the same decision.
    /// Generated (UUIDv7) when absent. `[A-Za-z0-9_.:-]{1,128}`.
    #[schema(value_type = Option<EventId>)]
    pub event_id: Option<String>,
    /// Context features (default none).
    // Kept as the text sent (parsed by [`parse_field`]), which is what the
    // log records.
    #[serde(default = "empty_object")]
    #[schema(value_type = super::openapi::Features)]
    pub context: Box<RawValue>,
    /// Shared-mode policies: the candidate actions with their features, ids
    /// unique (a repeated id is 400 `duplicate_action`). At most
    /// `NUDGE_MAX_CANDIDATES` (default 1000; `maxItems` is this server's
    /// value), else 400 `too_many_candidates`.
    #[serde(default)]
    #[schema(value_type = Vec<ActionSchema>)]
    pub actions: Vec<crate::policy::Candidate<Features>>,
    /// Arms or candidate ids not to choose this time; each must be an arm
    /// of the policy or an id in `actions` (else 400 `unknown_action`). At
    /// most `NUDGE_MAX_CANDIDATES` (default 1000; `maxItems` is this
    /// server's value), else 400 `too_many_candidates`.
    #[serde(default)]
    #[schema(value_type = Vec<ActionId>)]
    pub excluded: Vec<String>,
    /// Slate size (default 1): at least 1 and at most the candidates left
    /// after `excluded` (the policy's arms, or `actions`), and at most
    /// `NUDGE_MAX_K` (default 100; `maximum` is this server's value); else
    /// 400 `invalid_field`.
    #[serde(default, deserialize_with = "super::integer")]
    #[schema(minimum = 1)]
    pub k: Option<usize>,
    /// Compute now, deliver later: learned only after
    /// `POST /v1/events/{event_id}/activate`.
    #[serde(default)]
    pub defer: bool,
    /// The user the decision is for: their history feeds the policy's
    /// guardrails (caps, gaps, quiet hours) and history features.
    #[schema(value_type = Option<UserId>)]
    pub user: Option<String>,
    /// The user's time zone, an IANA name (e.g. `Europe/Paris`), for quiet
    /// hours in local time; an unknown zone is 400 `invalid_field` naming
    /// `timezone`.
    #[schema(pattern = r"^[A-Za-z0-9_.+/-]+$", min_length = 1, max_length = 64)]
    pub timezone: Option<String>,
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).expect("`{}` is JSON")
}

/// A candidate action (schema only: the request reads
/// [`crate::policy::Candidate`], which refuses unknown fields too).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct ActionSchema {
    /// The action's id, unique in the request.
    #[schema(value_type = ActionId)]
    id: String,
    /// Its features, as in `context` (default none).
    #[serde(default)]
    #[schema(value_type = super::openapi::Features)]
    features: Features,
}

/// One ranked candidate.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct Ranked {
    /// Action id.
    pub id: String,
    /// For slate positions: the probability of this action at this position
    /// given the positions before it. For the rest: its probability of
    /// being chosen first (0 for an ineligible one).
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub probability: f64,
    /// Why this candidate was not eligible (absent when it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<ExcludedBy>)]
    pub excluded_by: Option<String>,
}

/// A decision.
#[derive(Debug, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct DecideResponse {
    /// The event id (echoed or generated).
    #[schema(value_type = EventId)]
    pub event_id: String,
    /// Policy id.
    #[schema(value_type = PolicyId)]
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
    /// Every candidate: the slate first, in order, then the rest by
    /// decreasing probability.
    pub ranking: Vec<Ranked>,
    /// Whether the decision waits for activation.
    pub deferred: bool,
    /// When to deliver (RFC 3339, UTC), if not now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    pub send_at: Option<String>,
    /// Whether this decision was forced (always present).
    #[serde(default)]
    #[schema(required = true)]
    pub forced: bool,
}

fn decide_error(e: DecideError) -> ApiError {
    let code = match &e {
        DecideError::Feature(_) => "invalid_feature",
        DecideError::NoCandidates => "no_candidates",
        DecideError::ActionsNotAllowed => "invalid_field",
        DecideError::DuplicateAction(_) => "duplicate_action",
        DecideError::UnknownExcluded(_) => "unknown_action",
        DecideError::BadSlateSize { .. } => "invalid_field",
        DecideError::Model(_) => {
            return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string());
        }
    };
    ApiError {
        field: e.field(),
        ..ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    }
}

/// Action ids: 1 to 256 bytes, no control characters.
fn check_action_id(id: &str, field: String) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > 256 || id.chars().any(char::is_control) {
        return Err(ApiError::field(
            "invalid_field",
            field,
            "action ids are 1 to 256 bytes without control characters",
        ));
    }
    Ok(())
}

/// `POST /v1/decide`.
#[utoipa::path(
    post,
    path = "/v1/decide",
    request_body = DecideBody,
    responses(
        (status = 200, description = "The decision", body = DecideResponse),
        (status = 400, description = "A request the policy cannot decide on, `field` naming the culprit: \
            `invalid_json`, `invalid_body`, `invalid_field`, `invalid_event_id`, `invalid_policy_id`, \
            `too_many_candidates` (the schema's rules); `invalid_feature`, `no_candidates`, \
            `duplicate_action`, `unknown_action`, and `invalid_field` for `actions` sent to a \
            disjoint policy or a `k` above the candidates (the policy's rules, in the descriptions)",
            body = super::error::ErrorBody),
        (status = 404, description = "`unknown_policy`: no loaded policy has this id", body = super::error::ErrorBody),
        (status = 413, description = "`body_too_large`: over `NUDGE_MAX_BODY_BYTES`", body = super::error::ErrorBody),
        (status = 500, description = "`internal`: the model does not fit its policy (a bug, never the request's fault)", body = super::error::ErrorBody),
    )
)]
pub async fn decide(
    state: web::Data<AppState>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let body = read_body(payload, state.settings.max_body_bytes).await?;
    let body: DecideBody = parse_json(&body)?;
    let context: Features = parse_field(body.context.get(), "context")?;
    let runtime = state.policy(&body.policy, "policy")?.clone();
    let event_id = match body.event_id {
        Some(id) => {
            check_event_id(&id, "event_id")?;
            id
        }
        None => uuid::Uuid::now_v7().to_string(),
    };
    let limits = &state.settings;
    if body.actions.len() > limits.max_candidates || body.excluded.len() > limits.max_candidates {
        return Err(ApiError::field(
            "too_many_candidates",
            if body.actions.len() > limits.max_candidates {
                "actions"
            } else {
                "excluded"
            },
            format!("at most {} candidates per request", limits.max_candidates),
        ));
    }
    for (i, a) in body.actions.iter().enumerate() {
        check_action_id(&a.id, format!("actions[{i}].id"))?;
    }
    let k = body.k.unwrap_or(1);
    if k > limits.max_k {
        return Err(ApiError::field(
            "invalid_field",
            "k",
            format!("k is at most {}", limits.max_k),
        ));
    }

    let model = runtime.model();
    let policy = &runtime.policy;
    let spec = policy.spec();
    let request = DecideRequest {
        event_id: &event_id,
        context: &context,
        actions: &body.actions,
        excluded: &body.excluded,
        k,
    };
    let decision = policy.decide(&model, &request).map_err(decide_error)?;
    let ids: Vec<&str> = decision
        .candidates
        .iter()
        .map(|&c| match spec.mode {
            Mode::Disjoint => spec.arms[c].as_str(),
            Mode::Shared => body.actions[c].id.as_str(),
        })
        .collect();
    let response = DecideResponse {
        event_id: event_id.clone(),
        policy: spec.id.clone(),
        policy_version: spec.version,
        model_version: decision.model_version,
        action: ids[decision.chosen()].to_string(),
        probability: decision.propensity(),
        ranking: ranking(&decision, &ids),
        deferred: body.defer,
        send_at: None,
        forced: false,
    };
    let response_json = serde_json::to_string(&response)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;

    let now = chrono::Utc::now();
    let record = EventRecord {
        event_id: event_id.clone(),
        slots: decision
            .slate
            .iter()
            .map(|slot| Slot {
                action: ids[slot.index].to_string(),
                arm: decision.arm_of(slot.index, spec.mode) as u32,
                x: decision.vector(slot.index).to_vec(),
            })
            .collect(),
        deadline_ms: now.timestamp_millis() + runtime.rules.window_ms,
        deferred: body.defer,
        response: response_json,
    };
    let recorded = if state.outbox.active() {
        // Earlier operations wait for the store: this one queues behind
        // them (the store is not even tried, so an outage costs no latency).
        None
    } else {
        let r = state
            .store
            .record(
                spec.id.as_str(),
                &record,
                &runtime.rules,
                now.timestamp_millis(),
            )
            .await;
        state.store_result("record", &r);
        Some(r)
    };
    let degraded = match recorded {
        Some(Ok(Recorded::Existing(previous))) => {
            // A retry: the first answer stands, and it is logged once.
            return Ok(HttpResponse::Ok()
                .content_type("application/json")
                .body(previous));
        }
        Some(Ok(Recorded::New)) => false,
        // The store is unavailable: answer anyway, from the last model this
        // replica has, and queue the event for the store, so it is learned
        // from once the store is back. The decision row says `degraded`.
        None | Some(Err(_)) => {
            let queued = state.outbox.push(Op::Record {
                policy: spec.id.clone(),
                event: record.clone(),
                now_ms: now.timestamp_millis(),
            });
            if let Err(e) = queued {
                // Still answered and logged, but it cannot be learned from.
                tracing::error!(error = %e, "outbox write failed; decision will not be learned");
                state
                    .metrics
                    .store_errors
                    .with_label_values(&["outbox"])
                    .inc();
            }
            state
                .metrics
                .degraded_decisions
                .with_label_values(&[&spec.id])
                .inc();
            true
        }
    };

    let action_label = match spec.mode {
        Mode::Disjoint => response.action.as_str(),
        Mode::Shared => "*",
    };
    state
        .metrics
        .decisions
        .with_label_values(&[&spec.id, action_label])
        .inc();
    state.log.record(LogRecord::Decision(DecisionRow {
        event_id,
        policy: spec.id.clone(),
        policy_version: spec.version as i32,
        model_version: decision.model_version as i64,
        decided_at: now,
        context: JsonText::verbatim(body.context).unwrap_or_else(|| JsonText::of(&context)),
        actions: (spec.mode == Mode::Shared).then(|| JsonText::of(&body.actions)),
        candidates: JsonText::of(
            &ids.iter()
                .zip(&decision.probabilities)
                .map(|(id, p)| Candidate {
                    id,
                    probability: *p,
                })
                .collect::<Vec<_>>(),
        ),
        action: response.action.clone(),
        probability: response.probability,
        slate: (k > 1).then(|| JsonText::of(&response.ranking[..k])),
        deferred: body.defer,
        degraded,
    }));
    state
        .metrics
        .latency
        .with_label_values(&["decide"])
        .observe(started.elapsed().as_secs_f64());
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(record.response))
}

/// A candidate and its probability, as logged.
#[derive(Serialize)]
struct Candidate<'a> {
    id: &'a str,
    probability: f64,
}

/// The slate in order with its position probabilities, then every other
/// candidate by decreasing first-choice probability (ties in request order).
fn ranking(decision: &Decision, ids: &[&str]) -> Vec<Ranked> {
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
    out
}
