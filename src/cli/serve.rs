//! `keyledger serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use keyledger_domain::KeyPrefix;

use crate::app::Application;
use crate::config::{Config, IdpConfig};
use crate::error::Error;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free one).
    #[arg(long, env = "KEYLEDGER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Address to serve Envoy's external authorization gRPC API on
    /// (`envoy.service.auth.v3.Authorization`) [default: not served].
    // Checked by clap, kept as text: a `SocketAddr` more would make `Serve`
    // too large a variant of `Command` for clippy's `large_enum_variant`.
    #[arg(long, value_name = "ADDR", env = "KEYLEDGER_GRPC_LISTEN",
        value_parser = |s: &str| s.parse::<SocketAddr>().map(|_| s.to_string()))]
    grpc_listen: Option<String>,
    /// Prefix of issued keys, `[a-z][a-z0-9]{0,15}`.
    #[arg(long, env = "KEYLEDGER_KEY_PREFIX", default_value = "kl")]
    key_prefix: String,
    /// Seconds between usage flushes.
    #[arg(long, env = "KEYLEDGER_USAGE_FLUSH_SECS", default_value_t = 60)]
    usage_flush_secs: u64,
    /// Most keys one tenant may hold.
    #[arg(long, env = "KEYLEDGER_MAX_KEYS_PER_TENANT", default_value_t = 10_000)]
    max_keys_per_tenant: u64,
    /// Malformed or unknown keys per client address per minute before answering
    /// 429 to more of them (keys that exist always get their answer; 0 disables).
    #[arg(long, env = "KEYLEDGER_VERIFY_FAILURE_LIMIT", default_value_t = 100)]
    verify_failure_limit: u32,
    /// Allow webhook targets in private, loopback and link-local ranges
    /// (refused by default: a tenant must not reach the node's own network).
    #[arg(long, env = "KEYLEDGER_WEBHOOK_ALLOW_PRIVATE")]
    webhook_allow_private: bool,
    /// A secret-scanning partner whose signed reports POST /v1/leaks/NAME
    /// takes: `github` (GitHub's keys URL), or NAME=KEYS_URL; repeatable.
    #[arg(
        long = "leak-reporter",
        value_name = "NAME[=KEYS_URL]",
        env = "KEYLEDGER_LEAK_REPORTERS",
        value_delimiter = ',',
        value_parser = crate::leaks::reporters::ReporterConfig::parse
    )]
    leak_reporters: Vec<crate::leaks::reporters::ReporterConfig>,
    /// Proxies (comma-separated CIDRs or addresses) whose X-Forwarded-For /
    /// Forwarded headers name the client [default: none].
    #[arg(
        long,
        value_name = "CIDRS",
        env = "KEYLEDGER_TRUSTED_PROXIES",
        value_delimiter = ',',
        value_parser = crate::config::parse_trusted_proxy
    )]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Prefix of keys issued by another system and imported by their hash
    /// (POST /v1/keys/import), e.g. `sk_live_`: verification looks such keys
    /// up although they are not in keyledger's format; repeatable.
    #[arg(
        long = "import-prefix",
        value_name = "PREFIX",
        env = "KEYLEDGER_IMPORT_PREFIXES",
        value_delimiter = ',',
        value_parser = crate::config::parse_import_prefix
    )]
    import_prefixes: Vec<String>,
    /// Seconds a client may take to send a request head, from its first byte.
    #[arg(long, env = "KEYLEDGER_HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    header_read_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in flight.
    #[arg(long, env = "KEYLEDGER_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    idle_timeout_secs: u64,
    /// Most open client connections [default: the open-file limit less 64, at most 10000].
    #[arg(long, env = "KEYLEDGER_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// PEM public key (RSA or EC P-256) of an identity provider whose RS256/ES256
    /// management tokens are accepted besides HS256 ones; repeatable.
    #[arg(
        long = "jwt-public-key",
        value_name = "PATH",
        env = "KEYLEDGER_JWT_PUBLIC_KEYS",
        value_delimiter = ','
    )]
    jwt_public_keys: Vec<PathBuf>,
    /// Required `iss` of identity-provider tokens.
    #[arg(long, env = "KEYLEDGER_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required `aud` of identity-provider tokens (unchecked when unset).
    #[arg(long, env = "KEYLEDGER_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Claim of identity-provider tokens naming the tenant [default: tenant].
    #[arg(long, env = "KEYLEDGER_JWT_TENANT_CLAIM")]
    jwt_tenant_claim: Option<String>,
    /// Claim of identity-provider tokens naming the actor [default: sub].
    #[arg(long, env = "KEYLEDGER_JWT_ACTOR_CLAIM")]
    jwt_actor_claim: Option<String>,
}

