//! Usage limits on the verification path: each limited key's rate-limit
//! windows and credit block, and each owner's shared windows, in memory.
//!
//! Nothing here waits on a store. A check either decides from what this node
//! holds (its share of each window, its block of credits) or names what it
//! needs ([`Need`]); the caller reserves it from the store (one round trip,
//! never under a lock), hands it back with `grant_*` and asks again. Shares
//! and blocks are only ever taken from the store, so whatever this node
//! admits was set aside for it there: a window admits at most `limit` across
//! all nodes, and credits spent never exceed credits granted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crate::sync::lock;

use chrono::{DateTime, Utc};
use keyledger_domain::{Ledger, RateLimit, Settlement};
use smallvec::SmallVec;

use super::tokens::{TokenTable, Tokens, MAX_TOKENS, UNLIMITED};

/// The longest a key's admission tokens stay spendable: a bound on how
/// stale they may be (a flush takes them back sooner).
const MAX_TOKEN_LIFE_MS: i64 = 60_000;

/// The most one reservation of a window asks for: a share large enough that
/// a busy key reserves a few times per window, small enough that an idle
/// node does not sit on much of it.
pub const WINDOW_SHARE: u64 = 1_000;
/// The most one credit reservation asks for.
pub const CREDIT_BLOCK: u64 = 10_000;

/// What a check needs from the store before it can answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// The owner's limits, not yet read on this node.
    Owner { owner_id: String },
    /// A share of a window of one of the key's (or its owner's) limits.
    Window(WindowNeed),
    /// Credits for the key: at least `need`, at most `block`.
    Credits {
        key_id: String,
        need: u64,
        block: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowNeed {
    /// The key id, or the owner's stream id.
    pub subject: String,
    pub owner: bool,
    pub name: String,
    pub window: i64,
    pub limit: u64,
    pub want: u64,
    /// When the window ends (ms since the epoch).
    pub ends_ms: i64,
}

/// Needs a check foresaw: a window's successor, or more credits before the
/// block runs out. The server reserves them in the background, so a busy
/// key rarely waits for the store on the request path. Each is asked for
/// once per window or block, so the queue stays short.
#[derive(Debug, Default)]
pub struct AheadQueue {
    needs: Mutex<Vec<Need>>,
    notify: tokio::sync::Notify,
}

impl AheadQueue {
    fn push(&self, need: Need) {
        lock(&self.needs).push(need);
        self.notify.notify_one();
    }

    /// Takes what was asked for, waiting until something is.
    pub async fn next_batch(&self) -> Vec<Need> {
        loop {
            let batch = std::mem::take(&mut *lock(&self.needs));
            if !batch.is_empty() {
                return batch;
            }
            self.notify.notified().await;
        }
    }
}

/// A rate limit's name, held inline (names are at most 32 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimitName {
    bytes: [u8; 32],
    len: u8,
}

impl LimitName {
    fn new(name: &str) -> Self {
        let mut bytes = [0; 32];
        let len = name.len().min(32);
        bytes[..len].copy_from_slice(&name.as_bytes()[..len]);
        Self {
            bytes,
            len: len as u8,
        }
    }

    pub fn as_str(&self) -> &str {
        // Written from a `&str` of at most 32 bytes (validated `[a-z0-9_-]`).
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

/// A rate limit as the index holds it: its name inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limit {
    name: LimitName,
    limit: u64,
    window_ms: u64,
}

impl Limit {
    fn of(r: &RateLimit) -> Self {
        Self {
            name: LimitName::new(&r.name),
            limit: r.limit,
            window_ms: r.window_ms,
        }
    }

    fn window_of(&self, at_ms: i64) -> i64 {
        keyledger_domain::limits::window_of(self.window_ms, at_ms)
    }

    fn window_end_ms(&self, window: i64) -> i64 {
        keyledger_domain::limits::window_end_ms(self.window_ms, window)
    }
}

/// A rate limit's state as an answer shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowReport {
    pub name: LimitName,
    pub limit: u64,
    /// What is left in the window as far as this node knows: its own share
    /// and what no node had taken at its last reservation.
    pub remaining: u64,
    pub reset_ms: i64,
}

/// The limits part of an answer (inline for up to two rate limits).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitReport {
    pub ratelimits: SmallVec<[WindowReport; 2]>,
    pub credits: Option<u64>,
}

impl LimitReport {
    /// The limit with the least left (the one a client must heed).
    pub fn tightest(&self) -> Option<&WindowReport> {
        self.ratelimits
            .iter()
            .min_by_key(|w| (w.remaining, w.reset_ms))
    }
}

/// A check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checked {
    Admit(LimitReport),
    RateLimited(LimitReport),
    UsageExceeded(LimitReport),
    Need(Need),
}

/// This node's state of one window of one limit.
#[derive(Debug, Clone, Default)]
struct Window {
    window: i64,
    /// Admissions left in this node's share.
    left: u64,
    /// This node's shares of the window so far.
    share: u64,
    /// Its shares of the window before (the most it may admit alone while
    /// the store is away: the shares of one window add up to at most `limit`).
    previous_share: u64,
    /// What no node had taken at this node's last reservation.
    unclaimed: u64,
    /// The store said the window is used up.
    exhausted: bool,
    /// The store was away and the previous share was used instead.
    fell_back: bool,
    /// A share of the window after this one, reserved ahead.
    next: Option<Ahead>,
    /// The next window's share was asked for (once per window).
    ahead_asked: bool,
}

/// A share of a window reserved before the window began.
#[derive(Debug, Clone, Copy, Default)]
struct Ahead {
    window: i64,
    granted: u64,
    unclaimed: u64,
}

impl Window {
    /// Moves to window `current`, if it is a later one.
    fn roll(&mut self, current: i64, limit: u64) {
        if self.window == current {
            return;
        }
        let previous = if self.window == current - 1 {
            self.share
        } else {
            0
        };
        // A share reserved ahead for this very window starts it.
        let ahead = self
            .next
            .filter(|a| a.window == current)
            .unwrap_or_default();
        *self = Window {
            window: current,
            previous_share: previous,
            left: ahead.granted,
            share: ahead.granted,
            unclaimed: if ahead.granted > 0 {
                ahead.unclaimed
            } else {
                limit
            },
            ..Window::default()
        };
    }
}

