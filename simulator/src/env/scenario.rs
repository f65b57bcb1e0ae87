//! Scenario files: TOML in, a validated [`Scenario`] out (or every error
//! found, each naming the file, the dotted key and what was expected, in
//! the style of the policy parser).
//!
//! A scenario is a synthetic world: a distribution of contexts, a fixed set
//! of actions (with features, for shared-mode policies), and for each
//! outcome signal a hidden model of its distribution given (context,
//! action, round). The policies under test never see the hidden models;
//! the simulator uses them to draw outcomes, and their exact conditional
//! means to compute regret and true policy values.
//!
//! The hidden models are generalised linear: each signal has a linear
//! predictor `η(x, a, t) = intercept + Σ terms(x) + drift(t)` per action,
//! and a link:
//! - `bernoulli`: `P(s = 1) = σ(η) = 1 / (1 + e^{-η})` (logistic link);
//! - `lognormal`: `s = exp(η + σ Z)`, `E[s] = exp(η + σ²/2)`;
//! - `normal`: `s = η + sd · Z`, `E[s] = η`.
//!
//! A signal with `given = "other"` is 0 unless the Bernoulli signal `other`
//! is 1 (dwell time only exists for an opened notification); the two are
//! independent given (x, a), so `E[s] = P(other = 1) · E[s | other = 1]`.

use super::rounds::{mix_seed, round_rng};
use super::users::{self, RawUsers, UserState, Users};
use nudge::features::FeatureValue;
use rand::RngExt;
use rand::distr::weighted::WeightedIndex;
use rand_distr::{Distribution, Exp, Normal, Poisson, StandardNormal};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Largest number of rounds a scenario may ask for.
pub const MAX_HORIZON: usize = 100_000_000;
/// Largest embedding length.
pub const MAX_EMBEDDING: usize = 1024;

/// One problem in one scenario file.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioError {
    /// The file (or a label for text not from a file).
    pub file: PathBuf,
    /// The dotted key, e.g. `signals[0].actions.send_now.platform`; empty
    /// when only a position is known.
    pub key: String,
    /// What was expected, and what was found.
    pub message: String,
}

impl fmt::Display for ScenarioError {
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

impl std::error::Error for ScenarioError {}

/// Several errors of one file, displayed one per line.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioErrors(pub Vec<ScenarioError>);

impl fmt::Display for ScenarioErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ScenarioErrors {}

// ---- validated types -------------------------------------------------------

/// The distribution of one context feature.
#[derive(Debug, Clone, PartialEq)]
pub enum ContextDist {
    /// `N(mean, std²)`.
    Normal {
        /// Mean.
        mean: f64,
        /// Standard deviation (> 0).
        std: f64,
    },
    /// Uniform on `[low, high)`.
    Uniform {
        /// Lower end.
        low: f64,
        /// Upper end (> low).
        high: f64,
    },
    /// Uniform on the integers `low..=high`.
    Integer {
        /// Smallest value.
        low: i64,
        /// Largest value (>= low).
        high: i64,
    },
    /// Poisson counts with the given mean (> 0).
    Poisson {
        /// Mean.
        mean: f64,
    },
    /// Exponential with the given mean (> 0).
    Exponential {
        /// Mean.
        mean: f64,
    },
    /// One of `values`, with probabilities proportional to `weights`.
    Choice {
        /// The numbers.
        values: Vec<f64>,
        /// Normalised probabilities.
        probs: Vec<f64>,
    },
    /// One of `values` (strings), with probabilities `probs`.
    Categorical {
        /// The strings.
        values: Vec<String>,
        /// Normalised probabilities.
        probs: Vec<f64>,
    },
    /// 1 with probability `p`, else 0.
    Bernoulli {
        /// P(1).
        p: f64,
    },
    /// An embedding-like vector: one of `centers` (uniformly) plus
    /// `N(0, spread² I)` noise. The centers are hidden: drawn as
    /// `N(0, scale² I)` from the scenario seed.
    Embedding {
        /// The cluster centers.
        centers: Vec<Vec<f64>>,
        /// Noise around the center (0: exactly a center).
        spread: f64,
    },
}

impl ContextDist {
    fn sample(&self, rng: &mut impl rand::Rng) -> Value {
        match self {
            ContextDist::Normal { mean, std } => {
                let z: f64 = StandardNormal.sample(rng);
                Value::Num(mean + std * z)
            }
            ContextDist::Uniform { low, high } => {
                Value::Num(low + (high - low) * rng.random::<f64>())
            }
            ContextDist::Integer { low, high } => Value::Num(rng.random_range(*low..=*high) as f64),
            ContextDist::Poisson { mean } => {
                Value::Num(Poisson::new(*mean).expect("validated mean").sample(rng))
            }
            ContextDist::Exponential { mean } => {
                Value::Num(Exp::new(1.0 / mean).expect("validated mean").sample(rng))
            }
            ContextDist::Choice { values, probs } => Value::Num(values[pick(probs, rng)]),
            ContextDist::Categorical { probs, .. } => Value::Cat(pick(probs, rng)),
            ContextDist::Bernoulli { p } => {
                Value::Num(f64::from(u8::from(rng.random::<f64>() < *p)))
            }
            ContextDist::Embedding { centers, spread } => {
                let c = &centers[rng.random_range(0..centers.len())];
                let noise = Normal::new(0.0, *spread).expect("validated spread");
                Value::Vec(c.iter().map(|v| v + noise.sample(rng)).collect())
            }
        }
    }

