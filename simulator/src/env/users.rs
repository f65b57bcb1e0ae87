//! Users over time: a scenario's optional `[users]` table.
//!
//! Without it, every round is an anonymous, independent request (the
//! scenario's contexts and hidden models alone). With it, the rounds are
//! requests of a fixed population of users on a simulated clock:
//!
//! - **Arrivals**: `count` users make `decisions_per_day` decision requests
//!   each per simulated day on average; round `t` happens at
//!   `start + t · 86 400 s / (count · decisions_per_day)`. The user of a
//!   round is drawn uniformly among the users whose local time is inside
//!   their `active_hours` (all users when nobody is active), from the
//!   round's own seeded generator, so every policy of a run meets the same
//!   users at the same times.
//! - **Time zones**: each user has a zone drawn from the `timezones` mix
//!   (IANA names with weights). `local_hour = "<feature>"` makes that
//!   numeric context feature the user's local hour (0–23), so the hidden
//!   models can depend on it.
//! - **Fatigue**: a user's *load* is `L = Σ 2^{-age / half_life}` over the
//!   sends delivered to them (age in ms: a send counts 1 when delivered and
//!   half as much `half_life` later). For a send action, the
//!   `[users.fatigue]` signal's probability is multiplied by `exp(-k · L)`.
//! - **Unsubscribes**: for a send action, `[users.unsubscribe]` adds
//!   `per_load · L` to the unsubscribe signal's log-odds (it rises with
//!   frequency); a user whose unsubscribe signal is drawn 1 for a delivered
//!   send is gone: every later signal of theirs is 0 (no more opens).
//!
//! Which actions are sends is the scenario's `send_actions` (the world's
//! view; a policy's guardrails have their own `send_arms`).

use super::rounds::{mix_seed, round_rng};
use nudge::guardrails::{Tz, parse_timezone};
use rand::RngExt;
use rand::distr::weighted::WeightedIndex;
use rand_distr::Distribution;
use serde::Deserialize;
use std::collections::BTreeMap;

/// The start of every simulated clock: 2026-01-01T00:00:00Z, unix ms.
pub const START_MS: i64 = 1_767_225_600_000;
const DAY_MS: f64 = 86_400_000.0;
/// Largest population.
pub const MAX_USERS: usize = 10_000_000;
/// Stream of the round's user draw (contexts are 1, outcomes 2).
const STREAM_USER: u64 = 3;
/// Sends older than this many half-lives are forgotten by the load (their
/// weight is below 2^-30).
const LOAD_HORIZON_HALF_LIVES: f64 = 30.0;

/// Fatigue: a send's open (or other) probability falls with the load.
#[derive(Debug, Clone, PartialEq)]
pub struct Fatigue {
    /// The Bernoulli signal it multiplies.
    pub signal: usize,
    /// `P × exp(-k · L)`.
    pub k: f64,
}

/// Unsubscribes rising with frequency; an unsubscribed user is gone.
#[derive(Debug, Clone, PartialEq)]
pub struct Unsubscribe {
    /// The Bernoulli signal (its log-odds rise with the load).
    pub signal: usize,
    /// `η + per_load · L`.
    pub per_load: f64,
}

/// A validated `[users]` table.
#[derive(Debug, Clone, PartialEq)]
pub struct Users {
    /// Number of users.
    pub count: usize,
    /// Mean decision requests per user per simulated day.
    pub decisions_per_day: f64,
    /// Time zones with normalised probabilities.
    pub timezones: Vec<(Tz, f64)>,
    /// Local `[start, end)` minutes in which users make requests (across
    /// midnight when `start > end`); `None`: all day.
    pub active: Option<(u32, u32)>,
    /// Per scenario action: whether it is a send (it is delivered, counts
    /// toward fatigue and can unsubscribe).
    pub sends: Vec<bool>,
    /// The context feature replaced by the user's local hour.
    pub local_hour: Option<usize>,
    /// Half-life of a send's weight in the load, ms.
    pub half_life_ms: i64,
    /// Fatigue of the open probability.
    pub fatigue: Option<Fatigue>,
    /// Unsubscribes.
    pub unsubscribe: Option<Unsubscribe>,
}

impl Users {
    /// Milliseconds between two rounds.
    pub fn step_ms(&self) -> f64 {
        DAY_MS / (self.count as f64 * self.decisions_per_day)
    }

