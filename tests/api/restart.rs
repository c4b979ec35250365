//! A restarted server has every key in the state it left it, and usage counted by
//! verification survives the restart through the write-behind flush.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{spawn_app, start, Backend, TestApp, TestStore};

backend_tests!(
    a_restart_keeps_every_key_and_its_state,
    keys_take_commands_normally_after_a_restart,
    usage_counted_before_a_graceful_stop_is_flushed_and_shown_after_restart,
    usage_is_flushed_periodically_while_the_server_runs,
    usage_of_a_key_deleted_before_the_flush_is_still_recorded,
);

/// What a client can observe about the keys: list, each key, its history, the
/// audit log and the verification codes. Usage (`usage_count`, `last_used_at`,
/// `KeyUsageRecorded`) is left out: the verifications made while observing are
/// themselves flushed as usage at the next stop.
#[derive(Debug, PartialEq)]
struct Observed {
    list: Value,
    views: Vec<Value>,
    histories: Vec<Vec<Value>>,
    codes: Vec<String>,
    audit: Vec<Value>,
}

async fn observe(app: &TestApp, ids: &[String], keys: &[String]) -> Observed {
    let list = app.get("/v1/keys").await;
    assert_eq!(list.status, StatusCode::OK);
    let audit = app.get("/v1/audit").await;
    assert_eq!(audit.status, StatusCode::OK);
    let mut views = Vec::new();
    let mut histories = Vec::new();
    for id in ids {
        let view = app.get(&format!("/v1/keys/{id}")).await;
        views.push(json!({"status": view.status.as_u16(), "body": without_usage(view.body)}));
        histories.push(without_usage_events(&Value::Array(
            app.key_events(id).await,
        )));
    }
    let mut codes = Vec::new();
    for key in keys {
        codes.push(app.verify_code(key).await);
    }
    let mut list = list.body;
    for view in list["keys"].as_array_mut().expect("keys") {
        *view = without_usage(view.take());
    }
    Observed {
        list,
        views,
        histories,
        codes,
        audit: without_usage_events(&audit.body["events"]),
    }
}

fn without_usage(mut view: Value) -> Value {
    if let Some(fields) = view.as_object_mut() {
        if fields.contains_key("id") {
            assert!(
                fields.remove("usage_count").is_some(),
                "a key view shows usage"
            );
            assert!(
                fields.remove("last_used_at").is_some(),
                "a key view shows usage"
            );
        }
    }
    view
}

fn without_usage_events(events: &Value) -> Vec<Value> {
    events
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] != "KeyUsageRecorded")
        .cloned()
        .collect()
}

