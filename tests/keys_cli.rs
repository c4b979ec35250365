//! `keyledger keys list` as an operator runs it: the real binary over a data
//! directory that a server (in process, so that its clock can be set a month
//! back) filled through the API. The hygiene filters select what `GET /v1/keys`
//! would, each line of `--json` is the API's key view, the table shows names
//! escaped, and bad flags fail naming the flag.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyledger::clock::Clock;
use keyledger::config::Config;
use keyledger::Application;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const BIN: &str = env!("CARGO_BIN_EXE_keyledger");
const SECRET: &str = "keys-cli-secret-0123456789abcdef0123456789abcdef";
const TENANT: &str = "acme";

/// Environment that would point the binary elsewhere than `--data-dir`.
const CLEARED_ENV: [&str; 6] = [
    "DATABASE_URL",
    "KEYLEDGER_EVENT_STORE",
    "KEYLEDGER_DATA_DIR",
    "KEYLEDGER_JWT_SECRET",
    "KEYLEDGER_KURRENT_NAMESPACE",
    "RUST_LOG",
];

/// `keyledger keys list --data-dir <data> <args>`.
fn keys_list(data: &Path, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    for var in CLEARED_ENV {
        command.env_remove(var);
    }
    command
        .args(["keys", "list", "--data-dir"])
        .arg(data)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run keyledger keys list")
}

