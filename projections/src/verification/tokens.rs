//! Admission tokens: what a limited key may admit without taking its
//! limiter's lock.
//!
//! At a million keys a limiter is a cold line of memory behind a lock, which
//! costs a verification two dependent cache misses (BENCHMARKS.md). So the
//! limiter moves part of what it holds (admissions of its key's own rate
//! limits and credits of its block) into one word in the key's slot, which a
//! verification has in cache already, and a verification spends from that
//! word with one compare-and-swap. Only when the word cannot pay (empty,
//! past its deadline, or short of the cost) does it take the limiter's lock.
//!
//! Why this stays exact: tokens are taken out of the limiter's windows and
//! block when they are put into the word, so they are admissions the limiter
//! already counted, and a window's share or a block is never larger than the
//! store set aside for this node. The word is only ever emptied with a swap,
//! under the limiter's lock, before anything that could make its tokens wrong
//! (a new window, a changed limit, a new credit epoch, a flush, a new table);
//! a spend either lands before that swap (and is counted as spent by it) or
//! fails and takes the lock. The deadline is the end of the window (or of the
//! credit period) the tokens came from, so no token outlives its window.
//!
//! Keys with an owner never get tokens: the owner's windows are shared with
//! other keys, which must see every admission at once.

use std::sync::atomic::{AtomicU64, Ordering};

/// A count that does not limit (the key has no rate limit, or no credits).
pub(super) const UNLIMITED: u64 = (1 << COUNT_BITS) - 1;
/// The most of one kind a word holds.
pub(super) const MAX_TOKENS: u64 = UNLIMITED - 1;
const COUNT_BITS: u32 = 12;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const DEADLINE_SHIFT: u32 = 2 * COUNT_BITS;
/// Deadlines count milliseconds from 2024-01-01T00:00:00Z in 40 bits, which
/// last until 2058; a time outside that range gets no tokens.
const EPOCH_MS: i64 = 1_704_067_200_000;
const DEADLINE_MAX: i64 = (1 << (64 - DEADLINE_SHIFT)) - 1;

/// What a word holds: requests and credits left, until `deadline_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tokens {
    /// Admissions left, or [`UNLIMITED`].
    pub requests: u64,
    /// Credits left, or [`UNLIMITED`].
    pub credits: u64,
    /// Milliseconds since the Unix epoch; the tokens are void from then on.
    pub deadline_ms: i64,
}

impl Tokens {
    /// The word for these tokens; `None` when the deadline cannot be held
    /// or a count does not fit (the caller then issues nothing).
    pub fn encode(self) -> Option<u64> {
        let deadline = self.deadline_ms.checked_sub(EPOCH_MS)?;
        if !(1..=DEADLINE_MAX).contains(&deadline)
            || self.requests > UNLIMITED
            || self.credits > UNLIMITED
        {
            return None;
        }
        Some(((deadline as u64) << DEADLINE_SHIFT) | (self.credits << COUNT_BITS) | self.requests)
    }

    /// The tokens of a word; `None` for the empty word.
    pub fn decode(word: u64) -> Option<Self> {
        if word == 0 {
            return None;
        }
        Some(Self {
            requests: word & COUNT_MASK,
            credits: (word >> COUNT_BITS) & COUNT_MASK,
            deadline_ms: EPOCH_MS + (word >> DEADLINE_SHIFT) as i64,
        })
    }

    /// What is left after admitting one request of `cost` at `now_ms`, if
    /// these tokens can pay for it. A cost of 0 still needs a credit left,
    /// as the limiter's own check does.
    fn after(self, now_ms: i64, cost: u64) -> Option<Self> {
        if now_ms >= self.deadline_ms {
            return None;
        }
        let requests = match self.requests {
            UNLIMITED => UNLIMITED,
            0 => return None,
            n => n - 1,
        };
        let credits = match self.credits {
            UNLIMITED => UNLIMITED,
            n if n < cost.max(1) => return None,
            n => n - cost,
        };
        Some(Self {
            requests,
            credits,
            ..self
        })
    }
}

