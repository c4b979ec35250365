//! The credit ledger of one key: the rules that keep "credits spent never
//! exceed credits granted" true across nodes and crashes.
//!
//! A node never spends from the ledger directly. It *reserves* a block (an
//! event in the key's usage stream, appended under optimistic concurrency, so
//! two nodes can never both take the same credits), spends it from memory,
//! and at each usage flush reports what it spent and *releases* the rest.
//! So at every moment
//!
//! ```text
//! granted = available + outstanding + spent(reported) + lost
//! ```
//!
//! where `outstanding` is what nodes hold and have not reported. A node that
//! dies holding a block never reports it: that block is lost to the balance
//! (never handed out twice) until the next set, decrement or refill writes it
//! off. Each of those that cannot keep the nodes' blocks starts a new
//! `epoch`: blocks of an older epoch are void, and reports about them change
//! nothing.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::limits::{Credits, Refill, MAX_CREDITS};

/// The ledger's state after an event: every event of the usage stream that
/// touches credits carries it, so a node reads one event to know the balance.
/// `projections check` recomputes it from the events' changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// False once credits were removed from the key: it has no balance.
    pub limited: bool,
    /// Credits no node holds.
    pub available: u64,
    /// Credits reserved by nodes in this epoch and not yet reported.
    pub outstanding: u64,
    pub epoch: u64,
    #[serde(default)]
    pub refill: Option<Refill>,
    /// Start of the refill period the balance belongs to.
    #[serde(default)]
    pub period_start: Option<DateTime<Utc>>,
}

/// A node's report on its block of one epoch: what it spent and what it
/// gives back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settlement {
    pub epoch: u64,
    pub spent: u64,
    pub released: u64,
}

/// What a management call does to the balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum CreditChange {
    /// The balance becomes `amount`.
    Set {
        amount: u64,
    },
    Increment {
        amount: u64,
    },
    /// The balance drops by `amount`, not below zero.
    Decrement {
        amount: u64,
    },
    /// New credits settings (PATCH): balance and refill.
    Configure {
        credits: Credits,
    },
    /// The key has no credit limit any more.
    Remove,
    /// A refill period began: the balance becomes the refill amount.
    Refill {
        period_start: DateTime<Utc>,
    },
}

impl Ledger {
    /// The ledger a key's create opens (its first credits settings).
    pub fn opening(credits: &Credits, at: DateTime<Utc>) -> Self {
        Self {
            limited: true,
            available: credits.remaining,
            outstanding: 0,
            epoch: 0,
            refill: credits.refill.clone(),
            period_start: credits.refill.as_ref().map(|r| r.period_start(at)),
        }
    }

    /// Credits not known to be spent: what nodes hold included.
    pub fn remaining(&self) -> u64 {
        self.available.saturating_add(self.outstanding)
    }

    /// The balance becomes `total`. Blocks nodes hold stay good when the
    /// new balance covers them (they become part of it); otherwise they are
    /// void from the next epoch on.
    fn reset(&mut self, total: u64) {
        let total = total.min(MAX_CREDITS);
        if total >= self.outstanding {
            self.available = total - self.outstanding;
        } else {
            self.epoch += 1;
            self.outstanding = 0;
            self.available = total;
        }
    }

