//! The outbox: store operations the model store could not take, kept in
//! order until it answers again.
//!
//! When a store call fails for availability (Redis is down, or the call
//! timed out), the service still answers: a decision is made from the last
//! model this replica knows, and a reward is acknowledged as `queued`. What
//! the store should have received — the decided event, the reward, the
//! activation — is appended here instead, and from then on every new
//! operation joins the queue behind it (so a reward is never applied before
//! the decision it rewards). A background task replays the queue, in order,
//! once the store answers a ping; when it is empty the service goes back to
//! calling the store directly.
//!
//! # Durability
//! Every operation is appended to `data_dir/outbox/ops.jsonl` (one JSON
//! line) before the request is acknowledged, and the file is fsynced by the
//! replayer at least every [`FSYNC_EVERY`]: a crashed or killed process
//! loses nothing (the kernel has the bytes); a power loss can lose what was
//! written in the last interval. At start the file is read back, and the
//! replay begins from its first line. Replaying an operation twice is
//! harmless: a decided event is stored only if absent, a reward carries its
//! id and the store applies an id once per event, and an activation of an
//! active event changes nothing. The file is truncated when the queue is
//! empty. Operations the store refuses for a reason other than availability
//! (the event is unknown, the window closed, the reward is invalid for its
//! policy) are appended to `data_dir/outbox/rejected.jsonl` and counted, so
//! nothing acknowledged disappears silently.
//!
//! # Parked operations
//! Replicas replay their outboxes independently, so a reward queued by one
//! replica can reach the store before the decision it rewards, queued by
//! another. A reward or activation the store answers `unknown_event` at
//! replay is therefore *parked* ([`Outbox::park`]: kept in
//! `data_dir/outbox/parked.json`, rewritten and fsynced on every change)
//! and retried until the decision arrives or `NUDGE_OUTBOX_PARK_MS` has
//! passed since it was first parked; only then is it rejected. Parked
//! operations do not keep the outbox active.
//!
//! The directory belongs to one process at a time (an advisory lock): each
//! replica needs its own data dir.

use super::EventRecord;
use crate::log::lock_dir;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use uuid::Uuid;

/// The queue file.
const OPS: &str = "ops.jsonl";
/// Operations the store refused, for a human to look at.
const REJECTED: &str = "rejected.jsonl";
/// Operations waiting for their event to reach the store.
const PARKED: &str = "parked.json";
/// Held while a process owns the directory.
const LOCK: &str = "outbox.lock";
/// The longest an appended operation stays without an fsync.
pub const FSYNC_EVERY: Duration = Duration::from_millis(100);

/// A store operation waiting for the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// A decision made while the store was unavailable.
    Record {
        /// The policy.
        policy: String,
        /// The event, as the store would have received it.
        event: EventRecord,
        /// When it was decided (unix ms): the window runs from then.
        now_ms: i64,
    },
    /// A reward acknowledged as `queued`.
    Reward {
        /// The reward's id: the store applies it once per event, and the
        /// log keys the reward row by it.
        reward_id: Uuid,
        /// The policy, if the caller named it (otherwise the store's index
        /// tells, at replay).
        policy: Option<String>,
        /// The event.
        event_id: String,
        /// The slate action rewarded (`None`: the chosen one).
        action: Option<String>,
        /// The reward as validated against the policy, when it was known at
        /// arrival; otherwise computed at replay from `raw` or `signals`.
        value: Option<f64>,
        /// The number sent, when `value` is not known yet.
        raw: Option<f64>,
        /// The signals sent, if any (logged with the reward).
        signals: Option<BTreeMap<String, f64>>,
        /// When it arrived: the window is judged at this time.
        received_at: DateTime<Utc>,
    },
    /// An activation acknowledged while the store was unavailable.
    Activate {
        /// The policy, if named.
        policy: Option<String>,
        /// The event.
        event_id: String,
        /// When it arrived.
        activated_at: DateTime<Utc>,
    },
}

impl Op {
    /// The event it concerns.
    pub fn event_id(&self) -> &str {
        match self {
            Op::Record { event, .. } => &event.event_id,
            Op::Reward { event_id, .. } | Op::Activate { event_id, .. } => event_id,
        }
    }

    /// A short name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Record { .. } => "record",
            Op::Reward { .. } => "reward",
            Op::Activate { .. } => "activate",
        }
    }
}

/// A parked operation (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parked {
    /// When it was first parked (unix ms).
    pub since_ms: i64,
    /// The operation.
    pub op: Op,
}

struct Inner {
    queue: VecDeque<Op>,
    parked: Vec<Parked>,
    file: File,
    /// Appended to since the last fsync.
    dirty: bool,
    dir: PathBuf,
    _lock: File,
}

/// The ordered, durable queue of store operations (see the module doc).
pub struct Outbox {
    inner: Mutex<Inner>,
    /// Most operations held; beyond, [`Outbox::push`] refuses.
    capacity: usize,
    /// True while operations must queue: read lock-free on every request.
    active: AtomicBool,
    len: AtomicUsize,
}

