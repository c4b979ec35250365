//! What every handler can reach.

use std::sync::Arc;

use crate::http::auth::TokenVerifier;
use crate::http::limit::FailureLimiter;
use crate::service::KeyService;

/// What every handler can reach. Cloned for every request, so it is one `Arc`:
/// one reference count to touch instead of one per field (the profile in
/// BENCHMARKS.md showed the per-field clones and drops on the hot path).
#[derive(Clone)]
pub struct AppState(Arc<SharedState>);

impl AppState {
    pub fn new(shared: SharedState) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

/// The node's shared parts, behind [`AppState`].
pub struct SharedState {
    pub service: Arc<KeyService>,
    /// Webhook endpoints and their deliveries.
    pub webhooks: Arc<crate::webhooks::Webhooks>,
    /// Leak reports and what they lead to.
    pub leaks: Arc<crate::leaks::Leaks>,
    /// Public leak reports per client address.
    pub leak_reports: Arc<FailureLimiter>,
    pub tokens: Arc<TokenVerifier>,
    pub max_body_bytes: usize,
    pub body_read_timeout: std::time::Duration,
    /// Guesses (malformed or unknown keys) per client address.
    pub failures: Arc<FailureLimiter>,
    /// Proxies whose forwarding headers name the client (`extract::ClientAddr`).
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Seals raw keys kept for idempotent replays.
    pub sealer: Arc<crate::idempotency::Sealer>,
    /// Renders the process-wide Prometheus recorder (`GET /metrics`).
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
}
