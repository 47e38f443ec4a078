//! Turning one block's transactions, receipts and logs into deposits. Pure:
//! every input comes from the node and is checked here before it can become
//! a deposit; anything inconsistent is an error, never an event.

use std::collections::HashMap;

use alloy::consensus::Transaction as _;
use alloy::primitives::map::AddressSet;
use alloy::primitives::{Address, B256, U256};
use alloy::rpc::types::{Log, Transaction};
use alloy::sol_types::SolEvent;
use molly_chains::gateway::{Asset, BlockRef, Deposit, DepositKey};
use molly_chains::Chain;

use crate::error::EthError;

alloy::sol! {
    /// The ERC-20 `Transfer` event.
    #[derive(Debug)]
    event Transfer(address indexed from, address indexed to, uint256 value);
}

/// The ERC-20 `Transfer(address,address,uint256)` topic.
pub const TRANSFER_TOPIC: B256 = Transfer::SIGNATURE_HASH;

/// The parts of a block header the watcher keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockMeta {
    /// Height.
    pub number: u64,
    /// Hash.
    pub hash: B256,
    /// Parent's hash.
    pub parent_hash: B256,
    /// Unix seconds.
    pub timestamp: u64,
}

impl BlockMeta {
    /// As the gateway interface's block reference.
    pub fn to_ref(&self) -> BlockRef {
        BlockRef { number: self.number, hash: format!("{:#x}", self.hash) }
    }
}

/// A deposit found in a block, with the depth it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The deposit.
    pub deposit: Deposit,
    /// Its asset's configured confirmation depth.
    pub required: u64,
}

/// A native transfer to a watched address, pending its receipt's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NativeCandidate {
    /// Transaction hash.
    pub tx_hash: B256,
    /// Sender.
    pub from: Address,
    /// Watched recipient.
    pub to: Address,
    /// Wei.
    pub value: U256,
}

/// Top-level value transfers to watched addresses in `txs`. (ETH moved by
/// contract-internal calls is not in the transaction list: it needs traces.)
pub fn native_candidates<'a>(
    txs: impl IntoIterator<Item = &'a Transaction>,
    watch: &AddressSet,
) -> Vec<NativeCandidate> {
    txs.into_iter()
        .filter_map(|tx| {
            let to = tx.to()?;
            let value = tx.value();
            (!value.is_zero() && watch.contains(&to)).then(|| NativeCandidate {
                tx_hash: *tx.inner.tx_hash(),
                from: tx.inner.signer(),
                to,
                value,
            })
        })
        .collect()
}

/// A native deposit from a candidate whose transaction succeeded.
pub fn native_deposit(block: &BlockMeta, c: &NativeCandidate, required: u64) -> Result<Found, EthError> {
    Ok(Found {
        deposit: Deposit {
            key: DepositKey {
                chain: Chain::Eth,
                tx_hash: format!("{:#x}", c.tx_hash),
                index: DepositKey::NATIVE,
            },
            from: c.from.to_checksum(None),
            to: c.to.to_checksum(None),
            asset: Asset::Native,
            amount: to_u128(c.value, "transaction value")?,
            block: block.to_ref(),
        },
        required,
    })
}

