//! The online loop: a policy decides round after round against an
//! environment, learns from the reward of the action it chose, and every
//! step is handed to the caller (to log, trace or evaluate it).

use super::dataset::Dataset;
use super::scenario::{Scenario, Value};
use super::users::{Population, START_MS, UserState, Users};
use anyhow::Context as _;
use nudge::features::FeatureValue;
use nudge::guardrails::{self, Eligibility, Guardrails, SendRecord, Situation, Tz, UserHistory};
use nudge::model::LinearModel;
use nudge::policy::{Algorithm, Candidate, DecideRequest, Decision, Mode, Policy};
use serde::Serialize;
use std::collections::BTreeMap;

/// Named feature values, as a request carries them.
pub type Features = Vec<(String, FeatureValue)>;

/// One round as an environment presents it: the context, and the drawn
/// and expected value of every signal for every action.
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// The context sent to policies.
    pub context: Features,
    /// Drawn signals: `outcomes[a * signals + s]`.
    pub outcomes: Vec<f64>,
    /// `E[s | x, a, t]`, same layout.
    pub expected: Vec<f64>,
}

/// A world policies act in: a synthetic scenario or a full-feedback
/// dataset.
///
/// Contract: `round(t, seed)` is a pure function of `(t, seed)`, so every
/// policy of a run meets the same rounds, and a run replays bit for bit.
pub trait Environment {
    /// A name for event ids and reports.
    fn name(&self) -> &str;
    /// Default number of rounds.
    fn horizon(&self) -> usize;
    /// Default seed.
    fn seed(&self) -> u64;
    /// Action ids.
    fn actions(&self) -> Vec<String>;
    /// Candidates with features, sent to shared-mode policies.
    fn candidates(&self) -> Vec<Candidate<Features>>;
    /// Outcome signal names.
    fn signals(&self) -> Vec<String>;
    /// The reward function the environment prescribes, if any.
    fn reward(&self) -> Option<BTreeMap<String, f64>>;
    /// Fills `round` for round `t`.
    fn round(&self, t: usize, seed: u64, round: &mut Round);
    /// The users over time (a scenario's `[users]` table), if any.
    fn users(&self) -> Option<&Users> {
        None
    }
    /// The simulated instant of round `t`, unix ms: `t` seconds after
    /// 2026-01-01T00:00:00Z, or the users' arrival clock.
    fn time_ms(&self, t: usize) -> i64 {
        match self.users() {
            Some(u) => u.time_ms(t),
            None => START_MS + 1000 * t as i64,
        }
    }
    /// Fills `round` for round `t` met by a user in `state` (fatigue,
    /// unsubscribes, local hour); `None`: [`Environment::round`].
    fn round_for(&self, t: usize, seed: u64, state: Option<&UserState>, round: &mut Round) {
        let _ = state;
        self.round(t, seed, round);
    }
}

impl Environment for Scenario {
    fn name(&self) -> &str {
        &self.name
    }
    fn horizon(&self) -> usize {
        self.horizon
    }
    fn seed(&self) -> u64 {
        self.seed
    }
    fn actions(&self) -> Vec<String> {
        self.actions.iter().map(|a| a.id.clone()).collect()
    }
    fn candidates(&self) -> Vec<Candidate<Features>> {
        self.actions
            .iter()
            .map(|a| Candidate {
                id: a.id.clone(),
                features: a.features.clone(),
            })
            .collect()
    }
    fn signals(&self) -> Vec<String> {
        self.signals.iter().map(|s| s.name.clone()).collect()
    }
    fn reward(&self) -> Option<BTreeMap<String, f64>> {
        self.reward.clone()
    }
    fn round(&self, t: usize, seed: u64, round: &mut Round) {
        self.round_for(t, seed, None, round);
    }
    fn users(&self) -> Option<&Users> {
        self.users.as_ref()
    }
    fn round_for(&self, t: usize, seed: u64, state: Option<&UserState>, round: &mut Round) {
        let ctx: Vec<Value> = self.context_for(t, seed, state);
        let (k, s) = (self.actions.len(), self.signals.len());
        round.outcomes.resize(k * s, 0.0);
        round.expected.resize(k * s, 0.0);
        self.outcomes_for(&ctx, t, seed, state, &mut round.outcomes);
        for a in 0..k {
            self.expected_for(&ctx, a, t, state, &mut round.expected[a * s..(a + 1) * s]);
        }
        round.context = self.features(&ctx);
    }
}

