//! Expiry notices: `KeyExpiryNoticed` 14 days and 1 day before a key's
//! `expires_at`, and when it passes (webhooks send them as `key.expiring`
//! and `key.expired`). Exactly once per key, expiry and notice, across all
//! nodes and restarts: every node asks, the key's command decides (a notice
//! given already, not due, or about an expiry since changed is no event),
//! and the store's optimistic concurrency lets one of two racing nodes
//! append it.
//!
//! Each node looks, every interval, for the keys whose notice moment passed
//! since its last look (by the key list's index on `expires_at`), so a look
//! costs what became due, not every key; a node starting looks back one day.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyledger_domain::ExpiryNotice;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::error::Error;
use crate::service::KeyService;

/// How far back a starting node looks for notices it may have missed.
const LOOK_BACK: chrono::Duration = chrono::Duration::days(1);
/// Keys read per query.
const PAGE: i64 = 500;

pub struct ExpiryNotices {
    service: Arc<KeyService>,
    clock: Clock,
    node: String,
}

impl ExpiryNotices {
    pub fn new(service: Arc<KeyService>, clock: Clock, node: String) -> Self {
        Self {
            service,
            clock,
            node,
        }
    }

    /// Looks every `interval` until `stop`.
    pub async fn run(self, interval: Duration, stop: CancellationToken) {
        let start = self.clock.now() - LOOK_BACK;
        let mut since = [start; 3];
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let now = self.clock.now();
            for (notice, last) in ExpiryNotice::ALL.into_iter().zip(since.iter_mut()) {
                match self.notice_between(notice, *last, now).await {
                    Ok(()) => *last = now,
                    Err(e) => tracing::warn!(error = %e, "expiry notices will be looked for again"),
                }
            }
        }
    }

    /// Notices every key whose `notice` moment lies in (`from`, `to`].
    async fn notice_between(
        &self,
        notice: ExpiryNotice,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<(), Error> {
        let lead = notice.lead();
        let until = (to + lead).timestamp_millis();
        let mut after = ((from + lead).timestamp_millis(), String::new());
        loop {
            let keys = self
                .service
                .projections()
                .keys_expiring((after.0, &after.1), until, PAGE)
                .await?;
            for (id, tenant, expires_ms) in &keys {
                let Some(expires_at) = DateTime::from_timestamp_millis(*expires_ms) else {
                    continue;
                };
                self.service
                    .notice_expiry(&self.node, id, tenant, notice, expires_at)
                    .await?;
            }
            match keys.last() {
                Some((id, _, expires_ms)) if keys.len() as i64 == PAGE => {
                    after = (*expires_ms, id.clone());
                }
                _ => return Ok(()),
            }
        }
    }
}
