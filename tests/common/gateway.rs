//! A gateway test's pieces: the gateway's binary (or a loud skip), a
//! `keyledger serve` child over a fresh SQLite store, and clients that leave
//! from a chosen loopback address.

use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use super::process::{stop, strip_ansi};
use super::skip::skipped;

pub const BIN: &str = env!("CARGO_BIN_EXE_keyledger");
pub const SECRET: &str = "gateway-test-secret-0123456789abcdef0123456789";

/// `name` in one of `dirs` after those on PATH, if it is there.
pub fn on_path_or_in(name: &str, dirs: &[&str]) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(dirs.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `found`, or `None` after saying the test is skipped. With
/// `KEYLEDGER_REQUIRE_GATEWAYS=1` (as in `.ci/run`) a missing gateway fails
/// the test instead, naming how to install it.
pub fn or_skip(found: Option<PathBuf>, gateway: &str, install: &str) -> Option<PathBuf> {
    if found.is_none() {
        assert!(
            std::env::var("KEYLEDGER_REQUIRE_GATEWAYS").as_deref() != Ok("1"),
            "{gateway} not installed and KEYLEDGER_REQUIRE_GATEWAYS=1 ({install})"
        );
        skipped(&format!("{gateway} not installed ({install})"));
    }
    found
}

/// An HTTP client whose connections leave from `source` (any loopback address).
pub fn client(source: Option<&str>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10));
    if let Some(source) = source {
        builder = builder.local_address(source.parse::<IpAddr>().expect("ip"));
    }
    builder.build().expect("client")
}

/// `keyledger serve` on a random port over a fresh SQLite store.
pub struct Keyledger {
    child: Child,
    /// The HTTP API.
    pub address: String,
    /// The ext_authz gRPC service, when started with [`Keyledger::start_with_grpc`].
    pub grpc: Option<String>,
    _data: tempfile::TempDir,
}

impl Keyledger {
    /// A node with these extra `serve` arguments.
    pub fn start(extra: &[&str]) -> Keyledger {
        Self::spawn(extra, false)
    }

    /// A node also serving Envoy's ext_authz over gRPC, on a random port.
    pub fn start_with_grpc(extra: &[&str]) -> Keyledger {
        Self::spawn(extra, true)
    }

    fn spawn(extra: &[&str], grpc: bool) -> Keyledger {
        let data = tempfile::tempdir().expect("tempdir");
        let mut command = Command::new(BIN);
        // Nothing of the environment the tests run in reaches the node.
        for var in [
            "DATABASE_URL",
            "KEYLEDGER_EVENT_STORE",
            "KEYLEDGER_DATA_DIR",
            "KEYLEDGER_LISTEN",
            "KEYLEDGER_GRPC_LISTEN",
            "KEYLEDGER_VERIFY_FAILURE_LIMIT",
            "KEYLEDGER_TRUSTED_PROXIES",
            "KEYLEDGER_JWT_PUBLIC_KEYS",
        ] {
            command.env_remove(var);
        }
        command.args(["serve", "--listen", "127.0.0.1:0"]);
        if grpc {
            command.args(["--grpc-listen", "127.0.0.1:0"]);
        }
        let mut child = command
            .arg("--data-dir")
            .arg(data.path())
            .args(extra)
            .env("KEYLEDGER_JWT_SECRET", SECRET)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keyledger serve");
        let (tx, rx) = mpsc::channel::<String>();
        let pipe = child.stderr.take().expect("stderr");
        // Keeps draining stderr for the server's lifetime.
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let _ = tx.send(strip_ansi(&line));
            }
        });
        let after = |line: &str, marker: &str| {
            line.split(marker)
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .map(str::to_string)
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = String::new();
        let (mut address, mut grpc_address) = (None, None);
        while address.is_none() || (grpc && grpc_address.is_none()) {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => {
                    address = address.or_else(|| after(&line, "listening on http://"));
                    grpc_address =
                        grpc_address.or_else(|| after(&line, "Envoy ext_authz (gRPC) on "));
                    seen.push_str(&line);
                    seen.push('\n');
                }
                Err(e) => {
                    stop(&mut child);
                    panic!("keyledger did not start ({e}):\n{seen}");
                }
            }
        }
        Keyledger {
            child,
            address: address.expect("address"),
            grpc: grpc_address,
            _data: data,
        }
    }

    /// A management token of tenant `acme`.
    pub fn token() -> String {
        keyledger::http::auth::mint(
            SECRET.as_bytes(),
            "acme",
            "gateway-test",
            Duration::from_secs(600),
        )
        .expect("token")
    }

    /// Creates a key from this `POST /v1/keys` body; its id and raw key.
    pub async fn create_key(&self, body: Value) -> (String, String) {
        let r = client(None)
            .post(format!("http://{}/v1/keys", self.address))
            .bearer_auth(Self::token())
            .json(&body)
            .send()
            .await
            .expect("create");
        assert_eq!(r.status(), StatusCode::CREATED);
        let body: Value = r.json().await.expect("json");
        (
            body["id"].as_str().expect("id").to_string(),
            body["key"].as_str().expect("key").to_string(),
        )
    }

    /// Stops the node (SIGTERM, then SIGKILL after a while).
    pub fn stop(&mut self) {
        stop(&mut self.child);
    }

    /// Deactivates key `id`, which must succeed.
    pub async fn deactivate(&self, id: &str) {
        let r = client(None)
            .post(format!("http://{}/v1/keys/{id}/deactivate", self.address))
            .bearer_auth(Self::token())
            .json(&serde_json::json!({"reason": "revoked"}))
            .send()
            .await
            .expect("deactivate");
        assert_eq!(r.status(), StatusCode::OK);
    }
}

impl Drop for Keyledger {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}
