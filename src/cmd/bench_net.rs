//! `molly bench [flags]`: the protocol load generator. Drives the server
//! whose address and development key `molly serve --data-dir DIR` wrote
//! into DIR (or `--addr` with `--key-file`), starting one there if none
//! answers; prints throughput and batch latency percentiles, writes
//! `--json`, compares with `--compare`, checks with `--verify`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use molly_bench::network::{Amount, NetReport, NetScenario, Target};
use molly_bench::report::Machine;
use molly_client::ClientConfig;

#[derive(Debug, clap::Args)]
pub struct NetArgs {
    /// The server's data directory: its `server.addr` and `client-keys` are
    /// read from there (a server is started there if none answers).
    #[arg(long, default_value = "data")]
    data_dir: PathBuf,
    /// Server address instead of the data directory's (with --key-file).
    #[arg(long, requires = "key_file")]
    addr: Option<std::net::SocketAddr>,
    /// Client key file (`<client_id> <hex key>`; the first line is used).
    #[arg(long, requires = "addr")]
    key_file: Option<PathBuf>,
    /// Transfers to measure (after the warm-up).
    #[arg(long, default_value_t = 10_000_000, conflicts_with = "duration")]
    transfers: u64,
    /// Run for this many seconds instead of a transfer count.
    #[arg(long)]
    duration: Option<f64>,
    /// Connections to the server.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Batches outstanding per connection (pipelined). One is the fastest
    /// on a 2-core machine: the server's group commit already batches.
    #[arg(long, default_value_t = 1)]
    in_flight: usize,
    /// Transfers per batch (one request).
    #[arg(long, default_value_t = 8190)]
    batch: u32,
    /// Accounts (ids 1..=A, created if missing).
    #[arg(long, default_value_t = 10_000)]
    accounts: u32,
    /// Share of transfers between accounts of different shards (0..=1);
    /// default: what uniform pairs give (1 − 1/shards).
    #[arg(long)]
    cross_shard: Option<f64>,
    /// Zipf exponent for hot accounts (default: uniform pairs).
    #[arg(long)]
    zipf: Option<f64>,
    /// Share of transfers between a user and a system account (half deposits
    /// from a clearing account, half fees to a fee account), the payment
    /// gateway's shape; the system accounts are sharded (a part on every
    /// shard) unless --hot-plain.
    #[arg(long, default_value_t = 0.0)]
    hot: f64,
    /// Make the system accounts of --hot plain accounts (one shard each), to
    /// compare with sharded ones.
    #[arg(long)]
    hot_plain: bool,
    /// Batches sent before measuring.
    #[arg(long, default_value_t = 20)]
    warmup: u64,
    /// After the run, check that every acknowledged transfer exists and
    /// that debits equal credits (and moved by exactly what was acknowledged).
    #[arg(long)]
    verify: bool,
    /// Workload seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Print the change against an earlier `--json` report.
    #[arg(long)]
    compare: Option<PathBuf>,
    /// Write every measured batch as CSV (`sent_ms,latency_ms,transfers`:
    /// sent this long after the first measured batch; call to durable reply),
    /// to see latency over the run (snapshots, warm-up of memory).
    #[arg(long)]
    trace: Option<PathBuf>,
    /// Shards for a server this command starts (default: the server's default).
    #[arg(long)]
    shards: Option<usize>,
}

/// A server this command started, stopped (SIGTERM) on drop.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let _ = self.0.wait();
    }
}

