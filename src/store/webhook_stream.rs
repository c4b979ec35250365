//! A webhook endpoint's stream: its settings as events, each carrying the
//! endpoint as it left it, appended under the store's optimistic
//! concurrency like an owner's limits.

use keyledger_domain::chain::PREV_HASH;
use keyledger_domain::webhook::{Webhook, WebhookCommand, WebhookEndpoint, WebhookEvent};
use keyledger_domain::KeyId;

use super::ledger::decode;
use super::{backoff, serialize, EventMetadata, EventStore, Stream, CONFLICT_RETRIES};
use crate::error::Error;

/// What a change to an endpoint appended.
#[derive(Debug, Clone)]
pub struct WebhookAppend {
    pub event: WebhookEvent,
    /// Its stream sequence.
    pub sequence: i64,
}

impl EventStore {
    /// Decides `command` on the endpoint as its newest event left it and
    /// appends the event at the next sequence; a writer that appended first
    /// makes it decide again on the newer endpoint.
    pub async fn change_webhook(
        &self,
        id: &str,
        command: WebhookCommand,
        metadata: &EventMetadata,
    ) -> Result<WebhookAppend, Error> {
        let key = KeyId::new(id);
        for attempt in 0..CONFLICT_RETRIES {
            let head = self.stream_head(Stream::Webhook, &key).await?;
            let state = Webhook {
                endpoint: head
                    .newest
                    .as_ref()
                    .map(decode::<WebhookEvent>)
                    .transpose()?
                    .map(|e| e.endpoint().clone()),
            };
            let event = state.decide(command.clone())?;
            let mut meta = metadata.clone();
            meta.insert(PREV_HASH.to_string(), head.hash);
            let sequence = head.sequence + 1;
            let stored = serialize(
                <Webhook as cqrs_es::Aggregate>::TYPE,
                &key,
                sequence,
                &event,
                &meta,
            )?;
            match self.backend.append(Stream::Webhook, &[stored]).await {
                Ok(()) => {
                    self.sequence_after_commit().await;
                    return Ok(WebhookAppend {
                        event,
                        sequence: super::sequence_i64(sequence)?,
                    });
                }
                Err(Error::Conflict) => backoff(attempt).await,
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict)
    }

    /// An endpoint as its newest event left it (deleted ones included).
    pub async fn webhook(&self, id: &str) -> Result<Option<WebhookEndpoint>, Error> {
        let head = self.stream_head(Stream::Webhook, &KeyId::new(id)).await?;
        Ok(head
            .newest
            .as_ref()
            .map(decode::<WebhookEvent>)
            .transpose()?
            .map(|e| e.endpoint().clone()))
    }
}
