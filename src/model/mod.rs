//! Model state: additive sufficient statistics, and the derived values
//! (`A⁻¹`, `θ`, a posterior factor) cached beside them.
//!
//! The stored state is the *data part* of ridge regression per arm (Li et
//! al. 2010, "A Contextual-Bandit Approach to Personalized News Article
//! Recommendation", Algorithm 1): `S = Σ x xᵀ`, `z = Σ r x`, the count and
//! the reward sum. The prior `λI` is added only when deriving
//! `A = λI + S`, so statistics from several replicas add up exactly:
//! applying `merge(d1, d2)` equals applying every observation serially.

pub mod codec;
mod linear;

pub(crate) use linear::dot;
pub use linear::{LinearModel, ModelError};

use ndarray::{Array1, Array2};
use std::collections::BTreeMap;

/// Sufficient statistics of one linear model (one arm, or the shared model).
#[derive(Debug, Clone, PartialEq)]
pub struct ArmStats {
    /// `Σ x xᵀ` over observations (without the ridge prior).
    pub xx: Array2<f64>,
    /// `Σ r x`.
    pub xr: Array1<f64>,
    /// Number of observations.
    pub count: u64,
    /// `Σ r`.
    pub reward_sum: f64,
}

impl ArmStats {
    /// Empty statistics of dimension `dim`.
    pub fn zeros(dim: usize) -> Self {
        ArmStats {
            xx: Array2::zeros((dim, dim)),
            xr: Array1::zeros(dim),
            count: 0,
            reward_sum: 0.0,
        }
    }

    /// Dimension `d` of the feature vectors.
    pub fn dim(&self) -> usize {
        self.xr.len()
    }

    /// Adds one observation `(x, r)`: `S += x xᵀ`, `z += r x`.
    ///
    /// Contract: `x.len() == dim()`, everything finite (checked by callers
    /// that take input: [`LinearModel::observe`], [`Delta::observe`]).
    pub fn add(&mut self, x: &[f64], reward: f64) {
        let d = x.len();
        for i in 0..d {
            let xi = x[i];
            if xi != 0.0 {
                let mut row = self.xx.row_mut(i);
                for (j, xj) in x.iter().enumerate() {
                    row[j] += xi * xj;
                }
            }
            self.xr[i] += reward * xi;
        }
        self.count += 1;
        self.reward_sum += reward;
    }

    /// Whether adding `(x, reward)` keeps every statistic finite. Inputs
    /// that are finite one by one can still overflow: `x xᵀ` of `x = 1e200`,
    /// `r x` of a huge reward, or a sum near `f64::MAX`. A model must never
    /// absorb an infinity (it would turn `A⁻¹` and `θ` into NaN for good), so
    /// observations are refused unless this holds. O(d²), like `add`.
    ///
    /// Contract: `x.len() == dim()`.
    pub fn can_add(&self, x: &[f64], reward: f64) -> bool {
        if !(self.reward_sum + reward).is_finite() {
            return false;
        }
        x.iter().enumerate().all(|(i, xi)| {
            (self.xr[i] + reward * xi).is_finite()
                && (*xi == 0.0
                    || self
                        .xx
                        .row(i)
                        .iter()
                        .zip(x)
                        .all(|(s, xj)| (s + xi * xj).is_finite()))
        })
    }

    /// Whether every statistic is finite.
    pub fn is_finite(&self) -> bool {
        self.reward_sum.is_finite()
            && self.xr.iter().all(|v| v.is_finite())
            && self.xx.iter().all(|v| v.is_finite())
    }

    /// Adds another arm's statistics (same dimension) into this one.
    pub fn merge(&mut self, other: &ArmStats) {
        self.xx += &other.xx;
        self.xr += &other.xr;
        self.count += other.count;
        self.reward_sum += other.reward_sum;
    }

    /// Mean observed reward, or `None` before the first observation.
    pub fn mean_reward(&self) -> Option<f64> {
        (self.count > 0).then(|| self.reward_sum / self.count as f64)
    }
}

/// The state of one policy's model: per-arm statistics and a version that
/// moves on every change (caches and replicas key on it).
#[derive(Debug, Clone, PartialEq)]
pub struct ModelState {
    /// Incremented once per applied observation or delta.
    pub version: u64,
    /// One entry per arm (disjoint mode) or a single entry (shared mode).
    pub arms: Vec<ArmStats>,
}

impl ModelState {
    /// A fresh state: `arms` empty models of dimension `dim`, version 0.
    pub fn new(dim: usize, arms: usize) -> Self {
        ModelState {
            version: 0,
            arms: (0..arms).map(|_| ArmStats::zeros(dim)).collect(),
        }
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.arms.first().map_or(0, ArmStats::dim)
    }

    /// Adds a delta (as a replica's accumulated updates) and bumps the
    /// version once.
    ///
    /// Errors if the delta's shape does not match; nothing is changed then.
    pub fn apply(&mut self, delta: &Delta) -> Result<(), ModelError> {
        delta.check_shape(self.dim(), self.arms.len())?;
        for (arm, stats) in &delta.arms {
            self.arms[*arm].merge(stats);
        }
        self.version += 1;
        Ok(())
    }
}

/// Observations accumulated since some point, sparse by arm: what a replica
/// sends to the shared store. Deltas merge by addition (commutative and
/// associative), so replicas never overwrite each other.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Delta {
    /// Statistics per touched arm.
    pub arms: BTreeMap<usize, ArmStats>,
}

impl Delta {
    /// Records one observation for `arm`, validating like
    /// [`LinearModel::observe`].
    pub fn observe(
        &mut self,
        arm: usize,
        x: &[f64],
        reward: f64,
        dim: usize,
    ) -> Result<(), ModelError> {
        linear::check_observation(x, reward, dim)?;
        let stats = self.arms.entry(arm).or_insert_with(|| ArmStats::zeros(dim));
        if !stats.can_add(x, reward) {
            return Err(ModelError::NotFinite {
                what: "statistics after the update",
            });
        }
        stats.add(x, reward);
        Ok(())
    }

    /// Adds another delta into this one.
    pub fn merge(&mut self, other: &Delta) {
        for (arm, stats) in &other.arms {
            match self.arms.get_mut(arm) {
                Some(mine) => mine.merge(stats),
                None => {
                    self.arms.insert(*arm, stats.clone());
                }
            }
        }
    }

    /// Total observations in the delta.
    pub fn count(&self) -> u64 {
        self.arms.values().map(|a| a.count).sum()
    }

    pub(crate) fn check_shape(&self, dim: usize, arms: usize) -> Result<(), ModelError> {
        for (arm, stats) in &self.arms {
            if *arm >= arms {
                return Err(ModelError::UnknownArm { arm: *arm, arms });
            }
            if stats.dim() != dim {
                return Err(ModelError::WrongDimension {
                    expected: dim,
                    got: stats.dim(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
