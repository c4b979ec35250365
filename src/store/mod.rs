//! The event store behind one type: commands through cqrs-es, usage appends, and
//! the global feed in commit order. Backends: embedded SQLite (default) and
//! PostgreSQL.

mod errors;
pub mod feed;
pub mod postgres;
pub mod sqlite;

use std::collections::HashMap;
use std::time::Duration;

use cqrs_es::AggregateError;
use keyledger_domain::{DomainError, KeyCommand, KeyUsageEvent};
use keyledger_projections::RawEvent;
use rand::Rng;

use crate::error::Error;
pub use errors::is_unavailable;
use postgres::PostgresStore;
use sqlite::SqliteStore;

/// How often a command is retried when another command on the same key committed
/// first. Each retry reloads the key, so the rules see the winner's events.
const CONFLICT_RETRIES: usize = 8;

/// Metadata recorded with every event of a command.
pub type EventMetadata = HashMap<String, String>;

/// An event store backend.
pub enum EventStore {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl EventStore {
    /// Runs a command on one key. Optimistic concurrency decides races: the loser
    /// is re-executed on the new state, and reported as a conflict only when it
    /// keeps losing.
    pub async fn execute(
        &self,
        key_id: &str,
        command: KeyCommand,
        metadata: EventMetadata,
    ) -> Result<(), Error> {
        for attempt in 0..CONFLICT_RETRIES {
            let result = match self {
                Self::Sqlite(s) => {
                    s.keys
                        .execute_with_metadata(key_id, command.clone(), metadata.clone())
                        .await
                }
                Self::Postgres(s) => {
                    s.keys
                        .execute_with_metadata(key_id, command.clone(), metadata.clone())
                        .await
                }
            };
            match result {
                Ok(()) => return Ok(()),
                Err(AggregateError::AggregateConflict) => {
                    tracing::debug!(key_id, attempt, "optimistic concurrency conflict, retrying");
                    backoff(attempt).await;
                }
                Err(e) => return Err(map_aggregate_error(e)),
            }
        }
        Err(Error::Conflict)
    }

    /// Appends one usage event to the key's usage stream (never loads its history).
    pub async fn record_usage(
        &self,
        key_id: &str,
        event: KeyUsageEvent,
        metadata: EventMetadata,
    ) -> Result<(), Error> {
        for attempt in 0..CONFLICT_RETRIES {
            let result = match self {
                Self::Sqlite(s) => s.append_usage(key_id, &event, &metadata).await,
                Self::Postgres(s) => s.append_usage(key_id, &event, &metadata).await,
            };
            match result {
                Err(Error::Conflict) => backoff(attempt).await,
                other => return other,
            }
        }
        Err(Error::Conflict)
    }

    /// Events after `position` in commit order, at most `limit`.
    pub async fn read_feed(&self, after: i64, limit: i64) -> Result<Vec<RawEvent>, Error> {
        match self {
            Self::Sqlite(s) => feed::read_sqlite(&s.pool, after, limit).await,
            Self::Postgres(s) => feed::read_postgres(&s.pool, after, limit).await,
        }
    }

    /// The position of the newest committed event (0 when empty).
    pub async fn head(&self) -> Result<i64, Error> {
        match self {
            Self::Sqlite(s) => feed::head_sqlite(&s.pool).await,
            Self::Postgres(s) => feed::head_postgres(&s.pool).await,
        }
    }

    /// Closes the connection pool, waiting for connections in use.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(s) => s.pool.close().await,
            Self::Postgres(s) => s.pool.close().await,
        }
    }

    /// The projection database of this store.
    pub fn projection_db(&self) -> keyledger_projections::ProjectionDb {
        match self {
            Self::Sqlite(s) => keyledger_projections::ProjectionDb::Sqlite(s.pool.clone()),
            Self::Postgres(s) => keyledger_projections::ProjectionDb::Postgres(s.pool.clone()),
        }
    }
}

async fn backoff(attempt: usize) {
    let max_ms = 2u64 << attempt.min(6);
    let ms = rand::rng().random_range(0..=max_ms);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

fn map_aggregate_error(e: AggregateError<DomainError>) -> Error {
    match e {
        AggregateError::UserError(d) => Error::Domain(d),
        AggregateError::AggregateConflict => Error::Conflict,
        AggregateError::DatabaseConnectionError(cause) => Error::StoreUnavailable(cause),
        AggregateError::DeserializationError(cause) => {
            Error::Internal(format!("stored event cannot be read: {cause}"))
        }
        AggregateError::UnexpectedError(cause) => {
            if is_unavailable(cause.as_ref()) {
                Error::StoreUnavailable(cause)
            } else {
                Error::Internal(format!("event store: {cause}"))
            }
        }
    }
}
