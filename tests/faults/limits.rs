//! Usage limits under faults: nodes killed with SIGKILL while clients spend
//! credits and hit a rate limit on every node, and the store going away
//! under a node that holds a share and a block.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{Duration as Span, Utc};
use rand::Rng;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::chaos::{spawn_node, Node};
use crate::helpers::{start, token, Backend, TestStore};

const CREDITS: u64 = 400;
const INCREMENT: u64 = 60;
const LIMIT: u64 = 250;
/// 30 days: a run stays inside one window but for a boundary every 30 days.
const WINDOW_MS: i64 = 2_592_000_000;

/// Verifies `key` on any live node until `stop`; counts `VALID` answers.
async fn spender(
    nodes: Arc<Mutex<Vec<String>>>,
    key: String,
    stop: Arc<AtomicBool>,
    valid: Arc<AtomicU64>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    while !stop.load(Ordering::SeqCst) {
        let live = nodes.lock().expect("lock").clone();
        let Some(node) = live
            .get(rand::rng().random_range(0..live.len().max(1)))
            .cloned()
        else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(r) = http
            .post(format!("{node}/v1/keys/verify"))
            .json(&json!({"key": key}))
            .send()
            .await
        else {
            continue;
        };
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if body["code"] == "VALID" {
            valid.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn post(node: &str, token: &str, path: &str, body: Value) -> Option<Value> {
    let r = reqwest::Client::new()
        .post(format!("{node}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .ok()?;
    r.status().is_success().then_some(())?;
    r.json().await.ok()
}

/// Stops a node gracefully (SIGTERM: it flushes usage and gives back its
/// blocks before it exits).
fn terminate(node: &mut Node) {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &node.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let _ = node.child.wait();
}

pub async fn limits_hold_across_kill_9(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let token = token("metered", "ops");
    // Two nodes on PostgreSQL; SQLite has one, killed and restarted.
    let nodes_wanted = if backend == Backend::Postgres { 2 } else { 1 };
    let mut nodes: Vec<Node> = (0..nodes_wanted).map(|_| spawn_node(&store)).collect();
    let first = nodes[0].address.clone();
    let credits_key = post(
        &first,
        &token,
        "/v1/keys",
        json!({"name": "credits", "credits": {"remaining": CREDITS}}),
    )
    .await
    .expect("create");
    let credits_id = credits_key["id"].as_str().expect("id").to_string();
    let credits_key = credits_key["key"].as_str().expect("key").to_string();
    let rate_key = post(
        &first,
        &token,
        "/v1/keys",
        json!({"name": "rate", "ratelimits": [{"name": "month", "limit": LIMIT, "window_ms": WINDOW_MS}]}),
    )
    .await
    .expect("create")["key"]
        .as_str()
        .expect("key")
        .to_string();
    let window_before = Utc::now().timestamp_millis().div_euclid(WINDOW_MS);

    let live: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(
        nodes.iter().map(|n| n.address.clone()).collect(),
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let (credits_valid, rate_valid) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut clients = Vec::new();
    for i in 0..6 {
        let (key, valid) = if i % 2 == 0 {
            (credits_key.clone(), credits_valid.clone())
        } else {
            (rate_key.clone(), rate_valid.clone())
        };
        clients.push(tokio::spawn(spender(
            live.clone(),
            key,
            stop.clone(),
            valid,
        )));
    }
    let mut incremented = false;
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(300..700))).await;
        let victim = &mut nodes[0];
        live.lock().expect("lock").retain(|a| a != &victim.address);
        victim.child.kill().expect("SIGKILL");
        let _ = victim.child.wait();
        *victim = spawn_node(&store);
        live.lock().expect("lock").push(victim.address.clone());
        if round == 1 {
            let last = nodes.last().expect("a node").address.clone();
            incremented = post(
                &last,
                &token,
                &format!("/v1/keys/{credits_id}/credits"),
                json!({"op": "increment", "amount": INCREMENT, "reason": "mid-run"}),
            )
            .await
            .is_some();
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("client");
    }
    assert!(incremented, "the increment was not acknowledged");
    let window_after = Utc::now().timestamp_millis().div_euclid(WINDOW_MS);
    let windows = u64::try_from(window_after - window_before + 1).expect("windows");
    let (credits_valid, rate_valid) = (
        credits_valid.load(Ordering::SeqCst),
        rate_valid.load(Ordering::SeqCst),
    );
    eprintln!(
        "limits under kill -9 ({backend:?}): {credits_valid} VALID on {} credits, \
         {rate_valid} VALID under a limit of {LIMIT}",
        CREDITS + INCREMENT
    );
    assert!(
        credits_valid <= CREDITS + INCREMENT,
        "{credits_valid} VALID"
    );
    assert!(rate_valid <= LIMIT * windows, "{rate_valid} VALID");
    assert!(credits_valid > 0 && rate_valid > 0, "nothing was admitted");

    for node in &mut nodes {
        terminate(node);
    }
    // The balance the log holds: what was granted, less what the flushed
    // spends took and what the killed nodes held (withheld, never lost
    // twice); it never goes below zero, and the projections agree with it.
    let events = keyledger::app::open_store(&store.config())
        .await
        .expect("open");
    let projections = keyledger_projections::Projections::unloaded(events.projection_db());
    let drift = keyledger::rebuild::check(&events, &projections)
        .await
        .expect("check");
    assert_eq!(drift, Vec::<String>::new());
    let (ledger, _) = events
        .ledger(&keyledger_domain::KeyId::from(credits_id.as_str()))
        .await
        .expect("ledger");
    let ledger = ledger.expect("the key has a ledger");
    let mut spent = 0;
    let mut after = 0;
    loop {
        let page = events.read_feed(after, 10_000).await.expect("feed");
        let Some(last) = page.last().map(|e| e.position) else {
            break;
        };
        for e in page {
            if e.aggregate_id == credits_id && e.event_type == "KeyUsageRecorded" {
                spent += e.payload["KeyUsageRecorded"]["spent"].as_u64().unwrap_or(0);
            }
        }
        after = last;
    }
    events.close().await;
    assert!(
        spent <= credits_valid,
        "{spent} recorded spent, {credits_valid} answered"
    );
    assert!(
        spent + ledger.remaining() <= CREDITS + INCREMENT,
        "spent {spent} + remaining {} over the grants",
        ledger.remaining()
    );
}

/// With the store away, a node admits from what it holds: the rest of its
/// credit block, then 503 (fail closed); a rate limit's next window, what
/// this node was given of the window before, then 503.
pub async fn with_the_store_away_credits_fail_closed_and_rate_limits_keep_their_share() {
    let Some(mut store) = TestStore::new(Backend::Postgres).await else {
        return;
    };
    let (proxy, _) = crate::proxy::between(&mut store).await;
    let app = start(store, |_| {}).await;

    let window = 3_600_000;
    let r = app
        .post(
            "/v1/keys",
            json!({"name": "c", "credits": {"remaining": 100}}),
        )
        .await;
    let credits_key = r.body["key"].as_str().expect("key").to_string();
    let r = app
        .post(
            "/v1/keys",
            json!({"name": "r", "ratelimits": [{"name": "h", "limit": 40, "window_ms": window}]}),
        )
        .await;
    let rate_key = r.body["key"].as_str().expect("key").to_string();
    let now = app.clock.now().timestamp_millis();
    let next = (now.div_euclid(window) + 1) * window;
    app.clock.advance(Span::milliseconds(next - now + 1_000));
    // One verification each: the node holds a block of 25 credits (a
    // quarter of 100) and a share of 4 of the window (a tenth of 40).
    assert_eq!(app.verify_code(&credits_key).await, "VALID");
    assert_eq!(app.verify_code(&rate_key).await, "VALID");

    proxy.disable();
    let mut valid = 0;
    let refused = loop {
        let r = app.verify(json!({"key": credits_key})).await;
        if r.status == StatusCode::OK && r.body["code"] == "VALID" {
            valid += 1;
            assert!(valid <= 24, "spent past its block with the store away");
            continue;
        }
        break r;
    };
    assert_eq!(valid, 24, "the rest of the block");
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        refused.text
    );
    assert_eq!(refused.code(), "store_unavailable");
    // The rate limit: 3 left of this window's share, then nothing more
    // (the store is needed for more of this window).
    for _ in 0..3 {
        assert_eq!(app.verify_code(&rate_key).await, "VALID");
    }
    let r = app.verify(json!({"key": rate_key})).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    // The next window: this node's share of the last one (4), once.
    app.clock.advance(Span::milliseconds(window));
    for _ in 0..4 {
        assert_eq!(app.verify_code(&rate_key).await, "VALID");
    }
    let r = app.verify(json!({"key": rate_key})).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);

    proxy.enable();
    let mut healed = false;
    for _ in 0..100 {
        let r = app.verify(json!({"key": credits_key})).await;
        if r.status == StatusCode::OK && r.body["code"] == "VALID" {
            healed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(healed, "credits never came back with the store");
    assert_eq!(app.verify_code(&rate_key).await, "VALID");
    app.stop().await;
}
