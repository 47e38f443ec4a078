//! `DurableLedger`: one engine behind a write-ahead journal, with group
//! commit and recovery. Synchronous file I/O for now; the thread-per-core
//! runtime will drive the same journal format through io_uring.
//!
//! Commands are journaled first, made durable with one `fdatasync` per
//! group, and only then applied: nothing a caller sees is ever lost by a
//! crash, and recovery replays the journal through the deterministic engine
//! to exactly the state callers saw.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;

use molly_engine::{BatchError, Config, CreateAccountResult, CreateTransferResult, Engine};

use crate::cross::{Cross, Effects};
use crate::journal::{self, Command, CommandBuf, GroupBuffer, JournalError, ScanEnd};
use crate::journal_files::{self, JournalFiles};
use crate::snapshot::{Disk, Position};

/// The journal's single file in data directories written before rotation;
/// recovery renames it to the first numbered file
/// ([`journal_files::file_name`]`(1)`).
pub const JOURNAL_FILE: &str = journal_files::LEGACY_FILE;

/// Default largest group (one write + one fdatasync): 8 MiB, room for 8
/// full batches of 8190 transfers.
pub const GROUP_BYTES_MAX_DEFAULT: usize = 8 << 20;

/// The result of one command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Time advanced; these pending transfers expired.
    Ticked {
        /// Ids of the expired pending transfers.
        expired: Vec<u128>,
    },
    /// One result per account.
    Accounts(Vec<CreateAccountResult>),
    /// One result per transfer.
    Transfers(Vec<CreateTransferResult>),
}

/// Why a ledger could not open or execute.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DurableError {
    /// The journal cannot be recovered safely.
    #[error(transparent)]
    Journal(#[from] JournalError),
    /// A file operation failed.
    #[error("{path}: {what}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The operation.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// The engine configuration is invalid.
    #[error("engine configuration: {0}")]
    Config(#[from] molly_engine::ConfigError),
    /// A snapshot claims more journal than the file holds.
    #[error("snapshot {snapshot} stands at journal offset {offset}, but {journal} is only {len} bytes long")]
    SnapshotBeyondJournal {
        /// The snapshot.
        snapshot: PathBuf,
        /// Its journal offset.
        offset: u64,
        /// The journal.
        journal: PathBuf,
        /// The journal's length.
        len: u64,
    },
    /// A journal file recovery needs is gone (deleted once snapshots covered
    /// it, and those snapshots are unusable now).
    #[error(
        "journal file {needed} is missing (oldest journal file present: {}); recovery needs it to start from \
         {start}; refusing to start with less than was acknowledged",
        oldest.as_ref().map_or_else(|| "none".to_string(), |p| p.display().to_string())
    )]
    JournalMissing {
        /// The file needed.
        needed: PathBuf,
        /// The oldest journal file there is.
        oldest: Option<PathBuf>,
        /// Where recovery starts (the snapshot, or why none).
        start: String,
    },
    /// Two consecutive journal files do not continue each other's sequence.
    #[error(
        "journal {previous} ends before sequence {ends_before}, but the next file {next} starts at {next_first}; \
         refusing to start"
    )]
    JournalGap {
        /// The earlier file.
        previous: PathBuf,
        /// The sequence after its last entry.
        ends_before: u64,
        /// The next file.
        next: PathBuf,
        /// Its first sequence (from its name).
        next_first: u64,
    },
    /// Both the old single journal file and numbered ones exist.
    #[error("both {legacy} and {numbered} exist: which one is the journal is unclear; refusing to start")]
    JournalNames {
        /// The old single file.
        legacy: PathBuf,
        /// A numbered one.
        numbered: PathBuf,
    },
    /// A snapshot's open intents do not match its engine state.
    #[error("snapshot {snapshot}: cross-shard intents: {reason}")]
    Intents {
        /// The snapshot.
        snapshot: PathBuf,
        /// What does not match.
        reason: String,
    },
    /// Writing a snapshot failed.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// A batch is over the engine's limit: nothing was journaled or applied.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The commands do not fit one group.
    #[error("commands take {bytes} bytes, over the group limit of {max}")]
    GroupTooLarge {
        /// Bytes needed.
        bytes: usize,
        /// The limit.
        max: usize,
    },
}

