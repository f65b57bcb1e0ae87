//! Slate estimators: a decision that ranks `k` items, each position with
//! its own reward.
//!
//! The three of the Open Bandit Pipeline (OBP 0.5.7,
//! `obp/ope/estimators_slate.py`), whose definitions these follow exactly.
//! With `r_t(k)` the reward of the item at position k of slate t and `n`
//! slates, each estimate is `Σ_t Σ_k r_t(k) w_t(k) / n`, where the weight
//! differs by how much of the slate it assumes rewards depend on:
//!
//! | estimator | weight `w_t(k)` | assumption | reference |
//! |---|---|---|---|
//! | sips | `π_e(a_t(1..K)) / π_b(a_t(1..K))` (whole slate) | none | McInerney et al. 2020 |
//! | iips | `π_e(a_t(k) at k) / π_b(a_t(k) at k)` (item-position marginal) | a position's reward depends on its item only | Li et al. 2018 |
//! | rips | `π_e(a_t(1..k)) / π_b(a_t(1..k))` (the prefix down to k) | a position's reward depends on the items above it | McInerney et al. 2020 |
//!
//! Nudge logs a slate as each position's probability *given the positions
//! before it* (it draws positions one at a time without replacement from
//! the candidates' probabilities, [`nudge::explore::sample_slate`]): the
//! prefix probability is the product of those down to k, the slate's the
//! product of all, and the item-position marginal is the sum over every
//! prefix that leaves the item for position k ([`marginals`]).
//!
//! The standard error is that of the per-slate sums `Σ_k r_t(k) w_t(k)`
//! (the unit OBP's slate bootstrap resamples).

use super::Estimate;
use super::estimators::mean_and_variance;

/// A slate estimator (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum)]
pub enum SlateEstimator {
    /// Standard slate IPS: the whole slate's weight.
    Sips,
    /// Independent IPS: the item-position marginal's weight.
    Iips,
    /// Reward-interaction IPS: the weight of the prefix down to the position.
    Rips,
}

impl SlateEstimator {
    /// Every slate estimator.
    pub const ALL: [SlateEstimator; 3] = [
        SlateEstimator::Sips,
        SlateEstimator::Iips,
        SlateEstimator::Rips,
    ];

    /// `sips`, `iips`, `rips` (OBP's names).
    pub fn name(self) -> &'static str {
        match self {
            SlateEstimator::Sips => "sips",
            SlateEstimator::Iips => "iips",
            SlateEstimator::Rips => "rips",
        }
    }
}

/// One position of one logged slate: its reward and the three
/// probabilities of its item under the logging policy (`b`) and the
/// target (`e`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlatePosition {
    /// The reward of the item at this position.
    pub reward: f64,
    /// Probability of the whole logged slate.
    pub b_slate: f64,
    /// Probability of the item at this position (marginal over the items
    /// above it).
    pub b_item: f64,
    /// Probability of the logged prefix down to this position.
    pub b_prefix: f64,
    /// The target's `b_slate`.
    pub e_slate: f64,
    /// The target's `b_item`.
    pub e_item: f64,
    /// The target's `b_prefix`.
    pub e_prefix: f64,
}

impl SlatePosition {
    fn weight(&self, e: SlateEstimator) -> f64 {
        match e {
            SlateEstimator::Sips => self.e_slate / self.b_slate,
            SlateEstimator::Iips => self.e_item / self.b_item,
            SlateEstimator::Rips => self.e_prefix / self.b_prefix,
        }
    }
}

/// The positions of one slate, top first, from the conditional
/// probabilities of its items under both policies and their marginals.
pub fn positions(
    rewards: &[f64],
    b_conditional: &[f64],
    e_conditional: &[f64],
    b_item: &[f64],
    e_item: &[f64],
) -> Vec<SlatePosition> {
    let b_slate: f64 = b_conditional.iter().product();
    let e_slate: f64 = e_conditional.iter().product();
    let (mut b_prefix, mut e_prefix) = (1.0, 1.0);
    (0..rewards.len())
        .map(|k| {
            b_prefix *= b_conditional[k];
            e_prefix *= e_conditional[k];
            SlatePosition {
                reward: rewards[k],
                b_slate,
                b_item: b_item[k],
                b_prefix,
                e_slate,
                e_item: e_item[k],
                e_prefix,
            }
        })
        .collect()
}

/// Each position's probability given the positions above it, when
/// `items` were drawn one at a time without replacement from `probs`.
pub fn conditionals(probs: &[f64], items: &[usize]) -> Vec<f64> {
    let mut used = 0.0;
    items
        .iter()
        .map(|&a| {
            let q = probs[a] / (1.0 - used);
            used += probs[a];
            q
        })
        .collect()
}

/// The positions of a slate of `items` (candidate indices, top first) with
/// their `rewards`, both policies drawing positions without replacement
/// from their first-position distributions `b` (logging) and `e`
/// (target). `None` when there are too many candidates for the exact
/// marginals ([`MAX_MARGINAL_CANDIDATES`]).
pub fn from_draws(
    rewards: &[f64],
    items: &[usize],
    b: &[f64],
    e: &[f64],
) -> Option<Vec<SlatePosition>> {
    let (mb, me) = (marginals(b, items.len())?, marginals(e, items.len())?);
    let b_item: Vec<f64> = items.iter().enumerate().map(|(k, &a)| mb[k][a]).collect();
    let e_item: Vec<f64> = items.iter().enumerate().map(|(k, &a)| me[k][a]).collect();
    Some(positions(
        rewards,
        &conditionals(b, items),
        &conditionals(e, items),
        &b_item,
        &e_item,
    ))
}

