//! `molly bench ...`: benchmark drivers from the `molly-bench` crate.

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Time to derive and encode N deposit addresses per chain (`<chain>_seconds`).
    Wallets(crate::cmd::wallets::BenchArgs),
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Wallets(args) => crate::cmd::wallets::bench(args),
    }
}
