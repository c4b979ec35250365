//! Leaked keys: reports that keys keyledger issued were found where they
//! should not be. A report of one of our keys becomes a `KeyLeakReported`
//! event on the key (once per reporter and URL, so a reporter's retries
//! record nothing more) and then its tenant's policy (`/v1/policy`):
//! deactivation with the reason "leaked" (the default; a no-op on a key
//! already inactive), deletion, or nothing more (notify). Anything
//! else reported is not ours, and nothing says so to the reporter of
//! `POST /v1/leaks/report`.
//!
//! Actions run after the answer, in the background: a reporter's answer
//! never waits on the store. They run one report at a time on a node, in
//! the order the reports came: reports of the same keys that overlap would
//! otherwise race each other for each key's stream, and a record that kept
//! losing would be dropped after its answer said it was taken. A conflict
//! with another node is retried until it goes through.

use std::sync::Arc;

use keyledger_domain::policy::LeakAction;
use keyledger_domain::{KeyCommandKind, KeyId, TenantId};
use uuid::Uuid;

use crate::error::Error;
use crate::service::{Actor, KeyService};

/// The most keys one public report may carry.
pub const MAX_REPORTED_KEYS: usize = 100;
/// The longest text a report's URL or source may be (longer is cut).
const MAX_TEXT_CHARS: usize = 2_048;

/// Where a reported key was found, as the reporter said.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    pub source: Option<String>,
    pub url: Option<String>,
}

pub mod reporters;

/// Acts on leak reports.
pub struct Leaks {
    service: Arc<KeyService>,
    /// Held while a report is acted on (tokio's mutex is fair: first come,
    /// first served).
    turn: Arc<tokio::sync::Mutex<()>>,
    /// Configured secret-scanning partners, by name.
    reporters: std::collections::HashMap<String, Arc<reporters::Reporter>>,
}

/// Bounds reporter text for the log: control characters dropped, length cut.
fn bounded(text: Option<String>) -> Option<String> {
    text.map(|t| {
        t.chars()
            .filter(|c| !c.is_control())
            .take(MAX_TEXT_CHARS)
            .collect::<String>()
    })
    .filter(|t| !t.is_empty())
}

impl Leaks {
    pub fn new(service: Arc<KeyService>, configured: &[reporters::ReporterConfig]) -> Self {
        let http = reqwest::Client::new();
        let reporters = configured
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    Arc::new(reporters::Reporter::new(c.clone(), http.clone())),
                )
            })
            .collect();
        Self {
            service,
            turn: Arc::default(),
            reporters,
        }
    }

    /// A configured reporter, by name.
    pub fn reporter(&self, name: &str) -> Option<&Arc<reporters::Reporter>> {
        self.reporters.get(name)
    }

    /// The id and tenant of each of `keys` that is one of ours (from memory).
    pub fn ours<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Vec<(String, String)> {
        let index = self.service.projections().index();
        // A report names whole keys: each string is parsed as one.
        keys.into_iter().filter_map(|k| index.owner_of(k)).collect()
    }

    /// Records the report on each of our keys and applies its tenant's
    /// policy, in the background.
    pub fn act(self: &Arc<Self>, reporter: &str, keys: Vec<(String, String)>, found: Found) {
        if keys.is_empty() {
            return;
        }
        let me = self.clone();
        let reporter = reporter.to_string();
        let found = Found {
            source: bounded(found.source),
            url: bounded(found.url),
        };
        tokio::spawn(async move {
            let _turn = me.turn.clone().lock_owned().await;
            for (key_id, tenant) in keys {
                if let Err(e) = me.act_on(&reporter, &key_id, &tenant, &found).await {
                    tracing::warn!(key = %key_id, error = %e, "a leak report could not be acted on");
                }
            }
        });
    }

    /// Runs a command until it is not lost to a conflict: the command itself
    /// retries a few times; a report keeps going (a few more rounds, a
    /// second apart) because nobody is waiting to retry it.
    async fn persist(&self, actor: &Actor, id: &KeyId, kind: KeyCommandKind) -> Result<(), Error> {
        const ROUNDS: usize = 30;
        let mut round = 0;
        loop {
            match self.service.run_command(actor, id, kind.clone()).await {
                Err(Error::Conflict) if round < ROUNDS => {
                    round += 1;
                    tracing::debug!(key = %id, round, "a leak action lost a race; trying again");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                other => return other,
            }
        }
    }

    async fn act_on(
        &self,
        reporter: &str,
        key_id: &str,
        tenant: &str,
        found: &Found,
    ) -> Result<(), Error> {
        let actor = Actor {
            tenant: TenantId::from(tenant),
            subject: format!("keyledger:leaks:{reporter}"),
            request_id: Uuid::now_v7().to_string(),
            client_addr: None,
            user_agent: None,
        };
        let id = KeyId::from(key_id);
        let recorded = self
            .persist(
                &actor,
                &id,
                KeyCommandKind::ReportLeak {
                    reporter: reporter.to_string(),
                    source: found.source.clone(),
                    url: found.url.clone(),
                },
            )
            .await;
        let done = match recorded {
            Ok(()) => {
                let action = match self.service.policy(&actor).await?.on_leak {
                    LeakAction::Deactivate => Some(KeyCommandKind::DeactivateKey {
                        reason: Some("leaked".into()),
                    }),
                    LeakAction::Delete => Some(KeyCommandKind::DeleteKey),
                    LeakAction::Notify => None,
                };
                match action {
                    Some(kind) => self.persist(&actor, &id, kind).await,
                    None => Ok(()),
                }
            }
            Err(e) => Err(e),
        };
        match done {
            // Deleted meanwhile: nothing left to protect.
            Err(Error::KeyNotFound) => Ok(()),
            other => other,
        }
    }
}
