//! `nudge-sim evaluate` on every log source (SQLite, PostgreSQL, JSONL,
//! OBD), its errors for malformed input, its warnings, its bootstrap, and
//! replay of a policy file.
//!
//! PostgreSQL: a fresh database per test on the local server
//! (`NUDGE_TEST_POSTGRES_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`), migrated with the
//! service's migrations and dropped at the end.

use clap::Parser;
use nudge::features::Features;
use nudge::policy::{DecideRequest, Policy};
use nudge_sim::logfmt::LoggedEvent;
use nudge_sim::ope::{self, Args, Outcome};
use serde_json::{Value, json};
use sqlx::Connection;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/obp")
        .join(name)
        .display()
        .to_string()
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture("expected.json")).unwrap()).unwrap()
}

fn try_evaluate(args: &[&str]) -> anyhow::Result<Outcome> {
    let cli = Cli::try_parse_from(std::iter::once("evaluate").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{e}"));
    ope::run(&cli.args)
}

fn evaluate(args: &[&str]) -> Outcome {
    try_evaluate(args).unwrap_or_else(|e| panic!("{e:#}"))
}

fn value(out: &Outcome, estimator: &str) -> f64 {
    out.candidates[0]
        .1
        .estimates
        .iter()
        .find(|e| e.name == estimator)
        .unwrap()
        .value
}

fn synthetic_events() -> Vec<LoggedEvent> {
    std::fs::read_to_string(fixture("synthetic.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Evaluates the soft synthetic candidate on `log` and checks obp's values.
fn assert_matches_obp_on(log: &str) {
    let exp = expected();
    let out = evaluate(&[
        "--log",
        log,
        "--target-probs",
        &fixture("synthetic_target_soft.csv"),
        "--reward-model",
        &fixture("synthetic_reward_model.csv"),
        "--estimators",
        "ipw,snipw,dm,dr",
        "--bootstrap",
        "0",
    ]);
    assert_eq!(out.candidates[0].1.n, 400);
    for name in ["ipw", "snipw", "dm", "dr"] {
        let want = exp["synthetic"]["soft"][name].as_f64().unwrap();
        let ours = value(&out, name);
        assert!(
            (ours - want).abs() <= 1e-10 * want.abs().max(1.0),
            "{name}: {ours} vs obp {want}"
        );
    }
}

/// Inserts the synthetic log into `$pool` with the placeholders `$p` (1-based
/// index to text): rewards of 1 are split into two rows (0.25 and 0.75, as
/// `sum` aggregation logs them) and rewards of 0 are default rows.
macro_rules! insert_decisions {
    ($pool:expr, $json:expr, $uuid:expr, $p:expr) => {{
        let p = $p;
        let insert_decision = format!(
            "INSERT INTO decisions (event_id, policy, policy_version, model_version, \
             decided_at, context, actions, candidates, action, probability, slate, deferred, \
             degraded) VALUES ({}, {}, {}, {}, {}, {}{json}, NULL, {}{json}, {}, {}, NULL, {}, {})",
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6),
            p(7),
            p(8),
            p(9),
            p(10),
            p(11),
            json = $json
        );
        let insert_reward = format!(
            "INSERT INTO rewards (reward_id, event_id, policy, action, reward, signals, \
             is_default, received_at) VALUES ({}{uuid}, {}, {}, {}, {}, NULL, {}, {})",
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6),
            p(7),
            uuid = $uuid
        );
        let mut reward_id = 0u64;
        for ev in synthetic_events() {
            sqlx::query(sqlx::AssertSqlSafe(insert_decision.clone()))
                .bind(ev.event_id.clone())
                .bind(ev.policy.clone())
                .bind(ev.policy_version)
                .bind(ev.model_version)
                .bind(ev.decided_at)
                .bind(ev.context.to_string())
                .bind(serde_json::to_string(&ev.candidates).unwrap())
                .bind(ev.action.clone())
                .bind(ev.probability)
                .bind(false)
                .bind(false)
                .execute($pool)
                .await
                .unwrap();
            let r = ev.reward.unwrap();
            let parts: Vec<(f64, bool)> = if r == 1.0 {
                vec![(0.25, false), (0.75, false)]
            } else {
                vec![(r, true)]
            };
            for (part, is_default) in parts {
                reward_id += 1;
                sqlx::query(sqlx::AssertSqlSafe(insert_reward.clone()))
                    .bind(format!("00000000-0000-0000-0000-{reward_id:012}"))
                    .bind(ev.event_id.clone())
                    .bind(ev.policy.clone())
                    .bind(ev.action.clone())
                    .bind(part)
                    .bind(is_default)
                    .bind(ev.decided_at + chrono::Duration::seconds(5))
                    .execute($pool)
                    .await
                    .unwrap();
            }
        }
    }};
}

#[test]
fn a_sqlite_log_with_summed_rewards_gives_obps_values() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("log.db").display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        nudge::log::migrate(&url).await.unwrap();
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        insert_decisions!(&pool, "", "", |i: usize| format!("?{i}"));
        pool.close().await;
    });
    assert_matches_obp_on(&url);
}

