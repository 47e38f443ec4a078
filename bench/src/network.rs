//! `molly bench`: a running server driven over the binary protocol, as an
//! exchange would drive it (the Rust client, loopback TCP, durable journal).
//!
//! The default workload is the common ledger benchmark shape: 10,000
//! accounts, uniform pairs, batches of 8190, 10M transfers, so figures
//! compare with other ledgers measured the same way. Each connection keeps
//! `in_flight` batches outstanding; a batch's latency runs from the call to
//! its durable reply. The first `warmup` batches are not measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context};
use molly_client::{Client, ClientConfig};
use molly_engine::{Account, CreateAccountResult, CreateTransferResult, Transfer};
use molly_shards::route::{credit_peer, sharded_id, transfer_route, TransferRoute};
use molly_shards::runtime::shard_for;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;

use crate::engine::{PairSource, Pairs};
use crate::report::{latency_histogram, Latency};

/// The ledger the benchmark's accounts live on (ETH in the registry).
pub const LEDGER: u32 = 1;

/// How much to run.
#[derive(Clone, Copy, Debug, Serialize)]
pub enum Amount {
    /// This many transfers.
    Transfers(u64),
    /// For this long.
    Seconds(f64),
}

/// One run's shape.
#[derive(Clone, Debug, Serialize)]
pub struct NetScenario {
    /// Connections (one client each).
    pub connections: usize,
    /// Batches outstanding per connection.
    pub in_flight: usize,
    /// Transfers per batch.
    pub batch: u32,
    /// Accounts (ids 1..=accounts; created if missing).
    pub accounts: u32,
    /// Transfers or duration.
    pub amount: Amount,
    /// Share of transfers whose accounts live on different shards; `None`:
    /// whatever uniform (or Zipf) pairs give (1 − 1/shards).
    pub cross_shard: Option<f64>,
    /// Zipf exponent for hot accounts (`None`: uniform).
    pub zipf: Option<f64>,
    /// Share of transfers between a user and a system account: half
    /// deposits (clearing account → user), half fees (user → fee account).
    pub hot: f64,
    /// The system accounts are plain (one shard each), not sharded.
    pub hot_plain: bool,
    /// Batches before measuring.
    pub warmup: u64,
    /// Workload seed.
    pub seed: u64,
    /// Check afterwards that every acknowledged transfer exists and the ledger balances.
    pub verify: bool,
    /// Keep every measured batch's send time and latency ([`NetReport::batches`]).
    pub trace: bool,
}

impl NetScenario {
    /// The deposit clearing and fee accounts of the `hot` share.
    pub fn system_accounts(&self) -> [u128; 2] {
        if self.hot_plain {
            let n = u128::from(self.accounts);
            [n + 1, n + 2]
        } else {
            [sharded_id(1), sharded_id(2)]
        }
    }

    /// Every account the run uses: users 1..=accounts, then the system accounts.
    pub fn account_ids(&self) -> Vec<u128> {
        let mut ids: Vec<u128> = (1..=u128::from(self.accounts)).collect();
        if self.hot > 0.0 {
            ids.extend(self.system_accounts());
        }
        ids
    }
}

/// The figures of one run.
#[derive(Clone, Debug, Serialize)]
pub struct NetReport {
    /// The shape.
    pub scenario: NetScenario,
    /// Shards serving.
    pub server_shards: u32,
    /// Transfers acknowledged in the measured part.
    pub transfers: u64,
    /// Transfers answered with a code other than `ok` (0 expected).
    pub rejected: u64,
    /// Share of measured transfers between shards.
    pub cross_shard_measured: f64,
    /// Measured wall seconds.
    pub seconds: f64,
    /// Acknowledged durable transfers per second.
    pub transfers_per_second: f64,
    /// Batch latency, call to durable reply.
    pub batch_latency: Latency,
    /// The same, flattened for `--compare`.
    pub p99_batch_ms: f64,
    /// The benchmark process's CPU seconds over the run (client side cost).
    pub client_cpu_seconds: f64,
    /// `--verify`: transfers looked up and found.
    pub verified_transfers: Option<u64>,
    /// With [`NetScenario::trace`]: every measured batch, in the order the
    /// replies came (not in the JSON report: `molly bench --trace` writes them).
    #[serde(skip)]
    pub batches: Vec<BatchSample>,
}

