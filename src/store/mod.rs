//! The event store behind one type: commands through cqrs-es, usage appends, and
//! the global feed in commit order. Backends: embedded SQLite (default),
//! PostgreSQL, and KurrentDB (feature `kurrentdb`).
//!
//! Commands run through cqrs-es's `EventStore` (load, handle, commit) rather than
//! `CqrsFramework::execute`, because the chain link (`prev_hash`, see
//! `keyledger_domain::chain`) must be the hash of exactly the event the aggregate
//! was loaded up to: the loaded context tells us that sequence.

mod errors;
pub mod feed;
#[cfg(feature = "kurrentdb")]
pub mod kurrent;
mod numbered_append;
pub mod postgres;
mod readable;
pub mod sqlite;

use std::collections::HashMap;
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::{PersistedEventRepository, PersistenceError, SerializedEvent};
use cqrs_es::{Aggregate, AggregateError, DomainEvent, EventStore as _};
use keyledger_domain::chain::{GENESIS, PREV_HASH};
use keyledger_domain::json;
use keyledger_domain::{ApiKey, ApiKeyEvent, DomainError, KeyCommand, KeyUsage, KeyUsageEvent};
use keyledger_projections::RawEvent;
use rand::Rng;

use crate::error::Error;
pub use errors::is_unavailable;
#[cfg(feature = "kurrentdb")]
use kurrent::KurrentStore;
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
    /// Events in KurrentDB, projections in SQLite or PostgreSQL beside it
    /// (boxed: the client is large).
    #[cfg(feature = "kurrentdb")]
    Kurrent(Box<KurrentStore>),
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
            match self
                .execute_once(key_id, command.clone(), metadata.clone())
                .await
            {
                Err(Error::Conflict) => {
                    tracing::debug!(key_id, attempt, "optimistic concurrency conflict, retrying");
                    backoff(attempt).await;
                }
                other => return other,
            }
        }
        Err(Error::Conflict)
    }

    async fn execute_once(
        &self,
        key_id: &str,
        command: KeyCommand,
        mut metadata: EventMetadata,
    ) -> Result<(), Error> {
        let mut context = match self {
            Self::Sqlite(s) => s.events.load_aggregate(key_id).await,
            Self::Postgres(s) => s.events.load_aggregate(key_id).await,
            #[cfg(feature = "kurrentdb")]
            Self::Kurrent(s) => s.events.load_aggregate(key_id).await,
        }
        .map_err(map_aggregate_error)?;
        let sink = EventSink::default();
        context
            .aggregate
            .handle(command, &(), &sink)
            .await
            .map_err(Error::Domain)?;
        let events = sink.collect().await;
        if events.is_empty() {
            return Ok(());
        }
        // cqrs-es serialises the events inside `commit`; the same serialisation
        // here lets the last line refuse what would not read back.
        let stored_metadata = to_json(&metadata)?;
        for event in &events {
            check_storable(&to_json(event)?, &stored_metadata)?;
        }
        let prev = self
            .hash_at(ApiKey::TYPE, key_id, context.current_sequence)
            .await?;
        metadata.insert(PREV_HASH.to_string(), prev);
        match self {
            Self::Sqlite(s) => s.events.commit(events, context, metadata).await,
            Self::Postgres(s) => s.events.commit(events, context, metadata).await,
            #[cfg(feature = "kurrentdb")]
            Self::Kurrent(s) => s.events.commit(events, context, metadata).await,
        }
        .map_err(map_aggregate_error)?;
        // Committed: from here on nothing may report the command as failed.
        // Numbering is done by whichever node polls next if it fails here.
        self.sequence_after_commit().await;
        Ok(())
    }

    /// Numbers what was just committed; a failure is logged, not returned,
    /// because the events are durable and every node's poll numbers them.
    async fn sequence_after_commit(&self) {
        if let Err(e) = self.sequence_pending().await {
            tracing::warn!(error = %e, "committed, but numbering failed; the next poll numbers it");
        }
    }

    /// Whether creates go through group commit (`execute_new`): the SQL
    /// stores write a batch in one transaction; KurrentDB appends each stream
    /// on its own anyway.
    pub fn groups_commits(&self) -> bool {
        matches!(self, Self::Sqlite(_) | Self::Postgres(_))
    }

    /// Runs the creates of new keys (fresh ids, so there is nothing to load)
    /// in one transaction: concurrent creates share one commit and one
    /// numbering instead of paying for each (group commit). When the shared
    /// append fails, each command is run alone, so a failure reaches only the
    /// command it is about.
    pub async fn execute_new(&self, items: &[NewKeyCommand]) -> NewKeysOutcome {
        let mut prepared = Vec::with_capacity(items.len());
        let mut refused = Vec::new();
        for (i, item) in items.iter().enumerate() {
            match self.prepare_new(item.clone()).await {
                Ok(p) => prepared.push(p),
                Err(e) => refused.push((i, e)),
            }
        }
        let mut outcome = self.execute_prepared(&prepared).await;
        // In ascending order, each refusal lands where its command was.
        for (i, e) in refused {
            outcome.outcomes.insert(i, Err(e));
        }
        outcome
    }

    /// Makes a create ready for `execute_prepared`: the aggregate's rules run,
    /// its event in stored form and, on PostgreSQL, its projection rows. Done
    /// on the caller's task, so a group-commit worker only writes.
    pub async fn prepare_new(&self, command: NewKeyCommand) -> Result<PreparedCreate, Error> {
        let (event, domain) = first_event(&command).await?;
        let rows = match self {
            Self::Postgres(_) => Some(numbered_append::Rows::of(&event, domain)?),
            _ => None,
        };
        Ok(PreparedCreate {
            command,
            event,
            rows,
        })
    }

    /// Writes prepared creates together; see `execute_new`.
    pub async fn execute_prepared(&self, items: &[PreparedCreate]) -> NewKeysOutcome {
        let shared = if items.is_empty() {
            Ok((0, None))
        } else {
            self.append_new(items).await
        };
        // A refusal (a conflict) wrote nothing; a failure around the commit
        // (the store or connection gone) may have written the whole batch.
        let ambiguous = matches!(&shared, Err(e) if e.outcome_unknown());
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            results.push(match &shared {
                Ok(_) => Ok(()),
                Err(_) => {
                    let c = &item.command;
                    match self
                        .execute(&c.key_id, c.command.clone(), c.metadata.clone())
                        .await
                    {
                        // The id is fresh: if it exists after an append
                        // whose outcome was unknown, that append did commit
                        // (its answer was lost), so this create is done.
                        Err(Error::Domain(DomainError::AlreadyExists)) if ambiguous => Ok(()),
                        other => other,
                    }
                }
            });
        }
        let (through, written) = match shared {
            Ok(appended) => appended,
            Err(e) => {
                tracing::warn!(error = %e, creates = items.len(), "group commit failed; ran the creates one by one");
                // Where the one-by-one creates went: the head includes them.
                (self.head().await.unwrap_or(0), None)
            }
        };
        NewKeysOutcome {
            outcomes: results,
            through,
            written,
        }
    }

    /// Appends the batch; returns a position that includes it, and the batch
    /// as written where the store numbers it itself (PostgreSQL).
    async fn append_new(
        &self,
        items: &[PreparedCreate],
    ) -> Result<(i64, Option<numbered_append::Appended>), Error> {
        let events = || items.iter().map(|p| p.event.clone()).collect::<Vec<_>>();
        match self {
            Self::Sqlite(s) => s.repository().persist::<ApiKey>(&events(), None).await,
            Self::Postgres(s) => {
                let rows = items
                    .iter()
                    .map(|p| p.rows.as_ref())
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| Error::Internal("a create was not prepared".into()))?;
                let appended = s.append_numbered(&rows).await?;
                return Ok((appended.through, Some(appended)));
            }
            #[cfg(feature = "kurrentdb")]
            Self::Kurrent(s) => s.repository().persist::<ApiKey>(&events(), None).await,
        }
        .map_err(persistence_error)?;
        // Committed: a head that cannot be read now must not make the batch
        // count as failed (its creates would run again, and be refused as
        // existing). Position 0 makes the caller catch up to whatever is there.
        let head = match self.head().await {
            Ok(head) => head,
            Err(e) => {
                tracing::warn!(error = %e, "batch committed, but its position could not be read");
                0
            }
        };
        Ok((head, None))
    }

    /// Gives committed events their global positions. SQLite numbers them at
    /// INSERT (one writer, so that is commit order); PostgreSQL after commit.
    pub async fn sequence_pending(&self) -> Result<(), Error> {
        match self {
            Self::Postgres(s) => postgres::sequence_pending(&s.pool).await.map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Whether a key has any event: its create was committed.
    pub async fn exists(&self, key_id: &str) -> Result<bool, Error> {
        Ok(self.event_at(ApiKey::TYPE, key_id, 1).await?.is_some())
    }

    /// The chain hash of event `sequence` of a stream (`GENESIS` before the first).
    async fn hash_at(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: usize,
    ) -> Result<String, Error> {
        if sequence == 0 {
            return Ok(GENESIS.to_string());
        }
        self.event_at(aggregate_type, aggregate_id, sequence)
            .await?
            .map(|e| e.chain_hash())
            .ok_or_else(|| Error::Internal(format!("event {aggregate_id}#{sequence} vanished")))
    }

    /// Event `sequence` (from 1) of a stream, if it exists.
    async fn event_at(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: usize,
    ) -> Result<Option<RawEvent>, Error> {
        let seq = i64::try_from(sequence).map_err(|e| Error::Internal(e.to_string()))?;
        match self {
            Self::Sqlite(s) => {
                feed::event_at_sqlite(&s.pool, aggregate_type, aggregate_id, seq).await
            }
            Self::Postgres(s) => {
                feed::event_at_postgres(&s.pool, aggregate_type, aggregate_id, seq).await
            }
            #[cfg(feature = "kurrentdb")]
            Self::Kurrent(s) => s.event_at(aggregate_type, aggregate_id, sequence).await,
        }
    }

    /// Appends one usage event to each of several keys' usage streams in one
    /// transaction (a flush at a million used keys cannot afford one each). On
    /// a conflict (another node flushed one of the keys meanwhile) nothing is
    /// written and `Error::Conflict` comes back: the caller goes key by key.
    pub async fn record_usage_batch(
        &self,
        items: &[(String, KeyUsageEvent, EventMetadata)],
    ) -> Result<(), Error> {
        let ids: Vec<&str> = items.iter().map(|(id, _, _)| id.as_str()).collect();
        let newest = match self {
            Self::Sqlite(s) => feed::newest_events_sqlite(&s.pool, KeyUsage::TYPE, &ids).await?,
            Self::Postgres(s) => {
                feed::newest_events_postgres(&s.pool, KeyUsage::TYPE, &ids).await?
            }
            #[cfg(feature = "kurrentdb")]
            Self::Kurrent(_) => {
                for (id, event, metadata) in items {
                    self.record_usage(id, event.clone(), metadata.clone())
                        .await?;
                }
                return Ok(());
            }
        };
        let newest: HashMap<&str, (usize, String)> = newest
            .iter()
            .map(|e| {
                let seq = usize::try_from(e.sequence).unwrap_or(0);
                (e.aggregate_id.as_str(), (seq, e.chain_hash()))
            })
            .collect();
        let mut serialized = Vec::with_capacity(items.len());
        for (id, event, metadata) in items {
            let (last, prev) = newest
                .get(id.as_str())
                .cloned()
                .unwrap_or_else(|| (0, GENESIS.to_string()));
            let mut metadata = metadata.clone();
            metadata.insert(PREV_HASH.to_string(), prev);
            serialized.push(serialize(KeyUsage::TYPE, id, last + 1, event, &metadata)?);
        }
        match self {
            Self::Sqlite(s) => s.repository().persist::<KeyUsage>(&serialized, None).await,
            Self::Postgres(s) => s.repository().persist::<KeyUsage>(&serialized, None).await,
            #[cfg(feature = "kurrentdb")]
            Self::Kurrent(_) => Ok(()),
        }
        .map_err(persistence_error)?;
        self.sequence_after_commit().await;
        Ok(())
    }

    /// Appends one usage event to the key's usage stream (never loads its history).
    pub async fn record_usage(
        &self,
        key_id: &str,
        event: KeyUsageEvent,
        metadata: EventMetadata,
    ) -> Result<(), Error> {
        for attempt in 0..CONFLICT_RETRIES {
            match self.append_usage(key_id, &event, metadata.clone()).await {
                Err(Error::Conflict) => backoff(attempt).await,
                other => return other,
            }
        }
        Err(Error::Conflict)
    }

    async fn append_usage(
        &self,
        key_id: &str,
        event: &KeyUsageEvent,
        mut metadata: EventMetadata,
    ) -> Result<(), Error> {
        let last = self.last_sequence(KeyUsage::TYPE, key_id).await?;
        let prev = self.hash_at(KeyUsage::TYPE, key_id, last).await?;
        metadata.insert(PREV_HASH.to_string(), prev);
        let serialized = serialize(KeyUsage::TYPE, key_id, last + 1, event, &metadata)?;
        match self {
            Self::Sqlite(s) => {
                s.repository()
                    .persist::<KeyUsage>(&[serialized], None)
                    .await
            }
            Self::Postgres(s) => {
                s.repository()
                    .persist::<KeyUsage>(&[serialized], None)
                    .await
            }
            #[cfg(feature = "kurrentdb")]
            Self::Kurrent(s) => {
                s.repository()
                    .persist::<KeyUsage>(&[serialized], None)
                    .await
            }
        }
        .map_err(persistence_error)?;
        self.sequence_after_commit().await;
        Ok(())
    }

    async fn last_sequence(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<usize, Error> {
        const SQL: &str =
            "SELECT MAX(sequence) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2";
        let last: Option<i64> = match self {
            Self::Sqlite(s) => {
                sqlx::query_scalar(SQL)
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .fetch_one(&s.pool)
                    .await
            }
            Self::Postgres(s) => {
                sqlx::query_scalar(SQL)
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .fetch_one(&s.pool)
                    .await
            }
            #[cfg(feature = "kurrentdb")]
            Self::Kurrent(s) => return s.last_sequence(aggregate_type, aggregate_id).await,
        }
        .map_err(feed::store_error)?;
        Ok(usize::try_from(last.unwrap_or(0)).unwrap_or(0))
    }

    /// Events after `position` in commit order, at most `limit`.
    pub async fn read_feed(&self, after: i64, limit: i64) -> Result<Vec<RawEvent>, Error> {
        match self {
            Self::Sqlite(s) => feed::read_sqlite(&s.pool, after, limit).await,
            Self::Postgres(s) => feed::read_postgres(&s.pool, after, limit).await,
            #[cfg(feature = "kurrentdb")]
            Self::Kurrent(s) => s.read_feed(after, limit).await,
        }
    }

    /// The position of the newest committed event (0 when empty).
    pub async fn head(&self) -> Result<i64, Error> {
        match self {
            Self::Sqlite(s) => feed::head_sqlite(&s.pool).await,
            Self::Postgres(s) => feed::head_postgres(&s.pool).await,
            #[cfg(feature = "kurrentdb")]
            Self::Kurrent(s) => s.head().await,
        }
    }

    /// Closes the connection pool, waiting for connections in use.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(s) => s.pool.close().await,
            Self::Postgres(s) => s.close().await,
            #[cfg(feature = "kurrentdb")]
            Self::Kurrent(s) => s.close().await,
        }
    }

    /// The projection database of this store.
    pub fn projection_db(&self) -> keyledger_projections::ProjectionDb {
        match self {
            Self::Sqlite(s) => keyledger_projections::ProjectionDb::Sqlite(s.pool.clone()),
            Self::Postgres(s) => keyledger_projections::ProjectionDb::Postgres(s.pool.clone()),
            #[cfg(feature = "kurrentdb")]
            Self::Kurrent(s) => s.projection_db(),
        }
    }
}

