//! GET /metrics (Prometheus text format) and the middleware that records
//! request latency and key commands for every request.

use std::fmt::Write as _;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::http::AppState;
use crate::metrics::{INDEX_KEYS, PROJECTION_LAG};

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4";

/// GET /metrics
#[utoipa::path(get, path = "/metrics", tag = "health",
    responses((status = 200, description = "Prometheus text exposition format (version 0.0.4)",
        body = String, content_type = "text/plain")))]
pub async fn render(State(state): State<AppState>) -> Response {
    let mut body = state.metrics.render();
    crate::metrics::render_sharded(&mut body);
    let projections = state.service.projections();
    let index = projections.index();
    // This node's own state, computed now: lag needs the store's head, and an
    // unreachable store must not fail the scrape (the lag lines are left out).
    let mut lags: Vec<(&str, i64)> = Vec::with_capacity(3);
    if let Ok(head) = state.store.head().await {
        match projections.checkpoints().await {
            Ok(c) => {
                lags.push(("key_list", head - c.key_list));
                lags.push(("audit_log", head - c.audit_log));
            }
            Err(e) => tracing::debug!(error = %e, "metrics: checkpoints unavailable"),
        }
        lags.push(("verification", head - index.checkpoint()));
    }
    if !lags.is_empty() {
        let _ = writeln!(
            body,
            "# HELP {PROJECTION_LAG} Events committed but not yet applied to the projection on this node.\n\
             # TYPE {PROJECTION_LAG} gauge"
        );
        for (projection, lag) in lags {
            let _ = writeln!(
                body,
                "{PROJECTION_LAG}{{projection=\"{projection}\"}} {}",
                lag.max(0)
            );
        }
    }
    let _ = writeln!(
        body,
        "# HELP {INDEX_KEYS} Keys in this node's in-memory verification index.\n\
         # TYPE {INDEX_KEYS} gauge\n\
         {INDEX_KEYS} {}",
        index.len()
    );
    ([(CONTENT_TYPE, CONTENT_TYPE_TEXT)], body).into_response()
}

/// Middleware: latency of every request by method, route and status; for key
/// commands also the command and its outcome. A tower layer rather than
/// `axum::middleware::from_fn`, which clones a boxed service and boxes a
/// future on every request, verifications included.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackLayer;

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Track<S> {
        Track { inner }
    }
}

/// The service `TrackLayer` wraps around each route.
#[derive(Debug, Clone)]
pub struct Track<S> {
    inner: S,
}

impl<S> Service<Request> for Track<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = TrackFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let method = method_name(request.method());
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or(UNMATCHED, |p| route_name(p.as_str()));
        let command = command_name(request.method(), route);
        // Copied only when the request line will be logged.
        let path =
            tracing::enabled!(tracing::Level::DEBUG).then(|| request.uri().path().to_owned());
        TrackFuture {
            path,
            inner: self.inner.call(request),
            start: Instant::now(),
            method,
            route,
            command,
        }
    }
}

pin_project! {
    /// A request in flight; records its metrics when its response is ready.
    pub struct TrackFuture<F> {
        #[pin]
        inner: F,
        start: Instant,
        method: &'static str,
        route: &'static str,
        command: Option<&'static str>,
        path: Option<String>,
    }
}

impl<F, E> Future for TrackFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        if let Ok(response) = &result {
            let status = response.status();
            let latency = this.start.elapsed();
            crate::metrics::request(this.method, this.route, status.as_u16(), latency);
            // One line per request at debug level: the path, never the query
            // or the body.
            tracing::debug!(
                method = *this.method,
                path = this.path.as_deref().unwrap_or(""),
                route = *this.route,
                status = status.as_u16(),
                latency_us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
                "request"
            );
            if let Some(command) = this.command {
                crate::metrics::command(command, outcome(status));
            }
        }
        Poll::Ready(result)
    }
}

/// Label of requests that matched no route.
const UNMATCHED: &str = "unmatched";

/// Matched paths as static strings, each leaked once: the router's route
/// templates are a fixed, small set, and a static label costs a request no
/// copy of its matched path (nor a shared reference count).
static ROUTE_NAMES: std::sync::OnceLock<papaya::HashMap<Box<str>, &'static str>> =
    std::sync::OnceLock::new();

/// A matched path (a route template of `router.rs`) as its static label.
fn route_name(matched: &str) -> &'static str {
    let names = ROUTE_NAMES.get_or_init(papaya::HashMap::new).pin();
    if let Some(name) = names.get(matched) {
        return name;
    }
    names.get_or_insert_with(matched.into(), || Box::leak(matched.into()))
}

/// Standard methods by name; anything else is "other" (label values stay bounded).
fn method_name(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// The key command a request is, by method and route; `None` for reads,
/// verification and everything outside `/v1/keys`.
fn command_name(method: &Method, route: &str) -> Option<&'static str> {
    let command = match (method, route) {
        (&Method::POST, "/v1/keys") => "create",
        (&Method::PATCH, "/v1/keys/{id}") => "update",
        (&Method::DELETE, "/v1/keys/{id}") => "delete",
        (&Method::POST, "/v1/keys/{id}/deactivate") => "deactivate",
        (&Method::POST, "/v1/keys/{id}/reactivate") => "reactivate",
        (&Method::POST, "/v1/keys/{id}/rotate") => "rotate",
        _ => return None,
    };
    Some(command)
}

/// `ok` for success, `rejected` for the caller's error, `error` for ours.
fn outcome(status: StatusCode) -> &'static str {
    if status.is_server_error() {
        "error"
    } else if status.is_client_error() {
        "rejected"
    } else {
        "ok"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_by_method_and_route() {
        assert_eq!(command_name(&Method::POST, "/v1/keys"), Some("create"));
        assert_eq!(command_name(&Method::GET, "/v1/keys"), None);
        assert_eq!(command_name(&Method::POST, "/v1/keys/verify"), None);
        assert_eq!(command_name(&Method::GET, "/v1/keys/{id}"), None);
        assert_eq!(
            command_name(&Method::PATCH, "/v1/keys/{id}"),
            Some("update")
        );
        assert_eq!(
            command_name(&Method::DELETE, "/v1/keys/{id}"),
            Some("delete")
        );
        assert_eq!(
            command_name(&Method::POST, "/v1/keys/{id}/deactivate"),
            Some("deactivate")
        );
        assert_eq!(
            command_name(&Method::POST, "/v1/keys/{id}/reactivate"),
            Some("reactivate")
        );
        assert_eq!(
            command_name(&Method::POST, "/v1/keys/{id}/rotate"),
            Some("rotate")
        );
        assert_eq!(command_name(&Method::GET, "/v1/keys/{id}/events"), None);
        assert_eq!(command_name(&Method::GET, "/v1/audit"), None);
    }

    #[test]
    fn outcome_by_status_class() {
        assert_eq!(outcome(StatusCode::CREATED), "ok");
        assert_eq!(outcome(StatusCode::NO_CONTENT), "ok");
        assert_eq!(outcome(StatusCode::NOT_FOUND), "rejected");
        assert_eq!(outcome(StatusCode::UNPROCESSABLE_ENTITY), "rejected");
        assert_eq!(outcome(StatusCode::SERVICE_UNAVAILABLE), "error");
    }
}