    /// The finite support with probabilities, or `None` for a continuous
    /// (or unbounded) distribution.
    fn support(&self) -> Option<Vec<(Value, f64)>> {
        match self {
            ContextDist::Integer { low, high } => {
                let n = (high - low + 1) as f64;
                Some(
                    (*low..=*high)
                        .map(|v| (Value::Num(v as f64), 1.0 / n))
                        .collect(),
                )
            }
            ContextDist::Choice { values, probs } => Some(
                values
                    .iter()
                    .zip(probs)
                    .map(|(v, p)| (Value::Num(*v), *p))
                    .collect(),
            ),
            ContextDist::Categorical { probs, .. } => Some(
                probs
                    .iter()
                    .enumerate()
                    .map(|(i, p)| (Value::Cat(i), *p))
                    .collect(),
            ),
            ContextDist::Bernoulli { p } => {
                Some(vec![(Value::Num(0.0), 1.0 - p), (Value::Num(1.0), *p)])
            }
            ContextDist::Embedding { centers, spread } if *spread == 0.0 => {
                let n = centers.len() as f64;
                Some(
                    centers
                        .iter()
                        .map(|c| (Value::Vec(c.clone()), 1.0 / n))
                        .collect(),
                )
            }
            _ => None,
        }
    }
}

fn pick(probs: &[f64], rng: &mut impl rand::Rng) -> usize {
    WeightedIndex::new(probs)
        .expect("validated probabilities")
        .sample(rng)
}

/// One context feature's value in a round.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A number.
    Num(f64),
    /// A categorical feature's index into its values.
    Cat(usize),
    /// A vector.
    Vec(Vec<f64>),
}

/// A context feature of the scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextFeature {
    /// The name sent to policies.
    pub name: String,
    /// Its distribution.
    pub dist: ContextDist,
}

/// An action of the scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    /// Its id (a disjoint policy's arm, or a shared policy's candidate id).
    pub id: String,
    /// Its features, sent to shared-mode policies.
    pub features: Vec<(String, FeatureValue)>,
}

/// How a signal is distributed given its linear predictor `η`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Link {
    /// `P(s = 1) = σ(η)`.
    Bernoulli,
    /// `s = exp(η + σ Z)`.
    LogNormal {
        /// Log-scale noise σ >= 0.
        sigma: f64,
    },
    /// `s = η + sd · Z`.
    Normal {
        /// Noise sd >= 0.
        sd: f64,
    },
}

/// One term of a linear predictor.
#[derive(Debug, Clone, PartialEq)]
enum Term {
    /// `coef · x_f` for a numeric feature.
    Coef(usize, f64),
    /// `effects[x_f]` for a categorical feature.
    Effects(usize, Vec<f64>),
    /// `weights · x_f` for a vector feature.
    Weights(usize, Vec<f64>),
}

/// A linear predictor for one (signal, action).
#[derive(Debug, Clone, PartialEq, Default)]
struct Predictor {
    intercept: f64,
    terms: Vec<Term>,
}

impl Predictor {
    fn eta(&self, ctx: &[Value]) -> f64 {
        let mut eta = self.intercept;
        for t in &self.terms {
            eta += match (t, ctx.get(t.feature())) {
                (Term::Coef(_, c), Some(Value::Num(v))) => c * v,
                (Term::Effects(_, e), Some(Value::Cat(i))) => e[*i],
                (Term::Weights(_, w), Some(Value::Vec(v))) => {
                    w.iter().zip(v).map(|(a, b)| a * b).sum()
                }
                _ => 0.0,
            };
        }
        eta
    }
}

impl Term {
    fn feature(&self) -> usize {
        match self {
            Term::Coef(f, _) | Term::Effects(f, _) | Term::Weights(f, _) => *f,
        }
    }
}

/// An outcome signal and its hidden model.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    /// Its name, as a reward function weighs it.
    pub name: String,
    /// Its distribution given `η`.
    pub link: Link,
    /// Index of the Bernoulli signal it requires (0 unless that one is 1).
    pub given: Option<usize>,
    /// One predictor per action (base terms merged in).
    predictors: Vec<Predictor>,
}

/// A change of the hidden models over time: non-stationarity.
#[derive(Debug, Clone, PartialEq)]
pub struct Drift {
    /// The signal whose `η` moves.
    pub signal: usize,
    /// Which actions (by index) it applies to.
    pub actions: Vec<bool>,
    /// How it moves.
    pub shape: DriftShape,
}

/// The shape of a drift term added to `η` at round `t`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DriftShape {
    /// `amplitude · sin(2π t / period)`.
    Sine {
        /// Height.
        amplitude: f64,
        /// Rounds per cycle.
        period: f64,
    },
    /// `amplitude` from round `at` on, 0 before.
    Step {
        /// Height.
        amplitude: f64,
        /// First round of the change.
        at: usize,
    },
}

impl DriftShape {
    fn at(&self, t: usize) -> f64 {
        match *self {
            DriftShape::Sine { amplitude, period } => {
                amplitude * (std::f64::consts::TAU * t as f64 / period).sin()
            }
            DriftShape::Step { amplitude, at } => {
                if t >= at {
                    amplitude
                } else {
                    0.0
                }
            }
        }
    }
}

/// A validated scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Its name (used in event ids).
    pub name: String,
    /// Free text.
    pub description: String,
    /// Seeds contexts, outcomes and hidden embedding centers.
    pub seed: u64,
    /// Rounds per run.
    pub horizon: usize,
    /// Policy files to run by default, resolved against the scenario's
    /// directory.
    pub policies: Vec<PathBuf>,
    /// The reward function (weights on signals) policies learn from; `None`:
    /// each policy's own `[reward].signals`.
    pub reward: Option<BTreeMap<String, f64>>,
    /// Context features, in the order they are sent.
    pub context: Vec<ContextFeature>,
    /// The actions.
    pub actions: Vec<Action>,
    /// The signals, in file order (a `given` signal comes first).
    pub signals: Vec<Signal>,
    /// Non-stationarity.
    pub drift: Vec<Drift>,
    /// Users over time (time zones, fatigue, unsubscribes); `None`: every
    /// round is an anonymous, independent request.
    pub users: Option<Users>,
}

/// Streams of a round's randomness: contexts and outcomes are drawn from
/// independent generators so that changing one never shifts the other.
const STREAM_CONTEXT: u64 = 1;
const STREAM_OUTCOME: u64 = 2;

