//! Scoring: each algorithm's scores (or win probabilities) for the
//! candidates, handed to the exploration layer.

use super::spec::{Algorithm, Mode, PolicySpec};
use crate::explore::{self, Stream, quadrature};
use crate::model::LinearModel;
use ndarray::Array2;
use ndarray_linalg::{Cholesky, UPLO};
use rand::RngExt;
use rand_distr::{Beta, Distribution, StandardNormal};

/// Everything needed to score one request's candidates.
pub(super) struct Scoring<'a> {
    pub policy: &'a PolicySpec,
    pub model: &'a LinearModel,
    /// Arm indices (disjoint) or action indices (shared).
    pub candidates: &'a [usize],
    /// One `x` (disjoint) or one row per candidate (shared).
    pub vectors: &'a [f64],
    pub dim: usize,
}

impl Scoring<'_> {
    /// `(model arm, x)` of the candidate at `position`.
    fn arm_and_x(&self, position: usize) -> (usize, &[f64]) {
        match self.policy.mode {
            Mode::Disjoint => (self.candidates[position], self.vectors),
            Mode::Shared => (
                0,
                &self.vectors[position * self.dim..(position + 1) * self.dim],
            ),
        }
    }

    /// Writes the exploration distribution over the candidates into `out`.
    pub fn distribution(&self, event_id: &str, out: &mut [f64]) {
        let params = &self.policy.params;
        let n = out.len();
        match self.policy.algorithm {
            Algorithm::Uniform => explore::uniform(out),
            Algorithm::LinUcb | Algorithm::EpsilonGreedy => {
                // LinUCB (Li et al. 2010, Algorithm 1): θᵀx + α √(xᵀA⁻¹x);
                // epsilon-greedy: the ridge estimate θᵀx alone.
                let alpha = (self.policy.algorithm == Algorithm::LinUcb).then_some(params.alpha);
                let scores: Vec<f64> = (0..n)
                    .map(|i| {
                        let (arm, x) = self.arm_and_x(i);
                        let width = alpha.map_or(0.0, |a| a * self.model.quad_form(arm, x).sqrt());
                        self.model.mean(arm, x) + width
                    })
                    .collect();
                explore::epsilon_greedy(&scores, params.epsilon, out);
            }
            Algorithm::LinTs => match self.policy.mode {
                Mode::Disjoint => self.disjoint_ts(out),
                Mode::Shared => self.shared_ts(event_id, out),
            },
            Algorithm::BetaTs => self.beta_ts(event_id, out),
        }
    }

    /// Disjoint linear TS (Agrawal & Goyal 2013): arm scores are independent
    /// `N(θ_aᵀx, v² xᵀA_a⁻¹x)`, so the win probabilities are exact up to
    /// quadrature error.
    fn disjoint_ts(&self, out: &mut [f64]) {
        let v = self.policy.params.v;
        let n = out.len();
        let mut mu = Vec::with_capacity(n);
        let mut sigma = Vec::with_capacity(n);
        for i in 0..n {
            let (arm, x) = self.arm_and_x(i);
            mu.push(self.model.mean(arm, x));
            sigma.push(v * self.model.quad_form(arm, x).sqrt());
        }
        if sigma.iter().all(|s| *s == 0.0) {
            // x = 0: every draw equals its mean, TS is a plain argmax.
            explore::epsilon_greedy(&mu, self.policy.params.epsilon, out);
            return;
        }
        quadrature::normal_max_probabilities(&mu, &sigma, out);
        explore::mix_floor(out, self.policy.params.epsilon);
    }

    /// Shared linear TS: the candidates' scores share one posterior
    /// `θ̃ ~ N(θ, v²A⁻¹)`, so they are correlated and the win probabilities
    /// have no closed form. They are estimated from `draws` posterior
    /// samples seeded by the event, and the action is then drawn from that
    /// estimate, so the logged propensity is exactly the probability with
    /// which it was chosen.
    fn shared_ts(&self, event_id: &str, out: &mut [f64]) {
        let params = &self.policy.params;
        let n = out.len();
        let d = self.dim;
        let factor = self.model.posterior_factor(0);
        let mean: Vec<f64> = (0..n)
            .map(|i| self.model.mean(0, self.arm_and_x(i).1))
            .collect();
        // G = X L (n × d): candidate i's score is mean_i + v·(G z)_i.
        let mut g = vec![0.0; n * d];
        for i in 0..n {
            let x = self.arm_and_x(i).1;
            let row = &mut g[i * d..(i + 1) * d];
            for (k, xk) in x.iter().enumerate() {
                if *xk != 0.0 {
                    for (j, lkj) in factor.row(k).iter().enumerate().take(k + 1) {
                        row[j] += xk * lkj;
                    }
                }
            }
        }
        let (f, m) = score_factor(g, n, d);
        let mut rng = explore::event_rng(&self.policy.id, event_id, Stream::Posterior);
        let mut z = vec![0.0; m];
        monte_carlo_wins(params.draws, params.epsilon, out, || {
            z.iter_mut()
                .for_each(|v| *v = StandardNormal.sample(&mut rng));
            first_max(
                (0..n).map(|i| mean[i] + params.v * crate::model::dot(&f[i * m..(i + 1) * m], &z)),
            )
        });
    }

    /// Beta-Bernoulli TS (Thompson 1933; Chapelle & Li 2011): arm `a` draws
    /// from `Beta(1 + Σr, 1 + n − Σr)`; win probabilities are estimated from
    /// `draws` seeded draws, and the action is drawn from that estimate.
    fn beta_ts(&self, event_id: &str, out: &mut [f64]) {
        let params = &self.policy.params;
        let posteriors: Vec<Beta<f64>> = self
            .candidates
            .iter()
            .map(|&arm| {
                let s = self.model.stats(arm);
                let successes = s.reward_sum.clamp(0.0, s.count as f64);
                Beta::new(1.0 + successes, 1.0 + s.count as f64 - successes)
                    .expect("shape parameters are >= 1")
            })
            .collect();
        let mut rng = explore::event_rng(&self.policy.id, event_id, Stream::Posterior);
        monte_carlo_wins(params.draws, params.epsilon, out, || {
            // Tiny jitter breaks exact ties between equal draws fairly.
            first_max(
                posteriors
                    .iter()
                    .map(|b| b.sample(&mut rng) + 1e-15 * rng.random::<f64>()),
            )
        });
    }
}

