//! Access control, rate limits, input limits and injection attempts, end to
//! end against real services (the injection tests on Redis and PostgreSQL).

mod support;

use serde_json::{Value, json};
use sqlx::Row;
use support::{Backend, TestApp, spawn_app, spawn_app_with};

const DECIDE_KEY: &str = "decide-0123456789abcdef";
const READ_KEY: &str = "read-0123456789abcdef";
const ADMIN_KEY: &str = "admin-0123456789abcdef";
const OTHER_DECIDE_KEY: &str = "other-0123456789abcdef";

fn keys() -> String {
    format!(
        "caller:decide:{DECIDE_KEY},viewer:read:{READ_KEY},ops:admin:{ADMIN_KEY},slow:decide@0.02/2:{OTHER_DECIDE_KEY}"
    )
}

fn push(event: &str) -> Value {
    json!({"policy": "push", "event_id": event, "context": {"x": [0.5, -1.0, 2.0], "plan": "pro"}})
}

/// Every guarded route, with a request that succeeds given the right key
/// (event `sec-1` decided first).
fn routes() -> Vec<(&'static str, &'static str, Option<Value>)> {
    vec![
        ("POST", "/v1/decide", Some(push("sec-2"))),
        (
            "POST",
            "/v1/reward",
            Some(json!({"event_id": "sec-1", "reward": 1.0})),
        ),
        ("POST", "/v1/events/sec-1/activate", Some(json!({}))),
        ("GET", "/v1/policies", None),
        ("GET", "/v1/policies/push", None),
        ("GET", "/v1/policies/push/snapshot", None),
        ("POST", "/v1/policies/windowed/reset", None),
        ("GET", "/metrics", None),
        ("GET", "/openapi.json", None),
    ]
}

