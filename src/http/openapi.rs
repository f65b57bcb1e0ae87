//! `GET /openapi.json`: the OpenAPI 3.1 document, generated from the handler
//! annotations and request/response types, so it cannot drift from them.
//!
//! The contract: every rule the server enforces on the shape of a request is
//! in the schemas — the characters and lengths of ids, ranges, sizes,
//! required fields, "exactly one of `reward` or `signals`" — with the limits
//! taken from the constants the checks use, and the configurable ones
//! (`NUDGE_MAX_CANDIDATES`, `NUDGE_MAX_K`, `NUDGE_MAX_BODY_BYTES`) from the
//! serving replica's settings ([`document_for`]). A request valid under the
//! schema is never refused as malformed; what the schema cannot know, because
//! a policy file decides it (its feature names and types, its arms, its
//! signals and reward range), is stated in the descriptions.

use super::{
    AppState, EVENT_ID_PATTERN, MAX_ACTION_ID_LEN, MAX_EVENT_ID_LEN, MAX_POLICY_ID_LEN,
    POLICY_ID_PATTERN,
};
use super::{auth, decide, error, health, monitor, policies, reward};
use crate::config::Settings;
use crate::features::{MAX_FEATURES, MAX_MAGNITUDE, MAX_NAME_LEN, MAX_STRING_LEN, MAX_VECTOR_LEN};
use crate::policy::spec::MAX_REWARD;
use actix_web::{HttpResponse, web};
use utoipa::openapi::response::Response;
use utoipa::openapi::schema::{
    AllOfBuilder, AnyOfBuilder, ArrayBuilder, Object, ObjectBuilder, OneOfBuilder, Schema, Type,
};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};
use utoipa::{OpenApi, PartialSchema, ToSchema};

/// The API description (with the default limits; [`document_for`] puts a
/// server's own in).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Nudge",
        description = "Contextual-bandit decisions with true propensities.\n\n\
            Every error is `{\"error\": {\"code\", \"message\", \"field\"?}}` (`ErrorBody`). \
            A method a path does not list answers 405 `method_not_allowed` with an `Allow` \
            header naming the methods it has (`HEAD` and `OPTIONS` included: they are not \
            served); a path not listed answers 404 `not_found`. Request bodies are read as \
            JSON whatever their `Content-Type`; a body that cannot be read is 400 \
            `invalid_body`, one over the size limit 413 `body_too_large`."
    ),
    paths(
        decide::decide,
        reward::reward,
        reward::activate,
        policies::list,
        policies::describe,
        policies::snapshot,
        policies::reset,
        policies::reload,
        policies::promote,
        monitor::timeseries,
        monitor::overview,
        monitor::page,
        health::healthz,
        health::readyz,
        health::metrics,
        document,
    ),
    components(schemas(
        decide::DecideBody,
        decide::DecideResponse,
        decide::Ranked,
        decide::ActionSchema,
        reward::RewardBody,
        reward::ActivateBody,
        reward::Accepted,
        error::ErrorBody,
        error::ErrorDetail,
        EventId,
        UserId,
        PolicyId,
        ActionId,
        Features,
        FeatureValue,
        SignalValue,
        ExcludedBy,
        AcceptedStatus,
        monitor::Timeseries,
        monitor::Span,
        monitor::ArmSpan,
        monitor::Scope,
        monitor::Overview,
        monitor::PolicyOverview,
        monitor::Health,
    )),
    modifiers(&ApiKeys, &Contract)
)]
pub struct ApiDoc;

/// The document as a server with `settings` enforces it: its candidate,
/// slate and body limits in place of the defaults.
pub fn document_for(settings: &Settings) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    apply_limits(&mut doc, &Limits::of(settings));
    doc
}

/// Serves the document, with this replica's limits.
#[utoipa::path(
    get,
    path = "/openapi.json",
    responses((status = 200, description = "This document (OpenAPI 3.1, JSON)", content_type = "application/json"))
)]
pub async fn document(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(document_for(&state.settings))
}

