//! Parquet logs and per-event files, read by row group through Arrow in
//! bounded memory (one batch of [`BATCH`] rows per file at a time).
//!
//! A `--log` in Parquet is a file, or a directory read as one dataset: every
//! `*.parquet` file below it in path order (names starting with `.` or `_`
//! are skipped, as Spark and DuckDB skip them). Two layouts are read:
//!
//! - **Nudge's export** ([`EXPORT_FIELDS`], written by `nudge-sim export`):
//!   recognised by its `candidates` and `reward_final` columns. The policy
//!   comes from a `policy` column or, as Hive partitioning writes it, from a
//!   `policy=ID` directory of the path; a `date=YYYY-MM-DD` directory lets a
//!   time filter skip whole files.
//! - **A flat table** in the Open Bandit Dataset's names, or any names mapped
//!   with `--columns` ([`ColumnMap`]): action, reward, propensity, and
//!   optionally position, timestamp, event id and numeric feature columns.
//!   Without an event-id column, row `i` of the dataset (from 0, across
//!   files) is event `i`, as in a CSV.
//!
//! Column types are cast as needed (integers or strings as ids, any number
//! as a float, a timestamp column or RFC 3339 text as the decision time), so
//! a table written by pandas, Polars, Spark or DuckDB reads as it is. An
//! error names the file, the row group and row, the column and what was
//! expected.

use super::candidate::Pairs;
use super::source::{ColumnMap, Filter, LogRecord, Origin};
use super::window::RewardRule;
use crate::logfmt::CandidateProb;
use anyhow::{Context, bail};
use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMicrosecondType;
use arrow_array::{Array, ArrayRef, RecordBatch, RecordBatchReader};
use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, NaiveDate, Utc};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Rows per Arrow batch read or written.
pub const BATCH: usize = 8192;

/// The export's schema version, written to the file metadata
/// (`nudge.export.schema`) and the manifest.
pub const SCHEMA_VERSION: u32 = 2;

/// The export's columns, in order, with their meaning. The policy id and
/// the UTC day are the Hive partition directories (`policy=ID/date=DAY`),
/// not columns, as Spark, DuckDB and Polars expect of a partitioned dataset.
pub const EXPORT_FIELDS: [(&str, &str); 15] = [
    (
        "event_id",
        "string: the decision's event id, unique per policy",
    ),
    ("decided_at", "timestamp (µs, UTC): when it was decided"),
    (
        "policy_version",
        "int32, null when the source has none: the policy file's version that decided",
    ),
    (
        "model_version",
        "int64, null when the source has none: the model's version (updates learned) at the \
         decision",
    ),
    ("action", "string: the chosen action (a slate's top item)"),
    (
        "probability",
        "double: its propensity under the logging policy",
    ),
    (
        "reward",
        "double, null when none was logged: the chosen action's reward (summed under `sum` \
         aggregation; the default once the window closed without one)",
    ),
    (
        "reward_final",
        "boolean: the log says the outcome is final (the default reward row was written); \
         false does not mean open: the window rule of the policy decides",
    ),
    (
        "window_closes_at",
        "timestamp (µs, UTC), null when the policy's window was unknown to the export: when \
         the reward window closes; from then on a null reward is `default_reward`, before then \
         the outcome is open and the event must be left out, rewarded or not",
    ),
    (
        "default_reward",
        "double, null when the policy was unknown to the export: the reward of an event that \
         got none in its window",
    ),
    (
        "candidates",
        "string (JSON): every candidate `[{id, probability, excluded_by?}]` in arm order; an \
         ineligible one has probability 0 and `excluded_by`",
    ),
    ("context", "string (JSON): the request context as sent"),
    (
        "actions",
        "string (JSON), null in disjoint mode: the candidate actions with their features",
    ),
    (
        "slate",
        "string (JSON), null unless a slate: its items top first, each with its probability \
         given the items above it",
    ),
    (
        "item_rewards",
        "string (JSON), null unless a slate: each rewarded item's summed reward",
    ),
];

