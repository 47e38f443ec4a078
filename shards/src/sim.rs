//! A deterministic simulation of one shard (the first piece of `molly sim`,
//! issue 8): the real [`ShardCore`], engine and journal format on a
//! simulated disk and clock, driven by one seed.
//!
//! ```text
//!  seed ─► PRNG ─► each step one of: a client write (accounts, transfers of every kind,
//!                  retries of old batches) · a lookup · write the open group
//!                  (+ fdatasync, or left unsynced) · clock moves · crash · failed write
//!  disk: synced bytes + unsynced writes; a crash loses, keeps, or tears (per 512-byte
//!        sector) each unsynced write, then the shard recovers from what is left
//! ```
//!
//! Checked after every step: the engine's invariants (conservation per
//! ledger, limits, timestamps, indexes). After every crash: the recovered
//! state equals the state after every acknowledged group plus some prefix of
//! the entries of the group that was in flight (a torn group may keep its
//! first entries; they were never acknowledged) — so nothing acknowledged is
//! lost, nothing is half-applied, nothing appears from nowhere. On a
//! violation the report carries the seed and the first violated check;
//! `molly sim --seed N` replays the same run exactly.

use std::sync::Arc;

use molly_engine::{Account, AccountFlags, Config, Engine, EngineState, Transfer, TransferFlags};

use crate::durable::{apply, JournalWriter, Outcome};
use crate::journal::{self, CommandBuf, SECTOR_SIZE};
use crate::metrics::ShardMetrics;
use crate::runtime::{reply_channel, Answer, Request, WriteReply};
use crate::shard::ShardCore;

/// splitmix64: a small, well-known PRNG; the whole run follows from its
/// seed (the state, `.0`). Shared with the shards' seeded tests.
#[derive(Clone, Debug)]
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

/// The simulated disk: bytes made durable by a sync, and writes not yet synced.
#[derive(Debug, Default)]
struct SimDisk {
    durable: Vec<u8>,
    unsynced: Vec<(u64, Vec<u8>)>,
}

impl SimDisk {
    fn apply(target: &mut Vec<u8>, offset: u64, bytes: &[u8]) {
        let end = offset as usize + bytes.len();
        if target.len() < end {
            target.resize(end, 0);
        }
        target[offset as usize..end].copy_from_slice(bytes);
    }

    fn write(&mut self, offset: u64, bytes: &[u8]) {
        self.unsynced.push((offset, bytes.to_vec()));
    }

    fn sync(&mut self) {
        for (offset, bytes) in std::mem::take(&mut self.unsynced) {
            Self::apply(&mut self.durable, offset, &bytes);
        }
    }

