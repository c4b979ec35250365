//! GET /v1/auth: verification for reverse proxies (nginx `auth_request`, Envoy
//! ext_authz). The key comes in a header, the answer is the status code plus
//! headers the proxy can forward to the upstream.

use std::net::IpAddr;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keyledger_projections::verification::limits::WindowReport;
use keyledger_projections::{KeyIdText, VerificationCode, VerifyRequest};
use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use serde_json::json;

use crate::http::error::ErrorBody;
use crate::http::extract::ClientAddr;
use crate::http::state::AppState;

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
static X_REQUIRED_PERMISSIONS: HeaderName = HeaderName::from_static("x-required-permissions");
static X_KEY_ID: HeaderName = HeaderName::from_static("x-key-id");
static X_KEY_TENANT: HeaderName = HeaderName::from_static("x-key-tenant");
static X_KEY_PERMISSIONS: HeaderName = HeaderName::from_static("x-key-permissions");
static X_KEY_CODE: HeaderName = HeaderName::from_static("x-key-code");
static RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
static RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
static RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The presented key: `X-Api-Key`, else `Authorization: Bearer`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(&X_API_KEY).and_then(|v| v.to_str().ok()) {
        return Some(v.trim());
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = auth.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn refusal(status: StatusCode, code: &'static str, verification: &str, message: &str) -> Response {
    let body = json!({"error": {"code": code, "message": message, "details": {"verification": verification}}});
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(verification) {
        headers.insert(X_KEY_CODE.clone(), v);
    }
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"keyledger\", error=\"invalid_token\""),
        );
    }
    response
}

/// Bytes of an identity header value that are percent-encoded: controls,
/// space (proxies trim it at the ends, which would change the value) and `%`
/// itself (so decoding is unambiguous); percent-encoding always encodes
/// non-ASCII bytes too. A value of visible ASCII without `%` goes out as is.
const IDENTITY_ENCODED: &AsciiSet = &CONTROLS.add(b' ').add(b'%');

/// An identity header's value: never empty, never garbled. Tenant names come
/// from tokens (an identity provider's claims included) and may hold any
/// Unicode; a proxy forwards the header to the upstream, which decodes it.
fn identity_value(s: &str) -> HeaderValue {
    let encoded = utf8_percent_encode(s, IDENTITY_ENCODED).to_string();
    // Visible ASCII only after encoding, which a header value always admits.
    HeaderValue::try_from(encoded).unwrap_or_else(|_| HeaderValue::from_static("%00"))
}

/// GET /v1/auth
#[utoipa::path(get, path = "/v1/auth", tag = "verification", operation_id = "authorize",
    params(
        ("X-Api-Key" = Option<String>, Header, description = "the API key (or Authorization: Bearer <key>)"),
        ("X-Required-Permissions" = Option<String>, Header, description = "comma-separated permissions that must all be granted"),
    ),
    responses(
        (status = 204, description = "valid; X-Key-Id, X-Key-Tenant and X-Key-Permissions set"),
        (status = 401, body = ErrorBody, description = "missing, unknown, disabled or expired key"),
        (status = 403, body = ErrorBody, description = "a required permission is missing (X-Key-Code INSUFFICIENT_PERMISSIONS), or the client's address is outside the key's allowed_ips (IP_NOT_ALLOWED; the address is the one the trusted proxy names)"),
        (status = 429, body = ErrorBody, description = "rate limited or out of credits (X-Key-Code RATE_LIMITED or USAGE_EXCEEDED, with Retry-After and RateLimit-* headers), or an unknown key from an address that sent too many unknown keys this minute"),
        (status = 503, body = ErrorBody, description = "a limited key's share is used up and the store cannot be reached"),
    ))]
pub async fn auth(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
) -> Response {
    authorize(&state, client, &headers).await
}

/// ANY /v1/auth/envoy/{path}: `/v1/auth` for Envoy's HTTP `ext_authz`
/// filter, which passes only a 200, asks with the client's own method and
/// appends the client's path to its `path_prefix`. The answer is the same
/// in every other respect (the same code decides).
#[utoipa::path(get, path = "/v1/auth/envoy/{path}", tag = "verification", operation_id = "authorizeEnvoy",
    params(
        ("path" = String, Path, description = "the client's path, which Envoy appends; not read (any method is answered)"),
        ("X-Api-Key" = Option<String>, Header, description = "the API key (or Authorization: Bearer <key>)"),
        ("X-Required-Permissions" = Option<String>, Header, description = "comma-separated permissions that must all be granted"),
    ),
    responses(
        (status = 200, description = "valid; X-Key-Id, X-Key-Tenant and X-Key-Permissions set"),
        (status = 401, body = ErrorBody, description = "missing, unknown, disabled or expired key"),
        (status = 403, body = ErrorBody, description = "a required permission is missing, or the address is outside the key's allowed_ips"),
        (status = 429, body = ErrorBody, description = "rate limited or out of credits, or too many unknown keys from the address"),
        (status = 503, body = ErrorBody, description = "a limited key's share is used up and the store cannot be reached"),
    ))]
pub async fn envoy(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    headers: HeaderMap,
) -> Response {
    let mut response = authorize(&state, client, &headers).await;
    if response.status() == StatusCode::NO_CONTENT {
        *response.status_mut() = StatusCode::OK;
    }
    response
}

