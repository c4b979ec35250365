//! End-to-end tests: a real server on a random port over a real store. Every
//! behaviour runs once per backend (`backend_tests!`).

mod abuse;
mod concurrency;
mod errors;
mod helpers;
mod idempotency;
mod idp;
mod lifecycle;
mod metrics;
mod proxy_auth;
mod rebuild;
mod restart;
mod rotation;
mod secrecy;
mod upcast;
