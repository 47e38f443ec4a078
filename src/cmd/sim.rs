//! `molly sim`: the deterministic simulator (one to three shards' real
//! cores, engine, cross-shard protocol and journal on simulated disks, clock
//! and rings; see `molly_shards::sim` and docs/simulation.md).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};
use molly_shards::sim::{self, Options};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Run one seed (replays a run exactly).
    #[arg(long, conflicts_with = "seeds")]
    seed: Option<u64>,
    /// Run a sweep of seeds, `A..B` (B excluded).
    #[arg(long)]
    seeds: Option<String>,
    /// Steps per seed (then faults stop and everything must settle).
    #[arg(long, default_value_t = 2_000)]
    steps: u64,
    /// Shards, 1 to 3 (default: `1 + seed % 3`; one shard also checks every
    /// result against the reference model).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(sim::SHARDS_MAX)))]
    shards: Option<u32>,
    /// Through the network: simulated clients send protocol frames over
    /// simulated connections (delays, cuts, retries, bad frames) to the
    /// server's request handling in front of the shards (`molly_net::sim`).
    #[arg(long)]
    net: bool,
}

/// One seed, in the mode chosen: (report of the shard world, network figures if through the network).
fn run_one(seed: u64, args: &Args) -> (sim::SimReport, Option<molly_net::sim::NetReport>) {
    let options = Options { seed, steps: args.steps, shards: args.shards };
    if args.net {
        let mut net = molly_net::sim::run(options);
        (std::mem::take(&mut net.world), Some(net))
    } else {
        (sim::run_with(options), None)
    }
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

fn replay(seed: u64, args: &Args) -> String {
    let net = if args.net { " --net" } else { "" };
    match args.shards {
        Some(shards) => format!("molly sim{net} --seed {seed} --steps {} --shards {shards}", args.steps),
        None => format!("molly sim{net} --seed {seed} --steps {}", args.steps),
    }
}

/// The seed running now, for the panic hook.
static SEED_RUNNING: AtomicU64 = AtomicU64::new(0);

/// An assertion inside production code is a finding like any other, but the
/// release build aborts on panic: name the seed before it does.
fn name_the_seed_on_panic(args: &Args) {
    let (steps, shards, net) = (args.steps, args.shards, args.net);
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        let seed = SEED_RUNNING.load(Ordering::Relaxed);
        let shards = shards.map(|n| format!(" --shards {n}")).unwrap_or_default();
        let net = if net { " --net" } else { "" };
        eprintln!("seed {seed} panicked; replay: molly sim{net} --seed {seed} --steps {steps}{shards}");
    }));
}

