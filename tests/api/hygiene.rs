//! The hygiene filters of `GET /v1/keys`: `unused_for`, `never_used`,
//! `expires_within`, `no_expiry`, each alone, combined with each other and with
//! `status` and `environment`, and across pages. Time is moved on the server's
//! clock (a month, without sleeping); usage becomes `last_used_at` through the
//! write-behind flush, which these servers run every 200 ms.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::backend_tests;
use crate::helpers::{spawn_sqlite_app, start, Backend, TestApp, TestStore};

backend_tests!(
    each_hygiene_filter_lists_exactly_the_keys_it_names,
    hygiene_filters_combine_with_each_other_and_with_status_and_environment,
    a_filtered_list_pages_with_its_cursor_through_exactly_the_matching_keys,
);

/// The keys of a tenant a month into its life, newest first in `all`.
struct Fleet {
    app: TestApp,
    /// Created and used at the start, not since.
    stale_used: String,
    /// Created at the start, never used.
    stale_never: String,
    /// Created at the start to expire a day later; never used.
    lapsed: String,
    /// Created at the start, used only after the month.
    revived: String,
    /// Created and used after the month.
    fresh_used: String,
    /// Created after the month, never used.
    fresh_never: String,
    /// Created after the month, expiring 10 days later; never used.
    soon: String,
    /// Created after the month, expiring 60 days later; never used.
    later: String,
}

impl Fleet {
    /// Ids of `keys`, newest first (the list's order).
    fn newest_first(&self, keys: &[&String]) -> Vec<String> {
        self.all()
            .into_iter()
            .filter(|id| keys.contains(&id))
            .collect()
    }

    fn all(&self) -> Vec<String> {
        [
            &self.later,
            &self.soon,
            &self.fresh_never,
            &self.fresh_used,
            &self.revived,
            &self.lapsed,
            &self.stale_never,
            &self.stale_used,
        ]
        .into_iter()
        .cloned()
        .collect()
    }
}

async fn fleet(backend: Backend) -> Option<Fleet> {
    let store = TestStore::new(backend).await?;
    let app = start(store, |c| {
        c.usage_flush_interval = Duration::from_millis(200)
    })
    .await;
    let day = chrono::Duration::days(1);

    let (stale_used, stale_key) = app.create_key("stale-used").await;
    let (stale_never, _) = app.create_key("stale-never").await;
    let lapsed = create_expiring(&app, "lapsed", app.clock.now() + day).await;
    let (revived, revived_key) = app.create_key("revived").await;
    assert_eq!(app.verify_code(&stale_key).await, "VALID");
    wait_for_usage(&app, &stale_used, 1).await;

    app.clock.advance(day * 31);
    assert_eq!(app.verify_code(&revived_key).await, "VALID");
    let (fresh_used, fresh_key) = app.create_key("fresh-used").await;
    assert_eq!(app.verify_code(&fresh_key).await, "VALID");
    let (fresh_never, _) = app.create_key("fresh-never").await;
    let soon = create_expiring(&app, "soon", app.clock.now() + day * 10).await;
    let later = create_expiring(&app, "later", app.clock.now() + day * 60).await;
    wait_for_usage(&app, &revived, 1).await;
    wait_for_usage(&app, &fresh_used, 1).await;

    let lapsed_view = app.get(&format!("/v1/keys/{lapsed}")).await;
    assert_eq!(
        lapsed_view.body["status"], "expired",
        "{}",
        lapsed_view.text
    );
    // The stale key was really last used a month ago, the revived one now.
    let last_used = |view: &Value| -> DateTime<Utc> {
        view["last_used_at"]
            .as_str()
            .expect("last_used_at")
            .parse()
            .expect("RFC 3339")
    };
    let now = app.clock.now();
    let stale_view = app.get(&format!("/v1/keys/{stale_used}")).await.body;
    assert!(now - last_used(&stale_view) > day * 30, "{stale_view}");
    let revived_view = app.get(&format!("/v1/keys/{revived}")).await.body;
    assert!(now - last_used(&revived_view) < day, "{revived_view}");

    Some(Fleet {
        app,
        stale_used,
        stale_never,
        lapsed,
        revived,
        fresh_used,
        fresh_never,
        soon,
        later,
    })
}