/// The Arrow schema of [`EXPORT_FIELDS`].
pub fn export_schema() -> SchemaRef {
    let field = |name: &str, dt: DataType, nullable: bool| Field::new(name, dt, nullable);
    Arc::new(Schema::new(vec![
        field("event_id", DataType::Utf8, false),
        field(
            "decided_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
        field("policy_version", DataType::Int32, true),
        field("model_version", DataType::Int64, true),
        field("action", DataType::Utf8, false),
        field("probability", DataType::Float64, false),
        field("reward", DataType::Float64, true),
        field("reward_final", DataType::Boolean, false),
        field(
            "window_closes_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        field("default_reward", DataType::Float64, true),
        field("candidates", DataType::Utf8, false),
        field("context", DataType::Utf8, false),
        field("actions", DataType::Utf8, true),
        field("slate", DataType::Utf8, true),
        field("item_rewards", DataType::Utf8, true),
    ]))
}

/// Accumulates records as export rows and hands them out as batches.
pub struct ExportBatch {
    event_id: StringBuilder,
    decided_at: TimestampMicrosecondBuilder,
    policy_version: Int32Builder,
    model_version: Int64Builder,
    action: StringBuilder,
    probability: Float64Builder,
    reward: Float64Builder,
    reward_final: BooleanBuilder,
    window_closes_at: TimestampMicrosecondBuilder,
    default_reward: Float64Builder,
    candidates: StringBuilder,
    context: StringBuilder,
    actions: StringBuilder,
    slate: StringBuilder,
    item_rewards: StringBuilder,
    len: usize,
}

impl Default for ExportBatch {
    fn default() -> ExportBatch {
        ExportBatch {
            event_id: StringBuilder::new(),
            decided_at: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            policy_version: Int32Builder::new(),
            model_version: Int64Builder::new(),
            action: StringBuilder::new(),
            probability: Float64Builder::new(),
            reward: Float64Builder::new(),
            reward_final: BooleanBuilder::new(),
            window_closes_at: TimestampMicrosecondBuilder::new().with_timezone("UTC"),
            default_reward: Float64Builder::new(),
            candidates: StringBuilder::new(),
            context: StringBuilder::new(),
            actions: StringBuilder::new(),
            slate: StringBuilder::new(),
            item_rewards: StringBuilder::new(),
            len: 0,
        }
    }
}

impl ExportBatch {
    /// Adds one record (it must have a decision time), with its policy's
    /// reward rule when known (`window_closes_at`, `default_reward`).
    pub fn push(&mut self, rec: &LogRecord, rule: Option<RewardRule>) -> anyhow::Result<()> {
        let at = rec
            .decided_at
            .with_context(|| format!("{}: no decision time to export", rec.origin))?;
        let json = |v: &serde_json::Value| v.to_string();
        self.event_id.append_value(&rec.event_id);
        self.decided_at.append_value(at.timestamp_micros());
        self.policy_version.append_option(rec.versions.map(|v| v.0));
        self.model_version.append_option(rec.versions.map(|v| v.1));
        self.action.append_value(&rec.action);
        self.probability.append_value(rec.pscore);
        self.reward.append_option(rec.reward);
        self.reward_final.append_value(rec.reward_final);
        self.window_closes_at
            .append_option(rule.map(|r| (at + r.window).timestamp_micros()));
        self.default_reward.append_option(rule.map(|r| r.default));
        self.candidates
            .append_value(serde_json::to_string(&rec.candidates)?);
        self.context
            .append_value(rec.context.as_ref().map_or_else(|| "{}".to_string(), json));
        self.actions.append_option(rec.actions.as_ref().map(json));
        self.slate
            .append_option(rec.slate.as_ref().map(serde_json::to_string).transpose()?);
        self.item_rewards.append_option(
            rec.item_rewards
                .as_ref()
                .map(serde_json::to_string)
                .transpose()?,
        );
        self.len += 1;
        Ok(())
    }

    /// Rows held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no row is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The rows held as a batch of [`export_schema`]; the builder is empty
    /// afterwards.
    pub fn finish(&mut self) -> anyhow::Result<RecordBatch> {
        self.len = 0;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.event_id.finish()),
            Arc::new(self.decided_at.finish()),
            Arc::new(self.policy_version.finish()),
            Arc::new(self.model_version.finish()),
            Arc::new(self.action.finish()),
            Arc::new(self.probability.finish()),
            Arc::new(self.reward.finish()),
            Arc::new(self.reward_final.finish()),
            Arc::new(self.window_closes_at.finish()),
            Arc::new(self.default_reward.finish()),
            Arc::new(self.candidates.finish()),
            Arc::new(self.context.finish()),
            Arc::new(self.actions.finish()),
            Arc::new(self.slate.finish()),
            Arc::new(self.item_rewards.finish()),
        ];
        Ok(RecordBatch::try_new(export_schema(), cols)?)
    }
}

/// Whether a `--log`, `--target-probs` or `--reward-model` argument names
/// Parquet: a `parquet:` prefix (stripped), a path ending in `.parquet`, or
/// a directory holding Parquet files.
pub fn parquet_path(arg: &str) -> Option<PathBuf> {
    if let Some(p) = arg.strip_prefix("parquet:") {
        return Some(PathBuf::from(p));
    }
    let path = Path::new(arg);
    if arg.to_ascii_lowercase().ends_with(".parquet") || path.is_dir() {
        return Some(path.to_path_buf());
    }
    None
}

/// Rows of a table read as text: where each is (for errors), its cells.
pub type TextRows = Vec<(String, Vec<String>)>;

/// A small Parquet table (a file or a dataset directory) read whole, every
/// column cast to text: the column names, and each row with where it is
/// (`file: row group G, row R`, for errors) and its cells (a null is an
/// error). For lookup tables such as `--action-embeddings`, not for logs.
pub fn string_table(path: &Path) -> anyhow::Result<(Vec<String>, TextRows)> {
    let mut headers: Option<Vec<String>> = None;
    let mut rows = Vec::new();
    for file in files_of(path)? {
        let (mut t, schema) = Table::open(&file, |s| Ok((0..s.fields().len()).collect()))?;
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        match &headers {
            None => headers = Some(names.clone()),
            Some(h) if *h != names => {
                bail!("{}: its columns differ from the first file's", t.name)
            }
            Some(_) => {}
        }
        let mut cols = Vec::new();
        while t.advance()? {
            if t.fresh() {
                cols = names
                    .iter()
                    .enumerate()
                    .map(|(i, n)| Ok(t.column(i, n, &DataType::Utf8)?.as_string::<i32>().clone()))
                    .collect::<anyhow::Result<Vec<_>>>()?;
            }
            let mut cells = Vec::with_capacity(cols.len());
            for (col, n) in cols.iter().zip(&names) {
                if col.is_null(t.at) {
                    bail!("{}: {}: column `{n}`: null", t.name, t.where_());
                }
                cells.push(col.value(t.at).to_string());
            }
            rows.push((format!("{}: {}", t.name, t.where_()), cells));
        }
    }
    Ok((headers.unwrap_or_default(), rows))
}

