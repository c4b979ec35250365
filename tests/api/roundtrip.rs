//! What the API accepts, the store reads back: a property test over requests
//! of every shape the validators admit (deep and wide metadata, every Unicode
//! plane, numbers at the edges of JSON's range), on each store. Each created
//! or updated key must read back exactly as sent, through the key list and
//! through its history, and replaying every event must give the live tables
//! again (`projections check`) with every hash chain intact.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRunner};
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};

use crate::backend_tests;
use crate::helpers::Backend;

backend_tests!(every_accepted_request_reads_back_and_replays_identically);

/// Creates generated per store (each is also read back twice).
const CASES: usize = 48;

/// Any character the text rules admit: every plane, no control character.
fn text_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => proptest::char::range(' ', '~'),
        2 => proptest::char::any(),
        1 => proptest::char::range('\u{10000}', '\u{10FFFF}'),
    ]
    .prop_filter("no control characters", |c| !c.is_control())
}

fn name() -> impl Strategy<Value = String> {
    proptest::collection::vec(text_char(), 1..=100)
        .prop_map(|cs| cs.into_iter().collect::<String>())
        .prop_filter("not only whitespace", |s| !s.trim().is_empty())
}

fn description() -> impl Strategy<Value = Option<String>> {
    let c = prop_oneof![8 => text_char(), 1 => Just('\n'), 1 => Just('\t')];
    proptest::option::of(
        proptest::collection::vec(c, 0..=200).prop_map(|cs| cs.into_iter().collect()),
    )
}

/// Numbers at the edges: integer limits, the largest and smallest doubles
/// (subnormals too), negative zero, and anything finite in between.
fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(i64::MIN)),
        Just(json!(i64::MAX)),
        Just(json!(u64::MAX)),
        Just(json!(0)),
        Just(json!(-0.0)),
        Just(json!(f64::MAX)),
        Just(json!(f64::MIN)),
        Just(json!(f64::MIN_POSITIVE)),
        Just(json!(5e-324)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        (proptest::num::f64::NORMAL | proptest::num::f64::SUBNORMAL | proptest::num::f64::ZERO)
            .prop_map(|f| json!(f)),
    ]
}

/// Metadata strings and keys may hold control characters (JSON escapes
/// them), but no NUL.
fn json_string() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![4 => text_char(), 1 => proptest::char::range('\u{1}', '\u{1f}')],
        0..12,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        json_string().prop_map(Value::String),
    ]
}

fn wide_value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map(json_string(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A value nested `levels` deep around a leaf, alternating arrays and
/// objects: the deepest metadata the rules admit is 32 levels.
fn deep_value() -> impl Strategy<Value = Value> {
    (1usize..=31, leaf(), json_string()).prop_map(|(levels, leaf, key)| {
        (0..levels).fold(leaf, |inner, level| {
            if level % 2 == 0 {
                Value::Array(vec![inner])
            } else {
                let mut m = Map::new();
                m.insert(key.clone(), inner);
                Value::Object(m)
            }
        })
    })
}

fn metadata() -> impl Strategy<Value = Option<Value>> {
    proptest::option::of(
        proptest::collection::btree_map(
            json_string(),
            prop_oneof![wide_value(), deep_value()],
            0..6,
        )
        .prop_map(|m| Value::Object(m.into_iter().collect()))
        .prop_filter("at most 4 KiB", |v| v.to_string().len() <= 4096),
    )
}

fn create_body() -> impl Strategy<Value = Value> {
    (name(), description(), metadata()).prop_map(|(name, description, metadata)| {
        let mut body = json!({"name": name});
        if let Some(d) = description {
            body["description"] = json!(d);
        }
        if let Some(m) = metadata {
            body["metadata"] = m;
        }
        body
    })
}

fn sample<T: std::fmt::Debug>(runner: &mut TestRunner, strategy: &impl Strategy<Value = T>) -> T {
    strategy
        .new_tree(runner)
        .expect("a strategy that generates")
        .current()
}

/// The fields a request set, as the key shows them.
fn assert_reads_back(sent: &Value, view: &Value, context: &str) {
    assert_eq!(view["name"], sent["name"], "{context}");
    assert_eq!(
        view["description"],
        sent.get("description").cloned().unwrap_or(Value::Null),
        "{context}"
    );
    assert_eq!(
        view["metadata"],
        sent.get("metadata").cloned().unwrap_or(Value::Null),
        "{context}"
    );
}

async fn every_accepted_request_reads_back_and_replays_identically(backend: Backend) {
    let Some(app) = crate::helpers::spawn_app(backend).await else {
        return;
    };
    // Deterministic: a failure names its case and reproduces.
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let bodies = create_body();
    let mut created = Vec::new();
    for case in 0..CASES {
        let body = sample(&mut runner, &bodies);
        let r = app.post("/v1/keys", body.clone()).await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "case {case}: {body} -> {}",
            r.text
        );
        let id = r.body["id"].as_str().expect("id").to_string();
        assert_reads_back(&body, &r.body, &format!("case {case}, create response"));
        created.push((id, body.clone(), body));
    }
    // The generator must reach what the property is about.
    let deepest = created
        .iter()
        .filter_map(|(_, b, _)| b.get("metadata"))
        .map(keyledger_domain::json::depth)
        .max()
        .unwrap_or(0);
    assert!(
        deepest >= 16,
        "cases reach deep metadata (deepest {deepest})"
    );
    let astral = created.iter().any(|(_, b, _)| {
        b["name"]
            .as_str()
            .is_some_and(|n| n.chars().any(|c| c > '\u{FFFF}'))
    });
    assert!(astral, "cases reach the supplementary planes");

    // Updates take the same fields through the other event.
    for (case, (id, _, sent)) in created.iter_mut().enumerate().step_by(3) {
        let update = sample(&mut runner, &bodies);
        let r = app
            .send(
                Method::PATCH,
                &format!("/v1/keys/{id}"),
                Some(update.clone()),
            )
            .await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "update {case}: {update} -> {}",
            r.text
        );
        let mut merged = update.clone();
        if update.get("description").is_none() {
            if let Some(d) = sent.get("description") {
                merged["description"] = d.clone();
            }
        }
        if update.get("metadata").is_none() {
            if let Some(m) = sent.get("metadata") {
                merged["metadata"] = m.clone();
            }
        }
        *sent = merged;
    }

    // Read back from a restarted node: the index, the key list and the
    // history all come from what was stored.
    let app = app.restart().await;
    for (case, (id, original, sent)) in created.iter().enumerate() {
        let view = app.get(&format!("/v1/keys/{id}")).await;
        assert_eq!(view.status, StatusCode::OK, "case {case}: {}", view.text);
        assert_reads_back(sent, &view.body, &format!("case {case}, key list"));
        let history = app.key_events(id).await;
        assert_eq!(history[0]["type"], "KeyCreated", "case {case}");
        assert_reads_back(
            original,
            &history[0]["data"],
            &format!("case {case}, history"),
        );
    }

    let store = keyledger::app::open_store(&app.store.config())
        .await
        .expect("open store");
    let projections = keyledger_projections::Projections::unloaded(store.projection_db());
    let diffs = keyledger::rebuild::check(&store, &projections)
        .await
        .expect("projections check");
    assert_eq!(
        diffs,
        Vec::<String>::new(),
        "replaying the events gives the live tables"
    );
    let chains = keyledger::integrity::verify_chains(&store, &projections)
        .await
        .expect("audit verify");
    assert_eq!(chains.first_broken, None);
    assert!(chains.events >= CASES as u64, "{chains:?}");
    store.close().await;
    app.stop().await;
}
