//! Off-policy evaluation: `nudge-sim evaluate`.
//!
//! "What value would candidate policy B have had on the traffic that
//! policy A logged?" — estimated from the logged decisions, their
//! propensities and rewards, with the estimators of the Open Bandit
//! Pipeline (whose definitions these match to floating-point precision).
//!
//! # Layout
//! - [`estimators`]: the estimators (replay, ipw, snipw, dm, dr, sndr,
//!   switch-dr, dros), standard errors, bootstrap intervals and
//!   diagnostics, over an in-memory [`OpeData`] or a stream of [`Round`]s.
//!   This is the library API other code (tests, `nudge-sim run`) calls.
//! - [`source`]: `--log SOURCE` readers (JSONL, Open Bandit Dataset CSV,
//!   and, in `db`, PostgreSQL / SQLite), streaming [`source::LogRecord`]s,
//!   gzip / zstd by extension.
//! - [`dsjson`]: Vowpal Wabbit DSJSON, read as a `--log` source and
//!   written by `nudge-sim export --as dsjson`.
//! - [`window`]: which events have a final outcome (reward windows).
//! - [`candidate`]: target-probability and reward-model files joined to the
//!   log, and policy files run offline (fixed state and learning replay).
//! - [`fit`]: reward models fitted by the tool (ridge, logistic), with
//!   cross-fitting.
//! - [`report`]: the table, JSON and plot.
//!
//! # Memory
//! The log is streamed. Per event the evaluator holds: nothing, when no
//! bootstrap is requested and no reward model is fitted (running sums
//! only); one [`Round`] (5 f64, 40 bytes) per candidate with `--bootstrap`;
//! and, to fit a reward model, the event's numeric features, action and
//! reward (d + 2 f64) plus a second pass over the source.

mod db;

pub mod candidate;
pub mod dsjson;
pub mod embed;
pub mod estimators;
pub mod fit;
pub mod intervals;
pub mod parquet;
pub mod prefetch;
pub mod report;
pub mod slate;
pub mod source;
pub mod window;

pub use estimators::{
    Accumulator, Diagnostics, Estimate, EstimateOptions, Estimator, Evaluation, OpeData, OpeError,
    Round, estimate, evaluate,
};

use crate::Format;
use anyhow::{Context, bail};
use candidate::{EventFile, Pairs, PolicyCandidate, eligible_distribution};
use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use source::{Filter, LogRecord, Source};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

