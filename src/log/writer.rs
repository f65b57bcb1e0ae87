//! The writer task: drains the queue in batches, writes them to the
//! database or, while it is unavailable or the spool is non-empty, to the
//! spool; reconnects, migrates, maintains partitions and replays the spool in
//! the background.

use super::db::{self, Applied, Db};
use super::spool::{self, Spool};
use super::{ActivationRow, LogRecord};
use chrono::{NaiveDate, Utc};
use std::collections::{HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, MissedTickBehavior, interval, interval_at, timeout};
use tracing::{debug, error, info, warn};

/// How often an unavailable database is retried.
pub(super) const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// Longest a batch write may take before it counts as an outage.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a connection attempt (ping, migrations, partitions) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `shutdown` spends replaying the spool at most; the rest waits
/// for the next start.
const SHUTDOWN_REPLAY_BUDGET: Duration = Duration::from_secs(10);
/// How long an activation whose decision is not in the database is retried
/// (its decision may still be queued, spooled, or on another replica).
const PENDING_ACTIVATION_GRACE: Duration = Duration::from_secs(600);
/// At most this many such activations are kept in memory.
const MAX_PENDING_ACTIVATIONS: usize = 10_000;

/// State shared by the handles and the writer task.
pub(super) struct Shared {
    spool: Mutex<Spool>,
    /// Bytes in the spool not yet in the database.
    pub spool_bytes: Arc<AtomicU64>,
    /// The last write or ping succeeded.
    pub healthy: AtomicBool,
    /// Rows inserted or activated so far.
    pub written: AtomicU64,
    /// Records taken from the queue and not yet flushed.
    pub buffered: AtomicUsize,
    /// Records spooled directly by `record` (queue full or log stopped).
    overflowed: AtomicU64,
}

impl Shared {
    /// Opens the spool in `dir`.
    pub fn new(dir: &std::path::Path) -> std::io::Result<Shared> {
        let spool_bytes = Arc::new(AtomicU64::new(0));
        Ok(Shared {
            spool: Mutex::new(Spool::open(dir, spool_bytes.clone())?),
            spool_bytes,
            healthy: AtomicBool::new(false),
            written: AtomicU64::new(0),
            buffered: AtomicUsize::new(0),
            overflowed: AtomicU64::new(0),
        })
    }

    fn spool(&self) -> MutexGuard<'_, Spool> {
        // A panic while holding the lock cannot leave the spool file
        // inconsistent beyond a torn line, which replay tolerates.
        self.spool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends one record to the spool from `record`. Without `sync`, the
    /// writer fsyncs within a second. Logs, rather than returns, a failure.
    pub fn spool_direct(&self, record: LogRecord, reason: &'static str, sync: bool) {
        let n = self.overflowed.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(10_000) {
            warn!(
                reason,
                total = n + 1,
                "decision log: spooling records directly to disk"
            );
        }
        if let Err(error) = self.spool().append(std::slice::from_ref(&record), sync) {
            error!(%error, ?record, "decision log: record lost: the spool write failed");
        }
    }
}

/// The writer's configuration.
pub(super) struct WriterConfig {
    pub batch_size: usize,
    pub flush_interval: Duration,
    pub migrate: bool,
}

/// The writer task's state.
pub(super) struct Writer {
    shared: Arc<Shared>,
    db: Db,
    config: WriterConfig,
    migrated: bool,
    last_attempt: Option<Instant>,
    partitions_day: Option<NaiveDate>,
    /// Activations whose decision was not in the database, with when first
    /// seen.
    pending: VecDeque<(ActivationRow, Instant)>,
    /// Rows were inserted since the pending activations were last retried.
    inserted_since_retry: bool,
    /// The last availability problem reported (to log changes, not repeats).
    last_problem: Option<String>,
    /// Replay is paused until then after a spool I/O error.
    replay_paused_until: Option<Instant>,
    /// Records replayed from the current spool file.
    replayed: u64,
    rejected_dir: PathBuf,
}

impl Writer {
    pub fn new(shared: Arc<Shared>, db: Db, config: WriterConfig) -> Writer {
        let rejected_dir = shared.spool().dir().to_owned();
        Writer {
            shared,
            db,
            config,
            migrated: false,
            last_attempt: None,
            partitions_day: None,
            pending: VecDeque::new(),
            inserted_since_retry: false,
            last_problem: None,
            replay_paused_until: None,
            replayed: 0,
            rejected_dir,
        }
    }

