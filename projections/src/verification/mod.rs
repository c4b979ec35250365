//! The verification index: what verification needs about every key, in memory.
//!
//! Entries sit inline in a table of 128-byte slots placed by each key's display
//! body ([`slots`]): a verification reads one slot, and starts reading it before
//! it has checked and hashed the presented key. Reads never block the writer,
//! and a read waits for the writer only while it rewrites that one slot (every
//! slot is a sequence lock). Uses are
//! counted in atomics inside the slot, so counting takes no lock shared by all
//! requests and never waits on the store.
//!
//! Changes to a key are written into its slot in place, so its uses stay where
//! they are. A table is replaced whole when it grows or when the index is
//! reloaded; the old one is then retired and its uses move to the new one. A
//! verification that counted on the old table after the move sees it retired
//! and moves its count itself (`rehome`), so no use is lost to the race.
//!
//! A limited key's slot also holds its admission tokens ([`tokens`]), so
//! the common case of a key with usage limits touches no other memory either.
//!
//! Memory is what bounds a node at millions of keys (BENCHMARKS.md): names up to
//! 24 bytes and issued ids are held in the slot, tenants and permission sets
//! are shared between keys and named by index, the id -> slot table used by
//! the writer is a sorted vector, and the table is sized before a bulk load.

mod id_table;
mod key_id;
pub mod limits;
mod refusals;
mod slots;
mod tokens;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::sync::lock;

use chrono::{DateTime, Utc};
use compact_str::CompactString;
use keyledger_domain::key::{display_body_of_key, display_body_of_prefix};
use keyledger_domain::{
    AllowedIps, ApiKeyEvent, Environment, KeyHash, Ledger, OwnerEvent, ParsedKey, Permissions,
    RateLimit, Refusal,
};
use serde::Serialize;

use crate::event::{KeyledgerEvent, RecordedEvent};
use id_table::IdTable;
pub use key_id::{KeyId, KeyIdText};
use limits::{Checked, LimitReport, LimitedKey, Need, Owners, TokenSlot};
pub use refusals::DrainedRefusals;
use refusals::RefusalCounts;
use slots::{
    home_of, Slot, SlotData, SlotTable, ACTIVE, DELETED, EXPIRES, LIMITED, LIVE, LONG_NAME,
    TEST_ENV, TEXT_ID,
};

/// A key's usage-limit settings as they enter the index.
#[derive(Debug, Clone, Default)]
pub struct LimitSpec {
    pub owner: Option<String>,
    pub ratelimits: Vec<RateLimit>,
    /// Its credit ledger as last seen (the create's opening balance before
    /// any ledger event).
    pub ledger: Option<Ledger>,
}

impl LimitSpec {
    fn is_limited(&self) -> bool {
        self.owner.is_some()
            || !self.ratelimits.is_empty()
            || self.ledger.as_ref().is_some_and(|l| l.limited)
    }
}

/// A key as it goes into the index (from the key list at start, or from events).
#[derive(Debug, Clone)]
pub struct IndexedKey {
    key_id: KeyId,
    /// Where the key's display body places it.
    home: u64,
    tenant: Arc<str>,
    name: CompactString,
    permissions: Arc<Permissions>,
    allowed_ips: AllowedIps,
    expires_at: Option<DateTime<Utc>>,
    environment: Environment,
    active: bool,
    limits: Option<Box<LimitSpec>>,
}

impl IndexedKey {
    /// The key usable only from these addresses (empty: any).
    pub fn with_allowed_ips(mut self, allowed_ips: AllowedIps) -> Self {
        self.allowed_ips = allowed_ips;
        self
    }

    /// An imported key: not in keyledger's format, so it has no display
    /// body to be placed by; it is placed by its hash instead, which is
    /// where a verification of a key with an import prefix looks for it.
    pub fn placed_by_hash(mut self, hash: &KeyHash) -> Self {
        self.home = home_of_hash(hash);
        self
    }

    /// [`IndexedKey::placed_by_hash`] when `imported`.
    pub fn placed_by_hash_if(self, imported: bool, hash: &KeyHash) -> Self {
        if imported {
            self.placed_by_hash(hash)
        } else {
            self
        }
    }

    /// The key with usage limits.
    pub fn with_limits(mut self, spec: LimitSpec) -> Self {
        self.limits = spec.is_limited().then(|| Box::new(spec));
        self
    }

    /// `display_prefix` is the key's stored display prefix (`kl_live_AbCd1234`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        key_id: &str,
        display_prefix: &str,
        tenant: &str,
        name: &str,
        environment: Environment,
        permissions: Permissions,
        expires_at: Option<DateTime<Utc>>,
        active: bool,
    ) -> Self {
        Self::from_shared(
            key_id,
            display_prefix,
            tenant.into(),
            name,
            environment,
            Arc::new(permissions),
            expires_at,
            active,
        )
    }

    /// Builds a key whose tenant and permission set are already shared.
    #[allow(clippy::too_many_arguments)]
    pub fn from_shared(
        key_id: &str,
        display_prefix: &str,
        tenant: Arc<str>,
        name: &str,
        environment: Environment,
        permissions: Arc<Permissions>,
        expires_at: Option<DateTime<Utc>>,
        active: bool,
    ) -> Self {
        Self {
            key_id: KeyId::new(key_id),
            home: home_of(display_body_of_prefix(display_prefix)),
            tenant,
            name: CompactString::new(name),
            permissions,
            allowed_ips: AllowedIps::default(),
            expires_at,
            environment,
            active,
            limits: None,
        }
    }
}

/// A key found by a verification: a copy of its slot, read consistently, and
/// the generation that names its tenant and permission set.
#[derive(Debug, Clone, Copy)]
pub struct VerifiedKey<'g> {
    data: SlotData,
    maps: &'g Maps,
}

impl<'g> VerifiedKey<'g> {
    /// The key id, written into `buf` when it is of the issued shape.
    pub fn key_id<'a>(&'a self, buf: &'a mut KeyIdText) -> &'a str {
        if self.data.has(TEXT_ID) {
            self.maps.interned.text(self.data.text_id())
        } else {
            key_id::packed_text(&self.data.key_id, buf)
        }
    }

    pub fn tenant(&self) -> &'g str {
        self.maps.interned.tenant(self.data.tenant)
    }

    pub fn name(&self) -> &str {
        if self.data.has(LONG_NAME) {
            self.maps.interned.text(self.data.text_name())
        } else {
            // Written from a `&str` and copied whole under the sequence lock.
            std::str::from_utf8(self.data.inline_name()).unwrap_or_default()
        }
    }

    pub fn environment(&self) -> Environment {
        if self.data.has(TEST_ENV) {
            Environment::Test
        } else {
            Environment::Live
        }
    }

    pub fn permissions(&self) -> &'g Permissions {
        &self.maps.interned.grant(self.data.grant).permissions
    }

    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.data
            .has(EXPIRES)
            .then(|| DateTime::from_timestamp_micros(self.data.expires_us).unwrap_or_default())
    }

    pub fn active(&self) -> bool {
        self.data.has(ACTIVE)
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
    RateLimited,
    UsageExceeded,
    IpNotAllowed,
}

impl VerificationCode {
    /// The refusal a known key's answer counts as (`None` for `VALID` and
    /// for `NOT_FOUND`, which names no key).
    pub fn refusal(self) -> Option<Refusal> {
        match self {
            Self::Valid | Self::NotFound => None,
            Self::Disabled => Some(Refusal::Disabled),
            Self::Expired => Some(Refusal::Expired),
            Self::WrongEnvironment => Some(Refusal::WrongEnvironment),
            Self::InsufficientPermissions => Some(Refusal::InsufficientPermissions),
            Self::RateLimited => Some(Refusal::RateLimited),
            Self::UsageExceeded => Some(Refusal::UsageExceeded),
            Self::IpNotAllowed => Some(Refusal::IpNotAllowed),
        }
    }

    /// The code as the API spells it (`VALID`, `NOT_FOUND`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "VALID",
            Self::NotFound => "NOT_FOUND",
            Self::Disabled => "DISABLED",
            Self::Expired => "EXPIRED",
            Self::WrongEnvironment => "WRONG_ENVIRONMENT",
            Self::InsufficientPermissions => "INSUFFICIENT_PERMISSIONS",
            Self::RateLimited => "RATE_LIMITED",
            Self::UsageExceeded => "USAGE_EXCEEDED",
            Self::IpNotAllowed => "IP_NOT_ALLOWED",
        }
    }
}

/// A verification question.
#[derive(Debug, Clone, Copy)]
pub struct VerifyRequest<'a> {
    /// The presented key; never logged.
    pub key: &'a str,
    pub environment: Option<Environment>,
    pub permissions: &'a [String],
    /// Credits a `VALID` answer spends (0 checks without spending).
    pub cost: u64,
    /// The caller's client address, checked against a key's `allowed_ips`
    /// (a key with any refuses a request without one).
    pub ip: Option<std::net::IpAddr>,
}

