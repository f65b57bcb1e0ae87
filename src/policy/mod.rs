//! Policies: a validated spec plus the decision procedure
//! score → explore → sample, and learning from rewards.
//!
//! A [`Policy`] holds no model state: [`Policy::decide`] reads a
//! [`LinearModel`] and [`Policy::learn`] writes one, so the service can keep
//! the state wherever it lives (in-process, or a replica's copy of Redis)
//! and the simulator runs the very same code offline.

mod load;
mod parse;
mod raw;
mod score;
pub mod spec;

pub use load::{load_file, load_paths, load_paths_with_files};
pub use spec::{
    Aggregation, Algorithm, Learning, Mode, Params, PolicyError, PolicySpec, RewardError,
    RewardSpec, parse_policy,
};

use crate::explore::{self, SlateSlot, Stream};
use crate::features::{FeatureError, FeatureSource};
use crate::model::{LinearModel, ModelError};
use std::collections::HashSet;

/// A candidate action sent with a shared-mode request.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(
    deny_unknown_fields,
    bound(deserialize = "S: serde::Deserialize<'de> + Default")
)]
pub struct Candidate<S> {
    /// The caller's id of the action.
    pub id: String,
    /// Its features.
    #[serde(default)]
    pub features: S,
}

/// One decision request, borrowed from the caller.
#[derive(Debug, Clone, Copy)]
pub struct DecideRequest<'a, C: ?Sized, S> {
    /// Seeds every random draw of this decision.
    pub event_id: &'a str,
    /// Context features.
    pub context: &'a C,
    /// Candidate actions (shared mode only; must be empty in disjoint mode).
    pub actions: &'a [Candidate<S>],
    /// Ids of arms or candidates not to choose this time.
    pub excluded: &'a [String],
    /// Slate size (1 for a single action).
    pub k: usize,
}

impl<'a, C: ?Sized> DecideRequest<'a, C, Vec<(String, crate::features::FeatureValue)>> {
    /// A single-action request for a disjoint policy.
    pub fn disjoint(event_id: &'a str, context: &'a C) -> Self {
        DecideRequest {
            event_id,
            context,
            actions: &[],
            excluded: &[],
            k: 1,
        }
    }
}

/// A request the policy cannot decide; names the field at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecideError {
    /// A feature could not be encoded.
    #[error(transparent)]
    Feature(#[from] FeatureError),
    /// Shared mode without candidates, or every candidate excluded.
    #[error("no candidate actions to choose from")]
    NoCandidates,
    /// `actions` sent to a disjoint policy.
    #[error("this policy has fixed arms; `actions` is only for shared-mode policies")]
    ActionsNotAllowed,
    /// Two candidates share an id.
    #[error("duplicate action id {0:?}")]
    DuplicateAction(String),
    /// `excluded` names something that is not a candidate.
    #[error("excluded id {0:?} is not an arm or candidate of this request")]
    UnknownExcluded(String),
    /// `k` is 0 or larger than the number of candidates.
    #[error("slate size k = {k} must be between 1 and the {available} available candidates")]
    BadSlateSize {
        /// Requested.
        k: usize,
        /// Candidates left after exclusions.
        available: usize,
    },
    /// The model does not fit the policy (a state of another shape).
    #[error("model does not match the policy: {0}")]
    Model(String),
}

impl DecideError {
    /// The request field at fault, for API errors.
    pub fn field(&self) -> Option<String> {
        match self {
            DecideError::Feature(e) => Some(e.field()),
            DecideError::NoCandidates | DecideError::ActionsNotAllowed => Some("actions".into()),
            DecideError::DuplicateAction(_) => Some("actions".into()),
            DecideError::UnknownExcluded(_) => Some("excluded".into()),
            DecideError::BadSlateSize { .. } => Some("k".into()),
            DecideError::Model(_) => None,
        }
    }
}

