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
pub mod key_list;
pub mod projector;
pub mod replay;
mod sql;
pub mod verification;

pub use db::ProjectionDb;
pub use error::ProjectionError;
pub use event::{EventMeta, KeyledgerEvent, RawEvent, RecordedEvent};
pub use projector::Projections;
pub use sql::Table;
pub use verification::{
    DrainedUsage, IndexedKey, KeyIdText, Verification, VerificationCode, VerificationIndex,
    VerifyRequest,
};
