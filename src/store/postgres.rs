//! PostgreSQL through postgres-es: many nodes over one database. Appends commit
//! without waiting for each other and get their global position afterwards from
//! the sequencer (migrations/postgres/0006), which the writer runs right after
//! its commit and every tailer runs when it polls. Each node's tailer is woken
//! by LISTEN/NOTIFY (`listen`) and also polls, so a lost notification only delays.

use std::sync::Arc;
use std::time::Duration;

use cqrs_es::persist::PersistedEventStore;
use cqrs_es::persist::SerializedEvent;
use keyledger_domain::ApiKey;
use keyledger_projections::projector::apply_in_transaction;
use keyledger_projections::{RawEvent, RecordedEvent};
use postgres_es::PostgresEventRepository;
use sqlx::postgres::{PgListener, PgPoolOptions};
use sqlx::{PgPool, Postgres, QueryBuilder};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::store::feed::store_error;
use crate::tailer::Tailer;

/// Migrations of the PostgreSQL store, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Channel the events trigger notifies.
pub const NOTIFY_CHANNEL: &str = "keyledger_events";

/// How long a command waits for a connection before answering 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct PostgresStore {
    pub pool: PgPool,
    pub events: PersistedEventStore<PostgresEventRepository, ApiKey>,
}

impl PostgresStore {
    /// Connects and applies migrations (sqlx serialises concurrent migrators
    /// with an advisory lock, so several nodes may start together).
    pub async fn open(url: &str) -> Result<Self, Error> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect(url)
            .await
            .map_err(store_error)?;
        MIGRATOR
            .run(&pool)
            .await
            .map_err(|e| Error::Internal(format!("postgres migrations: {e}")))?;
        // Never a snapshot store: cqrs-es 0.5 snapshots apply events twice.
        let events =
            PersistedEventStore::new_event_store(PostgresEventRepository::new(pool.clone()))
                .with_upcasters(keyledger_domain::upcast::upcasters());
        Ok(Self { pool, events })
    }

    pub(crate) fn repository(&self) -> PostgresEventRepository {
        PostgresEventRepository::new(self.pool.clone())
    }
}

/// What a numbered append wrote.
pub struct Appended {
    /// The highest position given before the append; its events follow it.
    pub after: i64,
    /// The last position it gave.
    pub through: i64,
    /// Its events as the feed will return them.
    pub events: Vec<RecordedEvent>,
    /// Whether the SQL projections took them in the same transaction.
    pub projected: bool,
}

/// Appends events with their global positions in one transaction that holds
/// the numbering lock until it commits (migrations/postgres/0008): the path of
/// group commit, whose batches need neither the sequencer's second write of
/// every row nor its round trip. When the key list and audit log stand right
/// before the batch (as they do unless another writer's events are still
/// being applied), the batch's projection rows go into the same transaction,
/// which saves the tailer a second one. A row whose stream already has that
/// sequence fails the whole append with `Conflict`.
pub async fn append_numbered(pool: &PgPool, events: &[SerializedEvent]) -> Result<Appended, Error> {
    let mut tx = pool.begin().await.map_err(store_error)?;
    let after: i64 = sqlx::query_scalar("SELECT keyledger_reserve_positions()")
        .fetch_one(&mut *tx)
        .await
        .map_err(store_error)?;
    let mut through = after;
    for chunk in events.chunks(1000) {
        let mut insert = QueryBuilder::<Postgres>::new(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
             event_version, payload, metadata, global_position) ",
        );
        insert.push_values(chunk, |mut row, e| {
            through += 1;
            row.push_bind(&e.aggregate_type)
                .push_bind(&e.aggregate_id)
                .push_bind(i64::try_from(e.sequence).unwrap_or(i64::MAX))
                .push_bind(&e.event_type)
                .push_bind(&e.event_version)
                .push_bind(&e.payload)
                .push_bind(&e.metadata)
                .push_bind(through);
        });
        insert
            .build()
            .persistent(false)
            .execute(&mut *tx)
            .await
            .map_err(append_error)?;
    }
    let mut recorded = Vec::with_capacity(events.len());
    for (position, e) in (after + 1..).zip(events) {
        let raw = RawEvent {
            position,
            aggregate_type: e.aggregate_type.clone(),
            aggregate_id: e.aggregate_id.clone(),
            sequence: i64::try_from(e.sequence).unwrap_or(i64::MAX),
            event_type: e.event_type.clone(),
            event_version: e.event_version.clone(),
            payload: e.payload.clone(),
            metadata: e.metadata.clone(),
        };
        if let Some(event) = RecordedEvent::decode(raw)? {
            recorded.push(event);
        }
    }
    let projected = apply_in_transaction(&mut tx, &recorded, after, through).await?;
    tx.commit().await.map_err(store_error)?;
    Ok(Appended {
        after,
        through,
        events: recorded,
        projected,
    })
}

fn append_error(e: sqlx::Error) -> Error {
    match e.as_database_error().and_then(|d| d.code()) {
        Some(code) if code == "23505" => Error::Conflict,
        _ => store_error(e),
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
                    Ok(Some(_)) => tailer.wake(),
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
