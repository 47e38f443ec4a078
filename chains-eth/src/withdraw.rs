//! EIP-1559 withdrawals (ETH and ERC-20 `transfer`) from one hot wallet,
//! signed through the hsm-bridge [`Signer`], with a journal that makes them
//! survive restarts.
//!
//! Every withdrawal is written to the journal (JSON lines, fsynced) with
//! its nonce and signed raw transaction **before** it is broadcast. On open
//! the journal is replayed and every unfinished withdrawal whose
//! transactions the node does not know is broadcast again (the same bytes,
//! so the same hash: never a second transfer). The next nonce is the larger
//! of the node's pending nonce and the journal's last nonce + 1; if the node
//! has mined more transactions from the wallet than the journal holds, the
//! key is used elsewhere and opening fails.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use alloy::consensus::{SignableTransaction, TxEip1559, TxEnvelope};
use alloy::eips::eip2718::{Decodable2718, Encodable2718};
use alloy::eips::BlockId;
use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, Bytes, Signature, TxKind, B256, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::client::ClientBuilder;
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::SolCall;
use molly_chains::gateway::{Asset, BlockRef, FeePolicy, WithdrawalRequest, WithdrawalStatus};
use molly_hsm_bridge::{KeyId, Signer};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::error::EthError;
use crate::fees::{self, FeeConfig, Fees};

alloy::sol! {
    /// ERC-20 `transfer`. Tokens like USDT return nothing; success is "no revert".
    function transfer(address to, uint256 amount);
}

/// The hot wallet's configuration.
#[derive(Debug, Clone)]
pub struct WalletConfig {
    /// JSON-RPC over HTTP (`http://127.0.0.1:8545`).
    pub http_url: String,
    /// The chain id every transaction is signed for.
    pub chain_id: u64,
    /// The signer's key for this wallet.
    pub key: KeyId,
    /// The journal file.
    pub journal: PathBuf,
    /// Gas limit of an ETH transfer to an account.
    pub gas_limit_native: u64,
    /// Gas limit of a token `transfer` (no estimate: a transfer that would
    /// revert is still mined and reported failed with its reason).
    pub gas_limit_token: u64,
    /// Confirmations at which a withdrawal is final.
    pub confirmations: u64,
    /// Fee rules.
    pub fees: FeeConfig,
    /// Minimum fee increase of a replacement, percent (nodes require 10).
    pub bump_percent: u128,
    /// A withdrawal whose current transaction is still unmined this many
    /// blocks after it was signed is stuck and replaced by
    /// [`EthWallet::unstick`] (also when its max fee is below the next
    /// block's base fee, whatever its age).
    pub stuck_after_blocks: u64,
    /// How often [`crate::EthGateway`] runs [`EthWallet::unstick`].
    pub stuck_check_interval: std::time::Duration,
    /// The fee policy whose current estimate a replacement must at least offer.
    pub stuck_fee_policy: FeePolicy,
}

impl WalletConfig {
    /// Defaults for the rest.
    pub fn new(http_url: impl Into<String>, chain_id: u64, key: KeyId, journal: PathBuf) -> Self {
        WalletConfig {
            http_url: http_url.into(),
            chain_id,
            key,
            journal,
            gas_limit_native: 21_000,
            gas_limit_token: 100_000,
            confirmations: 12,
            fees: FeeConfig::default(),
            bump_percent: 13,
            stuck_after_blocks: 5,
            stuck_check_interval: std::time::Duration::from_secs(12),
            stuck_fee_policy: FeePolicy::Urgent,
        }
    }
}

/// One signed transaction of a withdrawal (the first, or a replacement).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SentTx {
    /// Its hash.
    pub hash: B256,
    /// EIP-2718 bytes, as broadcast.
    pub raw: Bytes,
    /// Max fee per gas.
    pub max_fee_per_gas: u128,
    /// Max priority fee per gas.
    pub max_priority_fee_per_gas: u128,
    /// Whether this is a cancel (0 ETH to self) rather than the transfer.
    pub cancel: bool,
    /// The node's head when it was signed (`None` in journals written
    /// before this field existed: such a transaction is judged by its fee only).
    #[serde(default)]
    pub signed_at_block: Option<u64>,
}

