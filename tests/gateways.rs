//! keyledger behind a real nginx, configured as the README's `auth_request`
//! example says (the snippet is read from README.md): one client's garbage
//! never stops another client's valid key, with `--trusted-proxies` each
//! client is limited on its own, and a key over its rate limit gets 429 with
//! `Retry-After` (which `auth_request` alone would turn into 500). Clients are
//! told apart by their source address (127.0.0.2 and 127.0.0.3, which Linux
//! routes on loopback).
//!
//! Needs nginx (`apt-get install -y nginx`); without it the tests print
//! `SKIPPED: nginx not installed` and pass, unless `KEYLEDGER_REQUIRE_GATEWAYS=1`.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::json;

mod common;

use common::gateway::{client, on_path_or_in, or_skip, Keyledger};
use common::process::{free_port, stop};

/// Garbage requests the noisy client sends: five times the default limit.
const GARBAGE: usize = 500;
/// `--verify-failure-limit`'s default.
const LIMIT: usize = 100;

/// nginx, if installed (Debian puts it in /usr/sbin, often not on PATH), or
/// `None` after saying the test is skipped.
fn nginx_or_skip() -> Option<PathBuf> {
    let found = on_path_or_in(
        "nginx",
        &["/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin"],
    );
    or_skip(found, "nginx", "apt-get install -y nginx")
}

/// Creates a key granting `orders:read`, as the README's snippet requires;
/// its id and raw key.
async fn create_reader(keyledger: &Keyledger, name: &str) -> (String, String) {
    keyledger
        .create_key(json!({"name": name, "permissions": ["orders:read"]}))
        .await
}

/// The README's nginx snippet, pointed at `keyledger` instead of 127.0.0.1:8080.
fn readme_snippet(keyledger: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md");
    let section = readme
        .split("## In front of your API: nginx `auth_request`")
        .nth(1)
        .expect("the README's nginx section");
    let snippet = section
        .split("```nginx\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("an nginx block in the README's nginx section");
    assert!(
        snippet.contains("proxy_set_header        X-Forwarded-For $proxy_add_x_forwarded_for;"),
        "the README's snippet passes the client address on:\n{snippet}"
    );
    let pointed = snippet.replace("http://127.0.0.1:8080/", &format!("http://{keyledger}/"));
    assert_ne!(pointed, snippet, "the snippet proxies to 127.0.0.1:8080");
    pointed
}

/// nginx as a child process, serving the README's snippet on a random port,
/// with `my-api` an upstream (on another random port of the same nginx) that
/// echoes the identity headers it was given.
struct Nginx {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    fn start(binary: &Path, keyledger: &str) -> Nginx {
        let mut last = String::new();
        // A port found free may be taken before nginx binds it: try again.
        for _ in 0..5 {
            match Self::try_start(binary, keyledger) {
                Ok(nginx) => return nginx,
                Err(e) => last = e,
            }
        }
        panic!("nginx did not start: {last}");
    }

    fn try_start(binary: &Path, keyledger: &str) -> Result<Nginx, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, api_port) = (free_port(), free_port());
        let d = dir.path().display();
        // Workers run as `user`; as root the default (nobody) could not use
        // the temp directories in this private directory.
        let user = if is_root() { "user root;" } else { "" };
        let snippet = readme_snippet(keyledger);
        let config = format!(
            "{user}
worker_processes 1;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream my-api {{ server 127.0.0.1:{api_port}; }}
    server {{
        listen 127.0.0.1:{api_port};
        location / {{
            return 200 \"id=$http_x_key_id tenant=$http_x_key_tenant\";
        }}
    }}
    server {{
        listen 127.0.0.1:{port};
{snippet}
    }}
}}
"
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, config).expect("write nginx.conf");
        let mut child = Command::new(binary)
            .arg("-e")
            .arg("stderr")
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-g")
            .arg(format!("daemon off; pid {d}/nginx.pid; error_log stderr;"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawn nginx: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().ok().flatten() {
                let mut err = String::new();
                if let Some(mut pipe) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut pipe, &mut err);
                }
                return Err(format!("nginx exited with {status}: {err}"));
            }
            let up = [port, api_port]
                .iter()
                .all(|p| TcpStream::connect(("127.0.0.1", *p)).is_ok());
            if up {
                break;
            }
            if Instant::now() > deadline {
                stop(&mut child);
                return Err("nginx did not listen within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // Drain its error log (to the test's output, but for the line of each
        // refused guess, which is expected) so nginx never blocks on it.
        if let Some(pipe) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if !line.contains("auth request unexpected status: 429") {
                        eprintln!("nginx: {line}");
                    }
                }
            });
        }
        Ok(Nginx {
            child,
            port,
            _dir: dir,
        })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/api/orders", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// A request for `/api/orders` through nginx with this key; the status and body.
async fn call(client: &reqwest::Client, nginx: &Nginx, key: &str) -> (StatusCode, String) {
    call_with(client, nginx, key, &[]).await
}

async fn call_with(
    client: &reqwest::Client,
    nginx: &Nginx,
    key: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let (status, _, body) = exchange(client, nginx, key, headers).await;
    (status, body)
}

/// A request for `/api/orders` through nginx with this key and these headers;
/// the status, headers and body the client got.
async fn exchange(
    client: &reqwest::Client,
    nginx: &Nginx,
    key: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, reqwest::header::HeaderMap, String) {
    let mut request = client.get(nginx.url()).header("X-Api-Key", key);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let r = request.send().await.expect("request through nginx");
    let (status, headers) = (r.status(), r.headers().clone());
    (status, headers, r.text().await.unwrap_or_default())
}

