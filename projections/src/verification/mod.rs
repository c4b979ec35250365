//! The verification index: key hash -> what verification needs, in memory.
//!
//! Reads never block writers: keys live in a `papaya` lock-free map keyed by
//! hash, and an entry is immutable, replaced whole on change (papaya frees the
//! old one once no reader holds it). Uses are
//! counted in atomics inside the entry, so counting takes no lock shared by all
//! requests and never waits on the store. When an entry is replaced, its counts
//! move to the successor; a verification that counted on the old entry after
//! the move sees it retired and moves its count itself (`rehome`), so no use is
//! lost to the race.
//!
//! Memory is what bounds a node at millions of keys (BENCHMARKS.md): entries
//! sit in the map's own allocation (no `Arc` per key), ids are packed into 16
//! bytes, tenants and permission sets are shared between keys, the id -> hash
//! table used by the writer is a sorted vector, and the map is sized before a
//! bulk load. Because entries live in the map, a verification's answer is
//! read inside the map's guard: `verify` hands it to a closure.

mod id_table;
mod key_id;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, Utc};
use compact_str::CompactString;
use keyledger_domain::{ApiKeyEvent, Environment, KeyHash, KeyUsageEvent, ParsedKey, Permissions};
use serde::Serialize;

use crate::event::{KeyledgerEvent, RecordedEvent};
use id_table::IdTable;
pub use key_id::{KeyId, KeyIdText};

/// Uses of one key not yet flushed to the store.
///
/// `SeqCst` throughout: a count and the entry's `retired` flag are written by
/// different threads in opposite orders (count then check flag; set flag then
/// take count), which only sequential consistency makes safe.
#[derive(Debug, Default)]
struct UsageCounter {
    count: AtomicU64,
    last_used_ms: AtomicI64,
}

impl UsageCounter {
    fn add(&self, count: u64, at_ms: i64) {
        self.count.fetch_add(count, Ordering::SeqCst);
        // Within one millisecond every use but the first only reads.
        if self.last_used_ms.load(Ordering::Relaxed) < at_ms {
            self.last_used_ms.fetch_max(at_ms, Ordering::SeqCst);
        }
    }

    /// Takes the pending count out (0 when none) and the newest use.
    fn take(&self) -> (u64, i64) {
        let count = self.count.swap(0, Ordering::SeqCst);
        (count, self.last_used_ms.load(Ordering::SeqCst))
    }
}

/// What verification needs to know about one key.
#[derive(Debug)]
pub struct IndexedKey {
    key_id: KeyId,
    tenant: Arc<str>,
    /// Inline up to 24 bytes (nearly every name): reading it for the answer
    /// then costs no memory access beyond the entry's own.
    name: CompactString,
    permissions: Arc<Permissions>,
    expires_at: Option<DateTime<Utc>>,
    environment: Environment,
    active: bool,
    /// Set once the entry has been replaced or removed.
    retired: AtomicBool,
    usage: UsageCounter,
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
        Self::from_shared(
            key_id,
            tenant.into(),
            name,
            environment,
            Arc::new(permissions),
            expires_at,
            active,
        )
    }

    /// Builds an entry whose tenant and permission set are already shared.
    #[allow(clippy::too_many_arguments)]
    pub fn from_shared(
        key_id: &str,
        tenant: Arc<str>,
        name: &str,
        environment: Environment,
        permissions: Arc<Permissions>,
        expires_at: Option<DateTime<Utc>>,
        active: bool,
    ) -> Self {
        Self {
            key_id: KeyId::new(key_id),
            tenant,
            name: CompactString::new(name),
            permissions,
            expires_at,
            environment,
            active,
            retired: AtomicBool::new(false),
            usage: UsageCounter::default(),
        }
    }

    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn environment(&self) -> Environment {
        self.environment
    }

    pub fn permissions(&self) -> &Permissions {
        &self.permissions
    }

    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    pub fn active(&self) -> bool {
        self.active
    }

    /// A new entry with the same identity and fresh counters.
    fn successor(&self) -> IndexedKey {
        IndexedKey {
            key_id: self.key_id.clone(),
            tenant: self.tenant.clone(),
            name: self.name.clone(),
            permissions: self.permissions.clone(),
            expires_at: self.expires_at,
            environment: self.environment,
            active: self.active,
            retired: AtomicBool::new(false),
            usage: UsageCounter::default(),
        }
    }

    fn drained(&self, count: u64, last_used_ms: i64) -> DrainedUsage {
        DrainedUsage {
            key_id: self.key_id.to_string(),
            tenant: self.tenant.to_string(),
            count,
            last_used_at: DateTime::from_timestamp_millis(last_used_ms).unwrap_or_default(),
        }
    }
}

