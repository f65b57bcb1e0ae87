//! PostgreSQL: the production engine. Range-partitioned tables (see
//! `migrations/postgres`), monthly partitions created ahead of time, batched
//! multi-row inserts.

use super::db::{Applied, Batch};
use chrono::{Datelike, NaiveDate};
use sqlx::migrate::Migrator;
use sqlx::types::Json;
use sqlx::{PgPool, Postgres, QueryBuilder};
use tracing::{debug, info, warn};

/// The embedded PostgreSQL migrations.
pub(super) static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// PostgreSQL accepts at most 65 535 bind parameters per statement.
const MAX_BINDS: usize = 65_535;
/// Bound columns per inserted decision (`activated_at` starts NULL).
const DECISION_COLUMNS: usize = 13;
/// Bound columns per inserted reward.
const REWARD_COLUMNS: usize = 8;
/// Monthly partitions kept ahead: the current month and the next two.
pub(super) const MONTHS_AHEAD: u32 = 3;

/// Writes one batch in one transaction: decisions, then activations, then
/// rewards. Inserts skip rows whose key already exists, so replaying a batch
/// never duplicates; an activation only fills `activated_at` if unset.
pub(super) async fn write(pool: &PgPool, batch: &Batch<'_>) -> Result<Applied, sqlx::Error> {
    let mut applied = Applied::default();
    let mut tx = pool.begin().await?;
    for chunk in batch.decisions.chunks(MAX_BINDS / DECISION_COLUMNS) {
        let mut q = QueryBuilder::<Postgres>::new(
            "INSERT INTO decisions (event_id, policy, policy_version, model_version, \
             decided_at, context, actions, candidates, action, probability, slate, \
             deferred, degraded) ",
        );
        q.push_values(chunk, |mut row, d| {
            row.push_bind(&d.event_id)
                .push_bind(&d.policy)
                .push_bind(d.policy_version)
                .push_bind(d.model_version)
                .push_bind(d.decided_at)
                .push_bind(Json(&d.context))
                .push_bind(d.actions.as_ref().map(Json))
                .push_bind(Json(&d.candidates))
                .push_bind(&d.action)
                .push_bind(d.probability)
                .push_bind(d.slate.as_ref().map(Json))
                .push_bind(d.deferred)
                .push_bind(d.degraded);
        });
        q.push(" ON CONFLICT DO NOTHING");
        applied.inserted += q.build().execute(&mut *tx).await?.rows_affected();
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
    for chunk in batch.rewards.chunks(MAX_BINDS / REWARD_COLUMNS) {
        let mut q = QueryBuilder::<Postgres>::new(
            "INSERT INTO rewards (reward_id, event_id, policy, action, reward, signals, \
             is_default, received_at) ",
        );
        q.push_values(chunk, |mut row, r| {
            // sqlx's `uuid` feature is off: bind the text form and cast.
            row.push_bind(r.reward_id.hyphenated().to_string())
                .push_unseparated("::uuid")
                .push_bind(&r.event_id)
                .push_bind(&r.policy)
                .push_bind(&r.action)
                .push_bind(r.reward)
                .push_bind(r.signals.as_ref().map(Json))
                .push_bind(r.is_default)
                .push_bind(r.received_at);
        });
        q.push(" ON CONFLICT DO NOTHING");
        applied.inserted += q.build().execute(&mut *tx).await?.rows_affected();
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
