//! Webhooks: a tenant's endpoints (settings as events in each endpoint's
//! stream, audited like every change) and, from the global feed, the
//! messages sent to them.

pub mod delivery;
pub mod target;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use keyledger_domain::webhook::{
    self, new_webhook_id, WebhookCommand, WebhookEndpoint, WebhookStatus,
};

use crate::clock::Clock;
use crate::error::Error;
use crate::service::Actor;
use crate::store::webhooks::{DeliveryRow, DELIVERED};
use crate::store::EventStore;
use crate::tailer::Tailer;

/// The most endpoints one tenant may have.
pub const MAX_ENDPOINTS_PER_TENANT: i64 = 50;

/// An endpoint as the API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    pub id: String,
    pub endpoint: WebhookEndpoint,
}

/// A change to an endpoint's settings (PATCH).
#[derive(Debug, Clone, Default)]
pub struct EndpointChange {
    pub url: Option<String>,
    pub events: Option<Vec<String>>,
    pub description: Option<Option<String>>,
    pub status: Option<WebhookStatus>,
}

/// The node's webhook side: endpoint management now, delivery beside it.
pub struct Webhooks {
    store: Arc<EventStore>,
    deliverer: Arc<delivery::Deliverer>,
    tailer: Arc<Tailer>,
    clock: Clock,
    /// Endpoint secrets derive from it (`webhook::signing_secret`).
    server_secret: Vec<u8>,
    allow_private: bool,
}

impl Webhooks {
    pub fn new(
        store: Arc<EventStore>,
        deliverer: Arc<delivery::Deliverer>,
        tailer: Arc<Tailer>,
        clock: Clock,
        server_secret: &[u8],
        allow_private: bool,
    ) -> Self {
        Self {
            store,
            deliverer,
            tailer,
            clock,
            server_secret: server_secret.to_vec(),
            allow_private,
        }
    }

    /// The secret of `generation` as the API shows it (`whsec_…`).
    pub fn secret_text(&self, id: &str, generation: u32) -> String {
        webhook::secret_text(&webhook::signing_secret(
            &self.server_secret,
            id,
            generation,
        ))
    }

    /// Creates an endpoint; its messages are about events after this one.
    pub async fn create(
        &self,
        actor: &Actor,
        url: String,
        events: Vec<String>,
        description: Option<String>,
    ) -> Result<Endpoint, Error> {
        webhook::url(&url)?;
        target::resolve(&url, self.allow_private).await?;
        let table = self.store.webhooks();
        if table
            .list(&actor.tenant, MAX_ENDPOINTS_PER_TENANT)
            .await?
            .len()
            >= MAX_ENDPOINTS_PER_TENANT as usize
        {
            return Err(Error::validation(
                "url",
                format!("a tenant may have at most {MAX_ENDPOINTS_PER_TENANT} webhook endpoints"),
            ));
        }
        let id = new_webhook_id(&mut rand::rng());
        let now = self.clock.now();
        let appended = self
            .store
            .change_webhook(
                &id,
                WebhookCommand::Create {
                    tenant: actor.tenant.to_string(),
                    url,
                    events,
                    description,
                    at: now,
                },
                &crate::service::metadata(actor, now),
            )
            .await?;
        // Messages start after the feed's head as it stands now: at the
        // latest the create's own event, which no message is about.
        let head = self.store.head().await?;
        table.add(&id, &actor.tenant, head).await?;
        self.tailer.show_committed().await?;
        Ok(Endpoint {
            id,
            endpoint: appended.event.endpoint().clone(),
        })
    }

