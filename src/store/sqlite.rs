//! The embedded store: one SQLite file, sqlite-es for commands.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use cqrs_es::persist::{
    PersistedEventRepository, PersistedEventStore, PersistenceError, SerializedEvent,
};
use cqrs_es::{Aggregate, CqrsFramework, DomainEvent};
use keyledger_domain::{ApiKey, KeyUsage, KeyUsageEvent};
use sqlite_es::SqliteEventRepository;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use crate::error::Error;
use crate::store::errors::is_unavailable;
use crate::store::feed::store_error;
use crate::store::EventMetadata;

/// Migrations of the embedded store, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub type KeyFramework = CqrsFramework<ApiKey, PersistedEventStore<SqliteEventRepository, ApiKey>>;

pub struct SqliteStore {
    pub pool: SqlitePool,
    pub keys: KeyFramework,
}

impl SqliteStore {
    /// Opens (creating if missing) the database file and applies migrations.
    pub async fn open(path: &Path) -> Result<Self, Error> {
        let url = format!("sqlite://{}", path.display());
        let options = SqliteConnectOptions::from_str(&url)
            .map_err(|e| Error::Config(format!("sqlite path {}: {e}", path.display())))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: an acknowledged command survives power loss, not only a crash.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(store_error)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| Error::Internal(format!("sqlite migrations: {e}")))?;
        let keys = CqrsFramework::new(
            // Never a snapshot store: cqrs-es 0.5 snapshots apply events twice.
            PersistedEventStore::new_event_store(SqliteEventRepository::new(pool.clone())),
            vec![],
            (),
        );
        Ok(Self { pool, keys })
    }

    pub(crate) async fn append_usage(
        &self,
        key_id: &str,
        event: &KeyUsageEvent,
        metadata: &EventMetadata,
    ) -> Result<(), Error> {
        let last: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(sequence) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(KeyUsage::TYPE)
        .bind(key_id)
        .fetch_one(&self.pool)
        .await
        .map_err(store_error)?;
        let sequence = usize::try_from(last.unwrap_or(0) + 1).unwrap_or(usize::MAX);
        let serialized = serialize_usage(key_id, sequence, event, metadata)?;
        SqliteEventRepository::new(self.pool.clone())
            .persist::<KeyUsage>(&[serialized], None)
            .await
            .map_err(persistence_error)
    }
}

/// Builds the stored form of a usage event, as cqrs-es would.
pub(crate) fn serialize_usage(
    key_id: &str,
    sequence: usize,
    event: &KeyUsageEvent,
    metadata: &EventMetadata,
) -> Result<SerializedEvent, Error> {
    let payload = serde_json::to_value(event).map_err(|e| Error::Internal(e.to_string()))?;
    let metadata = serde_json::to_value(metadata).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(SerializedEvent::new(
        key_id.to_string(),
        sequence,
        KeyUsage::TYPE.to_string(),
        event.event_type(),
        event.event_version(),
        payload,
        metadata,
    ))
}

pub(crate) fn persistence_error(e: PersistenceError) -> Error {
    match e {
        PersistenceError::OptimisticLockError => Error::Conflict,
        PersistenceError::ConnectionError(cause) => Error::StoreUnavailable(cause),
        PersistenceError::DeserializationError(cause) => Error::Internal(cause.to_string()),
        PersistenceError::UnknownError(cause) => {
            if is_unavailable(cause.as_ref()) {
                Error::StoreUnavailable(cause)
            } else {
                Error::Internal(cause.to_string())
            }
        }
    }
}
