//! Logged propensities are the true probabilities of the Thompson sampling
//! procedure: checked against brute-force simulation of that procedure
//! (full posterior draws `θ̃ ~ N(θ, v²A⁻¹)` and an argmax).

use nudge::features::FeatureValue;
use nudge::model::LinearModel;
use nudge::policy::{Candidate, DecideRequest, Decision, Policy, parse_policy};
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rand_pcg::Pcg64Mcg;
use std::path::Path;

type Features = Vec<(String, FeatureValue)>;

fn policy(text: &str) -> Policy {
    Policy::new(parse_policy(text, Path::new("propensities")).expect("valid policy"))
}

fn vector(name: &str, v: Vec<f64>) -> Features {
    vec![(name.to_string(), FeatureValue::Vector(v))]
}

/// Win frequencies of real Thompson sampling over `draws` posterior draws:
/// each candidate `i` uses model arm `arms[i]` and vector `xs[i]`.
fn brute_force(
    model: &LinearModel,
    v: f64,
    arms: &[usize],
    xs: &[&[f64]],
    draws: usize,
) -> Vec<f64> {
    let d = model.dim();
    let mut rng = Pcg64Mcg::seed_from_u64(424242);
    let mut wins = vec![0usize; arms.len()];
    let shared = arms.iter().all(|a| *a == 0);
    let mut thetas: Vec<Vec<f64>> = vec![vec![0.0; d]; model.arms()];
    for _ in 0..draws {
        // One posterior draw per model arm (a shared model draws once).
        for (arm, theta) in thetas.iter_mut().enumerate() {
            if shared && arm > 0 {
                break;
            }
            let l = model.posterior_factor(arm);
            let z: Vec<f64> = (0..d).map(|_| StandardNormal.sample(&mut rng)).collect();
            for i in 0..d {
                let lz: f64 = (0..=i).map(|j| l[[i, j]] * z[j]).sum();
                theta[i] = model.theta(arm)[i] + v * lz;
            }
        }
        let scores: Vec<f64> = arms
            .iter()
            .zip(xs)
            .map(|(a, x)| thetas[*a].iter().zip(x.iter()).map(|(t, x)| t * x).sum())
            .collect();
        let best = (0..scores.len())
            .max_by(|a, b| scores[*a].total_cmp(&scores[*b]))
            .unwrap();
        wins[best] += 1;
    }
    wins.iter().map(|w| *w as f64 / draws as f64).collect()
}

fn train(
    policy: &Policy,
    model: &mut LinearModel,
    contexts: impl Fn(&mut Pcg64Mcg) -> (Features, Vec<Candidate<Features>>),
) {
    let mut rng = Pcg64Mcg::seed_from_u64(7);
    for t in 0..300 {
        let (ctx, actions) = contexts(&mut rng);
        let id = format!("train-{t}");
        let req = DecideRequest {
            event_id: &id,
            context: &ctx,
            actions: &actions,
            excluded: &[],
            k: 1,
        };
        let d = policy.decide(model, &req).unwrap();
        let reward = d.vector(d.chosen())[1] * 0.8 + rng.random::<f64>() * 0.3;
        policy.learn(model, &d, d.chosen(), reward).unwrap();
    }
}

#[test]
fn disjoint_thompson_propensities_match_a_brute_force_simulation() {
    let text = |eps: f64| {
        format!(
            "id = \"ts\"\nalgorithm = \"lin_ts\"\narms = [\"a\", \"b\", \"c\", \"d\"]\n\
             [params]\nv = 0.4\nepsilon = {eps}\n\
             [[features.context]]\nname = \"u\"\ntype = \"vector\"\nlength = 3\n"
        )
    };
    let p = policy(&text(0.0));
    let mut model = p.new_model();
    train(&p, &mut model, |rng| {
        (
            vector("u", (0..3).map(|_| rng.random::<f64>() - 0.5).collect()),
            vec![],
        )
    });
    let ctx = vector("u", vec![0.4, -0.2, 0.1]);
    let decision: Decision = p
        .decide(&model, &DecideRequest::disjoint("probe", &ctx))
        .unwrap();
    let x = decision.vector(0);
    let truth = brute_force(&model, 0.4, &[0, 1, 2, 3], &[x, x, x, x], 1_000_000);
    eprintln!(
        "quadrature {:?}\nsimulation {truth:?}",
        decision.probabilities
    );
    assert!(
        truth.iter().filter(|q| **q > 0.05).count() >= 2,
        "a probe where several arms compete"
    );
    for (q, t) in decision.probabilities.iter().zip(&truth) {
        // The promise is 0.01 absolute; 1e6 draws have standard error
        // < 5e-4, so 0.003 is still 6 standard errors.
        assert!((q - t).abs() < 0.003, "quadrature {q} vs simulation {t}");
    }
    // With a floor the logged propensities are (1 - ε) q + ε/K.
    let floored = policy(&text(0.2));
    let mixed = floored
        .decide(&model, &DecideRequest::disjoint("probe", &ctx))
        .unwrap();
    for (m, q) in mixed.probabilities.iter().zip(&decision.probabilities) {
        assert!((m - (0.8 * q + 0.05)).abs() < 1e-12);
    }
}

