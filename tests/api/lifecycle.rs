//! The whole life of a key through the HTTP API.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::backend_tests;
use crate::helpers::{spawn_app, Backend};

backend_tests!(full_lifecycle_create_verify_deactivate_reactivate_delete_audit);

async fn full_lifecycle_create_verify_deactivate_reactivate_delete_audit(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, key) = app.create_key("billing").await;
    assert_eq!(app.verify_code(&key).await, "VALID");

    let r = app
        .post(
            &format!("/v1/keys/{id}/deactivate"),
            json!({"reason": "rotating"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "inactive");
    assert_eq!(app.verify_code(&key).await, "DISABLED");

    let r = app
        .send(Method::POST, &format!("/v1/keys/{id}/reactivate"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["status"], "active");
    assert_eq!(app.verify_code(&key).await, "VALID");

    let r = app
        .send(Method::DELETE, &format!("/v1/keys/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.text);
    assert_eq!(app.verify_code(&key).await, "NOT_FOUND");
    assert_eq!(
        app.get(&format!("/v1/keys/{id}")).await.status,
        StatusCode::NOT_FOUND
    );

    let history = app.get(&format!("/v1/keys/{id}/events")).await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.text);
    let types: Vec<&str> = history.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        types,
        [
            "KeyCreated",
            "KeyDeactivated",
            "KeyReactivated",
            "KeyDeleted"
        ]
    );
    let audit = app.get("/v1/audit").await;
    assert_eq!(audit.status, StatusCode::OK);
    let events = audit.body["events"].as_array().expect("events");
    // The four events of the key, in commit order: an empty or short list
    // must fail here, not pass the checks of every entry below.
    let audited: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["key_id"].as_str().expect("key_id"),
                e["type"].as_str().expect("type"),
            )
        })
        .collect();
    assert_eq!(
        audited,
        [
            (id.as_str(), "KeyCreated"),
            (id.as_str(), "KeyDeactivated"),
            (id.as_str(), "KeyReactivated"),
            (id.as_str(), "KeyDeleted"),
        ],
        "{}",
        audit.text
    );
    // Provenance: every command event records who, where from and its request id.
    let mut request_ids = Vec::new();
    for e in events {
        assert_eq!(e["actor"], "alice", "{e}");
        assert_eq!(e["client_addr"], "127.0.0.1", "{e}");
        let request_id = e["request_id"].as_str().expect("request_id");
        assert!(!request_id.is_empty(), "{e}");
        request_ids.push(request_id);
    }
    request_ids.sort_unstable();
    request_ids.dedup();
    assert_eq!(request_ids.len(), 4, "one request each: {}", audit.text);
    assert!(!audit.text.contains(&key));
    app.stop().await;
}
