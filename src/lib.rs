//! Nudge: a contextual-bandit decision engine and service.
//!
//! A notification or discovery system asks "which action, for this
//! context?"; a policy answers with an action drawn from an explicit
//! probability distribution (the propensity that is logged), and learns from
//! rewards that arrive later.
//!
//! # Layout
//! - [`features`]: a policy's feature specification; request features →
//!   the dense vector `x`.
//! - [`model`]: additive sufficient statistics per arm, the cached ridge
//!   quantities derived from them, and their binary encoding.
//! - [`explore`]: pure functions from scores to a distribution (epsilon
//!   floor, Thompson win probabilities by quadrature) and the seeded sampler.
//! - [`policy`]: policy files (`policies/*.toml`) parsed into validated
//!   specs, and the decide / learn procedures that tie the layers together.
//! - [`guardrails`]: notification guardrails: the `[guardrails]` table, a
//!   user's send history, eligibility before propensities, local time.
//! - [`service`]: the domain layer (decide, rewards, activations) that the
//!   HTTP handlers, the outbox replay and the background tasks call.
//! - [`clock`]: the service's clock (tests set it).
//! - [`store`]: the shared model store (in-process, or Redis): pending
//!   events, the learned stream, snapshots, user histories and budgets; and
//!   the outbox that keeps what an unavailable store could not take.
//! - [`recovery`]: replaying the outbox once the store answers again.
//! - [`log`]: the decision log (SQLite or PostgreSQL), batched and spooled.
//! - [`runtime`]: a live policy: its local model kept in step with the store.
//! - [`http`]: the HTTP API, one file per route group.
//! - [`config`], [`startup`], [`metrics`], [`telemetry`]: settings, building
//!   and running the service, Prometheus metrics, logging.
//! - [`monitor`]: per-policy, per-replica live aggregates (one-second
//!   buckets over the last hour) behind the live page (`GET /`).
//!
//! Decisions flow score → explore → sample: the model scores candidates,
//! exploration turns scores into probabilities, the sampler draws with an
//! RNG seeded by the event id, so a decision can be replayed exactly.

pub mod alerts;
pub mod clock;
pub mod config;
pub mod explore;
pub mod features;
pub mod guardrails;
pub mod http;
pub mod log;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod policy;
pub mod recovery;
pub mod runtime;
pub mod service;
pub mod startup;
pub mod store;
pub mod telemetry;
