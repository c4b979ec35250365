//! The event store: commands through cqrs-es, usage appends, group commit and
//! the global feed in commit order, written once over a [`Backend`]. Backends:
//! embedded SQLite (default), PostgreSQL, and KurrentDB (feature
//! `kurrentdb`), each in its own module; nothing outside this module names
//! one (`open` chooses).
//!
//! Commands run through cqrs-es's `EventStore` (load, handle, commit) rather than
//! `CqrsFramework::execute`, because the chain link (`prev_hash`, see
//! `keyledger_domain::chain`) must be the hash of exactly the event the aggregate
//! was loaded up to: the loaded context tells us that sequence.

pub mod backend;
pub mod claims;
mod errors;
pub mod feed;
pub mod imports;
pub(crate) mod inline;
#[cfg(feature = "kurrentdb")]
pub mod kurrent;
pub mod ledger;
mod numbered_append;
pub mod postgres;
mod readable;
pub mod sqlite;
mod sqlite_append;
mod webhook_stream;
pub mod webhooks;
pub mod windows;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::SerializedEvent;
use cqrs_es::{Aggregate, DomainEvent};
use keyledger_domain::chain::{event_hash_text, StoredText, GENESIS, PREV_HASH};
use keyledger_domain::json;
use keyledger_domain::{
    ApiKey, ApiKeyEvent, DomainError, KeyCommand, KeyId, KeyUsage, KeyUsageEvent, RawEvent,
};
use keyledger_sql::{InlineEvent, InlineProjection, SqlPool};
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, StoreConfig};
use crate::error::Error;
use backend::sequence_i64;
pub use backend::{Appended, Backend, EventMetadata, FeedListener, NewEvent, Stream};
pub use claims::ClaimTable;
pub use errors::is_unavailable;
use errors::map_aggregate_error;

/// How often a command is retried when another command on the same key committed
/// first. Each retry reloads the key, so the rules see the winner's events.
pub(crate) const CONFLICT_RETRIES: usize = 8;

/// The event store of a node, over one backend.
pub struct EventStore {
    backend: Box<dyn Backend>,
}

/// Opens the configured event store, applying migrations. `data_dir` is
/// created (mode 0700) by `create_dir` where the store keeps files there.
pub async fn open(
    config: &Config,
    create_dir: impl Fn(&Path) -> Result<(), Error>,
) -> Result<EventStore, Error> {
    let backend: Box<dyn Backend> = match &config.store {
        StoreConfig::Sqlite => {
            create_dir(&config.data_dir)?;
            Box::new(sqlite::SqliteStore::open(&config.sqlite_path()).await?)
        }
        StoreConfig::Postgres(url) => Box::new(postgres::PostgresStore::open(url).await?),
        StoreConfig::Kurrent(k) => {
            if k.projections_url.is_none() {
                // Its projections file lives there (`KurrentStore::open`).
                create_dir(&config.data_dir)?;
            }
            open_kurrent(k, &config.data_dir).await?
        }
    };
    Ok(EventStore::new(backend))
}

/// The KurrentDB store, where it is built.
#[cfg(feature = "kurrentdb")]
async fn open_kurrent(
    k: &crate::config::KurrentConfig,
    data_dir: &Path,
) -> Result<Box<dyn Backend>, Error> {
    Ok(Box::new(kurrent::KurrentStore::open(k, data_dir).await?))
}

#[cfg(not(feature = "kurrentdb"))]
async fn open_kurrent(
    _k: &crate::config::KurrentConfig,
    _data_dir: &Path,
) -> Result<Box<dyn Backend>, Error> {
    Err(Error::Config(
        "this keyledger was built without KurrentDB support: rebuild with `--features kurrentdb`"
            .into(),
    ))
}

impl EventStore {
    pub fn new(backend: Box<dyn Backend>) -> Self {
        Self { backend }
    }

    /// Runs a command on one key. Optimistic concurrency decides races: the loser
    /// is re-executed on the new state, and reported as a conflict only when it
    /// keeps losing.
    pub async fn execute(
        &self,
        key_id: &KeyId,
        command: KeyCommand,
        metadata: EventMetadata,
    ) -> Result<(), Error> {
        for attempt in 0..CONFLICT_RETRIES {
            match self
                .execute_once(key_id, command.clone(), metadata.clone())
                .await
            {
                Err(Error::Conflict) => {
                    tracing::debug!(%key_id, attempt, "optimistic concurrency conflict, retrying");
                    backoff(attempt).await;
                }
                other => return other,
            }
        }
        Err(Error::Conflict)
    }

