//! Appends to a key's credit ledger and to an owner's limits: read the
//! stream's newest event, decide the next events from the state it carries,
//! append them at the next sequence. Two writers racing on one stream are
//! decided by the store's optimistic concurrency (the loser reads again), so
//! no two reservations can take the same credits.

use cqrs_es::Aggregate;
use keyledger_domain::chain::{event_hash, StoredFields, GENESIS, PREV_HASH};
use keyledger_domain::{
    owner_stream_id, KeyId, KeyUsage, KeyUsageEvent, Ledger, OwnerEvent, OwnerLimits, RateLimit,
    RawEvent,
};

use super::{backoff, serialize, EventMetadata, EventStore, Stream, CONFLICT_RETRIES};
use crate::error::Error;

/// What an append to a ledger left.
#[derive(Debug, Clone)]
pub struct LedgerAppend {
    /// The ledger after the appended events (or as it stood, if none).
    pub ledger: Option<Ledger>,
    /// The usage-stream sequence of that state.
    pub sequence: i64,
    /// What was appended (nothing when `build` asked for nothing).
    pub events: Vec<KeyUsageEvent>,
}

/// The newest event of a stream: its sequence and chain hash.
pub(super) struct Head {
    pub sequence: usize,
    pub hash: String,
    pub newest: Option<RawEvent>,
}

impl EventStore {
    pub(super) async fn stream_head(&self, stream: Stream, key: &KeyId) -> Result<Head, Error> {
        let last = self.backend.last_sequence(stream, key).await?;
        if last == 0 {
            return Ok(Head {
                sequence: 0,
                hash: GENESIS.to_string(),
                newest: None,
            });
        }
        let newest = self
            .backend
            .event_at(stream, key, last)
            .await?
            .ok_or_else(|| Error::internal(format!("event {key}#{last} vanished")))?;
        Ok(Head {
            sequence: last,
            hash: newest.chain_hash(),
            newest: Some(newest),
        })
    }