    /// The instant of round `t`, unix ms.
    pub fn time_ms(&self, t: usize) -> i64 {
        START_MS + (t as f64 * self.step_ms()).round() as i64
    }

    /// Whether local minute `m` is in the active hours.
    pub fn is_active_minute(&self, m: u32) -> bool {
        match self.active {
            None => true,
            Some((s, e)) if s <= e => (s..e).contains(&m),
            Some((s, e)) => m >= s || m < e,
        }
    }
}

/// The adjustment of one round's hidden models for its user.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UserState {
    /// The user's local hour (0–23).
    pub local_hour: f64,
    /// The user's load `L`.
    pub load: f64,
    /// The user has unsubscribed: every signal is 0.
    pub gone: bool,
}

/// One user of a population.
#[derive(Debug, Clone)]
pub struct User {
    /// Index into [`Users::timezones`].
    pub tz: usize,
    /// Delivery times of the sends made to them (the world's view).
    pub sends: Vec<i64>,
    /// Unsubscribed.
    pub gone: bool,
}

/// The users of one run: their zones (drawn from the run's seed) and
/// their state, which the policy's actions change.
#[derive(Debug, Clone)]
pub struct Population {
    /// The users.
    pub users: Vec<User>,
    /// Users by zone.
    by_tz: Vec<Vec<usize>>,
}

impl Population {
    /// A fresh population for a run with `seed`: nobody has been sent
    /// anything yet.
    pub fn new(spec: &Users, seed: u64) -> Population {
        let mut rng = round_rng(mix_seed(seed, 0x5553_4552), u64::MAX, STREAM_USER);
        let probs: Vec<f64> = spec.timezones.iter().map(|(_, p)| *p).collect();
        let pick = WeightedIndex::new(&probs).expect("validated weights");
        let mut by_tz = vec![Vec::new(); spec.timezones.len()];
        let users = (0..spec.count)
            .map(|i| {
                let tz = pick.sample(&mut rng);
                by_tz[tz].push(i);
                User {
                    tz,
                    sends: Vec::new(),
                    gone: false,
                }
            })
            .collect();
        Population { users, by_tz }
    }

    /// The user of round `t` at `now_ms`: uniform among the users in their
    /// active hours (everyone when none is).
    pub fn user_at(&self, spec: &Users, t: usize, seed: u64, now_ms: i64) -> usize {
        let mut rng = round_rng(seed, t as u64, STREAM_USER);
        let active: Vec<usize> = (0..self.by_tz.len())
            .filter(|&z| {
                !self.by_tz[z].is_empty()
                    && spec.is_active_minute(local_minute(now_ms, spec.timezones[z].0))
            })
            .collect();
        let zones: Vec<usize> = if active.is_empty() {
            (0..self.by_tz.len())
                .filter(|&z| !self.by_tz[z].is_empty())
                .collect()
        } else {
            active
        };
        let total: usize = zones.iter().map(|&z| self.by_tz[z].len()).sum();
        let mut i = rng.random_range(0..total);
        for z in zones {
            let n = self.by_tz[z].len();
            if i < n {
                return self.by_tz[z][i];
            }
            i -= n;
        }
        unreachable!("i < total")
    }

    /// The state of user `u` at `now_ms` (and forgets sends whose weight
    /// has become negligible).
    pub fn state(&mut self, spec: &Users, u: usize, now_ms: i64) -> UserState {
        let half = spec.half_life_ms as f64;
        let user = &mut self.users[u];
        let horizon = (LOAD_HORIZON_HALF_LIVES * half) as i64;
        user.sends.retain(|at| now_ms - *at < horizon);
        let load = user
            .sends
            .iter()
            .filter(|at| **at <= now_ms)
            .map(|at| (-((now_ms - at) as f64) / half).exp2())
            .sum();
        UserState {
            local_hour: f64::from(local_minute(now_ms, spec.timezones[user.tz].0) / 60),
            load,
            gone: user.gone,
        }
    }

    /// The user's time zone.
    pub fn tz(&self, spec: &Users, u: usize) -> Tz {
        spec.timezones[self.users[u].tz].0
    }
}

/// Minutes after local midnight of `at_ms` in `tz`.
pub fn local_minute(at_ms: i64, tz: Tz) -> u32 {
    use chrono::Timelike;
    let t = chrono::DateTime::from_timestamp_millis(at_ms)
        .unwrap_or_default()
        .with_timezone(&tz);
    t.hour() * 60 + t.minute()
}

