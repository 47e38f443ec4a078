//! The event-driven driver: subscribe to new heads over WebSocket, scan
//! every block from the last processed one to the head (so a gap left by a
//! disconnect is re-scanned), detect branch switches by hash, emit events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use alloy::eips::BlockNumberOrTag;
use alloy::network::Ethereum;
use alloy::primitives::Address;
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::client::ClientBuilder;
use alloy::rpc::types::{Block, Filter};
use alloy::transports::ws::WsConnect;
use molly_chains::gateway::DepositEvent;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::config::WatcherConfig;
use crate::error::EthError;
use crate::scan::{self, BlockMeta, TRANSFER_TOPIC};
use crate::tracker::Tracker;
use crate::watchset::WatchSet;

/// What the watcher has seen of the chain, for head and lag reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// The node's head height at the last look.
    pub node_head: u64,
    /// The newest block scanned.
    pub processed: Option<u64>,
    /// Reconnections so far.
    pub reconnects: u64,
    /// The height the watcher last caught up to with every event of it
    /// delivered to the channel (it then waits for the next head).
    pub idle_at: Option<u64>,
}

/// A running watcher. Dropping the event receiver stops it; so does [`EthWatcher::stop`].
#[derive(Debug)]
pub struct EthWatcher {
    task: tokio::task::JoinHandle<Result<(), EthError>>,
    progress: Arc<Mutex<Progress>>,
}

impl EthWatcher {
    /// Validates `config` and starts watching on the current tokio runtime.
    pub fn spawn(
        config: WatcherConfig,
        watch: WatchSet,
    ) -> Result<(EthWatcher, mpsc::Receiver<DepositEvent>), EthError> {
        config.validate()?;
        let (tx, rx) = mpsc::channel(config.event_buffer);
        let progress = Arc::new(Mutex::new(Progress::default()));
        let task = tokio::spawn(run(config, watch, tx, progress.clone()));
        Ok((EthWatcher { task, progress }, rx))
    }

    /// The watcher's progress.
    pub fn progress(&self) -> Progress {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the watcher stopped (on a fatal error or a dropped receiver).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the watcher and returns how it ended.
    pub async fn stop(self) -> Result<(), EthError> {
        self.task.abort();
        match self.task.await {
            Ok(r) => r,
            Err(_) => Ok(()),
        }
    }
}

/// Why a session ended.
enum End {
    /// The event receiver is gone.
    Closed,
    /// Retry after backoff.
    Retry(EthError),
    /// Give up.
    Fatal(EthError),
}

impl From<EthError> for End {
    fn from(e: EthError) -> Self {
        match e {
            EthError::ReorgTooDeep { .. } | EthError::Config(_) => End::Fatal(e),
            e => End::Retry(e),
        }
    }
}

async fn run(
    config: WatcherConfig,
    watch: WatchSet,
    tx: mpsc::Sender<DepositEvent>,
    progress: Arc<Mutex<Progress>>,
) -> Result<(), EthError> {
    let mut tracker = Tracker::new(config.reorg_window);
    let tokens = config.token_depths();
    let mut backoff = config.backoff_min;
    loop {
        let session =
            Session { config: &config, watch: &watch, tokens: &tokens, tx: &tx, progress: &progress };
        match session.run(&mut tracker, &mut backoff).await {
            End::Closed => return Ok(()),
            End::Fatal(e) => {
                warn!(error = %e, "eth watcher stopped");
                return Err(e);
            }
            End::Retry(e) => {
                warn!(error = %e, delay_ms = backoff.as_millis() as u64, "eth watcher reconnecting");
                progress.lock().unwrap_or_else(|e| e.into_inner()).reconnects += 1;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.backoff_max);
            }
        }
    }
}

struct Session<'a> {
    config: &'a WatcherConfig,
    watch: &'a WatchSet,
    tokens: &'a HashMap<Address, u64>,
    tx: &'a mpsc::Sender<DepositEvent>,
    progress: &'a Mutex<Progress>,
}

