//! Logged decisions as a stream of [`LogRecord`]s, from any `--log SOURCE`:
//! the service's PostgreSQL or SQLite log, a JSONL file
//! ([`crate::logfmt`]), or an Open Bandit Dataset CSV (`obd:PATH`).
//!
//! Every reader streams: it holds one record (and, for a database, a
//! bounded channel of 1024 rows) at a time. A malformed record is an error
//! naming the file, the line and the field.

use crate::logfmt::{CandidateProb, LoggedEvent};
use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Where a record came from, for error messages: `file:line`, or a
/// database row. Formatting is deferred to when a message needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// A line of a file.
    Line(Arc<str>, u64),
    /// A database row.
    Row(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Line(file, line) => write!(f, "{file}:{line}"),
            Origin::Row(s) => f.write_str(s),
        }
    }
}

/// One logged decision, as the evaluator needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    /// The decision's event id.
    pub event_id: String,
    /// Where it came from, for error messages.
    pub origin: Origin,
    /// The logging policy's id, when the source has one.
    pub policy: Option<String>,
    /// When it was decided, when the source says.
    pub decided_at: Option<DateTime<Utc>>,
    /// The logged action's id.
    pub action: String,
    /// Its logging propensity.
    pub pscore: f64,
    /// The (summed) reward; `None` when none was logged.
    pub reward: Option<f64>,
    /// Slot position (OBD); 0 otherwise.
    pub position: u32,
    /// The request context (JSON sources), for policy files and reward-model
    /// fitting.
    pub context: Option<Value>,
    /// Shared-mode candidate actions as sent (JSON sources).
    pub actions: Option<Value>,
    /// Every logged candidate with its logging probability (JSON sources).
    pub candidates: Vec<CandidateProb>,
    /// Numeric context features (OBD columns), for reward-model fitting.
    pub features: Vec<f64>,
}

impl LogRecord {
    /// A JSONL line's event as a record (`origin` names where it came from).
    pub fn from_logged(ev: LoggedEvent, origin: Origin) -> LogRecord {
        LogRecord {
            event_id: ev.event_id,
            origin,
            policy: Some(ev.policy),
            decided_at: Some(ev.decided_at),
            action: ev.action,
            pscore: ev.probability,
            reward: ev.reward,
            position: 0,
            context: Some(ev.context),
            actions: ev.actions,
            candidates: ev.candidates,
            features: Vec::new(),
        }
    }
}

/// Which decisions to read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// Only this logging policy.
    pub policy_id: Option<String>,
    /// Only decisions at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// Only decisions strictly before this instant.
    pub until: Option<DateTime<Utc>>,
}

impl Filter {
    fn keeps(&self, policy: Option<&str>, at: Option<DateTime<Utc>>) -> bool {
        if let (Some(want), Some(have)) = (&self.policy_id, policy)
            && want != have
        {
            return false;
        }
        if let Some(at) = at
            && (self.since.is_some_and(|s| at < s) || self.until.is_some_and(|u| at >= u))
        {
            return false;
        }
        true
    }
}

/// A parsed `--log SOURCE`.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// `postgres://…` or `postgresql://…`.
    Postgres(String),
    /// `sqlite://…` or `sqlite:…`.
    Sqlite(String),
    /// `obd:PATH`: an Open Bandit Dataset CSV.
    Obd(PathBuf),
    /// Anything else: a JSONL file.
    Jsonl(PathBuf),
}

impl Source {
    /// Parses a `--log` argument.
    pub fn parse(s: &str) -> Source {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Source::Postgres(s.to_string())
        } else if s.starts_with("sqlite:") {
            Source::Sqlite(s.to_string())
        } else if let Some(p) = s.strip_prefix("obd:") {
            Source::Obd(PathBuf::from(p))
        } else {
            Source::Jsonl(PathBuf::from(s))
        }
    }

    /// Opens the source as a stream of records passing `filter`.
    /// `with_features`: parse OBD feature columns (only needed to fit a
    /// reward model).
    pub fn open(
        &self,
        filter: &Filter,
        with_features: bool,
    ) -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<LogRecord>> + Send>> {
        Ok(match self {
            Source::Jsonl(p) => Box::new(JsonlReader::open(p, filter.clone())?),
            Source::Obd(p) => Box::new(ObdReader::open(p, filter.clone(), with_features)?),
            Source::Postgres(url) | Source::Sqlite(url) => {
                Box::new(super::db::DbReader::open(url, filter.clone())?)
            }
        })
    }

    /// The size in bytes of a file source (for the progress bar).
    pub fn file_len(&self) -> Option<u64> {
        match self {
            Source::Jsonl(p) | Source::Obd(p) => std::fs::metadata(p).ok().map(|m| m.len()),
            _ => None,
        }
    }
}

