//! `GET /v1/keys?breaks_policy=true`: keys made before a tenant policy that
//! break it are listed (each rule on its own and all together, with the other
//! filters and across pages), never changed; other tenants' keys never appear,
//! and a policy without key rules lists none.

use std::collections::HashSet;

use chrono::{Duration, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{spawn_app, spawn_sqlite_app, token, Backend, TestApp};

backend_tests!(
    keys_that_break_the_current_policy_are_listed_by_every_rule_and_left_unchanged,
    a_policy_without_key_rules_lists_no_key_and_false_filters_nothing,
);

/// A tenant's keys made before its policy, by what they break of [`policy`].
struct Fleet {
    app: TestApp,
    /// Breaks nothing: live, `read`, expiring in 10 days.
    fine: String,
    /// Breaks nothing: the listed wildcard `orders:*` itself.
    wildcard: String,
    /// Breaks nothing: no permissions at all.
    bare: String,
    /// A permission not in the catalogue (`delete-data`).
    extra_permission: String,
    /// `orders:read`: covered by `orders:*` when verifying, but not listed.
    unlisted: String,
    /// A test key.
    test_env: String,
    /// No expiry.
    forever: String,
    /// Expires in 60 days: longer than the 30 days allowed.
    long: String,
    /// A test key, deactivated.
    inactive_test: String,
    /// Raw key of `forever`, to check it still verifies.
    forever_key: String,
}

const DAY: i64 = 86_400;

/// Every key rule at once: live only, `read` and `orders:*` only, at most 30
/// days (so an expiry is required too).
fn policy() -> Value {
    json!({"on_leak": "notify", "max_lifetime_seconds": 30 * DAY,
           "allowed_permissions": ["read", "orders:*"], "allowed_environments": ["live"]})
}

async fn set_policy(app: &TestApp, policy: Value) {
    let r = app.send(Method::PUT, "/v1/policy", Some(policy)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

async fn create(
    app: &TestApp,
    name: &str,
    environment: &str,
    permissions: Value,
    days: Option<i64>,
) -> (String, String) {
    let mut body = json!({"name": name, "environment": environment, "permissions": permissions});
    if let Some(days) = days {
        body["expires_at"] = json!((Utc::now() + Duration::days(days)).to_rfc3339());
    }
    let r = app.post("/v1/keys", body).await;
    assert_eq!(r.status, StatusCode::CREATED, "{name}: {}", r.text);
    (
        r.body["id"].as_str().expect("id").to_string(),
        r.body["key"].as_str().expect("key").to_string(),
    )
}

async fn fleet(backend: Backend) -> Option<Fleet> {
    let app = spawn_app(backend).await?;
    let read = || json!(["read"]);
    let (fine, _) = create(&app, "fine", "live", read(), Some(10)).await;
    let (wildcard, _) = create(
        &app,
        "wildcard",
        "live",
        json!(["orders:*", "read"]),
        Some(1),
    )
    .await;
    let (bare, _) = create(&app, "bare", "live", json!([]), Some(29)).await;
    let (extra_permission, _) = create(
        &app,
        "extra",
        "live",
        json!(["read", "delete-data"]),
        Some(10),
    )
    .await;
    let (unlisted, _) = create(&app, "unlisted", "live", json!(["orders:read"]), Some(10)).await;
    let (test_env, _) = create(&app, "test", "test", read(), Some(10)).await;
    let (forever, forever_key) = create(&app, "forever", "live", read(), None).await;
    let (long, _) = create(&app, "long", "live", read(), Some(60)).await;
    let (inactive_test, _) = create(&app, "inactive", "test", read(), Some(10)).await;
    let r = app
        .post(&format!("/v1/keys/{inactive_test}/deactivate"), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    Some(Fleet {
        app,
        fine,
        wildcard,
        bare,
        extra_permission,
        unlisted,
        test_env,
        forever,
        long,
        inactive_test,
        forever_key,
    })
}

/// Every page of `GET /v1/keys?<query>` (with `limit`), as key views, asserting
/// each page holds at most `limit` keys.
async fn walk(app: &TestApp, token: &str, query: &str, limit: usize) -> Vec<Value> {
    let mut keys = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let mut path = format!("/v1/keys?{query}&limit={limit}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let r = app.send_as(token, Method::GET, &path, None).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.text);
        let page = r.body["keys"].as_array().expect("keys");
        assert!(page.len() <= limit, "{path}: {}", r.text);
        keys.extend(page.iter().cloned());
        match r.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return keys,
        }
    }
    panic!("{query}: more than 100 pages");
}

fn ids(keys: &[Value]) -> Vec<String> {
    keys.iter()
        .map(|k| k["id"].as_str().expect("id").to_string())
        .collect()
}

/// The ids `GET /v1/keys?<query>` lists, across pages of 100.
async fn listed(app: &TestApp, query: &str) -> Vec<String> {
    ids(&walk(app, &app.token, query, 100).await)
}

/// `wanted`, in the list's order (newest first), from `all` in that order.
fn newest_first(all: &[String], wanted: &[&String]) -> Vec<String> {
    all.iter()
        .filter(|id| wanted.contains(id))
        .cloned()
        .collect()
}

async fn keys_that_break_the_current_policy_are_listed_by_every_rule_and_left_unchanged(
    backend: Backend,
) {
    let Some(f) = fleet(backend).await else {
        return;
    };
    let app = &f.app;
    // Another tenant's keys, which break every rule of this tenant's policy.
    let other = token("other-tenant", "bob");
    for (name, environment) in [("theirs-test", "test"), ("theirs-live", "live")] {
        let r = app
            .send_as(
                &other,
                Method::POST,
                "/v1/keys",
                Some(json!({"name": name, "environment": environment,
                            "permissions": ["delete-data", "*"]})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    }
    let before = walk(app, &app.token, "", 100).await;
    let all = listed(app, "").await;
    assert_eq!(all.len(), 9);
    assert!(
        listed(app, "breaks_policy=true").await.is_empty(),
        "no policy yet: nothing breaks it"
    );

    set_policy(app, policy()).await;
    // Made under the policy: its default expiry is exactly the longest
    // lifetime, which does not break it.
    let (defaulted, _) = create(app, "defaulted", "live", json!(["read"]), None).await;
    let all = listed(app, "").await;

    let breaking = [
        &f.extra_permission,
        &f.unlisted,
        &f.test_env,
        &f.forever,
        &f.long,
        &f.inactive_test,
    ];
    let expected = newest_first(&all, &breaking);
    assert_eq!(listed(app, "breaks_policy=true").await, expected);
    for fine in [&f.fine, &f.wildcard, &f.bare, &defaulted] {
        assert!(!expected.contains(fine));
    }

    // Page by page, each breaking key exactly once, in order.
    let paged = ids(&walk(app, &app.token, "breaks_policy=true", 1).await);
    assert_eq!(paged, expected, "limit=1 walks every breaking key once");
    assert_eq!(
        paged.iter().collect::<HashSet<_>>().len(),
        paged.len(),
        "no key twice"
    );
    let paged = ids(&walk(app, &app.token, "breaks_policy=true&status=active", 2).await);
    assert_eq!(
        paged,
        newest_first(
            &all,
            &[
                &f.extra_permission,
                &f.unlisted,
                &f.test_env,
                &f.forever,
                &f.long
            ]
        )
    );

    // With the other filters.
    assert_eq!(
        listed(app, "breaks_policy=true&no_expiry=true").await,
        vec![f.forever.clone()]
    );
    assert_eq!(
        listed(app, "breaks_policy=true&environment=test").await,
        newest_first(&all, &[&f.test_env, &f.inactive_test])
    );
    assert_eq!(
        listed(app, "breaks_policy=true&status=inactive").await,
        vec![f.inactive_test.clone()]
    );
    assert_eq!(
        listed(
            app,
            "breaks_policy=true&expires_within=45d&environment=live"
        )
        .await,
        newest_first(&all, &[&f.extra_permission, &f.unlisted])
    );

    // Each rule on its own.
    set_policy(app, json!({"allowed_environments": ["live"]})).await;
    assert_eq!(
        listed(app, "breaks_policy=true").await,
        newest_first(&all, &[&f.test_env, &f.inactive_test])
    );
    set_policy(app, json!({"allowed_environments": ["test"]})).await;
    assert_eq!(
        listed(app, "breaks_policy=true").await,
        newest_first(
            &all,
            &[
                &defaulted,
                &f.fine,
                &f.wildcard,
                &f.bare,
                &f.extra_permission,
                &f.unlisted,
                &f.forever,
                &f.long
            ]
        )
    );
    set_policy(app, json!({"allowed_permissions": ["read", "orders:*"]})).await;
    assert_eq!(
        listed(app, "breaks_policy=true").await,
        newest_first(&all, &[&f.extra_permission, &f.unlisted])
    );
    set_policy(app, json!({"allowed_permissions": []})).await;
    assert_eq!(
        listed(app, "breaks_policy=true").await,
        newest_first(
            &all,
            &[
                &defaulted,
                &f.fine,
                &f.wildcard,
                &f.extra_permission,
                &f.unlisted,
                &f.test_env,
                &f.forever,
                &f.long,
                &f.inactive_test
            ]
        ),
        "an empty catalogue: every key with a permission"
    );
    set_policy(app, json!({"require_expiry": true})).await;
    assert_eq!(
        listed(app, "breaks_policy=true").await,
        vec![f.forever.clone()]
    );
    set_policy(app, json!({"max_lifetime_seconds": 30 * DAY})).await;
    assert_eq!(
        listed(app, "breaks_policy=true").await,
        newest_first(&all, &[&f.forever, &f.long])
    );
    set_policy(app, json!({"max_lifetime_seconds": 61 * DAY})).await;
    assert_eq!(
        listed(app, "breaks_policy=true").await,
        vec![f.forever.clone()],
        "no key lives longer than 61 days"
    );
    set_policy(app, json!({"max_lifetime_seconds": 5 * DAY})).await;
    assert_eq!(
        listed(app, "breaks_policy=true").await,
        newest_first(
            &all,
            &[
                &defaulted,
                &f.fine,
                &f.bare,
                &f.extra_permission,
                &f.unlisted,
                &f.test_env,
                &f.forever,
                &f.long,
                &f.inactive_test
            ]
        ),
        "every key but the one expiring in a day"
    );

    // Nothing was changed: the keys are as they were, and still verify.
    set_policy(app, policy()).await;
    let after = walk(app, &app.token, "", 100).await;
    let after: Vec<&Value> = after
        .iter()
        .filter(|k| k["id"] != defaulted.as_str())
        .collect();
    assert_eq!(
        after,
        before.iter().collect::<Vec<_>>(),
        "keys unchanged by the policy"
    );
    let active = after.iter().filter(|k| k["status"] == "active").count();
    assert_eq!(active, 8, "all but the one deactivated before");
    assert_eq!(app.verify_code(&f.forever_key).await, "VALID");

    // The other tenant's keys are never listed here, and its own (default)
    // policy has no rules to break.
    assert!(ids(&walk(app, &other, "breaks_policy=true", 1).await).is_empty());
    assert_eq!(ids(&walk(app, &other, "", 100).await).len(), 2);
}

async fn a_policy_without_key_rules_lists_no_key_and_false_filters_nothing(backend: Backend) {
    let Some(f) = fleet(backend).await else {
        return;
    };
    let app = &f.app;
    let all = listed(app, "").await;
    assert_eq!(all.len(), 9);
    set_policy(app, policy()).await;
    assert_eq!(listed(app, "breaks_policy=true").await.len(), 6);
    assert_eq!(listed(app, "breaks_policy=false").await, all);

    // Only `on_leak`: no key rule, no key listed.
    set_policy(app, json!({"on_leak": "delete"})).await;
    assert!(listed(app, "breaks_policy=true").await.is_empty());
    set_policy(app, json!({})).await;
    assert!(listed(app, "breaks_policy=true").await.is_empty());
    assert!(listed(app, "breaks_policy=true&status=active")
        .await
        .is_empty());
    assert_eq!(listed(app, "breaks_policy=false").await, all);
}

#[tokio::test]
async fn a_bad_breaks_policy_value_is_refused_and_the_parameter_is_documented() {
    let app = spawn_sqlite_app().await;
    for value in ["yes", "1", ""] {
        let r = app.get(&format!("/v1/keys?breaks_policy={value}")).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{value}: {}",
            r.text
        );
        assert_eq!(r.code(), "validation_failed", "{}", r.text);
        assert_eq!(
            r.body["error"]["details"]["field"], "breaks_policy",
            "{}",
            r.text
        );
    }

    let document: Value = reqwest::get(app.url("/openapi.json"))
        .await
        .expect("GET /openapi.json")
        .json()
        .await
        .expect("JSON");
    let parameters = document["paths"]["/v1/keys"]["get"]["parameters"]
        .as_array()
        .expect("listKeys parameters");
    let breaks = parameters
        .iter()
        .find(|p| p["name"] == "breaks_policy")
        .unwrap_or_else(|| panic!("no breaks_policy in {parameters:?}"));
    assert_eq!(breaks["in"], "query");
    assert!(
        breaks["schema"]["type"].to_string().contains("boolean"),
        "{breaks}"
    );
    assert!(
        breaks["description"]
            .as_str()
            .is_some_and(|d| d.contains("policy")),
        "{breaks}"
    );
}
