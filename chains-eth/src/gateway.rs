//! [`EthGateway`]: the watcher and the hot wallet behind the chain-gateway
//! interface of `molly-chains`.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use alloy::eips::BlockNumberOrTag;
use alloy::primitives::Address;
use alloy::providers::Provider;
use molly_chains::gateway::{
    Asset, BlockRef, ChainGateway, DepositEvent, FeeEstimate, FeePolicy, GatewayError, HeadStatus,
    WithdrawalRequest, WithdrawalStatus,
};
use molly_chains::{address, Chain, Network};
use molly_hsm_bridge::Signer;
use tokio::sync::{mpsc, Mutex};

use crate::config::WatcherConfig;
use crate::error::EthError;
use crate::fees;
use crate::watcher::EthWatcher;
use crate::watchset::WatchSet;
use crate::withdraw::{EthWallet, WalletConfig};

/// Ethereum behind [`ChainGateway`].
#[derive(Debug)]
pub struct EthGateway {
    watcher: EthWatcher,
    watch: WatchSet,
    /// The receiver, and how many events the last `next_events` returned
    /// (acknowledged to the watcher by the next call).
    events: Mutex<(mpsc::Receiver<DepositEvent>, u64)>,
    wallet: Arc<EthWallet>,
    unstick: tokio::task::JoinHandle<()>,
}

impl Drop for EthGateway {
    fn drop(&mut self) {
        self.unstick.abort();
    }
}

impl EthGateway {
    /// Opens the wallet (journal replay, nonce reconciliation) and starts the watcher.
    pub async fn start(
        watcher: WatcherConfig,
        wallet: WalletConfig,
        signer: Arc<dyn Signer>,
    ) -> Result<Self, EthError> {
        if wallet.stuck_check_interval.is_zero() {
            return Err(EthError::Config("stuck_check_interval must be > 0".into()));
        }
        let wallet = Arc::new(EthWallet::open(wallet, signer).await?);
        let watch = WatchSet::new(watcher.max_watched);
        let (watcher, events) = EthWatcher::spawn(watcher, watch.clone())?;
        let unstick = tokio::spawn(unstick_loop(wallet.clone()));
        Ok(EthGateway { watcher, watch, events: Mutex::new((events, 0)), wallet, unstick })
    }

    /// The hot wallet.
    pub fn wallet(&self) -> &EthWallet {
        &self.wallet
    }

    /// The watcher.
    pub fn watcher(&self) -> &EthWatcher {
        &self.watcher
    }
}

/// Every `stuck_check_interval`, replaces the wallet's stuck withdrawals
/// ([`EthWallet::unstick`]). Errors are logged and retried next time.
async fn unstick_loop(wallet: Arc<EthWallet>) {
    let mut every = tokio::time::interval(wallet.config().stuck_check_interval);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(e) = wallet.unstick(wallet.config().stuck_fee_policy).await {
            tracing::warn!(error = %e, "eth stuck-withdrawal check failed");
        }
    }
}

fn to_gateway(e: EthError) -> GatewayError {
    match e {
        EthError::Rejected { id, reason } => GatewayError::Rejected { chain: Chain::Eth, id, reason },
        EthError::Unknown(id) => GatewayError::UnknownWithdrawal { chain: Chain::Eth, id },
        EthError::Signer(detail) => GatewayError::Signer { chain: Chain::Eth, detail },
        EthError::Limit { what, limit } => {
            GatewayError::Limit { chain: Chain::Eth, what: format!("{what} ({limit})") }
        }
        e => GatewayError::Node { chain: Chain::Eth, detail: e.to_string() },
    }
}

#[async_trait::async_trait]
impl ChainGateway for EthGateway {
    fn chain(&self) -> Chain {
        Chain::Eth
    }

    async fn watch(&self, addresses: &[String]) -> Result<(), GatewayError> {
        let mut parsed = Vec::with_capacity(addresses.len());
        for a in addresses {
            address::validate(Chain::Eth, Network::Mainnet, a).map_err(|e| GatewayError::Rejected {
                chain: Chain::Eth,
                id: a.clone(),
                reason: e.to_string(),
            })?;
            parsed.push(a.parse::<Address>().map_err(|e| GatewayError::Rejected {
                chain: Chain::Eth,
                id: a.clone(),
                reason: e.to_string(),
            })?);
        }
        self.watch.add(&parsed).map_err(to_gateway)
    }

    /// Calling it again acknowledges the previous batch: the caller has
    /// durably handled those events, so the watcher may write a position
    /// past them (`WatcherConfig::state_path`).
    async fn next_events(&self, max: usize) -> Result<Vec<DepositEvent>, GatewayError> {
        let mut guard = self.events.lock().await;
        let (rx, last) = &mut *guard;
        self.watcher.ack(std::mem::take(last));
        let first = rx.recv().await.ok_or_else(|| GatewayError::Node {
            chain: Chain::Eth,
            detail: "the deposit watcher stopped".into(),
        })?;
        let mut out = vec![first];
        while out.len() < max.max(1) {
            match rx.try_recv() {
                Ok(e) => out.push(e),
                Err(_) => break,
            }
        }
        *last = out.len() as u64;
        Ok(out)
    }

    async fn submit_withdrawal(&self, request: &WithdrawalRequest) -> Result<WithdrawalStatus, GatewayError> {
        self.wallet.submit(request).await.map_err(to_gateway)
    }

    async fn withdrawal_status(&self, id: &str) -> Result<WithdrawalStatus, GatewayError> {
        self.wallet.status(id).await.map_err(to_gateway)
    }

    async fn estimate_fee(&self, asset: &Asset, policy: FeePolicy) -> Result<FeeEstimate, GatewayError> {
        let config = self.wallet.config();
        let f = fees::estimate(self.wallet.provider(), policy, &config.fees).await.map_err(to_gateway)?;
        let units = u128::from(match asset {
            Asset::Native => config.gas_limit_native,
            Asset::Token(_) => config.gas_limit_token,
        });
        Ok(FeeEstimate {
            per_unit: f.max_fee_per_gas,
            priority_per_unit: f.max_priority_fee_per_gas,
            units,
            max_total: f.max_fee_per_gas.saturating_mul(units),
        })
    }

    async fn head(&self) -> Result<HeadStatus, GatewayError> {
        let block = self
            .wallet
            .provider()
            .get_block_by_number(BlockNumberOrTag::Latest)
            .await
            .map_err(|e| to_gateway(EthError::node("eth_getBlockByNumber latest", e)))?
            .ok_or_else(|| to_gateway(EthError::bad("block", "no latest block")))?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(HeadStatus {
            head: BlockRef { number: block.header.number, hash: format!("{:#x}", block.header.hash) },
            processed: self.watcher.progress().processed.unwrap_or(0),
            head_age_secs: now.saturating_sub(block.header.timestamp),
        })
    }
}
