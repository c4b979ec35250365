//! The embedded store: one SQLite file, sqlite-es for commands. SQLite has
//! one writer at a time, so positions are given at INSERT, in commit order.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use async_trait::async_trait;
use cqrs_es::persist::{
    EventStoreAggregateContext, PersistedEventRepository, PersistedEventStore, SerializedEvent,
};
use cqrs_es::{AggregateError, EventStore as _};
use keyledger_domain::webhook::Webhook;
use keyledger_domain::{ApiKey, ApiKeyEvent, DomainError, KeyId, KeyUsage, OwnerLimits, RawEvent};
use keyledger_sql::{InlineProjection, SqlPool};
use sqlite_es::SqliteEventRepository;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Sqlite, SqlitePool};

use crate::error::Error;
use crate::store::backend::EventMetadata;
use crate::store::backend::{Appended, Backend, NewEvent, Stream};
use crate::store::claims::{ClaimTable, SqlClaims};
use crate::store::errors::persistence_error;
use crate::store::feed::{store_error, SqlEvents};
use crate::store::inline::Inline;
use crate::store::readable::Readable;
use crate::store::sqlite_append::{Tables, Writer};
use crate::store::windows::{SqlWindows, WindowTable};

/// Migrations of the embedded store, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

pub struct SqliteStore {
    pool: SqlitePool,
    events: PersistedEventStore<Readable<SqliteEventRepository, SqlEvents<Sqlite>>, ApiKey>,
    sql: SqlEvents<Sqlite>,
    /// Group commit's own connection (see `sqlite_append`).
    writer: Writer,
    /// The projection written with group commit's batches, and its tables.
    inline: Inline<Tables>,
}

/// How every connection to the embedded store is opened: its PRAGMAs. Public
/// so that the benchmark's reference writer (`keyledger-bench sqlite-insert`)
/// measures SQLite with exactly these.
pub fn connect_options(path: &Path) -> Result<SqliteConnectOptions, Error> {
    let url = format!("sqlite://{}", path.display());
    Ok(SqliteConnectOptions::from_str(&url)
        .map_err(|e| Error::Config(format!("sqlite path {}: {e}", path.display())))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: an acknowledged command survives power loss, not only a crash.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(keyledger_sql::SQLITE_BUSY_TIMEOUT)
        // Rows cross from the connection's worker thread in batches: at
        // start-up a million key-list rows are read, and the default (50)
        // made that a thread hand-off every 50 rows.
        .row_buffer_size(4096)
        .foreign_keys(true))
}

impl SqliteStore {
    /// Opens (creating if missing) the database file and applies migrations.
    pub async fn open(path: &Path) -> Result<Self, Error> {
        create_private(path)?;
        warn_if_shared(path);
        let options = connect_options(path)?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .map_err(store_error)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| Error::internal_from("sqlite migrations", e))?;
        let sql = SqlEvents::new(pool.clone());
        // Never a snapshot store: cqrs-es 0.5 snapshots apply events twice.
        let events = PersistedEventStore::new_event_store(Readable::new(
            SqliteEventRepository::new(pool.clone()),
            sql.clone(),
        ))
        .with_upcasters(keyledger_domain::upcast::upcasters());
        Ok(Self {
            pool,
            events,
            sql,
            writer: Writer::new(path),
            inline: Inline::new(Tables::new),
        })
    }
}

#[async_trait]
impl Backend for SqliteStore {
    async fn load(
        &self,
        key_id: &KeyId,
    ) -> Result<EventStoreAggregateContext<ApiKey>, AggregateError<DomainError>> {
        self.events.load_aggregate(key_id).await
    }

    async fn commit(
        &self,
        events: Vec<ApiKeyEvent>,
        context: EventStoreAggregateContext<ApiKey>,
        metadata: EventMetadata,
    ) -> Result<(), AggregateError<DomainError>> {
        self.events
            .commit(events, context, metadata)
            .await
            .map(|_| ())
    }

    async fn append(&self, stream: Stream, events: &[SerializedEvent]) -> Result<(), Error> {
        let repository = SqliteEventRepository::new(self.pool.clone());
        match stream {
            Stream::Key => repository.persist::<ApiKey>(events, None).await,
            Stream::Usage => repository.persist::<KeyUsage>(events, None).await,
            Stream::Owner => repository.persist::<OwnerLimits>(events, None).await,
            Stream::Webhook => repository.persist::<Webhook>(events, None).await,
            Stream::Policy => {
                repository
                    .persist::<keyledger_domain::policy::TenantPolicy>(events, None)
                    .await
            }
        }
        .map_err(persistence_error)
    }

    async fn bulk_append(&self, events: &[SerializedEvent]) -> Result<(), Error> {
        self.sql.bulk_append(events).await
    }

    /// Appends a group-commit batch and its projection rows in one
    /// transaction, on group commit's own connection (see `sqlite_append`).
    async fn append_creates(&self, batch: &[&NewEvent]) -> Result<Appended, Error> {
        self.writer.append(self.inline.prepared(), batch).await
    }

