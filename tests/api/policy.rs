//! The key rules of a tenant's policy (`PUT /v1/policy`): longest lifetime,
//! required expiry, allowed permissions and environments, judged on create,
//! PATCH and rotate (422 `policy_violation`); keys made before stay as they are.

use chrono::{DateTime, Duration, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{spawn_app, token, Backend, Reply, TestApp};

backend_tests!(
    the_max_lifetime_gives_new_keys_an_expiry_and_refuses_longer_ones,
    a_required_expiry_refuses_keys_without_one,
    permissions_outside_the_allowed_ones_are_refused,
    environments_not_allowed_are_refused,
    keys_made_before_a_policy_stay_as_they_are_and_other_tenants_are_unaffected,
    a_policy_put_is_validated_replaces_the_whole_policy_and_is_audited,
);

async fn set_policy(app: &TestApp, policy: Value) {
    let r = app.send(Method::PUT, "/v1/policy", Some(policy)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

async fn create(app: &TestApp, body: Value) -> Reply {
    app.post("/v1/keys", body).await
}

async fn patch(app: &TestApp, id: &str, body: Value) -> Reply {
    app.send(Method::PATCH, &format!("/v1/keys/{id}"), Some(body))
        .await
}

async fn rotate(app: &TestApp, id: &str) -> Reply {
    app.post(&format!("/v1/keys/{id}/rotate"), json!({})).await
}

fn id_of(r: &Reply) -> String {
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body["id"].as_str().expect("id").to_string()
}

/// Asserts a 422 `policy_violation` naming `rule`.
fn refused(r: &Reply, rule: &str) {
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.code(), "policy_violation", "{}", r.text);
    assert_eq!(r.body["error"]["details"]["rule"], rule, "{}", r.text);
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("a time: {v}"))
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Asserts `v` is about `expected` (the server's clock read a moment apart).
fn about(v: &Value, expected: DateTime<Utc>) {
    let at = time(v);
    assert!(
        (at - expected).num_seconds().abs() <= 10,
        "{at} is not about {expected}"
    );
}

async fn key_count(app: &TestApp) -> usize {
    let r = app.get("/v1/keys?limit=100").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["keys"].as_array().expect("keys").len()
}

async fn the_max_lifetime_gives_new_keys_an_expiry_and_refuses_longer_ones(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    set_policy(&app, json!({"max_lifetime_seconds": 3600})).await;

    // Create: none given -> now + max; sooner kept; later refused, nothing written.
    let r = create(&app, json!({"name": "default"})).await;
    let id = id_of(&r);
    about(&r.body["expires_at"], Utc::now() + Duration::seconds(3600));
    let sooner = Utc::now() + Duration::seconds(600);
    let r = create(
        &app,
        json!({"name": "sooner", "expires_at": rfc3339(sooner)}),
    )
    .await;
    id_of(&r);
    about(&r.body["expires_at"], sooner);
    let later = Utc::now() + Duration::seconds(7200);
    let r = create(&app, json!({"name": "later", "expires_at": rfc3339(later)})).await;
    refused(&r, "max_lifetime_seconds");
    assert_eq!(key_count(&app).await, 2, "a refused create writes nothing");

    // PATCH: later or cleared refused, sooner and other fields fine.
    refused(
        &patch(&app, &id, json!({"expires_at": rfc3339(later)})).await,
        "max_lifetime_seconds",
    );
    refused(
        &patch(&app, &id, json!({"expires_at": null})).await,
        "max_lifetime_seconds",
    );
    let r = patch(&app, &id, json!({"expires_at": rfc3339(sooner)})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    about(&r.body["expires_at"], sooner);
    let r = patch(&app, &id, json!({"name": "renamed"})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // Rotate: the successor gets now + max.
    let r = rotate(&app, &id).await;
    id_of(&r);
    about(&r.body["expires_at"], Utc::now() + Duration::seconds(3600));
}

async fn a_required_expiry_refuses_keys_without_one(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (old, _) = app.create_key("before").await;
    set_policy(&app, json!({"require_expiry": true})).await;

    refused(
        &create(&app, json!({"name": "forever"})).await,
        "require_expiry",
    );
    let at = Utc::now() + Duration::days(400);
    let r = create(&app, json!({"name": "dated", "expires_at": rfc3339(at)})).await;
    let id = id_of(&r);
    refused(
        &patch(&app, &id, json!({"expires_at": null})).await,
        "require_expiry",
    );
    let r = patch(
        &app,
        &id,
        json!({"expires_at": rfc3339(at + Duration::days(1))}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // A successor has no expiry of its own: refused, the old key untouched.
    refused(&rotate(&app, &id).await, "require_expiry");
    refused(&rotate(&app, &old).await, "require_expiry");
    assert!(app.get(&format!("/v1/keys/{id}")).await.body["rotated_to"].is_null());
    assert_eq!(key_count(&app).await, 2);

    // With a max lifetime too, its default expiry comes first.
    set_policy(
        &app,
        json!({"require_expiry": true, "max_lifetime_seconds": 86400}),
    )
    .await;
    let r = create(&app, json!({"name": "defaulted"})).await;
    id_of(&r);
    about(&r.body["expires_at"], Utc::now() + Duration::seconds(86400));
    let r = rotate(&app, &id).await;
    id_of(&r);
    about(&r.body["expires_at"], Utc::now() + Duration::seconds(86400));
}

async fn permissions_outside_the_allowed_ones_are_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (old, _) = app.create_key("before").await; // keys:read
    set_policy(
        &app,
        json!({"allowed_permissions": ["read", "update-data", "orders:*"]}),
    )
    .await;

    let r = create(
        &app,
        json!({"name": "ok", "permissions": ["read", "orders:*"]}),
    )
    .await;
    let id = id_of(&r);
    id_of(&create(&app, json!({"name": "none"})).await);
    for bad in [
        json!(["delete-model"]),
        json!(["read", "orders:read"]),
        json!(["*"]),
    ] {
        refused(
            &create(&app, json!({"name": "bad", "permissions": bad})).await,
            "allowed_permissions",
        );
        refused(
            &patch(&app, &id, json!({"permissions": bad})).await,
            "allowed_permissions",
        );
    }
    // A malformed permission is the permission rules' error, not the policy's.
    let r = create(&app, json!({"name": "bad", "permissions": ["Read"]})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", r.text);
    assert_eq!(r.code(), "validation_failed");
    assert_eq!(r.body["error"]["details"]["field"], "permissions");

    let r = patch(&app, &id, json!({"permissions": ["update-data"]})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["permissions"], json!(["update-data"]));
    // The successor inherits the permissions: the old key's are not allowed.
    refused(&rotate(&app, &old).await, "allowed_permissions");
    id_of(&rotate(&app, &id).await);
}

async fn environments_not_allowed_are_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (old, _) = app.create_key("live before").await;
    set_policy(&app, json!({"allowed_environments": ["test"]})).await;

    refused(
        &create(&app, json!({"name": "live"})).await,
        "allowed_environments",
    );
    refused(
        &create(&app, json!({"name": "live", "environment": "live"})).await,
        "allowed_environments",
    );
    let id = id_of(&create(&app, json!({"name": "test", "environment": "test"})).await);
    refused(&rotate(&app, &old).await, "allowed_environments");
    let r = rotate(&app, &id).await;
    id_of(&r);
    assert_eq!(r.body["environment"], "test");
}

async fn keys_made_before_a_policy_stay_as_they_are_and_other_tenants_are_unaffected(
    backend: Backend,
) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let (id, key) = app.create_key("before").await;
    let before = app.get(&format!("/v1/keys/{id}")).await.body;
    set_policy(
        &app,
        json!({"max_lifetime_seconds": 60, "require_expiry": true,
               "allowed_permissions": ["read"], "allowed_environments": ["test"]}),
    )
    .await;

    let after = app.get(&format!("/v1/keys/{id}")).await.body;
    assert_eq!(after, before, "the key is not changed");
    assert!(after["expires_at"].is_null());
    assert_eq!(app.verify_code(&key).await, "VALID");
    // A change that leaves the ruled fields alone is allowed.
    let r = patch(&app, &id, json!({"name": "renamed", "metadata": {"a": 1}})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.verify_code(&key).await, "VALID");
    let r = app
        .post(&format!("/v1/keys/{id}/deactivate"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = app
        .post(&format!("/v1/keys/{id}/reactivate"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.verify_code(&key).await, "VALID");

    // Another tenant keeps the default policy.
    let other = token("other-tenant", "bob");
    let r = app
        .send_as(
            &other,
            Method::POST,
            "/v1/keys",
            Some(json!({"name": "theirs", "permissions": ["keys:read"]})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert!(r.body["expires_at"].is_null());
    let theirs = app.send_as(&other, Method::GET, "/v1/policy", None).await;
    assert_eq!(theirs.body["max_lifetime_seconds"], Value::Null);
    assert_eq!(theirs.body["allowed_environments"], Value::Null);
}

async fn a_policy_put_is_validated_replaces_the_whole_policy_and_is_audited(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
    let defaults = json!({"on_leak": "deactivate", "max_lifetime_seconds": null,
        "require_expiry": false, "allowed_permissions": null, "allowed_environments": null});
    let r = app.get("/v1/policy").await;
    assert_eq!(r.body, defaults, "{}", r.text);

    let full = json!({"on_leak": "notify", "max_lifetime_seconds": 86400,
        "require_expiry": true, "allowed_permissions": ["update-data", "read", "read"],
        "allowed_environments": ["test", "live"]});
    let r = app.send(Method::PUT, "/v1/policy", Some(full)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let stored = json!({"on_leak": "notify", "max_lifetime_seconds": 86400,
        "require_expiry": true, "allowed_permissions": ["read", "update-data"],
        "allowed_environments": ["live", "test"]});
    assert_eq!(r.body, stored);
    assert_eq!(app.get("/v1/policy").await.body, stored);

    // Refused, naming the field; nothing changes.
    let hundred_one: Vec<String> = (0..101).map(|i| format!("p{i}")).collect();
    for (body, field) in [
        (json!({"max_lifetime_seconds": 0}), "max_lifetime_seconds"),
        (
            json!({"max_lifetime_seconds": 3_155_760_001_u64}),
            "max_lifetime_seconds",
        ),
        (
            json!({"allowed_permissions": hundred_one}),
            "allowed_permissions",
        ),
        (
            json!({"allowed_permissions": ["read", "Not Allowed"]}),
            "allowed_permissions",
        ),
        (
            json!({"allowed_environments": ["prod"]}),
            "allowed_environments",
        ),
        (json!({"allowed_environments": []}), "allowed_environments"),
        (json!({"require_expiry": "yes"}), "require_expiry"),
    ] {
        let r = app
            .send(Method::PUT, "/v1/policy", Some(body.clone()))
            .await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body}: {}",
            r.text
        );
        assert_eq!(r.code(), "validation_failed", "{body}");
        assert_eq!(
            r.body["error"]["details"]["field"], field,
            "{body}: {}",
            r.text
        );
    }
    assert_eq!(app.get("/v1/policy").await.body, stored);

    // A PUT replaces the whole policy: what it leaves out takes its default.
    let r = app.send(Method::PUT, "/v1/policy", Some(json!({}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(app.get("/v1/policy").await.body, defaults);

    // Each change is in the audit log with its actor and the whole policy.
    let audit = app.get("/v1/audit?type=TenantPolicySet").await;
    let events = audit.body["events"].as_array().expect("events");
    assert_eq!(events.len(), 2, "{}", audit.text);
    assert_eq!(events[0]["actor"], "alice");
    assert_eq!(events[0]["data"]["policy"], stored, "{}", audit.text);
    assert_eq!(events[1]["data"]["policy"], defaults, "{}", audit.text);
}