fn admin_url() -> String {
    std::env::var("NUDGE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A fresh PostgreSQL database, dropped when this value is.
struct PgDb {
    name: String,
    url: String,
}

impl PgDb {
    async fn create() -> PgDb {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("nudge_ope_{}_{nanos}", std::process::id());
        let admin = admin_url();
        let (server, _) = admin.rsplit_once('/').unwrap();
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        // The name is made of digits and underscores only.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        PgDb {
            url: format!("{server}/{name}"),
            name,
        }
    }
}

impl Drop for PgDb {
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

#[test]
fn a_postgres_log_with_summed_rewards_gives_obps_values() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(async {
        let db = PgDb::create().await;
        nudge::log::migrate(&db.url).await.unwrap();
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        insert_decisions!(&pool, "::json", "::uuid", |i: usize| format!("${i}"));
        pool.close().await;
        db
    });
    assert_matches_obp_on(&db.url);
}

#[test]
fn the_policy_id_and_time_filters_select_decisions_in_every_source() {
    // Events 0..399 are one second apart from 10:00:00; keep [10:01:00, 10:02:00).
    let jsonl = fixture("synthetic.jsonl");
    let obd = format!("obd:{}", fixture("synthetic.obd.csv"));
    for log in [jsonl.as_str(), obd.as_str()] {
        let out = evaluate(&[
            "--log",
            log,
            "--target-probs",
            &fixture("synthetic_target_soft.csv"),
            "--since",
            "2026-11-26T10:01:00Z",
            "--until",
            "2026-11-26T10:02:00Z",
            "--estimators",
            "ipw",
            "--bootstrap",
            "0",
        ]);
        assert_eq!(out.candidates[0].1.n, 60, "{log}");
    }
    let none = try_evaluate(&[
        "--log",
        &jsonl,
        "--target-probs",
        &fixture("synthetic_target_soft.csv"),
        "--policy-id",
        "someone_else",
        "--bootstrap",
        "0",
    ]);
    assert!(none.unwrap_err().to_string().contains("no events"));
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    path.display().to_string()
}

/// A small JSONL log: two actions, given propensities and rewards.
fn jsonl(events: &[(&str, f64, f64)]) -> String {
    let mut out = String::new();
    for (i, (action, p, r)) in events.iter().enumerate() {
        let other = if *action == "a" { "b" } else { "a" };
        let ev = json!({
            "event_id": i.to_string(), "policy": "p", "decided_at": "2026-11-26T10:00:00Z",
            "context": {}, "candidates": [{"id": action, "probability": p},
                                          {"id": other, "probability": 1.0 - p}],
            "action": action, "probability": p, "reward": r,
        });
        out.push_str(&ev.to_string());
        out.push('\n');
    }
    out
}

fn target(n: usize, pa: f64) -> String {
    let mut out = String::from("event_id,action,probability\n");
    for i in 0..n {
        out.push_str(&format!("{i},a,{pa}\n{i},b,{}\n", 1.0 - pa));
    }
    out
}

#[test]
fn a_malformed_jsonl_line_is_named_by_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut text = jsonl(&[("a", 0.5, 1.0), ("b", 0.5, 0.0), ("a", 0.5, 1.0)]);
    text = text.replacen(
        "\"probability\":0.5,\"reward\":1.0",
        "\"probability\":\"high\",\"reward\":1.0",
        2,
    );
    // The first replacement is on line 1; restore it so line 3 is the bad one.
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[0] = jsonl(&[("a", 0.5, 1.0)]).trim().to_string();
    let log = write(dir.path(), "log.jsonl", &(lines.join("\n") + "\n"));
    let t = write(dir.path(), "t.csv", &target(3, 0.5));
    let err = try_evaluate(&["--log", &log, "--target-probs", &t])
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("{log}:3:")), "{err}");
    assert!(err.contains("field `probability`"), "{err}");
}

