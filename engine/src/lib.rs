//! # molly-engine: the double-entry ledger state machine
//!
//! **Owns**: accounts, transfers (plain, two-phase, balancing, closing),
//! linked chains, logical time and pending-transfer expiry, account history
//! queries, the asset registry, and the invariants that make the ledger
//! trustworthy: per ledger, debits equal credits; no balance crosses its
//! flag's limit; no u128 overflow; timestamps strictly increase; an event
//! applied once is never applied again (re-sending it returns `exists`).
//!
//! **Must not**: do I/O, read a clock, spawn threads, or draw randomness.
//! Everything it does is a pure function of the commands it is given, in
//! order, so the shards can journal commands and replay them, and the
//! simulator can run it under a seed.
//!
//! ```text
//!   shard ── tick(now) ─────────────┐
//!         ── create_accounts(batch) ├─► Engine ──► one result code per event
//!         ── create_transfers(batch)┘     │        (ok, exists, exceeds_credits, ...)
//!         ── lookup / history queries ────┘──► records (128-byte, little-endian)
//! ```
//!
//! **Limits** (all in [`Config`], checked): events per batch
//! ([`config::BATCH_EVENTS_MAX_DEFAULT`] = 8190), accounts and transfers held
//! (memory for both indexes is reserved up front), results per query.
//! Rejections are result codes checked in a fixed order (see [`result`]);
//! `Err` is only for a batch over the limit or an invalid query, and then
//! nothing applies.
//!
//! **Records** ([`Account`], [`Transfer`], [`AccountFilter`],
//! [`AccountBalance`]) are 128-byte `#[repr(C)]` little-endian layouts: they
//! are also the wire and journal formats.
//!
//! ```
//! use molly_engine::{Account, Config, Engine, Transfer, AccountFlags, CreateTransferResult};
//!
//! let mut engine = Engine::new(Config::default()).unwrap();
//! let eth = 1; // ledger 1 is ETH in the built-in asset registry
//! let account = |id, flags| Account { id, ledger: eth, code: 1, flags, ..Account::default() };
//! let mut results = Vec::new();
//! engine
//!     .create_accounts(
//!         &[account(1, AccountFlags::NONE), account(2, AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)],
//!         &mut results,
//!     )
//!     .unwrap();
//! assert!(results.iter().all(|r| r.is_ok()));
//!
//! let transfer = |id, debit, credit, amount| Transfer {
//!     id, debit_account_id: debit, credit_account_id: credit, amount, ledger: eth, code: 1,
//!     ..Transfer::default()
//! };
//! let mut results = Vec::new();
//! engine
//!     .create_transfers(&[transfer(10, 1, 2, 500), transfer(11, 2, 1, 501), transfer(10, 1, 2, 500)], &mut results)
//!     .unwrap();
//! assert_eq!(
//!     results,
//!     [CreateTransferResult::Ok, CreateTransferResult::ExceedsCredits, CreateTransferResult::Exists]
//! );
//! let mut found = Vec::new();
//! engine.lookup_accounts(&[2], &mut found).unwrap();
//! assert_eq!(found[0].credits_posted, 500);
//! engine.check_invariants().unwrap();
//! ```

pub mod asset;
pub mod config;
mod engine;
mod index;
mod lists;
#[cfg(feature = "model")]
pub mod model;
mod prefault;
pub mod result;
pub mod store;
pub mod types;

pub use asset::{Asset, AssetError, AssetRegistry, Chain};
pub use config::{Config, ConfigError};
pub use engine::{
    BatchError, Engine, EngineState, ImportError, Importer, InvariantViolation, LedgerTotals, QueryError,
    SnapshotParts, TransferState, CLOCK_NS_MAX,
};
pub use index::IdIndex;
pub use result::{CreateAccountResult, CreateTransferResult};
pub use store::{Block, ColdBlock, TransferStore, BLOCK_TRANSFERS};
pub use types::{
    Account, AccountBalance, AccountCode, AccountFilter, AccountFilterFlags, AccountFlags, Transfer,
    TransferCode, TransferFlags,
};
