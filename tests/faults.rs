//! Fault injection: each test runs the real `nudge serve` binary on its own
//! private `redis-server` and PostgreSQL cluster (see
//! `support/servers.rs`), drives it with a bounded concurrent load on
//! loopback, breaks something (the database, the process, a replica), and
//! then compares what the clients were told with what the log and the store
//! hold, exactly.

mod support;

use serde_json::{Value, json};
use sqlx::Row;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use support::servers::{Load, LoadConfig, LoadReport, NudgeProcess, PgCluster, RedisServer};

/// Policies of these tests. `push` keeps its windows open for the whole
/// test (explicit rewards only); `windowed` closes them after two seconds
/// and learns the default reward −0.5 for events that got none.
const POLICIES: &[(&str, &str)] = &[
    (
        "push.toml",
        r#"
id = "push"
algorithm = "linucb"
arms = ["a", "b", "c"]
[params]
alpha = 1.0
epsilon = 0.1
[[features.context]]
name = "x"
type = "vector"
length = 3
[reward]
window = "1h"
min = -1.0
max = 1.0
"#,
    ),
    (
        "windowed.toml",
        r#"
id = "windowed"
algorithm = "lin_ts"
arms = ["now", "later"]
[params]
v = 0.3
[[features.context]]
name = "x"
type = "vector"
length = 3
[reward]
window = "2s"
default = -0.5
min = -1.0
max = 1.0
"#,
    ),
];

/// Generous bound on every wait: the machine is small and shared.
const PATIENCE: Duration = Duration::from_secs(60);

/// A private Redis and PostgreSQL, a migrated-on-start database, policy
/// files and data dirs in a temp dir.
struct Stack {
    dir: tempfile::TempDir,
    redis: RedisServer,
    pg: PgCluster,
    database_url: String,
    prefix: String,
}

impl Stack {
    async fn start() -> Stack {
        let dir = tempfile::Builder::new()
            .prefix("nudge-faults-")
            .tempdir()
            .unwrap();
        let policies = dir.path().join("policies");
        std::fs::create_dir_all(&policies).unwrap();
        for (name, text) in POLICIES {
            std::fs::write(policies.join(name), text).unwrap();
        }
        let (redis, pg) =
            tokio::task::spawn_blocking(|| (RedisServer::start(), PgCluster::start()))
                .await
                .unwrap();
        let database_url = pg.create_database("nudge").await;
        Stack {
            dir,
            redis,
            pg,
            database_url,
            prefix: "faults".into(),
        }
    }

    /// A data dir of its own for replica `name`.
    fn data_dir(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("data-{name}"))
    }

    /// The service's settings on this stack, with data dir `name`, and
    /// `extra` settings on top.
    fn env(&self, name: &str, extra: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = [
            ("NUDGE_POLICIES", self.dir.path().join("policies")),
            ("NUDGE_DATA_DIR", self.data_dir(name)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.display().to_string()))
        .collect();
        for (k, v) in [
            ("NUDGE_REDIS_URL", self.redis.url().as_str()),
            ("NUDGE_REDIS_PREFIX", &self.prefix),
            ("NUDGE_DATABASE_URL", &self.database_url),
            ("NUDGE_WORKERS", "2"),
            ("NUDGE_SYNC_MS", "10"),
            ("NUDGE_SWEEP_MS", "50"),
            ("NUDGE_LOG_FLUSH_MS", "10"),
        ]
        .into_iter()
        .chain(extra.iter().copied())
        {
            env.insert(k.to_owned(), v.to_owned());
        }
        env
    }

    async fn spawn(&self, name: &str, extra: &[(&str, &str)]) -> NudgeProcess {
        NudgeProcess::spawn(&self.env(name, extra), self.dir.path()).await
    }

    async fn pool(&self) -> sqlx::PgPool {
        sqlx::PgPool::connect(&self.database_url).await.unwrap()
    }

    /// Every `decisions.event_id` (with repeats, if any).
    async fn logged_decisions(&self) -> Vec<String> {
        let pool = self.pool().await;
        let rows = sqlx::query("SELECT event_id FROM decisions")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows.iter().map(|r| r.get(0)).collect()
    }

    /// Every reward row's `(event_id, is_default)` (with repeats, if any).
    async fn logged_rewards(&self) -> Vec<(String, bool)> {
        let pool = self.pool().await;
        let rows = sqlx::query("SELECT event_id, is_default FROM rewards")
            .fetch_all(&pool)
            .await
            .unwrap();
        pool.close().await;
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    }
}

