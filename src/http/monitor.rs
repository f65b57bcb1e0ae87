//! `GET /v1/overview`, `GET /v1/policies/{id}/timeseries`: the live page's
//! data, from the per-replica aggregates of [`crate::monitor`] (and, for
//! pending events, the shared store). Every figure is this replica's unless
//! its `scope` says `store` (shared by every replica).

use super::AppState;
use super::error::ApiError;
use super::openapi::PolicyId;
use crate::monitor::{self, Aggregate, IntervalMethod};
use crate::runtime::PolicyRuntime;
use actix_web::{HttpRequest, HttpResponse, web};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use utoipa::ToSchema;

/// Longest `window` in seconds: the monitor keeps one hour.
pub const MAX_WINDOW_SECS: i64 = monitor::BUCKETS as i64;
/// The `window` when none is given.
pub const DEFAULT_WINDOW: &str = "15m";
/// The `step` when none is given.
pub const DEFAULT_STEP: &str = "10s";

/// Where a figure comes from.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// This replica only (see `replica`).
    Replica,
    /// The shared store: every replica's.
    Store,
}

/// One arm's figures over a span (aligned with the response's `arms`).
#[derive(Debug, Serialize, ToSchema)]
pub struct ArmSpan {
    /// Decisions that chose it.
    pub decisions: u64,
    /// Its share of the span's decisions (null without decisions).
    pub share: Option<f64>,
    /// Rewards learned for it, default rewards included.
    pub rewards: u64,
    /// Their mean (null without rewards).
    pub mean: Option<f64>,
    /// The 95 % interval's lower bound (see the response's `interval`).
    pub low: Option<f64>,
    /// Its upper bound.
    pub high: Option<f64>,
}

/// A policy's figures over a span of seconds, on this replica.
#[derive(Debug, Serialize, ToSchema)]
pub struct Span {
    /// The span's first second (unix seconds).
    pub t: i64,
    /// Its length in seconds.
    pub seconds: i64,
    /// Decisions made.
    pub decisions: u64,
    /// Decisions per second over the span: over the time elapsed in it,
    /// for the last span, which ends with the current second.
    pub decisions_per_second: f64,
    /// Rewards learned (received ones and default ones).
    pub rewards: u64,
    /// Rewards per second over the span (as `decisions_per_second`).
    pub rewards_per_second: f64,
    /// Default rewards: windows that closed without a reward.
    pub default_rewards: u64,
    /// Decisions made while the model store was unavailable.
    pub degraded: u64,
    /// The smallest propensity logged (null without decisions).
    pub min_propensity: Option<f64>,
    /// Effective sample size `(Σw)²/Σw²` of the span's decisions for
    /// evaluating the uniform-over-eligible policy, `w = 1/(eligible · p)`
    /// with `p` the logged propensity: equal to `decisions` under uniform
    /// logging, falling as the policy stops exploring (null without
    /// decisions).
    pub ess: Option<f64>,
    /// `ess / decisions`, in (0, 1].
    pub ess_ratio: Option<f64>,
    /// Guardrail outcomes, counted per decision: `held` (only the fallback
    /// was eligible), and per exclusion reason (`cap`, `gap`,
    /// `quiet_hours`, `budget`, `recovery`, `unavailable`, `excluded`) the
    /// decisions where some arm was excluded for it.
    pub guardrails: BTreeMap<String, u64>,
    /// Every arm together: the mean reward with its interval.
    pub reward: ArmSpan,
    /// Per arm, in the order of the response's `arms`.
    pub arms: Vec<ArmSpan>,
}

fn arm_span(a: &monitor::ArmAggregate, total: u64, binary: bool) -> ArmSpan {
    let i = monitor::reward_interval(a, binary);
    ArmSpan {
        decisions: a.decisions,
        share: (total > 0).then(|| a.decisions as f64 / total as f64),
        rewards: a.rewards,
        mean: i.map(|i| i.mean),
        low: i.map(|i| i.low),
        high: i.map(|i| i.high),
    }
}

/// When a span is read: its last whole second and how far into the
/// current one (unix ms).
#[derive(Clone, Copy)]
struct Now {
    second: i64,
    ms: i64,
}

impl Now {
    fn at(ms: i64) -> Now {
        Now {
            second: ms.div_euclid(1000),
            ms,
        }
    }

    /// Seconds elapsed in the span of `seconds` from second `t`: all of
    /// them for a past span, up to now for the one that holds the current
    /// second (so its rates do not read low while it fills).
    fn elapsed(self, t: i64, seconds: i64) -> f64 {
        if t + seconds - 1 < self.second {
            return seconds as f64;
        }
        let into = self.ms.rem_euclid(1000).max(1) as f64 / 1000.0;
        (self.second - t) as f64 + into
    }
}

