//! `GET /v1/keys/{id}/events`: a key's whole history, paged oldest first
//! (`limit`, `cursor`, `next_cursor`), however long it grows.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{spawn_app, start, Backend, TestApp, TestStore, TENANT};

backend_tests!(
    a_history_longer_than_ten_thousand_events_is_whole_when_next_cursor_is_followed,
    small_pages_walk_the_whole_history_once_and_in_order,
    bad_limits_and_cursors_are_refused_as_the_audit_log_refuses_them,
);

/// Every page of a key's history from the start, following `next_cursor`.
/// Returns the pages' events, one list per page.
async fn walk(app: &TestApp, id: &str, limit: Option<u32>) -> Vec<Vec<Value>> {
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut query = Vec::new();
        if let Some(l) = limit {
            query.push(format!("limit={l}"));
        }
        if let Some(c) = &cursor {
            query.push(format!("cursor={c}"));
        }
        let r = app
            .get(&format!("/v1/keys/{id}/events?{}", query.join("&")))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        pages.push(r.body["events"].as_array().expect("events").clone());
        match &r.body["next_cursor"] {
            Value::String(c) => cursor = Some(c.clone()),
            Value::Null => return pages,
            other => panic!("next_cursor is a string or null, not {other}"),
        }
        assert!(pages.len() < 100, "the walk does not end");
    }
}

/// Every event once, in commit order, ending with the deactivation and the deletion.
fn assert_whole(events: &[Value], id: &str, len: usize) {
    assert_eq!(events.len(), len, "every event of the key");
    let positions: Vec<i64> = events
        .iter()
        .map(|e| e["position"].as_i64().expect("position"))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "oldest first, each event once"
    );
    assert!(events.iter().all(|e| e["key_id"] == id));
    let types: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(types.first(), Some(&"KeyCreated"));
    assert_eq!(types[len - 2..], ["KeyDeactivated", "KeyDeleted"]);
}

async fn deactivate_and_delete(app: &TestApp, id: &str) {
    let r = app
        .post(
            &format!("/v1/keys/{id}/deactivate"),
            json!({"reason": "done"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .send(Method::DELETE, &format!("/v1/keys/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
}

async fn a_history_longer_than_ten_thousand_events_is_whole_when_next_cursor_is_followed(
    backend: Backend,
) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    // One key with 10,001 events, written straight into the event store: its
    // creation, then usage flushes and deactivations/reactivations in turn
    // (an even number of those, so it ends active).
    let events = keyledger::app::open_store(&store.config())
        .await
        .expect("open store");
    let seeded = keyledger_bench::seed::seed(&events, TENANT, 1, 10_001, false, None)
        .await
        .expect("seed");
    assert_eq!(seeded.events, 10_001);
    events.close().await;
    let app = start(store, |_| {}).await;
    let list = app.get("/v1/keys").await;
    let id = list.body["keys"][0]["id"]
        .as_str()
        .expect("the seeded key")
        .to_string();
    // Its newest events come after the 10,001 others.
    deactivate_and_delete(&app, &id).await;

    let pages = walk(&app, &id, None).await;
    assert_eq!(
        pages[0].len(),
        1000,
        "the default page holds 1000 events and names the next"
    );
    assert!(pages.iter().all(|p| p.len() <= 1000));
    let all: Vec<Value> = pages.concat();
    assert_whole(&all, &id, 10_003);
    app.stop().await;
}

async fn small_pages_walk_the_whole_history_once_and_in_order(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, _) = app.create_key("paged").await;
    let (other, _) = app.create_key("interleaved").await;
    for i in 0..5 {
        // Another key's events between this one's: pages skip them.
        for key in [&id, &other] {
            let r = app
                .send(
                    Method::PATCH,
                    &format!("/v1/keys/{key}"),
                    Some(json!({"description": format!("v{i}")})),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        }
    }
    deactivate_and_delete(&app, &id).await;

    // 1 + 5 + 2 events: pages of 3, 3 and 2, the last naming no next page.
    let pages = walk(&app, &id, Some(3)).await;
    let sizes: Vec<usize> = pages.iter().map(Vec::len).collect();
    assert_eq!(sizes, [3, 3, 2]);
    let all = pages.concat();
    assert_whole(&all, &id, 8);
    // The same events as one default page, which is the whole history.
    let whole = app.get(&format!("/v1/keys/{id}/events")).await;
    assert_eq!(whole.body["events"].as_array().expect("events"), &all);
    assert_eq!(whole.body["next_cursor"], Value::Null);

    // Pages of one, exactly at the end, and past it.
    assert_eq!(walk(&app, &id, Some(1)).await.len(), 8);
    let last = all[7]["position"].as_i64().expect("position");
    let past = app
        .get(&format!("/v1/keys/{id}/events?cursor={last}"))
        .await;
    assert_eq!(past.status, StatusCode::OK, "{}", past.text);
    assert_eq!(past.body, json!({"events": [], "next_cursor": null}));
    // A cursor does not make an unknown key known, nor another tenant's.
    let r = app
        .get(&format!("/v1/keys/key_0000/events?cursor={last}"))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    let globex = crate::helpers::token("globex", "bob");
    let r = app
        .send_as(
            &globex,
            Method::GET,
            &format!("/v1/keys/{id}/events?cursor=1"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    app.stop().await;
}

async fn bad_limits_and_cursors_are_refused_as_the_audit_log_refuses_them(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, _) = app.create_key("validated").await;
    for query in [
        "limit=0",
        "limit=1001",
        "limit=-1",
        "limit=ten",
        "limit=99999999999",
        "cursor=abc",
        "cursor=0",
        "cursor=-5",
        "cursor=",
        "cursor=1.5",
        "cursor=99999999999999999999",
    ] {
        let history = app.get(&format!("/v1/keys/{id}/events?{query}")).await;
        assert_eq!(
            history.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {}",
            history.text
        );
        assert_eq!(history.code(), "validation_failed", "{query}");
        assert!(
            history.body["error"]["message"].is_string(),
            "{query}: {}",
            history.text
        );
        let audit = app.get(&format!("/v1/audit?{query}")).await;
        assert_eq!(
            (audit.status, audit.code()),
            (history.status, history.code()),
            "{query}: the audit log answers alike"
        );
    }
    // The largest page is accepted.
    let r = app.get(&format!("/v1/keys/{id}/events?limit=1000")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    app.stop().await;
}
