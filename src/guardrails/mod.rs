//! Notification guardrails: what a user's recent history allows.
//!
//! A policy may declare (in its file's `[guardrails]` table, see
//! [`spec`]) which arms are *sends* and which arm is the fallback hold,
//! frequency caps over rolling windows (per policy, per arm, per named group
//! shared by several policies), a minimum gap between sends, quiet hours in
//! the user's local time, global budgets, per-arm recovery times, delivery
//! slots, and history features that Nudge computes itself.
//!
//! [`eligibility`] is a pure function of the rules, the user's history
//! ([`UserHistory`]), the budgets' use, the caller's exclusions and the
//! clock: it says, for every arm, whether it may be chosen and if not why
//! ([`Exclusion`]), and when a send would be delivered. The service decides
//! *only among eligible arms* (scoring, exploration and sampling never see
//! the others), so every logged propensity is the probability the action
//! was really drawn with; the simulator calls the same function, so offline
//! runs obey the same rules. Filtering arms after the policy drew one would
//! make the logged propensities wrong, and every off-policy estimate built
//! on them biased.
//!
//! The store keeps each user's sends ([`SendRecord`]) and enforces caps and
//! budgets atomically when a send is reserved (see
//! [`crate::store::Store::reserve_send`]); this module only reads them.

pub mod spec;
mod time;

pub use spec::{
    Budget, Cap, Delivery, Guardrails, HistoryFeature, HistoryStat, QuietHours, Redirect, Scope,
};
pub use time::{Tz, parse_timezone};

use serde::{Deserialize, Serialize};

/// How many sends are kept per user (the oldest go first). A cap may not
/// ask for more than this.
pub const MAX_USER_SENDS: usize = 256;

/// Why an arm could not be chosen for this decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exclusion {
    /// The caller excluded it (`excluded` in the request).
    Excluded,
    /// A frequency cap (policy, arm or group) is reached.
    Cap,
    /// Too soon after the user's last send (`min_gap`).
    Gap,
    /// Its delivery time falls in the user's quiet hours.
    QuietHours,
    /// A global send budget is spent.
    Budget,
    /// This arm was sent to this user too recently (`recovery`).
    Recovery,
    /// The user's history could not be read (the store is unavailable):
    /// sends are held rather than risk breaking a cap.
    Unavailable,
}

impl Exclusion {
    /// The name used in responses, logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Exclusion::Excluded => "excluded",
            Exclusion::Cap => "cap",
            Exclusion::Gap => "gap",
            Exclusion::QuietHours => "quiet_hours",
            Exclusion::Budget => "budget",
            Exclusion::Recovery => "recovery",
            Exclusion::Unavailable => "unavailable",
        }
    }

    /// Every reason, in the order rules are checked.
    pub const ALL: [Exclusion; 7] = [
        Exclusion::Excluded,
        Exclusion::Unavailable,
        Exclusion::QuietHours,
        Exclusion::Recovery,
        Exclusion::Gap,
        Exclusion::Cap,
        Exclusion::Budget,
    ];
}

/// One send to a user, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendRecord {
    /// The decision's event id (a retry of it is the same send).
    pub event_id: String,
    /// Delivery time, unix ms (the decision time, or its `send_at`).
    pub at_ms: i64,
    /// The policy that decided it.
    pub policy: String,
    /// The arm sent.
    pub arm: String,
    /// The groups the policy's sends count toward.
    pub groups: Vec<String>,
    /// The reward it earned so far, once one arrived.
    pub outcome: Option<f64>,
}

impl SendRecord {
    /// Whether this send counts toward `scope` of `policy`.
    pub fn counts_for(&self, scope: &Scope, policy: &str) -> bool {
        match scope {
            Scope::Policy => self.policy == policy,
            Scope::Arm(arm) => self.policy == policy && self.arm == *arm,
            Scope::Group(group) => self.groups.iter().any(|g| g == group),
        }
    }

    /// The compact text the store keeps: `at|policy|arm|g1,g2|outcome`
    /// (ids are `[A-Za-z0-9_.-]`, so the separators cannot occur in them).
    pub fn encode(&self) -> String {
        let outcome = self.outcome.map(|o| o.to_string()).unwrap_or_default();
        format!(
            "{}|{}|{}|{}|{}",
            self.at_ms,
            self.policy,
            self.arm,
            self.groups.join(","),
            outcome
        )
    }

    /// Reads [`SendRecord::encode`]'s text back; `None` if it is not one.
    pub fn decode(event_id: &str, text: &str) -> Option<SendRecord> {
        let mut parts = text.split('|');
        let at_ms = parts.next()?.parse().ok()?;
        let policy = parts.next()?.to_string();
        let arm = parts.next()?.to_string();
        let groups = parts.next()?;
        let outcome = parts.next()?;
        if parts.next().is_some() {
            return None;
        }
        Some(SendRecord {
            event_id: event_id.to_string(),
            at_ms,
            policy,
            arm,
            groups: if groups.is_empty() {
                vec![]
            } else {
                groups.split(',').map(str::to_string).collect()
            },
            outcome: if outcome.is_empty() {
                None
            } else {
                Some(outcome.parse().ok().filter(|v: &f64| v.is_finite())?)
            },
        })
    }
}

