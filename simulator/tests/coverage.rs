//! The loop closes: decisions logged under policy A in a scenario,
//! policy B evaluated offline on them, and B's estimate compared with B's
//! *true* value in the same scenario (an exact sum over the scenario's
//! finite context support, from the hidden reward models — not a noisy
//! run).
//!
//! Over many independent logs, the 95% intervals of IPW and DR must cover
//! the true value about 95% of the time. "About" is a binomial band: with
//! `SEEDS` logs the number of covering intervals of a correct 95% interval
//! is Binomial(SEEDS, 0.95), and the test accepts exactly the counts
//! inside that distribution's central 99.9% (computed below), so a correct
//! estimator fails it once in a thousand runs of the band, and the fixed
//! seeds make the outcome deterministic. A negative control shows the test
//! can fail: IPW with propensities that are not the logging policy's
//! (taken as uniform) falls far below the band.
//!
//! The conservative intervals must cover at least at the nominal rate (at
//! or above the band's lower end): the empirical-Bernstein interval at the
//! end of each log, and the anytime-valid confidence sequence at every
//! event of it at once. Their control: the normal interval looked at every
//! 50 events, as a team watching a dashboard would, keeps the truth inside
//! at every look in far fewer logs than the band allows.

use nudge::policy::{Policy, load_file, parse_policy};
use nudge_sim::env::engine::{Agent, Environment, RunConfig, run_policy};
use nudge_sim::env::scenario::load_scenario;
use nudge_sim::env::truth::policy_value;
use nudge_sim::ope::intervals::ConfidenceSequence;
use nudge_sim::ope::{EstimateOptions, Estimator, OpeData, estimate};
use std::path::Path;

/// Independent logs (one per seed).
const SEEDS: u64 = 300;
/// Logged events per log.
const EVENTS: usize = 1500;
/// What the scenario's rewards can be (`opened = 1.0`, `unsubscribed = -5.0`).
const REWARD_RANGE: (f64, f64) = (-5.0, 1.0);
/// Events between two looks at the normal interval (the peeking control).
const LOOK: usize = 50;

/// `P(X <= k)` for `X ~ Binomial(n, p)`, summed in log space.
fn binomial_cdf(k: u64, n: u64, p: f64) -> f64 {
    let ln_choose = |i: u64| -> f64 {
        (1..=i)
            .map(|j| ((n - i + j) as f64).ln() - (j as f64).ln())
            .sum()
    };
    (0..=k)
        .map(|i| (ln_choose(i) + i as f64 * p.ln() + (n - i) as f64 * (1.0 - p).ln()).exp())
        .sum()
}

/// The central 99.9% range of Binomial(n, p): the smallest `lo` with
/// `P(X < lo) <= 0.0005` and the largest `hi` with `P(X > hi) <= 0.0005`.
fn band(n: u64, p: f64) -> (u64, u64) {
    let lo = (0..=n)
        .find(|&k| binomial_cdf(k, n, p) > 0.0005)
        .unwrap_or(0);
    let hi = (0..=n)
        .find(|&k| 1.0 - binomial_cdf(k, n, p) <= 0.0005)
        .unwrap_or(n);
    (lo, hi)
}

fn train(
    agent: &Agent,
    env: &dyn Environment,
    rounds: usize,
    seed: u64,
) -> nudge::model::LinearModel {
    let mut model = agent.policy.new_model();
    let cfg = RunConfig {
        horizon: rounds,
        seed,
        learn: true,
        curve_points: 1,
    };
    run_policy(env, agent, &mut model, &cfg, |_| Ok(()), |_| {}).unwrap();
    model
}

