//! The `idempotency_keys` table (see `idempotency.rs` for what a claim is):
//! its statements, once, on either SQL engine.

use async_trait::async_trait;
use keyledger_domain::TenantId;
use keyledger_sql::Engine;
use sqlx::Pool;

use crate::error::Error;
use crate::store::feed::store_error;

/// A claim as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimRow {
    pub request_hash: String,
    pub state: String,
    pub created_at: i64,
    pub response_body: Option<String>,
    pub sealed_key: Option<String>,
    pub owner: Option<String>,
    pub lease_until: Option<i64>,
    pub proof: Option<String>,
}

/// A new claim.
#[derive(Debug, Clone, Copy)]
pub struct NewClaim<'a> {
    pub tenant: &'a TenantId,
    pub key: &'a str,
    pub request_hash: &'a str,
    pub state: &'a str,
    pub created_at: i64,
    pub expires_at: i64,
    pub owner: &'a str,
    pub lease_until: i64,
}

/// An answer written into its owner's pending claim.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub state: &'a str,
    pub body: &'a str,
    pub sealed_key: Option<&'a str>,
    /// Replaces the stored proof; `None` keeps it.
    pub proof: Option<&'a str>,
}

/// A lapsed claim taken over by a new request (see `take_over`).
#[derive(Debug, Clone, Copy)]
pub struct TakeOver<'a> {
    pub owner: &'a str,
    pub lease_until: i64,
    pub request_hash: &'a str,
    pub now: i64,
    pub expires_at: i64,
    /// The previous owner as read ("" for rows from before owners).
    pub seen_owner: &'a str,
    pub seen_created_at: i64,
    /// The lease of rows from before leases, after `created_at`, in ms.
    pub default_lease_ms: i64,
}

/// Where claims are kept. Each write returns the rows it changed; a claim's
/// owner and state are in every condition, so a write by a request that lost
/// its claim changes nothing.
#[async_trait]
pub trait ClaimTable: Send + Sync {
    /// Inserts the claim unless one exists; true when inserted.
    async fn insert(&self, claim: NewClaim<'_>) -> Result<bool, Error>;
    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<ClaimRow>, Error>;
    /// Writes `answer` into `owner`'s claim in state `pending`.
    async fn answer(
        &self,
        tenant: &TenantId,
        key: &str,
        owner: &str,
        pending: &str,
        answer: Answer<'_>,
    ) -> Result<u64, Error>;
    /// Deletes `owner`'s claim in `state`.
    async fn release(
        &self,
        tenant: &TenantId,
        key: &str,
        owner: &str,
        state: &str,
    ) -> Result<u64, Error>;
    /// Deletes the claim in `state` created at `created_at`.
    async fn forget(
        &self,
        tenant: &TenantId,
        key: &str,
        state: &str,
        created_at: i64,
    ) -> Result<u64, Error>;
    /// Takes over the claim in `state` when it is still as seen and its lease
    /// has lapsed. An answer recorded for the same request hash is kept.
    async fn take_over(
        &self,
        tenant: &TenantId,
        key: &str,
        state: &str,
        take: TakeOver<'_>,
    ) -> Result<u64, Error>;
    /// Moves the lease of `owner`'s claim in `state`.
    async fn renew(
        &self,
        tenant: &TenantId,
        key: &str,
        owner: &str,
        state: &str,
        lease_until: i64,
    ) -> Result<u64, Error>;
    /// Deletes claims that expired before `now`.
    async fn purge(&self, now: i64) -> Result<u64, Error>;
}

/// The claims in a SQL database.
pub struct SqlClaims<DB: sqlx::Database> {
    pool: Pool<DB>,
}

impl<DB: sqlx::Database> SqlClaims<DB> {
    pub fn new(pool: Pool<DB>) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl<DB> ClaimTable for SqlClaims<DB>
where
    DB: Engine,
    for<'c> &'c Pool<DB>: sqlx::Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: sqlx::IntoArguments<'q, DB>,
    DB::QueryResult: RowsAffected,
    str: sqlx::Type<DB>,
    for<'q> &'q str: sqlx::Encode<'q, DB>,
    i64: for<'q> sqlx::Encode<'q, DB> + sqlx::Type<DB>,
    for<'q> Option<&'q str>: sqlx::Encode<'q, DB>,
    ClaimRow: for<'r> sqlx::FromRow<'r, DB::Row>,
{
    async fn insert(&self, c: NewClaim<'_>) -> Result<bool, Error> {
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys \
             (tenant, idem_key, request_hash, state, created_at, expires_at, owner, lease_until) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant, idem_key) DO NOTHING",
        )
        .bind(c.tenant.as_str())
        .bind(c.key)
        .bind(c.request_hash)
        .bind(c.state)
        .bind(c.created_at)
        .bind(c.expires_at)
        .bind(c.owner)
        .bind(c.lease_until)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(inserted.rows() == 1)
    }

    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<ClaimRow>, Error> {
        sqlx::query_as(
            "SELECT request_hash, state, created_at, response_body, sealed_key, owner, \
             lease_until, proof FROM idempotency_keys WHERE tenant = $1 AND idem_key = $2",
        )
        .bind(tenant.as_str())
        .bind(key)
        .fetch_optional(&self.pool)
        .await
        .map_err(store_error)
    }

