//! `Idempotency-Key` on create and rotate.

use keyledger::idempotency::{request_hash, Claim, Idempotency, Sealer, Settled};
use keyledger::store::EventStore;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::Connection;

use crate::backend_tests;
use crate::helpers::{spawn_app, Backend, Reply, TestApp, TENANT};

backend_tests!(
    a_retry_with_the_same_idempotency_key_returns_the_first_key_and_creates_nothing,
    eight_parallel_identical_requests_create_exactly_one_key,
    idempotency_survives_a_restart_and_expires_after_a_day_with_its_sealed_key,
    a_rotation_retry_returns_the_same_successor,
    a_retry_waits_for_a_running_first_request_past_the_old_thirty_seconds,
    a_stale_owner_can_neither_complete_nor_release_the_claim_taken_over,
    a_claim_whose_request_died_is_taken_over_by_one_retry_once_its_lease_lapses,
);

async fn post_with_key(app: &TestApp, path: &str, idem: &str, body: Value) -> Reply {
    let response = app
        .client
        .post(app.url(path))
        .bearer_auth(&app.token)
        .header("Idempotency-Key", idem)
        .json(&body)
        .send()
        .await
        .expect("request");
    crate::helpers::reply(response).await
}

async fn key_count(app: &TestApp) -> usize {
    app.get("/v1/keys?limit=100").await.body["keys"]
        .as_array()
        .expect("keys")
        .len()
}

async fn a_retry_with_the_same_idempotency_key_returns_the_first_key_and_creates_nothing(
    backend: Backend,
) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let body = json!({"name": "once", "permissions": ["a:b"]});
    let first = post_with_key(&app, "/v1/keys", "req-1", body.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let again = post_with_key(&app, "/v1/keys", "req-1", body.clone()).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(
        again.body, first.body,
        "the same response, raw key included"
    );
    assert_eq!(key_count(&app).await, 1);

    let other = post_with_key(&app, "/v1/keys", "req-1", json!({"name": "different"})).await;
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(other.code(), "idempotency_key_reused");
    // Another tenant may use the same idempotency key for itself.
    let globex = crate::helpers::token("globex", "bob");
    let theirs = app
        .client
        .post(app.url("/v1/keys"))
        .bearer_auth(&globex)
        .header("Idempotency-Key", "req-1")
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(theirs.status(), StatusCode::CREATED);
    // A failed first attempt claims nothing: the retry runs.
    let bad = post_with_key(&app, "/v1/keys", "req-2", json!({"name": ""})).await;
    assert_eq!(bad.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(key_count(&app).await, 1);
    app.stop().await;
}

async fn eight_parallel_identical_requests_create_exactly_one_key(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let body = json!({"name": "racer"});
    let replies = futures::future::join_all(
        (0..8).map(|_| post_with_key(&app, "/v1/keys", "race", body.clone())),
    )
    .await;
    for r in &replies {
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        assert_eq!(r.body["key"], replies[0].body["key"]);
        assert_eq!(r.body["id"], replies[0].body["id"]);
    }
    assert_eq!(key_count(&app).await, 1);
    app.stop().await;
}

async fn idempotency_survives_a_restart_and_expires_after_a_day_with_its_sealed_key(
    backend: Backend,
) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let body = json!({"name": "durable"});
    let first = post_with_key(&app, "/v1/keys", "req-restart", body.clone()).await;
    let raw = first.body["key"].as_str().expect("key").to_string();
    let app = app.restart().await;
    let again = post_with_key(&app, "/v1/keys", "req-restart", body.clone()).await;
    assert_eq!(again.body, first.body);
    assert_eq!(key_count(&app).await, 1);

    // The kept raw key is sealed: it is nowhere in the database files.
    if backend == Backend::Sqlite {
        let files = app.store.sqlite_files();
        let mut any_prefix = false;
        for path in &files {
            // The store's files while it runs: unreadable is a failure, not
            // nothing found.
            let bytes =
                std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            assert!(
                !bytes.windows(raw.len()).any(|w| w == raw.as_bytes()),
                "raw key found in {}",
                path.display()
            );
            any_prefix |= bytes.windows(16).any(|w| w == &raw.as_bytes()[..16]);
        }
        // The display prefix is stored: the search above read the store's data
        // (an empty list of files, or the wrong ones, would find nothing).
        assert!(any_prefix, "{files:?}");
    }

    // After 24 h the entry (and its sealed key) is erased; the header is free again.
    app.clock.advance(chrono::Duration::hours(25));
    let events = keyledger::app::open_store(&app.store.config())
        .await
        .expect("open");
    let purged = keyledger::idempotency::purge_expired(&events, &app.clock)
        .await
        .expect("purge");
    assert_eq!(purged, 1);
    events.close().await;
    let later = post_with_key(&app, "/v1/keys", "req-restart", body).await;
    assert_eq!(later.status, StatusCode::CREATED);
    assert_ne!(later.body["id"], first.body["id"]);
    app.stop().await;
}

