//! Candidates to evaluate and the per-event files joined to the log:
//! target probabilities (`--target-probs`), reward-model estimates
//! (`--reward-model`), and policy files (`--policy`, optionally with a model
//! snapshot).
//!
//! Per-event files are CSV `event_id,action,<value>` with a header, rows of
//! one event consecutive, events in the log's order (the order in which
//! `evaluate` reads it: file order, or `decided_at, event_id` for a
//! database). They are merge-joined with the log while streaming: events
//! of the file that the log does not have (filtered out) are skipped, and a
//! log event missing from the file is an error. Only one event's rows are
//! held at a time.

use super::source::LogRecord;
use anyhow::{Context, bail};
use nudge::features::Features;
use nudge::model::LinearModel;
use nudge::policy::{Candidate, DecideRequest, Mode, Policy};
use std::path::{Path, PathBuf};

/// Whether two ids are equal, without a `memcmp` call: ids are a few
/// bytes, compared tens of millions of times in a large evaluation, and
/// the call costs more than the comparison.
#[inline]
pub fn same_id(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x == y)
}

/// `(action id, number)` pairs of one event, stored without an allocation
/// per pair (the ids share one string buffer, which is reused).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Pairs {
    buf: String,
    rows: Vec<(usize, usize, f64)>,
}

