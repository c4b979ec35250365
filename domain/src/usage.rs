//! Usage of a key, in a stream of its own (aggregate type `ApiKeyUsage`, same id as
//! the key). Keeping it apart means loading a key to run a command never reads its
//! usage history, so command latency does not grow with traffic.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::error::DomainError;
use crate::ledger::{CreditChange, Ledger, Settlement};

/// Aggregate type of usage streams. Persisted: never change it.
pub const KEY_USAGE_AGGREGATE_TYPE: &str = "ApiKeyUsage";

/// Current schema version of usage events.
pub const USAGE_EVENT_VERSION: &str = "1.0";

/// Record that a key was used `count` times, the last at `last_used_at`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordUsage {
    pub tenant: String,
    pub count: u64,
    pub last_used_at: DateTime<Utc>,
}

/// Events of the usage stream: uses flushed by nodes, and the key's credit
/// ledger (changes, reservations; see [`crate::ledger`]), kept here so that
/// every credit movement is ordered by one stream's optimistic concurrency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum KeyUsageEvent {
    KeyUsageRecorded(KeyUsageRecorded),
    KeyCreditsChanged(KeyCreditsChanged),
    KeyCreditsReserved(KeyCreditsReserved),
}

/// A batch of verifications of one key, counted in memory and flushed
/// together, with what they spent of a credit block and what of it the node
/// gave back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyUsageRecorded {
    pub tenant: String,
    pub count: u64,
    pub last_used_at: DateTime<Utc>,
    /// Credits the uses spent (blocks of a void epoch included).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub spent: u64,
    /// The node's report on its block, which settles it in the ledger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled: Option<Settlement>,
    /// The ledger after this event, on keys with credits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<Ledger>,
    /// Verifications of the key that were refused, by outcome (`count` is
    /// the `VALID` ones). Absent in events written before outcomes were
    /// counted.
    #[serde(default, skip_serializing_if = "Outcomes::is_empty")]
    pub refused: Outcomes,
}

/// Refused verifications of one key, by outcome: what a flush reports beside
/// its `VALID` count.
// Unknown outcomes are ignored, as unknown fields of every event are: an
// outcome a later version adds must not stop an older node's tailer during a
// rolling upgrade.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcomes {
    #[serde(default, skip_serializing_if = "is_zero")]
    pub disabled: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub expired: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub wrong_environment: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub insufficient_permissions: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rate_limited: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub usage_exceeded: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ip_not_allowed: u64,
}

/// A refused outcome, as [`Outcomes`] counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Disabled,
    Expired,
    WrongEnvironment,
    InsufficientPermissions,
    RateLimited,
    UsageExceeded,
    IpNotAllowed,
}

impl Refusal {
    /// Every refusal, in the order of [`Outcomes::counts`].
    pub const ALL: [Refusal; 7] = [
        Refusal::Disabled,
        Refusal::Expired,
        Refusal::WrongEnvironment,
        Refusal::InsufficientPermissions,
        Refusal::RateLimited,
        Refusal::UsageExceeded,
        Refusal::IpNotAllowed,
    ];
}

impl Outcomes {
    /// The outcomes in the order of [`Outcomes::NAMES`].
    pub fn counts(&self) -> [u64; 7] {
        [
            self.disabled,
            self.expired,
            self.wrong_environment,
            self.insufficient_permissions,
            self.rate_limited,
            self.usage_exceeded,
            self.ip_not_allowed,
        ]
    }

    /// The names the API uses, in the order of [`Outcomes::counts`].
    pub const NAMES: [&'static str; 7] = [
        "disabled",
        "expired",
        "wrong_environment",
        "insufficient_permissions",
        "rate_limited",
        "usage_exceeded",
        "ip_not_allowed",
    ];

    pub fn is_empty(&self) -> bool {
        self.total() == 0
    }

    pub fn total(&self) -> u64 {
        self.counts().iter().fold(0u64, |a, n| a.saturating_add(*n))
    }

    fn slot(&mut self, r: Refusal) -> &mut u64 {
        match r {
            Refusal::Disabled => &mut self.disabled,
            Refusal::Expired => &mut self.expired,
            Refusal::WrongEnvironment => &mut self.wrong_environment,
            Refusal::InsufficientPermissions => &mut self.insufficient_permissions,
            Refusal::RateLimited => &mut self.rate_limited,
            Refusal::UsageExceeded => &mut self.usage_exceeded,
            Refusal::IpNotAllowed => &mut self.ip_not_allowed,
        }
    }

    /// Counts `n` more of `r`.
    pub fn add(&mut self, r: Refusal, n: u64) {
        let slot = self.slot(r);
        *slot = slot.saturating_add(n);
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Outcomes) {
        for (refusal, n) in Refusal::ALL.into_iter().zip(other.counts()) {
            self.add(refusal, n);
        }
    }
}

/// Credits were set, incremented, decremented, configured, removed or
/// refilled. The actor is in the event's metadata (`keyledger:refill` for
/// refills).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyCreditsChanged {
    pub tenant: String,
    pub change: CreditChange,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
    pub ledger: Ledger,
}