impl Scenario {
    /// Draws the context of round `t` (the same for every policy: common
    /// random numbers make policies comparable round by round).
    pub fn context_at(&self, t: usize, seed: u64) -> Vec<Value> {
        let mut rng = round_rng(seed, t as u64, STREAM_CONTEXT);
        self.sample_context(&mut rng)
    }

    /// Draws a context from the scenario's distribution.
    pub fn sample_context(&self, rng: &mut impl rand::Rng) -> Vec<Value> {
        self.context.iter().map(|f| f.dist.sample(rng)).collect()
    }

    /// The context as a policy receives it (named feature values).
    pub fn features(&self, ctx: &[Value]) -> Vec<(String, FeatureValue)> {
        self.context
            .iter()
            .zip(ctx)
            .map(|(f, v)| {
                let value = match (v, &f.dist) {
                    (Value::Num(x), _) => FeatureValue::Number(*x),
                    (Value::Cat(i), ContextDist::Categorical { values, .. }) => {
                        FeatureValue::Str(values[*i].clone())
                    }
                    (Value::Cat(i), _) => FeatureValue::Number(*i as f64),
                    (Value::Vec(x), _) => FeatureValue::Vector(x.clone()),
                };
                (f.name.clone(), value)
            })
            .collect()
    }

    /// The linear predictor of `signal` for `action` at round `t`.
    fn eta(&self, signal: usize, action: usize, ctx: &[Value], t: usize) -> f64 {
        let mut eta = self.signals[signal].predictors[action].eta(ctx);
        for d in &self.drift {
            if d.signal == signal && d.actions[action] {
                eta += d.shape.at(t);
            }
        }
        eta
    }

    /// `E[s | x, a, t]` for every signal, written into `out` (one entry per
    /// signal). Exact: no sampling.
    pub fn expected(&self, ctx: &[Value], action: usize, t: usize, out: &mut [f64]) {
        self.expected_for(ctx, action, t, None, out);
    }

    /// [`Scenario::expected`] for a user in `state` (fatigue, unsubscribes,
    /// a user who is gone: see [`super::users`]); `None`: no user.
    pub fn expected_for(
        &self,
        ctx: &[Value],
        action: usize,
        t: usize,
        state: Option<&UserState>,
        out: &mut [f64],
    ) {
        let adjust = self.adjustment(action, state);
        for (s, sig) in self.signals.iter().enumerate() {
            let eta = self.eta(s, action, ctx, t) + adjust.shift(s);
            let conditional = match sig.link {
                Link::Bernoulli => sigmoid(eta) * adjust.factor(s),
                Link::LogNormal { sigma } => (eta + 0.5 * sigma * sigma).exp(),
                Link::Normal { .. } => eta,
            };
            // `given` signals come earlier, so out[g] is already P(g = 1).
            let gate = sig.given.map_or(1.0, |g| out[g]);
            out[s] = if gate == 0.0 || adjust.gone {
                0.0
            } else {
                gate * conditional
            };
        }
    }

    /// Draws every signal for `action` at round `t` into `out`.
    pub fn draw(
        &self,
        ctx: &[Value],
        action: usize,
        t: usize,
        rng: &mut impl rand::Rng,
        out: &mut [f64],
    ) {
        self.draw_for(ctx, action, t, None, rng, out);
    }

    /// [`Scenario::draw`] for a user in `state`. The same random numbers
    /// are consumed whatever the state (common random numbers).
    pub fn draw_for(
        &self,
        ctx: &[Value],
        action: usize,
        t: usize,
        state: Option<&UserState>,
        rng: &mut impl rand::Rng,
        out: &mut [f64],
    ) {
        let adjust = self.adjustment(action, state);
        for (s, sig) in self.signals.iter().enumerate() {
            let eta = self.eta(s, action, ctx, t) + adjust.shift(s);
            // Draw the noise even when gated, so each draw consumes the same
            // randomness whatever happened before it.
            let u: f64 = rng.random();
            let z: f64 = StandardNormal.sample(rng);
            let value = match sig.link {
                Link::Bernoulli => f64::from(u8::from(u < sigmoid(eta) * adjust.factor(s))),
                Link::LogNormal { sigma } => (eta + sigma * z).exp(),
                Link::Normal { sd } => eta + sd * z,
            };
            out[s] = match sig.given {
                _ if adjust.gone => 0.0,
                Some(g) if out[g] == 0.0 => 0.0,
                _ => value,
            };
        }
    }

    /// How a user's state changes the models of `action`.
    fn adjustment(&self, action: usize, state: Option<&UserState>) -> Adjustment {
        let none = Adjustment {
            fatigue: None,
            unsubscribe: None,
            gone: false,
        };
        let (Some(users), Some(state)) = (&self.users, state) else {
            return none;
        };
        if state.gone {
            return Adjustment { gone: true, ..none };
        }
        if !users.sends[action] {
            return none;
        }
        Adjustment {
            fatigue: users
                .fatigue
                .as_ref()
                .map(|f| (f.signal, (-f.k * state.load).exp())),
            unsubscribe: users
                .unsubscribe
                .as_ref()
                .map(|u| (u.signal, u.per_load * state.load)),
            gone: false,
        }
    }

    /// The context of round `t` for a user in `state`: the round's draw,
    /// with the `local_hour` feature set to the user's local hour.
    pub fn context_for(&self, t: usize, seed: u64, state: Option<&UserState>) -> Vec<Value> {
        let mut ctx = self.context_at(t, seed);
        if let (Some(users), Some(state)) = (&self.users, state)
            && let Some(i) = users.local_hour
        {
            ctx[i] = Value::Num(state.local_hour);
        }
        ctx
    }

    /// Draws the potential outcomes of every action at round `t`
    /// (`out[a * signals + s]`), from the round's own generator.
    pub fn outcomes_at(&self, ctx: &[Value], t: usize, seed: u64, out: &mut [f64]) {
        self.outcomes_for(ctx, t, seed, None, out);
    }

