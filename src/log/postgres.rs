//! PostgreSQL: the production engine. Range-partitioned tables (see
//! `migrations/postgres`), monthly partitions created ahead of time, batched
//! inserts of whole column arrays.

use super::db::{Applied, Batch};
use super::{DecisionRow, JsonText, RewardRow};
use chrono::{Datelike, NaiveDate};
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use tracing::{debug, info, warn};

/// The embedded PostgreSQL migrations.
pub(super) static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Rows per statement: arrays are bound whole, so this only bounds the size
/// of one message.
const CHUNK: usize = 10_000;
/// Monthly partitions kept ahead: the current month and the next two.
pub(super) const MONTHS_AHEAD: u32 = 3;

/// One statement for any number of decisions: each column is bound as one
/// array and `UNNEST` turns them into rows. The text never changes, so the
/// server parses and plans it once per connection (a multi-row `VALUES`
/// with thousands of binds would be re-planned for every batch size).
const INSERT_DECISIONS: &str = "INSERT INTO decisions (event_id, policy, policy_version, \
    model_version, decided_at, context, actions, candidates, action, probability, slate, \
    deferred, degraded, guardrails, challengers) \
    SELECT e, p, pv, mv, t, c::json, a::json, k::json, act, prob, s::json, d, g, gr::json, \
    ch::json \
    FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::int8[], $5::timestamptz[], \
    $6::text[], $7::text[], $8::text[], $9::text[], $10::float8[], $11::text[], \
    $12::bool[], $13::bool[], $14::text[], $15::text[]) \
    AS u(e, p, pv, mv, t, c, a, k, act, prob, s, d, g, gr, ch) \
    ON CONFLICT DO NOTHING";

const INSERT_REWARDS: &str = "INSERT INTO rewards (reward_id, event_id, policy, action, \
    reward, signals, is_default, received_at) \
    SELECT id::uuid, e, p, act, r, s::json, dflt, t \
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::text[], \
    $7::bool[], $8::timestamptz[]) AS u(id, e, p, act, r, s, dflt, t) \
    ON CONFLICT DO NOTHING";

const COPY_DECISIONS: &str = "COPY decisions (event_id, policy, policy_version, model_version, \
    decided_at, context, actions, candidates, action, probability, slate, deferred, degraded, \
    guardrails, challengers) FROM STDIN";

const COPY_REWARDS: &str = "COPY rewards (reward_id, event_id, policy, action, reward, signals, \
    is_default, received_at) FROM STDIN";

const INSERT_ARM_SETS: &str = "INSERT INTO arm_sets (id, arms) \
    SELECT id, arms::json FROM UNNEST($1::text[], $2::text[]) AS u(id, arms) \
    ON CONFLICT DO NOTHING";

/// Stores the arm sets the batch's compact candidates refer to, in its
/// transaction, before the decisions (see [`super::arms`]).
async fn insert_arm_sets(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    batch: &Batch<'_>,
) -> Result<(), sqlx::Error> {
    let sets = batch.arm_sets();
    if sets.is_empty() {
        return Ok(());
    }
    sqlx::query(INSERT_ARM_SETS)
        .bind(sets.iter().map(|s| s.0).collect::<Vec<&str>>())
        .bind(sets.iter().map(|s| s.1).collect::<Vec<&str>>())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// SQLSTATE `unique_violation`.
const UNIQUE_VIOLATION: &str = "23505";

/// Writes one batch in one transaction: decisions, then activations, then
/// rewards; an activation only fills `activated_at` if unset.
///
/// The usual batch holds only new rows, and goes in with `COPY`, the
/// cheapest way into PostgreSQL (no per-row conflict check). A batch that
/// repeats a row already stored (a spool replay, a retry of a commit whose
/// answer was lost) fails that `COPY` as a whole, and is then written again
/// with inserts that skip existing keys, so replaying never duplicates.
pub(super) async fn write(pool: &PgPool, batch: &Batch<'_>) -> Result<Applied, sqlx::Error> {
    match write_copy(pool, batch).await {
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(UNIQUE_VIOLATION) => {
            debug!("decision log: batch repeats stored rows; writing it idempotently");
            write_idempotent(pool, batch).await
        }
        other => other,
    }
}

async fn write_copy(pool: &PgPool, batch: &Batch<'_>) -> Result<Applied, sqlx::Error> {
    let mut applied = Applied::default();
    let mut tx = pool.begin().await?;
    insert_arm_sets(&mut tx, batch).await?;
    if !batch.decisions.is_empty() {
        let mut buf = String::with_capacity(batch.decisions.len() * 1024);
        for (i, d) in batch.decisions.iter().enumerate() {
            copy_row(&mut buf, |row| {
                row.text(&d.event_id);
                row.text(&d.policy);
                row.display(d.policy_version);
                row.display(d.model_version);
                row.time(d.decided_at);
                row.text(d.context.as_str());
                row.opt_text(d.actions.as_ref().map(JsonText::as_str));
                row.text(batch.candidates(i));
                row.text(&d.action);
                row.display(d.probability);
                row.opt_text(d.slate.as_ref().map(JsonText::as_str));
                row.bool(d.deferred);
                row.bool(d.degraded);
                row.opt_text(d.guardrails.as_ref().map(JsonText::as_str));
                row.opt_text(d.challengers.as_ref().map(JsonText::as_str));
            });
        }
        applied.inserted += copy_in(&mut tx, COPY_DECISIONS, buf).await?;
    }
    activate(&mut tx, batch, &mut applied).await?;
    if !batch.rewards.is_empty() {
        let mut buf = String::with_capacity(batch.rewards.len() * 256);
        for r in &batch.rewards {
            copy_row(&mut buf, |row| {
                row.display(r.reward_id.hyphenated());
                row.text(&r.event_id);
                row.text(&r.policy);
                row.text(&r.action);
                row.display(r.reward);
                row.opt_text(r.signals.as_ref().map(JsonText::as_str));
                row.bool(r.is_default);
                row.time(r.received_at);
            });
        }
        applied.inserted += copy_in(&mut tx, COPY_REWARDS, buf).await?;
    }
    tx.commit().await?;
    Ok(applied)
}

async fn copy_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    statement: &str,
    data: String,
) -> Result<u64, sqlx::Error> {
    let mut copy = tx.copy_in_raw(statement).await?;
    if let Err(e) = copy.send(data.into_bytes()).await {
        // Leave the connection usable; the send error is the one to report.
        let _ = copy.abort("send failed").await;
        return Err(e);
    }
    copy.finish().await
}