/// A factor `F` (`n × m`, row-major) with `F Fᵀ = G Gᵀ`, the covariance of
/// the candidates' scores (before `v²`), and its width `m`. With fewer
/// candidates than dimensions, the Cholesky factor of the `n × n` covariance
/// needs `n` normals per draw instead of `d`; it falls back to `G` itself
/// when that covariance is singular (e.g. duplicate candidates).
fn score_factor(g: Vec<f64>, n: usize, d: usize) -> (Vec<f64>, usize) {
    if n >= d {
        return (g, d);
    }
    let gm = Array2::from_shape_vec((n, d), g).expect("n × d");
    let cov = gm.dot(&gm.t());
    match cov.cholesky(UPLO::Lower) {
        Ok(h) if h.iter().all(|v| v.is_finite()) => (h.into_raw_vec_and_offset().0, n),
        _ => (gm.into_raw_vec_and_offset().0, d),
    }
}

/// Counts, over `draws` calls of `winner`, how often each candidate wins,
/// and writes the shares mixed with the exploration floor into `out`.
fn monte_carlo_wins(draws: u32, epsilon: f64, out: &mut [f64], mut winner: impl FnMut() -> usize) {
    let mut wins = vec![0u32; out.len()];
    for _ in 0..draws {
        wins[winner()] += 1;
    }
    for (p, w) in out.iter_mut().zip(&wins) {
        *p = f64::from(*w);
    }
    explore::mix_floor(out, epsilon);
}

/// Index of the first strict maximum.
fn first_max(scores: impl Iterator<Item = f64>) -> usize {
    let mut best = f64::NEG_INFINITY;
    let mut winner = 0;
    for (i, s) in scores.enumerate() {
        if s > best {
            best = s;
            winner = i;
        }
    }
    winner
}