    /// [`Scenario::outcomes_at`] for a user in `state`.
    pub fn outcomes_for(
        &self,
        ctx: &[Value],
        t: usize,
        seed: u64,
        state: Option<&UserState>,
        out: &mut [f64],
    ) {
        let k = self.signals.len();
        let mut rng = round_rng(seed, t as u64, STREAM_OUTCOME);
        for a in 0..self.actions.len() {
            self.draw_for(ctx, a, t, state, &mut rng, &mut out[a * k..(a + 1) * k]);
        }
    }

    /// The finite support of the context distribution with probabilities,
    /// if every feature has one and it has at most `limit` points.
    pub fn context_support(&self, limit: usize) -> Option<Vec<(Vec<Value>, f64)>> {
        let mut points: Vec<(Vec<Value>, f64)> = vec![(vec![], 1.0)];
        for f in &self.context {
            let support = f.dist.support()?;
            if points.len().saturating_mul(support.len()) > limit {
                return None;
            }
            points = points
                .into_iter()
                .flat_map(|(ctx, p)| {
                    support.iter().map(move |(v, q)| {
                        let mut c = ctx.clone();
                        c.push(v.clone());
                        (c, p * q)
                    })
                })
                .filter(|(_, p)| *p > 0.0)
                .collect();
        }
        Some(points)
    }

    /// Index of the signal called `name`.
    pub fn signal_index(&self, name: &str) -> Option<usize> {
        self.signals.iter().position(|s| s.name == name)
    }
}

/// A user's effect on one action's models.
struct Adjustment {
    /// `(signal, factor)`: the Bernoulli probability is multiplied.
    fatigue: Option<(usize, f64)>,
    /// `(signal, shift)`: added to the log-odds.
    unsubscribe: Option<(usize, f64)>,
    /// Every signal is 0.
    gone: bool,
}

impl Adjustment {
    fn factor(&self, s: usize) -> f64 {
        match self.fatigue {
            Some((f, x)) if f == s => x,
            _ => 1.0,
        }
    }
    fn shift(&self, s: usize) -> f64 {
        match self.unsubscribe {
            Some((u, x)) if u == s => x,
            _ => 0.0,
        }
    }
}

/// The logistic function, `1 / (1 + e^{-η})`, with `σ(-∞) = 0`.
pub fn sigmoid(eta: f64) -> f64 {
    if eta >= 0.0 {
        1.0 / (1.0 + (-eta).exp())
    } else {
        let e = eta.exp();
        e / (1.0 + e)
    }
}

// ---- the file as written ---------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    seed: u64,
    horizon: usize,
    #[serde(default)]
    policies: Vec<PathBuf>,
    reward: Option<BTreeMap<String, f64>>,
    #[serde(default)]
    context: Vec<RawContext>,
    actions: Vec<RawAction>,
    signals: Vec<RawSignal>,
    #[serde(default)]
    drift: Vec<RawDrift>,
    users: Option<RawUsers>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum RawContext {
    Normal {
        name: String,
        mean: f64,
        std: f64,
    },
    Uniform {
        name: String,
        low: f64,
        high: f64,
    },
    Integer {
        name: String,
        low: i64,
        high: i64,
    },
    Poisson {
        name: String,
        mean: f64,
    },
    Exponential {
        name: String,
        mean: f64,
    },
    Choice {
        name: String,
        values: Vec<f64>,
        weights: Option<Vec<f64>>,
    },
    Categorical {
        name: String,
        values: Vec<String>,
        weights: Option<Vec<f64>>,
    },
    Bernoulli {
        name: String,
        p: f64,
    },
    Embedding {
        name: String,
        length: usize,
        #[serde(default = "one_usize")]
        clusters: usize,
        #[serde(default = "one_f64")]
        spread: f64,
        #[serde(default = "one_f64")]
        scale: f64,
    },
}

fn one_usize() -> usize {
    1
}
fn one_f64() -> f64 {
    1.0
}

impl RawContext {
    fn name(&self) -> &str {
        match self {
            RawContext::Normal { name, .. }
            | RawContext::Uniform { name, .. }
            | RawContext::Integer { name, .. }
            | RawContext::Poisson { name, .. }
            | RawContext::Exponential { name, .. }
            | RawContext::Choice { name, .. }
            | RawContext::Categorical { name, .. }
            | RawContext::Bernoulli { name, .. }
            | RawContext::Embedding { name, .. } => name,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAction {
    id: String,
    #[serde(default)]
    features: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "snake_case")]
enum RawLink {
    Bernoulli,
    Lognormal,
    Normal,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSignal {
    name: String,
    model: RawLink,
    sigma: Option<f64>,
    sd: Option<f64>,
    given: Option<String>,
    #[serde(default)]
    base: BTreeMap<String, toml::Value>,
    #[serde(default)]
    actions: BTreeMap<String, BTreeMap<String, toml::Value>>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "snake_case")]
enum RawShape {
    Sine,
    Step,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDrift {
    signal: String,
    actions: Option<Vec<String>>,
    shape: RawShape,
    amplitude: f64,
    period: Option<f64>,
    at: Option<usize>,
}

// ---- parsing and validation ------------------------------------------------

struct Problems {
    file: PathBuf,
    errors: Vec<ScenarioError>,
}

impl Problems {
    fn add(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ScenarioError {
            file: self.file.clone(),
            key: key.into(),
            message: message.into(),
        });
    }
}

/// "line L, column C: " of a byte offset.
fn position(text: &str, offset: usize) -> String {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    format!("line {line}, column {col}: ")
}

fn is_valid_id(s: &str) -> bool {
    nudge::policy::spec::is_valid_id(s, 128)
}

/// Parses and validates a scenario's text. `origin` names the file in
/// errors and is the base for relative `policies` paths. Returns every
/// semantic error found; a syntax or type error stops at the first.
pub fn parse_scenario(text: &str, origin: &Path) -> Result<Scenario, ScenarioErrors> {
    let file = origin.to_path_buf();
    let de = toml::Deserializer::parse(text).map_err(|e| {
        let pos = e
            .span()
            .map(|s| position(text, s.start))
            .unwrap_or_default();
        ScenarioErrors(vec![ScenarioError {
            file: file.clone(),
            key: String::new(),
            message: format!("{pos}{}", e.message()),
        }])
    })?;
    let raw: RawScenario = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let pos = inner
            .span()
            .map(|s| position(text, s.start))
            .unwrap_or_default();
        ScenarioErrors(vec![ScenarioError {
            file: file.clone(),
            key: if key == "." { String::new() } else { key },
            message: format!("{pos}{}", inner.message()),
        }])
    })?;
    let mut p = Problems {
        file: file.clone(),
        errors: vec![],
    };
    let scenario = validate(raw, origin, &mut p);
    if p.errors.is_empty() {
        Ok(scenario)
    } else {
        Err(ScenarioErrors(p.errors))
    }
}