/// One measured batch: when it was sent and how long its reply took.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchSample {
    /// Sent this long after the first measured batch, in milliseconds.
    pub sent_ms: f64,
    /// From the call to the durable reply, in milliseconds.
    pub latency_ms: f64,
    /// Transfers in the batch.
    pub transfers: u32,
}

/// Where the server is.
#[derive(Clone, Debug)]
pub struct Target {
    /// Client settings (address, id, key).
    pub client: ClientConfig,
}

/// Runs the scenario; `progress` gets the transfers acknowledged so far.
pub fn run(
    target: &Target,
    scenario: &NetScenario,
    progress: impl Fn(u64) + Send + Sync + 'static,
) -> anyhow::Result<NetReport> {
    ensure!(
        scenario.connections > 0 && scenario.in_flight > 0,
        "connections and in_flight must be at least 1"
    );
    ensure!(
        scenario.accounts >= 2 && scenario.batch > 0,
        "need at least 2 accounts and batches of 1 or more"
    );
    if let Some(x) = scenario.cross_shard {
        ensure!((0.0..=1.0).contains(&x), "--cross-shard is a share between 0 and 1");
    }
    ensure!((0.0..=1.0).contains(&scenario.hot), "--hot is a share between 0 and 1");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(drive(target, scenario, Arc::new(progress)))
}

async fn drive(
    target: &Target,
    scenario: &NetScenario,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
) -> anyhow::Result<NetReport> {
    let mut config = target.client.clone();
    config.in_flight_max = scenario.in_flight.max(1);
    config.batch_events_max = scenario.batch;
    let mut clients = Vec::new();
    for _ in 0..scenario.connections {
        clients.push(Client::connect(config.clone()).await.context("connecting")?);
    }
    let info = clients[0].server_info().await.context("server_info")?;
    ensure!(
        scenario.batch <= info.batch_events_max,
        "batch {} is over the server's limit of {}",
        scenario.batch,
        info.batch_events_max
    );
    create_accounts(&clients[0], &scenario.account_ids(), scenario.batch).await?;
    let before = if scenario.verify {
        Some(ledger_totals(&clients[0], &scenario.account_ids(), scenario.batch).await?)
    } else {
        None
    };

    // Ids unique across runs against the same server: the run's start time in the high half.
    let nonce = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64) as u128;
    let shared = Arc::new(Shared {
        next_batch: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        measured: Mutex::new(Measured::default()),
        acked_ids: Mutex::new(Vec::new()),
    });
    let total_batches = match scenario.amount {
        Amount::Transfers(n) => Some(scenario.warmup + n.div_ceil(u64::from(scenario.batch))),
        Amount::Seconds(_) => None,
    };
    let deadline = match scenario.amount {
        Amount::Seconds(s) => Some(Duration::from_secs_f64(s)),
        Amount::Transfers(_) => None,
    };
    let cpu_started = crate::report::process_cpu_ns() as f64 / 1e9;
    let started = Instant::now();
    let mut workers = Vec::new();
    for (c, client) in clients.iter().enumerate() {
        for slot in 0..scenario.in_flight {
            let worker = Worker {
                client: client.clone(),
                scenario: scenario.clone(),
                shards: info.shards,
                nonce,
                shared: shared.clone(),
                total_batches,
                deadline: deadline.map(|d| (started, d)),
                seed: scenario.seed ^ ((c as u64) << 32 | slot as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                progress: progress.clone(),
            };
            workers.push(tokio::spawn(worker.run()));
        }
    }
    for worker in workers {
        worker.await.context("a worker panicked")??;
    }
    let client_cpu_seconds = crate::report::process_cpu_ns() as f64 / 1e9 - cpu_started;
    let measured = std::mem::take(&mut *shared.measured.lock().expect("not poisoned"));
    let (Some(first), Some(last)) = (measured.first_sent, measured.last_reply) else {
        bail!("nothing was measured (raise --transfers or --duration, or lower --warmup)");
    };
    let seconds = last.duration_since(first).as_secs_f64().max(1e-9);
    let latency =
        Latency::from_ns(measured.histogram.as_ref().expect("recorded with the first measured batch"));
    let mut report = NetReport {
        scenario: scenario.clone(),
        server_shards: info.shards,
        transfers: measured.transfers,
        rejected: measured.rejected,
        cross_shard_measured: measured.cross_shard as f64 / measured.transfers.max(1) as f64,
        seconds,
        transfers_per_second: measured.transfers as f64 / seconds,
        p99_batch_ms: latency.p99_ms,
        batch_latency: latency,
        client_cpu_seconds,
        verified_transfers: None,
        batches: measured
            .batches
            .iter()
            .map(|&(sent, replied, transfers)| BatchSample {
                sent_ms: sent.saturating_duration_since(first).as_secs_f64() * 1e3,
                latency_ms: replied.duration_since(sent).as_secs_f64() * 1e3,
                transfers,
            })
            .collect(),
    };
    if let Some(before) = before {
        let ids = std::mem::take(&mut *shared.acked_ids.lock().expect("not poisoned"));
        report.verified_transfers =
            Some(verify(&clients[0], &ids, &scenario.account_ids(), before, scenario.batch).await?);
    }
    Ok(report)
}

