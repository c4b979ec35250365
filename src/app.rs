//! Wiring: open the store, fill the projections, bind the listener, run the
//! background tasks (tailer, usage flusher) and shut down in order.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use keyledger_projections::Projections;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::config::Config;
use crate::error::Error;
use crate::http::auth::TokenVerifier;
use crate::http::{router, AppState};
use crate::secret::ServerSecret;
use crate::service::KeyService;
use crate::store::EventStore;
use crate::tailer::Tailer;
use crate::usage::UsageFlusher;

/// A built, not yet serving, keyledger node.
/// Public leak reports one client address may send per minute.
const LEAK_REPORTS_PER_MINUTE: u32 = 20;

pub struct Application {
    listener: TcpListener,
    address: SocketAddr,
    /// Envoy's ext_authz gRPC API (`--grpc-listen`), if served.
    grpc: Option<crate::grpc::GrpcListener>,
    state: AppState,
    tailer: Arc<Tailer>,
    /// Sends this node's share of the webhook messages.
    deliverer: Arc<crate::webhooks::delivery::Deliverer>,
    clock: Clock,
    config: Config,
}

/// Opens the configured event store, applying migrations.
pub async fn open_store(config: &Config) -> Result<EventStore, Error> {
    crate::store::open(config, create_data_dir).await
}

/// Creates the data directory, and any missing parent, with mode 0700 (set
/// explicitly, whatever the umask): it holds the database and the token
/// secret. An existing directory keeps its mode; opening the SQLite store
/// warns when others may read it.
pub fn create_data_dir(dir: &std::path::Path) -> Result<(), Error> {
    let failed = |e: std::io::Error| {
        Error::Config(format!(
            "cannot create data directory {}: {e}",
            dir.display()
        ))
    };
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        builder.mode(0o700);
        builder.create(dir).map_err(failed)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)?;
    }
    #[cfg(not(unix))]
    builder.create(dir).map_err(failed)?;
    Ok(())
}

