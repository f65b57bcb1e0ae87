//! Exploration and sampling: pure functions from scores to a probability
//! distribution over candidates, and a seeded draw from it.
//!
//! This layer knows nothing of models or features (Vowpal Wabbit's split of
//! scoring, exploration and sampling). The distribution it returns is what is
//! logged: the propensity of the chosen action is that distribution's entry,
//! never re-derived.

pub mod quadrature;

use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The PRNG behind every seeded draw. PCG is specified by its algorithm, so a
/// seed reproduces the same stream on every platform and release.
pub type SeededRng = Pcg64Mcg;

/// Which independent stream of an event's randomness to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// The draw of the action (and slate) from the distribution.
    Sample = 0x005a_4d50_4c45,
    /// Posterior draws for Monte Carlo propensities.
    Posterior = 0x504f_5354,
}

/// A reproducible RNG for one event: seeded from `xxh3(policy_id)` and
/// `xxh3(event_id)`, so the same event of the same policy replays the same
/// decision, and different policies decide independently.
pub fn event_rng(policy_id: &str, event_id: &str, stream: Stream) -> SeededRng {
    let policy = xxh3_64_with_seed(policy_id.as_bytes(), stream as u64);
    SeededRng::seed_from_u64(xxh3_64_with_seed(event_id.as_bytes(), policy))
}

/// Relative tolerance under which two scores count as tied.
const TIE_TOLERANCE: f64 = 1e-12;

/// The epsilon-greedy distribution over scores, written into `out`:
/// `p_a = (1 - ε)·1[a ∈ argmax]/|argmax| + ε/K`.
///
/// Ties (scores within a relative 1e-12 of the maximum) share the greedy
/// mass. With `epsilon == 0` the rule is the textbook deterministic argmax:
/// ties go to the lowest index, which gets probability exactly 1.
///
/// Contract: `scores` is non-empty and finite, `epsilon` in `[0, 1]`,
/// `out.len() == scores.len()`.
pub fn epsilon_greedy(scores: &[f64], epsilon: f64, out: &mut [f64]) {
    debug_assert_eq!(scores.len(), out.len());
    let k = scores.len() as f64;
    let best = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let tol = TIE_TOLERANCE * best.abs().max(1.0);
    if epsilon == 0.0 {
        let first = scores.iter().position(|s| *s >= best - tol).unwrap_or(0);
        out.fill(0.0);
        out[first] = 1.0;
        return;
    }
    let ties = scores.iter().filter(|s| **s >= best - tol).count() as f64;
    for (p, s) in out.iter_mut().zip(scores) {
        let greedy = if *s >= best - tol { 1.0 / ties } else { 0.0 };
        *p = (1.0 - epsilon) * greedy + epsilon / k;
    }
}

/// Mixes a distribution `q` with the uniform floor, in place:
/// `p_a = (1 - ε) q_a + ε/K`. Renormalises first so rounding in `q` cannot
/// leak into the logged propensities.
pub fn mix_floor(q: &mut [f64], epsilon: f64) {
    let k = q.len() as f64;
    let total: f64 = q.iter().sum();
    for p in q.iter_mut() {
        *p = (1.0 - epsilon) * (*p / total) + epsilon / k;
    }
}

/// The uniform distribution, written into `out`.
pub fn uniform(out: &mut [f64]) {
    let p = 1.0 / out.len() as f64;
    out.fill(p);
}

/// Inverse-CDF draw: the index `i` with `cdf(i-1) <= u·total < cdf(i)`,
/// skipping zero-probability entries even when rounding puts `u` at the end.
///
/// Contract: `probs` non-empty, non-negative, with a positive sum.
pub fn sample_index(probs: &[f64], u: f64) -> usize {
    let total: f64 = probs.iter().sum();
    let target = u * total;
    let mut acc = 0.0;
    let mut last = 0;
    for (i, p) in probs.iter().enumerate() {
        if *p <= 0.0 {
            continue;
        }
        acc += p;
        last = i;
        if target < acc {
            return i;
        }
    }
    last
}

/// One position of a ranked slate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlateSlot {
    /// Index of the candidate at this position.
    pub index: usize,
    /// Probability of that candidate at this position given the positions
    /// before it: `p_i / (1 - Σ_{earlier} p_j)`.
    pub probability: f64,
}

/// Draws a ranked slate of `k` candidates without replacement from `probs`:
/// position 1 from `probs`, each later position from `probs` restricted to
/// the candidates not yet placed and renormalised. The probability of the
/// whole slate is the product of the slots' probabilities.
///
/// Contract: `1 <= k <= probs.len()`; entries positive (the exploration
/// floor guarantees it when `epsilon > 0`; zero entries are only drawn
/// when nothing else is left).
pub fn sample_slate(probs: &[f64], k: usize, rng: &mut SeededRng) -> Vec<SlateSlot> {
    let mut remaining: Vec<f64> = probs.to_vec();
    let mut taken = vec![false; probs.len()];
    let mut slate = Vec::with_capacity(k);
    for _ in 0..k {
        let mass: f64 = remaining.iter().sum();
        let (index, probability) = if mass > 0.0 {
            let i = sample_index(&remaining, rng.random::<f64>());
            (i, remaining[i] / mass)
        } else {
            // Only zero-probability candidates are left (epsilon = 0): they
            // fill the slate in index order, deterministically.
            let i = taken.iter().position(|t| !t).unwrap_or(0);
            (i, 1.0)
        };
        taken[index] = true;
        remaining[index] = 0.0;
        slate.push(SlateSlot { index, probability });
    }
    slate
}

#[cfg(test)]
mod tests;
