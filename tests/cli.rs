//! The real `keyledger` binary as a user runs it: `serve` with no secret configured,
//! `token` minting with the generated secret, a lifecycle over HTTP, a graceful
//! SIGTERM, then `audit` and `migrate`. Logs are captured at trace level to prove
//! the raw key never reaches them.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use common::process::strip_ansi;

const BIN: &str = env!("CARGO_BIN_EXE_keyledger");

/// Environment a developer's shell might carry that would change what is tested.
const CLEARED_ENV: [&str; 7] = [
    "KEYLEDGER_JWT_SECRET",
    "DATABASE_URL",
    "KEYLEDGER_DATA_DIR",
    "KEYLEDGER_LISTEN",
    "KEYLEDGER_KEY_PREFIX",
    "KEYLEDGER_USAGE_FLUSH_SECS",
    "RUST_LOG",
];

fn keyledger() -> Command {
    let mut command = Command::new(BIN);
    for var in CLEARED_ENV {
        command.env_remove(var);
    }
    command.env("NO_COLOR", "1");
    command
}

/// Runs a short CLI command to completion, asserting success; returns stdout.
fn run_ok(args: &[&str]) -> String {
    let output = keyledger().args(args).output().expect("run keyledger");
    assert!(
        output.status.success(),
        "keyledger {args:?} failed with {}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 stdout")
}

/// A `keyledger serve` child process with its output captured.
struct Server {
    child: Child,
    address: String,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<JoinHandle<()>>,
    stdout_reader: Option<JoinHandle<String>>,
}

impl Server {
    fn start(data_dir: &Path) -> Server {
        let mut child = keyledger()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "trace")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keyledger serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel::<String>();
        let pipe = child.stderr.take().expect("stderr");
        let captured = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(pipe);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = strip_ansi(&String::from_utf8_lossy(&buf));
                        captured.lock().expect("lock").push_str(&line);
                        let _ = tx.send(line);
                    }
                }
            }
        });
        let mut stdout = child.stdout.take().expect("stdout");
        let stdout_reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let address = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(rest) = line.split("listening on http://").nth(1) {
                        let address = rest.split_whitespace().next().expect("address");
                        break address.to_string();
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "no `listening on http://` line within 30 s ({e}); stderr:\n{}",
                        stderr.lock().expect("lock")
                    );
                }
            }
        };
        Server {
            child,
            address: format!("http://{address}"),
            stderr,
            stderr_reader: Some(stderr_reader),
            stdout_reader: Some(stdout_reader),
        }
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns its exit
    /// status and everything it wrote.
    fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(killed.success(), "kill -TERM {pid}");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("keyledger did not exit within 30 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        if let Some(h) = self.stderr_reader.take() {
            h.join().expect("stderr reader");
        }
        let stdout = self
            .stdout_reader
            .take()
            .map(|h| h.join().expect("stdout reader"))
            .unwrap_or_default();
        let stderr = self.stderr.lock().expect("lock").clone();
        (status, format!("{stdout}{stderr}"))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Only reached when a test panics before `terminate`: do not leak the child.
        if self.stdout_reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A SIGTERM that comes while the node is still starting stops it