/// `nudge-sim evaluate`: off-policy evaluation of candidates on a log.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The log: `postgres://…`, `sqlite://…`, `obd:PATH` or a `.csv` file
    /// (Open Bandit Dataset layout, or see `--columns`), `parquet:PATH`, a
    /// `.parquet` file or a directory, `dsjson:PATH` or a `.dsjson` file
    /// (Vowpal Wabbit), or a JSONL file; files ending in `.gz` or `.zst`
    /// are decompressed.
    #[arg(long, value_name = "SOURCE")]
    pub log: String,
    /// Only decisions of this logging policy.
    #[arg(long)]
    pub policy_id: Option<String>,
    /// Only decisions at or after this instant (RFC 3339).
    #[arg(long)]
    pub since: Option<DateTime<Utc>>,
    /// Only decisions before this instant (RFC 3339).
    #[arg(long)]
    pub until: Option<DateTime<Utc>>,
    /// A CSV log's columns, `ROLE=COLUMN` comma-separated (roles: action,
    /// reward, propensity, position, timestamp, event_id, features; a
    /// features pattern may hold one `*`, e.g. `features=x_*`). Default:
    /// the Open Bandit Dataset's names.
    #[arg(long, value_delimiter = ',', value_name = "ROLE=COLUMN,…")]
    pub columns: Vec<String>,
    /// The logging policy's file (repeatable, one per logged policy id):
    /// its reward window, default reward and aggregation decide which
    /// events have a final outcome. Default: a `--policy` file with the
    /// logged policy's id.
    #[arg(long, value_name = "FILE")]
    pub logging_policy: Vec<PathBuf>,
    /// The reward window of every event (e.g. `24h`), instead of the
    /// logging policy's.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub reward_window: Option<std::time::Duration>,
    /// With `--reward-window`: the reward of an event whose window closed
    /// without one.
    #[arg(long, default_value_t = 0.0, requires = "reward_window")]
    pub default_reward: f64,
    /// Judge reward windows at this instant (RFC 3339) instead of now.
    #[arg(long, value_name = "TIME")]
    pub as_of: Option<DateTime<Utc>>,
    /// Also evaluate events still inside their reward window, with their
    /// reward so far (the default where none came yet).
    #[arg(long)]
    pub include_open: bool,
    /// Keep events inside their window that are already rewarded under
    /// `first` aggregation (their first reward is final).
    #[arg(long)]
    pub keep_first_rewarded: bool,
    /// A policy file to evaluate (repeatable). Evaluated with a fresh model,
    /// or the `--snapshot` at the same position.
    #[arg(long, value_name = "FILE")]
    pub policy: Vec<PathBuf>,
    /// An NDGM model snapshot for the `--policy` at the same position.
    #[arg(long, value_name = "FILE")]
    pub snapshot: Vec<PathBuf>,
    /// A candidate's action distribution on each logged event (repeatable):
    /// CSV `event_id,action,probability` (long) or one row per event,
    /// `event_id`/`round` then one column per action (wide: `p0,p1,…` or
    /// action ids).
    #[arg(long, value_name = "FILE")]
    pub target_probs: Vec<PathBuf>,
    /// Reward-model estimates for DM/DR: CSV `event_id,action,estimate`
    /// (long) or wide (`round,q0,q1,…`, or one column per action id).
    #[arg(long, value_name = "FILE", conflicts_with = "fit_reward_model")]
    pub reward_model: Option<PathBuf>,
    /// Fit the reward model here instead (cross-fitted, see `--folds`).
    #[arg(long, value_enum)]
    pub fit_reward_model: Option<fit::Kind>,
    /// Cross-fitting folds: event i's estimate comes from a model fitted on
    /// the other folds (fold = i mod K). 1 = no cross-fitting.
    #[arg(long, default_value_t = 2)]
    pub folds: usize,
    /// L2 penalty of the fitted reward model (sklearn's `alpha` for ridge,
    /// `1/C` for logistic).
    #[arg(long, default_value_t = 1.0)]
    pub reg: f64,
    /// Estimators, comma-separated. Default: replay, ipw, snipw, plus dm,
    /// dr, sndr when there is a reward model.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub estimators: Vec<Estimator>,
    /// Switch-DR threshold τ on the importance weight; several values
    /// (`1,5,20`) give one estimate each, keyed `switch-dr(tau=5)`.
    #[arg(long, value_delimiter = ',', default_value = "inf")]
    pub switch_tau: Vec<f64>,
    /// DRos shrinkage λ; several values give one estimate each, keyed
    /// `dros(lambda=10)`.
    #[arg(long, value_delimiter = ',', default_value = "inf")]
    pub dros_lambda: Vec<f64>,
    /// Bootstrap resamples for the confidence intervals (0: normal
    /// approximation from the standard error).
    #[arg(long, default_value_t = 1000)]
    pub bootstrap: usize,
    /// Intervals have coverage 1 − alpha.
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
    /// Bootstrap seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Also give IPW and SNIPW an anytime-valid confidence sequence (by
    /// betting, Waudby-Smith & Ramdas): valid at every log size at once, so
    /// the evaluation can be rerun as data arrives and stopped once decided.
    #[arg(long)]
    pub confidence_sequence: bool,
    /// Parse the log and the per-event files on the evaluating thread
    /// instead of one reader thread each: one core, for a shared machine
    /// (and the benchmark's baseline). Same results either way.
    #[arg(long)]
    pub inline_read: bool,
    /// The range rewards can take (`LO,HI`), for the empirical-Bernstein
    /// interval and the confidence sequence. Default: [0, 1] widened to
    /// every logged reward.
    #[arg(long, value_name = "LO,HI", value_parser = parse_range)]
    pub reward_range: Option<(f64, f64)>,
    /// A logged propensity below this counts as tiny in the diagnostics.
    #[arg(long, default_value_t = 1e-3)]
    pub tiny_propensity: f64,
    /// Output format (default: table on a terminal, json otherwise). JSON
    /// is one object per candidate and line: `{"candidate", "n",
    /// "estimates": {name: {"value", "stderr", "ci_low", "ci_high", …}},
    /// "diagnostics": {…}}`.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Action embeddings for MIPS (`mipw`): a CSV `action,<dimension>,…`
    /// giving each action one category per dimension (an item's category,
    /// say). The estimate weighs by the two policies' probabilities of the
    /// logged action's embedding instead of its own.
    #[arg(long, value_name = "FILE")]
    pub action_embeddings: Option<PathBuf>,
    /// Write a plot of every candidate's estimates and intervals (.png or .svg).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
}

