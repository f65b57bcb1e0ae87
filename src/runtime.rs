//! A policy at run time: its spec, its reward rules and the replica's local
//! model, kept in step with the shared store.
//!
//! Decisions read the local model through an [`ArcSwap`] (no lock, no
//! store round trip). The learner folds the store's learned stream into a
//! copy of the model (copy-on-write: only touched arms are copied) and
//! publishes it; it also saves snapshots and closes reward windows.

use crate::log::{DecisionLog, LogRecord, RewardRow};
use crate::metrics::Metrics;
use crate::model::{LinearModel, codec};
use crate::policy::{Aggregation, Policy};
use crate::store::{Cursor, RewardRules, Store, StoreError};
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Where this replica stands in the policy's learned stream.
#[derive(Debug)]
struct SyncState {
    epoch: Option<u64>,
    cursor: Cursor,
    /// Entries folded since the last snapshot this replica saved or loaded.
    unsaved: u64,
    last_snapshot: Instant,
}

/// One policy, live.
pub struct PolicyRuntime {
    /// The validated policy.
    pub policy: Policy,
    /// Its reward rules, as the store needs them.
    pub rules: RewardRules,
    /// This replica's live aggregates of the policy (the live page).
    pub monitor: crate::monitor::PolicyMonitor,
    model: ArcSwap<LinearModel>,
    sync: Mutex<SyncState>,
    /// When a sync last reached the store (unix ms; 0: never).
    last_sync_ms: AtomicI64,
}

