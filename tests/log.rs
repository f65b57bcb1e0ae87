//! The decision log against real databases: a fresh PostgreSQL database per
//! test on the local server (`NUDGE_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), dropped at the end, and
//! SQLite files in temporary directories.

use chrono::{DateTime, Datelike, Duration as Span, NaiveDate, Utc};
use nudge::log::{
    ActivationRow, DecisionLog, DecisionRow, LogError, LogRecord, LogSettings, RewardRow, migrate,
};
use serde_json::json;
use sqlx::types::Json;
use sqlx::{Connection, PgConnection, PgPool, SqlitePool};
use std::path::Path;
use std::time::Duration;
use uuid::Uuid;

// ---------------------------------------------------------------- fixtures

fn admin_url() -> String {
    std::env::var("NUDGE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A PostgreSQL database for one test, dropped (best effort) when the value
/// is, even if the test panics.
struct PgDb {
    name: String,
    url: String,
}

impl PgDb {
    /// Names a database without creating it.
    fn named() -> PgDb {
        let name = format!("nudge_log_{}", Uuid::now_v7().simple());
        let admin = admin_url();
        let (server, _) = admin
            .rsplit_once('/')
            .expect("admin URL ends with /database");
        PgDb {
            url: format!("{server}/{name}"),
            name,
        }
    }

    /// Creates it.
    async fn create(&self) {
        let mut admin = PgConnection::connect(&admin_url()).await.unwrap();
        // The name is generated above (letters, digits, underscores).
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {}",
            self.name
        )))
        .execute(&mut admin)
        .await
        .unwrap();
        admin.close().await.unwrap();
    }

    async fn created() -> PgDb {
        let db = PgDb::named();
        db.create().await;
        db
    }

    async fn pool(&self) -> PgPool {
        PgPool::connect(&self.url).await.unwrap()
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(mut admin) = PgConnection::connect(&admin_url()).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("log.db").display())
}

async fn sqlite_pool(dir: &Path) -> SqlitePool {
    SqlitePool::connect(&sqlite_url(dir)).await.unwrap()
}

/// Settings for a test (also installs a log subscriber: `RUST_LOG=nudge=info`
/// shows what the log does; output is captured per test).
fn settings(url: &str, data_dir: &Path) -> LogSettings {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    LogSettings {
        database_url: url.to_owned(),
        data_dir: data_dir.to_owned(),
        batch_size: 128,
        flush_interval: Duration::from_millis(50),
        queue_capacity: 10_000,
        migrate: true,
    }
}

/// A fixed instant with microsecond precision (what PostgreSQL keeps).
fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp_micros(Utc::now().timestamp_micros()).unwrap()
}

fn decision(i: usize, at: DateTime<Utc>) -> DecisionRow {
    DecisionRow {
        event_id: format!("ev-{i:05}"),
        policy: if i.is_multiple_of(2) { "push" } else { "feed" }.to_owned(),
        policy_version: (i % 3) as i32 + 1,
        model_version: 1 << 40 | i as i64,
        decided_at: at + Span::microseconds(i as i64 * 1_001),
        context: json!({
            "user": {"age": i, "country": "FR", "embedding": [0.25, -1.5e-7, 3.0]},
            "note": "héllo \"quoted\" ✓",
            // COPY's text format escapes these four; JSON text holds their
            // escapes, so backslashes reach the escaping code.
            "controls": "tab\tnewline\ncr\rbackslash\\",
        })
        .into(),
        actions: i
            .is_multiple_of(4)
            .then(|| json!([{"id": "a", "features": {"x": 1.5}}]).into()),
        candidates: json!([{"id": "a", "probability": 0.7}, {"id": "b", "probability": 0.3}])
            .into(),
        action: "a".to_owned(),
        // Dyadic, so serde_json's default (not exactly rounding) float
        // parser reads the spooled text back exactly; see
        // `spooled_floats_survive_replay_bit_for_bit` for the general case.
        probability: (i % 127 + 1) as f64 / 128.0,
        slate: i.is_multiple_of(5).then(|| {
            json!([{"id": "a", "probability": 0.7}, {"id": "b", "probability": 1.0}]).into()
        }),
        deferred: i.is_multiple_of(3),
        degraded: i.is_multiple_of(7),
        guardrails: i.is_multiple_of(4).then(|| {
            json!({"user": format!("u{i}"), "timezone": "Europe/Berlin", "forced": i.is_multiple_of(8), "send_at": null}).into()
        }),
        challengers: i
            .is_multiple_of(6)
            .then(|| json!({"greedy": {"a": 0.95, "b": 0.05}}).into()),
    }
}

