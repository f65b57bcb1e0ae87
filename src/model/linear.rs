//! A model state with its derived ridge-regression quantities.

use super::{ArmStats, Delta, ModelState};
use ndarray::{Array1, Array2, ArrayView1};
use ndarray_linalg::{Cholesky, FactorizeC, InverseC, UPLO};
use std::sync::Arc;
use std::sync::OnceLock;

/// Why an observation or state was refused. The model is unchanged then.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// The feature vector has the wrong length.
    #[error("feature vector has length {got}, the model has dimension {expected}")]
    WrongDimension {
        /// Model dimension.
        expected: usize,
        /// Length given.
        got: usize,
    },
    /// NaN or an infinity in `x`, the reward, or the statistics the
    /// update (or a delta, or a loaded state) would leave.
    #[error("{what} must be finite")]
    NotFinite {
        /// `"reward"`, `"feature vector"` or `"statistics …"`.
        what: &'static str,
    },
    /// Arm index out of range.
    #[error("arm {arm} does not exist (the model has {arms})")]
    UnknownArm {
        /// Index given.
        arm: usize,
        /// Arms in the model.
        arms: usize,
    },
    /// `λI + S` is not positive definite (only possible for corrupt state,
    /// since `S` is a sum of outer products and `λ > 0`).
    #[error("arm {arm}: λI + Σxxᵀ is not positive definite")]
    NotPositiveDefinite {
        /// The arm.
        arm: usize,
    },
}

/// Validates one observation: finite, of the model's dimension.
pub(crate) fn check_observation(x: &[f64], reward: f64, dim: usize) -> Result<(), ModelError> {
    if x.len() != dim {
        return Err(ModelError::WrongDimension {
            expected: dim,
            got: x.len(),
        });
    }
    if !reward.is_finite() {
        return Err(ModelError::NotFinite { what: "reward" });
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(ModelError::NotFinite {
            what: "feature vector",
        });
    }
    Ok(())
}

/// Derived values of one arm, valid for the arm's current statistics.
#[derive(Debug, Clone)]
struct Derived {
    /// `A⁻¹ = (λI + S)⁻¹`, kept symmetric.
    a_inv: Array2<f64>,
    /// `θ = A⁻¹ z`.
    theta: Array1<f64>,
    /// Sherman–Morrison steps since the last full factorisation.
    since_refactor: u32,
    /// Lower Cholesky factor `L` of `A⁻¹` (`A⁻¹ = L Lᵀ`), computed on first
    /// use after a change: only Thompson sampling over a shared model needs
    /// it, and only once per model version.
    posterior_factor: OnceLock<Array2<f64>>,
}

/// One arm: statistics and the values derived from them.
#[derive(Debug, Clone)]
struct Arm {
    stats: ArmStats,
    derived: Derived,
}

/// Sufficient statistics plus cached `A⁻¹` and `θ` per arm.
///
/// Invariant: every arm's cache matches its statistics to floating-point
/// accuracy. Single observations update `A⁻¹` in O(d²) by Sherman–Morrison;
/// every `refactor_every` of them (and after any delta or load) it is
/// recomputed from the statistics by a Cholesky factorisation, so rounding
/// cannot accumulate.
///
/// Cloning is cheap: arms are shared copy-on-write, so a replica can clone
/// the live model, learn a few rewards (copying only the arms they touch)
/// and publish the result while decisions keep reading the old one.
#[derive(Debug, Clone)]
pub struct LinearModel {
    version: u64,
    lambda: f64,
    refactor_every: u32,
    arms: Vec<Arc<Arm>>,
}

impl LinearModel {
    /// A fresh model with `arms` arms of dimension `dim` and ridge `lambda`.
    ///
    /// Contract: `lambda > 0` and `refactor_every >= 1` (a validated policy
    /// guarantees both).
    pub fn new(dim: usize, arms: usize, lambda: f64, refactor_every: u32) -> Self {
        Self::from_state(ModelState::new(dim, arms), lambda, refactor_every)
            .expect("λI is positive definite for λ > 0")
    }

