//! The table behind the verification index: each key's entry sits inline in
//! one 128-byte slot (two cache lines that the CPU fetches as a pair), placed
//! by the key's display body. A verification therefore costs one memory
//! access where a map of pointers to entries costs two dependent ones, and it
//! can start that access before the checksum and the SHA-256 are computed,
//! because the display body is read straight from the presented key. A random
//! read beyond the CPU caches costs about 190 ns on the machines we measure
//! on, more than the hash (BENCHMARKS.md), so the number of dependent accesses
//! is the cost, and hiding the one left behind the hash is the rest.
//!
//! One writer at a time (the index's writer lock) and any number of readers,
//! which never block it and never wait for each other: every slot is a
//! sequence lock. The writer makes the sequence odd, writes, and makes it even
//! again; a reader copies the slot and retries when the sequence moved under
//! it. Every field is an atomic word, so a torn copy is impossible to observe
//! and never needs `unsafe`.
//!
//! Linear probing from the home slot. Slots are never emptied and never reused
//! within a table: a deleted key leaves a tombstone holding its data until the
//! table is rebuilt (grown). So a lookup stops at the first empty slot, and the
//! key whose uses a slot counts never changes under a verification. Beside the
//! slots sits one tag byte per slot (7 bits of the key's home hash; 0 when
//! empty): 1.5 MB at a million keys, small enough to stay in the CPU caches,
//! so a probe reads slots only where the tag matches, an unknown key usually
//! costs no slot read at all, and the slot a key most likely sits in is known
//! (and prefetched) before its hash is. Tags come from the non-secret display
//! body: a caller who copies a key's body only earns one slot read and a
//! failed hash comparison.

use std::sync::atomic::{fence, AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};

/// Slot states (the low two bits of `flags`; 0 in a slot never written).
pub(super) const LIVE: u32 = 1;
pub(super) const DELETED: u32 = 2;
const STATE_MASK: u32 = 0b11;

/// The key is a test key (else live).
pub(super) const TEST_ENV: u32 = 1 << 2;
/// The key is active.
pub(super) const ACTIVE: u32 = 1 << 3;
/// `expires_us` holds an expiry.
pub(super) const EXPIRES: u32 = 1 << 4;
/// The id is not of the packed shape: `key_id` holds a text index.
pub(super) const TEXT_ID: u32 = 1 << 5;
/// The name is longer than [`NAME_INLINE`]: `name` holds a text index.
pub(super) const LONG_NAME: u32 = 1 << 6;
/// The key has usage limits: the last 4 bytes of `name` index its limiter
/// (`Interned::limited`), so an inline name has at most [`NAME_INLINE_LIMITED`]
/// bytes.
pub(super) const LIMITED: u32 = 1 << 7;
/// Bytes of a limited key's name held in the slot.
pub(super) const NAME_INLINE_LIMITED: usize = NAME_INLINE - 4;
/// Length of an inline name, bits 8..14.
const NAME_LEN_SHIFT: u32 = 8;
const NAME_LEN_MASK: u32 = 0x3f << NAME_LEN_SHIFT;
/// Bytes of a name held in the slot itself.
pub(super) const NAME_INLINE: usize = 24;

/// A table may hold at most this many used slots in 8 (live and tombstones):
/// beyond it probes grow long, so the index grows the table first. A
/// lookup scans tag bytes, not slots, so a long probe costs little: at 7/8
/// full an unknown key scans about 32 tags (half a cache line's worth of
/// lines, read in order) and a known one about 4, still one slot read.
pub(super) const MAX_LOAD_EIGHTHS: usize = 7;

/// One key's entry. `uses` and `last_used_ms` are counters that verifications
/// add to directly; everything else is written by the writer under the
/// sequence lock.
#[repr(C, align(128))]
#[derive(Debug, Default)]
pub(super) struct Slot {
    seq: AtomicU32,
    flags: AtomicU32,
    home: AtomicU64,
    hash: [AtomicU64; 4],
    key_id: [AtomicU64; 2],
    expires_us: AtomicI64,
    /// Tenant index (high half) and grant index (low half).
    shared: AtomicU64,
    name: [AtomicU64; NAME_INLINE / 8],
    /// A limited key's admission tokens (`tokens`), spent by verifications
    /// and filled by its limiter; never part of a [`SlotData`] copy.
    tokens: AtomicU64,
    uses: AtomicU64,
    last_used_ms: AtomicI64,
}

