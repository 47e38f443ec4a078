//! Snapshots: the engine's state at a journal position, so recovery loads it
//! and replays only the journal after it — written incrementally, so a
//! snapshot costs what changed, not the whole history.
//!
//! ```text
//!  transfers-<first block, 10 digits>.seg      immutable transfer history, one file per
//!  ┌──── header 4096 B ─────┬── block ──┬───     snapshot that had new full blocks
//!  │ checksum · "MOLT" ·     │ 65,536 ×  │ …      (≤ 128 blocks = 1 GiB each); written
//!  │ first_block · blocks ·  │ 128-byte  │        once, never changed, mapped read-only
//!  │ xxh3-128 per block      │ records   │        once their blocks leave memory
//!  └─────────────────────────┴───────────┴───
//!  snapshot-<next_sequence, 20 digits>.molly
//!  ┌──────────── header 64 B ─────────────┬──────── body (rkyv, v3) ───────────┐
//!  │ checksum_header u128 · checksum_body  │ accounts · one state byte per      │
//!  │ u128 · next_sequence u64 ·            │ transfer · balance history · clock │
//!  │ journal_offset u64 · body_len u64 ·   │ · open cross-shard intents · the   │
//!  │ magic "MOLS" u32 · version u16 ·      │ segments (first block, blocks,     │
//!  │ reserved u16                          │ header checksum) · the tail block  │
//!  └───────────────────────────────────────┴────────────────────────────────────┘
//! ```
//!
//! Taking a snapshot ([`ShardCore::snapshot_start`](crate::shard::ShardCore))
//! happens between groups and copies only the small, mutable part (accounts,
//! states, the block being filled); the full transfer blocks are shared with
//! the writer (`Arc`, never mutated). [`write()`] then runs anywhere — the
//! runtime runs it on a background thread while the shard goes on — and
//! writes the blocks not yet in a segment as one new segment file, then the
//! snapshot file. Every file is written to `*.tmp`, fsynced, renamed, and the
//! directory fsynced: it either is complete or does not exist. The newest two
//! snapshots are kept; segments are history and are kept (their blocks are
//! read back through a read-only mapping once evicted from memory).
//!
//! Loading checks both checksums of the snapshot, validates the archive
//! (rkyv's bytecheck), checks each segment's header against the checksum the
//! snapshot recorded and each block against its own checksum (read with
//! `pread`, not through the mapping, so loading leaves no history resident),
//! and rebuilds the engine through [`Engine::importer`], which refuses any
//! state that breaks a limit or an invariant; a snapshot failing any of these
//! is skipped for an older one, or for a full journal replay. Versions 1 and
//! 2 (whole state in the snapshot file) still load.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytemuck::{Pod, Zeroable};
use molly_engine::{
    AccountBalance, Block, ColdBlock, Config, Engine, EngineState, SnapshotParts, Transfer, BLOCK_TRANSFERS,
};
use xxhash_rust::xxh3::xxh3_128;

use crate::journal::ReadAt;

/// `b"MOLS"` little-endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"MOLS");
/// Format version (3: transfer history in segment files; 2 added the open
/// cross-shard intents; 1 and 2 still load).
pub const VERSION: u16 = 3;
/// Snapshots kept in a shard's directory.
pub const KEEP: usize = 2;
const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".molly";

/// `b"MOLT"` little-endian: a transfer segment.
pub const SEGMENT_MAGIC: u32 = u32::from_le_bytes(*b"MOLT");
const SEGMENT_VERSION: u16 = 1;
const SEGMENT_PREFIX: &str = "transfers-";
const SEGMENT_SUFFIX: &str = ".seg";
/// Blocks per segment file at most (1 GiB of records).
pub const SEGMENT_BLOCKS_MAX: usize = 128;
/// A segment's header: fields, then one checksum per block, zero padded to
/// a page so the records are page-aligned for mapping.
const SEGMENT_HEADER_SIZE: usize = 4096;
const BLOCK_BYTES: usize = BLOCK_TRANSFERS * core::mem::size_of::<Transfer>();
const _: () = assert!(64 + SEGMENT_BLOCKS_MAX * 16 <= SEGMENT_HEADER_SIZE);

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct Header {
    checksum_header: u128,
    checksum_body: u128,
    next_sequence: u64,
    journal_offset: u64,
    body_len: u64,
    magic: u32,
    version: u16,
    reserved: u16,
}

