//! What the operator configures for the Ethereum watcher, with the defaults
//! documented in docs/eth-gateway.md.

use std::collections::HashMap;
use std::time::Duration;

use alloy::primitives::Address;

use crate::error::EthError;

/// Default confirmation depth for ETH (blocks, the deposit's own counted).
pub const DEFAULT_CONFIRMATIONS_NATIVE: u64 = 12;
/// Default confirmation depth for a token without its own setting.
pub const DEFAULT_CONFIRMATIONS_TOKEN: u64 = 12;
/// Default number of recent block hashes kept for reorg detection.
pub const DEFAULT_REORG_WINDOW: u64 = 128;
/// Default most watched addresses.
pub const DEFAULT_MAX_WATCHED: u64 = 2_000_000;

/// A token the watcher recognises. Logs from any other contract are ignored,
/// whatever they claim to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenConfig {
    /// The ERC-20 contract.
    pub contract: Address,
    /// Confirmation depth for this token (`None`: the token default).
    pub confirmations: Option<u64>,
}

/// The watcher's configuration. Every limit is here.
#[derive(Debug, Clone)]
pub struct WatcherConfig {
    /// The node's WebSocket endpoint (`ws://127.0.0.1:8546`). No TLS: the
    /// operator's own node on loopback or a private network.
    pub ws_url: String,
    /// Depth at which an ETH deposit is final.
    pub confirmations_native: u64,
    /// Depth at which a token deposit is final unless the token says otherwise.
    pub confirmations_token: u64,
    /// Tokens to watch.
    pub tokens: Vec<TokenConfig>,
    /// Recent block hashes kept; must exceed every confirmation depth, so a
    /// reorg that could orphan a not-yet-final deposit is always seen.
    pub reorg_window: u64,
    /// Most addresses in the watched set.
    pub max_watched: u64,
    /// First block to scan (`None`: the node's head when the watcher starts).
    pub start_block: Option<u64>,
    /// Most blocks scanned per head notification before events are flushed.
    pub max_blocks_per_round: u64,
    /// Most logs accepted for one block (a block full of 100-byte Transfer
    /// logs at 60M gas holds under 30K).
    pub max_logs_per_block: u64,
    /// Reconnect backoff: first delay, doubled up to `backoff_max`.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// With no new head for this long the watcher polls the head itself
    /// (a silent subscription is treated as a lost one).
    pub head_timeout: Duration,
    /// Capacity of the event channel (the watcher waits when it is full).
    pub event_buffer: usize,
    /// Longest wait for one answer from the node (connect, subscribe, each
    /// call); silence beyond it is an error and the watcher reconnects.
    pub rpc_timeout: Duration,
    /// Where the watcher keeps its position (`None`: in memory only; a
    /// restart begins at `start_block`). See [`crate::persist`].
    pub state_path: Option<std::path::PathBuf>,
}

impl WatcherConfig {
    /// Defaults for `ws_url`.
    pub fn new(ws_url: impl Into<String>) -> Self {
        WatcherConfig {
            ws_url: ws_url.into(),
            confirmations_native: DEFAULT_CONFIRMATIONS_NATIVE,
            confirmations_token: DEFAULT_CONFIRMATIONS_TOKEN,
            tokens: Vec::new(),
            reorg_window: DEFAULT_REORG_WINDOW,
            max_watched: DEFAULT_MAX_WATCHED,
            start_block: None,
            max_blocks_per_round: 1_000,
            max_logs_per_block: 50_000,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            head_timeout: Duration::from_secs(30),
            event_buffer: 4_096,
            rpc_timeout: Duration::from_secs(30),
            state_path: None,
        }
    }

    /// Checks the limits against each other.
    pub fn validate(&self) -> Result<(), EthError> {
        // Depth of every asset watched: ETH, and each token (its own or the token default).
        let depths: Vec<u64> = std::iter::once(self.confirmations_native)
            .chain(self.tokens.iter().map(|t| t.confirmations.unwrap_or(self.confirmations_token)))
            .collect();
        if depths.contains(&0) || self.confirmations_token == 0 {
            return Err(EthError::Config("a confirmation depth of 0 would credit unmined deposits".into()));
        }
        let deepest = depths.iter().copied().max().unwrap_or(0);
        if self.reorg_window <= deepest {
            return Err(EthError::Config(format!(
                "reorg_window ({}) must exceed the deepest confirmation depth ({deepest})",
                self.reorg_window
            )));
        }
        if self.max_blocks_per_round == 0 || self.max_logs_per_block == 0 || self.event_buffer == 0 {
            return Err(EthError::Config(
                "max_blocks_per_round, max_logs_per_block and event_buffer must be > 0".into(),
            ));
        }
        if self.rpc_timeout.is_zero() {
            return Err(EthError::Config("rpc_timeout must be > 0".into()));
        }
        if self.backoff_min.is_zero() || self.backoff_max < self.backoff_min {
            return Err(EthError::Config("backoff_min must be > 0 and <= backoff_max".into()));
        }
        Ok(())
    }

    /// Depth per token contract, defaults applied.
    pub(crate) fn token_depths(&self) -> HashMap<Address, u64> {
        self.tokens
            .iter()
            .map(|t| (t.contract, t.confirmations.unwrap_or(self.confirmations_token)))
            .collect()
    }
}
