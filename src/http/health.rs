//! Liveness and readiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use crate::http::AppState;

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
}

/// GET /healthz: the process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Health)))]
pub async fn live() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// GET /readyz: the store answers and this node's projections are caught up.
#[utoipa::path(get, path = "/readyz", tag = "health",
    responses((status = 200, body = Readiness), (status = 503, body = Readiness)))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let index = state.service.projections().index();
    let head = state.store.head().await.ok();
    let lag = head.map(|h| (h - index.checkpoint()).max(0));
    let ready = lag.is_some_and(|l| l <= READY_MAX_LAG);
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
        }),
    )
}