/// One line of `COPY … FROM STDIN` text format: fields separated by tabs,
/// `\N` for NULL, and backslash, newline, carriage return and tab escaped in
/// text (JSON text may hold raw tabs; everything else it escapes itself).
struct CopyRow<'a> {
    buf: &'a mut String,
    first: bool,
}

impl CopyRow<'_> {
    fn sep(&mut self) {
        if !std::mem::take(&mut self.first) {
            self.buf.push('\t');
        }
    }
    fn text(&mut self, s: &str) {
        self.sep();
        // Vectorised searches instead of a byte loop: JSON text rarely holds
        // any of these. The carriage return is a fourth byte `memchr3` cannot
        // take, so its next position is tracked on its own.
        let bytes = s.as_bytes();
        let mut done = 0;
        let mut next_cr = memchr::memchr(b'\r', bytes);
        loop {
            let other = memchr::memchr3(b'\\', b'\t', b'\n', &bytes[done..]).map(|i| done + i);
            let Some(i) = other.into_iter().chain(next_cr).min() else {
                break;
            };
            self.buf.push_str(&s[done..i]);
            self.buf.push_str(match bytes[i] {
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => {
                    next_cr = memchr::memchr(b'\r', &bytes[i + 1..]).map(|j| i + 1 + j);
                    "\\r"
                }
                _ => "\\t",
            });
            done = i + 1;
        }
        self.buf.push_str(&s[done..]);
    }
    fn opt_text(&mut self, s: Option<&str>) {
        match s {
            Some(s) => self.text(s),
            None => {
                self.sep();
                self.buf.push_str("\\N");
            }
        }
    }
    /// Numbers and UUIDs: their `Display` needs no escaping. `f64`'s is the
    /// shortest text that parses back to the same value, so probabilities
    /// and rewards are stored exactly.
    fn display(&mut self, v: impl std::fmt::Display) {
        use std::fmt::Write;
        self.sep();
        let _ = write!(self.buf, "{v}");
    }
    fn bool(&mut self, v: bool) {
        self.sep();
        self.buf.push(if v { 't' } else { 'f' });
    }
    fn time(&mut self, t: chrono::DateTime<chrono::Utc>) {
        self.sep();
        self.buf
            .push_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
    }
}

