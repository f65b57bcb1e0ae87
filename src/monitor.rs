//! Live aggregates for the dashboard (`GET /`) and its JSON routes: per
//! policy and per replica, a fixed ring of one-second buckets over the last
//! hour, allocated when the policy starts and never grown.
//!
//! # Cost on the decide path
//! Recording is a handful of relaxed atomic adds into the current second's
//! bucket: no allocation, no lock. The only lock ([`PolicyMonitor`]'s
//! `rotate`) is taken when a bucket is reused for a new second, once per
//! second per policy, by whichever caller gets there first; the others see
//! the new second and add without it. At a bucket boundary a record may land
//! in the neighbouring second (a caller that read the old second before the
//! reset adds after it): the figures are a monitor's, exact to a few events
//! at each boundary, never a ledger (the decision log is the ledger).
//!
//! # Memory
//! [`BUCKETS`] buckets of ~130 bytes, plus [`BUCKETS`] × (tracked arms) ×
//! 32 bytes: with 3 arms about 0.8 MB per policy, at most ~4.3 MB (the cap
//! of [`MAX_TRACKED_ARMS`] arms, the rest counted together as `(other)`).
//!
//! # What is recorded
//! Per second: decisions (and per arm), rewards per arm (count, sum, sum of
//! squares; for shared-mode policies, whose actions are the caller's, one
//! `all` row), default rewards, degraded decisions, the smallest logged
//! propensity, the importance weights of an effective sample size (see
//! [`PolicyMonitor::decision`]), and guardrail outcomes: `held` (only the
//! fallback was eligible) and, per exclusion reason (the vocabulary of
//! `nudge_guardrail_exclusions_total`), the decisions where at least one
//! arm was excluded for it.
//!
//! Times are unix milliseconds passed in by the caller (the wall clock, not
//! the service's decision clock: these are rates of live traffic), so tests
//! drive rotation exactly.

use crate::guardrails::Exclusion;
use serde::Serialize;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};

/// Seconds of history kept (one bucket a second): the longest `window`.
pub const BUCKETS: usize = 3_600;
/// Arms of a disjoint policy tracked one by one; beyond, one `(other)` row.
pub const MAX_TRACKED_ARMS: usize = 32;
/// The two-sided normal quantile of the 95 % intervals.
pub const Z95: f64 = 1.959_963_984_540_054;
/// Guardrail outcome kinds: `held`, then [`Exclusion::ALL`]'s reasons.
pub const GUARDRAIL_KINDS: usize = 1 + Exclusion::ALL.len();

/// The names of the guardrail outcome kinds, in [`GUARDRAIL_KINDS`] order.
pub fn guardrail_names() -> [&'static str; GUARDRAIL_KINDS] {
    let mut out = ["held"; GUARDRAIL_KINDS];
    for (i, e) in Exclusion::ALL.iter().enumerate() {
        out[i + 1] = e.name();
    }
    out
}

/// An `f64` updated with relaxed atomics (bits in an `AtomicU64`).
#[derive(Default)]
struct AtomicF64(AtomicU64);

impl AtomicF64 {
    fn add(&self, v: f64) {
        // A CAS loop: uncontended it succeeds at once.
        let _ = self.0.fetch_update(Relaxed, Relaxed, |b| {
            Some((f64::from_bits(b) + v).to_bits())
        });
    }
    fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }
    fn reset(&self) {
        self.0.store(0f64.to_bits(), Relaxed);
    }
}

/// One arm in one second.
#[derive(Default)]
struct ArmCell {
    decisions: AtomicU64,
    rewards: AtomicU64,
    reward_sum: AtomicF64,
    reward_sq: AtomicF64,
}

/// One second of a policy.
struct Bucket {
    /// The unix second this bucket holds (`i64::MIN`: none yet).
    second: AtomicI64,
    decisions: AtomicU64,
    default_rewards: AtomicU64,
    degraded: AtomicU64,
    /// A reward other than 0 or 1 arrived (the interval is then normal).
    non_binary: AtomicBool,
    /// The smallest propensity, as `f64` bits: for positive floats the bit
    /// order is the numeric order, so `fetch_min` on the bits is a min.
    min_p: AtomicU64,
    w_sum: AtomicF64,
    w_sq: AtomicF64,
    /// Σ normalised entropy over decisions with two or more eligible
    /// candidates, and their count.
    entropy: AtomicF64,
    entropy_n: AtomicU64,
    guardrails: [AtomicU64; GUARDRAIL_KINDS],
}

