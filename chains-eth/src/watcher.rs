//! The event-driven driver: subscribe to new heads over WebSocket, scan
//! every block from the last processed one to the head (so a gap left by a
//! disconnect is re-scanned), detect branch switches by hash, emit events.
//!
//! With `WatcherConfig::state_path` set, the position survives restarts
//! ([`crate::persist`]): after every round the tracker's state is kept in
//! memory tagged with the number of events emitted so far, and the newest
//! state whose events the consumer has all acknowledged
//! ([`EthWatcher::ack`]) is written to disk. A restart resumes from it:
//! events the consumer had not acknowledged are emitted again (consumers
//! deduplicate), none is skipped.

use std::collections::{HashMap, VecDeque};
use std::fmt::Display;
use std::future::IntoFuture;
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
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::config::WatcherConfig;
use crate::error::EthError;
use crate::persist::StateFile;
use crate::scan::{self, BlockMeta, TRANSFER_TOPIC};
use crate::tracker::Tracker;
use crate::watchset::WatchSet;

/// What the watcher has seen of the chain, for head and lag reports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
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
    /// The last error that made the watcher retry (a node error, a bad
    /// answer, a timeout), for operators; `None` before the first.
    pub last_error: Option<String>,
    /// Events emitted so far (since this process started it).
    pub events_sent: u64,
    /// The `events_sent` count covered by the last position written to
    /// `state_path` (`None`: nothing written yet).
    pub checkpoint_at: Option<u64>,
}

/// A running watcher. Dropping it or the event receiver stops it; so does
/// [`EthWatcher::stop`], which first writes the position.
#[derive(Debug)]
pub struct EthWatcher {
    task: tokio::task::JoinHandle<Result<(), EthError>>,
    progress: Arc<Mutex<Progress>>,
    acked: watch::Sender<u64>,
    shutdown: watch::Sender<bool>,
    stop_timeout: Duration,
}

impl EthWatcher {
    /// Validates `config` and starts watching on the current tokio runtime.
    /// With `state_path` set and the file present, resumes from it (and
    /// `start_block` is ignored); a corrupt file is an error.
    pub fn spawn(
        config: WatcherConfig,
        watch: WatchSet,
    ) -> Result<(EthWatcher, mpsc::Receiver<DepositEvent>), EthError> {
        config.validate()?;
        let file = config.state_path.clone().map(StateFile::new);
        let tracker = match file.as_ref().map(StateFile::load).transpose()?.flatten() {
            Some(state) => {
                let t = Tracker::restore(config.reorg_window, &state)?;
                info!(tip = ?t.tip(), pending = t.pending_len(), "eth watcher resumes from its saved position");
                t
            }
            None => Tracker::new(config.reorg_window),
        };
        let (tx, rx) = mpsc::channel(config.event_buffer);
        let progress = Arc::new(Mutex::new(Progress::default()));
        let (acked, acked_rx) = watch::channel(0u64);
        let (shutdown, shutdown_rx) = watch::channel(false);
        let stop_timeout = config.rpc_timeout + Duration::from_secs(1);
        let durable = Durable { tracker, sent: 0, queue: VecDeque::new(), file };
        let control = Control { acked: acked_rx, shutdown: shutdown_rx };
        let task = tokio::spawn(run(config, watch, tx, progress.clone(), durable, control));
        Ok((EthWatcher { task, progress, acked, shutdown, stop_timeout }, rx))
    }

    /// The watcher's progress.
    pub fn progress(&self) -> Progress {
        self.progress.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Tells the watcher that the consumer has durably handled `events`
    /// more events (in the order received). Only positions whose events are
    /// all acknowledged are written to `state_path`. Without a
    /// `state_path`, acknowledgements are not needed.
    pub fn ack(&self, events: u64) {
        self.acked.send_modify(|n| *n += events);
    }

    /// Whether the watcher stopped (on a fatal error or a dropped receiver).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the watcher: it writes its last acknowledged position and
    /// ends. If it does not end within `rpc_timeout` + 1 s it is aborted
    /// (the position on disk is then an older one: events are repeated
    /// after a restart, never skipped).
    pub async fn stop(mut self) -> Result<(), EthError> {
        let _ = self.shutdown.send(true);
        match tokio::time::timeout(self.stop_timeout, &mut self.task).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Ok(()),
            Err(_) => {
                self.task.abort();
                Ok(())
            }
        }
    }
}

/// The tracker and what makes it durable.
struct Durable {
    tracker: Tracker,
    /// Events sent to the channel so far.
    sent: u64,
    /// Encoded positions not yet written, tagged with `sent` at the time
    /// (ascending, at most [`MAX_UNWRITTEN_POSITIONS`]).
    queue: VecDeque<(u64, Vec<u8>)>,
    file: Option<StateFile>,
}

/// Positions kept in memory while the consumer has not acknowledged their
/// events; the oldest is dropped beyond this (a later one is written instead).
const MAX_UNWRITTEN_POSITIONS: usize = 64;

