use super::quadrature::{normal_cdf, normal_max_probabilities, normal_pdf};
use super::*;
use rand_distr::{Distribution, StandardNormal};

fn assert_distribution(p: &[f64]) {
    assert!(p.iter().all(|v| (0.0..=1.0).contains(v)), "{p:?}");
    assert!((p.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{p:?}");
}

#[test]
fn epsilon_greedy_gives_the_best_one_minus_epsilon_plus_its_floor() {
    let mut p = [0.0; 4];
    epsilon_greedy(&[0.1, 0.9, 0.3, -2.0], 0.2, &mut p);
    assert_distribution(&p);
    assert!((p[1] - (0.8 + 0.05)).abs() < 1e-15);
    for i in [0, 2, 3] {
        assert!((p[i] - 0.05).abs() < 1e-15);
    }
}

#[test]
fn tied_maxima_share_the_greedy_mass() {
    let mut p = [0.0; 3];
    epsilon_greedy(&[1.0, 0.0, 1.0], 0.3, &mut p);
    assert_distribution(&p);
    assert!((p[0] - (0.35 + 0.1)).abs() < 1e-15);
    assert!((p[2] - p[0]).abs() < 1e-15);
}

#[test]
fn zero_epsilon_is_the_deterministic_argmax_with_ties_to_the_lowest_index() {
    let mut p = [0.0; 3];
    epsilon_greedy(&[0.5, 2.0, 2.0], 0.0, &mut p);
    assert_eq!(p, [0.0, 1.0, 0.0]);
}

#[test]
fn mix_floor_keeps_every_probability_at_least_epsilon_over_k() {
    let mut q = [0.7, 0.3, 0.0, 0.0];
    mix_floor(&mut q, 0.1);
    assert_distribution(&q);
    assert!((q[2] - 0.025).abs() < 1e-15);
    assert!((q[0] - (0.63 + 0.025)).abs() < 1e-15);
}

#[test]
fn sample_index_follows_the_distribution() {
    let p = [0.1, 0.0, 0.6, 0.3];
    let mut rng = SeededRng::seed_from_u64(7);
    let n = 200_000;
    let mut counts = [0usize; 4];
    for _ in 0..n {
        counts[sample_index(&p, rng.random())] += 1;
    }
    assert_eq!(counts[1], 0, "a zero-probability entry is never drawn");
    for i in [0, 2, 3] {
        let freq = counts[i] as f64 / n as f64;
        // 5 standard errors at n = 2e5 is < 0.006 for any p.
        assert!((freq - p[i]).abs() < 0.006, "entry {i}: {freq} vs {}", p[i]);
    }
    assert_eq!(sample_index(&p, 0.999_999_999_999), 3);
    assert_eq!(
        sample_index(&[0.5, 0.5, 0.0], 1.0),
        1,
        "u at the end skips trailing zeros"
    );
}

#[test]
fn the_same_event_draws_the_same_stream_and_other_events_do_not() {
    let draw = |policy: &str, event: &str, s: Stream| {
        let mut rng = event_rng(policy, event, s);
        (0..4).map(|_| rng.random::<u64>()).collect::<Vec<_>>()
    };
    assert_eq!(
        draw("p", "e1", Stream::Sample),
        draw("p", "e1", Stream::Sample)
    );
    assert_ne!(
        draw("p", "e1", Stream::Sample),
        draw("p", "e2", Stream::Sample)
    );
    assert_ne!(
        draw("p", "e1", Stream::Sample),
        draw("q", "e1", Stream::Sample)
    );
    assert_ne!(
        draw("p", "e1", Stream::Sample),
        draw("p", "e1", Stream::Posterior)
    );
}

#[test]
fn slates_hold_distinct_candidates_with_conditional_probabilities() {
    let p = [0.5, 0.3, 0.15, 0.05];
    let mut rng = SeededRng::seed_from_u64(11);
    let n = 100_000;
    let mut second_given_first0 = [0usize; 4];
    let mut first0 = 0;
    for _ in 0..n {
        let slate = sample_slate(&p, 3, &mut rng);
        assert_eq!(slate.len(), 3);
        let mut ids: Vec<usize> = slate.iter().map(|s| s.index).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 3, "no candidate twice");
        assert!((slate[0].probability - p[slate[0].index]).abs() < 1e-15);
        let removed = p[slate[0].index];
        let expected = p[slate[1].index] / (1.0 - removed);
        assert!((slate[1].probability - expected).abs() < 1e-12);
        if slate[0].index == 0 {
            first0 += 1;
            second_given_first0[slate[1].index] += 1;
        }
    }
    // P(second = 1 | first = 0) = 0.3 / 0.5 = 0.6.
    let freq = second_given_first0[1] as f64 / first0 as f64;
    assert!((freq - 0.6).abs() < 0.01, "{freq}");
}

#[test]
fn a_full_slate_with_zero_epsilon_fills_up_deterministically() {
    let mut rng = SeededRng::seed_from_u64(1);
    let slate = sample_slate(&[0.0, 1.0, 0.0], 3, &mut rng);
    let order: Vec<usize> = slate.iter().map(|s| s.index).collect();
    assert_eq!(order, vec![1, 0, 2]);
    assert!(slate.iter().all(|s| s.probability == 1.0));
}

/// Dense midpoint-rule reference for P(a wins), over a wide grid.
fn reference(mu: &[f64], sigma: &[f64]) -> Vec<f64> {
    let lo = mu
        .iter()
        .zip(sigma)
        .map(|(m, s)| m - 12.0 * s)
        .fold(f64::INFINITY, f64::min);
    let hi = mu
        .iter()
        .zip(sigma)
        .map(|(m, s)| m + 12.0 * s)
        .fold(f64::NEG_INFINITY, f64::max);
    let steps = 400_000;
    let h = (hi - lo) / steps as f64;
    let mut out = vec![0.0; mu.len()];
    for i in 0..steps {
        let s = lo + (i as f64 + 0.5) * h;
        for a in 0..mu.len() {
            let mut prod = normal_pdf((s - mu[a]) / sigma[a]) / sigma[a];
            for b in 0..mu.len() {
                if b != a {
                    prod *= normal_cdf((s - mu[b]) / sigma[b]);
                }
            }
            out[a] += prod * h;
        }
    }
    out
}

#[test]
fn quadrature_matches_a_dense_reference_even_with_very_different_widths() {
    let cases: [(&[f64], &[f64]); 5] = [
        (&[0.0, 0.0], &[1.0, 1.0]),
        (&[0.0, 0.3, -0.2], &[1.0, 0.5, 2.0]),
        // A well-explored arm (narrow) against a new one (wide).
        (&[0.5, 0.0, 0.49], &[0.001, 1.0, 0.002]),
        (&[1.0, 2.0, 3.0, 2.5], &[0.1, 0.1, 0.1, 1.0]),
        // Hopeless arms far below the best.
        (&[0.0, -50.0, 0.1, -3.0], &[1.0, 0.5, 0.01, 0.3]),
    ];
    for (mu, sigma) in cases {
        let mut got = vec![0.0; mu.len()];
        normal_max_probabilities(mu, sigma, &mut got);
        let want = reference(mu, sigma);
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() < 1e-6,
                "mu {mu:?} sigma {sigma:?}: {got:?} vs {want:?}"
            );
        }
    }
}

