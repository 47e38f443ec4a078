//! A deterministic simulation of the shards (`molly sim`, issue 8): one to
//! three real [`ShardCore`]s — engine, shard layer, cross-shard protocol and
//! journal format — on simulated disks, a simulated clock and simulated
//! rings between them, driven by one seed.
//!
//! ```text
//!  seed ─► PRNG ─► each step, on one shard: a client write (accounts, transfers of every kind,
//!                  cross-shard transfers, retries of old batches) · a lookup · write the open
//!                  group (+ fdatasync, or left unsynced) · deliver the next message of a ring
//!                  · clock moves · crash (one shard, or all) · failed fdatasync
//!  disk: synced bytes + unsynced writes; a crash loses, keeps, or tears (per 512-byte
//!        sector) each unsynced write, then the shard recovers from what is left
//!  files: snapshot files and segments (the real `snapshot::write_to` / `load_newest_from`) on a
//!        simulated file system: unsynced data and unsynced renames lost or kept at a power
//!        loss, power lost in the middle of a snapshot, failed writes, read errors, bit rot
//!  rings: FIFO per ordered pair of shards, bounded; a crash drops or keeps what is in flight
//!  end: faults stop, every ring drains, every group is written: everything must settle
//! ```
//!
//! What is checked, and when, is listed in [`check`] (the names a sweep
//! groups its failures by) and in docs/simulation.md. On a violation the
//! report carries the seed, the step and the first violated check;
//! `molly sim --seed N` replays the same run exactly.

pub mod disk;
pub mod files;
pub mod host;
pub mod model;
pub mod workload;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use molly_engine::{
    AccountFlags, Config, CreateTransferResult as TR, Engine, EngineState, Transfer, TransferFlags as TF,
    TransferState,
};
use tokio::sync::oneshot::error::TryRecvError;

use crate::cross::{self, bridge_id, bridge_of, decode, encode, Cross, Effects};
use crate::durable::Outcome;
use crate::journal::{self, CommandBuf, EntryHeader, HEADER_SIZE};
use crate::journal_files::{self, JournalFiles};
use crate::metrics::ShardMetrics;
use crate::runtime::{reply_channel, Answer, Request, ShardError, WriteReply};
use crate::shard::ShardCore;
use crate::snapshot::{self, Position, SegmentRef, SnapshotJob};
use files::{SimFiles, SimWriter};
use model::Model;
use workload::Workload;

/// splitmix64: a small, well-known PRNG; the whole run follows from its
/// seed (the state, `.0`). Shared with the shards' seeded tests.
#[derive(Clone, Debug, Default)]
pub struct Prng(pub u64);

impl Prng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-ish in `0..n` (modulo bias is irrelevant at these sizes).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The checks, by the name a violation and a sweep's summary give them.
pub mod check {
    /// `Engine::check_invariants` on a shard: conservation per ledger,
    /// limits, pending sums, timestamps, indexes.
    pub const ENGINE_INVARIANTS: &str = "engine invariants";
    /// `Cross::check`: every open intent has its pending leg and back.
    pub const INTENTS: &str = "cross-shard intents";
    /// Every account's balances are exactly what its transfer records add
    /// up to (each record counted once): nothing applied twice or half.
    pub const BALANCES_FROM_RECORDS: &str = "balances from records";
    /// The journal holds exactly what the clients sent, in order.
    pub const JOURNAL_CONTENT: &str = "journal holds what clients sent";
    /// The shard's per-event results equal the reference model's.
    pub const MODEL_RESULTS: &str = "results agree with the model";
    /// Accounts, transfers, pending states, clock and history equal the model's.
    pub const MODEL_STATE: &str = "state agrees with the model";
    /// Two or three shards: every client event's result, every credit leg
    /// and every settle a shard journals equal the cross-shard model's
    /// ([`super::model::CrossModel`]).
    pub const CROSS_MODEL_RESULTS: &str = "cross-shard results agree with the model";
    /// Two or three shards: each shard's accounts (user accounts, bridges,
    /// sinks), transfers (legs, tombstones, settles), pending states,
    /// clock and history equal its part of the cross-shard model.
    pub const CROSS_MODEL_STATE: &str = "shard state agrees with the cross-shard model";
    /// No pending transfer is open past its expiry, none expired early.
    pub const EXPIRY: &str = "pending transfers expire on time";
    /// A read answers from applied state.
    pub const READS: &str = "reads see acknowledged state";
    /// Recovery refused a disk that only crashes touched.
    pub const RECOVERY_REFUSED: &str = "recovery refused";
    /// The recovered state is the acknowledged one plus a prefix of the
    /// group in flight: nothing acknowledged lost, nothing half-applied,
    /// nothing from nowhere.
    pub const RECOVERY_PREFIX: &str = "recovered = acknowledged + prefix of in-flight group";
    /// A closed linked chain is answered all `ok` or none; in a batch of new
    /// ids, every event answered `ok` is there and every other is not.
    pub const ANSWERS_MATCH_STATE: &str = "answers match the state";
    /// An id was answered `ok` twice.
    pub const APPLIED_TWICE: &str = "applied at most once";
    /// A transfer answered `ok` is present (merged over its legs) on every later check.
    pub const ACKNOWLEDGED_DURABLE: &str = "acknowledged transfers survive";
    /// A cross-shard transfer is all or nothing: posted legs have their
    /// credit leg, voided ones none, credit legs a live pending leg.
    pub const ALL_OR_NOTHING: &str = "cross-shard all or nothing";
    /// Per pair of shards and ledger, the bridges net to minus what is
    /// credited but not yet settled (zero once all is settled).
    pub const BRIDGES: &str = "conservation across shards (bridges)";
    /// A misrouted write is refused whole; no other write is refused.
    pub const ROUTING: &str = "misrouted writes refused";
    /// Once faults stop, every request completes and every shard goes idle.
    pub const LIVENESS: &str = "liveness";
    /// A snapshot written without a fault loads back (through
    /// `snapshot::load`) as exactly the state captured for it.
    pub const SNAPSHOT_FILE: &str = "a snapshot file loads as captured";
    /// A bit flipped at rest in the synced journal, before its last
    /// acknowledged group: recovery refuses, naming the journal and an
    /// offset at or before the flip, or starts from a snapshot that covers
    /// it and recovers exactly what it would have without the flip.
    pub const JOURNAL_AT_REST: &str = "a bit flipped in the journal is refused or covered";
    /// Recovery skips no snapshot unless a fault damaged its files (a bit
    /// flipped at rest, a read error) or a recovery without snapshots may
    /// have rewritten a segment it names: crashes alone never break one.
    pub const SNAPSHOT_INTACT: &str = "crashes break no snapshot";
}

/// The first violated check of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The step at which it was found.
    pub step: u64,
    /// Which check (one of [`check`]).
    pub check: &'static str,
    /// What was found.
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {}: {}: {}", self.step, self.check, self.detail)
    }
}

/// What one simulation run found.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Shards simulated.
    pub shards: u32,
    /// Steps run.
    pub steps: u64,
    /// Crashes (power losses) simulated, one shard or all.
    pub crashes: u64,
    /// Failed journal writes simulated (each followed by a restart).
    pub failed_writes: u64,
    /// Recoveries refused on a simulated read error (then retried).
    pub read_errors: u64,
    /// Bits flipped in unsynced sectors that a crash let reach the disk
    /// (journal and files), and at rest in synced file data.
    pub bits_flipped: u64,
    /// Bits flipped at rest in the synced journal (each in a copy of the
    /// disk, recovered from apart), and how many of those recoveries refused.
    pub journal_flips: u64,
    /// Of [`SimReport::journal_flips`], recoveries that refused.
    pub journal_flips_refused: u64,
    /// Snapshot files written (and loaded back as captured).
    pub snapshots_written: u64,
    /// Snapshot writes cut by a power loss or failed by a write error.
    pub snapshots_failed: u64,
    /// Restarts that started from a snapshot file.
    pub snapshots_loaded: u64,
    /// Snapshots recovery skipped (damaged), over all restarts.
    pub snapshots_skipped: u64,
    /// Full transfer blocks evicted to segment files (read back through
    /// the simulated mapping), over all snapshots.
    pub blocks_evicted: u64,
    /// Journal files deleted once the kept snapshots covered them.
    pub journal_files_deleted: u64,
    /// Groups made durable and acknowledged.
    pub groups_acknowledged: u64,
    /// Transfers acknowledged `ok`.
    pub transfers_ok: u64,
    /// Events whose result was compared with the reference model.
    pub events_checked: u64,
    /// Of those, events of two- and three-shard runs (the cross-shard model).
    pub events_checked_cross: u64,
    /// Of those, events naming a sharded account (creates of its parts,
    /// transfers from or to a part, moves between parts).
    pub events_checked_sharded: u64,
    /// Of those, moves between the parts of a sharded account, and how many
    /// of them were answered `ok`.
    pub moves_checked: u64,
    /// Moves between parts answered `ok` (and checked against the model).
    pub moves_ok: u64,
    /// Lookups a shard deferred until its open group was applied (a write
    /// answered before its settle was), checked against the model then.
    pub reads_deferred: u64,
    /// Messages delivered between shards.
    pub messages_delivered: u64,
    /// Times a fault point inside production code fired (`buggify!`; 0
    /// without the `sim` feature).
    pub faults_injected: u64,
    /// The first violated check, if any.
    pub violation: Option<Violation>,
}

impl SimReport {
    /// Adds `other`'s counters to this one's (a sweep's totals); the seed,
    /// shard count and violation are per run and stay as they are.
    pub fn add(&mut self, other: &SimReport) {
        self.steps += other.steps;
        self.crashes += other.crashes;
        self.failed_writes += other.failed_writes;
        self.read_errors += other.read_errors;
        self.bits_flipped += other.bits_flipped;
        self.journal_flips += other.journal_flips;
        self.journal_flips_refused += other.journal_flips_refused;
        self.snapshots_written += other.snapshots_written;
        self.snapshots_failed += other.snapshots_failed;
        self.snapshots_loaded += other.snapshots_loaded;
        self.snapshots_skipped += other.snapshots_skipped;
        self.blocks_evicted += other.blocks_evicted;
        self.journal_files_deleted += other.journal_files_deleted;
        self.groups_acknowledged += other.groups_acknowledged;
        self.transfers_ok += other.transfers_ok;
        self.events_checked += other.events_checked;
        self.events_checked_cross += other.events_checked_cross;
        self.events_checked_sharded += other.events_checked_sharded;
        self.moves_checked += other.moves_checked;
        self.moves_ok += other.moves_ok;
        self.reads_deferred += other.reads_deferred;
        self.messages_delivered += other.messages_delivered;
        self.faults_injected += other.faults_injected;
    }
}

/// What to run.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// The seed: everything follows from it.
    pub seed: u64,
    /// Steps before the final drain.
    pub steps: u64,
    /// Shards (1 to 3); `None`: from the seed ([`shards_for_seed`]).
    pub shards: Option<u32>,
}