/// Hashes a `KeyHash` by its first 8 bytes: it is already a SHA-256, so hashing
/// it again (SipHash) would only cost time.
#[derive(Debug, Clone, Copy, Default)]
pub struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut word = [0u8; 8];
        let n = bytes.len().min(8);
        word[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(word);
    }

    // The slice length `Hash` writes before the bytes carries nothing.
    fn write_usize(&mut self, _: usize) {}
}

impl BuildHasher for DigestHasher {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher(0)
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
#[derive(Debug, Clone, Copy)]
pub struct Verification<'a> {
    pub code: VerificationCode,
    pub key: Option<&'a IndexedKey>,
}

impl Verification<'_> {
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

/// One generation of the index.
#[derive(Debug, Default)]
struct Maps {
    by_hash: papaya::HashMap<KeyHash, IndexedKey, DigestHasher>,
    /// Touched by the writer only, never by verification.
    writer: Mutex<WriterSide>,
}

impl Maps {
    fn with_capacity(n: usize) -> Self {
        Self {
            by_hash: papaya::HashMap::with_capacity_and_hasher(n, DigestHasher::default()),
            writer: Mutex::new(WriterSide {
                ids: IdTable::with_capacity(n),
                ..WriterSide::default()
            }),
        }
    }

    fn writer(&self) -> MutexGuard<'_, WriterSide> {
        // A poisoned lock only means a panic elsewhere; the tables are still valid.
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The writer's tables: ids, the tenants (with how many keys each holds) and
/// the permission sets shared by keys.
#[derive(Debug, Default)]
struct WriterSide {
    ids: IdTable,
    tenants: HashMap<Arc<str>, Tenant>,
    permissions: HashSet<Arc<Permissions>>,
}

/// A tenant's shared name and its number of keys in the index.
#[derive(Debug)]
struct Tenant {
    name: Arc<str>,
    keys: u64,
}

impl WriterSide {
    /// Makes `key` share its tenant and permission set with other keys, and
    /// counts `added` more keys for its tenant (one lookup for both).
    fn intern(&mut self, mut key: IndexedKey, added: u64) -> IndexedKey {
        match self.tenants.get_mut(&*key.tenant) {
            Some(t) => {
                t.keys += added;
                key.tenant = t.name.clone();
            }
            None => {
                let name = key.tenant.clone();
                self.tenants
                    .insert(name.clone(), Tenant { name, keys: added });
            }
        }
        key.permissions = match self.permissions.get(&key.permissions) {
            Some(p) => p.clone(),
            None => {
                self.permissions.insert(key.permissions.clone());
                key.permissions
            }
        };
        key
    }
}

/// The in-memory verification index of this node. The maps sit behind an
/// `ArcSwap` so a rebuilt generation replaces them atomically while
/// verifications keep reading the old one.
#[derive(Debug, Default)]
pub struct VerificationIndex {
    maps: arc_swap::ArcSwap<Maps>,
    checkpoint: AtomicI64,
    /// Uses of keys removed before their counts were flushed. Touched only on
    /// removal, on a verification racing a removal, and on flush.
    orphaned: Mutex<Vec<DrainedUsage>>,
}

impl VerificationIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty index sized for `n` keys, so a bulk load never resizes.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            maps: arc_swap::ArcSwap::from_pointee(Maps::with_capacity(n)),
            ..Self::default()
        }
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.maps.load().by_hash.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Replaces this index's contents with a freshly loaded generation, carrying
    /// over uses not yet flushed. The caller holds the tailer lock.
    pub fn replace_with(&self, fresh: VerificationIndex) {
        let old = self.maps.swap(fresh.maps.load_full());
        self.checkpoint.store(fresh.checkpoint(), Ordering::Release);
        let new = self.maps.load();
        let new_map = new.by_hash.pin();
        for (hash, key) in old.by_hash.pin().iter() {
            retire_into(key, new_map.get(hash), &self.orphaned);
        }
    }

    /// Last global position applied.
    pub fn checkpoint(&self) -> i64 {
        self.checkpoint.load(Ordering::Acquire)
    }

    /// Adds a key as loaded from the key list at start.
    pub fn insert(&self, hash: KeyHash, key: IndexedKey) {
        let maps = self.maps.load();
        let key = {
            let mut writer = maps.writer();
            writer.ids.insert(&key.key_id, hash);
            writer.intern(key, 1)
        };
        maps.by_hash.pin().insert(hash, key);
    }

    /// How many keys `tenant` holds (deleted keys leave the index, so this is
    /// the key list's count, without a query).
    pub fn tenant_keys(&self, tenant: &str) -> u64 {
        self.maps
            .load()
            .writer()
            .tenants
            .get(tenant)
            .map_or(0, |t| t.keys)
    }

    /// Sets the checkpoint after a bulk load.
    pub fn set_checkpoint(&self, position: i64) {
        self.checkpoint.store(position, Ordering::Release);
    }

    /// Answers a verification and hands the answer to `answer`. A malformed
    /// key or one failing its checksum is `NOT_FOUND` without any lookup.
    /// Counts a use when the answer is `VALID`.
    pub fn verify<R>(
        &self,
        req: VerifyRequest<'_>,
        now: DateTime<Utc>,
        answer: impl FnOnce(Verification<'_>) -> R,
    ) -> R {
        let not_found = Verification {
            code: VerificationCode::NotFound,
            key: None,
        };
        let Ok(parsed) = ParsedKey::parse(req.key) else {
            return answer(not_found);
        };
        let hash = parsed.hash();
        let maps = self.maps.load();
        let map = maps.by_hash.pin();
        let Some(key) = map.get(&hash) else {
            return answer(not_found);
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
            key.usage.add(1, now.timestamp_millis());
            if key.retired.load(Ordering::SeqCst) {
                self.rehome(&hash, key);
            }
            VerificationCode::Valid
        };
        answer(Verification {
            code,
            key: Some(key),
        })
    }

    /// Moves uses counted on a retired entry to its successor (or to the
    /// orphans when the key is gone), following further replacements.
    fn rehome(&self, hash: &KeyHash, retired: &IndexedKey) {
        let maps = self.maps.load();
        let map = maps.by_hash.pin();
        let mut from = retired;
        loop {
            let (count, at) = from.usage.take();
            if count == 0 {
                return;
            }
            match map.get(hash) {
                Some(to) if !std::ptr::eq(to, from) => {
                    to.usage.add(count, at);
                    if !to.retired.load(Ordering::SeqCst) {
                        return;
                    }
                    from = to;
                }
                _ => {
                    lock(&self.orphaned).push(from.drained(count, at));
                    return;
                }
            }
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
                let mut next = k.successor();
                if let Some(name) = &u.name {
                    next.name = CompactString::new(name);
                }
                if let Some(p) = &u.permissions {
                    next.permissions = Arc::new(p.clone());
                }
                if let Some(exp) = u.expires_at {
                    next.expires_at = exp;
                }
                next
            }),
            KeyledgerEvent::Key(ApiKeyEvent::KeyDeactivated(_)) => {
                self.replace(&event.key_id, |k| IndexedKey {
                    active: false,
                    ..k.successor()
                })
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyReactivated(_)) => {
                self.replace(&event.key_id, |k| IndexedKey {
                    active: true,
                    ..k.successor()
                })
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyExpirySet(x)) => {
                self.replace(&event.key_id, |k| IndexedKey {
                    expires_at: Some(x.expires_at),
                    ..k.successor()
                })
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyDeleted(_)) => {
                let maps = self.maps.load();
                let mut writer = maps.writer();
                let hash = writer.ids.remove(&KeyId::new(&event.key_id));
                if let Some(hash) = hash {
                    if let Some(gone) = maps.by_hash.pin().remove(&hash) {
                        if let Some(t) = writer.tenants.get_mut(gone.tenant()) {
                            t.keys = t.keys.saturating_sub(1);
                        }
                        // Uses counted before the deletion still happened.
                        retire_into(gone, None, &self.orphaned);
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

    /// Replaces a key's entry with `f(current)`; the current entry's uses move
    /// to the new one.
    fn replace(&self, key_id: &str, f: impl FnOnce(&IndexedKey) -> IndexedKey) {
        let maps = self.maps.load();
        let mut writer = maps.writer();
        let Some(hash) = writer.ids.get(&KeyId::new(key_id)) else {
            return;
        };
        let map = maps.by_hash.pin();
        if let Some(current) = map.get(&hash) {
            let next = writer.intern(f(current), 0);
            // Successor first, then retire: a verification that sees the old
            // entry retired finds the new one in the map.
            map.insert(hash, next);
            retire_into(current, map.get(&hash), &self.orphaned);
        }
    }

    /// Takes every pending use out of the counters (removed keys' included).
    pub fn drain_usage(&self) -> Vec<DrainedUsage> {
        let mut drained = std::mem::take(&mut *lock(&self.orphaned));
        let maps = self.maps.load();
        let map = maps.by_hash.pin();
        drained.extend(map.values().filter_map(|k| {
            let (count, at) = k.usage.take();
            (count > 0).then(|| k.drained(count, at))
        }));
        drained
    }

    /// Puts back uses whose flush failed, so they go out with the next one.
    pub fn restore_usage(&self, usage: &DrainedUsage) {
        let maps = self.maps.load();
        let hash = maps.writer().ids.get(&KeyId::new(&usage.key_id));
        let map = maps.by_hash.pin();
        match hash.and_then(|h| map.get(&h)) {
            Some(k) => {
                k.usage
                    .add(usage.count, usage.last_used_at.timestamp_millis());
                if let (true, Some(h)) = (k.retired.load(Ordering::SeqCst), hash) {
                    self.rehome(&h, k);
                }
            }
            None => lock(&self.orphaned).push(usage.clone()),
        }
    }
}

/// Retires `old` and moves its pending uses to `successor`, or to the orphans
/// when the key is gone.
fn retire_into(
    old: &IndexedKey,
    successor: Option<&IndexedKey>,
    orphans: &Mutex<Vec<DrainedUsage>>,
) {
    old.retired.store(true, Ordering::SeqCst);
    let (count, at) = old.usage.take();
    if count == 0 {
        return;
    }
    match successor {
        Some(next) => next.usage.add(count, at),
        None => lock(orphans).push(old.drained(count, at)),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A poisoned lock only means a panic elsewhere; the data is still valid.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_ID: &str = "key_019a4f3c2b7e7c1d8e9f0a1b2c3d4e5f";

    fn index_with_one_key() -> (VerificationIndex, KeyHash) {
        let index = VerificationIndex::new();
        let hash = KeyHash::from_bytes([7; 32]);
        index.insert(
            hash,
            IndexedKey::new(
                KEY_ID,
                "acme",
                "billing",
                Environment::Live,
                Permissions::default(),
                None,
                true,
            ),
        );
        (index, hash)
    }

    fn count_on(index: &VerificationIndex, hash: &KeyHash, n: u64) {
        let maps = index.maps.load();
        let map = maps.by_hash.pin();
        let key = map.get(hash).expect("indexed");
        key.usage.add(n, 1_000);
        if key.retired.load(Ordering::SeqCst) {
            index.rehome(hash, key);
        }
    }

    fn drained_count(index: &VerificationIndex) -> u64 {
        index.drain_usage().iter().map(|u| u.count).sum()
    }

    #[test]
    fn a_replaced_entry_hands_its_uses_to_its_successor() {
        let (index, hash) = index_with_one_key();
        count_on(&index, &hash, 3);
        index.replace(KEY_ID, |k| IndexedKey {
            active: false,
            ..k.successor()
        });
        count_on(&index, &hash, 2);
        let drained = index.drain_usage();
        assert_eq!(drained.len(), 1);
        assert_eq!(drained[0].count, 5);
        assert_eq!(drained[0].key_id, KEY_ID);
        assert_eq!(drained_count(&index), 0, "drained once");
    }

    #[test]
    fn a_use_counted_on_a_retired_entry_is_moved_not_lost() {
        let (index, hash) = index_with_one_key();
        let maps = index.maps.load();
        let map = maps.by_hash.pin();
        // A verification holds the entry while the writer replaces it...
        let held = map.get(&hash).expect("indexed");
        index.replace(KEY_ID, |k| IndexedKey {
            name: "renamed".into(),
            ..k.successor()
        });
        index.replace(KEY_ID, |k| IndexedKey {
            active: false,
            ..k.successor()
        });
        // ...and counts on it afterwards, as `verify` does.
        held.usage.add(1, 2_000);
        assert!(held.retired.load(Ordering::SeqCst));
        index.rehome(&hash, held);
        let drained = index.drain_usage();
        assert_eq!(drained.len(), 1);
        assert_eq!(drained[0].count, 1);
        assert_eq!(drained[0].last_used_at.timestamp_millis(), 2_000);
    }

    #[test]
    fn keys_are_counted_per_tenant_until_deleted() {
        let (index, _) = index_with_one_key();
        index.insert(
            KeyHash::from_bytes([8; 32]),
            IndexedKey::new(
                "key_019a4f3c2b7e7c1d8e9f0a1b2c3d4e60",
                "acme",
                "search",
                Environment::Test,
                Permissions::default(),
                None,
                false,
            ),
        );
        assert_eq!(index.tenant_keys("acme"), 2);
        assert_eq!(index.tenant_keys("globex"), 0);
        index.apply(&RecordedEvent {
            position: 1,
            key_id: KEY_ID.to_string(),
            sequence: 2,
            meta: crate::event::EventMeta {
                tenant: "acme".to_string(),
                actor: None,
                request_id: None,
                client_addr: None,
                user_agent: None,
                occurred_at: Utc::now(),
            },
            event: KeyledgerEvent::Key(ApiKeyEvent::KeyDeleted(keyledger_domain::KeyDeleted {
                at: Utc::now(),
            })),
            hash: String::new(),
        });
        assert_eq!(index.tenant_keys("acme"), 1);
    }

    #[test]
    fn uses_of_a_removed_key_become_orphans_and_a_failed_flush_keeps_them() {
        let (index, hash) = index_with_one_key();
        count_on(&index, &hash, 4);
        let maps = index.maps.load();
        let removed = maps.writer().ids.remove(&KeyId::new(KEY_ID));
        assert_eq!(removed, Some(hash));
        let map = maps.by_hash.pin();
        let gone = map.remove(&hash).expect("was indexed");
        retire_into(gone, None, &index.orphaned);
        let drained = index.drain_usage();
        assert_eq!(drained.len(), 1);
        assert_eq!(drained[0].count, 4);
        // A failed flush puts them back; the key is gone, so they stay orphans.
        index.restore_usage(&drained[0]);
        assert_eq!(drained_count(&index), 4);
    }

    #[test]
    fn a_reloaded_generation_keeps_unflushed_uses() {
        let (index, hash) = index_with_one_key();
        count_on(&index, &hash, 6);
        let (fresh, _) = index_with_one_key();
        index.replace_with(fresh);
        assert_eq!(drained_count(&index), 6);
    }

    #[test]
    fn keys_share_tenant_and_permission_sets() {
        let index = VerificationIndex::with_capacity(2);
        let perms = Permissions::parse(vec!["a:read".into()]).expect("valid");
        for (n, id) in [(1u8, KEY_ID), (2, "key_held")] {
            index.insert(
                KeyHash::from_bytes([n; 32]),
                IndexedKey::new(
                    id,
                    "acme",
                    "k",
                    Environment::Live,
                    perms.clone(),
                    None,
                    true,
                ),
            );
        }
        let maps = index.maps.load();
        let map = maps.by_hash.pin();
        let a = map.get(&KeyHash::from_bytes([1; 32])).expect("a");
        let b = map.get(&KeyHash::from_bytes([2; 32])).expect("b");
        assert!(Arc::ptr_eq(&a.tenant, &b.tenant));
        assert!(Arc::ptr_eq(&a.permissions, &b.permissions));
        assert_eq!(b.key_id().to_string(), "key_held");
    }
}
