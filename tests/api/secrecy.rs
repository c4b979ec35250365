//! The raw key is returned once, by its create call, and never again: not by any
//! other response, not in an error message, not in the database files. Its hash
//! never leaves the store either.

use keyledger_domain::KeyHash;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::backend_tests;
use crate::helpers::{spawn_app, Backend, Reply, TestApp};

backend_tests!(
    the_raw_key_is_returned_by_create_and_by_no_other_response,
    the_raw_key_never_appears_in_an_error_body,
    the_raw_key_is_not_in_the_database_files,
);

/// What must never be shown again: the key, its secret part without the public
/// display prefix, and its SHA-256 in hex.
struct Secret {
    key: String,
    hidden_part: String,
    hash_hex: String,
}

impl Secret {
    fn of(key: &str, display_prefix: &str) -> Self {
        assert!(
            key.starts_with(display_prefix),
            "{display_prefix} is a prefix of the key"
        );
        let hidden_part = key[display_prefix.len()..].to_string();
        assert!(hidden_part.len() >= 30, "most of the key is secret");
        Self {
            key: key.to_string(),
            hidden_part,
            hash_hex: KeyHash::of(key).to_hex(),
        }
    }

    fn assert_absent_from(&self, what: &str, text: &str) {
        assert!(
            !text.contains(&self.key),
            "{what} contains the raw key: {text}"
        );
        assert!(
            !text.contains(&self.hidden_part),
            "{what} contains the secret part of the key: {text}"
        );
        assert!(
            !text.to_lowercase().contains(&self.hash_hex),
            "{what} contains the key hash: {text}"
        );
    }

    fn assert_absent_from_bytes(&self, what: &str, bytes: &[u8]) {
        for needle in [&self.key, &self.hidden_part] {
            assert!(
                !contains(bytes, needle.as_bytes()),
                "{what} contains the raw key"
            );
        }
    }
}