async fn a_rotation_retry_returns_the_same_successor(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, _) = app.create_key("rotating").await;
    let path = format!("/v1/keys/{id}/rotate");
    let first = post_with_key(&app, &path, "rot-1", json!({"grace_period_seconds": 60})).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let again = post_with_key(&app, &path, "rot-1", json!({"grace_period_seconds": 60})).await;
    assert_eq!(again.status, StatusCode::CREATED, "{}", again.text);
    assert_eq!(again.body, first.body);
    assert_eq!(key_count(&app).await, 2);
    app.stop().await;
}

/// A second handle on the app's store and what the idempotency code needs: a
/// request taking a claim through it is a request running on another node.
struct OtherNode {
    store: EventStore,
    sealer: Sealer,
}

impl OtherNode {
    async fn open(app: &TestApp) -> Self {
        let config = app.store.config();
        let secret = keyledger::app::server_secret(&config).expect("secret");
        Self {
            store: keyledger::app::open_store(&config)
                .await
                .expect("open store"),
            sealer: Sealer::from_secret(secret.expose()),
        }
    }

    fn idempotency<'a>(&'a self, app: &'a TestApp) -> Idempotency<'a> {
        Idempotency {
            store: &self.store,
            sealer: &self.sealer,
            clock: &app.clock,
        }
    }
}

/// The claim row of `key`, read straight from the database:
/// (state, owner, lease_until, response_body).
type ClaimRow = (String, Option<String>, Option<i64>, Option<String>);

async fn claim_row(app: &TestApp, key: &str) -> Option<ClaimRow> {
    let sql = "SELECT state, owner, lease_until, response_body FROM idempotency_keys \
               WHERE tenant = $1 AND idem_key = $2";
    match &app.store.database_url {
        Some(url) => {
            let mut c = sqlx::PgConnection::connect(url).await.expect("connect");
            sqlx::query_as(sql)
                .bind(TENANT)
                .bind(key)
                .fetch_optional(&mut c)
                .await
                .expect("claim row")
        }
        None => {
            let path = app.store.projections_sqlite_path();
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .expect("open");
            sqlx::query_as(sql)
                .bind(TENANT)
                .bind(key)
                .fetch_optional(&mut c)
                .await
                .expect("claim row")
        }
    }
}