    /// Appends the events `build` makes of the key's ledger as it stands
    /// (`opening` when no event of its usage stream carries one yet: the
    /// create's credits). `build` may be run again when another writer
    /// appended first; it returns no event to append nothing.
    pub async fn append_ledger<F>(
        &self,
        key_id: &KeyId,
        opening: Option<&Ledger>,
        metadata: &EventMetadata,
        build: F,
    ) -> Result<LedgerAppend, Error>
    where
        F: Fn(Option<&Ledger>) -> Result<Vec<KeyUsageEvent>, Error>,
    {
        for attempt in 0..CONFLICT_RETRIES {
            let head = self.stream_head(Stream::Usage, key_id).await?;
            let before = match &head.newest {
                Some(raw) => ledger_of(raw)?,
                None => None,
            }
            .or_else(|| opening.cloned());
            let events = build(before.as_ref())?;
            let Some(last) = events.last() else {
                return Ok(LedgerAppend {
                    ledger: before,
                    sequence: super::sequence_i64(head.sequence)?,
                    events,
                });
            };
            let after = last.ledger().cloned().or(before);
            let mut serialized = Vec::with_capacity(events.len());
            let mut prev = head.hash.clone();
            for (i, event) in events.iter().enumerate() {
                let mut meta = metadata.clone();
                meta.insert(PREV_HASH.to_string(), prev);
                let stored =
                    serialize(KeyUsage::TYPE, key_id, head.sequence + 1 + i, event, &meta)?;
                prev = chain_hash_of(&stored)?;
                serialized.push(stored);
            }
            match self.backend.append(Stream::Usage, &serialized).await {
                Ok(()) => {
                    self.sequence_after_commit().await;
                    return Ok(LedgerAppend {
                        ledger: after,
                        sequence: super::sequence_i64(head.sequence + events.len())?,
                        events,
                    });
                }
                Err(Error::Conflict) => backoff(attempt).await,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict)
    }

    /// The ledger a key's usage stream holds now (None: no event carries
    /// one), with the sequence it is at.
    pub async fn ledger(&self, key_id: &KeyId) -> Result<(Option<Ledger>, i64), Error> {
        let head = self.stream_head(Stream::Usage, key_id).await?;
        let ledger = match &head.newest {
            Some(raw) => ledger_of(raw)?,
            None => None,
        };
        Ok((ledger, super::sequence_i64(head.sequence)?))
    }

    /// Replaces a tenant's owner's rate limits; returns the event's sequence.
    pub async fn set_owner_limits(
        &self,
        event: OwnerEvent,
        metadata: &EventMetadata,
    ) -> Result<i64, Error> {
        let OwnerEvent::OwnerRateLimitsSet(set) = &event;
        let id = KeyId::new(owner_stream_id(&set.tenant, &set.owner));
        self.append_whole(Stream::Owner, OwnerLimits::TYPE, &id, &event, metadata)
            .await
    }

    /// Appends an event that carries its stream's whole state (an owner's
    /// limits, a tenant's policy) at the stream's next sequence, whatever
    /// came before: a writer that appended first only moves it one on.
    async fn append_whole<E: cqrs_es::DomainEvent>(
        &self,
        stream: Stream,
        aggregate_type: &str,
        id: &KeyId,
        event: &E,
        metadata: &EventMetadata,
    ) -> Result<i64, Error> {
        for attempt in 0..CONFLICT_RETRIES {
            let head = self.stream_head(stream, id).await?;
            let mut meta = metadata.clone();
            meta.insert(PREV_HASH.to_string(), head.hash);
            let stored = serialize(aggregate_type, id, head.sequence + 1, event, &meta)?;
            match self.backend.append(stream, &[stored]).await {
                Ok(()) => {
                    self.sequence_after_commit().await;
                    return super::sequence_i64(head.sequence + 1);
                }
                Err(Error::Conflict) => backoff(attempt).await,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict)
    }

    /// Replaces a tenant's policy.
    pub async fn set_policy(
        &self,
        event: &keyledger_domain::policy::PolicyEvent,
        metadata: &EventMetadata,
    ) -> Result<i64, Error> {
        let keyledger_domain::policy::PolicyEvent::TenantPolicySet(set) = event;
        let id = KeyId::new(keyledger_domain::policy::policy_stream_id(&set.tenant));
        self.append_whole(
            Stream::Policy,
            keyledger_domain::policy::POLICY_AGGREGATE_TYPE,
            &id,
            event,
            metadata,
        )
        .await
    }

    /// A tenant's policy as its newest event set it (the default without one).
    pub async fn policy(&self, tenant: &str) -> Result<keyledger_domain::policy::Policy, Error> {
        let id = KeyId::new(keyledger_domain::policy::policy_stream_id(tenant));
        let head = self.stream_head(Stream::Policy, &id).await?;
        Ok(match head.newest {
            Some(raw) => decode::<keyledger_domain::policy::PolicyEvent>(&raw)?
                .policy()
                .clone(),
            None => keyledger_domain::policy::Policy::default(),
        })
    }

    /// An owner's rate limits as its newest event set them, with that
    /// event's sequence (0 and none when it has no event).
    pub async fn owner_limits(&self, owner_id: &str) -> Result<(i64, Vec<RateLimit>), Error> {
        let head = self
            .stream_head(Stream::Owner, &KeyId::new(owner_id))
            .await?;
        let Some(raw) = head.newest else {
            return Ok((0, Vec::new()));
        };
        let event: OwnerEvent = decode(&raw)?;
        let OwnerEvent::OwnerRateLimitsSet(set) = event;
        Ok((super::sequence_i64(head.sequence)?, set.ratelimits))
    }
}

/// The ledger a stored usage event carries.
pub(crate) fn ledger_of(raw: &RawEvent) -> Result<Option<Ledger>, Error> {
    let event: KeyUsageEvent = decode(raw)?;
    Ok(event.ledger().cloned())
}

pub(super) fn decode<T: serde::de::DeserializeOwned>(raw: &RawEvent) -> Result<T, Error> {
    serde_json::from_value(raw.payload.clone()).map_err(|e| {
        Error::internal_from(
            format!(
                "event {}#{} ({}) does not decode",
                raw.aggregate_id, raw.sequence, raw.event_type
            ),
            e,
        )
    })
}

/// The chain hash of an event about to be stored (the next one links to it).
fn chain_hash_of(stored: &cqrs_es::persist::SerializedEvent) -> Result<String, Error> {
    Ok(event_hash(StoredFields {
        aggregate_type: &stored.aggregate_type,
        aggregate_id: &stored.aggregate_id,
        sequence: super::sequence_i64(stored.sequence)?,
        event_type: &stored.event_type,
        event_version: &stored.event_version,
        payload: &stored.payload,
        metadata: &stored.metadata,
    }))
}
