//! Off-policy estimators, their standard errors and confidence intervals.
//!
//! Every estimator here is the mean of a per-round contribution, as in the
//! Open Bandit Pipeline (OBP, Saito et al. 2021, `obp/ope/estimators.py`,
//! version 0.5.7), whose definitions these follow exactly: for the same
//! inputs the values agree to floating-point precision (tested against
//! fixtures made by OBP itself).
//!
//! A round `i` is reduced to five numbers ([`Round`]): the reward `r_i`,
//! the logging propensity `p_i = π_b(a_i|x_i)`, the candidate's probability
//! of the logged action `π_e(a_i|x_i)`, the direct-method term
//! `dm_i = Σ_a π_e(a|x_i) q̂(x_i,a) / Σ_a π_e(a|x_i)` (OBP's
//! `np.average(q_hat, weights=pi_e)`), and `q̂(x_i,a_i)`. With the
//! importance weight `w_i = π_e(a_i|x_i) / p_i`:
//!
//! | estimator | contribution of round i | reference |
//! |---|---|---|
//! | replay | `1[π_e(a_i)=1] r_i / mean_j 1[π_e(a_j)=1]` | Li et al. 2011 (OBP `ReplayMethod`) |
//! | ipw | `w_i r_i` | Horvitz & Thompson; OBP `InverseProbabilityWeighting` |
//! | snipw | `w_i r_i / mean_j w_j` | Swaminathan & Joachims 2015 |
//! | dm | `dm_i` | Beygelzimer & Langford 2009 |
//! | dr | `dm_i + w_i (r_i − q̂(x_i,a_i))` | Dudík et al. 2011 |
//! | sndr | `dm_i + w_i (r_i − q̂(x_i,a_i)) / mean_j w_j` | OBP `SelfNormalizedDoublyRobust` |
//! | switch-dr | `dm_i + 1[w_i ≤ τ] w_i (r_i − q̂(x_i,a_i))` | Wang et al. 2017 |
//! | dros | `dm_i + λ w_i / (w_i² + λ) (r_i − q̂(x_i,a_i))` | Su et al. 2020 |
//!
//! The value is the mean of the contributions; its standard error is the
//! sample standard deviation (n − 1 denominator) of the contributions over
//! `√n`. For the self-normalised estimators (replay, snipw, sndr) the
//! normaliser is the full-sample mean, as in OBP, so standard error and
//! bootstrap treat it as fixed — exactly what OBP's `estimate_interval`
//! does when it bootstraps the round rewards.
//!
//! Two intervals are offered here: the normal approximation `value ± z σ̂`
//! and a percentile bootstrap of the mean contribution. The bootstrap is
//! the Poisson bootstrap (each replicate weighs every round by a Poisson(1)
//! count), asymptotically OBP's multinomial resampling, and read in order
//! so a million rounds take seconds; our own seeded RNG, so intervals agree
//! with OBP's in distribution, not digit for digit. (IPW and SNIPW also get
//! the intervals of [`super::intervals`].)
//!
//! Memory: [`Accumulator`] keeps running sums only (O(1) per estimator); it
//! stores the 5-f64 [`Round`] of every event (40 bytes) only when a bootstrap
//! is requested, since resampling needs them.

use super::intervals::{ConfidenceSequence, empirical_bernstein};
use rand::SeedableRng;
use serde::Serialize;
use statrs::distribution::{ContinuousCDF, Normal};
use std::fmt;

/// An off-policy estimator (see the module docs for the formulas).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, clap::ValueEnum)]
pub enum Estimator {
    /// Rejection-sampling replay (Li et al. 2011); counts only rounds where
    /// the candidate puts probability 1 on the logged action.
    Replay,
    /// Inverse probability weighting (IPS).
    Ipw,
    /// Self-normalised IPW (Swaminathan & Joachims 2015).
    Snipw,
    /// Direct method: the reward model's value of the candidate.
    Dm,
    /// Doubly robust (Dudík et al. 2011).
    Dr,
    /// Self-normalised doubly robust (OBP).
    Sndr,
    /// Switch-DR (Wang et al. 2017) with threshold `τ` on the weight.
    #[value(name = "switch-dr")]
    SwitchDr,
    /// DR with optimistic shrinkage (Su et al. 2020) with parameter `λ`.
    Dros,
}

impl Estimator {
    /// Every estimator, in display order.
    pub const ALL: [Estimator; 8] = [
        Estimator::Replay,
        Estimator::Ipw,
        Estimator::Snipw,
        Estimator::Dm,
        Estimator::Dr,
        Estimator::Sndr,
        Estimator::SwitchDr,
        Estimator::Dros,
    ];

    /// The stable name used in tables, JSON keys and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Estimator::Replay => "replay",
            Estimator::Ipw => "ipw",
            Estimator::Snipw => "snipw",
            Estimator::Dm => "dm",
            Estimator::Dr => "dr",
            Estimator::Sndr => "sndr",
            Estimator::SwitchDr => "switch-dr",
            Estimator::Dros => "dros",
        }
    }

    /// Whether the estimator needs a reward model `q̂`.
    pub fn needs_reward_model(self) -> bool {
        matches!(
            self,
            Estimator::Dm | Estimator::Dr | Estimator::Sndr | Estimator::SwitchDr | Estimator::Dros
        )
    }
}