impl Bucket {
    fn new() -> Bucket {
        Bucket {
            second: AtomicI64::new(i64::MIN),
            decisions: AtomicU64::new(0),
            default_rewards: AtomicU64::new(0),
            degraded: AtomicU64::new(0),
            non_binary: AtomicBool::new(false),
            min_p: AtomicU64::new(f64::INFINITY.to_bits()),
            w_sum: AtomicF64::default(),
            w_sq: AtomicF64::default(),
            entropy: AtomicF64::default(),
            entropy_n: AtomicU64::new(0),
            guardrails: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }

    fn clear(&self) {
        self.decisions.store(0, Relaxed);
        self.default_rewards.store(0, Relaxed);
        self.degraded.store(0, Relaxed);
        self.non_binary.store(false, Relaxed);
        self.min_p.store(f64::INFINITY.to_bits(), Relaxed);
        self.w_sum.reset();
        self.w_sq.reset();
        self.entropy.reset();
        self.entropy_n.store(0, Relaxed);
        for g in &self.guardrails {
            g.store(0, Relaxed);
        }
    }
}

/// What the guardrails did to one decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GuardrailOutcome {
    /// Only the fallback was eligible (every send held).
    pub held: bool,
    /// Bit `i` set: some arm was excluded for `Exclusion::ALL[i]`.
    pub reasons: u16,
}

impl GuardrailOutcome {
    /// The outcome of a decision whose arms were excluded for `reasons`.
    pub fn of(held: bool, reasons: impl IntoIterator<Item = Exclusion>) -> GuardrailOutcome {
        let mut bits = 0u16;
        for r in reasons {
            if let Some(i) = Exclusion::ALL.iter().position(|e| *e == r) {
                bits |= 1 << i;
            }
        }
        GuardrailOutcome {
            held,
            reasons: bits,
        }
    }
}

/// One decision, as the monitor records it.
#[derive(Debug, Clone, Copy)]
pub struct DecisionSample {
    /// The wall clock (unix ms).
    pub now_ms: i64,
    /// The chosen arm (disjoint policies); `None` for shared-mode ones.
    pub arm: Option<usize>,
    /// The logged propensity of the chosen action (slate position 1).
    pub propensity: f64,
    /// Candidates with a positive probability (at least 1).
    pub eligible: usize,
    /// Made while the store was unavailable.
    pub degraded: bool,
    /// What the guardrails did.
    pub guardrails: GuardrailOutcome,
    /// The decision distribution's entropy over its eligible candidates,
    /// divided by its maximum `ln(eligible)` (1: uniform, 0: one action
    /// certain); `None` with fewer than two eligible candidates.
    pub entropy: Option<f64>,
}

/// The normalised entropy of a distribution (see
/// [`DecisionSample::entropy`]).
pub fn normalised_entropy(probabilities: &[f64]) -> Option<f64> {
    let eligible = probabilities.iter().filter(|p| **p > 0.0).count();
    if eligible < 2 {
        return None;
    }
    let h: f64 = probabilities
        .iter()
        .filter(|p| **p > 0.0)
        .map(|p| -p * p.ln())
        .sum();
    Some((h / (eligible as f64).ln()).clamp(0.0, 1.0))
}

/// A policy's ring of per-second aggregates on this replica.
pub struct PolicyMonitor {
    buckets: Box<[Bucket]>,
    /// `BUCKETS × slots`, bucket-major.
    cells: Box<[ArmCell]>,
    /// The row names: tracked arms, then `(other)` if arms were folded; one
    /// `all` row for shared-mode policies.
    rows: Vec<String>,
    /// Disjoint: the policy's arm count (arms `>= MAX_TRACKED_ARMS` go to
    /// the last row); 0 for shared mode (everything in row 0).
    arms: usize,
    /// Taken only to reuse a bucket for a new second.
    rotate: Mutex<()>,
}

