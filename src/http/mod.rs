//! The HTTP API (axum). One file per resource; extractors do auth and parsing;
//! `error.rs` is the only place errors become status codes.

pub mod audit;
pub mod auth;
pub mod console;
pub mod error;
pub mod extract;
pub mod health;
pub mod import;
pub mod keys;
pub mod leaks;
pub mod limit;
pub mod limit_views;
pub mod management;
pub mod metrics;
pub mod openapi;
pub mod policy;
pub mod proxy_auth;
pub mod router;
pub mod serve;
pub mod state;
pub mod usage;
pub mod usage_limits;
pub mod verify;
pub mod webhook_messages;
pub mod webhooks;

pub use state::{AppState, SharedState};