impl Session<'_> {
    async fn run(&self, tracker: &mut Tracker, backoff: &mut Duration) -> End {
        let client = match ClientBuilder::default().pubsub(WsConnect::new(self.config.ws_url.clone())).await {
            Ok(c) => c,
            Err(e) => return End::Retry(EthError::node(format!("connect {}", self.config.ws_url), e)),
        };
        let provider = RootProvider::<Ethereum>::new(client);
        let mut heads = match provider.subscribe_blocks().await {
            Ok(s) => s,
            Err(e) => return End::Retry(EthError::node("eth_subscribe newHeads", e)),
        };
        info!(url = %self.config.ws_url, "eth watcher connected");
        loop {
            if let Err(end) = self.catch_up(&provider, tracker).await {
                return end;
            }
            *backoff = self.config.backoff_min;
            match tokio::time::timeout(self.config.head_timeout, heads.recv()).await {
                Ok(Ok(header)) => debug!(number = header.number, "new head"),
                Ok(Err(e)) => return End::Retry(EthError::node("newHeads subscription", e)),
                Err(_) => debug!("no new head within head_timeout; polling"),
            }
        }
    }

    /// Scans from the last processed block to the node's head.
    async fn catch_up(&self, p: &RootProvider, tracker: &mut Tracker) -> Result<(), End> {
        loop {
            let head = p.get_block_number().await.map_err(|e| EthError::node("eth_blockNumber", e))?;
            self.progress.lock().unwrap_or_else(|e| e.into_inner()).node_head = head;
            let next = match tracker.tip() {
                None => self.config.start_block.unwrap_or(head),
                Some((tip, _)) => {
                    let ancestor = self.find_ancestor(p, tracker, head.min(tip)).await?;
                    if ancestor < tip {
                        info!(ancestor, tip, "eth branch switch");
                        self.send(tracker.rewind(ancestor)).await?;
                    }
                    ancestor + 1
                }
            };
            if next > head {
                self.progress.lock().unwrap_or_else(|e| e.into_inner()).idle_at =
                    tracker.tip().map(|(n, _)| n);
                return Ok(());
            }
            let end = head.min(next + self.config.max_blocks_per_round - 1);
            for number in next..=end {
                let block = fetch_block(p, number).await?;
                let meta = meta_of(&block);
                if tracker.tip().is_some_and(|(_, hash)| meta.parent_hash != hash) {
                    // The branch changed under us: the next round finds the ancestor.
                    break;
                }
                let found = self.scan(p, &meta, &block).await?;
                let events = tracker.push(meta, found)?;
                self.progress.lock().unwrap_or_else(|e| e.into_inner()).processed = Some(number);
                self.send(events).await?;
            }
            self.send(tracker.confirm()).await?;
        }
    }

    /// The newest kept height at or below `from` whose hash the node still
    /// has on its canonical chain.
    async fn find_ancestor(&self, p: &RootProvider, tracker: &Tracker, from: u64) -> Result<u64, End> {
        let oldest = tracker.floor().unwrap_or(from);
        let mut number = from;
        loop {
            let canonical = fetch_header_hash(p, number).await?;
            if tracker.hash_at(number) == Some(canonical) {
                return Ok(number);
            }
            if number <= oldest {
                return Err(End::Fatal(EthError::ReorgTooDeep {
                    window: self.config.reorg_window,
                    at: from,
                }));
            }
            number -= 1;
        }
    }

    async fn scan(
        &self,
        p: &RootProvider,
        meta: &BlockMeta,
        block: &Block,
    ) -> Result<Vec<scan::Found>, EthError> {
        let Some(txs) = block.transactions.as_transactions() else {
            return Err(EthError::bad(
                "block",
                format!("block {} came without full transactions", meta.number),
            ));
        };
        let candidates = self.watch.with(|w| scan::native_candidates(txs, w));
        let mut found = Vec::new();
        for c in &candidates {
            let receipt = p
                .get_transaction_receipt(c.tx_hash)
                .await
                .map_err(|e| EthError::node(format!("eth_getTransactionReceipt {:#x}", c.tx_hash), e))?
                .ok_or_else(|| EthError::bad("receipt", format!("no receipt for {:#x}", c.tx_hash)))?;
            if receipt.block_hash != Some(meta.hash) {
                return Err(EthError::bad(
                    "receipt",
                    format!(
                        "receipt of {:#x} is for block {:?}, not {:#x}",
                        c.tx_hash, receipt.block_hash, meta.hash
                    ),
                ));
            }
            if receipt.status() {
                found.push(scan::native_deposit(meta, c, self.config.confirmations_native)?);
            }
        }
        if !self.tokens.is_empty() {
            let filter = Filter::new()
                .at_block_hash(meta.hash)
                .address(self.tokens.keys().copied().collect::<Vec<_>>())
                .event_signature(TRANSFER_TOPIC);
            let logs = p
                .get_logs(&filter)
                .await
                .map_err(|e| EthError::node(format!("eth_getLogs block {}", meta.number), e))?;
            let tokens = self.watch.with(|w| {
                scan::token_deposits(meta, &logs, self.tokens, w, self.config.max_logs_per_block)
            })?;
            found.extend(tokens);
        }
        Ok(found)
    }

    async fn send(&self, events: Vec<DepositEvent>) -> Result<(), End> {
        for e in events {
            self.tx.send(e).await.map_err(|_| End::Closed)?;
        }
        Ok(())
    }
}

fn meta_of(block: &Block) -> BlockMeta {
    BlockMeta {
        number: block.header.number,
        hash: block.header.hash,
        parent_hash: block.header.parent_hash,
        timestamp: block.header.timestamp,
    }
}

async fn fetch_block(p: &RootProvider, number: u64) -> Result<Block, EthError> {
    let block = p
        .get_block_by_number(BlockNumberOrTag::Number(number))
        .full()
        .await
        .map_err(|e| EthError::node(format!("eth_getBlockByNumber {number}"), e))?
        .ok_or_else(|| EthError::bad("block", format!("block {number} is missing below the head")))?;
    if block.header.number != number {
        return Err(EthError::bad("block", format!("asked for block {number}, got {}", block.header.number)));
    }
    Ok(block)
}

async fn fetch_header_hash(p: &RootProvider, number: u64) -> Result<alloy::primitives::B256, EthError> {
    let block = p
        .get_block_by_number(BlockNumberOrTag::Number(number))
        .await
        .map_err(|e| EthError::node(format!("eth_getBlockByNumber {number}"), e))?
        .ok_or_else(|| EthError::bad("block", format!("block {number} is missing below the head")))?;
    if block.header.number != number {
        return Err(EthError::bad("block", format!("asked for block {number}, got {}", block.header.number)));
    }
    Ok(block.header.hash)
}