/// Reads a JSONL log ([`crate::logfmt::LoggedEvent`] per line).
pub struct JsonlReader {
    path: PathBuf,
    name: Arc<str>,
    reader: BufReader<File>,
    line: String,
    line_no: u64,
    filter: Filter,
}

impl JsonlReader {
    /// Opens `path`.
    pub fn open(path: &Path, filter: Filter) -> anyhow::Result<JsonlReader> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        Ok(JsonlReader {
            name: path.display().to_string().into(),
            path: path.to_path_buf(),
            reader: BufReader::with_capacity(1 << 20, file),
            line: String::new(),
            line_no: 0,
            filter,
        })
    }

    fn parse(&self) -> anyhow::Result<LoggedEvent> {
        let mut de = serde_json::Deserializer::from_str(self.line.trim_end());
        let event: LoggedEvent = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            anyhow::anyhow!(
                "{}:{}: field `{}`: {}",
                self.path.display(),
                self.line_no,
                e.path(),
                e.inner()
            )
        })?;
        Ok(event)
    }
}

impl Iterator for JsonlReader {
    type Item = anyhow::Result<LogRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            self.line.clear();
            self.line_no += 1;
            match self.reader.read_line(&mut self.line) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => {
                    return Some(Err(anyhow::anyhow!(
                        "{}:{}: cannot read: {e}",
                        self.path.display(),
                        self.line_no
                    )));
                }
            }
            if self.line.trim().is_empty() {
                continue;
            }
            let ev = match self.parse() {
                Ok(ev) => ev,
                Err(e) => return Some(Err(e)),
            };
            if !self.filter.keeps(Some(&ev.policy), Some(ev.decided_at)) {
                continue;
            }
            let origin = Origin::Line(self.name.clone(), self.line_no);
            return Some(Ok(LogRecord::from_logged(ev, origin)));
        }
    }
}

/// Reads an Open Bandit Dataset CSV: columns `timestamp, item_id, position,
/// click, propensity_score, user_feature_*, user-item_affinity_*` (an
/// unnamed leading index column, as pandas writes it, is allowed). The
/// event id of data row `i` (from 0) is `i`; `position` is 0-based as in
/// OBP's loader when the file's positions start at 0, and used as given.
pub struct ObdReader {
    path: PathBuf,
    name: Arc<str>,
    reader: csv::Reader<BufReader<File>>,
    record: csv::ByteRecord,
    row: u64,
    cols: ObdColumns,
    filter: Filter,
    with_features: bool,
}

struct ObdColumns {
    timestamp: Option<usize>,
    item_id: usize,
    position: Option<usize>,
    click: usize,
    propensity: usize,
    features: Vec<(usize, String)>,
}

