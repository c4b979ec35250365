//! KurrentDB (formerly EventStoreDB) as the event store, behind the `kurrentdb`
//! feature: one stream per key and one per key's usage (`naming`), appends with
//! the expected revision (optimistic concurrency), aggregates loaded by reading
//! their stream, and the global feed read from `$all` filtered to our streams.
//!
//! KurrentDB holds only the events. The projections, their checkpoints and the
//! idempotency claims live in a SQL database beside it: the embedded SQLite file
//! `kurrent-projections.db` in the data directory, or PostgreSQL when
//! `DATABASE_URL` is also given (several nodes then share one set of
//! projections, as with the PostgreSQL store). A catch-up subscription to `$all`
//! from the projections' checkpoint (`subscription::listen`) wakes the tailer on
//! every new event, so every node's projections stay fresh.
//!
//! Feed positions and checkpoints are `$all` prepare positions; see `codec` for
//! why that is exact.

pub mod codec;
pub mod errors;
pub mod naming;
pub mod repository;
pub mod subscription;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use cqrs_es::persist::{
    EventStoreAggregateContext, PersistedEventRepository, PersistedEventStore, SerializedEvent,
};
use cqrs_es::{AggregateError, EventStore as _};
use keyledger_domain::webhook::Webhook;
use keyledger_domain::{ApiKey, ApiKeyEvent, DomainError, KeyId, KeyUsage, OwnerLimits, RawEvent};
use keyledger_sql::SqlPool;
use kurrentdb::{
    Client, ClientSettings, ReadAllOptions, ReadStreamOptions, StreamPosition, SubscriptionFilter,
};
use tokio_util::sync::CancellationToken;

use crate::config::KurrentConfig;
use crate::error::Error;
use crate::store::backend::EventMetadata;
use crate::store::backend::{Backend, FeedListener, Stream};
use crate::store::claims::ClaimTable;
use crate::store::errors::persistence_error;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use codec::{feed_position, read_from, revision_of, Decoded, Stored};
use errors::to_error;
use naming::Naming;
pub use repository::KurrentEventRepository;

/// File name of the embedded projection database, in the data directory.
pub const PROJECTIONS_FILE: &str = "kurrent-projections.db";

pub struct KurrentStore {
    client: Client,
    naming: Naming,
    events: PersistedEventStore<KurrentEventRepository, ApiKey>,
    /// The SQL store whose database holds projections, checkpoints and
    /// idempotency claims (its events table stays empty).
    side: Box<dyn Backend>,
}

impl KurrentStore {
    /// Creates the client (it connects on first use) and opens the projection
    /// database, applying its migrations.
    pub async fn open(config: &KurrentConfig, data_dir: &Path) -> Result<Self, Error> {
        let settings: ClientSettings = config.url.parse().map_err(|e| {
            Error::Config(format!(
                "--event-store is not a KurrentDB connection string: {e}"
            ))
        })?;
        let client =
            Client::new(settings).map_err(|e| Error::Config(format!("KurrentDB client: {e}")))?;
        let naming = Naming::new(&config.namespace)?;
        let side: Box<dyn Backend> = match &config.projections_url {
            Some(url) => Box::new(PostgresStore::open(url).await?),
            None => {
                std::fs::create_dir_all(data_dir).map_err(|e| {
                    Error::Config(format!(
                        "cannot create data directory {}: {e}",
                        data_dir.display()
                    ))
                })?;
                Box::new(SqliteStore::open(&data_dir.join(PROJECTIONS_FILE)).await?)
            }
        };
        // Never a snapshot store: cqrs-es 0.5 snapshots apply events twice (and
        // the repository refuses snapshots).
        let events = PersistedEventStore::new_event_store(KurrentEventRepository::new(
            client.clone(),
            naming.clone(),
        ))
        .with_upcasters(keyledger_domain::upcast::upcasters());
        Ok(Self {
            client,
            naming,
            events,
            side,
        })
    }

    pub(crate) fn repository(&self) -> KurrentEventRepository {
        KurrentEventRepository::new(self.client.clone(), self.naming.clone())
    }

