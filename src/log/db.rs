//! The two engines behind one interface: connection options from the URL,
//! migrations, batched writes, and the classification of errors into
//! "the database is unreachable, spool and retry" versus "this data is bad".

use super::{ActivationRow, DecisionRow, LogError, LogRecord, RewardRow, postgres, sqlite};
use chrono::NaiveDate;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};
use std::str::FromStr;
use std::time::Duration;

/// How long one attempt to get a connection may take (connection refused is
/// retried by the pool until then).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// PostgreSQL aborts any statement of the log that runs longer (the writer
/// gives up on a batch after 30 s and retries it; the server must not go on
/// holding its locks). Longer than any batch insert, partition DDL or
/// migration of an ordinary deployment; a migration that needs more can
/// `SET LOCAL statement_timeout = 0`.
const PG_STATEMENT_TIMEOUT: &str = "60s";
/// How long SQLite waits on a lock held by another connection or process.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection pool to one of the supported engines. Connects lazily.
pub(super) struct Db {
    pool: Pool,
    /// Where it points, without credentials (for logs).
    target: String,
}

enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// One batch of records split by kind, in the order they are written.
#[derive(Default)]
pub(super) struct Batch<'a> {
    pub decisions: Vec<&'a DecisionRow>,
    /// Per decision, its candidates as stored: the compact form for a
    /// disjoint policy ([`super::arms`]), else `None` (stored as logged).
    pub compact: Vec<Option<super::arms::Compact>>,
    pub activations: Vec<&'a ActivationRow>,
    pub rewards: Vec<&'a RewardRow>,
}

impl<'a> Batch<'a> {
    /// Splits records by kind, keeping their relative order within a kind.
    pub fn of(records: &'a [LogRecord]) -> Self {
        let mut batch = Batch::default();
        for record in records {
            match record {
                LogRecord::Decision(d) => {
                    batch.decisions.push(d);
                    batch.compact.push(if d.actions.is_none() {
                        super::arms::compact(d.candidates.as_str())
                    } else {
                        None
                    });
                }
                LogRecord::Activation(a) => batch.activations.push(a),
                LogRecord::Reward(r) => batch.rewards.push(r),
            }
        }
        batch
    }

    /// The candidates text to store for decision `i`.
    pub fn candidates(&self, i: usize) -> &str {
        match &self.compact[i] {
            Some(c) => &c.candidates,
            None => self.decisions[i].candidates.as_str(),
        }
    }

    /// The distinct arm sets the batch's decisions refer to: `(id, arms)`.
    pub fn arm_sets(&self) -> Vec<(&str, &str)> {
        let mut sets: Vec<(&str, &str)> = self
            .compact
            .iter()
            .flatten()
            .map(|c| (c.set_id.as_str(), c.arms.as_str()))
            .collect();
        sets.sort_unstable();
        sets.dedup();
        sets
    }
}

/// What a committed batch changed.
#[derive(Debug, Default)]
pub(super) struct Applied {
    /// Decisions and rewards inserted (existing keys are skipped).
    pub inserted: u64,
    /// Activations that matched their decision.
    pub activated: u64,
    /// Activations whose decision is not (yet) in the database.
    pub unmatched: Vec<ActivationRow>,
}

