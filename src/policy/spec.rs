//! Policy files: TOML in, a validated [`PolicySpec`] out (or every error
//! found, each naming the file, the key and what was expected).
//!
//! Parse, don't validate: the raw serde types below mirror the file; only
//! [`PolicySpec`] reaches the maths, and it cannot hold a negative `alpha`,
//! an epsilon outside `[0, 1]`, a duplicate arm or a zero-length vector.

use crate::features::{FeatureKind, FeatureSpec, UnknownFeatures};
use crate::guardrails::Guardrails;
use crate::guardrails::spec::{RawGuardrails, RawHistoryFeature};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Largest feature dimension a policy may declare (A is d×d per arm).
pub const MAX_DIM: usize = 1024;
/// Largest number of arms in disjoint mode.
pub const MAX_ARMS: usize = 1024;
/// Largest model, in matrix entries (`arms × dim²`): each arm keeps `Σxxᵀ`
/// and `A⁻¹`, so the two limits above together would allow 1024 arms of
/// 1024² entries, 16 GiB; this caps it at 2 GiB (e.g. 128 arms at d = 1024).
pub const MAX_MODEL_ENTRIES: usize = 1 << 27;
/// Largest Monte Carlo draw count.
pub const MAX_DRAWS: u32 = 1_000_000;
/// Largest reward magnitude, whatever range a policy declares: the model
/// learns `r·x`, so a finite but huge reward (`1e308`) would overflow its
/// statistics to infinity (and a window's sum of several would overflow
/// the sum itself). With features bounded by
/// [`MAX_MAGNITUDE`](crate::features::MAX_MAGNITUDE), `r·x` stays within
/// `1e30`.
pub const MAX_REWARD: f64 = 1e12;
/// Longest reward window: deadlines are unix milliseconds in an `i64`, and
/// a window of centuries is a typo, not a policy.
pub const MAX_WINDOW: Duration = Duration::from_secs(10 * 366 * 24 * 3600);

/// The decision algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// LinUCB (Li et al. 2010).
    #[serde(rename = "linucb")]
    LinUcb,
    /// Linear Thompson sampling (Agrawal & Goyal 2013).
    LinTs,
    /// Epsilon-greedy on the ridge estimate (baseline).
    EpsilonGreedy,
    /// Beta-Bernoulli Thompson sampling, no context (baseline).
    BetaTs,
    /// Uniform random (baseline).
    Uniform,
}

impl Algorithm {
    /// The name used in policy files.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::LinUcb => "linucb",
            Algorithm::LinTs => "lin_ts",
            Algorithm::EpsilonGreedy => "epsilon_greedy",
            Algorithm::BetaTs => "beta_ts",
            Algorithm::Uniform => "uniform",
        }
    }
}

/// How actions are modelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// A fixed list of arms, one model per arm, context features only.
    #[default]
    Disjoint,
    /// Candidates arrive per request with their own features; one model
    /// scores the joint (context, action) vector.
    Shared,
}

impl Mode {
    /// The name used in policy files.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Disjoint => "disjoint",
            Mode::Shared => "shared",
        }
    }
}

/// How several rewards for one event combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Aggregation {
    /// The first reward is learned at once; another is refused.
    #[default]
    First,
    /// Rewards add up; the event is learned when its window closes.
    Sum,
}

/// Validated hyper-parameters. Fields an algorithm does not use keep their
/// defaults and are refused in the file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Params {
    /// LinUCB exploration width `α >= 0`.
    pub alpha: f64,
    /// Ridge prior `λ > 0`.
    pub lambda: f64,
    /// Thompson posterior scale `v > 0`.
    pub v: f64,
    /// Exploration floor `ε ∈ [0, 1]`.
    pub epsilon: f64,
    /// Monte Carlo draws for shared linear TS and Beta TS propensities.
    pub draws: u32,
    /// Sherman–Morrison steps between full refactorisations.
    pub refactor_every: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            alpha: 1.0,
            lambda: 1.0,
            v: 0.5,
            epsilon: 0.05,
            draws: 1000,
            refactor_every: 1000,
        }
    }
}

/// Validated reward settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardSpec {
    /// Weights of named outcome signals: `reward = Σ w_s · signal_s`.
    pub signals: BTreeMap<String, f64>,
    /// How long after a decision rewards are accepted.
    pub window: Duration,
    /// Learned when the window closes without a reward.
    pub default: f64,
    /// How several rewards for one event combine.
    pub aggregation: Aggregation,
    /// Smallest acceptable reward, if bounded.
    pub min: Option<f64>,
    /// Largest acceptable reward, if bounded.
    pub max: Option<f64>,
}

/// A reward that cannot be accepted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RewardError {
    /// A signal the policy does not declare.
    #[error("signal `{0}` is not declared by the policy's reward function")]
    UnknownSignal(String),
    /// NaN or infinity.
    #[error("`{0}` must be a finite number")]
    NotFinite(String),
    /// Outside `[min, max]`.
    #[error("reward {value} is outside the policy's range [{min}, {max}]")]
    OutOfRange {
        /// The reward.
        value: f64,
        /// Lower bound (at least `-MAX_REWARD`).
        min: f64,
        /// Upper bound (at most `MAX_REWARD`).
        max: f64,
    },
}

