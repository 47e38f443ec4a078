//! `IdIndex`: a fixed-capacity, open-addressing hash index from a u128 id to
//! the u32 slot of the record that holds it.
//!
//! Slots are 8 bytes: a 32-bit fingerprint of the id's hash and the record's
//! slot. The id itself is not stored: the records hold it, and the caller
//! passes `key_of(slot)` to read it back. A lookup for an absent id (every
//! create) stops at an empty slot and almost never reads a record; a
//! fingerprint match is confirmed against the record, which a lookup for a
//! present id reads anyway. Eight slots share a cache line, the table is at
//! most ~2/3 full, its capacity is fixed at start-up, the hash is fixed (the
//! engine must be deterministic), and the table is allocated zeroed (0 marks
//! an empty slot) so its pages are only touched when used. Deletion (only to
//! undo a failed linked chain) shifts entries back instead of leaving
//! tombstones.

/// One slot: `(value + 1) << 32 | fingerprint`; 0 = empty.
type Slot = u64;

/// A u128 → u32 index with a fixed maximum number of entries.
pub struct IdIndex {
    slots: Vec<Slot>,
    mask: usize,
    len: usize,
    entries_max: usize,
}

impl core::fmt::Debug for IdIndex {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("IdIndex")
            .field("len", &self.len)
            .field("entries_max", &self.entries_max)
            .field("capacity", &self.slots.len())
            .finish()
    }
}

