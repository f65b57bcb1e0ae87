//! `POST /v1/decide`: one action, or a ranked slate, with its propensities.

use super::error::ApiError;
use super::openapi::{ActionId, EventId, PolicyId, UserId};
use super::{AppState, check_event_id, parse_field, parse_json, read_body};
use crate::features::Features;
use crate::policy::DecideError;
use crate::service::{self, decide::DecideFailure, decide::DecideInput};
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use serde::Deserialize;
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
    /// `POST /v1/events/{event_id}/activate` (and, for a send of a policy
    /// with guardrails, counted against its caps and budgets then).
    #[serde(default)]
    pub defer: bool,
    /// The user the decision is for: their history feeds the policy's
    /// guardrails (caps, gap, recovery, budgets) and history features; a
    /// policy with `require_user` answers 400 naming `user` without it.
    #[schema(value_type = Option<UserId>)]
    pub user: Option<String>,
    /// The user's time zone, an IANA name (e.g. `Europe/Paris`), for quiet
    /// hours and delivery slots in local time (default: the policy's
    /// `default_timezone`); an unknown zone is 400 `invalid_field` naming
    /// `timezone`.
    #[schema(pattern = r"^[A-Za-z0-9_.+/-]+$", min_length = 1, max_length = 64)]
    pub timezone: Option<String>,
    /// The caller's own choice (an arm, or an id in `actions`), for a
    /// policy in `apprentice` mode: Nudge answers with it (probability 1),
    /// logs and learns from it, and counts how often its own draw agreed.
    /// Required by apprentice policies (400 `invalid_field` without it),
    /// ignored by the others, so a caller keeps sending it when its policy
    /// switches to `online`. It must be eligible (not in `excluded`, not
    /// excluded by the guardrails; else 422 `default_action_ineligible`),
    /// and `k` must be 1.
    #[schema(value_type = Option<ActionId>)]
    pub default_action: Option<String>,
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

pub use crate::service::decide::{DecideResponse, Ranked};

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
            disjoint policy or a `k` above the candidates (the policy's rules, in the descriptions); \
            `invalid_field` for an unknown `timezone`, a missing `user` where the policy requires one, or a \
            history feature sent in `context`",
            body = super::error::ErrorBody),
        (status = 404, description = "`unknown_policy`: no loaded policy has this id", body = super::error::ErrorBody),
        (status = 422, description = "`default_action_ineligible`: an apprentice policy's `default_action` is excluded (by the caller or a guardrail, named in the message)", body = super::error::ErrorBody),
        (status = 409, description = "`event_id_taken`: another policy decided this `event_id` (rewards name only the event, so ids are unique across policies)", body = super::error::ErrorBody),
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
    let runtime = state.policy(&body.policy, "policy")?;
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

    let user = match body.user {
        Some(user) => {
            check_event_id(&user, "user").map_err(|_| {
                ApiError::field(
                    "invalid_field",
                    "user",
                    "user ids are 1 to 128 characters of [A-Za-z0-9_.:-]",
                )
            })?;
            Some(user)
        }
        None => None,
    };
    let timezone = match body.timezone.as_deref() {
        Some(name) => Some(crate::guardrails::parse_timezone(name).ok_or_else(|| {
            ApiError::field(
                "invalid_field",
                "timezone",
                format!("{name:?} is not an IANA time zone (e.g. \"Europe/Berlin\", \"UTC\")"),
            )
        })?),
        None => None,
    };
    let input = DecideInput {
        runtime,
        event_id,
        context,
        context_text: body.context,
        actions: body.actions,
        excluded: body.excluded,
        k,
        defer: body.defer,
        user,
        timezone,
        now: state.clock.now(),
        default_action: body.default_action,
    };
    let response = service::decide::decide(&state, input)
        .await
        .map_err(decide_failure)?;
    state
        .metrics
        .latency
        .with_label_values(&["decide"])
        .observe(started.elapsed().as_secs_f64());
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(response))
}

fn decide_failure(e: DecideFailure) -> ApiError {
    match e {
        DecideFailure::Invalid(e) => decide_error(e),
        e @ DecideFailure::EventIdTaken(_) => ApiError {
            field: e.field(),
            ..ApiError::new(StatusCode::CONFLICT, "event_id_taken", e.to_string())
        },
        e @ DecideFailure::DefaultIneligible { .. } => ApiError {
            field: e.field(),
            ..ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "default_action_ineligible",
                e.to_string(),
            )
        },
        other => ApiError {
            field: other.field(),
            ..ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", other.to_string())
        },
    }
}
