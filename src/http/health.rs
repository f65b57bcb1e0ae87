//! `GET /healthz`, `GET /readyz`, `GET /metrics`.

use super::AppState;
use actix_web::{HttpResponse, web};
use serde_json::json;
use std::sync::atomic::Ordering;

/// Alive: the process answers.
#[utoipa::path(get, path = "/healthz", responses((status = 200, description = "Alive: `{\"status\": \"ok\"}`", content_type = "application/json")))]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

/// Ready: 503 `draining` once SIGTERM arrived. Otherwise checks the store
/// (a ping) and the log, and answers 200 in both cases,
/// `"ready"` or `"degraded"` with the reasons: a degraded replica still
/// decides correctly (from its last model), so it must stay in rotation.
#[utoipa::path(get, path = "/readyz", responses(
    (status = 200, description = "`ready`, or `degraded` with the reasons (a degraded replica still decides)", content_type = "application/json"),
    (status = 503, description = "`draining` after SIGTERM: take the replica out of rotation", content_type = "application/json"),
))]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    if state.draining.load(Ordering::Relaxed) {
        // Stopping: take this replica out of rotation.
        return HttpResponse::ServiceUnavailable().json(json!({
            "status": "draining",
            "reasons": ["stopping after SIGTERM; finishing requests in flight"],
        }));
    }
    let store = state.store.ping().await;
    state.store_result("ping", &store);
    let mut reasons = Vec::new();
    if let Err(e) = &store {
        reasons.push(format!(
            "model store ({}) unreachable: {e}",
            state.store.kind()
        ));
    }
    let outbox = state.outbox.len();
    if state.outbox.active() {
        reasons.push(format!(
            "model store operations queued in the outbox: {outbox} (decisions come from the last known model; replayed when the store answers)"
        ));
    }
    if !state.log.db_healthy() {
        reasons.push(format!(
            "decision log database unreachable; spooling ({} bytes)",
            state.log.spool_bytes()
        ));
    }
    let mismatch = state.reload_mismatch.lock().expect("not poisoned").clone();
    if let Some(why) = &mismatch {
        reasons.push(format!(
            "not serving the published policy set ({why}); serving generation {}",
            state.policies.load().generation
        ));
    }
    // Learning alerts are details, not unreadiness: the replica decides
    // correctly, the policy is what needs a look.
    let alerts = state.alerts();
    let status = if reasons.is_empty() {
        "ready"
    } else {
        "degraded"
    };
    HttpResponse::Ok().json(json!({
        "status": status,
        "reasons": reasons,
        "store": state.store.kind(),
        "store_ok": store.is_ok() && state.store_healthy.load(Ordering::Relaxed),
        "outbox_ops": outbox,
        "outbox_parked": state.outbox.parked_len(),
        "log_ok": state.log.db_healthy(),
        "log_queue": state.log.queue_depth(),
        "log_spool_bytes": state.log.spool_bytes(),
        "policy_generation": state.policies.load().generation,
        "policy_mismatch": mismatch,
        "alerts": alerts,
    }))
}

/// Prometheus text metrics.
#[utoipa::path(get, path = "/metrics", responses((status = 200, description = "Prometheus text", content_type = "text/plain")))]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let m = &state.metrics;
    m.log_queue_depth.set(state.log.queue_depth() as i64);
    m.outbox_depth.set(state.outbox.len() as i64);
    m.outbox_parked.set(state.outbox.parked_len() as i64);
    m.log_spool_bytes.set(state.log.spool_bytes() as i64);
    let alerts = state.alerts();
    for (id, rt) in &state.policies.load().live {
        m.model_version
            .with_label_values(&[id])
            .set(rt.model().version() as i64);
        for kind in crate::alerts::KINDS {
            let raised = alerts.iter().any(|a| a.policy == *id && a.alert == kind);
            m.learning_alerts
                .with_label_values(&[id, kind])
                .set(i64::from(raised));
        }
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(m.render())
}
