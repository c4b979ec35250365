//! The test harness: a real keyledger server on a random port over a real store
//! (a fresh SQLite file, a fresh PostgreSQL database, or a fresh stream namespace
//! on a KurrentDB server, per test).

use std::path::PathBuf;
use std::time::Duration;

use keyledger::clock::Clock;
use keyledger::config::{Config, KurrentConfig, StoreConfig};
use keyledger::Application;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[path = "../common/skip.rs"]
mod skip;
pub use skip::skipped;

pub const SECRET: &str = "test-secret-0123456789abcdef0123456789abcdef";
pub const TENANT: &str = "acme";
pub const ACTOR: &str = "alice";

/// Which event store a behavioural test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
    /// Events in KurrentDB (`KEYLEDGER_TEST_KURRENTDB_URL`), projections in
    /// SQLite; each test writes under a namespace of its own.
    #[cfg(feature = "kurrentdb")]
    Kurrent,
}

/// Where a test's data lives; kept across restarts of the server.
pub struct TestStore {
    pub backend: Backend,
    pub data_dir: TempDir,
    pub database_url: Option<String>,
    /// Drop the PostgreSQL database with the store (false for extra nodes).
    pub owns_database: bool,
    /// The KurrentDB server and this test's stream namespace.
    pub kurrent: Option<KurrentConfig>,
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let (Some(url), true) = (self.database_url.clone(), self.owns_database) else {
            return;
        };
        // Best effort, on a thread of its own: Drop cannot await.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(drop_database(&url));
        })
        .join();
    }
}

async fn drop_database(url: &str) {
    use sqlx::Connection;
    let Ok(parsed) = url::Url::parse(url) else {
        return;
    };
    let name = parsed.path().trim_start_matches('/').to_string();
    let Some(admin_url) = postgres_url() else {
        return;
    };
    if let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
    }
}

impl TestStore {
    /// A fresh store, or `None` (after saying so loudly) when PostgreSQL is wanted
    /// but not configured and not required.
    pub async fn new(backend: Backend) -> Option<Self> {
        let data_dir = tempfile::tempdir().expect("tempdir");
        let (database_url, kurrent) = match backend {
            Backend::Sqlite => (None, None),
            Backend::Postgres => (Some(fresh_postgres_database().await?), None),
            #[cfg(feature = "kurrentdb")]
            Backend::Kurrent => (None, Some(fresh_kurrent_namespace()?)),
        };
        Some(Self {
            backend,
            data_dir,
            owns_database: database_url.is_some(),
            database_url,
            kurrent,
        })
    }

    pub fn config(&self) -> Config {
        let mut config = Config::new(self.data_dir.path().to_path_buf());
        config.listen = "127.0.0.1:0".parse().expect("addr");
        config.jwt_secret = Some(SECRET.to_string());
        config.usage_flush_interval = Duration::from_secs(3600);
        config.poll_interval = Duration::from_millis(50);
        if let Some(url) = &self.database_url {
            config.store = StoreConfig::Postgres(url.clone());
        }
        #[cfg(feature = "kurrentdb")]
        if let Some(k) = &self.kurrent {
            config.store = StoreConfig::Kurrent(k.clone());
        }
        config
    }

    /// The SQLite file holding the projections (SQLite and KurrentDB backends).
    pub fn projections_sqlite_path(&self) -> PathBuf {
        let file = if self.kurrent.is_some() {
            "kurrent-projections.db"
        } else {
            "keyledger.db"
        };
        self.data_dir.path().join(file)
    }

    pub fn sqlite_files(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.data_dir.path())
            .expect("read data dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.to_string_lossy().contains("keyledger.db"))
            .collect()
    }
}

/// The PostgreSQL URL tests may use, if any.
pub fn postgres_url() -> Option<String> {
    std::env::var("KEYLEDGER_TEST_DATABASE_URL")
        .ok()
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .filter(|u| u.starts_with("postgres"))
}

/// A stream namespace of its own on the test KurrentDB server, or `None` (after
/// saying so) when `KEYLEDGER_TEST_KURRENTDB_URL` is not set.
#[cfg(feature = "kurrentdb")]
fn fresh_kurrent_namespace() -> Option<KurrentConfig> {
    let Some(url) = std::env::var("KEYLEDGER_TEST_KURRENTDB_URL")
        .ok()
        .filter(|u| !u.trim().is_empty())
    else {
        skipped("KEYLEDGER_TEST_KURRENTDB_URL not set (no KurrentDB server on this machine)");
        return None;
    };
    Some(KurrentConfig {
        url,
        namespace: format!("kltest_{}", uuid::Uuid::new_v4().simple()),
        projections_url: None,
    })
}

fn postgres_required() -> bool {
    std::env::var("KEYLEDGER_REQUIRE_POSTGRES").is_ok_and(|v| v == "1")
}

/// Creates a database of its own for one test.
async fn fresh_postgres_database() -> Option<String> {
    let Some(url) = postgres_url() else {
        assert!(
            !postgres_required(),
            "KEYLEDGER_REQUIRE_POSTGRES=1 but neither KEYLEDGER_TEST_DATABASE_URL nor DATABASE_URL is set"
        );
        skipped("PostgreSQL test: set DATABASE_URL or KEYLEDGER_TEST_DATABASE_URL to run it");
        return None;
    };
    use sqlx::Connection;
    let mut admin = match sqlx::PgConnection::connect(&url).await {
        Ok(c) => c,
        Err(e) => {
            assert!(
                !postgres_required(),
                "PostgreSQL required but unreachable: {e}"
            );
            skipped(&format!("PostgreSQL test: {url} unreachable: {e}"));
            return None;
        }
    };
    let name = format!("kl_test_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .expect("create test database");
    let mut parsed = url::Url::parse(&url).expect("database url");
    parsed.set_path(&format!("/{name}"));
    Some(parsed.to_string())
}

/// A running server.
pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub token: String,
    pub clock: Clock,
    pub store: TestStore,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

/// Starts a server over a fresh store; `None` when the backend is unavailable.
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    let store = TestStore::new(backend).await?;
    Some(start(store, |_| {}).await)
}