/// A withdrawal as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Caller's id.
    pub id: String,
    /// Nonce every transaction of it uses.
    pub nonce: u64,
    /// Destination.
    pub to: Address,
    /// `None`: ETH; else the token contract.
    pub token: Option<Address>,
    /// Base units, as decimal text (JSON numbers cannot hold u128).
    pub amount: String,
    /// Transactions, oldest first; the last one is current.
    pub txs: Vec<SentTx>,
    /// A contract call instead of a transfer: `amount` wei of ETH to `to`
    /// with this input and gas limit (used for batched sweep top-ups).
    /// Absent in journals written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call: Option<ContractCall>,
}

/// A contract call a withdrawal makes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractCall {
    /// ABI-encoded input.
    pub input: Bytes,
    /// Its gas limit.
    pub gas_limit: u64,
}

/// The hot wallet.
#[derive(Debug)]
pub struct EthWallet {
    config: WalletConfig,
    provider: RootProvider,
    signer: Arc<dyn Signer>,
    address: Address,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    journal: File,
    records: BTreeMap<String, Record>,
    next_nonce: u64,
}

impl EthWallet {
    /// Opens the wallet: loads the journal, reconciles its nonce with the
    /// node's, re-broadcasts unfinished withdrawals the node has lost.
    pub async fn open(config: WalletConfig, signer: Arc<dyn Signer>) -> Result<Self, EthError> {
        let url = config.http_url.parse().map_err(|e| EthError::Config(format!("http_url: {e}")))?;
        let provider = RootProvider::new(ClientBuilder::default().http(url));
        let chain_id = provider.get_chain_id().await.map_err(|e| EthError::node("eth_chainId", e))?;
        if chain_id != config.chain_id {
            return Err(EthError::Config(format!(
                "node is chain {chain_id}, wallet signs for {}",
                config.chain_id
            )));
        }
        let public = signer.public_key(&config.key).await.map_err(|e| EthError::Signer(e.to_string()))?;
        let address = Address::from(public.eth_address().map_err(|e| EthError::Signer(e.to_string()))?);
        let records = load(&config.journal)?;
        let journal = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&config.journal)
            .map_err(|e| EthError::Journal(format!("{}: {e}", config.journal.display())))?;
        let pending = nonce(&provider, address, BlockId::pending()).await?;
        let mined = nonce(&provider, address, BlockId::latest()).await?;
        let journal_next = records.values().map(|r| r.nonce + 1).max().unwrap_or(0);
        if mined > journal_next && !records.is_empty() {
            return Err(EthError::NonceGap { address, node: mined, journal: journal_next });
        }
        let wallet = EthWallet {
            provider,
            signer,
            address,
            state: Mutex::new(State { journal, records, next_nonce: pending.max(journal_next) }),
            config,
        };
        wallet.rebroadcast_lost().await?;
        Ok(wallet)
    }

    /// The configuration.
    pub fn config(&self) -> &WalletConfig {
        &self.config
    }

    /// The node connection (HTTP).
    pub fn provider(&self) -> &RootProvider {
        &self.provider
    }

    /// The wallet's address (derived from the signer's public key).
    pub fn address(&self) -> Address {
        self.address
    }

    /// Submits a withdrawal (idempotent by id): sign, journal, broadcast.
    pub async fn submit(&self, request: &WithdrawalRequest) -> Result<WithdrawalStatus, EthError> {
        let existed = self.state.lock().await.records.contains_key(&request.id);
        let record = self.prepare(request).await?;
        if existed {
            self.ensure_known(&record).await?;
        } else {
            self.broadcast(&record).await?;
        }
        self.status(&request.id).await
    }

    /// Signs and journals a withdrawal without broadcasting it (the first
    /// half of [`EthWallet::submit`]; a crash after it is what
    /// [`EthWallet::open`] recovers from).
    pub async fn prepare(&self, request: &WithdrawalRequest) -> Result<Record, EthError> {
        self.prepare_with(request, None).await
    }

    /// Submits a contract call sending `request.amount` wei (idempotent by
    /// id, journaled before broadcast like a withdrawal). `request.asset`
    /// must be `Native`.
    pub async fn submit_call(
        &self,
        request: &WithdrawalRequest,
        call: ContractCall,
    ) -> Result<WithdrawalStatus, EthError> {
        if request.asset != Asset::Native {
            return Err(reject(request, "a contract call sends ETH only".into()));
        }
        let existed = self.state.lock().await.records.contains_key(&request.id);
        let record = self.prepare_call(request, None, Some(call)).await?;
        if existed {
            self.ensure_known(&record).await?;
        } else {
            self.broadcast(&record).await?;
        }
        self.status(&request.id).await
    }

    async fn prepare_with(
        &self,
        request: &WithdrawalRequest,
        fees: Option<Fees>,
    ) -> Result<Record, EthError> {
        self.prepare_call(request, fees, None).await
    }

    async fn prepare_call(
        &self,
        request: &WithdrawalRequest,
        fees: Option<Fees>,
        call: Option<ContractCall>,
    ) -> Result<Record, EthError> {
        let mut state = self.state.lock().await;
        if let Some(r) = state.records.get(&request.id) {
            return Ok(r.clone());
        }
        let to: Address = request.to.parse().map_err(|e| reject(request, format!("destination: {e}")))?;
        if request.amount == 0 {
            return Err(reject(request, "amount is zero".into()));
        }
        let token = match &request.asset {
            Asset::Native => None,
            Asset::Token(t) => {
                Some(t.parse::<Address>().map_err(|e| reject(request, format!("token: {e}")))?)
            }
        };
        let fees = match fees {
            Some(f) => f,
            None => fees::estimate(&self.provider, request.fee, &self.config.fees).await?,
        };
        let nonce = state.next_nonce;
        let mut record = Record {
            id: request.id.clone(),
            nonce,
            to,
            token,
            amount: request.amount.to_string(),
            txs: Vec::new(),
            call,
        };
        record.txs.push(self.sign(&record, fees, false).await?);
        append(&mut state.journal, &record)?;
        state.records.insert(record.id.clone(), record.clone());
        state.next_nonce = nonce + 1;
        Ok(record)
    }

    /// Sweeps the wallet's whole ETH balance to `to`, leaving no dust: the
    /// transaction sets its tip equal to its max fee, so the price paid per
    /// gas is exactly the max fee whatever the base fee (as long as the base
    /// fee stays below it), and the amount is `balance − 21,000 × max fee`.
    /// Refused while the wallet has pending transactions, or when the balance
    /// does not cover the fee. Journaled and idempotent by `id` like a withdrawal.
    pub async fn sweep_native(
        &self,
        id: &str,
        to: Address,
        policy: FeePolicy,
    ) -> Result<WithdrawalStatus, EthError> {
        if self.state.lock().await.records.contains_key(id) {
            let record = self.record(id).await?;
            self.ensure_known(&record).await?;
            return self.status(id).await;
        }
        let pending = nonce(&self.provider, self.address, BlockId::pending()).await?;
        let mined = nonce(&self.provider, self.address, BlockId::latest()).await?;
        if pending != mined {
            return Err(EthError::Rejected {
                id: id.into(),
                reason: format!("{} transactions from the wallet are pending", pending - mined),
            });
        }
        let balance =
            self.provider.get_balance(self.address).await.map_err(|e| EthError::node("eth_getBalance", e))?;
        let estimate = fees::estimate(&self.provider, policy, &self.config.fees).await?;
        let fees = Fees {
            max_fee_per_gas: estimate.max_fee_per_gas,
            max_priority_fee_per_gas: estimate.max_fee_per_gas,
        };
        let fee = U256::from(fees.max_fee_per_gas) * U256::from(self.config.gas_limit_native);
        let amount = balance.checked_sub(fee).filter(|a| !a.is_zero()).ok_or_else(|| EthError::Rejected {
            id: id.into(),
            reason: format!("balance {balance} wei does not cover the fee {fee} wei"),
        })?;
        let amount = u128::try_from(amount)
            .map_err(|_| EthError::Rejected { id: id.into(), reason: "balance over u128".into() })?;
        let request = WithdrawalRequest {
            id: id.into(),
            to: to.to_checksum(None),
            asset: Asset::Native,
            amount,
            fee: policy,
        };
        let record = self.prepare_with(&request, Some(fees)).await?;
        self.broadcast(&record).await?;
        self.status(id).await
    }

    /// Replaces a withdrawal's pending transaction with the same nonce and
    /// fees bumped by at least `bump_percent`: the same transfer
    /// (`cancel = false`, speed-up) or 0 ETH to the wallet itself (cancel).
    pub async fn replace(&self, id: &str, policy: FeePolicy, cancel: bool) -> Result<B256, EthError> {
        let tx = self.sign_replacement(id, policy, cancel).await?;
        self.send_raw(&tx).await?;
        Ok(tx.hash)
    }

    /// Signs and journals a replacement (not broadcast).
    async fn sign_replacement(&self, id: &str, policy: FeePolicy, cancel: bool) -> Result<SentTx, EthError> {
        let mut state = self.state.lock().await;
        let mut record = state.records.get(id).cloned().ok_or_else(|| EthError::Unknown(id.to_owned()))?;
        for tx in &record.txs {
            if self.receipt(tx.hash).await?.is_some() {
                return Err(EthError::Config(format!(
                    "withdrawal {id:?} is already mined in {:#x}",
                    tx.hash
                )));
            }
        }
        let last = record.txs.last().cloned().ok_or_else(|| EthError::Unknown(id.to_owned()))?;
        let now = fees::estimate(&self.provider, policy, &self.config.fees).await?;
        let old = Fees {
            max_fee_per_gas: last.max_fee_per_gas,
            max_priority_fee_per_gas: last.max_priority_fee_per_gas,
        };
        let new = fees::bumped(old, now, self.config.bump_percent, &self.config.fees);
        if !fees::is_valid_replacement(old, new) {
            return Err(EthError::Limit {
                what: "max fee per gas of a replacement (max_fee_cap leaves no +10% bump)",
                limit: u64::try_from(self.config.fees.max_fee_cap).unwrap_or(u64::MAX),
            });
        }
        let tx = self.sign(&record, new, cancel).await?;
        record.txs.push(tx.clone());
        append(&mut state.journal, &record)?;
        state.records.insert(id.to_owned(), record.clone());
        Ok(tx)
    }

    /// Finds stuck withdrawals and replaces them with bumped fees (the same
    /// transfer, or the same cancel). A withdrawal is stuck when none of its
    /// transactions is mined and its current one is either
    /// `stuck_after_blocks` old or offers a max fee below the next block's
    /// base fee ([`stuck_reason`]). A current transaction the node does
    /// not know (it refused it) is broadcast again first, unchanged. The
    /// replacement's fees are
    /// [`fees::bumped`]: each at least `bump_percent` above the old one and
    /// at least the current estimate for `policy`, never above
    /// `max_fee_cap`; when the cap leaves less than the nodes' +10 %, nothing
    /// is sent and the withdrawal is reported [`Unstick::AtCap`].
    pub async fn unstick(&self, policy: FeePolicy) -> Result<Vec<Unstick>, EthError> {
        let head =
            self.provider.get_block_number().await.map_err(|e| EthError::node("eth_blockNumber", e))?;
        let mined = nonce(&self.provider, self.address, BlockId::latest()).await?;
        let next_base = fees::next_base_fee(&self.provider).await?;
        // Only withdrawals at or above the mined nonce can still be unmined.
        let open: Vec<Record> =
            self.state.lock().await.records.values().filter(|r| r.nonce >= mined).cloned().collect();
        let mut out = Vec::new();
        for record in open {
            let Some(last) = record.txs.last().cloned() else { continue };
            let mut any_mined = false;
            for tx in &record.txs {
                any_mined |= self.receipt(tx.hash).await?.is_some();
            }
            if any_mined {
                continue;
            }
            // A current transaction the node does not know (anvil drops and
            // refuses a max fee below the base fee; geth queues it) is
            // offered again, unchanged; if it is stuck it is replaced anyway.
            let known = self
                .provider
                .get_transaction_by_hash(last.hash)
                .await
                .map_err(|e| EthError::node("eth_getTransactionByHash", e))?
                .is_some();
            let refused = if known { None } else { self.send_raw(&last).await.err() };
            let Some(why) = stuck_reason(&last, head, next_base, self.config.stuck_after_blocks) else {
                if let Some(e) = refused {
                    out.push(Unstick::NotAccepted { id: record.id, tx: last.hash, error: e.to_string() });
                }
                continue;
            };
            let new = match self.sign_replacement(&record.id, policy, last.cancel).await {
                Ok(new) => new,
                Err(EthError::Limit { .. }) => {
                    tracing::warn!(id = %record.id, ?why, "stuck withdrawal cannot be bumped under max_fee_cap");
                    out.push(Unstick::AtCap {
                        id: record.id,
                        tx: last.hash,
                        why,
                        max_fee_per_gas: last.max_fee_per_gas,
                    });
                    continue;
                }
                Err(e) => return Err(e),
            };
            tracing::info!(id = %record.id, old = %last.hash, new = %new.hash, ?why, "replacing a stuck withdrawal");
            let fees = Fees {
                max_fee_per_gas: new.max_fee_per_gas,
                max_priority_fee_per_gas: new.max_priority_fee_per_gas,
            };
            match self.send_raw(&new).await {
                Ok(()) => {
                    out.push(Unstick::Replaced { id: record.id, old: last.hash, new: new.hash, why, fees })
                }
                Err(e) => {
                    out.push(Unstick::NotAccepted { id: record.id, tx: new.hash, error: e.to_string() })
                }
            }
        }
        Ok(out)
    }

    /// Where a withdrawal stands.
    pub async fn status(&self, id: &str) -> Result<WithdrawalStatus, EthError> {
        let record = self.record(id).await?;
        for tx in &record.txs {
            let Some(receipt) = self.receipt(tx.hash).await? else { continue };
            let hash = format!("{:#x}", tx.hash);
            let number = receipt.block_number.ok_or_else(|| EthError::bad("receipt", "no block number"))?;
            let block = BlockRef {
                number,
                hash: format!(
                    "{:#x}",
                    receipt.block_hash.ok_or_else(|| EthError::bad("receipt", "no block hash"))?
                ),
            };
            if !receipt.status() {
                let reason = self.revert_reason(&record, tx, number).await;
                return Ok(WithdrawalStatus::Failed { tx_hash: Some(hash), reason });
            }
            if tx.cancel {
                return Ok(WithdrawalStatus::Failed { tx_hash: Some(hash), reason: "cancelled".into() });
            }
            let head =
                self.provider.get_block_number().await.map_err(|e| EthError::node("eth_blockNumber", e))?;
            let confirmations = (head + 1).saturating_sub(number);
            if confirmations >= self.config.confirmations {
                let fee_paid = u128::from(receipt.gas_used).saturating_mul(receipt.effective_gas_price);
                return Ok(WithdrawalStatus::Final { tx_hash: hash, block, fee_paid });
            }
            return Ok(WithdrawalStatus::Mined { tx_hash: hash, block, confirmations });
        }
        let last = record.txs.last().ok_or_else(|| EthError::Unknown(id.to_owned()))?;
        Ok(WithdrawalStatus::Pending { tx_hash: format!("{:#x}", last.hash) })
    }

    /// The status of one transaction of a withdrawal: `Replaced` if a later
    /// one superseded it, else the withdrawal's status.
    pub async fn tx_status(&self, id: &str, hash: B256) -> Result<WithdrawalStatus, EthError> {
        let record = self.record(id).await?;
        record
            .txs
            .iter()
            .position(|t| t.hash == hash)
            .ok_or_else(|| EthError::Unknown(format!("{hash:#x}")))?;
        let status = self.status(id).await?;
        let current = match &status {
            WithdrawalStatus::Pending { tx_hash }
            | WithdrawalStatus::Mined { tx_hash, .. }
            | WithdrawalStatus::Final { tx_hash, .. } => Some(tx_hash.clone()),
            WithdrawalStatus::Failed { tx_hash, .. } => tx_hash.clone(),
            WithdrawalStatus::Replaced { by, .. } => Some(by.clone()),
        };
        let me = format!("{hash:#x}");
        match current {
            Some(by) if by != me => Ok(WithdrawalStatus::Replaced { tx_hash: me, by }),
            _ => Ok(status),
        }
    }

    /// The journaled record of `id`.
    pub async fn record(&self, id: &str) -> Result<Record, EthError> {
        self.state.lock().await.records.get(id).cloned().ok_or_else(|| EthError::Unknown(id.to_owned()))
    }

    async fn sign(&self, record: &Record, fees: Fees, cancel: bool) -> Result<SentTx, EthError> {
        let amount: u128 =
            record.amount.parse().map_err(|_| EthError::Journal(format!("amount {:?}", record.amount)))?;
        let (to, value, input, gas_limit) = match (cancel, record.token) {
            (true, _) => (self.address, U256::ZERO, Bytes::new(), self.config.gas_limit_native),
            (false, _) if record.call.is_some() => {
                let call = record.call.as_ref().ok_or_else(|| EthError::Journal("call vanished".into()))?;
                (record.to, U256::from(amount), call.input.clone(), call.gas_limit)
            }
            (false, None) => (record.to, U256::from(amount), Bytes::new(), self.config.gas_limit_native),
            (false, Some(token)) => (
                token,
                U256::ZERO,
                transferCall { to: record.to, amount: U256::from(amount) }.abi_encode().into(),
                self.config.gas_limit_token,
            ),
        };
        let tx = TxEip1559 {
            chain_id: self.config.chain_id,
            nonce: record.nonce,
            gas_limit,
            max_fee_per_gas: fees.max_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
            to: TxKind::Call(to),
            value,
            access_list: Default::default(),
            input,
        };
        let head =
            self.provider.get_block_number().await.map_err(|e| EthError::node("eth_blockNumber", e))?;
        let (hash, raw) = sign_eip1559(self.signer.as_ref(), &self.config.key, self.address, tx).await?;
        Ok(SentTx {
            hash,
            raw,
            max_fee_per_gas: fees.max_fee_per_gas,
            max_priority_fee_per_gas: fees.max_priority_fee_per_gas,
            cancel,
            signed_at_block: Some(head),
        })
    }

    async fn broadcast(&self, record: &Record) -> Result<(), EthError> {
        if let Some(tx) = record.txs.last() {
            self.send_raw(tx).await?;
        }
        Ok(())
    }

    async fn send_raw(&self, tx: &SentTx) -> Result<(), EthError> {
        send_raw(&self.provider, tx.hash, &tx.raw).await
    }

    async fn rebroadcast_lost(&self) -> Result<(), EthError> {
        let records: Vec<Record> = self.state.lock().await.records.values().cloned().collect();
        for r in &records {
            self.ensure_known(r).await?;
        }
        Ok(())
    }

    /// Broadcasts `r`'s current transaction again if the node knows none of
    /// its transactions (lost from the pool, or never sent before a crash).
    async fn ensure_known(&self, r: &Record) -> Result<(), EthError> {
        for tx in &r.txs {
            let seen = self
                .provider
                .get_transaction_by_hash(tx.hash)
                .await
                .map_err(|e| EthError::node("eth_getTransactionByHash", e))?;
            if seen.is_some() {
                return Ok(());
            }
        }
        tracing::info!(id = %r.id, nonce = r.nonce, "re-broadcasting a journaled withdrawal the node does not know");
        self.broadcast(r).await
    }

    async fn receipt(&self, hash: B256) -> Result<Option<alloy::rpc::types::TransactionReceipt>, EthError> {
        self.provider
            .get_transaction_receipt(hash)
            .await
            .map_err(|e| EthError::node(format!("eth_getTransactionReceipt {hash:#x}"), e))
    }

    /// Replays the transaction as a call on the state before its block to
    /// learn the revert reason.
    async fn revert_reason(&self, record: &Record, tx: &SentTx, block: u64) -> String {
        let Ok(decoded) = alloy::consensus::TxEnvelope::decode_2718(&mut tx.raw.as_ref()) else {
            return "reverted (transaction bytes unreadable)".into();
        };
        let alloy::consensus::TxEnvelope::Eip1559(signed) = decoded else { return "reverted".into() };
        let t = signed.tx();
        let mut req = TransactionRequest::default()
            .with_from(self.address)
            .with_nonce(record.nonce)
            .with_gas_limit(t.gas_limit)
            .with_value(t.value)
            .with_input(t.input.clone());
        if let TxKind::Call(to) = t.to {
            req = req.with_to(to);
        }
        match self.provider.call(req).block(BlockId::number(block.saturating_sub(1))).await {
            Ok(_) => "reverted (no reason: the call succeeds on the parent state)".into(),
            Err(e) => {
                let data = e.as_error_resp().and_then(|p| p.as_revert_data());
                match data.as_ref().and_then(|d| alloy::sol_types::decode_revert_reason(d)) {
                    Some(reason) => format!("reverted: {reason}"),
                    None => format!("reverted: {e}"),
                }
            }
        }
    }
}

