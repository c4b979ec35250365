//! Events of the `ApiKey` aggregate. Their names, fields and the aggregate type are
//! a persisted contract: renaming any of them orphans stored events. Change them
//! only by adding a new event version together with an upcaster.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::key::{Environment, KeyHash};
use crate::limits::{Credits, RateLimit};
use crate::network::AllowedIps;
use crate::permissions::Permissions;

/// Aggregate type stored with every key event. Persisted: never change it.
pub const API_KEY_AGGREGATE_TYPE: &str = "ApiKey";

/// Current schema version of every key event except `KeyCreated` (see
/// [`KEY_CREATED_VERSION`]): `KeyUpdated`, `KeyDeactivated`, `KeyReactivated` and
/// `KeyDeleted` are all still at their first version, "1.0".
pub const EVENT_VERSION: &str = "1.0";

/// Current schema version of `KeyCreated`: "2.0", the shape of [`KeyCreated`].
///
/// History (stored events of every version must keep loading; the upcaster in
/// [`crate::upcast`] lifts older ones to this shape before they are deserialised):
///
/// - "1.0": written by earlier builds. `permissions` was either a JSON array of
///   strings (the current shape) or, in the prototype format, a single
///   space-separated string in OAuth-scope style (`"keys:read keys:write"`). There
///   was no `environment` field (every key was implicitly `"live"`) and no
///   `metadata` field; `description` and `expires_at` could be absent instead of
///   `null`. Earlier builds of this project also labelled KeyCreated events that
///   already had the full current shape as "1.0"; those upcast unchanged.
/// - "2.0": the current [`KeyCreated`] struct: `permissions` is a JSON array,
///   `environment` (`"live"` or `"test"`), `description`, `expires_at` and
///   `metadata` are always present (possibly `null`).
pub const KEY_CREATED_VERSION: &str = "2.0";

/// Something that happened to an API key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ApiKeyEvent {
    KeyCreated(KeyCreated),
    KeyUpdated(KeyUpdated),
    KeyDeactivated(KeyDeactivated),
    KeyReactivated(KeyReactivated),
    KeyDeleted(KeyDeleted),
    KeyExpirySet(KeyExpirySet),
    KeyExpiryNoticed(KeyExpiryNoticed),
    KeyLeakReported(KeyLeakReported),
}

/// Someone reported the key as leaked (a secret scanner, or anyone through
/// `POST /v1/leaks/report`). Recorded once per reporter and URL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyLeakReported {
    /// `public`, or the configured reporter's name (`github`, …).
    pub reporter: String,
    /// Where the reporter found it (e.g. `content`, `commit`), if it said.
    pub source: Option<String>,
    pub url: Option<String>,
    pub at: DateTime<Utc>,
}

/// Which expiry notice: 14 days before `expires_at`, 1 day before, or at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpiryNotice {
    #[serde(rename = "in_14_days")]
    In14Days,
    #[serde(rename = "in_1_day")]
    In1Day,
    #[serde(rename = "expired")]
    Expired,
}

impl ExpiryNotice {
    pub const ALL: [ExpiryNotice; 3] = [Self::In14Days, Self::In1Day, Self::Expired];

    /// How long before the expiry the notice is due.
    pub fn lead(self) -> chrono::Duration {
        match self {
            Self::In14Days => chrono::Duration::days(14),
            Self::In1Day => chrono::Duration::days(1),
            Self::Expired => chrono::Duration::zero(),
        }
    }

    /// Whether it is due at `now` for a key expiring at `expires_at`: from its
    /// moment until the next notice's (a notice whose time passed while the
    /// next one is due already is not sent late).
    pub fn due(self, expires_at: DateTime<Utc>, now: DateTime<Utc>) -> bool {
        let from = expires_at - self.lead();
        let until = match self {
            Self::In14Days => Some(expires_at - Self::In1Day.lead()),
            Self::In1Day => Some(expires_at),
            Self::Expired => None,
        };
        now >= from && until.is_none_or(|u| now < u)
    }
}

/// The key's expiry is near, or has come: noticed once per key, expiry and
/// notice, whichever node noticed first (the stream's concurrency decides).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyExpiryNoticed {
    pub notice: ExpiryNotice,
    pub expires_at: DateTime<Utc>,
    pub at: DateTime<Utc>,
}

/// A key was issued. Holds the SHA-256 of the key, never the key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyCreated {
    pub tenant: String,
    pub key_hash: KeyHash,
    pub display_prefix: String,
    pub name: String,
    pub description: Option<String>,
    pub environment: Environment,
    pub permissions: Permissions,
    pub expires_at: Option<DateTime<Utc>>,
    pub metadata: Option<Value>,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// The key this one replaces, when issued by a rotation. Absent in events
    /// written before rotation existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_from: Option<String>,
    /// The customer's own id for whoever holds the key. Absent in events
    /// written before usage limits existed, as are the two below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ratelimits: Vec<RateLimit>,
    /// The credits the key starts with; its balance lives in its usage
    /// stream's ledger from then on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credits: Option<Credits>,
    /// The addresses that may use the key; empty (and absent in events
    /// written before IP restrictions): any.
    #[serde(default, skip_serializing_if = "AllowedIps::is_empty")]
    pub allowed_ips: AllowedIps,
    /// The key was issued by another system and imported by its hash: it is
    /// not in keyledger's format, so the verification index places it by its
    /// hash instead of its display body. Absent (false) in every other event.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub imported: bool,
}