/// Spends one admission of `cost` credits from `word` at `now_ms`; false
/// when the word cannot pay (the caller asks the limiter).
pub(super) fn spend(word: &AtomicU64, now_ms: i64, cost: u64) -> bool {
    // Relaxed: the word is the only memory these operations share, and
    // read-modify-writes of one location are totally ordered.
    let mut current = word.load(Ordering::Relaxed);
    loop {
        let Some(next) = Tokens::decode(current)
            .and_then(|t| t.after(now_ms, cost))
            .and_then(Tokens::encode)
        else {
            return false;
        };
        match word.compare_exchange_weak(current, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return true,
            Err(seen) => current = seen,
        }
    }
}

/// The slots a limiter's tokens may sit in: one generation of the index's
/// table. A limiter names where it put its tokens by generation and slot.
pub(super) trait TokenTable {
    fn generation(&self) -> u64;
    /// Whether a newer generation replaced this one (no tokens go into it then).
    fn retired(&self) -> bool;
    fn word(&self, slot: u32) -> Option<&AtomicU64>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_800_000_000_000;

    fn word(requests: u64, credits: u64) -> AtomicU64 {
        AtomicU64::new(
            Tokens {
                requests,
                credits,
                deadline_ms: NOW + 1_000,
            }
            .encode()
            .expect("fits"),
        )
    }

    #[test]
    fn spends_until_a_count_runs_out() {
        let w = word(3, UNLIMITED);
        assert!(spend(&w, NOW, 5));
        assert!(spend(&w, NOW, 5));
        assert!(spend(&w, NOW, 5));
        assert!(!spend(&w, NOW, 5), "three requests were all it held");
        let t = Tokens::decode(w.load(Ordering::Relaxed)).expect("tokens");
        assert_eq!((t.requests, t.credits), (0, UNLIMITED));

        let c = word(UNLIMITED, 10);
        assert!(spend(&c, NOW, 4));
        assert!(spend(&c, NOW, 6));
        assert!(!spend(&c, NOW, 0), "a cost of 0 still needs a credit");
        let c = word(UNLIMITED, 1);
        assert!(spend(&c, NOW, 0));
        assert!(spend(&c, NOW, 1));
        assert!(!spend(&c, NOW, 1));
    }

    #[test]
    fn nothing_is_spent_at_or_after_the_deadline_or_from_the_empty_word() {
        let w = word(10, 10);
        assert!(!spend(&w, NOW + 1_000, 1));
        assert!(spend(&w, NOW + 999, 1));
        assert!(!spend(&AtomicU64::new(0), NOW, 0));
    }

    #[test]
    fn times_outside_the_range_get_no_word() {
        let at = |deadline_ms| Tokens {
            requests: 1,
            credits: 1,
            deadline_ms,
        };
        assert_eq!(at(EPOCH_MS).encode(), None);
        assert_eq!(at(EPOCH_MS + DEADLINE_MAX + 1).encode(), None);
        assert!(at(EPOCH_MS + DEADLINE_MAX).encode().is_some());
    }

    proptest! {
        #[test]
        fn a_word_round_trips(
            requests in 0..=UNLIMITED,
            credits in 0..=UNLIMITED,
            deadline in 1..=DEADLINE_MAX,
        ) {
            let t = Tokens { requests, credits, deadline_ms: EPOCH_MS + deadline };
            let w = t.encode().expect("in range");
            prop_assert_eq!(Tokens::decode(w), Some(t));
        }

        /// Concurrent spenders never spend more than the word held.
        #[test]
        fn threads_never_spend_more_than_the_word_held(
            requests in 0..200u64,
            credits in 0..400u64,
            cost in 0..4u64,
        ) {
            let w = word(requests, credits);
            let admitted: u64 = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4)
                    .map(|_| s.spawn(|| (0..200).filter(|_| spend(&w, NOW, cost)).count() as u64))
                    .collect();
                handles.into_iter().map(|h| h.join().expect("spender")).sum()
            });
            let left = Tokens::decode(w.load(Ordering::Relaxed)).expect("tokens");
            prop_assert!(admitted <= requests);
            prop_assert_eq!(left.requests, requests - admitted);
            prop_assert_eq!(left.credits, credits - admitted * cost);
        }
    }
}
