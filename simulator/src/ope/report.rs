//! Output of `nudge-sim evaluate`: a table for people, JSON for machines,
//! and a plot comparing candidates with their intervals.

use super::{Evaluation, Outcome};
use anyhow::{Context, bail};
use serde_json::{Map, Value, json};
use std::io::Write;
use std::path::Path;

/// The JSON object of one candidate. Stable keys: `candidate`, `n`,
/// `skipped_no_reward`, `skipped_skip_learn` (DSJSON `_skipLearn` lines),
/// `reward_windows` (the fields of
/// [`super::window::WindowStats`]), `estimates` (`{name: {value, stderr, ci_low,
/// ci_high, ci_method, normal_ci_low, normal_ci_high}}`, `ci_method` being
/// `"bootstrap"` or `"normal"`; IPW and SNIPW add `eb_ci_low`/`eb_ci_high`,
/// the empirical-Bernstein interval, and with `--confidence-sequence`
/// `cs_low`/`cs_high`) and `diagnostics` (the fields of
/// [`super::Diagnostics`]). Non-finite numbers are `null`.
pub fn candidate_json(name: &str, ev: &Evaluation, outcome: &Outcome) -> Value {
    let mut estimates = Map::new();
    for e in &ev.estimates {
        let mut v = json!({
            "value": e.value,
            "stderr": e.stderr,
            "ci_low": e.ci_low,
            "ci_high": e.ci_high,
            "ci_method": if e.bootstrap_ci.is_some() { "bootstrap" } else { "normal" },
            "normal_ci_low": e.normal_ci.0,
            "normal_ci_high": e.normal_ci.1,
        });
        for (key, ci) in [("eb_ci", e.eb_ci), ("cs", e.cs)] {
            if let Some((lo, hi)) = ci {
                v[format!("{key}_low")] = json!(lo);
                v[format!("{key}_high")] = json!(hi);
            }
        }
        estimates.insert(e.name.to_string(), v);
    }
    json!({
        "candidate": name,
        "n": ev.n,
        "skipped_no_reward": outcome.skipped_no_reward,
        "skipped_skip_learn": outcome.skipped_skip_learn,
        "reward_windows": outcome.windows,
        "estimates": estimates,
        "diagnostics": ev.diagnostics,
    })
}

/// One JSON object per candidate, one per line.
pub fn write_json(out: &mut dyn Write, outcome: &Outcome) -> anyhow::Result<()> {
    for (name, ev) in &outcome.candidates {
        let v = candidate_json(name, ev, outcome);
        writeln!(out, "{}", serde_json::to_string(&v)?)?;
    }
    Ok(())
}

/// A readable table per candidate, with its diagnostics and warnings.
pub fn write_table(out: &mut dyn Write, outcome: &Outcome) -> anyhow::Result<()> {
    let w = &outcome.windows;
    if w.open + w.defaulted + w.included_open + w.kept_first_rewarded + outcome.skipped_no_reward
        > 0
    {
        writeln!(
            out,
            "reward windows: {} events left out inside their window, {} with no reward and no \
             known window; {} closed without a reward (default), {} open ones included, {} \
             kept as rewarded under `first`",
            w.open, outcome.skipped_no_reward, w.defaulted, w.included_open, w.kept_first_rewarded
        )?;
    }
    for (name, ev) in &outcome.candidates {
        let d = &ev.diagnostics;
        writeln!(out, "\ncandidate {name}  (n = {})", ev.n)?;
        writeln!(
            out,
            "  {:<10} {:>12} {:>12} {:>27}  interval",
            "estimator", "value", "stderr", "confidence interval"
        )?;
        for e in &ev.estimates {
            let method = if e.bootstrap_ci.is_some() {
                "bootstrap"
            } else {
                "normal"
            };
            writeln!(
                out,
                "  {:<10} {:>12.6} {:>12.6} {:>27}  {method}",
                e.name,
                e.value,
                e.stderr,
                format!("[{:.6}, {:.6}]", e.ci_low, e.ci_high)
            )?;
            for (ci, label) in [
                (e.eb_ci, "empirical Bernstein"),
                (e.cs, "anytime-valid (confidence sequence)"),
            ] {
                if let Some((lo, hi)) = ci {
                    writeln!(
                        out,
                        "  {:<10} {:>12} {:>12} {:>27}  {label}",
                        "",
                        "",
                        "",
                        format!("[{lo:.6}, {hi:.6}]")
                    )?;
                }
            }
        }
        writeln!(
            out,
            "  match rate {:.1}% (replay {:.1}%), effective sample size {:.1} ({:.1}% of n), \
             importance weight max {:.3} mean {:.4}",
            100.0 * d.match_rate,
            100.0 * d.replay_match_rate,
            d.ess,
            100.0 * d.ess / ev.n as f64,
            d.max_weight,
            d.mean_weight
        )?;
        writeln!(
            out,
            "  propensities in [{:.4}, {:.4}]; tiny {:.2}%, deterministic (= 1) {:.2}%",
            d.min_propensity,
            d.max_propensity,
            100.0 * d.tiny_propensity_share,
            100.0 * d.deterministic_share
        )?;
        for w in &d.warnings {
            writeln!(out, "  warning: {w}")?;
        }
    }
    Ok(())
}

