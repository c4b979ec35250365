//! The tailer: reads the global feed from the projections' checkpoint and applies
//! it, in batches, in commit order. It runs after every local command (so the
//! command's response includes its effect), on wake-ups, and on a polling timer so
//! that events written by other processes arrive too.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keyledger_projections::{Projections, RecordedEvent};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::store::{EventStore, FeedListener};

/// Events read per round trip.
const BATCH: i64 = 1000;

pub struct Tailer {
    store: Arc<EventStore>,
    projections: Arc<Projections>,
    // One applier at a time per node: applying is idempotent, but serialising
    // avoids doing the same work twice.
    lock: Mutex<()>,
    wake: Notify,
    /// The key-list rebuild generation this node's index was loaded at.
    generation: std::sync::atomic::AtomicI64,
    /// Wake-ups put off while this node's own batches are in flight.
    own: OwnBatches,
    /// How far the wake-ups since the last catch-up asked the feed to be read.
    wanted: Wanted,
    /// Whether the last catch-up failed, and since when.
    health: Health,
}

/// Failures counted by `keyledger_tailer_failures_total`.
pub const TAILER_FAILURES_TOTAL: &str = "keyledger_tailer_failures_total";

/// Consecutive failures between two error-level log lines while the tailer
/// stays stuck (it retries every poll interval, 500 ms by default).
const LOG_EVERY: u64 = 20;

/// A tailer that cannot apply the feed: every node keeps answering
/// verifications from its index, so revocations stop reaching it. That must
/// never be quiet: each failure is counted, the first and then every
/// `LOG_EVERY`th is logged at error level, and `/readyz` answers 503 until a
/// catch-up succeeds again.
#[derive(Debug, Default)]
struct Health(std::sync::Mutex<Option<Stall>>);

/// The projections could not be brought forward.
#[derive(Debug, Clone)]
pub struct Stall {
    /// When the first of the consecutive failures happened.
    pub since: std::time::Instant,
    /// Consecutive failed catch-ups.
    pub failures: u64,
    /// The position applied last: the event after it is the one that fails.
    pub checkpoint: i64,
}

impl Health {
    fn failed(&self, checkpoint: i64, error: &Error) {
        ::metrics::counter!(TAILER_FAILURES_TOTAL).increment(1);
        let mut stall = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = stall.get_or_insert(Stall {
            since: std::time::Instant::now(),
            failures: 0,
            checkpoint,
        });
        if s.checkpoint != checkpoint {
            // Progress was made before this failure: a new stall.
            *s = Stall {
                since: std::time::Instant::now(),
                failures: 0,
                checkpoint,
            };
        }
        s.failures += 1;
        if s.failures % LOG_EVERY == 1 {
            tracing::error!(
                error = %error,
                error_detail = ?error,
                checkpoint,
                failures = s.failures,
                stuck_for_ms = s.since.elapsed().as_millis() as u64,
                "projections cannot apply the event after their checkpoint: this node \
                 learns of no revocation until this is fixed; /readyz answers 503"
            );
        }
    }

    fn succeeded(&self) {
        let mut stall = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(s) = stall.take() {
            tracing::info!(
                failures = s.failures,
                stuck_for_ms = s.since.elapsed().as_millis() as u64,
                "projections caught up again"
            );
        }
    }

    fn stalled(&self) -> Option<Stall> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

/// The highest position wake-ups asked for since the last catch-up began:
/// 0 when none, `i64::MAX` when one did not say (read whatever is there).
/// A notification that names a position this node has already applied (its
/// own group-commit batch, applied from memory) then starts no catch-up.
#[derive(Debug, Default)]
struct Wanted(AtomicI64);

impl Wanted {
    fn through(&self, position: i64) {
        self.0.fetch_max(position, Ordering::SeqCst);
    }

    fn anything(&self) {
        self.0.store(i64::MAX, Ordering::SeqCst);
    }

    /// Whether some wake-up asked for more than `checkpoint`.
    fn beyond(&self, checkpoint: i64) -> bool {
        self.0.load(Ordering::SeqCst) > checkpoint
    }

    /// Called as a catch-up starts: what it reads covers every wake-up so
    /// far, since each one's events were committed before it was sent. A
    /// wake-up after this raises the mark again and wakes the loop again.
    fn clear(&self) {
        self.0.store(0, Ordering::SeqCst);
    }
}

/// Batches this node is appending and will apply itself, and whether a
/// wake-up was put off meanwhile (see `Tailer::own_batch`).
#[derive(Debug, Default)]
struct OwnBatches {
    in_flight: AtomicUsize,
    deferred: AtomicBool,
}

impl OwnBatches {
    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
    }

