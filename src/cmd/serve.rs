//! `molly serve`: the long-running server. Starts one pinned shard per core
//! on the embedded default storage (`./data`), recovers every journal,
//! exports Prometheus metrics, and stops cleanly on SIGINT/SIGTERM.
//!
//! Until the wire protocol lands, the ledger is driven in process; the
//! hidden `--crash-test-driver CYCLE` flag runs a built-in load that prints
//! `acked ...` lines after each durable reply, for the crash tests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use molly_engine::{Account, CreateTransferResult, Transfer, TransferFlags};
use molly_shards::durable::Outcome;
use molly_shards::journal::CommandBuf;
use molly_shards::rebalance::RebalanceConfig;
use molly_shards::runtime::{shard_for, Runtime, RuntimeConfig};
use serde::{Deserialize, Serialize};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// TOML configuration file (see docs/serve.md); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data directory (default: ./data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Number of shards (default: the data directory's count; for a new one,
    /// the CPUs available but one, at least one).
    #[arg(long)]
    shards: Option<usize>,
    /// Prometheus metrics listener, e.g. 127.0.0.1:9464; "off" to disable.
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Protocol listener for clients, e.g. 127.0.0.1:3000 (port 0: any free
    /// port); "off" to disable. The bound address is written to DATA_DIR/server.addr.
    #[arg(long)]
    listen: Option<String>,
    /// Do not pin shards to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Testing aid: run a built-in transfer load (cycle number CYCLE keeps ids
    /// unique across restarts) and print `acked` lines after durable replies.
    #[arg(long, hide = true)]
    crash_test_driver: Option<u64>,
}

/// Every `molly serve` setting, with its default. The TOML file has the same
/// shape: a `[serve]` table and an `[engine]` table.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    /// Server settings.
    pub serve: ServeSection,
    /// Ledger limits, per shard.
    pub engine: EngineSection,
    /// The binary protocol's listener and limits.
    pub net: NetSection,
}

/// `[net]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetSection {
    /// Protocol listener ("off" to disable; port 0 picks a free port).
    pub listen: String,
    /// Client keys file (`<client_id> <hex key>` per line); empty means
    /// `DATA_DIR/client-keys`, created with a development key on first start.
    pub keys_file: PathBuf,
    /// Connections held at most.
    pub connections_max: usize,
    /// Requests read ahead per connection before reading pauses.
    pub in_flight_max: usize,
    /// Largest request body, bytes.
    pub body_size_max: u32,
}

impl Default for NetSection {
    fn default() -> Self {
        let server = molly_net::server::ServerConfig::default();
        Self {
            listen: "127.0.0.1:3000".into(),
            keys_file: PathBuf::new(),
            connections_max: server.connections_max,
            in_flight_max: server.in_flight_max,
            body_size_max: server.body_size_max,
        }
    }
}

