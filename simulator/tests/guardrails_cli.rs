//! Users over time and guardrails in the simulator, end to end: `run` on
//! the fatigue scenario applies the policy's guardrails (the service's own
//! `nudge::guardrails` code) and logs the eligible set; `tune` puts caps
//! and quiet hours in its grid; `evaluate` renormalises a candidate over
//! the logged eligible set, for every log source.

use clap::Parser;
use nudge_sim::logfmt::LoggedEvent;
use nudge_sim::ope::{self, Args, Outcome};
use serde_json::Value;
use sqlx::Connection;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn sim() -> Command {
    Command::new(env!("CARGO_BIN_EXE_nudge-sim"))
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn read_log(path: &Path) -> Vec<LoggedEvent> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const HOUR_MS: i64 = 3_600_000;

#[test]
fn a_capped_run_obeys_the_cap_and_quiet_hours_for_every_user_and_logs_why() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("{policy}.jsonl");
    let out = ok(sim()
        .arg("run")
        .arg(root().join("scenarios/push_fatigue.toml"))
        .args(["--horizon", "6000", "--format", "json", "--log"])
        .arg(&log)
        .output()
        .unwrap());
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    let by_id = |id: &str| -> Value {
        summary["policies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["policy"] == id)
            .unwrap()
            .clone()
    };
    let capped = by_id("push_fatigue_capped");
    let uncapped = by_id("push_fatigue_uncapped");
    assert_eq!(capped["users"]["users"], 200);
    assert!(capped["users"]["exclusions"]["cap"].as_u64().unwrap() > 0);
    assert!(
        capped["users"]["exclusions"]["quiet_hours"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert!(
        uncapped["users"]["sends"].as_u64().unwrap()
            > 2 * capped["users"]["sends"].as_u64().unwrap()
    );

    let events = read_log(&dir.path().join("push_fatigue_capped.jsonl"));
    assert_eq!(events.len(), 6000);
    let mut sends: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    let (mut excluded_cap, mut forced) = (0, 0);
    for e in &events {
        // Every arm, in arm order; the ineligible ones with probability 0
        // and why; the distribution over the eligible ones sums to 1.
        let ids: Vec<&str> = e.candidates.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["send_now", "send_digest", "skip"]);
        let mut total = 0.0;
        for c in &e.candidates {
            match &c.excluded_by {
                Some(why) => {
                    assert_eq!(c.probability, 0.0);
                    assert!(["cap", "quiet_hours"].contains(&why.as_str()), "{why}");
                    excluded_cap += usize::from(why == "cap");
                }
                None => {
                    assert!(c.probability > 0.0);
                    total += c.probability;
                }
            }
        }
        assert!((total - 1.0).abs() < 1e-9, "{}: {total}", e.event_id);
        let chosen = e.candidates.iter().find(|c| c.id == e.action).unwrap();
        assert!(chosen.excluded_by.is_none(), "{}", e.event_id);
        assert_eq!(chosen.probability, e.probability);
        let g = e.guardrails.as_ref().expect("a guardrailed decision");
        let user = g["user"].as_str().unwrap().to_string();
        let tz: nudge::guardrails::Tz = g["timezone"].as_str().unwrap().parse().unwrap();
        forced += usize::from(g["forced"] == true);
        if e.action != "skip" {
            let at = chrono::DateTime::parse_from_rfc3339(g["send_at"].as_str().unwrap())
                .unwrap()
                .with_timezone(&tz);
            use chrono::Timelike;
            let hour = at.hour();
            assert!(
                (8..22).contains(&hour),
                "{}: a send at {at} local",
                e.event_id
            );
            sends
                .entry(user.clone())
                .or_default()
                .push(at.timestamp_millis());
        }
        // The history feature the policy saw is the user's sends in the
        // last 24 h, as logged.
        let seen = e.context["sends_24h"].as_f64().unwrap();
        let now = e.decided_at.timestamp_millis();
        let count = sends.get(&user).map_or(0, |v| {
            v.iter()
                .filter(|t| **t <= now && **t > now - 24 * HOUR_MS)
                .count()
        }) - usize::from(e.action != "skip");
        assert_eq!(seen, count as f64, "{}", e.event_id);
    }
    assert!(
        excluded_cap > 100 && forced > 100,
        "{excluded_cap} {forced}"
    );
    // The cap: at most 2 sends per user in any rolling 24 h.
    let mut most = 0;
    for times in sends.values() {
        for (i, t) in times.iter().enumerate() {
            let n = times[i..].iter().filter(|u| **u < t + 24 * HOUR_MS).count();
            most = most.max(n);
        }
    }
    assert_eq!(most, 2, "the cap binds and is never exceeded");
}

#[test]
fn tune_puts_caps_and_quiet_hours_in_the_grid_and_shows_the_pareto_set() {
    let dir = tempfile::tempdir().unwrap();
    let plot = dir.path().join("tradeoff.svg");
    let out = ok(sim()
        .arg("tune")
        .arg(root().join("scenarios/push_fatigue.toml"))
        .arg("--policy")
        .arg(root().join("scenarios/push_fatigue_uncapped.toml"))
        .args(["-w", "opened=1", "-w", "unsubscribed=-5"])
        .args(["--cap", "none,1,3", "--quiet-hours", "none,22:00-08:00"])
        .args(["--horizon", "4800", "--format", "json", "--plot"])
        .arg(&plot)
        .output()
        .unwrap());
    let t: Value = serde_json::from_slice(&out.stdout).unwrap();
    let settings = t["settings"].as_array().unwrap();
    assert_eq!(settings.len(), 6);
    let find = |cap: Value, quiet: Value| -> &Value {
        settings
            .iter()
            .find(|s| s["guardrails"]["cap"] == cap && s["guardrails"]["quiet_hours"] == quiet)
            .unwrap_or_else(|| panic!("no setting cap={cap} quiet={quiet}"))
    };
    let rate = |s: &Value, sig: &str| s["outcomes"][sig].as_f64().unwrap();
    let none = find(Value::Null, Value::Null);
    let one = find(1.into(), Value::Null);
    // Fewer sends, fewer unsubscribes, and fewer users lost.
    assert!(rate(one, "unsubscribed") < 0.5 * rate(none, "unsubscribed"));
    assert!(
        one["users"]["unsubscribed"].as_u64().unwrap()
            < none["users"]["unsubscribed"].as_u64().unwrap()
    );
    assert!(one["users"]["sends"].as_u64().unwrap() < none["users"]["sends"].as_u64().unwrap());
    let quiet = find(3.into(), "22:00-08:00".into());
    assert!(
        quiet["users"]["exclusions"]["quiet_hours"]
            .as_u64()
            .unwrap()
            > 0
    );
    // The Pareto set over (max opened, min unsubscribed) is marked, and
    // no marked setting is dominated by another.
    let front: Vec<&Value> = settings.iter().filter(|s| s["pareto"] == true).collect();
    assert!(!front.is_empty());
    for a in &front {
        for b in settings {
            let dominated = rate(b, "opened") >= rate(a, "opened")
                && rate(b, "unsubscribed") <= rate(a, "unsubscribed")
                && (rate(b, "opened") > rate(a, "opened")
                    || rate(b, "unsubscribed") < rate(a, "unsubscribed"));
            assert!(!dominated, "{a} is dominated by {b}");
        }
    }
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("Pareto front") && svg.contains("cap=1"));
    // The table names the guardrail columns.
    let table = ok(sim()
        .arg("tune")
        .arg(root().join("scenarios/push_fatigue.toml"))
        .arg("--policy")
        .arg(root().join("scenarios/push_fatigue_uncapped.toml"))
        .args(["-w", "opened=1", "-w", "unsubscribed=-5", "--cap", "2"])
        .args(["--horizon", "500"])
        .output()
        .unwrap());
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(
        text.contains("quiet hours") && text.contains("unsub."),
        "{text}"
    );
}

// ---- evaluate under the logged eligibility -----------------------------

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: Args,
}

