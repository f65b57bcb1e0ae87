use super::codec::{CodecError, decode, encode};
use super::*;
use crate::explore::SeededRng;
use ndarray_linalg::Inverse;
use rand::{RngExt, SeedableRng};

fn random_x(rng: &mut SeededRng, d: usize) -> Vec<f64> {
    (0..d).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect()
}

fn max_abs_diff(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    (a - b).iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// `(λI + S)⁻¹` solved from scratch by LU, independent of the cache.
fn fresh_inverse(stats: &ArmStats, lambda: f64) -> Array2<f64> {
    let a = &stats.xx + &(Array2::<f64>::eye(stats.dim()) * lambda);
    a.inv().unwrap()
}

#[test]
fn merged_deltas_equal_serial_updates() {
    let (d, arms) = (6, 3);
    let mut rng = SeededRng::seed_from_u64(3);
    let mut serial = ModelState::new(d, arms);
    let (mut d1, mut d2) = (Delta::default(), Delta::default());
    for i in 0..500 {
        let (arm, x, r) = (i % arms, random_x(&mut rng, d), rng.random::<f64>());
        serial.arms[arm].add(&x, r);
        let delta = if i % 2 == 0 { &mut d1 } else { &mut d2 };
        delta.observe(arm, &x, r, d).unwrap();
    }
    let mut merged = ModelState::new(d, arms);
    d1.merge(&d2);
    merged.apply(&d1).unwrap();
    assert_eq!(d1.count(), 500);
    for (m, s) in merged.arms.iter().zip(&serial.arms) {
        assert_eq!(m.count, s.count);
        // Same sums in another order: equal to rounding.
        assert!(max_abs_diff(&m.xx, &s.xx) < 1e-9);
        assert!((&m.xr - &s.xr).iter().all(|v| v.abs() < 1e-9));
        assert!((m.reward_sum - s.reward_sum).abs() < 1e-9);
    }
    // And the order of merging does not matter either.
    let mut other_order = ModelState::new(d, arms);
    other_order.apply(&d2).unwrap();
    let mut d1_only = d1.clone();
    d1_only.arms.iter_mut().for_each(|(arm, s)| {
        let two = &d2.arms[arm];
        s.xx -= &two.xx;
        s.xr -= &two.xr;
        s.count -= two.count;
        s.reward_sum -= two.reward_sum;
    });
    other_order.apply(&d1_only).unwrap();
    assert!(max_abs_diff(&other_order.arms[0].xx, &serial.arms[0].xx) < 1e-9);
}

#[test]
fn deltas_of_the_wrong_shape_change_nothing() {
    let mut state = ModelState::new(4, 2);
    let mut bad = Delta::default();
    bad.observe(5, &[1.0; 4], 1.0, 4).unwrap();
    assert_eq!(
        state.apply(&bad),
        Err(ModelError::UnknownArm { arm: 5, arms: 2 })
    );
    let mut wide = Delta::default();
    wide.observe(0, &[1.0; 3], 1.0, 3).unwrap();
    assert!(state.apply(&wide).is_err());
    assert_eq!(state, ModelState::new(4, 2));
}

fn check_inverse_after_many_updates(refactor_every: u32) -> f64 {
    let (d, lambda) = (16, 1.0);
    let mut model = LinearModel::new(d, 1, lambda, refactor_every);
    let mut rng = SeededRng::seed_from_u64(100_000);
    for _ in 0..100_000 {
        let x = random_x(&mut rng, d);
        model.observe(0, &x, rng.random::<f64>()).unwrap();
    }
    let fresh = fresh_inverse(&model.state().arms[0], lambda);
    let scale = fresh.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let err = max_abs_diff(model.a_inv(0), &fresh) / scale;
    let theta = fresh.dot(&model.state().arms[0].xr);
    let theta_err = (&model.theta(0) - &theta)
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(theta_err < 1e-8, "θ drifted by {theta_err}");
    err
}

#[test]
fn the_cached_inverse_matches_a_fresh_solve_after_1e5_sherman_morrison_updates() {
    // Pure Sherman–Morrison, never refactorised: rounding stays tiny.
    let err = check_inverse_after_many_updates(u32::MAX);
    assert!(err < 1e-9, "relative error {err}");
}

#[test]
fn periodic_refactorisation_keeps_the_inverse_exact() {
    let err = check_inverse_after_many_updates(1000);
    assert!(err < 1e-10, "relative error {err}");
}

#[test]
fn observe_refuses_nan_infinity_and_wrong_lengths_without_changing_the_model() {
    let mut model = LinearModel::new(3, 2, 1.0, 100);
    model.observe(1, &[1.0, 0.5, -1.0], 1.0).unwrap();
    let before = model.state();
    let bad: [(usize, Vec<f64>, f64); 5] = [
        (0, vec![f64::NAN, 0.0, 0.0], 1.0),
        (0, vec![0.0, f64::INFINITY, 0.0], 1.0),
        (0, vec![1.0, 0.0, 0.0], f64::NAN),
        (0, vec![1.0, 0.0], 1.0),
        (2, vec![1.0, 0.0, 0.0], 1.0),
    ];
    for (arm, x, r) in bad {
        assert!(model.observe(arm, &x, r).is_err(), "{arm} {x:?} {r}");
    }
    assert_eq!(model.state(), before);
    assert!(model.a_inv(0).iter().all(|v| v.is_finite()));
}

#[test]
fn applying_a_delta_rederives_the_touched_arms() {
    let mut rng = SeededRng::seed_from_u64(5);
    let mut model = LinearModel::new(4, 2, 2.0, 1000);
    let mut delta = Delta::default();
    for _ in 0..50 {
        delta
            .observe(1, &random_x(&mut rng, 4), rng.random(), 4)
            .unwrap();
    }
    model.apply(&delta).unwrap();
    assert_eq!(model.version(), 1);
    let fresh = fresh_inverse(&model.state().arms[1], 2.0);
    assert!(max_abs_diff(model.a_inv(1), &fresh) < 1e-12);
}

#[test]
fn the_posterior_factor_reproduces_the_inverse() {
    let mut rng = SeededRng::seed_from_u64(9);
    let mut model = LinearModel::new(5, 1, 1.0, 1000);
    for _ in 0..200 {
        model
            .observe(0, &random_x(&mut rng, 5), rng.random())
            .unwrap();
    }
    let l = model.posterior_factor(0).clone();
    assert!(max_abs_diff(&l.dot(&l.t()), model.a_inv(0)) < 1e-12);
    // The factor follows the model after a change.
    model.observe(0, &[1.0, 1.0, 1.0, 1.0, 1.0], 1.0).unwrap();
    let l2 = model.posterior_factor(0);
    assert!(max_abs_diff(&l2.dot(&l2.t()), model.a_inv(0)) < 1e-12);
}

fn sample_state() -> ModelState {
    let mut rng = SeededRng::seed_from_u64(21);
    let mut state = ModelState::new(5, 3);
    for i in 0..40 {
        let x = random_x(&mut rng, 5);
        state.arms[i % 3].add(&x, rng.random());
    }
    state.version = 41;
    state
}

#[test]
fn the_binary_encoding_round_trips_exactly() {
    let state = sample_state();
    let blob = encode(&state);
    assert_eq!(blob.len(), 24 + 3 * (8 + 8 + 5 * 8 + 15 * 8) + 4);
    assert_eq!(decode(&blob).unwrap(), state);
    let empty = ModelState::new(0, 0);
    assert_eq!(decode(&encode(&empty)).unwrap(), empty);
}

#[test]
fn every_truncation_and_every_bit_flip_is_an_error_not_a_panic() {
    let blob = encode(&sample_state());
    for len in 0..blob.len() {
        assert!(decode(&blob[..len]).is_err(), "truncated to {len}");
    }
    let mut longer = blob.clone();
    longer.push(0);
    assert!(decode(&longer).is_err());
    for byte in 0..blob.len() {
        for bit in 0..8 {
            let mut corrupt = blob.clone();
            corrupt[byte] ^= 1 << bit;
            assert!(decode(&corrupt).is_err(), "flip at byte {byte} bit {bit}");
        }
    }
}

#[test]
fn a_blob_with_a_valid_checksum_but_nan_inside_is_refused() {
    let mut state = sample_state();
    state.arms[1].xr[2] = f64::NAN;
    assert_eq!(
        decode(&encode(&state)),
        Err(CodecError::InvalidValue {
            arm: 1,
            what: "non-finite number"
        })
    );
    let mut state = sample_state();
    state.arms[0].xx[[1, 1]] = -1.0;
    assert!(matches!(
        decode(&encode(&state)),
        Err(CodecError::InvalidValue { arm: 0, .. })
    ));
}

#[test]
fn headers_declaring_huge_shapes_are_refused_before_allocating() {
    let mut blob = encode(&sample_state());
    blob[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(decode(&blob), Err(CodecError::TooLarge { .. })));
}

#[test]
fn a_model_refuses_an_update_whose_statistics_would_overflow() {
    // Every input finite, the update not: (1e200)² = inf in Σxxᵀ, and
    // 1e300 · 1e10 = inf in Σrx.
    let mut model = LinearModel::new(2, 1, 1.0, 5);
    let before = model.state();
    for (x, r) in [([1e200, 0.0], 0.0), ([1e10, 1.0], 1e300)] {
        assert!(matches!(
            model.observe(0, &x, r),
            Err(ModelError::NotFinite { .. })
        ));
        let mut delta = Delta::default();
        assert!(delta.observe(0, &x, r, 2).is_err());
        assert!(delta.arms.is_empty() || delta.arms[&0].count == 0);
    }
    assert_eq!(model.state(), before);
    // A state that already holds an infinity is refused as a whole.
    let mut poisoned = before.clone();
    poisoned.arms[0].xx[[0, 0]] = f64::INFINITY;
    assert!(LinearModel::from_state(poisoned, 1.0, 5).is_err());
    // And a fine update still works.
    model.observe(0, &[1e9, -1e9], 1e12).unwrap();
    assert!(model.state().arms[0].is_finite());
}