/// A verification answer; `key` is set when the key exists.
#[derive(Debug, Clone, Copy)]
pub struct Verification<'a> {
    pub code: VerificationCode,
    pub key: Option<VerifiedKey<'a>>,
    /// For a key with usage limits that got as far as them.
    pub limits: Option<AnswerLimits<'a>>,
}

/// The limits part of an answer. Decided under the limiter's lock it is at
/// hand; admitted from the key's tokens it is read from the limiter only
/// when asked for, so a verification that does not show it never touches
/// the limiter's memory.
#[derive(Debug, Clone, Copy)]
pub struct AnswerLimits<'a>(AnswerLimitsOf<'a>);

#[derive(Debug, Clone, Copy)]
enum AnswerLimitsOf<'a> {
    Decided(&'a LimitReport),
    Tokens {
        maps: &'a Maps,
        limiter: u32,
        slot: u32,
        now_ms: i64,
        owners: &'a Owners,
    },
}

impl<'a> AnswerLimits<'a> {
    /// Rate limits and credits as this node knows them after the answer.
    pub fn report(&self) -> Cow<'a, LimitReport> {
        match self.0 {
            AnswerLimitsOf::Decided(r) => Cow::Borrowed(r),
            AnswerLimitsOf::Tokens {
                maps,
                limiter,
                slot,
                now_ms,
                owners,
            } => Cow::Owned(
                maps.interned
                    .limited
                    .get(limiter as usize)
                    .map(|k| k.report_held(maps, slot, now_ms, owners))
                    .unwrap_or_default(),
            ),
        }
    }
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

/// What a key may do and from where: its permission set and its address
/// allow-list, interned together so that one index in the slot names both
/// (the slot has no room for a second).
#[derive(Debug, Default)]
struct Grant {
    permissions: Arc<Permissions>,
    allowed_ips: AllowedIps,
}

/// The address allow-list of an entry (or of none) admits `ip`.
fn ip_allowed(allowed: &AllowedIps, ip: Option<std::net::IpAddr>) -> bool {
    allowed.is_empty() || ip.is_some_and(|ip| allowed.allows(ip))
}

/// Where an imported key is placed: by its hash, whose bytes are as random
/// as a display body's (and cannot be chosen by whoever presents a key).
fn home_of_hash(hash: &KeyHash) -> u64 {
    home_of(&hash.as_bytes()[..8])
}

/// Tenants, grants and long texts, named by index from slots. Only
/// ever appended to, so an index read from a slot stays valid; shared by a
/// table and the one that replaces it when it grows. What a key no longer
/// names (the old text of a renamed long name) stays until the index is next
/// reloaded from the key list: bounded by the events that caused it.
#[derive(Debug, Default)]
struct Interned {
    tenants: boxcar::Vec<Arc<str>>,
    grants: boxcar::Vec<Grant>,
    /// Names longer than a slot holds, and ids not of the issued shape.
    texts: boxcar::Vec<Box<str>>,
    /// Keys with usage limits, named by index from their slots (see
    /// `slots::LIMITED`): one memory access from the slot to the limiter, no
    /// lock and no hashing. An entry outlives its key until the index is next
    /// reloaded (its unflushed spends are drained from here).
    limited: boxcar::Vec<LimitedKey>,
    /// How many keys each tenant holds. Its own lock, held for one update:
    /// the create path reads it, and must not wait while the writer grows a
    /// table under the writer lock.
    tenant_keys: Mutex<HashMap<Arc<str>, u64>>,
}

impl Interned {
    fn tenant(&self, i: u32) -> &str {
        self.tenants.get(i as usize).map_or("", |t| t)
    }

    fn grant(&self, i: u32) -> &Grant {
        static NONE: std::sync::OnceLock<Grant> = std::sync::OnceLock::new();
        self.grants
            .get(i as usize)
            .unwrap_or_else(|| NONE.get_or_init(Grant::default))
    }

    fn text(&self, i: u32) -> &str {
        self.texts.get(i as usize).map_or("", |t| t)
    }

    fn push_text(&self, text: &str) -> u32 {
        index_u32(self.texts.push(text.into()))
    }

    /// One key fewer for the tenant at `index`.
    fn forget_key(&self, index: u32) {
        if let Some(keys) = lock(&self.tenant_keys).get_mut(self.tenant(index)) {
            *keys = keys.saturating_sub(1);
        }
    }

    fn count_keys(&self, tenant: &Arc<str>, added: u64) {
        if added > 0 {
            *lock(&self.tenant_keys).entry(tenant.clone()).or_insert(0) += added;
        }
    }
}

/// Indexes stay far below 2^32 (one per tenant, permission set or long text).
fn index_u32(i: usize) -> u32 {
    u32::try_from(i).unwrap_or(u32::MAX)
}

/// One generation of the index: a table and what its slots name.
#[derive(Debug)]
struct Maps {
    table: SlotTable,
    interned: Arc<Interned>,
    /// Set once a newer generation has replaced this one.
    retired: AtomicBool,
    /// Unique in the process: limiters name the slots of their tokens by it.
    generation: u64,
}

/// The next generation's number.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

impl Maps {
    fn new(capacity: usize, interned: Arc<Interned>) -> Self {
        Self {
            table: SlotTable::with_capacity(capacity),
            interned,
            retired: AtomicBool::new(false),
            generation: GENERATIONS.fetch_add(1, Ordering::Relaxed),
        }
    }

    fn key_id(&self, data: &SlotData) -> KeyId {
        if data.has(TEXT_ID) {
            KeyId::Text(self.interned.text(data.text_id()).into())
        } else {
            KeyId::Packed(data.key_id)
        }
    }

    /// Takes back every token the limiters put into this generation (it is
    /// being retired, and `retired` is already set, so none go in after).
    fn sweep_tokens(&self) {
        for (_, key) in self.interned.limited.iter() {
            key.reclaim_in(self);
        }
    }

    fn drained(&self, data: &SlotData, count: u64, last_used_ms: i64) -> DrainedUsage {
        DrainedUsage {
            key_id: self.key_id(data).to_string(),
            tenant: self.interned.tenant(data.tenant).to_string(),
            count,
            last_used_at: DateTime::from_timestamp_millis(last_used_ms).unwrap_or_default(),
        }
    }
}

impl tokens::TokenTable for Maps {
    fn generation(&self) -> u64 {
        self.generation
    }

    fn retired(&self) -> bool {
        // SeqCst, against the sweep: it sets the flag, then takes each
        // limiter's lock; an issuer reads it under that lock.
        self.retired.load(Ordering::SeqCst)
    }

    fn word(&self, slot: u32) -> Option<&AtomicU64> {
        let i = slot as usize;
        (i < self.table.capacity()).then(|| self.table.slot(i).tokens())
    }
}

/// How ids arrive at the writer's id table: one at a time from events (kept
/// sorted), or many in no order from a bulk load (sorted once afterwards).
#[derive(Debug, Clone, Copy)]
enum IdOrder {
    Sorted,
    Any,
}

/// The writer's tables: ids, and the tenants and permission sets already
/// interned.
#[derive(Debug, Default)]
struct WriterSide {
    ids: IdTable,
    /// Slots of the current table holding a key or a tombstone.
    used: usize,
    /// Tenant name -> its index in [`Interned::tenants`].
    tenants: HashMap<Arc<str>, u32>,
    /// (Permission set, allow-list) -> its index in [`Interned::grants`].
    grants: HashMap<(Arc<Permissions>, AllowedIps), u32>,
    /// Key hash -> its limiter's index, for every key that ever had limits.
    limiters: HashMap<[u8; 32], u32>,
}

impl WriterSide {
    /// The slot entry of `key`, interning its tenant (counting `added` more
    /// keys for it), its permission set and any long text.
    fn entry(
        &mut self,
        interned: &Interned,
        hash: &KeyHash,
        key: &IndexedKey,
        added: u64,
    ) -> SlotData {
        let limiter = key
            .limits
            .as_ref()
            .and_then(|_| self.limiters.get(hash.as_bytes()).copied());
        let tenant = match self.tenants.get(&*key.tenant) {
            Some(&index) => index,
            None => {
                let index = index_u32(interned.tenants.push(key.tenant.clone()));
                self.tenants.insert(key.tenant.clone(), index);
                index
            }
        };
        interned.count_keys(&key.tenant, added);
        let mut data = SlotData {
            flags: LIVE,
            home: key.home,
            hash: *hash.as_bytes(),
            key_id: [0; 16],
            expires_us: 0,
            tenant,
            grant: self.grant(interned, &key.permissions, &key.allowed_ips),
            name: [0; slots::NAME_INLINE],
        };
        match &key.key_id {
            KeyId::Packed(b) => data.key_id = *b,
            KeyId::Text(s) => data.set_text_id(interned.push_text(s)),
        }
        // The flag first: a limited key's inline name leaves room for the
        // limiter's index.
        data.set(LIMITED, limiter.is_some());
        set_name(&mut data, interned, &key.name);
        if let Some(l) = limiter {
            data.set_limiter(l);
        }
        set_expiry(&mut data, key.expires_at);
        data.set(TEST_ENV, key.environment == Environment::Test);
        data.set(ACTIVE, key.active);
        data
    }

