//! `SlotLists`: one append-only list of u32 slots per account, stored in
//! fixed 64-byte chunks carved from one arena reserved at start-up.
//!
//! Appending writes into the account's newest chunk (one cache line, hot for
//! active accounts) instead of a per-account vector that reallocates; a new
//! chunk comes from the end of the arena. Each account keeps a directory of
//! its chunks, oldest first, so position `i` of its list is
//! `chunks[directory[i / 16]][i % 16]` and a timestamp range is found by
//! binary search.

/// Entries per chunk: 16 × 4 bytes = one 64-byte cache line.
pub const CHUNK_ENTRIES: usize = 16;

type Chunk = [u32; CHUNK_ENTRIES];

/// Per-account lists of slots.
#[derive(Debug)]
pub struct SlotLists {
    chunks: Vec<Chunk>,
    chunks_max: usize,
    /// Per list: its chunks, oldest first.
    directories: Vec<Vec<u32>>,
    /// Per list: its length.
    lens: Vec<u32>,
    /// Per list: its newest chunk (meaningful once the list is non-empty);
    /// kept flat so an append touches no directory.
    heads: Vec<u32>,
}

impl SlotLists {
    /// Room for `lists_max` lists holding `entries_max` entries in total.
    pub fn new(lists_max: usize, entries_max: usize) -> Self {
        // Full chunks, plus at most one partly filled chunk per list.
        let chunks_max = entries_max.div_ceil(CHUNK_ENTRIES) + lists_max;
        assert!(chunks_max <= u32::MAX as usize);
        Self {
            chunks: Vec::with_capacity(chunks_max),
            chunks_max,
            directories: Vec::with_capacity(lists_max),
            lens: Vec::with_capacity(lists_max),
            heads: Vec::with_capacity(lists_max),
        }
    }

    /// Adds an empty list; returns nothing: lists are numbered in order.
    pub fn push_list(&mut self) {
        self.directories.push(Vec::new());
        self.lens.push(0);
        self.heads.push(u32::MAX);
    }

    /// Removes the newest list, which must be empty.
    pub fn pop_list(&mut self) {
        let len = self.lens.pop().expect("a list to pop");
        assert_eq!(len, 0);
        self.directories.pop();
        self.heads.pop();
    }

    /// Appends `slot` to list `list`.
    #[inline(always)]
    pub fn push(&mut self, list: u32, slot: u32) {
        let list = list as usize;
        let len = self.lens[list] as usize;
        let offset = len % CHUNK_ENTRIES;
        if offset == 0 {
            assert!(self.chunks.len() < self.chunks_max, "slot list arena exhausted");
            let chunk = self.chunks.len() as u32;
            self.directories[list].push(chunk);
            self.heads[list] = chunk;
            self.chunks.push([0; CHUNK_ENTRIES]);
        }
        let chunk = self.heads[list] as usize;
        self.chunks[chunk][offset] = slot;
        self.lens[list] += 1;
    }

    /// Removes and returns the last entry of `list`. Undo only: entries are
    /// popped in the reverse order they were pushed, across all lists, so a
    /// chunk freed here is always the arena's newest.
    pub fn pop(&mut self, list: u32) -> Option<u32> {
        let list = list as usize;
        let len = self.lens[list] as usize;
        if len == 0 {
            return None;
        }
        let last = len - 1;
        let chunk = self.directories[list][last / CHUNK_ENTRIES] as usize;
        let slot = self.chunks[chunk][last % CHUNK_ENTRIES];
        if last.is_multiple_of(CHUNK_ENTRIES) {
            assert_eq!(chunk, self.chunks.len() - 1, "chunks are freed newest first");
            self.chunks.pop();
            self.directories[list].pop();
            self.heads[list] = self.directories[list].last().copied().unwrap_or(u32::MAX);
        }
        self.lens[list] -= 1;
        Some(slot)
    }

    /// Hints the CPU to load the chunk the next append to `list` writes.
    #[inline(always)]
    pub fn prefetch_head(&self, list: u32) {
        let Some(&head) = self.heads.get(list as usize) else { return };
        let head = head as usize;
        if head < self.chunks.len() {
            crate::prefault::prefetch(&self.chunks[head]);
        }
    }

    /// The length of `list`.
    #[inline]
    pub fn len(&self, list: u32) -> usize {
        self.lens[list as usize] as usize
    }

    /// Entry `i` of `list`.
    #[inline]
    pub fn get(&self, list: u32, i: usize) -> u32 {
        let directory = &self.directories[list as usize];
        self.chunks[directory[i / CHUNK_ENTRIES] as usize][i % CHUNK_ENTRIES]
    }

    /// The first position in `list` whose entry fails `pred` (entries must be
    /// partitioned: all passing ones first), as `slice::partition_point`.
    pub fn partition_point(&self, list: u32, mut pred: impl FnMut(u32) -> bool) -> usize {
        let (mut low, mut high) = (0, self.len(list));
        while low < high {
            let mid = low + (high - low) / 2;
            if pred(self.get(list, mid)) {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low
    }

    /// Touches every page of the arena reserved at start-up (see `Engine::prefault`).
    pub fn prefault(&mut self) {
        crate::prefault::spare_capacity(&mut self.chunks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_interleave_push_get_pop() {
        let mut lists = SlotLists::new(3, 100);
        for _ in 0..3 {
            lists.push_list();
        }
        for i in 0..40u32 {
            lists.push(i % 3, i);
        }
        assert_eq!((lists.len(0), lists.len(1), lists.len(2)), (14, 13, 13));
        assert_eq!(
            (0..14).map(|i| lists.get(0, i)).collect::<Vec<_>>(),
            (0..40).step_by(3).collect::<Vec<_>>()
        );
        assert_eq!(lists.partition_point(1, |slot| slot < 20), 7);
        for i in (0..40u32).rev() {
            assert_eq!(lists.pop(i % 3), Some(i));
        }
        assert_eq!(lists.pop(0), None);
        assert!(lists.chunks.is_empty());
        lists.pop_list();
        assert_eq!(lists.directories.len(), 2);
    }

    #[test]
    fn arena_holds_entries_max_over_lists_max_lists() {
        // Worst case: every list ends with a partly filled chunk.
        let mut lists = SlotLists::new(5, 5 * 17);
        for list in 0..5 {
            lists.push_list();
            for i in 0..17 {
                lists.push(list, i);
            }
        }
        assert!(lists.chunks.len() <= lists.chunks_max);
    }
}
