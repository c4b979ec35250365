//! Webhook endpoints: where a tenant's keys' events are sent, in a stream of
//! their own (aggregate type `WebhookEndpoint`), and what a message is: its
//! types, its stable id and its Standard Webhooks signature
//! (standardwebhooks.com), so receivers verify it with their own libraries.
//!
//! An endpoint's signing secret is never stored: it is derived from the
//! server secret, the endpoint id and the secret's generation (HMAC-SHA256, a
//! pseudorandom function), so every node signs alike, a rebuilt projection
//! needs nothing but the log, and rotating bumps the generation.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::DomainError;

/// Aggregate type of endpoint streams. Persisted: never change it.
pub const WEBHOOK_AGGREGATE_TYPE: &str = "WebhookEndpoint";
pub const WEBHOOK_EVENT_VERSION: &str = "1.0";

/// The longest endpoint URL accepted.
pub const MAX_URL_BYTES: usize = 2_048;
pub const MAX_DESCRIPTION_CHARS: usize = 256;
/// How long a rotated-out secret keeps signing beside the new one.
pub const SECRET_OVERLAP: Duration = Duration::hours(24);
/// How long an endpoint may fail before it is disabled.
pub const FAILING_LIMIT: Duration = Duration::days(3);

/// What a message can be about, as the contract spells it.
pub const MESSAGE_TYPES: [&str; 10] = [
    "key.created",
    "key.updated",
    "key.deactivated",
    "key.reactivated",
    "key.deleted",
    "key.rotated",
    "key.credits_changed",
    "key.expiring",
    "key.expired",
    "key.leaked",
];

/// A new endpoint's id: `wh_` and 32 hex digits of fresh randomness.
pub fn new_webhook_id(rng: &mut impl rand::Rng) -> String {
    let bytes: [u8; 16] = rng.random();
    format!("wh_{}", crate::ids::hex(&bytes))
}

/// Whether `id` has the shape of an endpoint id (checked before any lookup).
pub fn is_webhook_id(id: &str) -> bool {
    id.len() == 35
        && id.starts_with("wh_")
        && id[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The id of the message about the event at feed `position` for `endpoint`:
/// the same on every retry and every node, so a receiver drops duplicates.
pub fn message_id(endpoint: &str, position: i64) -> String {
    crate::ids::digest_id("msg_", &[endpoint.as_bytes(), &position.to_be_bytes()])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookStatus {
    Enabled,
    Disabled,
}

impl WebhookStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enabled => "enabled",
            Self::Disabled => "disabled",
        }
    }
}

