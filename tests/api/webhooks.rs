//! Webhook endpoints: created with a secret shown once, listed, changed,
//! rotated and deleted, each change an audit event, each tenant alone.

use std::time::Duration;

use chrono::Duration as Span;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{spawn_app, spawn_sqlite_app, start, token, Backend, TestApp, TestStore};
use crate::receiver::Receiver;

backend_tests!(
    endpoints_live_through_their_events_and_stay_in_their_tenant,
    messages_arrive_signed_in_order_and_a_receiver_that_comes_back_gets_them,
    expiry_notices_come_once_each_at_14_days_1_day_and_expiry,
    an_endpoint_failing_for_3_days_is_disabled_with_an_event,
);

/// One endpoint's slow receiver holds only that endpoint's delivery slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_holds_back_only_its_own_endpoint() {
    let (Some(slow), Some(fast)) = (Receiver::start(), Receiver::start()) else {
        return;
    };
    slow.set("delay_ms", "3000");
    let store = TestStore::new(Backend::Sqlite).await.expect("sqlite");
    let app = start(store, |c| c.webhook_allow_private = true).await;
    for rx in [&slow, &fast] {
        let created = create(&app, json!({"url": rx.url()})).await;
        rx.set("secrets", created["secret"].as_str().expect("secret"));
    }
    for i in 0..3 {
        app.create_key(&format!("k{i}")).await;
    }
    // Three messages one after another at the fast receiver, while the
    // slow one is still answering its first.
    let seen = fast.wait_for(3).await;
    assert!(seen.iter().all(|m| m["verified"] == true));
    assert!(slow.messages().len() <= 1, "{:?}", slow.messages());
    let text = app.metrics_text().await;
    for name in [
        "keyledger_webhook_attempts_total{outcome=\"delivered\"}",
        "keyledger_webhook_delivery_lag_seconds_bucket",
    ] {
        assert!(text.contains(name), "{name} in /metrics");
    }
}

/// A public address that needs no name resolution (nothing is sent to it
/// by these tests: delivery is another test's).
const TARGET: &str = "https://93.184.216.34/keyledger";

