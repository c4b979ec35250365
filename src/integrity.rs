//! `keyledger audit verify`: walks every stream's hash chain in the event store
//! and compares each event with the hash the audit log recorded when it applied
//! it, and names the first event (lowest position) that does not match.

use std::collections::HashMap;

use keyledger_domain::chain::{recorded_prev_hash, GENESIS};
use keyledger_projections::Projections;

use crate::error::Error;
use crate::store::EventStore;

const PAGE: i64 = 10_000;

/// An event whose stored form no longer matches its recorded hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub reason: String,
}

/// What a verification found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainReport {
    pub events: u64,
    /// Events written before tamper evidence existed (no link to check).
    pub unlinked: u64,
    pub first_broken: Option<Broken>,
}

struct Last {
    position: i64,
    sequence: i64,
    hash: String,
}

/// Verifies every chain; reads the feed and the audit log page by page.
pub async fn verify_chains(
    store: &EventStore,
    projections: &Projections,
) -> Result<ChainReport, Error> {
    let mut report = ChainReport::default();
    let mut last: HashMap<(String, String), Last> = HashMap::new();
    let mut recorded: HashMap<i64, Option<String>> = HashMap::new();
    let mut recorded_until = 0;
    let mut after = 0;
    let mut broken: Vec<Broken> = Vec::new();
    loop {
        let page = store.read_feed(after, PAGE).await?;
        let Some(end) = page.last().map(|e| e.position) else {
            break;
        };
        while recorded_until < end {
            let rows = projections.audit_hashes(recorded_until, PAGE).await?;
            let Some(max) = rows.last().map(|r| r.0) else {
                recorded_until = end;
                break;
            };
            recorded.extend(rows);
            recorded_until = max;
        }
        for event in page {
            report.events += 1;
            let hash = event.chain_hash();
            let stream = (event.aggregate_type.clone(), event.aggregate_id.clone());
            let broken_at = |position: i64, sequence: i64, reason: &str| Broken {
                position,
                aggregate_type: stream.0.clone(),
                aggregate_id: stream.1.clone(),
                sequence,
                reason: reason.to_string(),
            };
            if let Some(Some(stored)) = recorded.remove(&event.position) {
                if stored != hash {
                    broken.push(broken_at(
                        event.position,
                        event.sequence,
                        "content differs from the hash the audit log recorded",
                    ));
                }
            }
            match (recorded_prev_hash(&event.metadata), last.get(&stream)) {
                (None, _) => report.unlinked += 1,
                (Some(link), None) => {
                    if event.sequence == 1 && link != GENESIS {
                        broken.push(broken_at(
                            event.position,
                            event.sequence,
                            "first event of its stream does not link to genesis",
                        ));
                    }
                }
                (Some(link), Some(prev)) => {
                    if prev.sequence + 1 != event.sequence {
                        broken.push(broken_at(
                            event.position,
                            event.sequence,
                            "sequence gap before this event",
                        ));
                    } else if link != prev.hash {
                        // The successor recorded another hash: the predecessor changed.
                        broken.push(broken_at(
                            prev.position,
                            prev.sequence,
                            "content differs from the hash its successor recorded",
                        ));
                    }
                }
            }
            last.insert(
                stream,
                Last {
                    position: event.position,
                    sequence: event.sequence,
                    hash,
                },
            );
        }
        after = end;
    }
    report.first_broken = broken.into_iter().min_by_key(|b| b.position);
    Ok(report)
}
