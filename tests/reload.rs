//! Policy reload without a restart (`POST /v1/policies/reload`, SIGHUP) on
//! one replica and across replicas, and the learning modes `logging_only`
//! and `apprentice`.

mod support;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use support::{Backend, TestApp, spawn_app, spawn_replica};

/// The test `push.toml` ([`support::POLICIES`]) with `alpha`, and with
/// `extra` (e.g. a version) before it.
fn push(alpha: f64, extra: &str) -> String {
    let (_, text) = support::POLICIES
        .iter()
        .find(|(name, _)| *name == "push.toml")
        .expect("the test policies have push.toml");
    assert!(text.contains("alpha = 1.0\n"));
    format!(
        "{extra}\n{}",
        text.replace("alpha = 1.0\n", &format!("alpha = {alpha:?}\n"))
    )
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

async fn decide_and_reward(app: &TestApp, policy: &str, n: usize, x: Value) {
    for i in 0..n {
        let event = format!("{policy}-{}-{i}", uuid::Uuid::now_v7().simple());
        let (status, d) = app
            .post(
                "/v1/decide",
                &json!({"policy": policy, "event_id": event, "context": {"x": x}}),
            )
            .await;
        assert_eq!(status, 200, "{d}");
        let (status, r) = app
            .post("/v1/reward", &json!({"event_id": event, "reward": 1.0}))
            .await;
        assert_eq!(status, 202, "{r}");
    }
}

async fn reload(app: &TestApp) -> (u16, Value) {
    app.post("/v1/policies/reload", &json!({})).await
}

fn change_of(report: &Value, id: &str) -> String {
    report["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {report}"))["change"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn total_count(app: &TestApp, policy: &str) -> u64 {
    app.model(policy).await.1.iter().map(|(_, c)| c).sum()
}

/// Polls `f` until it holds (or fails after 10 s).
async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !f().await {
        assert!(started.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn reload_keeps_or_replaces_models_and_refuses_bad_files() {
    let app = spawn_app(Backend::Embedded).await;
    let dir = app.settings.policies.clone();
    decide_and_reward(&app, "push", 6, json!([1.0, 0.5, -0.5])).await;
    assert_eq!(total_count(&app, "push").await, 6);
    let (_, before) = app.get_json("/v1/policies/push").await;

    // Unchanged files: nothing changes, the generation moves on.
    let (status, report) = reload(&app).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(change_of(&report, "push"), "unchanged");
    let generation = report["generation"].as_u64().unwrap();
    assert!(generation >= 2, "{report}");

    // A new alpha over the same layout keeps the learned model.
    write(&dir, "push.toml", &push(2.5, ""));
    let (status, report) = reload(&app).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(change_of(&report, "push"), "kept");
    assert_eq!(change_of(&report, "windowed"), "unchanged");
    assert_eq!(report["generation"].as_u64().unwrap(), generation + 1);
    let (_, after) = app.get_json("/v1/policies/push").await;
    assert_eq!(after["params"]["alpha"], 2.5);
    assert_eq!(after["stats"], before["stats"], "the learned model is kept");
    assert_eq!(after["model_version"], before["model_version"]);
    decide_and_reward(&app, "push", 2, json!([0.0, 1.0, 0.0])).await;
    assert_eq!(total_count(&app, "push").await, 8, "learning goes on");

    // An invalid file: 422 with the check's messages, nothing changes.
    write(
        &dir,
        "broken.toml",
        "id = \"broken\"\nalgorithm = \"linucb\"\narms = []\n",
    );
    write(&dir, "push.toml", &push(9.0, ""));
    let (status, err) = reload(&app).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["code"], "invalid_policy_files");
    let errors = err["error"]["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e["file"].as_str().unwrap().ends_with("broken.toml") && e["key"] == "arms"),
        "{err}"
    );
    let (_, now) = app.get_json("/v1/policies/push").await;
    assert_eq!(
        now["params"]["alpha"], 2.5,
        "a refused reload changes nothing"
    );
    std::fs::remove_file(dir.join("broken.toml")).unwrap();

    // A new layout under the same version is refused, naming the version.
    let wider = push(2.5, "").replace("length = 3", "length = 4");
    write(&dir, "push.toml", &wider);
    let (status, err) = reload(&app).await;
    assert_eq!(status, 422, "{err}");
    let e = &err["error"]["errors"][0];
    assert_eq!(e["key"], "version", "{err}");
    assert!(e["file"].as_str().unwrap().ends_with("push.toml"), "{err}");

    // Under a new version: a fresh model; the old one's snapshot is kept.
    write(&dir, "push.toml", &format!("version = 2\n{wider}"));
    let (status, report) = reload(&app).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(change_of(&report, "push"), "fresh");
    let (_, fresh) = app.get_json("/v1/policies/push").await;
    assert_eq!(fresh["version"], 2);
    assert_eq!(
        fresh["dimension"].as_u64().unwrap(),
        before["dimension"].as_u64().unwrap() + 1,
        "x is one wider"
    );
    assert_eq!(total_count(&app, "push").await, 0);
    let r = app
        .client
        .get(format!(
            "{}/v1/policies/push/snapshot?version=1",
            app.address
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let kept = nudge::model::codec::decode(&r.bytes().await.unwrap()).unwrap();
    let kept_counts: u64 = kept.arms.iter().map(|a| a.count).sum();
    assert_eq!(kept_counts, 8, "the kept snapshot is the old model");
    let (status, missing) = app.get_json("/v1/policies/push/snapshot?version=7").await;
    assert_eq!(status, 404, "{missing}");
    assert_eq!(missing["error"]["code"], "unknown_snapshot");
    let (status, bad) = app.get_json("/v1/policies/push/snapshot?version=x").await;
    assert_eq!(status, 400, "{bad}");
    assert_eq!(bad["error"]["field"], "version");

    // The new layout decides and learns; the old one is a 400.
    let (status, old) = app
        .post(
            "/v1/decide",
            &json!({"policy": "push", "context": {"x": [1.0, 0.0, 0.0]}}),
        )
        .await;
    assert_eq!(status, 400, "{old}");
    assert_eq!(old["error"]["field"], "context.x");
    decide_and_reward(&app, "push", 3, json!([1.0, 0.0, 0.0, 1.0])).await;
    assert_eq!(total_count(&app, "push").await, 3);

    // A new file serves; a removed one answers 410 to its callers.
    let shop = push(1.0, "").replace("id = \"push\"", "id = \"shop\"");
    write(&dir, "shop.toml", &shop);
    std::fs::remove_file(dir.join("windowed.toml")).unwrap();
    let (status, report) = reload(&app).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(change_of(&report, "shop"), "new");
    assert_eq!(change_of(&report, "windowed"), "removed");
    decide_and_reward(&app, "shop", 1, json!([1.0, 0.0, 0.0])).await;
    let (status, gone) = app
        .post(
            "/v1/decide",
            &json!({"policy": "windowed", "context": {"x": [1.0, 0.0]}}),
        )
        .await;
    assert_eq!(status, 410, "{gone}");
    assert_eq!(gone["error"]["code"], "policy_removed");
    assert_eq!(gone["error"]["field"], "policy");
    let (_, list) = app.get_json("/v1/policies").await;
    let ids: Vec<&str> = list["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["push", "ranker", "shop"]);
}

#[tokio::test]
async fn reload_reaches_every_replica_and_a_replica_with_other_files_says_so() {
    let a = spawn_app(Backend::Production).await;
    let b = spawn_replica(&a).await;
    let dir = a.settings.policies.clone();
    decide_and_reward(&a, "push", 4, json!([1.0, 0.5, -0.5])).await;
    eventually("b sees a's rewards", || async {
        total_count(&b, "push").await == 4
    })
    .await;

    // A kept model: b switches without a call of its own.
    write(&dir, "push.toml", &push(3.0, ""));
    let (status, report) = reload(&a).await;
    assert_eq!(status, 200, "{report}");
    let generation = report["generation"].as_u64().unwrap();
    eventually("b switches to the new alpha", || async {
        let (_, p) = b.get_json("/v1/policies/push").await;
        p["params"]["alpha"] == 3.0 && p["policy_generation"] == generation
    })
    .await;
    assert_eq!(total_count(&b, "push").await, 4, "b kept its model");

    // A fresh layout: both replicas start the new version from one prior,
    // and learn the same entries.
    let wider = push(3.0, "version = 2").replace("length = 3", "length = 2");
    write(&dir, "push.toml", &wider);
    let (status, report) = reload(&a).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(change_of(&report, "push"), "fresh");
    eventually("b switches to version 2", || async {
        let (_, p) = b.get_json("/v1/policies/push").await;
        p["version"] == 2
    })
    .await;
    decide_and_reward(&b, "push", 3, json!([1.0, -1.0])).await;
    eventually("a learns b's rewards in the new model", || async {
        total_count(&a, "push").await == 3
    })
    .await;
    let (_, pa) = a.get_json("/v1/policies/push").await;
    let (_, pb) = b.get_json("/v1/policies/push").await;
    assert_eq!(pa["stats"], pb["stats"]);
    assert_eq!(pa["model_version"], pb["model_version"]);

    // A replica whose files differ keeps what it serves and says so.
    let other = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), other.path().join(entry.file_name())).unwrap();
    }
    let mut settings = a.settings.clone();
    settings.policies = other.path().to_path_buf();
    let c = support::spawn_replica_with(&a, settings).await;
    write(
        &dir,
        "push.toml",
        &push(4.0, "version = 2").replace("length = 3", "length = 2"),
    );
    let (status, report) = reload(&a).await;
    assert_eq!(status, 200, "{report}");
    let generation = report["generation"].as_u64().unwrap();
    eventually("c reports the mismatch", || async {
        let (_, r) = c.get_json("/readyz").await;
        r["policy_mismatch"].is_string()
            && r["status"] == "degraded"
            && r["policy_generation"].as_u64() < Some(generation)
    })
    .await;
    let (_, pc) = c.get_json("/v1/policies/push").await;
    assert_eq!(pc["params"]["alpha"], 3.0, "c keeps serving its own files");
    let (_, m) = c.get("/metrics").await;
    assert!(
        m.contains(&format!("nudge_policy_reload_mismatch {generation}")),
        "{m}"
    );
    // Once c has the files, it follows.
    std::fs::copy(dir.join("push.toml"), other.path().join("push.toml")).unwrap();
    eventually("c switches once its files match", || async {
        let (_, r) = c.get_json("/readyz").await;
        r["policy_generation"] == generation && r["policy_mismatch"].is_null()
    })
    .await;
}

/// Two `nudge serve` processes on one Redis (a deployment of two replicas,
/// each with its own log): SIGHUP on one reloads both, and an invalid file
/// changes nothing.
#[tokio::test]
async fn sighup_on_one_process_reloads_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    // A large vocabulary checks that two processes digest one file alike
    // (a hash map's order differs between processes).
    let words: Vec<String> = (0..64).map(|i| format!("\"t{i}\"")).collect();
    let topic = format!(
        "\n[[features.context]]\nname = \"topic\"\ntype = \"categorical\"\nvocabulary = [{}]\ndefault = \"t0\"\n",
        words.join(", ")
    );
    let push = |alpha: f64, extra: &str| format!("{}{topic}", push(alpha, extra));
    write(&policies, "push.toml", &push(1.0, ""));
    let prefix = format!("nudge-test-{}", uuid::Uuid::now_v7().simple());
    let replica = |name: &str| -> BTreeMap<String, String> {
        [
            ("NUDGE_POLICIES", policies.display().to_string()),
            (
                "NUDGE_DATA_DIR",
                dir.path().join(name).display().to_string(),
            ),
            (
                "NUDGE_DATABASE_URL",
                format!(
                    "sqlite://{}",
                    dir.path().join(format!("{name}.db")).display()
                ),
            ),
            ("NUDGE_REDIS_URL", support::REDIS.to_string()),
            ("NUDGE_REDIS_PREFIX", prefix.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    };
    let a = support::servers::NudgeProcess::spawn(&replica("a"), dir.path()).await;
    let b = support::servers::NudgeProcess::spawn(&replica("b"), dir.path()).await;
    let client = reqwest::Client::new();
    let alpha = |n: &support::servers::NudgeProcess| {
        let url = format!("{}/v1/policies/push", n.address);
        let client = client.clone();
        let stderr = n.stderr();
        async move {
            let r = client.get(url).send().await.unwrap();
            let status = r.status();
            let text = r.text().await.unwrap();
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{status}: {e}: {text:?}\n{stderr}"));
            v["params"]["alpha"].as_f64().unwrap()
        }
    };
    assert_eq!(alpha(&a).await, 1.0);
    assert_eq!(alpha(&b).await, 1.0);
    write(&policies, "push.toml", &push(0.25, ""));
    a.signal(libc::SIGHUP);
    eventually("SIGHUP reloads a", || async { alpha(&a).await == 0.25 }).await;
    eventually("and b follows", || async { alpha(&b).await == 0.25 }).await;
    let ready: Value = client
        .get(format!("{}/readyz", b.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(ready["policy_mismatch"].is_null(), "{ready}");
    // An invalid file on SIGHUP changes nothing, and the process lives on.
    write(&policies, "push.toml", "id = \"push\"\n");
    a.signal(libc::SIGHUP);
    eventually("the refusal is logged", || async {
        a.stderr().contains("reload refused")
    })
    .await;
    assert_eq!(alpha(&a).await, 0.25);
    assert_eq!(alpha(&b).await, 0.25);
}

#[tokio::test]
async fn logging_only_decides_with_a_fixed_model_and_still_learns() {
    let app = spawn_app(Backend::Embedded).await;
    let dir = app.settings.policies.clone();
    write(&dir, "push.toml", &push(1.0, "learning = \"logging_only\""));
    let (status, report) = reload(&app).await;
    assert_eq!(status, 200, "{report}");
    let (_, p) = app.get_json("/v1/policies/push").await;
    assert_eq!(p["learning"], "logging_only");
    let fixed = p["decision_model_version"].as_u64().unwrap();
    let x = json!([1.0, 0.5, -0.5]);
    let mut seen = Vec::new();
    for i in 0..8 {
        let (status, d) = app
            .post(
                "/v1/decide",
                &json!({"policy": "push", "event_id": format!("lo-{i}"), "context": {"x": x}}),
            )
            .await;
        assert_eq!(status, 200, "{d}");
        seen.push((d["model_version"].as_u64().unwrap(), d["ranking"].clone()));
        let (status, r) = app
            .post(
                "/v1/reward",
                &json!({"event_id": format!("lo-{i}"), "reward": 1.0}),
            )
            .await;
        assert_eq!(status, 202, "{r}");
    }
    // Every decision came from the fixed model: one version, and the same
    // context got the same distribution each time.
    assert!(seen.iter().all(|(v, _)| *v == fixed), "{seen:?}");
    let probs = |r: &Value| {
        let mut v: Vec<(String, f64)> = r
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["id"].as_str().unwrap().to_string(),
                    e["probability"].as_f64().unwrap(),
                )
            })
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    };
    assert!(seen.iter().all(|(_, r)| probs(r) == probs(&seen[0].1)));
    // ... while the rewards were learned into the shared model.
    assert_eq!(total_count(&app, "push").await, 8);
    let (_, p) = app.get_json("/v1/policies/push").await;
    assert!(p["model_version"].as_u64().unwrap() > fixed, "{p}");
    assert_eq!(p["decision_model_version"].as_u64().unwrap(), fixed);

    // Switching to online (same layout) decides with what was learned.
    write(&dir, "push.toml", &push(1.0, ""));
    let (status, report) = reload(&app).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(change_of(&report, "push"), "kept");
    let (_, d) = app
        .post(
            "/v1/decide",
            &json!({"policy": "push", "context": {"x": x}}),
        )
        .await;
    assert_eq!(d["model_version"], p["model_version"], "{d}");
}

#[tokio::test]
async fn apprentice_follows_the_caller_and_reports_agreement() {
    let app = spawn_app(Backend::Embedded).await;
    let dir = app.settings.policies.clone();
    let text = push(1.0, "learning = \"apprentice\"");
    write(&dir, "push.toml", &text);
    let (status, report) = reload(&app).await;
    assert_eq!(status, 200, "{report}");

    let decide = |body: Value| {
        let app = &app;
        async move { app.post("/v1/decide", &body).await }
    };
    let x = json!([0.3, -0.2, 0.9]);
    // What the request must carry.
    let (status, e) = decide(json!({"policy": "push", "context": {"x": x}})).await;
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (400, Some("default_action")),
        "{e}"
    );
    let (status, e) =
        decide(json!({"policy": "push", "context": {"x": x}, "default_action": "z"})).await;
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (400, Some("default_action")),
        "{e}"
    );
    let (status, e) =
        decide(json!({"policy": "push", "context": {"x": x}, "default_action": "a", "k": 2})).await;
    assert_eq!(
        (status, e["error"]["field"].as_str()),
        (400, Some("k")),
        "{e}"
    );
    let (status, e) = decide(json!({
        "policy": "push", "context": {"x": x}, "default_action": "a", "excluded": ["a"]
    }))
    .await;
    assert_eq!(status, 422, "{e}");
    assert_eq!(e["error"]["code"], "default_action_ineligible");

    // The policy's own draw, computed offline with the same code and the
    // same (fresh) model: what the agreement must count.
    let spec = nudge::policy::parse_policy(&text, Path::new("push.toml")).unwrap();
    let policy = nudge::policy::Policy::new(spec);
    let model = policy.new_model();
    let arms = ["a", "b", "c"];
    let (mut agreed, mut probability) = (0u64, 0.0);
    let n = 30;
    for i in 0..n {
        let event = format!("ap-{i}");
        let default = arms[i % 3];
        let context: nudge::features::Features = serde_json::from_value(json!({"x": x})).unwrap();
        let own = policy
            .decide(
                &model,
                &nudge::policy::DecideRequest::disjoint(&event, &context),
            )
            .unwrap();
        let pos = own
            .candidates
            .iter()
            .position(|&c| arms[c] == default)
            .unwrap();
        agreed += u64::from(own.chosen() == pos);
        probability += own.probabilities[pos];
        let (status, d) = decide(json!({
            "policy": "push", "event_id": event, "context": {"x": x}, "default_action": default
        }))
        .await;
        assert_eq!(status, 200, "{d}");
        assert_eq!(d["action"], default);
        assert_eq!(d["probability"], 1.0);
        for r in d["ranking"].as_array().unwrap() {
            let expected = if r["id"] == default { 1.0 } else { 0.0 };
            assert_eq!(r["probability"], expected, "{d}");
        }
    }
    // Rewards of the caller's choices are learned.
    for i in 0..10 {
        let (status, r) = app
            .post(
                "/v1/reward",
                &json!({"event_id": format!("ap-{i}"), "reward": if i % 2 == 0 { 1.0 } else { 0.0 }}),
            )
            .await;
        assert_eq!(status, 202, "{r}");
    }
    assert_eq!(total_count(&app, "push").await, 10);
    let (_, p) = app.get_json("/v1/policies/push").await;
    let a = &p["apprentice"];
    assert_eq!(a["decisions"], n as u64, "{p}");
    assert_eq!(a["agreed"], agreed, "{p}");
    let mean = a["mean_probability_of_default"].as_f64().unwrap();
    assert!((mean - probability / n as f64).abs() < 1e-6, "{p}");
    assert_eq!(a["default_value"]["rewards"], 10);
    assert_eq!(a["default_value"]["mean"], 0.5);
    // The log says what happened: the caller's choice, with probability 1.
    let logged = app
        .wait_count(
            "SELECT COUNT(*) FROM decisions WHERE policy = 'push' AND probability = 1.0",
            n as i64,
        )
        .await;
    assert_eq!(logged, n as i64);
}

#[tokio::test]
async fn challengers_score_every_decision_and_are_estimated_exactly() {
    let app = spawn_app(Backend::Production).await;
    let dir = app.settings.policies.clone();
    let text = format!(
        "{}\n{}",
        push(1.0, "promote_after = 50"),
        r#"
[[challengers]]
id = "greedy"
algorithm = "linucb"
params = { alpha = 0.0, epsilon = 0.02 }

[[challengers]]
id = "ts"
algorithm = "lin_ts"
params = { v = 0.3 }

[[challengers]]
id = "exploit"
algorithm = "epsilon_greedy"
params = { epsilon = 0.0 }
"#
    );
    // A challenger over other features is refused, naming the key.
    write(
        &dir,
        "push.toml",
        &format!("{text}\n[[challengers]]\nid = \"wide\"\nfeatures = {{ bias = false }}\n"),
    );
    let (status, err) = reload(&app).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(
        err["error"]["errors"][0]["key"], "challengers[3].features",
        "{err}"
    );
    write(&dir, "push.toml", &text);
    let (status, report) = reload(&app).await;
    assert_eq!(status, 200, "{report}");

    // Traffic whose reward depends on the action and the context, some of
    // it with an arm excluded.
    let n = 120;
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    };
    for i in 0..n {
        let x = [next(), next(), next()];
        let event = format!("sh-{i:03}");
        let mut body = json!({"policy": "push", "event_id": event, "context": {"x": x}});
        if i % 4 == 0 {
            body["excluded"] = json!(["c"]);
        }
        let (status, d) = app.post("/v1/decide", &body).await;
        assert_eq!(status, 200, "{d}");
        let reward = match d["action"].as_str().unwrap() {
            "a" => f64::from(x[0] > 0.0),
            "b" => f64::from(x[1] > 0.3),
            _ => 0.0,
        };
        let (status, r) = app
            .post("/v1/reward", &json!({"event_id": event, "reward": reward}))
            .await;
        assert_eq!(status, 202, "{r}");
    }

    // The log holds every challenger's distribution over the eligible set.
    let logged = app
        .wait_count(
            "SELECT COUNT(*) FROM decisions WHERE challengers IS NOT NULL",
            n as i64,
        )
        .await;
    assert_eq!(logged, n as i64);
    let pool = sqlx::PgPool::connect(&app.settings.database_url)
        .await
        .unwrap();
    let rows: Vec<(String, String, f64, sqlx::types::Json<Value>, f64)> = sqlx::query_as(
        "SELECT d.event_id, d.action, d.probability, d.challengers, r.reward \
         FROM decisions d JOIN rewards r ON r.event_id = d.event_id ORDER BY d.event_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), n);
    // The estimates, recomputed from the log alone.
    let mut sums = BTreeMap::<String, [f64; 3]>::new();
    let mut live = 0.0;
    for (event, action, p, challengers, r) in &rows {
        live += r;
        let excluded = event[3..].parse::<usize>().unwrap() % 4 == 0;
        for (id, dist) in challengers.0.as_object().unwrap() {
            let dist = dist.as_object().unwrap();
            assert_eq!(dist.contains_key("c"), !excluded, "{event}: {dist:?}");
            let total: f64 = dist.values().map(|v| v.as_f64().unwrap()).sum();
            assert!((total - 1.0).abs() < 1e-12, "{event}: {dist:?}");
            let w = dist[action.as_str()].as_f64().unwrap() / p;
            let s = sums.entry(id.clone()).or_default();
            s[0] += w * r;
            s[1] += w;
            s[2] += w * w;
        }
    }
    pool.close().await;
    eventually("every reward is folded into the estimates", || async {
        let d = app.get_json("/v1/policies/push").await.1;
        d["challengers"][0]["n"] == n as u64
    })
    .await;
    let described = app.get_json("/v1/policies/push").await.1;
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9 * b.abs().max(1.0);
    let live_value = described["live_estimate"]["value"].as_f64().unwrap();
    assert!(close(live_value, live / n as f64), "{described}");
    let listed = described["challengers"].as_array().unwrap();
    assert_eq!(listed.len(), 3);
    // Progressive validation: the model's greedy choice, estimated on the
    // same entries, is exactly the declared pure-exploitation challenger.
    let greedy = &described["greedy_estimate"];
    assert_eq!(greedy["n"], n as u64, "{described}");
    for key in ["snipw", "ess", "ipw"] {
        assert_eq!(greedy[key], listed[2][key], "{key}: {described}");
    }
    for c in listed {
        let s = sums[c["id"].as_str().unwrap()];
        let ipw = c["ipw"]["value"].as_f64().unwrap();
        assert!(close(ipw, s[0] / n as f64), "{c} vs {s:?}");
        assert!(close(c["snipw"].as_f64().unwrap(), s[0] / s[1]), "{c}");
        assert!(close(c["ess"].as_f64().unwrap(), s[1] * s[1] / s[2]), "{c}");
        let [lo, hi] = [0, 1].map(|k| c["ipw"]["ci95"][k].as_f64().unwrap());
        assert!(lo < ipw && ipw < hi, "{c}");
        let live_ci = &described["live_estimate"]["ci95"];
        let expected = n as u64 >= 50 && lo > live_ci[1].as_f64().unwrap();
        assert_eq!(c["promotable"], expected, "{c}");
    }
    assert_eq!(listed[0]["algorithm"], "linucb");
    assert_eq!(listed[1]["algorithm"], "lin_ts");

    // Promotion: the challenger goes live under a new version, keeping the
    // model; the old definition becomes a challenger.
    let (status, e) = app
        .post("/v1/policies/push/promote", &json!({"challenger": "nope"}))
        .await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (404, Some("unknown_challenger")),
        "{e}"
    );
    let (status, done) = app
        .post("/v1/policies/push/promote", &json!({"challenger": "ts"}))
        .await;
    assert_eq!(status, 200, "{done}");
    assert_eq!(done["version"], 2);
    assert_eq!(done["previous"], "push-v1");
    assert_eq!(change_of(&done["reload"], "push"), "kept");
    let (_, p) = app.get_json("/v1/policies/push").await;
    assert_eq!(p["algorithm"], "lin_ts");
    assert_eq!(p["version"], 2);
    assert_eq!(p["stats"], described["stats"], "the learned model is kept");
    let ids: Vec<&str> = p["challengers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["greedy", "push-v1", "exploit"]);
    let file = std::fs::read_to_string(dir.join("push.toml")).unwrap();
    assert!(file.contains("id = \"push-v1\""), "{file}");
    let (status, d) = app
        .post(
            "/v1/decide",
            &json!({"policy": "push", "context": {"x": [0.1, 0.2, 0.3]}}),
        )
        .await;
    assert_eq!(status, 200, "{d}");
    assert_eq!(d["policy_version"], 2);
}

#[tokio::test]
async fn learning_alerts_show_in_readyz_and_metrics_without_failing_readiness() {
    let app = spawn_app(Backend::Embedded).await;
    let dir = app.settings.policies.clone();
    // A propensity floor no distribution over three arms can meet.
    write(
        &dir,
        "push.toml",
        &format!(
            "{}\n[alerts]\nmin_probability = 0.5\nmin_events = 5\n",
            push(1.0, "")
        ),
    );
    let (status, report) = reload(&app).await;
    assert_eq!(status, 200, "{report}");
    let (_, ready) = app.get_json("/readyz").await;
    assert_eq!(ready["alerts"], json!([]), "{ready}");
    decide_and_reward(&app, "push", 6, json!([1.0, 0.5, -0.5])).await;
    let (status, ready) = app.get_json("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(
        ready["status"], "ready",
        "an alert is not unreadiness: {ready}"
    );
    let alerts = ready["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{ready}");
    assert_eq!(alerts[0]["policy"], "push");
    assert_eq!(alerts[0]["alert"], "exploration_collapse");
    let (_, m) = app.get("/metrics").await;
    assert!(
        m.contains("nudge_learning_alert{alert=\"exploration_collapse\",policy=\"push\"} 1"),
        "{m}"
    );
    assert!(m.contains("nudge_learning_alert{alert=\"rewards_stopped\",policy=\"push\"} 0"));
    let (_, p) = app.get_json("/v1/policies/push").await;
    assert_eq!(p["alerts"][0]["alert"], "exploration_collapse");
    // A bad threshold is refused like any invalid file.
    write(
        &dir,
        "push.toml",
        &format!("{}\n[alerts]\nmin_entropy = 2.0\n", push(1.0, "")),
    );
    let (status, err) = reload(&app).await;
    assert_eq!(status, 422, "{err}");
    assert_eq!(err["error"]["errors"][0]["key"], "alerts.min_entropy");
}

#[tokio::test]
async fn a_declared_rule_promotes_a_better_challenger_by_itself() {
    let app = spawn_app(Backend::Embedded).await;
    let dir = app.settings.policies.clone();
    // Live: uniform exploration (epsilon 1); the challenger exploits.
    let text = format!(
        "{}\n{}",
        push(0.0, "promote = \"auto\"\npromote_after = 60")
            .replace("epsilon = 0.1", "epsilon = 1.0"),
        "[[challengers]]\nid = \"exploit\"\nalgorithm = \"epsilon_greedy\"\nparams = { epsilon = 0.0 }\n"
    );
    write(&dir, "push.toml", &text);
    let (status, report) = reload(&app).await;
    assert_eq!(status, 200, "{report}");
    for i in 0..150 {
        let event = format!("auto-{i}");
        let (status, d) = app
            .post(
                "/v1/decide",
                &json!({"policy": "push", "event_id": event, "context": {"x": [1.0, 0.0, 0.0]}}),
            )
            .await;
        assert_eq!(status, 200, "{d}");
        if d["policy_version"] == 2 {
            break;
        }
        let reward = f64::from(d["action"] == "a");
        app.post("/v1/reward", &json!({"event_id": event, "reward": reward}))
            .await;
    }
    eventually("the rule promotes the challenger", || async {
        let (_, p) = app.get_json("/v1/policies/push").await;
        p["version"] == 2
    })
    .await;
    let (_, p) = app.get_json("/v1/policies/push").await;
    assert_eq!(p["algorithm"], "epsilon_greedy", "{p}");
    assert_eq!(p["challengers"][0]["id"], "push-v1", "{p}");
    let file = std::fs::read_to_string(dir.join("push.toml")).unwrap();
    assert!(file.contains("version = 2"), "{file}");
}