const _: () = assert!(core::mem::size_of::<Header>() == 64);

impl Header {
    fn compute_checksum(&self) -> u128 {
        xxh3_128(&bytemuck::bytes_of(self)[16..])
    }
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
struct SegmentHeader {
    /// xxh3-128 of the header's bytes after this field (fields, block
    /// checksums and padding).
    checksum_header: u128,
    magic: u32,
    version: u16,
    reserved: u16,
    first_block: u64,
    blocks: u64,
    block_transfers: u64,
    reserved_2: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<SegmentHeader>() == 64);

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct BalanceRun {
    slot: u32,
    points: Vec<u8>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapshotBodyV1 {
    accounts: Vec<u8>,
    transfers: Vec<u8>,
    transfer_states: Vec<u8>,
    balances: Vec<BalanceRun>,
    clock_ns: u64,
    timestamp_last: u64,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapshotBodyV2 {
    accounts: Vec<u8>,
    transfers: Vec<u8>,
    transfer_states: Vec<u8>,
    balances: Vec<BalanceRun>,
    clock_ns: u64,
    timestamp_last: u64,
    /// Open cross-shard intents: the transfers as their clients sent them.
    intents: Vec<u8>,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct SnapshotBody {
    accounts: Vec<u8>,
    transfer_states: Vec<u8>,
    balances: Vec<BalanceRun>,
    clock_ns: u64,
    timestamp_last: u64,
    /// Open cross-shard intents: the transfers as their clients sent them.
    intents: Vec<u8>,
    /// The segments holding the full blocks, in order.
    segments: Vec<SegmentRef>,
    /// The records of the block being filled.
    tail: Vec<u8>,
}

/// A segment file as a snapshot names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub struct SegmentRef {
    /// Its first block.
    pub first_block: u64,
    /// Blocks it holds.
    pub blocks: u64,
    /// Its header's checksum (which covers each block's checksum).
    pub checksum: u128,
}

/// Where in the journal a snapshot stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    /// The sequence of the first journal entry not in the snapshot.
    pub next_sequence: u64,
    /// The journal offset where that entry starts.
    pub journal_offset: u64,
}

/// Why a snapshot could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// A file operation failed.
    #[error("snapshot {path}: {what}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operation.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// Serialising failed.
    #[error("snapshot {path}: encoding: {reason}")]
    Encode {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// An earlier snapshot is still being written, or the shard failed.
    #[error("a snapshot is already being written, or the shard stopped writing")]
    Busy,
}

fn file_name(next_sequence: u64) -> String {
    format!("{PREFIX}{next_sequence:020}{SUFFIX}")
}

fn segment_name(first_block: u64) -> String {
    format!("{SEGMENT_PREFIX}{first_block:010}{SEGMENT_SUFFIX}")
}

/// The file operations snapshots need, so the same code runs on the real
/// file system ([`Disk`], what Molly uses) and on the simulator's
/// (`sim::files`), which loses, keeps or tears what was not synced when
/// power fails, forgets a rename until its directory is synced, flips bits
/// and fails reads. Only snapshot writing and loading go through it: the
/// shard's hot path (groups, and reads of cold blocks through
/// [`ColdBlock::records`]) does not.
pub trait Storage {
    /// A file being written.
    type Writer;
    /// A file open for reading.
    type Reader: ReadAt;
    /// Creates (or truncates) `path` for writing.
    fn create(&self, path: &Path) -> std::io::Result<Self::Writer>;
    /// Appends `bytes`.
    fn write_all(&self, file: &mut Self::Writer, bytes: &[u8]) -> std::io::Result<()>;
    /// Makes what was written durable (fsync).
    fn sync(&self, file: &mut Self::Writer) -> std::io::Result<()>;
    /// Renames `from` to `to`, replacing `to` (durable once `to`'s directory is synced).
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()>;
    /// Makes the directory's entries durable (fsync of the directory).
    fn sync_dir(&self, dir: &Path) -> std::io::Result<()>;
    /// Opens `path` for reading.
    fn open(&self, path: &Path) -> std::io::Result<Self::Reader>;
    /// The paths of the files in `dir`, in no particular order.
    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>>;
    /// Removes `path`.
    fn remove(&self, path: &Path) -> std::io::Result<()>;
    /// One cold handle per block for the `blocks` blocks of `block_bytes`
    /// that start at `offset` of the file `path`, open as `file`. The file
    /// must never change again (segments are written once, then renamed
    /// into place).
    fn map_blocks(
        &self,
        path: &Path,
        file: &Self::Reader,
        offset: usize,
        blocks: usize,
        block_bytes: usize,
    ) -> std::io::Result<Vec<Arc<dyn ColdBlock>>>;
}

/// Bytes a [`Paced`] writer hands to the device at a time.
pub const PACE_CHUNK_BYTES: usize = 1 << 20;

/// The real file system with writes paced to `bytes_per_s` (0: not paced):
/// each [`PACE_CHUNK_BYTES`] written is sent to the device and waited for
/// (`sync_file_range`, no cache flush) before the next, and the writer
/// sleeps as needed to hold the average. The runtime's background snapshot
/// writer uses it: a snapshot written at the device's full speed (measured:
/// ~300 MB in 200 ms bursts, 4 MiB requests queued deep) holds the journal's
/// 1 MiB group writes behind it for 40–50 ms; paced, at most one chunk is
/// ahead of a journal write. Reads, renames and mappings are [`Disk`]'s.
#[derive(Debug)]
pub struct Paced {
    pace: Pace,
}

impl Paced {
    /// Writes paced to `bytes_per_s` (0: as fast as the device takes them).
    pub fn new(bytes_per_s: u64) -> Self {
        Self { pace: Pace::new(bytes_per_s) }
    }
}

/// A background writer's rate: after each chunk, [`Pace::wrote`] sleeps
/// until the bytes written so far are due at `bytes_per_s` (0: never). A
/// writer that fell behind (a slow device) does not burst to catch up.
/// Used by [`Paced`] and by the journal's spare writer ([`crate::prealloc`]).
#[derive(Debug)]
pub struct Pace {
    bytes_per_s: u64,
    /// When the bytes written so far are due at the paced rate.
    due: std::cell::Cell<Option<std::time::Instant>>,
}

impl Pace {
    /// A pace of `bytes_per_s` (0: not paced).
    pub fn new(bytes_per_s: u64) -> Self {
        Self { bytes_per_s, due: std::cell::Cell::new(None) }
    }

    /// True when this pace never sleeps.
    pub fn is_unpaced(&self) -> bool {
        self.bytes_per_s == 0
    }

    /// `bytes` were just written: sleeps until they are due.
    pub fn wrote(&self, bytes: usize) {
        if self.is_unpaced() {
            return;
        }
        let now = std::time::Instant::now();
        let cost = std::time::Duration::from_secs_f64(bytes as f64 / self.bytes_per_s as f64);
        let due = self.due.get().map_or(now, |due| due.max(now)) + cost;
        self.due.set(Some(due));
        if due > now {
            std::thread::sleep(due - now);
        }
    }
}

/// A file being written by [`Paced`]: the file and how much of it is on its way to the device.
#[derive(Debug)]
pub struct PacedFile {
    file: File,
    offset: u64,
}

impl Storage for Paced {
    type Writer = PacedFile;
    type Reader = File;

    fn create(&self, path: &Path) -> std::io::Result<PacedFile> {
        Ok(PacedFile { file: Disk.create(path)?, offset: 0 })
    }

    fn write_all(&self, file: &mut PacedFile, bytes: &[u8]) -> std::io::Result<()> {
        if self.pace.is_unpaced() {
            return file.file.write_all(bytes);
        }
        for chunk in bytes.chunks(PACE_CHUNK_BYTES) {
            file.file.write_all(chunk)?;
            sync_range(&file.file, file.offset, chunk.len())?;
            file.offset += chunk.len() as u64;
            self.pace.wrote(chunk.len());
        }
        Ok(())
    }

    fn sync(&self, file: &mut PacedFile) -> std::io::Result<()> {
        file.file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        Disk.rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        Disk.sync_dir(dir)
    }

    fn open(&self, path: &Path) -> std::io::Result<File> {
        Disk.open(path)
    }

    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        Disk.list(dir)
    }

    fn remove(&self, path: &Path) -> std::io::Result<()> {
        Disk.remove(path)
    }

    fn map_blocks(
        &self,
        path: &Path,
        file: &File,
        offset: usize,
        blocks: usize,
        block_bytes: usize,
    ) -> std::io::Result<Vec<Arc<dyn ColdBlock>>> {
        Disk.map_blocks(path, file, offset, blocks, block_bytes)
    }
}

/// Starts writing `len` bytes of `file` at `offset` to the device and waits
/// until they are written (not flushed from the device's cache: the final
/// fsync does that).
fn sync_range(file: &File, offset: u64, len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let flags =
        libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a plain syscall on an open descriptor; no memory is passed.
    let result = unsafe { libc::sync_file_range(file.as_raw_fd(), offset as i64, len as i64, flags) };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The real file system: `std::fs`, `pread`, and read-only `memmap2`
/// mappings of segment blocks.
#[derive(Clone, Copy, Debug, Default)]
pub struct Disk;

impl Storage for Disk {
    type Writer = File;
    type Reader = File;

    fn create(&self, path: &Path) -> std::io::Result<File> {
        File::create(path)
    }

    fn write_all(&self, file: &mut File, bytes: &[u8]) -> std::io::Result<()> {
        file.write_all(bytes)
    }

    fn sync(&self, file: &mut File) -> std::io::Result<()> {
        file.sync_all()
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        File::open(dir).and_then(|d| d.sync_all())
    }

    fn open(&self, path: &Path) -> std::io::Result<File> {
        File::open(path)
    }

    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        // An entry that cannot be read is left out, as if absent.
        Ok(std::fs::read_dir(dir)?.flatten().map(|entry| entry.path()).collect())
    }

    fn remove(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_file(path)
    }

    fn map_blocks(
        &self,
        _path: &Path,
        file: &File,
        offset: usize,
        blocks: usize,
        block_bytes: usize,
    ) -> std::io::Result<Vec<Arc<dyn ColdBlock>>> {
        assert_eq!(block_bytes, BLOCK_BYTES, "mapped blocks are engine blocks");
        // SAFETY: segment files are immutable once renamed into place (see
        // `MappedBlock`): nothing in Molly opens them for writing, so the mapped
        // bytes cannot change under the shared references handed out.
        let map = Arc::new(unsafe { memmap2::Mmap::map(file)? });
        if map.len() < offset + blocks * block_bytes {
            return Err(std::io::Error::other("shorter than its blocks"));
        }
        Ok((0..blocks)
            .map(|i| {
                Arc::new(MappedBlock { map: map.clone(), offset: offset + i * block_bytes })
                    as Arc<dyn ColdBlock>
            })
            .collect())
    }
}

/// A full block read back through a read-only mapping of its segment file.
///
/// Segment files are written once (to `*.tmp`, then renamed) and never
/// opened for writing again, which is what makes reading them through a
/// mapping sound. A read of an evicted block is a page fault the first time
/// (served by the page cache, or the disk): cold history costs latency only
/// when it is read.
struct MappedBlock {
    map: Arc<memmap2::Mmap>,
    offset: usize,
}

impl ColdBlock for MappedBlock {
    fn records(&self) -> &[Transfer] {
        bytemuck::cast_slice(&self.map[self.offset..self.offset + BLOCK_BYTES])
    }
}

/// Maps the blocks of segment `path` read-only and returns one cold handle
/// per block, after checking the file's length.
fn map_segment<S: Storage>(
    storage: &S,
    path: &Path,
    blocks: usize,
) -> std::io::Result<Vec<Arc<dyn ColdBlock>>> {
    let file = storage.open(path)?;
    let expected = (SEGMENT_HEADER_SIZE + blocks * BLOCK_BYTES) as u64;
    if file.byte_len()? != expected {
        return Err(std::io::Error::other(format!("is not {expected} bytes long")));
    }
    storage.map_blocks(path, &file, SEGMENT_HEADER_SIZE, blocks, BLOCK_BYTES)
}

/// Writes `parts` as the file `path` in `dir`, atomically: to `*.tmp`,
/// fsynced, renamed into place, the directory fsynced. The file either is
/// complete or does not exist.
fn write_atomically<'a, S: Storage>(
    storage: &S,
    dir: &Path,
    path: &Path,
    parts: impl Iterator<Item = &'a [u8]>,
) -> Result<(), SnapshotError> {
    let io = |what| move |source| SnapshotError::Io { path: path.to_path_buf(), what, source };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    {
        let mut file = storage.create(&tmp).map_err(io("creating"))?;
        for part in parts {
            storage.write_all(&mut file, part).map_err(io("writing"))?;
        }
        storage.sync(&mut file).map_err(io("syncing"))?;
    }
    storage.rename(&tmp, path).map_err(io("renaming into place"))?;
    storage.sync_dir(dir).map_err(io("syncing the directory"))
}