/// Draws every candidate's estimates with their intervals to `path`
/// (`.png` or `.svg`).
pub fn plot(path: &Path, outcome: &Outcome) -> anyhow::Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let points: Vec<(String, f64, f64, f64)> = outcome
        .candidates
        .iter()
        .flat_map(|(name, ev)| {
            let short = Path::new(name)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_else(|| name.clone());
            ev.estimates
                .iter()
                .filter(|e| e.value.is_finite())
                .map(move |e| {
                    let (lo, hi) = if e.ci_low.is_finite() && e.ci_high.is_finite() {
                        (e.ci_low, e.ci_high)
                    } else {
                        (e.value, e.value)
                    };
                    (format!("{short} {}", e.name), lo, e.value, hi)
                })
        })
        .collect();
    if points.is_empty() {
        bail!("nothing to plot: no finite estimate");
    }
    // A forest plot: one row per (candidate, estimator), labels on the left.
    let longest = points
        .iter()
        .map(|p| p.0.chars().count())
        .max()
        .unwrap_or(10) as u32;
    let size = (
        (longest * 8 + 560).min(2400),
        (110 + 30 * points.len() as u32).min(4000),
    );
    match ext.as_deref() {
        Some("png") => {
            let root = plotters::prelude::BitMapBackend::new(path, size);
            draw(root, &points).with_context(|| format!("cannot draw {}", path.display()))
        }
        Some("svg") => {
            let root = plotters::prelude::SVGBackend::new(path, size);
            draw(root, &points).with_context(|| format!("cannot draw {}", path.display()))
        }
        _ => bail!(
            "--plot {}: the file name must end in .png or .svg",
            path.display()
        ),
    }
}

fn draw<DB: plotters::prelude::DrawingBackend>(
    backend: DB,
    points: &[(String, f64, f64, f64)],
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    use plotters::prelude::*;
    let root = backend.into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.3).fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.1).max(1e-6);
    let n = points.len();
    let longest = points
        .iter()
        .map(|p| p.0.chars().count())
        .max()
        .unwrap_or(10) as u32;
    let mut chart = ChartBuilder::on(&root)
        .caption("Off-policy estimates and intervals", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(longest * 8 + 20)
        .build_cartesian_2d((lo - pad)..(hi + pad), -0.5f64..(n as f64 - 0.5))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .y_labels(n)
        .y_label_formatter(&|y| {
            let i = y.round();
            if (y - i).abs() < 1e-9 && i >= 0.0 && (i as usize) < n {
                // Row 0 at the top.
                points[n - 1 - i as usize].0.clone()
            } else {
                String::new()
            }
        })
        .y_label_style(("sans-serif", 13))
        .x_desc("policy value")
        .disable_y_mesh()
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let row = |i: usize| (n - 1 - i) as f64;
    chart
        .draw_series(
            points
                .iter()
                .enumerate()
                .map(|(i, p)| ErrorBar::new_horizontal(row(i), p.1, p.2, p.3, BLUE.filled(), 10)),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(
            points
                .iter()
                .enumerate()
                .map(|(i, p)| Circle::new((p.2, row(i)), 4, RED.filled())),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