/// gracefully (exit 0, "shutting down"), never by the signal's default kill:
/// the handlers are installed before anything else.
#[test]
fn a_sigterm_during_start_stops_the_node_gracefully() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut child = keyledger()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keyledger serve");
    let mut reader = BufReader::new(child.stderr.take().expect("stderr"));
    let mut log = String::new();
    // The first line is logged before the store is opened: the node is
    // starting, not yet listening.
    reader.read_line(&mut log).expect("first line");
    assert!(log.contains("using the embedded SQLite store"), "{log}");
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let _ = reader.read_to_string(&mut log);
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}\n{log}");
    assert!(log.contains("shutting down"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_token_lifecycle_sigterm_and_audit_work_from_the_command_line_without_leaking_the_key(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(&data);

    let secret_path = data.join("jwt-secret");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&secret_path)
            .expect("serve created the secret file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the secret file is private");
    }
    let secret = std::fs::read_to_string(&secret_path).expect("secret");
    assert!(secret.trim().len() >= 32, "a long random secret");

    let token = run_ok(&[
        "token",
        "--tenant",
        "t",
        "--subject",
        "s",
        "--data-dir",
        data.to_str().expect("utf-8 path"),
    ]);
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");

    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", server.address);
    let health = client.get(url("/healthz")).send().await.expect("healthz");
    assert_eq!(health.status(), 200);

    let created = client
        .post(url("/v1/keys"))
        .bearer_auth(token)
        .json(&json!({"name": "cli", "permissions": ["keys:read"]}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.expect("json");
    let id = created["id"].as_str().expect("id").to_string();
    let key = created["key"].as_str().expect("key").to_string();
    assert_eq!(
        created["created_by"], "s",
        "the token's subject is the actor"
    );

    let verify = |key: String| {
        let client = client.clone();
        let url = url("/v1/keys/verify");
        async move {
            let v: Value = client
                .post(url)
                .json(&json!({ "key": key }))
                .send()
                .await
                .expect("verify")
                .json()
                .await
                .expect("json");
            v["code"].as_str().expect("code").to_string()
        }
    };
    assert_eq!(verify(key.clone()).await, "VALID");

    let deactivated = client
        .post(url(&format!("/v1/keys/{id}/deactivate")))
        .bearer_auth(token)
        .send()
        .await
        .expect("deactivate");
    assert_eq!(deactivated.status(), 200);
    assert_eq!(verify(key.clone()).await, "DISABLED");

    let deleted = client
        .delete(url(&format!("/v1/keys/{id}")))
        .bearer_auth(token)
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 204);
    assert_eq!(verify(key.clone()).await, "NOT_FOUND");

    let (status, logs) = server.terminate();
    assert!(
        status.success(),
        "graceful shutdown exits 0, got {status}:\n{logs}"
    );
    assert!(logs.contains("shutting down"), "the shutdown is logged");
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "the logs really were verbose"
    );
    assert!(logs.contains(&id), "the logs are about this key");
    assert!(!logs.contains(&key), "the raw key is in the logs");
    let hidden = &key[16..];
    assert!(
        !logs.contains(hidden),
        "the secret part of the key is in the logs"
    );
    assert!(
        !logs.contains(secret.trim()),
        "the server secret is in the logs"
    );
    assert!(!logs.contains(token), "the management token is in the logs");

    for entry in std::fs::read_dir(&data).expect("data dir") {
        let path = entry.expect("entry").path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => panic!("read {}: {e}", path.display()),
        };
        assert!(
            !contains(&bytes, key.as_bytes()) && !contains(&bytes, hidden.as_bytes()),
            "{} contains the raw key",
            path.display()
        );
    }
    assert!(data.join("keyledger.db").exists(), "the embedded database");

    let data_arg = data.to_str().expect("utf-8 path");
    let table = run_ok(&["audit", "--data-dir", data_arg]);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].contains("TYPE") && lines[0].contains("KEY_ID"),
        "a header: {table}"
    );
    let types: Vec<&str> = ["KeyCreated", "KeyDeactivated", "KeyDeleted"]
        .into_iter()
        .filter(|t| lines.iter().any(|l| l.contains(t) && l.contains(&id)))
        .collect();
    assert_eq!(
        types,
        ["KeyCreated", "KeyDeactivated", "KeyDeleted"],
        "{table}"
    );
    assert!(!table.contains(&key));

    let json_out = run_ok(&["audit", "--json", "--data-dir", data_arg]);
    let entries: Value = serde_json::from_str(&json_out).expect("audit --json is JSON");
    let entries = entries.as_array().expect("an array of events");
    let key_types: Vec<&str> = entries
        .iter()
        .filter(|e| e["key_id"] == id.as_str())
        .filter(|e| e["type"] != "KeyUsageRecorded")
        .map(|e| e["type"].as_str().expect("type"))
        .collect();
    assert_eq!(key_types, ["KeyCreated", "KeyDeactivated", "KeyDeleted"]);
    assert!(entries
        .iter()
        .all(|e| e["type"].is_string() && e["position"].is_i64()));
    assert!(entries.iter().all(|e| e["tenant"] == "t"));
    assert!(entries
        .iter()
        .filter(|e| e["type"] == "KeyUsageRecorded")
        .all(|e| e["actor"] == "keyledger:usage"));
    assert!(!json_out.contains(&key));

    let filtered = run_ok(&["audit", "--json", "--key", &id, "--data-dir", data_arg]);
    let filtered: Value = serde_json::from_str(&filtered).expect("json");
    assert!(filtered
        .as_array()
        .expect("array")
        .iter()
        .all(|e| e["key_id"] == id.as_str()));
}

