//! The chain-gateway interface: what every chain (ETH, Tron, Solana,
//! Bitcoin) offers the rest of Molly, with no network code.
//!
//! A gateway watches a set of deposit addresses and reports deposits as
//! [`DepositEvent`]s; it submits withdrawals, signs them through the signer
//! and reports their [`WithdrawalStatus`] until final; it estimates fees and
//! reports its node's head and lag. Implementations live in their own crates
//! (`molly-chain-eth`, ...) so this one stays free of network dependencies.
//!
//! ```text
//!  node ──heads/blocks──▶ gateway ──DepositSeen──▶ DepositConfirmed{n}…──▶ (credited at depth)
//!                            │    ╰─(branch switch)─▶ DepositReverted
//!  ledger ──Withdrawal──▶ gateway ──sign (hsm-bridge)──▶ broadcast ──▶ Pending ▶ Mined{n} ▶ Final
//!                                                                      ╰▶ Replaced / Failed{reason}
//! ```
//!
//! **Money** is `u128` base units of the asset (wei, sun, lamports,
//! satoshis, token units); nothing here is a float. **Idempotency:** every
//! deposit event carries a [`DepositKey`] (chain, tx hash, index); a
//! consumer applies each (key, kind) at most once, and a gateway may repeat
//! an event after a restart or reconnect.

use std::fmt;

use crate::Chain;

/// Where a deposit sits inside its transaction. With the transaction hash it
/// identifies the deposit on its chain, whatever block it ends up in.
///
/// * ETH / Tron: the log index of the token `Transfer` event in its block,
///   or [`DepositKey::NATIVE`] for the transaction's own value.
/// * Bitcoin: the output index (vout).
/// * Solana: `instruction_index << 32 | inner_instruction_index` (inner
///   index `u32::MAX` for a top-level instruction).
pub type EventIndex = u64;

/// The identity of one deposit: (chain, tx hash, index). Two events with
/// the same key are about the same deposit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DepositKey {
    /// The chain.
    pub chain: Chain,
    /// The transaction hash in the chain's canonical text (ETH: `0x` + 64
    /// lower-case hex digits).
    pub tx_hash: String,
    /// See [`EventIndex`].
    pub index: EventIndex,
}

impl DepositKey {
    /// The index of a transaction's own (native coin) value on account
    /// chains, which has no log index.
    pub const NATIVE: EventIndex = u64::MAX;
}

impl fmt::Display for DepositKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.index == Self::NATIVE {
            write!(f, "{}:{}:native", self.chain, self.tx_hash)
        } else {
            write!(f, "{}:{}:{}", self.chain, self.tx_hash, self.index)
        }
    }
}

/// What is moved: the chain's native coin or a token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Asset {
    /// ETH, TRX, SOL, BTC.
    Native,
    /// A token by its contract (ETH: EIP-55 address, Tron: base58 address,
    /// Solana: mint address).
    Token(String),
}

impl fmt::Display for Asset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Asset::Native => f.write_str("native"),
            Asset::Token(contract) => f.write_str(contract),
        }
    }
}

/// A block on one branch of the chain.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BlockRef {
    /// Height.
    pub number: u64,
    /// Hash in the chain's canonical text.
    pub hash: String,
}

/// One deposit as found in a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deposit {
    /// Identity (chain, tx hash, index).
    pub key: DepositKey,
    /// Sender (for Bitcoin: the first input's address if standard, else empty).
    pub from: String,
    /// The watched address that received it.
    pub to: String,
    /// What arrived.
    pub asset: Asset,
    /// How much, in base units.
    pub amount: u128,
    /// The block it was found in.
    pub block: BlockRef,
}

/// What a gateway reports about deposits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DepositEvent {
    /// First seen in a block on the current branch (one confirmation).
    DepositSeen(Deposit),
    /// Its block is `confirmations` deep on the current branch (the block
    /// itself counts as 1). Reported as the count grows; `confirmations >=
    /// required` means final at the configured depth, after which the
    /// gateway stops tracking it.
    DepositConfirmed {
        /// The deposit, with the block it is confirmed in.
        deposit: Deposit,
        /// Depth of its block, 1-based.
        confirmations: u64,
        /// The configured depth for its asset.
        required: u64,
    },
    /// Its block left the current branch (reorg) before it was final.
    /// If the transaction is in the new branch, a fresh `DepositSeen`
    /// follows (same key, new block).
    DepositReverted(Deposit),
}

