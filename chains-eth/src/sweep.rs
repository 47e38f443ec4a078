//! Sweeping deposit addresses into the hot wallet: ERC-20 balances (with a
//! gas top-up from the fee wallet when the deposit address lacks ETH) and
//! ETH balances (to the last wei), over many deposit addresses at once.
//!
//! ```text
//!  plan(accounts):  per address: nonce latest == pending? (else InFlight)
//!                   balanceOf(token) ─▶ eth_estimateGas(transfer(hot, all)) ─▶ gas limit
//!                   cost bound = gas limit × max fee (+ 21,000 × max fee if a top-up is needed)
//!                   value = amount × price  ─▶ value × 100 ≥ worth_percent × cost bound ? sweep : skip
//!                   top-up = Σ gas limit × max fee − ETH balance (if > 0)
//!  execute(plan):   fee wallet sends every top-up (journaled, id per address and nonce;
//!                   existing accounts batched through a Disperse contract if configured)
//!                   ─▶ all mined ─▶ each deposit address signs its sweeps ─▶ all mined ─▶ report
//! ```
//!
//! **Money.** Amounts are `u128` base units; the worth-it rule compares
//! `amount × price.wei × 100` with `worth_percent × cost × price.per_units`
//! as exact 512-bit products (no division, no floats). The price is an
//! explicit input (`wei` wei buy `per_units` base units of the token).
//!
//! **Top-up, exactly.** A token sweep's fee is at most `gas limit × max
//! fee per gas` (EIP-1559: the price paid is `min(max fee, base fee + tip)`),
//! so that product is what the deposit address must hold, and the top-up is
//! that sum minus the ETH it already holds. The ETH left afterwards (dust)
//! is `held + top-up − gas used × price paid`: bounded by `gas limit × max
//! fee − gas used × (base fee + tip)`, reported per address, and counted
//! toward the next sweep's top-up of the same address.
//!
//! **Idempotence.** A top-up is a fee-wallet withdrawal with id
//! `sweep-topup-<address>-<nonce>` (journaled before broadcast: re-planning
//! after a crash sends it once). A sweep moves the address's whole balance
//! to the hot wallet with the address's next nonce, and an address with a
//! transaction in flight (pending nonce ≠ mined nonce) is skipped, so a
//! re-run never sends a second sweep; the worst a crash costs is a fee.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::consensus::TxEip1559;
use alloy::eips::BlockId;
use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, Bytes, TxKind, B256, U256, U512};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::{TransactionReceipt, TransactionRequest};
use alloy::sol_types::SolCall;
use molly_chains::gateway::{Asset, FeePolicy, WithdrawalRequest, WithdrawalStatus};
use molly_hsm_bridge::{KeyId, Signer};
use serde::Serialize;

use crate::error::EthError;
use crate::fees::{self, Fees};
use crate::withdraw::{send_raw, sign_eip1559, transferCall, ContractCall, EthWallet};

alloy::sol! {
    /// ERC-20 `balanceOf`.
    function balanceOf(address owner) returns (uint256);
    /// The Disperse contract's batch ETH transfer (chains-eth/testdata/contracts/Disperse.sol).
    function disperseEther(address[] recipients, uint256[] values) payable;
}

/// Batched top-ups through a Disperse contract: one fee-wallet transaction
/// sends the gas of many deposit addresses. Only addresses that already
/// exist on chain (nonce > 0 or ETH > 0) are batched: sending ETH to an
/// empty account from a contract costs 25,000 gas more (EIP-161 account
/// creation) than the 21,000 of a plain transaction, so empty ones get
/// plain top-ups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopUpBatch {
    /// The deployed Disperse contract.
    pub contract: Address,
    /// Most recipients per batch transaction.
    pub max_recipients: usize,
}

/// Gas of a plain ETH transfer to an account without code.
pub const GAS_NATIVE_TRANSFER: u64 = 21_000;

/// A token's price in ETH: `wei` wei buy `per_units` of its base units.
/// Example: USDT (6 decimals) at 1 ETH = 3,000 USDT is `{ wei: 10^18,
/// per_units: 3_000 × 10^6 }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TokenPrice {
    /// Wei...
    pub wei: u128,
    /// ...per this many base units of the token (> 0).
    pub per_units: u128,
}

/// A token the sweeper moves, with its configured price.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepToken {
    /// The ERC-20 contract.
    pub contract: Address,
    /// Its price, for the worth-it rule.
    pub price: TokenPrice,
}