async fn a_restart_keeps_every_key_and_its_state(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (active, active_key) = app.create_key("active").await;
    let (inactive, inactive_key) = app.create_key("inactive").await;
    let (deleted, deleted_key) = app.create_key("deleted").await;
    let r = app
        .post(
            "/v1/keys",
            json!({
                "name": "detailed",
                "description": "all the fields",
                "environment": "test",
                "permissions": ["keys:write", "keys:read"],
                "expires_at": (app.clock.now() + chrono::Duration::days(30)).to_rfc3339(),
                "metadata": {"team": "billing", "n": 3}
            }),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let detailed = r.body["id"].as_str().expect("id").to_string();
    let detailed_key = r.body["key"].as_str().expect("key").to_string();
    let r = app
        .send(
            Method::PATCH,
            &format!("/v1/keys/{active}"),
            Some(json!({"name": "renamed"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .post(
            &format!("/v1/keys/{inactive}/deactivate"),
            json!({"reason": "paused"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .send(Method::DELETE, &format!("/v1/keys/{deleted}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);

    let ids = [active, inactive, deleted, detailed].map(String::from);
    let keys = [active_key, inactive_key, deleted_key, detailed_key].map(String::from);
    let before = observe(&app, &ids, &keys).await;
    assert_eq!(before.codes, ["VALID", "DISABLED", "NOT_FOUND", "VALID"]);
    assert_eq!(before.list["keys"].as_array().map(Vec::len), Some(3));
    assert_eq!(before.views[2]["status"], 404);

    assert_eq!(
        before.audit.len(),
        7,
        "4 creates, an update, a deactivate, a delete"
    );

    let app = app.restart().await;
    let after = observe(&app, &ids, &keys).await;
    assert_eq!(after, before, "a restart changes nothing a client can see");

    // And once more, to be sure a restart does not depend on the first run's memory.
    let app = app.restart().await;
    assert_eq!(observe(&app, &ids, &keys).await, before);
    app.stop().await;
}

async fn keys_take_commands_normally_after_a_restart(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, key) = app.create_key("billing").await;
    let r = app
        .post(&format!("/v1/keys/{id}/deactivate"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let app = app.restart().await;

    // An idempotent deactivate still records nothing: the state was reloaded.
    let r = app
        .post(&format!("/v1/keys/{id}/deactivate"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.key_events(&id).await.len(), 2);
    let r = app
        .send(Method::POST, &format!("/v1/keys/{id}/reactivate"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.verify_code(&key).await, "VALID");
    let (new_id, new_key) = app.create_key("after restart").await;
    assert_eq!(app.verify_code(&new_key).await, "VALID");

    let events = app.key_events(&id).await;
    let sequences: Vec<i64> = events
        .iter()
        .map(|e| e["sequence"].as_i64().expect("seq"))
        .collect();
    assert_eq!(
        sequences,
        [1, 2, 3],
        "the stream continues where it stopped"
    );
    let audit = app.get("/v1/audit").await;
    let positions: Vec<i64> = audit.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["position"].as_i64().expect("position"))
        .collect();
    assert_eq!(positions.len(), 4);
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
    let last = &audit.body["events"][3];
    assert_eq!(last["key_id"], new_id.as_str());
    assert_eq!(last["type"], "KeyCreated");
    app.stop().await;
}

fn usage_events(events: &[Value]) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| e["type"] == "KeyUsageRecorded")
        .collect()
}

async fn usage_counted_before_a_graceful_stop_is_flushed_and_shown_after_restart(backend: Backend) {
    const USES: i64 = 7;
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, key) = app.create_key("busy").await;
    let (idle, _) = app.create_key("idle").await;
    let started = app.clock.now();
    for _ in 0..USES {
        assert_eq!(app.verify_code(&key).await, "VALID");
    }
    // A failed verification of an unknown key is not usage of anything.
    assert_eq!(app.verify_code("kl_live_nothing").await, "NOT_FOUND");
    let view = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(
        view.body["usage_count"], 0,
        "usage is write-behind (hour-long interval)"
    );

    let app = app.restart().await;
    let view = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(view.status, StatusCode::OK);
    assert_eq!(view.body["usage_count"], USES, "{}", view.text);
    let last_used: chrono::DateTime<chrono::Utc> = view.body["last_used_at"]
        .as_str()
        .expect("last_used_at is set")
        .parse()
        .expect("RFC 3339");
    assert!(
        last_used >= started - chrono::Duration::seconds(1),
        "{last_used}"
    );
    let idle_view = app.get(&format!("/v1/keys/{idle}")).await;
    assert_eq!(idle_view.body["usage_count"], 0);
    assert_eq!(idle_view.body["last_used_at"], Value::Null);
    let listed = app.get("/v1/keys").await;
    let listed_busy = listed.body["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["id"] == id.as_str())
        .expect("listed")
        .clone();
    assert_eq!(
        listed_busy["usage_count"], USES,
        "the list view shows usage"
    );

    let events = app.key_events(&id).await;
    let usage = usage_events(&events);
    assert_eq!(
        usage.len(),
        1,
        "one usage event per key per flush: {events:?}"
    );
    assert_eq!(usage[0]["actor"], "keyledger:usage");
    let audit = app.get("/v1/audit?type=KeyUsageRecorded").await;
    let audited = audit.body["events"].as_array().expect("events");
    assert_eq!(
        audited.len(),
        1,
        "only the used key has usage: {}",
        audit.text
    );
    assert_eq!(audited[0]["key_id"], id.as_str());
    assert_eq!(audited[0]["actor"], "keyledger:usage");
    assert!(usage_events(&app.key_events(&idle).await).is_empty());

    // Usage after the restart adds to what was flushed before it.
    assert_eq!(app.verify_code(&key).await, "VALID");
    let app = app.restart().await;
    let view = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(view.body["usage_count"], USES + 1);
    app.stop().await;
}

async fn usage_is_flushed_periodically_while_the_server_runs(backend: Backend) {
    const USES: i64 = 5;
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let app = start(store, |c| {
        c.usage_flush_interval = Duration::from_millis(200)
    })
    .await;
    let (id, key) = app.create_key("busy").await;
    for _ in 0..USES {
        assert_eq!(app.verify_code(&key).await, "VALID");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let view = loop {
        let view = app.get(&format!("/v1/keys/{id}")).await;
        assert_eq!(view.status, StatusCode::OK, "{}", view.text);
        let count = view.body["usage_count"].as_i64().expect("usage_count");
        assert!(count <= USES, "never more than the uses: {}", view.text);
        if count == USES {
            break view;
        }
        assert!(
            Instant::now() < deadline,
            "usage was not flushed within 10 s: {}",
            view.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(view.body["last_used_at"].is_string(), "{}", view.text);
    let events = app.key_events(&id).await;
    let usage = usage_events(&events);
    assert!(!usage.is_empty(), "{events:?}");
    assert!(usage.iter().all(|e| e["actor"] == "keyledger:usage"));
    let sum: i64 = usage
        .iter()
        .map(|e| e["data"]["count"].as_i64().unwrap_or(0))
        .sum();
    assert_eq!(sum, USES, "the usage events add up to the uses: {usage:?}");

    // With nothing to flush, the flusher records nothing new.
    let store = app.stop().await;
    let app = start(store, |_| {}).await;
    assert_eq!(usage_events(&app.key_events(&id).await).len(), usage.len());
    let view = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(view.body["usage_count"], USES);
    app.stop().await;
}

async fn usage_of_a_key_deleted_before_the_flush_is_still_recorded(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, key) = app.create_key("short-lived").await;
    for _ in 0..3 {
        assert_eq!(app.verify_code(&key).await, "VALID");
    }
    let r = app
        .send(Method::DELETE, &format!("/v1/keys/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let app = app.restart().await;
    let history = app.get(&format!("/v1/keys/{id}/events")).await;
    let usage: Vec<&Value> = history.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "KeyUsageRecorded")
        .collect();
    assert_eq!(usage.len(), 1, "{}", history.text);
    assert_eq!(usage[0]["data"]["count"], 3);
    app.stop().await;
}
