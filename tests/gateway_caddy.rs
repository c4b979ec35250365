//! keyledger behind a real Caddy, configured as the README's `forward_auth`
//! example says (the snippet is read from README.md): a valid key reaches the
//! upstream with its identity headers (never the ones the client wrote), and
//! every refusal (401, 403, 429 with `Retry-After`) reaches the client as
//! keyledger gave it; with `--trusted-proxies` each client is limited on its
//! own. Clients are told apart by their source address (127.0.0.2 and
//! 127.0.0.3, which Linux routes on loopback).
//!
//! Needs Caddy (`apt-get install -y caddy`); without it the tests print
//! `SKIPPED: caddy not installed` and pass, unless `KEYLEDGER_REQUIRE_GATEWAYS=1`.
//! The helpers are those of tests/gateways.rs (nginx), in a test binary of
//! its own.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::StatusCode;
use serde_json::json;

mod common;

use common::gateway::{client, on_path_or_in, or_skip, Keyledger};
use common::process::{free_port, stop};

/// `--verify-failure-limit`'s default.
const LIMIT: usize = 100;

/// Caddy, if installed, or `None` after saying the test is skipped.
fn caddy_or_skip() -> Option<PathBuf> {
    let found = on_path_or_in("caddy", &["/usr/bin", "/usr/local/bin"]);
    or_skip(found, "caddy", "apt-get install -y caddy")
}

/// The README's Caddy snippet, serving plain HTTP on `port`, asking
/// `keyledger` instead of 127.0.0.1:8080 and proxying to 127.0.0.1:`api_port`
/// instead of my-api:9000.
fn readme_snippet(keyledger: &str, port: u16, api_port: u16) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("## In front of your API: Caddy `forward_auth`")
        .nth(1)
        .expect("the README's Caddy section");
    let snippet = section
        .split("```caddyfile\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("a caddyfile block in the README's Caddy section");
    let mut pointed = snippet.to_string();
    for (from, to) in [
        ("api.example.com", format!("http://:{port}")),
        ("127.0.0.1:8080", keyledger.to_string()),
        ("my-api:9000", format!("127.0.0.1:{api_port}")),
    ] {
        assert!(
            pointed.contains(from),
            "the README's Caddy snippet names {from}:\n{snippet}"
        );
        pointed = pointed.replace(from, &to);
    }
    pointed
}

/// Caddy as a child process, serving the README's snippet on a random port,
/// with the upstream a second site of the same Caddy (on another random port)
/// that echoes the identity headers it was given.
struct Caddy {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Caddy {
    fn start(binary: &Path, keyledger: &str) -> Caddy {
        let mut last = String::new();
        // A port found free may be taken before Caddy binds it: try again.
        for _ in 0..5 {
            match Self::try_start(binary, keyledger) {
                Ok(caddy) => return caddy,
                Err(e) => last = e,
            }
        }
        panic!("caddy did not start: {last}");
    }

    fn try_start(binary: &Path, keyledger: &str) -> Result<Caddy, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, api_port) = (free_port(), free_port());
        let snippet = readme_snippet(keyledger, port, api_port);
        // No admin endpoint, no certificates, loopback only; the upstream
        // joins the values of a repeated header with commas, so a forged
        // header kept next to keyledger's would show.
        let config = format!(
            "{{
    admin off
    auto_https off
    default_bind 127.0.0.1
}}
http://:{api_port} {{
    respond \"id={{header.X-Key-Id}} tenant={{header.X-Key-Tenant}} permissions={{header.X-Key-Permissions}}\"
}}
{snippet}"
        );
        let conf = dir.path().join("Caddyfile");
        std::fs::write(&conf, config).expect("write Caddyfile");
        let mut child = Command::new(binary)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&conf)
            // Its autosaved config and storage stay in the temp directory.
            .env("HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("XDG_DATA_HOME", dir.path().join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn caddy: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().ok().flatten() {
                let mut err = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut err);
                }
                return Err(format!("caddy exited with {status}: {err}"));
            }
            let up = [port, api_port]
                .iter()
                .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok());
            if up {
                break;
            }
            if Instant::now() > deadline {
                stop(&mut child);
                return Err("caddy did not listen within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Drain its log (JSON lines) so Caddy never blocks on it; errors go
        // to the test's output.
        if let Some(pipe) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if line.contains("\"level\":\"error\"") || !line.starts_with('{') {
                        eprintln!("caddy: {line}");
                    }
                }
            });
        }
        Ok(Caddy {
            child,
            port,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/api/orders", self.port)
    }
}

