//! Snapshots: the engine's state at a journal position, so recovery loads it
//! and replays only the journal after it.
//!
//! ```text
//!  snapshot-<next_sequence, 20 digits>.molly
//!  ┌──────────── header 64 B ─────────────┬──────── body ────────┐
//!  │ checksum_header u128 · checksum_body  │ rkyv archive of       │
//!  │ u128 · next_sequence u64 ·            │ SnapshotBody (records │
//!  │ journal_offset u64 · body_len u64 ·   │ as raw 128-byte       │
//!  │ magic "MOLS" u32 · version u16 ·      │ little-endian bytes)  │
//!  │ reserved u16                          │ + open cross-shard    │
//!  │                                       │ intents (v2)          │
//!  └───────────────────────────────────────┴──────────────────────┘
//! ```
//!
//! Written to `*.tmp`, fsynced, renamed, and the directory fsynced: a
//! snapshot file either is complete or does not exist. The newest two are
//! kept. Loading checks both checksums, validates the archive (rkyv's
//! bytecheck), and rebuilds the engine through `Engine::import`, which
//! refuses any state that breaks a limit or an invariant; a snapshot failing
//! any of these is skipped for an older one, or for a full journal replay.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytemuck::{Pod, Zeroable};
use molly_engine::{AccountBalance, Config, Engine, EngineState, Transfer};
use xxhash_rust::xxh3::xxh3_128;

/// `b"MOLS"` little-endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"MOLS");
/// Format version (2 added the open cross-shard intents; 1 still loads, with none).
pub const VERSION: u16 = 2;
/// Snapshots kept in a shard's directory.
pub const KEEP: usize = 2;
const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".molly";

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
struct SnapshotBody {
    accounts: Vec<u8>,
    transfers: Vec<u8>,
    transfer_states: Vec<u8>,
    balances: Vec<BalanceRun>,
    clock_ns: u64,
    timestamp_last: u64,
    /// Open cross-shard intents: the transfers as their clients sent them.
    intents: Vec<u8>,
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
}

fn file_name(next_sequence: u64) -> String {
    format!("{PREFIX}{next_sequence:020}{SUFFIX}")
}

/// Writes a snapshot of `state` and the open cross-shard `intents` at
/// `position` into `dir` atomically, then removes all but the newest [`KEEP`].
pub fn write(
    dir: &Path,
    position: Position,
    state: &EngineState,
    intents: &[Transfer],
) -> Result<PathBuf, SnapshotError> {
    let path = dir.join(file_name(position.next_sequence));
    let io = |what| {
        let path = path.clone();
        move |source| SnapshotError::Io { path, what, source }
    };
    let body = SnapshotBody {
        accounts: bytemuck::cast_slice(&state.accounts).to_vec(),
        transfers: bytemuck::cast_slice(&state.transfers).to_vec(),
        transfer_states: state.transfer_states.clone(),
        balances: state
            .balances
            .iter()
            .map(|(slot, points)| BalanceRun { slot: *slot, points: bytemuck::cast_slice(points).to_vec() })
            .collect(),
        clock_ns: state.clock_ns,
        timestamp_last: state.timestamp_last,
        intents: bytemuck::cast_slice(intents).to_vec(),
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
    let tmp = path.with_extension("molly.tmp");
    {
        let mut file = File::create(&tmp).map_err(io("creating"))?;
        file.write_all(bytemuck::bytes_of(&header)).map_err(io("writing"))?;
        file.write_all(&bytes).map_err(io("writing"))?;
        file.sync_all().map_err(io("syncing"))?;
    }
    std::fs::rename(&tmp, &path).map_err(io("renaming into place"))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("syncing the directory"))?;
    for old in list(dir).into_iter().rev().skip(KEEP) {
        let _ = std::fs::remove_file(old);
    }
    Ok(path)
}

/// Snapshot files in `dir`, oldest first.
pub fn list(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        })
        .collect();
    found.sort();
    found
}

/// Loads one snapshot file into an engine and the open intents it kept, or
/// says why it cannot be used.
pub fn load(path: &Path, config: Config) -> Result<(Engine, Position, Vec<Transfer>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading: {e}"))?;
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
    let invalid = |e: rkyv::rancor::Error| format!("archive does not validate: {e}");
    let body = if header.version == 1 {
        let v1 = rkyv::from_bytes::<SnapshotBodyV1, rkyv::rancor::Error>(&aligned).map_err(invalid)?;
        SnapshotBody {
            accounts: v1.accounts,
            transfers: v1.transfers,
            transfer_states: v1.transfer_states,
            balances: v1.balances,
            clock_ns: v1.clock_ns,
            timestamp_last: v1.timestamp_last,
            intents: Vec::new(),
        }
    } else {
        rkyv::from_bytes::<SnapshotBody, rkyv::rancor::Error>(&aligned).map_err(invalid)?
    };
    let records = |bytes: &[u8], what: &str| -> Result<(), String> {
        if bytes.len().is_multiple_of(128) {
            Ok(())
        } else {
            Err(format!("{what} are not whole 128-byte records"))
        }
    };
    records(&body.accounts, "accounts")?;
    records(&body.transfers, "transfers")?;
    records(&body.intents, "intents")?;
    let intents = bytemuck::pod_collect_to_vec::<u8, Transfer>(&body.intents);
    let mut balances = Vec::with_capacity(body.balances.len());
    for run in &body.balances {
        records(&run.points, "balance points")?;
        balances.push((run.slot, bytemuck::pod_collect_to_vec::<u8, AccountBalance>(&run.points)));
    }
    let state = EngineState {
        accounts: bytemuck::pod_collect_to_vec(&body.accounts),
        transfers: bytemuck::pod_collect_to_vec(&body.transfers),
        transfer_states: body.transfer_states,
        balances,
        clock_ns: body.clock_ns,
        timestamp_last: body.timestamp_last,
    };
    let engine = Engine::import(config, state).map_err(|e| e.to_string())?;
    Ok((
        engine,
        Position { next_sequence: header.next_sequence, journal_offset: header.journal_offset },
        intents,
    ))
}

/// What loading found: the snapshot used, if any, and every one skipped.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The engine, its position, the snapshot and its open intents, from
    /// the newest usable snapshot.
    pub used: Option<(Engine, Position, PathBuf, Vec<Transfer>)>,
    /// Snapshots skipped, newest first, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Loads the newest usable snapshot in `dir`, skipping broken ones.
pub fn load_newest(dir: &Path, config: &Config) -> Loaded {
    let mut loaded = Loaded::default();
    for path in list(dir).into_iter().rev() {
        match load(&path, config.clone()) {
            Ok((engine, position, intents)) => {
                loaded.used = Some((engine, position, path, intents));
                break;
            }
            Err(reason) => loaded.skipped.push((path, reason)),
        }
    }
    loaded
}