    /// Wraps a loaded state, deriving every arm's cache.
    pub fn from_state(
        state: ModelState,
        lambda: f64,
        refactor_every: u32,
    ) -> Result<Self, ModelError> {
        let arms = state
            .arms
            .into_iter()
            .enumerate()
            .map(|(i, stats)| {
                let derived = derive(&stats, lambda, i)?;
                Ok(Arc::new(Arm { stats, derived }))
            })
            .collect::<Result<_, _>>()?;
        Ok(LinearModel {
            version: state.version,
            lambda,
            refactor_every: refactor_every.max(1),
            arms,
        })
    }

    /// A copy of the statistics and version (for encoding and inspection).
    pub fn state(&self) -> ModelState {
        ModelState {
            version: self.version,
            arms: self.arms.iter().map(|a| a.stats.clone()).collect(),
        }
    }

    /// The statistics of one arm.
    pub fn stats(&self, arm: usize) -> &ArmStats {
        &self.arms[arm].stats
    }

    /// Version of the statistics.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Feature dimension `d`.
    pub fn dim(&self) -> usize {
        self.arms.first().map_or(0, |a| a.stats.dim())
    }

    /// Number of arms (1 for a shared model).
    pub fn arms(&self) -> usize {
        self.arms.len()
    }

    /// Ridge parameter `λ`.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    /// `θ_a`.
    pub fn theta(&self, arm: usize) -> ArrayView1<'_, f64> {
        self.arms[arm].derived.theta.view()
    }

    /// The cached `A_a⁻¹`.
    pub fn a_inv(&self, arm: usize) -> &Array2<f64> {
        &self.arms[arm].derived.a_inv
    }

    /// Ridge estimate of the reward: `θ_aᵀ x`.
    pub fn mean(&self, arm: usize, x: &[f64]) -> f64 {
        dot(
            self.arms[arm].derived.theta.as_slice().expect("contiguous"),
            x,
        )
    }

    /// The quadratic form `xᵀ A_a⁻¹ x` (the squared confidence width of Li et
    /// al. 2010 before `α`, and the posterior variance of `θᵀx` before `v²`
    /// in Agrawal & Goyal 2013). Never negative.
    pub fn quad_form(&self, arm: usize, x: &[f64]) -> f64 {
        let a_inv = &self.arms[arm].derived.a_inv;
        // A⁻¹ is symmetric: Σᵢ xᵢ (Mᵢᵢ xᵢ + 2 Σ_{j>i} Mᵢⱼ xⱼ) reads only the
        // upper triangle, half the multiplications of the full form.
        let mut total = 0.0;
        for (i, xi) in x.iter().enumerate() {
            if *xi != 0.0 {
                let row = a_inv.row(i);
                let row = row.as_slice().expect("contiguous");
                total += xi * (row[i] * xi + 2.0 * dot(&row[i + 1..], &x[i + 1..]));
            }
        }
        total.max(0.0)
    }

    /// Lower-triangular `L` with `A_a⁻¹ = L Lᵀ`, for drawing
    /// `θ̃ = θ + v L z ~ N(θ, v² A⁻¹)`. Computed once per version.
    pub fn posterior_factor(&self, arm: usize) -> &Array2<f64> {
        let d = &self.arms[arm].derived;
        d.posterior_factor.get_or_init(|| {
            let sym = symmetrized(&d.a_inv);
            sym.cholesky(UPLO::Lower).unwrap_or_else(|_| {
                // A⁻¹ of a positive-definite A is positive definite, but
                // rounding in a badly scaled model can still defeat LAPACK.
                // The diagonal keeps each coordinate's marginal variance.
                Array2::from_diag(&sym.diag().mapv(|v| v.max(0.0).sqrt()))
            })
        })
    }

    /// Learns one observation: updates statistics, `A⁻¹` (Sherman–Morrison,
    /// Sherman & Morrison 1950: `(A + xxᵀ)⁻¹ = A⁻¹ − A⁻¹x xᵀA⁻¹ / (1 + xᵀA⁻¹x)`)
    /// and `θ`, in O(d²), and bumps the version.
    ///
    /// Refuses (leaving everything unchanged) a non-finite value, a wrong
    /// length or an unknown arm.
    pub fn observe(&mut self, arm: usize, x: &[f64], reward: f64) -> Result<(), ModelError> {
        check_observation(x, reward, self.dim())?;
        let arms = self.arms.len();
        let slot = self
            .arms
            .get_mut(arm)
            .ok_or(ModelError::UnknownArm { arm, arms })?;
        if !slot.stats.can_add(x, reward) {
            return Err(ModelError::NotFinite {
                what: "statistics after the update",
            });
        }
        let Arm { stats, derived: d } = Arc::make_mut(slot);
        stats.add(x, reward);
        self.version += 1;
        d.since_refactor += 1;
        d.posterior_factor = OnceLock::new();
        if d.since_refactor >= self.refactor_every {
            *d = derive(stats, self.lambda, arm)?;
            return Ok(());
        }
        let n = x.len();
        let mut u = vec![0.0; n];
        for (i, ui) in u.iter_mut().enumerate() {
            *ui = dot(d.a_inv.row(i).as_slice().expect("contiguous"), x);
        }
        let denom = 1.0 + dot(&u, x);
        for i in 0..n {
            let scale = u[i] / denom;
            if scale != 0.0 {
                let mut row = d.a_inv.row_mut(i);
                for (j, uj) in u.iter().enumerate() {
                    row[j] -= scale * uj;
                }
            }
        }
        d.theta = d.a_inv.dot(&stats.xr);
        Ok(())
    }

    /// Adds a delta (several observations, perhaps from another replica)
    /// and re-derives the touched arms. All or nothing: a bad delta changes
    /// nothing.
    pub fn apply(&mut self, delta: &Delta) -> Result<(), ModelError> {
        delta.check_shape(self.dim(), self.arms.len())?;
        let mut updated = Vec::with_capacity(delta.arms.len());
        for (arm, extra) in &delta.arms {
            let mut stats = self.arms[*arm].stats.clone();
            stats.merge(extra);
            let derived = derive(&stats, self.lambda, *arm)?;
            updated.push((*arm, Arm { stats, derived }));
        }
        for (arm, a) in updated {
            self.arms[arm] = Arc::new(a);
        }
        self.version += 1;
        Ok(())
    }
}

