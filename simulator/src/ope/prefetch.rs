//! Reading inputs on their own threads: the log and each per-event file
//! (`--target-probs`, `--reward-model`) are parsed by a thread of their own
//! and handed to the evaluating thread in batches through a bounded
//! channel, so parsing the three files and estimating overlap on every core
//! while memory stays bounded ([`DEPTH`] batches of [`BATCH`] items in
//! flight per input).
//!
//! Order is kept (one producer per input, one FIFO channel), so the merge
//! join of [`super::candidate::EventFile::rows_for`] and every error
//! message are exactly what reading on one thread gives. Errors are items:
//! the first one reaches the consumer where reading inline would have
//! raised it. A producer that panics re-raises its panic in the consumer
//! instead of ending the stream early, so a crash is never a short log.

use super::candidate::{Groups, Pairs};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

/// Items per batch handed over.
pub const BATCH: usize = 1024;
/// Batches in flight per input.
pub const DEPTH: usize = 4;

/// What a fill did to its slot.
pub enum Fill {
    /// Put the next item there.
    Item,
    /// Put the item that ends the stream there (an error): it is lent,
    /// and nothing is read after it.
    Last,
    /// Nothing: the input has ended.
    End,
}

/// A batch of slots, `len` of them filled. Slots travel back to the
/// producer with their contents, which it overwrites in place: buffers are
/// reused, and whatever is freed is freed by the thread that allocated it
/// (glibc's cross-thread frees cost more than the parsing they served).
struct Batch<T> {
    items: Vec<T>,
    len: usize,
}

enum Mode<T> {
    /// Filled on this thread, one slot at a time (`--inline-read`).
    Inline(Box<dyn FnMut(&mut T) -> Fill + Send>),
    /// Filled by a reader thread.
    Thread {
        rx: Receiver<Batch<T>>,
        recycle: SyncSender<Batch<T>>,
        handle: Option<JoinHandle<()>>,
    },
    /// The input has ended.
    Done,
}

/// A stream of items filled by a reader thread (or inline); see the
/// [module docs](self). Items are lent (`next_mut`), not moved out.
pub struct Prefetch<T: Default + Send + 'static> {
    mode: Mode<T>,
    cur: Batch<T>,
    /// The next slot of `cur` to lend.
    at: usize,
}

impl<T: Default + Send + 'static> Prefetch<T> {
    /// Reads with `fill` (which overwrites a slot with the next item and
    /// says what it did) on a thread named `name`, or on this thread when
    /// `inline`.
    pub fn spawn<F>(name: &str, inline: bool, fill: F) -> Prefetch<T>
    where
        F: FnMut(&mut T) -> Fill + Send + 'static,
    {
        if inline {
            return Prefetch {
                mode: Mode::Inline(Box::new(fill)),
                cur: Batch {
                    items: vec![T::default()],
                    len: 0,
                },
                at: 0,
            };
        }
        let (tx, rx) = sync_channel::<Batch<T>>(DEPTH);
        let (recycle, returned) = sync_channel::<Batch<T>>(DEPTH + 2);
        let handle = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let mut fill = fill;
                loop {
                    let mut batch = returned.try_recv().unwrap_or_else(|_| Batch {
                        items: (0..BATCH).map(|_| T::default()).collect(),
                        len: 0,
                    });
                    batch.len = 0;
                    let mut done = false;
                    while !done && batch.len < BATCH {
                        match fill(&mut batch.items[batch.len]) {
                            Fill::Item => batch.len += 1,
                            Fill::Last => {
                                batch.len += 1;
                                done = true;
                            }
                            Fill::End => done = true,
                        }
                    }
                    // A closed channel: the consumer stopped (an error, or
                    // it needs no more); stop reading.
                    if (batch.len > 0 && tx.send(batch).is_err()) || done {
                        return;
                    }
                }
            })
            .expect("cannot start a reader thread");
        Prefetch {
            mode: Mode::Thread {
                rx,
                recycle,
                handle: Some(handle),
            },
            cur: Batch {
                items: Vec::new(),
                len: 0,
            },
            at: 0,
        }
    }

    /// The next item, lent until the next call; `None` at the end. A
    /// reader thread's panic is re-raised here.
    pub fn next_mut(&mut self) -> Option<&mut T> {
        if self.at == self.cur.len {
            match &mut self.mode {
                Mode::Inline(fill) => match fill(&mut self.cur.items[0]) {
                    Fill::Item => self.cur.len = 1,
                    Fill::Last => {
                        self.cur.len = 1;
                        self.mode = Mode::Done;
                    }
                    Fill::End => {
                        self.mode = Mode::Done;
                        return None;
                    }
                },
                Mode::Thread {
                    rx,
                    recycle,
                    handle,
                } => match rx.recv() {
                    Ok(batch) => {
                        let old = std::mem::replace(&mut self.cur, batch);
                        if !old.items.is_empty() {
                            let _ = recycle.try_send(old);
                        }
                    }
                    Err(_) => {
                        // The producer is done: re-raise its panic, if any.
                        if let Some(h) = handle.take()
                            && let Err(panic) = h.join()
                        {
                            std::panic::resume_unwind(panic);
                        }
                        self.mode = Mode::Done;
                        return None;
                    }
                },
                Mode::Done => return None,
            }
            self.at = 0;
        }
        self.at += 1;
        Some(&mut self.cur.items[self.at - 1])
    }

    /// The item lent last by [`Prefetch::next_mut`], if any.
    pub fn current(&self) -> Option<&T> {
        self.at.checked_sub(1).map(|i| &self.cur.items[i])
    }
}

