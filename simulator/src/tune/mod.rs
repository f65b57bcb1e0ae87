//! Reward tuning: `nudge-sim tune`.
//!
//! The reward function is a choice: `reward = Σ_s w_s · signal_s`. Tuning
//! runs the same policy on the same scenario (same seed: the same users
//! and the same potential outcomes, so differences come from the weights
//! alone) once per setting of a grid of weights, and reports what each
//! setting does to every signal — open rate against unsubscribe rate —
//! marking the Pareto-efficient settings: those no other setting beats on
//! one objective without losing on another.
//!
//! # Layout
//! - [`grid`]: `NAME=V`, `NAME=A..B`, `NAME=V1,V2` weight specs → the
//!   Cartesian grid.
//! - [`guard`]: guardrail settings in the grid (`--cap`, `--quiet-hours`),
//!   applied to the policy's `[guardrails]`.
//! - [`pareto`]: objectives and the Pareto front.
//! - [`logged`]: the same on a decision log's signals instead of a
//!   scenario (off-policy training and self-normalised IPW).
//! - this file: the command, its table, JSON and trade-off plot.

pub mod constraint;
pub mod grid;
pub mod guard;
pub mod logged;
pub mod pareto;

use crate::env::report::{PlotFile, with_canvas};
use crate::env::{
    Agent, Environment, Format, RunConfig, Scenario, UserStats, load_policies, load_scenario,
    progress, run_policy,
};
use anyhow::Context as _;
use guard::{GuardLabel, GuardSetting};
use pareto::Objective;
use plotters::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `nudge-sim tune`: compare reward functions on one scenario.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The scenario file (`.toml`); or give `--log`.
    #[arg(required_unless_present = "log", conflicts_with = "log")]
    pub scenario: Option<PathBuf>,
    /// Tune on a decision log (JSONL with signals, as `run` writes)
    /// instead of a scenario: the policy is trained on the first half of
    /// the log under each setting and evaluated on the second half.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// The policy file (default: the scenario's first `policies` entry;
    /// required with `--log`).
    #[arg(long, short = 'p', value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// The weight of a signal: `NAME=V` (fixed), `NAME=A..B` (`--steps`
    /// evenly spaced values from A to B) or `NAME=V1,V2,…`. Repeat for
    /// each weighted signal; the grid is every combination.
    #[arg(
        long = "weight",
        short = 'w',
        value_name = "NAME=VALUES",
        required = true
    )]
    pub weights: Vec<String>,
    /// Values in each `A..B` range (both ends included).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// The direction of a signal as an objective: `NAME=max` or
    /// `NAME=min` (repeatable). Default: every weighted signal, `max` if
    /// its weights are positive, `min` if negative.
    #[arg(long = "objective", value_name = "NAME=max|min")]
    pub objectives: Vec<String>,
    /// Guardrail caps in the grid: at most N sends per user per
    /// `--cap-per` (rolling), as `none`, `N`, `A..B` or a comma list
    /// (`none,1..6`). Replaces the policy's caps.
    #[arg(long, value_name = "VALUES")]
    pub cap: Option<String>,
    /// The caps' window.
    #[arg(long, value_name = "DURATION", default_value = "24h")]
    pub cap_per: String,
    /// Quiet hours in the grid (local time): `none` or `HH:MM-HH:MM`
    /// (a send is held; `/delay`: delivered when they end), comma-separated
    /// (`none,22:00-08:00`). Replaces the policy's quiet hours.
    #[arg(long, value_name = "VALUES")]
    pub quiet_hours: Option<String>,
    /// Rounds per setting (default: the scenario's `horizon`).
    #[arg(long)]
    pub horizon: Option<usize>,
    /// Seed of contexts and outcomes (default: the scenario's `seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// A constraint on a signal's mean per round, `SIGNAL <= VALUE` or
    /// `SIGNAL >= VALUE` (repeatable): the output names the best setting
    /// meeting all of them (best on the first objective) and its margins.
    #[arg(long = "subject-to", value_name = "CONSTRAINT")]
    pub subject_to: Vec<String>,
    /// Plot the trade-off (`.png` or `.svg`).
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// The outcome of one reward setting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setting {
    /// The weights, by signal.
    pub weights: BTreeMap<String, f64>,
    /// Per signal: mean expected value per round of the chosen actions
    /// (the hidden model's mean: no outcome noise).
    pub outcomes: BTreeMap<String, f64>,
    /// Per signal: mean realised value per round (scenarios only).
    pub realised: Option<BTreeMap<String, f64>>,
    /// Mean realised reward under this setting's own reward function.
    pub mean_reward: f64,
    /// Cumulative pseudo-regret under this setting's reward function
    /// (scenarios only).
    pub regret: Option<f64>,
    /// Per signal: the standard error of `outcomes` (logs only: the
    /// self-normalised IPW estimate's delta-method error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr: Option<BTreeMap<String, f64>>,
    /// Whether no other setting dominates it on the objectives.
    pub pareto: bool,
    /// Whether it meets every `--subject-to` constraint (absent without).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub feasible: Option<bool>,
    /// The setting's guardrails, when the grid has some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guardrails: Option<GuardLabel>,
    /// Users and guardrail outcomes (scenarios with users or guardrailed
    /// policies): users unsubscribed, sends, exclusions by reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<UserStats>,
    /// The guardrail setting (for labels).
    #[serde(skip)]
    pub guard: GuardSetting,
}