    fn grant(
        &mut self,
        interned: &Interned,
        permissions: &Arc<Permissions>,
        allowed_ips: &AllowedIps,
    ) -> u32 {
        let key = (permissions.clone(), allowed_ips.clone());
        if let Some(&i) = self.grants.get(&key) {
            return i;
        }
        let i = index_u32(interned.grants.push(Grant {
            permissions: key.0.clone(),
            allowed_ips: key.1.clone(),
        }));
        self.grants.insert(key, i);
        i
    }
}

fn set_name(data: &mut SlotData, interned: &Interned, name: &str) {
    if !data.set_inline_name(name) {
        data.set_text_name(interned.push_text(name));
    }
}

fn set_expiry(data: &mut SlotData, expires_at: Option<DateTime<Utc>>) {
    data.set(EXPIRES, expires_at.is_some());
    data.expires_us = expires_at.map_or(0, |e| e.timestamp_micros());
}

/// The in-memory verification index of this node. The current generation sits
/// behind an `ArcSwap` so a grown or reloaded one replaces it atomically while
/// verifications keep reading the old one.
#[derive(Debug)]
pub struct VerificationIndex {
    maps: arc_swap::ArcSwap<Maps>,
    /// The single writer: events, bulk loads, growth and reloads.
    writer: Mutex<WriterSide>,
    live: AtomicUsize,
    checkpoint: AtomicI64,
    /// Uses of keys that left the index before their counts were flushed.
    /// Touched only on growth, on a verification racing one, and on flush.
    orphaned: Mutex<Vec<DrainedUsage>>,
    /// Credit reports of limited keys a reload left behind, for the next flush.
    orphaned_credits: Mutex<Vec<limits::CreditFlush>>,
    /// Owners' shared limits.
    owners: Owners,
    /// Reservations checks foresaw, for the server to make in the background.
    ahead: limits::AheadQueue,
    /// Refused verifications of known keys, by outcome, until flushed.
    refusals: RefusalCounts,
    /// Prefixes of imported keys (`set_import_prefixes`).
    import_prefixes: std::sync::OnceLock<Box<[Box<str>]>>,
}

/// The longest imported key looked up: longer strings carrying an import
/// prefix are refused without hashing them.
pub const MAX_IMPORTED_KEY_LEN: usize = 512;

impl Default for VerificationIndex {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl VerificationIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty index sized for `n` keys, so a bulk load never grows it.
    pub fn with_capacity(n: usize) -> Self {
        Self {
            maps: arc_swap::ArcSwap::from_pointee(Maps::new(
                SlotTable::capacity_to_load(n),
                Arc::default(),
            )),
            writer: Mutex::new(WriterSide {
                ids: IdTable::with_capacity(n),
                ..WriterSide::default()
            }),
            live: AtomicUsize::new(0),
            checkpoint: AtomicI64::new(0),
            orphaned: Mutex::default(),
            orphaned_credits: Mutex::default(),
            owners: Owners::default(),
            ahead: limits::AheadQueue::default(),
            refusals: RefusalCounts::default(),
            import_prefixes: std::sync::OnceLock::new(),
        }
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn writer(&self) -> MutexGuard<'_, WriterSide> {
        lock(&self.writer)
    }

    /// Replaces this index's contents with a freshly loaded generation, carrying
    /// over uses not yet flushed. The caller holds the tailer lock.
    pub fn replace_with(&self, fresh: VerificationIndex) {
        let mut writer = self.writer();
        self.live
            .store(fresh.live.load(Ordering::Relaxed), Ordering::Relaxed);
        self.checkpoint.store(fresh.checkpoint(), Ordering::Release);
        let new = fresh.maps.load_full();
        *writer = fresh
            .writer
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        let old = self.maps.swap(new.clone());
        self.hand_over(&old, &new);
        // Limited keys keep their windows, blocks and unflushed spends; a
        // key the fresh load does not hold has its spends kept for the next
        // flush.
        let mut by_id: HashMap<&str, &LimitedKey> = new
            .interned
            .limited
            .iter()
            .map(|(_, k)| (k.key_id.as_str(), k))
            .collect();
        let mut left = Vec::new();
        for (_, key) in old.interned.limited.iter() {
            match by_id.remove(key.key_id.as_str()) {
                Some(fresh) => fresh.take_state_of(key),
                None => left.extend(key.drain(&*old)),
            }
        }
        if !left.is_empty() {
            lock(&self.orphaned_credits).extend(left);
        }
    }

    /// Retires `old` and moves every use counted in it to `new` (or to the
    /// orphans for keys `new` does not hold).
    fn hand_over(&self, old: &Maps, new: &Maps) {
        old.retired.store(true, Ordering::SeqCst);
        old.sweep_tokens();
        let mut orphans = Vec::new();
        for slot in old.table.used_slots() {
            let (count, at) = slot.take_uses();
            if count == 0 {
                continue;
            }
            let data = slot.read();
            match new.table.find(data.home, &data.hash) {
                Some((j, _)) if data.state() == LIVE => new.table.slot(j).add_uses(count, at),
                _ => orphans.push(old.drained(&data, count, at)),
            }
        }
        if !orphans.is_empty() {
            lock(&self.orphaned).extend(orphans);
        }
    }

    /// Last global position applied.
    pub fn checkpoint(&self) -> i64 {
        self.checkpoint.load(Ordering::Acquire)
    }

    /// Adds a key as loaded from the key list at start.
    pub fn insert(&self, hash: KeyHash, key: IndexedKey) {
        let mut writer = self.writer();
        self.register_limits(&mut writer, &hash, &key);
        self.insert_locked(&mut writer, &hash, &key);
    }

    /// Adds a key-list row during a bulk load: ids are unique there and may
    /// come in any order (a PostgreSQL heap is not in id order once rows were
    /// updated), so they are appended and sorted once at the first lookup.
    pub(crate) fn load_row(&self, hash: KeyHash, key: IndexedKey) {
        let mut writer = self.writer();
        self.register_limits(&mut writer, &hash, &key);
        self.add_new(&mut writer, &hash, &key, IdOrder::Any);
    }

    /// Registers a key's limits before its slot says it has them. A key
    /// already registered (its key-list row, then its create event) keeps
    /// its state and takes the settings.
    fn register_limits(&self, writer: &mut WriterSide, hash: &KeyHash, key: &IndexedKey) {
        let Some(spec) = &key.limits else {
            return;
        };
        let maps = self.maps.load();
        let interned = &maps.interned;
        match writer
            .limiters
            .get(hash.as_bytes())
            .and_then(|&i| interned.limited.get(i as usize))
        {
            Some(existing) => {
                existing.configure(Some(spec.owner.as_deref()), Some(&spec.ratelimits), &**maps);
            }
            None => {
                let i = interned.limited.push(LimitedKey::new(
                    key.key_id.to_string().as_str(),
                    key.tenant.clone(),
                    spec.owner.as_deref(),
                    spec.ratelimits.clone(),
                    spec.ledger.clone(),
                ));
                writer.limiters.insert(*hash.as_bytes(), index_u32(i));
            }
        }
    }

    /// Owners' limits on this node.
    pub fn owners(&self) -> &Owners {
        &self.owners
    }

    /// Reservations foreseen by checks (window successors, credit top-ups).
    pub fn ahead(&self) -> &limits::AheadQueue {
        &self.ahead
    }

    /// The limiter of a key, by id, creating it (with no limit) if the key
    /// has none yet; then `f` changes it and the slot's flag follows.
    fn with_limits(&self, key_id: &str, f: impl FnOnce(&LimitedKey, &Maps)) {
        let mut writer = self.writer();
        let Some(i) = writer.ids.get(&KeyId::new(key_id)) else {
            return;
        };
        let maps = self.maps.load();
        let data = maps.table.slot(i as usize).read();
        let interned = &maps.interned;
        let index = match writer.limiters.get(&data.hash) {
            Some(&l) => l,
            None => {
                let tenant: Arc<str> = interned.tenant(data.tenant).into();
                let l = index_u32(interned.limited.push(LimitedKey::new(
                    key_id,
                    tenant,
                    None,
                    Vec::new(),
                    None,
                )));
                writer.limiters.insert(data.hash, l);
                l
            }
        };
        let Some(key) = interned.limited.get(index as usize) else {
            return;
        };
        f(key, &maps);
        let limited = key.is_limited();
        if data.has(LIMITED) != limited {
            let name = VerifiedKey { data, maps: &maps }.name().to_string();
            maps.table.update(i as usize, |d| {
                d.set(LIMITED, limited);
                set_name(d, interned, &name);
                d.set_limiter(index);
            });
        }
    }

