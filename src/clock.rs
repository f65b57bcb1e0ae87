//! The service's clock: the system's, or one a test sets, so rules over
//! time (quiet hours, DST changes, delivery slots, windows of caps) are
//! tested at exact instants instead of by sleeping.

use chrono::{DateTime, Utc};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Unset: the system clock.
const SYSTEM: i64 = i64::MIN;

/// A clock shared by every clone (a test sets it through any of them).
#[derive(Debug, Clone)]
pub struct Clock {
    fixed_ms: Arc<AtomicI64>,
}

impl Default for Clock {
    fn default() -> Self {
        Clock {
            fixed_ms: Arc::new(AtomicI64::new(SYSTEM)),
        }
    }
}

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self::default()
    }

    /// Now: the set instant, or the system's time.
    pub fn now(&self) -> DateTime<Utc> {
        match self.fixed_ms.load(Ordering::Relaxed) {
            SYSTEM => Utc::now(),
            ms => DateTime::from_timestamp_millis(ms).unwrap_or_else(Utc::now),
        }
    }

    /// Stops the clock at `at` (tests).
    pub fn set(&self, at: DateTime<Utc>) {
        self.fixed_ms
            .store(at.timestamp_millis(), Ordering::Relaxed);
    }

    /// Back to the system clock.
    pub fn reset(&self) {
        self.fixed_ms.store(SYSTEM, Ordering::Relaxed);
    }
}
