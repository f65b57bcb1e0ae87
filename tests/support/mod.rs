//! `spawn_app()`: every test gets its own service on port 0, its own data
//! dir, and either the embedded backends (in-process store, a fresh SQLite
//! file) or the production ones (a fresh PostgreSQL database, migrated, and
//! its own Redis key prefix on the machine's servers).
#![allow(dead_code)]

pub mod servers;

use nudge::config::Settings;
use nudge::startup::Application;
use serde_json::Value;
use sqlx::Row;
use std::time::{Duration, Instant};

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const REDIS: &str = "redis://127.0.0.1:6379";

/// Which stores a test app runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// In-process store, SQLite log.
    Embedded,
    /// Redis store, PostgreSQL log.
    Production,
}

/// Test policies: short windows so window behaviour is observable.
pub const POLICIES: &[(&str, &str)] = &[
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
[[features.context]]
name = "plan"
type = "categorical"
vocabulary = ["free", "pro"]
default = "free"
[reward]
signals = { opened = 1.0, unsubscribed = -1.0 }
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
length = 2
[reward]
window = "400ms"
default = -0.5
aggregation = "sum"
"#,
    ),
    (
        "ranker.toml",
        r#"
id = "ranker"
algorithm = "lin_ts"
mode = "shared"
[params]
v = 0.3
draws = 200
[[features.context]]
name = "u"
type = "vector"
length = 2
[[features.action]]
name = "i"
type = "vector"
length = 2
[[features.interactions]]
context = "u"
action = "i"
[reward]
window = "1h"
"#,
    ),
];

/// A running test service.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// A client for it.
    pub client: reqwest::Client,
    /// Which stores.
    pub backend: Backend,
    /// The settings it was built with.
    pub settings: Settings,
    /// The service's clock (set it to test rules over time).
    pub clock: nudge::clock::Clock,
    handle: actix_web::dev::ServerHandle,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    dir: tempfile::TempDir,
    database: Option<String>,
}

/// Settings for a fresh app of `backend`, files in `dir`.
pub async fn test_settings(backend: Backend, dir: &std::path::Path) -> (Settings, Option<String>) {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    for (name, text) in POLICIES {
        std::fs::write(policies.join(name), text).unwrap();
    }
    let mut s = Settings {
        bind: "127.0.0.1:0".into(),
        policies,
        data_dir: dir.join("data"),
        workers: 1,
        sync_ms: 10,
        sweep_ms: 50,
        log_flush_ms: 10,
        ..Settings::default()
    };
    let mut database = None;
    match backend {
        Backend::Embedded => {
            s.database_url = format!("sqlite://{}", dir.join("nudge.db").display());
        }
        Backend::Production => {
            let name = format!("nudge_api_{}", uuid::Uuid::now_v7().simple());
            let admin = sqlx::PgPool::connect(PG_ADMIN)
                .await
                .expect("postgres is running");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&admin)
                .await
                .unwrap();
            s.database_url = format!("postgres://postgres@127.0.0.1:5432/{name}");
            s.redis_url = Some(REDIS.into());
            s.redis_prefix = format!("nudge-test-{}", uuid::Uuid::now_v7().simple());
            database = Some(name);
        }
    }
    (s, database)
}

/// A fresh app on `backend` with the test policies.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Like [`spawn_app`], with settings adjusted by `tweak`.
pub async fn spawn_app_with(backend: Backend, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let (mut settings, database) = test_settings(backend, dir.path()).await;
    tweak(&mut settings);
    start(backend, settings, dir, database).await
}

/// Starts another instance sharing `other`'s stores (a second replica).
pub async fn spawn_replica(other: &TestApp) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = other.settings.clone();
    settings.data_dir = dir.path().join("data");
    start(other.backend, settings, dir, None).await
}

/// Starts another instance sharing `other`'s stores, with `settings`
/// (e.g. its own policy directory); its data dir is its own.
pub async fn spawn_replica_with(other: &TestApp, mut settings: Settings) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    settings.data_dir = dir.path().join("data");
    start(other.backend, settings, dir, None).await
}

async fn start(
    backend: Backend,
    settings: Settings,
    dir: tempfile::TempDir,
    database: Option<String>,
) -> TestApp {
    let app = Application::build(settings.clone())
        .await
        .expect("app builds");
    let address = format!("http://127.0.0.1:{}", app.port());
    let handle = app.handle();
    let clock = app.clock();
    let task = tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::new(),
        backend,
        settings,
        clock,
        handle,
        task: Some(task),
        dir,
        database,
    }
}

