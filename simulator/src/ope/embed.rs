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
    /// Reads the file: a CSV (compressed by extension), or Parquet when
    /// [`super::parquet::parquet_path`] says so (a `.parquet` file, a
    /// directory of them, `parquet:PATH`), with the same columns (any
    /// column type, read as text). Errors name the file, the line (CSV) or
    /// row (Parquet), and what was expected.
    pub fn load(path: &Path) -> anyhow::Result<Embeddings> {
        if let Some(p) = super::parquet::parquet_path(&path.to_string_lossy()) {
            let (headers, rows) = super::parquet::string_table(&p)?;
            return Embeddings::of_rows(path, headers, rows.into_iter().map(Ok));
        }
        let mut reader = csv::ReaderBuilder::new().from_reader(super::source::open_input(path)?);
        let headers: Vec<String> = reader
            .headers()
            .with_context(|| format!("{}: reading the header", path.display()))?
            .iter()
            .map(str::to_string)
            .collect();
        let rows = reader.into_records().enumerate().map(|(i, row)| {
            let row = row.with_context(|| format!("{}:{}", path.display(), i + 2))?;
            Ok((
                format!("{}:{}", path.display(), i + 2),
                row.iter().map(str::to_string).collect(),
            ))
        });
        Embeddings::of_rows(path, headers, rows)
    }

    /// The table `action,<dimension>,…`: each row with where it is (for
    /// errors) and its cells.
    fn of_rows(
        path: &Path,
        headers: Vec<String>,
        rows: impl Iterator<Item = anyhow::Result<(String, Vec<String>)>>,
    ) -> anyhow::Result<Embeddings> {
        if headers.first().map(String::as_str) != Some("action") || headers.len() < 2 {
            bail!(
                "{}:1: expected the header `action,<dimension>,…` (one column per embedding \
                 dimension), got `{}`",
                path.display(),
                headers.join(",")
            );
        }
        let dims: Vec<String> = headers[1..].to_vec();
        let mut by_action = HashMap::new();
        for row in rows {
            let (at, mut row) = row?;
            if row.len() != headers.len() {
                bail!(
                    "{at}: {} fields, expected {} (action and {} dimensions)",
                    row.len(),
                    headers.len(),
                    dims.len()
                );
            }
            let cats = row.split_off(1);
            let action = row.pop().expect("one cell left");
            if by_action.insert(action.clone(), cats).is_some() {
                bail!("{at}: action {action:?} is listed twice");
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