impl Outbox {
    /// Opens (creating) `dir`, takes its lock, and loads what a previous
    /// run left; the outbox starts active if that is not empty. Lines that
    /// do not parse (a torn last write) are skipped with a warning. It holds
    /// at most `capacity` operations (in memory and on disk; a decided
    /// event is about a kilobyte).
    pub fn open(dir: &Path, capacity: usize) -> io::Result<Outbox> {
        let lock = lock_dir(dir, LOCK, "the outbox is in use by another process")?;
        let path = dir.join(OPS);
        let mut queue = VecDeque::new();
        if let Ok(file) = File::open(&path) {
            for (i, line) in io::BufReader::new(file).lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                match serde_json::from_str::<Op>(&line) {
                    Ok(op) => queue.push_back(op),
                    Err(e) => {
                        tracing::warn!(line = i + 1, error = %e, "outbox: unreadable line skipped")
                    }
                }
            }
        }
        let mut file = OpenOptions::new().create(true).append(true).open(&path)?;
        // A torn last line must not swallow the next append.
        if file.metadata()?.len() > 0 {
            file.write_all(b"\n")?;
        }
        if !queue.is_empty() {
            tracing::warn!(
                ops = queue.len(),
                "outbox: operations left by the last run will be replayed"
            );
        }
        let parked: Vec<Parked> = match std::fs::read(dir.join(PARKED)) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", dir.join(PARKED).display()),
                )
            })?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let n = queue.len();
        Ok(Outbox {
            inner: Mutex::new(Inner {
                queue,
                parked,
                file,
                dirty: false,
                dir: dir.to_path_buf(),
                _lock: lock,
            }),
            capacity,
            active: AtomicBool::new(n > 0),
            len: AtomicUsize::new(n),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether operations must queue (the store failed, and the queue has
    /// not been fully replayed since).
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// Operations waiting.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `op` (to the file, then the queue) and makes the outbox
    /// active. Fails if the outbox is full or the file cannot be written;
    /// the caller must then not acknowledge the operation as kept.
    pub fn push(&self, op: Op) -> io::Result<()> {
        let mut line = serde_json::to_vec(&op).map_err(io::Error::other)?;
        line.push(b'\n');
        let mut inner = self.lock();
        if inner.queue.len() >= self.capacity {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "the outbox holds its maximum of {} operations",
                    self.capacity
                ),
            ));
        }
        inner.file.write_all(&line)?;
        inner.dirty = true;
        inner.queue.push_back(op);
        self.len.store(inner.queue.len(), Ordering::Relaxed);
        self.active.store(true, Ordering::Release);
        Ok(())
    }

    /// The `n` oldest waiting operations (fewer if fewer wait), in order.
    pub fn peek(&self, n: usize) -> Vec<Op> {
        self.lock().queue.iter().take(n).cloned().collect()
    }

    /// Removes the `n` oldest operations (replayed, or rejected). When the
    /// queue becomes empty the file is truncated and the outbox turns
    /// inactive: from then on operations go to the store directly.
    pub fn pop(&self, n: usize) -> io::Result<()> {
        let mut inner = self.lock();
        let n = n.min(inner.queue.len());
        inner.queue.drain(..n);
        self.len.store(inner.queue.len(), Ordering::Relaxed);
        if inner.queue.is_empty() {
            inner.file.set_len(0)?;
            inner.file.sync_data()?;
            inner.dirty = false;
            self.active.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// Fsyncs the queue file if it was appended to since the last call.
    pub fn sync(&self) -> io::Result<()> {
        let mut inner = self.lock();
        if inner.dirty {
            inner.file.sync_data()?;
            inner.dirty = false;
        }
        Ok(())
    }

    /// How many operations are parked.
    pub fn parked_len(&self) -> usize {
        self.lock().parked.len()
    }

    /// Parked operations (see the module doc), oldest first.
    pub fn parked(&self) -> Vec<Parked> {
        self.lock().parked.clone()
    }

    /// Parks `op` (first parked at `since_ms`): durable when this returns.
    /// An operation parked already keeps its first time.
    pub fn park(&self, op: &Op, since_ms: i64) -> io::Result<()> {
        let mut inner = self.lock();
        if inner.parked.iter().any(|p| p.op == *op) {
            return Ok(());
        }
        inner.parked.push(Parked {
            since_ms,
            op: op.clone(),
        });
        write_parked(&inner)
    }

    /// Removes these parked operations (applied, or rejected at last).
    pub fn unpark(&self, done: &[Op]) -> io::Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        let mut inner = self.lock();
        inner.parked.retain(|p| !done.contains(&p.op));
        write_parked(&inner)
    }

    /// Records an operation the store refused, with the reason, in
    /// `rejected.jsonl` (fsynced).
    pub fn reject(&self, op: &Op, reason: &str) -> io::Result<()> {
        #[derive(Serialize)]
        struct Rejected<'a> {
            reason: &'a str,
            at: DateTime<Utc>,
            #[serde(flatten)]
            op: &'a Op,
        }
        let mut line = serde_json::to_vec(&Rejected {
            reason,
            at: Utc::now(),
            op,
        })
        .map_err(io::Error::other)?;
        line.push(b'\n');
        let dir = self.lock().dir.clone();
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(REJECTED))?;
        file.write_all(&line)?;
        file.sync_data()
    }
}

