//! A typed async client for keyledger's HTTP API, and a `tower` layer that
//! guards a service with keyledger's API keys.
//!
//! [`Client`] has a method for every route of the API (docs/API.md): key
//! management with a management token (a JWT), and verification, health,
//! metrics and leak reports without one. Two kinds of route are left out on
//! purpose: `/v1/auth/envoy/{path}`, which only Envoy's HTTP `ext_authz`
//! filter calls (a client calls [`Client::auth`], the same check), and the
//! web console's files. Answers are typed ([`KeyView`],
//! [`Verification`], ...), ignore fields this version does not know, and
//! never show a raw key or secret in `Debug` output ([`Secret`]). Failures
//! are an [`Error`]: the API's refusals carry their [`ErrorCode`].
//!
//! ```no_run
//! use keyledger_client::{Client, CreateKey, Error, ErrorCode, VerificationCode, VerifyRequest};
//!
//! # async fn run() -> Result<(), Error> {
//! let client = Client::new("http://127.0.0.1:8080")?.with_token("eyJhbGciOi...");
//!
//! let created = client.create_key(&CreateKey::new("billing")).await?;
//! let raw_key = created.key.clone(); // hand this to the customer, once
//!
//! let answer = client.verify(&VerifyRequest::new(raw_key)).await?;
//! assert_eq!(answer.code, VerificationCode::Valid);
//!
//! client.deactivate_key(&created.id, Some("customer left")).await?;
//! match client.get_key("key_00000000000000000000000000000000").await {
//!     Err(Error::Api { code: ErrorCode::KeyNotFound, .. }) => {}
//!     other => panic!("{other:?}"),
//! }
//! # Ok(())
//! # }
//! ```
//!
//! [`KeyAuthLayer`] verifies the key of every request to an axum (or any
//! `tower`/hyper) service and puts a [`VerifiedKey`] into the request's
//! extensions; see `examples/axum_service.rs`.

mod audit;
mod client;
mod codes;
mod error;
mod health;
mod import;
mod keys;
mod layer;
mod leaks;
mod policy;
mod secret;
mod usage;
mod verify;
mod webhooks;

pub use audit::{AuditEvent, AuditFilter, AuditPage, Page};
pub use client::{Client, ClientBuilder, KeyPages};
pub use codes::{
    CreditOp, DeliveryStatus, Environment, ErrorCode, Granularity, KeyStatus, OnLeak, Order,
    RefillInterval, VerificationCode, WebhookStatus,
};
pub use error::{ApiErrorDetail, DecodeError, Error};
pub use health::{Health, Readiness, Stalled};
pub use import::{ImportFailure, ImportItem, ImportResponse, ImportedKey};
pub use keys::{
    CreateKey, Credits, CreditsChange, KeyCreated, KeyList, KeyView, ListKeys, Owner, OwnerLimits,
    RateLimit, Refill, RotateKey, UpdateKey,
};
pub use layer::{KeyAuth, KeyAuthLayer, VerifiedKey};
pub use leaks::{LeakReceipt, LeakReport, PartnerAnswer, PartnerReport};
pub use policy::Policy;
pub use secret::Secret;
pub use usage::{KeyUsage, TenantUsage, TopKey, UsageBucket, UsageQuery};
pub use verify::{
    Authorized, CreditsLeft, RateLimitHeaders, RateLimitState, Verification, VerifyRequest,
};
pub use webhooks::{
    CreateWebhook, Delivery, DeliveryFilter, DeliveryList, UpdateWebhook, Webhook,
    WebhookWithSecret,
};
