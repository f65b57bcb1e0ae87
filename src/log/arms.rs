//! Compact candidate lists for disjoint policies.
//!
//! A disjoint decision's `candidates` list every arm of the policy, in the
//! policy's order, each with its probability (`[{"id", "probability",
//! "excluded_by"?}]`): the arm names repeat on every row. In the database
//! such a list is stored as
//!
//! ```json
//! {"set": "<16 hex digits>", "p": [0.7, 0.3], "x": {"1": "cap"}}
//! ```
//!
//! `set` names a row of `arm_sets` (`id`, `arms`: the JSON array of ids),
//! written in the same transaction as the first decision that uses it;
//! `p` holds the probabilities in the set's order, as their original JSON
//! text (no float is printed again); `x` (absent when empty) maps the index
//! of each excluded arm to its reason. Expanding it gives back the logged
//! list exactly. The spool and every reader outside the database keep the
//! full form; readers of the tables join `arm_sets` (see `nudge-sim`'s
//! database reader). Shared-mode lists (their candidates vary per request)
//! are stored as they are.

use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::BTreeMap;
use std::fmt::Write;

/// One candidate as logged, borrowed from the row's JSON.
#[derive(Deserialize)]
struct Candidate<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    probability: &'a RawValue,
    #[serde(default, borrow)]
    excluded_by: Option<std::borrow::Cow<'a, str>>,
}

/// A row's candidates in the compact form, with the arm set it refers to.
#[derive(Debug, Clone, PartialEq)]
pub struct Compact {
    /// The arm set's id (`arm_sets.id`).
    pub set_id: String,
    /// The arm set: a JSON array of the ids, in order.
    pub arms: String,
    /// The compact `candidates` text.
    pub candidates: String,
}

/// The compact form of a candidates list, or `None` if it cannot be
/// compacted (not a list of candidates as the service logs them).
pub fn compact(candidates: &str) -> Option<Compact> {
    let list: Vec<Candidate<'_>> = serde_json::from_str(candidates).ok()?;
    if list.is_empty() {
        return None;
    }
    let ids: Vec<&str> = list.iter().map(|c| c.id.as_ref()).collect();
    let arms = serde_json::to_string(&ids).ok()?;
    let set_id = format!("{:016x}", xxhash_rust::xxh3::xxh3_64(arms.as_bytes()));
    let mut out = String::with_capacity(32 + 24 * list.len());
    let _ = write!(out, "{{\"set\":\"{set_id}\",\"p\":[");
    for (i, c) in list.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(c.probability.get());
    }
    out.push(']');
    let excluded: BTreeMap<String, &str> = list
        .iter()
        .enumerate()
        .filter_map(|(i, c)| c.excluded_by.as_deref().map(|r| (i.to_string(), r)))
        .collect();
    if !excluded.is_empty() {
        out.push_str(",\"x\":");
        out.push_str(&serde_json::to_string(&excluded).ok()?);
    }
    out.push('}');
    Some(Compact {
        set_id,
        arms,
        candidates: out,
    })
}

/// One logged candidate, as [`expand`] gives it back.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    /// The action's id.
    pub id: String,
    /// Its probability of being chosen.
    pub probability: f64,
    /// Why it could not be chosen, if it could not.
    pub excluded_by: Option<String>,
}

/// A list as the service logs it (`[{"id", "probability",
/// "excluded_by"?}]`).
fn to_json(list: &[Logged]) -> serde_json::Value {
    serde_json::Value::Array(
        list.iter()
            .map(|l| {
                let mut e = serde_json::json!({"id": l.id, "probability": l.probability});
                if let Some(r) = &l.excluded_by {
                    e["excluded_by"] = serde_json::json!(r);
                }
                e
            })
            .collect(),
    )
}

/// A stored compact list, parsed once ([`parse`]): the set it names, then
/// [`Stored::expand`] with that set's arms.
#[derive(Deserialize)]
pub struct Stored {
    /// The arm set (`arm_sets.id`).
    pub set: String,
    p: Vec<f64>,
    #[serde(default)]
    x: BTreeMap<usize, String>,
}

