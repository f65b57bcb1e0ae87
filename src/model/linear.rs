//! A model state with its derived ridge-regression quantities.

use super::{ArmStats, Delta, ModelState};
use ndarray::{Array1, Array2, ArrayView1};
use ndarray_linalg::{Cholesky, FactorizeC, InverseC, UPLO};
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
    /// NaN or an infinity in `x` or the reward.
    #[error("{what} must be finite")]
    NotFinite {
        /// `"reward"` or `"feature vector"`.
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
#[derive(Debug)]
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

/// Sufficient statistics plus cached `A⁻¹` and `θ` per arm.
///
/// Invariant: every arm's cache matches its statistics to floating-point
/// accuracy. Single observations update `A⁻¹` in O(d²) by Sherman–Morrison;
/// every `refactor_every` of them (and after any delta or load) it is
/// recomputed from the statistics by a Cholesky factorisation, so rounding
/// cannot accumulate.
#[derive(Debug)]
pub struct LinearModel {
    state: ModelState,
    lambda: f64,
    refactor_every: u32,
    derived: Vec<Derived>,
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
        let derived = state
            .arms
            .iter()
            .enumerate()
            .map(|(i, s)| derive(s, lambda, i))
            .collect::<Result<_, _>>()?;
        Ok(LinearModel {
            state,
            lambda,
            refactor_every: refactor_every.max(1),
            derived,
        })
    }

    /// The statistics and version.
    pub fn state(&self) -> &ModelState {
        &self.state
    }

    /// Consumes the model, returning its statistics.
    pub fn into_state(self) -> ModelState {
        self.state
    }

    /// Version of the statistics.
    pub fn version(&self) -> u64 {
        self.state.version
    }

    /// Feature dimension `d`.
    pub fn dim(&self) -> usize {
        self.state.dim()
    }

    /// Number of arms (1 for a shared model).
    pub fn arms(&self) -> usize {
        self.state.arms.len()
    }

    /// Ridge parameter `λ`.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }

    /// `θ_a`.
    pub fn theta(&self, arm: usize) -> ArrayView1<'_, f64> {
        self.derived[arm].theta.view()
    }

    /// The cached `A_a⁻¹`.
    pub fn a_inv(&self, arm: usize) -> &Array2<f64> {
        &self.derived[arm].a_inv
    }

    /// Ridge estimate of the reward: `θ_aᵀ x`.
    pub fn mean(&self, arm: usize, x: &[f64]) -> f64 {
        dot(self.derived[arm].theta.as_slice().expect("contiguous"), x)
    }

    /// The quadratic form `xᵀ A_a⁻¹ x` (the squared confidence width of Li et
    /// al. 2010 before `α`, and the posterior variance of `θᵀx` before `v²`
    /// in Agrawal & Goyal 2013). Never negative.
    pub fn quad_form(&self, arm: usize, x: &[f64]) -> f64 {
        let a_inv = &self.derived[arm].a_inv;
        let mut total = 0.0;
        for (i, xi) in x.iter().enumerate() {
            if *xi != 0.0 {
                total += xi * dot(a_inv.row(i).as_slice().expect("contiguous"), x);
            }
        }
        total.max(0.0)
    }

    /// Lower-triangular `L` with `A_a⁻¹ = L Lᵀ`, for drawing
    /// `θ̃ = θ + v L z ~ N(θ, v² A⁻¹)`. Computed once per version.
    pub fn posterior_factor(&self, arm: usize) -> &Array2<f64> {
        let d = &self.derived[arm];
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
        let arms = self.arms();
        let stats = self
            .state
            .arms
            .get_mut(arm)
            .ok_or(ModelError::UnknownArm { arm, arms })?;
        stats.add(x, reward);
        self.state.version += 1;
        let d = &mut self.derived[arm];
        d.since_refactor += 1;
        d.posterior_factor = OnceLock::new();
        if d.since_refactor >= self.refactor_every {
            *d = derive(&self.state.arms[arm], self.lambda, arm)?;
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
        d.theta = d.a_inv.dot(&stats_ref(&self.state, arm).xr);
        Ok(())
    }

    /// Adds a delta (several observations, perhaps from another replica)
    /// and re-derives the touched arms. All or nothing: a bad delta changes
    /// nothing.
    pub fn apply(&mut self, delta: &Delta) -> Result<(), ModelError> {
        let mut next = self.state.clone();
        next.apply(delta)?;
        let mut derived = Vec::with_capacity(delta.arms.len());
        for arm in delta.arms.keys() {
            derived.push((*arm, derive(&next.arms[*arm], self.lambda, *arm)?));
        }
        self.state = next;
        for (arm, d) in derived {
            self.derived[arm] = d;
        }
        Ok(())
    }

    /// Re-derives every arm from the statistics (what a refresh does).
    pub fn refactor(&mut self) -> Result<(), ModelError> {
        for (arm, stats) in self.state.arms.iter().enumerate() {
            self.derived[arm] = derive(stats, self.lambda, arm)?;
        }
        Ok(())
    }
}

fn stats_ref(state: &ModelState, arm: usize) -> &ArmStats {
    &state.arms[arm]
}

/// `A = λI + S`, `A⁻¹` through its Cholesky factorisation, `θ = A⁻¹ z`.
fn derive(stats: &ArmStats, lambda: f64, arm: usize) -> Result<Derived, ModelError> {
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

/// Plain dot product; the compiler vectorises it.
#[inline]
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}
