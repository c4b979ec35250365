//! The `keyledger` command line: serve, token, migrate, audit.

mod audit;
mod import;
mod keys;
mod projections;
mod scan;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::{store_from_urls, Config};
use crate::error::Error;

#[derive(Debug, Parser)]
#[command(
    name = "keyledger",
    version,
    about = "Event-sourced API-key lifecycle service"
)]
pub struct Cli {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    command: Command,
}

/// Where the data is: the options every command shares (also those of
/// `keyledger-bench`).
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Directory of the embedded database and the generated server secret.
    #[arg(
        long,
        global = true,
        env = "KEYLEDGER_DATA_DIR",
        default_value = "./data"
    )]
    data_dir: PathBuf,
    /// postgres://... selects PostgreSQL; unset means the embedded SQLite store.
    /// With a KurrentDB event store, the PostgreSQL database of its projections.
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Event store: a KurrentDB connection string (kurrentdb://, kurrent://,
    /// esdb://, esdb+discover://; needs the `kurrentdb` feature), a postgres://
    /// URL or `sqlite`. Unset: DATABASE_URL decides.
    #[arg(
        long,
        global = true,
        env = "KEYLEDGER_EVENT_STORE",
        hide_env_values = true
    )]
    event_store: Option<String>,
    /// Prefix of keyledger's stream names in KurrentDB (letters, digits, _).
    #[arg(
        long,
        global = true,
        env = "KEYLEDGER_KURRENT_NAMESPACE",
        default_value = crate::config::DEFAULT_KURRENT_NAMESPACE
    )]
    kurrent_namespace: String,
    /// How long usage buckets are kept, per size: `minute=2d,hour=90d,day=forever`
    /// (any of the three; `forever` keeps them).
    #[arg(
        long,
        global = true,
        env = "KEYLEDGER_USAGE_RETENTION",
        default_value = "minute=2d,hour=90d,day=forever",
        value_parser = crate::config::parse_usage_retention
    )]
    usage_retention: keyledger_projections::usage::Retention,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP API.
    Serve(Box<serve::ServeArgs>),
    /// Mint a management token signed with the server secret.
    Token {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        subject: String,
        /// Lifetime, e.g. 1h, 30m, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
        /// Print a link that opens the web console signed in, `<url>/#token=<token>`.
        /// The token rides in the fragment, which browsers never send to a server.
        #[arg(long)]
        open: bool,
        /// Where the console is served (with --open).
        #[arg(long, default_value = "http://127.0.0.1:8080", requires = "open")]
        url: String,
    },
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Print the audit log.
    Audit(audit::AuditArgs),
    /// Inspect a tenant's keys (read from the projections, no server needed).
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Rebuild, inspect or check the projections.
    Projections {
        #[command(subcommand)]
        command: projections::ProjectionsCommand,
    },
    /// Find keyledger keys in files, directories or a repository's history
    /// (exit 1 when any is found: usable as a pre-commit hook).
    Scan(scan::ScanArgs),
    /// Import keys issued by another system, by their SHA-256, into a
    /// running server.
    ///
    /// Reads a CSV file (a header row naming item fields: hash, prefix, name,
    /// description, environment, permissions, expires_at, metadata,
    /// created_at, allowed_ips; an empty cell is left out, permissions and
    /// allowed_ips are space-separated, metadata is JSON text) or JSON lines
    /// (one item object per line) and sends it in batches to POST
    /// /v1/keys/import. Importing a hash again answers the same key, so a run
    /// may be repeated. A line that fails (locally or on the server) fails
    /// alone: see --errors. Prints `imported N, failed M`; exits 0 when every
    /// line was imported, 1 when some failed, 2 when the run stopped.
    Import(import::ImportArgs),
}

impl StoreArgs {
    /// The configuration these options (and the environment) give.
    pub fn config(&self) -> Result<Config, Error> {
        let mut config = Config::new(self.data_dir.clone());
        config.store = store_from_urls(
            self.event_store.as_deref(),
            self.database_url.as_deref(),
            &self.kurrent_namespace,
        )?;
        config.usage_retention = self.usage_retention;
        config.jwt_secret = std::env::var("KEYLEDGER_JWT_SECRET")
            .ok()
            .filter(|s| !s.is_empty());
        Ok(config)
    }
}

/// Stack of each runtime worker: what a value nested
/// `keyledger_domain::json::MAX_STORED_DEPTH` levels needs, with room to spare.
const WORKER_STACK_BYTES: usize = 16 << 20;

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    run_main("keyledger", run(cli))
}

/// Runs a command-line program's future on keyledger's runtime, printing its
/// error (with its causes) as `<name>: ...`.
pub fn run_main(
    name: &str,
    program: impl std::future::Future<Output = Result<ExitCode, Error>>,
) -> ExitCode {
    init_tracing();
    // Events older versions let through may nest about 2,000 levels deep
    // (`json::MAX_STORED_DEPTH`); serde's clone, drop and serialise of such a
    // value recurse, so the workers get stacks sized for it (untouched pages
    // cost nothing).
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(WORKER_STACK_BYTES)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(program) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("{name}: {}", crate::error::with_causes(&e));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode, Error> {
    // A client of a running server: the store options are not its business.
    if let Command::Import(args) = cli.command {
        return Ok(import::run(args).await);
    }
    let config = cli.store.config()?;
    match cli.command {
        Command::Serve(args) => serve::run(*args, config).await,
        Command::Token {
            tenant,
            subject,
            ttl,
            open,
            url,
        } => {
            let secret = crate::app::server_secret(&config)?;
            let token = crate::http::auth::mint(secret.expose(), &tenant, &subject, ttl)?;
            if open {
                println!("{}", console_link(&url, &token));
            } else {
                println!("{token}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            crate::app::open_store(&config).await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit(args) => audit::run(args, config).await,
        Command::Keys { command } => keys::run(command, config).await,
        Command::Projections { command } => projections::run(command, config).await,
        Command::Scan(args) => scan::run(args).await,
        Command::Import(_) => unreachable!("import is run before the store is configured"),
    }
}

/// The console's address with the token in the fragment: `<url>/#token=<token>`.
fn console_link(url: &str, token: &str) -> String {
    format!("{}/#token={token}", url.trim_end_matches('/'))
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