    fn set_inline(&self, projection: Arc<dyn InlineProjection>) {
        self.inline.set(projection);
    }

    fn inline(&self) -> Option<Arc<dyn InlineProjection>> {
        self.inline.projection()
    }

    async fn event_at(
        &self,
        stream: Stream,
        key: &KeyId,
        sequence: usize,
    ) -> Result<Option<RawEvent>, Error> {
        let sequence = crate::store::backend::sequence_i64(sequence)?;
        self.sql
            .event_at(stream.aggregate_type(), key, sequence)
            .await
    }

    async fn last_sequence(&self, stream: Stream, key: &KeyId) -> Result<usize, Error> {
        self.sql.last_sequence(stream.aggregate_type(), key).await
    }

    async fn newest_events(&self, stream: Stream, keys: &[&KeyId]) -> Result<Vec<RawEvent>, Error> {
        let ids: Vec<&str> = keys.iter().map(|k| k.as_str()).collect();
        self.sql.newest(stream.aggregate_type(), &ids).await
    }

    async fn read_feed(&self, after: i64, limit: i64) -> Result<Vec<RawEvent>, Error> {
        self.sql.read(after, limit).await
    }

    async fn head(&self) -> Result<i64, Error> {
        self.sql.head().await
    }

    fn sql(&self) -> SqlPool {
        SqlPool::Sqlite(self.pool.clone())
    }

    fn claims(&self) -> Arc<dyn ClaimTable> {
        Arc::new(SqlClaims::new(self.pool.clone()))
    }

    fn windows(&self) -> Arc<dyn WindowTable> {
        Arc::new(SqlWindows::new(self.pool.clone()))
    }

    fn webhooks(&self) -> Arc<dyn crate::store::webhooks::WebhookTable> {
        Arc::new(crate::store::webhooks::SqlWebhooks::new(self.pool.clone()))
    }

    fn imports(&self) -> Arc<dyn crate::store::imports::ImportClaimTable> {
        Arc::new(crate::store::imports::SqlImportClaims::new(
            self.pool.clone(),
        ))
    }

    /// Closes group commit's connection and the pool.
    async fn close(&self) {
        self.writer.close();
        self.pool.close().await;
    }
}

/// Mode of the database file: it holds every key's hash, tenant and metadata.
#[cfg(unix)]
const PRIVATE_FILE: u32 = 0o600;

/// Creates the database file empty (a valid empty SQLite database) with mode
/// 0600 when it is missing, before SQLite opens it: SQLite would create it
/// 0644 (less the umask), and it gives the `-wal` and `-shm` files it creates
/// later the main file's mode, so all three are 0600. The mode is set
/// explicitly, whatever the umask. An existing file keeps its mode (see
/// [`warn_if_shared`]).
fn create_private(path: &Path) -> Result<(), Error> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(PRIVATE_FILE);
    }
    match options.open(path) {
        Ok(file) => {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                file.set_permissions(std::fs::Permissions::from_mode(PRIVATE_FILE))
                    .map_err(|e| {
                        Error::Config(format!("cannot set the mode of {}: {e}", path.display()))
                    })?;
            }
            drop(file);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::Config(format!(
            "cannot create {}: {e}",
            path.display()
        ))),
    }
}

/// Warns (without changing anything) when the database file, its `-wal` or
/// `-shm` file, or the directory holding them may be read or written by the
/// group or others: files created by a release before 0600/0700, or modes set
/// by hand.
fn warn_if_shared(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut paths = vec![path.to_path_buf()];
        for suffix in ["-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            paths.push(name.into());
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            paths.push(dir.to_path_buf());
        }
        for p in paths {
            let Ok(meta) = std::fs::metadata(&p) else {
                continue;
            };
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                let (what, fix) = if meta.is_dir() {
                    ("data directory", "chmod 700")
                } else {
                    ("database file", "chmod 600")
                };
                tracing::warn!(
                    path = %p.display(),
                    mode = %format!("{mode:04o}"),
                    "{what} is accessible to group or others; `{fix} {}` to keep the key \
                     data private",
                    p.display()
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::SqliteStore;
    use crate::store::Backend as _;

    fn mode(path: &std::path::Path) -> String {
        let mode = std::fs::metadata(path)
            .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
            .permissions()
            .mode();
        format!("{:04o}", mode & 0o777)
    }

    /// Any file this store opens (`keyledger.db`, and KurrentDB's
    /// `kurrent-projections.db`) is 0600 with its -wal and -shm files,
    /// created and reopened.
    #[tokio::test]
    async fn a_new_database_and_its_wal_and_shm_files_are_0600() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kurrent-projections.db");
        for _ in 0..2 {
            let store = SqliteStore::open(&path).await.expect("open");
            sqlx::query("SELECT COUNT(*) FROM events")
                .execute(&store.pool)
                .await
                .expect("read");
            for suffix in ["", "-wal", "-shm"] {
                let file = dir.path().join(format!("kurrent-projections.db{suffix}"));
                assert_eq!(mode(&file), "0600", "{}", file.display());
            }
            store.close().await;
        }
    }
}