/// `A = λI + S`, `A⁻¹` through its Cholesky factorisation, `θ = A⁻¹ z`.
fn derive(stats: &ArmStats, lambda: f64, arm: usize) -> Result<Derived, ModelError> {
    // A merged delta can overflow even when each part is finite.
    if !stats.is_finite() {
        return Err(ModelError::NotFinite { what: "statistics" });
    }
    let d = stats.dim();
    let mut a = stats.xx.clone();
    for i in 0..d {
        a[[i, i]] += lambda;
    }
    let a_inv = if d == 0 {
        a
    } else {
        let inv = a
            .factorizec(UPLO::Lower)
            .and_then(|f| f.invc())
            .map_err(|_| ModelError::NotPositiveDefinite { arm })?;
        symmetrized(&inv)
    };
    if a_inv.iter().any(|v| !v.is_finite()) {
        return Err(ModelError::NotPositiveDefinite { arm });
    }
    let theta = a_inv.dot(&stats.xr);
    Ok(Derived {
        a_inv,
        theta,
        since_refactor: 0,
        posterior_factor: OnceLock::new(),
    })
}

fn symmetrized(m: &Array2<f64>) -> Array2<f64> {
    (m + &m.t()) * 0.5
}

/// Dot product with four independent accumulators: floating-point addition
/// is not reassociated by the compiler, so a single running sum would be one
/// long dependency chain.
#[inline]
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f64; 4];
    let chunks = n / 4;
    for c in 0..chunks {
        let i = c * 4;
        acc[0] += a[i] * b[i];
        acc[1] += a[i + 1] * b[i + 1];
        acc[2] += a[i + 2] * b[i + 2];
        acc[3] += a[i + 3] * b[i + 3];
    }
    let mut tail = 0.0;
    for i in chunks * 4..n {
        tail += a[i] * b[i];
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}
