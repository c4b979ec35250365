//! `POST /v1/keys/import`: keys issued by another system, by their SHA-256.
//! They keep working unchanged (with `--import-prefix`), have the full
//! lifecycle, and importing is idempotent on the hash.

use chrono::Utc;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::backend_tests;
use crate::helpers::{start, token, Backend, Reply, TestApp, TestStore};

backend_tests!(
    imported_keys_verify_unchanged_and_list_as_imported,
    importing_again_answers_the_same_ids_and_each_item_fails_alone,
    imported_keys_have_the_full_lifecycle,
    a_hash_belongs_to_one_tenant_and_a_deleted_key_stays_deleted,
    imports_are_judged_by_the_tenant_policy,
    only_new_keys_count_against_the_key_cap,
);

const PREFIX: &str = "sk_live_";

async fn app(backend: Backend) -> Option<TestApp> {
    let store = TestStore::new(backend).await?;
    Some(start(store, |c| c.import_prefixes = vec![PREFIX.to_string()]).await)
}

/// A key as another system issued it, and its import item.
fn foreign(n: usize) -> (String, Value) {
    let raw = format!("{PREFIX}{n:04}{}", uuid::Uuid::now_v7().simple());
    let hash = hex::encode(Sha256::digest(raw.as_bytes()));
    let item = json!({
        "hash": hash,
        "prefix": &raw[..12],
        "name": format!("legacy {n}"),
        "permissions": ["orders:read"],
        "metadata": {"from": "legacy"},
        "created_at": "2024-03-01T10:00:00Z",
    });
    (raw, item)
}

async fn restart(app: TestApp) -> TestApp {
    let store = app.stop().await;
    start(store, |c| c.import_prefixes = vec![PREFIX.to_string()]).await
}

async fn import(app: &TestApp, items: Vec<Value>) -> Reply {
    app.post("/v1/keys/import", json!({ "keys": items })).await
}

fn ids(r: &Reply) -> Vec<(u64, String)> {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["imported"]
        .as_array()
        .expect("imported")
        .iter()
        .map(|i| {
            (
                i["index"].as_u64().expect("index"),
                i["id"].as_str().expect("id").to_string(),
            )
        })
        .collect()
}

fn errors(r: &Reply) -> Vec<(u64, String)> {
    r.body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().expect("index"),
                e["error"]["code"].as_str().expect("code").to_string(),
            )
        })
        .collect()
}

