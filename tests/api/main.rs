//! End-to-end tests: a real server on a random port over a real store. Every
//! behaviour runs once per backend (`backend_tests!`).

mod abuse;
mod concurrency;
mod connections;
mod errors;
mod helpers;
mod history;
mod hostile_text;
mod idempotency;
mod idp;
mod lifecycle;
mod metrics;
mod poison;
mod proxy_auth;
mod rebuild;
mod restart;
mod rotation;
mod roundtrip;
mod secrecy;
mod upcast;
