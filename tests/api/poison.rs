//! One tenant's request must never stop the ledger for the others. The attack:
//! metadata nested deeper than serde_json's parser reads back (128 levels, with
//! the event's own wrapping). Before the fix the create was written and then
//! every reader of the log (the tailer, every command, `serve` itself) failed
//! on it for good, so other tenants' revocations stopped working.

use keyledger_domain::{Environment, KeyPrefix, RawKey};
use keyledger_projections::SqlPool;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{start, token, Backend, TestApp, TestStore};

backend_tests!(
    metadata_nested_too_deep_is_refused_and_revocation_keeps_working,
    an_unreadable_event_from_an_older_version_reads_and_the_ledger_moves_on,
    a_tailer_that_cannot_apply_an_event_makes_the_node_not_ready,
);

/// `{"a": [[...]]}` nested `levels` deep in all (the object is level 1).
fn nested_metadata(levels: usize) -> Value {
    let inner = format!("{}{}", "[".repeat(levels - 1), "]".repeat(levels - 1));
    serde_json::from_str(&format!("{{\"a\":{inner}}}")).expect("json")
}

/// The reproduction, as bytes: 125 arrays inside the object.
fn reproduction_body() -> String {
    let n = 125;
    format!(
        "{{\"name\":\"p\",\"metadata\":{{\"a\":{}{}}}}}",
        "[".repeat(n),
        "]".repeat(n)
    )
}

