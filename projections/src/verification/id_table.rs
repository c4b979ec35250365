//! Key id -> slot, for applying events (which name keys by id) to an index
//! placed by display body. Only the writer (the tailer) uses it, never
//! verification, so it trades lookup speed for memory: packed ids sit in one
//! sorted vector (20 bytes a key, where a hash map would take three times that
//! at 1,000,000 keys). A deleted key's slot is [`GONE`] rather than `None`:
//! an `Option<u32>` beside the 16-byte id pads the pair to 24 bytes, 40 MB at
//! 10,000,000 keys.

use std::collections::HashMap;

use super::key_id::KeyId;

/// The slot of a deleted key, until compaction. Never a real slot: a table
/// holds fewer than `u32::MAX` slots (`index_u32`).
const GONE: u32 = u32::MAX;

#[derive(Debug, Default)]
pub(super) struct IdTable {
    /// Sorted by id when `sorted`; [`GONE`] marks a deleted key until compaction.
    packed: Vec<([u8; 16], u32)>,
    sorted: bool,
    removed: usize,
    text: HashMap<Box<str>, u32>,
}

impl IdTable {
    pub(super) fn with_capacity(n: usize) -> Self {
        Self {
            packed: Vec::with_capacity(n),
            sorted: true,
            removed: 0,
            text: HashMap::new(),
        }
    }

    pub(super) fn insert(&mut self, id: &KeyId, slot: u32) {
        match id {
            KeyId::Text(s) => {
                self.text.insert(s.clone(), slot);
            }
            KeyId::Packed(b) => {
                // Ids are UUIDv7, so new keys almost always sort last: a push.
                let in_order = self.packed.last().is_none_or(|(last, _)| last < b);
                if in_order || !self.sorted {
                    self.sorted = in_order && self.sorted;
                    self.packed.push((*b, slot));
                    return;
                }
                match self.packed.binary_search_by(|(k, _)| k.cmp(b)) {
                    Ok(i) => {
                        if self.packed[i].1 == GONE {
                            self.removed -= 1;
                        }
                        self.packed[i].1 = slot;
                    }
                    Err(i) => self.packed.insert(i, (*b, slot)),
                }
            }
        }
    }

    /// Adds an id when many arrive in no particular order (a table being
    /// rebuilt in slot order): appended, and sorted once at the next lookup.
    /// [`IdTable::insert`] keeps the vector sorted, at the cost of a shift per
    /// out-of-order id: quadratic for a whole table.
    pub(super) fn insert_unordered(&mut self, id: &KeyId, slot: u32) {
        match id {
            KeyId::Text(s) => {
                self.text.insert(s.clone(), slot);
            }
            KeyId::Packed(b) => {
                self.sorted = self.sorted && self.packed.last().is_none_or(|(last, _)| last < b);
                self.packed.push((*b, slot));
            }
        }
    }

    pub(super) fn get(&mut self, id: &KeyId) -> Option<u32> {
        match id {
            KeyId::Text(s) => self.text.get(s).copied(),
            KeyId::Packed(b) => {
                let i = self.position(b)?;
                Some(self.packed[i].1).filter(|&s| s != GONE)
            }
        }
    }

    pub(super) fn remove(&mut self, id: &KeyId) -> Option<u32> {
        match id {
            KeyId::Text(s) => self.text.remove(s),
            KeyId::Packed(b) => {
                let i = self.position(b)?;
                let slot = std::mem::replace(&mut self.packed[i].1, GONE);
                if slot == GONE {
                    return None;
                }
                self.removed += 1;
                if self.removed > 1024 && self.removed > self.packed.len() / 4 {
                    self.packed.retain(|&(_, s)| s != GONE);
                    self.removed = 0;
                }
                Some(slot)
            }
        }
    }

