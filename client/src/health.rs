//! Liveness and readiness (`GET /healthz`, `GET /readyz`).

use serde::{Deserialize, Serialize};

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`.
    pub status: String,
}

/// `GET /readyz`: answered with 200 when ready and 503 when not; both are an
/// `Ok` of [`Client::ready`](crate::Client::ready).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Readiness {
    pub ready: bool,
    #[serde(default)]
    pub store_reachable: bool,
    /// Events committed but not yet in this node's verification index;
    /// `None` when the store is unreachable.
    #[serde(default)]
    pub lag: Option<i64>,
    #[serde(default)]
    pub keys_in_index: u64,
    /// Present while the projections cannot apply the next event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stalled: Option<Stalled>,
}

/// Projections stuck on an event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stalled {
    /// The position applied last.
    pub checkpoint: i64,
    /// Consecutive failed attempts.
    pub failures: u64,
    /// Since the first of them.
    pub for_seconds: f64,
}
