//! cqrs-es's `PersistedEventRepository` over KurrentDB, so that
//! `PersistedEventStore::new_event_store(repo)` runs commands exactly as over
//! the SQL stores. Snapshots are not supported (keyledger never snapshots).

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayFeed, ReplayStream, SerializedEvent,
    SerializedSnapshot,
};
use cqrs_es::Aggregate;
use kurrentdb::{
    AppendToStreamOptions, Client, ReadAllOptions, ReadStreamOptions, StreamPosition,
    SubscriptionFilter,
};
use serde_json::Value;

use crate::error::Error;
use crate::store::kurrent::codec::{expected_state, Decoded, Encoded, Stored};
use crate::store::kurrent::errors::{error_to_persistence, to_error};
use crate::store::kurrent::naming::Naming;

/// Events buffered between a replay reader and its consumer.
const REPLAY_QUEUE: usize = 200;

/// Reads and appends the streams of one namespace.
#[derive(Clone)]
pub struct KurrentEventRepository {
    client: Client,
    naming: Naming,
}

impl KurrentEventRepository {
    pub fn new(client: Client, naming: Naming) -> Self {
        Self { client, naming }
    }

    /// The events of a stream from revision `from` on (none when it does not exist).
    pub async fn read_stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        from: u64,
    ) -> Result<Vec<SerializedEvent>, Error> {
        let name = self.naming.stream(aggregate_type, aggregate_id);
        let options = ReadStreamOptions::default()
            .forwards()
            .position(StreamPosition::Position(from));
        let mut stream = self
            .client
            .read_stream(name.as_str(), &options)
            .await
            .map_err(to_error)?;
        let mut events = Vec::new();
        loop {
            let resolved = match stream.next().await {
                Ok(Some(r)) => r,
                Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => return Ok(events),
                Err(e) => return Err(to_error(e)),
            };
            if let Some(recorded) = resolved.event.as_ref() {
                if let Some(d) = Decoded::decode(&self.naming, Stored::of(recorded))? {
                    events.push(d.event);
                }
            }
        }
    }

    /// Appends events of one stream in one write, expecting the stream to end
    /// just before the first of them: a concurrent append makes it fail with
    /// `Error::Conflict` and writes nothing.
    pub async fn append(&self, events: &[SerializedEvent]) -> Result<(), Error> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let consecutive = events.iter().enumerate().all(|(i, e)| {
            e.aggregate_type == first.aggregate_type
                && e.aggregate_id == first.aggregate_id
                && e.sequence == first.sequence + i
        });
        if !consecutive {
            return Err(Error::internal(
                "an append must hold consecutive events of one stream",
            ));
        }
        let data = events
            .iter()
            .map(|e| Encoded::of(e).into_event_data())
            .collect::<Result<Vec<_>, Error>>()?;
        let name = self
            .naming
            .stream(&first.aggregate_type, &first.aggregate_id);
        let options =
            AppendToStreamOptions::default().stream_state(expected_state(first.sequence)?);
        self.client
            .append_to_stream(name.as_str(), &options, data)
            .await
            .map(|_| ())
            .map_err(to_error)
    }

    fn replay(&self, name: Replay) -> ReplayStream {
        let (feed, stream) = ReplayStream::new(REPLAY_QUEUE);
        let repo = self.clone();
        tokio::spawn(async move {
            repo.feed(name, feed).await;
        });
        stream
    }

    /// Pushes the events of a replay into `feed`, or the error that stopped it.
    async fn feed(&self, what: Replay, mut feed: ReplayFeed) {
        let opened = match &what {
            Replay::Stream(name) => {
                let options = ReadStreamOptions::default().forwards();
                self.client.read_stream(name.as_str(), &options).await
            }
            Replay::Type(prefix) => {
                let options = ReadAllOptions::default()
                    .forwards()
                    .filter(SubscriptionFilter::on_stream_name().add_prefix(prefix));
                self.client.read_all(&options).await
            }
        };
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                let _ = feed.push(Err(error_to_persistence(to_error(e)))).await;
                return;
            }
        };
        loop {
            let item = match stream.next().await {
                Ok(Some(resolved)) => {
                    let Some(recorded) = resolved.event.as_ref() else {
                        continue;
                    };
                    match Decoded::decode(&self.naming, Stored::of(recorded)) {
                        Ok(Some(d)) => Ok(d.event),
                        Ok(None) => continue,
                        Err(e) => Err(error_to_persistence(e)),
                    }
                }
                Ok(None) | Err(kurrentdb::Error::ResourceNotFound) => return,
                Err(e) => Err(error_to_persistence(to_error(e))),
            };
            let failed = item.is_err();
            if feed.push(item).await.is_err() || failed {
                return;
            }
        }
    }
}

/// What a replay reads.
enum Replay {
    /// One stream.
    Stream(String),
    /// Every stream with this prefix (one aggregate type), in `$all` order.
    Type(String),
}

impl PersistedEventRepository for KurrentEventRepository {
    async fn get_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.read_stream(A::TYPE, aggregate_id, 0)
            .await
            .map_err(error_to_persistence)
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        // Sequence > last_sequence  <=>  revision >= last_sequence.
        let from = u64::try_from(last_sequence)
            .map_err(|e| PersistenceError::UnknownError(Box::new(e)))?;
        self.read_stream(A::TYPE, aggregate_id, from)
            .await
            .map_err(error_to_persistence)
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        _aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        Ok(None)
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        if snapshot_update.is_some() {
            return Err(error_to_persistence(Error::internal(
                "the KurrentDB store keeps no snapshots; use new_event_store",
            )));
        }
        self.append(events).await.map_err(error_to_persistence)
    }

    async fn stream_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<ReplayStream, PersistenceError> {
        Ok(self.replay(Replay::Stream(self.naming.stream(A::TYPE, aggregate_id))))
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        Ok(self.replay(Replay::Type(self.naming.type_prefix(A::TYPE))))
    }
}
