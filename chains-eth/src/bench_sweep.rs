//! `molly bench eth-sweep`: gas and fees of sweeping N deposit addresses
//! into the hot wallet, on a real anvil, before and after each optimisation.
//!
//! Every scenario gets a fresh anvil (automine) with the same setup: an
//! OpenZeppelin ERC-20 and the USDT-like no-return token (compiled by
//! scripts/setup/eth-contracts.sh), a hot wallet already holding some of
//! each (as a working hot wallet does), a fee wallet with 100 ETH, and
//! `deposits` deposit addresses (keys in a software keystore) without ETH:
//! of every 10, 8 hold 100 OZ, 1 holds 500 USD (no-return token) and 1 holds
//! 0.01 OZ (dust). Two rounds: the deposits arrive, everything is planned
//! and executed; then the same deposits arrive again and are swept again
//! (what ETH the first round left behind counts toward the second's top-ups).
//!
//! Fees are paid at a fixed price (`FeePolicy::Fixed`, `gwei` per gas) on an
//! anvil started with base fee 0 (which stays 0): the price paid per gas is
//! then exactly that, so `fee = gas used × price` is as deterministic as
//! the gas, and scenarios compare at one price. Gas used is deterministic
//! on anvil. The last scenario batches top-ups through the Disperse
//! contract (compiled by the setup script too).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy::network::TransactionBuilder;
use alloy::primitives::{Address, Bytes, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::client::ClientBuilder;
use alloy::rpc::types::TransactionRequest;
use alloy::sol_types::SolCall;
use molly_chains::gateway::FeePolicy;
use molly_hsm_bridge::keystore::{KdfParams, SoftwareKeystore};
use molly_hsm_bridge::{KeyId, Scheme, Signer};
use serde::Serialize;

use crate::error::EthError;
use crate::sweep::{
    DepositAccount, GasLimit, SkipReason, SweepAsset, SweepConfig, SweepToken, Sweeper, TokenPrice,
    TopUpBatch,
};
use crate::withdraw::{transferCall, EthWallet, WalletConfig};

const ETH: u128 = 1_000_000_000_000_000_000;
const GWEI: u128 = 1_000_000_000;

/// What to measure.
#[derive(Debug, Clone)]
pub struct SweepBenchConfig {
    /// Deposit addresses.
    pub deposits: u64,
    /// Price paid per gas, gwei.
    pub gwei: u128,
    /// The anvil binary (`MOLLY_ANVIL`).
    pub anvil: Option<PathBuf>,
    /// Compiled test contracts (`MOLLY_ETH_CONTRACTS`).
    pub contracts: Option<PathBuf>,
}

/// One optimisation step.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Scenario {
    /// Short name.
    pub name: &'static str,
    /// Gas limit rule.
    pub gas_limit: GasLimit,
    /// Worth-it threshold, percent of the cost bound (0: sweep everything).
    pub worth_percent: u128,
    /// Top-ups of existing accounts batched through the Disperse contract.
    pub batch_topups: bool,
}

/// The standard ladder: each row adds one optimisation to the one before.
pub const SCENARIOS: [Scenario; 5] = [
    Scenario {
        name: "fixed-100k-sweep-all",
        gas_limit: GasLimit::Fixed(100_000),
        worth_percent: 0,
        batch_topups: false,
    },
    Scenario {
        name: "estimated+10%-sweep-all",
        gas_limit: GasLimit::Estimate { margin_percent: 10 },
        worth_percent: 0,
        batch_topups: false,
    },
    Scenario {
        name: "estimated-sweep-all",
        gas_limit: GasLimit::Estimate { margin_percent: 0 },
        worth_percent: 0,
        batch_topups: false,
    },
    Scenario {
        name: "estimated-worth-3x",
        gas_limit: GasLimit::Estimate { margin_percent: 0 },
        worth_percent: 300,
        batch_topups: false,
    },
    Scenario {
        name: "estimated-worth-3x-batched-topups",
        gas_limit: GasLimit::Estimate { margin_percent: 0 },
        worth_percent: 300,
        batch_topups: true,
    },
];

/// Most recipients per batched top-up in the bench.
pub const BATCH_RECIPIENTS: usize = 200;