impl fmt::Display for Estimator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One logged round reduced to what every estimator needs.
///
/// Contract: `pscore` in (0, 1]; `target_logged` in [0, 1]; `reward` finite;
/// `dm` and `q_logged` finite when a reward model is used (NaN otherwise).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Round {
    /// Observed reward `r_i`.
    pub reward: f64,
    /// Logging propensity `π_b(a_i|x_i)` of the logged action.
    pub pscore: f64,
    /// The candidate's probability of the logged action, `π_e(a_i|x_i)`.
    pub target_logged: f64,
    /// `Σ_a π_e(a|x_i) q̂(x_i,a) / Σ_a π_e(a|x_i)`; NaN without a reward model.
    pub dm: f64,
    /// `q̂(x_i, a_i)`; NaN without a reward model.
    pub q_logged: f64,
}

impl Round {
    /// The importance weight `π_e(a_i|x_i) / π_b(a_i|x_i)`.
    pub fn weight(&self) -> f64 {
        self.target_logged / self.pscore
    }
}

/// Options shared by all estimators.
#[derive(Debug, Clone, PartialEq)]
pub struct EstimateOptions {
    /// Significance level: intervals have coverage `1 − alpha`. In (0, 1).
    pub alpha: f64,
    /// Bootstrap resamples for the percentile interval; 0 = normal
    /// approximation only.
    pub bootstrap: usize,
    /// Seed of the bootstrap RNG (same seed, same data → same interval).
    pub seed: u64,
    /// Switch-DR's threshold `τ` (OBP's `lambda_`): rounds with `w > τ` use
    /// the reward model only. `f64::INFINITY` makes it DR. ≥ 0.
    pub switch_tau: f64,
    /// DRos' shrinkage `λ` (OBP's `lambda_`). `f64::INFINITY` makes it DR. ≥ 0.
    pub dros_lambda: f64,
    /// A propensity below this counts as "tiny" in the diagnostics.
    pub tiny_propensity: f64,
    /// The range rewards can take, for the empirical-Bernstein interval and
    /// the confidence sequence; `None`: the smallest range holding [0, 1]
    /// and every reward seen.
    pub reward_range: Option<(f64, f64)>,
    /// Compute the anytime-valid confidence sequence of IPW and SNIPW
    /// (keeps every round, as the bootstrap does).
    pub confidence_sequence: bool,
}

impl Default for EstimateOptions {
    fn default() -> Self {
        EstimateOptions {
            alpha: 0.05,
            bootstrap: 0,
            seed: 0,
            switch_tau: f64::INFINITY,
            dros_lambda: f64::INFINITY,
            tiny_propensity: 1e-3,
            reward_range: None,
            confidence_sequence: false,
        }
    }
}

/// One estimate of a candidate's policy value.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    /// The estimator's name ([`Estimator::name`]); with several
    /// `--switch-tau` / `--dros-lambda` values, `switch-dr(tau=5)` /
    /// `dros(lambda=10)`.
    pub name: String,
    /// The estimated policy value.
    pub value: f64,
    /// Standard error of `value` (sample std of contributions / √n).
    pub stderr: f64,
    /// Interval lower end: bootstrap percentile if a bootstrap was run,
    /// otherwise the normal approximation.
    pub ci_low: f64,
    /// Interval upper end (same method as `ci_low`).
    pub ci_high: f64,
    /// Normal-approximation interval `value ± z_{1−α/2} stderr`.
    pub normal_ci: (f64, f64),
    /// Percentile bootstrap interval (OBP's `estimate_interval`), if run.
    pub bootstrap_ci: Option<(f64, f64)>,
    /// Empirical-Bernstein interval (IPW and SNIPW; see
    /// [`super::intervals`]).
    pub eb_ci: Option<(f64, f64)>,
    /// Anytime-valid confidence sequence at the last event (IPW and SNIPW,
    /// when requested; see [`super::intervals`]).
    pub cs: Option<(f64, f64)>,
}

impl Estimate {
    /// An estimate that is the mean `value` of `n` contributions whose
    /// sample variance is `var` ([`mean_and_variance`]): its standard error
    /// `√(var / n)` and the normal interval `value ± z_{1−α/2} stderr`, also
    /// as `ci_low`/`ci_high`; no other interval.
    pub fn of_mean(name: impl Into<String>, n: u64, value: f64, var: f64, alpha: f64) -> Estimate {
        let z = Normal::new(0.0, 1.0)
            .expect("the standard normal is valid")
            .inverse_cdf(1.0 - alpha / 2.0);
        let stderr = (var / n as f64).sqrt();
        let normal_ci = (value - z * stderr, value + z * stderr);
        Estimate {
            name: name.into(),
            value,
            stderr,
            ci_low: normal_ci.0,
            ci_high: normal_ci.1,
            normal_ci,
            bootstrap_ci: None,
            eb_ci: None,
            cs: None,
        }
    }
}