/// The Parquet files of `path`: the file itself, or every `*.parquet` file
/// below the directory in path order, skipping names that start with `.`
/// or `_` (temporary files, manifests). Errors when there are none.
pub fn files_of(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("cannot open {}", path.display()))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
        for entry in
            std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?
        {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || name.starts_with('_') {
                continue;
            }
            let p = entry.path();
            if entry.file_type()?.is_dir() {
                walk(&p, out)?;
            } else if name.to_ascii_lowercase().ends_with(".parquet") {
                out.push(p);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(path, &mut out)?;
    out.sort();
    if out.is_empty() {
        bail!("{}: a directory without any .parquet file", path.display());
    }
    Ok(out)
}

/// The value of a Hive partition directory `key=value` in `path`
/// (percent-decoded), the innermost one.
pub fn hive_value(path: &Path, key: &str) -> Option<String> {
    path.components().rev().find_map(|c| {
        let s = c.as_os_str().to_str()?;
        let v = s.strip_prefix(key)?.strip_prefix('=')?;
        Some(percent_decode(v))
    })
}

/// Escapes a partition value as Hive does: `%XX` for every byte outside
/// `[A-Za-z0-9_.-]` (so `/`, `=` and `%` cannot break the layout).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One open Parquet file, read batch by batch with the columns it needs,
/// cast to the types they are used as.
struct Table {
    name: Arc<str>,
    reader: ParquetRecordBatchReader,
    /// Rows of each row group, to name the group of a row in errors.
    group_rows: Vec<i64>,
    /// The first row of the current batch, within the file.
    batch_start: u64,
    batch: Option<RecordBatch>,
    /// The row within the batch.
    at: usize,
}

impl Table {
    /// Opens `path` reading only the columns `want` picks out of the
    /// file's schema (they come back in file order).
    fn open(
        path: &Path,
        want: impl FnOnce(&Schema) -> anyhow::Result<Vec<usize>>,
    ) -> anyhow::Result<(Table, SchemaRef)> {
        let name: Arc<str> = path.display().to_string().into();
        let file = File::open(path).with_context(|| format!("cannot open {name}"))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(file)
            .with_context(|| format!("{name}: not a Parquet file"))?;
        let schema = builder.schema().clone();
        let cols = want(&schema).with_context(|| name.to_string())?;
        let group_rows = builder
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.num_rows())
            .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), cols);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(BATCH)
            .build()
            .with_context(|| format!("{name}: cannot read"))?;
        let projected = reader.schema();
        Ok((
            Table {
                name,
                reader,
                group_rows,
                batch_start: 0,
                batch: None,
                at: 0,
            },
            projected,
        ))
    }

    /// Moves to the next row; `false` at the end of the file.
    fn advance(&mut self) -> anyhow::Result<bool> {
        if let Some(b) = &self.batch {
            self.at += 1;
            if self.at < b.num_rows() {
                return Ok(true);
            }
            self.batch_start += b.num_rows() as u64;
        }
        loop {
            match self.reader.next() {
                None => {
                    self.batch = None;
                    return Ok(false);
                }
                Some(Err(e)) => bail!("{}: {}: cannot read: {e}", self.name, self.where_()),
                Some(Ok(b)) if b.num_rows() == 0 => continue,
                Some(Ok(b)) => {
                    self.batch = Some(b);
                    self.at = 0;
                    return Ok(true);
                }
            }
        }
    }

    /// Whether the current row is the first of a new batch (columns must
    /// be cast again).
    fn fresh(&self) -> bool {
        self.at == 0
    }

    fn row(&self) -> u64 {
        self.batch_start + self.at as u64
    }

    /// "row group G, row R" of the current row (both from 0; R within the
    /// file).
    fn where_(&self) -> String {
        let row = self.row();
        let mut start = 0u64;
        for (g, n) in self.group_rows.iter().enumerate() {
            if row < start + *n as u64 {
                return format!("row group {g}, row {row}");
            }
            start += *n as u64;
        }
        format!("row {row}")
    }

    /// Column `i` of the current batch cast to `to`.
    fn column(&self, i: usize, name: &str, to: &DataType) -> anyhow::Result<ArrayRef> {
        let b = self.batch.as_ref().expect("a batch is current");
        let col = b.column(i);
        if col.data_type() == to {
            return Ok(col.clone());
        }
        arrow_cast::cast(col, to).map_err(|e| {
            anyhow::anyhow!(
                "{}: {}: column `{name}`: a {} column cannot be read as {to}: {e}",
                self.name,
                self.where_(),
                col.data_type()
            )
        })
    }
}

/// A column of the current batch, cast once per batch.
enum Col {
    Str(arrow_array::StringArray),
    F64(arrow_array::Float64Array),
    Time(arrow_array::PrimitiveArray<TimestampMicrosecondType>),
    Bool(arrow_array::BooleanArray),
}

/// How each column is read.
#[derive(Clone, Copy, PartialEq)]
enum As {
    Str,
    F64,
    /// A timestamp column (any unit, as UTC) or RFC 3339 text.
    Time,
    Bool,
    /// A feature: numbers as they are; text parsed as a number, else
    /// one-hot hashed into 8 buckets, as the CSV reader does.
    Feature,
}