/// One candidate's name and running state.
struct Slot {
    name: String,
    main: Accumulator,
    /// Switch-DR / DRos with the second and later `--switch-tau` /
    /// `--dros-lambda` values: (estimator, key, accumulator).
    extra: Vec<(Estimator, String, Accumulator)>,
    /// Replay counted with the candidate's seeded draw (policy files).
    replay: Option<Accumulator>,
    kind: Kind,
    /// The positions of every slate decision (for SIPS, IIPS, RIPS).
    slates: Vec<Vec<slate::SlatePosition>>,
    /// MIPS over `--action-embeddings`.
    mips: embed::MipsSums,
}

enum Kind {
    Target(Box<EventFile>),
    Policy(Box<PolicyCandidate>),
    /// The learning replay of the policy slot at this index.
    Learning(usize),
}

/// The result of one run: per candidate, its name and evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// `(candidate name, evaluation)` in command-line order.
    pub candidates: Vec<(String, Evaluation)>,
    /// Events left out because they had no reward and no known window.
    pub skipped_no_reward: u64,
    /// DSJSON lines skipped because they say `"_skipLearn": true` (VW
    /// skips them too); 0 for other sources.
    pub skipped_skip_learn: u64,
    /// What the reward-window rule did (see [`window`]).
    pub windows: window::WindowStats,
    /// Warnings about the log as a whole (also in every candidate's
    /// diagnostics).
    pub warnings: Vec<String>,
}

/// `LO,HI` with finite `LO < HI`.
fn parse_range(text: &str) -> Result<(f64, f64), String> {
    let bad = || format!("expected LO,HI with finite LO < HI (e.g. 0,1), got `{text}`");
    let (lo, hi) = text.split_once(',').ok_or_else(bad)?;
    let lo: f64 = lo.trim().parse().map_err(|_| bad())?;
    let hi: f64 = hi.trim().parse().map_err(|_| bad())?;
    if lo.is_finite() && hi.is_finite() && lo < hi {
        Ok((lo, hi))
    } else {
        Err(bad())
    }
}

