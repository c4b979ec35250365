//! The events table of the SQL stores, read with our own SQL: the global feed
//! (every event of every key in commit order; the cqrs-es repositories only
//! order by per-key sequence), one stream, one event, the newest of several
//! streams, and bulk appends. The statements' text is the same on both
//! engines; [`SqlEvents`] runs them on either.

use cqrs_es::persist::SerializedEvent;
use keyledger_domain::{json, RawEvent};
use keyledger_sql::Engine;
use sqlx::{Pool, Row};

use crate::error::Error;
use crate::store::errors::sqlx_unavailable;

// Payload and metadata are read as text and parsed by `json::parse_stored`
// (no depth limit), never by sqlx's JSON decoding, which refuses what serde_json's
// parser refuses: one event older versions let through would stop every reader.
const FEED_SQL: &str = "SELECT global_position, aggregate_type, aggregate_id, sequence, \
     event_type, event_version, CAST(payload AS TEXT), CAST(metadata AS TEXT) FROM events \
     WHERE global_position > $1 ORDER BY global_position LIMIT $2";

// A stream's events are read before the sequencer may have numbered the newest
// (PostgreSQL gives positions after commit); the chain hash does not use it.
const EVENT_AT_SQL: &str =
    "SELECT COALESCE(global_position, 0), aggregate_type, aggregate_id, sequence, \
     event_type, event_version, CAST(payload AS TEXT), CAST(metadata AS TEXT) FROM events \
     WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3";

// One stream's events after a sequence, for loading an aggregate (see
// `store::readable`).
const STREAM_SQL: &str =
    "SELECT COALESCE(global_position, 0), aggregate_type, aggregate_id, sequence, \
     event_type, event_version, CAST(payload AS TEXT), CAST(metadata AS TEXT) FROM events \
     WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 ORDER BY sequence";

const HEAD_SQL: &str = "SELECT MAX(global_position) FROM events";

/// Maps a store read error: unreachable -> 503, anything else -> internal.
pub fn store_error(e: sqlx::Error) -> Error {
    if sqlx_unavailable(&e) {
        Error::StoreUnavailable(Box::new(e))
    } else {
        Error::internal_from("event store", e)
    }
}

fn to_raw<R: Row>(r: R) -> Result<RawEvent, Error>
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let text = |i: usize| r.try_get::<String, _>(i).map_err(store_error);
    let (payload, metadata) = (text(6)?, text(7)?);
    let mut raw = RawEvent {
        position: r.try_get(0).map_err(store_error)?,
        aggregate_type: text(1)?,
        aggregate_id: text(2)?,
        sequence: r.try_get(3).map_err(store_error)?,
        event_type: text(4)?,
        event_version: text(5)?,
        payload: serde_json::Value::Null,
        metadata: serde_json::Value::Null,
    };
    let parse = |column: &'static str, text: &str| {
        json::parse_stored(text).map_err(|source| Error::UnreadableEvent {
            aggregate_id: raw.aggregate_id.clone(),
            sequence: raw.sequence,
            column,
            source,
        })
    };
    let (payload, metadata) = (parse("payload", &payload)?, parse("metadata", &metadata)?);
    raw.payload = payload;
    raw.metadata = metadata;
    Ok(raw)
}

const LAST_SEQUENCE_SQL: &str =
    "SELECT MAX(sequence) FROM events WHERE aggregate_type = $1 AND aggregate_id = $2";

/// The events table of one SQL database.
#[derive(Debug)]
pub struct SqlEvents<DB: sqlx::Database> {
    pool: Pool<DB>,
}

impl<DB: sqlx::Database> Clone for SqlEvents<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
        }
    }
}