/// `[serve]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServeSection {
    /// Data directory: shard i keeps its journal in `data_dir/shard-i/`.
    pub data_dir: PathBuf,
    /// Shards; 0 = the data directory's count, or for a new one the CPUs
    /// available but one (at least one): see `molly_shards::layout`.
    pub shards: usize,
    /// Pin shard i to CPU i mod CPUs.
    pub pin: bool,
    /// Prometheus listener ("off" to disable).
    pub metrics_addr: String,
    /// Requests queued per shard before callers get backpressure.
    pub inbox_depth: usize,
    /// Largest journal group (one write + one fdatasync), bytes.
    pub group_bytes_max: usize,
    /// How long a shard sleeps between polls while something is pending
    /// that no message announces (a lingering group, a full peer ring),
    /// microseconds.
    pub idle_sleep_us: u64,
    /// The longest a shard with nothing to do parks, microseconds: a
    /// request or a peer's message wakes it at once (0: it polls every
    /// `idle_sleep_us` instead).
    pub idle_park_us: u64,
    /// How long a group of settles only (their callers already answered)
    /// waits for a caller's next write to share its commit, microseconds
    /// (0: written at once).
    pub settle_linger_us: u64,
    /// How long a shard spins before parking in the kernel, microseconds
    /// (0: parks at once; see tuning/README.md).
    pub spin_before_park_us: u64,
    /// Touch the engine's reserved memory at start.
    pub prefault: bool,
    /// Journal bytes between snapshots (0: only at shutdown).
    pub snapshot_every_bytes: u64,
    /// Pace of the background snapshot writer, MiB/s (0: the device's full
    /// speed, which holds journal writes behind the snapshot's; see
    /// tuning/README.md).
    pub snapshot_write_mib_per_s: u64,
    /// A shard's journal moves to a new file once the current one holds
    /// this many bytes (and at every snapshot); at least 4096.
    pub journal_file_bytes: u64,
    /// Pace, MiB/s, of the thread that writes each shard's next journal
    /// file full of zeros ahead of use, so group commits overwrite
    /// allocated blocks (0: off; see docs/shards.md).
    pub journal_prealloc_mib_per_s: u64,
    /// Keep every journal file: no deletion of the files the kept
    /// snapshots cover (the whole history stays replayable; disk grows).
    pub keep_journal: bool,
    /// Transfers per shard kept in memory once durable in a segment file
    /// (older ones are read from the file); rounded up to 65,536-transfer blocks.
    pub transfers_in_memory: usize,
    /// Messages queued per ordered pair of shards (cross-shard legs and answers).
    pub ring_depth: usize,
    /// Cross-shard transfers a shard coordinates at once (at least batch_events_max).
    pub intents_max: usize,
    /// Milliseconds between rebalancing rounds of sharded accounts with a
    /// balance limit (0: no rebalancer; it runs only with 2 shards or more).
    pub rebalance_interval_ms: u64,
    /// A part of a sharded account whose room before its limit is below this
    /// percentage of the parts' mean is topped up to the mean (1..=100).
    pub rebalance_low_water_percent: u32,
}

/// `[engine]`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSection {
    /// Events per batch.
    pub batch_events_max: u32,
    /// Accounts per shard.
    pub accounts_max: u32,
    /// Transfers held in memory per shard.
    pub transfers_max: u32,
    /// Results per history query.
    pub query_results_max: u32,
}

impl Default for ServeSection {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            shards: 0,
            pin: true,
            metrics_addr: "127.0.0.1:9464".into(),
            inbox_depth: molly_shards::runtime::INBOX_DEPTH_DEFAULT,
            group_bytes_max: molly_shards::durable::GROUP_BYTES_MAX_DEFAULT,
            idle_sleep_us: 50,
            idle_park_us: molly_shards::runtime::IDLE_PARK_DEFAULT.as_micros() as u64,
            settle_linger_us: molly_shards::runtime::SETTLE_LINGER_DEFAULT.as_micros() as u64,
            spin_before_park_us: 0,
            prefault: false,
            snapshot_every_bytes: molly_shards::runtime::SNAPSHOT_EVERY_BYTES_DEFAULT,
            snapshot_write_mib_per_s: molly_shards::runtime::SNAPSHOT_WRITE_BYTES_PER_S_DEFAULT >> 20,
            journal_file_bytes: molly_shards::journal_files::JOURNAL_FILE_BYTES_DEFAULT,
            journal_prealloc_mib_per_s: molly_shards::runtime::JOURNAL_PREALLOC_BYTES_PER_S_DEFAULT >> 20,
            keep_journal: false,
            transfers_in_memory: molly_shards::runtime::TRANSFERS_IN_MEMORY_DEFAULT,
            ring_depth: molly_shards::runtime::RING_DEPTH_DEFAULT,
            intents_max: molly_shards::shard::INTENTS_MAX_DEFAULT,
            rebalance_interval_ms: molly_shards::rebalance::INTERVAL_DEFAULT.as_millis() as u64,
            rebalance_low_water_percent: molly_shards::rebalance::LOW_WATER_PERCENT_DEFAULT,
        }
    }
}