/// The mean and the sample variance (n − 1 denominator; NaN for n < 2) of
/// `n` contributions, from their sum and their sum of squares.
pub fn mean_and_variance(n: u64, sum: f64, sq: f64) -> (f64, f64) {
    let nf = n as f64;
    let mean = sum / nf;
    let var = if n > 1 {
        ((sq - nf * mean * mean) / (nf - 1.0)).max(0.0)
    } else {
        f64::NAN
    };
    (mean, var)
}

/// Diagnostics of one candidate on one log: how much the estimates can be
/// trusted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostics {
    /// Events used.
    pub n: u64,
    /// Share of events where the candidate gives the logged action a
    /// positive probability.
    pub match_rate: f64,
    /// Share of events where the candidate gives the logged action
    /// probability 1 (the events replay counts).
    pub replay_match_rate: f64,
    /// Effective sample size of the importance weights, `(Σw)² / Σw²`.
    pub ess: f64,
    /// Largest importance weight.
    pub max_weight: f64,
    /// Mean importance weight (≈ 1 when propensities are right).
    pub mean_weight: f64,
    /// Share of events whose logged propensity is below the "tiny" threshold.
    pub tiny_propensity_share: f64,
    /// Share of events logged with propensity 1 (deterministic logging).
    pub deterministic_share: f64,
    /// Of all events, the share logged with propensity 1 where the
    /// candidate gives the logged action less than 1: there it would act
    /// otherwise, and nothing logged says what that would have earned. (An
    /// event whose only eligible action was logged is deterministic for
    /// every candidate evaluated under the logged eligibility, and harmless.)
    pub deterministic_differs_share: f64,
    /// Smallest logged propensity.
    pub min_propensity: f64,
    /// Largest logged propensity.
    pub max_propensity: f64,
    /// Human-readable warnings about the reliability of the estimates.
    pub warnings: Vec<String>,
}

/// The estimates and diagnostics of one candidate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    /// Events used.
    pub n: u64,
    /// One per requested estimator, in the order requested.
    pub estimates: Vec<Estimate>,
    /// Diagnostics.
    pub diagnostics: Diagnostics,
}

/// Input that the estimators cannot use; the message names the field and
/// the event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OpeError {
    /// A field is out of its domain.
    #[error("event {index}: {field} = {value} {expected}")]
    Invalid {
        /// 0-based event index.
        index: usize,
        /// Field name.
        field: &'static str,
        /// The offending value.
        value: f64,
        /// What it should be.
        expected: &'static str,
    },
    /// Vectors of different lengths, or similar shape errors.
    #[error("{0}")]
    Shape(String),
    /// An estimator needs a reward model and none was given.
    #[error("estimator {0} needs a reward model (q_hat / --reward-model / --fit-reward-model)")]
    NoRewardModel(&'static str),
    /// An option is out of its domain.
    #[error("option {0}")]
    Option(String),
    /// No events to evaluate.
    #[error("no events to evaluate")]
    Empty,
}

/// A whole log in memory, in OBP's array layout (one position).
///
/// Contract (checked by [`estimate`]): `action`, `reward`, `pscore` have
/// length `n`; `target` (and `q_hat`, if given) have length `n × n_actions`,
/// row-major (`target[i * n_actions + a] = π_e(a|x_i)`); each target row is a
/// distribution (non-negative, summing to 1 within 1e-6); `pscore` in (0, 1];
/// everything finite; `action[i] < n_actions`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct OpeData {
    /// Number of actions.
    pub n_actions: usize,
    /// Logged action index per event.
    pub action: Vec<usize>,
    /// Observed reward per event.
    pub reward: Vec<f64>,
    /// Logging propensity of the logged action per event.
    pub pscore: Vec<f64>,
    /// `n × n_actions`, row-major: the candidate's action distribution.
    pub target: Vec<f64>,
    /// `n × n_actions`, row-major: reward model estimates `q̂(x_i, a)`.
    pub q_hat: Option<Vec<f64>>,
}