/// One round's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Round {
    /// Sweeps sent (all succeeded, else the bench fails).
    pub sweeps: u64,
    /// Skipped as not worth it.
    pub skipped_not_worth_it: u64,
    /// Top-ups sent (one per address, batched or not).
    pub topups: u64,
    /// Batch transactions among them.
    pub topup_batches: u64,
    /// Gas used by sweeps.
    pub sweep_gas: u64,
    /// Gas used by top-ups.
    pub topup_gas: u64,
    /// Gas used, all.
    pub gas_total: u64,
    /// Fees paid, wei (sweeps + top-ups).
    pub fee_wei: u128,
    /// ETH sent to deposit addresses by top-ups, wei.
    pub topup_wei: u128,
    /// ETH left on all deposit addresses after the round, wei.
    pub eth_left_wei: u128,
    /// Gas used per token sweep, by token: (min, max).
    pub sweep_gas_by_token: BTreeMap<String, (u64, u64)>,
    /// Gas limit per token sweep, by token: (min, max).
    pub gas_limit_by_token: BTreeMap<String, (u64, u64)>,
    /// Seconds to plan.
    pub plan_seconds: f64,
    /// Seconds to execute (top-ups mined, then sweeps mined).
    pub execute_seconds: f64,
}

/// One scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// The scenario.
    pub scenario: Scenario,
    /// First deposits.
    pub round1: Round,
    /// The same deposits again.
    pub round2: Round,
}

/// The bench's output.
#[derive(Debug, Clone, Serialize)]
pub struct SweepBenchReport {
    /// Deposit addresses.
    pub deposits: u64,
    /// Price paid per gas, wei.
    pub price_wei_per_gas: u128,
    /// Each scenario.
    pub scenarios: Vec<ScenarioReport>,
}

struct Node(Child);

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

alloy::sol! {
    /// Deploy-time constructor of the OpenZeppelin test token.
    function ozConstructor(string name_, string symbol_, uint8 decimals_, uint256 supply);
    /// Deploy-time constructor of the no-return token.
    function noReturnConstructor(uint256 supply);
}

