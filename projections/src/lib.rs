//! Read models of keyledger, built only from the global event feed.
//!
//! Every projection remembers the last global position it applied (its
//! checkpoint) and applies events idempotently, so the feed may deliver an event
//! twice (after a crash, or from two nodes over one database) without changing
//! the result. The SQL projections (key list, audit log) update their rows and
//! their checkpoint in one transaction; the verification index lives in memory
//! and is filled from the key list at start.

pub mod audit;
pub mod checkpoint;
pub mod db;
pub mod error;
pub mod event;
mod index_load;
pub mod inline;
pub mod key_list;
pub mod policies;
mod postgres;
pub mod projector;
pub mod replay;
pub mod schema;
mod sql;
mod sqlite;
mod sync;
pub mod usage;
pub mod verification;

pub use db::ProjectionTables;
pub use db::Rebuilt;
pub use error::ProjectionError;
pub use event::{EventMeta, KeyledgerEvent, RawEvent, RecordedEvent};
pub use keyledger_sql::SqlPool;
pub use projector::Projections;
pub use verification::limits::{Checked, CreditFlush, LimitReport, Need, WindowNeed};
pub use verification::{
    DrainedRefusals, DrainedUsage, IndexedKey, KeyIdText, LimitSpec, Verification,
    VerificationCode, VerificationIndex, VerifyRequest,
};
