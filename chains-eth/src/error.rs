//! Errors of the Ethereum gateway.

/// Why watching or scanning failed. Every variant names what was being done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EthError {
    /// The node could not be reached, or an RPC call failed or answered with
    /// something that does not decode (wrong types, numbers over 256 bits,
    /// missing fields).
    #[error("eth node: {context}: {detail}")]
    Node {
        /// What was being asked.
        context: String,
        /// The transport's or decoder's message.
        detail: String,
    },
    /// The node answered, but the answer is inconsistent or hostile.
    #[error("eth node sent a bad {what}: {detail}")]
    BadResponse {
        /// What it sent (block, log, receipt).
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A branch switch deeper than the kept block hashes: the common ancestor
    /// is unknown, so orphaned deposits cannot be named. The watcher stops.
    #[error("eth reorg deeper than the {window} kept blocks (at block {at})")]
    ReorgTooDeep {
        /// Configured reorg window in blocks.
        window: u64,
        /// Height where the mismatch was found.
        at: u64,
    },
    /// A configured limit was hit.
    #[error("eth: limit reached: {what} (limit {limit})")]
    Limit {
        /// Which limit.
        what: &'static str,
        /// Its configured value.
        limit: u64,
    },
    /// The signer refused, failed, or returned a signature that does not
    /// recover to the wallet.
    #[error("eth signer: {0}")]
    Signer(String),
    /// The withdrawal journal could not be read or written.
    #[error("eth withdrawal journal: {0}")]
    Journal(String),
    /// The node has mined more transactions from the wallet than the journal
    /// records: the key is used elsewhere. Nothing is sent.
    #[error("eth nonce gap for {address}: the node has mined nonces up to {node}, the journal only up to {journal}")]
    NonceGap {
        /// The wallet.
        address: alloy::primitives::Address,
        /// Transactions the node has mined from it.
        node: u64,
        /// Next nonce per the journal.
        journal: u64,
    },
    /// A withdrawal request is not acceptable.
    #[error("eth withdrawal {id:?} rejected: {reason}")]
    Rejected {
        /// Its id.
        id: String,
        /// Why.
        reason: String,
    },
    /// No such withdrawal or transaction.
    #[error("eth withdrawal {0:?} is unknown")]
    Unknown(String),
    /// The configuration is not usable.
    #[error("eth config: {0}")]
    Config(String),
}

impl EthError {
    pub(crate) fn node(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        EthError::Node { context: context.into(), detail: err.to_string() }
    }

    pub(crate) fn bad(what: &'static str, detail: impl Into<String>) -> Self {
        EthError::BadResponse { what, detail: detail.into() }
    }
}

impl From<EthError> for molly_chains::gateway::GatewayError {
    fn from(e: EthError) -> Self {
        molly_chains::gateway::GatewayError::Node { chain: molly_chains::Chain::Eth, detail: e.to_string() }
    }
}