/// How long before its window ends a busy window's successor is reserved:
/// a tenth of the window, between 100 ms and 10 s. Every key's windows end
/// together (they are aligned to the epoch), so without this every busy key
/// would ask the store at the same instant, on the request path.
fn lead_ms(window_ms: u64) -> i64 {
    i64::try_from(window_ms / 10)
        .unwrap_or(i64::MAX)
        .clamp(100, 10_000)
}

/// Windows of a set of limits, one per limit, in the limits' order.
#[derive(Debug, Default)]
struct Windows {
    limits: SmallVec<[Limit; 1]>,
    windows: SmallVec<[Window; 1]>,
}

impl Windows {
    fn set_limits(&mut self, limits: &[RateLimit]) {
        // A limit kept unchanged keeps its window; a changed one starts afresh.
        let limits: SmallVec<[Limit; 1]> = limits.iter().map(Limit::of).collect();
        let mut windows = SmallVec::with_capacity(limits.len());
        for l in &limits {
            let kept = self
                .limits
                .iter()
                .position(|o| o == l)
                .and_then(|i| self.windows.get(i).cloned());
            windows.push(kept.unwrap_or_default());
        }
        self.limits = limits;
        self.windows = windows;
    }

    /// Rolls every window to `now_ms`; the first limit without a share left
    /// decides: rate limited, or what to reserve.
    fn check(
        &mut self,
        now_ms: i64,
        subject: &str,
        owner: bool,
        ahead: &AheadQueue,
    ) -> Option<Result<(), Need>> {
        for (l, w) in self.limits.iter().zip(self.windows.iter_mut()) {
            let current = l.window_of(now_ms);
            w.roll(current, l.limit);
            if w.left > 0 {
                let end = l.window_end_ms(current);
                if !w.ahead_asked && now_ms >= end - lead_ms(l.window_ms) {
                    w.ahead_asked = true;
                    ahead.push(Need::Window(WindowNeed {
                        subject: subject.to_string(),
                        owner,
                        name: l.name.as_str().to_string(),
                        window: current + 1,
                        limit: l.limit,
                        want: want_share(l.limit).max(w.share.min(WINDOW_SHARE)),
                        ends_ms: l.window_end_ms(current + 1),
                    }));
                }
                continue;
            }
            if w.exhausted {
                return Some(Ok(()));
            }
            return Some(Err(Need::Window(WindowNeed {
                subject: subject.to_string(),
                owner,
                name: l.name.as_str().to_string(),
                window: current,
                limit: l.limit,
                want: want_share(l.limit),
                ends_ms: l.window_end_ms(current),
            })));
        }
        None
    }

    fn take_one(&mut self) {
        for w in &mut self.windows {
            w.left = w.left.saturating_sub(1);
        }
    }

    /// Each limit's state; `held` names admissions of some windows that sit
    /// in the key's tokens (its windows, and what is left of them).
    fn report(&self, out: &mut SmallVec<[WindowReport; 2]>, held: Option<(&[i64], u64)>) {
        for (i, (l, w)) in self.limits.iter().zip(&self.windows).enumerate() {
            let tokens = match held {
                Some((windows, left)) if windows.get(i) == Some(&w.window) => left,
                _ => 0,
            };
            out.push(WindowReport {
                name: l.name,
                limit: l.limit,
                remaining: w
                    .left
                    .saturating_add(tokens)
                    .saturating_add(w.unclaimed)
                    .min(l.limit),
                reset_ms: l.window_end_ms(w.window),
            });
        }
    }

    fn grant(&mut self, need: &WindowNeed, granted: u64, taken: u64) {
        if let Some(w) = self.find_before(need) {
            let a = w.next.get_or_insert(Ahead {
                window: need.window,
                granted: 0,
                unclaimed: 0,
            });
            if a.window == need.window {
                a.granted += granted;
                a.unclaimed = need.limit.saturating_sub(taken);
            }
            return;
        }
        if let Some(w) = self.find(need) {
            w.left += granted;
            w.share += granted;
            w.unclaimed = need.limit.saturating_sub(taken);
            if granted == 0 {
                w.exhausted = true;
            }
        }
    }

    /// The store is away: admit this window what this node was given of the
    /// one before, once. False when it had nothing.
    fn fall_back(&mut self, need: &WindowNeed) -> bool {
        match self.find(need) {
            Some(w) if !w.fell_back && w.previous_share > 0 => {
                w.fell_back = true;
                w.left += w.previous_share;
                w.share += w.previous_share;
                true
            }
            _ => false,
        }
    }

    /// The window just before the one `need` is for (a share reserved ahead).
    fn find_before(&mut self, need: &WindowNeed) -> Option<&mut Window> {
        let i = self
            .limits
            .iter()
            .position(|l| l.name.as_str() == need.name)?;
        let w = self.windows.get_mut(i)?;
        (w.window + 1 == need.window).then_some(w)
    }

    fn find(&mut self, need: &WindowNeed) -> Option<&mut Window> {
        let i = self
            .limits
            .iter()
            .position(|l| l.name.as_str() == need.name)?;
        let w = self.windows.get_mut(i)?;
        (w.window == need.window).then_some(w)
    }
}

/// How much of a window to ask for: a tenth of the limit, between 1 and
/// [`WINDOW_SHARE`] (the store gives at most a quarter of what is left).
fn want_share(limit: u64) -> u64 {
    (limit / 10).clamp(1, WINDOW_SHARE)
}

/// This node's credits of one key.
#[derive(Debug, Default)]
struct Block {
    epoch: u64,
    left: u64,
    /// Spent from this block (its epoch).
    spent: u64,
    /// When the block's refill period ends (ms), if it has one.
    ends_ms: Option<i64>,
    /// What the reservations of this block granted.
    granted: u64,
    /// More was asked for ahead.
    ahead_asked: bool,
}

