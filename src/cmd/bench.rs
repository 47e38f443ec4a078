//! `molly bench ...`: benchmark drivers from the `molly-bench` crate.

#[derive(Debug, clap::Subcommand)]
pub enum Command {}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {}
}