/// Checks an endpoint URL's form: http or https, a host, no credentials,
/// at most [`MAX_URL_BYTES`]. Where it points is the server's to check
/// (private ranges), as that needs name resolution.
pub fn url(url: &str) -> Result<(), DomainError> {
    if url.len() > MAX_URL_BYTES {
        return Err(DomainError::validation(
            "url",
            format!("must be at most {MAX_URL_BYTES} bytes"),
        ));
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| DomainError::validation("url", "must be an http or https URL"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() {
        return Err(DomainError::validation("url", "must name a host"));
    }
    if authority.contains('@') {
        return Err(DomainError::validation(
            "url",
            "must not carry credentials; the signature authenticates messages",
        ));
    }
    if url
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || !c.is_ascii())
    {
        return Err(DomainError::validation(
            "url",
            "must be ASCII without spaces or control characters (percent-encode the rest)",
        ));
    }
    Ok(())
}

/// Checks and normalises an event filter: known types, each once, sorted;
/// empty means every type.
pub fn event_types(types: Vec<String>) -> Result<Vec<String>, DomainError> {
    let mut out = Vec::with_capacity(types.len());
    for t in types {
        if !MESSAGE_TYPES.contains(&t.as_str()) {
            return Err(DomainError::validation(
                "events",
                format!(
                    "unknown event type {:?}; known: {}",
                    t.chars().take(64).collect::<String>(),
                    MESSAGE_TYPES.join(", ")
                ),
            ));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out.sort();
    Ok(out)
}

pub fn description(d: &str) -> Result<(), DomainError> {
    let chars = d.chars().count();
    if chars > MAX_DESCRIPTION_CHARS {
        return Err(DomainError::validation(
            "description",
            format!("must be at most {MAX_DESCRIPTION_CHARS} characters, got {chars}"),
        ));
    }
    if d.chars().any(char::is_control) {
        return Err(DomainError::validation(
            "description",
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// A command on an endpoint.
#[derive(Debug, Clone, PartialEq)]
pub enum WebhookCommand {
    Create {
        tenant: String,
        url: String,
        events: Vec<String>,
        description: Option<String>,
        at: DateTime<Utc>,
    },
    Update {
        tenant: String,
        url: Option<String>,
        events: Option<Vec<String>>,
        description: Option<Option<String>>,
        status: Option<WebhookStatus>,
        /// Why, when the server disables a failing endpoint.
        reason: Option<String>,
        at: DateTime<Utc>,
    },
    RotateSecret {
        tenant: String,
        at: DateTime<Utc>,
    },
    Delete {
        tenant: String,
        at: DateTime<Utc>,
    },
}

/// An endpoint's change. Each carries the endpoint as it left it, so the
/// newest event of a stream is the endpoint (one read, as with a ledger).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WebhookEvent {
    WebhookCreated(WebhookChange),
    WebhookUpdated(WebhookChange),
    WebhookSecretRotated(WebhookChange),
    WebhookDeleted(WebhookChange),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookChange {
    pub endpoint: WebhookEndpoint,
    /// Why, when the server made the change (a failing endpoint disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl WebhookEvent {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::WebhookCreated(_) => "WebhookCreated",
            Self::WebhookUpdated(_) => "WebhookUpdated",
            Self::WebhookSecretRotated(_) => "WebhookSecretRotated",
            Self::WebhookDeleted(_) => "WebhookDeleted",
        }
    }

    pub fn change(&self) -> &WebhookChange {
        match self {
            Self::WebhookCreated(c)
            | Self::WebhookUpdated(c)
            | Self::WebhookSecretRotated(c)
            | Self::WebhookDeleted(c) => c,
        }
    }

    /// The endpoint as this event left it.
    pub fn endpoint(&self) -> &WebhookEndpoint {
        &self.change().endpoint
    }

    pub fn time(&self) -> DateTime<Utc> {
        self.endpoint().updated_at
    }
}

impl DomainEvent for WebhookEvent {
    fn event_type(&self) -> String {
        self.type_name().to_string()
    }

    fn event_version(&self) -> String {
        WEBHOOK_EVENT_VERSION.to_string()
    }
}

/// An endpoint as its events left it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEndpoint {
    pub tenant: String,
    pub url: String,
    /// The message types it takes; empty: all.
    pub events: Vec<String>,
    pub description: Option<String>,
    pub status: WebhookStatus,
    /// The signing secret's generation (the first is 0).
    pub generation: u32,
    /// Until when the secret before `generation` still signs too.
    pub previous_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(default)]
    pub deleted: bool,
}

impl WebhookEndpoint {
    /// Whether the endpoint takes messages of `message_type`.
    pub fn wants(&self, message_type: &str) -> bool {
        self.events.is_empty() || self.events.iter().any(|t| t == message_type)
    }

    pub fn enabled(&self) -> bool {
        self.status == WebhookStatus::Enabled && !self.deleted
    }

    /// The generations whose secrets sign a message sent at `now`: the
    /// current one, and the one before during the overlap.
    pub fn signing_generations(&self, now: DateTime<Utc>) -> Vec<u32> {
        let mut out = vec![self.generation];
        if self.generation > 0 && self.previous_until.is_some_and(|until| now < until) {
            out.push(self.generation - 1);
        }
        out
    }
}

/// An endpoint's stream as its rules see it: the endpoint, once created.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Webhook {
    pub endpoint: Option<WebhookEndpoint>,
}

impl Webhook {
    /// Checks a command against the endpoint and turns it into its event.
    pub fn decide(&self, command: WebhookCommand) -> Result<WebhookEvent, DomainError> {
        let live = |tenant: &str| {
            self.endpoint
                .as_ref()
                .filter(|e| !e.deleted && e.tenant == tenant)
                .cloned()
                .ok_or(DomainError::NotFound)
        };
        match command {
            WebhookCommand::Create {
                tenant,
                url: u,
                events,
                description: d,
                at,
            } => {
                if self.endpoint.is_some() {
                    return Err(DomainError::AlreadyExists);
                }
                url(&u)?;
                if let Some(d) = &d {
                    description(d)?;
                }
                Ok(WebhookEvent::WebhookCreated(WebhookChange {
                    endpoint: WebhookEndpoint {
                        tenant,
                        url: u,
                        events: event_types(events)?,
                        description: d,
                        status: WebhookStatus::Enabled,
                        generation: 0,
                        previous_until: None,
                        created_at: at,
                        updated_at: at,
                        deleted: false,
                    },
                    reason: None,
                }))
            }
            WebhookCommand::Update {
                tenant,
                url: u,
                events,
                description: d,
                status,
                reason,
                at,
            } => {
                let mut e = live(&tenant)?;
                if let Some(u) = u {
                    url(&u)?;
                    e.url = u;
                }
                if let Some(t) = events {
                    e.events = event_types(t)?;
                }
                if let Some(d) = d {
                    if let Some(d) = &d {
                        description(d)?;
                    }
                    e.description = d;
                }
                if let Some(s) = status {
                    e.status = s;
                }
                if let Some(r) = &reason {
                    description(r)?;
                }
                e.updated_at = at;
                Ok(WebhookEvent::WebhookUpdated(WebhookChange {
                    endpoint: e,
                    reason,
                }))
            }
            WebhookCommand::RotateSecret { tenant, at } => {
                let mut e = live(&tenant)?;
                e.generation = e.generation.saturating_add(1);
                e.previous_until = Some(at + SECRET_OVERLAP);
                e.updated_at = at;
                Ok(WebhookEvent::WebhookSecretRotated(WebhookChange {
                    endpoint: e,
                    reason: None,
                }))
            }
            WebhookCommand::Delete { tenant, at } => {
                let mut e = live(&tenant)?;
                e.deleted = true;
                e.updated_at = at;
                Ok(WebhookEvent::WebhookDeleted(WebhookChange {
                    endpoint: e,
                    reason: None,
                }))
            }
        }
    }
}

impl Aggregate for Webhook {
    const TYPE: &'static str = WEBHOOK_AGGREGATE_TYPE;
    type Command = WebhookCommand;
    type Event = WebhookEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = self.decide(command)?;
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.endpoint = Some(event.endpoint().clone());
    }
}

/// HMAC-SHA256 of the concatenated `parts`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    use hmac::{Mac, SimpleHmac};
    // HMAC takes a key of any length; the error is unreachable.
    let Ok(mut mac) = SimpleHmac::<Sha256>::new_from_slice(key) else {
        unreachable!("HMAC accepts keys of every length")
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// An endpoint's signing secret of `generation`, derived from the server
/// secret (never stored; see the module's documentation).
pub fn signing_secret(server_secret: &[u8], endpoint: &str, generation: u32) -> [u8; 32] {
    hmac_sha256(
        server_secret,
        &[
            b"keyledger webhook secret v1\0",
            endpoint.as_bytes(),
            b"\0",
            &generation.to_be_bytes(),
        ],
    )
}

/// A secret as the API shows it: `whsec_` and its base64.
pub fn secret_text(secret: &[u8]) -> String {
    format!("whsec_{}", base64(secret))
}

/// One `v1,` signature of a message (Standard Webhooks: HMAC-SHA256 of
/// `id.timestamp.body`, base64).
pub fn signature(secret: &[u8], message_id: &str, timestamp: i64, body: &[u8]) -> String {
    let ts = timestamp.to_string();
    let mac = hmac_sha256(
        secret,
        &[message_id.as_bytes(), b".", ts.as_bytes(), b".", body],
    );
    format!("v1,{}", base64(&mac))
}

/// Standard base64 with padding (RFC 4648 section 4), as the spec uses.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// How long to wait after `attempts` failed attempts: 5 s, 1 min, 10 min,
/// 1 h, 6 h, then every 12 h.
pub fn retry_delay(attempts: u32) -> Duration {
    match attempts {
        0 | 1 => Duration::seconds(5),
        2 => Duration::minutes(1),
        3 => Duration::minutes(10),
        4 => Duration::hours(1),
        5 => Duration::hours(6),
        _ => Duration::hours(12),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc_4231() {
        // Test case 2 of RFC 4231.
        let mac = hmac_sha256(b"Jefe", &[b"what do ya want ", b"for nothing?"]);
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        let mac = hmac_sha256(
            &[0xaa; 131],
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn the_signature_matches_the_standard_webhooks_example() {
        // The example of the Standard Webhooks specification.
        let secret = "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let bytes = decode_base64(secret);
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signature(&bytes, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    fn decode_base64(text: &str) -> Vec<u8> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .expect("base64")
    }

    #[test]
    fn secrets_differ_by_endpoint_and_generation_and_server_secret() {
        let a = signing_secret(b"server", "wh_1", 0);
        assert_ne!(a, signing_secret(b"server", "wh_1", 1));
        assert_ne!(a, signing_secret(b"server", "wh_2", 0));
        assert_ne!(a, signing_secret(b"other", "wh_1", 0));
        assert_eq!(a, signing_secret(b"server", "wh_1", 0));
        assert!(secret_text(&a).starts_with("whsec_"));
    }

    #[test]
    fn urls_event_types_and_descriptions_are_checked() {
        assert!(url("https://hooks.example.com/keyledger?x=1").is_ok());
        assert!(
            url("http://127.0.0.1:9000/").is_ok(),
            "ranges are the server's check"
        );
        for bad in [
            "ftp://example.com/",
            "https://",
            "https://user:pw@example.com/",
            "https://example.com/a b",
            "https://exämple.com/",
            "example.com",
        ] {
            assert!(url(bad).is_err(), "{bad}");
        }
        assert!(url(&format!("https://e.com/{}", "a".repeat(MAX_URL_BYTES))).is_err());
        assert_eq!(
            event_types(vec![
                "key.deleted".into(),
                "key.created".into(),
                "key.deleted".into()
            ])
            .expect("known"),
            vec!["key.created", "key.deleted"]
        );
        assert!(event_types(vec!["key.nope".into()]).is_err());
        assert!(description("ok").is_ok());
        assert!(description("a\nb").is_err());
    }

    #[test]
    fn an_endpoint_lives_through_its_events_and_stays_in_its_tenant() {
        let at = Utc::now();
        let mut w = Webhook::default();
        let run = |w: &mut Webhook, c| {
            let e = w.decide(c)?;
            w.endpoint = Some(e.endpoint().clone());
            Ok::<_, DomainError>(e)
        };
        run(
            &mut w,
            WebhookCommand::Create {
                tenant: "acme".into(),
                url: "https://example.com/h".into(),
                events: vec!["key.created".into()],
                description: None,
                at,
            },
        )
        .expect("created");
        let e = w.endpoint.clone().expect("endpoint");
        assert!(e.wants("key.created") && !e.wants("key.deleted") && e.enabled());
        assert_eq!(
            run(
                &mut w,
                WebhookCommand::Delete {
                    tenant: "other".into(),
                    at
                }
            ),
            Err(DomainError::NotFound)
        );
        run(
            &mut w,
            WebhookCommand::RotateSecret {
                tenant: "acme".into(),
                at,
            },
        )
        .expect("rotated");
        let e = w.endpoint.clone().expect("endpoint");
        assert_eq!(e.signing_generations(at), vec![1, 0]);
        assert_eq!(e.signing_generations(at + SECRET_OVERLAP), vec![1]);
        let off = run(
            &mut w,
            WebhookCommand::Update {
                tenant: "acme".into(),
                url: None,
                events: None,
                description: Some(Some("billing".into())),
                status: Some(WebhookStatus::Disabled),
                reason: None,
                at,
            },
        )
        .expect("updated");
        assert!(!off.endpoint().enabled());
        assert_eq!(off.endpoint().description.as_deref(), Some("billing"));
        run(
            &mut w,
            WebhookCommand::Delete {
                tenant: "acme".into(),
                at,
            },
        )
        .expect("deleted");
        assert_eq!(
            run(
                &mut w,
                WebhookCommand::RotateSecret {
                    tenant: "acme".into(),
                    at
                }
            ),
            Err(DomainError::NotFound)
        );
    }

    #[test]
    fn message_ids_are_stable_and_distinct() {
        // Receivers drop duplicates by it: it never changes.
        assert_eq!(
            message_id("wh_1", 7),
            "msg_a3ee0fb7c160804a2ed1c5dbe25e1745"
        );
        assert_ne!(message_id("wh_1", 7), message_id("wh_1", 8));
        assert_ne!(message_id("wh_1", 7), message_id("wh_2", 7));
        assert!(message_id("wh_1", 7).starts_with("msg_"));
    }

    #[test]
    fn retries_back_off_to_twelve_hours() {
        let delays: Vec<i64> = (1..=7).map(|a| retry_delay(a).num_seconds()).collect();
        assert_eq!(delays, vec![5, 60, 600, 3_600, 21_600, 43_200, 43_200]);
    }
}
