//! keyledger's benchmark tools, kept out of the server: `seed` writes load
//! data straight into an event store (also used by the server's tests for
//! large histories); the `keyledger-bench` binary drives running nodes.

pub mod seed;
pub mod webhooks;
