//! `molly bench ...`: benchmark drivers from the `molly-bench` crate.

use std::path::PathBuf;

use anyhow::Context;
use molly_bench::engine::{run_lookups, run_transfers, standard_scenarios, Pairs, TransferScenario};
use molly_bench::report::Machine;

/// `molly bench`: with no subcommand, the protocol load generator.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    net: crate::cmd::bench_net::NetArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// The ledger engine in memory on one core: create_transfers over 10K and
    /// 1M accounts, uniform and Zipf pairs, then lookups.
    Engine(EngineArgs),
    /// Durable transfers through the pinned shard runtime, in process
    /// (1 and 2 shards by default), with batch latency percentiles.
    Shards(ShardsArgs),
    /// Time to derive and encode N deposit addresses per chain (`<chain>_seconds`).
    Wallets(crate::cmd::wallets::BenchArgs),
    /// ETH deposit watching: blocks/s filtered against N watched addresses, and
    /// mined-to-event latency against a local anvil (p50/p99).
    EthWatch(EthWatchArgs),
    /// ERC-20 and ETH sweeps of N deposit addresses on a local anvil: gas
    /// and fees per sweep and in total, before and after each optimisation.
    EthSweep(EthSweepArgs),
    /// Signer: signatures/s per backend (software, SoftHSM2) and IPC round trip.
    Signer {
        /// Write the figures as JSON to this file.
        #[arg(long)]
        json: Option<std::path::PathBuf>,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
    },
}