/// The records of a log, read by [`Prefetch`]: each slot holds the next
/// record or the error that ended the stream.
pub fn records(
    mut iter: Box<dyn Iterator<Item = anyhow::Result<super::source::LogRecord>> + Send>,
    inline: bool,
) -> Prefetch<Option<anyhow::Result<super::source::LogRecord>>> {
    Prefetch::spawn("log", inline, move |slot| {
        *slot = iter.next();
        match slot {
            Some(Ok(_)) => Fill::Item,
            Some(Err(_)) => Fill::Last,
            None => Fill::End,
        }
    })
}

/// One group of a per-event file, as handed over.
#[derive(Default)]
struct Group {
    id: String,
    at: u64,
    pairs: Pairs,
    error: Option<anyhow::Error>,
}

/// A per-event file's groups read on their own thread
/// ([`super::candidate::EventFile::prefetch`]).
pub struct PrefetchedGroups {
    file: PathBuf,
    groups: Prefetch<Group>,
    /// `group()` before the first group.
    none: Pairs,
}

impl PrefetchedGroups {
    /// Starts reading `inner` on a thread named after its file.
    pub(crate) fn spawn(mut inner: Box<dyn Groups + Send>) -> PrefetchedGroups {
        let file = inner.file().to_path_buf();
        let fill = move |slot: &mut Group| match inner.next_group() {
            Ok(true) => {
                let (id, at, pairs) = inner.group();
                slot.id.clear();
                slot.id.push_str(id);
                slot.at = at;
                slot.pairs.copy_from(pairs);
                slot.error = None;
                Fill::Item
            }
            Ok(false) => Fill::End,
            Err(e) => {
                slot.error = Some(e);
                Fill::Last
            }
        };
        let name = file
            .file_name()
            .map_or_else(|| "input".into(), |n| n.to_string_lossy().into_owned());
        PrefetchedGroups {
            groups: Prefetch::spawn(&name, false, fill),
            file,
            none: Pairs::default(),
        }
    }
}

impl Groups for PrefetchedGroups {
    fn next_group(&mut self) -> anyhow::Result<bool> {
        let Some(g) = self.groups.next_mut() else {
            return Ok(false);
        };
        match g.error.take() {
            Some(e) => Err(e),
            None => Ok(true),
        }
    }

    fn group(&self) -> (&str, u64, &Pairs) {
        // Lent from its slot: valid until the next `next_group`.
        match self.groups.current() {
            Some(g) => (&g.id, g.at, &g.pairs),
            None => ("", 0, &self.none),
        }
    }

    fn file(&self) -> &Path {
        &self.file
    }
}