/// A user's recent sends (any order), as read from the store.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct UserHistory {
    /// The sends kept (at most [`MAX_USER_SENDS`], none older than the
    /// longest window a rule needs).
    pub sends: Vec<SendRecord>,
    /// Bumped by the store on every send added or withdrawn: a reservation
    /// made on an older version is refused, so caps hold under concurrency.
    #[serde(default)]
    pub version: u64,
}

impl UserHistory {
    /// Sends of `scope` delivered (or scheduled) after `after_ms`.
    pub fn count_after(&self, scope: &Scope, policy: &str, after_ms: i64) -> usize {
        self.sends
            .iter()
            .filter(|s| s.at_ms > after_ms && s.counts_for(scope, policy))
            .count()
    }

    /// The latest send of `scope` at or before `at_ms`.
    pub fn last_before(&self, scope: &Scope, policy: &str, at_ms: i64) -> Option<i64> {
        self.sends
            .iter()
            .filter(|s| s.at_ms <= at_ms && s.counts_for(scope, policy))
            .map(|s| s.at_ms)
            .max()
    }

    /// Adds a send (the store's job; the simulator keeps histories itself).
    /// A send already kept for this event is not added again.
    pub fn push(&mut self, send: SendRecord) {
        if self.sends.iter().any(|s| s.event_id == send.event_id) {
            return;
        }
        self.sends.push(send);
        if self.sends.len() > MAX_USER_SENDS {
            let oldest = self
                .sends
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| s.at_ms)
                .map(|(i, _)| i)
                .expect("not empty");
            self.sends.swap_remove(oldest);
        }
    }

    /// Drops sends at or before `before_ms` (older than every window).
    pub fn forget_before(&mut self, before_ms: i64) {
        self.sends.retain(|s| s.at_ms > before_ms);
    }

    /// Records the outcome (reward) of the send for `event_id`, if kept.
    pub fn set_outcome(&mut self, event_id: &str, outcome: f64) -> bool {
        match self.sends.iter_mut().find(|s| s.event_id == event_id) {
            Some(s) => {
                s.outcome = Some(outcome);
                true
            }
            None => false,
        }
    }
}

/// What eligibility needs to know besides the rules.
#[derive(Debug, Clone, Copy)]
pub struct Situation<'a> {
    /// The policy deciding.
    pub policy: &'a str,
    /// Now, unix ms.
    pub now_ms: i64,
    /// The user's time zone (the request's, or the policy's default).
    pub tz: Tz,
    /// The user's history; `None` when the request names no user (then
    /// per-user rules cannot apply: caps, gap, recovery).
    pub history: Option<&'a UserHistory>,
    /// Sends counted so far in each budget's current window, aligned with
    /// [`Guardrails::budgets`].
    pub budget_used: &'a [u64],
    /// The store could not be read: sends are held.
    pub unavailable: bool,
    /// Arms the caller excluded (indices).
    pub excluded: &'a [usize],
}

/// Which arms may be chosen, and when sends would be delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct Eligibility {
    /// Per arm: `None` if eligible, else why not.
    pub reasons: Vec<Option<Exclusion>>,
    /// Per arm: its delivery time (unix ms) for sends; `None` for holds.
    pub send_at: Vec<Option<i64>>,
    /// Only the fallback is eligible: it is taken with probability 1.
    pub forced: bool,
}

impl Eligibility {
    /// Indices of the eligible arms.
    pub fn eligible(&self) -> impl Iterator<Item = usize> + '_ {
        self.reasons
            .iter()
            .enumerate()
            .filter(|(_, r)| r.is_none())
            .map(|(i, _)| i)
    }

    /// Whether arm `i` is eligible.
    pub fn is_eligible(&self, i: usize) -> bool {
        self.reasons[i].is_none()
    }

    /// The ids of the ineligible arms: what a decision passes to the policy
    /// as excluded, so scoring, exploration and sampling never see them.
    pub fn ineligible_ids(&self, arms: &[String]) -> Vec<String> {
        self.reasons
            .iter()
            .zip(arms)
            .filter(|(r, _)| r.is_some())
            .map(|(_, id)| id.clone())
            .collect()
    }
}

/// The history features to add to a request's context, as (name, value):
/// [`history_values`] without the features that have no data, whose
/// declared default then applies.
pub fn history_features<'g>(
    g: &'g Guardrails,
    policy: &str,
    history: &UserHistory,
    now_ms: i64,
) -> impl Iterator<Item = (&'g str, f64)> {
    g.history
        .iter()
        .zip(history_values(g, policy, history, now_ms))
        .filter_map(|(f, v)| v.map(|v| (f.name.as_str(), v)))
}