/// Whether a stored candidates value is in the compact form (an object;
/// the logged form is an array).
pub fn is_compact(candidates: &str) -> bool {
    candidates.trim_start().starts_with('{')
}

/// The arm set a stored candidates value refers to, if it is compact.
pub fn set_of(candidates: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Head {
        set: String,
    }
    if !is_compact(candidates) {
        return None;
    }
    serde_json::from_str::<Head>(candidates).ok().map(|h| h.set)
}

/// Parses a compact value. Errors say what does not fit.
pub fn parse(candidates: &str) -> Result<Stored, String> {
    serde_json::from_str(candidates).map_err(|e| format!("invalid compact list: {e}"))
}

impl Stored {
    /// The logged list it stands for, given its set's `arms`: the ids in
    /// order, each with its probability and exclusion.
    pub fn expand(self, arms: &[String]) -> Result<Vec<Logged>, String> {
        if arms.len() != self.p.len() || self.x.keys().any(|&i| i >= arms.len()) {
            return Err(format!(
                "{} probabilities (exclusions up to index {:?}) for arm set {:?} of {} arms",
                self.p.len(),
                self.x.keys().last(),
                self.set,
                arms.len()
            ));
        }
        let mut x = self.x;
        Ok(arms
            .iter()
            .zip(self.p)
            .enumerate()
            .map(|(i, (id, probability))| Logged {
                id: id.clone(),
                probability,
                excluded_by: x.remove(&i),
            })
            .collect())
    }
}

/// Stored candidates as the service logged them: a compact value expanded
/// with `arms` (its set's JSON array, e.g. joined from `arm_sets`), any
/// other value as it is.
pub fn as_logged(stored: &str, arms: Option<&str>) -> Result<serde_json::Value, String> {
    if !is_compact(stored) {
        return serde_json::from_str(stored).map_err(|e| format!("invalid candidates: {e}"));
    }
    let stored = parse(stored)?;
    let arms = arms.ok_or_else(|| format!("arm set {:?} is not in arm_sets", stored.set))?;
    let arms: Vec<String> =
        serde_json::from_str(arms).map_err(|e| format!("invalid arm set: {e}"))?;
    Ok(to_json(&stored.expand(&arms)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// What a reader does: the compact form and the set give back the list.
    fn expand_json(c: &Compact) -> Value {
        assert_eq!(set_of(&c.candidates).as_deref(), Some(c.set_id.as_str()));
        as_logged(&c.candidates, Some(&c.arms)).unwrap()
    }

    #[test]
    fn a_compacted_list_expands_to_the_logged_one_and_keeps_float_text() {
        let logged = r#"[{"id":"a","probability":0.009999999999999998},{"id":"b\"q","probability":0.99,"excluded_by":null},{"id":"c","probability":0.0,"excluded_by":"cap"}]"#;
        let c = compact(logged).unwrap();
        assert!(
            c.candidates.contains("0.009999999999999998"),
            "{}",
            c.candidates
        );
        assert_eq!(c.arms, r#"["a","b\"q","c"]"#);
        assert!(
            c.candidates.len() < logged.len() * 2 / 3,
            "{}",
            c.candidates
        );
        let mut want: Value = serde_json::from_str(logged).unwrap();
        want[1].as_object_mut().unwrap().remove("excluded_by");
        assert_eq!(expand_json(&c), want);
        let two: Vec<String> = vec!["a".into(), "b".into()];
        assert!(
            parse(&c.candidates)
                .unwrap()
                .expand(&two)
                .unwrap_err()
                .contains("3 probabilities")
        );
        // The same ids give the same set; others another.
        let again = compact(r#"[{"id":"a","probability":1},{"id":"b\"q","probability":0},{"id":"c","probability":0}]"#).unwrap();
        assert_eq!(again.set_id, c.set_id);
        assert_ne!(
            compact(r#"[{"id":"a","probability":1}]"#).unwrap().set_id,
            c.set_id
        );
    }

    #[test]
    fn what_is_not_a_candidate_list_is_left_alone() {
        for text in ["[]", "{}", "[1,2]", r#"[{"id":"a"}]"#, "nonsense"] {
            assert_eq!(compact(text), None, "{text}");
        }
    }
}