    async fn execute_once(
        &self,
        key_id: &KeyId,
        command: KeyCommand,
        mut metadata: EventMetadata,
    ) -> Result<(), Error> {
        let mut context = self
            .backend
            .load(key_id)
            .await
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
            .hash_at(Stream::Key, key_id, context.current_sequence)
            .await?;
        metadata.insert(PREV_HASH.to_string(), prev);
        self.backend
            .commit(events, context, metadata)
            .await
            .map_err(map_aggregate_error)?;
        // Committed: from here on nothing may report the command as failed.
        // Numbering is done by whichever node polls next if it fails here.
        self.sequence_after_commit().await;
        Ok(())
    }

    /// Numbers what was just committed; a failure is logged, not returned,
    /// because the events are durable and every node's poll numbers them.
    pub(crate) async fn sequence_after_commit(&self) {
        if let Err(e) = self.backend.sequence_pending().await {
            tracing::warn!(error = %e, "committed, but numbering failed; the next poll numbers it");
        }
    }

    /// Whether creates go through group commit (`execute_prepared`).
    pub fn groups_commits(&self) -> bool {
        self.backend.groups_commits()
    }

    /// Gives the store the projection it writes with group-committed creates
    /// where it can (PostgreSQL: in the statement that appends them).
    pub fn project_inline(&self, inline: Arc<dyn InlineProjection>) {
        self.backend.set_inline(inline);
    }

    /// Makes a create ready for `execute_prepared`: the aggregate's rules
    /// run, its event in stored form, its chain hash and, where the store
    /// writes them with it, the inline projection's rows. Done on the
    /// caller's task, so a group-commit worker only writes.
    pub async fn prepare_new(&self, command: NewKeyCommand) -> Result<PreparedCreate, Error> {
        let (stored, domain) = first_event(&command).await?;
        let payload = stored.payload.to_string();
        let metadata = stored.metadata.to_string();
        let hash = event_hash_text(StoredText {
            aggregate_type: &stored.aggregate_type,
            aggregate_id: &stored.aggregate_id,
            sequence: sequence_i64(stored.sequence)?,
            event_type: &stored.event_type,
            event_version: &stored.event_version,
            payload: &payload,
            metadata: &metadata,
        });
        let mut prepared = PreparedCreate {
            command,
            event: NewEvent {
                stored,
                payload,
                metadata,
                hash,
                rows: None,
            },
            domain,
        };
        if let Some(inline) = self.backend.inline() {
            let rows = inline
                .rows(prepared.inline_event()?)
                .map_err(|e| Error::internal_from("building a create's projection rows", e))?;
            prepared.event.rows = Some(rows);
        }
        Ok(prepared)
    }

    /// Prepares and writes creates of new keys together (see
    /// `execute_prepared`); a create refused while preparing is refused
    /// alone, in its place.
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