/// How a token sweep's gas limit is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum GasLimit {
    /// `eth_estimateGas` of the exact transfer, plus `margin_percent`
    /// (rounded up). A transfer that would revert is skipped with its reason.
    Estimate {
        /// Added to the estimate, percent.
        margin_percent: u64,
    },
    /// The same limit for every token sweep (no estimate; a transfer that
    /// would revert is sent and fails).
    Fixed(u64),
}

/// The sweeper's configuration. Every limit is here.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// Where every sweep goes.
    pub hot_wallet: Address,
    /// Tokens swept, with prices.
    pub tokens: Vec<SweepToken>,
    /// Sweep only when the amount is worth at least this percentage of the
    /// sweep's cost bound (300: worth 3× the gas). 0 sweeps everything.
    pub worth_percent: u128,
    /// Token-sweep gas limits.
    pub gas_limit: GasLimit,
    /// Fee policy of sweeps and top-ups.
    pub fee_policy: FeePolicy,
    /// Most deposit addresses in one plan.
    pub max_addresses: usize,
    /// Longest wait for a top-up or sweep to be mined.
    pub receipt_timeout: Duration,
    /// Pause between receipt polls.
    pub poll_interval: Duration,
    /// Batch the top-ups of existing accounts (`None`: one transaction each).
    pub topup_batch: Option<TopUpBatch>,
}

impl SweepConfig {
    /// Defaults: estimated gas (+0 %), worth 3× the gas, economy fees, 10,000
    /// addresses per plan, 10 minutes for receipts polled every second.
    pub fn new(hot_wallet: Address, tokens: Vec<SweepToken>) -> Self {
        SweepConfig {
            hot_wallet,
            tokens,
            worth_percent: 300,
            gas_limit: GasLimit::Estimate { margin_percent: 0 },
            fee_policy: FeePolicy::Economy,
            max_addresses: 10_000,
            receipt_timeout: Duration::from_secs(600),
            poll_interval: Duration::from_secs(1),
            topup_batch: None,
        }
    }

    fn validate(&self) -> Result<(), EthError> {
        if self.tokens.iter().any(|t| t.price.per_units == 0) {
            return Err(EthError::Config("a token price's per_units must be > 0".into()));
        }
        if let GasLimit::Fixed(g) = self.gas_limit {
            if g < GAS_NATIVE_TRANSFER {
                return Err(EthError::Config(format!("fixed gas limit {g} is below 21,000")));
            }
        }
        if self.topup_batch.is_some_and(|b| b.max_recipients == 0) {
            return Err(EthError::Config("topup_batch.max_recipients must be > 0".into()));
        }
        if self.max_addresses == 0 || self.poll_interval.is_zero() {
            return Err(EthError::Config("max_addresses and poll_interval must be > 0".into()));
        }
        Ok(())
    }
}

/// A deposit address and the signer key that controls it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepositAccount {
    /// The address (checked against the key's public key by [`Sweeper::plan`]).
    pub address: Address,
    /// Its key in the signer.
    pub key: KeyId,
}

/// What is swept: ETH or a token contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum SweepAsset {
    /// ETH.
    Native,
    /// An ERC-20.
    Token(Address),
}

impl SweepAsset {
    /// As the gateway interface's asset.
    pub fn to_asset(self) -> Asset {
        match self {
            SweepAsset::Native => Asset::Native,
            SweepAsset::Token(t) => Asset::Token(t.to_checksum(None)),
        }
    }
}

/// One sweep transaction, planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlannedSweep {
    /// The deposit address's nonce for it.
    pub nonce: u64,
    /// Base units (tokens) or wei (ETH) moved to the hot wallet.
    pub amount: u128,
    /// Gas limit.
    pub gas_limit: u64,
    /// Max fee per gas.
    pub max_fee_per_gas: u128,
    /// Max priority fee per gas (= max fee for ETH sweeps: no dust).
    pub max_priority_fee_per_gas: u128,
    /// Most it can cost, wei (`gas_limit × max fee`, plus a top-up's
    /// `21,000 × max fee` when one is needed).
    pub cost_bound_wei: u128,
}