/// The token secret: from the configuration, or the file in the data directory.
pub fn server_secret(config: &Config) -> Result<ServerSecret, Error> {
    match &config.jwt_secret {
        Some(s) => ServerSecret::from_env_value(s),
        None => {
            create_data_dir(&config.data_dir)?;
            ServerSecret::load_or_create(&config.secret_path())
        }
    }
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, Error> {
        Self::build_with_clock(config, Clock::system()).await
    }

    /// Builds with a given clock (tests move it instead of sleeping).
    pub async fn build_with_clock(config: Config, clock: Clock) -> Result<Self, Error> {
        let secret = server_secret(&config)?;
        let store = Arc::new(open_store(&config).await?);
        // Where the store can, a create's key-list and audit rows are written
        // with its event (group commit, on PostgreSQL and SQLite).
        store.project_inline(Arc::new(keyledger_projections::inline::InlineCreates));
        let projections = Arc::new(
            Projections::open(store.projection_db())
                .await?
                .with_usage_retention(config.usage_retention),
        );
        projections
            .index()
            .set_import_prefixes(config.import_prefixes.clone());
        let tailer = Arc::new(Tailer::new(store.clone(), projections.clone()));
        tailer.remember_generation().await?;
        // Events committed before a crash may not have been numbered yet, or
        // may not have reached the projections.
        store.sequence_pending().await?;
        let caught_up = tailer.catch_up().await?;
        tracing::info!(
            keys = projections.index().len(),
            events_applied_at_start = caught_up,
            "projections ready"
        );
        let service = Arc::new(
            KeyService::new(
                store.clone(),
                projections,
                tailer.clone(),
                clock.clone(),
                config.key_prefix.clone(),
            )
            .with_key_limit(config.max_keys_per_tenant)
            .with_after_commit(config.after_commit.clone()),
        );
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| Error::Config(format!("cannot listen on {}: {e}", config.listen)))?;
        let address = listener
            .local_addr()
            .map_err(|e| Error::internal_from("the listener's address", e))?;
        let grpc = crate::grpc::bind(config.grpc_listen).await?;
        let deliverer = Arc::new(crate::webhooks::delivery::Deliverer::new(
            store.clone(),
            service.projections().clone(),
            clock.clone(),
            format!("{}", uuid::Uuid::now_v7().simple()),
            secret.expose(),
            config.webhook_allow_private,
            Arc::new(crate::http::webhook_messages::ApiMessages),
        )?);
        let webhooks = Arc::new(crate::webhooks::Webhooks::new(
            store.clone(),
            deliverer.clone(),
            tailer.clone(),
            clock.clone(),
            secret.expose(),
            config.webhook_allow_private,
        ));
        let leaks = Arc::new(crate::leaks::Leaks::new(
            service.clone(),
            &config.leak_reporters,
        ));
        let state = AppState::new(crate::http::SharedState {
            service,
            webhooks,
            leaks,
            // Public reports per client address and minute: enough for a
            // person or a script, not for guessing at scale.
            leak_reports: Arc::new(crate::http::limit::FailureLimiter::new(
                LEAK_REPORTS_PER_MINUTE,
            )),
            tokens: Arc::new(TokenVerifier::with_idp(
                secret.expose(),
                config.idp.as_ref(),
            )?),
            max_body_bytes: config.max_body_bytes,
            body_read_timeout: config.body_read_timeout,
            failures: Arc::new(crate::http::limit::FailureLimiter::new(
                config.verify_failure_limit,
            )),
            trusted_proxies: config.trusted_proxies.clone(),
            sealer: Arc::new(crate::idempotency::Sealer::from_secret(secret.expose())),
            metrics: crate::metrics::handle(),
        });
        Ok(Self {
            listener,
            address,
            grpc,
            state,
            deliverer,
            tailer,
            clock,
            config,
        })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until `shutdown` resolves, then drains requests, flushes usage and
    /// applies the last events.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), Error> {
        let stop = CancellationToken::new();
        let tailer_task = tokio::spawn(
            self.tailer
                .clone()
                .run(self.config.poll_interval, stop.clone()),
        );
        // Other nodes' events, as the store tells of them (the tailer's
        // polling covers a store that does not).
        let listener_task = {
            let store = self.state.service.store().clone();
            let listener: Arc<dyn crate::store::FeedListener> = self.tailer.clone();
            let stop = stop.clone();
            tokio::spawn(async move { store.listen(listener, stop).await })
        };
        let flusher = UsageFlusher {
            store: self.state.service.store().clone(),
            index: self.state.service.projections().index().clone(),
            tailer: self.tailer.clone(),
            clock: self.clock.clone(),
        };
        let flusher_task =
            tokio::spawn(flusher.run(self.config.usage_flush_interval, stop.clone()));
        // Expired idempotency entries (and their sealed keys) and ended
        // rate-limit windows go on the flusher's beat.
        let purger_task = tokio::spawn(purge_periodically(
            self.state.service.store().clone(),
            self.state.service.projections().clone(),
            self.clock.clone(),
            self.config.usage_flush_interval,
            stop.clone(),
        ));
        // Stopped before the rest: a block it reserved after the final flush
        // would be withheld until the next reset.
        let ahead_stop = CancellationToken::new();
        let ahead_task = tokio::spawn(
            self.state
                .service
                .reservations()
                .clone()
                .reserve_ahead(self.clock.clone(), ahead_stop.clone()),
        );
        let deliverer_task = tokio::spawn(self.deliverer.clone().run(stop.clone()));
        let notices_task = tokio::spawn(
            crate::expiry::ExpiryNotices::new(
                self.state.service.clone(),
                self.clock.clone(),
                format!("{}", uuid::Uuid::now_v7().simple()),
            )
            .run(self.config.expiry_notice_interval, stop.clone()),
        );
        let app = router::app(self.state.clone());
        tracing::info!(address = %self.address, "listening on http://{}", self.address);
        let limits = crate::http::serve::Limits::from_config(&self.config);
        // The gRPC server stops when the HTTP server does.
        let (shutdown, grpc) = crate::grpc::spawn(self.grpc, self.state.clone(), shutdown);
        crate::http::serve::serve(self.listener, app, limits, shutdown).await;
        grpc.stopped().await;
        ahead_stop.cancel();
        let _ = ahead_task.await;
        stop.cancel();
        let _ = flusher_task.await;
        let _ = purger_task.await;
        let _ = tailer_task.await;
        let _ = listener_task.await;
        let _ = deliverer_task.await;
        let _ = notices_task.await;
        // Close the pool so SQLite checkpoints its WAL and PostgreSQL sessions end
        // before the process (or a test) moves on.
        self.state.service.store().close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Deletes what expired beside the events every `interval` until `stop`.
async fn purge_periodically(
    store: Arc<EventStore>,
    projections: Arc<Projections>,
    clock: Clock,
    interval: std::time::Duration,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        if let Err(e) = store.purge_expired(clock.now().timestamp_millis()).await {
            tracing::warn!(error = %e, "could not purge expired idempotency keys and rate-limit windows");
        }
        if let Err(e) = projections
            .prune_usage(clock.now().timestamp_millis())
            .await
        {
            tracing::warn!(error = %e, "could not prune old usage buckets");
        }
    }
}
