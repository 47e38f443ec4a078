//! `molly`: the one binary. Each subcommand lives in its own module under
//! `src/cmd/`; this file only parses the command line and dispatches.

use clap::{Parser, Subcommand};

mod cmd;

// mimalloc is Molly's allocator: the engine allocates in bulk at start-up, but
// the edges (CLI, benches, future network code) allocate freely.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "molly", version, about = "Molly: a self-hosted, multi-chain crypto payment gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: one pinned shard per core, durable journals, metrics.
    Serve(cmd::serve::Args),
    /// Deterministic simulation: `molly sim --seed N` or `--seeds A..B`.
    Sim(cmd::sim::Args),
    /// Run the in-memory ledger demo: create accounts, move money, print balances.
    Demo(cmd::demo::Args),
    /// Benchmarks: `molly bench [flags]` drives a server over the protocol;
    /// `molly bench engine|shards|...` measure one layer.
    Bench(Box<cmd::bench::BenchArgs>),
    /// Chain keys and addresses (`molly wallets derive|xpub|validate|generate`).
    #[command(subcommand)]
    Wallets(cmd::wallets::Command),
    /// The isolated signer process and its tools (`molly signer serve`, ...).
    #[command(subcommand)]
    Signer(cmd::signer::Command),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => cmd::serve::run(args),
        Command::Sim(args) => cmd::sim::run(args),
        Command::Demo(args) => cmd::demo::run(args),
        Command::Bench(args) => cmd::bench::run(*args),
        Command::Wallets(command) => cmd::wallets::run(command),
        Command::Signer(command) => cmd::signer::run(command),
    }
}
