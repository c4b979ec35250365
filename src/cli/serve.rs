//! `keyledger serve`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use keyledger_domain::KeyPrefix;

use crate::app::Application;
use crate::config::{Config, StoreConfig};
use crate::error::Error;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "KEYLEDGER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Prefix of issued keys, `[a-z][a-z0-9]{0,15}`.
    #[arg(long, env = "KEYLEDGER_KEY_PREFIX", default_value = "kl")]
    key_prefix: String,
    /// Seconds between usage flushes.
    #[arg(long, env = "KEYLEDGER_USAGE_FLUSH_SECS", default_value_t = 60)]
    usage_flush_secs: u64,
}

pub async fn run(args: ServeArgs, mut config: Config) -> Result<ExitCode, Error> {
    config.listen = args.listen;
    config.key_prefix = KeyPrefix::new(&args.key_prefix)
        .map_err(|e| Error::Config(format!("KEYLEDGER_KEY_PREFIX: {e}")))?;
    if args.usage_flush_secs == 0 {
        return Err(Error::Config(
            "KEYLEDGER_USAGE_FLUSH_SECS must be at least 1".into(),
        ));
    }
    config.usage_flush_interval = Duration::from_secs(args.usage_flush_secs);
    match &config.store {
        StoreConfig::Sqlite => tracing::info!(
            data = %config.sqlite_path().display(),
            "using the embedded SQLite store"
        ),
        StoreConfig::Postgres(_) => tracing::info!("using PostgreSQL"),
    }
    let app = Application::build(config).await?;
    app.run_until_stopped(shutdown_signal()).await?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutting down");
}
