//! `molly bench engine`: the ledger engine in memory, on one core.
//!
//! Each scenario creates its accounts, then submits `transfers` transfers in
//! batches of `batch` between account pairs drawn uniformly or from a Zipf
//! distribution (hot accounts). Batches are generated outside the timed
//! region; only `create_transfers` is timed, batch by batch.

use std::time::Instant;

use anyhow::{bail, ensure, Context};
use molly_engine::{Account, AccountFlags, Config, Engine, Transfer};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use rand_xoshiro::Xoshiro256PlusPlus;
use serde::Serialize;

use crate::report::{latency_histogram, thread_cpu_ns, Latency};

/// How account pairs are drawn.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Pairs {
    /// Every account equally likely.
    Uniform,
    /// Zipf with exponent `s` over account ranks: a few hot accounts take
    /// most transfers (s = 1.0: the hottest account is in ~10% of transfers
    /// over 10K accounts).
    Zipf {
        /// The exponent.
        s: f64,
    },
}

/// One create_transfers scenario.
#[derive(Clone, Debug, Serialize)]
pub struct TransferScenario {
    /// A short name for reports.
    pub name: String,
    /// Accounts created first.
    pub accounts: u32,
    /// Transfers submitted.
    pub transfers: u64,
    /// Events per batch.
    pub batch: u32,
    /// Pair distribution.
    pub pairs: Pairs,
    /// PRNG seed: the same seed gives the same workload.
    pub seed: u64,
    /// Touch the engine's reserved memory before the timed run, as a server
    /// does at start-up.
    pub prefault: bool,
}

/// The figures of one scenario.
#[derive(Clone, Debug, Serialize)]
pub struct TransferReport {
    /// The scenario.
    pub scenario: TransferScenario,
    /// Transfers submitted.
    pub transfers: u64,
    /// Transfers not `ok` (0 expected: a non-zero figure means a broken workload).
    pub rejected: u64,
    /// Seconds inside `create_transfers`, summed over batches.
    pub engine_seconds: f64,
    /// transfers / engine_seconds.
    pub transfers_per_second: f64,
    /// CPU seconds the engine thread spent inside `create_transfers`.
    pub engine_cpu_seconds: f64,
    /// transfers / engine_cpu_seconds: the figure to compare on a busy machine.
    pub transfers_per_cpu_second: f64,
    /// Per-batch latency.
    pub batch_latency: Latency,
    /// Share of transfers touching the hottest account.
    pub hottest_account_share: f64,
}

/// Account ids are 1..=accounts; ledger 1 (ETH), code 1, no balance limits
/// (the common ledger benchmark shape).
pub fn create_accounts(engine: &mut Engine, accounts: u32, batch: u32) -> anyhow::Result<()> {
    let mut results = Vec::new();
    let mut next = 1u32;
    while next <= accounts {
        let end = next.saturating_add(batch - 1).min(accounts);
        let events: Vec<Account> = (next..=end)
            .map(|id| Account {
                id: u128::from(id),
                ledger: 1,
                code: 1,
                flags: AccountFlags::NONE,
                ..Account::default()
            })
            .collect();
        engine.create_accounts(&events, &mut results)?;
        if let Some((i, r)) = results.iter().enumerate().find(|(_, r)| !r.is_ok()) {
            bail!("account {} not created: {r}", u32::try_from(i).unwrap_or(0) + next);
        }
        next = end + 1;
    }
    Ok(())
}

/// Draws account pairs for a scenario.
pub(crate) struct PairSource {
    rng: Xoshiro256PlusPlus,
    accounts: u32,
    zipf: Option<Zipf<f64>>,
    /// Random permutation of ranks so the hot accounts are spread over ids.
    rank_to_id: Vec<u32>,
}

impl PairSource {
    pub(crate) fn new(accounts: u32, pairs: Pairs, seed: u64) -> anyhow::Result<Self> {
        ensure!(accounts >= 2, "need at least 2 accounts");
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let zipf = match pairs {
            Pairs::Uniform => None,
            Pairs::Zipf { s } => Some(Zipf::new(f64::from(accounts), s).context("zipf parameters")?),
        };
        let mut rank_to_id: Vec<u32> = (1..=accounts).collect();
        for i in (1..rank_to_id.len()).rev() {
            let j = rng.random_range(0..=i);
            rank_to_id.swap(i, j);
        }
        Ok(Self { rng, accounts, zipf, rank_to_id })
    }

    pub(crate) fn account(&mut self) -> u32 {
        match &self.zipf {
            None => self.rng.random_range(1..=self.accounts),
            Some(zipf) => {
                let rank = zipf.sample(&mut self.rng) as u32; // 1..=accounts
                self.rank_to_id[(rank.clamp(1, self.accounts) - 1) as usize]
            }
        }
    }

