//! The thread-per-core runtime: one pinned glommio executor per shard, each
//! owning its engine and its journal (O_DIRECT through io_uring), fed by a
//! bounded lock-free inbox.
//!
//! ```text
//!  callers ──submit──► inbox (ArrayQueue, bounded: full = Backpressure)
//!                         │   then ring the shard's doorbell (wakes it if parked)
//!                         │ shard loop (pinned to one CPU):
//!                         ├─ reads: answered from applied state at once
//!                         └─ writes: everything waiting → one group
//!                              → O_DSYNC write (io_uring), applied meanwhile
//!                              → durable → reply
//! ```
//!
//! A reply to a write always means "durable": the group is applied while its
//! write is in flight, but its answers and peer messages leave only once the
//! write completes. While a group is written the inbox fills up, and the
//! next group takes all of it: that is the group commit. Each shard advances
//! its engine's logical time from the wall clock with a journaled tick when
//! time has moved and there are writes, or when a pending transfer is due to
//! expire.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TryRecvError};

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
pub use tokio::sync::oneshot::{channel as reply_channel, Receiver as Answer, Sender as Reply};

use crossbeam_queue::ArrayQueue;
use molly_engine::{Account, AccountBalance, AccountFilter, Config, LedgerTotals, QueryError, Transfer};

use crate::cross::{decode, encode, Message};
use crate::durable::{recover_shard, DurableError, Outcome, RecoveryReport};
use crate::journal::CommandBuf;
use crate::metrics::{RebalanceMetrics, ShardMetrics};
use crate::prealloc::Spares;
use crate::rebalance::RebalanceConfig;
use crate::shard::ShardCore;
use crate::snapshot::{SnapshotDone, SnapshotError};

/// Runtime settings (every one has a default; see `molly serve --help`).
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Data directory; shard `i` keeps its journal in `DIR/shard-i/`.
    pub data_dir: PathBuf,
    /// Number of shards (default: [`crate::layout::default_shards`]); a data
    /// directory holds one count for good ([`crate::layout`]).
    pub shards: usize,
    /// Engine limits, per shard.
    pub engine: Config,
    /// Largest journal group in bytes.
    pub group_bytes_max: usize,
    /// Requests queued per shard before callers get `Backpressure`.
    pub inbox_depth: usize,
    /// Pin shard `i` to CPU `i mod CPUs` (fails loudly if the CPU is not available).
    pub pin: bool,
    /// How long a shard sleeps between polls while something is pending
    /// that no message announces (a lingering group, a full peer ring, a
    /// stop in progress).
    pub idle_sleep: Duration,
    /// The longest a shard with nothing to do parks: a request in its inbox
    /// or a message in one of its rings wakes it at once ([`Doorbell`]);
    /// this bounds how late it notices what nothing announces (a finished
    /// snapshot, a pending transfer's expiry). Zero: it never parks longer
    /// than `idle_sleep` (polls, as before doorbells).
    pub idle_park: Duration,
    /// How long a group holding only settles (cross-shard transfers whose
    /// callers were already answered) stays open for a caller's next write
    /// to share its commit (zero: written at once). Nobody waits for such a
    /// group; reads that would wait for it end the wait at once.
    pub settle_linger: Duration,
    /// How long a shard's executor spins before it parks in the kernel
    /// (zero: it parks at once). Each park costs a process-wide
    /// `membarrier` (glommio's sleep protocol), an IPI to every other core,
    /// which interrupts the other shards; spinning trades CPU for fewer of
    /// them (see tuning/README.md).
    pub spin_before_park: Duration,
    /// Touch the engine's reserved memory at start (see `Engine::prefault`).
    pub prefault: bool,
    /// Write a snapshot after this many journal bytes (0: only at shutdown).
    /// Snapshots are incremental (new transfer blocks go to a segment file)
    /// and written on a background thread.
    pub snapshot_every_bytes: u64,
    /// Pace of the background snapshot writer in bytes per second (0: the
    /// device's full speed). A snapshot written at full speed holds the
    /// journal's group writes behind it in the device's queue; see
    /// [`crate::snapshot::Paced`].
    pub snapshot_write_bytes_per_s: u64,
    /// The journal moves to a new file once the current one holds this many
    /// bytes (it also does at every snapshot); see [`crate::journal_files`].
    pub journal_file_bytes: u64,
    /// Pace, in bytes per second, of the thread that writes the next
    /// journal file full of zeros ahead of use, so group commits overwrite
    /// allocated blocks (0: no preallocation; see [`crate::prealloc`]).
    pub journal_prealloc_bytes_per_s: u64,
    /// Keep every journal file: no deletion of the files the kept snapshots
    /// cover (the whole history stays replayable; disk use grows).
    pub keep_journal: bool,
    /// Transfers kept in memory per shard once they are durable in a
    /// segment file (rounded up to whole 65,536-transfer blocks); older ones
    /// are read back through a read-only mapping. The transfers written
    /// since the last snapshot are always in memory too.
    pub transfers_in_memory: usize,
    /// Messages queued per ordered pair of shards (cross-shard legs and
    /// answers; one message carries up to `engine.batch_events_max` legs).
    pub ring_depth: usize,
    /// Cross-shard transfers a shard coordinates at once (open intents);
    /// at least `engine.batch_events_max`.
    pub intents_max: usize,
    /// Work to run on every shard's executor beside the shard loop (the
    /// network edge's listeners and connections), started once the shard
    /// has recovered. It stops when the shard stops.
    pub task: Option<ShardTask>,
    /// Keep the parts of sharded accounts with a limit from running dry
    /// ([`crate::rebalance`]; `None`: off). Runs only with 2 shards or more.
    pub rebalance: Option<RebalanceConfig>,
}

/// A task factory run once on each shard's executor (see [`RuntimeConfig::task`]).
#[derive(Clone)]
pub struct ShardTask(pub Arc<dyn Fn(ShardHandle) -> LocalTask + Send + Sync>);

/// A future that runs on one shard's executor (it need not be `Send`).
pub type LocalTask = Pin<Box<dyn Future<Output = ()>>>;

impl std::fmt::Debug for ShardTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShardTask")
    }
}