/// A key with limits, as this node holds it.
#[derive(Debug)]
pub struct LimitedKey {
    pub key_id: String,
    pub tenant: Arc<str>,
    state: Mutex<KeyState>,
}

#[derive(Debug, Default)]
struct KeyState {
    owner_id: Option<String>,
    windows: Windows,
    /// The ledger as last seen (an event, a reservation, or the create's
    /// opening balance): its epoch voids older blocks, and what it has
    /// available tells whether asking the store could help.
    ledger: Option<Ledger>,
    /// The usage-stream sequence of the event the ledger was last seen in
    /// (0: loaded from the key list); an older sighting changes nothing.
    ledger_seen: i64,
    block: Block,
    /// Credits spent since the last flush (void blocks' included).
    spent: u64,
    /// A report whose flush failed, to go with the next.
    pending: Option<Settlement>,
    /// The admission tokens this limiter put into its key's slot, if any.
    issued: Option<Issued>,
}

/// Tokens put into a slot: where, what, and what they were taken from.
#[derive(Debug, Clone)]
struct Issued {
    generation: u64,
    slot: u32,
    tokens: Tokens,
    /// The window each of the key's own limits was in (in the limits' order).
    windows: SmallVec<[i64; 1]>,
    /// The credit epoch of the block the credits came from.
    epoch: u64,
}

/// The slot a verification found its key in, where tokens may go.
#[derive(Clone, Copy)]
pub(super) struct TokenSlot<'a> {
    pub table: &'a dyn TokenTable,
    pub slot: u32,
}

impl KeyState {
    /// Takes back the tokens put into a slot of `table`'s generation: what
    /// is left returns to the windows and the block it came from (if they
    /// are still current), the rest counts as spent. Tokens in another
    /// generation stay out until that generation is swept (`reclaim_in`).
    fn reclaim(&mut self, table: &dyn TokenTable) {
        let Some(issued) = self.issued.take_if(|i| i.generation == table.generation()) else {
            return;
        };
        // No word (never the case for a slot it issued into): all spent,
        // which can only under-admit.
        let left = table
            .word(issued.slot)
            .and_then(|w| Tokens::decode(w.swap(0, Ordering::Relaxed)));
        let given = issued.tokens;
        if given.requests != UNLIMITED {
            let back = left.map_or(0, |t| t.requests);
            for (w, &window) in self.windows.windows.iter_mut().zip(&issued.windows) {
                if w.window == window {
                    w.left += back;
                }
            }
        }
        if given.credits != UNLIMITED {
            let back = left.map_or(0, |t| t.credits);
            let spent = given.credits.saturating_sub(back);
            self.spent += spent;
            if self.block.epoch == issued.epoch {
                self.block.spent += spent;
                self.block.left += back;
            }
        }
    }

    /// Moves what this node may admit of the key's own limits and credits
    /// into the slot's word, so verifications spend it without the lock
    /// (see `tokens`). Nothing for a key with an owner, while tokens are out
    /// elsewhere, or into a retired generation (its sweep may have passed).
    fn issue(&mut self, at: TokenSlot<'_>, now_ms: i64) -> Option<Tokens> {
        if self.owner_id.is_some() || self.issued.is_some() || at.table.retired() {
            return None;
        }
        let mut deadline = now_ms.saturating_add(MAX_TOKEN_LIFE_MS);
        let requests = if self.windows.limits.is_empty() {
            UNLIMITED
        } else {
            let mut n = MAX_TOKENS;
            for (l, w) in self.windows.limits.iter().zip(&self.windows.windows) {
                n = n.min(w.left);
                let end = l.window_end_ms(w.window);
                // Until the successor is asked for, the lock must be taken
                // once the window nears its end (`Windows::check` asks then).
                let until = if w.ahead_asked {
                    end
                } else {
                    end - lead_ms(l.window_ms)
                };
                deadline = deadline.min(until);
            }
            n
        };
        let credits = match self.ledger.as_ref().filter(|l| l.limited) {
            None => UNLIMITED,
            Some(ledger) => {
                if let Some(end) = self.block.ends_ms {
                    deadline = deadline.min(end);
                }
                // The last quarter stays behind the lock, which asks for the
                // next block when it is reached.
                let keep = if !self.block.ahead_asked && ledger.available > 0 {
                    self.block.granted / 4
                } else {
                    0
                };
                self.block.left.saturating_sub(keep).min(MAX_TOKENS)
            }
        };
        if requests == 0
            || credits == 0
            || (requests == UNLIMITED && credits == UNLIMITED)
            || deadline <= now_ms
        {
            return None;
        }
        let tokens = Tokens {
            requests,
            credits,
            deadline_ms: deadline,
        };
        let word = tokens.encode()?;
        // Empty unless tokens were lost track of; then none go in.
        at.table
            .word(at.slot)?
            .compare_exchange(0, word, Ordering::Relaxed, Ordering::Relaxed)
            .ok()?;
        if requests != UNLIMITED {
            for w in &mut self.windows.windows {
                w.left -= requests;
            }
        }
        if credits != UNLIMITED {
            self.block.left -= credits;
        }
        self.issued = Some(Issued {
            generation: at.table.generation(),
            slot: at.slot,
            tokens,
            windows: self.windows.windows.iter().map(|w| w.window).collect(),
            epoch: self.block.epoch,
        });
        Some(tokens)
    }

    /// The tokens left in the slot of `table` this limiter issued into.
    fn held(&self, table: &dyn TokenTable, slot: u32) -> Option<(&Issued, Tokens)> {
        let issued = self
            .issued
            .as_ref()
            .filter(|i| i.generation == table.generation() && i.slot == slot)?;
        let left = Tokens::decode(table.word(slot)?.load(Ordering::Relaxed))?;
        Some((issued, left))
    }
}