/// Reads and validates a scenario file.
pub fn load_scenario(path: &Path) -> Result<Scenario, ScenarioErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ScenarioErrors(vec![ScenarioError {
            file: path.to_path_buf(),
            key: String::new(),
            message: format!("cannot read: {e}"),
        }])
    })?;
    parse_scenario(&text, path)
}

fn validate(raw: RawScenario, origin: &Path, p: &mut Problems) -> Scenario {
    if !is_valid_id(&raw.name) {
        p.add(
            "name",
            format!(
                "expected 1 to 128 characters of [A-Za-z0-9_.-], got {:?}",
                raw.name
            ),
        );
    }
    if !(1..=MAX_HORIZON).contains(&raw.horizon) {
        p.add(
            "horizon",
            format!(
                "expected an integer in [1, {MAX_HORIZON}], got {}",
                raw.horizon
            ),
        );
    }
    let base = origin.parent().unwrap_or(Path::new("."));
    let policies = raw.policies.iter().map(|q| base.join(q)).collect();
    let context = validate_context(&raw.context, raw.seed, p);
    let actions = validate_actions(&raw.actions, p);
    let signals = validate_signals(&raw.signals, &context, &actions, p);
    if let Some(reward) = &raw.reward {
        for (name, w) in reward {
            if !signals.iter().any(|s| s.name == *name) {
                p.add(
                    format!("reward.{name}"),
                    format!(
                        "no signal `{name}` in this scenario (its signals: {})",
                        names(signals.iter().map(|s| s.name.as_str()))
                    ),
                );
            }
            if !w.is_finite() {
                p.add(
                    format!("reward.{name}"),
                    format!("expected a finite weight, got {w}"),
                );
            }
        }
    }
    let drift = validate_drift(&raw.drift, &signals, &actions, p);
    let users = raw.users.as_ref().and_then(|u| {
        let action_ids: Vec<String> = actions.iter().map(|a| a.id.clone()).collect();
        let signal_kinds: Vec<(String, bool)> = signals
            .iter()
            .map(|s| (s.name.clone(), s.link == Link::Bernoulli))
            .collect();
        let numeric: Vec<(String, usize)> = context
            .iter()
            .enumerate()
            .filter(|(_, f)| {
                !matches!(
                    f.dist,
                    ContextDist::Categorical { .. } | ContextDist::Embedding { .. }
                )
            })
            .map(|(i, f)| (f.name.clone(), i))
            .collect();
        let known = users::Known {
            actions: &action_ids,
            signals: &signal_kinds,
            numeric: &numeric,
        };
        users::validate(u, &known, &mut |k, m| p.add(k, m))
    });
    Scenario {
        name: raw.name,
        description: raw.description,
        seed: raw.seed,
        horizon: raw.horizon,
        policies,
        reward: raw.reward,
        context,
        actions,
        signals,
        drift,
        users,
    }
}

fn names<'a>(it: impl Iterator<Item = &'a str>) -> String {
    it.map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
}

fn probabilities(n: usize, weights: &Option<Vec<f64>>, key: &str, p: &mut Problems) -> Vec<f64> {
    let Some(w) = weights else {
        return vec![1.0 / n.max(1) as f64; n];
    };
    if w.len() != n {
        p.add(
            format!("{key}.weights"),
            format!("expected {n} weights (one per value), got {}", w.len()),
        );
        return vec![1.0 / n.max(1) as f64; n];
    }
    let total: f64 = w.iter().sum();
    if w.iter().any(|v| !v.is_finite() || *v < 0.0) || total <= 0.0 || !total.is_finite() {
        p.add(
            format!("{key}.weights"),
            "expected finite weights >= 0 with a positive sum",
        );
        return vec![1.0 / n.max(1) as f64; n];
    }
    w.iter().map(|v| v / total).collect()
}