impl PolicyMonitor {
    /// A monitor for a disjoint policy with `arms` (by name, in arm order),
    /// or for a shared-mode policy (`arms` empty: one `all` row).
    pub fn new(arms: &[String]) -> PolicyMonitor {
        let rows: Vec<String> = if arms.is_empty() {
            vec!["all".into()]
        } else if arms.len() <= MAX_TRACKED_ARMS {
            arms.to_vec()
        } else {
            let mut r = arms[..MAX_TRACKED_ARMS - 1].to_vec();
            r.push("(other)".into());
            r
        };
        PolicyMonitor {
            buckets: (0..BUCKETS).map(|_| Bucket::new()).collect(),
            cells: (0..BUCKETS * rows.len())
                .map(|_| ArmCell::default())
                .collect(),
            arms: arms.len(),
            rows,
            rotate: Mutex::new(()),
        }
    }

    /// The row names (arm ids, `(other)`, or `all`).
    pub fn rows(&self) -> &[String] {
        &self.rows
    }

    fn row(&self, arm: Option<usize>) -> usize {
        match arm {
            Some(a) if self.arms > 0 => a.min(self.rows.len() - 1),
            _ => 0,
        }
    }

    /// The bucket of `second`, reset for it if it held an older one; `None`
    /// if a later second already took it (the record is over an hour old).
    fn bucket(&self, second: i64) -> Option<usize> {
        let i = second.rem_euclid(BUCKETS as i64) as usize;
        let b = &self.buckets[i];
        let held = b.second.load(std::sync::atomic::Ordering::Acquire);
        if held == second {
            return Some(i);
        }
        if held > second {
            return None;
        }
        let _g = self.rotate.lock().unwrap_or_else(|e| e.into_inner());
        let held = b.second.load(std::sync::atomic::Ordering::Acquire);
        if held > second {
            return None;
        }
        if held < second {
            b.clear();
            let n = self.rows.len();
            for c in &self.cells[i * n..(i + 1) * n] {
                c.decisions.store(0, Relaxed);
                c.rewards.store(0, Relaxed);
                c.reward_sum.reset();
                c.reward_sq.reset();
            }
            b.second.store(second, std::sync::atomic::Ordering::Release);
        }
        Some(i)
    }

    fn cell(&self, bucket: usize, row: usize) -> &ArmCell {
        &self.cells[bucket * self.rows.len() + row]
    }

    /// Records one decision.
    ///
    /// The effective sample size uses the importance weights of the
    /// *uniform-over-eligible* target: `w = 1 / (eligible · p)`, where `p`
    /// is the logged propensity. Under uniform logging every `w` is 1 and
    /// `ESS = (Σw)² / Σw²` equals the number of decisions; as the policy
    /// concentrates, rarely chosen actions carry large weights and the ESS
    /// falls. `ESS / n` thus says how much of the recent traffic an
    /// off-policy evaluation of a broadly different policy could use — an
    /// exploration-health figure that needs no second policy to compute.
    pub fn decision(&self, d: &DecisionSample) {
        let Some(i) = self.bucket(d.now_ms.div_euclid(1000)) else {
            return;
        };
        let b = &self.buckets[i];
        b.decisions.fetch_add(1, Relaxed);
        if d.degraded {
            b.degraded.fetch_add(1, Relaxed);
        }
        if d.propensity > 0.0 {
            b.min_p.fetch_min(d.propensity.to_bits(), Relaxed);
            let w = 1.0 / (d.eligible.max(1) as f64 * d.propensity);
            b.w_sum.add(w);
            b.w_sq.add(w * w);
        }
        if let Some(h) = d.entropy {
            b.entropy.add(h);
            b.entropy_n.fetch_add(1, Relaxed);
        }
        if d.guardrails.held {
            b.guardrails[0].fetch_add(1, Relaxed);
        }
        let mut bits = d.guardrails.reasons;
        while bits != 0 {
            let k = bits.trailing_zeros() as usize;
            if k + 1 < GUARDRAIL_KINDS {
                b.guardrails[k + 1].fetch_add(1, Relaxed);
            }
            bits &= bits - 1;
        }
        self.cell(i, self.row(d.arm))
            .decisions
            .fetch_add(1, Relaxed);
    }

