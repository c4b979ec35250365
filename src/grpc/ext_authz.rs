//! `envoy.service.auth.v3.Authorization/Check`: Envoy's external
//! authorization filter (`envoy.filters.http.ext_authz`, gRPC) asks whether a
//! request may pass. The answer is `GET /v1/auth`'s, computed by the same
//! function ([`crate::http::proxy_auth::authorize`]) and carried in Envoy's
//! terms:
//!
//! - allowed: `OkHttpResponse`, whose `headers` set `X-Key-Id`,
//!   `X-Key-Tenant` and `X-Key-Permissions` on the upstream request,
//!   overwriting any the client sent, and whose `response_headers_to_add`
//!   give the client the `RateLimit-*` headers of a limited key;
//! - refused: `DeniedHttpResponse` with `/v1/auth`'s status (401, 403, 429,
//!   503), headers (`X-Key-Code`, `WWW-Authenticate`, `Retry-After`,
//!   `RateLimit-*`) and JSON error body, sent to the client by Envoy. A
//!   refusal is an answer, not a failed call, so Envoy's `failure_mode_allow`
//!   never lets it through: with its store away a limited key is refused
//!   (503), never allowed.
//!
//! The key is in the client's `X-Api-Key` or `Authorization: Bearer` header.
//! Required permissions are the route's context extension
//! `required_permissions` (set in Envoy's configuration, out of the client's
//! reach) together with any `X-Required-Permissions` header (comma-separated
//! both). The client address is the `CheckRequest`'s source address.

use std::net::IpAddr;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue as EnvoyHeader, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::ext_authz::v3::CheckRequestExt;
use envoy_types::pb::google::rpc;
use http_body_util::BodyExt;
use percent_encoding::{utf8_percent_encode, CONTROLS};

use crate::http::proxy_auth::{authorize, IDENTITY_HEADERS};
use crate::http::AppState;

/// The context extension (`check_settings.context_extensions` of a route's
/// `ExtAuthzPerRoute`) naming the permissions the route requires.
pub const REQUIRED_PERMISSIONS: &str = "required_permissions";

static X_REQUIRED_PERMISSIONS: HeaderName = HeaderName::from_static("x-required-permissions");

/// The `Authorization` service.
pub struct ExtAuthz {
    state: AppState,
}

impl ExtAuthz {
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let request = request.into_inner();
        let headers = question_headers(&request);
        let client = request
            .get_client_address()
            .and_then(|a| a.parse::<IpAddr>().ok());
        let answer = authorize(&self.state, client, &headers).await;
        Ok(tonic::Response::new(check_response(answer).await))
    }
}

/// The client request's headers as `/v1/auth` reads them, with the route's
/// required permissions added to `X-Required-Permissions`.
fn question_headers(request: &CheckRequest) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let http = request
        .attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref());
    if let Some(http) = http {
        // Envoy sends the `headers` map, or with `encode_raw_headers` the
        // `header_map` list instead. Pseudo-headers (`:path`) are no names
        // here and are left out.
        let raw = http.header_map.iter().flat_map(|m| m.headers.iter());
        let pairs = http
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_bytes()))
            .chain(raw.map(|h| {
                let value = if h.raw_value.is_empty() {
                    h.value.as_bytes()
                } else {
                    &h.raw_value[..]
                };
                (h.key.as_str(), value)
            }));
        for (name, value) in pairs {
            if let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) {
                headers.append(name, value);
            }
        }
    }
    let route = request
        .attributes
        .as_ref()
        .and_then(|a| a.context_extensions.get(REQUIRED_PERMISSIONS))
        .map(|p| p.trim())
        .filter(|p| !p.is_empty());
    if let Some(route) = route {
        let sent = headers
            .get(&X_REQUIRED_PERMISSIONS)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.trim().is_empty());
        // Characters a header value cannot hold are percent-encoded (so such
        // a permission is required as a name no key can hold, never dropped).
        let route = utf8_percent_encode(route, CONTROLS);
        let all = match sent {
            Some(sent) => format!("{route},{sent}"),
            None => route.to_string(),
        };
        // Visible ASCII and spaces only, which a header value always admits.
        let v = HeaderValue::try_from(all).unwrap_or_else(|_| HeaderValue::from_static("%00"));
        headers.insert(X_REQUIRED_PERMISSIONS.clone(), v);
    }
    headers
}