async fn create(app: &TestApp, body: Value) -> Value {
    let r = app.post("/v1/webhooks", body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body
}

async fn endpoints_live_through_their_events_and_stay_in_their_tenant(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let created = create(
        &app,
        json!({"url": TARGET, "events": ["key.deleted", "key.created"], "description": "billing"}),
    )
    .await;
    let id = created["id"].as_str().expect("id").to_string();
    assert!(id.starts_with("wh_") && id.len() == 35, "{id}");
    let secret = created["secret"].as_str().expect("secret").to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    assert_eq!(created["events"], json!(["key.created", "key.deleted"]));
    assert_eq!(created["status"], "enabled");

    // The secret is in the create's answer only.
    let got = app.get(&format!("/v1/webhooks/{id}")).await;
    assert_eq!(got.status, StatusCode::OK, "{}", got.text);
    assert!(got.body.get("secret").is_none(), "{}", got.text);
    assert!(!got.text.contains(&secret));
    assert_eq!(got.body["description"], "billing");
    let list = app.get("/v1/webhooks").await;
    assert_eq!(list.body["webhooks"].as_array().map(Vec::len), Some(1));
    assert!(!list.text.contains(&secret));

    // Another tenant sees none of it and can change none of it.
    let other = token("other-tenant", "mallory");
    let theirs = app
        .send_as(&other, Method::GET, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);
    assert_eq!(theirs.code(), "webhook_not_found");
    let theirs = app.send_as(&other, Method::GET, "/v1/webhooks", None).await;
    assert_eq!(theirs.body["webhooks"], json!([]));
    let theirs = app
        .send_as(&other, Method::DELETE, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(theirs.status, StatusCode::NOT_FOUND);

    // PATCH: events, description cleared, disabled.
    let patched = app
        .send(
            Method::PATCH,
            &format!("/v1/webhooks/{id}"),
            Some(json!({"events": [], "description": null, "status": "disabled"})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.text);
    assert_eq!(patched.body["events"], json!([]));
    assert_eq!(patched.body["description"], Value::Null);
    assert_eq!(patched.body["status"], "disabled");

    // Rotation: a new secret, shown once.
    let rotated = app
        .send(
            Method::POST,
            &format!("/v1/webhooks/{id}/rotate-secret"),
            None,
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.text);
    let new_secret = rotated.body["secret"].as_str().expect("secret");
    assert!(new_secret.starts_with("whsec_"));
    assert_ne!(new_secret, secret);

    // Every change is in the audit log, with its actor, and no secret.
    let audit = app.get(&format!("/v1/audit?key_id={id}")).await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.text);
    let types: Vec<&str> = audit.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        types,
        ["WebhookCreated", "WebhookUpdated", "WebhookSecretRotated"]
    );
    assert!(!audit.text.contains(&secret) && !audit.text.contains(new_secret));

    let deleted = app
        .send(Method::DELETE, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text);
    assert_eq!(
        app.get(&format!("/v1/webhooks/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(app.get("/v1/webhooks").await.body["webhooks"], json!([]));
    let again = app
        .send(Method::DELETE, &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_endpoints_are_refused_with_the_field_named() {
    let app = spawn_sqlite_app().await;
    for (body, field) in [
        (json!({"url": "ftp://93.184.216.34/"}), "url"),
        (json!({"url": "https://user:pw@93.184.216.34/"}), "url"),
        (json!({"url": "http://127.0.0.1:9/"}), "url"),
        (
            json!({"url": "http://169.254.169.254/latest/meta-data"}),
            "url",
        ),
        (json!({"url": "http://[::1]:9/"}), "url"),
        (json!({"url": "http://10.0.0.1/"}), "url"),
        (json!({"url": TARGET, "events": ["key.exploded"]}), "events"),
        (
            json!({"url": TARGET, "description": "x".repeat(257)}),
            "description",
        ),
    ] {
        let r = app.post("/v1/webhooks", body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.text
        );
        assert_eq!(r.body["error"]["details"]["field"], field, "{}", r.text);
    }
    let unknown = app
        .post("/v1/webhooks", json!({"url": TARGET, "secret": "mine"}))
        .await;
    assert_eq!(
        unknown.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        unknown.text
    );
    assert_eq!(unknown.body["error"]["details"]["field"], "secret");
    for path in [
        "/v1/webhooks/nope",
        "/v1/webhooks/wh_zz",
        "/v1/webhooks/key_1",
    ] {
        let r = app.get(path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.code(), "webhook_not_found");
    }
    let patch = app
        .send(
            Method::PATCH,
            &format!(
                "/v1/webhooks/{}",
                create(&app, json!({"url": TARGET})).await["id"]
                    .as_str()
                    .expect("id")
            ),
            Some(json!({"status": "paused"})),
        )
        .await;
    assert_eq!(
        patch.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        patch.text
    );
    let no_token = app
        .client
        .get(app.url("/v1/webhooks"))
        .send()
        .await
        .expect("request");
    assert_eq!(no_token.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_targets_are_accepted_when_the_server_allows_them() {
    let store = TestStore::new(Backend::Sqlite).await.expect("sqlite");
    let app = start(store, |c| c.webhook_allow_private = true).await;
    let r = app
        .post("/v1/webhooks", json!({"url": "http://127.0.0.1:9/hook"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    // Still refused: a scheme that is not http(s).
    let r = app
        .post("/v1/webhooks", json!({"url": "file:///etc/passwd"}))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
}

fn types(messages: &[Value]) -> Vec<&str> {
    messages.iter().filter_map(|m| m["type"].as_str()).collect()
}

async fn messages_arrive_signed_in_order_and_a_receiver_that_comes_back_gets_them(
    backend: Backend,
) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let Some(rx) = Receiver::start() else {
        return;
    };
    let app = start(store, |c| c.webhook_allow_private = true).await;
    let created = create(&app, json!({"url": rx.url()})).await;
    let hook = created["id"].as_str().expect("id").to_string();
    rx.set("secrets", created["secret"].as_str().expect("secret"));

    // A key's life, as messages in event order.
    let (id, raw) = app.create_key("watched").await;
    for path in ["deactivate", "reactivate"] {
        let r = app.post(&format!("/v1/keys/{id}/{path}"), json!({})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    let r = app
        .send(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .send(Method::DELETE, &format!("/v1/keys/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    let seen = rx.wait_for(5).await;
    assert_eq!(
        types(&seen),
        [
            "key.created",
            "key.deactivated",
            "key.reactivated",
            "key.updated",
            "key.deleted"
        ]
    );
    assert!(
        seen.iter()
            .all(|m| m["verified"] == true && m["key_id"] == id.as_str()),
        "{seen:?}"
    );
    assert!(seen
        .iter()
        .all(|m| m["has_hash"] == false && m["signatures"] == 1));
    let positions: Vec<i64> = seen
        .iter()
        .map(|m| m["position"].as_i64().expect("position"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let mut ids: Vec<&str> = seen.iter().filter_map(|m| m["id"].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 5, "a message id per message");
    assert!(!rx.raw().contains(&raw), "no raw key in any message");

    // Another tenant's keys send nothing here.
    let other = token("other-tenant", "mallory");
    let r = app
        .send_as(
            &other,
            Method::POST,
            "/v1/keys",
            Some(json!({"name": "theirs"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    // The receiver goes down: the message is tried again, later ones wait.
    rx.set("status", "503");
    let (down, _) = app.create_key("while down").await;
    let seen = rx.wait_for(6).await;
    assert_eq!(
        (seen[5]["key_id"].as_str(), seen[5]["status"].as_i64()),
        (Some(down.as_str()), Some(503))
    );
    let (after, _) = app.create_key("after").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        rx.messages().len(),
        6,
        "nothing overtakes a failing message"
    );
    let history = app
        .get(&format!("/v1/webhooks/{hook}/deliveries?status=pending"))
        .await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.text);
    assert_eq!(
        history.body["deliveries"][0]["attempts"], 1,
        "{}",
        history.text
    );
    assert_eq!(history.body["deliveries"][0]["response_status"], 503);
    // Back up; the retry is due 5 s later (the server's clock moves, not the test).
    rx.set("status", "204");
    app.clock.advance(Span::seconds(6));
    let seen = rx.wait_for(8).await;
    assert_eq!(seen[6]["id"], seen[5]["id"], "a retry keeps its message id");
    assert_eq!(seen[6]["key_id"].as_str(), Some(down.as_str()));
    assert_eq!(seen[7]["key_id"].as_str(), Some(after.as_str()));
    let history = app.get(&format!("/v1/webhooks/{hook}/deliveries")).await;
    let newest_first: Vec<&str> = history.body["deliveries"]
        .as_array()
        .expect("deliveries")
        .iter()
        .filter_map(|d| d["status"].as_str())
        .collect();
    assert_eq!(newest_first.len(), 7, "{}", history.text);
    assert!(
        newest_first.iter().all(|s| *s == "delivered"),
        "{}",
        history.text
    );
    assert_eq!(history.body["deliveries"][1]["attempts"], 2);

    // A rotated secret: both sign for 24 h, so a receiver with either verifies.
    let rotated = app
        .send(
            Method::POST,
            &format!("/v1/webhooks/{hook}/rotate-secret"),
            None,
        )
        .await;
    rx.set("secrets", rotated.body["secret"].as_str().expect("secret"));
    app.create_key("after rotation").await;
    let seen = rx.wait_for(9).await;
    assert_eq!(
        (
            seen[8]["verified"].as_bool(),
            seen[8]["signatures"].as_i64()
        ),
        (Some(true), Some(2))
    );

    // A rotation: the old key's message and its successor's.
    let (old, _) = app.create_key("to rotate").await;
    let r = app.post(&format!("/v1/keys/{old}/rotate"), json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let successor = r.body["id"].as_str().expect("successor").to_string();
    let seen = rx.wait_for(12).await;
    let mut rotation: Vec<(&str, &str)> = seen[10..12]
        .iter()
        .map(|m| {
            (
                m["type"].as_str().unwrap_or(""),
                m["key_id"].as_str().unwrap_or(""),
            )
        })
        .collect();
    rotation.sort_unstable();
    assert_eq!(
        rotation,
        [
            ("key.created", successor.as_str()),
            ("key.rotated", old.as_str())
        ]
    );

    // A leak report: the report, then the deactivation it leads to.
    let (leaked, leaked_key) = app.create_key("leaked").await;
    let r = app
        .client
        .post(app.url("/v1/leaks/report"))
        .json(&json!({"keys": [leaked_key]}))
        .send()
        .await
        .expect("report");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let seen = rx.wait_for(15).await;
    assert_eq!(
        seen[12..15]
            .iter()
            .map(|m| (
                m["type"].as_str().unwrap_or(""),
                m["key_id"].as_str().unwrap_or("")
            ))
            .collect::<Vec<_>>(),
        [
            ("key.created", leaked.as_str()),
            ("key.leaked", leaked.as_str()),
            ("key.deactivated", leaked.as_str())
        ]
    );

    // A filter: only what was asked for.
    let r = app
        .send(
            Method::PATCH,
            &format!("/v1/webhooks/{hook}"),
            Some(json!({"events": ["key.deleted"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let (gone, _) = app.create_key("short-lived").await;
    app.send(Method::DELETE, &format!("/v1/keys/{gone}"), None)
        .await;
    let seen = rx.wait_for(16).await;
    assert_eq!(
        (seen[15]["type"].as_str(), seen[15]["key_id"].as_str()),
        (Some("key.deleted"), Some(gone.as_str()))
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.messages().len(), 16);
    assert!(rx.messages().iter().all(|m| m["verified"] == true));
}

async fn expiry_notices_come_once_each_at_14_days_1_day_and_expiry(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let Some(rx) = Receiver::start() else {
        return;
    };
    let app = start(store, |c| {
        c.webhook_allow_private = true;
        c.expiry_notice_interval = Duration::from_millis(50);
    })
    .await;
    let created = create(&app, json!({"url": rx.url(), "events": ["key.expiring", "key.expired", "key.rotated", "key.created"]})).await;
    rx.set("secrets", created["secret"].as_str().expect("secret"));
    let expires = app.clock.now() + Span::days(15);
    let r = app
        .post(
            "/v1/keys",
            json!({"name": "expiring", "expires_at": expires.to_rfc3339()}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().expect("id").to_string();
    let seen = rx.wait_for(1).await;
    assert_eq!(types(&seen), ["key.created"]);

    // Nothing is due yet; then each moment passes, on the server's clock.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.messages().len(), 1);
    app.clock.advance(Span::days(1) + Span::minutes(1));
    let seen = rx.wait_for(2).await;
    app.clock.advance(Span::days(13));
    let seen_1d = rx.wait_for(3).await;
    app.clock.advance(Span::days(1));
    let all = rx.wait_for(4).await;
    assert_eq!(seen[1]["type"], "key.expiring");
    assert_eq!(seen_1d[2]["type"], "key.expiring");
    assert_eq!(all[3]["type"], "key.expired");
    // (Not `verified`: the receiver's library refuses timestamps days
    // ahead of its own clock, and this server's clock was moved.)
    assert!(all.iter().all(|m| m["key_id"] == id.as_str()), "{all:?}");

    // Once each: later looks, and a restart (which looks back a day), add none.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let store = app.stop().await;
    let app = start(store, |c| {
        c.webhook_allow_private = true;
        c.expiry_notice_interval = Duration::from_millis(50);
    })
    .await;
    app.clock.advance(Span::days(15) + Span::minutes(2));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rx.messages().len(), 4, "{:?}", rx.messages());
    let audit = app
        .get(&format!("/v1/audit?key_id={id}&type=KeyExpiryNoticed"))
        .await;
    let notices: Vec<&str> = audit.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["data"]["notice"].as_str())
        .collect();
    assert_eq!(
        notices,
        ["in_14_days", "in_1_day", "expired"],
        "{}",
        audit.text
    );
}

async fn an_endpoint_failing_for_3_days_is_disabled_with_an_event(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let Some(rx) = Receiver::start() else {
        return;
    };
    let app = start(store, |c| c.webhook_allow_private = true).await;
    let created = create(&app, json!({"url": rx.url()})).await;
    let hook = created["id"].as_str().expect("id").to_string();
    rx.set("secrets", created["secret"].as_str().expect("secret"));
    // A redirect is a failure too: it is never followed.
    rx.set("status", "307");
    app.create_key("never delivered").await;
    rx.wait_for(1).await;
    // Retries on the server's clock: 5 s, 1 min, 10 min, then 3 days in all.
    for step in [Span::seconds(6), Span::minutes(2), Span::minutes(11)] {
        let before = rx.messages().len();
        app.clock.advance(step);
        rx.wait_for(before + 1).await;
    }
    assert!(rx.messages().iter().all(|m| m["status"] == 307));
    let before = rx.messages().len();
    app.clock.advance(Span::days(3));
    rx.wait_for(before + 1).await;
    let started = std::time::Instant::now();
    loop {
        let got = app.get(&format!("/v1/webhooks/{hook}")).await;
        if got.body["status"] == "disabled" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{}", got.text);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The audit log follows the event within the projections' lag.
    let audit = loop {
        let audit = app
            .get(&format!("/v1/audit?key_id={hook}&type=WebhookUpdated"))
            .await;
        if audit.body["events"][0].is_object() {
            break audit;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{}",
            audit.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let event = &audit.body["events"][0];
    assert!(
        event["actor"]
            .as_str()
            .is_some_and(|a| a.starts_with("keyledger:node:")),
        "{}",
        audit.text
    );
    assert!(
        event["data"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("failing since")),
        "{}",
        audit.text
    );
    // Disabled: nothing more is sent, however late it gets.
    let sent = rx.messages().len();
    app.clock.advance(Span::days(1));
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(rx.messages().len(), sent);
}
