//! The decision log: every decision with its propensities, every reward and
//! activation, written to PostgreSQL (production) or SQLite (embedded)
//! off the request path.
//!
//! [`DecisionLog::record`] never blocks and never fails: records go to a
//! bounded in-memory queue that a writer task flushes in batches (by size or
//! time, multi-row inserts). When the database is unreachable, batches are
//! appended to a spool file in the data dir and replayed in order when it
//! returns; rows are keyed so a replay never duplicates them. If the queue is
//! full, the record is spooled directly. [`DecisionLog::shutdown`] drains the
//! queue and flushes before returning (SIGTERM path).

//!
//! # Storage
//! - PostgreSQL (`postgres://…`): tables `decisions` and `rewards`,
//!   range-partitioned by `decided_at` / `received_at` with a default
//!   partition; the writer creates monthly partitions (the current month and
//!   the next two) when it connects and then daily. Timestamps are stored
//!   with microsecond precision.
//! - SQLite (`sqlite://path.db`): the same columns in plain tables, JSON as
//!   TEXT, timestamps as RFC 3339 TEXT (UTC), WAL mode; the file is created
//!   if missing.
//!
//! Migrations are embedded from `migrations/postgres` and
//! `migrations/sqlite`; [`migrate`] applies them (`nudge migrate`), and
//! [`DecisionLog::start`] does when [`LogSettings::migrate`] is set.
//!
//! # Delivery
//! Writes are idempotent (inserts skip existing keys; an activation only
//! fills `activated_at` if it is unset), so a replayed batch never
//! duplicates rows. Within a batch, decisions are written before
//! activations, and activations before rewards. An activation whose decision
//! is not in the database yet (it may still be queued or spooled, e.g. after
//! a queue-full burst, or on another replica) is retried for ten minutes,
//! kept across a shutdown in the spool, and then rejected. A batch the
//! database refuses for its data (not its availability) is retried record by
//! record, and the records refused alone are moved to
//! `data_dir/spool/rejected.jsonl` and logged.

pub mod arms;
mod db;
mod postgres;
mod spool;
mod sqlite;
#[cfg(test)]
mod tests;
mod writer;

pub(crate) use spool::{lock_dir, write_atomically};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info};

/// JSON kept as its text: serialised once on the request path, written as-is
/// to JSON columns, and embedded verbatim in spool lines, so the log never
/// builds a `serde_json::Value` tree per row. Two texts are equal when they
/// denote the same JSON value (a database may normalise the text).
#[derive(Debug, Clone)]
pub struct JsonText(String);

impl JsonText {
    /// Serialises `value` (non-finite floats become `null`, as JSON has none).
    pub fn of<T: Serialize + ?Sized>(value: &T) -> JsonText {
        JsonText(serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned()))
    }

    /// Keeps JSON text as it came (a request's own bytes: nothing to
    /// serialise again), unless it spans lines: a spool record is one line,
    /// so such text is refused and the caller serialises its parsed value.
    pub fn verbatim(raw: Box<serde_json::value::RawValue>) -> Option<JsonText> {
        let text = Box::<str>::from(raw);
        memchr::memchr2(b'\n', b'\r', text.as_bytes())
            .is_none()
            .then(|| JsonText(text.into()))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses the text (for comparisons and tests; never on the hot path).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::from_str(&self.0).unwrap_or(serde_json::Value::Null)
    }
}

impl From<serde_json::Value> for JsonText {
    fn from(v: serde_json::Value) -> Self {
        JsonText(v.to_string())
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0 || self.to_value() == other.to_value()
    }
}

impl Serialize for JsonText {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw: &serde_json::value::RawValue =
            serde_json::from_str(&self.0).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

/// Read back (spool replay only) through a `Value`: `LogRecord` is an
/// internally tagged enum, which serde buffers, and a raw value cannot be
/// read from a buffer.
impl<'de> Deserialize<'de> for JsonText {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(JsonText::from(serde_json::Value::deserialize(d)?))
    }
}

