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

/// Longest node error detail kept, bytes: alloy's decode errors append the
/// whole answer (a full block can be megabytes), which would flood logs on
/// every retry.
pub const MAX_ERROR_DETAIL: usize = 300;

/// The first line of `text`, at most [`MAX_ERROR_DETAIL`] bytes, with how much was cut.
pub(crate) fn clip(text: &str) -> String {
    let first = text.lines().next().unwrap_or("");
    let mut end = first.len().min(MAX_ERROR_DETAIL);
    while !first.is_char_boundary(end) {
        end -= 1;
    }
    let cut = text.len() - end;
    if cut == 0 {
        first.to_owned()
    } else {
        format!("{} [{cut} more bytes of the answer not shown]", &first[..end])
    }
}

impl EthError {
    pub(crate) fn node(context: impl Into<String>, err: impl std::fmt::Display) -> Self {
        EthError::Node { context: context.into(), detail: clip(&err.to_string()) }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_errors_keep_the_first_line_and_say_what_was_cut() {
        assert_eq!(clip("short"), "short");
        let long = format!("deserialization error: missing field `hash`\n{}", "x".repeat(5_000));
        let c = clip(&long);
        assert!(c.starts_with("deserialization error: missing field `hash` ["), "{c}");
        assert!(c.ends_with("5001 more bytes of the answer not shown]"), "{c}");
        let wide = "é".repeat(400);
        assert!(clip(&wide).len() < 400, "cut on a char boundary");
    }
}
