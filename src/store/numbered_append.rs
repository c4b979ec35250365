//! Group commit's append on PostgreSQL: a batch of events, numbered under the
//! numbering lock, with its key-list and audit rows, in **one statement** that
//! runs as its own transaction (no `BEGIN`, no `COMMIT`: one round trip).
//!
//! Every giver of positions holds the numbering lock until it commits
//! (migrations/postgres/0008), so the lock's hold time bounds how many batches
//! commit per second. Each round trip under the lock is one the other worker
//! waits for; the earlier version sent seven (reserve, insert events, lock the
//! checkpoints, insert key-list rows, insert audit rows, move the checkpoints,
//! commit) and decoded the batch in between. Here everything that does not need
//! the positions (decoding, building the projection rows) happens before the
//! statement, with positions counted from 1; the statement adds the base it
//! reserved. The statement text never changes with the batch size, so it is
//! prepared once per connection (the arrays carry the rows).
//!
//! Each projection's rows are written only when its checkpoint stands exactly
//! at the reserved base (the `moved` step): otherwise other events are still
//! to be applied to it first, and the tailer applies this batch after them.
//! The two are decided apart because they can stand apart (a rebuild of one
//! of them swaps it in at the head it started from): a batch that moved one
//! checkpoint must write that projection's rows, or they would be skipped for
//! good. `projected` (both written) is what lets this node's index take the
//! batch from memory.
//! That test sits in the `SET`, not the `WHERE`: the statement's snapshot is
//! older than the lock it waits for, and under READ COMMITTED a `WHERE` on a
//! row another batch has moved meanwhile is judged on the old version (and
//! fails), while `SET` is computed on the newest version.

use std::sync::LazyLock;

use cqrs_es::persist::SerializedEvent;
use keyledger_domain::chain::{event_hash_text, StoredText};
use keyledger_domain::ApiKeyEvent;
use keyledger_projections::audit::AuditEntry;
use keyledger_projections::checkpoint;
use keyledger_projections::key_list::KeyRow;
use keyledger_projections::replay::{audit_entry, created_row};
use keyledger_projections::{KeyledgerEvent, RecordedEvent};
use sqlx::PgConnection;

use crate::error::Error;
use crate::store::feed::store_error;

/// What a numbered append wrote.
pub struct Appended {
    /// The highest position given before the append; its events follow it.
    pub after: i64,
    /// The last position it gave.
    pub through: i64,
    /// Its events as the feed will return them.
    pub events: Vec<RecordedEvent>,
    /// Whether the SQL projections took them in the same transaction.
    pub projected: bool,
}

/// The statement. `$1..$7` are the events' columns, `$8..$26` the key-list
/// rows', `$27..$38` the audit rows', `$39`/`$40` the checkpoint names, `$41`
/// the number of events. Positions in the arrays count from 1 and get the
/// reserved base added here.
static APPEND: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH base AS MATERIALIZED (SELECT keyledger_reserve_positions($41) AS after), \
         appended AS ( \
            INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                                event_version, payload, metadata, global_position) \
            SELECT e.aggregate_type, e.aggregate_id, e.sequence, e.event_type, \
                   e.event_version, e.payload::json, e.metadata::json, b.after + e.n \
              FROM base b, UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], \
                                  $5::text[], $6::text[], $7::text[]) WITH ORDINALITY \
                   AS e(aggregate_type, aggregate_id, sequence, event_type, \
                        event_version, payload, metadata, n)), \
         moved AS ( \
            UPDATE projection_checkpoints c \
               SET position = CASE WHEN c.position = b.after THEN b.after + $41 \
                                   ELSE c.position END \
              FROM base b \
             WHERE c.name IN ($39, $40) \
            RETURNING c.name, c.position = b.after + $41 AS ok), \
         projected AS (SELECT count(*) FILTER (WHERE ok) = 2 AS yes FROM moved), \
         keys AS ( \
            INSERT INTO key_list ({key_columns}) \
            SELECT {key_select} \
              FROM base b, \
                   UNNEST($8::text[], $9::text[], $10::text[], $11::text[], $12::text[], \
                          $13::text[], $14::text[], $15::text[], $16::text[], $17::int8[], \
                          $18::text[], $19::int8[], $20::int8[], $21::int8[], $22::int8[], \
                          $23::text[], $24::int8[], $25::text[], $26::text[]) \
                   AS k({key_columns}) \
             WHERE EXISTS (SELECT 1 FROM moved m WHERE m.name = $39 AND m.ok) \
            ON CONFLICT (id) DO NOTHING), \
         audited AS ( \
            INSERT INTO audit_log ({audit_columns}) \
            SELECT {audit_select} \
              FROM base b, \
                   UNNEST($27::int8[], $28::text[], $29::text[], $30::int8[], $31::text[], \
                          $32::int8[], $33::text[], $34::text[], $35::text[], $36::text[], \
                          $37::text[], $38::text[]) \
                   AS a({audit_columns}) \
             WHERE EXISTS (SELECT 1 FROM moved m WHERE m.name = $40 AND m.ok) \
            ON CONFLICT (position) DO NOTHING) \
         SELECT b.after, p.yes FROM base b, projected p",
        key_columns = KEY_COLUMNS.join(", "),
        key_select = select_list("k", KEY_COLUMNS, "created_position"),
        audit_columns = AUDIT_COLUMNS.join(", "),
        audit_select = select_list("a", AUDIT_COLUMNS, "position"),
    )
});

