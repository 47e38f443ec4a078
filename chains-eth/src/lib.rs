//! # molly-chain-eth: Molly's Ethereum gateway
//!
//! **Owns:** watching the operator's own Ethereum node for deposits to
//! Molly's addresses, event-driven (WebSocket `newHeads`), and reporting them
//! through the chain-gateway interface of `molly-chains`
//! ([`molly_chains::gateway::DepositEvent`]): seen, confirmations counting
//! up to a configured depth per asset, reverted when a reorg orphans the
//! block. Native ETH (top-level transaction value, successful receipts only)
//! and ERC-20 `Transfer` logs of configured token contracts. Also the hot
//! wallet's withdrawals ([`withdraw::EthWallet`]) and both behind
//! [`molly_chains::gateway::ChainGateway`] ([`EthGateway`]).
//!
//! **Must not:** poll balances; trust the node (every log is checked
//! before it can become a deposit, and a bad answer is an error, never an
//! event); confirm a deposit from a block that left the canonical branch;
//! hand-roll RLP, ABI or crypto (alloy does all of it); hold private keys
//! (signing goes through the hsm-bridge `Signer`); broadcast a withdrawal
//! before it is journaled.
//!
//! ```text
//!  node ──ws newHeads──▶ catch_up: head? ─▶ canonical hash at our tip == kept hash?
//!                                │            no ─▶ walk back to the common ancestor
//!                                │                  ─▶ DepositReverted for orphaned deposits
//!                                ▼
//!            for each block last+1..=head: eth_getBlockByNumber(full) ─▶ tx.to ∈ WatchSet? ─▶ receipt ok?
//!                                          eth_getLogs(blockHash, tokens, Transfer) ─▶ to ∈ WatchSet?
//!                                ▼
//!            Tracker: DepositSeen ─▶ DepositConfirmed{n} … n = depth ─▶ forgotten
//! ```
//!
//! **Limits** (all in [`config::WatcherConfig`]): watched addresses
//! (default 2M), kept block hashes (`reorg_window`, default 128, must exceed
//! every confirmation depth), logs per block, blocks per round, event
//! buffer, reconnect backoff, RPC timeout. Not seen: ETH moved by
//! contract-internal calls (needs traces, see docs/eth-gateway.md). The
//! watcher's position survives restarts when `state_path` is set
//! ([`persist`]). Withdrawals ([`withdraw`]): EIP-1559, signed through the
//! hsm-bridge `Signer`, journaled before broadcast, stuck ones replaced
//! automatically under the fee cap. Sweeps ([`sweep`]): ERC-20 and ETH
//! balances of many deposit addresses into the hot wallet, with exact gas
//! top-ups from a fee wallet and a worth-it rule on a configured price.
//!
//! ```
//! use molly_chain_eth::config::WatcherConfig;
//! use molly_chain_eth::watchset::WatchSet;
//!
//! let mut config = WatcherConfig::new("ws://127.0.0.1:8546");
//! config.confirmations_native = 12;
//! config.reorg_window = 12; // must exceed every depth
//! assert!(config.validate().unwrap_err().to_string().contains("reorg_window"));
//!
//! let watch = WatchSet::new(config.max_watched);
//! let addr: alloy::primitives::Address = "0x9858EfFD232B4033E47d90003D41EC34EcaEda94".parse().unwrap();
//! watch.add(&[addr]).unwrap();
//! assert!(watch.contains(&addr));
//! ```

pub mod bench;
pub mod bench_sweep;
pub mod config;
pub mod error;
pub mod fees;
pub mod gateway;
pub mod persist;
pub mod scan;
pub mod sweep;
pub mod tracker;
pub mod watcher;
pub mod watchset;
pub mod withdraw;

pub use error::EthError;
pub use gateway::EthGateway;
pub use watcher::{EthWatcher, Progress};