async fn ready(app: &TestApp) -> (StatusCode, Value) {
    let r = app
        .client
        .get(app.url("/readyz"))
        .send()
        .await
        .expect("readyz");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Integrity tools read every event: they must agree nothing drifted.
async fn assert_tools_agree(app: &TestApp) {
    let (store, projections) = app.open_tools().await;
    let diffs = keyledger::rebuild::check(&store, &projections)
        .await
        .expect("projections check");
    assert_eq!(diffs, Vec::<String>::new());
    let chains = keyledger::integrity::verify_chains(&store, &projections)
        .await
        .expect("audit verify");
    assert_eq!(chains.first_broken, None);
    store.close().await;
}

async fn metadata_nested_too_deep_is_refused_and_revocation_keeps_working(backend: Backend) {
    let Some(app) = crate::helpers::spawn_app(backend).await else {
        return;
    };
    let (victim_id, victim_key) = app.create_key("victim's").await;
    let evil = token("evil-tenant", "mallory");

    let r = crate::helpers::reply(
        app.client
            .post(app.url("/v1/keys"))
            .bearer_auth(&evil)
            .header("content-type", "application/json")
            .body(reproduction_body())
            .send()
            .await
            .expect("request"),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.code(), "validation_failed");
    assert_eq!(
        r.body["error"]["details"]["field"], "metadata",
        "{}",
        r.text
    );

    // The bound is 32 levels: 33 is refused, 32 is stored and reads back whole.
    let too_deep = app
        .send_as(
            &evil,
            Method::POST,
            "/v1/keys",
            Some(json!({"name": "deep", "metadata": nested_metadata(33)})),
        )
        .await;
    assert_eq!(
        too_deep.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        too_deep.text
    );
    let deepest = nested_metadata(32);
    let ok = app
        .send_as(
            &evil,
            Method::POST,
            "/v1/keys",
            Some(json!({"name": "deep", "metadata": deepest})),
        )
        .await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text);
    let evil_id = ok.body["id"].as_str().expect("id").to_string();
    assert_eq!(ok.body["metadata"], deepest);

    // An update with the reproduction's metadata is refused (its body is
    // deeper than the request parser reads: 400), and so is one the parser
    // reads but the rules do not admit (422).
    let patch = app
        .send_as(
            &evil,
            Method::PATCH,
            &format!("/v1/keys/{evil_id}"),
            Some(json!({"metadata": nested_metadata(127)})),
        )
        .await;
    assert_eq!(patch.status, StatusCode::BAD_REQUEST, "{}", patch.text);
    let patch = app
        .send_as(
            &evil,
            Method::PATCH,
            &format!("/v1/keys/{evil_id}"),
            Some(json!({"metadata": nested_metadata(100)})),
        )
        .await;
    assert_eq!(
        patch.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        patch.text
    );
    assert_eq!(
        patch.body["error"]["details"]["field"], "metadata",
        "{}",
        patch.text
    );

    // Everyone else is unaffected: revocation works and the node is ready.
    let r = app
        .send(
            Method::POST,
            &format!("/v1/keys/{victim_id}/deactivate"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.verify_code(&victim_key).await, "DISABLED");
    let got = app
        .send_as(&evil, Method::GET, &format!("/v1/keys/{evil_id}"), None)
        .await;
    assert_eq!(got.body["metadata"], deepest, "{}", got.text);
    assert_eq!(ready(&app).await.0, StatusCode::OK);
    assert_tools_agree(&app).await;

    // And the node starts again over what it wrote.
    let app = app.restart().await;
    assert_eq!(app.verify_code(&victim_key).await, "DISABLED");
    assert_eq!(ready(&app).await.0, StatusCode::OK);
    app.stop().await;
}

/// Inserts one event the way an older build's store holds it (payload and
/// metadata as JSON text), bypassing every rule of this version.
async fn insert_stored_event(
    store: &TestStore,
    key_id: &str,
    event_type: &str,
    version: &str,
    payload: &str,
    metadata: &str,
) {
    let events = keyledger::app::open_store(&store.config())
        .await
        .expect("open");
    let sql = |cast: &str| {
        format!(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
             event_version, payload, metadata) VALUES ('ApiKey', $1, 1, $2, $3, \
             CAST($4 AS {cast}), CAST($5 AS {cast}))"
        )
    };
    // Written as older versions could, past every check of this one.
    match events.projection_db() {
        SqlPool::Sqlite(pool) => {
            sqlx::query(&sql("TEXT"))
                .bind(key_id)
                .bind(event_type)
                .bind(version)
                .bind(payload)
                .bind(metadata)
                .execute(&pool)
                .await
                .expect("insert");
        }
        SqlPool::Postgres(pool) => {
            sqlx::query(&sql("JSON"))
                .bind(key_id)
                .bind(event_type)
                .bind(version)
                .bind(payload)
                .bind(metadata)
                .execute(&pool)
                .await
                .expect("insert");
        }
    }
    events.close().await;
}

/// A `KeyCreated` of tenant `evil-tenant` as the attack left it in
/// older versions' stores: metadata nested `levels` deep (the 4 KiB limit
/// allowed about 2,000).
fn poisoned_create(raw: &RawKey, levels: usize) -> (String, String) {
    let parsed = raw.parsed();
    let inner = format!("{}{}", "[".repeat(levels - 1), "]".repeat(levels - 1));
    let payload = format!(
        "{{\"KeyCreated\":{{\"tenant\":\"evil-tenant\",\"key_hash\":\"{}\",\
         \"display_prefix\":\"{}\",\"name\":\"p\",\"description\":null,\
         \"environment\":\"live\",\"permissions\":[],\"expires_at\":null,\
         \"metadata\":{{\"a\":{inner}}},\"created_by\":\"mallory\",\
         \"created_at\":\"2026-11-01T00:00:00Z\"}}}}",
        parsed.hash().to_hex(),
        parsed.display_prefix()
    );
    let metadata = json!({"actor": "mallory", "tenant": "evil-tenant",
        "occurred_at": "2026-11-01T00:00:00Z"})
    .to_string();
    (payload, metadata)
}