/// Which projected column plays which role, and how it is read.
struct Roles {
    /// `(index in the projected schema, column name, how)`.
    cols: Vec<(usize, String, As)>,
}

impl Roles {
    fn cast(&self, t: &Table, schema: &Schema) -> anyhow::Result<Vec<Col>> {
        self.cols
            .iter()
            .map(|(i, name, how)| {
                let dt = schema.field(*i).data_type();
                Ok(match how {
                    As::Str => Col::Str(t.column(*i, name, &DataType::Utf8)?.as_string().clone()),
                    As::F64 => Col::F64(
                        t.column(*i, name, &DataType::Float64)?
                            .as_primitive()
                            .clone(),
                    ),
                    As::Bool => {
                        Col::Bool(t.column(*i, name, &DataType::Boolean)?.as_boolean().clone())
                    }
                    As::Time
                        if matches!(
                            dt,
                            DataType::Timestamp(..) | DataType::Date32 | DataType::Date64
                        ) =>
                    {
                        Col::Time(
                            t.column(
                                *i,
                                name,
                                &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                            )?
                            .as_primitive()
                            .clone(),
                        )
                    }
                    As::Time => Col::Str(t.column(*i, name, &DataType::Utf8)?.as_string().clone()),
                    As::Feature
                        if matches!(
                            dt,
                            DataType::Utf8
                                | DataType::LargeUtf8
                                | DataType::Utf8View
                                | DataType::Dictionary(..)
                        ) =>
                    {
                        Col::Str(t.column(*i, name, &DataType::Utf8)?.as_string().clone())
                    }
                    As::Feature => Col::F64(
                        t.column(*i, name, &DataType::Float64)?
                            .as_primitive()
                            .clone(),
                    ),
                })
            })
            .collect()
    }
}

/// The index of column `name` in `schema`.
fn index_of(schema: &Schema, name: &str) -> Option<usize> {
    schema.fields().iter().position(|f| f.name() == name)
}

fn need(schema: &Schema, name: &str, why: &str) -> anyhow::Result<usize> {
    index_of(schema, name).ok_or_else(|| {
        let found = schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(",");
        anyhow::anyhow!("missing column `{name}` ({why}); the columns are `{found}`")
    })
}

/// The layout of one file of a Parquet log.
enum Layout {
    /// Nudge's export: the 11 columns every schema has, by position in
    /// `Roles::cols`, then the optional ones where present.
    Export {
        policy: Option<usize>,
        closes: Option<usize>,
        default: Option<usize>,
        versions: Option<(usize, usize)>,
    },
    /// A flat table: the role of each projected column (by position in
    /// `Roles::cols`): action, reward, propensity, then optional
    /// position, timestamp, event id, then features.
    Flat {
        position: bool,
        timestamp: bool,
        event_id: bool,
        features: usize,
    },
}

/// Streams the records of a Parquet log ([module docs](self)).
pub struct ParquetLogReader {
    files: std::vec::IntoIter<PathBuf>,
    map: ColumnMap,
    filter: Filter,
    with_features: bool,
    needs_time: bool,
    /// Rows of the dataset before the current file (flat tables' event ids).
    dataset_row: u64,
    cur: Option<Current>,
}

struct Current {
    table: Table,
    schema: SchemaRef,
    layout: Layout,
    roles: Roles,
    cols: Vec<Col>,
    policy: Option<String>,
}

impl ParquetLogReader {
    /// Opens the log at `path` (a file or a directory) with the column
    /// mapping `map` (flat tables only).
    pub fn open(
        path: &Path,
        filter: Filter,
        with_features: bool,
        map: &ColumnMap,
    ) -> anyhow::Result<ParquetLogReader> {
        let files = files_of(path)?;
        Ok(ParquetLogReader {
            files: files.into_iter(),
            map: map.clone(),
            needs_time: filter.since.is_some() || filter.until.is_some() || filter.with_time,
            filter,
            with_features,
            dataset_row: 0,
            cur: None,
        })
    }

    /// Whether a whole file can be skipped by its partition directories.
    fn skips(&self, path: &Path) -> bool {
        if let (Some(want), Some(have)) = (&self.filter.policy_id, hive_value(path, "policy"))
            && *want != have
        {
            return true;
        }
        if let Some(day) =
            hive_value(path, "date").and_then(|d| NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok())
        {
            let start = day.and_hms_opt(0, 0, 0).expect("midnight").and_utc();
            let end = start + chrono::Duration::days(1);
            if self.filter.since.is_some_and(|s| end <= s)
                || self.filter.until.is_some_and(|u| start >= u)
            {
                return true;
            }
        }
        false
    }