    async fn answer(
        &self,
        tenant: &TenantId,
        key: &str,
        owner: &str,
        pending: &str,
        a: Answer<'_>,
    ) -> Result<u64, Error> {
        let done = sqlx::query(
            "UPDATE idempotency_keys SET state = $1, response_body = $2, sealed_key = $3, \
             proof = COALESCE($4, proof) \
             WHERE tenant = $5 AND idem_key = $6 AND owner = $7 AND state = $8",
        )
        .bind(a.state)
        .bind(a.body)
        .bind(a.sealed_key)
        .bind(a.proof)
        .bind(tenant.as_str())
        .bind(key)
        .bind(owner)
        .bind(pending)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows())
    }

    async fn release(
        &self,
        tenant: &TenantId,
        key: &str,
        owner: &str,
        state: &str,
    ) -> Result<u64, Error> {
        let done = sqlx::query(
            "DELETE FROM idempotency_keys \
             WHERE tenant = $1 AND idem_key = $2 AND owner = $3 AND state = $4",
        )
        .bind(tenant.as_str())
        .bind(key)
        .bind(owner)
        .bind(state)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows())
    }

    async fn forget(
        &self,
        tenant: &TenantId,
        key: &str,
        state: &str,
        created_at: i64,
    ) -> Result<u64, Error> {
        let done = sqlx::query(
            "DELETE FROM idempotency_keys \
             WHERE tenant = $1 AND idem_key = $2 AND state = $3 AND created_at = $4",
        )
        .bind(tenant.as_str())
        .bind(key)
        .bind(state)
        .bind(created_at)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows())
    }

    async fn take_over(
        &self,
        tenant: &TenantId,
        key: &str,
        state: &str,
        t: TakeOver<'_>,
    ) -> Result<u64, Error> {
        // The previous owner's token (empty for rows from before tokens, which
        // `created_at` then tells apart) and the lease still lapsed, in the
        // same statement: a renewal that landed after the read wins. An answer
        // the previous request recorded is kept only for the same request
        // (hash): it is no answer to another body. (SET expressions read the
        // old row.)
        let done = sqlx::query(
            "UPDATE idempotency_keys SET owner = $1, lease_until = $2, request_hash = $3, \
             created_at = $4, expires_at = $5, \
             response_body = CASE WHEN request_hash = $3 THEN response_body END, \
             sealed_key = CASE WHEN request_hash = $3 THEN sealed_key END, \
             proof = CASE WHEN request_hash = $3 THEN proof END \
             WHERE tenant = $6 AND idem_key = $7 AND state = $8 AND COALESCE(owner, '') = $9 \
             AND created_at = $10 AND COALESCE(lease_until, created_at + $11) < $4",
        )
        .bind(t.owner)
        .bind(t.lease_until)
        .bind(t.request_hash)
        .bind(t.now)
        .bind(t.expires_at)
        .bind(tenant.as_str())
        .bind(key)
        .bind(state)
        .bind(t.seen_owner)
        .bind(t.seen_created_at)
        .bind(t.default_lease_ms)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows())
    }

    async fn renew(
        &self,
        tenant: &TenantId,
        key: &str,
        owner: &str,
        state: &str,
        lease_until: i64,
    ) -> Result<u64, Error> {
        let done = sqlx::query(
            "UPDATE idempotency_keys SET lease_until = $1 \
             WHERE tenant = $2 AND idem_key = $3 AND owner = $4 AND state = $5",
        )
        .bind(lease_until)
        .bind(tenant.as_str())
        .bind(key)
        .bind(owner)
        .bind(state)
        .execute(&self.pool)
        .await
        .map_err(store_error)?;
        Ok(done.rows())
    }

    async fn purge(&self, now: i64) -> Result<u64, Error> {
        let done = sqlx::query("DELETE FROM idempotency_keys WHERE expires_at < $1")
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(store_error)?;
        Ok(done.rows())
    }
}

/// `rows_affected` of either engine's query result (sqlx has no trait for it).
pub trait RowsAffected {
    fn rows(&self) -> u64;
}

impl RowsAffected for sqlx::sqlite::SqliteQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for sqlx::postgres::PgQueryResult {
    fn rows(&self) -> u64 {
        self.rows_affected()
    }
}