fn span(t: i64, seconds: i64, now: Now, a: &Aggregate, binary: bool) -> Span {
    let names = monitor::guardrail_names();
    let rewards = a.rewards();
    let ess = a.ess();
    let elapsed = now.elapsed(t, seconds);
    Span {
        t,
        seconds,
        decisions: a.decisions,
        decisions_per_second: a.decisions as f64 / elapsed,
        rewards,
        rewards_per_second: rewards as f64 / elapsed,
        default_rewards: a.default_rewards,
        degraded: a.degraded,
        min_propensity: a.min_propensity.is_finite().then_some(a.min_propensity),
        ess,
        ess_ratio: ess.map(|e| e / a.decisions.max(1) as f64),
        guardrails: names
            .iter()
            .zip(a.guardrails)
            .map(|(n, c)| (n.to_string(), c))
            .collect(),
        reward: arm_span(&a.overall(), a.decisions, binary),
        arms: a
            .arms
            .iter()
            .map(|r| arm_span(r, a.decisions, binary))
            .collect(),
    }
}

fn method(binary: bool) -> IntervalMethod {
    if binary {
        IntervalMethod::Wilson
    } else {
        IntervalMethod::Normal
    }
}

/// `GET /v1/policies/{id}/timeseries`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Timeseries {
    /// The policy.
    #[schema(value_type = PolicyId)]
    pub policy: String,
    /// The replica these figures are from.
    pub replica: String,
    /// Always `replica`: the series is this replica's traffic.
    pub scope: Scope,
    /// The window, in seconds.
    pub window_seconds: i64,
    /// The step, in seconds.
    pub step_seconds: i64,
    /// The window's last second (unix seconds; the current, partial one).
    pub end: i64,
    /// Row names: the arms of a disjoint policy (beyond 32 arms the last
    /// row is `(other)`), or `all` for a shared-mode policy (its actions
    /// are the caller's).
    pub arms: Vec<String>,
    /// The reward intervals: `wilson` (Wilson's score interval, when every
    /// reward in the window was 0 or 1) or `normal` (mean ± 1.96·s/√n with
    /// the sample variance); both at 95 %.
    #[schema(value_type = String)]
    pub interval: IntervalMethod,
    /// One span per step, oldest first.
    pub points: Vec<Span>,
    /// The whole window.
    pub total: Span,
}

#[derive(Deserialize)]
struct TimeseriesQuery {
    window: Option<String>,
    step: Option<String>,
}

/// Parses a duration of whole seconds: `90`, `90s`, `15m`, `1h`.
fn seconds(text: &str) -> Option<i64> {
    let (digits, unit) = match text.as_bytes().last()? {
        b's' => (&text[..text.len() - 1], 1),
        b'm' => (&text[..text.len() - 1], 60),
        b'h' => (&text[..text.len() - 1], 3_600),
        _ => (text, 1),
    };
    if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<i64>().ok().map(|n| n * unit)
}

/// The checked `(window, step)` of a timeseries query, in seconds.
fn window_and_step(query: &str) -> Result<(i64, i64), ApiError> {
    let q = web::Query::<TimeseriesQuery>::from_query(query).map_err(|e| {
        ApiError::new(
            actix_web::http::StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("cannot read the query string: {e}"),
        )
    })?;
    let window_text = q.window.as_deref().unwrap_or(DEFAULT_WINDOW);
    let window = seconds(window_text)
        .filter(|w| (1..=MAX_WINDOW_SECS).contains(w))
        .ok_or_else(|| {
            ApiError::field(
                "invalid_query",
                "window",
                format!(
                    "window is a duration of 1s to 1h: whole seconds, minutes or hours (`90s`, `15m`, `1h`); got {:?}",
                    shorten(window_text)
                ),
            )
        })?;
    let step_text = q.step.as_deref().unwrap_or(DEFAULT_STEP);
    let step = seconds(step_text)
        .filter(|s| (1..=window).contains(s) && window % s == 0)
        .ok_or_else(|| {
            ApiError::field(
                "invalid_query",
                "step",
                format!(
                    "step is a duration of 1s up to the window ({window}s) that divides it evenly (`10s`, `1m`); got {:?}",
                    shorten(step_text)
                ),
            )
        })?;
    Ok((window, step))
}

/// What is echoed of a bad value: at most 32 characters.
fn shorten(s: &str) -> String {
    s.chars().take(32).collect()
}

