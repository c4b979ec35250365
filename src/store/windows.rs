//! The `rate_windows` table: how much of each rate-limit window the nodes
//! have taken between them. A node takes a share of a window in one
//! statement and admits from memory until the share is used up, so a window
//! admits at most `limit` however many nodes share it: every share comes out
//! of the row, under the row's lock.

use async_trait::async_trait;
use keyledger_sql::Engine;
use sqlx::Pool;

use crate::error::Error;
use crate::store::feed::store_error;

/// A request for a share of one window.
#[derive(Debug, Clone, Copy)]
pub struct ShareRequest<'a> {
    /// The key id, or an owner's stream id.
    pub subject: &'a str,
    pub name: &'a str,
    pub window: i64,
    pub limit: u64,
    /// The most to take.
    pub want: u64,
    /// When the window ends (ms): the row may go some time after.
    pub ends_ms: i64,
}

/// What a share request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub granted: u64,
    /// What the nodes have taken of the window, this share included.
    pub taken: u64,
}

#[async_trait]
pub trait WindowTable: Send + Sync {
    /// A share for each request, in one transaction (the requests waiting
    /// at one moment: one commit instead of one each). Each takes at most
    /// `want`, and at most a quarter of what is left (at least one while
    /// anything is): shares shrink as the window fills, so the last
    /// admissions go to whichever node asks.
    async fn take_many(&self, requests: &[ShareRequest<'_>]) -> Result<Vec<Share>, Error>;
    /// Deletes windows that ended before `before_ms`.
    async fn purge(&self, before_ms: i64) -> Result<u64, Error>;
}

pub struct SqlWindows<DB: sqlx::Database> {
    pool: Pool<DB>,
}

impl<DB: sqlx::Database> SqlWindows<DB> {
    pub fn new(pool: Pool<DB>) -> Self {
        Self { pool }
    }
}

/// The first share of a fresh window (what the statement computes from the
/// row for a window already taken from).
fn first_share(limit: u64, want: u64) -> u64 {
    limit.div_ceil(4).clamp(1, want.max(1)).min(limit)
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl<DB> WindowTable for SqlWindows<DB>
where
    DB: Engine,
    for<'c> &'c Pool<DB>: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    DB::QueryResult: crate::store::claims::RowsAffected,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    (i64, i64): for<'r> sqlx::FromRow<'r, DB::Row>,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    async fn take_many(&self, requests: &[ShareRequest<'_>]) -> Result<Vec<Share>, Error> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let mut shares = Vec::with_capacity(requests.len());
        for r in requests {
            shares.push(take_on(&mut *tx, *r).await?);
        }
        tx.commit().await.map_err(store_error)?;
        Ok(shares)
    }

    async fn purge(&self, before_ms: i64) -> Result<u64, Error> {
        use crate::store::claims::RowsAffected;
        let done = sqlx::query("DELETE FROM rate_windows WHERE expires_ms < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows())
    }
}

/// One share, taken on `conn` (a connection or a transaction's).
async fn take_on<'c, DB, E>(conn: E, r: ShareRequest<'_>) -> Result<Share, Error>
where
    DB: Engine,
    E: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    (i64, i64): for<'r> sqlx::FromRow<'r, DB::Row>,
{
    {
        // `left` is $5 - taken; the grant is at most $6 (want) and at most
        // ceil(left / 4), at least 1 while left > 0. Plain CASE, the same on
        // both engines.
        const LEFT: &str = "($5 - rate_windows.taken)";
        let grant = format!(
            "CASE WHEN {LEFT} <= 0 THEN 0 \
                  WHEN ({LEFT} + 3) / 4 >= $6 THEN $6 \
                  ELSE ({LEFT} + 3) / 4 END"
        );
        let sql = format!(
            "INSERT INTO rate_windows (subject, name, win, taken, last_grant, expires_ms) \
             VALUES ($1, $2, $3, $4, $4, $7) \
             ON CONFLICT (subject, name, win) DO UPDATE SET \
             last_grant = {grant}, taken = rate_windows.taken + {grant} \
             RETURNING taken, last_grant"
        );
        let first = first_share(r.limit, r.want);
        let (taken, granted): (i64, i64) = sqlx::query_as(&sql)
            .bind(r.subject)
            .bind(r.name)
            .bind(r.window)
            .bind(to_i64(first))
            .bind(to_i64(r.limit))
            .bind(to_i64(r.want.max(1)))
            .bind(r.ends_ms)
            .fetch_one(conn)
            .await
            .map_err(store_error)?;
        let as_u64 = |n: i64, what: &str| {
            u64::try_from(n).map_err(|e| {
                Error::internal_from(format!("rate window {} {what} is {n}", r.name), e)
            })
        };
        Ok(Share {
            granted: as_u64(granted, "grant")?,
            taken: as_u64(taken, "taken")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_first_share_is_a_quarter_at_most_and_one_at_least() {
        assert_eq!(first_share(100, 10), 10);
        assert_eq!(first_share(8, 10), 2);
        assert_eq!(first_share(1, 10), 1);
        assert_eq!(first_share(3, 1), 1);
    }
}
