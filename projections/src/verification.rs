//! The verification index: key hash -> what verification needs, in memory.
//!
//! Reads never block writers: both maps are `papaya` lock-free maps, and an entry
//! is an immutable `Arc` replaced whole on change. Usage is counted in atomics that
//! belong to the key (shared by every version of its entry), so counting takes no
//! lock shared by all requests and never waits on the store.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use keyledger_domain::{ApiKeyEvent, Environment, KeyHash, KeyUsageEvent, ParsedKey, Permissions};
use serde::Serialize;

use crate::event::{KeyledgerEvent, RecordedEvent};

/// Uses of one key not yet flushed to the store.
#[derive(Debug, Default)]
pub struct UsageCounter {
    count: AtomicU64,
    last_used_ms: AtomicI64,
}

impl UsageCounter {
    fn record(&self, at_ms: i64) {
        self.count.fetch_add(1, Ordering::Relaxed);
        self.last_used_ms.fetch_max(at_ms, Ordering::Relaxed);
    }
}

/// What verification needs to know about one key.
#[derive(Debug)]
pub struct IndexedKey {
    pub key_id: Box<str>,
    pub tenant: Box<str>,
    pub name: Box<str>,
    pub environment: Environment,
    pub permissions: Permissions,
    pub expires_at: Option<DateTime<Utc>>,
    pub active: bool,
    usage: Arc<UsageCounter>,
}

impl IndexedKey {
    /// Builds an entry for the index (from the key list at start, or from events).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key_id: &str,
        tenant: &str,
        name: &str,
        environment: Environment,
        permissions: Permissions,
        expires_at: Option<DateTime<Utc>>,
        active: bool,
    ) -> Self {
        Self {
            key_id: key_id.into(),
            tenant: tenant.into(),
            name: name.into(),
            environment,
            permissions,
            expires_at,
            active,
            usage: Arc::default(),
        }
    }
}

/// Outcome codes of the contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VerificationCode {
    Valid,
    NotFound,
    Disabled,
    Expired,
    WrongEnvironment,
    InsufficientPermissions,
}

/// A verification question.
#[derive(Debug, Clone, Copy)]
pub struct VerifyRequest<'a> {
    /// The presented key; never logged.
    pub key: &'a str,
    pub environment: Option<Environment>,
    pub permissions: &'a [String],
}

/// A verification answer; `key` is set when the key exists.
#[derive(Debug, Clone)]
pub struct Verification {
    pub code: VerificationCode,
    pub key: Option<Arc<IndexedKey>>,
}

impl Verification {
    pub fn valid(&self) -> bool {
        self.code == VerificationCode::Valid
    }
}

/// Uses of one key taken out of the counters for flushing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainedUsage {
    pub key_id: String,
    pub tenant: String,
    pub count: u64,
    pub last_used_at: DateTime<Utc>,
}

/// The two maps of an index generation.
#[derive(Debug, Default)]
struct Maps {
    by_hash: papaya::HashMap<KeyHash, Arc<IndexedKey>>,
    by_id: papaya::HashMap<Box<str>, KeyHash>,
}

/// The in-memory verification index of this node. The maps sit behind an
/// `ArcSwap` so a rebuilt generation replaces them atomically while
/// verifications keep reading the old one.
#[derive(Debug, Default)]
pub struct VerificationIndex {
    maps: arc_swap::ArcSwap<Maps>,
    checkpoint: AtomicI64,
    /// Uses of keys deleted before their counts were flushed. Touched only on
    /// deletion and flush, never on the verification path.
    orphaned: std::sync::Mutex<Vec<DrainedUsage>>,
}

