//! POST /v1/keys/{id}/rotate: a successor now, the old key until the grace ends.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::backend_tests;
use crate::helpers::{spawn_app, Backend};

backend_tests!(
    rotation_issues_a_successor_and_retires_the_old_key_after_the_grace_period,
    rotation_never_extends_a_key_and_refuses_twice,
);

async fn rotation_issues_a_successor_and_retires_the_old_key_after_the_grace_period(
    backend: Backend,
) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let r = app
        .post(
            "/v1/keys",
            json!({"name": "billing", "description": "prod billing", "environment": "test",
                   "permissions": ["invoices:read"], "metadata": {"team": "pay"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let old_id = r.body["id"].as_str().expect("id").to_string();
    let old_key = r.body["key"].as_str().expect("key").to_string();

    let rotated = app
        .post(
            &format!("/v1/keys/{old_id}/rotate"),
            json!({"grace_period_seconds": 600}),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::CREATED, "{}", rotated.text);
    let new_id = rotated.body["id"].as_str().expect("id").to_string();
    let new_key = rotated.body["key"].as_str().expect("key").to_string();
    assert_ne!(new_id, old_id);
    assert_ne!(new_key, old_key);
    for field in [
        "name",
        "description",
        "environment",
        "permissions",
        "metadata",
    ] {
        assert_eq!(rotated.body[field], r.body[field], "{field}");
    }
    assert_eq!(rotated.body["rotated_from"], old_id.as_str());
    assert!(new_key.starts_with("kl_test_"));

    let old = app.get(&format!("/v1/keys/{old_id}")).await;
    assert_eq!(old.body["rotated_to"], new_id.as_str());
    let expires: chrono::DateTime<chrono::Utc> = old.body["expires_at"]
        .as_str()
        .expect("expiry set")
        .parse()
        .expect("time");
    let expected = app.clock.now() + chrono::Duration::seconds(600);
    assert!(
        (expected - expires).num_seconds().abs() <= 5,
        "{expires} vs {expected}"
    );

    // Both work during the grace period; after it only the successor does.
    assert_eq!(app.verify_code(&old_key).await, "VALID");
    assert_eq!(app.verify_code(&new_key).await, "VALID");
    app.clock.advance(chrono::Duration::seconds(601));
    assert_eq!(app.verify_code(&old_key).await, "EXPIRED");
    assert_eq!(app.verify_code(&new_key).await, "VALID");
    assert_eq!(
        app.get(&format!("/v1/keys/{old_id}")).await.body["status"],
        "expired"
    );

    let history = app.get(&format!("/v1/keys/{old_id}/events")).await;
    let types: Vec<&str> = history.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["KeyCreated", "KeyExpirySet"]);
    let created = app.get(&format!("/v1/keys/{new_id}/events")).await;
    assert_eq!(
        created.body["events"][0]["data"]["rotated_from"],
        old_id.as_str()
    );
    app.stop().await;
}

async fn rotation_never_extends_a_key_and_refuses_twice(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let soon = app.clock.now() + chrono::Duration::seconds(60);
    let r = app
        .post(
            "/v1/keys",
            json!({"name": "brief", "expires_at": soon.to_rfc3339()}),
        )
        .await;
    let id = r.body["id"].as_str().expect("id").to_string();
    let before = app.get(&format!("/v1/keys/{id}")).await.body["expires_at"].clone();

    let bad = app
        .post(
            &format!("/v1/keys/{id}/rotate"),
            json!({"grace_period_seconds": 2_592_001}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        bad.body["error"]["details"]["field"],
        "grace_period_seconds"
    );

    let r = app
        .send(Method::POST, &format!("/v1/keys/{id}/rotate"), None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let successor = r.body["id"].as_str().expect("id").to_string();
    // Default grace is a day, but the key was to expire in a minute: it still does.
    assert_eq!(
        app.get(&format!("/v1/keys/{id}")).await.body["expires_at"],
        before
    );

    let again = app
        .send(Method::POST, &format!("/v1/keys/{id}/rotate"), None)
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.code(), "conflict");
    let list = app.get("/v1/keys").await;
    assert_eq!(
        list.body["keys"].as_array().expect("keys").len(),
        2,
        "no extra key"
    );

    let r = app
        .send(Method::DELETE, &format!("/v1/keys/{successor}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let gone = app
        .send(Method::POST, &format!("/v1/keys/{successor}/rotate"), None)
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    let unknown = app
        .send(Method::POST, "/v1/keys/key_nope/rotate", None)
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    app.stop().await;
}