/// What one key's flush reports of its credits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditFlush {
    pub key_id: String,
    pub tenant: String,
    pub spent: u64,
    pub settled: Option<Settlement>,
}

impl LimitedKey {
    pub fn new(
        key_id: &str,
        tenant: Arc<str>,
        owner: Option<&str>,
        ratelimits: Vec<RateLimit>,
        ledger: Option<Ledger>,
    ) -> Self {
        let mut state = KeyState {
            owner_id: owner.map(|o| keyledger_domain::owner_stream_id(&tenant, o)),
            ledger,
            ..KeyState::default()
        };
        state.windows.set_limits(&ratelimits);
        Self {
            key_id: key_id.to_string(),
            tenant,
            state: Mutex::new(state),
        }
    }

    fn state(&self) -> MutexGuard<'_, KeyState> {
        lock(&self.state)
    }

    /// A new owner and new rate limits, each if given; tokens out in
    /// `table` come back first, as they were counted against the old ones.
    pub(super) fn configure(
        &self,
        owner: Option<Option<&str>>,
        ratelimits: Option<&[RateLimit]>,
        table: &dyn TokenTable,
    ) {
        let mut s = self.state();
        s.reclaim(table);
        if let Some(owner) = owner {
            s.owner_id = owner.map(|o| keyledger_domain::owner_stream_id(&self.tenant, o));
        }
        if let Some(r) = ratelimits {
            s.windows.set_limits(r);
        }
    }

    /// The ledger as the usage stream's event `sequence` (0: as loaded)
    /// left it. A block of an older epoch is void from now on (its spends
    /// stay counted), and so are tokens taken from it.
    pub(super) fn see_ledger(&self, ledger: Option<Ledger>, sequence: i64, table: &dyn TokenTable) {
        let mut s = self.state();
        if sequence != 0 && sequence <= s.ledger_seen {
            return;
        }
        s.ledger_seen = sequence;
        let epoch = ledger.as_ref().map(|l| l.epoch);
        let limited = ledger.as_ref().is_some_and(|l| l.limited);
        let was_limited = s.ledger.as_ref().is_some_and(|l| l.limited);
        if epoch != Some(s.block.epoch) || limited != was_limited {
            s.reclaim(table);
        }
        if epoch != Some(s.block.epoch) {
            s.block = Block::default();
        }
        s.ledger = ledger;
    }

    /// Takes back tokens this limiter put into `table`'s generation: the
    /// sweep of a generation being retired.
    pub(super) fn reclaim_in(&self, table: &dyn TokenTable) {
        self.state().reclaim(table);
    }

    /// The limits part of an answer given from the key's tokens (in the
    /// slot of `table` where its verification found it), read afterwards.
    pub(super) fn report_held(
        &self,
        table: &dyn TokenTable,
        slot: u32,
        now_ms: i64,
        owners: &Owners,
    ) -> LimitReport {
        let s = self.state();
        let owner = s.owner_id.as_ref().and_then(|id| owners.get(id));
        let owner_windows = owner.as_ref().map(|o| lock(&o.windows));
        report(&s, owner_windows.as_deref(), now_ms, s.held(table, slot))
    }

    /// Whether the key has anything to limit it.
    pub fn is_limited(&self) -> bool {
        let s = self.state();
        s.owner_id.is_some()
            || !s.windows.limits.is_empty()
            || s.ledger.as_ref().is_some_and(|l| l.limited)
    }

    /// The owner stream id, if the key has an owner.
    pub fn owner_id(&self) -> Option<String> {
        self.state().owner_id.clone()
    }

    /// The ledger this node would start from if the store holds none yet.
    pub fn opening(&self) -> Option<Ledger> {
        self.state().ledger.clone()
    }

    /// Decides one verification spending `cost` credits at `now`, for a
    /// key found at `at`, whose tokens could not pay for it: takes them
    /// back, decides, and puts what it can into the slot again.
    pub(super) fn check(
        &self,
        now: DateTime<Utc>,
        cost: u64,
        owners: &Owners,
        ahead: &AheadQueue,
        at: TokenSlot<'_>,
    ) -> Checked {
        let now_ms = now.timestamp_millis();
        let mut s = self.state();
        s.reclaim(at.table);
        let owner = match &s.owner_id {
            Some(id) => match owners.get(id) {
                Some(o) => Some(o),
                None => {
                    return Checked::Need(Need::Owner {
                        owner_id: id.clone(),
                    })
                }
            },
            None => None,
        };
        let mut owner_windows = owner.as_ref().map(|o| lock(&o.windows));
        let key_check = s.windows.check(now_ms, &self.key_id, false, ahead);
        let owner_check = match (&mut owner_windows, owner.as_ref()) {
            (Some(w), Some(o)) => w.check(now_ms, &o.id, true, ahead),
            _ => None,
        };
        match key_check.or(owner_check) {
            Some(Ok(())) => {
                return Checked::RateLimited(report(&s, owner_windows.as_deref(), now_ms, None))
            }
            Some(Err(need)) => return Checked::Need(need),
            None => {}
        }
        // Every limit admits: the verification counts against each, whatever
        // the credits say (the contract's order: RATE_LIMITED first).
        let ledger = s
            .ledger
            .as_ref()
            .filter(|l| l.limited)
            .map(|l| (l.epoch, l.available));
        if let Some((epoch, available)) = ledger {
            let need = cost.max(1);
            let block_live = s.block.ends_ms.is_none_or(|end| now_ms < end);
            if !block_live {
                s.block = Block {
                    epoch,
                    ..Block::default()
                };
            }
            if s.block.left < need {
                let refill_due = s
                    .ledger
                    .as_ref()
                    .is_some_and(|l| l.refill_due(now).is_some());
                if available < need && !refill_due {
                    s.windows.take_one();
                    if let Some(w) = &mut owner_windows {
                        w.take_one();
                    }
                    return Checked::UsageExceeded(report(
                        &s,
                        owner_windows.as_deref(),
                        now_ms,
                        None,
                    ));
                }
                return Checked::Need(Need::Credits {
                    key_id: self.key_id.clone(),
                    need,
                    block: CREDIT_BLOCK.max(need),
                });
            }
            s.block.left -= cost;
            s.block.spent += cost;
            s.spent += cost;
            // A quarter of the block left: the next one is reserved ahead.
            if !s.block.ahead_asked && s.block.left < s.block.granted / 4 && available > 0 {
                s.block.ahead_asked = true;
                ahead.push(Need::Credits {
                    key_id: self.key_id.clone(),
                    need: 1,
                    block: CREDIT_BLOCK.max(cost),
                });
            }
        }
        s.windows.take_one();
        if let Some(w) = &mut owner_windows {
            w.take_one();
        }
        let issued = s.issue(at, now_ms);
        let held = s.issued.as_ref().zip(issued);
        Checked::Admit(report(&s, owner_windows.as_deref(), now_ms, held))
    }

    /// Adds what the store gave for a window of the key's own limits.
    pub fn grant_window(&self, need: &WindowNeed, granted: u64, taken: u64) {
        self.state().windows.grant(need, granted, taken);
    }

    /// The store is away for a window of the key's own limits (see
    /// `Windows::fall_back`).
    pub fn fall_back(&self, need: &WindowNeed) -> bool {
        self.state().windows.fall_back(need)
    }

    /// Adds a reserved block, with the ledger as the reservation (the usage
    /// stream's event `sequence`) left it. A block of a new epoch replaces
    /// the old one, whose tokens out in `table` come back first.
    pub(super) fn grant_credits(
        &self,
        granted: u64,
        ledger: Ledger,
        sequence: i64,
        table: &dyn TokenTable,
    ) {
        let mut s = self.state();
        if s.block.epoch != ledger.epoch {
            s.reclaim(table);
        }
        if sequence <= s.ledger_seen {
            // A newer ledger was seen (a reset from elsewhere): the block's
            // epoch decides whether it still counts.
            let current = s.ledger.as_ref().map(|l| l.epoch);
            if current == Some(ledger.epoch) {
                if s.block.epoch != ledger.epoch {
                    s.block = Block {
                        epoch: ledger.epoch,
                        ..Block::default()
                    };
                }
                s.block.left += granted;
                s.block.granted += granted;
                s.block.ahead_asked = false;
                s.block.ends_ms = ledger.period_end().map(|e| e.timestamp_millis());
            } else {
                // Void already: it is given back (a no-op) at the next flush.
                s.pending = Some(Settlement {
                    epoch: ledger.epoch,
                    spent: 0,
                    released: granted,
                });
            }
            return;
        }
        if s.block.epoch != ledger.epoch {
            s.block = Block {
                epoch: ledger.epoch,
                ..Block::default()
            };
        }
        s.block.left += granted;
        s.block.granted += granted;
        s.block.ahead_asked = false;
        s.block.ends_ms = ledger.period_end().map(|e| e.timestamp_millis());
        s.ledger_seen = sequence;
        s.ledger = Some(ledger);
    }

    /// Takes over `old`'s state (windows, block, unflushed spends): the same
    /// key in a freshly loaded index. Its settings stay this one's.
    pub fn take_state_of(&self, old: &LimitedKey) {
        let mut from = old.state();
        let mut to = self.state();
        to.windows.windows = std::mem::take(&mut from.windows.windows);
        if to.windows.windows.len() != to.windows.limits.len() {
            to.windows.windows = to
                .windows
                .limits
                .iter()
                .map(|_| Window::default())
                .collect();
        }
        to.block = std::mem::take(&mut from.block);
        to.spent += std::mem::take(&mut from.spent);
        to.pending = from.pending.take().or(to.pending.take());
        if from.ledger_seen > to.ledger_seen {
            to.ledger_seen = from.ledger_seen;
            to.ledger = from.ledger.clone();
        }
    }

    /// Takes what a flush reports of this key's credits, if anything: the
    /// spends, and the block given back.
    pub(super) fn drain(&self, table: &dyn TokenTable) -> Option<CreditFlush> {
        let mut s = self.state();
        s.reclaim(table);
        let block = std::mem::take(&mut s.block);
        s.block.epoch = block.epoch;
        let mut settled = s.pending.take();
        if block.left > 0 || block.spent > 0 {
            let this = Settlement {
                epoch: block.epoch,
                spent: block.spent,
                released: block.left,
            };
            settled = Some(match settled {
                Some(p) if p.epoch == this.epoch => Settlement {
                    epoch: p.epoch,
                    spent: p.spent + this.spent,
                    released: p.released + this.released,
                },
                // A report on an older epoch changes nothing any more.
                _ => this,
            });
        }
        let spent = std::mem::take(&mut s.spent);
        if spent == 0 && settled.is_none() {
            return None;
        }
        Some(CreditFlush {
            key_id: self.key_id.clone(),
            tenant: self.tenant.to_string(),
            spent,
            settled,
        })
    }

    /// Puts back a report whose flush failed (its block stays given back:
    /// those credits wait, unspendable, for the next flush).
    pub fn restore(&self, flush: &CreditFlush) {
        let mut s = self.state();
        s.spent += flush.spent;
        if let Some(settled) = &flush.settled {
            s.pending = Some(match s.pending.take() {
                Some(p) if p.epoch == settled.epoch => Settlement {
                    epoch: p.epoch,
                    spent: p.spent + settled.spent,
                    released: p.released + settled.released,
                },
                Some(p) if p.epoch > settled.epoch => p,
                _ => settled.clone(),
            });
        }
    }
}

