//! Schema evolution: an event stored by an older build in its old shape is read
//! correctly by this one, by the projections and by the aggregate.

use keyledger_domain::{Environment, KeyPrefix, RawKey};
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::backend_tests;
use crate::helpers::{start, Backend, TestStore, TENANT};

backend_tests!(a_version_1_key_created_event_from_an_older_build_is_read_correctly);

async fn a_version_1_key_created_event_from_an_older_build_is_read_correctly(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let raw = RawKey::generate(&KeyPrefix::default(), Environment::Live, &mut rand::rng());
    let parsed = raw.parsed();
    // The v1 shape: permissions as an OAuth-style scope string, no environment,
    // description, expiry or metadata; no chain link either.
    let payload = json!({"KeyCreated": {
        "tenant": TENANT,
        "key_hash": parsed.hash().to_hex(),
        "display_prefix": parsed.display_prefix(),
        "name": "legacy",
        "permissions": "keys:write keys:read",
        "created_by": "old-build",
        "created_at": "2025-01-01T00:00:00Z"
    }});
    let metadata =
        json!({"actor": "old-build", "tenant": TENANT, "occurred_at": "2025-01-01T00:00:00Z"});
    let events = keyledger::app::open_store(&store.config())
        .await
        .expect("open");
    events
        .bulk_append(&[cqrs_es::persist::SerializedEvent::new(
            "key_legacy".into(),
            1,
            "ApiKey".into(),
            "KeyCreated".into(),
            "1.0".into(),
            payload.clone(),
            metadata.clone(),
        )])
        .await
        .expect("append");
    events.close().await;

    let app = start(store, |_| {}).await;
    let view = app.get("/v1/keys/key_legacy").await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.text);
    assert_eq!(view.body["permissions"], json!(["keys:read", "keys:write"]));
    assert_eq!(view.body["environment"], "live");
    assert_eq!(view.body["status"], "active");
    let r = app
        .verify(json!({"key": raw.expose(), "environment": "live", "permissions": ["keys:write"]}))
        .await;
    assert_eq!(r.body["code"], "VALID", "{}", r.text);
    // The aggregate loads the old event through the same upcaster.
    let r = app
        .send(Method::POST, "/v1/keys/key_legacy/deactivate", None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.verify_code(raw.expose()).await, "DISABLED");
    let history = app.get("/v1/keys/key_legacy/events").await;
    let events = history.body["events"].as_array().expect("events");
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0]["data"]["permissions"],
        json!(["keys:read", "keys:write"])
    );
    app.stop().await;
}
