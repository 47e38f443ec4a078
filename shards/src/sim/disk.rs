//! The simulated disk of one shard: bytes made durable by a sync, and
//! writes not yet synced, which a power loss loses, keeps, or tears.

use super::Prng;

/// The unit a torn write keeps or loses: physical sectors are 512 bytes, so
/// a 4 KiB journal write can tear inside itself.
pub const PHYSICAL_SECTOR: usize = 512;
const _: () = assert!(crate::journal::SECTOR_SIZE.is_multiple_of(PHYSICAL_SECTOR));

/// Synced bytes, and the writes since the last sync.
#[derive(Debug, Default)]
pub struct SimDisk {
    /// What survives any crash.
    pub durable: Vec<u8>,
    /// Written, not yet synced: (offset, bytes).
    pub unsynced: Vec<(u64, Vec<u8>)>,
}

impl SimDisk {
    fn apply(target: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
        let (offset, end) = (offset as usize, offset as usize + bytes.len());
        if offset >= target.len() {
            // Appending (the usual case): no zero fill to overwrite.
            target.resize(offset, 0);
            target.extend_from_slice(bytes);
            return;
        }
        if target.len() < end {
            target.resize(end, 0);
        }
        target[offset..end].copy_from_slice(bytes);
    }

    /// A write reaches the disk's cache.
    pub fn write(&mut self, offset: u64, bytes: &[u8]) {
        self.unsynced.push((offset, bytes.to_vec()));
    }

    /// fdatasync: every write so far is durable.
    pub fn sync(&mut self) {
        for (offset, bytes) in std::mem::take(&mut self.unsynced) {
            Self::apply(&mut self.durable, offset, &bytes);
        }
    }

    /// Power loss: each unsynced write is lost, kept whole, or torn (a
    /// random subset of its 512-byte physical sectors reaches the disk).
    pub fn crash(&mut self, prng: &mut Prng) {
        for (offset, bytes) in std::mem::take(&mut self.unsynced) {
            match prng.below(3) {
                0 => {}
                1 => Self::apply(&mut self.durable, offset, &bytes),
                _ => {
                    for (i, sector) in bytes.chunks(PHYSICAL_SECTOR).enumerate() {
                        if prng.chance(50) {
                            Self::apply(&mut self.durable, offset + (i * PHYSICAL_SECTOR) as u64, sector);
                        }
                    }
                }
            }
        }
    }
}