#[derive(Default)]
struct Measured {
    histogram: Option<hdrhistogram::Histogram<u64>>,
    transfers: u64,
    rejected: u64,
    cross_shard: u64,
    first_sent: Option<Instant>,
    last_reply: Option<Instant>,
    /// With `trace`: (sent, replied, transfers) per measured batch.
    batches: Vec<(Instant, Instant, u32)>,
}

struct Shared {
    next_batch: AtomicU64,
    acked: AtomicU64,
    measured: Mutex<Measured>,
    /// With `--verify`: every acknowledged id.
    acked_ids: Mutex<Vec<u128>>,
}

struct Worker {
    client: Client,
    scenario: NetScenario,
    shards: u32,
    nonce: u128,
    shared: Arc<Shared>,
    total_batches: Option<u64>,
    deadline: Option<(Instant, Duration)>,
    seed: u64,
    progress: Arc<dyn Fn(u64) + Send + Sync>,
}

impl Worker {
    async fn run(self) -> anyhow::Result<()> {
        let pairs = self.scenario.zipf.map_or(Pairs::Uniform, |s| Pairs::Zipf { s });
        let mut source = PairSource::new(self.scenario.accounts, pairs, self.seed)?;
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(self.seed ^ 0x00c0_ffee);
        let shard = |id: u32| if self.shards <= 1 { 0 } else { shard_for(u128::from(id), self.shards) };
        let mut batch = Vec::with_capacity(self.scenario.batch as usize);
        loop {
            let index = self.shared.next_batch.fetch_add(1, Ordering::Relaxed);
            if self.total_batches.is_some_and(|total| index >= total) {
                return Ok(());
            }
            if let Some((started, limit)) = self.deadline {
                if index >= self.scenario.warmup && started.elapsed() >= limit {
                    return Ok(());
                }
            }
            batch.clear();
            let mut cross = 0u64;
            let [clearing, fees] = self.scenario.system_accounts();
            for i in 0..u64::from(self.scenario.batch) {
                let id = self.nonce << 64 | u128::from(index * u64::from(self.scenario.batch) + i);
                if self.scenario.hot > 0.0 && rng.random_bool(self.scenario.hot) {
                    let user = u128::from(source.account());
                    let (debit, credit) = if rng.random_bool(0.5) { (clearing, user) } else { (user, fees) };
                    let t = Transfer {
                        id,
                        debit_account_id: debit,
                        credit_account_id: credit,
                        amount: 1,
                        ledger: LEDGER,
                        code: 1,
                        ..Transfer::default()
                    };
                    if let TransferRoute::Shard(shard) = transfer_route(&t, self.shards) {
                        cross += u64::from(credit_peer(&t, shard, self.shards).is_some());
                    }
                    batch.push(t);
                    continue;
                }
                let debit = source.account();
                let want_cross = self.scenario.cross_shard.map(|x| self.shards > 1 && rng.random_bool(x));
                let credit = loop {
                    let credit = source.account();
                    if credit == debit {
                        continue;
                    }
                    match want_cross {
                        Some(want) if want != (shard(credit) != shard(debit)) => continue,
                        _ => break credit,
                    }
                };
                cross += u64::from(shard(credit) != shard(debit));
                batch.push(Transfer {
                    id,
                    debit_account_id: u128::from(debit),
                    credit_account_id: u128::from(credit),
                    amount: 1,
                    ledger: LEDGER,
                    code: 1,
                    ..Transfer::default()
                });
            }
            let sent = Instant::now();
            let results = self.client.create_transfers(&batch).await.context("create_transfers")?;
            let replied = Instant::now();
            // Ids are unique to this run, so `exists` means the client resent
            // a batch the server had applied (after a timeout or reconnect): applied once.
            let applied = |r: &CreateTransferResult| {
                *r == CreateTransferResult::Ok || *r == CreateTransferResult::Exists
            };
            let ok = results.iter().filter(|r| applied(r)).count() as u64;
            let acked =
                self.shared.acked.fetch_add(batch.len() as u64, Ordering::Relaxed) + batch.len() as u64;
            (self.progress)(acked);
            if self.scenario.verify {
                let mut ids = self.shared.acked_ids.lock().expect("not poisoned");
                ids.extend(batch.iter().zip(&results).filter(|(_, r)| applied(r)).map(|(t, _)| t.id));
            }
            if index < self.scenario.warmup {
                continue;
            }
            let mut measured = self.shared.measured.lock().expect("not poisoned");
            let histogram = measured.histogram.get_or_insert_with(latency_histogram);
            histogram.record(replied.duration_since(sent).as_nanos().max(1) as u64)?;
            measured.transfers += batch.len() as u64;
            measured.rejected += batch.len() as u64 - ok;
            measured.cross_shard += cross;
            measured.first_sent = Some(measured.first_sent.map_or(sent, |f| f.min(sent)));
            measured.last_reply = Some(measured.last_reply.map_or(replied, |l| l.max(replied)));
            if self.scenario.trace {
                measured.batches.push((sent, replied, batch.len() as u32));
            }
        }
    }
}

