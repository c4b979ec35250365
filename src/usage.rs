//! Write-behind usage: verification counts uses (and spends credits) in
//! memory; this task flushes them as one `KeyUsageRecorded` per used key per
//! interval, and once more at shutdown. Each flush also reports a limited
//! key's credit block (spent, and the rest given back to the ledger). A crash
//! loses at most one interval of counts, and the credit blocks the node held
//! stay withheld (never handed out twice); a failed flush puts everything
//! back for the next one.

use std::sync::Arc;
use std::time::Duration;

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use keyledger_domain::KeyId;
use keyledger_projections::event::meta_keys;
use keyledger_projections::{CreditFlush, DrainedRefusals, DrainedUsage, VerificationIndex};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::error::Error;
use crate::store::{EventMetadata, EventStore, UsageFlush};
use crate::tailer::Tailer;

/// Keys whose uses are written in one transaction.
const USAGE_BATCH: usize = 500;

/// The actor recorded on usage events.
pub const USAGE_ACTOR: &str = "keyledger:usage";

/// One key's share of a flush, with what to put back if it fails.
struct Pending {
    key_id: String,
    tenant: String,
    count: u64,
    last_used_at: DateTime<Utc>,
    uses: Vec<DrainedUsage>,
    refused: Option<DrainedRefusals>,
    credits: Option<CreditFlush>,
}

pub struct UsageFlusher {
    pub store: Arc<EventStore>,
    pub index: Arc<VerificationIndex>,
    pub tailer: Arc<Tailer>,
    pub clock: Clock,
}

impl UsageFlusher {
    /// Flushes every pending count and credit report; returns how many keys
    /// were flushed.
    pub async fn flush(&self) -> Result<usize, Error> {
        let items = self.pending();
        let mut flushed = 0;
        let mut failure = None;
        for chunk in items.chunks(USAGE_BATCH) {
            if failure.is_some() {
                chunk.iter().for_each(|u| self.restore(u));
                continue;
            }
            // A failed chunk has put back what it did not write.
            match self.flush_chunk(chunk).await {
                Ok(n) => flushed += n,
                Err(e) => failure = Some(e),
            }
        }
        if flushed > 0 {
            self.tailer.catch_up().await?;
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(flushed),
        }
    }

    /// Takes the uses counted and the credit reports of limited keys out of
    /// the index, one item per key.
    fn pending(&self) -> Vec<Pending> {
        let mut items: Vec<Pending> = Vec::new();
        let mut at: HashMap<String, usize> = HashMap::new();
        for u in self.index.drain_usage() {
            // Orphaned counts of one key may come more than once.
            match at.get(&u.key_id) {
                Some(&i) => {
                    let p = &mut items[i];
                    p.count += u.count;
                    p.last_used_at = p.last_used_at.max(u.last_used_at);
                    p.uses.push(u);
                }
                None => {
                    at.insert(u.key_id.clone(), items.len());
                    items.push(Pending {
                        key_id: u.key_id.clone(),
                        tenant: u.tenant.clone(),
                        count: u.count,
                        last_used_at: u.last_used_at,
                        uses: vec![u],
                        refused: None,
                        credits: None,
                    });
                }
            }
        }
        for r in self.index.drain_refusals() {
            match at.get(&r.key_id) {
                Some(&i) => items[i].refused = Some(r),
                None => {
                    at.insert(r.key_id.clone(), items.len());
                    items.push(Pending {
                        key_id: r.key_id.clone(),
                        tenant: r.tenant.clone(),
                        count: 0,
                        // Not a use: the key list keeps its last use; the
                        // usage buckets place the refusals by this time.
                        last_used_at: r.at,
                        uses: Vec::new(),
                        refused: Some(r),
                        credits: None,
                    });
                }
            }
        }
        let now = self.clock.now();
        for c in self.index.drain_limits() {
            match at.get(&c.key_id) {
                Some(&i) => items[i].credits = Some(c),
                None => {
                    at.insert(c.key_id.clone(), items.len());
                    items.push(Pending {
                        key_id: c.key_id.clone(),
                        tenant: c.tenant.clone(),
                        count: 0,
                        last_used_at: now,
                        uses: Vec::new(),
                        refused: None,
                        credits: Some(c),
                    });
                }
            }
        }
        items
    }

    fn restore(&self, p: &Pending) {
        p.uses.iter().for_each(|u| self.index.restore_usage(u));
        if let Some(r) = &p.refused {
            self.index.restore_refusals(r);
        }
        if let Some(c) = &p.credits {
            self.index.restore_limits(c);
        }
    }

    fn item(&self, p: &Pending) -> UsageFlush {
        let opening = self.index.limited_key(&p.key_id).and_then(|k| k.opening());
        UsageFlush {
            key_id: KeyId::from(p.key_id.as_str()),
            tenant: p.tenant.clone(),
            count: p.count,
            refused: p.refused.as_ref().map(|r| r.refused).unwrap_or_default(),
            last_used_at: p.last_used_at,
            spent: p.credits.as_ref().map_or(0, |c| c.spent),
            settled: p.credits.as_ref().and_then(|c| c.settled.clone()),
            opening,
            metadata: EventMetadata::from([
                (meta_keys::ACTOR.to_string(), USAGE_ACTOR.to_string()),
                (meta_keys::TENANT.to_string(), p.tenant.clone()),
                (
                    meta_keys::OCCURRED_AT.to_string(),
                    self.clock.now().to_rfc3339(),
                ),
            ]),
        }
    }

    /// Writes one chunk in one transaction; if another node flushed one of its
    /// keys meanwhile, key by key instead (each retried on conflict). On an
    /// error, what was not written is put back for the next flush.
    async fn flush_chunk(&self, chunk: &[Pending]) -> Result<usize, Error> {
        let restore = |from: usize| chunk[from..].iter().for_each(|p| self.restore(p));
        let items: Vec<UsageFlush> = chunk.iter().map(|p| self.item(p)).collect();
        match self.store.record_usage_batch(&items).await {
            Ok(()) => return Ok(items.len()),
            Err(Error::Conflict) => {}
            Err(e) => {
                restore(0);
                return Err(e);
            }
        }
        for (i, item) in items.iter().enumerate() {
            if let Err(e) = self.store.record_usage(item).await {
                // The first `i` are stored; only the rest go back.
                restore(i);
                return Err(e);
            }
        }
        Ok(chunk.len())
    }

    /// Flushes every `interval` until cancelled, then once more.
    pub async fn run(self, interval: Duration, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            if let Err(e) = self.flush().await {
                tracing::warn!(error = %e, "usage flush failed; counts kept for the next one");
            }
        }
        match self.flush().await {
            Ok(n) => tracing::info!(keys = n, "final usage flush done"),
            Err(e) => tracing::error!(error = %e, "final usage flush failed; counts lost"),
        }
    }
}