// ---- the table as written ---------------------------------------------------

/// `[users]` as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUsers {
    count: usize,
    decisions_per_day: f64,
    #[serde(default)]
    timezones: BTreeMap<String, f64>,
    active_hours: Option<RawHours>,
    send_actions: Vec<String>,
    local_hour: Option<String>,
    #[serde(default = "default_half_life")]
    half_life: String,
    fatigue: Option<RawFatigue>,
    unsubscribe: Option<RawUnsubscribe>,
}

fn default_half_life() -> String {
    "24h".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHours {
    start: String,
    end: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFatigue {
    #[serde(default = "opened")]
    signal: String,
    k: f64,
}

fn opened() -> String {
    "opened".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUnsubscribe {
    #[serde(default = "unsubscribed")]
    signal: String,
    per_load: f64,
}

fn unsubscribed() -> String {
    "unsubscribed".into()
}

/// What validation needs to know of the rest of the scenario.
pub(crate) struct Known<'a> {
    pub actions: &'a [String],
    /// Signal names and whether each is Bernoulli.
    pub signals: &'a [(String, bool)],
    /// Numeric context features by name (index).
    pub numeric: &'a [(String, usize)],
}

use nudge::guardrails::spec::clock;

/// Validates the table; every problem goes to `add(key, message)`.
pub(crate) fn validate(
    raw: &RawUsers,
    known: &Known<'_>,
    add: &mut dyn FnMut(String, String),
) -> Option<Users> {
    let mut errs: Vec<(String, String)> = Vec::new();
    let mut bad = |k: &str, m: String| errs.push((format!("users.{k}"), m));
    if !(1..=MAX_USERS).contains(&raw.count) {
        bad(
            "count",
            format!("expected an integer in [1, {MAX_USERS}], got {}", raw.count),
        );
    }
    if !(raw.decisions_per_day.is_finite() && raw.decisions_per_day > 0.0) {
        bad(
            "decisions_per_day",
            format!("expected a number > 0, got {}", raw.decisions_per_day),
        );
    }
    let mut timezones = Vec::new();
    for (name, w) in &raw.timezones {
        match parse_timezone(name) {
            Some(tz) if w.is_finite() && *w >= 0.0 => timezones.push((tz, *w)),
            Some(_) => bad(
                &format!("timezones.{name}"),
                format!("expected a finite weight >= 0, got {w}"),
            ),
            None => bad(
                &format!("timezones.{name}"),
                format!("{name:?} is not an IANA time zone (e.g. \"Europe/Berlin\", \"UTC\")"),
            ),
        }
    }
    if raw.timezones.is_empty() {
        timezones.push((Tz::UTC, 1.0));
    }
    let total: f64 = timezones.iter().map(|(_, w)| w).sum();
    if !timezones.is_empty() && total <= 0.0 {
        bad("timezones", "expected weights with a positive sum".into());
    }
    for (_, w) in &mut timezones {
        *w /= total;
    }
    let active = raw.active_hours.as_ref().and_then(|h| {
        let mut add2 = |k: String, m: String| bad(&k, m);
        let s = clock(&h.start, "active_hours.start", &mut add2);
        let e = clock(&h.end, "active_hours.end", &mut add2);
        match (s, e) {
            (Some(s), Some(e)) if s == e => {
                add2(
                    "active_hours.end".into(),
                    "start and end are equal: nobody would ever be active".into(),
                );
                None
            }
            (Some(s), Some(e)) => Some((s, e)),
            _ => None,
        }
    });
    let mut sends = vec![false; known.actions.len()];
    if raw.send_actions.is_empty() {
        bad(
            "send_actions",
            "expected at least one action that sends".into(),
        );
    }
    for (i, a) in raw.send_actions.iter().enumerate() {
        match known.actions.iter().position(|x| x == a) {
            Some(j) => sends[j] = true,
            None => bad(
                &format!("send_actions[{i}]"),
                format!(
                    "{a:?} is not an action of this scenario (its actions: {})",
                    known.actions.join(", ")
                ),
            ),
        }
    }
    let local_hour = raw.local_hour.as_ref().and_then(|name| {
        let found = known
            .numeric
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, i)| *i);
        if found.is_none() {
            bad(
                "local_hour",
                format!("no numeric context feature {name:?} to hold the user's local hour"),
            );
        }
        found
    });
    let half_life_ms = match humantime::parse_duration(&raw.half_life) {
        Ok(d) if !d.is_zero() => Some(d.as_millis().min(i64::MAX as u128) as i64),
        _ => {
            bad(
                "half_life",
                format!(
                    "expected a positive duration such as \"12h\", got {:?}",
                    raw.half_life
                ),
            );
            None
        }
    };
    let bernoulli = |name: &str, key: &str, bad: &mut dyn FnMut(&str, String)| -> Option<usize> {
        match known.signals.iter().position(|(n, _)| n == name) {
            Some(i) if known.signals[i].1 => Some(i),
            Some(_) => {
                bad(key, format!("signal `{name}` is not a bernoulli signal"));
                None
            }
            None => {
                bad(key, format!("no signal `{name}` in this scenario"));
                None
            }
        }
    };
    let fatigue = raw.fatigue.as_ref().and_then(|f| {
        let signal = bernoulli(&f.signal, "fatigue.signal", &mut bad);
        if !(f.k.is_finite() && f.k >= 0.0) {
            bad("fatigue.k", format!("expected a number >= 0, got {}", f.k));
        }
        signal.map(|signal| Fatigue { signal, k: f.k })
    });
    let unsubscribe = raw.unsubscribe.as_ref().and_then(|u| {
        let signal = bernoulli(&u.signal, "unsubscribe.signal", &mut bad);
        if !u.per_load.is_finite() {
            bad(
                "unsubscribe.per_load",
                format!("expected a finite number, got {}", u.per_load),
            );
        }
        signal.map(|signal| Unsubscribe {
            signal,
            per_load: u.per_load,
        })
    });
    let failed = !errs.is_empty();
    for (k, m) in errs {
        add(k, m);
    }
    if failed {
        return None;
    }
    Some(Users {
        count: raw.count,
        decisions_per_day: raw.decisions_per_day,
        timezones,
        active,
        sends,
        local_hour,
        half_life_ms: half_life_ms?,
        fatigue,
        unsubscribe,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::scenario::parse_scenario;
    use std::path::Path;

    const WORLD: &str = r#"
name = "t"
horizon = 10
[[context]]
name = "hour"
type = "integer"
low = 0
high = 23
[[actions]]
id = "push"
[[actions]]
id = "skip"
[[signals]]
name = "opened"
model = "bernoulli"
[signals.base]
intercept = 0.0
[signals.actions.skip]
intercept = -inf
[[signals]]
name = "unsubscribed"
model = "bernoulli"
[signals.base]
intercept = -3.0
[signals.actions.skip]
intercept = -inf
"#;

    fn with_users(table: &str) -> String {
        format!("{WORLD}\n[users]\n{table}")
    }

    #[test]
    fn a_users_table_parses_into_a_population_over_time() {
        let text = with_users(
            r#"count = 100
decisions_per_day = 4
timezones = { "UTC" = 1.0, "Asia/Tokyo" = 3.0 }
active_hours = { start = "08:00", end = "22:00" }
send_actions = ["push"]
local_hour = "hour"
half_life = "6h"
fatigue = { k = 0.5 }
unsubscribe = { per_load = 0.4 }
"#,
        );
        let s = parse_scenario(&text, Path::new("t.toml")).unwrap();
        let u = s.users.as_ref().unwrap();
        assert_eq!(u.count, 100);
        assert_eq!(u.timezones.len(), 2);
        let tokyo = u.timezones.iter().find(|(z, _)| z.name() == "Asia/Tokyo");
        assert_eq!(tokyo.unwrap().1, 0.75);
        assert_eq!(u.active, Some((480, 1320)));
        assert_eq!(u.sends, vec![true, false]);
        assert_eq!(u.local_hour, Some(0));
        assert_eq!(u.half_life_ms, 6 * 3_600_000);
        assert_eq!(u.fatigue, Some(Fatigue { signal: 0, k: 0.5 }));
        assert_eq!(
            u.unsubscribe,
            Some(Unsubscribe {
                signal: 1,
                per_load: 0.4
            })
        );
        // 400 requests a day: one every 216 s.
        assert_eq!(u.time_ms(1) - u.time_ms(0), 216_000);
        // Scenarios without the table have no users.
        assert!(
            parse_scenario(WORLD, Path::new("t.toml"))
                .unwrap()
                .users
                .is_none()
        );
    }

    #[test]
    fn every_mistake_in_the_users_table_is_named() {
        let text = with_users(
            r#"count = 0
decisions_per_day = -1
timezones = { "Mars/Olympus" = 1.0 }
active_hours = { start = "8:00", end = "22:00" }
send_actions = ["nope"]
local_hour = "missing"
half_life = "soon"
fatigue = { signal = "dwell", k = 0.5 }
"#,
        );
        let errs = parse_scenario(&text, Path::new("t.toml")).unwrap_err().0;
        let keys: Vec<&str> = errs.iter().map(|e| e.key.as_str()).collect();
        for k in [
            "users.count",
            "users.decisions_per_day",
            "users.timezones.Mars/Olympus",
            "users.active_hours.start",
            "users.send_actions[0]",
            "users.local_hour",
            "users.half_life",
            "users.fatigue.signal",
        ] {
            assert!(keys.contains(&k), "{k} not in {keys:?}");
        }
        let unknown =
            with_users("count = 1\ndecisions_per_day = 1\nsend_actions = [\"push\"]\nlag = 2\n");
        let e = parse_scenario(&unknown, Path::new("t.toml")).unwrap_err();
        assert!(e.to_string().contains("lag"), "{e}");
    }

    #[test]
    fn fatigue_lowers_opens_recovers_with_the_half_life_and_the_gone_get_nothing() {
        let text = with_users(
            r#"count = 10
decisions_per_day = 10
send_actions = ["push"]
half_life = "1h"
fatigue = { k = 1.0 }
unsubscribe = { per_load = 2.0 }
"#,
        );
        let s = parse_scenario(&text, Path::new("t.toml")).unwrap();
        let spec = s.users.as_ref().unwrap();
        let mut pop = Population::new(spec, 1);
        let now = START_MS + 10 * 3_600_000;
        pop.users[3].sends = vec![now - 3_600_000, now];
        let st = pop.state(spec, 3, now);
        assert!((st.load - 1.5).abs() < 1e-12, "{}", st.load);
        let ctx = s.context_at(0, 1);
        let mut fresh = [0.0; 2];
        let mut tired = [0.0; 2];
        s.expected(&ctx, 0, 0, &mut fresh);
        s.expected_for(&ctx, 0, 0, Some(&st), &mut tired);
        assert!((tired[0] - fresh[0] * (-1.5f64).exp()).abs() < 1e-12);
        let shifted = crate::env::scenario::sigmoid(-3.0 + 2.0 * 1.5);
        assert!((tired[1] - shifted).abs() < 1e-12);
        // A hold is not tired, and the load halves every half-life.
        let mut hold = [0.0; 2];
        s.expected_for(&ctx, 1, 0, Some(&st), &mut hold);
        assert_eq!(hold, [0.0, 0.0]);
        let later = pop.state(spec, 3, now + 3_600_000);
        assert!((later.load - 0.75).abs() < 1e-12);
        let gone = UserState { gone: true, ..st };
        let mut out = [1.0; 2];
        s.expected_for(&ctx, 0, 0, Some(&gone), &mut out);
        assert_eq!(out, [0.0, 0.0]);
    }

    #[test]
    fn users_arrive_only_in_their_active_hours() {
        let text = with_users(
            r#"count = 50
decisions_per_day = 24
timezones = { "UTC" = 1.0, "Asia/Tokyo" = 1.0 }
active_hours = { start = "09:00", end = "17:00" }
send_actions = ["push"]
"#,
        );
        let s = parse_scenario(&text, Path::new("t.toml")).unwrap();
        let spec = s.users.as_ref().unwrap();
        let pop = Population::new(spec, 5);
        let mut seen = std::collections::BTreeSet::new();
        for t in 0..2400 {
            let now = spec.time_ms(t);
            let u = pop.user_at(spec, t, 5, now);
            let m = local_minute(now, pop.tz(spec, u));
            // 09:00–17:00 UTC and Tokyo never overlap; when nobody is
            // active, anyone may be asked.
            let anyone_active = spec.is_active_minute(local_minute(now, Tz::UTC))
                || spec.is_active_minute(local_minute(now, Tz::Asia__Tokyo));
            assert!(!anyone_active || spec.is_active_minute(m), "round {t}");
            seen.insert(u);
        }
        assert_eq!(seen.len(), 50, "every user is asked over two days");
    }
}
