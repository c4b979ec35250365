//! End-to-end tests: a real server on a random port over a real store. Every
//! behaviour runs once per backend (`backend_tests!`).

mod concurrency;
mod errors;
mod helpers;
mod lifecycle;
mod rebuild;
mod restart;
mod secrecy;
mod upcast;