    fn position(&mut self, b: &[u8; 16]) -> Option<usize> {
        if !self.sorted {
            // A bulk load in no particular order: sort once, keeping the last
            // insert of an id.
            self.packed.sort_by_key(|x| x.0);
            self.packed.dedup_by(|later, earlier| {
                if later.0 == earlier.0 {
                    earlier.1 = later.1;
                    true
                } else {
                    false
                }
            });
            self.removed = self.packed.iter().filter(|&&(_, s)| s == GONE).count();
            self.sorted = true;
        }
        self.packed.binary_search_by(|(k, _)| k.cmp(b)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> KeyId {
        KeyId::new(&format!("key_{n:032x}"))
    }

    fn slot(n: u8) -> u32 {
        u32::from(n) * 1000
    }

    #[test]
    fn finds_ids_inserted_in_any_order_and_forgets_removed_ones() {
        let mut t = IdTable::default();
        for n in [5u8, 1, 9, 3, 7] {
            t.insert(&id(u128::from(n)), slot(n));
        }
        t.insert(&KeyId::new("key_held"), slot(42));
        for n in [5u8, 1, 9, 3, 7] {
            assert_eq!(t.get(&id(u128::from(n))), Some(slot(n)));
        }
        assert_eq!(t.get(&KeyId::new("key_held")), Some(slot(42)));
        assert_eq!(t.get(&id(4)), None);
        assert_eq!(t.remove(&id(3)), Some(slot(3)));
        assert_eq!(t.get(&id(3)), None);
        assert_eq!(t.remove(&id(3)), None);
        t.insert(&id(3), slot(33));
        assert_eq!(t.get(&id(3)), Some(slot(33)));
        t.insert(&id(2), slot(2));
        assert_eq!(t.get(&id(2)), Some(slot(2)));
        assert_eq!(t.remove(&KeyId::new("key_held")), Some(slot(42)));
    }

    #[test]
    fn ids_added_in_no_order_are_found_after_one_sort() {
        let mut t = IdTable::with_capacity(1000);
        for n in (0..1000u128).rev() {
            t.insert_unordered(&id(n * 7 % 1000), slot((n % 251) as u8));
        }
        t.insert_unordered(&KeyId::new("key_held"), 5);
        assert!(!t.sorted);
        for n in 0..1000u128 {
            let expected = (0..1000u128)
                .find(|m| m * 7 % 1000 == n)
                .expect("a bijection");
            assert_eq!(t.get(&id(n)), Some(slot((expected % 251) as u8)));
        }
        assert!(t.sorted);
        assert_eq!(t.get(&KeyId::new("key_held")), Some(5));
    }

    #[test]
    fn an_entry_is_twenty_bytes() {
        assert_eq!(std::mem::size_of::<([u8; 16], u32)>(), 20);
    }

    #[test]
    fn a_removed_id_is_gone_until_inserted_again_even_after_a_sort() {
        let mut t = IdTable::default();
        for n in [3u128, 1, 2] {
            t.insert_unordered(&id(n), slot(n as u8));
        }
        assert_eq!(t.remove(&id(2)), Some(slot(2)));
        t.insert_unordered(&id(0), slot(9));
        assert_eq!(t.get(&id(2)), None, "removed before the sort");
        assert_eq!(t.removed, 1);
        assert_eq!(t.get(&id(0)), Some(slot(9)));
        t.insert(&id(2), slot(22));
        assert_eq!(t.removed, 0);
        assert_eq!(t.get(&id(2)), Some(slot(22)));
    }

    #[test]
    fn compacts_after_many_removals() {
        let mut t = IdTable::with_capacity(4000);
        for n in 0..4000u128 {
            t.insert(&id(n), slot((n % 251) as u8));
        }
        for n in 0..3000u128 {
            assert!(t.remove(&id(n)).is_some());
        }
        assert!(t.packed.len() < 4000, "tombstones were compacted");
        for n in 3000..4000u128 {
            assert_eq!(t.get(&id(n)), Some(slot((n % 251) as u8)));
        }
    }
}