    fn open_next(&mut self) -> anyhow::Result<bool> {
        if let Some(c) = &self.cur {
            self.dataset_row += c.table.group_rows.iter().sum::<i64>() as u64;
        }
        self.cur = None;
        loop {
            let Some(path) = self.files.next() else {
                return Ok(false);
            };
            if self.skips(&path) {
                continue;
            }
            let map = self.map.clone();
            let with_features = self.with_features;
            let needs_time = self.needs_time;
            let mut layout = None;
            let mut roles = Vec::new();
            let (table, schema) = Table::open(&path, |schema| {
                let export = index_of(schema, "candidates").is_some()
                    && index_of(schema, "reward_final").is_some();
                let pick = |name: &str, how: As| (name.to_string(), how);
                let mut wanted: Vec<(usize, (String, As))> = Vec::new();
                if export {
                    let why = "Nudge's export layout";
                    for (name, how) in [
                        ("event_id", As::Str),
                        ("decided_at", As::Time),
                        ("action", As::Str),
                        ("probability", As::F64),
                        ("reward", As::F64),
                        ("reward_final", As::Bool),
                        ("candidates", As::Str),
                        ("context", As::Str),
                        ("actions", As::Str),
                        ("slate", As::Str),
                        ("item_rewards", As::Str),
                    ] {
                        wanted.push((need(schema, name, why)?, pick(name, how)));
                    }
                    // Schema 1 has no window columns; a `policy` column is
                    // there when a tool flattened the Hive directories.
                    let mut optional = |name: &str, how: As| {
                        index_of(schema, name).map(|i| {
                            wanted.push((i, pick(name, how)));
                            wanted.len() - 1
                        })
                    };
                    let policy = optional("policy", As::Str);
                    let closes = optional("window_closes_at", As::Time);
                    let default = optional("default_reward", As::F64);
                    let policy_version = optional("policy_version", As::F64);
                    let model_version = optional("model_version", As::F64);
                    layout = Some(Layout::Export {
                        policy,
                        closes,
                        default,
                        versions: policy_version.zip(model_version),
                    });
                } else {
                    let why = |role: &str| {
                        if map == ColumnMap::default() {
                            format!(
                                "the {role}; a flat log has item_id, click, propensity_score \
                                 and optionally position, timestamp, user_feature_*; map other \
                                 names with --columns {role}=COLUMN, or give Nudge's export"
                            )
                        } else {
                            format!("mapped to {role} by --columns")
                        }
                    };
                    wanted.push((
                        need(schema, &map.action, &why("action"))?,
                        pick(&map.action, As::Str),
                    ));
                    wanted.push((
                        need(schema, &map.reward, &why("reward"))?,
                        pick(&map.reward, As::F64),
                    ));
                    wanted.push((
                        need(schema, &map.propensity, &why("propensity"))?,
                        pick(&map.propensity, As::F64),
                    ));
                    let optional =
                        |name: &str, role: &'static str| -> anyhow::Result<Option<usize>> {
                            match index_of(schema, name) {
                                Some(i) => Ok(Some(i)),
                                None if map.is_required(role) => Err(anyhow::anyhow!(
                                    "missing column `{name}` (mapped to {role} by --columns)"
                                )),
                                None => Ok(None),
                            }
                        };
                    let position = optional(&map.position, "position")?;
                    let timestamp = if needs_time {
                        optional(&map.timestamp, "timestamp")?
                    } else {
                        None
                    };
                    let event_id = match &map.event_id {
                        Some(c) => Some(need(schema, c, &why("event_id"))?),
                        None => None,
                    };
                    if let Some(i) = position {
                        wanted.push((i, pick(&map.position, As::F64)));
                    }
                    if let Some(i) = timestamp {
                        wanted.push((i, pick(&map.timestamp, As::Time)));
                    }
                    if let Some(i) = event_id {
                        wanted.push((i, pick(map.event_id.as_deref().unwrap_or(""), As::Str)));
                    }
                    let mut features = 0;
                    if with_features {
                        for (i, f) in schema.fields().iter().enumerate() {
                            if map.is_feature(f.name()) {
                                wanted.push((i, pick(f.name(), As::Feature)));
                                features += 1;
                            }
                        }
                    }
                    layout = Some(Layout::Flat {
                        position: position.is_some(),
                        timestamp: timestamp.is_some(),
                        event_id: event_id.is_some(),
                        features,
                    });
                }
                // The projection returns columns in file order: remember
                // where each role lands.
                let mut order: Vec<usize> = wanted.iter().map(|(i, _)| *i).collect();
                order.sort_unstable();
                order.dedup();
                for (i, (name, how)) in &wanted {
                    let at = order.binary_search(i).expect("picked");
                    roles.push((at, name.clone(), *how));
                }
                Ok(order)
            })?;
            let layout = layout.expect("set by the projection");
            if matches!(layout, Layout::Flat { .. }) && self.filter.policy_id.is_some() {
                bail!(
                    "{}: a flat Parquet log has no policy column; drop --policy-id",
                    path.display()
                );
            }
            let policy = hive_value(&path, "policy");
            self.cur = Some(Current {
                table,
                schema,
                layout,
                roles: Roles { cols: roles },
                cols: Vec::new(),
                policy,
            });
            return Ok(true);
        }
    }

    fn record(&mut self) -> anyhow::Result<Option<LogRecord>> {
        let dataset_row = self.dataset_row;
        let filter = &self.filter;
        let c = self.cur.as_mut().expect("a file is open");
        if c.table.fresh() {
            c.cols = c.roles.cast(&c.table, &c.schema)?;
        }
        let r = c.table.at;
        let t = &c.table;
        let origin = Origin::Parquet(t.name.clone(), t.row());
        let err = |col: &str, what: String| {
            anyhow::anyhow!("{}: {}: column `{col}`: {what}", t.name, t.where_())
        };
        let name = |k: usize| c.roles.cols[k].1.as_str();
        let string = |k: usize| -> anyhow::Result<Option<&str>> {
            match &c.cols[k] {
                Col::Str(a) => Ok((!a.is_null(r)).then(|| a.value(r))),
                _ => unreachable!("a string role"),
            }
        };
        let required = |k: usize| -> anyhow::Result<&str> {
            match string(k)? {
                Some(s) if !s.trim().is_empty() => Ok(s),
                _ => Err(err(name(k), "empty or null".into())),
            }
        };
        let number = |k: usize, finite: bool| -> anyhow::Result<Option<f64>> {
            match &c.cols[k] {
                Col::F64(a) if a.is_null(r) => Ok(None),
                Col::F64(a) => {
                    let v = a.value(r);
                    if finite && !v.is_finite() {
                        return Err(err(name(k), format!("{v} is not a finite number")));
                    }
                    Ok(Some(v))
                }
                _ => unreachable!("a number role"),
            }
        };
        let time = |k: usize| -> anyhow::Result<Option<DateTime<Utc>>> {
            match &c.cols[k] {
                Col::Time(a) if a.is_null(r) => Ok(None),
                Col::Time(a) => DateTime::from_timestamp_micros(a.value(r))
                    .map(Some)
                    .ok_or_else(|| err(name(k), "a timestamp out of range".into())),
                Col::Str(a) if a.is_null(r) => Ok(None),
                Col::Str(a) => super::source::parse_obd_time(a.value(r))
                    .map(Some)
                    .ok_or_else(|| {
                        err(
                            name(k),
                            format!("{:?} is not a timestamp (RFC 3339)", a.value(r)),
                        )
                    }),
                _ => unreachable!("a time role"),
            }
        };
        let json = |k: usize| -> anyhow::Result<Option<serde_json::Value>> {
            string(k)?
                .map(|s| {
                    serde_json::from_str(s).map_err(|e| err(name(k), format!("invalid JSON: {e}")))
                })
                .transpose()
        };
        match c.layout {
            Layout::Export {
                policy,
                closes,
                default,
                versions,
            } => {
                // Roles in the order pushed above.
                let policy = match policy {
                    Some(k) => string(k)?.map(str::to_string),
                    None => c.policy.clone(),
                };
                let at = time(1)?.ok_or_else(|| err(name(1), "null".into()))?;
                let closes = closes.map(time).transpose()?.flatten();
                let default = default.map(|k| number(k, true)).transpose()?.flatten();
                // Read as floats like every numeric column: versions are
                // small integers, exact in an f64.
                let versions = match versions {
                    Some((p, m)) => number(p, true)?
                        .zip(number(m, true)?)
                        .map(|(p, m)| (p as i32, m as i64)),
                    None => None,
                };
                let rule = match (closes, default) {
                    (Some(closes), Some(default)) if closes >= at => Some(RewardRule {
                        window: closes - at,
                        default,
                        aggregation: None,
                    }),
                    (Some(closes), Some(_)) => {
                        return Err(err(
                            "window_closes_at",
                            format!("{closes} is before the decision time {at}"),
                        ));
                    }
                    _ => None,
                };
                if !filter.keeps(policy.as_deref(), Some(at)) {
                    return Ok(None);
                }
                let candidates: Vec<CandidateProb> = {
                    let text = required(6)?;
                    let mut de = serde_json::Deserializer::from_str(text);
                    serde_path_to_error::deserialize(&mut de)
                        .map_err(|e| err(name(6), format!("at `{}`: {}", e.path(), e.inner())))?
                };
                let slate = string(9)?
                    .map(|s| serde_json::from_str(s).map_err(|e| err(name(9), format!("{e}"))))
                    .transpose()?;
                let item_rewards = string(10)?
                    .map(|s| serde_json::from_str(s).map_err(|e| err(name(10), format!("{e}"))))
                    .transpose()?;
                let reward_final = match &c.cols[5] {
                    Col::Bool(a) => !a.is_null(r) && a.value(r),
                    _ => unreachable!("a boolean role"),
                };
                Ok(Some(LogRecord {
                    event_id: required(0)?.to_string(),
                    origin,
                    policy,
                    versions,
                    decided_at: Some(at),
                    action: required(2)?.to_string(),
                    pscore: number(3, false)?.ok_or_else(|| err(name(3), "null".into()))?,
                    reward: number(4, true)?,
                    reward_final,
                    position: 0,
                    context: Some(json(7)?.unwrap_or(serde_json::Value::Null)),
                    actions: json(8)?,
                    candidates,
                    features: Vec::new(),
                    slate,
                    item_rewards,
                    rule,
                }))
            }
            Layout::Flat {
                position,
                timestamp,
                event_id,
                features,
            } => {
                let mut k = 3;
                let mut next = || {
                    k += 1;
                    k - 1
                };
                let pos_k = position.then(&mut next);
                let time_k = timestamp.then(&mut next);
                let id_k = event_id.then(&mut next);
                let first_feature = k;
                let at = match time_k {
                    Some(k) => time(k)?,
                    None => None,
                };
                if !filter.keeps(None, at) {
                    return Ok(None);
                }
                let position = match pos_k {
                    Some(k) => {
                        let p = number(k, true)?.ok_or_else(|| err(name(k), "null".into()))?;
                        if p < 0.0 || p.fract() != 0.0 || p > f64::from(u32::MAX) {
                            return Err(err(
                                name(k),
                                format!("{p} is not a non-negative integer (the position)"),
                            ));
                        }
                        p as u32
                    }
                    None => 0,
                };
                let event_id = match id_k {
                    Some(k) => required(k)?.trim().to_string(),
                    None => (dataset_row + t.row()).to_string(),
                };
                let mut feats = Vec::with_capacity(features);
                for k in first_feature..first_feature + features {
                    match &c.cols[k] {
                        Col::Str(a) if a.is_null(r) => return Err(err(name(k), "null".into())),
                        Col::Str(a) => match a.value(r).trim().parse::<f64>() {
                            Ok(v) => feats.push(v),
                            Err(_) => feats.extend(super::source::hashed_one_hot(a.value(r), 8)),
                        },
                        _ => {
                            feats.push(number(k, true)?.ok_or_else(|| err(name(k), "null".into()))?)
                        }
                    }
                }
                Ok(Some(LogRecord {
                    event_id,
                    origin,
                    policy: None,
                    versions: None,
                    decided_at: at,
                    action: required(0)?.trim().to_string(),
                    pscore: number(2, false)?.ok_or_else(|| err(name(2), "null".into()))?,
                    reward: Some(number(1, true)?.ok_or_else(|| err(name(1), "null".into()))?),
                    reward_final: false,
                    position,
                    context: None,
                    actions: None,
                    candidates: Vec::new(),
                    features: feats,
                    slate: None,
                    item_rewards: None,
                    rule: None,
                }))
            }
        }
    }
}