impl Durable {
    /// Keeps the current position (after a round) for writing once acknowledged.
    fn offer(&mut self) -> Result<(), EthError> {
        if self.file.is_none() {
            return Ok(());
        }
        let bytes = StateFile::encode(&self.tracker.snapshot())?;
        if self.queue.back().is_some_and(|(n, _)| *n == self.sent) {
            self.queue.pop_back();
        }
        self.queue.push_back((self.sent, bytes));
        while self.queue.len() > MAX_UNWRITTEN_POSITIONS {
            self.queue.pop_front();
        }
        Ok(())
    }

    /// Writes the newest position whose events are all acknowledged.
    fn flush(&mut self, acked: u64, progress: &Mutex<Progress>) -> Result<(), EthError> {
        let Some(file) = &self.file else { return Ok(()) };
        let Some(i) = self.queue.iter().rposition(|(n, _)| *n <= acked) else { return Ok(()) };
        let (n, bytes) = &self.queue[i];
        file.store(bytes)?;
        progress.lock().unwrap_or_else(|e| e.into_inner()).checkpoint_at = Some(*n);
        self.queue.drain(..=i);
        Ok(())
    }
}

/// The handle's signals to the task.
struct Control {
    acked: watch::Receiver<u64>,
    shutdown: watch::Receiver<bool>,
}

impl Control {
    fn stopping(&self) -> bool {
        *self.shutdown.borrow() || self.shutdown.has_changed().is_err()
    }
}

/// Why a session ended.
enum End {
    /// The event receiver or the handle is gone, or a stop was asked.
    Closed,
    /// Retry after backoff.
    Retry(EthError),
    /// Give up.
    Fatal(EthError),
}

impl From<EthError> for End {
    fn from(e: EthError) -> Self {
        match e {
            // A position that cannot be written stops the watcher, visibly.
            EthError::ReorgTooDeep { .. } | EthError::Config(_) | EthError::Journal(_) => End::Fatal(e),
            e => End::Retry(e),
        }
    }
}

async fn run(
    config: WatcherConfig,
    watch: WatchSet,
    tx: mpsc::Sender<DepositEvent>,
    progress: Arc<Mutex<Progress>>,
    mut durable: Durable,
    mut control: Control,
) -> Result<(), EthError> {
    let tokens = config.token_depths();
    let mut backoff = config.backoff_min;
    loop {
        let session =
            Session { config: &config, watch: &watch, tokens: &tokens, tx: &tx, progress: &progress };
        match session.run(&mut durable, &mut control, &mut backoff).await {
            End::Closed => {
                let acked = *control.acked.borrow();
                return durable.flush(acked, &progress);
            }
            End::Fatal(e) => {
                warn!(error = %e, "eth watcher stopped");
                return Err(e);
            }
            End::Retry(e) => {
                warn!(error = %e, delay_ms = backoff.as_millis() as u64, "eth watcher reconnecting");
                {
                    let mut p = progress.lock().unwrap_or_else(|e| e.into_inner());
                    p.reconnects += 1;
                    p.last_error = Some(e.to_string());
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = control.shutdown.changed() => {
                        let acked = *control.acked.borrow();
                        return durable.flush(acked, &progress);
                    }
                }
                backoff = (backoff * 2).min(config.backoff_max);
            }
        }
    }
}

