//! Nudge on a real Redis Cluster of its own: three masters with a replica
//! each (`redis-server --cluster-enabled yes` + `redis-cli --cluster
//! create`), `NUDGE_REDIS_CLUSTER=true`, 16 shards per policy and every
//! write acknowledged by a replica (`NUDGE_REDIS_WAIT_REPLICAS=1`).
//!
//! One cluster for the file, and one test walking through it in order (the
//! last part kills a master): API round trips with keys on every master,
//! two replicas learning every reward exactly once into bit-identical
//! models, and a master failover mid-load that loses no acknowledged
//! reward, applies none twice and fails no decide.

mod support;

use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};
use support::servers::{Load, LoadConfig, Op, RedisCluster};
use support::{Backend, TestApp, spawn_app_with, spawn_replica};

const SHARDS: u16 = 16;
const PATIENCE: Duration = Duration::from_secs(90);

fn push(event_id: &str) -> Value {
    json!({"policy": "push", "event_id": event_id, "context": {"x": [0.5, -1.0, 2.0]}})
}

/// A stream entry as `XRANGE` returns it: its id and its field/value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// Every learned entry of `policy` on the cluster, shard by shard:
/// `(event_id, is_default, reward)`.
fn learned(cluster: &RedisCluster, prefix: &str, policy: &str) -> Vec<(String, bool, f64)> {
    let mut conn = cluster.client().get_connection().unwrap();
    let mut out = Vec::new();
    for s in 0..SHARDS {
        let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
            .arg(format!("{prefix}:{{s{s}}}:{policy}:ls"))
            .arg("-")
            .arg("+")
            .query(&mut conn)
            .unwrap();
        for (_, fields) in entries {
            let field = |name: &str| {
                let v = &fields.iter().find(|(k, _)| k == name).unwrap().1;
                String::from_utf8(v.clone()).unwrap()
            };
            out.push((
                field("e"),
                field("d") == "1",
                field("r").parse::<f64>().unwrap(),
            ));
        }
    }
    out
}

fn repeated(ids: &[String]) -> Vec<String> {
    let mut seen = BTreeMap::new();
    for id in ids {
        *seen.entry(id.clone()).or_insert(0) += 1;
    }
    seen.into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(id, _)| id)
        .collect()
}

async fn pending(app: &TestApp, policy: &str) -> u64 {
    let (_, body) = app.get_json(&format!("/v1/policies/{policy}")).await;
    body["pending_events"].as_u64().unwrap_or(u64::MAX)
}

