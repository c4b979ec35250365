//! End-to-end tests: a real server on a random port over a real store. Every
//! behaviour that involves the store runs once per backend (`backend_tests!`);
//! those decided before any store is touched (tokens, the shape of a request)
//! run once, on SQLite. `/metrics` has a test binary of its own
//! (tests/metrics.rs): this one's tests would move its counters.

mod abuse;
mod committed;
mod concurrency;
mod connections;
mod errors;
mod helpers;
mod history;
mod hostile_text;
mod hygiene;
mod idempotency;
mod idp;
mod import;
mod import_cli;
mod leaks;
mod lifecycle;
mod limits;
mod openapi;
mod poison;
mod policy;
mod policy_hygiene;
mod proxy_auth;
mod rebuild;
mod receiver;
mod restart;
mod restrictions;
mod rotation;
mod roundtrip;
mod secrecy;
mod upcast;
mod usage;
mod webhooks;
