//! The `[guardrails]` table of a policy file: raw TOML types, their
//! validation, and the validated [`Guardrails`] the rest of the code trusts.
//!
//! ```toml
//! [guardrails]
//! send_arms = ["send_now", "send_evening"]   # arms that count as a send
//! fallback = "skip"                          # taken when no send is allowed
//! require_user = true                        # `user` must be in the request
//! groups = ["push"]                          # shared caps/budgets it counts toward
//! min_gap = "2h"
//! quiet_hours = { start = "22:00", end = "08:00", redirect = "delay" }
//! default_timezone = "Europe/Berlin"
//! recovery = { send_now = "6h" }             # arm ineligible that long after a send
//! delivery = { send_evening = "19:00", send_later = "+2h" }
//!
//! [[guardrails.caps]]
//! max = 3
//! per = "24h"                                # rolling; optionally `arm` or `group`
//!
//! [[guardrails.budgets]]
//! max = 100000
//! per = "24h"                                # fixed UTC-aligned windows; optionally `group`
//! ```

use super::MAX_USER_SENDS;
use super::time::{self, Tz};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// What a cap or history feature counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Sends of this policy.
    Policy,
    /// Sends of this policy's arm.
    Arm(String),
    /// Sends of every policy in the group.
    Group(String),
}

impl Scope {
    /// A key-safe label (`policy`, `arm:<id>`, `group:<id>`).
    pub fn label(&self) -> String {
        match self {
            Scope::Policy => "policy".into(),
            Scope::Arm(a) => format!("arm:{a}"),
            Scope::Group(g) => format!("group:{g}"),
        }
    }
}

/// At most `max` sends of `scope` in any rolling window of `per`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cap {
    /// Sends allowed per window.
    pub max: u32,
    /// The window, ms.
    pub per_ms: i64,
    /// What is counted.
    pub scope: Scope,
}

/// At most `max` sends of the policy (or group), over all users and
/// replicas, per fixed window of `per` aligned to the unix epoch (UTC).
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// Sends allowed per window.
    pub max: u64,
    /// The window, ms.
    pub per_ms: i64,
    /// [`Scope::Policy`] or [`Scope::Group`].
    pub scope: Scope,
}

impl Budget {
    /// The index of the window holding `now_ms`.
    pub fn window(&self, now_ms: i64) -> i64 {
        now_ms.div_euclid(self.per_ms)
    }
}

/// What happens to a send whose delivery time falls in quiet hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Redirect {
    /// The send is ineligible (reason `quiet_hours`); a hold is chosen.
    #[default]
    Hold,
    /// The send stays eligible and is delivered when quiet hours end
    /// (`send_at`).
    Delay,
}

/// Quiet hours in the user's local time: `[start, end)`, across midnight
/// when `start > end`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuietHours {
    /// Local minutes after midnight.
    pub start: u32,
    /// Local minutes after midnight.
    pub end: u32,
    /// Hold, or delay to `end`.
    pub redirect: Redirect,
}

impl QuietHours {
    /// Whether a local minute of day is quiet.
    pub fn is_quiet_minute(&self, minute: u32) -> bool {
        if self.start <= self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }

    /// If `at_ms` falls in quiet hours in `tz`, the instant they end.
    pub fn quiet_until(&self, at_ms: i64, tz: Tz) -> Option<i64> {
        self.is_quiet_minute(time::local_minute(at_ms, tz))
            .then(|| time::next_local(at_ms, self.end, tz))
    }
}

/// When a send arm is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Delivery {
    /// At once.
    #[default]
    Now,
    /// This many ms after the decision (`"+2h"`).
    After(i64),
    /// The next time the user's local clock shows this minute of day
    /// (`"19:00"`).
    AtLocal(u32),
}

impl Delivery {
    /// The delivery instant for a decision at `now_ms` in `tz`.
    pub fn time(self, now_ms: i64, tz: Tz) -> i64 {
        match self {
            Delivery::Now => now_ms,
            Delivery::After(ms) => now_ms + ms,
            Delivery::AtLocal(minute) => time::next_local(now_ms - 1, minute, tz),
        }
    }
}

