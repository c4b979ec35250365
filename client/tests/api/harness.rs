//! A keyledger server in this process, for one test.

use std::time::Duration;

use keyledger::{Application, Config};
use keyledger_client::Client;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const SECRET: &str = "client-test-secret-0123456789abcdef0123456789";
pub const TENANT: &str = "acme";
/// Keys of another system that verification looks up by hash.
pub const IMPORT_PREFIX: &str = "sk_live_";

/// A running server.
pub struct Server {
    pub url: String,
    pub token: String,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
    _data: TempDir,
}

/// A management token of `tenant`, signed with the test secret.
pub fn token(tenant: &str, subject: &str) -> String {
    keyledger::http::auth::mint(SECRET.as_bytes(), tenant, subject, Duration::from_secs(600))
        .expect("mint token")
}

/// Starts a server over a fresh store.
pub async fn start() -> Server {
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = Config::new(data.path().to_path_buf());
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.jwt_secret = Some(SECRET.to_string());
    config.usage_flush_interval = Duration::from_secs(3600);
    config.poll_interval = Duration::from_millis(50);
    config.webhook_allow_private = true;
    config.import_prefixes = vec![IMPORT_PREFIX.to_string()];
    let app = Application::build(config).await.expect("build application");
    let url = format!("http://{}", app.address());
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        app.run_until_stopped(async {
            let _ = rx.await;
        })
        .await
        .expect("server run");
    });
    Server {
        url,
        token: token(TENANT, "alice"),
        shutdown: Some(tx),
        handle: Some(handle),
        _data: data,
    }
}

impl Server {
    /// A client with the management token.
    pub fn client(&self) -> Client {
        Client::new(&self.url)
            .expect("client")
            .with_token(self.token.clone())
    }

    /// Stops the server and waits until it has.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle.await.expect("server task");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