impl Pairs {
    /// Removes every pair, keeping the capacity.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.rows.clear();
    }

    /// Makes this a copy of `other`, reusing its buffers.
    pub fn copy_from(&mut self, other: &Pairs) {
        self.buf.clear();
        self.buf.push_str(&other.buf);
        self.rows.clear();
        self.rows.extend_from_slice(&other.rows);
    }

    /// Appends a pair.
    pub fn push(&mut self, id: &str, value: f64) {
        let start = self.buf.len();
        self.buf.push_str(id);
        self.rows.push((start, self.buf.len(), value));
    }

    /// The pairs in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, f64)> + Clone + '_ {
        self.rows.iter().map(|(s, e, v)| (&self.buf[*s..*e], *v))
    }

    /// The value of `id` (the first pair with that id).
    pub fn get(&self, id: &str) -> Option<f64> {
        self.iter()
            .find(|(a, _)| same_id(a.as_bytes(), id.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The value of `id`, looked for first at position `hint`: files that
    /// list every event's actions in the same order (the usual case) find
    /// it there at once instead of by a scan. Same result as
    /// [`Pairs::get`] when ids are unique.
    pub fn get_near(&self, hint: usize, id: &str) -> Option<f64> {
        match self.rows.get(hint) {
            Some(&(s, e, v)) if same_id(&self.buf.as_bytes()[s..e], id.as_bytes()) => Some(v),
            _ => self.get(id),
        }
    }

    /// Number of pairs.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether there are no pairs.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

/// A streamed per-event CSV file: long (`event_id,action,<value_column>`,
/// one row per event and action) or wide (`event_id` or `round`, then one
/// column per action, one row per event).
pub struct EventCsv {
    path: PathBuf,
    value_column: &'static str,
    /// Wide layout: the action id of each column after the first.
    wide: Option<Vec<String>>,
    /// The header's column names.
    headers: Vec<String>,
    reader: simd_csv::Reader<super::source::RawInput>,
    record: simd_csv::ByteRecord,
    /// 1-based line of `record`.
    line: u64,
    /// Whether `record` holds a row not yet consumed.
    pending: bool,
    eof: bool,
    /// The current group: its event id and rows.
    group_id: String,
    group: Pairs,
    group_line: u64,
}

impl EventCsv {
    /// Opens `path` (decompressed by extension) and reads its header:
    /// `event_id,action,<value_column>` (long), or `event_id` / `round`
    /// followed by one column per action (wide). In a wide file, columns
    /// `p0, p1, …` (target probabilities) or `q0, q1, …` (reward models),
    /// numbered from 0 in order as OBP writes them, are actions `0`, `1`,
    /// …; any other column name is the action id itself.
    pub fn open(path: &Path, value_column: &'static str) -> anyhow::Result<EventCsv> {
        let mut reader = super::source::csv_reader(path)?;
        let headers: Vec<String> = super::source::csv_headers(&mut reader, path)?
            .into_iter()
            .map(|h| h.trim().to_string())
            .collect();
        let long = headers.len() == 3
            && headers[0] == "event_id"
            && headers[1] == "action"
            && headers[2] == value_column;
        let wide = if long {
            None
        } else if headers.len() >= 2
            && (headers[0] == "event_id" || headers[0] == "round")
            && !headers[1..].iter().any(|h| h == "action")
        {
            let prefix = if value_column == "probability" {
                "p"
            } else {
                "q"
            };
            let numbered = headers[1..]
                .iter()
                .enumerate()
                .all(|(i, h)| h.strip_prefix(prefix) == Some(i.to_string().as_str()));
            let actions: Vec<String> = if numbered {
                (0..headers.len() - 1).map(|i| i.to_string()).collect()
            } else {
                headers[1..].to_vec()
            };
            for (i, a) in actions.iter().enumerate() {
                if a.is_empty() {
                    bail!(
                        "{}:1: column {}: an empty action id in the header",
                        path.display(),
                        i + 2
                    );
                }
                if actions[..i].contains(a) {
                    bail!(
                        "{}:1: column {}: action {a:?} appears twice in the header",
                        path.display(),
                        i + 2
                    );
                }
            }
            Some(actions)
        } else {
            bail!(
                "{}:1: the header must be `event_id,action,{value_column}` (long) or \
                 `event_id` / `round` followed by one column per action (wide, e.g. \
                 `round,{p}0,{p}1,…`), found `{}`",
                path.display(),
                headers.join(","),
                p = if value_column == "probability" {
                    "p"
                } else {
                    "q"
                },
            );
        };
        Ok(EventCsv {
            path: path.to_path_buf(),
            value_column,
            wide,
            headers,
            reader,
            record: simd_csv::ByteRecord::new(),
            line: 1,
            pending: false,
            eof: false,
            group_id: String::new(),
            group: Pairs::default(),
            group_line: 0,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_row(&mut self) -> anyhow::Result<bool> {
        if self.pending {
            return Ok(true);
        }
        if self.eof {
            return Ok(false);
        }
        let more = self
            .reader
            .read_byte_record(&mut self.record)
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}:{}: malformed CSV: {e}",
                    self.path.display(),
                    self.line + 1
                )
            })?;
        if !more {
            self.eof = true;
            return Ok(false);
        }
        self.line += 1;
        let want = self.wide.as_ref().map_or(3, |a| a.len() + 1);
        if self.record.len() != want {
            bail!(
                "{}:{}: expected {want} fields ({}), found {}",
                self.path.display(),
                self.line,
                match &self.wide {
                    None => format!("event_id,action,{}", self.value_column),
                    Some(_) => "as many as the header".to_string(),
                },
                self.record.len()
            );
        }
        self.pending = true;
        Ok(true)
    }

    /// Parses a value cell (column `i`, named `name`): a finite number.
    fn value_at(&self, i: usize, name: &str) -> anyhow::Result<f64> {
        // Parsed from the bytes: a valid number is ASCII, so only an error
        // needs the cell as text.
        let raw = &self.record[i];
        let value = super::source::parse_number(raw).ok_or_else(|| {
            anyhow::anyhow!(
                "{}:{}: field `{name}` (column {}): {:?} is not a number",
                self.path.display(),
                self.line,
                i + 1,
                String::from_utf8_lossy(raw)
            )
        })?;
        if !value.is_finite() {
            bail!(
                "{}:{}: field `{name}` (column {}): {value} is not finite",
                self.path.display(),
                self.line,
                i + 1
            );
        }
        Ok(value)
    }

    /// Reads the next group of consecutive rows with one event id.
    fn next_group(&mut self) -> anyhow::Result<bool> {
        self.group.clear();
        if !self.read_row()? {
            return Ok(false);
        }
        let id = std::str::from_utf8(&self.record[0]).map_err(|_| {
            anyhow::anyhow!(
                "{}:{}: field `event_id`: not UTF-8",
                self.path.display(),
                self.line
            )
        })?;
        self.group_id.clear();
        self.group_id.push_str(id);
        self.group_line = self.line;
        if let Some(actions) = self.wide.take() {
            // One row per event: every non-empty cell is an action's value.
            let mut out = Ok(());
            for (j, a) in actions.iter().enumerate() {
                if self.record[j + 1].iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let name = self.headers[j + 1].clone();
                match self.value_at(j + 1, &name) {
                    Ok(v) => self.group.push(a, v),
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
            if !same_id(&self.record[0], self.group_id.as_bytes()) {
                break;
            }
            let action = std::str::from_utf8(&self.record[1]).map_err(|_| {
                anyhow::anyhow!(
                    "{}:{}: field `action`: not UTF-8",
                    self.path.display(),
                    self.line
                )
            })?;
            let value = self.value_at(2, self.value_column)?;
            self.group.push(action, value);
            self.pending = false;
        }
        Ok(true)
    }
}

/// A per-event file read as groups of consecutive rows with one event id;
/// [`EventFile::rows_for`] merge-joins them with the log.
pub(crate) trait Groups {
    /// Reads the next group; `false` at the end of the file.
    fn next_group(&mut self) -> anyhow::Result<bool>;
    /// The current group: its event id, where it starts (line or row), and
    /// its pairs (empty before the first group).
    fn group(&self) -> (&str, u64, &Pairs);
    /// The file's path.
    fn file(&self) -> &Path;
}

impl Groups for EventCsv {
    fn next_group(&mut self) -> anyhow::Result<bool> {
        EventCsv::next_group(self)
    }

    fn group(&self) -> (&str, u64, &Pairs) {
        (&self.group_id, self.group_line, &self.group)
    }

    fn file(&self) -> &Path {
        &self.path
    }
}

/// A per-event file (`--target-probs`, `--reward-model`) in CSV or
/// Parquet ([`super::parquet::EventParquet`]), with the same layouts and
/// the same merge join with the log.
pub enum EventFile {
    /// CSV, decompressed by extension.
    Csv(Box<EventCsv>),
    /// Parquet: a `.parquet` file, a directory of them, or `parquet:PATH`.
    Parquet(Box<super::parquet::EventParquet>),
    /// Either, read on its own thread ([`EventFile::prefetch`]).
    Prefetched(Box<super::prefetch::PrefetchedGroups>),
}

impl EventFile {
    /// Opens `arg`: Parquet when [`super::parquet::parquet_path`] says so,
    /// CSV otherwise.
    pub fn open(arg: &Path, value_column: &'static str) -> anyhow::Result<EventFile> {
        let text = arg.to_string_lossy();
        Ok(match super::parquet::parquet_path(&text) {
            Some(p) => EventFile::Parquet(Box::new(super::parquet::EventParquet::open(
                &p,
                value_column,
            )?)),
            None => EventFile::Csv(Box::new(EventCsv::open(arg, value_column)?)),
        })
    }

    /// The path given.
    pub fn path(&self) -> &Path {
        match self {
            EventFile::Csv(f) => f.path(),
            EventFile::Parquet(f) => f.path(),
            EventFile::Prefetched(f) => f.file(),
        }
    }

    /// The same file, parsed on a thread of its own and handed over in
    /// batches ([`super::prefetch`]): the same groups, lines and errors,
    /// in the same order.
    pub fn prefetch(self) -> EventFile {
        let inner: Box<dyn Groups + Send> = match self {
            EventFile::Csv(f) => f,
            EventFile::Parquet(f) => f,
            p @ EventFile::Prefetched(_) => return p,
        };
        EventFile::Prefetched(Box::new(super::prefetch::PrefetchedGroups::spawn(inner)))
    }

    /// The rows of `event_id`, skipping earlier events the log did not
    /// keep: the line (CSV) or row (Parquet) where they start, and the
    /// pairs. Errors if the file ends first (the event is missing, or the
    /// file is not in the log's order).
    pub fn rows_for(
        &mut self,
        event_id: &str,
        origin: &dyn std::fmt::Display,
    ) -> anyhow::Result<(u64, &Pairs)> {
        let groups: &mut dyn Groups = match self {
            EventFile::Csv(f) => f.as_mut(),
            EventFile::Parquet(f) => f.as_mut(),
            EventFile::Prefetched(f) => f.as_mut(),
        };
        loop {
            let (id, _, pairs) = groups.group();
            if !pairs.is_empty() && same_id(id.as_bytes(), event_id.as_bytes()) {
                break;
            }
            if !groups.next_group()? {
                bail!(
                    "{}: no rows for event {event_id:?} (logged at {origin}); the file must \
                     list every evaluated event, in the log's order",
                    groups.file().display()
                );
            }
        }
        let (_, at, pairs) = groups.group();
        Ok((at, pairs))
    }
}

/// A candidate's distribution on a logged event, restricted to the
/// logged eligible set: the candidates the logged decision could choose
/// (listed without `excluded_by`). When the candidate gives probability to
/// actions outside that set, the rest is renormalised to sum to 1 — the
/// candidate evaluated under the same eligibility as the logger. `dist` is
/// returned as is when the log records no candidates (OBD) or the
/// candidate keeps to the eligible set. Errors when the candidate gives the
/// eligible set no probability at all (it cannot act on this event).
pub fn eligible_distribution<'a>(
    rec: &LogRecord,
    dist: &'a Pairs,
    buf: &'a mut Pairs,
    where_: &dyn Fn() -> String,
) -> anyhow::Result<&'a Pairs> {
    if rec.candidates.is_empty() {
        return Ok(dist);
    }
    let eligible = |a: &str| rec.candidates.iter().any(|c| c.id == a && c.eligible());
    let outside: f64 = dist
        .iter()
        .filter(|(a, _)| !eligible(a))
        .map(|(_, p)| p)
        .sum();
    if outside <= 0.0 {
        return Ok(dist);
    }
    let inside: f64 = dist
        .iter()
        .filter(|(a, _)| eligible(a))
        .map(|(_, p)| p)
        .sum();
    if inside.is_nan() || inside <= 0.0 {
        bail!(
            "{}: event {:?}: the candidate gives the logged eligible actions ({}) no probability, \
             so it cannot be evaluated under the logged eligibility",
            where_(),
            rec.event_id,
            rec.candidates
                .iter()
                .filter(|c| c.eligible())
                .map(|c| c.id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    buf.clear();
    for (a, p) in dist.iter() {
        if eligible(a) {
            buf.push(a, p / inside);
        }
    }
    Ok(buf)
}

/// A policy file evaluated offline: a fixed state (fresh or a snapshot),
/// and a copy that learns on replay-matched events.
pub struct PolicyCandidate {
    /// The policy.
    pub policy: Policy,
    /// The state its distribution is computed with (never updated).
    pub fixed: LinearModel,
    /// The state of the learning replay (Li et al. 2011): updated with the
    /// reward of each event where the policy's draw equals the logged action.
    pub learning: LinearModel,
}

/// What a policy does on one logged event.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyStep {
    /// The fixed-state policy's distribution over action ids.
    pub distribution: Pairs,
    /// The fixed-state policy's draw (seeded by the event id) equals the
    /// logged action.
    pub fixed_match: bool,
    /// The learning policy's draw equals the logged action.
    pub learning_match: bool,
}

impl PolicyCandidate {
    /// Loads a policy file and, optionally, an NDGM snapshot of its model.
    pub fn load(path: &Path, snapshot: Option<&Path>) -> anyhow::Result<PolicyCandidate> {
        let spec = nudge::policy::load_file(path).map_err(|errs| {
            anyhow::anyhow!(
                "{}",
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
        let policy = Policy::new(spec);
        let fixed = match snapshot {
            None => policy.new_model(),
            Some(s) => {
                let bytes =
                    std::fs::read(s).with_context(|| format!("cannot read {}", s.display()))?;
                let state = nudge::model::codec::decode(&bytes)
                    .map_err(|e| anyhow::anyhow!("{}: not a model snapshot: {e}", s.display()))?;
                let params = &policy.spec().params;
                let model = LinearModel::from_state(state, params.lambda, params.refactor_every)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", s.display()))?;
                if model.dim() != policy.spec().features.dim()
                    || model.arms() != policy.model_arms()
                {
                    bail!(
                        "{}: the snapshot has {} arms of dimension {}, policy {} needs {} of \
                         dimension {}",
                        s.display(),
                        model.arms(),
                        model.dim(),
                        policy.id(),
                        policy.model_arms(),
                        policy.spec().features.dim()
                    );
                }
                model
            }
        };
        let learning = fixed.clone();
        Ok(PolicyCandidate {
            policy,
            fixed,
            learning,
        })
    }

    /// Decides on a logged event with both states, and lets the learning
    /// state learn the reward when its draw matches the logged action.
    pub fn step(&mut self, rec: &LogRecord, reward: f64) -> anyhow::Result<PolicyStep> {
        let context_value = rec.context.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "{}: a policy file needs the logged context; this source has none (use \
                 --target-probs for OBD logs)",
                rec.origin
            )
        })?;
        let context: Features = serde_json::from_value(context_value)
            .map_err(|e| anyhow::anyhow!("{}: field `context`: {e}", rec.origin))?;
        let spec = self.policy.spec();
        let actions: Vec<Candidate<Features>> = match (spec.mode, &rec.actions) {
            (Mode::Shared, Some(a)) => serde_json::from_value(a.clone())
                .map_err(|e| anyhow::anyhow!("{}: field `actions`: {e}", rec.origin))?,
            (Mode::Shared, None) => bail!(
                "{}: field `actions`: a shared-mode policy needs the logged candidate actions",
                rec.origin
            ),
            (Mode::Disjoint, _) => Vec::new(),
        };
        // The candidate acts on the same choice set as the logger: arms the
        // logged decision could not choose (absent from its candidates, or
        // listed with `excluded_by`: a caller's exclusion or a guardrail)
        // are excluded, so its distribution is over the logged eligible set.
        let excluded: Vec<String> = match spec.mode {
            Mode::Disjoint if !rec.candidates.is_empty() => spec
                .arms
                .iter()
                .filter(|arm| !rec.candidates.iter().any(|c| &c.id == *arm && c.eligible()))
                .cloned()
                .collect(),
            _ => Vec::new(),
        };
        let req = DecideRequest {
            event_id: &rec.event_id,
            context: &context,
            actions: &actions,
            excluded: &excluded,
            k: 1,
        };
        let id_of = |i: usize| -> String {
            match spec.mode {
                Mode::Disjoint => spec.arms[i].clone(),
                Mode::Shared => actions[i].id.clone(),
            }
        };
        let fixed = self
            .policy
            .decide(&self.fixed, &req)
            .map_err(|e| anyhow::anyhow!("{}: policy {}: {e}", rec.origin, self.policy.id()))?;
        let mut distribution = Pairs::default();
        for (c, p) in fixed.candidates.iter().zip(&fixed.probabilities) {
            distribution.push(&id_of(*c), *p);
        }
        let fixed_match = id_of(fixed.candidates[fixed.chosen()]) == rec.action;
        let learning = self
            .policy
            .decide(&self.learning, &req)
            .map_err(|e| anyhow::anyhow!("{}: policy {}: {e}", rec.origin, self.policy.id()))?;
        let learning_match = id_of(learning.candidates[learning.chosen()]) == rec.action;
        if learning_match {
            self.policy
                .learn(&mut self.learning, &learning, learning.chosen(), reward)
                .map_err(|e| anyhow::anyhow!("{}: field `reward`: {e}", rec.origin))?;
        }
        Ok(PolicyStep {
            distribution,
            fixed_match,
            learning_match,
        })
    }
}
