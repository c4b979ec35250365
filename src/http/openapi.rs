//! The OpenAPI 3 document, generated from the handlers and types (utoipa).

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::http::{audit, error, health, keys, metrics, proxy_auth, verify};

#[derive(OpenApi)]
#[openapi(
    info(title = "keyledger", description = "Event-sourced API-key lifecycle service"),
    paths(
        keys::create, keys::list, keys::get, keys::update, keys::deactivate,
        keys::reactivate, keys::delete, keys::rotate, verify::verify, proxy_auth::auth, audit::list, audit::key_events,
        health::live, health::ready, metrics::render
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail)),
    modifiers(&BearerAuth),
    tags((name = "keys"), (name = "verification"), (name = "audit"), (name = "health"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// GET /openapi.json
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