impl Default for EngineSection {
    fn default() -> Self {
        let engine = molly_engine::Config::default();
        Self {
            batch_events_max: engine.batch_events_max,
            accounts_max: engine.accounts_max,
            // Three times the engine's default: the standard benchmark's 10M
            // transfers fit two shards even when half of them cross shards
            // (three records each); memory is touched only as used.
            transfers_max: TRANSFERS_MAX_DEFAULT,
            query_results_max: engine.query_results_max,
        }
    }
}

impl ServeConfig {
    fn load(args: &Args) -> anyhow::Result<Self> {
        let mut config = match &args.config {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => ServeConfig::default(),
        };
        if let Some(dir) = &args.data_dir {
            config.serve.data_dir = dir.clone();
        }
        if let Some(shards) = args.shards {
            config.serve.shards = shards;
        }
        if let Some(addr) = &args.metrics_addr {
            config.serve.metrics_addr = addr.clone();
        }
        if let Some(addr) = &args.listen {
            config.net.listen = addr.clone();
        }
        if args.no_pin {
            config.serve.pin = false;
        }
        Ok(config)
    }

    fn runtime(&self) -> RuntimeConfig {
        let mut runtime = RuntimeConfig::new(self.serve.data_dir.clone());
        if self.serve.shards > 0 {
            runtime.shards = self.serve.shards;
        }
        runtime.pin = self.serve.pin;
        runtime.inbox_depth = self.serve.inbox_depth;
        runtime.group_bytes_max = self.serve.group_bytes_max;
        runtime.idle_sleep = Duration::from_micros(self.serve.idle_sleep_us);
        runtime.idle_park = Duration::from_micros(self.serve.idle_park_us);
        runtime.settle_linger = Duration::from_micros(self.serve.settle_linger_us);
        runtime.spin_before_park = Duration::from_micros(self.serve.spin_before_park_us);
        runtime.prefault = self.serve.prefault;
        runtime.snapshot_every_bytes = self.serve.snapshot_every_bytes;
        runtime.snapshot_write_bytes_per_s = self.serve.snapshot_write_mib_per_s.saturating_mul(1 << 20);
        runtime.journal_file_bytes = self.serve.journal_file_bytes;
        runtime.journal_prealloc_bytes_per_s = self.serve.journal_prealloc_mib_per_s.saturating_mul(1 << 20);
        runtime.keep_journal = self.serve.keep_journal;
        runtime.transfers_in_memory = self.serve.transfers_in_memory;
        runtime.ring_depth = self.serve.ring_depth;
        runtime.intents_max = self.serve.intents_max;
        runtime.rebalance = (self.serve.rebalance_interval_ms > 0).then(|| RebalanceConfig {
            interval: Duration::from_millis(self.serve.rebalance_interval_ms),
            low_water_percent: self.serve.rebalance_low_water_percent,
        });
        runtime.engine = molly_engine::Config {
            batch_events_max: self.engine.batch_events_max,
            accounts_max: self.engine.accounts_max,
            transfers_max: self.engine.transfers_max,
            query_results_max: self.engine.query_results_max,
            ..molly_engine::Config::default()
        };
        runtime
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let config = ServeConfig::load(&args)?;
    if args.print_config {
        print!("{}", toml::to_string(&config)?);
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).context("installing signal handlers")?;
    }

    let data_dir = &config.serve.data_dir;
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
    let _lock = lock_data_dir(data_dir)?;
    let mut runtime_config = config.runtime();
    if config.serve.shards == 0 {
        // Not configured: the count the data directory was laid out for, or
        // the default for a new one (one per CPU but one).
        runtime_config.shards = molly_shards::layout::recorded(data_dir)
            .map_err(|e| anyhow::anyhow!(e))?
            .unwrap_or_else(molly_shards::layout::default_shards);
    }
    let server = start_server(&config, runtime_config.shards)?;
    if let Some(server) = &server {
        runtime_config.task = Some(server.shard_task());
    }
    let started = Instant::now();
    let runtime = Runtime::start(runtime_config.clone()).context("starting the shards")?;
    if let Some(server) = &server {
        // Written once the shards accept: `molly bench --data-dir` reads it.
        write_atomically(&data_dir.join("server.pid"), &format!("{}\n", std::process::id()))?;
        write_atomically(&data_dir.join("server.addr"), &format!("{}\n", server.local_addr()))?;
    }
    for (shard, report) in runtime.recoveries().iter().enumerate() {
        for (path, reason) in &report.snapshots_skipped {
            tracing::warn!(shard, snapshot = %path.display(), reason, "snapshot skipped");
        }
        tracing::info!(
            shard,
            snapshot = report.snapshot.as_ref().map_or("none".to_string(), |p| p.display().to_string()),
            entries = report.scan.entries,
            torn_tail = report.scan.torn_tail,
            truncated_bytes = report.truncated_bytes,
            journal_files = report.journal_files,
            recovery_ms = report.micros as f64 / 1000.0,
            "journal recovered"
        );
    }

