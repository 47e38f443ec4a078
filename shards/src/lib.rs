//! # molly-shards: durability and the thread-per-core runtime
//!
//! **Owns**: the write-ahead journal format ([`journal`]), group commit and
//! recovery of one engine ([`durable::DurableLedger`]), incremental snapshots
//! and the transfer segment files that hold history beyond memory
//! ([`snapshot`]), the shard's I/O-free core ([`shard::ShardCore`]),
//! cross-shard two-phase transfers ([`cross`]), where accounts and
//! transfers live ([`route`]: partitioning, sharded hot system accounts with
//! a part on every shard), the rebalancer of those parts ([`rebalance`]) and
//! the thread-per-core runtime ([`runtime`]: pinned io_uring executors,
//! per-pair rings).
//!
//! **Must not**: change engine state except by applying journaled commands
//! (a group may be applied while its write is in flight; nothing it decides
//! leaves the shard before the write is durable, and a failed write stops the
//! shard), acknowledge a command before its journal entry is durable, or drop a
//! journal entry that may have been acknowledged (a corrupt entry with valid
//! entries after it stops recovery with the file and offset).
//!
//! ```text
//!  commands ─► GroupBuffer (entries, checksummed) ─► durable write (apply meanwhile) ─► outcomes
//!  open: journal ─► scan (validate, stop at the first bad entry) ─► replay ─► engine
//!                     └─ torn tail: cut · corrupt middle: refuse
//! ```
//!
//! **Limits**: an entry holds at most `batch_events_max` records; a group at
//! most `group_bytes_max` bytes ([`durable::GROUP_BYTES_MAX_DEFAULT`] = 8 MiB).
//!
//! ```
//! use molly_engine::{Account, Config};
//! use molly_shards::durable::{DurableLedger, Outcome, GROUP_BYTES_MAX_DEFAULT};
//! use molly_shards::journal::Command;
//!
//! let dir = std::env::temp_dir().join(format!("molly-doc-{}", std::process::id()));
//! let account = Account { id: 1, ledger: 1, code: 1, ..Account::default() };
//! {
//!     let mut ledger = DurableLedger::open(&dir, Config::default(), GROUP_BYTES_MAX_DEFAULT).unwrap();
//!     let outcomes = ledger.execute(&[Command::CreateAccounts(&[account])]).unwrap();
//!     assert!(matches!(&outcomes[0], Outcome::Accounts(r) if r[0].is_ok()));
//! }
//! // Reopening replays the journal: the account is back.
//! let ledger = DurableLedger::open(&dir, Config::default(), GROUP_BYTES_MAX_DEFAULT).unwrap();
//! assert_eq!(ledger.engine().accounts().len(), 1);
//! std::fs::remove_dir_all(&dir).unwrap();
//! ```

pub mod buggify;
pub mod cross;
pub mod durable;
pub mod journal;
pub mod journal_files;
pub mod layout;
pub mod metrics;
pub mod placement;
pub mod prealloc;
pub mod rebalance;
pub mod route;
pub mod runtime;
pub mod shard;
pub mod sim;
pub mod snapshot;
