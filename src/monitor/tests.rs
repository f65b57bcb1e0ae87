use super::*;

const T0: i64 = 1_764_000_000_000; // a unix ms on a second boundary

fn arms(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("arm{i}")).collect()
}

fn decision(now_ms: i64, arm: usize, p: f64, eligible: usize) -> DecisionSample {
    DecisionSample {
        now_ms,
        arm: Some(arm),
        propensity: p,
        eligible,
        degraded: false,
        guardrails: GuardrailOutcome::default(),
        entropy: None,
    }
}

fn close(a: f64, b: f64, tol: f64) -> bool {
    (a - b).abs() <= tol
}

#[test]
fn decisions_and_rewards_land_in_their_second_and_arm() {
    let m = PolicyMonitor::new(&arms(3));
    m.decision(&decision(T0, 1, 0.5, 3));
    m.decision(&decision(T0 + 999, 1, 0.25, 3));
    m.decision(&decision(T0 + 1000, 2, 0.5, 3));
    m.reward(T0 + 10, Some(1), 1.0, false);
    m.reward(T0 + 20, Some(1), 0.0, true);
    let s = T0 / 1000;
    let first = m.aggregate(s, s);
    assert_eq!(first.decisions, 2);
    assert_eq!(first.arms[1].decisions, 2);
    assert_eq!(first.arms[1].rewards, 2);
    assert_eq!(first.arms[1].reward_sum, 1.0);
    assert_eq!(first.default_rewards, 1);
    assert_eq!(first.min_propensity, 0.25);
    let both = m.aggregate(s, s + 1);
    assert_eq!(both.decisions, 3);
    assert_eq!(both.arms[2].decisions, 1);
    assert_eq!(m.aggregate(s + 1, s + 1).min_propensity, 0.5);
}

#[test]
fn a_bucket_reused_an_hour_later_starts_from_zero() {
    let m = PolicyMonitor::new(&arms(2));
    m.decision(&decision(T0, 0, 0.5, 2));
    m.reward(T0, Some(0), 1.0, false);
    let later = T0 + BUCKETS as i64 * 1000;
    m.decision(&decision(later, 1, 0.9, 2));
    let s = later / 1000;
    let a = m.aggregate(s, s);
    assert_eq!(a.decisions, 1);
    assert_eq!(a.arms[0], ArmAggregate::default());
    assert_eq!(a.arms[1].decisions, 1);
    assert_eq!(a.min_propensity, 0.9);
    // The old second is gone, not double counted.
    assert_eq!(m.aggregate(T0 / 1000, T0 / 1000).decisions, 0);
    // A record older than what its bucket holds is dropped.
    m.decision(&decision(T0, 0, 0.1, 2));
    assert_eq!(m.aggregate(s, s).decisions, 1);
    assert_eq!(m.aggregate(T0 / 1000, T0 / 1000).decisions, 0);
}

#[test]
fn an_aggregate_reads_at_most_the_last_hour() {
    let m = PolicyMonitor::new(&arms(1));
    for k in 0..(BUCKETS as i64 + 10) {
        m.decision(&decision(T0 + k * 1000, 0, 1.0, 1));
    }
    let end = T0 / 1000 + BUCKETS as i64 + 9;
    assert_eq!(
        m.aggregate(end - 10 * BUCKETS as i64, end).decisions,
        BUCKETS as u64
    );
}

#[test]
fn a_series_has_one_point_per_step_oldest_first() {
    let m = PolicyMonitor::new(&arms(2));
    let end = T0 / 1000 + 59;
    for k in 0..60 {
        // k decisions in second k.
        for _ in 0..k {
            m.decision(&decision(T0 + k * 1000, (k % 2) as usize, 0.5, 2));
        }
    }
    let s = m.series(end, 60, 10);
    assert_eq!(s.len(), 6);
    assert_eq!(s[0].0, T0 / 1000);
    assert_eq!(s[5].0, T0 / 1000 + 50);
    assert_eq!(s[0].1.decisions, (0..10).sum::<u64>());
    assert_eq!(s[5].1.decisions, (50..60).sum::<u64>());
    let total: u64 = s.iter().map(|p| p.1.decisions).sum();
    assert_eq!(total, (0..60).sum::<u64>());
}

#[test]
fn arms_beyond_the_cap_are_counted_together() {
    let m = PolicyMonitor::new(&arms(MAX_TRACKED_ARMS + 5));
    assert_eq!(m.rows().len(), MAX_TRACKED_ARMS);
    assert_eq!(m.rows().last().unwrap(), "(other)");
    m.decision(&decision(T0, MAX_TRACKED_ARMS + 4, 0.5, 2));
    m.decision(&decision(T0, MAX_TRACKED_ARMS - 1, 0.5, 2));
    m.decision(&decision(T0, 0, 0.5, 2));
    let a = m.aggregate(T0 / 1000, T0 / 1000);
    assert_eq!(a.arms[MAX_TRACKED_ARMS - 1].decisions, 2);
    assert_eq!(a.arms[0].decisions, 1);
}

#[test]
fn a_shared_policy_has_one_overall_row() {
    let m = PolicyMonitor::new(&[]);
    assert_eq!(m.rows(), ["all"]);
    m.decision(&DecisionSample {
        arm: None,
        ..decision(T0, 0, 0.5, 4)
    });
    m.reward(T0, None, 0.3, false);
    let a = m.aggregate(T0 / 1000, T0 / 1000);
    assert_eq!(a.arms[0].decisions, 1);
    assert_eq!(a.arms[0].rewards, 1);
    assert!(a.non_binary);
}