/// A statistic of the user's history, fed to the model as a feature.
#[derive(Debug, Clone, PartialEq)]
pub enum HistoryStat {
    /// Sends of `scope` in the last `per` (`stat = "sends"`).
    Sends {
        /// Window, ms.
        per_ms: i64,
        /// What is counted.
        scope: Scope,
    },
    /// Hours since the last send of `scope` (`stat = "hours_since_send"`,
    /// or `"hours_since_arm"` with `arm`).
    HoursSince {
        /// What is counted.
        scope: Scope,
    },
    /// Mean reward of the sends of `scope` in the last `per` (a send not
    /// rewarded counts 0): the recent open or click rate when the reward is
    /// the open signal (`stat = "outcome_rate"`).
    OutcomeRate {
        /// Window, ms.
        per_ms: i64,
        /// What is counted.
        scope: Scope,
    },
}

/// A context feature whose value Nudge computes from the user's history.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryFeature {
    /// The feature's name (a `number` feature of the context).
    pub name: String,
    /// What it measures.
    pub stat: HistoryStat,
}

/// A policy's validated guardrails (disjoint mode only: the arms are
/// fixed, and each is a send or a hold).
#[derive(Debug, Clone, PartialEq)]
pub struct Guardrails {
    /// The arm ids, in policy order.
    pub arm_names: Vec<String>,
    /// Per arm: whether it is a send.
    pub send: Vec<bool>,
    /// The hold arm taken when no send is allowed.
    pub fallback: usize,
    /// Requests must name a `user`.
    pub require_user: bool,
    /// Groups this policy's sends count toward.
    pub groups: Vec<String>,
    /// Frequency caps.
    pub caps: Vec<Cap>,
    /// Minimum gap between two sends to a user (this policy and its
    /// groups), ms.
    pub min_gap_ms: Option<i64>,
    /// Quiet hours.
    pub quiet: Option<QuietHours>,
    /// The zone of requests without `timezone`.
    pub default_tz: Tz,
    /// Global budgets.
    pub budgets: Vec<Budget>,
    /// Per arm: how long after a send of it the arm is ineligible, ms.
    pub recovery: Vec<Option<i64>>,
    /// Per arm: when a send is delivered.
    pub delivery: Vec<Delivery>,
    /// History features, in context order.
    pub history: Vec<HistoryFeature>,
}

impl Guardrails {
    /// Scopes the minimum gap looks at: this policy and each of its groups.
    pub fn gap_scopes(&self) -> impl Iterator<Item = Scope> + '_ {
        std::iter::once(Scope::Policy).chain(self.groups.iter().cloned().map(Scope::Group))
    }

    /// How long a user's sends must be kept: the longest window of any cap,
    /// gap, recovery or history feature (at least the gap), plus the
    /// furthest delivery delay. History expires after that.
    pub fn retention_ms(&self) -> i64 {
        let mut longest = self.min_gap_ms.unwrap_or(0);
        for c in &self.caps {
            longest = longest.max(c.per_ms);
        }
        for r in self.recovery.iter().flatten() {
            longest = longest.max(*r);
        }
        for f in &self.history {
            if let HistoryStat::Sends { per_ms, .. } | HistoryStat::OutcomeRate { per_ms, .. } =
                f.stat
            {
                longest = longest.max(per_ms);
            }
        }
        let delay = self
            .delivery
            .iter()
            .map(|d| match d {
                Delivery::Now => 0,
                Delivery::After(ms) => *ms,
                Delivery::AtLocal(_) => 26 * 3_600_000,
            })
            .max()
            .unwrap_or(0);
        // `hours_since_*` features look back as far as history is kept: a
        // week unless a longer window keeps it longer.
        longest.max(7 * 24 * 3_600_000) + delay
    }

    /// Whether the rules need the user's history at all.
    pub fn needs_history(&self) -> bool {
        !self.caps.is_empty()
            || self.min_gap_ms.is_some()
            || self.recovery.iter().any(Option::is_some)
            || !self.history.is_empty()
    }
}

// ---- the file as written -----------------------------------------------------

