//! keyledger's benchmark tools, kept out of the server: `seed` writes load
//! data straight into an event store (also used by the server's tests for
//! large histories); `sqlite_reference` is SQLite's own durable insert rate; the `keyledger-bench` binary drives running nodes.

pub mod seed;
pub mod sqlite_reference;
pub mod webhooks;
