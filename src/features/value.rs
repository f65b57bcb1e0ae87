//! Feature values as callers send them, and the lookup trait the encoder
//! reads through, so any map (or a borrowed request) can be encoded without
//! copying.

use compact_str::CompactString;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::fmt;

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
/// [numbers]` (anything else is an error saying so).
#[derive(Debug, Clone, PartialEq)]
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

/// Most numbers in one vector feature. Checked while parsing, so a huge
/// array is refused (naming its field) before it is read whole.
pub const MAX_VECTOR_LEN: usize = 4_096;
/// Most features in one object (a request's context, or one action's).
pub const MAX_FEATURES: usize = 256;
/// Longest feature name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest string feature value, in bytes.
pub const MAX_STRING_LEN: usize = 1_024;

const EXPECTED_VALUE: &str = "a number, a string, a boolean or an array of numbers";

impl<'de> Deserialize<'de> for FeatureValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FeatureValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(EXPECTED_VALUE)
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<FeatureValue, E> {
                Ok(FeatureValue::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<FeatureValue, E> {
                Ok(FeatureValue::Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<FeatureValue, E> {
                Ok(FeatureValue::Number(v as f64))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<FeatureValue, E> {
                Ok(FeatureValue::Number(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<FeatureValue, E> {
                check_string(v)?;
                Ok(FeatureValue::Str(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<FeatureValue, E> {
                check_string(&v)?;
                Ok(FeatureValue::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FeatureValue, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(8).min(MAX_VECTOR_LEN));
                while let Some(v) = seq.next_element::<f64>()? {
                    if out.len() == MAX_VECTOR_LEN {
                        return Err(de::Error::custom(format_args!(
                            "a vector feature has at most {MAX_VECTOR_LEN} numbers"
                        )));
                    }
                    out.push(v);
                }
                Ok(FeatureValue::Vector(out))
            }
        }
        d.deserialize_any(V)
    }
}

fn check_string<E: de::Error>(v: &str) -> Result<(), E> {
    if v.len() > MAX_STRING_LEN {
        return Err(E::custom(format_args!(
            "string features are at most {MAX_STRING_LEN} bytes"
        )));
    }
    Ok(())
}

impl Serialize for FeatureValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            FeatureValue::Number(v) => s.serialize_f64(*v),
            FeatureValue::Bool(b) => s.serialize_bool(*b),
            FeatureValue::Str(v) => s.serialize_str(v),
            FeatureValue::Vector(v) => v.serialize(s),
        }
    }
}

/// Named features as a request carries them: a JSON object kept as ordered
/// pairs (a linear scan beats hashing for the handful of features a request
/// has). Duplicate names are an error.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Features(pub Vec<(CompactString, FeatureValue)>);

impl<'de> Deserialize<'de> for Features {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Features;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of named features")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Features, A::Error> {
                let mut out: Vec<(CompactString, FeatureValue)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(8).min(1024));
                // A 256-bit filter of name hashes: only a name whose bit is
                // already set is compared with the names before it, so the
                // duplicate check is linear, not quadratic, in the count.
                let mut seen = [0u64; 4];
                while let Some(name) = map.next_key::<CompactString>()? {
                    if out.len() == MAX_FEATURES {
                        return Err(de::Error::custom(format_args!(
                            "at most {MAX_FEATURES} features per object"
                        )));
                    }
                    if name.len() > MAX_NAME_LEN {
                        return Err(de::Error::custom(format_args!(
                            "feature names are at most {MAX_NAME_LEN} bytes"
                        )));
                    }
                    let h = xxhash_rust::xxh3::xxh3_64(name.as_bytes()) as usize & 255;
                    let bit = 1u64 << (h & 63);
                    if seen[h >> 6] & bit != 0 && out.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format_args!(
                            "duplicate feature `{name}`"
                        )));
                    }
                    seen[h >> 6] |= bit;
                    let value = map.next_value::<FeatureValue>()?;
                    out.push((name, value));
                }
                Ok(Features(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl Serialize for Features {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl FeatureSource for Features {
    fn feature(&self, name: &str) -> Option<FeatureRef<'_>> {
        self.0.as_slice().feature(name)
    }
    fn names(&self) -> impl Iterator<Item = &str> {
        self.0.as_slice().names()
    }
    fn name_count(&self) -> Option<usize> {
        Some(self.0.len())
    }
    fn feature_near(&self, name: &str, hint: usize) -> Option<FeatureRef<'_>> {
        self.0.as_slice().feature_near(name, hint)
    }
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
    /// How many names are present (a repeated name counted each time), when
    /// that is cheap to know: a caller that found this many of the names it
    /// declares knows there is no undeclared one without scanning for it.
    fn name_count(&self) -> Option<usize> {
        None
    }
    /// Like [`FeatureSource::feature`], told where the name is likely to be
    /// (its position in the spec): ordered sources check there first, so a
    /// request that lists features in spec order costs one comparison each.
    fn feature_near(&self, name: &str, _hint: usize) -> Option<FeatureRef<'_>> {
        self.feature(name)
    }
}

impl FeatureSource for HashMap<String, FeatureValue> {
    fn feature(&self, name: &str) -> Option<FeatureRef<'_>> {
        self.get(name).map(FeatureValue::as_ref)
    }
    fn names(&self) -> impl Iterator<Item = &str> {
        self.keys().map(String::as_str)
    }
    fn name_count(&self) -> Option<usize> {
        Some(HashMap::len(self))
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
/// handful of features a decision carries. Names may be any string type.
impl<K: AsRef<str>> FeatureSource for [(K, FeatureValue)] {
    fn feature(&self, name: &str) -> Option<FeatureRef<'_>> {
        self.iter()
            .find(|(n, _)| n.as_ref() == name)
            .map(|(_, v)| v.as_ref())
    }
    fn names(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(n, _)| n.as_ref())
    }
    fn name_count(&self) -> Option<usize> {
        Some(<[_]>::len(self))
    }
    fn feature_near(&self, name: &str, hint: usize) -> Option<FeatureRef<'_>> {
        match self.get(hint) {
            Some((n, v)) if n.as_ref() == name => Some(v.as_ref()),
            _ => self.feature(name),
        }
    }
}

impl<K: AsRef<str>> FeatureSource for Vec<(K, FeatureValue)> {
    fn feature(&self, name: &str) -> Option<FeatureRef<'_>> {
        self.as_slice().feature(name)
    }
    fn names(&self) -> impl Iterator<Item = &str> {
        self.as_slice().names()
    }
    fn name_count(&self) -> Option<usize> {
        Some(<Vec<_>>::len(self))
    }
    fn feature_near(&self, name: &str, hint: usize) -> Option<FeatureRef<'_>> {
        self.as_slice().feature_near(name, hint)
    }
}
