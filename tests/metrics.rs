//! GET /metrics: Prometheus text with verifications, commands, latency, projection
//! lag and index size.
//!
//! A test binary of its own: the recorder is one per process, so in the
//! behavioural suite (tests/api) every other test's requests would add to the
//! counters this test measures. Here nothing else runs, its backends take
//! turns (`SERIAL`), and every counter is checked by the exact amount it moved
//! between two scrapes.

#[path = "api/helpers.rs"]
#[allow(dead_code)]
mod helpers;

use std::collections::BTreeMap;
use std::time::Duration;

use helpers::{start, Backend, TestApp, TestStore, TENANT};
use keyledger_domain::{Environment, KeyPrefix, RawKey};
use reqwest::{Method, StatusCode};
use serde_json::json;
use sqlx::Connection;

backend_tests!(metrics_count_verifications_commands_latency_lag_and_index);

/// One backend at a time: they share the process's counters.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One sample line: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the sample lines of a Prometheus text exposition (comments skipped).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("sample value");
            let value: f64 = value.parse().expect("numeric value");
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, rest)) => {
                    let body = rest.strip_suffix('}').expect("closing brace");
                    let labels = body
                        .split("\",")
                        .filter(|p| !p.is_empty())
                        .map(|pair| {
                            let (k, v) = pair.split_once("=\"").expect("label pair");
                            (k.to_string(), v.trim_end_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
            };
            Sample {
                name,
                labels,
                value,
            }
        })
        .collect()
}

/// A parsed scrape.
struct Scrape {
    text: String,
    samples: Vec<Sample>,
}

impl Scrape {
    /// The one sample with this name whose labels include `labels`, if any.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self
            .samples
            .iter()
            .filter(|s| s.name == name)
            .filter(|s| {
                labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect();
        assert!(
            found.len() <= 1,
            "more than one {name} sample with {labels:?}: {found:?}"
        );
        found.first().map(|s| s.value)
    }

    /// The value of the one sample with this name and labels, which must exist.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels)
            .unwrap_or_else(|| panic!("no {name} sample with {labels:?}:\n{}", self.text))
    }

    /// As `value`, 0 for a series not yet created (counters appear on first use).
    fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).unwrap_or(0.0)
    }
}

async fn scrape(app: &TestApp) -> Scrape {
    // No credentials needed.
    let response = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    assert_eq!(content_type.as_deref(), Some("text/plain; version=0.0.4"));
    let text = response.text().await.expect("body");
    Scrape {
        samples: parse(&text),
        text,
    }
}

const VERIFICATIONS: &str = "keyledger_verifications_total";
const COMMANDS: &str = "keyledger_commands_total";
const LATENCY: &str = "keyledger_http_request_duration_seconds";
const LAG: &str = "keyledger_projection_lag_events";
const INDEX_KEYS: &str = "keyledger_verification_index_keys";
const PROJECTIONS: [&str; 3] = ["key_list", "audit_log", "verification"];
const CODES: [&str; 6] = [
    "VALID",
    "NOT_FOUND",
    "DISABLED",
    "EXPIRED",
    "WRONG_ENVIRONMENT",
    "INSUFFICIENT_PERMISSIONS",
];
const COMMAND_NAMES: [&str; 6] = [
    "create",
    "update",
    "delete",
    "deactivate",
    "reactivate",
    "rotate",
];

/// Appends a `KeyCreated` straight into the database, where the node does not
/// hear of it (no notification; the test's poll interval is an hour). Returns
/// its raw key, or `None` on KurrentDB (whose subscription would tell the node).
async fn append_behind_the_nodes_back(app: &TestApp) -> Option<String> {
    let raw = RawKey::generate(&KeyPrefix::default(), Environment::Live, &mut rand::rng());
    let parsed = raw.parsed();
    let payload = json!({"KeyCreated": {
        "tenant": TENANT,
        "key_hash": parsed.hash().to_hex(),
        "display_prefix": parsed.display_prefix(),
        "name": "behind-the-back",
        "permissions": "keys:read",
        "created_by": "elsewhere",
        "created_at": "2026-01-01T00:00:00Z"
    }});
    let metadata =
        json!({"actor": "elsewhere", "tenant": TENANT, "occurred_at": "2026-01-01T00:00:00Z"});
    let id = format!("key_{}", uuid::Uuid::now_v7().simple());
    match app.store.backend {
        Backend::Sqlite => {
            let path = app.store.projections_sqlite_path();
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                .await
                .expect("open");
            // The position comes from the table's trigger.
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                 event_version, payload, metadata) VALUES ('ApiKey', $1, 1, 'KeyCreated', '1.0', $2, $3)",
            )
            .bind(&id)
            .bind(&payload)
            .bind(&metadata)
            .execute(&mut c)
            .await
            .expect("insert");
            c.close().await.expect("close");
        }
        Backend::Postgres => {
            let url = app.store.database_url.clone().expect("url");
            let mut c = sqlx::PgConnection::connect(&url).await.expect("connect");
            let mut tx = c.begin().await.expect("begin");
            // Numbered as group commit numbers, under the numbering lock, but
            // without the notification.
            sqlx::query("SELECT pg_advisory_xact_lock(7305425)")
                .execute(&mut *tx)
                .await
                .expect("lock");
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                 event_version, payload, metadata, global_position) VALUES ('ApiKey', $1, 1, \
                 'KeyCreated', '1.0', $2, $3, (SELECT COALESCE(MAX(global_position), 0) + 1 FROM events))",
            )
            .bind(&id)
            .bind(&payload)
            .bind(&metadata)
            .execute(&mut *tx)
            .await
            .expect("insert");
            tx.commit().await.expect("commit");
            c.close().await.expect("close");
        }
        #[cfg(feature = "kurrentdb")]
        Backend::Kurrent => return None,
    }
    Some(raw.expose().to_string())
}

