//! Every error code of the contract, produced by the input that should produce it:
//! the status, the machine-readable `error.code` and, for validation, the field.

use std::time::{SystemTime, UNIX_EPOCH};

use keyledger::http::auth::Claims;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{
    reply, spawn_app, spawn_sqlite_app, token, Backend, Reply, TestApp, SECRET, TENANT,
};

// These involve the store, once per backend. Those decided before any store is
// touched (the token, the shape of the request) are the plain `#[tokio::test]`s
// below, run once, on SQLite.
backend_tests!(
    an_unknown_field_is_a_422_naming_the_field,
    a_missing_authorization_header_is_a_401_with_a_bearer_challenge,
    an_api_key_as_management_credential_is_a_403_api_key_not_allowed,
    another_tenants_key_is_a_404_on_every_route_and_stays_untouched,
    an_unknown_key_id_is_a_404_on_every_route,
    every_command_on_a_deleted_key_is_a_404_but_its_history_stays,
    invalid_names_are_422_on_name,
    invalid_permissions_are_422_on_permissions,
    a_past_expiry_is_422_on_expires_at,
    oversized_or_non_object_metadata_is_422_on_metadata,
    an_unknown_environment_is_422_on_environment,
    invalid_updates_are_422_naming_the_field,
    invalid_list_parameters_are_422_naming_the_parameter,
    verifying_garbage_answers_200_not_found,
    verifying_with_an_unknown_environment_is_422,
    deactivating_an_inactive_key_is_200_and_records_no_event,
    reactivating_an_active_key_is_200_and_records_no_event,
);

/// A well-formed key with a valid checksum that no server ever issued
/// (`vectors/key-format.json`).
const UNISSUED_KEY: &str = "kl_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFr";

fn assert_error(r: &Reply, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.code(), code, "{}", r.text);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "an error carries a message: {}",
        r.text
    );
}

fn assert_validation(r: &Reply, field: &str) {
    assert_error(r, StatusCode::UNPROCESSABLE_ENTITY, "validation_failed");
    assert_eq!(r.body["error"]["details"]["field"], field, "{}", r.text);
}

async fn unauthenticated(app: &TestApp, method: Method, path: &str) -> Reply {
    reply(
        app.client
            .request(method, app.url(path))
            .send()
            .await
            .expect("request"),
    )
    .await
}

async fn with_authorization(app: &TestApp, path: &str, authorization: &str) -> Reply {
    reply(
        app.client
            .get(app.url(path))
            .header("authorization", authorization)
            .send()
            .await
            .expect("request"),
    )
    .await
}