    let registry = prometheus::Registry::new();
    for metrics in runtime.metrics() {
        metrics.register(&registry).context("registering metrics")?;
    }
    runtime.rebalance_metrics().register(&registry).context("registering metrics")?;
    let refresh = match &server {
        Some(server) => net_metrics(server.clone(), &registry)?,
        None => Box::new(|| {}),
    };
    let metrics_server =
        start_metrics(&config.serve.metrics_addr, &config.serve.data_dir, registry, refresh)?;
    tracing::info!(
        shards = runtime.shards(),
        data_dir = %config.serve.data_dir.display(),
        metrics = metrics_server.as_ref().map_or("off".to_string(), |(addr, _)| addr.clone()),
        listen = server.as_ref().map_or("off".to_string(), |s| s.local_addr().to_string()),
        pinned = runtime_config.pin,
        start_ms = started.elapsed().as_millis() as u64,
        "serving"
    );

    let runtime = Arc::new(runtime);
    let driver = args.crash_test_driver.map(|cycle| {
        let runtime = runtime.clone();
        let stop = stop.clone();
        std::thread::spawn(move || crash_test_driver(&runtime, cycle, &stop))
    });

    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::info!("signal received: stopping");
    if let Some(driver) = driver {
        let _ = driver.join();
    }
    if let Some(server) = &server {
        // Take no new requests; let those taken become durable and be answered.
        server.drain();
        let waited = Instant::now();
        while !server.idle() && waited.elapsed() < DRAIN_TIMEOUT {
            std::thread::sleep(Duration::from_millis(5));
        }
        if !server.idle() {
            tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}; stopping anyway");
        }
        let _ = std::fs::remove_file(data_dir.join("server.addr"));
        let _ = std::fs::remove_file(data_dir.join("server.pid"));
    }
    match Arc::try_unwrap(runtime) {
        Ok(mut runtime) => runtime.shutdown(),
        Err(_) => bail!("the runtime is still shared at shutdown"),
    }
    if let Some((_, server)) = metrics_server {
        server.unblock();
    }
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Transfers held in memory per shard by default (12,582,912).
pub const TRANSFERS_MAX_DEFAULT: u32 = 3 << 22;

/// Longest wait at shutdown for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the protocol listener (before the shards start, so a taken port
/// fails fast) with the client keys; `None` when `listen = "off"`.
fn start_server(
    config: &ServeConfig,
    shards: usize,
) -> anyhow::Result<Option<Arc<molly_net::server::Server>>> {
    let net = &config.net;
    if net.listen == "off" {
        return Ok(None);
    }
    let addr: std::net::SocketAddr =
        net.listen.parse().with_context(|| format!("listen address {:?} is not HOST:PORT", net.listen))?;
    let keys_file = if net.keys_file.as_os_str().is_empty() {
        config.serve.data_dir.join("client-keys")
    } else {
        net.keys_file.clone()
    };
    let (keys, created) = molly_net::keys::ClientKeys::load_or_generate(&keys_file)?;
    if created {
        tracing::info!(file = %keys_file.display(), "generated a development client key (client 1)");
    }
    let server_config = molly_net::server::ServerConfig {
        connections_max: net.connections_max,
        in_flight_max: net.in_flight_max,
        body_size_max: net.body_size_max,
        batch_events_max: config.engine.batch_events_max,
        query_results_max: config.engine.query_results_max,
    };
    let server = molly_net::server::Server::bind(addr, shards, server_config, keys)
        .with_context(|| format!("listening on {addr}"))?;
    Ok(Some(server))
}

