//! The write-ahead journal format: checksummed entries, written in
//! sector-aligned groups, and the scan that recovers them.
//!
//! ```text
//!  group (written with one write + one fdatasync, sector-aligned, zero-padded)
//!  ┌────────────┬──────────────────┬────────────┬──────────┬──────────┐
//!  │ header 64B │ body: n × 128 B  │ header 64B │ body ... │ 0 0 0 0  │
//!  └────────────┴──────────────────┴────────────┴──────────┴──────────┘
//!  header: checksum_header u128 · checksum_body u128 · sequence u64 · now_ns u64
//!          · magic u32 "MOLJ" · body_len u32 · operation u16 · version u8 · flags u8 · event_count u32
//! ```
//!
//! Checksums are xxh3-128: the header's covers its bytes 16..64, the body's
//! covers the body. An entry holds one engine command (a tick or one batch of
//! accounts or transfers); sequences increase by one per entry.
//!
//! Recovery reads entries in order until the first one that is not valid.
//! If no valid group starts at any later sector boundary, that point is a
//! torn tail (a write that never completed, so never acknowledged): the file
//! is cut there. If a valid group does follow, an entry in the middle is
//! corrupt, and recovery refuses with the file and offset: dropping it would
//! drop acknowledged data.
//!
//! Known limit: a bit flip in the *last* group at rest looks exactly like a
//! torn write and is cut. Only a second copy (a replica, or the external
//! PostgreSQL copy of triple-check accounting) can tell them apart.

use bytemuck::{Pod, Zeroable};
use molly_engine::{Account, Transfer};
use xxhash_rust::xxh3::xxh3_128;

/// Alignment and granularity of group writes (direct I/O needs it).
pub const SECTOR_SIZE: usize = 4096;
/// `b"MOLJ"` little-endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"MOLJ");
/// Format version.
pub const VERSION: u8 = 1;
/// Entry flag: the first entry of a group (groups start on a sector boundary).
pub const FLAG_GROUP_START: u8 = 1;
/// Size of an entry header.
pub const HEADER_SIZE: usize = 64;
/// Size of one record in a body.
pub const RECORD_SIZE: usize = 128;

/// What an entry holds.
#[repr(u16)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Operation {
    /// Logical time advanced to `now_ns`.
    Tick = 1,
    /// A batch of accounts.
    CreateAccounts = 2,
    /// A batch of transfers.
    CreateTransfers = 3,
    /// Credit legs of cross-shard transfers, from one peer shard (the
    /// credit shard's step 2; see `cross`).
    Credits = 4,
    /// Posts and voids that settle this shard's cross-shard intents (the
    /// debit shard's step 3; see `cross`).
    Settles = 5,
}

impl Operation {
    fn from_u16(value: u16) -> Option<Self> {
        match value {
            1 => Some(Self::Tick),
            2 => Some(Self::CreateAccounts),
            3 => Some(Self::CreateTransfers),
            4 => Some(Self::Credits),
            5 => Some(Self::Settles),
            _ => None,
        }
    }
}

/// An entry header, exactly as on disk.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Pod, Zeroable)]
pub struct EntryHeader {
    /// xxh3-128 of header bytes 16..64.
    pub checksum_header: u128,
    /// xxh3-128 of the body.
    pub checksum_body: u128,
    /// Entry number: the previous entry's + 1.
    pub sequence: u64,
    /// For `Tick`: the new logical time; otherwise the shard's time when written.
    pub now_ns: u64,
    /// [`MAGIC`].
    pub magic: u32,
    /// Body bytes: `event_count * 128`.
    pub body_len: u32,
    /// An [`Operation`].
    pub operation: u16,
    /// [`VERSION`].
    pub version: u8,
    /// [`FLAG_GROUP_START`] or 0.
    pub flags: u8,
    /// Records in the body.
    pub event_count: u32,
}

const _: () = assert!(core::mem::size_of::<EntryHeader>() == HEADER_SIZE);
const _: () = assert!(SECTOR_SIZE.is_multiple_of(HEADER_SIZE));

impl EntryHeader {
    fn compute_checksum(&self) -> u128 {
        xxh3_128(&bytemuck::bytes_of(self)[16..])
    }
}

