//! Property tests over real HTTP: valid requests to every route, then
//! mutated ones (fields deleted, types swapped, `NaN` / `1e999` / `-0.0`
//! written into the JSON, truncated or non-UTF-8 bodies, control and unicode
//! characters in ids, wrong methods and content types, rewards out of range
//! or for another policy's events). Whatever arrives, the answer is a 2xx or
//! a 4xx with the JSON error body (naming the field where one is at fault),
//! never a 5xx; the server stays up; and the model statistics change only
//! through the rewards the service accepted.
//!
//! One app serves every case of a test (spawning one per case is far too
//! slow); proptest draws the cases from a fixed ChaCha seed, so every run
//! sends the same requests.

mod support;

use nudge::model::codec;
use nudge::model::{ArmStats, ModelState};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestCaseError, TestRunner};
use serde_json::{Value, json};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};
use support::{Backend, TestApp, spawn_app_with};

const ADMIN_TOKEN: &str = "fuzz-admin-token";

/// Error codes that are always about one request field, so the body must
/// name it.
const FIELD_CODES: &[&str] = &[
    "invalid_field",
    "invalid_feature",
    "invalid_event_id",
    "too_many_candidates",
    "reward_out_of_range",
    "unknown_signal",
    "duplicate_action",
    "unknown_action",
    "no_candidates",
    "unknown_policy",
    "unknown_event",
];

// ---- requests ---------------------------------------------------------------

/// One HTTP request as sent.
#[derive(Clone)]
struct Req {
    method: &'static str,
    /// Path and query, already percent-encoded.
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
}

impl fmt::Debug for Req {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = String::from_utf8_lossy(&self.body[..self.body.len().min(400)]).into_owned();
        write!(
            f,
            "{} {} ({:?}, {} bytes) {shown:?}",
            self.method,
            self.path,
            self.content_type,
            self.body.len()
        )
    }
}

impl Req {
    fn post(path: impl Into<String>, body: Vec<u8>) -> Self {
        Req {
            method: "POST",
            path: path.into(),
            content_type: Some("application/json"),
            body,
        }
    }

    fn get(path: impl Into<String>) -> Self {
        Req {
            method: "GET",
            path: path.into(),
            content_type: None,
            body: vec![],
        }
    }

    /// The route it targets, for the per-route tally.
    fn route(&self) -> &'static str {
        let p = self.path.split('?').next().unwrap_or("");
        let parts: Vec<&str> = p.trim_start_matches('/').split('/').collect();
        match parts.as_slice() {
            ["v1", "decide"] => "POST /v1/decide",
            ["v1", "reward"] => "POST /v1/reward",
            ["v1", "events", _, "activate"] => "POST /v1/events/{event_id}/activate",
            ["v1", "policies"] => "GET /v1/policies",
            ["v1", "policies", _] => "GET /v1/policies/{id}",
            ["v1", "policies", _, "snapshot"] => "GET /v1/policies/{id}/snapshot",
            ["v1", "policies", _, "reset"] => "POST /v1/policies/{id}/reset",
            ["healthz"] => "GET /healthz",
            ["readyz"] => "GET /readyz",
            ["metrics"] => "GET /metrics",
            ["openapi.json"] => "GET /openapi.json",
            _ => "(other paths)",
        }
    }
}

