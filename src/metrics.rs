//! Prometheus metrics of the service, registered in one registry that
//! `GET /metrics` renders.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Every metric the service exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `nudge_decisions_total{policy, action}` (shared-mode actions are
    /// caller ids of unbounded cardinality: counted as `action="*"`).
    pub decisions: IntCounterVec,
    /// `nudge_rewards_total{policy, action, kind}`: `kind` is `reward` or
    /// `signals`; shared-mode actions count as `action="*"`.
    pub rewards: IntCounterVec,
    /// `nudge_default_rewards_total{policy}`: windows closed without reward.
    pub default_rewards: IntCounterVec,
    /// `nudge_dropped_deferred_total{policy}`: deferred decisions never
    /// activated.
    pub dropped_deferred: IntCounterVec,
    /// `nudge_request_seconds{route}`: handler latency.
    pub latency: HistogramVec,
    /// `nudge_rate_limited_total{key}`: requests refused with 429, by key
    /// name (`anonymous` for keyless requests).
    pub rate_limited: IntCounterVec,
    /// `nudge_auth_rejections_total{code}`: requests refused with 401
    /// (`unauthorized`) or 403 (`forbidden`).
    pub auth_rejections: IntCounterVec,
    /// `nudge_store_errors_total{op}`.
    pub store_errors: IntCounterVec,
    /// `nudge_skipped_entries_total{policy}`: learned entries or snapshots
    /// that did not fit the policy's model.
    pub skipped_entries: IntCounterVec,
    /// `nudge_model_version{policy}` of this replica's local model.
    pub model_version: IntGaugeVec,
    /// `nudge_degraded_decisions_total{policy}`: decisions made while the
    /// store was unavailable (from the last known model; queued in the
    /// outbox).
    pub degraded_decisions: IntCounterVec,
    /// `nudge_guardrail_exclusions_total{policy, reason}`: arms a
    /// guardrail (or the caller) made ineligible, per decision.
    pub guardrail_exclusions: IntCounterVec,
    /// `nudge_guardrail_forced_total{policy}`: decisions where only the
    /// fallback was eligible.
    pub guardrail_forced: IntCounterVec,
    /// `nudge_guardrail_retries_total{policy}`: decisions made again
    /// because their send could not be reserved (a concurrent send to the
    /// user, or a budget just spent).
    pub guardrail_retries: IntCounterVec,
    /// `nudge_outbox_replayed_total{op}`: queued store operations applied
    /// once the store answered again.
    pub outbox_replayed: IntCounterVec,
    /// `nudge_outbox_rejected_total{op, reason}`: queued operations the
    /// store refused at replay (kept in `outbox/rejected.jsonl`).
    pub outbox_rejected: IntCounterVec,
    /// `nudge_outbox_depth`: store operations waiting for the store.
    pub outbox_depth: IntGauge,
    /// `nudge_outbox_parked`: replayed rewards and activations waiting for
    /// their event to reach the store (decided by another replica's
    /// outbox).
    pub outbox_parked: IntGauge,
    /// `nudge_log_queue_depth`.
    pub log_queue_depth: IntGauge,
    /// `nudge_log_spool_bytes`.
    pub log_spool_bytes: IntGauge,
    /// Learning alerts raised now (1) or not (0), per policy and kind.
    pub learning_alerts: IntGaugeVec,
    /// Challengers promoted by this replica.
    pub promotions: IntCounterVec,
    /// The published policy set this replica serves.
    pub policy_generation: IntGauge,
    /// A published policy set this replica did not switch to (its files
    /// differ or are invalid); 0 when it serves the last one.
    pub policy_reload_mismatch: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let latency = HistogramVec::new(
            HistogramOpts::new("nudge_request_seconds", "Request handling time")
                .buckets(prometheus::exponential_buckets(0.000_05, 2.0, 16).expect("buckets")),
            &["route"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(latency.clone()))
            .expect("unique metric");
        let model_version = IntGaugeVec::new(
            Opts::new("nudge_model_version", "Local model version"),
            &["policy"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(model_version.clone()))
            .expect("unique metric");
        Metrics {
            decisions: counter(
                "nudge_decisions_total",
                "Decisions made",
                &["policy", "action"],
            ),
            rewards: counter(
                "nudge_rewards_total",
                "Rewards accepted",
                &["policy", "kind"],
            ),
            default_rewards: counter(
                "nudge_default_rewards_total",
                "Default rewards applied when a window closed",
                &["policy"],
            ),
            dropped_deferred: counter(
                "nudge_dropped_deferred_total",
                "Deferred decisions never activated",
                &["policy"],
            ),
            rate_limited: counter(
                "nudge_rate_limited_total",
                "Requests refused over a rate limit",
                &["key"],
            ),
            auth_rejections: counter(
                "nudge_auth_rejections_total",
                "Requests refused for a missing, unknown or insufficient API key",
                &["code"],
            ),
            store_errors: counter("nudge_store_errors_total", "Failed store calls", &["op"]),
            skipped_entries: counter(
                "nudge_skipped_entries_total",
                "Learned entries or snapshots that did not fit the model",
                &["policy"],
            ),
            degraded_decisions: counter(
                "nudge_degraded_decisions_total",
                "Decisions made while the model store was unavailable",
                &["policy"],
            ),
            guardrail_exclusions: counter(
                "nudge_guardrail_exclusions_total",
                "Arms made ineligible by a guardrail or the caller, per decision",
                &["policy", "reason"],
            ),
            guardrail_forced: counter(
                "nudge_guardrail_forced_total",
                "Decisions where only the fallback arm was eligible",
                &["policy"],
            ),
            guardrail_retries: counter(
                "nudge_guardrail_retries_total",
                "Decisions made again because their send could not be reserved",
                &["policy"],
            ),
            outbox_replayed: counter(
                "nudge_outbox_replayed_total",
                "Queued store operations applied after the store returned",
                &["op"],
            ),
            outbox_rejected: counter(
                "nudge_outbox_rejected_total",
                "Queued store operations refused at replay",
                &["op", "reason"],
            ),
            outbox_depth: gauge(
                "nudge_outbox_depth",
                "Store operations waiting for the store",
            ),
            outbox_parked: gauge(
                "nudge_outbox_parked",
                "Replayed operations waiting for their event to reach the store",
            ),
            log_queue_depth: gauge("nudge_log_queue_depth", "Log records waiting to be written"),
            log_spool_bytes: gauge("nudge_log_spool_bytes", "Bytes in the log spool"),
            learning_alerts: {
                let g = IntGaugeVec::new(
                    prometheus::Opts::new(
                        "nudge_learning_alert",
                        "A learning alert is raised (1) for the policy: exploration_collapse, rewards_stopped, reward_shift, default_share_rising",
                    ),
                    &["policy", "alert"],
                )
                .expect("valid metric");
                registry
                    .register(Box::new(g.clone()))
                    .expect("registers once");
                g
            },
            promotions: counter(
                "nudge_promotions_total",
                "Shadow challengers promoted to live (by this replica)",
                &["policy"],
            ),
            policy_generation: gauge(
                "nudge_policy_generation",
                "Generation of the published policy set this replica serves",
            ),
            policy_reload_mismatch: gauge(
                "nudge_policy_reload_mismatch",
                "Generation of a published policy set this replica's files do not match (0: none)",
            ),
            latency,
            model_version,
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
