//! How cqrs-es's events are stored in KurrentDB, and how KurrentDB's numbers map
//! to ours. Pure functions, unit-tested without a server.
//!
//! - Sequence and revision: cqrs-es numbers a stream's events from 1, KurrentDB
//!   from 0, so sequence `s` is revision `s - 1`. Appending event `s` expects the
//!   stream to be at revision `s - 2`, or not to exist when `s` is 1.
//! - Event: the KurrentDB event type is the cqrs-es event type, the data is the
//!   JSON payload, and the custom metadata is `{"event_version": .., "metadata":
//!   {..}}` (our metadata map, `prev_hash` included). Aggregate type and id are in
//!   the stream name (see `naming`).
//! - Feed position and checkpoint: the projections order the feed by one `i64`.
//!   We use the event's prepare position in `$all` (unique per event). Every
//!   keyledger append writes a single event, and the commit position of a
//!   single-event append equals its prepare position, so reading `$all` from
//!   `Position { commit: p, prepare: p }` resumes exactly after checkpoint `p`.
//!   For a multi-event append (commit < prepare after its first event) the feed
//!   reader never ends a batch inside the append (`feed::read`), so a checkpoint
//!   is always the last event of an append and resuming from it is still exact.

use cqrs_es::persist::SerializedEvent;
use keyledger_domain::RawEvent;
use kurrentdb::{EventData, Position, StreamPosition, StreamState};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::Error;
use crate::store::kurrent::naming::Naming;

/// The revision of event `sequence` (1-based) of a stream.
pub fn revision_of(sequence: usize) -> Result<u64, Error> {
    let s =
        u64::try_from(sequence).map_err(|e| Error::internal_from("a sequence beyond u64", e))?;
    s.checked_sub(1)
        .ok_or_else(|| Error::internal("event sequence 0 does not exist"))
}

/// The sequence (1-based) of the event at `revision`.
pub fn sequence_of(revision: u64) -> Result<usize, Error> {
    revision
        .checked_add(1)
        .and_then(|s| usize::try_from(s).ok())
        .ok_or_else(|| Error::internal(format!("stream revision {revision} out of range")))
}

/// The state the stream must be in for event `first_sequence` to be appended.
pub fn expected_state(first_sequence: usize) -> Result<StreamState, Error> {
    match first_sequence {
        0 => Err(Error::internal("event sequence 0 does not exist")),
        1 => Ok(StreamState::NoStream),
        s => Ok(StreamState::StreamRevision(revision_of(s - 1)?)),
    }
}

/// The feed position (and checkpoint) of an event at `position` in `$all`.
pub fn feed_position(position: Position) -> Result<i64, Error> {
    i64::try_from(position.prepare)
        .map_err(|_| Error::internal(format!("$all position {position} out of range")))
}

/// Where to read `$all` from to get the events after checkpoint `after`.
pub fn read_from(after: i64) -> StreamPosition<Position> {
    match u64::try_from(after) {
        Ok(p) if p > 0 => StreamPosition::Position(Position {
            commit: p,
            prepare: p,
        }),
        _ => StreamPosition::Start,
    }
}

/// Our custom metadata of a KurrentDB event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMetadata {
    pub event_version: String,
    pub metadata: Value,
}

/// An event as it is sent to KurrentDB.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    pub event_type: String,
    pub data: Value,
    pub metadata: StoredMetadata,
}

impl Encoded {
    /// The event of a cqrs-es stream.
    pub fn of(event: &SerializedEvent) -> Self {
        Self {
            event_type: event.event_type.clone(),
            data: event.payload.clone(),
            metadata: StoredMetadata {
                event_version: event.event_version.clone(),
                metadata: event.metadata.clone(),
            },
        }
    }

    /// The client's form: JSON data and JSON custom metadata, a fresh id.
    pub fn into_event_data(self) -> Result<EventData, Error> {
        let encode = |e: serde_json::Error| Error::internal_from("encoding an event", e);
        EventData::json(&self.event_type, &self.data)
            .map_err(encode)?
            .id(uuid::Uuid::now_v7())
            .metadata_as_json(&self.metadata)
            .map_err(encode)
    }
}

/// The fields of a stored KurrentDB event we read back.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    pub stream: &'a str,
    pub revision: u64,
    pub event_type: &'a str,
    pub data: &'a [u8],
    pub custom_metadata: &'a [u8],
    pub position: Position,
}