/// The key list's columns, in the order of the arrays bound for them.
const KEY_COLUMNS: &[&str] = &[
    "id",
    "tenant",
    "key_hash",
    "prefix",
    "name",
    "description",
    "environment",
    "permissions",
    "status",
    "created_at",
    "created_by",
    "updated_at",
    "expires_at",
    "last_used_at",
    "usage_count",
    "metadata",
    "created_position",
    "rotated_from",
    "rotated_to",
];

/// The audit log's columns, in the order of the arrays bound for them.
const AUDIT_COLUMNS: &[&str] = &[
    "position",
    "tenant",
    "key_id",
    "sequence",
    "event_type",
    "occurred_at",
    "actor",
    "request_id",
    "data",
    "client_addr",
    "user_agent",
    "event_hash",
];

/// `t.c1, t.c2, …`, with the relative `position` column moved by the base.
fn select_list(table: &str, columns: &[&str], position: &str) -> String {
    columns
        .iter()
        .map(|c| {
            if *c == position {
                format!("b.after + {table}.{c}")
            } else {
                format!("{table}.{c}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A create's event and projection rows, built before the batch is written
/// (on the request's task, not the worker's), with positions counted from 1.
pub struct Rows {
    aggregate_type: String,
    event_type: String,
    event_version: String,
    event: RecordedEvent,
    key: KeyRow,
    audit: AuditEntry,
    payload: String,
    metadata: String,
    permissions: String,
    key_metadata: Option<String>,
    audit_data: String,
}

impl Rows {
    /// Builds a create's rows from its stored form and the domain event it
    /// was serialised from (so nothing is decoded back from JSON, and each
    /// JSON text is written once: for the bind and for the chain hash).
    pub fn of(e: &SerializedEvent, domain: ApiKeyEvent) -> Result<Self, Error> {
        let sequence = i64::try_from(e.sequence).unwrap_or(i64::MAX);
        let payload = e.payload.to_string();
        let metadata = e.metadata.to_string();
        let hash = event_hash_text(StoredText {
            aggregate_type: &e.aggregate_type,
            aggregate_id: &e.aggregate_id,
            sequence,
            event_type: &e.event_type,
            event_version: &e.event_version,
            payload: &payload,
            metadata: &metadata,
        });
        let event = RecordedEvent::from_parts(
            0,
            e.aggregate_id.clone(),
            sequence,
            KeyledgerEvent::Key(domain),
            &e.metadata,
            hash,
        )?;
        let KeyledgerEvent::Key(ApiKeyEvent::KeyCreated(created)) = &event.event else {
            return Err(Error::Internal("group commit takes creates only".into()));
        };
        let key = created_row(&event, created);
        let audit = audit_entry(&event);
        Ok(Self {
            aggregate_type: e.aggregate_type.clone(),
            event_type: e.event_type.clone(),
            event_version: e.event_version.clone(),
            payload,
            metadata,
            permissions: json_text(&key.permissions),
            key_metadata: key.metadata.as_ref().map(json_text),
            audit_data: json_text(&audit.data),
            event,
            key,
            audit,
        })
    }
}

impl Rows {
    /// The create's event, with positions counted from 1 (0 before the batch).
    #[cfg(test)]
    pub fn event(&self) -> &RecordedEvent {
        &self.event
    }
}

/// Appends creates with their global positions, and their projection rows
/// when the projections stand right before them, in one statement. A row
/// whose stream already has that sequence fails the whole append with
/// `Conflict`.
pub async fn append_numbered(conn: &mut PgConnection, batch: &[&Rows]) -> Result<Appended, Error> {
    let count = i64::try_from(batch.len()).map_err(|e| Error::Internal(e.to_string()))?;
    let ordinals: Vec<i64> = (1..=count).collect();
    let col = |f: for<'a> fn(&'a Rows) -> &'a str| batch.iter().map(|r| f(r)).collect::<Vec<_>>();
    let opt =
        |f: for<'a> fn(&'a Rows) -> Option<&'a str>| batch.iter().map(|r| f(r)).collect::<Vec<_>>();
    let int = |f: fn(&Rows) -> i64| batch.iter().map(|r| f(r)).collect::<Vec<_>>();
    let opt_int = |f: fn(&Rows) -> Option<i64>| batch.iter().map(|r| f(r)).collect::<Vec<_>>();
    let (after, projected) = sqlx::query_as::<_, (i64, bool)>(&APPEND)
        // events
        .bind(col(|r| &r.aggregate_type))
        .bind(col(|r| &r.event.key_id))
        .bind(int(|r| r.event.sequence))
        .bind(col(|r| &r.event_type))
        .bind(col(|r| &r.event_version))
        .bind(col(|r| &r.payload))
        .bind(col(|r| &r.metadata))
        // key list
        .bind(col(|r| &r.key.id))
        .bind(col(|r| &r.key.tenant))
        .bind(col(|r| &r.key.key_hash))
        .bind(col(|r| &r.key.prefix))
        .bind(col(|r| &r.key.name))
        .bind(opt(|r| r.key.description.as_deref()))
        .bind(col(|r| &r.key.environment))
        .bind(col(|r| &r.permissions))
        .bind(col(|r| &r.key.status))
        .bind(int(|r| r.key.created_at.timestamp_millis()))
        .bind(col(|r| &r.key.created_by))
        .bind(int(|r| r.key.updated_at.timestamp_millis()))
        .bind(opt_int(|r| r.key.expires_at.map(|t| t.timestamp_millis())))
        .bind(opt_int(|r| {
            r.key.last_used_at.map(|t| t.timestamp_millis())
        }))
        .bind(int(|r| r.key.usage_count))
        .bind(opt(|r| r.key_metadata.as_deref()))
        .bind(&ordinals)
        .bind(opt(|r| r.key.rotated_from.as_deref()))
        .bind(opt(|r| r.key.rotated_to.as_deref()))
        // audit log
        .bind(&ordinals)
        .bind(col(|r| &r.audit.tenant))
        .bind(col(|r| &r.audit.key_id))
        .bind(int(|r| r.audit.sequence))
        .bind(col(|r| &r.audit.event_type))
        .bind(int(|r| r.audit.occurred_at.timestamp_millis()))
        .bind(opt(|r| r.audit.actor.as_deref()))
        .bind(opt(|r| r.audit.request_id.as_deref()))
        .bind(col(|r| &r.audit_data))
        .bind(opt(|r| r.audit.client_addr.as_deref()))
        .bind(opt(|r| r.audit.user_agent.as_deref()))
        .bind(opt(|r| r.audit.event_hash.as_deref()))
        .bind(checkpoint::KEY_LIST)
        .bind(checkpoint::AUDIT_LOG)
        .bind(count)
        .fetch_one(conn)
        .await
        .map_err(append_error)?;
    let events = batch
        .iter()
        .zip(after + 1..)
        .map(|(r, position)| RecordedEvent {
            position,
            ..r.event.clone()
        })
        .collect();
    Ok(Appended {
        after,
        through: after + count,
        events,
        projected,
    })
}

fn json_text(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".to_string())
}

fn append_error(e: sqlx::Error) -> Error {
    match e.as_database_error().and_then(|d| d.code()) {
        Some(code) if code == "23505" => Error::Conflict,
        _ => store_error(e),
    }
}