impl Environment for Dataset {
    fn name(&self) -> &str {
        &self.name
    }
    fn horizon(&self) -> usize {
        self.contexts.len()
    }
    fn seed(&self) -> u64 {
        0
    }
    fn actions(&self) -> Vec<String> {
        self.arms.clone()
    }
    fn candidates(&self) -> Vec<Candidate<Features>> {
        self.arms
            .iter()
            .map(|a| Candidate {
                id: a.clone(),
                features: vec![],
            })
            .collect()
    }
    fn signals(&self) -> Vec<String> {
        vec!["reward".into()]
    }
    fn reward(&self) -> Option<BTreeMap<String, f64>> {
        Some(BTreeMap::from([("reward".to_string(), 1.0)]))
    }
    /// Row `t mod rows`: a horizon longer than the file cycles through it.
    fn round(&self, t: usize, _seed: u64, round: &mut Round) {
        let row = t % self.contexts.len();
        round.context.clone_from(&self.contexts[row]);
        // Full feedback: the realised reward is known for every arm, so it
        // is its own expectation and the oracle is the row's best arm.
        round.outcomes.clone_from(&self.rewards[row]);
        round.expected.clone_from(&self.rewards[row]);
    }
}

/// A policy bound to an environment's actions: decides on a round's
/// context and maps its candidates to the environment's actions.
#[derive(Debug, Clone)]
pub struct Agent {
    /// The policy as it learns in this environment (its reward function
    /// may be the scenario's rather than its own).
    pub policy: Policy,
    /// Disjoint: environment action of each arm.
    arm_action: Vec<usize>,
    /// Shared: the candidates sent with every request.
    candidates: Vec<Candidate<Features>>,
    /// The reward function, one weight per environment signal.
    pub weights: Vec<f64>,
}

impl Agent {
    /// Binds `policy` to `env` under the reward function `reward` (weights
    /// on the environment's signals; `None`: the environment's, else the
    /// policy's own). A disjoint policy's arms must be the environment's
    /// actions; a shared policy gets every action as a candidate.
    ///
    /// When the reward function is not the policy's own, the policy learns
    /// without its `[reward]` range (a different weighting has a different
    /// range), except `beta_ts`, which needs rewards in `[0, 1]`.
    pub fn new(
        policy: &Policy,
        env: &dyn Environment,
        reward: Option<&BTreeMap<String, f64>>,
    ) -> anyhow::Result<Agent> {
        let spec = policy.spec();
        let actions = env.actions();
        let signals = env.signals();
        let own = reward.is_none() && env.reward().is_none();
        let weights_map = match (reward, env.reward()) {
            (Some(r), _) => r.clone(),
            (None, Some(r)) => r,
            (None, None) => spec.reward.signals.clone(),
        };
        let mut weights = vec![0.0; signals.len()];
        for (name, w) in &weights_map {
            let i = signals.iter().position(|s| s == name).with_context(|| {
                format!(
                    "the reward function weighs `{name}`{}, which {} does not produce (its signals: {}); give the scenario a [reward] table",
                    if own { format!(" (policy {}'s [reward])", spec.id) } else { String::new() },
                    env.name(),
                    signals.join(", ")
                )
            })?;
            weights[i] = *w;
        }
        if weights_map.is_empty() {
            anyhow::bail!(
                "policy {}: no reward function: its [reward] table weighs no signal and the scenario has no [reward] table",
                spec.id
            );
        }
        let mut learning = spec.clone();
        if !own {
            learning.reward.signals = weights_map;
            if spec.algorithm != Algorithm::BetaTs {
                learning.reward.min = None;
                learning.reward.max = None;
            }
        }
        let arm_action = match spec.mode {
            Mode::Disjoint => {
                let mut sorted_arms = spec.arms.clone();
                let mut sorted_actions = actions.clone();
                sorted_arms.sort();
                sorted_actions.sort();
                if sorted_arms != sorted_actions {
                    anyhow::bail!(
                        "policy {}'s arms [{}] are not the actions of {} [{}]",
                        spec.id,
                        spec.arms.join(", "),
                        env.name(),
                        actions.join(", ")
                    );
                }
                spec.arms
                    .iter()
                    .map(|a| actions.iter().position(|b| b == a).expect("same sets"))
                    .collect()
            }
            Mode::Shared => vec![],
        };
        Ok(Agent {
            policy: Policy::new(learning),
            arm_action,
            candidates: match spec.mode {
                Mode::Disjoint => vec![],
                Mode::Shared => env.candidates(),
            },
            weights,
        })
    }

