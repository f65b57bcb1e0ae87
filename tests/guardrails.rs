//! Guardrails end to end over HTTP, on both backends: eligibility before
//! propensities, what the response and the log say about excluded arms,
//! caps and budgets exact under concurrency across two replicas, retries
//! and deferred sends counted once, quiet hours and delivery slots across a
//! DST change with the service's clock set (not slept), and a store outage
//! holding sends instead of over-sending.

mod support;

use chrono::{TimeZone, Utc};
use futures_util::future::join_all;
use serde_json::{Value, json};
use support::{Backend, TestApp, spawn_app_with, spawn_replica};

/// A push policy with every rule; uniform so sends are drawn often.
const GUARDED: &str = r#"
id = "guarded"
algorithm = "uniform"
arms = ["send_now", "send_evening", "skip"]

[[features.context]]
name = "sends_24h"
type = "history"
stat = "sends"
per = "24h"

[guardrails]
send_arms = ["send_now", "send_evening"]
fallback = "skip"
min_gap = "10m"
quiet_hours = { start = "22:00", end = "08:00", redirect = "delay" }
default_timezone = "Europe/Berlin"
delivery = { send_evening = "19:00" }

[[guardrails.caps]]
max = 3
per = "24h"

[reward]
window = "24h"
"#;

/// A budgeted policy without per-user rules.
const BUDGETED: &str = r#"
id = "budgeted"
algorithm = "uniform"
arms = ["send", "hold"]

[guardrails]
send_arms = ["send"]
fallback = "hold"
require_user = true

[[guardrails.budgets]]
max = 10
per = "24h"
"#;

async fn app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |s| {
        std::fs::remove_dir_all(&s.policies).unwrap();
        std::fs::create_dir_all(&s.policies).unwrap();
        std::fs::write(s.policies.join("guarded.toml"), GUARDED).unwrap();
        std::fs::write(s.policies.join("budgeted.toml"), BUDGETED).unwrap();
    })
    .await
}

fn noon() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 6, 1, 10, 0, 0).unwrap() // 12:00 in Berlin
}

fn decide(event: &str, user: &str) -> Value {
    json!({"policy": "guarded", "event_id": event, "user": user})
}

fn is_send(d: &Value) -> bool {
    d["action"] != "skip" && d["action"] != "hold"
}

macro_rules! on_both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                let mut app = app(Backend::Embedded).await;
                ($body)(&app).await;
                app.stop().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn production() {
                let mut app = app(Backend::Production).await;
                ($body)(&app).await;
                app.stop().await;
            }
        }
    };
}

on_both_backends!(
    ineligible_arms_keep_their_place_with_probability_zero_and_a_reason,
    async |app: &TestApp| {
        app.clock.set(noon());
        let mut sends = 0;
        let mut sent_now = 0;
        let mut last = Value::Null;
        for i in 0..40 {
            let (status, d) = app
                .post("/v1/decide", &decide(&format!("e{i}"), "ada"))
                .await;
            assert_eq!(status, 200, "{d}");
            let ranking = d["ranking"].as_array().unwrap();
            assert_eq!(ranking.len(), 3, "every arm stays in the ranking: {d}");
            let total: f64 = ranking
                .iter()
                .map(|r| r["probability"].as_f64().unwrap())
                .sum();
            assert!((total - 1.0).abs() < 1e-12, "{d}");
            for r in ranking {
                if r.get("excluded_by").is_some() {
                    assert_eq!(r["probability"], 0.0, "{d}");
                }
            }
            if is_send(&d) {
                sends += 1;
                sent_now += usize::from(d["action"] == "send_now");
                // 10 minutes later, past the gap.
                app.clock
                    .set(noon() + chrono::Duration::minutes(11 * (i + 1)));
            }
            last = d;
        }
        assert_eq!(sends, 3, "the cap allows three sends a day");
        // Capped: only the fallback is eligible, taken with probability 1.
        assert_eq!(last["action"], "skip");
        assert_eq!(last["probability"], 1.0);
        assert_eq!(last["forced"], true);
        let reasons: Vec<&str> = last["ranking"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|r| r["excluded_by"].as_str())
            .collect();
        // send_now is capped; the evening slot is capped, or too close to
        // an evening send already scheduled (the gap is checked first).
        assert_eq!(reasons[0], "cap", "{last}");
        assert!(["cap", "gap"].contains(&reasons[1]), "{last}");

        // The log row has the eligible set, the reasons and the history
        // feature the model saw.
        let n = app
            .wait_count(
                "SELECT COUNT(*) FROM decisions WHERE policy = 'guarded'",
                40,
            )
            .await;
        assert_eq!(n, 40);
        let row = app.decision_row("e39").await;
        let candidates: Value = serde_json::from_str(&row.0).unwrap();
        assert_eq!(
            candidates,
            json!([
                {"id": "send_now", "probability": 0.0, "excluded_by": "cap"},
                {"id": "send_evening", "probability": 0.0, "excluded_by": reasons[1]},
                {"id": "skip", "probability": 1.0}
            ])
        );
        // Sends so far today; evening sends are still scheduled (17:00 UTC).
        let context: Value = serde_json::from_str(&row.1).unwrap();
        assert_eq!(context["sends_24h"], sent_now as f64, "{context}");
        let guard: Value = serde_json::from_str(row.2.as_deref().unwrap()).unwrap();
        assert_eq!(guard["user"], "ada");
        assert_eq!(guard["forced"], true);
        assert_eq!(guard["timezone"], "Europe/Berlin");
    }
);

