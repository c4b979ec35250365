//! The `webhook_endpoints` table: it names each tenant's webhook endpoints
//! (their settings are events in each endpoint's stream, see
//! `webhook_stream`) and holds each one's delivery progress.

use async_trait::async_trait;
use keyledger_sql::Engine;
use sqlx::Pool;

use crate::error::Error;
use crate::store::feed::store_error;

/// The `webhook_endpoints` table.
#[async_trait]
pub trait WebhookTable: Send + Sync {
    /// Names endpoint `id` of `tenant`, whose messages are about events
    /// after feed position `after`. A second call changes nothing.
    async fn add(&self, id: &str, tenant: &str, after: i64) -> Result<(), Error>;
    /// A tenant's endpoint ids, in id order (at most `limit`).
    async fn list(&self, tenant: &str, limit: i64) -> Result<Vec<String>, Error>;
    /// Forgets an endpoint and its deliveries.
    async fn remove(&self, id: &str) -> Result<(), Error>;
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
}