    /// Applies a management change (or a refill) at `at`.
    pub fn change(current: Option<&Ledger>, change: &CreditChange, at: DateTime<Utc>) -> Ledger {
        let mut l = current.cloned().unwrap_or(Ledger {
            limited: false,
            available: 0,
            outstanding: 0,
            epoch: 0,
            refill: None,
            period_start: None,
        });
        match change {
            CreditChange::Set { amount } => {
                l.limited = true;
                l.reset(*amount);
            }
            CreditChange::Increment { amount } => {
                l.limited = true;
                l.available = l
                    .available
                    .saturating_add(*amount)
                    .min(MAX_CREDITS.saturating_sub(l.outstanding));
            }
            CreditChange::Decrement { amount } => {
                l.limited = true;
                l.reset(l.remaining().saturating_sub(*amount));
            }
            CreditChange::Configure { credits } => {
                l.limited = true;
                l.reset(credits.remaining);
                l.period_start = credits.refill.as_ref().map(|r| r.period_start(at));
                l.refill = credits.refill.clone();
            }
            CreditChange::Remove => {
                l = Ledger {
                    limited: false,
                    available: 0,
                    outstanding: 0,
                    epoch: l.epoch + 1,
                    refill: None,
                    period_start: None,
                };
            }
            CreditChange::Refill { period_start } => {
                // A new period: last period's blocks are void on every node
                // by its own clock, so none is carried over.
                l.epoch += 1;
                l.outstanding = 0;
                l.available = l.refill.as_ref().map_or(0, |r| r.amount);
                l.period_start = Some(*period_start);
            }
        }
        l
    }

    /// The refill due at `at`, if a new period began since the last one.
    pub fn refill_due(&self, at: DateTime<Utc>) -> Option<CreditChange> {
        let refill = self.refill.as_ref()?;
        let start = refill.period_start(at);
        (self.period_start.is_none_or(|p| p < start)).then_some(CreditChange::Refill {
            period_start: start,
        })
    }

    /// When blocks reserved now stop being spendable: the end of the refill
    /// period (none without a refill).
    pub fn period_end(&self) -> Option<DateTime<Utc>> {
        let refill = self.refill.as_ref()?;
        Some(refill.period_end(self.period_start?))
    }

    /// How many credits a reservation asking for at least `need` and at most
    /// `block` is granted: nothing when fewer than `need` are available,
    /// otherwise at most a quarter of what is available (but `need`), so
    /// blocks shrink as the balance nears zero and the last credits go one
    /// reservation at a time to whichever node asks.
    pub fn grant_for(&self, need: u64, block: u64) -> u64 {
        if !self.limited || self.available < need || self.available == 0 {
            return 0;
        }
        let quarter = self.available.div_ceil(4);
        quarter.min(block.max(need)).max(need).min(self.available)
    }

    /// Takes `amount` into a node's block.
    pub fn reserve(&mut self, amount: u64) {
        let amount = amount.min(self.available);
        self.available -= amount;
        self.outstanding += amount;
    }

