//! Delivery: every endpoint's messages come from the global feed, in feed
//! order, at least once. Each endpoint has a position it has delivered (or
//! skipped) through; a node takes an endpoint's lease in the store before
//! sending anything for it, so one node at a time sends an endpoint's
//! messages, and a node killed mid-delivery only leaves the message in
//! flight to be sent again by whoever takes the lease next (same message id,
//! so receivers drop the duplicate).
//!
//! A message that fails holds the endpoint's later messages back (order
//! first) and is tried again after 5 s, 1 min, 10 min, 1 h, 6 h, then every
//! 12 h; an endpoint failing for 3 days is disabled with an event. A
//! disabled endpoint keeps its position: enabled again, it gets everything
//! it missed, in order.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use keyledger_domain::webhook::{
    message_id, retry_delay, signature, signing_secret, WebhookCommand, WebhookEndpoint,
    WebhookStatus, FAILING_LIMIT,
};
use keyledger_domain::{ApiKeyEvent, KeyUsageEvent};
use keyledger_projections::event::meta_keys;
use keyledger_projections::key_list::KeyRow;
use keyledger_projections::{KeyledgerEvent, Projections, RecordedEvent};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::error::Error;
use crate::store::webhooks::{Attempt, Claimed};
use crate::store::{EventMetadata, EventStore};
use crate::webhooks::target;

/// How long a node holds an endpoint without renewing its lease: longer
/// than one attempt (`SEND_TIMEOUT`), short enough that a dead node's
/// endpoints move on soon.
const LEASE_MS: i64 = 20_000;
/// An attempt with no complete answer in this long failed.
const SEND_TIMEOUT: Duration = Duration::from_secs(15);
/// Endpoints one node delivers at once: a slow receiver holds one of them.
const IN_FLIGHT: usize = 16;
/// Feed events read per round.
const BATCH: i64 = 200;
/// How often a node looks for due endpoints behind the feed's head (one
/// read of the head and one statement; endpoints that have seen everything
/// are not taken, so an idle system writes nothing).
const TICK: Duration = Duration::from_millis(100);
/// An endpoint whose delivery stopped on an error is due again after this.
const IDLE_MS: i64 = 200;
/// A disabled endpoint is looked at again after this long.
const DISABLED_MS: i64 = 5_000;

/// The body of a message (the API's shapes live with the HTTP layer).
pub trait MessageBody: Send + Sync {
    /// `{"type", "timestamp", "data": {"key", "event"}}` as bytes.
    fn render(
        &self,
        message_type: &str,
        event: &RecordedEvent,
        key: Option<KeyRow>,
        timestamp: DateTime<Utc>,
    ) -> Result<Vec<u8>, Error>;
}

/// The message type of an event, if it makes one.
pub fn message_type(event: &KeyledgerEvent) -> Option<&'static str> {
    match event {
        KeyledgerEvent::Key(e) => Some(match e {
            ApiKeyEvent::KeyCreated(_) => "key.created",
            ApiKeyEvent::KeyUpdated(_) => "key.updated",
            ApiKeyEvent::KeyDeactivated(_) => "key.deactivated",
            ApiKeyEvent::KeyReactivated(_) => "key.reactivated",
            ApiKeyEvent::KeyDeleted(_) => "key.deleted",
            ApiKeyEvent::KeyExpirySet(x) if x.rotated_to.is_some() => "key.rotated",
            ApiKeyEvent::KeyExpirySet(_) => "key.updated",
            ApiKeyEvent::KeyLeakReported(_) => "key.leaked",
            ApiKeyEvent::KeyExpiryNoticed(n) => match n.notice {
                keyledger_domain::ExpiryNotice::Expired => "key.expired",
                _ => "key.expiring",
            },
        }),
        KeyledgerEvent::Usage(KeyUsageEvent::KeyCreditsChanged(_)) => Some("key.credits_changed"),
        KeyledgerEvent::Usage(_)
        | KeyledgerEvent::Owner(_)
        | KeyledgerEvent::Webhook(_)
        | KeyledgerEvent::Policy(_) => None,
    }
}

/// What an attempt came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub delivered: bool,
    pub status: Option<u16>,
}

/// Sends this node's share of the messages.
pub struct Deliverer {
    store: Arc<EventStore>,
    projections: Arc<Projections>,
    clock: Clock,
    node: String,
    server_secret: Vec<u8>,
    allow_private: bool,
    http: reqwest::Client,
    body: Arc<dyn MessageBody>,
    /// Endpoints this node is delivering now.
    busy: Mutex<HashSet<String>>,
}

