//! A tenant's policy, in a stream of its own (aggregate type `TenantPolicy`):
//! what happens to a key reported as leaked. Each event carries the whole
//! policy, so its newest event is the policy.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::error::DomainError;

/// Aggregate type of policy streams. Persisted: never change it.
pub const POLICY_AGGREGATE_TYPE: &str = "TenantPolicy";
pub const POLICY_EVENT_VERSION: &str = "1.0";

/// The stream id of a tenant's policy: `pol_` and 32 hex digits of
/// SHA-256(length of tenant, tenant).
pub fn policy_stream_id(tenant: &str) -> String {
    crate::ids::digest_id(
        "pol_",
        &[&(tenant.len() as u64).to_be_bytes(), tenant.as_bytes()],
    )
}

/// What a leak report of one of the tenant's keys leads to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeakAction {
    /// Deactivated with the reason "leaked" (the default).
    #[default]
    Deactivate,
    Delete,
    /// Recorded (and sent to webhooks) only.
    Notify,
}

impl LeakAction {
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        match text {
            "deactivate" => Ok(Self::Deactivate),
            "delete" => Ok(Self::Delete),
            "notify" => Ok(Self::Notify),
            _ => Err(DomainError::validation(
                "on_leak",
                "must be deactivate, delete or notify",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Deactivate => "deactivate",
            Self::Delete => "delete",
            Self::Notify => "notify",
        }
    }
}

/// A tenant's policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub on_leak: LeakAction,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SetPolicy {
    pub tenant: String,
    pub policy: Policy,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum PolicyEvent {
    TenantPolicySet(TenantPolicySet),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TenantPolicySet {
    pub tenant: String,
    pub policy: Policy,
    pub at: DateTime<Utc>,
}

impl PolicyEvent {
    pub fn type_name(&self) -> &'static str {
        "TenantPolicySet"
    }

    pub fn time(&self) -> DateTime<Utc> {
        let Self::TenantPolicySet(e) = self;
        e.at
    }

    pub fn policy(&self) -> &Policy {
        let Self::TenantPolicySet(e) = self;
        &e.policy
    }
}

impl DomainEvent for PolicyEvent {
    fn event_type(&self) -> String {
        self.type_name().to_string()
    }

    fn event_version(&self) -> String {
        POLICY_EVENT_VERSION.to_string()
    }
}

/// A tenant's policy as its rules see it.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TenantPolicy {
    policy: Policy,
}

impl TenantPolicy {
    pub fn set(command: SetPolicy) -> PolicyEvent {
        PolicyEvent::TenantPolicySet(TenantPolicySet {
            tenant: command.tenant,
            policy: command.policy,
            at: command.at,
        })
    }
}

impl Aggregate for TenantPolicy {
    const TYPE: &'static str = POLICY_AGGREGATE_TYPE;
    type Command = SetPolicy;
    type Event = PolicyEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        sink.write(Self::set(command), self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.policy = event.policy().clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_per_tenant_and_actions_parse() {
        assert_ne!(policy_stream_id("a"), policy_stream_id("b"));
        assert!(policy_stream_id("acme").starts_with("pol_"));
        assert_eq!(LeakAction::parse("notify"), Ok(LeakAction::Notify));
        assert!(LeakAction::parse("ignore").is_err());
        assert_eq!(Policy::default().on_leak, LeakAction::Deactivate);
    }
}
