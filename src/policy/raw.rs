//! Policy files as written: the serde types mirroring the TOML, before
//! validation ([`super::parse`]) turns them into a [`super::PolicySpec`].

use super::spec::{Aggregation, Algorithm, Learning, Mode};
use crate::guardrails::spec::RawGuardrails;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPolicy {
    pub(super) id: String,
    #[serde(default = "one")]
    pub(super) version: u32,
    #[serde(default)]
    pub(super) description: String,
    pub(super) algorithm: Algorithm,
    #[serde(default)]
    pub(super) mode: Mode,
    #[serde(default)]
    pub(super) arms: Vec<String>,
    #[serde(default)]
    pub(super) params: RawParams,
    #[serde(default)]
    pub(super) features: RawFeatures,
    #[serde(default)]
    pub(super) reward: RawReward,
    pub(super) guardrails: Option<RawGuardrails>,
    #[serde(default)]
    pub(super) learning: Learning,
    /// `[[challengers]]`: validated against the policy they shadow
    /// (see `parse::challengers`).
    #[serde(default)]
    pub(super) challengers: Vec<toml::Table>,
    pub(super) promote_after: Option<u64>,
    #[serde(default)]
    pub(super) promote: super::spec::Promote,
    #[serde(default)]
    pub(super) alerts: RawAlerts,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAlerts {
    #[serde(default = "five_minutes", with = "humantime_serde")]
    pub(super) window: Duration,
    #[serde(default = "entropy_floor")]
    pub(super) min_entropy: f64,
    pub(super) min_probability: Option<f64>,
    #[serde(default = "twenty")]
    pub(super) min_events: u64,
}

impl Default for RawAlerts {
    fn default() -> Self {
        RawAlerts {
            window: five_minutes(),
            min_entropy: entropy_floor(),
            min_probability: None,
            min_events: twenty(),
        }
    }
}

fn five_minutes() -> Duration {
    Duration::from_secs(300)
}

fn entropy_floor() -> f64 {
    0.05
}

fn twenty() -> u64 {
    20
}

fn one() -> u32 {
    1
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawParams {
    pub(super) alpha: Option<f64>,
    pub(super) lambda: Option<f64>,
    pub(super) v: Option<f64>,
    pub(super) epsilon: Option<f64>,
    pub(super) draws: Option<u32>,
    pub(super) refactor_every: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFeatures {
    #[serde(default = "yes")]
    pub(super) bias: bool,
    #[serde(default)]
    pub(super) unknown: RawUnknown,
    #[serde(default)]
    pub(super) context: Vec<RawFeature>,
    #[serde(default)]
    pub(super) action: Vec<RawFeature>,
    #[serde(default)]
    pub(super) interactions: Vec<RawInteraction>,
}

impl Default for RawFeatures {
    fn default() -> Self {
        RawFeatures {
            bias: true,
            unknown: RawUnknown::Ignore,
            context: vec![],
            action: vec![],
            interactions: vec![],
        }
    }
}

fn yes() -> bool {
    true
}

#[derive(Deserialize, Default, Clone, Copy)]
#[serde(rename_all = "snake_case")]
pub(super) enum RawUnknown {
    #[default]
    Ignore,
    Reject,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub(super) enum RawFeature {
    Number {
        name: String,
        mean: Option<f64>,
        std: Option<f64>,
        default: Option<f64>,
    },
    Categorical {
        name: String,
        vocabulary: Vec<String>,
        default: Option<String>,
    },
    Hashed {
        name: String,
        buckets: usize,
        default: Option<String>,
    },
    Vector {
        name: String,
        length: usize,
        default: Option<Vec<f64>>,
    },
    /// A number Nudge computes from the user's history (see
    /// [`crate::guardrails::HistoryStat`]).
    History {
        name: String,
        stat: String,
        per: Option<String>,
        arm: Option<String>,
        group: Option<String>,
        mean: Option<f64>,
        std: Option<f64>,
        default: Option<f64>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInteraction {
    pub(super) context: String,
    pub(super) action: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawReward {
    #[serde(default)]
    pub(super) signals: BTreeMap<String, f64>,
    #[serde(default = "one_day", with = "humantime_serde")]
    pub(super) window: Duration,
    #[serde(default)]
    pub(super) default: f64,
    #[serde(default)]
    pub(super) aggregation: Aggregation,
    pub(super) min: Option<f64>,
    pub(super) max: Option<f64>,
}

impl Default for RawReward {
    fn default() -> Self {
        RawReward {
            signals: BTreeMap::new(),
            window: one_day(),
            default: 0.0,
            aggregation: Aggregation::First,
            min: None,
            max: None,
        }
    }
}

fn one_day() -> Duration {
    Duration::from_secs(24 * 3600)
}