/// A header of an answer, as text (`""` when absent).
fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Sends `GARBAGE` unknown keys from `client`; returns how many nginx answered
/// 401 (keyledger's `NOT_FOUND`) and how many 429 (keyledger's 429, which the
/// README's `error_page` passes on where `auth_request` alone would answer 500).
async fn send_garbage(client: &reqwest::Client, nginx: &Nginx, tag: &str) -> (usize, usize) {
    let (mut unauthorized, mut refused) = (0, 0);
    for i in 0..GARBAGE {
        let key = if i % 2 == 0 {
            format!("garbage-{tag}-{i}")
        } else {
            format!("kl_live_{tag}{i:0>40}")
        };
        match call(client, nginx, &key).await.0 {
            StatusCode::UNAUTHORIZED => unauthorized += 1,
            StatusCode::TOO_MANY_REQUESTS => refused += 1,
            other => panic!("garbage #{i} answered {other}"),
        }
    }
    (unauthorized, refused)
}

/// The other client's valid key gets through to the upstream, with its identity.
async fn assert_passes(client: &reqwest::Client, nginx: &Nginx, key: &str, id: &str) {
    let (status, body) = call(client, nginx, key).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, format!("id={id} tenant=acme"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_one_clients_garbage_never_stops_another_clients_valid_key() {
    let Some(binary) = nginx_or_skip() else {
        return;
    };
    // As deployed without --trusted-proxies: every client is nginx's 127.0.0.1.
    let keyledger = Keyledger::start(&[]);
    let nginx = Nginx::start(&binary, &keyledger.address);
    let (id, key) = create_reader(&keyledger, "customer").await;
    let (revoked_id, revoked) = create_reader(&keyledger, "revoked").await;
    keyledger.deactivate(&revoked_id).await;
    let (noisy, other) = (client(Some("127.0.0.2")), client(Some("127.0.0.3")));
    assert_passes(&other, &nginx, &key, &id).await;

    let (unauthorized, refused) = send_garbage(&noisy, &nginx, "a").await;
    // All clients share one address: the limit is reached for everyone's
    // unknown keys...
    assert_eq!((unauthorized, refused), (LIMIT, GARBAGE - LIMIT));
    assert_eq!(
        call(&other, &nginx, "garbage-b").await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    // ...but not for keys that exist: the valid one passes, from either
    // client, and a revoked one is refused as revoked (401), not as a guess.
    for c in [&other, &noisy] {
        assert_passes(c, &nginx, &key, &id).await;
        assert_eq!(call(c, &nginx, &revoked).await.0, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_with_trusted_proxies_each_client_is_limited_on_its_own() {
    let Some(binary) = nginx_or_skip() else {
        return;
    };
    let keyledger = Keyledger::start(&["--trusted-proxies", "127.0.0.1/32"]);
    let nginx = Nginx::start(&binary, &keyledger.address);
    let (id, key) = create_reader(&keyledger, "customer").await;
    let (noisy, other) = (client(Some("127.0.0.2")), client(Some("127.0.0.3")));

    let (unauthorized, refused) = send_garbage(&noisy, &nginx, "a").await;
    assert_eq!((unauthorized, refused), (LIMIT, GARBAGE - LIMIT));
    // The noisy client stays blocked for unknown keys, whatever it writes into
    // X-Forwarded-For itself (nginx appends the address it really came from).
    for spoof in ["10.9.9.9", "127.0.0.3", "203.0.113.1, 127.0.0.1"] {
        let (status, headers, _) = exchange(
            &noisy,
            &nginx,
            "garbage-spoofed",
            &[("X-Forwarded-For", spoof)],
        )
        .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{spoof}");
        assert_eq!(header(&headers, "retry-after"), "60", "{spoof}");
    }
    // Its valid key still passes.
    assert_passes(&noisy, &nginx, &key, &id).await;
    // The other client is a client of its own: its key passes and its garbage
    // is answered, counted separately.
    assert_passes(&other, &nginx, &key, &id).await;
    let (unauthorized, refused) = send_garbage(&other, &nginx, "b").await;
    assert_eq!((unauthorized, refused), (LIMIT, GARBAGE - LIMIT));
    assert_passes(&other, &nginx, &key, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_nginx_a_rate_limited_key_gets_429_with_retry_after() {
    let Some(binary) = nginx_or_skip() else {
        return;
    };
    let keyledger = Keyledger::start(&["--trusted-proxies", "127.0.0.1/32"]);
    let nginx = Nginx::start(&binary, &keyledger.address);
    // Two per window of 30 days (the longest), so none ends mid-test.
    let (id, key) = keyledger
        .create_key(json!({
            "name": "metered",
            "permissions": ["orders:read"],
            "ratelimits": [{"name": "burst", "limit": 2, "window_ms": 2_592_000_000u64}],
        }))
        .await;
    let (other_id, other_key) = create_reader(&keyledger, "unmetered").await;
    let c = client(Some("127.0.0.2"));
    for _ in 0..2 {
        assert_passes(&c, &nginx, &key, &id).await;
    }
    for _ in 0..3 {
        let (status, headers, body) = exchange(&c, &nginx, &key, &[]).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert_eq!(header(&headers, "x-key-code"), "RATE_LIMITED");
        let retry: u64 = header(&headers, "retry-after")
            .parse()
            .unwrap_or_else(|_| panic!("a Retry-After in seconds: {headers:?}"));
        assert!((1..=2_592_000).contains(&retry), "Retry-After {retry}");
    }
    // Another key is not limited, and refusals keep their own code and status.
    assert_passes(&c, &nginx, &other_key, &other_id).await;
    let (status, headers, _) = exchange(&c, &nginx, "kl_live_unknown", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(header(&headers, "x-key-code"), "NOT_FOUND");
    assert_eq!(header(&headers, "retry-after"), "");
}
