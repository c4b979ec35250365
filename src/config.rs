//! Runtime configuration of `keyledger serve`, from flags and environment
//! (flags win; clap does the precedence).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use keyledger_domain::KeyPrefix;

/// Where the events live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    /// Embedded SQLite file `keyledger.db` inside the data directory.
    Sqlite,
    /// PostgreSQL at this URL.
    Postgres(String),
}

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    /// HS256 secret for management tokens; `None` means "the one in the data dir".
    pub jwt_secret: Option<String>,
    pub key_prefix: KeyPrefix,
    pub usage_flush_interval: Duration,
    /// How often a node polls the feed when no notification arrives.
    pub poll_interval: Duration,
    pub max_body_bytes: usize,
}

impl Config {
    /// Defaults of the contract: 127.0.0.1:8080, ./data, embedded SQLite.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir,
            store: StoreConfig::Sqlite,
            jwt_secret: None,
            key_prefix: KeyPrefix::default(),
            usage_flush_interval: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            max_body_bytes: 64 * 1024,
        }
    }

    /// Path of the embedded database.
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("keyledger.db")
    }

    /// Path of the generated server secret.
    pub fn secret_path(&self) -> PathBuf {
        self.data_dir.join("jwt-secret")
    }
}

/// Chooses the store from a database URL: `postgres://`/`postgresql://` select
/// PostgreSQL, anything else is refused, no URL means the embedded store.
pub fn store_from_url(url: Option<&str>) -> Result<StoreConfig, crate::Error> {
    match url.map(str::trim).filter(|u| !u.is_empty()) {
        None => Ok(StoreConfig::Sqlite),
        Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
            Ok(StoreConfig::Postgres(u.to_string()))
        }
        Some(_) => Err(crate::Error::Config(
            "DATABASE_URL must start with postgres:// or postgresql://".into(),
        )),
    }
}
