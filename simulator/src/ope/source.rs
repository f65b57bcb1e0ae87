//! Logged decisions as a stream of [`LogRecord`]s, from any `--log SOURCE`:
//! the service's PostgreSQL or SQLite log, a JSONL file
//! ([`crate::logfmt`]), an Open Bandit Dataset CSV (`obd:PATH`), Parquet
//! ([`super::parquet`]) or Vowpal Wabbit DSJSON ([`super::dsjson`]).
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
use std::sync::atomic::AtomicU64;

/// How a file is compressed, by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Not compressed.
    None,
    /// `.gz`: gzip (several members are read as one stream).
    Gzip,
    /// `.zst`: Zstandard.
    Zstd,
}

impl Compression {
    /// The compression of `path` by its extension, and the name without it
    /// (`log.csv.gz` → gzip, `log.csv`).
    pub fn of(path: &Path) -> (Compression, String) {
        let name = path.display().to_string();
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".gz") {
            (Compression::Gzip, name[..name.len() - 3].to_string())
        } else if lower.ends_with(".zst") {
            (Compression::Zstd, name[..name.len() - 4].to_string())
        } else {
            (Compression::None, name)
        }
    }
}

/// Opens a file for streaming, decompressing it by extension (`.gz`,
/// `.zst`), buffered.
pub fn open_input(path: &Path) -> anyhow::Result<Box<dyn BufRead + Send>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    const BUF: usize = 1 << 20;
    Ok(match Compression::of(path).0 {
        Compression::None => Box::new(BufReader::with_capacity(BUF, file)),
        Compression::Gzip => Box::new(BufReader::with_capacity(
            BUF,
            flate2::read::MultiGzDecoder::new(BufReader::with_capacity(BUF, file)),
        )),
        Compression::Zstd => Box::new(BufReader::with_capacity(
            BUF,
            zstd::stream::read::Decoder::new(file)
                .with_context(|| format!("{}: not a Zstandard stream", path.display()))?,
        )),
    })
}

/// Opens a file for a reader that buffers itself (the CSV readers),
/// decompressing it by extension: no second buffer to copy through.
pub fn open_raw(path: &Path) -> anyhow::Result<Box<dyn std::io::Read + Send>> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    Ok(match Compression::of(path).0 {
        Compression::None => Box::new(file),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(file)
                .with_context(|| format!("{}: not a Zstandard stream", path.display()))?,
        ),
    })
}

/// A CSV file's byte stream ([`open_raw`]).
pub type RawInput = Box<dyn std::io::Read + Send>;

/// A streamed input file, decompressed and buffered ([`open_input`]).
pub type Input = Box<dyn BufRead + Send>;

/// Whether `path` names a CSV file by its extension (`.csv`, `.csv.gz`,
/// `.csv.zst`).
pub fn is_csv(path: &Path) -> bool {
    Compression::of(path)
        .1
        .to_ascii_lowercase()
        .ends_with(".csv")
}

/// Where a record came from, for error messages: `file:line`, or a
/// database row. Formatting is deferred to when a message needs it.
#[derive(Debug, Clone, PartialEq)]
pub enum Origin {
    /// A line of a file.
    Line(Arc<str>, u64),
    /// A database row.
    Row(String),
    /// A row of a Parquet file (from 0).
    Parquet(Arc<str>, u64),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Line(file, line) => write!(f, "{file}:{line}"),
            Origin::Row(s) => f.write_str(s),
            Origin::Parquet(file, row) => write!(f, "{file}: row {row}"),
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
    /// The logging policy's version and its model's version at the
    /// decision, when the source has them (the service's log, JSONL, the
    /// Parquet export).
    pub versions: Option<(i32, i64)>,
    /// When it was decided, when the source says.
    pub decided_at: Option<DateTime<Utc>>,
    /// The logged action's id.
    pub action: String,
    /// Its logging propensity.
    pub pscore: f64,
    /// The (summed) reward; `None` when none was logged.
    pub reward: Option<f64>,
    /// The log says the outcome is final: it holds the default reward
    /// (the service's default row, JSONL `default_reward`), or it was
    /// simulated (JSONL `outcome_final`).
    pub reward_final: bool,
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
    /// For a slate: its items top first, each with its probability given
    /// the items above it (the `slate` column).
    pub slate: Option<Vec<CandidateProb>>,
    /// For a slate: the summed rewards of each item that has any, by
    /// action id (`reward` holds the top item's).
    pub item_rewards: Option<std::collections::BTreeMap<String, f64>>,
    /// The reward rule the log itself states for this event (a Nudge
    /// export's `window_closes_at` and `default_reward` columns); used when
    /// neither `--reward-window` nor a policy file gives one.
    pub rule: Option<super::window::RewardRule>,
}