/// Creates the accounts `ids` (those that exist answer `exists`).
async fn create_accounts(client: &Client, ids: &[u128], batch: u32) -> anyhow::Result<()> {
    for chunk in ids.chunks(batch as usize) {
        let accounts: Vec<Account> =
            chunk.iter().map(|&id| Account { id, ledger: LEDGER, code: 1, ..Account::default() }).collect();
        for (account, result) in accounts.iter().zip(client.create_accounts(&accounts).await?) {
            ensure!(
                result == CreateAccountResult::Ok || result == CreateAccountResult::Exists,
                "account {}: {result}",
                account.id
            );
        }
    }
    Ok(())
}

/// (sum of debits_posted, sum of credits_posted) over the accounts `ids`
/// (a sharded account's parts summed by the server).
async fn ledger_totals(client: &Client, ids: &[u128], batch: u32) -> anyhow::Result<(u128, u128)> {
    let (mut debits, mut credits) = (0u128, 0u128);
    for chunk in ids.chunks(batch as usize) {
        let found = client.lookup_accounts(chunk).await?;
        ensure!(found.len() == chunk.len(), "{} of {} accounts found", found.len(), chunk.len());
        for account in found {
            debits += account.debits_posted;
            credits += account.credits_posted;
        }
    }
    Ok((debits, credits))
}

/// Every acknowledged transfer exists, and the accounts moved by exactly
/// what was acknowledged (1 unit per transfer), debits equal to credits.
async fn verify(
    client: &Client,
    ids: &[u128],
    accounts: &[u128],
    before: (u128, u128),
    batch: u32,
) -> anyhow::Result<u64> {
    let mut found = 0u64;
    for chunk in ids.chunks(batch as usize) {
        let got = client.lookup_transfers(chunk).await?;
        ensure!(got.len() == chunk.len(), "{} acknowledged transfers missing", chunk.len() - got.len());
        found += got.len() as u64;
    }
    let (debits, credits) = ledger_totals(client, accounts, batch).await?;
    ensure!(debits == credits, "debits {debits} != credits {credits}");
    let moved = debits - before.0;
    ensure!(
        moved == ids.len() as u128,
        "the accounts moved by {moved}, the acknowledged transfers by {} (another client running?)",
        ids.len()
    );
    Ok(found)
}