fn reward(i: usize, d: &DecisionRow) -> RewardRow {
    RewardRow {
        reward_id: Uuid::now_v7(),
        event_id: d.event_id.clone(),
        policy: d.policy.clone(),
        action: d.action.clone(),
        reward: (i % 11) as f64 / 4.0 - 1.0,
        signals: i
            .is_multiple_of(2)
            .then(|| json!({"opened": true, "dwell_seconds": 12.5}).into()),
        is_default: i % 2 == 1,
        received_at: d.decided_at + Span::milliseconds(1_500),
    }
}

fn activation(d: &DecisionRow) -> ActivationRow {
    ActivationRow {
        event_id: d.event_id.clone(),
        policy: d.policy.clone(),
        activated_at: d.decided_at + Span::milliseconds(250),
    }
}

/// What the tables should hold after a workload.
#[derive(Default)]
struct Expected {
    records: Vec<LogRecord>,
    /// Decisions with their expected `activated_at`, by event id.
    decisions: Vec<(DecisionRow, Option<DateTime<Utc>>)>,
    rewards: Vec<RewardRow>,
}

/// `n` decisions; every deferred one activated; rewards for the first
/// `rewarded`; each activation and reward right after its decision.
fn workload(n: usize, rewarded: usize) -> Expected {
    let at = t0();
    let mut expected = Expected::default();
    for i in 0..n {
        let d = decision(i, at);
        expected.records.push(LogRecord::Decision(d.clone()));
        let mut activated_at = None;
        if d.deferred {
            let a = activation(&d);
            activated_at = Some(a.activated_at);
            expected.records.push(LogRecord::Activation(a));
        }
        if i < rewarded {
            let r = reward(i, &d);
            expected.rewards.push(r.clone());
            expected.records.push(LogRecord::Reward(r));
        }
        expected.decisions.push((d, activated_at));
    }
    expected.rewards.sort_by_key(|r| r.reward_id);
    expected
}

type DecisionTuple = (
    String,
    String,
    i32,
    i64,
    DateTime<Utc>,
    Json<serde_json::Value>,
    Option<Json<serde_json::Value>>,
    Json<serde_json::Value>,
    String,
    f64,
    Option<Json<serde_json::Value>>,
    bool,
    Option<DateTime<Utc>>,
    bool,
    Option<Json<serde_json::Value>>,
    Option<String>,
);

type RewardTuple = (
    String,
    String,
    String,
    String,
    f64,
    Option<Json<serde_json::Value>>,
    bool,
    DateTime<Utc>,
);

/// Decisions with the arm set their compact candidates name (PostgreSQL).
const PG_SELECT_DECISIONS: &str = "SELECT event_id, policy, policy_version, model_version, \
    decided_at, context, actions, candidates, action, probability, slate, deferred, \
    activated_at, degraded, guardrails, a.arms::text FROM decisions d \
    LEFT JOIN arm_sets a ON a.id = d.candidates->>'set' ORDER BY event_id";

/// The same for SQLite.
const SQLITE_SELECT_DECISIONS: &str = "SELECT event_id, policy, policy_version, model_version, \
    decided_at, context, actions, candidates, action, probability, slate, deferred, \
    activated_at, degraded, guardrails, a.arms FROM decisions d \
    LEFT JOIN arm_sets a ON a.id = json_extract(d.candidates, '$.set') ORDER BY event_id";

