//! Feature specification and vectorisation: named context and action
//! features become the dense `f64` vector `x` the linear models see.
//!
//! Layout of `x` (fixed by the spec, computed once at parse time):
//! `[bias][context features…][action features…][interactions…]`. Each
//! feature owns a contiguous slot `offset..offset + width`, so encoding a
//! request is a single pass that writes into a caller-provided buffer; the
//! hot path allocates nothing per feature.

mod value;

pub use value::{
    FeatureRef, FeatureSource, FeatureValue, Features, MAX_FEATURES, MAX_NAME_LEN, MAX_STRING_LEN,
    MAX_VECTOR_LEN,
};

use std::collections::HashMap;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Largest magnitude of an encoded feature value (after standardisation).
///
/// Finite is not enough: a model learns `x xᵀ`, so a value of `1e200` is
/// finite but its square is infinite, and one such observation would poison
/// the statistics for good. At `1e9`, an interaction (a product of two
/// slots) stays within `1e18` and its square within `1e36`, so sums over any
/// realistic number of observations stay finite with a wide margin, while
/// any sensibly scaled feature (standardised values, embeddings, counts,
/// even raw prices in cents) fits.
pub const MAX_MAGNITUDE: f64 = 1e9;

/// How one named feature becomes numbers.
///
/// Its `Debug` output is deterministic (the one-hot lookup table, a
/// `HashMap` in random order, is left out: it is the vocabulary's), so the
/// digest of a policy's `Debug` text is the same in every process
/// ([`crate::service::reload::manifest`]).
#[derive(Clone, PartialEq)]
pub enum FeatureKind {
    /// A number (booleans are accepted as 0/1), standardised as
    /// `(value - mean) / std`.
    Number {
        mean: f64,
        std: f64,
        default: Option<f64>,
    },
    /// A string one-hot encoded over `vocabulary`, with a last "other" slot
    /// for any value outside it.
    OneHot {
        vocabulary: Vec<String>,
        index: HashMap<String, usize>,
        default: Option<String>,
    },
    /// A string hashed (xxh3, stable across platforms and releases) into
    /// `buckets` one-hot slots.
    Hashed {
        buckets: usize,
        default: Option<String>,
    },
    /// A fixed-length numeric vector, e.g. an upstream embedding.
    Vector {
        len: usize,
        default: Option<Vec<f64>>,
    },
}

impl std::fmt::Debug for FeatureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FeatureKind::Number { mean, std, default } => f
                .debug_struct("Number")
                .field("mean", mean)
                .field("std", std)
                .field("default", default)
                .finish(),
            FeatureKind::OneHot {
                vocabulary,
                default,
                ..
            } => f
                .debug_struct("OneHot")
                .field("vocabulary", vocabulary)
                .field("default", default)
                .finish(),
            FeatureKind::Hashed { buckets, default } => f
                .debug_struct("Hashed")
                .field("buckets", buckets)
                .field("default", default)
                .finish(),
            FeatureKind::Vector { len, default } => f
                .debug_struct("Vector")
                .field("len", len)
                .field("default", default)
                .finish(),
        }
    }
}

impl FeatureKind {
    /// Number of slots this feature occupies in `x`.
    pub fn width(&self) -> usize {
        match self {
            FeatureKind::Number { .. } => 1,
            FeatureKind::OneHot { vocabulary, .. } => vocabulary.len() + 1,
            FeatureKind::Hashed { buckets, .. } => *buckets,
            FeatureKind::Vector { len, .. } => *len,
        }
    }

    /// A short name of the kind, as written in policy files.
    pub fn type_name(&self) -> &'static str {
        match self {
            FeatureKind::Number { .. } => "number",
            FeatureKind::OneHot { .. } => "categorical",
            FeatureKind::Hashed { .. } => "hashed",
            FeatureKind::Vector { .. } => "vector",
        }
    }

    fn has_default(&self) -> bool {
        match self {
            FeatureKind::Number { default, .. } => default.is_some(),
            FeatureKind::OneHot { default, .. } | FeatureKind::Hashed { default, .. } => {
                default.is_some()
            }
            FeatureKind::Vector { default, .. } => default.is_some(),
        }
    }
}

