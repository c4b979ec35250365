//! Routes and middleware.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestId, PropagateRequestIdLayer, SetRequestId, SetRequestIdLayer,
};

use crate::error::Error;
use crate::http::{
    audit, console, health, import, keys, leaks, metrics, openapi, policy, proxy_auth,
    state::AppState, usage, usage_limits, verify, webhooks,
};

/// The whole HTTP service: request ids around the router.
pub type App = SetRequestId<PropagateRequestId<Router>, MakeRequestUuid>;

/// Request ids wrap the router once instead of each route: `Router::layer`
/// wraps every route, and a route's service (with its layers) is cloned for
/// every request. Metrics and the panic guard stay per route, since they need
/// the matched route and the handler's outcome; the metrics layer also logs
/// each request at debug level (what tower-http's `TraceLayer` did, without
/// its per-request span, timer and response body wrapper).
pub fn app(state: AppState) -> App {
    ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(PropagateRequestIdLayer::x_request_id())
        .service(router(state))
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/keys", post(keys::create).get(keys::list))
        .route("/v1/keys/verify", post(verify::verify))
        .route("/v1/keys/import", post(import::import))
        .route("/v1/auth", get(proxy_auth::auth))
        .route("/v1/auth/envoy/{*path}", any(proxy_auth::envoy))
        .route(
            "/v1/keys/{id}",
            get(keys::get).patch(keys::update).delete(keys::delete),
        )
        .route("/v1/keys/{id}/deactivate", post(keys::deactivate))
        .route("/v1/keys/{id}/reactivate", post(keys::reactivate))
        .route("/v1/keys/{id}/rotate", post(keys::rotate))
        .route("/v1/keys/{id}/credits", post(usage_limits::credits))
        .route("/v1/owners/{owner}", get(usage_limits::owner))
        .route(
            "/v1/owners/{owner}/ratelimits",
            put(usage_limits::set_owner_limits),
        )
        .route("/v1/keys/{id}/events", get(audit::key_events))
        .route("/v1/keys/{id}/usage", get(usage::key_usage))
        .route("/v1/usage", get(usage::tenant_usage))
        .route("/v1/policy", get(policy::get).put(policy::set))
        .route("/v1/leaks/report", post(leaks::report))
        .route("/v1/leaks/{reporter}", post(leaks::partner))
        .route("/v1/webhooks", post(webhooks::create).get(webhooks::list))
        .route(
            "/v1/webhooks/{id}",
            get(webhooks::get)
                .patch(webhooks::update)
                .delete(webhooks::delete),
        )
        .route(
            "/v1/webhooks/{id}/rotate-secret",
            post(webhooks::rotate_secret),
        )
        .route("/v1/webhooks/{id}/deliveries", get(webhooks::deliveries))
        .route(
            "/v1/webhooks/{id}/deliveries/{msg_id}/retry",
            post(webhooks::retry),
        )
        .route("/v1/audit", get(audit::list))
        .route("/healthz", get(health::live))
        .route("/readyz", get(health::ready))
        .route("/metrics", get(metrics::render))
        .route("/openapi.json", get(openapi::document))
        .route("/", get(console::index))
        .route("/console", get(console::index))
        .route("/console/console.js", get(console::script))
        .route("/console/console.css", get(console::style))
        .fallback(|| async { Error::RouteNotFound })
        .method_not_allowed_fallback(|| async { Error::MethodNotAllowed })
        .layer(CatchPanicLayer::custom(|_panic| panic_response()))
        // Outside the panic catcher, so that a panic is recorded as the 500 it becomes.
        .layer(metrics::TrackLayer)
        .with_state(state)
}

fn panic_response() -> Response {
    let mut response = Error::internal("handler panicked").into_response();
    *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    response
}