#[test]
fn a_malformed_obd_row_and_a_malformed_target_row_are_named_by_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let log = write(
        dir.path(),
        "log.csv",
        "item_id,click,propensity_score\n0,1,0.5\n1,0,zero\n",
    );
    let t = write(
        dir.path(),
        "t.csv",
        "event_id,action,probability\n0,0,0.5\n0,1,0.5\n1,0,0.5\n1,1,0.5\n",
    );
    let err = try_evaluate(&["--log", &format!("obd:{log}"), "--target-probs", &t])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{log}:3: field `propensity_score`")),
        "{err}"
    );

    let log = write(
        dir.path(),
        "ok.csv",
        "item_id,click,propensity_score\n0,1,0.5\n1,0,0.5\n",
    );
    let t = write(
        dir.path(),
        "bad.csv",
        "event_id,action,probability\n0,0,0.5\n0,1,0.5\n1,0,half\n1,1,0.5\n",
    );
    let err = try_evaluate(&["--log", &format!("obd:{log}"), "--target-probs", &t])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{t}:4: field `probability`")),
        "{err}"
    );
}

#[test]
fn a_propensity_outside_zero_one_is_an_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let log = write(
        dir.path(),
        "log.jsonl",
        &jsonl(&[("a", 0.5, 1.0), ("a", 0.0, 1.0)]),
    );
    let t = write(dir.path(), "t.csv", &target(2, 0.5));
    let err = try_evaluate(&["--log", &log, "--target-probs", &t])
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("{log}:2")), "{err}");
    assert!(err.contains("probability"), "{err}");
}

#[test]
fn deterministic_logging_is_warned_about_not_hidden() {
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<(&str, f64, f64)> = (0..50).map(|i| ("a", 1.0, (i % 2) as f64)).collect();
    let log = write(dir.path(), "log.jsonl", &jsonl(&events));
    let t = write(dir.path(), "t.csv", &target(50, 0.3));
    let out = evaluate(&["--log", &log, "--target-probs", &t, "--bootstrap", "0"]);
    let d = &out.candidates[0].1.diagnostics;
    assert_eq!(d.deterministic_share, 1.0);
    assert!(
        d.warnings
            .iter()
            .any(|w| w.contains("deterministic logging")),
        "{:?}",
        d.warnings
    );

    // Logged with propensity 1 but taken by the candidate too (as when it
    // was the only eligible arm): nothing is missing, and no warning.
    let t_same = write(dir.path(), "t_same.csv", &target(50, 1.0));
    let out = evaluate(&["--log", &log, "--target-probs", &t_same, "--bootstrap", "0"]);
    let d = &out.candidates[0].1.diagnostics;
    assert_eq!(
        (d.deterministic_share, d.deterministic_differs_share),
        (1.0, 0.0)
    );
    assert!(
        d.warnings.iter().all(|w| !w.contains("deterministic")),
        "{:?}",
        d.warnings
    );

    // A uniformly random log raises no such warning.
    let events: Vec<(&str, f64, f64)> = (0..50)
        .map(|i| (if i % 2 == 0 { "a" } else { "b" }, 0.5, 1.0))
        .collect();
    let log = write(dir.path(), "log2.jsonl", &jsonl(&events));
    let out = evaluate(&["--log", &log, "--target-probs", &t, "--bootstrap", "0"]);
    let d = &out.candidates[0].1.diagnostics;
    assert!(
        d.warnings.iter().all(|w| !w.contains("deterministic")),
        "{:?}",
        d.warnings
    );
}

