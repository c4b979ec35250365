//! `keyledger import FILE` as an operator runs it: the real binary against a
//! server on a random port (in process, verifying `sk_live_` keys imported by
//! their hash), with a minted management token in `KEYLEDGER_TOKEN`. Keys
//! from a CSV or JSON-lines file are listed as imported and verify; a second
//! run changes nothing; a bad line fails alone, by its number; a refused
//! token stops the run (exit 2) and is never printed.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::helpers::{start, Backend, TestApp, TestStore};

const BIN: &str = env!("CARGO_BIN_EXE_keyledger");
const PREFIX: &str = "sk_live_";
const KEYS: usize = 2_500;

/// A server whose verification looks up keys imported with `sk_live_`.
async fn import_app() -> TestApp {
    let store = TestStore::new(Backend::Sqlite)
        .await
        .expect("SQLite is always available");
    start(store, |c| c.import_prefixes = vec![PREFIX.to_string()]).await
}

/// A key another system issued: the raw key (which only the test knows) and
/// what an import file says of it.
struct Foreign {
    raw: String,
    hash: String,
    prefix: String,
    name: String,
}

fn foreign_keys(kind: &str, n: usize) -> Vec<Foreign> {
    (0..n)
        .map(|i| {
            let raw = format!("{PREFIX}{}", uuid::Uuid::new_v4().simple());
            Foreign {
                hash: hex::encode(Sha256::digest(raw.as_bytes())),
                prefix: raw[..12].to_string(),
                name: format!("{kind} key {i}"),
                raw,
            }
        })
        .collect()
}

/// A CSV file of the keys: lists space-separated, metadata as JSON text,
/// quoted cells with commas and quotes, empty cells.
fn write_csv(path: &Path, keys: &[Foreign]) {
    let mut text = String::from("hash,prefix,name,description,permissions,metadata\n");
    for (i, k) in keys.iter().enumerate() {
        let description = if i % 2 == 0 {
            String::new()
        } else {
            format!("\"imported, from \"\"legacy\"\" #{i}\"")
        };
        text.push_str(&format!(
            "{},{},{},{description},keys:read orders:write,\"{{\"\"n\"\":{i}}}\"\n",
            k.hash, k.prefix, k.name
        ));
    }
    std::fs::write(path, text).expect("write CSV");
}

/// The import item of a key, as a JSON line.
fn json_line(i: usize, k: &Foreign) -> String {
    json!({
        "hash": k.hash,
        "prefix": k.prefix,
        "name": k.name,
        "permissions": ["keys:read"],
        "metadata": {"n": i},
        "created_at": "2024-03-01T10:00:00Z",
    })
    .to_string()
}

fn write_jsonl(path: &Path, keys: &[Foreign]) {
    let mut text = String::new();
    for (i, k) in keys.iter().enumerate() {
        text.push_str(&json_line(i, k));
        text.push('\n');
    }
    std::fs::write(path, text).expect("write JSON lines");
}

/// `keyledger import <args> --url <the app>`, the token in the environment,
/// `stdin` on standard input.
async fn run_import(app: &TestApp, token: &str, args: &[&str], stdin: Option<&Path>) -> Output {
    let mut command = Command::new(BIN);
    for var in [
        "KEYLEDGER_URL",
        "KEYLEDGER_TOKEN",
        "RUST_LOG",
        "DATABASE_URL",
        "KEYLEDGER_EVENT_STORE",
    ] {
        command.env_remove(var);
    }
    command
        .arg("import")
        .args(args)
        .args(["--url", &app.address])
        .env("KEYLEDGER_TOKEN", token)
        .env("NO_COLOR", "1")
        .stdin(match stdin {
            Some(path) => Stdio::from(std::fs::File::open(path).expect("stdin file")),
            None => Stdio::null(),
        });
    // The server runs on this process's runtime: wait off its workers.
    tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run keyledger import")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts the exit code and the summary line.
fn assert_summary(out: &Output, code: i32, summary: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), format!("{summary}\n"));
}