/// Candidates up to which [`marginals`] enumerates subsets (2^n states).
pub const MAX_MARGINAL_CANDIDATES: usize = 20;

/// `m[k][a]`: the probability that candidate `a` lands at position `k`
/// (0-based, `k < depth`) when positions are drawn one at a time without
/// replacement from `probs` (renormalised over what is left), as
/// [`nudge::explore::sample_slate`] draws them. Exact, by dynamic
/// programming over the set of candidates already placed: `O(2^n · n)`.
/// `None` beyond [`MAX_MARGINAL_CANDIDATES`] candidates.
pub fn marginals(probs: &[f64], depth: usize) -> Option<Vec<Vec<f64>>> {
    let n = probs.len();
    if n > MAX_MARGINAL_CANDIDATES {
        return None;
    }
    let depth = depth.min(n);
    let mut out = vec![vec![0.0; n]; depth];
    // P(the first |S| positions hold exactly the set S), level by level.
    let mut level: Vec<(u32, f64)> = vec![(0, 1.0)];
    let mut next = std::collections::HashMap::new();
    for row in out.iter_mut() {
        next.clear();
        for &(set, p) in &level {
            let used: f64 = (0..n).filter(|i| set >> i & 1 == 1).map(|i| probs[i]).sum();
            let mass = 1.0 - used;
            let left: Vec<usize> = (0..n).filter(|i| set >> i & 1 == 0).collect();
            for &a in &left {
                // As sample_slate: renormalised over what is left; when
                // nothing with mass is left, the rest fill in index order.
                let q = if mass > 1e-300 {
                    probs[a] / mass
                } else if a == left[0] {
                    1.0
                } else {
                    0.0
                };
                if q > 0.0 {
                    row[a] += p * q;
                    *next.entry(set | 1 << a).or_insert(0.0) += p * q;
                }
            }
        }
        level = next.drain().collect();
    }
    Some(out)
}

/// The estimates of `which` over `slates`, each a list of positions.
pub fn estimate(
    slates: &[Vec<SlatePosition>],
    which: &[SlateEstimator],
    alpha: f64,
) -> Vec<Estimate> {
    which
        .iter()
        .map(|&e| {
            let (mut sum, mut sq) = (0.0, 0.0);
            for s in slates {
                let c: f64 = s.iter().map(|p| p.reward * p.weight(e)).sum();
                sum += c;
                sq += c * c;
            }
            let n = slates.len() as u64;
            let (value, var) = mean_and_variance(n, sum, sq);
            Estimate::of_mean(e.name(), n, value, var, alpha)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ordered draw of `depth` items, with its probability.
    fn brute(probs: &[f64], depth: usize) -> Vec<Vec<f64>> {
        fn go(
            probs: &[f64],
            prefix: &mut Vec<usize>,
            p: f64,
            depth: usize,
            out: &mut Vec<Vec<f64>>,
        ) {
            if prefix.len() == depth {
                return;
            }
            let used: f64 = prefix.iter().map(|&i| probs[i]).sum();
            for a in 0..probs.len() {
                if prefix.contains(&a) {
                    continue;
                }
                let q = p * probs[a] / (1.0 - used);
                out[prefix.len()][a] += q;
                prefix.push(a);
                go(probs, prefix, q, depth, out);
                prefix.pop();
            }
        }
        let mut out = vec![vec![0.0; probs.len()]; depth];
        go(probs, &mut Vec::new(), 1.0, depth, &mut out);
        out
    }

    #[test]
    fn marginals_match_every_ordered_draw_summed() {
        let probs = [0.4, 0.25, 0.2, 0.1, 0.05];
        let m = marginals(&probs, 3).unwrap();
        let b = brute(&probs, 3);
        for k in 0..3 {
            for a in 0..probs.len() {
                assert!((m[k][a] - b[k][a]).abs() < 1e-15, "{k} {a}");
            }
            // Each position holds exactly one item.
            assert!((m[k].iter().sum::<f64>() - 1.0).abs() < 1e-12);
        }
        assert_eq!(m[0], probs.to_vec());
        assert!(marginals(&[0.05; 21], 2).is_none());
    }

    #[test]
    fn on_policy_weights_are_one_and_the_estimate_is_the_mean_slate_reward() {
        let slates: Vec<Vec<SlatePosition>> = (0..4)
            .map(|t| {
                let r = [f64::from(t % 2), 1.0];
                positions(&r, &[0.5, 0.4], &[0.5, 0.4], &[0.5, 0.3], &[0.5, 0.3])
            })
            .collect();
        for e in estimate(&slates, &SlateEstimator::ALL, 0.05) {
            assert!((e.value - 1.5).abs() < 1e-15, "{}", e.name);
        }
    }
}