/// One decision, everything an analyst needs for off-policy evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionRow {
    /// Unique per decision (caller-given or generated).
    pub event_id: String,
    /// Policy id.
    pub policy: String,
    /// The policy definition's `version`.
    pub policy_version: i32,
    /// The model statistics' version the decision was made with.
    pub model_version: i64,
    /// When the decision was made.
    pub decided_at: DateTime<Utc>,
    /// The raw request context, as sent.
    pub context: JsonText,
    /// Shared mode: the candidate actions with their features, as sent
    /// (`[{"id", "features"}]`); `None` in disjoint mode.
    pub actions: Option<JsonText>,
    /// Every candidate in request order with its probability of being
    /// chosen: `[{"id", "probability"}]` (for a slate's items, as in the
    /// answer's `ranking` and in `slate`: at its position given the
    /// positions above; for the others, first); an arm the caller or a guardrail
    /// excluded has probability 0 and `"excluded_by"` (`excluded`, `cap`,
    /// `gap`, `quiet_hours`, `budget`, `recovery`, `unavailable`), so the
    /// eligible set is the entries without it.
    pub candidates: JsonText,
    /// The chosen action's id.
    pub action: String,
    /// Its propensity.
    pub probability: f64,
    /// For slates (k > 1): `[{"id", "probability"}]` in rank order, each
    /// probability conditional on the positions before it; `None` for k = 1.
    pub slate: Option<JsonText>,
    /// Made with `defer`: only learned from once activated.
    pub deferred: bool,
    /// Made while a store was unreachable (last known model).
    pub degraded: bool,
    /// For policies with guardrails: `{"user", "timezone", "forced",
    /// "send_at"}` (`forced`: only the fallback was eligible, taken with
    /// probability 1; `send_at`: the delivery time, RFC 3339 UTC).
    #[serde(default)]
    pub guardrails: Option<JsonText>,
    /// For policies with shadow challengers (k = 1): each challenger's
    /// distribution over the same eligible candidates,
    /// `{"<challenger>": {"<action>": probability}}`, so any of them can be
    /// evaluated exactly against the logged propensities.
    #[serde(default)]
    pub challengers: Option<JsonText>,
}

/// One reward (explicit, or the policy's default when the window closed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RewardRow {
    /// Unique per reward record (dedupes spool replays). Serialized as the
    /// hyphenated string.
    #[serde(with = "uuid_text")]
    pub reward_id: uuid::Uuid,
    /// The decision it rewards.
    pub event_id: String,
    /// Policy id.
    pub policy: String,
    /// The action rewarded (the chosen one, or a slate item).
    pub action: String,
    /// The numeric reward learned (after the reward function).
    pub reward: f64,
    /// Named signals as sent, if the reward came as signals.
    pub signals: Option<JsonText>,
    /// True when the window closed without a reward and the policy's
    /// default was applied.
    pub is_default: bool,
    /// When it was received (or applied, for defaults).
    pub received_at: DateTime<Utc>,
}

/// A deferred decision was activated (the notification was delivered).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivationRow {
    /// The decision.
    pub event_id: String,
    /// Policy id.
    pub policy: String,
    /// When.
    pub activated_at: DateTime<Utc>,
}

/// Anything the log stores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LogRecord {
    /// A decision.
    Decision(DecisionRow),
    /// A reward.
    Reward(RewardRow),
    /// An activation.
    Activation(ActivationRow),
}

/// How to run the decision log.
#[derive(Clone)]
pub struct LogSettings {
    /// `postgres://user:password@host:port/database` (or `postgresql://`), or
    /// `sqlite://path.db` (relative to the working directory; the file and
    /// its parent directory are created if missing, and it runs in WAL
    /// mode).
    pub database_url: String,
    /// The spool lives in `data_dir/spool/` (created if missing). One log at
    /// a time may use it: it is locked while a log runs.
    pub data_dir: PathBuf,
    /// Flush when this many records are queued (at least 1).
    pub batch_size: usize,
    /// … or when this long has passed since the last flush (at least 1 ms).
    pub flush_interval: Duration,
    /// Capacity of the bounded in-memory queue (at least 1); records that
    /// find it full are appended to the spool directly.
    pub queue_capacity: usize,
    /// Apply the embedded migrations when connecting.
    pub migrate: bool,
}

