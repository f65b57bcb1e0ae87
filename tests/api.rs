//! The HTTP API end to end, on both backends: every scenario runs once on
//! the embedded defaults (in-process store, SQLite) and once on production
//! stores (Redis, PostgreSQL), each test with its own database and prefix.

mod support;

use serde_json::{Value, json};
use std::time::Duration;
use support::{Backend, TestApp, spawn_app, spawn_replica};

/// Runs a scenario on both backends as two tests.
macro_rules! on_both_backends {
    ($name:ident, $body:expr) => {
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                let mut app = spawn_app(Backend::Embedded).await;
                ($body)(&app).await;
                app.stop().await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn production() {
                let mut app = spawn_app(Backend::Production).await;
                ($body)(&app).await;
                app.stop().await;
            }
        }
    };
}

fn push(event: &str) -> Value {
    json!({"policy": "push", "event_id": event, "context": {"x": [0.5, -1.0, 2.0], "plan": "pro"}})
}

on_both_backends!(
    a_decision_is_logged_with_every_candidates_probability,
    async |app: &TestApp| {
        let (status, d) = app.post("/v1/decide", &push("evt-1")).await;
        assert_eq!(status, 200, "{d}");
        assert_eq!(d["event_id"], "evt-1");
        let ranking = d["ranking"].as_array().unwrap();
        assert_eq!(ranking.len(), 3);
        assert_eq!(ranking[0]["id"], d["action"]);
        let total: f64 = ranking
            .iter()
            .map(|r| r["probability"].as_f64().unwrap())
            .sum();
        assert!((total - 1.0).abs() < 1e-12, "{d}");
        assert!(d["probability"].as_f64().unwrap() >= 0.1 / 3.0);
        let n = app
            .wait_count("SELECT count(*) FROM decisions WHERE event_id = 'evt-1'", 1)
            .await;
        assert_eq!(n, 1);
        // The logged propensity is the answered one, to the last bit.
        let p = d["probability"].as_f64().unwrap();
        let matching = app
        .query_count(&format!(
            "SELECT count(*) FROM decisions WHERE event_id = 'evt-1' AND probability = {p:?} AND action = '{}'",
            d["action"].as_str().unwrap()
        ))
        .await;
        assert_eq!(matching, 1);
    }
);

