//! Upgrades: released migration files never change (`migrations/checksums`), a
//! database of the first release opens with today's binary and keeps its keys
//! and events, and PostgreSQL databases that applied either text of migration
//! 0009 (released by e302a9a, edited by 840c0b9) keep starting.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use keyledger::rebuild::check;
use keyledger_projections::Projections;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha384};
use sqlx::Connection;

use crate::helpers::{start, token, Backend, TestApp, TestStore};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sha384_hex(bytes: &[u8]) -> String {
    hex::encode(Sha384::digest(bytes))
}

/// `migrations/checksums`: file (relative to migrations/) to SHA-384.
fn released_checksums() -> BTreeMap<String, String> {
    let path = root().join("migrations/checksums");
    let text = std::fs::read_to_string(&path).expect("read migrations/checksums");
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (file, sum) = l
                .split_once(' ')
                .unwrap_or_else(|| panic!("migrations/checksums: `{l}` is not `file sha384`"));
            (file.to_string(), sum.trim().to_string())
        })
        .collect()
}

/// Every migration file on disk, as `store/file.sql`.
fn migration_files() -> Vec<String> {
    let mut files = Vec::new();
    for store in ["postgres", "sqlite"] {
        let dir = root().join("migrations").join(store);
        for entry in std::fs::read_dir(&dir).expect("read migrations dir") {
            let name = entry.expect("entry").file_name();
            let name = name.to_str().expect("utf-8 file name");
            if name.ends_with(".sql") {
                files.push(format!("{store}/{name}"));
            }
        }
    }
    files.sort();
    files
}

