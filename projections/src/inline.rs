//! The projections' side of group commit on PostgreSQL: the key list's and
//! the audit log's rows of a created key, for the store to write in the same
//! statement as the event ([`keyledger_sql::InlineProjection`]). The rows are
//! the ones the tailer would write for the event (`created_row`,
//! `audit_entry`), with the position counted from 1 within the batch.

use keyledger_domain::ApiKeyEvent;
use keyledger_sql::{InlineError, InlineEvent, InlineProjection, InlineTable, Value};

use crate::audit;
use crate::event::{KeyledgerEvent, RecordedEvent};
use crate::key_list;
use crate::replay::{audit_entry, created_row};
use crate::schema::{Record, Table};

/// The key list and the audit log, written with their creates.
#[derive(Debug, Default, Clone, Copy)]
pub struct InlineCreates;

fn inline<const N: usize>(table: &Table<N>, position: &'static str) -> InlineTable {
    InlineTable {
        name: table.name,
        checkpoint: table.checkpoint,
        key: table.primary_key,
        columns: table.columns.iter().map(|c| (c.name, c.ty)).collect(),
        position,
    }
}

impl InlineCreates {
    /// The event as the projections see it, with the position given.
    pub fn recorded(event: InlineEvent<'_>, position: i64) -> Result<RecordedEvent, InlineError> {
        RecordedEvent::from_parts(
            position,
            event.aggregate_id.to_string(),
            event.sequence,
            KeyledgerEvent::Key(event.event.clone()),
            event.metadata,
            event.hash.to_string(),
        )
        .map_err(|e| InlineError(Box::new(e)))
    }
}

impl InlineProjection for InlineCreates {
    fn tables(&self) -> Vec<InlineTable> {
        vec![
            inline(&key_list::TABLE, "created_position"),
            inline(&audit::TABLE, "position"),
        ]
    }

    fn rows(&self, event: InlineEvent<'_>) -> Result<Vec<Vec<Value>>, InlineError> {
        let ApiKeyEvent::KeyCreated(created) = event.event else {
            return Err(InlineError("group commit takes creates only".into()));
        };
        // The position column is the store's to fill (see `InlineTable`).
        let recorded = Self::recorded(event, 0)?;
        let key = created_row(&recorded, created);
        let audit = audit_entry(&recorded);
        Ok(vec![key.values().to_vec(), audit.values().to_vec()])
    }
}
