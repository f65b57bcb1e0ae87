//! Objectives and the Pareto front.

use super::grid::WeightSpec;
use serde::Serialize;

/// Whether more of a signal is better or worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// More is better (opens).
    Max,
    /// Less is better (unsubscribes).
    Min,
}

impl Direction {
    /// `max` or `min`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Max => "max",
            Direction::Min => "min",
        }
    }
}

/// A signal to optimise, and which way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Objective {
    /// The signal.
    pub signal: String,
    /// Which way is better.
    pub direction: Direction,
}

/// The objectives: those given as `NAME=max|min`, else every weighted
/// signal in the direction of the sign of its weights (positive: max,
/// negative: min). A signal whose weights take both signs, or are all 0,
/// needs an explicit `--objective`.
pub fn objectives(
    given: &[String],
    specs: &[WeightSpec],
    signals: &[String],
) -> anyhow::Result<Vec<Objective>> {
    if !given.is_empty() {
        return given
            .iter()
            .map(|g| {
                let (name, dir) = g.split_once('=').ok_or_else(|| {
                    anyhow::anyhow!("--objective {g:?}: expected NAME=max or NAME=min")
                })?;
                let direction = match dir.trim() {
                    "max" => Direction::Max,
                    "min" => Direction::Min,
                    other => anyhow::bail!(
                        "--objective {g:?}: expected `max` or `min` after `=`, got {other:?}"
                    ),
                };
                if !signals.iter().any(|s| s == name.trim()) {
                    anyhow::bail!(
                        "--objective {g:?}: no signal `{}` (the signals: {})",
                        name.trim(),
                        signals.join(", ")
                    );
                }
                Ok(Objective {
                    signal: name.trim().to_string(),
                    direction,
                })
            })
            .collect();
    }
    let mut out = Vec::new();
    for s in specs {
        let pos = s.values.iter().any(|v| *v > 0.0);
        let neg = s.values.iter().any(|v| *v < 0.0);
        let direction = match (pos, neg) {
            (true, false) => Direction::Max,
            (false, true) => Direction::Min,
            _ => anyhow::bail!(
                "the weights of `{}` are {}: say whether more of it is better with --objective {}=max or {}=min",
                s.signal,
                if pos { "of both signs" } else { "all 0" },
                s.signal,
                s.signal
            ),
        };
        out.push(Objective {
            signal: s.signal.clone(),
            direction,
        });
    }
    Ok(out)
}

/// For each point (its objective values, aligned with `objectives`),
/// whether it is Pareto-efficient: no other point is at least as good on
/// every objective and strictly better on one.
pub fn front(points: &[Vec<f64>], objectives: &[Objective]) -> Vec<bool> {
    let oriented = |p: &[f64]| -> Vec<f64> {
        p.iter()
            .zip(objectives)
            .map(|(v, o)| match o.direction {
                Direction::Max => *v,
                Direction::Min => -*v,
            })
            .collect()
    };
    let pts: Vec<Vec<f64>> = points.iter().map(|p| oriented(p)).collect();
    pts.iter()
        .map(|p| {
            !pts.iter().any(|q| {
                q.iter().zip(p).all(|(a, b)| a >= b) && q.iter().zip(p).any(|(a, b)| a > b)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(signal: &str, direction: Direction) -> Objective {
        Objective {
            signal: signal.into(),
            direction,
        }
    }

    #[test]
    fn the_front_keeps_exactly_the_undominated_points() {
        let o = [obj("opened", Direction::Max), obj("unsub", Direction::Min)];
        let points = vec![
            vec![0.30, 0.02],  // efficient: most opens
            vec![0.25, 0.01],  // efficient: fewer unsubscribes
            vec![0.24, 0.015], // dominated by the second
            vec![0.10, 0.001], // efficient: fewest unsubscribes
            vec![0.30, 0.03],  // dominated by the first (same opens, more unsubs)
        ];
        assert_eq!(front(&points, &o), vec![true, true, false, true, false]);
    }

    #[test]
    fn equal_points_do_not_dominate_each_other() {
        let o = [obj("a", Direction::Max)];
        assert_eq!(front(&[vec![1.0], vec![1.0]], &o), vec![true, true]);
    }

    #[test]
    fn directions_default_to_the_sign_of_the_weights() {
        let specs = [
            WeightSpec {
                signal: "opened".into(),
                values: vec![1.0],
            },
            WeightSpec {
                signal: "unsub".into(),
                values: vec![0.0, -5.0],
            },
        ];
        let o = objectives(&[], &specs, &[]).unwrap();
        assert_eq!(
            o,
            vec![obj("opened", Direction::Max), obj("unsub", Direction::Min)]
        );
        let mixed = [WeightSpec {
            signal: "x".into(),
            values: vec![-1.0, 1.0],
        }];
        assert!(objectives(&[], &mixed, &[]).is_err());
    }
}
