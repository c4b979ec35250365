//! The global event feed: every event of every key in commit order, read with our
//! own SQL because the cqrs-es repositories only order by per-key sequence.

use keyledger_projections::RawEvent;
use sqlx::{Row, SqlitePool};

use crate::error::Error;
use crate::store::errors::sqlx_unavailable;

const FEED_SQL: &str = "SELECT global_position, aggregate_type, aggregate_id, sequence, \
     event_type, event_version, payload, metadata FROM events \
     WHERE global_position > $1 ORDER BY global_position LIMIT $2";

/// Maps a store read error: unreachable -> 503, anything else -> internal.
pub fn store_error(e: sqlx::Error) -> Error {
    if sqlx_unavailable(&e) {
        Error::StoreUnavailable(Box::new(e))
    } else {
        Error::Internal(format!("event store: {e}"))
    }
}

pub async fn read_sqlite(
    pool: &SqlitePool,
    after: i64,
    limit: i64,
) -> Result<Vec<RawEvent>, Error> {
    let rows = sqlx::query(FEED_SQL)
        .bind(after)
        .bind(limit)
        .fetch_all(pool)
        .await
        .map_err(store_error)?;
    rows.into_iter()
        .map(|r| {
            Ok(RawEvent {
                position: r.try_get(0)?,
                aggregate_type: r.try_get(1)?,
                aggregate_id: r.try_get(2)?,
                sequence: r.try_get(3)?,
                event_type: r.try_get(4)?,
                event_version: r.try_get(5)?,
                payload: r.try_get(6)?,
                metadata: r.try_get(7)?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(store_error)
}

pub async fn head_sqlite(pool: &SqlitePool) -> Result<i64, Error> {
    sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(global_position) FROM events")
        .fetch_one(pool)
        .await
        .map(|p| p.unwrap_or(0))
        .map_err(store_error)
}