fn validate_context(raw: &[RawContext], seed: u64, p: &mut Problems) -> Vec<ContextFeature> {
    let mut out: Vec<ContextFeature> = Vec::with_capacity(raw.len());
    for (i, f) in raw.iter().enumerate() {
        let key = format!("context[{i}]");
        let name = f.name().to_string();
        if !is_valid_id(&name) {
            p.add(
                format!("{key}.name"),
                format!("expected 1 to 128 characters of [A-Za-z0-9_.-], got {name:?}"),
            );
        }
        if out.iter().any(|o| o.name == name) {
            p.add(format!("{key}.name"), format!("duplicate feature {name:?}"));
        }
        let positive = |v: f64, k: &str, p: &mut Problems| {
            if !(v.is_finite() && v > 0.0) {
                p.add(
                    format!("{key}.{k}"),
                    format!("expected a finite number > 0, got {v}"),
                );
            }
        };
        let finite = |v: f64, k: &str, p: &mut Problems| {
            if !v.is_finite() {
                p.add(
                    format!("{key}.{k}"),
                    format!("expected a finite number, got {v}"),
                );
            }
        };
        let dist = match f {
            RawContext::Normal { mean, std, .. } => {
                finite(*mean, "mean", p);
                positive(*std, "std", p);
                ContextDist::Normal {
                    mean: *mean,
                    std: *std,
                }
            }
            RawContext::Uniform { low, high, .. } => {
                finite(*low, "low", p);
                finite(*high, "high", p);
                if low >= high {
                    p.add(
                        format!("{key}.high"),
                        format!("expected high > low, got low {low}, high {high}"),
                    );
                }
                ContextDist::Uniform {
                    low: *low,
                    high: *high,
                }
            }
            RawContext::Integer { low, high, .. } => {
                if low > high {
                    p.add(
                        format!("{key}.high"),
                        format!("expected high >= low, got low {low}, high {high}"),
                    );
                }
                ContextDist::Integer {
                    low: *low,
                    high: (*high).max(*low),
                }
            }
            RawContext::Poisson { mean, .. } => {
                positive(*mean, "mean", p);
                ContextDist::Poisson { mean: *mean }
            }
            RawContext::Exponential { mean, .. } => {
                positive(*mean, "mean", p);
                ContextDist::Exponential { mean: *mean }
            }
            RawContext::Choice {
                values, weights, ..
            } => {
                if values.is_empty() {
                    p.add(format!("{key}.values"), "expected a non-empty list");
                }
                if values.iter().any(|v| !v.is_finite()) {
                    p.add(format!("{key}.values"), "expected finite numbers");
                }
                ContextDist::Choice {
                    values: values.clone(),
                    probs: probabilities(values.len(), weights, &key, p),
                }
            }
            RawContext::Categorical {
                values, weights, ..
            } => {
                if values.is_empty() {
                    p.add(format!("{key}.values"), "expected a non-empty list");
                }
                for (j, v) in values.iter().enumerate() {
                    if values[..j].contains(v) {
                        p.add(
                            format!("{key}.values[{j}]"),
                            format!("duplicate value {v:?}"),
                        );
                    }
                }
                ContextDist::Categorical {
                    values: values.clone(),
                    probs: probabilities(values.len(), weights, &key, p),
                }
            }
            RawContext::Bernoulli { p: prob, .. } => {
                if !(0.0..=1.0).contains(prob) {
                    p.add(
                        format!("{key}.p"),
                        format!("expected a probability in [0, 1], got {prob}"),
                    );
                }
                ContextDist::Bernoulli { p: *prob }
            }
            RawContext::Embedding {
                length,
                clusters,
                spread,
                scale,
                ..
            } => {
                if !(1..=MAX_EMBEDDING).contains(length) {
                    p.add(
                        format!("{key}.length"),
                        format!("expected an integer in [1, {MAX_EMBEDDING}], got {length}"),
                    );
                }
                if !(1..=10_000).contains(clusters) {
                    p.add(
                        format!("{key}.clusters"),
                        format!("expected an integer in [1, 10000], got {clusters}"),
                    );
                }
                if !(spread.is_finite() && *spread >= 0.0) {
                    p.add(
                        format!("{key}.spread"),
                        format!("expected a finite number >= 0, got {spread}"),
                    );
                }
                positive(*scale, "scale", p);
                let (len, k) = (
                    (*length).clamp(1, MAX_EMBEDDING),
                    (*clusters).clamp(1, 10_000),
                );
                // Hidden cluster centers: a function of the seed and the
                // feature's position only.
                let mut rng = round_rng(seed, mix_seed(i as u64, 0xE3B), 3);
                let centers = (0..k)
                    .map(|_| {
                        (0..len)
                            .map(|_| {
                                let z: f64 = StandardNormal.sample(&mut rng);
                                scale * z
                            })
                            .collect()
                    })
                    .collect();
                ContextDist::Embedding {
                    centers,
                    spread: if spread.is_finite() {
                        spread.max(0.0)
                    } else {
                        0.0
                    },
                }
            }
        };
        out.push(ContextFeature { name, dist });
    }
    out
}

fn feature_value(v: &toml::Value) -> Option<FeatureValue> {
    match v {
        toml::Value::Integer(i) => Some(FeatureValue::Number(*i as f64)),
        toml::Value::Float(f) if f.is_finite() => Some(FeatureValue::Number(*f)),
        toml::Value::Boolean(b) => Some(FeatureValue::Bool(*b)),
        toml::Value::String(s) => Some(FeatureValue::Str(s.clone())),
        toml::Value::Array(a) => a
            .iter()
            .map(number)
            .collect::<Option<Vec<f64>>>()
            .map(FeatureValue::Vector),
        _ => None,
    }
}

fn number(v: &toml::Value) -> Option<f64> {
    match v {
        toml::Value::Integer(i) => Some(*i as f64),
        toml::Value::Float(f) => Some(*f),
        _ => None,
    }
}

fn validate_actions(raw: &[RawAction], p: &mut Problems) -> Vec<Action> {
    if raw.is_empty() {
        p.add("actions", "expected at least one action");
    }
    let mut out: Vec<Action> = Vec::with_capacity(raw.len());
    for (i, a) in raw.iter().enumerate() {
        if !is_valid_id(&a.id) {
            p.add(
                format!("actions[{i}].id"),
                format!(
                    "expected 1 to 128 characters of [A-Za-z0-9_.-], got {:?}",
                    a.id
                ),
            );
        }
        if out.iter().any(|o| o.id == a.id) {
            p.add(
                format!("actions[{i}].id"),
                format!("duplicate action {:?}", a.id),
            );
        }
        let mut features = Vec::with_capacity(a.features.len());
        for (name, v) in &a.features {
            match feature_value(v) {
                Some(fv) => features.push((name.clone(), fv)),
                None => p.add(
                    format!("actions[{i}].features.{name}"),
                    format!(
                        "expected a finite number, a string, a boolean or an array of numbers, got {}",
                        v.type_str()
                    ),
                ),
            }
        }
        out.push(Action {
            id: a.id.clone(),
            features,
        });
    }
    out
}

