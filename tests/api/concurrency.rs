//! Races on one key and concurrent creates: optimistic concurrency keeps every key
//! consistent, and the audit log explains the final state.

use std::collections::HashSet;
use std::sync::Arc;

use futures::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{spawn_app, Backend, Reply, TestApp};

backend_tests!(
    fifty_concurrent_deactivate_reactivate_pairs_leave_a_state_the_audit_log_explains,
    twenty_concurrent_creates_issue_twenty_distinct_valid_keys,
);

const PAIRS: usize = 50;

async fn fifty_concurrent_deactivate_reactivate_pairs_leave_a_state_the_audit_log_explains(
    backend: Backend,
) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let app = Arc::new(app);
    let (id, key) = app.create_key("contended").await;

    let requests = (0..PAIRS * 2).map(|i| {
        let app = app.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let action = if i % 2 == 0 {
                "deactivate"
            } else {
                "reactivate"
            };
            app.send(Method::POST, &format!("/v1/keys/{id}/{action}"), None)
                .await
        })
    });
    let replies: Vec<Reply> = join_all(requests)
        .await
        .into_iter()
        .map(|r| r.expect("request task"))
        .collect();

    let mut ok = 0;
    let mut conflicts = 0;
    for r in &replies {
        assert!(
            !r.status.is_server_error(),
            "no request may fail on the server: {} {}",
            r.status,
            r.text
        );
        match r.status {
            StatusCode::OK => {
                ok += 1;
                let status = r.body["status"].as_str().expect("status");
                assert!(status == "active" || status == "inactive", "{}", r.text);
            }
            StatusCode::CONFLICT => {
                conflicts += 1;
                assert_eq!(r.code(), "conflict", "{}", r.text);
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert_eq!(ok + conflicts, PAIRS * 2);
    assert!(ok > 0, "some commands got through");
    if conflicts > 0 {
        eprintln!(
            "{conflicts} of {} commands exhausted their retries (409)",
            PAIRS * 2
        );
    }

    let events = app.key_events(&id).await;
    let sequences: Vec<i64> = events
        .iter()
        .map(|e| e["sequence"].as_i64().expect("sequence"))
        .collect();
    let expected: Vec<i64> = (1..=i64::try_from(events.len()).expect("len")).collect();
    assert_eq!(sequences, expected, "sequences are 1..n without gaps");
    let positions: Vec<i64> = events
        .iter()
        .map(|e| e["position"].as_i64().expect("position"))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "positions increase: {positions:?}"
    );

    let types: Vec<&str> = events
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(types[0], "KeyCreated");
    let transitions: Vec<&str> = types[1..]
        .iter()
        .copied()
        .filter(|t| *t == "KeyDeactivated" || *t == "KeyReactivated")
        .collect();
    assert_eq!(
        transitions.len(),
        types.len() - 1,
        "only transitions: {types:?}"
    );
    for (i, t) in transitions.iter().enumerate() {
        let want = if i % 2 == 0 {
            "KeyDeactivated"
        } else {
            "KeyReactivated"
        };
        assert_eq!(
            *t, want,
            "transitions alternate, starting from active: {transitions:?}"
        );
    }
    assert!(
        transitions.len() <= ok,
        "every event comes from a successful command ({} events, {ok} successes)",
        transitions.len()
    );
    assert!(
        events.iter().all(|e| e["actor"] == "alice"),
        "every event names its actor"
    );

    let explained = match transitions.last() {
        Some(&"KeyDeactivated") => "inactive",
        _ => "active",
    };
    let view = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(view.status, StatusCode::OK);
    assert_eq!(
        view.body["status"], explained,
        "the audit log explains the state"
    );
    let verification = if explained == "active" {
        "VALID"
    } else {
        "DISABLED"
    };
    assert_eq!(app.verify_code(&key).await, verification);
    let listed = app.get("/v1/keys").await;
    assert_eq!(
        listed.body["keys"][0]["status"], explained,
        "the list agrees"
    );

    // The key still takes commands normally after the storm.
    let r = app
        .send(Method::POST, &format!("/v1/keys/{id}/deactivate"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.verify_code(&key).await, "DISABLED");
    let after = app.key_events(&id).await;
    let grew = if explained == "active" { 1 } else { 0 };
    assert_eq!(after.len(), events.len() + grew);

    let Ok(app) = Arc::try_unwrap(app) else {
        panic!("all request tasks are done")
    };
    app.stop().await;
}

async fn twenty_concurrent_creates_issue_twenty_distinct_valid_keys(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let app = Arc::new(app);
    // Concurrent creates share a commit (group commit); five invalid ones among
    // them are refused alone and take nothing down with them.
    let creates = (0..25).map(|i| {
        let app: Arc<TestApp> = app.clone();
        let permissions = if i % 5 == 4 {
            json!(["Not A Permission!"])
        } else {
            json!(["keys:read"])
        };
        tokio::spawn(async move {
            app.post(
                "/v1/keys",
                json!({"name": format!("key {i}"), "permissions": permissions}),
            )
            .await
        })
    });
    let (replies, refused): (Vec<Reply>, Vec<Reply>) = join_all(creates)
        .await
        .into_iter()
        .map(|r| r.expect("create task"))
        .partition(|r| r.status != StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.len(), 5, "the invalid creates are refused");
    for r in &refused {
        assert_eq!(r.body["error"]["code"], "validation_failed", "{}", r.text);
        assert_eq!(
            r.body["error"]["details"]["field"], "permissions",
            "{}",
            r.text
        );
    }
    for r in &replies {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let ids: HashSet<&str> = replies
        .iter()
        .map(|r| r.body["id"].as_str().expect("id"))
        .collect();
    let keys: HashSet<&str> = replies
        .iter()
        .map(|r| r.body["key"].as_str().expect("key"))
        .collect();
    let names: HashSet<&Value> = replies.iter().map(|r| &r.body["name"]).collect();
    assert_eq!(ids.len(), 20, "distinct ids");
    assert_eq!(keys.len(), 20, "distinct keys");
    assert_eq!(names.len(), 20, "each answer belongs to its own request");

    for key in &keys {
        assert_eq!(app.verify_code(key).await, "VALID");
    }
    // Each answer shows the key exactly as the key list holds it.
    for r in &replies {
        let id = r.body["id"].as_str().expect("id");
        let stored = app.get(&format!("/v1/keys/{id}")).await;
        let fields = stored.body.as_object().expect("key object");
        for (field, value) in fields {
            assert_eq!(&r.body[field], value, "{field} of {id}");
        }
    }
    let listed = app.get("/v1/keys?limit=100").await;
    let listed_ids: HashSet<&str> = listed.body["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["id"].as_str().expect("id"))
        .collect();
    assert_eq!(listed_ids, ids, "the list shows exactly the created keys");
    let audit = app.get("/v1/audit?type=KeyCreated").await;
    assert_eq!(audit.body["events"].as_array().map(Vec::len), Some(20));

    let Ok(app) = Arc::try_unwrap(app) else {
        panic!("all create tasks are done")
    };
    app.stop().await;
}