/// Writes `blocks` (the full blocks from `first_block` on) as one segment
/// file, durably, and maps it.
fn write_segment<S: Storage>(
    storage: &S,
    dir: &Path,
    first_block: u64,
    blocks: &[Block],
) -> Result<(SegmentRef, Vec<Arc<dyn ColdBlock>>), SnapshotError> {
    assert!(!blocks.is_empty() && blocks.len() <= SEGMENT_BLOCKS_MAX);
    let path = dir.join(segment_name(first_block));
    let io = |what| {
        let path = path.clone();
        move |source| SnapshotError::Io { path, what, source }
    };
    let mut header_bytes = vec![0u8; SEGMENT_HEADER_SIZE];
    let fields = SegmentHeader {
        checksum_header: 0,
        magic: SEGMENT_MAGIC,
        version: SEGMENT_VERSION,
        reserved: 0,
        first_block,
        blocks: blocks.len() as u64,
        block_transfers: BLOCK_TRANSFERS as u64,
        reserved_2: [0; 16],
    };
    header_bytes[..64].copy_from_slice(bytemuck::bytes_of(&fields));
    for (i, block) in blocks.iter().enumerate() {
        let checksum = xxh3_128(bytemuck::cast_slice(block.records()));
        header_bytes[64 + i * 16..80 + i * 16].copy_from_slice(&checksum.to_le_bytes());
    }
    let checksum = xxh3_128(&header_bytes[16..]);
    header_bytes[..16].copy_from_slice(&checksum.to_le_bytes());
    let parts =
        std::iter::once(&header_bytes[..]).chain(blocks.iter().map(|b| bytemuck::cast_slice(b.records())));
    write_atomically(storage, dir, &path, parts)?;
    let cold = map_segment(storage, &path, blocks.len()).map_err(io("mapping"))?;
    Ok((SegmentRef { first_block, blocks: blocks.len() as u64, checksum }, cold))
}