impl LogSettings {
    /// Settings with the defaults: batches of up to 5000, flushed at least every
    /// 200 ms, a queue of 10 000 records, migrations applied.
    pub fn new(database_url: impl Into<String>, data_dir: impl Into<PathBuf>) -> LogSettings {
        LogSettings {
            database_url: database_url.into(),
            data_dir: data_dir.into(),
            batch_size: 5000,
            flush_interval: Duration::from_millis(200),
            queue_capacity: 10_000,
            migrate: true,
        }
    }
}

impl fmt::Debug for LogSettings {
    /// Shows the URL without its password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogSettings")
            .field("database_url", &redact_url(&self.database_url))
            .field("data_dir", &self.data_dir)
            .field("batch_size", &self.batch_size)
            .field("flush_interval", &self.flush_interval)
            .field("queue_capacity", &self.queue_capacity)
            .field("migrate", &self.migrate)
            .finish()
    }
}

/// The URL with any password replaced by `***`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***{}", &rest[at..])
        }
        None => url.to_owned(),
    }
}

/// Why the log could not start, or migrations could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The URL is neither `postgres://`/`postgresql://` nor `sqlite:`.
    #[error("unsupported database URL scheme {scheme:?} (expected postgres:// or sqlite://)")]
    UnsupportedScheme {
        /// The scheme found (before the first `:`).
        scheme: String,
    },
    /// The URL could not be parsed by the engine's driver.
    #[error("malformed database URL: {0}")]
    InvalidUrl(#[source] sqlx::Error),
    /// `data_dir/spool` cannot be created, written, or is locked by another
    /// running log.
    #[error("unusable data dir {}: {source}", path.display())]
    DataDir {
        /// The spool directory.
        path: PathBuf,
        /// What failed.
        #[source]
        source: std::io::Error,
    },
    /// Connecting to the database failed ([`migrate`] only).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the migrations failed ([`migrate`] only).
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Applies the migrations for this URL's engine (used by `nudge migrate`);
/// for PostgreSQL also creates the monthly partitions for the current month
/// and the next two (a partition that cannot be created is a warning).
/// Idempotent. Fails if the database cannot be reached or a migration fails.
pub async fn migrate(database_url: &str) -> Result<(), LogError> {
    let db = db::Db::from_url(database_url)?;
    let result = async {
        db.ping().await?;
        db.migrate().await?;
        db.ensure_partitions(Utc::now().date_naive()).await;
        Ok(())
    }
    .await;
    db.close().await;
    if result.is_ok() {
        info!(database = %db.target(), "decision log: migrations applied");
    }
    result
}

/// The decision log: a handle to the queue and the writer task. Cheap to
/// clone; every clone feeds the same writer.
#[derive(Clone)]
pub struct DecisionLog {
    inner: Arc<Inner>,
}

struct Inner {
    tx: mpsc::Sender<LogRecord>,
    shared: Arc<writer::Shared>,
    stop: watch::Sender<bool>,
    task: tokio::sync::Mutex<Option<JoinHandle<()>>>,
}

impl DecisionLog {
    /// Starts the writer task (call within a Tokio runtime).
    ///
    /// Never fails because the database is down: it tries once (for at most
    /// 5 s) to connect and migrate before returning; if the database is
    /// unreachable the writer spools and keeps retrying (connect,
    /// migrate if [`LogSettings::migrate`], replay) every second in the
    /// background. A spool left by a previous run is replayed once the
    /// database is reachable. Errors only for a malformed or unsupported URL
    /// ([`LogError::UnsupportedScheme`], [`LogError::InvalidUrl`]) or an
    /// unusable data dir ([`LogError::DataDir`], including one whose spool
    /// another running log holds).
    pub async fn start(settings: &LogSettings) -> Result<DecisionLog, LogError> {
        let db = db::Db::from_url(&settings.database_url)?;
        let dir = settings.data_dir.join("spool");
        let shared = Arc::new(
            writer::Shared::new(&dir).map_err(|source| LogError::DataDir { path: dir, source })?,
        );
        let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let (stop, stop_rx) = watch::channel(false);
        info!(
            database = %db.target(),
            spool_bytes = shared.spool_bytes.load(Ordering::Relaxed),
            "decision log: starting"
        );
        let mut writer = writer::Writer::new(
            shared.clone(),
            db,
            writer::WriterConfig {
                batch_size: settings.batch_size.max(1),
                flush_interval: settings.flush_interval.max(Duration::from_millis(1)),
                migrate: settings.migrate,
            },
        );
        // One attempt before taking traffic, so a reachable database is
        // migrated and healthy from the first request; an unreachable one
        // only delays the start by the connect timeout, then spools.
        let _ = tokio::time::timeout(Duration::from_secs(5), writer.connect()).await;
        let task = tokio::spawn(writer.run(rx, stop_rx));
        Ok(DecisionLog {
            inner: Arc::new(Inner {
                tx,
                shared,
                stop,
                task: tokio::sync::Mutex::new(Some(task)),
            }),
        })
    }

    /// Records a decision, reward or activation. Never blocks on the
    /// database, never fails: the record joins the bounded queue, or, if the
    /// queue is full (or the log was shut down), is appended to the spool
    /// file directly (a short synchronous file append; it is replayed later).
    ///
    /// Ordering: records that go through the queue are written in the order
    /// they were recorded. A record spooled because the queue was full is
    /// written after the records queued before it may be; the writes being
    /// idempotent and keyed, only an activation can then precede its
    /// decision, and it is retried until the decision is there.
    pub fn record(&self, rec: LogRecord) {
        match self.inner.tx.try_send(rec) {
            Ok(()) => {}
            Err(TrySendError::Full(rec)) => {
                self.inner.shared.spool_direct(rec, "queue full", false)
            }
            Err(TrySendError::Closed(rec)) => {
                self.inner.shared.spool_direct(rec, "log shut down", true)
            }
        }
    }

    /// Records queued or buffered by the writer, not yet flushed.
    pub fn queue_depth(&self) -> usize {
        let queued = self.inner.tx.max_capacity() - self.inner.tx.capacity();
        queued + self.inner.shared.buffered.load(Ordering::Relaxed)
    }

    /// Bytes in the spool not yet written to the database (0 when the spool
    /// is empty).
    pub fn spool_bytes(&self) -> u64 {
        self.inner.shared.spool_bytes.load(Ordering::Relaxed)
    }

    /// True while the last write or ping to the database succeeded (false
    /// until the first one does).
    pub fn db_healthy(&self) -> bool {
        self.inner.shared.healthy.load(Ordering::Relaxed)
    }

    /// Drains the queue and flushes everything (to the database, or to the
    /// spool if it is down), tries one spool replay (for at most ten
    /// seconds; the rest waits for the next start), and stops the writer.
    /// Idempotent: later and concurrent calls return once it has stopped.
    /// Records recorded afterwards go to the spool.
    pub async fn shutdown(&self) {
        let mut task = self.inner.task.lock().await;
        if let Some(handle) = task.take() {
            self.inner.stop.send_replace(true);
            if let Err(error) = handle.await {
                error!(%error, "decision log: the writer task failed");
            }
        }
    }

    /// Rows durably written to the database so far by this log: decisions
    /// and rewards inserted (a replayed duplicate is not counted again) plus
    /// activations applied.
    pub fn written(&self) -> u64 {
        self.inner.shared.written.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for DecisionLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DecisionLog")
            .field("queue_depth", &self.queue_depth())
            .field("spool_bytes", &self.spool_bytes())
            .field("db_healthy", &self.db_healthy())
            .field("written", &self.written())
            .finish()
    }
}

/// Serde for a UUID as its hyphenated string (what the `uuid` crate's own
/// `serde` feature does for human-readable formats; that feature is not
/// enabled in this workspace).
mod uuid_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(id: &uuid::Uuid, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&id.hyphenated())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<uuid::Uuid, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        uuid::Uuid::parse_str(&text).map_err(D::Error::custom)
    }
}
