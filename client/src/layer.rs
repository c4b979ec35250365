//! [`KeyAuthLayer`]: a `tower::Layer` that lets a request through only with a
//! valid API key, verified by keyledger, and tells the handler whose key it
//! was ([`VerifiedKey`] in the request's extensions).

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use tower::{Layer, Service};

use crate::client::Client;
use crate::codes::{Environment, VerificationCode};
use crate::error::Error;
use crate::verify::{CreditsLeft, RateLimitState, Verification, VerifyRequest};

/// The identity of a verified key, put into the request's extensions for
/// the services behind [`KeyAuthLayer`] (in axum: `Extension<VerifiedKey>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedKey {
    pub key_id: String,
    pub tenant: String,
    pub name: String,
    pub environment: Option<Environment>,
    pub permissions: Vec<String>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The key's (and its owner's) rate limits after this use.
    pub ratelimits: Vec<RateLimitState>,
    /// The key's credits after this use.
    pub credits: Option<CreditsLeft>,
}

/// Where the client address of a request comes from, for keys with
/// `allowed_ips`.
type ClientIp = dyn Fn(&http::request::Parts) -> Option<IpAddr> + Send + Sync;

struct Settings {
    client: Client,
    header: HeaderName,
    bearer: bool,
    permissions: Vec<String>,
    environment: Option<Environment>,
    cost: Option<u64>,
    client_ip: Option<Arc<ClientIp>>,
}

/// A `tower::Layer` that verifies the API key of every request with
/// keyledger (`POST /v1/keys/verify`) before the inner service sees it.
///
/// The key is read from the configured header (`x-api-key` by default), else
/// from `Authorization: Bearer <key>`. A `VALID` key puts a [`VerifiedKey`]
/// into the request's extensions and passes the request on; anything else is
/// answered here, with a JSON body like keyledger's errors
/// (`{"error":{"code","message","details":{"verification"}}}`):
///
/// - 401 `unauthorized` (with `WWW-Authenticate`): no key, or one that is
///   unknown, malformed, disabled, expired or of the wrong environment;
/// - 403 `insufficient_permissions` / `ip_not_allowed`;
/// - 429 `rate_limited` / `usage_exceeded`, with `Retry-After` when known;
/// - 503 `keyledger_unavailable` when keyledger cannot be asked or cannot
///   answer: it fails closed, never passing a request it could not verify.
///
/// No client address is sent unless [`KeyAuthLayer::client_ip`] says where
/// to find it (keys with `allowed_ips` then verify as `IP_NOT_ALLOWED`).
///
/// ```no_run
/// use axum::{routing::get, Extension, Router};
/// use keyledger_client::{Client, KeyAuthLayer, VerifiedKey};
///
/// # fn app() -> Result<Router, keyledger_client::Error> {
/// let keyledger = Client::new("http://127.0.0.1:8080")?;
/// let app = Router::new()
///     .route(
///         "/invoices",
///         get(|Extension(key): Extension<VerifiedKey>| async move {
///             format!("invoices of {}", key.tenant)
///         }),
///     )
///     .layer(
///         KeyAuthLayer::new(keyledger)
///             .header("x-api-key")
///             .require_permissions(["invoices:read"]),
///     );
/// # Ok(app)
/// # }
/// ```
#[derive(Clone)]
pub struct KeyAuthLayer {
    settings: Arc<Settings>,
}

impl std::fmt::Debug for KeyAuthLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = &self.settings;
        f.debug_struct("KeyAuthLayer")
            .field("client", &s.client)
            .field("header", &s.header)
            .field("bearer", &s.bearer)
            .field("permissions", &s.permissions)
            .field("environment", &s.environment)
            .field("cost", &s.cost)
            .finish_non_exhaustive()
    }
}

impl KeyAuthLayer {
    /// Verifies keys with `client` (which needs no token for this).
    pub fn new(client: Client) -> Self {
        Self {
            settings: Arc::new(Settings {
                client,
                header: HeaderName::from_static("x-api-key"),
                bearer: true,
                permissions: Vec::new(),
                environment: None,
                cost: None,
                client_ip: None,
            }),
        }
    }

    /// The header the key comes in (default `x-api-key`).
    ///
    /// # Panics
    ///
    /// If `name` is not a valid header name (a programming error).
    pub fn header(self, name: &str) -> Self {
        let header = HeaderName::try_from(name)
            .unwrap_or_else(|e| panic!("KeyAuthLayer::header({name:?}): {e}"));
        self.with(|s| s.header = header)
    }

    /// Whether `Authorization: Bearer <key>` is read when the header is
    /// absent (default true).
    pub fn bearer(self, accept: bool) -> Self {
        self.with(|s| s.bearer = accept)
    }