/// Waits until `app`'s model of `policy` has learned `n` entries: with
/// replicated writes a replica folds entries only once they are older
/// than twice the wait timeout.
async fn wait_learned(app: &TestApp, policy: &str, n: u64) -> (u64, Vec<(String, u64)>) {
    let started = Instant::now();
    loop {
        let model = app.model(policy).await;
        let count: u64 = model.1.iter().map(|a| a.1).sum();
        if count >= n {
            assert_eq!(count, n, "more entries than expected");
            return model;
        }
        assert!(started.elapsed() < PATIENCE, "{count} of {n} learned");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn on_cluster(cluster: &RedisCluster, prefix: &str) -> TestApp {
    let urls = cluster.urls();
    let prefix = prefix.to_string();
    spawn_app_with(Backend::Production, move |s| {
        // What the load driver sends: `x` of 3 numbers; a short window.
        std::fs::write(
            s.policies.join("burst.toml"),
            r#"
id = "burst"
algorithm = "linucb"
arms = ["a", "b", "c"]
[[features.context]]
name = "x"
type = "vector"
length = 3
[reward]
window = "15s"
default = -0.5
"#,
        )
        .unwrap();
        s.redis_url = Some(urls);
        s.redis_cluster = true;
        s.redis_shards = Some(SHARDS);
        s.redis_wait_replicas = 1;
        s.redis_wait_ms = 200;
        s.redis_prefix = prefix;
        // The learned streams stay whole, to be read back entry by entry.
        s.snapshot_ms = 3_600_000;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_a_redis_cluster_rewards_are_learned_once_through_a_master_failover() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "off".into()))
        .with_test_writer()
        .try_init();
    let mut cluster = RedisCluster::start(3, 1);
    let prefix = format!("nc{}", uuid::Uuid::now_v7().simple());

    // --- Round trips ----------------------------------------------------
    let mut one = on_cluster(&cluster, &prefix).await;
    let (status, health) = one.get_json("/readyz").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["store"], "redis-cluster", "{health}");
    let (status, first) = one.post("/v1/decide", &push("rt-0")).await;
    assert_eq!(status, 200, "{first}");
    let (_, again) = one.post("/v1/decide", &push("rt-0")).await;
    assert_eq!(again, first, "a retried decide gets the first answer");
    let (_, ready) = one.get_json("/readyz").await;
    assert_eq!(ready["status"], "ready", "{ready}");
    let (status, taken) = one
        .post(
            "/v1/decide",
            &json!({"policy": "windowed", "event_id": "rt-0", "context": {"x": [1.0, 0.0]}}),
        )
        .await;
    assert_eq!(
        (status, taken["error"]["code"].as_str()),
        (409, Some("event_id_taken")),
        "{taken}"
    );
    for i in 1..60 {
        assert_eq!(
            one.post("/v1/decide", &push(&format!("rt-{i}"))).await.0,
            200
        );
    }
    for i in 0..60 {
        let r = json!({"event_id": format!("rt-{i}"), "reward": 1.0});
        let (status, body) = one.post("/v1/reward", &r).await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, twice) = one
        .post("/v1/reward", &json!({"event_id": "rt-3", "reward": 1.0}))
        .await;
    assert_eq!(status, 409, "{twice}");
    wait_learned(&one, "push", 60).await;
    // A policy's events spread over every master.
    for m in cluster.masters() {
        assert!(cluster.nodes[m].dbsize() > 0, "master {m} holds nothing");
    }
    // Windows close on every shard: 400 ms, then the sweep's defaults.
    for i in 0..40 {
        let d = json!({"policy": "windowed", "event_id": format!("w-{i}"), "context": {"x": [1.0, 0.0]}});
        assert_eq!(one.post("/v1/decide", &d).await.0, 200);
    }
    let started = Instant::now();
    while pending(&one, "windowed").await > 0 {
        assert!(started.elapsed() < PATIENCE, "windows did not close");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let defaults = learned(&cluster, &prefix, "windowed");
    assert_eq!(defaults.len(), 40);
    assert!(defaults.iter().all(|(_, d, r)| *d && *r == -0.5));

    // --- Two replicas: every reward once, bit-identical models ----------
    let mut two = spawn_replica(&one).await;
    let n = 200;
    let mut decided = Vec::new();
    for i in 0..n {
        let app = if i % 2 == 0 { &one } else { &two };
        let (status, d) = app.post("/v1/decide", &push(&format!("rep-{i}"))).await;
        assert_eq!(status, 200, "{d}");
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
    let (v1, arms1) = wait_learned(&one, "push", 60 + n as u64).await;
    let (v2, arms2) = wait_learned(&two, "push", 60 + n as u64).await;
    assert_eq!((v1, v2), (60 + n as u64, 60 + n as u64));
    assert_eq!(arms1, arms2);
    let (_, d1) = one.get_json("/v1/policies/push").await;
    let (_, d2) = two.get_json("/v1/policies/push").await;
    assert_eq!(
        d1["stats"], d2["stats"],
        "the same entries in the same order"
    );

    // --- A master fails over mid-load -----------------------------------
    let mut config = LoadConfig::new(vec![one.address.clone(), two.address.clone()], 8, "burst");
    // Rewards go to the replica that decided: each replica's outbox replays
    // its own operations in order, but two outboxes are not ordered with
    // each other (a reward queued on one replica can replay before the
    // decision queued on the other; see the README's limits).
    config.reward = 1.0;
    let load = Load::start(config);
    load.wait_acked(800, PATIENCE).await;
    let victim = cluster.masters()[0];
    cluster.nodes[victim].kill();
    let killed_at = load.acked.load(std::sync::atomic::Ordering::Relaxed);
    // Its replica takes over; the killed node then comes back as a replica
    // (replicated writes need one to acknowledge them).
    let started = Instant::now();
    while cluster.masters().len() < 3 {
        assert!(started.elapsed() < PATIENCE, "no replica was promoted");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.nodes[victim].restart();
    cluster.wait_ok(PATIENCE);
    load.wait_acked(killed_at + 800, PATIENCE).await;
    let report = load.finish().await;
    assert!(
        report.failures_of(Op::Decide).is_empty(),
        "decides failed: {:?}",
        &report.failures_of(Op::Decide)[..report.failures_of(Op::Decide).len().min(5)]
    );
    assert!(
        report.failures.is_empty(),
        "failures: {:?}",
        &report.failures[..report.failures.len().min(5)]
    );

    // Every window closes (the outbox drains first), on both replicas.
    let started = Instant::now();
    while pending(&one, "burst").await > 0 || pending(&two, "burst").await > 0 {
        if started.elapsed() > PATIENCE {
            let (_, r1) = one.get_json("/readyz").await;
            let (_, r2) = two.get_json("/readyz").await;
            panic!(
                "windows did not close: pending {} / {}; {r1} {r2}",
                pending(&one, "burst").await,
                pending(&two, "burst").await
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stream = learned(&cluster, &prefix, "burst");
    let ids: Vec<String> = stream.iter().map(|(e, _, _)| e.clone()).collect();
    assert_eq!(repeated(&ids), Vec::<String>::new(), "learned twice");
    let learned_ids: BTreeSet<String> = ids.into_iter().collect();
    let decided = report.decided_ids();
    assert!(
        decided.is_subset(&learned_ids),
        "an acknowledged decision was never learned"
    );
    let explicit: BTreeSet<String> = stream
        .iter()
        .filter(|(_, d, _)| !d)
        .map(|(e, _, _)| e.clone())
        .collect();
    let acked: BTreeSet<String> = report.rewarded_ids();
    assert!(
        acked.is_subset(&explicit),
        "acknowledged rewards missing: {:?}",
        acked.difference(&explicit).take(5).collect::<Vec<_>>()
    );
    assert!(
        explicit.is_subset(&acked),
        "rewards learned that nobody acknowledged"
    );
    // Both replicas fold every entry, once, into the same model.
    let started = Instant::now();
    let expected = stream.len() as u64;
    loop {
        let (_, a) = one.get_json("/v1/policies/burst").await;
        let (_, b) = two.get_json("/v1/policies/burst").await;
        let count = |m: &Value| {
            m["stats"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s["count"].as_u64().unwrap())
                .sum::<u64>()
        };
        if count(&a) == expected && count(&b) == expected {
            assert_eq!(a["stats"], b["stats"]);
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "models hold {} and {} of {expected} entries",
            count(&a),
            count(&b)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "failover: {} decides, {} rewards acknowledged, {} entries learned",
        decided.len(),
        acked.len(),
        stream.len()
    );
    two.stop().await;
    one.stop().await;
}
