//! The OpenAPI document against the server it describes:
//! - every documented operation is served and answers only statuses its
//!   document lists; every other method is 405 with the right `Allow`;
//! - the schemas carry the limits the code enforces (its constants, and the
//!   serving app's settings);
//! - requests built from the schemas (boundary values: shortest and longest
//!   ids of every allowed character, widest characters, most items, most
//!   features, extreme numbers) are valid under the schema and never refused
//!   as malformed; a value just past each bound is invalid under the schema
//!   and refused with a 400 naming its field.
//!
//! "Valid under the schema" is checked by a small JSON Schema validator below
//! (the keywords the document uses), so the generator cannot drift from the
//! document unnoticed.

mod support;

use nudge::features::{MAX_FEATURES, MAX_NAME_LEN, MAX_STRING_LEN, MAX_VECTOR_LEN};
use nudge::http::{
    EVENT_ID_PATTERN, MAX_ACTION_ID_LEN, MAX_EVENT_ID_LEN, MAX_POLICY_ID_LEN, POLICY_ID_PATTERN,
};
use nudge::policy::spec::MAX_REWARD;
use regex::Regex;
use serde_json::{Value, json};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use support::{Backend, TestApp, spawn_app_with};

/// Codes that say "the request is malformed": a schema-valid request must
/// never get one, except for the policy-dependent rules the descriptions
/// state (which the generator respects).
const MALFORMED: &[&str] = &[
    "invalid_json",
    "invalid_body",
    "invalid_field",
    "invalid_event_id",
    "invalid_policy_id",
];

const METHODS: &[&str] = &["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"];

/// Small limits, so "most items" stays fast; the document must follow them.
const MAX_CANDIDATES: usize = 40;
const MAX_K: usize = 7;

async fn app() -> TestApp {
    spawn_app_with(Backend::Embedded, |s| {
        s.max_candidates = MAX_CANDIDATES;
        s.max_k = MAX_K;
    })
    .await
}

async fn document(app: &TestApp) -> Value {
    let (status, doc) = app.get_json("/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    doc
}

// ---- a JSON Schema validator for the keywords the document uses ---------------

struct Schemas<'a> {
    doc: &'a Value,
    regexes: Mutex<HashMap<String, Regex>>,
    /// Requests sent by [`accepted`] and [`refused`].
    sent: AtomicUsize,
}

impl<'a> Schemas<'a> {
    fn new(doc: &'a Value) -> Self {
        Schemas {
            doc,
            regexes: Mutex::default(),
            sent: AtomicUsize::new(0),
        }
    }