async fn create_expiring(app: &TestApp, name: &str, at: DateTime<Utc>) -> String {
    let r = app
        .post(
            "/v1/keys",
            json!({"name": name, "expires_at": at.to_rfc3339()}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r.body["id"].as_str().expect("id").to_string()
}

/// Waits (bounded) until the key's flushed usage count is `count`.
async fn wait_for_usage(app: &TestApp, id: &str, count: i64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let view = app.get(&format!("/v1/keys/{id}")).await;
        assert_eq!(view.status, StatusCode::OK, "{}", view.text);
        if view.body["usage_count"] == count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "usage not flushed within 10 s: {}",
            view.text
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ids `GET /v1/keys?{query}` lists (one page of up to 100), asserting 200
/// and that it is the last page.
async fn listed(app: &TestApp, query: &str) -> Vec<String> {
    let r = app.get(&format!("/v1/keys?limit=100&{query}")).await;
    assert_eq!(r.status, StatusCode::OK, "{query}: {}", r.text);
    assert_eq!(r.body["next_cursor"], Value::Null, "{query}: {}", r.text);
    ids(&r.body)
}

fn ids(body: &Value) -> Vec<String> {
    body["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .map(|k| k["id"].as_str().expect("id").to_string())
        .collect()
}

async fn each_hygiene_filter_lists_exactly_the_keys_it_names(backend: Backend) {
    let Some(f) = fleet(backend).await else {
        return;
    };
    let app = &f.app;
    assert_eq!(listed(app, "").await, f.all());

    // Unused for 30 days: last used a month ago, or never used and created
    // then; not the key created then but used since.
    let unused = f.newest_first(&[&f.lapsed, &f.stale_never, &f.stale_used]);
    assert_eq!(listed(app, "unused_for=30d").await, unused);
    assert_eq!(
        listed(app, "unused_for=43200m").await,
        unused,
        "minutes are a duration too"
    );
    assert_eq!(
        listed(app, "unused_for=32d").await,
        Vec::<String>::new(),
        "nothing is 32 days old"
    );
    assert_eq!(
        listed(app, "unused_for=1h").await,
        unused,
        "used an hour ago is not unused for an hour"
    );

    let never = f.newest_first(&[&f.later, &f.soon, &f.fresh_never, &f.lapsed, &f.stale_never]);
    assert_eq!(listed(app, "never_used=true").await, never);
    assert_eq!(
        listed(app, "never_used=false").await,
        f.all(),
        "false filters nothing"
    );

    // Expiring within: after now and at or before now + d; the lapsed key has
    // expired already and is not "expiring".
    assert_eq!(
        listed(app, "expires_within=14d").await,
        vec![f.soon.clone()]
    );
    assert_eq!(
        listed(app, "expires_within=90d").await,
        f.newest_first(&[&f.later, &f.soon])
    );
    assert_eq!(listed(app, "expires_within=1d").await, Vec::<String>::new());

    assert_eq!(
        listed(app, "no_expiry=true").await,
        f.newest_first(&[
            &f.fresh_never,
            &f.fresh_used,
            &f.revived,
            &f.stale_never,
            &f.stale_used,
        ])
    );
    assert_eq!(
        listed(app, "no_expiry=false").await,
        f.all(),
        "false filters nothing"
    );
    f.app.stop().await;
}

async fn hygiene_filters_combine_with_each_other_and_with_status_and_environment(backend: Backend) {
    let Some(f) = fleet(backend).await else {
        return;
    };
    let app = &f.app;
    assert_eq!(
        listed(app, "unused_for=30d&never_used=true").await,
        f.newest_first(&[&f.lapsed, &f.stale_never])
    );
    assert_eq!(
        listed(app, "unused_for=30d&never_used=true&status=active").await,
        vec![f.stale_never.clone()]
    );
    assert_eq!(
        listed(app, "unused_for=30d&status=expired").await,
        vec![f.lapsed.clone()]
    );
    assert_eq!(
        listed(app, "never_used=true&no_expiry=true").await,
        f.newest_first(&[&f.fresh_never, &f.stale_never])
    );
    assert_eq!(
        listed(app, "unused_for=30d&no_expiry=true").await,
        f.newest_first(&[&f.stale_never, &f.stale_used])
    );
    assert_eq!(
        listed(app, "expires_within=90d&never_used=true&environment=live").await,
        f.newest_first(&[&f.later, &f.soon])
    );
    assert_eq!(
        listed(app, "expires_within=90d&environment=test").await,
        Vec::<String>::new()
    );
    assert_eq!(
        listed(app, "expires_within=90d&no_expiry=true").await,
        Vec::<String>::new(),
        "an expiry within 90 days and none at all exclude each other"
    );

    // A deactivated key is still unused; `status` then tells them apart.
    let r = app
        .post(&format!("/v1/keys/{}/deactivate", f.stale_used), json!({}))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        listed(app, "unused_for=30d&status=inactive").await,
        vec![f.stale_used.clone()]
    );
    assert_eq!(
        listed(app, "unused_for=30d&status=active").await,
        vec![f.stale_never.clone()]
    );
    f.app.stop().await;
}

async fn a_filtered_list_pages_with_its_cursor_through_exactly_the_matching_keys(backend: Backend) {
    let Some(f) = fleet(backend).await else {
        return;
    };
    let app = &f.app;
    let never = f.newest_first(&[&f.later, &f.soon, &f.fresh_never, &f.lapsed, &f.stale_never]);
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            None => "/v1/keys?never_used=true&limit=2".to_string(),
            Some(c) => format!("/v1/keys?never_used=true&limit=2&cursor={c}"),
        };
        let r = app.get(&path).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        pages.push(ids(&r.body));
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
        assert!(pages.len() <= 3, "more pages than keys: {pages:?}");
    }
    assert_eq!(
        pages,
        [
            never[0..2].to_vec(),
            never[2..4].to_vec(),
            never[4..].to_vec()
        ]
    );

    // Two filters, a key per page: the cursor skips the keys between them
    // that do not match, and the last page offers none.
    let r = app
        .get("/v1/keys?unused_for=30d&no_expiry=true&limit=1")
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(ids(&r.body), vec![f.stale_never.clone()]);
    let cursor = r.body["next_cursor"].as_str().expect("a cursor");
    let r = app
        .get(&format!(
            "/v1/keys?unused_for=30d&no_expiry=true&limit=1&cursor={cursor}"
        ))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(ids(&r.body), vec![f.stale_used.clone()]);
    assert_eq!(r.body["next_cursor"], Value::Null, "{}", r.text);
    f.app.stop().await;
}

/// Refused before any store is touched: once, on SQLite.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_hygiene_filter_values_are_422_naming_the_parameter() {
    let app = spawn_sqlite_app().await;
    app.create_key("k").await;
    // Shaped like a raw key: a value is never echoed back.
    let secretish = "kl_live_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcd2W1EFr";
    let cases = [
        ("unused_for=abc", "unused_for"),
        ("unused_for=", "unused_for"),
        ("unused_for=30", "unused_for"),
        ("unused_for=-30d", "unused_for"),
        ("unused_for=101y", "unused_for"),
        ("unused_for=36525d%201s", "unused_for"),
        ("unused_for=99999999999999999999999d", "unused_for"),
        (&format!("unused_for={secretish}"), "unused_for"),
        ("expires_within=soon", "expires_within"),
        ("expires_within=1000y", "expires_within"),
        ("expires_within=", "expires_within"),
        ("never_used=maybe", "never_used"),
        ("never_used=1", "never_used"),
        ("never_used=", "never_used"),
        ("no_expiry=maybe", "no_expiry"),
        ("no_expiry=yes", "no_expiry"),
        // Checked whatever else the query holds.
        (
            "status=active&never_used=true&unused_for=soon",
            "unused_for",
        ),
    ];
    for (query, field) in cases {
        let r = app.get(&format!("/v1/keys?{query}")).await;
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{query}: {}",
            r.text
        );
        assert_eq!(r.code(), "validation_failed", "{query}: {}", r.text);
        assert_eq!(
            r.body["error"]["details"]["field"], field,
            "{query}: {}",
            r.text
        );
        assert!(!r.text.contains(secretish), "{query} echoed: {}", r.text);
    }
    // The longest durations still allowed, and a compound one.
    for query in [
        "unused_for=100y",
        "expires_within=100y",
        "unused_for=36525d",
        "unused_for=1h%2030m",
        "expires_within=0s",
    ] {
        let r = app.get(&format!("/v1/keys?{query}")).await;
        assert_eq!(r.status, StatusCode::OK, "{query}: {}", r.text);
    }
    app.stop().await;
}

/// The served OpenAPI document describes the filters, typed as they parse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_the_hygiene_filters() {
    let app = spawn_sqlite_app().await;
    let doc = app.get("/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    let params = doc.body["paths"]["/v1/keys"]["get"]["parameters"]
        .as_array()
        .expect("listKeys parameters")
        .clone();
    let param = |name: &str| -> Value {
        params
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no `{name}` parameter: {params:?}"))
            .clone()
    };
    for (name, ty) in [
        ("unused_for", "string"),
        ("never_used", "boolean"),
        ("expires_within", "string"),
        ("no_expiry", "boolean"),
    ] {
        let p = param(name);
        assert_eq!(p["in"], "query", "{p}");
        assert_ne!(p["required"], true, "{p}");
        let schema = &p["schema"];
        let types = match &schema["type"] {
            Value::Array(types) => types.clone(),
            one => vec![one.clone()],
        };
        assert!(types.contains(&json!(ty)), "{name}: {p}");
        assert!(
            p["description"].as_str().is_some_and(|d| !d.is_empty()),
            "{name} is described: {p}"
        );
    }
    app.stop().await;
}