/// Signs `tx` with `key` through the signer and returns its hash and
/// EIP-2718 bytes. The signature must recover to `from` (the address of
/// the key's public key) before it leaves: a signer that answers for another
/// key is refused.
pub(crate) async fn sign_eip1559(
    signer: &dyn Signer,
    key: &KeyId,
    from: Address,
    tx: TxEip1559,
) -> Result<(B256, Bytes), EthError> {
    let digest = tx.signature_hash();
    let sig = signer.sign_digest(key, &digest.0).await.map_err(|e| EthError::Signer(e.to_string()))?;
    let (k_sig, k_rid) = sig.to_k256().map_err(|e| EthError::Signer(e.to_string()))?;
    let recovered = k256::ecdsa::VerifyingKey::recover_from_prehash(&digest.0, &k_sig, k_rid)
        .map_err(|e| EthError::Signer(format!("signature does not recover: {e}")))?;
    let recovered = Address::from(molly_hsm_bridge::ecdsa::eth_address(&recovered));
    if recovered != from {
        return Err(EthError::Signer(format!("signature recovers to {recovered}, not the sender {from}")));
    }
    let signature =
        Signature::new(U256::from_be_bytes(sig.r), U256::from_be_bytes(sig.s), sig.recovery_id == 1);
    let envelope = TxEnvelope::from(tx.into_signed(signature));
    Ok((*envelope.tx_hash(), envelope.encoded_2718().into()))
}