/// A store file's bytes; `None` when it vanished since it was listed (SQLite
/// removes the -wal and -shm files when the last connection closes, which may
/// happen just after a graceful stop returns): a file that is gone holds nothing.
fn read_if_present(path: &std::path::Path) -> Option<Vec<u8>> {
    match std::fs::read(path) {
        Ok(bytes) => Some(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("read {}: {e}", path.display()),
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Creates a key with a bit of history (update, deactivate, reactivate) and
/// returns its id and secret.
async fn key_with_history(app: &TestApp) -> (String, Secret) {
    let r = app
        .post(
            "/v1/keys",
            json!({"name": "billing", "permissions": ["keys:read"], "metadata": {"team": "a"}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().expect("id").to_string();
    let key = r.body["key"]
        .as_str()
        .expect("the create response shows the key");
    let secret = Secret::of(key, r.body["prefix"].as_str().expect("prefix"));
    let fields = r.body.as_object().expect("object");
    assert!(
        fields
            .iter()
            .filter(|(_, v)| v.as_str() == Some(key))
            .count()
            == 1,
        "the key appears once, as `key`: {}",
        r.text
    );
    for (_, v) in fields.iter().filter(|(name, _)| name.as_str() != "key") {
        secret.assert_absent_from("the rest of the create response", &v.to_string());
    }
    let checked = [
        app.send(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"description": "d"})),
        )
        .await,
        app.post(&format!("/v1/keys/{id}/deactivate"), json!({"reason": "r"}))
            .await,
        app.send(Method::POST, &format!("/v1/keys/{id}/reactivate"), None)
            .await,
    ];
    for r in checked {
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        secret.assert_absent_from("a command response", &r.text);
    }
    (id, secret)
}

async fn the_raw_key_is_returned_by_create_and_by_no_other_response(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, secret) = key_with_history(&app).await;
    let prefix = app.get(&format!("/v1/keys/{id}")).await.body["prefix"]
        .as_str()
        .expect("prefix")
        .to_string();

    let verification = app.verify(json!({"key": secret.key})).await;
    assert_eq!(verification.body["code"], "VALID");
    secret.assert_absent_from("the verification", &verification.text);

    let reads: Vec<(String, Reply)> = vec![
        ("list".into(), app.get("/v1/keys").await),
        ("get".into(), app.get(&format!("/v1/keys/{id}")).await),
        (
            "get by prefix".into(),
            app.get(&format!("/v1/keys/{prefix}")).await,
        ),
        ("audit".into(), app.get("/v1/audit").await),
        (
            "key events".into(),
            app.get(&format!("/v1/keys/{id}/events")).await,
        ),
    ];
    for (what, r) in &reads {
        assert_eq!(r.status, StatusCode::OK, "{what}: {}", r.text);
        assert!(r.text.contains(&id), "{what} is about the key: {}", r.text);
        secret.assert_absent_from(what, &r.text);
    }
    let created = &reads[3].1.body["events"][0];
    assert_eq!(created["type"], "KeyCreated");
    assert!(created["data"].get("key_hash").is_none(), "{created}");

    let r = app
        .send(Method::DELETE, &format!("/v1/keys/{id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let history = app.get(&format!("/v1/keys/{id}/events")).await;
    secret.assert_absent_from("the history after deletion", &history.text);
    app.stop().await;
}

async fn the_raw_key_never_appears_in_an_error_body(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, secret) = key_with_history(&app).await;
    let key = secret.key.clone();
    let bodies = [
        json!({"name": "a", "permissions": key}),
        json!({"name": "a", "permissions": [key]}),
        json!({"name": "a", "environment": key}),
        json!({"name": "a", "expires_at": key}),
        json!({"name": "a", "metadata": key}),
        json!({"name": ["x", key]}),
        json!({"name": "a", key.clone(): 1}),
        json!({"name": 1, "description": key.repeat(20)}),
    ];
    for body in bodies {
        let r = app.post("/v1/keys", body).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        secret.assert_absent_from("a create error", &r.text);
    }
    let patch = app
        .send(
            Method::PATCH,
            &format!("/v1/keys/{id}"),
            Some(json!({"permissions": [key]})),
        )
        .await;
    assert_eq!(patch.status, StatusCode::UNPROCESSABLE_ENTITY);
    secret.assert_absent_from("an update error", &patch.text);

    let broken = format!(r#"{{"name": "{key}"#);
    let r = app.send_raw(Method::POST, "/v1/keys", &broken).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    secret.assert_absent_from("a syntax error", &r.text);
    let broken = format!(r#"{{"name": "a", "{key}" 1}}"#);
    let r = app.send_raw(Method::POST, "/v1/keys", &broken).await;
    assert!(r.status.is_client_error(), "{}", r.text);
    secret.assert_absent_from("a syntax error", &r.text);

    for body in [
        json!({"key": key, "environment": key}),
        json!({"key": key, "permissions": key}),
        json!({"key": [key]}),
        json!({"key": key, key.clone(): true}),
    ] {
        let r = app.verify(body).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        secret.assert_absent_from("a verification error", &r.text);
    }

    for query in ["status", "environment", "limit", "cursor"] {
        let r = app.get(&format!("/v1/keys?{query}={key}")).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
        secret.assert_absent_from("a query error", &r.text);
    }
    for path in [format!("/v1/keys/{key}"), format!("/v1/keys/{key}/events")] {
        let r = app.get(&path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
        secret.assert_absent_from("a not-found error", &r.text);
    }
    let r = app.send_as(&key, Method::GET, "/v1/keys", None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    secret.assert_absent_from("the api_key_not_allowed error", &r.text);
    let typo = format!("{key}.{key}");
    let r = app.send_as(&typo, Method::GET, "/v1/keys", None).await;
    assert!(r.status.is_client_error(), "{}", r.text);
    secret.assert_absent_from("a bad-token error", &r.text);
    app.stop().await;
}

async fn the_raw_key_is_not_in_the_database_files(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (_, secret) = key_with_history(&app).await;
    let (deleted_id, deleted) = key_with_history(&app).await;
    let r = app
        .send(Method::DELETE, &format!("/v1/keys/{deleted_id}"), None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    for _ in 0..3 {
        assert_eq!(app.verify_code(&secret.key).await, "VALID");
    }
    if app.store.backend != Backend::Sqlite {
        app.stop().await;
        return;
    }
    // While running (the write-ahead log holds the recent writes) ...
    let running = app.store.sqlite_files();
    assert!(!running.is_empty(), "the store has files");
    for path in &running {
        let Some(bytes) = read_if_present(path) else {
            continue;
        };
        secret.assert_absent_from_bytes(&path.display().to_string(), &bytes);
        deleted.assert_absent_from_bytes(&path.display().to_string(), &bytes);
    }
    // ... and after the final usage flush and checkpoint.
    let store = app.stop().await;
    let files = store.sqlite_files();
    let mut any_prefix = false;
    for path in &files {
        let Some(bytes) = read_if_present(path) else {
            continue;
        };
        secret.assert_absent_from_bytes(&path.display().to_string(), &bytes);
        deleted.assert_absent_from_bytes(&path.display().to_string(), &bytes);
        any_prefix |= contains(&bytes, &secret.key.as_bytes()[..16]);
    }
    assert!(
        any_prefix,
        "the display prefix is stored, so the scan reads real data"
    );
}
