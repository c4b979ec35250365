//! Rebuilding and checking the SQL projections from the events.
//!
//! `rebuild` replays every event up to the current head into fresh scratch tables
//! (folded in memory, then bulk-loaded), then swaps each in for the live table in
//! one transaction and sets its checkpoint to that head; the tailers of running
//! nodes apply whatever came after, as usual. Rebuilding the key list also bumps a
//! counter that makes every node reload its verification index from it, in the
//! background, swapping it in atomically: verification answers throughout.
//!
//! `check` folds the events up to each live checkpoint in memory and compares.

use std::time::Instant;

use keyledger_projections::audit::AuditEntry;
use keyledger_projections::audit::{AuditFilter, Order};
use keyledger_projections::replay::{audit_entry, diff_audit, diff_key_lists, KeyListFold};
use keyledger_projections::usage::{diff_usage, UsageFold};
use keyledger_projections::{Projections, RawEvent, Rebuilt as Table, RecordedEvent};
use tokio::sync::mpsc;

use crate::error::Error;
use crate::store::EventStore;

/// Events read per round trip.
const PAGE: i64 = 10_000;
/// Audit rows buffered before a bulk load.
const AUDIT_FLUSH: usize = 50_000;

/// Which projections to rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Which {
    /// The key list view.
    List,
    /// Every node's in-memory verification index (reloaded from a rebuilt key list).
    Verification,
    /// The audit log.
    Audit,
    /// The usage buckets.
    Usage,
    All,
}

impl Which {
    fn tables(self) -> Vec<Table> {
        match self {
            Self::List | Self::Verification => vec![Table::KeyList],
            Self::Audit => vec![Table::AuditLog],
            Self::Usage => vec![Table::Usage],
            Self::All => vec![Table::KeyList, Table::AuditLog, Table::Usage],
        }
    }
}

/// Receives progress: events done out of the total.
pub trait Progress {
    fn update(&self, done: u64, total: u64);
}

impl<F: Fn(u64, u64)> Progress for F {
    fn update(&self, done: u64, total: u64) {
        self(done, total)
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, PartialEq)]
pub struct RebuildReport {
    pub events: u64,
    pub position: i64,
    pub seconds: f64,
}

impl RebuildReport {
    pub fn events_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.events as f64 / self.seconds
        } else {
            self.events as f64
        }
    }
}

/// Reads decoded events after `after` up to `until`, a page at a time.
async fn page(
    store: &EventStore,
    after: i64,
    until: i64,
) -> Result<(Vec<RecordedEvent>, Option<i64>, u64), Error> {
    let raws = store.read_feed(after, PAGE).await?;
    let mut last = None;
    let mut seen = 0;
    let mut events = Vec::with_capacity(raws.len());
    for raw in raws {
        if raw.position > until {
            break;
        }
        last = Some(raw.position);
        seen += 1;
        if let Some(e) = RecordedEvent::decode(raw)? {
            events.push(e);
        }
    }
    Ok((events, last, seen))
}

