//! The summary of a run: a table for people, JSON for machines, and the
//! learning curves as a plot.

use super::engine::{CurvePoint, PolicyRun, UserStats};
use anyhow::Context as _;
use plotters::prelude::*;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// One signal's outcome under a policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SignalRate {
    /// Mean realised value per round (for a 0/1 signal: its rate).
    pub rate: f64,
    /// Mean expected value per round of the chosen actions (the same
    /// without outcome noise).
    pub expected_rate: f64,
}

/// The summary of one policy's run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicySummary {
    /// Policy id.
    pub policy: String,
    /// Its algorithm.
    pub algorithm: String,
    /// Rounds run.
    pub rounds: usize,
    /// Sum of realised rewards.
    pub cumulative_reward: f64,
    /// `cumulative_reward / rounds`.
    pub mean_reward: f64,
    /// Mean expected reward of the chosen actions.
    pub mean_expected_reward: f64,
    /// Mean expected reward of the oracle (best action every round).
    pub oracle_mean_reward: f64,
    /// Cumulative pseudo-regret against the oracle.
    pub regret: f64,
    /// Per signal, by name.
    pub signals: BTreeMap<String, SignalRate>,
    /// Share of rounds each action was chosen, by id.
    pub actions: BTreeMap<String, f64>,
    /// Users and guardrails: users unsubscribed, sends delivered, forced
    /// holds, exclusions by reason (scenarios with `[users]` or guardrailed
    /// policies).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<UserStats>,
}

/// The summary of a run: every policy against one environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// Scenario or dataset name.
    pub environment: String,
    /// Seed of contexts and outcomes.
    pub seed: u64,
    /// Rounds per policy.
    pub horizon: usize,
    /// The reward function each policy learned from, by policy id.
    pub reward: BTreeMap<String, BTreeMap<String, f64>>,
    /// One per policy, in the order run.
    pub policies: Vec<PolicySummary>,
}

impl PolicySummary {
    /// Summarises a run; `signals` and `actions` name the environment's.
    pub fn new(run: &PolicyRun, signals: &[String], actions: &[String]) -> PolicySummary {
        let n = run.rounds.max(1) as f64;
        PolicySummary {
            policy: run.policy.clone(),
            algorithm: run.algorithm.clone(),
            rounds: run.rounds,
            cumulative_reward: run.cumulative_reward,
            mean_reward: run.cumulative_reward / n,
            mean_expected_reward: run.expected_reward / n,
            oracle_mean_reward: run.oracle_reward / n,
            regret: run.regret,
            signals: signals
                .iter()
                .enumerate()
                .map(|(j, s)| {
                    (
                        s.clone(),
                        SignalRate {
                            rate: run.signal_totals[j] / n,
                            expected_rate: run.signal_expected[j] / n,
                        },
                    )
                })
                .collect(),
            actions: actions
                .iter()
                .zip(&run.action_counts)
                .map(|(a, c)| (a.clone(), *c as f64 / n))
                .collect(),
            users: run.users.clone(),
        }
    }
}