    /// Records one reward learned for `arm` (disjoint; `None` for shared
    /// mode): a reward received (each part of a summed window on its own)
    /// or, with `is_default`, the default reward of a window that closed
    /// without one. Both count in the arm's reward mean.
    pub fn reward(&self, now_ms: i64, arm: Option<usize>, value: f64, is_default: bool) {
        if !value.is_finite() {
            return;
        }
        let Some(i) = self.bucket(now_ms.div_euclid(1000)) else {
            return;
        };
        let b = &self.buckets[i];
        if is_default {
            b.default_rewards.fetch_add(1, Relaxed);
        }
        if value != 0.0 && value != 1.0 {
            b.non_binary.store(true, Relaxed);
        }
        let c = self.cell(i, self.row(arm));
        c.rewards.fetch_add(1, Relaxed);
        c.reward_sum.add(value);
        c.reward_sq.add(value * value);
    }

    /// The aggregate of seconds `from..=to` (unix seconds); seconds this
    /// ring no longer (or never) held count as empty.
    pub fn aggregate(&self, from: i64, to: i64) -> Aggregate {
        let n = self.rows.len();
        let mut out = Aggregate::empty(n);
        let from = from.max(to - BUCKETS as i64 + 1);
        for second in from..=to {
            let i = second.rem_euclid(BUCKETS as i64) as usize;
            let b = &self.buckets[i];
            if b.second.load(std::sync::atomic::Ordering::Acquire) != second {
                continue;
            }
            out.decisions += b.decisions.load(Relaxed);
            out.default_rewards += b.default_rewards.load(Relaxed);
            out.degraded += b.degraded.load(Relaxed);
            out.non_binary |= b.non_binary.load(Relaxed);
            out.min_propensity = out
                .min_propensity
                .min(f64::from_bits(b.min_p.load(Relaxed)));
            out.w_sum += b.w_sum.get();
            out.w_sq += b.w_sq.get();
            out.entropy_sum += b.entropy.get();
            out.entropy_n += b.entropy_n.load(Relaxed);
            for (g, a) in out.guardrails.iter_mut().zip(&b.guardrails) {
                *g += a.load(Relaxed);
            }
            for (row, a) in out.arms.iter_mut().enumerate() {
                let c = self.cell(i, row);
                a.decisions += c.decisions.load(Relaxed);
                a.rewards += c.rewards.load(Relaxed);
                a.reward_sum += c.reward_sum.get();
                a.reward_sq += c.reward_sq.get();
            }
        }
        out
    }

    /// `window` seconds ending with second `end` (inclusive) in steps of
    /// `step` seconds, oldest first: each step's first second and totals.
    /// `window` is a multiple of `step` (the HTTP layer checks it).
    pub fn series(&self, end: i64, window: i64, step: i64) -> Vec<(i64, Aggregate)> {
        let start = end - window + 1;
        (0..window / step.max(1))
            .map(|k| {
                let from = start + k * step;
                (from, self.aggregate(from, from + step - 1))
            })
            .collect()
    }
}

/// One arm's (row's) totals over a span.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ArmAggregate {
    /// Decisions that chose it.
    pub decisions: u64,
    /// Rewards learned for it (default rewards included).
    pub rewards: u64,
    /// Their sum.
    pub reward_sum: f64,
    /// The sum of their squares.
    pub reward_sq: f64,
}

/// A policy's totals over a span of seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// Decisions.
    pub decisions: u64,
    /// Default rewards (windows closed without a reward).
    pub default_rewards: u64,
    /// Decisions made while the store was unavailable.
    pub degraded: u64,
    /// Some reward was neither 0 nor 1.
    pub non_binary: bool,
    /// The smallest logged propensity (infinite: no decision).
    pub min_propensity: f64,
    /// Σw of the uniform-over-eligible weights.
    pub w_sum: f64,
    /// Σw².
    pub w_sq: f64,
    /// Σ normalised entropy (see [`DecisionSample::entropy`]).
    pub entropy_sum: f64,
    /// Decisions in `entropy_sum`.
    pub entropy_n: u64,
    /// Per [`guardrail_names`] kind.
    pub guardrails: [u64; GUARDRAIL_KINDS],
    /// Per row.
    pub arms: Vec<ArmAggregate>,
}