    /// A limited key by id (for the flush and for reservations).
    pub fn limited_key(&self, key_id: &str) -> Option<LimitedRef> {
        let mut writer = self.writer();
        let i = writer.ids.get(&KeyId::new(key_id))?;
        let maps = self.maps.load_full();
        let data = maps.table.slot(i as usize).read();
        let index = *writer.limiters.get(&data.hash)?;
        LimitedRef::new(maps.interned.clone(), index)
    }

    /// Runs `f` on a key's limiter and the current generation, under the
    /// writer lock, so no reload moves the limiter's state meanwhile.
    fn on_limiter<R>(&self, key_id: &str, f: impl FnOnce(&LimitedKey, &Maps) -> R) -> Option<R> {
        let mut writer = self.writer();
        let i = writer.ids.get(&KeyId::new(key_id))?;
        let maps = self.maps.load();
        let data = maps.table.slot(i as usize).read();
        let index = *writer.limiters.get(&data.hash)?;
        let key = maps.interned.limited.get(index as usize)?;
        Some(f(key, &maps))
    }

    /// Adds what the store gave for a window of a key's own limits.
    pub fn grant_window(&self, need: &limits::WindowNeed, granted: u64, taken: u64) {
        self.on_limiter(&need.subject, |k, _| k.grant_window(need, granted, taken));
    }

    /// The store is away for a window of a key's own limits: whether this
    /// node may admit its share of the window before (see `LimitedKey::fall_back`).
    pub fn fall_back_window(&self, need: &limits::WindowNeed) -> bool {
        self.on_limiter(&need.subject, |k, _| k.fall_back(need))
            .unwrap_or(false)
    }

    /// Adds a block of credits reserved for a key, with the ledger as the
    /// reservation (the usage stream's event `sequence`) left it.
    pub fn grant_credits(&self, key_id: &str, granted: u64, ledger: Ledger, sequence: i64) {
        self.on_limiter(key_id, |k, maps| {
            k.grant_credits(granted, ledger, sequence, maps)
        });
    }

    /// A key's ledger as a reservation that granted nothing left it.
    pub fn see_ledger(&self, key_id: &str, ledger: Ledger, sequence: i64) {
        self.on_limiter(key_id, |k, maps| k.see_ledger(Some(ledger), sequence, maps));
    }

    /// Takes every limited key's credit report for a flush.
    pub fn drain_limits(&self) -> Vec<limits::CreditFlush> {
        let mut out = std::mem::take(&mut *lock(&self.orphaned_credits));
        let maps = self.maps.load();
        out.extend(
            maps.interned
                .limited
                .iter()
                .filter_map(|(_, k)| k.drain(&**maps)),
        );
        out
    }

    /// Puts back a credit report whose flush failed.
    pub fn restore_limits(&self, flush: &limits::CreditFlush) {
        let maps = self.maps.load();
        match maps
            .interned
            .limited
            .iter()
            .find(|(_, k)| k.key_id == flush.key_id)
        {
            Some((_, key)) => key.restore(flush),
            None => lock(&self.orphaned_credits).push(flush.clone()),
        }
    }

    fn insert_locked(&self, writer: &mut WriterSide, hash: &KeyHash, key: &IndexedKey) {
        if let Some(i) = writer.ids.get(&key.key_id) {
            let maps = self.maps.load();
            let i = i as usize;
            let old = maps.table.slot(i).read();
            if old.hash == *hash.as_bytes() && old.home == key.home {
                // The same key again (a key-list row, then its event): in place,
                // so its uses stay.
                maps.interned.forget_key(old.tenant);
                let data = writer.entry(&maps.interned, hash, key, 1);
                maps.table.update(i, |d| *d = data);
                return;
            }
            self.delete_slot(writer, &maps, i);
        }
        self.add_new(writer, hash, key, IdOrder::Sorted);
    }

    /// Puts a key not in the index into a free slot, growing the table first
    /// when it is full.
    fn add_new(&self, writer: &mut WriterSide, hash: &KeyHash, key: &IndexedKey, order: IdOrder) {
        let mut maps = self.maps.load();
        if !maps.table.has_room(writer.used) {
            drop(maps);
            self.grow(writer);
            maps = self.maps.load();
        }
        let data = writer.entry(&maps.interned, hash, key, 1);
        let Some(i) = maps.table.insert(&data) else {
            // `has_room` held, so a free slot exists; this is unreachable.
            tracing::error!("verification index full; key not indexed");
            maps.interned.forget_key(data.tenant);
            return;
        };
        match order {
            IdOrder::Sorted => writer.ids.insert(&key.key_id, index_u32(i)),
            IdOrder::Any => writer.ids.insert_unordered(&key.key_id, index_u32(i)),
        }
        writer.used += 1;
        self.live.fetch_add(1, Ordering::Relaxed);
    }

    /// Leaves a tombstone in slot `i`; its uses stay there for the next drain.
    /// Takes the writer's tables to show the writer lock is held.
    fn delete_slot(&self, _writer: &mut WriterSide, maps: &Maps, i: usize) {
        let data = maps.table.update(i, |d| d.set_state(DELETED));
        maps.interned.forget_key(data.tenant);
        self.live.fetch_sub(1, Ordering::Relaxed);
    }

    /// Moves the keys into a table sized for them (tombstones stay behind).
    fn grow(&self, writer: &mut WriterSide) {
        let old = self.maps.load_full();
        let live = self.len();
        let new = Maps::new(SlotTable::capacity_for(live), old.interned.clone());
        let mut ids = IdTable::with_capacity(live);
        let mut used = 0;
        for slot in old.table.used_slots() {
            let data = slot.read();
            if data.state() != LIVE {
                continue;
            }
            if let Some(j) = new.table.insert(&data) {
                ids.insert_unordered(&old.key_id(&data), index_u32(j));
                used += 1;
            }
        }
        writer.ids = ids;
        writer.used = used;
        let new = Arc::new(new);
        self.maps.store(new.clone());
        self.hand_over(&old, &new);
    }

    /// How many keys `tenant` holds (deleted keys leave the index, so this is
    /// the key list's count, without a query).
    pub fn tenant_keys(&self, tenant: &str) -> u64 {
        let maps = self.maps.load();
        let counts = lock(&maps.interned.tenant_keys);
        counts.get(tenant).copied().unwrap_or(0)
    }

    /// Sets the checkpoint after a bulk load.
    pub fn set_checkpoint(&self, position: i64) {
        self.checkpoint.store(position, Ordering::Release);
    }

