//! Usage of a key, in a stream of its own (aggregate type `ApiKeyUsage`, same id as
//! the key). Keeping it apart means loading a key to run a command never reads its
//! usage history, so command latency does not grow with traffic.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use crate::error::DomainError;

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

/// Usage events. One per used key per flush interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum KeyUsageEvent {
    KeyUsageRecorded(KeyUsageRecorded),
}

/// A batch of verifications of one key, counted in memory and flushed together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyUsageRecorded {
    pub tenant: String,
    pub count: u64,
    pub last_used_at: DateTime<Utc>,
}

impl DomainEvent for KeyUsageEvent {
    fn event_type(&self) -> String {
        "KeyUsageRecorded".to_string()
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
        Ok(KeyUsageEvent::KeyUsageRecorded(KeyUsageRecorded {
            tenant: command.tenant,
            count: command.count,
            last_used_at: command.last_used_at,
        }))
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
        let KeyUsageEvent::KeyUsageRecorded(e) = event;
        self.total = self.total.saturating_add(e.count);
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
            })]);
    }
}
