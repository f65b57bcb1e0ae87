//! Access control and rate limits: role-based API keys, checked by one
//! middleware ([`Require`]) that [`super::routes`] puts on every resource
//! but the health checks.
//!
//! # Keys and roles
//! A key has a role: `decide` (decide, reward, activate), `read` (policy
//! list, description, snapshot and timeseries, the overview, metrics, the
//! OpenAPI document) or `admin`
//! (everything, including reset). Keys come from `NUDGE_API_KEYS`
//! (`name:role[@rate[/burst]]:secret`, comma-separated; see
//! [`parse_env_keys`]), from the TOML file `NUDGE_API_KEYS_FILE` (see
//! [`parse_key_file`]), and `NUDGE_ADMIN_TOKEN` is one more admin key.
//!
//! Which requests need a key:
//! - no key configured at all: none (embedded use; everything is open);
//! - only `NUDGE_ADMIN_TOKEN`: admin routes only (what that setting always
//!   meant; decide and read routes stay open);
//! - any `NUDGE_API_KEYS` / `NUDGE_API_KEYS_FILE` key: every route except
//!   `/healthz`, `/readyz` and the live page `/` (its HTML holds no data;
//!   the routes it reads need `read`).
//!
//! A key is sent as `Authorization: Bearer <key>` or `X-Api-Key: <key>`. A
//! missing or unknown key is 401 `unauthorized` (with `WWW-Authenticate:
//! Bearer`), a key whose role does not cover the route 403 `forbidden`.
//!
//! The presented key is hashed (SHA-256) and the digest compared in
//! constant time with every configured key's digest, without stopping at a
//! match: the time taken says nothing about which key, if any, matched, nor
//! about a secret's length. Secrets are never logged; keys are named in
//! metrics and messages by their `name`.
//!
//! # Rate limits
//! Each key may have a rate (requests per second) and a burst; keys without
//! their own take `NUDGE_RATE_LIMIT` / `NUDGE_RATE_BURST` (unset = no limit).
//! Requests that need no key share one anonymous limit with the same
//! default. Over the limit: 429 `rate_limited` with `Retry-After` (whole
//! seconds, at least 1). The limiters are `governor`'s GCRA, one lock-free
//! cell per key.

use super::AppState;
use super::error::ApiError;
use crate::config::Settings;
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError, web};
use futures_util::future::{Either, Ready, ready};
use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Decide, reward, activate.
    Decide,
    /// Inspect policies, metrics, the OpenAPI document.
    Read,
    /// Everything, including reset.
    Admin,
}

