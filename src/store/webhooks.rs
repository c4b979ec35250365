//! The `webhook_endpoints` table: it names each tenant's webhook endpoints
//! (their settings are events in each endpoint's stream, see
//! `webhook_stream`) and holds each one's delivery progress.

use async_trait::async_trait;
use keyledger_sql::Engine;
use sqlx::Pool;

use crate::error::Error;
use crate::store::feed::store_error;

/// An endpoint a node took the lease of, to deliver its messages.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Claimed {
    pub id: String,
    pub tenant: String,
    /// The feed position its messages are delivered (or skipped) through.
    pub delivered_through: i64,
    /// When its oldest undelivered message first failed (ms).
    pub failing_since: Option<i64>,
}

/// One attempt to deliver a message.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub endpoint_id: &'a str,
    pub position: i64,
    pub msg_id: &'a str,
    pub message_type: &'a str,
    pub key_id: &'a str,
    pub delivered: bool,
    pub at_ms: i64,
    /// When to try again, if it failed.
    pub next_attempt_ms: Option<i64>,
    /// The receiver's status code, if it answered.
    pub response_status: Option<u16>,
}

/// A message as the delivery history shows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct DeliveryRow {
    pub msg_id: String,
    pub message_type: String,
    pub position: i64,
    pub key_id: String,
    pub status: String,
    pub attempts: i64,
    pub last_attempt_at: Option<i64>,
    pub next_attempt_at: Option<i64>,
    pub response_status: Option<i64>,
}

/// A `DeliveryRow` as selected (integers widened, so both engines decode alike).
const DELIVERY_ROW: &str = "SELECT msg_id, type AS message_type, position, key_id, status, \
     CAST(attempts AS BIGINT) AS attempts, last_attempt_at, next_attempt_at, \
     CAST(response_status AS BIGINT) AS response_status FROM webhook_deliveries";

pub const DELIVERED: &str = "delivered";
pub const FAILED: &str = "failed";

/// The `webhook_endpoints` and `webhook_deliveries` tables.
#[async_trait]
pub trait WebhookTable: Send + Sync {
    /// Names endpoint `id` of `tenant`, whose messages are about events
    /// after feed position `after`. A second call changes nothing.
    async fn add(&self, id: &str, tenant: &str, after: i64) -> Result<(), Error>;
    /// A tenant's endpoint ids, in id order (at most `limit`).
    async fn list(&self, tenant: &str, limit: i64) -> Result<Vec<String>, Error>;
    /// Forgets an endpoint and its deliveries.
    async fn remove(&self, id: &str) -> Result<(), Error>;
    /// Takes the lease (until `lease_until`) of up to `limit` endpoints that
    /// are due at `now_ms`, leased to no other node, and behind the feed's
    /// `head` (an endpoint that has seen everything is not taken).
    async fn claim(
        &self,
        node: &str,
        now_ms: i64,
        lease_until: i64,
        head: i64,
        limit: i64,
    ) -> Result<Vec<Claimed>, Error>;
    /// Records an attempt and moves its endpoint on (past the message when
    /// it was delivered; to its next attempt when not), renewing the lease.
    /// False, with nothing written, when the lease is no longer `node`'s.
    async fn record(
        &self,
        node: &str,
        attempt: &Attempt<'_>,
        lease_until: i64,
    ) -> Result<bool, Error>;
    /// Moves an endpoint past events it has no message for. False when the
    /// lease is no longer `node`'s.
    async fn skip_to(
        &self,
        id: &str,
        node: &str,
        position: i64,
        lease_until: i64,
    ) -> Result<bool, Error>;
    /// Gives the lease back, due again at `next_attempt_ms`.
    async fn release(&self, id: &str, node: &str, next_attempt_ms: i64) -> Result<(), Error>;
    /// An endpoint's messages, newest first, before position `before`.
    async fn deliveries(
        &self,
        id: &str,
        status: Option<&str>,
        before: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, Error>;
    /// One message of an endpoint.
    async fn delivery(&self, id: &str, msg_id: &str) -> Result<Option<DeliveryRow>, Error>;
    /// Notes a manual resend of a message already delivered (its history
    /// only: the endpoint's position stays).
    async fn note_resend(
        &self,
        id: &str,
        position: i64,
        at_ms: i64,
        response_status: Option<u16>,
    ) -> Result<(), Error>;
    /// Makes an endpoint due now (a manual retry of its next message).
    async fn due_now(&self, id: &str) -> Result<(), Error>;
}

pub struct SqlWebhooks<DB: sqlx::Database> {
    pool: Pool<DB>,
}

impl<DB: sqlx::Database> SqlWebhooks<DB> {
    pub fn new(pool: Pool<DB>) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl<DB> WebhookTable for SqlWebhooks<DB>
where
    DB: Engine,
    for<'c> &'c Pool<DB>: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    String: for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + for<'r> sqlx::Decode<'r, DB> + sqlx::Type<DB>,
    (String,): for<'r> sqlx::FromRow<'r, DB::Row>,
    Claimed: for<'r> sqlx::FromRow<'r, DB::Row>,
    DeliveryRow: for<'r> sqlx::FromRow<'r, DB::Row>,
    Option<i64>: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    DB::QueryResult: crate::store::claims::RowsAffected,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
{
    async fn add(&self, id: &str, tenant: &str, after: i64) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO webhook_endpoints (id, tenant, delivered_through) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(id)
        .bind(tenant)
        .bind(after)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn list(&self, tenant: &str, limit: i64) -> Result<Vec<String>, Error> {
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT id FROM webhook_endpoints WHERE tenant = $1 ORDER BY id LIMIT $2",
        )
        .bind(tenant)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(rows.into_iter().map(|(id,)| id).collect())
    }

