//! Liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::http::state::AppState;

/// A node is ready while its projections are at most this many events behind.
const READY_MAX_LAG: i64 = 1000;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub ready: bool,
    pub store_reachable: bool,
    /// Events committed but not yet in this node's verification index.
    pub lag: Option<i64>,
    pub keys_in_index: usize,
    /// Set while this node's projections cannot apply the feed (the event
    /// after `checkpoint` fails): revocations stop reaching this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stalled: Option<Stalled>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Stalled {
    /// The position applied last.
    pub checkpoint: i64,
    /// Consecutive failed attempts.
    pub failures: u64,
    /// Seconds since the first of them.
    pub for_seconds: f64,
}

/// GET /healthz: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", operation_id = "health", responses((status = 200, body = Health)))]
pub async fn live() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// GET /readyz: the store answers and this node's projections are caught up
/// and not stuck (a tailer failing on an event is not ready, whatever the lag).
#[utoipa::path(get, path = "/readyz", tag = "health", operation_id = "ready",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let index = state.service.projections().index();
    let head = state.service.head().await.ok();
    let lag = head.map(|h| (h - index.checkpoint()).max(0));
    let stalled = state.service.tailer().stalled().map(|s| Stalled {
        checkpoint: s.checkpoint,
        failures: s.failures,
        for_seconds: s.since.elapsed().as_secs_f64(),
    });
    let ready = stalled.is_none() && lag.is_some_and(|l| l <= READY_MAX_LAG);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            ready,
            store_reachable: head.is_some(),
            lag,
            keys_in_index: index.len(),
            stalled,
        }),
    )
}