/// Shards simulated when not chosen: 1, 2 or 3, by `seed % 3`.
pub fn shards_for_seed(seed: u64) -> u32 {
    1 + (seed % 3) as u32
}

/// Most shards the simulator runs.
pub const SHARDS_MAX: u32 = 3;

const GROUP_BYTES_MAX: usize = 64 * 1024;
/// Journal bytes between two snapshots of a shard.
const SNAPSHOT_EVERY_BYTES: u64 = 16 * 1024;

/// Journal bytes after which a shard's journal moves to a new file (it also
/// does at every snapshot): 8 to 68 KiB by seed, so groups land on both
/// sides of rotations and crashes hit them.
fn journal_file_bytes(seed: u64) -> u64 {
    4096 * (2 + seed % 16)
}
/// Full checks (every shard, every record) run this often, after every
/// crash, and at the end.
const FULL_CHECK_EVERY_STEPS: u64 = 128;
/// Steps of the final drain, at most, before liveness is declared broken.
const DRAIN_STEPS_MAX: u64 = 100_000;

type Failure = (&'static str, String);

fn fail<T>(check: &'static str, detail: impl Into<String>) -> Result<T, Failure> {
    Err((check, detail.into()))
}

/// A client's write and where its answer comes.
#[derive(Debug)]
struct ClientWrite {
    commands: Vec<CommandBuf>,
    /// Per command: a transfer batch of ids never sent before.
    fresh: Vec<bool>,
    answer: Answer<WriteReply>,
    /// Where the answer goes on once recorded (a write from the network
    /// simulation, see [`host`]).
    relay: std::cell::RefCell<Option<crate::runtime::Reply<WriteReply>>>,
    /// Two or three shards: the cross-shard model's prediction per command,
    /// made when the group holding it was acknowledged.
    predicted: Option<Vec<model::Predicted>>,
}

/// A group written and not yet durable.
#[derive(Debug)]
struct InFlight {
    offset: u64,
    bytes: Vec<u8>,
    clients: Vec<ClientWrite>,
}

struct Node {
    core: ShardCore,
    /// The journal file being appended to (the files are in `files`).
    journal: JournalFiles<SimWriter>,
    /// Client writes staged in the open group, in order.
    open: Vec<ClientWrite>,
    in_flight: Option<InFlight>,
    /// Durable writes waiting for their cross-shard transfers to settle.
    parked: Vec<ClientWrite>,
    /// Lookups the shard deferred (a write was answered before its settle
    /// was applied): answered once the open group is, and checked then.
    reads: Vec<(u128, Answer<Vec<Transfer>>)>,
    /// The transfer this shard answered `ok` last (lookups ask for it often).
    last_ok: Option<u128>,
    /// The reference model (one shard only: it knows no cross-shard protocol).
    model: Option<Model>,
    /// The shard's directory: journal files, snapshot files and segments.
    files: SimFiles,
    /// A snapshot taken and not yet written (as by the runtime's background thread).
    job: Option<PendingSnapshot>,
    /// Journal bytes made durable since the last snapshot was taken.
    journal_since_snapshot: u64,
    /// Where the newest acknowledged group starts: its journal file (first
    /// sequence) and offset.
    last_group: Option<(u64, u64)>,
    /// A fault damaged the files, or a segment may have been rewritten:
    /// recovery may skip a snapshot from now on.
    files_damaged: bool,
    /// Kept across restarts (creating them is most of a small restart's cost).
    metrics: Arc<ShardMetrics>,
}

/// A snapshot job taken by [`ShardCore::snapshot_start`], and (for one in
/// [`SNAPSHOT_CAPTURE_CHECKED`]) the state it captured, to compare the file
/// with once written.
struct PendingSnapshot {
    job: SnapshotJob,
    captured: Option<(EngineState, Vec<Transfer>)>,
}

/// One snapshot in this many has its file compared with the state captured
/// (an export of the whole engine when taken, and a load when written: a
/// quarter of a run's time when done for every one).
const SNAPSHOT_CAPTURE_CHECKED: u64 = 4;

impl Node {
    /// After a durable group: a snapshot once enough journal has passed
    /// since the last one (and none is being written), as the runtime does.
    fn snapshot_due(&mut self, group: &[u8], dir: &Path, prng: &mut Prng) {
        self.journal_since_snapshot += group.len() as u64;
        if self.journal_since_snapshot < SNAPSHOT_EVERY_BYTES || self.job.is_some() {
            return;
        }
        let Some(job) = self.core.snapshot_start(dir) else { return };
        self.journal_since_snapshot = 0;
        let checked = prng.below(SNAPSHOT_CAPTURE_CHECKED) == 0;
        let captured = checked.then(|| (self.core.engine().export(), self.core.cross().export()));
        self.job = Some(PendingSnapshot { job, captured });
    }
}

/// Turns the fault points on for a run, and off when it ends (however it ends).
struct FaultPoints;

impl FaultPoints {
    fn on(seed: u64) -> Self {
        crate::buggify::enable(seed);
        Self
    }
}

impl Drop for FaultPoints {
    fn drop(&mut self) {
        crate::buggify::disable();
    }
}

struct World {
    _faults: FaultPoints,
    prng: Prng,
    config: Config,
    shards: u32,
    nodes: Vec<Node>,
    /// rings[from][to]: messages as the runtime carries them (rkyv).
    rings: Vec<Vec<VecDeque<rkyv::util::AlignedVec>>>,
    ring_depth: usize,
    now_ns: u64,
    workload: Workload,
    /// Two or three shards: the reference model of the cross-shard protocol
    /// (`None` with one shard).
    cross_model: Option<model::CrossModel>,
    /// Transfer ids answered `ok`, and the shard that answered.
    acked: BTreeMap<u128, usize>,
    /// Transfer ids sent more than once (a retry may apply what an earlier answer said failed).
    resent: BTreeSet<u128>,
    step: u64,
    /// Full transfer blocks a shard keeps in memory once they are in a segment.
    blocks_in_memory: usize,
    /// Bits flip at rest in synced files (now and then, at a crash).
    bit_rot: bool,
    /// How the shards' journals rotate and are kept.
    rotation: Rotation,
    report: SimReport,
}

/// Events an outcome answers (what a results check counts).
fn events(outcome: &Outcome) -> u64 {
    match outcome {
        Outcome::Accounts(r) => r.len() as u64,
        Outcome::Transfers(r) => r.len() as u64,
        Outcome::Ticked { .. } => 0,
    }
}

/// Steps a model that stands at the acknowledged state through the entries
/// of the group in flight until it matches the recovered state: recovery
/// keeps a prefix of them. `step(k)` applies entry `k - 1` (none for `k =
/// 0`) and compares; no prefix matching is a violation, reported with the
/// acknowledged state's difference and the whole group's.
fn step_to_recovered(
    entries: usize,
    what: &str,
    mut step: impl FnMut(usize) -> Result<Result<(), String>, Failure>,
) -> Result<(), Failure> {
    let mut first = None;
    for k in 0..=entries {
        match step(k)? {
            Ok(()) => return Ok(()),
            Err(e) if k < entries => {
                first.get_or_insert(e);
            }
            Err(e) => {
                return fail(
                    check::RECOVERY_PREFIX,
                    format!(
                        "no prefix of the {entries} entries in flight matches{what}; acknowledged state: {}; all: {e}",
                        first.unwrap_or(e.clone())
                    ),
                );
            }
        }
    }
    unreachable!("the last step returns")
}

/// The commands of an acknowledged group (it must parse: it was written whole).
fn acknowledged_commands(in_flight: &InFlight, body_len_max: u32) -> Result<Vec<CommandBuf>, Failure> {
    group_commands(&in_flight.bytes, body_len_max)
        .or_else(|e| fail(check::JOURNAL_CONTENT, format!("the acknowledged group does not parse: {e}")))
}

/// The clients' commands of an acknowledged group are exactly what its
/// writes sent, in order: all but ticks and, with `peers`, credit legs and
/// settles (which the shard makes itself; a lone shard makes none).
fn journaled_as_sent(commands: &[CommandBuf], in_flight: &InFlight, peers: bool) -> Result<(), Failure> {
    let mut sent = in_flight.clients.iter().flat_map(|w| w.commands.iter());
    for command in commands {
        let shard_made = match command {
            CommandBuf::Tick { .. } => true,
            CommandBuf::Credits(_) | CommandBuf::Settles(_) => peers,
            _ => false,
        };
        if shard_made {
            continue;
        }
        if sent.next() != Some(command) {
            return fail(
                check::JOURNAL_CONTENT,
                format!("journaled {command:?} is not the next command sent"),
            );
        }
    }
    match sent.next() {
        Some(extra) => fail(check::JOURNAL_CONTENT, format!("{extra:?} was sent but not journaled")),
        None => Ok(()),
    }
}

/// Parses one sealed group back into its commands.
fn group_commands(bytes: &[u8], body_len_max: u32) -> Result<Vec<CommandBuf>, String> {
    let header: EntryHeader = bytemuck::pod_read_unaligned(&bytes[..HEADER_SIZE]);
    let mut commands = Vec::new();
    journal::scan("group", bytes, 0, header.sequence, body_len_max, |_, command| commands.push(command))
        .map_err(|e| e.to_string())?;
    Ok(commands)
}

/// Where recovery starts: a snapshot file's state (or an empty ledger), and
/// what loading found.
struct Start {
    engine: Engine,
    cross: Cross,
    position: Position,
    segments: Vec<SegmentRef>,
    used: Option<PathBuf>,
    skipped: Vec<(PathBuf, String)>,
}

/// Loads the newest usable snapshot in `files` (if given) as
/// `durable::recover_shard` does (`snapshot::load_newest`, skipping broken
/// ones), else starts from an empty ledger.
fn start_from(
    shard: usize,
    shards: u32,
    files: Option<(&SimFiles, &Path)>,
    config: &Config,
) -> Result<Start, String> {
    let config = &crate::route::engine_config(config, shard as u32, shards);
    let loaded = match files {
        Some((files, dir)) => snapshot::load_newest_from(files, dir, config),
        None => snapshot::Loaded::default(),
    };
    let skipped = loaded.skipped;
    match loaded.used {
        Some((loaded, path)) => {
            let cross = Cross::import(shard as u32, shards, &loaded.engine, &loaded.intents)?;
            Ok(Start {
                engine: loaded.engine,
                cross,
                position: loaded.position,
                segments: loaded.segments,
                used: Some(path),
                skipped,
            })
        }
        None => Ok(Start {
            engine: Engine::new(config.clone()).map_err(|e| e.to_string())?,
            cross: Cross::new(shard as u32, shards),
            position: Position { next_sequence: 1, journal_offset: 0 },
            segments: Vec::new(),
            used: None,
            skipped,
        }),
    }
}

/// How a shard's journal rotates and is kept.
#[derive(Clone, Copy, Debug)]
struct Rotation {
    file_bytes: u64,
    keep_journal: bool,
}

/// Recovers a shard from `start` and its journal files after it, as
/// `durable::recover_shard` does (the same `journal_files::recover`).
#[allow(clippy::too_many_arguments)] // the recovery's inputs, each needed
fn replay(
    shard: usize,
    shards: u32,
    start: Start,
    files: &SimFiles,
    dir: &Path,
    config: &Config,
    metrics: &Arc<ShardMetrics>,
    blocks_in_memory: usize,
    rotation: Rotation,
) -> Result<ShardCore, String> {
    let Start { mut engine, mut cross, position, segments, used, skipped } = start;
    let (mut expired, mut effects) = (Vec::new(), Effects::default());
    let body_len_max = config.batch_events_max * journal::RECORD_SIZE as u32;
    let what = crate::durable::start_description(used.as_deref(), &skipped);
    let end = journal_files::recover(files, dir, position, &what, body_len_max, |_, command| {
        cross
            .apply(&mut engine, &command.as_command(), &mut expired, &mut effects)
            .expect("journaled batches are within limits");
    })
    .map_err(|e| e.to_string())?;
    cross.check(&engine)?;
    let mut writer = end.writer(GROUP_BYTES_MAX, config.batch_events_max as usize);
    writer.set_file_bytes_max(rotation.file_bytes);
    let mut core = ShardCore::new(shard, shards, engine, writer, metrics.clone())
        .with_cross(cross)
        .with_segments(segments)
        .with_snapshot_loaded(used.map(|_| position));
    core.set_blocks_in_memory(blocks_in_memory);
    core.set_keep_journal(rotation.keep_journal);
    Ok(core)
}

/// The directory of shard `n`'s snapshot files, in its simulated file system.
fn shard_dir(n: usize) -> PathBuf {
    PathBuf::from(format!("/sim/shard-{n}"))
}

impl World {
    fn new(options: Options) -> Self {
        let seed = options.seed;
        let shards = options.shards.unwrap_or_else(|| shards_for_seed(seed));
        assert!((1..=SHARDS_MAX).contains(&shards));
        let mut prng = Prng(seed);
        // Sometimes few transfers fit, so the limit is reached.
        // Sometimes few transfers fit, so the limit is reached; else room for
        // the whole run (a small engine is quick to create at every restart).
        let room = (options.steps * 2).next_power_of_two().clamp(2048, 1 << 22) as u32;
        let transfers_max = if prng.chance(10) { 200 + prng.below(2000) as u32 } else { room };
        let config = Config { accounts_max: 64, transfers_max, ..Config::default() };
        // Full blocks kept in memory once in a segment: few, so blocks are
        // evicted and read back through the (simulated) mapping.
        let blocks_in_memory = prng.below(3) as usize;
        // Some disks rot: bits flip at rest in synced snapshot files and segments.
        let bit_rot = prng.chance(25);
        // A rotting disk keeps its whole journal: a flipped bit in a segment
        // every snapshot names can then still be recovered from (with the
        // journal deleted behind the snapshots, recovery would refuse; the
        // durability tests check that refusal).
        let rotation = Rotation { file_bytes: journal_file_bytes(seed), keep_journal: bit_rot };
        let nodes = (0..shards as usize)
            .map(|shard| {
                let files = SimFiles::new(prng.next_u64());
                let metrics = Arc::new(ShardMetrics::new(shard));
                let start = start_from(shard, shards, None, &config).expect("an empty ledger");
                let dir = shard_dir(shard);
                let core =
                    replay(shard, shards, start, &files, &dir, &config, &metrics, blocks_in_memory, rotation)
                        .expect("an empty disk recovers");
                let model = (shards == 1).then(|| model::new(config.clone()));
                Node {
                    core,
                    journal: JournalFiles::new(&dir),
                    open: Vec::new(),
                    in_flight: None,
                    parked: Vec::new(),
                    reads: Vec::new(),
                    last_ok: None,
                    model,
                    files,
                    job: None,
                    journal_since_snapshot: 0,
                    files_damaged: false,
                    last_group: None,
                    metrics,
                }
            })
            .collect();
        let ring_depth = 1 + prng.below(4) as usize;
        let cross_model = (shards > 1).then(|| model::CrossModel::new(&config, shards));
        Self {
            _faults: FaultPoints::on(seed),
            prng,
            config,
            shards,
            nodes,
            rings: (0..shards).map(|_| (0..shards).map(|_| VecDeque::new()).collect()).collect(),
            ring_depth,
            now_ns: 1_000_000_000,
            workload: Workload::new(shards),
            cross_model,
            acked: BTreeMap::new(),
            resent: BTreeSet::new(),
            step: 0,
            blocks_in_memory,
            bit_rot,
            rotation,
            report: SimReport { seed, shards, ..SimReport::default() },
        }
    }

    fn body_len_max(&self) -> u32 {
        self.config.batch_events_max * journal::RECORD_SIZE as u32
    }

    /// Moves what each shard has to send into its rings, as far as they have room.
    fn flush(&mut self) {
        for (from, node) in self.nodes.iter_mut().enumerate() {
            for to in 0..self.shards as usize {
                while self.rings[from][to].len() < self.ring_depth {
                    let Some(message) = node.core.outbox(to).pop_front() else { break };
                    self.rings[from][to].push_back(encode(&message));
                }
            }
        }
    }

    // ------------------------------------------------------------------
    // Client writes and their answers.

    fn client_write(&mut self, n: usize) -> Result<(), Failure> {
        let workload::Write { commands, fresh, misrouted } = self.workload.write(&mut self.prng, n);
        for (command, &fresh) in commands.iter().zip(&fresh) {
            if let (CommandBuf::CreateTransfers(batch), false) = (command, fresh) {
                self.resent.extend(batch.iter().map(|t| t.id));
            }
        }
        let (reply, mut answer) = reply_channel();
        let staged = commands.clone();
        match self.nodes[n].core.offer(Request::Write { commands, reply }, self.now_ns) {
            Ok(()) => {
                if misrouted {
                    return match answer.try_recv() {
                        Ok(Err(ShardError::Refused(_))) => Ok(()),
                        other => fail(check::ROUTING, format!("a misrouted write got {other:?}")),
                    };
                }
                if let Ok(reply) = answer.try_recv() {
                    return fail(
                        check::ROUTING,
                        format!("a write was answered before it was durable: {reply:?}"),
                    );
                }
                self.nodes[n].open.push(ClientWrite {
                    commands: staged,
                    fresh,
                    answer,
                    relay: Default::default(),
                    predicted: None,
                });
                Ok(())
            }
            // The open group is full: write it first (the request is dropped, never acknowledged).
            Err(_) => self.write_group(n, true),
        }
    }

    /// Records a write's answer: every `ok` transfer at most once; in a
    /// batch of new ids, every event answered `ok` is there (merged over its
    /// legs) and every other is not — so a linked chain is all or nothing,
    /// across shards too.
    fn record(&mut self, n: usize, write: &ClientWrite, reply: &WriteReply) -> Result<(), Failure> {
        if let Some(relay) = write.relay.take() {
            let _ = relay.send(reply.clone());
        }
        let Ok(outcomes) = reply else { return Ok(()) };
        if let (Some(predicted), Some(cross_model)) = (&write.predicted, &self.cross_model) {
            let counts = cross_results(n, write, predicted, outcomes, cross_model)?;
            self.report.events_checked += counts.events;
            self.report.events_checked_cross += counts.events;
            self.report.events_checked_sharded += counts.sharded;
            self.report.moves_checked += counts.moves;
            self.report.moves_ok += counts.moves_ok;
        }
        let mut found = Vec::new();
        for ((command, outcome), &fresh) in write.commands.iter().zip(outcomes).zip(&write.fresh) {
            let (CommandBuf::CreateTransfers(batch), Outcome::Transfers(results)) = (command, outcome) else {
                continue;
            };
            // A closed linked chain is answered all `ok` or none.
            let mut start = 0;
            for (i, t) in batch.iter().enumerate() {
                if t.flags.contains(TF::LINKED) {
                    continue;
                }
                let chain = &results[start..=i];
                if chain.iter().any(|r| r.is_ok()) && !chain.iter().all(|r| r.is_ok()) {
                    return fail(
                        check::ANSWERS_MATCH_STATE,
                        format!("a linked chain answered {chain:?} by shard {n}: {:?}", &batch[start..=i]),
                    );
                }
                start = i + 1;
            }
            for (t, result) in batch.iter().zip(results) {
                if !fresh || t.id == 0 || cross::is_reserved(t.id) || self.resent.contains(&t.id) {
                    continue;
                }
                found.clear();
                for node in &self.nodes {
                    node.core.engine().lookup_transfers(&[t.id], &mut found).expect("one id");
                }
                let present = cross::user_view(&found).is_some();
                if present != result.is_ok() {
                    return fail(
                        check::ANSWERS_MATCH_STATE,
                        format!(
                            "transfer {} answered {result} by shard {n}, but it is {}: {found:?}",
                            t.id,
                            if present { "there" } else { "not there" }
                        ),
                    );
                }
            }
        }
        if outcomes.len() != write.commands.len() {
            return fail(
                check::MODEL_RESULTS,
                format!("{} outcomes for {} commands", outcomes.len(), write.commands.len()),
            );
        }
        for (command, outcome) in write.commands.iter().zip(outcomes) {
            let (CommandBuf::CreateTransfers(batch), Outcome::Transfers(results)) = (command, outcome) else {
                continue;
            };
            for (t, result) in batch.iter().zip(results) {
                if *result == TR::Ok {
                    self.report.transfers_ok += 1;
                    self.nodes[n].last_ok = Some(t.id);
                    if let Some(before) = self.acked.insert(t.id, n) {
                        return fail(
                            check::APPLIED_TWICE,
                            format!(
                                "transfer {} answered ok by shard {before}, then again by shard {n}",
                                t.id
                            ),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    /// Answers that arrived for parked writes of shard `n`.
    fn poll_parked(&mut self, n: usize) -> Result<(), Failure> {
        let mut still = Vec::new();
        for mut write in std::mem::take(&mut self.nodes[n].parked) {
            match write.answer.try_recv() {
                Ok(reply) => self.record(n, &write, &reply)?,
                Err(TryRecvError::Empty) => still.push(write),
                Err(TryRecvError::Closed) => {}
            }
        }
        self.nodes[n].parked = still;
        Ok(())
    }

    // ------------------------------------------------------------------
    // Groups.

    /// Seals the open group (or an idle expiry tick) and writes it; synced
    /// and acknowledged when `sync`, else left in flight.
    fn write_group(&mut self, n: usize, sync: bool) -> Result<(), Failure> {
        let node = &mut self.nodes[n];
        let Some((offset, bytes)) = node.core.seal(self.now_ns) else { return Ok(()) };
        let bytes = bytes.to_vec();
        // A new file (the writer rotated) is created and its name synced first.
        let first = node.core.journal_file();
        node.journal.write(&node.files, first, offset, &bytes).or_else(|e| {
            fail(check::LIVENESS, format!("shard {n}: a journal write failed without a fault: {e}"))
        })?;
        node.in_flight = Some(InFlight { offset, bytes, clients: std::mem::take(&mut node.open) });
        // Every third group synced at once is applied while it is written,
        // as the runtime applies every group: its answers and messages are
        // held until it is durable; the others are applied once durable.
        // (Chosen by count, not drawn: the seeds' random streams stay as
        // they were. Only groups synced in the same step:
        // the checks of a crash or failed write take the live engine as the
        // acknowledged state, which a group applied ahead is not. The kill -9
        // tests of `molly serve` crash inside that window.)
        if sync && self.report.groups_acknowledged % 3 == 1 {
            node.core.apply_ahead();
        }
        if sync {
            self.sync_and_acknowledge(n)?;
        }
        Ok(())
    }

    fn sync_and_acknowledge(&mut self, n: usize) -> Result<(), Failure> {
        let body_len_max = self.body_len_max();
        let node = &mut self.nodes[n];
        let Some(in_flight) = node.in_flight.take() else { return Ok(()) };
        node.journal.sync(&node.files).or_else(|e| {
            fail(check::LIVENESS, format!("shard {n}: a journal sync failed without a fault: {e}"))
        })?;
        node.core.durable();
        node.last_group = node.journal.open_file().map(|file| (file, in_flight.offset));
        self.report.groups_acknowledged += 1;
        // Only a durable group changes the engine: check what it can break, cheaply.
        check_balances(node.core.engine())
            .or_else(|e| fail(check::ENGINE_INVARIANTS, format!("shard {n}: {e}")))?;
        node.snapshot_due(&in_flight.bytes, &shard_dir(n), &mut self.prng);
        if self.nodes[n].model.is_some() {
            self.acknowledge_with_model(n, in_flight, body_len_max)?;
        } else if self.cross_model.is_some() {
            self.acknowledge_with_cross_model(n, in_flight, body_len_max)?;
        } else {
            for mut write in in_flight.clients {
                match write.answer.try_recv() {
                    Ok(reply) => self.record(n, &write, &reply)?,
                    Err(TryRecvError::Empty) => self.nodes[n].parked.push(write),
                    Err(TryRecvError::Closed) => {
                        return fail(check::LIVENESS, "a durable write's answer was dropped");
                    }
                }
            }
        }
        self.check_deferred_reads(n)?;
        self.poll_parked(n)?;
        self.flush();
        Ok(())
    }

    /// One shard with its model: the model applies exactly what the group
    /// holds; every client command in it must be what the client sent, in
    /// order, answered at once with the model's results.
    fn acknowledge_with_model(
        &mut self,
        n: usize,
        in_flight: InFlight,
        body_len_max: u32,
    ) -> Result<(), Failure> {
        let commands = acknowledged_commands(&in_flight, body_len_max)?;
        let mut predicted = Vec::with_capacity(commands.len());
        let model = self.nodes[n].model.as_mut().expect("a model");
        for command in &commands {
            let outcome = model::apply(model, command);
            if !matches!(command, CommandBuf::Tick { .. }) {
                predicted.push(outcome);
            }
        }
        journaled_as_sent(&commands, &in_flight, false)?;
        let mut predicted = predicted.into_iter();
        for mut write in in_flight.clients {
            let reply = match write.answer.try_recv() {
                Ok(Ok(outcomes)) => outcomes,
                other => return fail(check::MODEL_RESULTS, format!("a durable write got {other:?}")),
            };
            for (command, got) in write.commands.iter().zip(&reply) {
                let expected = predicted.next().expect("one outcome per command");
                self.report.events_checked += events(&expected);
                if got != &expected {
                    return fail(
                        check::MODEL_RESULTS,
                        format!("{command:?}\n  shard answered {got:?}\n  model expects  {expected:?}"),
                    );
                }
            }
            self.record(n, &write, &Ok(reply))?;
        }
        let node = &mut self.nodes[n];
        let model = node.model.as_mut().expect("a model");
        model.check_conservation().or_else(|e| fail(check::MODEL_STATE, e))?;
        model.check(node.core.engine(), false).or_else(|e| fail(check::MODEL_STATE, e))
    }

    /// Two or three shards: the cross-shard model applies what shard `n`'s
    /// group holds, in its journal order (client batches, credit legs,
    /// settles; checking the legs and settles), predicts each client
    /// command's results (kept with the write, compared when it is
    /// answered: at once, or once its cross-shard transfers settle), and
    /// the shard's state must equal the model's.
    fn acknowledge_with_cross_model(
        &mut self,
        n: usize,
        in_flight: InFlight,
        body_len_max: u32,
    ) -> Result<(), Failure> {
        let commands = acknowledged_commands(&in_flight, body_len_max)?;
        let mut predicted = Vec::with_capacity(commands.len());
        for command in &commands {
            let p = self.cross_apply(n, command)?;
            if !matches!(command, CommandBuf::Tick { .. } | CommandBuf::Credits(_) | CommandBuf::Settles(_)) {
                predicted.push(p);
            }
        }
        journaled_as_sent(&commands, &in_flight, true)?;
        let mut predicted = predicted.into_iter();
        for mut write in in_flight.clients {
            let mine: Option<Vec<model::Predicted>> =
                write.commands.iter().map(|_| predicted.next().flatten()).collect();
            write.predicted = mine;
            match write.answer.try_recv() {
                Ok(reply) => self.record(n, &write, &reply)?,
                Err(TryRecvError::Empty) => self.nodes[n].parked.push(write),
                Err(TryRecvError::Closed) => {
                    return fail(check::LIVENESS, "a durable write's answer was dropped");
                }
            }
        }
        if let Some(cross_model) = &mut self.cross_model {
            cross_model
                .check_shard(n, self.nodes[n].core.engine(), false)
                .or_else(|e| fail(check::CROSS_MODEL_STATE, e))?;
        }
        Ok(())
    }

    /// The cross-shard model applies one command journaled by shard `n`.
    fn cross_apply(&mut self, n: usize, command: &CommandBuf) -> Result<Option<model::Predicted>, Failure> {
        let Some(cross_model) = &mut self.cross_model else { return Ok(None) };
        match cross_model.apply(n, command) {
            Ok(predicted) => Ok(Some(predicted)),
            Err(model::ModelError::Mismatch(e)) => fail(check::CROSS_MODEL_RESULTS, e),
        }
    }

    // ------------------------------------------------------------------
    // Messages.

    fn deliver(&mut self, from: usize, to: usize) -> Result<(), Failure> {
        if self.nodes[to].in_flight.is_some() {
            return Ok(());
        }
        let Some(bytes) = self.rings[from][to].pop_front() else { return Ok(()) };
        let message = decode(&bytes).expect("shards exchange only messages they encoded");
        self.report.messages_delivered += 1;
        if let Err(back) = self.nodes[to].core.deliver(from, message, self.now_ns) {
            // The open group has no room: the message waits at the head of its ring.
            self.rings[from][to].push_front(encode(&back));
        }
        // Answers settle intents: their writes are answered at once.
        self.poll_parked(to)
    }

    // ------------------------------------------------------------------
    // Snapshots.

    /// The snapshot taken on shard `n` is written (`snapshot::write_to` on
    /// the shard's simulated files) and handed back to the shard
    /// (`ShardCore::snapshot_finished`: the blocks it wrote may leave
    /// memory), as the runtime's background thread and poll do. Sometimes
    /// the power goes in the middle (the shard restarts), sometimes a write
    /// fails (the shard goes on: the journal holds everything).
    fn finish_snapshot(&mut self, n: usize, faults: bool) -> Result<(), Failure> {
        let Some(pending) = self.nodes[n].job.take() else { return Ok(()) };
        let node = &mut self.nodes[n];
        let (power_loss, write_errors) =
            if faults { (self.prng.chance(10), self.prng.chance(10)) } else { (false, false) };
        if power_loss {
            let after = self.prng.below(16);
            node.files
                .set_faults(files::Faults { power_loss_after: Some(after), ..files::Faults::default() });
            // Whatever got written (or deleted) stays as the crash leaves it;
            // the outcome never reaches the shard.
            let good = node.core.snapshots_good().to_vec();
            let _ =
                journal_files::write_snapshot(&node.files, pending.job, &good, !self.rotation.keep_journal);
            self.report.snapshots_failed += 1;
            return self.crash(n);
        }
        if write_errors {
            node.files.set_faults(files::Faults { write_error_percent: 20, ..files::Faults::default() });
        }
        let position = pending.job.position;
        let good = node.core.snapshots_good().to_vec();
        let outcome =
            journal_files::write_snapshot(&node.files, pending.job, &good, !self.rotation.keep_journal);
        node.files.set_faults(files::Faults::default());
        let outcome = outcome.map(|(done, pruned)| {
            node.core.journal_pruned(&pruned);
            if let Ok(deleted) = &pruned {
                self.report.journal_files_deleted += deleted.len() as u64;
            }
            done
        });
        if outcome.is_err() && !write_errors {
            return fail(
                check::SNAPSHOT_FILE,
                format!("shard {n}: writing failed without a fault: {outcome:?}"),
            );
        }
        let blocks_before = node.core.engine().transfers().blocks_in_memory();
        let Ok(path) = node.core.snapshot_finished(outcome, 0.0) else {
            // A snapshot whose last step failed (say, the directory's sync)
            // may still be on disk, naming segments the next snapshot
            // rewrites: it may no longer load.
            node.files_damaged = true;
            self.report.snapshots_failed += 1;
            return Ok(());
        };
        self.report.snapshots_written += 1;
        self.report.blocks_evicted +=
            blocks_before.saturating_sub(node.core.engine().transfers().blocks_in_memory()) as u64;
        // What was written loads back as exactly what was captured.
        let Some((engine, intents)) = pending.captured else { return Ok(()) };
        let config = crate::route::engine_config(&self.config, n as u32, self.shards);
        let loaded = snapshot::load_from(&node.files, &path, config)
            .or_else(|e| fail(check::SNAPSHOT_FILE, format!("shard {n}: {}: {e}", path.display())))?;
        if loaded.position != position || loaded.intents != intents || loaded.engine.export() != engine {
            return fail(
                check::SNAPSHOT_FILE,
                format!(
                    "shard {n}: {} (at {:?}, captured at {position:?}) does not load as captured",
                    path.display(),
                    loaded.position
                ),
            );
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // Faults.

    /// Power loss of shard `n` and restart; messages in flight to and from
    /// it are kept or lost.
    fn crash(&mut self, n: usize) -> Result<(), Failure> {
        self.report.crashes += 1;
        let (keep_to, keep_from) = (self.prng.chance(50), self.prng.chance(50));
        for other in 0..self.shards as usize {
            if !keep_from {
                self.rings[n][other].clear();
            }
            if !keep_to {
                self.rings[other][n].clear();
            }
        }
        self.restart(n)
    }

    /// Every shard loses power at once (the process dies): nothing in the rings survives.
    fn crash_all(&mut self) -> Result<(), Failure> {
        self.report.crashes += 1;
        for ring in self.rings.iter_mut().flatten() {
            ring.clear();
        }
        for n in 0..self.shards as usize {
            self.restart(n)?;
        }
        Ok(())
    }

    /// The fdatasync of shard `n`'s group fails: the group's writes fail, the shard restarts.
    fn failed_write(&mut self, n: usize) -> Result<(), Failure> {
        self.report.failed_writes += 1;
        self.nodes[n].core.write_failed("simulated fdatasync failure".into());
        if let Some(in_flight) = &mut self.nodes[n].in_flight {
            for write in &mut in_flight.clients {
                match write.answer.try_recv() {
                    Ok(Err(ShardError::Failed { .. })) => {}
                    other => {
                        return fail(check::LIVENESS, format!("a write of a failed group got {other:?}"))
                    }
                }
            }
        }
        self.crash(n)
    }

    /// The disk loses what was not synced, the shard recovers from what is
    /// left, and the recovered state must be the acknowledged state (the
    /// live engine: a group is applied only once durable) plus a prefix of
    /// the entries of the group that was in flight.
    fn restart(&mut self, n: usize) -> Result<(), Failure> {
        let body_len_max = self.body_len_max();
        let (shards, config) = (self.shards, self.config.clone());
        let node = &mut self.nodes[n];
        let in_flight = match node.in_flight.take() {
            Some(in_flight) => group_commands(&in_flight.bytes, body_len_max).or_else(|e| {
                fail(check::JOURNAL_CONTENT, format!("the group in flight does not parse: {e}"))
            })?,
            None => Vec::new(),
        };
        node.files.crash(&mut self.prng);
        node.journal = JournalFiles::new(&shard_dir(n));
        // Deferred reads die with the shard (nobody answers them).
        node.reads.clear();
        // A snapshot being written dies with the process.
        node.job = None;
        if self.bit_rot && self.prng.chance(10) {
            // A bit flips at rest in a synced snapshot file or segment:
            // recovery must skip what it damaged, never load it.
            let prefix = if self.prng.chance(50) { "snapshot-" } else { "transfers-" };
            if node.files.flip_at_rest(&mut self.prng, prefix).is_some() {
                node.files_damaged = true;
            }
        }
        let dir = shard_dir(n);
        // Mostly from the newest snapshot file and the journal after it;
        // sometimes the whole journal, while none of it is deleted.
        let journal_files = journal_files::list_in(&node.files, &dir).unwrap_or_default();
        let whole_journal = journal_files.first().is_none_or(|(first, _)| *first == 1);
        let use_files = !self.prng.chance(5) || !whole_journal;
        if !use_files && !snapshot::list_in(&node.files, &dir).is_empty() {
            // The next snapshot rewrites segments from block 0: older snapshots may no longer load.
            node.files_damaged = true;
        }
        let files = use_files.then_some((&node.files, dir.as_path()));
        // On a rotting disk, now and then a bit flips at rest in the synced
        // journal, before its last acknowledged group (a flip in the last
        // group looks like a torn write and is cut: the journal's known
        // limit, see docs/shards.md). Recovered from a copy of the disk:
        // compared below with the recovery from the real one.
        let mut flipped = None;
        let rotation = self.rotation;
        let blocks = self.blocks_in_memory;
        // Bytes a flip may hit: every journal file before the one of the
        // last acknowledged group, and that one before the group.
        let candidates: Vec<(PathBuf, u64)> = match node.last_group {
            Some((last_file, last_offset)) => journal_files
                .iter()
                .filter(|(first, _)| *first <= last_file)
                .map(|(first, path)| {
                    let len = if *first == last_file {
                        last_offset
                    } else {
                        node.files.durable_len(path).unwrap_or(0)
                    };
                    (path.clone(), len)
                })
                .filter(|(_, len)| *len > 0)
                .collect(),
            None => Vec::new(),
        };
        let total: u64 = candidates.iter().map(|(_, len)| len).sum();
        if self.bit_rot && self.prng.chance(10) && total > 0 {
            let mut at = self.prng.below(total);
            let bit = self.prng.below(8) as u8;
            let (path, _) = candidates
                .iter()
                .find(|(_, len)| {
                    let here = at < *len;
                    if !here {
                        at -= len;
                    }
                    here
                })
                .expect("at is below the total");
            let copy = node.files.copy();
            copy.flip(path, at, bit);
            self.report.journal_flips += 1;
            let start = start_from(n, shards, Some((&copy, dir.as_path())), &config)
                .or_else(|e| fail(check::RECOVERY_REFUSED, e))?;
            match replay(n, shards, start, &copy, &dir, &config, &node.metrics, blocks, rotation) {
                Ok(core) => flipped = Some((path.clone(), at, core.engine().export(), core.cross().export())),
                Err(e) => {
                    let named = e
                        .split("at offset ")
                        .nth(1)
                        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                        .and_then(|digits| digits.parse::<u64>().ok());
                    if !(e.contains(&format!("journal {}:", path.display()))
                        && e.contains("refusing to start")
                        && named.is_some_and(|o| o <= at))
                    {
                        return fail(
                            check::JOURNAL_AT_REST,
                            format!("shard {n}: bit flipped at offset {at} of {}: {e}", path.display()),
                        );
                    }
                    self.report.journal_flips_refused += 1;
                }
            }
        }
        // Sometimes a journal read fails during recovery: it must refuse (an
        // operating error, for the operator to retry), never recover less
        // than is there.
        if self.prng.chance(3) {
            let start =
                start_from(n, shards, files, &config).or_else(|e| fail(check::RECOVERY_REFUSED, e))?;
            node.files.set_faults(files::Faults { read_error_percent: 100, ..files::Faults::default() });
            let unlucky =
                replay(n, shards, start, &node.files, &dir, &config, &node.metrics, blocks, rotation);
            node.files.set_faults(files::Faults::default());
            match unlucky {
                Err(e) if e.contains(files::READ_ERROR) => self.report.read_errors += 1,
                Err(e) => return fail(check::RECOVERY_REFUSED, e),
                // The failing offsets were not read (before the start, zero padding): a good recovery.
                Ok(_) => {}
            }
        }
        // Sometimes reads of snapshot files fail: recovery skips what it
        // cannot read, for an older snapshot or the whole journal.
        let file_read_errors = use_files && self.prng.chance(3);
        if file_read_errors {
            node.files.set_faults(files::Faults { read_error_percent: 30, ..files::Faults::default() });
        }
        let start = start_from(n, shards, files, &config);
        node.files.set_faults(files::Faults::default());
        let start = start.or_else(|e| fail(check::RECOVERY_REFUSED, e))?;
        self.report.snapshots_skipped += start.skipped.len() as u64;
        self.report.snapshots_loaded += u64::from(start.used.is_some());
        if !start.skipped.is_empty() {
            if !node.files_damaged && !file_read_errors {
                return fail(check::SNAPSHOT_INTACT, format!("shard {n}: skipped {:?}", start.skipped));
            }
            // Starting from an older snapshot, the next ones rewrite the
            // segments after it (same names, more blocks): the skipped
            // snapshots name the old ones.
            node.files_damaged = true;
        }
        let core =
            match replay(n, shards, start, &node.files, &dir, &config, &node.metrics, blocks, rotation) {
                // Read errors made the newest snapshots unusable, and the one
                // recovery fell back to (or the start of the journal) needs
                // journal files deleted behind the newer ones: recovery refuses,
                // naming them (nothing changed yet), and the operator retries
                // once the disk reads again.
                Err(e) if file_read_errors && e.contains("is missing") && e.contains("refusing to start") => {
                    self.report.read_errors += 1;
                    let start = start_from(n, shards, files, &config)
                        .or_else(|e| fail(check::RECOVERY_REFUSED, e))?;
                    replay(n, shards, start, &node.files, &dir, &config, &node.metrics, blocks, rotation)
                }
                other => other,
            }
            .or_else(|e| fail(check::RECOVERY_REFUSED, e))?;
        if let Some((path, at, engine, intents)) = flipped {
            if engine != core.engine().export() || intents != core.cross().export() {
                return fail(
                    check::JOURNAL_AT_REST,
                    format!(
                        "shard {n}: with a bit flipped at offset {at} of {}, recovery started and recovered another state",
                        path.display()
                    ),
                );
            }
        }
        // A restart changes the engine: every invariant of what it recovered.
        core.engine()
            .check_invariants()
            .or_else(|v| fail(check::ENGINE_INVARIANTS, format!("shard {n}: {v}")))?;
        if let Some(model) = &mut node.model {
            // The model stands at the acknowledged state: step it through the group in flight.
            step_to_recovered(in_flight.len(), "", |k| {
                if k > 0 {
                    model::apply(model, &in_flight[k - 1]);
                }
                Ok(model.check(core.engine(), true))
            })?;
        } else {
            let live = (node.core.engine().export(), node.core.cross().export());
            let recovered = (core.engine().export(), core.cross().export());
            // Usually nothing of the group in flight survived (or none was): the live state itself.
            if live != recovered {
                check_prefix(n, shards, &config, live, &recovered, &in_flight)?;
            }
        }
        // The old core goes, with its open group, its parked writes and their answers.
        node.core = core;
        node.open.clear();
        node.parked.clear();
        // The cross-shard model stands at the acknowledged state: step it
        // through the group in flight until it matches what was recovered.
        if self.cross_model.is_some() {
            step_to_recovered(in_flight.len(), " the cross-shard model", |k| {
                if k > 0 {
                    self.cross_apply(n, &in_flight[k - 1])?;
                }
                let cross_model = self.cross_model.as_mut().expect("checked above");
                Ok(cross_model.check_shard(n, self.nodes[n].core.engine(), true))
            })?;
        }
        self.flush();
        Ok(())
    }

    // ------------------------------------------------------------------
    // Steps.

    fn step(&mut self) -> Result<(), Failure> {
        let n = self.prng.below(u64::from(self.shards)) as usize;
        // While a group's fdatasync is in flight the shard waits for it:
        // its only events are the completion, a failure, a crash, or time.
        if self.nodes[n].in_flight.is_some() {
            match self.prng.below(100) {
                0..=79 => self.sync_and_acknowledge(n)?,
                80..=89 => self.now_ns += self.prng.below(1_000_000),
                90..=96 => self.crash(n)?,
                _ => self.failed_write(n)?,
            }
        } else if self.nodes[n].job.is_some() && self.prng.chance(25) {
            // The background write of the snapshot taken earlier finishes.
            self.finish_snapshot(n, true)?;
        } else {
            match self.prng.below(100) {
                0..=39 => self.client_write(n)?,
                40..=44 => self.lookup(n)?,
                45..=59 if self.shards > 1 => {
                    let from =
                        (n + 1 + self.prng.below(u64::from(self.shards) - 1) as usize) % self.shards as usize;
                    self.deliver(from, n)?;
                }
                45..=79 => {
                    let sync = self.prng.chance(70);
                    self.write_group(n, sync)?;
                }
                80..=96 => self.clock_moves(n),
                97..=98 => self.crash(n)?,
                _ if self.shards > 1 => self.crash_all()?,
                _ => self.crash(n)?,
            }
        }
        self.flush();
        if self.step.is_multiple_of(FULL_CHECK_EVERY_STEPS) {
            self.check_full(false)?;
        }
        Ok(())
    }

    /// Time passes: a random amount, or (one time in three) to exactly the
    /// next expiry a shard holds, or one nanosecond short of it — the edges
    /// where "expires exactly when the clock says" can be wrong.
    fn clock_moves(&mut self, n: usize) {
        let next = self.nodes[n].core.engine().next_expiry_ns().filter(|&at| at > self.now_ns);
        match next {
            Some(at) if self.prng.chance(33) => self.now_ns = at - self.prng.below(2),
            _ => self.now_ns += self.prng.below(1_500_000_000),
        }
    }

    /// A lookup is answered at once, from applied state; or, while a write
    /// is answered whose settle is not applied yet, once the open group is.
    fn lookup(&mut self, n: usize) -> Result<(), Failure> {
        let (reply, mut answer) = reply_channel();
        // Often the transfer this shard answered ok last (a cross-shard one
        // is answered before its settle is applied: the read must see it).
        let id = match self.nodes[n].last_ok {
            Some(id) if self.prng.chance(50) => id,
            _ => 1 + u128::from(self.prng.below(self.workload_ids())),
        };
        self.nodes[n]
            .core
            .offer(Request::LookupTransfers { ids: vec![id], reply }, self.now_ns)
            .or_else(|_| fail(check::READS, "a read was refused"))?;
        match answer.try_recv() {
            Ok(found) => self.check_read(n, id, &found),
            Err(TryRecvError::Empty) if self.nodes[n].core.reads_deferred() > 0 => {
                self.nodes[n].reads.push((id, answer));
                Ok(())
            }
            Err(_) => fail(check::READS, "a read was neither answered at once nor deferred"),
        }
    }

    /// Lookup `id` on shard `n` found `found`: what the model holds now;
    /// and a cross-shard transfer this shard answered `ok` is posted (the
    /// answer comes before the settle is applied: reads wait for it).
    fn check_read(&self, n: usize, id: u128, found: &[Transfer]) -> Result<(), Failure> {
        if self.acked.get(&id) == Some(&n) && found.first().is_some_and(cross::is_debit_leg) {
            let state = self.nodes[n].core.engine().transfer_state(id);
            if state != Some(TransferState::Posted) {
                return fail(
                    check::READS,
                    format!(
                        "lookup of {id} on shard {n}, which answered it ok: its pending leg is {state:?}"
                    ),
                );
            }
        }
        let model = self.nodes[n].model.as_ref().or(self.cross_model.as_ref().map(|c| c.model(n)));
        if let Some(model) = model {
            let expected: Vec<Transfer> = model.transfer(id).into_iter().copied().collect();
            if found != expected {
                return fail(check::READS, format!("lookup of {id}: shard {found:?}, model {expected:?}"));
            }
        }
        Ok(())
    }

    /// A group of shard `n` was applied (and the models stepped through
    /// it): deferred reads answered now are checked against the state
    /// after it; those still waiting must be ones the shard still defers
    /// (intents recovered open, not settled yet).
    fn check_deferred_reads(&mut self, n: usize) -> Result<(), Failure> {
        let mut still = Vec::new();
        for (id, mut answer) in std::mem::take(&mut self.nodes[n].reads) {
            match answer.try_recv() {
                Ok(found) => {
                    self.report.reads_deferred += 1;
                    self.check_read(n, id, &found)?;
                }
                Err(TryRecvError::Empty) => still.push((id, answer)),
                Err(TryRecvError::Closed) => {
                    return fail(check::READS, format!("a deferred lookup of {id} was dropped"))
                }
            }
        }
        if !still.is_empty() && self.nodes[n].core.reads_deferred() != still.len() {
            return fail(
                check::READS,
                format!(
                    "{} lookups wait, but shard {n} defers {}",
                    still.len(),
                    self.nodes[n].core.reads_deferred()
                ),
            );
        }
        self.nodes[n].reads = still;
        Ok(())
    }

    /// Lookups ask for ids sent so far, and a few beyond.
    fn workload_ids(&self) -> u64 {
        self.workload.transfer_ids() as u64 + 10
    }

    // ------------------------------------------------------------------
    // Full checks.

    /// Every shard's invariants and intents; balances from records; the
    /// model (one shard); all or nothing and bridges (several); every
    /// acknowledged transfer present. `settled`: nothing may be in flight
    /// (the end of a run), so the bridges must net to zero.
    fn check_full(&mut self, settled: bool) -> Result<(), Failure> {
        for (n, node) in self.nodes.iter_mut().enumerate() {
            let engine = node.core.engine();
            engine
                .check_invariants()
                .or_else(|v| fail(check::ENGINE_INVARIANTS, format!("shard {n}: {v}")))?;
            node.core.cross().check(engine).or_else(|e| fail(check::INTENTS, format!("shard {n}: {e}")))?;
            balances_from_records(engine)
                .or_else(|e| fail(check::BALANCES_FROM_RECORDS, format!("shard {n}: {e}")))?;
            expiry_by_the_clock(engine).or_else(|e| fail(check::EXPIRY, format!("shard {n}: {e}")))?;
            if let Some(model) = &mut node.model {
                model.check(engine, true).or_else(|e| fail(check::MODEL_STATE, e))?;
            }
        }
        if let Some(cross_model) = &mut self.cross_model {
            for (n, node) in self.nodes.iter().enumerate() {
                cross_model
                    .check_shard(n, node.core.engine(), true)
                    .or_else(|e| fail(check::CROSS_MODEL_STATE, e))?;
            }
        }
        if self.shards > 1 {
            self.check_cross(settled)?;
        }
        let mut found = Vec::new();
        for (&id, &shard) in &self.acked {
            found.clear();
            for node in &self.nodes {
                node.core.engine().lookup_transfers(&[id], &mut found).expect("one id");
            }
            if cross::user_view(&found).is_none() {
                return fail(
                    check::ACKNOWLEDGED_DURABLE,
                    format!("transfer {id}, answered ok by shard {shard}, is gone: {found:?}"),
                );
            }
        }
        Ok(())
    }

    fn check_cross(&self, settled: bool) -> Result<(), Failure> {
        let engines: Vec<&Engine> = self.nodes.iter().map(|n| n.core.engine()).collect();
        let lookup = |shard: usize, id: u128| {
            let mut found = Vec::new();
            engines[shard].lookup_transfers(&[id], &mut found).expect("one id");
            found.pop()
        };
        // Per (low shard, high shard, ledger): what credit legs added that no settle has posted yet.
        let mut unsettled: BTreeMap<(u32, u32, u32), u128> = BTreeMap::new();
        for (d, engine) in engines.iter().enumerate() {
            for t in engine.transfers() {
                if cross::is_debit_leg(t) {
                    let bridge = bridge_of(t.credit_account_id).expect("a debit leg credits a bridge");
                    let c = bridge.peer as usize;
                    let credit = lookup(c, t.id).filter(|l| {
                        cross::is_credit_leg(l)
                            && l.debit_account_id == bridge_id(c as u32, d as u32, t.ledger)
                    });
                    match (engine.transfer_state(t.id), credit) {
                        (Some(TransferState::Posted), Some(leg)) if leg.amount == t.amount => {}
                        (Some(TransferState::Voided), None) | (Some(TransferState::Pending), None) => {}
                        (Some(TransferState::Pending), Some(leg)) if leg.amount == t.amount => {
                            let key = (d.min(c) as u32, d.max(c) as u32, t.ledger);
                            let sum = unsettled.entry(key).or_default();
                            *sum = sum.wrapping_add(t.amount);
                        }
                        (state, credit) => {
                            return fail(
                                check::ALL_OR_NOTHING,
                                format!("transfer {} from shard {d}: pending leg {state:?} {t:?}, credit leg on shard {c}: {credit:?}", t.id),
                            );
                        }
                    }
                } else if cross::is_credit_leg(t) {
                    let bridge = bridge_of(t.debit_account_id).expect("a credit leg debits a bridge");
                    let d = bridge.peer as usize;
                    let debit = lookup(d, t.id).filter(cross::is_debit_leg);
                    let state = debit.and_then(|_| engines[d].transfer_state(t.id));
                    if !matches!(state, Some(TransferState::Pending | TransferState::Posted))
                        || debit.is_some_and(|l| l.amount != t.amount)
                    {
                        return fail(
                            check::ALL_OR_NOTHING,
                            format!("credit leg {} on shard {}: its pending leg on shard {d} is {debit:?} ({state:?})", t.id, bridge.shard),
                        );
                    }
                }
            }
        }
        // The bridges of a pair of shards, per ledger, net to minus the unsettled credits.
        let mut net: BTreeMap<(u32, u32, u32), u128> = unsettled.clone();
        for (shard, engine) in engines.iter().enumerate() {
            for a in engine.accounts() {
                let Some(bridge) = bridge_of(a.id) else { continue };
                if bridge.shard as usize != shard {
                    return fail(check::BRIDGES, format!("bridge {:?} is on shard {shard}", bridge));
                }
                let key = (bridge.shard.min(bridge.peer), bridge.shard.max(bridge.peer), bridge.ledger);
                let sum = net.entry(key).or_default();
                *sum = sum.wrapping_add(a.credits_posted.wrapping_sub(a.debits_posted));
            }
        }
        if let Some((key, sum)) = net.iter().find(|(_, &sum)| sum != 0) {
            return fail(
                check::BRIDGES,
                format!(
                    "shards {} and {}, ledger {}: bridges plus unsettled credits net to {}",
                    key.0, key.1, key.2, *sum as i128
                ),
            );
        }
        if settled {
            let accounts: Vec<&[molly_engine::Account]> = engines.iter().map(|e| e.accounts()).collect();
            cross::check_bridges(&accounts).or_else(|e| fail(check::BRIDGES, e))?;
        }
        Ok(())
    }

    /// Faults stop and no client sends anything new: every group is
    /// written, every message delivered, until every shard is idle; then
    /// every request must have its answer.
    /// One round of the drain: every group in flight completes, every
    /// ring is delivered, every open group is written and synced, every
    /// snapshot job finishes. True when anything happened.
    pub(crate) fn drain_round(&mut self) -> Result<bool, Failure> {
        self.flush();
        let mut busy = false;
        for n in 0..self.shards as usize {
            if self.nodes[n].in_flight.is_some() {
                self.sync_and_acknowledge(n)?;
                busy = true;
            }
            for from in 0..self.shards as usize {
                while !self.rings[from][n].is_empty() && self.nodes[n].in_flight.is_none() {
                    let before = self.rings[from][n].len();
                    self.deliver(from, n)?;
                    busy = true;
                    if self.rings[from][n].len() >= before {
                        // Its group is full: write it first.
                        self.write_group(n, true)?;
                    }
                    self.flush();
                }
            }
            if self.nodes[n].core.has_group() {
                self.write_group(n, true)?;
                busy = true;
            }
            if self.nodes[n].job.is_some() && self.nodes[n].in_flight.is_none() {
                self.finish_snapshot(n, false)?;
                busy = true;
            }
        }
        Ok(busy)
    }

    fn drain(&mut self) -> Result<(), Failure> {
        self.report.faults_injected = crate::buggify::disable();
        for _ in 0..DRAIN_STEPS_MAX {
            let busy = self.drain_round()?;
            let quiet = !busy
                && self.nodes.iter().all(|node| node.core.idle() && node.in_flight.is_none())
                && self.rings.iter().flatten().all(VecDeque::is_empty);
            if quiet {
                for n in 0..self.shards as usize {
                    self.poll_parked(n)?;
                    if !self.nodes[n].parked.is_empty() {
                        return fail(
                            check::LIVENESS,
                            format!("shard {n}: {} writes never answered", self.nodes[n].parked.len()),
                        );
                    }
                    if !self.nodes[n].reads.is_empty() {
                        return fail(
                            check::LIVENESS,
                            format!(
                                "shard {n}: {} deferred lookups never answered",
                                self.nodes[n].reads.len()
                            ),
                        );
                    }
                }
                return Ok(());
            }
        }
        let stuck: Vec<String> = self.nodes.iter().map(|node| format!("{:?}", node.core)).collect();
        fail(check::LIVENESS, format!("not idle after {DRAIN_STEPS_MAX} drain steps: {stuck:?}"))
    }
}

/// Events a results check compared with the cross-shard model.
#[derive(Default)]
struct Checked {
    events: u64,
    /// Naming a sharded account.
    sharded: u64,
    /// Moves between parts, and those answered `ok`.
    moves: u64,
    moves_ok: u64,
}

/// Compares a write's answer with the cross-shard model's prediction;
/// returns what was compared.
fn cross_results(
    n: usize,
    write: &ClientWrite,
    predicted: &[model::Predicted],
    outcomes: &[Outcome],
    cross_model: &model::CrossModel,
) -> Result<Checked, Failure> {
    let mut checked = Checked::default();
    for ((command, predicted), got) in write.commands.iter().zip(predicted).zip(outcomes) {
        let expected = match predicted {
            model::Predicted::Accounts(results) => Outcome::Accounts(results.clone()),
            model::Predicted::Transfers(events) => {
                let mut results = Vec::with_capacity(events.len());
                for (i, &event) in events.iter().enumerate() {
                    let Some(code) = cross_model.resolve(event) else {
                        return fail(
                            check::CROSS_MODEL_RESULTS,
                            format!(
                                "shard {n} answered event {i} of {command:?} with {got:?}, but the model has not settled it ({event:?})"
                            ),
                        );
                    };
                    results.push(code);
                }
                Outcome::Transfers(results)
            }
            model::Predicted::Internal => unreachable!("a client command"),
        };
        checked.events += events(&expected);
        if got != &expected {
            return fail(
                check::CROSS_MODEL_RESULTS,
                format!("{command:?}\n  shard {n} answered {got:?}\n  model expects  {expected:?}"),
            );
        }
        match (command, got) {
            (CommandBuf::CreateAccounts(batch), _) => {
                checked.sharded += batch.iter().filter(|a| crate::route::is_sharded(a.id)).count() as u64;
            }
            (CommandBuf::CreateTransfers(batch), Outcome::Transfers(results)) => {
                for (t, result) in batch.iter().zip(results) {
                    let named = [t.debit_account_id, t.credit_account_id];
                    checked.sharded += u64::from(named.iter().any(|&id| crate::route::is_sharded(id)));
                    if model::part_move(t, cross_model.shards()).is_some() {
                        checked.moves += 1;
                        checked.moves_ok += u64::from(*result == TR::Ok);
                    }
                }
            }
            _ => {}
        }
    }
    Ok(checked)
}

/// The recovered state must be the live (acknowledged) state plus a prefix
/// of the entries of the group in flight, applied as recovery applies them.
fn check_prefix(
    n: usize,
    shards: u32,
    config: &Config,
    live: (EngineState, Vec<Transfer>),
    recovered: &(EngineState, Vec<Transfer>),
    in_flight: &[CommandBuf],
) -> Result<(), Failure> {
    let mut candidate = Engine::import(crate::route::engine_config(config, n as u32, shards), live.0)
        .or_else(|e| fail(check::RECOVERY_PREFIX, format!("acknowledged state does not import: {e}")))?;
    let mut cross = Cross::import(n as u32, shards, &candidate, &live.1)
        .or_else(|e| fail(check::RECOVERY_PREFIX, format!("acknowledged intents do not import: {e}")))?;
    let (mut expired, mut effects) = (Vec::new(), Effects::default());
    for command in in_flight {
        cross
            .apply(&mut candidate, &command.as_command(), &mut expired, &mut effects)
            .expect("journaled batches are within limits");
        if (candidate.export(), cross.export()) == *recovered {
            return Ok(());
        }
    }
    fail(
        check::RECOVERY_PREFIX,
        format!(
            "shard {n}: recovered {} accounts, {} transfers, {} intents; neither the acknowledged state nor it plus \
             a prefix of the {} entries in flight gives that",
            recovered.0.accounts.len(),
            recovered.0.transfers.len(),
            recovered.1.len(),
            in_flight.len()
        ),
    )
}

/// Per ledger, debits equal credits (posted and pending), and no account
/// crosses its flag's limit: O(accounts), after every durable group (the
/// full `check_invariants`, O(transfers), runs at full checks and after
/// every restart).
fn check_balances(engine: &Engine) -> Result<(), String> {
    for (ledger, t) in engine.ledger_totals() {
        if t.debits_posted != t.credits_posted || t.debits_pending != t.credits_pending {
            return Err(format!("ledger {ledger} does not balance: {t:?}"));
        }
    }
    for a in engine.accounts() {
        let debits = a.debits_pending.checked_add(a.debits_posted);
        let credits = a.credits_pending.checked_add(a.credits_posted);
        let over_debits = a.flags.contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
            && debits.is_none_or(|d| d > a.credits_posted);
        let over_credits = a.flags.contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS)
            && credits.is_none_or(|c| c > a.debits_posted);
        if over_debits || over_credits {
            return Err(format!("account {} crosses its limit: {a:?}", a.id));
        }
    }
    Ok(())
}

/// No pending transfer with a timeout is still pending once the clock has
/// reached its expiry, and none expired before it.
fn expiry_by_the_clock(engine: &Engine) -> Result<(), String> {
    for t in engine.transfers().iter().filter(|t| t.flags.contains(TF::PENDING) && t.timeout != 0) {
        let expires_at = t.timestamp + u64::from(t.timeout) * 1_000_000_000;
        match engine.transfer_state(t.id) {
            Some(TransferState::Pending) if expires_at <= engine.clock_ns() => {
                return Err(format!(
                    "pending transfer {} is open at {}, past its expiry {expires_at}",
                    t.id,
                    engine.clock_ns()
                ));
            }
            Some(TransferState::Expired) if expires_at > engine.clock_ns() => {
                return Err(format!(
                    "pending transfer {} expired before {expires_at} (clock {})",
                    t.id,
                    engine.clock_ns()
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Every account's four balances equal what the shard's transfer records
/// add up to: a plain transfer, a credit leg and a post move posted
/// amounts; a pending transfer still pending reserves its amount; a void, a
/// finished pending transfer and a tombstone move nothing.
fn balances_from_records(engine: &Engine) -> Result<(), String> {
    let mut sums: BTreeMap<u128, [u128; 4]> = BTreeMap::new();
    for t in engine.transfers() {
        let (posted, pending) = if t.flags.contains(TF::PENDING) {
            (0, if engine.transfer_state(t.id) == Some(TransferState::Pending) { t.amount } else { 0 })
        } else if t.flags.contains(TF::VOID_PENDING) {
            (0, 0)
        } else {
            (t.amount, 0)
        };
        let debit = sums.entry(t.debit_account_id).or_default();
        debit[0] = debit[0].wrapping_add(pending);
        debit[1] = debit[1].wrapping_add(posted);
        let credit = sums.entry(t.credit_account_id).or_default();
        credit[2] = credit[2].wrapping_add(pending);
        credit[3] = credit[3].wrapping_add(posted);
    }
    for a in engine.accounts() {
        let expected = sums.remove(&a.id).unwrap_or_default();
        let got = [a.debits_pending, a.debits_posted, a.credits_pending, a.credits_posted];
        if got != expected {
            return Err(format!("account {}: balances {got:?}, records add up to {expected:?}", a.id));
        }
    }
    match sums.keys().next() {
        Some(id) => Err(format!("transfers name account {id}, which does not exist")),
        None => Ok(()),
    }
}

/// Runs one seed for `steps` steps (shards from the seed).
pub fn run(seed: u64, steps: u64) -> SimReport {
    run_with(Options { seed, steps, shards: None })
}

/// Runs one simulation: `steps` random steps, then the drain and the final checks.
pub fn run_with(options: Options) -> SimReport {
    let mut world = World::new(options);
    let mut outcome = Ok(());
    for step in 0..options.steps {
        world.step = step;
        world.report.steps = step + 1;
        outcome = world.step();
        if outcome.is_err() {
            break;
        }
    }
    if outcome.is_ok() {
        world.step = options.steps;
        outcome = world.drain().and_then(|()| world.check_full(true));
    }
    world.report.bits_flipped = world.nodes.iter().map(|node| node.files.bits_flipped()).sum();
    if let Err((check, detail)) = outcome {
        world.report.faults_injected = world.report.faults_injected.max(crate::buggify::disable());
        world.report.violation = Some(Violation { step: world.step, check, detail });
    }
    world.report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CI sweep, per mode (one shard with the model; two and three shards).
    const CI_SEEDS: u64 = 100;
    const CI_STEPS: u64 = 1000;

    fn one(seed: u64, steps: u64, shards: u32) -> SimReport {
        run_with(Options { seed, steps, shards: Some(shards) })
    }

    #[test]
    fn the_same_seed_replays_exactly_and_seeds_differ() {
        let a = run(7, 400);
        let b = run(7, 400);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        let c = run(10, 400);
        assert_ne!((a.transfers_ok, a.crashes), (c.transfers_ok, c.crashes));
    }

    #[test]
    fn a_sweep_of_one_shard_agrees_with_the_model() {
        let mut totals = SimReport::default();
        for seed in 1..=CI_SEEDS {
            let report = one(seed, CI_STEPS, 1);
            assert_eq!(
                report.violation, None,
                "seed {seed}: replay with `molly sim --seed {seed} --shards 1 --steps {CI_STEPS}`"
            );
            totals.add(&report);
        }
        let (crashes, acknowledged, checked, faults) =
            (totals.crashes, totals.groups_acknowledged, totals.events_checked, totals.faults_injected);
        let deleted = totals.journal_files_deleted;
        // The sweep exercised what it claims to (journal rotation and deletion included).
        assert!(
            crashes > CI_SEEDS
                && acknowledged > 10 * CI_SEEDS
                && checked > 100 * CI_SEEDS
                && faults > CI_SEEDS
                && deleted > CI_SEEDS,
            "crashes {crashes}, groups {acknowledged}, events {checked}, fault points fired {faults}, \
             journal files deleted {deleted}"
        );
    }

    #[test]
    fn a_sweep_of_several_shards_settles_all_or_nothing() {
        let mut totals = SimReport::default();
        for seed in 1..=CI_SEEDS {
            let shards = 2 + (seed % 2) as u32;
            let report = one(seed, CI_STEPS, shards);
            assert_eq!(
                report.violation, None,
                "seed {seed}: replay with `molly sim --seed {seed} --shards {shards} --steps {CI_STEPS}`"
            );
            totals.add(&report);
        }
        let SimReport {
            crashes,
            messages_delivered: delivered,
            transfers_ok: ok,
            faults_injected: faults,
            ..
        } = totals;
        let (read_errors, bits_flipped) = (totals.read_errors, totals.bits_flipped);
        let cross_checked = totals.events_checked_cross;
        let (sharded, moves, moves_ok) =
            (totals.events_checked_sharded, totals.moves_checked, totals.moves_ok);
        eprintln!(
            "cross-shard model: {cross_checked} events checked ({sharded} naming a sharded account, {moves} \
             moves, {moves_ok} ok)"
        );
        // The cross-shard model follows every run (the small-limit seeds'
        // transfer room too) and checks their events, sharded accounts and
        // moves between their parts among them.
        assert!(
            cross_checked > 1000 * CI_SEEDS
                && sharded > 100 * CI_SEEDS
                && moves > 10 * CI_SEEDS
                && moves_ok > CI_SEEDS,
            "cross-shard model: {cross_checked} events checked ({sharded} naming a sharded account, {moves} \
             moves, {moves_ok} ok)"
        );
        assert!(
            crashes > CI_SEEDS
                && delivered > 10 * CI_SEEDS
                && ok > 10 * CI_SEEDS
                && faults > CI_SEEDS
                && read_errors > 10
                && bits_flipped > 10,
            "crashes {crashes}, messages {delivered}, ok {ok}, fault points fired {faults}, \
             read errors {read_errors}, bits flipped {bits_flipped}"
        );
    }

    /// The first 2,000-seed sweep (of the first simulator) failed 54 seeds:
    /// a group torn at 512-byte granularity kept one of its later entries at
    /// a 4 KiB boundary, and recovery took that for a newer group after a
    /// corrupt one and refused to start. Fixed by marking group starts in the
    /// journal (only a newer *group* proves the damage is not a torn tail).
    /// The simulator has changed since, so its seeds no longer replay that
    /// run; this is the same disk, built directly.
    #[test]
    fn regression_torn_group_is_a_tail_not_a_corrupt_middle() {
        use crate::journal::{Command, GroupBuffer, SECTOR_SIZE};
        let transfer = Transfer {
            id: 1,
            debit_account_id: 1,
            credit_account_id: 2,
            amount: 1,
            ledger: 1,
            code: 1,
            ..Transfer::default()
        };
        use crate::journal_files::JournalStorage;
        use crate::snapshot::Storage;
        let mut group = GroupBuffer::new(GROUP_BYTES_MAX);
        group.push(1, 0, &Command::Tick { now_ns: 1 });
        let files = SimFiles::new(0);
        let dir = shard_dir(0);
        let path = dir.join(journal_files::file_name(1));
        let mut file = files.create(&path).unwrap();
        files.write_at(&mut file, 0, group.sealed()).unwrap();
        group.clear();
        // tick (64) + 31 transfers (64 + 31 × 128) = 4096: the third entry starts a sector, not a group.
        let batch = vec![transfer; 31];
        group.push(2, 0, &Command::Tick { now_ns: 2 });
        group.push(3, 0, &Command::CreateTransfers(&batch));
        group.push(4, 0, &Command::CreateTransfers(&batch[..2]));
        let sealed = group.sealed().to_vec();
        assert_eq!(sealed.len(), 2 * SECTOR_SIZE);
        // Torn: the group's first physical sector is lost, its second 4 KiB sector reached the disk.
        let mut torn = sealed.clone();
        torn[..disk::PHYSICAL_SECTOR].fill(0);
        files.write_at(&mut file, SECTOR_SIZE as u64, &torn).unwrap();
        files.sync(&mut file).unwrap();
        files.sync_dir(&dir).unwrap();
        let config = Config::default();
        let metrics = Arc::new(ShardMetrics::new(0));
        let start = start_from(0, 1, None, &config).expect("an empty ledger");
        let rotation = Rotation { file_bytes: 1 << 20, keep_journal: false };
        let core = replay(0, 1, start, &files, &dir, &config, &metrics, 1, rotation)
            .expect("a torn tail is cut, not refused");
        assert_eq!(core.engine().clock_ns(), 1);
        assert_eq!(files.durable_len(&path), Some(HEADER_SIZE as u64), "cut after the last whole group");
    }

    /// Seeds that fail with either of two fixes to the shard layer at the
    /// transfer limit taken out (regression tests of their own are in
    /// tests/cross_shard.rs). The fixes were found by seeds of an earlier
    /// version of the simulator; seeds are tied to the simulator's code, so
    /// these were found again, with the fixes reverted, at commit 984ad3d.
    /// One shard, the model's results (a retry answered
    /// `transfers_limit_reached` instead of `exists`): seeds 29, 54, 74. Two
    /// and three shards, all or nothing (a copy of an applied credit leg
    /// answered `transfers_limit_reached`, and its transfer was voided):
    /// seeds 74 and 96 with two, 29 and 74 with three. On branch
    /// model-sharded (commit e6205e0: sharded accounts in the workload, the
    /// transfer room in the cross-shard model) the first fix taken out
    /// again fails these two- and three-shard seeds too, caught by the
    /// cross-shard model (seeds 29, 54, 74, 96, 99, 116, 176, 192 of 200
    /// with two shards; 29, 74, 96, 192 with three); the second fix was not
    /// re-checked there.
    #[test]
    fn regression_seeds_at_the_transfer_limit() {
        for (seed, shards) in [(29, 1), (54, 1), (74, 1), (74, 2), (96, 2), (29, 3), (74, 3)] {
            let report = one(seed, 2000, shards);
            assert_eq!(report.violation, None, "seed {seed}, {shards} shards");
        }
    }

    /// `molly sim --seeds A..B` without building the binary, for local runs
    /// (and deliberate-bug experiments):
    /// `MOLLY_SIM_SEEDS=1..2001 [MOLLY_SIM_STEPS=2000] [MOLLY_SIM_SHARDS=2] cargo test -p
    /// molly-shards --lib --features sim -- --ignored sweep_from_the_environment`.
    #[test]
    #[ignore]
    fn sweep_from_the_environment() {
        let seeds = std::env::var("MOLLY_SIM_SEEDS").unwrap_or_else(|_| "1..201".into());
        let (a, b) = seeds.split_once("..").expect("A..B");
        let (a, b): (u64, u64) = (a.parse().unwrap(), b.parse().unwrap());
        // `molly sim`'s default steps.
        let steps = std::env::var("MOLLY_SIM_STEPS").map_or(2000, |s| s.parse().unwrap());
        let shards = std::env::var("MOLLY_SIM_SHARDS").ok().map(|s| s.parse().unwrap());
        let mut totals = SimReport::default();
        let mut failed = Vec::new();
        for seed in a..b {
            let report = run_with(Options { seed, steps, shards });
            if let Some(v) = &report.violation {
                failed.push((seed, v.check, v.detail.chars().take(2000).collect::<String>()));
            }
            totals.add(&report);
        }
        let mut by_check: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
        for (seed, check, _) in &failed {
            by_check.entry(check).or_default().push(*seed);
        }
        eprintln!(
            "{} seeds, {} failing {by_check:?}; journal files deleted {}, crashes {}, results checked {} \
             ({} with several shards, {} moves)",
            b - a,
            failed.len(),
            totals.journal_files_deleted,
            totals.crashes,
            totals.events_checked,
            totals.events_checked_cross,
            totals.moves_checked
        );
        assert!(failed.is_empty(), "{failed:#?}");
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        // Corrupt the world: pretend a group was acknowledged that never reached the disk.
        for shards in [1, 2] {
            let mut world = World::new(Options { seed: 3, steps: 0, shards: Some(shards) });
            for step in 0..200 {
                world.step = step;
                world.step().unwrap();
            }
            for n in 0..shards as usize {
                world.sync_and_acknowledge(n).unwrap();
                world.write_group(n, true).unwrap();
            }
            // No fault point may cut the group: time moves and one write is
            // staged, so the group starts with a tick and changes the state.
            crate::buggify::disable();
            world.now_ns += 5_000_000_000;
            let (reply, answer) = reply_channel();
            let commands = vec![CommandBuf::CreateTransfers(Vec::new())];
            world.nodes[0]
                .core
                .offer(Request::Write { commands: commands.clone(), reply }, world.now_ns)
                .unwrap();
            world.nodes[0].open.push(ClientWrite {
                commands,
                fresh: vec![false],
                answer,
                relay: Default::default(),
                predicted: None,
            });
            world.write_group(0, false).unwrap();
            assert!(world.nodes[0].in_flight.is_some());
            // The write vanishes, but the client is told it is durable.
            let dir = shard_dir(0);
            let journal = dir.join(journal_files::file_name(world.nodes[0].core.journal_file()));
            world.nodes[0].files.drop_unsynced(&journal);
            world.sync_and_acknowledge(0).unwrap();
            // (A snapshot taken after it would hold the group: recovery
            // from the journal alone must notice.)
            world.nodes[0].job = None;
            world.nodes[0].files.remove_snapshots(&dir);
            // A gap where an acknowledged group should be: recovery refuses,
            // or recovers a state without the acknowledged group. Either way, caught.
            let r = world.crash(0);
            let caught = r.unwrap_err();
            assert!([check::RECOVERY_PREFIX, check::RECOVERY_REFUSED].contains(&caught.0), "{caught:?}");
        }
    }
}