/// Percent-encodes every byte outside the unreserved set, so any bytes
/// (control characters, invalid UTF-8) travel in a path segment.
fn encode_segment(bytes: &[u8]) -> String {
    let mut out = String::new();
    for b in bytes {
        if b.is_ascii_alphanumeric() || b"-._~".contains(b) {
            out.push(*b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

// ---- valid requests -----------------------------------------------------------

fn num() -> impl Strategy<Value = f64> {
    prop_oneof![-10.0..10.0f64, Just(0.0), Just(1.0)]
}

fn fuzz_event_id() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        (0u32..1_000_000).prop_map(|n| Some(format!("f-{n}"))),
    ]
}

fn decide_push() -> impl Strategy<Value = Value> {
    (
        fuzz_event_id(),
        vec(num(), 3),
        prop_oneof![
            Just(None),
            Just(Some("free")),
            Just(Some("pro")),
            Just(Some("team"))
        ],
        prop_oneof![Just(None), (1usize..4).prop_map(Some)],
        prop_oneof![Just(vec![]), Just(vec!["a"]), Just(vec!["b", "c"])],
        any::<bool>(),
    )
        .prop_map(|(event_id, x, plan, k, excluded, defer)| {
            let mut ctx = json!({ "x": x });
            if let Some(p) = plan {
                ctx["plan"] = json!(p);
            }
            let mut body = json!({ "policy": "push", "context": ctx });
            if let Some(id) = event_id {
                body["event_id"] = json!(id);
            }
            if let Some(k) = k {
                body["k"] = json!(k);
            }
            if !excluded.is_empty() {
                body["excluded"] = json!(excluded);
            }
            if defer {
                body["defer"] = json!(true);
            }
            body
        })
}

fn decide_windowed() -> impl Strategy<Value = Value> {
    (fuzz_event_id(), vec(num(), 2)).prop_map(|(event_id, x)| {
        let mut body = json!({ "policy": "windowed", "context": { "x": x } });
        if let Some(id) = event_id {
            body["event_id"] = json!(id);
        }
        body
    })
}

fn decide_ranker() -> impl Strategy<Value = Value> {
    (
        fuzz_event_id(),
        vec(num(), 2),
        vec(vec(num(), 2), 1..6),
        prop_oneof![Just(None), (1usize..4).prop_map(Some)],
    )
        .prop_map(|(event_id, u, items, k)| {
            let actions: Vec<Value> = items
                .iter()
                .enumerate()
                .map(|(i, f)| json!({ "id": format!("item-{i}"), "features": { "i": f } }))
                .collect();
            let mut body = json!({ "policy": "ranker", "context": { "u": u }, "actions": actions });
            if let Some(id) = event_id {
                body["event_id"] = json!(id);
            }
            if let Some(k) = k {
                body["k"] = json!(k);
            }
            body
        })
}

/// Primed events rewards can target: `(event_id, policy)`.
fn primed_event() -> impl Strategy<Value = (String, &'static str)> {
    prop_oneof![
        (0..PRIMED_PUSH).prop_map(|i| (format!("p-push-{i}"), "push")),
        (0..PRIMED_DEFERRED).prop_map(|i| (format!("p-push-d-{i}"), "push")),
        (0..PRIMED_RANKER).prop_map(|i| (format!("p-rank-{i}"), "ranker")),
        (0u32..1000).prop_map(|i| (format!("never-{i}"), "push")),
    ]
}

fn reward() -> impl Strategy<Value = Value> {
    (
        primed_event(),
        prop_oneof![
            (-1.5..1.5f64).prop_map(|r| json!({ "reward": r })),
            (0u8..2, 0u8..2)
                .prop_map(|(o, u)| json!({ "signals": { "opened": o, "unsubscribed": u } })),
            Just(json!({ "signals": { "clicked": 1 } })),
        ],
        prop_oneof![
            Just(None),
            Just(Some("a")),
            Just(Some("item-1")),
            Just(Some("nope"))
        ],
        prop_oneof![
            Just(None),
            Just(Some("right")),
            Just(Some("push")),
            Just(Some("ranker")),
            Just(Some("windowed"))
        ],
    )
        .prop_map(|((event_id, policy), value, action, named)| {
            let mut body = value;
            body["event_id"] = json!(event_id);
            if let Some(a) = action {
                body["action"] = json!(a);
            }
            match named {
                Some("right") => body["policy"] = json!(policy),
                Some(p) => body["policy"] = json!(p),
                None => {}
            }
            body
        })
}

// ---- mutations ----------------------------------------------------------------

/// Raw JSON text to splice in where a value was: some of it is not JSON at
/// all (`NaN`, `Infinity`), some is JSON that no f64 holds (`1e999`).
fn nasty_json() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("NaN".to_string()),
        Just("-NaN".to_string()),
        Just("Infinity".to_string()),
        Just("-Infinity".to_string()),
        Just("1e999".to_string()),
        Just("-1e999".to_string()),
        Just("1e308".to_string()),
        Just("-1e308".to_string()),
        Just("1e200".to_string()),
        Just("-0.0".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("5e-324".to_string()),
        Just("18446744073709551616".to_string()),
        Just("123456789012345678901234567890".to_string()),
        Just("null".to_string()),
        Just("true".to_string()),
        Just("\"\"".to_string()),
        Just("\"1\"".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
        Just("[null]".to_string()),
        Just("[1e200, 1e200, 1e200]".to_string()),
        Just("[1e308, -1e308]".to_string()),
        Just("[[[[[[1]]]]]]".to_string()),
        Just("{\"x\": {\"x\": {\"x\": 1}}}".to_string()),
        Just("\"\\u0000\"".to_string()),
        Just("\"\\ud800\"".to_string()),
        Just("\"a\\nb\\tc\"".to_string()),
        Just("\"é🙂\u{202e}\"".to_string()),
        Just(format!("\"{}\"", "x".repeat(300))),
        Just(format!("[{}]", vec!["0.5"; 200].join(","))),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        any::<i64>().prop_map(|v| v.to_string()),
        "\"[ -~]{0,10}\"",
    ]
}

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    At(usize),
}

fn all_paths(v: &Value, prefix: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(Seg::Key(k.clone()));
                out.push(prefix.clone());
                all_paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                prefix.push(Seg::At(i));
                out.push(prefix.clone());
                all_paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

fn parent_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    let mut cur = v;
    for seg in path {
        cur = match seg {
            Seg::Key(k) => cur.get_mut(k.as_str())?,
            Seg::At(i) => cur.get_mut(*i)?,
        };
    }
    Some(cur)
}

const RAW: &str = "__fuzz_raw_text__";

/// A structural mutation of a JSON body.
#[derive(Debug, Clone)]
enum JsonMutation {
    /// Delete the field (or array element) at a path.
    Delete(Index),
    /// Replace the value at a path with raw text.
    Replace(Index, String),
    /// Add a field nobody declared.
    AddField(Index, String),
    /// Send the body wrapped in an array.
    WrapInArray,
}

fn json_mutation() -> impl Strategy<Value = JsonMutation> {
    prop_oneof![
        2 => any::<Index>().prop_map(JsonMutation::Delete),
        6 => (any::<Index>(), nasty_json()).prop_map(|(i, t)| JsonMutation::Replace(i, t)),
        1 => (any::<Index>(), prop_oneof![Just("surprise".to_string()), "[a-z\u{0}-\u{1f}é]{1,6}"])
            .prop_map(|(i, k)| JsonMutation::AddField(i, k)),
        1 => Just(JsonMutation::WrapInArray),
    ]
}

/// Applies JSON mutations, then serialises, splicing raw texts in.
fn mutate_json(mut body: Value, mutations: &[JsonMutation]) -> Vec<u8> {
    let mut raws: Vec<String> = vec![];
    for m in mutations {
        let mut paths = vec![];
        all_paths(&body, &mut vec![], &mut paths);
        match m {
            JsonMutation::Delete(i) if !paths.is_empty() => {
                let path = &paths[i.index(paths.len())];
                let (last, parent) = path.split_last().unwrap();
                if let Some(p) = parent_mut(&mut body, parent) {
                    match (p, last) {
                        (Value::Object(m), Seg::Key(k)) => {
                            m.remove(k);
                        }
                        (Value::Array(a), Seg::At(i)) if *i < a.len() => {
                            a.remove(*i);
                        }
                        _ => {}
                    }
                }
            }
            JsonMutation::Replace(i, text) => {
                let marker = json!(format!("{RAW}{}", raws.len()));
                raws.push(text.clone());
                if paths.is_empty() {
                    body = marker;
                } else if let Some(v) = parent_mut(&mut body, &paths[i.index(paths.len())]) {
                    *v = marker;
                }
            }
            JsonMutation::AddField(i, key) => {
                let mut objects: Vec<Vec<Seg>> = vec![vec![]];
                objects.extend(paths);
                let at = objects[i.index(objects.len())].clone();
                if let Some(Value::Object(m)) = parent_mut(&mut body, &at) {
                    m.insert(key.clone(), json!(1));
                }
            }
            JsonMutation::WrapInArray => body = json!([body]),
            JsonMutation::Delete(_) => {}
        }
    }
    let mut text = serde_json::to_string(&body).unwrap();
    // Later markers first, so `…1` is not found inside `…10`.
    for (n, raw) in raws.iter().enumerate().rev() {
        text = text.replace(&format!("\"{RAW}{n}\""), raw);
    }
    text.into_bytes()
}

/// A byte-level mutation of a serialised body.
#[derive(Debug, Clone)]
enum ByteMutation {
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Overwrite(Index, u8),
}

fn byte_mutation() -> impl Strategy<Value = ByteMutation> {
    prop_oneof![
        any::<Index>().prop_map(ByteMutation::Truncate),
        (
            any::<Index>(),
            prop_oneof![
                Just(vec![0xff, 0xfe]),
                Just(vec![0xc3]),
                Just(vec![0xed, 0xa0, 0x80]),
                Just(vec![0]),
                Just(b"\\u0000".to_vec()),
                Just(b"\"".to_vec()),
                Just(b",,".to_vec()),
                Just(b"}".to_vec()),
                Just(vec![0xef, 0xbb, 0xbf]),
                vec(any::<u8>(), 1..6),
            ]
        )
            .prop_map(|(i, b)| ByteMutation::Insert(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| ByteMutation::Overwrite(i, b)),
    ]
}

fn mutate_bytes(mut body: Vec<u8>, mutations: &[ByteMutation]) -> Vec<u8> {
    for m in mutations {
        match m {
            ByteMutation::Truncate(i) => body.truncate(i.index(body.len() + 1)),
            ByteMutation::Insert(i, bytes) => {
                let at = i.index(body.len() + 1);
                body.splice(at..at, bytes.iter().copied());
            }
            ByteMutation::Overwrite(i, b) if !body.is_empty() => {
                let at = i.index(body.len());
                body[at] = *b;
            }
            ByteMutation::Overwrite(..) => {}
        }
    }
    body
}

/// A valid body, mutated a little (or not at all).
fn mutated(valid: impl Strategy<Value = Value>) -> impl Strategy<Value = Vec<u8>> {
    (
        valid,
        prop_oneof![3 => Just(vec![]), 6 => vec(json_mutation(), 1..3)],
        prop_oneof![8 => Just(vec![]), 2 => vec(byte_mutation(), 1..3)],
    )
        .prop_map(|(body, js, bs)| mutate_bytes(mutate_json(body, &js), &bs))
}

/// Ids for path segments: valid ones, unknown ones, and bytes no id has.
fn path_id() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("push".to_string()),
        Just("ranker".to_string()),
        Just("windowed".to_string()),
        Just("nope".to_string()),
        (0..PRIMED_PUSH).prop_map(|i| format!("p-push-{i}")),
        (0..PRIMED_DEFERRED).prop_map(|i| format!("p-push-d-{i}")),
        vec(any::<u8>(), 0..12).prop_map(|b| encode_segment(&b)),
        Just(encode_segment("é🙂\u{0}\u{7f}".as_bytes())),
        Just(encode_segment(&[0xff, 0xfe, 0xfd])),
        Just("x".repeat(300)),
        Just("..".to_string()),
    ]
}

