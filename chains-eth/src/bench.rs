//! `molly bench eth-watch`: how fast the watcher filters blocks against a
//! large watched set, and how long a deposit takes from mined to event.
//!
//! * **Filter throughput** (`blocks_per_second`): synthetic blocks, each
//!   `logs_per_block` ERC-20 `Transfer` logs of a configured token (a 60M-gas
//!   block holds about 1,700 such transfers), 1 in 100 to a watched address,
//!   through the watcher's own check-and-filter code ([`scan::token_deposits`])
//!   against `watched` addresses. In process: no RPC, so this is the
//!   client-side cost per block, not the node's.
//! * **Detection latency** (`p50_detect_ms`, `p99_detect_ms`): a real anvil
//!   with mining off; for each deposit the transaction is sent, the clock
//!   starts, `anvil_mine` mines it, and the clock stops when the watcher
//!   (WebSocket newHeads → block → receipt) emits `DepositSeen`. The clock
//!   includes anvil's mining call.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::map::AddressSet;
use alloy::primitives::{keccak256, Address, Bytes, LogData, B256, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::client::ClientBuilder;
use alloy::rpc::types::Log;
use molly_chains::gateway::DepositEvent;
use serde::Serialize;
use serde_json::json;

use crate::config::WatcherConfig;
use crate::error::EthError;
use crate::scan::{self, BlockMeta, TRANSFER_TOPIC};
use crate::watcher::EthWatcher;
use crate::watchset::WatchSet;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// Watched addresses.
    pub watched: u64,
    /// Synthetic blocks filtered.
    pub blocks: u64,
    /// Transfer logs per synthetic block.
    pub logs_per_block: u64,
    /// Deposits timed against anvil (0: skip the latency part).
    pub deposits: u64,
    /// The anvil binary (`MOLLY_ANVIL`).
    pub anvil: Option<PathBuf>,
}

/// The figures (JSON keys as named).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Watched addresses.
    pub watched: u64,
    /// Seconds to build the watched set.
    pub watchset_build_seconds: f64,
    /// Synthetic blocks filtered.
    pub blocks: u64,
    /// Transfer logs per block.
    pub logs_per_block: u64,
    /// Blocks checked and filtered per second.
    pub blocks_per_second: f64,
    /// Logs checked and filtered per second.
    pub logs_per_second: f64,
    /// Deposits found while filtering (a checksum of the work).
    pub deposits_found: u64,
    /// Deposits timed against anvil.
    pub detect_samples: u64,
    /// Median mined-to-event latency, ms.
    pub p50_detect_ms: f64,
    /// 99th percentile, ms.
    pub p99_detect_ms: f64,
    /// Worst, ms.
    pub max_detect_ms: f64,
    /// Median duration of the `anvil_mine` call alone (part of every sample), ms.
    pub p50_mine_call_ms: f64,
}

fn address(i: u64) -> Address {
    Address::from_word(keccak256(i.to_le_bytes()))
}

