//! Rebuilding and checking projections while the server keeps serving.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyledger::rebuild::{check, rebuild, Which};
use keyledger_projections::Projections;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::Connection;

use crate::backend_tests;
use crate::helpers::{spawn_app, start, Backend, TestApp};

backend_tests!(
    check_catches_a_corrupted_row_and_rebuild_repairs_it,
    an_unreadable_key_list_row_stops_the_start_naming_it,
    verification_keeps_answering_through_a_rebuild_and_after_the_swap,
);

/// Corrupts one key-list row directly in the database.
async fn corrupt(app: &TestApp, id: &str) {
    let sql = "UPDATE key_list SET name = 'corrupted', usage_count = 999 WHERE id = $1";
    assert_eq!(alter_key_list(app, sql, id).await, 1);
}

/// Removes one key-list row directly in the database.
async fn forget(app: &TestApp, id: &str) {
    assert_eq!(
        alter_key_list(app, "DELETE FROM key_list WHERE id = $1", id).await,
        1
    );
}

/// Runs `sql` (binding `id`) on the projections' database; rows affected.
async fn alter_key_list(app: &TestApp, sql: &str, id: &str) -> u64 {
    // Projections are in PostgreSQL when there is a database URL, else in an
    // SQLite file (the SQLite store's, or the one beside KurrentDB).
    match app.store.database_url.clone() {
        None => {
            let path = app.store.projections_sqlite_path();
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .expect("open");
            sqlx::query(sql)
                .bind(id)
                .execute(&mut c)
                .await
                .expect("alter key_list")
                .rows_affected()
        }
        Some(url) => {
            let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
            sqlx::query(sql)
                .bind(id)
                .execute(&mut c)
                .await
                .expect("alter key_list")
                .rows_affected()
        }
    }
}

/// A key-list row the index cannot read is an error naming the row, never a
/// key quietly left out (it would answer NOT_FOUND while it exists); a
/// rebuild from the events repairs it.
async fn an_unreadable_key_list_row_stops_the_start_naming_it(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, key) = app.create_key("precious").await;
    let sql = "UPDATE key_list SET key_hash = 'not-a-hash' WHERE id = $1";
    assert_eq!(alter_key_list(&app, sql, &id).await, 1);
    let store = app.stop().await;
    let refused = keyledger::Application::build(store.config()).await;
    let Err(e) = refused else {
        panic!("a node started over an unreadable key_list row");
    };
    let text = e.to_string();
    assert!(
        text.contains("key_list") && text.contains(&id) && text.contains("key_hash"),
        "{text}"
    );
    let events = keyledger::app::open_store(&store.config())
        .await
        .expect("open store");
    let projections = Projections::unloaded(events.projection_db());
    rebuild(&events, &projections, Which::All, &|_, _| {})
        .await
        .expect("rebuild");
    events.close().await;
    let app = start(store, |_| {}).await;
    assert_eq!(app.verify_code(&key).await, "VALID");
    app.stop().await;
}

