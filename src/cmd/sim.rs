//! `molly sim`: the deterministic simulator (first version: one shard's real
//! core, engine and journal on a simulated disk and clock; see
//! `molly_shards::sim`).

use std::time::Instant;

use anyhow::{bail, Context};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run one seed (replays a run exactly).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run a sweep of seeds, `A..B` (B excluded).
    #[arg(long)]
    seeds: Option<String>,
    /// Steps per seed.
    #[arg(long, default_value_t = 2_000)]
    steps: u64,
}

fn parse_range(text: &str) -> anyhow::Result<std::ops::Range<u64>> {
    let (a, b) = text.split_once("..").context("--seeds takes A..B")?;
    let range =
        a.trim().parse::<u64>().context("--seeds start")?..b.trim().parse::<u64>().context("--seeds end")?;
    if range.is_empty() {
        bail!("--seeds {text} is empty");
    }
    Ok(range)
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(seed) = args.seed {
        let started = Instant::now();
        let report = molly_shards::sim::run(seed, args.steps);
        println!(
            "seed {seed}: {} steps, {} crashes, {} failed writes, {} groups acknowledged, {} transfers ok ({:.0} steps/s)",
            report.steps,
            report.crashes,
            report.failed_writes,
            report.groups_acknowledged,
            report.transfers_ok,
            report.steps as f64 / started.elapsed().as_secs_f64()
        );
        return match report.violation {
            None => Ok(()),
            Some(violation) => bail!("seed {seed}: {violation}"),
        };
    }
    let range = parse_range(args.seeds.as_deref().unwrap_or("1..101"))?;
    let total = range.end - range.start;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("[{bar:40}] {pos}/{len} seeds ({per_sec}) {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let started = Instant::now();
    let mut failures: Vec<(u64, String)> = Vec::new();
    let (mut steps, mut crashes) = (0u64, 0u64);
    for seed in range.clone() {
        let report = molly_shards::sim::run(seed, args.steps);
        steps += report.steps;
        crashes += report.crashes;
        if let Some(violation) = report.violation {
            failures.push((seed, violation));
            bar.set_message(format!("{} failing", failures.len()));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "seeds {}..{}: {} clean, {} failing; {steps} steps, {crashes} crashes in {seconds:.1} s ({:.0} seeds/s, {:.0} steps/s)",
        range.start,
        range.end,
        total - failures.len() as u64,
        failures.len(),
        total as f64 / seconds,
        steps as f64 / seconds
    );
    for (seed, violation) in &failures {
        println!("  seed {seed}: {violation}   (replay: molly sim --seed {seed} --steps {})", args.steps);
    }
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{} of {total} seeds violated an invariant", failures.len())
    }
}
