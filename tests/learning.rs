//! Learning works: on a synthetic linear-reward environment (d = 16, K = 5,
//! 20 000 rounds, fixed seeds) LinUCB and linear Thompson sampling reach far
//! lower regret than epsilon-greedy and uniform, and their regret grows
//! sublinearly.

use nudge::features::FeatureValue;
use nudge::policy::{DecideRequest, Policy, parse_policy};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal, StandardNormal};
use rand_pcg::Pcg64Mcg;
use std::path::Path;

const D: usize = 16;
const K: usize = 5;
const ROUNDS: usize = 20_000;

fn policy(algorithm: &str, params: &str) -> Policy {
    let text = format!(
        r#"
id = "{algorithm}"
algorithm = "{algorithm}"
arms = ["a0", "a1", "a2", "a3", "a4"]
[params]
{params}
[[features.context]]
name = "x"
type = "vector"
length = {len}
"#,
        len = D - 1
    );
    Policy::new(parse_policy(&text, Path::new("learning")).expect("valid policy"))
}

/// Cumulative regret after each half of the run.
struct Regret {
    first_half: f64,
    second_half: f64,
}

impl Regret {
    fn total(&self) -> f64 {
        self.first_half + self.second_half
    }
}

/// Runs `policy` against hidden arm weights `θ*_a ~ N(0, I/d)`, contexts
/// `x = [1, z]` with `z ~ N(0, I)`, and rewards `θ*_aᵀx + N(0, 0.5²)`.
fn run(policy: &Policy, seed: u64) -> Regret {
    let mut env = Pcg64Mcg::seed_from_u64(seed);
    let theta: Vec<Vec<f64>> = (0..K)
        .map(|_| {
            (0..D)
                .map(|_| {
                    let v: f64 = StandardNormal.sample(&mut env);
                    v / (D as f64).sqrt()
                })
                .collect()
        })
        .collect();
    let noise = Normal::new(0.0, 0.5).unwrap();
    let mut model = policy.new_model();
    let mut regret = Regret {
        first_half: 0.0,
        second_half: 0.0,
    };
    for t in 0..ROUNDS {
        let z: Vec<f64> = (0..D - 1)
            .map(|_| StandardNormal.sample(&mut env))
            .collect();
        let mut x = vec![1.0];
        x.extend(&z);
        let means: Vec<f64> = theta
            .iter()
            .map(|th| th.iter().zip(&x).map(|(a, b)| a * b).sum())
            .collect();
        let ctx = vec![("x".to_string(), FeatureValue::Vector(z))];
        let event = format!("round-{t}");
        let decision = policy
            .decide(&model, &DecideRequest::disjoint(&event, &ctx))
            .expect("valid request");
        let arm = decision.candidates[decision.chosen()];
        let best = means.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let r = best - means[arm];
        if t < ROUNDS / 2 {
            regret.first_half += r;
        } else {
            regret.second_half += r;
        }
        let reward = means[arm] + noise.sample(&mut env);
        policy
            .learn(&mut model, &decision, decision.chosen(), reward)
            .expect("finite reward");
    }
    regret
}

#[test]
fn linucb_and_thompson_sampling_beat_the_baselines_with_sublinear_regret() {
    let seeds = [1u64, 2, 3];
    let total = |p: &Policy| -> Vec<Regret> { seeds.iter().map(|s| run(p, *s)).collect() };
    let linucb = total(&policy("linucb", "alpha = 1.0\nepsilon = 0.0"));
    let lin_ts = total(&policy("lin_ts", "v = 0.5\nepsilon = 0.0"));
    let floored = total(&policy("linucb", "alpha = 1.0\nepsilon = 0.05"));
    let greedy = total(&policy("epsilon_greedy", "epsilon = 0.1"));
    let uniform = total(&policy("uniform", ""));
    for (i, seed) in seeds.iter().enumerate() {
        let show = |name: &str, r: &Regret| {
            eprintln!(
                "seed {seed} {name:>16}: regret {:8.1} (first half {:8.1}, second half {:8.1})",
                r.total(),
                r.first_half,
                r.second_half
            )
        };
        show("linucb", &linucb[i]);
        show("lin_ts", &lin_ts[i]);
        show("linucb eps=0.05", &floored[i]);
        show("epsilon_greedy", &greedy[i]);
        show("uniform", &uniform[i]);
    }
    for i in 0..seeds.len() {
        for (name, r) in [("linucb", &linucb[i]), ("lin_ts", &lin_ts[i])] {
            // Measured (seeds 1-3): LinUCB ~135 and TS ~210 total regret,
            // epsilon-greedy ~2400, uniform ~23 000; second halves ~10% of
            // first halves. The margins leave 2-3x room on each ratio.
            assert!(
                r.total() < 0.2 * greedy[i].total(),
                "{name} vs epsilon-greedy"
            );
            assert!(r.total() < 0.02 * uniform[i].total(), "{name} vs uniform");
            assert!(
                r.second_half < 0.25 * r.first_half,
                "{name} regret is not sublinear"
            );
        }
        assert!(
            floored[i].total() < greedy[i].total(),
            "floored linucb vs epsilon-greedy"
        );
    }
}
