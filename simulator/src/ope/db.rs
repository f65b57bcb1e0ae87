//! Reads the service's decision log (PostgreSQL or SQLite, the tables of
//! `migrations/`): each decision joined with the sum of its rewards
//! (several rows for `sum` aggregation; one, possibly the default, else),
//! and whether one of them is the default (the window closed).
//!
//! A background thread runs the query on its own tokio runtime and streams
//! rows through a bounded channel (1024 records), so memory stays bounded
//! however large the table is. Queries are parameterised, never built from
//! strings.

use super::source::{Filter, LogRecord, Origin};
use crate::logfmt::CandidateProb;
use anyhow::Context;
use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use sqlx::Row;
use std::sync::mpsc::{Receiver, sync_channel};

/// PostgreSQL: JSON columns cast to text; the rewards of the chosen action
/// summed (a slate's other items have their own rewards: those come per
/// item, `{action: sum}`, for slates only).
const PG_QUERY: &str = "\
SELECT d.event_id, d.policy, d.policy_version, d.model_version, d.decided_at, \
       d.context::text AS context, \
       d.actions::text AS actions, d.candidates::text AS candidates, d.action, \
       d.probability, d.slate::text AS slate, r.reward, r.is_default, \
       CASE WHEN d.slate IS NULL THEN NULL ELSE \
         (SELECT json_object_agg(x.action, x.s)::text FROM \
            (SELECT action, SUM(reward) AS s FROM rewards r2 \
             WHERE r2.event_id = d.event_id AND ($1::text IS NULL OR r2.policy = $1) \
             GROUP BY action) x) END AS item_rewards \
FROM decisions d \
LEFT JOIN (SELECT event_id, action, SUM(reward) AS reward, \
                  MAX(CASE WHEN is_default THEN 1 ELSE 0 END) AS is_default FROM rewards \
           WHERE ($1::text IS NULL OR policy = $1) GROUP BY event_id, action) r \
       ON r.event_id = d.event_id AND r.action = d.action \
WHERE ($1::text IS NULL OR d.policy = $1) \
  AND ($2::timestamptz IS NULL OR d.decided_at >= $2) \
  AND ($3::timestamptz IS NULL OR d.decided_at < $3) \
ORDER BY d.decided_at, d.event_id";

/// SQLite: the same; timestamps are RFC 3339 text in UTC, which sorts and
/// compares chronologically.
const SQLITE_QUERY: &str = "\
SELECT d.event_id, d.policy, d.policy_version, d.model_version, d.decided_at, d.context, \
       d.actions, d.candidates, \
       d.action, d.probability, d.slate, r.reward, r.is_default, \
       CASE WHEN d.slate IS NULL THEN NULL ELSE \
         (SELECT json_group_object(x.action, x.s) FROM \
            (SELECT action, SUM(reward) AS s FROM rewards r2 \
             WHERE r2.event_id = d.event_id AND (?1 IS NULL OR r2.policy = ?1) \
             GROUP BY action) x) END AS item_rewards \
FROM decisions d \
LEFT JOIN (SELECT event_id, action, SUM(reward) AS reward, \
                  MAX(CASE WHEN is_default THEN 1 ELSE 0 END) AS is_default FROM rewards \
           WHERE (?1 IS NULL OR policy = ?1) GROUP BY event_id, action) r \
       ON r.event_id = d.event_id AND r.action = d.action \
WHERE (?1 IS NULL OR d.policy = ?1) \
  AND (?2 IS NULL OR d.decided_at >= ?2) \
  AND (?3 IS NULL OR d.decided_at < ?3) \
ORDER BY d.decided_at, d.event_id";

/// Every arm set (small: one per distinct arm list of a disjoint policy).
const ARM_SETS_QUERY: &str = "SELECT id, CAST(arms AS TEXT) FROM arm_sets";

/// Streams decisions from a database.
pub struct DbReader {
    rx: Receiver<anyhow::Result<LogRecord>>,
}

