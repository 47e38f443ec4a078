//! `IdIndex`: a fixed-capacity, open-addressing hash index from a u128 id to a
//! u32 slot.
//!
//! Linear probing over a power-of-two table whose capacity is fixed at
//! start-up (at most half full, so probes stay short), the key stored inline so
//! a lookup touches one cache line, a fixed hash (the engine must be
//! deterministic, and ids are non-zero so 0 marks an empty slot), and a
//! prefetch hint so a batch can warm its slots before it commits. Deletion
//! (only used to undo a failed linked chain) shifts entries back instead of
//! leaving tombstones.

/// One table slot: `[key_lo, key_hi, value]`. Key halves are stored as u64
/// so a slot is 24 bytes, not 32; a plain integer array so the table is
/// allocated zeroed (pages are only touched when used).
type Slot = [u64; 3];

#[inline(always)]
fn slot_key(slot: &Slot) -> u128 {
    (slot[1] as u128) << 64 | slot[0] as u128
}

#[inline(always)]
fn slot_empty(slot: &Slot) -> bool {
    slot[0] == 0 && slot[1] == 0
}

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

impl IdIndex {
    /// An index holding up to `entries_max` entries; the table is sized once,
    /// here, to twice that rounded up to a power of two.
    pub fn with_entries_max(entries_max: usize) -> Self {
        assert!(entries_max > 0);
        assert!(entries_max <= u32::MAX as usize);
        let capacity = (entries_max * 2).next_power_of_two().max(16);
        Self {
            slots: vec![[0u64; 3]; capacity],
            mask: capacity - 1,
            len: 0,
            entries_max,
        }
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

    /// Hints the CPU to load `key`'s home slot; a no-op where unsupported.
    #[inline(always)]
    pub fn prefetch(&self, key: u128) {
        let index = hash(key) as usize & self.mask;
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `index <= mask < slots.len()`, so the pointer is in bounds;
        // prefetch never faults and has no architectural effect.
        unsafe {
            use core::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch::<_MM_HINT_T0>(self.slots.as_ptr().add(index).cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = index;
    }

    /// The value for `key`, if present.
    #[inline]
    pub fn get(&self, key: u128) -> Option<u32> {
        debug_assert!(key != 0);
        let mut index = hash(key) as usize & self.mask;
        loop {
            let slot = &self.slots[index];
            if slot_empty(slot) {
                return None;
            }
            if slot_key(slot) == key {
                return Some(slot[2] as u32);
            }
            index = (index + 1) & self.mask;
        }
    }

    /// Inserts `key → value`. The caller has checked that `key` is absent
    /// and that the index is below `entries_max`.
    #[inline]
    pub fn insert_new(&mut self, key: u128, value: u32) {
        assert!(key != 0);
        assert!(self.len < self.entries_max);
        let mut index = hash(key) as usize & self.mask;
        loop {
            let slot = &mut self.slots[index];
            if slot_empty(slot) {
                *slot = [key as u64, (key >> 64) as u64, u64::from(value)];
                self.len += 1;
                return;
            }
            assert!(slot_key(slot) != key, "insert_new: key is present");
            index = (index + 1) & self.mask;
        }
    }

    /// Removes `key`, which must be present, shifting later entries of its
    /// probe run back so no tombstone is left.
    pub fn remove(&mut self, key: u128) {
        let mut hole = hash(key) as usize & self.mask;
        loop {
            let slot = &self.slots[hole];
            assert!(!slot_empty(slot), "remove: key is absent");
            if slot_key(slot) == key {
                break;
            }
            hole = (hole + 1) & self.mask;
        }
        let mut next = hole;
        loop {
            next = (next + 1) & self.mask;
            let slot = self.slots[next];
            if slot_empty(&slot) {
                break;
            }
            let home = hash(slot_key(&slot)) as usize & self.mask;
            // Move `slot` into the hole unless its home lies cyclically in (hole, next].
            let home_in_range = if hole <= next {
                hole < home && home <= next
            } else {
                hole < home || home <= next
            };
            if !home_in_range {
                self.slots[hole] = slot;
                hole = next;
            }
        }
        self.slots[hole] = [0; 3];
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
        let mut index = IdIndex::with_entries_max(100);
        for id in 1..=100u128 {
            index.insert_new(id << 64 | id, id as u32);
        }
        assert_eq!(index.len(), 100);
        for id in 1..=100u128 {
            assert_eq!(index.get(id << 64 | id), Some(id as u32));
        }
        assert_eq!(index.get(101), None);
        for id in (1..=100u128).step_by(2) {
            index.remove(id << 64 | id);
        }
        for id in 1..=100u128 {
            let expected = (id % 2 == 0).then_some(id as u32);
            assert_eq!(index.get(id << 64 | id), expected);
        }
    }

    proptest! {
        // Any interleaving of inserts and removes agrees with a HashMap,
        // including removals inside wrapped probe runs of a tiny table.
        #[test]
        fn agrees_with_hashmap(ops in prop::collection::vec((1u128..64, any::<bool>()), 0..400)) {
            let mut index = IdIndex::with_entries_max(40);
            let mut model: HashMap<u128, u32> = HashMap::new();
            for (i, (key, insert)) in ops.into_iter().enumerate() {
                if insert {
                    if !model.contains_key(&key) && model.len() < 40 {
                        index.insert_new(key, i as u32);
                        model.insert(key, i as u32);
                    }
                } else if model.remove(&key).is_some() {
                    index.remove(key);
                }
                prop_assert_eq!(index.len(), model.len());
            }
            for key in 1u128..64 {
                prop_assert_eq!(index.get(key), model.get(&key).copied());
            }
        }
    }
}