/// What recovery did on open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The snapshot loaded, if any (the journal is replayed after it).
    pub snapshot: Option<PathBuf>,
    /// Snapshots skipped as unusable, newest first, with the reason.
    pub snapshots_skipped: Vec<(PathBuf, String)>,
    /// The scan's findings (of the journal after the snapshot).
    pub scan: ScanEnd,
    /// Bytes cut from a torn tail.
    pub truncated_bytes: u64,
    /// Journal files read.
    pub journal_files: usize,
    /// Wall time spent recovering.
    pub micros: u128,
}

/// Stages commands into sector-aligned groups and tracks where the next one
/// goes: the I/O-free half of group commit, shared by the synchronous
/// [`DurableLedger`] and the io_uring shard runtime.
#[derive(Debug)]
pub struct JournalWriter {
    /// The first sequence of the journal file the next group goes to.
    file_first: u64,
    /// A group goes to a new file once the current one holds this many bytes.
    file_bytes_max: u64,
    /// Sector-aligned offset of the next group in its file.
    write_offset: u64,
    next_sequence: u64,
    group: GroupBuffer,
    /// Entries staged in the current group.
    staged: u64,
    batch_events_max: usize,
}

impl JournalWriter {
    /// A writer appending after `valid_end` with sequence `next_sequence`,
    /// in the journal file starting at sequence 1 (see [`JournalWriter::in_file`]),
    /// rotating at [`journal_files::JOURNAL_FILE_BYTES_DEFAULT`].
    pub fn new(valid_end: u64, next_sequence: u64, group_bytes_max: usize, batch_events_max: usize) -> Self {
        Self {
            file_first: 1,
            file_bytes_max: journal_files::JOURNAL_FILE_BYTES_DEFAULT,
            write_offset: valid_end.next_multiple_of(journal::SECTOR_SIZE as u64),
            next_sequence,
            group: GroupBuffer::new(group_bytes_max),
            staged: 0,
            batch_events_max,
        }
    }

    /// The same writer appending to the journal file starting at `first`.
    pub fn in_file(mut self, first: u64) -> Self {
        assert!(first <= self.next_sequence);
        self.file_first = first;
        self
    }

    /// Starts a new file before a group once the current one holds `bytes`
    /// (at least one sector; a group larger than that still goes whole into one file).
    pub fn set_file_bytes_max(&mut self, bytes: u64) {
        self.file_bytes_max = bytes.max(journal::SECTOR_SIZE as u64);
    }

    /// The first sequence of the journal file the next group (or the
    /// sealed one) goes to ([`journal_files::file_name`]).
    pub fn file(&self) -> u64 {
        self.file_first
    }

    /// Starts a new journal file at the next sequence (between groups; a
    /// no-op if the current file is still empty). Taking a snapshot does
    /// this, so the snapshot's position is the start of a file.
    pub fn rotate(&mut self) {
        assert_eq!(self.staged, 0, "rotation is between groups");
        if self.write_offset > 0 {
            self.file_first = self.next_sequence;
            self.write_offset = 0;
        }
    }

