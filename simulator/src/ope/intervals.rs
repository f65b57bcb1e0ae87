//! Intervals for IPW and SNIPW beyond the normal approximation and the
//! bootstrap: an empirical-Bernstein interval (valid at a fixed sample
//! size, without normality) and an anytime-valid confidence sequence
//! (valid at every sample size at once, so a team may look at it as data
//! arrives and stop whenever it has decided, without inflating the error).
//!
//! Both need rewards in a known range `[lo, hi]` (`--reward-range`; by
//! default the smallest range holding `[0, 1]` and every logged reward).
//!
//! **Empirical Bernstein** (Maurer & Pontil 2009, "Empirical Bernstein
//! bounds and sample variance penalization", Theorem 4). For i.i.d.
//! contributions in an interval of width `R`, with the sample variance
//! `V` (n − 1 denominator), each side holds with probability 1 − α/2:
//! `|mean − μ| ≤ √(2 V ln(4/α) / n) + 7 R ln(4/α) / (3 (n − 1))`.
//! For IPW the contribution `w r` lies in `W · [min(lo, 0), max(hi, 0)]`
//! where `W` is the largest importance weight in the log (a plug-in: the
//! bound is exact when no larger weight was possible).
//!
//! **Confidence sequence by betting** (Waudby-Smith & Ramdas 2023,
//! "Estimating means of bounded random variables by betting", JRSS-B;
//! applied to off-policy evaluation by Waudby-Smith, Wu, Ramdas, Karampatziakis
//! & Mineiro 2024, "Anytime-valid off-policy inference for contextual
//! bandits"). With `r' = (r − lo) / (hi − lo)` in [0, 1] and the importance
//! weight `w`, `X_i = w_i r'_i ≥ 0` has conditional mean `V'` (the target's
//! value in [0, 1] units) at every step, even when the logging policy
//! learns, because each `w_i` uses the propensity the action was drawn
//! with. For a candidate mean `m` the capital
//! `K_t(m) = Π_{i ≤ t} (1 + λ_i(m) (X_i − m))` is then a nonnegative
//! martingale at `m = V'`, and by Ville's inequality it ever reaches
//! `2/α` with probability at most α/2. The lower bound at time t is the
//! largest `m` whose capital has reached `2/α`. The upper bound is the
//! same construction on `Y_i = w_i (1 − r'_i)`, whose mean is `1 − V'` when
//! the logging policy gives every action the target can take a positive
//! probability (the usual support condition of IPW).
//!
//! Bets: the predictable plug-in of Waudby-Smith & Ramdas (their eq. 26),
//! `λ̃_t = √(2 ln(2/α) / (σ̂²_{t−1} t ln(1 + t)))`, with
//! `σ̂²_t = (1/4 + Σ_{i≤t} (X_i − μ̂_i)²) / (t + 1)` and
//! `μ̂_t = (1/2 + Σ_{i≤t} X_i) / (t + 1)`, truncated to `λ_i(m) =
//! min(λ̃_i, c / m)` with `c = 1/2` so every factor stays positive. Each
//! factor then falls as `m` grows, so `K_t(m)` is nonincreasing in `m`,
//! the set of rejected means is an interval, and the bound is found by
//! bisection. The events must be in the order they were logged (every
//! source reads them so).
//!
//! SNIPW estimates the same value `V` as IPW; its sequence is the one
//! above (a confidence sequence for `V` is one whatever point estimate is
//! shown beside it), and its empirical-Bernstein interval treats the
//! normaliser `n / Σ w` as fixed, as its standard error does.

use super::Round;

/// `c` of the truncation `λ ≤ c / m`.
const TRUNCATION: f64 = 0.5;
/// Bisection steps: the bounds are found to 2^-40 of the reward range.
const STEPS: u32 = 40;