impl Aggregate {
    fn empty(rows: usize) -> Aggregate {
        Aggregate {
            decisions: 0,
            default_rewards: 0,
            degraded: 0,
            non_binary: false,
            min_propensity: f64::INFINITY,
            w_sum: 0.0,
            w_sq: 0.0,
            entropy_sum: 0.0,
            entropy_n: 0,
            guardrails: [0; GUARDRAIL_KINDS],
            arms: vec![ArmAggregate::default(); rows],
        }
    }

    /// Rewards of every row.
    pub fn rewards(&self) -> u64 {
        self.arms.iter().map(|a| a.rewards).sum()
    }

    /// All rows together.
    pub fn overall(&self) -> ArmAggregate {
        self.arms
            .iter()
            .fold(ArmAggregate::default(), |t, a| ArmAggregate {
                decisions: t.decisions + a.decisions,
                rewards: t.rewards + a.rewards,
                reward_sum: t.reward_sum + a.reward_sum,
                reward_sq: t.reward_sq + a.reward_sq,
            })
    }

    /// The mean normalised entropy of the decisions (see
    /// [`DecisionSample::entropy`]); `None` without any.
    pub fn entropy(&self) -> Option<f64> {
        (self.entropy_n > 0).then(|| self.entropy_sum / self.entropy_n as f64)
    }

    /// `(Σw)² / Σw²` (see [`PolicyMonitor::decision`]); `None` without
    /// decisions.
    pub fn ess(&self) -> Option<f64> {
        (self.w_sq > 0.0).then(|| self.w_sum * self.w_sum / self.w_sq)
    }
}

/// A mean with a 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MeanInterval {
    /// The sample mean.
    pub mean: f64,
    /// Lower bound.
    pub low: f64,
    /// Upper bound.
    pub high: f64,
}

/// Which interval [`reward_interval`] gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IntervalMethod {
    /// Every reward was 0 or 1: Wilson's score interval.
    Wilson,
    /// Otherwise: the normal interval with the sample variance.
    Normal,
}

/// The reward mean of `a` with its 95 % interval: Wilson's score interval
/// (Wilson 1927) when every reward was 0 or 1 (`binary`), which stays
/// inside [0, 1] and is not degenerate at 0 or n successes; otherwise the
/// normal interval `mean ± z·s/√n` with the unbiased sample variance `s²`
/// (which needs two rewards: with one, the bounds are the mean). `None`
/// without rewards.
pub fn reward_interval(a: &ArmAggregate, binary: bool) -> Option<MeanInterval> {
    if a.rewards == 0 {
        return None;
    }
    let n = a.rewards as f64;
    let mean = a.reward_sum / n;
    if binary {
        let (low, high) = wilson(a.reward_sum, n, Z95);
        return Some(MeanInterval { mean, low, high });
    }
    if a.rewards < 2 {
        return Some(MeanInterval {
            mean,
            low: mean,
            high: mean,
        });
    }
    // Σ(r − m)² = Σr² − n·m², clamped: rounding may make it slightly negative.
    let var = ((a.reward_sq - n * mean * mean) / (n - 1.0)).max(0.0);
    let half = Z95 * (var / n).sqrt();
    Some(MeanInterval {
        mean,
        low: mean - half,
        high: mean + half,
    })
}

/// Wilson's score interval for `successes` out of `n` (n > 0) at quantile
/// `z`: `(p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)`.
pub fn wilson(successes: f64, n: f64, z: f64) -> (f64, f64) {
    let p = successes / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let centre = p + z2 / (2.0 * n);
    let half = z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).max(0.0).sqrt();
    (
        ((centre - half) / denom).max(0.0),
        ((centre + half) / denom).min(1.0),
    )
}

/// This replica's name in the monitor's answers: `NUDGE_REPLICA` if set,
/// else `hostname/pid`.
pub fn replica_name(configured: Option<&str>) -> String {
    if let Some(name) = configured.filter(|n| !n.is_empty()) {
        return name.to_string();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}/{}", std::process::id())
}

#[cfg(test)]
mod tests;