/// Mixes a u128 id into a well-distributed u64 (a fixed function of the id:
/// sequential ids land far apart).
#[inline(always)]
fn hash(key: u128) -> u64 {
    let lo = key as u64;
    let hi = (key >> 64) as u64;
    // The splitmix64 / murmur3 finaliser over a fold of both halves.
    let mut x = lo ^ hi.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The low 32 bits of the hash: kept in the slot to skip most mismatches.
#[inline(always)]
fn fingerprint(hash: u64) -> u64 {
    hash & 0xffff_ffff
}

#[inline(always)]
fn slot_value(slot: Slot) -> u32 {
    ((slot >> 32) - 1) as u32
}

impl IdIndex {
    /// An index holding up to `entries_max` entries; the table is sized once,
    /// here, to at least 1.5 × that, rounded up to a power of two.
    pub fn with_entries_max(entries_max: usize) -> Self {
        assert!(entries_max > 0);
        assert!(entries_max < u32::MAX as usize);
        let capacity = (entries_max + entries_max / 2).next_power_of_two().max(16);
        Self { slots: vec![0; capacity], mask: capacity - 1, len: 0, entries_max }
    }

    #[inline(always)]
    fn home(&self, hash: u64) -> usize {
        hash.rotate_right(32) as usize & self.mask
    }

    /// Entries held.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no entry is held.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The fixed maximum number of entries.
    #[inline]
    pub fn entries_max(&self) -> usize {
        self.entries_max
    }

    /// Touches every page of the table (see `Engine::prefault`).
    pub fn prefault(&mut self) {
        crate::prefault::slice(&mut self.slots);
    }

    /// Hints the CPU to load `key`'s home slot.
    #[inline(always)]
    pub fn prefetch(&self, key: u128) {
        crate::prefault::prefetch(&self.slots[self.home(hash(key))]);
    }

    /// The value of the first entry whose fingerprint matches `key`'s,
    /// without reading any record to confirm it: a hint for prefetching the
    /// record (almost always `get`'s answer; on a fingerprint collision, some
    /// other entry's). Reads only the table.
    #[inline(always)]
    pub fn candidate(&self, key: u128) -> Option<u32> {
        self.find(key, |_| true)
    }

    /// The value for `key`, if present; `key_of(value)` reads the id of the
    /// record at `value`.
    #[inline]
    pub fn get(&self, key: u128, key_of: impl Fn(u32) -> u128) -> Option<u32> {
        self.find(key, |value| key_of(value) == key)
    }

    /// The first value on `key`'s probe path whose slot's fingerprint
    /// matches and that `accept` takes; `None` at the first empty slot.
    #[inline(always)]
    fn find(&self, key: u128, accept: impl Fn(u32) -> bool) -> Option<u32> {
        let hash = hash(key);
        let print = fingerprint(hash);
        let mut index = self.home(hash);
        loop {
            let slot = self.slots[index];
            if slot == 0 {
                return None;
            }
            if slot & 0xffff_ffff == print && accept(slot_value(slot)) {
                return Some(slot_value(slot));
            }
            index = (index + 1) & self.mask;
        }
    }

    /// Inserts `key → value`. The caller has checked that `key` is absent
    /// and that the index is below `entries_max`.
    #[inline]
    pub fn insert_new(&mut self, key: u128, value: u32) {
        assert!(self.len < self.entries_max);
        assert!(value < u32::MAX);
        let hash = hash(key);
        let mut index = self.home(hash);
        while self.slots[index] != 0 {
            index = (index + 1) & self.mask;
        }
        self.slots[index] = (u64::from(value) + 1) << 32 | fingerprint(hash);
        self.len += 1;
    }

    /// Removes `key`, which must be present, shifting later entries of its
    /// probe run back so no tombstone is left.
    pub fn remove(&mut self, key: u128, key_of: impl Fn(u32) -> u128) {
        let mut hole = self.home(hash(key));
        loop {
            let slot = self.slots[hole];
            assert!(slot != 0, "remove: key is absent");
            if key_of(slot_value(slot)) == key {
                break;
            }
            hole = (hole + 1) & self.mask;
        }
        let mut next = hole;
        loop {
            next = (next + 1) & self.mask;
            let slot = self.slots[next];
            if slot == 0 {
                break;
            }
            let home = self.home(hash(key_of(slot_value(slot))));
            // Move `slot` into the hole unless its home lies cyclically in (hole, next].
            let home_in_range =
                if hole <= next { hole < home && home <= next } else { hole < home || home <= next };
            if !home_in_range {
                self.slots[hole] = slot;
                hole = next;
            }
        }
        self.slots[hole] = 0;
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn insert_get_remove() {
        let keys: Vec<u128> = (0..100u128).map(|i| (i + 1) << 64 | (i + 1)).collect();
        let key_of = |v: u32| keys[v as usize];
        let mut index = IdIndex::with_entries_max(100);
        for (i, &key) in keys.iter().enumerate() {
            index.insert_new(key, i as u32);
        }
        assert_eq!(index.len(), 100);
        for (i, &key) in keys.iter().enumerate() {
            assert_eq!(index.get(key, key_of), Some(i as u32));
        }
        assert_eq!(index.get(101, key_of), None);
        for (i, &key) in keys.iter().enumerate() {
            assert_eq!(index.candidate(key), Some(i as u32), "the prefetch hint for a present key");
        }
        for &key in keys.iter().step_by(2) {
            index.remove(key, key_of);
        }
        for (i, &key) in keys.iter().enumerate() {
            assert_eq!(index.get(key, key_of), (i % 2 == 1).then_some(i as u32));
        }
    }

    proptest! {
        // Any interleaving of inserts and removes agrees with a HashMap,
        // including removals inside wrapped probe runs of a tiny table.
        #[test]
        fn agrees_with_hashmap(ops in prop::collection::vec((1u128..64, any::<bool>()), 0..400)) {
            // Values are the keys themselves here, so key_of is the identity.
            let prints: std::collections::HashSet<u64> = (1u128..64).map(|k| fingerprint(hash(k))).collect();
            prop_assert_eq!(prints.len(), 63);
            let key_of = |v: u32| u128::from(v);
            let mut index = IdIndex::with_entries_max(40);
            let mut model: HashMap<u128, u32> = HashMap::new();
            for (key, insert) in ops {
                if insert {
                    if !model.contains_key(&key) && model.len() < 40 {
                        index.insert_new(key, key as u32);
                        model.insert(key, key as u32);
                    }
                } else if model.remove(&key).is_some() {
                    index.remove(key, key_of);
                }
                prop_assert_eq!(index.len(), model.len());
            }
            for key in 1u128..64 {
                prop_assert_eq!(index.get(key, key_of), model.get(&key).copied());
                // The prefetch hint names a present key's own slot (these
                // 63 keys' fingerprints are distinct) and nothing for an
                // absent key.
                prop_assert_eq!(index.candidate(key), model.get(&key).copied());
            }
        }
    }
}