/// Why an address/asset is not swept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum SkipReason {
    /// Nothing to sweep.
    Empty,
    /// Not worth the gas: `value_wei × 100 < worth_percent × cost_bound_wei`.
    NotWorthIt {
        /// What the amount is worth, wei (rounded down).
        value_wei: u128,
        /// The sweep's cost bound, wei.
        cost_bound_wei: u128,
        /// The configured `worth_percent`.
        worth_percent: u128,
    },
    /// The address has unmined transactions: a sweep or top-up is in flight.
    InFlight {
        /// How many.
        pending: u64,
    },
    /// `eth_estimateGas` says the transfer would fail (a paused or
    /// blacklisting token, ...): nothing is sent.
    WouldRevert {
        /// The node's message.
        reason: String,
    },
    /// ETH waits while tokens are swept from the same address (it pays
    /// their gas); a later plan sweeps what is left.
    AfterTokenSweep,
    /// The top-up did not arrive in full (an earlier top-up with other
    /// fees); a later plan retries.
    TopUpShort {
        /// ETH needed, wei.
        needed_wei: u128,
        /// ETH held, wei.
        held_wei: u128,
    },
}

/// One address/asset of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanItem {
    /// The deposit address.
    pub address: Address,
    /// What.
    pub asset: SweepAsset,
    /// Its balance when planned.
    pub balance: u128,
    /// Sweep it, or why not.
    pub decision: Result<PlannedSweep, SkipReason>,
}

/// ETH the fee wallet sends to a deposit address so it can pay its sweeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PlannedTopUp {
    /// The deposit address.
    pub address: Address,
    /// Its nonce (part of the top-up's idempotency id).
    pub nonce: u64,
    /// Wei: `Σ gas limit × max fee` of its sweeps minus the ETH it holds.
    pub amount: u128,
    /// ETH it held when planned, wei.
    pub held_wei: u128,
    /// Sent in a batch (the address exists on chain and batching is configured).
    pub batched: bool,
}

/// What [`Sweeper::plan`] decided for a set of deposit addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SweepPlan {
    /// The fee estimate every sweep of the plan uses.
    pub fees: (u128, u128),
    /// Every non-empty address/asset (and one `Empty` row per empty address).
    pub items: Vec<PlanItem>,
    /// Top-ups to send first.
    pub topups: Vec<PlannedTopUp>,
}

impl SweepPlan {
    /// The items that will be swept.
    pub fn sweeps(&self) -> impl Iterator<Item = (&PlanItem, &PlannedSweep)> {
        self.items.iter().filter_map(|i| i.decision.as_ref().ok().map(|s| (i, s)))
    }

    /// The items skipped and why.
    pub fn skipped(&self) -> impl Iterator<Item = (&PlanItem, &SkipReason)> {
        self.items.iter().filter_map(|i| i.decision.as_ref().err().map(|r| (i, r)))
    }
}

/// A mined transaction's cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mined {
    /// Its hash.
    pub tx: B256,
    /// Gas used.
    pub gas_used: u64,
    /// Price paid per gas, wei.
    pub effective_gas_price: u128,
    /// `gas_used × effective_gas_price`, wei.
    pub fee_wei: u128,
    /// Receipt status.
    pub success: bool,
}

/// One executed sweep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SweptItem {
    /// The deposit address.
    pub address: Address,
    /// What.
    pub asset: SweepAsset,
    /// Amount moved (if `mined.success`).
    pub amount: u128,
    /// Gas limit it was sent with.
    pub gas_limit: u64,
    /// Its receipt.
    pub mined: Mined,
}

/// One executed top-up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ToppedUp {
    /// The deposit address.
    pub address: Address,
    /// Wei sent.
    pub amount: u128,
    /// Its receipt.
    pub mined: Mined,
}

/// One executed batch of top-ups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchedTopUp {
    /// Recipients and wei each.
    pub recipients: Vec<(Address, u128)>,
    /// Its receipt.
    pub mined: Mined,
}

/// What [`Sweeper::execute`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SweepReport {
    /// Top-ups, mined.
    pub topups: Vec<ToppedUp>,
    /// Batched top-ups, mined.
    pub topup_batches: Vec<BatchedTopUp>,
    /// Sweeps, mined (`mined.success` false: reverted, fee paid, nothing moved).
    pub swept: Vec<SweptItem>,
    /// Planned sweeps not sent, and why.
    pub not_sent: Vec<(Address, SweepAsset, SkipReason)>,
    /// ETH left on each address that sent a sweep, wei, read after the last receipt.
    pub eth_left: BTreeMap<Address, u128>,
}

