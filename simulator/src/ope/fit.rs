//! Reward models fitted by the tool for DM / DR (`--fit-reward-model`).
//!
//! The design follows OBP's `RegressionModel` with `fitting_method =
//! "normal"`: one model over `z = [x, onehot(a)]` (context features, then the
//! action's one-hot), fitted like scikit-learn's `Ridge(alpha)` (squared
//! loss, L2 penalty on the coefficients, unpenalised intercept) or
//! `LogisticRegression(C = 1/reg)` (log loss, same penalty; for 0/1
//! rewards). Estimates are cross-fitted (Chernozhukov et al. 2018, as OBP's
//! `fit_predict(n_folds)`): event `i` belongs to fold `i mod K` and its
//! `q̂(x_i, ·)` comes from the model fitted on the other folds, so the
//! reward model never saw the reward it corrects. `K = 1` fits on all
//! events.
//!
//! Features `x`: an OBD log's `user_feature_*` / `user-item_affinity_*`
//! columns (numbers as is, strings one-hot-hashed); a JSON log's context
//! hashed into [`HASH_DIM`] buckets (numbers and bools by name, vectors by
//! name and index, strings by name and value), so every event has the same
//! width whatever features it sends.
//!
//! Memory: the fit holds `x_i` (d f64), the action index and the reward of
//! every event, and the source is read twice (fit, then evaluate).

use super::source::{Filter, LogRecord, Source};
use anyhow::bail;
use indicatif::ProgressBar;
use ndarray::{Array1, Array2};
use ndarray_linalg::Solve;
use std::collections::HashMap;

/// Width of the hashed JSON-context feature vector.
pub const HASH_DIM: usize = 64;

/// The reward model family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// Ridge regression (any reward).
    Ridge,
    /// L2-regularised logistic regression (0/1 rewards).
    Logistic,
}