/// One named feature and its slot in `x`.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureDef {
    /// The name callers send.
    pub name: String,
    /// How the value is encoded.
    pub kind: FeatureKind,
    /// First slot in `x` (for action features and interactions: in the full
    /// joint vector).
    pub offset: usize,
}

impl FeatureDef {
    /// Whether a request may omit this feature (it then takes its default).
    pub fn optional(&self) -> bool {
        self.kind.has_default()
    }
}

/// A declared cross between a context feature and an action feature:
/// the outer product of their encoded slots, flattened row-major
/// (Vowpal Wabbit's quadratic namespaces).
#[derive(Debug, Clone, PartialEq)]
pub struct Interaction {
    /// Index into [`FeatureSpec::context`].
    pub context: usize,
    /// Index into [`FeatureSpec::action`].
    pub action: usize,
    /// First slot in `x`.
    pub offset: usize,
}

/// What to do with a feature the spec does not declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownFeatures {
    /// Skip it silently (upstreams often send more than a policy uses).
    #[default]
    Ignore,
    /// Reject the request, naming the feature.
    Reject,
}

/// A validated feature specification with its slot layout.
///
/// Invariant (established by [`FeatureSpec::new`]): slots are contiguous,
/// non-overlapping and cover `0..dim()`; names are unique per side.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureSpec {
    bias: bool,
    context: Vec<FeatureDef>,
    action: Vec<FeatureDef>,
    interactions: Vec<Interaction>,
    unknown: UnknownFeatures,
    context_dim: usize,
    dim: usize,
}

/// Where a feature error happened, so the API can name the field.
#[derive(Debug, Clone, PartialEq)]
pub enum FeatureSide {
    /// The request context.
    Context,
    /// The features of the candidate action at this index.
    Action(usize),
}

/// A request feature that cannot be encoded; names the feature.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("feature `{feature}`: {problem}")]
pub struct FeatureError {
    /// Context or which action.
    pub side: FeatureSide,
    /// The feature's name as sent.
    pub feature: String,
    /// What is wrong with it.
    pub problem: FeatureProblem,
}

impl FeatureError {
    /// A dotted path to the offending field, as an HTTP error names it:
    /// `context.age` or `actions[2].features.price`.
    pub fn field(&self) -> String {
        match self.side {
            FeatureSide::Context => format!("context.{}", self.feature),
            FeatureSide::Action(i) => format!("actions[{i}].features.{}", self.feature),
        }
    }
}

/// The ways a feature value can be wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FeatureProblem {
    /// A required feature is absent.
    #[error("is required but missing")]
    Missing,
    /// The spec does not declare it and the policy rejects unknown features.
    #[error("is not declared by the policy")]
    Unknown,
    /// NaN or an infinity.
    #[error("must be a finite number")]
    NotFinite,
    /// Finite, but (after standardisation) beyond [`MAX_MAGNITUDE`].
    #[error("must be at most 1e9 in magnitude (after standardisation)")]
    TooLarge,
    /// The JSON type does not fit the declared kind.
    #[error("expected {expected}")]
    WrongType {
        /// What the spec declares.
        expected: &'static str,
    },
    /// A vector of the wrong length.
    #[error("expected a vector of length {expected}, got length {got}")]
    WrongLength {
        /// Declared length.
        expected: usize,
        /// Length sent.
        got: usize,
    },
}

/// A spec that cannot be laid out (duplicate names, bad interaction).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{0}")]
pub struct LayoutError(pub String);

