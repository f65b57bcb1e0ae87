//! Marginalized IPS over action embeddings (MIPS; Saito & Joachims 2022,
//! "Off-policy evaluation for large action spaces via embeddings"; OBP's
//! `MarginalizedInverseProbabilityWeighting`, whose exact-weight form this
//! follows).
//!
//! With many actions, IPW's weights `π_e(a|x) / π_b(a|x)` explode. When
//! the reward depends on the action only through an embedding `e` (an
//! item's category, say), the weight can be taken on the embedding
//! instead: `w(x, e) = p(e|x, π_e) / p(e|x, π_b)` with
//! `p(e|x, π) = Σ_a π(a|x) p(e|a)`, and `V̂ = mean_i w(x_i, e_i) r_i`.
//! Unbiased when the embedding carries everything about the action the
//! reward depends on, and with far smaller weights.
//!
//! `nudge-sim evaluate --action-embeddings FILE` gives each action one
//! category per embedding dimension (`p(e|a)` is then 1 or 0): the weight
//! is the ratio of the two policies' probabilities summed over the actions
//! sharing the logged action's embedding.

use anyhow::{Context, bail};
use std::collections::HashMap;
use std::path::Path;

/// `Σ_a π_e(a) p(e|a) / Σ_a π_b(a) p(e|a)`: the marginal weight of the
/// logged embedding `e`, given its probability `p_e[a]` under each action.
/// Contract: the three slices have one entry per action; the denominator
/// is positive (the logged action has `π_b > 0` and `p(e|a) > 0`).
pub fn marginal_weight(b: &[f64], e: &[f64], p_e: &[f64]) -> f64 {
    let (mut num, mut den) = (0.0, 0.0);
    for ((pb, pe), p) in b.iter().zip(e).zip(p_e) {
        num += pe * p;
        den += pb * p;
    }
    num / den
}

/// Action id → its category in each embedding dimension, from a CSV
/// `action,<dimension>,…` (a header, then one row per action).
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// The dimensions' names (the header after `action`).
    pub dims: Vec<String>,
    by_action: HashMap<String, Vec<String>>,
}

impl Embeddings {
    /// Reads the file; errors name the file, line and what was expected.
    pub fn load(path: &Path) -> anyhow::Result<Embeddings> {
        let mut reader = csv::ReaderBuilder::new().from_reader(super::source::open_input(path)?);
        let headers = reader
            .headers()
            .with_context(|| format!("{}: reading the header", path.display()))?
            .clone();
        if headers.get(0) != Some("action") || headers.len() < 2 {
            bail!(
                "{}:1: expected the header `action,<dimension>,…` (one column per embedding \
                 dimension), got `{}`",
                path.display(),
                headers.iter().collect::<Vec<_>>().join(",")
            );
        }
        let dims: Vec<String> = headers.iter().skip(1).map(str::to_string).collect();
        let mut by_action = HashMap::new();
        for (i, row) in reader.records().enumerate() {
            let line = i + 2;
            let row = row.with_context(|| format!("{}:{line}", path.display()))?;
            if row.len() != headers.len() {
                bail!(
                    "{}:{line}: {} fields, expected {} (action and {} dimensions)",
                    path.display(),
                    row.len(),
                    headers.len(),
                    dims.len()
                );
            }
            let action = row[0].to_string();
            let cats: Vec<String> = row.iter().skip(1).map(str::to_string).collect();
            if by_action.insert(action.clone(), cats).is_some() {
                bail!(
                    "{}:{line}: action {action:?} is listed twice",
                    path.display()
                );
            }
        }
        Ok(Embeddings { dims, by_action })
    }

    /// The embedding of `action`, if listed.
    pub fn of(&self, action: &str) -> Option<&[String]> {
        self.by_action.get(action).map(Vec::as_slice)
    }
}

/// Running sums of MIPS contributions `w(x_i, e_i) r_i`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MipsSums {
    n: u64,
    sum: f64,
    sq: f64,
    /// Largest marginal weight seen.
    pub max_weight: f64,
}

impl MipsSums {
    /// Adds one event's weight and reward.
    pub fn push(&mut self, weight: f64, reward: f64) {
        let c = weight * reward;
        self.n += 1;
        self.sum += c;
        self.sq += c * c;
        self.max_weight = self.max_weight.max(weight);
    }

    /// The estimate, keyed `mipw` (OBP's name), with its standard error and
    /// normal interval; `None` before any event.
    pub fn estimate(&self, alpha: f64) -> Option<super::Estimate> {
        if self.n == 0 {
            return None;
        }
        let (value, var) = super::estimators::mean_and_variance(self.n, self.sum, self.sq);
        Some(super::Estimate::of_mean("mipw", self.n, value, var, alpha))
    }
}
