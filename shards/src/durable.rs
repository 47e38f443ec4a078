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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecoveryReport {
    /// The scan's findings.
    pub scan: ScanEnd,
    /// Bytes cut from a torn tail.
    pub truncated_bytes: u64,
    /// Wall time spent recovering.
    pub micros: u128,
}

/// One engine, durable through its journal.
#[derive(Debug)]
pub struct DurableLedger {
    engine: Engine,
    file: File,
    path: PathBuf,
    /// Sector-aligned offset of the next group.
    write_offset: u64,
    next_sequence: u64,
    group: GroupBuffer,
    recovery: RecoveryReport,
}

fn io_error<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> DurableError + 'a {
    move |source| DurableError::Io { path: path.to_path_buf(), what, source }
}

impl DurableLedger {
    /// Opens (or creates) the ledger in `dir`: recovers the journal into a
    /// fresh engine, cutting a torn tail, refusing a corrupt middle.
    pub fn open(dir: &Path, config: Config, group_bytes_max: usize) -> Result<Self, DurableError> {
        let started = Instant::now();
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

        let body_len_max = (config.batch_events_max as usize * journal::RECORD_SIZE) as u32;
        let mut engine = Engine::new(config)?;
        let mut scratch = Vec::new();
        let name = path.display().to_string();
        let scan = journal::scan(&name, &file, 0, 1, body_len_max, |_, command| {
            apply(&mut engine, &command.as_command(), &mut scratch)
                .expect("journaled batches are within the limits they were checked against");
        })?;
        let len = file.metadata().map_err(io_error(&path, "reading the journal's length"))?.len();
        let truncated_bytes = len - scan.valid_end;
        if truncated_bytes > 0 {
            file.set_len(scan.valid_end).map_err(io_error(&path, "cutting the torn tail"))?;
            file.sync_all().map_err(io_error(&path, "syncing the cut journal"))?;
        }
        Ok(Self {
            engine,
            file,
            path,
            write_offset: scan.valid_end.next_multiple_of(journal::SECTOR_SIZE as u64),
            next_sequence: scan.next_sequence,
            group: GroupBuffer::new(group_bytes_max),
            recovery: RecoveryReport { scan, truncated_bytes, micros: started.elapsed().as_micros() },
        })
    }

    /// The engine, for queries.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// What recovery did when this ledger was opened.
    pub fn recovery(&self) -> RecoveryReport {
        self.recovery
    }

    /// The sequence the next journal entry gets.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// Journals `commands` as one group, makes it durable (`fdatasync`), then
    /// applies them in order and returns one outcome per command. A batch
    /// over the limit is refused before anything is written.
    pub fn execute(&mut self, commands: &[Command<'_>]) -> Result<Vec<Outcome>, DurableError> {
        let batch_max = self.engine.config().batch_events_max as usize;
        let mut bytes = 0;
        for command in commands {
            let events = match command {
                Command::Tick { .. } => 0,
                Command::CreateAccounts(a) => a.len(),
                Command::CreateTransfers(t) => t.len(),
            };
            if events > batch_max {
                return Err(BatchError::TooManyEvents { events, max: batch_max as u32 }.into());
            }
            bytes += GroupBuffer::entry_size(command);
        }
        self.group.clear();
        if bytes > self.group.capacity() {
            return Err(DurableError::GroupTooLarge { bytes, max: self.group.capacity() });
        }
        let now_ns = self.engine.clock_ns();
        for (i, command) in commands.iter().enumerate() {
            self.group.push(self.next_sequence + i as u64, now_ns, command);
        }
        let sealed = self.group.sealed();
        self.file
            .write_all_at(sealed, self.write_offset)
            .map_err(io_error(&self.path, "writing the journal"))?;
        self.file.sync_data().map_err(io_error(&self.path, "syncing the journal"))?;
        self.write_offset += sealed.len() as u64;
        self.next_sequence += commands.len() as u64;

        let mut outcomes = Vec::with_capacity(commands.len());
        for command in commands {
            let mut expired = Vec::new();
            outcomes.push(apply(&mut self.engine, command, &mut expired).expect("batch sizes were checked"));
        }
        Ok(outcomes)
    }
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
        Command::CreateTransfers(transfers) => {
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
