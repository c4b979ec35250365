//! The seam between keyledger and the databases that hold its events: one
//! [`Backend`] per store (`sqlite.rs`, `postgres.rs`, `kurrent/`), and
//! everything above (`EventStore` in `mod.rs`, the service, the tailer)
//! written once against it.

use std::sync::Arc;

use async_trait::async_trait;
use cqrs_es::persist::{EventStoreAggregateContext, SerializedEvent};
use cqrs_es::Aggregate;
use cqrs_es::AggregateError;
use keyledger_domain::webhook::Webhook;
use keyledger_domain::{ApiKey, ApiKeyEvent, DomainError, KeyId, KeyUsage, OwnerLimits, RawEvent};
use keyledger_sql::{InlineProjection, SqlPool};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::store::claims::ClaimTable;
use crate::store::windows::WindowTable;

/// Metadata recorded with every event of a command.
pub type EventMetadata = std::collections::HashMap<String, String>;

/// A stream sequence as the SQL columns and the chain hash hold it.
pub(crate) fn sequence_i64(sequence: usize) -> Result<i64, Error> {
    i64::try_from(sequence).map_err(|e| Error::internal_from("a sequence beyond i64", e))
}

/// Which stream events belong to: a key's two, or an owner's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// The key's lifecycle (`ApiKey`).
    Key,
    /// The key's usage and credit ledger (`KeyUsage`), appended without
    /// loading its history.
    Usage,
    /// An owner's shared limits (`OwnerLimits`; the id is the owner's
    /// stream id).
    Owner,
    /// A webhook endpoint (`WebhookEndpoint`; the id is the endpoint's).
    Webhook,
    /// A tenant's policy (`TenantPolicy`; the id is the policy's stream id).
    Policy,
}

impl Stream {
    /// The aggregate type its events are stored under.
    pub fn aggregate_type(self) -> &'static str {
        match self {
            Self::Key => ApiKey::TYPE,
            Self::Usage => KeyUsage::TYPE,
            Self::Owner => OwnerLimits::TYPE,
            Self::Webhook => Webhook::TYPE,
            Self::Policy => keyledger_domain::policy::TenantPolicy::TYPE,
        }
    }
}

/// What wants to hear of new events in the global feed (the tailer):
/// implemented above the store, so the store never knows who listens.
#[async_trait]
pub trait FeedListener: Send + Sync {
    /// New events may have been committed.
    fn wake(&self);
    /// Events up to `position` have been committed.
    fn wake_through(&self, position: i64);
    /// The position a subscription starts from: nothing after it is applied.
    async fn resume_position(&self) -> Result<i64, Error>;
}

/// What a group-commit append wrote.
#[derive(Debug, Clone, Copy)]
pub struct Appended {
    /// The highest position given before the append; its events follow it
    /// in batch order. 0 when the store does not say (the caller then
    /// catches up to `through`).
    pub after: i64,
    /// A position that includes the whole batch.
    pub through: i64,
    /// Whether the store numbered the batch itself, so that its events are
    /// exactly the positions `after + 1 ..= through`.
    pub numbered: bool,
    /// Whether the inline projection's rows were written with the events.
    pub projected: bool,
}

/// A created key's event ready to be appended with others.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub stored: SerializedEvent,
    /// The payload's and the metadata's JSON text, written once: for the
    /// chain hash and for a store that binds text.
    pub payload: String,
    pub metadata: String,
    /// Its chain hash.
    pub hash: String,
    /// The rows of the inline projection, when the store writes them.
    pub rows: Option<Vec<Vec<keyledger_sql::Value>>>,
}

/// One event store. Appends are optimistic: an event whose stream already
/// has its sequence is refused (`Error::Conflict`), and nothing of its batch
/// is written.
#[async_trait]
pub trait Backend: Send + Sync {
    /// A key's aggregate, as its events (upcast) make it.
    async fn load(
        &self,
        key_id: &KeyId,
    ) -> Result<EventStoreAggregateContext<ApiKey>, AggregateError<DomainError>>;