/// Adds the terms of one table (`base` or an action's) to `pred`.
fn add_terms(
    table: &BTreeMap<String, toml::Value>,
    key: &str,
    context: &[ContextFeature],
    action: Option<&Action>,
    link: RawLink,
    pred: &mut Predictor,
    p: &mut Problems,
) {
    for (name, v) in table {
        let key = format!("{key}.{name}");
        if name == "intercept" {
            match number(v) {
                // -inf switches the signal off for this action (P = 0, or
                // a log-normal value of 0); +inf and NaN mean nothing.
                Some(x) if x.is_finite() || (x == f64::NEG_INFINITY && link != RawLink::Normal) => {
                    pred.intercept += x
                }
                Some(x) => p.add(
                    key,
                    format!(
                        "expected a finite number{}, got {x}",
                        if link == RawLink::Normal {
                            ""
                        } else {
                            " or -inf"
                        }
                    ),
                ),
                None => p.add(key, format!("expected a number, got {}", v.type_str())),
            }
            continue;
        }
        let Some(f) = context.iter().position(|c| c.name == *name) else {
            p.add(
                key,
                format!(
                    "not `intercept` nor a context feature (the context features: {})",
                    names(context.iter().map(|c| c.name.as_str()))
                ),
            );
            continue;
        };
        let term = match &context[f].dist {
            ContextDist::Categorical { values, .. } => match v {
                toml::Value::Table(t) => {
                    let mut effects = vec![0.0; values.len()];
                    let mut ok = true;
                    for (val, e) in t {
                        match (values.iter().position(|x| x == val), number(e)) {
                            (Some(j), Some(x)) if x.is_finite() => effects[j] = x,
                            (None, _) => {
                                ok = false;
                                p.add(
                                    format!("{key}.{val}"),
                                    format!(
                                        "`{val}` is not one of the feature's values ({})",
                                        names(values.iter().map(String::as_str))
                                    ),
                                );
                            }
                            _ => {
                                ok = false;
                                p.add(format!("{key}.{val}"), "expected a finite number");
                            }
                        }
                    }
                    ok.then_some(Term::Effects(f, effects))
                }
                _ => {
                    p.add(
                        key,
                        format!(
                            "a categorical feature takes a table of effects per value, e.g. {{ {} = 0.5 }}; got {}",
                            values.first().map_or("value", String::as_str),
                            v.type_str()
                        ),
                    );
                    None
                }
            },
            ContextDist::Embedding { centers, .. } => {
                let len = centers[0].len();
                match v {
                    toml::Value::Array(a) => {
                        let w: Option<Vec<f64>> = a.iter().map(number).collect();
                        match w {
                            Some(w) if w.len() == len && w.iter().all(|x| x.is_finite()) => {
                                Some(Term::Weights(f, w))
                            }
                            _ => {
                                p.add(key, format!("expected an array of {len} finite numbers"));
                                None
                            }
                        }
                    }
                    toml::Value::Table(t) => dot_term(t, &key, f, len, action, p),
                    _ => {
                        p.add(
                            key,
                            format!(
                                "a vector feature takes an array of {len} weights or {{ dot = \"<action feature>\", weight = 1.0 }}; got {}",
                                v.type_str()
                            ),
                        );
                        None
                    }
                }
            }
            _ => match number(v) {
                Some(x) if x.is_finite() => Some(Term::Coef(f, x)),
                _ => {
                    p.add(
                        key,
                        format!(
                            "a numeric feature takes a finite coefficient, got {}",
                            v.type_str()
                        ),
                    );
                    None
                }
            },
        };
        pred.terms.extend(term);
    }
}

/// `{ dot = "item_embedding", weight = w }`: `w · (x_f · item_embedding)`,
/// the action's vector feature; resolved per action to fixed weights.
fn dot_term(
    t: &toml::Table,
    key: &str,
    f: usize,
    len: usize,
    action: Option<&Action>,
    p: &mut Problems,
) -> Option<Term> {
    for k in t.keys() {
        if k != "dot" && k != "weight" {
            p.add(format!("{key}.{k}"), "expected only `dot` and `weight`");
            return None;
        }
    }
    let weight = match t.get("weight").map(number) {
        None => 1.0,
        Some(Some(w)) if w.is_finite() => w,
        Some(_) => {
            p.add(format!("{key}.weight"), "expected a finite number");
            return None;
        }
    };
    let Some(toml::Value::String(other)) = t.get("dot") else {
        p.add(
            format!("{key}.dot"),
            "expected the name of an action feature (a vector)",
        );
        return None;
    };
    let action = action?;
    match action.features.iter().find(|(n, _)| n == other) {
        Some((_, FeatureValue::Vector(v))) if v.len() == len => {
            Some(Term::Weights(f, v.iter().map(|x| weight * x).collect()))
        }
        _ => {
            p.add(
                format!("{key}.dot"),
                format!(
                    "action `{}` has no vector feature `{other}` of length {len}",
                    action.id
                ),
            );
            None
        }
    }
}

