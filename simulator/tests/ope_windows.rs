//! Open reward windows: `evaluate` uses an event only once its outcome is
//! final, by the same rule for JSONL, SQLite and PostgreSQL logs.
//!
//! PostgreSQL: a fresh database per test on the local server
//! (`NUDGE_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), dropped at the end.

use chrono::{DateTime, Duration, Utc};
use clap::Parser;
use nudge_sim::ope::{self, Args, Outcome};
use rand::{RngExt, SeedableRng};
use serde_json::json;
use sqlx::Connection;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

fn try_evaluate(args: &[&str]) -> anyhow::Result<Outcome> {
    let cli = Cli::try_parse_from(std::iter::once("evaluate").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{e}"));
    ope::run(&cli.args)
}

fn evaluate(args: &[&str]) -> Outcome {
    try_evaluate(args).unwrap_or_else(|e| panic!("{e:#}"))
}

fn value(out: &Outcome, estimator: &str) -> (f64, f64) {
    let e = out.candidates[0]
        .1
        .estimates
        .iter()
        .find(|e| e.name == estimator)
        .unwrap();
    (e.value, e.stderr)
}

#[derive(Parser)]
struct ExportCli {
    #[command(flatten)]
    args: nudge_sim::export::Args,
}

/// The repository's policy directory (push_send's reward rule).
fn ps_dir() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../policies")
        .display()
        .to_string()
}

fn push_send() -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../policies/push_send.toml")
        .display()
        .to_string()
}

const ARMS: [&str; 3] = ["send_now", "send_later", "skip"];
const LOGGING: [f64; 3] = [0.5, 0.3, 0.2];

/// One logged decision of the test logs.
struct Event {
    id: String,
    at: DateTime<Utc>,
    arm: usize,
    /// `Some(1.0)`: rewarded (opened); `None`: no reward row (yet).
    reward: Option<f64>,
    /// The log has the default row (reward 0).
    default_row: bool,
}

/// `n` push_send decisions `step` apart from `start`, arms drawn from
/// `LOGGING`, rewarded with probability `mu[arm]`.
fn events(n: usize, start: DateTime<Utc>, step: Duration, mu: [f64; 3], seed: u64) -> Vec<Event> {
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
    (0..n)
        .map(|i| {
            let u: f64 = rng.random();
            let arm = if u < LOGGING[0] {
                0
            } else if u < LOGGING[0] + LOGGING[1] {
                1
            } else {
                2
            };
            let rewarded = rng.random::<f64>() < mu[arm];
            Event {
                id: format!("e{i:06}"),
                at: start + step * i as i32,
                arm,
                reward: rewarded.then_some(1.0),
                default_row: false,
            }
        })
        .collect()
}

fn candidates() -> String {
    serde_json::to_string(
        &ARMS
            .iter()
            .zip(LOGGING)
            .map(|(a, p)| json!({"id": a, "probability": p}))
            .collect::<Vec<_>>(),
    )
    .unwrap()
}

fn context() -> serde_json::Value {
    json!({"hour_of_day": 9, "platform": "ios"})
}

