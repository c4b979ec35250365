//! What test binaries share: the gateway tests' pieces (`gateways.rs`,
//! `gateway_caddy.rs`, `gateway_envoy.rs`), child processes, and saying a
//! skip out loud. Each test binary uses part of it.
#![allow(dead_code)]

pub mod gateway;
pub mod process;
pub mod skip;
