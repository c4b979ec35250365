//! Hostile text: NUL and other control characters in every field a tenant or
//! client controls. PostgreSQL cannot store NUL (it answered 500 while SQLite
//! stored it), and CR/LF or escape sequences garble headers and terminals. Every
//! store must give the same answer: 422 for a body field, 404 for a path, 401
//! for a token's claims, never 500.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::backend_tests;
use crate::helpers::{token, Backend};

backend_tests!(
    text_fields_refuse_nul_and_control_characters_on_every_store,
    tokens_naming_a_tenant_or_actor_with_control_characters_are_refused,
    identity_headers_are_percent_encoded_never_empty,
);

async fn text_fields_refuse_nul_and_control_characters_on_every_store(backend: Backend) {
    let Some(app) = crate::helpers::spawn_app(backend).await else {
        return;
    };
    let (id, _) = app.create_key("plain").await;
    let bodies = [
        ("name", json!({"name": "a\u{0}b"})),
        ("name", json!({"name": "\u{1b}[2Jwiped"})),
        ("name", json!({"name": "two\r\nlines"})),
        ("name", json!({"name": "c1 \u{9b} control"})),
        (
            "description",
            json!({"name": "ok", "description": "nul \u{0} here"}),
        ),
        (
            "description",
            json!({"name": "ok", "description": "bell \u{7}"}),
        ),
        (
            "metadata",
            json!({"name": "ok", "metadata": {"k": "nul \u{0}"}}),
        ),
        ("metadata", json!({"name": "ok", "metadata": {"k\u{0}": 1}})),
    ];
    for (field, body) in &bodies {
        let r = app.post("/v1/keys", body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "create {body}: {}",
            r.text
        );
        assert_eq!(r.body["error"]["details"]["field"], *field, "{}", r.text);
        let r = app
            .send(Method::PATCH, &format!("/v1/keys/{id}"), Some(body.clone()))
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "update {body}: {}",
            r.text
        );
    }
    for reason in ["nul \u{0}", "escape \u{1b}[31m", "backspace \u{8}"] {
        let r = app
            .send(
                Method::POST,
                &format!("/v1/keys/{id}/deactivate"),
                Some(json!({"reason": reason})),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "reason {reason:?}: {}",
            r.text
        );
        assert_eq!(r.body["error"]["details"]["field"], "reason");
    }
    // Line breaks and tabs are the control characters a description may hold.
    let r = app
        .post(
            "/v1/keys",
            json!({"name": "ok", "description": "line one\n\tline two"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    // Paths and queries: NUL names no key and filters nothing.
    for path in [
        "/v1/keys/key_%00",
        "/v1/keys/%00/events",
        "/v1/keys/a%0Db/deactivate",
    ] {
        let method = if path.ends_with("deactivate") {
            Method::POST
        } else {
            Method::GET
        };
        let r = app.send(method, path, None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.text);
    }
    for query in ["actor=%00", "type=Key%00Created", "key_id=%1B"] {
        let r = app.get(&format!("/v1/audit?{query}")).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {}",
            r.text
        );
    }
    // Nothing of the above reached the store: the key is as it was.
    let view = app.get(&format!("/v1/keys/{id}")).await;
    assert_eq!(view.body["name"], "plain");
    assert_eq!(view.body["status"], "active");
    app.stop().await;
}

async fn tokens_naming_a_tenant_or_actor_with_control_characters_are_refused(backend: Backend) {
    let Some(app) = crate::helpers::spawn_app(backend).await else {
        return;
    };
    let hostile = [
        ("ev\u{0}il", "mallory"),
        ("evil\r\nX-Key-Tenant: acme", "mallory"),
        ("evil", "\u{1b}]0;pwned\u{7}"),
        ("evil", "nul\u{0}"),
        (&"t".repeat(257) as &str, "mallory"),
    ];
    for (tenant, subject) in hostile {
        let r = app
            .send_as(
                &token(tenant, subject),
                Method::POST,
                "/v1/keys",
                Some(json!({"name": "x"})),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{tenant:?}/{subject:?}: {}",
            r.text
        );
        assert_eq!(r.code(), "unauthorized");
    }
    app.stop().await;
}

async fn identity_headers_are_percent_encoded_never_empty(backend: Backend) {
    let Some(app) = crate::helpers::spawn_app(backend).await else {
        return;
    };
    let tenant = "Müller & Söhne 100% 🔑";
    let r = app
        .send_as(
            &token(tenant, "hans"),
            Method::POST,
            "/v1/keys",
            Some(json!({"name": "unicode tenant"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let key = r.body["key"].as_str().expect("key").to_string();
    let response = app
        .client
        .get(app.url("/v1/auth"))
        .header("x-api-key", &key)
        .send()
        .await
        .expect("auth");
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let header = response
        .headers()
        .get("x-key-tenant")
        .expect("X-Key-Tenant")
        .to_str()
        .expect("visible ASCII")
        .to_string();
    assert_eq!(
        header,
        "M%C3%BCller%20&%20S%C3%B6hne%20100%25%20%F0%9F%94%91"
    );
    let decoded = percent_encoding::percent_decode_str(&header)
        .decode_utf8()
        .expect("UTF-8");
    assert_eq!(decoded, tenant, "decoding gives the tenant back");
    // A plain tenant goes out as it is.
    let (_, plain) = app.create_key("plain").await;
    let response = app
        .client
        .get(app.url("/v1/auth"))
        .header("x-api-key", &plain)
        .send()
        .await
        .expect("auth");
    assert_eq!(
        response.headers().get("x-key-tenant").map(|v| v.as_bytes()),
        Some(crate::helpers::TENANT.as_bytes())
    );
    app.stop().await;
}