    /// The tenant's endpoints, in id order.
    pub async fn list(&self, actor: &Actor) -> Result<Vec<Endpoint>, Error> {
        let ids = self
            .store
            .webhooks()
            .list(&actor.tenant, MAX_ENDPOINTS_PER_TENANT)
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(endpoint) = self.store.webhook(&id).await? {
                if endpoint.tenant == *actor.tenant && !endpoint.deleted {
                    out.push(Endpoint { id, endpoint });
                }
            }
        }
        Ok(out)
    }

    /// One of the tenant's endpoints (404 for another tenant's, as for none).
    pub async fn get(&self, actor: &Actor, id: &str) -> Result<Endpoint, Error> {
        if !webhook::is_webhook_id(id) {
            return Err(Error::WebhookNotFound);
        }
        match self.store.webhook(id).await? {
            Some(endpoint) if endpoint.tenant == *actor.tenant && !endpoint.deleted => {
                Ok(Endpoint {
                    id: id.to_string(),
                    endpoint,
                })
            }
            _ => Err(Error::WebhookNotFound),
        }
    }

    pub async fn update(
        &self,
        actor: &Actor,
        id: &str,
        change: EndpointChange,
    ) -> Result<Endpoint, Error> {
        self.get(actor, id).await?;
        if let Some(url) = &change.url {
            webhook::url(url)?;
            target::resolve(url, self.allow_private).await?;
        }
        self.command(actor, id, |at| WebhookCommand::Update {
            tenant: actor.tenant.to_string(),
            url: change.url.clone(),
            events: change.events.clone(),
            description: change.description.clone(),
            status: change.status,
            reason: None,
            at,
        })
        .await
    }

    /// A new secret; the old one keeps signing beside it for 24 h.
    pub async fn rotate_secret(&self, actor: &Actor, id: &str) -> Result<Endpoint, Error> {
        self.get(actor, id).await?;
        self.command(actor, id, |at| WebhookCommand::RotateSecret {
            tenant: actor.tenant.to_string(),
            at,
        })
        .await
    }

    pub async fn delete(&self, actor: &Actor, id: &str) -> Result<(), Error> {
        self.get(actor, id).await?;
        self.command(actor, id, |at| WebhookCommand::Delete {
            tenant: actor.tenant.to_string(),
            at,
        })
        .await?;
        self.store.webhooks().remove(id).await
    }

    /// An endpoint's messages, newest first: a page of at most `limit`
    /// before feed position `before`, with the status asked for.
    pub async fn deliveries(
        &self,
        actor: &Actor,
        id: &str,
        status: Option<&str>,
        before: i64,
        limit: i64,
    ) -> Result<Vec<DeliveryRow>, Error> {
        self.get(actor, id).await?;
        self.store
            .webhooks()
            .deliveries(id, status, before, limit)
            .await
    }

    /// Sends a message again: the endpoint's next message is tried now; one
    /// already delivered is sent once more, as it was (same id).
    pub async fn retry(&self, actor: &Actor, id: &str, msg_id: &str) -> Result<(), Error> {
        self.get(actor, id).await?;
        let table = self.store.webhooks();
        match table.delivery(id, msg_id).await? {
            None => Err(Error::DeliveryNotFound),
            Some(d) if d.status == DELIVERED => {
                let deliverer = self.deliverer.clone();
                let id = id.to_string();
                // Answered at once (202); the attempt shows in the history.
                tokio::spawn(async move {
                    if let Err(e) = deliverer.resend(&id, d.position).await {
                        tracing::warn!(endpoint = %id, error = %e, "a manual resend failed");
                    }
                });
                Ok(())
            }
            Some(_) => table.due_now(id).await,
        }
    }

    async fn command(
        &self,
        actor: &Actor,
        id: &str,
        command: impl Fn(DateTime<Utc>) -> WebhookCommand,
    ) -> Result<Endpoint, Error> {
        let now = self.clock.now();
        let appended = self
            .store
            .change_webhook(id, command(now), &crate::service::metadata(actor, now))
            .await
            .map_err(|e| match e {
                // Deleted by a racing request since it was read.
                Error::Domain(keyledger_domain::DomainError::NotFound) => Error::WebhookNotFound,
                e => e,
            })?;
        self.tailer.show_committed().await?;
        Ok(Endpoint {
            id: id.to_string(),
            endpoint: appended.event.endpoint().clone(),
        })
    }
}