    fn pair(&mut self) -> (u32, u32) {
        let debit = self.account();
        loop {
            let credit = self.account();
            if credit != debit {
                return (debit, credit);
            }
        }
    }
}

/// An engine sized for a scenario.
fn engine_for(accounts: u32, transfers: u64, batch: u32, prefault: bool) -> anyhow::Result<Engine> {
    let transfers_max =
        u32::try_from(transfers.max(1)).context("at most u32::MAX - 1 transfers per scenario")?;
    let mut engine = Engine::new(Config {
        batch_events_max: batch,
        accounts_max: accounts,
        transfers_max,
        ..Config::default()
    })?;
    // As a server does at start-up: fault in the memory reserved for the
    // limits, so the measurement is of the engine, not of first page touches.
    if prefault {
        engine.prefault();
    }
    Ok(engine)
}

/// Runs one scenario; `progress` is called with the transfers done so far.
pub fn run_transfers(
    scenario: &TransferScenario,
    mut progress: impl FnMut(u64),
) -> anyhow::Result<TransferReport> {
    ensure!(scenario.batch >= 1, "batch must be at least 1");
    let mut engine = engine_for(scenario.accounts, scenario.transfers, scenario.batch, scenario.prefault)?;
    create_accounts(&mut engine, scenario.accounts, scenario.batch)?;
    let mut source = PairSource::new(scenario.accounts, scenario.pairs, scenario.seed)?;
    let mut touches = vec![0u64; scenario.accounts as usize + 1];
    let mut histogram = latency_histogram();
    let mut batch: Vec<Transfer> = Vec::with_capacity(scenario.batch as usize);
    let mut results = Vec::with_capacity(scenario.batch as usize);
    let mut done = 0u64;
    let mut rejected = 0u64;
    let mut engine_ns = 0u128;
    let mut engine_cpu_ns = 0u128;
    while done < scenario.transfers {
        let size = (scenario.transfers - done).min(u64::from(scenario.batch));
        batch.clear();
        for i in 0..size {
            let (debit, credit) = source.pair();
            touches[debit as usize] += 1;
            touches[credit as usize] += 1;
            batch.push(Transfer {
                id: u128::from(done + i + 1),
                debit_account_id: u128::from(debit),
                credit_account_id: u128::from(credit),
                amount: 1 + u128::from(done + i) % 1000,
                ledger: 1,
                code: 1,
                ..Transfer::default()
            });
        }
        let cpu_start = thread_cpu_ns();
        let start = Instant::now();
        engine.create_transfers(&batch, &mut results)?;
        let elapsed = start.elapsed().as_nanos();
        engine_cpu_ns += thread_cpu_ns() - cpu_start;
        engine_ns += elapsed;
        histogram.record(u64::try_from(elapsed).unwrap_or(u64::MAX).max(1))?;
        rejected += results.iter().filter(|r| !r.is_ok()).count() as u64;
        done += size;
        progress(done);
    }
    engine.check_invariants().map_err(|v| anyhow::anyhow!("invariant broken after the run: {v}"))?;
    let engine_seconds = engine_ns as f64 / 1e9;
    let hottest = touches.iter().max().copied().unwrap_or(0);
    Ok(TransferReport {
        scenario: scenario.clone(),
        transfers: done,
        rejected,
        engine_seconds,
        transfers_per_second: done as f64 / engine_seconds,
        engine_cpu_seconds: engine_cpu_ns as f64 / 1e9,
        transfers_per_cpu_second: done as f64 / (engine_cpu_ns as f64 / 1e9),
        batch_latency: Latency::from_ns(&histogram),
        hottest_account_share: hottest as f64 / done.max(1) as f64,
    })
}

/// Lookup figures.
#[derive(Clone, Debug, Serialize)]
pub struct LookupReport {
    /// Accounts in the engine.
    pub accounts: u32,
    /// Transfers in the engine.
    pub transfers: u64,
    /// Ids per lookup batch.
    pub batch: u32,
    /// Account lookups per second.
    pub account_lookups_per_second: f64,
    /// Transfer lookups per second.
    pub transfer_lookups_per_second: f64,
    /// Per-batch latency of transfer lookups.
    pub transfer_lookup_batch_latency: Latency,
}

