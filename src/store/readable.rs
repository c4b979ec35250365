//! cqrs-es's SQL repositories with keyledger's own event reads.
//!
//! sqlite-es and postgres-es decode a row's payload with sqlx's JSON decoding
//! and `Row::get`, which panics when serde_json's parser refuses the text (for
//! example nesting deeper than 128 levels). One such event, written by an older
//! version, would make its key's every command fail. So loads go through the
//! same reads as the global feed (`feed.rs`: text columns, parsed with no depth
//! limit, a corrupt row an error), and writes stay with the repository.

use std::future::Future;

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use keyledger_domain::RawEvent;
use serde_json::Value;

use crate::error::Error;
use crate::store::feed::SqlEvents;

/// Reads one stream's events from a database pool.
pub trait StreamReader: Send + Sync {
    /// The events of `aggregate_id` after `after_sequence`, in order.
    fn stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: i64,
    ) -> impl Future<Output = Result<Vec<RawEvent>, Error>> + Send;
}

impl StreamReader for SqlEvents<sqlx::Sqlite> {
    async fn stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: i64,
    ) -> Result<Vec<RawEvent>, Error> {
        SqlEvents::stream(self, aggregate_type, aggregate_id, after_sequence).await
    }
}

impl StreamReader for SqlEvents<sqlx::Postgres> {
    async fn stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: i64,
    ) -> Result<Vec<RawEvent>, Error> {
        SqlEvents::stream(self, aggregate_type, aggregate_id, after_sequence).await
    }
}

/// A repository `R` whose event reads go through `P`.
pub struct Readable<R, P> {
    inner: R,
    reader: P,
}

impl<R, P> Readable<R, P> {
    pub fn new(inner: R, reader: P) -> Self {
        Self { inner, reader }
    }
}

impl<R: PersistedEventRepository, P: StreamReader> Readable<R, P> {
    async fn read<A: Aggregate>(
        &self,
        aggregate_id: &str,
        after: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let after =
            i64::try_from(after).map_err(|e| PersistenceError::UnknownError(Box::new(e)))?;
        let raws = self
            .reader
            .stream(A::TYPE, aggregate_id, after)
            .await
            .map_err(read_error)?;
        raws.into_iter().map(serialized).collect()
    }
}

impl<R: PersistedEventRepository, P: StreamReader> PersistedEventRepository for Readable<R, P> {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.read::<A>(aggregate_id, 0).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.read::<A>(aggregate_id, last_sequence).await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        self.inner.get_snapshot::<A>(aggregate_id).await
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        self.inner.persist::<A>(events, snapshot_update).await
    }

    // cqrs-es's replay streams decode rows with sqlx's JSON decoding, which
    // is what this type exists to avoid; keyledger replays through the global
    // feed (`rebuild.rs`), so these refuse rather than panic on a deep event.
    async fn stream_events<A: Aggregate>(
        &self,
        _aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        Err(not_streamed())
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        Err(not_streamed())
    }
}

fn serialized(raw: RawEvent) -> Result<SerializedEvent, PersistenceError> {
    let sequence = usize::try_from(raw.sequence)
        .map_err(|e| PersistenceError::DeserializationError(Box::new(e)))?;
    Ok(SerializedEvent::new(
        raw.aggregate_id,
        sequence,
        raw.aggregate_type,
        raw.event_type,
        raw.event_version,
        raw.payload,
        raw.metadata,
    ))
}

fn not_streamed() -> PersistenceError {
    PersistenceError::UnknownError(Box::new(Error::internal(
        "replay through cqrs-es streams is not supported: replay the global feed",
    )))
}

fn read_error(e: Error) -> PersistenceError {
    match e {
        Error::StoreUnavailable(cause) => PersistenceError::ConnectionError(cause),
        e @ Error::UnreadableEvent { .. } => PersistenceError::DeserializationError(Box::new(e)),
        other => PersistenceError::UnknownError(Box::new(other)),
    }
}