fn content_type() -> impl Strategy<Value = Option<&'static str>> {
    prop_oneof![
        8 => Just(Some("application/json")),
        1 => Just(None),
        1 => Just(Some("text/plain")),
        1 => Just(Some("application/x-www-form-urlencoded")),
        1 => Just(Some("application/json; charset=latin1")),
    ]
}

fn method() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("GET"),
        Just("POST"),
        Just("PUT"),
        Just("DELETE"),
        Just("PATCH"),
        Just("HEAD"),
        Just("OPTIONS"),
    ]
}

/// Any request to any route.
fn request() -> impl Strategy<Value = Req> {
    let decide = prop_oneof![
        3 => mutated(decide_push()),
        1 => mutated(decide_windowed()),
        2 => mutated(decide_ranker()),
    ];
    prop_oneof![
        30 => (decide, content_type()).prop_map(|(body, ct)| Req {
            content_type: ct,
            ..Req::post("/v1/decide", body)
        }),
        25 => (mutated(reward()), content_type()).prop_map(|(body, ct)| Req {
            content_type: ct,
            ..Req::post("/v1/reward", body)
        }),
        8 => (path_id(), prop_oneof![
            Just(vec![]),
            Just(b"   ".to_vec()),
            mutated(Just(json!({}))),
            mutated(Just(json!({ "policy": "push" }))),
        ])
            .prop_map(|(id, body)| Req::post(format!("/v1/events/{id}/activate"), body)),
        3 => Just(Req::get("/v1/policies")),
        5 => path_id().prop_map(|id| Req::get(format!("/v1/policies/{id}"))),
        4 => path_id().prop_map(|id| Req::get(format!("/v1/policies/{id}/snapshot"))),
        3 => (path_id(), vec(any::<u8>(), 0..20))
            .prop_map(|(id, body)| Req::post(format!("/v1/policies/{id}/reset"), body)),
        1 => Just(Req::get("/healthz")),
        1 => Just(Req::get("/readyz")),
        1 => Just(Req::get("/metrics")),
        1 => Just(Req::get("/openapi.json")),
        4 => (
            method(),
            prop_oneof![
                Just("/v1/decide".to_string()),
                Just("/v1/reward".to_string()),
                Just("/v1/policies".to_string()),
                Just("/v1/policies/push".to_string()),
                Just("/healthz".to_string()),
                Just("/openapi.json".to_string()),
                path_id().prop_map(|s| format!("/{s}")),
                path_id().prop_map(|s| format!("/v1/{s}?q={s}")),
                Just("/v1/policies/push/reset?x=%ff".to_string()),
            ],
            vec(any::<u8>(), 0..30),
        )
            .prop_map(|(m, path, body)| Req {
                method: m,
                path,
                content_type: Some("application/json"),
                body,
            }),
    ]
}

