//! `keyledger audit`: the audit log from the projection tables, as a table or JSON.
//!
//! The table goes to an operator's terminal, and most of what it shows was chosen
//! by whoever called the API: the actor is a token's `sub`, the tenant its
//! `tenant` claim. Every text field is passed through [`terminal_safe`] so that
//! no control character (an ESC starting a sequence that clears the screen or
//! rewrites earlier lines, a carriage return, a BEL, a C1 control such as U+009B,
//! which some terminals take for ESC `[`) reaches the terminal as itself.

use std::borrow::Cow;
use std::fmt::Write as _;
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
                // A tampered row is exactly where hostile text is to be expected.
                println!(
                    "TAMPERED: event at position {} ({} {} sequence {}): {}",
                    b.position,
                    terminal_safe(&b.aggregate_type),
                    terminal_safe(&b.aggregate_id),
                    b.sequence,
                    terminal_safe(&b.reason)
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
        let text = serde_json::to_string_pretty(&rows)
            .map_err(|e| Error::internal_from("serialising the audit rows", e))?;
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
                terminal_safe(&e.tenant),
                terminal_safe(&e.key_id),
                terminal_safe(&e.event_type),
                terminal_safe(e.actor.as_deref().unwrap_or("-")),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `text` as it may be written to a terminal: every control character (C0, DEL,
/// C1), every invisible formatting character that reorders or hides text (bidi
/// overrides and isolates, zero-width characters, line and paragraph separators)
/// and the backslash itself are written as escapes: `\n`, `\r`, `\t`, `\\`,
/// else `\u{1b}`. The backslash is escaped so that an escape cannot be faked: a
/// subject that is the six characters `\u{1b}` prints as `\\u{1b}`. Text
/// without any of them (nearly all) is returned as it is, without a copy.
pub(crate) fn terminal_safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                // Writing to a String cannot fail.
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    c == '\\'
        // C0 controls, DEL and the C1 controls U+0080..=U+009F.
        || c.is_control()
        || matches!(c,
            '\u{061c}'                    // Arabic letter mark
            | '\u{200b}'..='\u{200f}'     // zero-width space/joiners, LRM, RLM
            | '\u{2028}' | '\u{2029}'     // line and paragraph separators
            | '\u{202a}'..='\u{202e}'     // bidi embeddings and overrides
            | '\u{2060}'..='\u{2069}'     // word joiner, invisible operators, bidi isolates
            | '\u{feff}'                   // zero-width no-break space
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_is_not_copied() {
        for text in [
            "alice",
            "key_0123456789abcdef0123456789abcdef",
            "Zoë (ops) 名前",
            "",
        ] {
            assert!(matches!(terminal_safe(text), Cow::Borrowed(t) if t == text));
        }
    }

    #[test]
    fn every_control_character_is_escaped() {
        assert_eq!(
            terminal_safe("a\u{1b}[2J\rb\u{7}c\u{9b}31m\u{7f}\n\t"),
            "a\\u{1b}[2J\\rb\\u{7}c\\u{9b}31m\\u{7f}\\n\\t"
        );
        assert_eq!(terminal_safe("\u{202e}emca"), "\\u{202e}emca");
        assert_eq!(
            terminal_safe("a\\u{1b}"),
            "a\\\\u{1b}",
            "an escape cannot be faked"
        );
        for c in (0u32..0x110000).filter_map(char::from_u32) {
            let shown = terminal_safe(c.encode_utf8(&mut [0; 4])).into_owned();
            assert!(
                !shown.chars().any(|s| s.is_control()),
                "U+{:04X} printed as {shown:?}",
                u32::from(c)
            );
        }
    }
}
