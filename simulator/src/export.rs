//! `nudge-sim export`: the decision log (PostgreSQL, SQLite, or any log
//! `evaluate` reads) to a Parquet dataset partitioned by policy and UTC
//! day (`--as parquet`, the default), or to one Vowpal Wabbit DSJSON file
//! (`--as dsjson`, see [DSJSON](#dsjson)).
//!
//! # Parquet
//!
//! The Hive layout that Spark, DuckDB and Polars read as one table:
//!
//! ```text
//! DIR/policy=push_send/date=2026-11-30/part-0.parquet
//! DIR/policy=push_send/date=2026-12-01/part-0.parquet
//! DIR/_nudge_export.json      (the manifest: schema, partitions, counts)
//! ```
//!
//! The columns are [`crate::ope::parquet::EXPORT_FIELDS`]; the rows are
//! what `evaluate` reads from the database (each decision with its
//! chosen action's reward joined), so evaluating the export gives the
//! estimates evaluating the database gives.
//!
//! **Incremental.** A day's partition is *final* once every reward of its
//! decisions is in: the day's end plus the policy's reward window plus
//! `--settle` (for the log writer's batching and spool) has passed. A
//! final partition is written once and skipped by later runs; a partition
//! that is not final yet is written again by every run (its open events
//! carry what the log has so far, and `evaluate` applies the window rule to
//! them). Each file is written to a hidden temporary name and renamed into
//! place, so a reader never sees half a file and an interrupted run leaves
//! the last complete export.
//!
//! # DSJSON
//!
//! `--to FILE` (`.dsjson`, compressed by `.gz` or `.zst`): one
//! `cb_explore_adf` line per decision whose outcome is final, in the
//! layout of [`crate::ope::dsjson`], which `vw --cb_adf --dsjson` reads
//! and `evaluate --log FILE` reads back as the same records. Finality is
//! the rule `evaluate` applies ([`crate::ope::window`]), judged at
//! `--as-of` minus `--settle`: the log says the outcome is final, or the
//! window has closed (a missing reward is the policy's default), or, with
//! `--keep-first-rewarded`, a rewarded event under `first` aggregation.
//! Events not final yet, and slates (a `cb_adf` line holds one action),
//! are counted, warned about and not written. The file is written whole
//! to a hidden temporary name and renamed into place.

use crate::ope::dsjson;
use crate::ope::parquet::{ExportBatch, SCHEMA_VERSION, export_schema, percent_encode};
use crate::ope::source::{Compression as FileCompression, Filter, Source};
use crate::ope::window::{RewardRule, Windows};
use anyhow::{Context, bail};
use chrono::{DateTime, NaiveDate, Utc};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Rows per Parquet row group: readers stream one group at a time.
const ROW_GROUP: usize = 65_536;

/// The manifest's file name (a leading `_`: dataset readers skip it).
pub const MANIFEST: &str = "_nudge_export.json";

/// `nudge-sim export` arguments.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Where to write: with `--as parquet` the dataset's directory (created
    /// if missing), with `--as dsjson` a file (`.dsjson`, `.dsjson.gz`,
    /// `.dsjson.zst`).
    #[arg(long)]
    pub to: PathBuf,
    /// What to write: `parquet` (a partitioned dataset) or `dsjson` (one
    /// Vowpal Wabbit DSJSON file). Default: dsjson when `--to` ends in
    /// `.dsjson`, `.dsjson.gz` or `.dsjson.zst`, else parquet.
    #[arg(long = "as", value_enum, value_name = "LAYOUT")]
    pub layout: Option<Layout>,
    /// The decision log: `postgres://…`, `sqlite://…`, or any `--log`
    /// source `evaluate` reads.
    #[arg(long, alias = "log")]
    pub database: String,
    /// Only this policy.
    #[arg(long)]
    pub policy: Option<String>,
    /// Only decisions at or after this instant (RFC 3339 or a date).
    #[arg(long, value_parser = parse_instant)]
    pub since: Option<DateTime<Utc>>,
    /// Only decisions before this instant (RFC 3339 or a date).
    #[arg(long, value_parser = parse_instant)]
    pub until: Option<DateTime<Utc>>,
    /// Policy files (a directory of `*.toml`, or files), for each policy's
    /// reward window: when its days are final.
    #[arg(long, default_value = "policies")]
    pub policies: Vec<PathBuf>,
    /// The reward window of every policy (overrides the policy files), e.g.
    /// `24h`.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub reward_window: Option<std::time::Duration>,
    /// Extra wait after a window closes before its day is final (the log
    /// writer's batching, a spool replayed after an outage).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
    pub settle: std::time::Duration,
    /// The instant at which days are judged final (default: now).
    #[arg(long, value_parser = parse_instant)]
    pub as_of: Option<DateTime<Utc>>,
    /// Write every partition again, final or not (Parquet).
    #[arg(long)]
    pub full: bool,
    /// With `--reward-window`: the reward of an event whose window closed
    /// without one, for every policy (as `evaluate --default-reward`);
    /// without `--reward-window`, each policy file gives its own.
    #[arg(long, default_value_t = 0.0, requires = "reward_window")]
    pub default_reward: f64,
    /// DSJSON: also write events inside their window that are rewarded
    /// under `first` aggregation (their first reward is final), as
    /// `evaluate --keep-first-rewarded` keeps them.
    #[arg(long)]
    pub keep_first_rewarded: bool,
    /// What to print: a table or JSON.
    #[arg(long, value_enum, default_value_t = crate::Format::Table)]
    pub format: crate::Format,
}