    /// Decides on `context` with `model`, seeded by `event_id`.
    pub fn decide(
        &self,
        model: &LinearModel,
        event_id: &str,
        context: &Features,
    ) -> anyhow::Result<Decision> {
        self.decide_excluding(model, event_id, context, &[])
    }

    /// [`Agent::decide`] among the arms not in `excluded` (the service's
    /// way of deciding only among the eligible arms).
    pub fn decide_excluding(
        &self,
        model: &LinearModel,
        event_id: &str,
        context: &Features,
        excluded: &[String],
    ) -> anyhow::Result<Decision> {
        let req = DecideRequest {
            event_id,
            context,
            actions: &self.candidates,
            excluded,
            k: 1,
        };
        self.policy
            .decide(model, &req)
            .with_context(|| format!("policy {}: event {event_id}", self.policy.id()))
    }

    /// The environment action of policy arm `arm` (disjoint mode).
    pub fn action_of_arm(&self, arm: usize) -> usize {
        self.arm_action[arm]
    }

    /// The environment action of the candidate at `position`.
    pub fn action_of(&self, decision: &Decision, position: usize) -> usize {
        let c = decision.candidates[position];
        match self.policy.spec().mode {
            Mode::Disjoint => self.arm_action[c],
            Mode::Shared => c,
        }
    }

    /// The decision's distribution over the environment's `k` actions.
    pub fn distribution(&self, decision: &Decision, k: usize) -> Vec<f64> {
        let mut out = vec![0.0; k];
        for (pos, p) in decision.probabilities.iter().enumerate() {
            out[self.action_of(decision, pos)] += p;
        }
        out
    }

    /// The reward of action `a` in `values` (`values[a * signals + s]`).
    pub fn reward_of(&self, values: &[f64], a: usize) -> f64 {
        let s = self.weights.len();
        self.weights
            .iter()
            .zip(&values[a * s..(a + 1) * s])
            .map(|(w, v)| w * v)
            .sum()
    }
}

/// One step of a run, handed to the caller.
#[derive(Debug)]
pub struct Step<'a> {
    /// Round number from 0.
    pub round: usize,
    /// The event id the decision was seeded with.
    pub event_id: &'a str,
    /// The round (context, outcomes, expectations).
    pub data: &'a Round,
    /// The decision, with every candidate's probability.
    pub decision: &'a Decision,
    /// The position in `decision.candidates` of the action taken: the
    /// draw, except when a filter-after-the-fact run replaced an
    /// ineligible draw by the fallback.
    pub taken: usize,
    /// The context the policy decided on: the round's, plus the history
    /// features the guardrails computed.
    pub context: &'a Features,
    /// The simulated instant, unix ms.
    pub now_ms: i64,
    /// The user of the round (a scenario with `[users]`).
    pub user: Option<usize>,
    /// The user's time zone (guardrailed policies: the user's, or the
    /// policy's default).
    pub tz: Option<Tz>,
    /// What the policy's guardrails allowed (guardrailed policies).
    pub eligibility: Option<&'a Eligibility>,
    /// How the guardrails were applied.
    pub mode: GuardMode,
    /// The environment action chosen.
    pub action: usize,
    /// Its realised reward.
    pub reward: f64,
    /// Its expected reward.
    pub expected_reward: f64,
    /// The best expected reward of the round (the oracle's).
    pub best_expected: f64,
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Number of rounds.
    pub horizon: usize,
    /// Seed of contexts and outcomes.
    pub seed: u64,
    /// Whether the policy learns from its rewards (a frozen policy does not).
    pub learn: bool,
    /// Learning-curve points (at most; one at the end at least).
    pub curve_points: usize,
}