impl Drop for Caddy {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// What the client got from a request through Caddy.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    /// A header, as text (`""` when absent).
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// A request for `/api/orders` through Caddy with these headers.
async fn call(client: &reqwest::Client, caddy: &Caddy, headers: &[(&str, &str)]) -> Answer {
    let mut request = client.get(caddy.url());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let r = request.send().await.expect("request through caddy");
    let (status, headers) = (r.status(), r.headers().clone());
    Answer {
        status,
        headers,
        body: r.text().await.unwrap_or_default(),
    }
}

/// A request with this key in `X-Api-Key`.
async fn call_key(client: &reqwest::Client, caddy: &Caddy, key: &str) -> Answer {
    call(client, caddy, &[("X-Api-Key", key)]).await
}

/// The key gets through to the upstream, which sees keyledger's identity.
async fn assert_passes(client: &reqwest::Client, caddy: &Caddy, key: &str, id: &str) {
    let a = call_key(client, caddy, key).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        a.body,
        format!("id={id} tenant=acme permissions=orders:read")
    );
}

/// A refusal that reaches the client as keyledger gave it.
fn assert_refused(a: &Answer, status: StatusCode, code: &str) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.header("x-key-code"), code, "{:?}", a.headers);
    assert!(
        a.header("content-type").starts_with("application/json"),
        "keyledger's error body: {:?}",
        a.headers
    );
    assert!(
        !a.body.contains("id="),
        "a refusal never reaches the upstream: {}",
        a.body
    );
}

