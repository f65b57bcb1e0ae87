//! Vowpal Wabbit's decision-service JSON (DSJSON), the `cb_explore_adf`
//! layout VW reads with `--cb_adf --dsjson`: one decision per line.
//!
//! ```json
//! {"_label_cost":-1.0,"_label_probability":0.9,"_label_Action":2,"_labelIndex":1,
//!  "Timestamp":"2026-11-26T10:00:00Z","EventId":"e1","a":[2,1,3],"p":[0.9,0.05,0.05],
//!  "c":{"hour":9,"_multi":[{"_arm":"send_now","arm":{"send_now":1}},
//!                          {"_arm":"send_later","arm":{"send_later":1}},
//!                          {"_arm":"skip","arm":{"skip":1}}]},
//!  "_policy":"push_send"}
//! ```
//!
//! # Reading ([`DsjsonReader`], `--log dsjson:PATH` or `*.dsjson[.gz|.zst]`)
//!
//! - reward = −`_label_cost`; propensity = `_label_probability`;
//! - the logged action is item `_labelIndex` (from 0) of `c._multi`; when
//!   present, `_label_Action` (from 1) and `a[0]` (from 1) must name the
//!   same item, and `p[0]` must equal `_label_probability`;
//! - an action's id is its `_multi` item's `_arm` or `_id` (a string or a
//!   number), else its index from 0 as a string;
//! - every `_multi` item is a candidate, with the probability `p` gives it
//!   (`a` lists item numbers from 1, `p` their probabilities in the same
//!   order; an item missing from `a` has probability 0);
//! - the context is `c` without `_multi`; the event id is `EventId`, else
//!   the line number; the decision time is `Timestamp` (RFC 3339) when
//!   present;
//! - the logging policy is `_policy` (Nudge's export writes it; VW ignores
//!   keys starting with `_`), else the `--policy-id` filter's, since a
//!   DSJSON log of one policy has no policy field;
//! - a labelled line's outcome is final (`reward_final`): DSJSON holds
//!   joined outcomes; a line without `_label_cost` has no reward;
//! - `_skipLearn: true` lines are skipped, as VW skips them, and counted
//!   ([`super::source::Skips`]);
//! - `pdrop` (the probability the event was dropped before logging): VW
//!   weighs such an event by 1/(1 − pdrop) (`apply_pdrop` in VW's
//!   `parse_example_json.cc`). Nudge's estimators weigh every event alike,
//!   so a line with `pdrop` > 0 is refused rather than evaluated with a
//!   biased estimate; `pdrop` = 0 is accepted;
//! - Nudge's own extensions, ignored by VW: `_policy`, and `_excluded`
//!   (`[{"id", "excluded_by"}]`, candidates the decision could not choose:
//!   probability 0, listed after the `_multi` ones). A `_multi` item's
//!   `features` object, when present, is the action's features
//!   (action-features mode): `actions` is rebuilt from them.
//!
//! Every error names the file, the line, the field and what was expected.
//!
//! # Writing ([`write_line`], `nudge-sim export --as dsjson`)
//!
//! The shared context goes in `c` as logged (VW hashes numbers, strings
//! and vectors as it reads them), one `_multi` item per eligible candidate
//! in the log's order, each `{"_arm": ID, "arm": {ID: 1}}` (a namespace
//! `arm` with one feature per arm, so `-q ::` crosses the context with the
//! arm and VW learns a value per arm), plus `"features"` in action-features
//! mode. `_label_cost` = −reward, `a` lists the chosen item first, then the
//! others in order, `p` their probabilities. Reading a written line back
//! gives the record that was written (reward, propensity, action,
//! candidates and their probabilities, context, event id, time, policy).

use super::source::{Filter, Input, LogRecord, Origin, Skips, open_input};
use crate::logfmt::CandidateProb;
use anyhow::bail;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Whether `arg` names a DSJSON log: `dsjson:PATH`, or a path ending in
/// `.dsjson`, `.dsjson.gz` or `.dsjson.zst`; the path if so.
pub fn dsjson_path(arg: &str) -> Option<PathBuf> {
    if let Some(p) = arg.strip_prefix("dsjson:") {
        return Some(PathBuf::from(p));
    }
    is_dsjson(Path::new(arg)).then(|| PathBuf::from(arg))
}

