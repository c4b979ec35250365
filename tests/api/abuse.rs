//! Abuse: a cap on keys per tenant (creates and rotations alike), a per-address
//! limit on guessed (malformed or unknown) keys that never refuses a key that
//! exists, client addresses behind trusted proxies, a deadline for request
//! bodies, and tokens from the future.

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
    keys_that_exist_get_their_answer_whatever_their_address_guessed,
    known_keys_that_are_not_valid_never_count_as_guesses,
    forwarding_headers_name_the_client_only_from_a_trusted_proxy,
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
    let proxy = auth(&app, "not-a-key-at-all", None).await;
    assert_eq!(proxy.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(proxy.headers()["retry-after"], "60");
    // Only guesses are refused: the real key is looked up and answered.
    assert_eq!(app.verify_code(&key).await, "VALID");
    assert_eq!(
        auth(&app, &key, None).await.status(),
        StatusCode::NO_CONTENT
    );
    // Management is not affected.
    assert_eq!(app.get("/v1/keys").await.status, StatusCode::OK);
    app.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(app.verify_code("kl_live_guess6").await, "NOT_FOUND");
    app.stop().await;
}

/// `GET /v1/auth` with this key (and required permissions), as nginx asks it.
async fn auth(app: &TestApp, key: &str, permissions: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(app.url("/v1/auth")).header("X-Api-Key", key);
    if let Some(p) = permissions {
        request = request.header("X-Required-Permissions", p);
    }
    request.send().await.expect("request")
}