async fn an_unreadable_event_from_an_older_version_reads_and_the_ledger_moves_on(backend: Backend) {
    #[cfg(feature = "kurrentdb")]
    if backend == Backend::Kurrent {
        return;
    }
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let app = start(store, |_| {}).await;
    let (victim_id, victim_key) = app.create_key("victim's").await;
    let store = app.stop().await;

    let raw = RawKey::generate(&KeyPrefix::default(), Environment::Live, &mut rand::rng());
    let levels = 2000;
    let (payload, metadata) = poisoned_create(&raw, levels);
    assert!(
        serde_json::from_str::<Value>(&payload).is_err(),
        "the ordinary parser refuses it: this is the event that jammed the log"
    );
    insert_stored_event(
        &store,
        "key_poisoned",
        "KeyCreated",
        "2.0",
        &payload,
        &metadata,
    )
    .await;

    // The node starts (it could not), the tailer moves past the event, and
    // the other tenant's revocation works again.
    let app = start(store, |_| {}).await;
    let r = app
        .send(
            Method::POST,
            &format!("/v1/keys/{victim_id}/deactivate"),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.verify_code(&victim_key).await, "DISABLED");
    let (status, body) = ready(&app).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // The poisoned key itself reads, whole, and takes commands.
    let evil = token("evil-tenant", "mallory");
    let view = app
        .send_as(&evil, Method::GET, "/v1/keys/key_poisoned", None)
        .await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.text);
    // Its view is as deep as what was stored (ordinary parsers, the test
    // client's included, refuse it; that stays the attacker's own problem).
    let body = keyledger_domain::json::parse_stored(&view.text).expect("the view is JSON");
    assert_eq!(keyledger_domain::json::depth(&body["metadata"]), levels);
    assert_eq!(app.verify_code(raw.expose()).await, "VALID");
    let r = app
        .send_as(
            &evil,
            Method::POST,
            "/v1/keys/key_poisoned/deactivate",
            Some(json!({"reason": "cleaning up"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.verify_code(raw.expose()).await, "DISABLED");
    let history = app
        .send_as(&evil, Method::GET, "/v1/keys/key_poisoned/events", None)
        .await;
    assert_eq!(history.status, StatusCode::OK, "{}", history.text);
    let history = keyledger_domain::json::parse_stored(&history.text).expect("JSON");
    assert_eq!(history["events"].as_array().map(Vec::len), Some(2));
    assert_tools_agree(&app).await;
    app.stop().await;
}

async fn a_tailer_that_cannot_apply_an_event_makes_the_node_not_ready(backend: Backend) {
    #[cfg(feature = "kurrentdb")]
    if backend == Backend::Kurrent {
        return;
    }
    let Some(app) = crate::helpers::spawn_app(backend).await else {
        return;
    };
    let (_, key) = app.create_key("before").await;
    assert_eq!(ready(&app).await.0, StatusCode::OK);
    // A corrupt event (a payload no version of keyledger wrote) arrives from
    // outside this node: the tailer must stop before it, loudly.
    let payload = json!({"KeyCreated": {"tenant": "acme", "surprise": true}}).to_string();
    let metadata = json!({"actor": "x", "tenant": "acme"}).to_string();
    insert_stored_event(
        &app.store,
        "key_corrupt",
        "KeyCreated",
        "2.0",
        &payload,
        &metadata,
    )
    .await;

    let mut last = (StatusCode::OK, Value::Null);
    for _ in 0..100 {
        last = ready(&app).await;
        if last.0 == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(last.0, StatusCode::SERVICE_UNAVAILABLE, "{}", last.1);
    assert_eq!(last.1["ready"], false);
    assert!(
        last.1["stalled"]["failures"].as_u64().unwrap_or(0) >= 1,
        "{}",
        last.1
    );
    // Verification of what it already knows keeps answering meanwhile.
    assert_eq!(app.verify_code(&key).await, "VALID");
    let metrics = app.metrics_text().await;
    assert!(
        metrics.contains(keyledger::tailer::TAILER_FAILURES_TOTAL),
        "the failures are counted"
    );
    app.stop().await;
}