/// A snapshot to write: taken on the shard between groups, written by
/// [`write()`] wherever the caller likes (it shares no mutable state).
#[derive(Debug)]
pub struct SnapshotJob {
    /// The shard's directory.
    pub dir: PathBuf,
    /// The journal position the state stands at.
    pub position: Position,
    /// The engine's state (full blocks shared, the rest copied).
    pub parts: SnapshotParts,
    /// The open cross-shard intents.
    pub intents: Vec<Transfer>,
    /// The segments already written (they hold the blocks before
    /// `parts.first_block`).
    pub segments: Vec<SegmentRef>,
}

/// A written snapshot.
pub struct SnapshotDone {
    /// The snapshot file.
    pub path: PathBuf,
    /// Every segment it names (the shard's list from now on).
    pub segments: Vec<SegmentRef>,
    /// The blocks written into new segments, as cold handles by block index.
    pub cold: Vec<(usize, Arc<dyn ColdBlock>)>,
    /// Bytes written (segments and snapshot file).
    pub bytes: u64,
    /// The job's parts, emptied of blocks (it holds no block any more), for
    /// the next capture to copy into ([`molly_engine::Engine::snapshot_parts_reusing`]).
    pub reuse: molly_engine::SnapshotParts,
}

impl std::fmt::Debug for SnapshotDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotDone")
            .field("path", &self.path)
            .field("segments", &self.segments.len())
            .field("cold", &self.cold.len())
            .field("bytes", &self.bytes)
            .finish()
    }
}

