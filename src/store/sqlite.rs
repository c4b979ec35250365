//! The embedded store: one SQLite file, sqlite-es for commands.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use cqrs_es::persist::PersistedEventStore;
use keyledger_domain::ApiKey;
use sqlite_es::SqliteEventRepository;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use crate::error::Error;
use crate::store::feed::store_error;
use crate::store::readable::Readable;

/// Migrations of the embedded store, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
    pub pool: SqlitePool,
    pub events: PersistedEventStore<Readable<SqliteEventRepository, SqlitePool>, ApiKey>,
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
            // Rows cross from the connection's worker thread in batches: at
            // start-up a million key-list rows are read, and the default (50)
            // made that a thread hand-off every 50 rows.
            .row_buffer_size(4096)
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
        // Never a snapshot store: cqrs-es 0.5 snapshots apply events twice.
        let events = PersistedEventStore::new_event_store(Readable::new(
            SqliteEventRepository::new(pool.clone()),
            pool.clone(),
        ))
        .with_upcasters(keyledger_domain::upcast::upcasters());
        Ok(Self { pool, events })
    }

    pub(crate) fn repository(&self) -> SqliteEventRepository {
        SqliteEventRepository::new(self.pool.clone())
    }
}