/// Awaits an RPC call for at most `limit`; errors and silence become `EthError::Node`.
async fn rpc<T, E: Display>(
    limit: Duration,
    what: impl FnOnce() -> String,
    call: impl IntoFuture<Output = Result<T, E>>,
) -> Result<T, EthError> {
    match tokio::time::timeout(limit, call.into_future()).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(EthError::node(what(), e)),
        Err(_) => {
            Err(EthError::node(what(), format!("no answer within {} ms (rpc_timeout)", limit.as_millis())))
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
    async fn run(&self, d: &mut Durable, control: &mut Control, backoff: &mut Duration) -> End {
        let limit = self.config.rpc_timeout;
        let url = &self.config.ws_url;
        let client = match rpc(
            limit,
            || format!("connect {url}"),
            ClientBuilder::default().pubsub(WsConnect::new(url.clone())),
        )
        .await
        {
            Ok(c) => c,
            Err(e) => return End::Retry(e),
        };
        let provider = RootProvider::<Ethereum>::new(client);
        let mut heads =
            match rpc(limit, || "eth_subscribe newHeads".into(), provider.subscribe_blocks()).await {
                Ok(s) => s,
                Err(e) => return End::Retry(e),
            };
        info!(url = %self.config.ws_url, "eth watcher connected");
        loop {
            if let Err(end) = self.catch_up(&provider, d, control).await {
                return end;
            }
            *backoff = self.config.backoff_min;
            if let Err(e) = d.offer() {
                return End::Fatal(e);
            }
            let acked = *control.acked.borrow_and_update();
            if let Err(e) = d.flush(acked, self.progress) {
                return End::Fatal(e);
            }
            // Wait for the next head; write positions as acknowledgements arrive.
            let deadline = tokio::time::Instant::now() + self.config.head_timeout;
            loop {
                tokio::select! {
                    r = heads.recv() => match r {
                        Ok(header) => { debug!(number = header.number, "new head"); break; }
                        Err(e) => return End::Retry(EthError::node("newHeads subscription", e)),
                    },
                    () = tokio::time::sleep_until(deadline) => {
                        debug!("no new head within head_timeout; polling");
                        break;
                    }
                    r = control.acked.changed() => {
                        if r.is_err() {
                            return End::Closed;
                        }
                        let acked = *control.acked.borrow_and_update();
                        if let Err(e) = d.flush(acked, self.progress) {
                            return End::Fatal(e);
                        }
                    }
                    _ = control.shutdown.changed() => return End::Closed,
                }
            }
        }
    }

    /// Scans from the last processed block to the node's head.
    async fn catch_up(&self, p: &RootProvider, d: &mut Durable, control: &Control) -> Result<(), End> {
        let limit = self.config.rpc_timeout;
        loop {
            if control.stopping() {
                return Err(End::Closed);
            }
            let head = rpc(limit, || "eth_blockNumber".into(), p.get_block_number()).await?;
            self.progress.lock().unwrap_or_else(|e| e.into_inner()).node_head = head;
            let next = match d.tracker.tip() {
                None => self.config.start_block.unwrap_or(head),
                Some((tip, _)) => {
                    let ancestor = self.find_ancestor(p, &d.tracker, head.min(tip)).await?;
                    if ancestor < tip {
                        info!(ancestor, tip, "eth branch switch");
                        let events = d.tracker.rewind(ancestor);
                        self.send(&mut d.sent, events).await?;
                    }
                    ancestor + 1
                }
            };
            if next > head {
                self.progress.lock().unwrap_or_else(|e| e.into_inner()).idle_at =
                    d.tracker.tip().map(|(n, _)| n);
                return Ok(());
            }
            let end = head.min(next + self.config.max_blocks_per_round - 1);
            for number in next..=end {
                if control.stopping() {
                    return Err(End::Closed);
                }
                let block = fetch_block(p, number, limit).await?;
                let meta = meta_of(&block);
                if d.tracker.tip().is_some_and(|(_, hash)| meta.parent_hash != hash) {
                    // The branch changed under us: the next round finds the ancestor.
                    break;
                }
                let found = self.scan(p, &meta, &block).await?;
                let events = d.tracker.push(meta, found)?;
                self.progress.lock().unwrap_or_else(|e| e.into_inner()).processed = Some(number);
                self.send(&mut d.sent, events).await?;
            }
            let events = d.tracker.confirm();
            self.send(&mut d.sent, events).await?;
            // A long catch-up (many rounds) keeps its position durable as it goes.
            d.offer()?;
            let acked = *control.acked.borrow();
            d.flush(acked, self.progress)?;
        }
    }

    /// The newest kept height at or below `from` whose hash the node still
    /// has on its canonical chain.
    async fn find_ancestor(&self, p: &RootProvider, tracker: &Tracker, from: u64) -> Result<u64, End> {
        let oldest = tracker.floor().unwrap_or(from);
        let mut number = from;
        loop {
            let canonical = fetch_header_hash(p, number, self.config.rpc_timeout).await?;
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
            let receipt = rpc(
                self.config.rpc_timeout,
                || format!("eth_getTransactionReceipt {:#x}", c.tx_hash),
                p.get_transaction_receipt(c.tx_hash),
            )
            .await?
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
            let logs = rpc(
                self.config.rpc_timeout,
                || format!("eth_getLogs block {}", meta.number),
                p.get_logs(&filter),
            )
            .await?;
            let tokens = self.watch.with(|w| {
                scan::token_deposits(meta, &logs, self.tokens, w, self.config.max_logs_per_block)
            })?;
            found.extend(tokens);
        }
        Ok(found)
    }

    async fn send(&self, sent: &mut u64, events: Vec<DepositEvent>) -> Result<(), End> {
        for e in events {
            self.tx.send(e).await.map_err(|_| End::Closed)?;
            *sent += 1;
        }
        self.progress.lock().unwrap_or_else(|e| e.into_inner()).events_sent = *sent;
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

async fn fetch_block(p: &RootProvider, number: u64, limit: Duration) -> Result<Block, EthError> {
    let block = rpc(
        limit,
        || format!("eth_getBlockByNumber {number}"),
        p.get_block_by_number(BlockNumberOrTag::Number(number)).full().into_future(),
    )
    .await?
    .ok_or_else(|| EthError::bad("block", format!("block {number} is missing below the head")))?;
    if block.header.number != number {
        return Err(EthError::bad("block", format!("asked for block {number}, got {}", block.header.number)));
    }
    Ok(block)
}

async fn fetch_header_hash(
    p: &RootProvider,
    number: u64,
    limit: Duration,
) -> Result<alloy::primitives::B256, EthError> {
    let block = rpc(
        limit,
        || format!("eth_getBlockByNumber {number}"),
        p.get_block_by_number(BlockNumberOrTag::Number(number)).into_future(),
    )
    .await?
    .ok_or_else(|| EthError::bad("block", format!("block {number} is missing below the head")))?;
    if block.header.number != number {
        return Err(EthError::bad("block", format!("asked for block {number}, got {}", block.header.number)));
    }
    Ok(block.header.hash)
}