/// Token deposits among `logs` (the block's `Transfer` logs from watched
/// tokens). Every log is checked: it must be from a configured token, of
/// this block, not removed, shaped like an ERC-20 `Transfer` (3 topics, 32
/// bytes of data), carry a tx hash and log index, and hold an amount that
/// fits u128. Any failure rejects the whole block's scan.
pub fn token_deposits(
    block: &BlockMeta,
    logs: &[Log],
    tokens: &HashMap<Address, u64>,
    watch: &AddressSet,
    max_logs: u64,
) -> Result<Vec<Found>, EthError> {
    if logs.len() as u64 > max_logs {
        return Err(EthError::Limit { what: "logs per block", limit: max_logs });
    }
    let mut out = Vec::new();
    for log in logs {
        let contract = log.address();
        let Some(&required) = tokens.get(&contract) else {
            return Err(EthError::bad(
                "log",
                format!("log from unwatched contract {contract} in block {}", block.number),
            ));
        };
        if log.block_hash != Some(block.hash) || log.block_number != Some(block.number) {
            return Err(EthError::bad(
                "log",
                format!(
                    "log of block {:?}/{:?} returned for block {}/{:#x}",
                    log.block_number, log.block_hash, block.number, block.hash
                ),
            ));
        }
        if log.removed {
            return Err(EthError::bad("log", format!("removed log returned for block {}", block.number)));
        }
        let (Some(tx_hash), Some(index)) = (log.transaction_hash, log.log_index) else {
            return Err(EthError::bad(
                "log",
                format!("log without tx hash or log index in block {}", block.number),
            ));
        };
        let topics = log.topics();
        if topics.first() != Some(&TRANSFER_TOPIC) {
            return Err(EthError::bad(
                "log",
                format!("log {index} of block {} is not a Transfer", block.number),
            ));
        }
        if topics.len() != 3 || log.data().data.len() != 32 {
            return Err(EthError::bad(
                "log",
                format!(
                    "Transfer log {index} of block {} has {} topics and {} data bytes (expected 3 and 32)",
                    block.number,
                    topics.len(),
                    log.data().data.len()
                ),
            ));
        }
        let event = Transfer::decode_log(&log.inner).map_err(|e| {
            EthError::bad("log", format!("Transfer log {index} of block {}: {e}", block.number))
        })?;
        if !watch.contains(&event.to) {
            continue;
        }
        out.push(Found {
            deposit: Deposit {
                key: DepositKey { chain: Chain::Eth, tx_hash: format!("{tx_hash:#x}"), index },
                from: event.from.to_checksum(None),
                to: event.to.to_checksum(None),
                asset: Asset::Token(contract.to_checksum(None)),
                amount: to_u128(event.value, "token amount")?,
                block: block.to_ref(),
            },
            required,
        });
    }
    Ok(out)
}