/// Whether `path` ends in `.dsjson`, `.dsjson.gz` or `.dsjson.zst`.
pub fn is_dsjson(path: &Path) -> bool {
    super::source::Compression::of(path)
        .1
        .to_ascii_lowercase()
        .ends_with(".dsjson")
}

/// One DSJSON line as read; every field optional so that a missing one is
/// reported by name with what was expected.
#[derive(Deserialize)]
struct Line {
    #[serde(rename = "_label_cost")]
    cost: Option<f64>,
    #[serde(rename = "_label_probability")]
    probability: Option<f64>,
    #[serde(rename = "_label_Action")]
    label_action: Option<u64>,
    #[serde(rename = "_labelIndex")]
    label_index: Option<u64>,
    #[serde(rename = "_skipLearn", default)]
    skip_learn: bool,
    pdrop: Option<f64>,
    #[serde(rename = "EventId")]
    event_id: Option<String>,
    #[serde(rename = "Timestamp")]
    timestamp: Option<String>,
    a: Option<Vec<u64>>,
    p: Option<Vec<f64>>,
    c: Option<Shared>,
    #[serde(rename = "_policy")]
    policy: Option<String>,
    #[serde(rename = "_excluded", default)]
    excluded: Vec<Excluded>,
}

/// `c`: the shared features and the actions.
#[derive(Deserialize)]
struct Shared {
    #[serde(rename = "_multi")]
    multi: Option<Vec<Map<String, Value>>>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

/// A candidate the decision could not choose (Nudge's `_excluded`).
#[derive(Deserialize, Serialize)]
struct Excluded {
    id: String,
    excluded_by: String,
}

/// Reads a DSJSON log, streaming one line at a time; see the
/// [module docs](self) for the mapping.
pub struct DsjsonReader {
    path: PathBuf,
    name: Arc<str>,
    reader: Input,
    line: String,
    line_no: u64,
    filter: Filter,
    skips: Arc<Skips>,
}

impl DsjsonReader {
    /// Opens `path` (decompressed by extension). `_skipLearn` lines are
    /// counted in `skips`.
    pub fn open(path: &Path, filter: Filter, skips: Arc<Skips>) -> anyhow::Result<DsjsonReader> {
        Ok(DsjsonReader {
            name: path.display().to_string().into(),
            path: path.to_path_buf(),
            reader: open_input(path)?,
            line: String::new(),
            line_no: 0,
            filter,
            skips,
        })
    }

    fn fail(&self, field: &str, what: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!(
            "{}:{}: field `{field}`: {what}",
            self.path.display(),
            self.line_no
        )
    }