async fn check_catches_a_corrupted_row_and_rebuild_repairs_it(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, _) = app.create_key("precious").await;
    let (other, _) = app.create_key("other").await;
    // Characters that bulk loading must escape (COPY text format on PostgreSQL).
    let tricky = "tab\there\nnew line \\ backslash \r \\N";
    let r = app
        .send(
            Method::PATCH,
            &format!("/v1/keys/{other}"),
            Some(json!({"description": tricky})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .post(&format!("/v1/keys/{other}/deactivate"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let (store, projections) = app.open_tools().await;
    assert_eq!(
        check(&store, &projections).await.expect("check"),
        Vec::<String>::new()
    );

    corrupt(&app, &id).await;
    let diffs = check(&store, &projections).await.expect("check");
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert!(
        diffs[0].contains(&id) && diffs[0].contains("corrupted"),
        "{diffs:?}"
    );
    assert_eq!(
        app.get(&format!("/v1/keys/{id}")).await.body["name"],
        "corrupted"
    );

    let report = rebuild(&store, &projections, Which::All, &|_, _| {})
        .await
        .expect("rebuild");
    assert_eq!(report.events, 4);
    assert_eq!(
        check(&store, &projections).await.expect("check"),
        Vec::<String>::new()
    );
    let view = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(view.body["name"], "precious");
    assert_eq!(view.body["usage_count"], 0);
    assert_eq!(
        app.get(&format!("/v1/keys/{other}")).await.body["status"],
        "inactive"
    );
    store.close().await;
    app.stop().await;
}

async fn verification_keeps_answering_through_a_rebuild_and_after_the_swap(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let mut keys = Vec::new();
    for i in 0..20 {
        keys.push(app.create_key(&format!("k{i}")).await);
    }
    // A key only a rebuilt key list knows: its row is gone, and the node,
    // restarted, loaded its index without it.
    let (hidden_id, hidden) = keys[2].clone();
    forget(&app, &hidden_id).await;
    // Polling an unknown key counts as failed verifications: no 429 here.
    let store = app.stop().await;
    let app = start(store, |c| c.verify_failure_limit = 0).await;
    assert_eq!(app.verify_code(&hidden).await, "NOT_FOUND");
    assert_eq!(app.verify_code(&keys[0].1).await, "VALID");
    let app = Arc::new(app);
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let verifier = {
        let (app, stop, answered) = (app.clone(), stop.clone(), answered.clone());
        let key = keys[0].1.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                assert_eq!(app.verify_code(&key).await, "VALID");
                answered.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let (store, projections) = app.open_tools().await;
    for _ in 0..3 {
        rebuild(&store, &projections, Which::All, &|_, _| {})
            .await
            .expect("rebuild");
    }
    // A command after the swap lands in the rebuilt tables and in the index.
    let (id, key) = &keys[1];
    let r = app
        .send(Method::POST, &format!("/v1/keys/{id}/deactivate"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.verify_code(key).await, "DISABLED");
    // The node notices the rebuild and reloads its index from the rebuilt
    // list: the hidden key verifies once it has.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match app.verify_code(&hidden).await.as_str() {
            "VALID" => break,
            "NOT_FOUND" => assert!(
                Instant::now() < deadline,
                "the node did not reload its index within 10 s of the rebuild"
            ),
            other => panic!("the hidden key verified as {other}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::SeqCst);
    verifier
        .await
        .expect("verifier never saw anything but VALID");
    assert!(answered.load(Ordering::SeqCst) > 0);
    assert_eq!(app.verify_code(key).await, "DISABLED");
    for (_, k) in keys.iter().skip(2) {
        assert_eq!(app.verify_code(k).await, "VALID");
    }
    let list = app.get("/v1/keys?limit=100").await;
    assert_eq!(list.body["keys"].as_array().expect("keys").len(), 20);
    assert_eq!(
        check(&store, &projections).await.expect("check"),
        Vec::<String>::new()
    );
    store.close().await;
}

mod seeded {
    use super::*;
    use crate::helpers::{start, TestStore};

    backend_tests!(seeded_events_rebuild_into_consistent_projections_and_intact_chains);

    async fn seeded_events_rebuild_into_consistent_projections_and_intact_chains(backend: Backend) {
        let Some(store) = TestStore::new(backend).await else {
            return;
        };
        let events = keyledger::app::open_store(&store.config())
            .await
            .expect("open");
        let mut raw_keys: Vec<u8> = Vec::new();
        let seeded = keyledger_bench::seed::seed(
            &events,
            crate::helpers::TENANT,
            50,
            200,
            false,
            Some(&mut raw_keys),
        )
        .await
        .expect("seed");
        assert_eq!(seeded.events, 200);
        let projections = Projections::unloaded(events.projection_db());
        let report = rebuild(&events, &projections, Which::All, &|_, _| {})
            .await
            .expect("rebuild");
        assert_eq!(report.events, 200);
        assert_eq!(
            check(&events, &projections).await.expect("check"),
            Vec::<String>::new()
        );
        let chains = keyledger::integrity::verify_chains(&events, &projections)
            .await
            .expect("verify");
        assert_eq!(chains.first_broken, None);
        assert_eq!(chains.unlinked, 0);
        events.close().await;

        let app = start(store, |_| {}).await;
        let list = app.get("/v1/keys?limit=100").await;
        assert_eq!(list.body["keys"].as_array().expect("keys").len(), 50);
        let keys = String::from_utf8(raw_keys).expect("utf8");
        let codes: Vec<String> =
            futures::future::join_all(keys.lines().map(|k| app.verify_code(k))).await;
        assert_eq!(codes.len(), 50);
        // Each key saw alternating deactivations/reactivations: some are disabled.
        assert!(
            codes.iter().all(|c| c == "VALID" || c == "DISABLED"),
            "{codes:?}"
        );
        assert!(codes.iter().any(|c| c == "VALID"));
        app.stop().await;
    }
}