/// Runs the command.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let outcome = run(&args)?;
    let format = args.format.unwrap_or(if std::io::stdout().is_terminal() {
        Format::Table
    } else {
        Format::Json
    });
    let mut out = std::io::stdout().lock();
    match format {
        Format::Table => report::write_table(&mut out, &outcome)?,
        Format::Json => report::write_json(&mut out, &outcome)?,
    }
    if let Some(path) = &args.plot {
        report::plot(path, &outcome)?;
    }
    // The table shows warnings inline; with JSON on stdout, say them on
    // stderr too so that a person running it sees them.
    if format == Format::Json {
        for (name, ev) in &outcome.candidates {
            for w in &ev.diagnostics.warnings {
                eprintln!("warning: {name}: {w}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Evaluates every candidate of `args` on the log (everything `main` does
/// but printing).
pub fn run(args: &Args) -> anyhow::Result<Outcome> {
    if args.policy.is_empty() && args.target_probs.is_empty() {
        bail!("nothing to evaluate: give --policy FILE and/or --target-probs FILE");
    }
    if args.snapshot.len() > args.policy.len() {
        bail!(
            "{} --snapshot files for {} --policy files: each snapshot goes with the policy at \
             the same position",
            args.snapshot.len(),
            args.policy.len()
        );
    }
    if args.folds == 0 {
        bail!("--folds must be at least 1");
    }
    let has_model = args.reward_model.is_some() || args.fit_reward_model.is_some();
    let which: Vec<Estimator> = if args.estimators.is_empty() {
        let mut w = vec![Estimator::Replay, Estimator::Ipw, Estimator::Snipw];
        if has_model {
            w.extend([Estimator::Dm, Estimator::Dr, Estimator::Sndr]);
        }
        w
    } else {
        args.estimators.clone()
    };
    if let Some(e) = which.iter().find(|e| e.needs_reward_model() && !has_model) {
        bail!(
            "estimator {e} needs a reward model: give --reward-model FILE or --fit-reward-model \
             ridge|logistic"
        );
    }
    let opts = EstimateOptions {
        alpha: args.alpha,
        bootstrap: args.bootstrap,
        seed: args.seed,
        switch_tau: args.switch_tau.first().copied().unwrap_or(f64::INFINITY),
        dros_lambda: args.dros_lambda.first().copied().unwrap_or(f64::INFINITY),
        tiny_propensity: args.tiny_propensity,
        reward_range: args.reward_range,
        confidence_sequence: args.confidence_sequence,
    };
    // One accumulator per extra parameter value; the first value is the
    // main accumulator's. Keys name the value only when there are several.
    let mut extras: Vec<(Estimator, String, EstimateOptions)> = Vec::new();
    for (e, values) in [
        (Estimator::SwitchDr, &args.switch_tau),
        (Estimator::Dros, &args.dros_lambda),
    ] {
        if values.len() < 2 || !which.contains(&e) {
            continue;
        }
        for (i, v) in values.iter().enumerate().skip(1) {
            if values[..i].contains(v) {
                bail!("--{}: {v} is given twice", param_flag(e));
            }
            let mut o = opts.clone();
            match e {
                Estimator::SwitchDr => o.switch_tau = *v,
                _ => o.dros_lambda = *v,
            }
            extras.push((e, param_key(e, *v), o));
        }
    }
    let make_extra = || -> anyhow::Result<Vec<(Estimator, String, Accumulator)>> {
        extras
            .iter()
            .map(|(e, k, o)| Ok((*e, k.clone(), Accumulator::new(o.clone(), has_model)?)))
            .collect()
    };
    let mut source = Source::parse(&args.log);
    if !args.columns.is_empty() {
        source = source.with_columns(source::ColumnMap::parse(&args.columns)?)?;
    }
    let filter = Filter {
        policy_id: args.policy_id.clone(),
        since: args.since,
        until: args.until,
        with_time: args.reward_window.is_some(),
    };

    let mut rules = std::collections::HashMap::new();
    for p in &args.logging_policy {
        window::Windows::add_policy_file(&mut rules, p)
            .with_context(|| format!("logging policy file {}", p.display()))?;
    }
    let fixed_rule = args
        .reward_window
        .map(|w| window::RewardRule::fixed(w, args.default_reward))
        .transpose()?;
    if !args.default_reward.is_finite() {
        bail!("--default-reward must be a finite number");
    }

    // Each input file on a reader thread of its own, unless --inline-read.
    let read = |f: EventFile| if args.inline_read { f } else { f.prefetch() };
    let mut slots = Vec::new();
    for (i, p) in args.policy.iter().enumerate() {
        let cand = PolicyCandidate::load(p, args.snapshot.get(i).map(PathBuf::as_path))
            .with_context(|| format!("policy file {}", p.display()))?;
        // A candidate with the logged policy's id stands in for its file.
        if let Ok(rule) = window::RewardRule::of_spec(cand.policy.spec()) {
            rules.entry(cand.policy.id().to_string()).or_insert(rule);
        }
        let name = p.display().to_string();
        let idx = slots.len();
        slots.push(Slot {
            name: name.clone(),
            main: Accumulator::new(opts.clone(), has_model)?,
            extra: make_extra()?,
            replay: Some(Accumulator::new(opts.clone(), has_model)?),
            kind: Kind::Policy(Box::new(cand)),
            slates: Vec::new(),
            mips: embed::MipsSums::default(),
        });
        if which.contains(&Estimator::Replay) {
            slots.push(Slot {
                name: format!("{name} (learning)"),
                main: Accumulator::new(opts.clone(), has_model)?,
                extra: Vec::new(),
                replay: None,
                kind: Kind::Learning(idx),
                slates: Vec::new(),
                mips: embed::MipsSums::default(),
            });
        }
    }
    for p in &args.target_probs {
        slots.push(Slot {
            name: p.display().to_string(),
            main: Accumulator::new(opts.clone(), has_model)?,
            extra: make_extra()?,
            replay: None,
            kind: Kind::Target(Box::new(read(EventFile::open(p, "probability")?))),
            slates: Vec::new(),
            mips: embed::MipsSums::default(),
        });
    }

    let windows = window::Windows::new(
        fixed_rule,
        rules,
        args.as_of.unwrap_or_else(Utc::now),
        args.include_open,
        args.keep_first_rewarded,
    );

    // A fitted reward model needs a first pass over the log.
    let fitted = match args.fit_reward_model {
        Some(kind) => Some(fit::fit_cross(
            kind,
            &source,
            &filter,
            args.folds,
            args.reg,
            windows.clone(),
            progress(&source, "fitting"),
        )?),
        None => None,
    };
    let mut model_file = match &args.reward_model {
        Some(p) => Some(read(EventFile::open(p, "estimate")?)),
        None => None,
    };

    let embeddings = args
        .action_embeddings
        .as_deref()
        .map(embed::Embeddings::load)
        .transpose()?;
    let bar = progress(&source, "evaluating");
    let mut windows = windows;
    let mut q_buf = Pairs::default();
    let mut elig_buf = Pairs::default();
    let mut index = 0usize;
    let mut seen = 0u64;
    let skips = std::sync::Arc::new(source::Skips::default());
    let mut records = prefetch::records(
        source.open_counting(&filter, fitted.is_some(), skips.clone())?,
        args.inline_read,
    );
    while let Some(slot) = records.next_mut() {
        let rec = match slot {
            Some(Ok(rec)) => &*rec,
            Some(Err(_)) => return Err(slot.take().expect("an error").unwrap_err()),
            None => unreachable!("a filled slot"),
        };
        // The bar reads the clock on every update: count in steps.
        seen += 1;
        if seen.is_multiple_of(1024) {
            bar.inc(1024);
        }
        let Some(reward) = windows.judge(rec) else {
            continue;
        };
        check_record(rec, reward)?;
        let item_default = windows.default_for(rec);
        let q: Option<&Pairs> = if let Some(f) = model_file.as_mut() {
            Some(f.rows_for(&rec.event_id, &rec.origin)?.1)
        } else if let Some(m) = &fitted {
            q_buf.clear();
            m.predict_all(index, rec, &mut q_buf)?;
            Some(&q_buf)
        } else {
            None
        };
        index += 1;
        let mut learning_matches: Vec<(usize, bool)> = Vec::new();
        for (si, slot) in slots.iter_mut().enumerate() {
            match &mut slot.kind {
                Kind::Target(file) => {
                    let path = &slot.name;
                    let (line, dist) = file.rows_for(&rec.event_id, &rec.origin)?;
                    let where_ = || format!("{path}:{line}");
                    // Checked as given (in [0, 1], summing to 1), then
                    // renormalised over the logged eligible set.
                    check_distribution(rec, dist, &where_)?;
                    let dist = eligible_distribution(rec, dist, &mut elig_buf, &where_)?;
                    let round = round_of(rec, reward, dist, q, &where_)?;
                    if let Some(s) = slate_of(rec, reward, item_default, dist, &where_)? {
                        slot.slates.push(s);
                    }
                    if let Some(emb) = &embeddings {
                        slot.mips
                            .push(mips_weight(rec, dist, emb, &where_)?, reward);
                    }
                    slot.main.push(round);
                    slot.extra.iter_mut().for_each(|x| x.2.push(round));
                }
                Kind::Policy(cand) => {
                    let step = cand.step(rec, reward)?;
                    let where_ = || rec.origin.to_string();
                    let round = round_of(rec, reward, &step.distribution, q, &where_)?;
                    if let Some(s) =
                        slate_of(rec, reward, item_default, &step.distribution, &where_)?
                    {
                        slot.slates.push(s);
                    }
                    if let Some(emb) = &embeddings {
                        let w = mips_weight(rec, &step.distribution, emb, &where_)?;
                        slot.mips.push(w, reward);
                    }
                    slot.main.push(round);
                    slot.extra.iter_mut().for_each(|x| x.2.push(round));
                    if let Some(r) = slot.replay.as_mut() {
                        r.push(Round {
                            target_logged: if step.fixed_match { 1.0 } else { 0.0 },
                            ..round
                        });
                    }
                    learning_matches.push((si, step.learning_match));
                }
                Kind::Learning(_) => {}
            }
        }
        for slot in slots.iter_mut() {
            if let Kind::Learning(of) = slot.kind {
                let matched = learning_matches
                    .iter()
                    .find(|(i, _)| *i == of)
                    .is_some_and(|(_, m)| *m);
                slot.main.push(Round {
                    reward,
                    pscore: rec.pscore,
                    target_logged: if matched { 1.0 } else { 0.0 },
                    dm: f64::NAN,
                    q_logged: f64::NAN,
                });
            }
        }
    }
    bar.inc(seen % 1024);
    bar.finish_and_clear();

    let mut warnings = windows.warnings();
    let skipped_skip_learn = skips.skip_learn.load(std::sync::atomic::Ordering::Relaxed);
    if skipped_skip_learn > 0 {
        warnings.push(format!(
            "{skipped_skip_learn} DSJSON lines say \"_skipLearn\": true and were skipped, as VW \
             skips them"
        ));
    }
    if index == 0 && windows.stats.open + windows.stats.no_reward_unknown_window > 0 {
        bail!(
            "no event to evaluate has a final outcome: {}",
            warnings.join("; ")
        );
    }
    let mut candidates = Vec::new();
    for slot in &slots {
        let ev = match slot.kind {
            Kind::Learning(_) => {
                // The learning replay has only the replay estimator.
                let mut ev = slot.main.finish(&[Estimator::Replay])?;
                ev.diagnostics.warnings.retain(|w| w.starts_with("replay"));
                ev
            }
            _ => {
                let mut ev = slot.main.finish(&which)?;
                if let (Some(r), Some(pos)) = (
                    &slot.replay,
                    which.iter().position(|e| *e == Estimator::Replay),
                ) {
                    let rep = r.finish(&[Estimator::Replay])?;
                    ev.estimates[pos] = rep.estimates[0].clone();
                    ev.diagnostics.replay_match_rate = rep.diagnostics.replay_match_rate;
                    ev.diagnostics.warnings.retain(|w| !w.starts_with("replay"));
                    ev.diagnostics.warnings.extend(
                        rep.diagnostics
                            .warnings
                            .into_iter()
                            .filter(|w| w.starts_with("replay") && !w.contains("stochastic")),
                    );
                }
                ev
            }
        };
        let mut ev = ev;
        for e in [Estimator::SwitchDr, Estimator::Dros] {
            let Some(pos) = ev.estimates.iter().position(|x| x.name == e.name()) else {
                continue;
            };
            let mine: Vec<&(Estimator, String, Accumulator)> =
                slot.extra.iter().filter(|x| x.0 == e).collect();
            if mine.is_empty() {
                continue;
            }
            let first = match e {
                Estimator::SwitchDr => args.switch_tau[0],
                _ => args.dros_lambda[0],
            };
            ev.estimates[pos].name = param_key(e, first);
            for (k, (_, key, acc)) in mine.into_iter().enumerate() {
                let mut est = acc.finish(&[e])?.estimates.remove(0);
                est.name = key.clone();
                ev.estimates.insert(pos + 1 + k, est);
            }
        }
        if let Some(m) = slot.mips.estimate(args.alpha) {
            ev.estimates.push(m);
        }
        if !slot.slates.is_empty() {
            ev.estimates.extend(slate::estimate(
                &slot.slates,
                &slate::SlateEstimator::ALL,
                args.alpha,
            ));
            if (slot.slates.len() as u64) < ev.n {
                ev.diagnostics.warnings.push(format!(
                    "{} of {} events are slates: sips, iips and rips are over the slates only",
                    slot.slates.len(),
                    ev.n
                ));
            }
        }
        ev.diagnostics
            .warnings
            .splice(0..0, warnings.iter().cloned());
        candidates.push((slot.name.clone(), ev));
    }
    Ok(Outcome {
        candidates,
        skipped_no_reward: windows.stats.no_reward_unknown_window,
        skipped_skip_learn,
        windows: windows.stats,
        warnings,
    })
}

/// The flag that sets estimator `e`'s parameter.
fn param_flag(e: Estimator) -> &'static str {
    match e {
        Estimator::SwitchDr => "switch-tau",
        _ => "dros-lambda",
    }
}

/// The key of estimator `e` with parameter `v`: `switch-dr(tau=5)`,
/// `dros(lambda=10)`.
fn param_key(e: Estimator, v: f64) -> String {
    match e {
        Estimator::SwitchDr => format!("switch-dr(tau={v})"),
        _ => format!("dros(lambda={v})"),
    }
}

/// Checks a logged record's numbers, naming where it came from.
fn check_record(rec: &LogRecord, reward: f64) -> anyhow::Result<()> {
    if !(rec.pscore > 0.0 && rec.pscore <= 1.0 + 1e-9) {
        bail!(
            "{}: field `probability` (propensity): {} must be in (0, 1]",
            rec.origin,
            rec.pscore
        );
    }
    if !reward.is_finite() {
        bail!("{}: field `reward`: {reward} is not finite", rec.origin);
    }
    Ok(())
}

/// Checks a candidate's distribution: probabilities in [0, 1] summing to 1.
fn check_distribution(
    rec: &LogRecord,
    dist: &Pairs,
    where_: &dyn Fn() -> String,
) -> anyhow::Result<()> {
    let mut sum = 0.0;
    for (a, p) in dist.iter() {
        if !(p.is_finite() && (0.0..=1.0 + 1e-9).contains(&p)) {
            bail!(
                "{}: field `probability`: {p} for action {a:?} must be in [0, 1]",
                where_()
            );
        }
        sum += p;
    }
    if (sum - 1.0).abs() > 1e-6 {
        bail!(
            "{}: the probabilities of event {:?} sum to {sum}, not 1",
            where_(),
            rec.event_id
        );
    }
    Ok(())
}

/// A slate decision's positions under a candidate whose first-position
/// distribution is `dist` (both policies drawing positions without
/// replacement, as Nudge does); `None` for a decision of one action. The
/// top item's reward is the event's (`reward`); every other item's is its
/// own summed rewards, or `item_default` when it has none.
fn slate_of(
    rec: &LogRecord,
    reward: f64,
    item_default: f64,
    dist: &Pairs,
    where_: &dyn Fn() -> String,
) -> anyhow::Result<Option<Vec<slate::SlatePosition>>> {
    let Some(logged) = rec.slate.as_ref().filter(|s| s.len() > 1) else {
        return Ok(None);
    };
    let index = |id: &str| rec.candidates.iter().position(|c| c.id == id);
    let mut b: Vec<f64> = rec.candidates.iter().map(|c| c.probability).collect();
    let mut e = vec![0.0; b.len()];
    for (a, p) in dist.iter() {
        if let Some(i) = index(a) {
            e[i] = p;
        }
    }
    let items = logged
        .iter()
        .map(|s| {
            index(&s.id).ok_or_else(|| {
                anyhow::anyhow!(
                    "{}: slate item {:?} of event {:?} is not among its candidates",
                    where_(),
                    s.id,
                    rec.event_id
                )
            })
        })
        .collect::<anyhow::Result<Vec<usize>>>()?;
    // The service logs a slate item's candidate probability as in its
    // answer's ranking: at its position given the ones above. Its
    // first-position probability follows from the draw without
    // replacement: p(a_k) = P(a_k | a_1..a_{k−1}) · (1 − Σ_{j<k} p(a_j)).
    // Then the first-position distribution must sum to 1, or the log was
    // not drawn that way and the marginals would be wrong.
    let mut used = 0.0;
    for (s, &i) in logged.iter().zip(&items) {
        b[i] = s.probability * (1.0 - used);
        used += b[i];
    }
    let total: f64 = b.iter().sum();
    if (total - 1.0).abs() > 1e-6 {
        bail!(
            "{}: event {:?}: its slate's probabilities and its other candidates' give a \
             first-position distribution summing to {total}, not 1: slates must be drawn one \
             position at a time without replacement",
            where_(),
            rec.event_id
        );
    }
    let rewards: Vec<f64> = logged
        .iter()
        .enumerate()
        .map(|(k, s)| match (k, &rec.item_rewards) {
            (0, _) => reward,
            (_, Some(m)) => m.get(&s.id).copied().unwrap_or(item_default),
            (_, None) => item_default,
        })
        .collect();
    slate::from_draws(&rewards, &items, &b, &e)
        .map(Some)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}: event {:?} has {} candidates; slate estimators need at most {}",
                where_(),
                rec.event_id,
                b.len(),
                slate::MAX_MARGINAL_CANDIDATES
            )
        })
}

