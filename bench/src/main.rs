//! `keyledger-bench`: load data and load generators for BENCHMARKS.md, kept
//! out of the server binary (and with them its HTTP client).
//!
//! `bench propagation` measures cross-node revocation delay: the time from the
//! response to a deactivation on node A to the first `DISABLED` verification on
//! node B, over many keys. `bench create` measures command throughput from many
//! concurrent clients. `bench seed` writes load data straight into the store.
//! `bench leaks` times a node's answer to a signed secret-scanning report.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use keyledger::cli::StoreArgs;
use keyledger::{Config, Error};
use keyledger_client::{Client, CreateKey, Secret, VerificationCode, VerifyRequest};

mod leaks;

// The server's allocator: seeding allocates as a rebuild does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "keyledger-bench",
    version,
    about = "Load data and load generators for keyledger's benchmarks"
)]
struct Cli {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    command: BenchCommand,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    keyledger::cli::run_main("keyledger-bench", async move {
        let config = cli.store.config()?;
        run(cli.command, config).await
    })
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
        /// Give every key a rate limit (10^9 a minute) and credits (10^15):
        /// limits that never refuse, so a load measures what checking them
        /// costs.
        #[arg(long)]
        limited: bool,
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
    /// Webhook delivery to a receiver in this process: throughput of a burst
    /// of creates, then the lag of paced ones (the node needs
    /// --webhook-allow-private).
    Webhooks {
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Keys created in the burst.
        #[arg(long, default_value_t = 5000)]
        burst: usize,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// Keys created one at a time afterwards.
        #[arg(long, default_value_t = 500)]
        paced: usize,
        /// Paced creates a second.
        #[arg(long, default_value_t = 20.0)]
        rate: f64,
    },
    /// Report leaked keys to a running node as a secret-scanning partner
    /// (GitHub's format, signed): time the answer to a report of many tokens,
    /// some of them the node's keys. The partner's public keys are served at
    /// http://KEYS_LISTEN/keys: start the node with
    /// `--leak-reporter NAME=http://KEYS_LISTEN/keys`.
    Leaks(LeaksArgs),
    /// Create keys through a running node from many clients for a while; print
    /// commands/s and latency percentiles.
    Create {
        /// Base URL of the node.
        #[arg(long, default_value = "http://127.0.0.1:8080")]
        url: String,
        /// Concurrent clients, each with its own tenant (so the per-tenant key cap
        /// is reached 16 times later).
        #[arg(long, default_value_t = 16)]
        clients: usize,
        /// How long to drive the load.
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
    /// SQLite's own durable single-row INSERT rate with keyledger's PRAGMAs
    /// (the reference for creates on the embedded store): each client its
    /// own connection, one autocommitted INSERT per transaction.
    SqliteInsert {
        /// Database file (created; its `key_events` table is replaced).
        #[arg(long)]
        path: std::path::PathBuf,
        #[arg(long, default_value_t = 16)]
        clients: usize,
        #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
        duration: Duration,
    },
}

async fn run(command: BenchCommand, config: Config) -> Result<ExitCode, Error> {
    match command {
        BenchCommand::Seed {
            keys,
            events,
            tenant,
            keys_out,
            limited,
        } => {
            let store = keyledger::app::open_store(&config).await?;
            let started = Instant::now();
            let mut file = keys_out
                .map(|p| {
                    std::fs::File::create(&p)
                        .map(std::io::BufWriter::new)
                        .map_err(|e| Error::Config(format!("{}: {e}", p.display())))
                })
                .transpose()?;
            let out = file.as_mut().map(|f| f as &mut dyn std::io::Write);
            let seeded =
                keyledger_bench::seed::seed(&store, &tenant, keys, events, limited, out).await?;
            if let Some(mut f) = file {
                std::io::Write::flush(&mut f)
                    .map_err(|e| Error::internal_from("writing the keys file", e))?;
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
        BenchCommand::Webhooks {
            url,
            burst,
            clients,
            paced,
            rate,
        } => {
            let secret = keyledger::app::server_secret(&config)?;
            let token = keyledger::http::auth::mint(
                secret.expose(),
                "bench-webhooks",
                "bench",
                Duration::from_secs(3600),
            )?;
            let (b, p) =
                keyledger_bench::webhooks::run(&url, &token, burst, clients, paced, rate).await?;
            let q = keyledger_bench::webhooks::quantile;
            println!(
                "burst messages={} seconds={:.2} msgs_per_s={:.0} lag_p50_ms={:.1} lag_p99_ms={:.1}",
                b.messages,
                b.seconds,
                b.messages as f64 / b.seconds.max(0.001),
                q(&b.lags_ms, 0.5),
                q(&b.lags_ms, 0.99)
            );
            println!(
                "paced messages={} rate={rate}/s lag_p50_ms={:.1} lag_p99_ms={:.1} lag_max_ms={:.1}",
                p.messages,
                q(&p.lags_ms, 0.5),
                q(&p.lags_ms, 0.99),
                q(&p.lags_ms, 1.0)
            );
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Leaks(args) => leak_reports(&config, args).await,
        BenchCommand::Create {
            url,
            clients,
            duration,
        } => create(&config, &url, clients, duration).await,
        BenchCommand::SqliteInsert {
            path,
            clients,
            duration,
        } => {
            let done = keyledger_bench::sqlite_reference::run(&path, clients, duration).await?;
            println!(
                "sqlite-insert clients={clients} rows={} inserts_per_s={:.0}",
                done.rows,
                done.per_second()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(Debug, clap::Args)]
struct LeaksArgs {
    /// Base URL of the node.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Keys of the node, one per line (`seed --keys-out`).
    #[arg(long)]
    keys_file: std::path::PathBuf,
    /// Where to serve the partner's public keys.
    #[arg(long, default_value = "127.0.0.1:18093")]
    keys_listen: std::net::SocketAddr,
    /// The reporter's name at the node (`--leak-reporter NAME=...`).
    #[arg(long, default_value = "bench")]
    reporter: String,
    /// Tenant of the keys (its audit log shows the actions).
    #[arg(long, default_value = "bench")]
    tenant: String,
    /// Tokens in the report.
    #[arg(long, default_value_t = 1000)]
    tokens: usize,
    /// How many of them are keys of the node (drawn from the keys file at
    /// random); the rest are well-formed keys it never issued.
    #[arg(long, default_value_t = 500)]
    ours: usize,
    /// Reports to time.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..))]
    rounds: u16,
    /// Send each report without waiting for the node to act on the one
    /// before (answers timed while it records the earlier reports).
    #[arg(long)]
    overlap: bool,
}

/// `ours` keys drawn at random from `path` (one key a line).
fn sample_keys(path: &std::path::Path, ours: usize) -> Result<Vec<String>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
    let all: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    if all.len() < ours {
        return Err(Error::Config(format!(
            "{}: {} keys, fewer than --ours {ours}",
            path.display(),
            all.len()
        )));
    }
    Ok(rand::seq::index::sample(&mut rand::rng(), all.len(), ours)
        .into_iter()
        .map(|i| all[i].to_string())
        .collect())
}

async fn leak_reports(config: &Config, args: LeaksArgs) -> Result<ExitCode, Error> {
    if args.ours > args.tokens {
        return Err(Error::validation("ours", "at most --tokens"));
    }
    let chosen = sample_keys(&args.keys_file, args.ours)?;
    let report = leaks::Report::mixed(&chosen, args.tokens - args.ours);
    let partner = leaks::Partner::generate(&args.reporter);
    let keys_url = partner.publish(args.keys_listen).await?;
    eprintln!(
        "partner keys at {keys_url} (--leak-reporter {}={keys_url})",
        args.reporter
    );
    let secret = keyledger::app::server_secret(config)?;
    let token = keyledger::http::auth::mint(
        secret.expose(),
        &args.tenant,
        "bench-leaks",
        Duration::from_secs(3600),
    )?;
    let plan = leaks::Plan {
        url: args.url,
        token,
        rounds: usize::from(args.rounds),
        overlap: args.overlap,
    };
    let figures = leaks::run(&partner, &report, &plan).await?;
    let mut answers = figures.answers.clone();
    answers.sort();
    let mut acted = figures.acted.clone();
    acted.sort();
    println!(
        "tokens={} true_positive={} false_positive={} rounds={} overlap={} answer_p50_ms={:.1} answer_p90_ms={:.1} answer_max_ms={:.1}",
        args.tokens,
        figures.labels.true_positive,
        figures.labels.false_positive,
        plan.rounds,
        plan.overlap,
        percentile_ms(&answers, 0.5),
        percentile_ms(&answers, 0.9),
        percentile_ms(&answers, 1.0),
    );
    let ms = |d: &Duration| format!("{:.1}", d.as_secs_f64() * 1000.0);
    println!(
        "answers_ms={}",
        figures.answers.iter().map(ms).collect::<Vec<_>>().join(",")
    );
    println!(
        "leak_reports_recorded={} of {} acted_p50_ms={:.0} acted_max_ms={:.0}",
        figures.reports_recorded,
        figures.reports_due,
        percentile_ms(&acted, 0.5),
        percentile_ms(&acted, 1.0),
    );
    if figures.reports_recorded < figures.reports_due {
        eprintln!(
            "keyledger-bench: {} leak reports answered true_positive were never recorded",
            figures.reports_due - figures.reports_recorded
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// What one create client saw.
#[derive(Default)]
struct CreateTally {
    latencies: Vec<Duration>,
    failures: u64,
}

async fn create(
    config: &Config,
    url: &str,
    clients: usize,
    duration: Duration,
) -> Result<ExitCode, Error> {
    let secret = keyledger::app::server_secret(config)?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .map_err(http_error)?;
    let started = Instant::now();
    let deadline = started + duration;
    // Ctrl-C (SIGINT) ends the load early and still reports it: the
    // propagation benchmark runs it in the background until it is done.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let on_interrupt = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            on_interrupt.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    });
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let stop = stop.clone();
        let token = keyledger::http::auth::mint(
            secret.expose(),
            &format!("bench-create-{c}"),
            "bench",
            duration + Duration::from_secs(600),
        )?;
        // Clients share one connection pool.
        let client = Client::builder(url)
            .http_client(http.clone())
            .token(token)
            .build()
            .map_err(client_error)?;
        tasks.push(tokio::spawn(async move {
            let mut tally = CreateTally::default();
            let mut n = 0u64;
            while Instant::now() < deadline && !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let sent = Instant::now();
                let request = CreateKey {
                    permissions: Some(vec!["invoices:read".into()]),
                    ..CreateKey::new(format!("bench-{c}-{n}"))
                };
                match client.create_key(&request).await {
                    Ok(_) => tally.latencies.push(sent.elapsed()),
                    Err(e) => {
                        tally.failures += 1;
                        if tally.failures == 1 {
                            eprintln!("client {c}: {e}");
                        }
                    }
                }
            }
            tally
        }));
    }
    let mut latencies = Vec::new();
    let mut failures = 0;
    for task in tasks {
        let tally = task
            .await
            .map_err(|e| Error::internal_from("client task", e))?;
        latencies.extend(tally.latencies);
        failures += tally.failures;
    }
    let secs = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| percentile_ms(&latencies, p);
    println!(
        "clients={clients} created={} failed={failures} seconds={secs:.1} commands_per_s={:.0} p50_ms={:.2} p99_ms={:.2}",
        latencies.len(),
        latencies.len() as f64 / secs.max(0.001),
        pct(0.50),
        pct(0.99),
    );
    Ok(if failures == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The `p` quantile of sorted durations, in milliseconds (0 when empty).
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn http_error(e: reqwest::Error) -> Error {
    Error::internal_from("http", e)
}

fn client_error(e: keyledger_client::Error) -> Error {
    Error::internal_from("http", e)
}

/// Polls `node` until `key` answers `want`; gives up after 10 s.
async fn wait_for(node: &Client, key: &Secret, want: VerificationCode) -> Result<Duration, Error> {
    let started = Instant::now();
    let request = VerifyRequest::new(key.clone());
    loop {
        if node.verify(&request).await.map_err(client_error)?.code == want {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(10) {
            return Err(Error::internal(format!("node B never answered {want}")));
        }
    }
}

async fn propagation(
    config: &Config,
    node_a: &str,
    node_b: &str,
    count: usize,
) -> Result<ExitCode, Error> {
    let secret = keyledger::app::server_secret(config)?;
    let token =
        keyledger::http::auth::mint(secret.expose(), "bench", "bench", Duration::from_secs(3600))?;
    let node_a = Client::new(node_a).map_err(client_error)?.with_token(token);
    let node_b = Client::new(node_b).map_err(client_error)?;
    let mut keys = Vec::with_capacity(count);
    for i in 0..count {
        let created = node_a
            .create_key(&CreateKey::new(format!("propagation-{i}")))
            .await
            .map_err(client_error)?;
        keys.push((created.view.id, created.key));
    }
    for (_, key) in &keys {
        wait_for(&node_b, key, VerificationCode::Valid).await?;
    }
    let mut delays = Vec::with_capacity(count);
    for (id, key) in &keys {
        node_a
            .deactivate_key(id, None)
            .await
            .map_err(|e| Error::internal(format!("deactivate: {e}")))?;
        delays.push(wait_for(&node_b, key, VerificationCode::Disabled).await?);
    }
    delays.sort();
    let pct = |p: f64| percentile_ms(&delays, p);
    println!(
        "revocations={count} p50_ms={:.2} p90_ms={:.2} p99_ms={:.2} max_ms={:.2}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        pct(1.0)
    );
    Ok(ExitCode::SUCCESS)
}
