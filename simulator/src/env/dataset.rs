//! Full-feedback datasets (the supervised-to-bandit conversion of Dudík,
//! Langford & Li 2011): a CSV whose `x_<name>` columns are the context and
//! whose `r_<arm>` columns hold the reward of every arm. A run reveals only
//! the chosen arm's reward, and the oracle (the best arm of each row) is
//! known exactly.

use nudge::features::FeatureValue;
use std::path::Path;

/// A loaded dataset: rows of context and per-arm rewards.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// A name for event ids (the file stem).
    pub name: String,
    /// The arms, from the `r_<arm>` columns, in column order.
    pub arms: Vec<String>,
    /// Each row's context (empty cells omitted: the policy's default
    /// applies).
    pub contexts: Vec<Vec<(String, FeatureValue)>>,
    /// Each row's rewards, one per arm.
    pub rewards: Vec<Vec<f64>>,
}

/// Reads a full-feedback CSV. Cells of `x_` columns that parse as numbers
/// are numbers, others are strings (categorical features); `r_` cells must
/// be finite numbers. Every error names the file, the row and the column.
pub fn load_dataset(path: &Path) -> anyhow::Result<Dataset> {
    let file = path.display();
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_path(path)
        .map_err(|e| anyhow::anyhow!("{file}: cannot read: {e}"))?;
    let headers = reader
        .headers()
        .map_err(|e| anyhow::anyhow!("{file}: cannot read the header row: {e}"))?
        .clone();
    let mut xs = Vec::new();
    let mut rs = Vec::new();
    for (i, h) in headers.iter().enumerate() {
        if let Some(name) = h.strip_prefix("x_").filter(|n| !n.is_empty()) {
            xs.push((i, name.to_string()));
        } else if let Some(arm) = h.strip_prefix("r_").filter(|n| !n.is_empty()) {
            if rs.iter().any(|(_, a)| a == arm) {
                anyhow::bail!("{file}: column `{h}` appears twice");
            }
            rs.push((i, arm.to_string()));
        } else {
            anyhow::bail!(
                "{file}: column `{h}`: expected `x_<feature>` (context) or `r_<arm>` (reward of an arm)"
            );
        }
    }
    if rs.is_empty() {
        anyhow::bail!(
            "{file}: no `r_<arm>` column: a full-feedback dataset has one reward column per arm"
        );
    }
    let mut contexts = Vec::new();
    let mut rewards = Vec::new();
    for (row, record) in reader.records().enumerate() {
        // Row numbers as a spreadsheet shows them: the header is row 1.
        let line = row + 2;
        let record = record.map_err(|e| anyhow::anyhow!("{file}: row {line}: {e}"))?;
        let mut ctx = Vec::with_capacity(xs.len());
        for (i, name) in &xs {
            let cell = record.get(*i).unwrap_or("");
            if cell.is_empty() {
                continue;
            }
            let value = match cell.parse::<f64>() {
                Ok(v) if v.is_finite() => FeatureValue::Number(v),
                Ok(_) => anyhow::bail!(
                    "{file}: row {line}, column `x_{name}`: expected a finite number or a string, got {cell:?}"
                ),
                Err(_) => FeatureValue::Str(cell.to_string()),
            };
            ctx.push((name.clone(), value));
        }
        let mut r = Vec::with_capacity(rs.len());
        for (i, arm) in &rs {
            let cell = record.get(*i).unwrap_or("");
            match cell.parse::<f64>() {
                Ok(v) if v.is_finite() => r.push(v),
                _ => anyhow::bail!(
                    "{file}: row {line}, column `r_{arm}`: expected a finite number, got {cell:?}"
                ),
            }
        }
        contexts.push(ctx);
        rewards.push(r);
    }
    if contexts.is_empty() {
        anyhow::bail!("{file}: no data rows");
    }
    Ok(Dataset {
        name: path
            .file_stem()
            .map_or("dataset".into(), |s| s.to_string_lossy().into_owned()),
        arms: rs.into_iter().map(|(_, a)| a).collect(),
        contexts,
        rewards,
    })
}
