//! `keyledger-bench seed`: writes N keys and M events straight into the event
//! store (bypassing the HTTP API and the aggregate, which is fine for load data),
//! with valid chain links, so that rebuilds, start-up and verification can be
//! measured at scale. Projections are not touched: run `projections rebuild`
//! (or start `serve`, which catches up) afterwards.

use std::collections::HashMap;
use std::io::Write;

use chrono::Utc;
use cqrs_es::persist::SerializedEvent;
use cqrs_es::DomainEvent;
use keyledger::store::EventStore;
use keyledger::Error;
use keyledger_domain::chain::{event_hash, StoredFields, GENESIS, PREV_HASH};
use keyledger_domain::{
    ApiKeyEvent, Credits, Environment, KeyCreated, KeyDeactivated, KeyPrefix, KeyReactivated,
    KeyUsageEvent, KeyUsageRecorded, Permissions, RateLimit, RawKey, API_KEY_AGGREGATE_TYPE,
    KEY_USAGE_AGGREGATE_TYPE,
};
use keyledger_projections::event::meta_keys;
use serde_json::{json, Value};

/// Events handed to the store at a time (it writes them in transactions of
/// its own size).
const ROWS_PER_TRANSACTION: usize = 20_000;

#[derive(Default)]
struct Stream {
    sequence: i64,
    last_hash: Option<String>,
}

impl Stream {
    fn next(
        &mut self,
        aggregate_type: &'static str,
        aggregate_id: &str,
        event_type: String,
        event_version: String,
        payload: Value,
        mut metadata: Value,
    ) -> Result<SerializedEvent, Error> {
        self.sequence += 1;
        let prev = self
            .last_hash
            .clone()
            .unwrap_or_else(|| GENESIS.to_string());
        if let Value::Object(m) = &mut metadata {
            m.insert(PREV_HASH.to_string(), Value::String(prev));
        }
        let hash = event_hash(StoredFields {
            aggregate_type,
            aggregate_id,
            sequence: self.sequence,
            event_type: &event_type,
            event_version: &event_version,
            payload: &payload,
            metadata: &metadata,
        });
        self.last_hash = Some(hash);
        let sequence = usize::try_from(self.sequence)
            .map_err(|e| Error::internal_from("a seeded sequence", e))?;
        Ok(SerializedEvent::new(
            aggregate_id.to_string(),
            sequence,
            aggregate_type.to_string(),
            event_type,
            event_version,
            payload,
            metadata,
        ))
    }
}

/// What was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seeded {
    pub keys: u64,
    pub events: u64,
}

/// Writes `keys` keys of `tenant` and `events` events in all (at least one per
/// key: its creation; the rest are deactivations, reactivations and usage
/// flushes spread over the keys). Raw keys go to `keys_out`, one per line.
/// `limited` keys have a rate limit and credits that never run out.
pub async fn seed(
    store: &EventStore,
    tenant: &str,
    keys: u64,
    events: u64,
    limited: bool,
    mut keys_out: Option<&mut dyn Write>,
) -> Result<Seeded, Error> {
    let keys = keys.max(1);
    let events = events.max(keys);
    let prefix = KeyPrefix::default();
    let mut rng = rand::rng();
    let now = Utc::now();
    let meta = json!({
        meta_keys::ACTOR: "bench-seed",
        meta_keys::TENANT: tenant,
        meta_keys::OCCURRED_AT: now.to_rfc3339(),
    });
    let mut ids = Vec::with_capacity(usize::try_from(keys).unwrap_or(0));
    let mut key_streams: HashMap<String, (Stream, bool)> = HashMap::new();
    let mut usage_streams: HashMap<String, Stream> = HashMap::new();
    let mut batch: Vec<SerializedEvent> = Vec::with_capacity(ROWS_PER_TRANSACTION);
    let mut written = 0u64;
    for n in 0..events {
        let row = if n < keys {
            let raw = RawKey::generate(&prefix, Environment::Live, &mut rng);
            let parsed = raw.parsed();
            if let Some(out) = keys_out.as_deref_mut() {
                writeln!(out, "{}", raw.expose())
                    .map_err(|e| Error::internal_from("writing keys", e))?;
            }
            let id = format!("key_{}", uuid::Uuid::now_v7().simple());
            let event = ApiKeyEvent::KeyCreated(KeyCreated {
                tenant: tenant.to_string(),
                key_hash: parsed.hash(),
                display_prefix: parsed.display_prefix(),
                name: format!("seed-{n}"),
                description: None,
                environment: Environment::Live,
                permissions: Permissions::parse(vec!["keys:read".into()])?,
                expires_at: None,
                metadata: None,
                created_by: "bench-seed".into(),
                created_at: now,
                rotated_from: None,
                owner: None,
                ratelimits: if limited {
                    vec![RateLimit {
                        name: "per-minute".into(),
                        limit: 1_000_000_000,
                        window_ms: 60_000,
                    }]
                } else {
                    Vec::new()
                },
                credits: limited.then_some(Credits {
                    remaining: keyledger_domain::limits::MAX_CREDITS,
                    refill: None,
                }),
                allowed_ips: Default::default(),
                imported: false,
            });
            ids.push(id.clone());
            let (stream, _) = key_streams
                .entry(id.clone())
                .or_insert((Stream::default(), true));
            stream.next(
                API_KEY_AGGREGATE_TYPE,
                &id,
                event.event_type(),
                event.event_version(),
                serde_json::to_value(&event)
                    .map_err(|e| Error::internal_from("serialising an event", e))?,
                meta.clone(),
            )?
        } else {
            let i = usize::try_from((n - keys) % keys).unwrap_or(0);
            let id = ids[i].clone();
            if n % 2 == 0 {
                let event = KeyUsageEvent::KeyUsageRecorded(KeyUsageRecorded {
                    tenant: tenant.to_string(),
                    count: 1 + n % 7,
                    last_used_at: now,
                    spent: 0,
                    settled: None,
                    ledger: None,
                    refused: Default::default(),
                });
                usage_streams.entry(id.clone()).or_default().next(
                    KEY_USAGE_AGGREGATE_TYPE,
                    &id,
                    event.event_type(),
                    event.event_version(),
                    serde_json::to_value(&event)
                        .map_err(|e| Error::internal_from("serialising an event", e))?,
                    meta.clone(),
                )?
            } else {
                let (stream, active) = key_streams
                    .get_mut(&id)
                    .ok_or_else(|| Error::internal("seeded key vanished"))?;
                let event = if *active {
                    ApiKeyEvent::KeyDeactivated(KeyDeactivated {
                        reason: Some("seeded".into()),
                        at: now,
                    })
                } else {
                    ApiKeyEvent::KeyReactivated(KeyReactivated { at: now })
                };
                *active = !*active;
                stream.next(
                    API_KEY_AGGREGATE_TYPE,
                    &id,
                    event.event_type(),
                    event.event_version(),
                    serde_json::to_value(&event)
                        .map_err(|e| Error::internal_from("serialising an event", e))?,
                    meta.clone(),
                )?
            }
        };
        batch.push(row);
        if batch.len() == ROWS_PER_TRANSACTION {
            written += write(store, &batch).await?;
            batch.clear();
        }
    }
    written += write(store, &batch).await?;
    Ok(Seeded {
        keys,
        events: written,
    })
}

/// Writes a batch of seeded events; returns how many.
async fn write(store: &EventStore, rows: &[SerializedEvent]) -> Result<u64, Error> {
    if rows.is_empty() {
        return Ok(0);
    }
    store.bulk_append(rows).await?;
    u64::try_from(rows.len()).map_err(|e| Error::internal_from("a batch's size", e))
}
