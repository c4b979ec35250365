//! POST /v1/keys/{id}/rotate: a successor now, the old key until the grace ends.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::backend_tests;
use crate::helpers::{spawn_app, Backend, TestApp};

backend_tests!(
    rotation_issues_a_successor_and_retires_the_old_key_after_the_grace_period,
    rotation_never_extends_a_key_and_refuses_twice,
    a_rotated_keys_expiry_can_only_move_earlier,
    an_expired_key_cannot_be_rotated_and_nothing_is_written,
    a_deactivated_key_rotates_and_stays_inactive,
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
        // Both null (a field missing from both answers) would prove nothing.
        assert!(!r.body[field].is_null(), "{field}: {}", r.text);
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

fn expiry_of(reply: &crate::helpers::Reply) -> chrono::DateTime<chrono::Utc> {
    reply.body["expires_at"]
        .as_str()
        .expect("an expiry")
        .parse()
        .expect("time")
}

async fn patch_expiry(
    app: &TestApp,
    id: &str,
    expires_at: serde_json::Value,
) -> crate::helpers::Reply {
    app.send(
        Method::PATCH,
        &format!("/v1/keys/{id}"),
        Some(json!({ "expires_at": expires_at })),
    )
    .await
}

fn assert_refused_on_expires_at(r: &crate::helpers::Reply) {
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.code(), "validation_failed", "{}", r.text);
    assert_eq!(
        r.body["error"]["details"]["field"], "expires_at",
        "{}",
        r.text
    );
}

async fn a_rotated_keys_expiry_can_only_move_earlier(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, key) = app.create_key("billing").await;
    let r = app
        .post(
            &format!("/v1/keys/{id}/rotate"),
            json!({"grace_period_seconds": 600}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let retires = expiry_of(&app.get(&format!("/v1/keys/{id}")).await);

    // Neither cleared nor moved later: the retired key would live on.
    assert_refused_on_expires_at(&patch_expiry(&app, &id, json!(null)).await);
    let later = retires + chrono::Duration::days(1);
    assert_refused_on_expires_at(&patch_expiry(&app, &id, json!(later.to_rfc3339())).await);
    assert_eq!(
        expiry_of(&app.get(&format!("/v1/keys/{id}")).await),
        retires
    );

    // Earlier is fine (cutting the grace short), and it cannot grow back.
    let sooner = app.clock.now() + chrono::Duration::seconds(60);
    let r = patch_expiry(&app, &id, json!(sooner.to_rfc3339())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(expiry_of(&r), sooner);
    assert_refused_on_expires_at(&patch_expiry(&app, &id, json!(retires.to_rfc3339())).await);

    let types: Vec<String> = app
        .key_events(&id)
        .await
        .iter()
        .map(|e| e["type"].as_str().expect("type").to_string())
        .collect();
    assert_eq!(types, ["KeyCreated", "KeyExpirySet", "KeyUpdated"]);
    app.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(app.verify_code(&key).await, "EXPIRED");
    app.stop().await;
}

async fn an_expired_key_cannot_be_rotated_and_nothing_is_written(backend: Backend) {
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
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().expect("id").to_string();
    let key = r.body["key"].as_str().expect("key").to_string();
    app.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(app.verify_code(&key).await, "EXPIRED");

    for body in [None, Some(json!({"grace_period_seconds": 0}))] {
        let r = app
            .send(Method::POST, &format!("/v1/keys/{id}/rotate"), body)
            .await;
        assert_eq!(r.status, StatusCode::CONFLICT, "{}", r.text);
        assert_eq!(r.code(), "key_expired", "{}", r.text);
    }
    // Nothing was written: no successor (not even one deleted again), the old
    // key as it was.
    let audit = app.get("/v1/audit").await;
    let types: Vec<&str> = audit.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(types, ["KeyCreated"], "{}", audit.text);
    let old = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(old.body["status"], "expired");
    assert!(old.body["rotated_to"].is_null(), "{}", old.text);
    assert_eq!(expiry_of(&old), soon);
    app.stop().await;
}

async fn a_deactivated_key_rotates_and_stays_inactive(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    // Deactivate a leaked key at once, then hand its user a successor.
    let (id, key) = app.create_key("leaked").await;
    let r = app
        .post(
            &format!("/v1/keys/{id}/deactivate"),
            json!({"reason": "leaked"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .send(Method::POST, &format!("/v1/keys/{id}/rotate"), None)
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["status"], "active");
    let successor = r.body["key"].as_str().expect("key").to_string();
    assert_eq!(app.verify_code(&successor).await, "VALID");
    assert_eq!(app.verify_code(&key).await, "DISABLED");
    assert_eq!(
        app.get(&format!("/v1/keys/{id}")).await.body["status"],
        "inactive"
    );
    app.stop().await;
}