/// One engine command, borrowed for writing.
#[derive(Clone, Copy, Debug)]
pub enum Command<'a> {
    /// Advance logical time.
    Tick {
        /// The new time.
        now_ns: u64,
    },
    /// Create accounts.
    CreateAccounts(&'a [Account]),
    /// Create transfers.
    CreateTransfers(&'a [Transfer]),
    /// Cross-shard credit legs from a peer (shard-internal).
    Credits(&'a [Transfer]),
    /// Settles of this shard's cross-shard intents (shard-internal).
    Settles(&'a [Transfer]),
}

/// One engine command, owned, as recovered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommandBuf {
    /// Advance logical time.
    Tick {
        /// The new time.
        now_ns: u64,
    },
    /// Create accounts.
    CreateAccounts(Vec<Account>),
    /// Create transfers.
    CreateTransfers(Vec<Transfer>),
    /// Cross-shard credit legs from a peer (shard-internal).
    Credits(Vec<Transfer>),
    /// Settles of this shard's cross-shard intents (shard-internal).
    Settles(Vec<Transfer>),
}

impl CommandBuf {
    /// Borrows it as a [`Command`].
    pub fn as_command(&self) -> Command<'_> {
        match self {
            CommandBuf::Tick { now_ns } => Command::Tick { now_ns: *now_ns },
            CommandBuf::CreateAccounts(a) => Command::CreateAccounts(a),
            CommandBuf::CreateTransfers(t) => Command::CreateTransfers(t),
            CommandBuf::Credits(t) => Command::Credits(t),
            CommandBuf::Settles(t) => Command::Settles(t),
        }
    }
}

/// A sector, aligned for direct I/O.
#[repr(C, align(4096))]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Sector([u8; SECTOR_SIZE]);

/// Builds one group: entries appended back to back, then zero-padded to a
/// whole number of sectors, in a sector-aligned buffer.
pub struct GroupBuffer {
    sectors: Vec<Sector>,
    len: usize,
    bytes_max: usize,
}

impl core::fmt::Debug for GroupBuffer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("GroupBuffer").field("len", &self.len).field("bytes_max", &self.bytes_max).finish()
    }
}

impl GroupBuffer {
    /// A buffer for groups of up to `bytes_max` bytes (rounded up to sectors),
    /// allocated once.
    pub fn new(bytes_max: usize) -> Self {
        let sectors = bytes_max.div_ceil(SECTOR_SIZE).max(1);
        Self { sectors: vec![Sector::zeroed(); sectors], len: 0, bytes_max: sectors * SECTOR_SIZE }
    }

    /// The most bytes one group holds.
    pub fn capacity(&self) -> usize {
        self.bytes_max
    }

    /// Bytes appended so far (before padding).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is appended.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes one entry of `command` takes.
    pub fn entry_size(command: &Command<'_>) -> usize {
        HEADER_SIZE
            + match command {
                Command::Tick { .. } => 0,
                Command::CreateAccounts(a) => a.len() * RECORD_SIZE,
                Command::CreateTransfers(t) | Command::Credits(t) | Command::Settles(t) => {
                    t.len() * RECORD_SIZE
                }
            }
    }

    /// True when an entry of `command` still fits in this group.
    pub fn fits(&self, command: &Command<'_>) -> bool {
        self.len + Self::entry_size(command) <= self.bytes_max
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        bytemuck::cast_slice_mut(&mut self.sectors)
    }

    /// Appends one entry. The caller checked [`GroupBuffer::fits`].
    pub fn push(&mut self, sequence: u64, now_ns: u64, command: &Command<'_>) {
        assert!(self.fits(command), "entry does not fit the group");
        let (operation, body): (Operation, &[u8]) = match command {
            Command::Tick { .. } => (Operation::Tick, &[]),
            Command::CreateAccounts(a) => (Operation::CreateAccounts, bytemuck::cast_slice(a)),
            Command::CreateTransfers(t) => (Operation::CreateTransfers, bytemuck::cast_slice(t)),
            Command::Credits(t) => (Operation::Credits, bytemuck::cast_slice(t)),
            Command::Settles(t) => (Operation::Settles, bytemuck::cast_slice(t)),
        };
        let now_ns = match command {
            Command::Tick { now_ns } => *now_ns,
            _ => now_ns,
        };
        let mut header = EntryHeader {
            checksum_header: 0,
            checksum_body: xxh3_128(body),
            sequence,
            now_ns,
            magic: MAGIC,
            body_len: body.len() as u32,
            operation: operation as u16,
            version: VERSION,
            flags: if self.len == 0 { FLAG_GROUP_START } else { 0 },
            event_count: (body.len() / RECORD_SIZE) as u32,
        };
        header.checksum_header = header.compute_checksum();
        let start = self.len;
        let bytes = self.bytes_mut();
        bytes[start..start + HEADER_SIZE].copy_from_slice(bytemuck::bytes_of(&header));
        bytes[start + HEADER_SIZE..start + HEADER_SIZE + body.len()].copy_from_slice(body);
        self.len += HEADER_SIZE + body.len();
    }