on_both_backends!(
    a_retried_decide_and_an_activated_deferred_send_count_once,
    async |app: &TestApp| {
        app.clock.set(noon());
        // Draw until a send comes up; retry it: same answer, one send.
        // Immediate sends only, so the gap between them is known.
        let now_only = |event: &str| {
            let mut body = decide(event, "bo");
            body["excluded"] = json!(["send_evening"]);
            body
        };
        let mut sent = None;
        for i in 0..30 {
            let (_, d) = app.post("/v1/decide", &now_only(&format!("r{i}"))).await;
            if is_send(&d) {
                sent = Some(d);
                break;
            }
        }
        let first = sent.expect("a uniform policy sends within 30 draws");
        for _ in 0..3 {
            let (_, again) = app
                .post("/v1/decide", &now_only(first["event_id"].as_str().unwrap()))
                .await;
            assert_eq!(again, first);
        }
        // Deferred sends count when activated, not before.
        app.clock.set(noon() + chrono::Duration::hours(1));
        let mut deferred = vec![];
        for i in 0..40 {
            let mut body = now_only(&format!("d{i}"));
            body["defer"] = json!(true);
            let (status, d) = app.post("/v1/decide", &body).await;
            assert_eq!(status, 200, "{d}");
            if is_send(&d) {
                deferred.push(d["event_id"].as_str().unwrap().to_string());
            }
        }
        assert!(
            deferred.len() >= 4,
            "deferred sends are not capped before activation"
        );
        let mut activated = 0;
        let mut refused = 0;
        for (i, event) in deferred.iter().enumerate() {
            app.clock.set(
                noon() + chrono::Duration::hours(1) + chrono::Duration::minutes(11 * i as i64),
            );
            let path = format!("/v1/events/{event}/activate");
            let (status, body) = app.post_raw(&path, vec![]).await;
            match status {
                200 => {
                    activated += 1;
                    // Activating again is idempotent and counts nothing.
                    let (again, _) = app.post_raw(&path, vec![]).await;
                    assert_eq!(again, 200);
                }
                409 => {
                    assert_eq!(body["error"]["code"], "guardrail", "{body}");
                    refused += 1;
                }
                other => panic!("activation answered {other}: {body}"),
            }
        }
        // One send before, two activations fit under the cap of three.
        assert_eq!(activated, 2);
        assert_eq!(refused, deferred.len() - 2);
    }
);