/// Every key of the tenant, by name, through `GET /v1/keys`.
async fn listed(app: &TestApp) -> BTreeMap<String, Value> {
    let mut keys = BTreeMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/keys?limit=100&cursor={c}"),
            None => "/v1/keys?limit=100".to_string(),
        };
        let r = app.get(&path).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        for key in r.body["keys"].as_array().expect("keys") {
            let name = key["name"].as_str().expect("name").to_string();
            assert!(keys.insert(name, key.clone()).is_none(), "listed twice");
        }
        match r.body["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    keys
}

/// The ids of the listed keys, by name.
fn ids(listed: &BTreeMap<String, Value>) -> BTreeMap<String, String> {
    listed
        .iter()
        .map(|(name, key)| (name.clone(), key["id"].as_str().expect("id").to_string()))
        .collect()
}

/// Asserts that exactly `keys` are listed, imported, with their prefixes.
fn assert_listed(listed: &BTreeMap<String, Value>, keys: &[Foreign]) {
    assert_eq!(listed.len(), keys.len());
    for k in keys {
        let key = listed.get(&k.name).expect("the key is listed");
        assert_eq!(key["imported"], true, "{key}");
        assert_eq!(key["prefix"], k.prefix.as_str());
        assert_eq!(key["status"], "active");
    }
}