    /// A node reports, for a block of `epoch`, `spent` credits spent and
    /// `released` returned. Reports about a void epoch change nothing.
    pub fn settle(&mut self, report: &Settlement) {
        let Settlement {
            epoch,
            spent,
            released,
        } = *report;
        if epoch != self.epoch || !self.limited {
            return;
        }
        let released = released.min(self.outstanding);
        self.outstanding -= released;
        self.available = self.available.saturating_add(released);
        self.outstanding = self.outstanding.saturating_sub(spent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::RefillInterval;
    use proptest::prelude::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn open(n: u64) -> Ledger {
        Ledger::opening(
            &Credits {
                remaining: n,
                refill: None,
            },
            at("2026-12-07T10:00:00Z"),
        )
    }

    #[test]
    fn blocks_shrink_as_the_balance_nears_zero() {
        let mut l = open(1000);
        assert_eq!(l.grant_for(1, 100), 100);
        l.reserve(100);
        let mut grants = Vec::new();
        while l.available > 0 {
            let g = l.grant_for(1, 100);
            grants.push(g);
            l.reserve(g);
        }
        assert!(grants.windows(2).all(|w| w[0] >= w[1]), "{grants:?}");
        assert_eq!(grants.last(), Some(&1));
        assert_eq!(l.grant_for(1, 100), 0);
        assert_eq!(l.outstanding, 1000);
    }

    #[test]
    fn a_cost_larger_than_the_balance_is_not_granted_in_part() {
        let l = open(5);
        assert_eq!(l.grant_for(6, 100), 0);
        assert_eq!(l.grant_for(5, 1), 5);
    }

    #[test]
    fn a_set_below_what_nodes_hold_voids_their_blocks() {
        let mut l = open(100);
        l.reserve(40);
        let kept = Ledger::change(
            Some(&l),
            &CreditChange::Set { amount: 50 },
            at("2026-12-07T10:00:00Z"),
        );
        assert_eq!((kept.available, kept.outstanding, kept.epoch), (10, 40, 0));
        let voided = Ledger::change(
            Some(&l),
            &CreditChange::Set { amount: 30 },
            at("2026-12-07T10:00:00Z"),
        );
        assert_eq!(
            (voided.available, voided.outstanding, voided.epoch),
            (30, 0, 1)
        );
        let mut after = voided.clone();
        after.settle(&Settlement {
            epoch: 0,
            spent: 10,
            released: 30,
        });
        assert_eq!(after, voided, "a report about a void block changes nothing");
    }

    #[test]
    fn a_refill_is_due_once_per_period() {
        let credits = Credits {
            remaining: 3,
            refill: Some(Refill {
                amount: 10,
                interval: RefillInterval::Daily,
                day_of_month: None,
            }),
        };
        let l = Ledger::opening(&credits, at("2026-12-07T23:59:59.999Z"));
        assert_eq!(l.refill_due(at("2026-12-07T23:59:59.999Z")), None);
        let due = l.refill_due(at("2026-12-08T00:00:00Z")).expect("a new day");
        let refilled = Ledger::change(Some(&l), &due, at("2026-12-08T00:00:00Z"));
        assert_eq!(refilled.available, 10);
        assert_eq!(refilled.epoch, 1);
        assert_eq!(refilled.period_end(), Some(at("2026-12-09T00:00:00Z")));
        assert_eq!(refilled.refill_due(at("2026-12-08T12:00:00Z")), None);
    }

    proptest! {
        /// Whatever nodes reserve, spend and release, and whatever is
        /// granted in between, what is spent never exceeds what was granted.
        #[test]
        fn spent_never_exceeds_granted(ops in proptest::collection::vec((0u8..5, 0u64..50), 1..200)) {
            let t = at("2026-12-07T10:00:00Z");
            let mut l = open(100);
            let mut granted: u64 = 100;
            let mut held: Vec<(u64, u64)> = Vec::new(); // (epoch, left)
            let mut spent: u64 = 0;
            for (op, n) in ops {
                match op {
                    0 => {
                        let g = l.grant_for(1, n.max(1));
                        l.reserve(g);
                        held.push((l.epoch, g));
                    }
                    1 => {
                        // Spend from the first block of the current epoch.
                        if let Some(b) = held.iter_mut().find(|b| b.0 == l.epoch && b.1 > 0) {
                            let s = n.min(b.1);
                            b.1 -= s;
                            spent += s;
                            l.settle(&Settlement { epoch: b.0, spent: s, released: 0 });
                        }
                    }
                    2 => {
                        for b in held.drain(..) {
                            l.settle(&Settlement { epoch: b.0, spent: 0, released: b.1 });
                        }
                    }
                    3 => {
                        l = Ledger::change(Some(&l), &CreditChange::Increment { amount: n }, t);
                        granted += n;
                    }
                    _ => {
                        // A set: what is granted from here is the new balance
                        // plus the blocks it lets nodes keep.
                        let before = l.epoch;
                        l = Ledger::change(Some(&l), &CreditChange::Set { amount: n }, t);
                        if l.epoch != before {
                            held.clear();
                        }
                        granted = spent + l.remaining();
                    }
                }
                prop_assert!(spent + l.remaining() <= granted);
                let holding: u64 = held.iter().filter(|b| b.0 == l.epoch).map(|b| b.1).sum();
                prop_assert!(holding <= l.outstanding);
            }
        }
    }
}
