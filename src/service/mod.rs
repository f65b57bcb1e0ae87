//! The domain layer: deciding (with guardrails), rewarding, activating.
//! Returns domain outcomes and knows no HTTP; the handlers in
//! [`crate::http`], the outbox replay ([`crate::recovery`]) and the
//! background tasks ([`crate::startup`]) all call it.

pub mod decide;
pub mod promote;
pub mod reload;
pub mod reward;
pub mod stored;

use crate::config::Settings;
use crate::log::DecisionLog;
use crate::metrics::Metrics;
use crate::store::Store;
use arc_swap::ArcSwap;
pub use reload::PolicySet;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};

/// Everything the service shares across workers and tasks.
pub struct Service {
    /// The policies served (swapped whole by a reload).
    pub policies: ArcSwap<PolicySet>,
    /// Serialises reloads on this replica.
    pub reloading: tokio::sync::Mutex<()>,
    /// Why this replica did not switch to the last published policy set.
    pub reload_mismatch: std::sync::Mutex<Option<String>>,
    /// The model store.
    pub store: Store,
    /// The decision log.
    pub log: DecisionLog,
    /// Metrics.
    pub metrics: Metrics,
    /// Settings (limits).
    pub settings: Settings,
    /// API keys, roles and rate limits (checked by the HTTP layer).
    pub auth: crate::http::auth::Auth,
    /// False after a store call failed, true again after one succeeded.
    pub store_healthy: AtomicBool,
    /// When a store call last failed (unix ms; 0: never).
    pub store_failed_at_ms: AtomicI64,
    /// Set by SIGTERM: the replica is about to stop (`/readyz` says so,
    /// responses close their connections).
    pub draining: AtomicBool,
    /// Store operations waiting for an unavailable store.
    pub outbox: crate::store::outbox::Outbox,
    /// The clock decisions and activations are made by.
    pub clock: crate::clock::Clock,
    /// The in-process store when it is the store (embedded mode): what is
    /// saved to `NUDGE_STATE_PATH`.
    pub embedded: Option<crate::store::MemoryStore>,
    /// This replica's name in the live page's figures (`NUDGE_REPLICA`, or
    /// `hostname/pid`): they are per replica.
    pub replica: String,
    /// When this replica started (unix ms).
    pub started_ms: i64,
}

impl Service {
    /// Every live policy's learning alerts now (see [`crate::alerts`]).
    pub fn alerts(&self) -> Vec<crate::alerts::Alert> {
        let now = unix_ms();
        self.policies
            .load()
            .live
            .values()
            .flat_map(|rt| {
                crate::alerts::evaluate(rt.id(), &rt.monitor, &rt.policy.spec().alerts, now)
            })
            .collect()
    }

    /// Records the outcome of a store call for `/readyz` and the metrics.
    pub fn store_result<T, E: std::fmt::Display>(&self, op: &str, r: &Result<T, E>) {
        match r {
            Ok(_) => self.store_healthy.store(true, Ordering::Relaxed),
            Err(e) => {
                self.store_healthy.store(false, Ordering::Relaxed);
                self.store_failed_at_ms.store(unix_ms(), Ordering::Relaxed);
                self.metrics.store_errors.with_label_values(&[op]).inc();
                tracing::warn!(op, error = %e, "store call failed");
            }
        }
    }
}

/// The system clock in unix ms (for health bookkeeping, not decisions: those
/// use [`Service::clock`]).
pub fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