    /// The current line as a record; `None` for a skipped one.
    fn parse(&self) -> anyhow::Result<Option<LogRecord>> {
        let text = self.line.trim();
        if !text.starts_with('{') {
            bail!(
                "{}:{}: expected a JSON object (one DSJSON decision per line), found {:?}",
                self.path.display(),
                self.line_no,
                text.chars().take(40).collect::<String>()
            );
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let line: Line = serde_path_to_error::deserialize(&mut de)
            .map_err(|e| self.fail(&e.path().to_string(), e.inner()))?;
        if line.skip_learn {
            self.skips.skip_learn.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        if let Some(d) = line.pdrop {
            if !(0.0..1.0).contains(&d) {
                return Err(self.fail("pdrop", format_args!("{d} is not in [0, 1)")));
            }
            if d > 0.0 {
                return Err(self.fail(
                    "pdrop",
                    format_args!(
                        "{d}: events like this one were dropped with probability {d} before \
                         logging, so VW weighs it by 1/(1 − pdrop) = {}; nudge-sim's estimators \
                         weigh every event alike, and evaluating the log unweighted would bias \
                         every estimate toward the events that were never dropped: evaluate a \
                         log without dropping (pdrop 0)",
                        1.0 / (1.0 - d)
                    ),
                ));
            }
        }
        let Some(shared) = line.c else {
            return Err(self.fail(
                "c",
                "missing: expected the shared context with its `_multi` actions",
            ));
        };
        let Some(multi) = shared.multi else {
            return Err(self.fail(
                "c._multi",
                "missing: expected an array of the candidate actions",
            ));
        };
        if multi.is_empty() {
            return Err(self.fail("c._multi", "empty: expected at least one action"));
        }
        let mut ids = Vec::with_capacity(multi.len());
        for (i, item) in multi.iter().enumerate() {
            let id = match item
                .get("_arm")
                .map(|v| ("_arm", v))
                .or_else(|| item.get("_id").map(|v| ("_id", v)))
            {
                None => i.to_string(),
                Some((_, Value::String(s))) if !s.is_empty() => s.clone(),
                Some((_, Value::Number(n))) => n.to_string(),
                Some((key, v)) => {
                    return Err(self.fail(
                        &format!("c._multi[{i}].{key}"),
                        format_args!("{v}: expected the action id, a non-empty string or a number"),
                    ));
                }
            };
            if ids.contains(&id) {
                return Err(self.fail(
                    &format!("c._multi[{i}]"),
                    format_args!("action id {id:?} is given twice"),
                ));
            }
            ids.push(id);
        }
        let n = multi.len() as u64;
        let Some(a) = line.a else {
            return Err(self.fail(
                "a",
                "missing: expected the action numbers (from 1), chosen first",
            ));
        };
        let p = line.p.unwrap_or_default();
        if a.is_empty() {
            return Err(self.fail(
                "a",
                "empty: expected the action numbers (from 1), chosen first",
            ));
        }
        if p.len() != a.len() {
            return Err(self.fail(
                "p",
                format_args!(
                    "{} probabilities for {} actions in `a`: expected one per action, in `a`'s order",
                    p.len(),
                    a.len()
                ),
            ));
        }
        let mut probs = vec![0.0; multi.len()];
        let mut seen = vec![false; multi.len()];
        for (k, (&i, &q)) in a.iter().zip(&p).enumerate() {
            if i == 0 || i > n {
                return Err(self.fail(
                    &format!("a[{k}]"),
                    format_args!(
                        "{i}: expected an action number from 1 to {n} (the `_multi` items)"
                    ),
                ));
            }
            let j = (i - 1) as usize;
            if seen[j] {
                return Err(self.fail(
                    &format!("a[{k}]"),
                    format_args!("action {i} is listed twice"),
                ));
            }
            seen[j] = true;
            if !(q.is_finite() && (0.0..=1.0).contains(&q)) {
                return Err(self.fail(
                    &format!("p[{k}]"),
                    format_args!("{q}: expected a probability in [0, 1]"),
                ));
            }
            probs[j] = q;
        }
        let index = match line.label_index {
            Some(i) if i >= n => {
                return Err(self.fail(
                    "_labelIndex",
                    format_args!("{i}: expected the logged action's index from 0, below the {n} `_multi` items"),
                ));
            }
            Some(i) => i,
            None if line.cost.is_some() => {
                return Err(self.fail(
                    "_labelIndex",
                    "missing: a labelled line (with `_label_cost`) names its logged action's `_multi` index from 0",
                ));
            }
            None => a[0] - 1,
        };
        if let Some(act) = line.label_action
            && act != index + 1
        {
            return Err(self.fail(
                "_label_Action",
                format_args!(
                    "{act} but `_labelIndex` is {index}: expected {} (the same action, from 1)",
                    index + 1
                ),
            ));
        }
        if a[0] != index + 1 {
            return Err(self.fail(
                "a[0]",
                format_args!(
                    "{} but `_labelIndex` is {index}: expected {} (the chosen action comes first, from 1)",
                    a[0],
                    index + 1
                ),
            ));
        }
        let pscore = match line.probability {
            Some(q) => {
                if (q - p[0]).abs() > 1e-6 {
                    return Err(self.fail(
                        "_label_probability",
                        format_args!(
                            "{q} but `p[0]` (the chosen action's) is {}: expected the same",
                            p[0]
                        ),
                    ));
                }
                q
            }
            None if line.cost.is_some() => {
                return Err(self.fail(
                    "_label_probability",
                    "missing: a labelled line (with `_label_cost`) gives the logged action's propensity",
                ));
            }
            None => p[0],
        };
        let reward = match line.cost {
            Some(c) if !c.is_finite() => {
                return Err(self.fail("_label_cost", format_args!("{c}: expected a finite cost")));
            }
            Some(c) => Some(if c == 0.0 { 0.0 } else { -c }),
            None => None,
        };
        let decided_at = match &line.timestamp {
            None => None,
            Some(t) => Some(
                DateTime::parse_from_rfc3339(t)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| {
                        self.fail(
                            "Timestamp",
                            format_args!("{t:?}: expected an RFC 3339 time"),
                        )
                    })?,
            ),
        };
        let policy = line.policy.or_else(|| self.filter.policy_id.clone());
        if !self.filter.keeps(policy.as_deref(), decided_at) {
            return Ok(None);
        }
        let with_features = multi.iter().any(|m| m.contains_key("features"));
        let actions = with_features.then(|| {
            Value::Array(
                multi
                    .iter()
                    .zip(&ids)
                    .map(|(m, id)| {
                        let mut o = Map::new();
                        o.insert("id".into(), Value::String(id.clone()));
                        o.insert(
                            "features".into(),
                            m.get("features")
                                .cloned()
                                .unwrap_or_else(|| Value::Object(Map::new())),
                        );
                        Value::Object(o)
                    })
                    .collect(),
            )
        });
        let mut candidates: Vec<CandidateProb> = ids
            .iter()
            .zip(&probs)
            .map(|(id, &q)| CandidateProb {
                id: id.clone(),
                probability: q,
                excluded_by: None,
            })
            .collect();
        for (k, x) in line.excluded.into_iter().enumerate() {
            if ids.contains(&x.id) {
                return Err(self.fail(
                    &format!("_excluded[{k}].id"),
                    format_args!("{:?} is also a `_multi` action: expected an action the decision could not choose", x.id),
                ));
            }
            candidates.push(CandidateProb {
                id: x.id,
                probability: 0.0,
                excluded_by: Some(x.excluded_by),
            });
        }
        Ok(Some(LogRecord {
            event_id: line.event_id.unwrap_or_else(|| self.line_no.to_string()),
            origin: Origin::Line(self.name.clone(), self.line_no),
            policy,
            versions: None,
            decided_at,
            action: ids[index as usize].clone(),
            pscore,
            reward_final: reward.is_some(),
            reward,
            position: 0,
            context: Some(Value::Object(shared.rest)),
            actions,
            candidates,
            features: Vec::new(),
            slate: None,
            item_rewards: None,
            rule: None,
        }))
    }
}

impl Iterator for DsjsonReader {
    type Item = anyhow::Result<LogRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            match super::source::next_line(
                &mut self.reader,
                &mut self.line,
                &mut self.line_no,
                &self.path,
            ) {
                Ok(true) => {}
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
            match self.parse() {
                Ok(Some(rec)) => return Some(Ok(rec)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// A written line, in the order VW's own logs use.
#[derive(Serialize)]
struct OutLine<'a> {
    #[serde(rename = "_label_cost")]
    cost: f64,
    #[serde(rename = "_label_probability")]
    probability: f64,
    #[serde(rename = "_label_Action")]
    label_action: usize,
    #[serde(rename = "_labelIndex")]
    label_index: usize,
    #[serde(rename = "Timestamp", skip_serializing_if = "Option::is_none")]
    timestamp: Option<String>,
    #[serde(rename = "EventId")]
    event_id: &'a str,
    a: Vec<usize>,
    c: OutShared<'a>,
    p: Vec<f64>,
    #[serde(rename = "_policy", skip_serializing_if = "Option::is_none")]
    policy: Option<&'a str>,
    #[serde(rename = "_excluded", skip_serializing_if = "Vec::is_empty")]
    excluded: Vec<Excluded>,
}

#[derive(Serialize)]
struct OutShared<'a> {
    #[serde(flatten)]
    context: &'a Map<String, Value>,
    #[serde(rename = "_multi")]
    multi: Vec<Value>,
}

/// Writes `rec`, with its final `reward`, as one DSJSON line (no newline)
/// to `out`. An error names the record when it cannot be written as a
/// `cb_adf` decision: no candidates, its action not among the eligible
/// ones, a context that is not an object or has a key starting with `_`
/// (VW reserves those), or a slate (`cb_adf` holds one action per
/// decision: the caller leaves slates out).
pub fn write_line(out: &mut String, rec: &LogRecord, reward: f64) -> anyhow::Result<()> {
    if rec.slate.as_ref().is_some_and(|s| s.len() > 1) {
        bail!("{}: a slate has no cb_adf DSJSON line", rec.origin);
    }
    let empty = Map::new();
    let context = match &rec.context {
        None => &empty,
        Some(Value::Object(m)) => m,
        Some(other) => bail!(
            "{}: the context is {other}, not an object: DSJSON's `c` holds named features",
            rec.origin
        ),
    };
    if let Some(k) = context.keys().find(|k| k.starts_with('_')) {
        bail!(
            "{}: context feature {k:?} starts with `_`, which VW's DSJSON reserves (`_multi`, \
             `_label…`, `_text`, …); rename it",
            rec.origin
        );
    }
    if rec.candidates.is_empty() {
        bail!(
            "{}: no candidates with their probabilities: DSJSON lists every action the decision \
             chose from",
            rec.origin
        );
    }
    let features: Option<Vec<(&str, &Value)>> = rec.actions.as_ref().and_then(|v| {
        v.as_array().map(|acts| {
            acts.iter()
                .filter_map(|a| Some((a.get("id")?.as_str()?, a.get("features")?)))
                .collect()
        })
    });
    let eligible: Vec<&CandidateProb> = rec.candidates.iter().filter(|c| c.eligible()).collect();
    let Some(chosen) = eligible.iter().position(|c| c.id == rec.action) else {
        bail!(
            "{}: the logged action {:?} is not among the eligible candidates",
            rec.origin,
            rec.action
        );
    };
    let multi = eligible
        .iter()
        .map(|c| {
            let mut item = Map::new();
            item.insert("_arm".into(), Value::String(c.id.clone()));
            let mut arm = Map::new();
            arm.insert(c.id.clone(), Value::from(1));
            item.insert("arm".into(), Value::Object(arm));
            if let Some(f) = features
                .as_ref()
                .and_then(|fs| fs.iter().find(|(id, _)| *id == c.id))
            {
                item.insert("features".into(), f.1.clone());
            }
            Value::Object(item)
        })
        .collect();
    let mut a = vec![chosen + 1];
    let mut p = vec![eligible[chosen].probability];
    for (i, c) in eligible.iter().enumerate() {
        if i != chosen {
            a.push(i + 1);
            p.push(c.probability);
        }
    }
    let line = OutLine {
        cost: if reward == 0.0 { 0.0 } else { -reward },
        probability: rec.pscore,
        label_action: chosen + 1,
        label_index: chosen,
        timestamp: rec
            .decided_at
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
        event_id: &rec.event_id,
        a,
        c: OutShared { context, multi },
        p,
        policy: rec.policy.as_deref(),
        excluded: rec
            .candidates
            .iter()
            .filter_map(|c| {
                c.excluded_by.as_ref().map(|by| Excluded {
                    id: c.id.clone(),
                    excluded_by: by.clone(),
                })
            })
            .collect(),
    };
    out.push_str(&serde_json::to_string(&line)?);
    Ok(())
}
