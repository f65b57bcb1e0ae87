//! The model store goes away mid-load and comes back: every decision is
//! still answered (degraded, from the last known model, with its true
//! propensity logged), every reward is acknowledged and later learned, and
//! `/readyz` tells while it lasts. The test runs its own `redis-server` so
//! it can stop it without touching the machine's.

mod support;

use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::servers::RedisServer;
use support::{Backend, spawn_app_with};
use tokio::sync::Mutex;

/// What the load saw.
#[derive(Default)]
struct Seen {
    /// Acknowledged decisions: event id → answered probability.
    decided: HashMap<String, f64>,
    /// Acknowledged rewards: event id → status (`learned` or `queued`).
    rewarded: HashMap<String, String>,
    /// Every answer that was not the expected 2xx.
    failures: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopping_for_ten_seconds_mid_load_loses_no_decision_and_no_reward() {
    let mut redis = RedisServer::start_persistent();
    let mut app = spawn_app_with(Backend::Production, |s| {
        s.redis_url = Some(redis.url());
        s.store_timeout_ms = 200;
        s.workers = 2;
    })
    .await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let started = Instant::now();
    let mut load = Vec::new();
    for worker in 0..6 {
        let client = app.client.clone();
        let address = app.address.clone();
        let seen = seen.clone();
        let stop = stop.clone();
        load.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let event = format!("w{worker}-{i}");
                let decide = json!({"policy": "push", "event_id": event,
                    "context": {"x": [(i % 7) as f64 / 7.0, -1.0, 0.5], "plan": "pro"}});
                let r = client
                    .post(format!("{address}/v1/decide"))
                    .json(&decide)
                    .send()
                    .await
                    .expect("the service answers");
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                if status != 200 {
                    seen.lock()
                        .await
                        .failures
                        .push(format!("decide {event}: {status} {body}"));
                    continue;
                }
                let p = body["probability"].as_f64().unwrap();
                seen.lock().await.decided.insert(event.clone(), p);
                // Half the rewards name their policy; the others leave it
                // to the store's index (unknown while the store is down).
                let mut reward = json!({"event_id": event, "signals": {"opened": 1}});
                if i.is_multiple_of(2) {
                    reward["policy"] = json!("push");
                }
                let r = client
                    .post(format!("{address}/v1/reward"))
                    .json(&reward)
                    .send()
                    .await
                    .expect("the service answers");
                let status = r.status().as_u16();
                let body: Value = r.json().await.unwrap_or(Value::Null);
                let mut seen = seen.lock().await;
                if status == 202 {
                    let s = body["status"].as_str().unwrap_or("").to_string();
                    seen.rewarded.insert(event, s);
                } else {
                    seen.failures
                        .push(format!("reward {event}: {status} {body}"));
                }
                drop(seen);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(3)).await;
    redis.stop();
    let down_at = started.elapsed();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(ready["status"], "degraded", "{ready}");
    assert!(ready["outbox_ops"].as_u64().unwrap() > 0, "{ready}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    redis.restart();
    let up_at = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner();
    assert!(
        seen.failures.is_empty(),
        "{} requests failed, e.g. {:?}",
        seen.failures.len(),
        &seen.failures[..seen.failures.len().min(5)]
    );
    let queued = seen.rewarded.values().filter(|s| *s == "queued").count();
    println!(
        "redis down from {down_at:?} to {up_at:?}: {} decisions, {} rewards ({queued} queued)",
        seen.decided.len(),
        seen.rewarded.len()
    );
    assert!(queued > 50, "the outage was not exercised: {queued} queued");

    // The outbox drains, and the service says it is ready again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, ready) = app.get_json("/readyz").await;
        if ready["status"] == "ready" {
            break;
        }
        assert!(Instant::now() < deadline, "never ready again: {ready}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Every acknowledged reward is learned exactly once (the policy learns
    // the first reward per decision; its window is an hour, so no defaults).
    let deadline = Instant::now() + Duration::from_secs(15);
    let learned = loop {
        let (_, arms) = app.model("push").await;
        let n: u64 = arms.iter().map(|(_, c)| c).sum();
        if n >= seen.rewarded.len() as u64 || Instant::now() > deadline {
            break n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(learned, seen.rewarded.len() as u64);

    // The log holds one row per acknowledged decision and reward; degraded
    // decisions say so and carry the probability they were answered with.
    let decisions = seen.decided.len() as i64;
    assert_eq!(
        app.wait_count("SELECT count(*) FROM decisions", decisions)
            .await,
        decisions
    );
    assert_eq!(
        app.query_count("SELECT count(DISTINCT event_id) FROM decisions")
            .await,
        decisions
    );
    let rewards = seen.rewarded.len() as i64;
    assert_eq!(
        app.wait_count("SELECT count(*) FROM rewards", rewards)
            .await,
        rewards
    );
    assert_eq!(
        app.query_count("SELECT count(DISTINCT event_id) FROM rewards")
            .await,
        rewards
    );
    let degraded = app
        .query_count("SELECT count(*) FROM decisions WHERE degraded")
        .await;
    assert!(degraded > 50, "only {degraded} degraded decisions");
    let pool = sqlx::PgPool::connect(&app.settings.database_url)
        .await
        .unwrap();
    let rows: Vec<(String, f64)> =
        sqlx::query_as("SELECT event_id, probability FROM decisions WHERE degraded")
            .fetch_all(&pool)
            .await
            .unwrap();
    for (event, p) in rows {
        assert_eq!(Some(&p), seen.decided.get(&event), "{event}");
    }
    pool.close().await;
    app.stop().await;
}
