//! `TransferStore`: the transfer records by slot, in fixed blocks, so that
//! history can leave memory.
//!
//! ```text
//!  slot ─► block = slot / BLOCK_TRANSFERS ─► blocks[block]   full, immutable
//!                                            │  Memory(Arc<Vec>)  in the engine's memory
//!                                            │  Cold(Arc<dyn>)    elsewhere (a segment file
//!                                            │                    mapped read-only, say)
//!                                            └► tail              the block being filled
//! ```
//!
//! Records never change once stored (a post or void is a new record; states
//! live beside the store), so a full block can be shared with a snapshot
//! writer on another thread by cloning its `Arc` — no copy, no lock — and,
//! once the host has written it somewhere durable and readable, swapped for
//! a cold handle: the memory goes, the slots stay. Only the newest records
//! (the tail) are ever removed, and only to undo a failed linked chain,
//! which never reaches a block shared with anyone (a snapshot is taken
//! between batches; a chain is undone inside one).
//!
//! The engine stays free of I/O: it only reads through [`ColdBlock::records`];
//! what is behind it (and what a page fault there costs) is the host's
//! business and documented there.

use std::sync::Arc;

use crate::types::Transfer;

/// Records per block: 65,536 × 128 bytes = 8 MiB (64 with the
/// `small-blocks` feature, which only the simulator enables: so that blocks
/// fill, go to segment files and leave memory in a run of a few thousand
/// transfers; a segment records its block size and is refused by a build
/// with the other).
pub const BLOCK_TRANSFERS: usize = 1 << BLOCK_SHIFT;
#[cfg(not(feature = "small-blocks"))]
const BLOCK_SHIFT: u32 = 16;
#[cfg(feature = "small-blocks")]
const BLOCK_SHIFT: u32 = 6;
const BLOCK_MASK: usize = BLOCK_TRANSFERS - 1;

/// A full block's records kept outside the engine's memory. The engine only
/// reads them; the host guarantees they are exactly the records the block
/// held (the engine checks the first and the last when one is attached).
pub trait ColdBlock: Send + Sync {
    /// The block's [`BLOCK_TRANSFERS`] records, in slot order.
    fn records(&self) -> &[Transfer];
}

/// A full block of [`BLOCK_TRANSFERS`] records.
#[derive(Clone)]
pub enum Block {
    /// Held in the engine's memory (shared, never mutated).
    Memory(Arc<Vec<Transfer>>),
    /// Held by the host (see [`ColdBlock`]).
    Cold(Arc<dyn ColdBlock>),
}

impl Block {
    /// The block's records.
    #[inline(always)]
    pub fn records(&self) -> &[Transfer] {
        match self {
            Block::Memory(records) => records,
            Block::Cold(cold) => cold.records(),
        }
    }
}

impl core::fmt::Debug for Block {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Block::Memory(_) => f.write_str("Block::Memory"),
            Block::Cold(_) => f.write_str("Block::Cold"),
        }
    }
}

/// Transfer records by slot (see the module documentation).
pub struct TransferStore {
    blocks: Vec<Block>,
    /// Per full block: a cold copy the host made durable, if any; the block
    /// may be evicted to it.
    backing: Vec<Option<Arc<dyn ColdBlock>>>,
    tail: Vec<Transfer>,
    spare: Vec<Vec<Transfer>>,
    /// Capacity in records (the engine's `transfers_max`).
    capacity: usize,
}

impl core::fmt::Debug for TransferStore {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TransferStore")
            .field("len", &self.len())
            .field("blocks_in_memory", &self.blocks_in_memory())
            .field("blocks_cold", &(self.blocks.len() - self.blocks_in_memory()))
            .finish()
    }
}

impl TransferStore {
    /// An empty store for at most `capacity` records (nothing is allocated
    /// until records arrive, beyond one block).
    pub fn new(capacity: usize) -> Self {
        assert!(capacity < u32::MAX as usize);
        Self {
            blocks: Vec::with_capacity(capacity.div_ceil(BLOCK_TRANSFERS)),
            backing: Vec::with_capacity(capacity.div_ceil(BLOCK_TRANSFERS)),
            tail: Vec::with_capacity(BLOCK_TRANSFERS.min(capacity)),
            spare: Vec::new(),
            capacity,
        }
    }

    /// Records held.
    #[inline(always)]
    pub fn len(&self) -> usize {
        (self.blocks.len() << BLOCK_SHIFT) + self.tail.len()
    }

    /// True when no record is held.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The record at `slot` (which must be below [`TransferStore::len`]).
    #[inline(always)]
    pub fn get(&self, slot: u32) -> &Transfer {
        let block = (slot >> BLOCK_SHIFT) as usize;
        let index = slot as usize & BLOCK_MASK;
        match self.blocks.get(block) {
            Some(Block::Memory(records)) => &records[index],
            Some(Block::Cold(cold)) => &cold.records()[index],
            None => &self.tail[index],
        }
    }

    /// The last record, if any.
    pub fn last(&self) -> Option<&Transfer> {
        (!self.is_empty()).then(|| self.get(self.len() as u32 - 1))
    }