/// Blocks the segments in `segments` hold.
pub fn segment_blocks(segments: &[SegmentRef]) -> usize {
    segments.iter().map(|s| s.blocks as usize).sum()
}

/// Writes the job's new full blocks as segment files, then the snapshot
/// file, each atomically, then removes all but the newest [`KEEP`] snapshots
/// (on the real file system: [`write_to`] with [`Disk`]).
pub fn write(job: SnapshotJob) -> Result<SnapshotDone, SnapshotError> {
    write_to(&Disk, job)
}

/// [`write()`] on `storage`.
pub fn write_to<S: Storage>(storage: &S, job: SnapshotJob) -> Result<SnapshotDone, SnapshotError> {
    let SnapshotJob { dir, position, mut parts, intents, mut segments } = job;
    assert_eq!(segment_blocks(&segments), parts.first_block, "the segments hold the blocks before the job's");
    // `*.tmp` files are what a crash or a failed write left behind (one
    // snapshot is written at a time per shard): never loaded, removed here.
    for leftover in storage.list(&dir).unwrap_or_default() {
        if leftover.extension().is_some_and(|e| e == "tmp") {
            let _ = storage.remove(&leftover);
        }
    }
    let path = dir.join(file_name(position.next_sequence));
    let mut cold = Vec::with_capacity(parts.blocks.len());
    let mut bytes_written = 0u64;
    for (i, chunk) in parts.blocks.chunks(SEGMENT_BLOCKS_MAX).enumerate() {
        let first_block = parts.first_block + i * SEGMENT_BLOCKS_MAX;
        let (segment, handles) = write_segment(storage, &dir, first_block as u64, chunk)?;
        segments.push(segment);
        cold.extend(handles.into_iter().enumerate().map(|(j, handle)| (first_block + j, handle)));
        bytes_written += (SEGMENT_HEADER_SIZE + chunk.len() * BLOCK_BYTES) as u64;
    }
    let body = SnapshotBody {
        accounts: bytemuck::cast_slice(&parts.accounts).to_vec(),
        transfer_states: std::mem::take(&mut parts.transfer_states),
        balances: parts
            .balances
            .iter()
            .map(|(slot, points)| BalanceRun { slot: *slot, points: bytemuck::cast_slice(points).to_vec() })
            .collect(),
        clock_ns: parts.clock_ns,
        timestamp_last: parts.timestamp_last,
        intents: bytemuck::cast_slice(&intents).to_vec(),
        segments: segments.clone(),
        tail: bytemuck::cast_slice(&parts.tail).to_vec(),
    };
    let bytes = rkyv::to_bytes::<rkyv::rancor::Error>(&body)
        .map_err(|e| SnapshotError::Encode { path: path.clone(), reason: e.to_string() })?;
    let mut header = Header {
        checksum_header: 0,
        checksum_body: xxh3_128(&bytes),
        next_sequence: position.next_sequence,
        journal_offset: position.journal_offset,
        body_len: bytes.len() as u64,
        magic: MAGIC,
        version: VERSION,
        reserved: 0,
    };
    header.checksum_header = header.compute_checksum();
    write_atomically(storage, &dir, &path, [bytemuck::bytes_of(&header), &bytes[..]].into_iter())?;
    bytes_written += 64 + bytes.len() as u64;
    for old in list_in(storage, &dir).into_iter().rev().skip(KEEP) {
        let _ = storage.remove(&old);
    }
    parts.blocks.clear();
    parts.transfer_states = body.transfer_states;
    Ok(SnapshotDone { path, segments, cold, bytes: bytes_written, reuse: parts })
}