fn copy_row(buf: &mut String, fields: impl FnOnce(&mut CopyRow<'_>)) {
    fields(&mut CopyRow { buf, first: true });
    buf.push('\n');
}

/// Sets `activated_at` of each activated decision (unless already set), and
/// collects the activations whose decision is not stored (yet).
async fn activate(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    batch: &Batch<'_>,
    applied: &mut Applied,
) -> Result<(), sqlx::Error> {
    for a in &batch.activations {
        let done = sqlx::query(
            "UPDATE decisions SET activated_at = COALESCE(activated_at, $2) WHERE event_id = $1",
        )
        .bind(&a.event_id)
        .bind(a.activated_at)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() == 0 {
            applied.unmatched.push((*a).clone());
        } else {
            applied.activated += 1;
        }
    }
    Ok(())
}

/// [`write`] with inserts that skip rows whose key already exists.
async fn write_idempotent(pool: &PgPool, batch: &Batch<'_>) -> Result<Applied, sqlx::Error> {
    let mut applied = Applied::default();
    let mut tx = pool.begin().await?;
    insert_arm_sets(&mut tx, batch).await?;
    for (n, chunk) in batch.decisions.chunks(CHUNK).enumerate() {
        let col = |f: fn(&DecisionRow) -> &str| chunk.iter().map(|d| f(d)).collect::<Vec<&str>>();
        let opt =
            |f: fn(&DecisionRow) -> Option<&str>| chunk.iter().map(|d| f(d)).collect::<Vec<_>>();
        let done = sqlx::query(INSERT_DECISIONS)
            .bind(col(|d| &d.event_id))
            .bind(col(|d| &d.policy))
            .bind(chunk.iter().map(|d| d.policy_version).collect::<Vec<i32>>())
            .bind(chunk.iter().map(|d| d.model_version).collect::<Vec<i64>>())
            .bind(chunk.iter().map(|d| d.decided_at).collect::<Vec<_>>())
            .bind(col(|d| d.context.as_str()))
            .bind(opt(|d| d.actions.as_ref().map(JsonText::as_str)))
            .bind(
                (0..chunk.len())
                    .map(|i| batch.candidates(n * CHUNK + i))
                    .collect::<Vec<&str>>(),
            )
            .bind(col(|d| &d.action))
            .bind(chunk.iter().map(|d| d.probability).collect::<Vec<f64>>())
            .bind(opt(|d| d.slate.as_ref().map(JsonText::as_str)))
            .bind(chunk.iter().map(|d| d.deferred).collect::<Vec<bool>>())
            .bind(chunk.iter().map(|d| d.degraded).collect::<Vec<bool>>())
            .bind(opt(|d| d.guardrails.as_ref().map(JsonText::as_str)))
            .bind(opt(|d| d.challengers.as_ref().map(JsonText::as_str)))
            .execute(&mut *tx)
            .await?;
        applied.inserted += done.rows_affected();
    }
    activate(&mut tx, batch, &mut applied).await?;
    for chunk in batch.rewards.chunks(CHUNK) {
        let col = |f: fn(&RewardRow) -> &str| chunk.iter().map(|r| f(r)).collect::<Vec<&str>>();
        let done = sqlx::query(INSERT_REWARDS)
            // sqlx's `uuid` feature is off: bind the text form and cast.
            .bind(
                chunk
                    .iter()
                    .map(|r| r.reward_id.hyphenated().to_string())
                    .collect::<Vec<_>>(),
            )
            .bind(col(|r| &r.event_id))
            .bind(col(|r| &r.policy))
            .bind(col(|r| &r.action))
            .bind(chunk.iter().map(|r| r.reward).collect::<Vec<f64>>())
            .bind(
                chunk
                    .iter()
                    .map(|r| r.signals.as_ref().map(JsonText::as_str))
                    .collect::<Vec<_>>(),
            )
            .bind(chunk.iter().map(|r| r.is_default).collect::<Vec<bool>>())
            .bind(chunk.iter().map(|r| r.received_at).collect::<Vec<_>>())
            .execute(&mut *tx)
            .await?;
        applied.inserted += done.rows_affected();
    }
    tx.commit().await?;
    Ok(applied)
}

/// The first day of the month `months` after the month of `day`.
pub(super) fn month_start(day: NaiveDate, months: u32) -> NaiveDate {
    let index = day.year() * 12 + day.month0() as i32 + months as i32;
    NaiveDate::from_ymd_opt(index.div_euclid(12), index.rem_euclid(12) as u32 + 1, 1)
        .expect("the first of a month is a valid date")
}

/// The partition of `table` for the month starting on `start`, and its DDL.
pub(super) fn partition_ddl(table: &str, start: NaiveDate) -> (String, String) {
    let end = month_start(start, 1);
    let name = format!("{table}_y{:04}m{:02}", start.year(), start.month());
    let ddl = format!(
        "CREATE TABLE IF NOT EXISTS {name} PARTITION OF {table} \
         FOR VALUES FROM ('{start} 00:00:00+00') TO ('{end} 00:00:00+00')"
    );
    (name, ddl)
}

/// Creates the monthly partitions of both tables for the month of `today`
/// and the next two, skipping those that exist. Never fails: a partition that
/// cannot be created (typically because the default partition already holds
/// rows of its range) is a warning, and those rows simply stay in the
/// default partition.
pub(super) async fn ensure_partitions(pool: &PgPool, today: NaiveDate) {
    for table in ["decisions", "rewards"] {
        for ahead in 0..MONTHS_AHEAD {
            let (name, ddl) = partition_ddl(table, month_start(today, ahead));
            let exists: Result<bool, _> = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
                .bind(&name)
                .fetch_one(pool)
                .await;
            if let Ok(true) = exists {
                debug!(partition = %name, "decision log: partition exists");
                continue;
            }
            // DDL takes no bind parameters; the name and bounds are computed
            // from a date above, never from input.
            match sqlx::raw_sql(sqlx::AssertSqlSafe(ddl)).execute(pool).await {
                Ok(_) => info!(partition = %name, "decision log: partition created"),
                Err(error) => warn!(
                    partition = %name,
                    %error,
                    "decision log: could not create partition; its rows stay in the default partition"
                ),
            }
        }
    }
}