on_both_backends!(
    quiet_hours_and_delivery_slots_follow_local_time_across_dst,
    async |app: &TestApp| {
        // 2026-03-29 05:30 UTC: 07:30 CEST in Berlin, the morning DST began.
        app.clock
            .set(Utc.with_ymd_and_hms(2026, 3, 29, 5, 30, 0).unwrap());
        let mut seen_now = false;
        for i in 0..30 {
            let (status, d) = app
                .post("/v1/decide", &json!({"policy": "guarded", "event_id": format!("q{i}"), "user": format!("u{i}")}))
                .await;
            assert_eq!(status, 200, "{d}");
            match d["action"].as_str().unwrap() {
                // Delayed to the end of quiet hours: 08:00 CEST = 06:00 UTC.
                "send_now" => {
                    assert_eq!(d["send_at"], "2026-03-29T06:00:00.000Z", "{d}");
                    seen_now = true;
                }
                // 19:00 CEST = 17:00 UTC.
                "send_evening" => assert_eq!(d["send_at"], "2026-03-29T17:00:00.000Z", "{d}"),
                _ => assert!(d.get("send_at").is_none(), "{d}"),
            }
        }
        assert!(seen_now);
        // New York on the same instant: 01:30 EDT, quiet until 08:00 EDT.
        let mut body = json!({"policy": "guarded", "event_id": "ny", "user": "ny", "timezone": "America/New_York", "excluded": ["send_evening", "skip"]});
        let (_, d) = app.post("/v1/decide", &body).await;
        assert_eq!(d["send_at"], "2026-03-29T12:00:00.000Z", "{d}");
        assert_eq!(d["timezone"], "America/New_York");
        body["timezone"] = json!("Mars/Olympus");
        body["event_id"] = json!("mars");
        let (status, e) = app.post("/v1/decide", &body).await;
        assert_eq!(status, 400);
        assert_eq!(e["error"]["field"], "timezone", "{e}");
        // A user id outside the charset, and a history feature sent by the
        // caller, are refused naming the field.
        let (status, e) = app
            .post("/v1/decide", &json!({"policy": "guarded", "user": "a b"}))
            .await;
        assert_eq!(status, 400);
        assert_eq!(e["error"]["field"], "user", "{e}");
        let (status, e) = app
            .post(
                "/v1/decide",
                &json!({"policy": "guarded", "user": "x", "context": {"sends_24h": 0}}),
            )
            .await;
        assert_eq!(status, 400);
        assert_eq!(e["error"]["field"], "context.sends_24h", "{e}");
        // A policy that requires a user refuses a request without one.
        let (status, e) = app.post("/v1/decide", &json!({"policy": "budgeted"})).await;
        assert_eq!(status, 400);
        assert_eq!(e["error"]["field"], "user", "{e}");
    }
);

/// Many concurrent decides for one user through two replicas on one
/// Redis: the user never gets more sends than the cap; and a global budget
/// over many users is never exceeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caps_and_budgets_are_exact_across_two_replicas() {
    let mut one = app(Backend::Production).await;
    let mut two = spawn_replica(&one).await;
    one.clock.set(noon());
    two.clock.set(noon());
    let replicas = [&one, &two];
    let results = join_all((0..80).map(|i| {
        let app = replicas[i % 2];
        let mut body = decide(&format!("c{i}"), "carol");
        // Only the immediate send: the gap then allows exactly one.
        body["excluded"] = json!(["send_evening"]);
        async move { app.post("/v1/decide", &body).await }
    }))
    .await;
    let sends = results
        .iter()
        .inspect(|(s, d)| assert_eq!(*s, 200, "{d}"))
        .filter(|(_, d)| is_send(d))
        .count();
    // The gap (10 min) allows one send at this instant; the cap three.
    assert_eq!(sends, 1, "concurrent decides for one user send once");

    let results = join_all((0..200).map(|i| {
        let app = replicas[i % 2];
        async move {
            app.post(
                "/v1/decide",
                &json!({"policy": "budgeted", "event_id": format!("b{i}"), "user": format!("user{i}")}),
            )
            .await
        }
    }))
    .await;
    let sends = results
        .iter()
        .inspect(|(s, d)| assert_eq!(*s, 200, "{d}"))
        .filter(|(_, d)| is_send(d))
        .count();
    assert_eq!(sends, 10, "the budget of ten is spent exactly");
    let spent = results
        .iter()
        .filter(|(_, d)| {
            d["ranking"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["excluded_by"] == "budget")
        })
        .count();
    assert!(spent > 0, "later decisions see the budget spent");
    two.stop().await;
    one.stop().await;
}

/// The embedded store gives the same guarantee to concurrent decides in
/// one process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn caps_hold_under_concurrency_on_the_embedded_store() {
    let mut app = app(Backend::Embedded).await;
    app.clock.set(noon());
    let results = join_all((0..80).map(|i| {
        let mut body = decide(&format!("m{i}"), "erin");
        body["excluded"] = json!(["send_evening"]);
        let app = &app;
        async move { app.post("/v1/decide", &body).await }
    }))
    .await;
    let sends = results.iter().filter(|(_, d)| is_send(d)).count();
    assert_eq!(sends, 1);
    app.stop().await;
}

/// With the store unreachable, sends are held (reason `unavailable`),
/// never sent blind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_holds_sends() {
    let mut app = spawn_app_with(Backend::Production, |s| {
        std::fs::write(s.policies.join("guarded.toml"), GUARDED).unwrap();
        s.redis_url = Some("redis://127.0.0.1:9".into());
        s.store_timeout_ms = 200;
    })
    .await;
    let (status, d) = app.post("/v1/decide", &decide("o1", "dan")).await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["action"], "skip", "{d}");
    assert_eq!(d["forced"], true);
    assert_eq!(d["ranking"][1]["excluded_by"], "unavailable", "{d}");
    app.stop().await;
}