/// The empirical-Bernstein interval around `mean` (see the module docs):
/// `var` is the sample variance (n − 1 denominator) of contributions lying
/// in an interval of width `range`. Infinite for n < 2.
pub fn empirical_bernstein(mean: f64, var: f64, n: u64, range: f64, alpha: f64) -> (f64, f64) {
    if n < 2 || !var.is_finite() || !range.is_finite() {
        return (f64::NEG_INFINITY, f64::INFINITY);
    }
    let l = (4.0 / alpha).ln();
    let n = n as f64;
    let half = (2.0 * var.max(0.0) * l / n).sqrt() + 7.0 * range * l / (3.0 * (n - 1.0));
    (mean - half, mean + half)
}

/// One side of the sequence: the observations and their bets.
#[derive(Debug, Clone)]
struct Side {
    x: Vec<f64>,
    /// The untruncated predictable bet of each step.
    bet: Vec<f64>,
}

impl Side {
    fn new(x: Vec<f64>, alpha: f64) -> Side {
        let log_term = 2.0 * (2.0 / alpha).ln();
        let mut bet = Vec::with_capacity(x.len());
        let (mut sum, mut dev) = (0.0, 0.0);
        for (i, &xi) in x.iter().enumerate() {
            let t = (i + 1) as f64;
            // σ̂²_{t−1}: what was known before X_t.
            let var = (0.25 + dev) / t;
            bet.push((log_term / (var * t * (1.0 + t).ln())).sqrt());
            sum += xi;
            let mean = (0.5 + sum) / (t + 1.0);
            dev += (xi - mean) * (xi - mean);
        }
        Side { x, bet }
    }

    fn factor(&self, i: usize, m: f64) -> f64 {
        let lambda = if m > 0.0 {
            self.bet[i].min(TRUNCATION / m)
        } else {
            self.bet[i]
        };
        (lambda * (self.x[i] - m)).ln_1p()
    }

    /// ln K_n(m) over every observation.
    fn log_capital(&self, m: f64) -> f64 {
        (0..self.x.len()).map(|i| self.factor(i, m)).sum()
    }

    /// The largest mean in [0, 1] the data reject at the end (0 if none).
    fn lower_bound(&self, threshold: f64) -> f64 {
        if self.log_capital(0.0) < threshold {
            return 0.0;
        }
        if self.log_capital(1.0) >= threshold {
            return 1.0;
        }
        let (mut rejected, mut kept) = (0.0, 1.0);
        for _ in 0..STEPS {
            let mid = 0.5 * (rejected + kept);
            if self.log_capital(mid) >= threshold {
                rejected = mid;
            } else {
                kept = mid;
            }
        }
        rejected
    }

    /// The first step (1-based count of observations) at which `m` is
    /// rejected, if ever.
    fn first_rejection(&self, m: f64, threshold: f64) -> Option<usize> {
        let mut log_k = 0.0;
        for i in 0..self.x.len() {
            log_k += self.factor(i, m);
            if log_k >= threshold {
                return Some(i + 1);
            }
        }
        None
    }
}

/// The betting confidence sequence for the policy value of one candidate
/// on one log (see the module docs).
#[derive(Debug, Clone)]
pub struct ConfidenceSequence {
    lo: f64,
    width: f64,
    threshold: f64,
    lower: Side,
    upper: Side,
}

impl ConfidenceSequence {
    /// The sequence over `rounds` in log order, for rewards in `[lo, hi]`
    /// (`lo < hi`; rewards outside are clamped, so check them first) and
    /// coverage 1 − `alpha`.
    pub fn new(rounds: &[Round], (lo, hi): (f64, f64), alpha: f64) -> ConfidenceSequence {
        let width = hi - lo;
        let (mut x, mut y) = (
            Vec::with_capacity(rounds.len()),
            Vec::with_capacity(rounds.len()),
        );
        for r in rounds {
            let w = r.weight();
            let scaled = ((r.reward - lo) / width).clamp(0.0, 1.0);
            x.push(w * scaled);
            y.push(w * (1.0 - scaled));
        }
        let (lower, upper) = std::thread::scope(|s| {
            let up = s.spawn(|| Side::new(y, alpha));
            (Side::new(x, alpha), up.join().expect("bets do not panic"))
        });
        ConfidenceSequence {
            lo,
            width,
            threshold: (2.0 / alpha).ln(),
            lower,
            upper,
        }
    }