impl DepositEvent {
    /// The deposit the event is about.
    pub fn deposit(&self) -> &Deposit {
        match self {
            DepositEvent::DepositSeen(d) | DepositEvent::DepositReverted(d) => d,
            DepositEvent::DepositConfirmed { deposit, .. } => deposit,
        }
    }

    /// Whether this event makes the deposit final (confirmed at its depth).
    pub fn is_final(&self) -> bool {
        matches!(self, DepositEvent::DepositConfirmed { confirmations, required, .. } if confirmations >= required)
    }
}

/// How much to pay for a withdrawal's inclusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeePolicy {
    /// Cheap, may take several blocks (ETH: a low fee-history percentile).
    Economy,
    /// The usual case (ETH: median).
    Normal,
    /// Next block if possible (ETH: a high percentile).
    Urgent,
    /// An explicit price per fee unit (ETH: max fee per gas in wei,
    /// Bitcoin: sat/vB × 1000, Solana: micro-lamports per CU).
    Fixed {
        /// The price in the chain's fee unit.
        per_unit: u128,
    },
}

/// A withdrawal to submit. `id` makes submission idempotent: submitting the
/// same id again returns the first submission's status, never a second
/// transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WithdrawalRequest {
    /// Caller's idempotency id (1–64 bytes of `[A-Za-z0-9._-]`).
    pub id: String,
    /// The destination, already validated by [`crate::address::validate`].
    pub to: String,
    /// What to send.
    pub asset: Asset,
    /// How much, in base units (> 0).
    pub amount: u128,
    /// How much to pay in fees.
    pub fee: FeePolicy,
}

/// Where a withdrawal stands. `Final`, `Failed` and `Replaced` (when the
/// replacement is tracked under its own status) end it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WithdrawalStatus {
    /// Signed and broadcast, not yet in a block.
    Pending {
        /// The transaction now carrying it.
        tx_hash: String,
    },
    /// In a block on the current branch, not yet final.
    Mined {
        /// The transaction.
        tx_hash: String,
        /// Its block.
        block: BlockRef,
        /// Depth of its block, 1-based.
        confirmations: u64,
    },
    /// At the configured depth: done.
    Final {
        /// The transaction.
        tx_hash: String,
        /// Its block.
        block: BlockRef,
        /// The fee actually paid, in the native coin's base units.
        fee_paid: u128,
    },
    /// Superseded by another transaction (speed-up or cancel).
    Replaced {
        /// The transaction that was replaced.
        tx_hash: String,
        /// The one that replaced it.
        by: String,
    },
    /// Will not happen: reverted on chain, rejected by the node, or cancelled.
    Failed {
        /// The transaction, if one was broadcast.
        tx_hash: Option<String>,
        /// Why, in words (revert reason when the chain gives one).
        reason: String,
    },
}

/// A fee estimate for one transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeeEstimate {
    /// Price per fee unit (ETH: max fee per gas, wei).
    pub per_unit: u128,
    /// Priority part of `per_unit` where the chain has one (ETH: tip per gas).
    pub priority_per_unit: u128,
    /// Units the transfer uses (ETH: gas limit).
    pub units: u128,
    /// Upper bound of the fee, native base units (`per_unit * units`).
    pub max_total: u128,
}

/// The node's view of the chain and how far behind it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadStatus {
    /// The node's newest block.
    pub head: BlockRef,
    /// The newest block the gateway has processed.
    pub processed: u64,
    /// Seconds between the head block's timestamp and now (how far the node
    /// lags the network; large when the node is syncing or stuck).
    pub head_age_secs: u64,
}

impl HeadStatus {
    /// Blocks the gateway has yet to process.
    pub fn lag_blocks(&self) -> u64 {
        self.head.number.saturating_sub(self.processed)
    }
}

