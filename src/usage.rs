//! Write-behind usage: verification counts uses in memory; this task flushes them
//! as one `KeyUsageRecorded` per used key per interval, and once more at shutdown.
//! A crash loses at most one interval of counts; a failed flush puts the counts
//! back for the next one.

use std::sync::Arc;
use std::time::Duration;

use keyledger_domain::{KeyId, KeyUsage, RecordUsage};
use keyledger_projections::event::meta_keys;
use keyledger_projections::{DrainedUsage, VerificationIndex};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::error::Error;
use crate::store::{EventMetadata, EventStore};
use crate::tailer::Tailer;

/// Keys whose uses are written in one transaction.
const USAGE_BATCH: usize = 500;

/// The actor recorded on usage events.
pub const USAGE_ACTOR: &str = "keyledger:usage";

pub struct UsageFlusher {
    pub store: Arc<EventStore>,
    pub index: Arc<VerificationIndex>,
    pub tailer: Arc<Tailer>,
    pub clock: Clock,
}

impl UsageFlusher {
    /// Flushes every pending count; returns how many keys were flushed.
    pub async fn flush(&self) -> Result<usize, Error> {
        let drained = self.index.drain_usage();
        let mut flushed = 0;
        let mut failure = None;
        for chunk in drained.chunks(USAGE_BATCH) {
            if failure.is_some() {
                chunk.iter().for_each(|u| self.index.restore_usage(u));
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

    /// Writes one chunk in one transaction; if another node flushed one of its
    /// keys meanwhile, key by key instead (each retried on conflict). On an
    /// error, the uses not written are put back for the next flush.
    async fn flush_chunk(&self, chunk: &[DrainedUsage]) -> Result<usize, Error> {
        let restore = |from: usize| {
            chunk[from..]
                .iter()
                .for_each(|u| self.index.restore_usage(u))
        };
        let mut items = Vec::with_capacity(chunk.len());
        for usage in chunk {
            let event = match KeyUsage::record(RecordUsage {
                tenant: usage.tenant.clone(),
                count: usage.count,
                last_used_at: usage.last_used_at,
            }) {
                Ok(event) => event,
                Err(e) => {
                    restore(0);
                    return Err(e.into());
                }
            };
            let metadata = EventMetadata::from([
                (meta_keys::ACTOR.to_string(), USAGE_ACTOR.to_string()),
                (meta_keys::TENANT.to_string(), usage.tenant.clone()),
                (
                    meta_keys::OCCURRED_AT.to_string(),
                    self.clock.now().to_rfc3339(),
                ),
            ]);
            items.push((KeyId::from(usage.key_id.as_str()), event, metadata));
        }
        match self.store.record_usage_batch(&items).await {
            Ok(()) => return Ok(items.len()),
            Err(Error::Conflict) => {}
            Err(e) => {
                restore(0);
                return Err(e);
            }
        }
        for (i, (key_id, event, metadata)) in items.into_iter().enumerate() {
            if let Err(e) = self.store.record_usage(&key_id, event, metadata).await {
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
