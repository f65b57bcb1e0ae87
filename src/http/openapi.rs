//! `GET /openapi.json`: the OpenAPI 3 document, generated from the handler
//! annotations and request/response types, so it cannot drift from them.

use super::{auth, decide, error, health, policies, reward};
use actix_web::HttpResponse;
use utoipa::OpenApi;
use utoipa::openapi::response::Response;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Ref, RefOr};

/// The API description.
#[derive(OpenApi)]
#[openapi(
    info(title = "Nudge", description = "Contextual-bandit decisions with true propensities"),
    paths(
        decide::decide,
        reward::reward,
        reward::activate,
        policies::list,
        policies::describe,
        policies::snapshot,
        policies::reset,
        health::healthz,
        health::readyz,
        health::metrics,
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
    )),
    modifiers(&ApiKeys)
)]
pub struct ApiDoc;

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
                    ("401", "No API key, or an unknown one"),
                    ("403", "The key's role does not cover this route"),
                    ("429", "Over the key's rate limit (see `Retry-After`)"),
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

/// Serves the document.
pub async fn document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