impl SweepReport {
    /// Gas used by top-ups and sweeps.
    pub fn gas_used(&self) -> u64 {
        self.topups
            .iter()
            .map(|t| t.mined.gas_used)
            .chain(self.topup_batches.iter().map(|b| b.mined.gas_used))
            .chain(self.swept.iter().map(|s| s.mined.gas_used))
            .sum()
    }

    /// Fees paid by top-ups and sweeps, wei.
    pub fn fee_wei(&self) -> u128 {
        self.topups
            .iter()
            .map(|t| t.mined.fee_wei)
            .chain(self.topup_batches.iter().map(|b| b.mined.fee_wei))
            .chain(self.swept.iter().map(|s| s.mined.fee_wei))
            .sum()
    }

    /// ETH sent by top-ups, wei.
    pub fn topup_wei(&self) -> u128 {
        self.topups
            .iter()
            .map(|t| t.amount)
            .chain(self.topup_batches.iter().flat_map(|b| b.recipients.iter().map(|(_, v)| *v)))
            .sum()
    }

    /// ETH left on the swept addresses, wei.
    pub fn eth_left_wei(&self) -> u128 {
        self.eth_left.values().sum()
    }
}

/// Whether `amount` of a token at `price` is worth at least `worth_percent`
/// % of `cost_wei`: `amount × wei × 100 ≥ worth_percent × cost × per_units`,
/// exact in 512 bits. Also returns the value in wei (rounded down,
/// saturated at `u128::MAX`). Pure.
pub fn worth_it(amount: u128, price: TokenPrice, cost_wei: u128, worth_percent: u128) -> (bool, u128) {
    // Each product is below 2^(128·3 + 7): exact in 512 bits.
    let value = U512::from(amount) * U512::from(price.wei);
    let lhs = value * U512::from(100u8);
    let rhs = U512::from(worth_percent) * U512::from(cost_wei) * U512::from(price.per_units);
    let value_wei = value.checked_div(U512::from(price.per_units)).unwrap_or(U512::MAX);
    (lhs >= rhs, u128::try_from(value_wei).unwrap_or(u128::MAX))
}

fn mul(a: u128, b: u128, what: &str) -> Result<u128, EthError> {
    a.checked_mul(b).ok_or_else(|| EthError::Config(format!("{what} overflows u128")))
}

/// Sweeps deposit addresses into the hot wallet, topping them up from the
/// fee wallet.
#[derive(Debug)]
pub struct Sweeper {
    fee_wallet: Arc<EthWallet>,
    signer: Arc<dyn Signer>,
    config: SweepConfig,
}

impl Sweeper {
    /// A sweeper paying gas top-ups from `fee_wallet`; deposit keys are in `signer`.
    pub fn new(
        fee_wallet: Arc<EthWallet>,
        signer: Arc<dyn Signer>,
        config: SweepConfig,
    ) -> Result<Self, EthError> {
        config.validate()?;
        Ok(Sweeper { fee_wallet, signer, config })
    }

    /// The configuration.
    pub fn config(&self) -> &SweepConfig {
        &self.config
    }

    fn provider(&self) -> &RootProvider {
        self.fee_wallet.provider()
    }

    /// Decides, for every deposit address, what to sweep and what to skip
    /// and why, and which top-ups that needs. Reads the chain; sends nothing.
    pub async fn plan(&self, accounts: &[DepositAccount]) -> Result<SweepPlan, EthError> {
        if accounts.len() > self.config.max_addresses {
            return Err(EthError::Limit {
                what: "deposit addresses per sweep plan",
                limit: self.config.max_addresses as u64,
            });
        }
        for a in accounts {
            let public = self.signer.public_key(&a.key).await.map_err(|e| EthError::Signer(e.to_string()))?;
            let address = Address::from(public.eth_address().map_err(|e| EthError::Signer(e.to_string()))?);
            if address != a.address {
                return Err(EthError::Signer(format!("key {} is for {address}, not {}", a.key, a.address)));
            }
        }
        let f =
            fees::estimate(self.provider(), self.config.fee_policy, &self.fee_wallet.config().fees).await?;
        let max_fee = f.max_fee_per_gas;
        let topup_cost = mul(u128::from(GAS_NATIVE_TRANSFER), max_fee, "top-up fee")?;
        let mut plan =
            SweepPlan { fees: (max_fee, f.max_priority_fee_per_gas), items: Vec::new(), topups: Vec::new() };
        for a in accounts {
            self.plan_address(a.address, f, topup_cost, &mut plan).await?;
        }
        Ok(plan)
    }