impl<DB> SqlEvents<DB>
where
    DB: Engine + sqlx::database::HasStatementCache,
    for<'c> &'c Pool<DB>: sqlx::Executor<'c, Database = DB>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    usize: sqlx::ColumnIndex<DB::Row>,
    str: sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB>,
    String: for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    Option<i64>: for<'r> sqlx::Decode<'r, DB>,
    serde_json::Value: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
{
    pub fn new(pool: Pool<DB>) -> Self {
        Self { pool }
    }

    /// Events after `after` in commit order, at most `limit`.
    pub async fn read(&self, after: i64, limit: i64) -> Result<Vec<RawEvent>, Error> {
        let rows = sqlx::query(FEED_SQL)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        rows.into_iter().map(to_raw).collect()
    }

    /// One event of a stream, by sequence.
    pub async fn event_at(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> Result<Option<RawEvent>, Error> {
        let row = sqlx::query(EVENT_AT_SQL)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(sequence)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        row.map(to_raw).transpose()
    }

    /// One stream's events after `after_sequence`, in order.
    pub async fn stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: i64,
    ) -> Result<Vec<RawEvent>, Error> {
        let rows = sqlx::query(STREAM_SQL)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .bind(after_sequence)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        rows.into_iter().map(to_raw).collect()
    }

    /// Position of the newest committed event (0 when none).
    pub async fn head(&self) -> Result<i64, Error> {
        let row = sqlx::query(HEAD_SQL)
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)?;
        let head: Option<i64> = row.try_get(0).map_err(store_error)?;
        Ok(head.unwrap_or(0))
    }

    /// The sequence of a stream's last event (0 when it has none).
    pub async fn last_sequence(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<usize, Error> {
        let row = sqlx::query(LAST_SEQUENCE_SQL)
            .bind(aggregate_type)
            .bind(aggregate_id)
            .fetch_one(&self.pool)
            .await
            .map_err(store_error)?;
        let last: Option<i64> = row.try_get(0).map_err(store_error)?;
        usize::try_from(last.unwrap_or(0)).map_err(|e| {
            Error::internal_from(format!("events of {aggregate_id}: a negative sequence"), e)
        })
    }

    /// The newest event of each of several streams of one aggregate type
    /// (streams with no event are absent), in one query.
    pub async fn newest(
        &self,
        aggregate_type: &str,
        aggregate_ids: &[&str],
    ) -> Result<Vec<RawEvent>, Error> {
        if aggregate_ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut type_param = String::new();
        DB::push_param(&mut type_param, 1);
        let mut placeholders = String::new();
        for i in 0..aggregate_ids.len() {
            if i > 0 {
                placeholders.push_str(", ");
            }
            DB::push_param(&mut placeholders, i + 2);
        }
        let sql = format!(
            "SELECT COALESCE(global_position, 0), aggregate_type, aggregate_id, sequence, \
             event_type, event_version, CAST(payload AS TEXT), CAST(metadata AS TEXT) \
             FROM events e WHERE aggregate_type = {type_param} AND aggregate_id IN ({placeholders}) \
             AND sequence = (SELECT MAX(sequence) FROM events m \
             WHERE m.aggregate_type = e.aggregate_type AND m.aggregate_id = e.aggregate_id)"
        );
        let mut q = sqlx::query(&sql).bind(aggregate_type);
        for id in aggregate_ids {
            q = q.bind(*id);
        }
        let rows = q.fetch_all(&self.pool).await.map_err(store_error)?;
        rows.into_iter().map(to_raw).collect()
    }

    /// Inserts events already numbered and chained, 1,000 per statement, in
    /// transactions of 20,000 (loading data; commands go through cqrs-es).
    pub async fn bulk_append(&self, events: &[SerializedEvent]) -> Result<(), Error> {
        const PER_STATEMENT: usize = 1000;
        const PER_TRANSACTION: usize = 20_000;
        for batch in events.chunks(PER_TRANSACTION) {
            let mut tx = self.pool.begin().await.map_err(store_error)?;
            for chunk in batch.chunks(PER_STATEMENT) {
                let mut values = String::new();
                for i in 0..chunk.len() {
                    values.push_str(if i == 0 { "(" } else { ", (" });
                    for column in 1..=7 {
                        if column > 1 {
                            values.push_str(", ");
                        }
                        DB::push_param(&mut values, i * 7 + column);
                    }
                    values.push(')');
                }
                let sql = format!(
                    "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
                     event_version, payload, metadata) VALUES {values}"
                );
                let mut q = sqlx::query(&sql);
                for e in chunk {
                    let sequence = i64::try_from(e.sequence)
                        .map_err(|err| Error::internal_from("a sequence beyond i64", err))?;
                    q = q
                        .bind(e.aggregate_type.as_str())
                        .bind(e.aggregate_id.as_str())
                        .bind(sequence)
                        .bind(e.event_type.as_str())
                        .bind(e.event_version.as_str())
                        .bind(&e.payload)
                        .bind(&e.metadata);
                }
                q.persistent(false)
                    .execute(&mut *tx)
                    .await
                    .map_err(store_error)?;
            }
            tx.commit().await.map_err(store_error)?;
        }
        Ok(())
    }
}