#[test]
fn the_ess_is_n_under_uniform_logging_and_falls_as_the_policy_concentrates() {
    let m = PolicyMonitor::new(&arms(4));
    for k in 0..100 {
        m.decision(&decision(T0, k % 4, 0.25, 4));
    }
    let a = m.aggregate(T0 / 1000, T0 / 1000);
    assert!(close(a.ess().unwrap(), 100.0, 1e-9), "{:?}", a.ess());
    // Concentrated: arm 0 at 0.91 chosen 91 times, the others at 0.03 each.
    let m = PolicyMonitor::new(&arms(4));
    for k in 0..100 {
        let (arm, p) = if k < 91 { (0, 0.91) } else { (1 + k % 3, 0.03) };
        m.decision(&decision(T0, arm, p, 4));
    }
    let a = m.aggregate(T0 / 1000, T0 / 1000);
    // w = 1/(4p): 91 of 1/3.64 and 9 of 1/0.12.
    let (w0, w1): (f64, f64) = (1.0 / 3.64, 1.0 / 0.12);
    let expected = (91.0 * w0 + 9.0 * w1).powi(2) / (91.0 * w0 * w0 + 9.0 * w1 * w1);
    assert!(close(a.ess().unwrap(), expected, 1e-9));
    assert!(a.ess().unwrap() < 20.0);
    assert_eq!(PolicyMonitor::new(&arms(1)).aggregate(0, 10).ess(), None);
}

#[test]
fn guardrail_outcomes_are_counted_once_per_decision_and_kind() {
    let m = PolicyMonitor::new(&arms(3));
    let g = GuardrailOutcome::of(
        true,
        [Exclusion::Cap, Exclusion::Cap, Exclusion::QuietHours],
    );
    m.decision(&DecisionSample {
        guardrails: g,
        ..decision(T0, 0, 1.0, 1)
    });
    m.decision(&DecisionSample {
        guardrails: GuardrailOutcome::of(false, [Exclusion::Budget]),
        degraded: true,
        ..decision(T0, 0, 0.5, 2)
    });
    let a = m.aggregate(T0 / 1000, T0 / 1000);
    let names = guardrail_names();
    let count = |name: &str| a.guardrails[names.iter().position(|n| *n == name).unwrap()];
    assert_eq!(count("held"), 1);
    assert_eq!(count("cap"), 1);
    assert_eq!(count("quiet_hours"), 1);
    assert_eq!(count("budget"), 1);
    assert_eq!(count("gap"), 0);
    assert_eq!(a.degraded, 1);
}

#[test]
fn concurrent_recorders_lose_nothing_within_a_second() {
    let m = std::sync::Arc::new(PolicyMonitor::new(&arms(2)));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let m = m.clone();
            std::thread::spawn(move || {
                for k in 0..10_000 {
                    m.decision(&decision(T0 + 500, (k + t) % 2, 0.5, 2));
                    m.reward(T0 + 500, Some((k + t) % 2), 1.0, false);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let a = m.aggregate(T0 / 1000, T0 / 1000);
    assert_eq!(a.decisions, 40_000);
    assert_eq!(a.rewards(), 40_000);
    assert_eq!(a.overall().reward_sum, 40_000.0);
    assert!(close(a.ess().unwrap(), 40_000.0, 1e-6));
}

#[test]
fn wilson_matches_the_textbook_values() {
    // 8 of 10, z = 1.96: (0.4902, 0.9433) (Newcombe 1998, table I style).
    let (lo, hi) = wilson(8.0, 10.0, 1.96);
    assert!(close(lo, 0.4902, 5e-4), "{lo}");
    assert!(close(hi, 0.9433, 5e-4), "{hi}");
    // 0 of 10 is not degenerate: (0, 0.2775).
    let (lo, hi) = wilson(0.0, 10.0, 1.96);
    assert!(close(lo, 0.0, 1e-12), "{lo}");
    assert!(close(hi, 0.2775, 5e-4), "{hi}");
    let (lo, hi) = wilson(10.0, 10.0, 1.96);
    assert!(close(lo, 0.7225, 5e-4), "{lo}");
    assert!(close(hi, 1.0, 1e-12), "{hi}");
}

#[test]
fn binary_rewards_get_wilson_and_others_the_normal_interval() {
    let a = ArmAggregate {
        decisions: 10,
        rewards: 10,
        reward_sum: 8.0,
        reward_sq: 8.0,
    };
    let w = reward_interval(&a, true).unwrap();
    assert_eq!(w.mean, 0.8);
    assert!(close(w.low, 0.4902, 5e-4));
    // Rewards 1, 2, 3: mean 2, s² = 1, half-width z·√(1/3).
    let a = ArmAggregate {
        decisions: 3,
        rewards: 3,
        reward_sum: 6.0,
        reward_sq: 14.0,
    };
    let n = reward_interval(&a, false).unwrap();
    assert!(close(n.mean, 2.0, 1e-12));
    let half = Z95 * (1.0f64 / 3.0).sqrt();
    assert!(close(n.low, 2.0 - half, 1e-12) && close(n.high, 2.0 + half, 1e-12));
    // One reward: the bounds are the mean; none: no interval.
    let one = ArmAggregate {
        rewards: 1,
        reward_sum: 0.5,
        reward_sq: 0.25,
        ..ArmAggregate::default()
    };
    assert_eq!(
        reward_interval(&one, false),
        Some(MeanInterval {
            mean: 0.5,
            low: 0.5,
            high: 0.5
        })
    );
    assert_eq!(reward_interval(&ArmAggregate::default(), true), None);
}

#[test]
fn the_replica_name_is_the_setting_or_host_and_pid() {
    assert_eq!(replica_name(Some("eu-1")), "eu-1");
    let auto = replica_name(None);
    assert!(
        auto.ends_with(&format!("/{}", std::process::id())),
        "{auto}"
    );
    assert_eq!(replica_name(Some("")), auto);
}