/// The outcome of a decision: everything the log and the learner need.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// Candidates in request order: arm indices (disjoint) or indices into
    /// the request's `actions` (shared).
    pub candidates: Vec<usize>,
    /// Probability of each candidate being chosen first (sums to 1), aligned
    /// with `candidates`. The chosen action's entry is its propensity.
    pub probabilities: Vec<f64>,
    /// The ranked slate (`k` slots; slot 0 is the chosen action); each slot's
    /// `index` is a position in `candidates`.
    pub slate: Vec<SlateSlot>,
    /// Version of the model the decision was made with.
    pub model_version: u64,
    /// Feature vectors: one `x` (disjoint) or one row per candidate
    /// (shared), row-major, `dim` wide.
    vectors: Vec<f64>,
    dim: usize,
}

impl Decision {
    /// Position in `candidates` of the chosen action.
    pub fn chosen(&self) -> usize {
        self.slate[0].index
    }

    /// The chosen action's propensity.
    pub fn propensity(&self) -> f64 {
        self.probabilities[self.chosen()]
    }

    /// The model arm to credit a reward for the candidate at `position`:
    /// the arm itself (disjoint) or 0 (shared).
    pub fn arm_of(&self, position: usize, mode: Mode) -> usize {
        match mode {
            Mode::Disjoint => self.candidates[position],
            Mode::Shared => 0,
        }
    }

    /// Apprentice mode: the caller's choice, the candidate at `position`,
    /// replaces the policy's draw. The distribution becomes the caller's
    /// (probability 1 for it, 0 for every other candidate: a deterministic
    /// caller), the slate is that one action, and what the policy itself
    /// would have done is returned.
    pub fn follow(&mut self, position: usize) -> Followed {
        let own = Followed {
            agreed: self.chosen() == position,
            probability: self.probabilities[position],
        };
        self.probabilities.iter_mut().for_each(|p| *p = 0.0);
        self.probabilities[position] = 1.0;
        self.slate = vec![SlateSlot {
            index: position,
            probability: 1.0,
        }];
        own
    }

    /// The feature vector of the candidate at `position`.
    pub fn vector(&self, position: usize) -> &[f64] {
        if self.vectors.len() == self.dim {
            &self.vectors
        } else {
            &self.vectors[position * self.dim..(position + 1) * self.dim]
        }
    }
}

/// What the policy would have done, for a decision it followed
/// ([`Decision::follow`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Followed {
    /// The policy's own draw was the caller's choice.
    pub agreed: bool,
    /// The probability the policy gave the caller's choice.
    pub probability: f64,
}