/// The limits part of an answer; `held` is the key's tokens, if any are out.
fn report(
    s: &KeyState,
    owner: Option<&Windows>,
    now_ms: i64,
    held: Option<(&Issued, Tokens)>,
) -> LimitReport {
    let mut ratelimits = SmallVec::new();
    let held_requests = held
        .filter(|(_, t)| t.requests != UNLIMITED)
        .map(|(i, t)| (i.windows.as_slice(), t.requests));
    s.windows.report(&mut ratelimits, held_requests);
    if let Some(o) = owner {
        o.report(&mut ratelimits, None);
    }
    let held_credits = held
        .filter(|(i, t)| t.credits != UNLIMITED && i.epoch == s.block.epoch)
        .map_or(0, |(_, t)| t.credits);
    let credits = s.ledger.as_ref().filter(|l| l.limited).map(|l| {
        let live = s.block.ends_ms.is_none_or(|end| now_ms < end);
        let block = if live {
            s.block.left.saturating_add(held_credits)
        } else {
            0
        };
        block.saturating_add(l.available)
    });
    LimitReport {
        ratelimits,
        credits,
    }
}

/// An owner's shared limits on this node.
#[derive(Debug)]
pub struct OwnerLimiter {
    /// The owner's stream id.
    pub id: String,
    /// The sequence of the owner event these limits come from (0: none;
    /// below it: not read yet). Written under the owners' map lock.
    sequence: AtomicI64,
    windows: Mutex<Windows>,
}

