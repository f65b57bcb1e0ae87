//! Learning alerts: is a policy still exploring, still getting rewards,
//! and are its rewards what they were? Computed on demand (by `/readyz`,
//! `/metrics` and `GET /v1/policies/{id}`) from this replica's live
//! aggregates ([`crate::monitor`]): nothing is added to the decide path.
//!
//! Each alert compares the recent window (`[alerts] window`, default 5 min)
//! with the rest of the hour before it:
//! - `exploration_collapse`: the decision distributions' mean normalised
//!   entropy in the window is below `min_entropy`, or a logged propensity
//!   below `min_probability` (when declared): off-policy evaluation of
//!   anything but the current policy is starving;
//! - `rewards_stopped`: the window had decisions but no reward (other than
//!   defaults), while the hour before had rewards: the reward pipeline is
//!   likely broken;
//! - `reward_shift`: the window's mean reward differs from the hour
//!   before's by more than four standard errors (Welch's statistic);
//! - `default_share_rising`: the share of default rewards (windows closed
//!   without one) rose by more than four standard errors (two-proportion
//!   statistic).
//!
//! Four standard errors keep a scrape every few seconds from raising false
//! alarms on noise (a one-sided normal tail of about 3e-5 per check); every
//! span needs `min_events` observations before it can raise anything.

use crate::monitor::{Aggregate, PolicyMonitor};
use crate::policy::spec::AlertSpec;

/// Every alert kind, as named in metrics and `/readyz`.
pub const KINDS: [&str; 4] = [
    "exploration_collapse",
    "rewards_stopped",
    "reward_shift",
    "default_share_rising",
];

/// Standard errors a shift must exceed.
const Z: f64 = 4.0;

/// One raised alert.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Alert {
    /// The policy.
    pub policy: String,
    /// One of [`KINDS`].
    pub alert: &'static str,
    /// What was seen, for a person.
    pub message: String,
}

