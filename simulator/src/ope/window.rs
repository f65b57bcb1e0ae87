//! Open reward windows: which logged events have a final outcome.
//!
//! A decision's reward may arrive until its reward window closes; one that
//! gets none by then receives the policy's default reward. An event still
//! inside its window has no final outcome yet: keeping it only when it
//! has been rewarded (and dropping the others) is selection on the reward,
//! and biases every estimate on recent traffic upward. So an event is
//! evaluated only when its outcome is final:
//!
//! - its window has closed (`decided_at + window ≤ as_of`): a missing
//!   reward is the policy's default, whether or not the log already has
//!   the default row;
//! - or the log says so (a default row in `rewards`, `default_reward` or
//!   `outcome_final` in JSONL);
//! - or it was rewarded under `first` aggregation (its first reward is its
//!   outcome) and `--keep-first-rewarded` was given.
//!
//! Events still inside their window are left out as a whole, rewarded or
//! not, counted, and warned about; `--include-open` keeps them (their
//! reward so far, or the default). `--as-of` sets the instant at which
//! windows are judged (default: now).
//!
//! The window, default and aggregation of an event come from, in this
//! order: `--reward-window` (with `--default-reward`, for every event), the
//! `--logging-policy` file whose id is the event's policy, a `--policy`
//! file with that id, or the log itself (a Nudge Parquet export states
//! each event's window end and default). Without any, an event with a
//! reward is used as is and one without is left out, with a warning that
//! says so.

use super::source::LogRecord;
use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use nudge::policy::spec::Aggregation;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

/// The reward rule of one logging policy.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RewardRule {
    /// How long after a decision rewards are accepted.
    pub window: chrono::Duration,
    /// The reward of an event that got none in its window.
    pub default: f64,
    /// How several rewards combine; `None` when unknown (`--reward-window`).
    pub aggregation: Option<Aggregation>,
}

impl RewardRule {
    /// The rule `--reward-window` (with `--default-reward`) sets for every
    /// event: how several rewards combine is then unknown.
    pub fn fixed(window: std::time::Duration, default: f64) -> anyhow::Result<RewardRule> {
        Ok(RewardRule {
            window: chrono::Duration::from_std(window).context("--reward-window out of range")?,
            default,
            aggregation: None,
        })
    }

    /// The rule of a policy spec.
    pub fn of_spec(spec: &nudge::policy::PolicySpec) -> anyhow::Result<RewardRule> {
        Ok(RewardRule {
            window: chrono::Duration::from_std(spec.reward.window)
                .context("reward window out of range")?,
            default: spec.reward.default,
            aggregation: Some(spec.reward.aggregation),
        })
    }
}

/// Counts of what the window rule did, reported with every candidate.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct WindowStats {
    /// The instant windows were judged at.
    pub as_of: Option<DateTime<Utc>>,
    /// Events left out because their window was still open.
    pub open: u64,
    /// Of those, events that already had a reward.
    pub open_rewarded: u64,
    /// When the last open window closes.
    pub open_until: Option<DateTime<Utc>>,
    /// Events whose window closed without a reward in the log, evaluated
    /// with the default reward.
    pub defaulted: u64,
    /// Open events kept because of `--include-open`.
    pub included_open: u64,
    /// Open events kept because their first reward is final
    /// (`--keep-first-rewarded`).
    pub kept_first_rewarded: u64,
    /// Events without a reward and without a known window, left out.
    pub no_reward_unknown_window: u64,
}

/// Decides, event by event, whether the outcome is final and what it is.
#[derive(Debug, Clone)]
pub struct Windows {
    fixed: Option<RewardRule>,
    by_policy: HashMap<String, RewardRule>,
    as_of: DateTime<Utc>,
    include_open: bool,
    keep_first_rewarded: bool,
    /// What happened so far.
    pub stats: WindowStats,
}

impl Windows {
    /// A rule set: `fixed` for every event (`--reward-window`), else the
    /// rule of the event's policy id.
    pub fn new(
        fixed: Option<RewardRule>,
        by_policy: HashMap<String, RewardRule>,
        as_of: DateTime<Utc>,
        include_open: bool,
        keep_first_rewarded: bool,
    ) -> Windows {
        Windows {
            fixed,
            by_policy,
            as_of,
            include_open,
            keep_first_rewarded,
            stats: WindowStats {
                as_of: Some(as_of),
                ..WindowStats::default()
            },
        }
    }