fn read_key(name: &str) -> serde_json::Value {
    json!({"name": name, "permissions": ["orders:read"]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_caddy_keys_pass_with_their_identity_and_refusals_reach_the_client() {
    let Some(binary) = caddy_or_skip() else {
        return;
    };
    let keyledger = Keyledger::start(&["--trusted-proxies", "127.0.0.1/32"]);
    let caddy = Caddy::start(&binary, &keyledger.address);
    let (id, key) = keyledger.create_key(read_key("customer")).await;
    let (_, writer) = keyledger
        .create_key(json!({"name": "writer", "permissions": ["orders:write"]}))
        .await;
    let (revoked_id, revoked) = keyledger.create_key(read_key("revoked")).await;
    // Two per window of 30 days (the longest), so none ends mid-test.
    let (metered_id, metered) = keyledger
        .create_key(json!({
            "name": "metered",
            "permissions": ["orders:read"],
            "ratelimits": [{"name": "burst", "limit": 2, "window_ms": 2_592_000_000u64}],
        }))
        .await;
    let c = client(Some("127.0.0.2"));

    // A valid key passes, in either header.
    assert_passes(&c, &caddy, &key, &id).await;
    let bearer = format!("Bearer {key}");
    let a = call(&c, &caddy, &[("Authorization", bearer.as_str())]).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        a.body,
        format!("id={id} tenant=acme permissions=orders:read")
    );

    // Identity headers the client writes never reach the upstream: keyledger's
    // replace them. Nor can the client lower the permissions required.
    let a = call(
        &c,
        &caddy,
        &[
            ("X-Api-Key", key.as_str()),
            ("X-Key-Id", "key_forged"),
            ("X-Key-Tenant", "other-tenant"),
            ("X-Key-Permissions", "admin"),
        ],
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(
        a.body,
        format!("id={id} tenant=acme permissions=orders:read")
    );
    let a = call(
        &c,
        &caddy,
        &[
            ("X-Api-Key", writer.as_str()),
            ("X-Required-Permissions", ""),
        ],
    )
    .await;
    assert_refused(&a, StatusCode::FORBIDDEN, "INSUFFICIENT_PERMISSIONS");

    // No key, an unknown key: 401 with keyledger's code and challenge.
    let a = call(&c, &caddy, &[]).await;
    assert_refused(&a, StatusCode::UNAUTHORIZED, "NOT_FOUND");
    assert!(
        a.header("www-authenticate").starts_with("Bearer"),
        "{:?}",
        a.headers
    );
    let a = call_key(&c, &caddy, "kl_live_unknown0000000000000000000000000000").await;
    assert_refused(&a, StatusCode::UNAUTHORIZED, "NOT_FOUND");

    // A key without the permission the route needs: 403.
    let a = call_key(&c, &caddy, &writer).await;
    assert_refused(&a, StatusCode::FORBIDDEN, "INSUFFICIENT_PERMISSIONS");

    // A deactivated key: 401 DISABLED, soon after the deactivation.
    assert_passes(&c, &caddy, &revoked, &revoked_id).await;
    keyledger.deactivate(&revoked_id).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let a = loop {
        let a = call_key(&c, &caddy, &revoked).await;
        if a.status != StatusCode::OK || Instant::now() > deadline {
            break a;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_refused(&a, StatusCode::UNAUTHORIZED, "DISABLED");

    // A key over its rate limit: 429 with Retry-After and RateLimit-*.
    for _ in 0..2 {
        let a = call_key(&c, &caddy, &metered).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        assert_eq!(
            a.body,
            format!("id={metered_id} tenant=acme permissions=orders:read")
        );
    }
    for _ in 0..3 {
        let a = call_key(&c, &caddy, &metered).await;
        assert_refused(&a, StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED");
        let retry: u64 = a
            .header("retry-after")
            .parse()
            .unwrap_or_else(|_| panic!("a Retry-After in seconds: {:?}", a.headers));
        assert!((1..=2_592_000).contains(&retry), "Retry-After {retry}");
        assert_eq!(a.header("ratelimit-limit"), "2");
        assert_eq!(a.header("ratelimit-remaining"), "0");
    }
    // The other keys are not limited.
    assert_passes(&c, &caddy, &key, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_caddy_with_trusted_proxies_each_client_is_limited_on_its_own() {
    let Some(binary) = caddy_or_skip() else {
        return;
    };
    let keyledger = Keyledger::start(&["--trusted-proxies", "127.0.0.1/32"]);
    let caddy = Caddy::start(&binary, &keyledger.address);
    let (id, key) = keyledger.create_key(read_key("customer")).await;
    let (noisy, other) = (client(Some("127.0.0.2")), client(Some("127.0.0.3")));

    for i in 0..LIMIT {
        let a = call_key(&noisy, &caddy, &format!("garbage-a-{i}")).await;
        assert_refused(&a, StatusCode::UNAUTHORIZED, "NOT_FOUND");
    }
    // The noisy client is blocked for unknown keys, whatever it writes into
    // X-Forwarded-For itself (Caddy replaces it with the address it came from).
    for spoof in ["", "10.9.9.9", "127.0.0.3", "203.0.113.1, 127.0.0.1"] {
        let mut headers = vec![("X-Api-Key", "garbage-spoofed")];
        if !spoof.is_empty() {
            headers.push(("X-Forwarded-For", spoof));
        }
        let a = call(&noisy, &caddy, &headers).await;
        assert_eq!(
            a.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{spoof}: {}",
            a.body
        );
        assert_eq!(a.header("retry-after"), "60", "{spoof}");
    }
    // Its valid key still passes.
    assert_passes(&noisy, &caddy, &key, &id).await;
    // The other client is a client of its own: its key passes and its
    // unknown keys are answered.
    assert_passes(&other, &caddy, &key, &id).await;
    let a = call_key(&other, &caddy, "garbage-b").await;
    assert_refused(&a, StatusCode::UNAUTHORIZED, "NOT_FOUND");
}