fn write_jsonl(dir: &Path, evs: &[Event]) -> String {
    let mut text = String::new();
    let cands: serde_json::Value = serde_json::from_str(&candidates()).unwrap();
    for e in evs {
        let reward = if e.default_row { Some(0.0) } else { e.reward };
        let line = json!({
            "event_id": e.id, "policy": "push_send", "decided_at": e.at,
            "context": context(), "candidates": cands, "action": ARMS[e.arm],
            "probability": LOGGING[e.arm], "reward": reward,
            "signals": e.reward.map(|_| json!({"opened": 1})),
            "default_reward": e.default_row,
        });
        writeln!(text, "{line}").unwrap();
    }
    let path = dir.join("log.jsonl");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A long target-probabilities CSV: the same distribution on every event.
fn write_target(dir: &Path, evs: &[Event], pi: [f64; 3]) -> String {
    let mut text = String::from("event_id,action,probability\n");
    for e in evs {
        for (a, p) in ARMS.iter().zip(pi) {
            writeln!(text, "{},{a},{p}", e.id).unwrap();
        }
    }
    let path = dir.join("target.csv");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn write_reward_model(dir: &Path, evs: &[Event], q: [f64; 3]) -> String {
    let mut text = String::from("event_id,action,estimate\n");
    for e in evs {
        for (a, v) in ARMS.iter().zip(q) {
            writeln!(text, "{},{a},{v}", e.id).unwrap();
        }
    }
    let path = dir.join("q.csv");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Writes the log into a migrated database with placeholders `$p(i)`
/// (a macro: the two engines bind through different traits).
macro_rules! insert {
    ($pool:expr, $evs:expr, $json:expr, $uuid:expr, $p:expr) => {{
        let p = $p;
        let dec = format!(
            "INSERT INTO decisions (event_id, policy, policy_version, model_version, \
             decided_at, context, actions, candidates, action, probability, slate, deferred, \
             degraded) VALUES ({}, 'push_send', 1, 0, {}, {}{json}, NULL, {}{json}, {}, {}, \
             NULL, false, false)",
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6),
            json = $json
        );
        let rew = format!(
            "INSERT INTO rewards (reward_id, event_id, policy, action, reward, signals, \
             is_default, received_at) VALUES ({}{uuid}, {}, 'push_send', {}, {}, NULL, {}, {})",
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6),
            uuid = $uuid
        );
        let mut tx = $pool.begin().await.unwrap();
        for (i, e) in $evs.iter().enumerate() {
            sqlx::query(sqlx::AssertSqlSafe(dec.clone()))
                .bind(e.id.clone())
                .bind(e.at)
                .bind(context().to_string())
                .bind(candidates())
                .bind(ARMS[e.arm].to_string())
                .bind(LOGGING[e.arm])
                .execute(&mut *tx)
                .await
                .unwrap();
            let row = match (e.reward, e.default_row) {
                (Some(r), _) => Some((r, false)),
                (None, true) => Some((0.0, true)),
                (None, false) => None,
            };
            if let Some((r, is_default)) = row {
                sqlx::query(sqlx::AssertSqlSafe(rew.clone()))
                    .bind(format!("00000000-0000-0000-0000-{i:012}"))
                    .bind(e.id.clone())
                    .bind(ARMS[e.arm].to_string())
                    .bind(r)
                    .bind(is_default)
                    .bind(e.at + Duration::minutes(5))
                    .execute(&mut *tx)
                    .await
                    .unwrap();
            }
        }
        tx.commit().await.unwrap();
    }};
}

fn sqlite_log(dir: &Path, evs: &[Event]) -> String {
    let url = format!("sqlite://{}", dir.join("log.db").display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        nudge::log::migrate(&url).await.unwrap();
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        insert!(pool, evs, "", "", |i: usize| format!("?{i}"));
        pool.close().await;
    });
    url
}

fn admin_url() -> String {
    std::env::var("NUDGE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh PostgreSQL database holding the log, dropped with this value.
struct PgLog {
    name: String,
    url: String,
}

impl PgLog {
    fn create(evs: &[Event]) -> PgLog {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let name = format!("nudge_ope_win_{}_{nanos}", std::process::id());
            let admin = admin_url();
            let (server, _) = admin.rsplit_once('/').unwrap();
            let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
            // The name is made of letters, digits and underscores only.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.unwrap();
            let url = format!("{server}/{name}");
            nudge::log::migrate(&url).await.unwrap();
            let pool = sqlx::PgPool::connect(&url).await.unwrap();
            insert!(pool, evs, "::json", "::uuid", |i: usize| format!("${i}"));
            pool.close().await;
            PgLog { name, url }
        })
    }
}

impl Drop for PgLog {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url()).await {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}

fn t0() -> DateTime<Utc> {
    "2026-12-01T12:00:00Z".parse().unwrap()
}