/// `[guardrails]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawGuardrails {
    send_arms: Vec<String>,
    fallback: Option<String>,
    #[serde(default)]
    require_user: bool,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    caps: Vec<RawCap>,
    min_gap: Option<String>,
    quiet_hours: Option<RawQuiet>,
    default_timezone: Option<String>,
    #[serde(default)]
    budgets: Vec<RawBudget>,
    #[serde(default)]
    recovery: BTreeMap<String, String>,
    #[serde(default)]
    delivery: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCap {
    max: i64,
    per: String,
    arm: Option<String>,
    group: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    max: i64,
    per: String,
    group: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuiet {
    start: String,
    end: String,
    #[serde(default)]
    redirect: Redirect,
}

/// A history feature as written in `[[features.context]]`
/// (`type = "history"`).
#[derive(Debug, Clone)]
pub(crate) struct RawHistoryFeature {
    pub key: String,
    pub name: String,
    pub stat: String,
    pub per: Option<String>,
    pub arm: Option<String>,
    pub group: Option<String>,
    /// Whether the feature declares a `default` (the value when the
    /// statistic has no data, e.g. hours since a send that never happened).
    pub has_default: bool,
}

/// Longest window a rule may declare.
const MAX_RULE_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);

/// Validates the table against the policy's arms; every problem goes to
/// `add(key, message)`.
pub(crate) fn validate(
    raw: &RawGuardrails,
    arms: &[String],
    history: &[RawHistoryFeature],
    add: &mut dyn FnMut(String, String),
) -> Option<Guardrails> {
    let before = {
        let mut count = 0usize;
        let mut counting = |k: String, m: String| {
            count += 1;
            add(k, m)
        };
        validate_into(raw, arms, history, &mut counting).map(|g| (g, count))
    };
    match before {
        Some((g, 0)) => Some(g),
        _ => None,
    }
}

fn arm_index(arms: &[String], id: &str) -> Option<usize> {
    arms.iter().position(|a| a == id)
}

fn duration(text: &str, key: &str, add: &mut dyn FnMut(String, String)) -> Option<i64> {
    match humantime_serde::re::humantime::parse_duration(text) {
        Ok(d) if d.is_zero() => {
            add(
                key.into(),
                "expected a positive duration such as \"30m\" or \"24h\"".into(),
            );
            None
        }
        Ok(d) if d > MAX_RULE_WINDOW => {
            add(
                key.into(),
                format!("expected at most 366 days, got {text:?}"),
            );
            None
        }
        Ok(d) => Some(d.as_millis() as i64),
        Err(e) => {
            add(
                key.into(),
                format!("expected a duration such as \"30m\" or \"24h\", got {text:?}: {e}"),
            );
            None
        }
    }
}

/// `"HH:MM"` → minutes after midnight (00:00 to 23:59); otherwise reports
/// the problem at `key` and returns `None`. Scenario files read local times
/// with it too.
pub fn clock(text: &str, key: &str, add: &mut dyn FnMut(String, String)) -> Option<u32> {
    let parsed = text.split_once(':').and_then(|(h, m)| {
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60 && text.len() == 5).then_some(h * 60 + m)
    });
    if parsed.is_none() {
        add(
            key.into(),
            format!("expected a local time \"HH:MM\" (00:00 to 23:59), got {text:?}"),
        );
    }
    parsed
}

fn group_name(g: &str, key: &str, add: &mut dyn FnMut(String, String)) -> bool {
    let ok = crate::policy::spec::is_valid_id(g, 64);
    if !ok {
        add(
            key.into(),
            format!("expected a group name of 1 to 64 characters of [A-Za-z0-9_.-], got {g:?}"),
        );
    }
    ok
}