/// A copy of a slot's entry, taken under its sequence lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SlotData {
    pub flags: u32,
    /// The key's home hash (from its display body), to place it again on growth.
    pub home: u64,
    pub hash: [u8; 32],
    /// The packed id, or a text index in the first 4 bytes when `TEXT_ID`.
    pub key_id: [u8; 16],
    /// Microseconds since the epoch, when `EXPIRES`.
    pub expires_us: i64,
    pub tenant: u32,
    /// What the key may do and from where (`Interned::grants`).
    pub grant: u32,
    /// The name's bytes (its length in `flags`), or a text index in the first
    /// 4 bytes when `LONG_NAME`.
    pub name: [u8; NAME_INLINE],
}

impl SlotData {
    pub fn state(&self) -> u32 {
        self.flags & STATE_MASK
    }

    pub fn has(&self, flag: u32) -> bool {
        self.flags & flag != 0
    }

    pub fn set(&mut self, flag: u32, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    pub fn set_state(&mut self, state: u32) {
        self.flags = (self.flags & !STATE_MASK) | state;
    }

    /// The inline name's bytes (empty when the name is held as text).
    pub fn inline_name(&self) -> &[u8] {
        let len = ((self.flags & NAME_LEN_MASK) >> NAME_LEN_SHIFT) as usize;
        &self.name[..len.min(NAME_INLINE)]
    }

    /// Sets the name inline when it fits; otherwise returns `false` and the
    /// caller stores it as text with [`SlotData::set_text_name`].
    pub fn set_inline_name(&mut self, name: &str) -> bool {
        let room = if self.has(LIMITED) {
            NAME_INLINE_LIMITED
        } else {
            NAME_INLINE
        };
        if name.len() > room {
            return false;
        }
        let limiter = self.limiter();
        self.name = [0; NAME_INLINE];
        self.set_limiter(limiter);
        self.name[..name.len()].copy_from_slice(name.as_bytes());
        self.flags &= !(LONG_NAME | NAME_LEN_MASK);
        // At most 24, so it fits the six bits.
        self.flags |= (name.len() as u32) << NAME_LEN_SHIFT;
        true
    }

    pub fn set_text_name(&mut self, text: u32) {
        let limiter = self.limiter();
        self.name = [0; NAME_INLINE];
        self.set_limiter(limiter);
        self.name[..4].copy_from_slice(&text.to_le_bytes());
        self.flags = (self.flags & !NAME_LEN_MASK) | LONG_NAME;
    }

    /// The limiter index of a `LIMITED` key (meaningless otherwise).
    pub fn limiter(&self) -> u32 {
        let t = &self.name[NAME_INLINE_LIMITED..];
        u32::from_le_bytes([t[0], t[1], t[2], t[3]])
    }

    /// Sets the limiter index; only for a `LIMITED` key, whose inline name
    /// leaves these bytes free.
    pub fn set_limiter(&mut self, index: u32) {
        if self.has(LIMITED) {
            self.name[NAME_INLINE_LIMITED..].copy_from_slice(&index.to_le_bytes());
        }
    }

    pub fn text_name(&self) -> u32 {
        u32::from_le_bytes([self.name[0], self.name[1], self.name[2], self.name[3]])
    }

    pub fn set_text_id(&mut self, text: u32) {
        self.key_id = [0; 16];
        self.key_id[..4].copy_from_slice(&text.to_le_bytes());
        self.flags |= TEXT_ID;
    }

    pub fn text_id(&self) -> u32 {
        u32::from_le_bytes([
            self.key_id[0],
            self.key_id[1],
            self.key_id[2],
            self.key_id[3],
        ])
    }
}

fn store_words(dst: &[AtomicU64], bytes: &[u8]) {
    for (atom, chunk) in dst.iter().zip(bytes.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        atom.store(u64::from_le_bytes(b), Ordering::Relaxed);
    }
}

fn load_words(src: &[AtomicU64], bytes: &mut [u8]) {
    for (atom, chunk) in src.iter().zip(bytes.chunks_exact_mut(8)) {
        chunk.copy_from_slice(&atom.load(Ordering::Relaxed).to_le_bytes());
    }
}

impl Slot {
    /// A consistent copy of the entry: retries while the writer is inside.
    pub fn read(&self) -> SlotData {
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let mut data = SlotData {
                flags: self.flags.load(Ordering::Relaxed),
                home: self.home.load(Ordering::Relaxed),
                hash: [0; 32],
                key_id: [0; 16],
                expires_us: self.expires_us.load(Ordering::Relaxed),
                tenant: 0,
                grant: 0,
                name: [0; NAME_INLINE],
            };
            load_words(&self.hash, &mut data.hash);
            load_words(&self.key_id, &mut data.key_id);
            load_words(&self.name, &mut data.name);
            let shared = self.shared.load(Ordering::Relaxed);
            data.tenant = (shared >> 32) as u32;
            data.grant = shared as u32;
            // Orders the copy before the check (the sequence-lock read fence).
            fence(Ordering::Acquire);
            if self.seq.load(Ordering::Relaxed) == before {
                return data;
            }
        }
    }