    /// The group, zero-padded to whole sectors: what one write puts on disk.
    pub fn sealed(&mut self) -> &[u8] {
        let padded = self.len.next_multiple_of(SECTOR_SIZE);
        let len = self.len;
        self.bytes_mut()[len..padded].fill(0);
        &bytemuck::cast_slice::<Sector, u8>(&self.sectors)[..padded]
    }

    /// Empties the buffer for the next group.
    pub fn clear(&mut self) {
        self.len = 0;
    }
}

/// Where recovery reads from: a file, or bytes in tests and the simulator.
pub trait ReadAt {
    /// Length in bytes.
    fn byte_len(&self) -> std::io::Result<u64>;
    /// Fills `buf` from `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn byte_len(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for [u8] {
    fn byte_len(&self) -> std::io::Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        let end = start.checked_add(buf.len()).filter(|&e| e <= <[u8]>::len(self));
        let end = end.ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(&self[start..end]);
        Ok(())
    }
}

/// Why recovery stopped reading entries at some offset.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum StopReason {
    /// The end of the file.
    EndOfFile,
    /// Zeroes where a group should start: nothing was written here.
    Unwritten,
    /// The header's magic, version, checksum or lengths are wrong.
    BadHeader,
    /// The body's checksum is wrong.
    BadBody,
    /// The header is valid but its sequence is not the next one.
    SequenceGap {
        /// The sequence expected.
        expected: u64,
        /// The sequence found.
        found: u64,
    },
}

impl core::fmt::Display for StopReason {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            StopReason::EndOfFile => write!(f, "end of file"),
            StopReason::Unwritten => write!(f, "unwritten (zero) sector"),
            StopReason::BadHeader => write!(f, "entry header fails its checksum or format"),
            StopReason::BadBody => write!(f, "entry body fails its checksum"),
            StopReason::SequenceGap { expected, found } => {
                write!(f, "entry has sequence {found}, expected {expected}")
            }
        }
    }
}

/// A journal that cannot be recovered without losing acknowledged data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JournalError {
    /// A corrupt entry with valid entries after it.
    #[error(
        "journal {name}: {reason} at offset {offset}, but a valid entry follows at offset {next_valid}; \
         refusing to start rather than drop acknowledged data"
    )]
    CorruptInTheMiddle {
        /// The journal's name (its path).
        name: String,
        /// Where the corrupt entry starts.
        offset: u64,
        /// What is wrong with it.
        reason: StopReason,
        /// Where the next valid group starts.
        next_valid: u64,
    },
    /// A journal file before the last does not end cleanly: its lost or
    /// damaged entries came before the next file's.
    #[error(
        "journal {name}: {reason} at offset {offset}, but the journal continues in {next}; \
         refusing to start rather than drop acknowledged data"
    )]
    CorruptBeforeNextFile {
        /// The file's name (its path).
        name: String,
        /// Just past its last valid entry.
        offset: u64,
        /// What is wrong there.
        reason: String,
        /// The next file.
        next: String,
    },
    /// Reading the journal failed.
    #[error("journal {name}: reading at offset {offset}: {source}")]
    Io {
        /// The journal's name.
        name: String,
        /// Where.
        offset: u64,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// What a scan found.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ScanEnd {
    /// Just past the last valid entry: the file is cut here.
    pub valid_end: u64,
    /// The sequence the next entry gets.
    pub next_sequence: u64,
    /// Entries recovered.
    pub entries: u64,
    /// Why the scan stopped at `valid_end`.
    pub reason: StopReason,
    /// True when non-zero bytes follow `valid_end` (a torn write); zero
    /// padding after it is cut too, but is not a torn tail.
    pub torn_tail: bool,
}

fn read_header(
    journal: &(impl ReadAt + ?Sized),
    offset: u64,
    body_len_max: u32,
) -> std::io::Result<Option<EntryHeader>> {
    let mut header = EntryHeader::zeroed();
    journal.read_exact_at(bytemuck::bytes_of_mut(&mut header), offset)?;
    let valid = header.magic == MAGIC
        && header.version == VERSION
        && header.flags & !FLAG_GROUP_START == 0
        && header.checksum_header == header.compute_checksum()
        && Operation::from_u16(header.operation).is_some()
        && header.body_len <= body_len_max
        && header.body_len as usize == header.event_count as usize * RECORD_SIZE
        && (header.operation != Operation::Tick as u16 || header.body_len == 0);
    Ok(valid.then_some(header))
}