/// This replica's figures for policy `id` over the last `window`, in steps
/// of `step`: decisions and rewards per second, each arm's share of
/// decisions and reward mean with a 95 % interval, default rewards, the
/// smallest propensity, the effective sample size, guardrail outcomes.
/// Computed from in-memory aggregates (one-second buckets, one hour kept);
/// costs the decide path nothing but a few atomic adds.
#[utoipa::path(
    get,
    path = "/v1/policies/{id}/timeseries",
    params(
        ("id" = PolicyId, Path, description = "Policy id"),
        ("window" = Option<String>, Query, description = "How far back: 1s to 1h, as whole seconds, minutes or hours (`90s`, `15m`, `1h`; default `15m`)", pattern = "^[0-9]{1,6}[smh]?$"),
        ("step" = Option<String>, Query, description = "The width of each point: 1s up to `window`, dividing it evenly (default `10s`)", pattern = "^[0-9]{1,6}[smh]?$"),
    ),
    responses(
        (status = 200, description = "The series", body = Timeseries),
        (status = 400, description = "`invalid_query` naming `window` or `step`; `invalid_policy_id`", body = super::error::ErrorBody),
        (status = 404, description = "`unknown_policy`", body = super::error::ErrorBody),
    )
)]
pub async fn timeseries(
    state: web::Data<AppState>,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let rt = state.policy(&path, "id")?;
    let (window, step) = window_and_step(req.query_string())?;
    let now = Now::at(crate::service::unix_ms());
    let end = now.second;
    let total = rt.monitor.aggregate(end - window + 1, end);
    let binary = !total.non_binary;
    let points = rt
        .monitor
        .series(end, window, step)
        .iter()
        .map(|(t, a)| span(*t, step, now, a, binary))
        .collect();
    Ok(HttpResponse::Ok().json(Timeseries {
        policy: rt.id().to_string(),
        replica: state.replica.clone(),
        scope: Scope::Replica,
        window_seconds: window,
        step_seconds: step,
        end,
        arms: rt.monitor.rows().to_vec(),
        interval: method(binary),
        points,
        total: span(end - window + 1, window, now, &total, binary),
    }))
}

/// This replica's store and log health.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `replica`.
    pub scope: Scope,
    /// `memory` or `redis`.
    pub store: String,
    /// The last store call succeeded.
    pub store_ok: bool,
    /// Store operations waiting in this replica's outbox.
    pub outbox_ops: u64,
    /// Replayed operations waiting for their event to reach the store.
    pub outbox_parked: u64,
    /// The decision log database answers.
    pub log_ok: bool,
    /// Log records queued in memory.
    pub log_queue: u64,
    /// Bytes in the log spool (written while the database is away).
    pub log_spool_bytes: u64,
    /// SIGTERM arrived: the replica is stopping.
    pub draining: bool,
}

/// One policy in the overview.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyOverview {
    /// Policy id.
    #[schema(value_type = PolicyId)]
    pub id: String,
    /// The policy definition's version.
    pub version: u32,
    /// `linucb`, `lin_ts`, …
    pub algorithm: String,
    /// `disjoint` or `shared`.
    pub mode: String,
    /// Row names, as in the timeseries (`all` for shared mode).
    pub arms: Vec<String>,
    /// This replica's model version.
    pub model_version: u64,
    /// When this replica's model last synced with the store (unix ms; null:
    /// never).
    pub last_sync_ms: Option<i64>,
    /// Events whose reward window is still open (rewarded or not), from
    /// the shared store: every replica's (null if the store did not
    /// answer).
    pub pending_events: Option<u64>,
    /// Always `store`: `pending_events` is cross-replica.
    pub pending_scope: Scope,
    /// The default reward a closed window gets.
    pub default_reward: f64,
    /// The reward window, in seconds.
    pub reward_window_seconds: f64,
    /// The last 60 seconds on this replica.
    pub last_minute: Span,
    /// The reward intervals of `last_minute` (`wilson` or `normal`).
    #[schema(value_type = String)]
    pub interval: IntervalMethod,
    /// `online`, `logging_only` or `apprentice`.
    pub learning: String,
    /// Is it learning? `{live, greedy, challengers}`: the live policy's
    /// mean reward, the progressive validation of the model's greedy
    /// choice and each shadow challenger's estimate, over the events this
    /// replica folded since it loaded the policy (every replica folds the
    /// same ones), as in `GET /v1/policies/{id}`.
    #[schema(value_type = Object)]
    pub estimates: crate::runtime::ShadowReport,
    /// Learning alerts raised now (`[{policy, alert, message}]`).
    #[schema(value_type = Vec<Object>)]
    pub alerts: Vec<crate::alerts::Alert>,
}

/// `GET /v1/overview`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Overview {
    /// The replica answering.
    pub replica: String,
    /// Its clock (unix ms).
    pub now_ms: i64,
    /// When it started (unix ms).
    pub started_ms: i64,
    /// Its store and log health.
    pub health: Health,
    /// Every live policy.
    pub policies: Vec<PolicyOverview>,
}

