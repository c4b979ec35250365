//! An owner's shared rate limits, in a stream of their own (aggregate type
//! `ApiKeyOwner`): every key of the tenant with that `owner` counts against
//! them, besides its own.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::limits::{self, RateLimit};

/// Aggregate type of owner streams. Persisted: never change it.
pub const OWNER_AGGREGATE_TYPE: &str = "ApiKeyOwner";

pub const OWNER_EVENT_VERSION: &str = "1.0";

/// The stream id of a tenant's owner: `own_` and 32 hex digits of
/// SHA-256(length of tenant, tenant, owner). Fixed length and plain text
/// whatever the owner holds, and distinct per tenant.
pub fn owner_stream_id(tenant: &str, owner: &str) -> String {
    crate::ids::digest_id(
        "own_",
        &[
            &(tenant.len() as u64).to_be_bytes(),
            tenant.as_bytes(),
            owner.as_bytes(),
        ],
    )
}

/// Set an owner's rate limits (replacing them).
#[derive(Debug, Clone, PartialEq)]
pub struct SetOwnerLimits {
    pub tenant: String,
    pub owner: String,
    pub ratelimits: Vec<RateLimit>,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum OwnerEvent {
    OwnerRateLimitsSet(OwnerRateLimitsSet),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OwnerRateLimitsSet {
    pub tenant: String,
    pub owner: String,
    pub ratelimits: Vec<RateLimit>,
    pub at: DateTime<Utc>,
}

impl OwnerEvent {
    pub fn type_name(&self) -> &'static str {
        "OwnerRateLimitsSet"
    }

    pub fn time(&self) -> DateTime<Utc> {
        let Self::OwnerRateLimitsSet(e) = self;
        e.at
    }
}

impl DomainEvent for OwnerEvent {
    fn event_type(&self) -> String {
        self.type_name().to_string()
    }

    fn event_version(&self) -> String {
        OWNER_EVENT_VERSION.to_string()
    }
}

/// An owner's limits as their rules see them: nothing to keep but that they
/// exist.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct OwnerLimits {
    ratelimits: Vec<RateLimit>,
}

impl OwnerLimits {
    /// Checks the command and turns it into its event.
    pub fn set(command: SetOwnerLimits) -> Result<OwnerEvent, DomainError> {
        limits::owner(&command.owner)?;
        limits::ratelimits(&command.ratelimits)?;
        Ok(OwnerEvent::OwnerRateLimitsSet(OwnerRateLimitsSet {
            tenant: command.tenant,
            owner: command.owner,
            ratelimits: command.ratelimits,
            at: command.at,
        }))
    }
}

impl Aggregate for OwnerLimits {
    const TYPE: &'static str = OWNER_AGGREGATE_TYPE;
    type Command = SetOwnerLimits;
    type Event = OwnerEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = Self::set(command)?;
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        let OwnerEvent::OwnerRateLimitsSet(e) = event;
        self.ratelimits = e.ratelimits;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_streams_are_per_tenant_and_plain() {
        let a = owner_stream_id("acme", "cus_1");
        // Persisted: the id of this owner's stream never changes.
        assert_eq!(a, "own_c0f1bc6fa214acb8d5d5b4c5fa1ffe0f");
        assert_eq!(a.len(), 36);
        assert!(a.starts_with("own_"));
        assert_ne!(a, owner_stream_id("other", "cus_1"));
        assert_ne!(
            owner_stream_id("a", "b\u{0}c"),
            owner_stream_id("a\u{0}b", "c")
        );
        assert!(owner_stream_id("t", "\"x\n")
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    }

    #[test]
    fn limits_are_validated() {
        let set = |ratelimits| {
            OwnerLimits::set(SetOwnerLimits {
                tenant: "acme".into(),
                owner: "cus_1".into(),
                ratelimits,
                at: Utc::now(),
            })
        };
        assert!(set(vec![RateLimit {
            name: "s".into(),
            limit: 5,
            window_ms: 1000
        }])
        .is_ok());
        assert!(set(vec![RateLimit {
            name: "s".into(),
            limit: 0,
            window_ms: 1000
        }])
        .is_err());
    }
}
