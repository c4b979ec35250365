//! GET /v1/auth, as nginx `auth_request` calls it, and expiry enforced at
//! verification time with a clock the test moves.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::backend_tests;
use crate::helpers::{spawn_app, Backend, TestApp};

backend_tests!(
    proxy_auth_answers_204_with_key_headers_401_and_403,
    an_expired_key_fails_to_the_second_and_shows_as_expired,
);

async fn auth(app: &TestApp, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut request = app.client.get(app.url("/v1/auth"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("request")
}

async fn proxy_auth_answers_204_with_key_headers_401_and_403(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let r = app
        .post(
            "/v1/keys",
            json!({"name": "gateway", "permissions": ["orders:read", "orders:write"]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let id = r.body["id"].as_str().expect("id").to_string();
    let key = r.body["key"].as_str().expect("key").to_string();

    let ok = auth(&app, &[("X-Api-Key", &key)]).await;
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    assert_eq!(ok.headers()["x-key-id"], id.as_str());
    assert_eq!(ok.headers()["x-key-tenant"], "acme");
    assert_eq!(
        ok.headers()["x-key-permissions"],
        "orders:read,orders:write"
    );

    let bearer = auth(
        &app,
        &[
            ("Authorization", &format!("Bearer {key}")),
            ("X-Required-Permissions", "orders:read, orders:write"),
        ],
    )
    .await;
    assert_eq!(bearer.status(), StatusCode::NO_CONTENT);

    let forbidden = auth(
        &app,
        &[
            ("X-Api-Key", &key),
            ("X-Required-Permissions", "orders:read,admin"),
        ],
    )
    .await;
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        forbidden.headers()["x-key-code"],
        "INSUFFICIENT_PERMISSIONS"
    );

    let missing = auth(&app, &[]).await;
    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert!(missing.headers().contains_key("www-authenticate"));

    let garbage = auth(&app, &[("X-Api-Key", "kl_live_nonsense")]).await;
    assert_eq!(garbage.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(garbage.headers()["x-key-code"], "NOT_FOUND");

    let r = app
        .send(Method::POST, &format!("/v1/keys/{id}/deactivate"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let disabled = auth(&app, &[("X-Api-Key", &key)]).await;
    assert_eq!(disabled.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(disabled.headers()["x-key-code"], "DISABLED");
    let text = disabled.text().await.expect("body");
    assert!(!text.contains(&key));
    app.stop().await;
}

async fn an_expired_key_fails_to_the_second_and_shows_as_expired(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let expires_at = app.clock.now() + chrono::Duration::seconds(3600);
    let r = app
        .post(
            "/v1/keys",
            json!({"name": "short", "expires_at": expires_at.to_rfc3339()}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let id = r.body["id"].as_str().expect("id").to_string();
    let key = r.body["key"].as_str().expect("key").to_string();
    let (_, forever) = app.create_key("forever").await;

    // One second before expiry: valid.
    app.clock.advance(chrono::Duration::seconds(3599));
    assert_eq!(app.verify_code(&key).await, "VALID");
    assert_eq!(
        app.get(&format!("/v1/keys/{id}")).await.body["status"],
        "active"
    );
    // At expiry: EXPIRED, no background job involved.
    app.clock.advance(chrono::Duration::seconds(1));
    assert_eq!(app.verify_code(&key).await, "EXPIRED");
    assert_eq!(app.verify_code(&forever).await, "VALID");
    assert_eq!(
        auth(&app, &[("X-Api-Key", &key)]).await.status(),
        StatusCode::UNAUTHORIZED
    );
    let view = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(view.body["status"], "expired");
    let expired = app.get("/v1/keys?status=expired").await;
    let ids: Vec<&str> = expired.body["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [id.as_str()]);
    let active = app.get("/v1/keys?status=active").await;
    assert_eq!(active.body["keys"].as_array().expect("keys").len(), 1);
    app.stop().await;
}
