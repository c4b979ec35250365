//! A per-client-address limit on key guessing: an address that presented
//! `limit` malformed or unknown keys (`NOT_FOUND`) in a minute gets 429 for the
//! next unknown ones until the minute ends. Only guesses count and only
//! guesses are refused: the key is looked up first (in memory), so a key that
//! exists (valid, or disabled, expired, in the wrong environment, short of a
//! permission) always gets its real answer, whatever its address did before.
//! Behind a proxy the address is the client's only when the proxy is trusted
//! (`--trusted-proxies`, see `extract::ClientAddr`). Fixed one-minute windows,
//! one small entry per address.

use std::net::IpAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};

/// Addresses remembered before old windows are dropped.
const MAX_TRACKED: usize = 100_000;
const WINDOW_SECS: i64 = 60;

#[derive(Debug, Default)]
struct Window {
    start: AtomicI64,
    guesses: AtomicU32,
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

    /// Called for a malformed or unknown key from `addr`: true when the address
    /// already used up its guesses in the current window (the request is then
    /// refused with 429 and not counted), else counts it and returns false.
    /// Never refuses when the limit is 0, which disables the limiter.
    pub fn refuse_guess(&self, addr: IpAddr, now_secs: i64) -> bool {
        if self.limit == 0 {
            return false;
        }
        let map = self.windows.pin();
        if map.len() > MAX_TRACKED {
            map.retain(|_, w| w.start.load(Ordering::Relaxed) + WINDOW_SECS > now_secs);
        }
        let w = map.get_or_insert_with(addr, || Window {
            start: AtomicI64::new(now_secs),
            guesses: AtomicU32::new(0),
        });
        let start = w.start.load(Ordering::Relaxed);
        if start + WINDOW_SECS <= now_secs
            && w.start
                .compare_exchange(start, now_secs, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            w.guesses.store(0, Ordering::Relaxed);
        }
        // Counts up to the limit and no further: a refused guess is not counted.
        w.guesses
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_refused_after_its_guesses_until_the_window_ends() {
        let l = FailureLimiter::new(3);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        for _ in 0..3 {
            assert!(!l.refuse_guess(a, 100));
        }
        assert!(l.refuse_guess(a, 100));
        assert!(l.refuse_guess(a, 159));
        assert!(!l.refuse_guess(b, 100));
        // A new window: three more.
        for _ in 0..3 {
            assert!(!l.refuse_guess(a, 160));
        }
        assert!(l.refuse_guess(a, 160));
    }

    #[test]
    fn a_zero_limit_never_refuses() {
        let l = FailureLimiter::new(0);
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        for _ in 0..1000 {
            assert!(!l.refuse_guess(a, 100));
        }
    }
}