#[test]
fn the_bootstrap_interval_is_reproducible_with_a_seed_and_varies_without() {
    let run = |seed: &str| {
        evaluate(&[
            "--log",
            &fixture("synthetic.jsonl"),
            "--target-probs",
            &fixture("synthetic_target_soft.csv"),
            "--estimators",
            "ipw,snipw",
            "--bootstrap",
            "300",
            "--seed",
            seed,
        ])
    };
    let a = run("7");
    let b = run("7");
    let c = run("8");
    let ea = &a.candidates[0].1.estimates;
    assert_eq!(ea, &b.candidates[0].1.estimates);
    assert_ne!(
        ea[0].bootstrap_ci,
        c.candidates[0].1.estimates[0].bootstrap_ci
    );
    for e in ea {
        let (lo, hi) = e.bootstrap_ci.unwrap();
        assert!(lo < e.value && e.value < hi, "{e:?}");
        assert_eq!((e.ci_low, e.ci_high), (lo, hi));
        // The percentile interval's width is close to the normal one's.
        let ratio = (hi - lo) / (e.normal_ci.1 - e.normal_ci.0);
        assert!((0.8..1.25).contains(&ratio), "{e:?}");
    }
}

/// A uniformly random log for `policies/push_send.toml`.
fn push_send_log(n: usize) -> (Vec<LoggedEvent>, String) {
    let arms = ["send_now", "send_later", "skip"];
    let platforms = ["ios", "android", "web"];
    let mut events = Vec::new();
    let mut text = String::new();
    for i in 0..n {
        let hour = (i * 7 % 24) as f64;
        let action = arms[(i * 5 + i / 3) % 3];
        // Rewards depend on the context and action, so learning pays.
        let reward = if (action == "send_now") == (hour >= 12.0) {
            1.0
        } else {
            0.0
        };
        let ev = json!({
            "event_id": format!("e{i}"), "policy": "uniform",
            "decided_at": "2026-11-26T10:00:00Z",
            "context": {"hour_of_day": hour, "pushes_last_24h": (i % 4) as f64,
                        "platform": platforms[i % 3]},
            "candidates": arms.iter().map(|a| json!({"id": a, "probability": 1.0 / 3.0}))
                .collect::<Vec<_>>(),
            "action": action, "probability": 1.0 / 3.0, "reward": reward,
        });
        text.push_str(&ev.to_string());
        text.push('\n');
        events.push(serde_json::from_value(ev).unwrap());
    }
    (events, text)
}

#[test]
fn replay_of_a_policy_file_counts_matched_draws_and_the_learning_policy_learns_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let (events, text) = push_send_log(600);
    let log = write(dir.path(), "log.jsonl", &text);
    let policy_path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../policies/push_send.toml");
    let out = evaluate(&[
        "--log",
        &log,
        "--policy",
        &policy_path.display().to_string(),
        "--estimators",
        "replay,ipw",
        "--bootstrap",
        "0",
    ]);
    assert_eq!(out.candidates.len(), 2);

    // The same computation through the policy API: Li et al. 2011's
    // algorithm, once with the fresh model fixed and once learning.
    let policy = Policy::new(nudge::policy::load_file(&policy_path).unwrap());
    let fixed = policy.new_model();
    let mut learning = policy.new_model();
    let (mut fixed_sum, mut fixed_n, mut learn_sum, mut learn_n, mut ipw) = (0.0, 0, 0.0, 0, 0.0);
    for ev in &events {
        let ctx: Features = serde_json::from_value(ev.context.clone()).unwrap();
        let req = DecideRequest::disjoint(&ev.event_id, &ctx);
        let reward = ev.reward.unwrap();
        let d = policy.decide(&fixed, &req).unwrap();
        let arm =
            |d: &nudge::policy::Decision, j: usize| policy.spec().arms[d.candidates[j]].clone();
        if arm(&d, d.chosen()) == ev.action {
            fixed_sum += reward;
            fixed_n += 1;
        }
        let pos = (0..d.candidates.len())
            .find(|j| arm(&d, *j) == ev.action)
            .unwrap();
        ipw += d.probabilities[pos] / ev.probability * reward;
        let l = policy.decide(&learning, &req).unwrap();
        if arm(&l, l.chosen()) == ev.action {
            learn_sum += reward;
            learn_n += 1;
            policy.learn(&mut learning, &l, l.chosen(), reward).unwrap();
        }
    }
    let fixed_ev = &out.candidates[0].1;
    let learn_ev = &out.candidates[1].1;
    assert!(out.candidates[1].0.ends_with("(learning)"));
    let get = |ev: &ope::Evaluation, name: &str| {
        ev.estimates.iter().find(|e| e.name == name).unwrap().value
    };
    assert!((get(fixed_ev, "replay") - fixed_sum / fixed_n as f64).abs() < 1e-12);
    assert!((get(fixed_ev, "ipw") - ipw / events.len() as f64).abs() < 1e-12);
    assert!((get(learn_ev, "replay") - learn_sum / learn_n as f64).abs() < 1e-12);
    assert!((learn_ev.diagnostics.replay_match_rate - learn_n as f64 / 600.0).abs() < 1e-12);
    // Learning changed the policy's choices (and, on this log, its value).
    assert_ne!(fixed_n, learn_n);
    assert!(get(learn_ev, "replay") > get(fixed_ev, "replay"));
}

