//! Synthetic environments: `nudge-sim run`.
//!
//! Policies run online, in-process, against a scenario (synthetic users
//! with hidden reward models over several outcome signals) or a
//! full-feedback dataset, with the same decide / learn code as the
//! service. A run writes the decision log in the service's JSONL format
//! (so `nudge-sim evaluate` reads it), a per-round trace, a summary and the
//! learning curves.
//!
//! # Layout
//! - [`scenario`]: scenario files (TOML) parsed into a validated
//!   [`Scenario`]: context distributions, actions, hidden signal models,
//!   drift; exact conditional expectations and seeded draws.
//! - [`dataset`]: full-feedback CSV datasets (`x_*` context, `r_<arm>`
//!   rewards).
//! - [`engine`]: the [`Environment`] trait both implement, the [`Agent`]
//!   (a policy bound to an environment and a reward function) and the
//!   online loop.
//! - [`truth`]: a fixed policy's true value in a scenario, from the hidden
//!   models (exact over a finite context support).
//! - [`report`]: summary table, JSON and learning-curve plot.
//! - [`users`]: users over time (a scenario's `[users]`: time zones,
//!   active hours, fatigue, unsubscribes).
//! - [`rounds`]: per-round seeding (reproducibility, common random
//!   numbers across policies).

pub mod dataset;
pub mod engine;
pub mod report;
pub mod rounds;
pub mod scenario;
pub mod truth;
pub mod users;

pub use dataset::{Dataset, load_dataset};
pub use engine::{
    Agent, Environment, GuardMode, PolicyRun, RunConfig, RunOptions, Step, UserStats, run_policy,
    run_policy_with,
};
pub use scenario::{Scenario, load_scenario, parse_scenario};

use crate::logfmt::{CandidateProb, LoggedEvent};
use anyhow::Context as _;
use chrono::{DateTime, TimeDelta, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use nudge::policy::{Mode, Policy, load_file};
use report::{PolicySummary, Summary};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

pub use crate::Format;

/// `nudge-sim run`: run policies online against a scenario or a
/// full-feedback dataset.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// A scenario file (`.toml`) or a full-feedback dataset (`.csv`, with
    /// `x_<feature>` and `r_<arm>` columns).
    pub input: PathBuf,
    /// A policy file to run (repeat for several); default: the scenario's
    /// `policies`.
    #[arg(long = "policy", short = 'p', value_name = "FILE")]
    pub policies: Vec<PathBuf>,
    /// Rounds per policy (default: the scenario's `horizon`, or the
    /// dataset's rows; a longer run cycles through the dataset).
    #[arg(long)]
    pub horizon: Option<usize>,
    /// Seed of contexts and outcomes (default: the scenario's `seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write the decision log (JSONL, the format `evaluate` reads). A
    /// `{policy}` in the path writes one file per policy.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Write a per-round trace (CSV: `policy,round,action,probability,reward`).
    /// A `{policy}` in the path writes one file per policy.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Plot the learning curves (`.png` or `.svg`).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Summary format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Do not learn: every decision uses the fresh (prior) model.
    #[arg(long)]
    pub no_learn: bool,
}

/// The world of a run.
pub enum World {
    /// A synthetic scenario.
    Scenario(Box<Scenario>),
    /// A full-feedback dataset.
    Dataset(Dataset),
}

impl World {
    /// Loads a scenario (`.toml`) or a dataset (`.csv`).
    pub fn load(path: &Path) -> anyhow::Result<World> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("csv") => Ok(World::Dataset(load_dataset(path)?)),
            Some("toml") => Ok(World::Scenario(Box::new(load_scenario(path)?))),
            _ => anyhow::bail!(
                "{}: expected a scenario (.toml) or a full-feedback dataset (.csv)",
                path.display()
            ),
        }
    }

    /// As an environment.
    pub fn env(&self) -> &dyn Environment {
        match self {
            World::Scenario(s) => s.as_ref(),
            World::Dataset(d) => d,
        }
    }

    /// The scenario's default policy files.
    pub fn default_policies(&self) -> &[PathBuf] {
        match self {
            World::Scenario(s) => &s.policies,
            World::Dataset(_) => &[],
        }
    }
}

