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
    /// How long a client may take to send its request body.
    pub body_read_timeout: Duration,
    /// Most keys a tenant may hold (live keys: deleted ones do not count).
    pub max_keys_per_tenant: u64,
    /// Failed verifications a client address may make per minute before 429.
    pub verify_failure_limit: u32,
    /// Management tokens from an identity provider (RS256/ES256), besides the
    /// HS256 tokens of the server secret; `None` means HS256 only.
    pub idp: Option<IdpConfig>,
}

/// Which RS256/ES256 management tokens of an identity provider are accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdpConfig {
    /// PEM files of the provider's public keys (RSA or EC P-256), at least one.
    pub public_keys: Vec<PathBuf>,
    /// Required value of `iss`, if any.
    pub issuer: Option<String>,
    /// Required value in `aud`, if any (without it, `aud` is not checked).
    pub audience: Option<String>,
    /// Claim naming the tenant the caller may see.
    pub tenant_claim: String,
    /// Claim naming the actor recorded in events.
    pub actor_claim: String,
}

impl IdpConfig {
    pub const DEFAULT_TENANT_CLAIM: &'static str = "tenant";
    pub const DEFAULT_ACTOR_CLAIM: &'static str = "sub";

    /// Keys from these files, no issuer or audience check, claims `tenant` and `sub`.
    pub fn new(public_keys: Vec<PathBuf>) -> Self {
        Self {
            public_keys,
            issuer: None,
            audience: None,
            tenant_claim: Self::DEFAULT_TENANT_CLAIM.to_string(),
            actor_claim: Self::DEFAULT_ACTOR_CLAIM.to_string(),
        }
    }
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
            body_read_timeout: Duration::from_secs(10),
            max_keys_per_tenant: 10_000,
            verify_failure_limit: 100,
            idp: None,
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
