//! Why guardrails are applied before scoring, shown on the fatigue
//! scenario (`scenarios/push_fatigue.toml`: users in three time zones whose
//! opens fall with recent pushes and whose unsubscribes rise with them).
//!
//! (a) A capped policy beats the same policy uncapped on its own reward.
//! Both learn online; the value compared is each run's mean *expected*
//! reward per round (the hidden models' mean given each user's state, so
//! no outcome noise), over `SEEDS_A` seeds with common random numbers; the
//! margin is the paired difference's standard error over seeds.
//!
//! (b) Off-policy evaluation under guardrails. A uniform logger with
//! guardrails (per-user cap, a stricter cap on `send_now`, quiet hours)
//! writes two kinds of logs on the same users:
//! - Nudge's: eligibility first, the logger draws among the eligible arms,
//!   the log lists every arm with `excluded_by` for the ineligible ones;
//! - filtered after the fact: the logger draws among every arm, a draw the
//!   rules forbid becomes the fallback (`skip`), and the log keeps the
//!   probabilities computed before filtering (no eligibility recorded).
//!
//! A fixed target distribution is evaluated on each with IPW and its 95%
//! normal interval, through the simulator's own code (the JSONL line `run`
//! writes, [`eligible_distribution`], the estimator accumulator).
//!
//! The estimand. In this world a decision changes the user's future
//! (fatigue, unsubscribes, caps), so a target's on-policy value depends on
//! its own path; per-decision IPW estimates the target's value *on the
//! logged states*: `V = E[(1/n) Σ_t Σ_a π_elig(a | x_t) μ(x_t, a; state_t)]`,
//! the target acting under the same eligibility, one decision at a time,
//! on the users as the logger left them. For each log the inner sum is
//! exact (from the hidden models and each round's true eligibility); the
//! outer expectation is estimated by the mean over the `SEEDS_B`
//! simulated logs (its standard error is reported and is a small fraction
//! of one interval's width). The target's on-policy value (acting on its
//! own path) is a different quantity, which IPW does not estimate here.
//!
//! Coverage of Nudge's log must be inside the central 99.9% band of
//! Binomial(SEEDS_B, 0.95); the filtered log must fall below the band with
//! a bias of many standard errors (negative control). Seeds are fixed, so
//! the outcome is deterministic.

use nudge::policy::{Policy, parse_policy};
use nudge_sim::env::engine::{
    Agent, Environment, GuardMode, RunConfig, RunOptions, run_policy, run_policy_with,
};
use nudge_sim::env::logged_event;
use nudge_sim::env::scenario::load_scenario;
use nudge_sim::ope::candidate::{Pairs, eligible_distribution};
use nudge_sim::ope::source::{LogRecord, Origin};
use nudge_sim::ope::{Accumulator, EstimateOptions, Estimator, Round};
use std::path::Path;
use std::time::Instant;

/// Seeds of part (a).
const SEEDS_A: u64 = 8;
/// Rounds per run of part (a): 3 simulated days.
const ROUNDS_A: usize = 7200;
/// Logs of part (b).
const SEEDS_B: u64 = 200;
/// Events per log.
const EVENTS_B: usize = 1500;
/// The target: P(send_now), P(send_digest), P(skip) over every arm,
/// renormalised over the eligible ones.
const TARGET: [(&str, f64); 3] = [("send_now", 0.7), ("send_digest", 0.2), ("skip", 0.1)];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

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

/// The central 99.9% range of Binomial(n, p).
fn band(n: u64, p: f64) -> (u64, u64) {
    let lo = (0..=n)
        .find(|&k| binomial_cdf(k, n, p) > 0.0005)
        .unwrap_or(0);
    let hi = (0..=n)
        .find(|&k| 1.0 - binomial_cdf(k, n, p) <= 0.0005)
        .unwrap_or(n);
    (lo, hi)
}

fn mean_sd(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let m = x.iter().sum::<f64>() / n;
    let v = x.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (n - 1.0);
    (m, v.sqrt())
}

