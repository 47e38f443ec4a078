//! `molly bench shards`: durable transfers through the pinned shard runtime,
//! in process (no protocol, no network: what `molly bench` over the
//! protocol adds to it is the edge's cost).
//!
//! Accounts are partitioned with `shard_for`; each transfer goes to the
//! shard `molly_shards::route` names (its debit account's, or its user's
//! when it pays from a sharded system account), and a `cross_shard` fraction
//! of the user-to-user transfers credit an account of another shard (the
//! two-phase protocol of `molly_shards::cross`: the batch is answered once
//! those are settled). A `hot` fraction pays from a deposit clearing account
//! to a user or from a user to the fee account, as a payment gateway's
//! traffic does: sharded system accounts by default (a part on every
//! shard), or plain ones on one shard each (`hot_plain`), to measure what
//! sharding them is worth.
//! Batches are generated before the timed run; a driver thread keeps
//! `in_flight` of them in flight (with one, it sleeps until an answer comes,
//! as a client does, instead of polling: that took CPU from the shards it
//! measures), and a batch's latency runs from its submission to its durable
//! reply. With `split` (the command's default),
//! a batch is a client's as `molly serve` gets it: its transfers debit
//! users of every shard, it is split by route into one part per shard
//! (submitted together, as the server does), `in_flight` counts such
//! batches, and a batch's latency runs until its last part is durable.
//! Without it, a batch's transfers all debit accounts of one shard (users
//! take turns by shard) and `in_flight` counts per shard. CPU time is the
//! whole process's (shards and driver), so the figure stays comparable on
//! a shared machine.

use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::sync::oneshot::error::TryRecvError;

use anyhow::{bail, ensure, Context};
use molly_engine::{Account, Config, Transfer};
use molly_shards::durable::Outcome;
use molly_shards::journal::CommandBuf;
use molly_shards::route::{credit_peer, sharded_id, transfer_route, TransferRoute};
use molly_shards::runtime::{
    reply_channel, shard_for, Answer, Backpressure, Request, Runtime, RuntimeConfig, WriteReply,
};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;

use crate::report::{latency_histogram, Latency};

/// One run's shape.
#[derive(Clone, Debug, Serialize)]
pub struct ShardScenario {
    /// Shards.
    pub shards: usize,
    /// Accounts over all shards.
    pub accounts: u32,
    /// Transfers over all shards.
    pub transfers: u64,
    /// Transfers per batch.
    pub batch: u32,
    /// Batches queued per shard at once (with `split`: client batches in
    /// flight, each with a part on every shard it touches).
    pub in_flight: usize,
    /// Batches are clients' batches over every shard, split by route
    /// (see the module doc); otherwise each batch debits one shard's users.
    pub split: bool,
    /// Where the journals go (a fresh subdirectory is made and removed).
    pub data_dir: PathBuf,
    /// Pin shards to CPUs.
    pub pin: bool,
    /// Workload seed.
    pub seed: u64,
    /// Journal bytes between snapshots (0: none during the run). Snapshots
    /// are incremental and written on a background thread.
    pub snapshot_every_bytes: u64,
    /// Pace of the background snapshot writer in bytes per second (0: not paced).
    pub snapshot_write_bytes_per_s: u64,
    /// Pace of the journal preallocation thread in bytes per second (0: off).
    pub journal_prealloc_bytes_per_s: u64,
    /// How long a group of settles only waits for company, microseconds
    /// (`RuntimeConfig::settle_linger`).
    pub settle_linger_us: u64,
    /// How long a shard spins before parking, microseconds
    /// (`RuntimeConfig::spin_before_park`).
    pub spin_before_park_us: u64,
    /// Fraction of the user-to-user transfers whose credit account is on
    /// another shard (0..=1; no effect with one shard).
    pub cross_shard: f64,
    /// Fraction of transfers between a user and a system account (half
    /// deposits from the clearing account, half fees to the fee account).
    pub hot: f64,
    /// The system accounts are plain accounts (one shard each) instead of
    /// sharded ones.
    pub hot_plain: bool,
}

