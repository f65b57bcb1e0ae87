//! The spool: records the database could not take yet, as JSON lines (one
//! [`LogRecord`] per line, `{"kind": …}`) in `data_dir/spool/`.
//!
//! - `log.jsonl` is appended to (by the writer, a batch at a time with an
//!   fsync, and by [`DecisionLog::record`](super::DecisionLog::record) when
//!   the queue is full).
//! - To replay, the writer renames it to `log.replaying.jsonl` (so appends
//!   continue in a fresh `log.jsonl`), writes it to the database in order, a
//!   batch at a time, and removes it; then it takes the next `log.jsonl`, until
//!   both are empty. Progress within the file is kept in memory: after a
//!   crash the file is replayed from its start, which is harmless because
//!   writes are idempotent.
//! - `rejected.jsonl` receives records the database refused for a reason
//!   other than availability (bad data), for a human to look at.
//! - `spool.lock` is held (advisory lock) while a log owns the directory.
//!
//! A crash mid-append can leave a torn last line. When `log.jsonl` is
//! reopened, a missing final newline is added first so the fragment stays on
//! its own line, and replay skips any line that does not parse, with a
//! warning.

use super::LogRecord;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncBufReadExt, AsyncSeekExt};
use tracing::warn;

/// The file appended to.
pub(super) const ACTIVE: &str = "log.jsonl";
/// The file being replayed.
pub(super) const REPLAYING: &str = "log.replaying.jsonl";
/// Records the database refused.
pub(super) const REJECTED: &str = "rejected.jsonl";
/// Held while a log owns the directory.
const LOCK: &str = "spool.lock";

/// The spool directory's state. Shared behind a mutex by the writer and
/// `record` (which appends directly when the queue is full).
pub(super) struct Spool {
    dir: PathBuf,
    /// `log.jsonl`, open for appending (opened lazily).
    active: Option<File>,
    /// Its length in bytes.
    active_len: u64,
    /// Whether `log.replaying.jsonl` exists.
    replaying: bool,
    /// Its length.
    replay_len: u64,
    /// How much of it has been written to the database.
    replay_offset: u64,
    /// Appended to without an fsync since the last sync.
    dirty: bool,
    /// Bytes not yet in the database, published for `spool_bytes`.
    bytes: Arc<AtomicU64>,
    /// Keeps the advisory lock.
    _lock: File,
}

impl Spool {
    /// Creates the directory if needed, takes its lock (failing if another
    /// log holds it), and picks up what a previous run left behind.
    pub fn open(dir: &Path, bytes: Arc<AtomicU64>) -> io::Result<Spool> {
        let lock = lock_dir(dir, LOCK, "the spool is in use by another decision log")?;
        let len = |name: &str| match std::fs::metadata(dir.join(name)) {
            Ok(meta) => Ok(Some(meta.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        };
        let replay_len = len(REPLAYING)?;
        let mut spool = Spool {
            dir: dir.to_owned(),
            active: None,
            active_len: len(ACTIVE)?.unwrap_or(0),
            replaying: replay_len.is_some(),
            replay_len: replay_len.unwrap_or(0),
            replay_offset: 0,
            dirty: false,
            bytes,
            _lock: lock,
        };
        // Fail now, not on the first outage, if the directory is unusable.
        spool.open_active()?;
        spool.publish();
        Ok(spool)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// True when nothing waits to be replayed.
    pub fn is_empty(&self) -> bool {
        self.active_len == 0 && !self.replaying
    }

    fn publish(&self) {
        let pending = self.active_len + self.replay_len.saturating_sub(self.replay_offset);
        self.bytes.store(pending, Ordering::Relaxed);
    }

    /// Opens `log.jsonl` for appending if it is not open, first terminating
    /// a torn last line.
    fn open_active(&mut self) -> io::Result<&mut File> {
        if self.active.is_none() {
            let mut file = OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(self.dir.join(ACTIVE))?;
            let len = file.metadata()?.len();
            if len > 0 {
                let mut last = [0u8];
                file.seek(SeekFrom::Start(len - 1))?;
                file.read_exact(&mut last)?;
                if last[0] != b'\n' {
                    warn!(
                        file = %self.dir.join(ACTIVE).display(),
                        "decision log: spool ends with a torn line (crash mid-append?); it will be skipped"
                    );
                    file.write_all(b"\n")?;
                    file.sync_data()?;
                }
            }
            self.active_len = file.metadata()?.len();
            self.active = Some(file);
        }
        Ok(self.active.as_mut().expect("opened above"))
    }

    /// Appends records as JSON lines; with `sync`, fsyncs before returning.
    /// On failure the file is reopened next time (terminating any partial
    /// line first).
    pub fn append(&mut self, records: &[LogRecord], sync: bool) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let lines = encode_lines(records);
        let result = self.open_active().and_then(|file| {
            file.write_all(&lines)?;
            if sync { file.sync_data() } else { Ok(()) }
        });
        match result {
            Ok(()) => {
                self.active_len += lines.len() as u64;
                self.dirty |= !sync;
            }
            Err(_) => {
                self.active = None;
                if let Ok(meta) = std::fs::metadata(self.dir.join(ACTIVE)) {
                    self.active_len = meta.len();
                }
            }
        }
        self.publish();
        result
    }

    /// Fsyncs appends made without one.
    pub fn sync_if_dirty(&mut self) -> io::Result<()> {
        if self.dirty {
            if let Some(file) = &self.active {
                file.sync_data()?;
            }
            self.dirty = false;
        }
        Ok(())
    }

    /// The file to replay and the offset to resume from: the file being
    /// replayed, or else `log.jsonl` renamed to it; `None` when the spool is
    /// empty.
    pub fn begin_replay(&mut self) -> io::Result<Option<(PathBuf, u64)>> {
        let path = self.dir.join(REPLAYING);
        if !self.replaying {
            if self.active_len == 0 {
                return Ok(None);
            }
            self.sync_if_dirty()?;
            self.active = None;
            std::fs::rename(self.dir.join(ACTIVE), &path)?;
            if let Ok(dir) = File::open(&self.dir) {
                let _ = dir.sync_all();
            }
            self.replaying = true;
            self.replay_len = self.active_len;
            self.replay_offset = 0;
            self.active_len = 0;
            self.publish();
        }
        Ok(Some((path, self.replay_offset)))
    }

    /// Everything before `offset` in the replayed file is in the database.
    pub fn replayed_to(&mut self, offset: u64) {
        self.replay_offset = offset;
        self.publish();
    }

    /// The replayed file is done: removes it.
    pub fn finish_replay(&mut self) -> io::Result<()> {
        match std::fs::remove_file(self.dir.join(REPLAYING)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.replaying = false;
        self.replay_len = 0;
        self.replay_offset = 0;
        self.publish();
        Ok(())
    }
}

/// Records as JSON lines.
pub(super) fn encode_lines(records: &[LogRecord]) -> Vec<u8> {
    let mut lines = Vec::with_capacity(records.len() * 512);
    for record in records {
        serde_json::to_writer(&mut lines, record).expect("a log record always serializes");
        lines.push(b'\n');
    }
    lines
}

/// Creates `dir` if needed and takes the advisory lock `dir/name`, held as
/// long as the returned file is open. Fails with `ResourceBusy`, saying
/// `busy`, if another process holds it: one data dir per process.
pub(crate) fn lock_dir(dir: &Path, name: &str, busy: &str) -> io::Result<File> {
    std::fs::create_dir_all(dir)?;
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(name))?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(TryLockError::WouldBlock) => Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            format!("{busy} (is this data dir shared?)"),
        )),
        Err(TryLockError::Error(error)) => Err(error),
    }
}