/// How a request carries its key.
#[derive(Clone, Copy)]
enum Key<'a> {
    None,
    Bearer(&'a str),
    Header(&'a str),
}

/// Sends `method path` with `body` and `key`: status, headers, JSON body.
async fn send(
    app: &TestApp,
    method: &str,
    path: &str,
    body: Option<&Value>,
    key: Key<'_>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let url = format!("{}{path}", app.address);
    let mut request = match method {
        "GET" => app.client.get(url),
        _ => app.client.post(url),
    };
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).unwrap());
    }
    request = match key {
        Key::None => request,
        Key::Bearer(k) => request.bearer_auth(k),
        Key::Header(k) => request.header("x-api-key", k),
    };
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.bytes().await.unwrap();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn keyed_app() -> TestApp {
    spawn_app_with(Backend::Embedded, |s| s.api_keys = Some(keys())).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_key_every_route_but_the_health_checks_answers_401() {
    let mut app = keyed_app().await;
    for (method, path, body) in routes() {
        let (status, headers, e) = send(&app, method, path, body.as_ref(), Key::None).await;
        assert_eq!(status, 401, "{method} {path}: {e}");
        assert_eq!(e["error"]["code"], "unauthorized", "{path}");
        let challenge = headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer"), "{path}: {challenge}");
    }
    for path in ["/healthz", "/readyz"] {
        let (status, _, body) = send(&app, "GET", path, None, Key::None).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    // Nothing reached the handlers: no decision was made.
    assert_eq!(app.query_count("SELECT count(*) FROM decisions").await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_key_is_401_however_it_is_sent() {
    let mut app = keyed_app().await;
    let wrong = [
        Key::Bearer("not-a-key-0123456789"),
        Key::Header("not-a-key-0123456789"),
        // A prefix or an extension of a real key is just as unknown.
        Key::Bearer(&DECIDE_KEY[..DECIDE_KEY.len() - 1]),
        Key::Bearer("decide-0123456789abcdefX"),
        Key::Bearer(""),
    ];
    for key in wrong {
        let (status, headers, e) = send(&app, "POST", "/v1/decide", Some(&push("u-1")), key).await;
        assert_eq!(status, 401, "{e}");
        assert_eq!(e["error"]["code"], "unauthorized");
        assert!(headers.contains_key("www-authenticate"));
    }
    // A key in the wrong scheme is not a bearer key.
    let basic = app
        .client
        .post(format!("{}/v1/decide", app.address))
        .header("authorization", format!("Basic {DECIDE_KEY}"))
        .json(&push("u-2"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);
    let metrics = app
        .client
        .get(format!("{}/metrics", app.address))
        .bearer_auth(READ_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("nudge_auth_rejections_total{code=\"unauthorized\"} 6"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_reaches_its_own_routes_and_gets_403_elsewhere() {
    let mut app = keyed_app().await;
    let (status, _, d) = send(
        &app,
        "POST",
        "/v1/decide",
        Some(&json!({"policy": "push", "event_id": "sec-1", "defer": true, "context": {"x": [0.5, -1.0, 2.0]}})),
        Key::Bearer(DECIDE_KEY),
    )
    .await;
    assert_eq!(status, 200, "{d}");
    // Activation first, so the reward of the deferred decision is accepted.
    let mut routes = routes();
    routes.swap(1, 2);
    for (method, path, body) in routes {
        let need = if path.ends_with("/reset") {
            "admin"
        } else if method == "POST" {
            "decide"
        } else {
            "read"
        };
        for (role, key) in [("decide", DECIDE_KEY), ("read", READ_KEY)] {
            let (status, _, e) = send(&app, method, path, body.as_ref(), Key::Bearer(key)).await;
            if role == need {
                assert!(
                    (200..300).contains(&status),
                    "{role} on {method} {path}: {status} {e}"
                );
            } else {
                assert_eq!(status, 403, "{role} on {method} {path}: {e}");
                assert_eq!(e["error"]["code"], "forbidden");
                let message = e["error"]["message"].as_str().unwrap();
                assert!(message.contains(need), "{message}");
                assert!(!message.contains(key), "{message} quotes the key");
            }
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_key_may_call_every_route_by_either_header() {
    let mut app = keyed_app().await;
    let (status, _, _) = send(
        &app,
        "POST",
        "/v1/decide",
        Some(&json!({"policy": "push", "event_id": "sec-1", "defer": true, "context": {"x": [0.5, -1.0, 2.0]}})),
        Key::Header(ADMIN_KEY),
    )
    .await;
    assert_eq!(status, 200);
    let mut routes = routes();
    routes.swap(1, 2);
    for (i, (method, path, body)) in routes.into_iter().enumerate() {
        let key = if i % 2 == 0 {
            Key::Bearer(ADMIN_KEY)
        } else {
            Key::Header(ADMIN_KEY)
        };
        let (status, _, e) = send(&app, method, path, body.as_ref(), key).await;
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {e}"
        );
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_alone_guards_only_the_admin_routes() {
    let mut app = spawn_app_with(Backend::Embedded, |s| {
        s.admin_token = Some("legacy-token".into())
    })
    .await;
    let (status, _, _) = send(&app, "POST", "/v1/decide", Some(&push("l-1")), Key::None).await;
    assert_eq!(status, 200);
    let (status, _, _) = send(&app, "GET", "/v1/policies/push", None, Key::None).await;
    assert_eq!(status, 200);
    let reset = "/v1/policies/push/reset";
    let (status, _, e) = send(&app, "POST", reset, None, Key::None).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _, _) = send(&app, "POST", reset, None, Key::Bearer("guess")).await;
    assert_eq!(status, 401);
    let (status, _, e) = send(&app, "POST", reset, None, Key::Bearer("legacy-token")).await;
    assert_eq!(status, 200, "{e}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_burst_gets_429_with_retry_after_and_other_keys_do_not() {
    let mut app = keyed_app().await;
    // `slow` has a burst of 2 and one more request every 50 s.
    for i in 0..2 {
        let (status, _, e) = send(
            &app,
            "POST",
            "/v1/decide",
            Some(&push(&format!("rl-{i}"))),
            Key::Bearer(OTHER_DECIDE_KEY),
        )
        .await;
        assert_eq!(status, 200, "{e}");
    }
    let (status, headers, e) = send(
        &app,
        "POST",
        "/v1/decide",
        Some(&push("rl-2")),
        Key::Bearer(OTHER_DECIDE_KEY),
    )
    .await;
    assert_eq!(status, 429, "{e}");
    assert_eq!(e["error"]["code"], "rate_limited");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((40..=50).contains(&retry), "Retry-After {retry}");
    // The refused request was not decided.
    let (status, _, _) = send(
        &app,
        "POST",
        "/v1/reward",
        Some(&json!({"event_id": "rl-2", "reward": 1.0})),
        Key::Bearer(DECIDE_KEY),
    )
    .await;
    assert_eq!(status, 404);
    // Another key (no limit configured) is unaffected.
    for i in 0..20 {
        let (status, _, _) = send(
            &app,
            "POST",
            "/v1/decide",
            Some(&push(&format!("ok-{i}"))),
            Key::Bearer(DECIDE_KEY),
        )
        .await;
        assert_eq!(status, 200);
    }
    let r = app
        .client
        .get(format!("{}/metrics", app.address))
        .bearer_auth(READ_KEY)
        .send()
        .await
        .unwrap();
    let metrics = r.text().await.unwrap();
    assert!(
        metrics.contains("nudge_rate_limited_total{key=\"slow\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_rate_applies_to_each_key_separately() {
    let mut app = spawn_app_with(Backend::Embedded, |s| {
        s.api_keys = Some(keys());
        s.rate_limit = Some(0.01);
        s.rate_burst = Some(3);
    })
    .await;
    for key in [READ_KEY, ADMIN_KEY] {
        for i in 0..3 {
            let (status, _, e) = send(&app, "GET", "/v1/policies", None, Key::Bearer(key)).await;
            assert_eq!(status, 200, "{key} #{i}: {e}");
        }
        let (status, headers, _) = send(&app, "GET", "/v1/policies", None, Key::Bearer(key)).await;
        assert_eq!(status, 429);
        assert!(
            headers["retry-after"]
                .to_str()
                .unwrap()
                .parse::<u64>()
                .unwrap()
                >= 1
        );
    }
    // Health checks are never limited.
    for _ in 0..10 {
        assert_eq!(app.get("/healthz").await.0, 200);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_a_configured_rate_limits_all_requests_together() {
    let mut app = spawn_app_with(Backend::Embedded, |s| {
        s.rate_limit = Some(0.01);
        s.rate_burst = Some(2);
    })
    .await;
    assert_eq!(app.post("/v1/decide", &push("g-1")).await.0, 200);
    assert_eq!(app.get("/v1/policies").await.0, 200);
    let (status, e) = app.post("/v1/decide", &push("g-2")).await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (429, Some("rate_limited"))
    );
    assert_eq!(app.get("/readyz").await.0, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_keys_every_route_is_open() {
    let mut app = spawn_app(Backend::Embedded).await;
    assert_eq!(app.post("/v1/decide", &push("o-1")).await.0, 200);
    assert_eq!(app.get("/metrics").await.0, 200);
    let (status, _, _) = send(&app, "POST", "/v1/policies/push/reset", None, Key::None).await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_names_the_role_of_each_guarded_route() {
    let mut app = spawn_app(Backend::Embedded).await;
    let (_, doc) = app.get_json("/openapi.json").await;
    assert_eq!(
        doc["components"]["securitySchemes"]["api_key"]["scheme"],
        "bearer"
    );
    let security = |path: &str, method: &str| doc["paths"][path][method]["security"].clone();
    assert_eq!(
        security("/v1/decide", "post"),
        json!([{"api_key": ["decide"]}])
    );
    assert_eq!(
        security("/v1/policies/{id}/reset", "post"),
        json!([{"api_key": ["admin"]}])
    );
    assert_eq!(
        security("/v1/policies", "get"),
        json!([{"api_key": ["read"]}])
    );
    assert_eq!(security("/healthz", "get"), Value::Null);
    assert!(doc["paths"]["/v1/decide"]["post"]["responses"]["429"].is_object());
    app.stop().await;
}

// ---- input limits ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_features_are_refused_naming_the_field() {
    let mut app = spawn_app(Backend::Embedded).await;
    let huge: Vec<f64> = vec![0.5; 100_000];
    let many: serde_json::Map<String, Value> =
        (0..300).map(|i| (format!("f{i}"), json!(1.0))).collect();
    let mut long_name = serde_json::Map::new();
    long_name.insert("x".into(), json!([0, 0, 0]));
    long_name.insert("n".repeat(200), json!(1.0));
    let cases = [
        (
            json!({"policy": "push", "context": {"x": huge}}),
            "context.x",
        ),
        (json!({"policy": "push", "context": many}), "context"),
        (json!({"policy": "push", "context": long_name}), "context"),
        (
            json!({"policy": "push", "context": {"x": [0, 0, 0], "plan": "p".repeat(2_000)}}),
            "context.plan",
        ),
        (
            json!({"policy": "ranker", "context": {"u": [0, 0]}, "actions": [{"id": "a", "features": {"i": vec![1.0; 5_000]}}]}),
            "actions[0].features.i",
        ),
    ];
    for (body, field) in cases {
        let (status, e) = app.post("/v1/decide", &body).await;
        assert_eq!(status, 400, "{field}: {e}");
        assert_eq!(e["error"]["code"], "invalid_field", "{e}");
        assert_eq!(e["error"]["field"], field, "{e}");
    }
    app.stop().await;
}

// ---- injection ----

/// Ids that would break out of a SQL string, a Redis key or a hash tag, or
/// smuggle Redis protocol, each carrying `mark` so any trace of it can be
/// found afterwards. The Redis protocol one would delete `canary`.
fn hostile_ids(mark: &str, canary: &str) -> Vec<String> {
    let tails = [
        "'".to_string(),
        "\"".into(),
        "x'; DROP TABLE decisions; --".into(),
        "' OR '1'='1".into(),
        // `-` is a valid id character: the SQL comment needs its space.
        "-- comment".into(),
        ";".into(),
        format!("\r\n*2\r\n$3\r\nDEL\r\n${}\r\n{canary}\r\n", canary.len()),
        "{push}".into(),
        "}{".into(),
        "%".into(),
        "%00".into(),
        "\0".into(),
        "événement-ü-∑-🦀".into(),
        "a b".into(),
        "*".into(),
        "x".repeat(200),
    ];
    tails.iter().map(|t| format!("{mark}{t}")).collect()
}

/// Percent-encodes every byte but unreserved ones, for URL paths.
fn encode_path(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Every key under the app's prefix.
fn prefix_keys(conn: &mut redis::Connection, prefix: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(conn)
        .unwrap();
    keys.sort();
    keys
}

/// Keys anywhere in Redis that contain `mark` (SCAN over the whole keyspace).
fn keys_containing(conn: &mut redis::Connection, mark: &str) -> Vec<Vec<u8>> {
    let iter: redis::Iter<Vec<u8>> = redis::cmd("SCAN")
        .cursor_arg(0)
        .arg("MATCH")
        .arg(format!("*{mark}*"))
        .arg("COUNT")
        .arg(1000)
        .clone()
        .iter(conn)
        .unwrap();
    iter.map(|k| k.unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_policy_and_event_ids_get_clean_4xx_and_touch_neither_redis_nor_postgres() {
    let mut app = spawn_app(Backend::Production).await;
    let prefix = app.settings.redis_prefix.clone();
    let mark = format!("mk{}", &prefix[prefix.len() - 12..]);
    let canary = format!("{prefix}:canary");
    let client = redis::Client::open(support::REDIS).unwrap();
    let mut conn = client.get_connection().unwrap();
    let _: () = redis::cmd("SET")
        .arg(&canary)
        .arg("1")
        .query(&mut conn)
        .unwrap();

    // Legitimate traffic first, so every kind of key exists.
    assert_eq!(app.post("/v1/decide", &push("legit-1")).await.0, 200);
    let (status, _) = app
        .post("/v1/reward", &json!({"event_id": "legit-1", "reward": 1.0}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(app.wait_count("SELECT count(*) FROM decisions", 1).await, 1);
    let tables = "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')";
    let tables_before = app.query_count(tables).await;
    let keys_before = prefix_keys(&mut conn, &prefix);

    let ids = hostile_ids(&mark, &canary);
    let context = json!({"x": [0.5, -1.0, 2.0]});
    for id in &ids {
        let attempts: Vec<(&str, Value, &str)> = vec![
            (
                "/v1/decide",
                json!({"policy": "push", "event_id": id, "context": context}),
                "event_id",
            ),
            (
                "/v1/decide",
                json!({"policy": id, "event_id": "legit-2", "context": context}),
                "policy",
            ),
            (
                "/v1/reward",
                json!({"event_id": id, "reward": 1.0}),
                "event_id",
            ),
            (
                "/v1/reward",
                json!({"event_id": id, "reward": 1.0, "policy": "push"}),
                "event_id",
            ),
            (
                "/v1/reward",
                json!({"event_id": "legit-1", "reward": 1.0, "policy": id}),
                "policy",
            ),
        ];
        for (path, body, field) in attempts {
            let (status, e) = app.post(path, &body).await;
            assert!((400..500).contains(&status), "{path} {id:?}: {status} {e}");
            assert_eq!(e["error"]["field"], field, "{path} {id:?}: {e}");
        }
        let encoded = encode_path(id);
        let (status, e) = app
            .post_raw(&format!("/v1/events/{encoded}/activate"), vec![])
            .await;
        assert!((400..500).contains(&status), "activate {id:?}: {status}");
        // A path the router cannot match at all (e.g. an encoded `/`) is a
        // 404 without a field; one it matches names the parameter.
        if status != 404 || e["error"]["code"] != "not_found" {
            assert_eq!(e["error"]["field"], "event_id", "activate {id:?}: {e}");
        }
        for path in [
            format!("/v1/policies/{encoded}"),
            format!("/v1/policies/{encoded}/snapshot"),
        ] {
            let (status, e) = app.get_json(&path).await;
            assert!((400..500).contains(&status), "{path}: {status}");
            if e["error"]["code"] != "not_found" {
                assert_eq!(e["error"]["field"], "id", "{path}: {e}");
            }
        }
        let (status, _) = app
            .post_raw(&format!("/v1/policies/{encoded}/reset"), vec![])
            .await;
        assert!((400..500).contains(&status), "reset {id:?}: {status}");
    }

    // Action ids are free text: hostile ones are decided, stored and logged
    // verbatim, as data.
    let actions: Vec<Value> = ids
        .iter()
        .filter(|id| !id.contains('\0') && !id.contains('\r') && id.len() <= 256)
        .map(|id| json!({"id": id, "features": {"i": [0.1, 0.2]}}))
        .collect();
    let (status, d) = app
        .post(
            "/v1/decide",
            &json!({"policy": "ranker", "event_id": "legit-3", "context": {"u": [0.3, 0.9]}, "actions": actions, "k": 3}),
        )
        .await;
    assert_eq!(status, 200, "{d}");
    let chosen = d["action"].as_str().unwrap().to_string();
    assert!(chosen.starts_with(&mark));
    let (status, r) = app
        .post(
            "/v1/reward",
            &json!({"event_id": "legit-3", "reward": 1.0, "action": d["ranking"][1]["id"]}),
        )
        .await;
    assert_eq!(status, 202, "{r}");

    // The decision log still works and holds the hostile action verbatim.
    assert_eq!(app.post("/v1/decide", &push("legit-4")).await.0, 200);
    assert_eq!(app.wait_count("SELECT count(*) FROM decisions", 3).await, 3);
    let pool = sqlx::PgPool::connect(&app.settings.database_url)
        .await
        .unwrap();
    let logged: String = sqlx::query("SELECT action FROM decisions WHERE event_id = $1")
        .bind("legit-3")
        .fetch_one(&pool)
        .await
        .unwrap()
        .get(0);
    assert_eq!(logged, chosen);
    pool.close().await;
    assert_eq!(app.query_count(tables).await, tables_before);

    // Redis: the canary survived, no key anywhere carries the mark, and
    // the test's own prefix holds only the keys of the legitimate events.
    let canary_left: bool = redis::cmd("EXISTS").arg(&canary).query(&mut conn).unwrap();
    assert!(canary_left, "a smuggled DEL ran");
    assert_eq!(keys_containing(&mut conn, &mark), Vec::<Vec<u8>>::new());
    let keys_after = prefix_keys(&mut conn, &prefix);
    let new: Vec<&String> = keys_after
        .iter()
        .filter(|k| !keys_before.contains(k))
        .collect();
    for key in &new {
        // The events' own keys, and their policies' keys (per shard:
        // due lists, counts, learned streams; per policy: the snapshot).
        let legit = [
            "legit-3",
            "legit-4",
            "{ranker}:",
            ":ranker:",
            ":push:",
            ":snap",
        ]
        .iter()
        .any(|ok| key.contains(ok));
        assert!(legit, "unexpected key {key:?}; new keys: {new:?}");
    }
    let _: () = redis::cmd("DEL").arg(&canary).query(&mut conn).unwrap();
    app.stop().await;
}
