//! Constraints on the signals (`--subject-to "unsubscribed <= 0.002"`) and
//! the best setting that meets them.

use super::pareto::{Direction, Objective};
use super::{Setting, Tuning};
use serde::Serialize;

/// `≤` or `≥`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Op {
    /// The signal must be at most the bound.
    #[serde(rename = "<=")]
    AtMost,
    /// The signal must be at least the bound.
    #[serde(rename = ">=")]
    AtLeast,
}

/// One constraint on a signal's mean per round.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Constraint {
    /// The signal.
    pub signal: String,
    /// Which side of the bound is allowed.
    pub op: Op,
    /// The bound.
    pub bound: f64,
}

impl Constraint {
    /// Parses `NAME <= V` or `NAME >= V` (spaces optional; `<` and `>`
    /// are read as `<=` and `>=`: a mean is never exactly at a bound that
    /// matters). `signals` are the names a constraint may use.
    pub fn parse(text: &str, signals: &[String]) -> anyhow::Result<Constraint> {
        let expected = || {
            anyhow::anyhow!(
                "--subject-to {text:?}: expected `SIGNAL <= VALUE` or `SIGNAL >= VALUE`, such as \
                 \"unsubscribed <= 0.002\""
            )
        };
        let (at, op, len) = ["<=", ">=", "<", ">"]
            .iter()
            .find_map(|sym| text.find(sym).map(|at| (at, *sym, sym.len())))
            .ok_or_else(expected)?;
        let signal = text[..at].trim();
        let bound: f64 = text[at + len..].trim().parse().map_err(|_| expected())?;
        if signal.is_empty() || !bound.is_finite() {
            return Err(expected());
        }
        if !signals.iter().any(|s| s == signal) {
            anyhow::bail!(
                "--subject-to {text:?}: no signal `{signal}` (the signals: {})",
                signals.join(", ")
            );
        }
        Ok(Constraint {
            signal: signal.to_string(),
            op: if op.starts_with('<') {
                Op::AtMost
            } else {
                Op::AtLeast
            },
            bound,
        })
    }

    /// How far `value` is inside the constraint (negative: violated).
    pub fn margin(&self, value: f64) -> f64 {
        match self.op {
            Op::AtMost => self.bound - value,
            Op::AtLeast => value - self.bound,
        }
    }

    /// `unsubscribed <= 0.002`.
    pub fn text(&self) -> String {
        let op = match self.op {
            Op::AtMost => "<=",
            Op::AtLeast => ">=",
        };
        format!("{} {op} {}", self.signal, self.bound)
    }
}

/// How one setting stands against one constraint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Margin {
    /// The constraint (`unsubscribed <= 0.002`).
    pub constraint: String,
    /// The signal's mean per round under the setting.
    pub value: f64,
    /// How far inside the constraint it is (negative: violated).
    pub margin: f64,
    /// The 95% interval of the margin (logs only: from the estimate's
    /// standard error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval: Option<(f64, f64)>,
}

/// The best setting meeting every constraint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Best {
    /// Index into [`Tuning::settings`].
    pub index: usize,
    /// Its weights (as in the setting).
    pub weights: std::collections::BTreeMap<String, f64>,
    /// The objective it is best on.
    pub objective: String,
    /// Its value on that objective.
    pub value: f64,
    /// One per constraint, in the order given.
    pub margins: Vec<Margin>,
    /// Whether every margin's interval lies inside its constraint (always
    /// true without intervals).
    pub certain: bool,
}

/// z of a two-sided 95% interval.
const Z95: f64 = 1.959_963_984_540_054;

/// The margins of `s` against every constraint.
pub fn margins(s: &Setting, constraints: &[Constraint]) -> Vec<Margin> {
    constraints
        .iter()
        .map(|c| {
            let value = s.outcomes[&c.signal];
            let interval = s
                .stderr
                .as_ref()
                .and_then(|se| se.get(&c.signal))
                .map(|se| {
                    let (a, b) = (c.margin(value - Z95 * se), c.margin(value + Z95 * se));
                    (a.min(b), a.max(b))
                });
            Margin {
                constraint: c.text(),
                value,
                margin: c.margin(value),
                interval,
            }
        })
        .collect()
}

/// Marks every setting feasible or not against `t.constraints` and picks
/// the best feasible one: best on the first objective, ties broken by the
/// later objectives in order. `None` without constraints or when no
/// setting meets them all.
pub fn apply(t: &mut Tuning) -> Option<Best> {
    let Tuning {
        constraints,
        settings,
        objectives,
        ..
    } = t;
    if constraints.is_empty() {
        return None;
    }
    let mut all: Vec<Vec<Margin>> = settings.iter().map(|s| margins(s, constraints)).collect();
    for (s, m) in settings.iter_mut().zip(&all) {
        s.feasible = Some(m.iter().all(|m| m.margin >= 0.0));
    }
    let better = |a: &Setting, b: &Setting, o: &Objective| -> std::cmp::Ordering {
        let (x, y) = (a.outcomes[&o.signal], b.outcomes[&o.signal]);
        match o.direction {
            Direction::Max => x.total_cmp(&y),
            Direction::Min => y.total_cmp(&x),
        }
    };
    let first = objectives.first()?;
    let (index, s) = settings
        .iter()
        .enumerate()
        .filter(|(_, s)| s.feasible == Some(true))
        .max_by(|(_, a), (_, b)| {
            objectives
                .iter()
                .map(|o| better(a, b, o))
                .find(|o| o.is_ne())
                .unwrap_or(std::cmp::Ordering::Equal)
        })?;
    let m = std::mem::take(&mut all[index]);
    Some(Best {
        index,
        weights: s.weights.clone(),
        objective: format!("{} {}", first.direction.name(), first.signal),
        value: s.outcomes[&first.signal],
        certain: m.iter().all(|m| m.interval.is_none_or(|(lo, _)| lo >= 0.0)),
        margins: m,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signals() -> Vec<String> {
        vec!["opened".into(), "unsubscribed".into()]
    }

    #[test]
    fn constraints_parse_with_or_without_spaces_and_name_bad_input() {
        let c = Constraint::parse("unsubscribed <= 0.002", &signals()).unwrap();
        assert_eq!((c.op, c.bound), (Op::AtMost, 0.002));
        assert!((c.margin(0.0015) - 0.0005).abs() < 1e-15);
        let c = Constraint::parse("opened>=0.1", &signals()).unwrap();
        assert_eq!((c.signal.as_str(), c.op), ("opened", Op::AtLeast));
        assert!(c.margin(0.05) < 0.0);
        for bad in ["unsubscribed", "unsubscribed <= x", "<= 1", "opened <= inf"] {
            let e = Constraint::parse(bad, &signals()).unwrap_err().to_string();
            assert!(e.contains("expected `SIGNAL <= VALUE`"), "{bad}: {e}");
        }
        let e = Constraint::parse("clicks <= 1", &signals())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no signal `clicks`") && e.contains("opened"),
            "{e}"
        );
    }
}