    /// Answers a verification and hands the answer to `answer`. A malformed
    /// key or one failing its checksum is `NOT_FOUND` without any lookup.
    /// Counts a use when the answer is `VALID`, and a refusal by its outcome
    /// when the key exists but is refused.
    /// A key with usage limits that needs a share of a window or a block of
    /// credits first answers `Err(Need)`: the caller reserves it and asks
    /// again (nothing was counted).
    pub fn verify<R>(
        &self,
        req: VerifyRequest<'_>,
        now: DateTime<Utc>,
        answer: impl FnOnce(Verification<'_>) -> R,
    ) -> Result<R, Need> {
        let not_found = Verification {
            code: VerificationCode::NotFound,
            key: None,
            limits: None,
        };
        let maps = self.maps.load();
        let found = match display_body_of_key(req.key) {
            Some(body) => {
                let home = home_of(body);
                // The slot's memory is on its way while the key is checked
                // and hashed. A key of the right length that fails its
                // checksum pays for the tag scan too, a few nanoseconds; it
                // never waits for the prefetch.
                let first = maps.table.touch(home);
                match ParsedKey::parse(req.key) {
                    Ok(parsed) => maps.table.find_from(first, home, parsed.hash().as_bytes()),
                    Err(_) => self.find_imported(&maps, req.key),
                }
            }
            None => self.find_imported(&maps, req.key),
        };
        let Some((i, data)) = found else {
            return Ok(answer(not_found));
        };
        let key = VerifiedKey { data, maps: &maps };
        let grant = maps.interned.grant(data.grant);
        let mut report = None;
        let mut from_tokens = None;
        let now_ms = now.timestamp_millis();
        let code = if !key.active() {
            VerificationCode::Disabled
        } else if data.has(EXPIRES) && data.expires_us <= now.timestamp_micros() {
            VerificationCode::Expired
        } else if !ip_allowed(&grant.allowed_ips, req.ip) {
            VerificationCode::IpNotAllowed
        } else if req.environment.is_some_and(|env| env != key.environment()) {
            VerificationCode::WrongEnvironment
        } else if !grant.permissions.grants_all(req.permissions) {
            VerificationCode::InsufficientPermissions
        } else if data.has(LIMITED) && tokens::spend(maps.table.slot(i).tokens(), now_ms, req.cost)
        {
            // Paid from the key's tokens, in its slot: the limiter stays cold.
            from_tokens = Some(AnswerLimitsOf::Tokens {
                maps: &maps,
                limiter: data.limiter(),
                slot: index_u32(i),
                now_ms,
                owners: &self.owners,
            });
            self.count_use(&maps, i, &data, now)
        } else if let Some(limited) = data
            .has(LIMITED)
            .then(|| maps.interned.limited.get(data.limiter() as usize))
            .flatten()
        {
            let at = TokenSlot {
                table: &**maps,
                slot: index_u32(i),
            };
            match limited.check(now, req.cost, &self.owners, &self.ahead, at) {
                Checked::Need(need) => return Err(need),
                Checked::RateLimited(r) => {
                    report = Some(r);
                    VerificationCode::RateLimited
                }
                Checked::UsageExceeded(r) => {
                    report = Some(r);
                    VerificationCode::UsageExceeded
                }
                Checked::Admit(r) => {
                    report = Some(r);
                    self.count_use(&maps, i, &data, now)
                }
            }
        } else {
            self.count_use(&maps, i, &data, now)
        };
        if let Some(refusal) = code.refusal() {
            let mut buf = KeyIdText::default();
            self.refusals
                .count(key.key_id(&mut buf), key.tenant(), refusal, now_ms);
        }
        let limits = from_tokens
            .or(report.as_ref().map(AnswerLimitsOf::Decided))
            .map(AnswerLimits);
        Ok(answer(Verification {
            code,
            key: Some(key),
            limits,
        }))
    }

    /// The slot of an imported key: `key` carries one of the configured
    /// import prefixes and is of a bounded length, so it is hashed whole and
    /// looked up where imported keys are placed (by that hash). Every other
    /// string that is not in keyledger's format is refused without a lookup.
    fn find_imported(&self, maps: &Maps, key: &str) -> Option<(usize, SlotData)> {
        let prefixes = self.import_prefixes.get()?;
        if key.len() > MAX_IMPORTED_KEY_LEN || !prefixes.iter().any(|p| key.starts_with(&**p)) {
            return None;
        }
        let hash = KeyHash::of(key);
        maps.table.find(home_of_hash(&hash), hash.as_bytes())
    }

    /// Names the prefixes of keys issued by other systems (`serve
    /// --import-prefix`), looked up although they are not in keyledger's
    /// format. Set once, at start; a second call changes nothing.
    pub fn set_import_prefixes(&self, prefixes: Vec<String>) {
        let prefixes: Vec<Box<str>> = prefixes
            .into_iter()
            .filter(|p| !p.is_empty())
            .map(String::into_boxed_str)
            .collect();
        if !prefixes.is_empty() {
            let _ = self.import_prefixes.set(prefixes.into_boxed_slice());
        }
    }

    /// The id and tenant of the key `raw` is, if this index holds it (a live
    /// key, active or not), without counting a use: for leak reports.
    pub fn owner_of(&self, raw: &str) -> Option<(String, String)> {
        let body = display_body_of_key(raw)?;
        let parsed = ParsedKey::parse(raw).ok()?;
        let maps = self.maps.load();
        let (_, data) = maps.table.find(home_of(body), parsed.hash().as_bytes())?;
        let key = VerifiedKey { data, maps: &maps };
        let mut buf = KeyIdText::default();
        Some((key.key_id(&mut buf).to_string(), key.tenant().to_string()))
    }

    /// Counts a `VALID` answer's use in the key's slot.
    fn count_use(
        &self,
        maps: &Maps,
        i: usize,
        data: &SlotData,
        now: DateTime<Utc>,
    ) -> VerificationCode {
        {
            let slot = maps.table.slot(i);
            slot.add_uses(1, now.timestamp_millis());
            if maps.retired.load(Ordering::SeqCst) {
                self.rehome(maps, slot, data);
            }
            VerificationCode::Valid
        }
    }

    /// Moves uses counted in a retired generation's slot to the key's slot in
    /// the current one (or to the orphans when the key is gone), following
    /// further replacements.
    fn rehome(&self, retired: &Maps, from: &Slot, data: &SlotData) {
        let (mut count, mut at) = from.take_uses();
        let mut previous: *const Maps = retired;
        while count > 0 {
            let current = self.maps.load_full();
            let found = if std::ptr::eq(previous, Arc::as_ptr(&current)) {
                None
            } else {
                current.table.find(data.home, &data.hash)
            };
            let Some((j, _)) = found else {
                lock(&self.orphaned).push(retired.drained(data, count, at));
                return;
            };
            let to = current.table.slot(j);
            to.add_uses(count, at);
            if !current.retired.load(Ordering::SeqCst) {
                return;
            }
            (count, at) = to.take_uses();
            previous = Arc::as_ptr(&current);
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
                    &c.display_prefix,
                    &c.tenant,
                    &c.name,
                    c.environment,
                    c.permissions.clone(),
                    c.expires_at,
                    true,
                )
                .with_allowed_ips(c.allowed_ips.clone())
                .placed_by_hash_if(c.imported, &c.key_hash)
                .with_limits(LimitSpec {
                    owner: c.owner.clone(),
                    ratelimits: c.ratelimits.clone(),
                    ledger: c
                        .credits
                        .as_ref()
                        .map(|credits| Ledger::opening(credits, c.created_at)),
                }),
            ),
            KeyledgerEvent::Key(ApiKeyEvent::KeyUpdated(u)) => {
                self.update(&event.key_id, |writer, interned, d| {
                    if let Some(name) = &u.name {
                        set_name(d, interned, name);
                    }
                    if u.permissions.is_some() || u.allowed_ips.is_some() {
                        let was = interned.grant(d.grant);
                        let permissions = match &u.permissions {
                            Some(p) => Arc::new(p.clone()),
                            None => was.permissions.clone(),
                        };
                        let allowed_ips = u.allowed_ips.as_ref().unwrap_or(&was.allowed_ips);
                        d.grant = writer.grant(interned, &permissions, allowed_ips);
                    }
                    if let Some(exp) = u.expires_at {
                        set_expiry(d, exp);
                    }
                });
                if u.owner.is_some() || u.ratelimits.is_some() {
                    self.with_limits(&event.key_id, |k, maps| {
                        k.configure(
                            u.owner.as_ref().map(|o| o.as_deref()),
                            u.ratelimits.as_deref(),
                            maps,
                        );
                    });
                }
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyDeactivated(_)) => {
                self.update(&event.key_id, |_, _, d| d.set(ACTIVE, false));
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyReactivated(_)) => {
                self.update(&event.key_id, |_, _, d| d.set(ACTIVE, true));
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyExpirySet(x)) => {
                self.update(&event.key_id, |_, _, d| set_expiry(d, Some(x.expires_at)));
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyDeleted(_)) => {
                let mut writer = self.writer();
                if let Some(i) = writer.ids.remove(&KeyId::new(&event.key_id)) {
                    let maps = self.maps.load();
                    self.delete_slot(&mut writer, &maps, i as usize);
                }
            }
            KeyledgerEvent::Usage(usage) => {
                if let Some(ledger) = usage.ledger() {
                    let known = self.limited_key(&event.key_id).is_some();
                    if known || ledger.limited {
                        self.with_limits(&event.key_id, |k, maps| {
                            k.see_ledger(Some(ledger.clone()), event.sequence, maps);
                        });
                    }
                }
            }
            KeyledgerEvent::Owner(OwnerEvent::OwnerRateLimitsSet(o)) => {
                self.owners
                    .set(&event.key_id, event.sequence, o.ratelimits.clone());
            }
            KeyledgerEvent::Key(ApiKeyEvent::KeyExpiryNoticed(_))
            | KeyledgerEvent::Key(ApiKeyEvent::KeyLeakReported(_))
            | KeyledgerEvent::Webhook(_)
            | KeyledgerEvent::Policy(_) => {}
        }
        self.checkpoint.store(event.position, Ordering::Release);
    }

    /// Moves the checkpoint over positions that carry nothing for this index.
    pub fn advance_to(&self, position: i64) {
        self.checkpoint.fetch_max(position, Ordering::AcqRel);
    }

    /// Rewrites a key's entry in place with `f`; its uses stay in its slot.
    fn update(&self, key_id: &str, f: impl FnOnce(&mut WriterSide, &Interned, &mut SlotData)) {
        let mut writer = self.writer();
        let Some(i) = writer.ids.get(&KeyId::new(key_id)) else {
            return;
        };
        let maps = self.maps.load();
        let mut data = maps.table.slot(i as usize).read();
        f(&mut writer, &maps.interned, &mut data);
        maps.table.update(i as usize, |d| *d = data);
    }

    /// Takes every pending use out of the counters (removed keys' included).
    pub fn drain_usage(&self) -> Vec<DrainedUsage> {
        let mut drained = std::mem::take(&mut *lock(&self.orphaned));
        let maps = self.maps.load();
        for slot in maps.table.used_slots() {
            let (count, at) = slot.take_uses();
            if count > 0 {
                drained.push(maps.drained(&slot.read(), count, at));
            }
        }
        drained
    }

    /// Takes every refusal counted since the last drain out of the counters.
    pub fn drain_refusals(&self) -> Vec<DrainedRefusals> {
        self.refusals.drain()
    }

    /// Puts back refusals whose flush failed.
    pub fn restore_refusals(&self, refusals: &DrainedRefusals) {
        self.refusals.restore(refusals);
    }

    /// Puts back uses whose flush failed, so they go out with the next one.
    pub fn restore_usage(&self, usage: &DrainedUsage) {
        let mut writer = self.writer();
        // Under the writer lock no table replaces the current one meanwhile.
        match writer.ids.get(&KeyId::new(&usage.key_id)) {
            Some(i) => self
                .maps
                .load()
                .table
                .slot(i as usize)
                .add_uses(usage.count, usage.last_used_at.timestamp_millis()),
            None => lock(&self.orphaned).push(usage.clone()),
        }
    }
}