/// A server over a fresh SQLite store, for behaviours decided before any store
/// is touched (a token, the shape of a request): those run once, not once per
/// backend, as plain `#[tokio::test]`s.
pub async fn spawn_sqlite_app() -> TestApp {
    spawn_app(Backend::Sqlite)
        .await
        .expect("SQLite is always available")
}

/// Starts a server over an existing store, letting the test adjust the config.
pub async fn start(store: TestStore, adjust: impl FnOnce(&mut Config)) -> TestApp {
    init_test_logging();
    let mut config = store.config();
    adjust(&mut config);
    let clock = Clock::system();
    let app = Application::build_with_clock(config, clock.clone())
        .await
        .expect("build application");
    let address = format!("http://{}", app.address());
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        app.run_until_stopped(async {
            let _ = rx.await;
        })
        .await
        .expect("server run");
    });
    TestApp {
        address,
        client: reqwest::Client::new(),
        token: token(TENANT, ACTOR),
        clock,
        store,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

fn init_test_logging() {
    if std::env::var("TEST_LOG").is_ok() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("debug,sqlx=warn")
            .with_test_writer()
            .try_init();
    }
}

/// A management token for a tenant and subject, signed with the test secret.
pub fn token(tenant: &str, subject: &str) -> String {
    keyledger::http::auth::mint(SECRET.as_bytes(), tenant, subject, Duration::from_secs(600))
        .expect("mint token")
}

/// A response: status and JSON body (Null when empty).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub text: String,
}

impl Reply {
    /// The error code of an error body.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<none>")
    }
}

/// Reads a response into a `Reply`.
pub async fn reply(response: reqwest::Response) -> Reply {
    let status = response.status();
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Reply { status, body, text }
}

impl TestApp {
    /// The event store and the projections as the offline tools (`projections
    /// check`, `rebuild`) open them, beside the running server.
    pub async fn open_tools(
        &self,
    ) -> (
        keyledger::store::EventStore,
        keyledger_projections::Projections,
    ) {
        let store = keyledger::app::open_store(&self.store.config())
            .await
            .expect("open store");
        let projections = keyledger_projections::Projections::unloaded(store.projection_db());
        (store, projections)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// Sends a request with the default management token.
    pub async fn send(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Reply {
        self.send_as(&self.token, method, path, body).await
    }

    pub async fn send_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            request = request.json(&b);
        }
        reply(request.send().await.expect("request")).await
    }

    /// Sends a raw body with the default token.
    pub async fn send_raw(&self, method: reqwest::Method, path: &str, body: &str) -> Reply {
        let request = self
            .client
            .request(method, self.url(path))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body.to_string());
        reply(request.send().await.expect("request")).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.send(reqwest::Method::POST, path, Some(body)).await
    }

    /// Creates a key and returns (id, raw key).
    pub async fn create_key(&self, name: &str) -> (String, String) {
        let r = self
            .post(
                "/v1/keys",
                json!({"name": name, "permissions": ["keys:read"]}),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        (
            r.body["id"].as_str().expect("id").to_string(),
            r.body["key"].as_str().expect("key").to_string(),
        )
    }

    /// The Prometheus text of `GET /metrics` (no credential needed).
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text")
    }

    /// The full history of one key (`GET /v1/keys/{id}/events`), asserting 200.
    pub async fn key_events(&self, id: &str) -> Vec<Value> {
        let r = self.get(&format!("/v1/keys/{id}/events")).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body["events"].as_array().expect("events").clone()
    }

    /// Verifies a key without management credentials.
    pub async fn verify(&self, body: Value) -> Reply {
        let response = self
            .client
            .post(self.url("/v1/keys/verify"))
            .json(&body)
            .send()
            .await
            .expect("request");
        reply(response).await
    }

    /// The verification code of a key.
    pub async fn verify_code(&self, key: &str) -> String {
        let r = self.verify(json!({"key": key})).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        r.body["code"].as_str().expect("code").to_string()
    }

    /// Stops the server gracefully and returns its store.
    pub async fn stop(mut self) -> TestStore {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task");
        }
        self.store
    }

    /// Stops and starts again over the same store.
    pub async fn restart(self) -> TestApp {
        let store = self.stop().await;
        start(store, |_| {}).await
    }
}

/// Defines one test per backend for each listed behaviour `async fn name(Backend)`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $crate::tests_on!(sqlite, Sqlite, $($name),*);
        $crate::tests_on!(postgres, Postgres, $($name),*);
        #[cfg(feature = "kurrentdb")]
        $crate::tests_on!(kurrentdb, Kurrent, $($name),*);
    };
}

/// A module `$module` of tests running each behaviour on `Backend::$backend`.
#[macro_export]
macro_rules! tests_on {
    ($module:ident, $backend:ident, $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::helpers::Backend::$backend).await;
                }
            )*
        }
    };
}
