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
//!
//! A claim is **owned**: its row carries a random token of the request that took
//! it, and storing the response (`complete`) or giving the claim up (`release`)
//! only touches the row while it still carries the caller's token. A claim is
//! also **leased**: while its request runs, a background task (`Lease`) moves
//! `lease_until` forward every 10 s, 30 s ahead. Only a claim whose lease has
//! lapsed (its node died, or stalled for longer than the lease) is taken over,
//! and the taker writes a new token, so at any moment one request owns it.
//!
//! A request whose claim was taken over while it ran (it stalled past its lease)
//! still finishes its command, which has taken effect: its `complete` changes
//! nothing (`Settled::Lost`), the new owner's answer is what retries get, and
//! the stale request answers its own client with its own result, because the
//! key it issued exists and that response is the only place its raw key is.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;
use serde_json::Value;
use sha2::{Digest, Sha256};

use keyledger_domain::TenantId;

use crate::clock::Clock;
use crate::error::Error;
use crate::store::EventStore;

/// How long a response is replayed.
pub const RETENTION: chrono::Duration = chrono::Duration::hours(24);
/// How long a claim holds without renewal. Past it, its request is taken to
/// have died (or stalled), and a duplicate takes the claim over. Rows written
/// before leases (no `lease_until`) hold this long after `created_at`.
pub const LEASE: chrono::Duration = chrono::Duration::seconds(30);
/// How often a running request renews its lease: a third of it, so that two
/// renewals in a row may fail (a slow query, a database fail-over) before it
/// lapses.
pub const RENEW_EVERY: chrono::Duration = chrono::Duration::seconds(10);
/// How often the renewer reads the clock. Renewal follows `Clock` rather than
/// tokio's timer so that tests can move time over a real database; a reading
/// a second costs nothing, a write happens every `RENEW_EVERY`.
const RENEW_TICK: Duration = Duration::from_secs(1);
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
            .map_err(|_| Error::internal("sealing failed"))?;
        Ok(format!("{}{}", hex::encode(nonce), hex::encode(sealed)))
    }

    fn open(&self, sealed: &str) -> Result<String, Error> {
        let bytes = hex::decode(sealed).map_err(|_| Error::internal("sealed key corrupt"))?;
        if bytes.len() < 24 {
            return Err(Error::internal("sealed key corrupt"));
        }
        let (nonce, body) = bytes.split_at(24);
        let nonce: [u8; 24] = nonce
            .try_into()
            .map_err(|_| Error::internal("sealed key corrupt"))?;
        let plain = self
            .0
            .decrypt(&XNonce::from(nonce), body)
            .map_err(|_| Error::internal("sealed key cannot be opened"))?;
        String::from_utf8(plain).map_err(|_| Error::internal("sealed key corrupt"))
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
    /// This request owns the key: run it, then `complete` (or `release`) with
    /// the lease's owner token. The lease is renewed until it is dropped.
    Owned(Lease),
    /// A previous request answered; replay this body (raw key restored).
    Replay(Value),
    /// This request took over the claim of one that died after recording its
    /// answer (`record`) and maybe before or after committing: `proof` says
    /// which (`KeyService::settle`). If it committed, `complete` with
    /// `recorded` (raw key restored) and answer that; else run as `Owned`.
    Unsettled {
        lease: Lease,
        recorded: Value,
        proof: Value,
    },
}

/// What `complete` or `release` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The claim was the caller's: the response is stored (or the claim given up).
    Done,
    /// The claim is no longer the caller's (taken over, or gone): nothing changed.
    Lost,
}

/// A claim this request owns, kept alive in the background while it runs.
/// Dropping it stops the renewal (the claim then lapses after `LEASE` unless
/// it was completed or released); it does not release the claim, because
/// `Drop` cannot wait for the database, and because a request dropped midway
/// (its client went away) may already have committed its command: the lease
/// running out is the signal that it is gone.
pub struct Lease {
    owner: String,
    renewer: tokio::task::JoinHandle<()>,
}