fn evaluate(args: &[&str]) -> Outcome {
    let cli = Cli::try_parse_from(std::iter::once("evaluate").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{e}"));
    ope::run(&cli.args).unwrap_or_else(|e| panic!("{e:#}"))
}

fn value(out: &Outcome, candidate: usize, estimator: &str) -> f64 {
    out.candidates[candidate]
        .1
        .estimates
        .iter()
        .find(|e| e.name == estimator)
        .unwrap()
        .value
}

/// Four decisions over `send_now, send_later, skip`: all eligible; a cap
/// on `send_now`; quiet hours on both sends (skip forced); recovery of
/// `send_later`. `(event, candidates [(id, p, excluded_by)], action, p, reward)`.
type Row = (
    &'static str,
    [(&'static str, f64, Option<&'static str>); 3],
    &'static str,
    f64,
    f64,
);
const LOG: [Row; 4] = [
    (
        "e1",
        [
            ("send_now", 0.5, None),
            ("send_later", 0.3, None),
            ("skip", 0.2, None),
        ],
        "send_now",
        0.5,
        1.0,
    ),
    (
        "e2",
        [
            ("send_now", 0.0, Some("cap")),
            ("send_later", 0.6, None),
            ("skip", 0.4, None),
        ],
        "send_later",
        0.6,
        1.0,
    ),
    (
        "e3",
        [
            ("send_now", 0.0, Some("quiet_hours")),
            ("send_later", 0.0, Some("quiet_hours")),
            ("skip", 1.0, None),
        ],
        "skip",
        1.0,
        0.0,
    ),
    (
        "e4",
        [
            ("send_now", 0.7, None),
            ("send_later", 0.0, Some("recovery")),
            ("skip", 0.3, None),
        ],
        "skip",
        0.3,
        0.2,
    ),
];

fn candidates_json(c: &[(&str, f64, Option<&str>); 3]) -> String {
    let items: Vec<Value> = c
        .iter()
        .map(|(id, p, why)| {
            let mut v = serde_json::json!({"id": id, "probability": p});
            if let Some(w) = why {
                v["excluded_by"] = (*w).into();
            }
            v
        })
        .collect();
    Value::Array(items).to_string()
}

fn decided_at(i: usize) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(1_767_225_600 + 60 * i as i64, 0).unwrap()
}