impl<'a> Stored<'a> {
    pub fn of(e: &'a kurrentdb::RecordedEvent) -> Self {
        Self {
            stream: e.stream_id(),
            revision: e.revision,
            event_type: &e.event_type,
            data: &e.data,
            custom_metadata: &e.custom_metadata,
            position: e.position,
        }
    }
}

/// A stored event of one of our streams, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub event: SerializedEvent,
    pub position: Position,
}

impl Decoded {
    /// Decodes an event; `Ok(None)` when its stream is not one of ours.
    pub fn decode(naming: &Naming, stored: Stored<'_>) -> Result<Option<Self>, Error> {
        let Some((aggregate_type, aggregate_id)) = naming.parse(stored.stream) else {
            return Ok(None);
        };
        let corrupt = |what: &str, e: serde_json::Error| {
            Error::internal(format!(
                "event {}@{} cannot be read: {what}: {e}",
                stored.stream, stored.revision
            ))
        };
        // No depth limit on what is read back (`json::parse_stored`): an event
        // an older version let through must not stop the log.
        let payload: Value = std::str::from_utf8(stored.data)
            .map_err(|e| {
                Error::internal(format!(
                    "event {}@{} cannot be read: data: {e}",
                    stored.stream, stored.revision
                ))
            })
            .and_then(|text| {
                keyledger_domain::json::parse_stored(text).map_err(|e| corrupt("data", e))
            })?;
        let meta: StoredMetadata =
            serde_json::from_slice(stored.custom_metadata).map_err(|e| corrupt("metadata", e))?;
        Ok(Some(Self {
            event: SerializedEvent::new(
                aggregate_id.to_string(),
                sequence_of(stored.revision)?,
                aggregate_type.to_string(),
                stored.event_type.to_string(),
                meta.event_version,
                payload,
                meta.metadata,
            ),
            position: stored.position,
        }))
    }