/// The case: a fresh log of 2,000 push_send decisions, about 200
/// rewarded with opened = 1, every window still open. Before the rule,
/// only the rewarded events were used and every estimate was 1.0 with no
/// warning; now nothing is evaluated and the error says why and until when.
#[test]
fn a_fresh_log_whose_windows_are_all_open_is_not_evaluated_and_says_until_when() {
    let dir = tempfile::tempdir().unwrap();
    // 2,000 decisions in the 20 hours before t0, one in ten opened.
    let mut evs = events(
        2000,
        t0() - Duration::hours(20),
        Duration::seconds(30),
        [0.0; 3],
        1,
    );
    for e in evs.iter_mut().step_by(10) {
        e.reward = Some(1.0);
    }
    let last_close =
        (evs[1999].at + Duration::hours(24)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let jsonl = write_jsonl(dir.path(), &evs);
    let sqlite = sqlite_log(dir.path(), &evs);
    let pg = PgLog::create(&evs);
    for log in [&jsonl, &sqlite, &pg.url] {
        let base = [
            "--log",
            log,
            "--policy",
            &push_send(),
            "--as-of",
            "2026-12-01T12:00:00Z",
            "--estimators",
            "ipw,snipw",
            "--bootstrap",
            "0",
        ];
        let err = format!("{:#}", try_evaluate(&base).unwrap_err());
        assert!(
            err.contains(
                "2000 events (200 of them already rewarded) are still inside their reward window"
            ) && err.contains(&last_close),
            "{log}: {err}"
        );
        // --include-open evaluates them as if the windows closed now: the
        // 1,800 without a reward count as the default 0, never 1.0.
        let mut args = base.to_vec();
        args.push("--include-open");
        let out = evaluate(&args);
        assert_eq!(out.candidates[0].1.n, 2000, "{log}");
        assert_eq!(out.windows.included_open, 2000);
        let (ipw, _) = value(&out, "ipw");
        assert!(ipw < 0.5, "{log}: ipw {ipw}");
        let warnings = &out.candidates[0].1.diagnostics.warnings;
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("2000 events still inside")),
            "{log}: {warnings:?}"
        );
    }
}