/// How a guardrailed policy's rules are applied in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuardMode {
    /// As the service does: eligibility first, then the policy decides
    /// among the eligible arms only, so the logged distribution is the one
    /// the action was drawn from.
    #[default]
    Eligible,
    /// What *not* to do, for comparisons: the policy draws among every arm,
    /// and a draw the rules forbid is replaced by the fallback afterwards;
    /// the log keeps the probabilities computed before filtering (which
    /// are then not the probabilities the actions were taken with).
    FilterAfter,
}

/// Options of [`run_policy_with`] beyond [`RunConfig`].
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// How the guardrails are applied.
    pub mode: GuardMode,
}

/// What the users and guardrails did in a run.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct UserStats {
    /// Users in the population (0: no `[users]` table).
    pub users: usize,
    /// Users who unsubscribed during the run.
    pub unsubscribed: usize,
    /// Sends delivered (scenario send actions to users not gone).
    pub sends: u64,
    /// Decisions whose every send was ineligible (the fallback forced).
    pub forced: u64,
    /// Arm exclusions by reason (`cap`, `gap`, `quiet_hours`, …), counted
    /// once per arm and decision.
    pub exclusions: BTreeMap<String, u64>,
    /// Decisions where a draw was replaced by the fallback
    /// ([`GuardMode::FilterAfter`]).
    pub filtered: u64,
}

/// A point of a learning curve.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CurvePoint {
    /// Rounds done.
    pub round: usize,
    /// Cumulative (pseudo-)regret: `Σ_t max_a μ(x_t, a) − μ(x_t, a_t)`.
    pub regret: f64,
    /// Mean realised reward so far.
    pub mean_reward: f64,
}

/// Totals of one policy's run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyRun {
    /// Policy id.
    pub policy: String,
    /// Its algorithm.
    pub algorithm: String,
    /// Rounds run.
    pub rounds: usize,
    /// Sum of realised rewards.
    pub cumulative_reward: f64,
    /// Sum of the chosen actions' expected rewards.
    pub expected_reward: f64,
    /// Sum of the best expected rewards (the oracle's).
    pub oracle_reward: f64,
    /// `oracle_reward − expected_reward` (pseudo-regret, free of outcome
    /// noise).
    pub regret: f64,
    /// Per signal: sum of realised values.
    pub signal_totals: Vec<f64>,
    /// Per signal: sum of expected values of the chosen actions.
    pub signal_expected: Vec<f64>,
    /// Times each action was chosen.
    pub action_counts: Vec<u64>,
    /// The learning curve.
    pub curve: Vec<CurvePoint>,
    /// Users and guardrails (when the scenario has users or the policy
    /// guardrails).
    pub users: Option<UserStats>,
}

/// The event id of round `t`: unique per (environment, seed, round), so
/// decisions are seeded reproducibly and never collide across seeds.
pub fn event_id(env: &dyn Environment, seed: u64, t: usize) -> String {
    format!("{}-{seed}-{t}", env.name())
}

/// Runs `agent` with `model` for `cfg.horizon` rounds, calling `on_step`
/// after each decision (before learning from it), and `on_progress` every
/// few rounds with the rounds done since the last call. Guardrails, if the
/// policy has them, are applied as the service applies them.
pub fn run_policy(
    env: &dyn Environment,
    agent: &Agent,
    model: &mut LinearModel,
    cfg: &RunConfig,
    on_step: impl FnMut(&Step<'_>) -> anyhow::Result<()>,
    on_progress: impl FnMut(u64),
) -> anyhow::Result<PolicyRun> {
    run_policy_with(
        env,
        agent,
        model,
        cfg,
        &RunOptions::default(),
        on_step,
        on_progress,
    )
}

/// The guardrail state of a run: every user's sends as the store would
/// keep them, and the budgets' use.
struct Guard<'a> {
    g: &'a Guardrails,
    histories: Vec<UserHistory>,
    /// Per budget: `(window, sends in it)`.
    budgets: Vec<(i64, u64)>,
    empty: UserHistory,
}