impl Db {
    /// Parses the URL and builds a lazy pool; nothing is connected yet.
    pub fn from_url(url: &str) -> Result<Db, LogError> {
        let scheme = url.split_once(':').map_or("", |(scheme, _)| scheme);
        match scheme {
            "postgres" | "postgresql" => {
                let options = PgConnectOptions::from_str(url)
                    .map_err(LogError::InvalidUrl)?
                    .application_name("nudge-log")
                    .options([("statement_timeout", PG_STATEMENT_TIMEOUT)]);
                let target = format!(
                    "postgres {}:{}/{}",
                    options.get_host(),
                    options.get_port(),
                    options.get_database().unwrap_or("")
                );
                let pool = PgPoolOptions::new()
                    .max_connections(2)
                    .min_connections(0)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_lazy_with(options);
                Ok(Db {
                    pool: Pool::Postgres(pool),
                    target,
                })
            }
            "sqlite" => {
                let options = SqliteConnectOptions::from_str(url)
                    .map_err(LogError::InvalidUrl)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT);
                let file = options.get_filename();
                if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
                    // Best effort: if this fails, connecting fails and the
                    // writer spools and retries, reporting the error.
                    let _ = std::fs::create_dir_all(parent);
                }
                let target = format!("sqlite {}", file.display());
                let pool = SqlitePoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_lazy_with(options);
                Ok(Db {
                    pool: Pool::Sqlite(pool),
                    target,
                })
            }
            _ => Err(LogError::UnsupportedScheme {
                scheme: scheme.to_owned(),
            }),
        }
    }

    /// Engine, host and database (or file), without credentials.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// One round trip.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match &self.pool {
            Pool::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
            Pool::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
        }
    }

    /// Applies the embedded migrations of this engine.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        match &self.pool {
            Pool::Postgres(pool) => postgres::MIGRATOR.run(pool).await,
            Pool::Sqlite(pool) => sqlite::MIGRATOR.run(pool).await,
        }
    }

    /// PostgreSQL: creates the monthly partitions for the month of `today`
    /// and the next two (failures are warnings). SQLite: nothing to do.
    pub async fn ensure_partitions(&self, today: NaiveDate) {
        if let Pool::Postgres(pool) = &self.pool {
            postgres::ensure_partitions(pool, today).await;
        }
    }

    /// Whether this engine has partitions to maintain.
    pub fn is_partitioned(&self) -> bool {
        matches!(self.pool, Pool::Postgres(_))
    }

    /// Writes the records in one transaction (see the engine modules).
    pub async fn write(&self, records: &[LogRecord]) -> Result<Applied, sqlx::Error> {
        let batch = Batch::of(records);
        match &self.pool {
            Pool::Postgres(pool) => postgres::write(pool, &batch).await,
            Pool::Sqlite(pool) => sqlite::write(pool, &batch).await,
        }
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        match &self.pool {
            Pool::Postgres(pool) => pool.close().await,
            Pool::Sqlite(pool) => pool.close().await,
        }
    }
}

/// True when `error` means the database cannot take writes right now
/// (unreachable, missing, not migrated, out of space, locked, shutting
/// down…): the batch is spooled and retried later. False when the data
/// itself is at fault (constraint or data exception): retrying the same rows
/// would fail forever, so they are isolated and rejected.
pub(super) fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                sqlite_code_is_transient(code.parse().unwrap_or(0))
            } else {
                pg_code_is_transient(&code)
            }
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Configuration(_)
        | sqlx::Error::Migrate(_)
        | sqlx::Error::BeginFailed => true,
        _ => false,
    }
}

/// PostgreSQL SQLSTATE classes that describe the server or the schema, not
/// the row: connection exceptions (08), invalid authorization (28), unknown
/// database (3D), transaction rollback / deadlock (40), undefined table or
/// column and privileges (42), insufficient resources (53), object state and
/// locks (55), operator intervention / shutdown (57), system errors (58),
/// invalid transaction state (25) and internal errors (XX).
pub(super) fn pg_code_is_transient(code: &str) -> bool {
    matches!(
        code.get(..2),
        Some("08" | "25" | "28" | "3D" | "40" | "42" | "53" | "55" | "57" | "58" | "XX")
    )
}

/// SQLite result codes (primary code in the low byte) that describe the row:
/// too big (18), constraint (19), type mismatch (20), parameter range (25).
/// Everything else (busy, locked, I/O, full, read-only, no such table…)
/// describes the database.
pub(super) fn sqlite_code_is_transient(extended: i32) -> bool {
    !matches!(extended & 0xff, 18 | 19 | 20 | 25)
}