/// Part of the log is final, part still open: only the final part is
/// evaluated (missing rewards there are the default), the open part is
/// counted and warned about, rewarded or not. A fitted reward model is
/// fitted on exactly the evaluated events.
#[test]
fn events_inside_their_window_are_left_out_as_a_whole_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    // 2,000 decisions over the 40 hours before t0: those decided at least
    // 24 h before t0 (i ≤ 800) are final.
    let evs = events(
        2000,
        t0() - Duration::hours(40),
        Duration::seconds(72),
        [0.3, 0.2, 0.05],
        2,
    );
    let closed = 801u64;
    let open_rewarded = evs[801..].iter().filter(|e| e.reward.is_some()).count() as u64;
    let defaulted = evs[..801].iter().filter(|e| e.reward.is_none()).count() as u64;
    let target = write_target(dir.path(), &evs, [0.6, 0.3, 0.1]);
    let jsonl = write_jsonl(dir.path(), &evs);
    let sqlite = sqlite_log(dir.path(), &evs);
    let ps = push_send();
    for log in [&jsonl, &sqlite] {
        for window in [
            ["--logging-policy", ps.as_str()],
            ["--reward-window", "24h"],
        ] {
            let out = evaluate(&[
                "--log",
                log,
                "--target-probs",
                &target,
                window[0],
                window[1],
                "--as-of",
                "2026-12-01T12:00:00Z",
                "--fit-reward-model",
                "ridge",
                "--estimators",
                "ipw,dr",
                "--bootstrap",
                "0",
            ]);
            let w = &out.windows;
            assert_eq!(out.candidates[0].1.n, closed, "{log} {window:?}");
            assert_eq!(
                (w.open, w.open_rewarded, w.defaulted),
                (2000 - closed, open_rewarded, defaulted)
            );
            assert_eq!(w.open_until, Some(evs[1999].at + Duration::hours(24)));
            let warnings = &out.candidates[0].1.diagnostics.warnings;
            assert!(
                warnings[0].starts_with(&format!(
                    "{} events ({open_rewarded} of them",
                    2000 - closed
                )),
                "{warnings:?}"
            );
        }
    }
    // A Parquet export states each row's window end and default, so it
    // evaluates by the same rule with no policy file at all.
    let export = dir.path().join("export");
    let args = [
        "export",
        "--to",
        export.to_str().unwrap(),
        "--database",
        &sqlite,
        "--policies",
        &ps_dir(),
        "--as-of",
        "2026-12-01T12:00:00Z",
    ];
    nudge_sim::export::run(&ExportCli::try_parse_from(args).unwrap().args).unwrap();
    let with_policy = [
        "--log",
        &sqlite,
        "--target-probs",
        &target,
        "--logging-policy",
        &ps,
        "--as-of",
        "2026-12-01T12:00:00Z",
        "--estimators",
        "ipw,snipw",
        "--bootstrap",
        "0",
    ];
    let from_log = evaluate(&with_policy);
    let mut from_export = with_policy.to_vec();
    from_export.splice(0..2, ["--log", export.to_str().unwrap()]);
    from_export.drain(4..6);
    let from_export = evaluate(&from_export);
    assert_eq!(from_export.candidates[0].1.n, closed);
    assert_eq!(from_export.windows, from_log.windows);
    for e in ["ipw", "snipw"] {
        assert_eq!(value(&from_export, e), value(&from_log, e), "{e}");
    }

    // Without any window the rewarded events are used as they are, and
    // the warning says the unrewarded ones were dropped for lack of one.
    let out = evaluate(&[
        "--log",
        &jsonl,
        "--target-probs",
        &target,
        "--estimators",
        "ipw",
        "--bootstrap",
        "0",
    ]);
    assert_eq!(out.skipped_no_reward, 2000 - out.candidates[0].1.n);
    assert!(
        out.candidates[0].1.diagnostics.warnings[0].contains("reward window is unknown"),
        "{:?}",
        out.candidates[0].1.diagnostics.warnings
    );
}

/// Once every window has closed, missing rewards are the default (with or
/// without the default row in the log) and the estimates are unbiased for
/// the known true value; every source gives the same numbers.
#[test]
fn with_every_window_closed_missing_rewards_are_the_default_and_the_estimate_is_unbiased() {
    let dir = tempfile::tempdir().unwrap();
    let mu = [0.3, 0.2, 0.0];
    let pi = [0.6, 0.3, 0.1];
    let truth: f64 = mu.iter().zip(pi).map(|(m, p)| m * p).sum();
    let mut evs = events(
        4000,
        t0() - Duration::hours(72),
        Duration::seconds(30),
        mu,
        3,
    );
    // A third of the unrewarded events already have the default row.
    for (i, e) in evs.iter_mut().enumerate() {
        e.default_row = e.reward.is_none() && i % 3 == 0;
    }
    let target = write_target(dir.path(), &evs, pi);
    let q = write_reward_model(dir.path(), &evs, mu);
    let jsonl = write_jsonl(dir.path(), &evs);
    let sqlite = sqlite_log(dir.path(), &evs);
    let pg = PgLog::create(&evs);
    let mut seen: Vec<Vec<f64>> = Vec::new();
    for log in [&jsonl, &sqlite, &pg.url] {
        let out = evaluate(&[
            "--log",
            log,
            "--target-probs",
            &target,
            "--logging-policy",
            &push_send(),
            "--reward-model",
            &q,
            "--as-of",
            "2026-12-01T12:00:00Z",
            "--estimators",
            "ipw,snipw,dm,dr",
            "--bootstrap",
            "0",
        ]);
        assert_eq!(out.candidates[0].1.n, 4000, "{log}");
        let no_row = evs
            .iter()
            .filter(|e| e.reward.is_none() && !e.default_row)
            .count() as u64;
        assert_eq!(out.windows.defaulted, no_row, "{log}");
        assert_eq!(out.windows.open, 0);
        assert!(out.candidates[0].1.diagnostics.warnings.is_empty());
        let mut vals = Vec::new();
        for name in ["ipw", "snipw", "dr"] {
            let (v, se) = value(&out, name);
            assert!(
                (v - truth).abs() < 4.0 * se,
                "{log}: {name} = {v} ± {se}, true value {truth}"
            );
            vals.push(v);
        }
        assert!((value(&out, "dm").0 - truth).abs() < 1e-12);
        seen.push(vals);
    }
    for s in &seen[1..] {
        for (a, b) in s.iter().zip(&seen[0]) {
            assert!((a - b).abs() < 1e-12, "{seen:?}");
        }
    }
}