impl ObdReader {
    /// Opens `path` and checks its header.
    pub fn open(path: &Path, filter: Filter, with_features: bool) -> anyhow::Result<ObdReader> {
        if filter.policy_id.is_some() {
            bail!(
                "{}: an Open Bandit Dataset CSV has no policy column; drop --policy-id",
                path.display()
            );
        }
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(BufReader::with_capacity(1 << 20, file));
        let headers = reader
            .headers()
            .with_context(|| format!("{}:1: cannot read the header", path.display()))?
            .clone();
        let find = |name: &str| headers.iter().position(|h| h == name);
        let need = |name: &str| {
            find(name).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}:1: missing column `{name}` (an Open Bandit Dataset CSV has timestamp, \
                     item_id, position, click, propensity_score, user_feature_*, \
                     user-item_affinity_*)",
                    path.display()
                )
            })
        };
        let cols = ObdColumns {
            timestamp: find("timestamp"),
            item_id: need("item_id")?,
            position: find("position"),
            click: need("click")?,
            propensity: need("propensity_score")?,
            features: headers
                .iter()
                .enumerate()
                .filter(|(_, h)| {
                    h.starts_with("user_feature_") || h.starts_with("user-item_affinity_")
                })
                .map(|(i, h)| (i, h.to_string()))
                .collect(),
        };
        Ok(ObdReader {
            name: path.display().to_string().into(),
            path: path.to_path_buf(),
            reader,
            record: csv::ByteRecord::new(),
            row: 0,
            cols,
            filter,
            with_features,
        })
    }

    fn field<'a>(&'a self, col: usize, name: &str) -> anyhow::Result<&'a str> {
        let raw = self.record.get(col).ok_or_else(|| {
            anyhow::anyhow!(
                "{}:{}: field `{name}`: missing (the row is shorter than the header)",
                self.path.display(),
                self.row + 2
            )
        })?;
        std::str::from_utf8(raw).map_err(|_| {
            anyhow::anyhow!(
                "{}:{}: field `{name}`: not UTF-8",
                self.path.display(),
                self.row + 2
            )
        })
    }

    fn number(&self, col: usize, name: &str) -> anyhow::Result<f64> {
        let s = self.field(col, name)?;
        s.trim().parse::<f64>().map_err(|_| {
            anyhow::anyhow!(
                "{}:{}: field `{name}`: {s:?} is not a number",
                self.path.display(),
                self.row + 2
            )
        })
    }

    fn parse(&self) -> anyhow::Result<Option<LogRecord>> {
        let line = self.row + 2;
        let at = match self.cols.timestamp {
            Some(c) if self.filter.since.is_some() || self.filter.until.is_some() => {
                let s = self.field(c, "timestamp")?;
                Some(parse_obd_time(s).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}:{line}: field `timestamp`: {s:?} is not a timestamp",
                        self.path.display()
                    )
                })?)
            }
            _ => None,
        };
        if !self.filter.keeps(None, at) {
            return Ok(None);
        }
        let action = self.field(self.cols.item_id, "item_id")?.trim().to_string();
        let position = match self.cols.position {
            Some(c) => {
                let p = self.number(c, "position")?;
                if p < 0.0 || p.fract() != 0.0 {
                    bail!(
                        "{}:{line}: field `position`: {p} is not a non-negative integer",
                        self.path.display()
                    );
                }
                p as u32
            }
            None => 0,
        };
        let reward = self.number(self.cols.click, "click")?;
        let pscore = self.number(self.cols.propensity, "propensity_score")?;
        let mut features = Vec::new();
        if self.with_features {
            for (c, name) in &self.cols.features {
                let s = self.field(*c, name)?;
                match s.trim().parse::<f64>() {
                    Ok(v) => features.push(v),
                    // Categorical (hashed) user features: one-hot by hashing
                    // into a few buckets so every row has the same width.
                    Err(_) => features.extend(hashed_one_hot(s, 8)),
                }
            }
        }
        Ok(Some(LogRecord {
            event_id: self.row.to_string(),
            origin: Origin::Line(self.name.clone(), line),
            policy: None,
            decided_at: at,
            action,
            pscore,
            reward: Some(reward),
            position,
            context: None,
            actions: None,
            candidates: Vec::new(),
            features,
        }))
    }
}

/// A one-hot vector of width `k` from a stable hash of `s`.
fn hashed_one_hot(s: &str, k: usize) -> Vec<f64> {
    let h = fnv1a(s.as_bytes()) as usize % k;
    (0..k).map(|i| if i == h { 1.0 } else { 0.0 }).collect()
}

/// FNV-1a: a stable hash without another dependency.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

fn parse_obd_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%:z"))
        .map(|t| t.with_timezone(&Utc))
        .ok()
}

impl Iterator for ObdReader {
    type Item = anyhow::Result<LogRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.reader.read_byte_record(&mut self.record) {
                Ok(false) => return None,
                Ok(true) => {}
                Err(e) => {
                    return Some(Err(anyhow::anyhow!(
                        "{}:{}: malformed CSV: {e}",
                        self.path.display(),
                        self.row + 2
                    )));
                }
            }
            let out = self.parse();
            self.row += 1;
            match out {
                Ok(Some(rec)) => return Some(Ok(rec)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
