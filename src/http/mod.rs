//! The HTTP API (axum). One file per resource; extractors do auth and parsing;
//! `error.rs` is the only place errors become status codes.

pub mod audit;
pub mod auth;
pub mod console;
pub mod error;
pub mod extract;
pub mod health;
pub mod keys;
pub mod limit;
pub mod metrics;
pub mod openapi;
pub mod proxy_auth;
pub mod router;
pub mod verify;

use std::sync::Arc;

use crate::service::KeyService;
use crate::store::EventStore;
use auth::TokenVerifier;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub service: Arc<KeyService>,
    pub tokens: Arc<TokenVerifier>,
    pub store: Arc<EventStore>,
    pub max_body_bytes: usize,
    pub body_read_timeout: std::time::Duration,
    /// Failed verifications per client address.
    pub failures: Arc<limit::FailureLimiter>,
    /// Seals raw keys kept for idempotent replays.
    pub sealer: Arc<crate::idempotency::Sealer>,
    /// Renders the process-wide Prometheus recorder (`GET /metrics`).
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}