/// A management token from `keyledger token`, signed with the data dir's secret.
fn cli_token(data: &Path, tenant: &str, subject: &str) -> String {
    let data = data.to_str().expect("utf-8 path");
    let token = run_ok(&[
        "token",
        "--tenant",
        tenant,
        "--subject",
        subject,
        "--data-dir",
        data,
    ]);
    token.trim().to_string()
}

/// Creates a key over HTTP; returns its id and the raw key.
async fn create_key(client: &reqwest::Client, server: &Server, token: &str) -> (String, String) {
    let created = client
        .post(format!("{}/v1/keys", server.address))
        .bearer_auth(token)
        .json(&json!({"name": "cli", "permissions": ["keys:read"]}))
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.expect("json");
    let id = created["id"].as_str().expect("id").to_string();
    let key = created["key"].as_str().expect("key").to_string();
    (id, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_key_in_a_request_path_reaches_no_log_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let token = cli_token(&data, "t", "s");
    let client = reqwest::Client::new();
    let (id, key) = create_key(&client, &server, &token).await;
    // `kl_live_` then the body: the 46 characters that are the secret.
    let body = key.rsplit('_').next().expect("body").to_string();
    assert_eq!(body.len(), 46, "{key}");

    // Where a raw key ends up in a path by mistake: used as an id, percent-encoded,
    // or on a route that does not exist. Each request line is logged at debug level.
    let encoded = key.replace('_', "%5F");
    let requests = [
        (reqwest::Method::GET, format!("/v1/keys/{key}"), 404),
        (reqwest::Method::GET, format!("/v1/keys/{key}/events"), 404),
        (reqwest::Method::PATCH, format!("/v1/keys/{key}"), 404),
        (reqwest::Method::DELETE, format!("/v1/keys/{key}"), 404),
        (
            reqwest::Method::POST,
            format!("/v1/keys/{key}/deactivate"),
            404,
        ),
        (reqwest::Method::GET, format!("/v1/keys/{encoded}"), 404),
        (reqwest::Method::GET, format!("/{key}"), 404),
        (reqwest::Method::GET, format!("/v1/keys/{key}/bogus"), 404),
        (reqwest::Method::GET, format!("/v1/keys/{id}"), 200),
    ];
    for (method, path, status) in requests {
        let mut request = client
            .request(method.clone(), format!("{}{path}", server.address))
            .bearer_auth(&token);
        if method == reqwest::Method::PATCH {
            request = request.json(&json!({"description": "d"}));
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), status, "{method} {path}");
    }

    let (status, logs) = server.terminate();
    assert!(status.success(), "graceful shutdown, got {status}:\n{logs}");
    for line in logs.lines() {
        for (what, secret) in [
            ("the raw key", key.as_str()),
            ("the key's body", body.as_str()),
            ("the percent-encoded key", encoded.as_str()),
            ("the key past its display prefix", &key[16..]),
        ] {
            assert!(!line.contains(secret), "{what} is in a log line: {line}");
        }
    }
    // The request lines were written, naming the routes and the well-formed id.
    let request_lines: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("DEBUG") && l.contains(" request "))
        .collect();
    assert!(
        request_lines.len() >= 9,
        "a debug line per request:\n{logs}"
    );
    for logged in [
        "/v1/keys/{id}/events".to_string(),
        "/v1/keys/{id}/deactivate".to_string(),
        format!("/v1/keys/{id}"),
        "/v1/keys/*/*".to_string(),
    ] {
        assert!(
            request_lines.iter().any(|l| l.contains(&logged)),
            "a request line with {logged}:\n{}",
            request_lines.join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_escapes_control_characters_that_a_token_put_in_actor_and_tenant() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let client = reqwest::Client::new();
    // Through the API: a subject whose U+202E (right-to-left override) would show
    // "alice" reversed into "ecila", with a zero-width space and a BEL.
    let bidi_subject = "mallory\u{202e}ecila\u{200b}";
    let bidi_token = cli_token(&data, "acme", bidi_subject);
    let (bidi_id, _) = create_key(&client, &server, &bidi_token).await;
    // Control characters in a token's claims may be refused when the token is
    // checked, but the audit log also holds events written before such a check,
    // or by a database someone edited: this key's event gets them in the store.
    // ESC [2J clears the screen, ESC ] 0; sets the window title, BEL rings, CR
    // returns to overwrite the line, U+009B is the C1 form of ESC [, DEL erases,
    // NEL (U+0085) is a C1 newline, BS steps back.
    let subject = "mallory\u{1b}[2J\u{1b}]0;pwned\u{7}\r\u{9b}31malice\u{7f}\u{202e}\t";
    let tenant = "ev\u{1b}[1Ail\u{85}\u{8}";
    let token = cli_token(&data, "acme", "mallory");
    let (id, _) = create_key(&client, &server, &token).await;
    let (status, logs) = server.terminate();
    assert!(status.success(), "graceful shutdown, got {status}:\n{logs}");
    {
        use sqlx::Connection;
        let url = format!("sqlite://{}", data.join("keyledger.db").display());
        let mut db = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("open the store");
        let updated = sqlx::query("UPDATE audit_log SET actor = ?, tenant = ? WHERE key_id = ?")
            .bind(subject)
            .bind(tenant)
            .bind(&id)
            .execute(&mut db)
            .await
            .expect("update");
        assert!(updated.rows_affected() >= 1);
        db.close().await.expect("close");
    }
    let data_arg = data.to_str().expect("utf-8 path");

    // The hostile text really is in the store as it came: --json shows it exactly.
    let json_out = run_ok(&["audit", "--json", "--data-dir", data_arg]);
    let entries: Value = serde_json::from_str(&json_out).expect("json");
    let created = |key: &str| {
        entries
            .as_array()
            .expect("array")
            .iter()
            .find(|e| e["key_id"] == key && e["type"] == "KeyCreated")
            .unwrap_or_else(|| panic!("the KeyCreated event of {key}: {json_out}"))
            .clone()
    };
    assert_eq!(created(&bidi_id)["actor"], bidi_subject);
    assert_eq!(created(&id)["actor"], subject);
    assert_eq!(created(&id)["tenant"], tenant);

    let output = keyledger()
        .args(["audit", "--data-dir", data_arg])
        .output()
        .expect("run keyledger audit");
    assert!(output.status.success());
    for (at, byte) in output.stdout.iter().enumerate() {
        assert!(
            (*byte >= 0x20 && *byte != 0x7f) || *byte == b'\n',
            "byte {byte:#04x} at {at} of the table: {:?}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    let table = String::from_utf8(output.stdout).expect("utf-8 table");
    let hidden = table
        .chars()
        .find(|c| (c.is_control() && *c != '\n') || matches!(c, '\u{202e}' | '\u{200b}'));
    assert_eq!(
        hidden, None,
        "no C1 control or invisible character: {table:?}"
    );
    let row = |key: &str| {
        table
            .lines()
            .find(|l| l.contains(key) && l.contains("KeyCreated"))
            .unwrap_or_else(|| panic!("a row for {key}: {table}"))
            .to_string()
    };
    let bidi_row = row(&bidi_id);
    assert!(
        bidi_row.contains(r"mallory\u{202e}ecila\u{200b}"),
        "the actor, escaped: {bidi_row}"
    );
    let row = row(&id);
    assert!(
        row.contains(r"mallory\u{1b}[2J\u{1b}]0;pwned\u{7}\r\u{9b}31malice\u{7f}\u{202e}\t"),
        "the actor, escaped: {row}"
    );
    assert!(
        row.contains(r"ev\u{1b}[1Ail\u{85}\u{8}"),
        "the tenant, escaped: {row}"
    );
}

#[test]
fn serve_and_token_refuse_a_server_secret_shorter_than_32_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8 path");
    for short in ["x", "0123456789abcdef0123456789abcde"] {
        let mut child = keyledger()
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data])
            .env("KEYLEDGER_JWT_SECRET", short)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keyledger serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "keyledger serve kept running with a {}-byte secret",
                    short.len()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .expect("stderr")
            .read_to_string(&mut stderr)
            .expect("read stderr");
        assert!(!status.success(), "serve exits non-zero: {stderr}");
        assert!(
            stderr.contains("KEYLEDGER_JWT_SECRET")
                && stderr.contains("at least 32 bytes")
                && stderr.contains("openssl rand -hex 32"),
            "a configuration error naming the minimum and how to make a secret: {stderr}"
        );
        assert!(!stderr.contains("listening on"), "{stderr}");

        let output = keyledger()
            .args([
                "token",
                "--tenant",
                "t",
                "--subject",
                "s",
                "--data-dir",
                data,
            ])
            .env("KEYLEDGER_JWT_SECRET", short)
            .output()
            .expect("run keyledger token");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "token refuses it too");
        assert!(output.stdout.is_empty(), "no token is printed");
        assert!(stderr.contains("at least 32 bytes"), "{stderr}");
    }
    // 32 bytes are enough.
    let output = keyledger()
        .args([
            "token",
            "--tenant",
            "t",
            "--subject",
            "s",
            "--data-dir",
            data,
        ])
        .env("KEYLEDGER_JWT_SECRET", "0123456789abcdef0123456789abcdef")
        .output()
        .expect("run keyledger token");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn migrate_creates_the_embedded_database_in_a_new_data_dir() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("fresh");
    assert!(!data.exists());
    run_ok(&["migrate", "--data-dir", data.to_str().expect("utf-8 path")]);
    let db = data.join("keyledger.db");
    assert!(db.exists(), "migrate created {}", db.display());
    assert!(std::fs::metadata(&db).expect("stat").len() > 0);
    // Migrating again is a no-op that succeeds.
    run_ok(&["migrate", "--data-dir", data.to_str().expect("utf-8 path")]);
    // And the migrated store has an empty audit log.
    let out = run_ok(&[
        "audit",
        "--json",
        "--data-dir",
        data.to_str().expect("utf-8 path"),
    ]);
    let entries: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(entries, json!([]));
}