fn candidates(rng: &mut Pcg64Mcg, n: usize) -> Vec<Candidate<Features>> {
    (0..n)
        .map(|i| Candidate {
            id: format!("item{i}"),
            features: vector("i", (0..3).map(|_| rng.random::<f64>() - 0.5).collect()),
        })
        .collect()
}

#[test]
fn shared_thompson_monte_carlo_propensities_are_unbiased_with_measured_error() {
    let draws = 1000;
    let text = format!(
        "id = \"shared\"\nalgorithm = \"lin_ts\"\nmode = \"shared\"\n\
         [params]\nv = 0.5\nepsilon = 0.0\ndraws = {draws}\n\
         [[features.context]]\nname = \"u\"\ntype = \"vector\"\nlength = 2\n\
         [[features.action]]\nname = \"i\"\ntype = \"vector\"\nlength = 3\n"
    );
    let p = policy(&text);
    let mut model = p.new_model();
    train(&p, &mut model, |rng| {
        let ctx = vector("u", vec![rng.random::<f64>(), rng.random::<f64>()]);
        (ctx, candidates(rng, 4))
    });
    let mut rng = Pcg64Mcg::seed_from_u64(99);
    let ctx = vector("u", vec![0.3, 0.6]);
    let actions = candidates(&mut rng, 5);
    let req = |id: &str| -> Decision {
        let r = DecideRequest {
            event_id: id,
            context: &ctx,
            actions: &actions,
            excluded: &[],
            k: 1,
        };
        p.decide(&model, &r).unwrap()
    };
    let probe = req("probe");
    let xs: Vec<&[f64]> = (0..5).map(|i| probe.vector(i)).collect();
    let truth = brute_force(&model, 0.5, &[0; 5], &xs, 1_000_000);
    assert!(
        truth.iter().filter(|q| **q > 0.05).count() >= 2,
        "candidates compete: {truth:?}"
    );

    let events = 400;
    let mut mean_estimate = [0.0; 5];
    let mut chosen = [0usize; 5];
    let (mut abs_err, mut max_err) = (0.0, 0.0f64);
    for e in 0..events {
        let d = req(&format!("event-{e}"));
        chosen[d.chosen()] += 1;
        for i in 0..5 {
            let err = (d.probabilities[i] - truth[i]).abs();
            abs_err += err;
            max_err = max_err.max(err);
            mean_estimate[i] += d.probabilities[i] / events as f64;
        }
    }
    let mae = abs_err / (events * 5) as f64;
    eprintln!(
        "truth {truth:?}\nmean estimate {mean_estimate:?}\nMC error with {draws} draws: mean abs {mae:.4}, max {max_err:.4}"
    );
    // Binomial standard error with 1000 draws is at most 0.0158.
    assert!(mae < 0.015, "mean absolute error {mae}");
    assert!(max_err < 0.08, "max error {max_err} (5 standard errors)");
    for i in 0..5 {
        // The estimate is unbiased: its mean over 400 events has standard
        // error at most 0.0008.
        assert!((mean_estimate[i] - truth[i]).abs() < 0.004, "candidate {i}");
        // And actions are chosen with the true TS probabilities (standard
        // error at most 0.025 over 400 events).
        let freq = chosen[i] as f64 / events as f64;
        assert!(
            (freq - truth[i]).abs() < 0.08,
            "candidate {i}: chosen {freq} vs {}",
            truth[i]
        );
    }
}