    /// Permissions the key must all grant (else 403).
    pub fn require_permissions<I, P>(self, permissions: I) -> Self
    where
        I: IntoIterator<Item = P>,
        P: Into<String>,
    {
        let permissions: Vec<String> = permissions.into_iter().map(Into::into).collect();
        self.with(|s| s.permissions = permissions)
    }

    /// The environment the key must be of (else 401).
    pub fn environment(self, environment: Environment) -> Self {
        self.with(|s| s.environment = Some(environment))
    }

    /// Credits each request spends (default 1; 0 spends none).
    pub fn cost(self, cost: u64) -> Self {
        self.with(|s| s.cost = Some(cost))
    }

    /// Where a request's client address is, for keys with `allowed_ips`;
    /// e.g. with axum's `ConnectInfo`:
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use axum::extract::ConnectInfo;
    /// use keyledger_client::{Client, KeyAuthLayer};
    ///
    /// # fn layer(client: Client) -> KeyAuthLayer {
    /// KeyAuthLayer::new(client).client_ip(|parts| {
    ///     parts
    ///         .extensions
    ///         .get::<ConnectInfo<SocketAddr>>()
    ///         .map(|ConnectInfo(addr)| addr.ip())
    /// })
    /// # }
    /// ```
    pub fn client_ip<F>(self, find: F) -> Self
    where
        F: Fn(&http::request::Parts) -> Option<IpAddr> + Send + Sync + 'static,
    {
        let find: Arc<ClientIp> = Arc::new(find);
        self.with(|s| s.client_ip = Some(find))
    }

    fn with(self, change: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = match Arc::try_unwrap(self.settings) {
            Ok(settings) => settings,
            Err(shared) => shared.duplicate(),
        };
        change(&mut settings);
        Self {
            settings: Arc::new(settings),
        }
    }
}

impl Settings {
    fn duplicate(&self) -> Self {
        Self {
            client: self.client.clone(),
            header: self.header.clone(),
            bearer: self.bearer,
            permissions: self.permissions.clone(),
            environment: self.environment.clone(),
            cost: self.cost,
            client_ip: self.client_ip.clone(),
        }
    }
}

impl<S> Layer<S> for KeyAuthLayer {
    type Service = KeyAuth<S>;

    fn layer(&self, inner: S) -> KeyAuth<S> {
        KeyAuth {
            inner,
            settings: self.settings.clone(),
        }
    }
}

/// The service of [`KeyAuthLayer`].
#[derive(Clone)]
pub struct KeyAuth<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S: std::fmt::Debug> std::fmt::Debug for KeyAuth<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyAuth")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for KeyAuth<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
    ResBody: From<String> + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        // The clone that was made ready goes with this request; the fresh one
        // stays for the next (tower's usual way for services that await).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let settings = self.settings.clone();
        Box::pin(async move {
            let (mut parts, body) = request.into_parts();
            match settings.check(&parts).await {
                Ok(key) => {
                    parts.extensions.insert(key);
                    inner.call(Request::from_parts(parts, body)).await
                }
                Err(refusal) => Ok(refusal.response()),
            }
        })
    }
}

/// Why a request is answered by the layer.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    verification: Option<VerificationCode>,
    message: &'static str,
    retry_after: Option<Duration>,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: &'static str) -> Self {
        Self {
            status,
            code,
            verification: None,
            message,
            retry_after: None,
        }
    }

    fn response<B: From<String>>(self) -> Response<B> {
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(v) = &self.verification {
            error["details"] = serde_json::json!({ "verification": v.as_str() });
        }
        let body = serde_json::json!({ "error": error }).to_string();
        let mut response = Response::new(B::from(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750: no error code when no credential was presented.
            let challenge = if self.verification.is_some() {
                "Bearer error=\"invalid_token\""
            } else {
                "Bearer"
            };
            headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        if let Some(after) = self.retry_after {
            headers.insert(RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
        }
        response
    }
}

impl Settings {
    /// The presented key: the header's, else a bearer token's.
    fn presented<'a>(&self, parts: &'a http::request::Parts) -> Option<&'a str> {
        if let Some(value) = parts.headers.get(&self.header) {
            return value.to_str().ok().map(str::trim).filter(|k| !k.is_empty());
        }
        if !self.bearer {
            return None;
        }
        let value = parts.headers.get(AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|k| !k.is_empty())
    }

    async fn check(&self, parts: &http::request::Parts) -> Result<VerifiedKey, Refusal> {
        let Some(key) = self.presented(parts) else {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "no API key presented",
            ));
        };
        let mut request = VerifyRequest::new(key).permissions(self.permissions.iter().cloned());
        request.environment = self.environment.clone();
        request.cost = self.cost;
        request.ip = self.client_ip.as_ref().and_then(|find| find(parts));
        match self.client.verify(&request).await {
            Ok(answer) => admit(answer),
            Err(e) => Err(unverified(&e)),
        }
    }
}

