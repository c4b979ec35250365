//! `KeyAuthLayer` in front of an axum service, verifying with a real server.

use std::net::IpAddr;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::{Extension, Json, Router};
use keyledger_client::{Client, CreateKey, Credits, KeyAuthLayer, RateLimit, VerifiedKey};
use serde_json::{json, Value};
use tower::ServiceExt;

use crate::harness::{self, TENANT};

/// An app whose one route answers the verified identity.
fn app(layer: KeyAuthLayer) -> Router {
    Router::new()
        .route(
            "/whoami",
            get(|Extension(key): Extension<VerifiedKey>| async move {
                Json(json!({
                    "key_id": key.key_id,
                    "tenant": key.tenant,
                    "name": key.name,
                    "permissions": key.permissions,
                }))
            }),
        )
        .layer(layer)
}

/// Sends `GET /whoami` with `headers`; the status, `Retry-After` and the
/// JSON body.
async fn call(app: &Router, headers: &[(&str, &str)]) -> (StatusCode, Option<String>, Value) {
    let (status, headers, body) = call_with_headers(app, headers).await;
    let retry_after = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, retry_after, body)
}

/// Sends `GET /whoami` with `headers`; the status, headers and JSON body.
async fn call_with_headers(
    app: &Router,
    headers: &[(&str, &str)],
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut request = Request::get("/whoami");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app
        .clone()
        .oneshot(request.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, headers, body)
}

fn code(body: &Value) -> (&str, &str) {
    (
        body["error"]["code"].as_str().unwrap_or("<none>"),
        body["error"]["details"]["verification"]
            .as_str()
            .unwrap_or("<none>"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_lets_valid_keys_through_and_answers_the_rest_itself() {
    let mut server = harness::start().await;
    let client = server.client();
    let reader = client
        .create_key(&CreateKey {
            permissions: Some(vec!["orders:read".into()]),
            ..CreateKey::new("reader")
        })
        .await
        .expect("create");
    let writer = client
        .create_key(&CreateKey {
            permissions: Some(vec!["orders:write".into()]),
            ..CreateKey::new("writer")
        })
        .await
        .expect("create");
    let limited = client
        .create_key(&CreateKey {
            permissions: Some(vec!["orders:*".into()]),
            ratelimits: Some(vec![RateLimit::new("per-minute", 1, 60_000)]),
            ..CreateKey::new("limited")
        })
        .await
        .expect("create");
    let broke = client
        .create_key(&CreateKey {
            permissions: Some(vec!["orders:read".into()]),
            credits: Some(Credits {
                remaining: 0,
                refill: None,
            }),
            ..CreateKey::new("broke")
        })
        .await
        .expect("create");
    let disabled = client
        .create_key(&CreateKey {
            permissions: Some(vec!["orders:read".into()]),
            ..CreateKey::new("disabled")
        })
        .await
        .expect("create");
    client
        .deactivate_key(&disabled.id, None)
        .await
        .expect("deactivate");

    // The layer needs no token: verification takes none.
    let keyledger = Client::new(&server.url).expect("client");
    let app = app(KeyAuthLayer::new(keyledger)
        .header("x-api-key")
        .require_permissions(["orders:read"]));

    // A valid key: the handler sees whose it is.
    let (status, _, body) = call(&app, &[("x-api-key", reader.key.expose())]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["key_id"], reader.id.as_str());
    assert_eq!(body["tenant"], TENANT);
    assert_eq!(body["name"], "reader");
    assert_eq!(body["permissions"], json!(["orders:read"]));
    // Also as a bearer token.
    let bearer = format!("Bearer {}", reader.key.expose());
    let (status, _, _) = call(&app, &[("authorization", &bearer)]).await;
    assert_eq!(status, StatusCode::OK);

    // No key, an unknown one, a disabled one: 401.
    let (status, headers, body) = call_with_headers(&app, &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body).0, "unauthorized");
    assert_eq!(headers["www-authenticate"], "Bearer");
    assert_eq!(headers["content-type"], "application/json");
    let (status, headers, body) =
        call_with_headers(&app, &[("x-api-key", "kl_live_notAKeyAtAll")]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), ("unauthorized", "NOT_FOUND"));
    assert_eq!(
        headers["www-authenticate"],
        "Bearer error=\"invalid_token\""
    );
    let (status, _, body) = call(&app, &[("x-api-key", disabled.key.expose())]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(code(&body), ("unauthorized", "DISABLED"));

    // A key without the permission: 403.
    let (status, _, body) = call(&app, &[("x-api-key", writer.key.expose())]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        code(&body),
        ("insufficient_permissions", "INSUFFICIENT_PERMISSIONS")
    );

    // A rate-limited key: through once, then 429 with Retry-After.
    let (status, _, _) = call(&app, &[("x-api-key", limited.key.expose())]).await;
    assert_eq!(status, StatusCode::OK);
    let (status, retry_after, body) = call(&app, &[("x-api-key", limited.key.expose())]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(code(&body), ("rate_limited", "RATE_LIMITED"));
    let seconds: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
    assert!((1..=60).contains(&seconds), "{seconds}");
    // A key out of credits: 429 too.
    let (status, _, body) = call(&app, &[("x-api-key", broke.key.expose())]).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(code(&body), ("usage_exceeded", "USAGE_EXCEEDED"));

    // keyledger stopped: 503, and the request never reaches the handler.
    server.stop().await;
    let (status, _, body) = call(&app, &[("x-api-key", reader.key.expose())]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(code(&body).0, "keyledger_unavailable");
    assert!(body.get("key_id").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_with_allowed_ips_need_the_client_address() {
    let server = harness::start().await;
    let client = server.client();
    let office = client
        .create_key(&CreateKey {
            allowed_ips: Some(vec!["10.0.0.0/8".into()]),
            ..CreateKey::new("office only")
        })
        .await
        .expect("create");
    let keyledger = Client::new(&server.url).expect("client");

    // Without a client address the key is refused: 403.
    let blind = app(KeyAuthLayer::new(keyledger.clone()));
    let (status, _, body) = call(&blind, &[("x-api-key", office.key.expose())]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(code(&body), ("ip_not_allowed", "IP_NOT_ALLOWED"));

    // With the address of the request (here a header set by a trusted
    // proxy in front): inside the range, through; outside, 403.
    let seeing = app(KeyAuthLayer::new(keyledger)
        .header("x-service-key")
        .bearer(false)
        .client_ip(|parts| {
            parts
                .headers
                .get("x-client-ip")?
                .to_str()
                .ok()?
                .parse::<IpAddr>()
                .ok()
        }));
    let key = office.key.expose();
    let (status, _, body) = call(
        &seeing,
        &[("x-service-key", key), ("x-client-ip", "10.1.2.3")],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, _) = call(
        &seeing,
        &[("x-service-key", key), ("x-client-ip", "192.0.2.1")],
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Bearer tokens are not read when turned off.
    let bearer = format!("Bearer {key}");
    let (status, _, _) = call(
        &seeing,
        &[("authorization", &bearer), ("x-client-ip", "10.1.2.3")],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