/// Snapshot files in `dir`, oldest first.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    list_in(&Disk, dir)
}

/// [`list`] on `storage`.
pub fn list_in<S: Storage>(storage: &S, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = storage
        .list(dir)
        .into_iter()
        .flatten()
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        })
        .collect();
    found.sort();
    found
}

/// A snapshot loaded into an engine.
#[derive(Debug)]
pub struct LoadedSnapshot {
    /// The engine.
    pub engine: Engine,
    /// Where in the journal it stands.
    pub position: Position,
    /// The open cross-shard intents it kept.
    pub intents: Vec<Transfer>,
    /// The segments holding its full blocks.
    pub segments: Vec<SegmentRef>,
}

fn records(bytes: &[u8], what: &str) -> Result<(), String> {
    if bytes.len().is_multiple_of(128) {
        Ok(())
    } else {
        Err(format!("{what} are not whole 128-byte records"))
    }
}

fn balance_runs(runs: &[BalanceRun]) -> Result<Vec<(u32, Vec<AccountBalance>)>, String> {
    let mut balances = Vec::with_capacity(runs.len());
    for run in runs {
        records(&run.points, "balance points")?;
        balances.push((run.slot, bytemuck::pod_collect_to_vec::<u8, AccountBalance>(&run.points)));
    }
    Ok(balances)
}