    /// Writes prepared creates in one transaction: concurrent creates share
    /// one commit and one numbering instead of paying for each (group
    /// commit). When the shared append fails, each command is run alone, so
    /// a failure reaches only the command it is about.
    pub async fn execute_prepared(&self, items: &[PreparedCreate]) -> NewKeysOutcome {
        let shared = if items.is_empty() {
            Ok(Appended {
                after: 0,
                through: 0,
                numbered: false,
                projected: false,
            })
        } else {
            let batch: Vec<&NewEvent> = items.iter().map(|p| &p.event).collect();
            self.backend.append_creates(&batch).await
        };
        // A refusal (a conflict) wrote nothing; a failure around the commit
        // (the store or connection gone) may have written the whole batch.
        let ambiguous = matches!(&shared, Err(e) if e.outcome_unknown());
        let mut outcomes = Vec::with_capacity(items.len());
        for item in items {
            outcomes.push(match &shared {
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
        let appended = match shared {
            Ok(appended) => {
                if !appended.numbered {
                    self.sequence_after_commit().await;
                }
                appended
            }
            Err(e) => {
                tracing::warn!(error = %e, creates = items.len(), "group commit failed; ran the creates one by one");
                // Where the one-by-one creates went: the head includes them.
                Appended {
                    after: 0,
                    through: self.head().await.unwrap_or(0),
                    numbered: false,
                    projected: false,
                }
            }
        };
        NewKeysOutcome { outcomes, appended }
    }

    /// Gives committed events their global positions (see `Backend`).
    pub async fn sequence_pending(&self) -> Result<(), Error> {
        self.backend.sequence_pending().await
    }

    /// Whether a key has any event: its create was committed.
    pub async fn exists(&self, key_id: &KeyId) -> Result<bool, Error> {
        Ok(self
            .backend
            .event_at(Stream::Key, key_id, 1)
            .await?
            .is_some())
    }

    /// The chain hash of event `sequence` of a stream (`GENESIS` before the first).
    async fn hash_at(&self, stream: Stream, key: &KeyId, sequence: usize) -> Result<String, Error> {
        if sequence == 0 {
            return Ok(GENESIS.to_string());
        }
        self.backend
            .event_at(stream, key, sequence)
            .await?
            .map(|e| e.chain_hash())
            .ok_or_else(|| Error::internal(format!("event {key}#{sequence} vanished")))
    }

    /// Appends one usage event to each of several keys' usage streams in one
    /// transaction (a flush at a million used keys cannot afford one each). On
    /// a conflict (another node flushed one of the keys meanwhile) nothing is
    /// written and `Error::Conflict` comes back: the caller goes key by key.
    pub async fn record_usage_batch(&self, items: &[UsageFlush]) -> Result<(), Error> {
        if !self.backend.appends_streams_together() {
            // Each key's event on its own (a failure part-way must not make
            // the caller append the written ones again).
            for item in items {
                self.record_usage(item).await?;
            }
            return Ok(());
        }
        let ids: Vec<&KeyId> = items.iter().map(|i| &i.key_id).collect();
        let newest = self.backend.newest_events(Stream::Usage, &ids).await?;
        let mut last: HashMap<&str, &RawEvent> = HashMap::with_capacity(newest.len());
        for e in &newest {
            last.insert(e.aggregate_id.as_str(), e);
        }
        let mut serialized = Vec::with_capacity(items.len());
        for item in items {
            let (seq, prev, before) = match last.get(item.key_id.as_str()) {
                Some(e) => {
                    let seq = usize::try_from(e.sequence).map_err(|err| {
                        Error::internal_from(
                            format!("usage event {}#{}", e.aggregate_id, e.sequence),
                            err,
                        )
                    })?;
                    (seq, e.chain_hash(), ledger::ledger_of(e)?)
                }
                None => (0, GENESIS.to_string(), None),
            };
            let event = item.event(before.or_else(|| item.opening.clone()).as_ref())?;
            let mut metadata = item.metadata.clone();
            metadata.insert(PREV_HASH.to_string(), prev);
            serialized.push(serialize(
                KeyUsage::TYPE,
                &item.key_id,
                seq + 1,
                &event,
                &metadata,
            )?);
        }
        self.backend.append(Stream::Usage, &serialized).await?;
        self.sequence_after_commit().await;
        Ok(())
    }

    /// Appends one key's flush to its usage stream (never loads its
    /// history), retried when another node flushed it meanwhile.
    pub async fn record_usage(&self, item: &UsageFlush) -> Result<(), Error> {
        self.append_ledger(
            &item.key_id,
            item.opening.as_ref(),
            &item.metadata,
            |before| Ok(vec![item.event(before)?]),
        )
        .await
        .map(|_| ())
    }

    /// Appends events already numbered and chained, the fastest way the
    /// store has (loading data), and numbers them.
    pub async fn bulk_append(&self, events: &[SerializedEvent]) -> Result<(), Error> {
        self.backend.bulk_append(events).await?;
        self.backend.sequence_pending().await
    }

    /// Events after `position` in commit order, at most `limit`.
    pub async fn read_feed(&self, after: i64, limit: i64) -> Result<Vec<RawEvent>, Error> {
        self.backend.read_feed(after, limit).await
    }

    /// The position of the newest committed event (0 when empty).
    pub async fn head(&self) -> Result<i64, Error> {
        self.backend.head().await
    }

    /// Tells `listener` of other nodes' events until `stop` (see `Backend::listen`).
    pub async fn listen(&self, listener: Arc<dyn FeedListener>, stop: CancellationToken) {
        self.backend.listen(listener, stop).await;
    }

    /// Closes the connections, waiting for those in use.
    pub async fn close(&self) {
        self.backend.close().await;
    }

    /// The database holding the projections.
    pub fn projection_db(&self) -> SqlPool {
        self.backend.sql()
    }

    /// The idempotency claims.
    pub fn claims(&self) -> Arc<dyn ClaimTable> {
        self.backend.claims()
    }

    /// The rate-limit windows.
    pub fn windows(&self) -> Arc<dyn windows::WindowTable> {
        self.backend.windows()
    }

    /// The webhook endpoints' table.
    pub fn webhooks(&self) -> Arc<dyn webhooks::WebhookTable> {
        self.backend.webhooks()
    }

    /// The claims of imported keys' hashes (`POST /v1/keys/import`).
    pub fn imports(&self) -> Arc<dyn imports::ImportClaimTable> {
        self.backend.imports()
    }

    /// Deletes what has expired by `now_ms` beside the events: idempotency
    /// claims (and their sealed keys) and ended rate-limit windows.
    pub async fn purge_expired(&self, now_ms: i64) -> Result<u64, Error> {
        let claims = self.claims().purge(now_ms).await?;
        let windows = self.windows().purge(now_ms).await?;
        Ok(claims + windows)
    }
}

/// One key's uses (and credit report) for a usage flush.
#[derive(Debug, Clone)]
pub struct UsageFlush {
    pub key_id: KeyId,
    pub tenant: String,
    pub count: u64,
    /// Refused verifications, by outcome.
    pub refused: keyledger_domain::Outcomes,
    pub last_used_at: chrono::DateTime<chrono::Utc>,
    pub spent: u64,
    pub settled: Option<keyledger_domain::Settlement>,
    /// The ledger the key's create opened, for a stream that has none yet.
    pub opening: Option<keyledger_domain::Ledger>,
    pub metadata: EventMetadata,
}

impl UsageFlush {
    /// Its event, applied to the ledger as it stands.
    fn event(&self, before: Option<&keyledger_domain::Ledger>) -> Result<KeyUsageEvent, Error> {
        Ok(KeyUsage::flush(
            self.tenant.clone(),
            self.count,
            self.refused,
            self.last_used_at,
            self.spent,
            self.settled.clone(),
            before,
        )?)
    }
}

/// What `EventStore::execute_prepared` did.
pub struct NewKeysOutcome {
    /// Each command's outcome, in order.
    pub outcomes: Vec<Result<(), Error>>,
    /// Where the batch went.
    pub appended: Appended,
}

/// A create ready to be written with others (`EventStore::prepare_new`).
pub struct PreparedCreate {
    pub command: NewKeyCommand,
    event: NewEvent,
    domain: ApiKeyEvent,
}

impl PreparedCreate {
    /// The create's event as a projection builds from it.
    pub fn inline_event(&self) -> Result<InlineEvent<'_>, Error> {
        let stored = &self.event.stored;
        Ok(InlineEvent {
            aggregate_id: &stored.aggregate_id,
            sequence: sequence_i64(stored.sequence)?,
            event: &self.domain,
            metadata: &stored.metadata,
            hash: &self.event.hash,
        })
    }
}

/// A command on a key id that has no events yet.
#[derive(Debug, Clone)]
pub struct NewKeyCommand {
    pub key_id: KeyId,
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
        return Err(Error::internal("a create must produce exactly one event"));
    };
    let mut metadata = item.metadata.clone();
    metadata.insert(PREV_HASH.to_string(), GENESIS.to_string());
    let stored = serialize(ApiKey::TYPE, &item.key_id, 1, &event, &metadata)?;
    Ok((stored, event))
}

pub(crate) async fn backoff(attempt: usize) {
    let max_ms = 2u64 << attempt.min(6);
    let ms = rand::rng().random_range(0..=max_ms);
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// Builds the stored form of an event, as cqrs-es's `commit` does.
pub(crate) fn serialize<E: DomainEvent>(
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
    serde_json::to_value(value).map_err(|e| Error::internal_from("serialising an event", e))
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

#[cfg(test)]
mod tests {
    use keyledger_domain::{CreateKey, Environment, KeyCommandKind, KeyHash};
    use keyledger_projections::inline::InlineCreates;
    use keyledger_projections::replay::{audit_entry, created_row};
    use keyledger_projections::schema::Record;
    use keyledger_projections::{KeyledgerEvent, RecordedEvent};
    use keyledger_sql::InlineProjection;

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
                    owner: None,
                    ratelimits: Vec::new(),
                    credits: None,
                    allowed_ips: Default::default(),
                    imported: Default::default(),
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

    /// Group commit builds a create's event and rows from the domain event it
    /// holds; they must be what any node decoding the stored row gets (the
    /// same event, meta and chain hash), or the audit log and the chain
    /// would disagree.
    #[tokio::test]
    async fn a_creates_rows_are_what_decoding_its_stored_event_gives() {
        let (stored, domain) = first_event(&create()).await.expect("create");
        let payload = stored.payload.to_string();
        let metadata = stored.metadata.to_string();
        let hash = event_hash_text(StoredText {
            aggregate_type: &stored.aggregate_type,
            aggregate_id: &stored.aggregate_id,
            sequence: 1,
            event_type: &stored.event_type,
            event_version: &stored.event_version,
            payload: &payload,
            metadata: &metadata,
        });
        let prepared = PreparedCreate {
            command: create(),
            event: NewEvent {
                stored: stored.clone(),
                payload,
                metadata,
                hash,
                rows: None,
            },
            domain,
        };
        let built =
            InlineCreates::recorded(prepared.inline_event().expect("event"), 0).expect("built");
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
        assert_eq!(built, decoded);
        assert_eq!(decoded.meta.request_id.as_deref(), Some("req-1"));
        // And the rows written with it are the tailer's rows for it.
        let KeyledgerEvent::Key(ApiKeyEvent::KeyCreated(c)) = &decoded.event else {
            panic!("a create");
        };
        let rows = InlineCreates
            .rows(prepared.inline_event().expect("event"))
            .expect("rows");
        assert_eq!(rows[0], created_row(&decoded, c).values().to_vec());
        assert_eq!(rows[1], audit_entry(&decoded).values().to_vec());
    }
}
