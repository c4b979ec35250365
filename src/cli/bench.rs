//! `keyledger bench`: drives running nodes to measure what the issues ask for.
//!
//! `bench propagation` measures cross-node revocation delay: the time from the
//! response to a deactivation on node A to the first `DISABLED` verification on
//! node B, over many keys.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::config::Config;
use crate::error::Error;

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Write N keys and M events straight into the event store.
    Seed {
        /// Number of keys to create.
        #[arg(long, default_value_t = 1000)]
        keys: u64,
        /// Number of events in all (at least one per key).
        #[arg(long, default_value_t = 10_000)]
        events: u64,
        /// Tenant of the seeded keys.
        #[arg(long, default_value = "bench")]
        tenant: String,
        /// Write the raw keys here, one per line (for verification load tests).
        #[arg(long)]
        keys_out: Option<std::path::PathBuf>,
    },
    /// Revoke keys through node A and time until node B refuses them.
    Propagation {
        /// Base URL of the node that receives the commands.
        #[arg(long)]
        node_a: String,
        /// Base URL of the node that is asked to verify.
        #[arg(long)]
        node_b: String,
        /// Number of revocations to time.
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
}

pub async fn run(args: BenchArgs, config: Config) -> Result<ExitCode, Error> {
    match args.command {
        BenchCommand::Seed {
            keys,
            events,
            tenant,
            keys_out,
        } => {
            let store = crate::app::open_store(&config).await?;
            let started = Instant::now();
            let mut file = keys_out
                .map(|p| {
                    std::fs::File::create(&p)
                        .map(std::io::BufWriter::new)
                        .map_err(|e| Error::Config(format!("{}: {e}", p.display())))
                })
                .transpose()?;
            let out = file.as_mut().map(|f| f as &mut dyn std::io::Write);
            let seeded = crate::seed::seed(&store, &tenant, keys, events, out).await?;
            if let Some(mut f) = file {
                std::io::Write::flush(&mut f).map_err(|e| Error::Internal(e.to_string()))?;
            }
            let secs = started.elapsed().as_secs_f64();
            println!(
                "seeded keys={} events={} in {secs:.1} s ({:.0} events/s)",
                seeded.keys,
                seeded.events,
                seeded.events as f64 / secs.max(0.001)
            );
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Propagation {
            node_a,
            node_b,
            count,
        } => propagation(&config, &node_a, &node_b, count).await,
    }
}

fn http_error(e: reqwest::Error) -> Error {
    Error::Internal(format!("http: {e}"))
}

async fn verify_code(client: &reqwest::Client, node: &str, key: &str) -> Result<String, Error> {
    let body: Value = client
        .post(format!("{node}/v1/keys/verify"))
        .json(&json!({ "key": key }))
        .send()
        .await
        .map_err(http_error)?
        .json()
        .await
        .map_err(http_error)?;
    Ok(body["code"].as_str().unwrap_or_default().to_string())
}

/// Polls `node` until `key` answers `want`; gives up after 10 s.
async fn wait_for(
    client: &reqwest::Client,
    node: &str,
    key: &str,
    want: &str,
) -> Result<Duration, Error> {
    let started = Instant::now();
    loop {
        if verify_code(client, node, key).await? == want {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(Error::Internal(format!("node B never answered {want}")));
        }
    }
}

async fn propagation(
    config: &Config,
    node_a: &str,
    node_b: &str,
    count: usize,
) -> Result<ExitCode, Error> {
    let secret = crate::app::server_secret(config)?;
    let token =
        crate::http::auth::mint(secret.expose(), "bench", "bench", Duration::from_secs(3600))?;
    let client = reqwest::Client::new();
    let mut keys = Vec::with_capacity(count);
    for i in 0..count {
        let created: Value = client
            .post(format!("{node_a}/v1/keys"))
            .bearer_auth(&token)
            .json(&json!({ "name": format!("propagation-{i}") }))
            .send()
            .await
            .map_err(http_error)?
            .json()
            .await
            .map_err(http_error)?;
        let id = created["id"].as_str().unwrap_or_default().to_string();
        let key = created["key"].as_str().unwrap_or_default().to_string();
        if id.is_empty() || key.is_empty() {
            return Err(Error::Internal(format!("create failed: {created}")));
        }
        keys.push((id, key));
    }
    for (_, key) in &keys {
        wait_for(&client, node_b, key, "VALID").await?;
    }
    let mut delays = Vec::with_capacity(count);
    for (id, key) in &keys {
        let response = client
            .post(format!("{node_a}/v1/keys/{id}/deactivate"))
            .bearer_auth(&token)
            .send()
            .await
            .map_err(http_error)?;
        if !response.status().is_success() {
            return Err(Error::Internal(format!(
                "deactivate: {}",
                response.status()
            )));
        }
        delays.push(wait_for(&client, node_b, key, "DISABLED").await?);
    }
    delays.sort();
    let pct = |p: f64| {
        let i = ((delays.len() as f64 * p).ceil() as usize).clamp(1, delays.len()) - 1;
        delays[i].as_secs_f64() * 1000.0
    };
    println!(
        "revocations={count} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
    Ok(ExitCode::SUCCESS)
}
