//! True values: what a fixed (non-learning) policy earns on average in a
//! scenario, computed from the hidden reward models, not from a noisy run.
//!
//! `V(π) = E_x[ Σ_a π(a | x) μ(x, a) ]` with `μ(x, a) = Σ_s w_s E[s | x, a]`
//! exact (see [`Scenario::expected`]). When every context feature has a
//! finite support (categorical, integer, choice, bernoulli, embedding with
//! `spread = 0`) and there is no drift, the outer expectation is an exact
//! sum over the support. Otherwise it is a Monte Carlo average over
//! independently drawn contexts (uniform rounds, under drift), with its
//! standard error reported.

use super::engine::{Agent, Environment};
use super::rounds::round_rng;
use super::scenario::Scenario;
use nudge::model::LinearModel;
use rand::RngExt;

/// Largest context support summed exactly.
pub const MAX_SUPPORT: usize = 200_000;

/// A policy's true value in a scenario.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrueValue {
    /// `V(π)`.
    pub value: f64,
    /// Standard error of `value`: 0 when exact, else the Monte Carlo one.
    pub stderr: f64,
    /// Whether `value` is an exact sum over the context support.
    pub exact: bool,
    /// Contexts summed or drawn.
    pub points: usize,
}

/// The true value of `agent` (its policy with the fixed `model`) in
/// `scenario`: exact when the context support is finite (and at most
/// [`MAX_SUPPORT`] points) and there is no drift, else a Monte Carlo
/// average over `samples` contexts drawn from a stream seeded by `seed`
/// (independent of any run's).
///
/// Policies whose propensities are themselves Monte Carlo estimates
/// (shared-mode `lin_ts`, `beta_ts`) get their distribution at each point
/// from that point's own seeded draws.
pub fn policy_value(
    scenario: &Scenario,
    agent: &Agent,
    model: &LinearModel,
    samples: usize,
    seed: u64,
) -> anyhow::Result<TrueValue> {
    if scenario.users.is_some() {
        anyhow::bail!(
            "{}: with [users] a policy's value depends on the path (fatigue, unsubscribes, \
             guardrails): estimate it by simulating the policy over many seeds",
            scenario.name
        );
    }
    let k = scenario.actions.len();
    let s = scenario.signals.len();
    let mut expected = vec![0.0; k * s];
    let mut value_at = |ctx: &[super::scenario::Value], t: usize, i: usize| {
        for a in 0..k {
            scenario.expected(ctx, a, t, &mut expected[a * s..(a + 1) * s]);
        }
        let features = scenario.features(ctx);
        let event = format!("truth-{}-{i}", scenario.name);
        let decision = agent.decide(model, &event, &features)?;
        let pi = agent.distribution(&decision, k);
        Ok::<f64, anyhow::Error>((0..k).map(|a| pi[a] * agent.reward_of(&expected, a)).sum())
    };
    if scenario.drift.is_empty()
        && let Some(points) = scenario.context_support(MAX_SUPPORT)
    {
        let mut value = 0.0;
        for (i, (ctx, p)) in points.iter().enumerate() {
            value += p * value_at(ctx, 0, i)?;
        }
        return Ok(TrueValue {
            value,
            stderr: 0.0,
            exact: true,
            points: points.len(),
        });
    }
    let samples = samples.max(2);
    let mut rng = round_rng(seed, u64::MAX, 0x7457);
    let (mut sum, mut sum_sq) = (0.0, 0.0);
    for i in 0..samples {
        let t = if scenario.drift.is_empty() {
            0
        } else {
            rng.random_range(0..scenario.horizon())
        };
        let ctx = scenario.sample_context(&mut rng);
        let v = value_at(&ctx, t, i)?;
        sum += v;
        sum_sq += v * v;
    }
    let n = samples as f64;
    let mean = sum / n;
    let var = ((sum_sq - n * mean * mean) / (n - 1.0)).max(0.0);
    Ok(TrueValue {
        value: mean,
        stderr: (var / n).sqrt(),
        exact: false,
        points: samples,
    })
}