    async fn plan_address(
        &self,
        address: Address,
        f: Fees,
        topup_cost: u128,
        plan: &mut SweepPlan,
    ) -> Result<(), EthError> {
        let p = self.provider();
        let mined = nonce(p, address, BlockId::latest()).await?;
        let pending = nonce(p, address, BlockId::pending()).await?;
        let eth = p.get_balance(address).await.map_err(|e| EthError::node("eth_getBalance", e))?;
        let eth =
            u128::try_from(eth).map_err(|_| EthError::bad("balance", format!("{address}: over u128")))?;
        let mut balances = Vec::new();
        for t in &self.config.tokens {
            let b = self.token_balance(t.contract, address).await?;
            if b > 0 {
                balances.push((*t, b));
            }
        }
        if pending != mined {
            let reason = SkipReason::InFlight { pending: pending.saturating_sub(mined) };
            for (t, b) in &balances {
                plan.items.push(item(address, SweepAsset::Token(t.contract), *b, Err(reason.clone())));
            }
            plan.items.push(item(address, SweepAsset::Native, eth, Err(reason)));
            return Ok(());
        }
        if balances.is_empty() && eth == 0 {
            plan.items.push(item(address, SweepAsset::Native, 0, Err(SkipReason::Empty)));
            return Ok(());
        }
        // Token candidates with their gas limits.
        let mut candidates = Vec::new();
        for (t, b) in balances {
            match self.gas_limit(address, t.contract, b).await? {
                Ok(g) => candidates.push((t, b, g)),
                Err(reason) => plan.items.push(item(address, SweepAsset::Token(t.contract), b, Err(reason))),
            }
        }
        // The worth-it rule, judging each with a top-up's cost if the address
        // cannot pay for every candidate itself (conservative).
        let mut need = 0u128;
        for (_, _, g) in &candidates {
            need = need.saturating_add(mul(u128::from(*g), f.max_fee_per_gas, "sweep fee")?);
        }
        let topup_needed = need > eth;
        let mut nonce_next = mined;
        let mut need_swept = 0u128;
        for (t, b, g) in candidates {
            let own = mul(u128::from(g), f.max_fee_per_gas, "sweep fee")?;
            let cost = own.saturating_add(if topup_needed { topup_cost } else { 0 });
            let (ok, value_wei) = worth_it(b, t.price, cost, self.config.worth_percent);
            let decision = if ok {
                need_swept = need_swept.saturating_add(own);
                nonce_next += 1;
                Ok(PlannedSweep {
                    nonce: nonce_next - 1,
                    amount: b,
                    gas_limit: g,
                    max_fee_per_gas: f.max_fee_per_gas,
                    max_priority_fee_per_gas: f.max_priority_fee_per_gas,
                    cost_bound_wei: cost,
                })
            } else {
                Err(SkipReason::NotWorthIt {
                    value_wei,
                    cost_bound_wei: cost,
                    worth_percent: self.config.worth_percent,
                })
            };
            plan.items.push(item(address, SweepAsset::Token(t.contract), b, decision));
        }
        if need_swept > 0 {
            if need_swept > eth {
                let batched = self.config.topup_batch.is_some() && (mined > 0 || eth > 0);
                plan.topups.push(PlannedTopUp {
                    address,
                    nonce: mined,
                    amount: need_swept - eth,
                    held_wei: eth,
                    batched,
                });
            }
            if eth > 0 {
                plan.items.push(item(address, SweepAsset::Native, eth, Err(SkipReason::AfterTokenSweep)));
            }
            return Ok(());
        }
        if eth > 0 {
            // ETH: tip = max fee, so the fee is exactly 21,000 × max fee and nothing is left.
            let fee = mul(u128::from(GAS_NATIVE_TRANSFER), f.max_fee_per_gas, "sweep fee")?;
            let worth = TokenPrice { wei: 1, per_units: 1 };
            let (ok, value_wei) = worth_it(eth, worth, fee, self.config.worth_percent.max(100));
            let decision = if ok && eth > fee {
                Ok(PlannedSweep {
                    nonce: mined,
                    amount: eth - fee,
                    gas_limit: GAS_NATIVE_TRANSFER,
                    max_fee_per_gas: f.max_fee_per_gas,
                    max_priority_fee_per_gas: f.max_fee_per_gas,
                    cost_bound_wei: fee,
                })
            } else {
                Err(SkipReason::NotWorthIt {
                    value_wei,
                    cost_bound_wei: fee,
                    worth_percent: self.config.worth_percent.max(100),
                })
            };
            plan.items.push(item(address, SweepAsset::Native, eth, decision));
        }
        Ok(())
    }

