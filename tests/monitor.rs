//! The live page's JSON routes over real HTTP on a real service:
//! `GET /v1/policies/{id}/timeseries` and `GET /v1/overview` count what
//! was decided and rewarded, per arm, with the intervals and the effective
//! sample size computed from the propensities the service answered; bad
//! queries are 400s naming the field; `GET /` serves the page, and with API
//! keys the data routes need `read`.

mod support;

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use support::{Backend, TestApp, spawn_app, spawn_app_with};

fn push(event: &str) -> Value {
    json!({"policy": "push", "event_id": event, "context": {"x": [0.5, -1.0, 2.0]}})
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

async fn series(app: &TestApp, policy: &str, query: &str) -> Value {
    let (status, ts) = app
        .get_json(&format!("/v1/policies/{policy}/timeseries?{query}"))
        .await;
    assert_eq!(status, 200, "{ts}");
    ts
}

/// Polls the overview until `done` holds for policy `id` (at most 10 s).
async fn overview_until(app: &TestApp, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let (status, o) = app.get_json("/v1/overview").await;
        assert_eq!(status, 200, "{o}");
        let p = o["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in {o}"))
            .clone();
        if done(&p) {
            return o;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{p}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn decisions_and_rewards_are_counted_per_arm(app: &TestApp) {
    let mut chosen = Vec::new();
    for i in 0..12 {
        let (status, d) = app.post("/v1/decide", &push(&format!("m-{i}"))).await;
        assert_eq!(status, 200, "{d}");
        chosen.push((
            d["action"].as_str().unwrap().to_string(),
            d["probability"].as_f64().unwrap(),
        ));
    }
    // Rewards 1, 0, 1, 0, 1 for the first five decisions.
    for i in 0..5 {
        let (status, r) = app
            .post(
                "/v1/reward",
                &json!({"event_id": format!("m-{i}"), "reward": (i % 2 == 0) as u8}),
            )
            .await;
        assert_eq!(status, 202, "{r}");
    }
    let ts = series(app, "push", "window=2m&step=10s").await;
    assert_eq!(ts["policy"], "push");
    assert_eq!(ts["scope"], "replica");
    assert_eq!(ts["window_seconds"], 120);
    assert_eq!(ts["step_seconds"], 10);
    assert_eq!(ts["arms"], json!(["a", "b", "c"]));
    assert_eq!(ts["interval"], "wilson");
    let points = ts["points"].as_array().unwrap();
    assert_eq!(points.len(), 12);
    let total = &ts["total"];
    assert_eq!(total["decisions"], 12);
    assert_eq!(total["rewards"], 5);
    assert_eq!(
        points
            .iter()
            .map(|p| p["decisions"].as_u64().unwrap())
            .sum::<u64>(),
        12
    );
    for (a, arm) in ["a", "b", "c"].iter().enumerate() {
        let decided = chosen.iter().filter(|(c, _)| c == arm).count() as u64;
        assert_eq!(total["arms"][a]["decisions"], decided, "{arm}: {total}");
        let rewarded: Vec<f64> = (0..5)
            .filter(|i| chosen[*i].0 == *arm)
            .map(|i| (i % 2 == 0) as u8 as f64)
            .collect();
        let row = &total["arms"][a];
        assert_eq!(row["rewards"], rewarded.len(), "{arm}");
        if rewarded.is_empty() {
            assert!(row["mean"].is_null() && row["low"].is_null(), "{row}");
        } else {
            let mean = rewarded.iter().sum::<f64>() / rewarded.len() as f64;
            assert!(close(row["mean"].as_f64().unwrap(), mean), "{row}");
            let (low, high) = (row["low"].as_f64().unwrap(), row["high"].as_f64().unwrap());
            assert!(
                0.0 <= low && low <= mean && mean <= high && high <= 1.0,
                "{row}"
            );
            assert!(
                high - low > 0.1,
                "a Wilson interval on a few rewards is wide: {row}"
            );
        }
    }
    // The overall reward row: 3 of 5.
    assert!(close(total["reward"]["mean"].as_f64().unwrap(), 0.6));
    let min_p = chosen.iter().map(|c| c.1).fold(1.0, f64::min);
    assert_eq!(total["min_propensity"].as_f64().unwrap(), min_p);
    // ESS with w = 1/(3p): every arm of `push` is eligible.
    let w: Vec<f64> = chosen.iter().map(|c| 1.0 / (3.0 * c.1)).collect();
    let ess = w.iter().sum::<f64>().powi(2) / w.iter().map(|w| w * w).sum::<f64>();
    assert!(
        close(total["ess"].as_f64().unwrap(), ess),
        "{total} vs {ess}"
    );
    assert!(close(total["ess_ratio"].as_f64().unwrap(), ess / 12.0));
    // Rates over the time elapsed: the window's last second is still
    // filling, so at least 12 decisions per 120 s, at most per 119 s.
    let rate = total["decisions_per_second"].as_f64().unwrap();
    assert!((12.0 / 120.0..=12.0 / 119.0).contains(&rate), "{rate}");
    assert_eq!(total["guardrails"]["held"], 0);

    // The overview: pending events from the store (12 decided, their 1 h
    // windows open, rewarded or not), the last minute, a sync.
    let o = overview_until(app, "push", |p| p["pending_events"] == 12).await;
    assert_eq!(o["replica"], ts["replica"]);
    assert_eq!(o["health"]["scope"], "replica");
    assert_eq!(o["health"]["outbox_ops"], 0);
    assert_eq!(o["health"]["store_ok"], true);
    let p = o["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == "push")
        .unwrap();
    assert_eq!(p["pending_scope"], "store");
    assert_eq!(p["last_minute"]["decisions"], 12);
    assert!(p["last_sync_ms"].as_i64().unwrap() > 0, "{p}");
    assert_eq!(p["arms"], json!(["a", "b", "c"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_and_rewards_are_counted_per_arm_on_the_embedded_backend() {
    let mut app = spawn_app(Backend::Embedded).await;
    decisions_and_rewards_are_counted_per_arm(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_and_rewards_are_counted_per_arm_on_redis_and_postgres() {
    let mut app = spawn_app(Backend::Production).await;
    decisions_and_rewards_are_counted_per_arm(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_rewards_are_counted_and_non_binary_rewards_get_a_normal_interval() {
    let mut app = spawn_app(Backend::Embedded).await;
    for i in 0..3 {
        let body = json!({"policy": "windowed", "event_id": format!("w-{i}"), "context": {"x": [1.0, 0.0]}});
        let (status, d) = app.post("/v1/decide", &body).await;
        assert_eq!(status, 200, "{d}");
    }
    // The 400 ms windows close with the default −0.5.
    overview_until(&app, "windowed", |p| {
        p["last_minute"]["default_rewards"] == 3
    })
    .await;
    let ts = series(&app, "windowed", "window=1m&step=1m").await;
    assert_eq!(ts["interval"], "normal");
    let total = &ts["total"];
    assert_eq!(total["default_rewards"], 3);
    assert_eq!(total["rewards"], 3);
    let r = &total["reward"];
    assert!(close(r["mean"].as_f64().unwrap(), -0.5), "{r}");
    // Three equal rewards: no variance, the interval is the mean.
    assert!(close(r["low"].as_f64().unwrap(), -0.5) && close(r["high"].as_f64().unwrap(), -0.5));
    assert_eq!(ts["points"].as_array().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_mode_policy_is_counted_in_one_overall_row() {
    let mut app = spawn_app(Backend::Embedded).await;
    let body = json!({
        "policy": "ranker", "event_id": "r-1", "context": {"u": [1.0, 0.0]},
        "actions": [{"id": "i1", "features": {"i": [1.0, 0.0]}}, {"id": "i2", "features": {"i": [0.0, 1.0]}}],
    });
    let (status, d) = app.post("/v1/decide", &body).await;
    assert_eq!(status, 200, "{d}");
    let (status, r) = app
        .post("/v1/reward", &json!({"event_id": "r-1", "reward": 0.25}))
        .await;
    assert_eq!(status, 202, "{r}");
    let ts = series(&app, "ranker", "window=30s&step=5s").await;
    assert_eq!(ts["arms"], json!(["all"]));
    assert_eq!(ts["total"]["arms"][0]["decisions"], 1);
    assert_eq!(ts["total"]["arms"][0]["share"], 1.0);
    assert_eq!(ts["total"]["arms"][0]["mean"], 0.25);
    assert_eq!(ts["interval"], "normal");
    app.stop().await;
}

const GAPPED: &str = r#"
id = "gapped"
algorithm = "uniform"
arms = ["send", "skip"]

[guardrails]
send_arms = ["send"]
fallback = "skip"
min_gap = "1h"

[reward]
window = "1h"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guardrail_outcomes_are_counted_per_decision() {
    let mut app = spawn_app_with(Backend::Embedded, |s| {
        std::fs::write(s.policies.join("gapped.toml"), GAPPED).unwrap();
    })
    .await;
    // Uniform: decide until a send is drawn; every later decision for the
    // user is inside the gap, so held.
    let mut sent = false;
    let mut held = 0;
    for i in 0..40 {
        let body = json!({"policy": "gapped", "event_id": format!("g-{i}"), "user": "u1"});
        let (status, d) = app.post("/v1/decide", &body).await;
        assert_eq!(status, 200, "{d}");
        if sent {
            assert_eq!(d["forced"], true, "{d}");
            held += 1;
        }
        sent |= d["action"] == "send";
    }
    assert!(sent && held > 0);
    let ts = series(&app, "gapped", "window=1m&step=1m").await;
    let g = &ts["total"]["guardrails"];
    assert_eq!(g["held"], held, "{g}");
    assert_eq!(g["gap"], held, "{g}");
    assert_eq!(g["cap"], 0, "{g}");
    // Held decisions have propensity 1 (only the fallback was eligible).
    assert_eq!(ts["total"]["decisions"], 40);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_windows_and_steps_are_400s_naming_the_field() {
    let mut app = spawn_app(Backend::Embedded).await;
    for (query, field) in [
        ("window=2h", "window"),
        ("window=0", "window"),
        ("window=15x", "window"),
        ("window=%FF", "window"),
        ("window=1m&step=7s", "step"),
        ("step=-1s", "step"),
        ("window=10s&step=20s", "step"),
    ] {
        let (status, e) = app
            .get_json(&format!("/v1/policies/push/timeseries?{query}"))
            .await;
        assert_eq!(status, 400, "{query}: {e}");
        assert_eq!(e["error"]["code"], "invalid_query", "{query}: {e}");
        assert_eq!(e["error"]["field"], field, "{query}: {e}");
    }
    let (status, e) = app.get_json("/v1/policies/nope/timeseries").await;
    assert_eq!(status, 404, "{e}");
    assert_eq!(e["error"]["code"], "unknown_policy");
    let (status, e) = app.get_json("/v1/policies/b%20d/timeseries").await;
    assert_eq!(status, 400, "{e}");
    assert_eq!(e["error"]["code"], "invalid_policy_id");
    // The defaults: 15 minutes in 10-second steps.
    let ts = series(&app, "push", "").await;
    assert_eq!(ts["points"].as_array().unwrap().len(), 90);
    app.stop().await;
}

const READ_KEY: &str = "read-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keys_the_page_is_public_and_its_data_need_the_read_role() {
    let mut app = spawn_app_with(Backend::Embedded, |s| {
        s.api_keys = Some(format!(
            "viewer:read:{READ_KEY},caller:decide:decide-0123456789abcdef"
        ))
    })
    .await;
    let page = app
        .client
        .get(format!("{}/", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("/v1/overview") && html.contains("Authorization"));
    // Self-contained: nothing loaded from another origin (the SVG
    // namespace is a name, not a fetch).
    let html = html.replace("http://www.w3.org/2000/svg", "");
    assert!(!html.contains("http://") && !html.contains("https://"));
    assert!(!html.contains("<script src") && !html.contains("<link rel=\"stylesheet"));
    for path in ["/v1/overview", "/v1/policies/push/timeseries"] {
        let (status, e) = app.get_json(path).await;
        assert_eq!(status, 401, "{path}: {e}");
        for (key, expected) in [(READ_KEY, 200), ("decide-0123456789abcdef", 403)] {
            let r = app
                .client
                .get(format!("{}{path}", app.address))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), expected, "{path} with {key}");
        }
    }
    app.stop().await;
}