/// The MIPS weight of `rec` under a candidate's distribution `dist`: both
/// policies' probabilities summed over the candidates that share the
/// logged action's embedding (see [`embed`]).
fn mips_weight(
    rec: &LogRecord,
    dist: &Pairs,
    emb: &embed::Embeddings,
    where_: &dyn Fn() -> String,
) -> anyhow::Result<f64> {
    let missing = |a: &str| {
        anyhow::anyhow!(
            "{}: action {a:?} has no row in --action-embeddings (its columns: action,{})",
            where_(),
            emb.dims.join(",")
        )
    };
    if rec.candidates.is_empty() {
        bail!(
            "{}: MIPS needs every candidate's logging probability; this source has only the \
             logged action's",
            where_()
        );
    }
    let logged = emb.of(&rec.action).ok_or_else(|| missing(&rec.action))?;
    // One pass over each list: MIPS is for events with many candidates.
    let mut target = std::collections::HashMap::new();
    for (a, q) in dist.iter() {
        target.entry(a).or_insert(q);
    }
    let (mut b, mut e, mut p) = (Vec::new(), Vec::new(), Vec::new());
    for c in &rec.candidates {
        let of = emb.of(&c.id).ok_or_else(|| missing(&c.id))?;
        b.push(c.probability);
        e.push(target.get(c.id.as_str()).copied().unwrap_or(0.0));
        p.push(if of == logged { 1.0 } else { 0.0 });
    }
    Ok(embed::marginal_weight(&b, &e, &p))
}