/// What `EventStore::execute_new` did.
pub struct NewKeysOutcome {
    /// Each command's outcome, in order.
    pub outcomes: Vec<Result<(), Error>>,
    /// A position that includes every create that succeeded.
    pub through: i64,
    /// The batch as written, where the store numbers it itself (PostgreSQL).
    pub written: Option<numbered_append::Appended>,
}

/// A create ready to be written with others (`EventStore::prepare_new`).
pub struct PreparedCreate {
    pub command: NewKeyCommand,
    event: SerializedEvent,
    rows: Option<numbered_append::Rows>,
}

impl PreparedCreate {
    /// The key as the key list will hold it once this create is committed,
    /// by the key list's own rule over the event about to be written (its
    /// position is not known yet: 0). What a create answers when its commit
    /// is known but the node's projections cannot show it yet.
    pub fn view(&self) -> Result<keyledger_projections::key_list::KeyRow, Error> {
        let e = &self.event;
        let recorded = keyledger_projections::RecordedEvent::decode(RawEvent {
            position: 0,
            aggregate_type: e.aggregate_type.clone(),
            aggregate_id: e.aggregate_id.clone(),
            sequence: 1,
            event_type: e.event_type.clone(),
            event_version: e.event_version.clone(),
            payload: e.payload.clone(),
            metadata: e.metadata.clone(),
        })?
        .ok_or_else(|| Error::Internal("a create's event is not a key event".into()))?;
        match &recorded.event {
            keyledger_projections::KeyledgerEvent::Key(ApiKeyEvent::KeyCreated(c)) => {
                Ok(keyledger_projections::replay::created_row(&recorded, c))
            }
            _ => Err(Error::Internal("a create's event is not KeyCreated".into())),
        }
    }
}

