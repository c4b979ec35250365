//! Events as the projections see them: decoded from a stored row of the global feed,
//! with their position, their key and the metadata recorded with the command.

use chrono::{DateTime, Utc};
use cqrs_es::persist::SerializedEvent;
use keyledger_domain::policy::{PolicyEvent, POLICY_AGGREGATE_TYPE};
use keyledger_domain::webhook::{WebhookEvent, WEBHOOK_AGGREGATE_TYPE};
use keyledger_domain::{
    ApiKeyEvent, KeyUsageEvent, OwnerEvent, API_KEY_AGGREGATE_TYPE, KEY_USAGE_AGGREGATE_TYPE,
    OWNER_AGGREGATE_TYPE,
};
use serde_json::Value;

pub use keyledger_domain::RawEvent;

use crate::error::ProjectionError;

/// Metadata keys written with every command. Persisted: never rename.
pub mod meta_keys {
    pub const ACTOR: &str = "actor";
    pub const TENANT: &str = "tenant";
    pub const REQUEST_ID: &str = "request_id";
    pub const OCCURRED_AT: &str = "occurred_at";
    pub const CLIENT_ADDR: &str = "client_addr";
    pub const USER_AGENT: &str = "user_agent";
}

/// Who did it, for whom, when.
#[derive(Debug, Clone, PartialEq)]
pub struct EventMeta {
    pub tenant: String,
    pub actor: Option<String>,
    pub request_id: Option<String>,
    pub client_addr: Option<String>,
    pub user_agent: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

/// The events of every aggregate type keyledger stores.
#[derive(Debug, Clone, PartialEq)]
// Boxing the large variant would add an allocation per event on the replay path.
#[allow(clippy::large_enum_variant)]
pub enum KeyledgerEvent {
    Key(ApiKeyEvent),
    Usage(KeyUsageEvent),
    /// An owner's shared limits; `key_id` is then the owner's stream id.
    Owner(OwnerEvent),
    /// A webhook endpoint's change; `key_id` is then the endpoint's id.
    Webhook(WebhookEvent),
    /// A tenant's policy; `key_id` is then the policy's stream id.
    Policy(PolicyEvent),
}

/// A decoded event with its place in the feed.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub position: i64,
    pub key_id: String,
    pub sequence: i64,
    pub meta: EventMeta,
    pub event: KeyledgerEvent,
    /// Chain hash of the stored event (see `keyledger_domain::chain`).
    pub hash: String,
}

impl RecordedEvent {
    /// Decodes a stored row. Rows of aggregate types keyledger does not know
    /// (another application sharing the table) yield `None`.
    pub fn decode(raw: RawEvent) -> Result<Option<Self>, ProjectionError> {
        let position = raw.position;
        let decode_err = |message: String| ProjectionError::Decode {
            position,
            message,
            source: None,
        };
        let unparsed = |e: serde_json::Error| ProjectionError::Decode {
            position,
            message: e.to_string(),
            source: Some(e),
        };
        if raw.aggregate_type != API_KEY_AGGREGATE_TYPE
            && raw.aggregate_type != KEY_USAGE_AGGREGATE_TYPE
            && raw.aggregate_type != OWNER_AGGREGATE_TYPE
            && raw.aggregate_type != WEBHOOK_AGGREGATE_TYPE
            && raw.aggregate_type != POLICY_AGGREGATE_TYPE
        {
            return Ok(None);
        }
        let hash = raw.chain_hash();
        let RawEvent {
            aggregate_type,
            aggregate_id,
            sequence,
            event_type,
            event_version,
            payload,
            metadata,
            ..
        } = raw;
        // A stream's sequences start at 1: anything else is a corrupt row.
        let stream_sequence = usize::try_from(sequence)
            .ok()
            .filter(|s| *s > 0)
            .ok_or_else(|| decode_err(format!("sequence {sequence} of {aggregate_id}")))?;
        // Events written by older builds are brought to the current shape first.
        let upcast = keyledger_domain::upcast::upcast(SerializedEvent::new(
            aggregate_id,
            stream_sequence,
            aggregate_type,
            event_type,
            event_version,
            payload,
            metadata,
        ));
        let raw = RawEvent {
            position,
            aggregate_type: upcast.aggregate_type,
            aggregate_id: upcast.aggregate_id,
            sequence,
            event_type: upcast.event_type,
            event_version: upcast.event_version,
            payload: upcast.payload,
            metadata: upcast.metadata,
        };
        let event = if raw.aggregate_type == API_KEY_AGGREGATE_TYPE {
            KeyledgerEvent::Key(serde_json::from_value(raw.payload).map_err(unparsed)?)
        } else if raw.aggregate_type == OWNER_AGGREGATE_TYPE {
            KeyledgerEvent::Owner(serde_json::from_value(raw.payload).map_err(unparsed)?)
        } else if raw.aggregate_type == WEBHOOK_AGGREGATE_TYPE {
            KeyledgerEvent::Webhook(serde_json::from_value(raw.payload).map_err(unparsed)?)
        } else if raw.aggregate_type == POLICY_AGGREGATE_TYPE {
            KeyledgerEvent::Policy(serde_json::from_value(raw.payload).map_err(unparsed)?)
        } else {
            KeyledgerEvent::Usage(serde_json::from_value(raw.payload).map_err(unparsed)?)
        };
        Self::from_parts(
            position,
            raw.aggregate_id,
            raw.sequence,
            event,
            &raw.metadata,
            hash,
        )
        .map(Some)
    }