/// Under `first` aggregation a rewarded event's outcome is final at once:
/// kept inside its window only when asked (`--keep-first-rewarded`).
#[test]
fn first_aggregation_rewards_inside_the_window_are_kept_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("push_send_first.toml");
    let text = std::fs::read_to_string(push_send()).unwrap();
    assert!(text.contains("aggregation = \"sum\""));
    std::fs::write(
        &first,
        text.replace("aggregation = \"sum\"", "aggregation = \"first\""),
    )
    .unwrap();
    let first = first.display().to_string();
    let mut evs = events(
        300,
        t0() - Duration::hours(2),
        Duration::seconds(10),
        [0.0; 3],
        4,
    );
    for e in evs.iter_mut().step_by(10) {
        e.reward = Some(1.0);
    }
    let target = write_target(dir.path(), &evs, [0.6, 0.3, 0.1]);
    let jsonl = write_jsonl(dir.path(), &evs);
    let args = [
        "--log",
        &jsonl,
        "--target-probs",
        &target,
        "--logging-policy",
        &first,
        "--as-of",
        "2026-12-01T12:00:00Z",
        "--estimators",
        "ipw",
        "--bootstrap",
        "0",
    ];
    assert!(try_evaluate(&args).is_err());
    let mut keep = args.to_vec();
    keep.push("--keep-first-rewarded");
    let out = evaluate(&keep);
    assert_eq!(out.candidates[0].1.n, 30);
    assert_eq!(
        (out.windows.kept_first_rewarded, out.windows.open),
        (30, 270)
    );
    // Under `sum` aggregation a reward is not final before the window ends.
    let sum_policy = push_send();
    let mut sum = keep;
    sum[5] = &sum_policy;
    assert!(try_evaluate(&sum).is_err());
}

/// A simulated log (`nudge-sim run` marks its outcomes final) is evaluated
/// whole, even dated after `--as-of`: its outcomes were drawn at once.
#[test]
fn a_log_whose_outcomes_are_marked_final_is_evaluated_whatever_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let evs = events(200, t0(), Duration::seconds(60), [0.3, 0.2, 0.0], 5);
    let target = write_target(dir.path(), &evs, [0.6, 0.3, 0.1]);
    let plain = write_jsonl(dir.path(), &evs);
    let text = std::fs::read_to_string(&plain).unwrap();
    let marked = dir.path().join("final.jsonl");
    std::fs::write(
        &marked,
        text.replace(
            "\"default_reward\":false",
            "\"default_reward\":false,\"outcome_final\":true",
        ),
    )
    .unwrap();
    let args = |log: &str| {
        try_evaluate(&[
            "--log",
            log,
            "--target-probs",
            &target,
            "--policy",
            &push_send(),
            "--as-of",
            "2026-12-01T12:00:00Z",
            "--estimators",
            "ipw",
            "--bootstrap",
            "0",
        ])
    };
    assert!(args(&plain).is_err());
    let out = args(&marked.display().to_string()).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(out.candidates.len(), 2);
    assert_eq!(out.candidates[0].1.n, 200);
    assert_eq!(out.windows.open + out.windows.defaulted, 0);
}