/// The figures of one run.
#[derive(Clone, Debug, Serialize)]
pub struct ShardReport {
    /// The shape.
    pub scenario: ShardScenario,
    /// Transfers acknowledged durable.
    pub transfers: u64,
    /// Transfers rejected (0 expected).
    pub rejected: u64,
    /// Wall seconds from the first submission to the last reply.
    pub seconds: f64,
    /// transfers / seconds.
    pub transfers_per_second: f64,
    /// Submission-to-durable-reply latency per batch.
    pub batch_latency: Latency,
    /// Journal groups written (one write + one fdatasync each).
    pub groups: u64,
    /// Mean batches (with `split`: parts of batches) per group.
    pub batches_per_group: f64,
    /// Cross-shard transfers among them.
    pub cross_shard_transfers: u64,
    /// CPU seconds of the whole process (user + system) during the run.
    pub cpu_seconds: f64,
    /// transfers / cpu_seconds.
    pub transfers_per_cpu_second: f64,
}

/// User + system CPU time of this process so far, in seconds.
fn process_cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    assert_eq!(rc, 0, "getrusage");
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn transfer_results(outcomes: &[Outcome]) -> (u64, u64) {
    let mut ok = 0;
    let mut rejected = 0;
    for outcome in outcomes {
        if let Outcome::Transfers(results) = outcome {
            let n = results.iter().filter(|r| r.is_ok()).count() as u64;
            ok += n;
            rejected += results.len() as u64 - n;
        }
    }
    (ok, rejected)
}

/// The deposit clearing and fee accounts of the `hot` share.
struct SystemAccounts {
    clearing: u128,
    fees: u128,
    plain: bool,
}

impl SystemAccounts {
    fn new(scenario: &ShardScenario) -> Self {
        if scenario.hot_plain {
            let n = u128::from(scenario.accounts);
            Self { clearing: n + 1, fees: n + 2, plain: true }
        } else {
            Self { clearing: sharded_id(1), fees: sharded_id(2), plain: false }
        }
    }

    fn ids(&self) -> [u128; 2] {
        [self.clearing, self.fees]
    }

    fn lives_on(&self, id: u128, shard: u32, shards: u32) -> bool {
        !self.plain || shard_for(id, shards) == shard
    }
}

/// A batch as submitted: one part per shard it touches.
type Batch = Vec<(usize, Vec<Transfer>)>;

/// Every batch, generated before the clock starts.
struct Workload {
    /// One queue per shard, or one queue of split batches.
    queues: Vec<std::collections::VecDeque<Batch>>,
    cross_shard_transfers: u64,
    /// Engine transfers each shard will hold.
    engine_transfers: Vec<u64>,
}

/// Transfers in order, each appended to the open batch of the shard that
/// applies it; a full batch is queued.
fn generate(scenario: &ShardScenario, owned: &[Vec<u128>], system: &SystemAccounts) -> Workload {
    let shards = scenario.shards;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(scenario.seed);
    let mut workload = Workload {
        queues: vec![Default::default(); if scenario.split { 1 } else { shards }],
        cross_shard_transfers: 0,
        engine_transfers: vec![0; shards],
    };
    let mut open: Vec<Vec<Transfer>> = vec![Vec::new(); shards];
    let mut open_split = 0usize;
    for n in 0..scenario.transfers {
        // Users take turns by shard, a batch's worth at a time (split: any
        // shard's, at random).
        let home = if scenario.split {
            rng.random_range(0..shards)
        } else {
            (n / u64::from(scenario.batch)) as usize % shards
        };
        let ids = &owned[home];
        let user = ids[rng.random_range(0..ids.len())];
        let (debit, credit) = if rng.random_bool(scenario.hot) {
            if rng.random_bool(0.5) {
                (system.clearing, user)
            } else {
                (user, system.fees)
            }
        } else {
            let credits = if shards > 1 && rng.random_bool(scenario.cross_shard) {
                &owned[(home + rng.random_range(1..shards)) % shards]
            } else {
                ids
            };
            let mut credit = credits[rng.random_range(0..credits.len())];
            while credit == user {
                credit = credits[rng.random_range(0..credits.len())];
            }
            (user, credit)
        };
        let t = Transfer {
            id: u128::from(n) + 1,
            debit_account_id: debit,
            credit_account_id: credit,
            amount: 1,
            ledger: 1,
            code: 1,
            ..Transfer::default()
        };
        let TransferRoute::Shard(shard) = transfer_route(&t, shards as u32) else {
            unreachable!("no posts or voids here")
        };
        let shard = shard as usize;
        workload.engine_transfers[shard] += 1;
        if let Some(peer) = credit_peer(&t, shard as u32, shards as u32) {
            workload.cross_shard_transfers += 1;
            workload.engine_transfers[shard] += 1;
            workload.engine_transfers[peer as usize] += 1;
        }
        open[shard].push(t);
        if scenario.split {
            open_split += 1;
            if open_split == scenario.batch as usize || n + 1 == scenario.transfers {
                open_split = 0;
                let parts = open.iter_mut().map(std::mem::take).enumerate().filter(|(_, p)| !p.is_empty());
                workload.queues[0].push_back(parts.collect());
            }
        } else if open[shard].len() == scenario.batch as usize {
            workload.queues[shard].push_back(vec![(shard, std::mem::take(&mut open[shard]))]);
        }
    }
    for (shard, part) in open.into_iter().enumerate().filter(|(_, p)| !p.is_empty()) {
        workload.queues[shard].push_back(vec![(shard, part)]);
    }
    workload
}

