//! The OpenAPI 3 document, generated from the handlers and types (utoipa).

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::Required;
use utoipa::{Modify, OpenApi};

use crate::http::{
    audit, error, health, import, keys, leaks, metrics, policy, proxy_auth, usage, usage_limits,
    verify, webhooks,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "keyledger", description = "Event-sourced API-key lifecycle service"),
    paths(
        keys::create, import::import, keys::list, keys::get, keys::update, keys::deactivate,
        keys::reactivate, keys::delete, keys::rotate, usage_limits::credits, usage_limits::set_owner_limits, usage_limits::owner,
        verify::verify, proxy_auth::auth, proxy_auth::envoy, audit::list, audit::key_events,
        webhooks::create, webhooks::list, webhooks::get, webhooks::update, webhooks::delete,
        webhooks::rotate_secret, webhooks::deliveries, webhooks::retry, leaks::report, leaks::partner, policy::get, policy::set,
        usage::key_usage, usage::tenant_usage,
        health::live, health::ready, metrics::render, document
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail, crate::import::ImportItem)),
    modifiers(&BearerAuth, &OptionalBodies),
    tags((name = "keys"), (name = "verification"), (name = "audit"), (name = "webhooks"), (name = "leaks"), (name = "policy"), (name = "usage"), (name = "health"))
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

/// Operations whose JSON body may be left out (API.md: deactivate takes an
/// optional `{"reason"}`, rotate an optional grace period). utoipa marks every
/// declared body required, and `Option<T>` would instead document a `null`
/// body, which the handlers refuse; so the flag is cleared here.
const OPTIONAL_BODIES: [&str; 2] = ["/v1/keys/{id}/deactivate", "/v1/keys/{id}/rotate"];

struct OptionalBodies;

impl Modify for OptionalBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for path in OPTIONAL_BODIES {
            let body = openapi
                .paths
                .paths
                .get_mut(path)
                .and_then(|item| item.post.as_mut())
                .and_then(|op| op.request_body.as_mut());
            if let Some(body) = body {
                body.required = Some(Required::False);
            }
        }
    }
}

/// GET /openapi.json
#[utoipa::path(get, path = "/openapi.json", tag = "health", operation_id = "openapi",
    responses((status = 200, description = "This OpenAPI 3 document", body = Object,
        content_type = "application/json")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body_required(path: &str) -> Option<Required> {
        let doc = ApiDoc::openapi();
        let item = doc.paths.paths.get(path)?;
        let op = item.post.as_ref().or(item.patch.as_ref())?;
        op.request_body.as_ref()?.required.clone()
    }

    /// Every operation of the document, as (method, path, operationId).
    fn operations() -> Vec<(String, String, Option<String>)> {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("document");
        let mut ops = Vec::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                if !matches!(
                    method.as_str(),
                    "get" | "put" | "post" | "delete" | "options" | "head" | "patch" | "trace"
                ) {
                    continue;
                }
                let id = op["operationId"].as_str().map(str::to_owned);
                ops.push((method.clone(), path.clone(), id));
            }
        }
        ops
    }

    #[test]
    fn every_operation_has_a_unique_operation_id() {
        let ops = operations();
        assert!(ops.len() >= 15, "{ops:?}");
        let mut seen = std::collections::BTreeMap::new();
        for (method, path, id) in &ops {
            let id = id
                .as_deref()
                .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            assert!(!id.is_empty(), "{method} {path}: empty operationId");
            if let Some(first) = seen.insert(id, format!("{method} {path}")) {
                panic!("operationId {id:?} of {method} {path} is also that of {first}");
            }
        }
    }

    /// Clients generate method names from these: they are part of the interface.
    #[test]
    fn operation_ids_are_the_stable_names() {
        let ops = operations();
        let id = |method: &str, path: &str| {
            ops.iter()
                .find(|(m, p, _)| m == method && p == path)
                .and_then(|(_, _, id)| id.clone())
                .unwrap_or_else(|| panic!("{method} {path} missing"))
        };
        for (method, path, want) in [
            ("post", "/v1/keys", "createKey"),
            ("get", "/v1/keys", "listKeys"),
            ("get", "/v1/keys/{id}", "getKey"),
            ("patch", "/v1/keys/{id}", "updateKey"),
            ("delete", "/v1/keys/{id}", "deleteKey"),
            ("post", "/v1/keys/{id}/deactivate", "deactivateKey"),
            ("post", "/v1/keys/{id}/reactivate", "reactivateKey"),
            ("post", "/v1/keys/{id}/rotate", "rotateKey"),
            ("get", "/v1/keys/{id}/events", "listKeyEvents"),
            ("post", "/v1/keys/verify", "verifyKey"),
            ("get", "/v1/auth", "authorize"),
            ("get", "/v1/audit", "listAuditEvents"),
            ("get", "/healthz", "health"),
            ("get", "/readyz", "ready"),
            ("get", "/metrics", "metrics"),
            ("get", "/openapi.json", "openapi"),
        ] {
            assert_eq!(id(method, path), want, "{method} {path}");
        }
    }

    #[test]
    fn a_keys_history_is_documented_as_paged() {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("document");
        let op = &doc["paths"]["/v1/keys/{id}/events"]["get"];
        let params: Vec<(&str, &str)> = op["parameters"]
            .as_array()
            .expect("parameters")
            .iter()
            .filter_map(|p| Some((p["name"].as_str()?, p["in"].as_str()?)))
            .collect();
        for want in [("id", "path"), ("limit", "query"), ("cursor", "query")] {
            assert!(params.contains(&want), "{want:?} in {params:?}");
        }
        assert!(op["responses"]["422"].is_object());
        let history = &doc["components"]["schemas"]["KeyHistory"];
        assert!(
            history["properties"]["next_cursor"].is_object(),
            "{history}"
        );
        // Always sent, `null` on the last page.
        assert!(
            history["required"]
                .as_array()
                .is_some_and(|r| r.contains(&"next_cursor".into())),
            "{history}"
        );
    }

    #[test]
    fn bodies_the_handlers_accept_absent_are_documented_as_optional() {
        for path in OPTIONAL_BODIES {
            assert!(
                matches!(body_required(path), Some(Required::False)),
                "{path}"
            );
        }
        for path in ["/v1/keys", "/v1/keys/verify", "/v1/keys/{id}"] {
            assert!(
                matches!(body_required(path), Some(Required::True)),
                "{path}"
            );
        }
    }
}