    async fn remove(&self, id: &str) -> Result<(), Error> {
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        sqlx::query("DELETE FROM webhook_deliveries WHERE endpoint_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(())
    }

    async fn claim(
        &self,
        node: &str,
        now_ms: i64,
        lease_until: i64,
        head: i64,
        limit: i64,
    ) -> Result<Vec<Claimed>, Error> {
        // The lease condition is in the outer WHERE too: PostgreSQL checks it
        // again on the newest row version once it holds the row's lock, so of
        // two nodes claiming at once only one gets each endpoint.
        let rows: Vec<Claimed> = sqlx::query_as(
            "UPDATE webhook_endpoints SET lease_node = $1, lease_until = $2 \
             WHERE id IN (SELECT id FROM webhook_endpoints \
                 WHERE (lease_until < $3 OR lease_node = $1) AND next_attempt <= $3 \
                 AND delivered_through < $5 ORDER BY next_attempt LIMIT $4) \
             AND (lease_until < $3 OR lease_node = $1) AND next_attempt <= $3 \
             RETURNING id, tenant, delivered_through, failing_since",
        )
        .bind(node)
        .bind(lease_until)
        .bind(now_ms)
        .bind(limit)
        .bind(head)
        .fetch_all(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(rows)
    }

    async fn record(&self, node: &str, a: &Attempt<'_>, lease_until: i64) -> Result<bool, Error> {
        use crate::store::claims::RowsAffected;
        let mut tx = self.pool.begin().await.map_err(store_error)?;
        let moved = if a.delivered {
            sqlx::query(
                "UPDATE webhook_endpoints SET delivered_through = $2, failing_since = NULL, \
                 next_attempt = 0, lease_until = $4 WHERE id = $1 AND lease_node = $3",
            )
            .bind(a.endpoint_id)
            .bind(a.position)
            .bind(node)
            .bind(lease_until)
            .execute(&mut *tx)
            .await
        } else {
            sqlx::query(
                "UPDATE webhook_endpoints SET failing_since = COALESCE(failing_since, $2), \
                 next_attempt = $3, lease_until = $5 WHERE id = $1 AND lease_node = $4",
            )
            .bind(a.endpoint_id)
            .bind(a.at_ms)
            .bind(a.next_attempt_ms.unwrap_or(a.at_ms))
            .bind(node)
            .bind(lease_until)
            .execute(&mut *tx)
            .await
        }
        .map_err(store_error)?;
        if moved.rows() == 0 {
            tx.rollback().await.map_err(store_error)?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO webhook_deliveries (endpoint_id, position, msg_id, type, key_id, \
             status, attempts, last_attempt_at, next_attempt_at, response_status) \
             VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8, $9) \
             ON CONFLICT (endpoint_id, position) DO UPDATE SET \
             status = $6, attempts = webhook_deliveries.attempts + 1, last_attempt_at = $7, \
             next_attempt_at = $8, response_status = $9",
        )
        .bind(a.endpoint_id)
        .bind(a.position)
        .bind(a.msg_id)
        .bind(a.message_type)
        .bind(a.key_id)
        .bind(if a.delivered { DELIVERED } else { FAILED })
        .bind(a.at_ms)
        .bind(a.next_attempt_ms)
        .bind(a.response_status.map(i64::from))
        .execute(&mut *tx)
        .await
        .map_err(store_error)?;
        tx.commit().await.map_err(store_error)?;
        Ok(true)
    }

    async fn skip_to(
        &self,
        id: &str,
        node: &str,
        position: i64,
        lease_until: i64,
    ) -> Result<bool, Error> {
        use crate::store::claims::RowsAffected;
        let done = sqlx::query(
            "UPDATE webhook_endpoints SET delivered_through = $2, lease_until = $4 \
             WHERE id = $1 AND lease_node = $3 AND delivered_through < $2",
        )
        .bind(id)
        .bind(position)
        .bind(node)
        .bind(lease_until)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows() > 0)
    }