    async fn token_balance(&self, token: Address, owner: Address) -> Result<u128, EthError> {
        let req =
            TransactionRequest::default().with_to(token).with_input(balanceOfCall { owner }.abi_encode());
        let out = self
            .provider()
            .call(req)
            .await
            .map_err(|e| EthError::node(format!("balanceOf {owner} on {token}"), e))?;
        let v = balanceOfCall::abi_decode_returns(&out)
            .map_err(|e| EthError::bad("balanceOf answer", format!("{token}: {e}")))?;
        u128::try_from(v).map_err(|_| EthError::bad("balanceOf answer", format!("{token}: {v} over u128")))
    }

    /// The gas limit of sweeping `amount` of `token` from `from`, or why not.
    async fn gas_limit(
        &self,
        from: Address,
        token: Address,
        amount: u128,
    ) -> Result<Result<u64, SkipReason>, EthError> {
        match self.config.gas_limit {
            GasLimit::Fixed(g) => Ok(Ok(g)),
            GasLimit::Estimate { margin_percent } => {
                let req = TransactionRequest::default().with_from(from).with_to(token).with_input(
                    transferCall { to: self.config.hot_wallet, amount: U256::from(amount) }.abi_encode(),
                );
                match self.provider().estimate_gas(req).await {
                    Ok(g) => {
                        let with_margin = u128::from(g) * u128::from(100 + margin_percent);
                        Ok(Ok(u64::try_from(with_margin.div_ceil(100)).unwrap_or(u64::MAX)))
                    }
                    Err(e) if e.as_error_resp().is_some() => {
                        Ok(Err(SkipReason::WouldRevert { reason: e.to_string() }))
                    }
                    Err(e) => Err(EthError::node(format!("eth_estimateGas transfer from {from}"), e)),
                }
            }
        }
    }