/// A migration file that a release applied must never change (sqlx compares
/// the whole file's SHA-384 with what it recorded and refuses to start); a new
/// one must be listed before it is released.
#[test]
fn released_migrations_are_never_edited() {
    let released = released_checksums();
    let mut problems = Vec::new();
    for (file, sum) in &released {
        match std::fs::read(root().join("migrations").join(file)) {
            Ok(bytes) if sha384_hex(&bytes) == *sum => {}
            Ok(bytes) => problems.push(format!(
                "migrations/{file} changed after its release (SHA-384 {} instead of {sum}). \
                 Every database that applied it would refuse to start (sqlx checksums the \
                 whole file, comments included): put its released text back \
                 (`git log -p --follow migrations/{file}`) and make the change in a new \
                 migration instead.",
                sha384_hex(&bytes)
            )),
            Err(e) => problems.push(format!(
                "migrations/{file} is gone ({e}): databases that applied it refuse to start \
                 without it. Put it back; undo it with a new migration instead."
            )),
        }
    }
    for file in migration_files() {
        if !released.contains_key(&file) {
            let bytes = std::fs::read(root().join("migrations").join(&file)).expect("read");
            problems.push(format!(
                "migrations/{file} is not in migrations/checksums: when it goes to main, add \
                 the line `{file} {}` (and never change the file afterwards)",
                sha384_hex(&bytes)
            ));
        }
    }
    // What the binary embeds is what the list says (sqlx's checksum is the
    // SHA-384 of the file's bytes).
    for (store, migrator) in [
        ("postgres", &keyledger::store::postgres::MIGRATOR),
        ("sqlite", &keyledger::store::sqlite::MIGRATOR),
    ] {
        for m in migrator.iter() {
            let listed = released.iter().find(|(file, _)| {
                file.strip_prefix(&format!("{store}/"))
                    .and_then(|f| f.split('_').next())
                    .and_then(|v| v.parse::<i64>().ok())
                    == Some(m.version)
            });
            if let Some((file, sum)) = listed {
                if hex::encode(&*m.checksum) != *sum {
                    problems.push(format!(
                        "the binary embeds migrations/{file} with another checksum than \
                         migrations/checksums lists (rebuild, or see above)"
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
}

/// The first release shipped migrations 0001-0005; the repository's own
/// files are those texts (`released_migrations_are_never_edited` pins their
/// bytes), so they are applied from `migrations/` up to that version.
const FIRST_RELEASE_VERSION: i64 = 5;

async fn released_migrator(store: &str) -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate::Migrator::new(root().join("migrations").join(store))
        .await
        .expect("the repository's migrations");
    let released: Vec<_> = migrator
        .migrations
        .iter()
        .filter(|m| m.version <= FIRST_RELEASE_VERSION)
        .cloned()
        .collect();
    assert_eq!(released.len() as i64, FIRST_RELEASE_VERSION);
    migrator.migrations = released.into();
    migrator
}

fn fixture(path: &str) -> PathBuf {
    root().join("tests/fixtures/first-release").join(path)
}

/// The ids and raw keys the first release issued into a fixture database.
struct Issued(Value);

impl Issued {
    fn read(store: &str) -> Self {
        let text = std::fs::read_to_string(fixture(&format!("{store}-keys.json")))
            .expect("read fixture keys");
        Self(serde_json::from_str(&text).expect("fixture keys json"))
    }
    fn id(&self, name: &str) -> String {
        self.0[name]["id"].as_str().expect("id").to_string()
    }
    fn key(&self, name: &str) -> String {
        self.0[name]["key"].as_str().expect("key").to_string()
    }
}

/// Builds the first release's SQLite database in `dir`: its migrations, then
/// the rows its binary wrote.
async fn first_release_sqlite(dir: &Path) {
    let path = dir.join("keyledger.db");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let mut conn = sqlx::SqliteConnection::connect_with(&options)
        .await
        .expect("create sqlite file");
    let migrator = released_migrator("sqlite").await;
    migrator
        .run(&mut conn)
        .await
        .expect("apply released migrations");
    let data = std::fs::read_to_string(fixture("sqlite-data.sql")).expect("read data");
    sqlx::raw_sql(&data)
        .execute(&mut conn)
        .await
        .expect("insert the release's rows");
    conn.close().await.expect("close");
}

/// The same for a PostgreSQL database.
async fn first_release_postgres(url: &str) {
    let mut conn = sqlx::PgConnection::connect(url).await.expect("connect");
    let migrator = released_migrator("postgres").await;
    migrator
        .run(&mut conn)
        .await
        .expect("apply released migrations");
    let data = std::fs::read_to_string(fixture("postgres-data.sql")).expect("read data");
    sqlx::raw_sql(&data)
        .execute(&mut conn)
        .await
        .expect("insert the release's rows");
    conn.close().await.expect("close");
}

fn types(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|e| e["type"].as_str().expect("type"))
        .collect()
}

/// Today's node over the first release's data: every key, state, usage count
/// and event as that release left them, and it keeps working.
async fn assert_first_release_data_is_intact(app: &TestApp, issued: &Issued) {
    let list = app.get("/v1/keys?limit=100").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text);
    let listed: BTreeMap<String, Value> = list.body["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| (k["id"].as_str().expect("id").to_string(), k.clone()))
        .collect();
    let want = [
        ("billing", "active", 3),
        ("staging", "active", 0),
        ("revoked", "inactive", 0),
        ("rotated", "expired", 0),
        ("successor", "active", 1),
    ];
    assert_eq!(
        listed.keys().cloned().collect::<Vec<_>>(),
        {
            let mut ids: Vec<String> = want.iter().map(|(n, _, _)| issued.id(n)).collect();
            ids.sort();
            ids
        },
        "acme's keys, `gone` deleted: {}",
        list.text
    );
    for (name, status, uses) in want {
        let k = &listed[&issued.id(name)];
        assert_eq!(k["status"], status, "{name}: {k}");
        assert_eq!(k["usage_count"], uses, "{name}: {k}");
    }
    let billing = &listed[&issued.id("billing")];
    assert_eq!(billing["description"], "invoices and credit notes");
    assert_eq!(billing["metadata"], json!({"team": "billing"}));
    assert_eq!(
        billing["permissions"],
        json!(["invoices:read", "invoices:write"])
    );
    assert_eq!(listed[&issued.id("staging")]["environment"], "test");
    assert_eq!(
        listed[&issued.id("successor")]["rotated_from"],
        issued.id("rotated").as_str()
    );
    let other = app
        .send_as(&token("globex", "gina"), Method::GET, "/v1/keys", None)
        .await;
    assert_eq!(other.body["keys"].as_array().map(Vec::len), Some(1));
    assert_eq!(other.body["keys"][0]["id"], issued.id("other").as_str());

    for (name, code) in [
        ("billing", "VALID"),
        ("staging", "VALID"),
        ("revoked", "DISABLED"),
        ("gone", "NOT_FOUND"),
        ("rotated", "EXPIRED"),
        ("successor", "VALID"),
        ("other", "VALID"),
    ] {
        assert_eq!(app.verify_code(&issued.key(name)).await, code, "{name}");
    }
    let r = app
        .verify(json!({"key": issued.key("billing"), "permissions": ["invoices:write"]}))
        .await;
    assert_eq!(r.body["code"], "VALID", "{}", r.text);

    for (name, history) in [
        (
            "billing",
            &["KeyCreated", "KeyUpdated", "KeyUsageRecorded"][..],
        ),
        ("revoked", &["KeyCreated", "KeyDeactivated"]),
        ("gone", &["KeyCreated", "KeyDeleted"]),
        ("rotated", &["KeyCreated", "KeyExpirySet"]),
        ("successor", &["KeyCreated", "KeyUsageRecorded"]),
    ] {
        assert_eq!(
            types(&app.key_events(&issued.id(name)).await),
            history,
            "{name}"
        );
    }
    let audit = app.get("/v1/audit?limit=1000").await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.text);
    let audited = audit.body["events"].as_array().expect("events");
    assert_eq!(
        audited.len(),
        12,
        "acme's 12 of the 13 events: {}",
        audit.text
    );
    let mut positions: Vec<i64> = audited
        .iter()
        .map(|e| e["position"].as_i64().expect("position"))
        .collect();
    positions.sort_unstable();
    assert_eq!(positions, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13]);

    // Commands work on the old keys, and new keys follow the old positions.
    let r = app
        .post(
            &format!("/v1/keys/{}/deactivate", issued.id("billing")),
            json!({"reason": "after the upgrade"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.verify_code(&issued.key("billing")).await, "DISABLED");
    let (id, key) = app.create_key("after-upgrade").await;
    assert_eq!(app.verify_code(&key).await, "VALID");
    let history = app.key_events(&id).await;
    assert!(
        history[0]["position"].as_i64().expect("position") > 13,
        "{history:?}"
    );
}

/// After the node stopped: the projections equal a fold of all events, and
/// every hash chain the old release started is intact.
async fn assert_consistent(store: &TestStore) {
    let events = keyledger::app::open_store(&store.config())
        .await
        .expect("open store");
    let projections = Projections::unloaded(events.projection_db());
    assert_eq!(
        check(&events, &projections).await.expect("check"),
        Vec::<String>::new()
    );
    let chains = keyledger::integrity::verify_chains(&events, &projections)
        .await
        .expect("verify chains");
    assert_eq!(chains.first_broken, None);
    assert_eq!(chains.unlinked, 0);
    events.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_of_the_first_release_keeps_its_keys_and_events() {
    let store = TestStore::new(Backend::Sqlite).await.expect("sqlite store");
    first_release_sqlite(store.data_dir.path()).await;
    let issued = Issued::read("sqlite");
    let app = start(store, |_| {}).await;
    assert_first_release_data_is_intact(&app, &issued).await;
    // And again after a restart of today's binary.
    let app = app.restart().await;
    assert_eq!(app.verify_code(&issued.key("successor")).await, "VALID");
    let store = app.stop().await;
    assert_consistent(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_of_the_first_release_keeps_its_keys_and_events() {
    let Some(store) = TestStore::new(Backend::Postgres).await else {
        return;
    };
    let url = store.database_url.clone().expect("url");
    first_release_postgres(&url).await;
    let issued = Issued::read("postgres");
    // 0006 fills a new column with an UPDATE of every event, which 0001's
    // append-only trigger refused: this start failed in migration 6.
    let app = start(store, |_| {}).await;
    assert_first_release_data_is_intact(&app, &issued).await;
    let app = app.restart().await;
    assert_eq!(app.verify_code(&issued.key("successor")).await, "VALID");
    let store = app.stop().await;
    assert_consistent(&store).await;

    // What let 0006 through is gone again: 0001's function, and stored events
    // still refuse every change.
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    let body: String =
        sqlx::query_scalar("SELECT prosrc FROM pg_proc WHERE proname = 'events_refuse_change'")
            .fetch_one(&mut conn)
            .await
            .expect("function");
    assert_eq!(
        body,
        "\nBEGIN\n    RAISE EXCEPTION 'events are append-only: % refused', TG_OP;\nEND;\n"
    );
    for sql in [
        "UPDATE events SET payload = '{}' WHERE global_position = 1",
        "UPDATE events SET append_seq = append_seq + 1000 WHERE global_position = 1",
        "DELETE FROM events WHERE global_position = 1",
        "TRUNCATE events",
    ] {
        let refused = sqlx::query(sql).execute(&mut conn).await;
        let message = refused.map(|_| ()).expect_err(sql).to_string();
        assert!(message.contains("append-only"), "{sql}: {message}");
    }
}

/// SHA-384 of 0009 as e302a9a released it (`migrations/checksums`).
const RELEASED_0009: &str = "0ce0b7bcdd81dc234214f3eedd5b20f21a6e69758094349b0bdd72945e1700d8\
                             cc9764293a8c9d7a14f45b49c76243ce";

/// A fully migrated PostgreSQL database whose recorded checksum of 0009 is
/// `checksum`, as a binary with that text of 0009 would have left it.
async fn migrated_with_0009(checksum: &[u8]) -> Option<(TestStore, sqlx::PgConnection)> {
    let store = TestStore::new(Backend::Postgres).await?;
    keyledger::app::open_store(&store.config())
        .await
        .expect("migrate")
        .close()
        .await;
    let url = store.database_url.clone().expect("url");
    let mut conn = sqlx::PgConnection::connect(&url).await.expect("connect");
    let updated = sqlx::query("UPDATE _sqlx_migrations SET checksum = $1 WHERE version = 9")
        .bind(checksum)
        .execute(&mut conn)
        .await
        .expect("set checksum")
        .rows_affected();
    assert_eq!(updated, 1);
    Some((store, conn))
}

async fn recorded_0009(conn: &mut sqlx::PgConnection) -> String {
    let sum: Vec<u8> =
        sqlx::query_scalar("SELECT checksum FROM _sqlx_migrations WHERE version = 9")
            .fetch_one(conn)
            .await
            .expect("checksum");
    hex::encode(sum)
}

/// Created before 840c0b9: 0009 recorded with the released text's checksum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_that_applied_the_released_0009_starts() {
    let released = hex::decode(RELEASED_0009).expect("hex");
    let Some((store, mut conn)) = migrated_with_0009(&released).await else {
        return;
    };
    let app = start(store, |_| {}).await;
    let (_, key) = app.create_key("after-0009").await;
    assert_eq!(app.verify_code(&key).await, "VALID");
    assert_eq!(recorded_0009(&mut conn).await, RELEASED_0009);
    app.stop().await;
}

/// Created from 840c0b9 on: 0009 recorded with the edited text's checksum,
/// which the start repairs to the released one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_that_applied_the_edited_0009_still_starts() {
    let edited =
        std::fs::read(root().join("tests/fixtures/migrations/postgres-0009-edited-840c0b9.sql"))
            .expect("edited 0009");
    let Some((store, mut conn)) = migrated_with_0009(&Sha384::digest(&edited)).await else {
        return;
    };
    let app = start(store, |_| {}).await;
    let (_, key) = app.create_key("after-0009").await;
    assert_eq!(app.verify_code(&key).await, "VALID");
    assert_eq!(recorded_0009(&mut conn).await, RELEASED_0009, "repaired");
    // Several nodes may start together: a second start repairs nothing more.
    let app = app.restart().await;
    assert_eq!(app.verify_code(&key).await, "VALID");
    app.stop().await;
}

/// The repair is for that one known edit only: any other mismatch still stops
/// the start, with sqlx's message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_with_another_0009_checksum_still_refuses_to_start() {
    let Some((store, mut conn)) = migrated_with_0009(&[7u8; 48]).await else {
        return;
    };
    let refused = keyledger::app::open_store(&store.config()).await;
    match refused {
        Err(e) => assert!(
            e.to_string()
                .contains("previously applied but has been modified"),
            "{e}"
        ),
        Ok(s) => {
            s.close().await;
            panic!("a database with an unknown checksum of 0009 started");
        }
    }
    assert_eq!(recorded_0009(&mut conn).await, hex::encode([7u8; 48]));
}