impl OpeData {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.action.len()
    }

    /// Whether there are no events.
    pub fn is_empty(&self) -> bool {
        self.action.is_empty()
    }

    /// Checks the contract and reduces each event to a [`Round`].
    pub fn rounds(&self) -> Result<Vec<Round>, OpeError> {
        let n = self.action.len();
        let k = self.n_actions;
        if k == 0 {
            return Err(OpeError::Shape("n_actions must be at least 1".into()));
        }
        if self.reward.len() != n || self.pscore.len() != n {
            return Err(OpeError::Shape(format!(
                "action has {n} entries, reward {}, pscore {}: all must have one per event",
                self.reward.len(),
                self.pscore.len()
            )));
        }
        if self.target.len() != n * k {
            return Err(OpeError::Shape(format!(
                "target has {} entries, expected n × n_actions = {}",
                self.target.len(),
                n * k
            )));
        }
        if let Some(q) = &self.q_hat
            && q.len() != n * k
        {
            return Err(OpeError::Shape(format!(
                "q_hat has {} entries, expected n × n_actions = {}",
                q.len(),
                n * k
            )));
        }
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let a = self.action[i];
            if a >= k {
                return Err(OpeError::Invalid {
                    index: i,
                    field: "action",
                    value: a as f64,
                    expected: "must be below n_actions",
                });
            }
            let row = &self.target[i * k..(i + 1) * k];
            check_distribution(i, row)?;
            let (dm, q_logged) = match &self.q_hat {
                Some(q) => {
                    let qrow = &q[i * k..(i + 1) * k];
                    if let Some(bad) = qrow.iter().find(|v| !v.is_finite()) {
                        return Err(OpeError::Invalid {
                            index: i,
                            field: "q_hat",
                            value: *bad,
                            expected: "must be finite",
                        });
                    }
                    (weighted_average(qrow, row), qrow[a])
                }
                None => (f64::NAN, f64::NAN),
            };
            let round = Round {
                reward: self.reward[i],
                pscore: self.pscore[i],
                target_logged: row[a],
                dm,
                q_logged,
            };
            check_round(i, &round)?;
            out.push(round);
        }
        Ok(out)
    }
}

/// `Σ q_a π_a / Σ π_a`, numpy's `np.average(q, weights=pi)`.
pub fn weighted_average(q: &[f64], pi: &[f64]) -> f64 {
    let mut num = 0.0;
    let mut den = 0.0;
    for (qa, pa) in q.iter().zip(pi) {
        num += qa * pa;
        den += pa;
    }
    num / den
}

/// Checks that `row` is a probability distribution (non-negative, sums to 1
/// within 1e-6).
pub fn check_distribution(index: usize, row: &[f64]) -> Result<(), OpeError> {
    let mut sum = 0.0;
    for p in row {
        if !(p.is_finite() && (0.0..=1.0 + 1e-9).contains(p)) {
            return Err(OpeError::Invalid {
                index,
                field: "target probability",
                value: *p,
                expected: "must be in [0, 1]",
            });
        }
        sum += p;
    }
    if (sum - 1.0).abs() > 1e-6 {
        return Err(OpeError::Invalid {
            index,
            field: "target probabilities' sum",
            value: sum,
            expected: "must be 1 (within 1e-6)",
        });
    }
    Ok(())
}

/// Checks one round's contract (see [`Round`]).
pub fn check_round(index: usize, r: &Round) -> Result<(), OpeError> {
    if !(r.pscore > 0.0 && r.pscore <= 1.0 + 1e-9) {
        return Err(OpeError::Invalid {
            index,
            field: "pscore",
            value: r.pscore,
            expected: "must be in (0, 1]",
        });
    }
    if !r.reward.is_finite() {
        return Err(OpeError::Invalid {
            index,
            field: "reward",
            value: r.reward,
            expected: "must be finite",
        });
    }
    if !(r.target_logged.is_finite() && (0.0..=1.0 + 1e-9).contains(&r.target_logged)) {
        return Err(OpeError::Invalid {
            index,
            field: "target probability of the logged action",
            value: r.target_logged,
            expected: "must be in [0, 1]",
        });
    }
    Ok(())
}

/// Evaluates the whole in-memory log with the requested estimators; one
/// [`Estimate`] per entry of `which`, in that order.
///
/// Errors: the data break [`OpeData`]'s contract, an estimator needs a
/// reward model and `q_hat` is `None`, an option is out of range, or there
/// are no events.
pub fn estimate(
    data: &OpeData,
    which: &[Estimator],
    opts: &EstimateOptions,
) -> Result<Vec<Estimate>, OpeError> {
    Ok(evaluate(data, which, opts)?.estimates)
}

/// Like [`estimate`], with the diagnostics.
pub fn evaluate(
    data: &OpeData,
    which: &[Estimator],
    opts: &EstimateOptions,
) -> Result<Evaluation, OpeError> {
    let rounds = data.rounds()?;
    let mut acc = Accumulator::new(opts.clone(), data.q_hat.is_some())?;
    for r in rounds {
        acc.push(r);
    }
    acc.finish(which)
}

/// Running sums of one estimator's contribution `a_i + s · b_i`, where `s`
/// is a normaliser known only at the end (1 / mean weight, or 1).
#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    a: f64,
    b: f64,
    aa: f64,
    bb: f64,
    ab: f64,
}

impl Sums {
    fn add(&mut self, a: f64, b: f64) {
        self.a += a;
        self.b += b;
        self.aa += a * a;
        self.bb += b * b;
        self.ab += a * b;
    }
}