/// The protocol server's counters as Prometheus metrics, read at each scrape.
fn net_metrics(
    server: Arc<molly_net::server::Server>,
    registry: &prometheus::Registry,
) -> anyhow::Result<Box<dyn Fn() + Send>> {
    use prometheus::{IntCounter, IntGauge};
    let connections = IntGauge::new("molly_net_connections", "Client connections open.")?;
    let in_flight = IntGauge::new("molly_net_requests_in_flight", "Requests read and not yet answered.")?;
    let requests = IntCounter::new("molly_net_requests_total", "Requests answered.")?;
    let errors = IntCounter::new("molly_net_frame_errors_total", "Frames refused with an error frame.")?;
    let refused =
        IntCounter::new("molly_net_connections_refused_total", "Connections refused at connections_max.")?;
    for metric in [&connections, &in_flight] {
        registry.register(Box::new(metric.clone()))?;
    }
    for metric in [&requests, &errors, &refused] {
        registry.register(Box::new(metric.clone()))?;
    }
    Ok(Box::new(move || {
        let stats = server.stats();
        connections.set(stats.connections.load(Ordering::Relaxed) as i64);
        in_flight.set(stats.in_flight.load(Ordering::Relaxed) as i64);
        for (counter, value) in [
            (&requests, &stats.requests),
            (&errors, &stats.frame_errors),
            (&refused, &stats.connections_refused),
        ] {
            counter.inc_by(value.load(Ordering::Relaxed).saturating_sub(counter.get()));
        }
    }))
}

/// Holds an exclusive lock on `DATA_DIR/LOCK` for the life of the process:
/// two servers on one data directory would corrupt each other's journals.
fn lock_data_dir(data_dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = data_dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    if let Err(error) = file.try_lock() {
        bail!("{} is locked: another molly serve is using this data directory ({error})", path.display());
    }
    Ok(file)
}

/// Writes `text` to `path` through a temporary file and a rename.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

/// Serves `GET /metrics` on `addr` from a thread; writes the bound address to
/// `DATA_DIR/metrics.addr`.
fn start_metrics(
    addr: &str,
    data_dir: &Path,
    registry: prometheus::Registry,
    refresh: Box<dyn Fn() + Send>,
) -> anyhow::Result<Option<(String, Arc<tiny_http::Server>)>> {
    if addr == "off" {
        return Ok(None);
    }
    let server = Arc::new(
        tiny_http::Server::http(addr).map_err(|e| anyhow::anyhow!("metrics listener on {addr}: {e}"))?,
    );
    let bound = server.server_addr().to_string();
    std::fs::write(data_dir.join("metrics.addr"), format!("{bound}\n")).context("writing metrics.addr")?;
    let serving = server.clone();
    std::thread::Builder::new().name("molly-metrics".into()).spawn(move || {
        for request in serving.incoming_requests() {
            let response = if request.url() == "/metrics" {
                refresh();
                let mut body = Vec::new();
                let encoder = prometheus::TextEncoder::new();
                if let Err(error) = prometheus::Encoder::encode(&encoder, &registry.gather(), &mut body) {
                    body = format!("# encoding failed: {error}\n").into_bytes();
                }
                tiny_http::Response::from_data(body).with_header(
                    "Content-Type: text/plain; version=0.0.4"
                        .parse::<tiny_http::Header>()
                        .expect("valid header"),
                )
            } else {
                tiny_http::Response::from_data(b"not found: try /metrics\n".to_vec()).with_status_code(404)
            };
            let _ = request.respond(response);
        }
    })?;
    Ok(Some((bound, server)))
}

/// Accounts the crash-test driver uses.
const DRIVER_ACCOUNTS: u128 = 64;