/// Loads policy files, every error of each reported with file and key.
pub fn load_policies(paths: &[PathBuf]) -> anyhow::Result<Vec<Policy>> {
    let mut out: Vec<Policy> = Vec::with_capacity(paths.len());
    for path in paths {
        let spec = load_file(path).map_err(|errors| {
            anyhow::anyhow!(
                "{}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })?;
        if out.iter().any(|p| p.id() == spec.id) {
            anyhow::bail!(
                "{}: policy id {:?} is run twice; each policy of a run needs its own id",
                path.display(),
                spec.id
            );
        }
        out.push(Policy::new(spec));
    }
    Ok(out)
}

/// A progress bar on stderr, hidden when stderr is not a terminal.
pub fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {human_pos}/{human_len} rounds ({per_sec}, {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// The synthetic clock of a scenario without users: round `t` is decided
/// `t` seconds after 2026-01-01T00:00:00Z, so logs are reproducible to the
/// byte (see [`Environment::time_ms`]).
pub fn decided_at(t: usize) -> DateTime<Utc> {
    let start = DateTime::from_timestamp(1_767_225_600, 0).expect("valid epoch");
    start + TimeDelta::seconds(t as i64)
}

/// The instant `ms` (unix ms) as a time.
pub fn time_of(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// The log line of one step, as the service logs a decision: every arm (or
/// candidate action) in order, an ineligible one with probability 0 and
/// why (`excluded_by`); the context the policy saw (with the history
/// features); for a guardrailed policy the `guardrails` column.
///
/// In a [`GuardMode::FilterAfter`] run the line is what a system that
/// filters after the fact logs: the pre-filter distribution over every arm,
/// no eligibility, and the taken action with its pre-filter probability.
pub fn logged_event(
    env: &dyn Environment,
    agent: &Agent,
    signals: &[String],
    step: &Step<'_>,
) -> LoggedEvent {
    let spec = agent.policy.spec();
    let d = step.decision;
    let all: Vec<String> = match spec.mode {
        Mode::Disjoint => spec.arms.clone(),
        Mode::Shared => env.actions(),
    };
    let eligible_mode = step.mode == GuardMode::Eligible;
    let candidates = all
        .iter()
        .enumerate()
        .map(|(i, id)| match d.candidates.iter().position(|&c| c == i) {
            Some(pos) => CandidateProb {
                id: id.clone(),
                probability: d.probabilities[pos],
                excluded_by: None,
            },
            None => CandidateProb {
                id: id.clone(),
                probability: 0.0,
                excluded_by: Some(
                    step.eligibility
                        .and_then(|e| e.reasons.get(i).copied().flatten())
                        .map_or("excluded", |r| r.name())
                        .to_string(),
                ),
            },
        })
        .collect();
    let context: serde_json::Map<String, serde_json::Value> = step
        .context
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default()))
        .collect();
    let actions = (spec.mode == Mode::Shared).then(|| {
        serde_json::Value::Array(
            env.candidates()
                .iter()
                .map(|c| {
                    let features: serde_json::Map<String, serde_json::Value> = c
                        .features
                        .iter()
                        .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default()))
                        .collect();
                    serde_json::json!({"id": c.id, "features": features})
                })
                .collect(),
        )
    });
    let s = signals.len();
    let observed: serde_json::Map<String, serde_json::Value> = signals
        .iter()
        .enumerate()
        .map(|(j, name)| {
            (
                name.clone(),
                serde_json::json!(step.data.outcomes[step.action * s + j]),
            )
        })
        .collect();
    let taken = step.taken;
    let arm = d.candidates[taken];
    let guardrails = match (step.eligibility, eligible_mode) {
        (Some(e), true) => Some(serde_json::json!({
            "user": step.user.map(user_id),
            "timezone": step.tz.map(|z| z.name()),
            "forced": e.forced,
            "send_at": e.send_at.get(arm).copied().flatten().map(|ms| {
                time_of(ms).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            }),
        })),
        _ => None,
    };
    LoggedEvent {
        event_id: step.event_id.to_string(),
        policy: spec.id.clone(),
        policy_version: i32::try_from(spec.version).unwrap_or(i32::MAX),
        model_version: i64::try_from(d.model_version).unwrap_or(i64::MAX),
        decided_at: time_of(step.now_ms),
        context: serde_json::Value::Object(context),
        actions,
        candidates,
        action: all[arm].clone(),
        probability: d.probabilities[taken],
        slate: None,
        item_rewards: None,
        deferred: false,
        degraded: false,
        reward: Some(step.reward),
        signals: Some(serde_json::Value::Object(observed)),
        default_reward: false,
        // A simulated outcome is drawn with the decision: final at once.
        outcome_final: true,
        guardrails,
    }
}

/// The id of user `u` of a population (`u<index>`), as logged.
pub fn user_id(u: usize) -> String {
    format!("u{u}")
}

/// A file per policy when the path has `{policy}`, else one shared file.
struct Outputs {
    template: Option<PathBuf>,
    shared: Option<BufWriter<File>>,
}

impl Outputs {
    fn new(template: Option<PathBuf>) -> Outputs {
        Outputs {
            template,
            shared: None,
        }
    }

    fn per_policy(&self) -> bool {
        self.template
            .as_ref()
            .is_some_and(|t| t.to_string_lossy().contains("{policy}"))
    }

    /// The writer for `policy` (`None` when not requested); `header` is
    /// written at the top of each new file.
    fn open(&mut self, policy: &str, header: &str) -> anyhow::Result<Option<Writer>> {
        let Some(t) = &self.template else {
            return Ok(None);
        };
        if self.per_policy() {
            let path = PathBuf::from(t.to_string_lossy().replace("{policy}", policy));
            let mut w = create(&path)?;
            w.write_all(header.as_bytes())?;
            return Ok(Some(Writer::Own(w, path)));
        }
        if self.shared.is_none() {
            let mut w = create(t)?;
            w.write_all(header.as_bytes())?;
            self.shared = Some(w);
        }
        Ok(Some(Writer::Shared))
    }
}

enum Writer {
    Own(BufWriter<File>, PathBuf),
    Shared,
}

fn create(path: &Path) -> anyhow::Result<BufWriter<File>> {
    Ok(BufWriter::new(File::create(path).with_context(|| {
        format!("cannot create {}", path.display())
    })?))
}

/// Runs the command.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let world = World::load(&args.input)?;
    let env = world.env();
    let paths = if args.policies.is_empty() {
        world.default_policies().to_vec()
    } else {
        args.policies.clone()
    };
    if paths.is_empty() {
        anyhow::bail!(
            "{}: no policy to run: pass --policy FILE (or list `policies` in the scenario)",
            args.input.display()
        );
    }
    let policies = load_policies(&paths)?;
    let horizon = args.horizon.unwrap_or(env.horizon());
    if horizon == 0 {
        anyhow::bail!("--horizon must be at least 1");
    }
    let seed = args.seed.unwrap_or(env.seed());
    let cfg = RunConfig {
        horizon,
        seed,
        learn: !args.no_learn,
        curve_points: 200,
    };
    let signals = env.signals();
    let actions = env.actions();
    let agents = policies
        .iter()
        .map(|p| Agent::new(p, env, None))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut logs = Outputs::new(args.log.clone());
    let mut traces = Outputs::new(args.trace.clone());
    let bar = progress((horizon * agents.len()) as u64, env.name());
    let mut runs = Vec::with_capacity(agents.len());
    let mut reward = BTreeMap::new();
    for agent in &agents {
        let id = agent.policy.id().to_string();
        bar.set_message(format!("{} / {id}", env.name()));
        let mut log = logs.open(&id, "")?;
        let mut trace = traces.open(&id, "policy,round,action,probability,reward\n")?;
        let mut model = agent.policy.new_model();
        let run = run_policy(
            env,
            agent,
            &mut model,
            &cfg,
            |step| {
                if let Some(w) = &mut log {
                    let w = match w {
                        Writer::Own(w, _) => w,
                        Writer::Shared => logs.shared.as_mut().expect("opened"),
                    };
                    serde_json::to_writer(&mut *w, &logged_event(env, agent, &signals, step))?;
                    w.write_all(b"\n")?;
                }
                if let Some(w) = &mut trace {
                    let w = match w {
                        Writer::Own(w, _) => w,
                        Writer::Shared => traces.shared.as_mut().expect("opened"),
                    };
                    writeln!(
                        w,
                        "{id},{},{},{},{}",
                        step.round,
                        actions[step.action],
                        step.decision.propensity(),
                        step.reward
                    )?;
                }
                Ok(())
            },
            |n| bar.inc(n),
        )?;
        for w in [log, trace].into_iter().flatten() {
            if let Writer::Own(mut w, path) = w {
                w.flush()
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
        reward.insert(
            id,
            signals
                .iter()
                .zip(&agent.weights)
                .filter(|(_, w)| **w != 0.0)
                .map(|(s, w)| (s.clone(), *w))
                .collect(),
        );
        runs.push(run);
    }
    bar.finish_and_clear();
    for w in [logs.shared.as_mut(), traces.shared.as_mut()]
        .into_iter()
        .flatten()
    {
        w.flush().context("writing the log or trace")?;
    }
    if let Some(path) = &args.plot {
        report::plot_curves(path, env.name(), &runs)?;
    }
    let summary = Summary {
        environment: env.name().to_string(),
        seed,
        horizon,
        reward,
        policies: runs
            .iter()
            .map(|r| PolicySummary::new(r, &signals, &actions))
            .collect(),
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.format {
        Format::Table => report::write_table(&mut out, &summary)?,
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &summary)?;
            writeln!(out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