/// The result of a tuning run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tuning {
    /// Scenario name, or the log's path.
    pub scenario: String,
    /// Policy id.
    pub policy: String,
    /// Rounds per setting (with a log: events in the evaluation half).
    pub horizon: usize,
    /// Seed.
    pub seed: u64,
    /// The objectives the Pareto front is over.
    pub objectives: Vec<Objective>,
    /// One per grid point.
    pub settings: Vec<Setting>,
    /// The `--subject-to` constraints.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<constraint::Constraint>,
    /// The best setting meeting every constraint (with constraints; absent
    /// when none meets them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub best: Option<constraint::Best>,
}

/// Runs `policy_file`'s policy on `scenario` under every weight setting of
/// `grid` and marks the Pareto front over `objectives`.
pub fn tune(
    scenario: &Scenario,
    policy: &nudge::policy::Policy,
    grid: &[BTreeMap<String, f64>],
    objectives: &[Objective],
    horizon: usize,
    seed: u64,
    on_progress: impl FnMut(u64),
) -> anyhow::Result<Tuning> {
    tune_with(
        scenario,
        policy,
        grid,
        &[GuardSetting::default()],
        0,
        objectives,
        horizon,
        seed,
        on_progress,
    )
}

/// [`tune`] over every combination of a weight setting and a guardrail
/// setting (`guards`; caps over rolling windows of `cap_per_ms`).
#[allow(clippy::too_many_arguments)]
pub fn tune_with(
    scenario: &Scenario,
    policy: &nudge::policy::Policy,
    grid: &[BTreeMap<String, f64>],
    guards: &[GuardSetting],
    cap_per_ms: i64,
    objectives: &[Objective],
    horizon: usize,
    seed: u64,
    mut on_progress: impl FnMut(u64),
) -> anyhow::Result<Tuning> {
    let signals = scenario.signals();
    let actions = scenario.actions();
    let cfg = RunConfig {
        horizon,
        seed,
        learn: true,
        curve_points: 1,
    };
    let n = horizon.max(1) as f64;
    let in_grid = guards.iter().any(|g| *g != GuardSetting::default());
    let mut settings = Vec::with_capacity(grid.len() * guards.len());
    for weights in grid {
        for g in guards {
            let spec = guard::apply(
                policy.spec(),
                g,
                cap_per_ms,
                scenario.users.as_ref(),
                &actions,
            )?;
            let guarded = nudge::policy::Policy::new(spec);
            let agent = Agent::new(&guarded, scenario, Some(weights))?;
            let mut model = agent.policy.new_model();
            let run = run_policy(
                scenario,
                &agent,
                &mut model,
                &cfg,
                |_| Ok(()),
                &mut on_progress,
            )?;
            let per = |v: &[f64]| -> BTreeMap<String, f64> {
                signals
                    .iter()
                    .zip(v)
                    .map(|(s, x)| (s.clone(), x / n))
                    .collect()
            };
            settings.push(Setting {
                weights: weights.clone(),
                outcomes: per(&run.signal_expected),
                realised: Some(per(&run.signal_totals)),
                mean_reward: run.cumulative_reward / n,
                regret: Some(run.regret),
                stderr: None,
                pareto: false,
                feasible: None,
                guardrails: in_grid.then(|| g.label()),
                users: run.users.clone(),
                guard: *g,
            });
        }
    }
    let points: Vec<Vec<f64>> = settings
        .iter()
        .map(|s| objectives.iter().map(|o| s.outcomes[&o.signal]).collect())
        .collect();
    let front = pareto::front(&points, objectives);
    for (s, f) in settings.iter_mut().zip(front) {
        s.pareto = f;
    }
    Ok(Tuning {
        scenario: scenario.name.clone(),
        policy: policy.id().to_string(),
        horizon,
        seed,
        objectives: objectives.to_vec(),
        settings,
        constraints: Vec::new(),
        best: None,
    })
}