#[test]
fn a_token_from_the_command_line_is_signed_with_the_data_dir_secret() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8 path");
    let token = run_ok(&[
        "token",
        "--tenant",
        "acme",
        "--subject",
        "ops",
        "--ttl",
        "5m",
        "--data-dir",
        data,
    ]);
    let secret = std::fs::read_to_string(dir.path().join("jwt-secret")).expect("secret file");
    let claims = keyledger::http::auth::TokenVerifier::hs256(secret.trim().as_bytes())
        .verify(token.trim())
        .expect("verifies with the data dir secret");
    assert_eq!(claims.tenant, "acme");
    assert_eq!(claims.sub, "ops");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    assert!(
        claims.exp > now && claims.exp <= now + 5 * 60 + 5,
        "--ttl 5m"
    );
    assert!(
        keyledger::http::auth::TokenVerifier::hs256(b"another secret")
            .verify(token.trim())
            .is_err()
    );
}

#[test]
fn token_open_prints_a_console_link_with_the_token_in_the_fragment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().to_str().expect("utf-8 path");
    let base = ["token", "--tenant", "acme", "--subject", "ops"];
    let secret = || std::fs::read_to_string(dir.path().join("jwt-secret")).expect("secret file");
    let verifies = |token: &str| {
        let claims = keyledger::http::auth::TokenVerifier::hs256(secret().trim().as_bytes())
            .verify(token)
            .expect("the fragment holds a token signed with the data dir secret");
        assert_eq!(
            (claims.tenant.as_str(), claims.sub.as_str()),
            ("acme", "ops")
        );
    };

    let link = run_ok(&[&base[..], &["--open", "--data-dir", data]].concat());
    let link = link.trim();
    let token = link
        .strip_prefix("http://127.0.0.1:8080/#token=")
        .unwrap_or_else(|| panic!("the default console address: {link}"));
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    assert!(!link.contains('?'), "never in a query string: {link}");
    verifies(token);

    let link = run_ok(
        &[
            &base[..],
            &[
                "--open",
                "--url",
                "https://keys.example.com/",
                "--data-dir",
                data,
            ],
        ]
        .concat(),
    );
    let token = link
        .trim()
        .strip_prefix("https://keys.example.com/#token=")
        .unwrap_or_else(|| panic!("--url, one slash: {link}"));
    verifies(token);

    let output = keyledger()
        .args(base)
        .args(["--url", "https://keys.example.com", "--data-dir", data])
        .output()
        .expect("run keyledger");
    assert!(!output.status.success(), "--url without --open is refused");
}