/// Reads every valid entry from `start` (where the entry with sequence
/// `first_sequence` begins), calling `apply` for each in order, and reports
/// where the valid journal ends. Entries larger than `body_len_max` are
/// invalid. Refuses with [`JournalError::CorruptInTheMiddle`] if the first
/// invalid entry has valid groups after it.
pub fn scan(
    name: &str,
    journal: &(impl ReadAt + ?Sized),
    start: u64,
    first_sequence: u64,
    body_len_max: u32,
    mut apply: impl FnMut(u64, CommandBuf),
) -> Result<ScanEnd, JournalError> {
    let io = |offset: u64| move |source| JournalError::Io { name: name.to_string(), offset, source };
    let len = journal.byte_len().map_err(io(0))?;
    let mut offset = start;
    // Just past the last valid entry.
    let mut entry_end = start;
    let mut sequence = first_sequence;
    let mut entries = 0u64;
    let reason = loop {
        if offset + HEADER_SIZE as u64 > len {
            break StopReason::EndOfFile;
        }
        let Some(header) = read_header(journal, offset, body_len_max).map_err(io(offset))? else {
            let mut raw = [0u8; HEADER_SIZE];
            journal.read_exact_at(&mut raw, offset).map_err(io(offset))?;
            if raw.iter().all(|&b| b == 0) {
                if !offset.is_multiple_of(SECTOR_SIZE as u64) {
                    // The zero padding at the end of a group.
                    offset = offset.next_multiple_of(SECTOR_SIZE as u64);
                    continue;
                }
                break StopReason::Unwritten;
            }
            break StopReason::BadHeader;
        };
        if header.sequence != sequence {
            break StopReason::SequenceGap { expected: sequence, found: header.sequence };
        }
        let body_offset = offset + HEADER_SIZE as u64;
        if body_offset + u64::from(header.body_len) > len {
            break StopReason::BadBody;
        }
        let mut body = vec![0u8; header.body_len as usize];
        journal.read_exact_at(&mut body, body_offset).map_err(io(body_offset))?;
        if xxh3_128(&body) != header.checksum_body {
            break StopReason::BadBody;
        }
        let command = match Operation::from_u16(header.operation).expect("checked in read_header") {
            Operation::Tick => CommandBuf::Tick { now_ns: header.now_ns },
            Operation::CreateAccounts => CommandBuf::CreateAccounts(bytemuck::pod_collect_to_vec(&body)),
            Operation::CreateTransfers => CommandBuf::CreateTransfers(bytemuck::pod_collect_to_vec(&body)),
            Operation::Credits => CommandBuf::Credits(bytemuck::pod_collect_to_vec(&body)),
            Operation::Settles => CommandBuf::Settles(bytemuck::pod_collect_to_vec(&body)),
        };
        apply(sequence, command);
        entries += 1;
        sequence += 1;
        offset = body_offset + u64::from(header.body_len);
        entry_end = offset;
    };
    // A group that starts after the stop point was written after the stop
    // point's group was durable (one group is in flight at a time): the stop
    // is in the middle, not a torn tail. Entries of the torn group itself may
    // survive past the stop (sectors tear in any order); they are not group
    // starts, so they do not count.
    let mut probe = offset.next_multiple_of(SECTOR_SIZE as u64);
    if probe == offset {
        probe += SECTOR_SIZE as u64;
    }
    while probe + HEADER_SIZE as u64 <= len {
        if let Some(header) = read_header(journal, probe, body_len_max).map_err(io(probe))? {
            if header.flags & FLAG_GROUP_START != 0 && header.sequence >= sequence {
                return Err(JournalError::CorruptInTheMiddle {
                    name: name.to_string(),
                    offset,
                    reason,
                    next_valid: probe,
                });
            }
        }
        probe += SECTOR_SIZE as u64;
    }
    // Whatever follows the last valid entry is padding or a torn write; it is
    // cut either way (the next group starts at the next sector boundary).
    let mut torn_tail = false;
    let mut chunk = vec![0u8; SECTOR_SIZE];
    let mut at = entry_end;
    while at < len && !torn_tail {
        let n = (len - at).min(SECTOR_SIZE as u64) as usize;
        journal.read_exact_at(&mut chunk[..n], at).map_err(io(at))?;
        torn_tail = chunk[..n].iter().any(|&b| b != 0);
        at += n as u64;
    }
    Ok(ScanEnd { valid_end: entry_end, next_sequence: sequence, entries, reason, torn_tail })
}