impl LogRecord {
    /// A JSONL line's event as a record (`origin` names where it came from).
    pub fn from_logged(ev: LoggedEvent, origin: Origin) -> LogRecord {
        LogRecord {
            event_id: ev.event_id,
            origin,
            policy: Some(ev.policy),
            versions: Some((ev.policy_version, ev.model_version)),
            decided_at: Some(ev.decided_at),
            action: ev.action,
            pscore: ev.probability,
            reward: ev.reward,
            reward_final: ev.default_reward || ev.outcome_final,
            position: 0,
            context: Some(ev.context),
            actions: ev.actions,
            candidates: ev.candidates,
            features: Vec::new(),
            slate: ev.slate.and_then(|v| serde_json::from_value(v).ok()),
            item_rewards: ev.item_rewards,
            rule: None,
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
    /// Read decision times even without a time filter (CSV logs: the
    /// reward window needs them).
    pub with_time: bool,
}

impl Filter {
    pub(crate) fn keeps(&self, policy: Option<&str>, at: Option<DateTime<Utc>>) -> bool {
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

/// Lines a reader skipped by its format's own rule, counted while it
/// streams. The caller keeps a clone of the `Arc` and reads the counts once
/// the stream has ended.
#[derive(Debug, Default)]
pub struct Skips {
    /// DSJSON lines with `"_skipLearn": true` (VW skips them too).
    pub skip_learn: AtomicU64,
}

/// A parsed `--log SOURCE`.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// `postgres://…` or `postgresql://…`.
    Postgres(String),
    /// `sqlite://…` or `sqlite:…`.
    Sqlite(String),
    /// `obd:PATH`, or a path ending in `.csv` (`.csv.gz`, `.csv.zst`): a
    /// CSV in the Open Bandit Dataset layout.
    Obd(PathBuf, ColumnMap),
    /// `parquet:PATH`, a path ending in `.parquet`, or a directory: a
    /// Parquet log ([`super::parquet`]), Nudge's export or a flat table.
    Parquet(PathBuf, ColumnMap),
    /// `dsjson:PATH`, or a path ending in `.dsjson` (`.dsjson.gz`,
    /// `.dsjson.zst`): Vowpal Wabbit's DSJSON ([`super::dsjson`]).
    Dsjson(PathBuf),
    /// Anything else: a JSONL file (compressed by extension).
    Jsonl(PathBuf),
}

impl Source {
    /// Parses a `--log` argument.
    pub fn parse(s: &str) -> Source {
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            Source::Postgres(s.to_string())
        } else if s.starts_with("sqlite:") {
            Source::Sqlite(s.to_string())
        } else if let Some(p) = super::dsjson::dsjson_path(s) {
            Source::Dsjson(p)
        } else if let Some(p) = super::parquet::parquet_path(s) {
            Source::Parquet(p, ColumnMap::default())
        } else if let Some(p) = s.strip_prefix("obd:") {
            Source::Obd(PathBuf::from(p), ColumnMap::default())
        } else if is_csv(Path::new(s)) {
            Source::Obd(PathBuf::from(s), ColumnMap::default())
        } else {
            Source::Jsonl(PathBuf::from(s))
        }
    }

    /// The source with a CSV column mapping (`--columns`); an error for a
    /// source that is not a CSV.
    pub fn with_columns(self, columns: ColumnMap) -> anyhow::Result<Source> {
        match self {
            Source::Obd(p, _) => Ok(Source::Obd(p, columns)),
            Source::Parquet(p, _) => Ok(Source::Parquet(p, columns)),
            other => bail!(
                "--columns maps the columns of a CSV log (`.csv`, `.csv.gz`, `.csv.zst` or \
                 `obd:PATH`) or of a Parquet log (`.parquet`, a directory or `parquet:PATH`); \
                 {other:?} is not one"
            ),
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
        self.open_counting(filter, with_features, Arc::default())
    }

    /// [`Source::open`], counting the lines the format's own rules skip
    /// in `skips` (DSJSON `_skipLearn`).
    pub fn open_counting(
        &self,
        filter: &Filter,
        with_features: bool,
        skips: Arc<Skips>,
    ) -> anyhow::Result<Box<dyn Iterator<Item = anyhow::Result<LogRecord>> + Send>> {
        Ok(match self {
            Source::Dsjson(p) => {
                Box::new(super::dsjson::DsjsonReader::open(p, filter.clone(), skips)?)
            }
            Source::Jsonl(p) => Box::new(JsonlReader::open(p, filter.clone())?),
            Source::Obd(p, cols) => Box::new(ObdReader::open_mapped(
                p,
                filter.clone(),
                with_features,
                cols,
            )?),
            Source::Parquet(p, cols) => Box::new(super::parquet::ParquetLogReader::open(
                p,
                filter.clone(),
                with_features,
                cols,
            )?),
            Source::Postgres(url) | Source::Sqlite(url) => {
                Box::new(super::db::DbReader::open(url, filter.clone())?)
            }
        })
    }

    /// The size in bytes of a file source (for the progress bar).
    pub fn file_len(&self) -> Option<u64> {
        match self {
            Source::Jsonl(p) | Source::Obd(p, _) | Source::Dsjson(p) => {
                std::fs::metadata(p).ok().map(|m| m.len())
            }
            Source::Parquet(p, _) => super::parquet::files_of(p).ok().map(|fs| {
                fs.iter()
                    .filter_map(|f| std::fs::metadata(f).ok())
                    .map(|m| m.len())
                    .sum()
            }),
            _ => None,
        }
    }
}

/// Reads the next line that is not blank into `line`, counting lines in
/// `line_no` (from 1); `false` at the end of the file.
pub(crate) fn next_line(
    reader: &mut Input,
    line: &mut String,
    line_no: &mut u64,
    path: &Path,
) -> anyhow::Result<bool> {
    loop {
        line.clear();
        *line_no += 1;
        match reader.read_line(line) {
            Ok(0) => return Ok(false),
            Ok(_) if line.trim().is_empty() => {}
            Ok(_) => return Ok(true),
            Err(e) => bail!("{}:{}: cannot read: {e}", path.display(), line_no),
        }
    }
}

/// Reads a JSONL log ([`crate::logfmt::LoggedEvent`] per line).
pub struct JsonlReader {
    path: PathBuf,
    name: Arc<str>,
    reader: Input,
    line: String,
    line_no: u64,
    filter: Filter,
}

impl JsonlReader {
    /// Opens `path`.
    pub fn open(path: &Path, filter: Filter) -> anyhow::Result<JsonlReader> {
        Ok(JsonlReader {
            name: path.display().to_string().into(),
            path: path.to_path_buf(),
            reader: open_input(path)?,
            line: String::new(),
            line_no: 0,
            filter,
        })
    }

    fn parse(&self) -> anyhow::Result<LoggedEvent> {
        let text = self.line.trim();
        if !text.starts_with('{') {
            let hint = if text.contains(',') {
                "; it looks like CSV: name the file `.csv` (or `.csv.gz`, `.csv.zst`) or give \
                 `obd:PATH`"
            } else {
                ""
            };
            bail!(
                "{}:{}: expected a JSON object (one logged decision per line), found {:?}{hint}",
                self.path.display(),
                self.line_no,
                text.chars().take(40).collect::<String>()
            );
        }
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
            match next_line(
                &mut self.reader,
                &mut self.line,
                &mut self.line_no,
                &self.path,
            ) {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
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
    reader: simd_csv::Reader<RawInput>,
    record: simd_csv::ByteRecord,
    /// The header's number of fields: every row must have as many.
    width: usize,
    row: u64,
    cols: ObdColumns,
    filter: Filter,
    with_features: bool,
    /// Parse the timestamp (a time filter or a reward window needs it).
    needs_time: bool,
}

struct ObdColumns {
    timestamp: Option<(usize, String)>,
    event_id: Option<(usize, String)>,
    item_id: (usize, String),
    position: Option<(usize, String)>,
    click: (usize, String),
    propensity: (usize, String),
    features: Vec<(usize, String)>,
}

/// Which CSV column holds what (`--columns`): by default the Open Bandit
/// Dataset's names.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnMap {
    /// The logged action (`item_id`).
    pub action: String,
    /// The reward (`click`).
    pub reward: String,
    /// The logging propensity (`propensity_score`).
    pub propensity: String,
    /// The slot position, optional (`position`).
    pub position: String,
    /// The decision time, optional (`timestamp`).
    pub timestamp: String,
    /// The event id, optional: without it, data row `i` (from 0) is event `i`.
    pub event_id: Option<String>,
    /// Feature columns: names, or patterns with one `*` (`x_*`).
    pub features: Vec<String>,
    /// Optional columns named explicitly, which must then exist.
    required: Vec<&'static str>,
}

impl Default for ColumnMap {
    fn default() -> ColumnMap {
        ColumnMap {
            action: "item_id".into(),
            reward: "click".into(),
            propensity: "propensity_score".into(),
            position: "position".into(),
            timestamp: "timestamp".into(),
            event_id: None,
            features: vec!["user_feature_*".into(), "user-item_affinity_*".into()],
            required: Vec::new(),
        }
    }
}

impl ColumnMap {
    /// The roles `--columns` accepts.
    pub const ROLES: [&'static str; 7] = [
        "action",
        "reward",
        "propensity",
        "position",
        "timestamp",
        "event_id",
        "features",
    ];

    /// Parses `ROLE=COLUMN` items (`features=` may repeat; each replaces
    /// the default feature patterns).
    pub fn parse(items: &[String]) -> anyhow::Result<ColumnMap> {
        let mut map = ColumnMap::default();
        let mut features = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for item in items {
            let Some((role, col)) = item.split_once('=') else {
                bail!(
                    "--columns: {item:?} is not ROLE=COLUMN (roles: {})",
                    Self::ROLES.join(", ")
                );
            };
            let (role, col) = (role.trim(), col.trim());
            if col.is_empty() {
                bail!("--columns: {role}= names no column");
            }
            let Some(known) = Self::ROLES.iter().find(|r| **r == role) else {
                bail!(
                    "--columns: unknown role {role:?} in {item:?} (roles: {})",
                    Self::ROLES.join(", ")
                );
            };
            if *known != "features" {
                if seen.contains(known) {
                    bail!("--columns: {role} is mapped twice");
                }
                seen.push(known);
            }
            match *known {
                "action" => map.action = col.into(),
                "reward" => map.reward = col.into(),
                "propensity" => map.propensity = col.into(),
                "position" => map.position = col.into(),
                "timestamp" => map.timestamp = col.into(),
                "event_id" => map.event_id = Some(col.into()),
                _ => {
                    if col.matches('*').count() > 1 {
                        bail!("--columns: features={col}: at most one `*` in a pattern");
                    }
                    features.push(col.to_string());
                }
            }
            if matches!(*known, "position" | "timestamp" | "event_id") {
                map.required.push(known);
            }
        }
        if !features.is_empty() {
            map.features = features;
        }
        Ok(map)
    }

    /// Whether an optional role was named explicitly (its column must then
    /// exist).
    pub(crate) fn is_required(&self, role: &str) -> bool {
        self.required.contains(&role)
    }

    pub(crate) fn is_feature(&self, header: &str) -> bool {
        self.features.iter().any(|p| match p.split_once('*') {
            None => p == header,
            Some((pre, post)) => {
                header.len() >= pre.len() + post.len()
                    && header.starts_with(pre)
                    && header.ends_with(post)
            }
        })
    }
}

impl ObdReader {
    /// Opens `path` and checks its header.
    pub fn open(path: &Path, filter: Filter, with_features: bool) -> anyhow::Result<ObdReader> {
        Self::open_mapped(path, filter, with_features, &ColumnMap::default())
    }

    /// Opens `path` with a column mapping and checks its header.
    pub fn open_mapped(
        path: &Path,
        filter: Filter,
        with_features: bool,
        map: &ColumnMap,
    ) -> anyhow::Result<ObdReader> {
        if filter.policy_id.is_some() {
            bail!(
                "{}: an Open Bandit Dataset CSV has no policy column; drop --policy-id",
                path.display()
            );
        }
        let mut reader = csv_reader(path)?;
        let headers = csv_headers(&mut reader, path)?;
        let find = |name: &str| {
            headers
                .iter()
                .position(|h| h.trim() == name)
                .map(|i| (i, name.to_string()))
        };
        let default = *map == ColumnMap::default();
        let need = |role: &str, name: &str| {
            find(name).ok_or_else(|| {
                let found = headers.join(",");
                if default {
                    anyhow::anyhow!(
                        "{}:1: missing column `{name}` (an Open Bandit Dataset CSV has timestamp, \
                         item_id, position, click, propensity_score, user_feature_*, \
                         user-item_affinity_*; map other names with --columns \
                         {role}=COLUMN,…); the header is `{found}`",
                        path.display()
                    )
                } else {
                    anyhow::anyhow!(
                        "{}:1: missing column `{name}` (mapped to {role} by --columns); the \
                         header is `{found}`",
                        path.display()
                    )
                }
            })
        };
        let optional = |role: &'static str, name: &str| {
            if map.required.contains(&role) {
                need(role, name).map(Some)
            } else {
                Ok(find(name))
            }
        };
        let cols = ObdColumns {
            timestamp: optional("timestamp", &map.timestamp)?,
            event_id: match &map.event_id {
                Some(c) => Some(need("event_id", c)?),
                None => None,
            },
            item_id: need("action", &map.action)?,
            position: optional("position", &map.position)?,
            click: need("reward", &map.reward)?,
            propensity: need("propensity", &map.propensity)?,
            features: headers
                .iter()
                .enumerate()
                .filter(|(_, h)| map.is_feature(h.trim()))
                .map(|(i, h)| (i, h.to_string()))
                .collect(),
        };
        Ok(ObdReader {
            name: path.display().to_string().into(),
            path: path.to_path_buf(),
            reader,
            record: simd_csv::ByteRecord::new(),
            width: headers.len(),
            row: 0,
            cols,
            needs_time: filter.since.is_some() || filter.until.is_some() || filter.with_time,
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
        if let Some(v) = self.record.get(col).and_then(parse_number) {
            return Ok(v);
        }
        let s = self.field(col, name)?;
        parse_number(s.as_bytes()).ok_or_else(|| {
            anyhow::anyhow!(
                "{}:{}: field `{name}`: {s:?} is not a number",
                self.path.display(),
                self.row + 2
            )
        })
    }

    fn parse(&self) -> anyhow::Result<Option<LogRecord>> {
        let line = self.row + 2;
        let at = match &self.cols.timestamp {
            Some((c, name)) if self.needs_time => {
                let s = self.field(*c, name)?;
                Some(parse_obd_time(s).ok_or_else(|| {
                    anyhow::anyhow!(
                        "{}:{line}: field `{name}`: {s:?} is not a timestamp (RFC 3339, or \
                         `YYYY-MM-DD HH:MM:SS+00:00`)",
                        self.path.display()
                    )
                })?)
            }
            _ => None,
        };
        if !self.filter.keeps(None, at) {
            return Ok(None);
        }
        let (c, name) = &self.cols.item_id;
        let action = self.field(*c, name)?.trim().to_string();
        if action.is_empty() {
            bail!(
                "{}:{line}: field `{name}` (the action): empty",
                self.path.display()
            );
        }
        let position = match &self.cols.position {
            Some((c, name)) => {
                let p = self.number(*c, name)?;
                if p < 0.0 || p.fract() != 0.0 || p > f64::from(u32::MAX) {
                    bail!(
                        "{}:{line}: field `{name}` (the position): {p} is not a non-negative \
                         integer",
                        self.path.display()
                    );
                }
                p as u32
            }
            None => 0,
        };
        let reward = self.number(self.cols.click.0, &self.cols.click.1)?;
        let pscore = self.number(self.cols.propensity.0, &self.cols.propensity.1)?;
        let event_id = match &self.cols.event_id {
            Some((c, name)) => {
                let id = self.field(*c, name)?.trim();
                if id.is_empty() {
                    bail!(
                        "{}:{line}: field `{name}` (the event id): empty",
                        self.path.display()
                    );
                }
                id.to_string()
            }
            None => self.row.to_string(),
        };
        let mut features = Vec::new();
        if self.with_features {
            for (c, name) in &self.cols.features {
                let s = self.field(*c, name)?;
                match parse_number(s.as_bytes()) {
                    Some(v) => features.push(v),
                    // Categorical (hashed) user features: one-hot by hashing
                    // into a few buckets so every row has the same width.
                    None => features.extend(hashed_one_hot(s, 8)),
                }
            }
        }
        Ok(Some(LogRecord {
            event_id,
            origin: Origin::Line(self.name.clone(), line),
            policy: None,
            versions: None,
            decided_at: at,
            action,
            pscore,
            reward: Some(reward),
            reward_final: false,
            position,
            context: None,
            actions: None,
            candidates: Vec::new(),
            features,
            slate: None,
            item_rewards: None,
            rule: None,
        }))
    }
}

/// A CSV reader for the log and per-event files (`simd-csv`): a header
/// row, `"` quoting, rows of any length (the callers check each row's
/// fields and name what is missing).
pub(crate) fn csv_reader(path: &Path) -> anyhow::Result<simd_csv::Reader<RawInput>> {
    Ok(simd_csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .buffer_capacity(1 << 20)
        .from_reader(open_raw(path)?))
}

/// The header row of `reader` as strings (trimmed of a UTF-8 BOM).
pub(crate) fn csv_headers(
    reader: &mut simd_csv::Reader<RawInput>,
    path: &Path,
) -> anyhow::Result<Vec<String>> {
    let headers = reader
        .byte_headers()
        .map_err(|e| anyhow::anyhow!("{}:1: cannot read the header: {e}", path.display()))?;
    header_strings(headers, path)
}

/// A header row as strings (trimmed of a UTF-8 BOM), or which column is
/// not UTF-8.
pub(crate) fn header_strings(
    headers: &simd_csv::ByteRecord,
    path: &Path,
) -> anyhow::Result<Vec<String>> {
    headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let h = if i == 0 {
                h.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(h)
            } else {
                h
            };
            String::from_utf8(h.to_vec())
                .map_err(|_| anyhow::anyhow!("{}:1: column {}: not UTF-8", path.display(), i + 1))
        })
        .collect()
}

/// A number cell: a decimal float, surrounding ASCII whitespace allowed
/// (`fast-float2`: correctly rounded, the same value `str::parse` gives).
pub(crate) fn parse_number(raw: &[u8]) -> Option<f64> {
    fast_float2::parse(raw.trim_ascii()).ok()
}

/// A one-hot vector of width `k` from a stable hash of `s`.
pub(crate) fn hashed_one_hot(s: &str, k: usize) -> Vec<f64> {
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

pub(crate) fn parse_obd_time(s: &str) -> Option<DateTime<Utc>> {
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
            if self.record.len() != self.width {
                let (line, n) = (self.row + 2, self.record.len());
                self.row += 1;
                return Some(Err(anyhow::anyhow!(
                    "{}:{line}: malformed CSV: {n} fields, but the header has {} (a row \
                     {} than the header)",
                    self.path.display(),
                    self.width,
                    if n < self.width { "shorter" } else { "longer" },
                )));
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