pub fn run(args: Args) -> anyhow::Result<()> {
    name_the_seed_on_panic(&args);
    if let Some(seed) = args.seed {
        let started = Instant::now();
        SEED_RUNNING.store(seed, Ordering::Relaxed);
        let (report, net) = run_one(seed, &args);
        println!(
            "seed {seed}: {} shard(s), {} steps, {} crashes, {} failed writes, {} read errors, {} bits flipped, \
             {} groups acknowledged, \
             {} snapshot files written ({} cut or failed, {} loaded at restarts, {} skipped as damaged, \
             {} blocks evicted to segments, {} journal files deleted), {} bits flipped at rest in the journal ({} refused), \
             {} transfers ok, {} results checked against the model ({} of them across shards; {} naming a \
             sharded account, {} moves between parts, {} of them ok), {} lookups deferred until a settle was applied, {} messages delivered, {} faults injected inside production code{} ({:.0} steps/s)",
            report.shards,
            report.steps,
            report.crashes,
            report.failed_writes,
            report.read_errors,
            report.bits_flipped,
            report.groups_acknowledged,
            report.snapshots_written,
            report.snapshots_failed,
            report.snapshots_loaded,
            report.snapshots_skipped,
            report.blocks_evicted,
            report.journal_files_deleted,
            report.journal_flips,
            report.journal_flips_refused,
            report.transfers_ok,
            report.events_checked,
            report.events_checked_cross,
            report.events_checked_sharded,
            report.moves_checked,
            report.moves_ok,
            report.reads_deferred,
            report.messages_delivered,
            report.faults_injected,
            if molly_shards::buggify::COMPILED { "" } else { " (built without --features sim)" },
            report.steps as f64 / started.elapsed().as_secs_f64()
        );
        if let Some(net) = net {
            println!(
                "  network: {} requests, {} frames sent ({} re-sent), {} replies ({} shard_unavailable), {} \
                 connections ({} cut, {} timed out, {} refused at connections_max), {} bad frames ({} error \
                 frames checked), {} events checked against the ledger, {} full inboxes met, {} drains ({} \
                 replies shutting_down)",
                net.requests,
                net.frames_sent,
                net.resent,
                net.replies,
                net.unavailable,
                net.connections,
                net.cuts,
                net.timeouts,
                net.connections_refused,
                net.bad_frames,
                net.error_frames_checked,
                net.events_checked,
                net.backpressure,
                net.drains,
                net.shutting_down
            );
        }
        return match report.violation {
            None => Ok(()),
            Some(violation) => bail!("seed {seed}: {violation}"),
        };
    }
    let range = parse_range(args.seeds.as_deref().unwrap_or("1..101"))?;
    let total = range.end - range.start;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("[{bar:40}] {pos}/{len} seeds ({per_sec}, {eta}) {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    if !molly_shards::buggify::COMPILED {
        println!("(built without --features sim: no fault points inside production code)");
    }
    let started = Instant::now();
    // Failures grouped by the check they broke: (seed, violation), in seed order.
    let mut failures: BTreeMap<&'static str, Vec<(u64, sim::Violation)>> = BTreeMap::new();
    let mut failing = 0u64;
    let mut totals = sim::SimReport::default();
    let (mut requests, mut resent, mut cuts, mut bad_frames) = (0u64, 0u64, 0u64, 0u64);
    let (mut refused, mut drains, mut shutting_down) = (0u64, 0u64, 0u64);
    for seed in range.clone() {
        SEED_RUNNING.store(seed, Ordering::Relaxed);
        let (report, net) = run_one(seed, &args);
        if let Some(net) = net {
            requests += net.requests;
            resent += net.resent;
            cuts += net.cuts;
            bad_frames += net.error_frames_checked;
            refused += net.connections_refused;
            drains += net.drains;
            shutting_down += net.shutting_down;
        }
        totals.add(&report);
        if let Some(violation) = report.violation {
            failing += 1;
            failures.entry(violation.check).or_default().push((seed, violation));
            bar.set_message(format!("{failing} failing"));
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let sim::SimReport {
        steps,
        crashes,
        events_checked: checked,
        events_checked_cross: checked_cross,
        events_checked_sharded: checked_sharded,
        moves_checked,
        moves_ok,
        reads_deferred,
        faults_injected: faults,
        snapshots_written,
        snapshots_loaded,
        snapshots_skipped,
        blocks_evicted: evicted,
        journal_files_deleted,
        ..
    } = totals;
    println!(
        "seeds {}..{}: {} clean, {failing} failing; {steps} steps, {crashes} crashes, {checked} results checked \
         against the model ({checked_cross} with several shards, {checked_sharded} of them naming a sharded \
         account, {moves_checked} moves between parts ({moves_ok} ok); {reads_deferred} lookups deferred until a settle was applied), {faults} faults injected, {snapshots_written} snapshot files written, \
         {snapshots_loaded} loaded at restarts, {snapshots_skipped} skipped as damaged, {evicted} blocks evicted, \
         {journal_files_deleted} journal files deleted in {seconds:.1} s ({:.1} seeds/s, {:.0} steps/s)",
        range.start,
        range.end,
        total - failing,
        total as f64 / seconds,
        steps as f64 / seconds
    );
    if args.net {
        println!(
            "  network: {requests} requests (each answered), {resent} frames re-sent, {cuts} connections cut, \
             {bad_frames} bad frames answered with their error frame, {refused} connections refused at \
             connections_max, {drains} drains (SIGTERM, then a restart; {shutting_down} replies shutting_down); \
             results of writes through the server checked against the model: {checked} ({checked_cross} with \
             several shards, {checked_sharded} naming a sharded account, {moves_checked} moves between parts)"
        );
    }
    for (check, list) in &failures {
        println!("{check}: {} seeds", list.len());
        for (seed, violation) in list.iter().take(10) {
            println!("  seed {seed}: {violation}   (replay: {})", replay(*seed, &args));
        }
        if list.len() > 10 {
            println!("  ... and {} more", list.len() - 10);
        }
    }
    if failing == 0 {
        Ok(())
    } else {
        bail!("{failing} of {total} seeds violated an invariant")
    }
}