/// A node took a block of credits to spend from memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyCreditsReserved {
    pub tenant: String,
    /// The node that holds the block.
    pub node: String,
    pub amount: u64,
    pub epoch: u64,
    pub at: DateTime<Utc>,
    pub ledger: Ledger,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl KeyUsageEvent {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::KeyUsageRecorded(_) => "KeyUsageRecorded",
            Self::KeyCreditsChanged(_) => "KeyCreditsChanged",
            Self::KeyCreditsReserved(_) => "KeyCreditsReserved",
        }
    }

    /// The ledger after this event, where it carries one.
    pub fn ledger(&self) -> Option<&Ledger> {
        match self {
            Self::KeyUsageRecorded(u) => u.ledger.as_ref(),
            Self::KeyCreditsChanged(c) => Some(&c.ledger),
            Self::KeyCreditsReserved(r) => Some(&r.ledger),
        }
    }

    pub fn tenant(&self) -> &str {
        match self {
            Self::KeyUsageRecorded(u) => &u.tenant,
            Self::KeyCreditsChanged(c) => &c.tenant,
            Self::KeyCreditsReserved(r) => &r.tenant,
        }
    }

    /// The ledger this event makes of `before` (recomputed from its change,
    /// not read from the event: `projections check` compares the two).
    pub fn apply_to(&self, before: Option<&Ledger>) -> Option<Ledger> {
        match self {
            Self::KeyUsageRecorded(u) => before.cloned().map(|mut l| {
                if let Some(s) = &u.settled {
                    l.settle(s);
                }
                l
            }),
            Self::KeyCreditsChanged(c) => Some(Ledger::change(before, &c.change, c.at)),
            Self::KeyCreditsReserved(r) => before.cloned().map(|mut l| {
                if r.epoch == l.epoch {
                    l.reserve(r.amount);
                }
                l
            }),
        }
    }
}

impl DomainEvent for KeyUsageEvent {
    fn event_type(&self) -> String {
        self.type_name().to_string()
    }

    fn event_version(&self) -> String {
        USAGE_EVENT_VERSION.to_string()
    }
}

/// The usage stream of one key. It has no rule beyond "a count is positive", so
/// its state is only the running total.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct KeyUsage {
    total: u64,
}

impl KeyUsage {
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Turns a flush into its event; kept here so the rule holds however the
    /// event reaches the store.
    pub fn record(command: RecordUsage) -> Result<KeyUsageEvent, DomainError> {
        if command.count == 0 {
            return Err(DomainError::Validation {
                field: "count",
                message: "must be positive".into(),
            });
        }
        Self::flush(
            command.tenant,
            command.count,
            Outcomes::default(),
            command.last_used_at,
            0,
            None,
            None,
        )
    }
}

impl KeyUsage {
    /// A node's flush of one key: its uses, the credits they spent, and its
    /// report on its credit block, applied to the ledger as it stands
    /// (`before`). Refused when it reports nothing.
    pub fn flush(
        tenant: String,
        count: u64,
        refused: Outcomes,
        last_used_at: DateTime<Utc>,
        spent: u64,
        settled: Option<Settlement>,
        before: Option<&Ledger>,
    ) -> Result<KeyUsageEvent, DomainError> {
        if count == 0 && refused.is_empty() && spent == 0 && settled.is_none() {
            return Err(DomainError::Validation {
                field: "count",
                message: "a flush must report something".into(),
            });
        }
        let mut event = KeyUsageEvent::KeyUsageRecorded(KeyUsageRecorded {
            tenant,
            count,
            last_used_at,
            spent,
            settled,
            ledger: None,
            refused,
        });
        let after = event.apply_to(before);
        if let KeyUsageEvent::KeyUsageRecorded(e) = &mut event {
            e.ledger = after;
        }
        Ok(event)
    }
}

impl Aggregate for KeyUsage {
    const TYPE: &'static str = KEY_USAGE_AGGREGATE_TYPE;
    type Command = RecordUsage;
    type Event = KeyUsageEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _services: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        let event = Self::record(command)?;
        sink.write(event, self).await;
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        if let KeyUsageEvent::KeyUsageRecorded(e) = event {
            self.total = self.total.saturating_add(e.count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    #[test]
    fn a_flush_of_zero_uses_is_rejected() {
        let result = TestFramework::<KeyUsage>::with(())
            .given_no_previous_events()
            .when(RecordUsage {
                tenant: "acme".into(),
                count: 0,
                last_used_at: Utc::now(),
            })
            .inspect_result();
        assert!(result.is_err());
    }

    #[test]
    fn a_flush_records_its_count() {
        let at = Utc::now();
        TestFramework::<KeyUsage>::with(())
            .given_no_previous_events()
            .when(RecordUsage {
                tenant: "acme".into(),
                count: 3,
                last_used_at: at,
            })
            .then_expect_events(vec![KeyUsageEvent::KeyUsageRecorded(KeyUsageRecorded {
                tenant: "acme".into(),
                count: 3,
                last_used_at: at,
                spent: 0,
                settled: None,
                ledger: None,
                refused: Outcomes::default(),
            })]);
    }
}