/// The names of the identity headers of a valid key's answer, which a proxy
/// sets on the upstream request (the rest of the answer is for the client).
pub static IDENTITY_HEADERS: [&HeaderName; 3] = [&X_KEY_ID, &X_KEY_TENANT, &X_KEY_PERMISSIONS];

/// A proxy's question, answered: is the request with these `headers` (the key
/// in `X-Api-Key` or `Authorization: Bearer`, the required permissions in
/// `X-Required-Permissions`) from `client` allowed? 204 with the identity
/// headers, or a refusal (401, 403, 429, 503) with `X-Key-Code` and the error
/// body. `GET /v1/auth` and Envoy's ext_authz gRPC service (`crate::grpc`)
/// both answer with it.
pub async fn authorize(state: &AppState, client: Option<IpAddr>, headers: &HeaderMap) -> Response {
    let at = state.service.clock().now();
    let Some(key) = presented_key(headers) else {
        return refusal(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "NOT_FOUND",
            "no API key presented",
        );
    };
    let required: Vec<String> = headers
        .get(&X_REQUIRED_PERMISSIONS)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let request = VerifyRequest {
        key,
        environment: None,
        permissions: &required,
        cost: 1,
        // The client as the trusted proxy names it (`--trusted-proxies`),
        // else the peer: what a key's `allowed_ips` are checked against.
        ip: client,
    };
    // The identity headers of a valid key, read while the index holds it.
    let verified = state.service.verify(request, at, |answer| {
        let identity = match (answer.code, answer.key) {
            (VerificationCode::Valid, Some(k)) => Some([
                identity_value(k.key_id(&mut KeyIdText::default())),
                identity_value(k.tenant()),
                identity_value(&k.permissions().as_slice().join(",")),
            ]),
            _ => None,
        };
        (
            answer.code,
            identity,
            answer.limits.and_then(|l| l.report().tightest().cloned()),
        )
    });
    let (verdict, identity, tightest) = match verified.await {
        Ok(v) => v,
        // The store is needed (a limited key's share is used up) and away:
        // fail closed, as the error it is (503).
        Err(e) => return e.into_response(),
    };
    // Only a malformed or unknown key is a guess, counted and, once its address
    // used up its guesses, refused; a key that exists always gets its answer.
    if verdict == VerificationCode::NotFound
        && client.is_some_and(|ip| state.failures.refuse_guess(ip, at.timestamp()))
    {
        return crate::error::Error::RateLimited.into_response();
    }
    let code = verdict.as_str();
    crate::metrics::verification(verdict);
    let mut response = match (verdict, identity) {
        (_, Some([id, tenant, permissions])) => {
            let mut response = StatusCode::NO_CONTENT.into_response();
            let h = response.headers_mut();
            h.insert(X_KEY_ID.clone(), id);
            h.insert(X_KEY_TENANT.clone(), tenant);
            h.insert(X_KEY_PERMISSIONS.clone(), permissions);
            response
        }
        (VerificationCode::RateLimited, _) => refusal(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            code,
            "the key's rate limit is reached; retry after the window",
        ),
        (VerificationCode::UsageExceeded, _) => refusal(
            StatusCode::TOO_MANY_REQUESTS,
            "usage_exceeded",
            code,
            "the key has no credits left",
        ),
        (VerificationCode::IpNotAllowed, _) => refusal(
            StatusCode::FORBIDDEN,
            "ip_not_allowed",
            code,
            "the key may not be used from this address",
        ),
        (VerificationCode::InsufficientPermissions, _) => refusal(
            StatusCode::FORBIDDEN,
            "insufficient_permissions",
            code,
            "the key lacks a required permission",
        ),
        _ => refusal(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            code,
            "the API key is not valid",
        ),
    };
    if let Some(w) = tightest {
        rate_limit_headers(response.headers_mut(), &w, verdict, at.timestamp_millis());
    }
    response
}

/// `RateLimit-Limit`, `-Remaining` and `-Reset` (seconds until the window
/// ends) of the tightest limit, and `Retry-After` when it refused.
fn rate_limit_headers(h: &mut HeaderMap, w: &WindowReport, verdict: VerificationCode, now_ms: i64) {
    let reset_s = (w.reset_ms.saturating_sub(now_ms).max(0) as u64).div_ceil(1000);
    h.insert(RATELIMIT_LIMIT.clone(), HeaderValue::from(w.limit));
    h.insert(RATELIMIT_REMAINING.clone(), HeaderValue::from(w.remaining));
    h.insert(RATELIMIT_RESET.clone(), HeaderValue::from(reset_s));
    if verdict == VerificationCode::RateLimited {
        h.insert(header::RETRY_AFTER, HeaderValue::from(reset_s.max(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::identity_value;

    #[test]
    fn identity_values_are_percent_encoded_only_where_needed() {
        assert_eq!(
            identity_value("acme-corp_1.x").to_str().ok(),
            Some("acme-corp_1.x")
        );
        assert_eq!(
            identity_value("a\r\nX-Evil: 1").to_str().ok(),
            Some("a%0D%0AX-Evil:%201")
        );
        assert_eq!(
            identity_value("müller %").to_str().ok(),
            Some("m%C3%BCller%20%25")
        );
        assert_eq!(identity_value("\u{0}").to_str().ok(), Some("%00"));
    }
}
