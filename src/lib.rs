//! keyledger: an event-sourced API-key lifecycle service.
//!
//! Commands go through the `ApiKey` aggregate (cqrs-es) into an append-only event
//! store with a global position; the tailer feeds every event, in commit order,
//! to the projections (key list, audit log, in-memory verification index).

pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod expiry;
pub mod fault;
pub mod group_commit;
pub mod grpc;
pub mod http;
pub mod idempotency;
pub mod import;
pub mod integrity;
pub mod leaks;
pub mod limits;
pub mod metrics;
pub mod rebuild;
pub mod secret;
pub mod service;
pub mod store;
pub mod tailer;
pub mod usage;
pub mod webhooks;

pub use app::Application;
pub use config::Config;
pub use error::Error;