impl Guard<'_> {
    fn budget_used(&mut self, now_ms: i64) -> Vec<u64> {
        self.g
            .budgets
            .iter()
            .zip(&mut self.budgets)
            .map(|(b, (window, used))| {
                if *window != b.window(now_ms) {
                    *window = b.window(now_ms);
                    *used = 0;
                }
                *used
            })
            .collect()
    }
}

/// [`run_policy`] with options (how guardrails are applied).
pub fn run_policy_with(
    env: &dyn Environment,
    agent: &Agent,
    model: &mut LinearModel,
    cfg: &RunConfig,
    opts: &RunOptions,
    mut on_step: impl FnMut(&Step<'_>) -> anyhow::Result<()>,
    mut on_progress: impl FnMut(u64),
) -> anyhow::Result<PolicyRun> {
    let k = env.actions().len();
    let s = env.signals().len();
    let spec = agent.policy.spec();
    let users = env.users();
    let mut population = users.map(|u| Population::new(u, cfg.seed));
    let mut guard = spec.guardrails.as_ref().map(|g| Guard {
        g,
        histories: vec![UserHistory::default(); users.map_or(0, |u| u.count)],
        budgets: vec![(i64::MIN, 0); g.budgets.len()],
        empty: UserHistory::default(),
    });
    if let Some(g) = &guard
        && g.g.require_user
        && users.is_none()
    {
        anyhow::bail!(
            "policy {}'s guardrails require a user, and {} has no [users] table",
            spec.id,
            env.name()
        );
    }
    let mut stats = (users.is_some() || guard.is_some()).then(|| UserStats {
        users: users.map_or(0, |u| u.count),
        ..UserStats::default()
    });
    let unsubscribe_signal = users.and_then(|u| u.unsubscribe.as_ref().map(|x| x.signal));
    let mut out = PolicyRun {
        policy: spec.id.clone(),
        algorithm: spec.algorithm.name().to_string(),
        rounds: 0,
        cumulative_reward: 0.0,
        expected_reward: 0.0,
        oracle_reward: 0.0,
        regret: 0.0,
        signal_totals: vec![0.0; s],
        signal_expected: vec![0.0; s],
        action_counts: vec![0; k],
        curve: Vec::new(),
        users: None,
    };
    let every = cfg.horizon.div_ceil(cfg.curve_points.max(1)).max(1);
    let mut round = Round::default();
    let mut last_progress = 0;
    for t in 0..cfg.horizon {
        let now_ms = env.time_ms(t);
        let (user, state) = match (users, population.as_mut()) {
            (Some(spec_u), Some(pop)) => {
                let u = pop.user_at(spec_u, t, cfg.seed, now_ms);
                (Some(u), Some(pop.state(spec_u, u, now_ms)))
            }
            _ => (None, None),
        };
        env.round_for(t, cfg.seed, state.as_ref(), &mut round);
        let event = event_id(env, cfg.seed, t);
        let mut context = round.context.clone();
        let mut tz = None;
        let eligibility = match guard.as_mut() {
            Some(guard) => {
                let zone = match (user, population.as_ref(), users) {
                    (Some(u), Some(pop), Some(us)) => pop.tz(us, u),
                    _ => guard.g.default_tz,
                };
                tz = Some(zone);
                let used = guard.budget_used(now_ms);
                let history = match user {
                    Some(u) => &guard.histories[u],
                    None => &guard.empty,
                };
                let situation = Situation {
                    policy: &spec.id,
                    now_ms,
                    tz: zone,
                    history: user.map(|_| history),
                    budget_used: &used,
                    unavailable: false,
                    excluded: &[],
                };
                let e = guardrails::eligibility(guard.g, &situation);
                for (name, value) in
                    guardrails::history_features(guard.g, &spec.id, history, now_ms)
                {
                    context.push((name.to_string(), FeatureValue::Number(value)));
                }
                Some(e)
            }
            None => None,
        };
        let ineligible: Vec<String> = match (&eligibility, opts.mode) {
            (Some(e), GuardMode::Eligible) => e.ineligible_ids(&spec.arms),
            _ => Vec::new(),
        };
        let decision = agent.decide_excluding(model, &event, &context, &ineligible)?;
        let mut taken = decision.chosen();
        let mut filtered = false;
        if let (Some(e), GuardMode::FilterAfter, Some(g)) =
            (&eligibility, opts.mode, spec.guardrails.as_ref())
            && !e.is_eligible(decision.candidates[taken])
        {
            taken = decision
                .candidates
                .iter()
                .position(|&c| c == g.fallback)
                .expect("every arm is a candidate");
            filtered = true;
        }
        let action = agent.action_of(&decision, taken);
        let reward = agent.reward_of(&round.outcomes, action);
        let expected_reward = agent.reward_of(&round.expected, action);
        let best_expected = (0..k)
            .map(|a| agent.reward_of(&round.expected, a))
            .fold(f64::NEG_INFINITY, f64::max);
        on_step(&Step {
            round: t,
            event_id: &event,
            data: &round,
            decision: &decision,
            taken,
            context: &context,
            now_ms,
            user,
            tz,
            eligibility: eligibility.as_ref(),
            mode: opts.mode,
            action,
            reward,
            expected_reward,
            best_expected,
        })?;
        // The policy's history, as the store keeps it: a send is counted
        // when it is decided (the service reserves it then), at its
        // delivery time; its outcome is noted when the reward comes in.
        let arm = decision.candidates[taken];
        let mut delivered_at = now_ms;
        if let (Some(guard), Some(e)) = (guard.as_mut(), &eligibility) {
            if let Some(st) = stats.as_mut() {
                for r in e.reasons.iter().flatten() {
                    *st.exclusions.entry(r.name().to_string()).or_default() += 1;
                }
                st.forced += u64::from(e.forced);
                st.filtered += u64::from(filtered);
            }
            let at = e.send_at[arm];
            if let Some(at) = at {
                delivered_at = at;
                for ((_, used), _) in guard.budgets.iter_mut().zip(&guard.g.budgets) {
                    *used += 1;
                }
                if let Some(u) = user {
                    let h = &mut guard.histories[u];
                    h.forget_before(now_ms - guard.g.retention_ms());
                    h.push(SendRecord {
                        event_id: event.clone(),
                        at_ms: at,
                        policy: spec.id.clone(),
                        arm: spec.arms[arm].clone(),
                        groups: guard.g.groups.clone(),
                        outcome: None,
                    });
                    h.set_outcome(&event, reward);
                }
            }
        }
        // The world's view: the user receives the send (fatigue) and may
        // unsubscribe.
        if let (Some(us), Some(pop), Some(u), Some(st)) =
            (users, population.as_mut(), user, stats.as_mut())
            && us.sends[action]
            && !pop.users[u].gone
        {
            st.sends += 1;
            pop.users[u].sends.push(delivered_at);
            if let Some(j) = unsubscribe_signal
                && round.outcomes[action * s + j] > 0.0
            {
                pop.users[u].gone = true;
                st.unsubscribed += 1;
            }
        }
        if cfg.learn {
            agent
                .policy
                .learn(model, &decision, taken, reward)
                .with_context(|| {
                    format!(
                        "policy {}: round {t}: cannot learn reward {reward}",
                        spec.id
                    )
                })?;
        }
        out.rounds += 1;
        out.cumulative_reward += reward;
        out.expected_reward += expected_reward;
        out.oracle_reward += best_expected;
        out.action_counts[action] += 1;
        for j in 0..s {
            out.signal_totals[j] += round.outcomes[action * s + j];
            out.signal_expected[j] += round.expected[action * s + j];
        }
        if (t + 1) % every == 0 || t + 1 == cfg.horizon {
            out.curve.push(CurvePoint {
                round: t + 1,
                regret: out.oracle_reward - out.expected_reward,
                mean_reward: out.cumulative_reward / (t + 1) as f64,
            });
        }
        if (t + 1) % 1024 == 0 || t + 1 == cfg.horizon {
            on_progress((t + 1 - last_progress) as u64);
            last_progress = t + 1;
        }
    }
    out.regret = out.oracle_reward - out.expected_reward;
    out.users = stats;
    Ok(out)
}
