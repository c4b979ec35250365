//! A webhook message's body, in the API's own shapes: the key as a KeyView
//! (as it is when the message is first built; `null` once deleted) and the
//! event as an AuditEvent (never a hash or a raw key).

use chrono::{DateTime, Utc};
use keyledger_projections::key_list::KeyRow;
use keyledger_projections::replay::audit_entry;
use keyledger_projections::RecordedEvent;
use serde::Serialize;

use crate::error::Error;
use crate::http::audit::AuditEvent;
use crate::http::keys::KeyView;
use crate::webhooks::delivery::MessageBody;

#[derive(Serialize)]
struct Message<'a> {
    #[serde(rename = "type")]
    message_type: &'a str,
    timestamp: DateTime<Utc>,
    data: MessageData,
}

#[derive(Serialize)]
struct MessageData {
    key: Option<KeyView>,
    event: AuditEvent,
}

/// Renders messages for `webhooks::delivery`.
pub struct ApiMessages;

impl MessageBody for ApiMessages {
    fn render(
        &self,
        message_type: &str,
        event: &RecordedEvent,
        key: Option<KeyRow>,
        timestamp: DateTime<Utc>,
    ) -> Result<Vec<u8>, Error> {
        let message = Message {
            message_type,
            timestamp,
            data: MessageData {
                key: key.map(|k| KeyView::from_row(k, timestamp)),
                event: AuditEvent::from(audit_entry(event)),
            },
        };
        serde_json::to_vec(&message).map_err(|e| Error::internal_from("a webhook message", e))
    }
}