#[test]
fn quadrature_matches_brute_force_thompson_draws() {
    // Tolerance 0.01 absolute as the engine promises; 1e6 draws have a
    // standard error below 5e-4, so the check has room to spare.
    let mu = [0.2, 0.25, 0.0, 0.3, -0.1];
    let sigma = [0.1, 0.3, 0.05, 0.02, 0.5];
    let mut q = vec![0.0; 5];
    normal_max_probabilities(&mu, &sigma, &mut q);
    let mut rng = SeededRng::seed_from_u64(2013);
    let n = 1_000_000;
    let mut wins = [0usize; 5];
    for _ in 0..n {
        let mut best = (f64::NEG_INFINITY, 0);
        for a in 0..5 {
            let z: f64 = StandardNormal.sample(&mut rng);
            let s = mu[a] + sigma[a] * z;
            if s > best.0 {
                best = (s, a);
            }
        }
        wins[best.1] += 1;
    }
    for a in 0..5 {
        let freq = wins[a] as f64 / n as f64;
        assert!(
            (freq - q[a]).abs() < 0.01,
            "arm {a}: quadrature {} vs simulation {freq}",
            q[a]
        );
        assert!(
            (freq - q[a]).abs() < 0.003,
            "arm {a}: within 6 standard errors"
        );
    }
}
