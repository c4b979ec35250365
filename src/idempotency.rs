//! `Idempotency-Key` for the commands that issue keys (create, rotate): a retry
//! with the same key and body gets the first response, raw key included, and
//! creates nothing; the same key with another body is refused.
//!
//! Claims live in the `idempotency_keys` table of the event store's database, so
//! they hold across nodes and restarts. The first request inserts a `pending`
//! row (the primary key decides between concurrent duplicates), runs, and stores
//! its response; duplicates wait for it. The raw key is sealed with
//! XChaCha20-Poly1305 under a key derived from the server secret, and rows are
//! erased 24 h after creation.

use std::time::{Duration, Instant};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use crate::error::Error;
use crate::store::feed::store_error;
use crate::store::EventStore;

/// How long a response is replayed.
pub const RETENTION: chrono::Duration = chrono::Duration::hours(24);
/// A pending claim older than this is taken to be abandoned (its node died).
const ABANDONED_AFTER: chrono::Duration = chrono::Duration::seconds(30);
/// How long a duplicate waits for the first request to finish.
const WAIT: Duration = Duration::from_secs(15);

const PENDING: &str = "pending";
const DONE: &str = "done";

/// Derives the sealing key from the server secret.
pub struct Sealer(XChaCha20Poly1305);

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(***)")
    }
}

impl Sealer {
    pub fn from_secret(secret: &[u8]) -> Self {
        let mut h = Sha256::new();
        h.update(b"keyledger idempotency sealing key v1\0");
        h.update(secret);
        let key = h.finalize();
        Self(XChaCha20Poly1305::new(&key))
    }

    fn seal(&self, plaintext: &str) -> Result<String, Error> {
        let mut nonce = [0u8; 24];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .0
            .encrypt(&XNonce::from(nonce), plaintext.as_bytes())
            .map_err(|_| Error::Internal("sealing failed".into()))?;
        Ok(format!("{}{}", hex::encode(nonce), hex::encode(sealed)))
    }

    fn open(&self, sealed: &str) -> Result<String, Error> {
        let bytes =
            hex::decode(sealed).map_err(|_| Error::Internal("sealed key corrupt".into()))?;
        if bytes.len() < 24 {
            return Err(Error::Internal("sealed key corrupt".into()));
        }
        let (nonce, body) = bytes.split_at(24);
        let nonce: [u8; 24] = nonce
            .try_into()
            .map_err(|_| Error::Internal("sealed key corrupt".into()))?;
        let plain = self
            .0
            .decrypt(&XNonce::from(nonce), body)
            .map_err(|_| Error::Internal("sealed key cannot be opened".into()))?;
        String::from_utf8(plain).map_err(|_| Error::Internal("sealed key corrupt".into()))
    }
}

/// The fingerprint of a request: route and body.
pub fn request_hash(route: &str, body: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update([0]);
    h.update(body);
    hex::encode(h.finalize())
}

/// What a claim found.
pub enum Claim {
    /// This request owns the key: run it, then `complete` (or `release`).
    Owned,
    /// A previous request answered; replay this body (raw key restored).
    Replay(Value),
}

#[derive(sqlx::FromRow)]
struct Row {
    request_hash: String,
    state: String,
    created_at: i64,
    response_body: Option<String>,
    sealed_key: Option<String>,
}

macro_rules! on_pool {
    ($store:expr, |$pool:ident| $body:expr) => {
        match $store {
            EventStore::Sqlite(s) => {
                let $pool = &s.pool;
                $body
            }
            EventStore::Postgres(s) => {
                let $pool = &s.pool;
                $body
            }
            // KurrentDB holds events only: the claims live with the projections.
            #[cfg(feature = "kurrentdb")]
            EventStore::Kurrent(k) => match &k.side {
                crate::store::kurrent::SideDb::Sqlite(s) => {
                    let $pool = &s.pool;
                    $body
                }
                crate::store::kurrent::SideDb::Postgres(s) => {
                    let $pool = &s.pool;
                    $body
                }
            },
        }
    };
}

pub struct Idempotency<'a> {
    pub store: &'a EventStore,
    pub sealer: &'a Sealer,
    pub clock: &'a Clock,
}

