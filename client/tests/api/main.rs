//! The client against a real keyledger server: the server crate's
//! `Application` on a random port over a fresh SQLite store in a temporary
//! directory, in this process, with a management token minted as
//! `keyledger token` does.

mod harness;
mod layer;
mod management;