/// Loads one snapshot file (and the segments it names) into an engine, or
/// says why it cannot be used.
pub fn load(path: &Path, config: Config) -> Result<LoadedSnapshot, String> {
    load_from(&Disk, path, config)
}

/// Reads the whole file `path`.
fn read_all<S: Storage>(storage: &S, path: &Path) -> std::io::Result<Vec<u8>> {
    let file = storage.open(path)?;
    let len = usize::try_from(file.byte_len()?).map_err(std::io::Error::other)?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, 0)?;
    Ok(bytes)
}

/// [`load`] on `storage`.
pub fn load_from<S: Storage>(storage: &S, path: &Path, config: Config) -> Result<LoadedSnapshot, String> {
    let bytes = read_all(storage, path).map_err(|e| format!("reading: {e}"))?;
    if bytes.len() < 64 {
        return Err("shorter than its header".into());
    }
    let header: Header = bytemuck::pod_read_unaligned(&bytes[..64]);
    if header.magic != MAGIC
        || !(1..=VERSION).contains(&header.version)
        || header.checksum_header != header.compute_checksum()
    {
        return Err("header fails its checksum or format".into());
    }
    let body = &bytes[64..];
    if body.len() as u64 != header.body_len || xxh3_128(body) != header.checksum_body {
        return Err("body fails its checksum or length".into());
    }
    let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(body.len());
    aligned.extend_from_slice(body);
    drop(bytes);
    let position = Position { next_sequence: header.next_sequence, journal_offset: header.journal_offset };
    let invalid = |e: rkyv::rancor::Error| format!("archive does not validate: {e}");
    if header.version < 3 {
        let (body, intents) = if header.version == 1 {
            (rkyv::from_bytes::<SnapshotBodyV1, rkyv::rancor::Error>(&aligned).map_err(invalid)?, Vec::new())
        } else {
            let v2 = rkyv::from_bytes::<SnapshotBodyV2, rkyv::rancor::Error>(&aligned).map_err(invalid)?;
            let intents = v2.intents;
            let v1 = SnapshotBodyV1 {
                accounts: v2.accounts,
                transfers: v2.transfers,
                transfer_states: v2.transfer_states,
                balances: v2.balances,
                clock_ns: v2.clock_ns,
                timestamp_last: v2.timestamp_last,
            };
            (v1, intents)
        };
        records(&body.accounts, "accounts")?;
        records(&body.transfers, "transfers")?;
        records(&intents, "intents")?;
        let state = EngineState {
            accounts: bytemuck::pod_collect_to_vec(&body.accounts),
            transfers: bytemuck::pod_collect_to_vec(&body.transfers),
            transfer_states: body.transfer_states,
            balances: balance_runs(&body.balances)?,
            clock_ns: body.clock_ns,
            timestamp_last: body.timestamp_last,
        };
        let engine = Engine::import(config, state).map_err(|e| e.to_string())?;
        let intents = bytemuck::pod_collect_to_vec::<u8, Transfer>(&intents);
        return Ok(LoadedSnapshot { engine, position, intents, segments: Vec::new() });
    }
    let body = rkyv::from_bytes::<SnapshotBody, rkyv::rancor::Error>(&aligned).map_err(invalid)?;
    drop(aligned);
    records(&body.accounts, "accounts")?;
    records(&body.tail, "tail records")?;
    records(&body.intents, "intents")?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut importer =
        Engine::importer(config, bytemuck::pod_collect_to_vec(&body.accounts), body.transfer_states)
            .map_err(|e| e.to_string())?;
    let mut buffer = vec![Transfer::default(); BLOCK_TRANSFERS];
    let mut next_block = 0u64;
    for segment in &body.segments {
        if segment.first_block != next_block
            || segment.blocks == 0
            || segment.blocks > SEGMENT_BLOCKS_MAX as u64
        {
            return Err(format!("segment list is not contiguous at block {next_block}"));
        }
        next_block += segment.blocks;
        load_segment(storage, dir, segment, &mut buffer, &mut importer)?;
    }
    importer.tail(&bytemuck::pod_collect_to_vec::<u8, Transfer>(&body.tail)).map_err(|e| e.to_string())?;
    let engine = importer
        .finish(balance_runs(&body.balances)?, body.clock_ns, body.timestamp_last)
        .map_err(|e| e.to_string())?;
    Ok(LoadedSnapshot {
        engine,
        position,
        intents: bytemuck::pod_collect_to_vec::<u8, Transfer>(&body.intents),
        segments: body.segments,
    })
}

