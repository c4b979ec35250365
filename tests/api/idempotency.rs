//! `Idempotency-Key` on create and rotate.

use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{spawn_app, Backend, Reply, TestApp};

backend_tests!(
    a_retry_with_the_same_idempotency_key_returns_the_first_key_and_creates_nothing,
    eight_parallel_identical_requests_create_exactly_one_key,
    idempotency_survives_a_restart_and_expires_after_a_day_with_its_sealed_key,
    a_rotation_retry_returns_the_same_successor,
);

async fn post_with_key(app: &TestApp, path: &str, idem: &str, body: Value) -> Reply {
    let response = app
        .client
        .post(app.url(path))
        .bearer_auth(&app.token)
        .header("Idempotency-Key", idem)
        .json(&body)
        .send()
        .await
        .expect("request");
    crate::helpers::reply(response).await
}

async fn key_count(app: &TestApp) -> usize {
    app.get("/v1/keys?limit=100").await.body["keys"]
        .as_array()
        .expect("keys")
        .len()
}

async fn a_retry_with_the_same_idempotency_key_returns_the_first_key_and_creates_nothing(
    backend: Backend,
) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let body = json!({"name": "once", "permissions": ["a:b"]});
    let first = post_with_key(&app, "/v1/keys", "req-1", body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let again = post_with_key(&app, "/v1/keys", "req-1", body.clone()).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(
        again.body, first.body,
        "the same response, raw key included"
    );
    assert_eq!(key_count(&app).await, 1);

    let other = post_with_key(&app, "/v1/keys", "req-1", json!({"name": "different"})).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.code(), "idempotency_key_reused");
    // Another tenant may use the same idempotency key for itself.
    let globex = crate::helpers::token("globex", "bob");
    let theirs = app
        .client
        .post(app.url("/v1/keys"))
        .bearer_auth(&globex)
        .header("Idempotency-Key", "req-1")
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(theirs.status(), StatusCode::CREATED);
    // A failed first attempt claims nothing: the retry runs.
    let bad = post_with_key(&app, "/v1/keys", "req-2", json!({"name": ""})).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(key_count(&app).await, 1);
    app.stop().await;
}

async fn eight_parallel_identical_requests_create_exactly_one_key(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let body = json!({"name": "racer"});
    let replies = futures::future::join_all(
        (0..8).map(|_| post_with_key(&app, "/v1/keys", "race", body.clone())),
    )
    .await;
    for r in &replies {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.body["key"], replies[0].body["key"]);
        assert_eq!(r.body["id"], replies[0].body["id"]);
    }
    assert_eq!(key_count(&app).await, 1);
    app.stop().await;
}

async fn idempotency_survives_a_restart_and_expires_after_a_day_with_its_sealed_key(
    backend: Backend,
) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let body = json!({"name": "durable"});
    let first = post_with_key(&app, "/v1/keys", "req-restart", body.clone()).await;
    let raw = first.body["key"].as_str().expect("key").to_string();
    let app = app.restart().await;
    let again = post_with_key(&app, "/v1/keys", "req-restart", body.clone()).await;
    assert_eq!(again.body, first.body);
    assert_eq!(key_count(&app).await, 1);

    // The kept raw key is sealed: it is nowhere in the database files.
    if backend == Backend::Sqlite {
        for path in app.store.sqlite_files() {
            let bytes = std::fs::read(&path).unwrap_or_default();
            assert!(
                !bytes.windows(raw.len()).any(|w| w == raw.as_bytes()),
                "raw key found in {}",
                path.display()
            );
        }
    }

    // After 24 h the entry (and its sealed key) is erased; the header is free again.
    app.clock.advance(chrono::Duration::hours(25));
    let events = keyledger::app::open_store(&app.store.config())
        .await
        .expect("open");
    let purged = keyledger::idempotency::purge_expired(&events, &app.clock)
        .await
        .expect("purge");
    assert_eq!(purged, 1);
    events.close().await;
    let later = post_with_key(&app, "/v1/keys", "req-restart", body).await;
    assert_eq!(later.status, StatusCode::CREATED);
    assert_ne!(later.body["id"], first.body["id"]);
    app.stop().await;
}

async fn a_rotation_retry_returns_the_same_successor(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, _) = app.create_key("rotating").await;
    let path = format!("/v1/keys/{id}/rotate");
    let first = post_with_key(&app, &path, "rot-1", json!({"grace_period_seconds": 60})).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let again = post_with_key(&app, &path, "rot-1", json!({"grace_period_seconds": 60})).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.body, first.body);
    assert_eq!(key_count(&app).await, 2);
    app.stop().await;
}