    /// Every record in slot order (reading cold blocks through their handles).
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = &Transfer> + '_ {
        self.blocks.iter().flat_map(|b| b.records().iter()).chain(self.tail.iter())
    }

    /// Every record, copied.
    pub fn to_vec(&self) -> Vec<Transfer> {
        self.iter().copied().collect()
    }

    /// Appends a record.
    #[inline(always)]
    pub fn push(&mut self, record: Transfer) {
        assert!(self.len() < self.capacity, "the engine checks transfers_max first");
        self.tail.push(record);
        if self.tail.len() == BLOCK_TRANSFERS {
            let fresh = self.spare.pop().unwrap_or_else(|| Vec::with_capacity(BLOCK_TRANSFERS));
            let full = std::mem::replace(&mut self.tail, fresh);
            self.blocks.push(Block::Memory(Arc::new(full)));
            self.backing.push(None);
        }
    }

    /// Removes the newest record (to undo a failed linked chain).
    pub fn pop(&mut self) -> Option<Transfer> {
        if self.tail.is_empty() {
            let block = self.blocks.pop()?;
            self.backing.pop();
            let Block::Memory(records) = block else {
                panic!("only records of the chain being undone are removed, and those are in memory");
            };
            let records = Arc::try_unwrap(records)
                .unwrap_or_else(|_| panic!("a block filled by the chain being undone is shared with no one"));
            self.spare.push(std::mem::replace(&mut self.tail, records));
        }
        self.tail.pop()
    }

    /// Full blocks (each [`BLOCK_TRANSFERS`] records), oldest first.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The records of the block being filled.
    pub fn tail(&self) -> &[Transfer] {
        &self.tail
    }

    /// Full blocks held in memory.
    pub fn blocks_in_memory(&self) -> usize {
        self.blocks.iter().filter(|b| matches!(b, Block::Memory(_))).count()
    }

    /// Appends a full block (when rebuilding a store from a snapshot).
    pub(crate) fn push_block(&mut self, block: Block) {
        assert!(self.tail.is_empty(), "full blocks come before the tail");
        assert_eq!(block.records().len(), BLOCK_TRANSFERS, "a block is full");
        assert!(self.len() + BLOCK_TRANSFERS <= self.capacity);
        let backing = match &block {
            Block::Cold(cold) => Some(cold.clone()),
            Block::Memory(_) => None,
        };
        self.blocks.push(block);
        self.backing.push(backing);
    }

    /// Records that full block `block` is also held by `cold` (durable and
    /// readable), so [`TransferStore::evict`] may drop it from memory.
    /// Panics when `cold` does not hold the block's first and last records:
    /// attaching the wrong file would silently change history.
    pub fn attach(&mut self, block: usize, cold: Arc<dyn ColdBlock>) {
        let records = self.blocks[block].records();
        let other = cold.records();
        assert_eq!(other.len(), BLOCK_TRANSFERS, "a cold block holds a whole block");
        assert!(
            records[0] == other[0] && records[BLOCK_MASK] == other[BLOCK_MASK],
            "cold block {block} does not hold the block's records"
        );
        self.backing[block] = Some(cold);
    }

    /// Drops from memory every full block with a cold copy except the newest
    /// `keep` blocks; returns how many were dropped. Buffers nobody else holds
    /// are kept for the blocks filled next, as many as the capacity still
    /// has blocks for: a host evicts in bursts (after each snapshot), and a
    /// buffer handed back to the allocator comes back as fresh pages the
    /// kernel zeroes on first touch, in the middle of a batch (7% of a
    /// one-shard server's CPU samples, under `create_transfers`, when only
    /// `keep` were kept: docs/benchmarks.md).
    /// Peak memory does not grow: a spare was a block in memory until now,
    /// and the spares are used up before new buffers are allocated. Resident
    /// memory stays at its high-water mark instead of falling after each
    /// snapshot.
    pub fn evict(&mut self, keep: usize) -> usize {
        let mut evicted = 0;
        let spares_max = self.blocks_left();
        let end = self.blocks.len().saturating_sub(keep);
        for (block, backing) in self.blocks[..end].iter_mut().zip(&self.backing) {
            if let (Block::Memory(_), Some(cold)) = (&*block, backing) {
                let Block::Memory(records) = std::mem::replace(block, Block::Cold(cold.clone())) else {
                    unreachable!()
                };
                if let Ok(mut records) = Arc::try_unwrap(records) {
                    if self.spare.len() < spares_max {
                        records.clear();
                        self.spare.push(records);
                    }
                }
                evicted += 1;
            }
        }
        evicted
    }

    /// Full blocks the capacity still allows beyond the tail.
    fn blocks_left(&self) -> usize {
        self.capacity.saturating_sub(self.len()).div_ceil(BLOCK_TRANSFERS).saturating_sub(1)
    }

    /// Allocates and touches a buffer for every block the capacity still
    /// allows (what `Vec::with_capacity(transfers_max)` plus a touch of every
    /// page gave before blocks), so no block of a run page-faults. This holds
    /// the whole capacity in memory: servers leave it off (`prefault =
    /// false`) and let evicted blocks' buffers be reused instead.
    pub(crate) fn prefault(&mut self) {
        crate::prefault::spare_capacity(&mut self.tail);
        while self.spare.len() < self.blocks_left() {
            let mut records = Vec::with_capacity(BLOCK_TRANSFERS);
            crate::prefault::spare_capacity(&mut records);
            self.spare.push(records);
        }
    }
}

