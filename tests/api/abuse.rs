//! Abuse: a cap on keys per tenant (creates and rotations alike), a per-address
//! limit on failed verifications, a deadline for request bodies, and tokens from
//! the future.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::backend_tests;
use crate::helpers::{start, Backend, TestApp, TestStore, SECRET};

backend_tests!(
    a_tenant_at_its_key_cap_gets_a_clear_422,
    at_the_cap_concurrent_creates_and_rotations_are_all_refused,
    an_address_guessing_keys_is_refused_with_429_until_the_minute_ends,
    a_request_body_that_never_arrives_times_out_with_408,
    a_token_issued_in_the_future_is_refused,
);

async fn a_tenant_at_its_key_cap_gets_a_clear_422(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let app = start(store, |c| c.max_keys_per_tenant = 2).await;
    let (first, _) = app.create_key("one").await;
    let (second, _) = app.create_key("two").await;
    let r = app.post("/v1/keys", json!({"name": "three"})).await;
    assert_limit_reached(&r);
    // Other tenants are not affected.
    let other = crate::helpers::token("globex", "bob");
    let r = app
        .send_as(&other, Method::POST, "/v1/keys", Some(json!({"name": "x"})))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);

    // A rotation's successor is a new live key (its predecessor lives on
    // through the grace period, and counts until deleted): it is refused at
    // the cap like a create, and writes nothing.
    let r = app
        .send(Method::POST, &format!("/v1/keys/{first}/rotate"), None)
        .await;
    assert_limit_reached(&r);
    assert_eq!(tenant_event_types(&app).await, ["KeyCreated", "KeyCreated"]);
    let old = app.get(&format!("/v1/keys/{first}")).await;
    assert!(old.body["rotated_to"].is_null(), "{}", old.text);
    assert!(old.body["expires_at"].is_null(), "{}", old.text);

    // Deleting makes room again, for a rotation as for a create.
    let d = app
        .send(Method::DELETE, &format!("/v1/keys/{second}"), None)
        .await;
    assert_eq!(d.status, StatusCode::NO_CONTENT);
    let r = app
        .send(Method::POST, &format!("/v1/keys/{first}/rotate"), None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let successor = r.body["id"].as_str().expect("id").to_string();
    let r = app.post("/v1/keys", json!({"name": "three"})).await;
    assert_limit_reached(&r);
    for id in [first.as_str(), successor.as_str()] {
        let d = app
            .send(Method::DELETE, &format!("/v1/keys/{id}"), None)
            .await;
        assert_eq!(d.status, StatusCode::NO_CONTENT);
    }
    let r = app.post("/v1/keys", json!({"name": "three"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    app.stop().await;
}

fn assert_limit_reached(r: &crate::helpers::Reply) {
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.code(), "key_limit_reached", "{}", r.text);
    assert!(r.body["error"]["message"]
        .as_str()
        .expect("message")
        .contains('2'));
}

/// The types of the caller's tenant's events, oldest first.
async fn tenant_event_types(app: &TestApp) -> Vec<String> {
    let audit = app.get("/v1/audit?limit=100").await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.text);
    audit.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type"].as_str().expect("type").to_string())
        .collect()
}

async fn at_the_cap_concurrent_creates_and_rotations_are_all_refused(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let app = start(store, |c| c.max_keys_per_tenant = 2).await;
    let (first, _) = app.create_key("one").await;
    let (second, _) = app.create_key("two").await;
    // Two rotations and two creates at once, from a tenant at its cap: each
    // sees the cap reached, whatever the order.
    let rotate = |id: String| {
        let path = format!("/v1/keys/{id}/rotate");
        let app = &app;
        async move { app.send(Method::POST, &path, None).await }
    };
    let create = |name: &'static str| {
        let app = &app;
        async move { app.post("/v1/keys", json!({ "name": name })).await }
    };
    let (a, b, c, d) = tokio::join!(
        rotate(first.clone()),
        rotate(second.clone()),
        create("three"),
        create("four"),
    );
    for r in [&a, &b, &c, &d] {
        assert_limit_reached(r);
    }
    assert_eq!(tenant_event_types(&app).await, ["KeyCreated", "KeyCreated"]);
    let list = app.get("/v1/keys").await;
    assert_eq!(list.body["keys"].as_array().expect("keys").len(), 2);
    app.stop().await;
}

async fn an_address_guessing_keys_is_refused_with_429_until_the_minute_ends(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let app = start(store, |c| c.verify_failure_limit = 5).await;
    let (_, key) = app.create_key("real").await;
    for i in 0..5 {
        let guess = format!("kl_live_guess{i}");
        assert_eq!(app.verify_code(&guess).await, "NOT_FOUND");
    }
    let r = app.verify(json!({"key": "kl_live_guess5"})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.code(), "rate_limited");
    // Blocked means blocked: even a real key is not looked up from this address.
    let r = app.verify(json!({"key": key})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
    let proxy = app
        .client
        .get(app.url("/v1/auth"))
        .header("X-Api-Key", &key)
        .send()
        .await
        .expect("request");
    assert_eq!(proxy.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(proxy.headers()["retry-after"], "60");
    // Management is not affected.
    assert_eq!(app.get("/v1/keys").await.status, StatusCode::OK);
    app.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(app.verify_code(&key).await, "VALID");
    app.stop().await;
}

async fn a_request_body_that_never_arrives_times_out_with_408(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let app = start(store, |c| c.body_read_timeout = Duration::from_millis(300)).await;
    let address = app.address.trim_start_matches("http://").to_string();
    let mut socket = tokio::net::TcpStream::connect(&address)
        .await
        .expect("connect");
    socket
        .write_all(
            b"POST /v1/keys/verify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"key\":",
        )
        .await
        .expect("write");
    let mut response = Vec::new();
    let read =
        tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut response)).await;
    assert!(read.is_ok(), "the server never answered");
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    app.stop().await;
}

async fn a_token_issued_in_the_future_is_refused(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let app = start(store, |_| {}).await;
    let now = chrono::Utc::now().timestamp();
    let mint = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .expect("encode")
    };
    let future_iat =
        mint(json!({"sub": "a", "tenant": "acme", "exp": now + 7200, "iat": now + 3600}));
    let r = app
        .send_as(&future_iat, Method::GET, "/v1/keys", None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(r.text.contains("future"), "{}", r.text);
    let future_nbf =
        mint(json!({"sub": "a", "tenant": "acme", "exp": now + 7200, "nbf": now + 3600}));
    let r = app
        .send_as(&future_nbf, Method::GET, "/v1/keys", None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Within the small leeway, clocks may differ a little.
    let slightly = mint(json!({"sub": "a", "tenant": "acme", "exp": now + 7200, "iat": now + 2}));
    let r = app.send_as(&slightly, Method::GET, "/v1/keys", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.stop().await;
}