/// A reward that cannot be learned.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LearnError {
    /// The reward itself is refused.
    #[error(transparent)]
    Reward(#[from] RewardError),
    /// The vector or arm does not fit the model.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// A validated policy, ready to decide.
#[derive(Debug, Clone)]
pub struct Policy {
    spec: PolicySpec,
}

impl Policy {
    /// Wraps a validated spec.
    pub fn new(spec: PolicySpec) -> Self {
        Policy { spec }
    }

    /// The spec.
    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    /// The policy id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// Number of models: arms in disjoint mode, 1 in shared mode.
    pub fn model_arms(&self) -> usize {
        match self.spec.mode {
            Mode::Disjoint => self.spec.arms.len(),
            Mode::Shared => 1,
        }
    }

    /// A fresh model shaped for this policy.
    pub fn new_model(&self) -> LinearModel {
        LinearModel::new(
            self.spec.features.dim(),
            self.model_arms(),
            self.spec.params.lambda,
            self.spec.params.refactor_every,
        )
    }

    /// Decides: encodes the request, scores the candidates with the model,
    /// turns scores into a distribution (with the exploration floor) and
    /// draws the action, or a slate of `k`, with an RNG seeded from the
    /// event id. The same (model version, request) always gives the same
    /// decision.
    pub fn decide<C, S>(
        &self,
        model: &LinearModel,
        req: &DecideRequest<'_, C, S>,
    ) -> Result<Decision, DecideError>
    where
        C: FeatureSource + ?Sized,
        S: FeatureSource,
    {
        let spec = &self.spec;
        let dim = spec.features.dim();
        if model.dim() != dim || model.arms() != self.model_arms() {
            return Err(DecideError::Model(format!(
                "model has {} arms of dimension {}, the policy needs {} of dimension {dim}",
                model.arms(),
                model.dim(),
                self.model_arms()
            )));
        }
        let (candidates, vectors) = match spec.mode {
            Mode::Disjoint => {
                if !req.actions.is_empty() {
                    return Err(DecideError::ActionsNotAllowed);
                }
                let mut x = vec![0.0; dim];
                spec.features.encode_context(req.context, &mut x)?;
                let candidates = self.disjoint_candidates(req.excluded)?;
                (candidates, x)
            }
            Mode::Shared => self.shared_candidates(req)?,
        };
        let n = candidates.len();
        if n == 0 {
            return Err(DecideError::NoCandidates);
        }
        if req.k == 0 || req.k > n {
            return Err(DecideError::BadSlateSize {
                k: req.k,
                available: n,
            });
        }
        let mut probabilities = vec![0.0; n];
        let ctx = score::Scoring {
            policy: spec,
            model,
            candidates: &candidates,
            vectors: &vectors,
            dim,
        };
        ctx.distribution(req.event_id, &mut probabilities);
        let mut rng = explore::event_rng(&spec.id, req.event_id, Stream::Sample);
        let slate = explore::sample_slate(&probabilities, req.k, &mut rng);
        Ok(Decision {
            candidates,
            probabilities,
            slate,
            model_version: model.version(),
            vectors,
            dim,
        })
    }

    fn disjoint_candidates(&self, excluded: &[String]) -> Result<Vec<usize>, DecideError> {
        if excluded.is_empty() {
            return Ok((0..self.spec.arms.len()).collect());
        }
        let mut out: Vec<usize> = (0..self.spec.arms.len()).collect();
        for id in excluded {
            let arm = self
                .spec
                .arm_index(id)
                .ok_or_else(|| DecideError::UnknownExcluded(id.clone()))?;
            out.retain(|a| *a != arm);
        }
        Ok(out)
    }

    fn shared_candidates<C, S>(
        &self,
        req: &DecideRequest<'_, C, S>,
    ) -> Result<(Vec<usize>, Vec<f64>), DecideError>
    where
        C: FeatureSource + ?Sized,
        S: FeatureSource,
    {
        let features = &self.spec.features;
        let dim = features.dim();
        if req.actions.is_empty() {
            return Err(DecideError::NoCandidates);
        }
        let mut seen = HashSet::with_capacity(req.actions.len());
        for a in req.actions {
            if !seen.insert(a.id.as_str()) {
                return Err(DecideError::DuplicateAction(a.id.clone()));
            }
        }
        for id in req.excluded {
            if !seen.contains(id.as_str()) {
                return Err(DecideError::UnknownExcluded(id.clone()));
            }
        }
        let candidates: Vec<usize> = (0..req.actions.len())
            .filter(|i| !req.excluded.contains(&req.actions[*i].id))
            .collect();
        let mut row = vec![0.0; dim];
        features.encode_context(req.context, &mut row)?;
        let mut vectors = Vec::with_capacity(candidates.len() * dim);
        for &i in &candidates {
            features.encode_action(&req.actions[i].features, i, &mut row)?;
            vectors.extend_from_slice(&row);
        }
        Ok((candidates, vectors))
    }

    /// Learns one reward for the candidate at `position` of `decision`.
    /// Checks the reward against the policy's range first; the model is
    /// unchanged on any error.
    pub fn learn(
        &self,
        model: &mut LinearModel,
        decision: &Decision,
        position: usize,
        reward: f64,
    ) -> Result<(), LearnError> {
        let reward = self.spec.reward.check(reward)?;
        let arm = decision.arm_of(position, self.spec.mode);
        model.observe(arm, decision.vector(position), reward)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests;