/// What a task on a shard's executor gets: its shard, and a router to every shard.
#[derive(Clone, Debug)]
pub struct ShardHandle {
    /// The shard whose executor runs the task.
    pub shard: usize,
    /// Submits requests to any shard.
    pub router: Router,
}

/// Submits requests to the shards' inboxes from any thread: cheap to clone.
#[derive(Clone, Debug)]
pub struct Router {
    inboxes: Arc<[Arc<ArrayQueue<Request>>]>,
    doorbells: Arc<[Doorbell]>,
    stop: Arc<AtomicBool>,
}

/// Wakes a parked shard when work arrives for it: whoever queues a request
/// in its inbox or a message in one of its rings rings it afterwards. Only
/// a shard that said it is parked costs the ringer a system call (one byte
/// written to a socket pair whose other end the shard's executor reads);
/// otherwise a ring is an atomic load.
///
/// No wake is lost: the shard sets `parked`, then looks at its inbox and
/// rings once more before it sleeps; a ringer queues first, then reads
/// `parked` (both sequentially consistent, so one of the two sees the
/// other). A byte written while the shard was not waiting only wakes it
/// once for nothing. And a parked shard wakes after `idle_park` anyway.
pub struct Doorbell {
    parked: AtomicBool,
    bell: std::os::unix::net::UnixStream,
}

impl std::fmt::Debug for Doorbell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doorbell").field("parked", &self.parked.load(Ordering::Relaxed)).finish()
    }
}

impl Doorbell {
    /// A doorbell and the end its shard reads.
    fn pair() -> std::io::Result<(Self, std::os::unix::net::UnixStream)> {
        let (bell, heard) = std::os::unix::net::UnixStream::pair()?;
        bell.set_nonblocking(true)?;
        Ok((Self { parked: AtomicBool::new(false), bell }, heard))
    }

    /// Wakes the shard if it is parked (call after queuing its work).
    pub fn ring(&self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) && self.parked.swap(false, Ordering::SeqCst) {
            use std::io::Write;
            // A full socket buffer means a wake is already on its way.
            let _ = (&self.bell).write(&[1]);
        }
    }
}

impl Router {
    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.inboxes.len()
    }

    /// Queues a request on `shard`; a full inbox hands it back.
    pub fn submit(&self, shard: usize, request: Request) -> Result<(), Backpressure> {
        self.inboxes[shard].push(request).map_err(Backpressure)?;
        self.doorbells[shard].ring();
        Ok(())
    }

    /// True once the runtime is stopping: the shards answer what is queued and exit.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Queues a request on `shard` from a thread that may block, pausing
    /// while its inbox is full; hands it back once the runtime is stopping
    /// (a shard that has exited would never take it).
    pub fn submit_blocking(&self, shard: usize, mut request: Request) -> Result<(), Request> {
        loop {
            if self.stopping() {
                return Err(request);
            }
            match self.submit(shard, request) {
                Ok(()) => return Ok(()),
                Err(Backpressure(back)) => {
                    request = back;
                    std::thread::sleep(Duration::from_micros(20));
                }
            }
        }
    }
}

/// Default messages per ring: 64 (each up to a full batch of legs).
pub const RING_DEPTH_DEFAULT: usize = 64;

/// Default journal bytes between snapshots: 256 MiB (a snapshot writes
/// the transfer blocks filled since the last one, so this also bounds the
/// history held in memory before it can be evicted).
pub const SNAPSHOT_EVERY_BYTES_DEFAULT: u64 = 256 << 20;

/// Default pace of the background snapshot writer: 512 MiB/s (measured
/// against 64, 256, 1024 and unpaced over the protocol: docs/benchmarks.md).
/// It must outrun the history the shards make, or blocks that wait for a
/// segment pile up in memory.
pub const SNAPSHOT_WRITE_BYTES_PER_S_DEFAULT: u64 = 512 << 20;

/// Default of [`RuntimeConfig::journal_prealloc_bytes_per_s`]: a 256 MiB
/// spare in a second, ahead of a journal that fills at ~130 MB/s per shard
/// at 1M transfers/s.
pub const JOURNAL_PREALLOC_BYTES_PER_S_DEFAULT: u64 = 256 << 20;

/// Default transfers kept in memory per shard once durable in a segment.
pub const TRANSFERS_IN_MEMORY_DEFAULT: usize =
    crate::shard::BLOCKS_IN_MEMORY_DEFAULT * molly_engine::BLOCK_TRANSFERS;

impl RuntimeConfig {
    /// Defaults for `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            shards: crate::layout::default_shards(),
            engine: Config::default(),
            group_bytes_max: crate::durable::GROUP_BYTES_MAX_DEFAULT,
            inbox_depth: INBOX_DEPTH_DEFAULT,
            pin: true,
            idle_sleep: Duration::from_micros(50),
            idle_park: IDLE_PARK_DEFAULT,
            settle_linger: SETTLE_LINGER_DEFAULT,
            spin_before_park: Duration::ZERO,
            prefault: false,
            snapshot_every_bytes: SNAPSHOT_EVERY_BYTES_DEFAULT,
            snapshot_write_bytes_per_s: SNAPSHOT_WRITE_BYTES_PER_S_DEFAULT,
            journal_file_bytes: crate::journal_files::JOURNAL_FILE_BYTES_DEFAULT,
            journal_prealloc_bytes_per_s: JOURNAL_PREALLOC_BYTES_PER_S_DEFAULT,
            keep_journal: false,
            transfers_in_memory: TRANSFERS_IN_MEMORY_DEFAULT,
            task: None,
            ring_depth: RING_DEPTH_DEFAULT,
            intents_max: crate::shard::INTENTS_MAX_DEFAULT,
            rebalance: Some(RebalanceConfig::default()),
        }
    }
}

/// Default of [`RuntimeConfig::settle_linger`]: long enough for a caller
/// answered at the start of it to send its next write (in process and over
/// loopback), short against a group commit.
pub const SETTLE_LINGER_DEFAULT: Duration = Duration::from_micros(500);

/// Default of [`RuntimeConfig::idle_park`].
pub const IDLE_PARK_DEFAULT: Duration = Duration::from_millis(10);