fn to_u128(v: U256, what: &str) -> Result<u128, EthError> {
    u128::try_from(v).map_err(|_| EthError::bad("amount", format!("{what} {v} does not fit u128")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy::primitives::{Bytes, LogData};

    fn meta() -> BlockMeta {
        BlockMeta {
            number: 7,
            hash: B256::repeat_byte(0xbb),
            parent_hash: B256::repeat_byte(0xaa),
            timestamp: 1,
        }
    }

    const TOKEN: Address = Address::repeat_byte(0x70);
    const TO: Address = Address::repeat_byte(0x22);

    fn transfer_log(contract: Address, to: Address, value: U256) -> Log {
        let data = LogData::new_unchecked(
            vec![TRANSFER_TOPIC, Address::repeat_byte(0x11).into_word(), to.into_word()],
            Bytes::from(value.to_be_bytes::<32>().to_vec()),
        );
        Log {
            inner: alloy::primitives::Log { address: contract, data },
            block_hash: Some(meta().hash),
            block_number: Some(7),
            block_timestamp: None,
            transaction_hash: Some(B256::repeat_byte(0x33)),
            transaction_index: Some(0),
            log_index: Some(4),
            removed: false,
        }
    }

    fn scan(logs: &[Log]) -> Result<Vec<Found>, EthError> {
        let tokens = HashMap::from([(TOKEN, 6)]);
        let mut watch = AddressSet::default();
        watch.insert(TO);
        token_deposits(&meta(), logs, &tokens, &watch, 100)
    }

    #[test]
    fn a_transfer_to_a_watched_address_is_a_deposit() {
        let found = scan(&[transfer_log(TOKEN, TO, U256::from(1_000_000u64))]).unwrap();
        assert_eq!(found.len(), 1);
        let d = &found[0].deposit;
        assert_eq!(d.amount, 1_000_000);
        assert_eq!(d.key.index, 4);
        assert_eq!(d.asset, Asset::Token(TOKEN.to_checksum(None)));
        assert_eq!(d.to, TO.to_checksum(None));
        assert_eq!(found[0].required, 6);
        assert!(scan(&[transfer_log(TOKEN, Address::repeat_byte(0x99), U256::from(5))]).unwrap().is_empty());
    }

    /// Each row: a hostile or malformed log and a phrase the error must contain.
    #[test]
    fn hostile_logs_are_errors_never_deposits() {
        let ok = transfer_log(TOKEN, TO, U256::from(1));
        let mut rows: Vec<(Log, &str)> = Vec::new();
        rows.push((transfer_log(Address::repeat_byte(0x66), TO, U256::from(1)), "unwatched contract"));
        rows.push((transfer_log(TOKEN, TO, U256::MAX), "does not fit u128"));
        let mut l = ok.clone();
        l.removed = true;
        rows.push((l, "removed"));
        let mut l = ok.clone();
        l.block_hash = Some(B256::ZERO);
        rows.push((l, "returned for block 7"));
        let mut l = ok.clone();
        l.log_index = None;
        rows.push((l, "without tx hash or log index"));
        let mut l = ok.clone();
        l.inner.data =
            LogData::new_unchecked(vec![TRANSFER_TOPIC, TO.into_word()], l.inner.data.data.clone());
        rows.push((l, "2 topics"));
        let mut l = ok.clone();
        l.inner.data = LogData::new_unchecked(l.inner.data.topics().to_vec(), Bytes::from(vec![0u8; 31]));
        rows.push((l, "31 data bytes"));
        let mut l = ok.clone();
        l.inner.data = LogData::new_unchecked(
            vec![B256::repeat_byte(1), Address::ZERO.into_word(), TO.into_word()],
            l.inner.data.data.clone(),
        );
        rows.push((l, "is not a Transfer"));
        for (log, phrase) in rows {
            let err = scan(&[ok.clone(), log]).unwrap_err().to_string();
            assert!(err.contains(phrase), "{err:?} lacks {phrase:?}");
        }
    }

    #[test]
    fn too_many_logs_is_a_limit() {
        let tokens = HashMap::from([(TOKEN, 6)]);
        let logs = vec![transfer_log(TOKEN, TO, U256::from(1)); 3];
        let err = token_deposits(&meta(), &logs, &tokens, &AddressSet::default(), 2).unwrap_err();
        assert!(matches!(err, EthError::Limit { limit: 2, .. }), "{err}");
    }

    /// Node answers that must not decode at all (the watcher turns the
    /// decoder's error into `eth node: ...` and retries; nothing is emitted).
    #[test]
    fn malformed_node_json_does_not_decode() {
        let log = serde_json::json!({
            "address": "0x7070707070707070707070707070707070707070",
            "topics": [format!("{TRANSFER_TOPIC:#x}")],
            "data": "0x",
            "blockHash": format!("{:#x}", B256::repeat_byte(1)),
            "blockNumber": "0x7",
            "transactionHash": format!("{:#x}", B256::repeat_byte(2)),
            "transactionIndex": "0x0",
            "logIndex": "0x4",
            "removed": false
        });
        assert!(serde_json::from_value::<Log>(log.clone()).is_ok(), "the well-formed row decodes");
        let rows: Vec<(&str, serde_json::Value)> = vec![
            ("logIndex", serde_json::json!("0x1ffffffffffffffff")), // over 64 bits
            ("blockNumber", serde_json::json!(7.5)),                // wrong type
            ("address", serde_json::json!("0x70")),                 // short address
            ("data", serde_json::json!("0xzz")),                    // not hex
            ("topics", serde_json::json!("0x00")),                  // not a list
        ];
        for (field, value) in rows {
            let mut bad = log.clone();
            bad[field] = value;
            assert!(serde_json::from_value::<Log>(bad).is_err(), "{field} must not decode");
        }
        let mut missing = log.clone();
        missing.as_object_mut().unwrap().remove("address");
        assert!(serde_json::from_value::<Log>(missing).is_err(), "a log without address must not decode");
        // A 257-bit quantity is not a U256.
        let over = format!("0x1{}", "0".repeat(64));
        assert!(serde_json::from_value::<U256>(serde_json::json!(over)).is_err());
    }
}
