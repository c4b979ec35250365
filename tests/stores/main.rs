//! The PostgreSQL store under several nodes: the global feed never skips an event
//! that commits late, and a revocation on one node reaches the others.

#[path = "../api/helpers.rs"]
#[allow(dead_code)]
mod helpers;
mod schema;
mod upgrade;

use std::time::{Duration, Instant};

use chrono::Utc;
use helpers::{spawn_app, start, Backend, TestApp, TestStore};
use keyledger_domain::{ApiKeyEvent, Environment, KeyCreated, KeyPrefix, Permissions, RawKey};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::Connection;

/// A second node over the same PostgreSQL database as `app`.
async fn second_node(app: &TestApp) -> TestApp {
    second_node_with(app, |_| {}).await
}

/// A second node over `app`'s database, configured by `adjust`.
async fn second_node_with(
    app: &TestApp,
    adjust: impl FnOnce(&mut keyledger::config::Config),
) -> TestApp {
    let store = TestStore {
        backend: Backend::Postgres,
        data_dir: tempfile::tempdir().expect("tempdir"),
        database_url: app.store.database_url.clone(),
        owns_database: false,
        kurrent: None,
    };
    start(store, adjust).await
}

/// Polls `node` until the key's verification code is `want`; returns how long it took.
async fn until_code(node: &TestApp, key: &str, want: &str) -> Duration {
    let started = Instant::now();
    loop {
        let code = node.verify_code(key).await;
        if code == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "node never answered {want}, still {code}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_that_commits_late_reaches_every_projection() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let (_, first_key) = app.create_key("before").await;
    let url = app.store.database_url.clone().expect("postgres url");

    // Hold an append transaction open: its row is written, not committed.
    let held_key = RawKey::generate(&KeyPrefix::default(), Environment::Live, &mut rand::rng());
    let parsed = held_key.parsed();
    let event = ApiKeyEvent::KeyCreated(KeyCreated {
        tenant: helpers::TENANT.into(),
        key_hash: parsed.hash(),
        display_prefix: parsed.display_prefix(),
        name: "held".into(),
        description: None,
        environment: Environment::Live,
        permissions: Permissions::default(),
        expires_at: None,
        metadata: None,
        created_by: "held-writer".into(),
        created_at: Utc::now(),
        rotated_from: None,
        owner: None,
        ratelimits: Vec::new(),
        credits: None,
        allowed_ips: Default::default(),
        imported: Default::default(),
    });
    let metadata = json!({"tenant": helpers::TENANT, "actor": "held-writer", "occurred_at": Utc::now().to_rfc3339()});
    let mut held = sqlx::PgConnection::connect(&url).await.expect("connect");
    let mut tx = held.begin().await.expect("begin");
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata) \
         VALUES ('ApiKey', 'key_held', 1, 'KeyCreated', '1.0', $1, $2)",
    )
    .bind(serde_json::to_value(&event).expect("payload"))
    .bind(metadata)
    .execute(&mut *tx)
    .await
    .expect("held insert");

    // Other writers append while it is open, and are not held up by it.
    let mut created = Vec::new();
    for i in 0..5 {
        let body = app
            .client
            .post(app.url("/v1/keys"))
            .bearer_auth(&app.token)
            .json(&json!({"name": format!("during-{i}")}))
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .expect("a writer is not blocked by an open append")
            .json::<serde_json::Value>()
            .await
            .expect("json");
        created.push(body["key"].as_str().expect("created key").to_string());
    }
    // Positions are dense and given only to committed events.
    let mut reader = sqlx::PgConnection::connect(&url).await.expect("connect");
    let visible: Vec<i64> = sqlx::query_scalar(
        "SELECT global_position FROM events WHERE global_position IS NOT NULL ORDER BY 1",
    )
    .fetch_all(&mut reader)
    .await
    .expect("positions");
    assert_eq!(visible, (1..=6).collect::<Vec<i64>>());

    // The late commit gets the next position (from a tailer's poll: no
    // keyledger writer ran the sequencer for it) and reaches every projection.
    tx.commit().await.expect("commit held");
    let started = std::time::Instant::now();
    loop {
        let position: Option<i64> = sqlx::query_scalar(
            "SELECT global_position FROM events WHERE aggregate_id = 'key_held'",
        )
        .fetch_one(&mut reader)
        .await
        .expect("held row");
        if let Some(p) = position {
            assert_eq!(p, 7, "numbered after every earlier commit");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the late append was never numbered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = until_code(&app, held_key.expose(), "VALID").await;

    // Every projection has every event: audit log, key list, verification index.
    let audit = app.get("/v1/audit?limit=1000").await;
    let positions: Vec<i64> = audit.body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["position"].as_i64().expect("position"))
        .collect();
    assert_eq!(positions, (1..=7).collect::<Vec<i64>>());
    let held_view = app.get("/v1/keys/key_held").await;
    assert_eq!(held_view.status, StatusCode::OK, "{}", held_view.text);
    assert_eq!(app.verify_code(held_key.expose()).await, "VALID");
    assert_eq!(app.verify_code(&first_key).await, "VALID");
    for key in &created {
        assert_eq!(app.verify_code(key).await, "VALID");
    }
    let list = app.get("/v1/keys?limit=100").await;
    assert_eq!(list.body["keys"].as_array().expect("keys").len(), 7);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_revoked_on_one_node_fails_verification_on_another() {
    let Some(a) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let b = second_node(&a).await;
    let (id, key) = a.create_key("shared").await;
    until_code(&b, &key, "VALID").await;

    let r = a
        .send(Method::POST, &format!("/v1/keys/{id}/deactivate"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let took = until_code(&b, &key, "DISABLED").await;
    eprintln!("deactivation reached node B in {took:?}");

    let r = a
        .send(Method::POST, &format!("/v1/keys/{id}/reactivate"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    until_code(&b, &key, "VALID").await;

    let r = a
        .send(Method::DELETE, &format!("/v1/keys/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    until_code(&b, &key, "NOT_FOUND").await;

    // Node B serves the same views: the key is gone there too, its history is not.
    assert_eq!(
        b.get(&format!("/v1/keys/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    let history = b.get(&format!("/v1/keys/{id}/events")).await;
    assert_eq!(history.body["events"].as_array().expect("events").len(), 4);
    b.stop().await;
    a.stop().await;
}

/// Node B checks creates against the policy it holds in memory: a policy
/// set on node A reaches it by the feed, also after B cached the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_set_on_one_node_is_enforced_by_another() {
    let Some(a) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let b = second_node(&a).await;
    // B reads (and caches) the default policy: test keys are allowed.
    let r = b
        .post("/v1/keys", json!({"name": "before", "environment": "test"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let r = a
        .send(
            Method::PUT,
            "/v1/policy",
            Some(json!({"allowed_environments": ["live"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let started = Instant::now();
    loop {
        let r = b
            .post("/v1/keys", json!({"name": "after", "environment": "test"}))
            .await;
        if r.status == StatusCode::UNPROCESSABLE_ENTITY {
            assert_eq!(r.body["error"]["code"], "policy_violation", "{}", r.text);
            break;
        }
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "node B never learnt the policy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("the policy reached node B in {:?}", started.elapsed());
    b.stop().await;
    a.stop().await;
}

/// Two nodes importing the same 300 hashes at the same moment agree on one
/// key per hash: the import claims decide, whichever node created the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_importing_the_same_keys_make_each_key_once() {
    use sha2::{Digest, Sha256};
    let Some(a) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let prefixes = |c: &mut keyledger::config::Config| c.import_prefixes = vec!["sk_".into()];
    let b = second_node_with(&a, prefixes).await;
    let raws: Vec<String> = (0..300)
        .map(|i| format!("sk_{i}_{}", uuid::Uuid::now_v7().simple()))
        .collect();
    let items: Vec<serde_json::Value> = raws
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            json!({
                "hash": hex::encode(Sha256::digest(raw.as_bytes())),
                "prefix": &raw[..6],
                "name": format!("legacy {i}"),
            })
        })
        .collect();
    let body = json!({ "keys": items });
    let (ra, rb) = tokio::join!(
        a.post("/v1/keys/import", body.clone()),
        b.post("/v1/keys/import", body)
    );
    let ids = |r: &helpers::Reply| -> Vec<String> {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(r.body["errors"], json!([]), "{}", r.text);
        r.body["imported"]
            .as_array()
            .expect("imported")
            .iter()
            .map(|i| i["id"].as_str().expect("id").to_string())
            .collect()
    };
    let (ids_a, ids_b) = (ids(&ra), ids(&rb));
    assert_eq!(ids_a.len(), 300);
    assert_eq!(ids_a, ids_b, "both nodes answer the same key for each hash");
    // Exactly 300 keys exist, and node B verifies one node A may have made.
    let mut listed = 0;
    let mut cursor = String::new();
    loop {
        let page = a.get(&format!("/v1/keys?limit=100{cursor}")).await;
        listed += page.body["keys"].as_array().expect("keys").len();
        match page.body["next_cursor"].as_str() {
            Some(c) => cursor = format!("&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(listed, 300);
    let r = b.verify(json!({"key": raws[17]})).await;
    assert_eq!(r.body["code"], "VALID", "{}", r.text);
    assert_eq!(r.body["key_id"], ids_a[17].as_str());
    b.stop().await;
    a.stop().await;
}

/// Node B polls once an hour here, so only the notifications of A's commits
/// can bring them: group commit's, which names the batch's last position
/// (migrations/postgres/0009), and the sequencer's, which names none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_nodes_commits_arrive_by_their_notifications() {
    let Some(a) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let b = second_node_with(&a, |c| c.poll_interval = Duration::from_secs(3600)).await;
    let (id, key) = a.create_key("notified").await;
    until_code(&b, &key, "VALID").await;
    let r = a
        .send(Method::POST, &format!("/v1/keys/{id}/deactivate"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    until_code(&b, &key, "DISABLED").await;
    let (_, second) = a.create_key("notified again").await;
    until_code(&b, &second, "VALID").await;
    b.stop().await;
    a.stop().await;
}

/// After a rebuild of one projection the two checkpoints can stand apart (the
/// rebuilt one is swapped in at the head it started from). A create's batch
/// then writes the rows of the projection that stands at its base, and the
/// tailer the other's: neither may be skipped. Polling is off, so nothing but
/// the batch and its own catch-up moves the checkpoints. Both stores write a
/// batch's projection rows with its events (group commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_after_one_projection_fell_behind_reaches_both() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(store) = TestStore::new(backend).await else {
            return;
        };
        let app = start(store, |c| c.poll_interval = Duration::from_secs(3600)).await;
        let (first, _) = app.create_key("before").await;
        let mut db = Db::open(&app).await;
        for behind in ["audit_log", "key_list"] {
            db.step_back(behind).await;
            let (id, key) = app.create_key(&format!("after {behind} fell behind")).await;
            let got = app.get(&format!("/v1/keys/{id}")).await;
            assert_eq!(
                got.status,
                StatusCode::OK,
                "{backend:?} {behind}: {}",
                got.text
            );
            let history = app.get(&format!("/v1/keys/{id}/events")).await;
            let events = history.body["events"].as_array().expect("events");
            assert_eq!(events.len(), 1, "{backend:?} {behind}: {}", history.text);
            assert_eq!(app.verify_code(&key).await, "VALID");
            let (head, low, high) = db.checkpoints().await;
            assert_eq!(
                (low, high),
                (head, head),
                "{backend:?} {behind}: both checkpoints at the head"
            );
        }
        let list = app.get("/v1/keys").await;
        assert_eq!(list.body["keys"].as_array().expect("keys").len(), 3);
        assert_eq!(
            app.get(&format!("/v1/keys/{first}")).await.status,
            StatusCode::OK
        );
        app.stop().await;
    }
}

/// A connection of its own to a running node's database, to move its
/// projections' checkpoints behind its back.
enum Db {
    Postgres(sqlx::PgConnection),
    Sqlite(sqlx::SqliteConnection),
}

impl Db {
    async fn open(app: &TestApp) -> Self {
        match &app.store.database_url {
            Some(url) => Self::Postgres(sqlx::PgConnection::connect(url).await.expect("connect")),
            None => {
                let path = app.store.data_dir.path().join("keyledger.db");
                let url = format!("sqlite://{}", path.display());
                Self::Sqlite(sqlx::SqliteConnection::connect(&url).await.expect("open"))
            }
        }
    }

    async fn step_back(&mut self, name: &str) {
        let sql = "UPDATE projection_checkpoints SET position = position - 1 WHERE name = $1";
        let done = match self {
            Self::Postgres(c) => sqlx::query(sql)
                .bind(name)
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
            Self::Sqlite(c) => sqlx::query(sql)
                .bind(name)
                .execute(c)
                .await
                .map(|r| r.rows_affected()),
        };
        assert_eq!(done.expect("move the checkpoint back"), 1, "{name}");
    }

    /// The head, and the lower and higher of the two checkpoints.
    async fn checkpoints(&mut self) -> (i64, i64, i64) {
        let sql = "SELECT (SELECT MAX(global_position) FROM events), MIN(position), MAX(position) \
                     FROM projection_checkpoints WHERE name IN ('key_list', 'audit_log')";
        match self {
            Self::Postgres(c) => sqlx::query_as(sql).fetch_one(c).await,
            Self::Sqlite(c) => sqlx::query_as(sql).fetch_one(c).await,
        }
        .expect("checkpoints")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_events_table_refuses_update_and_delete() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    app.create_key("immutable").await;
    let url = app.store.database_url.clone().expect("postgres url");
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    for sql in [
        "UPDATE events SET event_type = 'Forged'",
        // A position, once given, is never changed either.
        "UPDATE events SET global_position = 99",
        "DELETE FROM events",
        "TRUNCATE events",
    ] {
        let err = sqlx::query(sql).execute(&mut conn).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events")
        .fetch_one(&mut conn)
        .await
        .expect("count");
    assert_eq!(count, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_events_table_refuses_update_and_delete() {
    let Some(app) = spawn_app(Backend::Sqlite).await else {
        return;
    };
    app.create_key("immutable").await;
    let store = app.stop().await;
    let path = store.data_dir.path().join("keyledger.db");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("open");
    for sql in [
        "UPDATE events SET event_type = 'Forged'",
        // A position, once given, is never changed either.
        "UPDATE events SET global_position = 99",
        "DELETE FROM events",
    ] {
        let err = sqlx::query(sql).execute(&mut conn).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
}

mod tamper {
    use super::*;
    use keyledger::integrity::verify_chains;
    use keyledger_projections::Projections;

    crate::backend_tests!(
        audit_verify_names_exactly_the_event_edited_behind_the_database_s_back,
        audit_verify_catches_an_edit_of_the_newest_event_of_a_chain,
    );

    /// Says why a behaviour is not run on a backend; true when it must be skipped.
    fn unsupported(backend: Backend, reason: &str) -> bool {
        #[cfg(feature = "kurrentdb")]
        if backend == Backend::Kurrent {
            helpers::skipped(&format!("not on KurrentDB: {reason}"));
            return true;
        }
        let _ = (backend, reason);
        false
    }

    /// Rewrites the payload of the event at `position`, bypassing the
    /// append-only trigger the way an intruder with database access would.
    async fn tamper(store: &TestStore, position: i64, from: &str, to: &str) {
        match store.backend {
            Backend::Sqlite => {
                let path = store.data_dir.path().join("keyledger.db");
                let mut c =
                    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                        .await
                        .expect("open");
                sqlx::query("DROP TRIGGER events_no_update")
                    .execute(&mut c)
                    .await
                    .expect("drop trigger");
                let r = sqlx::query("UPDATE events SET payload = replace(payload, $1, $2) WHERE global_position = $3")
                    .bind(from)
                    .bind(to)
                    .bind(position)
                    .execute(&mut c)
                    .await
                    .expect("tamper");
                assert_eq!(r.rows_affected(), 1);
            }
            // Skipped before getting here (`unsupported`).
            #[cfg(feature = "kurrentdb")]
            Backend::Kurrent => panic!("KurrentDB events cannot be edited in place"),
            Backend::Postgres => {
                let url = store.database_url.clone().expect("url");
                let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
                sqlx::query("ALTER TABLE events DISABLE TRIGGER events_guard_update")
                    .execute(&mut c)
                    .await
                    .expect("disable trigger");
                let r = sqlx::query("UPDATE events SET payload = replace(payload::text, $1, $2)::json WHERE global_position = $3")
                    .bind(from)
                    .bind(to)
                    .bind(position)
                    .execute(&mut c)
                    .await
                    .expect("tamper");
                assert_eq!(r.rows_affected(), 1);
                sqlx::query("ALTER TABLE events ENABLE TRIGGER events_guard_update")
                    .execute(&mut c)
                    .await
                    .expect("enable trigger");
            }
        }
    }

    async fn verify(store: &TestStore) -> keyledger::integrity::ChainReport {
        let events = keyledger::app::open_store(&store.config())
            .await
            .expect("open store");
        let projections = Projections::unloaded(events.projection_db());
        let report = verify_chains(&events, &projections).await.expect("verify");
        events.close().await;
        report
    }

    async fn history(app: &TestApp) -> String {
        let (id, _) = app.create_key("first").await;
        let r = app
            .post(
                &format!("/v1/keys/{id}/deactivate"),
                json!({"reason": "rotating"}),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK);
        let r = app
            .send(Method::POST, &format!("/v1/keys/{id}/reactivate"), None)
            .await;
        assert_eq!(r.status, StatusCode::OK);
        app.create_key("second").await;
        id
    }

    async fn audit_verify_names_exactly_the_event_edited_behind_the_database_s_back(
        backend: Backend,
    ) {
        if unsupported(
            backend,
            "events are immutable in KurrentDB; there is no table to tamper with",
        ) {
            return;
        }
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        history(&app).await;
        let store = app.stop().await;
        let clean = verify(&store).await;
        assert_eq!(clean.events, 4);
        assert_eq!(clean.first_broken, None);

        // Position 2 is the deactivation; its reason is edited.
        tamper(&store, 2, "rotating", "routine").await;
        let report = verify(&store).await;
        let broken = report.first_broken.expect("tampering detected");
        assert_eq!(broken.position, 2, "{broken:?}");
        assert_eq!(broken.sequence, 2);
    }

    async fn audit_verify_catches_an_edit_of_the_newest_event_of_a_chain(backend: Backend) {
        if unsupported(
            backend,
            "events are immutable in KurrentDB; there is no table to tamper with",
        ) {
            return;
        }
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        history(&app).await;
        let store = app.stop().await;
        // Position 4 is the only event of the second key: no successor links to it.
        tamper(&store, 4, "second", "fourth").await;
        let report = verify(&store).await;
        assert_eq!(report.first_broken.expect("tampering detected").position, 4);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_holds_across_nodes() {
    let Some(a) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let b = second_node(&a).await;
    let send = |node: &TestApp| {
        node.client
            .post(node.url("/v1/keys"))
            .bearer_auth(&node.token)
            .header("Idempotency-Key", "cross-node")
            .json(&json!({"name": "once across nodes"}))
            .send()
    };
    let replies =
        futures::future::join_all((0..8).map(|i| send(if i % 2 == 0 { &a } else { &b }))).await;
    let mut keys = std::collections::HashSet::new();
    for r in replies {
        let r = r.expect("request");
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: serde_json::Value = r.json().await.expect("json");
        keys.insert(body["key"].as_str().expect("key").to_string());
    }
    assert_eq!(keys.len(), 1, "every node answered with the same key");
    let list = b.get("/v1/keys").await;
    assert_eq!(list.body["keys"].as_array().expect("keys").len(), 1);
    b.stop().await;
    a.stop().await;
}

/// Two nodes count uses of the same keys and flush them at the same moments:
/// their batched appends collide on the usage streams, the loser goes key by
/// key, and every use is recorded exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_flushed_by_two_nodes_at_once_adds_up() {
    const KEYS: usize = 30;
    const USES_PER_NODE: usize = 4;
    let Some(store) = TestStore::new(Backend::Postgres).await else {
        return;
    };
    let fast_flush =
        |c: &mut keyledger::config::Config| c.usage_flush_interval = Duration::from_millis(100);
    let a = start(store, fast_flush).await;
    let b = start(
        TestStore {
            backend: Backend::Postgres,
            data_dir: tempfile::tempdir().expect("tempdir"),
            database_url: a.store.database_url.clone(),
            owns_database: false,
            kurrent: None,
        },
        fast_flush,
    )
    .await;
    let mut keys = Vec::new();
    for i in 0..KEYS {
        keys.push(a.create_key(&format!("shared-{i}")).await);
    }
    for (_, key) in &keys {
        until_code(&b, key, "VALID").await;
    }
    for _ in 0..USES_PER_NODE {
        let (on_a, on_b) = tokio::join!(
            futures::future::join_all(keys.iter().map(|(_, k)| a.verify_code(k))),
            futures::future::join_all(keys.iter().map(|(_, k)| b.verify_code(k))),
        );
        assert!(on_a.iter().chain(&on_b).all(|c| c == "VALID"));
    }
    // One more use each: the VALID answer from B that showed it knew the key.
    let want = (2 * USES_PER_NODE + 1) as i64;
    let deadline = Instant::now() + Duration::from_secs(20);
    for (id, _) in &keys {
        loop {
            let view = a.get(&format!("/v1/keys/{id}")).await;
            let count = view.body["usage_count"].as_i64().expect("usage_count");
            assert!(count <= want, "counted twice: {}", view.text);
            if count == want {
                break;
            }
            assert!(Instant::now() < deadline, "uses lost: {}", view.text);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    b.stop().await;
    a.stop().await;
}

/// Group commit writes concurrent creates in one transaction; when that
/// transaction fails, every create is run on its own and gets its own outcome.
/// Two creates of one id in one batch make the shared append fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_group_commit_gives_each_create_its_own_outcome() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let Some(app) = spawn_app(backend).await else {
            return;
        };
        let store = keyledger::app::open_store(&app.store.config())
            .await
            .expect("second handle on the store");
        let create = |key_id: &str, name: &str| {
            let raw = RawKey::generate(&KeyPrefix::default(), Environment::Live, &mut rand::rng());
            let parsed = raw.parsed();
            keyledger::store::NewKeyCommand {
                key_id: key_id.into(),
                command: keyledger_domain::KeyCommand {
                    tenant: helpers::TENANT.into(),
                    actor: "store-test".into(),
                    at: Utc::now(),
                    kind: keyledger_domain::KeyCommandKind::CreateKey(
                        keyledger_domain::CreateKey {
                            key_hash: parsed.hash(),
                            display_prefix: parsed.display_prefix(),
                            name: name.into(),
                            description: None,
                            environment: Environment::Live,
                            permissions: vec![],
                            expires_at: None,
                            metadata: None,
                            rotated_from: None,
                            owner: None,
                            ratelimits: Vec::new(),
                            credits: None,
                            allowed_ips: Default::default(),
                            imported: Default::default(),
                        },
                    ),
                },
                metadata: [("tenant".to_string(), helpers::TENANT.to_string())].into(),
            }
        };
        let batch = [
            create("key_group_a", "first"),
            create("key_group_a", "same id again"),
            create("key_group_b", "unrelated"),
        ];
        let keyledger::store::NewKeysOutcome { outcomes, appended } =
            store.execute_new(&batch).await;
        let through = appended.through;
        assert!(outcomes[0].is_ok(), "{backend:?}: {:?}", outcomes[0]);
        assert!(
            matches!(
                outcomes[1],
                Err(keyledger::error::Error::Domain(
                    keyledger_domain::DomainError::AlreadyExists
                ))
            ),
            "{backend:?}: {:?}",
            outcomes[1]
        );
        assert!(outcomes[2].is_ok(), "{backend:?}: {:?}", outcomes[2]);
        let feed = store.read_feed(0, 100).await.expect("feed");
        let ids: Vec<&str> = feed.iter().map(|e| e.aggregate_id.as_str()).collect();
        assert_eq!(ids, ["key_group_a", "key_group_b"], "{backend:?}");
        assert_eq!(
            through,
            feed.last().expect("events").position,
            "{backend:?}"
        );
        store.close().await;
        app.stop().await;
    }
}

/// Holds the numbering lock of `app`'s PostgreSQL database (the one every
/// append takes, migrations/postgres/0008) on a connection of its own, so
/// that every create on it waits: a slow request, on demand.
async fn stall_appends(app: &TestApp) -> sqlx::PgConnection {
    let url = app.store.database_url.clone().expect("postgres url");
    let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
    sqlx::query("SELECT pg_advisory_lock(7305425)")
        .execute(&mut c)
        .await
        .expect("numbering lock");
    c
}

/// Waits until the request holding `idem` has recorded its answer (it then
/// goes on to write, where the held numbering lock stalls it).
async fn until_claimed(c: &mut sqlx::PgConnection, idem: &str) {
    let started = Instant::now();
    loop {
        let n: i64 =
            // Recorded: the request has written its answer to the claim and
            // goes on to its commit (where the held lock stalls it).
            sqlx::query_scalar(
                "SELECT count(*) FROM idempotency_keys \
                 WHERE idem_key = $1 AND response_body IS NOT NULL",
            )
                .bind(idem)
                .fetch_one(&mut *c)
                .await
                .expect("claims");
        if n == 1 {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never claimed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn create_with_key(
    app: &TestApp,
    idem: &str,
    name: &str,
) -> impl std::future::Future<Output = reqwest::Result<reqwest::Response>> + Send + 'static {
    app.client
        .post(app.url("/v1/keys"))
        .bearer_auth(&app.token)
        .header("Idempotency-Key", idem)
        .json(&json!({"name": name}))
        .send()
}

/// A first request that runs longer than 30 s (by the clock) keeps its claim
/// by renewing it: its retry waits and gets the same key, and one key exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_first_request_keeps_its_claim_and_its_retry_gets_the_same_key() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let mut lock = stall_appends(&app).await;
    let first = tokio::spawn(create_with_key(&app, "slow", "slow"));
    until_claimed(&mut lock, "slow").await;
    // 35 s pass while it waits, in two steps shorter than its 30 s lease;
    // between them it has time to renew (it looks every second).
    app.clock.advance(chrono::Duration::seconds(20));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    app.clock.advance(chrono::Duration::seconds(15));
    let retry = tokio::spawn(create_with_key(&app, "slow", "slow"));
    // Long enough for the retry to have taken the claim over, had it lapsed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sqlx::query("SELECT pg_advisory_unlock(7305425)")
        .execute(&mut lock)
        .await
        .expect("unlock");
    let first = first.await.expect("task").expect("first request");
    let retry = retry.await.expect("task").expect("retry");
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(retry.status(), StatusCode::CREATED);
    let first: serde_json::Value = first.json().await.expect("json");
    let retry: serde_json::Value = retry.json().await.expect("json");
    assert_eq!(
        retry["key"], first["key"],
        "the retry replays the first key"
    );
    let list = app.get("/v1/keys").await;
    assert_eq!(list.body["keys"].as_array().expect("keys").len(), 1);
    app.stop().await;
}

/// A request whose claim was taken over while it ran (here: the row replaced
/// behind its back, as a node of the previous release takes a claim over)
/// finishes its command and answers its client, but leaves the new owner's
/// claim as it is: no answer of its own stored there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_claim_was_taken_over_leaves_the_new_claim_alone() {
    let Some(app) = spawn_app(Backend::Postgres).await else {
        return;
    };
    let mut lock = stall_appends(&app).await;
    let first = tokio::spawn(create_with_key(&app, "taken", "stalled"));
    until_claimed(&mut lock, "taken").await;
    let now = app.clock.now().timestamp_millis();
    sqlx::query("DELETE FROM idempotency_keys WHERE idem_key = 'taken'")
        .execute(&mut lock)
        .await
        .expect("delete");
    sqlx::query(
        "INSERT INTO idempotency_keys (tenant, idem_key, request_hash, state, created_at, expires_at) \
         VALUES ($1, 'taken', 'the new owner''s request', 'pending', $2, $3)",
    )
    .bind(helpers::TENANT)
    .bind(now)
    .bind(now + 86_400_000)
    .execute(&mut lock)
    .await
    .expect("the new owner's claim");
    sqlx::query("SELECT pg_advisory_unlock(7305425)")
        .execute(&mut lock)
        .await
        .expect("unlock");

    let first = first.await.expect("task").expect("first request");
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: serde_json::Value = first.json().await.expect("json");
    let id = first["id"].as_str().expect("id");
    // Its key exists; its client has the only copy of the raw key.
    assert_eq!(
        app.get(&format!("/v1/keys/{id}")).await.status,
        StatusCode::OK
    );
    let (state, hash, body): (String, String, Option<String>) = sqlx::query_as(
        "SELECT state, request_hash, response_body FROM idempotency_keys WHERE idem_key = 'taken'",
    )
    .fetch_one(&mut lock)
    .await
    .expect("the new owner's claim is still there");
    assert_eq!(
        (state.as_str(), hash.as_str(), body),
        ("pending", "the new owner's request", None),
        "the stale request did not complete the new owner's claim"
    );
    app.stop().await;
}