/// Runs every scenario.
pub fn run(config: &SweepBenchConfig) -> Result<SweepBenchReport, EthError> {
    let anvil = config.anvil.clone().ok_or_else(|| {
        EthError::Config("anvil not found: set MOLLY_ANVIL (scripts/setup/anvil.sh) or pass --anvil".into())
    })?;
    let contracts = config.contracts.clone().ok_or_else(|| {
        EthError::Config(
            "contracts not found: set MOLLY_ETH_CONTRACTS (scripts/setup/eth-contracts.sh) or pass --contracts".into(),
        )
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| EthError::Config(format!("tokio runtime: {e}")))?;
    let dir = std::env::temp_dir().join(format!("molly-eth-sweep-{}", std::process::id()));
    let result = rt.block_on(async {
        let keys = SoftwareKeystore::create(&dir.join("keys"), b"bench", KdfParams::insecure_for_tests())
            .map_err(|e| EthError::Signer(e.to_string()))?;
        let mut accounts = Vec::new();
        for i in 0..config.deposits {
            let key = KeyId::new(format!("dep-{i}")).map_err(|e| EthError::Signer(e.to_string()))?;
            let info =
                keys.generate(&key, Scheme::Secp256k1).await.map_err(|e| EthError::Signer(e.to_string()))?;
            let address =
                Address::from(info.public_key.eth_address().map_err(|e| EthError::Signer(e.to_string()))?);
            accounts.push(DepositAccount { address, key });
        }
        let signer: Arc<dyn Signer> = Arc::new(keys);
        let mut scenarios = Vec::new();
        for (i, s) in SCENARIOS.iter().enumerate() {
            let fee_key = KeyId::new(format!("fee-{i}")).map_err(|e| EthError::Signer(e.to_string()))?;
            signer
                .generate(&fee_key, Scheme::Secp256k1)
                .await
                .map_err(|e| EthError::Signer(e.to_string()))?;
            let journal = dir.join(format!("fee-{i}.jsonl"));
            scenarios.push(
                scenario(&anvil, &contracts, *s, config.gwei, &accounts, signer.clone(), fee_key, journal)
                    .await?,
            );
        }
        Ok(SweepBenchReport { deposits: config.deposits, price_wei_per_gas: config.gwei * GWEI, scenarios })
    });
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[allow(clippy::too_many_arguments)] // reason: one call site; a struct would only rename these
async fn scenario(
    anvil: &std::path::Path,
    contracts: &std::path::Path,
    s: Scenario,
    gwei: u128,
    accounts: &[DepositAccount],
    signer: Arc<dyn Signer>,
    fee_key: KeyId,
    journal: PathBuf,
) -> Result<ScenarioReport, EthError> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| EthError::Config(format!("no free port: {e}")))?
        .port();
    let _node = Node(
        Command::new(anvil)
            // Base fee 0 (it stays 0): every transaction pays exactly its fixed price per gas.
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--base-fee", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| EthError::Config(format!("cannot start {}: {e}", anvil.display())))?,
    );
    let http = format!("http://127.0.0.1:{port}");
    let rpc: RootProvider = RootProvider::new(
        ClientBuilder::default().http(http.parse().map_err(|e| EthError::Config(format!("{e}")))?),
    );
    let mut up = false;
    for _ in 0..300 {
        if rpc.get_block_number().await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !up {
        return Err(EthError::Config("anvil did not answer within 15 s".into()));
    }
    let dev = Dev { rpc: rpc.clone(), from: dev_account(&rpc).await? };
    let supply = U256::from(10u64).pow(U256::from(30u64));
    let read = |name: &str| -> Result<Vec<u8>, EthError> {
        let path = contracts.join(format!("{name}.bin"));
        let text = std::fs::read_to_string(&path)
            .map_err(|e| EthError::Config(format!("{}: {e}", path.display())))?;
        alloy::primitives::hex::decode(text.trim())
            .map_err(|e| EthError::Config(format!("{}: {e}", path.display())))
    };
    let mut oz_code = read("TestToken")?;
    oz_code.extend(
        &ozConstructorCall { name_: "OZ".into(), symbol_: "OZ".into(), decimals_: 18, supply }.abi_encode()
            [4..],
    );
    let mut usd_code = read("NoReturnToken")?;
    usd_code.extend(&noReturnConstructorCall { supply }.abi_encode()[4..]);
    let oz = dev.deploy(oz_code).await?;
    let usd = dev.deploy(usd_code).await?;
    let disperse = dev.deploy(read("Disperse")?).await?;

    let hot = Address::repeat_byte(0x40);
    dev.token(oz, hot, ETH).await?;
    dev.token(usd, hot, 1_000_000).await?;
    let mut wc = WalletConfig::new(http, 31337, fee_key, journal);
    wc.confirmations = 1;
    let fee_wallet = Arc::new(EthWallet::open(wc, signer.clone()).await?);
    dev.eth(fee_wallet.address(), 100 * ETH).await?;

    let tokens = vec![
        // 1 OZ = 0.001 ETH; 1 ETH = 3,000 USD (6 decimals).
        SweepToken { contract: oz, price: TokenPrice { wei: ETH / 1_000, per_units: ETH } },
        SweepToken { contract: usd, price: TokenPrice { wei: ETH, per_units: 3_000_000_000 } },
    ];
    let mut config = SweepConfig::new(hot, tokens);
    config.gas_limit = s.gas_limit;
    config.worth_percent = s.worth_percent;
    config.fee_policy = FeePolicy::Fixed { per_unit: gwei * GWEI };
    config.poll_interval = Duration::from_millis(10);
    config.receipt_timeout = Duration::from_secs(120);
    if s.batch_topups {
        config.topup_batch = Some(TopUpBatch { contract: disperse, max_recipients: BATCH_RECIPIENTS });
    }
    let sweeper = Sweeper::new(fee_wallet, signer, config)?;
    let names = BTreeMap::from([(oz, "OZ".to_owned()), (usd, "USD (no return)".to_owned())]);
    let mut rounds = Vec::new();
    for _ in 0..2 {
        for (i, a) in accounts.iter().enumerate() {
            match i % 10 {
                5 => dev.token(usd, a.address, 500_000_000).await?,
                9 => dev.token(oz, a.address, ETH / 100).await?,
                _ => dev.token(oz, a.address, 100 * ETH).await?,
            }
        }
        rounds.push(round(&sweeper, accounts, &rpc, &names).await?);
    }
    let round2 = rounds.pop().unwrap_or_default();
    let round1 = rounds.pop().unwrap_or_default();
    Ok(ScenarioReport { scenario: s, round1, round2 })
}

async fn round(
    sweeper: &Sweeper,
    accounts: &[DepositAccount],
    rpc: &RootProvider,
    names: &BTreeMap<Address, String>,
) -> Result<Round, EthError> {
    let t = Instant::now();
    let plan = sweeper.plan(accounts).await?;
    let plan_seconds = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let report = sweeper.execute(&plan, accounts).await?;
    let execute_seconds = t.elapsed().as_secs_f64();
    if let Some(bad) = report.swept.iter().find(|s| !s.mined.success) {
        return Err(EthError::Rejected {
            id: format!("{:#x}", bad.mined.tx),
            reason: "a sweep reverted".into(),
        });
    }
    if let Some((a, _, why)) = report.not_sent.first() {
        return Err(EthError::Rejected { id: format!("{a}"), reason: format!("not sent: {why:?}") });
    }
    let mut r = Round {
        sweeps: report.swept.len() as u64,
        skipped_not_worth_it: plan
            .skipped()
            .filter(|(i, why)| {
                matches!(i.asset, SweepAsset::Token(_)) && matches!(why, SkipReason::NotWorthIt { .. })
            })
            .count() as u64,
        topups: (report.topups.len() + report.topup_batches.iter().map(|b| b.recipients.len()).sum::<usize>())
            as u64,
        topup_batches: report.topup_batches.len() as u64,
        sweep_gas: report.swept.iter().map(|s| s.mined.gas_used).sum(),
        topup_gas: report
            .topups
            .iter()
            .map(|t| t.mined.gas_used)
            .chain(report.topup_batches.iter().map(|b| b.mined.gas_used))
            .sum(),
        gas_total: report.gas_used(),
        fee_wei: report.fee_wei(),
        topup_wei: report.topup_wei(),
        plan_seconds,
        execute_seconds,
        ..Round::default()
    };
    for s in &report.swept {
        if let SweepAsset::Token(t) = s.asset {
            let name = names.get(&t).cloned().unwrap_or_else(|| t.to_string());
            let g = r.sweep_gas_by_token.entry(name.clone()).or_insert((u64::MAX, 0));
            *g = (g.0.min(s.mined.gas_used), g.1.max(s.mined.gas_used));
            let l = r.gas_limit_by_token.entry(name).or_insert((u64::MAX, 0));
            *l = (l.0.min(s.gas_limit), l.1.max(s.gas_limit));
        }
    }
    for a in accounts {
        let b = rpc.get_balance(a.address).await.map_err(|e| EthError::node("eth_getBalance", e))?;
        r.eth_left_wei += u128::try_from(b).unwrap_or(u128::MAX);
    }
    Ok(r)
}

/// A funded, unlocked anvil dev account.
struct Dev {
    rpc: RootProvider,
    from: Address,
}

async fn dev_account(rpc: &RootProvider) -> Result<Address, EthError> {
    let accounts: Vec<Address> = rpc
        .raw_request("eth_accounts".into(), serde_json::json!([]))
        .await
        .map_err(|e| EthError::node("eth_accounts", e))?;
    accounts.first().copied().ok_or_else(|| EthError::bad("accounts", "no dev account"))
}

impl Dev {
    async fn send(&self, req: TransactionRequest) -> Result<alloy::rpc::types::TransactionReceipt, EthError> {
        let hash: alloy::primitives::B256 = self
            .rpc
            .raw_request("eth_sendTransaction".into(), (req.with_from(self.from),))
            .await
            .map_err(|e| EthError::node("eth_sendTransaction", e))?;
        for _ in 0..600 {
            if let Some(r) =
                self.rpc.get_transaction_receipt(hash).await.map_err(|e| EthError::node("receipt", e))?
            {
                if !r.status() {
                    return Err(EthError::bad("receipt", format!("setup transaction {hash:#x} reverted")));
                }
                return Ok(r);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(EthError::Config(format!("setup transaction {hash:#x} not mined")))
    }

    async fn deploy(&self, code: Vec<u8>) -> Result<Address, EthError> {
        let req =
            TransactionRequest::default().with_deploy_code(Bytes::from(code)).with_gas_limit(30_000_000);
        self.send(req).await?.contract_address.ok_or_else(|| EthError::bad("receipt", "no contract address"))
    }

    async fn token(&self, token: Address, to: Address, amount: u128) -> Result<(), EthError> {
        let input = transferCall { to, amount: U256::from(amount) }.abi_encode();
        self.send(TransactionRequest::default().with_to(token).with_input(input)).await.map(|_| ())
    }

    async fn eth(&self, to: Address, wei: u128) -> Result<(), EthError> {
        self.send(TransactionRequest::default().with_to(to).with_value(U256::from(wei))).await.map(|_| ())
    }
}