impl Lease {
    /// The owner token to pass to `complete` or `release`.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Stops the renewal once the request's command is over, and gives back
    /// the token for `complete` or `release`. Stopping first keeps a renewal
    /// from landing just after `complete` and reporting the claim as lost.
    pub fn into_owner(mut self) -> String {
        std::mem::take(&mut self.owner)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

use crate::store::claims::{Answer, ClaimRow as Row, ClaimTable, NewClaim, TakeOver};

impl Row {
    /// When the claim lapses (rows from before leases: `LEASE` after creation).
    fn lease_until(&self) -> i64 {
        self.lease_until
            .unwrap_or(self.created_at + LEASE.num_milliseconds())
    }
}

/// A fresh owner token: 128 random bits, so no two requests share one.
fn new_owner() -> String {
    let mut token = [0u8; 16];
    rand::rng().fill_bytes(&mut token);
    hex::encode(token)
}

pub struct Idempotency<'a> {
    pub store: &'a EventStore,
    pub sealer: &'a Sealer,
    pub clock: &'a Clock,
}

impl Idempotency<'_> {
    /// Claims `key` for this request, or returns the first response.
    pub async fn claim(&self, tenant: &TenantId, key: &str, hash: &str) -> Result<Claim, Error> {
        let db = self.store.claims();
        // One token per request, also when it takes a lapsed claim over: the
        // previous owner's token stops matching the row at that moment.
        let owner = new_owner();
        let started = Instant::now();
        loop {
            let now = self.clock.now();
            let now_ms = now.timestamp_millis();
            let inserted = db
                .insert(NewClaim {
                    tenant,
                    key,
                    request_hash: hash,
                    state: PENDING,
                    created_at: now_ms,
                    expires_at: (now + RETENTION).timestamp_millis(),
                    owner: &owner,
                    lease_until: (now + LEASE).timestamp_millis(),
                })
                .await?;
            if inserted {
                return Ok(Claim::Owned(self.lease(&db, tenant, key, owner, now)));
            }
            let row: Option<Row> = db.get(tenant, key).await?;
            let Some(row) = row else { continue };
            // Another body under the same key is refused whatever the state
            // of the claim: a request that died may have committed its own.
            if row.request_hash != hash
                && (row.state == PENDING || now_ms - row.created_at <= RETENTION.num_milliseconds())
            {
                return Err(Error::IdempotencyKeyReused);
            }
            if row.state == PENDING && row.lease_until() < now_ms {
                // Its request died or stalled past its lease. Taken over as a
                // whole (this request's body, a fresh 24 h), as if the row had
                // been erased and claimed again, but in one conditional write:
                // of several duplicates only one takes it, and an owner that
                // renewed meanwhile keeps it.
                if take_over(&db, tenant, key, hash, &row, &owner, now).await? {
                    tracing::warn!(
                        %tenant,
                        "an idempotency claim's lease ran out while its request was pending; taken over"
                    );
                    let lease = self.lease(&db, tenant, key, owner, now);
                    // Same request (same hash): its recorded answer may be
                    // the one to give, if its command was committed.
                    if row.request_hash == hash {
                        if let (Some(recorded), Some(proof)) = (self.answer(&row)?, &row.proof) {
                            let proof = keyledger_domain::json::parse_stored(proof)
                                .map_err(|e| Error::internal_from("stored proof corrupt", e))?;
                            return Ok(Claim::Unsettled {
                                lease,
                                recorded,
                                proof,
                            });
                        }
                    }
                    return Ok(Claim::Owned(lease));
                }
                continue;
            }
            if row.state != PENDING && now_ms - row.created_at > RETENTION.num_milliseconds() {
                self.forget(tenant, key, &row.state, row.created_at).await?;
                continue;
            }
            if row.request_hash != hash {
                return Err(Error::IdempotencyKeyReused);
            }
            if row.state == DONE {
                let body = self
                    .answer(&row)?
                    .ok_or_else(|| Error::internal("stored response missing"))?;
                return Ok(Claim::Replay(body));
            }
            if started.elapsed() > WAIT {
                return Err(Error::Conflict);
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Starts renewing the claim `owner` just took at `at`.
    fn lease(
        &self,
        db: &Arc<dyn ClaimTable>,
        tenant: &TenantId,
        key: &str,
        owner: String,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Lease {
        let renewer = tokio::spawn(keep_alive(
            db.clone(),
            self.clock.clone(),
            tenant.clone(),
            key.to_string(),
            owner.clone(),
            at,
        ));
        Lease { owner, renewer }
    }

    /// The answer a row holds (recorded or final), raw key unsealed.
    fn answer(&self, row: &Row) -> Result<Option<Value>, Error> {
        let Some(text) = row.response_body.as_deref() else {
            return Ok(None);
        };
        let mut body = keyledger_domain::json::parse_stored(text)
            .map_err(|e| Error::internal_from("stored response corrupt", e))?;
        if let (Some(sealed), Value::Object(m)) = (row.sealed_key.as_deref(), &mut body) {
            m.insert("key".into(), Value::String(self.sealer.open(sealed)?));
        }
        Ok(Some(body))
    }

    /// Records, before its command is written, the answer the owner's request
    /// will give and what will prove the command committed (`proof`); the
    /// claim stays pending. A request that dies or loses its commit's answer
    /// after the commit thereby leaves its answer for a retry (`Unsettled`).
    pub async fn record(
        &self,
        tenant: &TenantId,
        key: &str,
        owner: &str,
        body: Value,
        proof: &Value,
    ) -> Result<Settled, Error> {
        self.store_answer(tenant, key, owner, body, PENDING, Some(proof))
            .await
    }

    /// Stores the response of the request that owns the claim (`owner`). The
    /// raw key is taken out of `body` and sealed. `Settled::Lost` when the claim
    /// is no longer `owner`'s: the row (another owner's) is left alone.
    pub async fn complete(
        &self,
        tenant: &TenantId,
        key: &str,
        owner: &str,
        body: Value,
    ) -> Result<Settled, Error> {
        self.store_answer(tenant, key, owner, body, DONE, None)
            .await
    }

    /// Writes an answer (raw key sealed) into `owner`'s pending claim and
    /// moves it to `state`; a `proof` replaces the stored one, none keeps it.
    async fn store_answer(
        &self,
        tenant: &TenantId,
        key: &str,
        owner: &str,
        mut body: Value,
        state: &str,
        proof: Option<&Value>,
    ) -> Result<Settled, Error> {
        let raw = match &mut body {
            Value::Object(m) => m.remove("key"),
            _ => None,
        };
        let sealed = raw
            .as_ref()
            .and_then(Value::as_str)
            .map(|k| self.sealer.seal(k))
            .transpose()?;
        let body = body.to_string();
        let proof = proof.map(Value::to_string);
        let updated = self
            .store
            .claims()
            .answer(
                tenant,
                key,
                owner,
                PENDING,
                Answer {
                    state,
                    body: &body,
                    sealed_key: sealed.as_deref(),
                    proof: proof.as_deref(),
                },
            )
            .await?;
        Ok(settled(updated))
    }

    /// Gives up a claim whose request failed, so a retry runs it again; only
    /// while the claim is still `owner`'s (else `Settled::Lost`, nothing changed).
    pub async fn release(
        &self,
        tenant: &TenantId,
        key: &str,
        owner: &str,
    ) -> Result<Settled, Error> {
        let deleted = self
            .store
            .claims()
            .release(tenant, key, owner, PENDING)
            .await?;
        Ok(settled(deleted))
    }

    /// Erases an answered entry past its retention (`created_at` tells it from
    /// an entry claimed again meanwhile).
    async fn forget(
        &self,
        tenant: &TenantId,
        key: &str,
        state: &str,
        created_at: i64,
    ) -> Result<(), Error> {
        self.store
            .claims()
            .forget(tenant, key, state, created_at)
            .await?;
        Ok(())
    }
}

fn settled(rows: u64) -> Settled {
    if rows == 1 {
        Settled::Done
    } else {
        Settled::Lost
    }
}

/// Takes over the lapsed claim `seen` for `owner`; false when someone else
/// changed it first (renewed, completed, released or took it over).
async fn take_over(
    db: &Arc<dyn ClaimTable>,
    tenant: &TenantId,
    key: &str,
    hash: &str,
    seen: &Row,
    owner: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<bool, Error> {
    let now_ms = now.timestamp_millis();
    // The statement checks the previous owner and the lapsed lease itself:
    // a renewal that landed after our read wins (see `ClaimTable::take_over`).
    let updated = db
        .take_over(
            tenant,
            key,
            PENDING,
            TakeOver {
                owner,
                lease_until: (now + LEASE).timestamp_millis(),
                request_hash: hash,
                now: now_ms,
                expires_at: (now + RETENTION).timestamp_millis(),
                seen_owner: seen.owner.as_deref().unwrap_or(""),
                seen_created_at: seen.created_at,
                default_lease_ms: LEASE.num_milliseconds(),
            },
        )
        .await?;
    Ok(updated == 1)
}

/// Moves the lease of `owner`'s claim forward every `RENEW_EVERY` until the
/// task is aborted (the request ended) or the claim is found to be someone
/// else's. A failed renewal is retried on the next tick: the lease has two
/// more renewals' worth of time left.
async fn keep_alive(
    db: Arc<dyn ClaimTable>,
    clock: Clock,
    tenant: TenantId,
    key: String,
    owner: String,
    leased_at: chrono::DateTime<chrono::Utc>,
) {
    let mut renewed = leased_at;
    let mut tick = tokio::time::interval(RENEW_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = clock.now();
        if now - renewed < RENEW_EVERY {
            continue;
        }
        let result = db
            .renew(
                &tenant,
                &key,
                &owner,
                PENDING,
                (now + LEASE).timestamp_millis(),
            )
            .await;
        match result {
            Ok(1) => renewed = now,
            Ok(_) => {
                // Taken over after this request stalled past its lease: the
                // request's `complete` will find it so and leave the row alone.
                tracing::warn!(
                    tenant = %tenant,
                    "an idempotency claim was taken over while its request was still running"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not renew an idempotency claim; retrying");
            }
        }
    }
}

/// Erases expired entries, and with them the sealed raw keys.
pub async fn purge_expired(store: &EventStore, clock: &Clock) -> Result<u64, Error> {
    let now = clock.now().timestamp_millis();
    store.claims().purge(now).await
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
