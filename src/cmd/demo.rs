//! `molly demo`: the in-memory engine demo.

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    Ok(())
}