    /// Reads a `--logging-policy` file into `map`.
    pub fn add_policy_file(
        map: &mut HashMap<String, RewardRule>,
        path: &Path,
    ) -> anyhow::Result<()> {
        let spec = nudge::policy::load_file(path).map_err(|errs| {
            anyhow::anyhow!(
                "{}",
                errs.iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            )
        })?;
        let rule = RewardRule::of_spec(&spec).with_context(|| path.display().to_string())?;
        if let Some(old) = map.insert(spec.id.clone(), rule)
            && old != rule
        {
            bail!(
                "{}: a second --logging-policy file for policy {:?} with another reward rule",
                path.display(),
                spec.id
            );
        }
        Ok(())
    }

    /// The rule for an event, if known.
    /// The reward an event (or a slate item) without one gets once its
    /// window has closed: its policy's default, else 0.
    pub fn default_for(&self, rec: &LogRecord) -> f64 {
        self.rule(rec).map_or(0.0, |r| r.default)
    }

    /// The rule for `rec`: the fixed one, else its policy's, else the one
    /// the log states for it.
    pub fn rule(&self, rec: &LogRecord) -> Option<RewardRule> {
        self.fixed
            .or_else(|| {
                rec.policy
                    .as_deref()
                    .and_then(|p| self.by_policy.get(p).copied())
            })
            .or(rec.rule)
    }

    /// The reward to evaluate `rec` with, or `None` to leave it out.
    pub fn judge(&mut self, rec: &LogRecord) -> Option<f64> {
        let rule = self.rule(rec);
        if rec.reward_final
            && let Some(r) = rec.reward.or(rule.map(|r| r.default))
        {
            return Some(r);
        }
        let (Some(rule), Some(at)) = (rule, rec.decided_at) else {
            // No window to judge by: the log's reward, if any.
            if rec.reward.is_none() {
                self.stats.no_reward_unknown_window += 1;
            }
            return rec.reward;
        };
        let closes = at + rule.window;
        if closes <= self.as_of {
            return Some(rec.reward.unwrap_or_else(|| {
                self.stats.defaulted += 1;
                rule.default
            }));
        }
        if self.include_open {
            self.stats.included_open += 1;
            return Some(rec.reward.unwrap_or(rule.default));
        }
        if self.keep_first_rewarded
            && rule.aggregation == Some(Aggregation::First)
            && rec.reward.is_some()
        {
            self.stats.kept_first_rewarded += 1;
            return rec.reward;
        }
        self.stats.open += 1;
        if rec.reward.is_some() {
            self.stats.open_rewarded += 1;
        }
        if self.stats.open_until.is_none_or(|u| u < closes) {
            self.stats.open_until = Some(closes);
        }
        None
    }

    /// Warnings about what the rule left out or kept.
    pub fn warnings(&self) -> Vec<String> {
        let s = &self.stats;
        let mut w = Vec::new();
        let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        if s.open > 0 {
            w.push(format!(
                "{} events ({} of them already rewarded) are still inside their reward window \
                 as of {} (the last closes at {}): they were left out, since keeping only the \
                 rewarded ones would bias every estimate upward; evaluate again after {}, or \
                 pass --as-of TIME or --include-open",
                s.open,
                s.open_rewarded,
                time(self.as_of),
                s.open_until.map(time).unwrap_or_default(),
                s.open_until.map(time).unwrap_or_default(),
            ));
        }
        if s.included_open > 0 {
            w.push(format!(
                "{} events still inside their reward window as of {} were included \
                 (--include-open) with their reward so far, or the default where none came \
                 yet: rewards still to come are missing, so estimates lean toward the default",
                s.included_open,
                time(self.as_of)
            ));
        }
        if s.kept_first_rewarded > 0 {
            w.push(format!(
                "{} events inside their reward window were kept because their first reward is \
                 final (`first` aggregation, --keep-first-rewarded); the unrewarded ones of the \
                 same period are left out",
                s.kept_first_rewarded
            ));
        }
        if s.no_reward_unknown_window > 0 {
            w.push(format!(
                "{} events have no reward and their reward window is unknown (give \
                 --logging-policy FILE, or --reward-window and --default-reward): they were \
                 left out; if their windows are still open, keeping the rewarded events of \
                 the same period biases the estimates upward",
                s.no_reward_unknown_window
            ));
        }
        w
    }
}