    /// The sequence the next entry gets.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence + self.staged
    }

    /// Where the next group will be written; with nothing staged, the
    /// journal position a snapshot taken now stands at.
    pub fn position(&self) -> crate::snapshot::Position {
        assert_eq!(self.staged, 0, "a snapshot position is between groups");
        crate::snapshot::Position { next_sequence: self.next_sequence, journal_offset: self.write_offset }
    }

    /// Checks that `commands` are within the batch limit and fit one group
    /// on their own (with room for a tick); returns the bytes they take.
    pub fn check(&self, commands: &[Command<'_>]) -> Result<usize, DurableError> {
        let mut bytes = 0;
        for command in commands {
            let events = match command {
                Command::Tick { .. } => 0,
                Command::CreateAccounts(a) => a.len(),
                Command::CreateTransfers(t) | Command::Credits(t) | Command::Settles(t) => t.len(),
            };
            if events > self.batch_events_max {
                return Err(BatchError::TooManyEvents { events, max: self.batch_events_max as u32 }.into());
            }
            bytes += GroupBuffer::entry_size(command);
        }
        // Room is kept for the tick entry a group may start with, so any
        // request that passes fits an empty group.
        let max = self.group.capacity() - journal::HEADER_SIZE;
        if bytes > max {
            return Err(DurableError::GroupTooLarge { bytes, max });
        }
        Ok(bytes)
    }

    /// True when `bytes` more fit in the current group.
    pub fn has_room(&self, bytes: usize) -> bool {
        self.group.len() + bytes <= self.group.capacity()
    }

    /// True when nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.staged == 0
    }

    /// Appends checked commands to the current group.
    pub fn stage(&mut self, commands: &[Command<'_>], now_ns: u64) {
        for command in commands {
            self.group.push(self.next_sequence + self.staged, now_ns, command);
            self.staged += 1;
        }
    }

    /// The current group, padded: write it at the returned offset of the
    /// file [`JournalWriter::file`] (a new one when the current file has
    /// reached its size limit).
    pub fn seal(&mut self) -> (u64, &[u8]) {
        if self.staged > 0 && self.write_offset >= self.file_bytes_max {
            self.file_first = self.next_sequence;
            self.write_offset = 0;
        }
        (self.write_offset, self.group.sealed())
    }

    /// The sealed group is durable: move past it and start the next one.
    pub fn committed(&mut self) {
        let sealed = self.group.sealed().len() as u64;
        self.write_offset += sealed;
        self.next_sequence += self.staged;
        self.staged = 0;
        self.group.clear();
    }
}

/// A data directory's journal, recovered.
#[derive(Debug)]
pub struct Recovered {
    /// The engine with every journaled command applied.
    pub engine: Engine,
    /// The open cross-shard intents (none with one shard).
    pub cross: Cross,
    /// Where appends continue.
    pub writer: JournalWriter,
    /// The journal file appends continue in (it may not exist yet: the
    /// first group creates it).
    pub path: PathBuf,
    /// The loaded snapshot's position, if any (a snapshot known good).
    pub snapshot_position: Option<Position>,
    /// The transfer segments the loaded snapshot names (the history before
    /// its tail), for the next snapshot to extend.
    pub segments: Vec<crate::snapshot::SegmentRef>,
    /// What recovery did.
    pub report: RecoveryReport,
}

/// Recovers the journal in `dir` (creating both if missing) into a fresh
/// engine: cuts a torn tail, refuses a corrupt middle.
pub fn recover(dir: &Path, config: Config, group_bytes_max: usize) -> Result<Recovered, DurableError> {
    recover_shard(dir, config, group_bytes_max, 0, 1)
}