/// A header Envoy sets, replacing any of that name.
fn overwrite(name: &HeaderName, value: &HeaderValue) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(EnvoyHeader {
            key: name.as_str().to_string(),
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// `/v1/auth`'s answer in Envoy's terms (see the module docs).
async fn check_response(answer: axum::response::Response) -> CheckResponse {
    let (parts, body) = answer.into_parts();
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| *name != axum::http::header::CONTENT_LENGTH);
    if parts.status.is_success() {
        let (upstream, client): (Vec<_>, Vec<_>) =
            headers.partition(|(name, _)| IDENTITY_HEADERS.contains(name));
        return CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers: upstream.into_iter().map(|(n, v)| overwrite(n, v)).collect(),
                response_headers_to_add: client.into_iter().map(|(n, v)| overwrite(n, v)).collect(),
                ..Default::default()
            })),
            ..Default::default()
        };
    }
    // The answer's body is JSON already in memory: collecting cannot fail.
    let body = body
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    CheckResponse {
        status: Some(rpc::Status {
            code: grpc_code(parts.status) as i32,
            message: parts
                .headers
                .get("x-key-code")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("refused")
                .to_string(),
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(parts.status.as_u16()),
            }),
            headers: headers.map(|(n, v)| overwrite(n, v)).collect(),
            body,
        })),
        ..Default::default()
    }
}

/// The gRPC status of a refusal (Envoy refuses on any but OK; the HTTP
/// status it sends the client is the `DeniedHttpResponse`'s).
fn grpc_code(status: StatusCode) -> tonic::Code {
    match status {
        StatusCode::UNAUTHORIZED => tonic::Code::Unauthenticated,
        StatusCode::TOO_MANY_REQUESTS => tonic::Code::ResourceExhausted,
        StatusCode::SERVICE_UNAVAILABLE => tonic::Code::Unavailable,
        _ => tonic::Code::PermissionDenied,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use envoy_types::ext_authz::v3::pb::CheckRequest;
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request};
    use envoy_types::pb::envoy::service::auth::v3::AttributeContext;

    use super::*;

    fn request(headers: &[(&str, &str)], route: Option<&str>) -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    http: Some(HttpRequest {
                        headers: headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                context_extensions: route
                    .map(|p| HashMap::from([(REQUIRED_PERMISSIONS.to_string(), p.to_string())]))
                    .unwrap_or_default(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_routes_permissions_are_required_whatever_the_client_sends() {
        let h = question_headers(&request(
            &[
                (":path", "/api"),
                ("x-api-key", "kl_live_x"),
                ("x-required-permissions", "b"),
            ],
            Some("a"),
        ));
        assert_eq!(
            h.get("x-api-key").map(|v| v.as_bytes()),
            Some(&b"kl_live_x"[..])
        );
        assert_eq!(
            h.get("x-required-permissions").map(|v| v.as_bytes()),
            Some(&b"a,b"[..])
        );
        let h = question_headers(&request(&[("x-required-permissions", "")], Some("a")));
        assert_eq!(
            h.get("x-required-permissions").map(|v| v.as_bytes()),
            Some(&b"a"[..])
        );
        let h = question_headers(&request(&[], None));
        assert!(h.get("x-required-permissions").is_none());
    }

    #[tokio::test]
    async fn refusals_carry_status_headers_and_body_and_grants_the_identity() {
        use axum::response::IntoResponse;
        let refused = (
            StatusCode::FORBIDDEN,
            [("x-key-code", "INSUFFICIENT_PERMISSIONS")],
            "{}",
        )
            .into_response();
        let r = check_response(refused).await;
        assert_eq!(
            r.status.as_ref().map(|s| s.code),
            Some(tonic::Code::PermissionDenied as i32)
        );
        let Some(HttpResponse::DeniedResponse(d)) = r.http_response else {
            panic!("denied");
        };
        assert_eq!(d.status.map(|s| s.code), Some(403));
        assert_eq!(d.body, "{}");
        assert!(d.headers.iter().any(|h| h
            .header
            .as_ref()
            .is_some_and(|h| h.key == "x-key-code" && h.value == "INSUFFICIENT_PERMISSIONS")));

        let granted = (
            StatusCode::NO_CONTENT,
            [("x-key-id", "key_1"), ("ratelimit-limit", "10")],
        )
            .into_response();
        let r = check_response(granted).await;
        assert_eq!(r.status.as_ref().map(|s| s.code), Some(0));
        let Some(HttpResponse::OkResponse(ok)) = r.http_response else {
            panic!("ok");
        };
        let names = |v: &[HeaderValueOption]| -> Vec<String> {
            v.iter()
                .filter_map(|h| h.header.as_ref().map(|h| h.key.clone()))
                .collect()
        };
        assert_eq!(names(&ok.headers), ["x-key-id"]);
        assert_eq!(names(&ok.response_headers_to_add), ["ratelimit-limit"]);
        assert!(ok
            .headers
            .iter()
            .all(|h| h.append_action == HeaderAppendAction::OverwriteIfExistsOrAdd as i32));
    }
}