/// Stdout of a successful `keys list`.
fn listed_text(data: &Path, args: &[&str]) -> String {
    let out = keys_list(data, args);
    assert!(
        out.status.success(),
        "keys list {args:?} failed with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// The key views of `keys list --json <args>`, one per line.
fn listed_json(data: &Path, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    listed_text(data, &all)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: a JSON line: {l}")))
        .collect()
}

fn listed_ids(data: &Path, args: &[&str]) -> Vec<String> {
    listed_json(data, args)
        .iter()
        .map(|v| v["id"].as_str().expect("id").to_string())
        .collect()
}

/// A server over `data`, on a clock of its own.
struct Server {
    address: String,
    clock: Clock,
    client: reqwest::Client,
    token: String,
    shutdown: oneshot::Sender<()>,
    handle: JoinHandle<()>,
}

impl Server {
    async fn start(data: &Path, clock: Clock) -> Server {
        let mut config = Config::new(data.to_path_buf());
        config.listen = "127.0.0.1:0".parse().expect("addr");
        config.jwt_secret = Some(SECRET.to_string());
        let app = Application::build_with_clock(config, clock.clone())
            .await
            .expect("build application");
        let address = format!("http://{}", app.address());
        let (shutdown, stopped) = oneshot::channel::<()>();
        let handle = tokio::spawn(async move {
            app.run_until_stopped(async {
                let _ = stopped.await;
            })
            .await
            .expect("server run");
        });
        let token = keyledger::http::auth::mint(
            SECRET.as_bytes(),
            TENANT,
            "alice",
            Duration::from_secs(600),
        )
        .expect("mint");
        Server {
            address,
            clock,
            client: reqwest::Client::new(),
            token,
            shutdown,
            handle,
        }
    }

    /// Stops gracefully: the usage counted so far is flushed.
    async fn stop(self) {
        let _ = self.shutdown.send(());
        self.handle.await.expect("server task");
    }

    async fn create(&self, body: Value) -> Value {
        let r = self
            .client
            .post(format!("{}/v1/keys", self.address))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("create");
        assert_eq!(r.status(), 201);
        r.json().await.expect("json")
    }

    /// Creates a key; returns its id and raw key.
    async fn create_key(&self, name: &str) -> (String, String) {
        let v = self.create(json!({ "name": name })).await;
        (
            v["id"].as_str().expect("id").to_string(),
            v["key"].as_str().expect("key").to_string(),
        )
    }

    async fn create_expiring(&self, name: &str, at: DateTime<Utc>) -> String {
        let v = self
            .create(json!({ "name": name, "expires_at": at.to_rfc3339() }))
            .await;
        v["id"].as_str().expect("id").to_string()
    }

    /// Replaces the tenant's policy (`PUT /v1/policy`).
    async fn put_policy(&self, policy: Value) {
        let r = self
            .client
            .put(format!("{}/v1/policy", self.address))
            .bearer_auth(&self.token)
            .json(&policy)
            .send()
            .await
            .expect("put policy");
        assert_eq!(r.status(), 200);
    }

    async fn use_key(&self, key: &str) {
        let v: Value = self
            .client
            .post(format!("{}/v1/keys/verify", self.address))
            .json(&json!({ "key": key }))
            .send()
            .await
            .expect("verify")
            .json()
            .await
            .expect("json");
        assert_eq!(v["code"], "VALID", "{v}");
    }

    async fn view(&self, id: &str) -> Value {
        self.client
            .get(format!("{}/v1/keys/{id}", self.address))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_list_filters_like_the_api_and_shows_its_key_view() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let day = chrono::Duration::days(1);
    // A month ago, by the server's clock; `keys list` reads the real one.
    let clock = Clock::system();
    clock.advance(-(day * 31));
    let server = Server::start(&data, clock).await;
    let (stale_used, stale_key) = server.create_key("stale-used").await;
    let (stale_never, _) = server.create_key("stale-never").await;
    let lapsed = server
        .create_expiring("lapsed", server.clock.now() + day)
        .await;
    let (revived, revived_key) = server.create_key("revived").await;
    server.use_key(&stale_key).await;
    server.clock.advance(day * 31);
    server.use_key(&revived_key).await;
    let (fresh_used, fresh_key) = server.create_key("fresh-used").await;
    server.use_key(&fresh_key).await;
    let (fresh_never, _) = server.create_key("fresh-never").await;
    let soon = server
        .create_expiring("soon", server.clock.now() + day * 10)
        .await;
    let later = server
        .create_expiring("later", server.clock.now() + day * 60)
        .await;
    let api_view = server.view(&soon).await;
    server.stop().await;

    let all = [
        &later,
        &soon,
        &fresh_never,
        &fresh_used,
        &revived,
        &lapsed,
        &stale_never,
        &stale_used,
    ];
    let newest_first = |keys: &[&String]| -> Vec<String> {
        all.iter()
            .filter(|id| keys.contains(id))
            .map(|id| id.to_string())
            .collect()
    };
    let tenant = ["--tenant", TENANT];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut args = vec!["--tenant", TENANT];
        args.extend_from_slice(extra);
        args
    };

    assert_eq!(listed_ids(&data, &tenant), newest_first(&all));
    assert_eq!(
        listed_ids(&data, &with(&["--never-used"])),
        newest_first(&[&later, &soon, &fresh_never, &lapsed, &stale_never])
    );
    assert_eq!(
        listed_ids(&data, &with(&["--unused-for", "30d"])),
        newest_first(&[&lapsed, &stale_never, &stale_used])
    );
    assert_eq!(
        listed_ids(&data, &with(&["--expires-within", "14d"])),
        vec![soon.clone()]
    );
    assert_eq!(
        listed_ids(&data, &with(&["--no-expiry"])),
        newest_first(&[
            &fresh_never,
            &fresh_used,
            &revived,
            &stale_never,
            &stale_used
        ])
    );
    assert_eq!(
        listed_ids(&data, &with(&["--no-expiry", "--never-used"])),
        newest_first(&[&fresh_never, &stale_never])
    );
    assert_eq!(
        listed_ids(
            &data,
            &with(&["--unused-for", "30d", "--status", "expired"])
        ),
        vec![lapsed.clone()]
    );
    assert_eq!(
        listed_ids(
            &data,
            &with(&["--never-used", "--environment", "live", "--limit", "2"])
        ),
        newest_first(&[&later, &soon])
    );
    assert!(listed_ids(&data, &with(&["--environment", "test"])).is_empty());
    assert!(
        listed_ids(&data, &["--tenant", "someone-else"]).is_empty(),
        "only the tenant's keys"
    );

    // Each line is the API's view of the key.
    let lines = listed_json(&data, &with(&["--expires-within", "14d"]));
    let cli_view = &lines[0];
    let fields = |v: &Value| -> Vec<String> {
        let mut names: Vec<String> = v.as_object().expect("object").keys().cloned().collect();
        names.sort();
        names
    };
    assert_eq!(fields(cli_view), fields(&api_view), "{cli_view}");
    for field in ["id", "prefix", "name", "expires_at", "status", "created_at"] {
        assert_eq!(cli_view[field], api_view[field], "{field}");
    }
    let used = listed_json(&data, &with(&["--unused-for", "30d"]));
    let stale = used
        .iter()
        .find(|v| v["id"] == stale_used.as_str())
        .expect("the stale key");
    assert_eq!(stale["usage_count"], 1, "{stale}");
    assert!(stale["last_used_at"].is_string(), "{stale}");
    let lapsed_view = used
        .iter()
        .find(|v| v["id"] == lapsed.as_str())
        .expect("the lapsed key");
    assert_eq!(lapsed_view["status"], "expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_list_prints_a_table_with_hostile_names_escaped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(&data, Clock::system()).await;
    let (used, key) = server.create_key("plain").await;
    server.use_key(&key).await;
    let (hostile, _) = server.create_key("to be renamed").await;
    let expiring = server
        .create_expiring("expiring", server.clock.now() + chrono::Duration::days(3))
        .await;
    server.stop().await;
    // The API refuses control characters in names; a name stored before that
    // rule (or by hand) still reaches the table: it is put in the view here.
    let name = "evil\u{1b}[2J\r\u{9b}31m\u{202e}name";
    {
        use sqlx::Connection;
        let url = format!("sqlite://{}", data.join("keyledger.db").display());
        let mut db = sqlx::SqliteConnection::connect(&url)
            .await
            .expect("open the store");
        let updated = sqlx::query("UPDATE key_list SET name = ? WHERE id = ?")
            .bind(name)
            .bind(&hostile)
            .execute(&mut db)
            .await
            .expect("update");
        assert_eq!(updated.rows_affected(), 1);
        db.close().await.expect("close");
    }

    let out = keys_list(&data, &["--tenant", TENANT]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (at, byte) in out.stdout.iter().enumerate() {
        assert!(
            (*byte >= 0x20 && *byte != 0x7f) || *byte == b'\n',
            "byte {byte:#04x} at {at} of the table: {:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let table = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        !table
            .chars()
            .any(|c| c.is_control() && c != '\n' || c == '\u{202e}'),
        "{table:?}"
    );
    let lines: Vec<&str> = table.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["ID", "PREFIX", "NAME", "STATUS", "LAST_USED", "EXPIRES"]
    );
    assert_eq!(lines.len(), 4, "a header and a row per key: {table}");
    let row = |id: &str| -> Vec<&str> {
        lines
            .iter()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("a row for {id}: {table}"))
            .split_whitespace()
            .collect()
    };
    let hostile_row = row(&hostile);
    assert_eq!(
        hostile_row[2], r"evil\u{1b}[2J\r\u{9b}31m\u{202e}name",
        "{table}"
    );
    assert_eq!(hostile_row[3..], ["active", "never", "never"]);
    let used_row = row(&used);
    assert_eq!(used_row[2], "plain");
    assert!(
        used_row[4].ends_with('Z') && used_row[4] != "never",
        "{table}"
    );
    assert_eq!(used_row[5], "never");
    let expiring_row = row(&expiring);
    assert_eq!(expiring_row[4], "never");
    assert!(expiring_row[5].ends_with('Z'), "{table}");
    // The columns line up: every row's status starts where the header's does.
    let status_at = lines[0].find("STATUS").expect("STATUS");
    for line in &lines[1..] {
        assert_eq!(&line[status_at..status_at + 6], "active", "{table}");
    }

    // JSON keeps the stored text exactly: it is for programs, not terminals.
    let views = listed_json(&data, &["--tenant", TENANT, "--no-expiry"]);
    let stored = views
        .iter()
        .find(|v| v["id"] == hostile.as_str())
        .expect("the renamed key");
    assert_eq!(stored["name"], name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_list_reads_past_a_page_of_100_up_to_its_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let server = Server::start(&data, Clock::system()).await;
    let mut ids = Vec::new();
    for n in 0..103 {
        ids.push(server.create_key(&format!("k{n}")).await.0);
    }
    server.stop().await;
    ids.reverse();
    assert_eq!(
        listed_ids(&data, &["--tenant", TENANT, "--limit", "500"]),
        ids,
        "every key, newest first, across pages"
    );
    assert_eq!(
        listed_ids(&data, &["--tenant", TENANT, "--limit", "101"]),
        ids[..101]
    );
    assert_eq!(
        listed_ids(&data, &["--tenant", TENANT]),
        ids[..100],
        "100 by default"
    );
    assert_eq!(
        listed_ids(&data, &["--tenant", TENANT, "--never-used", "--limit", "3"]),
        ids[..3]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_list_breaks_policy_lists_the_keys_the_current_policy_would_refuse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let day = chrono::Duration::days(1);
    let server = Server::start(&data, Clock::system()).await;
    let in_days = |n: i32| (Utc::now() + day * n).to_rfc3339();
    let id = |v: Value| v["id"].as_str().expect("id").to_string();
    let fine = id(server
        .create(json!({"name": "fine", "permissions": ["read"], "expires_at": in_days(10)}))
        .await);
    let extra = id(server
        .create(
            json!({"name": "extra", "permissions": ["read", "delete-data"],
                       "expires_at": in_days(10)}),
        )
        .await);
    let test_env = id(server
        .create(
            json!({"name": "test", "environment": "test", "permissions": ["read"],
                       "expires_at": in_days(10)}),
        )
        .await);
    let forever = id(server
        .create(json!({"name": "forever", "permissions": ["read"]}))
        .await);
    let long = id(server
        .create(json!({"name": "long", "permissions": ["read"], "expires_at": in_days(60)}))
        .await);
    let before = server.view(&forever).await;
    server.stop().await;
    let tenant = ["--tenant", TENANT];
    let owned = |list: &[&String]| -> Vec<String> { list.iter().map(|s| s.to_string()).collect() };
    let all = listed_ids(&data, &tenant);
    assert_eq!(all, owned(&[&long, &forever, &test_env, &extra, &fine]));
    assert!(
        listed_ids(&data, &["--tenant", TENANT, "--breaks-policy"]).is_empty(),
        "no policy: nothing breaks it"
    );

    let server = Server::start(&data, Clock::system()).await;
    server
        .put_policy(json!({"max_lifetime_seconds": 30 * 86_400,
            "allowed_permissions": ["read"], "allowed_environments": ["live"]}))
        .await;
    assert_eq!(server.view(&forever).await, before, "the key is unchanged");
    server.stop().await;
    assert_eq!(
        listed_ids(&data, &["--tenant", TENANT, "--breaks-policy"]),
        owned(&[&long, &forever, &test_env, &extra])
    );
    assert_eq!(
        listed_ids(
            &data,
            &["--tenant", TENANT, "--breaks-policy", "--limit", "2"]
        ),
        owned(&[&long, &forever])
    );
    assert_eq!(
        listed_ids(
            &data,
            &["--tenant", TENANT, "--breaks-policy", "--no-expiry"]
        ),
        owned(&[&forever])
    );
    assert_eq!(
        listed_ids(
            &data,
            &[
                "--tenant",
                TENANT,
                "--breaks-policy",
                "--environment",
                "test"
            ]
        ),
        owned(&[&test_env])
    );
    assert!(
        listed_ids(&data, &["--tenant", "someone-else", "--breaks-policy"]).is_empty(),
        "only the tenant's keys"
    );
    assert_eq!(listed_ids(&data, &tenant), all, "every key is still there");
}

#[test]
fn keys_list_refuses_bad_flags_naming_them_without_touching_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("never-created");
    for (args, flag) in [
        (vec!["--unused-for", "abc"], "--unused-for"),
        (vec!["--unused-for", "101y"], "--unused-for"),
        (vec!["--expires-within", "soon"], "--expires-within"),
        (vec!["--status", "bogus"], "--status"),
        (vec!["--environment", "staging"], "--environment"),
        (
            vec!["--breaks-policy", "--unused-for", "abc"],
            "--unused-for",
        ),
    ] {
        let mut all = vec!["--tenant", TENANT];
        all.extend_from_slice(&args);
        let out = keys_list(&data, &all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{args:?}");
    }
    for args in [vec!["--limit", "0"], vec!["--never-used", "yes"], vec![]] {
        let out = keys_list(&data, &args);
        assert!(!out.status.success(), "{args:?} succeeded");
    }
    assert!(
        !data.exists(),
        "a refused command creates no data directory"
    );
}