/// The two parts `(a, b)` of round `r`'s contribution to estimator `e`; the
/// contribution is `a + s b` with `s` from [`normaliser`].
fn parts(e: Estimator, r: &Round, opts: &EstimateOptions) -> (f64, f64) {
    let w = r.weight();
    match e {
        // OBP ReplayMethod: action_match * reward / action_match.mean().
        Estimator::Replay => {
            let matched = if r.target_logged == 1.0 { 1.0 } else { 0.0 };
            (0.0, matched * r.reward)
        }
        // OBP InverseProbabilityWeighting (lambda_ = inf: no clipping).
        Estimator::Ipw => (r.reward * w, 0.0),
        // OBP SelfNormalizedInverseProbabilityWeighting: reward * iw / iw.mean().
        Estimator::Snipw => (0.0, r.reward * w),
        Estimator::Dm => (r.dm, 0.0),
        Estimator::Dr => (r.dm + w * (r.reward - r.q_logged), 0.0),
        // OBP SelfNormalizedDoublyRobust: dm + iw (r − q̂) / iw.mean().
        Estimator::Sndr => (r.dm, w * (r.reward - r.q_logged)),
        // OBP SwitchDoublyRobust: switch_indicator = iw <= lambda_.
        Estimator::SwitchDr => {
            let keep = if w <= opts.switch_tau { 1.0 } else { 0.0 };
            (r.dm + keep * w * (r.reward - r.q_logged), 0.0)
        }
        // OBP DoublyRobustWithShrinkage: iw_hat = λ iw / (iw² + λ) for
        // finite λ, iw_hat = iw for λ = inf.
        Estimator::Dros => {
            let lambda = opts.dros_lambda;
            let shrunk = if lambda.is_finite() {
                lambda * w / (w * w + lambda)
            } else {
                w
            };
            (r.dm + shrunk * (r.reward - r.q_logged), 0.0)
        }
    }
}

/// Bootstrap replicates drawn together in one pass over the rounds.
const BLOCK: usize = 16;

/// `P(X ≤ k)` for `X ~ Poisson(1)`, k = 0..=15, as fractions of 2^64: a
/// uniform u64 below entry k draws a count of at most k (so the count is
/// the number of entries at or below it).
const POISSON1_CDF: [u64; 16] = {
    let mut out = [0u64; 16];
    let mut term = 0.367_879_441_171_442_33_f64; // e^-1
    let mut cdf = 0.0;
    let mut k = 0;
    while k < 16 {
        cdf += term;
        out[k] = if cdf >= 1.0 {
            u64::MAX
        } else {
            (cdf * 18_446_744_073_709_551_616.0) as u64
        };
        k += 1;
        term /= k as f64;
    }
    // The tail beyond 15 (below 1e-13) joins 15, so a draw never exceeds it.
    out[15] = u64::MAX;
    out
};