/// Why a sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl PolicyRuntime {
    /// A runtime with a fresh model; the first sync loads the shared state.
    pub fn new(policy: Policy, retention: Duration) -> Self {
        let spec = policy.spec();
        let rules = RewardRules {
            sum: spec.reward.aggregation == Aggregation::Sum,
            default_reward: spec.reward.default,
            window_ms: spec.reward.window.as_millis() as i64,
            retention_ms: retention.as_millis() as i64,
        };
        let model = ArcSwap::from_pointee(policy.new_model());
        let monitor = crate::monitor::PolicyMonitor::new(match spec.mode {
            crate::policy::Mode::Disjoint => &spec.arms,
            crate::policy::Mode::Shared => &[],
        });
        PolicyRuntime {
            policy,
            rules,
            monitor,
            last_sync_ms: AtomicI64::new(0),
            model,
            sync: Mutex::new(SyncState {
                epoch: None,
                cursor: Cursor::default(),
                unsaved: 0,
                last_snapshot: Instant::now(),
            }),
        }
    }

    /// The policy id.
    pub fn id(&self) -> &str {
        self.policy.id()
    }

    /// The current local model (cheap: an `Arc` clone).
    pub fn model(&self) -> Arc<LinearModel> {
        self.model.load_full()
    }

    /// When a sync of this replica last reached the store (unix ms), if one
    /// did.
    pub fn last_sync_ms(&self) -> Option<i64> {
        Some(self.last_sync_ms.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }

    /// Folds everything new in the store into the local model; returns how
    /// many entries were applied. Entries that do not fit the model (a
    /// policy file changed its features) are skipped and counted.
    pub async fn sync(&self, store: &Store, metrics: &Metrics) -> Result<usize, SyncError> {
        let synced = self.fold(store, metrics).await;
        if synced.is_ok() {
            self.last_sync_ms
                .store(crate::service::unix_ms(), Ordering::Relaxed);
        }
        synced
    }

    async fn fold(&self, store: &Store, metrics: &Metrics) -> Result<usize, SyncError> {
        const BATCH: usize = 5_000;
        let mut st = self.sync.lock().await;
        let mut applied = 0;
        loop {
            let batch = store.sync(self.id(), st.epoch, &st.cursor, BATCH).await?;
            let mut model = match batch.snapshot {
                Some(snap) => {
                    st.cursor = snap.cursor;
                    st.epoch = Some(batch.epoch);
                    st.unsaved = 0;
                    self.load_snapshot(snap.blob.as_deref(), metrics)
                }
                None if batch.entries.is_empty() => return Ok(applied),
                None => (*self.model.load_full()).clone(),
            };
            let n = batch.entries.len();
            for e in batch.entries {
                if let Err(err) = model.observe(e.arm as usize, &e.x, e.reward) {
                    tracing::warn!(policy = self.id(), event = e.event_id, %err, "learned entry skipped");
                    metrics
                        .skipped_entries
                        .with_label_values(&[self.id()])
                        .inc();
                }
                st.cursor.advance(usize::from(e.shard), e.id);
                st.unsaved += 1;
                applied += 1;
            }
            self.model.store(Arc::new(model));
            if n < BATCH {
                return Ok(applied);
            }
        }
    }

    fn load_snapshot(&self, blob: Option<&[u8]>, metrics: &Metrics) -> LinearModel {
        let params = &self.policy.spec().params;
        let Some(blob) = blob else {
            return self.policy.new_model();
        };
        let loaded = codec::decode(blob)
            .map_err(|e| e.to_string())
            .and_then(|state| {
                LinearModel::from_state(state, params.lambda, params.refactor_every)
                    .map_err(|e| e.to_string())
            })
            .and_then(|m| {
                let fresh = self.policy.new_model();
                if m.dim() == fresh.dim() && m.arms() == fresh.arms() {
                    Ok(m)
                } else {
                    Err(format!(
                        "snapshot has {} arms of dimension {}, the policy needs {} of {}",
                        m.arms(),
                        m.dim(),
                        fresh.arms(),
                        fresh.dim()
                    ))
                }
            });
        loaded.unwrap_or_else(|err| {
            // A snapshot that does not fit (the policy file changed shape,
            // or the blob is corrupt) must not take the policy down: start
            // from the prior and say so loudly.
            tracing::error!(policy = self.id(), %err, "snapshot unusable; starting from a fresh model");
            metrics.skipped_entries.with_label_values(&[self.id()]).inc();
            self.policy.new_model()
        })
    }

    /// Saves a snapshot of the local model if it has unsaved entries and
    /// `every` has passed since the last one (or `force`).
    pub async fn snapshot(
        &self,
        store: &Store,
        every: Duration,
        force: bool,
    ) -> Result<bool, StoreError> {
        let mut st = self.sync.lock().await;
        let Some(epoch) = st.epoch else {
            return Ok(false);
        };
        if st.unsaved == 0 || (!force && st.last_snapshot.elapsed() < every) {
            return Ok(false);
        }
        let blob = codec::encode(&self.model.load().state());
        let saved = store
            .save_snapshot(self.id(), epoch, &blob, &st.cursor)
            .await?;
        st.unsaved = 0;
        st.last_snapshot = Instant::now();
        Ok(saved)
    }

    /// Resets the shared model to the prior (admin).
    pub async fn reset(&self, store: &Store, metrics: &Metrics) -> Result<(), SyncError> {
        let blob = codec::encode(&self.policy.new_model().state());
        store.reset(self.id(), &blob).await?;
        self.sync(store, metrics).await?;
        Ok(())
    }

    /// Closes due reward windows and logs the rewards they learned.
    pub async fn sweep(
        &self,
        store: &Store,
        log: &DecisionLog,
        metrics: &Metrics,
    ) -> Result<usize, StoreError> {
        let now = chrono::Utc::now();
        let result = store
            .sweep(self.id(), &self.rules, now.timestamp_millis(), 1_000)
            .await?;
        for (event_id, action, reward, is_default) in &result.learned {
            if !is_default {
                // A window's sum: its parts were logged one by one as they
                // arrived; the log holds rewards, the sum is derived.
                continue;
            }
            metrics
                .default_rewards
                .with_label_values(&[self.id()])
                .inc();
            self.monitor.reward(
                crate::service::unix_ms(),
                self.policy.spec().arm_index(action),
                *reward,
                true,
            );
            log.record(LogRecord::Reward(RewardRow {
                reward_id: uuid::Uuid::now_v7(),
                event_id: event_id.clone(),
                policy: self.id().to_string(),
                action: action.clone(),
                reward: *reward,
                signals: None,
                is_default: true,
                received_at: now,
            }));
        }
        if !result.dropped.is_empty() {
            metrics
                .dropped_deferred
                .with_label_values(&[self.id()])
                .inc_by(result.dropped.len() as u64);
        }
        Ok(result.learned.len() + result.dropped.len())
    }
}