/// Creates accounts 1..=64 on their shards and a sharded hot wallet account
/// (a part on every shard, no part may go below zero), then submits batches
/// of transfers (plain ones, linked pairs within the shard, one in four
/// crediting an account of another shard: two-phase between shards; on
/// shard 0 one in eight pays into the hot wallet, on the other shards one in
/// eight pays out of it, so the server's rebalancer moves value between its
/// parts) until stopped,
/// printing `acked SHARD FIRST_ID LAST_ID OK_COUNT CROSS_OK_IDS` once each
/// batch is answered (durable, cross-shard ones settled; the last field lists
/// the cross-shard transfers answered `ok`, comma-separated, `-` for none).
/// Ids are `cycle << 40 | counter`: unique across restarts.
fn crash_test_driver(runtime: &Runtime, cycle: u64, stop: &AtomicBool) {
    let shards = runtime.shards() as u32;
    let mut owned = vec![Vec::new(); shards as usize];
    for id in 1..=DRIVER_ACCOUNTS {
        owned[shard_for(id, shards) as usize].push(id);
    }
    let hot = molly_shards::route::sharded_id(1);
    for (shard, ids) in owned.iter().enumerate() {
        let mut accounts: Vec<Account> =
            ids.iter().map(|&id| Account { id, ledger: 1, code: 1, ..Account::default() }).collect();
        let flags = molly_engine::AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS;
        accounts.push(Account { id: hot, ledger: 1, code: 1, flags, ..Account::default() });
        if runtime.write(shard, vec![CommandBuf::CreateAccounts(accounts)]).is_err() {
            return;
        }
    }
    let mut counter = 0u64;
    let stdout = std::io::stdout();
    while !stop.load(Ordering::SeqCst) {
        for (shard, ids) in owned.iter().enumerate() {
            if ids.len() < 3 {
                continue;
            }
            let first = u128::from(cycle) << 40 | u128::from(counter);
            let batch: Vec<Transfer> = (0..256u64)
                .map(|i| {
                    let id = first + u128::from(i);
                    let debit = ids[(counter + i) as usize % ids.len()];
                    // Events 3 and 7 of every 8 (never half of a linked pair) credit another shard.
                    let others = &owned[(shard + 1) % owned.len()];
                    let mut credit = if i % 4 == 3 && shards > 1 && !others.is_empty() {
                        others[(counter + i) as usize % others.len()]
                    } else {
                        ids[(counter + i + 1) as usize % ids.len()]
                    };
                    // Event 5 of every 8: the hot wallet, paid into on shard 0, out of elsewhere.
                    let mut debit = debit;
                    if i % 8 == 5 && shard == 0 {
                        credit = hot;
                    } else if i % 8 == 5 {
                        (debit, credit) = (hot, debit);
                    }
                    // Every fourth pair is linked: both or neither must survive.
                    let flags = if i % 8 == 0 { TransferFlags::LINKED } else { TransferFlags::NONE };
                    Transfer {
                        id,
                        debit_account_id: debit,
                        credit_account_id: credit,
                        amount: 1 + u128::from(i),
                        ledger: 1,
                        code: 1,
                        flags,
                        ..Transfer::default()
                    }
                })
                .collect();
            counter += batch.len() as u64;
            let Ok(outcomes) = runtime.write(shard, vec![CommandBuf::CreateTransfers(batch.clone())]) else {
                return;
            };
            let results: &[CreateTransferResult] = match &outcomes[..] {
                [Outcome::Transfers(results)] => results,
                _ => &[],
            };
            let ok = results.iter().filter(|r| **r == CreateTransferResult::Ok).count();
            let cross: Vec<String> = batch
                .iter()
                .zip(results)
                .filter(|(t, r)| {
                    **r == CreateTransferResult::Ok
                        && molly_shards::route::credit_peer(t, shard as u32, shards).is_some()
                })
                .map(|(t, _)| t.id.to_string())
                .collect();
            let cross = if cross.is_empty() { "-".to_string() } else { cross.join(",") };
            let mut out = stdout.lock();
            let _ = writeln!(out, "acked {shard} {first} {} {ok} {cross}", first + 255);
            let _ = out.flush();
        }
    }
}
