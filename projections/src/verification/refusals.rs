//! Refused verifications of known keys, counted by outcome until the next
//! usage flush writes them into the key's `KeyUsageRecorded` (`refused`).
//!
//! `VALID` answers are counted in the key's slot ([`super::slots`]), which is
//! the hot path and takes no lock. Refusals are counted here instead, in a
//! map sharded by key id: a refusal is the rarer answer, and keeping its
//! counters out of the slot keeps every slot at 128 bytes. A flood of
//! refusals of one key contends on one shard only, never on the others and
//! never on the `VALID` path.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use keyledger_domain::{Outcomes, Refusal};

use crate::sync::lock;

const SHARDS: usize = 16;

/// Refusals of one key taken out of the counters for flushing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainedRefusals {
    pub key_id: String,
    pub tenant: String,
    pub refused: Outcomes,
    /// When the latest of them was answered.
    pub at: DateTime<Utc>,
}

#[derive(Debug)]
struct Counted {
    tenant: String,
    refused: Outcomes,
    at_ms: i64,
}

/// The counters, one map per shard.
#[derive(Debug)]
pub struct RefusalCounts {
    shards: [Mutex<HashMap<Box<str>, Counted>>; SHARDS],
}

impl Default for RefusalCounts {
    fn default() -> Self {
        Self {
            shards: std::array::from_fn(|_| Mutex::default()),
        }
    }
}

/// Key ids end in random hex digits (UUIDv7): the last byte spreads them.
fn shard_of(key_id: &str) -> usize {
    key_id.as_bytes().last().map_or(0, |b| usize::from(*b)) % SHARDS
}

impl RefusalCounts {
    /// Counts one refusal of the key `key_id` of `tenant` at `now_ms`. Only
    /// a key's first refusal since the last flush allocates.
    pub fn count(&self, key_id: &str, tenant: &str, refusal: Refusal, now_ms: i64) {
        self.add(key_id, tenant, |o| o.add(refusal, 1), now_ms);
    }

    fn add(&self, key_id: &str, tenant: &str, f: impl FnOnce(&mut Outcomes), at_ms: i64) {
        let mut shard = lock(&self.shards[shard_of(key_id)]);
        if let Some(c) = shard.get_mut(key_id) {
            f(&mut c.refused);
            c.at_ms = c.at_ms.max(at_ms);
            return;
        }
        let mut refused = Outcomes::default();
        f(&mut refused);
        shard.insert(
            key_id.into(),
            Counted {
                tenant: tenant.to_string(),
                refused,
                at_ms,
            },
        );
    }

    /// Takes every count out.
    pub fn drain(&self) -> Vec<DrainedRefusals> {
        let mut drained = Vec::new();
        for shard in &self.shards {
            let taken = std::mem::take(&mut *lock(shard));
            drained.extend(taken.into_iter().map(|(key_id, c)| DrainedRefusals {
                key_id: key_id.into(),
                tenant: c.tenant,
                refused: c.refused,
                at: DateTime::from_timestamp_millis(c.at_ms).unwrap_or_default(),
            }));
        }
        drained
    }

    /// Puts back counts whose flush failed, so they go out with the next one.
    pub fn restore(&self, d: &DrainedRefusals) {
        self.add(
            &d.key_id,
            &d.tenant,
            |o| o.merge(&d.refused),
            d.at.timestamp_millis(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_counted_per_key_and_outcome_and_drained_once() {
        let counts = RefusalCounts::default();
        counts.count("key_a1", "acme", Refusal::Disabled, 1_000);
        counts.count("key_a1", "acme", Refusal::Disabled, 3_000);
        counts.count("key_a1", "acme", Refusal::RateLimited, 2_000);
        counts.count("key_b2", "beta", Refusal::Expired, 5_000);
        let mut drained = counts.drain();
        drained.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        assert_eq!(drained.len(), 2);
        assert_eq!(drained[0].key_id, "key_a1");
        assert_eq!(drained[0].refused.disabled, 2);
        assert_eq!(drained[0].refused.rate_limited, 1);
        assert_eq!(drained[0].refused.total(), 3);
        assert_eq!(drained[0].at.timestamp_millis(), 3_000);
        assert_eq!(drained[1].tenant, "beta");
        assert_eq!(drained[1].refused.expired, 1);
        assert!(counts.drain().is_empty(), "a drain takes the counts out");

        // A failed flush puts them back, merged with what came meanwhile.
        counts.count("key_a1", "acme", Refusal::Disabled, 4_000);
        counts.restore(&drained[0]);
        let again = counts.drain();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].refused.disabled, 3);
        assert_eq!(again[0].refused.rate_limited, 1);
        assert_eq!(again[0].at.timestamp_millis(), 4_000);
    }

    #[test]
    fn racing_threads_lose_no_refusal() {
        let counts = std::sync::Arc::new(RefusalCounts::default());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let counts = counts.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        let id = format!("key_{}", i % 7);
                        counts.count(&id, "acme", Refusal::InsufficientPermissions, t);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let total: u64 = counts.drain().iter().map(|d| d.refused.total()).sum();
        assert_eq!(total, 40_000);
    }
}