    /// The interval at the last event, in reward units. Valid at any
    /// stopping time: looking at it after every batch and stopping once it
    /// excludes a threshold keeps the error at most α.
    pub fn bounds(&self) -> (f64, f64) {
        let (l, u) = std::thread::scope(|s| {
            let u = s.spawn(|| self.upper.lower_bound(self.threshold));
            (
                self.lower.lower_bound(self.threshold),
                u.join().expect("bisection does not panic"),
            )
        });
        (self.lo + self.width * l, self.lo + self.width * (1.0 - u))
    }

    /// The first number of events after which `value` lies outside the
    /// sequence, if it ever does (`None`: covered at every time).
    pub fn first_exclusion(&self, value: f64) -> Option<usize> {
        let m = (value - self.lo) / self.width;
        if !(0.0..=1.0).contains(&m) {
            return Some(1);
        }
        let a = self.lower.first_rejection(m, self.threshold);
        let b = self.upper.first_rejection(1.0 - m, self.threshold);
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};

    fn on_policy(n: usize, p: f64, seed: u64) -> Vec<Round> {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
        (0..n)
            .map(|_| Round {
                reward: f64::from(u8::from(rng.random::<f64>() < p)),
                pscore: 0.5,
                target_logged: 0.5,
                dm: f64::NAN,
                q_logged: f64::NAN,
            })
            .collect()
    }

    #[test]
    fn the_sequence_narrows_around_the_mean_and_its_bounds_are_where_the_capital_crosses() {
        let rounds = on_policy(4000, 0.3, 7);
        let cs = ConfidenceSequence::new(&rounds, (0.0, 1.0), 0.05);
        let (l, u) = cs.bounds();
        assert!(l < 0.3 && 0.3 < u, "[{l}, {u}]");
        assert!(u - l < 0.08, "[{l}, {u}]");
        // The bounds are the crossing points: just inside is kept, just
        // outside is rejected by the end.
        let t = cs.threshold;
        assert!(cs.lower.log_capital(l - 1e-6) >= t);
        assert!(cs.lower.log_capital(l + 1e-6) < t);
        assert!(cs.upper.log_capital(1.0 - u - 1e-6) >= t);
        assert!(cs.upper.log_capital(1.0 - u + 1e-6) < t);
        assert_eq!(cs.first_exclusion(0.3), None);
        assert!(cs.first_exclusion(0.5).is_some());
        // Fewer events, wider sequence.
        let short = ConfidenceSequence::new(&rounds[..400], (0.0, 1.0), 0.05).bounds();
        assert!(short.1 - short.0 > u - l, "{short:?} vs [{l}, {u}]");
    }

    #[test]
    fn the_capital_falls_as_the_candidate_mean_rises() {
        let rounds = on_policy(500, 0.6, 3);
        let cs = ConfidenceSequence::new(&rounds, (0.0, 1.0), 0.1);
        let caps: Vec<f64> = (0..=100)
            .map(|i| cs.lower.log_capital(i as f64 / 100.0))
            .collect();
        assert!(caps.windows(2).all(|w| w[1] <= w[0]), "{caps:?}");
    }

    #[test]
    fn empirical_bernstein_is_wider_than_the_normal_interval_and_shrinks_with_n() {
        let (l, u) = empirical_bernstein(0.3, 0.21, 10_000, 1.0, 0.05);
        let normal = 1.96 * (0.21f64 / 10_000.0).sqrt();
        assert!((u - l) / 2.0 > normal);
        assert!((u - l) / 2.0 < 2.0 * normal);
        let (l2, u2) = empirical_bernstein(0.3, 0.21, 1_000_000, 1.0, 0.05);
        assert!(u2 - l2 < (u - l) / 5.0);
        assert_eq!(
            empirical_bernstein(0.3, 0.2, 1, 1.0, 0.05),
            (f64::NEG_INFINITY, f64::INFINITY)
        );
    }
}
