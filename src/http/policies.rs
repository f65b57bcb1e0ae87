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
        "learning": spec.learning.name(),
        "arms": spec.arms,
        "dimension": spec.features.dim(),
        "model_version": rt.model().version(),
        "decision_model_version": rt.decision_model().version(),
    })
}

/// Apprentice mode's report: how often the policy's own draw agreed with
/// the caller's choice (this replica), and the caller's observed value
/// (the rewards this replica folded since it loaded the policy, with a
/// normal 95% interval on their mean).
async fn apprentice(rt: &PolicyRuntime) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let a = &rt.apprentice;
    let n = a.decisions.load(Relaxed);
    let agreed = a.agreed.load(Relaxed);
    let p = a.probability_nanos.load(Relaxed) as f64 * 1e-9;
    let (rewards, mean) = rt.folded().await;
    json!({
        "decisions": n,
        "agreed": agreed,
        "agreement": (n > 0).then(|| agreed as f64 / n as f64),
        "mean_probability_of_default": (n > 0).then(|| p / n as f64),
        "default_value": {
            "rewards": rewards,
            "mean": mean.map(|m| m.value),
            "ci95": mean.and_then(|m| m.ci95),
        },
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
    let all: Vec<Value> = state
        .policies
        .load()
        .live
        .values()
        .map(|rt| summary(rt))
        .collect();
    HttpResponse::Ok().json(json!({ "policies": all }))
}

/// The runtime of policy `id`, with every learned reward this replica can
/// see folded in first (so a caller sees its own rewards), and whether that
/// sync reached the store.
async fn synced(state: &AppState, id: &str) -> Result<(Arc<PolicyRuntime>, bool), ApiError> {
    let rt = state.policy(id, "id")?;
    let synced = rt.sync(&state.store, &state.metrics).await;
    state.store_result("sync", &synced);
    Ok((rt, synced.is_ok()))
}

/// `?version=N`: a kept snapshot instead of the live model.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SnapshotQuery {
    /// The snapshot a reload kept when it replaced version `N` of the
    /// policy with a new layout (absent: the live model).
    pub version: Option<u32>,
}

/// The model's sufficient statistics as a snapshot blob (the versioned
/// `NDGM` codec of `nudge::model::codec`), after folding every learned
/// reward this replica can see: what `nudge-sim evaluate --snapshot` loads to
/// evaluate a policy with the state it has in production.
#[utoipa::path(
    get,
    path = "/v1/policies/{id}/snapshot",
    params(("id" = PolicyId, Path, description = "Policy id"), SnapshotQuery),
    responses(
        (status = 200, description = "NDGM snapshot blob", content_type = "application/octet-stream"),
        (status = 404, description = "`unknown_snapshot`: no kept snapshot of that version", body = super::error::ErrorBody),
        (status = 400, description = "`invalid_policy_id`: not 1 to 64 characters of `[A-Za-z0-9_.-]`", body = super::error::ErrorBody),
        (status = 404, description = "`unknown_policy`", body = super::error::ErrorBody),
    )
)]
pub async fn snapshot(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: actix_web::HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<SnapshotQuery>::from_query(req.query_string()).map_err(|e| {
        ApiError::field(
            "invalid_field",
            "version",
            format!("expected ?version=N, a policy version: {e}"),
        )
    })?;
    if let Some(version) = query.version {
        super::check_policy_id(&path, "id")?;
        let kept = state.store.kept_snapshot(&path, version).await;
        state.store_result("kept_snapshot", &kept);
        let Some(blob) = kept.map_err(super::unavailable)? else {
            return Err(ApiError::new(
                actix_web::http::StatusCode::NOT_FOUND,
                "unknown_snapshot",
                format!(
                    "no kept snapshot of policy {:?} version {version}",
                    path.as_str()
                ),
            )
            .at("version"));
        };
        return Ok(HttpResponse::Ok()
            .content_type("application/octet-stream")
            .insert_header((
                "Content-Disposition",
                format!("attachment; filename=\"{}-v{version}.ndgm\"", path.as_str()),
            ))
            .body(blob));
    }
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
    out["policy_generation"] = json!(state.policies.load().generation);
    if spec.learning == crate::policy::Learning::Apprentice {
        out["apprentice"] = apprentice(&rt).await;
    }
    let shadow = rt.shadow().await;
    out["greedy_estimate"] = json!(shadow.greedy);
    out["alerts"] = json!(crate::alerts::evaluate(
        rt.id(),
        &rt.monitor,
        &spec.alerts,
        crate::service::unix_ms()
    ));
    out["live_estimate"] = json!(shadow.live);
    if !rt.challengers.is_empty() {
        let listed: Vec<Value> = rt
            .challengers
            .iter()
            .zip(shadow.challengers)
            .map(|(c, estimate)| {
                let p = &c.spec().params;
                let mut v = json!(estimate);
                v["params"] = json!({
                    "alpha": p.alpha, "v": p.v, "epsilon": p.epsilon, "draws": p.draws,
                });
                v
            })
            .collect();
        out["challengers"] = json!(listed);
        out["promote_after"] = json!(spec.promote_after);
    }
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
    let rt = state.policy(&path, "id")?;
    let done = rt.reset(&state.store, &state.metrics).await;
    state.store_result("reset", &done);
    done.map_err(super::unavailable)?;
    tracing::info!(policy = rt.id(), "model reset");
    Ok(HttpResponse::Ok().json(json!({ "id": rt.id(), "model_version": rt.model().version() })))
}