impl FeatureSpec {
    /// Lays out the features: assigns every feature and interaction its slot.
    ///
    /// `context` and `action` are `(name, kind)` in declaration order;
    /// `interactions` are pairs of names (context, action).
    pub fn new(
        bias: bool,
        context: Vec<(String, FeatureKind)>,
        action: Vec<(String, FeatureKind)>,
        interactions: &[(String, String)],
        unknown: UnknownFeatures,
    ) -> Result<Self, LayoutError> {
        let mut offset = usize::from(bias);
        let context = lay_out(context, "context", &mut offset)?;
        let context_dim = offset;
        let action = lay_out(action, "action", &mut offset)?;
        let mut crosses = Vec::with_capacity(interactions.len());
        for (c, a) in interactions {
            let ci = context.iter().position(|d| &d.name == c).ok_or_else(|| {
                LayoutError(format!("interaction names unknown context feature `{c}`"))
            })?;
            let ai = action.iter().position(|d| &d.name == a).ok_or_else(|| {
                LayoutError(format!("interaction names unknown action feature `{a}`"))
            })?;
            if crosses
                .iter()
                .any(|i: &Interaction| i.context == ci && i.action == ai)
            {
                return Err(LayoutError(format!("duplicate interaction `{c}` x `{a}`")));
            }
            crosses.push(Interaction {
                context: ci,
                action: ai,
                offset,
            });
            offset = context[ci]
                .kind
                .width()
                .checked_mul(action[ai].kind.width())
                .and_then(|w| offset.checked_add(w))
                .ok_or_else(too_large)?;
        }
        Ok(FeatureSpec {
            bias,
            context,
            action,
            interactions: crosses,
            unknown,
            context_dim,
            dim: offset,
        })
    }

    /// Length of `x`.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Slots filled from the context alone (bias included).
    pub fn context_dim(&self) -> usize {
        self.context_dim
    }

    /// Context features in declaration order.
    pub fn context(&self) -> &[FeatureDef] {
        &self.context
    }

    /// Action features in declaration order (empty in disjoint mode).
    pub fn action(&self) -> &[FeatureDef] {
        &self.action
    }

    /// Declared interactions.
    pub fn interactions(&self) -> &[Interaction] {
        &self.interactions
    }

    /// Whether a constant 1 leads `x`.
    pub fn bias(&self) -> bool {
        self.bias
    }

    /// Encodes the context into `out[..context_dim()]` (bias and context
    /// features); the rest of `out` is left untouched.
    ///
    /// Contract: `out.len() >= self.dim()`. On error `out` holds garbage and
    /// must not be used.
    pub fn encode_context<S: FeatureSource + ?Sized>(
        &self,
        ctx: &S,
        out: &mut [f64],
    ) -> Result<(), FeatureError> {
        if self.bias {
            out[0] = 1.0;
        }
        encode_side(&self.context, self.unknown, ctx, FeatureSide::Context, out)
    }

    /// Encodes one candidate action into `out[context_dim()..]`, then writes
    /// the interactions, reading the context slots already in `out`.
    ///
    /// Contract: `out[..context_dim()]` holds this request's encoded context.
    pub fn encode_action<S: FeatureSource + ?Sized>(
        &self,
        action: &S,
        index: usize,
        out: &mut [f64],
    ) -> Result<(), FeatureError> {
        encode_side(
            &self.action,
            self.unknown,
            action,
            FeatureSide::Action(index),
            out,
        )?;
        for cross in &self.interactions {
            let c = &self.context[cross.context];
            let a = &self.action[cross.action];
            let (cw, aw) = (c.kind.width(), a.kind.width());
            let (head, tail) = out.split_at_mut(cross.offset);
            let cs = &head[c.offset..c.offset + cw];
            let av = &head[a.offset..a.offset + aw];
            for (i, ci) in cs.iter().enumerate() {
                for (j, aj) in av.iter().enumerate() {
                    tail[i * aw + j] = ci * aj;
                }
            }
        }
        Ok(())
    }
}

/// Assigns consecutive slots from `offset` on, refusing duplicate names.
fn lay_out(
    defs: Vec<(String, FeatureKind)>,
    side: &str,
    offset: &mut usize,
) -> Result<Vec<FeatureDef>, LayoutError> {
    let mut out: Vec<FeatureDef> = Vec::with_capacity(defs.len());
    for (name, kind) in defs {
        if out.iter().any(|d| d.name == name) {
            return Err(LayoutError(format!("duplicate {side} feature `{name}`")));
        }
        let width = kind.width();
        out.push(FeatureDef {
            name,
            kind,
            offset: *offset,
        });
        *offset = offset.checked_add(width).ok_or_else(too_large)?;
    }
    Ok(out)
}

/// Widths come from files: absurd ones (a vector of length 2⁶²) must be an
/// error, not an arithmetic overflow.
fn too_large() -> LayoutError {
    LayoutError("the feature vector's dimension overflows".into())
}

