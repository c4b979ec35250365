//! Usage over time: every verification of a known key is counted by outcome,
//! flushed with the usage events, and answered by `GET /v1/keys/{id}/usage`
//! and `GET /v1/usage` from the usage buckets, which a rebuild makes again
//! from the events.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{spawn_app, start, token, Backend};

backend_tests!(verifications_are_counted_by_outcome_and_survive_a_restart_and_a_rebuild,);

/// Sums one field over the buckets of an answer.
fn sum(body: &Value, field: &str) -> i64 {
    body["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| b[field].as_i64().expect(field))
        .sum()
}

async fn verifications_are_counted_by_outcome_and_survive_a_restart_and_a_rebuild(
    backend: Backend,
) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let r = app
        .post(
            "/v1/keys",
            json!({"name": "counted", "environment": "live", "permissions": ["read"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().expect("id").to_string();
    let key = r.body["key"].as_str().expect("key").to_string();
    let (quiet, _) = app.create_key("quiet").await;
    for _ in 0..3 {
        assert_eq!(app.verify_code(&key).await, "VALID");
    }
    let wrong_env = app.verify(json!({"key": key, "environment": "test"})).await;
    assert_eq!(wrong_env.body["code"], "WRONG_ENVIRONMENT");
    let denied = app
        .verify(json!({"key": key, "permissions": ["write"]}))
        .await;
    assert_eq!(denied.body["code"], "INSUFFICIENT_PERMISSIONS");
    let r = app
        .post(&format!("/v1/keys/{id}/deactivate"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    for _ in 0..2 {
        assert_eq!(app.verify_code(&key).await, "DISABLED");
    }
    // An unknown key names no key: counted nowhere.
    let unknown = "kl_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFr";
    assert_eq!(app.verify_code(unknown).await, "NOT_FOUND");

    // Counts are flushed at shutdown and read back after a restart.
    let store = app.stop().await;
    let app = start(store, |_| {}).await;
    let r = app
        .get(&format!("/v1/keys/{id}/usage?granularity=minute"))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["key_id"], id.as_str());
    assert_eq!(r.body["granularity"], "minute");
    // The last hour, from the start of its first minute to now: 61 buckets
    // (60 when now is on a minute's boundary), zero-filled.
    let buckets = r.body["buckets"].as_array().map_or(0, Vec::len);
    assert!((60..=61).contains(&buckets), "{buckets} buckets");
    let want = [
        ("total", 7),
        ("valid", 3),
        ("disabled", 2),
        ("wrong_environment", 1),
        ("insufficient_permissions", 1),
        ("expired", 0),
        ("rate_limited", 0),
    ];
    for (field, n) in want {
        assert_eq!(sum(&r.body, field), n, "{field}");
    }
    // The same counts by hour and by day.
    for g in ["hour", "day"] {
        let r = app
            .get(&format!("/v1/keys/{id}/usage?granularity={g}"))
            .await;
        assert_eq!(sum(&r.body, "total"), 7, "{g}");
        assert_eq!(sum(&r.body, "valid"), 3, "{g}");
    }
    // A refused verification is no use: the key list counts valid ones only.
    let view = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(view.body["usage_count"], 3, "{}", view.text);

    // The tenant's totals and its top keys.
    let r = app.get("/v1/usage?granularity=day").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(sum(&r.body, "total"), 7);
    assert_eq!(r.body["top_keys"][0]["key_id"], id.as_str(), "{}", r.text);
    assert_eq!(r.body["top_keys"][0]["name"], "counted");
    assert_eq!(r.body["top_keys"][0]["total"], 7);
    assert_eq!(r.body["top_keys"][0]["valid"], 3);
    assert_eq!(
        r.body["top_keys"].as_array().map(Vec::len),
        Some(1),
        "an unused key is not a top key: {}",
        r.text
    );
    let r = app.get(&format!("/v1/keys/{quiet}/usage")).await;
    assert_eq!(sum(&r.body, "total"), 0);

    // Another tenant sees neither the key nor the counts.
    let other = token("other-tenant", "bob");
    let r = app
        .send_as(&other, Method::GET, &format!("/v1/keys/{id}/usage"), None)
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let r = app
        .send_as(&other, Method::GET, "/v1/usage?granularity=day", None)
        .await;
    assert_eq!(sum(&r.body, "total"), 0, "{}", r.text);

    // Refusals of the query itself.
    for (query, field) in [
        ("granularity=week", "granularity"),
        (
            "granularity=minute&since=2025-01-01T00:00:00Z&until=2026-01-01T00:00:00Z",
            "since",
        ),
        (
            "since=2026-01-02T00:00:00Z&until=2026-01-01T00:00:00Z",
            "since",
        ),
    ] {
        let r = app.get(&format!("/v1/keys/{id}/usage?{query}")).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {}",
            r.text
        );
        assert_eq!(r.body["error"]["details"]["field"], field, "{query}");
    }
    let r = app.get("/v1/usage?granularity=minute").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let r = app.get("/v1/usage?since=yesterday").await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.body["error"]["details"]["field"], "since");

    // A fold of the events agrees with the buckets; a rebuild makes the same.
    let (store, projections) = app.open_tools().await;
    assert_eq!(
        keyledger::rebuild::check(&store, &projections)
            .await
            .expect("check"),
        Vec::<String>::new()
    );
    keyledger::rebuild::rebuild(
        &store,
        &projections,
        keyledger::rebuild::Which::Usage,
        &|_, _| {},
    )
    .await
    .expect("rebuild");
    let r = app
        .get(&format!("/v1/keys/{id}/usage?granularity=minute"))
        .await;
    for (field, n) in want {
        assert_eq!(sum(&r.body, field), n, "after a rebuild, {field}");
    }

    // Three days on, the pruner drops the minutes and keeps hours and days.
    let later = chrono::Utc::now() + chrono::Duration::days(3);
    projections
        .prune_usage(later.timestamp_millis())
        .await
        .expect("prune");
    let r = app
        .get(&format!("/v1/keys/{id}/usage?granularity=minute"))
        .await;
    assert_eq!(sum(&r.body, "total"), 0, "minutes pruned");
    let r = app
        .get(&format!("/v1/keys/{id}/usage?granularity=hour"))
        .await;
    assert_eq!(sum(&r.body, "total"), 7, "hours kept");
    // `check` reads the wall clock: today it still expects those minutes,
    // and names each one missing (nothing else).
    let diffs = keyledger::rebuild::check(&store, &projections)
        .await
        .expect("check");
    assert!(
        diffs
            .iter()
            .all(|d| d.contains("/minute/") && d.ends_with("is missing")),
        "{diffs:?}"
    );

    // A deleted key stays among the top keys, without a name.
    let r = app
        .send(Method::DELETE, &format!("/v1/keys/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let r = app.get("/v1/usage?granularity=day").await;
    assert_eq!(r.body["top_keys"][0]["key_id"], id.as_str(), "{}", r.text);
    assert!(r.body["top_keys"][0]["name"].is_null(), "{}", r.text);
}