/// `POST /v1/policies/reload` (admin; SIGHUP does the same): reads the
/// policy files again and switches every replica to them (see
/// [`crate::service::reload`]). Invalid files change nothing (422 with
/// `nudge check`'s messages).
#[utoipa::path(
    post,
    path = "/v1/policies/reload",
    responses(
        (status = 200, description = "`{\"generation\", \"policies\": [{\"id\", \"change\": \"unchanged\"|\"kept\"|\"fresh\"|\"new\"|\"removed\", \"from_version\", \"to_version\"}]}`", content_type = "application/json"),
        (status = 422, description = "`invalid_policy_files`: `errors` lists each `{file, key, message}`; nothing changed", body = super::error::ErrorBody),
        (status = 503, description = "`store_unavailable`: nothing was published; retry", body = super::error::ErrorBody),
    )
)]
pub async fn reload(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    match crate::service::reload::reload(&state).await {
        Ok(report) => Ok(HttpResponse::Ok().json(report)),
        Err(e) => Err(reload_error(&state, e)),
    }
}

/// A refused reload: 422 `invalid_policy_files` with every `{file, key,
/// message}` under `errors`, or 503 when the store failed.
fn reload_error(state: &AppState, e: crate::service::reload::ReloadError) -> ApiError {
    use crate::service::reload::ReloadError;
    match e {
        ReloadError::Store(e) => {
            state.store_result("reload", &Err::<(), _>(&e));
            super::unavailable(e)
        }
        ReloadError::Invalid(errors) => {
            let listed: Vec<Value> = errors
                .iter()
                .map(|e| json!({"file": e.file.display().to_string(), "key": e.key, "message": e.message}))
                .collect();
            let message = errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("; ");
            ApiError::new(
                actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_policy_files",
                format!("nothing changed: {message}"),
            )
            .with_errors(listed)
        }
        e @ ReloadError::Empty(_) => ApiError::new(
            actix_web::http::StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_policy_files",
            format!("nothing changed: {e}"),
        ),
    }
}

/// `POST /v1/policies/{id}/promote` body.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PromoteBody {
    /// The challenger to make live.
    #[schema(value_type = PolicyId)]
    pub challenger: String,
}

/// `POST /v1/policies/{id}/promote` (admin): makes a shadow challenger the
/// live policy on every replica. The policy file is rewritten (the
/// challenger's algorithm and params become the policy's, the old ones a
/// challenger `<id>-v<version>`, the version goes up by one) and reloaded;
/// the learned model is kept (see [`crate::service::promote`]).
#[utoipa::path(
    post,
    path = "/v1/policies/{id}/promote",
    params(("id" = PolicyId, Path, description = "Policy id")),
    request_body = PromoteBody,
    responses(
        (status = 200, description = "`{\"policy\", \"promoted\", \"previous\", \"version\", \"reload\"}`", content_type = "application/json"),
        (status = 400, description = "`invalid_json`, `invalid_field`, `invalid_policy_id`", body = super::error::ErrorBody),
        (status = 404, description = "`unknown_policy`, or `unknown_challenger` (field `challenger`)", body = super::error::ErrorBody),
        (status = 422, description = "`invalid_policy_files`: the rewritten files were refused; the old file is back", body = super::error::ErrorBody),
        (status = 500, description = "`policy_file`: the policy file could not be rewritten", body = super::error::ErrorBody),
        (status = 503, description = "`store_unavailable`; the old file is back", body = super::error::ErrorBody),
    )
)]
pub async fn promote(
    state: web::Data<AppState>,
    path: web::Path<String>,
    payload: web::Payload,
) -> Result<HttpResponse, ApiError> {
    use crate::service::promote::{PromoteError, promote};
    let rt = state.policy(&path, "id")?;
    let body = super::read_body(payload, state.settings.max_body_bytes).await?;
    let body: PromoteBody = super::parse_json(&body)?;
    match promote(&state, rt.id(), &body.challenger).await {
        Ok(done) => Ok(HttpResponse::Ok().json(done)),
        Err(e @ PromoteError::UnknownChallenger { .. }) => Err(ApiError::new(
            actix_web::http::StatusCode::NOT_FOUND,
            "unknown_challenger",
            e.to_string(),
        )
        .at("challenger")),
        Err(e @ PromoteError::File { .. }) => Err(ApiError::new(
            actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
            "policy_file",
            e.to_string(),
        )),
        Err(PromoteError::Reload(e)) => Err(reload_error(&state, e)),
    }
}