/// A batch on its way: parts not yet taken (a shard's inbox was full) and
/// the answers still to come.
struct InFlight {
    submitted: Instant,
    unsent: Batch,
    answers: Vec<(usize, Answer<WriteReply>)>,
}

impl InFlight {
    /// Submits the parts not yet taken, oldest first, until a shard refuses one.
    fn submit(&mut self, runtime: &Runtime) {
        while let Some((shard, part)) = self.unsent.pop() {
            let (reply, answer) = reply_channel();
            let request = Request::Write { commands: vec![CommandBuf::CreateTransfers(part)], reply };
            match runtime.submit(shard, request) {
                Ok(()) => self.answers.push((shard, answer)),
                Err(Backpressure(Request::Write { mut commands, .. })) => {
                    if let Some(CommandBuf::CreateTransfers(part)) = commands.pop() {
                        self.unsent.push((shard, part));
                    }
                    return;
                }
                Err(Backpressure(_)) => unreachable!("a write was submitted"),
            }
        }
    }
}

/// What the driver has been answered.
struct Tally {
    /// Parts outstanding per shard (sent or waiting to be).
    outstanding: Vec<usize>,
    done: u64,
    rejected: u64,
    parts: u64,
}

impl Tally {
    fn add(&mut self, shard: usize, reply: WriteReply) -> anyhow::Result<()> {
        self.outstanding[shard] -= 1;
        let outcomes = reply.map_err(|e| anyhow::anyhow!("shard {shard}: {e}"))?;
        let (ok, bad) = transfer_results(&outcomes);
        self.done += ok + bad;
        self.rejected += bad;
        self.parts += 1;
        Ok(())
    }
}