#[derive(Debug, clap::Args)]
pub struct EthWatchArgs {
    /// Watched addresses.
    #[arg(long, default_value_t = 1_000_000)]
    watched: u64,
    /// Synthetic blocks to filter.
    #[arg(long, default_value_t = 500)]
    blocks: u64,
    /// ERC-20 Transfer logs per block (a 60M-gas block holds ~1,700).
    #[arg(long, default_value_t = 1_500)]
    logs_per_block: u64,
    /// Deposits timed against anvil (0 skips the latency part).
    #[arg(long, default_value_t = 200)]
    deposits: u64,
    /// The anvil binary (default: $MOLLY_ANVIL, set by scripts/setup/anvil.sh).
    #[arg(long)]
    anvil: Option<PathBuf>,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn eth_watch(args: EthWatchArgs) -> anyhow::Result<()> {
    let config = molly_chain_eth::bench::BenchConfig {
        watched: args.watched,
        blocks: args.blocks,
        logs_per_block: args.logs_per_block,
        deposits: args.deposits,
        anvil: args.anvil.or_else(|| std::env::var_os("MOLLY_ANVIL").map(PathBuf::from)),
    };
    let report = molly_chain_eth::bench::run(&config)?;
    print_json(&report, args.json.as_deref())
}

#[derive(Debug, clap::Args)]
pub struct EthSweepArgs {
    /// Deposit addresses (of every 10: 8 hold 100 OZ, 1 holds 500 USD of the
    /// no-return token, 1 holds 0.01 OZ).
    #[arg(long, default_value_t = 100)]
    deposits: u64,
    /// Price paid per gas, gwei (fixed, so fees compare across scenarios).
    #[arg(long, default_value_t = 20)]
    gwei: u128,
    /// The anvil binary (default: $MOLLY_ANVIL, set by scripts/setup/anvil.sh).
    #[arg(long)]
    anvil: Option<PathBuf>,
    /// Compiled test contracts (default: $MOLLY_ETH_CONTRACTS, set by scripts/setup/eth-contracts.sh).
    #[arg(long)]
    contracts: Option<PathBuf>,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn eth_sweep(args: EthSweepArgs) -> anyhow::Result<()> {
    let config = molly_chain_eth::bench_sweep::SweepBenchConfig {
        deposits: args.deposits,
        gwei: args.gwei,
        anvil: args.anvil.or_else(|| std::env::var_os("MOLLY_ANVIL").map(PathBuf::from)),
        contracts: args.contracts.or_else(|| std::env::var_os("MOLLY_ETH_CONTRACTS").map(PathBuf::from)),
    };
    let report = molly_chain_eth::bench_sweep::run(&config)?;
    print_json(&report, args.json.as_deref())
}

#[derive(Debug, clap::Args)]
pub struct EngineArgs {
    /// Transfers per scenario.
    #[arg(long, default_value_t = 10_000_000)]
    transfers: u64,
    /// Events per batch.
    #[arg(long, default_value_t = 8190)]
    batch: u32,
    /// Run one custom scenario over this many accounts instead of the standard matrix.
    #[arg(long)]
    accounts: Option<u32>,
    /// With --accounts: Zipf exponent for hot-account pairs (default: uniform).
    #[arg(long, requires = "accounts")]
    zipf: Option<f64>,
    /// Lookups measured after the transfer scenarios (0 to skip).
    #[arg(long, default_value_t = 1_000_000)]
    lookups: u64,
    /// Workload seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Skip touching the engine's reserved memory before the run (to measure
    /// what first-touch page faults cost; see tuning/README.md).
    #[arg(long)]
    no_prefault: bool,
}

/// What a batch of `molly bench shards` is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum BatchShape {
    /// A client's batch over every shard, split by route.
    Client,
    /// One shard's batch.
    Shard,
}

#[derive(Debug, clap::Args)]
pub struct ShardsArgs {
    /// Shard counts to run, one run each (default: 1 and 2).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 2])]
    shards: Vec<usize>,
    /// Transfers per run.
    #[arg(long, default_value_t = 10_000_000)]
    transfers: u64,
    /// Accounts over all shards.
    #[arg(long, default_value_t = 100_000)]
    accounts: u32,
    /// Transfers per batch.
    #[arg(long, default_value_t = 8190)]
    batch: u32,
    /// Batches in flight at once (per shard with --batches shard; more
    /// raises throughput and latency: a group commit then carries several).
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// What a batch is. `client` (default): a client's batch as `molly
    /// serve` gets it over the protocol, transfers debiting users of every
    /// shard, split by route into one part per shard; --in-flight counts
    /// such batches, and a batch's latency runs until its last part is
    /// durable. `shard`: every batch debits one shard's users (shards take
    /// turns) and --in-flight counts batches per shard (the shape of runs
    /// recorded before 2026-12-02's seventh session).
    #[arg(long, value_enum, default_value_t = BatchShape::Client)]
    batches: BatchShape,
    /// Directory for the journals (a fresh subdirectory is made and removed).
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Do not pin shards to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Journal bytes between snapshots during the run (0: none; snapshots
    /// are incremental and written on a background thread).
    #[arg(long, default_value_t = 0)]
    snapshot_every_bytes: u64,
    /// Pace of the background snapshot writer in MiB/s (0: the device's full
    /// speed; as `[serve] snapshot_write_mib_per_s`).
    #[arg(long, default_value_t = molly_shards::runtime::SNAPSHOT_WRITE_BYTES_PER_S_DEFAULT >> 20)]
    snapshot_write_mib_per_s: u64,
    /// Pace in MiB/s of the thread that writes each shard's next journal
    /// file full of zeros ahead of use (0: no preallocation; as `[serve]
    /// journal_prealloc_mib_per_s`).
    #[arg(long, default_value_t = molly_shards::runtime::JOURNAL_PREALLOC_BYTES_PER_S_DEFAULT >> 20)]
    journal_prealloc_mib_per_s: u64,
    /// How long a group of settles only waits for the next batch to share
    /// its commit, in microseconds (0: written at once; as `[serve]
    /// settle_linger_us`).
    #[arg(long, default_value_t = molly_shards::runtime::SETTLE_LINGER_DEFAULT.as_micros() as u64)]
    settle_linger_us: u64,
    /// How long a shard spins before parking in the kernel, microseconds
    /// (0: parks at once; as `[serve] spin_before_park_us`).
    #[arg(long, default_value_t = 0)]
    spin_before_park_us: u64,
    /// Fraction of transfers whose credit account is on another shard
    /// (two-phase between shards; no effect with one shard). The default
    /// (10%) is this benchmark's standard shape; `0` keeps every transfer on one shard.
    #[arg(long, default_value_t = 0.1)]
    cross_shard: f64,
    /// Fraction of transfers between a user and a system account (half
    /// deposits from a clearing account, half fees to a fee account); the
    /// system accounts are sharded (a part on every shard) unless --hot-plain.
    #[arg(long, default_value_t = 0.0)]
    hot: f64,
    /// Make the system accounts of --hot plain accounts (one shard each), to
    /// compare with sharded ones.
    #[arg(long)]
    hot_plain: bool,
    /// Write the figures as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn shards(args: ShardsArgs) -> anyhow::Result<()> {
    let machine = Machine::detect();
    println!(
        "molly bench shards: {} transfers per run, {} accounts, batch {}{}, {} in flight{}, journals in {} ({} cpus)",
        args.transfers,
        args.accounts,
        args.batch,
        if args.batches == BatchShape::Client { " (clients', split by shard)" } else { " (one shard's each)" },
        args.in_flight,
        if args.batches == BatchShape::Client { "" } else { " per shard" },
        args.data_dir.display(),
        machine.cpus
    );
    let mut reports = Vec::new();
    for &shards in &args.shards {
        let scenario = molly_bench::shards::ShardScenario {
            shards,
            accounts: args.accounts,
            transfers: args.transfers,
            batch: args.batch,
            in_flight: args.in_flight,
            split: args.batches == BatchShape::Client,
            data_dir: args.data_dir.clone(),
            pin: !args.no_pin,
            seed: 1,
            snapshot_every_bytes: args.snapshot_every_bytes,
            snapshot_write_bytes_per_s: args.snapshot_write_mib_per_s.saturating_mul(1 << 20),
            journal_prealloc_bytes_per_s: args.journal_prealloc_mib_per_s.saturating_mul(1 << 20),
            settle_linger_us: args.settle_linger_us,
            spin_before_park_us: args.spin_before_park_us,
            cross_shard: args.cross_shard,
            hot: args.hot,
            hot_plain: args.hot_plain,
        };
        let name = format!("{shards}-shard{}", if shards == 1 { "" } else { "s" });
        let bar = progress_bar(args.transfers, &name);
        let report = molly_bench::shards::run(&scenario, |done| bar.set_position(done))?;
        bar.finish_and_clear();
        println!(
            "{name:>14}: {:>10.0} durable transfers/s  {:.0} per CPU-s  {:.1}% cross-shard  batch p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms  {:.1} batches/fsync{}",
            report.transfers_per_second,
            report.transfers_per_cpu_second,
            100.0 * report.cross_shard_transfers as f64 / report.transfers.max(1) as f64,
            report.batch_latency.p50_ms,
            report.batch_latency.p99_ms,
            report.batch_latency.p999_ms,
            report.batch_latency.max_ms,
            report.batches_per_group,
            if report.rejected > 0 { format!("  ({} REJECTED)", report.rejected) } else { String::new() },
        );
        reports.push(report);
    }
    if let Some(path) = args.json {
        let best = reports.last().map_or(0.0, |r| r.transfers_per_second);
        let p99 = reports.last().map_or(0.0, |r| r.batch_latency.p99_ms);
        let json = serde_json::json!({
            "benchmark": "shards",
            "transfers_per_second": best,
            "p99_batch_ms": p99,
            "headline": "the run with the most shards",
            "runs": reports,
            "machine": machine,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    let Some(command) = args.command else {
        return crate::cmd::bench_net::run(args.net);
    };
    match command {
        Command::Engine(args) => engine(args),
        Command::Shards(args) => shards(args),
        Command::Wallets(args) => crate::cmd::wallets::bench(args),
        Command::EthWatch(args) => eth_watch(args),
        Command::EthSweep(args) => eth_sweep(args),
        Command::Signer { json, seconds } => {
            let report = molly_hsm_bridge::bench::run(seconds)?;
            print_json(&report, json.as_deref())
        }
    }
}

/// Prints a report as JSON, and writes it to `path` when given.
fn print_json(report: &impl serde::Serialize, path: Option<&std::path::Path>) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    println!("{text}");
    if let Some(path) = path {
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

pub(crate) fn progress_bar(total: u64, name: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix:>14} [{bar:40}] {pos}/{len} transfers ({per_sec})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(name.to_string());
    bar
}

fn engine(args: EngineArgs) -> anyhow::Result<()> {
    let scenarios = match args.accounts {
        Some(accounts) => vec![TransferScenario {
            name: "custom".into(),
            accounts,
            transfers: args.transfers,
            batch: args.batch,
            pairs: args.zipf.map_or(Pairs::Uniform, |s| Pairs::Zipf { s }),
            seed: args.seed,
            prefault: !args.no_prefault,
        }],
        None => standard_scenarios(args.transfers, args.batch, args.seed, !args.no_prefault),
    };
    let machine = Machine::detect();
    println!(
        "molly bench engine: {} scenario(s), {} transfers each, batch {}, one core ({}, {} cpus{})",
        scenarios.len(),
        args.transfers,
        args.batch,
        machine.cpu_model,
        machine.cpus,
        if machine.optimized { "" } else { ", UNOPTIMISED debug build" }
    );
    let mut reports = Vec::new();
    for scenario in &scenarios {
        let bar = progress_bar(scenario.transfers, &scenario.name);
        let report = run_transfers(scenario, |done| bar.set_position(done))?;
        bar.finish_and_clear();
        println!(
            "{:>14}: {:>10.0} transfers/s ({:.0}/cpu-s)  batch p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms  hottest account in {:.1}% of transfers{}",
            scenario.name,
            report.transfers_per_second,
            report.transfers_per_cpu_second,
            report.batch_latency.p50_ms,
            report.batch_latency.p99_ms,
            report.batch_latency.max_ms,
            report.hottest_account_share * 100.0,
            if report.rejected > 0 { format!("  ({} REJECTED)", report.rejected) } else { String::new() },
        );
        reports.push(report);
    }
    let lookups = if args.lookups > 0 {
        let accounts = args.accounts.unwrap_or(10_000);
        let report = run_lookups(accounts, args.transfers, args.batch, args.lookups, args.seed)?;
        println!(
            "{:>14}: {:>12.0} account lookups/s  {:.0} transfer lookups/s (over {} transfers)",
            "lookups",
            report.account_lookups_per_second,
            report.transfer_lookups_per_second,
            report.transfers
        );
        Some(report)
    } else {
        None
    };
    if let Some(path) = args.json {
        let headline = reports.first().map_or(0.0, |r| r.transfers_per_second);
        let json = serde_json::json!({
            "benchmark": "engine",
            "transfers_per_second": headline,
            "headline_scenario": reports.first().map(|r| r.scenario.name.clone()),
            "scenarios": reports,
            "lookups": lookups,
            "machine": machine,
        });
        std::fs::write(&path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