#[test]
fn ipw_and_dr_intervals_cover_the_true_value_at_the_nominal_rate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let scenario = load_scenario(&root.join("scenarios/push_send_discrete.toml")).unwrap();
    let k = scenario.actions.len();

    // B: the service's push_send LinUCB, trained for 2000 rounds, then
    // frozen (a fixed target policy, nearly deterministic: ε = 0.05).
    let b_policy = Policy::new(load_file(&root.join("../policies/push_send.toml")).unwrap());
    let b = Agent::new(&b_policy, &scenario, None).unwrap();
    let b_model = train(&b, &scenario, 2000, 1_000_001);

    // A: an epsilon-greedy logger (ε = 0.3) trained briefly, then frozen:
    // context-dependent propensities between 0.1 and 0.8.
    let a_text = std::fs::read_to_string(root.join("../policies/push_send.toml"))
        .unwrap()
        .replace("id = \"push_send\"", "id = \"push_logger\"")
        .replace("algorithm = \"linucb\"", "algorithm = \"epsilon_greedy\"")
        .replace("alpha = 0.8\n", "")
        .replace("epsilon = 0.05", "epsilon = 0.3");
    let a_policy = Policy::new(parse_policy(&a_text, Path::new("logger")).unwrap());
    let a = Agent::new(&a_policy, &scenario, None).unwrap();
    let a_model = train(&a, &scenario, 300, 1_000_002);

    let truth = policy_value(&scenario, &b, &b_model, 0, 0).unwrap();
    assert!(truth.exact, "the discrete scenario's value is an exact sum");
    let a_value = policy_value(&scenario, &a, &a_model, 0, 0).unwrap();
    eprintln!(
        "true value of B {:.5} over {} contexts (logger A: {:.5})",
        truth.value, truth.points, a_value.value
    );

    let frozen = RunConfig {
        horizon: EVENTS,
        seed: 0,
        learn: false,
        curve_points: 1,
    };
    // DR's reward model: per-action mean rewards from an independent pilot
    // log (deliberately crude: DR must be unbiased whatever q̂ is).
    let mut sums: Vec<(f64, f64)> = vec![(0.0, 0.0); k];
    let mut pilot_model = a_model.clone();
    run_policy(
        &scenario,
        &a,
        &mut pilot_model,
        &RunConfig {
            seed: 2_000_000,
            ..frozen.clone()
        },
        |s| {
            sums[s.action].0 += s.reward;
            sums[s.action].1 += 1.0;
            Ok(())
        },
        |_| {},
    )
    .unwrap();
    let q: Vec<f64> = sums.iter().map(|(r, n)| r / n.max(1.0)).collect();

    let (mut ipw, mut dr, mut wrong) = (0u64, 0u64, 0u64);
    // Empirical Bernstein at the end; the confidence sequence at every
    // event (never excluding the truth); the normal interval looked at
    // every LOOK events (the peeking the sequence exists to allow).
    let (mut eb, mut cs_always, mut cs_end, mut peeking) = (0u64, 0u64, 0u64, 0u64);
    let mut cs_width = 0.0;
    let mut ipw_errors = Vec::new();
    for seed in 0..SEEDS {
        let mut data = OpeData {
            n_actions: k,
            q_hat: Some(Vec::with_capacity(EVENTS * k)),
            ..OpeData::default()
        };
        let mut model = a_model.clone();
        run_policy(
            &scenario,
            &a,
            &mut model,
            &RunConfig {
                seed: 10_000 + seed,
                ..frozen.clone()
            },
            |s| {
                data.action.push(s.action);
                data.reward.push(s.reward);
                data.pscore.push(s.decision.propensity());
                let target = b.decide(&b_model, s.event_id, &s.data.context)?;
                data.target.extend(b.distribution(&target, k));
                data.q_hat.as_mut().expect("set").extend(&q);
                Ok(())
            },
            |_| {},
        )
        .unwrap();
        let opts = EstimateOptions {
            confidence_sequence: true,
            // opened = 1, unsubscribed = −5: every reward is in [−5, 1].
            reward_range: Some(REWARD_RANGE),
            ..EstimateOptions::default()
        };
        let est = estimate(&data, &[Estimator::Ipw, Estimator::Dr], &opts).unwrap();
        let inside = |(lo, hi): (f64, f64)| lo <= truth.value && truth.value <= hi;
        let covers = |e: &nudge_sim::ope::Estimate| inside((e.ci_low, e.ci_high));
        ipw += u64::from(covers(&est[0]));
        dr += u64::from(covers(&est[1]));
        ipw_errors.push(est[0].value - truth.value);
        eb += u64::from(inside(est[0].eb_ci.expect("ipw has an EB interval")));
        let cs_last = est[0].cs.expect("requested");
        cs_end += u64::from(inside(cs_last));
        cs_width += (cs_last.1 - cs_last.0) / SEEDS as f64;
        let rounds = data.rounds().unwrap();
        let sequence = ConfidenceSequence::new(&rounds, REWARD_RANGE, opts.alpha);
        cs_always += u64::from(sequence.first_exclusion(truth.value).is_none());
        let (mut sum, mut sq, mut all_looks) = (0.0, 0.0, true);
        for (i, r) in rounds.iter().enumerate() {
            let c = r.weight() * r.reward;
            sum += c;
            sq += c * c;
            let t = (i + 1) as f64;
            if (i + 1) % LOOK == 0 {
                let mean = sum / t;
                let se = ((sq - t * mean * mean) / (t - 1.0) / t).sqrt();
                all_looks &= inside((mean - 1.96 * se, mean + 1.96 * se));
            }
        }
        peeking += u64::from(all_looks);

        // Negative control: the same log with made-up uniform propensities.
        data.pscore.iter_mut().for_each(|p| *p = 1.0 / k as f64);
        let bad = estimate(&data, &[Estimator::Ipw], &opts).unwrap();
        wrong += u64::from(covers(&bad[0]));
    }
    let (lo, hi) = band(SEEDS, 0.95);
    eprintln!(
        "empirical Bernstein covered {eb}; the confidence sequence covered at every event \
         {cs_always} (at the end {cs_end}, mean width {cs_width:.4}); the normal interval at \
         all of {} looks {peeking}",
        EVENTS / LOOK
    );
    // Both are conservative by construction: at least the nominal rate.
    assert!(
        eb >= lo,
        "empirical Bernstein covered {eb}/{SEEDS}, below {lo}"
    );
    assert!(
        cs_always >= lo,
        "the confidence sequence covered {cs_always}/{SEEDS} uniformly over time, below {lo}"
    );
    // The control: peeking at a fixed-n interval loses its coverage.
    assert!(
        peeking < lo,
        "the normal interval kept {peeking}/{SEEDS} logs covered over every look: the uniform \
         test has no power"
    );
    let mean_error = ipw_errors.iter().sum::<f64>() / SEEDS as f64;
    eprintln!(
        "coverage over {SEEDS} logs of {EVENTS} events: ipw {ipw}, dr {dr}, \
         ipw with wrong propensities {wrong}; accepted band [{lo}, {hi}]; \
         mean ipw error {mean_error:+.5}"
    );
    assert!(
        (lo..=hi).contains(&ipw),
        "ipw covered {ipw}/{SEEDS}, band [{lo}, {hi}]"
    );
    assert!(
        (lo..=hi).contains(&dr),
        "dr covered {dr}/{SEEDS}, band [{lo}, {hi}]"
    );
    assert!(
        wrong < lo,
        "the negative control covered {wrong}/{SEEDS}: the test has no power"
    );
}

#[test]
fn the_coverage_band_is_the_binomial_central_999_range() {
    // Binomial(300, 0.95): mean 285, sd 3.77; 99.9% is about ±3.3 sd.
    let (lo, hi) = band(300, 0.95);
    assert!(
        (271..=274).contains(&lo) && (295..=297).contains(&hi),
        "[{lo}, {hi}]"
    );
    assert!((binomial_cdf(300, 300, 0.95) - 1.0).abs() < 1e-9);
}