/// A limited key, held by the index generation that names it.
pub struct LimitedRef {
    interned: Arc<Interned>,
    index: u32,
}

impl LimitedRef {
    fn new(interned: Arc<Interned>, index: u32) -> Option<Self> {
        interned.limited.get(index as usize)?;
        Some(Self { interned, index })
    }
}

impl std::ops::Deref for LimitedRef {
    type Target = LimitedKey;

    fn deref(&self) -> &LimitedKey {
        // Checked in `new`, and the arena only grows.
        match self.interned.limited.get(self.index as usize) {
            Some(k) => k,
            None => unreachable!("a limiter index checked when the reference was made"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyledger_domain::{KeyPrefix, RawKey};
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    const KEY_ID: &str = "key_019a4f3c2b7e7c1d8e9f0a1b2c3d4e5f";

    fn raw_key(seed: u64) -> RawKey {
        RawKey::generate(
            &KeyPrefix::default(),
            Environment::Live,
            &mut StdRng::seed_from_u64(seed),
        )
    }

    fn key(id: &str, raw: &RawKey, name: &str) -> IndexedKey {
        IndexedKey::new(
            id,
            &raw.parsed().display_prefix(),
            "acme",
            name,
            Environment::Live,
            Permissions::parse(vec!["a:read".into()]).expect("valid"),
            None,
            true,
        )
    }

    fn verify_code(index: &VerificationIndex, raw: &RawKey) -> VerificationCode {
        index
            .verify(
                VerifyRequest {
                    key: raw.expose(),
                    environment: None,
                    permissions: &[],
                    cost: 1,
                    ip: None,
                },
                Utc::now(),
                |v| v.code,
            )
            .expect("a plain key needs nothing reserved")
    }

    /// Key `key_id`'s deactivation, at position 1.
    fn deactivated(key_id: &str) -> RecordedEvent {
        event(
            1,
            key_id,
            ApiKeyEvent::KeyDeactivated(keyledger_domain::KeyDeactivated {
                reason: None,
                at: Utc::now(),
            }),
        )
    }

    fn event(position: i64, key_id: &str, event: ApiKeyEvent) -> RecordedEvent {
        RecordedEvent {
            position,
            key_id: key_id.to_string(),
            sequence: 2,
            meta: crate::event::EventMeta {
                tenant: "acme".to_string(),
                actor: None,
                request_id: None,
                client_addr: None,
                user_agent: None,
                occurred_at: Utc::now(),
            },
            event: KeyledgerEvent::Key(event),
            hash: String::new(),
        }
    }

    fn drained_count(index: &VerificationIndex) -> u64 {
        index.drain_usage().iter().map(|u| u.count).sum()
    }

    /// What the store does for one limited key: hands out window shares of
    /// one window (at most `limit` in all) and blocks of credits from one
    /// ledger, as reservations do.
    struct FakeStore {
        limit: u64,
        window_taken: u64,
        ledger: Ledger,
        sequence: i64,
    }

    impl FakeStore {
        fn provide(&mut self, index: &VerificationIndex, need: Need) {
            match need {
                Need::Window(w) => {
                    let granted = w.want.min(self.limit - self.window_taken);
                    self.window_taken += granted;
                    index.grant_window(&w, granted, self.window_taken);
                }
                Need::Credits {
                    key_id,
                    need,
                    block,
                } => {
                    let granted = self.ledger.grant_for(need, block);
                    self.ledger.reserve(granted);
                    self.sequence += 1;
                    if granted > 0 {
                        index.grant_credits(&key_id, granted, self.ledger.clone(), self.sequence);
                    } else {
                        index.see_ledger(&key_id, self.ledger.clone(), self.sequence);
                    }
                }
                Need::Owner { .. } => panic!("the key has no owner"),
            }
        }
    }

    fn limited_key(raw: &RawKey, limit: u64, credits: u64, at: DateTime<Utc>) -> IndexedKey {
        key(KEY_ID, raw, "metered").with_limits(LimitSpec {
            owner: None,
            ratelimits: vec![RateLimit {
                name: "per-minute".into(),
                limit,
                window_ms: 60_000,
            }],
            ledger: Some(Ledger::opening(
                &keyledger_domain::Credits {
                    remaining: credits,
                    refill: None,
                },
                at,
            )),
        })
    }

    /// Admissions paid from tokens in the slot and admissions decided under
    /// the limiter's lock add up exactly to what the store handed out, while
    /// the table grows and the index is reloaded under the verifications,
    /// and every credit spent is reported once.
    fn tokens_stay_exact(limit: u64, credits: u64, expected_valid: u64) {
        // The start of a minute, so the window does not end during the test.
        let now = DateTime::from_timestamp_millis(1_800_000_000_000).expect("time");
        let raw = raw_key(40);
        let index = VerificationIndex::new();
        index.insert(raw.hash(), limited_key(&raw, limit, credits, now));
        let store = Mutex::new(FakeStore {
            limit,
            window_taken: 0,
            ledger: Ledger::opening(
                &keyledger_domain::Credits {
                    remaining: credits,
                    refill: None,
                },
                now,
            ),
            sequence: 0,
        });
        let cost = 2;
        let attempts = (limit.max(credits / cost) + 50) as usize;
        let (valid, refused) = std::thread::scope(|scope| {
            let verifiers: Vec<_> = (0..3)
                .map(|_| {
                    scope.spawn(|| {
                        let (mut valid, mut refused) = (0u64, 0u64);
                        for _ in 0..attempts {
                            loop {
                                let request = VerifyRequest {
                                    key: raw.expose(),
                                    environment: None,
                                    permissions: &[],
                                    cost,
                                    ip: None,
                                };
                                match index.verify(request, now, |a| a.code) {
                                    Ok(VerificationCode::Valid) => valid += 1,
                                    Ok(VerificationCode::RateLimited)
                                    | Ok(VerificationCode::UsageExceeded) => refused += 1,
                                    Ok(other) => panic!("unexpected {other:?}"),
                                    Err(need) => {
                                        lock(&store).provide(&index, need);
                                        continue;
                                    }
                                }
                                break;
                            }
                        }
                        (valid, refused)
                    })
                })
                .collect();
            // Meanwhile: plain keys enough to grow the table several times,
            // and a reload that takes the limiter's state over.
            for n in 0..3_000u64 {
                let other = raw_key(1_000 + n);
                index.insert(other.hash(), key(&format!("key_{n}"), &other, "plain"));
                if n == 1_500 {
                    let fresh = VerificationIndex::new();
                    fresh.insert(raw.hash(), limited_key(&raw, limit, credits, now));
                    index.replace_with(fresh);
                }
            }
            verifiers
                .into_iter()
                .map(|v| v.join().expect("verifier"))
                .fold((0, 0), |(a, b), (c, d)| (a + c, b + d))
        });
        assert_eq!(valid, expected_valid, "{refused} refused");
        let spent: u64 = index.drain_limits().iter().map(|f| f.spent).sum();
        assert_eq!(spent, valid * cost, "every spend reported once");
        let window = lock(&store).window_taken;
        assert!(valid <= window, "{valid} admitted of {window} handed out");
    }

    #[test]
    fn a_rate_limit_admits_exactly_its_limit_through_tokens_growth_and_reload() {
        tokens_stay_exact(700, 1_000_000, 700);
    }

    #[test]
    fn credits_are_spent_exactly_through_tokens_growth_and_reload() {
        tokens_stay_exact(1_000_000, 1_200, 600);
    }

    #[test]
    fn a_key_is_answered_from_its_slot_with_everything_the_answer_needs() {
        let index = VerificationIndex::new();
        let raw = raw_key(1);
        let long_name = "a name longer than the thirty-two bytes a slot holds";
        index.insert(raw.hash(), key("legacy-id", &raw, long_name));
        let (code, id, tenant, name, perms) = index
            .verify(
                VerifyRequest {
                    key: raw.expose(),
                    environment: Some(Environment::Live),
                    permissions: &["a:read".to_string()],
                    cost: 1,
                    ip: None,
                },
                Utc::now(),
                |v| {
                    let k = v.key.expect("found");
                    let mut buf = KeyIdText::default();
                    (
                        v.code,
                        k.key_id(&mut buf).to_string(),
                        k.tenant().to_string(),
                        k.name().to_string(),
                        k.permissions().as_slice().to_vec(),
                    )
                },
            )
            .expect("a plain key needs nothing reserved");
        assert_eq!(code, VerificationCode::Valid);
        assert_eq!(id, "legacy-id");
        assert_eq!(tenant, "acme");
        assert_eq!(name, long_name);
        assert_eq!(perms, vec!["a:read".to_string()]);
        assert_eq!(verify_code(&index, &raw_key(2)), VerificationCode::NotFound);
    }

    #[test]
    fn changes_are_written_in_place_and_keep_uses() {
        let index = VerificationIndex::new();
        let raw = raw_key(3);
        index.insert(raw.hash(), key(KEY_ID, &raw, "billing"));
        assert_eq!(verify_code(&index, &raw), VerificationCode::Valid);
        index.apply(&deactivated(KEY_ID));
        assert_eq!(verify_code(&index, &raw), VerificationCode::Disabled);
        index.apply(&event(
            2,
            KEY_ID,
            ApiKeyEvent::KeyReactivated(keyledger_domain::KeyReactivated { at: Utc::now() }),
        ));
        assert_eq!(verify_code(&index, &raw), VerificationCode::Valid);
        let drained = index.drain_usage();
        assert_eq!(drained.len(), 1);
        assert_eq!(drained[0].count, 2);
        assert_eq!(drained[0].key_id, KEY_ID);
        assert_eq!(drained_count(&index), 0, "drained once");
    }

    #[test]
    fn uses_of_a_deleted_key_are_drained_and_a_failed_flush_keeps_them() {
        let index = VerificationIndex::new();
        let raw = raw_key(4);
        index.insert(raw.hash(), key(KEY_ID, &raw, "billing"));
        assert_eq!(verify_code(&index, &raw), VerificationCode::Valid);
        assert_eq!(index.tenant_keys("acme"), 1);
        index.apply(&event(
            1,
            KEY_ID,
            ApiKeyEvent::KeyDeleted(keyledger_domain::KeyDeleted { at: Utc::now() }),
        ));
        assert_eq!(verify_code(&index, &raw), VerificationCode::NotFound);
        assert_eq!(index.tenant_keys("acme"), 0);
        assert_eq!(index.len(), 0);
        let drained = index.drain_usage();
        assert_eq!(drained.len(), 1);
        assert_eq!(drained[0].count, 1);
        // A failed flush puts them back; the key is gone, so they are orphans.
        index.restore_usage(&drained[0]);
        assert_eq!(drained_count(&index), 1);
    }

    #[test]
    fn growing_keeps_every_key_and_every_use() {
        let index = VerificationIndex::new();
        let first = raw_key(10);
        index.insert(first.hash(), key(KEY_ID, &first, "first"));
        assert_eq!(verify_code(&index, &first), VerificationCode::Valid);
        let capacity = index.maps.load().table.capacity();
        let raws: Vec<RawKey> = (0..200).map(|n| raw_key(100 + n)).collect();
        for (n, raw) in raws.iter().enumerate() {
            index.insert(raw.hash(), key(&format!("key_{n}"), raw, "k"));
        }
        assert!(index.maps.load().table.capacity() > capacity, "grew");
        assert_eq!(index.len(), 201);
        assert_eq!(index.tenant_keys("acme"), 201);
        for raw in &raws {
            assert_eq!(verify_code(&index, raw), VerificationCode::Valid);
        }
        assert_eq!(drained_count(&index), 201, "the use before growth moved");
    }

    #[test]
    fn a_use_counted_on_a_retired_generation_is_moved_not_lost() {
        let index = VerificationIndex::new();
        let raw = raw_key(5);
        index.insert(raw.hash(), key(KEY_ID, &raw, "billing"));
        // A verification holds the old generation while a reload replaces it...
        let old = index.maps.load_full();
        let (i, data) = old
            .table
            .find(data_home(&raw), raw.hash().as_bytes())
            .expect("indexed");
        let fresh = VerificationIndex::new();
        fresh.insert(raw.hash(), key(KEY_ID, &raw, "billing"));
        index.replace_with(fresh);
        // ...and counts on it afterwards, as `verify` does.
        old.table.slot(i).add_uses(1, 2_000);
        assert!(old.retired.load(Ordering::SeqCst));
        index.rehome(&old, old.table.slot(i), &data);
        let drained = index.drain_usage();
        assert_eq!(drained.len(), 1);
        assert_eq!(drained[0].count, 1);
        assert_eq!(drained[0].last_used_at.timestamp_millis(), 2_000);
    }

    fn data_home(raw: &RawKey) -> u64 {
        home_of(display_body_of_key(raw.expose()).expect("a key"))
    }

    #[test]
    fn a_reloaded_generation_keeps_unflushed_uses_and_orphans_gone_keys() {
        let index = VerificationIndex::new();
        let (kept, gone) = (raw_key(6), raw_key(7));
        index.insert(kept.hash(), key(KEY_ID, &kept, "kept"));
        index.insert(gone.hash(), key("key_gone", &gone, "gone"));
        for _ in 0..3 {
            verify_code(&index, &kept);
            verify_code(&index, &gone);
        }
        let fresh = VerificationIndex::new();
        fresh.insert(kept.hash(), key(KEY_ID, &kept, "kept"));
        index.replace_with(fresh);
        assert_eq!(verify_code(&index, &gone), VerificationCode::NotFound);
        let mut drained = index.drain_usage();
        drained.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        assert_eq!(drained.len(), 2);
        assert_eq!((drained[0].key_id.as_str(), drained[0].count), (KEY_ID, 3));
        assert_eq!(
            (drained[1].key_id.as_str(), drained[1].count),
            ("key_gone", 3)
        );
    }

    #[test]
    fn an_index_loaded_four_fifths_full_grows_only_past_seven_eighths() {
        let index = VerificationIndex::with_capacity(400);
        let capacity = index.maps.load().table.capacity();
        assert_eq!(capacity, SlotTable::capacity_to_load(400));
        let raws: Vec<RawKey> = (0..500).map(|n| raw_key(1_000 + n)).collect();
        let limit = capacity * slots::MAX_LOAD_EIGHTHS / 8;
        for (n, raw) in raws.iter().enumerate() {
            index.load_row(raw.hash(), key(&format!("key_{n:032x}"), raw, "k"));
            let now = index.maps.load().table.capacity();
            if n < limit {
                assert_eq!(now, capacity, "key {n} fits the loaded table");
            } else {
                assert!(now > capacity, "key {n} grew the table");
            }
        }
        assert_eq!(index.len(), 500);
        for raw in &raws {
            assert_eq!(verify_code(&index, raw), VerificationCode::Valid);
        }
        // The ids found their slots again in the grown table.
        index.apply(&deactivated(&format!("key_{:032x}", 450)));
        assert_eq!(verify_code(&index, &raws[450]), VerificationCode::Disabled);
        assert_eq!(verify_code(&index, &raws[449]), VerificationCode::Valid);
    }

    #[test]
    fn rows_loaded_in_any_order_are_found_by_id_afterwards() {
        let index = VerificationIndex::with_capacity(100);
        let raws: Vec<RawKey> = (0..100).map(|n| raw_key(300 + n)).collect();
        for (n, raw) in raws.iter().enumerate().rev() {
            index.load_row(raw.hash(), key(&format!("key_{n:032x}"), raw, "k"));
        }
        assert_eq!(index.len(), 100);
        assert_eq!(index.tenant_keys("acme"), 100);
        index.apply(&deactivated(&format!("key_{:032x}", 42)));
        assert_eq!(verify_code(&index, &raws[42]), VerificationCode::Disabled);
        assert_eq!(verify_code(&index, &raws[41]), VerificationCode::Valid);
    }

    fn code_from(
        index: &VerificationIndex,
        key: &str,
        permissions: &[String],
        ip: Option<&str>,
    ) -> VerificationCode {
        index
            .verify(
                VerifyRequest {
                    key,
                    environment: None,
                    permissions,
                    cost: 1,
                    ip: ip.map(|ip| ip.parse().expect("address")),
                },
                Utc::now(),
                |v| v.code,
            )
            .expect("a plain key needs nothing reserved")
    }

    fn ips(list: &[&str]) -> AllowedIps {
        AllowedIps::parse(list.iter().map(|s| s.to_string()).collect()).expect("valid")
    }

    #[test]
    fn an_address_outside_a_keys_ranges_is_refused_before_its_other_checks() {
        let index = VerificationIndex::new();
        let raw = raw_key(3);
        index.insert(
            raw.hash(),
            key(KEY_ID, &raw, "pinned").with_allowed_ips(ips(&["10.0.0.0/8", "2001:db8::/32"])),
        );
        let read = ["a:read".to_string()];
        let write = ["a:write".to_string()];
        let key = raw.expose();
        assert_eq!(
            code_from(&index, key, &read, Some("10.2.3.4")),
            VerificationCode::Valid
        );
        assert_eq!(
            code_from(&index, key, &read, Some("2001:db8::9")),
            VerificationCode::Valid
        );
        assert_eq!(
            code_from(&index, key, &read, Some("::ffff:10.2.3.4")),
            VerificationCode::Valid
        );
        assert_eq!(
            code_from(&index, key, &read, None),
            VerificationCode::IpNotAllowed
        );
        assert_eq!(
            code_from(&index, key, &write, Some("11.0.0.1")),
            VerificationCode::IpNotAllowed,
            "the address first: the permissions of a key are not told to a stranger"
        );
        assert_eq!(
            code_from(&index, key, &write, Some("10.0.0.1")),
            VerificationCode::InsufficientPermissions
        );
        // A permissions change keeps the ranges; a ranges change keeps the
        // permissions; the two share one index in the slot.
        let update = |position, u: keyledger_domain::KeyUpdated| {
            index.apply(&event(position, KEY_ID, ApiKeyEvent::KeyUpdated(u)));
        };
        update(
            1,
            keyledger_domain::KeyUpdated {
                permissions: Some(Permissions::parse(vec!["a:write".into()]).expect("valid")),
                updated_at: Utc::now(),
                ..Default::default()
            },
        );
        assert_eq!(
            code_from(&index, key, &write, Some("11.0.0.1")),
            VerificationCode::IpNotAllowed
        );
        assert_eq!(
            code_from(&index, key, &write, Some("10.0.0.1")),
            VerificationCode::Valid
        );
        update(
            2,
            keyledger_domain::KeyUpdated {
                allowed_ips: Some(AllowedIps::default()),
                updated_at: Utc::now(),
                ..Default::default()
            },
        );
        assert_eq!(
            code_from(&index, key, &write, None),
            VerificationCode::Valid
        );
        assert_eq!(
            code_from(&index, key, &read, None),
            VerificationCode::InsufficientPermissions
        );
        // The refusals were counted for the key.
        let refused = index.drain_refusals();
        let total: u64 = refused.iter().map(|r| r.refused.ip_not_allowed).sum();
        assert_eq!(total, 3, "{refused:?}");
    }

    #[test]
    fn an_imported_key_is_found_by_its_hash_only_with_an_import_prefix() {
        let index = VerificationIndex::new();
        let foreign = "sk_live_4eC39HqLyjWDarjtT1zdp7dc";
        let hash = KeyHash::of(foreign);
        index.insert(
            hash,
            IndexedKey::new(
                KEY_ID,
                "sk_live_4eC3",
                "acme",
                "legacy",
                Environment::Live,
                Permissions::default(),
                None,
                true,
            )
            .placed_by_hash(&hash),
        );
        // Not looked up until the prefix is named.
        assert_eq!(
            code_from(&index, foreign, &[], None),
            VerificationCode::NotFound
        );
        index.set_import_prefixes(vec!["sk_live_".into(), String::new()]);
        assert_eq!(
            code_from(&index, foreign, &[], None),
            VerificationCode::Valid
        );
        assert_eq!(
            code_from(&index, &format!("{foreign}x"), &[], None),
            VerificationCode::NotFound
        );
        // Growing the table places it again by the same (hash) home.
        for n in 0..200 {
            let raw = raw_key(5000 + n);
            index.insert(raw.hash(), key(&format!("key_{n}"), &raw, "k"));
        }
        assert_eq!(
            code_from(&index, foreign, &[], None),
            VerificationCode::Valid
        );
        // Keyledger keys are unaffected by the prefixes.
        let raw = raw_key(5001);
        assert_eq!(verify_code(&index, &raw), VerificationCode::Valid);
    }

    proptest::proptest! {
        /// The verdict through the index never depends on the order the
        /// ranges were given in.
        #[test]
        fn a_verdict_through_the_index_never_depends_on_the_order_of_the_ranges(
            nets in proptest::collection::vec((0u8..=255, 0u8..=255, 8u8..=32), 1..8),
            probe in (0u8..=255, 0u8..=255, 0u8..=255),
            rotate in 0usize..8,
        ) {
            let ranges: Vec<String> = nets
                .iter()
                .map(|(a, b, len)| {
                    let ip = (u32::from(*a) << 24) | (u32::from(*b) << 16);
                    let network = ip & (u32::MAX << (32 - u32::from(*len)));
                    format!("{}/{len}", std::net::Ipv4Addr::from(network))
                })
                .collect();
            let mut turned = ranges.clone();
            turned.rotate_left(rotate % ranges.len());
            turned.reverse();
            let probe = format!("{}.{}.{}.7", nets[0].0, probe.1, probe.2);
            let other = format!("{}.{}.{}.7", probe.len(), nets[0].1, probe.len());
            let verdicts: Vec<(VerificationCode, VerificationCode)> = [ranges, turned]
                .into_iter()
                .map(|list| {
                    let index = VerificationIndex::new();
                    let raw = raw_key(77);
                    let allowed = AllowedIps::parse(list).expect("valid");
                    index.insert(raw.hash(), key(KEY_ID, &raw, "k").with_allowed_ips(allowed));
                    (
                        code_from(&index, raw.expose(), &[], Some(&probe)),
                        code_from(&index, raw.expose(), &[], Some(&other)),
                    )
                })
                .collect();
            proptest::prop_assert_eq!(verdicts[0], verdicts[1]);
        }
    }

    #[test]
    fn keys_share_tenant_and_permission_sets() {
        let index = VerificationIndex::with_capacity(2);
        let (a, b) = (raw_key(8), raw_key(9));
        index.insert(a.hash(), key(KEY_ID, &a, "a"));
        index.insert(b.hash(), key("key_held", &b, "b"));
        let maps = index.maps.load();
        assert_eq!(maps.interned.tenants.count(), 1);
        assert_eq!(maps.interned.grants.count(), 1);
        assert_eq!(index.tenant_keys("acme"), 2);
        assert_eq!(index.tenant_keys("globex"), 0);
    }

    #[test]
    fn verifications_racing_a_writer_count_every_use() {
        let index = Arc::new(VerificationIndex::new());
        let raws: Arc<Vec<RawKey>> = Arc::new((0..50).map(|n| raw_key(1000 + n)).collect());
        for (n, raw) in raws.iter().enumerate() {
            index.insert(raw.hash(), key(&format!("key_{n}"), raw, "k"));
        }
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (index, raws) = (index.clone(), raws.clone());
                std::thread::spawn(move || {
                    let mut valid = 0u64;
                    for round in 0..20_000usize {
                        let raw = &raws[round % raws.len()];
                        if verify_code(&index, raw) == VerificationCode::Valid {
                            valid += 1;
                        }
                    }
                    valid
                })
            })
            .collect();
        // The writer renames keys, grows the table and reloads it meanwhile.
        for round in 0..300usize {
            let n = round % raws.len();
            index.apply(&event(
                i64::try_from(round + 1).expect("small"),
                &format!("key_{n}"),
                ApiKeyEvent::KeyUpdated(keyledger_domain::KeyUpdated {
                    name: Some(format!("renamed {round}")),
                    ..Default::default()
                }),
            ));
            let extra = raw_key(5000 + round as u64);
            index.insert(extra.hash(), key(&format!("extra_{round}"), &extra, "x"));
            if round % 100 == 99 {
                let fresh = VerificationIndex::new();
                for (m, raw) in raws.iter().enumerate() {
                    fresh.insert(raw.hash(), key(&format!("key_{m}"), raw, "k"));
                }
                index.replace_with(fresh);
            }
        }
        let valid: u64 = readers.into_iter().map(|r| r.join().expect("reader")).sum();
        assert_eq!(valid, 40_000, "every key stayed valid");
        assert_eq!(drained_count(&index), valid, "every use was counted once");
    }
}