/// Broadcasts signed bytes; "already known" counts as sent.
pub(crate) async fn send_raw(p: &RootProvider, hash: B256, raw: &Bytes) -> Result<(), EthError> {
    match p.send_raw_transaction(raw).await {
        Ok(_) => Ok(()),
        // Broadcasting the same bytes twice is harmless; nodes say so in words.
        Err(e) if is_known(&e.to_string()) => Ok(()),
        Err(e) => Err(EthError::node(format!("eth_sendRawTransaction {hash:#x}"), e)),
    }
}

/// Why a withdrawal counts as stuck.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StuckReason {
    /// Its max fee per gas is below the next block's base fee: no block can include it.
    FeeBelowBaseFee {
        /// Its max fee per gas.
        max_fee_per_gas: u128,
        /// The next block's base fee.
        next_base_fee: u128,
    },
    /// It has waited `blocks` blocks since it was signed.
    TooOld {
        /// Blocks since signing.
        blocks: u64,
    },
}

/// What [`EthWallet::unstick`] did about one stuck withdrawal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unstick {
    /// A replacement was signed, journaled and broadcast.
    Replaced {
        /// Withdrawal id.
        id: String,
        /// The stuck transaction.
        old: B256,
        /// Its replacement.
        new: B256,
        /// Why it was stuck.
        why: StuckReason,
        /// The replacement's fees.
        fees: Fees,
    },
    /// The withdrawal's current (journaled) transaction was refused by the
    /// node; it is offered again on every check until it is taken.
    NotAccepted {
        /// Withdrawal id.
        id: String,
        /// The refused transaction.
        tx: B256,
        /// The node's answer.
        error: String,
    },
    /// Stuck, but `max_fee_cap` leaves no room for a valid (+10 %) replacement.
    AtCap {
        /// Withdrawal id.
        id: String,
        /// The stuck transaction.
        tx: B256,
        /// Why it is stuck.
        why: StuckReason,
        /// Its max fee per gas.
        max_fee_per_gas: u128,
    },
}