/// Decides, for every arm, whether the rules allow it now. Checks, in
/// order: the caller's exclusion, store availability (sends only), quiet
/// hours at the delivery time (a hold, or a delay to the end of the quiet
/// period), recovery of the arm, the minimum gap, the caps, the budgets.
/// Holds are never excluded by a rule, only by the caller.
///
/// Caps count every kept send of their scope delivered or scheduled within
/// `per` before the candidate's delivery time (scheduled future sends
/// count too); the gap is checked against sends on both sides of it.
pub fn eligibility(g: &Guardrails, s: &Situation<'_>) -> Eligibility {
    let n = g.send.len();
    let mut reasons = vec![None; n];
    let mut send_at = vec![None; n];
    for arm in 0..n {
        if s.excluded.contains(&arm) {
            reasons[arm] = Some(Exclusion::Excluded);
            continue;
        }
        if !g.send[arm] {
            continue;
        }
        if s.unavailable {
            reasons[arm] = Some(Exclusion::Unavailable);
            continue;
        }
        let mut at = g.delivery[arm].time(s.now_ms, s.tz);
        if let Some(q) = &g.quiet
            && let Some(end) = q.quiet_until(at, s.tz)
        {
            match q.redirect {
                Redirect::Hold => {
                    reasons[arm] = Some(Exclusion::QuietHours);
                    continue;
                }
                Redirect::Delay => at = end,
            }
        }
        send_at[arm] = Some(at);
        reasons[arm] = per_user_reason(g, s, arm, at).or_else(|| budget_reason(g, s));
    }
    let eligible: Vec<usize> = (0..n).filter(|i| reasons[*i].is_none()).collect();
    let forced = eligible == [g.fallback];
    Eligibility {
        reasons,
        send_at,
        forced,
    }
}

/// The per-user rules (recovery, gap, caps) for a send of `arm` at `at`.
/// Also what the store checks again, atomically, when it reserves the send.
pub fn per_user_reason(
    g: &Guardrails,
    s: &Situation<'_>,
    arm: usize,
    at: i64,
) -> Option<Exclusion> {
    let h = s.history?;
    let arm_scope = Scope::Arm(g.arm_names[arm].clone());
    if let Some(recovery) = g.recovery[arm]
        && h.sends
            .iter()
            .any(|x| x.counts_for(&arm_scope, s.policy) && (at - x.at_ms).abs() < recovery)
    {
        return Some(Exclusion::Recovery);
    }
    if let Some(gap) = g.min_gap_ms
        && h.sends.iter().any(|x| {
            g.gap_scopes().any(|sc| x.counts_for(&sc, s.policy)) && (at - x.at_ms).abs() < gap
        })
    {
        return Some(Exclusion::Gap);
    }
    for cap in &g.caps {
        let applies = match &cap.scope {
            Scope::Arm(a) => *a == g.arm_names[arm],
            _ => true,
        };
        if applies && h.count_after(&cap.scope, s.policy, at - cap.per_ms) as u64 >= cap.max as u64
        {
            return Some(Exclusion::Cap);
        }
    }
    None
}

fn budget_reason(g: &Guardrails, s: &Situation<'_>) -> Option<Exclusion> {
    g.budgets
        .iter()
        .zip(s.budget_used)
        .any(|(b, used)| *used >= b.max)
        .then_some(Exclusion::Budget)
}

/// The values of the policy's history features for this user now, in
/// declaration order (`None` where a feature has no data, e.g. hours since
/// a send that never happened: the feature's declared default applies).
pub fn history_values(
    g: &Guardrails,
    policy: &str,
    history: &UserHistory,
    now_ms: i64,
) -> Vec<Option<f64>> {
    const HOUR_MS: f64 = 3_600_000.0;
    g.history
        .iter()
        .map(|f| match &f.stat {
            HistoryStat::Sends { per_ms, scope } => {
                let n = history
                    .sends
                    .iter()
                    .filter(|x| {
                        x.at_ms <= now_ms
                            && x.at_ms > now_ms - per_ms
                            && x.counts_for(scope, policy)
                    })
                    .count();
                Some(n as f64)
            }
            HistoryStat::HoursSince { scope } => history
                .last_before(scope, policy, now_ms)
                .map(|t| (now_ms - t) as f64 / HOUR_MS),
            HistoryStat::OutcomeRate { per_ms, scope } => {
                let (mut n, mut sum) = (0u32, 0.0);
                for x in &history.sends {
                    if x.at_ms <= now_ms && x.at_ms > now_ms - per_ms && x.counts_for(scope, policy)
                    {
                        n += 1;
                        sum += x.outcome.unwrap_or(0.0);
                    }
                }
                (n > 0).then(|| sum / f64::from(n))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