impl Iterator for ParquetLogReader {
    type Item = anyhow::Result<LogRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let more = match &mut self.cur {
                None => Ok(false),
                Some(c) => c.table.advance(),
            };
            match more {
                Err(e) => return Some(Err(e)),
                Ok(true) => {}
                Ok(false) => match self.open_next() {
                    Err(e) => return Some(Err(e)),
                    Ok(false) => return None,
                    Ok(true) => continue,
                },
            }
            match self.record() {
                Ok(Some(rec)) => return Some(Ok(rec)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// A per-event file in Parquet (`--target-probs`, `--reward-model`): long
/// (`event_id, action, <value>`: one row per event and action) or wide
/// (`event_id` or `round`, then one column per action: `p0, p1, …` /
/// `q0, q1, …` are actions `0, 1, …`, any other name is the action id).
/// Ids may be strings or integers.
pub struct EventParquet {
    path: PathBuf,
    files: std::vec::IntoIter<PathBuf>,
    value_column: &'static str,
    table: Option<Table>,
    /// Wide: the action of each value column (projected columns 1..).
    wide: Option<Vec<String>>,
    ids: Option<Ids>,
    actions: Option<Ids>,
    values: Vec<arrow_array::Float64Array>,
    /// Whether the current row is read but not yet consumed.
    pending: bool,
    group_id: String,
    group: Pairs,
    group_row: u64,
}

impl EventParquet {
    /// Opens `path` (a file or a directory of files read in path order).
    pub fn open(path: &Path, value_column: &'static str) -> anyhow::Result<EventParquet> {
        let mut f = EventParquet {
            path: path.to_path_buf(),
            files: files_of(path)?.into_iter(),
            value_column,
            table: None,
            wide: None,
            ids: None,
            actions: None,
            values: Vec::new(),
            pending: false,
            group_id: String::new(),
            group: Pairs::default(),
            group_row: 0,
        };
        f.open_next()?;
        Ok(f)
    }

    /// The path given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn open_next(&mut self) -> anyhow::Result<bool> {
        let Some(path) = self.files.next() else {
            self.table = None;
            return Ok(false);
        };
        let value_column = self.value_column;
        let mut wide = None;
        let (table, _) = Table::open(&path, |schema| {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            if let (Some(e), Some(a), Some(v)) = (
                index_of(schema, "event_id"),
                index_of(schema, "action"),
                index_of(schema, value_column),
            ) {
                if !(e < a && a < v) {
                    bail!("columns event_id, action and {value_column} must come in that order");
                }
                return Ok(vec![e, a, v]);
            }
            let first = index_of(schema, "event_id").or_else(|| index_of(schema, "round"));
            let Some(first) = first.filter(|_| index_of(schema, "action").is_none()) else {
                bail!(
                    "the columns must be `event_id, action, {value_column}` (long) or \
                     `event_id` / `round` followed by one column per action (wide, e.g. \
                     `round, {p}0, {p}1, …`); found `{}`",
                    names.join(", "),
                    p = if value_column == "probability" {
                        "p"
                    } else {
                        "q"
                    },
                );
            };
            let prefix = if value_column == "probability" {
                "p"
            } else {
                "q"
            };
            let value_cols: Vec<usize> = (0..names.len()).filter(|i| *i != first).collect();
            if value_cols.iter().any(|i| *i < first) {
                bail!("the event id column `{}` must come first", names[first]);
            }
            let numbered = value_cols
                .iter()
                .enumerate()
                .all(|(j, i)| names[*i].strip_prefix(prefix) == Some(j.to_string().as_str()));
            wide = Some(
                value_cols
                    .iter()
                    .enumerate()
                    .map(|(j, i)| {
                        if numbered {
                            j.to_string()
                        } else {
                            names[*i].to_string()
                        }
                    })
                    .collect::<Vec<_>>(),
            );
            Ok(std::iter::once(first).chain(value_cols).collect())
        })?;
        if let (Some(old), Some(new)) = (&self.wide, &wide)
            && old != new
        {
            bail!(
                "{}: its action columns differ from the first file's",
                path.display()
            );
        }
        self.wide = wide;
        self.table = Some(table);
        Ok(true)
    }

    /// Reads the next row into the cast columns; `false` at the end.
    fn read_row(&mut self) -> anyhow::Result<bool> {
        if self.pending {
            return Ok(true);
        }
        loop {
            let Some(t) = &mut self.table else {
                return Ok(false);
            };
            if !t.advance()? {
                if !self.open_next()? {
                    return Ok(false);
                }
                continue;
            }
            if t.fresh() {
                let b = t.batch.as_ref().expect("a batch");
                let mut cols = Vec::with_capacity(b.num_columns());
                for i in 0..b.num_columns() {
                    let name = b.schema().field(i).name().clone();
                    cols.push((i, name));
                }
                self.ids = Some(Ids::of(t, 0, &cols[0].1)?);
                let first_value = if self.wide.is_some() {
                    self.actions = None;
                    1
                } else {
                    self.actions = Some(Ids::of(t, 1, &cols[1].1)?);
                    2
                };
                self.values = cols[first_value..]
                    .iter()
                    .map(|(i, n)| Ok(t.column(*i, n, &DataType::Float64)?.as_primitive().clone()))
                    .collect::<anyhow::Result<_>>()?;
            }
            self.pending = true;
            return Ok(true);
        }
    }

    fn where_(&self) -> String {
        match &self.table {
            Some(t) => format!("{}: {}", t.name, t.where_()),
            None => self.path.display().to_string(),
        }
    }

    /// Whether the current row's event id is `id`.
    fn id_is(&self, id: &str) -> anyhow::Result<bool> {
        let t = self.table.as_ref().expect("a table");
        match self.ids.as_ref().expect("cast").get(t.at) {
            Some(cell) => Ok(cell.text(&mut itoa::Buffer::new()) == id),
            None => bail!("{}: the event id is null", self.where_()),
        }
    }

    fn value(&self, j: usize) -> anyhow::Result<Option<f64>> {
        let t = self.table.as_ref().expect("a table");
        let a = &self.values[j];
        if a.is_null(t.at) {
            return Ok(None);
        }
        let v = a.value(t.at);
        if !v.is_finite() {
            bail!(
                "{}: value column {}: {v} is not finite",
                self.where_(),
                j + 1
            );
        }
        Ok(Some(v))
    }

    fn next_group(&mut self) -> anyhow::Result<bool> {
        self.group.clear();
        if !self.read_row()? {
            return Ok(false);
        }
        let t = self.table.as_ref().expect("a table");
        match self.ids.as_ref().expect("cast").get(t.at) {
            Some(id) => {
                self.group_id.clear();
                self.group_id.push_str(id.text(&mut itoa::Buffer::new()));
            }
            None => bail!("{}: the event id is null", self.where_()),
        }
        self.group_row = self.table.as_ref().map_or(0, Table::row);
        if let Some(actions) = self.wide.take() {
            let mut out = Ok(());
            for (j, a) in actions.iter().enumerate() {
                match self.value(j) {
                    Ok(Some(v)) => self.group.push(a, v),
                    Ok(None) => {}
                    Err(e) => {
                        out = Err(e);
                        break;
                    }
                }
            }
            self.wide = Some(actions);
            self.pending = false;
            return out.map(|()| true);
        }
        while self.read_row()? {
            if !self.id_is(&self.group_id)? {
                break;
            }
            let v = self.value(0)?.ok_or_else(|| {
                anyhow::anyhow!("{}: column `{}`: null", self.where_(), self.value_column)
            })?;
            let t = self.table.as_ref().expect("a table");
            match self.actions.as_ref().expect("long layout").get(t.at) {
                Some(a) => self.group.push(a.text(&mut itoa::Buffer::new()), v),
                None => bail!("{}: column `action`: null", self.where_()),
            }
            self.pending = false;
        }
        Ok(true)
    }
}

/// An id column (event ids, actions): integers are kept as integers and
/// written as text only where needed, instead of casting every cell to a
/// string.
enum Ids {
    Str(arrow_array::StringArray),
    Int(arrow_array::Int64Array),
}

/// One cell of an [`Ids`] column.
enum IdRef<'a> {
    Str(&'a str),
    Int(i64),
}

impl Ids {
    fn of(t: &Table, i: usize, name: &str) -> anyhow::Result<Ids> {
        let integer = t.batch.as_ref().is_some_and(|b| {
            matches!(
                b.column(i).data_type(),
                DataType::Int8
                    | DataType::Int16
                    | DataType::Int32
                    | DataType::Int64
                    | DataType::UInt8
                    | DataType::UInt16
                    | DataType::UInt32
            )
        });
        Ok(if integer {
            Ids::Int(t.column(i, name, &DataType::Int64)?.as_primitive().clone())
        } else {
            Ids::Str(t.column(i, name, &DataType::Utf8)?.as_string().clone())
        })
    }

    fn get(&self, row: usize) -> Option<IdRef<'_>> {
        match self {
            Ids::Str(a) => (!a.is_null(row)).then(|| IdRef::Str(a.value(row))),
            Ids::Int(a) => (!a.is_null(row)).then(|| IdRef::Int(a.value(row))),
        }
    }
}

impl<'a> IdRef<'a> {
    /// The id as text (an integer written into `buf`).
    fn text<'b>(&self, buf: &'b mut itoa::Buffer) -> &'b str
    where
        'a: 'b,
    {
        match *self {
            IdRef::Str(s) => s,
            IdRef::Int(i) => buf.format(i),
        }
    }
}

impl super::candidate::Groups for EventParquet {
    fn next_group(&mut self) -> anyhow::Result<bool> {
        EventParquet::next_group(self)
    }

    fn group(&self) -> (&str, u64, &Pairs) {
        (&self.group_id, self.group_row, &self.group)
    }

    fn file(&self) -> &Path {
        &self.path
    }
}