    /// Power loss: each unsynced write is lost, kept whole, or torn (a
    /// random subset of its 512-byte physical sectors reaches the disk).
    fn crash(&mut self, prng: &mut Prng) {
        for (offset, bytes) in std::mem::take(&mut self.unsynced) {
            match prng.below(3) {
                0 => {}
                1 => Self::apply(&mut self.durable, offset, &bytes),
                _ => {
                    // Physical sectors are 512 bytes: a 4 KiB write can tear inside itself.
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

/// What one simulation run found.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Steps run.
    pub steps: u64,
    /// Crashes (power losses) simulated.
    pub crashes: u64,
    /// Failed journal writes simulated (each followed by a restart).
    pub failed_writes: u64,
    /// Groups made durable and acknowledged.
    pub groups_acknowledged: u64,
    /// Transfers acknowledged `ok`.
    pub transfers_ok: u64,
    /// The first violated check, if any.
    pub violation: Option<String>,
}

const GROUP_BYTES_MAX: usize = 64 * 1024;
/// The unit a torn write keeps or loses.
const PHYSICAL_SECTOR: usize = 512;
const _: () = assert!(SECTOR_SIZE.is_multiple_of(PHYSICAL_SECTOR));
const ACCOUNTS: u128 = 12;

struct World {
    prng: Prng,
    config: Config,
    disk: SimDisk,
    core: ShardCore,
    now_ns: u64,
    /// The engine's state after each acknowledged group; the last is current.
    acknowledged: EngineState,
    /// Commands of the group written but not yet acknowledged, if any.
    in_flight: Option<Vec<CommandBuf>>,
    /// Commands staged in the open group, in order.
    open: Vec<CommandBuf>,
    replies: Vec<Answer<WriteReply>>,
    sent: Vec<Vec<Transfer>>,
    next_id: u128,
    report: SimReport,
}

fn recover(disk: &mut SimDisk, config: &Config) -> Result<(Engine, JournalWriter), String> {
    let mut engine = Engine::new(config.clone()).map_err(|e| e.to_string())?;
    let mut expired = Vec::new();
    let body_len_max = config.batch_events_max * journal::RECORD_SIZE as u32;
    let scan = journal::scan("sim", &disk.durable[..], 0, 1, body_len_max, |_, command| {
        apply(&mut engine, &command.as_command(), &mut expired).expect("journaled batches are within limits");
    })
    .map_err(|e| e.to_string())?;
    disk.durable.truncate(scan.valid_end as usize);
    let writer = JournalWriter::new(
        scan.valid_end,
        scan.next_sequence,
        GROUP_BYTES_MAX,
        config.batch_events_max as usize,
    );
    Ok((engine, writer))
}

impl World {
    fn new(seed: u64) -> Self {
        let config = Config { accounts_max: 64, transfers_max: 100_000, ..Config::default() };
        let mut disk = SimDisk::default();
        let (engine, writer) = recover(&mut disk, &config).expect("an empty disk recovers");
        let acknowledged = engine.export();
        let core = ShardCore::new(0, 1, engine, writer, Arc::new(ShardMetrics::new(0)));
        Self {
            prng: Prng(seed),
            config,
            disk,
            core,
            now_ns: 1_000_000_000,
            acknowledged,
            in_flight: None,
            open: Vec::new(),
            replies: Vec::new(),
            sent: Vec::new(),
            next_id: 1,
            report: SimReport { seed, ..SimReport::default() },
        }
    }

    fn transfer_batch(&mut self) -> Vec<Transfer> {
        // Sometimes a client retries an earlier batch: it must answer without moving money twice.
        if !self.sent.is_empty() && self.prng.chance(10) {
            let old = self.prng.below(self.sent.len() as u64) as usize;
            return self.sent[old].clone();
        }
        let size = 1 + self.prng.below(12);
        let mut batch = Vec::with_capacity(size as usize);
        for i in 0..size {
            let id = self.next_id;
            self.next_id += 1;
            let debit = 1 + u128::from(self.prng.below(ACCOUNTS as u64));
            let credit = 1 + (debit + u128::from(self.prng.below(ACCOUNTS as u64 - 1))) % ACCOUNTS;
            let kind = self.prng.below(10);
            let mut t = Transfer {
                id,
                debit_account_id: debit,
                credit_account_id: credit,
                amount: 1 + u128::from(self.prng.below(500)),
                ledger: 1,
                code: 1,
                ..Transfer::default()
            };
            match kind {
                0 | 1 => {
                    t.flags = TransferFlags::PENDING;
                    t.timeout = self.prng.below(3) as u32;
                }
                2 | 3 if id > 1 => {
                    let pending_id = 1 + u128::from(self.prng.below(id as u64 - 1));
                    let flags =
                        if kind == 2 { TransferFlags::POST_PENDING } else { TransferFlags::VOID_PENDING };
                    t = Transfer { id, pending_id, flags, ..Transfer::default() };
                }
                4 if i + 1 < size => t.flags = TransferFlags::LINKED,
                _ => {}
            }
            batch.push(t);
        }
        self.sent.push(batch.clone());
        batch
    }

    fn client_write(&mut self) {
        let commands = if self.core.engine().accounts().is_empty() || self.prng.chance(3) {
            let accounts = (1..=ACCOUNTS)
                .map(|id| Account {
                    id,
                    ledger: 1,
                    code: 1,
                    flags: if id % 3 == 0 {
                        AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS
                    } else {
                        AccountFlags::NONE
                    },
                    ..Account::default()
                })
                .collect();
            vec![CommandBuf::CreateAccounts(accounts)]
        } else {
            (0..1 + self.prng.below(2)).map(|_| CommandBuf::CreateTransfers(self.transfer_batch())).collect()
        };
        let (reply, answer) = reply_channel();
        let staged = commands.clone();
        match self.core.offer(Request::Write { commands, reply }, self.now_ns) {
            Ok(()) => {
                // A tick may open the group; the core records it ahead of the write.
                if self.open.is_empty() && self.now_ns > self.core.engine().clock_ns() {
                    self.open.push(CommandBuf::Tick { now_ns: self.now_ns });
                }
                self.open.extend(staged);
                self.replies.push(answer);
            }
            Err(_) => {
                // The open group is full: write it first (the request is dropped, never acknowledged).
                self.write_group(true);
            }
        }
    }

    /// Seals the open group (or an idle expiry tick) and writes it; synced
    /// and acknowledged when `sync`, else left in flight.
    fn write_group(&mut self, sync: bool) {
        let now = self.now_ns;
        let idle_tick = self.open.is_empty();
        let Some((offset, bytes)) = self.core.seal(now) else { return };
        let bytes = bytes.to_vec();
        if idle_tick {
            self.open.push(CommandBuf::Tick { now_ns: now });
        }
        self.disk.write(offset, &bytes);
        self.in_flight = Some(std::mem::take(&mut self.open));
        if sync {
            self.sync_and_acknowledge();
        }
    }

    fn sync_and_acknowledge(&mut self) {
        if self.in_flight.is_none() {
            return;
        }
        self.disk.sync();
        self.core.durable();
        self.in_flight = None;
        self.acknowledged = self.core.engine().export();
        self.report.groups_acknowledged += 1;
        for mut answer in self.replies.drain(..) {
            if let Ok(Ok(outcomes)) = answer.try_recv() {
                for outcome in outcomes {
                    if let Outcome::Transfers(results) = outcome {
                        self.report.transfers_ok += results.iter().filter(|r| r.is_ok()).count() as u64;
                    }
                }
            }
        }
    }

    /// Power loss and restart: the recovered state must be the acknowledged
    /// one plus a prefix of the in-flight group's entries.
    fn crash(&mut self) -> Result<(), String> {
        self.report.crashes += 1;
        self.disk.crash(&mut self.prng);
        self.restart()
    }

    fn restart(&mut self) -> Result<(), String> {
        let (engine, writer) =
            recover(&mut self.disk, &self.config).map_err(|e| format!("recovery refused: {e}"))?;
        let recovered = engine.export();
        let mut candidate = Engine::import(self.config.clone(), self.acknowledged.clone())
            .map_err(|e| format!("acknowledged state does not import: {e}"))?;
        let mut matched = candidate.export() == recovered;
        let mut expired = Vec::new();
        for command in self.in_flight.take().unwrap_or_default() {
            if matched {
                break;
            }
            apply(&mut candidate, &command.as_command(), &mut expired)
                .expect("in-flight commands are within limits");
            matched = candidate.export() == recovered;
        }
        if !matched {
            return Err(format!(
                "recovered state ({} accounts, {} transfers) is not the acknowledged state plus a prefix of the group in flight ({} accounts, {} transfers acknowledged)",
                recovered.accounts.len(),
                recovered.transfers.len(),
                self.acknowledged.accounts.len(),
                self.acknowledged.transfers.len(),
            ));
        }
        self.acknowledged = recovered;
        self.open.clear();
        self.replies.clear();
        self.core = ShardCore::new(0, 1, engine, writer, Arc::new(ShardMetrics::new(0)));
        Ok(())
    }

    fn step(&mut self) -> Result<(), String> {
        // While a group's fdatasync is in flight the driver waits for it:
        // the only events are its completion, its failure, a crash, or time.
        if self.in_flight.is_some() {
            match self.prng.below(100) {
                0..=79 => self.sync_and_acknowledge(),
                80..=89 => self.now_ns += self.prng.below(1_000_000),
                90..=96 => self.crash()?,
                _ => {
                    // The fdatasync fails: the writes in the group fail, the shard is restarted.
                    self.report.failed_writes += 1;
                    self.core.write_failed("simulated fdatasync failure".into());
                    self.disk.crash(&mut self.prng);
                    self.restart()?;
                }
            }
            return self.core.engine().check_invariants().map_err(|v| format!("invariant: {v}"));
        }
        match self.prng.below(100) {
            0..=44 => self.client_write(),
            45..=49 => {
                let (reply, mut answer) = reply_channel();
                let ids = vec![1 + u128::from(self.prng.below(self.next_id as u64))];
                self.core
                    .offer(Request::LookupTransfers { ids, reply }, self.now_ns)
                    .map_err(|_| "a read was refused")?;
                answer.try_recv().map_err(|_| "a read was not answered at once")?;
            }
            50..=79 => {
                let sync = self.prng.chance(70);
                self.write_group(sync);
            }
            80..=96 => self.now_ns += self.prng.below(1_500_000_000),
            _ => self.crash()?,
        }
        self.core.engine().check_invariants().map_err(|v| format!("invariant: {v}"))
    }
}

/// Runs one seed for `steps` steps.
pub fn run(seed: u64, steps: u64) -> SimReport {
    let mut world = World::new(seed);
    for step in 0..steps {
        world.report.steps = step + 1;
        if let Err(violation) = world.step() {
            world.report.violation = Some(format!("step {step}: {violation}"));
            break;
        }
    }
    world.report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_replays_exactly_and_seeds_differ() {
        let a = run(7, 400);
        let b = run(7, 400);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        let c = run(8, 400);
        assert_ne!((a.transfers_ok, a.crashes), (c.transfers_ok, c.crashes));
    }

    #[test]
    fn a_sweep_of_seeds_finds_no_violation() {
        let mut crashes = 0;
        let mut acknowledged = 0;
        for seed in 1..=60 {
            let report = run(seed, 600);
            assert_eq!(report.violation, None, "seed {seed}: replay with `molly sim --seed {seed}`");
            crashes += report.crashes;
            acknowledged += report.groups_acknowledged;
        }
        // The sweep exercised what it claims to.
        assert!(crashes > 60 && acknowledged > 1000, "crashes {crashes}, groups {acknowledged}");
    }

    /// Seeds the first 2,000-seed sweep failed on: a group torn at 512-byte
    /// granularity kept one of its later entries at a 4 KiB boundary, and
    /// recovery took that for a newer group after a corrupt one and refused
    /// to start. Fixed by marking group starts in the journal (only a newer
    /// *group* proves the damage is not a torn tail).
    #[test]
    fn regression_torn_group_is_a_tail_not_a_corrupt_middle() {
        for seed in [50, 133, 153, 192, 243, 246, 256] {
            let report = run(seed, 2000);
            assert_eq!(report.violation, None, "seed {seed}");
        }
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught() {
        // Corrupt the model: pretend a group was acknowledged that never reached the disk.
        let mut world = World::new(3);
        for _ in 0..200 {
            world.step().unwrap();
        }
        if world.in_flight.is_some() {
            world.sync_and_acknowledge();
        }
        world.client_write();
        world.client_write();
        world.write_group(false);
        assert!(world.in_flight.is_some());
        world.disk.unsynced.clear(); // the write vanishes
        world.sync_and_acknowledge(); // ... but the client is told it is durable
                                      // A gap where an acknowledged group should be: recovery refuses, or
                                      // recovers a state without the acknowledged group. Either way, caught.
        assert!(world.crash().is_err(), "a lost acknowledged group went unnoticed");
    }
}