/// The identity of a `VALID` answer, or the refusal of any other.
fn admit(answer: Verification) -> Result<VerifiedKey, Refusal> {
    use VerificationCode as V;
    if answer.code == V::Valid {
        return match (answer.key_id, answer.tenant) {
            (Some(key_id), Some(tenant)) => Ok(VerifiedKey {
                key_id,
                tenant,
                name: answer.name.unwrap_or_default(),
                environment: answer.environment,
                permissions: answer.permissions,
                expires_at: answer.expires_at,
                ratelimits: answer.ratelimits,
                credits: answer.credits,
            }),
            // A VALID answer without the key's identity: not one to trust.
            _ => Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "keyledger_unavailable",
                "the API key could not be verified; retry later",
            )),
        };
    }
    let (status, code, message) = match &answer.code {
        V::InsufficientPermissions => (
            StatusCode::FORBIDDEN,
            "insufficient_permissions",
            "the key lacks a required permission",
        ),
        V::IpNotAllowed => (
            StatusCode::FORBIDDEN,
            "ip_not_allowed",
            "the key may not be used from this address",
        ),
        V::RateLimited => (
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "the key's rate limit is reached; retry after the window",
        ),
        V::UsageExceeded => (
            StatusCode::TOO_MANY_REQUESTS,
            "usage_exceeded",
            "the key has no credits left",
        ),
        // NOT_FOUND, DISABLED, EXPIRED, WRONG_ENVIRONMENT and codes this
        // version does not know: not a key for this request.
        _ => (
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the API key is not valid",
        ),
    };
    let retry_after = answer.retry_after(Utc::now());
    Err(Refusal {
        status,
        code,
        verification: Some(answer.code),
        message,
        retry_after,
    })
}

/// The refusal of a request keyledger did not answer with a verification.
fn unverified(error: &Error) -> Refusal {
    match error.status() {
        // Too many unknown keys from this address (keyledger's own guard).
        Some(StatusCode::TOO_MANY_REQUESTS) => Refusal {
            retry_after: error.retry_after(),
            ..Refusal::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests; retry later",
            )
        },
        // The presented key itself made the request unacceptable (too
        // long): a malformed key, which is NOT_FOUND.
        Some(StatusCode::PAYLOAD_TOO_LARGE) => malformed(),
        Some(StatusCode::UNPROCESSABLE_ENTITY) if error.field() == Some("key") => malformed(),
        // Unreachable, failing, refusing the layer's own settings or not
        // answering as keyledger: fail closed.
        _ => Refusal {
            retry_after: error.retry_after(),
            ..Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "keyledger_unavailable",
                "the API key could not be verified; retry later",
            )
        },
    }
}

fn malformed() -> Refusal {
    Refusal {
        verification: Some(VerificationCode::NotFound),
        ..Refusal::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the API key is not valid",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn api(status: u16, code: &str, details: Option<serde_json::Value>) -> Error {
        Error::Api {
            status: StatusCode::from_u16(status).expect("status"),
            code: code.into(),
            message: String::new(),
            details,
            retry_after: Some(Duration::from_secs(60)),
            request_id: None,
        }
    }

    #[test]
    fn what_keyledger_could_not_answer_is_refused_never_let_through() {
        let r = unverified(&api(429, "rate_limited", None));
        assert_eq!(
            (r.status, r.retry_after),
            (StatusCode::TOO_MANY_REQUESTS, Some(Duration::from_secs(60)))
        );
        let r = unverified(&api(
            422,
            "validation_failed",
            Some(json!({"field": "key"})),
        ));
        assert_eq!(
            (r.status, r.verification),
            (StatusCode::UNAUTHORIZED, Some(VerificationCode::NotFound))
        );
        for e in [
            api(409, "conflict", None),
            api(422, "validation_failed", Some(json!({"field": "cost"}))),
            api(503, "store_unavailable", None),
            api(500, "internal", None),
            Error::UnexpectedStatus {
                status: StatusCode::BAD_GATEWAY,
                retry_after: None,
            },
        ] {
            assert_eq!(
                unverified(&e).status,
                StatusCode::SERVICE_UNAVAILABLE,
                "{e}"
            );
        }
        // A VALID answer without an identity is not trusted either.
        let answer: Verification =
            serde_json::from_value(json!({"valid": true, "code": "VALID"})).expect("answer");
        assert!(admit(answer).is_err());
        let answer: Verification =
            serde_json::from_value(json!({"valid": false, "code": "SOMETHING_NEW"}))
                .expect("answer");
        let refusal = admit(answer).expect_err("refused");
        assert_eq!(refusal.status, StatusCode::UNAUTHORIZED);
    }
}