/// `BLOCK` Poisson-bootstrap replicate means of the `m` contributions of
/// every round (`c`, row-major), into `out[r * m + j]`; counts from an RNG
/// seeded by `(seed, block)`.
fn poisson_block(c: &[f64], m: usize, seed: u64, block: u64, out: &mut [f64]) {
    use rand::Rng as _;
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(
        seed ^ block.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let reps = out.len() / m;
    let mut totals = vec![0.0; reps * m];
    let mut counts = vec![0.0; reps];
    for row in c.chunks_exact(m) {
        for r in 0..reps {
            let u = rng.next_u64();
            let k = POISSON1_CDF.iter().take_while(|&&p| u >= p).count() as f64;
            if k > 0.0 {
                counts[r] += k;
                for (t, x) in totals[r * m..(r + 1) * m].iter_mut().zip(row) {
                    *t += k * x;
                }
            }
        }
    }
    for r in 0..reps {
        for j in 0..m {
            out[r * m + j] = if counts[r] > 0.0 {
                totals[r * m + j] / counts[r]
            } else {
                f64::NAN
            };
        }
    }
}

/// Streams rounds, keeping running sums (and the rounds themselves only
/// when a bootstrap is requested); [`Accumulator::finish`] produces the
/// estimates. Feed it rounds that satisfy [`Round`]'s contract.
#[derive(Debug, Clone)]
pub struct Accumulator {
    opts: EstimateOptions,
    has_model: bool,
    n: u64,
    sums: [Sums; 8],
    w_sum: f64,
    w_sq_sum: f64,
    w_max: f64,
    matched: u64,
    replay_matched: u64,
    tiny: u64,
    deterministic: u64,
    deterministic_differs: u64,
    p_min: f64,
    p_max: f64,
    r_min: f64,
    r_max: f64,
    stochastic_target_on_logged: u64,
    kept: Vec<Round>,
}

impl Accumulator {
    /// A new accumulator; `has_model` says whether rounds carry a reward
    /// model's `dm` / `q_logged`. Errors on out-of-range options.
    pub fn new(opts: EstimateOptions, has_model: bool) -> Result<Accumulator, OpeError> {
        if !(opts.alpha > 0.0 && opts.alpha < 1.0) {
            return Err(OpeError::Option(format!(
                "alpha = {} must be in (0, 1)",
                opts.alpha
            )));
        }
        if opts.switch_tau.is_nan() || opts.switch_tau < 0.0 {
            return Err(OpeError::Option(format!(
                "switch-tau = {} must be ≥ 0",
                opts.switch_tau
            )));
        }
        if opts.dros_lambda.is_nan() || opts.dros_lambda < 0.0 {
            return Err(OpeError::Option(format!(
                "dros-lambda = {} must be ≥ 0",
                opts.dros_lambda
            )));
        }
        Ok(Accumulator {
            opts,
            has_model,
            n: 0,
            sums: [Sums::default(); 8],
            w_sum: 0.0,
            w_sq_sum: 0.0,
            w_max: 0.0,
            matched: 0,
            replay_matched: 0,
            tiny: 0,
            deterministic: 0,
            deterministic_differs: 0,
            p_min: f64::INFINITY,
            p_max: 0.0,
            r_min: f64::INFINITY,
            r_max: f64::NEG_INFINITY,
            stochastic_target_on_logged: 0,
            kept: Vec::new(),
        })
    }

    /// Adds one round.
    pub fn push(&mut self, r: Round) {
        self.n += 1;
        for (k, e) in Estimator::ALL.iter().enumerate() {
            if e.needs_reward_model() && !self.has_model {
                continue;
            }
            let (a, b) = parts(*e, &r, &self.opts);
            self.sums[k].add(a, b);
        }
        let w = r.weight();
        self.w_sum += w;
        self.w_sq_sum += w * w;
        self.w_max = self.w_max.max(w);
        if r.target_logged > 0.0 {
            self.matched += 1;
            if r.target_logged < 1.0 {
                self.stochastic_target_on_logged += 1;
            }
        }
        if r.target_logged == 1.0 {
            self.replay_matched += 1;
        }
        if r.pscore < self.opts.tiny_propensity {
            self.tiny += 1;
        }
        if r.pscore >= 1.0 {
            self.deterministic += 1;
            if r.target_logged < 1.0 {
                self.deterministic_differs += 1;
            }
        }
        self.p_min = self.p_min.min(r.pscore);
        self.p_max = self.p_max.max(r.pscore);
        self.r_min = self.r_min.min(r.reward);
        self.r_max = self.r_max.max(r.reward);
        if self.keeps_rounds() {
            self.kept.push(r);
        }
    }

    fn keeps_rounds(&self) -> bool {
        self.opts.bootstrap > 0 || self.opts.confidence_sequence
    }

    /// The reward range of the intervals that need one: the given one
    /// (an error if a reward fell outside it), or [0, 1] widened to every
    /// reward seen.
    fn reward_range(&self) -> Result<(f64, f64), OpeError> {
        match self.opts.reward_range {
            Some((lo, hi)) if self.r_min < lo || self.r_max > hi => Err(OpeError::Option(format!(
                "reward-range = [{lo}, {hi}] but the log has rewards in [{}, {}]",
                self.r_min, self.r_max
            ))),
            Some(range) => Ok(range),
            None => Ok((self.r_min.min(0.0), self.r_max.max(1.0))),
        }
    }

    /// Events pushed so far.
    pub fn len(&self) -> u64 {
        self.n
    }

    /// Whether no event was pushed.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    fn normaliser(&self, e: Estimator) -> f64 {
        let n = self.n as f64;
        match e {
            Estimator::Replay => {
                if self.replay_matched == 0 {
                    // OBP returns zeros when nothing matches.
                    0.0
                } else {
                    n / self.replay_matched as f64
                }
            }
            Estimator::Snipw | Estimator::Sndr => n / self.w_sum,
            _ => 1.0,
        }
    }

    /// The estimates for `which` (in that order) and the diagnostics.
    pub fn finish(&self, which: &[Estimator]) -> Result<Evaluation, OpeError> {
        if self.n == 0 {
            return Err(OpeError::Empty);
        }
        if let Some(e) = which
            .iter()
            .find(|e| e.needs_reward_model() && !self.has_model)
        {
            return Err(OpeError::NoRewardModel(e.name()));
        }
        let boot = if self.opts.bootstrap > 0 {
            Some(self.bootstrap(which))
        } else {
            None
        };
        let range = self.reward_range()?;
        let cs = (self.opts.confidence_sequence
            && which
                .iter()
                .any(|e| matches!(e, Estimator::Ipw | Estimator::Snipw)))
        .then(|| ConfidenceSequence::new(&self.kept, range, self.opts.alpha).bounds());
        // IPW's contribution w·r lies in W·[min(lo, 0), max(hi, 0)].
        let ipw_width = self.w_max * (range.1.max(0.0) - range.0.min(0.0));
        let mut estimates = Vec::with_capacity(which.len());
        for (j, e) in which.iter().enumerate() {
            let k = Estimator::ALL.iter().position(|x| x == e).unwrap_or(0);
            let s = self.normaliser(*e);
            let sums = &self.sums[k];
            let total = sums.a + s * sums.b;
            let sq = sums.aa + 2.0 * s * sums.ab + s * s * sums.bb;
            let (value, var) = mean_and_variance(self.n, total, sq);
            let mut est = Estimate::of_mean(e.name(), self.n, value, var, self.opts.alpha);
            if let Some(b) = &boot {
                est.bootstrap_ci = Some(b[j]);
                (est.ci_low, est.ci_high) = b[j];
            }
            if matches!(e, Estimator::Ipw | Estimator::Snipw) {
                est.eb_ci = Some(empirical_bernstein(
                    value,
                    var,
                    self.n,
                    s * ipw_width,
                    self.opts.alpha,
                ));
                est.cs = cs;
            }
            estimates.push(est);
        }
        Ok(Evaluation {
            n: self.n,
            estimates,
            diagnostics: self.diagnostics(which),
        })
    }

    /// The percentile bootstrap of each estimator's mean contribution, on
    /// common resamples, by the Poisson bootstrap (Hanley & MacGibbon 2006;
    /// Chamandy et al. 2012, "Estimating uncertainty for massive data
    /// streams"): each replicate weighs every round by an independent
    /// Poisson(1) count and takes the weighted mean. It is the multinomial
    /// bootstrap of OBP's `estimate_confidence_interval_by_bootstrap` with
    /// the resample size left free, asymptotically the same interval; it
    /// reads the rounds in order instead of at random, which is what makes
    /// 1000 replicates of a million rounds take seconds. The interval is the
    /// (α/2, 1 − α/2) percentiles with numpy's linear interpolation.
    ///
    /// Replicates run in blocks of [`BLOCK`] spread over the cores; a
    /// block's counts come from its own RNG seeded by `(seed, block)`, so
    /// the interval depends on the seed alone, not on the thread count.
    fn bootstrap(&self, which: &[Estimator]) -> Vec<(f64, f64)> {
        let b = self.opts.bootstrap;
        let m = which.len();
        let scales: Vec<f64> = which.iter().map(|e| self.normaliser(*e)).collect();
        // Each round's contribution to each estimator, row by row.
        let c: Vec<f64> = self
            .kept
            .iter()
            .flat_map(|r| {
                which.iter().zip(&scales).map(|(e, s)| {
                    let (a, bb) = parts(*e, r, &self.opts);
                    a + s * bb
                })
            })
            .collect();
        let blocks = b.div_ceil(BLOCK);
        let threads = std::thread::available_parallelism()
            .map_or(1, |t| t.get())
            .min(blocks)
            .max(1);
        let mut means = vec![0.0; blocks * BLOCK * m];
        std::thread::scope(|scope| {
            let per_thread = blocks.div_ceil(threads);
            for (t, chunk) in means.chunks_mut(per_thread * BLOCK * m).enumerate() {
                let c = &c;
                let seed = self.opts.seed;
                scope.spawn(move || {
                    for (k, out) in chunk.chunks_mut(BLOCK * m).enumerate() {
                        poisson_block(c, m, seed, (t * per_thread + k) as u64, out);
                    }
                });
            }
        });
        (0..m)
            .map(|j| {
                let mut v: Vec<f64> = (0..b).map(|k| means[k * m + j]).collect();
                v.sort_by(f64::total_cmp);
                (
                    percentile(&v, 100.0 * self.opts.alpha / 2.0),
                    percentile(&v, 100.0 * (1.0 - self.opts.alpha / 2.0)),
                )
            })
            .collect()
    }

    fn diagnostics(&self, which: &[Estimator]) -> Diagnostics {
        let n = self.n as f64;
        let ess = if self.w_sq_sum > 0.0 {
            self.w_sum * self.w_sum / self.w_sq_sum
        } else {
            0.0
        };
        let d = Diagnostics {
            n: self.n,
            match_rate: self.matched as f64 / n,
            replay_match_rate: self.replay_matched as f64 / n,
            ess,
            max_weight: self.w_max,
            mean_weight: self.w_sum / n,
            tiny_propensity_share: self.tiny as f64 / n,
            deterministic_share: self.deterministic as f64 / n,
            deterministic_differs_share: self.deterministic_differs as f64 / n,
            min_propensity: self.p_min,
            max_propensity: self.p_max,
            warnings: Vec::new(),
        };
        let warnings = self.warnings(&d, which);
        Diagnostics { warnings, ..d }
    }

    fn warnings(&self, d: &Diagnostics, which: &[Estimator]) -> Vec<String> {
        let mut w = Vec::new();
        let pct = |x: f64| format!("{:.1}%", 100.0 * x);
        let weighted = which
            .iter()
            .any(|e| !matches!(e, Estimator::Dm | Estimator::Replay));
        if d.deterministic_differs_share > 0.0 {
            w.push(format!(
                "{} of events were logged with propensity 1 (deterministic logging) where \
                 the candidate would act differently: no other action was ever explored \
                 there, so importance-weighted estimators (ipw, snipw, dr, …) are biased for \
                 it, and dm rests on the reward model alone",
                pct(d.deterministic_differs_share)
            ));
        }
        if d.tiny_propensity_share > 0.0 && weighted {
            w.push(format!(
                "{} of events have a logged propensity below {} (smallest {:.3e}; largest \
                 importance weight {:.1}): importance-weighted estimates are high-variance",
                pct(d.tiny_propensity_share),
                self.opts.tiny_propensity,
                d.min_propensity,
                d.max_weight
            ));
        }
        if weighted && d.ess < 0.01 * n_f(self.n) {
            w.push(format!(
                "effective sample size {:.1} is below 1% of the {} events: importance-weighted \
                 estimates rest on few events",
                d.ess, self.n
            ));
        }
        if weighted && self.n >= 100 && (d.mean_weight - 1.0).abs() > 0.1 {
            w.push(format!(
                "mean importance weight is {:.3}, not ≈ 1: the logged propensities may be \
                 wrong or the candidate gives weight to actions the logger never took; \
                 prefer snipw / sndr",
                d.mean_weight
            ));
        }
        if which.contains(&Estimator::Replay) {
            if self.replay_matched == 0 {
                w.push(
                    "replay: no event where the candidate puts probability 1 on the logged \
                     action; its value is reported as 0"
                        .into(),
                );
            }
            if self.stochastic_target_on_logged > 0 {
                w.push(format!(
                    "replay: the candidate is stochastic on {} events; replay (OBP's \
                     definition) only counts events where it puts probability 1 on the \
                     logged action",
                    self.stochastic_target_on_logged
                ));
            }
            if d.max_propensity - d.min_propensity > 1e-9 {
                w.push(format!(
                    "replay assumes uniformly random logging (Li et al. 2011); logged \
                     propensities range from {:.4} to {:.4}, so replay is biased here",
                    d.min_propensity, d.max_propensity
                ));
            }
        }
        w
    }
}

