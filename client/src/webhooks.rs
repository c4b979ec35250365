//! Webhook endpoints and their deliveries (`/v1/webhooks...`).

use std::ops::Deref;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::codes::{DeliveryStatus, WebhookStatus};
use crate::secret::Secret;

/// A webhook endpoint (without its secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Webhook {
    /// `wh_` + 32 hex digits.
    pub id: String,
    pub url: String,
    /// The message types it gets; all when empty.
    #[serde(default)]
    pub events: Vec<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub status: WebhookStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An endpoint with its signing secret (`whsec_...`): the answer to a create
/// and to a secret rotation, the only ones that show it. Derefs to the
/// [`Webhook`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookWithSecret {
    #[serde(flatten)]
    pub webhook: Webhook,
    pub secret: Secret,
}

impl Deref for WebhookWithSecret {
    type Target = Webhook;

    fn deref(&self) -> &Webhook {
        &self.webhook
    }
}

/// `POST /v1/webhooks`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CreateWebhook {
    /// http or https, a public host.
    pub url: String,
    /// Message types (`key.created`, ...); empty means all.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// `PATCH /v1/webhooks/{id}`: `None` leaves a field as it is.
#[derive(Debug, Clone, Default, Serialize)]
pub struct UpdateWebhook {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<String>>,
    /// `Some(None)` clears it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<Option<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<WebhookStatus>,
}

/// A message to an endpoint and how its delivery stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// `msg_` + 32 hex digits.
    pub id: String,
    #[serde(rename = "type")]
    pub message_type: String,
    pub position: i64,
    pub key_id: String,
    pub attempts: i64,
    pub status: DeliveryStatus,
    #[serde(default)]
    pub last_attempt_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(default)]
    pub response_status: Option<i64>,
}

/// A page of deliveries, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryList {
    pub deliveries: Vec<Delivery>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// The query of `GET /v1/webhooks/{id}/deliveries`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeliveryFilter {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<DeliveryStatus>,
    /// 1-100, default 50.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}