// ---- schemas of values the server checks beyond their JSON type ----------------

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

/// Printable ASCII only: every regex dialect counts it alike, one byte a
/// character.
const PRINTABLE_ASCII: &str = r"^[\x20-\x7E]+$";
/// Any ASCII: one byte a character.
const ASCII: &str = r"^[\x00-\x7F]*$";
/// No Unicode control character (general category Cc, what
/// `char::is_control` tests).
const NO_CONTROL: &str = r"^[^\x00-\x1F\x7F-\x9F]+$";

/// A string of at most `bytes` UTF-8 bytes, as a schema: JSON Schema counts
/// characters, not bytes, so it admits up to `bytes` ASCII characters, or up
/// to `bytes / 4` of any kind (a character is at most 4 bytes). `ascii` and
/// `any` restrict the characters of each branch further.
fn at_most_bytes(bytes: usize, min: usize, ascii: &str, any: Option<&str>) -> AnyOfBuilder {
    AnyOfBuilder::new()
        .item(
            string()
                .min_length(Some(min))
                .max_length(Some(bytes))
                .pattern(Some(ascii)),
        )
        .item(
            string()
                .min_length(Some(min))
                .max_length(Some(bytes / 4))
                .pattern(any),
        )
}

/// An event id (schema only).
pub struct EventId;

impl PartialSchema for EventId {
    fn schema() -> RefOr<Schema> {
        string()
            .min_length(Some(1))
            .max_length(Some(MAX_EVENT_ID_LEN))
            .pattern(Some(EVENT_ID_PATTERN))
            .description(Some(format!(
                "An event id: 1 to {MAX_EVENT_ID_LEN} characters of `[A-Za-z0-9_.:-]` \
                 (anything else is 400 `invalid_event_id`)."
            )))
            .examples(["push-2026-11-26-u42"])
            .into()
    }
}

impl ToSchema for EventId {}

/// A user id (schema only): the rules of an event id.
pub struct UserId;

impl PartialSchema for UserId {
    fn schema() -> RefOr<Schema> {
        string()
            .min_length(Some(1))
            .max_length(Some(MAX_EVENT_ID_LEN))
            .pattern(Some(EVENT_ID_PATTERN))
            .description(Some(format!(
                "A user id: 1 to {MAX_EVENT_ID_LEN} characters of `[A-Za-z0-9_.:-]`, as an \
                 event id (anything else is 400 naming `user`)."
            )))
            .examples(["u42"])
            .into()
    }
}

impl ToSchema for UserId {}

/// A policy id (schema only).
pub struct PolicyId;

impl PartialSchema for PolicyId {
    fn schema() -> RefOr<Schema> {
        string()
            .min_length(Some(1))
            .max_length(Some(MAX_POLICY_ID_LEN))
            .pattern(Some(POLICY_ID_PATTERN))
            .description(Some(format!(
                "A policy id: 1 to {MAX_POLICY_ID_LEN} characters of `[A-Za-z0-9_.-]` \
                 (anything else is 400 `invalid_policy_id`); a well-formed id that no loaded \
                 policy has is 404 `unknown_policy`. `GET /v1/policies` lists them."
            )))
            .examples(["push_send"])
            .into()
    }
}

impl ToSchema for PolicyId {}

/// An action id (schema only).
pub struct ActionId;

