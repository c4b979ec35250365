//! GET /metrics (Prometheus text format) and the middleware that records
//! request latency and key commands for every request.

use std::borrow::Cow;
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

use crate::http::state::AppState;
use crate::metrics::{INDEX_KEYS, PROJECTION_LAG};

/// The content type of the Prometheus text exposition format.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4";

/// GET /metrics
#[utoipa::path(get, path = "/metrics", tag = "health", operation_id = "metrics",
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
    if let Ok(head) = state.service.head().await {
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
        // Worked out only when the request line will be logged.
        let path = tracing::enabled!(tracing::Level::DEBUG)
            .then(|| loggable_path(route, request.uri().path()));
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
        path: Option<Cow<'static, str>>,
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
            // One line per request at debug level: the path as `loggable_path`
            // redacts it, never the query or the body.
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

/// The request path as the request line logs it. Clients do put raw keys in
/// paths (`GET /v1/keys/<key>` by mistake, or a key pasted into the address bar),
/// and a key in a log is a leaked key. So the logged path is built only from text
/// the server chose, never from what the client sent, with one exception: a path
/// segment that is a well-formed key id (`key_` and 32 lower-case hex digits),
/// which no key can be (a key is `<prefix>_<live|test>_<46 base62>`).
///
/// - A matched route: its template, each parameter replaced by the request's
///   value when that is a key id (`/v1/keys/key_0190…/events`) and else left as
///   the template has it (`/v1/keys/{id}/events` for a raw key, a display prefix
///   or anything else). Templates without a parameter, `/v1/keys/verify` among
///   them, are logged as the static string they are: no copy at all.
/// - No route (a 404 from the fallback): each segment that is one of the words of
///   the routes (`ROUTE_WORDS`) or a key id is kept, every other one is `*`.
///
/// An allow-list, not a search for key-shaped text: a search would have to know
/// every way a key can be mangled on its way into a path (percent-encoded `_`
/// as `%5F`, cut short, run into other text, a future prefix or format) and
/// miss one; this cannot leak what it never copies. The cost is one pass over
/// the path's bytes, only while debug logging is on.
fn loggable_path(route: &'static str, path: &str) -> Cow<'static, str> {
    if route == UNMATCHED {
        let mut out = String::with_capacity(path.len().min(64));
        // The path starts with `/`: the first piece is empty.
        for segment in path.split('/').skip(1) {
            out.push('/');
            if segment.is_empty() || is_key_id(segment) || ROUTE_WORDS.contains(&segment) {
                out.push_str(segment);
            } else {
                out.push('*');
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        return Cow::Owned(out);
    }
    if !route.contains('{') {
        return Cow::Borrowed(route);
    }
    let mut out = String::with_capacity(route.len() + 32);
    let mut given = path.split('/');
    for (i, part) in route.split('/').enumerate() {
        let value = given.next();
        if i > 0 {
            out.push('/');
        }
        match value {
            Some(value) if part.starts_with('{') && is_key_id(value) => out.push_str(value),
            _ => out.push_str(part),
        }
    }
    Cow::Owned(out)
}

/// The literal path segments of the routes of `router.rs`, kept in paths of
/// unmatched requests (a test checks them against the OpenAPI document).
const ROUTE_WORDS: [&str; 29] = [
    "v1",
    "keys",
    "import",
    "usage",
    "policy",
    "leaks",
    "report",
    "webhooks",
    "rotate-secret",
    "deliveries",
    "retry",
    "credits",
    "owners",
    "ratelimits",
    "verify",
    "auth",
    "envoy",
    "deactivate",
    "reactivate",
    "rotate",
    "events",
    "audit",
    "healthz",
    "readyz",
    "metrics",
    "openapi.json",
    "console",
    "console.js",
    "console.css",
];

/// `key_` and 32 lower-case hex digits: the ids `service.rs` gives keys.
fn is_key_id(segment: &str) -> bool {
    segment.len() == 36
        && segment.starts_with("key_")
        && segment
            .bytes()
            .skip(4)
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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

    const ID: &str = "key_0190b2a4c3d87e1f9a6b5c4d3e2f1a0b";
    const KEY: &str = "kl_live_AbCdEfGh0123456789AbCdEfGh0123456789AbCdEf";

    #[test]
    fn a_logged_path_keeps_key_ids_and_nothing_else_the_client_sent() {
        assert!(is_key_id(ID));
        let events = "/v1/keys/{id}/events";
        assert_eq!(
            loggable_path(events, &format!("/v1/keys/{ID}/events")),
            format!("/v1/keys/{ID}/events")
        );
        let values: [&str; 8] = [
            KEY,
            "kl%5Flive%5FAbCdEfGh0123456789AbCdEfGh0123456789AbCdEf",
            &KEY[..30],
            "kl_live_AbCdEfGh",
            "KEY_0190B2A4C3D87E1F9A6B5C4D3E2F1A0B",
            &format!("{ID}0"),
            &format!("{ID}{KEY}"),
            "",
        ];
        for value in values {
            assert_eq!(
                loggable_path(events, &format!("/v1/keys/{value}/events")),
                events,
                "{value}"
            );
            assert_eq!(
                loggable_path("/v1/keys/{id}", &format!("/v1/keys/{value}")),
                "/v1/keys/{id}"
            );
        }
        assert!(matches!(
            loggable_path("/v1/keys/verify", "/v1/keys/verify"),
            Cow::Borrowed("/v1/keys/verify")
        ));
    }

    #[test]
    fn an_unmatched_path_keeps_only_route_words_and_key_ids() {
        let with_id = format!("/v1/keys/{ID}/events/");
        let cases: [(String, &str); 7] = [
            ("/".into(), "/"),
            (format!("/{KEY}"), "/*"),
            (format!("/v1/keys/{KEY}/bogus"), "/v1/keys/*/*"),
            (with_id.clone(), &with_id),
            (format!("/v2/verify/{KEY}"), "/*/verify/*"),
            ("/console/nope".into(), "/console/*"),
            ("//x".into(), "//*"),
        ];
        for (path, logged) in cases {
            assert_eq!(loggable_path(UNMATCHED, &path), logged, "{path}");
        }
    }

    #[test]
    fn the_route_words_are_those_of_the_api() {
        use utoipa::OpenApi;
        let document = crate::http::openapi::ApiDoc::openapi();
        let mut words: Vec<&str> = document
            .paths
            .paths
            .keys()
            .flat_map(|p| p.split('/'))
            .filter(|s| !s.is_empty() && !s.starts_with('{'))
            .collect();
        // The console's routes are not in the API's document.
        words.extend(["console", "console.js", "console.css", "openapi.json"]);
        words.sort_unstable();
        words.dedup();
        let mut known = ROUTE_WORDS.to_vec();
        known.sort_unstable();
        assert_eq!(words, known);
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