/// Runs one scenario on a fresh data directory (removed afterwards).
pub fn run(scenario: &ShardScenario, mut progress: impl FnMut(u64)) -> anyhow::Result<ShardReport> {
    ensure!(
        scenario.shards >= 1 && scenario.batch >= 1 && scenario.in_flight >= 1,
        "shards, batch and in_flight must be at least 1"
    );
    ensure!((0.0..=1.0).contains(&scenario.cross_shard), "cross_shard is a fraction in 0..=1");
    ensure!((0.0..=1.0).contains(&scenario.hot), "hot is a fraction in 0..=1");
    let dir = scenario.data_dir.join(format!("bench-shards-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let shards = scenario.shards as u32;
    let mut owned: Vec<Vec<u128>> = vec![Vec::new(); scenario.shards];
    for id in 1..=u128::from(scenario.accounts) {
        owned[shard_for(id, shards) as usize].push(id);
    }
    for (shard, ids) in owned.iter().enumerate() {
        ensure!(ids.len() >= 2, "shard {shard} owns fewer than 2 accounts; use more accounts");
    }
    let system = SystemAccounts::new(scenario);
    let workload = generate(scenario, &owned, &system);
    // Room for every engine transfer a shard will hold: a cross-shard
    // transfer is three (its pending leg and settle on the debit shard, its
    // credit leg on the credit shard).
    let per_shard_transfers = workload.engine_transfers.iter().max().copied().unwrap_or(0)
        + 4 * u64::from(scenario.batch) * scenario.in_flight as u64;
    let mut config = RuntimeConfig::new(dir.clone());
    config.shards = scenario.shards;
    config.pin = scenario.pin;
    config.prefault = true;
    config.snapshot_every_bytes = scenario.snapshot_every_bytes;
    config.snapshot_write_bytes_per_s = scenario.snapshot_write_bytes_per_s;
    config.journal_prealloc_bytes_per_s = scenario.journal_prealloc_bytes_per_s;
    config.settle_linger = std::time::Duration::from_micros(scenario.settle_linger_us);
    config.spin_before_park = std::time::Duration::from_micros(scenario.spin_before_park_us);
    config.inbox_depth = scenario.in_flight.max(16);
    config.engine = Config {
        batch_events_max: scenario.batch,
        // The users, the two system accounts, and bridges to every peer.
        accounts_max: scenario.accounts + 2 + 2 * shards,
        transfers_max: u32::try_from(per_shard_transfers).context("too many transfers per shard")?,
        ..Config::default()
    };
    let runtime = Runtime::start(config).context("starting the shards")?;

    // Create the accounts on their shards (a sharded one on every shard).
    for (shard, ids) in owned.iter().enumerate() {
        let mut ids = ids.clone();
        ids.extend(system.ids().into_iter().filter(|&id| system.lives_on(id, shard as u32, shards)));
        for chunk in ids.chunks(scenario.batch as usize) {
            let accounts =
                chunk.iter().map(|&id| Account { id, ledger: 1, code: 1, ..Account::default() }).collect();
            runtime
                .write(shard, vec![CommandBuf::CreateAccounts(accounts)])
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    let Workload { mut queues, cross_shard_transfers, .. } = workload;
    let groups_before: u64 = runtime.metrics().iter().map(|m| m.groups.get()).sum();

    let mut histogram = latency_histogram();
    let mut tally = Tally { outstanding: vec![0; scenario.shards], done: 0, rejected: 0, parts: 0 };
    let mut flying: Vec<InFlight> = Vec::new();
    let cpu_started = process_cpu_seconds();
    let started = Instant::now();
    loop {
        let mut idle = true;
        // Start every batch at a queue's head whose shards all have room.
        for queue in queues.iter_mut() {
            while queue
                .front()
                .is_some_and(|b| b.iter().all(|(s, _)| tally.outstanding[*s] < scenario.in_flight))
            {
                let mut unsent = queue.pop_front().expect("a head");
                unsent.reverse();
                for (shard, _) in &unsent {
                    tally.outstanding[*shard] += 1;
                }
                flying.push(InFlight { submitted: Instant::now(), unsent, answers: Vec::new() });
                idle = false;
            }
        }
        let mut i = 0;
        while i < flying.len() {
            let batch = &mut flying[i];
            if !batch.unsent.is_empty() {
                batch.submit(&runtime);
            }
            let mut j = 0;
            while j < batch.answers.len() {
                let shard = batch.answers[j].0;
                match batch.answers[j].1.try_recv() {
                    Ok(reply) => {
                        batch.answers.swap_remove(j);
                        tally.add(shard, reply)?;
                        idle = false;
                    }
                    Err(TryRecvError::Empty) => j += 1,
                    Err(TryRecvError::Closed) => bail!("shard {shard} stopped"),
                }
            }
            if batch.unsent.is_empty() && batch.answers.is_empty() {
                let batch = flying.swap_remove(i);
                histogram.record(batch.submitted.elapsed().as_nanos().max(1) as u64)?;
            } else {
                i += 1;
            }
        }
        progress(tally.done);
        if tally.done >= scenario.transfers {
            break;
        }
        if idle {
            // With one batch in flight, wait as a client does: asleep until
            // an answer comes (polling takes CPU from the shards measured).
            // With several, an answer may come on any of them: poll, with a
            // short sleep; also while a part refused for backpressure waits.
            match flying.as_mut_slice() {
                [batch] if batch.unsent.is_empty() && !batch.answers.is_empty() => {
                    let (shard, answer) = batch.answers.swap_remove(0);
                    let reply =
                        answer.blocking_recv().map_err(|_| anyhow::anyhow!("shard {shard} stopped"))?;
                    tally.add(shard, reply)?;
                }
                _ => std::thread::sleep(Duration::from_micros(20)),
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = process_cpu_seconds() - cpu_started;
    let groups: u64 = runtime.metrics().iter().map(|m| m.groups.get()).sum::<u64>() - groups_before;
    for shard in 0..scenario.shards {
        let stats = runtime.stats(shard).context("shard stats")?;
        if let Err(violation) = stats.invariants {
            bail!("shard {shard}: invariant broken after the run: {violation}");
        }
        ensure!(stats.intents_open == 0, "shard {shard}: cross-shard intents left open");
    }
    drop(runtime);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(ShardReport {
        scenario: scenario.clone(),
        transfers: tally.done,
        rejected: tally.rejected,
        seconds,
        transfers_per_second: tally.done as f64 / seconds,
        batch_latency: Latency::from_ns(&histogram),
        groups,
        batches_per_group: tally.parts as f64 / groups.max(1) as f64,
        cross_shard_transfers,
        cpu_seconds,
        transfers_per_cpu_second: tally.done as f64 / cpu_seconds.max(1e-9),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(split: bool, data_dir: PathBuf) -> ShardScenario {
        ShardScenario {
            shards: 2,
            accounts: 1000,
            transfers: 10_500,
            batch: 1000,
            in_flight: 2,
            split,
            data_dir,
            pin: false,
            seed: 7,
            snapshot_every_bytes: 0,
            snapshot_write_bytes_per_s: 0,
            journal_prealloc_bytes_per_s: 0,
            settle_linger_us: 0,
            spin_before_park_us: 0,
            cross_shard: 0.1,
            hot: 0.1,
            hot_plain: false,
        }
    }

    fn owned(scenario: &ShardScenario) -> Vec<Vec<u128>> {
        let mut owned = vec![Vec::new(); scenario.shards];
        for id in 1..=u128::from(scenario.accounts) {
            owned[shard_for(id, scenario.shards as u32) as usize].push(id);
        }
        owned
    }

    #[test]
    fn a_split_batch_is_a_clients_batch_cut_by_route() {
        let scenario = scenario(true, PathBuf::new());
        let system = SystemAccounts::new(&scenario);
        let workload = generate(&scenario, &owned(&scenario), &system);
        assert_eq!(workload.queues.len(), 1, "one queue of client batches");
        let batches: Vec<&Batch> = workload.queues[0].iter().collect();
        assert_eq!(batches.len(), 11, "10,500 transfers in batches of 1,000");
        let mut ids = Vec::new();
        for batch in &batches[..10] {
            assert_eq!(batch.iter().map(|(_, part)| part.len()).sum::<usize>(), 1000);
            assert_eq!(batch.len(), 2, "a client's batch debits users of both shards");
        }
        for batch in &batches {
            for (shard, part) in batch.iter() {
                for t in part {
                    assert_eq!(transfer_route(t, 2), TransferRoute::Shard(*shard as u32));
                    ids.push(t.id);
                }
            }
        }
        ids.sort_unstable();
        assert_eq!(ids, (1..=10_500).collect::<Vec<u128>>(), "every transfer once");
    }

    #[test]
    fn a_split_run_applies_every_transfer_and_settles_every_intent() {
        let dir = std::env::temp_dir().join(format!("molly-bench-split-{}", std::process::id()));
        for split in [true, false] {
            let report = run(&scenario(split, dir.clone()), |_| {}).unwrap();
            assert_eq!((report.transfers, report.rejected), (10_500, 0), "split {split}");
            assert!(report.cross_shard_transfers > 500, "split {split}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