impl PartialSchema for ActionId {
    fn schema() -> RefOr<Schema> {
        at_most_bytes(MAX_ACTION_ID_LEN, 1, PRINTABLE_ASCII, Some(NO_CONTROL))
            .description(Some(format!(
                "An action id: 1 to {MAX_ACTION_ID_LEN} UTF-8 bytes without control \
                 characters (Unicode Cc); anything else is 400 `invalid_field`. JSON Schema \
                 counts characters, not bytes, so the schema admits up to {MAX_ACTION_ID_LEN} \
                 printable ASCII characters, or up to {} characters of any other kind; the \
                 server also accepts a longer non-ASCII id that fits in {MAX_ACTION_ID_LEN} \
                 bytes. Arm ids (disjoint policies) are 1 to 128 characters of \
                 `[A-Za-z0-9_.-]`.",
                MAX_ACTION_ID_LEN / 4
            )))
            .examples(["send_now"])
            .into()
    }
}

impl ToSchema for ActionId {}

/// Features, of the context or of one action (schema only).
pub struct Features;

impl PartialSchema for Features {
    fn schema() -> RefOr<Schema> {
        let name = at_most_bytes(MAX_NAME_LEN, 0, ASCII, None).description(Some(format!(
            "A feature name: at most {MAX_NAME_LEN} UTF-8 bytes (the schema admits \
             {MAX_NAME_LEN} ASCII or {} other characters)",
            MAX_NAME_LEN / 4
        )));
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .max_properties(Some(MAX_FEATURES))
            .property_names(Some(name))
            .additional_properties(Some(FeatureValue::schema_ref()))
            .description(Some(format!(
                "Named features: at most {MAX_FEATURES}, each name at most {MAX_NAME_LEN} \
                 bytes and sent once (a repeated name is 400 `invalid_field`), each value a \
                 `FeatureValue`. Which names and kinds are wanted is the policy's (see \
                 `GET /v1/policies/{{id}}`, `features`): a required feature missing, a value of \
                 the wrong kind, a vector of the wrong length, a number beyond 1e9 in \
                 magnitude after the policy's standardisation, or (with `unknown = \"reject\"`) \
                 an undeclared name is 400 `invalid_feature` naming it; undeclared names are \
                 otherwise ignored."
            )))
            .examples([serde_json::json!({
                "hour_of_day": 9, "platform": "ios", "user_embedding": [0.1, 0.3, -0.2]
            })])
            .into()
    }
}

impl ToSchema for Features {}

/// One feature value (schema only).
pub struct FeatureValue;

impl FeatureValue {
    fn schema_ref() -> RefOr<Schema> {
        RefOr::Ref(Ref::from_schema_name(Self::name()))
    }
}

impl PartialSchema for FeatureValue {
    fn schema() -> RefOr<Schema> {
        let number = ObjectBuilder::new()
            .schema_type(Type::Number)
            .minimum(Some(f64::MIN))
            .maximum(Some(f64::MAX))
            .description(Some(
                "A number (a JSON number no IEEE double holds is 400 `invalid_json`); number \
                 features of the policy, standardised",
            ));
        let text = at_most_bytes(MAX_STRING_LEN, 0, ASCII, None).description(Some(format!(
            "A string of at most {MAX_STRING_LEN} UTF-8 bytes (the schema admits \
             {MAX_STRING_LEN} ASCII or {} other characters); categorical and hashed features",
            MAX_STRING_LEN / 4
        )));
        let boolean = ObjectBuilder::new()
            .schema_type(Type::Boolean)
            .description(Some("A boolean; number features read it as 0 or 1"));
        let vector = ArrayBuilder::new()
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::Number)
                    .minimum(Some(-MAX_MAGNITUDE))
                    .maximum(Some(MAX_MAGNITUDE)),
            )
            .max_items(Some(MAX_VECTOR_LEN))
            .description(Some(format!(
                "A vector of at most {MAX_VECTOR_LEN} numbers (longer is 400 `invalid_field`), \
                 each at most {MAX_MAGNITUDE:e} in magnitude (else 400 `invalid_feature`); \
                 vector features, of exactly the policy's `length`"
            )));
        OneOfBuilder::new()
            .item(number)
            .item(text)
            .item(boolean)
            .item(vector)
            .description(Some(
                "A feature value: a number, a string, a boolean or an array of numbers \
                 (anything else, e.g. null or an object, is 400 `invalid_field`)",
            ))
            .into()
    }
}

