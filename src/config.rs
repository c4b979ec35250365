//! Runtime configuration of `keyledger serve`, from flags and environment
//! (flags win; clap does the precedence).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use keyledger_domain::KeyPrefix;

/// Whether this build has the KurrentDB store (feature `kurrentdb`, whose
/// implementation `store::open` registers): a KurrentDB URL is refused here,
/// with how to get it, rather than at start.
const KURRENTDB_BUILT: bool = cfg!(feature = "kurrentdb");

/// Where the events live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreConfig {
    /// Embedded SQLite file `keyledger.db` inside the data directory.
    Sqlite,
    /// PostgreSQL at this URL.
    Postgres(String),
    /// Events in KurrentDB, projections in SQLite or PostgreSQL (chosen
    /// only where the build has the store: see `store_from_urls`).
    Kurrent(KurrentConfig),
}

impl StoreConfig {
    /// What the log says at start.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite => "the embedded SQLite store".into(),
            Self::Postgres(_) => "PostgreSQL".into(),
            Self::Kurrent(k) => format!(
                "KurrentDB (namespace {}, projections in {})",
                k.namespace,
                if k.projections_url.is_some() {
                    "PostgreSQL"
                } else {
                    "SQLite"
                }
            ),
        }
    }
}

/// The KurrentDB (EventStoreDB) event store.
#[derive(Clone, PartialEq, Eq)]
pub struct KurrentConfig {
    /// Connection string (`kurrentdb://`, `kurrent://`, `esdb://`, `+discover`).
    pub url: String,
    /// Prefix of keyledger's stream names, so deployments (and test runs) can
    /// share a server. Persisted: changing it orphans the stored streams.
    pub namespace: String,
    /// PostgreSQL for the projections; `None` means an SQLite file in the data
    /// directory.
    pub projections_url: Option<String>,
}

impl std::fmt::Debug for KurrentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URLs may hold passwords.
        f.debug_struct("KurrentConfig")
            .field("namespace", &self.namespace)
            .field("projections_in_postgres", &self.projections_url.is_some())
            .finish_non_exhaustive()
    }
}

/// Default KurrentDB stream namespace.
pub const DEFAULT_KURRENT_NAMESPACE: &str = "keyledger";

/// URL schemes of KurrentDB / EventStoreDB connection strings.
const KURRENT_SCHEMES: [&str; 6] = [
    "kurrentdb://",
    "kurrentdb+discover://",
    "kurrent://",
    "kurrent+discover://",
    "esdb://",
    "esdb+discover://",
];

