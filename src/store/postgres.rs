//! PostgreSQL through postgres-es: many nodes over one database. Appends commit
//! without waiting for each other and get their global position afterwards from
//! the sequencer (migrations/postgres/0006), which the writer runs right after
//! its commit and every tailer runs when it polls. Each node's tailer is woken
//! by LISTEN/NOTIFY (`listen`) and also polls, so a lost notification only delays.

use std::sync::Arc;
use std::time::Duration;

use cqrs_es::persist::PersistedEventStore;
use keyledger_domain::ApiKey;
use postgres_es::PostgresEventRepository;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgPool, Postgres};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::store::feed::store_error;
use crate::store::numbered_append;
use crate::store::readable::Readable;
use crate::tailer::Tailer;

/// Migrations of the PostgreSQL store, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Channel the events trigger notifies.
pub const NOTIFY_CHANNEL: &str = "keyledger_events";

/// How long a command waits for a connection before answering 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct PostgresStore {
    pub pool: PgPool,
    pub events: PersistedEventStore<Readable<PostgresEventRepository, PgPool>, ApiKey>,
    /// Group commit's connection, kept from one batch to the next: sqlx pings
    /// every connection handed back to its pool (a round trip it offers no
    /// switch for), which would be one more per batch for both processes.
    writer: Mutex<Option<PoolConnection<Postgres>>>,
}

impl PostgresStore {
    /// Connects and applies migrations (sqlx serialises concurrent migrators
    /// with an advisory lock, so several nodes may start together).
    pub async fn open(url: &str) -> Result<Self, Error> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // sqlx pings every connection it hands out by default: a round
            // trip before every statement, which on group commit's path is
            // one more wait under the numbering lock's cadence. A connection
            // that died fails its statement instead, which answers 503 (or
            // runs the batch's creates one by one) and is not returned to
            // the pool.
            .test_before_acquire(false)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .map_err(store_error)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| Error::Internal(format!("postgres migrations: {e}")))?;
        // Never a snapshot store: cqrs-es 0.5 snapshots apply events twice.
        let events = PersistedEventStore::new_event_store(Readable::new(
            PostgresEventRepository::new(pool.clone()),
            pool.clone(),
        ))
        .with_upcasters(keyledger_domain::upcast::upcasters());
        Ok(Self {
            pool,
            events,
            writer: Mutex::new(None),
        })
    }

    /// Closes the pool, the writer's connection first: the pool waits for
    /// the connections it has handed out, and that one is never given back.
    pub async fn close(&self) {
        drop(self.writer.lock().await.take());
        self.pool.close().await;
    }

    /// Appends a group-commit batch on the writer's connection (see
    /// `numbered_append`). After a failure the connection goes back to the
    /// pool, which tests it, and the next batch takes a fresh one.
    pub(crate) async fn append_numbered(
        &self,
        batch: &[&numbered_append::Rows],
    ) -> Result<numbered_append::Appended, Error> {
        let mut writer = self.writer.lock().await;
        let mut conn = match writer.take() {
            Some(conn) => conn,
            None => self.pool.acquire().await.map_err(store_error)?,
        };
        let appended = numbered_append::append_numbered(&mut conn, batch).await;
        if appended.is_ok() {
            *writer = Some(conn);
        }
        appended
    }

    pub(crate) fn repository(&self) -> PostgresEventRepository {
        PostgresEventRepository::new(self.pool.clone())
    }
}

/// Most rows one sequencer call numbers (the LIMIT in `keyledger_sequence_events`).
const SEQUENCER_BATCH: i64 = 10_000;

/// Gives every committed event still without a position its position, in
/// append order; returns how many were numbered. Safe to call from any number
/// of nodes at once: the database runs one sequencer at a time.
pub async fn sequence_pending(pool: &PgPool) -> Result<u64, Error> {
    let mut total = 0u64;
    loop {
        let numbered: i64 = sqlx::query_scalar("SELECT keyledger_sequence_events()")
            .fetch_one(pool)
            .await
            .map_err(store_error)?;
        total += u64::try_from(numbered).unwrap_or(0);
        if numbered < SEQUENCER_BATCH {
            return Ok(total);
        }
    }
}

/// Wakes the tailer on every notification until cancelled; reconnects by itself.
pub async fn listen(pool: PgPool, tailer: Arc<Tailer>, stop: CancellationToken) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "cannot LISTEN; polling only until it works");
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        if let Err(e) = listener.listen(NOTIFY_CHANNEL).await {
            tracing::warn!(error = %e, "LISTEN failed; retrying");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        // Anything committed while we were not listening is caught up now.
        tailer.wake();
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                received = listener.try_recv() => match received {
                    // Group commit's notifications name the batch's last
                    // position (migrations/postgres/0009); others say nothing.
                    Ok(Some(n)) => match n.payload().parse::<i64>() {
                        Ok(position) => tailer.wake_through(position),
                        Err(_) => tailer.wake(),
                    },
                    // The connection dropped and will be re-established:
                    // notifications may have been missed, so catch up.
                    Ok(None) => tailer.wake(),
                    Err(e) => {
                        tracing::warn!(error = %e, "notification listener failed; reconnecting");
                        break;
                    }
                },
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
