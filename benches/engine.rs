//! Criterion benchmarks of the policy engine: decide, learn, and the
//! decide + learn round trip, for LinUCB (disjoint), linear Thompson
//! sampling (disjoint, quadrature propensities) and linear Thompson sampling
//! (shared, Monte Carlo propensities), over feature dimension `d` and number
//! of candidates `K`.
//!
//! Run with `cargo bench --bench engine`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nudge::features::FeatureValue;
use nudge::model::{Delta, LinearModel};
use nudge::policy::{Candidate, DecideRequest, Decision, Mode, Policy, parse_policy};
use rand::{RngExt, SeedableRng};
use rand_pcg::Pcg64Mcg;
use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::time::Duration;

const DIMS: [usize; 3] = [8, 32, 128];
const KS: [usize; 3] = [2, 10, 50];
/// Random observations learned before measuring, so the model is not at its
/// prior.
const WARM_UP_OBSERVATIONS: usize = 2000;
/// Distinct pre-generated requests cycled through in measured loops.
const POOL: usize = 256;

type Features = Vec<(String, FeatureValue)>;

#[derive(Debug, Clone, Copy)]
enum Algo {
    Ucb,
    TsDisjoint,
    TsShared,
    /// The service's progressive-validation scorer: ridge argmax, no
    /// exploration (`epsilon_greedy`, ε = 0), run on every decision.
    Greedy,
}

impl Algo {
    const ALL: [Algo; 3] = [Algo::Ucb, Algo::TsDisjoint, Algo::TsShared];

    fn name(self) -> &'static str {
        match self {
            Algo::Ucb => "linucb",
            Algo::TsDisjoint => "lin_ts",
            Algo::TsShared => "lin_ts_shared",
            Algo::Greedy => "greedy",
        }
    }

    fn shared(self) -> bool {
        matches!(self, Algo::TsShared)
    }
}

/// Widths of the context and action vectors so that, with the bias, the
/// joint vector has exactly `d` slots. Disjoint: all context.
fn layout(algo: Algo, d: usize) -> (usize, usize) {
    if algo.shared() {
        let context = (d - 1) / 2;
        (context, d - 1 - context)
    } else {
        (d - 1, 0)
    }
}

/// The policy file for one configuration. In shared mode `k` is not part of
/// the policy (candidates come per request).
fn policy_toml(algo: Algo, d: usize, k: usize) -> String {
    let (ctx_len, act_len) = layout(algo, d);
    let mut t = String::new();
    let algorithm = match algo {
        Algo::Ucb => "linucb",
        Algo::TsDisjoint | Algo::TsShared => "lin_ts",
        Algo::Greedy => "epsilon_greedy",
    };
    writeln!(t, "id = \"bench_{}_d{d}_k{k}\"", algo.name()).unwrap();
    writeln!(t, "algorithm = \"{algorithm}\"").unwrap();
    if algo.shared() {
        writeln!(t, "mode = \"shared\"").unwrap();
    } else {
        let arms: Vec<String> = (0..k).map(|a| format!("\"a{a}\"")).collect();
        writeln!(t, "mode = \"disjoint\"").unwrap();
        writeln!(t, "arms = [{}]", arms.join(", ")).unwrap();
    }
    let epsilon = if matches!(algo, Algo::Greedy) {
        0.0
    } else {
        0.05
    };
    writeln!(t, "\n[params]\nlambda = 1.0\nepsilon = {epsilon:?}").unwrap();
    match algo {
        Algo::Greedy => {}
        Algo::Ucb => writeln!(t, "alpha = 1.0").unwrap(),
        Algo::TsDisjoint => writeln!(t, "v = 0.5").unwrap(),
        Algo::TsShared => writeln!(t, "v = 0.5\ndraws = 1000").unwrap(),
    }
    writeln!(t, "\n[features]\nbias = true").unwrap();
    writeln!(
        t,
        "\n[[features.context]]\ntype = \"vector\"\nname = \"ctx\"\nlength = {ctx_len}"
    )
    .unwrap();
    if act_len > 0 {
        writeln!(
            t,
            "\n[[features.action]]\ntype = \"vector\"\nname = \"item\"\nlength = {act_len}"
        )
        .unwrap();
    }
    t
}

fn random_vector(rng: &mut Pcg64Mcg, len: usize) -> Vec<f64> {
    (0..len).map(|_| 2.0 * rng.random::<f64>() - 1.0).collect()
}

/// One request's context and (shared mode) candidates.
struct Request {
    context: Features,
    actions: Vec<Candidate<Features>>,
}

/// A policy, its warmed-up model, and a pool of requests to cycle through.
struct Setup {
    policy: Policy,
    model: LinearModel,
    requests: Vec<Request>,
    rng: Pcg64Mcg,
    /// Event id buffer, rewritten in place each iteration.
    event: String,
    counter: u64,
}