/// The lines of an --errors file: (line, error code).
fn error_lines(path: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(path)
        .expect("errors file")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).expect("an errors line is JSON");
            (
                v["line"].as_u64().expect("line"),
                v["error"]["code"].as_str().expect("code").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_file_of_2500_keys_is_imported_and_a_second_run_changes_nothing() {
    let app = import_app().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("keys.csv");
    let keys = foreign_keys("csv", KEYS);
    write_csv(&file, &keys);
    let file_arg = file.to_str().expect("path");

    let out = run_import(&app, &app.token, &[file_arg], None).await;
    assert_summary(&out, 0, "imported 2500, failed 0");
    let first = listed(&app).await;
    assert_listed(&first, &keys);
    let one = &first["csv key 7"];
    assert_eq!(one["permissions"], json!(["keys:read", "orders:write"]));
    assert_eq!(one["metadata"], json!({"n": 7}));
    assert_eq!(one["description"], "imported, from \"legacy\" #7");
    assert_eq!(first["csv key 8"]["description"], Value::Null);
    // The keys work as the other system issued them.
    for k in [&keys[0], &keys[1234], &keys[KEYS - 1]] {
        assert_eq!(app.verify_code(&k.raw).await, "VALID");
    }

    let again = run_import(&app, &app.token, &[file_arg, "--quiet"], None).await;
    assert_summary(&again, 0, "imported 2500, failed 0");
    let second = listed(&app).await;
    assert_eq!(second.len(), KEYS);
    assert_eq!(ids(&second), ids(&first), "a second run makes no new keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_are_imported_in_batches_from_a_file_or_stdin() {
    let app = import_app().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("keys.ndjson");
    let keys = foreign_keys("jsonl", KEYS);
    write_jsonl(&file, &keys);
    let file_arg = file.to_str().expect("path");

    let out = run_import(&app, &app.token, &[file_arg, "--batch", "300"], None).await;
    assert_summary(&out, 0, "imported 2500, failed 0");
    let first = listed(&app).await;
    assert_listed(&first, &keys);
    assert_eq!(first["jsonl key 9"]["metadata"], json!({"n": 9}));
    assert_eq!(app.verify_code(&keys[42].raw).await, "VALID");

    // Standard input needs --format; the same lines again change nothing.
    let refused = run_import(&app, &app.token, &["-"], Some(&file)).await;
    assert_eq!(refused.status.code(), Some(2));
    assert!(text(&refused.stderr).contains("--format"));
    let again = run_import(&app, &app.token, &["-", "--format", "jsonl"], Some(&file)).await;
    assert_summary(&again, 0, "imported 2500, failed 0");
    let second = listed(&app).await;
    assert_eq!(second.len(), KEYS);
    assert_eq!(ids(&second), ids(&first));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_line_fails_alone_by_its_number_and_the_rest_is_imported() {
    let app = import_app().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = foreign_keys("mixed", 20);
    let secret_in_a_line = format!("{PREFIX}thisSecretMustNotBeEchoed");
    let mut lines: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| json_line(i, k))
        .collect();
    // Line 5: not JSON, with a raw key in it.
    lines[4] = format!("{{\"hash\": {secret_in_a_line}");
    // Line 9: an item the server refuses (not a SHA-256).
    lines[8] = json!({"hash": "nothex", "prefix": "sk_live_x", "name": "bad hash"}).to_string();
    // Line 12: JSON, but not an object; line 14: blank.
    lines[11] = "[1, 2]".to_string();
    lines[13] = String::new();
    let file = dir.path().join("keys.jsonl");
    std::fs::write(&file, lines.join("\n")).expect("write");
    let errors = dir.path().join("errors.jsonl");

    let out = run_import(
        &app,
        &app.token,
        &[
            file.to_str().expect("path"),
            "--errors",
            errors.to_str().expect("path"),
            "--batch",
            "7",
        ],
        None,
    )
    .await;
    assert_summary(&out, 1, "imported 16, failed 3");
    assert_eq!(
        error_lines(&errors),
        [
            (5, "unreadable_line".to_string()),
            (9, "validation_failed".to_string()),
            (12, "unreadable_line".to_string()),
        ]
    );
    let written = std::fs::read_to_string(&errors).expect("errors file");
    for shown in [written.as_str(), &text(&out.stderr), &text(&out.stdout)] {
        assert!(!shown.contains("thisSecretMustNotBeEchoed"), "{shown}");
    }
    let imported: Vec<&Foreign> = keys
        .iter()
        .enumerate()
        .filter(|(i, _)| ![4, 8, 11, 13].contains(i))
        .map(|(_, k)| k)
        .collect();
    let listed = listed(&app).await;
    assert_eq!(listed.len(), imported.len());
    for k in imported {
        assert_eq!(listed[&k.name]["imported"], true);
    }

    // A CSV line with metadata that is not JSON fails alone too (on stderr
    // without --errors).
    let csv = dir.path().join("more.csv");
    let more = foreign_keys("csv", 3);
    std::fs::write(
        &csv,
        format!(
            "hash,prefix,name,metadata\n{},{},{},\n{},{},{},{{broken\n{},{},{},{{}}\n",
            more[0].hash,
            more[0].prefix,
            more[0].name,
            more[1].hash,
            more[1].prefix,
            more[1].name,
            more[2].hash,
            more[2].prefix,
            more[2].name,
        ),
    )
    .expect("write");
    let out = run_import(&app, &app.token, &[csv.to_str().expect("path")], None).await;
    assert_summary(&out, 1, "imported 2, failed 1");
    assert!(
        text(&out.stderr).contains("line 3: unreadable_line: metadata: not JSON"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_header_or_token_stops_the_run_before_anything_is_imported() {
    let app = import_app().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = foreign_keys("stopped", 3);

    let csv = dir.path().join("keys.csv");
    let mut text_csv = String::from("hash,prefix,name,colour\n");
    for k in &keys {
        text_csv.push_str(&format!("{},{},{},red\n", k.hash, k.prefix, k.name));
    }
    std::fs::write(&csv, text_csv).expect("write");
    let out = run_import(&app, &app.token, &[csv.to_str().expect("path")], None).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("line 1: column 4 of the header, `colour`"));
    assert!(out.stdout.is_empty());
    assert!(listed(&app).await.is_empty());

    let jsonl = dir.path().join("keys.jsonl");
    write_jsonl(&jsonl, &keys);
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtYWxsb3J5In0.forgedSignatureValue";
    let out = run_import(&app, forged, &[jsonl.to_str().expect("path")], None).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("401"), "{stderr}");
    assert!(!stderr.contains("forgedSignatureValue"), "{stderr}");
    assert!(!text(&out.stdout).contains("forgedSignatureValue"));
    assert!(listed(&app).await.is_empty());
}
