//! Tuning on logged signals: no scenario, only a decision log whose
//! events carry their outcome signals (as `nudge-sim run` and the service
//! log them).
//!
//! For each reward setting the policy is trained off-policy on the first
//! half of the log (each logged action's features and its re-scored reward
//! `Σ w_s · signal_s`, exactly what the service would have learned had it
//! chosen those actions), then frozen and evaluated on the second half:
//! each signal's mean under the trained policy is estimated by
//! self-normalised IPW (Swaminathan & Joachims 2015),
//! `Σ_i w_i s_i / Σ_i w_i` with `w_i = π(a_i | x_i) / p_i`. Training and
//! evaluating on disjoint halves keeps the estimate honest.

use super::{Setting, Tuning, pareto};
use crate::logfmt::LoggedEvent;
use anyhow::Context as _;
use nudge::features::Features;
use nudge::policy::{Algorithm, Candidate, DecideRequest, Mode, Policy};
use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;

/// One usable logged event: its request and outcome.
struct Event {
    event_id: String,
    context: Features,
    actions: Vec<Candidate<Features>>,
    action: String,
    probability: f64,
    signals: BTreeMap<String, f64>,
    /// Arms the logged decision could not choose (`excluded_by`): the
    /// policy decides among the logged eligible set.
    excluded: Vec<String>,
}

/// Reads the events of `policy_id` (every event if `None`) that carry
/// signals; events without signals cannot be re-scored and are counted
/// as skipped. Every error names the file and the line.
fn read_log(path: &Path) -> anyhow::Result<(Vec<Event>, usize)> {
    let file =
        std::fs::File::open(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut out = Vec::new();
    let mut skipped = 0;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let at = || format!("{}: line {}", path.display(), i + 1);
        let line = line.with_context(at)?;
        if line.trim().is_empty() {
            continue;
        }
        let e: LoggedEvent = serde_json::from_str(&line).with_context(at)?;
        let Some(signals) = e.signals.as_ref().and_then(|s| s.as_object()) else {
            skipped += 1;
            continue;
        };
        let mut values = BTreeMap::new();
        for (name, v) in signals {
            let x = match v {
                serde_json::Value::Bool(b) => f64::from(u8::from(*b)),
                v => v
                    .as_f64()
                    .filter(|x| x.is_finite())
                    .with_context(|| format!("{}: signal `{name}` is not a finite number", at()))?,
            };
            values.insert(name.clone(), x);
        }
        if !(e.probability > 0.0 && e.probability <= 1.0) {
            anyhow::bail!("{}: probability {} is not in (0, 1]", at(), e.probability);
        }
        let context: Features = serde_json::from_value(e.context.clone())
            .with_context(|| format!("{}: context", at()))?;
        let actions: Vec<Candidate<Features>> = match &e.actions {
            Some(a) => {
                serde_json::from_value(a.clone()).with_context(|| format!("{}: actions", at()))?
            }
            None => vec![],
        };
        let excluded = e
            .candidates
            .iter()
            .filter(|c| !c.eligible())
            .map(|c| c.id.clone())
            .collect();
        out.push(Event {
            excluded,
            event_id: e.event_id,
            context,
            actions,
            action: e.action,
            probability: e.probability,
            signals: values,
        });
    }
    Ok((out, skipped))
}

/// The position of the logged action among a decision's candidates.
fn position(policy: &Policy, e: &Event, candidates: &[usize]) -> Option<usize> {
    let spec = policy.spec();
    candidates.iter().position(|&c| match spec.mode {
        Mode::Disjoint => spec.arms[c] == e.action,
        Mode::Shared => e.actions[c].id == e.action,
    })
}