    /// Sends the plan's top-ups, waits for them, sends every sweep, waits
    /// for them, and reports gas, fees and the ETH left on each address.
    pub async fn execute(
        &self,
        plan: &SweepPlan,
        accounts: &[DepositAccount],
    ) -> Result<SweepReport, EthError> {
        let keys: BTreeMap<Address, &KeyId> = accounts.iter().map(|a| (a.address, &a.key)).collect();
        let mut report = SweepReport::default();
        // 1. Top-ups from the fee wallet, all broadcast, then all awaited.
        let mut ids = Vec::new();
        for t in plan.topups.iter().filter(|t| !t.batched) {
            let id = format!("sweep-topup-{:#x}-{}", t.address, t.nonce);
            let request = WithdrawalRequest {
                id: id.clone(),
                to: t.address.to_checksum(None),
                asset: Asset::Native,
                amount: t.amount,
                fee: self.config.fee_policy,
            };
            self.fee_wallet.submit(&request).await?;
            ids.push((t, id));
        }
        let batched: Vec<&PlannedTopUp> = plan.topups.iter().filter(|t| t.batched).collect();
        let mut batch_ids = Vec::new();
        if let Some(batch) = self.config.topup_batch {
            for chunk in batched.chunks(batch.max_recipients) {
                batch_ids.push((chunk, self.send_batch(batch.contract, chunk).await?));
            }
        }
        for (t, id) in ids {
            let hash = self.await_withdrawal(&id).await?;
            let mined = self.await_receipt(hash).await?;
            report.topups.push(ToppedUp { address: t.address, amount: t.amount, mined });
        }
        for (chunk, id) in batch_ids {
            let hash = self.await_withdrawal(&id).await?;
            let mined = self.await_receipt(hash).await?;
            if !mined.success {
                return Err(EthError::Rejected { id, reason: "the batched top-up reverted".into() });
            }
            let recipients = chunk.iter().map(|t| (t.address, t.amount)).collect();
            report.topup_batches.push(BatchedTopUp { recipients, mined });
        }
        // 2. Sweeps, signed by each deposit address's key, all broadcast, then all awaited.
        let mut sent = Vec::new();
        let mut by_address: BTreeMap<Address, Vec<(&PlanItem, &PlannedSweep)>> = BTreeMap::new();
        for (i, s) in plan.sweeps() {
            by_address.entry(i.address).or_default().push((i, s));
        }
        for (address, sweeps) in by_address {
            let key = *keys.get(&address).ok_or_else(|| EthError::Unknown(format!("key of {address}")))?;
            let needed = sweeps.iter().map(|(_, s)| s.gas_limit as u128 * s.max_fee_per_gas).sum::<u128>();
            let held = self
                .provider()
                .get_balance(address)
                .await
                .map_err(|e| EthError::node("eth_getBalance", e))?;
            let held = u128::try_from(held).unwrap_or(u128::MAX);
            let native_only = sweeps.iter().all(|(i, _)| i.asset == SweepAsset::Native);
            if !native_only && held < needed {
                for (i, _) in &sweeps {
                    report.not_sent.push((
                        address,
                        i.asset,
                        SkipReason::TopUpShort { needed_wei: needed, held_wei: held },
                    ));
                }
                continue;
            }
            for (i, s) in sweeps {
                let (to, value, input) = match i.asset {
                    SweepAsset::Native => (self.config.hot_wallet, U256::from(s.amount), Bytes::new()),
                    SweepAsset::Token(token) => (
                        token,
                        U256::ZERO,
                        transferCall { to: self.config.hot_wallet, amount: U256::from(s.amount) }
                            .abi_encode()
                            .into(),
                    ),
                };
                let tx = TxEip1559 {
                    chain_id: self.fee_wallet.config().chain_id,
                    nonce: s.nonce,
                    gas_limit: s.gas_limit,
                    max_fee_per_gas: s.max_fee_per_gas,
                    max_priority_fee_per_gas: s.max_priority_fee_per_gas,
                    to: TxKind::Call(to),
                    value,
                    access_list: Default::default(),
                    input,
                };
                let (hash, raw) = sign_eip1559(self.signer.as_ref(), key, address, tx).await?;
                send_raw(self.provider(), hash, &raw).await?;
                sent.push((i, *s, hash));
            }
        }
        for (i, s, hash) in sent {
            let mined = self.await_receipt(hash).await?;
            report.swept.push(SweptItem {
                address: i.address,
                asset: i.asset,
                amount: s.amount,
                gas_limit: s.gas_limit,
                mined,
            });
            report.eth_left.insert(i.address, 0);
        }
        for (address, left) in report.eth_left.iter_mut() {
            let b = self
                .provider()
                .get_balance(*address)
                .await
                .map_err(|e| EthError::node("eth_getBalance", e))?;
            *left = u128::try_from(b).unwrap_or(u128::MAX);
        }
        Ok(report)
    }

    /// Sends one batch of top-ups through the Disperse contract; its
    /// withdrawal id (a hash of the recipients and their nonces, so a
    /// re-run of the same plan sends it once).
    async fn send_batch(&self, contract: Address, chunk: &[&PlannedTopUp]) -> Result<String, EthError> {
        let mut key = Vec::with_capacity(chunk.len() * 28);
        for t in chunk {
            key.extend_from_slice(t.address.as_slice());
            key.extend_from_slice(&t.nonce.to_be_bytes());
        }
        let id = format!("sweep-topup-batch-{:x}", alloy::primitives::keccak256(&key));
        let total = chunk.iter().try_fold(0u128, |sum, t| sum.checked_add(t.amount));
        let total = total.ok_or_else(|| EthError::Config("batched top-up total overflows u128".into()))?;
        let input: Bytes = disperseEtherCall {
            recipients: chunk.iter().map(|t| t.address).collect(),
            values: chunk.iter().map(|t| U256::from(t.amount)).collect(),
        }
        .abi_encode()
        .into();
        let req = TransactionRequest::default()
            .with_from(self.fee_wallet.address())
            .with_to(contract)
            .with_value(U256::from(total))
            .with_input(input.clone());
        let gas_limit = self
            .provider()
            .estimate_gas(req)
            .await
            .map_err(|e| EthError::node(format!("eth_estimateGas disperseEther on {contract}"), e))?;
        let request = WithdrawalRequest {
            id: id.clone(),
            to: contract.to_checksum(None),
            asset: Asset::Native,
            amount: total,
            fee: self.config.fee_policy,
        };
        self.fee_wallet.submit_call(&request, ContractCall { input, gas_limit }).await?;
        Ok(id)
    }