/// Waits until the claim's lease has been moved past `than`.
async fn lease_renewed_past(app: &TestApp, key: &str, than: i64) -> i64 {
    let started = std::time::Instant::now();
    loop {
        let lease = claim_row(app, key).await.and_then(|r| r.2).unwrap_or(0);
        if lease > than {
            return lease;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the running request never renewed its lease (still {lease})"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The hash the server computes for a create with this JSON body.
fn create_hash(body: &Value) -> String {
    request_hash("POST /v1/keys", &serde_json::to_vec(body).expect("body"))
}

async fn a_retry_waits_for_a_running_first_request_past_the_old_thirty_seconds(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let node = OtherNode::open(&app).await;
    let idem = node.idempotency(&app);
    let body = json!({"name": "slow"});
    // The first request, on another node: it claims, then keeps running.
    let Claim::Owned(first) = idem
        .claim(&TENANT.into(), "slow", &create_hash(&body))
        .await
        .expect("claim")
    else {
        panic!("the first request owns the claim");
    };
    let leased = claim_row(&app, "slow")
        .await
        .and_then(|r| r.2)
        .expect("lease");
    // 40 s pass while it runs, in two steps shorter than its lease; it
    // renews in between. Before leases, a claim was taken over at 30 s.
    app.clock.advance(chrono::Duration::seconds(20));
    lease_renewed_past(&app, "slow", leased).await;
    app.clock.advance(chrono::Duration::seconds(20));

    // A retry arrives here: it waits for the running request and gets its
    // answer, instead of taking the claim over and issuing a second key.
    let answer = json!({"id": "key_first", "name": "slow", "key": "kl_live_first_raw_key"});
    let finish = async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        idem.complete(&TENANT.into(), "slow", first.owner(), answer.clone())
            .await
            .expect("complete")
    };
    let (retry, settled) = tokio::join!(post_with_key(&app, "/v1/keys", "slow", body), finish);
    assert_eq!(settled, Settled::Done, "the running request kept its claim");
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    assert_eq!(retry.body, answer, "the retry replays the first answer");
    assert_eq!(
        key_count(&app).await,
        0,
        "the retry issued no key of its own"
    );
    drop(first);
    node.store.close().await;
    app.stop().await;
}

async fn a_stale_owner_can_neither_complete_nor_release_the_claim_taken_over(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let node = OtherNode::open(&app).await;
    let idem = node.idempotency(&app);
    let hash = create_hash(&json!({"name": "stale"}));
    let Claim::Owned(a) = idem
        .claim(&TENANT.into(), "stale", &hash)
        .await
        .expect("claim")
    else {
        panic!("a owns the claim");
    };
    let stale = a.owner().to_string();
    // Its request stalls: no more renewals, and the lease lapses.
    drop(a);
    app.clock.advance(chrono::Duration::seconds(31));
    let Claim::Owned(b) = idem
        .claim(&TENANT.into(), "stale", &hash)
        .await
        .expect("claim")
    else {
        panic!("a lapsed claim is taken over");
    };
    assert_ne!(b.owner(), stale, "a takeover issues a new owner token");

    // The stalled request finishes now: it cannot store its answer over the
    // new owner's claim, nor give that claim up.
    let a_answer = json!({"id": "key_a", "key": "kl_live_a_raw"});
    assert_eq!(
        idem.complete(&TENANT.into(), "stale", &stale, a_answer)
            .await
            .expect("complete"),
        Settled::Lost
    );
    assert_eq!(
        idem.release(&TENANT.into(), "stale", &stale)
            .await
            .expect("release"),
        Settled::Lost
    );
    let (state, owner, _, response) = claim_row(&app, "stale").await.expect("still claimed");
    assert_eq!(state, "pending");
    assert_eq!(owner.as_deref(), Some(b.owner()));
    assert_eq!(response, None, "nothing of the stale answer was stored");

    // The new owner's answer is what retries get, and a late release by the
    // stale owner does not erase it.
    let b_answer = json!({"id": "key_b", "key": "kl_live_b_raw"});
    assert_eq!(
        idem.complete(&TENANT.into(), "stale", b.owner(), b_answer.clone())
            .await
            .expect("complete"),
        Settled::Done
    );
    assert_eq!(
        idem.release(&TENANT.into(), "stale", &stale)
            .await
            .expect("release"),
        Settled::Lost
    );
    match idem
        .claim(&TENANT.into(), "stale", &hash)
        .await
        .expect("claim")
    {
        Claim::Replay(v) => assert_eq!(v, b_answer),
        Claim::Owned(_) | Claim::Unsettled { .. } => panic!("an answered claim is replayed"),
    }
    // The owner itself may give up its claim while it holds it.
    let Claim::Owned(c) = idem
        .claim(&TENANT.into(), "other", &hash)
        .await
        .expect("claim")
    else {
        panic!("a fresh claim is owned");
    };
    assert_eq!(
        idem.release(&TENANT.into(), "other", c.owner())
            .await
            .expect("release"),
        Settled::Done
    );
    assert!(claim_row(&app, "other").await.is_none());
    node.store.close().await;
    app.stop().await;
}

async fn a_claim_whose_request_died_is_taken_over_by_one_retry_once_its_lease_lapses(
    backend: Backend,
) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let node = OtherNode::open(&app).await;
    let idem = node.idempotency(&app);
    let body = json!({"name": "orphaned"});
    let hash = create_hash(&body);
    let tenant = keyledger_domain::TenantId::from(TENANT);
    let Claim::Owned(dead) = idem.claim(&tenant, "dead", &hash).await.expect("claim") else {
        panic!("owned");
    };
    // Its node dies: the lease is not renewed.
    drop(dead);
    app.clock.advance(chrono::Duration::seconds(31));
    // Two duplicates find the lapsed claim at once: one takes it over, the
    // other waits for it.
    let (won, other) = match futures::future::select(
        Box::pin(idem.claim(&tenant, "dead", &hash)),
        Box::pin(idem.claim(&tenant, "dead", &hash)),
    )
    .await
    {
        futures::future::Either::Left((r, other)) | futures::future::Either::Right((r, other)) => {
            (r, other)
        }
    };
    let Claim::Owned(won) = won.expect("claim") else {
        panic!("one duplicate takes the lapsed claim over");
    };
    let answer = json!({"id": "key_won", "key": "kl_live_won_raw"});
    let (settled, other) = tokio::join!(
        idem.complete(&tenant, "dead", won.owner(), answer.clone()),
        other
    );
    assert_eq!(settled.expect("complete"), Settled::Done);
    match other.expect("claim") {
        Claim::Replay(v) => assert_eq!(v, answer),
        Claim::Owned(_) | Claim::Unsettled { .. } => {
            panic!("only one duplicate owns the claim")
        }
    }

    // Over HTTP: a lapsed claim is run again by the retry, which issues the key.
    let Claim::Owned(dead) = idem
        .claim(&TENANT.into(), "dead-2", &hash)
        .await
        .expect("claim")
    else {
        panic!("owned");
    };
    drop(dead);
    app.clock.advance(chrono::Duration::seconds(31));
    let retry = post_with_key(&app, "/v1/keys", "dead-2", body.clone()).await;
    assert_eq!(retry.status, StatusCode::CREATED, "{}", retry.text);
    assert_eq!(key_count(&app).await, 1);
    let again = post_with_key(&app, "/v1/keys", "dead-2", body).await;
    assert_eq!(again.body, retry.body);
    node.store.close().await;
    app.stop().await;
}