/// Fills an engine with `transfers` uniform transfers, then looks up
/// `lookups` random accounts and transfers in batches.
pub fn run_lookups(
    accounts: u32,
    transfers: u64,
    batch: u32,
    lookups: u64,
    seed: u64,
) -> anyhow::Result<LookupReport> {
    let mut engine = engine_for(accounts, transfers, batch, true)?;
    create_accounts(&mut engine, accounts, batch)?;
    let mut source = PairSource::new(accounts, Pairs::Uniform, seed)?;
    let mut results = Vec::new();
    let mut done = 0u64;
    let mut events = Vec::with_capacity(batch as usize);
    while done < transfers {
        events.clear();
        let size = (transfers - done).min(u64::from(batch));
        for i in 0..size {
            let (debit, credit) = source.pair();
            events.push(Transfer {
                id: u128::from(done + i + 1),
                debit_account_id: u128::from(debit),
                credit_account_id: u128::from(credit),
                amount: 1,
                ledger: 1,
                code: 1,
                ..Transfer::default()
            });
        }
        engine.create_transfers(&events, &mut results)?;
        ensure!(results.iter().all(|r| r.is_ok()), "lookup setup rejected a transfer");
        done += size;
    }
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x5eed);
    let mut ids = Vec::with_capacity(batch as usize);
    let mut found_accounts = Vec::with_capacity(batch as usize);
    let mut found_transfers = Vec::with_capacity(batch as usize);
    let mut histogram = latency_histogram();
    let (mut account_ns, mut transfer_ns) = (0u128, 0u128);
    let mut looked_up = 0u64;
    while looked_up < lookups {
        let size = (lookups - looked_up).min(u64::from(batch));
        ids.clear();
        ids.extend((0..size).map(|_| u128::from(rng.random_range(1..=accounts))));
        found_accounts.clear();
        let start = Instant::now();
        engine.lookup_accounts(&ids, &mut found_accounts)?;
        account_ns += start.elapsed().as_nanos();
        ensure!(found_accounts.len() == ids.len(), "account lookup missed");

        ids.clear();
        ids.extend((0..size).map(|_| u128::from(rng.random_range(1..=transfers))));
        found_transfers.clear();
        let start = Instant::now();
        engine.lookup_transfers(&ids, &mut found_transfers)?;
        let elapsed = start.elapsed().as_nanos();
        transfer_ns += elapsed;
        histogram.record(u64::try_from(elapsed).unwrap_or(u64::MAX).max(1))?;
        ensure!(found_transfers.len() == ids.len(), "transfer lookup missed");
        looked_up += size;
    }
    Ok(LookupReport {
        accounts,
        transfers,
        batch,
        account_lookups_per_second: lookups as f64 / (account_ns as f64 / 1e9),
        transfer_lookups_per_second: lookups as f64 / (transfer_ns as f64 / 1e9),
        transfer_lookup_batch_latency: Latency::from_ns(&histogram),
    })
}

/// The standard matrix: 10K and 1M accounts, uniform and Zipf(1.0) pairs.
pub fn standard_scenarios(transfers: u64, batch: u32, seed: u64, prefault: bool) -> Vec<TransferScenario> {
    let mut scenarios = Vec::new();
    for (accounts, label) in [(10_000u32, "10k"), (1_000_000, "1m")] {
        for (pairs, kind) in [(Pairs::Uniform, "uniform"), (Pairs::Zipf { s: 1.0 }, "zipf1.0")] {
            scenarios.push(TransferScenario {
                name: format!("{kind}-{label}"),
                accounts,
                transfers,
                batch,
                pairs,
                seed,
                prefault,
            });
        }
    }
    scenarios
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_pairs_are_skewed_and_uniform_pairs_are_not() {
        let run = |pairs| {
            run_transfers(
                &TransferScenario {
                    name: "t".into(),
                    accounts: 1000,
                    transfers: 20_000,
                    batch: 1000,
                    pairs,
                    seed: 1,
                    prefault: false,
                },
                |_| {},
            )
            .unwrap()
        };
        let uniform = run(Pairs::Uniform);
        let zipf = run(Pairs::Zipf { s: 1.0 });
        assert_eq!((uniform.rejected, zipf.rejected), (0, 0));
        // Uniform: each account is in ~0.2% of transfers; Zipf(1.0) over 1000 ranks: the top one in ~13%.
        assert!(uniform.hottest_account_share < 0.01, "{}", uniform.hottest_account_share);
        assert!(zipf.hottest_account_share > 0.08, "{}", zipf.hottest_account_share);
    }

    #[test]
    fn the_same_seed_gives_the_same_workload() {
        let mut a = PairSource::new(50, Pairs::Zipf { s: 0.8 }, 42).unwrap();
        let mut b = PairSource::new(50, Pairs::Zipf { s: 0.8 }, 42).unwrap();
        let pairs_a: Vec<_> = (0..100).map(|_| a.pair()).collect();
        let pairs_b: Vec<_> = (0..100).map(|_| b.pair()).collect();
        assert_eq!(pairs_a, pairs_b);
        assert!(pairs_a.iter().all(|(d, c)| d != c && (1..=50).contains(d) && (1..=50).contains(c)));
    }

    #[test]
    fn lookups_find_everything() {
        let report = run_lookups(100, 5000, 512, 2000, 3).unwrap();
        assert!(report.account_lookups_per_second > 0.0);
    }
}
