//! GET /metrics: Prometheus text with verifications, commands, latency, projection
//! lag and index size. All apps of this test process share one recorder, so
//! counters are checked with `>=`.

use std::collections::BTreeMap;

use reqwest::{Method, StatusCode};

use crate::backend_tests;
use crate::helpers::{spawn_app, Backend};

backend_tests!(metrics_count_verifications_commands_latency_lag_and_index);

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

/// The value of the one sample with this name whose labels include `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "expected one {name} sample with {labels:?}, found {found:?}"
    );
    found[0].value
}

async fn metrics_count_verifications_commands_latency_lag_and_index(backend: Backend) {
    let Some(app) = spawn_app(backend).await else {
        return;
    };
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
            &format!("/v1/keys/key_{}/deactivate", uuid::Uuid::now_v7()),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.text);
    assert_eq!(
        app.get("/no/such/route").await.status,
        StatusCode::NOT_FOUND
    );

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
        .unwrap_or_default()
        .to_string();
    assert_eq!(content_type, "text/plain; version=0.0.4");
    let text = response.text().await.expect("body");
    let samples = parse(&text);

    let verifications = "keyledger_verifications_total";
    assert!(
        value(&samples, verifications, &[("code", "VALID")]) >= 2.0,
        "{text}"
    );
    assert!(
        value(&samples, verifications, &[("code", "NOT_FOUND")]) >= 1.0,
        "{text}"
    );
    assert!(
        text.contains("# TYPE keyledger_verifications_total counter"),
        "{text}"
    );

    let commands = "keyledger_commands_total";
    for (command, outcome) in [
        ("create", "ok"),
        ("deactivate", "ok"),
        ("deactivate", "rejected"),
    ] {
        let v = value(
            &samples,
            commands,
            &[("command", command), ("outcome", outcome)],
        );
        assert!(v >= 1.0, "{command} {outcome}: {text}");
    }
    // Reads and verification are not commands.
    assert!(
        !samples
            .iter()
            .any(|s| s.name == commands && s.labels.get("command").is_none_or(|c| c == "verify")),
        "{text}"
    );

    let latency = "keyledger_http_request_duration_seconds";
    assert!(
        text.contains(&format!("# TYPE {latency} histogram")),
        "{text}"
    );
    let verify_route = [
        ("method", "POST"),
        ("route", "/v1/keys/verify"),
        ("status", "200"),
    ];
    assert!(value(&samples, &format!("{latency}_count"), &verify_route) >= 3.0);
    let mut inf = verify_route.to_vec();
    inf.push(("le", "+Inf"));
    assert!(value(&samples, &format!("{latency}_bucket"), &inf) >= 3.0);
    let mut smallest = verify_route.to_vec();
    smallest.push(("le", "0.00005"));
    assert!(value(&samples, &format!("{latency}_bucket"), &smallest) >= 0.0);
    let created = [("method", "POST"), ("route", "/v1/keys"), ("status", "201")];
    assert!(value(&samples, &format!("{latency}_count"), &created) >= 1.0);
    let unmatched = [("method", "GET"), ("route", "unmatched"), ("status", "404")];
    assert!(value(&samples, &format!("{latency}_count"), &unmatched) >= 1.0);

    // This node's own gauges: every command waits for its projections, so no lag.
    for projection in ["key_list", "audit_log", "verification"] {
        let lag = value(
            &samples,
            "keyledger_projection_lag_events",
            &[("projection", projection)],
        );
        assert!(lag >= 0.0, "{projection}: {text}");
    }
    assert!(
        value(&samples, "keyledger_verification_index_keys", &[]) >= 1.0,
        "{text}"
    );

    let doc = app.get("/openapi.json").await;
    assert!(
        doc.body["paths"]["/metrics"]["get"].is_object(),
        "{}",
        doc.text
    );
    app.stop().await;
}