/// Default requests queued per shard.
pub const INBOX_DEPTH_DEFAULT: usize = 1024;

/// What a shard answers a write with.
pub type WriteReply = Result<Vec<Outcome>, ShardError>;

/// A request to one shard.
#[derive(Debug)]
pub enum Request {
    /// Journal, then apply, these commands; reply when durable.
    Write {
        /// The commands, applied in order.
        commands: Vec<CommandBuf>,
        /// Where the outcomes go.
        reply: Reply<WriteReply>,
    },
    /// Look accounts up.
    LookupAccounts {
        /// Ids.
        ids: Vec<u128>,
        /// The accounts found.
        reply: Reply<Vec<Account>>,
    },
    /// Look transfers up.
    LookupTransfers {
        /// Ids.
        ids: Vec<u128>,
        /// The transfers found.
        reply: Reply<Vec<Transfer>>,
    },
    /// An account's transfers (`Engine::get_account_transfers`).
    GetAccountTransfers {
        /// The query.
        filter: Box<AccountFilter>,
        /// The transfers, or why the filter is invalid.
        reply: Reply<Result<Vec<Transfer>, QueryError>>,
    },
    /// An account's balance history (`Engine::get_account_balances`).
    GetAccountBalances {
        /// The query.
        filter: Box<AccountFilter>,
        /// The points, or why the filter is invalid.
        reply: Reply<Result<Vec<AccountBalance>, QueryError>>,
    },
    /// This shard's parts of the sharded accounts with a balance limit
    /// (what the rebalancer watches).
    LimitedParts {
        /// The parts.
        reply: Reply<Vec<Account>>,
    },
    /// Counts and per-ledger totals, with the invariants checked.
    Stats {
        /// The answer.
        reply: Reply<ShardStats>,
    },
}

/// A shard's counts and totals.
#[derive(Clone, Debug)]
pub struct ShardStats {
    /// The shard.
    pub shard: usize,
    /// Accounts held.
    pub accounts: usize,
    /// Transfers held.
    pub transfers: usize,
    /// Cross-shard transfers this shard coordinates that are not settled yet.
    pub intents_open: usize,
    /// Per-ledger sums.
    pub totals: std::collections::BTreeMap<u32, LedgerTotals>,
    /// `Engine::check_invariants` and `Cross::check`, as text when broken.
    pub invariants: Result<(), String>,
}

/// Why a shard could not serve a write.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ShardError {
    /// The commands break a limit; nothing was journaled.
    #[error("request refused: {0}")]
    Refused(String),
    /// The journal could not be written; the shard stopped taking writes
    /// (restart it: recovery keeps exactly what was durable).
    #[error("shard {shard} stopped after a journal failure: {reason}")]
    Failed {
        /// The shard.
        shard: usize,
        /// What failed.
        reason: String,
    },
}

/// A full inbox: the request is handed back.
#[derive(Debug)]
pub struct Backpressure(pub Request);

/// The running shards.
#[derive(Debug)]
pub struct Runtime {
    /// The shards' inboxes and doorbells (one per shard from the start).
    router: Router,
    threads: Vec<JoinHandle<()>>,
    rebalancer: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    metrics: Vec<Arc<ShardMetrics>>,
    rebalance_metrics: Arc<RebalanceMetrics>,
    recoveries: Vec<RecoveryReport>,
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// A shard's journal could not be recovered.
    #[error("shard {shard}: {source}")]
    Recovery {
        /// The shard.
        shard: usize,
        /// Why.
        source: DurableError,
    },
    /// A shard's executor could not start (CPU placement, io_uring, memlock).
    #[error("shard {shard}: cannot start its executor: {reason}")]
    Executor {
        /// The shard.
        shard: usize,
        /// Why.
        reason: String,
    },
    /// The configuration is invalid.
    #[error("invalid runtime configuration: {0}")]
    Config(String),
}

