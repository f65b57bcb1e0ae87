//! SQLite: the embedded engine. Plain tables (see `migrations/sqlite`), JSON
//! as TEXT, WAL mode, batched multi-row inserts.

use super::db::{Applied, Batch};
use sqlx::migrate::Migrator;
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

/// The embedded SQLite migrations.
pub(super) static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// SQLite's default `SQLITE_MAX_VARIABLE_NUMBER` (since 3.32).
const MAX_BINDS: usize = 32_766;
/// Bound columns per inserted decision (`activated_at` starts NULL).
const DECISION_COLUMNS: usize = 15;
/// Bound columns per inserted reward.
const REWARD_COLUMNS: usize = 8;

/// JSON as stored in a TEXT column.
fn text(value: &super::JsonText) -> &str {
    value.as_str()
}

/// Writes one batch in one transaction: decisions, then activations, then
/// rewards. Inserts skip rows whose key already exists, so replaying a batch
/// never duplicates; an activation only fills `activated_at` if unset.
pub(super) async fn write(pool: &SqlitePool, batch: &Batch<'_>) -> Result<Applied, sqlx::Error> {
    let mut applied = Applied::default();
    let mut tx = pool.begin().await?;
    // The arm sets compact candidates refer to, before the decisions.
    for (id, arms) in batch.arm_sets() {
        sqlx::query("INSERT INTO arm_sets (id, arms) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
            .bind(id)
            .bind(arms)
            .execute(&mut *tx)
            .await?;
    }
    let per_chunk = MAX_BINDS / DECISION_COLUMNS;
    for (n, chunk) in batch.decisions.chunks(per_chunk).enumerate() {
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO decisions (event_id, policy, policy_version, model_version, \
             decided_at, context, actions, candidates, action, probability, slate, \
             deferred, degraded, guardrails, challengers) ",
        );
        q.push_values(chunk.iter().enumerate(), |mut row, (i, d)| {
            row.push_bind(&d.event_id)
                .push_bind(&d.policy)
                .push_bind(d.policy_version)
                .push_bind(d.model_version)
                .push_bind(d.decided_at)
                .push_bind(text(&d.context))
                .push_bind(d.actions.as_ref().map(text))
                .push_bind(batch.candidates(n * per_chunk + i))
                .push_bind(&d.action)
                .push_bind(d.probability)
                .push_bind(d.slate.as_ref().map(text))
                .push_bind(d.deferred)
                .push_bind(d.degraded)
                .push_bind(d.guardrails.as_ref().map(text))
                .push_bind(d.challengers.as_ref().map(text));
        });
        q.push(" ON CONFLICT DO NOTHING");
        applied.inserted += q.build().execute(&mut *tx).await?.rows_affected();
    }
    for a in &batch.activations {
        let done = sqlx::query(
            "UPDATE decisions SET activated_at = COALESCE(activated_at, ?2) WHERE event_id = ?1",
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
        let mut q = QueryBuilder::<Sqlite>::new(
            "INSERT INTO rewards (reward_id, event_id, policy, action, reward, signals, \
             is_default, received_at) ",
        );
        q.push_values(chunk, |mut row, r| {
            row.push_bind(r.reward_id.hyphenated().to_string())
                .push_bind(&r.event_id)
                .push_bind(&r.policy)
                .push_bind(&r.action)
                .push_bind(r.reward)
                .push_bind(r.signals.as_ref().map(text))
                .push_bind(r.is_default)
                .push_bind(r.received_at);
        });
        q.push(" ON CONFLICT DO NOTHING");
        applied.inserted += q.build().execute(&mut *tx).await?.rows_affected();
    }
    tx.commit().await?;
    Ok(applied)
}
