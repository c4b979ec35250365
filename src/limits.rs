//! Reservations for usage limits: what a verification of a limited key needs
//! from the store before the index can answer it from memory (see
//! `keyledger_projections::verification::limits`), one round trip each.
//!
//! When the store is away: a rate limit admits, once per window, what this
//! node was given of the window before (the shares of one window add up to at
//! most its limit, so the nodes together still stay within it); credits fail
//! closed once the node's block is spent (503, never an unpaid `VALID`).

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use chrono::{DateTime, Utc};
use keyledger_domain::{KeyCreditsChanged, KeyCreditsReserved, KeyId, KeyUsageEvent, Ledger};
use keyledger_projections::event::meta_keys;
use keyledger_projections::{Need, VerificationIndex, WindowNeed};

use crate::error::Error;
use crate::store::windows::{Share, ShareRequest, WindowTable};
use crate::store::{EventMetadata, EventStore};

/// The actor of ledger events a node writes on its own (reservations and
/// refills).
pub const NODE_ACTOR: &str = "keyledger:node";

/// How long a window's row is kept after the window ends.
const WINDOW_ROW_KEPT_MS: i64 = 60_000;

/// Window shares taken in one transaction at most.
const SHARES_PER_COMMIT: usize = 500;

fn share_request(w: &WindowNeed) -> ShareRequest<'_> {
    ShareRequest {
        subject: &w.subject,
        name: &w.name,
        window: w.window,
        limit: w.limit,
        want: w.want,
        ends_ms: w.ends_ms.saturating_add(WINDOW_ROW_KEPT_MS),
    }
}

pub struct Reservations {
    store: Arc<EventStore>,
    shares: ShareBatcher,
    index: Arc<VerificationIndex>,
    /// This process, as its reservation events name it.
    node: String,
}

impl Reservations {
    pub fn new(store: Arc<EventStore>, index: Arc<VerificationIndex>, node: String) -> Self {
        Self {
            shares: ShareBatcher::start(store.windows()),
            store,
            index,
            node,
        }
    }
}

/// A share request waiting for its batch.
type ShareWait = (WindowNeed, oneshot::Sender<Result<Share, Error>>);

/// Takes window shares for every waiting request in one transaction (group
/// commit): after a window edge, every key idle at the edge asks for a share
/// at its next verification, and one commit (one log flush) each would queue
/// them behind each other.
struct ShareBatcher {
    queue: mpsc::UnboundedSender<ShareWait>,
}

impl ShareBatcher {
    fn start(windows: Arc<dyn WindowTable>) -> Self {
        let (queue, mut waiting) = mpsc::unbounded_channel::<ShareWait>();
        tokio::spawn(async move {
            while let Some(first) = waiting.recv().await {
                let mut batch = vec![first];
                while batch.len() < SHARES_PER_COMMIT {
                    match waiting.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let requests: Vec<ShareRequest<'_>> =
                    batch.iter().map(|(w, _)| share_request(w)).collect();
                let taken = windows.take_many(&requests).await;
                drop(requests);
                match taken {
                    Ok(shares) => {
                        for ((_, reply), share) in batch.into_iter().zip(shares) {
                            let _ = reply.send(Ok(share));
                        }
                    }
                    Err(e) => {
                        let unavailable = e.is_unavailable();
                        let text = e.to_string();
                        tracing::debug!(error = %e, shares = batch.len(), "a batch of window shares failed");
                        for (_, reply) in batch {
                            let each = if unavailable {
                                Error::StoreUnavailable(text.clone().into())
                            } else {
                                Error::internal(format!("taking a window share: {text}"))
                            };
                            let _ = reply.send(Err(each));
                        }
                    }
                }
            }
        });
        Self { queue }
    }

    async fn take(&self, need: WindowNeed) -> Result<Share, Error> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((need, reply))
            .map_err(|_| Error::internal("the share batcher stopped"))?;
        answer
            .await
            .map_err(|_| Error::internal("the share batcher dropped a request"))?
    }
}

impl Reservations {
    /// Makes the reservations verification foresaw (a busy window's
    /// successor, a block running low) until `stop`, one after another, so
    /// that busy keys rarely wait for the store when they are verified.
    /// A failure only means the verification that needs it asks itself.
    pub async fn reserve_ahead(
        self: Arc<Self>,
        clock: crate::clock::Clock,
        stop: tokio_util::sync::CancellationToken,
    ) {
        loop {
            let batch = tokio::select! {
                () = stop.cancelled() => return,
                batch = self.index.ahead().next_batch() => batch,
            };
            // Window shares all at once (they come in bursts, every busy
            // key's windows ending together; the batcher commits them
            // together); credit blocks one after another.
            let (windows, others): (Vec<Need>, Vec<Need>) = batch
                .into_iter()
                .partition(|n| matches!(n, Need::Window(_)));
            let mut shares = tokio::task::JoinSet::new();
            for need in windows {
                let me = self.clone();
                let now = clock.now();
                shares.spawn(async move { me.provide(need, now).await });
            }
            while let Some(done) = shares.join_next().await {
                if let Ok(Err(e)) = done {
                    tracing::debug!(error = %e, "a share reserved ahead failed; it is taken when needed");
                }
            }
            for need in others {
                if let Err(e) = self.provide(need, clock.now()).await {
                    tracing::debug!(error = %e, "a reservation ahead failed; it is made when needed");
                }
            }
        }
    }
}

