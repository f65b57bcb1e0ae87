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
use crate::policy::{Aggregation, Followed, Learning, Policy};
use crate::store::{Cursor, RewardRules, Store, StoreError};
use arc_swap::ArcSwap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
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
    /// Rewards folded by this runtime (since it started or was reloaded):
    /// count, sum, sum of squares.
    folded: (u64, f64, f64),
    /// The shadow challengers' running estimates.
    shadow: Shadow,
}

/// Running sums for the off-policy value of each shadow challenger
/// against the live policy, over the learned entries that carry the
/// weights (slot 0 of a single-action decision, see [`crate::store::Slot::aux`]).
#[derive(Debug, Clone, Default)]
struct Shadow {
    /// Entries counted.
    n: u64,
    /// The live policy's rewards: Σr, Σr².
    live: (f64, f64),
    /// Per scorer (the greedy policy first, then each challenger), with
    /// `w = π(a) / p(a)`: Σw, Σw², Σwr, Σ(wr)².
    challengers: Vec<[f64; 4]>,
}

/// A mean with its normal 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Interval {
    /// The estimate.
    pub value: f64,
    /// `value ± 1.96 · se` (absent below two observations).
    pub ci95: Option<[f64; 2]>,
}

impl Interval {
    /// The mean of n values from their sum and sum of squares, with the
    /// normal interval from the sample variance.
    fn of(n: u64, sum: f64, sq: f64) -> Option<Interval> {
        if n == 0 {
            return None;
        }
        let mean = sum / n as f64;
        let ci95 = (n > 1).then(|| {
            let var = ((sq - sum * mean) / (n - 1) as f64).max(0.0);
            let half = 1.96 * (var / n as f64).sqrt();
            [mean - half, mean + half]
        });
        Some(Interval { value: mean, ci95 })
    }
}

/// One challenger's estimate against the live policy.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ChallengerEstimate {
    /// The challenger.
    pub id: String,
    /// Its algorithm.
    pub algorithm: &'static str,
    /// Entries the estimate is over.
    pub n: u64,
    /// IPW (Horvitz & Thompson 1952): mean of `w·r`, with its interval.
    pub ipw: Option<Interval>,
    /// Self-normalised IPW (Swaminathan & Joachims 2015): `Σwr / Σw`.
    pub snipw: Option<f64>,
    /// Effective sample size of the weights, `(Σw)² / Σw²` (Kish).
    pub ess: Option<f64>,
    /// Whether the declared promotion rule holds: at least `promote_after`
    /// entries and the IPW interval's lower bound above the live policy's
    /// upper bound (`false` without a rule).
    pub promotable: bool,
}

/// What the shadow estimates say (this replica's fold, since it loaded
/// the policy: replicas that loaded it together agree exactly).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ShadowReport {
    /// The live policy's on-policy mean reward over the same entries.
    pub live: Option<Interval>,
    /// Progressive validation (Blum, Kalai & Langford 1999): the value of
    /// the model's greedy choice at each decision (`θᵀx` argmax over the
    /// eligible set, before the decision's reward was learned), by IPW
    /// against the logged propensities. Above `live`, the model has learned
    /// something its exploration pays for; near it, it has not.
    pub greedy: ChallengerEstimate,
    /// Each challenger, in file order.
    pub challengers: Vec<ChallengerEstimate>,
}

/// Apprentice mode, on this replica: how often the policy's own draw was
/// the caller's choice.
#[derive(Debug, Default)]
pub struct ApprenticeStats {
    /// Decisions followed.
    pub decisions: AtomicU64,
    /// Of those, where the policy's own draw was the caller's choice.
    pub agreed: AtomicU64,
    /// Sum of the probabilities the policy gave the caller's choice, in
    /// units of 1e-9 (an integer, so concurrent decisions add exactly).
    pub probability_nanos: AtomicU64,
}