/// A command on a key id that has no events yet.
#[derive(Debug, Clone)]
pub struct NewKeyCommand {
    pub key_id: String,
    pub command: KeyCommand,
    pub metadata: EventMetadata,
}

/// The one event a create produces, in stored form: the aggregate's own rules
/// decide, on the empty aggregate a fresh id loads to.
async fn first_event(item: &NewKeyCommand) -> Result<(SerializedEvent, ApiKeyEvent), Error> {
    let mut aggregate = ApiKey::default();
    let sink = EventSink::default();
    aggregate
        .handle(item.command.clone(), &(), &sink)
        .await
        .map_err(Error::Domain)?;
    let mut events = sink.collect().await;
    let (Some(event), true) = (events.pop(), events.is_empty()) else {
        return Err(Error::Internal(
            "a create must produce exactly one event".into(),
        ));
    };
    let mut metadata = item.metadata.clone();
    metadata.insert(PREV_HASH.to_string(), GENESIS.to_string());
    let stored = serialize(ApiKey::TYPE, &item.key_id, 1, &event, &metadata)?;
    Ok((stored, event))
}

async fn backoff(attempt: usize) {
    let max_ms = 2u64 << attempt.min(6);
    let ms = rand::rng().random_range(0..=max_ms);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Builds the stored form of an event, as cqrs-es's `commit` does.
fn serialize<E: DomainEvent>(
    aggregate_type: &str,
    key_id: &str,
    sequence: usize,
    event: &E,
    metadata: &EventMetadata,
) -> Result<SerializedEvent, Error> {
    let payload = to_json(event)?;
    let metadata = to_json(metadata)?;
    check_storable(&payload, &metadata)?;
    Ok(SerializedEvent::new(
        key_id.to_string(),
        sequence,
        aggregate_type.to_string(),
        event.event_type(),
        event.event_version(),
        payload,
        metadata,
    ))
}

fn to_json(value: &impl serde::Serialize) -> Result<serde_json::Value, Error> {
    serde_json::to_value(value).map_err(|e| Error::Internal(format!("serialising an event: {e}")))
}

/// The last line before a commit: an event is written only if its stored form
/// reads back unchanged with serde_json's ordinary parser and holds no NUL
/// (PostgreSQL text cannot), so no accepted request can leave an event that
/// stops the readers of the log. The validators refuse all of this first;
/// reaching it means a rule is missing, and the request is refused (422)
/// rather than committed.
fn check_storable(payload: &serde_json::Value, metadata: &serde_json::Value) -> Result<(), Error> {
    for (part, value) in [("payload", payload), ("metadata", metadata)] {
        let refused = |why: String| {
            tracing::error!(
                part,
                why,
                "refused an event whose stored form would not read back"
            );
            Err(Error::validation(
                "body",
                format!("the request cannot be stored: its event's {part} {why}"),
            ))
        };
        if let Err(e) = json::round_trips(value) {
            return refused(e.to_string());
        }
        if json::contains_nul(value) {
            return refused("holds a NUL character".into());
        }
    }
    Ok(())
}

fn persistence_error(e: PersistenceError) -> Error {
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

#[cfg(test)]
mod tests {
    use keyledger_domain::{CreateKey, Environment, KeyCommandKind, KeyHash};
    use keyledger_projections::{RawEvent, RecordedEvent};

    use super::*;

    fn create() -> NewKeyCommand {
        NewKeyCommand {
            key_id: "key_0123".into(),
            command: KeyCommand {
                tenant: "acme".into(),
                actor: "alice".into(),
                at: chrono::DateTime::from_timestamp_millis(1_790_000_000_123).expect("time"),
                kind: KeyCommandKind::CreateKey(CreateKey {
                    key_hash: KeyHash::of("kl_live_example"),
                    display_prefix: "kl_live_exampleX".into(),
                    name: "billing".into(),
                    description: Some("for the invoices".into()),
                    environment: Environment::Live,
                    permissions: vec!["keys:read".into()],
                    expires_at: None,
                    metadata: Some(serde_json::json!({"team": "payments"})),
                    rotated_from: None,
                }),
            },
            metadata: EventMetadata::from([
                ("tenant".to_string(), "acme".to_string()),
                ("actor".to_string(), "alice".to_string()),
                ("request_id".to_string(), "req-1".to_string()),
                (
                    "occurred_at".to_string(),
                    "2026-09-21T13:33:20.123+00:00".to_string(),
                ),
            ]),
        }
    }

    /// Group commit builds a create's rows from the event it holds; they must
    /// be what any node decoding the stored row gets (the same event, meta
    /// and chain hash), or the audit log and the chain would disagree.
    #[tokio::test]
    async fn a_creates_rows_are_what_decoding_its_stored_event_gives() {
        let (stored, domain) = first_event(&create()).await.expect("create");
        let rows = numbered_append::Rows::of(&stored, domain).expect("rows");
        let decoded = RecordedEvent::decode(RawEvent {
            position: 0,
            aggregate_type: stored.aggregate_type.clone(),
            aggregate_id: stored.aggregate_id.clone(),
            sequence: 1,
            event_type: stored.event_type.clone(),
            event_version: stored.event_version.clone(),
            payload: stored.payload.clone(),
            metadata: stored.metadata.clone(),
        })
        .expect("decodes")
        .expect("a key event");
        assert_eq!(rows.event(), &decoded);
        assert_eq!(decoded.meta.request_id.as_deref(), Some("req-1"));
    }
}