    /// Waits until a fee-wallet withdrawal is mined; its transaction hash.
    async fn await_withdrawal(&self, id: &str) -> Result<B256, EthError> {
        let deadline = Instant::now() + self.config.receipt_timeout;
        loop {
            match self.fee_wallet.status(id).await? {
                WithdrawalStatus::Mined { tx_hash, .. } | WithdrawalStatus::Final { tx_hash, .. } => {
                    return tx_hash.parse().map_err(|e| EthError::Journal(format!("{tx_hash}: {e}")));
                }
                WithdrawalStatus::Failed { reason, .. } => {
                    return Err(EthError::Rejected {
                        id: id.into(),
                        reason: format!("top-up failed: {reason}"),
                    });
                }
                _ if Instant::now() >= deadline => {
                    return Err(EthError::Limit {
                        what: "receipt_timeout (seconds) waiting for a top-up",
                        limit: self.config.receipt_timeout.as_secs(),
                    })
                }
                _ => tokio::time::sleep(self.config.poll_interval).await,
            }
        }
    }

    async fn await_receipt(&self, hash: B256) -> Result<Mined, EthError> {
        let deadline = Instant::now() + self.config.receipt_timeout;
        loop {
            let r: Option<TransactionReceipt> = self
                .provider()
                .get_transaction_receipt(hash)
                .await
                .map_err(|e| EthError::node(format!("eth_getTransactionReceipt {hash:#x}"), e))?;
            if let Some(r) = r {
                return Ok(Mined {
                    tx: hash,
                    gas_used: r.gas_used,
                    effective_gas_price: r.effective_gas_price,
                    fee_wei: u128::from(r.gas_used) * r.effective_gas_price,
                    success: r.status(),
                });
            }
            if Instant::now() >= deadline {
                return Err(EthError::Limit {
                    what: "receipt_timeout (seconds) waiting for a sweep",
                    limit: self.config.receipt_timeout.as_secs(),
                });
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }
}

fn item(
    address: Address,
    asset: SweepAsset,
    balance: u128,
    decision: Result<PlannedSweep, SkipReason>,
) -> PlanItem {
    PlanItem { address, asset, balance, decision }
}

async fn nonce(p: &RootProvider, address: Address, at: BlockId) -> Result<u64, EthError> {
    p.get_transaction_count(address)
        .block_id(at)
        .await
        .map_err(|e| EthError::node("eth_getTransactionCount", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row: amount, price, cost, worth percent → (sweep?, value in wei).
    #[test]
    fn the_worth_it_rule_compares_exact_products() {
        // USDT-like: 6 decimals, 1 ETH = 3,000 USDT → 1 unit = 10^18 / (3 × 10^9) wei.
        let usdt = TokenPrice { wei: 1_000_000_000_000_000_000, per_units: 3_000_000_000 };
        let rows: [(u128, TokenPrice, u128, u128, bool, u128); 7] = [
            // 30 USDT = 0.01 ETH vs a 0.001 ETH cost, 3×: sweep.
            (30_000_000, usdt, 1_000_000_000_000_000, 300, true, 10_000_000_000_000_000),
            // exactly 3× is enough.
            (9_000_000, usdt, 1_000_000_000_000_000, 300, true, 3_000_000_000_000_000),
            // one unit less is not.
            (8_999_999, usdt, 1_000_000_000_000_000, 300, false, 2_999_999_666_666_666),
            // 150 % of the cost.
            (4_500_000, usdt, 1_000_000_000_000_000, 150, true, 1_500_000_000_000_000),
            // worth 0 %: everything is swept, even one unit.
            (1, usdt, 1_000_000_000_000_000, 0, true, 333_333_333),
            // no overflow at the extremes: u128::MAX units at a huge price.
            (u128::MAX, TokenPrice { wei: u128::MAX, per_units: 1 }, u128::MAX, 10_000, true, u128::MAX),
            // a price of 0 wei is never worth a non-zero cost.
            (u128::MAX, TokenPrice { wei: 0, per_units: 1 }, 1, 1, false, 0),
        ];
        for (i, (amount, price, cost, pct, sweep, value)) in rows.into_iter().enumerate() {
            assert_eq!(worth_it(amount, price, cost, pct), (sweep, value), "row {i}");
        }
    }
}