/// Checks one segment against `segment` and its block checksums, and hands
/// its blocks (cold, mapped) to the importer.
fn load_segment<S: Storage>(
    storage: &S,
    dir: &Path,
    segment: &SegmentRef,
    buffer: &mut [Transfer],
    importer: &mut molly_engine::Importer,
) -> Result<(), String> {
    let name = segment_name(segment.first_block);
    let path = dir.join(&name);
    let fail = |what: &str| format!("segment {name}: {what}");
    let file = storage.open(&path).map_err(|e| fail(&format!("opening: {e}")))?;
    let mut header_bytes = vec![0u8; SEGMENT_HEADER_SIZE];
    file.read_exact_at(&mut header_bytes, 0).map_err(|e| fail(&format!("reading its header: {e}")))?;
    let header: SegmentHeader = bytemuck::pod_read_unaligned(&header_bytes[..64]);
    if header.checksum_header != xxh3_128(&header_bytes[16..])
        || header.checksum_header != segment.checksum
        || header.magic != SEGMENT_MAGIC
        || header.version != SEGMENT_VERSION
        || header.first_block != segment.first_block
        || header.blocks != segment.blocks
        || header.block_transfers != BLOCK_TRANSFERS as u64
    {
        return Err(fail("header fails its checksum or does not match the snapshot"));
    }
    let cold =
        map_segment(storage, &path, segment.blocks as usize).map_err(|e| fail(&format!("mapping: {e}")))?;
    for (i, handle) in cold.into_iter().enumerate() {
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(buffer);
        file.read_exact_at(bytes, (SEGMENT_HEADER_SIZE + i * BLOCK_BYTES) as u64)
            .map_err(|e| fail(&format!("reading block {i}: {e}")))?;
        let expected =
            u128::from_le_bytes(header_bytes[64 + i * 16..80 + i * 16].try_into().expect("16 bytes"));
        if xxh3_128(bytes) != expected {
            return Err(fail(&format!("block {i} fails its checksum")));
        }
        importer.block(Block::Cold(handle), buffer).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// What loading found: the snapshot used, if any, and every one skipped.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The newest usable snapshot, loaded, and its file.
    pub used: Option<(LoadedSnapshot, PathBuf)>,
    /// Snapshots skipped, newest first, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Loads the newest usable snapshot in `dir`, skipping broken ones.
pub fn load_newest(dir: &Path, config: &Config) -> Loaded {
    load_newest_from(&Disk, dir, config)
}

/// [`load_newest`] on `storage`.
pub fn load_newest_from<S: Storage>(storage: &S, dir: &Path, config: &Config) -> Loaded {
    let mut loaded = Loaded::default();
    for path in list_in(storage, dir).into_iter().rev() {
        match load_from(storage, &path, config.clone()) {
            Ok(snapshot) => {
                loaded.used = Some((snapshot, path));
                break;
            }
            Err(reason) => loaded.skipped.push((path, reason)),
        }
    }
    loaded
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A paced file holds exactly the bytes written, across chunk
    /// boundaries and calls, paced or not.
    #[test]
    fn paced_writes_keep_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let bytes: Vec<u8> = (0..PACE_CHUNK_BYTES * 3 + 12_345).map(|i| (i * 31 % 251) as u8).collect();
        for rate in [0, 256 << 20] {
            let storage = Paced::new(rate);
            let path = dir.path().join(format!("paced-{rate}"));
            let mut file = storage.create(&path).unwrap();
            let (first, rest) = bytes.split_at(PACE_CHUNK_BYTES / 2 + 7);
            storage.write_all(&mut file, first).unwrap();
            storage.write_all(&mut file, rest).unwrap();
            storage.sync(&mut file).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), bytes, "pace {rate}");
        }
    }
}