impl core::ops::Index<usize> for TransferStore {
    type Output = Transfer;
    #[inline(always)]
    fn index(&self, slot: usize) -> &Transfer {
        assert!(slot < self.len(), "slot {slot} of {}", self.len());
        self.get(slot as u32)
    }
}

impl PartialEq for TransferStore {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl PartialEq<[Transfer]> for TransferStore {
    fn eq(&self, other: &[Transfer]) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<'a> IntoIterator for &'a TransferStore {
    type Item = &'a Transfer;
    type IntoIter = Box<dyn DoubleEndedIterator<Item = &'a Transfer> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(slot: usize) -> Transfer {
        Transfer { id: slot as u128 + 1, amount: slot as u128, ..Transfer::default() }
    }

    struct Copy(Vec<Transfer>);
    impl ColdBlock for Copy {
        fn records(&self) -> &[Transfer] {
            &self.0
        }
    }

    #[test]
    fn slots_survive_blocks_filling_undo_and_eviction() {
        let total = 2 * BLOCK_TRANSFERS + 10;
        let mut store = TransferStore::new(4 * BLOCK_TRANSFERS);
        for slot in 0..total {
            store.push(record(slot));
        }
        assert_eq!(store.len(), total);
        assert_eq!(store.blocks().len(), 2);
        // Undo across a block boundary brings the full block back as the tail.
        for slot in (BLOCK_TRANSFERS * 2 - 5..total).rev() {
            assert_eq!(store.pop(), Some(record(slot)));
        }
        assert_eq!(store.blocks().len(), 1);
        for slot in BLOCK_TRANSFERS * 2 - 5..total {
            store.push(record(slot));
        }
        // A shared block stays readable from the sharer while it is evicted.
        let shared = store.blocks()[0].clone();
        let cold: Arc<dyn ColdBlock> = Arc::new(Copy(shared.records().to_vec()));
        store.attach(0, cold);
        assert_eq!(store.evict(1), 1);
        assert_eq!(store.blocks_in_memory(), 1);
        assert_eq!(store.evict(0), 0, "block 1 has no cold copy yet");
        for slot in [0, 1, BLOCK_TRANSFERS - 1, BLOCK_TRANSFERS, total - 1] {
            assert_eq!(*store.get(slot as u32), record(slot));
        }
        assert!(store.iter().copied().eq((0..total).map(record)));
        assert_eq!(shared.records()[7], record(7));
    }

    #[test]
    fn a_burst_of_evicted_buffers_is_reused_up_to_the_capacity_left() {
        // Small blocks under the simulator's feature; the rule is the same.
        let blocks = 8;
        let mut store = TransferStore::new((blocks + 4) * BLOCK_TRANSFERS);
        for slot in 0..blocks * BLOCK_TRANSFERS {
            store.push(record(slot));
        }
        let buffers: Vec<*const Transfer> =
            (0..blocks).map(|b| store.blocks()[b].records().as_ptr()).collect();
        for block in 0..blocks {
            let cold: Arc<dyn ColdBlock> = Arc::new(Copy(store.blocks()[block].records().to_vec()));
            store.attach(block, cold);
        }
        // Keep the newest 3 in memory: 5 evicted at once; the capacity has
        // room for 4 more blocks, the tail's and 3 full ones: 3 buffers kept.
        assert_eq!(store.evict(3), 5);
        assert_eq!(store.spare.len(), 3);
        // The next blocks fill the kept buffers before asking the allocator.
        for slot in blocks * BLOCK_TRANSFERS..(blocks + 3) * BLOCK_TRANSFERS {
            store.push(record(slot));
        }
        // Block 8 filled the tail allocated before the eviction; 9 and 10
        // and the tail now are the kept buffers.
        assert!(store.spare.is_empty());
        let mut reused: Vec<*const Transfer> =
            (blocks + 1..blocks + 3).map(|b| store.blocks()[b].records().as_ptr()).collect();
        reused.push(store.tail.as_ptr());
        for buffer in reused {
            assert!(buffers[..5].contains(&buffer), "a new block reuses an evicted buffer");
        }
        assert!(store.iter().copied().eq((0..(blocks + 3) * BLOCK_TRANSFERS).map(record)));
    }

    #[test]
    #[should_panic(expected = "does not hold the block's records")]
    fn attaching_the_wrong_records_is_refused() {
        let mut store = TransferStore::new(2 * BLOCK_TRANSFERS);
        for slot in 0..BLOCK_TRANSFERS {
            store.push(record(slot));
        }
        let wrong: Vec<Transfer> = (1..=BLOCK_TRANSFERS).map(record).collect();
        store.attach(0, Arc::new(Copy(wrong)));
    }
}