fn validate_into(
    raw: &RawGuardrails,
    arms: &[String],
    history: &[RawHistoryFeature],
    add: &mut dyn FnMut(String, String),
) -> Option<Guardrails> {
    let n = arms.len();
    let mut send = vec![false; n];
    if raw.send_arms.is_empty() {
        add(
            "guardrails.send_arms".into(),
            "expected at least one arm that counts as a send".into(),
        );
    }
    for (i, a) in raw.send_arms.iter().enumerate() {
        match arm_index(arms, a) {
            Some(j) if send[j] => add(
                format!("guardrails.send_arms[{i}]"),
                format!("duplicate arm {a:?}"),
            ),
            Some(j) => send[j] = true,
            None => add(
                format!("guardrails.send_arms[{i}]"),
                format!("{a:?} is not an arm of this policy"),
            ),
        }
    }
    let fallback = match &raw.fallback {
        Some(f) => match arm_index(arms, f) {
            Some(j) if send[j] => {
                add(
                    "guardrails.fallback".into(),
                    format!(
                        "{f:?} is a send arm; the fallback must be a hold (an arm not in send_arms)"
                    ),
                );
                None
            }
            Some(j) => Some(j),
            None => {
                add(
                    "guardrails.fallback".into(),
                    format!("{f:?} is not an arm of this policy"),
                );
                None
            }
        },
        None => {
            let holds: Vec<usize> = (0..n).filter(|j| !send[*j]).collect();
            match holds.as_slice() {
                [only] => Some(*only),
                [] => {
                    add("guardrails.send_arms".into(), "every arm is a send: at least one arm must be a hold, the fallback when no send is allowed".into());
                    None
                }
                _ => {
                    add(
                        "guardrails.fallback".into(),
                        "several arms are holds: name the one taken when no send is allowed".into(),
                    );
                    None
                }
            }
        }
    };
    let mut groups: Vec<String> = Vec::new();
    for (i, g) in raw.groups.iter().enumerate() {
        if group_name(g, &format!("guardrails.groups[{i}]"), add) && !groups.contains(g) {
            groups.push(g.clone());
        }
    }
    let scope_of = |arm: &Option<String>,
                    group: &Option<String>,
                    key: &str,
                    add: &mut dyn FnMut(String, String),
                    groups: &mut Vec<String>|
     -> Option<Scope> {
        match (arm, group) {
            (Some(_), Some(_)) => {
                add(key.into(), "give `arm` or `group`, not both".into());
                None
            }
            (Some(a), None) => match arm_index(arms, a) {
                Some(j) if send[j] => Some(Scope::Arm(a.clone())),
                Some(_) => {
                    add(
                        format!("{key}.arm"),
                        format!("{a:?} is a hold, not a send arm"),
                    );
                    None
                }
                None => {
                    add(
                        format!("{key}.arm"),
                        format!("{a:?} is not an arm of this policy"),
                    );
                    None
                }
            },
            (None, Some(g)) => {
                if !group_name(g, &format!("{key}.group"), add) {
                    return None;
                }
                // Declaring a group's cap or budget makes the policy a member.
                if !groups.contains(g) {
                    groups.push(g.clone());
                }
                Some(Scope::Group(g.clone()))
            }
            (None, None) => Some(Scope::Policy),
        }
    };
    let mut caps = Vec::new();
    for (i, c) in raw.caps.iter().enumerate() {
        let key = format!("guardrails.caps[{i}]");
        let per = duration(&c.per, &format!("{key}.per"), add);
        if !(1..=MAX_USER_SENDS as i64 - 1).contains(&c.max) {
            add(
                format!("{key}.max"),
                format!(
                    "expected an integer in [1, {}] (sends kept per user), got {}",
                    MAX_USER_SENDS - 1,
                    c.max
                ),
            );
        }
        let scope = scope_of(&c.arm, &c.group, &key, add, &mut groups);
        if let (Some(per_ms), Some(scope)) = (per, scope) {
            caps.push(Cap {
                max: c.max.clamp(1, u32::MAX as i64) as u32,
                per_ms,
                scope,
            });
        }
    }
    let mut budgets = Vec::new();
    for (i, b) in raw.budgets.iter().enumerate() {
        let key = format!("guardrails.budgets[{i}]");
        let per = duration(&b.per, &format!("{key}.per"), add);
        if b.max < 1 {
            add(
                format!("{key}.max"),
                format!("expected an integer >= 1, got {}", b.max),
            );
        }
        let scope = scope_of(&None, &b.group, &key, add, &mut groups);
        if let (Some(per_ms), Some(scope)) = (per, scope) {
            budgets.push(Budget {
                max: b.max.max(1) as u64,
                per_ms,
                scope,
            });
        }
    }
    let min_gap_ms = raw
        .min_gap
        .as_deref()
        .and_then(|g| duration(g, "guardrails.min_gap", add));
    let quiet = raw.quiet_hours.as_ref().and_then(|q| {
        let start = clock(&q.start, "guardrails.quiet_hours.start", add);
        let end = clock(&q.end, "guardrails.quiet_hours.end", add);
        match (start, end) {
            (Some(s), Some(e)) if s == e => {
                add(
                    "guardrails.quiet_hours.end".into(),
                    "start and end are equal: quiet hours would be empty".into(),
                );
                None
            }
            (Some(start), Some(end)) => Some(QuietHours {
                start,
                end,
                redirect: q.redirect,
            }),
            _ => None,
        }
    });
    let default_tz = match &raw.default_timezone {
        Some(name) => time::parse_timezone(name).unwrap_or_else(|| {
            add(
                "guardrails.default_timezone".into(),
                format!("{name:?} is not an IANA time zone (e.g. \"Europe/Berlin\", \"UTC\")"),
            );
            Tz::UTC
        }),
        None => Tz::UTC,
    };
    let mut recovery = vec![None; n];
    for (arm, d) in &raw.recovery {
        let key = format!("guardrails.recovery.{arm}");
        match arm_index(arms, arm) {
            Some(j) if send[j] => recovery[j] = duration(d, &key, add),
            Some(_) => add(
                key,
                format!("{arm:?} is a hold; recovery applies to send arms"),
            ),
            None => add(key, format!("{arm:?} is not an arm of this policy")),
        }
    }
    let mut delivery = vec![Delivery::Now; n];
    for (arm, d) in &raw.delivery {
        let key = format!("guardrails.delivery.{arm}");
        match arm_index(arms, arm) {
            Some(j) if send[j] => {
                delivery[j] = if d == "now" {
                    Delivery::Now
                } else if let Some(rest) = d.strip_prefix('+') {
                    duration(rest, &key, add).map_or(Delivery::Now, Delivery::After)
                } else {
                    clock(d, &key, add).map_or(Delivery::Now, Delivery::AtLocal)
                }
            }
            Some(_) => add(
                key,
                format!("{arm:?} is a hold; only send arms are delivered"),
            ),
            None => add(key, format!("{arm:?} is not an arm of this policy")),
        }
    }
    let mut features = Vec::new();
    for h in history {
        let key = &h.key;
        let windowed = matches!(h.stat.as_str(), "sends" | "outcome_rate");
        let per = match (&h.per, windowed) {
            (Some(p), true) => duration(p, &format!("{key}.per"), add),
            (None, true) => {
                add(
                    format!("{key}.per"),
                    format!("stat {:?} needs a window such as \"24h\"", h.stat),
                );
                None
            }
            (Some(_), false) => {
                add(
                    format!("{key}.per"),
                    format!("stat {:?} takes no window", h.stat),
                );
                None
            }
            (None, false) => Some(0),
        };
        let scope = match h.stat.as_str() {
            "hours_since_arm" => match &h.arm {
                None => {
                    add(
                        format!("{key}.arm"),
                        "stat \"hours_since_arm\" needs `arm`".into(),
                    );
                    None
                }
                a => scope_of(a, &h.group, key, add, &mut groups),
            },
            _ => scope_of(&h.arm, &h.group, key, add, &mut groups),
        };
        if matches!(
            h.stat.as_str(),
            "hours_since_send" | "hours_since_arm" | "outcome_rate"
        ) && !h.has_default
        {
            add(
                format!("{key}.default"),
                format!(
                    "stat {:?} has no value for a user without sends: declare its `default`",
                    h.stat
                ),
            );
        }
        let stat = match (h.stat.as_str(), per, scope) {
            ("sends", Some(per_ms), Some(scope)) => Some(HistoryStat::Sends { per_ms, scope }),
            ("outcome_rate", Some(per_ms), Some(scope)) => {
                Some(HistoryStat::OutcomeRate { per_ms, scope })
            }
            ("hours_since_send" | "hours_since_arm", Some(_), Some(scope)) => {
                Some(HistoryStat::HoursSince { scope })
            }
            ("sends" | "outcome_rate" | "hours_since_send" | "hours_since_arm", _, _) => None,
            (other, _, _) => {
                add(
                    format!("{key}.stat"),
                    format!(
                        "expected one of \"sends\", \"hours_since_send\", \"hours_since_arm\", \"outcome_rate\", got {other:?}"
                    ),
                );
                None
            }
        };
        if let Some(stat) = stat {
            features.push(HistoryFeature {
                name: h.name.clone(),
                stat,
            });
        }
    }
    Some(Guardrails {
        arm_names: arms.to_vec(),
        send,
        fallback: fallback?,
        require_user: raw.require_user,
        groups,
        caps,
        min_gap_ms,
        quiet,
        default_tz,
        budgets,
        recovery,
        delivery,
        history: features,
    })
}
