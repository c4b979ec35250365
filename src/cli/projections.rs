//! `keyledger projections rebuild|status|check`.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use keyledger_projections::Projections;

use crate::config::Config;
use crate::error::Error;
use crate::rebuild::{self, Progress, Which};

#[derive(Debug, Subcommand)]
pub enum ProjectionsCommand {
    /// Replay all events into fresh tables and swap them in (nodes keep serving).
    Rebuild {
        #[arg(long, value_enum, default_value_t = Which::All)]
        projection: Which,
    },
    /// Print each projection's checkpoint and lag.
    Status,
    /// Rebuild in scratch space, compare with the live tables, exit 1 on drift.
    Check,
}

/// Progress on a terminal: a bar with events, total and rate.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn update(&self, done: u64, total: u64) {
        self.0.set_length(total);
        self.0.set_position(done);
    }
}

/// Progress elsewhere: a log line every few seconds.
struct Lines {
    started: Instant,
    last: AtomicU64,
}

impl Progress for Lines {
    fn update(&self, done: u64, total: u64) {
        let elapsed = self.started.elapsed();
        let second = elapsed.as_secs();
        if done == total || second >= self.last.load(Ordering::Relaxed) + 2 {
            self.last.store(second, Ordering::Relaxed);
            let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
            eprintln!("rebuild: {done}/{total} events ({rate:.0} events/s)");
        }
    }
}

pub async fn run(command: ProjectionsCommand, config: Config) -> Result<ExitCode, Error> {
    let store = crate::app::open_store(&config).await?;
    let projections =
        Projections::unloaded(store.projection_db()).with_usage_retention(config.usage_retention);
    let code = match command {
        ProjectionsCommand::Rebuild { projection } => {
            let report = if std::io::stderr().is_terminal() {
                let bar = ProgressBar::new(0);
                bar.set_style(
                    ProgressStyle::with_template(
                        "{bar:40} {pos}/{len} events  {per_sec}  eta {eta}",
                    )
                    .map_err(|e| Error::internal_from("the progress bar's template", e))?,
                );
                bar.enable_steady_tick(Duration::from_millis(200));
                let bar = Bar(bar);
                let report = rebuild::rebuild(&store, &projections, projection, &bar).await?;
                bar.0.finish_and_clear();
                report
            } else {
                let lines = Lines {
                    started: Instant::now(),
                    last: AtomicU64::new(0),
                };
                rebuild::rebuild(&store, &projections, projection, &lines).await?
            };
            println!(
                "rebuilt {projection:?} up to position {}: {} events in {:.2} s ({:.0} events/s)",
                report.position,
                report.events,
                report.seconds,
                report.events_per_second()
            );
            ExitCode::SUCCESS
        }
        ProjectionsCommand::Status => {
            let head = store.head().await?;
            let cps = projections.checkpoints().await?;
            println!("{:<14} {:>12} {:>10}", "PROJECTION", "CHECKPOINT", "LAG");
            println!("{:<14} {:>12} {:>10}", "feed head", head, "-");
            for (name, cp) in [
                ("key_list", cps.key_list),
                ("audit_log", cps.audit_log),
                ("usage_buckets", cps.usage),
            ] {
                println!("{name:<14} {cp:>12} {:>10}", head - cp);
            }
            println!(
                "{:<14} {:>12} {:>10}",
                "verification", "per node", "see /readyz"
            );
            ExitCode::SUCCESS
        }
        ProjectionsCommand::Check => {
            let diffs = rebuild::check(&store, &projections).await?;
            if diffs.is_empty() {
                println!("ok: key_list, audit_log and usage_buckets match the events");
                ExitCode::SUCCESS
            } else {
                println!("DRIFT: {} difference(s)", diffs.len());
                for d in diffs.iter().take(100) {
                    println!("  {d}");
                }
                if diffs.len() > 100 {
                    println!("  … and {} more", diffs.len() - 100);
                }
                ExitCode::FAILURE
            }
        }
    };
    store.close().await;
    Ok(code)
}
