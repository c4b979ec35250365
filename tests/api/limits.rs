//! Usage limits: rate limits, credits and owners, end to end. Window edges
//! and refills are reached by moving the server's clock, never by sleeping.

use chrono::{DateTime, Duration as Span, Timelike, Utc};
use keyledger::rebuild::check;
use keyledger_projections::Projections;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{spawn_app, spawn_sqlite_app, start, Backend, TestApp, TestStore};

backend_tests!(
    limits_are_shown_changed_by_events_and_kept_by_the_audit_log,
    a_rate_limit_admits_its_limit_per_window_and_starts_again_at_the_edge,
    credits_are_spent_by_valid_answers_only_and_refilled_when_a_period_begins,
    an_owner_limit_is_shared_by_its_keys_and_the_tighter_limit_wins,
    the_proxy_answer_is_429_with_rate_limit_headers,
    the_balance_is_flushed_survives_a_restart_and_passes_projections_check,
);

/// Nodes share one database only on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_never_spend_more_credits_or_admit_more_than_the_limit() {
    two_nodes(Backend::Postgres).await;
}

async fn create(app: &TestApp, body: Value) -> (String, String) {
    let r = app.post("/v1/keys", body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    (
        r.body["id"].as_str().expect("id").to_string(),
        r.body["key"].as_str().expect("key").to_string(),
    )
}

async fn verify(app: &TestApp, key: &str, cost: u64) -> Value {
    let r = app.verify(json!({"key": key, "cost": cost})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

async fn code(app: &TestApp, key: &str, cost: u64) -> String {
    verify(app, key, cost).await["code"]
        .as_str()
        .expect("code")
        .to_string()
}

/// Moves the server's clock to `ms` after the start of the next window of
/// `window_ms` (windows are aligned to the epoch).
fn to_window_start(app: &TestApp, window_ms: i64, ms: i64) {
    let now = app.clock.now().timestamp_millis();
    let next = (now.div_euclid(window_ms) + 1) * window_ms;
    app.clock.advance(Span::milliseconds(next - now + ms));
}

async fn limits_are_shown_changed_by_events_and_kept_by_the_audit_log(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, _) = create(
        &app,
        json!({"name": "metered", "owner": "cus_42",
               "ratelimits": [{"name": "per-second", "limit": 10, "window_ms": 1000}],
               "credits": {"remaining": 500, "refill": {"amount": 1000, "interval": "monthly", "day_of_month": 15}}}),
    )
    .await;
    let view = app.get(&format!("/v1/keys/{id}")).await.body;
    assert_eq!(view["owner"], "cus_42");
    assert_eq!(
        view["ratelimits"],
        json!([{"name": "per-second", "limit": 10, "window_ms": 1000}])
    );
    assert_eq!(view["credits"]["remaining"], 500);
    assert_eq!(view["credits"]["refill"]["day_of_month"], 15);

    let r = app
        .post(
            &format!("/v1/keys/{id}/credits"),
            json!({"op": "increment", "amount": 25, "reason": "goodwill"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["credits"]["remaining"], 525);
    let r = app
        .post(
            &format!("/v1/keys/{id}/credits"),
            json!({"op": "decrement", "amount": 600}),
        )
        .await;
    assert_eq!(r.body["credits"]["remaining"], 0, "not below zero");
    let r = app
        .post(
            &format!("/v1/keys/{id}/credits"),
            json!({"op": "set", "amount": 7}),
        )
        .await;
    assert_eq!(r.body["credits"]["remaining"], 7);
    let r = app
        .send(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"owner": null, "ratelimits": [], "credits": null})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["owner"], Value::Null);
    assert_eq!(r.body["ratelimits"], json!([]));
    assert_eq!(r.body["credits"], Value::Null);

    let history = app.key_events(&id).await;
    let changes: Vec<(&str, &str, Value)> = history
        .iter()
        .filter(|e| e["type"] == "KeyCreditsChanged")
        .map(|e| {
            (
                e["actor"].as_str().unwrap_or(""),
                e["data"]["change"]["op"].as_str().unwrap_or(""),
                e["data"]["reason"].clone(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            ("alice", "increment", json!("goodwill")),
            ("alice", "decrement", Value::Null),
            ("alice", "set", Value::Null),
            ("alice", "remove", Value::Null),
        ]
    );
    let updated = history
        .iter()
        .find(|e| e["type"] == "KeyUpdated")
        .expect("the PATCH");
    assert_eq!(updated["data"]["owner"], Value::Null);
    assert_eq!(updated["data"]["ratelimits"], json!([]));
    app.stop().await;
}

async fn a_rate_limit_admits_its_limit_per_window_and_starts_again_at_the_edge(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let window = 3_600_000;
    let (_, key) = create(
        &app,
        json!({"name": "limited", "ratelimits": [{"name": "hourly", "limit": 3, "window_ms": window}]}),
    )
    .await;
    // Five seconds before a window ends: room for slow requests.
    to_window_start(&app, window, window - 5_000);
    for _ in 0..3 {
        assert_eq!(code(&app, &key, 1).await, "VALID");
    }
    let refused = verify(&app, &key, 1).await;
    assert_eq!(refused["code"], "RATE_LIMITED");
    assert_eq!(refused["valid"], false);
    let limit = &refused["ratelimits"][0];
    assert_eq!(
        (limit["name"].as_str(), limit["remaining"].as_u64()),
        (Some("hourly"), Some(0))
    );
    let reset: DateTime<Utc> = limit["reset_at"]
        .as_str()
        .expect("reset_at")
        .parse()
        .expect("time");
    assert_eq!(reset.timestamp_millis() % window, 0, "a window edge");
    // A rate-limited answer is not a use.
    // The edge: the next window admits again, its own three.
    app.clock.advance(Span::milliseconds(5_000));
    for _ in 0..3 {
        assert_eq!(code(&app, &key, 1).await, "VALID");
    }
    assert_eq!(code(&app, &key, 1).await, "RATE_LIMITED");
    app.stop().await;
}

async fn credits_are_spent_by_valid_answers_only_and_refilled_when_a_period_begins(
    backend: Backend,
) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (_, key) = create(
        &app,
        json!({"name": "credits", "permissions": ["a:read"],
               "credits": {"remaining": 5, "refill": {"amount": 4, "interval": "daily"}}}),
    )
    .await;
    // Ten seconds before a UTC midnight.
    let now = app.clock.now();
    let midnight = (now + Span::days(1))
        .with_hour(0)
        .and_then(|t| t.with_minute(0))
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .expect("midnight");
    app.clock.advance(midnight - now - Span::seconds(10));
    // A refused verification spends nothing.
    let r = app
        .verify(json!({"key": key, "permissions": ["a:write"], "cost": 5}))
        .await;
    assert_eq!(r.body["code"], "INSUFFICIENT_PERMISSIONS");
    assert_eq!(code(&app, &key, 0).await, "VALID", "cost 0 only checks");
    let spent = verify(&app, &key, 3).await;
    assert_eq!(spent["code"], "VALID");
    assert_eq!(spent["credits"]["remaining"], 2);
    let over = verify(&app, &key, 3).await;
    assert_eq!(over["code"], "USAGE_EXCEEDED", "{over}");
    assert_eq!(code(&app, &key, 2).await, "VALID");
    assert_eq!(code(&app, &key, 1).await, "USAGE_EXCEEDED");
    assert_eq!(
        code(&app, &key, 0).await,
        "USAGE_EXCEEDED",
        "none left to check"
    );
    // The period's start: the balance is the refill amount.
    app.clock.advance(Span::seconds(10));
    let refilled = verify(&app, &key, 1).await;
    assert_eq!(refilled["code"], "VALID", "{refilled}");
    assert_eq!(refilled["credits"]["remaining"], 3);
    assert_eq!(code(&app, &key, 3).await, "VALID");
    assert_eq!(code(&app, &key, 1).await, "USAGE_EXCEEDED");
    app.stop().await;
}

async fn an_owner_limit_is_shared_by_its_keys_and_the_tighter_limit_wins(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let window = 3_600_000;
    let r = app
        .send(
            Method::PUT,
            "/v1/owners/cus%201/ratelimits",
            Some(json!([{"name": "shared", "limit": 4, "window_ms": window}])),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["owner"], "cus 1");
    let (a, key_a) = create(&app, json!({"name": "a", "owner": "cus 1"})).await;
    let (b, key_b) = create(
        &app,
        json!({"name": "b", "owner": "cus 1",
               "ratelimits": [{"name": "own", "limit": 1, "window_ms": window}]}),
    )
    .await;
    let owner = app.get("/v1/owners/cus%201").await;
    assert_eq!(owner.status, StatusCode::OK, "{}", owner.text);
    assert_eq!(owner.body["key_ids"], json!([a, b]));
    assert_eq!(owner.body["ratelimits"][0]["limit"], 4);
    to_window_start(&app, window, 1_000);
    // Key b's own limit (1) is tighter than the owner's (4).
    assert_eq!(code(&app, &key_b, 1).await, "VALID");
    assert_eq!(code(&app, &key_b, 1).await, "RATE_LIMITED");
    // Key a has the owner's three left.
    for _ in 0..3 {
        assert_eq!(code(&app, &key_a, 1).await, "VALID");
    }
    assert_eq!(code(&app, &key_a, 1).await, "RATE_LIMITED");
    // Another tenant's owner of the same name is another owner.
    let other = crate::helpers::token("globex", "bob");
    let r = app
        .send_as(&other, Method::GET, "/v1/owners/cus%201", None)
        .await;
    assert_eq!(r.body["key_ids"], json!([]));
    assert_eq!(r.body["ratelimits"], json!([]));
    app.stop().await;
}

async fn the_proxy_answer_is_429_with_rate_limit_headers(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let window = 3_600_000;
    let (_, key) = create(
        &app,
        json!({"name": "gw", "ratelimits": [{"name": "h", "limit": 2, "window_ms": window},
                                            {"name": "loose", "limit": 100, "window_ms": window}]}),
    )
    .await;
    to_window_start(&app, window, window - 60_000);
    let auth = || {
        app.client
            .get(app.url("/v1/auth"))
            .header("X-Api-Key", key.as_str())
            .send()
    };
    let first = auth().await.expect("auth");
    assert_eq!(first.status(), StatusCode::NO_CONTENT);
    assert_eq!(first.headers()["ratelimit-limit"], "2");
    assert_eq!(first.headers()["ratelimit-remaining"], "1");
    assert_eq!(auth().await.expect("auth").status(), StatusCode::NO_CONTENT);
    let refused = auth().await.expect("auth");
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let h = refused.headers();
    assert_eq!(h["x-key-code"], "RATE_LIMITED");
    assert_eq!(h["ratelimit-remaining"], "0");
    let retry: u64 = h["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((59..=60).contains(&retry), "{retry}");
    assert_eq!(
        h["ratelimit-reset"].to_str().ok(),
        Some(retry.to_string().as_str())
    );

    let (_, broke) = create(&app, json!({"name": "broke", "credits": {"remaining": 0}})).await;
    let r = app
        .client
        .get(app.url("/v1/auth"))
        .bearer_auth(&broke)
        .send()
        .await
        .expect("auth");
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()["x-key-code"], "USAGE_EXCEEDED");
    app.stop().await;
}

async fn the_balance_is_flushed_survives_a_restart_and_passes_projections_check(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, key) = create(
        &app,
        json!({"name": "ledger", "credits": {"remaining": 100}}),
    )
    .await;
    for _ in 0..7 {
        assert_eq!(code(&app, &key, 3).await, "VALID");
    }
    // Before a flush the list shows the balance as of the last one.
    assert_eq!(
        app.get(&format!("/v1/keys/{id}")).await.body["credits"]["remaining"],
        100
    );
    // A graceful stop flushes: spends are recorded, the rest given back.
    let app = app.restart().await;
    let view = app.get(&format!("/v1/keys/{id}")).await.body;
    assert_eq!(view["credits"]["remaining"], 79, "{view}");
    assert_eq!(view["usage_count"], 7);
    let history = app.key_events(&id).await;
    let spent: u64 = history
        .iter()
        .filter(|e| e["type"] == "KeyUsageRecorded")
        .map(|e| e["data"]["spent"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(spent, 21);
    assert!(history.iter().any(|e| e["type"] == "KeyCreditsReserved"));
    // The new node spends on from the balance the log holds.
    assert_eq!(verify(&app, &key, 79).await["code"], "VALID");
    assert_eq!(code(&app, &key, 1).await, "USAGE_EXCEEDED");
    let app = app.restart().await;
    assert_eq!(
        app.get(&format!("/v1/keys/{id}")).await.body["credits"]["remaining"],
        0
    );
    // The ledger rebuilt from the events is the one the key list holds.
    let store = keyledger::app::open_store(&app.store.config())
        .await
        .expect("open store");
    let projections = Projections::unloaded(store.projection_db());
    assert_eq!(
        check(&store, &projections).await.expect("check"),
        Vec::<String>::new()
    );
    store.close().await;
    app.stop().await;
}

/// Clients on two nodes over one database spend one key's credits and hit
/// one rate limit at once; credits are incremented while they run.
async fn two_nodes(backend: Backend) {
    let Some(a) = spawn_app(backend).await else {
        return;
    };
    let b = start(
        TestStore {
            backend,
            data_dir: tempfile::tempdir().expect("tempdir"),
            database_url: a.store.database_url.clone(),
            owns_database: false,
            kurrent: None,
        },
        |_| {},
    )
    .await;
    let window: i64 = 2_592_000_000;
    let (id, credits_key) = create(&a, json!({"name": "c", "credits": {"remaining": 150}})).await;
    let (_, rate_key) = create(
        &a,
        json!({"name": "r", "ratelimits": [{"name": "month", "limit": 120, "window_ms": window}]}),
    )
    .await;
    let window_before = Utc::now().timestamp_millis().div_euclid(window);
    let mut tasks = Vec::new();
    for (i, node) in [&a, &b, &a, &b, &a, &b].iter().enumerate() {
        let client = node.client.clone();
        let url = node.url("/v1/keys/verify");
        let key = if i % 2 == 0 {
            credits_key.clone()
        } else {
            rate_key.clone()
        };
        let (url2, key2) = (
            url.clone(),
            if i % 2 == 0 {
                rate_key.clone()
            } else {
                credits_key.clone()
            },
        );
        tasks.push(tokio::spawn(async move {
            let mut valid = [0u64; 2];
            for n in 0..120 {
                let (u, k, slot) = if n % 2 == 0 {
                    (&url, &key, 0)
                } else {
                    (&url2, &key2, 1)
                };
                let r = client
                    .post(u)
                    .json(&json!({"key": k}))
                    .send()
                    .await
                    .expect("verify");
                let body: Value = r.json().await.expect("json");
                if body["code"] == "VALID" {
                    valid[slot] += 1;
                }
            }
            (i % 2 == 0, valid)
        }));
    }
    let r = b
        .post(
            &format!("/v1/keys/{id}/credits"),
            json!({"op": "increment", "amount": 30}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let (mut credits_valid, mut rate_valid) = (0, 0);
    for t in tasks {
        let (first_is_credits, valid) = t.await.expect("client");
        if first_is_credits {
            credits_valid += valid[0];
            rate_valid += valid[1];
        } else {
            rate_valid += valid[0];
            credits_valid += valid[1];
        }
    }
    let window_after = Utc::now().timestamp_millis().div_euclid(window);
    let windows = u64::try_from(window_after - window_before + 1).expect("windows");
    assert!(credits_valid <= 180, "{credits_valid} VALID on 180 credits");
    assert!(
        rate_valid <= 120 * windows,
        "{rate_valid} VALID under a limit of 120"
    );
    // 360 attempts each: the limits, not the nodes, stopped them.
    assert!(credits_valid >= 100, "{credits_valid}");
    assert!(rate_valid >= 60, "{rate_valid}");
    let b = b.stop().await;
    drop(b);
    let a = a.restart().await;
    let view = a.get(&format!("/v1/keys/{id}")).await.body;
    let remaining = view["credits"]["remaining"].as_u64().expect("remaining");
    assert_eq!(remaining + credits_valid, 180, "{view}");
    a.stop().await;
}

#[tokio::test]
async fn every_new_field_is_validated() {
    let app = spawn_sqlite_app().await;
    let bad_creates = [
        (json!({"name": "x", "owner": ""}), "owner"),
        (json!({"name": "x", "owner": "a".repeat(129)}), "owner"),
        (json!({"name": "x", "owner": "a\u{1}"}), "owner"),
        (
            json!({"name": "x", "ratelimits": [{"name": "A", "limit": 1, "window_ms": 1000}]}),
            "ratelimits",
        ),
        (
            json!({"name": "x", "ratelimits": [{"name": "a", "limit": 0, "window_ms": 1000}]}),
            "ratelimits",
        ),
        (
            json!({"name": "x", "ratelimits": [{"name": "a", "limit": 1, "window_ms": 999}]}),
            "ratelimits",
        ),
        (
            json!({"name": "x", "ratelimits": [{"name": "a", "limit": 1, "window_ms": 2_592_000_001_u64}]}),
            "ratelimits",
        ),
        (
            json!({"name": "x", "ratelimits": [{"name": "a", "limit": 1_000_000_001_u64, "window_ms": 1000}]}),
            "ratelimits",
        ),
        (
            json!({"name": "x", "ratelimits": [{"name": "a", "limit": 1, "window_ms": 1000}, {"name": "a", "limit": 2, "window_ms": 1000}]}),
            "ratelimits",
        ),
        (
            json!({"name": "x", "ratelimits": (0..6).map(|i| json!({"name": format!("l{i}"), "limit": 1, "window_ms": 1000})).collect::<Vec<_>>()}),
            "ratelimits",
        ),
        (
            json!({"name": "x", "credits": {"remaining": 1_000_000_000_000_001_u64}}),
            "credits",
        ),
        (
            json!({"name": "x", "credits": {"remaining": 1, "refill": {"amount": 0, "interval": "daily"}}}),
            "credits",
        ),
        (
            json!({"name": "x", "credits": {"remaining": 1, "refill": {"amount": 1, "interval": "weekly"}}}),
            "credits",
        ),
        (
            json!({"name": "x", "credits": {"remaining": 1, "refill": {"amount": 1, "interval": "monthly", "day_of_month": 29}}}),
            "credits",
        ),
        (
            json!({"name": "x", "credits": {"remaining": 1, "refill": {"amount": 1, "interval": "daily", "day_of_month": 2}}}),
            "credits",
        ),
    ];
    for (body, field) in bad_creates {
        let r = app.post("/v1/keys", body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.text
        );
        assert_eq!(
            r.body["error"]["details"]["field"], field,
            "{body}: {}",
            r.text
        );
    }
    // Wrong types and unknown fields are refused too (never a 500).
    for body in [
        json!({"name": "x", "credits": {"remaining": -1}}),
        json!({"name": "x", "credits": {"remaining": 1, "extra": true}}),
        json!({"name": "x", "ratelimits": [{"name": "a", "limit": 1}]}),
        json!({"name": "x", "ratelimits": {"name": "a"}}),
    ] {
        let r = app.post("/v1/keys", body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.text
        );
    }
    let (id, key) = create(&app, json!({"name": "ok", "credits": {"remaining": 3}})).await;
    for (body, field) in [
        (json!({"op": "grow", "amount": 1}), "op"),
        (json!({"op": "increment", "amount": 0}), "amount"),
        (
            json!({"op": "set", "amount": 1_000_000_000_000_001_u64}),
            "amount",
        ),
        (
            json!({"op": "set", "amount": 1, "reason": "a\u{0}"}),
            "reason",
        ),
    ] {
        let r = app
            .post(&format!("/v1/keys/{id}/credits"), body.clone())
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.text
        );
        assert_eq!(
            r.body["error"]["details"]["field"], field,
            "{body}: {}",
            r.text
        );
    }
    let r = app
        .send(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"ratelimits": null})),
        )
        .await;
    assert_eq!(
        r.body["error"]["details"]["field"], "ratelimits",
        "{}",
        r.text
    );
    // Another tenant's key: 404, as everywhere.
    let other = crate::helpers::token("globex", "bob");
    let r = app
        .send_as(
            &other,
            Method::POST,
            &format!("/v1/keys/{id}/credits"),
            Some(json!({"op": "set", "amount": 1})),
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // cost on verify: 0..1000.
    let r = app.verify(json!({"key": key, "cost": 1001})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.body["error"]["details"]["field"], "cost");
    let r = app.verify(json!({"key": key, "cost": -1})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    // Owners in paths.
    let long = "a".repeat(129);
    let r = app
        .send(
            Method::PUT,
            &format!("/v1/owners/{long}/ratelimits"),
            Some(json!([])),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let r = app
        .send(Method::PUT, "/v1/owners/x%00/ratelimits", Some(json!([])))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let r = app
        .send(
            Method::PUT,
            "/v1/owners/x/ratelimits",
            Some(json!([{"name": "a", "limit": 0, "window_ms": 1000}])),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    app.stop().await;
}