impl VerificationIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.maps.load().by_hash.len()
    }

    /// Replaces this index's contents with a freshly loaded generation, carrying
    /// over uses not yet flushed. The caller holds the tailer lock.
    pub fn replace_with(&self, fresh: VerificationIndex) {
        let old = self.maps.swap(fresh.maps.load_full());
        self.checkpoint.store(fresh.checkpoint(), Ordering::Release);
        let pending: Vec<DrainedUsage> = old
            .by_hash
            .pin()
            .values()
            .filter_map(|k| take_usage(k))
            .collect();
        for usage in &pending {
            self.restore_usage(usage);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Last global position applied.
    pub fn checkpoint(&self) -> i64 {
        self.checkpoint.load(Ordering::Acquire)
    }

    /// Adds a key as loaded from the key list at start.
    pub fn insert(&self, hash: KeyHash, key: IndexedKey) {
        let maps = self.maps.load();
        maps.by_id.pin().insert(key.key_id.clone(), hash);
        maps.by_hash.pin().insert(hash, Arc::new(key));
    }

    /// Sets the checkpoint after a bulk load.
    pub fn set_checkpoint(&self, position: i64) {
        self.checkpoint.store(position, Ordering::Release);
    }

    /// Answers a verification. A malformed key or one failing its checksum is
    /// `NOT_FOUND` without any lookup. Counts a use when the answer is `VALID`.
    pub fn verify(&self, req: VerifyRequest<'_>, now: DateTime<Utc>) -> Verification {
        let not_found = Verification {
            code: VerificationCode::NotFound,
            key: None,
        };
        let Ok(parsed) = ParsedKey::parse(req.key) else {
            return not_found;
        };
        let hash = parsed.hash();
        let Some(key) = self.maps.load().by_hash.pin().get(&hash).cloned() else {
            return not_found;
        };
        let code = if !key.active {
            VerificationCode::Disabled
        } else if key.expires_at.is_some_and(|e| e <= now) {
            VerificationCode::Expired
        } else if req.environment.is_some_and(|env| env != key.environment) {
            VerificationCode::WrongEnvironment
        } else if !key.permissions.grants_all(req.permissions) {
            VerificationCode::InsufficientPermissions
        } else {
            key.usage.record(now.timestamp_millis());
            VerificationCode::Valid
        };
        Verification {
            code,
            key: Some(key),
        }
    }

    /// Applies one event if it is newer than the checkpoint.
    pub fn apply(&self, event: &RecordedEvent) {
        if event.position <= self.checkpoint() {
            return;
        }
        match &event.event {
            KeyledgerEvent::Key(ApiKeyEvent::KeyCreated(c)) => self.insert(
                c.key_hash,
                IndexedKey::new(
                    &event.key_id,
                    &c.tenant,
                    &c.name,
                    c.environment,
                    c.permissions.clone(),
                    c.expires_at,
                    true,
                ),
            ),
            KeyledgerEvent::Key(ApiKeyEvent::KeyUpdated(u)) => self.replace(&event.key_id, |k| {
                let mut next = k.clone_with_same_usage();
                if let Some(name) = &u.name {
                    next.name = name.as_str().into();
                }
                if let Some(p) = &u.permissions {
                    next.permissions = p.clone();
                }
                if let Some(exp) = u.expires_at {
                    next.expires_at = exp;
                }
                next
            }),
            KeyledgerEvent::Key(ApiKeyEvent::KeyDeactivated(_)) => {
                self.replace(&event.key_id, |k| IndexedKey {
                    active: false,
                    ..k.clone_with_same_usage()
                })
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyReactivated(_)) => {
                self.replace(&event.key_id, |k| IndexedKey {
                    active: true,
                    ..k.clone_with_same_usage()
                })
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyExpirySet(x)) => {
                self.replace(&event.key_id, |k| IndexedKey {
                    expires_at: Some(x.expires_at),
                    ..k.clone_with_same_usage()
                })
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyDeleted(_)) => {
                let maps = self.maps.load();
                let by_id = maps.by_id.pin();
                let by_hash = maps.by_hash.pin();
                if let Some(hash) = by_id.remove(event.key_id.as_str()) {
                    if let Some(gone) = by_hash.remove(hash) {
                        // Uses counted before the deletion still happened.
                        if let Some(usage) = take_usage(gone) {
                            self.orphans().push(usage);
                        }
                    }
                }
            }
            KeyledgerEvent::Usage(KeyUsageEvent::KeyUsageRecorded(_)) => {}
        }
        self.checkpoint.store(event.position, Ordering::Release);
    }

    /// Moves the checkpoint over positions that carry nothing for this index.
    pub fn advance_to(&self, position: i64) {
        self.checkpoint.fetch_max(position, Ordering::AcqRel);
    }

    fn replace(&self, key_id: &str, f: impl FnOnce(&IndexedKey) -> IndexedKey) {
        let maps = self.maps.load();
        let Some(hash) = maps.by_id.pin().get(key_id).copied() else {
            return;
        };
        let map = maps.by_hash.pin();
        if let Some(current) = map.get(&hash) {
            let next = f(current);
            map.insert(hash, Arc::new(next));
        }
    }

    /// Takes every pending use out of the counters (deleted keys' included).
    pub fn drain_usage(&self) -> Vec<DrainedUsage> {
        let mut drained = std::mem::take(&mut *self.orphans());
        let maps = self.maps.load();
        let map = maps.by_hash.pin();
        drained.extend(map.values().filter_map(|k| take_usage(k)));
        drained
    }

    fn orphans(&self) -> std::sync::MutexGuard<'_, Vec<DrainedUsage>> {
        // A poisoned lock only means a panic elsewhere; the list is still valid.
        self.orphaned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Puts back uses whose flush failed, so they go out with the next one.
    pub fn restore_usage(&self, usage: &DrainedUsage) {
        let maps = self.maps.load();
        let Some(hash) = maps.by_id.pin().get(usage.key_id.as_str()).copied() else {
            self.orphans().push(usage.clone());
            return;
        };
        let by_hash = maps.by_hash.pin();
        if let Some(k) = by_hash.get(&hash) {
            k.usage.count.fetch_add(usage.count, Ordering::AcqRel);
            k.usage
                .last_used_ms
                .fetch_max(usage.last_used_at.timestamp_millis(), Ordering::AcqRel);
        }
    }
}

/// Moves a key's pending uses out of its counters.
fn take_usage(k: &IndexedKey) -> Option<DrainedUsage> {
    let count = k.usage.count.swap(0, Ordering::AcqRel);
    if count == 0 {
        return None;
    }
    let ms = k.usage.last_used_ms.load(Ordering::Acquire);
    Some(DrainedUsage {
        key_id: k.key_id.to_string(),
        tenant: k.tenant.to_string(),
        count,
        last_used_at: DateTime::from_timestamp_millis(ms).unwrap_or_default(),
    })
}

impl IndexedKey {
    fn clone_with_same_usage(&self) -> IndexedKey {
        IndexedKey {
            key_id: self.key_id.clone(),
            tenant: self.tenant.clone(),
            name: self.name.clone(),
            environment: self.environment,
            permissions: self.permissions.clone(),
            expires_at: self.expires_at,
            active: self.active,
            usage: Arc::clone(&self.usage),
        }
    }
}
