//! The keyledger domain: the `ApiKey` aggregate and its commands and events, the
//! key format, hashing and permissions.
//!
//! Everything here is pure: no I/O, no clock, no randomness of its own. What the
//! aggregate needs from the outside world (the time, the hash of a freshly
//! generated key, the acting user) arrives inside the command, so the rules can be
//! tested as plain given/when/then.

pub mod aggregate;
pub mod chain;
pub mod commands;
pub mod error;
pub mod events;
pub mod feed;
pub mod ids;
pub mod json;
pub mod key;
pub mod ledger;
pub mod limits;
pub mod network;
pub mod owner;
pub mod permissions;
pub mod policy;
pub mod scan;
pub mod upcast;
pub mod usage;
pub mod validate;
pub mod webhook;

pub use aggregate::{ApiKey, KeyLifecycle};
pub use commands::{CreateKey, Imported, KeyCommand, KeyCommandKind, UpdateKey};
pub use error::DomainError;
pub use events::{
    ApiKeyEvent, ExpiryNotice, KeyCreated, KeyDeactivated, KeyDeleted, KeyExpiryNoticed,
    KeyExpirySet, KeyLeakReported, KeyReactivated, KeyUpdated, API_KEY_AGGREGATE_TYPE,
};
pub use feed::RawEvent;
pub use ids::{KeyId, TenantId};
pub use key::{Environment, KeyHash, KeyPrefix, ParsedKey, RawKey};
pub use ledger::{CreditChange, Ledger, Settlement};
pub use limits::{Credits, RateLimit, Refill, RefillInterval};
pub use network::AllowedIps;
pub use owner::{
    owner_stream_id, OwnerEvent, OwnerLimits, OwnerRateLimitsSet, SetOwnerLimits,
    OWNER_AGGREGATE_TYPE,
};
pub use permissions::Permissions;
pub use usage::{
    KeyCreditsChanged, KeyCreditsReserved, KeyUsage, KeyUsageEvent, KeyUsageRecorded, Outcomes,
    RecordUsage, Refusal, KEY_USAGE_AGGREGATE_TYPE,
};