impl RewardSpec {
    /// Turns named signals into a reward, `Σ w_s · signal_s`; signals not
    /// sent count as 0 (not observed). The result must lie in the range.
    pub fn from_signals<'a>(
        &self,
        signals: impl IntoIterator<Item = (&'a str, f64)>,
    ) -> Result<f64, RewardError> {
        let mut reward = 0.0;
        for (name, value) in signals {
            let w = self
                .signals
                .get(name)
                .ok_or_else(|| RewardError::UnknownSignal(name.to_string()))?;
            if !value.is_finite() {
                return Err(RewardError::NotFinite(name.to_string()));
            }
            reward += w * value;
        }
        if !reward.is_finite() {
            // Every signal was finite: the weighted sum overflowed, which
            // is a reward out of range, not a bad signal.
            let (min, max) = self.range();
            return Err(RewardError::OutOfRange {
                value: reward,
                min,
                max,
            });
        }
        self.check(reward)
    }

    /// The accepted range: the declared bounds, within `±`[`MAX_REWARD`].
    pub fn range(&self) -> (f64, f64) {
        (
            self.min.unwrap_or(f64::NEG_INFINITY).max(-MAX_REWARD),
            self.max.unwrap_or(f64::INFINITY).min(MAX_REWARD),
        )
    }

    /// Checks a numeric reward: finite and within the range, which is never
    /// wider than `±`[`MAX_REWARD`].
    pub fn check(&self, reward: f64) -> Result<f64, RewardError> {
        if !reward.is_finite() {
            return Err(RewardError::NotFinite("reward".into()));
        }
        let (min, max) = self.range();
        if reward < min || reward > max {
            return Err(RewardError::OutOfRange {
                value: reward,
                min,
                max,
            });
        }
        Ok(reward)
    }
}

/// A validated policy definition.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicySpec {
    /// Unique id (`[A-Za-z0-9_.-]`, at most 64 characters).
    pub id: String,
    /// The definition's version (bumped by its authors on a change).
    pub version: u32,
    /// Free text.
    pub description: String,
    /// The algorithm.
    pub algorithm: Algorithm,
    /// Disjoint or shared.
    pub mode: Mode,
    /// The arms (disjoint mode; empty in shared mode).
    pub arms: Vec<String>,
    /// Hyper-parameters.
    pub params: Params,
    /// Features and their layout.
    pub features: FeatureSpec,
    /// Reward settings.
    pub reward: RewardSpec,
    /// Notification guardrails over each user's history (disjoint mode).
    pub guardrails: Option<Guardrails>,
}

impl PolicySpec {
    /// The index of arm `id` (disjoint mode).
    pub fn arm_index(&self, id: &str) -> Option<usize> {
        self.arms.iter().position(|a| a == id)
    }
}

/// One problem in one policy file.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyError {
    /// The file (or a label for text not from a file).
    pub file: PathBuf,
    /// The dotted key, e.g. `params.alpha` or `features.context[2].std`;
    /// empty for syntax errors that have only a position.
    pub key: String,
    /// What was expected, and what was found.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: `{}`: {}",
                self.file.display(),
                self.key,
                self.message
            )
        }
    }
}

impl std::error::Error for PolicyError {}

// ---- the file as written -------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    id: String,
    #[serde(default = "one")]
    version: u32,
    #[serde(default)]
    description: String,
    algorithm: Algorithm,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    arms: Vec<String>,
    #[serde(default)]
    params: RawParams,
    #[serde(default)]
    features: RawFeatures,
    #[serde(default)]
    reward: RawReward,
    guardrails: Option<RawGuardrails>,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawParams {
    alpha: Option<f64>,
    lambda: Option<f64>,
    v: Option<f64>,
    epsilon: Option<f64>,
    draws: Option<u32>,
    refactor_every: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFeatures {
    #[serde(default = "yes")]
    bias: bool,
    #[serde(default)]
    unknown: RawUnknown,
    #[serde(default)]
    context: Vec<RawFeature>,
    #[serde(default)]
    action: Vec<RawFeature>,
    #[serde(default)]
    interactions: Vec<RawInteraction>,
}

impl Default for RawFeatures {
    fn default() -> Self {
        RawFeatures {
            bias: true,
            unknown: RawUnknown::Ignore,
            context: vec![],
            action: vec![],
            interactions: vec![],
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawUnknown {
    #[default]
    Ignore,
    Reject,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum RawFeature {
    Number {
        name: String,
        mean: Option<f64>,
        std: Option<f64>,
        default: Option<f64>,
    },
    Categorical {
        name: String,
        vocabulary: Vec<String>,
        default: Option<String>,
    },
    Hashed {
        name: String,
        buckets: usize,
        default: Option<String>,
    },
    Vector {
        name: String,
        length: usize,
        default: Option<Vec<f64>>,
    },
    /// A number Nudge computes from the user's history (see
    /// [`crate::guardrails::HistoryStat`]).
    History {
        name: String,
        stat: String,
        per: Option<String>,
        arm: Option<String>,
        group: Option<String>,
        mean: Option<f64>,
        std: Option<f64>,
        default: Option<f64>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInteraction {
    context: String,
    action: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReward {
    #[serde(default)]
    signals: BTreeMap<String, f64>,
    #[serde(default = "one_day", with = "humantime_serde")]
    window: Duration,
    #[serde(default)]
    default: f64,
    #[serde(default)]
    aggregation: Aggregation,
    min: Option<f64>,
    max: Option<f64>,
}

impl Default for RawReward {
    fn default() -> Self {
        RawReward {
            signals: BTreeMap::new(),
            window: one_day(),
            default: 0.0,
            aggregation: Aggregation::First,
            min: None,
            max: None,
        }
    }
}

fn one_day() -> Duration {
    Duration::from_secs(24 * 3600)
}

// ---- validation ------------------------------------------------------------

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
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
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
        }),
        _ => Err(p.errors),
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