/// Runs the command.
pub fn main(args: Args) -> anyhow::Result<ExitCode> {
    let specs = args
        .weights
        .iter()
        .map(|w| grid::parse_weight(w, args.steps))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let grid = grid::cartesian(&specs)?;
    let (mut tuning, signals) = match (&args.scenario, &args.log) {
        (Some(path), _) => tune_scenario(&args, path, &specs, &grid)?,
        (None, Some(log)) => {
            if args.cap.is_some() || args.quiet_hours.is_some() {
                anyhow::bail!(
                    "--cap and --quiet-hours need a scenario (users over time); a logged run's \
                     eligibility is the one it was logged with"
                );
            }
            let policy_path = args
                .policy
                .as_ref()
                .context("--log needs --policy FILE: the policy to train and evaluate")?;
            let policy = load_policies(std::slice::from_ref(policy_path))?.remove(0);
            let names: Vec<String> = specs.iter().map(|s| s.signal.clone()).collect();
            let objectives = pareto::objectives(&args.objectives, &specs, &names)?;
            let bar = progress(0, &format!("tuning {} on {}", policy.id(), log.display()));
            let out = logged::tune_log(log, &policy, &grid, &objectives, |n| bar.inc(n))?;
            bar.finish_and_clear();
            out
        }
        (None, None) => anyhow::bail!("give a scenario file or --log FILE"),
    };
    tuning.constraints = args
        .subject_to
        .iter()
        .map(|c| constraint::Constraint::parse(c, &signals))
        .collect::<anyhow::Result<_>>()?;
    tuning.best = constraint::apply(&mut tuning);
    if let Some(path) = &args.plot {
        plot(path, &tuning)?;
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.format {
        Format::Table => write_table(&mut out, &tuning, &signals)?,
        Format::Json => {
            serde_json::to_writer_pretty(&mut out, &tuning)?;
            writeln!(out)?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn tune_scenario(
    args: &Args,
    path: &Path,
    specs: &[grid::WeightSpec],
    grid: &[BTreeMap<String, f64>],
) -> anyhow::Result<(Tuning, Vec<String>)> {
    let scenario = load_scenario(path)?;
    let policy_path = match &args.policy {
        Some(p) => p.clone(),
        None => scenario.policies.first().cloned().with_context(|| {
            format!(
                "{}: no policy: pass --policy FILE (or list `policies` in the scenario)",
                path.display()
            )
        })?,
    };
    let policy = load_policies(std::slice::from_ref(&policy_path))?.remove(0);
    let signals = scenario.signals();
    for s in specs {
        if !signals.contains(&s.signal) {
            anyhow::bail!(
                "--weight {}: {} has no signal `{}` (its signals: {})",
                s.signal,
                scenario.name,
                s.signal,
                signals.join(", ")
            );
        }
    }
    let objectives = pareto::objectives(&args.objectives, specs, &signals)?;
    let horizon = args.horizon.unwrap_or(scenario.horizon);
    if horizon == 0 {
        anyhow::bail!("--horizon must be at least 1");
    }
    let seed = args.seed.unwrap_or(scenario.seed);
    let caps = args.cap.as_deref().map(guard::parse_caps).transpose()?;
    let quiet = args
        .quiet_hours
        .as_deref()
        .map(guard::parse_quiet)
        .transpose()?;
    let guards = guard::combinations(caps.as_deref(), quiet.as_deref());
    if grid.len() * guards.len() > grid::MAX_SETTINGS {
        anyhow::bail!(
            "the grid has more than {} settings; use fewer values",
            grid::MAX_SETTINGS
        );
    }
    let cap_per_ms = match humantime::parse_duration(&args.cap_per) {
        Ok(d) if !d.is_zero() && d.as_secs() <= 366 * 86_400 => d.as_millis() as i64,
        _ => anyhow::bail!(
            "--cap-per {:?}: expected a positive duration of at most 366 days, such as \"24h\"",
            args.cap_per
        ),
    };
    let bar = progress(
        (horizon * grid.len() * guards.len()) as u64,
        &format!("tuning {} on {}", policy.id(), scenario.name),
    );
    let tuning = tune_with(
        &scenario,
        &policy,
        grid,
        &guards,
        cap_per_ms,
        &objectives,
        horizon,
        seed,
        |n| bar.inc(n),
    )?;
    bar.finish_and_clear();
    Ok((tuning, signals))
}

/// Writes the settings as an aligned table, Pareto-efficient ones marked `*`.
pub fn write_table(out: &mut dyn Write, t: &Tuning, signals: &[String]) -> std::io::Result<()> {
    writeln!(
        out,
        "{} on {}: {} rounds per setting, seed {}",
        t.policy, t.scenario, t.horizon, t.seed
    )?;
    let objectives: Vec<String> = t
        .objectives
        .iter()
        .map(|o| format!("{} {}", o.direction.name(), o.signal))
        .collect();
    writeln!(out, "objectives: {}", objectives.join(", "))?;
    let weight_names: Vec<&String> = t
        .settings
        .first()
        .map(|s| s.weights.keys().collect())
        .unwrap_or_default();
    let guarded = t.settings.iter().any(|s| s.guardrails.is_some());
    let with_users = t
        .settings
        .iter()
        .any(|s| s.users.as_ref().is_some_and(|u| u.users > 0));
    let constrained = !t.constraints.is_empty();
    let mut header = String::from("pareto");
    if constrained {
        header.push_str(" meets");
    }
    for w in &weight_names {
        header.push_str(&format!(" {:>12}", "w.".to_string() + w));
    }
    if guarded {
        header.push_str(&format!(" {:>6} {:>18}", "cap", "quiet hours"));
    }
    for s in signals {
        header.push_str(&format!(" {:>14}", s));
    }
    header.push_str(&format!(" {:>12} {:>12}", "mean reward", "regret"));
    if with_users {
        header.push_str(&format!(" {:>9} {:>8}", "unsub.", "sends"));
    }
    writeln!(out, "{header}")?;
    for s in &t.settings {
        let mut line = format!("{:<6}", if s.pareto { "*" } else { "" });
        if constrained {
            line.push_str(&format!(
                " {:<5}",
                if s.feasible == Some(true) {
                    "yes"
                } else {
                    "no"
                }
            ));
        }
        for w in &weight_names {
            line.push_str(&format!(" {:>12}", s.weights[*w]));
        }
        if guarded {
            let cap = match s.guard.cap {
                None => "policy".to_string(),
                Some(None) => "none".to_string(),
                Some(Some(c)) => c.to_string(),
            };
            let quiet = match s.guard.quiet {
                None => "policy".to_string(),
                Some(None) => "none".to_string(),
                Some(Some(q)) => q.label(),
            };
            line.push_str(&format!(" {cap:>6} {quiet:>18}"));
        }
        for sig in signals {
            line.push_str(&format!(" {:>14.5}", s.outcomes[sig]));
        }
        let regret = s.regret.map_or("-".to_string(), |r| format!("{r:.2}"));
        line.push_str(&format!(" {:>12.5} {:>12}", s.mean_reward, regret));
        if with_users && let Some(u) = &s.users {
            line.push_str(&format!(" {:>9} {:>8}", u.unsubscribed, u.sends));
        }
        writeln!(out, "{line}")?;
    }
    writeln!(
        out,
        "signals: mean expected value per round of the chosen actions (with a log: self-normalised IPW estimate); * = Pareto-efficient"
    )?;
    if with_users {
        writeln!(
            out,
            "unsub.: users who unsubscribed during the run; sends: sends delivered"
        )?;
    }
    if constrained {
        let wanted: Vec<String> = t.constraints.iter().map(|c| c.text()).collect();
        match &t.best {
            None => writeln!(
                out,
                "no setting meets {}: widen the grid or relax the constraint",
                wanted.join(" and ")
            )?,
            Some(b) => {
                let weights: Vec<String> =
                    b.weights.iter().map(|(k, v)| format!("{k}={v}")).collect();
                writeln!(
                    out,
                    "best setting subject to {}: {} ({} = {:.5})",
                    wanted.join(" and "),
                    weights.join(" "),
                    b.objective,
                    b.value
                )?;
                for m in &b.margins {
                    let interval = m.interval.map_or(String::new(), |(lo, hi)| {
                        format!(" (95% interval of the margin [{lo:.5}, {hi:.5}])")
                    });
                    writeln!(
                        out,
                        "  {}: {:.5}, margin {:.5}{interval}",
                        m.constraint, m.value, m.margin
                    )?;
                }
                if !b.certain {
                    writeln!(
                        out,
                        "  warning: the estimate's interval crosses the bound: the log cannot \
                         tell whether this setting meets the constraint"
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// Plots the trade-off between the first two objectives (or the only
/// objective against the setting number): every setting a point labelled
/// with its weights, the Pareto front highlighted and joined.
pub fn plot(path: &Path, t: &Tuning) -> anyhow::Result<()> {
    let file = PlotFile::new(path)?;
    with_canvas(
        file,
        (1000, 750),
        |root| draw(root, t),
        |root| draw(root, t),
    )
    .with_context(|| format!("writing {}", path.display()))
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {e:?}")
}

fn span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = if hi > lo {
        0.08 * (hi - lo)
    } else {
        0.05 * lo.abs().max(1e-3)
    };
    (lo - pad, hi + pad)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    t: &Tuning,
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let varying: Vec<&String> = t
        .settings
        .first()
        .map(|s| {
            s.weights
                .keys()
                .filter(|k| t.settings.iter().any(|o| o.weights[*k] != s.weights[*k]))
                .collect()
        })
        .unwrap_or_default();
    let label = |s: &Setting| -> String {
        let mut parts: Vec<String> = varying
            .iter()
            .map(|k| format!("{k}={}", s.weights[*k]))
            .collect();
        let g = s.guard.text();
        if !g.is_empty() {
            parts.push(g);
        }
        parts.join(" ")
    };
    let (xname, points): (String, Vec<(f64, f64)>) = match t.objectives.as_slice() {
        [only] => (
            "setting".into(),
            t.settings
                .iter()
                .enumerate()
                .map(|(i, s)| (i as f64, s.outcomes[&only.signal]))
                .collect(),
        ),
        [x, y, ..] => (
            format!("{} ({})", x.signal, x.direction.name()),
            t.settings
                .iter()
                .map(|s| (s.outcomes[&x.signal], s.outcomes[&y.signal]))
                .collect(),
        ),
        [] => anyhow::bail!("no objective to plot"),
    };
    let yname = match t.objectives.as_slice() {
        [only] => format!("{} ({})", only.signal, only.direction.name()),
        [_, y, ..] => format!("{} ({})", y.signal, y.direction.name()),
        [] => unreachable!("checked above"),
    };
    let (x0, x1) = span(points.iter().map(|p| p.0));
    let (y0, y1) = span(points.iter().map(|p| p.1));
    let mut chart = ChartBuilder::on(root)
        .caption(
            format!("{} on {}: reward trade-off", t.policy, t.scenario),
            ("sans-serif", 22),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(xname)
        .y_desc(yname)
        .draw()
        .map_err(plot_err)?;
    let mut front: Vec<(f64, f64)> = points
        .iter()
        .zip(&t.settings)
        .filter(|(_, s)| s.pareto)
        .map(|(p, _)| *p)
        .collect();
    front.sort_by(|a, b| a.0.total_cmp(&b.0));
    chart
        .draw_series(LineSeries::new(front.iter().copied(), RED.stroke_width(2)))
        .map_err(plot_err)?
        .label("Pareto front")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    // Each constraint on a plotted signal is a dashed line at its bound.
    let axes: Vec<&str> = match t.objectives.as_slice() {
        [x, y, ..] => vec![x.signal.as_str(), y.signal.as_str()],
        [only] => vec!["", only.signal.as_str()],
        [] => vec![],
    };
    for c in &t.constraints {
        let line = match axes.iter().position(|a| *a == c.signal) {
            Some(0) if (x0..=x1).contains(&c.bound) => vec![(c.bound, y0), (c.bound, y1)],
            Some(1) if (y0..=y1).contains(&c.bound) => vec![(x0, c.bound), (x1, c.bound)],
            _ => continue,
        };
        chart
            .draw_series(DashedLineSeries::new(line, 6, 4, BLUE.stroke_width(1)))
            .map_err(plot_err)?
            .label(c.text())
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE));
    }
    // A label starts right of its point unless it would run past the
    // plot's right edge; then it ends left of the point.
    let plot_width = f64::from(chart.plotting_area().dim_in_pixel().0);
    let best = t.best.as_ref().map(|b| b.index);
    chart
        .draw_series(
            points
                .iter()
                .zip(&t.settings)
                .enumerate()
                .map(|(i, (p, s))| {
                    let style = if s.pareto {
                        RED.filled()
                    } else {
                        BLACK.mix(0.5).filled()
                    };
                    let mut text = label(s);
                    if best == Some(i) {
                        text.push_str(" (best feasible)");
                    }
                    let text_width = 6.5 * text.chars().count() as f64;
                    let at = (p.0 - x0) / (x1 - x0) * plot_width;
                    let dx = if at + 7.0 + text_width > plot_width {
                        -(text_width as i32) - 7
                    } else {
                        7
                    };
                    EmptyElement::at(*p)
                        + Circle::new((0, 0), if best == Some(i) { 8 } else { 5 }, style)
                        + Text::new(text, (dx, -12), ("sans-serif", 12).into_font())
                }),
        )
        .map_err(plot_err)?;
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    Ok(())
}