/// Why a gateway call failed. Chain crates wrap their own errors in
/// [`GatewayError::Node`] / [`GatewayError::Signer`] with context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GatewayError {
    /// The node could not be reached or answered badly.
    #[error("{chain} node: {detail}")]
    Node {
        /// The chain.
        chain: Chain,
        /// What went wrong.
        detail: String,
    },
    /// The signer refused or failed.
    #[error("{chain} signer: {detail}")]
    Signer {
        /// The chain.
        chain: Chain,
        /// What went wrong.
        detail: String,
    },
    /// The request is not acceptable (bad address, zero amount, unknown asset).
    #[error("{chain} withdrawal {id:?} rejected: {reason}")]
    Rejected {
        /// The chain.
        chain: Chain,
        /// The withdrawal id.
        id: String,
        /// Why.
        reason: String,
    },
    /// No withdrawal with that id.
    #[error("{chain} withdrawal {id:?} is unknown")]
    UnknownWithdrawal {
        /// The chain.
        chain: Chain,
        /// The id asked about.
        id: String,
    },
    /// A configured limit was hit.
    #[error("{chain}: limit reached: {what}")]
    Limit {
        /// The chain.
        chain: Chain,
        /// Which limit.
        what: String,
    },
}

/// One chain's gateway. Every method may be called concurrently.
///
/// Deposit events come out of [`ChainGateway::next_events`] in order per
/// deposit (seen, confirmed…, or reverted); after a restart or reconnect a
/// gateway may repeat events, never skip one. Consumers deduplicate by
/// (key, kind, block hash).
#[async_trait::async_trait]
pub trait ChainGateway: Send + Sync + fmt::Debug {
    /// The chain served.
    fn chain(&self) -> Chain;

    /// Adds deposit addresses to the watched set (idempotent). Fails with
    /// [`GatewayError::Limit`] past the configured maximum.
    async fn watch(&self, addresses: &[String]) -> Result<(), GatewayError>;

    /// Waits for deposit events and returns up to `max` of them (at least one).
    /// Calling it again acknowledges the previous batch: the caller has
    /// durably handled it, so a gateway that persists its position may move
    /// past those events (a batch not acknowledged before a crash is
    /// delivered again after the restart).
    async fn next_events(&self, max: usize) -> Result<Vec<DepositEvent>, GatewayError>;

    /// Signs and broadcasts a withdrawal (idempotent by `request.id`).
    async fn submit_withdrawal(&self, request: &WithdrawalRequest) -> Result<WithdrawalStatus, GatewayError>;

    /// The current status of a submitted withdrawal.
    async fn withdrawal_status(&self, id: &str) -> Result<WithdrawalStatus, GatewayError>;

    /// What sending `asset` would cost now under `policy`.
    async fn estimate_fee(&self, asset: &Asset, policy: FeePolicy) -> Result<FeeEstimate, GatewayError>;

    /// The node's head and the gateway's progress.
    async fn head(&self) -> Result<HeadStatus, GatewayError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deposit(index: EventIndex) -> Deposit {
        Deposit {
            key: DepositKey { chain: Chain::Eth, tx_hash: format!("0x{:064x}", 7), index },
            from: "0x1".into(),
            to: "0x2".into(),
            asset: Asset::Native,
            amount: u128::MAX,
            block: BlockRef { number: 9, hash: "0xab".into() },
        }
    }

    #[test]
    fn keys_name_native_transfers_and_logs_apart() {
        let native = deposit(DepositKey::NATIVE).key;
        let log = deposit(3).key;
        assert_ne!(native, log);
        assert!(native.to_string().ends_with(":native"));
        assert!(log.to_string().starts_with("eth:0x") && log.to_string().ends_with(":3"));
    }

    #[test]
    fn only_confirmations_at_depth_are_final() {
        let d = deposit(0);
        assert!(!DepositEvent::DepositSeen(d.clone()).is_final());
        let at = |confirmations| DepositEvent::DepositConfirmed {
            deposit: d.clone(),
            confirmations,
            required: 12,
        };
        assert!(!at(11).is_final());
        assert!(at(12).is_final());
        assert!(!DepositEvent::DepositReverted(d.clone()).is_final());
        assert_eq!(at(1).deposit().amount, u128::MAX);
    }

    #[test]
    fn lag_never_underflows() {
        let mut h =
            HeadStatus { head: BlockRef { number: 10, hash: String::new() }, processed: 7, head_age_secs: 0 };
        assert_eq!(h.lag_blocks(), 3);
        h.processed = 12;
        assert_eq!(h.lag_blocks(), 0);
    }
}