// ---- sending and checking -------------------------------------------------------

/// What came back.
struct Answer {
    status: u16,
    /// The `Allow` header, if any.
    allow: Option<String>,
    body: Vec<u8>,
}

async fn send(app: &TestApp, req: &Req) -> Answer {
    let method = reqwest::Method::from_bytes(req.method.as_bytes()).unwrap();
    let mut builder = app
        .client
        .request(method, format!("{}{}", app.address, req.path))
        .body(req.body.clone());
    if let Some(ct) = req.content_type {
        builder = builder.header("content-type", ct);
    }
    let response = builder
        .send()
        .await
        .unwrap_or_else(|e| panic!("no answer to {req:?}: {e}"));
    let status = response.status().as_u16();
    let allow = response
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap_or("(not text)").to_string());
    let body = response.bytes().await.unwrap().to_vec();
    Answer {
        status,
        allow,
        body,
    }
}

/// The contract every answer must meet.
fn check(req: &Req, a: &Answer) -> Result<(), TestCaseError> {
    let text = String::from_utf8_lossy(&a.body);
    prop_assert!(
        (200..300).contains(&a.status) || (400..500).contains(&a.status),
        "{req:?} answered {} {text}",
        a.status
    );
    if a.status == 405 {
        // The methods the route has, and never the one just refused.
        let allow = a.allow.as_deref().unwrap_or("");
        let methods: Vec<&str> = allow.split(", ").collect();
        prop_assert!(
            methods.iter().all(|m| ["GET", "POST"].contains(m)) && !methods.contains(&req.method),
            "{req:?}: 405 with Allow {allow:?}"
        );
    }
    if a.status >= 400 {
        if req.method == "HEAD" {
            return Ok(()); // no body, by HTTP's definition
        }
        let v: Value = serde_json::from_slice(&a.body).map_err(|e| {
            TestCaseError::fail(format!(
                "{req:?} answered {} with a body that is not JSON ({e}): {text}",
                a.status
            ))
        })?;
        let code = v["error"]["code"].as_str().unwrap_or("");
        prop_assert!(!code.is_empty(), "{req:?}: no error code in {v}");
        prop_assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{req:?}: no message in {v}"
        );
        if FIELD_CODES.contains(&code) {
            prop_assert!(
                // Present; empty only for a key sent empty (`{"": 1}`).
                v["error"]["field"].is_string(),
                "{req:?}: `{code}` names no field: {v}"
            );
        }
    } else if req.route() == "POST /v1/decide" {
        let v: Value = serde_json::from_slice(&a.body).unwrap();
        let p = v["probability"].as_f64().unwrap_or(f64::NAN);
        prop_assert!(p > 0.0 && p <= 1.0, "{req:?}: propensity {p} in {v}");
    }
    Ok(())
}

const PRIMED_PUSH: u32 = 150;
const PRIMED_DEFERRED: u32 = 20;
const PRIMED_RANKER: u32 = 60;