/// [`recover`] for shard `shard` of `shards`: the journal is replayed through
/// the shard layer ([`Cross::apply`]), and the open cross-shard intents come
/// back from the snapshot and the replayed commands.
pub fn recover_shard(
    dir: &Path,
    config: Config,
    group_bytes_max: usize,
    shard: u32,
    shards: u32,
) -> Result<Recovered, DurableError> {
    let started = Instant::now();
    let config = crate::route::engine_config(&config, shard, shards);
    std::fs::create_dir_all(dir).map_err(io_error(dir, "creating the data directory"))?;
    let batch_events_max = config.batch_events_max as usize;
    let body_len_max = (batch_events_max * journal::RECORD_SIZE) as u32;
    let loaded = crate::snapshot::load_newest(dir, &config);
    let (mut engine, start, snapshot, intents, segments) = match loaded.used {
        Some((loaded, path)) => (loaded.engine, loaded.position, Some(path), loaded.intents, loaded.segments),
        None => (
            Engine::new(config)?,
            Position { next_sequence: 1, journal_offset: 0 },
            None,
            Vec::new(),
            Vec::new(),
        ),
    };
    let mut cross = Cross::import(shard, shards, &engine, &intents)
        .map_err(|reason| DurableError::Intents { snapshot: snapshot.clone().unwrap_or_default(), reason })?;
    let start_what = start_description(snapshot.as_deref(), &loaded.skipped);
    let mut effects = Effects::default();
    let mut scratch = Vec::new();
    let end = journal_files::recover(&Disk, dir, start, &start_what, body_len_max, |_, command| {
        cross
            .apply(&mut engine, &command.as_command(), &mut scratch, &mut effects)
            .expect("journaled batches are within the limits they were checked against");
    })?;
    // Make the data directory's entries durable (a no-op after the first time).
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir, "syncing the data directory"))?;
    let writer = end.writer(group_bytes_max, batch_events_max);
    Ok(Recovered {
        engine,
        cross,
        path: dir.join(journal_files::file_name(writer.file())),
        writer,
        snapshot_position: snapshot.as_ref().map(|_| start),
        segments,
        report: RecoveryReport {
            snapshot,
            snapshots_skipped: loaded.skipped,
            scan: end.scan,
            truncated_bytes: end.truncated_bytes,
            journal_files: end.files_read,
            micros: started.elapsed().as_micros(),
        },
    })
}

/// Where recovery starts, in words: the snapshot loaded, or why there is none.
pub fn start_description(snapshot: Option<&Path>, skipped: &[(PathBuf, String)]) -> String {
    let mut what = match snapshot {
        Some(path) => format!("snapshot {}", path.display()),
        None if skipped.is_empty() => "the start of the journal (no snapshot)".to_string(),
        None => "the start of the journal: no usable snapshot".to_string(),
    };
    for (path, reason) in skipped {
        what.push_str(&format!("; skipped {}: {reason}", path.display()));
    }
    what
}

/// One engine, durable through its journal, with synchronous file I/O.
#[derive(Debug)]
pub struct DurableLedger {
    engine: Engine,
    cross: Cross,
    writer: JournalWriter,
    dir: PathBuf,
    journal: JournalFiles<File>,
    segments: Vec<crate::snapshot::SegmentRef>,
    /// Snapshots known good (loaded at open, or written): their next sequences.
    good: Vec<u64>,
    keep_journal: bool,
    recovery: RecoveryReport,
}

impl DurableLedger {
    /// Opens (or creates) the ledger in `dir`: see [`recover`]. The journal
    /// rotates at [`journal_files::JOURNAL_FILE_BYTES_DEFAULT`] and at every
    /// snapshot, and journal files no kept snapshot needs are deleted.
    pub fn open(dir: &Path, config: Config, group_bytes_max: usize) -> Result<Self, DurableError> {
        let Recovered { engine, cross, writer, segments, snapshot_position, report, .. } =
            recover(dir, config, group_bytes_max)?;
        Ok(Self {
            engine,
            cross,
            writer,
            dir: dir.to_path_buf(),
            journal: JournalFiles::new(dir),
            segments,
            good: snapshot_position.map(|p| p.next_sequence).into_iter().collect(),
            keep_journal: false,
            recovery: report,
        })
    }

    /// Starts a new journal file once the current one holds `bytes`.
    pub fn set_journal_file_bytes(&mut self, bytes: u64) {
        self.writer.set_file_bytes_max(bytes);
    }

    /// Keeps every journal file (no deletion after snapshots) when `keep`.
    pub fn set_keep_journal(&mut self, keep: bool) {
        self.keep_journal = keep;
    }

