//! Weight grids: `--weight NAME=V`, `NAME=A..B` and `NAME=V1,V2,…`.

use std::collections::BTreeMap;

/// Largest number of settings a grid may have.
pub const MAX_SETTINGS: usize = 10_000;

/// The values one signal's weight takes.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightSpec {
    /// The signal.
    pub signal: String,
    /// Its weights, in the order given.
    pub values: Vec<f64>,
}

/// Parses `NAME=V`, `NAME=A..B` (`steps` evenly spaced values from A to B,
/// both included) or `NAME=V1,V2,…`. Every value must be finite.
pub fn parse_weight(text: &str, steps: usize) -> anyhow::Result<WeightSpec> {
    let bad = |why: &str| {
        anyhow::anyhow!(
            "--weight {text:?}: {why}; expected NAME=V, NAME=A..B or NAME=V1,V2,… (e.g. unsubscribed=0..-10)"
        )
    };
    let (name, spec) = text.split_once('=').ok_or_else(|| bad("no `=`"))?;
    let name = name.trim();
    if !nudge::policy::spec::is_valid_id(name, 64) {
        return Err(bad(
            "the signal name is not 1 to 64 characters of [A-Za-z0-9_.-]",
        ));
    }
    let number = |s: &str| -> anyhow::Result<f64> {
        match s.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(bad(&format!("{:?} is not a finite number", s.trim()))),
        }
    };
    let values = if let Some((a, b)) = spec.split_once("..") {
        let (a, b) = (number(a)?, number(b)?);
        if steps < 2 {
            return Err(bad("--steps must be at least 2 for a range"));
        }
        (0..steps)
            .map(|i| {
                let v = a + (b - a) * i as f64 / (steps - 1) as f64;
                // Clean decimal values (0.1 * 3 prints as 0.30000000000000004).
                (v * 1e9).round() / 1e9
            })
            .collect()
    } else {
        spec.split(',')
            .map(number)
            .collect::<anyhow::Result<Vec<f64>>>()?
    };
    Ok(WeightSpec {
        signal: name.to_string(),
        values,
    })
}

/// Every combination of the specs' values (the first spec varies slowest).
/// A signal named twice is an error.
pub fn cartesian(specs: &[WeightSpec]) -> anyhow::Result<Vec<BTreeMap<String, f64>>> {
    let mut out = vec![BTreeMap::new()];
    for (i, s) in specs.iter().enumerate() {
        if specs[..i].iter().any(|o| o.signal == s.signal) {
            anyhow::bail!("--weight names `{}` twice", s.signal);
        }
        if out.len().saturating_mul(s.values.len()) > MAX_SETTINGS {
            anyhow::bail!("the grid has more than {MAX_SETTINGS} settings; use fewer values");
        }
        out = out
            .into_iter()
            .flat_map(|m| {
                s.values.iter().map(move |v| {
                    let mut m = m.clone();
                    m.insert(s.signal.clone(), *v);
                    m
                })
            })
            .collect();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_includes_both_ends() {
        let w = parse_weight("unsubscribed=0..-10", 5).unwrap();
        assert_eq!(w.values, vec![0.0, -2.5, -5.0, -7.5, -10.0]);
    }

    #[test]
    fn lists_and_single_values_parse() {
        assert_eq!(parse_weight("opened=1", 5).unwrap().values, vec![1.0]);
        assert_eq!(
            parse_weight("opened=1, 2,3", 5).unwrap().values,
            vec![1.0, 2.0, 3.0]
        );
    }

    #[test]
    fn malformed_weights_are_refused_with_the_reason() {
        for bad in ["opened", "opened=x", "opened=1..", "=1", "opened=nan"] {
            let e = parse_weight(bad, 5).unwrap_err().to_string();
            assert!(e.contains("expected NAME=V"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_grid_is_every_combination() {
        let g = cartesian(&[
            parse_weight("a=1,2", 5).unwrap(),
            parse_weight("b=0..-1", 3).unwrap(),
        ])
        .unwrap();
        assert_eq!(g.len(), 6);
        assert_eq!(g[1]["b"], -0.5);
        assert!(
            cartesian(&[
                parse_weight("a=1", 5).unwrap(),
                parse_weight("a=2", 5).unwrap()
            ])
            .is_err()
        );
    }
}