#[test]
fn json_output_has_the_documented_stable_keys() {
    let out = evaluate(&[
        "--log",
        &fixture("synthetic.jsonl"),
        "--target-probs",
        &fixture("synthetic_target_soft.csv"),
        "--reward-model",
        &fixture("synthetic_reward_model.csv"),
        "--estimators",
        "ipw,dr",
        "--bootstrap",
        "50",
    ]);
    let mut buf = Vec::new();
    ope::report::write_json(&mut buf, &out).unwrap();
    let v: Value = serde_json::from_slice(&buf).unwrap();
    assert_eq!(v["n"], 400);
    for name in ["ipw", "dr"] {
        for key in ["value", "stderr", "ci_low", "ci_high"] {
            assert!(v["estimates"][name][key].is_f64(), "{name}.{key} in {v}");
        }
        assert_eq!(v["estimates"][name]["ci_method"], "bootstrap");
    }
    for key in [
        "ess",
        "match_rate",
        "max_weight",
        "mean_weight",
        "tiny_propensity_share",
    ] {
        assert!(v["diagnostics"][key].is_number(), "{key} in {v}");
    }
    for key in [
        "open",
        "open_rewarded",
        "defaulted",
        "included_open",
        "kept_first_rewarded",
        "no_reward_unknown_window",
    ] {
        assert!(v["reward_windows"][key].is_u64(), "{key} in {v}");
    }
    assert!(v["reward_windows"]["as_of"].is_string(), "{v}");
}

#[test]
fn a_png_and_an_svg_plot_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = evaluate(&[
        "--log",
        &fixture("synthetic.jsonl"),
        "--target-probs",
        &fixture("synthetic_target_soft.csv"),
        "--target-probs",
        &fixture("synthetic_target_greedy.csv"),
        "--estimators",
        "ipw,snipw",
        "--bootstrap",
        "0",
    ]);
    for name in ["plot.png", "plot.svg"] {
        let path = dir.path().join(name);
        ope::report::plot(&path, &out).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 1000, "{name}: {} bytes", bytes.len());
    }
    let svg = std::fs::read_to_string(dir.path().join("plot.svg")).unwrap();
    assert!(svg.contains("synthetic_target_greedy.csv ipw"));
}

/// Writes obp's slate fixture (`fixtures/obp/slate.json`) as the service
/// logs slates: one decision per slate (candidates with their
/// first-position probabilities, `slate` with each position's probability
/// given the ones above), one reward row per item naming that item.
/// `$p` maps a 1-based index to the engine's placeholder.
macro_rules! insert_slates {
    ($pool:expr, $json:expr, $uuid:expr, $p:expr, $fx:expr) => {{
        let p = $p;
        let insert_decision = format!(
            "INSERT INTO decisions (event_id, policy, policy_version, model_version, \
             decided_at, context, actions, candidates, action, probability, slate, deferred, \
             degraded) VALUES ({}, 'logger', 1, 0, {}, '{{}}'{json}, NULL, {}{json}, {}, {}, \
             {}{json}, false, false)",
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6),
            json = $json
        );
        let insert_reward = format!(
            "INSERT INTO rewards (reward_id, event_id, policy, action, reward, signals, \
             is_default, received_at) VALUES ({}{uuid}, {}, 'logger', {}, {}, NULL, false, {})",
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            uuid = $uuid
        );
        let t0 = chrono::DateTime::parse_from_rfc3339("2026-11-26T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let mut reward_id = 0u64;
        for (t, s) in $fx["slates"].as_array().unwrap().iter().enumerate() {
            let b: Vec<f64> = serde_json::from_value(s["b"].clone()).unwrap();
            let items: Vec<usize> = serde_json::from_value(s["items"].clone()).unwrap();
            let rewards: Vec<f64> = serde_json::from_value(s["rewards"].clone()).unwrap();
            let candidates: Vec<Value> = b
                .iter()
                .enumerate()
                .map(|(a, p)| json!({"id": format!("a{a}"), "probability": p}))
                .collect();
            let mut used = 0.0;
            let slate: Vec<Value> = items
                .iter()
                .map(|&a| {
                    let q = b[a] / (1.0 - used);
                    used += b[a];
                    json!({"id": format!("a{a}"), "probability": q})
                })
                .collect();
            let event = format!("s{t}");
            let at = t0 + chrono::Duration::seconds(t as i64);
            sqlx::query(sqlx::AssertSqlSafe(insert_decision.clone()))
                .bind(event.clone())
                .bind(at)
                .bind(Value::Array(candidates).to_string())
                .bind(format!("a{}", items[0]))
                .bind(b[items[0]])
                .bind(Value::Array(slate).to_string())
                .execute($pool)
                .await
                .unwrap();
            for (&a, &r) in items.iter().zip(&rewards) {
                reward_id += 1;
                sqlx::query(sqlx::AssertSqlSafe(insert_reward.clone()))
                    .bind(format!("00000000-0000-0000-0000-{reward_id:012}"))
                    .bind(event.clone())
                    .bind(format!("a{a}"))
                    .bind(r)
                    .bind(at + chrono::Duration::seconds(5))
                    .execute($pool)
                    .await
                    .unwrap();
            }
        }
    }};
}