#[test]
fn a_capped_policy_beats_the_uncapped_one_on_its_own_reward() {
    let started = Instant::now();
    let scenario = load_scenario(&root().join("scenarios/push_fatigue.toml")).unwrap();
    let load =
        |f: &str| Policy::new(nudge::policy::load_file(&root().join("scenarios").join(f)).unwrap());
    let capped = Agent::new(&load("push_fatigue_capped.toml"), &scenario, None).unwrap();
    let uncapped = Agent::new(&load("push_fatigue_uncapped.toml"), &scenario, None).unwrap();
    let (mut diffs, mut caps, mut uncaps, mut lost) = (vec![], vec![], vec![], (0, 0));
    for seed in 0..SEEDS_A {
        let cfg = RunConfig {
            horizon: ROUNDS_A,
            seed: 500 + seed,
            learn: true,
            curve_points: 1,
        };
        let value = |agent: &Agent| {
            let mut model = agent.policy.new_model();
            let run = run_policy(&scenario, agent, &mut model, &cfg, |_| Ok(()), |_| {}).unwrap();
            (
                run.expected_reward / run.rounds as f64,
                run.users.unwrap().unsubscribed,
            )
        };
        let (c, lc) = value(&capped);
        let (u, lu) = value(&uncapped);
        lost.0 += lc;
        lost.1 += lu;
        caps.push(c);
        uncaps.push(u);
        diffs.push(c - u);
    }
    let (d, sd) = mean_sd(&diffs);
    let se = sd / (SEEDS_A as f64).sqrt();
    eprintln!(
        "(a) mean expected reward per round over {SEEDS_A} seeds × {ROUNDS_A} rounds: capped {:.4}, \
         uncapped {:.4}; paired difference {d:.4} ± {se:.4} (se); users unsubscribed (summed over \
         the runs of {} users): capped {}, uncapped {}; {:.1} s",
        mean_sd(&caps).0,
        mean_sd(&uncaps).0,
        200,
        lost.0,
        lost.1,
        started.elapsed().as_secs_f64()
    );
    assert!(d > 0.0 && d > 5.0 * se, "capped − uncapped = {d} ± {se}");
    assert!(
        diffs.iter().all(|x| *x > 0.0),
        "the cap wins on every seed: {diffs:?}"
    );
}

/// The guardrailed uniform logger.
fn logger(scenario: &dyn Environment) -> Agent {
    let text = r#"
id = "fatigue_logger"
algorithm = "uniform"
arms = ["send_now", "send_digest", "skip"]

[[features.context]]
name = "hour_of_day"
type = "number"
mean = 12.0
std = 6.9

[guardrails]
send_arms = ["send_now", "send_digest"]
fallback = "skip"
quiet_hours = { start = "22:00", end = "08:00" }

[[guardrails.caps]]
max = 3
per = "24h"

[[guardrails.caps]]
max = 1
per = "24h"
arm = "send_now"

[reward]
signals = { opened = 1.0, unsubscribed = -5.0 }
"#;
    let policy = Policy::new(parse_policy(text, Path::new("logger")).unwrap());
    Agent::new(&policy, scenario, None).unwrap()
}

/// One log's IPW estimate, its 95% interval and the exact per-log truth.
struct LogEstimate {
    value: f64,
    ci: (f64, f64),
    truth: f64,
}