    /// Ends a batch; true when it was the last in flight and a wake-up was
    /// put off meanwhile (the caller wakes the loop then).
    fn end(&self) -> bool {
        self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.deferred.swap(false, Ordering::SeqCst)
    }

    /// Whether a wake-up should wait for the batches in flight. Flag first,
    /// then count (`end` counts down, then takes the flag), so a wake-up is
    /// never both put off and forgotten.
    fn put_off(&self) -> bool {
        self.deferred.store(true, Ordering::SeqCst);
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return true;
        }
        self.deferred.store(false, Ordering::SeqCst);
        false
    }
}

/// Held by a group-commit worker from before its append until its batch is
/// applied: see `Tailer::own_batch`.
pub struct OwnBatch<'a> {
    tailer: &'a Tailer,
}

impl Drop for OwnBatch<'_> {
    fn drop(&mut self) {
        if self.tailer.own.end() {
            // Not `wake()`: the put-off wake-ups said how far they wanted the
            // feed read, and the batches just applied may cover that.
            self.tailer.wake.notify_one();
        }
    }
}

impl Tailer {
    pub fn new(store: Arc<EventStore>, projections: Arc<Projections>) -> Self {
        Self {
            store,
            projections,
            lock: Mutex::new(()),
            wake: Notify::new(),
            generation: std::sync::atomic::AtomicI64::new(0),
            own: OwnBatches::default(),
            wanted: Wanted::default(),
            health: Health::default(),
        }
    }

    /// Records the rebuild generation the index was loaded at (at start).
    pub async fn remember_generation(&self) -> Result<(), Error> {
        let g = self.projections.reload_generation().await?;
        self.generation
            .store(g, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Reloads the verification index when the key list was rebuilt since it was
    /// loaded. Verification keeps using the old index until the new one is in.
    pub async fn reload_if_rebuilt(&self) -> Result<bool, Error> {
        let g = self.projections.reload_generation().await?;
        if g == self.generation.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(false);
        }
        let _guard = self.lock.lock().await;
        self.projections.reload_index().await?;
        self.generation
            .store(g, std::sync::atomic::Ordering::Release);
        tracing::info!(
            generation = g,
            keys = self.projections.index().len(),
            "verification index reloaded after a rebuild"
        );
        Ok(true)
    }

    /// Returns once this node's projections include position `target`.
    ///
    /// Concurrent commands each wait for their own events, but only the first
    /// to take the lock reads and applies: it takes everything committed so
    /// far, and those queued behind it usually find their events applied and
    /// return without a query (one batch for many commands, not one each).
    /// Applies everything committed so far, so that a command's answer and
    /// the reads after it show its events. A failure here comes after the
    /// commit, and says so (`Error::Committed`).
    pub async fn show_committed(&self) -> Result<(), Error> {
        let head = self.store.head().await.map_err(Error::after_commit)?;
        self.catch_up_to(head).await.map_err(Error::after_commit)
    }

    pub async fn catch_up_to(&self, target: i64) -> Result<(), Error> {
        if self.projections.index().checkpoint() >= target {
            return Ok(());
        }
        let _guard = self.lock.lock().await;
        if self.projections.index().checkpoint() >= target {
            return Ok(());
        }
        self.catch_up_locked().await.map(|_| ())
    }

    /// Brings this node's projections to the end of a batch it appended itself
    /// (group commit; `events` are the batch, at positions `after + 1 ..=
    /// through`). When the SQL projections took the batch in its own
    /// transaction and the index stands right before it, the index takes the
    /// events from memory instead of reading them back.
    pub async fn take_own(
        &self,
        after: i64,
        events: &[RecordedEvent],
        through: i64,
        projected: bool,
    ) -> Result<(), Error> {
        let index = self.projections.index();
        if index.checkpoint() >= through {
            return Ok(());
        }
        let _guard = self.lock.lock().await;
        if index.checkpoint() >= through {
            return Ok(());
        }
        if projected && index.checkpoint() == after {
            for e in events {
                index.apply(e);
            }
            index.advance_to(through);
            return Ok(());
        }
        self.catch_up_locked().await.map(|_| ())
    }

    /// Applies everything committed so far; returns the number of events applied.
    pub async fn catch_up(&self) -> Result<usize, Error> {
        let _guard = self.lock.lock().await;
        self.catch_up_locked().await
    }

    async fn catch_up_locked(&self) -> Result<usize, Error> {
        let result = self.apply_pending().await;
        match &result {
            Ok(_) => self.health.succeeded(),
            Err(e) => self.health.failed(self.projections.index().checkpoint(), e),
        }
        result
    }

    /// Whether this node's projections are stuck, and since when: `/readyz`
    /// answers 503 while they are.
    pub fn stalled(&self) -> Option<Stall> {
        self.health.stalled()
    }

    async fn apply_pending(&self) -> Result<usize, Error> {
        let mut applied = 0;
        loop {
            let from = self.projections.resume_position().await?;
            let raws = self.store.read_feed(from, BATCH).await?;
            let Some(through) = raws.last().map(|r| r.position) else {
                return Ok(applied);
            };
            // A KurrentDB read may return more than asked, to finish a multi-event append.
            let full = raws.len() as i64 >= BATCH;
            let mut events = Vec::with_capacity(raws.len());
            for raw in raws {
                if let Some(e) = RecordedEvent::decode(raw)? {
                    events.push(e);
                }
            }
            self.projections.apply(&events, through).await?;
            applied += events.len();
            if !full {
                return Ok(applied);
            }
        }
    }

    /// Marks a batch this node is about to append and will apply itself
    /// (`take_own`). Its commit notifies every node, this one included; a
    /// catch-up woken by that would read back and decode the very events the
    /// worker is about to apply from memory, and hold the lock the worker
    /// needs. So wake-ups that arrive while own batches are in flight are put
    /// off until the last of them is applied (the guard's drop wakes the loop
    /// then), which also brings in any other node's events that came meanwhile.
    pub fn own_batch(&self) -> OwnBatch<'_> {
        self.own.begin();
        OwnBatch { tailer: self }
    }