/// The alerts of one policy at `now_ms` (see the module doc).
pub fn evaluate(
    policy: &str,
    monitor: &PolicyMonitor,
    spec: &AlertSpec,
    now_ms: i64,
) -> Vec<Alert> {
    let now = now_ms.div_euclid(1000);
    let window = spec.window.as_secs().max(1) as i64;
    let recent = monitor.aggregate(now - window + 1, now);
    let before = monitor.aggregate(now - 3599, now - window);
    let mut out = Vec::new();
    let mut raise = |alert: &'static str, message: String| {
        out.push(Alert {
            policy: policy.to_string(),
            alert,
            message,
        })
    };
    let min = spec.min_events;
    let minutes = window as f64 / 60.0;

    if recent.entropy_n >= min
        && let Some(h) = recent.entropy()
        && h < spec.min_entropy
    {
        raise(
            KINDS[0],
            format!(
                "mean normalised entropy {h:.3} over the last {minutes:.0} min is below {}",
                spec.min_entropy
            ),
        );
    } else if let Some(floor) = spec.min_probability
        && recent.decisions >= min
        && recent.min_propensity < floor
    {
        raise(
            KINDS[0],
            format!(
                "a propensity of {:.2e} was logged in the last {minutes:.0} min, below the floor {floor}",
                recent.min_propensity
            ),
        );
    }

    let explicit = |a: &Aggregate| a.rewards().saturating_sub(a.default_rewards);
    if recent.decisions >= min && explicit(&recent) == 0 && explicit(&before) >= min {
        raise(
            KINDS[1],
            format!(
                "{} decisions and no reward in the last {minutes:.0} min; {} rewards in the hour before",
                recent.decisions,
                explicit(&before)
            ),
        );
    }

    let (r, b) = (recent.overall(), before.overall());
    if r.rewards >= min && b.rewards >= min {
        let stats = |n: u64, sum: f64, sq: f64| {
            let n = n as f64;
            let mean = sum / n;
            let var = ((sq - sum * mean) / (n - 1.0)).max(0.0);
            (mean, var / n)
        };
        let (m1, v1) = stats(r.rewards, r.reward_sum, r.reward_sq);
        let (m2, v2) = stats(b.rewards, b.reward_sum, b.reward_sq);
        let se = (v1 + v2).sqrt();
        if (m1 - m2).abs() > Z * se && m1 != m2 {
            raise(
                KINDS[2],
                format!(
                    "mean reward {m1:.4} over the last {minutes:.0} min against {m2:.4} in the hour before ({:.1} standard errors)",
                    if se > 0.0 {
                        (m1 - m2).abs() / se
                    } else {
                        f64::INFINITY
                    }
                ),
            );
        }
        let (n1, n2) = (r.rewards as f64, b.rewards as f64);
        let (p1, p2) = (
            recent.default_rewards as f64 / n1,
            before.default_rewards as f64 / n2,
        );
        let pooled = (recent.default_rewards + before.default_rewards) as f64 / (n1 + n2);
        let se = (pooled * (1.0 - pooled) * (1.0 / n1 + 1.0 / n2)).sqrt();
        if p1 > p2 && p1 - p2 > Z * se {
            raise(
                KINDS[3],
                format!(
                    "{:.1}% of rewards were defaults over the last {minutes:.0} min against {:.1}% in the hour before",
                    100.0 * p1,
                    100.0 * p2
                ),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::monitor::{DecisionSample, GuardrailOutcome};
    use std::time::Duration;

    const NOW: i64 = 1_800_000_000_000;

    fn spec() -> AlertSpec {
        AlertSpec {
            window: Duration::from_secs(300),
            min_entropy: 0.05,
            min_probability: None,
            min_events: 20,
        }
    }

    fn decide(m: &PolicyMonitor, at_ms: i64, probabilities: &[f64]) {
        m.decision(&DecisionSample {
            now_ms: at_ms,
            arm: Some(0),
            propensity: probabilities[0],
            eligible: probabilities.len(),
            degraded: false,
            guardrails: GuardrailOutcome::default(),
            entropy: crate::monitor::normalised_entropy(probabilities),
        });
    }

    fn kinds(alerts: &[Alert]) -> Vec<&'static str> {
        alerts.iter().map(|a| a.alert).collect()
    }

    fn arms() -> Vec<String> {
        vec!["a".into(), "b".into()]
    }

    #[test]
    fn a_healthy_policy_raises_nothing() {
        let m = PolicyMonitor::new(&arms());
        for i in 0..600 {
            let t = NOW - 3_000_000 + i * 5_000;
            decide(&m, t, &[0.6, 0.4]);
            m.reward(t, Some(0), f64::from(i % 3 == 0), i % 5 == 0);
        }
        assert_eq!(kinds(&evaluate("p", &m, &spec(), NOW)), Vec::<&str>::new());
    }

    #[test]
    fn a_collapsed_distribution_is_an_alert_and_so_is_a_declared_floor() {
        let m = PolicyMonitor::new(&arms());
        for i in 0..40 {
            decide(&m, NOW - i * 1_000, &[0.999, 0.001]);
        }
        assert_eq!(
            kinds(&evaluate("p", &m, &spec(), NOW)),
            ["exploration_collapse"]
        );
        // Too few decisions: nothing.
        let few = PolicyMonitor::new(&arms());
        for i in 0..5 {
            decide(&few, NOW - i * 1_000, &[0.999, 0.001]);
        }
        assert!(evaluate("p", &few, &spec(), NOW).is_empty());
        // A broad distribution, with one tiny propensity under a floor.
        let floor = PolicyMonitor::new(&arms());
        for i in 0..40 {
            decide(&floor, NOW - i * 1_000, &[0.5, 0.5]);
        }
        decide(&floor, NOW, &[0.004, 0.996]);
        let s = AlertSpec {
            min_probability: Some(0.01),
            ..spec()
        };
        assert_eq!(
            kinds(&evaluate("p", &floor, &s, NOW)),
            ["exploration_collapse"]
        );
        assert!(evaluate("p", &floor, &spec(), NOW).is_empty());
    }

    #[test]
    fn rewards_that_stop_are_an_alert() {
        let m = PolicyMonitor::new(&arms());
        for i in 0..100 {
            let t = NOW - 3_000_000 + i * 20_000;
            decide(&m, t, &[0.5, 0.5]);
            m.reward(t, Some(0), 1.0, false);
        }
        for i in 0..30 {
            decide(&m, NOW - i * 5_000, &[0.5, 0.5]);
            // Defaults only: the windows close, nobody rewards.
            m.reward(NOW - i * 5_000, Some(0), 0.0, true);
        }
        let raised = kinds(&evaluate("p", &m, &spec(), NOW));
        assert!(raised.contains(&"rewards_stopped"), "{raised:?}");
        assert!(raised.contains(&"reward_shift"), "{raised:?}");
        assert!(raised.contains(&"default_share_rising"), "{raised:?}");
    }

    #[test]
    fn a_shift_must_exceed_four_standard_errors() {
        // Rates 0.30 before and 0.40 now over 200 and 100 rewards: about
        // 1.7 standard errors, no alert; 0.30 against 0.80: about 9.
        for (now_rate, expected) in [(0.4, false), (0.8, true)] {
            let m = PolicyMonitor::new(&arms());
            for i in 0..200 {
                m.reward(
                    NOW - 3_000_000 + i * 10_000,
                    Some(0),
                    f64::from(i % 10 < 3),
                    false,
                );
            }
            for i in 0..100 {
                let hit = ((i % 10) as f64) < now_rate * 10.0;
                m.reward(NOW - i * 2_000, Some(0), f64::from(hit), false);
            }
            let raised = kinds(&evaluate("p", &m, &spec(), NOW));
            assert_eq!(
                raised.contains(&"reward_shift"),
                expected,
                "{now_rate}: {raised:?}"
            );
        }
    }
}