impl ServeArgs {
    /// The identity-provider settings; `None` without public keys (HS256 only).
    fn idp(&self) -> Result<Option<IdpConfig>, Error> {
        let non_empty = |value: &Option<String>, name: &str| -> Result<Option<String>, Error> {
            match value.as_deref().map(str::trim) {
                None => Ok(None),
                Some("") => Err(Error::Config(format!("{name} must not be empty"))),
                Some(v) => Ok(Some(v.to_string())),
            }
        };
        let issuer = non_empty(&self.jwt_issuer, "KEYLEDGER_JWT_ISSUER")?;
        let audience = non_empty(&self.jwt_audience, "KEYLEDGER_JWT_AUDIENCE")?;
        let tenant_claim = non_empty(&self.jwt_tenant_claim, "KEYLEDGER_JWT_TENANT_CLAIM")?;
        let actor_claim = non_empty(&self.jwt_actor_claim, "KEYLEDGER_JWT_ACTOR_CLAIM")?;
        let public_keys: Vec<PathBuf> = self
            .jwt_public_keys
            .iter()
            .filter(|p| !p.as_os_str().is_empty())
            .cloned()
            .collect();
        if public_keys.is_empty() {
            if issuer.is_some()
                || audience.is_some()
                || tenant_claim.is_some()
                || actor_claim.is_some()
            {
                return Err(Error::Config(
                    "KEYLEDGER_JWT_ISSUER, _AUDIENCE, _TENANT_CLAIM and _ACTOR_CLAIM apply to \
                     identity-provider tokens: set KEYLEDGER_JWT_PUBLIC_KEYS (--jwt-public-key) too"
                        .into(),
                ));
            }
            return Ok(None);
        }
        let mut idp = IdpConfig::new(public_keys);
        idp.issuer = issuer;
        idp.audience = audience;
        if let Some(claim) = tenant_claim {
            idp.tenant_claim = claim;
        }
        if let Some(claim) = actor_claim {
            idp.actor_claim = claim;
        }
        Ok(Some(idp))
    }
}

pub async fn run(args: ServeArgs, mut config: Config) -> Result<ExitCode, Error> {
    // First: from here on a SIGINT or SIGTERM stops the node gracefully.
    let stop = shutdown_signal();
    config.listen = args.listen;
    config.grpc_listen = args
        .grpc_listen
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(|e| Error::Config(format!("KEYLEDGER_GRPC_LISTEN: {e}")))?;
    config.key_prefix = KeyPrefix::new(&args.key_prefix)
        .map_err(|e| Error::Config(format!("KEYLEDGER_KEY_PREFIX: {e}")))?;
    if args.usage_flush_secs == 0 {
        return Err(Error::Config(
            "KEYLEDGER_USAGE_FLUSH_SECS must be at least 1".into(),
        ));
    }
    config.usage_flush_interval = Duration::from_secs(args.usage_flush_secs);
    config.max_keys_per_tenant = args.max_keys_per_tenant;
    config.verify_failure_limit = args.verify_failure_limit;
    config.webhook_allow_private = args.webhook_allow_private;
    config.leak_reporters = args.leak_reporters.clone();
    config.trusted_proxies = args.trusted_proxies.clone();
    config.import_prefixes = args.import_prefixes.clone();
    config.header_read_timeout = seconds(
        args.header_read_timeout_secs,
        "KEYLEDGER_HEADER_READ_TIMEOUT_SECS",
    )?;
    config.idle_timeout = seconds(args.idle_timeout_secs, "KEYLEDGER_IDLE_TIMEOUT_SECS")?;
    if args.max_connections == Some(0) {
        return Err(Error::Config(
            "KEYLEDGER_MAX_CONNECTIONS must be at least 1".into(),
        ));
    }
    config.max_connections = args.max_connections;
    config.idp = args.idp()?;
    tracing::info!(
        data = %config.data_dir.display(),
        "using {}",
        config.store.describe()
    );
    let app = Application::build(config).await?;
    app.run_until_stopped(stop).await?;
    Ok(ExitCode::SUCCESS)
}

/// The longest a timeout may be set to: one day.
const MAX_TIMEOUT_SECS: u64 = 24 * 3600;

/// Whole seconds, at least one and at most [`MAX_TIMEOUT_SECS`] (values near
/// `u64::MAX` would not fit in an instant).
fn seconds(value: u64, name: &str) -> Result<Duration, Error> {
    if value == 0 {
        return Err(Error::Config(format!("{name} must be at least 1")));
    }
    if value > MAX_TIMEOUT_SECS {
        return Err(Error::Config(format!(
            "{name} must be at most {MAX_TIMEOUT_SECS} (one day)"
        )));
    }
    Ok(Duration::from_secs(value))
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is
/// called, not when the future is first polled: called before the node
/// starts, a signal that comes while it starts (or just after it says it is
/// listening) stops it gracefully instead of killing it unflushed.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let streams = [SignalKind::interrupt(), SignalKind::terminate()].map(|kind| {
            signal(kind)
                .map_err(|e| tracing::error!(error = %e, "cannot listen for {kind:?}"))
                .ok()
        });
        async move {
            let [interrupt, terminate] = streams;
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = wait(interrupt) => {}
                () = wait(terminate) => {}
            }
            tracing::info!("shutting down");
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
        tracing::info!("shutting down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_whole_seconds_from_one_to_one_day() {
        let name = "KEYLEDGER_IDLE_TIMEOUT_SECS";
        assert!(seconds(0, name).is_err());
        assert_eq!(seconds(1, name).ok(), Some(Duration::from_secs(1)));
        assert_eq!(
            seconds(86_400, name).ok(),
            Some(Duration::from_secs(86_400))
        );
        for too_long in [86_401, u64::MAX / 1000, u64::MAX] {
            let e = seconds(too_long, name).expect_err("too long");
            assert!(e.to_string().contains("at most 86400"), "{e}");
        }
    }
}