/// What `nudge-sim export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// A Parquet dataset partitioned by policy and day (`--to DIR`).
    Parquet,
    /// One Vowpal Wabbit DSJSON file (`--to FILE`).
    Dsjson,
}

impl Args {
    /// The layout to write: `--as`, else inferred from `--to`.
    pub fn layout(&self) -> Layout {
        self.layout.unwrap_or(if dsjson::is_dsjson(&self.to) {
            Layout::Dsjson
        } else {
            Layout::Parquet
        })
    }
}

fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc())
        .map_err(|_| format!("{s:?} is not an RFC 3339 instant or a YYYY-MM-DD date"))
}

/// The manifest: what the directory holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// [`SCHEMA_VERSION`].
    pub schema: u32,
    /// Column names and meanings.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
    /// `policy=…/date=…` → what was written there.
    #[serde(default)]
    pub partitions: BTreeMap<String, Partition>,
}

/// One written partition.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Partition {
    /// The policy id.
    pub policy: String,
    /// The UTC day.
    pub date: NaiveDate,
    /// Rows in its file.
    pub rows: u64,
    /// Of those, rows with a reward.
    pub rewarded: u64,
    /// Whether it is final (never written again).
    #[serde(rename = "final")]
    pub is_final: bool,
    /// When it was written.
    pub written_at: DateTime<Utc>,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The directory (Parquet) or file (DSJSON).
    pub to: String,
    /// What a DSJSON export wrote; absent for Parquet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dsjson: Option<DsjsonReport>,
    /// Partitions written by this run.
    pub written: Vec<Partition>,
    /// Final partitions skipped (already exported).
    pub skipped_final: u64,
    /// Rows read from the log.
    pub rows_read: u64,
    /// Warnings.
    pub warnings: Vec<String>,
}

/// What a DSJSON export wrote and left out.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct DsjsonReport {
    /// Lines written (events with a final outcome).
    pub written: u64,
    /// Of those, events whose window closed without a reward, written with
    /// the default.
    pub defaulted: u64,
    /// Of those, rewarded events kept under `first` aggregation
    /// (`--keep-first-rewarded`).
    pub kept_first_rewarded: u64,
    /// Events not written because their outcome is not final: still inside
    /// their window, or without a reward and a known window.
    pub not_final: u64,
    /// Slates not written (a `cb_adf` line holds one action).
    pub slates: u64,
}

