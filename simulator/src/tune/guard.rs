//! Guardrail settings in a tuning grid: `--cap` and `--quiet-hours`.
//!
//! A setting replaces the policy's caps and/or quiet hours (a dimension not
//! given keeps the policy's own rules). A policy without a `[guardrails]`
//! table gets one for the tuning: its sends are the scenario's
//! `[users].send_actions` and its fallback the one arm that is not a send.

use crate::env::users::Users;
use nudge::guardrails::{Cap, Delivery, Guardrails, QuietHours, Redirect, Scope, Tz};
use nudge::policy::{Mode, PolicySpec};
use serde::Serialize;

/// Largest cap a grid may ask for (the store keeps 256 sends per user).
pub const MAX_CAP: u32 = 255;

/// One quiet-hours value of the grid: local `[start, end)` minutes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quiet {
    /// Minutes after local midnight.
    pub start: u32,
    /// Minutes after local midnight.
    pub end: u32,
    /// Hold the send, or delay it to the end.
    pub redirect: Redirect,
}

impl Quiet {
    /// `22:00-08:00` (and `/delay` when delayed).
    pub fn label(&self) -> String {
        let hm = |m: u32| format!("{:02}:{:02}", m / 60, m % 60);
        let mut s = format!("{}-{}", hm(self.start), hm(self.end));
        if self.redirect == Redirect::Delay {
            s.push_str("/delay");
        }
        s
    }
}

/// The guardrail part of one grid setting. `None` in a field: the policy's
/// own rule; `Some(None)`: no such rule.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct GuardSetting {
    /// At most this many sends per `--cap-per` window.
    pub cap: Option<Option<u32>>,
    /// Quiet hours.
    pub quiet: Option<Option<Quiet>>,
}

/// How a setting's guardrails are reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuardLabel {
    /// The cap (`null`: none), when the grid sets caps.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cap: Option<Option<u32>>,
    /// The quiet hours (`"22:00-08:00"`, `null`: none), when the grid sets them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quiet_hours: Option<Option<String>>,
}

impl GuardSetting {
    /// The report's view.
    pub fn label(&self) -> GuardLabel {
        GuardLabel {
            cap: self.cap,
            quiet_hours: self.quiet.map(|q| q.map(|q| q.label())),
        }
    }

    /// A short text for tables and plots: `cap=3 quiet=22:00-08:00`.
    pub fn text(&self) -> String {
        let mut parts = Vec::new();
        if let Some(c) = self.cap {
            parts.push(format!(
                "cap={}",
                c.map_or("none".to_string(), |c| c.to_string())
            ));
        }
        if let Some(q) = self.quiet {
            parts.push(format!(
                "quiet={}",
                q.map_or("none".to_string(), |q| q.label())
            ));
        }
        parts.join(" ")
    }
}

/// Parses `--cap`: comma-separated `none`, `N` or `A..B` (every integer
/// from A to B).
pub fn parse_caps(text: &str) -> anyhow::Result<Vec<Option<u32>>> {
    let bad =
        |why: String| anyhow::anyhow!("--cap {text:?}: {why}; expected e.g. `none,1..6` or `2,4`");
    let int = |s: &str| -> anyhow::Result<u32> {
        match s.trim().parse::<u32>() {
            Ok(v) if (1..=MAX_CAP).contains(&v) => Ok(v),
            _ => Err(bad(format!(
                "{:?} is not an integer in [1, {MAX_CAP}]",
                s.trim()
            ))),
        }
    };
    let mut out = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        if item == "none" {
            out.push(None);
        } else if let Some((a, b)) = item.split_once("..") {
            let (a, b) = (int(a)?, int(b)?);
            if a > b {
                return Err(bad(format!("{a}..{b} is empty")));
            }
            out.extend((a..=b).map(Some));
        } else {
            out.push(Some(int(item)?));
        }
    }
    Ok(out)
}

fn clock(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 && s.len() == 5).then_some(h * 60 + m)
}

/// Parses `--quiet-hours`: comma-separated `none` or `HH:MM-HH:MM`
/// (local time; a send then is held), optionally `/delay` (delivered when
/// they end).
pub fn parse_quiet(text: &str) -> anyhow::Result<Vec<Option<Quiet>>> {
    let mut out = Vec::new();
    for item in text.split(',') {
        let item = item.trim();
        if item == "none" {
            out.push(None);
            continue;
        }
        let bad = || {
            anyhow::anyhow!(
                "--quiet-hours {text:?}: {item:?} is not `none` or `HH:MM-HH:MM` (optionally \
                 `/delay`), e.g. `none,22:00-08:00`"
            )
        };
        let (range, redirect) = match item.split_once('/') {
            Some((r, "delay")) => (r, Redirect::Delay),
            Some((r, "hold")) => (r, Redirect::Hold),
            Some(_) => return Err(bad()),
            None => (item, Redirect::Hold),
        };
        let (a, b) = range.split_once('-').ok_or_else(bad)?;
        let (start, end) = (
            clock(a.trim()).ok_or_else(bad)?,
            clock(b.trim()).ok_or_else(bad)?,
        );
        if start == end {
            return Err(bad());
        }
        out.push(Some(Quiet {
            start,
            end,
            redirect,
        }));
    }
    Ok(out)
}