    /// Asks the background loop to catch up now.
    pub fn wake(&self) {
        self.wanted.anything();
        self.wake.notify_one();
    }

    /// Asks the background loop to catch up to `position`, if this node's
    /// projections do not hold it yet (a notification that names the last
    /// position its commit gave).
    pub fn wake_through(&self, position: i64) {
        self.wanted.through(position);
        self.wake.notify_one();
    }

    /// Keeps the projections fresh until cancelled.
    pub async fn run(self: Arc<Self>, poll: Duration, stop: CancellationToken) {
        loop {
            let polled = tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => false,
                () = tokio::time::sleep(poll) => true,
            };
            if !polled
                && (!self.wanted.beyond(self.projections.index().checkpoint())
                    || self.own.put_off())
            {
                continue;
            }
            self.wanted.clear();
            // Events whose writer died between its commit and numbering them
            // (PostgreSQL) are numbered by whichever node polls next.
            if polled {
                if let Err(e) = self.store.sequence_pending().await {
                    tracing::warn!(error = %e, "numbering pending events failed; will retry");
                }
            }
            if let Err(e) = self.reload_if_rebuilt().await {
                tracing::warn!(error = %e, "verification index reload failed; will retry");
            }
            // A failed catch-up is logged (loudly while it persists) and
            // counted by `catch_up_locked`'s health record.
            let _ = self.catch_up().await;
        }
    }
}

/// The store tells the tailer of other nodes' events through this.
#[async_trait::async_trait]
impl FeedListener for Tailer {
    fn wake(&self) {
        Tailer::wake(self);
    }

    fn wake_through(&self, position: i64) {
        Tailer::wake_through(self, position);
    }

    async fn resume_position(&self) -> Result<i64, Error> {
        Ok(self.projections.resume_position().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::{OwnBatches, Wanted};

    #[test]
    fn a_wake_up_for_an_applied_position_needs_no_catch_up() {
        let wanted = Wanted::default();
        assert!(!wanted.beyond(0), "no wake-up yet");
        wanted.through(10);
        wanted.through(7);
        assert!(wanted.beyond(9), "position 10 is not applied at 9");
        assert!(!wanted.beyond(10), "everything asked for is applied");
        wanted.anything();
        assert!(
            wanted.beyond(1_000_000),
            "a wake-up that names nothing reads the feed"
        );
        wanted.clear();
        assert!(
            !wanted.beyond(0),
            "a catch-up covers the wake-ups before it"
        );
    }

    #[test]
    fn a_wake_up_during_own_batches_waits_for_the_last_of_them() {
        let own = OwnBatches::default();
        assert!(!own.put_off(), "nothing in flight: catch up now");
        own.begin();
        own.begin();
        assert!(own.put_off(), "put off while batches are in flight");
        assert!(!own.end(), "one batch still in flight");
        assert!(own.end(), "the last batch wakes the loop");
        own.begin();
        assert!(!own.end(), "the put-off wake-up is taken once");
    }
}
