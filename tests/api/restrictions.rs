//! IP restrictions: a key's `allowed_ips`, checked against `ip` in the verify
//! body and, on `/v1/auth`, against the client address a trusted proxy
//! names. Outside them, or with no address at all: `IP_NOT_ALLOWED`.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{start, Backend, TestApp, TestStore};

backend_tests!(
    a_key_verifies_only_from_its_allowed_addresses,
    allowed_ips_are_validated_and_changed_by_patch,
    auth_checks_the_client_a_trusted_proxy_names,
    restrictions_survive_a_restart_and_follow_a_rotation,
);

async fn app(backend: Backend, trusted_proxies: &[&str]) -> Option<TestApp> {
    let store = TestStore::new(backend).await?;
    let trusted: Vec<ipnet::IpNet> = trusted_proxies
        .iter()
        .map(|p| p.parse().expect("cidr"))
        .collect();
    Some(start(store, |c| c.trusted_proxies = trusted).await)
}

async fn restricted_key(app: &TestApp, allowed_ips: Value) -> (String, String, Value) {
    let r = app
        .post(
            "/v1/keys",
            json!({"name": "office", "allowed_ips": allowed_ips}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    (
        r.body["id"].as_str().expect("id").to_string(),
        r.body["key"].as_str().expect("key").to_string(),
        r.body["allowed_ips"].clone(),
    )
}

async fn code_from(app: &TestApp, key: &str, ip: Option<&str>) -> String {
    let body = match ip {
        Some(ip) => json!({"key": key, "ip": ip}),
        None => json!({"key": key}),
    };
    let r = app.verify(body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["valid"], r.body["code"] == "VALID", "{}", r.text);
    r.body["code"].as_str().expect("code").to_string()
}

async fn a_key_verifies_only_from_its_allowed_addresses(backend: Backend) {
    let Some(app) = app(backend, &[]).await else {
        return;
    };
    let (_, key, shown) = restricted_key(
        &app,
        json!(["2001:db8::/32", "10.0.0.0/8", "203.0.113.7", "10.0.0.0/8"]),
    )
    .await;
    // Canonical: sorted, deduplicated, a bare address as its /32.
    assert_eq!(
        shown,
        json!(["10.0.0.0/8", "203.0.113.7/32", "2001:db8::/32"])
    );
    for (ip, want) in [
        (Some("10.1.2.3"), "VALID"),
        (Some("10.255.255.255"), "VALID"),
        (Some("203.0.113.7"), "VALID"),
        (Some("2001:db8::1"), "VALID"),
        // An IPv4 client seen through an IPv6 socket.
        (Some("::ffff:10.1.2.3"), "VALID"),
        (Some("11.0.0.1"), "IP_NOT_ALLOWED"),
        (Some("203.0.113.8"), "IP_NOT_ALLOWED"),
        (Some("2001:db9::1"), "IP_NOT_ALLOWED"),
        // A restricted key with no address given is refused, never waved through.
        (None, "IP_NOT_ALLOWED"),
    ] {
        assert_eq!(code_from(&app, &key, ip).await, want, "from {ip:?}");
    }
    // An unrestricted key ignores the address.
    let (_, open, shown) = restricted_key(&app, json!([])).await;
    assert_eq!(shown, json!([]));
    assert_eq!(code_from(&app, &open, None).await, "VALID");
    assert_eq!(code_from(&app, &open, Some("198.51.100.1")).await, "VALID");
    // A refusal for the address comes before the key's other answers are
    // given away, but after DISABLED: a disabled key is disabled anywhere.
    let r = app
        .verify(json!({"key": key, "ip": "11.0.0.1", "permissions": ["nope"]}))
        .await;
    assert_eq!(r.body["code"], "IP_NOT_ALLOWED", "{}", r.text);
    // An address that is not one is a client error, not a 500.
    let r = app.verify(json!({"key": key, "ip": "10.0.0.256"})).await;
    assert!(r.status.is_client_error(), "{} {}", r.status, r.text);
    let r = app.verify(json!({"key": key, "ip": 42})).await;
    assert!(r.status.is_client_error(), "{} {}", r.status, r.text);
}

async fn allowed_ips_are_validated_and_changed_by_patch(backend: Backend) {
    let Some(app) = app(backend, &[]).await else {
        return;
    };
    let too_many: Vec<String> = (0..51).map(|i| format!("10.0.{i}.0/24")).collect();
    for bad in [
        json!(["10.0.0.1/8"]),
        json!(["not an address"]),
        json!(["10.0.0.0/33"]),
        json!(too_many),
        json!("10.0.0.0/8"),
    ] {
        let r = app
            .post("/v1/keys", json!({"name": "bad", "allowed_ips": bad}))
            .await;
        assert!(r.status.is_client_error(), "{bad}: {} {}", r.status, r.text);
        assert_ne!(r.status, StatusCode::CREATED);
        if r.status == StatusCode::UNPROCESSABLE_ENTITY && r.code() == "validation_failed" {
            assert_eq!(
                r.body["error"]["details"]["field"], "allowed_ips",
                "{}",
                r.text
            );
        }
        // The client's text is not echoed.
        assert!(!r.text.contains("not an address"), "{}", r.text);
    }
    let (id, key, _) = restricted_key(&app, json!(["192.0.2.0/24"])).await;
    assert_eq!(
        code_from(&app, &key, Some("10.1.1.1")).await,
        "IP_NOT_ALLOWED"
    );

    let path = format!("/v1/keys/{id}");
    let r = app
        .send(
            Method::PATCH,
            &path,
            Some(json!({"allowed_ips": ["10.0.0.0/8"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["allowed_ips"], json!(["10.0.0.0/8"]));
    assert_eq!(code_from(&app, &key, Some("10.1.1.1")).await, "VALID");
    assert_eq!(
        code_from(&app, &key, Some("192.0.2.1")).await,
        "IP_NOT_ALLOWED"
    );

    // Renaming keeps the restriction; changing permissions keeps it too.
    let r = app
        .send(
            Method::PATCH,
            &path,
            Some(json!({"name": "renamed", "permissions": ["orders:read"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["allowed_ips"], json!(["10.0.0.0/8"]));
    assert_eq!(
        code_from(&app, &key, Some("192.0.2.1")).await,
        "IP_NOT_ALLOWED"
    );
    let r = app
        .verify(json!({"key": key, "ip": "10.9.9.9", "permissions": ["orders:read"]}))
        .await;
    assert_eq!(r.body["code"], "VALID", "{}", r.text);

    let r = app
        .send(Method::PATCH, &path, Some(json!({"allowed_ips": null})))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    let r = app
        .send(Method::PATCH, &path, Some(json!({"allowed_ips": []})))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["allowed_ips"], json!([]));
    assert_eq!(code_from(&app, &key, None).await, "VALID");
    let got = app.get(&path).await;
    assert_eq!(got.body["allowed_ips"], json!([]));
}

async fn auth(app: &TestApp, key: &str, forwarded_for: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(app.url("/v1/auth")).header("X-Api-Key", key);
    if let Some(f) = forwarded_for {
        request = request.header("X-Forwarded-For", f);
    }
    request.send().await.expect("request")
}

async fn auth_checks_the_client_a_trusted_proxy_names(backend: Backend) {
    let Some(behind_proxy) = app(backend, &["127.0.0.1/32", "::1/128"]).await else {
        return;
    };
    let (_, key, _) = restricted_key(&behind_proxy, json!(["203.0.113.0/24"])).await;
    let ok = auth(&behind_proxy, &key, Some("203.0.113.9")).await;
    assert_eq!(ok.status(), StatusCode::NO_CONTENT);
    let refused = auth(&behind_proxy, &key, Some("198.51.100.1")).await;
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    assert_eq!(refused.headers()["x-key-code"], "IP_NOT_ALLOWED");
    let body: Value = refused.json().await.expect("json");
    assert_eq!(body["error"]["code"], "ip_not_allowed");
    // A client cannot name itself: the leftmost entry is its own invention,
    // the one the trusted proxy appended is the client.
    let spoofed = auth(&behind_proxy, &key, Some("203.0.113.9, 198.51.100.1")).await;
    assert_eq!(spoofed.status(), StatusCode::FORBIDDEN);
    // No proxy header: the peer (127.0.0.1) is the client, and outside.
    let direct = auth(&behind_proxy, &key, None).await;
    assert_eq!(direct.status(), StatusCode::FORBIDDEN);

    // Without trusted proxies the header is anyone's to write, and ignored.
    let store = behind_proxy.stop().await;
    let open = start(store, |_| {}).await;
    let r = auth(&open, &key, Some("203.0.113.9")).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.headers()["x-key-code"], "IP_NOT_ALLOWED");
    let (_, local, _) = restricted_key(&open, json!(["127.0.0.0/8", "::1/128"])).await;
    assert_eq!(
        auth(&open, &local, None).await.status(),
        StatusCode::NO_CONTENT
    );
}

async fn restrictions_survive_a_restart_and_follow_a_rotation(backend: Backend) {
    let Some(app) = app(backend, &[]).await else {
        return;
    };
    let (id, key, _) = restricted_key(&app, json!(["10.0.0.0/8"])).await;
    // The index is loaded from the key list at start.
    let app = app.restart().await;
    assert_eq!(code_from(&app, &key, Some("10.0.0.1")).await, "VALID");
    assert_eq!(
        code_from(&app, &key, Some("11.0.0.1")).await,
        "IP_NOT_ALLOWED"
    );
    let r = app.post(&format!("/v1/keys/{id}/rotate"), json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["allowed_ips"], json!(["10.0.0.0/8"]));
    let successor = r.body["key"].as_str().expect("key").to_string();
    assert_eq!(code_from(&app, &successor, Some("10.0.0.1")).await, "VALID");
    assert_eq!(
        code_from(&app, &successor, Some("11.0.0.1")).await,
        "IP_NOT_ALLOWED"
    );
}
