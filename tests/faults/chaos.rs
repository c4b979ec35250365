//! Crash safety: concurrent clients issue commands against a real `keyledger
//! serve` process that is killed with SIGKILL at random moments and restarted.
//! At the end every acknowledged command must be in the event store, and the
//! projections must match the events exactly.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{token, Backend, TestStore, SECRET};

const KILLS: usize = 20;
const CLIENTS: usize = 4;

pub struct Node {
    pub child: Child,
    pub address: String,
}

pub fn spawn_node(store: &TestStore) -> Node {
    let mut command = Command::new(env!("CARGO_BIN_EXE_keyledger"));
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(store.data_dir.path())
        .env("KEYLEDGER_JWT_SECRET", SECRET)
        // Webhook tests send to a receiver on this machine.
        .env("KEYLEDGER_WEBHOOK_ALLOW_PRIVATE", "true")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("DATABASE_URL")
        .env_remove("KEYLEDGER_EVENT_STORE")
        .env_remove("KEYLEDGER_KURRENT_NAMESPACE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(url) = &store.database_url {
        command.env("DATABASE_URL", url);
    }
    if let Some(k) = &store.kurrent {
        command
            .env("KEYLEDGER_EVENT_STORE", &k.url)
            .env("KEYLEDGER_KURRENT_NAMESPACE", &k.namespace);
    }
    let mut child = command.spawn().expect("spawn keyledger");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr: String = rest.chars().take_while(|c| !c.is_whitespace()).collect();
                let _ = tx.send(addr);
            }
        }
    });
    let address = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("node did not start listening");
    Node {
        child,
        address: format!("http://{address}"),
    }
}

#[derive(Debug, Clone)]
struct Acked {
    request_id: String,
    kind: &'static str,
    key_id: String,
}

/// One client: creates keys and toggles or deletes the ones it created.
async fn client(
    address: String,
    token: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
    acked: Arc<Mutex<Vec<Acked>>>,
    keys: Arc<Mutex<Vec<String>>>,
    sent: Arc<std::sync::atomic::AtomicUsize>,
) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    while !stop.load(std::sync::atomic::Ordering::SeqCst) {
        let request_id = uuid::Uuid::new_v4().to_string();
        let known = keys.lock().expect("lock").clone();
        let choice = rand::rng().random_range(0..10);
        let (kind, target, request) = if known.is_empty() || choice < 4 {
            (
                "KeyCreated",
                String::new(),
                http.post(format!("{address}/v1/keys"))
                    .json(&json!({"name": "chaos"})),
            )
        } else {
            let id = known[rand::rng().random_range(0..known.len())].clone();
            let request = match choice {
                4..=6 => http.post(format!("{address}/v1/keys/{id}/deactivate")),
                7..=8 => http.post(format!("{address}/v1/keys/{id}/reactivate")),
                _ => http.delete(format!("{address}/v1/keys/{id}")),
            };
            let kind = match choice {
                4..=6 => "KeyDeactivated",
                7..=8 => "KeyReactivated",
                _ => "KeyDeleted",
            };
            (kind, id, request)
        };
        sent.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let Ok(response) = request
            .bearer_auth(&token)
            .header("X-Request-Id", &request_id)
            .send()
            .await
        else {
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            continue;
        }
        let key_id = if kind == "KeyCreated" {
            let id = body["id"].as_str().unwrap_or_default().to_string();
            keys.lock().expect("lock").push(id.clone());
            id
        } else {
            target
        };
        if kind == "KeyDeleted" {
            keys.lock().expect("lock").retain(|k| k != &key_id);
        }
        acked.lock().expect("lock").push(Acked {
            request_id,
            kind,
            key_id,
        });
    }
}

/// (type, key id) of every event in the store by request id, read straight from SQL.
async fn stored_events(store: &TestStore) -> HashMap<String, Vec<(String, String)>> {
    let events = keyledger::app::open_store(&store.config())
        .await
        .expect("open");
    let mut by_request: HashMap<String, Vec<(String, String)>> = HashMap::new();
    let mut after = 0;
    loop {
        let page = events.read_feed(after, 10_000).await.expect("feed");
        let Some(last) = page.last().map(|e| e.position) else {
            break;
        };
        for e in page {
            if let Some(r) = e.metadata.get("request_id").and_then(Value::as_str) {
                by_request
                    .entry(r.to_string())
                    .or_default()
                    .push((e.event_type.clone(), e.aggregate_id.clone()));
            }
        }
        after = last;
    }
    events.close().await;
    by_request
}

pub async fn nothing_acknowledged_is_lost_across_kill_9(backend: Backend) {
    let Some(store) = TestStore::new(backend).await else {
        return;
    };
    let token = token("chaos", "chaos-client");
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let keys: Arc<Mutex<Vec<String>>> = Arc::default();
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    for _ in 0..KILLS {
        let mut node = spawn_node(&store);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                tokio::spawn(client(
                    node.address.clone(),
                    token.clone(),
                    stop.clone(),
                    acked.clone(),
                    keys.clone(),
                    sent.clone(),
                ))
            })
            .collect();
        let run = rand::rng().random_range(100..400);
        tokio::time::sleep(Duration::from_millis(run)).await;
        node.child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL on Unix
        let _ = node.child.wait();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in clients {
            c.await.expect("client");
        }
    }
    // One clean start so the projections catch up after the last kill.
    let mut node = spawn_node(&store);
    let ready = reqwest::get(format!("{}/readyz", node.address))
        .await
        .expect("readyz");
    assert_eq!(ready.status(), StatusCode::OK);
    node.child.kill().expect("kill");
    let _ = node.child.wait();

    let stored = stored_events(&store).await;
    let acked = acked.lock().expect("lock").clone();
    let mut lost = Vec::new();
    for a in &acked {
        let types = stored.get(&a.request_id);
        // Deactivate/reactivate of a key already in that state records nothing.
        let must_have_event = matches!(a.kind, "KeyCreated" | "KeyDeleted");
        let ok = match types {
            Some(t) => t.len() == 1 && t[0].0 == a.kind && t[0].1 == a.key_id,
            None => !must_have_event,
        };
        if !ok {
            lost.push(a.clone());
        }
    }
    // No command left more (or other) events than it should: one per request id.
    for (request, types) in &stored {
        assert_eq!(types.len(), 1, "request {request} left {types:?}");
    }
    let events = keyledger::app::open_store(&store.config())
        .await
        .expect("open");
    let projections = keyledger_projections::Projections::unloaded(events.projection_db());
    let drift = keyledger::rebuild::check(&events, &projections)
        .await
        .expect("check");
    events.close().await;
    eprintln!(
        "chaos {backend:?}: kills={KILLS} sent={} acknowledged={} lost={} drift={} in {:?}",
        sent.load(std::sync::atomic::Ordering::SeqCst),
        acked.len(),
        lost.len(),
        drift.len(),
        started.elapsed()
    );
    assert!(
        !acked.is_empty(),
        "the clients got no answer at all: nothing was tested"
    );
    assert_eq!(lost.len(), 0, "acknowledged but lost: {lost:?}");
    assert_eq!(drift, Vec::<String>::new());
}
