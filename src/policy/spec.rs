//! Validated policy definitions: what the rest of the code trusts.
//!
//! Parse, don't validate: the raw serde types in `raw.rs` mirror the file,
//! `parse.rs` validates them (every error found, each naming the file, the
//! key and what was expected) and `load.rs` reads files and directories;
//! only a [`PolicySpec`] reaches the maths, and it cannot hold a negative
//! `alpha`, an epsilon outside `[0, 1]`, a duplicate arm or a zero-length
//! vector.

use crate::features::FeatureSpec;
use crate::guardrails::Guardrails;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub use super::parse::{is_valid_id, parse_policy};

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

/// Who acts on the promotion rule (`promote`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Promote {
    /// The rule is reported (`promotable`); an admin promotes.
    #[default]
    Manual,
    /// The first replica to see the rule hold promotes the challenger.
    Auto,
}

/// How a policy uses its traffic (the `learning` key of a policy file).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Learning {
    /// Decides with the live model, which learns from every reward.
    #[default]
    Online,
    /// Explores and logs with true propensities, but decides with the
    /// model it had when the mode took effect (start or reload): a fixed
    /// logging policy, so the log is one clean OPE dataset. Rewards are
    /// still learned into the shared model, which a switch to `online`
    /// then decides with.
    LoggingOnly,
    /// The caller names its current choice (`default_action`); Nudge
    /// answers with it (propensity 1: that is the truth of a deterministic
    /// caller), logs it, learns from its rewards, and counts how often its
    /// own draw would have agreed.
    Apprentice,
}

impl Learning {
    /// The name used in policy files.
    pub fn name(self) -> &'static str {
        match self {
            Learning::Online => "online",
            Learning::LoggingOnly => "logging_only",
            Learning::Apprentice => "apprentice",
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
    /// How the policy uses its traffic.
    pub learning: Learning,
    /// Shadow challengers (`[[challengers]]`): each a complete spec over
    /// this policy's arms, features and λ (so it reads this policy's
    /// model), with its own id, algorithm and hyper-parameters. They score
    /// every decision but never choose.
    pub challengers: Vec<PolicySpec>,
    /// The declared promotion rule: a challenger is reported promotable
    /// once its estimate covers at least this many events and its IPW
    /// interval lies above the live policy's (`GET /v1/policies/{id}`);
    /// promoting is then the admin's call.
    pub promote_after: Option<u64>,
    /// Whether the rule promotes by itself (`promote = "auto"`) or only
    /// reports (`"manual"`, the default: an admin calls promote).
    pub promote: Promote,
    /// When the learning monitor raises an alert (`[alerts]`).
    pub alerts: AlertSpec,
}

/// The thresholds of the learning alerts (see [`crate::alerts`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AlertSpec {
    /// The recent span every alert looks at (1 s to 1 h; default 5 min),
    /// compared with the rest of the hour before it.
    pub window: std::time::Duration,
    /// Exploration collapse: the mean normalised entropy of the decision
    /// distributions in the window below this (default 0.05).
    pub min_entropy: f64,
    /// Exploration collapse: a logged propensity in the window below this
    /// (default: no such floor).
    pub min_probability: Option<f64>,
    /// The fewest decisions (or rewards) a span needs before an alert can
    /// be raised from it (default 20).
    pub min_events: u64,
}

impl PolicySpec {
    /// Whether a model learned under `self` means the same under `other`:
    /// the same arms, features (names, kinds, vocabularies, scaling,
    /// offsets) and ridge prior λ (part of every `A`). Algorithm, α, v, ε,
    /// rewards, guardrails and learning mode may change under a kept model.
    pub fn same_layout(&self, other: &PolicySpec) -> bool {
        self.mode == other.mode
            && self.arms == other.arms
            && self.features == other.features
            && self.params.lambda.to_bits() == other.params.lambda.to_bits()
    }

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