/// Runs `export`.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let report = run(&args)?;
    match args.format {
        crate::Format::Json => println!("{}", serde_json::to_string(&report)?),
        crate::Format::Table if report.dsjson.is_some() => {
            let d = report.dsjson.as_ref().expect("checked");
            println!(
                "exported to {}: {} events written ({} with the default reward, {} kept as \
                 rewarded under `first`), {} not final, {} slates left out, {} rows read",
                report.to,
                d.written,
                d.defaulted,
                d.kept_first_rewarded,
                d.not_final,
                d.slates,
                report.rows_read
            );
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
        }
        crate::Format::Table => {
            println!(
                "exported to {}: {} partitions written, {} final ones kept, {} rows read",
                report.to,
                report.written.len(),
                report.skipped_final,
                report.rows_read
            );
            for p in &report.written {
                println!(
                    "  policy={}/date={}  {:>9} rows  {:>9} rewarded  {}",
                    p.policy,
                    p.date,
                    p.rows,
                    p.rewarded,
                    if p.is_final { "final" } else { "open" }
                );
            }
            for w in &report.warnings {
                eprintln!("warning: {w}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A partition being written.
struct Open {
    dir: PathBuf,
    tmp: PathBuf,
    writer: ArrowWriter<std::fs::File>,
    batch: ExportBatch,
    rows: u64,
    rewarded: u64,
    is_final: bool,
}

/// Exports the log as `args` say; see the [module docs](self).
pub fn run(args: &Args) -> anyhow::Result<Report> {
    let source = Source::parse(&args.database);
    if matches!(source, Source::Obd(..)) {
        bail!(
            "--database {}: an Open Bandit Dataset CSV is not a Nudge decision log",
            args.database
        );
    }
    if !args.default_reward.is_finite() {
        bail!("--default-reward must be a finite number");
    }
    // Each event's reward rule, as `evaluate` would judge it:
    // `--reward-window` (with `--default-reward`) for every policy, else
    // the policy file's, else what the source says (an export read again).
    let fixed = args
        .reward_window
        .map(|w| RewardRule::fixed(w, args.default_reward))
        .transpose()?;
    let rules = policy_rules(&args.policies)?;
    let filter = Filter {
        policy_id: args.policy.clone(),
        since: args.since,
        until: args.until,
        with_time: true,
    };
    match args.layout() {
        Layout::Dsjson => run_dsjson(args, &source, &filter, fixed, rules),
        Layout::Parquet => run_parquet(args, &source, &filter, fixed, rules),
    }
}

/// Writes the Parquet dataset.
fn run_parquet(
    args: &Args,
    source: &Source,
    filter: &Filter,
    fixed: Option<RewardRule>,
    rules: HashMap<String, RewardRule>,
) -> anyhow::Result<Report> {
    if dsjson::is_dsjson(&args.to) {
        bail!(
            "--to {}: a DSJSON file name, but --as parquet writes a directory",
            args.to.display()
        );
    }
    if args.keep_first_rewarded {
        bail!(
            "--keep-first-rewarded decides which events a DSJSON export writes (--as dsjson); \
             the Parquet export writes every event and `evaluate` applies the window rule"
        );
    }
    for (flag, t) in [("--since", args.since), ("--until", args.until)] {
        if let Some(t) = t
            && t.time() != chrono::NaiveTime::MIN
        {
            bail!(
                "{flag} {t}: the export writes whole UTC days (a partition per policy and day), \
                 so give a date or midnight UTC"
            );
        }
    }
    let as_of = args.as_of.unwrap_or_else(Utc::now);
    let settle = chrono::Duration::from_std(args.settle).context("--settle out of range")?;
    // The rule each row states (`window_closes_at`, `default_reward`);
    // finality is judged per day below, not per event.
    let windows = Windows::new(fixed, rules, as_of, false, false);
    std::fs::create_dir_all(&args.to)
        .with_context(|| format!("cannot create {}", args.to.display()))?;
    let manifest_path = args.to.join(MANIFEST);
    let mut manifest: Manifest = match std::fs::read_to_string(&manifest_path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{}: not a Nudge export manifest", manifest_path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
        Err(e) => return Err(e).context(format!("cannot read {}", manifest_path.display())),
    };
    if manifest.schema != 0 && manifest.schema != SCHEMA_VERSION {
        bail!(
            "{}: schema {} but this nudge-sim writes schema {SCHEMA_VERSION}; export to a new \
             directory (its files would mix two schemas)",
            manifest_path.display(),
            manifest.schema
        );
    }
    manifest.schema = SCHEMA_VERSION;
    manifest.columns = crate::ope::parquet::EXPORT_FIELDS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();

    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(3)?))
        .set_max_row_group_row_count(Some(ROW_GROUP))
        .set_key_value_metadata(Some(vec![parquet::file::metadata::KeyValue::new(
            "nudge.export.schema".to_string(),
            SCHEMA_VERSION.to_string(),
        )]))
        .build();
    let mut report = Report {
        to: args.to.display().to_string(),
        ..Report::default()
    };
    let mut open: HashMap<(String, NaiveDate), Open> = HashMap::new();
    let mut skipped: std::collections::HashSet<(String, NaiveDate)> = Default::default();
    let mut unknown_window: BTreeMap<String, u64> = BTreeMap::new();
    for rec in source.open(filter, false)? {
        let rec = rec?;
        report.rows_read += 1;
        let policy = rec.policy.clone().ok_or_else(|| {
            anyhow::anyhow!("{}: no policy id: not a Nudge decision log", rec.origin)
        })?;
        let at = rec
            .decided_at
            .ok_or_else(|| anyhow::anyhow!("{}: no decision time", rec.origin))?;
        let date = at.date_naive();
        let key = (policy, date);
        if skipped.contains(&key) {
            continue;
        }
        if !open.contains_key(&key) {
            let window = windows.rule(&rec).map(|r| r.window);
            let day_end = (date + chrono::Duration::days(1))
                .and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc();
            let is_final = match window {
                Some(w) => day_end + w + settle <= as_of,
                None => {
                    *unknown_window.entry(key.0.clone()).or_default() += 1;
                    false
                }
            };
            let name = partition_name(&key.0, date);
            if !args.full
                && manifest.partitions.get(&name).is_some_and(|p| p.is_final)
                && args.to.join(&name).join("part-0.parquet").exists()
            {
                skipped.insert(key);
                report.skipped_final += 1;
                continue;
            }
            let dir = args.to.join(&name);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let tmp = dir.join(".part-0.parquet.tmp");
            let file = std::fs::File::create(&tmp)
                .with_context(|| format!("cannot create {}", tmp.display()))?;
            let writer = ArrowWriter::try_new(file, export_schema(), Some(props.clone()))?;
            open.insert(
                key.clone(),
                Open {
                    dir,
                    tmp,
                    writer,
                    batch: ExportBatch::default(),
                    rows: 0,
                    rewarded: 0,
                    is_final,
                },
            );
        }
        let part = open.get_mut(&key).expect("opened above");
        part.batch.push(&rec, windows.rule(&rec))?;
        part.rows += 1;
        part.rewarded += u64::from(rec.reward.is_some());
        if part.batch.len() >= crate::ope::parquet::BATCH {
            let b = part.batch.finish()?;
            part.writer.write(&b)?;
        }
    }
    let now = Utc::now();
    let mut done: Vec<_> = open.into_iter().collect();
    done.sort_by(|a, b| a.0.cmp(&b.0));
    for ((policy, date), mut part) in done {
        if !part.batch.is_empty() {
            let b = part.batch.finish()?;
            part.writer.write(&b)?;
        }
        part.writer
            .close()
            .with_context(|| format!("cannot finish {}", part.tmp.display()))?;
        let dest = part.dir.join("part-0.parquet");
        std::fs::rename(&part.tmp, &dest)
            .with_context(|| format!("cannot move {} into place", dest.display()))?;
        let p = Partition {
            policy: policy.clone(),
            date,
            rows: part.rows,
            rewarded: part.rewarded,
            is_final: part.is_final,
            written_at: now,
        };
        manifest
            .partitions
            .insert(partition_name(&policy, date), p.clone());
        report.written.push(p);
    }
    let tmp = args.to.join(format!(".{MANIFEST}.tmp"));
    std::fs::write(&tmp, serde_json::to_string_pretty(&manifest)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &manifest_path)
        .with_context(|| format!("cannot write {}", manifest_path.display()))?;
    for (policy, n) in unknown_window {
        report.warnings.push(format!(
            "policy {policy:?}: no policy file in --policies and no --reward-window, so its \
             days are never final and are written again by every run ({n} partitions now)"
        ));
    }
    Ok(report)
}

/// `policy=ID/date=YYYY-MM-DD` (the id escaped as Hive escapes it).
pub fn partition_name(policy: &str, date: NaiveDate) -> String {
    format!("policy={}/date={date}", percent_encode(policy))
}

/// The reward rule of every policy file in `paths` (files or directories of
/// `*.toml`); a missing default directory is no error.
fn policy_rules(paths: &[PathBuf]) -> anyhow::Result<HashMap<String, RewardRule>> {
    let mut rules = HashMap::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("cannot list {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            files.sort();
            for f in files {
                Windows::add_policy_file(&mut rules, &f)?;
            }
        } else if p.exists() {
            Windows::add_policy_file(&mut rules, p)?;
        } else if p != Path::new("policies") {
            bail!("--policies {}: no such file or directory", p.display());
        }
    }
    Ok(rules)
}

/// Writes the DSJSON file; see the [module docs](self#dsjson).
fn run_dsjson(
    args: &Args,
    source: &Source,
    filter: &Filter,
    fixed: Option<RewardRule>,
    rules: HashMap<String, RewardRule>,
) -> anyhow::Result<Report> {
    if args.to.is_dir() {
        bail!(
            "--to {}: a directory, but --as dsjson writes one file (e.g. log.dsjson, \
             log.dsjson.zst)",
            args.to.display()
        );
    }
    let settle = chrono::Duration::from_std(args.settle).context("--settle out of range")?;
    let judged_at = args.as_of.unwrap_or_else(Utc::now) - settle;
    let mut windows = Windows::new(fixed, rules, judged_at, false, args.keep_first_rewarded);
    let name = args
        .to
        .file_name()
        .with_context(|| format!("--to {}: not a file name", args.to.display()))?
        .to_string_lossy()
        .into_owned();
    let tmp = args.to.with_file_name(format!(".{name}.tmp"));
    if let Some(dir) = args.to.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let mut out = Compressed::create(&tmp, FileCompression::of(&args.to).0)?;
    let mut report = Report {
        to: args.to.display().to_string(),
        ..Report::default()
    };
    let mut d = DsjsonReport::default();
    let mut line = String::new();
    for rec in source.open(filter, false)? {
        let rec = rec?;
        report.rows_read += 1;
        if rec.slate.as_ref().is_some_and(|s| s.len() > 1) {
            d.slates += 1;
            continue;
        }
        let Some(reward) = windows.judge(&rec) else {
            continue;
        };
        line.clear();
        dsjson::write_line(&mut line, &rec, reward)?;
        line.push('\n');
        out.write_all(line.as_bytes())
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        d.written += 1;
    }
    out.finish()
        .with_context(|| format!("cannot finish {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.to)
        .with_context(|| format!("cannot move {} into place", args.to.display()))?;
    let s = &windows.stats;
    d.defaulted = s.defaulted;
    d.kept_first_rewarded = s.kept_first_rewarded;
    d.not_final = s.open + s.no_reward_unknown_window;
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    if s.open > 0 {
        let until = s.open_until.map(time).unwrap_or_default();
        report.warnings.push(format!(
            "{} events ({} of them already rewarded) are still inside their reward window as \
             of {} (--as-of minus --settle; the last closes at {until}): not written, since a \
             DSJSON line's cost is final; export again once their windows and --settle have \
             passed",
            s.open,
            s.open_rewarded,
            time(judged_at)
        ));
    }
    if s.no_reward_unknown_window > 0 {
        report.warnings.push(format!(
            "{} events have no reward and their reward window is unknown (no policy file for \
             their policy in --policies, and no --reward-window): not written",
            s.no_reward_unknown_window
        ));
    }
    if d.slates > 0 {
        report.warnings.push(format!(
            "{} slates not written: a cb_adf DSJSON line holds one chosen action",
            d.slates
        ));
    }
    report.dsjson = Some(d);
    Ok(report)
}

/// A file being written, compressed by its name's extension.
enum Compressed {
    Plain(std::io::BufWriter<std::fs::File>),
    Gzip(flate2::write::GzEncoder<std::io::BufWriter<std::fs::File>>),
    Zstd(zstd::stream::write::Encoder<'static, std::io::BufWriter<std::fs::File>>),
}

impl Compressed {
    fn create(path: &Path, how: FileCompression) -> anyhow::Result<Compressed> {
        let file = std::fs::File::create(path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        let buf = std::io::BufWriter::with_capacity(1 << 20, file);
        Ok(match how {
            FileCompression::None => Compressed::Plain(buf),
            FileCompression::Gzip => Compressed::Gzip(flate2::write::GzEncoder::new(
                buf,
                flate2::Compression::default(),
            )),
            FileCompression::Zstd => Compressed::Zstd(zstd::stream::write::Encoder::new(buf, 3)?),
        })
    }

    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Compressed::Plain(w) => w.write_all(bytes),
            Compressed::Gzip(w) => w.write_all(bytes),
            Compressed::Zstd(w) => w.write_all(bytes),
        }
    }

    /// Ends the stream and flushes the file to disk.
    fn finish(self) -> std::io::Result<()> {
        let buf = match self {
            Compressed::Plain(w) => w,
            Compressed::Gzip(w) => w.finish()?,
            Compressed::Zstd(w) => w.finish()?,
        };
        buf.into_inner().map_err(|e| e.into_error())?.sync_all()
    }
}