/// Keys that exist but do not verify: (key, verification body, code, /v1/auth
/// status and its required permissions), one per way a key can fail.
async fn known_invalid_keys(
    app: &TestApp,
) -> Vec<(
    String,
    serde_json::Value,
    &'static str,
    StatusCode,
    Option<&'static str>,
)> {
    let (disabled_id, disabled) = app.create_key("disabled").await;
    let r = app
        .post(
            &format!("/v1/keys/{disabled_id}/deactivate"),
            json!({"reason": "revoked"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339();
    let r = app
        .post("/v1/keys", json!({"name": "expiring", "expires_at": soon}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let expiring = r.body["key"].as_str().expect("key").to_string();
    app.clock.advance(chrono::Duration::seconds(3));
    let r = app
        .post(
            "/v1/keys",
            json!({"name": "testing", "environment": "test"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let test_env = r.body["key"].as_str().expect("key").to_string();
    let (_, reader) = app.create_key("reader").await;
    vec![
        (
            disabled.clone(),
            json!({"key": disabled}),
            "DISABLED",
            StatusCode::UNAUTHORIZED,
            None,
        ),
        (
            expiring.clone(),
            json!({"key": expiring}),
            "EXPIRED",
            StatusCode::UNAUTHORIZED,
            None,
        ),
        (
            test_env.clone(),
            json!({"key": test_env, "environment": "live"}),
            "WRONG_ENVIRONMENT",
            // /v1/auth asks for no environment: the key is valid there.
            StatusCode::NO_CONTENT,
            None,
        ),
        (
            reader.clone(),
            json!({"key": reader, "permissions": ["admin"]}),
            "INSUFFICIENT_PERMISSIONS",
            StatusCode::FORBIDDEN,
            Some("admin"),
        ),
    ]
}

async fn keys_that_exist_get_their_answer_whatever_their_address_guessed(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    // The default limit (100 a minute).
    let app = start(store, |_| {}).await;
    let (_, key) = app.create_key("real").await;
    let known = known_invalid_keys(&app).await;
    // 200 guesses from this address, malformed and well-formed: the first
    // 100 are answered, the rest refused.
    let mut refused = 0;
    for i in 0..200 {
        let guess = if i % 2 == 0 {
            format!("garbage-{i}")
        } else {
            format!("kl_live_{i:0>40}")
        };
        let r = app.verify(json!({"key": guess})).await;
        match r.status {
            StatusCode::OK => assert_eq!(r.body["code"], "NOT_FOUND", "{}", r.text),
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("{other}: {}", r.text),
        }
    }
    assert_eq!(refused, 100);
    // The address is blocked for guesses, on both routes...
    let r = app.verify(json!({"key": "kl_live_one_more"})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    assert_eq!(r.code(), "rate_limited");
    let r = auth(&app, "kl_live_one_more", None).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["retry-after"], "60");
    // ...but a valid key is answered VALID, and a key that exists but fails
    // gets its real answer, not 429.
    for _ in 0..3 {
        assert_eq!(app.verify_code(&key).await, "VALID");
        let r = auth(&app, &key, None).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert!(r.headers().contains_key("x-key-id"));
        for (raw, body, code, auth_status, permissions) in &known {
            let r = app.verify(body.clone()).await;
            assert_eq!(r.status, StatusCode::OK, "{code}: {}", r.text);
            assert_eq!(r.body["code"], *code, "{}", r.text);
            let r = auth(&app, raw, *permissions).await;
            assert_eq!(r.status(), *auth_status, "{code}");
            if *auth_status == StatusCode::UNAUTHORIZED {
                assert_eq!(r.headers()["x-key-code"], *code);
            }
        }
    }
    // Still blocked for guesses.
    assert_eq!(
        app.verify(json!({"key": "garbage"})).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    app.stop().await;
}

async fn known_keys_that_are_not_valid_never_count_as_guesses(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let app = start(store, |c| c.verify_failure_limit = 5).await;
    let known = known_invalid_keys(&app).await;
    // 200 verifications of each known-but-failing key (a client retrying with
    // a revoked key), 40 times the limit: every one gets its real answer.
    for (raw, body, code, auth_status, permissions) in &known {
        for i in 0..200 {
            if i % 2 == 0 {
                let r = app.verify(body.clone()).await;
                assert_eq!(r.status, StatusCode::OK, "{code} #{i}: {}", r.text);
                assert_eq!(r.body["code"], *code, "{}", r.text);
            } else {
                let r = auth(&app, raw, *permissions).await;
                assert_eq!(r.status(), *auth_status, "{code} #{i}");
            }
        }
    }
    // None of them counted: the address still has all its guesses, and they
    // are counted on their own (5 answered, then 429).
    for i in 0..5 {
        let r = app.verify(json!({"key": format!("guess-{i}")})).await;
        assert_eq!(r.status, StatusCode::OK, "guess {i}: {}", r.text);
        assert_eq!(r.body["code"], "NOT_FOUND");
    }
    let r = app.verify(json!({"key": "guess-5"})).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.text);
    // And blocked, the known keys still get their answers.
    let (_, body, code, _, _) = &known[0];
    assert_eq!(app.verify(body.clone()).await.body["code"], *code);
    app.stop().await;
}

/// Verifies `key` as if forwarded by a proxy for `client` (X-Forwarded-For).
async fn verify_via(app: &TestApp, client: &str, key: &str) -> StatusCode {
    app.client
        .post(app.url("/v1/keys/verify"))
        .header("X-Forwarded-For", client)
        .json(&json!({ "key": key }))
        .send()
        .await
        .expect("request")
        .status()
}

/// The client address the audit trail records for a create sent with these
/// forwarding headers.
async fn audited_client(app: &TestApp, headers: &[(&str, &str)]) -> serde_json::Value {
    let mut request = app
        .client
        .post(app.url("/v1/keys"))
        .bearer_auth(&app.token)
        .json(&json!({"name": "audited"}));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let r = crate::helpers::reply(request.send().await.expect("request")).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().expect("id");
    let audit = app.get(&format!("/v1/audit?key_id={id}")).await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.text);
    audit.body["events"][0]["client_addr"].clone()
}

async fn forwarding_headers_name_the_client_only_from_a_trusted_proxy(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    // The test client connects from 127.0.0.1: untrusted by default.
    let app = start(store, |c| c.verify_failure_limit = 3).await;
    // A spoofed X-Forwarded-For does not give a guesser fresh addresses.
    for i in 0..3 {
        let status = verify_via(&app, &format!("203.0.113.{i}"), "guess").await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(
        verify_via(&app, "203.0.113.99", "guess").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    let forwarded = [("X-Forwarded-For", "198.51.100.9")];
    assert_eq!(audited_client(&app, &forwarded).await, "127.0.0.1");
    let store = app.stop().await;

    // 127.0.0.1 is a trusted proxy: the client is the hop it names.
    let trusted = vec!["127.0.0.1/32".parse().expect("cidr")];
    let app = start(store, |c| {
        c.verify_failure_limit = 3;
        c.trusted_proxies = trusted;
    })
    .await;
    for i in 0..3 {
        let status = verify_via(&app, "1.1.1.1, 203.0.113.7", &format!("guess-{i}")).await;
        assert_eq!(status, StatusCode::OK);
    }
    // The client's own left part of the header does not matter: 203.0.113.7
    // is blocked, whatever it claims.
    for client in [
        "203.0.113.7",
        "9.9.9.9, 203.0.113.7",
        "garbage, 203.0.113.7",
    ] {
        assert_eq!(
            verify_via(&app, client, "guess").await,
            StatusCode::TOO_MANY_REQUESTS,
            "{client}"
        );
    }
    // Another client behind the same proxy is not.
    assert_eq!(
        verify_via(&app, "203.0.113.8", "guess").await,
        StatusCode::OK
    );
    // The audit trail records the client, not the proxy; a malformed header
    // names the proxy.
    assert_eq!(audited_client(&app, &forwarded).await, "198.51.100.9");
    assert_eq!(
        audited_client(
            &app,
            &[("Forwarded", "for=\"[2001:db8::7]:4711\";proto=https")]
        )
        .await,
        "2001:db8::7"
    );
    assert_eq!(
        audited_client(&app, &[("X-Forwarded-For", "not an address")]).await,
        "127.0.0.1"
    );
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