/// Some descriptive fields changed. A field that is absent did not change; for the
/// nullable fields `Some(None)` means "cleared".
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct KeyUpdated {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub description: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Permissions>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub metadata: Option<Option<Value>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub owner: Option<Option<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratelimits: Option<Vec<RateLimit>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_ips: Option<AllowedIps>,
    pub updated_at: DateTime<Utc>,
}

impl KeyUpdated {
    /// True when the update carries no change at all.
    pub fn is_empty(&self) -> bool {
        self.name.is_none()
            && self.description.is_none()
            && self.permissions.is_none()
            && self.expires_at.is_none()
            && self.metadata.is_none()
            && self.owner.is_none()
            && self.ratelimits.is_none()
            && self.allowed_ips.is_none()
    }
}

/// The key was disabled; verification answers `DISABLED` until it is reactivated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyDeactivated {
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

/// The key was enabled again.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyReactivated {
    pub at: DateTime<Utc>,
}

/// The key was deleted for good. Its events stay for the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyDeleted {
    pub at: DateTime<Utc>,
}

/// The key's expiry was set by a rotation: it stays valid for the grace period
/// (never longer than it already would), and `rotated_to` names its successor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyExpirySet {
    pub expires_at: DateTime<Utc>,
    pub rotated_to: Option<String>,
    pub at: DateTime<Utc>,
}

impl ApiKeyEvent {
    /// The event type name as stored and shown in the audit log.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::KeyCreated(_) => "KeyCreated",
            Self::KeyUpdated(_) => "KeyUpdated",
            Self::KeyDeactivated(_) => "KeyDeactivated",
            Self::KeyReactivated(_) => "KeyReactivated",
            Self::KeyDeleted(_) => "KeyDeleted",
            Self::KeyExpirySet(_) => "KeyExpirySet",
            Self::KeyExpiryNoticed(_) => "KeyExpiryNoticed",
            Self::KeyLeakReported(_) => "KeyLeakReported",
        }
    }
}

impl DomainEvent for ApiKeyEvent {
    fn event_type(&self) -> String {
        self.type_name().to_string()
    }

    fn event_version(&self) -> String {
        match self {
            Self::KeyCreated(_) => KEY_CREATED_VERSION,
            Self::KeyUpdated(_)
            | Self::KeyDeactivated(_)
            | Self::KeyReactivated(_)
            | Self::KeyDeleted(_)
            | Self::KeyExpirySet(_)
            | Self::KeyExpiryNoticed(_)
            | Self::KeyLeakReported(_) => EVENT_VERSION,
        }
        .to_string()
    }
}

/// Deserialises a field that is present (possibly `null`) into `Some(..)`, so that
/// "absent" (the serde default, `None`) and "explicitly null" stay distinct.
pub fn present<'de, T, D>(deserializer: D) -> Result<Option<T>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    T::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_expiry_notice_is_due_from_its_moment_until_the_next_ones() {
        let exp = DateTime::from_timestamp(2_000_000_000, 0).expect("time");
        let at = |d: i64, s: i64| exp - chrono::Duration::days(d) + chrono::Duration::seconds(s);
        assert!(!ExpiryNotice::In14Days.due(exp, at(14, -1)));
        assert!(ExpiryNotice::In14Days.due(exp, at(14, 0)));
        assert!(
            !ExpiryNotice::In14Days.due(exp, at(1, 0)),
            "the 1-day notice's turn"
        );
        assert!(ExpiryNotice::In1Day.due(exp, at(1, 0)));
        assert!(!ExpiryNotice::In1Day.due(exp, exp));
        assert!(ExpiryNotice::Expired.due(exp, exp));
        assert!(ExpiryNotice::Expired.due(exp, at(-30, 0)));
        assert!(!ExpiryNotice::Expired.due(exp, at(0, -1)));
    }

    #[test]
    fn an_update_distinguishes_cleared_from_unchanged_fields() {
        let at = Utc::now();
        let cleared = KeyUpdated {
            description: Some(None),
            updated_at: at,
            ..KeyUpdated::default()
        };
        let json = serde_json::to_value(&cleared).expect("serialise");
        assert_eq!(json["description"], Value::Null);
        assert!(json.get("name").is_none());
        let back: KeyUpdated = serde_json::from_value(json).expect("deserialise");
        assert_eq!(back, cleared);
    }

    #[test]
    fn stored_event_names_are_the_variant_names() {
        let e = ApiKeyEvent::KeyReactivated(KeyReactivated { at: Utc::now() });
        let json = serde_json::to_value(&e).expect("serialise");
        assert!(json.get("KeyReactivated").is_some());
        assert_eq!(e.event_type(), "KeyReactivated");
    }
}