fn n_f(n: u64) -> f64 {
    n as f64
}

/// numpy's `np.percentile(v, q)` (linear interpolation) on sorted `v`.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let pos = q / 100.0 * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    let frac = pos - lo as f64;
    sorted[lo] + (sorted[hi] - sorted[lo]) * frac
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> OpeData {
        OpeData {
            n_actions: 2,
            action: vec![0, 1, 0, 1],
            reward: vec![1.0, 0.0, 0.0, 1.0],
            pscore: vec![0.5, 0.5, 0.5, 0.5],
            target: vec![1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.2, 0.8],
            q_hat: Some(vec![0.5; 8]),
        }
    }

    #[test]
    fn ipw_is_the_mean_of_weighted_rewards() {
        let e = estimate(&data(), &[Estimator::Ipw], &EstimateOptions::default()).unwrap();
        // w = [2, 2, 1, 1.6]; w·r = [2, 0, 0, 1.6].
        assert!((e[0].value - 3.6 / 4.0).abs() < 1e-12);
    }

    #[test]
    fn dm_without_a_reward_model_is_an_error() {
        let mut d = data();
        d.q_hat = None;
        let err = estimate(&d, &[Estimator::Dm], &EstimateOptions::default()).unwrap_err();
        assert_eq!(err, OpeError::NoRewardModel("dm"));
    }

    #[test]
    fn a_propensity_of_zero_is_rejected_with_its_event() {
        let mut d = data();
        d.pscore[2] = 0.0;
        let err = estimate(&d, &[Estimator::Ipw], &EstimateOptions::default()).unwrap_err();
        assert!(err.to_string().contains("event 2: pscore"), "{err}");
    }

    #[test]
    fn poisson_counts_have_mean_and_variance_one_and_blocks_replay_from_their_seed() {
        // P(X ≤ 0) = e^-1, P(X ≤ 1) = 2 e^-1.
        let frac = |k: usize| POISSON1_CDF[k] as f64 / 18_446_744_073_709_551_616.0;
        assert!((frac(0) - (-1f64).exp()).abs() < 1e-15);
        assert!((frac(1) - 2.0 * (-1f64).exp()).abs() < 1e-15);
        assert_eq!(POISSON1_CDF[15], u64::MAX);
        // One round of contribution 1 and one of 0: a replicate's mean is
        // count₁ / (count₀ + count₁); over 200k rounds of 1s the counts'
        // total is n ± a few √n, with mean and variance 1 per round.
        let n = 200_000;
        let c = vec![1.0; n];
        let mut out = vec![0.0; BLOCK];
        poisson_block(&c, 1, 5, 0, &mut out);
        assert!(out.iter().all(|&m| m == 1.0), "{out:?}");
        let c: Vec<f64> = (0..n).map(|i| f64::from(u8::from(i % 2 == 0))).collect();
        let mut a = vec![0.0; BLOCK];
        let mut b = vec![0.0; BLOCK];
        poisson_block(&c, 1, 5, 3, &mut a);
        poisson_block(&c, 1, 5, 3, &mut b);
        assert_eq!(a, b, "a block is a function of (seed, block)");
        let mut other = vec![0.0; BLOCK];
        poisson_block(&c, 1, 5, 4, &mut other);
        assert_ne!(a, other);
        // Each replicate mean is 1/2 within a few of its standard errors
        // (√(1/(4n)) for the Poisson bootstrap of a mean of 0/1 halves).
        let se = (0.25 / n as f64).sqrt();
        assert!(a.iter().all(|m| (m - 0.5).abs() < 5.0 * se), "{a:?}");
        let spread = a.iter().map(|m| (m - 0.5).powi(2)).sum::<f64>() / BLOCK as f64;
        assert!(
            spread.sqrt() > 0.3 * se && spread.sqrt() < 3.0 * se,
            "{spread}"
        );
    }

    #[test]
    fn percentile_interpolates_like_numpy() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert_eq!(percentile(&v, 2.5), 1.075);
    }
}