impl TestApp {
    /// POSTs JSON; returns the status and the JSON body (Null if none).
    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, serde_json::to_vec(body).unwrap()).await
    }

    /// POSTs raw bytes.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .client
            .post(format!("{}{path}", self.address))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request sent");
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// GETs a path.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = self
            .client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// GETs JSON.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, text) = self.get(path).await;
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// `(model_version, [(arm, count)])` of a policy.
    pub async fn model(&self, policy: &str) -> (u64, Vec<(String, u64)>) {
        let (status, v) = self.get_json(&format!("/v1/policies/{policy}")).await;
        assert_eq!(status, 200, "{v}");
        let arms = v["stats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["arm"].as_str().unwrap().to_string(),
                    a["count"].as_u64().unwrap(),
                )
            })
            .collect();
        (v["model_version"].as_u64().unwrap(), arms)
    }

    /// Rows of the decision log: runs `sql` (one column per row, JSON-able
    /// as text) on the app's database.
    pub async fn query_count(&self, sql: &str) -> i64 {
        let url = &self.settings.database_url;
        if url.starts_with("postgres") {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let n: i64 = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                .fetch_one(&pool)
                .await
                .unwrap()
                .get(0);
            pool.close().await;
            n
        } else {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            let n: i64 = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()))
                .fetch_one(&pool)
                .await
                .unwrap()
                .get(0);
            pool.close().await;
            n
        }
    }

    /// One decision row's `candidates`, `context` and `guardrails` JSON, as
    /// text.
    pub async fn decision_row(&self, event_id: &str) -> (String, String, Option<String>) {
        let (candidates, context, guardrails, arms) = self.stored_decision_row(event_id).await;
        // As logged: a compact list expanded with its arm set.
        let logged = nudge::log::arms::as_logged(&candidates, arms.as_deref()).unwrap();
        (logged.to_string(), context, guardrails)
    }

    /// A decision row as stored: candidates (compact for a disjoint
    /// policy), context, guardrails, and the arm set the candidates name.
    pub async fn stored_decision_row(
        &self,
        event_id: &str,
    ) -> (String, String, Option<String>, Option<String>) {
        let url = &self.settings.database_url;
        let sql = "SELECT candidates, context, guardrails, a.arms FROM decisions d \
            LEFT JOIN arm_sets a ON a.id = json_extract(d.candidates, '$.set') WHERE event_id = $1";
        if url.starts_with("postgres") {
            let pool = sqlx::PgPool::connect(url).await.unwrap();
            let sql = "SELECT candidates::text, context::text, guardrails::text, a.arms::text \
                FROM decisions d LEFT JOIN arm_sets a ON a.id = d.candidates->>'set' \
                WHERE event_id = $1";
            let row = sqlx::query(sql)
                .bind(event_id)
                .fetch_one(&pool)
                .await
                .unwrap();
            pool.close().await;
            (row.get(0), row.get(1), row.get(2), row.get(3))
        } else {
            let pool = sqlx::SqlitePool::connect(url).await.unwrap();
            let row = sqlx::query(sql)
                .bind(event_id)
                .fetch_one(&pool)
                .await
                .unwrap();
            pool.close().await;
            (row.get(0), row.get(1), row.get(2), row.get(3))
        }
    }

    /// Waits (up to 10 s) until `sql` counts `expected`; returns the last count.
    pub async fn wait_count(&self, sql: &str, expected: i64) -> i64 {
        let started = Instant::now();
        loop {
            let n = self.query_count(sql).await;
            if n == expected || started.elapsed() > Duration::from_secs(10) {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops gracefully (as SIGTERM would): drains and flushes.
    pub async fn stop(&mut self) {
        self.handle.stop(true).await;
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }

    /// The data dir.
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Best effort: leave the shared servers as we found them.
        if let Some(prefix) = self
            .settings
            .redis_url
            .as_ref()
            .map(|_| self.settings.redis_prefix.clone())
            && let Ok(client) = redis::Client::open(REDIS)
            && let Ok(mut conn) = client.get_connection()
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{prefix}:*"))
                .query(&mut conn)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut conn);
            }
        }
        if let Some(db) = self.database.take() {
            std::thread::spawn(move || {
                let _ = std::process::Command::new("psql")
                    .args(["-h", "127.0.0.1", "-U", "postgres", "-q", "-c"])
                    .arg(format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
                    .output();
            })
            .join()
            .ok();
        }
    }
}