async fn metrics_count_verifications_commands_latency_lag_and_index(backend: Backend) {
    let _serial = SERIAL.lock().await;
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    // The node hears only of its own commands (SQLite has no notifications,
    // PostgreSQL's come from appends this test does not make).
    let app = start(store, |c| c.poll_interval = Duration::from_secs(3600)).await;
    let before = scrape(&app).await;

    let (id, key) = app.create_key("metered").await;
    assert_eq!(app.verify_code(&key).await, "VALID");
    assert_eq!(app.verify_code(&key).await, "VALID");
    assert_eq!(app.verify_code("kl_live_garbage").await, "NOT_FOUND");
    let r = app
        .send(Method::POST, &format!("/v1/keys/{id}/deactivate"), None)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // A command the service turns down, and a path no route matches.
    let r = app
        .send(
            Method::POST,
            &format!("/v1/keys/key_{}/deactivate", uuid::Uuid::now_v7().simple()),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(
        app.get("/no/such/route").await.status,
        StatusCode::NOT_FOUND
    );

    let after = scrape(&app).await;
    let delta = |name: &str, labels: &[(&str, &str)]| {
        after.counter(name, labels) - before.counter(name, labels)
    };
    let text = &after.text;

    assert!(
        text.contains(&format!("# TYPE {VERIFICATIONS} counter")),
        "{text}"
    );
    for code in CODES {
        let want = match code {
            "VALID" => 2.0,
            "NOT_FOUND" => 1.0,
            _ => 0.0,
        };
        assert_eq!(
            delta(VERIFICATIONS, &[("code", code)]),
            want,
            "{code}: {text}"
        );
    }

    for command in COMMAND_NAMES {
        for outcome in ["ok", "rejected", "error"] {
            let want = match (command, outcome) {
                ("create", "ok") | ("deactivate", "ok") | ("deactivate", "rejected") => 1.0,
                _ => 0.0,
            };
            assert_eq!(
                delta(COMMANDS, &[("command", command), ("outcome", outcome)]),
                want,
                "{command} {outcome}: {text}"
            );
        }
    }
    // Reads and verification are not commands.
    assert!(
        !after.samples.iter().any(|s| s.name == COMMANDS
            && s.labels
                .get("command")
                .is_none_or(|c| !COMMAND_NAMES.contains(&c.as_str()))),
        "{text}"
    );

    assert!(
        text.contains(&format!("# TYPE {LATENCY} histogram")),
        "{text}"
    );
    let count = format!("{LATENCY}_count");
    let bucket = format!("{LATENCY}_bucket");
    let verify_route = [
        ("method", "POST"),
        ("route", "/v1/keys/verify"),
        ("status", "200"),
    ];
    assert_eq!(delta(&count, &verify_route), 3.0, "{text}");
    assert!(
        delta(&format!("{LATENCY}_sum"), &verify_route) > 0.0,
        "{text}"
    );
    // Buckets are cumulative: from the smallest to +Inf they never fall, and
    // +Inf holds all three.
    let mut previous = 0.0;
    for le in [
        "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025",
        "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "+Inf",
    ] {
        let mut labels = verify_route.to_vec();
        labels.push(("le", le));
        let moved = delta(&bucket, &labels);
        assert!(
            (previous..=3.0).contains(&moved),
            "bucket le={le} moved by {moved} after {previous}: {text}"
        );
        previous = moved;
    }
    assert_eq!(previous, 3.0, "+Inf counts every request: {text}");
    let created = [("method", "POST"), ("route", "/v1/keys"), ("status", "201")];
    assert_eq!(delta(&count, &created), 1.0, "{text}");
    let unmatched = [("method", "GET"), ("route", "unmatched"), ("status", "404")];
    assert_eq!(delta(&count, &unmatched), 1.0, "{text}");
    // The first scrape was recorded once its answer was ready: in this one.
    let scrapes = [("method", "GET"), ("route", "/metrics"), ("status", "200")];
    assert_eq!(delta(&count, &scrapes), 1.0, "{text}");

    // This node's own gauges: every command waited for its projections, so no
    // lag, and the index holds the one key.
    for projection in PROJECTIONS {
        assert_eq!(
            after.value(LAG, &[("projection", projection)]),
            0.0,
            "{projection}: {text}"
        );
    }
    assert_eq!(after.value(INDEX_KEYS, &[]), 1.0, "{text}");

    // An event the node has not heard of is lag on every projection, until a
    // command of its own makes it catch up.
    if let Some(elsewhere) = append_behind_the_nodes_back(&app).await {
        let behind = scrape(&app).await;
        for projection in PROJECTIONS {
            assert_eq!(
                behind.value(LAG, &[("projection", projection)]),
                1.0,
                "{projection}: {}",
                behind.text
            );
        }
        assert_eq!(behind.value(INDEX_KEYS, &[]), 1.0, "{}", behind.text);
        assert_eq!(app.verify_code(&elsewhere).await, "NOT_FOUND");
        app.create_key("catching-up").await;
        let caught_up = scrape(&app).await;
        for projection in PROJECTIONS {
            assert_eq!(
                caught_up.value(LAG, &[("projection", projection)]),
                0.0,
                "{projection}: {}",
                caught_up.text
            );
        }
        assert_eq!(caught_up.value(INDEX_KEYS, &[]), 3.0, "{}", caught_up.text);
        assert_eq!(app.verify_code(&elsewhere).await, "VALID");
    }

    let doc = app.get("/openapi.json").await;
    assert!(
        doc.body["paths"]["/metrics"]["get"].is_object(),
        "{}",
        doc.text
    );
    app.stop().await;
}
