//! The simulated disk of one shard: bytes made durable by a sync, and
//! writes not yet synced, which a power loss loses, keeps, or tears (and
//! whose surviving sectors may come back with a flipped bit); reads that
//! fail.

use super::Prng;
use crate::journal::ReadAt;

/// The unit a torn write keeps or loses: physical sectors are 512 bytes, so
/// a 4 KiB journal write can tear inside itself.
pub const PHYSICAL_SECTOR: usize = 512;
const _: () = assert!(crate::journal::SECTOR_SIZE.is_multiple_of(PHYSICAL_SECTOR));
/// What a simulated read error says.
pub const READ_ERROR: &str = "simulated disk read error";

/// Synced bytes, and the writes since the last sync.
#[derive(Clone, Debug, Default)]
pub struct SimDisk {
    /// What survives any crash.
    pub durable: Vec<u8>,
    /// Written, not yet synced: (offset, bytes).
    pub unsynced: Vec<(u64, Vec<u8>)>,
    /// Bits flipped in unsynced sectors by crashes so far.
    pub bits_flipped: u64,
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

    /// What a read sees now: the synced bytes with the unsynced writes over them.
    pub fn current(&self) -> Vec<u8> {
        let mut bytes = self.durable.clone();
        for (offset, written) in &self.unsynced {
            Self::apply(&mut bytes, *offset, written);
        }
        bytes
    }

    /// fdatasync: every write so far is durable.
    pub fn sync(&mut self) {
        for (offset, bytes) in std::mem::take(&mut self.unsynced) {
            Self::apply(&mut self.durable, offset, &bytes);
        }
    }

    /// Power loss: each unsynced write is lost, kept whole, or torn (a
    /// random subset of its 512-byte physical sectors reaches the disk);
    /// now and then a sector that reaches it carries one flipped bit.
    pub fn crash(&mut self, prng: &mut Prng) {
        for (offset, mut bytes) in std::mem::take(&mut self.unsynced) {
            let keep = prng.below(3);
            if keep != 0 && prng.chance(5) {
                let bit = prng.below(bytes.len() as u64 * 8);
                bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
                self.bits_flipped += 1;
            }
            match keep {
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

/// The durable bytes as recovery reads them; a read touching `fail_at`
/// fails (a disk read error).
#[derive(Debug)]
pub struct Reader<'a> {
    /// The bytes.
    pub bytes: &'a [u8],
    /// The offset whose read fails, if any.
    pub fail_at: Option<u64>,
}

impl ReadAt for Reader<'_> {
    fn byte_len(&self) -> std::io::Result<u64> {
        self.bytes.byte_len()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if self.fail_at.is_some_and(|at| (offset..offset + buf.len() as u64).contains(&at)) {
            return Err(std::io::Error::other(READ_ERROR));
        }
        self.bytes.read_exact_at(buf, offset)
    }
}