    /// An event from its decoded parts: the metadata recorded with its
    /// command and its chain hash. For a writer that holds the event it just
    /// stored, which need not decode it back from JSON.
    pub fn from_parts(
        position: i64,
        key_id: String,
        sequence: i64,
        event: KeyledgerEvent,
        metadata: &Value,
        hash: String,
    ) -> Result<Self, ProjectionError> {
        let text = |k: &str| metadata.get(k).and_then(Value::as_str).map(str::to_owned);
        let tenant = match (&event, text(meta_keys::TENANT)) {
            (_, Some(t)) => t,
            (KeyledgerEvent::Key(ApiKeyEvent::KeyCreated(c)), None) => c.tenant.clone(),
            (KeyledgerEvent::Usage(u), None) => u.tenant().to_owned(),
            _ => {
                return Err(ProjectionError::Decode {
                    position,
                    message: "metadata has no tenant".into(),
                    source: None,
                })
            }
        };
        let occurred_at = text(meta_keys::OCCURRED_AT)
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| event.time());
        Ok(Self {
            position,
            key_id,
            sequence,
            meta: EventMeta {
                tenant,
                actor: text(meta_keys::ACTOR),
                request_id: text(meta_keys::REQUEST_ID),
                client_addr: text(meta_keys::CLIENT_ADDR),
                user_agent: text(meta_keys::USER_AGENT),
                occurred_at,
            },
            event,
            hash,
        })
    }

    /// The type name shown in the audit log.
    pub fn type_name(&self) -> &'static str {
        match &self.event {
            KeyledgerEvent::Key(e) => e.type_name(),
            KeyledgerEvent::Usage(e) => e.type_name(),
            KeyledgerEvent::Owner(e) => e.type_name(),
            KeyledgerEvent::Webhook(e) => e.type_name(),
            KeyledgerEvent::Policy(e) => e.type_name(),
        }
    }

    /// The event's fields as shown in the audit log: never the key hash.
    pub fn audit_data(&self) -> Value {
        let mut data = match &self.event {
            KeyledgerEvent::Key(e) => serde_json::to_value(e),
            KeyledgerEvent::Usage(e) => serde_json::to_value(e),
            KeyledgerEvent::Owner(e) => serde_json::to_value(e),
            KeyledgerEvent::Webhook(e) => serde_json::to_value(e),
            KeyledgerEvent::Policy(e) => serde_json::to_value(e),
        }
        .ok()
        .and_then(|v| match v {
            // Externally tagged enum: {"KeyCreated": {...}} -> {...}
            Value::Object(m) => m.into_iter().next().map(|(_, inner)| inner),
            _ => None,
        })
        .unwrap_or(Value::Null);
        if let Value::Object(m) = &mut data {
            m.remove("key_hash");
        }
        data
    }
}

impl KeyledgerEvent {
    /// The time carried by the event itself.
    pub fn time(&self) -> DateTime<Utc> {
        match self {
            Self::Key(ApiKeyEvent::KeyCreated(e)) => e.created_at,
            Self::Key(ApiKeyEvent::KeyUpdated(e)) => e.updated_at,
            Self::Key(ApiKeyEvent::KeyDeactivated(e)) => e.at,
            Self::Key(ApiKeyEvent::KeyReactivated(e)) => e.at,
            Self::Key(ApiKeyEvent::KeyDeleted(e)) => e.at,
            Self::Key(ApiKeyEvent::KeyExpirySet(e)) => e.at,
            Self::Key(ApiKeyEvent::KeyExpiryNoticed(e)) => e.at,
            Self::Key(ApiKeyEvent::KeyLeakReported(e)) => e.at,
            Self::Usage(KeyUsageEvent::KeyUsageRecorded(e)) => e.last_used_at,
            Self::Usage(KeyUsageEvent::KeyCreditsChanged(e)) => e.at,
            Self::Usage(KeyUsageEvent::KeyCreditsReserved(e)) => e.at,
            Self::Owner(e) => e.time(),
            Self::Webhook(e) => e.time(),
            Self::Policy(e) => e.time(),
        }
    }
}