/// Writes the summary as an aligned table.
pub fn write_table(out: &mut dyn Write, s: &Summary) -> std::io::Result<()> {
    writeln!(
        out,
        "{}: {} rounds per policy, seed {}",
        s.environment, s.horizon, s.seed
    )?;
    writeln!(
        out,
        "{:<24} {:>14} {:>11} {:>11} {:>11} {:>12}",
        "policy", "cum. reward", "mean", "expected", "oracle", "regret"
    )?;
    for p in &s.policies {
        writeln!(
            out,
            "{:<24} {:>14.3} {:>11.5} {:>11.5} {:>11.5} {:>12.3}",
            p.policy,
            p.cumulative_reward,
            p.mean_reward,
            p.mean_expected_reward,
            p.oracle_mean_reward,
            p.regret
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "per-signal outcomes (mean per round; expected in brackets)"
    )?;
    for p in &s.policies {
        let signals: Vec<String> = p
            .signals
            .iter()
            .map(|(name, r)| format!("{name} {:.5} [{:.5}]", r.rate, r.expected_rate))
            .collect();
        writeln!(out, "{:<24} {}", p.policy, signals.join("  "))?;
    }
    writeln!(out)?;
    writeln!(out, "action shares")?;
    for p in &s.policies {
        let actions: Vec<String> = p
            .actions
            .iter()
            .map(|(a, share)| format!("{a} {:.3}", share))
            .collect();
        writeln!(out, "{:<24} {}", p.policy, actions.join("  "))?;
    }
    if s.policies.iter().any(|p| p.users.is_some()) {
        writeln!(out)?;
        writeln!(out, "users and guardrails")?;
        for p in &s.policies {
            let Some(u) = &p.users else { continue };
            let excl: Vec<String> = u
                .exclusions
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            writeln!(
                out,
                "{:<24} users {}  unsubscribed {}  sends {}  forced holds {}  exclusions: {}",
                p.policy,
                u.users,
                u.unsubscribed,
                u.sends,
                u.forced,
                if excl.is_empty() {
                    "none".to_string()
                } else {
                    excl.join(", ")
                }
            )?;
        }
    }
    for (policy, weights) in &s.reward {
        let w: Vec<String> = weights.iter().map(|(k, v)| format!("{k}={v}")).collect();
        writeln!(out, "reward of {policy}: {}", w.join(", "))?;
    }
    Ok(())
}

/// Where a plot goes: the backend follows the file extension.
pub enum PlotFile<'a> {
    /// `.png`.
    Png(&'a Path),
    /// `.svg`.
    Svg(&'a Path),
}

impl<'a> PlotFile<'a> {
    /// Picks the backend from the extension; anything but `.png` / `.svg`
    /// is an error saying so.
    pub fn new(path: &'a Path) -> anyhow::Result<PlotFile<'a>> {
        match path.extension().and_then(|e| e.to_str()) {
            Some(e) if e.eq_ignore_ascii_case("png") => Ok(PlotFile::Png(path)),
            Some(e) if e.eq_ignore_ascii_case("svg") => Ok(PlotFile::Svg(path)),
            _ => anyhow::bail!("{}: a plot file must end in .png or .svg", path.display()),
        }
    }
}

/// Draws with `draw` on a `width × height` canvas of the file's kind.
pub fn with_canvas(
    file: PlotFile<'_>,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>) -> anyhow::Result<()>,
    draw_svg: impl FnOnce(&DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    match file {
        PlotFile::Png(path) => {
            let root = BitMapBackend::new(path, size).into_drawing_area();
            draw(&root)?;
            root.present()
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
        PlotFile::Svg(path) => {
            let root = SVGBackend::new(path, size).into_drawing_area();
            draw_svg(&root)?;
            root.present()
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
    }
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing the plot: {e:?}")
}

/// Plots the learning curves: cumulative regret (top) and mean reward so
/// far (bottom), one line per policy.
pub fn plot_curves(path: &Path, environment: &str, runs: &[PolicyRun]) -> anyhow::Result<()> {
    let file = PlotFile::new(path)?;
    with_canvas(
        file,
        (1000, 800),
        |root| draw_curves(root, environment, runs),
        |root| draw_curves(root, environment, runs),
    )
    .with_context(|| format!("writing {}", path.display()))
}

/// One panel of the curves plot: its area, its label and what it shows.
type Panel<'a, DB> = (
    &'a DrawingArea<DB, plotters::coord::Shift>,
    &'a str,
    &'a dyn Fn(&CurvePoint) -> f64,
);

fn draw_curves<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    environment: &str,
    runs: &[PolicyRun],
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(plot_err)?;
    let (top, bottom) = root.split_vertically(400);
    let rounds = runs
        .iter()
        .filter_map(|r| r.curve.last().map(|p| p.round))
        .max()
        .unwrap_or(1)
        .max(1);
    let range = |f: &dyn Fn(&CurvePoint) -> f64| {
        let (lo, hi) = runs
            .iter()
            .flat_map(|r| r.curve.iter().map(f))
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            });
        if lo.is_finite() && hi > lo {
            let pad = 0.05 * (hi - lo);
            (lo - pad, hi + pad)
        } else if lo.is_finite() {
            (lo - 1.0, lo + 1.0)
        } else {
            (0.0, 1.0)
        }
    };
    let panels: [Panel<'_, DB>; 2] = [
        (&top, "cumulative regret", &|p: &CurvePoint| p.regret),
        (&bottom, "mean reward so far", &|p: &CurvePoint| {
            p.mean_reward
        }),
    ];
    for (i, (area, label, f)) in panels.into_iter().enumerate() {
        let (lo, hi) = range(f);
        let mut chart = ChartBuilder::on(area)
            .caption(
                if i == 0 {
                    format!("{environment}: {label}")
                } else {
                    label.to_string()
                },
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(0usize..rounds, lo..hi)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("round")
            .y_desc(label)
            .draw()
            .map_err(plot_err)?;
        for (j, run) in runs.iter().enumerate() {
            let color = Palette99::pick(j).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    std::iter::once((0usize, if i == 0 { 0.0 } else { f(&run.curve[0]) }))
                        .chain(run.curve.iter().map(|p| (p.round, f(p)))),
                    color.stroke_width(2),
                ))
                .map_err(plot_err)?
                .label(run.policy.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(if i == 0 {
                SeriesLabelPosition::UpperLeft
            } else {
                SeriesLabelPosition::LowerRight
            })
            .draw()
            .map_err(plot_err)?;
    }
    Ok(())
}
