//! The global event feed: every event of every key in commit order, read with our
//! own SQL because the cqrs-es repositories only order by per-key sequence. The
//! SQL text is the same on both engines; `feed_functions!` compiles it for each.

use keyledger_projections::RawEvent;
use sqlx::Row;

use crate::error::Error;
use crate::store::errors::sqlx_unavailable;

const FEED_SQL: &str = "SELECT global_position, aggregate_type, aggregate_id, sequence, \
     event_type, event_version, payload, metadata FROM events \
     WHERE global_position > $1 ORDER BY global_position LIMIT $2";

const HEAD_SQL: &str = "SELECT MAX(global_position) FROM events";

/// Maps a store read error: unreachable -> 503, anything else -> internal.
pub fn store_error(e: sqlx::Error) -> Error {
    if sqlx_unavailable(&e) {
        Error::StoreUnavailable(Box::new(e))
    } else {
        Error::Internal(format!("event store: {e}"))
    }
}

macro_rules! feed_functions {
    ($read:ident, $head:ident, $pool:ty) => {
        /// Events after `after` in commit order, at most `limit`.
        pub async fn $read(pool: &$pool, after: i64, limit: i64) -> Result<Vec<RawEvent>, Error> {
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

feed_functions!(read_sqlite, head_sqlite, sqlx::SqlitePool);
feed_functions!(read_postgres, head_postgres, sqlx::PgPool);
