//! The HTTP API: one file per route group, one error shape
//! ([`error::ApiError`]). Handlers parse and validate the request, call the
//! policy engine and the store, queue log records, and answer; none of them
//! awaits the database.

pub mod auth;
pub mod decide;
pub mod error;
pub mod health;
pub mod openapi;
pub mod policies;
pub mod reward;

use crate::runtime::PolicyRuntime;
use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use error::ApiError;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;
use std::sync::Arc;

/// The shared state handlers see: the domain layer's [`Service`].
pub use crate::service::Service as AppState;

impl AppState {
    /// The runtime of `id`, or 404 `unknown_policy` naming `field`; an id
    /// that no policy file could have (not 1 to 64 characters of
    /// `[A-Za-z0-9_.-]`) is 400 `invalid_policy_id`, and is never echoed.
    pub fn policy(&self, id: &str, field: &str) -> Result<&Arc<PolicyRuntime>, ApiError> {
        check_policy_id(id, field)?;
        self.policies.get(id).ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_policy",
                format!("no policy {id:?}"),
            )
            .at(field)
        })
    }
}

/// 503 `store_unavailable`: the model store failed; the caller may retry.
pub fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        format!("the model store is unavailable, retry later: {e}"),
    )
}

/// Reads a request body of at most `limit` bytes (413 `body_too_large`
/// beyond, without reading the rest).
pub async fn read_body(mut payload: web::Payload, limit: usize) -> Result<web::BytesMut, ApiError> {
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("cannot read body: {e}"),
            )
        })?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request bodies are limited to {limit} bytes"),
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Parses JSON into `T`, naming the offending field on a type error
/// (`invalid_field`, with its path) and the position on a syntax error
/// (`invalid_json`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // serde would read a struct from an array too; the API speaks objects.
    if bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b != b'{')
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the request body must be a JSON object",
        ));
    }
    // Fast path: no path tracking. Only a body that fails is parsed again,
    // tracked, to name the offending field.
    if let Ok(value) = serde_json::from_slice::<T>(bytes) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| tracked_error(e, None))?;
    de.end()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))?;
    Ok(value)
}

/// Parses `text`, the JSON of the request's field `field`, into `T`; a type
/// error names the offending path below `field` (`invalid_field`).
pub fn parse_field<T: DeserializeOwned>(text: &str, field: &str) -> Result<T, ApiError> {
    if let Ok(value) = serde_json::from_str::<T>(text) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| tracked_error(e, Some(field)))
}

/// The error of a path-tracked parse: `invalid_field` for a type error,
/// `invalid_json` for bad syntax (for a field's text, which is valid JSON
/// already, that is a number out of f64 range). Within a field, the error
/// names the path below it; in a whole body, only a type error has a field.
fn tracked_error(
    e: serde_path_to_error::Error<serde_json::Error>,
    within: Option<&str>,
) -> ApiError {
    let mut path = e.path().to_string();
    let inner = e.into_inner();
    let data = inner.is_data();
    // serde reports a missing field at its parent's path and names it only
    // in the message (`missing field `event_id``); the caller needs it as
    // the field.
    if let Some((name, _)) = inner
        .to_string()
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split_once('`'))
    {
        path = if path == "." {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        };
    }
    let field = match (within, path == ".") {
        (Some(field), true) => Some(field.to_owned()),
        (Some(field), false) => Some(format!("{field}.{path}")),
        (None, false) if data => Some(path),
        (None, _) => None,
    };
    let code = if data {
        "invalid_field"
    } else {
        "invalid_json"
    };
    ApiError {
        field,
        ..ApiError::new(StatusCode::BAD_REQUEST, code, inner.to_string())
    }
}

/// Event ids: 1 to 128 characters of `[A-Za-z0-9_.:-]` — safe in keys,
/// logs and URLs.
pub fn check_event_id(id: &str, field: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ApiError::field(
            "invalid_event_id",
            field,
            "event ids are 1 to 128 characters of [A-Za-z0-9_.:-]",
        ))
    }
}

/// Policy ids, as policy files define them: 1 to 64 characters of
/// `[A-Za-z0-9_.-]`.
pub fn check_policy_id(id: &str, field: &str) -> Result<(), ApiError> {
    if crate::policy::spec::is_valid_id(id, 64) {
        Ok(())
    } else {
        Err(ApiError::field(
            "invalid_policy_id",
            field,
            "policy ids are 1 to 64 characters of [A-Za-z0-9_.-]",
        ))
    }
}

/// Wires every route. Unknown routes and wrong methods answer the JSON
/// error shape too. Every resource but the health checks is wrapped in
/// [`auth::Require`], with the role [`auth::ROUTE_ROLES`] gives it.
pub fn routes(cfg: &mut web::ServiceConfig) {
    let method = || web::to(method_not_allowed);
    cfg.service(
        web::resource("/v1/decide")
            .wrap(auth::Require::route("/v1/decide"))
            .route(web::post().to(decide::decide))
            .default_service(method()),
    )
    .service(
        web::resource("/v1/reward")
            .wrap(auth::Require::route("/v1/reward"))
            .route(web::post().to(reward::reward))
            .default_service(method()),
    )
    .service(
        web::resource("/v1/events/{event_id}/activate")
            .wrap(auth::Require::route("/v1/events/{event_id}/activate"))
            .route(web::post().to(reward::activate))
            .default_service(method()),
    )
    .service(
        web::resource("/v1/policies")
            .wrap(auth::Require::route("/v1/policies"))
            .route(web::get().to(policies::list))
            .default_service(method()),
    )
    .service(
        web::resource("/v1/policies/{id}")
            .wrap(auth::Require::route("/v1/policies/{id}"))
            .route(web::get().to(policies::describe))
            .default_service(method()),
    )
    .service(
        web::resource("/v1/policies/{id}/snapshot")
            .wrap(auth::Require::route("/v1/policies/{id}/snapshot"))
            .route(web::get().to(policies::snapshot))
            .default_service(method()),
    )
    .service(
        web::resource("/v1/policies/{id}/reset")
            .wrap(auth::Require::route("/v1/policies/{id}/reset"))
            .route(web::post().to(policies::reset))
            .default_service(method()),
    )
    .service(
        web::resource("/healthz")
            .route(web::get().to(health::healthz))
            .default_service(method()),
    )
    .service(
        web::resource("/readyz")
            .route(web::get().to(health::readyz))
            .default_service(method()),
    )
    .service(
        web::resource("/metrics")
            .wrap(auth::Require::route("/metrics"))
            .route(web::get().to(health::metrics))
            .default_service(method()),
    )
    .service(
        web::resource("/openapi.json")
            .wrap(auth::Require::route("/openapi.json"))
            .route(web::get().to(openapi::document))
            .default_service(method()),
    )
    .default_service(web::to(not_found));
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {} {}", req.method(), req.path()),
    ))
}

async fn method_not_allowed(req: HttpRequest) -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{} is not allowed on {}", req.method(), req.path()),
    ))
}
