//! Validation: a [`RawPolicy`] (the file as written) into a
//! [`PolicySpec`], or every error found, each naming the file, the key and
//! what was expected.

use super::raw::{RawFeature, RawPolicy, RawUnknown};
use super::spec::*;
use crate::features::{FeatureKind, FeatureSpec, UnknownFeatures};
use crate::guardrails::Guardrails;
use crate::guardrails::spec::RawHistoryFeature;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Collects every semantic error of one file.
struct Problems {
    file: PathBuf,
    errors: Vec<PolicyError>,
}

impl Problems {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(PolicyError {
            file: self.file.clone(),
            key: key.into(),
            message: message.into(),
        });
    }
}

/// Whether `s` is a valid identifier for policies, arms and signals:
/// 1 to `max` characters of `[A-Za-z0-9_.-]`.
pub fn is_valid_id(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// Parses and validates a policy file's text. `origin` names the file in
/// errors. Returns every error found, not just the first.
pub fn parse_policy(text: &str, origin: &Path) -> Result<PolicySpec, Vec<PolicyError>> {
    let mut raw: RawPolicy = toml::from_str(text).map_err(|e| {
        let (key, position) = e
            .span()
            .map(|span| locate(text, span.start))
            .unwrap_or_default();
        vec![PolicyError {
            file: origin.to_path_buf(),
            key,
            message: format!("{position}{}", e.message()),
        }]
    })?;
    let mut p = Problems {
        file: origin.to_path_buf(),
        errors: vec![],
    };
    let challenger_tables = std::mem::take(&mut raw.challengers);
    let a = &raw.alerts;
    if a.window < std::time::Duration::from_secs(1)
        || a.window > std::time::Duration::from_secs(3600)
    {
        p.add(
            "alerts.window",
            format!("expected 1s to 1h, got {:?}", a.window),
        );
    }
    if !(0.0..=1.0).contains(&a.min_entropy) {
        p.add(
            "alerts.min_entropy",
            format!("expected a number in [0, 1], got {}", a.min_entropy),
        );
    }
    if let Some(m) = a.min_probability
        && !(m > 0.0 && m < 1.0)
    {
        p.add(
            "alerts.min_probability",
            format!("expected a number in (0, 1), got {m}"),
        );
    }
    if a.min_events == 0 {
        p.add("alerts.min_events", "expected an integer >= 1, got 0");
    }
    if raw.promote == Promote::Auto && raw.promote_after.is_none() {
        p.add(
            "promote",
            "promote = \"auto\" needs the rule's promote_after = N",
        );
    }
    match raw.promote_after {
        Some(0) => p.add("promote_after", "expected an integer >= 1, got 0"),
        Some(_) if challenger_tables.is_empty() => p.add(
            "promote_after",
            "a promotion rule needs [[challengers]] to promote",
        ),
        _ => {}
    }

    if !is_valid_id(&raw.id, 64) {
        p.add(
            "id",
            format!(
                "expected 1 to 64 characters of [A-Za-z0-9_.-], got {:?}",
                raw.id
            ),
        );
    }
    if raw.version == 0 {
        p.add("version", "expected an integer >= 1, got 0");
    }
    let params = validate_params(&raw, &mut p);
    validate_arms(&raw, &mut p);
    let mut history = Vec::new();
    let features = validate_features(&raw, &mut p, &mut history);
    let reward = validate_reward(&raw, &mut p);
    let guardrails = validate_guardrails(&raw, &history, &mut p);
    if let Some(f) = &features {
        let models = match raw.mode {
            Mode::Disjoint => raw.arms.len().max(1),
            Mode::Shared => 1,
        };
        let entries = models.saturating_mul(f.dim().saturating_mul(f.dim()));
        if f.dim() <= MAX_DIM && entries > MAX_MODEL_ENTRIES {
            p.add(
                "features",
                format!(
                    "{models} arm(s) of dimension {} need {entries} matrix entries each for Σxxᵀ and A⁻¹; at most {MAX_MODEL_ENTRIES} are allowed",
                    f.dim()
                ),
            );
        }
    }

    match (features, p.errors.is_empty()) {
        (Some(features), true) => Ok(PolicySpec {
            id: raw.id,
            version: raw.version,
            description: raw.description,
            algorithm: raw.algorithm,
            mode: raw.mode,
            arms: raw.arms,
            params,
            features,
            reward,
            guardrails,
            learning: raw.learning,
            challengers: Vec::new(),
            promote_after: raw.promote_after,
            promote: raw.promote,
            alerts: AlertSpec {
                window: raw.alerts.window,
                min_entropy: raw.alerts.min_entropy,
                min_probability: raw.alerts.min_probability,
                min_events: raw.alerts.min_events,
            },
        })
        .and_then(|mut spec: PolicySpec| {
            spec.challengers = challengers(text, origin, &spec, challenger_tables)?;
            Ok(spec)
        }),
        _ => Err(p.errors),
    }
}

/// Keys a `[[challengers]]` table may set; the rest is the live policy's.
const CHALLENGER_KEYS: &[&str] = &["id", "description", "algorithm", "params"];

/// Validates `[[challengers]]`: each is the live policy's file with its
/// own `id`, `description`, `algorithm` and `params` (a table replaces the
/// live one whole: another algorithm takes other parameters), checked by
/// the same rules, and must keep the policy's layout (arms, features, λ):
/// a challenger reads the live model, whose statistics are the same for
/// every algorithm over one layout.
fn challengers(
    text: &str,
    origin: &Path,
    live: &PolicySpec,
    tables: Vec<toml::Table>,
) -> Result<Vec<PolicySpec>, Vec<PolicyError>> {
    if tables.is_empty() {
        return Ok(Vec::new());
    }
    let mut errors = Vec::new();
    let error = |key: String, message: String| PolicyError {
        file: origin.to_path_buf(),
        key,
        message,
    };
    let mut base: toml::Table = toml::from_str(text).expect("parsed above");
    base.remove("challengers");
    base.remove("learning");
    base.remove("promote_after");
    base.remove("promote");
    let mut out: Vec<PolicySpec> = Vec::new();
    for (i, table) in tables.into_iter().enumerate() {
        let at = format!("challengers[{i}]");
        for key in table.keys() {
            if !CHALLENGER_KEYS.contains(&key.as_str()) {
                errors.push(error(
                    format!("{at}.{key}"),
                    format!(
                        "a challenger sets only {}; the rest is the live policy's",
                        CHALLENGER_KEYS.join(", ")
                    ),
                ));
            }
        }
        if !table.contains_key("id") {
            errors.push(error(
                format!("{at}.id"),
                "every challenger needs an id".into(),
            ));
            continue;
        }
        let mut merged = base.clone();
        merged.remove("params");
        merged.remove("description");
        for (key, value) in table {
            if CHALLENGER_KEYS.contains(&key.as_str()) {
                merged.insert(key, value);
            }
        }
        let child_text = toml::to_string(&merged).expect("a TOML table serialises");
        match parse_policy(&child_text, origin) {
            Ok(child) => {
                if child.id == live.id || out.iter().any(|c| c.id == child.id) {
                    errors.push(error(
                        format!("{at}.id"),
                        format!(
                            "{:?} is taken: challenger ids differ from the policy's and each other's",
                            child.id
                        ),
                    ));
                } else if !live.same_layout(&child) {
                    errors.push(error(
                        format!("{at}.params.lambda"),
                        "a challenger reads the live model: it must keep its lambda".into(),
                    ));
                } else {
                    out.push(child);
                }
            }
            Err(child_errors) => errors.extend(child_errors.into_iter().map(|e| PolicyError {
                key: if e.key.is_empty() {
                    at.clone()
                } else {
                    format!("{at}.{}", e.key)
                },
                ..e
            })),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// The dotted key and "line L, column C: " of a byte offset in a TOML
/// text: the nearest `[table]` header above it and the `key =` on its line.
fn locate(text: &str, offset: usize) -> (String, String) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line_no = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = offset - line_start + 1;
    let line = text[line_start..].lines().next().unwrap_or("");
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_string());
    let key = match line.split_once('=') {
        Some((lhs, _)) if !line.trim_start().starts_with('[') => {
            let lhs = lhs.trim().trim_matches('"');
            match table {
                Some(t) => format!("{t}.{lhs}"),
                None => lhs.to_string(),
            }
        }
        _ => String::new(),
    };
    (key, format!("line {line_no}, column {col}: "))
}

fn validate_params(raw: &RawPolicy, p: &mut Problems) -> Params {
    let r = &raw.params;
    let algo = raw.algorithm;
    let mut out = Params::default();
    let uses = |key: &str| -> bool {
        use Algorithm::*;
        match key {
            "alpha" => algo == LinUcb,
            "lambda" | "refactor_every" => matches!(algo, LinUcb | LinTs | EpsilonGreedy),
            "v" => algo == LinTs,
            "epsilon" => algo != Uniform,
            "draws" => algo == BetaTs || (algo == LinTs && raw.mode == Mode::Shared),
            _ => false,
        }
    };
    let unused = |key: &str, given: bool, p: &mut Problems| {
        if given && !uses(key) {
            let what = if key == "draws" {
                "only beta_ts and shared-mode lin_ts draw Monte Carlo samples"
            } else {
                "not a parameter of this algorithm"
            };
            p.add(
                format!("params.{key}"),
                format!("{what} ({}); remove it", algo.name()),
            );
            false
        } else {
            given
        }
    };
    if unused("alpha", r.alpha.is_some(), p) {
        let a = r.alpha.unwrap_or_default();
        if a.is_finite() && a >= 0.0 {
            out.alpha = a;
        } else {
            p.add(
                "params.alpha",
                format!("expected a finite number >= 0, got {a}"),
            );
        }
    }
    if unused("lambda", r.lambda.is_some(), p) {
        let l = r.lambda.unwrap_or_default();
        if l.is_finite() && l > 0.0 {
            out.lambda = l;
        } else {
            p.add(
                "params.lambda",
                format!("expected a finite number > 0, got {l}"),
            );
        }
    }
    if unused("v", r.v.is_some(), p) {
        let v = r.v.unwrap_or_default();
        if v.is_finite() && v > 0.0 {
            out.v = v;
        } else {
            p.add("params.v", format!("expected a finite number > 0, got {v}"));
        }
    }
    if unused("epsilon", r.epsilon.is_some(), p) {
        let e = r.epsilon.unwrap_or_default();
        if (0.0..=1.0).contains(&e) {
            out.epsilon = e;
        } else {
            p.add(
                "params.epsilon",
                format!("expected a number in [0, 1], got {e}"),
            );
        }
    }
    if unused("draws", r.draws.is_some(), p) {
        let d = r.draws.unwrap_or_default();
        if (1..=MAX_DRAWS).contains(&d) {
            out.draws = d;
        } else {
            p.add(
                "params.draws",
                format!("expected an integer in [1, {MAX_DRAWS}], got {d}"),
            );
        }
    }
    if unused("refactor_every", r.refactor_every.is_some(), p) {
        let n = r.refactor_every.unwrap_or_default();
        if n >= 1 {
            out.refactor_every = n;
        } else {
            p.add("params.refactor_every", "expected an integer >= 1, got 0");
        }
    }
    out
}

fn validate_arms(raw: &RawPolicy, p: &mut Problems) {
    match raw.mode {
        Mode::Disjoint => {
            if raw.arms.is_empty() {
                p.add(
                    "arms",
                    "expected a non-empty list of arm ids in disjoint mode",
                );
            }
            if raw.arms.len() > MAX_ARMS {
                p.add(
                    "arms",
                    format!("expected at most {MAX_ARMS} arms, got {}", raw.arms.len()),
                );
            }
            let mut seen = HashMap::new();
            for (i, arm) in raw.arms.iter().enumerate() {
                if !is_valid_id(arm, 128) {
                    p.add(
                        format!("arms[{i}]"),
                        format!("expected 1 to 128 characters of [A-Za-z0-9_.-], got {arm:?}"),
                    );
                }
                if let Some(first) = seen.insert(arm.as_str(), i) {
                    p.add(
                        format!("arms[{i}]"),
                        format!("duplicate arm {arm:?} (also arms[{first}])"),
                    );
                }
            }
            if !raw.features.action.is_empty() {
                p.add("features.action", "action features need mode = \"shared\"");
            }
            if !raw.features.interactions.is_empty() {
                p.add(
                    "features.interactions",
                    "interactions need mode = \"shared\"",
                );
            }
        }
        Mode::Shared => {
            if !raw.arms.is_empty() {
                p.add(
                    "arms",
                    "shared mode takes its candidates per request; remove `arms`",
                );
            }
            if raw.features.action.is_empty() {
                p.add(
                    "features.action",
                    "shared mode needs at least one action feature, or every candidate scores the same",
                );
            }
            if raw.algorithm == Algorithm::BetaTs {
                p.add(
                    "mode",
                    "beta_ts has no features and needs mode = \"disjoint\"",
                );
            }
        }
    }
}

fn validate_features(
    raw: &RawPolicy,
    p: &mut Problems,
    history: &mut Vec<RawHistoryFeature>,
) -> Option<FeatureSpec> {
    let context = validate_side(&raw.features.context, "features.context", p, history);
    let action = validate_side(&raw.features.action, "features.action", p, history);
    let interactions: Vec<(String, String)> = raw
        .features
        .interactions
        .iter()
        .map(|i| (i.context.clone(), i.action.clone()))
        .collect();
    let unknown = match raw.features.unknown {
        RawUnknown::Ignore => UnknownFeatures::Ignore,
        RawUnknown::Reject => UnknownFeatures::Reject,
    };
    let spec = FeatureSpec::new(raw.features.bias, context, action, &interactions, unknown)
        .map_err(|e| p.add("features", e.0))
        .ok()?;
    if spec.dim() == 0 {
        p.add(
            "features",
            "the feature vector is empty: enable `bias` or declare a feature",
        );
    }
    if spec.dim() > MAX_DIM {
        p.add(
            "features",
            format!(
                "the feature vector has {} dimensions, at most {MAX_DIM} are allowed",
                spec.dim()
            ),
        );
    }
    Some(spec)
}

/// A `number` feature's standardisation and default, checked.
fn number_kind(
    mean: Option<f64>,
    std: Option<f64>,
    default: Option<f64>,
    key: &dyn Fn(&str) -> String,
    p: &mut Problems,
) -> FeatureKind {
    let mean = mean.unwrap_or(0.0);
    let std = std.unwrap_or(1.0);
    if !mean.is_finite() {
        p.add(key("mean"), format!("expected a finite number, got {mean}"));
    }
    if !(std.is_finite() && std > 0.0) {
        p.add(
            key("std"),
            format!("expected a finite number > 0, got {std}"),
        );
    }
    if let Some(d) = default.filter(|d| !d.is_finite()) {
        p.add(key("default"), format!("expected a finite number, got {d}"));
    }
    FeatureKind::Number { mean, std, default }
}

fn validate_side(
    raw: &[RawFeature],
    side: &str,
    p: &mut Problems,
    history: &mut Vec<RawHistoryFeature>,
) -> Vec<(String, FeatureKind)> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, f) in raw.iter().enumerate() {
        let key = |k: &str| format!("{side}[{i}].{k}");
        let (name, kind) = match f {
            RawFeature::History {
                name,
                stat,
                per,
                arm,
                group,
                mean,
                std,
                default,
            } => {
                if side != "features.context" {
                    p.add(key("type"), "history features are context features");
                }
                history.push(RawHistoryFeature {
                    key: format!("{side}[{i}]"),
                    name: name.clone(),
                    stat: stat.clone(),
                    per: per.clone(),
                    arm: arm.clone(),
                    group: group.clone(),
                    has_default: default.is_some(),
                });
                (name, number_kind(*mean, *std, *default, &key, p))
            }
            RawFeature::Number {
                name,
                mean,
                std,
                default,
            } => (name, number_kind(*mean, *std, *default, &key, p)),
            RawFeature::Categorical {
                name,
                vocabulary,
                default,
            } => {
                if vocabulary.is_empty() {
                    p.add(key("vocabulary"), "expected a non-empty list of strings");
                }
                let mut index = HashMap::with_capacity(vocabulary.len());
                for (j, v) in vocabulary.iter().enumerate() {
                    if index.insert(v.clone(), j).is_some() {
                        p.add(
                            format!("{}[{j}]", key("vocabulary")),
                            format!("duplicate value {v:?}"),
                        );
                    }
                }
                let kind = FeatureKind::OneHot {
                    vocabulary: vocabulary.clone(),
                    index,
                    default: default.clone(),
                };
                (name, kind)
            }
            RawFeature::Hashed {
                name,
                buckets,
                default,
            } => {
                if !(1..=1 << 16).contains(buckets) {
                    p.add(
                        key("buckets"),
                        format!("expected an integer in [1, 65536], got {buckets}"),
                    );
                }
                (
                    name,
                    FeatureKind::Hashed {
                        buckets: (*buckets).max(1),
                        default: default.clone(),
                    },
                )
            }
            RawFeature::Vector {
                name,
                length,
                default,
            } => {
                if !(1..=MAX_DIM).contains(length) {
                    p.add(
                        key("length"),
                        format!("expected an integer in [1, {MAX_DIM}], got {length}"),
                    );
                }
                if let Some(d) = default {
                    if d.len() != *length {
                        p.add(
                            key("default"),
                            format!(
                                "expected a vector of length {length}, got length {}",
                                d.len()
                            ),
                        );
                    } else if d.iter().any(|v| !v.is_finite()) {
                        p.add(key("default"), "expected finite numbers");
                    }
                }
                (
                    name,
                    FeatureKind::Vector {
                        len: (*length).max(1),
                        default: default.clone(),
                    },
                )
            }
        };
        if !is_valid_id(name, 64) {
            p.add(
                key("name"),
                format!("expected 1 to 64 characters of [A-Za-z0-9_.-], got {name:?}"),
            );
        }
        out.push((name.clone(), kind));
    }
    out
}