async fn create(app: &TestApp, body: Value) -> Reply {
    app.post("/v1/keys", body).await
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_a_400_malformed_request() {
    let app = spawn_sqlite_app().await;
    for body in [
        r#"{"name": "#,
        r#"{"name": "a",}"#,
        "not json",
        r#"{"name": "a"} {}"#,
    ] {
        let r = app.send_raw(Method::POST, "/v1/keys", body).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "malformed_request");
    }
    let r = app
        .send_raw(Method::PATCH, "/v1/keys/key_x", r#"{"name": "#)
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let list = app.get("/v1/keys").await;
    assert_eq!(list.body["keys"], json!([]), "nothing was created");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_body_on_create_is_a_400_malformed_request() {
    let app = spawn_sqlite_app().await;
    let r = app.send_raw(Method::POST, "/v1/keys", "").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "malformed_request");
    app.stop().await;
}

async fn an_unknown_field_is_a_422_naming_the_field(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let r = create(&app, json!({"name": "a", "colour": "blue"})).await;
    assert_validation(&r, "colour");

    let (id, _) = app.create_key("billing").await;
    let r = app
        .send(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"status": "inactive"})),
        )
        .await;
    assert_validation(&r, "status");
    let r = app
        .post(&format!("/v1/keys/{id}/deactivate"), json!({"why": "x"}))
        .await;
    assert_validation(&r, "why");
    let r = app
        .verify(json!({"key": UNISSUED_KEY, "tenant": "acme"}))
        .await;
    assert_validation(&r, "tenant");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrongly_typed_field_is_a_422_naming_the_field() {
    let app = spawn_sqlite_app().await;
    assert_validation(&create(&app, json!({"name": 5})).await, "name");
    assert_validation(
        &create(&app, json!({"name": "a", "permissions": "keys:read"})).await,
        "permissions",
    );
    assert_validation(
        &create(&app, json!({"name": "a", "expires_at": "tomorrow"})).await,
        "expires_at",
    );
    assert_validation(
        &create(&app, json!({"description": "no name"})).await,
        "name",
    );
    assert_validation(&app.verify(json!({"key": 42})).await, "key");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_64_kib_is_a_413_payload_too_large() {
    let app = spawn_sqlite_app().await;
    let body = json!({"name": "big", "description": "x".repeat(65 * 1024)}).to_string();
    assert!(body.len() > 64 * 1024);
    let r = app.send_raw(Method::POST, "/v1/keys", &body).await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    let verify_body = json!({"key": "k".repeat(65 * 1024)}).to_string();
    let r = reply(
        app.client
            .post(app.url("/v1/keys/verify"))
            .header("content-type", "application/json")
            .body(verify_body)
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_error(&r, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");
    app.stop().await;
}

async fn a_missing_authorization_header_is_a_401_with_a_bearer_challenge(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, _) = app.create_key("billing").await;
    for (method, path) in [
        (Method::GET, "/v1/keys".to_string()),
        (Method::POST, "/v1/keys".to_string()),
        (Method::GET, format!("/v1/keys/{id}")),
        (Method::DELETE, format!("/v1/keys/{id}")),
        (Method::POST, format!("/v1/keys/{id}/deactivate")),
        (Method::GET, format!("/v1/keys/{id}/events")),
        (Method::GET, "/v1/audit".to_string()),
    ] {
        let response = app
            .client
            .request(method.clone(), app.url(&path))
            .send()
            .await
            .expect("request");
        let challenge = response
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().expect("text").to_string());
        let r = reply(response).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
        let challenge = challenge.unwrap_or_else(|| panic!("{method} {path}: no WWW-Authenticate"));
        assert!(challenge.starts_with("Bearer"), "{challenge}");
    }
    let view = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(
        view.status,
        StatusCode::OK,
        "the unauthenticated delete did nothing"
    );
    assert_eq!(view.body["status"], "active", "nor did the deactivate");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_bearer_authorization_is_a_401() {
    let app = spawn_sqlite_app().await;
    for header in ["Basic YWxpY2U6c2VjcmV0", "Bearer", "Bearer    ", "token"] {
        let r = with_authorization(&app, "/v1/keys", header).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_signed_with_another_secret_is_a_401() {
    let app = spawn_sqlite_app().await;
    let forged = keyledger::http::auth::mint(
        b"not-the-server-secret-0123456789abcdef",
        TENANT,
        "mallory",
        std::time::Duration::from_secs(600),
    )
    .expect("mint");
    let r = app.send_as(&forged, Method::GET, "/v1/keys", None).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    let r = app
        .send_as(
            &forged,
            Method::POST,
            "/v1/keys",
            Some(json!({"name": "forged"})),
        )
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");

    // A valid token with one signature byte changed.
    let good = token(TENANT, "alice");
    let mut tampered = good.clone().into_bytes();
    let last = tampered.len() - 2;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).expect("ascii");
    let r = app.send_as(&tampered, Method::GET, "/v1/keys", None).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");

    let list = app.get("/v1/keys").await;
    assert_eq!(
        list.body["keys"],
        json!([]),
        "the forged create wrote nothing"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_is_a_401() {
    let app = spawn_sqlite_app().await;
    let now = now_secs();
    let claims = Claims {
        sub: "alice".into(),
        tenant: TENANT.into(),
        exp: now - 3600,
        iat: Some(now - 7200),
    };
    let expired = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode");
    let r = app.send_as(&expired, Method::GET, "/v1/keys", None).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");

    // The same claims with a future expiry are accepted: only `exp` made the difference.
    let fresh = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            exp: now + 600,
            ..claims
        },
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode");
    let r = app.send_as(&fresh, Method::GET, "/v1/keys", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_garbage_token_is_a_401() {
    let app = spawn_sqlite_app().await;
    for bad in ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."] {
        let r = app.send_as(bad, Method::GET, "/v1/keys", None).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // A correctly signed token without the tenant claim.
    let now = now_secs();
    let no_tenant = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("encode");
    let r = app.send_as(&no_tenant, Method::GET, "/v1/keys", None).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
    app.stop().await;
}

async fn an_api_key_as_management_credential_is_a_403_api_key_not_allowed(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, key) = app.create_key("billing").await;
    let r = app.send_as(&key, Method::GET, "/v1/keys", None).await;
    assert_error(&r, StatusCode::FORBIDDEN, "api_key_not_allowed");
    let r = app
        .send_as(
            &key,
            Method::POST,
            &format!("/v1/keys/{id}/deactivate"),
            None,
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "api_key_not_allowed");
    let r = app
        .send_as(
            &key,
            Method::POST,
            "/v1/keys",
            Some(json!({"name": "child"})),
        )
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "api_key_not_allowed");
    // A key with a typo is still recognised as a key, not as a broken token.
    let typo = format!("{}x", &key[..key.len() - 1]);
    let r = app.send_as(&typo, Method::GET, "/v1/keys", None).await;
    assert_error(&r, StatusCode::FORBIDDEN, "api_key_not_allowed");
    let r = with_authorization(&app, "/v1/audit", &format!("Bearer {UNISSUED_KEY}")).await;
    assert_error(&r, StatusCode::FORBIDDEN, "api_key_not_allowed");

    assert_eq!(
        app.verify_code(&key).await,
        "VALID",
        "the key was not deactivated"
    );
    assert_eq!(
        app.get("/v1/keys").await.body["keys"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );
    app.stop().await;
}

async fn another_tenants_key_is_a_404_on_every_route_and_stays_untouched(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, key) = app.create_key("billing").await;
    let prefix = app.get(&format!("/v1/keys/{id}")).await.body["prefix"]
        .as_str()
        .expect("prefix")
        .to_string();
    let other = token("globex", "mallory");
    for target in [&id, &prefix] {
        let requests: [(Method, String, Option<Value>); 6] = [
            (Method::GET, format!("/v1/keys/{target}"), None),
            (
                Method::PATCH,
                format!("/v1/keys/{target}"),
                Some(json!({"name": "pwned"})),
            ),
            (Method::POST, format!("/v1/keys/{target}/deactivate"), None),
            (Method::POST, format!("/v1/keys/{target}/reactivate"), None),
            (Method::DELETE, format!("/v1/keys/{target}"), None),
            (Method::GET, format!("/v1/keys/{target}/events"), None),
        ];
        for (method, path, body) in requests {
            let r = app.send_as(&other, method.clone(), &path, body).await;
            assert_error(&r, StatusCode::NOT_FOUND, "key_not_found");
        }
    }
    let r = app.send_as(&other, Method::GET, "/v1/keys", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["keys"], json!([]), "another tenant lists nothing");
    let r = app
        .send_as(&other, Method::GET, &format!("/v1/audit?key_id={id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["events"], json!([]), "another tenant audits nothing");

    let view = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(view.body["name"], "billing");
    assert_eq!(view.body["status"], "active");
    assert_eq!(app.key_events(&id).await.len(), 1, "no event was recorded");
    assert_eq!(app.verify_code(&key).await, "VALID");
    app.stop().await;
}

async fn an_unknown_key_id_is_a_404_on_every_route(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    app.create_key("billing").await;
    for id in [
        "key_0190a0b0c0d07000800000000000000",
        "nonsense",
        "kl_live_zzzzzzzz",
    ] {
        let requests: [(Method, String, Option<Value>); 6] = [
            (Method::GET, format!("/v1/keys/{id}"), None),
            (
                Method::PATCH,
                format!("/v1/keys/{id}"),
                Some(json!({"name": "x"})),
            ),
            (Method::POST, format!("/v1/keys/{id}/deactivate"), None),
            (Method::POST, format!("/v1/keys/{id}/reactivate"), None),
            (Method::DELETE, format!("/v1/keys/{id}"), None),
            (Method::GET, format!("/v1/keys/{id}/events"), None),
        ];
        for (method, path, body) in requests {
            let r = app.send(method, &path, body).await;
            assert_error(&r, StatusCode::NOT_FOUND, "key_not_found");
        }
    }
    app.stop().await;
}

async fn every_command_on_a_deleted_key_is_a_404_but_its_history_stays(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, key) = app.create_key("billing").await;
    let r = app
        .send(Method::DELETE, &format!("/v1/keys/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let requests: [(Method, String, Option<Value>); 5] = [
        (Method::GET, format!("/v1/keys/{id}"), None),
        (
            Method::PATCH,
            format!("/v1/keys/{id}"),
            Some(json!({"name": "back"})),
        ),
        (Method::POST, format!("/v1/keys/{id}/deactivate"), None),
        (Method::POST, format!("/v1/keys/{id}/reactivate"), None),
        (Method::DELETE, format!("/v1/keys/{id}"), None),
    ];
    for (method, path, body) in requests {
        let r = app.send(method, &path, body).await;
        assert_error(&r, StatusCode::NOT_FOUND, "key_not_found");
    }
    let types: Vec<Value> = app
        .key_events(&id)
        .await
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(types, [json!("KeyCreated"), json!("KeyDeleted")]);
    assert_eq!(app.verify_code(&key).await, "NOT_FOUND");
    app.stop().await;
}

async fn invalid_names_are_422_on_name(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for name in [String::new(), "   ".into(), "a".repeat(101)] {
        assert_validation(&create(&app, json!({ "name": name })).await, "name");
    }
    // The bounds themselves are accepted.
    let r = create(&app, json!({"name": "a".repeat(100)})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    app.stop().await;
}

async fn invalid_permissions_are_422_on_permissions(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let too_many: Vec<String> = (0..51).map(|i| format!("p{i}")).collect();
    for permissions in [
        json!(["Keys:Read"]),
        json!(["keys read"]),
        json!([""]),
        json!(["a".repeat(65)]),
        json!(too_many),
    ] {
        let r = create(&app, json!({"name": "a", "permissions": permissions})).await;
        assert_validation(&r, "permissions");
    }
    let fifty: Vec<String> = (0..50).map(|i| format!("p{i}")).collect();
    let r = create(
        &app,
        json!({"name": "a", "permissions": fifty, "environment": "test"}),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "50 permissions are allowed: {}",
        r.text
    );
    let list = app.get("/v1/keys").await;
    assert_eq!(list.body["keys"].as_array().map(Vec::len), Some(1));
    app.stop().await;
}

async fn a_past_expiry_is_422_on_expires_at(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let r = create(&app, json!({"name": "a", "expires_at": past})).await;
    assert_validation(&r, "expires_at");
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let r = create(&app, json!({"name": "a", "expires_at": future})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    app.stop().await;
}

async fn oversized_or_non_object_metadata_is_422_on_metadata(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for metadata in [
        json!({"blob": "x".repeat(4097)}),
        json!([1, 2, 3]),
        json!("team=billing"),
        json!(7),
    ] {
        let r = create(&app, json!({"name": "a", "metadata": metadata})).await;
        assert_validation(&r, "metadata");
    }
    let r = create(&app, json!({"name": "a", "metadata": {"team": "billing"}})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["metadata"], json!({"team": "billing"}));
    app.stop().await;
}

async fn an_unknown_environment_is_422_on_environment(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    for env in ["prod", "LIVE", ""] {
        let r = create(&app, json!({"name": "a", "environment": env})).await;
        assert_validation(&r, "environment");
    }
    let r = create(&app, json!({"name": "a", "environment": "test"})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(r.body["key"].as_str().expect("key").starts_with("kl_test_"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_description_is_422_on_description() {
    let app = spawn_sqlite_app().await;
    let r = create(&app, json!({"name": "a", "description": "d".repeat(501)})).await;
    assert_validation(&r, "description");
    app.stop().await;
}

async fn invalid_updates_are_422_naming_the_field(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, _) = app.create_key("billing").await;
    let path = format!("/v1/keys/{id}");
    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let cases = [
        (json!({"name": ""}), "name"),
        (json!({"name": null}), "name"),
        (json!({"name": "a".repeat(101)}), "name"),
        (json!({"permissions": ["UPPER"]}), "permissions"),
        (json!({"permissions": null}), "permissions"),
        (json!({"expires_at": past}), "expires_at"),
        (json!({"metadata": [1]}), "metadata"),
        (json!({"metadata": {"x": "y".repeat(5000)}}), "metadata"),
    ];
    for (body, field) in cases {
        let r = app.send(Method::PATCH, &path, Some(body)).await;
        assert_validation(&r, field);
    }
    let r = app
        .post(
            &format!("/v1/keys/{id}/deactivate"),
            json!({"reason": "r".repeat(501)}),
        )
        .await;
    assert_validation(&r, "reason");
    assert_eq!(
        app.key_events(&id).await.len(),
        1,
        "no invalid update was recorded"
    );
    assert_eq!(app.get(&path).await.body["name"], "billing");
    app.stop().await;
}

async fn invalid_list_parameters_are_422_naming_the_parameter(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let cases = [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=-1", "limit"),
        ("limit=ten", "limit"),
        ("status=deleted", "status"),
        ("status=ACTIVE", "status"),
        ("environment=prod", "environment"),
        ("cursor=garbage", "cursor"),
        ("cursor=-5", "cursor"),
    ];
    for (query, field) in cases {
        let r = app.get(&format!("/v1/keys?{query}")).await;
        assert_validation(&r, field);
    }
    for query in [
        "limit=1",
        "limit=100",
        "status=inactive",
        "environment=test",
    ] {
        let r = app.get(&format!("/v1/keys?{query}")).await;
        assert_eq!(r.status, StatusCode::OK, "{query}: {}", r.text);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_audit_parameters_are_422_naming_the_parameter() {
    let app = spawn_sqlite_app().await;
    let cases = [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("order=sideways", "order"),
        ("cursor=garbage", "cursor"),
        ("since=yesterday", "since"),
    ];
    for (query, field) in cases {
        let r = app.get(&format!("/v1/audit?{query}")).await;
        assert_validation(&r, field);
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_route_is_a_json_404() {
    let app = spawn_sqlite_app().await;
    for path in ["/v2/keys", "/nope", "/v1/keys/a/b/c"] {
        let r = unauthenticated(&app, Method::GET, path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.text);
        assert!(
            r.body["error"]["code"].is_string(),
            "a JSON error body: {}",
            r.text
        );
        assert_ne!(r.code(), "key_not_found", "a route is not a key");
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_is_a_json_405() {
    let app = spawn_sqlite_app().await;
    let r = app
        .send(Method::PUT, "/v1/keys", Some(json!({"name": "a"})))
        .await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{}", r.text);
    assert!(r.body["error"]["code"].is_string(), "{}", r.text);
    app.stop().await;
}

async fn verifying_garbage_answers_200_not_found(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (_, key) = app.create_key("billing").await;
    let mut flipped = key.clone().into_bytes();
    flipped[20] = if flipped[20] == b'a' { b'b' } else { b'a' };
    let flipped = String::from_utf8(flipped).expect("ascii");
    for presented in [
        String::new(),
        "x".into(),
        "garbage garbage".into(),
        "kl_live_".into(),
        "kl_live_ÄÖÜßéèñ漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字漢字12".into(),
        format!("{key}x"),
        key[..key.len() - 1].to_string(),
        flipped,
        UNISSUED_KEY.into(),
        key.to_uppercase(),
    ] {
        let r = app.verify(json!({ "key": presented })).await;
        assert_eq!(r.status, StatusCode::OK, "{presented:?}: {}", r.text);
        assert_eq!(r.body["valid"], false, "{presented:?}: {}", r.text);
        assert_eq!(r.body["code"], "NOT_FOUND", "{presented:?}: {}", r.text);
        assert!(
            r.body.get("key_id").is_none(),
            "nothing about a key: {}",
            r.text
        );
    }
    assert_eq!(app.verify_code(&key).await, "VALID");
    app.stop().await;
}

async fn verifying_with_an_unknown_environment_is_422(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (_, key) = app.create_key("billing").await;
    let r = app.verify(json!({"key": key, "environment": "prod"})).await;
    assert_validation(&r, "environment");
    let r = app.verify(json!({"key": key, "environment": "test"})).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["code"], "WRONG_ENVIRONMENT");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verifying_with_a_malformed_body_is_400_or_422() {
    let app = spawn_sqlite_app().await;
    let raw = |body: &'static str| {
        app.client
            .post(app.url("/v1/keys/verify"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let r = reply(raw(r#"{"key": "#).await.expect("request")).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "malformed_request");
    let r = reply(raw("").await.expect("request")).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "malformed_request");
    let r = reply(raw("{}").await.expect("request")).await;
    assert_validation(&r, "key");
    let r = reply(
        raw(r#"{"key": "k", "permissions": "a"}"#)
            .await
            .expect("request"),
    )
    .await;
    assert_validation(&r, "permissions");
    app.stop().await;
}

async fn deactivating_an_inactive_key_is_200_and_records_no_event(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, key) = app.create_key("billing").await;
    let path = format!("/v1/keys/{id}/deactivate");
    let first = app.post(&path, json!({"reason": "first"})).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(app.key_events(&id).await.len(), 2);
    for _ in 0..3 {
        let again = app.post(&path, json!({"reason": "again"})).await;
        assert_eq!(again.status, StatusCode::OK, "{}", again.text);
        assert_eq!(again.body["status"], "inactive");
        assert_eq!(again.body["updated_at"], first.body["updated_at"]);
    }
    let events = app.key_events(&id).await;
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["KeyCreated", "KeyDeactivated"]);
    assert_eq!(events[1]["data"]["reason"], "first", "{}", events[1]);
    assert_eq!(app.verify_code(&key).await, "DISABLED");
    app.stop().await;
}

async fn reactivating_an_active_key_is_200_and_records_no_event(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, key) = app.create_key("billing").await;
    let r = app
        .send(Method::POST, &format!("/v1/keys/{id}/reactivate"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "active");
    assert_eq!(app.key_events(&id).await.len(), 1);
    assert_eq!(app.verify_code(&key).await, "VALID");
    app.stop().await;
}
