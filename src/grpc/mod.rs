//! keyledger's gRPC side (`serve --grpc-listen ADDR`): Envoy's external
//! authorization API ([`ext_authz`]), served with tonic beside the HTTP API
//! and stopped with it.
//!
//! Only Envoy (or another trusted proxy) should reach this port: the client
//! address a key's `allowed_ips` are checked against, and unknown keys are
//! counted by, is the one the `CheckRequest` names.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::ext_authz::v3::pb::AuthorizationServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;

use crate::error::Error;
use crate::http::AppState;

pub mod ext_authz;

/// How long stopping waits for Envoy's open `Check` calls and connections.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The bound `--grpc-listen` socket, not yet serving.
pub struct GrpcListener {
    listener: TcpListener,
    address: SocketAddr,
}

impl GrpcListener {
    pub fn address(&self) -> SocketAddr {
        self.address
    }
}

/// Binds `--grpc-listen`, if it is set (at build, so a taken port fails the
/// start as the HTTP listener's does).
pub async fn bind(address: Option<SocketAddr>) -> Result<Option<GrpcListener>, Error> {
    let Some(address) = address else {
        return Ok(None);
    };
    let listener = TcpListener::bind(address)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {address} (gRPC): {e}")))?;
    let address = listener
        .local_addr()
        .map_err(|e| Error::internal_from("the gRPC listener's address", e))?;
    Ok(Some(GrpcListener { listener, address }))
}

/// The gRPC server while it runs.
pub struct Running {
    task: Option<JoinHandle<()>>,
}

impl Running {
    /// Waits (a bounded time) for the server to drain once it was told to stop.
    pub async fn stopped(self) {
        if let Some(task) = self.task {
            if tokio::time::timeout(DRAIN_TIMEOUT, task).await.is_err() {
                tracing::warn!("the gRPC server did not drain in time");
            }
        }
    }
}

/// Starts serving on `listener` (if any) and returns the HTTP server's
/// shutdown signal, which resolves with `shutdown` and stops the gRPC server
/// at the same moment, so both drain together.
pub fn spawn(
    listener: Option<GrpcListener>,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> (impl Future<Output = ()> + Send + 'static, Running) {
    let stop = CancellationToken::new();
    let task = listener.map(|l| tokio::spawn(serve(l, state, stop.clone())));
    let shutdown = async move {
        shutdown.await;
        stop.cancel();
    };
    (shutdown, Running { task })
}

async fn serve(listener: GrpcListener, state: AppState, stop: CancellationToken) {
    let address = listener.address;
    tracing::info!(%address, "Envoy ext_authz (gRPC) on {address}");
    let incoming = TcpIncoming::from(listener.listener).with_nodelay(Some(true));
    let service = AuthorizationServer::new(ext_authz::ExtAuthz::new(state));
    let served = tonic::transport::Server::builder()
        .serve_with_incoming_shutdown(service, incoming, stop.cancelled_owned())
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, %address, "the gRPC server failed");
    }
}