    /// The engine, for queries.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// What recovery did when this ledger was opened.
    pub fn recovery(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Writes a snapshot of the engine at the journal's current position
    /// (recovery then replays only what follows it; the journal moves to a
    /// new file there): the full transfer blocks not yet in a segment go
    /// into a new one, every block with a durable copy but the newest
    /// `keep_in_memory` leaves memory, and the journal files no kept
    /// snapshot needs are deleted ([`journal_files::prune`]).
    pub fn snapshot(&mut self, keep_in_memory: usize) -> Result<PathBuf, DurableError> {
        self.writer.rotate();
        let job = crate::snapshot::SnapshotJob {
            dir: self.dir.clone(),
            position: self.writer.position(),
            parts: self.engine.snapshot_parts(crate::snapshot::segment_blocks(&self.segments)),
            intents: self.cross.export(),
            segments: self.segments.clone(),
        };
        let sequence = job.position.next_sequence;
        let (done, pruned) = journal_files::write_snapshot(&Disk, job, &self.good, !self.keep_journal)?;
        pruned.map_err(io_error(&self.dir, "deleting journal files the snapshots cover"))?;
        self.good.push(sequence);
        if self.good.len() > crate::snapshot::KEEP {
            self.good.remove(0);
        }
        for (block, cold) in done.cold {
            self.engine.attach_cold(block, cold);
        }
        self.engine.evict_transfers(keep_in_memory);
        self.segments = done.segments;
        Ok(done.path)
    }

    /// The sequence the next journal entry gets.
    pub fn next_sequence(&self) -> u64 {
        self.writer.next_sequence()
    }

    /// The first sequence of the journal file the next group goes to.
    pub fn journal_file(&self) -> u64 {
        self.writer.file()
    }

    /// Journals `commands` as one group, makes it durable (`fdatasync`; a
    /// new journal file and its directory entry first), then applies them
    /// in order and returns one outcome per command. A batch over the limit
    /// is refused before anything is written.
    pub fn execute(&mut self, commands: &[Command<'_>]) -> Result<Vec<Outcome>, DurableError> {
        self.writer.check(commands)?;
        self.writer.stage(commands, self.engine.clock_ns());
        // Sealing picks the file (rotating by size); sealing again gives the same group.
        self.writer.seal();
        let first = self.writer.file();
        let (offset, sealed) = self.writer.seal();
        let path = self.journal.path(first);
        let written = self.journal.write(&Disk, first, offset, sealed);
        written.map_err(io_error(&path, "writing the journal"))?;
        self.journal.sync(&Disk).map_err(io_error(&path, "syncing the journal"))?;
        self.writer.committed();
        let mut expired = Vec::new();
        let mut effects = Effects::default();
        Ok(commands
            .iter()
            .map(|command| {
                self.cross
                    .apply(&mut self.engine, command, &mut expired, &mut effects)
                    .expect("batch sizes were checked")
            })
            .collect())
    }
}

pub(crate) fn io_error<'a>(
    path: &'a Path,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> DurableError + 'a {
    move |source| DurableError::Io { path: path.to_path_buf(), what, source }
}

/// Applies one command to the engine.
pub fn apply(
    engine: &mut Engine,
    command: &Command<'_>,
    expired: &mut Vec<u128>,
) -> Result<Outcome, BatchError> {
    Ok(match command {
        Command::Tick { now_ns } => {
            expired.clear();
            engine.tick(*now_ns, expired);
            Outcome::Ticked { expired: expired.clone() }
        }
        Command::CreateAccounts(accounts) => {
            let mut results = Vec::with_capacity(accounts.len());
            engine.create_accounts(accounts, &mut results)?;
            Outcome::Accounts(results)
        }
        // Without shards, credit and settle legs are plain transfers (only a
        // sharded core journals them; see `cross::Cross::apply`).
        Command::CreateTransfers(transfers) | Command::Credits(transfers) | Command::Settles(transfers) => {
            let mut results = Vec::with_capacity(transfers.len());
            engine.create_transfers(transfers, &mut results)?;
            Outcome::Transfers(results)
        }
    })
}

/// Replays `commands` into a fresh engine, as recovery would.
pub fn replay(config: Config, commands: &[CommandBuf]) -> Result<Engine, DurableError> {
    let mut engine = Engine::new(config)?;
    let mut expired = Vec::new();
    for command in commands {
        apply(&mut engine, &command.as_command(), &mut expired)?;
    }
    Ok(engine)
}