/// Whether `tx` (unmined) is stuck at `head`: its max fee is below the
/// next block's base fee, or it was signed `stuck_after_blocks` or more
/// blocks ago. Pure.
pub fn stuck_reason(
    tx: &SentTx,
    head: u64,
    next_base_fee: u128,
    stuck_after_blocks: u64,
) -> Option<StuckReason> {
    if tx.max_fee_per_gas < next_base_fee {
        return Some(StuckReason::FeeBelowBaseFee { max_fee_per_gas: tx.max_fee_per_gas, next_base_fee });
    }
    let blocks = head.saturating_sub(tx.signed_at_block?);
    (blocks >= stuck_after_blocks).then_some(StuckReason::TooOld { blocks })
}

fn is_known(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("already known") || m.contains("already imported") || m.contains("known transaction")
}

fn reject(request: &WithdrawalRequest, reason: String) -> EthError {
    EthError::Rejected { id: request.id.clone(), reason }
}

async fn nonce(p: &RootProvider, address: Address, at: BlockId) -> Result<u64, EthError> {
    p.get_transaction_count(address)
        .block_id(at)
        .await
        .map_err(|e| EthError::node("eth_getTransactionCount", e))
}

fn load(path: &Path) -> Result<BTreeMap<String, Record>, EthError> {
    let mut records = BTreeMap::new();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(records),
        Err(e) => return Err(EthError::Journal(format!("{}: {e}", path.display()))),
    };
    let lines: Vec<String> = BufReader::new(file)
        .lines()
        .collect::<Result<_, _>>()
        .map_err(|e| EthError::Journal(format!("{}: {e}", path.display())))?;
    let count = lines.len();
    for (i, line) in lines.into_iter().enumerate() {
        match serde_json::from_str::<Record>(&line) {
            Ok(r) => {
                records.insert(r.id.clone(), r);
            }
            // A torn last line is a crash during append: that record was never broadcast.
            Err(_) if i + 1 == count => tracing::warn!(line = i + 1, "ignoring a torn last journal line"),
            Err(e) => return Err(EthError::Journal(format!("{} line {}: {e}", path.display(), i + 1))),
        }
    }
    Ok(records)
}