/// Rebuilds the chosen projections while nodes keep serving.
///
/// Reading the feed, folding, and bulk-loading overlap: a reader future fetches
/// the next page and a writer future loads the previous batch while this one is
/// folded (the database works while we compute).
pub async fn rebuild(
    store: &EventStore,
    projections: &Projections,
    which: Which,
    progress: &dyn Progress,
) -> Result<RebuildReport, Error> {
    let started = Instant::now();
    let head = store.head().await?;
    let tables = which.tables();
    let suffix = format!("g{}", chrono::Utc::now().timestamp_millis());
    for t in &tables {
        projections.prepare_scratch(*t, &suffix).await?;
    }
    let with_keys = tables.contains(&Table::KeyList);
    let with_audit = tables.contains(&Table::AuditLog);
    let with_usage = tables.contains(&Table::Usage);
    let total = u64::try_from(head).unwrap_or(0);
    progress.update(0, total);

    let (page_tx, mut page_rx) = mpsc::channel::<Vec<RawEvent>>(4);
    let (audit_tx, mut audit_rx) = mpsc::channel::<Vec<AuditEntry>>(2);
    let reader = async move {
        let mut after = 0;
        loop {
            let mut raws = store.read_feed(after, PAGE).await?;
            raws.retain(|r| r.position <= head);
            let Some(last) = raws.last().map(|r| r.position) else {
                return Ok::<_, Error>(());
            };
            after = last;
            if page_tx.send(raws).await.is_err() {
                return Ok(());
            }
        }
    };
    let writer = async {
        while let Some(batch) = audit_rx.recv().await {
            projections.load_scratch_audit(&batch).await?;
        }
        Ok::<_, Error>(())
    };
    let folder = async move {
        let mut fold = KeyListFold::default();
        let mut buckets = UsageFold::default();
        let mut audit = Vec::with_capacity(AUDIT_FLUSH);
        let mut done = 0u64;
        while let Some(raws) = page_rx.recv().await {
            done += raws.len() as u64;
            for raw in raws {
                let Some(e) = RecordedEvent::decode(raw)? else {
                    continue;
                };
                if with_keys {
                    fold.apply(&e);
                }
                if with_audit {
                    audit.push(audit_entry(&e));
                }
                if with_usage {
                    buckets.apply(&e);
                }
            }
            if audit.len() >= AUDIT_FLUSH {
                let full = std::mem::replace(&mut audit, Vec::with_capacity(AUDIT_FLUSH));
                if audit_tx.send(full).await.is_err() {
                    break;
                }
            }
            progress.update(done, total);
        }
        if !audit.is_empty() {
            let _ = audit_tx.send(audit).await;
        }
        drop(audit_tx);
        Ok::<_, Error>((fold, buckets, done))
    };
    let (read, written, folded) = tokio::join!(reader, writer, folder);
    read?;
    written?;
    let (fold, buckets, done) = folded?;
    tracing::info!(seconds = started.elapsed().as_secs_f64(), "events replayed");
    if with_keys {
        projections.load_scratch_keys(&fold.into_rows()).await?;
        tracing::info!(seconds = started.elapsed().as_secs_f64(), "key list loaded");
    }
    if with_usage {
        let now_ms = chrono::Utc::now().timestamp_millis();
        let rows = buckets.into_rows(projections.usage_retention(), now_ms);
        projections.load_scratch_usage(&rows).await?;
        tracing::info!(seconds = started.elapsed().as_secs_f64(), "usage loaded");
    }
    for t in &tables {
        projections.swap_in(*t, head, &suffix).await?;
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            table = t.live(),
            "swapped in"
        );
    }
    Ok(RebuildReport {
        events: done,
        position: head,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Folds the events in memory and compares with the live tables; returns the
/// differences (empty when the projections are right).
pub async fn check(store: &EventStore, projections: &Projections) -> Result<Vec<String>, Error> {
    let mut diffs = Vec::new();

    // Key list: compare at the checkpoint its rows were read at.
    let (checkpoint, live_keys) = projections.key_list_snapshot().await?;
    let mut fold = KeyListFold::default();
    let mut after = 0;
    loop {
        let (events, last, _) = page(store, after, checkpoint).await?;
        let Some(last) = last else { break };
        events.iter().for_each(|e| fold.apply(e));
        after = last;
    }
    diffs.extend(diff_key_lists(fold.into_rows(), live_keys));

    // Usage buckets: compare at their checkpoint, within the retention.
    let (checkpoint, live_usage) = projections.usage_snapshot().await?;
    let mut buckets = UsageFold::default();
    let mut after = 0;
    loop {
        let (events, last, _) = page(store, after, checkpoint).await?;
        let Some(last) = last else { break };
        events.iter().for_each(|e| buckets.apply(e));
        after = last;
    }
    let retention = projections.usage_retention();
    let now_ms = chrono::Utc::now().timestamp_millis();
    diffs.extend(diff_usage(
        buckets.into_rows(retention, now_ms),
        live_usage,
        retention,
        now_ms,
    ));

    // Audit log: rows below its checkpoint never change, so compare page by page.
    let audit_checkpoint = projections.checkpoints().await?.audit_log;
    let mut after = 0;
    loop {
        let (events, last, _) = page(store, after, audit_checkpoint).await?;
        let Some(last) = last else { break };
        let live = projections
            .audit(&AuditFilter {
                after_position: Some(after),
                order: Order::Asc,
                limit: u32::try_from(PAGE).unwrap_or(u32::MAX),
                ..AuditFilter::default()
            })
            .await?;
        let mut live_rows: std::collections::HashMap<i64, _> = live
            .events
            .into_iter()
            .filter(|r| r.position <= last)
            .map(|r| (r.position, r))
            .collect();
        for e in &events {
            let want = audit_entry(e);
            let got = live_rows.remove(&want.position);
            diffs.extend(diff_audit(&want, got.as_ref()));
        }
        let mut extra: Vec<i64> = live_rows.into_keys().collect();
        extra.sort_unstable();
        diffs.extend(
            extra
                .into_iter()
                .map(|p| format!("audit_log: position {p} should not exist")),
        );
        after = last;
    }
    Ok(diffs)
}