    fn named(&self, name: &str) -> &'a Value {
        let s = &self.doc["components"]["schemas"][name];
        assert!(s.is_object(), "no schema {name}");
        s
    }

    fn resolve(&self, s: &'a Value) -> &'a Value {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) => self.resolve(self.named(r.strip_prefix("#/components/schemas/").unwrap())),
            None => s,
        }
    }

    /// The property `name` of the object schema `schema` (through `allOf`).
    fn property(&self, schema: &'a Value, name: &str) -> &'a Value {
        let s = self.resolve(schema);
        if let Some(p) = s["properties"].get(name) {
            return p;
        }
        for part in s["allOf"].as_array().into_iter().flatten() {
            if let Some(p) = self.resolve(part)["properties"].get(name) {
                return p;
            }
        }
        panic!("no property {name} in {s}");
    }

    fn matches(&self, pattern: &str, text: &str) -> bool {
        let mut cache = self.regexes.lock().unwrap();
        cache
            .entry(pattern.to_string())
            .or_insert_with(|| Regex::new(pattern).unwrap())
            .is_match(text)
    }

    fn valid(&self, schema: &Value, v: &Value) -> bool {
        self.check(schema, v).is_ok()
    }

    fn check(&self, schema: &Value, v: &Value) -> Result<(), String> {
        let s = match schema.get("$ref").and_then(Value::as_str) {
            Some(r) => self.named(r.strip_prefix("#/components/schemas/").unwrap()),
            None => schema,
        };
        let fail = |what: &str| Err(format!("{what}: {v} against {s}"));
        if let Some(t) = s.get("type") {
            let types: Vec<&str> = match t {
                Value::String(t) => vec![t],
                Value::Array(ts) => ts.iter().map(|t| t.as_str().unwrap()).collect(),
                _ => panic!("type {t}"),
            };
            let is = |t: &str| match t {
                "null" => v.is_null(),
                "boolean" => v.is_boolean(),
                "string" => v.is_string(),
                "number" => v.is_number(),
                "integer" => {
                    v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0)
                }
                "object" => v.is_object(),
                "array" => v.is_array(),
                _ => panic!("type {t}"),
            };
            if !types.iter().any(|t| is(t)) {
                return fail("type");
            }
        }
        for part in s["allOf"].as_array().into_iter().flatten() {
            self.check(part, v)?;
        }
        if let Some(one) = s["oneOf"].as_array()
            && one.iter().filter(|p| self.valid(p, v)).count() != 1
        {
            return fail("oneOf");
        }
        if let Some(any) = s["anyOf"].as_array()
            && !any.iter().any(|p| self.valid(p, v))
        {
            return fail("anyOf");
        }
        if let Some(e) = s["enum"].as_array()
            && !e.contains(v)
        {
            return fail("enum");
        }
        let num = |k: &str| s.get(k).and_then(Value::as_f64);
        match v {
            Value::String(text) => {
                let n = text.chars().count() as u64;
                if s.get("minLength")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| n < m)
                {
                    return fail("minLength");
                }
                if s.get("maxLength")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| n > m)
                {
                    return fail("maxLength");
                }
                if let Some(p) = s.get("pattern").and_then(Value::as_str)
                    && !self.matches(p, text)
                {
                    return fail("pattern");
                }
            }
            Value::Number(n) => {
                let x = n.as_f64().unwrap();
                if num("minimum").is_some_and(|m| x < m) || num("maximum").is_some_and(|m| x > m) {
                    return fail("range");
                }
                if num("exclusiveMinimum").is_some_and(|m| x <= m)
                    || num("exclusiveMaximum").is_some_and(|m| x >= m)
                {
                    return fail("exclusive range");
                }
            }
            Value::Array(a) => {
                let n = a.len() as u64;
                if s.get("maxItems")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| n > m)
                    || s.get("minItems")
                        .and_then(Value::as_u64)
                        .is_some_and(|m| n < m)
                {
                    return fail("items count");
                }
                if let Some(items) = s.get("items") {
                    for item in a {
                        self.check(items, item)?;
                    }
                }
            }
            Value::Object(o) => {
                for r in s["required"].as_array().into_iter().flatten() {
                    if !o.contains_key(r.as_str().unwrap()) {
                        return fail("required");
                    }
                }
                if s.get("maxProperties")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| o.len() as u64 > m)
                {
                    return fail("maxProperties");
                }
                let props = s.get("properties").and_then(Value::as_object);
                for (k, child) in o {
                    if let Some(names) = s.get("propertyNames") {
                        self.check(names, &json!(k))?;
                    }
                    match props.and_then(|p| p.get(k)) {
                        Some(p) => self.check(p, child)?,
                        None => match s.get("additionalProperties") {
                            Some(Value::Bool(false)) => return fail("additionalProperties"),
                            Some(extra @ Value::Object(_)) => self.check(extra, child)?,
                            _ => {}
                        },
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

// ---- values built from the schemas ------------------------------------------------

/// Characters to try in strings: every ASCII character, then wider ones
/// (2, 3 and 4 UTF-8 bytes, a C1 control, a bidi override).
fn candidates() -> Vec<char> {
    let mut c: Vec<char> = (0u8..128).map(char::from).collect();
    c.extend(['é', '中', '🙂', '\u{85}', '\u{202e}']);
    c
}

/// `schema` resolved, and for a nullable one (`oneOf` null or a schema),
/// the schema.
fn non_null<'a>(s: &Schemas<'a>, schema: &'a Value) -> &'a Value {
    let schema = s.resolve(schema);
    match schema["oneOf"].as_array() {
        Some(branches) if branches.iter().any(|b| b["type"] == "null") => {
            let rest: Vec<&Value> = branches.iter().filter(|b| b["type"] != "null").collect();
            assert_eq!(rest.len(), 1, "{schema}");
            non_null(s, rest[0])
        }
        _ => schema,
    }
}

/// The string schemas `schema` is made of (its `anyOf` branches, or itself).
fn string_branches<'a>(s: &Schemas<'a>, schema: &'a Value) -> Vec<&'a Value> {
    let schema = non_null(s, schema);
    match schema["anyOf"].as_array() {
        Some(branches) => branches.iter().map(|b| s.resolve(b)).collect(),
        None => vec![schema],
    }
}

fn alphabet(s: &Schemas<'_>, branch: &Value) -> Vec<char> {
    candidates()
        .into_iter()
        .filter(|c| s.valid(&without_lengths(branch), &json!(c.to_string())))
        .collect()
}

fn without_lengths(branch: &Value) -> Value {
    let mut b = branch.clone();
    b.as_object_mut().unwrap().remove("minLength");
    b.as_object_mut().unwrap().remove("maxLength");
    b
}

fn cycle(chars: &[char], n: usize, skip: usize) -> String {
    chars.iter().cycle().skip(skip).take(n).collect()
}

/// Boundary strings of a string schema: the shortest and the longest, of
/// every allowed character, and the longest of the widest one.
fn strings(s: &Schemas<'_>, schema: &Value) -> Vec<String> {
    let mut out = vec![];
    for branch in string_branches(s, schema) {
        let min = branch["minLength"].as_u64().unwrap_or(0) as usize;
        let max = branch["maxLength"].as_u64().unwrap_or(16) as usize;
        let chars = alphabet(s, branch);
        assert!(!chars.is_empty(), "no character fits {branch}");
        out.push(cycle(&chars, min, 0));
        out.push(cycle(&chars, max, 0));
        out.push(cycle(&chars, max, chars.len() / 2));
        let widest = *chars.iter().max_by_key(|c| c.len_utf8()).unwrap();
        out.push(widest.to_string().repeat(max));
    }
    for text in &out {
        assert!(
            s.valid(schema, &json!(text)),
            "generated {text:?} is not valid under {schema}"
        );
    }
    out
}

/// Strings just past a string schema's bounds, each invalid under it:
/// one character too many (of the widest allowed kind, so it is too many
/// bytes as well), one too few, and characters the pattern refuses.
fn bad_strings(s: &Schemas<'_>, schema: &Value) -> Vec<String> {
    let mut out = vec![];
    let branches = string_branches(s, schema);
    let longest = branches
        .iter()
        .filter_map(|b| b["maxLength"].as_u64())
        .max()
        .unwrap() as usize;
    for branch in &branches {
        let chars = alphabet(s, branch);
        let min = branch["minLength"].as_u64().unwrap_or(0) as usize;
        if min > 0 {
            out.push(cycle(&chars, min - 1, 0));
        }
        let max = branch["maxLength"].as_u64().unwrap() as usize;
        let widest = *chars.iter().max_by_key(|c| c.len_utf8()).unwrap();
        if max == longest {
            out.push(cycle(&chars, max + 1, 0));
        } else {
            out.push(widest.to_string().repeat(max + 1));
        }
    }
    for c in candidates() {
        let text = format!("a{c}");
        if !s.valid(schema, &json!(text)) {
            out.push(text);
        }
    }
    for text in &out {
        assert!(
            !s.valid(schema, &json!(text)),
            "{text:?} should be invalid under {schema}"
        );
    }
    out
}

fn bound(s: &Value, key: &str) -> Option<f64> {
    s.get(key).and_then(Value::as_f64)
}

/// Boundary numbers of a number schema: its bounds, and 0.
fn numbers(s: &Schemas<'_>, schema: &Value) -> Vec<Value> {
    let n = s.resolve(schema);
    let mut out = vec![json!(0.0)];
    out.extend(bound(n, "minimum").map(|m| json!(m)));
    out.extend(bound(n, "maximum").map(|m| json!(m)));
    out.retain(|v| s.valid(schema, v));
    out
}

/// The schema of `FeatureValue`'s branch of JSON type `t`.
fn value_branch<'a>(s: &Schemas<'a>, t: &str) -> &'a Value {
    s.resolve(s.named("FeatureValue"))["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| s.resolve(b))
        .find(|b| b["type"] == t || (t == "string" && b.get("anyOf").is_some()))
        .unwrap()
}

/// Boundary feature values: from every branch of `FeatureValue`.
fn feature_values(s: &Schemas<'_>) -> Vec<Value> {
    let mut out = numbers(s, value_branch(s, "number"));
    out.extend(
        strings(s, value_branch(s, "string"))
            .into_iter()
            .map(Value::from),
    );
    out.extend([json!(true), json!(false)]);
    let vector = value_branch(s, "array");
    let most = vector["maxItems"].as_u64().unwrap() as usize;
    for x in numbers(s, &vector["items"]) {
        out.push(json!([x.clone()]));
        out.push(Value::Array(vec![x; most]));
    }
    out.push(json!([]));
    let schema = s.named("FeatureValue");
    for v in &out {
        assert!(s.valid(schema, v), "feature value {v} is not valid");
    }
    out
}

/// Boundary feature objects, each with `base` (the policy's own features):
/// one extra feature of every boundary value under every boundary name, and
/// the most features the schema allows.
fn feature_objects(s: &Schemas<'_>, base: &Value) -> Vec<Value> {
    let features = s.named("Features");
    let names = strings(s, &features["propertyNames"]);
    let mut out = vec![];
    for v in feature_values(s) {
        let mut o = base.clone();
        o["extra"] = v;
        out.push(o);
    }
    for name in &names {
        let mut o = base.clone();
        o[name.as_str()] = json!(1);
        out.push(o);
    }
    let most = features["maxProperties"].as_u64().unwrap() as usize;
    let mut o = base.clone();
    let longest = names.iter().max_by_key(|n| n.chars().count()).unwrap();
    for i in 0.. {
        if o.as_object().unwrap().len() == most {
            break;
        }
        let name: String = format!("{i:03}")
            .chars()
            .chain(longest.chars().skip(3))
            .collect();
        o[name] = json!(i);
    }
    out.push(o);
    for o in &out {
        s.check(features, o).unwrap();
    }
    out
}

// ---- sending --------------------------------------------------------------------

async fn send(app: &TestApp, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
    let mut req = app.client.request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        format!("{}{path}", app.address),
    );
    if let Some(body) = body {
        req = req
            .header("content-type", "application/json")
            .body(serde_json::to_vec(body).unwrap());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Sends `body` to `path` (POST) after checking it is valid under the
/// operation's request schema; asserts it is not refused as malformed.
/// Returns the status and the answer.
async fn accepted(s: &Schemas<'_>, app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let schema = request_schema(s, path);
    if let Err(e) = s.check(schema, &body) {
        panic!("the generator built a request the schema refuses: {e}");
    }
    s.sent.fetch_add(1, Ordering::Relaxed);
    let (status, answer) = send(app, "POST", path, Some(&body)).await;
    let code = answer["error"]["code"].as_str().unwrap_or("");
    assert!(
        !(status == 400 && MALFORMED.contains(&code)),
        "schema-valid request refused as malformed: POST {path} {} -> {status} {answer}",
        shorten(&body)
    );
    assert!(
        documented(s.doc, path, "post", status),
        "POST {path} answered {status}, which its document does not list: {answer}"
    );
    (status, answer)
}

/// Sends `body`, which must be invalid under the operation's schema, and
/// asserts a 400 whose `field` is `field` or below it.
async fn refused(s: &Schemas<'_>, app: &TestApp, path: &str, body: Value, field: &str) {
    let schema = request_schema(s, path);
    assert!(
        !s.valid(schema, &body),
        "expected the schema to refuse {}",
        shorten(&body)
    );
    s.sent.fetch_add(1, Ordering::Relaxed);
    let (status, answer) = send(app, "POST", path, Some(&body)).await;
    let got = answer["error"]["field"].as_str().unwrap_or("");
    assert!(
        status == 400
            && (got == field
                || got.starts_with(&format!("{field}."))
                || got.starts_with(&format!("{field}["))),
        "POST {path} {}: expected 400 naming {field}, got {status} {answer}",
        shorten(&body)
    );
}

fn shorten(v: &Value) -> String {
    let t = v.to_string();
    if t.len() > 300 {
        format!(
            "{}… ({} bytes)",
            &t[..t.char_indices().nth(300).unwrap().0],
            t.len()
        )
    } else {
        t
    }
}

fn request_schema<'a>(s: &Schemas<'a>, path: &str) -> &'a Value {
    let template = if path.starts_with("/v1/events/") {
        "/v1/events/{event_id}/activate"
    } else {
        path
    };
    &s.doc["paths"][template]["post"]["requestBody"]["content"]["application/json"]["schema"]
}