/// Rewrites `parked.json` atomically ([`crate::log::write_atomically`]):
/// it holds few operations, and only while events are late.
fn write_parked(inner: &Inner) -> io::Result<()> {
    let path = inner.dir.join(PARKED);
    if inner.parked.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    crate::log::write_atomically(&path, |out| {
        serde_json::to_writer(out, &inner.parked).map_err(io::Error::other)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reward(n: u32) -> Op {
        Op::Reward {
            reward_id: Uuid::now_v7(),
            policy: Some("p".into()),
            event_id: format!("e{n}"),
            action: None,
            value: Some(f64::from(n)),
            raw: None,
            signals: None,
            received_at: Utc::now(),
        }
    }

    #[test]
    fn operations_survive_a_reopen_in_order_and_a_drained_outbox_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let ops: Vec<Op> = (0..3).map(reward).collect();
        {
            let outbox = Outbox::open(dir.path(), 100).unwrap();
            assert!(!outbox.active());
            for op in &ops {
                outbox.push(op.clone()).unwrap();
            }
            assert!(outbox.active());
            assert_eq!(outbox.len(), 3);
            outbox.sync().unwrap();
        }
        let outbox = Outbox::open(dir.path(), 100).unwrap();
        assert!(outbox.active(), "a non-empty outbox starts active");
        for op in &ops {
            assert_eq!(outbox.peek(1).first(), Some(op));
            outbox.pop(1).unwrap();
        }
        assert!(!outbox.active());
        assert_eq!(outbox.peek(1), Vec::new());
        drop(outbox);
        let reopened = Outbox::open(dir.path(), 100).unwrap();
        assert!(reopened.is_empty());
        assert!(!reopened.active());
    }

    #[test]
    fn a_torn_last_line_is_skipped_and_later_appends_stay_readable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let outbox = Outbox::open(dir.path(), 100).unwrap();
            outbox.push(reward(1)).unwrap();
        }
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(OPS))
            .unwrap();
        f.write_all(b"{\"op\":\"reward\",\"rew").unwrap();
        drop(f);
        {
            let outbox = Outbox::open(dir.path(), 100).unwrap();
            assert_eq!(outbox.len(), 1);
            outbox.push(reward(2)).unwrap();
        }
        let outbox = Outbox::open(dir.path(), 100).unwrap();
        assert_eq!(outbox.len(), 2);
    }

    #[test]
    fn a_full_outbox_refuses_more_and_takes_again_once_drained() {
        let dir = tempfile::tempdir().unwrap();
        let outbox = Outbox::open(dir.path(), 2).unwrap();
        outbox.push(reward(1)).unwrap();
        outbox.push(reward(2)).unwrap();
        let full = outbox.push(reward(3)).unwrap_err();
        assert_eq!(full.kind(), io::ErrorKind::StorageFull);
        outbox.pop(2).unwrap();
        outbox.push(reward(4)).unwrap();
        assert_eq!(outbox.len(), 1);
    }

    #[test]
    fn parked_operations_survive_a_reopen_and_leave_the_outbox_inactive() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (reward(1), reward(2));
        {
            let outbox = Outbox::open(dir.path(), 100).unwrap();
            outbox.park(&a, 10).unwrap();
            outbox.park(&b, 20).unwrap();
            outbox.park(&a, 30).unwrap();
            assert!(!outbox.active(), "parking does not queue");
        }
        let outbox = Outbox::open(dir.path(), 100).unwrap();
        let parked = outbox.parked();
        assert_eq!(parked.len(), 2);
        assert_eq!(
            (parked[0].since_ms, &parked[0].op),
            (10, &a),
            "first time kept"
        );
        outbox.unpark(std::slice::from_ref(&a)).unwrap();
        drop(outbox);
        let outbox = Outbox::open(dir.path(), 100).unwrap();
        assert_eq!(outbox.parked().len(), 1);
        outbox.unpark(&[b]).unwrap();
        assert!(!dir.path().join(PARKED).exists());
    }

    #[test]
    fn a_second_process_cannot_take_the_same_outbox() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Outbox::open(dir.path(), 100).unwrap();
        let second = Outbox::open(dir.path(), 100);
        assert_eq!(
            second.err().map(|e| e.kind()),
            Some(io::ErrorKind::ResourceBusy)
        );
    }
}