/// Decisions the fuzzed rewards and activations can find.
async fn prime(app: &TestApp) {
    for i in 0..PRIMED_PUSH {
        let (s, v) = app
            .post(
                "/v1/decide",
                &json!({"policy": "push", "event_id": format!("p-push-{i}"), "context": {"x": [0.5, -1.0, (i % 7) as f64]}, "k": 1 + i % 2}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    for i in 0..PRIMED_DEFERRED {
        let (s, v) = app
            .post(
                "/v1/decide",
                &json!({"policy": "push", "event_id": format!("p-push-d-{i}"), "context": {"x": [1.0, 0.0, 0.0]}, "defer": true}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
    for i in 0..PRIMED_RANKER {
        let actions: Vec<Value> = (0..4)
            .map(|j| json!({"id": format!("item-{j}"), "features": {"i": [j as f64, 1.0]}}))
            .collect();
        let (s, v) = app
            .post(
                "/v1/decide",
                &json!({"policy": "ranker", "event_id": format!("p-rank-{i}"), "context": {"u": [0.3, (i % 5) as f64]}, "actions": actions, "k": 2}),
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
}

/// The decoded statistics of a policy (synced first, by the route).
async fn statistics(app: &TestApp, policy: &str) -> ModelState {
    let r = app
        .client
        .get(format!("{}/v1/policies/{policy}/snapshot", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    codec::decode(&r.bytes().await.unwrap()).expect("the snapshot route serves a valid blob")
}

fn total_count(state: &ModelState) -> u64 {
    state.arms.iter().map(|a| a.count).sum()
}

fn config(cases: u32, seed: u64) -> Config {
    Config {
        cases,
        failure_persistence: None,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(seed),
        // Each shrink step is an HTTP round trip; a handful is plenty to
        // make a failing case readable.
        max_shrink_iters: 200,
        ..Config::default()
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

async fn fuzz_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |s| s.admin_token = Some(ADMIN_TOKEN.into())).await
}

/// Sends `cases` generated requests to a fresh app on `backend`, checking
/// every answer, then that the models changed exactly by the rewards the
/// service said it learned. Returns the tally of requests per route.
fn fuzz_every_route(backend: Backend, cases: u32, seed: u64) -> BTreeMap<&'static str, usize> {
    let rt = runtime();
    let app = rt.block_on(fuzz_app(backend));
    rt.block_on(prime(&app));
    let before: BTreeMap<&str, ModelState> = ["push", "ranker"]
        .into_iter()
        .map(|p| (p, rt.block_on(statistics(&app, p))))
        .collect();
    let tally: RefCell<BTreeMap<&'static str, usize>> = RefCell::default();
    let statuses: RefCell<BTreeMap<u16, usize>> = RefCell::default();
    // Rewards the service said it learned, for push and ranker (first-reward
    // policies; fuzzed decisions may take any id, so the policy of a
    // learned event is not known here, only the total).
    let learned = std::cell::Cell::new(0u64);
    let started = Instant::now();
    let mut runner = TestRunner::new(config(cases, seed));
    runner
        .run(&request(), |req| {
            let answer = rt.block_on(send(&app, &req));
            *tally.borrow_mut().entry(req.route()).or_default() += 1;
            *statuses.borrow_mut().entry(answer.status).or_default() += 1;
            check(&req, &answer)?;
            if req.route() == "POST /v1/reward" && answer.status == 202 {
                let v: Value = serde_json::from_slice(&answer.body).unwrap();
                // Learned at once; "accumulated" (the windowed policy's
                // sums) is learned when the window closes, not counted.
                if v["status"] == "learned" {
                    learned.set(learned.get() + 1);
                }
            }
            Ok(())
        })
        .unwrap();
    let elapsed = started.elapsed();
    // Still alive, and every model changed only by what was learned.
    let (status, _) = rt.block_on(app.get("/healthz"));
    assert_eq!(status, 200);
    let mut grown = 0;
    for (policy, old) in &before {
        let new = rt.block_on(statistics(&app, policy));
        grown += total_count(&new) - total_count(old);
        assert!(new.arms.iter().all(ArmStats::is_finite), "{policy}");
    }
    assert_eq!(
        grown,
        learned.get(),
        "observations learned vs rewards accepted"
    );
    let windowed = rt.block_on(statistics(&app, "windowed"));
    assert!(windowed.arms.iter().all(ArmStats::is_finite));
    let tally = tally.into_inner();
    eprintln!(
        "{backend:?}: {} requests in {elapsed:.1?}; learned {}; statuses {:?}; per route {tally:#?}",
        tally.values().sum::<usize>(),
        learned.get(),
        statuses.borrow()
    );
    tally
}

#[test]
fn every_route_answers_any_request_with_a_2xx_or_a_json_4xx_on_embedded_stores() {
    let tally = fuzz_every_route(Backend::Embedded, 20_000, 0x5eed_0001);
    assert!(tally.values().sum::<usize>() >= 20_000);
    // Every route was exercised, not just the frequent ones.
    assert!(tally.len() >= 12, "{tally:?}");
}

#[test]
fn every_route_answers_any_request_with_a_2xx_or_a_json_4xx_on_production_stores() {
    let tally = fuzz_every_route(Backend::Production, 4_000, 0x5eed_0002);
    assert!(tally.values().sum::<usize>() >= 4_000);
}

// ---- invalid requests and the model -----------------------------------------------

/// Requests that must all be refused: rewards that are out of range, not
/// numbers, for unknown events or for another policy's events, and
/// decisions that cannot be made.
fn invalid_request() -> impl Strategy<Value = Req> {
    let push_event = (0..PRIMED_PUSH).prop_map(|i| format!("p-push-{i}"));
    let bad_reward = prop_oneof![
        // Out of push's declared range [-1, 1].
        prop_oneof![1.0001..1e300f64, -1e300..-1.0001f64].prop_map(|r| format!("{r:e}")),
        Just("NaN".to_string()),
        Just("1e999".to_string()),
        Just("\"1\"".to_string()),
        Just("null".to_string()),
        Just("[1]".to_string()),
    ];
    prop_oneof![
        (push_event.clone(), bad_reward).prop_map(|(id, r)| Req::post(
            "/v1/reward",
            format!("{{\"event_id\":\"{id}\",\"reward\":{r}}}").into_bytes()
        )),
        // Signals whose weighted sum leaves the range, or unknown ones.
        (push_event.clone(), prop_oneof![
            Just("{\"opened\": 2}"),
            Just("{\"opened\": 1e308}"),
            Just("{\"unsubscribed\": 1e200}"),
            Just("{\"opened\": NaN}"),
            Just("{\"clicked\": 1}"),
            Just("{\"opened\": 1, \"bogus\": 1}"),
        ])
            .prop_map(|(id, s)| Req::post(
                "/v1/reward",
                format!("{{\"event_id\":\"{id}\",\"signals\":{s}}}").into_bytes()
            )),
        // Another policy's event: push events named as the ranker's.
        push_event.clone().prop_map(|id| Req::post(
            "/v1/reward",
            json!({"event_id": id, "reward": 0.5, "policy": "ranker"}).to_string().into_bytes()
        )),
        // Both or neither of reward and signals; an action not in the slate.
        push_event.clone().prop_map(|id| Req::post(
            "/v1/reward",
            json!({"event_id": id, "reward": 0.5, "signals": {"opened": 1}}).to_string().into_bytes()
        )),
        push_event.clone().prop_map(|id| Req::post(
            "/v1/reward",
            json!({"event_id": id, "action": "zzz", "reward": 0.5}).to_string().into_bytes()
        )),
        // Unknown events, and ids no event can have.
        (0u32..1000).prop_map(|i| Req::post(
            "/v1/reward",
            json!({"event_id": format!("nope-{i}"), "reward": 0.5}).to_string().into_bytes()
        )),
        "[\u{0}-\u{1f}é🙂 /{}]{1,10}".prop_map(|id| Req::post(
            "/v1/reward",
            json!({"event_id": id, "reward": 0.5}).to_string().into_bytes()
        )),
        // Decisions that cannot be made (nothing is recorded for them).
        prop_oneof![
            Just("{\"policy\":\"push\",\"context\":{\"x\":[1e200,0,0]}}"),
            Just("{\"policy\":\"push\",\"context\":{\"x\":[NaN,0,0]}}"),
            Just("{\"policy\":\"push\",\"context\":{\"x\":[1e999,0,0]}}"),
            Just("{\"policy\":\"push\",\"context\":{\"x\":[1,2]}}"),
            Just("{\"policy\":\"ranker\",\"context\":{\"u\":[1,1]},\"actions\":[{\"id\":\"a\",\"features\":{\"i\":[1e10,1]}}]}"),
            Just("{\"policy\":\"ranker\",\"context\":{\"u\":[1,1]},\"actions\":[{\"id\":\"a\"},{\"id\":\"a\"}]}"),
            Just("{\"policy\":\"windowed\",\"context\":{\"x\":[-1e300,0]}}"),
        ]
        .prop_map(|b| Req::post("/v1/decide", b.as_bytes().to_vec())),
        // Resets without the admin token.
        prop_oneof![Just("push"), Just("ranker"), Just("windowed")]
            .prop_map(|p| Req::post(format!("/v1/policies/{p}/reset"), vec![])),
    ]
}

#[test]
fn invalid_requests_leave_the_model_statistics_untouched_and_a_valid_reward_does_not() {
    let rt = runtime();
    let app = rt.block_on(fuzz_app(Backend::Embedded));
    rt.block_on(prime(&app));
    let policies = ["push", "ranker", "windowed"];
    let snapshot = |app: &TestApp| -> Vec<ModelState> {
        policies
            .iter()
            .map(|p| rt.block_on(statistics(app, p)))
            .collect()
    };
    let before = snapshot(&app);
    let mut runner = TestRunner::new(config(1_500, 0x5eed_0003));
    runner
        .run(&invalid_request(), |req| {
            let answer = rt.block_on(send(&app, &req));
            check(&req, &answer)?;
            prop_assert!(
                (400..500).contains(&answer.status),
                "{req:?} was accepted: {} {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            );
            Ok(())
        })
        .unwrap();
    // Statistics and versions, bit for bit.
    assert_eq!(snapshot(&app), before);

    // The comparison can fail: one valid reward changes it.
    let (status, body) = rt.block_on(app.post(
        "/v1/reward",
        &json!({"event_id": "p-push-0", "reward": 1.0}),
    ));
    assert_eq!(status, 202, "{body}");
    assert_ne!(snapshot(&app), before);
}

// ---- huge, deep and malformed bodies ---------------------------------------------

fn nested_arrays(depth: usize) -> String {
    format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
}

#[test]
fn huge_deep_and_malformed_bodies_are_refused_with_a_json_error() {
    let rt = runtime();
    let app = rt.block_on(fuzz_app(Backend::Embedded));
    let started = Instant::now();
    let many = |n: usize, features: bool| -> String {
        let actions: Vec<String> = (0..n)
            .map(|i| {
                if features {
                    format!("{{\"id\":\"{i}\",\"features\":{{\"i\":[0.1,0.2]}}}}")
                } else {
                    format!("{{\"id\":\"{i}\"}}")
                }
            })
            .collect();
        format!(
            "{{\"policy\":\"ranker\",\"context\":{{\"u\":[1,0]}},\"actions\":[{}]}}",
            actions.join(",")
        )
    };
    let huge_vector = format!(
        "{{\"policy\":\"push\",\"context\":{{\"x\":[{}]}}}}",
        vec!["0.5"; 100_000].join(",")
    );
    let cases: Vec<(&str, Req, u16)> = vec![
        (
            "10⁵ candidates",
            Req::post("/v1/decide", many(100_000, true).into_bytes()),
            413,
        ),
        (
            "1 001 small candidates",
            Req::post("/v1/decide", many(1_001, false).into_bytes()),
            400,
        ),
        (
            "1 000 duplicate candidates",
            Req::post(
                "/v1/decide",
                format!(
                    "{{\"policy\":\"ranker\",\"context\":{{\"u\":[1,0]}},\"actions\":[{}]}}",
                    vec!["{\"id\":\"same\",\"features\":{\"i\":[1,1]}}"; 1000].join(",")
                )
                .into_bytes(),
            ),
            400,
        ),
        (
            "a vector of 10⁵ numbers",
            Req::post("/v1/decide", huge_vector.into_bytes()),
            400,
        ),
        (
            "10 000 nested arrays as the context",
            Req::post(
                "/v1/decide",
                format!(
                    "{{\"policy\":\"push\",\"context\":{}}}",
                    nested_arrays(10_000)
                )
                .into_bytes(),
            ),
            400,
        ),
        (
            "10 000 nested arrays in a feature",
            Req::post(
                "/v1/decide",
                format!(
                    "{{\"policy\":\"push\",\"context\":{{\"x\":{}}}}}",
                    nested_arrays(10_000)
                )
                .into_bytes(),
            ),
            400,
        ),
        (
            "10 000 nested objects as the body",
            Req::post(
                "/v1/reward",
                format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000)).into_bytes(),
            ),
            400,
        ),
        (
            "nested arrays as the body",
            Req::post("/v1/reward", nested_arrays(10_000).into_bytes()),
            400,
        ),
        (
            "a 900 kB event id",
            Req::post(
                "/v1/reward",
                format!("{{\"event_id\":\"{}\",\"reward\":1}}", "e".repeat(900_000)).into_bytes(),
            ),
            400,
        ),
        (
            "a 900 kB policy id",
            Req::post(
                "/v1/decide",
                format!("{{\"policy\":\"{}\"}}", "p".repeat(900_000)).into_bytes(),
            ),
            400,
        ),
        (
            "a body over the limit",
            Req::post("/v1/reward", vec![b' '; 2 << 20]),
            413,
        ),
        ("an empty decide body", Req::post("/v1/decide", vec![]), 400),
        ("an empty reward body", Req::post("/v1/reward", vec![]), 400),
        (
            "non-UTF-8 bytes",
            Req::post("/v1/decide", vec![0xff, 0xfe, 0x7b, 0x7d]),
            400,
        ),
        (
            "non-UTF-8 inside a string",
            Req::post("/v1/decide", b"{\"policy\":\"pu\xffsh\"}".to_vec()),
            400,
        ),
        (
            "a lone surrogate escape",
            Req::post("/v1/decide", br#"{"policy":"\ud800"}"#.to_vec()),
            400,
        ),
        (
            "a form body",
            Req {
                content_type: Some("application/x-www-form-urlencoded"),
                ..Req::post("/v1/reward", b"event_id=a&reward=1".to_vec())
            },
            400,
        ),
        (
            "a non-UTF-8 event id in the path",
            Req::post("/v1/events/%FF%FE/activate", vec![]),
            400,
        ),
        (
            "a control character in the path",
            Req::post("/v1/events/a%00b/activate", vec![]),
            400,
        ),
        (
            "a non-UTF-8 policy id in the path",
            Req::get("/v1/policies/%C3%28"),
            400,
        ),
    ];
    for (what, req, expected) in &cases {
        let answer = rt.block_on(send(&app, req));
        check(req, &answer).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(
            answer.status,
            *expected,
            "{what}: {}",
            String::from_utf8_lossy(&answer.body[..answer.body.len().min(300)])
        );
    }
    let (status, _) = rt.block_on(app.get("/healthz"));
    assert_eq!(status, 200);
    eprintln!(
        "{} huge or malformed requests in {:.1?}",
        cases.len(),
        started.elapsed()
    );
}

// ---- the NaN attack ------------------------------------------------------------------

/// Every way a non-finite number could reach a model, tried on `app`; then
/// every statistic must be finite and deciding must still work.
async fn nan_attack(app: &TestApp) {
    let mut refused = 0;
    let mut refuse = async |path: &str, body: String, field: &str| {
        let (status, v) = app.post_raw(path, body.clone().into_bytes()).await;
        assert_eq!(status, 400, "{body} was not refused: {v}");
        assert_eq!(v["error"]["field"], field, "{body}: {v}");
        refused += 1;
    };
    // Context numbers that are not f64 at all, or not finite.
    for bad in ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"] {
        let (status, v) = app
            .post_raw(
                "/v1/decide",
                format!("{{\"policy\":\"push\",\"context\":{{\"x\":[{bad},0,0]}}}}").into_bytes(),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {v}");
    }
    // Finite, but x xᵀ overflows: 1e200² = inf.
    for bad in ["1e200", "-1e155", "1.7976931348623157e308"] {
        refuse(
            "/v1/decide",
            format!("{{\"policy\":\"push\",\"context\":{{\"x\":[{bad},0,0]}}}}"),
            "context.x",
        )
        .await;
        refuse(
            "/v1/decide",
            format!("{{\"policy\":\"windowed\",\"context\":{{\"x\":[0,{bad}]}}}}"),
            "context.x",
        )
        .await;
        // Shared mode: the candidate's features, and their interaction
        // with the context (each factor is 1e10: the product, 1e20, and its
        // square, 1e40, are finite, but the factors are already refused).
        refuse(
            "/v1/decide",
            format!(
                "{{\"policy\":\"ranker\",\"context\":{{\"u\":[1,0]}},\"actions\":[{{\"id\":\"a\",\"features\":{{\"i\":[{bad},0]}}}}]}}"
            ),
            "actions[0].features.i",
        )
        .await;
        refuse(
            "/v1/decide",
            format!(
                "{{\"policy\":\"ranker\",\"context\":{{\"u\":[{bad},0]}},\"actions\":[{{\"id\":\"a\",\"features\":{{\"i\":[1,0]}}}}]}}"
            ),
            "context.u",
        )
        .await;
    }
    refuse(
        "/v1/decide",
        "{\"policy\":\"ranker\",\"context\":{\"u\":[1e10,0]},\"actions\":[{\"id\":\"a\",\"features\":{\"i\":[1e10,0]}}]}".into(),
        "context.u",
    )
    .await;

    // Rewards: out of push's range, and huge where no range is declared
    // (ranker, windowed); signals whose weighted sum overflows.
    let decide = async |policy: &str, id: &str| {
        let body = match policy {
            "push" => json!({"policy": "push", "event_id": id, "context": {"x": [1e9, -1e9, 1.0]}}),
            "windowed" => {
                json!({"policy": "windowed", "event_id": id, "context": {"x": [1e9, 1e9]}})
            }
            _ => json!({"policy": "ranker", "event_id": id, "context": {"u": [1e9, 1.0]},
                        "actions": [{"id": "a", "features": {"i": [1e9, -1e9]}}]}),
        };
        let (status, v) = app.post("/v1/decide", &body).await;
        assert_eq!(status, 200, "{v}");
    };
    decide("push", "nan-push").await;
    decide("ranker", "nan-rank").await;
    decide("windowed", "nan-win").await;
    for bad in ["1e308", "-1e308", "1e13", "1.7976931348623157e308"] {
        for event in ["nan-push", "nan-rank", "nan-win"] {
            refuse(
                "/v1/reward",
                format!("{{\"event_id\":\"{event}\",\"reward\":{bad}}}"),
                "reward",
            )
            .await;
        }
    }
    for signals in [
        "{\"opened\": 1e308, \"unsubscribed\": -1e308}",
        "{\"opened\": 1.7976931348623157e308, \"unsubscribed\": -1.7976931348623157e308}",
        "{\"opened\": 1e200}",
    ] {
        refuse(
            "/v1/reward",
            format!("{{\"event_id\":\"nan-push\",\"signals\":{signals}}}"),
            "signals",
        )
        .await;
    }
    // The largest accepted values, summed in a window: they stay finite.
    for _ in 0..5 {
        let (status, v) = app
            .post(
                "/v1/reward",
                &json!({"event_id": "nan-win", "reward": 1e12}),
            )
            .await;
        assert_eq!(status, 202, "{v}");
    }
    for event in ["nan-push", "nan-rank"] {
        let (status, v) = app
            .post("/v1/reward", &json!({"event_id": event, "reward": 1.0}))
            .await;
        assert_eq!(status, 202, "{v}");
    }
    assert_eq!(refused, 28);

    // Let the windowed event's window close and its sum be learned.
    let started = Instant::now();
    loop {
        let (_, v) = app.get_json("/v1/policies/windowed").await;
        if v["pending_events"] == 0 || started.elapsed() > Duration::from_secs(10) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for policy in ["push", "ranker", "windowed"] {
        let state = statistics(app, policy).await;
        assert!(
            state.arms.iter().all(ArmStats::is_finite),
            "{policy}: {state:?}"
        );
        assert!(total_count(&state) >= 1, "{policy} learned nothing");
    }
    for body in [
        json!({"policy": "push", "context": {"x": [1.0, 2.0, 3.0]}}),
        json!({"policy": "windowed", "context": {"x": [1.0, 2.0]}}),
        json!({"policy": "ranker", "context": {"u": [1.0, 2.0]}, "actions": [{"id": "a", "features": {"i": [1.0, 0.0]}}, {"id": "b", "features": {"i": [0.0, 1.0]}}]}),
    ] {
        let (status, v) = app.post("/v1/decide", &body).await;
        assert_eq!(status, 200, "{v}");
        let total: f64 = v["ranking"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["probability"].as_f64().unwrap())
            .sum();
        assert!((total - 1.0).abs() < 1e-9, "{v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_lets_a_non_finite_value_into_a_model_on_embedded_stores() {
    let mut app = fuzz_app(Backend::Embedded).await;
    nan_attack(&app).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_lets_a_non_finite_value_into_a_model_on_production_stores() {
    let mut app = fuzz_app(Backend::Production).await;
    nan_attack(&app).await;
    app.stop().await;
}
