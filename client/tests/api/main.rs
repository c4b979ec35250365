//! The client against a real keyledger server: the server crate's
//! `Application` on a random port over a fresh SQLite store in a temporary
//! directory, in this process, with a management token minted as
//! `keyledger token` does.

// The crate's example, compiled in so its `app` can be served by a test;
// its `main` is for `cargo run --example` only.
#[allow(dead_code)]
#[path = "../../examples/axum_service.rs"]
mod axum_service;
mod example;
mod harness;
mod layer;
mod management;