/// The target's first-position probabilities as a long CSV.
fn slate_target(dir: &Path, fx: &Value) -> String {
    let mut text = String::from("event_id,action,probability\n");
    for (t, s) in fx["slates"].as_array().unwrap().iter().enumerate() {
        for (a, p) in s["e"].as_array().unwrap().iter().enumerate() {
            text.push_str(&format!("s{t},a{a},{}\n", p.as_f64().unwrap()));
        }
    }
    write(dir, "slate_target.csv", &text)
}

/// SIPS, IIPS and RIPS from the service's own tables agree with obp, and
/// each item's reward is credited to that item: IPW sees the top item's
/// reward only.
fn assert_slates_match_obp(url: &str, target: &str, fx: &Value) {
    let out = evaluate(&[
        "--log",
        url,
        "--target-probs",
        target,
        "--reward-window",
        "1h",
        "--estimators",
        "ipw",
        "--bootstrap",
        "0",
    ]);
    assert_eq!(out.candidates[0].1.n, 300);
    for name in ["sips", "iips", "rips"] {
        let want = fx["expected"][name].as_f64().unwrap();
        let ours = value(&out, name);
        assert!(
            (ours - want).abs() <= 1e-9 * want.abs(),
            "{name}: {ours} vs obp {want}"
        );
    }
    let slates = fx["slates"].as_array().unwrap();
    let top_ipw: f64 = slates
        .iter()
        .map(|s| {
            let a = s["items"][0].as_u64().unwrap() as usize;
            s["rewards"][0].as_f64().unwrap() * s["e"][a].as_f64().unwrap()
                / s["b"][a].as_f64().unwrap()
        })
        .sum::<f64>()
        / slates.len() as f64;
    let ipw = value(&out, "ipw");
    assert!(
        (ipw - top_ipw).abs() < 1e-12,
        "ipw {ipw} vs top-item ipw {top_ipw}"
    );
}

#[test]
fn slates_in_sqlite_and_postgres_logs_give_obps_slate_estimates() {
    let fx: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("slate.json")).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = slate_target(dir.path(), &fx);
    let sqlite = format!("sqlite://{}", dir.path().join("slates.db").display());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = rt.block_on(async {
        nudge::log::migrate(&sqlite).await.unwrap();
        let pool = sqlx::SqlitePool::connect(&sqlite).await.unwrap();
        insert_slates!(&pool, "", "", |i: usize| format!("?{i}"), fx);
        pool.close().await;
        let db = PgDb::create().await;
        nudge::log::migrate(&db.url).await.unwrap();
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        insert_slates!(&pool, "::json", "::uuid", |i: usize| format!("${i}"), fx);
        pool.close().await;
        db
    });
    assert_slates_match_obp(&sqlite, &target, &fx);
    assert_slates_match_obp(&db.url, &target, &fx);
}