impl Idempotency<'_> {
    /// Claims `key` for this request, or returns the first response.
    pub async fn claim(&self, tenant: &str, key: &str, hash: &str) -> Result<Claim, Error> {
        let started = Instant::now();
        loop {
            let now = self.clock.now();
            let inserted = on_pool!(self.store, |pool| sqlx::query(
                "INSERT INTO idempotency_keys (tenant, idem_key, request_hash, state, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (tenant, idem_key) DO NOTHING"
            )
            .bind(tenant)
            .bind(key)
            .bind(hash)
            .bind(PENDING)
            .bind(now.timestamp_millis())
            .bind((now + RETENTION).timestamp_millis())
            .execute(pool)
            .await
            .map(|r| r.rows_affected()))
            .map_err(store_error)?;
            if inserted == 1 {
                return Ok(Claim::Owned);
            }
            let row: Option<Row> = on_pool!(self.store, |pool| sqlx::query_as(
                "SELECT request_hash, state, created_at, response_body, sealed_key \
                 FROM idempotency_keys WHERE tenant = $1 AND idem_key = $2"
            )
            .bind(tenant)
            .bind(key)
            .fetch_optional(pool)
            .await)
            .map_err(store_error)?;
            let Some(row) = row else { continue };
            let age = now.timestamp_millis() - row.created_at;
            if age > RETENTION.num_milliseconds()
                || (row.state == PENDING && age > ABANDONED_AFTER.num_milliseconds())
            {
                self.forget(tenant, key, &row.state, row.created_at).await?;
                continue;
            }
            if row.request_hash != hash {
                return Err(Error::IdempotencyKeyReused);
            }
            if row.state == DONE {
                let mut body: Value = row
                    .response_body
                    .as_deref()
                    .and_then(|b| serde_json::from_str(b).ok())
                    .ok_or_else(|| Error::Internal("stored response corrupt".into()))?;
                if let (Some(sealed), Value::Object(m)) = (row.sealed_key.as_deref(), &mut body) {
                    m.insert("key".into(), Value::String(self.sealer.open(sealed)?));
                }
                return Ok(Claim::Replay(body));
            }
            if started.elapsed() > WAIT {
                return Err(Error::Conflict);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stores the response of the request that owns the claim. The raw key is
    /// taken out of `body` and sealed.
    pub async fn complete(&self, tenant: &str, key: &str, mut body: Value) -> Result<(), Error> {
        let raw = match &mut body {
            Value::Object(m) => m.remove("key"),
            _ => None,
        };
        let sealed = raw
            .as_ref()
            .and_then(Value::as_str)
            .map(|k| self.sealer.seal(k))
            .transpose()?;
        let text = body.to_string();
        on_pool!(self.store, |pool| sqlx::query(
            "UPDATE idempotency_keys SET state = $1, response_body = $2, sealed_key = $3 \
             WHERE tenant = $4 AND idem_key = $5"
        )
        .bind(DONE)
        .bind(&text)
        .bind(&sealed)
        .bind(tenant)
        .bind(key)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(store_error)?;
        Ok(())
    }

    /// Gives up a claim whose request failed, so a retry runs it again.
    pub async fn release(&self, tenant: &str, key: &str) {
        let result = on_pool!(self.store, |pool| sqlx::query(
            "DELETE FROM idempotency_keys WHERE tenant = $1 AND idem_key = $2 AND state = $3"
        )
        .bind(tenant)
        .bind(key)
        .bind(PENDING)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()));
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not release an idempotency claim; it expires by itself");
        }
    }

    async fn forget(
        &self,
        tenant: &str,
        key: &str,
        state: &str,
        created_at: i64,
    ) -> Result<(), Error> {
        on_pool!(self.store, |pool| sqlx::query(
            "DELETE FROM idempotency_keys WHERE tenant = $1 AND idem_key = $2 AND state = $3 AND created_at = $4"
        )
        .bind(tenant)
        .bind(key)
        .bind(state)
        .bind(created_at)
        .execute(pool)
        .await
        .map(|r| r.rows_affected()))
        .map_err(store_error)?;
        Ok(())
    }
}

/// Erases expired entries, and with them the sealed raw keys.
pub async fn purge_expired(store: &EventStore, clock: &Clock) -> Result<u64, Error> {
    let now = clock.now().timestamp_millis();
    on_pool!(store, |pool| sqlx::query(
        "DELETE FROM idempotency_keys WHERE expires_at < $1"
    )
    .bind(now)
    .execute(pool)
    .await
    .map(|r| r.rows_affected()))
    .map_err(store_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_key_opens_only_with_the_same_secret() {
        let a = Sealer::from_secret(b"one");
        let sealed = a.seal("kl_live_secret").expect("seal");
        assert!(!sealed.contains("kl_live_secret"));
        assert_eq!(a.open(&sealed).expect("open"), "kl_live_secret");
        assert!(Sealer::from_secret(b"two").open(&sealed).is_err());
    }
}
