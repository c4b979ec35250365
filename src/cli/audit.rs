//! `keyledger audit`: the audit log from the projection tables, as a table or JSON.

use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use keyledger_projections::audit::{AuditFilter, Order};

use crate::config::Config;
use crate::error::Error;
use crate::http::audit::AuditEvent;

#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    action: Option<AuditAction>,
    /// Only this tenant (default: all tenants).
    #[arg(long)]
    tenant: Option<String>,
    /// Only this key id.
    #[arg(long = "key")]
    key_id: Option<String>,
    /// Only this actor.
    #[arg(long)]
    actor: Option<String>,
    /// Only this event type, e.g. KeyDeleted.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only events at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Only events before this time (RFC 3339).
    #[arg(long)]
    until: Option<DateTime<Utc>>,
    /// Most events to print.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum AuditAction {
    /// Walk every hash chain; exit 1 naming the first event that was altered.
    Verify,
}

pub async fn run(args: AuditArgs, config: Config) -> Result<ExitCode, Error> {
    let store = crate::app::open_store(&config).await?;
    let projections = keyledger_projections::Projections::unloaded(store.projection_db());
    if let Some(AuditAction::Verify) = args.action {
        let report = crate::integrity::verify_chains(&store, &projections).await?;
        return Ok(match report.first_broken {
            None => {
                println!(
                    "ok: {} events verified, every chain intact ({} written before chaining)",
                    report.events, report.unlinked
                );
                ExitCode::SUCCESS
            }
            Some(b) => {
                println!(
                    "TAMPERED: event at position {} ({} {} sequence {}): {}",
                    b.position, b.aggregate_type, b.aggregate_id, b.sequence, b.reason
                );
                ExitCode::FAILURE
            }
        });
    }
    let page = projections
        .audit(&AuditFilter {
            tenant: args.tenant,
            key_id: args.key_id,
            actor: args.actor,
            event_type: args.event_type,
            since: args.since,
            until: args.until,
            after_position: None,
            order: Order::Asc,
            limit: args.limit.max(1),
        })
        .await?;
    if args.json {
        let rows: Vec<serde_json::Value> = page
            .events
            .into_iter()
            .map(|e| {
                let tenant = e.tenant.clone();
                let mut v = serde_json::to_value(AuditEvent::from(e)).unwrap_or_default();
                if let Some(obj) = v.as_object_mut() {
                    obj.insert("tenant".into(), tenant.into());
                }
                v
            })
            .collect();
        let text =
            serde_json::to_string_pretty(&rows).map_err(|e| Error::Internal(e.to_string()))?;
        println!("{text}");
    } else {
        println!(
            "{:>8}  {:<24}  {:<12}  {:<36}  {:<16}  {:<16}",
            "POSITION", "OCCURRED_AT", "TENANT", "KEY_ID", "TYPE", "ACTOR"
        );
        for e in page.events {
            println!(
                "{:>8}  {:<24}  {:<12}  {:<36}  {:<16}  {:<16}",
                e.position,
                e.occurred_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                e.tenant,
                e.key_id,
                e.event_type,
                e.actor.as_deref().unwrap_or("-"),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