on_both_backends!(
    a_reward_reaches_the_model_and_the_policy_endpoint,
    async |app: &TestApp| {
        let (_, d) = app.post("/v1/decide", &push("evt-r")).await;
        let action = d["action"].as_str().unwrap().to_string();
        let (v0, _) = app.model("push").await;
        let (status, body) = app
            .post(
                "/v1/reward",
                &json!({"event_id": "evt-r", "signals": {"opened": 1}}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["status"], "learned");
        let (v1, arms) = app.model("push").await;
        assert_eq!(v1, v0 + 1);
        for (arm, count) in arms {
            assert_eq!(count, u64::from(arm == action), "{arm}");
        }
        let (_, describe) = app.get_json("/v1/policies/push").await;
        let stats = describe["stats"].as_array().unwrap();
        let chosen = stats.iter().find(|s| s["arm"] == action.as_str()).unwrap();
        assert_eq!(chosen["mean_reward"], 1.0);
        let rows = app
        .wait_count(
            &format!("SELECT count(*) FROM rewards WHERE event_id = 'evt-r' AND reward = 1 AND action = '{action}' AND NOT is_default"),
            1,
        )
        .await;
        assert_eq!(rows, 1);
    }
);

on_both_backends!(
    a_retried_decide_gets_the_same_answer_and_one_log_row,
    async |app: &TestApp| {
        let (_, first) = app.post("/v1/decide", &push("evt-same")).await;
        // Learning in between moves the model: the retry must not re-decide.
        let (_, other) = app.post("/v1/decide", &push("evt-other")).await;
        let reward = json!({"event_id": "evt-other", "reward": 1.0});
        assert_eq!(app.post("/v1/reward", &reward).await.0, 202);
        let _ = other;
        for _ in 0..3 {
            let (status, again) = app.post("/v1/decide", &push("evt-same")).await;
            assert_eq!(status, 200);
            assert_eq!(again, first);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let n = app
            .wait_count(
                "SELECT count(*) FROM decisions WHERE event_id = 'evt-same'",
                1,
            )
            .await;
        assert_eq!(n, 1);
    }
);

on_both_backends!(
    a_second_reward_is_a_conflict_and_learns_nothing,
    async |app: &TestApp| {
        app.post("/v1/decide", &push("evt-2r")).await;
        let reward = json!({"event_id": "evt-2r", "reward": 0.5});
        assert_eq!(app.post("/v1/reward", &reward).await.0, 202);
        let (v, _) = app.model("push").await;
        let (status, body) = app.post("/v1/reward", &reward).await;
        assert_eq!(status, 409);
        assert_eq!(body["error"]["code"], "already_rewarded");
        assert_eq!(app.model("push").await.0, v);
    }
);

on_both_backends!(
    a_window_without_reward_learns_the_default_once,
    async |app: &TestApp| {
        let ctx = json!({"x": [1.0, 0.0]});
        let (_, silent) = app
            .post(
                "/v1/decide",
                &json!({"policy": "windowed", "event_id": "w-silent", "context": ctx}),
            )
            .await;
        let (_, summed) = app
            .post(
                "/v1/decide",
                &json!({"policy": "windowed", "event_id": "w-summed", "context": ctx}),
            )
            .await;
        for r in [0.25, 0.5] {
            let (status, body) = app
                .post("/v1/reward", &json!({"event_id": "w-summed", "reward": r}))
                .await;
            assert_eq!(
                (status, body["status"].as_str()),
                (202, Some("accumulated"))
            );
        }
        // Window 400 ms, sweeps every 50 ms.
        tokio::time::sleep(Duration::from_millis(900)).await;
        let (_, v) = app.get_json("/v1/policies/windowed").await;
        let stats = v["stats"].as_array().unwrap();
        let total: u64 = stats.iter().map(|s| s["count"].as_u64().unwrap()).sum();
        assert_eq!(total, 2, "{v}");
        let mean_of = |d: &Value| {
            let arm = d["action"].as_str().unwrap();
            stats.iter().find(|s| s["arm"] == arm).unwrap()["mean_reward"]
                .as_f64()
                .unwrap()
        };
        if silent["action"] != summed["action"] {
            assert_eq!(mean_of(&silent), -0.5);
            assert_eq!(mean_of(&summed), 0.75);
        }
        assert_eq!(
        app.wait_count("SELECT count(*) FROM rewards WHERE event_id = 'w-silent' AND is_default AND reward = -0.5", 1).await,
        1
    );
        let (status, late) = app
            .post(
                "/v1/reward",
                &json!({"event_id": "w-silent", "reward": 1.0}),
            )
            .await;
        assert_eq!(
            (status, late["error"]["code"].as_str()),
            (404, Some("unknown_event"))
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (_, v) = app.get_json("/v1/policies/windowed").await;
        let again: u64 = v["stats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["count"].as_u64().unwrap())
            .sum();
        assert_eq!(again, 2, "each event is learned exactly once");
    }
);

on_both_backends!(
    deferred_decisions_are_learned_only_after_activation,
    async |app: &TestApp| {
        let mut body = push("evt-d");
        body["defer"] = json!(true);
        let (status, d) = app.post("/v1/decide", &body).await;
        assert_eq!((status, d["deferred"].as_bool()), (200, Some(true)));
        let reward = json!({"event_id": "evt-d", "reward": 1.0});
        let (status, err) = app.post("/v1/reward", &reward).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (409, Some("not_activated"))
        );
        let (status, _) = app.post("/v1/events/evt-d/activate", &Value::Null).await;
        assert_eq!(status, 400, "a JSON null body is not an activation body");
        let (status, a) = app.post_raw("/v1/events/evt-d/activate", vec![]).await;
        assert_eq!((status, a["status"].as_str()), (200, Some("activated")));
        assert_eq!(
            app.post_raw("/v1/events/evt-d/activate", vec![]).await.0,
            200,
            "idempotent"
        );
        assert_eq!(app.post("/v1/reward", &reward).await.0, 202);
        let (status, e) = app.post_raw("/v1/events/evt-1x/activate", vec![]).await;
        assert_eq!(
            (status, e["error"]["code"].as_str()),
            (404, Some("unknown_event"))
        );
        app.post("/v1/decide", &push("evt-nd")).await;
        let (status, e) = app.post_raw("/v1/events/evt-nd/activate", vec![]).await;
        assert_eq!(
            (status, e["error"]["code"].as_str()),
            (409, Some("not_deferred"))
        );
        let n = app
        .wait_count("SELECT count(*) FROM decisions WHERE event_id = 'evt-d' AND deferred AND activated_at IS NOT NULL", 1)
        .await;
        assert_eq!(n, 1);
    }
);

fn ranker(event: &str, k: usize) -> Value {
    let actions: Vec<Value> = (0..6)
        .map(|i| json!({"id": format!("item-{i}"), "features": {"i": [(i as f64).sin(), (i as f64).cos()]}}))
        .collect();
    json!({"policy": "ranker", "event_id": event, "k": k, "context": {"u": [0.3, 0.9]}, "actions": actions})
}

on_both_backends!(
    a_slate_ranks_k_distinct_items_and_rewards_any_of_them,
    async |app: &TestApp| {
        let (status, d) = app.post("/v1/decide", &ranker("slate-1", 3)).await;
        assert_eq!(status, 200, "{d}");
        let ranking = d["ranking"].as_array().unwrap();
        assert_eq!(ranking.len(), 6);
        let ids: std::collections::HashSet<&str> =
            ranking.iter().map(|r| r["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 6);
        // Slot probabilities are conditional: each is at least its share of the
        // floor among the remaining candidates.
        for (pos, r) in ranking[..3].iter().enumerate() {
            let p = r["probability"].as_f64().unwrap();
            assert!(p > 0.0 && p <= 1.0, "position {pos}: {p}");
        }
        let third = ranking[2]["id"].as_str().unwrap();
        let reward = json!({"event_id": "slate-1", "action": third, "reward": 1.0});
        let (status, body) = app.post("/v1/reward", &reward).await;
        assert_eq!(status, 202, "{body}");
        let outside = ranking[4]["id"].as_str().unwrap();
        let reward = json!({"event_id": "slate-1", "action": outside, "reward": 1.0});
        let (status, body) = app.post("/v1/reward", &reward).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some("unknown_action"))
        );
        let n = app
            .wait_count(
                "SELECT count(*) FROM decisions WHERE event_id = 'slate-1' AND slate IS NOT NULL",
                1,
            )
            .await;
        assert_eq!(n, 1);
    }
);

/// `(body, expected status, expected code, expected field)`.
fn bad_requests() -> Vec<(Vec<u8>, u16, &'static str, Option<&'static str>)> {
    let j = |v: Value| serde_json::to_vec(&v).unwrap();
    let ctx = json!({"x": [0.0, 0.0, 0.0]});
    let mut deep = String::new();
    for _ in 0..200 {
        deep.push('[');
    }
    vec![
        (b"{not json".to_vec(), 400, "invalid_json", None),
        (b"".to_vec(), 400, "invalid_json", None),
        (vec![0xff, 0xfe, 0x00], 400, "invalid_json", None),
        (j(json!([1, 2])), 400, "invalid_json", None),
        (
            j(json!({"context": ctx})),
            400,
            "invalid_field",
            Some("policy"),
        ),
        (
            j(json!({"policy": "nope", "context": ctx})),
            404,
            "unknown_policy",
            Some("policy"),
        ),
        (
            j(json!({"policy": "push", "context": {"x": [1.0, 2.0]}})),
            400,
            "invalid_feature",
            Some("context.x"),
        ),
        (
            j(json!({"policy": "push", "context": {}})),
            400,
            "invalid_feature",
            Some("context.x"),
        ),
        (
            j(json!({"policy": "push", "context": {"x": "abc"}})),
            400,
            "invalid_feature",
            Some("context.x"),
        ),
        (
            j(json!({"policy": "push", "context": {"x": [1, "a", 3]}})),
            400,
            "invalid_field",
            Some("context.x[1]"),
        ),
        (
            // Valid JSON syntax that no f64 holds: named, as the field it is in.
            b"{\"policy\":\"push\",\"context\":{\"x\":[1e999,0,0]}}".to_vec(),
            400,
            "invalid_json",
            Some("context.x[0]"),
        ),
        (
            j(json!({"policy": "push", "context": {"x": null}})),
            400,
            "invalid_field",
            Some("context.x"),
        ),
        (
            j(json!({"policy": "push", "context": {"x": {"a": 1}}})),
            400,
            "invalid_field",
            Some("context.x"),
        ),
        (
            j(json!({"policy": "push", "context": ctx, "k": 0})),
            400,
            "invalid_field",
            Some("k"),
        ),
        (
            j(json!({"policy": "push", "context": ctx, "k": 4})),
            400,
            "invalid_field",
            Some("k"),
        ),
        (
            j(json!({"policy": "push", "context": ctx, "k": -1})),
            400,
            "invalid_field",
            Some("k"),
        ),
        (
            j(json!({"policy": "push", "context": ctx, "excluded": ["zz"]})),
            400,
            "unknown_action",
            Some("excluded"),
        ),
        (
            j(json!({"policy": "push", "context": ctx, "excluded": ["a", "b", "c"]})),
            400,
            "no_candidates",
            Some("actions"),
        ),
        (
            j(json!({"policy": "push", "context": ctx, "actions": [{"id": "a"}]})),
            400,
            "invalid_field",
            Some("actions"),
        ),
        (
            j(json!({"policy": "push", "context": ctx, "event_id": "has space"})),
            400,
            "invalid_event_id",
            Some("event_id"),
        ),
        (
            j(json!({"policy": "push", "context": ctx, "event_id": "x".repeat(129)})),
            400,
            "invalid_event_id",
            Some("event_id"),
        ),
        (
            j(json!({"policy": "push", "context": ctx, "surprise": 1})),
            400,
            "invalid_field",
            Some("surprise"),
        ),
        (
            br#"{"policy": "push", "context": {"x": [0, 0, 0], "x": [1, 1, 1]}}"#.to_vec(),
            400,
            "invalid_field",
            Some("context"),
        ),
        (
            j(json!({"policy": "ranker", "context": {"u": [0, 0]}})),
            400,
            "no_candidates",
            Some("actions"),
        ),
        (
            j(
                json!({"policy": "ranker", "context": {"u": [0, 0]}, "actions": [{"id": "a", "features": {"i": [0, 0]}}, {"id": "a", "features": {"i": [1, 1]}}]}),
            ),
            400,
            "duplicate_action",
            Some("actions"),
        ),
        (
            j(
                json!({"policy": "ranker", "context": {"u": [0, 0]}, "actions": [{"id": "a\u{7}", "features": {"i": [0, 0]}}]}),
            ),
            400,
            "invalid_field",
            Some("actions[0].id"),
        ),
        (deep.into_bytes(), 400, "invalid_json", None),
        (vec![b' '; 2 << 20], 413, "body_too_large", None),
    ]
}

on_both_backends!(
    bad_requests_get_the_right_4xx_and_change_nothing,
    async |app: &TestApp| {
        app.post("/v1/decide", &push("before")).await;
        app.post("/v1/reward", &json!({"event_id": "before", "reward": 1.0}))
            .await;
        let model_before = app.model("push").await;
        let cases = bad_requests();
        assert!(cases.len() >= 20);
        for (body, status, code, field) in cases {
            let shown = String::from_utf8_lossy(&body[..body.len().min(80)]).to_string();
            let (got, err) = app.post_raw("/v1/decide", body).await;
            assert_eq!(got, status, "{shown}: {err}");
            assert_eq!(err["error"]["code"], code, "{shown}: {err}");
            assert_eq!(err["error"]["field"].as_str(), field, "{shown}: {err}");
            assert!(
                err["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            );
        }
        let rewards: Vec<(Value, u16, &str)> = vec![
            (
                json!({"event_id": "before", "reward": 2.0}),
                400,
                "reward_out_of_range",
            ),
            (
                json!({"event_id": "before", "signals": {"clicked": 1}}),
                400,
                "unknown_signal",
            ),
            (json!({"event_id": "before"}), 400, "invalid_field"),
            (
                json!({"event_id": "before", "reward": 1, "signals": {"opened": 1}}),
                400,
                "invalid_field",
            ),
            (
                json!({"event_id": "never-decided", "reward": 1.0}),
                404,
                "unknown_event",
            ),
            (
                json!({"event_id": "before", "reward": "1"}),
                400,
                "invalid_field",
            ),
            (
                json!({"event_id": "bad id!", "reward": 1.0}),
                400,
                "invalid_event_id",
            ),
            (
                json!({"event_id": "before", "reward": 1.0, "policy": "nope"}),
                404,
                "unknown_policy",
            ),
        ];
        for (body, status, code) in rewards {
            let (got, err) = app.post("/v1/reward", &body).await;
            assert_eq!(
                (got, err["error"]["code"].as_str()),
                (status, Some(code)),
                "{body}"
            );
        }
        let (status, err) = app.get_json("/v1/decide").await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (405, Some("method_not_allowed"))
        );
        let (status, err) = app.get_json("/v1/nothing").await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (404, Some("not_found"))
        );
        assert_eq!(
            app.model("push").await,
            model_before,
            "bad requests changed the model"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(app.query_count("SELECT count(*) FROM decisions").await, 1);
    }
);

on_both_backends!(
    health_metrics_and_the_openapi_document_are_served,
    async |app: &TestApp| {
        assert_eq!(app.get("/healthz").await.0, 200);
        let (status, ready) = app.get_json("/readyz").await;
        assert_eq!(
            (status, ready["status"].as_str()),
            (200, Some("ready")),
            "{ready}"
        );
        app.post("/v1/decide", &push("m-1")).await;
        let (status, metrics) = app.get("/metrics").await;
        assert_eq!(status, 200);
        assert!(
            metrics.contains("nudge_decisions_total{action="),
            "{metrics}"
        );
        assert!(
            metrics.contains("nudge_request_seconds_bucket{route=\"decide\""),
            "{metrics}"
        );
        assert!(metrics.contains("nudge_log_queue_depth"));
        let (status, doc) = app.get_json("/openapi.json").await;
        assert_eq!(status, 200);
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for path in [
            "/v1/decide",
            "/v1/reward",
            "/v1/events/{event_id}/activate",
            "/v1/policies/{id}/reset",
        ] {
            assert!(
                doc["paths"][path].is_object(),
                "{path} missing from the OpenAPI document"
            );
        }
        let (_, list) = app.get_json("/v1/policies").await;
        let ids: Vec<&str> = list["policies"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        assert_eq!(ids, ["push", "ranker", "windowed"]);
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_needs_the_admin_token_when_one_is_set() {
    let mut app =
        support::spawn_app_with(Backend::Embedded, |s| s.admin_token = Some("s3cret".into())).await;
    app.post("/v1/decide", &push("r-1")).await;
    app.post("/v1/reward", &json!({"event_id": "r-1", "reward": 1.0}))
        .await;
    let url = format!("{}/v1/policies/push/reset", app.address);
    let none = app.client.post(&url).send().await.unwrap();
    assert_eq!(none.status(), 401);
    let wrong = app
        .client
        .post(&url)
        .bearer_auth("guess")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        app.model("push").await.1.iter().map(|a| a.1).sum::<u64>(),
        1
    );
    let ok = app
        .client
        .post(&url)
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(
        app.model("push").await.1.iter().map(|a| a.1).sum::<u64>(),
        0
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_on_one_redis_lose_no_reward_and_agree_on_the_model() {
    let mut one = spawn_app(Backend::Production).await;
    let mut two = spawn_replica(&one).await;
    let n = 200;
    // Decide on alternating replicas, then reward every event concurrently
    // through the *other* replica.
    let mut decided = Vec::new();
    for i in 0..n {
        let app = if i % 2 == 0 { &one } else { &two };
        let (status, d) = app.post("/v1/decide", &push(&format!("rep-{i}"))).await;
        assert_eq!(status, 200);
        decided.push(d["action"].as_str().unwrap().to_string());
    }
    let rewards: Vec<_> = (0..n)
        .map(|i| {
            let app = if i % 2 == 0 { &two } else { &one };
            let body = json!({"event_id": format!("rep-{i}"), "reward": if i % 3 == 0 { 1.0 } else { -1.0 }});
            let url = format!("{}/v1/reward", app.address);
            let client = app.client.clone();
            tokio::spawn(async move { client.post(url).json(&body).send().await.unwrap().status().as_u16() })
        })
        .collect();
    for r in rewards {
        assert_eq!(r.await.unwrap(), 202);
    }
    let expected: Vec<(String, u64)> = ["a", "b", "c"]
        .iter()
        .map(|arm| {
            (
                arm.to_string(),
                decided.iter().filter(|d| d == arm).count() as u64,
            )
        })
        .collect();
    let (v1, arms1) = one.model("push").await;
    let (v2, arms2) = two.model("push").await;
    assert_eq!(arms1, expected);
    assert_eq!(arms2, expected);
    assert_eq!((v1, v2), (n as u64, n as u64));
    // Identical statistics, to the bit: the same entries in the same order.
    let (_, d1) = one.get_json("/v1/policies/push").await;
    let (_, d2) = two.get_json("/v1/policies/push").await;
    assert_eq!(d1["stats"], d2["stats"]);
    two.stop().await;
    one.stop().await;
}

/// Decides and rewards on `first`, stops it, starts another instance on the
/// same stores: it must have the same model, the same pending events, give
/// a retried decide the same answer, and learn a reward for an event
/// decided before the restart.
async fn comes_back_the_same_after_a_restart(mut first: TestApp) {
    for i in 0..20 {
        first
            .post("/v1/decide", &push(&format!("before-{i}")))
            .await;
        let reward = json!({"event_id": format!("before-{i}"), "reward": 0.5});
        assert_eq!(first.post("/v1/reward", &reward).await.0, 202);
    }
    let (_, pending) = first
        .post("/v1/decide", &push("pending-across-restart"))
        .await;
    let model = first.model("push").await;
    assert_eq!(model.1.iter().map(|(_, n)| n).sum::<u64>(), 20);
    let (_, stats) = first.get_json("/v1/policies/push").await;
    assert!(stats["pending_events"].as_u64().unwrap() > 0, "{stats}");
    first.stop().await;

    let mut second = spawn_replica(&first).await;
    assert_eq!(second.model("push").await, model);
    let (_, again) = second.get_json("/v1/policies/push").await;
    assert_eq!(again["stats"], stats["stats"]);
    assert_eq!(again["pending_events"], stats["pending_events"], "{again}");
    // The decision made before the restart is still pending: a retry gets
    // the same answer, and its reward is learned.
    let (_, retried) = second
        .post("/v1/decide", &push("pending-across-restart"))
        .await;
    assert_eq!(retried, pending);
    let reward = json!({"event_id": "pending-across-restart", "reward": 1.0});
    let (status, body) = second.post("/v1/reward", &reward).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(second.model("push").await.0, model.0 + 1);
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_comes_back_with_the_same_model_and_pending_events() {
    comes_back_the_same_after_a_restart(spawn_app(Backend::Production).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_service_with_a_state_path_comes_back_with_its_model_and_pending_events() {
    let state_dir = tempfile::tempdir().unwrap();
    let state_path = state_dir.path().join("state.json");
    let first = support::spawn_app_with(Backend::Embedded, |s| {
        s.state_path = Some(state_path.clone());
    })
    .await;
    comes_back_the_same_after_a_restart(first).await;
}

on_both_backends!(
    the_snapshot_route_exports_the_live_statistics_as_a_decodable_blob,
    async |app: &TestApp| {
        let (status, _) = app.post("/v1/decide", &push("snap")).await;
        assert_eq!(status, 200);
        let (status, _) = app
            .post("/v1/reward", &json!({"event_id": "snap", "reward": 1.0}))
            .await;
        assert_eq!(status, 202);
        let (version, arms) = app.model("push").await;
        assert_eq!(arms.iter().map(|(_, n)| n).sum::<u64>(), 1);

        let resp = app
            .client
            .get(format!("{}/v1/policies/push/snapshot", app.address))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["content-type"], "application/octet-stream");
        let blob = resp.bytes().await.unwrap();
        let state = nudge::model::codec::decode(&blob).unwrap();
        assert_eq!(state.version, version);
        let counts: Vec<u64> = state.arms.iter().map(|a| a.count).collect();
        let expected: Vec<u64> = arms.iter().map(|(_, n)| *n).collect();
        assert_eq!(counts, expected);
        assert_eq!(state.arms.iter().map(|a| a.reward_sum).sum::<f64>(), 1.0);

        let (status, err) = app.get_json("/v1/policies/nope/snapshot").await;
        assert_eq!(status, 404, "{err}");
        assert_eq!(err["error"]["field"], "id");
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_stops_the_start_instead_of_forgetting_the_models() {
    let state_dir = tempfile::tempdir().unwrap();
    let state_path = state_dir.path().join("state.json");
    std::fs::write(
        &state_path,
        b"{\"format\":\"nudge-memory-store\",\"version\":1,\"state\":",
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (mut settings, _) = support::test_settings(Backend::Embedded, dir.path()).await;
    settings.state_path = Some(state_path);
    let err = nudge::startup::Application::build(settings)
        .await
        .err()
        .expect("a corrupt state file is refused");
    assert!(err.to_string().contains("state file"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_learned_entry_is_skipped_and_learning_goes_on_after_it() {
    let mut app = spawn_app(Backend::Production).await;
    let reward = |e: &str| json!({"event_id": e, "reward": 1.0});
    app.post("/v1/decide", &push("before-garbage")).await;
    assert_eq!(
        app.post("/v1/reward", &reward("before-garbage")).await.0,
        202
    );
    let client = redis::Client::open(support::REDIS).unwrap();
    let mut conn = client.get_connection().unwrap();
    // A vector of 5 bytes cannot be eight-byte floats.
    let _: String = redis::cmd("XADD")
        .arg(format!("{}:{{s0}}:push:ls", app.settings.redis_prefix))
        .arg("*")
        .arg(&[
            "e", "garbage", "a", "a", "m", "0", "x", "abcde", "r", "1", "d", "0",
        ])
        .query(&mut conn)
        .unwrap();
    app.post("/v1/decide", &push("after-garbage")).await;
    assert_eq!(
        app.post("/v1/reward", &reward("after-garbage")).await.0,
        202
    );
    let (_, arms) = app.model("push").await;
    assert_eq!(arms.iter().map(|(_, n)| n).sum::<u64>(), 2);
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains("nudge_skipped_entries_total{policy=\"push\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}