/// Trains `policy` under each setting of `grid` on the first half of the
/// log at `path` and estimates every signal's mean on the second half.
pub fn tune_log(
    path: &Path,
    policy: &Policy,
    grid: &[BTreeMap<String, f64>],
    objectives: &[pareto::Objective],
    mut on_progress: impl FnMut(u64),
) -> anyhow::Result<(Tuning, Vec<String>)> {
    let (events, skipped) = read_log(path)?;
    if events.len() < 2 {
        anyhow::bail!(
            "{}: {} events with signals ({skipped} without): at least 2 are needed",
            path.display(),
            events.len()
        );
    }
    let signals: Vec<String> = {
        let mut all: Vec<String> = events
            .iter()
            .flat_map(|e| e.signals.keys().cloned())
            .collect();
        all.sort();
        all.dedup();
        all
    };
    for o in objectives {
        if !signals.contains(&o.signal) {
            anyhow::bail!(
                "{}: no event carries signal `{}` (the log's signals: {})",
                path.display(),
                o.signal,
                signals.join(", ")
            );
        }
    }
    let half = events.len() / 2;
    let (train, test) = events.split_at(half);
    let mut settings = Vec::with_capacity(grid.len());
    for weights in grid {
        for name in weights.keys() {
            if !signals.contains(name) {
                anyhow::bail!(
                    "--weight {name}: no event of {} carries it (the log's signals: {})",
                    path.display(),
                    signals.join(", ")
                );
            }
        }
        let mut spec = policy.spec().clone();
        spec.reward.signals = weights.clone();
        if spec.algorithm != Algorithm::BetaTs {
            spec.reward.min = None;
            spec.reward.max = None;
        }
        let learner = Policy::new(spec);
        let score = |e: &Event| -> f64 {
            weights
                .iter()
                .map(|(s, w)| w * e.signals.get(s).copied().unwrap_or(0.0))
                .sum()
        };
        let mut model = learner.new_model();
        for e in train {
            let decision = decide(&learner, &model, e)?;
            // An action the policy cannot take (excluded, or not an arm)
            // teaches it nothing.
            if let Some(pos) = position(&learner, e, &decision.candidates) {
                learner
                    .learn(&mut model, &decision, pos, score(e))
                    .with_context(|| format!("event {}", e.event_id))?;
            }
        }
        let (mut sum_w, mut sum_ws, mut sum_wr) = (0.0, vec![0.0; signals.len()], 0.0);
        // For the delta-method variance of each ratio Σws / Σw:
        // Σ w² (s − v)² = Σ w²s² − 2v Σ w²s + v² Σ w².
        let (mut sum_w2, mut sum_w2s, mut sum_w2s2) =
            (0.0, vec![0.0; signals.len()], vec![0.0; signals.len()]);
        for e in test {
            let decision = decide(&learner, &model, e)?;
            let p = position(&learner, e, &decision.candidates)
                .map_or(0.0, |pos| decision.probabilities[pos]);
            let w = p / e.probability;
            sum_w += w;
            sum_wr += w * score(e);
            sum_w2 += w * w;
            for (j, s) in signals.iter().enumerate() {
                let v = e.signals.get(s).copied().unwrap_or(0.0);
                sum_ws[j] += w * v;
                sum_w2s[j] += w * w * v;
                sum_w2s2[j] += w * w * v * v;
            }
        }
        on_progress(events.len() as u64);
        if sum_w <= 0.0 {
            anyhow::bail!(
                "the policy trained under {weights:?} never takes a logged action in the evaluation half: no estimate is possible"
            );
        }
        settings.push(Setting {
            weights: weights.clone(),
            outcomes: signals
                .iter()
                .zip(&sum_ws)
                .map(|(s, v)| (s.clone(), v / sum_w))
                .collect(),
            realised: None,
            mean_reward: sum_wr / sum_w,
            regret: None,
            stderr: Some(
                signals
                    .iter()
                    .enumerate()
                    .map(|(j, s)| {
                        let v = sum_ws[j] / sum_w;
                        let ss = sum_w2s2[j] - 2.0 * v * sum_w2s[j] + v * v * sum_w2;
                        (s.clone(), ss.max(0.0).sqrt() / sum_w)
                    })
                    .collect(),
            ),
            pareto: false,
            feasible: None,
            guardrails: None,
            users: None,
            guard: Default::default(),
        });
    }
    let points: Vec<Vec<f64>> = settings
        .iter()
        .map(|s| objectives.iter().map(|o| s.outcomes[&o.signal]).collect())
        .collect();
    for (s, f) in settings.iter_mut().zip(pareto::front(&points, objectives)) {
        s.pareto = f;
    }
    Ok((
        Tuning {
            scenario: path.display().to_string(),
            policy: policy.id().to_string(),
            horizon: test.len(),
            seed: 0,
            objectives: objectives.to_vec(),
            settings,
            constraints: Vec::new(),
            best: None,
        },
        signals,
    ))
}

fn decide(
    policy: &Policy,
    model: &nudge::model::LinearModel,
    e: &Event,
) -> anyhow::Result<nudge::policy::Decision> {
    let req = DecideRequest {
        event_id: &e.event_id,
        context: &e.context,
        actions: &e.actions,
        excluded: &e.excluded,
        k: 1,
    };
    policy
        .decide(model, &req)
        .with_context(|| format!("policy {}: event {}", policy.id(), e.event_id))
}