async fn policy_overview(state: &AppState, rt: &PolicyRuntime, now: Now) -> PolicyOverview {
    let end = now.second;
    let pending = state.store.pending(rt.id()).await;
    state.store_result("pending", &pending);
    let spec = rt.policy.spec();
    let a = rt.monitor.aggregate(end - 59, end);
    let binary = !a.non_binary;
    PolicyOverview {
        id: spec.id.clone(),
        version: spec.version,
        algorithm: spec.algorithm.name().to_string(),
        mode: spec.mode.name().to_string(),
        arms: rt.monitor.rows().to_vec(),
        model_version: rt.model().version(),
        last_sync_ms: rt.last_sync_ms(),
        pending_events: pending.ok(),
        pending_scope: Scope::Store,
        default_reward: spec.reward.default,
        reward_window_seconds: spec.reward.window.as_secs_f64(),
        last_minute: span(end - 59, 60, now, &a, binary),
        interval: method(binary),
        learning: spec.learning.name().to_string(),
        estimates: rt.shadow().await,
        alerts: crate::alerts::evaluate(rt.id(), &rt.monitor, &spec.alerts, now.ms),
    }
}

/// Every policy with its model version, last sync, pending events (from
/// the store: cross-replica) and last minute on this replica; and this
/// replica's store and log health (outbox, spool, queue). What the live
/// page polls.
#[utoipa::path(
    get,
    path = "/v1/overview",
    responses((status = 200, description = "The overview", body = Overview))
)]
pub async fn overview(state: web::Data<AppState>) -> HttpResponse {
    let now_ms = crate::service::unix_ms();
    let now = Now::at(now_ms);
    let set = state.policies.load_full();
    let policies = futures_util::future::join_all(
        set.live.values().map(|rt| policy_overview(&state, rt, now)),
    )
    .await;
    HttpResponse::Ok().json(Overview {
        replica: state.replica.clone(),
        now_ms,
        started_ms: state.started_ms,
        health: Health {
            scope: Scope::Replica,
            store: state.store.kind().to_string(),
            store_ok: state.store_healthy.load(Ordering::Relaxed),
            outbox_ops: state.outbox.len() as u64,
            outbox_parked: state.outbox.parked_len() as u64,
            log_ok: state.log.db_healthy(),
            log_queue: state.log.queue_depth() as u64,
            log_spool_bytes: state.log.spool_bytes(),
            draining: state.draining.load(Ordering::Relaxed),
        },
        policies,
    })
}

/// The live page: one self-contained HTML file (its script and styles
/// inline, charts drawn as SVG; nothing fetched from elsewhere), which polls
/// `GET /v1/overview` and `GET /v1/policies/{id}/timeseries`. The page holds
/// no data, so it needs no key; the routes it reads need `read` when keys
/// are configured, and the page asks for one (kept in the tab's session
/// storage, or given as `#key=…`) and sends it as `Authorization: Bearer`.
#[utoipa::path(
    get,
    path = "/",
    responses((status = 200, description = "The live page (HTML)", content_type = "text/html"))
)]
pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        // The page is served by the binary it watches: a new version's page
        // must not be read from a cache.
        .insert_header(("Cache-Control", "no-cache"))
        .body(PAGE)
}

/// The page's HTML.
const PAGE: &str = include_str!("ui.html");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_span_holding_the_current_second_counts_only_the_time_elapsed() {
        let now = Now::at(100_250); // 250 ms into second 100
        assert_eq!(now.elapsed(90, 10), 10.0);
        assert!((now.elapsed(91, 10) - 9.25).abs() < 1e-12);
        assert!((now.elapsed(100, 1) - 0.25).abs() < 1e-12);
        // At a second's first millisecond: never a division by zero.
        assert!(Now::at(100_000).elapsed(100, 5) > 0.0);
    }

    #[test]
    fn durations_are_whole_seconds_minutes_or_hours() {
        assert_eq!(seconds("90"), Some(90));
        assert_eq!(seconds("90s"), Some(90));
        assert_eq!(seconds("15m"), Some(900));
        assert_eq!(seconds("1h"), Some(3_600));
        for bad in ["", "s", "1.5m", "-1s", "1d", "m5", "10 s", "9999999s", "١s"] {
            assert_eq!(seconds(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn window_and_step_are_checked_and_named() {
        assert_eq!(window_and_step("").unwrap(), (900, 10));
        assert_eq!(window_and_step("window=1h&step=1m").unwrap(), (3_600, 60));
        assert_eq!(window_and_step("window=5s&step=5s").unwrap(), (5, 5));
        for (query, field) in [
            ("window=2h", "window"),
            ("window=0s", "window"),
            ("window=abc", "window"),
            ("step=0", "step"),
            ("window=1m&step=7s", "step"),
            ("window=1m&step=2m", "step"),
        ] {
            let e = window_and_step(query).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{query}");
            assert_eq!(e.code, "invalid_query");
        }
    }
}