    async fn release(&self, id: &str, node: &str, next_attempt_ms: i64) -> Result<(), Error> {
        sqlx::query(
            "UPDATE webhook_endpoints SET lease_until = 0, \
             next_attempt = CASE WHEN next_attempt > $3 THEN next_attempt ELSE $3 END \
             WHERE id = $1 AND lease_node = $2",
        )
        .bind(id)
        .bind(node)
        .bind(next_attempt_ms)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn deliveries(
        &self,
        id: &str,
        status: Option<&str>,
        before: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, Error> {
        let sql = format!(
            "{DELIVERY_ROW} WHERE endpoint_id = $1 AND position < $2 \
             AND ($3 IS NULL OR status = $3) ORDER BY position DESC LIMIT $4"
        );
        let rows: Vec<DeliveryRow> = sqlx::query_as(&sql)
            .bind(id)
            .bind(before)
            .bind(status)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(rows)
    }

    async fn delivery(&self, id: &str, msg_id: &str) -> Result<Option<DeliveryRow>, Error> {
        let sql = format!("{DELIVERY_ROW} WHERE endpoint_id = $1 AND msg_id = $2");
        let row: Option<DeliveryRow> = sqlx::query_as(&sql)
            .bind(id)
            .bind(msg_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(row)
    }

    async fn note_resend(
        &self,
        id: &str,
        position: i64,
        at_ms: i64,
        response_status: Option<u16>,
    ) -> Result<(), Error> {
        sqlx::query(
            "UPDATE webhook_deliveries SET attempts = attempts + 1, last_attempt_at = $3, \
             response_status = $4 WHERE endpoint_id = $1 AND position = $2",
        )
        .bind(id)
        .bind(position)
        .bind(at_ms)
        .bind(response_status.map(i64::from))
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(())
    }

    async fn due_now(&self, id: &str) -> Result<(), Error> {
        sqlx::query("UPDATE webhook_endpoints SET next_attempt = 0 WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(())
    }
}