fn validate_reward(raw: &RawPolicy, p: &mut Problems) -> RewardSpec {
    let r = &raw.reward;
    for (name, w) in &r.signals {
        if !is_valid_id(name, 64) {
            p.add(
                format!("reward.signals.{name}"),
                "expected a signal name of [A-Za-z0-9_.-]",
            );
        }
        if !w.is_finite() {
            p.add(
                format!("reward.signals.{name}"),
                format!("expected a finite weight, got {w}"),
            );
        }
    }
    if r.window.is_zero() {
        p.add(
            "reward.window",
            "expected a positive duration such as \"30m\" or \"24h\"",
        );
    }
    if r.window > MAX_WINDOW {
        p.add(
            "reward.window",
            format!(
                "expected at most 10 years, got {} seconds",
                r.window.as_secs()
            ),
        );
    }
    let (mut min, mut max) = (r.min, r.max);
    if raw.algorithm == Algorithm::BetaTs {
        // Beta-Bernoulli needs rewards in [0, 1].
        let lo = min.unwrap_or(0.0);
        let hi = max.unwrap_or(1.0);
        if lo < 0.0 || hi > 1.0 {
            p.add(
                "reward",
                format!("beta_ts needs rewards within [0, 1], the range is [{lo}, {hi}]"),
            );
        }
        min = Some(lo);
        max = Some(hi);
    }
    for (key, v) in [("reward.min", min), ("reward.max", max)] {
        if let Some(v) = v.filter(|v| !v.is_finite()) {
            p.add(key, format!("expected a finite number, got {v}"));
        }
    }
    if let (Some(lo), Some(hi)) = (min, max)
        && lo >= hi
    {
        p.add(
            "reward.max",
            format!("expected max > min, got min {lo}, max {hi}"),
        );
    }
    let spec = RewardSpec {
        signals: r.signals.clone(),
        window: r.window,
        default: r.default,
        aggregation: r.aggregation,
        min,
        max,
    };
    if spec.check(r.default).is_err() {
        p.add(
            "reward.default",
            format!(
                "expected a finite number within the reward range, got {}",
                r.default
            ),
        );
    }
    spec
}

fn validate_guardrails(
    raw: &RawPolicy,
    history: &[RawHistoryFeature],
    p: &mut Problems,
) -> Option<Guardrails> {
    let Some(g) = &raw.guardrails else {
        if let Some(h) = history.first() {
            p.add(
                format!("{}.type", h.key),
                "history features need a [guardrails] table (it says which arms are sends)",
            );
        }
        return None;
    };
    if raw.mode != Mode::Disjoint {
        p.add(
            "guardrails",
            "guardrails need mode = \"disjoint\" (fixed arms, each a send or a hold)",
        );
        return None;
    }
    crate::guardrails::spec::validate(g, &raw.arms, history, &mut |k, m| p.add(k, m))
}
