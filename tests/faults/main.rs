//! Faults: the database goes away under a running node and comes back.

mod chaos;
#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
mod limits;
mod proxy;
#[path = "../api/receiver.rs"]
#[allow(dead_code)]
mod receiver;
mod webhooks;

use std::time::{Duration, Instant};

use helpers::{start, Backend, TestStore};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::Connection;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_outage_keeps_verification_answering_and_heals_by_itself() {
    let Some(mut store) = TestStore::new(Backend::Postgres).await else {
        return;
    };
    let (proxy, direct_url) = proxy::between(&mut store).await;
    let app = start(store, |_| {}).await;

    let (id, key) = app.create_key("survivor").await;
    proxy.disable();

    // Verification answers from memory.
    assert_eq!(app.verify_code(&key).await, "VALID");
    // Commands are refused with 503 and write nothing.
    let r = app.post("/v1/keys", json!({"name": "during outage"})).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    assert_eq!(r.code(), "store_unavailable");
    let r = app
        .send(Method::POST, &format!("/v1/keys/{id}/deactivate"), None)
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    let ready = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.verify_code(&key).await, "VALID");

    proxy.enable();
    let started = Instant::now();
    loop {
        let ready = app
            .client
            .get(app.url("/readyz"))
            .send()
            .await
            .expect("readyz");
        if ready.status() == StatusCode::OK {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never became ready again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, second) = app.create_key("after outage").await;
    assert_eq!(app.verify_code(&second).await, "VALID");
    assert_eq!(app.verify_code(&key).await, "VALID");

    // Nothing half written: exactly the two acknowledged creates are stored.
    let mut conn = sqlx::PgConnection::connect(&direct_url)
        .await
        .expect("connect");
    let types: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM events ORDER BY global_position")
            .fetch_all(&mut conn)
            .await
            .expect("events");
    assert_eq!(types, ["KeyCreated", "KeyCreated"]);
    app.stop().await;
}

crate::backend_tests!(
    nothing_acknowledged_is_lost_across_kill_9,
    limits_hold_across_kill_9
);

use chaos::nothing_acknowledged_is_lost_across_kill_9;
use limits::limits_hold_across_kill_9;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_away_credits_fail_closed_and_rate_limits_keep_their_share() {
    limits::with_the_store_away_credits_fail_closed_and_rate_limits_keep_their_share().await;
}
