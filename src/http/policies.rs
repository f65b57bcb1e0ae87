//! `GET /v1/policies`, `GET /v1/policies/{id}`, `POST /v1/policies/{id}/reset`.

use super::AppState;
use super::error::ApiError;
use super::openapi::PolicyId;
use crate::features::{FeatureDef, FeatureKind};
use crate::policy::Mode;
use crate::runtime::PolicyRuntime;
use actix_web::{HttpResponse, web};
use serde_json::{Value, json};
use std::sync::Arc;

fn summary(rt: &PolicyRuntime) -> Value {
    let spec = rt.policy.spec();
    json!({
        "id": spec.id,
        "version": spec.version,
        "description": spec.description,
        "algorithm": spec.algorithm.name(),
        "mode": spec.mode.name(),
        "arms": spec.arms,
        "dimension": spec.features.dim(),
        "model_version": rt.model().version(),
    })
}

fn feature(side: &str, f: &FeatureDef) -> Value {
    let mut v = json!({
        "name": f.name,
        "side": side,
        "type": f.kind.type_name(),
        "optional": f.optional(),
        "offset": f.offset,
        "width": f.kind.width(),
    });
    match &f.kind {
        FeatureKind::Number { mean, std, .. } => {
            v["mean"] = json!(mean);
            v["std"] = json!(std);
        }
        FeatureKind::OneHot { vocabulary, .. } => v["vocabulary"] = json!(vocabulary),
        FeatureKind::Hashed { buckets, .. } => v["buckets"] = json!(buckets),
        FeatureKind::Vector { len, .. } => v["length"] = json!(len),
    }
    v
}

/// `GET /v1/policies`: every live policy.
#[utoipa::path(get, path = "/v1/policies", responses(
    (status = 200, description = "`{\"policies\": [...]}`: every loaded policy with its model version", content_type = "application/json"),
))]
pub async fn list(state: web::Data<AppState>) -> HttpResponse {
    let all: Vec<Value> = state.policies.values().map(|rt| summary(rt)).collect();
    HttpResponse::Ok().json(json!({ "policies": all }))
}

/// The runtime of policy `id`, with every learned reward this replica can
/// see folded in first (so a caller sees its own rewards), and whether that
/// sync reached the store.
async fn synced(state: &AppState, id: &str) -> Result<(Arc<PolicyRuntime>, bool), ApiError> {
    let rt = state.policy(id, "id")?.clone();
    let synced = rt.sync(&state.store, &state.metrics).await;
    state.store_result("sync", &synced);
    Ok((rt, synced.is_ok()))
}

/// The model's sufficient statistics as a snapshot blob (the versioned
/// `NDGM` codec of `nudge::model::codec`), after folding every learned
/// reward this replica can see: what `nudge-sim evaluate --snapshot` loads to
/// evaluate a policy with the state it has in production.
#[utoipa::path(
    get,
    path = "/v1/policies/{id}/snapshot",
    params(("id" = PolicyId, Path, description = "Policy id")),
    responses(
        (status = 200, description = "NDGM snapshot blob", content_type = "application/octet-stream"),
        (status = 400, description = "`invalid_policy_id`: not 1 to 64 characters of `[A-Za-z0-9_.-]`", body = super::error::ErrorBody),
        (status = 404, description = "`unknown_policy`", body = super::error::ErrorBody),
    )
)]
pub async fn snapshot(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (rt, _) = synced(&state, &path).await?;
    let model = rt.model();
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"{}.ndgm\"", rt.id()),
        ))
        .insert_header(("Nudge-Model-Version", model.version().to_string()))
        .body(crate::model::codec::encode(&model.state())))
}

/// `GET /v1/policies/{id}`: the spec, the model version, per-arm counts and
/// mean rewards, and pending events. Folds the store's latest rewards first,
/// so a caller sees its own rewards.
#[utoipa::path(
    get,
    path = "/v1/policies/{id}",
    params(("id" = PolicyId, Path, description = "Policy id")),
    responses(
        (status = 200, description = "The policy and its live statistics", content_type = "application/json"),
        (status = 400, description = "`invalid_policy_id`: not 1 to 64 characters of `[A-Za-z0-9_.-]`", body = super::error::ErrorBody),
        (status = 404, description = "`unknown_policy`", body = super::error::ErrorBody),
    )
)]
pub async fn describe(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let (rt, synced) = synced(&state, &path).await?;
    let pending = state.store.pending(rt.id()).await;
    state.store_result("pending", &pending);
    let spec = rt.policy.spec();
    let model = rt.model();
    let arms: Vec<Value> = (0..model.arms())
        .map(|a| {
            let s = model.stats(a);
            let name = match spec.mode {
                Mode::Disjoint => spec.arms[a].as_str(),
                Mode::Shared => "shared",
            };
            json!({ "arm": name, "count": s.count, "mean_reward": s.mean_reward() })
        })
        .collect();
    let mut features: Vec<Value> = spec
        .features
        .context()
        .iter()
        .map(|f| feature("context", f))
        .collect();
    features.extend(spec.features.action().iter().map(|f| feature("action", f)));
    let p = &spec.params;
    let r = &spec.reward;
    let mut out = summary(&rt);
    out["params"] = json!({
        "alpha": p.alpha, "lambda": p.lambda, "v": p.v, "epsilon": p.epsilon,
        "draws": p.draws, "refactor_every": p.refactor_every,
    });
    out["features"] = json!(features);
    out["reward"] = json!({
        "signals": r.signals,
        "window_seconds": r.window.as_secs_f64(),
        "default": r.default,
        "aggregation": if rt.rules.sum { "sum" } else { "first" },
        "min": r.min, "max": r.max,
    });
    out["stats"] = json!(arms);
    out["pending_events"] = json!(pending.ok());
    out["store_synced"] = json!(synced);
    Ok(HttpResponse::Ok().json(out))
}

/// `POST /v1/policies/{id}/reset` (admin): the model goes back to its prior
/// on every replica. Decisions still pending will be learned into the reset
/// model.
#[utoipa::path(
    post,
    path = "/v1/policies/{id}/reset",
    params(("id" = PolicyId, Path, description = "Policy id")),
    responses(
        (status = 200, description = "Reset: `{\"id\", \"model_version\"}`", content_type = "application/json"),
        (status = 400, description = "`invalid_policy_id`: not 1 to 64 characters of `[A-Za-z0-9_.-]`", body = super::error::ErrorBody),
        (status = 404, description = "`unknown_policy`", body = super::error::ErrorBody),
        (status = 503, description = "`store_unavailable`: the model store failed; retry", body = super::error::ErrorBody),
    )
)]
pub async fn reset(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let rt = state.policy(&path, "id")?.clone();
    let done = rt.reset(&state.store, &state.metrics).await;
    state.store_result("reset", &done);
    done.map_err(super::unavailable)?;
    tracing::info!(policy = rt.id(), "model reset");
    Ok(HttpResponse::Ok().json(json!({ "id": rt.id(), "model_version": rt.model().version() })))
}