impl Role {
    /// The role's name in configuration and messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::Decide => "decide",
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Role> {
        match s {
            "decide" => Some(Role::Decide),
            "read" => Some(Role::Read),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The routes (by the need bit) a key of this role may call.
    fn grants(self) -> u8 {
        match self {
            Role::Decide => Role::Decide.bit(),
            Role::Read => Role::Read.bit(),
            Role::Admin => Role::Decide.bit() | Role::Read.bit() | Role::Admin.bit(),
        }
    }

    fn bit(self) -> u8 {
        match self {
            Role::Decide => 1,
            Role::Read => 2,
            Role::Admin => 4,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The role each guarded route needs, by its path pattern: the one table
/// that [`super::routes`] and the OpenAPI document read. Routes not listed
/// (`/healthz`, `/readyz`, and `/`, the live page, which holds no data:
/// its figures come from `read` routes) need no key.
pub const ROUTE_ROLES: &[(&str, Role)] = &[
    ("/v1/decide", Role::Decide),
    ("/v1/reward", Role::Decide),
    ("/v1/events/{event_id}/activate", Role::Decide),
    ("/v1/policies", Role::Read),
    ("/v1/policies/reload", Role::Admin),
    ("/v1/policies/{id}", Role::Read),
    ("/v1/policies/{id}/snapshot", Role::Read),
    ("/v1/policies/{id}/reset", Role::Admin),
    ("/v1/policies/{id}/promote", Role::Admin),
    ("/v1/policies/{id}/timeseries", Role::Read),
    ("/v1/overview", Role::Read),
    ("/metrics", Role::Read),
    ("/openapi.json", Role::Read),
];

/// The role `path` (a route pattern) needs, if any.
pub fn route_role(path: &str) -> Option<Role> {
    ROUTE_ROLES.iter().find(|(p, _)| *p == path).map(|r| r.1)
}

/// Shortest secret accepted in `NUDGE_API_KEYS` and the key file: long
/// enough that guessing is hopeless (e.g. 32 hex characters from
/// `openssl rand -hex 16`).
pub const MIN_SECRET_LEN: usize = 16;

/// A key as configured, before it is hashed.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySpec {
    /// Names the key in metrics, logs and messages (never the secret).
    #[serde(default)]
    pub name: Option<String>,
    /// What the key may do.
    pub role: Role,
    /// The secret the caller sends.
    pub secret: String,
    /// Requests per second allowed (default: `NUDGE_RATE_LIMIT`).
    #[serde(default)]
    pub rate: Option<f64>,
    /// Requests allowed at once above the rate (default: `NUDGE_RATE_BURST`,
    /// else the rate rounded up).
    #[serde(default)]
    pub burst: Option<u32>,
}

// The secret stays out of every Debug output.
impl fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySpec")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("secret", &"***")
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .finish()
    }
}

/// A key configuration that cannot be used; the service refuses to start.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{source_name}: {message}")]
pub struct KeyError {
    /// Where the bad configuration is (`NUDGE_API_KEYS entry 2`, a file).
    pub source_name: String,
    /// What is wrong with it (never quoting a secret).
    pub message: String,
}

fn key_error(source: impl Into<String>, message: impl Into<String>) -> KeyError {
    KeyError {
        source_name: source.into(),
        message: message.into(),
    }
}

/// Parses `NUDGE_API_KEYS`: comma-separated entries
/// `name:role[@rate[/burst]]:secret`. The name may be empty (the key is then
/// called `key-<n>`); the role is `decide`, `read` or `admin`; the rate is
/// requests per second (a decimal number), the burst a whole number; the
/// secret is everything after the second colon (it may contain colons, not
/// commas or whitespace) and is at least [`MIN_SECRET_LEN`] bytes.
/// Whitespace around entries is ignored, and so are empty entries.
pub fn parse_env_keys(text: &str) -> Result<Vec<KeySpec>, KeyError> {
    let mut keys = Vec::new();
    for (i, entry) in text.split(',').map(str::trim).enumerate() {
        if entry.is_empty() {
            continue;
        }
        let at = format!("NUDGE_API_KEYS entry {}", i + 1);
        let mut parts = entry.splitn(3, ':');
        let (Some(name), Some(role), Some(secret)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(key_error(
                at,
                "expected `name:role:secret` (name may be empty, role is decide, read or admin)",
            ));
        };
        let (role, limits) = match role.split_once('@') {
            Some((role, limits)) => (role, Some(limits)),
            None => (role, None),
        };
        let role = Role::parse(role).ok_or_else(|| {
            key_error(
                &at,
                format!("unknown role {role:?}: expected decide, read or admin"),
            )
        })?;
        let (rate, burst) = match limits {
            None => (None, None),
            Some(limits) => {
                let (rate, burst) = match limits.split_once('/') {
                    Some((r, b)) => (r, Some(b)),
                    None => (limits, None),
                };
                let rate = rate.parse::<f64>().map_err(|_| {
                    key_error(
                        &at,
                        format!("rate {rate:?} is not a number (requests per second)"),
                    )
                })?;
                let burst = burst
                    .map(|b| {
                        b.parse::<u32>().map_err(|_| {
                            key_error(&at, format!("burst {b:?} is not a whole number"))
                        })
                    })
                    .transpose()?;
                (Some(rate), burst)
            }
        };
        if secret.chars().any(char::is_whitespace) {
            return Err(key_error(at, "the secret contains whitespace"));
        }
        keys.push(KeySpec {
            name: (!name.is_empty()).then(|| name.to_owned()),
            role,
            secret: secret.to_owned(),
            rate,
            burst,
        });
    }
    Ok(keys)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    keys: Vec<KeySpec>,
}

/// Parses a key file (TOML): an array of tables `[[keys]]` with `name`
/// (optional), `role`, `secret`, `rate` and `burst` (optional).
pub fn parse_key_file(text: &str, source: &str) -> Result<Vec<KeySpec>, KeyError> {
    let file: KeyFile = toml::from_str(text).map_err(|e| {
        // TOML errors quote the offending line, which may hold a secret.
        let line = e
            .span()
            .map(|s| text[..s.start].lines().count().max(1))
            .map_or(String::new(), |l| format!(" (line {l})"));
        key_error(
            source,
            format!("not a key file{line}: expected [[keys]] tables with name, role, secret, rate, burst"),
        )
    })?;
    Ok(file.keys)
}

type Limiter = DefaultDirectRateLimiter;

/// One configured key, ready for the request path.
struct Key {
    digest: [u8; 32],
    name: String,
    grants: u8,
    limiter: Option<Limiter>,
}

/// The access rules of a running service: keys, what anonymous requests
/// may do, and the limiters.
pub struct Auth {
    keys: Vec<Key>,
    /// The needs a request without a (valid) key satisfies.
    anonymous: u8,
    anonymous_limiter: Option<Limiter>,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field(
                "keys",
                &self.keys.iter().map(|k| &k.name).collect::<Vec<_>>(),
            )
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

fn quota(rate: f64, burst: Option<u32>, at: &str) -> Result<Quota, KeyError> {
    if !(rate.is_finite() && rate > 0.0) {
        return Err(key_error(
            at,
            format!("rate {rate} must be a positive number of requests per second"),
        ));
    }
    let period = Duration::try_from_secs_f64(1.0 / rate)
        .ok()
        .filter(|p| !p.is_zero())
        .ok_or_else(|| key_error(at, format!("rate {rate} is out of range")))?;
    let burst = burst.unwrap_or(rate.ceil().min(u32::MAX as f64) as u32);
    let burst = NonZeroU32::new(burst).ok_or_else(|| key_error(at, "burst must be at least 1"))?;
    Ok(Quota::with_period(period)
        .expect("period is not zero")
        .allow_burst(burst))
}

impl Auth {
    /// Builds the rules from the settings: `api_keys`, `api_keys_file`,
    /// `admin_token`, `rate_limit`, `rate_burst`. Rejects bad entries,
    /// short secrets, unknown roles, duplicate names and duplicate secrets.
    pub fn from_settings(settings: &Settings) -> Result<Auth, KeyError> {
        let mut specs: Vec<(String, KeySpec)> = Vec::new();
        if let Some(text) = &settings.api_keys {
            let parsed = parse_env_keys(text)?;
            specs.extend(
                parsed
                    .into_iter()
                    .enumerate()
                    .map(|(i, k)| (format!("NUDGE_API_KEYS entry {}", i + 1), k)),
            );
        }
        if let Some(path) = &settings.api_keys_file {
            let source = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .map_err(|e| key_error(&source, format!("cannot read: {e}")))?;
            let parsed = parse_key_file(&text, &source)?;
            specs.extend(
                parsed
                    .into_iter()
                    .enumerate()
                    .map(|(i, k)| (format!("{source} key {}", i + 1), k)),
            );
        }
        let api_keys = !specs.is_empty();
        for (at, spec) in &specs {
            if spec.secret.len() < MIN_SECRET_LEN {
                return Err(key_error(
                    at,
                    format!("secrets are at least {MIN_SECRET_LEN} bytes"),
                ));
            }
        }
        if let Some(token) = &settings.admin_token {
            if token.is_empty() {
                return Err(key_error("NUDGE_ADMIN_TOKEN", "is empty"));
            }
            specs.push((
                "NUDGE_ADMIN_TOKEN".into(),
                KeySpec {
                    name: Some("admin-token".into()),
                    role: Role::Admin,
                    secret: token.clone(),
                    rate: None,
                    burst: None,
                },
            ));
        }
        let default_quota = settings
            .rate_limit
            .map(|r| quota(r, settings.rate_burst, "NUDGE_RATE_LIMIT"))
            .transpose()?;
        let mut keys: Vec<Key> = Vec::with_capacity(specs.len());
        for (i, (at, spec)) in specs.iter().enumerate() {
            let name = spec
                .name
                .clone()
                .unwrap_or_else(|| format!("key-{}", i + 1));
            if name.is_empty()
                || name.len() > 64
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            {
                return Err(key_error(
                    at,
                    "key names are 1 to 64 characters of [A-Za-z0-9_.-]",
                ));
            }
            let digest: [u8; 32] = Sha256::digest(spec.secret.as_bytes()).into();
            if keys.iter().any(|k| k.name == name) {
                return Err(key_error(at, format!("a second key named {name:?}")));
            }
            if keys.iter().any(|k| k.digest == digest) {
                return Err(key_error(
                    at,
                    format!("key {name:?} has the same secret as an earlier key"),
                ));
            }
            let quota = match spec.rate {
                Some(rate) => Some(quota(rate, spec.burst.or(settings.rate_burst), at)?),
                None => default_quota,
            };
            keys.push(Key {
                digest,
                name,
                grants: spec.role.grants(),
                limiter: quota.map(RateLimiter::direct),
            });
        }
        let anonymous = if api_keys {
            0
        } else if settings.admin_token.is_some() {
            Role::Decide.bit() | Role::Read.bit()
        } else {
            Role::Admin.grants()
        };
        let mode = if api_keys {
            "every route but /healthz and /readyz needs a key"
        } else if settings.admin_token.is_some() {
            "only admin routes need a key (NUDGE_ADMIN_TOKEN alone)"
        } else {
            "open: no API key configured"
        };
        tracing::info!(keys = keys.len(), mode, "access control");
        Ok(Auth {
            keys,
            anonymous,
            anonymous_limiter: default_quota.map(RateLimiter::direct),
        })
    }

    /// Whether any route needs a key.
    pub fn enforced(&self) -> bool {
        self.anonymous != Role::Admin.grants()
    }

    /// Admits a request to a route that needs `need`, or says why not.
    /// Allocates nothing when the request is admitted.
    fn admit(&self, req: &ServiceRequest, need: Role) -> Result<(), Box<Rejection>> {
        let bit = need.bit();
        if self.anonymous & bit != 0 {
            return Self::limit(self.anonymous_limiter.as_ref(), "anonymous");
        }
        let Some(presented) = presented_key(req) else {
            return Err(Box::new(Rejection::unauthorized(
                "this route needs an API key: `Authorization: Bearer <key>`",
            )));
        };
        let digest: [u8; 32] = Sha256::digest(presented).into();
        // Every key is compared; the index of the match is selected without
        // branching on secret data.
        let mut found = 0u32;
        let mut index = 0u32;
        for (i, key) in self.keys.iter().enumerate() {
            let hit = key.digest.ct_eq(&digest);
            index.conditional_assign(&(i as u32), hit);
            found.conditional_assign(&1, hit);
        }
        if found == 0 {
            return Err(Box::new(Rejection::unauthorized("unknown API key")));
        }
        let key = &self.keys[index as usize];
        if key.grants & bit == 0 {
            return Err(Box::new(Rejection::forbidden(key, need)));
        }
        Self::limit(key.limiter.as_ref(), &key.name)
    }

    fn limit(limiter: Option<&Limiter>, name: &str) -> Result<(), Box<Rejection>> {
        let Some(limiter) = limiter else {
            return Ok(());
        };
        limiter.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(limiter.clock().now());
            Box::new(Rejection::rate_limited(name, wait))
        })
    }
}

/// The key of a request: `Authorization: Bearer <key>` (scheme
/// case-insensitive), else `X-Api-Key`.
fn presented_key(req: &ServiceRequest) -> Option<&[u8]> {
    let headers = req.headers();
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.as_bytes();
        return (v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
            .then(|| v[7..].trim_ascii())
            .filter(|k| !k.is_empty());
    }
    headers
        .get("x-api-key")
        .map(|v| v.as_bytes().trim_ascii())
        .filter(|k| !k.is_empty())
}

/// A refused request: the API error plus the header its status calls for.
#[derive(Debug)]
pub struct Rejection {
    error: ApiError,
    header: Option<(header::HeaderName, HeaderValue)>,
    /// For the metrics: the key name (rate limits) or the code.
    label: String,
}

impl Rejection {
    fn unauthorized(message: &str) -> Rejection {
        Rejection {
            error: ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message),
            header: Some((
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"nudge\""),
            )),
            label: "unauthorized".into(),
        }
    }

    fn forbidden(key: &Key, need: Role) -> Rejection {
        Rejection {
            error: ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "key {:?} may not call this route, which needs the {need} role",
                    key.name
                ),
            ),
            header: None,
            label: "forbidden".into(),
        }
    }

    fn rate_limited(name: &str, wait: Duration) -> Rejection {
        // Whole seconds, rounded up: a client that waits that long gets in.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let secs = secs.max(1);
        Rejection {
            error: ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("key {name:?} is over its rate limit; retry in {secs} s"),
            ),
            header: Some((header::RETRY_AFTER, HeaderValue::from(secs))),
            label: name.to_owned(),
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error.fmt(f)
    }
}