/// Every combination of the cap and quiet-hours values (`None`: the
/// dimension is not in the grid).
pub fn combinations(
    caps: Option<&[Option<u32>]>,
    quiet: Option<&[Option<Quiet>]>,
) -> Vec<GuardSetting> {
    let caps: Vec<Option<Option<u32>>> = match caps {
        Some(c) => c.iter().map(|v| Some(*v)).collect(),
        None => vec![None],
    };
    let quiet: Vec<Option<Option<Quiet>>> = match quiet {
        Some(q) => q.iter().map(|v| Some(*v)).collect(),
        None => vec![None],
    };
    caps.iter()
        .flat_map(|c| {
            quiet
                .iter()
                .map(move |q| GuardSetting { cap: *c, quiet: *q })
        })
        .collect()
}

/// `spec` with the setting's guardrails (see the module doc). `cap_per_ms`
/// is the caps' rolling window.
pub fn apply(
    spec: &PolicySpec,
    setting: &GuardSetting,
    cap_per_ms: i64,
    users: Option<&Users>,
    actions: &[String],
) -> anyhow::Result<PolicySpec> {
    let mut out = spec.clone();
    if setting.cap.is_none() && setting.quiet.is_none() {
        return Ok(out);
    }
    let mut g = match &spec.guardrails {
        Some(g) => g.clone(),
        None => default_guardrails(spec, users, actions)?,
    };
    if let Some(cap) = setting.cap {
        g.caps = cap
            .map(|max| Cap {
                max,
                per_ms: cap_per_ms,
                scope: Scope::Policy,
            })
            .into_iter()
            .collect();
    }
    if let Some(q) = setting.quiet {
        g.quiet = q.map(|q| QuietHours {
            start: q.start,
            end: q.end,
            redirect: q.redirect,
        });
    }
    out.guardrails = Some(g);
    Ok(out)
}

fn default_guardrails(
    spec: &PolicySpec,
    users: Option<&Users>,
    actions: &[String],
) -> anyhow::Result<Guardrails> {
    if spec.mode != Mode::Disjoint {
        anyhow::bail!(
            "policy {}: guardrail settings need a disjoint policy (fixed arms, each a send or a hold)",
            spec.id
        );
    }
    let users = users.ok_or_else(|| {
        anyhow::anyhow!(
            "policy {} has no [guardrails] table, and the scenario has no [users] table to say \
             which actions are sends: add one of them",
            spec.id
        )
    })?;
    let send: Vec<bool> = spec
        .arms
        .iter()
        .map(|a| {
            actions
                .iter()
                .position(|x| x == a)
                .is_some_and(|i| users.sends[i])
        })
        .collect();
    let holds: Vec<usize> = (0..send.len()).filter(|i| !send[*i]).collect();
    let [fallback] = holds.as_slice() else {
        anyhow::bail!(
            "policy {} has no [guardrails] table and {} of its arms are not sends: give it a \
             [guardrails] table naming the fallback",
            spec.id,
            holds.len()
        );
    };
    let n = spec.arms.len();
    Ok(Guardrails {
        arm_names: spec.arms.clone(),
        send,
        fallback: *fallback,
        require_user: false,
        groups: vec![],
        caps: vec![],
        min_gap_ms: None,
        quiet: None,
        default_tz: Tz::UTC,
        budgets: vec![],
        recovery: vec![None; n],
        delivery: vec![Delivery::Now; n],
        history: vec![],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_parse_as_lists_and_ranges() {
        assert_eq!(
            parse_caps("none,1..3,6").unwrap(),
            vec![None, Some(1), Some(2), Some(3), Some(6)]
        );
        for bad in ["0", "x", "3..1", "1..", "256"] {
            assert!(parse_caps(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn quiet_hours_parse_with_their_redirect() {
        let q = parse_quiet("none, 22:00-08:00,21:30-07:00/delay").unwrap();
        assert_eq!(q[0], None);
        assert_eq!(q[1].unwrap().label(), "22:00-08:00");
        assert_eq!(q[2].unwrap().redirect, Redirect::Delay);
        assert_eq!(q[2].unwrap().label(), "21:30-07:00/delay");
        for bad in ["22:00", "22:00-22:00", "25:00-08:00", "22:00-08:00/later"] {
            assert!(parse_quiet(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_guardrail_grid_is_every_combination() {
        let caps = parse_caps("none,1,2").unwrap();
        let quiet = parse_quiet("none,22:00-08:00").unwrap();
        let all = combinations(Some(&caps), Some(&quiet));
        assert_eq!(all.len(), 6);
        assert_eq!(all[3].text(), "cap=1 quiet=22:00-08:00");
        assert_eq!(combinations(None, None), vec![GuardSetting::default()]);
    }
}