fn decision_of(t: DecisionTuple) -> (DecisionRow, Option<DateTime<Utc>>) {
    let row = DecisionRow {
        event_id: t.0,
        policy: t.1,
        policy_version: t.2,
        model_version: t.3,
        decided_at: t.4,
        context: t.5.0.into(),
        actions: t.6.map(|j| j.0.into()),
        // As logged: a compact list expanded with its arm set.
        candidates: nudge::log::arms::as_logged(&t.7.0.to_string(), t.15.as_deref())
            .unwrap()
            .into(),
        action: t.8,
        probability: t.9,
        slate: t.10.map(|j| j.0.into()),
        deferred: t.11,
        degraded: t.13,
        guardrails: t.14.map(|j| j.0.into()),
        // Read by a query of its own (sqlx rows are at most 16-tuples).
        challengers: None,
    };
    (row, t.12)
}

fn reward_of(t: RewardTuple) -> RewardRow {
    RewardRow {
        reward_id: Uuid::parse_str(&t.0).unwrap(),
        event_id: t.1,
        policy: t.2,
        action: t.3,
        reward: t.4,
        signals: t.5.map(|j| j.0.into()),
        is_default: t.6,
        received_at: t.7,
    }
}

async fn pg_rows(pool: &PgPool) -> (Vec<(DecisionRow, Option<DateTime<Utc>>)>, Vec<RewardRow>) {
    let decisions: Vec<DecisionTuple> = sqlx::query_as(PG_SELECT_DECISIONS)
        .fetch_all(pool)
        .await
        .unwrap();
    let rewards: Vec<RewardTuple> = sqlx::query_as(
        "SELECT reward_id::text, event_id, policy, action, reward, signals, is_default, \
         received_at FROM rewards ORDER BY reward_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let challengers: Vec<(Option<Json<serde_json::Value>>,)> =
        sqlx::query_as("SELECT challengers FROM decisions ORDER BY event_id")
            .fetch_all(pool)
            .await
            .unwrap();
    (
        with_challengers(decisions, challengers),
        rewards.into_iter().map(reward_of).collect(),
    )
}

fn with_challengers(
    decisions: Vec<DecisionTuple>,
    challengers: Vec<(Option<Json<serde_json::Value>>,)>,
) -> Vec<(DecisionRow, Option<DateTime<Utc>>)> {
    assert_eq!(decisions.len(), challengers.len());
    decisions
        .into_iter()
        .zip(challengers)
        .map(|(t, (c,))| {
            let (mut row, activated) = decision_of(t);
            row.challengers = c.map(|j| j.0.into());
            (row, activated)
        })
        .collect()
}

async fn sqlite_rows(
    pool: &SqlitePool,
) -> (Vec<(DecisionRow, Option<DateTime<Utc>>)>, Vec<RewardRow>) {
    // JSON is TEXT in SQLite; sqlx's Json decodes it from text.
    let decisions: Vec<DecisionTuple> = sqlx::query_as(SQLITE_SELECT_DECISIONS)
        .fetch_all(pool)
        .await
        .unwrap();
    let rewards: Vec<RewardTuple> = sqlx::query_as(
        "SELECT reward_id, event_id, policy, action, reward, signals, is_default, \
         received_at FROM rewards ORDER BY reward_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let challengers: Vec<(Option<Json<serde_json::Value>>,)> =
        sqlx::query_as("SELECT challengers FROM decisions ORDER BY event_id")
            .fetch_all(pool)
            .await
            .unwrap();
    (
        with_challengers(decisions, challengers),
        rewards.into_iter().map(reward_of).collect(),
    )
}

async fn pg_counts(pool: &PgPool) -> (i64, i64) {
    let d: i64 = sqlx::query_scalar("SELECT count(*) FROM decisions")
        .fetch_one(pool)
        .await
        .unwrap();
    let r: i64 = sqlx::query_scalar("SELECT count(*) FROM rewards")
        .fetch_one(pool)
        .await
        .unwrap();
    (d, r)
}

/// Polls `condition` every 20 ms; panics after `limit`.
async fn wait_until(what: &str, limit: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write_spool(data_dir: &Path, records: &[LogRecord], tail: &[u8]) {
    let dir = data_dir.join("spool");
    std::fs::create_dir_all(&dir).unwrap();
    let mut text = Vec::new();
    for record in records {
        serde_json::to_writer(&mut text, record).unwrap();
        text.push(b'\n');
    }
    text.extend_from_slice(tail);
    std::fs::write(dir.join("log.jsonl"), text).unwrap();
}

/// The spool holds nothing to replay.
fn assert_spool_drained(data_dir: &Path) {
    let dir = data_dir.join("spool");
    let active = std::fs::metadata(dir.join("log.jsonl")).map_or(0, |m| m.len());
    assert_eq!(active, 0, "log.jsonl is empty");
    assert!(
        !dir.join("log.replaying.jsonl").exists(),
        "no replay in progress"
    );
}

// ---------------------------------------------------------------- tests

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_mixed_records_round_trip_exactly_through_postgres() {
    let db = PgDb::created().await;
    let dir = tempfile::tempdir().unwrap();
    let expected = workload(500, 333);
    assert_eq!(expected.records.len(), 1000);

    let log = DecisionLog::start(&settings(&db.url, dir.path()))
        .await
        .unwrap();
    for record in &expected.records {
        log.record(record.clone());
    }
    log.shutdown().await;

    assert_eq!(log.written(), 1000);
    assert!(log.db_healthy());
    assert_eq!((log.queue_depth(), log.spool_bytes()), (0, 0));
    let pool = db.pool().await;
    let (decisions, rewards) = pg_rows(&pool).await;
    assert_eq!(decisions, expected.decisions);
    assert_eq!(rewards, expected.rewards);
    // Disjoint decisions (no `actions`) store their candidates compact,
    // against the one arm set they share; shared-mode ones as logged.
    let compact: (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE candidates->>'set' IS NOT NULL), \
         count(*) FILTER (WHERE actions IS NULL), (SELECT count(*) FROM arm_sets) FROM decisions",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((compact.0, compact.2), (compact.1, 1), "{compact:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_mixed_records_round_trip_exactly_through_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let expected = workload(500, 333);

    let log = DecisionLog::start(&settings(&sqlite_url(dir.path()), dir.path()))
        .await
        .unwrap();
    for record in &expected.records {
        log.record(record.clone());
    }
    log.shutdown().await;

    assert_eq!(log.written(), 1000);
    let pool = sqlite_pool(dir.path()).await;
    let (decisions, rewards) = sqlite_rows(&pool).await;
    assert_eq!(decisions, expected.decisions);
    assert_eq!(rewards, expected.rewards);
    let compact: (i64, i64, i64) = sqlx::query_as(
        "SELECT count(json_extract(candidates, '$.set')), count(*) - count(actions), \
         (SELECT count(*) FROM arm_sets) FROM decisions",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((compact.0, compact.2), (compact.1, 1), "{compact:?}");
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_logged_while_postgres_is_unreachable_are_spooled_then_replayed_exactly_once() {
    // The database does not exist yet: connecting fails as in an outage.
    let db = PgDb::named();
    let dir = tempfile::tempdir().unwrap();
    let expected = workload(300, 300);
    let log = DecisionLog::start(&settings(&db.url, dir.path()))
        .await
        .unwrap();
    for record in &expected.records {
        log.record(record.clone());
    }
    wait_until("the records are spooled", Duration::from_secs(10), || {
        log.queue_depth() == 0 && log.spool_bytes() > 0
    })
    .await;
    assert!(!log.db_healthy());
    assert_eq!(log.written(), 0);

    db.create().await;
    let total = expected.records.len() as u64;
    wait_until("the spool is replayed", Duration::from_secs(15), || {
        log.written() == total && log.spool_bytes() == 0
    })
    .await;
    assert!(log.db_healthy());
    log.shutdown().await;

    assert_spool_drained(dir.path());
    let (decisions, rewards) = pg_rows(&db.pool().await).await;
    assert_eq!(decisions, expected.decisions);
    assert_eq!(rewards, expected.rewards);
}

/// Replays the same spool content into the database twice.
async fn replay_twice(url: &str, data_dir: &Path) -> Expected {
    let expected = workload(200, 150);
    for round in 0..2 {
        write_spool(data_dir, &expected.records, b"");
        let log = DecisionLog::start(&settings(url, data_dir)).await.unwrap();
        log.shutdown().await;
        assert_spool_drained(data_dir);
        if round == 0 {
            assert_eq!(log.written(), expected.records.len() as u64);
        }
    }
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_same_spool_twice_into_postgres_writes_no_duplicates() {
    let db = PgDb::created().await;
    let dir = tempfile::tempdir().unwrap();
    let expected = replay_twice(&db.url, dir.path()).await;
    let (decisions, rewards) = pg_rows(&db.pool().await).await;
    assert_eq!(decisions, expected.decisions);
    assert_eq!(rewards, expected.rewards);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_the_same_spool_twice_into_sqlite_writes_no_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let expected = replay_twice(&sqlite_url(dir.path()), dir.path()).await;
    let (decisions, rewards) = sqlite_rows(&sqlite_pool(dir.path()).await).await;
    assert_eq!(decisions, expected.decisions);
    assert_eq!(rewards, expected.rewards);
}

/// Records a burst much larger than a one-slot queue, every decision
/// activated and rewarded.
async fn burst(url: &str, data_dir: &Path) -> Expected {
    let mut expected = Expected::default();
    let at = t0();
    for i in 0..1000 {
        let mut d = decision(i, at);
        d.deferred = true;
        let (a, r) = (activation(&d), reward(i, &d));
        expected.records.extend([
            LogRecord::Decision(d.clone()),
            LogRecord::Activation(a.clone()),
            LogRecord::Reward(r.clone()),
        ]);
        expected.decisions.push((d, Some(a.activated_at)));
        expected.rewards.push(r);
    }
    expected.rewards.sort_by_key(|r| r.reward_id);
    let settings = LogSettings {
        queue_capacity: 1,
        batch_size: 64,
        flush_interval: Duration::from_millis(10),
        ..settings(url, data_dir)
    };
    let log = DecisionLog::start(&settings).await.unwrap();
    let mut spooled_directly = false;
    for record in &expected.records {
        log.record(record.clone());
        spooled_directly |= log.spool_bytes() > 0;
    }
    assert!(spooled_directly, "the burst overflowed the queue");
    log.shutdown().await;
    assert_eq!(log.written(), 3000);
    assert_spool_drained(data_dir);
    expected
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_into_a_tiny_queue_loses_nothing_in_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let expected = burst(&sqlite_url(dir.path()), dir.path()).await;
    let (decisions, rewards) = sqlite_rows(&sqlite_pool(dir.path()).await).await;
    assert_eq!(decisions, expected.decisions);
    assert_eq!(rewards, expected.rewards);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_into_a_tiny_queue_loses_nothing_in_postgres() {
    let db = PgDb::created().await;
    let dir = tempfile::tempdir().unwrap();
    let expected = burst(&db.url, dir.path()).await;
    let (decisions, rewards) = pg_rows(&db.pool().await).await;
    assert_eq!(decisions, expected.decisions);
    assert_eq!(rewards, expected.rewards);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_spool_line_is_skipped_and_the_rest_is_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let expected = workload(60, 0);
    let (spooled, later) = expected.records.split_at(50);
    // A crash in the middle of appending the 51st record.
    let torn = br#"{"kind":"decision","event_id":"ev-torn","policy":"pu"#;
    write_spool(dir.path(), spooled, torn);

    let log = DecisionLog::start(&settings(&sqlite_url(dir.path()), dir.path()))
        .await
        .unwrap();
    // Recorded while the spool is non-empty: appended after the torn line.
    for record in later {
        log.record(record.clone());
    }
    log.shutdown().await;

    assert_spool_drained(dir.path());
    let (decisions, _) = sqlite_rows(&sqlite_pool(dir.path()).await).await;
    assert_eq!(decisions, expected.decisions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_floats_survive_replay_bit_for_bit() {
    // Needs serde_json's `float_roundtrip` feature: its default parser may
    // read the shortest round-trip text of a double back one ulp off
    // (1/11 came back as 0.09090909090909093).
    let dir = tempfile::tempdir().unwrap();
    let at = t0();
    let decisions: Vec<DecisionRow> = (0..200)
        .map(|i| DecisionRow {
            probability: 1.0 / (i as f64 + 3.0),
            ..decision(i, at)
        })
        .collect();
    let records: Vec<LogRecord> = decisions.iter().cloned().map(LogRecord::Decision).collect();
    write_spool(dir.path(), &records, b"");
    let log = DecisionLog::start(&settings(&sqlite_url(dir.path()), dir.path()))
        .await
        .unwrap();
    log.shutdown().await;
    let (stored, _) = sqlite_rows(&sqlite_pool(dir.path()).await).await;
    let stored: Vec<f64> = stored.iter().map(|(d, _)| d.probability).collect();
    let sent: Vec<f64> = decisions.iter().map(|d| d.probability).collect();
    assert_eq!(stored, sent);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_postgres_refuses_go_to_rejected_jsonl_and_the_rest_of_their_batch_is_written() {
    let db = PgDb::created().await;
    let dir = tempfile::tempdir().unwrap();
    let at = t0();
    let mut bad = decision(99, at);
    bad.policy = "nul\0byte".to_owned(); // PostgreSQL text cannot hold NUL
    let good: Vec<DecisionRow> = (0..10).map(|i| decision(i, at)).collect();
    let rewards: Vec<RewardRow> = good.iter().enumerate().map(|(i, d)| reward(i, d)).collect();

    let log = DecisionLog::start(&settings(&db.url, dir.path()))
        .await
        .unwrap();
    for d in &good[..5] {
        log.record(LogRecord::Decision(d.clone()));
    }
    log.record(LogRecord::Decision(bad.clone()));
    for d in &good[5..] {
        log.record(LogRecord::Decision(d.clone()));
    }
    for r in &rewards {
        log.record(LogRecord::Reward(r.clone()));
    }
    log.shutdown().await;

    assert_eq!(log.written(), 20);
    assert!(log.db_healthy());
    assert_eq!(pg_counts(&db.pool().await).await, (10, 10));
    let rejected = std::fs::read_to_string(dir.path().join("spool/rejected.jsonl")).unwrap();
    let rejected: Vec<LogRecord> = rejected
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(rejected, vec![LogRecord::Decision(bad)]);
    assert_spool_drained(dir.path());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_activation_recorded_before_its_decision_is_applied_once_the_decision_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let d = decision(3, t0());
    let a = activation(&d);
    let log = DecisionLog::start(&settings(&sqlite_url(dir.path()), dir.path()))
        .await
        .unwrap();
    log.record(LogRecord::Activation(a.clone()));
    wait_until("the activation is flushed", Duration::from_secs(5), || {
        log.queue_depth() == 0 && log.db_healthy()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    log.record(LogRecord::Decision(d.clone()));
    wait_until("the activation is applied", Duration::from_secs(5), || {
        log.written() == 2
    })
    .await;
    log.shutdown().await;

    let (decisions, _) = sqlite_rows(&sqlite_pool(dir.path()).await).await;
    assert_eq!(decisions, vec![(d, Some(a.activated_at))]);
    assert!(!dir.path().join("spool/rejected.jsonl").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fails_only_for_a_bad_url_or_an_unusable_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let start = |url: &str, data_dir: &Path| {
        let settings = settings(url, data_dir);
        async move { DecisionLog::start(&settings).await }
    };
    assert!(matches!(
        start("mysql://localhost/nudge", dir.path()).await,
        Err(LogError::UnsupportedScheme { .. })
    ));
    assert!(matches!(
        start("postgres://nudge@localhost:notaport/nudge", dir.path()).await,
        Err(LogError::InvalidUrl(_))
    ));
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"").unwrap();
    assert!(matches!(
        start(&sqlite_url(dir.path()), &file).await,
        Err(LogError::DataDir { .. })
    ));

    // Nothing listens on port 1: the log starts anyway and spools.
    let log = start("postgres://nudge@127.0.0.1:1/nudge", dir.path())
        .await
        .unwrap();
    // One log per data dir.
    assert!(matches!(
        start("postgres://nudge@127.0.0.1:1/nudge", dir.path()).await,
        Err(LogError::DataDir { .. })
    ));
    log.record(LogRecord::Decision(decision(0, t0())));
    log.shutdown().await;
    assert!(!log.db_healthy());
    assert!(log.spool_bytes() > 0);
    assert_eq!(log.written(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_idempotent_and_later_records_wait_in_the_spool_for_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_url(dir.path());
    let at = t0();
    let decisions: Vec<DecisionRow> = (1..=6).map(|i| decision(i, at)).collect();
    let log = DecisionLog::start(&settings(&url, dir.path()))
        .await
        .unwrap();
    for d in &decisions[..5] {
        log.record(LogRecord::Decision(d.clone()));
    }
    tokio::join!(log.shutdown(), log.shutdown());
    log.shutdown().await;
    assert_eq!(log.written(), 5);
    log.record(LogRecord::Decision(decisions[5].clone()));
    assert!(log.spool_bytes() > 0);
    drop(log);

    let log = DecisionLog::start(&settings(&url, dir.path()))
        .await
        .unwrap();
    log.shutdown().await;
    assert_eq!(log.written(), 1);
    let (stored, _) = sqlite_rows(&sqlite_pool(dir.path()).await).await;
    let stored: Vec<DecisionRow> = stored.into_iter().map(|(d, _)| d).collect();
    assert_eq!(stored, decisions);
}

fn partitions_for(day: NaiveDate) -> Vec<String> {
    let mut names = Vec::new();
    for table in ["decisions", "rewards"] {
        names.push(format!("{table}_default"));
        for ahead in 0..3 {
            let month = day.year() * 12 + day.month0() as i32 + ahead;
            names.push(format!("{table}_y{:04}m{:02}", month / 12, month % 12 + 1));
        }
    }
    names.sort();
    names
}

async fn partitions(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname IN ('decisions', 'rewards') \
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_builds_partitioned_postgres_tables_with_their_indexes_and_is_idempotent() {
    let db = PgDb::created().await;
    migrate(&db.url).await.unwrap();
    migrate(&db.url).await.unwrap();
    let pool = db.pool().await;
    assert_eq!(
        partitions(&pool).await,
        partitions_for(Utc::now().date_naive())
    );
    let partitioned: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_partitioned_table t JOIN pg_class c ON c.oid = t.partrelid ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(partitioned, ["decisions", "rewards"]);
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE tablename IN ('decisions', 'rewards') ORDER BY 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        [
            "decisions_pkey",
            "decisions_policy_decided_at",
            "rewards_event_id",
            "rewards_pkey",
            "rewards_policy_received_at"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_creates_the_sqlite_file_and_its_tables() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!(
        "sqlite://{}",
        dir.path().join("nested/dir/log.db").display()
    );
    migrate(&url).await.unwrap();
    migrate(&url).await.unwrap();
    let pool = SqlitePool::connect(&url).await.unwrap();
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type IN ('table', 'index') \
         AND name NOT LIKE 'sqlite_%' AND name NOT LIKE '_sqlx%' ORDER BY name",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        tables,
        [
            "arm_sets",
            "decisions",
            "decisions_policy_decided_at",
            "rewards",
            "rewards_event_id",
            "rewards_policy_received_at"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_month_whose_rows_already_sit_in_the_default_partition_is_a_warning_not_a_failure() {
    let db = PgDb::created().await;
    let pool = db.pool().await;
    sqlx::migrate!("./migrations/postgres")
        .run(&pool)
        .await
        .unwrap();
    // Next month's partition does not exist yet: this row lands in the
    // default partition, so that partition cannot be created any more.
    let today = Utc::now().date_naive();
    let mut early = decision(7, t0());
    early.decided_at += Span::days(40);
    sqlx::query(
        "INSERT INTO decisions (event_id, policy, policy_version, model_version, decided_at, \
         context, candidates, action, probability, deferred, degraded) \
         VALUES ($1, 'push', 1, 1, $2, '{}', '[]', 'a', 0.5, false, false)",
    )
    .bind(&early.event_id)
    .bind(early.decided_at)
    .execute(&pool)
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let log = DecisionLog::start(&settings(&db.url, dir.path()))
        .await
        .unwrap();
    log.record(LogRecord::Decision(decision(1, t0())));
    log.shutdown().await;
    assert_eq!(log.written(), 1);

    let made = partitions(&pool).await;
    let month_of_early = format!(
        "decisions_y{:04}m{:02}",
        early.decided_at.year(),
        early.decided_at.month()
    );
    let mut expected = partitions_for(today);
    expected.retain(|name| *name != month_of_early);
    assert_eq!(made, expected);
    let in_default: i64 = sqlx::query_scalar("SELECT count(*) FROM decisions_default")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(in_default, 1);
    assert_eq!(pg_counts(&pool).await, (2, 0));
}