/// Reduces one event and one candidate's distribution to a [`Round`].
fn round_of(
    rec: &LogRecord,
    reward: f64,
    dist: &Pairs,
    q: Option<&Pairs>,
    where_: &dyn Fn() -> String,
) -> anyhow::Result<Round> {
    let mut sum = 0.0;
    let mut target_logged = 0.0;
    for (a, p) in dist.iter() {
        if !(p.is_finite() && (0.0..=1.0 + 1e-9).contains(&p)) {
            bail!(
                "{}: field `probability`: {p} for action {a:?} must be in [0, 1]",
                where_()
            );
        }
        sum += p;
        if candidate::same_id(a.as_bytes(), rec.action.as_bytes()) {
            target_logged = p;
        }
    }
    if (sum - 1.0).abs() > 1e-6 {
        bail!(
            "{}: the probabilities of event {:?} sum to {sum}, not 1",
            where_(),
            rec.event_id
        );
    }
    let (dm, q_logged) = match q {
        None => (f64::NAN, f64::NAN),
        Some(q) => {
            let mut num = 0.0;
            for (i, (a, p)) in dist.iter().enumerate() {
                if p > 0.0 {
                    let v = q.get_near(i, a).ok_or_else(|| {
                        anyhow::anyhow!(
                            "reward model: no estimate for event {:?}, action {a:?} (the \
                             candidate gives it probability {p})",
                            rec.event_id
                        )
                    })?;
                    num += p * v;
                }
            }
            let q_logged = q.get(&rec.action).ok_or_else(|| {
                anyhow::anyhow!(
                    "reward model: no estimate for event {:?}, logged action {:?}",
                    rec.event_id,
                    rec.action
                )
            })?;
            (num / sum, q_logged)
        }
    };
    Ok(Round {
        reward,
        pscore: rec.pscore,
        target_logged,
        dm,
        q_logged,
    })
}

/// A progress bar on stderr (hidden when stderr is not a terminal): bytes
/// are not known per record, so it counts events.
fn progress(_source: &Source, what: &'static str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    if !std::io::stderr().is_terminal() {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template("{spinner} {msg}: {human_pos} events ({per_sec}) {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what);
    bar
}
