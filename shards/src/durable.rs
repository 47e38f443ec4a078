//! `DurableLedger`: one engine behind a write-ahead journal, with group
//! commit and recovery. Synchronous file I/O for now; the thread-per-core
//! runtime will drive the same journal format through io_uring.
//!
//! Commands are journaled first, made durable with one `fdatasync` per
//! group, and only then applied: nothing a caller sees is ever lost by a
//! crash, and recovery replays the journal through the deterministic engine
//! to exactly the state callers saw.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use molly_engine::{BatchError, Config, CreateAccountResult, CreateTransferResult, Engine};

use crate::cross::{Cross, Effects};
use crate::journal::{self, Command, CommandBuf, GroupBuffer, JournalError, ScanEnd};

/// The journal's file name inside the data directory.
pub const JOURNAL_FILE: &str = "journal.molly";

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
    /// Wall time spent recovering.
    pub micros: u128,
}

/// Stages commands into sector-aligned groups and tracks where the next one
/// goes: the I/O-free half of group commit, shared by the synchronous
/// [`DurableLedger`] and the io_uring shard runtime.
#[derive(Debug)]
pub struct JournalWriter {
    /// Sector-aligned offset of the next group.
    write_offset: u64,
    next_sequence: u64,
    group: GroupBuffer,
    /// Entries staged in the current group.
    staged: u64,
    batch_events_max: usize,
}

impl JournalWriter {
    /// A writer appending after `valid_end` with sequence `next_sequence`.
    pub fn new(valid_end: u64, next_sequence: u64, group_bytes_max: usize, batch_events_max: usize) -> Self {
        Self {
            write_offset: valid_end.next_multiple_of(journal::SECTOR_SIZE as u64),
            next_sequence,
            group: GroupBuffer::new(group_bytes_max),
            staged: 0,
            batch_events_max,
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

    /// The current group, padded: write it at the returned offset.
    pub fn seal(&mut self) -> (u64, &[u8]) {
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
    /// The journal file (read-write).
    pub file: File,
    /// Its path.
    pub path: PathBuf,
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
    let path = dir.join(JOURNAL_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_error(&path, "opening the journal"))?;
    // Make the file's directory entry durable too (a no-op after the first time).
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir, "syncing the data directory"))?;

    let batch_events_max = config.batch_events_max as usize;
    let body_len_max = (batch_events_max * journal::RECORD_SIZE) as u32;
    let loaded = crate::snapshot::load_newest(dir, &config);
    let (mut engine, start, snapshot, intents, segments) = match loaded.used {
        Some((loaded, path)) => (loaded.engine, loaded.position, Some(path), loaded.intents, loaded.segments),
        None => (
            Engine::new(config)?,
            crate::snapshot::Position { next_sequence: 1, journal_offset: 0 },
            None,
            Vec::new(),
            Vec::new(),
        ),
    };
    let mut cross = Cross::import(shard, shards, &engine, &intents)
        .map_err(|reason| DurableError::Intents { snapshot: snapshot.clone().unwrap_or_default(), reason })?;
    let mut effects = Effects::default();
    let len = file.metadata().map_err(io_error(&path, "reading the journal's length"))?.len();
    // A snapshot stands at a sector boundary; the journal may end short of it
    // only by the zero padding an earlier recovery cut.
    if start.journal_offset > len.next_multiple_of(journal::SECTOR_SIZE as u64) {
        return Err(DurableError::SnapshotBeyondJournal {
            snapshot: snapshot.unwrap_or_default(),
            offset: start.journal_offset,
            journal: path,
            len,
        });
    }
    let mut scratch = Vec::new();
    let name = path.display().to_string();
    let scan = if start.journal_offset >= len {
        ScanEnd {
            valid_end: start.journal_offset,
            next_sequence: start.next_sequence,
            entries: 0,
            reason: journal::StopReason::EndOfFile,
            torn_tail: false,
        }
    } else {
        journal::scan(&name, &file, start.journal_offset, start.next_sequence, body_len_max, |_, command| {
            cross
                .apply(&mut engine, &command.as_command(), &mut scratch, &mut effects)
                .expect("journaled batches are within the limits they were checked against");
        })?
    };
    let truncated_bytes = len.saturating_sub(scan.valid_end);
    if truncated_bytes > 0 {
        file.set_len(scan.valid_end).map_err(io_error(&path, "cutting the torn tail"))?;
        file.sync_all().map_err(io_error(&path, "syncing the cut journal"))?;
    }
    Ok(Recovered {
        engine,
        cross,
        writer: JournalWriter::new(scan.valid_end, scan.next_sequence, group_bytes_max, batch_events_max),
        file,
        path,
        segments,
        report: RecoveryReport {
            snapshot,
            snapshots_skipped: loaded.skipped,
            scan,
            truncated_bytes,
            micros: started.elapsed().as_micros(),
        },
    })
}

/// One engine, durable through its journal, with synchronous file I/O.
#[derive(Debug)]
pub struct DurableLedger {
    engine: Engine,
    cross: Cross,
    writer: JournalWriter,
    file: File,
    path: PathBuf,
    segments: Vec<crate::snapshot::SegmentRef>,
    recovery: RecoveryReport,
}

impl DurableLedger {
    /// Opens (or creates) the ledger in `dir`: see [`recover`].
    pub fn open(dir: &Path, config: Config, group_bytes_max: usize) -> Result<Self, DurableError> {
        let Recovered { engine, cross, writer, file, path, segments, report } =
            recover(dir, config, group_bytes_max)?;
        Ok(Self { engine, cross, writer, file, path, segments, recovery: report })
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
    /// (recovery then replays only what follows it): the full transfer
    /// blocks not yet in a segment go into a new one, and every block with a
    /// durable copy but the newest `keep_in_memory` leaves memory.
    pub fn snapshot(&mut self, keep_in_memory: usize) -> Result<PathBuf, DurableError> {
        let dir = self.path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let job = crate::snapshot::SnapshotJob {
            dir,
            position: self.writer.position(),
            parts: self.engine.snapshot_parts(crate::snapshot::segment_blocks(&self.segments)),
            intents: self.cross.export(),
            segments: self.segments.clone(),
        };
        let done = crate::snapshot::write(job)?;
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

    /// Journals `commands` as one group, makes it durable (`fdatasync`), then
    /// applies them in order and returns one outcome per command. A batch
    /// over the limit is refused before anything is written.
    pub fn execute(&mut self, commands: &[Command<'_>]) -> Result<Vec<Outcome>, DurableError> {
        self.writer.check(commands)?;
        self.writer.stage(commands, self.engine.clock_ns());
        let (offset, sealed) = self.writer.seal();
        self.file.write_all_at(sealed, offset).map_err(io_error(&self.path, "writing the journal"))?;
        self.file.sync_data().map_err(io_error(&self.path, "syncing the journal"))?;
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
