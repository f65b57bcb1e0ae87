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
    deferred, degraded) \
    SELECT e, p, pv, mv, t, c::json, a::json, k::json, act, prob, s::json, d, g \
    FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::int8[], $5::timestamptz[], \
    $6::text[], $7::text[], $8::text[], $9::text[], $10::float8[], $11::text[], \
    $12::bool[], $13::bool[]) AS u(e, p, pv, mv, t, c, a, k, act, prob, s, d, g) \
    ON CONFLICT DO NOTHING";

const INSERT_REWARDS: &str = "INSERT INTO rewards (reward_id, event_id, policy, action, \
    reward, signals, is_default, received_at) \
    SELECT id::uuid, e, p, act, r, s::json, dflt, t \
    FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::text[], \
    $7::bool[], $8::timestamptz[]) AS u(id, e, p, act, r, s, dflt, t) \
    ON CONFLICT DO NOTHING";

/// Writes one batch in one transaction: decisions, then activations, then
/// rewards. Inserts skip rows whose key already exists, so replaying a batch
/// never duplicates; an activation only fills `activated_at` if unset.
pub(super) async fn write(pool: &PgPool, batch: &Batch<'_>) -> Result<Applied, sqlx::Error> {
    let mut applied = Applied::default();
    let mut tx = pool.begin().await?;
    for chunk in batch.decisions.chunks(CHUNK) {
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
            .bind(col(|d| d.candidates.as_str()))
            .bind(col(|d| &d.action))
            .bind(chunk.iter().map(|d| d.probability).collect::<Vec<f64>>())
            .bind(opt(|d| d.slate.as_ref().map(JsonText::as_str)))
            .bind(chunk.iter().map(|d| d.deferred).collect::<Vec<bool>>())
            .bind(chunk.iter().map(|d| d.degraded).collect::<Vec<bool>>())
            .execute(&mut *tx)
            .await?;
        applied.inserted += done.rows_affected();
    }
    for a in &batch.activations {
        let done = sqlx::query(
            "UPDATE decisions SET activated_at = COALESCE(activated_at, $2) WHERE event_id = $1",
        )
        .bind(&a.event_id)
        .bind(a.activated_at)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            applied.unmatched.push((*a).clone());
        } else {
            applied.activated += 1;
        }
    }
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