    /// The row of the global feed.
    pub fn into_raw(self) -> Result<RawEvent, Error> {
        let position = feed_position(self.position)?;
        let sequence = i64::try_from(self.event.sequence)
            .map_err(|e| Error::internal_from("a sequence beyond i64", e))?;
        Ok(RawEvent {
            position,
            aggregate_type: self.event.aggregate_type,
            aggregate_id: self.event.aggregate_id,
            sequence,
            event_type: self.event.event_type,
            event_version: self.event.event_version,
            payload: self.event.payload,
            metadata: self.event.metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample(sequence: usize) -> SerializedEvent {
        SerializedEvent::new(
            "key_0190abc".into(),
            sequence,
            "ApiKey".into(),
            "KeyDeactivated".into(),
            "1.0".into(),
            json!({"KeyDeactivated": {"reason": "leaked", "at": "2026-01-02T03:04:05Z"}}),
            json!({
                "tenant": "acme",
                "actor": "alice",
                "prev_hash": "ab".repeat(32),
                "occurred_at": "2026-01-02T03:04:05Z"
            }),
        )
    }

    #[test]
    fn sequence_s_is_revision_s_minus_one() {
        assert_eq!(revision_of(1).expect("rev"), 0);
        assert_eq!(revision_of(42).expect("rev"), 41);
        assert_eq!(sequence_of(0).expect("seq"), 1);
        assert_eq!(sequence_of(41).expect("seq"), 42);
        assert!(revision_of(0).is_err());
        assert!(sequence_of(u64::MAX).is_err());
        for s in 1..100 {
            assert_eq!(sequence_of(revision_of(s).expect("rev")).expect("seq"), s);
        }
    }

    #[test]
    fn the_first_event_expects_no_stream_and_later_ones_the_previous_revision() {
        assert_eq!(expected_state(1).expect("state"), StreamState::NoStream);
        assert_eq!(
            expected_state(2).expect("state"),
            StreamState::StreamRevision(0)
        );
        assert_eq!(
            expected_state(7).expect("state"),
            StreamState::StreamRevision(5)
        );
        assert!(expected_state(0).is_err());
    }

    #[test]
    fn an_event_round_trips_through_the_stored_fields() {
        let naming = Naming::new("kl_test").expect("namespace");
        let original = sample(3);
        let encoded = Encoded::of(&original);
        assert_eq!(encoded.event_type, "KeyDeactivated");
        assert_eq!(encoded.metadata.event_version, "1.0");
        assert_eq!(encoded.metadata.metadata["prev_hash"], "ab".repeat(32));
        // What the client sends: the bytes `EventData::json` and
        // `metadata_as_json` produce.
        let data = serde_json::to_vec(&encoded.data).expect("data");
        let metadata = serde_json::to_vec(&encoded.metadata).expect("metadata");
        encoded.clone().into_event_data().expect("event data");
        let stream = naming.stream(&original.aggregate_type, &original.aggregate_id);
        let position = Position {
            commit: 4096,
            prepare: 4096,
        };
        let decoded = Decoded::decode(
            &naming,
            Stored {
                stream: &stream,
                revision: revision_of(3).expect("rev"),
                event_type: &encoded.event_type,
                data: &data,
                custom_metadata: &metadata,
                position,
            },
        )
        .expect("decode")
        .expect("one of ours");
        assert_eq!(decoded.event, original);
        assert_eq!(decoded.position, position);
        let raw = decoded.into_raw().expect("raw");
        assert_eq!(raw.position, 4096);
        assert_eq!(raw.sequence, 3);
        assert_eq!(raw.aggregate_type, "ApiKey");
        assert_eq!(raw.aggregate_id, "key_0190abc");
        assert_eq!(raw.metadata, original.metadata);
        assert_eq!(raw.payload, original.payload);
        assert_eq!(raw.event_version, "1.0");
    }

    #[test]
    fn the_chain_hash_survives_the_round_trip() {
        let naming = Naming::default();
        let original = sample(1);
        let encoded = Encoded::of(&original);
        let data = serde_json::to_vec(&encoded.data).expect("data");
        let metadata = serde_json::to_vec(&encoded.metadata).expect("metadata");
        let stream = naming.stream("ApiKey", "key_0190abc");
        let raw = Decoded::decode(
            &naming,
            Stored {
                stream: &stream,
                revision: 0,
                event_type: "KeyDeactivated",
                data: &data,
                custom_metadata: &metadata,
                position: Position {
                    commit: 1,
                    prepare: 1,
                },
            },
        )
        .expect("decode")
        .expect("ours")
        .into_raw()
        .expect("raw");
        let direct = RawEvent {
            position: 1,
            aggregate_type: original.aggregate_type.clone(),
            aggregate_id: original.aggregate_id.clone(),
            sequence: 1,
            event_type: original.event_type.clone(),
            event_version: original.event_version.clone(),
            payload: original.payload.clone(),
            metadata: original.metadata.clone(),
        };
        assert_eq!(raw.chain_hash(), direct.chain_hash());
    }

    #[test]
    fn events_of_other_streams_are_skipped_and_garbage_is_an_error() {
        let naming = Naming::default();
        let stored = |stream: &'static str, data: &'static [u8], meta: &'static [u8]| Stored {
            stream,
            revision: 0,
            event_type: "X",
            data,
            custom_metadata: meta,
            position: Position::start(),
        };
        assert_eq!(
            Decoded::decode(&naming, stored("$stats-node", b"{}", b"{}")).expect("skip"),
            None
        );
        assert!(
            Decoded::decode(&naming, stored("keyledger-ApiKey-k", b"not json", b"{}")).is_err()
        );
        assert!(Decoded::decode(&naming, stored("keyledger-ApiKey-k", b"{}", b"{}")).is_err());
        assert!(Decoded::decode(
            &naming,
            stored(
                "keyledger-ApiKey-k",
                b"{}",
                br#"{"event_version":"1.0","metadata":{}}"#
            )
        )
        .expect("decodes")
        .is_some());
    }

    #[test]
    fn the_checkpoint_is_the_prepare_position_and_resumes_there() {
        let p = Position {
            commit: 987_654_321,
            prepare: 987_654_321,
        };
        let checkpoint = feed_position(p).expect("fits");
        assert_eq!(checkpoint, 987_654_321);
        assert_eq!(read_from(checkpoint), StreamPosition::Position(p));
        assert_eq!(read_from(0), StreamPosition::Start);
        assert_eq!(read_from(-1), StreamPosition::Start);
        // Later events of a multi-event append keep their own prepare position.
        let later = Position {
            commit: 100,
            prepare: 180,
        };
        assert_eq!(feed_position(later).expect("fits"), 180);
        assert!(feed_position(Position::end()).is_err());
    }
}