impl DbReader {
    /// Starts the query in a background thread. Connection errors surface
    /// as the first item.
    pub fn open(url: &str, filter: Filter) -> anyhow::Result<DbReader> {
        let (tx, rx) = sync_channel(1024);
        let url = url.to_string();
        std::thread::Builder::new()
            .name("ope-db-reader".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = tx.send(Err(anyhow::anyhow!("cannot start tokio: {e}")));
                        return;
                    }
                };
                let result = rt.block_on(async {
                    if url.starts_with("sqlite:") {
                        stream_sqlite(&url, &filter, &tx).await
                    } else {
                        stream_postgres(&url, &filter, &tx).await
                    }
                });
                if let Err(e) = result {
                    let _ = tx.send(Err(e));
                }
            })
            .context("cannot start the database reader thread")?;
        Ok(DbReader { rx })
    }
}

impl Iterator for DbReader {
    type Item = anyhow::Result<LogRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

type Tx = std::sync::mpsc::SyncSender<anyhow::Result<LogRecord>>;

/// Builds a record from the columns; `where_` names the row for errors.
#[allow(clippy::too_many_arguments)]
fn record(
    table: &str,
    event_id: String,
    policy: String,
    versions: (i32, i64),
    decided_at: DateTime<Utc>,
    context: String,
    actions: Option<String>,
    candidates: String,
    action: String,
    probability: f64,
    slate: Option<String>,
    reward: Option<f64>,
    is_default: Option<i32>,
    item_rewards: Option<String>,
    arm_sets: &ArmSets,
) -> anyhow::Result<LogRecord> {
    let origin = format!("{table} decisions row event_id={event_id}");
    let json = |field: &str, text: &str| -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(text)
            .map_err(|e| anyhow::anyhow!("{origin}: field `{field}`: invalid JSON: {e}"))
    };
    let context = json("context", &context)?;
    let slate: Option<Vec<CandidateProb>> = slate
        .map(|t| {
            serde_json::from_str(&t).map_err(|e| anyhow::anyhow!("{origin}: field `slate`: {e}"))
        })
        .transpose()?;
    let item_rewards: Option<std::collections::BTreeMap<String, f64>> = item_rewards
        .map(|t| {
            serde_json::from_str(&t)
                .map_err(|e| anyhow::anyhow!("{origin}: the rewards of its slate items: {e}"))
        })
        .transpose()?;
    let actions = actions.map(|a| json("actions", &a)).transpose()?;
    let candidates = if nudge::log::arms::is_compact(&candidates) {
        expand(&origin, &candidates, arm_sets)?
    } else {
        let mut de = serde_json::Deserializer::from_str(&candidates);
        serde_path_to_error::deserialize(&mut de).map_err(|e| {
            anyhow::anyhow!(
                "{origin}: field `candidates{}`: {}",
                path_suffix(&e),
                e.inner()
            )
        })?
    };
    Ok(LogRecord {
        event_id,
        origin: Origin::Row(origin),
        policy: Some(policy),
        versions: Some(versions),
        decided_at: Some(decided_at),
        action,
        pscore: probability,
        reward,
        reward_final: is_default.is_some_and(|d| d != 0),
        position: 0,
        context: Some(context),
        actions,
        candidates,
        features: Vec::new(),
        slate,
        item_rewards,
        rule: None,
    })
}

/// The arm sets of compact candidate lists: `arm_sets.id` → the ids.
type ArmSets = std::collections::HashMap<String, Vec<String>>;

/// The logged list a compact value stands for (see `nudge::log::arms`).
fn expand(origin: &str, text: &str, sets: &ArmSets) -> anyhow::Result<Vec<CandidateProb>> {
    let stored = nudge::log::arms::parse(text)
        .map_err(|e| anyhow::anyhow!("{origin}: field `candidates`: {e}"))?;
    let arms = sets.get(&stored.set).ok_or_else(|| {
        anyhow::anyhow!(
            "{origin}: field `candidates`: arm set {:?} is not in table arm_sets",
            stored.set
        )
    })?;
    let list = stored
        .expand(arms)
        .map_err(|e| anyhow::anyhow!("{origin}: field `candidates`: {e}"))?;
    Ok(list
        .into_iter()
        .map(|l| CandidateProb {
            id: l.id,
            probability: l.probability,
            excluded_by: l.excluded_by,
        })
        .collect())
}