/// Runs both parts.
pub fn run(config: &BenchConfig) -> Result<Report, EthError> {
    let t = Instant::now();
    let mut set = AddressSet::default();
    set.reserve(config.watched as usize);
    set.extend((0..config.watched).map(address));
    let watchset_build_seconds = t.elapsed().as_secs_f64();

    let token = Address::repeat_byte(0x70);
    let tokens = HashMap::from([(token, 12)]);
    // Every log has its own sender and recipient (no address repeats across
    // blocks, so lookups miss the CPU caches as they would on mainnet); 1 in
    // 100 recipients is watched.
    let n_logs = config.logs_per_block;
    let mut blocks = Vec::with_capacity(config.blocks as usize);
    for n in 0..config.blocks {
        let meta = BlockMeta {
            number: n + 1,
            hash: keccak256(n.to_be_bytes()),
            parent_hash: B256::ZERO,
            timestamp: 0,
        };
        let logs: Vec<Log> = (0..n_logs)
            .map(|i| {
                let k = n * n_logs + i;
                let to = if k.is_multiple_of(100) {
                    address(
                        u64::from_le_bytes(keccak256(k.to_le_bytes())[..8].try_into().unwrap_or_default())
                            % config.watched.max(1),
                    )
                } else {
                    address(u64::MAX - k)
                };
                let data = LogData::new_unchecked(
                    vec![TRANSFER_TOPIC, address(u64::MAX / 2 - k).into_word(), to.into_word()],
                    Bytes::from(U256::from(1_000_000 + k).to_be_bytes::<32>().to_vec()),
                );
                Log {
                    inner: alloy::primitives::Log { address: token, data },
                    block_hash: Some(meta.hash),
                    block_number: Some(meta.number),
                    block_timestamp: None,
                    transaction_hash: Some(keccak256(k.to_be_bytes())),
                    transaction_index: Some(i),
                    log_index: Some(i),
                    removed: false,
                }
            })
            .collect();
        blocks.push((meta, logs));
    }
    let t = Instant::now();
    let mut deposits_found = 0u64;
    for (meta, logs) in &blocks {
        deposits_found += scan::token_deposits(meta, logs, &tokens, &set, u64::MAX)?.len() as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    drop(blocks);
    drop(set);

    let (mut samples, mut mine_calls) = (Vec::new(), Vec::new());
    if config.deposits > 0 {
        let anvil = config.anvil.clone().ok_or_else(|| {
            EthError::Config(
                "anvil not found: set MOLLY_ANVIL (scripts/setup/anvil.sh) or pass --anvil".into(),
            )
        })?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| EthError::Config(format!("tokio runtime: {e}")))?;
        (samples, mine_calls) = rt.block_on(latency(&anvil, config.deposits, config.watched))?;
    }
    mine_calls.sort_by(f64::total_cmp);
    let p50_mine_call_ms = mine_calls.get(mine_calls.len() / 2).copied().unwrap_or(0.0);
    samples.sort_by(f64::total_cmp);
    let pct = |p: f64| -> f64 {
        if samples.is_empty() {
            return 0.0;
        }
        let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i]
    };
    Ok(Report {
        watched: config.watched,
        watchset_build_seconds,
        blocks: config.blocks,
        logs_per_block: config.logs_per_block,
        blocks_per_second: config.blocks as f64 / secs,
        logs_per_second: (config.blocks * config.logs_per_block) as f64 / secs,
        deposits_found,
        detect_samples: samples.len() as u64,
        p50_detect_ms: pct(0.50),
        p99_detect_ms: pct(0.99),
        max_detect_ms: samples.last().copied().unwrap_or(0.0),
        p50_mine_call_ms,
    })
}

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn latency(
    anvil: &std::path::Path,
    deposits: u64,
    watched: u64,
) -> Result<(Vec<f64>, Vec<f64>), EthError> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| EthError::Config(format!("no free port: {e}")))?
        .port();
    let _node = Node(
        Command::new(anvil)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--no-mining"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| EthError::Config(format!("cannot start {}: {e}", anvil.display())))?,
    );
    let url = format!("http://127.0.0.1:{port}").parse().map_err(|e| EthError::Config(format!("{e}")))?;
    let rpc: RootProvider = RootProvider::new(ClientBuilder::default().http(url));
    let mut up = false;
    for _ in 0..300 {
        if rpc.get_block_number().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !up {
        return Err(EthError::Config("anvil did not answer within 15 s".into()));
    }
    let raw = |m: &'static str, p: serde_json::Value| {
        let rpc = rpc.clone();
        async move { rpc.raw_request::<_, serde_json::Value>(m.into(), p).await.map_err(|e| EthError::node(m, e)) }
    };
    let from: Address = raw("eth_accounts", json!([])).await?[0]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| EthError::bad("accounts", "no dev account"))?;
    let watch = WatchSet::new(watched.max(deposits));
    let targets: Vec<Address> = (0..deposits).map(address).collect();
    watch.add(&(0..watched.max(deposits)).map(address).collect::<Vec<_>>())?;
    let mut config = WatcherConfig::new(format!("ws://127.0.0.1:{port}"));
    config.confirmations_native = 1;
    config.reorg_window = 4;
    let (w, mut rx) = EthWatcher::spawn(config, watch)?;
    // Let the watcher subscribe and reach the head before timing.
    for _ in 0..300 {
        if w.progress().idle_at.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut samples = Vec::with_capacity(deposits as usize);
    let mut mine_calls = Vec::with_capacity(deposits as usize);
    for to in targets {
        raw("eth_sendTransaction", json!([{ "from": from, "to": to, "value": "0x1" }])).await?;
        let t = Instant::now();
        raw("anvil_mine", json!([1])).await?;
        mine_calls.push(t.elapsed().as_secs_f64() * 1e3);
        loop {
            let e = tokio::time::timeout(Duration::from_secs(30), rx.recv())
                .await
                .map_err(|_| EthError::Config("no deposit event within 30 s".into()))?
                .ok_or_else(|| EthError::Config("watcher stopped".into()))?;
            if matches!(e, DepositEvent::DepositSeen(_)) {
                break;
            }
        }
        samples.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok((samples, mine_calls))
}
