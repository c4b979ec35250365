//! A per-client-address limit on failed verifications: guessing keys from one
//! address gets 429 after `limit` failures in a minute, answered from memory
//! before any lookup. Fixed one-minute windows, one small entry per address.

use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

/// Addresses remembered before old windows are dropped.
const MAX_TRACKED: usize = 100_000;
const WINDOW_SECS: i64 = 60;

#[derive(Debug, Default)]
struct Window {
    start: AtomicI64,
    failures: AtomicU32,
}

#[derive(Debug)]
pub struct FailureLimiter {
    limit: u32,
    windows: papaya::HashMap<IpAddr, Window>,
}

impl FailureLimiter {
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            windows: papaya::HashMap::new(),
        }
    }

    /// True when `addr` used up its failures in the current window (never when
    /// the limit is 0, which disables it).
    pub fn blocked(&self, addr: IpAddr, now_secs: i64) -> bool {
        if self.limit == 0 {
            return false;
        }
        let map = self.windows.pin();
        map.get(&addr).is_some_and(|w| {
            w.start.load(Ordering::Relaxed) + WINDOW_SECS > now_secs
                && w.failures.load(Ordering::Relaxed) >= self.limit
        })
    }

    /// Counts a failed verification from `addr`.
    pub fn record_failure(&self, addr: IpAddr, now_secs: i64) {
        let map = self.windows.pin();
        if map.len() > MAX_TRACKED {
            map.retain(|_, w| w.start.load(Ordering::Relaxed) + WINDOW_SECS > now_secs);
        }
        let w = map.get_or_insert_with(addr, || Window {
            start: AtomicI64::new(now_secs),
            failures: AtomicU32::new(0),
        });
        let start = w.start.load(Ordering::Relaxed);
        if start + WINDOW_SECS <= now_secs
            && w.start
                .compare_exchange(start, now_secs, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            w.failures.store(0, Ordering::Relaxed);
        }
        w.failures.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_after_its_failures_until_the_window_ends() {
        let l = FailureLimiter::new(3);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        for _ in 0..3 {
            assert!(!l.blocked(a, 100));
            l.record_failure(a, 100);
        }
        assert!(l.blocked(a, 100));
        assert!(!l.blocked(b, 100));
        assert!(!l.blocked(a, 160));
        l.record_failure(a, 160);
        assert!(!l.blocked(a, 160));
    }
}