/// Runs the binary with a data dir and returns (success, stdout, stderr).
fn keyledger_in(dir: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyledger"))
        .args(args)
        .arg("--data-dir")
        .arg(dir)
        .env_remove("DATABASE_URL")
        .env_remove("KEYLEDGER_JWT_SECRET")
        .output()
        .expect("run keyledger");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `keys` keys and `events` events into the embedded store in `dir`
/// as `keyledger-bench seed` does (the seeder is that tool's library).
fn seed_in(dir: &Path, keys: u64, events: u64) -> u64 {
    let config = keyledger::Config::new(dir.to_path_buf());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let store = keyledger::app::open_store(&config).await.expect("open");
        let seeded = keyledger_bench::seed::seed(&store, "bench", keys, events, false, None)
            .await
            .expect("seed");
        store.close().await;
        seeded.events
    })
}

#[test]
fn projections_tools_rebuild_report_and_check_seeded_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(seed_in(dir.path(), 5, 20), 20);
    let (ok, out, err) = keyledger_in(dir.path(), &["projections", "rebuild"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("20 events") && out.contains("events/s"),
        "{out}"
    );
    // Not a terminal: progress comes as plain lines.
    assert!(err.contains("rebuild: 20/20 events"), "{err}");
    let (ok, out, _) = keyledger_in(dir.path(), &["projections", "status"]);
    assert!(ok);
    let key_list = out
        .lines()
        .find(|l| l.starts_with("key_list"))
        .expect("key_list line");
    assert_eq!(
        key_list.split_whitespace().collect::<Vec<_>>(),
        ["key_list", "20", "0"]
    );
    let (ok, out, _) = keyledger_in(dir.path(), &["projections", "check"]);
    assert!(ok, "{out}");
    let (ok, out, _) = keyledger_in(dir.path(), &["audit", "verify"]);
    assert!(ok, "{out}");
    assert!(out.starts_with("ok: 20 events verified"), "{out}");
}