fn write_jsonl(path: &Path) {
    let mut text = String::new();
    for (i, (id, c, action, p, r)) in LOG.iter().enumerate() {
        let line = serde_json::json!({
            "event_id": id, "policy": "push", "decided_at": decided_at(i),
            "context": {"hour_of_day": 10},
            "candidates": serde_json::from_str::<Value>(&candidates_json(c)).unwrap(),
            "action": action, "probability": p, "reward": r,
            "guardrails": {"user": "u1", "timezone": "UTC", "forced": *id == "e3", "send_at": null},
        });
        text.push_str(&line.to_string());
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

macro_rules! insert {
    ($pool:expr, $json:expr, $uuid:expr, $p:expr) => {{
        let p = $p;
        let decision = format!(
            "INSERT INTO decisions (event_id, policy, policy_version, model_version, decided_at, \
             context, actions, candidates, action, probability, slate, deferred, degraded, \
             guardrails) VALUES ({}, {}, 1, 0, {}, {}{json}, NULL, {}{json}, {}, {}, NULL, false, \
             false, {}{json})",
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            p(6),
            p(7),
            p(8),
            json = $json
        );
        let reward = format!(
            "INSERT INTO rewards (reward_id, event_id, policy, action, reward, signals, \
             is_default, received_at) VALUES ({}{uuid}, {}, 'push', {}, {}, NULL, false, {})",
            p(1),
            p(2),
            p(3),
            p(4),
            p(5),
            uuid = $uuid
        );
        for (i, (id, c, action, prob, r)) in LOG.iter().enumerate() {
            sqlx::query(sqlx::AssertSqlSafe(decision.clone()))
                .bind(*id)
                .bind("push")
                .bind(decided_at(i))
                .bind(r#"{"hour_of_day": 10}"#)
                .bind(candidates_json(c))
                .bind(*action)
                .bind(*prob)
                .bind(r#"{"user":"u1","timezone":"UTC","forced":false,"send_at":null}"#)
                .execute($pool)
                .await
                .unwrap();
            sqlx::query(sqlx::AssertSqlSafe(reward.clone()))
                .bind(format!("00000000-0000-0000-0000-{:012}", i + 1))
                .bind(*id)
                .bind(*action)
                .bind(*r)
                .bind(decided_at(i) + chrono::Duration::seconds(5))
                .execute($pool)
                .await
                .unwrap();
        }
    }};
}

/// A fresh PostgreSQL database on the local server
/// (`NUDGE_TEST_POSTGRES_URL`), dropped at the end.
struct PgDb {
    name: String,
    url: String,
}

fn admin_url() -> String {
    std::env::var("NUDGE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

impl PgDb {
    async fn create() -> PgDb {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("nudge_sim_elig_{}_{nanos}", std::process::id());
        let admin = admin_url();
        let (server, _) = admin.rsplit_once('/').unwrap();
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
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
fn evaluate_renormalises_a_candidate_over_the_logged_eligible_set_in_every_source() {
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("log.jsonl");
    write_jsonl(&jsonl);
    // A candidate scored elsewhere: uniform over all three arms.
    let target = dir.path().join("target.csv");
    let mut csv = String::from("event_id,action,probability\n");
    for (id, ..) in LOG {
        for arm in ["send_now", "send_later", "skip"] {
            csv.push_str(&format!("{id},{arm},{}\n", 1.0 / 3.0));
        }
    }
    std::fs::write(&target, csv).unwrap();
    // A policy file: uniform over whatever it may choose.
    let policy = dir.path().join("uniform.toml");
    std::fs::write(
        &policy,
        "id = \"uniform\"\nalgorithm = \"uniform\"\narms = [\"send_now\", \"send_later\", \"skip\"]\n\
         [[features.context]]\nname = \"hour_of_day\"\ntype = \"number\"\n\
         [reward]\nsignals = { opened = 1.0 }\n",
    )
    .unwrap();
    // Under the logged eligibility the uniform candidate is uniform over
    // the eligible arms: 1/3 each on e1, 1/2 on e2's two, 1 on e3's skip,
    // 1/2 on e4's two.
    let w = [(1.0 / 3.0) / 0.5, 0.5 / 0.6, 1.0 / 1.0, 0.5 / 0.3];
    let rewards = [1.0, 1.0, 0.0, 0.2];
    let ipw: f64 = w.iter().zip(rewards).map(|(w, r)| w * r).sum::<f64>() / 4.0;
    let snipw: f64 = w.iter().zip(rewards).map(|(w, r)| w * r).sum::<f64>() / w.iter().sum::<f64>();
    // Ignoring eligibility (weights 1/3 over p) would give another value.
    let naive = ((1.0 / 3.0) / 0.5 + (1.0 / 3.0) / 0.6 + (1.0 / 3.0) / 0.3 * 0.2) / 4.0;
    assert!((ipw - naive).abs() > 0.05);

    let check = |log: &str| {
        let out = evaluate(&[
            "--log",
            log,
            "--target-probs",
            target.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
            "--estimators",
            "ipw,snipw",
            "--bootstrap",
            "0",
        ]);
        assert_eq!(out.candidates.len(), 2);
        for c in 0..2 {
            let name = &out.candidates[c].0;
            assert!((value(&out, c, "ipw") - ipw).abs() < 1e-12, "{log} {name}");
            assert!(
                (value(&out, c, "snipw") - snipw).abs() < 1e-12,
                "{log} {name}"
            );
            assert_eq!(out.candidates[c].1.diagnostics.match_rate, 1.0);
        }
    };
    check(jsonl.to_str().unwrap());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("log.db").display());
    rt.block_on(async {
        nudge::log::migrate(&sqlite).await.unwrap();
        let pool = sqlx::SqlitePool::connect(&sqlite).await.unwrap();
        insert!(&pool, "", "", |i: usize| format!("?{i}"));
        pool.close().await;
    });
    check(&sqlite);

    let db = rt.block_on(async {
        let db = PgDb::create().await;
        nudge::log::migrate(&db.url).await.unwrap();
        let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
        insert!(&pool, "::json", "::uuid", |i: usize| format!("${i}"));
        pool.close().await;
        db
    });
    check(&db.url);
    drop(db);

    // A candidate that gives the eligible set nothing cannot be evaluated
    // under it: a clear error naming the event.
    let greedy = dir.path().join("greedy.csv");
    let mut csv = String::from("event_id,action,probability\n");
    for (id, ..) in LOG {
        csv.push_str(&format!("{id},send_later,1\n"));
    }
    std::fs::write(&greedy, csv).unwrap();
    let cli = Cli::try_parse_from([
        "evaluate",
        "--log",
        jsonl.to_str().unwrap(),
        "--target-probs",
        greedy.to_str().unwrap(),
        "--bootstrap",
        "0",
    ])
    .unwrap();
    let e = format!("{:#}", ope::run(&cli.args).unwrap_err());
    assert!(e.contains("\"e3\"") && e.contains("eligible"), "{e}");
}