/// Items of `all` that occur more than once.
fn repeated(all: &[String]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    all.iter()
        .filter(|e| !seen.insert(e.as_str()))
        .cloned()
        .collect()
}

/// Waits until the service has written everything it holds: log queue
/// empty, spool empty, database reachable.
async fn wait_log_drained(nudge: &NudgeProcess) -> Value {
    let started = Instant::now();
    loop {
        let r = nudge.get_json("/readyz").await;
        if r["log_ok"] == true && r["log_queue"] == 0 && r["log_spool_bytes"] == 0 {
            return r;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the log did not drain: {r}\n{}",
            nudge.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM, and the exit status must be success.
async fn stop_gracefully(nudge: &mut NudgeProcess) {
    nudge.sigterm();
    let status = nudge.wait(PATIENCE).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "nudge did not exit cleanly on SIGTERM ({status:?}):\n{}",
        nudge.stderr()
    );
}

fn summary(report: &LoadReport) -> String {
    let mut by_error: BTreeMap<String, usize> = BTreeMap::new();
    for f in &report.failures {
        *by_error
            .entry(format!("{:?} {:?} {}", f.op, f.status, f.error))
            .or_default() += 1;
    }
    format!(
        "{} decisions, {} rewards acknowledged; failures: {by_error:?}",
        report.decided.len(),
        report.rewarded.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_down_for_ten_seconds_mid_load_fails_no_request_and_the_log_ends_exactly_complete()
{
    let mut stack = Stack::start().await;
    let mut nudge = stack.spawn("a", &[]).await;
    let load = Load::start(LoadConfig::new(vec![nudge.address.clone()], 6, "push"));
    load.wait_acked(300, PATIENCE).await;

    tokio::task::block_in_place(|| stack.pg.stop());
    let stopped = load.acked.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = load.acked.load(std::sync::atomic::Ordering::Relaxed) - stopped;
    let outage = nudge.get_json("/readyz").await;
    tokio::task::block_in_place(|| stack.pg.restart());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let report = load.finish().await;
    println!(
        "{}; {during} decided while PostgreSQL was down",
        summary(&report)
    );

    assert!(
        report.failures.is_empty(),
        "requests failed: {:?}",
        &report.failures[..report.failures.len().min(5)]
    );
    assert!(during > 100, "only {during} decisions during the outage");
    // The outage was seen, and the log spooled through it.
    assert_eq!(outage["log_ok"], false, "{outage}");
    assert!(outage["log_spool_bytes"].as_u64().unwrap() > 0, "{outage}");

    // Every reward reached the model exactly once, too.
    let push = nudge.get_json("/v1/policies/push").await;
    let learned: u64 = push["stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["count"].as_u64().unwrap())
        .sum();
    assert_eq!(learned, report.rewarded.len() as u64);

    wait_log_drained(&nudge).await;
    stop_gracefully(&mut nudge).await;

    let decisions = stack.logged_decisions().await;
    assert_eq!(repeated(&decisions), Vec::<String>::new());
    let logged: BTreeSet<String> = decisions.into_iter().collect();
    let acked = report.decided_ids();
    assert_eq!(logged.len(), acked.len());
    assert!(
        logged == acked,
        "the log differs from the acknowledged decisions"
    );

    let rewards = stack.logged_rewards().await;
    assert!(rewards.iter().all(|(_, d)| !d), "no window closed");
    let events: Vec<String> = rewards.into_iter().map(|(e, _)| e).collect();
    assert_eq!(repeated(&events), Vec::<String>::new());
    let logged: BTreeSet<String> = events.into_iter().collect();
    assert_eq!(logged.len(), report.rewarded.len());
    assert!(logged == report.rewarded_ids());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_finishes_in_flight_requests_exits_zero_and_loses_nothing() {
    let stack = Stack::start().await;
    let mut nudge = stack.spawn("a", &[]).await;
    let mut config = LoadConfig::new(vec![nudge.address.clone()], 12, "push");
    config.pause = Duration::ZERO;
    let load = Load::start(config);
    load.wait_acked(1_000, PATIENCE).await;

    let signalled = Instant::now();
    nudge.sigterm();
    // During the drain the replica still answers, but not as ready.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ready = reqwest::get(format!("{}/readyz", nudge.address))
        .await
        .expect("still answering while draining");
    assert_eq!(ready.status().as_u16(), 503);
    assert_eq!(ready.headers()["connection"], "close");
    let status = nudge.wait(PATIENCE).await;
    let report = load.finish().await;
    println!("{}", summary(&report));
    assert!(
        status.is_some_and(|s| s.success()),
        "exit {status:?}:\n{}",
        nudge.stderr()
    );

    // Requests sent before the signal were all answered; only later ones
    // may have been refused.
    let early: Vec<_> = report
        .failures
        .iter()
        .filter(|f| f.sent_at < signalled)
        .collect();
    assert!(early.is_empty(), "in-flight requests failed: {early:?}");

    let decisions = stack.logged_decisions().await;
    assert_eq!(repeated(&decisions), Vec::<String>::new());
    let logged: BTreeSet<String> = decisions.into_iter().collect();
    let missing: Vec<_> = report.decided_ids().difference(&logged).cloned().collect();
    assert_eq!(missing, Vec::<String>::new(), "acknowledged but not logged");
    // Anything logged beyond the acknowledged was a request cut off by the
    // stop (processed, answer lost).
    let failed: BTreeSet<String> = report.failures.iter().map(|f| f.event_id.clone()).collect();
    assert!(
        logged
            .difference(&report.decided_ids())
            .all(|e| failed.contains(e))
    );

    let rewards: BTreeSet<String> = stack
        .logged_rewards()
        .await
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    let missing: Vec<_> = report
        .rewarded_ids()
        .difference(&rewards)
        .cloned()
        .collect();
    assert_eq!(
        missing,
        Vec::<String>::new(),
        "acknowledged rewards not logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_under_load_loses_at_most_about_one_flush_interval_of_log_rows() {
    const FLUSH_MS: u64 = 100;
    let stack = Stack::start().await;
    let flush = FLUSH_MS.to_string();
    let extra = [("NUDGE_LOG_FLUSH_MS", flush.as_str())];
    let mut nudge = stack.spawn("a", &extra).await;
    let mut config = LoadConfig::new(vec![nudge.address.clone()], 8, "push");
    config.pause = Duration::from_millis(1);
    let load = Load::start(config);
    load.wait_acked(500, PATIENCE).await;
    let started = Instant::now();
    let before = load.acked.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rate = (load.acked.load(std::sync::atomic::Ordering::Relaxed) - before) as f64
        / started.elapsed().as_secs_f64();

    nudge.kill9();
    let report = load.finish().await;
    let acked = report.decided_ids();
    let count_missing = |logged: Vec<String>| {
        assert_eq!(repeated(&logged), Vec::<String>::new());
        let logged: BTreeSet<String> = logged.into_iter().collect();
        acked.difference(&logged).count()
    };
    let missing_at_kill = count_missing(stack.logged_decisions().await);

    // A restart on the same data dir replays whatever was spooled.
    let mut again = stack.spawn("a", &extra).await;
    wait_log_drained(&again).await;
    stop_gracefully(&mut again).await;
    let missing_after_restart = count_missing(stack.logged_decisions().await);

    // What a kill -9 can lose is what sat in memory: the queue filled since
    // the last flush, plus the batch being written. Bound it by the rate
    // times one flush interval plus the write time, with a wide margin (the
    // write takes longer on a busy machine).
    let bound = (rate * (FLUSH_MS as f64 / 1000.0 + 1.0)).ceil() as usize + 100;
    println!(
        "kill -9 at {rate:.0} decisions/s, flush every {FLUSH_MS} ms: {} acknowledged, \
         {missing_at_kill} missing from the log right after the kill, \
         {missing_after_restart} after a restart on the same data dir (bound {bound})",
        acked.len()
    );
    assert!(missing_after_restart <= missing_at_kill);
    assert!(
        missing_after_restart <= bound,
        "{missing_after_restart} lost, more than {bound}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_service_keeps_its_redis_model_version_stats_and_pending_events() {
    let stack = Stack::start().await;
    let mut nudge = stack.spawn("a", &[]).await;
    let mut first = BTreeMap::new();
    for i in 0..30 {
        let event = format!("restart-{i}");
        let t = f64::from(i) / 30.0;
        let (status, d) = nudge
            .post(
                "/v1/decide",
                &json!({"policy": "push", "event_id": event, "context": {"x": [t, 1.0 - t, 0.5]}}),
            )
            .await;
        assert_eq!(status, 200, "{d}");
        first.insert(event, d);
    }
    for i in 0..10 {
        let reward =
            json!({"event_id": format!("restart-{i}"), "reward": 0.1 * f64::from(i) - 0.3});
        let (status, body) = nudge.post("/v1/reward", &reward).await;
        assert_eq!(status, 202, "{body}");
    }
    // The describe route folds the store's latest rewards first.
    let before = nudge.get_json("/v1/policies/push").await;
    let learned: u64 = before["stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["count"].as_u64().unwrap())
        .sum();
    assert_eq!(learned, 10, "{before}");
    stop_gracefully(&mut nudge).await;

    let nudge = stack.spawn("a", &[]).await;
    let after = nudge.get_json("/v1/policies/push").await;
    for field in ["model_version", "stats", "pending_events"] {
        assert_eq!(after[field], before[field], "{field}");
    }
    assert_eq!(after["pending_events"], 30);
    // A retried decide gets the answer given before the restart.
    let retried =
        json!({"policy": "push", "event_id": "restart-0", "context": {"x": [0.0, 1.0, 0.5]}});
    let (status, again) = nudge.post("/v1/decide", &retried).await;
    assert_eq!(status, 200);
    assert_eq!(again, first["restart-0"]);
    // An event decided before the restart takes its reward after it.
    let (status, body) = nudge
        .post(
            "/v1/reward",
            &json!({"event_id": "restart-29", "reward": 1.0}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "learned");
    let twice = nudge
        .post(
            "/v1/reward",
            &json!({"event_id": "restart-3", "reward": 1.0}),
        )
        .await;
    assert_eq!(
        twice.0, 409,
        "a reward from before the restart is remembered"
    );
}

/// A stream entry as `XRANGE` returns it: its id and its field/value pairs.
type StreamEntry = (String, Vec<(String, Vec<u8>)>);

/// The learned stream of a policy: `(event_id, is_default, reward)` per entry.
fn learned_stream(redis: &RedisServer, prefix: &str, policy: &str) -> Vec<(String, bool, f64)> {
    let mut conn = redis.client().get_connection().unwrap();
    let entries: Vec<StreamEntry> = redis::cmd("XRANGE")
        .arg(format!("{prefix}:{{s0}}:{policy}:ls"))
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    entries
        .into_iter()
        .map(|(_, fields)| {
            let field = |name: &str| {
                let v = &fields.iter().find(|(k, _)| k == name).unwrap().1;
                String::from_utf8(v.clone()).unwrap()
            };
            (
                field("e"),
                field("d") == "1",
                field("r").parse::<f64>().unwrap(),
            )
        })
        .collect()
}

/// Event ids the store holds for a policy (one shard: the default on one
/// node). An event's blob names its policy in its second field.
fn stored_events(redis: &RedisServer, prefix: &str, policy: &str) -> BTreeSet<String> {
    let mut conn = redis.client().get_connection().unwrap();
    let head = format!("{prefix}:{{s0}}:e:");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{head}*"))
        .query(&mut conn)
        .unwrap();
    let tag = format!("1:2{}:{policy}", policy.len());
    keys.into_iter()
        .filter(|k| {
            let blob: Vec<u8> = redis::cmd("GET").arg(k).query(&mut conn).unwrap();
            blob.starts_with(tag.as_bytes())
        })
        .map(|k| k[head.len()..].to_owned())
        .collect()
}

/// The policy's pending events (the store's count).
fn due_count(redis: &RedisServer, prefix: &str, policy: &str) -> u64 {
    let mut conn = redis.client().get_connection().unwrap();
    let n: Option<u64> = redis::cmd("GET")
        .arg(format!("{prefix}:{{s0}}:{policy}:n"))
        .query(&mut conn)
        .unwrap();
    n.unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_replicas_one_killed_mid_load_every_reward_and_default_is_learned_exactly_once() {
    let stack = Stack::start().await;
    // No snapshot during the test: the learned stream stays whole, to be
    // read back entry by entry.
    let extra = [("NUDGE_SNAPSHOT_MS", "3600000")];
    let mut a = stack.spawn("a", &extra).await;
    let mut b = stack.spawn("b", &extra).await;
    let mut config = LoadConfig::new(vec![a.address.clone(), b.address.clone()], 8, "windowed");
    config.reward_elsewhere = true;
    config.failover = true;
    config.reward = 1.0;
    let load = Load::start(config);
    load.wait_acked(1_500, PATIENCE).await;
    a.kill9();
    let killed = load.acked.load(std::sync::atomic::Ordering::Relaxed);
    load.wait_acked(killed + 1_500, PATIENCE).await;
    let report = load.finish().await;
    println!(
        "{}; {} acknowledged by failover, {} rewards found applied on failover",
        summary(&report),
        report.failed_over.len(),
        report.rewarded_before_failover.len()
    );
    // The surviving replica answered everything it was sent, and with
    // failover no request was lost.
    assert!(
        report.failures.is_empty(),
        "failures: {:?}",
        &report.failures[..report.failures.len().min(5)]
    );

    // Let every window close and be swept (by the survivor).
    let started = Instant::now();
    while due_count(&stack.redis, &stack.prefix, "windowed") > 0 {
        assert!(started.elapsed() < PATIENCE, "windows did not close");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stream = learned_stream(&stack.redis, &stack.prefix, "windowed");
    let events = stored_events(&stack.redis, &stack.prefix, "windowed");

    // Each stored event was learned exactly once: by its reward or by the
    // default when its window closed.
    let learned: Vec<String> = stream.iter().map(|(e, _, _)| e.clone()).collect();
    assert_eq!(repeated(&learned), Vec::<String>::new(), "learned twice");
    let learned: BTreeSet<String> = learned.into_iter().collect();
    assert!(learned == events, "stored events and learned events differ");
    assert!(report.decided_ids().is_subset(&events));

    // Rewards: exactly the acknowledged ones (including those a failover
    // found already applied); defaults: exactly the other events.
    let explicit: BTreeSet<String> = stream
        .iter()
        .filter(|(_, d, _)| !d)
        .map(|(e, _, _)| e.clone())
        .collect();
    let acked: BTreeSet<String> = report
        .rewarded
        .iter()
        .chain(&report.rewarded_before_failover)
        .map(|(e, _)| e.clone())
        .collect();
    assert!(
        explicit == acked,
        "learned rewards differ from acknowledged"
    );
    assert!(
        stream
            .iter()
            .all(|(_, d, r)| if *d { *r == -0.5 } else { *r == 1.0 })
    );
    let defaults = stream.iter().filter(|(_, d, _)| *d).count();
    assert_eq!(defaults, events.len() - acked.len());

    // The survivor's model holds every entry once.
    let model = b.get_json("/v1/policies/windowed").await;
    let stats = model["stats"].as_array().unwrap();
    let count: u64 = stats.iter().map(|s| s["count"].as_u64().unwrap()).sum();
    assert_eq!(count, stream.len() as u64, "{model}");
    let sum: f64 = stats
        .iter()
        .map(|s| s["count"].as_f64().unwrap() * s["mean_reward"].as_f64().unwrap())
        .sum();
    let expected: f64 = stream.iter().map(|(_, _, r)| r).sum();
    assert!(
        (sum - expected).abs() < 1e-6 * stream.len() as f64,
        "{sum} vs {expected}"
    );

    // The log: no reward row twice; every default the survivor applied is
    // logged; the killed replica's unflushed rows are the kill -9 loss.
    wait_log_drained(&b).await;
    stop_gracefully(&mut b).await;
    let rows = stack.logged_rewards().await;
    let ids: Vec<String> = rows.iter().map(|(e, _)| e.clone()).collect();
    assert_eq!(
        repeated(&ids),
        Vec::<String>::new(),
        "a reward logged twice"
    );
    let logged_defaults = rows.iter().filter(|(_, d)| *d).count();
    let on_b: BTreeSet<String> = report
        .rewarded
        .iter()
        .filter(|(_, t)| *t == b.address)
        .map(|(e, _)| e.clone())
        .collect();
    let logged: BTreeSet<String> = rows.into_iter().map(|(e, _)| e).collect();
    assert!(
        on_b.is_subset(&logged),
        "a reward the survivor acknowledged is not logged"
    );
    println!(
        "{} events, {} rewards, {defaults} defaults learned; {logged_defaults} defaults logged \
         ({} lost with the killed replica's log queue)",
        events.len(),
        acked.len(),
        defaults - logged_defaults
    );
    assert!(logged_defaults <= defaults);
}

#[test]
fn a_persistent_private_redis_keeps_its_data_across_a_stop_a_kill_and_restarts() {
    let mut redis = RedisServer::start_persistent();
    let port = redis.port;
    let set = |redis: &RedisServer, key: &str| {
        let mut conn = redis.client().get_connection().unwrap();
        redis::cmd("SET")
            .arg(key)
            .arg("1")
            .query::<()>(&mut conn)
            .unwrap();
    };
    let keys = |redis: &RedisServer| {
        let mut conn = redis.client().get_connection().unwrap();
        let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
        keys.sort();
        keys
    };
    set(&redis, "before-stop");
    redis.stop();
    assert!(redis.client().get_connection().is_err(), "stopped");
    redis.restart();
    set(&redis, "before-kill");
    redis.kill();
    redis.restart();
    assert_eq!(redis.port, port);
    assert_eq!(keys(&redis), ["before-kill", "before-stop"]);

    // Without persistence, a restart starts empty.
    let mut volatile = RedisServer::start();
    set(&volatile, "gone");
    volatile.stop();
    volatile.restart();
    assert!(keys(&volatile).is_empty());
}

/// Replicas replay their outboxes independently: a reward queued by one can
/// reach the store before the decision it rewards, still queued by the
/// other. Replica A decides while Redis is down (its outbox holds the
/// events), replica B takes their rewards (its outbox holds those); Redis
/// comes back while A is paused, so B replays first and finds no event.
/// B parks the rewards instead of rejecting them, no sweeper closes a
/// window while A replays (the 2 s windows closed during the outage, and
/// the rewards arrived inside them), and every reward is learned as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reward_replayed_before_the_decision_another_replica_queued_waits_for_it() {
    let mut stack = Stack::start().await;
    let extra = [
        ("NUDGE_SNAPSHOT_MS", "3600000"),
        ("NUDGE_STORE_TIMEOUT_MS", "200"),
    ];
    let a = stack.spawn("a", &extra).await;
    let b = stack.spawn("b", &extra).await;
    stack.redis.stop();
    let mut rewarded: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for policy in ["push", "windowed"] {
        for i in 0..30 {
            let event = format!("{policy}-{i}");
            let (status, body) = a
                .post(
                    "/v1/decide",
                    &json!({"policy": policy, "event_id": event, "context": {"x": [0.5, -1.0, f64::from(i) / 30.0]}}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            // Half name their policy; the others leave it to the store's
            // index, which B cannot read until A has replayed.
            let mut reward = json!({"event_id": event, "reward": 1.0});
            if i % 2 == 0 {
                reward["policy"] = json!(policy);
            }
            let (status, body) = b.post("/v1/reward", &reward).await;
            assert_eq!((status, &body["status"]), (202, &json!("queued")), "{body}");
            rewarded.entry(policy).or_default().insert(event);
        }
    }
    // Every 2 s window closes while Redis is down.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    a.pause();
    stack.redis.restart();

    // B replays first: its rewards find no event, and wait.
    let started = Instant::now();
    loop {
        let r = b.get_json("/readyz").await;
        if r["outbox_ops"] == 0 && r["outbox_parked"] == 60 {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "B did not park its rewards: {r}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Long enough for B to sweep if nothing held it.
    tokio::time::sleep(Duration::from_secs(4)).await;
    a.resume();
    let started = Instant::now();
    loop {
        let (ra, rb) = (a.get_json("/readyz").await, b.get_json("/readyz").await);
        if ra["outbox_ops"] == 0 && rb["outbox_parked"] == 0 {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "not replayed: {ra} {rb}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let started = Instant::now();
    while due_count(&stack.redis, &stack.prefix, "windowed") > 0 {
        assert!(started.elapsed() < PATIENCE, "windows did not close");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (policy, events) in &rewarded {
        let stream = learned_stream(&stack.redis, &stack.prefix, policy);
        let learned: Vec<String> = stream.iter().map(|(e, _, _)| e.clone()).collect();
        assert_eq!(repeated(&learned), Vec::<String>::new(), "learned twice");
        assert!(
            stream.iter().all(|(_, default, r)| !default && *r == 1.0),
            "{policy}: a default or another value learned: {stream:?}"
        );
        let learned: BTreeSet<String> = learned.into_iter().collect();
        assert_eq!(
            &learned, events,
            "{policy}: learned events differ from rewarded"
        );
    }
    let rejected = stack.data_dir("b").join("outbox/rejected.jsonl");
    assert!(
        !rejected.exists(),
        "B rejected: {}",
        std::fs::read_to_string(&rejected).unwrap_or_default()
    );
    // The log has every reward once, none a default.
    wait_log_drained(&b).await;
    let rows = stack.logged_rewards().await;
    assert_eq!(rows.len(), 60, "{rows:?}");
    assert!(rows.iter().all(|(_, default)| !default));
}
