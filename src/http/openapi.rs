//! `GET /openapi.json`: the OpenAPI 3 document, generated from the handler
//! annotations and request/response types, so it cannot drift from them.

use super::{decide, error, health, policies, reward};
use actix_web::HttpResponse;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};

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
    modifiers(&AdminToken)
)]
pub struct ApiDoc;

struct AdminToken;

impl utoipa::Modify for AdminToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// Serves the document.
pub async fn document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}