#[derive(Clone, Debug)]
pub struct Config {
    pub listen: SocketAddr,
    /// Where Envoy's external authorization gRPC API is served
    /// (`--grpc-listen`); `None`: not served.
    pub grpc_listen: Option<SocketAddr>,
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
    /// Secret-scanning partners whose reports `POST /v1/leaks/{name}` takes.
    pub leak_reporters: Vec<crate::leaks::reporters::ReporterConfig>,
    /// How often this node looks for keys whose expiry notice is due.
    pub expiry_notice_interval: Duration,
    /// Webhook targets in private, loopback and link-local ranges are
    /// allowed (tests, private deployments); refused otherwise.
    pub webhook_allow_private: bool,
    /// How long a client may take to send a request head, from its first byte.
    pub header_read_timeout: Duration,
    /// How long a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// Most open client connections; `None` derives it from the open-file
    /// limit (see `http::serve`).
    pub max_connections: Option<usize>,
    /// Management tokens from an identity provider (RS256/ES256), besides the
    /// HS256 tokens of the server secret; `None` means HS256 only.
    pub idp: Option<IdpConfig>,
    /// Tests only: a failure injected right after each commit (never set by
    /// `serve`; see `fault::AfterCommit`).
    pub after_commit: Option<crate::fault::AfterCommit>,
    /// Proxies whose `X-Forwarded-For` / `Forwarded` headers name the client
    /// (for the guess limiter and the audit trail); empty: none, the socket
    /// address is the client's.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// How long usage buckets of each size are kept.
    pub usage_retention: keyledger_projections::usage::Retention,
    /// Prefixes of keys issued by other systems and imported by their hash
    /// (`--import-prefix`): verification looks such strings up although they
    /// are not in keyledger's format.
    pub import_prefixes: Vec<String>,
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
            grpc_listen: None,
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
            webhook_allow_private: false,
            leak_reporters: Vec::new(),
            expiry_notice_interval: Duration::from_secs(10),
            usage_retention: keyledger_projections::usage::Retention::default(),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
            idp: None,
            after_commit: None,
            trusted_proxies: Vec::new(),
            import_prefixes: Vec::new(),
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

/// One entry of `--trusted-proxies`: a CIDR (`10.0.0.0/8`, `fd00::/8`) or a
/// single address (`127.0.0.1`, meaning `/32`; `::1`, meaning `/128`).
pub fn parse_trusted_proxy(entry: &str) -> Result<ipnet::IpNet, String> {
    let entry = entry.trim();
    entry
        .parse::<ipnet::IpNet>()
        .map(|net| net.trunc())
        .or_else(|_| entry.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("`{entry}` is not a CIDR (such as 10.0.0.0/8) or an IP address"))
}

/// One `--import-prefix`: 1-32 visible ASCII characters (`sk_live_`,
/// `ghp_`). Any string that starts with one is hashed and looked up, so a
/// prefix is what tells an imported key from garbage.
pub fn parse_import_prefix(entry: &str) -> Result<String, String> {
    let ok = (1..=32).contains(&entry.len()) && entry.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        Ok(entry.to_string())
    } else {
        Err("an import prefix is 1-32 visible ASCII characters, no spaces".into())
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

/// Chooses the store from `--event-store` (`KEYLEDGER_EVENT_STORE`) and
/// `DATABASE_URL`. Without an event store, `DATABASE_URL` decides as in
/// `store_from_url`. A KurrentDB connection string selects KurrentDB, with the
/// projections in PostgreSQL when `DATABASE_URL` is also given. A PostgreSQL URL
/// or `sqlite` may be given as the event store too.
pub fn store_from_urls(
    event_store: Option<&str>,
    database_url: Option<&str>,
    kurrent_namespace: &str,
) -> Result<StoreConfig, crate::Error> {
    let Some(event_store) = event_store.map(str::trim).filter(|u| !u.is_empty()) else {
        return store_from_url(database_url);
    };
    let database_url = database_url.map(str::trim).filter(|u| !u.is_empty());
    if KURRENT_SCHEMES.iter().any(|s| event_store.starts_with(s)) {
        let projections_url = match store_from_url(database_url)? {
            StoreConfig::Postgres(url) => Some(url),
            _ => None,
        };
        return kurrent_store(KurrentConfig {
            url: event_store.to_string(),
            namespace: kurrent_namespace.to_string(),
            projections_url,
        });
    }
    let chosen = if event_store == "sqlite" {
        StoreConfig::Sqlite
    } else {
        store_from_url(Some(event_store)).map_err(|_| {
            crate::Error::Config(
                "--event-store must be sqlite, a postgres:// URL, or a KurrentDB connection \
                 string (kurrentdb://, kurrent://, esdb://, esdb+discover://)"
                    .into(),
            )
        })?
    };
    match (database_url, &chosen) {
        (None, _) => Ok(chosen),
        (Some(db), StoreConfig::Postgres(url)) if db == url => Ok(chosen),
        (Some(_), _) => Err(crate::Error::Config(
            "DATABASE_URL is only used with a KurrentDB event store (for its projections); \
             give the SQL event store once, in --event-store or in DATABASE_URL"
                .into(),
        )),
    }
}

fn kurrent_store(config: KurrentConfig) -> Result<StoreConfig, crate::Error> {
    if KURRENTDB_BUILT {
        Ok(StoreConfig::Kurrent(config))
    } else {
        Err(crate::Error::Config(
            "this keyledger was built without KurrentDB support: rebuild with `--features kurrentdb`"
                .into(),
        ))
    }
}

/// `minute=2d,hour=90d,day=forever`: how long usage buckets of each size are
/// kept; sizes left out keep their default.
pub fn parse_usage_retention(
    text: &str,
) -> Result<keyledger_projections::usage::Retention, String> {
    use keyledger_projections::usage::Unit;
    let mut retention = keyledger_projections::usage::Retention::default();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (unit, keep) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected SIZE=DURATION"))?;
        let unit = Unit::parse(unit.trim())
            .ok_or_else(|| format!("{unit:?}: the sizes are minute, hour and day"))?;
        let keep = match keep.trim() {
            "forever" => None,
            d => {
                let d = humantime::parse_duration(d).map_err(|e| format!("{d:?}: {e}"))?;
                if d.as_millis() < u128::from(unit.millis().unsigned_abs()) {
                    return Err(format!(
                        "{part:?}: keep at least one whole {}",
                        unit.as_str()
                    ));
                }
                Some(d)
            }
        };
        match unit {
            Unit::Minute => retention.minute = keep,
            Unit::Hour => retention.hour = keep,
            Unit::Day => retention.day = keep,
        }
    }
    Ok(retention)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PG: &str = "postgres://u@h/db";

    #[test]
    fn usage_retention_reads_each_size_and_refuses_nonsense() {
        let r = parse_usage_retention("minute=1d, day=400d").expect("parse");
        assert_eq!(r.minute, Some(Duration::from_secs(86_400)));
        assert_eq!(
            r.hour,
            Some(Duration::from_secs(90 * 86_400)),
            "default kept"
        );
        assert_eq!(r.day, Some(Duration::from_secs(400 * 86_400)));
        let r = parse_usage_retention("hour=forever").expect("parse");
        assert_eq!(r.hour, None);
        for bad in ["week=1d", "minute", "minute=soon", "day=1h"] {
            assert!(parse_usage_retention(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn without_an_event_store_database_url_decides() {
        assert_eq!(
            store_from_urls(None, None, "keyledger").expect("store"),
            StoreConfig::Sqlite
        );
        assert_eq!(
            store_from_urls(Some(" "), Some(PG), "keyledger").expect("store"),
            StoreConfig::Postgres(PG.into())
        );
    }

    #[test]
    fn sql_event_stores_can_be_named_once() {
        assert_eq!(
            store_from_urls(Some("sqlite"), None, "keyledger").expect("store"),
            StoreConfig::Sqlite
        );
        assert_eq!(
            store_from_urls(Some(PG), Some(PG), "keyledger").expect("store"),
            StoreConfig::Postgres(PG.into())
        );
        assert!(store_from_urls(Some("sqlite"), Some(PG), "keyledger").is_err());
        assert!(store_from_urls(Some("mysql://x"), None, "keyledger").is_err());
    }

    #[cfg(feature = "kurrentdb")]
    #[test]
    fn every_kurrent_scheme_selects_kurrentdb_with_projections_where_database_url_says() {
        for url in [
            "kurrentdb://admin:changeit@127.0.0.1:2113?tls=false",
            "kurrent://127.0.0.1:2113",
            "esdb://127.0.0.1:2113?tls=false",
            "esdb+discover://cluster.example:2113",
        ] {
            let StoreConfig::Kurrent(k) = store_from_urls(Some(url), None, "kl").expect("store")
            else {
                panic!("{url} did not select KurrentDB");
            };
            assert_eq!(k.url, url);
            assert_eq!(k.namespace, "kl");
            assert_eq!(k.projections_url, None);
        }
        let StoreConfig::Kurrent(k) =
            store_from_urls(Some("esdb://h:2113"), Some(PG), "kl").expect("store")
        else {
            panic!("not KurrentDB");
        };
        assert_eq!(k.projections_url.as_deref(), Some(PG));
        assert!(store_from_urls(Some("esdb://h:2113"), Some("mysql://x"), "kl").is_err());
    }

    #[cfg(feature = "kurrentdb")]
    #[test]
    fn kurrent_config_debug_hides_the_password() {
        let config = KurrentConfig {
            url: "kurrentdb://admin:changeit@h:2113".into(),
            namespace: "kl".into(),
            projections_url: Some("postgres://u:secret@h/db".into()),
        };
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("changeit") && !shown.contains("secret"),
            "{shown}"
        );
    }

    #[cfg(not(feature = "kurrentdb"))]
    #[test]
    fn a_kurrent_url_without_the_feature_says_how_to_get_it() {
        let err = store_from_urls(Some("kurrentdb://h:2113"), None, "kl").expect_err("refused");
        assert!(err.to_string().contains("--features kurrentdb"), "{err}");
    }
}