impl ResponseError for Rejection {
    fn status_code(&self) -> StatusCode {
        self.error.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = self.error.error_response();
        if let Some((name, value)) = &self.header {
            response.headers_mut().insert(name.clone(), value.clone());
        }
        response
    }
}

/// Middleware: admits requests to a resource that needs a role (see
/// [`ROUTE_ROLES`]), counting refusals in the metrics.
#[derive(Clone, Copy)]
pub struct Require(Role);

impl Require {
    /// The guard of the route with pattern `path`.
    ///
    /// # Panics
    /// When `path` is not in [`ROUTE_ROLES`]: a route added without a role
    /// fails at startup (and in every test), not open in production.
    pub fn route(path: &str) -> Require {
        Require(route_role(path).unwrap_or_else(|| panic!("route {path} has no role")))
    }
}

impl<S, B> Transform<S, ServiceRequest> for Require
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = RequireService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequireService {
            service,
            need: self.0,
        }))
    }
}

/// The service [`Require`] wraps a resource in.
pub struct RequireService<S> {
    service: S,
    need: Role,
}

impl<S, B> Service<ServiceRequest> for RequireService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = Either<S::Future, Ready<Result<ServiceResponse<B>, actix_web::Error>>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let Some(state) = req.app_data::<web::Data<AppState>>() else {
            return Either::Right(ready(Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "no application state",
            )
            .into())));
        };
        match state.auth.admit(&req, self.need) {
            Ok(()) => Either::Left(self.service.call(req)),
            Err(rejection) => {
                let m = &state.metrics;
                if rejection.error.status == StatusCode::TOO_MANY_REQUESTS {
                    m.rate_limited.with_label_values(&[&rejection.label]).inc();
                } else {
                    m.auth_rejections
                        .with_label_values(&[&rejection.label])
                        .inc();
                }
                Either::Right(ready(Err(actix_web::Error::from(*rejection))))
            }
        }
    }
}

#[cfg(test)]
mod tests;