fn one_log(scenario: &dyn Environment, agent: &Agent, seed: u64, mode: GuardMode) -> LogEstimate {
    let signals = scenario.signals();
    let spec = agent.policy.spec();
    let mut target = Pairs::default();
    for (a, p) in TARGET {
        target.push(a, p);
    }
    let opts = EstimateOptions {
        alpha: 0.05,
        bootstrap: 0,
        seed: 0,
        switch_tau: f64::INFINITY,
        dros_lambda: f64::INFINITY,
        tiny_propensity: 1e-3,
        ..EstimateOptions::default()
    };
    let mut acc = Accumulator::new(opts, false).unwrap();
    let mut truth = 0.0;
    let mut buf = Pairs::default();
    let mut model = agent.policy.new_model();
    let cfg = RunConfig {
        horizon: EVENTS_B,
        seed,
        learn: false,
        curve_points: 1,
    };
    run_policy_with(
        scenario,
        agent,
        &mut model,
        &cfg,
        &RunOptions { mode },
        |step| {
            // The log line, as `run --log` writes it, read back as
            // `evaluate` reads it.
            let line = logged_event(scenario, agent, &signals, step);
            let rec = LogRecord::from_logged(line, Origin::Row(step.event_id.to_string()));
            let dist = eligible_distribution(&rec, &target, &mut buf, &|| rec.event_id.clone())?;
            acc.push(Round {
                reward: rec.reward.unwrap(),
                pscore: rec.pscore,
                target_logged: dist.get(&rec.action).unwrap_or(0.0),
                dm: f64::NAN,
                q_logged: f64::NAN,
            });
            // The truth of this round: the target under the round's real
            // eligibility, on this user's state, from the hidden models.
            let e = step.eligibility.expect("a guardrailed logger");
            let inside: f64 = TARGET
                .iter()
                .enumerate()
                .filter(|(i, _)| e.is_eligible(*i))
                .map(|(_, (_, p))| p)
                .sum();
            truth += TARGET
                .iter()
                .enumerate()
                .filter(|(i, _)| e.is_eligible(*i))
                .map(|(i, (id, p))| {
                    assert_eq!(spec.arms[i], *id);
                    p / inside * agent.reward_of(&step.data.expected, agent.action_of_arm(i))
                })
                .sum::<f64>();
            Ok(())
        },
        |_| {},
    )
    .unwrap();
    let ev = acc.finish(&[Estimator::Ipw]).unwrap();
    let ipw = &ev.estimates[0];
    LogEstimate {
        value: ipw.value,
        ci: (ipw.ci_low, ipw.ci_high),
        truth: truth / EVENTS_B as f64,
    }
}

#[test]
fn an_eligibility_aware_log_gives_honest_intervals_and_a_filtered_one_does_not() {
    let started = Instant::now();
    let scenario = load_scenario(&root().join("scenarios/push_fatigue.toml")).unwrap();
    let agent = logger(&scenario);
    let (lo, hi) = band(SEEDS_B, 0.95);
    let mut report = Vec::new();
    for (mode, name) in [
        (GuardMode::Eligible, "eligibility-aware"),
        (GuardMode::FilterAfter, "filtered after the fact"),
    ] {
        let logs: Vec<LogEstimate> = (0..SEEDS_B)
            .map(|i| one_log(&scenario, &agent, 90_000 + i, mode))
            .collect();
        let truths: Vec<f64> = logs.iter().map(|l| l.truth).collect();
        let (truth, truth_sd) = mean_sd(&truths);
        let truth_se = truth_sd / (SEEDS_B as f64).sqrt();
        let values: Vec<f64> = logs.iter().map(|l| l.value).collect();
        let (mean, sd) = mean_sd(&values);
        let bias = mean - truth;
        let bias_se = (sd * sd / SEEDS_B as f64 + truth_se * truth_se).sqrt();
        let covered = logs
            .iter()
            .filter(|l| l.ci.0 <= truth && truth <= l.ci.1)
            .count() as u64;
        let width = logs.iter().map(|l| l.ci.1 - l.ci.0).sum::<f64>() / SEEDS_B as f64;
        eprintln!(
            "(b) {name}: V = {truth:.5} (± {truth_se:.5} se over {SEEDS_B} logs), mean IPW \
             {mean:.5}, bias {bias:+.5} ± {bias_se:.5} ({:+.1} se), coverage {covered}/{SEEDS_B} \
             (band {lo}..={hi}), mean interval width {width:.4}",
            bias / bias_se
        );
        report.push((mode, truth_se, width, bias, bias_se, covered));
    }
    eprintln!("(b) {:.1} s", started.elapsed().as_secs_f64());
    let (_, truth_se, width, bias, bias_se, covered) = report[0];
    assert!(
        truth_se < 0.05 * width,
        "the estimated truth is sharp next to one interval"
    );
    assert!(
        (lo..=hi).contains(&covered),
        "eligibility-aware coverage {covered}/{SEEDS_B} outside {lo}..={hi}"
    );
    assert!(
        bias.abs() < 3.0 * bias_se,
        "eligibility-aware bias {bias} ± {bias_se}"
    );
    let (_, _, _, bias, bias_se, covered) = report[1];
    assert!(
        covered < lo,
        "filtered coverage {covered}/{SEEDS_B} should fall below {lo}"
    );
    assert!(
        bias.abs() > 8.0 * bias_se,
        "filtered bias {bias} ± {bias_se}"
    );
}
