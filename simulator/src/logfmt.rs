//! The JSONL decision-log format: one logged decision per line, with its
//! reward joined in. `nudge-sim run` writes it, `nudge-sim evaluate` reads it
//! (as it reads the service's PostgreSQL/SQLite log, which holds the same
//! fields in its `decisions` and `rewards` tables).
//!
//! ```json
//! {"event_id":"e1","policy":"push_send","policy_version":1,"model_version":0,
//!  "decided_at":"2026-11-26T10:00:00Z","context":{"hour":9},"actions":null,
//!  "candidates":[{"id":"send_now","probability":0.9},{"id":"skip","probability":0.1}],
//!  "action":"send_now","probability":0.9,"slate":null,"deferred":false,
//!  "degraded":false,"reward":1.0,"signals":{"opened":1},"default_reward":false}
//! ```
//!
//! `candidates` lists every arm in arm order; an arm the decision could
//! not choose has probability 0 and `"excluded_by": "<reason>"` (the
//! caller's exclusion or a guardrail), so the eligible set is known and
//! OPE evaluates a target under the same eligibility. Guardrailed
//! decisions also carry `"guardrails": {"user", "timezone", "forced",
//! "send_at"}`.
//!
//! Field meanings are those of [`nudge::log::DecisionRow`] and
//! [`nudge::log::RewardRow`]; `reward` is `null` when no reward was logged
//! (for a policy with `sum` aggregation, it is the sum of its rewards).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One candidate's id and its probability of being chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateProb {
    /// Action id.
    pub id: String,
    /// P(this action chosen) under the logging policy (0 for an
    /// ineligible one).
    pub probability: f64,
    /// Why the action could not be chosen (`excluded`, `cap`, `gap`,
    /// `quiet_hours`, `budget`, `recovery`, `unavailable`); absent for an
    /// eligible action. The eligible set is the candidates without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub excluded_by: Option<String>,
}

impl CandidateProb {
    /// Whether the logged decision could choose this action.
    pub fn eligible(&self) -> bool {
        self.excluded_by.is_none()
    }
}

/// One logged decision with its (aggregated) reward.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoggedEvent {
    /// Unique per decision.
    pub event_id: String,
    /// Policy id of the logging policy.
    pub policy: String,
    /// The policy definition's `version`.
    #[serde(default)]
    pub policy_version: i32,
    /// The model statistics' version the decision was made with.
    #[serde(default)]
    pub model_version: i64,
    /// When the decision was made.
    pub decided_at: DateTime<Utc>,
    /// The request context as sent (`{name: number | string | bool | [numbers]}`).
    pub context: Value,
    /// Shared mode: `[{"id", "features"}]` as sent; `null` in disjoint mode.
    #[serde(default)]
    pub actions: Option<Value>,
    /// Every candidate with its probability of being chosen.
    pub candidates: Vec<CandidateProb>,
    /// The chosen action's id.
    pub action: String,
    /// Its propensity under the logging policy.
    pub probability: f64,
    /// For slates: `[{"id", "probability"}]` in rank order; `null` otherwise.
    #[serde(default)]
    pub slate: Option<Value>,
    /// Made with `defer`.
    #[serde(default)]
    pub deferred: bool,
    /// Made while a store was unreachable.
    #[serde(default)]
    pub degraded: bool,
    /// The reward (sum of rewards for `sum` aggregation); `null` if none.
    #[serde(default)]
    pub reward: Option<f64>,
    /// The outcome signals, when the reward came as signals.
    #[serde(default)]
    pub signals: Option<Value>,
    /// Whether `reward` is the policy's default (no reward in the window).
    #[serde(default)]
    pub default_reward: bool,
    /// The outcome is final whatever the reward window says: `nudge-sim
    /// run` draws every outcome at once. Written only when true.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outcome_final: bool,
    /// Guardrailed policies: `{"user", "timezone", "forced", "send_at"}`
    /// (the `decisions.guardrails` column); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guardrails: Option<Value>,
    /// For slates: the summed rewards of each item that has any,
    /// `{action id: reward}` (`reward` is the top item's); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item_rewards: Option<std::collections::BTreeMap<String, f64>>,
}