pub fn run(args: NetArgs) -> anyhow::Result<()> {
    let machine = Machine::detect();
    let mut started = None;
    let client = match (&args.addr, &args.key_file) {
        (Some(addr), Some(key_file)) => {
            let (id, key) = molly_client::read_key_file(key_file)?;
            ClientConfig::new(*addr, id, &key)
        }
        _ => match reachable(&args.data_dir) {
            Some(config) => config,
            None => {
                started = Some(start_server(&args.data_dir, args.shards)?);
                ClientConfig::from_data_dir(&args.data_dir)?
            }
        },
    };
    let server_pid = match &started {
        Some(Started(child)) => Some(child.id()),
        None => {
            std::fs::read_to_string(args.data_dir.join("server.pid")).ok().and_then(|p| p.trim().parse().ok())
        }
    };
    let scenario = NetScenario {
        connections: args.connections,
        in_flight: args.in_flight,
        batch: args.batch,
        accounts: args.accounts,
        amount: args.duration.map_or(Amount::Transfers(args.transfers), Amount::Seconds),
        cross_shard: args.cross_shard,
        zipf: args.zipf,
        hot: args.hot,
        hot_plain: args.hot_plain,
        warmup: args.warmup,
        seed: args.seed,
        verify: args.verify,
        trace: args.trace.is_some(),
    };
    println!(
        "molly bench: {} at {} ({}), {} connection(s) × {} in flight, batch {}, {} accounts, {} pairs, cross-shard {}{}",
        match scenario.amount {
            Amount::Transfers(n) => format!("{n} transfers"),
            Amount::Seconds(s) => format!("{s} s"),
        },
        client.addr,
        if started.is_some() { "server started by this command" } else { "running server" },
        args.connections,
        args.in_flight,
        args.batch,
        args.accounts,
        args.zipf.map_or("uniform".to_string(), |s| format!("zipf({s})")),
        args.cross_shard.map_or("natural".to_string(), |x| format!("{x}")),
        if args.hot > 0.0 {
            format!(", {} with {} system accounts", args.hot, if args.hot_plain { "plain" } else { "sharded" })
        } else {
            String::new()
        },
    );
    let bar = match scenario.amount {
        Amount::Transfers(n) => {
            crate::cmd::bench::progress_bar(n + args.warmup * u64::from(args.batch), "transfers")
        }
        Amount::Seconds(_) => indicatif::ProgressBar::new_spinner(),
    };
    let progress = bar.clone();
    let cpu_before = server_pid.and_then(server_cpu_seconds);
    let report =
        molly_bench::network::run(&Target { client }, &scenario, move |done| progress.set_position(done))?;
    bar.finish_and_clear();
    let memory = server_pid.and_then(server_memory);
    // The server's CPU over the whole run (account creation and warm-up
    // included): a figure the machine's other load does not inflate as much
    // as wall time.
    let server_cpu =
        server_pid.and_then(server_cpu_seconds).zip(cpu_before).map(|(after, before)| after - before);
    print_report(&report, memory.as_ref());
    if let Some(cpu) = server_cpu {
        println!(
            "server CPU: {cpu:.2} s ({:.0} transfers per server CPU-second)",
            report.transfers as f64 / cpu.max(1e-9)
        );
    }
    let json = serde_json::json!({
        "benchmark": "network",
        "transfers_per_second": report.transfers_per_second,
        "p99_batch_ms": report.p99_batch_ms,
        "p50_batch_ms": report.batch_latency.p50_ms,
        "p999_batch_ms": report.batch_latency.p999_ms,
        "max_batch_ms": report.batch_latency.max_ms,
        "server_rss_bytes": memory.as_ref().map(|m| m.rss_bytes),
        "server_peak_rss_bytes": memory.as_ref().map(|m| m.peak_rss_bytes),
        "server_rss_anon_bytes": memory.as_ref().map(|m| m.anon_bytes),
        "server_rss_file_bytes": memory.as_ref().map(|m| m.file_bytes),
        "server_cpu_seconds": server_cpu,
        "report": report,
        "machine": machine,
    });
    if let Some(path) = &args.compare {
        compare(path, &json)?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.trace {
        let mut csv = String::from("sent_ms,latency_ms,transfers\n");
        for b in &report.batches {
            csv.push_str(&format!("{:.3},{:.3},{}\n", b.sent_ms, b.latency_ms, b.transfers));
        }
        std::fs::write(path, csv).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {} ({} batches)", path.display(), report.batches.len());
    }
    if report.rejected > 0 {
        bail!("{} transfers were rejected (none expected)", report.rejected);
    }
    Ok(())
}

fn print_report(report: &NetReport, memory: Option<&ServerMemory>) {
    let l = &report.batch_latency;
    println!(
        "{:>10.0} transfers/s over the protocol ({} in {:.2} s, {:.1}% cross-shard, {} shard(s))",
        report.transfers_per_second,
        report.transfers,
        report.seconds,
        report.cross_shard_measured * 100.0,
        report.server_shards
    );
    println!(
        "batch latency: p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
    );
    println!("client CPU: {:.2} s", report.client_cpu_seconds);
    if let Some(memory) = memory {
        let mib = |bytes: u64| bytes as f64 / 1048576.0;
        println!(
            "server memory: {:.0} MiB resident ({:.0} MiB its own, {:.0} MiB mapped history files the kernel may drop), {:.0} MiB peak",
            mib(memory.rss_bytes),
            mib(memory.anon_bytes),
            mib(memory.file_bytes),
            mib(memory.peak_rss_bytes)
        );
    }
    if let Some(found) = report.verified_transfers {
        println!("verified: all {found} acknowledged transfers found; debits = credits, moved by exactly the acknowledged amount");
    }
}

/// The client config for the server in `dir`, if one answers a ping.
fn reachable(dir: &Path) -> Option<ClientConfig> {
    let config = ClientConfig::from_data_dir(dir).ok()?;
    std::net::TcpStream::connect_timeout(&config.addr, Duration::from_secs(1)).ok()?;
    Some(config)
}

fn start_server(dir: &Path, shards: Option<usize>) -> anyhow::Result<Started> {
    let _ = std::fs::remove_file(dir.join("server.addr"));
    let mut command = Command::new(std::env::current_exe()?);
    // Any free port: the address is read back from server.addr.
    command.args(["serve", "--metrics-addr", "off", "--listen", "127.0.0.1:0", "--data-dir"]).arg(dir);
    if let Some(shards) = shards {
        command.args(["--shards", &shards.to_string()]);
    }
    let child =
        command.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().context("starting molly serve")?;
    let mut started = Started(child);
    let waited = Instant::now();
    while !dir.join("server.addr").exists() {
        if let Some(status) = started.0.try_wait()? {
            bail!("molly serve exited with {status} before listening");
        }
        if waited.elapsed() > Duration::from_secs(60) {
            bail!("molly serve did not start listening within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("started molly serve --data-dir {} (pid {})", dir.display(), started.0.id());
    Ok(started)
}

/// A local server's memory, from /proc.
#[derive(Debug)]
struct ServerMemory {
    rss_bytes: u64,
    peak_rss_bytes: u64,
    /// Anonymous pages: the memory the server holds.
    anon_bytes: u64,
    /// File-backed pages: transfer segments read through their mapping
    /// (page cache the kernel can reclaim) and the binary.
    file_bytes: u64,
}

fn server_memory(pid: u32) -> Option<ServerMemory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Some(ServerMemory {
        rss_bytes: field("VmRSS:")?,
        peak_rss_bytes: field("VmHWM:")?,
        anon_bytes: field("RssAnon:")?,
        file_bytes: field("RssFile:")? + field("RssShmem:").unwrap_or(0),
    })
}

/// A process's user + system CPU seconds so far, from /proc.
fn server_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces, so find its ')'):
    // state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| ticks as f64 / per_second as f64)
}

/// Prints old → new for the headline figures of two reports.
fn compare(old_path: &Path, new: &serde_json::Value) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(old_path).with_context(|| format!("reading {}", old_path.display()))?;
    let old: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", old_path.display()))?;
    println!("compared with {}:", old_path.display());
    for (key, higher_is_better) in [
        ("transfers_per_second", true),
        ("p50_batch_ms", false),
        ("p99_batch_ms", false),
        ("p999_batch_ms", false),
        ("max_batch_ms", false),
        ("server_peak_rss_bytes", false),
        ("server_cpu_seconds", false),
    ] {
        let (Some(before), Some(after)) = (old[key].as_f64(), new[key].as_f64()) else {
            continue;
        };
        let change = if before == 0.0 { 0.0 } else { (after - before) / before * 100.0 };
        let better = if higher_is_better { change >= 0.0 } else { change <= 0.0 };
        println!(
            "  {key:<22} {before:>14.2} → {after:>14.2}  {change:+7.1}% ({})",
            if change == 0.0 {
                "same"
            } else if better {
                "better"
            } else {
                "worse"
            }
        );
    }
    Ok(())
}