impl Reservations {
    /// Gets what `need` names into the index.
    pub async fn provide(&self, need: Need, now: DateTime<Utc>) -> Result<(), Error> {
        match need {
            Need::Owner { owner_id } => {
                let (sequence, limits) = self.store.owner_limits(&owner_id).await?;
                self.index.owners().set(&owner_id, sequence, limits);
                Ok(())
            }
            Need::Window(w) => self.window(&w).await,
            Need::Credits {
                key_id,
                need,
                block,
            } => self.credits(&key_id, need, block, now).await,
        }
    }

    async fn window(&self, w: &WindowNeed) -> Result<(), Error> {
        match self.shares.take(w.clone()).await {
            Ok(share) => {
                self.grant_share(w, share);
                Ok(())
            }
            Err(e) if e.is_unavailable() => {
                let fell_back = if w.owner {
                    self.index.owners().fall_back(w)
                } else {
                    self.index.fall_back_window(w)
                };
                if fell_back {
                    tracing::warn!(error = %e, limit = %w.name, "store away: admitting this node's share of the last window");
                    Ok(())
                } else {
                    Err(e)
                }
            }
            Err(e) => Err(e),
        }
    }

    fn grant_share(&self, w: &WindowNeed, share: Share) {
        if w.owner {
            self.index
                .owners()
                .grant_window(w, share.granted, share.taken);
        } else {
            self.index.grant_window(w, share.granted, share.taken);
        }
    }

    /// Reserves a block of the key's credits: refills first if a new period
    /// began, then takes what the ledger grants (see `Ledger::grant_for`).
    async fn credits(
        &self,
        key_id: &str,
        need: u64,
        block: u64,
        now: DateTime<Utc>,
    ) -> Result<(), Error> {
        let Some(key) = self.index.limited_key(key_id) else {
            return Ok(());
        };
        let (opening, tenant) = (key.opening(), key.tenant.to_string());
        drop(key);
        let metadata = EventMetadata::from([
            (
                meta_keys::ACTOR.to_string(),
                format!("{NODE_ACTOR}:{}", self.node),
            ),
            (meta_keys::TENANT.to_string(), tenant.clone()),
            (meta_keys::OCCURRED_AT.to_string(), now.to_rfc3339()),
        ]);
        let appended = self
            .store
            .append_ledger(
                &KeyId::from(key_id),
                opening.as_ref(),
                &metadata,
                |before| Ok(reservation(&tenant, &self.node, before, need, block, now)),
            )
            .await?;
        let Some(ledger) = appended.ledger else {
            return Ok(());
        };
        let granted: u64 = appended
            .events
            .iter()
            .map(|e| match e {
                KeyUsageEvent::KeyCreditsReserved(r) => r.amount,
                _ => 0,
            })
            .sum();
        if granted > 0 {
            self.index
                .grant_credits(key_id, granted, ledger, appended.sequence);
        } else {
            self.index.see_ledger(key_id, ledger, appended.sequence);
        }
        Ok(())
    }
}

/// The events of one reservation on the ledger `before`: a refill if one is
/// due, then the block, if anything can be granted.
fn reservation(
    tenant: &str,
    node: &str,
    before: Option<&Ledger>,
    need: u64,
    block: u64,
    now: DateTime<Utc>,
) -> Vec<KeyUsageEvent> {
    let Some(mut ledger) = before.filter(|l| l.limited).cloned() else {
        return Vec::new();
    };
    let mut events = Vec::new();
    if let Some(refill) = ledger.refill_due(now) {
        ledger = Ledger::change(Some(&ledger), &refill, now);
        events.push(KeyUsageEvent::KeyCreditsChanged(KeyCreditsChanged {
            tenant: tenant.to_string(),
            change: refill,
            reason: Some("refill".into()),
            at: now,
            ledger: ledger.clone(),
        }));
    }
    let granted = ledger.grant_for(need, block);
    if granted > 0 {
        ledger.reserve(granted);
        events.push(KeyUsageEvent::KeyCreditsReserved(KeyCreditsReserved {
            tenant: tenant.to_string(),
            node: node.to_string(),
            amount: granted,
            epoch: ledger.epoch,
            at: now,
            ledger,
        }));
    }
    events
}
