//! Criterion micro-benchmarks of the engine's hot paths: create_transfers in
//! batches of 8190 (10K and 1M accounts, uniform and Zipf pairs) and
//! lookups. `cargo bench -p molly-bench --bench engine`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use molly_engine::{Config, Engine, Transfer};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Zipf};
use rand_xoshiro::Xoshiro256PlusPlus;

const BATCH: usize = 8190;
/// Transfers an engine takes before the bench starts a fresh one (untimed).
const TRANSFERS_PER_ENGINE: u32 = 4_000_000;

fn engine(accounts: u32) -> Engine {
    let mut engine = Engine::new(Config {
        accounts_max: accounts,
        transfers_max: TRANSFERS_PER_ENGINE,
        ..Config::default()
    })
    .unwrap();
    engine.prefault();
    molly_bench::engine::create_accounts(&mut engine, accounts, BATCH as u32).unwrap();
    engine
}

fn create_transfers(c: &mut Criterion) {
    let mut group = c.benchmark_group("create_transfers");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(5));
    for accounts in [10_000u32, 1_000_000] {
        for zipf in [None, Some(1.0)] {
            let name =
                format!("{accounts}-accounts-{}", zipf.map_or("uniform".into(), |s| format!("zipf{s}")));
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
                let distribution = zipf.map(|s| Zipf::new(f64::from(accounts), s).unwrap());
                let pick = move |rng: &mut Xoshiro256PlusPlus| match &distribution {
                    None => rng.random_range(1..=accounts),
                    Some(d) => (d.sample(rng) as u32).clamp(1, accounts),
                };
                let mut engine = engine(accounts);
                let mut next_id = 1u128;
                let mut batch = Vec::with_capacity(BATCH);
                let mut results = Vec::with_capacity(BATCH);
                b.iter_custom(|iterations| {
                    let mut elapsed = Duration::ZERO;
                    for _ in 0..iterations {
                        if engine.transfers().len() + BATCH > TRANSFERS_PER_ENGINE as usize {
                            engine = self::engine(accounts);
                        }
                        batch.clear();
                        for _ in 0..BATCH {
                            let debit = pick(&mut rng);
                            let mut credit = pick(&mut rng);
                            while credit == debit {
                                credit = pick(&mut rng);
                            }
                            batch.push(Transfer {
                                id: next_id,
                                debit_account_id: u128::from(debit),
                                credit_account_id: u128::from(credit),
                                amount: 1,
                                ledger: 1,
                                code: 1,
                                ..Transfer::default()
                            });
                            next_id += 1;
                        }
                        let start = Instant::now();
                        engine.create_transfers(black_box(&batch), &mut results).unwrap();
                        elapsed += start.elapsed();
                        assert!(results.iter().all(|r| r.is_ok()));
                    }
                    elapsed
                });
            });
        }
    }
    group.finish();
}

fn lookups(c: &mut Criterion) {
    let accounts = 10_000u32;
    let mut engine = engine(accounts);
    let transfers = 1_000_000u32;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
    let mut results = Vec::new();
    for start in (1..=transfers).step_by(BATCH) {
        let batch: Vec<Transfer> = (start..(start + BATCH as u32).min(transfers + 1))
            .map(|id| {
                let debit = rng.random_range(1..accounts);
                Transfer {
                    id: u128::from(id),
                    debit_account_id: u128::from(debit),
                    credit_account_id: u128::from(debit + 1),
                    amount: 1,
                    ledger: 1,
                    code: 1,
                    ..Transfer::default()
                }
            })
            .collect();
        engine.create_transfers(&batch, &mut results).unwrap();
    }
    let account_ids: Vec<u128> = (0..BATCH).map(|_| u128::from(rng.random_range(1..=accounts))).collect();
    let transfer_ids: Vec<u128> = (0..BATCH).map(|_| u128::from(rng.random_range(1..=transfers))).collect();
    let mut group = c.benchmark_group("lookup");
    group.throughput(Throughput::Elements(BATCH as u64));
    let mut out_accounts = Vec::with_capacity(BATCH);
    group.bench_function("accounts-8190-of-10k", |b| {
        b.iter(|| {
            out_accounts.clear();
            engine.lookup_accounts(black_box(&account_ids), &mut out_accounts).unwrap();
        })
    });
    let mut out_transfers = Vec::with_capacity(BATCH);
    group.bench_function("transfers-8190-of-1m", |b| {
        b.iter(|| {
            out_transfers.clear();
            engine.lookup_transfers(black_box(&transfer_ids), &mut out_transfers).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, create_transfers, lookups);
criterion_main!(benches);