/// Replaces `path` atomically with what `write` writes: to a temporary file
/// beside it (its directory created if needed), fsynced, renamed over
/// `path`, and the directory fsynced so the rename survives a power loss.
/// A crash at any point leaves the old file or the new one, never half.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut io::BufWriter<File>) -> io::Result<()>,
) -> io::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut out = io::BufWriter::new(File::create(&tmp)?);
    write(&mut out)?;
    out.flush()?;
    out.get_ref().sync_all()?;
    std::fs::rename(&tmp, path)?;
    File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
}

/// Appends records the database refused to `rejected.jsonl`, with an fsync.
pub(super) fn append_rejected(dir: &Path, records: &[LogRecord]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(REJECTED))?;
    file.write_all(&encode_lines(records))?;
    file.sync_data()
}

/// Up to `max` records read from a spool file.
pub(super) struct Chunk {
    /// Each record with the offset just past its line.
    pub records: Vec<(LogRecord, u64)>,
    /// The offset just past the last line read (skipped lines included).
    pub end: u64,
    /// Whether the end of the file was reached.
    pub eof: bool,
}

/// Reads up to `max` records from `path` starting at `offset`, skipping
/// (with a warning) lines that do not parse: a torn last line, or garbage.
pub(super) async fn read_chunk(path: &Path, offset: u64, max: usize) -> io::Result<Chunk> {
    let mut file = tokio::fs::File::open(path).await?;
    file.seek(SeekFrom::Start(offset)).await?;
    let mut reader = tokio::io::BufReader::new(file);
    let mut chunk = Chunk {
        records: Vec::new(),
        end: offset,
        eof: false,
    };
    let mut line = Vec::new();
    while chunk.records.len() < max {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).await?;
        if n == 0 {
            chunk.eof = true;
            break;
        }
        chunk.end += n as u64;
        let complete = line.last() == Some(&b'\n');
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        match serde_json::from_slice::<LogRecord>(text) {
            Ok(record) => chunk.records.push((record, chunk.end)),
            Err(error) => {
                let preview: String = String::from_utf8_lossy(text).chars().take(200).collect();
                if complete {
                    warn!(file = %path.display(), offset = chunk.end - n as u64, %error, line = %preview,
                        "decision log: skipping a spool line that does not parse");
                } else {
                    warn!(file = %path.display(), offset = chunk.end - n as u64, %error, line = %preview,
                        "decision log: skipping a torn last spool line (crash mid-append?)");
                }
            }
        }
    }
    Ok(chunk)
}