fn validate_signals(
    raw: &[RawSignal],
    context: &[ContextFeature],
    actions: &[Action],
    p: &mut Problems,
) -> Vec<Signal> {
    if raw.is_empty() {
        p.add("signals", "expected at least one signal");
    }
    let mut out: Vec<Signal> = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let key = format!("signals[{i}]");
        if !is_valid_id(&s.name) {
            p.add(
                format!("{key}.name"),
                format!(
                    "expected 1 to 128 characters of [A-Za-z0-9_.-], got {:?}",
                    s.name
                ),
            );
        }
        if out.iter().any(|o| o.name == s.name) {
            p.add(
                format!("{key}.name"),
                format!("duplicate signal {:?}", s.name),
            );
        }
        let noise = |v: Option<f64>, k: &str, p: &mut Problems| -> f64 {
            let v = v.unwrap_or(0.0);
            if !(v.is_finite() && v >= 0.0) {
                p.add(
                    format!("{key}.{k}"),
                    format!("expected a finite number >= 0, got {v}"),
                );
                return 0.0;
            }
            v
        };
        let link = match s.model {
            RawLink::Bernoulli => Link::Bernoulli,
            RawLink::Lognormal => Link::LogNormal {
                sigma: noise(s.sigma, "sigma", p),
            },
            RawLink::Normal => Link::Normal {
                sd: noise(s.sd, "sd", p),
            },
        };
        let misplaced = match s.model {
            RawLink::Bernoulli => [("sigma", s.sigma.is_some()), ("sd", s.sd.is_some())],
            RawLink::Lognormal => [("sd", s.sd.is_some()), ("sigma", false)],
            RawLink::Normal => [("sigma", s.sigma.is_some()), ("sd", false)],
        };
        for (k, given) in misplaced {
            if given {
                p.add(
                    format!("{key}.{k}"),
                    "not a parameter of this model; `sigma` is for lognormal, `sd` for normal",
                );
            }
        }
        let given = s
            .given
            .as_ref()
            .and_then(|g| match out.iter().position(|o| o.name == *g) {
                Some(j) if out[j].link == Link::Bernoulli => Some(j),
                Some(_) => {
                    p.add(
                        format!("{key}.given"),
                        format!("`{g}` must be a bernoulli signal"),
                    );
                    None
                }
                None => {
                    p.add(
                        format!("{key}.given"),
                        format!("no signal `{g}` declared before this one"),
                    );
                    None
                }
            });
        for id in s.actions.keys() {
            if !actions.iter().any(|a| a.id == *id) {
                p.add(
                    format!("{key}.actions.{id}"),
                    format!(
                        "no action `{id}` in this scenario (its actions: {})",
                        names(actions.iter().map(|a| a.id.as_str()))
                    ),
                );
            }
        }
        let predictors = actions
            .iter()
            .map(|a| {
                let mut pred = Predictor::default();
                add_terms(
                    &s.base,
                    &format!("{key}.base"),
                    context,
                    Some(a),
                    s.model,
                    &mut pred,
                    p,
                );
                if let Some(t) = s.actions.get(&a.id) {
                    add_terms(
                        t,
                        &format!("{key}.actions.{}", a.id),
                        context,
                        Some(a),
                        s.model,
                        &mut pred,
                        p,
                    );
                }
                pred
            })
            .collect();
        out.push(Signal {
            name: s.name.clone(),
            link,
            given,
            predictors,
        });
    }
    // Base terms are checked once per action; report each problem once.
    p.errors.dedup();
    out
}

fn validate_drift(
    raw: &[RawDrift],
    signals: &[Signal],
    actions: &[Action],
    p: &mut Problems,
) -> Vec<Drift> {
    let mut out = Vec::with_capacity(raw.len());
    for (i, d) in raw.iter().enumerate() {
        let key = format!("drift[{i}]");
        let Some(signal) = signals.iter().position(|s| s.name == d.signal) else {
            p.add(
                format!("{key}.signal"),
                format!("no signal `{}` in this scenario", d.signal),
            );
            continue;
        };
        let mut mask = vec![d.actions.is_none(); actions.len()];
        for id in d.actions.iter().flatten() {
            match actions.iter().position(|a| a.id == *id) {
                Some(j) => mask[j] = true,
                None => p.add(
                    format!("{key}.actions"),
                    format!("no action `{id}` in this scenario"),
                ),
            }
        }
        if !d.amplitude.is_finite() {
            p.add(format!("{key}.amplitude"), "expected a finite number");
        }
        let shape = match d.shape {
            RawShape::Sine => match d.period {
                Some(period) if period.is_finite() && period > 0.0 => DriftShape::Sine {
                    amplitude: d.amplitude,
                    period,
                },
                _ => {
                    p.add(
                        format!("{key}.period"),
                        "a sine drift needs `period`, a number of rounds > 0",
                    );
                    continue;
                }
            },
            RawShape::Step => match d.at {
                Some(at) => DriftShape::Step {
                    amplitude: d.amplitude,
                    at,
                },
                None => {
                    p.add(
                        format!("{key}.at"),
                        "a step drift needs `at`, the round it starts",
                    );
                    continue;
                }
            },
        };
        out.push(Drift {
            signal,
            actions: mask,
            shape,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
horizon = 10
[[context]]
name = "plan"
type = "categorical"
values = ["free", "paid"]
[[actions]]
id = "a"
[[actions]]
id = "b"
[[signals]]
name = "opened"
model = "bernoulli"
[signals.base]
intercept = 0.0
[signals.actions.b]
plan = { paid = 1.0 }
"#;

    fn errors(text: &str) -> Vec<ScenarioError> {
        parse_scenario(text, Path::new("s.toml")).unwrap_err().0
    }

    #[test]
    fn a_minimal_scenario_parses_and_its_expectations_are_exact() {
        let s = parse_scenario(MINIMAL, Path::new("s.toml")).unwrap();
        let mut out = [0.0];
        s.expected(&[Value::Cat(1)], 1, 0, &mut out);
        assert!((out[0] - sigmoid(1.0)).abs() < 1e-15);
        s.expected(&[Value::Cat(0)], 1, 0, &mut out);
        assert!((out[0] - 0.5).abs() < 1e-15);
        let support = s.context_support(100).unwrap();
        assert_eq!(support.len(), 2);
    }

    #[test]
    fn a_wrong_type_names_the_dotted_key_and_the_line() {
        let text = MINIMAL.replace("horizon = 10", "horizon = \"ten\"");
        let e = errors(&text);
        assert_eq!(e[0].key, "horizon");
        assert!(e[0].message.contains("line 3"), "{}", e[0].message);
    }

    #[test]
    fn an_unknown_feature_in_a_hidden_model_is_named() {
        let text = MINIMAL.replace("plan = { paid", "plann = { paid");
        let e = errors(&text);
        assert_eq!(e[0].key, "signals[0].actions.b.plann");
        assert!(e[0].message.contains("`plan`"));
    }

    #[test]
    fn an_unknown_categorical_value_is_named() {
        let text = MINIMAL.replace("paid = 1.0", "gold = 1.0");
        let e = errors(&text);
        assert_eq!(e[0].key, "signals[0].actions.b.plan.gold");
    }

    #[test]
    fn the_reward_function_may_only_weigh_declared_signals() {
        let text = MINIMAL.replace("horizon = 10", "horizon = 10\nreward = { clicked = 1.0 }");
        let e = errors(&text);
        assert_eq!(e[0].key, "reward.clicked");
    }
}
