//! `keyledger keys list`: a tenant's keys from the key list view, with the
//! hygiene filters of `GET /v1/keys` (unused for a while, never used, expiring
//! soon, never expiring, breaking the tenant's current policy), as a table or
//! JSON lines.
//!
//! It reads the projection tables directly, as `keyledger audit` does, so it
//! needs no running server and no token. The flags are checked by the code
//! that checks the API's query ([`ListQuery::filter`]), and each key is shown
//! as the API shows it ([`KeyView`]). Names (and anything else stored) are
//! what a tenant chose: the table passes them through [`terminal_safe`].

use std::borrow::Cow;
use std::io::Write as _;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use keyledger_domain::{DomainError, TenantId};
use keyledger_projections::Projections;

use super::audit::terminal_safe;
use crate::config::Config;
use crate::error::Error;
use crate::http::keys::{KeyView, ListQuery};

/// Keys read per query: the API's largest page.
const PAGE: u32 = 100;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// List a tenant's keys, newest first, with the filters of GET /v1/keys.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// The tenant whose keys to list.
    #[arg(long)]
    tenant: String,
    /// Only keys with this status: active, inactive or expired.
    #[arg(long)]
    status: Option<String>,
    /// Only keys of this environment: live or test.
    #[arg(long)]
    environment: Option<String>,
    /// Only keys unused for longer than this (e.g. 30d, 12h, 90m): last used
    /// before now minus it, or never used and created before then.
    #[arg(long, value_name = "DURATION")]
    unused_for: Option<String>,
    /// Only keys never used.
    #[arg(long)]
    never_used: bool,
    /// Only keys that expire within this long from now (e.g. 14d).
    #[arg(long, value_name = "DURATION")]
    expires_within: Option<String>,
    /// Only keys without an expiry.
    #[arg(long)]
    no_expiry: bool,
    /// Only keys that break the tenant's current policy (an environment or
    /// permission it does not allow, no expiry where it requires one, a
    /// longer lifetime than its longest); they are listed, never changed.
    #[arg(long)]
    breaks_policy: bool,
    /// Most keys to print.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    limit: u32,
    /// Print one JSON object per line (the API's key view) instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: KeysCommand, config: Config) -> Result<ExitCode, Error> {
    match command {
        KeysCommand::List(args) => list(args, config).await,
    }
}

async fn list(args: ListArgs, config: Config) -> Result<ExitCode, Error> {
    let now = Utc::now();
    let query = ListQuery {
        status: args.status.as_deref(),
        environment: args.environment.as_deref(),
        unused_for: args.unused_for.as_deref(),
        never_used: args.never_used,
        expires_within: args.expires_within.as_deref(),
        no_expiry: args.no_expiry,
        breaks_policy: None,
        cursor: None,
        limit: args.limit.min(PAGE),
    };
    // Checked before the store is opened: a typo creates no data directory.
    let mut filter = query.filter(now).map_err(flag_named)?;
    let store = crate::app::open_store(&config).await?;
    let projections = Projections::unloaded(store.projection_db());
    if args.breaks_policy {
        // From its stream: an unloaded node's policy cache is never filled
        // by a feed, so it would only ever miss.
        let policy = store.policy(&args.tenant).await?;
        filter = ListQuery {
            breaks_policy: Some(&policy),
            ..query
        }
        .filter(now)
        .map_err(flag_named)?;
    }
    let tenant = TenantId::new(args.tenant);
    let mut views = Vec::new();
    loop {
        let left = args
            .limit
            .saturating_sub(u32::try_from(views.len()).unwrap_or(u32::MAX));
        filter.limit = left.min(PAGE);
        let page = projections.list_keys(&tenant, &filter, now).await?;
        views.extend(page.keys.into_iter().map(|row| KeyView::from_row(row, now)));
        match page.next_before {
            Some(before) if views.len() < args.limit as usize => {
                filter.before_position = Some(before);
            }
            _ => break,
        }
    }
    let mut out = std::io::stdout().lock();
    let written = if args.json {
        json_lines(&mut out, &views)
    } else {
        table(&mut out, &views)
    };
    written
        .and_then(|()| out.flush())
        .map_err(|e| Error::internal_from("writing the key list", e))?;
    Ok(ExitCode::SUCCESS)
}

/// A validation error naming the flag (`--unused-for`) rather than the query
/// parameter (`unused_for`).
fn flag_named(e: Error) -> Error {
    let flag = |field: &str| format!("--{}", field.replace('_', "-"));
    match e {
        Error::Validation { field, message } => Error::validation(flag(&field), message),
        Error::Domain(DomainError::Validation { field, message }) => {
            Error::validation(flag(field), message)
        }
        other => other,
    }
}

fn json_lines(out: &mut impl std::io::Write, views: &[KeyView]) -> std::io::Result<()> {
    for view in views {
        serde_json::to_writer(&mut *out, view)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

/// One row per key, columns as wide as their widest cell.
fn table(out: &mut impl std::io::Write, views: &[KeyView]) -> std::io::Result<()> {
    let header: [Cow<'_, str>; 6] = [
        "ID".into(),
        "PREFIX".into(),
        "NAME".into(),
        "STATUS".into(),
        "LAST_USED".into(),
        "EXPIRES".into(),
    ];
    let rows: Vec<[Cow<'_, str>; 6]> = views
        .iter()
        .map(|v| {
            [
                terminal_safe(&v.id),
                terminal_safe(&v.prefix),
                terminal_safe(&v.name),
                terminal_safe(&v.status),
                time(v.last_used_at).into(),
                time(v.expires_at).into(),
            ]
        })
        .collect();
    let mut widths = [0usize; 6];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(widths) {
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', width - cell.chars().count() + 2));
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

fn time(at: Option<DateTime<Utc>>) -> String {
    at.map_or_else(
        || "never".to_string(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_validation_error_names_the_flag() {
        let e = flag_named(Error::validation("unused_for", "bad"));
        assert_eq!(e.to_string(), "--unused-for: bad");
        let e = flag_named(Error::Domain(DomainError::Validation {
            field: "environment",
            message: "bad".into(),
        }));
        assert_eq!(e.to_string(), "--environment: bad");
    }
}