    /// Writes the entry; only the table's single writer calls this.
    fn write(&self, data: &SlotData) {
        let seq = self.seq.load(Ordering::Relaxed);
        self.seq.store(seq.wrapping_add(1), Ordering::Relaxed);
        // Orders the odd sequence before the writes (the sequence-lock write fence).
        fence(Ordering::Release);
        self.flags.store(data.flags, Ordering::Relaxed);
        self.home.store(data.home, Ordering::Relaxed);
        store_words(&self.hash, &data.hash);
        store_words(&self.key_id, &data.key_id);
        self.expires_us.store(data.expires_us, Ordering::Relaxed);
        self.shared.store(
            (u64::from(data.tenant) << 32) | u64::from(data.grant),
            Ordering::Relaxed,
        );
        store_words(&self.name, &data.name);
        self.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    /// Counts uses. `SeqCst`: a count and a generation's `retired` flag are
    /// written by different threads in opposite orders (count then check the
    /// flag; set the flag then take the count), which only sequential
    /// consistency makes safe.
    pub fn add_uses(&self, count: u64, at_ms: i64) {
        self.uses.fetch_add(count, Ordering::SeqCst);
        // Within one millisecond every use but the first only reads.
        if self.last_used_ms.load(Ordering::Relaxed) < at_ms {
            self.last_used_ms.fetch_max(at_ms, Ordering::SeqCst);
        }
    }

    /// The admission tokens of a limited key (see `tokens`).
    pub fn tokens(&self) -> &AtomicU64 {
        &self.tokens
    }

    /// Takes the pending uses out (0 when none) and the newest use.
    pub fn take_uses(&self) -> (u64, i64) {
        let count = self.uses.swap(0, Ordering::SeqCst);
        (count, self.last_used_ms.load(Ordering::SeqCst))
    }
}

/// Where a display body puts a key: a 64-bit mix of its bytes. The bytes are
/// random base62 in every issued key, so the mix only has to spread them.
pub(super) fn home_of(display_body: &[u8]) -> u64 {
    let mut word = [0u8; 8];
    let n = display_body.len().min(8);
    word[..n].copy_from_slice(&display_body[..n]);
    let mut h = u64::from_le_bytes(word) ^ ((n as u64) << 59);
    // The finaliser of SplitMix64: every input bit reaches every output bit.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// Asks the CPU for the cache line holding `at` without waiting for it.
#[cfg(target_arch = "x86_64")]
pub(super) fn prefetch<T>(at: &T) {
    safe_arch::prefetch_t0(at);
}

/// Elsewhere no safe prefetch exists: the lookup waits for the memory.
#[cfg(not(target_arch = "x86_64"))]
pub(super) fn prefetch<T>(_at: &T) {}

/// A slot's tag: 7 low bits of the key's home hash with the high bit set (0
/// is empty). The slot's index comes from the high bits, so the two are
/// independent; and the home is known before the key is hashed.
fn tag_of(home: u64) -> u8 {
    0x80 | (home as u8 & 0x7f)
}

/// A fixed-capacity table of slots and their tags.
#[derive(Debug)]
pub(super) struct SlotTable {
    slots: Box<[Slot]>,
    tags: Box<[AtomicU8]>,
}

impl SlotTable {
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(8);
        Self {
            slots: std::iter::repeat_with(Slot::default)
                .take(capacity)
                .collect(),
            tags: std::iter::repeat_with(AtomicU8::default)
                .take(capacity)
                .collect(),
        }
    }

    /// The capacity a growing table gets for `keys`: two thirds full, so it
    /// takes nearly a third more keys before it grows again and growth (a
    /// copy of every key) stays rare.
    pub fn capacity_for(keys: usize) -> usize {
        keys.saturating_mul(3) / 2 + 8
    }

    /// The capacity for a load of `keys` known in advance (start-up reads the
    /// key list's row count first): four fifths full, which leaves room for a
    /// ninth more keys before [`MAX_LOAD_EIGHTHS`] makes it grow. At
    /// 10,000,000 keys the slots take 160 bytes a key this way, against 192
    /// at two thirds full (`index_memory`, BENCHMARKS.md's 200-byte budget).
    pub fn capacity_to_load(keys: usize) -> usize {
        keys.saturating_mul(5) / 4 + 8
    }

    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Whether one more key still fits under the load limit when `used` slots
    /// are taken.
    pub fn has_room(&self, used: usize) -> bool {
        (used + 1) * 8 <= self.capacity() * MAX_LOAD_EIGHTHS
    }

    pub fn slot(&self, i: usize) -> &Slot {
        &self.slots[i]
    }

    /// The slots that hold a key or a tombstone.
    pub fn used_slots(&self) -> impl Iterator<Item = &Slot> {
        self.slots
            .iter()
            .zip(self.tags.iter())
            .filter(|(_, tag)| tag.load(Ordering::Acquire) != 0)
            .map(|(slot, _)| slot)
    }

    fn home_index(&self, home: u64) -> usize {
        // Multiply-shift maps the hash onto any capacity, power of two or not.
        ((u128::from(home) * self.slots.len() as u128) >> 64) as usize
    }

    fn next(&self, i: usize) -> usize {
        if i + 1 == self.slots.len() {
            0
        } else {
            i + 1
        }
    }

    /// The first slot from `i` on, in probe order, whose tag is `tag`; `None`
    /// where the run of used slots ends first. A slot's tag never changes
    /// once set, so a lookup may resume from any slot this returned.
    fn candidate(&self, mut i: usize, tag: u8) -> Option<usize> {
        for _ in 0..self.slots.len() {
            match self.tags[i].load(Ordering::Acquire) {
                0 => return None,
                t if t == tag => return Some(i),
                _ => i = self.next(i),
            }
        }
        None
    }

    /// Finds the slot where a key placed from `home` most likely sits (the
    /// first whose tag matches) and starts fetching its memory, so that it
    /// arrives while the caller checks and hashes the key; a prefetch retires
    /// at once. Hand the result to [`SlotTable::find_from`].
    pub fn touch(&self, home: u64) -> Option<usize> {
        let first = self.candidate(self.home_index(home), tag_of(home));
        if let Some(i) = first {
            let slot = &self.slots[i];
            // Both cache lines: the entry and the use counters.
            prefetch(&slot.seq);
            prefetch(&slot.uses);
        }
        first
    }

    /// The live key with `hash` placed from `home`: its slot and entry.
    pub fn find(&self, home: u64, hash: &[u8; 32]) -> Option<(usize, SlotData)> {
        let first = self.candidate(self.home_index(home), tag_of(home));
        self.find_from(first, home, hash)
    }

    /// As [`SlotTable::find`], resuming from the first candidate slot that
    /// [`SlotTable::touch`] found, so the tags are scanned once.
    pub fn find_from(
        &self,
        first: Option<usize>,
        home: u64,
        hash: &[u8; 32],
    ) -> Option<(usize, SlotData)> {
        let tag = tag_of(home);
        let mut at = first;
        // Each round moves past at least one slot: the table is covered once.
        for _ in 0..self.slots.len() {
            let i = at?;
            let data = self.slots[i].read();
            if data.state() == LIVE && data.hash == *hash {
                return Some((i, data));
            }
            at = self.candidate(self.next(i), tag);
        }
        None
    }

    /// Puts a new entry in the first empty slot from its home and returns the
    /// slot. The caller checked [`SlotTable::has_room`], so one is found.
    pub fn insert(&self, data: &SlotData) -> Option<usize> {
        let mut i = self.home_index(data.home);
        for _ in 0..self.slots.len() {
            if self.tags[i].load(Ordering::Relaxed) == 0 {
                self.slots[i].write(data);
                // After the entry: a reader that sees the tag sees the entry.
                self.tags[i].store(tag_of(data.home), Ordering::Release);
                return Some(i);
            }
            i = self.next(i);
        }
        None
    }

    /// Rewrites slot `i` with `f` applied to its entry; writer only. The key's
    /// hash stays, so its tag does.
    pub fn update(&self, i: usize, f: impl FnOnce(&mut SlotData)) -> SlotData {
        let slot = &self.slots[i];
        let mut data = slot.read();
        f(&mut data);
        slot.write(&data);
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    fn entry(home: u64, n: u8) -> SlotData {
        let mut d = SlotData {
            flags: LIVE | ACTIVE,
            home,
            hash: [n; 32],
            key_id: [n; 16],
            expires_us: 0,
            tenant: 1,
            grant: 2,
            name: [0; NAME_INLINE],
        };
        assert!(d.set_inline_name(&format!("key {n}")));
        d
    }

    #[test]
    fn the_slot_is_two_cache_lines() {
        assert_eq!(std::mem::size_of::<Slot>(), 128);
        assert_eq!(std::mem::align_of::<Slot>(), 128);
    }

    #[test]
    fn keys_sharing_a_home_are_all_found_and_others_are_not() {
        let table = SlotTable::with_capacity(64);
        let mut at = Vec::new();
        for n in 1..=20u8 {
            let i = table.insert(&entry(42, n)).expect("room");
            at.push(i);
        }
        for n in 1..=20u8 {
            let (i, data) = table.find(42, &[n; 32]).expect("found");
            assert_eq!(i, at[usize::from(n - 1)]);
            assert_eq!(data.inline_name(), format!("key {n}").as_bytes());
            assert_eq!(data.tenant, 1);
            assert_eq!(data.grant, 2);
        }
        assert_eq!(table.find(42, &[99; 32]), None);
        assert_eq!(table.find(u64::MAX / 2, &[1; 32]), None, "another home");
    }

    #[test]
    fn a_lookup_resumed_from_touch_finds_what_find_finds() {
        let table = SlotTable::with_capacity(64);
        for n in 1..=10u8 {
            table.insert(&entry(42, n)).expect("room");
        }
        for n in 1..=11u8 {
            let resumed = table.find_from(table.touch(42), 42, &[n; 32]);
            assert_eq!(resumed, table.find(42, &[n; 32]), "key {n}");
        }
        assert_eq!(
            table.touch(u64::MAX / 2),
            None,
            "an empty home has no candidate"
        );
    }

    #[test]
    fn a_tombstone_is_skipped_and_never_reused() {
        let table = SlotTable::with_capacity(16);
        let a = table.insert(&entry(5, 1)).expect("room");
        let b = table.insert(&entry(5, 2)).expect("room");
        table.update(a, |d| d.set_state(DELETED));
        assert_eq!(table.find(5, &[1; 32]), None);
        assert_eq!(table.find(5, &[2; 32]).map(|f| f.0), Some(b));
        let c = table.insert(&entry(5, 3)).expect("room");
        assert_ne!(c, a, "the tombstone keeps its slot");
        assert_eq!(table.find(5, &[3; 32]).map(|f| f.0), Some(c));
    }

    #[test]
    fn rewriting_a_key_keeps_the_keys_behind_it_reachable() {
        let table = SlotTable::with_capacity(16);
        let home = table.insert(&entry(9, 1)).expect("room");
        table.insert(&entry(9, 2)).expect("room");
        table.update(home, |d| {
            d.set_inline_name("renamed");
        });
        assert_eq!(
            table.find(9, &[2; 32]).map(|(_, d)| d.hash),
            Some([2; 32]),
            "still reachable past the rewritten home slot"
        );
        assert_eq!(table.used_slots().count(), 2);
    }

    /// Fills `table` with keys of `home` until it refuses one more; returns
    /// their slots in insertion order.
    fn fill_to_the_limit(table: &SlotTable, home: u64) -> Vec<usize> {
        let mut at = Vec::new();
        while table.has_room(at.len()) {
            let n = u8::try_from(at.len() + 1).expect("a small table");
            at.push(table.insert(&entry(home, n)).expect("room"));
        }
        at
    }

    #[test]
    fn a_table_sized_for_a_load_takes_it_four_fifths_full_with_room_to_spare() {
        for keys in [0usize, 1, 7, 100, 1000, 10_000_000] {
            let capacity = SlotTable::capacity_to_load(keys);
            // Four fifths full, never fuller, and under the growth limit with
            // room for an eleventh more keys.
            assert!(keys * 5 <= capacity * 4, "{keys} keys in {capacity}");
            assert!(capacity <= keys * 5 / 4 + 8, "{keys} keys in {capacity}");
            let limit = capacity * MAX_LOAD_EIGHTHS / 8;
            assert!(limit >= keys + keys / 11, "{keys} keys, limit {limit}");
            // Growth starts a table two thirds full, below the load limit.
            assert!(SlotTable::capacity_for(keys) * 2 >= keys * 3);
        }
    }

    #[test]
    fn a_table_refuses_a_key_past_seven_eighths() {
        let table = SlotTable::with_capacity(80);
        assert!(table.has_room(69), "the 70th key fits: 70 of 80");
        assert!(!table.has_room(70), "the 71st does not");
        let at = fill_to_the_limit(&table, 7);
        assert_eq!(at.len(), 70);
    }

    #[test]
    fn probing_wraps_from_the_last_slot_to_the_first() {
        // A capacity that is not a power of two, and every key's home in the
        // last slot: the run wraps around to the first slots.
        let table = SlotTable::with_capacity(13);
        let home = u64::MAX;
        assert_eq!(table.home_index(home), 12);
        let at = fill_to_the_limit(&table, home);
        assert_eq!(at.len(), 11);
        assert_eq!(at[0], 12);
        assert_eq!(&at[1..4], &[0, 1, 2], "wrapped to the start");
        for (n, &i) in at.iter().enumerate() {
            let n = u8::try_from(n + 1).expect("small");
            assert_eq!(table.find(home, &[n; 32]).map(|f| f.0), Some(i), "key {n}");
            assert_eq!(
                table
                    .find_from(table.touch(home), home, &[n; 32])
                    .map(|f| f.0),
                Some(i)
            );
        }
        // An unknown key scans the wrapped run and stops at the empty slot.
        assert_eq!(table.find(home, &[200; 32]), None);
        // A tombstone inside the wrapped run keeps the keys behind it reachable.
        table.update(at[1], |d| d.set_state(DELETED));
        assert_eq!(table.find(home, &[2; 32]), None);
        assert_eq!(table.find(home, &[11; 32]).map(|f| f.0), Some(at[10]));
    }

    #[test]
    fn a_table_full_to_its_limit_finds_every_key_among_others() {
        let table = SlotTable::with_capacity(SlotTable::capacity_to_load(200));
        let mut keys = Vec::new();
        let mut n = 0u64;
        while table.has_room(keys.len()) {
            n += 1;
            let home = home_of(format!("{n:08}").as_bytes());
            let mut data = entry(home, 1);
            data.hash[..8].copy_from_slice(&n.to_le_bytes());
            keys.push((home, data.hash, table.insert(&data).expect("room")));
        }
        assert!(keys.len() >= 220, "{} keys", keys.len());
        for (home, hash, i) in &keys {
            assert_eq!(table.find(*home, hash).map(|f| f.0), Some(*i));
        }
        assert_eq!(table.used_slots().count(), keys.len());
    }

    #[test]
    fn long_names_and_text_ids_are_held_by_index() {
        let mut d = entry(1, 1);
        assert!(!d.set_inline_name(&"n".repeat(NAME_INLINE + 1)));
        d.set_text_name(77);
        assert!(d.has(LONG_NAME));
        assert_eq!(d.text_name(), 77);
        assert!(d.inline_name().is_empty());
        d.set_text_id(5);
        assert!(d.has(TEXT_ID));
        assert_eq!(d.text_id(), 5);
        assert!(d.set_inline_name(&"n".repeat(NAME_INLINE)));
        assert!(!d.has(LONG_NAME));
        assert_eq!(d.inline_name().len(), NAME_INLINE);
    }

    #[test]
    fn homes_spread_display_bodies() {
        let table = SlotTable::with_capacity(1000);
        let mut hit = std::collections::HashSet::new();
        for n in 0..1000u32 {
            hit.insert(table.home_index(home_of(format!("{n:08}").as_bytes())));
        }
        // Random placement of 1000 balls in 1000 bins fills about 632.
        assert!(hit.len() > 550, "{} distinct homes", hit.len());
    }

    #[test]
    fn a_reader_never_sees_a_torn_entry() {
        let table = Arc::new(SlotTable::with_capacity(16));
        let i = table.insert(&entry(3, 1)).expect("room");
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (table, stop) = (table.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut seen = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let data = table.slot(i).read();
                    // The writer keeps hash, id and name bytes equal to one another.
                    assert!(data.hash.iter().all(|&b| b == data.hash[0]), "torn hash");
                    assert_eq!(data.key_id[0], data.hash[0], "torn entry");
                    assert_eq!(
                        data.inline_name(),
                        format!("key {}", data.hash[0]).as_bytes()
                    );
                    seen += 1;
                }
                seen
            })
        };
        for round in 0..200_000u32 {
            let n = (round % 200) as u8 + 1;
            table.update(i, |d| *d = entry(3, n));
        }
        stop.store(true, Ordering::Relaxed);
        assert!(reader.join().expect("reader") > 0);
    }
}