impl ToSchema for FeatureValue {}

/// One signal's value (schema only).
pub struct SignalValue;

impl PartialSchema for SignalValue {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Number)
            .minimum(Some(f64::MIN))
            .maximum(Some(f64::MAX))
            .description(Some(
                "A signal's value: a number (a JSON number no IEEE double holds is 400 \
                 `invalid_json`)",
            ))
            .into()
    }
}

impl ToSchema for SignalValue {}

/// The status of an accepted reward or activation (schema only).
pub struct AcceptedStatus;

impl PartialSchema for AcceptedStatus {
    fn schema() -> RefOr<Schema> {
        string()
            .enum_values(Some([
                "learned",
                "accumulated",
                "duplicate",
                "activated",
                "queued",
            ]))
            .into()
    }
}

impl ToSchema for AcceptedStatus {}

/// Why a ranked candidate was not eligible (schema only).
pub struct ExcludedBy;

impl PartialSchema for ExcludedBy {
    fn schema() -> RefOr<Schema> {
        string()
            .enum_values(Some(crate::guardrails::Exclusion::ALL.map(|e| e.name())))
            .description(Some(
                "Why a candidate was not eligible: `excluded` (the request's `excluded`), \
                 `cap` (a frequency cap), `gap` (the minimum gap since the last send), \
                 `quiet_hours`, `budget` (a global budget), `recovery` (the arm's recovery \
                 after a send), `unavailable` (the user's history could not be read: sends \
                 are held).",
            ))
            .into()
    }
}

impl ToSchema for ExcludedBy {}

// ---- what the derive cannot say -----------------------------------------------

/// The configurable limits the document states.
struct Limits {
    max_candidates: usize,
    max_k: usize,
    max_body_bytes: usize,
}

impl Limits {
    fn of(s: &Settings) -> Limits {
        Limits {
            max_candidates: s.max_candidates,
            max_k: s.max_k,
            max_body_bytes: s.max_body_bytes,
        }
    }
}

fn schema_mut<'a>(doc: &'a mut utoipa::openapi::OpenApi, name: &str) -> Option<&'a mut Schema> {
    match doc.components.as_mut()?.schemas.get_mut(name)? {
        RefOr::T(schema) => Some(schema),
        RefOr::Ref(_) => None,
    }
}

/// The object schema `name`, looking through the `allOf` [`Contract`] wraps
/// some in.
fn object_mut<'a>(doc: &'a mut utoipa::openapi::OpenApi, name: &str) -> Option<&'a mut Object> {
    match schema_mut(doc, name)? {
        Schema::Object(o) => Some(o),
        Schema::AllOf(all) => all.items.iter_mut().find_map(|s| match s {
            RefOr::T(Schema::Object(o)) => Some(o),
            _ => None,
        }),
        _ => None,
    }
}

/// Puts `limits` into the decide body's `actions`, `excluded` and `k`, and
/// the body size into every request body's description.
fn apply_limits(doc: &mut utoipa::openapi::OpenApi, limits: &Limits) {
    let body = object_mut(doc, "DecideBody").expect("DecideBody is an object schema");
    for list in ["actions", "excluded"] {
        match body.properties.get_mut(list) {
            Some(RefOr::T(Schema::Array(a))) => a.max_items = Some(limits.max_candidates),
            _ => panic!("DecideBody.{list} is an array schema"),
        }
    }
    match body.properties.get_mut("k") {
        Some(RefOr::T(Schema::Object(k))) => k.maximum = Some(limits.max_k.into()),
        _ => panic!("DecideBody.k is an integer schema"),
    }
    let size = format!(
        "At most {} bytes (`NUDGE_MAX_BODY_BYTES`, default {}); a larger body is 413 \
         `body_too_large`.",
        limits.max_body_bytes,
        Settings::default().max_body_bytes
    );
    for item in doc.paths.paths.values_mut() {
        for op in [&mut item.get, &mut item.post].into_iter().flatten() {
            if let Some(rb) = &mut op.request_body {
                rb.description = Some(match rb.description.take() {
                    Some(d) => format!("{d} {size}"),
                    None => size.clone(),
                });
            }
        }
    }
}

