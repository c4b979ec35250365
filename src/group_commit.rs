//! Group commit for creates. A create alone is a whole round on the store
//! (append, commit, numbering, projection catch-up), and concurrent creates
//! never touch the same key: so the ones that arrive together are written
//! together. Workers take whatever is queued (up to `MAX_BATCH`), append it in
//! one transaction, bring this node's projections up to it once, and answer
//! each create. Under no load a batch is one create and costs what it did
//! alone; under load the commit, the numbering and the projection work are
//! shared by the whole batch. On PostgreSQL the batch also numbers its own
//! rows and writes its projection rows in the same transaction
//! (`store::numbered_append`), and each create is answered from its
//! event instead of a read of the key list.

use std::sync::Arc;

use keyledger_domain::ApiKeyEvent;
use keyledger_projections::key_list::KeyRow;
use keyledger_projections::replay::created_row;
use keyledger_projections::{KeyledgerEvent, RecordedEvent};
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::error::Error;
use crate::store::{Appended, EventStore, NewKeysOutcome, PreparedCreate};
use crate::tailer::Tailer;

/// Most creates in one transaction: bounds a batch's latency and its size in
/// the store's statement buffers.
const MAX_BATCH: usize = 64;

/// One worker. Every batch holds the numbering lock until it commits, so
/// batches never commit in parallel; a second worker only splits the queue
/// into smaller batches that wait for each other's lock (PostgreSQL, 16
/// clients, one run each: 1 worker 5,604 creates/s, 2: 4,774, 3: 4,123,
/// 4: 3,549). The worker is busy only while its statement runs; creates that
/// arrive meanwhile make the next batch.
const WORKERS: usize = 1;

/// Creates waiting for a worker.
const QUEUE: usize = 1024;

/// A create's answer: its key as the key list holds it, when the batch was
/// written with known positions (the caller reads it otherwise).
type Created = Result<Option<KeyRow>, Error>;

struct Pending {
    create: PreparedCreate,
    /// Its event as the projections see it (position 0 until written).
    event: RecordedEvent,
    done: oneshot::Sender<Created>,
}

/// The queue of creates waiting to be written. Workers stop when it is dropped.
pub struct CreateQueue {
    sender: mpsc::Sender<Pending>,
}

impl CreateQueue {
    /// Starts the workers on the current runtime.
    pub fn start(store: Arc<EventStore>, tailer: Arc<Tailer>) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..WORKERS {
            tokio::spawn(work(receiver.clone(), store.clone(), tailer.clone()));
        }
        Self { sender }
    }

    /// Runs one create, prepared on the caller's task (`EventStore::prepare_new`:
    /// everything that does not need the batch, since the worker's time is
    /// what bounds throughput). Returns once this node's projections hold its
    /// event (`Ok(Some(view))` when the batch gave it, else `Ok(None)`: read
    /// it), or, when they could not catch up, `Ok(None)` all the same: the
    /// create is committed, and nothing committed is answered as failed.
    pub async fn create(&self, create: PreparedCreate, event: RecordedEvent) -> Created {
        let (done, outcome) = oneshot::channel();
        self.sender
            .send(Pending {
                create,
                event,
                done,
            })
            .await
            .map_err(|_| Error::internal("the create queue is closed"))?;
        outcome
            .await
            .map_err(|_| Error::internal("the create was dropped by its worker"))?
    }
}

async fn work(
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    store: Arc<EventStore>,
    tailer: Arc<Tailer>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let mut receiver = receiver.lock().await;
            if receiver.recv_many(&mut batch, MAX_BATCH).await == 0 {
                return;
            }
        }
        let mut creates = Vec::with_capacity(batch.len());
        let mut events = Vec::with_capacity(batch.len());
        let mut waiting = Vec::with_capacity(batch.len());
        for p in batch.drain(..) {
            creates.push(p.create);
            events.push(p.event);
            waiting.push(p.done);
        }
        // How many creates share a commit: what group commit buys (debug
        // level, for profiling: `RUST_LOG=keyledger::group_commit=debug`).
        tracing::debug!(creates = creates.len(), "group commit");
        let own = tailer.own_batch();
        let NewKeysOutcome { outcomes, appended } = store.execute_prepared(&creates).await;
        let Appended {
            after,
            through,
            numbered,
            projected,
        } = appended;
        // Numbered by the store: its events are at `after + 1 ..= through`.
        if numbered {
            for (event, position) in events.iter_mut().zip(after + 1..) {
                event.position = position;
            }
        }
        let mut outcomes: Vec<Created> = outcomes.into_iter().map(|o| o.map(|()| None)).collect();
        if outcomes.iter().any(Result::is_ok) {
            // Read-your-writes: answer once this node's projections hold
            // everything up to the batch's last event.
            let caught_up = if numbered {
                tailer.take_own(after, &events, through, projected).await
            } else {
                tailer.catch_up_to(through).await
            };
            match caught_up {
                Ok(()) => {
                    if numbered {
                        for (outcome, event) in outcomes.iter_mut().zip(&events) {
                            if let Ok(view) = outcome {
                                *view = view_of(event);
                            }
                        }
                    }
                }
                Err(e) => {
                    // Committed, but not visible here yet: each create is
                    // answered from its own event by the caller (`Ok(None)`
                    // plus its prepared view); the tailer applies it later.
                    tailer.wake();
                    tracing::warn!(error = %e, "creates committed, but this node's projections could not catch up");
                }
            }
        }
        drop(own);
        for (done, outcome) in waiting.into_iter().zip(outcomes) {
            // The caller may have gone away (client disconnected); its key
            // exists all the same, as with any command.
            let _ = done.send(outcome);
        }
    }
}

/// A created key as the key list holds it, built from its event by the key
/// list's own rule: the answer to its create without a query.
fn view_of(e: &RecordedEvent) -> Option<KeyRow> {
    match &e.event {
        KeyledgerEvent::Key(ApiKeyEvent::KeyCreated(c)) => Some(created_row(e, c)),
        _ => None,
    }
}