/// Numeric features of a logged event (see the module docs).
pub fn features_of(rec: &LogRecord) -> Vec<f64> {
    if let Some(ctx) = &rec.context {
        let mut x = vec![0.0; HASH_DIM];
        if let Some(map) = ctx.as_object() {
            for (name, v) in map {
                match v {
                    serde_json::Value::Number(n) => {
                        x[bucket(name.as_bytes(), b"")] += n.as_f64().unwrap_or(0.0)
                    }
                    serde_json::Value::Bool(b) => {
                        x[bucket(name.as_bytes(), b"")] += if *b { 1.0 } else { 0.0 }
                    }
                    serde_json::Value::String(s) => x[bucket(name.as_bytes(), s.as_bytes())] += 1.0,
                    serde_json::Value::Array(items) => {
                        for (j, item) in items.iter().enumerate() {
                            if let Some(f) = item.as_f64() {
                                x[bucket(name.as_bytes(), j.to_string().as_bytes())] += f;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        x
    } else {
        rec.features.clone()
    }
}

fn bucket(name: &[u8], value: &[u8]) -> usize {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in name.iter().chain(b"\x1f").chain(value) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % HASH_DIM as u64) as usize
}

/// Cross-fitted reward model: per fold, coefficients for `[x, onehot(a)]`
/// and an intercept.
pub struct Fitted {
    actions: Vec<String>,
    dim: usize,
    /// Per fold: (coefficients of length dim + n_actions, intercept).
    models: Vec<(Array1<f64>, f64)>,
    kind: Kind,
    /// Per event (in stream order): its features, to predict in pass 2.
    xs: Vec<f64>,
    ids: Vec<u64>,
}

impl Fitted {
    /// The actions the model knows (logged actions and candidates seen).
    pub fn actions(&self) -> &[String] {
        &self.actions
    }

    /// `q̂(x, a)` for every known action of event `index` (the index among
    /// events with a reward, in stream order), from the model of the other
    /// folds; appended to `out` as `(action, estimate)`.
    pub fn predict_all(
        &self,
        index: usize,
        rec: &LogRecord,
        out: &mut super::candidate::Pairs,
    ) -> anyhow::Result<()> {
        if index >= self.ids.len() || self.ids[index] != id_hash(&rec.event_id) {
            bail!(
                "{}: the log changed between the fitting pass and the evaluation pass",
                rec.origin
            );
        }
        let k = self.models.len();
        let (coef, intercept) = &self.models[index % k];
        let x = &self.xs[index * self.dim..(index + 1) * self.dim];
        let base: f64 = intercept + x.iter().zip(coef.iter()).map(|(a, b)| a * b).sum::<f64>();
        for (a, id) in self.actions.iter().enumerate() {
            let lin = base + coef[self.dim + a];
            let q = match self.kind {
                Kind::Ridge => lin,
                Kind::Logistic => 1.0 / (1.0 + (-lin).exp()),
            };
            out.push(id, q);
        }
        Ok(())
    }
}

fn id_hash(s: &str) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in s.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Reads the log once and fits `folds` cross-fitted models.
pub fn fit_cross(
    kind: Kind,
    source: &Source,
    filter: &Filter,
    folds: usize,
    reg: f64,
    mut windows: super::window::Windows,
    bar: ProgressBar,
) -> anyhow::Result<Fitted> {
    if !(reg.is_finite() && reg > 0.0) {
        bail!("--reg must be a positive number, got {reg}");
    }
    let mut actions: Vec<String> = Vec::new();
    let mut index_of: HashMap<String, usize> = HashMap::new();
    let mut xs = Vec::new();
    let mut acts = Vec::new();
    let mut ys = Vec::new();
    let mut ids = Vec::new();
    let mut dim = None;
    let mut intern = |a: &str, actions: &mut Vec<String>| -> usize {
        if let Some(i) = index_of.get(a) {
            return *i;
        }
        index_of.insert(a.to_string(), actions.len());
        actions.push(a.to_string());
        actions.len() - 1
    };
    for rec in source.open(filter, true)? {
        let rec = rec?;
        bar.inc(1);
        // The events the evaluation uses: those with a final outcome.
        let Some(reward) = windows.judge(&rec) else {
            continue;
        };
        if !reward.is_finite() {
            bail!("{}: field `reward`: {reward} is not finite", rec.origin);
        }
        if kind == Kind::Logistic && reward != 0.0 && reward != 1.0 {
            bail!(
                "{}: field `reward`: {reward}; a logistic reward model needs 0/1 rewards (use \
                 ridge)",
                rec.origin
            );
        }
        let x = features_of(&rec);
        match dim {
            None => dim = Some(x.len()),
            Some(d) if d != x.len() => bail!(
                "{}: {} features where earlier events had {d}",
                rec.origin,
                x.len()
            ),
            _ => {}
        }
        for c in &rec.candidates {
            intern(&c.id, &mut actions);
        }
        acts.push(intern(&rec.action, &mut actions));
        xs.extend_from_slice(&x);
        ys.push(reward);
        ids.push(id_hash(&rec.event_id));
    }
    bar.finish_and_clear();
    let n = ys.len();
    if n == 0 {
        bail!("no events with a reward to fit a reward model on");
    }
    if folds > n {
        bail!("--folds {folds} is more than the {n} events");
    }
    let dim = dim.unwrap_or(0);
    let p = dim + actions.len();
    let row = |i: usize, z: &mut [f64]| {
        z[..dim].copy_from_slice(&xs[i * dim..(i + 1) * dim]);
        z[dim..].iter_mut().for_each(|v| *v = 0.0);
        z[dim + acts[i]] = 1.0;
    };
    let mut models = Vec::with_capacity(folds);
    for k in 0..folds {
        let train: Vec<usize> = (0..n).filter(|i| folds == 1 || i % folds != k).collect();
        let model = match kind {
            Kind::Ridge => fit_ridge(&train, p, &row, &ys, reg)?,
            Kind::Logistic => fit_logistic(&train, p, &row, &ys, reg)?,
        };
        models.push(model);
    }
    Ok(Fitted {
        actions,
        dim,
        models,
        kind,
        xs,
        ids,
    })
}

/// scikit-learn `Ridge(alpha=reg, fit_intercept=True)`: centre z and y on
/// the training rows, solve `(Zcᵀ Zc + reg I) β = Zcᵀ yc`, intercept
/// `ȳ − z̄ᵀβ`.
fn fit_ridge(
    train: &[usize],
    p: usize,
    row: &dyn Fn(usize, &mut [f64]),
    ys: &[f64],
    reg: f64,
) -> anyhow::Result<(Array1<f64>, f64)> {
    let m = train.len() as f64;
    let mut z = vec![0.0; p];
    let mut mean_z = Array1::<f64>::zeros(p);
    let mut mean_y = 0.0;
    for &i in train {
        row(i, &mut z);
        for j in 0..p {
            mean_z[j] += z[j];
        }
        mean_y += ys[i];
    }
    mean_z /= m;
    mean_y /= m;
    let mut a = Array2::<f64>::zeros((p, p));
    let mut b = Array1::<f64>::zeros(p);
    for &i in train {
        row(i, &mut z);
        for j in 0..p {
            z[j] -= mean_z[j];
        }
        let yc = ys[i] - mean_y;
        for j in 0..p {
            if z[j] == 0.0 {
                continue;
            }
            b[j] += z[j] * yc;
            for l in 0..p {
                a[[j, l]] += z[j] * z[l];
            }
        }
    }
    for j in 0..p {
        a[[j, j]] += reg;
    }
    let beta = a
        .solve_into(b)
        .map_err(|e| anyhow::anyhow!("ridge reward model: cannot solve: {e}"))?;
    let intercept = mean_y - mean_z.dot(&beta);
    Ok((beta, intercept))
}

/// scikit-learn `LogisticRegression(C=1/reg)`: minimises
/// `Σ logloss + reg/2 ‖β‖²` (intercept unpenalised) by Newton's method to
/// a gradient norm below 1e-10.
fn fit_logistic(
    train: &[usize],
    p: usize,
    row: &dyn Fn(usize, &mut [f64]),
    ys: &[f64],
    reg: f64,
) -> anyhow::Result<(Array1<f64>, f64)> {
    // Parameters: [β (p), intercept].
    let q = p + 1;
    let mut theta = Array1::<f64>::zeros(q);
    let mut z = vec![0.0; q];
    for _ in 0..100 {
        let mut grad = Array1::<f64>::zeros(q);
        let mut hess = Array2::<f64>::zeros((q, q));
        for &i in train {
            row(i, &mut z[..p]);
            z[p] = 1.0;
            let lin: f64 = z.iter().zip(theta.iter()).map(|(a, b)| a * b).sum();
            let mu = 1.0 / (1.0 + (-lin).exp());
            let w = mu * (1.0 - mu);
            for j in 0..q {
                if z[j] == 0.0 {
                    continue;
                }
                grad[j] += (mu - ys[i]) * z[j];
                for l in 0..q {
                    hess[[j, l]] += w * z[j] * z[l];
                }
            }
        }
        for j in 0..p {
            grad[j] += reg * theta[j];
            hess[[j, j]] += reg;
        }
        let norm = grad.iter().map(|g| g * g).sum::<f64>().sqrt();
        if norm < 1e-10 {
            break;
        }
        let step = hess
            .solve_into(grad)
            .map_err(|e| anyhow::anyhow!("logistic reward model: cannot solve: {e}"))?;
        theta -= &step;
    }
    let intercept = theta[p];
    Ok((theta.slice(ndarray::s![..p]).to_owned(), intercept))
}