/// The arm sets read from `arm_sets` (none for a log written before the
/// table existed: such a log has no compact lists either).
fn arm_sets_of(rows: Result<Vec<(String, String)>, sqlx::Error>) -> ArmSets {
    rows.unwrap_or_default()
        .into_iter()
        .filter_map(|(id, arms)| Some((id, serde_json::from_str(&arms).ok()?)))
        .collect()
}

/// `arm_sets` of a pool of either engine.
macro_rules! load_arm_sets {
    ($pool:expr) => {
        arm_sets_of(
            sqlx::query_as::<_, (String, String)>(ARM_SETS_QUERY)
                .fetch_all($pool)
                .await,
        )
    };
}

/// Reads `arm_sets` again if a row names a set not loaded yet: a set is
/// written in the transaction of its first decision, so it may be newer
/// than the first load.
macro_rules! refresh_arm_sets {
    ($row:expr, $sets:expr, $pool:expr) => {
        let text: &str = $row.try_get("candidates").unwrap_or("");
        if let Some(set) = nudge::log::arms::set_of(text)
            && !$sets.contains_key(&set)
        {
            $sets = load_arm_sets!($pool);
        }
    };
}

fn path_suffix<E>(e: &serde_path_to_error::Error<E>) -> String {
    let p = e.path().to_string();
    if p == "." { String::new() } else { p }
}

/// One decision row of either engine as a record. A macro, not a function:
/// the two engines' rows decode the same columns through different traits.
macro_rules! record_of_row {
    ($source:literal, $row:expr, $sets:expr) => {
        (|| -> anyhow::Result<LogRecord> {
            record(
                $source,
                $row.try_get("event_id")?,
                $row.try_get("policy")?,
                (
                    $row.try_get("policy_version")?,
                    $row.try_get("model_version")?,
                ),
                $row.try_get("decided_at")?,
                $row.try_get("context")?,
                $row.try_get("actions")?,
                $row.try_get("candidates")?,
                $row.try_get("action")?,
                $row.try_get("probability")?,
                $row.try_get("slate")?,
                $row.try_get("reward")?,
                $row.try_get("is_default")?,
                $row.try_get("item_rewards")?,
                $sets,
            )
        })()
    };
}

async fn stream_postgres(url: &str, filter: &Filter, tx: &Tx) -> anyhow::Result<()> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to {}", redact(url)))?;
    let mut sets = load_arm_sets!(&pool);
    let mut rows = sqlx::query(PG_QUERY)
        .bind(filter.policy_id.as_deref())
        .bind(filter.since)
        .bind(filter.until)
        .fetch(&pool);
    while let Some(row) = rows.try_next().await.context("reading the decisions")? {
        refresh_arm_sets!(row, sets, &pool);
        let rec = record_of_row!("postgres", row, &sets);
        if tx.send(rec).is_err() {
            break;
        }
    }
    Ok(())
}

async fn stream_sqlite(url: &str, filter: &Filter, tx: &Tx) -> anyhow::Result<()> {
    let opts: sqlx::sqlite::SqliteConnectOptions = url
        .parse()
        .with_context(|| format!("invalid SQLite URL {url}"))?;
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(opts.read_only(true))
        .await
        .with_context(|| format!("cannot open {url}"))?;
    let mut sets = load_arm_sets!(&pool);
    let mut rows = sqlx::query(SQLITE_QUERY)
        .bind(filter.policy_id.as_deref())
        .bind(filter.since)
        .bind(filter.until)
        .fetch(&pool);
    while let Some(row) = rows.try_next().await.context("reading the decisions")? {
        refresh_arm_sets!(row, sets, &pool);
        let rec = record_of_row!("sqlite", row, &sets);
        if tx.send(rec).is_err() {
            break;
        }
    }
    Ok(())
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