async fn verify(app: &TestApp, key: &str) -> Value {
    let r = app
        .verify(json!({"key": key, "permissions": ["orders:read"]}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

async fn imported_keys_verify_unchanged_and_list_as_imported(backend: Backend) {
    let Some(app) = app(backend).await else {
        return;
    };
    let (raw_a, a) = foreign(1);
    let (raw_b, b) = foreign(2);
    let r = import(&app, vec![a.clone(), b]).await;
    let imported = ids(&r);
    assert_eq!(imported.len(), 2, "{}", r.text);
    assert!(errors(&r).is_empty(), "{}", r.text);
    let id_a = imported[0].1.clone();

    let answer = verify(&app, &raw_a).await;
    assert_eq!(answer["code"], "VALID", "{answer}");
    assert_eq!(answer["key_id"], id_a.as_str());
    assert_eq!(answer["name"], "legacy 1");
    assert_eq!(verify(&app, &raw_b).await["code"], "VALID");
    // The import prefix alone is not a key, nor a near miss.
    assert_eq!(
        verify(&app, &format!("{raw_a}x")).await["code"],
        "NOT_FOUND"
    );
    assert_eq!(verify(&app, PREFIX).await["code"], "NOT_FOUND");
    let long = format!("{PREFIX}{}", "a".repeat(600));
    assert_eq!(verify(&app, &long).await["code"], "NOT_FOUND");

    let view = app.get(&format!("/v1/keys/{id_a}")).await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.text);
    assert_eq!(view.body["imported"], true);
    assert_eq!(view.body["prefix"], a["prefix"]);
    assert_eq!(view.body["created_at"], "2024-03-01T10:00:00Z");
    assert_eq!(view.body["metadata"], json!({"from": "legacy"}));
    assert!(!view.text.contains(a["hash"].as_str().expect("hash")));
    // Keys made here are not imported.
    let (own_id, _) = app.create_key("own").await;
    assert_eq!(
        app.get(&format!("/v1/keys/{own_id}")).await.body["imported"],
        false
    );

    // The index is loaded from the key list at start: still found by hash.
    let app = restart(app).await;
    assert_eq!(verify(&app, &raw_a).await["code"], "VALID");
    // Uses are counted like any key's (flushed at shutdown).
    let app = restart(app).await;
    let view = app.get(&format!("/v1/keys/{id_a}")).await;
    assert_eq!(view.body["usage_count"], 2, "{}", view.text);

    // Without the prefix configured, a foreign string is not looked up.
    let store = app.stop().await;
    let plain = start(store, |_| {}).await;
    assert_eq!(verify(&plain, &raw_a).await["code"], "NOT_FOUND");
}

async fn importing_again_answers_the_same_ids_and_each_item_fails_alone(backend: Backend) {
    let Some(app) = app(backend).await else {
        return;
    };
    let items: Vec<Value> = (0..5).map(|n| foreign(n).1).collect();
    let first = ids(&import(&app, items.clone()).await);
    assert_eq!(first.len(), 5);
    let again = ids(&import(&app, items.clone()).await);
    assert_eq!(again, first, "the same hashes answer the same ids");
    let list = app.get("/v1/keys?limit=100").await;
    assert_eq!(list.body["keys"].as_array().expect("keys").len(), 5);

    // Bad items fail alone, in their place; a repeated hash answers its first.
    let (_, fresh) = foreign(9);
    let mut bad_hash = foreign(10).1;
    bad_hash["hash"] = json!("zz");
    let mut bad_prefix = foreign(11).1;
    bad_prefix["prefix"] = json!("has space");
    let mut bad_expiry = foreign(12).1;
    bad_expiry["expires_at"] = json!("2001-01-01T00:00:00Z");
    let mut future = foreign(13).1;
    future["created_at"] = json!("2999-01-01T00:00:00Z");
    let r = import(
        &app,
        vec![
            fresh.clone(),
            bad_hash,
            json!({"hash": 7}),
            json!({"hash": "not an object"}),
            bad_prefix,
            items[2].clone(),
            fresh,
            bad_expiry,
            future,
            json!({"hash": "ab", "prefix": "x", "name": "n", "unknown": 1}),
        ],
    )
    .await;
    let got = ids(&r);
    assert_eq!(got.len(), 3, "{}", r.text);
    assert_eq!(got[0].0, 0);
    assert_eq!(got[1], (5, first[2].1.clone()));
    assert_eq!(got[2], (6, got[0].1.clone()), "a repeat answers its first");
    let failed = errors(&r);
    assert_eq!(
        failed.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 7, 8, 9],
        "{}",
        r.text
    );
    assert!(
        failed.iter().all(|(_, c)| c == "validation_failed"),
        "{}",
        r.text
    );
    assert!(!r.text.contains("not an object"), "{}", r.text);

    // The envelope: 1-1000 objects.
    let r = import(&app, vec![foreign(30).1, json!("zzz-an-item-text")]).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert!(!r.text.contains("zzz-an-item-text"), "{}", r.text);
    let r = import(&app, Vec::new()).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let many: Vec<Value> = (0..1001).map(|n| foreign(n).1).collect();
    let r = import(&app, many).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let r = app
        .send_raw(Method::POST, "/v1/keys/import", "{\"keys\": [")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    let unauthenticated = app
        .client
        .post(app.url("/v1/keys/import"))
        .json(&json!({"keys": [foreign(20).1]}))
        .send()
        .await
        .expect("request");
    assert_eq!(unauthenticated.status(), StatusCode::UNAUTHORIZED);
    // A full request of a thousand is taken.
    let thousand: Vec<Value> = (0..1000).map(|n| foreign(n).1).collect();
    let r = import(&app, thousand).await;
    assert_eq!(ids(&r).len(), 1000, "{}", r.text);
}

async fn imported_keys_have_the_full_lifecycle(backend: Backend) {
    let Some(app) = app(backend).await else {
        return;
    };
    let (raw, item) = foreign(1);
    let id = ids(&import(&app, vec![item]).await)[0].1.clone();
    let r = app
        .post(&format!("/v1/keys/{id}/deactivate"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(verify(&app, &raw).await["code"], "DISABLED");
    let r = app
        .post(&format!("/v1/keys/{id}/reactivate"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(verify(&app, &raw).await["code"], "VALID");

    // Limits apply as to any key.
    let r = app
        .send(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"ratelimits": [{"name": "burst", "limit": 2, "window_ms": 60000}]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let codes: Vec<Value> = futures_codes(&app, &raw, 3).await;
    assert_eq!(
        codes,
        vec![json!("VALID"), json!("VALID"), json!("RATE_LIMITED")]
    );

    // Rotation moves the customer onto a keyledger key.
    let r = app
        .post(
            &format!("/v1/keys/{id}/rotate"),
            json!({"grace_period_seconds": 0}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let successor = r.body["key"].as_str().expect("key").to_string();
    assert!(successor.starts_with("kl_live_"), "a keyledger key");
    assert_eq!(r.body["imported"], false);
    assert_eq!(r.body["rotated_from"], id.as_str());
    assert_eq!(verify(&app, &successor).await["code"], "VALID");
    assert_eq!(verify(&app, &raw).await["code"], "EXPIRED");

    let r = app
        .send(Method::DELETE, &format!("/v1/keys/{id}"), None)
        .await;
    assert!(r.status.is_success(), "{} {}", r.status, r.text);
    assert_eq!(verify(&app, &raw).await["code"], "NOT_FOUND");
    let events = app.get(&format!("/v1/keys/{id}/events")).await;
    assert!(events.text.contains("KeyCreated"), "{}", events.text);
}

async fn futures_codes(app: &TestApp, raw: &str, n: usize) -> Vec<Value> {
    let mut codes = Vec::new();
    for _ in 0..n {
        codes.push(verify(app, raw).await["code"].clone());
    }
    codes
}

async fn a_hash_belongs_to_one_tenant_and_a_deleted_key_stays_deleted(backend: Backend) {
    let Some(app) = app(backend).await else {
        return;
    };
    let (raw, item) = foreign(1);
    let id = ids(&import(&app, vec![item.clone()]).await)[0].1.clone();
    // Another tenant presenting the same hash is refused, without being
    // told whose key it is.
    let other = app
        .send_as(
            &token("globex", "mallory"),
            Method::POST,
            "/v1/keys/import",
            Some(json!({"keys": [item.clone()]})),
        )
        .await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.text);
    assert_eq!(errors(&other), vec![(0, "import_conflict".to_string())]);
    assert!(
        !other.text.contains(&id) && !other.text.contains("acme"),
        "{}",
        other.text
    );
    assert_eq!(verify(&app, &raw).await["tenant"], "acme");

    let r = app
        .send(Method::DELETE, &format!("/v1/keys/{id}"), None)
        .await;
    assert!(r.status.is_success(), "{} {}", r.status, r.text);
    let again = import(&app, vec![item]).await;
    assert_eq!(
        errors(&again),
        vec![(0, "import_conflict".to_string())],
        "{}",
        again.text
    );
    assert_eq!(verify(&app, &raw).await["code"], "NOT_FOUND");
}

async fn imports_are_judged_by_the_tenant_policy(backend: Backend) {
    let Some(app) = app(backend).await else {
        return;
    };
    let r = app
        .send(
            Method::PUT,
            "/v1/policy",
            Some(json!({
                "on_leak": "deactivate",
                "max_lifetime_seconds": 86400,
                "allowed_permissions": ["orders:read"],
                "allowed_environments": ["live"],
            })),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let ok = foreign(1).1;
    let mut test_env = foreign(2).1;
    test_env["environment"] = json!("test");
    let mut admin = foreign(3).1;
    admin["permissions"] = json!(["orders:read", "admin"]);
    let mut long_lived = foreign(4).1;
    long_lived["expires_at"] = json!((Utc::now() + chrono::Duration::days(2)).to_rfc3339());
    let mut bad_ips = foreign(5).1;
    bad_ips["allowed_ips"] = json!(["10.0.0.0/33"]);
    let r = import(&app, vec![ok, test_env, admin, long_lived, bad_ips]).await;
    let imported = ids(&r);
    assert_eq!(imported.len(), 1, "{}", r.text);
    assert_eq!(
        errors(&r),
        vec![
            (1, "policy_violation".to_string()),
            (2, "policy_violation".to_string()),
            (3, "policy_violation".to_string()),
            (4, "validation_failed".to_string()),
        ],
        "{}",
        r.text
    );
    let rules: Vec<Value> = r.body["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["error"]["details"]["rule"].clone())
        .collect();
    assert_eq!(
        rules,
        vec![
            json!("allowed_environments"),
            json!("allowed_permissions"),
            json!("max_lifetime_seconds"),
            Value::Null,
        ],
        "{}",
        r.text
    );
    // The longest lifetime gives the imported key its expiry.
    let view = app.get(&format!("/v1/keys/{}", imported[0].1)).await;
    assert!(view.body["expires_at"].is_string(), "{}", view.text);

    // A policy that requires an expiry but sets no longest lifetime refuses
    // an import without one, and takes one with it.
    let r = app
        .send(
            Method::PUT,
            "/v1/policy",
            Some(json!({"on_leak": "deactivate", "require_expiry": true})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let mut expiring = foreign(6).1;
    expiring["expires_at"] = json!((Utc::now() + chrono::Duration::days(400)).to_rfc3339());
    let r = import(&app, vec![foreign(7).1, expiring]).await;
    assert_eq!(ids(&r).len(), 1, "{}", r.text);
    assert_eq!(
        errors(&r),
        vec![(0, "policy_violation".to_string())],
        "{}",
        r.text
    );
    assert_eq!(
        r.body["errors"][0]["error"]["details"]["rule"],
        "require_expiry"
    );
}

async fn only_new_keys_count_against_the_key_cap(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let app = start(store, |c| {
        c.import_prefixes = vec![PREFIX.to_string()];
        c.max_keys_per_tenant = 3;
    })
    .await;
    let items: Vec<Value> = (0..5).map(|n| foreign(n).1).collect();
    let r = import(&app, items.clone()).await;
    let first = ids(&r);
    assert_eq!(
        first.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    assert_eq!(
        errors(&r),
        vec![
            (3, "key_limit_reached".to_string()),
            (4, "key_limit_reached".to_string())
        ]
    );
    // Importing the same again makes nothing new: the three are answered,
    // the two still do not fit.
    let r = import(&app, items).await;
    assert_eq!(ids(&r), first);
    assert_eq!(errors(&r).len(), 2, "{}", r.text);
}