/// The rules the derive cannot express: exactly one of `reward` or
/// `signals`; the default limits.
struct Contract;

impl utoipa::Modify for Contract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        // `reward` xor `signals` (either may also be sent as null, which
        // is absent): an `allOf` of the derived object and a `oneOf`.
        let number = || ObjectBuilder::new().schema_type(Type::Number);
        let null = || ObjectBuilder::new().schema_type(Type::Null);
        let one = |present: &str, absent: &str, schema: ObjectBuilder| {
            ObjectBuilder::new()
                .required(present)
                .property(present, schema)
                .property(absent, null())
                .title(Some(present))
        };
        let exactly_one = OneOfBuilder::new()
            .item(one("reward", "signals", number()))
            .item(one(
                "signals",
                "reward",
                ObjectBuilder::new().schema_type(Type::Object),
            ))
            .description(Some(
                "Exactly one of `reward` (a number) or `signals` (an object); both, or \
                 neither, is 400 `invalid_field` naming `reward`.",
            ));
        let Some(derived) = schema_mut(openapi, "RewardBody") else {
            panic!("RewardBody is in the components");
        };
        let mut object = std::mem::replace(derived, Schema::Object(Object::new()));
        let Schema::Object(o) = &mut object else {
            panic!("RewardBody is an object schema");
        };
        let description = o.description.take();
        // No policy's range is wider than ±MAX_REWARD.
        match o.properties.get_mut("reward") {
            Some(RefOr::T(Schema::Object(reward))) => {
                reward.minimum = Some((-MAX_REWARD).into());
                reward.maximum = Some(MAX_REWARD.into());
            }
            _ => panic!("RewardBody.reward is a number schema"),
        }
        *derived = AllOfBuilder::new()
            .item(object)
            .item(exactly_one)
            .description(description)
            .into();
        apply_limits(openapi, &Limits::of(&Settings::default()));
    }
}

/// Adds the `api_key` bearer scheme, and to every guarded operation the
/// role it needs (from [`auth::ROUTE_ROLES`], as OpenAPI 3.1 role names)
/// and its 401, 403 and 429 answers.
struct ApiKeys;

impl utoipa::Modify for ApiKeys {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                Http::builder()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API key (`Authorization: Bearer <key>` or `X-Api-Key`), needed \
                         only when keys are configured. Roles: decide, read, admin.",
                    ))
                    .build(),
            ),
        );
        let error = || RefOr::Ref(Ref::from_schema_name("ErrorBody"));
        for (path, item) in openapi.paths.paths.iter_mut() {
            let Some(role) = auth::route_role(path) else {
                continue;
            };
            for op in [&mut item.get, &mut item.post].into_iter().flatten() {
                op.security = Some(vec![SecurityRequirement::new("api_key", [role.name()])]);
                let answers = [
                    (
                        "401",
                        "`unauthorized`: no API key, or an unknown one (with `WWW-Authenticate`)",
                    ),
                    (
                        "403",
                        "`forbidden`: the key's role does not cover this route",
                    ),
                    (
                        "429",
                        "`rate_limited`: over the key's rate limit (see `Retry-After`)",
                    ),
                ];
                for (status, description) in answers {
                    op.responses.responses.insert(
                        status.into(),
                        RefOr::T(
                            Response::builder()
                                .description(description)
                                .content(
                                    "application/json",
                                    utoipa::openapi::content::Content::new(Some(error())),
                                )
                                .build(),
                        ),
                    );
                }
            }
        }
    }
}