    /// Commits a command's events after the events `context` was loaded at.
    async fn commit(
        &self,
        events: Vec<ApiKeyEvent>,
        context: EventStoreAggregateContext<ApiKey>,
        metadata: EventMetadata,
    ) -> Result<(), AggregateError<DomainError>>;

    /// Appends events already numbered and chained, in one transaction.
    async fn append(&self, stream: Stream, events: &[SerializedEvent]) -> Result<(), Error>;

    /// Whether one `append` may hold several streams' events, all written
    /// or none.
    fn appends_streams_together(&self) -> bool {
        true
    }

    /// Appends many events already numbered and chained, of both streams,
    /// the fastest way the store has (loading data: `keyledger-bench seed`).
    async fn bulk_append(&self, events: &[SerializedEvent]) -> Result<(), Error>;

    /// Appends created keys' first events in one transaction (group
    /// commit), with the inline projection's rows where the store writes
    /// them.
    async fn append_creates(&self, batch: &[&NewEvent]) -> Result<Appended, Error> {
        let events: Vec<SerializedEvent> = batch.iter().map(|e| e.stored.clone()).collect();
        self.append(Stream::Key, &events).await?;
        // Committed: a head that cannot be read now must not make the batch
        // count as failed (its creates would run again, and be refused as
        // existing). Position 0 makes the caller catch up to whatever is there.
        let through = match self.head().await {
            Ok(head) => head,
            Err(e) => {
                tracing::warn!(error = %e, "batch committed, but its position could not be read");
                0
            }
        };
        Ok(Appended {
            after: 0,
            through,
            numbered: false,
            projected: false,
        })
    }

    /// Gives the store the projection whose rows it writes with creates,
    /// where it writes them (a store that does not ignores it).
    fn set_inline(&self, _inline: Arc<dyn InlineProjection>) {}

    /// The projection `append_creates` writes rows of (then creates are
    /// prepared with them).
    fn inline(&self) -> Option<Arc<dyn InlineProjection>> {
        None
    }

    /// Event `sequence` (from 1) of a key's stream, if it exists.
    async fn event_at(
        &self,
        stream: Stream,
        key: &KeyId,
        sequence: usize,
    ) -> Result<Option<RawEvent>, Error>;

    /// The sequence of the last event of a key's stream (0 when it has none).
    async fn last_sequence(&self, stream: Stream, key: &KeyId) -> Result<usize, Error>;

    /// The newest event of each of several keys' streams (streams with no
    /// event are absent).
    async fn newest_events(&self, stream: Stream, keys: &[&KeyId]) -> Result<Vec<RawEvent>, Error> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let last = self.last_sequence(stream, key).await?;
            if last > 0 {
                out.extend(self.event_at(stream, key, last).await?);
            }
        }
        Ok(out)
    }

    /// Events after `after` in commit order, at least `limit` when there are
    /// that many.
    async fn read_feed(&self, after: i64, limit: i64) -> Result<Vec<RawEvent>, Error>;

    /// The position of the newest committed event (0 when there is none).
    async fn head(&self) -> Result<i64, Error>;

    /// Gives committed events their global positions, where the store does
    /// that after commit.
    async fn sequence_pending(&self) -> Result<(), Error> {
        Ok(())
    }

    /// Tells `listener` of new events (other nodes' too) until `stop`; the
    /// listener also polls, so a store without notifications returns at
    /// once.
    async fn listen(&self, _listener: Arc<dyn FeedListener>, _stop: CancellationToken) {}

    /// Whether concurrent creates are written together (`append_creates`).
    fn groups_commits(&self) -> bool {
        true
    }

    /// The SQL database holding the projections beside the events.
    fn sql(&self) -> SqlPool;

    /// The idempotency claims, in that database.
    fn claims(&self) -> Arc<dyn ClaimTable>;

    /// The rate-limit windows, in that database.
    fn windows(&self) -> Arc<dyn WindowTable>;

    /// The webhook endpoints' table, in that database.
    fn webhooks(&self) -> Arc<dyn crate::store::webhooks::WebhookTable>;

    /// The claims of imported keys' hashes, in that database.
    fn imports(&self) -> Arc<dyn crate::store::imports::ImportClaimTable>;

    /// Closes the connections, waiting for those in use.
    async fn close(&self);
}
