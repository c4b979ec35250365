//! A command that committed is reported as committed. A failure is injected
//! right after the commit (`Config::after_commit`), standing in for a lost
//! commit acknowledgement, a store gone a moment later, or a process that
//! dies there. Before: the client got 5xx saying nothing changed, the
//! `Idempotency-Key` claim was released, and the retry issued a second live
//! key while the first, never received by anyone, stayed valid.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use keyledger::error::Error;
use keyledger::service::{AfterCommit, Stage};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{reply, start, Backend, Reply, TestApp, TestStore};

backend_tests!(
    a_create_whose_commit_answers_an_error_is_answered_and_its_retry_gets_the_same_key,
    a_create_whose_request_dies_after_the_commit_is_answered_to_the_retry,
    a_rotation_whose_request_dies_after_the_commit_is_finished_by_the_retry,
    an_update_whose_aftermath_fails_says_it_was_committed,
);

/// A hook that fails (or panics) at `stage` the first `times` times.
fn failing(stage: Stage, times: usize, panic: bool) -> AfterCommit {
    let left = Arc::new(AtomicUsize::new(times));
    AfterCommit::new(move |at| {
        if at != stage {
            return Ok(());
        }
        let fire = left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if !fire {
            return Ok(());
        }
        assert!(!panic, "the node dies right after the commit (injected)");
        Err(Error::StoreUnavailable(
            "connection lost after COMMIT (injected)".into(),
        ))
    })
}

async fn app_with(backend: Backend, hook: AfterCommit) -> Option<TestApp> {
    let store = TestStore::new(backend).await?;
    Some(start(store, |c| c.after_commit = Some(hook)).await)
}

async fn post_idempotent(app: &TestApp, path: &str, key: &str, body: Value) -> Reply {
    reply(
        app.client
            .post(app.url(path))
            .bearer_auth(&app.token)
            .header("idempotency-key", key)
            .json(&body)
            .send()
            .await
            .expect("request"),
    )
    .await
}

async fn key_ids(app: &TestApp) -> Vec<String> {
    let r = app.get("/v1/keys?limit=100").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["id"].as_str().expect("id").to_string())
        .collect()
}

async fn a_create_whose_commit_answers_an_error_is_answered_and_its_retry_gets_the_same_key(
    backend: Backend,
) {
    let Some(app) = app_with(backend, failing(Stage::Created, 2, false)).await else {
        return;
    };
    let body = json!({"name": "billing"});
    let first = post_idempotent(&app, "/v1/keys", "create-1", body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let retry = post_idempotent(&app, "/v1/keys", "create-1", body).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    assert_eq!(
        retry.body["key"], first.body["key"],
        "the retry gets the same key"
    );
    assert_eq!(retry.body["id"], first.body["id"]);
    // Without an Idempotency-Key too: committed is answered as created.
    let plain = app.post("/v1/keys", json!({"name": "plain"})).await;
    assert_eq!(plain.status, StatusCode::CREATED, "{}", plain.text);
    let ids = key_ids(&app).await;
    assert_eq!(ids.len(), 2, "one key per create: {ids:?}");
    for r in [&first, &plain] {
        let key = r.body["key"].as_str().expect("key");
        assert_eq!(app.verify_code(key).await, "VALID");
    }
    app.stop().await;
}

async fn a_create_whose_request_dies_after_the_commit_is_answered_to_the_retry(backend: Backend) {
    let Some(app) = app_with(backend, failing(Stage::Created, 1, true)).await else {
        return;
    };
    let body = json!({"name": "billing"});
    let first = post_idempotent(&app, "/v1/keys", "create-2", body.clone()).await;
    assert_eq!(
        first.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        first.text
    );
    assert!(!first.text.contains("nothing"), "{}", first.text);
    // The dead request's lease runs out; the retry that takes its claim over
    // finds the create committed and returns the answer it recorded.
    app.clock.advance(chrono::Duration::seconds(31));
    let retry = post_idempotent(&app, "/v1/keys", "create-2", body.clone()).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    let ids = key_ids(&app).await;
    assert_eq!(
        ids,
        vec![retry.body["id"].as_str().expect("id").to_string()]
    );
    let key = retry.body["key"].as_str().expect("key");
    assert_eq!(app.verify_code(key).await, "VALID");
    let again = post_idempotent(&app, "/v1/keys", "create-2", body).await;
    assert_eq!(again.body["key"], retry.body["key"]);
    assert_eq!(key_ids(&app).await.len(), 1);
    app.stop().await;
}

async fn a_rotation_whose_request_dies_after_the_commit_is_finished_by_the_retry(backend: Backend) {
    let Some(app) = app_with(backend, failing(Stage::Created, 0, true)).await else {
        return;
    };
    let (old, old_key) = app.create_key("rotating").await;
    // Now the next commit of a new key kills its request: the successor is
    // committed, the old key not yet pointed at it.
    let app = {
        let store = app.stop().await;
        start(store, |c| {
            c.after_commit = Some(failing(Stage::Created, 1, true))
        })
        .await
    };
    let path = format!("/v1/keys/{old}/rotate");
    let body = json!({"grace_period_seconds": 60});
    let first = post_idempotent(&app, &path, "rotate-1", body.clone()).await;
    assert_eq!(
        first.status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "{}",
        first.text
    );
    app.clock.advance(chrono::Duration::seconds(31));
    let retry = post_idempotent(&app, &path, "rotate-1", body).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    let successor = retry.body["id"].as_str().expect("id").to_string();
    let view = app.get(&format!("/v1/keys/{old}")).await;
    assert_eq!(view.body["rotated_to"], successor.as_str(), "{}", view.text);
    assert!(view.body["expires_at"].is_string(), "{}", view.text);
    let mut ids = key_ids(&app).await;
    ids.sort();
    let mut want = vec![old.clone(), successor];
    want.sort();
    assert_eq!(ids, want, "one successor, no orphan");
    assert_eq!(
        app.verify_code(&old_key).await,
        "VALID",
        "in its grace period"
    );
    let new_key = retry.body["key"].as_str().expect("key");
    assert_eq!(app.verify_code(new_key).await, "VALID");
    app.stop().await;
}

async fn an_update_whose_aftermath_fails_says_it_was_committed(backend: Backend) {
    let Some(app) = app_with(backend, failing(Stage::Command, 1, false)).await else {
        return;
    };
    let (id, _) = app.create_key("before").await;
    let r = app
        .send(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"name": "after"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.code(), "committed_not_visible");
    assert!(r.body["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("committed"));
    // This node's projections catch up by themselves (the tailer polls).
    let mut name = Value::Null;
    for _ in 0..100 {
        name = app.get(&format!("/v1/keys/{id}")).await.body["name"].clone();
        if name == "after" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(name, "after", "the update was committed");
    app.stop().await;
}
