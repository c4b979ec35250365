//! Webhook delivery across nodes: two nodes over one PostgreSQL, each killed
//! with SIGKILL while it may be sending an endpoint's messages. Nothing is
//! lost, nothing overtakes, and only what was in flight is sent twice.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::chaos::{spawn_node, Node};
use crate::helpers::{token, Backend, TestStore};
use crate::receiver::Receiver;

const KEYS: usize = 30;

async fn post(node: &Node, token: &str, path: &str, body: Value) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", node.address))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request");
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_nodes_mid_delivery_loses_nothing_and_reorders_nothing() {
    let Some(store) = TestStore::new(Backend::Postgres).await else {
        return;
    };
    let Some(rx) = Receiver::start() else {
        return;
    };
    // A slow receiver: kills land while messages are in flight.
    rx.set("delay_ms", "40");
    let token = token("acme", "ops");
    let mut nodes = vec![spawn_node(&store), spawn_node(&store)];
    let created = post(&nodes[0], &token, "/v1/webhooks", json!({"url": rx.url()})).await;
    rx.set("secrets", created["secret"].as_str().expect("secret"));

    let mut ids = Vec::new();
    let mut kills = 0;
    for i in 0..KEYS {
        let node = &nodes[i % 2];
        let key = post(node, &token, "/v1/keys", json!({"name": format!("k{i}")})).await;
        ids.push(key["id"].as_str().expect("id").to_string());
        if i == KEYS / 3 || i == 2 * KEYS / 3 {
            // Let deliveries start, then kill one node outright.
            tokio::time::sleep(Duration::from_millis(150)).await;
            let victim = &mut nodes[kills % 2];
            victim.child.kill().expect("SIGKILL");
            let _ = victim.child.wait();
            *victim = spawn_node(&store);
            kills += 1;
        }
    }

    // A dead node's lease runs out (20 s) before another node resumes.
    let wanted: HashSet<String> = ids.iter().cloned().collect();
    let seen = rx
        .wait_until(Duration::from_secs(90), |seen| {
            let got: HashSet<String> = seen
                .iter()
                .filter_map(|m| m["key_id"].as_str().map(str::to_string))
                .collect();
            wanted.is_subset(&got)
        })
        .await;
    for node in &mut nodes {
        let _ = node.child.kill();
        let _ = node.child.wait();
    }
    assert!(
        seen.iter()
            .all(|m| m["type"] == "key.created" && m["verified"] == true),
        "{seen:?}"
    );
    let positions: Vec<i64> = seen
        .iter()
        .map(|m| m["position"].as_i64().expect("position"))
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] <= w[1]),
        "messages arrived out of order: {positions:?}"
    );
    let distinct: HashSet<i64> = positions.iter().copied().collect();
    assert_eq!(distinct.len(), KEYS, "one message per key");
    let duplicates = positions.len() - distinct.len();
    assert!(
        duplicates <= kills,
        "{duplicates} sent twice with {kills} kills: {positions:?}"
    );
    // A message sent twice kept its id.
    let mut by_position = std::collections::HashMap::new();
    for m in &seen {
        let previous = by_position.insert(m["position"].as_i64(), m["id"].clone());
        if let Some(id) = previous {
            assert_eq!(id, m["id"]);
        }
    }
}