/// Owners' limits by stream id, read from the store the first time a key
/// of theirs is verified and kept current by their events.
#[derive(Debug, Default)]
pub struct Owners {
    map: RwLock<HashMap<String, Arc<OwnerLimiter>>>,
}

impl Owners {
    pub fn get(&self, id: &str) -> Option<Arc<OwnerLimiter>> {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .cloned()
    }

    /// The owner's limits as of its event `sequence`; an older sighting
    /// changes nothing.
    pub fn set(&self, id: &str, sequence: i64, ratelimits: Vec<RateLimit>) {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        let owner = map.entry(id.to_string()).or_insert_with(|| {
            Arc::new(OwnerLimiter {
                id: id.to_string(),
                sequence: AtomicI64::new(i64::MIN),
                windows: Mutex::default(),
            })
        });
        if owner.sequence.load(Ordering::Relaxed) >= sequence {
            return;
        }
        // In place: a limit kept unchanged keeps its window.
        lock(&owner.windows).set_limits(&ratelimits);
        owner.sequence.store(sequence, Ordering::Relaxed);
    }

    pub fn grant_window(&self, need: &WindowNeed, granted: u64, taken: u64) {
        if let Some(o) = self.get(&need.subject) {
            lock(&o.windows).grant(need, granted, taken);
        }
    }

    pub fn fall_back(&self, need: &WindowNeed) -> bool {
        self.get(&need.subject)
            .is_some_and(|o| lock(&o.windows).fall_back(need))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyledger_domain::Credits;
    use std::sync::atomic::AtomicU64;

    /// A table no tokens go into: the limiter decides every check itself.
    struct Untokened;

    impl TokenTable for Untokened {
        fn generation(&self) -> u64 {
            0
        }

        fn retired(&self) -> bool {
            true
        }

        fn word(&self, _slot: u32) -> Option<&AtomicU64> {
            None
        }
    }

    const NO: TokenSlot<'static> = TokenSlot {
        table: &Untokened,
        slot: 0,
    };

    /// One generation's slots, as the index gives a limiter.
    struct Slots {
        generation: u64,
        retired: bool,
        words: [AtomicU64; 2],
    }

    impl TokenTable for Slots {
        fn generation(&self) -> u64 {
            self.generation
        }

        fn retired(&self) -> bool {
            self.retired
        }

        fn word(&self, slot: u32) -> Option<&AtomicU64> {
            self.words.get(slot as usize)
        }
    }

    fn slots(generation: u64) -> Slots {
        Slots {
            generation,
            retired: false,
            words: Default::default(),
        }
    }

    /// The start of a minute in 2027 (tokens hold times from 2024 on).
    const T0: i64 = 1_800_000_000_000;

    fn held(table: &Slots) -> Option<Tokens> {
        Tokens::decode(table.words[0].load(Ordering::Relaxed))
    }

    /// A key with 100 a minute and 1,000 credits, given a share of 50 and
    /// a block of 40, admitted once at slot 0 of `table`.
    fn admitted_once(table: &Slots) -> LimitedKey {
        let owners = Owners::default();
        let k = key(vec![limit(100, 60_000)], Some(1_000));
        let at = TokenSlot { table, slot: 0 };
        let need = need_window(k.check(t(T0), 1, &owners, &AheadQueue::default(), at));
        k.grant_window(&need, 50, 50);
        let mut ledger = k.opening().expect("ledger");
        ledger.reserve(40);
        k.grant_credits(40, ledger, 1, table);
        assert!(matches!(
            k.check(t(T0), 1, &owners, &AheadQueue::default(), at),
            Checked::Admit(_)
        ));
        k
    }

    #[test]
    fn an_admission_moves_tokens_into_the_slot_and_a_flush_settles_them_exactly() {
        let table = slots(1);
        let k = admitted_once(&table);
        // 49 of the share; 39 of the block less the quarter kept behind the
        // lock; until the window's last tenth, when its successor is asked for.
        assert_eq!(
            held(&table),
            Some(Tokens {
                requests: 49,
                credits: 29,
                deadline_ms: T0 + 54_000,
            })
        );
        for _ in 0..5 {
            assert!(super::super::tokens::spend(&table.words[0], T0 + 10, 1));
        }
        let report = k.report_held(&table, 0, T0 + 10, &Owners::default());
        // 44 in the slot and 50 no node took; 10 + 24 in the block and slot
        // and 960 in the ledger.
        assert_eq!(report.ratelimits[0].remaining, 94);
        assert_eq!(report.credits, Some(994));
        let flush = k.drain(&table).expect("a report");
        assert_eq!(flush.spent, 6);
        assert_eq!(
            flush.settled,
            Some(Settlement {
                epoch: 0,
                spent: 6,
                released: 34,
            })
        );
        assert_eq!(held(&table), None, "the flush took the tokens back");
    }