    /// Our events after feed position `after`, in `$all` order: at least
    /// `limit` when there are that many, more only to finish an append of
    /// several events (a checkpoint must never fall inside one, see `codec`).
    async fn feed(&self, after: i64, limit: i64) -> Result<Vec<RawEvent>, Error> {
        let Ok(limit) = usize::try_from(limit) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        // One more than wanted: a read from a position may return that position.
        let page = limit + 1;
        let mut out: Vec<Decoded> = Vec::new();
        let mut from = read_from(after);
        loop {
            let options = ReadAllOptions::default()
                .forwards()
                .position(from)
                .filter(self.filter())
                .max_count(page);
            let mut stream = self.client.read_all(&options).await.map_err(to_error)?;
            let mut received = 0;
            let mut last_seen = None;
            while let Some(resolved) = stream.next().await.map_err(to_error)? {
                received += 1;
                let Some(recorded) = resolved.event.as_ref() else {
                    continue;
                };
                last_seen = Some(recorded.position);
                if feed_position(recorded.position)? <= after
                    || out.last().is_some_and(|l| recorded.position <= l.position)
                {
                    continue;
                }
                let Some(decoded) = Decoded::decode(&self.naming, Stored::of(recorded))? else {
                    continue;
                };
                if let Some(last) = out.last() {
                    if out.len() >= limit && last.position.commit != decoded.position.commit {
                        return out.into_iter().map(Decoded::into_raw).collect();
                    }
                }
                out.push(decoded);
            }
            match last_seen {
                Some(p) if received >= page => from = StreamPosition::Position(p),
                _ => return out.into_iter().map(Decoded::into_raw).collect(),
            }
        }
    }

    /// The feed position of our newest event (0 when there is none).
    async fn newest_position(&self) -> Result<i64, Error> {
        let options = ReadAllOptions::default()
            .position(StreamPosition::End)
            .backwards()
            .filter(self.filter())
            .max_count(1);
        let mut stream = self.client.read_all(&options).await.map_err(to_error)?;
        while let Some(resolved) = stream.next().await.map_err(to_error)? {
            if let Some(recorded) = resolved.event.as_ref() {
                if self.naming.parse(recorded.stream_id()).is_some() {
                    return feed_position(recorded.position);
                }
            }
        }
        Ok(0)
    }

    /// Event `sequence` of a stream, if it exists.
    async fn read_event_at(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: usize,
    ) -> Result<Option<RawEvent>, Error> {
        let options = ReadStreamOptions::default()
            .forwards()
            .position(StreamPosition::Position(revision_of(sequence)?))
            .max_count(1);
        let found = self
            .read_one(aggregate_type, aggregate_id, &options)
            .await?;
        match found {
            Some(d) if d.event.sequence == sequence => d.into_raw().map(Some),
            _ => Ok(None),
        }
    }

    /// The sequence of the last event of a stream (0 when it has none).
    async fn read_last_sequence(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<usize, Error> {
        let options = ReadStreamOptions::default()
            .position(StreamPosition::End)
            .backwards()
            .max_count(1);
        Ok(self
            .read_one(aggregate_type, aggregate_id, &options)
            .await?
            .map_or(0, |d| d.event.sequence))
    }

    async fn read_one(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        options: &ReadStreamOptions,
    ) -> Result<Option<Decoded>, Error> {
        let name = self.naming.stream(aggregate_type, aggregate_id);
        let mut stream = self
            .client
            .read_stream(name.as_str(), options)
            .await
            .map_err(to_error)?;
        let resolved = match stream.next().await {
            Ok(Some(r)) => r,
            Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => return Ok(None),
            Err(e) => return Err(to_error(e)),
        };
        match resolved.event.as_ref() {
            Some(recorded) => Decoded::decode(&self.naming, Stored::of(recorded)),
            None => Ok(None),
        }
    }

    fn filter(&self) -> SubscriptionFilter {
        SubscriptionFilter::on_stream_name().add_prefix(self.naming.prefix())
    }
}

#[async_trait]
impl Backend for KurrentStore {
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