impl Setup {
    fn new(algo: Algo, d: usize, k: usize) -> Self {
        let text = policy_toml(algo, d, k);
        let spec = parse_policy(&text, Path::new("bench"))
            .unwrap_or_else(|e| panic!("bad bench policy:\n{text}\n{e:?}"));
        assert_eq!(
            spec.features.dim(),
            d,
            "policy dimension for {}",
            algo.name()
        );
        assert_eq!(spec.mode == Mode::Shared, algo.shared());
        let policy = Policy::new(spec);
        let model = policy.new_model();
        let mut rng = Pcg64Mcg::seed_from_u64(0x006e_7564_6765 ^ ((d as u64) << 8) ^ k as u64);
        let (ctx_len, act_len) = layout(algo, d);
        let requests = (0..POOL)
            .map(|_| Request {
                context: vec![("ctx".to_string(), random_vector(&mut rng, ctx_len).into())],
                actions: if algo.shared() {
                    (0..k)
                        .map(|a| Candidate {
                            id: format!("c{a}"),
                            features: vec![(
                                "item".to_string(),
                                random_vector(&mut rng, act_len).into(),
                            )],
                        })
                        .collect()
                } else {
                    Vec::new()
                },
            })
            .collect();
        let mut setup = Setup {
            policy,
            model,
            requests,
            rng,
            event: String::with_capacity(32),
            counter: 0,
        };
        for _ in 0..WARM_UP_OBSERVATIONS {
            setup.decide_and_learn();
        }
        setup
    }

    /// Advances the event counter and returns the index of the next request
    /// in the pool.
    fn next_event(&mut self) -> usize {
        self.counter += 1;
        self.event.clear();
        write!(self.event, "ev-{}", self.counter).unwrap();
        (self.counter % POOL as u64) as usize
    }

    fn decide(&mut self) -> Decision {
        let i = self.next_event();
        let r = &self.requests[i];
        let req = DecideRequest {
            event_id: &self.event,
            context: &r.context,
            actions: &r.actions,
            excluded: &[],
            k: 1,
        };
        self.policy.decide(&self.model, &req).expect("decide")
    }

    fn reward(&mut self) -> f64 {
        self.rng.random::<f64>()
    }

    fn decide_and_learn(&mut self) {
        let decision = self.decide();
        let reward = self.reward();
        self.policy
            .learn(&mut self.model, &decision, decision.chosen(), reward)
            .expect("learn");
    }
}

fn config() -> Criterion {
    Criterion::default()
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500))
        .sample_size(20)
}

fn bench_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    for algo in Algo::ALL {
        for d in DIMS {
            for k in KS {
                let mut s = Setup::new(algo, d, k);
                group.bench_function(BenchmarkId::new(algo.name(), format!("d{d}/k{k}")), |b| {
                    b.iter(|| black_box(s.decide()))
                });
            }
        }
    }
    group.finish();
}

fn bench_update(c: &mut Criterion) {
    const K: usize = 10;
    let mut group = c.benchmark_group("update");
    for d in DIMS {
        let mut s = Setup::new(Algo::Ucb, d, K);
        // Decisions made up front; learning one bumps only the model.
        let decisions: Vec<(Decision, f64)> = (0..POOL)
            .map(|_| {
                let decision = s.decide();
                let reward = s.reward();
                (decision, reward)
            })
            .collect();
        let mut i = 0;
        group.bench_function(format!("d{d}"), |b| {
            b.iter(|| {
                i = (i + 1) % POOL;
                let (decision, reward) = &decisions[i];
                s.policy
                    .learn(
                        &mut s.model,
                        black_box(decision),
                        decision.chosen(),
                        *reward,
                    )
                    .expect("learn")
            })
        });

        // One observation as a delta: merges the statistics and re-derives
        // the arm by Cholesky, O(d³).
        let (decision, reward) = &decisions[0];
        let arm = decision.arm_of(decision.chosen(), Mode::Disjoint);
        let mut delta = Delta::default();
        delta
            .observe(arm, decision.vector(decision.chosen()), *reward, d)
            .expect("delta");
        group.bench_function(format!("apply_delta/d{d}"), |b| {
            b.iter(|| s.model.apply(black_box(&delta)).expect("apply"))
        });
    }
    group.finish();
}

fn bench_decide_update(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide_update");
    group.throughput(Throughput::Elements(1));
    for algo in Algo::ALL {
        let (d, k) = (32, 10);
        let mut s = Setup::new(algo, d, k);
        group.bench_function(BenchmarkId::new(algo.name(), format!("d{d}/k{k}")), |b| {
            b.iter(|| s.decide_and_learn())
        });
    }
    group.finish();
}

/// What a shadow scorer adds to a decision (the service scores the model's
/// greedy choice on every single-action decision, and each declared
/// challenger): compare with `decide/linucb/d32/k10` and
/// `decide/lin_ts/d32/k10`, the cost of a LinUCB or TS challenger.
fn bench_shadow(c: &mut Criterion) {
    let mut group = c.benchmark_group("shadow");
    let mut s = Setup::new(Algo::Greedy, 32, 10);
    group.bench_function("greedy/d32/k10", |b| b.iter(|| black_box(s.decide())));
    group.finish();
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_decide, bench_update, bench_decide_update, bench_shadow
}
criterion_main!(benches);