impl ApprenticeStats {
    /// Counts one followed decision.
    pub fn note(&self, f: Followed) {
        self.decisions.fetch_add(1, Ordering::Relaxed);
        if f.agreed {
            self.agreed.fetch_add(1, Ordering::Relaxed);
        }
        self.probability_nanos
            .fetch_add((f.probability * 1e9).round() as u64, Ordering::Relaxed);
    }
}

/// One policy, live.
pub struct PolicyRuntime {
    /// The validated policy.
    pub policy: Policy,
    /// Its reward rules, as the store needs them.
    pub rules: RewardRules,
    /// This replica's live aggregates of the policy (the live page).
    pub monitor: Arc<crate::monitor::PolicyMonitor>,
    model: ArcSwap<LinearModel>,
    /// `logging_only`: the model decisions are made with, fixed when the
    /// mode took effect (the first sync that reached the store).
    frozen: arc_swap::ArcSwapOption<LinearModel>,
    sync: Mutex<SyncState>,
    /// Apprentice mode's agreement counts (this replica).
    pub apprentice: ApprenticeStats,
    /// The shadow challengers, scoring with this policy's model.
    pub challengers: Vec<Policy>,
    /// The model's greedy policy (ridge `θᵀx` argmax, no exploration),
    /// scored on every single-action decision for progressive validation.
    pub greedy: Policy,
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
        let challengers: Vec<Policy> = spec.challengers.iter().cloned().map(Policy::new).collect();
        let greedy = {
            let mut g = spec.clone();
            g.id = format!("{}~greedy", spec.id);
            g.algorithm = crate::policy::Algorithm::EpsilonGreedy;
            g.params.epsilon = 0.0;
            g.challengers.clear();
            Policy::new(g)
        };
        let shadow = Shadow {
            challengers: vec![[0.0; 4]; 1 + challengers.len()],
            ..Shadow::default()
        };
        let monitor = crate::monitor::PolicyMonitor::new(match spec.mode {
            crate::policy::Mode::Disjoint => &spec.arms,
            crate::policy::Mode::Shared => &[],
        });
        PolicyRuntime {
            policy,
            rules,
            monitor: Arc::new(monitor),
            last_sync_ms: AtomicI64::new(0),
            model,
            frozen: arc_swap::ArcSwapOption::empty(),
            sync: Mutex::new(SyncState {
                epoch: None,
                cursor: Cursor::default(),
                unsaved: 0,
                last_snapshot: Instant::now(),
                folded: (0, 0.0, 0.0),
                shadow,
            }),
            apprentice: ApprenticeStats::default(),
            challengers,
            greedy,
        }
    }

    /// A runtime for a reloaded `policy` whose layout is `old`'s
    /// ([`crate::policy::PolicySpec::same_layout`]): it keeps `old`'s
    /// model and its place in the learned stream, so nothing learned is
    /// lost or folded twice.
    /// The live page's history carries over too (same arms).
    pub async fn carry(policy: Policy, retention: Duration, old: &PolicyRuntime) -> Self {
        let mut rt = PolicyRuntime::new(policy, retention);
        rt.monitor = old.monitor.clone();
        rt.last_sync_ms = AtomicI64::new(old.last_sync_ms.load(Ordering::Relaxed));
        {
            let from = old.sync.lock().await;
            let mut to = rt.sync.lock().await;
            to.epoch = from.epoch;
            to.cursor = from.cursor.clone();
            to.unsaved = from.unsaved;
            rt.model.store(old.model.load_full());
            if rt.policy.spec().learning == Learning::LoggingOnly && to.epoch.is_some() {
                // Staying in (or entering) logging_only keeps the model
                // decisions were made with, if there was one.
                let fixed = old
                    .frozen
                    .load_full()
                    .unwrap_or_else(|| old.model.load_full());
                rt.frozen.store(Some(fixed));
            }
        }
        rt
    }

    /// The policy id.
    pub fn id(&self) -> &str {
        self.policy.id()
    }

    /// The current local model (cheap: an `Arc` clone): what learning
    /// has reached.
    pub fn model(&self) -> Arc<LinearModel> {
        self.model.load_full()
    }

    /// The model decisions are made with: the current one, or in
    /// `logging_only` mode the one fixed when the mode took effect.
    pub fn decision_model(&self) -> Arc<LinearModel> {
        match self.policy.spec().learning {
            Learning::LoggingOnly => self
                .frozen
                .load_full()
                .unwrap_or_else(|| self.model.load_full()),
            _ => self.model.load_full(),
        }
    }

    /// The shadow challengers' estimates so far.
    pub async fn shadow(&self) -> ShadowReport {
        let s = self.sync.lock().await.shadow.clone();
        let live = Interval::of(s.n, s.live.0, s.live.1);
        let rule = self.policy.spec().promote_after;
        let mut estimates: Vec<ChallengerEstimate> = std::iter::once(&self.greedy)
            .chain(&self.challengers)
            .zip(&s.challengers)
            .map(|(c, m)| {
                let ipw = Interval::of(s.n, m[2], m[3]);
                let promotable = match (rule, ipw.and_then(|i| i.ci95), live.and_then(|l| l.ci95)) {
                    (Some(after), Some(c), Some(l)) => s.n >= after && c[0] > l[1],
                    _ => false,
                };
                ChallengerEstimate {
                    id: c.id().rsplit('~').next().unwrap_or_default().to_string(),
                    algorithm: c.spec().algorithm.name(),
                    n: s.n,
                    ipw,
                    snipw: (m[0] > 0.0).then(|| m[2] / m[0]),
                    ess: (m[1] > 0.0).then(|| m[0] * m[0] / m[1]),
                    promotable,
                }
            })
            .collect();
        // The greedy scorer is first; it is the model itself, never a
        // promotion candidate.
        let mut greedy = estimates.remove(0);
        greedy.promotable = false;
        ShadowReport {
            live,
            greedy,
            challengers: estimates,
        }
    }

    /// Rewards this runtime folded since it started (or was reloaded):
    /// their count and their mean with its interval (`None` without any).
    pub async fn folded(&self) -> (u64, Option<Interval>) {
        let (n, sum, sq) = self.sync.lock().await.folded;
        (n, Interval::of(n, sum, sq))
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
                    if st.epoch.is_some_and(|e| e != batch.epoch) {
                        // A reset: a logging_only policy fixes the reset
                        // model instead.
                        self.frozen.store(None);
                    }
                    st.cursor = snap.cursor;
                    st.epoch = Some(batch.epoch);
                    st.unsaved = 0;
                    self.load_snapshot(snap.blob.as_deref(), metrics)
                }
                None if batch.entries.is_empty() => {
                    self.freeze_once();
                    return Ok(applied);
                }
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
                st.folded.0 += 1;
                st.folded.1 += e.reward;
                st.folded.2 += e.reward * e.reward;
                let shadow = &mut st.shadow;
                if e.aux.len() == 1 + shadow.challengers.len() && e.aux[0] > 0.0 {
                    let r = e.reward;
                    shadow.n += 1;
                    shadow.live.0 += r;
                    shadow.live.1 += r * r;
                    for (c, s) in shadow.challengers.iter_mut().enumerate() {
                        let w = e.aux[1 + c] / e.aux[0];
                        s[0] += w;
                        s[1] += w * w;
                        s[2] += w * r;
                        s[3] += (w * r) * (w * r);
                    }
                }
                applied += 1;
            }
            self.model.store(Arc::new(model));
            if n < BATCH {
                self.freeze_once();
                return Ok(applied);
            }
        }
    }

    /// `logging_only`: fixes the decision model at the first sync that
    /// reached the store (before it, decisions use the prior, degraded).
    fn freeze_once(&self) {
        if self.policy.spec().learning == Learning::LoggingOnly && self.frozen.load().is_none() {
            self.frozen.store(Some(self.model.load_full()));
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
