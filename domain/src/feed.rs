//! An event as the store keeps it: one row of the global feed, its JSON
//! parsed but not yet decoded into a domain event. What the event store
//! returns and the projections decode.

use serde_json::Value;

/// One row of the events table, in global order.
#[derive(Debug, Clone)]
pub struct RawEvent {
    pub position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
}

impl RawEvent {
    /// The fields its chain hash covers.
    pub fn stored_fields(&self) -> crate::chain::StoredFields<'_> {
        crate::chain::StoredFields {
            aggregate_type: &self.aggregate_type,
            aggregate_id: &self.aggregate_id,
            sequence: self.sequence,
            event_type: &self.event_type,
            event_version: &self.event_version,
            payload: &self.payload,
            metadata: &self.metadata,
        }
    }

    /// This event's chain hash.
    pub fn chain_hash(&self) -> String {
        crate::chain::event_hash(self.stored_fields())
    }
}