    /// Appends one stream's events (an append to KurrentDB is one stream's).
    async fn append(&self, stream: Stream, events: &[SerializedEvent]) -> Result<(), Error> {
        let repository = self.repository();
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

    fn appends_streams_together(&self) -> bool {
        false
    }

    /// One append per event, each expecting the previous revision: slower
    /// than the SQL stores' bulk INSERT, but the same checks as a command's.
    async fn bulk_append(&self, events: &[SerializedEvent]) -> Result<(), Error> {
        let repository = self.repository();
        for event in events {
            repository.append(std::slice::from_ref(event)).await?;
        }
        Ok(())
    }

    async fn event_at(
        &self,
        stream: Stream,
        key: &KeyId,
        sequence: usize,
    ) -> Result<Option<RawEvent>, Error> {
        self.read_event_at(stream.aggregate_type(), key, sequence)
            .await
    }

    async fn last_sequence(&self, stream: Stream, key: &KeyId) -> Result<usize, Error> {
        self.read_last_sequence(stream.aggregate_type(), key).await
    }

    async fn read_feed(&self, after: i64, limit: i64) -> Result<Vec<RawEvent>, Error> {
        self.feed(after, limit).await
    }

    async fn head(&self) -> Result<i64, Error> {
        self.newest_position().await
    }

    async fn listen(&self, listener: Arc<dyn FeedListener>, stop: CancellationToken) {
        subscription::listen(
            self.client.clone(),
            self.naming.prefix().to_string(),
            listener,
            stop,
        )
        .await;
    }

    /// Each stream is appended on its own anyway.
    fn groups_commits(&self) -> bool {
        false
    }

    fn sql(&self) -> SqlPool {
        self.side.sql()
    }

    fn claims(&self) -> Arc<dyn ClaimTable> {
        self.side.claims()
    }

    fn windows(&self) -> Arc<dyn crate::store::windows::WindowTable> {
        self.side.windows()
    }

    fn webhooks(&self) -> Arc<dyn crate::store::webhooks::WebhookTable> {
        self.side.webhooks()
    }

    fn imports(&self) -> Arc<dyn crate::store::imports::ImportClaimTable> {
        self.side.imports()
    }

    /// Closes the projection database (the client has nothing to close).
    async fn close(&self) {
        self.side.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nothing listens on port 1: every operation must fail as "unavailable".
    fn unreachable() -> KurrentConfig {
        KurrentConfig {
            url: "esdb://127.0.0.1:1?tls=false&maxDiscoverAttempts=1&discoveryInterval=10".into(),
            namespace: "kl_unit".into(),
            projections_url: None,
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_makes_reads_and_appends_store_unavailable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = KurrentStore::open(&unreachable(), dir.path())
            .await
            .expect("the client connects lazily");
        assert!(dir.path().join(PROJECTIONS_FILE).exists());
        let within = std::time::Duration::from_secs(60);
        let head = tokio::time::timeout(within, store.newest_position())
            .await
            .expect("prompt");
        assert!(matches!(head, Err(Error::StoreUnavailable(_))), "{head:?}");
        let feed = tokio::time::timeout(within, store.feed(0, 10))
            .await
            .expect("prompt");
        assert!(matches!(feed, Err(Error::StoreUnavailable(_))), "{feed:?}");
        let event = SerializedEvent::new(
            "key_1".into(),
            1,
            "ApiKey".into(),
            "KeyDeleted".into(),
            "1.0".into(),
            serde_json::json!({}),
            serde_json::json!({}),
        );
        let appended = tokio::time::timeout(within, store.bulk_append(&[event]))
            .await
            .expect("prompt");
        assert!(
            matches!(appended, Err(Error::StoreUnavailable(_))),
            "{appended:?}"
        );
        store.close().await;
    }

    #[tokio::test]
    async fn a_malformed_connection_string_is_a_configuration_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = unreachable();
        config.url = "esdb://".into();
        assert!(matches!(
            KurrentStore::open(&config, dir.path()).await,
            Err(Error::Config(_))
        ));
        config.url = "esdb://127.0.0.1:2113".into();
        config.namespace = "has-dash".into();
        assert!(matches!(
            KurrentStore::open(&config, dir.path()).await,
            Err(Error::Config(_))
        ));
    }
}