/// The shard that owns `account_id`: jump consistent hashing (Lamping and
/// Veach, 2014) of the id folded to 64 bits. Pure and stable: the same id
/// and shard count always give the same shard, on every machine and version;
/// growing from n to n+1 shards moves only 1/(n+1) of the accounts.
pub fn shard_for(account_id: u128, shards: u32) -> u32 {
    assert!(shards > 0);
    let mut key = (account_id as u64) ^ ((account_id >> 64) as u64).rotate_left(32);
    let (mut b, mut j) = (-1i64, 0i64);
    while j < i64::from(shards) {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as u32
}

fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

impl Runtime {
    /// Recovers every shard's journal and starts the shards. Returns once
    /// every shard has recovered and is serving, or with the first failure
    /// (then no shard is left running).
    pub fn start(config: RuntimeConfig) -> Result<Self, StartError> {
        if config.shards == 0 || config.inbox_depth == 0 || config.ring_depth == 0 {
            return Err(StartError::Config("shards, inbox_depth and ring_depth must be at least 1".into()));
        }
        if config.journal_file_bytes < crate::journal::SECTOR_SIZE as u64 {
            return Err(StartError::Config(format!(
                "journal_file_bytes {} is below one sector ({} bytes)",
                config.journal_file_bytes,
                crate::journal::SECTOR_SIZE
            )));
        }
        if config.shards > crate::cross::SHARDS_MAX as usize {
            return Err(StartError::Config(format!("at most {} shards", crate::cross::SHARDS_MAX)));
        }
        if config.intents_max < config.engine.batch_events_max as usize {
            return Err(StartError::Config(format!(
                "intents_max {} is below batch_events_max {}: a batch of cross-shard transfers must fit",
                config.intents_max, config.engine.batch_events_max
            )));
        }
        crate::layout::check(&config.data_dir, config.shards).map_err(StartError::Config)?;
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let inboxes: Vec<Arc<ArrayQueue<Request>>> =
            (0..config.shards).map(|_| Arc::new(ArrayQueue::new(config.inbox_depth))).collect();
        let mut doorbells = Vec::with_capacity(config.shards);
        let mut heard = Vec::with_capacity(config.shards);
        for shard in 0..config.shards {
            let (doorbell, ear) = Doorbell::pair()
                .map_err(|e| StartError::Executor { shard, reason: format!("doorbell: {e}") })?;
            doorbells.push(doorbell);
            heard.push(Some(ear));
        }
        let router = Router {
            inboxes: inboxes.iter().cloned().collect(),
            doorbells: doorbells.into(),
            stop: stop.clone(),
        };
        if let Some(rebalance) = &config.rebalance {
            if !(1..=100).contains(&rebalance.low_water_percent) || rebalance.interval.is_zero() {
                return Err(StartError::Config(
                    "rebalance: low_water_percent must be 1..=100 and the interval above zero".into(),
                ));
            }
        }
        let mut runtime = Runtime {
            router: router.clone(),
            threads: Vec::new(),
            rebalancer: None,
            stop: stop.clone(),
            metrics: Vec::new(),
            rebalance_metrics: Arc::new(RebalanceMetrics::new()),
            recoveries: Vec::new(),
        };
        let mut started = Vec::new();
        // rings[from][to]: one bounded SPSC ring per ordered pair of shards.
        let rings: Vec<Vec<Arc<Ring>>> = (0..config.shards)
            .map(|_| (0..config.shards).map(|_| Arc::new(ArrayQueue::new(config.ring_depth))).collect())
            .collect();
        let states: Arc<Vec<AtomicU8>> =
            Arc::new((0..config.shards).map(|_| AtomicU8::new(RUNNING)).collect());
        for (shard, rings_out) in rings.iter().enumerate() {
            let inbox = inboxes[shard].clone();
            let metrics = Arc::new(ShardMetrics::new(shard));
            let (ready_tx, ready_rx) = sync_channel(1);
            let placement = if config.pin {
                glommio::Placement::Fixed(shard % cpus)
            } else {
                glommio::Placement::Unbound
            };
            let context = ShardContext {
                shard,
                shards: config.shards as u32,
                dir: config.data_dir.join(format!("shard-{shard}")),
                engine: config.engine.clone(),
                group_bytes_max: config.group_bytes_max,
                idle_sleep: config.idle_sleep,
                idle_park: config.idle_park,
                heard: heard[shard].take(),
                settle_linger: config.settle_linger,
                prefault: config.prefault,
                snapshot_every_bytes: config.snapshot_every_bytes,
                snapshot_write_bytes_per_s: config.snapshot_write_bytes_per_s,
                journal_file_bytes: config.journal_file_bytes,
                journal_prealloc_bytes_per_s: config.journal_prealloc_bytes_per_s,
                keep_journal: config.keep_journal,
                blocks_in_memory: config.transfers_in_memory.div_ceil(molly_engine::BLOCK_TRANSFERS),
                inbox,
                stop: stop.clone(),
                metrics: metrics.clone(),
                task: config.task.clone(),
                router: router.clone(),
                rings_in: (0..config.shards).map(|from| rings[from][shard].clone()).collect(),
                rings_out: rings_out.clone(),
                intents_max: config.intents_max,
                states: states.clone(),
            };
            let mut builder =
                glommio::LocalExecutorBuilder::new(placement).name(&format!("molly-shard-{shard}"));
            if !config.spin_before_park.is_zero() {
                builder = builder.spin_before_park(config.spin_before_park);
            }
            let handle = std::thread::Builder::new()
                .name(format!("molly-shard-{shard}"))
                .spawn(move || {
                    let failed = ready_tx.clone();
                    match builder.spawn(move || run_shard(context, ready_tx)) {
                        Ok(executor) => {
                            let _ = executor.join();
                        }
                        Err(error) => {
                            let _ =
                                failed.send(Err(StartError::Executor { shard, reason: error.to_string() }));
                        }
                    }
                })
                .map_err(|e| StartError::Executor { shard, reason: e.to_string() })?;
            runtime.threads.push(handle);
            runtime.metrics.push(metrics);
            started.push(ready_rx);
        }
        for (shard, ready) in started.into_iter().enumerate() {
            let outcome = ready.recv().unwrap_or_else(|_| {
                Err(StartError::Executor { shard, reason: "the shard thread exited during start-up".into() })
            });
            match outcome {
                Ok(report) => runtime.recoveries.push(report),
                Err(error) => {
                    runtime.shutdown();
                    return Err(error);
                }
            }
        }
        if let (Some(rebalance), true) = (config.rebalance, config.shards > 1) {
            let metrics = runtime.rebalance_metrics.clone();
            let on_round = move |round: &crate::rebalance::Round| metrics.record(round);
            match crate::rebalance::spawn(router, rebalance, stop, on_round) {
                Ok(thread) => runtime.rebalancer = Some(thread),
                Err(error) => {
                    runtime.shutdown();
                    return Err(StartError::Executor { shard: 0, reason: format!("rebalancer: {error}") });
                }
            }
        }
        Ok(runtime)
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.router.shards()
    }

    /// What recovery did, per shard.
    pub fn recoveries(&self) -> &[RecoveryReport] {
        &self.recoveries
    }

    /// A router to every shard's inbox.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Per-shard metrics.
    pub fn metrics(&self) -> &[Arc<ShardMetrics>] {
        &self.metrics
    }

    /// The rebalancer's metrics.
    pub fn rebalance_metrics(&self) -> &RebalanceMetrics {
        &self.rebalance_metrics
    }

    /// Requests waiting in shard `shard`'s inbox.
    pub fn inbox_len(&self, shard: usize) -> usize {
        self.router.inboxes[shard].len()
    }

    /// Queues a request on `shard`; a full inbox hands it back.
    pub fn submit(&self, shard: usize, request: Request) -> Result<(), Backpressure> {
        self.router.submit(shard, request)
    }

    /// Journals and applies `commands` on `shard`, waiting for the reply.
    /// Spins politely while the inbox is full.
    pub fn write(&self, shard: usize, commands: Vec<CommandBuf>) -> WriteReply {
        let (reply, answer) = reply_channel();
        self.submit_blocking(shard, Request::Write { commands, reply });
        answer.blocking_recv().unwrap_or_else(|_| {
            Err(ShardError::Failed { shard, reason: "the shard stopped before answering".into() })
        })
    }

    /// Looks accounts up on `shard`.
    pub fn lookup_accounts(&self, shard: usize, ids: Vec<u128>) -> Vec<Account> {
        let (reply, answer) = reply_channel();
        self.submit_blocking(shard, Request::LookupAccounts { ids, reply });
        answer.blocking_recv().unwrap_or_default()
    }

    /// Looks transfers up on `shard`.
    pub fn lookup_transfers(&self, shard: usize, ids: Vec<u128>) -> Vec<Transfer> {
        let (reply, answer) = reply_channel();
        self.submit_blocking(shard, Request::LookupTransfers { ids, reply });
        answer.blocking_recv().unwrap_or_default()
    }

    /// Counts, totals and the invariants of `shard`.
    pub fn stats(&self, shard: usize) -> Option<ShardStats> {
        let (reply, answer) = reply_channel();
        self.submit_blocking(shard, Request::Stats { reply });
        answer.blocking_recv().ok()
    }

    /// Queues `request` on `shard`, pausing while its inbox is full. Once
    /// the runtime is stopping it is dropped: its caller's answer fails.
    fn submit_blocking(&self, shard: usize, request: Request) {
        let _ = self.router.submit_blocking(shard, request);
    }

    /// Stops the shards: each answers everything already queued in its
    /// inbox, writes a snapshot, and exits. Requests submitted after the
    /// shard has exited are never answered (their callers see the reply
    /// channel close).
    pub fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for doorbell in self.router.doorbells.iter() {
            doorbell.ring();
        }
        if let Some(rebalancer) = self.rebalancer.take() {
            let _ = rebalancer.join();
        }
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A ring between two shards: rkyv-encoded [`crate::cross::Message`]s.
type Ring = ArrayQueue<rkyv::util::AlignedVec>;

/// Shard states for a clean stop: a shard exits once every shard is
/// quiescent (or gone), so no cross-shard transfer is left waiting on a peer
/// that already exited.
const RUNNING: u8 = 0;
const QUIESCENT: u8 = 1;
const EXITED: u8 = 2;

struct ShardContext {
    shard: usize,
    shards: u32,
    dir: PathBuf,
    engine: Config,
    group_bytes_max: usize,
    idle_sleep: Duration,
    idle_park: Duration,
    /// The shard's end of its doorbell (taken by the shard loop).
    heard: Option<std::os::unix::net::UnixStream>,
    settle_linger: Duration,
    prefault: bool,
    snapshot_every_bytes: u64,
    snapshot_write_bytes_per_s: u64,
    journal_file_bytes: u64,
    journal_prealloc_bytes_per_s: u64,
    keep_journal: bool,
    blocks_in_memory: usize,
    inbox: Arc<ArrayQueue<Request>>,
    stop: Arc<AtomicBool>,
    metrics: Arc<ShardMetrics>,
    task: Option<ShardTask>,
    router: Router,
    rings_in: Vec<Arc<Ring>>,
    rings_out: Vec<Arc<Ring>>,
    intents_max: usize,
    states: Arc<Vec<AtomicU8>>,
}

async fn run_shard(mut context: ShardContext, ready: SyncSender<Result<RecoveryReport, StartError>>) {
    let shard = context.shard;
    let recovered = match recover_shard(
        &context.dir,
        context.engine.clone(),
        context.group_bytes_max,
        shard as u32,
        context.shards,
    ) {
        Ok(recovered) => recovered,
        Err(source) => {
            let _ = ready.send(Err(StartError::Recovery { shard, source }));
            return;
        }
    };
    let report = recovered.report.clone();
    let mut core =
        ShardCore::new(shard, context.shards, recovered.engine, recovered.writer, context.metrics.clone())
            .with_segments(recovered.segments)
            .with_cross(recovered.cross)
            .with_snapshot_loaded(recovered.snapshot_position);
    core.set_intents_max(context.intents_max);
    core.set_journal_file_bytes(context.journal_file_bytes);
    core.set_keep_journal(context.keep_journal);
    core.set_blocks_in_memory(context.blocks_in_memory);
    if context.prefault {
        core.prefault();
    }
    // glommio's choice of ring holds for every file this shard opens in its
    // directory (one device, one thread): learned once, here.
    let journal_polled = match probe_direct_io(&context.dir).await {
        Ok(polled) => polled,
        Err(reason) => {
            let _ = ready.send(Err(StartError::Executor { shard, reason }));
            return;
        }
    };
    // The file appends continue in, if it exists (else the first group creates it).
    let mut journal = None;
    // Whether the current journal file grows with each group (created, not
    // a spare, or shorter than one): each commit then carries file system
    // metadata too (its new size and blocks), so the file is left for a
    // spare as soon as one is ready.
    let mut appending =
        std::fs::metadata(&recovered.path).map_or(true, |m| m.len() < context.journal_file_bytes);
    if recovered.path.exists() {
        match open_journal(&context.dir, core.journal_file(), false, false).await {
            Ok(file) => journal = Some((core.journal_file(), file)),
            Err(reason) => {
                let _ = ready.send(Err(StartError::Executor { shard, reason }));
                return;
            }
        }
    }
    update_journal_usage(&context);
    let mut spares =
        Spares::start(&context.dir, shard, context.journal_file_bytes, context.journal_prealloc_bytes_per_s);
    context.metrics.recovery_seconds.set(report.micros as f64 / 1e6);
    let _ = ready.send(Ok(report));
    if let Some(task) = &context.task {
        glommio::spawn_local((task.0)(ShardHandle { shard, router: context.router.clone() })).detach();
    }

    // The doorbell's other end: a task reads it and tells the loop.
    let (woken, wake) = glommio::channels::local_channel::new_bounded::<()>(1);
    // While the doorbell is heard, the shard parks when quiet; else it polls.
    let mut listening = false;
    if let Some(ear) = context.heard.take() {
        use std::os::fd::IntoRawFd;
        // SAFETY: the descriptor is a connected Unix stream socket whose
        // ownership passes from `ear` (consumed) to the glommio stream.
        let mut heard =
            unsafe { <glommio::net::UnixStream as std::os::fd::FromRawFd>::from_raw_fd(ear.into_raw_fd()) };
        glommio::spawn_local(async move {
            use futures_lite::AsyncReadExt;
            let mut bytes = [0u8; 64];
            while let Ok(1..) = heard.read(&mut bytes).await {
                let _ = woken.try_send(());
            }
        })
        .detach();
        listening = true;
    }
    let doorbell = &context.router.doorbells[shard];

    let mut bytes_since_snapshot = 0u64;
    let mut snapshots = Snapshots::default();
    let mut carry: Option<Request> = None;
    let mut rings = Rings::new(context.shards as usize);
    let mut lingering: Option<Instant> = None;
    loop {
        if snapshots.poll(&mut core) {
            update_journal_usage(&context);
        }
        // Take everything waiting that fits one group: peers' messages first
        // (they finish work already started), then callers' requests.
        rings.receive(&mut core, &context.rings_in, now_ns());
        while let Some(request) = carry.take().or_else(|| context.inbox.pop()) {
            if let Err(back) = core.offer(request, now_ns()) {
                carry = Some(back);
                break;
            }
        }
        context.metrics.inbox_depth.set(context.inbox.len() as i64);

        // A group of settles only waits a little for company (a caller's
        // next write), so it does not cost a commit of its own: it is not
        // sealed yet, and the loop idles as when there is nothing to write.
        let linger = core.group_can_wait()
            && carry.is_none()
            && !context.settle_linger.is_zero()
            && !context.stop.load(Ordering::SeqCst)
            && lingering.get_or_insert_with(Instant::now).elapsed() < context.settle_linger;
        if !linger {
            lingering = None;
        }
        let Some((offset, sealed)) = (if linger { None } else { core.seal(now_ns()) }) else {
            rings.send(&mut core, &context.rings_out, &context.router.doorbells);
            if context.stop.load(Ordering::SeqCst) && ready_to_exit(&core, &rings, &context, carry.is_none())
            {
                break;
            }
            // Nothing to do but wait for work: park until the doorbell rings
            // (or `idle_park`). With something pending that no message
            // announces, poll every `idle_sleep`.
            let quiet = !linger
                && carry.is_none()
                && rings.empty()
                && !context.idle_park.is_zero()
                && !context.stop.load(Ordering::SeqCst);
            if quiet && listening {
                doorbell.parked.store(true, Ordering::SeqCst);
                let work = context.stop.load(Ordering::SeqCst)
                    || !context.inbox.is_empty()
                    || context.rings_in.iter().any(|r| !r.is_empty());
                if !work {
                    // `true`: the reading task ended (the socket failed).
                    let deaf =
                        glommio::timer::timeout(context.idle_park, async { Ok(wake.recv().await.is_none()) })
                            .await
                            .unwrap_or(false);
                    listening = !deaf;
                }
                doorbell.parked.store(false, Ordering::SeqCst);
            } else {
                glommio::timer::sleep(context.idle_sleep).await;
            }
            continue;
        };
        let bytes = sealed.len();
        let mut buffer = glommio::allocate_dma_buffer(bytes);
        buffer.as_bytes_mut().copy_from_slice(sealed);
        // The group goes to a new file when the writer rotated: created,
        // and its directory entry synced, before anything in it is
        // acknowledged. The old file holds only durable groups.
        let first = core.journal_file();
        let path = context.dir.join(crate::journal_files::file_name(first));
        if journal.as_ref().map(|(f, _)| *f) != Some(first) {
            if let Some((_, old)) = journal.take() {
                let _ = old.close().await;
            }
            let spare = match spares.as_mut().filter(|_| offset == 0).map(|s| s.take_into(&path)) {
                Some(Ok(true)) => {
                    context.metrics.journal_files_preallocated.inc();
                    true
                }
                Some(Err(_)) => {
                    context.metrics.journal_spare_errors.inc();
                    false
                }
                Some(Ok(false)) | None => false,
            };
            match open_journal(&context.dir, first, offset == 0, spare).await {
                Ok(file) => {
                    journal = Some((first, file));
                    if offset == 0 {
                        appending = !spare;
                    }
                }
                Err(reason) => {
                    core.write_failed(format!("journal {}: {reason}", path.display()));
                    continue;
                }
            }
            update_journal_usage(&context);
        }
        let (_, file) = journal.as_ref().expect("opened above");
        // One durable write (O_DSYNC) for the whole group, applied while it
        // is written: its first poll queues it in glommio's ring, a short
        // timer lets the executor submit it, and the core applies the group
        // meanwhile, holding back every answer and message until the write
        // completes. Nothing is sent to a peer in between.
        let synced = Instant::now();
        let mut write = std::pin::pin!(file.write_at(buffer, offset));
        let early = futures_lite::future::poll_once(write.as_mut()).await;
        // (A yield resumes this task before the executor submits anything; a
        // timer goes back to the executor's loop, which submits first.)
        glommio::timer::sleep(SUBMIT_WAIT).await;
        core.apply_ahead();
        let written = match early {
            Some(written) => written,
            None => write.await,
        };
        let durable = match written {
            Ok(written) if written == bytes => Ok(()),
            Ok(written) => Err(format!("short write: {written} of {bytes} bytes at offset {offset}")),
            Err(error) => Err(error.to_string()),
        };
        context.metrics.fsync_seconds.observe(synced.elapsed().as_secs_f64());
        if journal_polled {
            context.metrics.journal_writes_polled.inc();
        }
        match durable {
            Ok(()) => {
                core.durable();
                rings.send(&mut core, &context.rings_out, &context.router.doorbells);
                bytes_since_snapshot += bytes as u64;
                if context.snapshot_every_bytes > 0
                    && bytes_since_snapshot >= context.snapshot_every_bytes
                    && snapshots.start(&mut core, &context.dir, shard, context.snapshot_write_bytes_per_s)
                {
                    bytes_since_snapshot = 0;
                } else if appending {
                    match spares.as_mut().map(|s| s.ready()) {
                        // The next group goes to the spare: it overwrites.
                        Some(Ok(true)) => core.rotate_journal(),
                        Some(Err(_)) => context.metrics.journal_spare_errors.inc(),
                        Some(Ok(false)) | None => {}
                    }
                }
            }
            Err(reason) => core.write_failed(format!("journal {}: {reason}", path.display())),
        }
    }
    context.states[shard].store(EXITED, Ordering::SeqCst);
    if let Some((_, file)) = journal.take() {
        let _ = file.close().await;
    }
    snapshots.wait(&mut core);
    if !core.failed() {
        // A clean stop leaves a snapshot at the journal's end: the next start replays nothing.
        let _ = core.snapshot(&context.dir);
    }
}

/// How long a shard waits after queueing a group's write, so glommio's loop
/// submits it before the shard applies the group (any timer does: it is
/// the trip through the loop that submits).
const SUBMIT_WAIT: std::time::Duration = std::time::Duration::from_micros(1);

/// The one-block file a shard opens for direct I/O before its journal.
pub const PROBE_NAME: &str = "direct-io.probe";

/// glommio decides once per thread and device whether direct I/O on the
/// device goes to its busy-polled ring (IOPOLL), by reading the first block of
/// the first file opened there. An empty file says yes on any device (a read
/// at the end of a file succeeds before the kernel looks at the device), and
/// a shard's first journal file is often new and empty. (A write-only
/// descriptor makes the probe fail, and say no.) On a device without
/// poll queues (virtio disks, most cloud volumes) the executor then spins on
/// every journal write, and a write an io_uring worker must carry (one that
/// extends the file) waits for that worker, pinned to the shard's CPU, until
/// the scheduler's next tick: 4 ms a group at HZ=250 instead of 0.1 ms. So a
/// shard opens a file with a block in it first, and the probe asks the device.
/// Returns whether direct I/O there goes to the polled ring: the probe file's
/// block is rewritten in place (the executor's first file write) and glommio's
/// I/O counters say which ring took it; every later file on the device and
/// thread gets the same ring.
async fn probe_direct_io(dir: &std::path::Path) -> Result<bool, String> {
    const BLOCK: usize = 4096;
    let path = dir.join(PROBE_NAME);
    let described =
        |error: &dyn std::fmt::Display| format!("probing direct I/O with {}: {error}", path.display());
    if std::fs::metadata(&path).map_or(true, |m| m.len() < BLOCK as u64) {
        std::fs::write(&path, [0u8; BLOCK]).map_err(|e| described(&e))?;
    }
    let file = glommio::io::OpenOptions::new()
        .read(true)
        .write(true)
        .dma_open(&path)
        .await
        .map_err(|e| described(&e))?;
    let mut block = file.alloc_dma_buffer(BLOCK);
    block.as_bytes_mut().fill(0);
    let written = file.write_at(block, 0).await;
    let polled = glommio::executor().io_stats().poll_ring.file_writes().0 > 0;
    let closed = file.close().await;
    match written {
        Ok(n) if n == BLOCK => {}
        Ok(n) => return Err(described(&format!("short write: {n} of {BLOCK} bytes"))),
        Err(e) => return Err(described(&e)),
    }
    closed.map_err(|e| described(&e))?;
    Ok(polled)
}

/// Opens journal file `first` in `dir` for direct I/O: `create` makes it
/// (truncated: nothing in it was acknowledged) and syncs the directory, so
/// its name is durable before a group in it is acknowledged. With `spare`,
/// the file was just renamed from a preallocated spare (zeros, durable): it
/// is opened as it is, and the directory synced the same way. Writes are
/// synchronous (`O_DSYNC`): a write completes once its data, and the file
/// size it may extend, are durable, as after an fdatasync, in one operation
/// the shard overlaps with applying the group.
async fn open_journal(
    dir: &std::path::Path,
    first: u64,
    create: bool,
    spare: bool,
) -> Result<glommio::io::DmaFile, String> {
    let path = dir.join(crate::journal_files::file_name(first));
    let mut options = glommio::io::OpenOptions::new();
    options.read(true).write(true).custom_flags(libc::O_DSYNC);
    if create && !spare {
        options.create(true).truncate(true);
    }
    let file = options
        .dma_open(&path)
        .await
        .map_err(|error| format!("opening {} for direct I/O: {error}", path.display()))?;
    if create {
        // The directory is synced through the ring, so the shard's other
        // tasks (its connections) run meanwhile. glommio opens the path
        // relative to no directory (EBADF on a relative path, and `molly
        // serve`'s default data directory is `./data`): it gets an absolute one.
        let synced = async {
            let absolute = std::path::absolute(dir).map_err(|e| e.to_string())?;
            let directory = glommio::io::Directory::open(&absolute).await.map_err(|e| e.to_string())?;
            let synced = directory.sync().await.map_err(|e| e.to_string());
            let _ = directory.close().await;
            synced
        };
        if let Err(error) = synced.await {
            let _ = file.close().await;
            return Err(format!("syncing {} after creating {}: {error}", dir.display(), path.display()));
        }
    }
    Ok(file)
}

/// Sets the journal files' metrics from the directory.
fn update_journal_usage(context: &ShardContext) {
    let (files, bytes) = crate::journal_files::usage(&crate::snapshot::Disk, &context.dir);
    context.metrics.journal_files.set(files as i64);
    context.metrics.journal_files_bytes.set(bytes as i64);
}

/// The snapshot being written on a background thread, if any: the shard
/// takes its state between groups ([`ShardCore::snapshot_start`], cheap),
/// a thread writes it, and the shard takes the outcome back when it is
/// done. A failed snapshot only costs recovery time: the journal has
/// everything, and the next one writes the same blocks again.
#[derive(Default)]
struct Snapshots {
    running: Option<Receiver<(SnapshotOutcome, f64)>>,
}

/// A written snapshot and the journal files deleted after it (or why not).
type SnapshotOutcome = Result<(SnapshotDone, Result<Vec<PathBuf>, std::io::Error>), SnapshotError>;

impl Snapshots {
    /// Starts a snapshot unless one is running; true if it started.
    fn start(&mut self, core: &mut ShardCore, dir: &std::path::Path, shard: usize, bytes_per_s: u64) -> bool {
        if self.running.is_some() {
            return false;
        }
        let Some(job) = core.snapshot_start(dir) else {
            return false;
        };
        let (done_tx, done_rx) = sync_channel(1);
        let good = core.snapshots_good().to_vec();
        let delete = !core.keep_journal();
        let spawned = std::thread::Builder::new().name(format!("molly-snapshot-{shard}")).spawn(move || {
            // Off its shard's CPU only (it inherits the shard's pin).
            let _ = crate::placement::unpin_current_thread();
            let started = Instant::now();
            let storage = crate::snapshot::Paced::new(bytes_per_s);
            let outcome = crate::journal_files::write_snapshot(&storage, job, &good, delete);
            let _ = done_tx.send((outcome, started.elapsed().as_secs_f64()));
        });
        match spawned {
            Ok(_) => {
                self.running = Some(done_rx);
                true
            }
            Err(error) => {
                let failed = SnapshotError::Io {
                    path: dir.to_path_buf(),
                    what: "starting the snapshot thread",
                    source: error,
                };
                let _ = core.snapshot_finished(Err(failed), 0.0);
                false
            }
        }
    }

    /// Hands a finished snapshot's outcome to the core; true when one finished.
    fn poll(&mut self, core: &mut ShardCore) -> bool {
        if let Some(running) = &self.running {
            match running.try_recv() {
                Ok((outcome, seconds)) => {
                    self.running = None;
                    finished(core, outcome, seconds);
                    return true;
                }
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => {
                    self.running = None;
                    let _ = core.snapshot_finished(Err(SnapshotError::Busy), 0.0);
                }
            }
        }
        false
    }

    /// Waits for a running snapshot (at shutdown).
    fn wait(&mut self, core: &mut ShardCore) {
        if let Some(running) = self.running.take() {
            let (outcome, seconds) = running.recv().unwrap_or((Err(SnapshotError::Busy), 0.0));
            finished(core, outcome, seconds);
        }
    }
}

/// Hands a snapshot's outcome to the core, counting the journal files deleted.
fn finished(core: &mut ShardCore, outcome: SnapshotOutcome, seconds: f64) {
    let outcome = outcome.map(|(done, pruned)| {
        core.journal_pruned(&pruned);
        done
    });
    let _ = core.snapshot_finished(outcome, seconds);
}

/// The shard loop's side of the rings: a message the core could not take
/// yet (its group is full) and an encoded message its peer's ring had no
/// room for, per peer: at most one of each, the rest waits in the ring or in
/// the core's outbox (backpressure, never growth).
struct Rings {
    received: Vec<Option<Message>>,
    unsent: Vec<Option<rkyv::util::AlignedVec>>,
}

impl Rings {
    fn new(shards: usize) -> Self {
        Self { received: (0..shards).map(|_| None).collect(), unsent: (0..shards).map(|_| None).collect() }
    }

    fn receive(&mut self, core: &mut ShardCore, rings_in: &[Arc<Ring>], now_ns: u64) {
        for (from, ring) in rings_in.iter().enumerate() {
            loop {
                let message = match self.received[from].take() {
                    Some(message) => message,
                    None => match ring.pop() {
                        Some(bytes) => decode(&bytes).expect("shards exchange only messages they encoded"),
                        None => break,
                    },
                };
                if let Err(back) = core.deliver(from, message, now_ns) {
                    self.received[from] = Some(back);
                    break;
                }
            }
        }
    }

    /// Moves the core's outgoing messages into the peers' rings, and rings
    /// the doorbell of every peer that got one.
    fn send(&mut self, core: &mut ShardCore, rings_out: &[Arc<Ring>], doorbells: &[Doorbell]) {
        for (to, ring) in rings_out.iter().enumerate() {
            let mut sent = false;
            loop {
                let bytes = match self.unsent[to].take() {
                    Some(bytes) => bytes,
                    None => match core.outbox(to).pop_front() {
                        Some(message) => encode(&message),
                        None => break,
                    },
                };
                if let Err(back) = ring.push(bytes) {
                    self.unsent[to] = Some(back);
                    break;
                }
                sent = true;
            }
            if sent {
                doorbells[to].ring();
            }
        }
    }

    fn empty(&self) -> bool {
        self.received.iter().all(Option::is_none) && self.unsent.iter().all(Option::is_none)
    }
}

/// After a stop: true once this shard has nothing open and every other
/// shard is quiescent or gone (a shard whose peers are all gone exits even
/// with intents open; the next start finishes them).
fn ready_to_exit(core: &ShardCore, rings: &Rings, context: &ShardContext, no_carry: bool) -> bool {
    let quiet = core.idle()
        && rings.empty()
        && no_carry
        && context.inbox.is_empty()
        && context.rings_in.iter().all(|r| r.is_empty());
    context.states[context.shard].store(if quiet { QUIESCENT } else { RUNNING }, Ordering::SeqCst);
    let others = |allowed: &[u8]| {
        context
            .states
            .iter()
            .enumerate()
            .all(|(i, s)| i == context.shard || allowed.contains(&s.load(Ordering::SeqCst)))
    };
    (quiet && others(&[QUIESCENT, EXITED])) || others(&[EXITED])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_for_is_stable_balanced_and_moves_little_when_growing() {
        // Stable: placements recorded when the function was written. If this
        // fails, existing data directories would route accounts to the wrong
        // shard: never change the function, add a new one.
        let placed: Vec<u32> = (1..=12u128).map(|id| shard_for(id, 4)).collect();
        assert_eq!(placed, [0, 3, 3, 1, 1, 2, 0, 0, 2, 2, 2, 1]);
        let wide: Vec<u32> = [u128::MAX - 1, 1u128 << 64, 12_345_678_901_234_567_890_123_456_789u128]
            .iter()
            .map(|&id| shard_for(id, 16))
            .collect();
        assert_eq!(wide, [6, 2, 11]);
        for id in 1..=1000u128 {
            assert_eq!(shard_for(id, 1), 0);
            assert!(shard_for(id, 7) < 7);
        }
        let mut counts = [0u32; 4];
        for id in 1..=40_000u128 {
            counts[shard_for(id, 4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (9_000..11_000).contains(&c)), "{counts:?}");
        let moved = (1..=40_000u128).filter(|&id| shard_for(id, 4) != shard_for(id, 5)).count();
        // Ideal: 1/5 of the accounts move.
        assert!((7_000..9_000).contains(&moved), "{moved}");
        let high = 1u128 << 100;
        assert!(shard_for(high | 1, 2) < 2);
    }
}