impl Deliverer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<EventStore>,
        projections: Arc<Projections>,
        clock: Clock,
        node: String,
        server_secret: &[u8],
        allow_private: bool,
        body: Arc<dyn MessageBody>,
    ) -> Result<Self, Error> {
        let http = reqwest::Client::builder()
            // A redirect would send the message somewhere the check below
            // never saw; 3xx counts as a failure.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(SEND_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .no_proxy()
            .dns_resolver(Arc::new(target::PublicResolver::new(allow_private)))
            .user_agent(concat!("keyledger-webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::internal_from("the webhook HTTP client", e))?;
        Ok(Self {
            store,
            projections,
            clock,
            node,
            server_secret: server_secret.to_vec(),
            allow_private,
            http,
            body,
            busy: Mutex::default(),
        })
    }

    /// Delivers until `stop`; what is in flight then finishes first.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut running = JoinSet::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {}
            }
            while running.try_join_next().is_some() {}
            let room = IN_FLIGHT.saturating_sub(running.len());
            if room == 0 {
                continue;
            }
            let now = self.clock.now().timestamp_millis();
            let head = match self.store.head().await {
                Ok(h) => h,
                Err(e) => {
                    tracing::debug!(error = %e, "the feed's head could not be read");
                    continue;
                }
            };
            let claimed = match self
                .store
                .webhooks()
                .claim(&self.node, now, now + LEASE_MS, head, room as i64)
                .await
            {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(error = %e, "webhook endpoints could not be claimed");
                    continue;
                }
            };
            for endpoint in claimed {
                if !self.busy().insert(endpoint.id.clone()) {
                    continue;
                }
                let me = self.clone();
                running.spawn(async move {
                    let id = endpoint.id.clone();
                    if let Err(e) = me.deliver(endpoint).await {
                        tracing::warn!(endpoint = %id, error = %e, "webhook delivery stopped");
                        let _ = me
                            .store
                            .webhooks()
                            .release(&id, &me.node, me.now_ms() + IDLE_MS)
                            .await;
                    }
                    me.busy().remove(&id);
                });
            }
        }
        while running.join_next().await.is_some() {}
    }

    fn busy(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.busy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> i64 {
        self.clock.now().timestamp_millis()
    }

    /// Sends an endpoint's messages in order until it has no more, one
    /// fails, or the lease is lost.
    async fn deliver(&self, claimed: Claimed) -> Result<(), Error> {
        let table = self.store.webhooks();
        let Some(endpoint) = self.store.webhook(&claimed.id).await? else {
            return table
                .release(&claimed.id, &self.node, self.now_ms() + DISABLED_MS)
                .await;
        };
        if endpoint.deleted {
            return table.remove(&claimed.id).await;
        }
        if endpoint.status != WebhookStatus::Enabled {
            return table
                .release(&claimed.id, &self.node, self.now_ms() + DISABLED_MS)
                .await;
        }
        let mut through = claimed.delivered_through;
        loop {
            let events = self.store.read_feed(through, BATCH).await?;
            let Some(last) = events.last().map(|e| e.position) else {
                // Caught up: taken again once the head moves past it; the
                // time orders it behind endpoints waiting longer (no one starves).
                return table.release(&claimed.id, &self.node, self.now_ms()).await;
            };
            for raw in events {
                let position = raw.position;
                let Some(event) = RecordedEvent::decode(raw)? else {
                    continue;
                };
                let Some(kind) = message_type(&event.event)
                    .filter(|t| event.meta.tenant == claimed.tenant && endpoint.wants(t))
                else {
                    continue;
                };
                // Past what had no message, so a retry starts here.
                if position - 1 > through
                    && !table
                        .skip_to(&claimed.id, &self.node, position - 1, self.lease())
                        .await?
                {
                    return Ok(());
                }
                let now = self.clock.now();
                let body = self.message(&claimed.tenant, kind, &event, now).await?;
                let msg_id = message_id(&claimed.id, position);
                let outcome = self.send(&claimed.id, &endpoint, &msg_id, &body, now).await;
                let failures = if outcome.delivered {
                    0
                } else {
                    table
                        .delivery(&claimed.id, &msg_id)
                        .await?
                        .map_or(0, |d| d.attempts)
                        + 1
                };
                let at_ms = now.timestamp_millis();
                let attempt = Attempt {
                    endpoint_id: &claimed.id,
                    position,
                    msg_id: &msg_id,
                    message_type: kind,
                    key_id: &event.key_id,
                    delivered: outcome.delivered,
                    at_ms,
                    next_attempt_ms: (!outcome.delivered).then(|| {
                        at_ms
                            + retry_delay(u32::try_from(failures).unwrap_or(u32::MAX))
                                .num_milliseconds()
                    }),
                    response_status: outcome.status,
                };
                crate::metrics::webhook_attempt(
                    outcome.delivered,
                    outcome
                        .delivered
                        .then(|| (now - event.meta.occurred_at).to_std().unwrap_or_default()),
                );
                if !table.record(&self.node, &attempt, self.lease()).await? {
                    return Ok(());
                }
                if !outcome.delivered {
                    let since = claimed.failing_since.unwrap_or(at_ms);
                    if at_ms - since >= FAILING_LIMIT.num_milliseconds() {
                        self.disable(&claimed, since).await?;
                    }
                    return table.release(&claimed.id, &self.node, 0).await;
                }
                through = position;
            }
            if last > through {
                if !table
                    .skip_to(&claimed.id, &self.node, last, self.lease())
                    .await?
                {
                    return Ok(());
                }
                through = last;
            }
        }
    }

    /// Sends the message about the event at `position` once more (a manual
    /// retry of a message already delivered), as it was built then: same id.
    pub async fn resend(&self, id: &str, position: i64) -> Result<(), Error> {
        let Some(endpoint) = self.store.webhook(id).await? else {
            return Ok(());
        };
        let Some(raw) = self
            .store
            .read_feed(position - 1, 1)
            .await?
            .into_iter()
            .find(|e| e.position == position)
        else {
            return Ok(());
        };
        let Some(event) = RecordedEvent::decode(raw)? else {
            return Ok(());
        };
        let Some(kind) = message_type(&event.event) else {
            return Ok(());
        };
        let now = self.clock.now();
        let body = self.message(&endpoint.tenant, kind, &event, now).await?;
        let outcome = self
            .send(id, &endpoint, &message_id(id, position), &body, now)
            .await;
        self.store
            .webhooks()
            .note_resend(id, position, now.timestamp_millis(), outcome.status)
            .await
    }

    /// A message's body: the event, and its key as the key list shows it now.
    async fn message(
        &self,
        tenant: &str,
        kind: &str,
        event: &RecordedEvent,
        now: DateTime<Utc>,
    ) -> Result<Vec<u8>, Error> {
        let key = self
            .projections
            .get_key(&keyledger_domain::TenantId::from(tenant), &event.key_id)
            .await?;
        self.body.render(kind, event, key, now)
    }

    fn lease(&self) -> i64 {
        self.now_ms() + LEASE_MS
    }

    /// One attempt: signed with every secret that signs now (two during a
    /// rotation's overlap), to the target as it resolves now.
    async fn send(
        &self,
        id: &str,
        endpoint: &WebhookEndpoint,
        msg_id: &str,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Outcome {
        let failed = Outcome {
            delivered: false,
            status: None,
        };
        // A literal address never reaches the resolver: checked here.
        if target::resolve(&endpoint.url, self.allow_private)
            .await
            .is_err()
        {
            return failed;
        }
        let timestamp = now.timestamp();
        let signatures: Vec<String> = endpoint
            .signing_generations(now)
            .into_iter()
            .map(|g| {
                signature(
                    &signing_secret(&self.server_secret, id, g),
                    msg_id,
                    timestamp,
                    body,
                )
            })
            .collect();
        let sent = self
            .http
            .post(&endpoint.url)
            .header("content-type", "application/json")
            .header("webhook-id", msg_id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signatures.join(" "))
            .body(body.to_vec())
            .send()
            .await;
        match sent {
            // The body is never read: only the status counts.
            Ok(response) => Outcome {
                delivered: response.status().is_success(),
                status: Some(response.status().as_u16()),
            },
            Err(e) => {
                tracing::debug!(endpoint = %id, error = %e, "webhook attempt failed");
                failed
            }
        }
    }

    /// Disables an endpoint that has failed for [`FAILING_LIMIT`], with an
    /// event saying so.
    async fn disable(&self, claimed: &Claimed, since_ms: i64) -> Result<(), Error> {
        let now = self.clock.now();
        let since = DateTime::from_timestamp_millis(since_ms).unwrap_or(now);
        let metadata = EventMetadata::from([
            (
                meta_keys::ACTOR.to_string(),
                format!("{}:{}", crate::limits::NODE_ACTOR, self.node),
            ),
            (meta_keys::TENANT.to_string(), claimed.tenant.clone()),
            (meta_keys::OCCURRED_AT.to_string(), now.to_rfc3339()),
        ]);
        self.store
            .change_webhook(
                &claimed.id,
                WebhookCommand::Update {
                    tenant: claimed.tenant.clone(),
                    url: None,
                    events: None,
                    description: None,
                    status: Some(WebhookStatus::Disabled),
                    reason: Some(format!("failing since {}", since.to_rfc3339())),
                    at: now,
                },
                &metadata,
            )
            .await?;
        crate::metrics::webhook_disabled();
        tracing::warn!(endpoint = %claimed.id, "webhook endpoint disabled after failing for 3 days");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changes_of_keys_make_messages() {
        let deleted = KeyledgerEvent::Key(ApiKeyEvent::KeyDeleted(keyledger_domain::KeyDeleted {
            at: Utc::now(),
        }));
        assert_eq!(message_type(&deleted), Some("key.deleted"));
    }
}