fn append(journal: &mut File, record: &Record) -> Result<(), EthError> {
    let mut line = serde_json::to_vec(record).map_err(|e| EthError::Journal(e.to_string()))?;
    line.push(b'\n');
    journal.write_all(&line).and_then(|()| journal.sync_data()).map_err(|e| EthError::Journal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(max_fee: u128, signed_at: Option<u64>) -> SentTx {
        SentTx {
            hash: B256::ZERO,
            raw: Bytes::new(),
            max_fee_per_gas: max_fee,
            max_priority_fee_per_gas: 1,
            cancel: false,
            signed_at_block: signed_at,
        }
    }

    /// Each row: (max fee, signed at, head, next base fee, stuck after) → verdict.
    #[test]
    fn stuck_is_a_fee_below_the_base_fee_or_an_age_in_blocks() {
        use StuckReason::*;
        type Row = (u128, Option<u64>, u64, u128, u64, Option<StuckReason>);
        let rows: [Row; 7] = [
            (100, Some(10), 10, 50, 5, None),
            (100, Some(10), 14, 50, 5, None),
            (100, Some(10), 15, 50, 5, Some(TooOld { blocks: 5 })),
            (100, Some(10), 10, 100, 5, None), // a max fee equal to the base fee is includable
            (100, Some(10), 10, 101, 5, Some(FeeBelowBaseFee { max_fee_per_gas: 100, next_base_fee: 101 })),
            (100, None, 1_000, 50, 5, None), // old journal line: judged by fee only
            (100, None, 1_000, 200, 5, Some(FeeBelowBaseFee { max_fee_per_gas: 100, next_base_fee: 200 })),
        ];
        for (i, (max_fee, signed, head, base, after, want)) in rows.into_iter().enumerate() {
            assert_eq!(stuck_reason(&tx(max_fee, signed), head, base, after), want, "row {i}");
        }
    }

    #[test]
    fn a_journal_line_without_signed_at_block_still_loads() {
        let line = r#"{"hash":"0x0000000000000000000000000000000000000000000000000000000000000000","raw":"0x","max_fee_per_gas":5,"max_priority_fee_per_gas":1,"cancel":false}"#;
        let t: SentTx = serde_json::from_str(line).unwrap();
        assert_eq!(t.signed_at_block, None);
    }
}