/// The permission bits of a file or directory, in octal (`0700`).
#[cfg(unix)]
fn mode_of(path: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode();
    format!("{:04o}", mode & 0o777)
}

/// The data directory is 0700 and the SQLite file with its `-wal` and `-shm`
/// files 0600 (while the server runs, when all three exist).
#[cfg(unix)]
fn assert_private(data: &Path, when: &str) {
    assert_eq!(mode_of(data), "0700", "{when}: {}", data.display());
    for file in ["keyledger.db", "keyledger.db-wal", "keyledger.db-shm"] {
        let path = data.join(file);
        assert_eq!(mode_of(&path), "0600", "{when}: {}", path.display());
    }
}

const SHARED_WARNING: &str = "accessible to group or others";

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_and_database_files_are_private_and_serve_warns_when_they_are_not() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let client = reqwest::Client::new();

    // First start (a umask of 022 would give 0755 and 0644), then a restart.
    for when in ["first start", "restart"] {
        let server = Server::start(&data);
        let token = cli_token(&data, "acme", "alice");
        let (_, key) = create_key(&client, &server, &token).await;
        assert!(!key.is_empty());
        assert_private(&data, when);
        let (status, log) = server.terminate();
        assert!(status.success(), "{when}: {status}\n{log}");
        assert!(!log.contains(SHARED_WARNING), "{when}: no warning\n{log}");
        assert_eq!(mode_of(&data.join("keyledger.db")), "0600", "{when}");
    }

    // A database left readable by an older release (or by hand): serve warns,
    // naming each, and leaves the modes to the operator.
    let db = data.join("keyledger.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let server = Server::start(&data);
    let (status, log) = server.terminate();
    assert!(status.success(), "{status}\n{log}");
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains(SHARED_WARNING))
        .collect();
    assert_eq!(warnings.len(), 2, "{log}");
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("database file") && l.contains(&db.display().to_string())),
        "{log}"
    );
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("data directory") && l.contains(&data.display().to_string())),
        "{log}"
    );
    assert_eq!(mode_of(&db), "0644");
    assert_eq!(mode_of(&data), "0755");
}
