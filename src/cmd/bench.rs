//! `molly bench ...`: benchmark drivers from the `molly-bench` crate.

#[derive(Debug, clap::Subcommand)]
pub enum Command {
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

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Signer { json, seconds } => {
            let report = molly_hsm_bridge::bench::run(seconds)?;
            let text = serde_json::to_string_pretty(&report)?;
            println!("{text}");
            if let Some(path) = json {
                std::fs::write(&path, text + "\n")?;
            }
            Ok(())
        }
    }
}