fn encode_side<S: FeatureSource + ?Sized>(
    defs: &[FeatureDef],
    unknown: UnknownFeatures,
    src: &S,
    side: FeatureSide,
    out: &mut [f64],
) -> Result<(), FeatureError> {
    let err = |def: &str, problem| FeatureError {
        side: side.clone(),
        feature: def.to_string(),
        problem,
    };
    let mut found = 0;
    for (i, def) in defs.iter().enumerate() {
        let slot = &mut out[def.offset..def.offset + def.kind.width()];
        let value = src.feature_near(&def.name, i);
        found += usize::from(value.is_some());
        encode_one(&def.kind, value, slot).map_err(|p| err(&def.name, p))?;
    }
    // Every present name that a declared feature found is declared; only a
    // source with more names than that needs the (quadratic) search for the
    // undeclared one.
    if unknown == UnknownFeatures::Reject
        && src.name_count() != Some(found)
        && let Some(name) = src.names().find(|n| !defs.iter().any(|d| d.name == *n))
    {
        return Err(err(name, FeatureProblem::Unknown));
    }
    Ok(())
}

fn encode_one(
    kind: &FeatureKind,
    value: Option<FeatureRef<'_>>,
    slot: &mut [f64],
) -> Result<(), FeatureProblem> {
    match kind {
        FeatureKind::Number { mean, std, default } => {
            let v = match value {
                Some(FeatureRef::Number(v)) => v,
                Some(FeatureRef::Bool(b)) => f64::from(u8::from(b)),
                Some(_) => {
                    return Err(FeatureProblem::WrongType {
                        expected: "a number",
                    });
                }
                None => default.ok_or(FeatureProblem::Missing)?,
            };
            if !v.is_finite() {
                return Err(FeatureProblem::NotFinite);
            }
            let encoded = (v - mean) / std;
            // Also catches an overflow to infinity from a tiny `std`.
            if encoded.is_nan() || encoded.abs() > MAX_MAGNITUDE {
                return Err(FeatureProblem::TooLarge);
            }
            slot[0] = encoded;
        }
        FeatureKind::OneHot { index, default, .. } => {
            let s = string_value(value, default.as_deref())?;
            slot.fill(0.0);
            // The last slot is "other": values outside the vocabulary.
            let i = index.get(s).copied().unwrap_or(slot.len() - 1);
            slot[i] = 1.0;
        }
        FeatureKind::Hashed { buckets, default } => {
            let s = string_value(value, default.as_deref())?;
            slot.fill(0.0);
            slot[hash_bucket(s, *buckets)] = 1.0;
        }
        FeatureKind::Vector { len, default } => {
            let v: &[f64] = match value {
                Some(FeatureRef::Vector(v)) => v,
                Some(_) => {
                    return Err(FeatureProblem::WrongType {
                        expected: "an array of numbers",
                    });
                }
                None => default.as_deref().ok_or(FeatureProblem::Missing)?,
            };
            if v.len() != *len {
                return Err(FeatureProblem::WrongLength {
                    expected: *len,
                    got: v.len(),
                });
            }
            // One pass in the common case (an infinity is > the bound too).
            if v.iter().any(|x| x.is_nan() || x.abs() > MAX_MAGNITUDE) {
                return Err(if v.iter().any(|x| !x.is_finite()) {
                    FeatureProblem::NotFinite
                } else {
                    FeatureProblem::TooLarge
                });
            }
            slot.copy_from_slice(v);
        }
    }
    Ok(())
}

fn string_value<'a>(
    value: Option<FeatureRef<'a>>,
    default: Option<&'a str>,
) -> Result<&'a str, FeatureProblem> {
    match value {
        Some(FeatureRef::Str(s)) => Ok(s),
        Some(_) => Err(FeatureProblem::WrongType {
            expected: "a string",
        }),
        None => default.ok_or(FeatureProblem::Missing),
    }
}

/// The bucket of a hashed categorical value: `xxh3_64(value) mod buckets`.
/// Stable across platforms and releases, so logged vectors stay meaningful.
pub fn hash_bucket(value: &str, buckets: usize) -> usize {
    (xxh3_64_with_seed(value.as_bytes(), 0) % buckets as u64) as usize
}

#[cfg(test)]
mod tests;