    #[test]
    fn tokens_end_before_their_window_and_a_new_epoch_or_limit_voids_them() {
        let table = slots(1);
        let k = admitted_once(&table);
        assert!(!super::super::tokens::spend(
            &table.words[0],
            T0 + 54_000,
            1
        ));
        // A credit set elsewhere (a new epoch): the slot's credits are void.
        let mut reset = k.opening().expect("ledger");
        reset.epoch += 1;
        reset.available = 3;
        reset.outstanding = 0;
        k.see_ledger(Some(reset), 5, &table);
        assert_eq!(held(&table), None);
        let k = admitted_once(&table);
        k.configure(None, Some(&[limit(2, 60_000)]), &table);
        assert_eq!(held(&table), None, "tokens of the old limit are void");
    }

    #[test]
    fn no_tokens_go_into_a_retired_generation_or_to_a_key_with_an_owner() {
        let mut table = slots(1);
        table.retired = true;
        admitted_once(&table);
        assert_eq!(held(&table), None);

        let table = slots(2);
        let owners = Owners::default();
        let k = LimitedKey::new("key_o", "acme".into(), Some("cus"), vec![], None);
        let at = TokenSlot {
            table: &table,
            slot: 0,
        };
        let Checked::Need(Need::Owner { owner_id }) =
            k.check(t(T0), 1, &owners, &AheadQueue::default(), at)
        else {
            panic!("reads the owner first");
        };
        owners.set(&owner_id, 1, vec![limit(10, 60_000)]);
        let need = need_window(k.check(t(T0), 1, &owners, &AheadQueue::default(), at));
        owners.grant_window(&need, 10, 10);
        assert!(matches!(
            k.check(t(T0), 1, &owners, &AheadQueue::default(), at),
            Checked::Admit(_)
        ));
        assert_eq!(held(&table), None, "an owner's windows are shared");
    }

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(ms).expect("time")
    }

    fn limit(limit: u64, window_ms: u64) -> RateLimit {
        RateLimit {
            name: "r".into(),
            limit,
            window_ms,
        }
    }

    fn key(limits: Vec<RateLimit>, credits: Option<u64>) -> LimitedKey {
        LimitedKey::new(
            "key_1",
            "acme".into(),
            None,
            limits,
            credits.map(|n| {
                Ledger::opening(
                    &Credits {
                        remaining: n,
                        refill: None,
                    },
                    t(0),
                )
            }),
        )
    }

    fn need_window(c: Checked) -> WindowNeed {
        match c {
            Checked::Need(Need::Window(w)) => w,
            other => panic!("expected a window need, got {other:?}"),
        }
    }

    #[test]
    fn a_window_admits_what_was_granted_then_asks_again() {
        let owners = Owners::default();
        let k = key(vec![limit(10, 1000)], None);
        let need = need_window(k.check(t(1500), 1, &owners, &AheadQueue::default(), NO));
        assert_eq!((need.window, need.ends_ms, need.want), (1, 2000, 1));
        k.grant_window(&need, 2, 2);
        assert!(matches!(
            k.check(t(1500), 1, &owners, &AheadQueue::default(), NO),
            Checked::Admit(_)
        ));
        assert!(matches!(
            k.check(t(1999), 1, &owners, &AheadQueue::default(), NO),
            Checked::Admit(_)
        ));
        let again = need_window(k.check(t(1999), 1, &owners, &AheadQueue::default(), NO));
        k.grant_window(&again, 0, 10);
        assert!(matches!(
            k.check(t(1999), 1, &owners, &AheadQueue::default(), NO),
            Checked::RateLimited(_)
        ));
        // The window edge: the next window starts with nothing and asks.
        let next = need_window(k.check(t(2000), 1, &owners, &AheadQueue::default(), NO));
        assert_eq!(next.window, 2);
    }

    #[test]
    fn the_previous_share_is_all_a_node_admits_without_the_store() {
        let owners = Owners::default();
        let k = key(vec![limit(10, 1000)], None);
        let need = need_window(k.check(t(0), 1, &owners, &AheadQueue::default(), NO));
        k.grant_window(&need, 3, 3);
        for _ in 0..3 {
            assert!(matches!(
                k.check(t(10), 1, &owners, &AheadQueue::default(), NO),
                Checked::Admit(_)
            ));
        }
        let next = need_window(k.check(t(1000), 1, &owners, &AheadQueue::default(), NO));
        assert!(k.fall_back(&next));
        assert!(!k.fall_back(&next), "once per window");
        for _ in 0..3 {
            assert!(matches!(
                k.check(t(1001), 1, &owners, &AheadQueue::default(), NO),
                Checked::Admit(_)
            ));
        }
        assert!(matches!(
            k.check(t(1002), 1, &owners, &AheadQueue::default(), NO),
            Checked::Need(Need::Window(_))
        ));
        // Two windows on, nothing was granted the window before.
        let later = need_window(k.check(t(3000), 1, &owners, &AheadQueue::default(), NO));
        assert!(!k.fall_back(&later));
    }

    #[test]
    fn credits_are_spent_from_the_block_only() {
        let owners = Owners::default();
        let k = key(vec![], Some(5));
        let Checked::Need(Need::Credits { need, key_id, .. }) =
            k.check(t(0), 2, &owners, &AheadQueue::default(), NO)
        else {
            panic!("asks for credits");
        };
        assert_eq!((need, key_id.as_str()), (2, "key_1"));
        let mut ledger = k.opening().expect("ledger");
        ledger.reserve(3);
        k.grant_credits(3, ledger.clone(), 1, &Untokened);
        assert!(matches!(
            k.check(t(0), 2, &owners, &AheadQueue::default(), NO),
            Checked::Admit(_)
        ));
        // One left in the block, two available in the ledger: ask.
        assert!(matches!(
            k.check(t(0), 2, &owners, &AheadQueue::default(), NO),
            Checked::Need(Need::Credits { .. })
        ));
        ledger.reserve(2);
        k.grant_credits(2, ledger, 2, &Untokened);
        assert!(matches!(
            k.check(t(0), 3, &owners, &AheadQueue::default(), NO),
            Checked::Admit(_)
        ));
        // Nothing left anywhere: refused without asking the store.
        assert!(matches!(
            k.check(t(0), 1, &owners, &AheadQueue::default(), NO),
            Checked::UsageExceeded(_)
        ));
        let flush = k.drain(&Untokened).expect("a report");
        assert_eq!(flush.spent, 5);
        assert_eq!(
            flush.settled,
            Some(Settlement {
                epoch: 0,
                spent: 5,
                released: 0
            })
        );
        assert_eq!(k.drain(&Untokened), None);
    }

    #[test]
    fn a_new_epoch_voids_the_block() {
        let owners = Owners::default();
        let k = key(vec![], Some(10));
        let mut ledger = k.opening().expect("ledger");
        ledger.reserve(4);
        k.grant_credits(4, ledger.clone(), 1, &Untokened);
        assert!(matches!(
            k.check(t(0), 1, &owners, &AheadQueue::default(), NO),
            Checked::Admit(_)
        ));
        let mut reset = ledger;
        reset.epoch += 1;
        reset.available = 0;
        reset.outstanding = 0;
        k.see_ledger(Some(reset), 2, &Untokened);
        assert!(matches!(
            k.check(t(0), 1, &owners, &AheadQueue::default(), NO),
            Checked::UsageExceeded(_)
        ));
        let flush = k.drain(&Untokened).expect("the spend is still reported");
        assert_eq!(flush.spent, 1);
        assert_eq!(flush.settled, None);
    }

    #[test]
    fn an_owner_limit_is_shared_by_its_keys() {
        let owners = Owners::default();
        let a = LimitedKey::new("key_a", "acme".into(), Some("cus"), vec![], None);
        let b = LimitedKey::new("key_b", "acme".into(), Some("cus"), vec![], None);
        let Checked::Need(Need::Owner { owner_id }) =
            a.check(t(0), 1, &owners, &AheadQueue::default(), NO)
        else {
            panic!("reads the owner first");
        };
        owners.set(&owner_id, 1, vec![limit(2, 1000)]);
        let need = need_window(a.check(t(0), 1, &owners, &AheadQueue::default(), NO));
        assert!(need.owner);
        owners.grant_window(&need, 2, 2);
        assert!(matches!(
            a.check(t(0), 1, &owners, &AheadQueue::default(), NO),
            Checked::Admit(_)
        ));
        assert!(matches!(
            b.check(t(0), 1, &owners, &AheadQueue::default(), NO),
            Checked::Admit(_)
        ));
        let again = need_window(b.check(t(0), 1, &owners, &AheadQueue::default(), NO));
        owners.grant_window(&again, 0, 2);
        assert!(matches!(
            a.check(t(0), 1, &owners, &AheadQueue::default(), NO),
            Checked::RateLimited(_)
        ));
    }

    #[test]
    fn a_busy_window_reserves_its_successor_ahead_and_starts_with_it() {
        let owners = Owners::default();
        let ahead = AheadQueue::default();
        let k = key(vec![limit(10, 1000)], None);
        let need = need_window(k.check(t(1000), 1, &owners, &ahead, NO));
        k.grant_window(&need, 5, 5);
        assert!(matches!(
            k.check(t(1500), 1, &owners, &ahead, NO),
            Checked::Admit(_)
        ));
        assert!(lock(&ahead.needs).is_empty(), "not yet near the end");
        // The last 100 ms of the window: its successor is asked for, once.
        assert!(matches!(
            k.check(t(1950), 1, &owners, &ahead, NO),
            Checked::Admit(_)
        ));
        assert!(matches!(
            k.check(t(1960), 1, &owners, &ahead, NO),
            Checked::Admit(_)
        ));
        let asked = std::mem::take(&mut *lock(&ahead.needs));
        assert_eq!(asked.len(), 1);
        let Need::Window(next) = &asked[0] else {
            panic!("a window share");
        };
        assert_eq!((next.window, next.ends_ms), (2, 3000));
        k.grant_window(next, 3, 3);
        // The share reserved ahead is the next window's, and only its: this
        // window's two left are all this one admits.
        assert!(matches!(
            k.check(t(1970), 1, &owners, &ahead, NO),
            Checked::Admit(_)
        ));
        assert!(matches!(
            k.check(t(1975), 1, &owners, &ahead, NO),
            Checked::Admit(_)
        ));
        assert!(matches!(
            k.check(t(1980), 1, &owners, &ahead, NO),
            Checked::Need(_)
        ));
        for at in [2000, 2001, 2002] {
            assert!(matches!(
                k.check(t(at), 1, &owners, &ahead, NO),
                Checked::Admit(_)
            ));
        }
        assert!(matches!(
            k.check(t(2003), 1, &owners, &ahead, NO),
            Checked::Need(_)
        ));
    }

    #[test]
    fn a_block_running_low_asks_for_more_once() {
        let owners = Owners::default();
        let ahead = AheadQueue::default();
        let k = key(vec![], Some(100));
        let mut ledger = k.opening().expect("ledger");
        ledger.reserve(8);
        k.grant_credits(8, ledger.clone(), 1, &Untokened);
        for _ in 0..6 {
            assert!(matches!(
                k.check(t(0), 1, &owners, &ahead, NO),
                Checked::Admit(_)
            ));
        }
        assert!(lock(&ahead.needs).is_empty(), "a quarter is still left");
        assert!(matches!(
            k.check(t(0), 1, &owners, &ahead, NO),
            Checked::Admit(_)
        ));
        assert!(matches!(
            k.check(t(0), 1, &owners, &ahead, NO),
            Checked::Admit(_)
        ));
        let asked = std::mem::take(&mut *lock(&ahead.needs));
        assert!(
            matches!(asked.as_slice(), [Need::Credits { need: 1, .. }]),
            "{asked:?}"
        );
        ledger.reserve(20);
        k.grant_credits(20, ledger, 2, &Untokened);
        for _ in 0..20 {
            assert!(matches!(
                k.check(t(0), 1, &owners, &ahead, NO),
                Checked::Admit(_)
            ));
        }
    }
}
