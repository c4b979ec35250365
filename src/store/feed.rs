//! The global event feed: every event of every key in commit order, read with our
//! own SQL because the cqrs-es repositories only order by per-key sequence. The
//! SQL text is the same on both engines; `feed_functions!` compiles it for each.

use keyledger_domain::json;
use keyledger_projections::RawEvent;
use sqlx::Row;

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
        Error::Internal(format!("event store: {e}"))
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

macro_rules! feed_functions {
    ($read:ident, $head:ident, $event_at:ident, $stream:ident, $pool:ty) => {
        /// Events after `after` in commit order, at most `limit`.
        pub async fn $read(pool: &$pool, after: i64, limit: i64) -> Result<Vec<RawEvent>, Error> {
            let rows = sqlx::query(FEED_SQL)
                .bind(after)
                .bind(limit)
                .fetch_all(pool)
                .await
                .map_err(store_error)?;
            rows.into_iter().map(to_raw).collect()
        }

        /// One event of a stream, by sequence.
        pub async fn $event_at(
            pool: &$pool,
            aggregate_type: &str,
            aggregate_id: &str,
            sequence: i64,
        ) -> Result<Option<RawEvent>, Error> {
            let row = sqlx::query(EVENT_AT_SQL)
                .bind(aggregate_type)
                .bind(aggregate_id)
                .bind(sequence)
                .fetch_optional(pool)
                .await
                .map_err(store_error)?;
            row.map(to_raw).transpose()
        }

        /// One stream's events after `after_sequence`, in order.
        pub async fn $stream(
            pool: &$pool,
            aggregate_type: &str,
            aggregate_id: &str,
            after_sequence: i64,
        ) -> Result<Vec<RawEvent>, Error> {
            let rows = sqlx::query(STREAM_SQL)
                .bind(aggregate_type)
                .bind(aggregate_id)
                .bind(after_sequence)
                .fetch_all(pool)
                .await
                .map_err(store_error)?;
            rows.into_iter().map(to_raw).collect()
        }

        /// Position of the newest committed event (0 when none).
        pub async fn $head(pool: &$pool) -> Result<i64, Error> {
            sqlx::query_scalar::<_, Option<i64>>(HEAD_SQL)
                .fetch_one(pool)
                .await
                .map(|p| p.unwrap_or(0))
                .map_err(store_error)
        }
    };
}

feed_functions!(
    read_sqlite,
    head_sqlite,
    event_at_sqlite,
    stream_sqlite,
    sqlx::SqlitePool
);
feed_functions!(
    read_postgres,
    head_postgres,
    event_at_postgres,
    stream_postgres,
    sqlx::PgPool
);

/// The newest event of each of several streams of one aggregate type (streams
/// with no event are absent), in one query.
macro_rules! newest_events_fn {
    ($name:ident, $db:ty, $pool:ty) => {
        pub async fn $name(
            pool: &$pool,
            aggregate_type: &str,
            aggregate_ids: &[&str],
        ) -> Result<Vec<RawEvent>, Error> {
            if aggregate_ids.is_empty() {
                return Ok(Vec::new());
            }
            let mut q = sqlx::QueryBuilder::<$db>::new(
                "SELECT COALESCE(global_position, 0), aggregate_type, aggregate_id, sequence, \
                 event_type, event_version, CAST(payload AS TEXT), CAST(metadata AS TEXT) \
                 FROM events e \
                 WHERE aggregate_type = ",
            );
            q.push_bind(aggregate_type);
            q.push(" AND aggregate_id IN (");
            let mut ids = q.separated(", ");
            for id in aggregate_ids {
                ids.push_bind(*id);
            }
            q.push(
                ") AND sequence = (SELECT MAX(sequence) FROM events m \
                 WHERE m.aggregate_type = e.aggregate_type AND m.aggregate_id = e.aggregate_id)",
            );
            let rows = q.build().fetch_all(pool).await.map_err(store_error)?;
            rows.into_iter().map(to_raw).collect()
        }
    };
}

newest_events_fn!(newest_events_sqlite, sqlx::Sqlite, sqlx::SqlitePool);
newest_events_fn!(newest_events_postgres, sqlx::Postgres, sqlx::PgPool);