    /// Runs until `stop` turns true (or every handle is gone), then drains
    /// and flushes everything.
    pub async fn run(mut self, mut rx: mpsc::Receiver<LogRecord>, mut stop: watch::Receiver<bool>) {
        let batch_size = self.config.batch_size;
        let mut buf = Vec::with_capacity(batch_size);
        let period = self.config.flush_interval;
        let mut flush_tick = interval_at(Instant::now() + period, period);
        flush_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Fires at once: connect (and migrate) right away.
        let mut maintain_tick = interval(RETRY_INTERVAL);
        maintain_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let replay = self.can_replay();
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        break;
                    }
                }
                // The queue is drained on the tick, not awaited: a task
                // waiting on the queue would be woken (across threads) by
                // every record, which cost the request path more than the
                // write itself. Full batches still go out at once.
                _ = flush_tick.tick() => {
                    let mut closed = false;
                    loop {
                        match rx.try_recv() {
                            Ok(record) => {
                                buf.push(record);
                                if buf.len() >= batch_size {
                                    self.flush(&mut buf).await;
                                }
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => {
                                closed = true;
                                break;
                            }
                        }
                    }
                    self.shared.buffered.store(buf.len(), Ordering::Relaxed);
                    self.flush(&mut buf).await;
                    if closed {
                        break; // every handle dropped
                    }
                }
                _ = maintain_tick.tick() => self.maintain().await,
                _ = std::future::ready(()), if replay => {
                    self.replay_step().await;
                }
            }
        }
        self.finish(rx, buf).await;
    }

    fn healthy(&self) -> bool {
        self.shared.healthy.load(Ordering::Relaxed)
    }

    fn retry_due(&self) -> bool {
        self.last_attempt
            .is_none_or(|at| at.elapsed() >= RETRY_INTERVAL)
    }

    fn can_replay(&self) -> bool {
        self.healthy()
            && self
                .replay_paused_until
                .is_none_or(|until| Instant::now() >= until)
            && !self.shared.spool().is_empty()
    }

    /// Writes the buffered records to the database, or appends them to the
    /// spool while the database is unavailable or the spool is non-empty
    /// (so that order is kept).
    async fn flush(&mut self, buf: &mut Vec<LogRecord>) {
        if buf.is_empty() {
            return;
        }
        let records = std::mem::replace(buf, Vec::with_capacity(self.config.batch_size));
        let spool_empty = self.shared.spool().is_empty();
        if spool_empty && !self.healthy() && self.retry_due() {
            self.connect().await;
        }
        let unwritten = if spool_empty && self.healthy() {
            match self.write(&records).await {
                Ok(()) => &records[..0],
                Err(from) => &records[from..],
            }
        } else {
            &records[..]
        };
        self.spool_batch(unwritten);
        self.shared.buffered.store(0, Ordering::Relaxed);
    }

    /// Appends a batch to the spool with an fsync.
    fn spool_batch(&mut self, records: &[LogRecord]) {
        if records.is_empty() {
            return;
        }
        match self.shared.spool().append(records, true) {
            Ok(()) => debug!(records = records.len(), "decision log: batch spooled"),
            Err(error) => error!(
                %error,
                lost = records.len(),
                "decision log: records lost: the database is unavailable and the spool write failed"
            ),
        }
    }

    /// One write attempt, bounded in time.
    async fn write_once(&self, records: &[LogRecord]) -> Result<Applied, sqlx::Error> {
        match timeout(WRITE_TIMEOUT, self.db.write(records)).await {
            Ok(result) => result,
            Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "decision log write timed out",
            ))),
        }
    }

    /// Writes records to the database. On an availability error returns
    /// the index of the first record not written (the caller spools the
    /// rest). A batch refused for its data is retried record by record, and
    /// the records refused alone go to `rejected.jsonl`.
    async fn write(&mut self, records: &[LogRecord]) -> Result<(), usize> {
        let error = match self.write_once(records).await {
            Ok(applied) => {
                self.applied(applied);
                return Ok(());
            }
            Err(error) if db::is_transient(&error) => {
                self.unavailable(format!("write failed: {error}"));
                return Err(0);
            }
            Err(error) => error,
        };
        warn!(
            %error,
            records = records.len(),
            "decision log: the database refused a batch; isolating the bad records"
        );
        for (i, record) in records.iter().enumerate() {
            match self.write_once(std::slice::from_ref(record)).await {
                Ok(applied) => self.applied(applied),
                Err(error) if db::is_transient(&error) => {
                    self.unavailable(format!("write failed: {error}"));
                    return Err(i);
                }
                Err(error) => self.reject(std::slice::from_ref(record), &error.to_string()),
            }
        }
        Ok(())
    }

    /// Accounts for a committed write.
    fn applied(&mut self, applied: Applied) {
        self.shared
            .written
            .fetch_add(applied.inserted + applied.activated, Ordering::Relaxed);
        self.available();
        self.inserted_since_retry |= applied.inserted > 0;
        let now = Instant::now();
        for activation in applied.unmatched {
            debug!(event_id = %activation.event_id, "decision log: activation before its decision; retrying later");
            self.pending.push_back((activation, now));
        }
        while self.pending.len() > MAX_PENDING_ACTIVATIONS {
            let (activation, _) = self.pending.pop_front().expect("non-empty");
            self.reject(
                &[LogRecord::Activation(activation)],
                "too many activations waiting for their decision",
            );
        }
    }

    /// Moves records to `rejected.jsonl`, logging them.
    fn reject(&self, records: &[LogRecord], reason: &str) {
        for record in records {
            error!(
                reason,
                ?record,
                "decision log: record rejected (moved to rejected.jsonl)"
            );
        }
        if let Err(error) = spool::append_rejected(&self.rejected_dir, records) {
            error!(%error, "decision log: could not write rejected.jsonl; the records above are lost");
        }
    }

    fn available(&mut self) {
        if !self.shared.healthy.swap(true, Ordering::Relaxed) {
            info!(database = %self.db.target(), "decision log: database available");
        }
        self.last_problem = None;
    }

    fn unavailable(&mut self, problem: String) {
        self.shared.healthy.store(false, Ordering::Relaxed);
        if self.last_problem.as_deref() != Some(problem.as_str()) {
            warn!(
                database = %self.db.target(),
                %problem,
                "decision log: database unavailable; spooling to disk and retrying every second"
            );
        } else {
            debug!(database = %self.db.target(), %problem, "decision log: database still unavailable");
        }
        self.last_problem = Some(problem);
    }

    /// Pings, migrates once (if configured), and creates partitions.
    pub async fn connect(&mut self) -> bool {
        self.last_attempt = Some(Instant::now());
        let migrate = self.config.migrate && !self.migrated;
        let db = &self.db;
        let attempt = async {
            db.ping()
                .await
                .map_err(|e| format!("connect failed: {e}"))?;
            if migrate {
                db.migrate()
                    .await
                    .map_err(|e| format!("migrations failed: {e}"))?;
            }
            Ok::<(), String>(())
        };
        let result = match timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(result) => result,
            Err(_) => Err("connect timed out".to_owned()),
        };
        match result {
            Ok(()) => {
                if migrate {
                    info!(database = %self.db.target(), "decision log: migrations applied");
                    self.migrated = true;
                }
                self.available();
                self.maintain_partitions().await;
                true
            }
            Err(problem) => {
                self.unavailable(problem);
                false
            }
        }
    }

    /// Creates partitions ahead, once a day.
    async fn maintain_partitions(&mut self) {
        let today = Utc::now().date_naive();
        if self.db.is_partitioned() && self.partitions_day != Some(today) {
            self.db.ensure_partitions(today).await;
            self.partitions_day = Some(today);
        }
    }

    /// Every second: fsync direct appends, reconnect if unavailable,
    /// maintain partitions, retry activations waiting for their decision.
    async fn maintain(&mut self) {
        if let Err(error) = self.shared.spool().sync_if_dirty() {
            error!(%error, "decision log: spool fsync failed");
        }
        if !self.healthy() {
            if self.retry_due() {
                self.connect().await;
            }
        } else {
            self.maintain_partitions().await;
        }
        self.retry_pending(false).await;
    }

    /// Retries the activations whose decision was missing, if rows were
    /// inserted since the last try (or `force`); those still unmatched after
    /// the grace period are rejected.
    async fn retry_pending(&mut self, force: bool) {
        if self.pending.is_empty() {
            return;
        }
        if !self.healthy() || !(force || self.inserted_since_retry) {
            self.expire_pending(&HashSet::new(), false);
            return;
        }
        self.inserted_since_retry = false;
        let records: Vec<LogRecord> = self
            .pending
            .iter()
            .map(|(a, _)| LogRecord::Activation(a.clone()))
            .collect();
        match self.write_once(&records).await {
            Ok(applied) => {
                self.shared
                    .written
                    .fetch_add(applied.activated, Ordering::Relaxed);
                self.available();
                let unmatched: HashSet<String> =
                    applied.unmatched.into_iter().map(|a| a.event_id).collect();
                self.expire_pending(&unmatched, true);
            }
            Err(error) if db::is_transient(&error) => {
                self.unavailable(format!("write failed: {error}"));
            }
            Err(error) => {
                let records: Vec<LogRecord> = self
                    .pending
                    .drain(..)
                    .map(|(a, _)| LogRecord::Activation(a))
                    .collect();
                self.reject(&records, &error.to_string());
            }
        }
    }

    /// Drops the pending activations that were just applied (with
    /// `applied`: those not in `unmatched`), and rejects those past the
    /// grace period.
    fn expire_pending(&mut self, unmatched: &HashSet<String>, applied: bool) {
        let mut expired = Vec::new();
        self.pending.retain(|(a, since)| {
            if applied && !unmatched.contains(&a.event_id) {
                false
            } else if since.elapsed() >= PENDING_ACTIVATION_GRACE {
                expired.push(LogRecord::Activation(a.clone()));
                false
            } else {
                true
            }
        });
        if !expired.is_empty() {
            self.reject(&expired, "no decision with this event_id in the database");
        }
    }

    /// Replays one batch from the spool. Returns whether it made progress.
    async fn replay_step(&mut self) -> bool {
        let begun = self.shared.spool().begin_replay();
        let (path, offset) = match begun {
            Ok(Some(next)) => next,
            Ok(None) => return false,
            Err(error) => return self.replay_io_error(error),
        };
        let chunk = match spool::read_chunk(&path, offset, self.config.batch_size).await {
            Ok(chunk) => chunk,
            Err(error) => return self.replay_io_error(error),
        };
        if chunk.records.is_empty() && chunk.eof {
            let finished = self.shared.spool().finish_replay();
            if let Err(error) = finished {
                return self.replay_io_error(error);
            }
            info!(records = self.replayed, "decision log: spool file replayed");
            self.replayed = 0;
            return true;
        }
        let (records, ends): (Vec<LogRecord>, Vec<u64>) = chunk.records.into_iter().unzip();
        match self.write(&records).await {
            Ok(()) => {
                self.replayed += records.len() as u64;
                self.shared.spool().replayed_to(chunk.end);
                true
            }
            Err(0) => false,
            Err(from) => {
                self.replayed += from as u64;
                self.shared.spool().replayed_to(ends[from - 1]);
                true
            }
        }
    }

    fn replay_io_error(&mut self, error: std::io::Error) -> bool {
        error!(%error, "decision log: spool replay failed; retrying in a second");
        self.replay_paused_until = Some(Instant::now() + RETRY_INTERVAL);
        false
    }

    /// Drains the queue, flushes, tries one spool replay, parks activations
    /// still waiting for their decision in the spool, and closes the pool.
    async fn finish(mut self, mut rx: mpsc::Receiver<LogRecord>, mut buf: Vec<LogRecord>) {
        rx.close();
        let batch_size = self.config.batch_size;
        loop {
            let room = batch_size.saturating_sub(buf.len()).max(1);
            if rx.recv_many(&mut buf, room).await == 0 {
                break;
            }
            if buf.len() >= batch_size {
                self.flush(&mut buf).await;
            }
        }
        self.flush(&mut buf).await;
        if !self.shared.spool().is_empty() {
            if !self.healthy() {
                self.connect().await;
            }
            let deadline = Instant::now() + SHUTDOWN_REPLAY_BUDGET;
            self.replay_paused_until = None;
            while self.healthy() && Instant::now() < deadline && self.replay_step().await {}
        }
        self.retry_pending(true).await;
        if !self.pending.is_empty() {
            let records: Vec<LogRecord> = self
                .pending
                .drain(..)
                .map(|(a, _)| LogRecord::Activation(a))
                .collect();
            info!(
                activations = records.len(),
                "decision log: spooling activations whose decision is not in the database yet"
            );
            self.spool_batch(&records);
        }
        if let Err(error) = self.shared.spool().sync_if_dirty() {
            error!(%error, "decision log: spool fsync failed");
        }
        self.db.close().await;
        info!(
            written = self.shared.written.load(Ordering::Relaxed),
            spool_bytes = self.shared.spool_bytes.load(Ordering::Relaxed),
            "decision log: stopped"
        );
    }
}
