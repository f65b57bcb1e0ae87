//! The HTTP API: one file per route group, one error shape
//! ([`error::ApiError`]). Handlers parse and validate the request, call the
//! policy engine and the store, queue log records, and answer; none of them
//! awaits the database.

pub mod auth;
pub mod decide;
pub mod error;
pub mod health;
pub mod monitor;
pub mod openapi;
pub mod policies;
pub mod reward;

use crate::runtime::PolicyRuntime;
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, Resource, Route, web};
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
    ///
    /// A policy a reload removed is 410 `policy_removed`.
    pub fn policy(&self, id: &str, field: &str) -> Result<Arc<PolicyRuntime>, ApiError> {
        check_policy_id(id, field)?;
        let set = self.policies.load();
        if let Some(rt) = set.live.get(id) {
            return Ok(rt.clone());
        }
        if set.removed.contains(id) {
            return Err(ApiError::new(
                StatusCode::GONE,
                "policy_removed",
                format!(
                    "policy {id:?} was removed by a policy reload (generation {})",
                    set.generation
                ),
            )
            .at(field));
        }
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_policy",
            format!("no policy {id:?}"),
        )
        .at(field))
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

/// Deserialises an optional count from a JSON number with an integral
/// value, `2` or `2.0` alike (JSON Schema's `integer` admits both), or null.
/// A fraction, a negative number or one beyond `usize` is an error.
pub fn integer<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    use serde::de::{Error, Unexpected};
    let Some(n) = <Option<serde_json::Number> as serde::Deserialize>::deserialize(d)? else {
        return Ok(None);
    };
    let value = match n.as_u64() {
        Some(u) => usize::try_from(u).ok(),
        // Exact below 2^53; a larger integral float is larger than any
        // limit anyway, and saturates.
        None => n
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0)
            .map(|f| f as usize),
    };
    value.map(Some).ok_or_else(|| {
        let unexpected = match n.as_i64() {
            Some(i) => Unexpected::Signed(i),
            None => Unexpected::Float(n.as_f64().unwrap_or(f64::NAN)),
        };
        D::Error::invalid_value(unexpected, &"a non-negative integer")
    })
}

/// Longest event id (body or path), in characters.
pub const MAX_EVENT_ID_LEN: usize = 128;
/// The characters of an event id, as the OpenAPI document states them
/// (with `minLength` 1 and `maxLength` [`MAX_EVENT_ID_LEN`]).
pub const EVENT_ID_PATTERN: &str = "^[A-Za-z0-9_.:-]+$";
/// Longest policy id (body or path), in characters.
pub const MAX_POLICY_ID_LEN: usize = 64;
/// The characters of a policy id, as the OpenAPI document states them
/// (with `minLength` 1 and `maxLength` [`MAX_POLICY_ID_LEN`]).
pub const POLICY_ID_PATTERN: &str = "^[A-Za-z0-9_.-]+$";
/// Longest action id (a candidate's, or one named by `excluded` or a
/// reward's `action`), in UTF-8 bytes.
pub const MAX_ACTION_ID_LEN: usize = 256;

/// Event ids: 1 to [`MAX_EVENT_ID_LEN`] characters of `[A-Za-z0-9_.:-]` —
/// safe in keys, logs and URLs.
pub fn check_event_id(id: &str, field: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_EVENT_ID_LEN
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

/// Policy ids, as policy files define them: 1 to [`MAX_POLICY_ID_LEN`]
/// characters of `[A-Za-z0-9_.-]`.
pub fn check_policy_id(id: &str, field: &str) -> Result<(), ApiError> {
    if crate::policy::spec::is_valid_id(id, MAX_POLICY_ID_LEN) {
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
/// error shape too; a wrong method is 405 with `Allow` naming the methods
/// the resource has (see [`resource`]). Every resource but the health
/// checks and the live page (`/`, which holds no data) is wrapped in
/// [`auth::Require`], with the role [`auth::ROUTE_ROLES`] gives it.
pub fn routes(cfg: &mut web::ServiceConfig) {
    use actix_web::http::Method;
    let guarded = |path: &str, methods: Vec<(Method, Route)>| {
        resource(path, methods).wrap(auth::Require::route(path))
    };
    cfg.service(guarded(
        "/v1/decide",
        vec![(Method::POST, web::to(decide::decide))],
    ))
    .service(guarded(
        "/v1/reward",
        vec![(Method::POST, web::to(reward::reward))],
    ))
    .service(guarded(
        "/v1/events/{event_id}/activate",
        vec![(Method::POST, web::to(reward::activate))],
    ))
    .service(guarded(
        "/v1/policies",
        vec![(Method::GET, web::to(policies::list))],
    ))
    // Before `/v1/policies/{id}`, which would match it too.
    .service(guarded(
        "/v1/policies/reload",
        vec![(Method::POST, web::to(policies::reload))],
    ))
    .service(guarded(
        "/v1/policies/{id}",
        vec![(Method::GET, web::to(policies::describe))],
    ))
    .service(guarded(
        "/v1/policies/{id}/snapshot",
        vec![(Method::GET, web::to(policies::snapshot))],
    ))
    .service(guarded(
        "/v1/policies/{id}/timeseries",
        vec![(Method::GET, web::to(monitor::timeseries))],
    ))
    .service(guarded(
        "/v1/overview",
        vec![(Method::GET, web::to(monitor::overview))],
    ))
    // The live page holds no data (it reads the two routes above): public.
    .service(resource("/", vec![(Method::GET, web::to(monitor::page))]))
    .service(guarded(
        "/v1/policies/{id}/reset",
        vec![(Method::POST, web::to(policies::reset))],
    ))
    .service(guarded(
        "/v1/policies/{id}/promote",
        vec![(Method::POST, web::to(policies::promote))],
    ))
    .service(resource(
        "/healthz",
        vec![(Method::GET, web::to(health::healthz))],
    ))
    .service(resource(
        "/readyz",
        vec![(Method::GET, web::to(health::readyz))],
    ))
    .service(guarded(
        "/metrics",
        vec![(Method::GET, web::to(health::metrics))],
    ))
    .service(guarded(
        "/openapi.json",
        vec![(Method::GET, web::to(openapi::document))],
    ))
    .default_service(web::to(not_found));
}

/// The resource at `path` with its routes, each method named once: the
/// same list guards the handlers and makes the `Allow` header of the 405
/// that any other method gets (`HEAD` and `OPTIONS` included: they are not
/// routes of their own).
fn resource(path: &str, routes: Vec<(actix_web::http::Method, Route)>) -> Resource {
    let allow = routes
        .iter()
        .map(|(method, _)| method.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let allow = HeaderValue::from_str(&allow).expect("method names are header-safe");
    let mut resource = web::resource(path);
    for (method, route) in routes {
        resource = resource.route(route.method(method));
    }
    resource.default_service(web::to(move |req: HttpRequest| {
        let allow = allow.clone();
        async move { method_not_allowed(&req, allow) }
    }))
}

async fn not_found(req: HttpRequest) -> HttpResponse {
    actix_web::ResponseError::error_response(&ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {} {}", req.method(), req.path()),
    ))
}

/// 405 `method_not_allowed`, with `Allow` listing the resource's methods.
fn method_not_allowed(req: &HttpRequest, allow: HeaderValue) -> HttpResponse {
    let mut response = actix_web::ResponseError::error_response(&ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}; allowed: {}",
            req.method(),
            req.path(),
            allow.to_str().unwrap_or_default()
        ),
    ));
    response.headers_mut().insert(header::ALLOW, allow);
    response
}
