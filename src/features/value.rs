//! Feature values as callers send them, and the lookup trait the encoder
//! reads through, so any map (or a borrowed request) can be encoded without
//! copying.

use std::collections::{BTreeMap, HashMap};

/// A borrowed feature value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FeatureRef<'a> {
    /// A number.
    Number(f64),
    /// A boolean (numeric features read it as 0/1).
    Bool(bool),
    /// A string (categorical features).
    Str(&'a str),
    /// A numeric vector (embeddings).
    Vector(&'a [f64]),
}

/// An owned feature value; deserialises from JSON `number | string | bool |
/// [numbers]`.
#[derive(Debug, Clone, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(untagged)]
pub enum FeatureValue {
    /// A number.
    Number(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(String),
    /// A numeric vector.
    Vector(Vec<f64>),
}

impl FeatureValue {
    /// Borrows the value.
    pub fn as_ref(&self) -> FeatureRef<'_> {
        match self {
            FeatureValue::Number(v) => FeatureRef::Number(*v),
            FeatureValue::Bool(b) => FeatureRef::Bool(*b),
            FeatureValue::Str(s) => FeatureRef::Str(s),
            FeatureValue::Vector(v) => FeatureRef::Vector(v),
        }
    }
}

impl From<f64> for FeatureValue {
    fn from(v: f64) -> Self {
        FeatureValue::Number(v)
    }
}

impl From<&str> for FeatureValue {
    fn from(v: &str) -> Self {
        FeatureValue::Str(v.to_string())
    }
}

impl From<Vec<f64>> for FeatureValue {
    fn from(v: Vec<f64>) -> Self {
        FeatureValue::Vector(v)
    }
}

impl From<bool> for FeatureValue {
    fn from(v: bool) -> Self {
        FeatureValue::Bool(v)
    }
}

/// Named feature lookup. Implementations must be consistent: every name
/// yielded by `names` resolves through `feature`.
pub trait FeatureSource {
    /// The value of `name`, if present.
    fn feature(&self, name: &str) -> Option<FeatureRef<'_>>;
    /// Every name present (used only to reject undeclared features).
    fn names(&self) -> impl Iterator<Item = &str>;
}

impl FeatureSource for HashMap<String, FeatureValue> {
    fn feature(&self, name: &str) -> Option<FeatureRef<'_>> {
        self.get(name).map(FeatureValue::as_ref)
    }
    fn names(&self) -> impl Iterator<Item = &str> {
        self.keys().map(String::as_str)
    }
}

impl FeatureSource for BTreeMap<String, FeatureValue> {
    fn feature(&self, name: &str) -> Option<FeatureRef<'_>> {
        self.get(name).map(FeatureValue::as_ref)
    }
    fn names(&self) -> impl Iterator<Item = &str> {
        self.keys().map(String::as_str)
    }
}

/// A small request's features as pairs: a linear scan beats hashing for the
/// handful of features a decision carries.
impl FeatureSource for [(String, FeatureValue)] {
    fn feature(&self, name: &str) -> Option<FeatureRef<'_>> {
        self.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_ref())
    }
    fn names(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(n, _)| n.as_str())
    }
}

impl FeatureSource for Vec<(String, FeatureValue)> {
    fn feature(&self, name: &str) -> Option<FeatureRef<'_>> {
        self.as_slice().feature(name)
    }
    fn names(&self) -> impl Iterator<Item = &str> {
        self.as_slice().names()
    }
}
