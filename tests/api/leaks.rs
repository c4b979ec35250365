//! Public leak reports: anyone may report; the answer says nothing about the
//! keys; a key of ours gets `KeyLeakReported` and is deactivated ("leaked"),
//! once per reporter and URL; the endpoint is limited per client address.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{reply, spawn_app, spawn_sqlite_app, token, Backend, Reply, TestApp};

backend_tests!(a_reported_key_is_recorded_once_and_deactivated_whatever_its_tenant,);

async fn report(app: &TestApp, body: Value) -> Reply {
    // No credential: anyone may report.
    reply(
        app.client
            .post(app.url("/v1/leaks/report"))
            .json(&body)
            .send()
            .await
            .expect("request"),
    )
    .await
}

async fn events(app: &TestApp, token: &str, id: &str) -> Vec<Value> {
    app.send_as(token, Method::GET, &format!("/v1/keys/{id}/events"), None)
        .await
        .body["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn a_reported_key_is_recorded_once_and_deactivated_whatever_its_tenant(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, key) = app.create_key("leaked").await;
    let (kept_id, _) = app.create_key("not reported").await;
    let other = token("other-tenant", "bob");
    let theirs = app
        .send_as(
            &other,
            Method::POST,
            "/v1/keys",
            Some(json!({"name": "theirs"})),
        )
        .await;
    let (their_id, their_key) = (
        theirs.body["id"].as_str().expect("id").to_string(),
        theirs.body["key"].as_str().expect("key").to_string(),
    );
    let body = json!({
        "keys": [key, "not a key", their_key, "kl_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFr"],
        "url": "https://paste.example/abc",
    });
    let r = report(&app, body.clone()).await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text);
    assert_eq!(
        r.body,
        json!({"received": 4}),
        "nothing said about the keys"
    );

    // Acted on after the answer: deactivated, with the report before it.
    let started = Instant::now();
    while app.verify_code(&key).await != "DISABLED"
        || app.verify_code(&their_key).await != "DISABLED"
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "not deactivated"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let history = events(&app, &app.token, &id).await;
    let types: Vec<&str> = history.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types, ["KeyCreated", "KeyLeakReported", "KeyDeactivated"]);
    assert_eq!(history[1]["actor"], "keyledger:leaks:public");
    assert_eq!(history[1]["data"]["url"], "https://paste.example/abc");
    assert_eq!(history[2]["data"]["reason"], "leaked");
    // The other tenant's key was acted on too, in its own tenant's log.
    let theirs = events(&app, &other, &their_id).await;
    assert_eq!(theirs.len(), 3, "{theirs:?}");
    let kept = app.get(&format!("/v1/keys/{kept_id}")).await;
    assert_eq!(
        kept.body["status"], "active",
        "an unreported key is untouched"
    );

    // The same report again records nothing more.
    let r = report(&app, body).await;
    assert_eq!(r.status, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(events(&app, &app.token, &id).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_bounded_and_limited_per_address() {
    let app = spawn_sqlite_app().await;
    let many: Vec<String> = (0..101).map(|i| format!("k{i}")).collect();
    let r = report(&app, json!({"keys": many})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.body["error"]["details"]["field"], "keys");
    let r = report(&app, json!({"keys": ["x".repeat(300)]})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let mut statuses = Vec::new();
    for _ in 0..25 {
        statuses.push(report(&app, json!({"keys": ["nothing"]})).await.status);
    }
    assert!(
        statuses[..18].iter().all(|s| *s == StatusCode::ACCEPTED),
        "{statuses:?}"
    );
    assert_eq!(statuses.last(), Some(&StatusCode::TOO_MANY_REQUESTS));
}