fn documented(doc: &Value, path: &str, method: &str, status: u16) -> bool {
    let template = if path.starts_with("/v1/events/") {
        "/v1/events/{event_id}/activate"
    } else {
        path
    };
    doc["paths"][template][method]["responses"]
        .get(status.to_string())
        .is_some()
}

fn with(base: &Value, key: &str, v: Value) -> Value {
    let mut b = base.clone();
    b[key] = v;
    b
}

// ---- the tests --------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_and_every_other_method_is_405_with_allow() {
    let app = app().await;
    let doc = document(&app).await;
    let paths = doc["paths"].as_object().unwrap();
    // Every route the server guards, and the health checks, is documented.
    for (path, _) in nudge::http::auth::ROUTE_ROLES {
        assert!(paths.contains_key(*path), "{path} is not documented");
    }
    for path in ["/healthz", "/readyz"] {
        assert!(paths.contains_key(path), "{path} is not documented");
    }
    for (template, item) in paths {
        let declared: BTreeSet<String> = item
            .as_object()
            .unwrap()
            .keys()
            .filter(|m| METHODS.contains(&m.to_uppercase().as_str()))
            .map(|m| m.to_uppercase())
            .collect();
        assert!(!declared.is_empty(), "{template}");
        let path = template
            .replace("{event_id}", "never-decided")
            .replace("{id}", "push");
        for method in METHODS {
            if declared.contains(*method) {
                let (status, body) = send(&app, method, &path, None).await;
                assert!(
                    documented(&doc, template, &method.to_lowercase(), status),
                    "{method} {path} answered {status} {body}, not in its document"
                );
                assert!(
                    status != 404 || body["error"]["code"] != "not_found",
                    "{method} {path}: no such route"
                );
                continue;
            }
            let r = app
                .client
                .request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    format!("{}{path}", app.address),
                )
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 405, "{method} {path}");
            let allow: BTreeSet<String> = r
                .headers()
                .get("allow")
                .unwrap_or_else(|| panic!("{method} {path}: 405 without Allow"))
                .to_str()
                .unwrap()
                .split(',')
                .map(|m| m.trim().to_string())
                .collect();
            assert_eq!(allow, declared, "{method} {path}: Allow");
            if *method != "HEAD" {
                let body: Value = r.json().await.unwrap();
                assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
            }
        }
    }
    // HEAD is not served (so not listed in Allow).
    let r = app
        .client
        .head(format!("{}/v1/policies", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 405);
    assert_eq!(r.headers()["allow"], "GET");
    let r = app
        .client
        .get(format!("{}/v1/decide", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["allow"], "POST");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schemas_carry_the_limits_the_server_enforces() {
    let app = app().await;
    let doc = document(&app).await;
    let s = Schemas::new(&doc);
    for (name, pattern, max) in [
        ("EventId", EVENT_ID_PATTERN, MAX_EVENT_ID_LEN),
        ("UserId", EVENT_ID_PATTERN, MAX_EVENT_ID_LEN),
        ("PolicyId", POLICY_ID_PATTERN, MAX_POLICY_ID_LEN),
    ] {
        let id = s.named(name);
        assert_eq!(id["pattern"], pattern, "{name}");
        assert_eq!(id["minLength"], 1, "{name}");
        assert_eq!(id["maxLength"], max, "{name}");
    }
    // The patterns say what the checks do, character by character.
    for c in candidates() {
        let text = format!("a{c}b");
        assert_eq!(
            s.valid(s.named("EventId"), &json!(text)),
            nudge::http::check_event_id(&text, "e").is_ok(),
            "{c:?}"
        );
        assert_eq!(
            s.valid(s.named("PolicyId"), &json!(text)),
            nudge::http::check_policy_id(&text, "p").is_ok(),
            "{c:?}"
        );
    }
    let action = &s.named("ActionId")["anyOf"];
    assert_eq!(action[0]["maxLength"], MAX_ACTION_ID_LEN);
    assert_eq!(action[1]["maxLength"], MAX_ACTION_ID_LEN / 4);
    let features = s.named("Features");
    assert_eq!(features["maxProperties"], MAX_FEATURES);
    assert_eq!(
        features["propertyNames"]["anyOf"][0]["maxLength"],
        MAX_NAME_LEN
    );
    assert_eq!(value_branch(&s, "array")["maxItems"], MAX_VECTOR_LEN);
    assert_eq!(
        value_branch(&s, "string")["anyOf"][0]["maxLength"],
        MAX_STRING_LEN
    );
    let vector_items = &value_branch(&s, "array")["items"];
    assert_eq!(vector_items["maximum"], nudge::features::MAX_MAGNITUDE);
    assert_eq!(vector_items["minimum"], -nudge::features::MAX_MAGNITUDE);

    // The configurable limits are this server's.
    let decide = s.resolve(request_schema(&s, "/v1/decide"));
    assert_eq!(decide["properties"]["actions"]["maxItems"], MAX_CANDIDATES);
    assert_eq!(decide["properties"]["excluded"]["maxItems"], MAX_CANDIDATES);
    assert_eq!(decide["properties"]["k"]["maximum"], MAX_K);
    assert_eq!(decide["properties"]["k"]["minimum"], 1);
    assert_eq!(decide["required"], json!(["policy"]));
    assert_eq!(decide["additionalProperties"], false);
    let body_limit = app.settings.max_body_bytes.to_string();
    for path in ["/v1/decide", "/v1/reward", "/v1/events/{event_id}/activate"] {
        let rb = &doc["paths"][path]["post"]["requestBody"];
        assert!(
            rb["description"].as_str().unwrap().contains(&body_limit),
            "{path}: {rb}"
        );
        assert!(documented(&doc, path, "post", 413), "{path}");
    }
    assert_ne!(
        doc["paths"]["/v1/events/{event_id}/activate"]["post"]["requestBody"]["required"],
        true
    );

    let reward = s.named("RewardBody");
    let value = s.property(reward, "reward");
    assert_eq!(value["maximum"], MAX_REWARD);
    assert_eq!(value["minimum"], -MAX_REWARD);
    assert!(reward["allOf"][1]["oneOf"].is_array(), "{reward}");
    assert_eq!(reward["allOf"][0]["required"], json!(["event_id"]));
    assert_eq!(reward["allOf"][0]["additionalProperties"], false);
    assert_eq!(s.named("ActivateBody")["additionalProperties"], false);

    // Path parameters carry the id schemas.
    for (path, method, schema) in [
        ("/v1/events/{event_id}/activate", "post", "EventId"),
        ("/v1/policies/{id}", "get", "PolicyId"),
        ("/v1/policies/{id}/snapshot", "get", "PolicyId"),
        ("/v1/policies/{id}/reset", "post", "PolicyId"),
    ] {
        let param = &doc["paths"][path][method]["parameters"][0];
        assert_eq!(param["in"], "path");
        assert_eq!(param["required"], true);
        assert_eq!(
            param["schema"]["$ref"],
            format!("#/components/schemas/{schema}"),
            "{path}"
        );
        assert!(documented(&doc, path, method, 400), "{path}");
    }

    // Another server, other limits, another document.
    let other = spawn_app_with(Backend::Embedded, |s| {
        s.max_candidates = 3;
        s.max_k = 2;
        s.max_body_bytes = 4096;
    })
    .await;
    let doc = document(&other).await;
    let s = Schemas::new(&doc);
    let decide = s.resolve(request_schema(&s, "/v1/decide"));
    assert_eq!(decide["properties"]["actions"]["maxItems"], 3);
    assert_eq!(decide["properties"]["k"]["maximum"], 2);
    assert!(
        doc["paths"]["/v1/decide"]["post"]["requestBody"]["description"]
            .as_str()
            .unwrap()
            .contains("At most 4096 bytes")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_built_from_the_schema_are_never_refused_as_malformed() {
    let started = Instant::now();
    let app = app().await;
    let doc = document(&app).await;
    let s = Schemas::new(&doc);
    let decide = request_schema(&s, "/v1/decide");
    let prop = |name| s.property(decide, name);
    let push = json!({"policy": "push", "context": {"x": [0.1, 0.2, 0.3]}});
    let push_context = push["context"].clone();

    // Decide, on the disjoint policy: every optional field's boundaries.
    for id in strings(&s, prop("event_id")) {
        accepted(&s, &app, "/v1/decide", with(&push, "event_id", json!(id))).await;
    }
    accepted(&s, &app, "/v1/decide", with(&push, "event_id", Value::Null)).await;
    for id in strings(&s, prop("policy")) {
        // Well-formed ids no policy has: 404, not 400.
        let (status, _) = accepted(&s, &app, "/v1/decide", with(&push, "policy", json!(id))).await;
        assert_eq!(status, 404);
    }
    for context in feature_objects(&s, &push_context) {
        let (status, answer) =
            accepted(&s, &app, "/v1/decide", with(&push, "context", context)).await;
        assert_eq!(status, 200, "{answer}");
    }
    for k in numbers(&s, prop("k")) {
        // `k` up to the push policy's 3 arms (a policy rule); the schema's
        // maximum is tried on the ranker below.
        if k.as_f64().unwrap() <= 3.0 {
            let (status, answer) = accepted(&s, &app, "/v1/decide", with(&push, "k", k)).await;
            assert_eq!(status, 200, "{answer}");
        }
    }
    accepted(&s, &app, "/v1/decide", with(&push, "k", json!(2.0))).await;
    accepted(&s, &app, "/v1/decide", with(&push, "k", Value::Null)).await;
    for id in strings(&s, &prop("excluded")["items"]) {
        // Not an arm: 400 `unknown_action`, a policy rule, not malformed.
        accepted(&s, &app, "/v1/decide", with(&push, "excluded", json!([id]))).await;
    }
    let most = prop("excluded")["maxItems"].as_u64().unwrap() as usize;
    let excluded: Vec<Value> = (0..most).map(|i| json!(format!("arm-{i}"))).collect();
    accepted(
        &s,
        &app,
        "/v1/decide",
        with(&push, "excluded", json!(excluded)),
    )
    .await;
    let (status, answer) = accepted(
        &s,
        &app,
        "/v1/decide",
        with(&push, "excluded", json!(["a", "b"])),
    )
    .await;
    assert_eq!((status, answer["action"].as_str()), (200, Some("c")));
    for defer in [true, false] {
        accepted(&s, &app, "/v1/decide", with(&push, "defer", json!(defer))).await;
    }
    for user in strings(&s, prop("user")) {
        accepted(&s, &app, "/v1/decide", with(&push, "user", json!(user))).await;
    }
    // Real zones only: which names exist is the time-zone database's.
    for zone in [
        "Europe/Paris",
        "UTC",
        "America/Argentina/Buenos_Aires",
        "Etc/GMT+5",
    ] {
        accepted(&s, &app, "/v1/decide", with(&push, "timezone", json!(zone))).await;
    }

    // Decide, on the shared policy: candidates and slates at their limits.
    let action = |id: String, features: Value| json!({"id": id, "features": features});
    let item = json!({"i": [1.0, 0.5]});
    let ranker = |actions: Vec<Value>| json!({"policy": "ranker", "context": {"u": [0.2, 0.4]}, "actions": actions});
    let action_schema = &prop("actions")["items"];
    let ids = strings(&s, s.property(action_schema, "id"));
    for id in &ids {
        let (status, answer) = accepted(
            &s,
            &app,
            "/v1/decide",
            ranker(vec![action(id.clone(), item.clone())]),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    for features in feature_objects(&s, &item).into_iter().step_by(3) {
        let (status, answer) = accepted(
            &s,
            &app,
            "/v1/decide",
            ranker(vec![action("a".into(), features)]),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
    }
    let most = prop("actions")["maxItems"].as_u64().unwrap() as usize;
    let longest = ids.iter().max_by_key(|i| i.len()).unwrap();
    let many: Vec<Value> = (0..most)
        .map(|i| {
            let id: String = format!("{i:03}")
                .chars()
                .chain(longest.chars().skip(3))
                .collect();
            action(id, item.clone())
        })
        .collect();
    let k = prop("k")["maximum"].as_u64().unwrap();
    let mut body = ranker(many.clone());
    body["k"] = json!(k);
    body["excluded"] = json!([many[0]["id"]]);
    let (status, answer) = accepted(&s, &app, "/v1/decide", body).await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer["ranking"].as_array().unwrap().len() >= k as usize,
        "{answer}"
    );

    // Rewards: on the windowed policy (range ±1e12, the widest), for
    // events decided with every boundary id.
    let reward = request_schema(&s, "/v1/reward");
    let ids = strings(&s, s.property(reward, "event_id"));
    for (n, id) in ids.iter().enumerate() {
        let id = &variant(&format!("w{n}"), id);
        let (status, answer) = accepted(
            &s,
            &app,
            "/v1/decide",
            json!({"policy": "windowed", "event_id": id, "context": {"x": [0.0, 1.0]}}),
        )
        .await;
        assert_eq!(status, 200, "{answer}");
        for value in numbers(&s, s.property(reward, "reward")) {
            let mut body = json!({"event_id": id, "reward": value});
            if n % 2 == 0 {
                body["policy"] = json!("windowed");
                body["signals"] = Value::Null;
            }
            let (status, answer) = accepted(&s, &app, "/v1/reward", body).await;
            assert_eq!(status, 202, "{answer}");
        }
    }
    // Signals, and the other optional fields, on the push policy (each on
    // its own decision: push learns the first reward only).
    let decide_push = |id: String| json!({"policy": "push", "event_id": id, "context": {"x": [0.0, 1.0, 0.0]}, "k": 2});
    let signal = &s.resolve(s.property(reward, "signals"))["additionalProperties"];
    for (n, v) in numbers(&s, signal).into_iter().enumerate() {
        // Extreme values overflow the policy's range: 400
        // `reward_out_of_range`, a policy rule.
        accepted(&s, &app, "/v1/decide", decide_push(format!("sig-{n}"))).await;
        let body =
            json!({"event_id": format!("sig-{n}"), "signals": {"opened": v}, "reward": null});
        accepted(&s, &app, "/v1/reward", body).await;
    }
    for (n, id) in strings(&s, s.property(reward, "action"))
        .into_iter()
        .enumerate()
    {
        // Not in the slate: 400 `unknown_action`, the decision's rule.
        accepted(&s, &app, "/v1/decide", decide_push(format!("act-{n}"))).await;
        let body = json!({"event_id": format!("act-{n}"), "reward": 1, "action": id});
        accepted(&s, &app, "/v1/reward", body).await;
    }
    for id in strings(&s, s.property(reward, "policy")) {
        let body = json!({"event_id": "act-0", "reward": 1, "policy": id});
        let (status, _) = accepted(&s, &app, "/v1/reward", body).await;
        assert_eq!(status, 404);
    }
    let (_, decided) = accepted(&s, &app, "/v1/decide", decide_push("second".into())).await;
    let body = json!({"event_id": "second", "signals": {"opened": 1}, "action": decided["ranking"][1]["id"], "policy": "push"});
    let (status, answer) = accepted(&s, &app, "/v1/reward", body).await;
    assert_eq!(status, 202, "{answer}");

    // Activations: every body the schema allows, on deferred decisions with
    // boundary ids.
    let bodies = [
        None,
        Some(json!({})),
        Some(json!({"policy": null})),
        Some(json!({"policy": "push"})),
    ];
    for (n, id) in strings(&s, s.named("EventId")).iter().enumerate() {
        let id = variant(&format!("d{n}"), id);
        let deferred = json!({"policy": "push", "event_id": id, "context": {"x": [0.0, 0.0, 1.0]}, "defer": true});
        accepted(&s, &app, "/v1/decide", deferred).await;
        let body = &bodies[n % bodies.len()];
        let path = format!("/v1/events/{id}/activate");
        if let Some(body) = body {
            let (status, answer) = accepted(&s, &app, &path, body.clone()).await;
            assert_eq!(status, 200, "{answer}");
        } else {
            let (status, answer) = send(&app, "POST", &path, None).await;
            assert_eq!(status, 200, "{answer}");
        }
    }
    for id in strings(&s, s.named("PolicyId")) {
        let (status, _) = accepted(
            &s,
            &app,
            "/v1/events/never-decided/activate",
            json!({ "policy": id }),
        )
        .await;
        assert_eq!(status, 404);
    }
    // Policy paths with boundary ids: 200 or 404, never 400.
    for id in strings(&s, s.named("PolicyId")) {
        for path in [
            format!("/v1/policies/{id}"),
            format!("/v1/policies/{id}/snapshot"),
        ] {
            let (status, answer) = send(&app, "GET", &path, None).await;
            assert_eq!(status, 404, "{path}: {answer}");
        }
    }
    let sent = s.sent.load(Ordering::Relaxed);
    eprintln!("{sent} schema-valid requests in {:.2?}", started.elapsed());
    assert!(sent > 100, "{sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_just_past_each_bound_is_refused_naming_its_field() {
    let started = Instant::now();
    let app = app().await;
    let doc = document(&app).await;
    let s = Schemas::new(&doc);
    let decide = request_schema(&s, "/v1/decide");
    let prop = |name| s.property(decide, name);
    let push = json!({"policy": "push", "context": {"x": [0.1, 0.2, 0.3]}});

    for id in bad_strings(&s, prop("event_id")) {
        refused(
            &s,
            &app,
            "/v1/decide",
            with(&push, "event_id", json!(id)),
            "event_id",
        )
        .await;
    }
    for id in bad_strings(&s, prop("policy")) {
        refused(
            &s,
            &app,
            "/v1/decide",
            with(&push, "policy", json!(id)),
            "policy",
        )
        .await;
    }
    refused(&s, &app, "/v1/decide", json!({"context": {}}), "policy").await;
    refused(
        &s,
        &app,
        "/v1/decide",
        with(&push, "surprise", json!(1)),
        "surprise",
    )
    .await;
    // The user and the time zone: every string just outside the schema
    // (too long, a character outside the pattern), and a zone name the
    // schema allows but the time-zone database does not know.
    for bad in bad_strings(&s, prop("user")) {
        refused(
            &s,
            &app,
            "/v1/decide",
            with(&push, "user", json!(bad)),
            "user",
        )
        .await;
    }
    for bad in bad_strings(&s, prop("timezone")) {
        refused(
            &s,
            &app,
            "/v1/decide",
            with(&push, "timezone", json!(bad)),
            "timezone",
        )
        .await;
    }
    let zone = with(&push, "timezone", json!("Mars/Olympus_Mons"));
    let (status, answer) = send(&app, "POST", "/v1/decide", Some(&zone)).await;
    assert_eq!(
        (status, answer["error"]["field"].as_str()),
        (400, Some("timezone")),
        "{answer}"
    );
    let k = prop("k");
    for bad in [
        json!(k["minimum"].as_u64().unwrap() - 1),
        json!(k["maximum"].as_u64().unwrap() + 1),
        json!(1.5),
        json!(-1),
        json!("1"),
    ] {
        refused(&s, &app, "/v1/decide", with(&push, "k", bad), "k").await;
    }
    // Candidates and exclusions: one too many.
    let most = prop("actions")["maxItems"].as_u64().unwrap() as usize;
    let item = json!({"i": [1.0, 0.5]});
    let actions: Vec<Value> = (0..=most)
        .map(|i| json!({"id": format!("a{i}"), "features": item}))
        .collect();
    let ranker = json!({"policy": "ranker", "context": {"u": [0.2, 0.4]}, "actions": actions});
    refused(&s, &app, "/v1/decide", ranker.clone(), "actions").await;
    let excluded: Vec<Value> = (0..=most).map(|i| json!(format!("a{i}"))).collect();
    refused(
        &s,
        &app,
        "/v1/decide",
        with(&push, "excluded", json!(excluded)),
        "excluded",
    )
    .await;
    let action_id = s.property(&prop("actions")["items"], "id");
    for id in bad_strings(&s, action_id) {
        let body = with(&ranker, "actions", json!([{"id": id, "features": item}]));
        refused(&s, &app, "/v1/decide", body, "actions[0].id").await;
    }
    // Features: names, values, counts.
    let features = s.named("Features");
    for name in bad_strings(&s, &features["propertyNames"]) {
        let mut context = push["context"].clone();
        context[name] = json!(1);
        refused(
            &s,
            &app,
            "/v1/decide",
            with(&push, "context", context),
            "context",
        )
        .await;
    }
    let most = features["maxProperties"].as_u64().unwrap() as usize;
    let mut context = push["context"].clone();
    for i in 0..most {
        context[format!("f{i}")] = json!(i);
    }
    refused(
        &s,
        &app,
        "/v1/decide",
        with(&push, "context", context),
        "context",
    )
    .await;
    for text in bad_strings(&s, value_branch(&s, "string")) {
        let context = json!({"x": [0.1, 0.2, 0.3], "plan": text});
        refused(
            &s,
            &app,
            "/v1/decide",
            with(&push, "context", context),
            "context.plan",
        )
        .await;
    }
    let vector = value_branch(&s, "array");
    let too_long = vec![0.5; vector["maxItems"].as_u64().unwrap() as usize + 1];
    let context = json!({"x": too_long});
    refused(
        &s,
        &app,
        "/v1/decide",
        with(&push, "context", context),
        "context.x",
    )
    .await;
    let past = vector["items"]["maximum"].as_f64().unwrap().next_up();
    let context = json!({"x": [past, 0.0, 0.0]});
    refused(
        &s,
        &app,
        "/v1/decide",
        with(&push, "context", context),
        "context.x",
    )
    .await;
    for bad in [json!(null), json!({"a": 1}), json!([[1.0]])] {
        let context = json!({"x": bad});
        refused(
            &s,
            &app,
            "/v1/decide",
            with(&push, "context", context),
            "context.x",
        )
        .await;
    }
    // A number no double holds (raw JSON text: no `Value` holds it either).
    let (status, answer) = app
        .post_raw(
            "/v1/decide",
            br#"{"policy": "push", "context": {"x": [0, 0, 0], "n": 1e309}}"#.to_vec(),
        )
        .await;
    assert_eq!(
        (status, answer["error"]["field"].as_str()),
        (400, Some("context.n")),
        "{answer}"
    );

    // Rewards.
    let reward = request_schema(&s, "/v1/reward");
    for id in bad_strings(&s, s.property(reward, "event_id")) {
        refused(
            &s,
            &app,
            "/v1/reward",
            json!({"event_id": id, "reward": 0}),
            "event_id",
        )
        .await;
    }
    let value = s.property(reward, "reward");
    for past in [
        value["maximum"].as_f64().unwrap().next_up(),
        value["minimum"].as_f64().unwrap().next_down(),
    ] {
        accepted(
            &s,
            &app,
            "/v1/decide",
            json!({"policy": "windowed", "event_id": "past", "context": {"x": [0.0, 1.0]}}),
        )
        .await;
        let body = json!({"event_id": "past", "reward": past});
        refused(&s, &app, "/v1/reward", body, "reward").await;
    }
    for body in [
        json!({"event_id": "past", "reward": 1, "signals": {"opened": 1}}),
        json!({"event_id": "past"}),
        json!({"event_id": "past", "reward": null, "signals": null}),
    ] {
        refused(&s, &app, "/v1/reward", body, "reward").await;
    }
    refused(&s, &app, "/v1/reward", json!({"reward": 1}), "event_id").await;
    for id in bad_strings(&s, s.property(reward, "policy")) {
        let body = json!({"event_id": "past", "reward": 0, "policy": id});
        refused(&s, &app, "/v1/reward", body, "policy").await;
    }
    refused(
        &s,
        &app,
        "/v1/reward",
        json!({"event_id": "past", "signals": {"opened": "1"}}),
        "signals.opened",
    )
    .await;

    // Activations and path ids.
    for id in bad_strings(&s, s.property(s.named("ActivateBody"), "policy")) {
        refused(
            &s,
            &app,
            "/v1/events/past/activate",
            json!({"policy": id}),
            "policy",
        )
        .await;
    }
    for id in bad_strings(&s, s.named("EventId")) {
        if id.is_empty() || id.contains(['/', '?', '#', '%']) || id.chars().any(char::is_control) {
            continue; // not one path segment
        }
        let path = format!("/v1/events/{}/activate", encode(&id));
        let (status, answer) = send(&app, "POST", &path, None).await;
        assert_eq!(
            (status, answer["error"]["field"].as_str()),
            (400, Some("event_id")),
            "{path}: {answer}"
        );
    }
    for id in bad_strings(&s, s.named("PolicyId")) {
        if id.is_empty() || id.contains(['/', '?', '#', '%']) || id.chars().any(char::is_control) {
            continue;
        }
        for (method, path) in [
            ("GET", format!("/v1/policies/{}", encode(&id))),
            ("GET", format!("/v1/policies/{}/snapshot", encode(&id))),
            ("POST", format!("/v1/policies/{}/reset", encode(&id))),
        ] {
            let (status, answer) = send(&app, method, &path, None).await;
            assert_eq!(
                (status, answer["error"]["field"].as_str()),
                (400, Some("id")),
                "{method} {path}: {answer}"
            );
        }
    }
    eprintln!(
        "{} schema-invalid requests refused in {:.2?}",
        s.sent.load(Ordering::Relaxed),
        started.elapsed()
    );
}

/// Percent-encodes a path segment.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `id` with its start replaced by `prefix` (same length when it is
/// longer): an id of the same shape, unused so far.
fn variant(prefix: &str, id: &str) -> String {
    if id.len() > prefix.len() {
        format!("{prefix}{}", &id[prefix.len()..])
    } else {
        prefix.to_string()
    }
}
