//! Sweeps against a real anvil: ERC-20 balances (an OpenZeppelin token and
//! a USDT-like token whose `transfer` returns nothing) moved in full to the
//! hot wallet, gas topped up from the fee wallet by exactly what the sweep
//! may cost, ETH swept to the last wei, uneconomic sweeps skipped (and swept
//! once the price makes them worth it).

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::sol_types::{SolCall, SolConstructor};
use common::{contract_bytecode, deposit_address, Anvil, Rpc};
use molly_chain_eth::sweep::{
    DepositAccount, SkipReason, SweepAsset, SweepConfig, SweepToken, Sweeper, TokenPrice,
};
use molly_chain_eth::withdraw::{EthWallet, WalletConfig};
use molly_hsm_bridge::keystore::{KdfParams, SoftwareKeystore};
use molly_hsm_bridge::{KeyId, Scheme, Signer};

alloy::sol! {
    contract TestToken {
        constructor(string name_, string symbol_, uint8 decimals_, uint256 supply);
        function transfer(address to, uint256 amount) returns (bool);
    }
    contract NoReturnToken {
        constructor(uint256 supply);
        function transfer(address to, uint256 value);
    }
}

const ETH: u128 = 1_000_000_000_000_000_000;
/// 1 whole OZ token (18 decimals) = 0.001 ETH.
const OZ_PRICE: TokenPrice = TokenPrice { wei: 1_000_000_000_000_000, per_units: ETH };
/// USDT-like (6 decimals): 1 ETH = 3,000 tokens.
const USD_PRICE: TokenPrice = TokenPrice { wei: ETH, per_units: 3_000_000_000 };

async fn account(keys: &SoftwareKeystore, name: &str) -> DepositAccount {
    let key = KeyId::new(name).unwrap();
    let info = keys.generate(&key, Scheme::Secp256k1).await.unwrap();
    DepositAccount { address: Address::from(info.public_key.eth_address().unwrap()), key }
}

async fn deploy(rpc: &Rpc, owner: Address) -> (Address, Address) {
    let (Some(mut oz), Some(mut noret)) =
        (contract_bytecode("TestToken"), contract_bytecode("NoReturnToken"))
    else {
        panic!("contracts missing")
    };
    let supply = U256::from(10u64).pow(U256::from(30u64));
    oz.extend(
        TestToken::constructorCall { name_: "M".into(), symbol_: "M".into(), decimals_: 18, supply }
            .abi_encode(),
    );
    noret.extend(NoReturnToken::constructorCall { supply }.abi_encode());
    (rpc.deploy(owner, oz).await, rpc.deploy(owner, noret).await)
}

async fn give(rpc: &Rpc, owner: Address, token: Address, to: Address, amount: u128) {
    rpc.send_call(owner, token, TestToken::transferCall { to, amount: U256::from(amount) }.abi_encode())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_eth_sweeps_move_everything_top_up_exactly_and_skip_what_is_not_worth_it() {
    let Some(anvil) = Anvil::start(&[]) else { return };
    if contract_bytecode("TestToken").is_none() {
        return;
    }
    let rpc = anvil.rpc();
    let owner = rpc.dev(0).await;
    let (oz, usd) = deploy(&rpc, owner).await;

    let dir = tempfile::tempdir().unwrap();
    let keys =
        SoftwareKeystore::create(&dir.path().join("keys"), b"pass", KdfParams::insecure_for_tests()).unwrap();
    let fee_key = KeyId::new("eth-fee").unwrap();
    keys.generate(&fee_key, Scheme::Secp256k1).await.unwrap();
    let [a, b, c, d, e, f] = [
        account(&keys, "dep-a").await,
        account(&keys, "dep-b").await,
        account(&keys, "dep-c").await,
        account(&keys, "dep-d").await,
        account(&keys, "dep-e").await,
        account(&keys, "dep-f").await,
    ];
    let signer: Arc<dyn Signer> = Arc::new(keys);
    let mut wc = WalletConfig::new(
        format!("http://127.0.0.1:{}", anvil.port),
        31337,
        fee_key,
        dir.path().join("fee-wallet.jsonl"),
    );
    wc.confirmations = 1;
    let fee_wallet = Arc::new(EthWallet::open(wc, signer.clone()).await.unwrap());
    rpc.send_eth(owner, fee_wallet.address(), U256::from(10 * ETH)).await;

    // a: 100 OZ, no ETH. b: 500 USD (no-return token), no ETH. c: 0.1 OZ (worth
    // 0.0001 ETH: less than 3× its gas). d: 1 ETH only. e: 50 OZ and 1 ETH
    // (pays its own gas). f: nothing.
    give(&rpc, owner, oz, a.address, 100 * ETH).await;
    give(&rpc, owner, usd, b.address, 500_000_000).await;
    give(&rpc, owner, oz, c.address, ETH / 10).await;
    rpc.send_eth(owner, d.address, U256::from(ETH)).await;
    give(&rpc, owner, oz, e.address, 50 * ETH).await;
    rpc.send_eth(owner, e.address, U256::from(ETH)).await;
    let accounts = vec![a.clone(), b.clone(), c.clone(), d.clone(), e.clone(), f.clone()];

    let hot = deposit_address(99);
    let mut config = SweepConfig::new(
        hot,
        vec![SweepToken { contract: oz, price: OZ_PRICE }, SweepToken { contract: usd, price: USD_PRICE }],
    );
    config.poll_interval = Duration::from_millis(20);
    config.receipt_timeout = Duration::from_secs(60);
    let sweeper = Sweeper::new(fee_wallet.clone(), signer.clone(), config.clone()).unwrap();

    let plan = sweeper.plan(&accounts).await.unwrap();
    let (max_fee, _) = plan.fees;
    let decision = |addr: Address, asset: SweepAsset| {
        plan.items.iter().find(|i| i.address == addr && i.asset == asset).unwrap().decision.clone()
    };
    let sa = decision(a.address, SweepAsset::Token(oz)).expect("a is swept");
    let sb = decision(b.address, SweepAsset::Token(usd)).expect("b is swept");
    let se = decision(e.address, SweepAsset::Token(oz)).expect("e is swept");
    let sd = decision(d.address, SweepAsset::Native).expect("d's ETH is swept");
    assert!(
        matches!(
            decision(c.address, SweepAsset::Token(oz)),
            Err(SkipReason::NotWorthIt { worth_percent: 300, .. })
        ),
        "{plan:#?}"
    );
    assert_eq!(decision(e.address, SweepAsset::Native), Err(SkipReason::AfterTokenSweep));
    assert_eq!(decision(f.address, SweepAsset::Native), Err(SkipReason::Empty));
    // Estimated gas limits: a token transfer, not the 100,000 of a fixed limit.
    for s in [&sa, &sb, &se] {
        assert!((21_000..100_000).contains(&s.gas_limit), "{s:?}");
    }
    // Top-ups: exactly gas limit × max fee, for the two addresses without ETH only.
    let topups: BTreeMap<Address, u128> = plan.topups.iter().map(|t| (t.address, t.amount)).collect();
    assert_eq!(
        topups,
        BTreeMap::from([
            (a.address, u128::from(sa.gas_limit) * max_fee),
            (b.address, u128::from(sb.gas_limit) * max_fee)
        ])
    );
    // The ETH sweep: tip = max fee, amount = balance − 21,000 × max fee.
    assert_eq!(sd.max_priority_fee_per_gas, max_fee);
    assert_eq!(sd.amount, ETH - 21_000 * max_fee);

    let hot_eth_before = rpc.balance(hot).await;
    let report = sweeper.execute(&plan, &accounts).await.unwrap();
    assert!(report.not_sent.is_empty(), "{report:#?}");
    assert_eq!(report.topups.len(), 2);
    assert_eq!(report.swept.len(), 4);
    assert!(report.swept.iter().all(|s| s.mined.success), "{report:#?}");

    // Every token unit moved; c untouched.
    for (dep, token) in [(&a, oz), (&b, usd), (&e, oz)] {
        assert_eq!(rpc.token_balance(token, dep.address).await, U256::ZERO);
    }
    assert_eq!(rpc.token_balance(oz, hot).await, U256::from(150 * ETH));
    assert_eq!(rpc.token_balance(usd, hot).await, U256::from(500_000_000u64));
    assert_eq!(rpc.token_balance(oz, c.address).await, U256::from(ETH / 10));
    // ETH sweep: nothing left, the hot wallet got exactly the planned amount.
    assert_eq!(rpc.balance(d.address).await, U256::ZERO);
    assert_eq!(rpc.balance(hot).await - hot_eth_before, U256::from(sd.amount));
    let fee_of = |addr: Address| report.swept.iter().find(|s| s.address == addr).unwrap().mined;
    assert_eq!(fee_of(d.address).fee_wei, 21_000 * max_fee, "the ETH sweep paid exactly its planned fee");
    // Dust after a token sweep: top-up − fee paid, exactly as reported, and
    // bounded by gas limit × max fee − gas used × price paid ≤ (limit − used) × max fee + used × (max fee − price).
    for (dep, s) in [(&a, &sa), (&b, &sb)] {
        let m = fee_of(dep.address);
        let left = rpc.balance(dep.address).await;
        assert_eq!(left, U256::from(u128::from(s.gas_limit) * max_fee - m.fee_wei));
        assert_eq!(report.eth_left[&dep.address], u128::from(s.gas_limit) * max_fee - m.fee_wei);
        assert!(m.gas_used <= s.gas_limit && m.effective_gas_price <= max_fee);
    }
    assert_eq!(rpc.balance(e.address).await, U256::from(ETH - fee_of(e.address).fee_wei));

    // A second plan sends nothing twice: the token-swept addresses hold only
    // dust (not worth a sweep), d nothing; e's ETH, which paid its token
    // sweep's gas, is swept now, to the last wei.
    let again = sweeper.plan(&accounts).await.unwrap();
    assert!(again.topups.is_empty(), "{again:#?}");
    let swept_again: Vec<_> = again.sweeps().map(|(i, _)| (i.address, i.asset)).collect();
    assert_eq!(swept_again, [(e.address, SweepAsset::Native)], "{again:#?}");
    for dust in [&a, &b] {
        let i = again.items.iter().find(|i| i.address == dust.address).unwrap();
        assert!(matches!(i.decision, Err(SkipReason::NotWorthIt { .. })), "{i:?}");
    }
    assert_eq!(again.items.iter().find(|i| i.address == d.address).unwrap().decision, Err(SkipReason::Empty));
    let report = sweeper.execute(&again, &accounts).await.unwrap();
    assert!(report.swept[0].mined.success);
    assert_eq!(rpc.balance(e.address).await, U256::ZERO);
    assert_eq!(report.eth_left[&e.address], 0);

    // The skip rule the other way: at 1 ETH per OZ token, c's 0.1 OZ is worth a sweep.
    let mut dearer = config.clone();
    dearer.tokens[0].price = TokenPrice { wei: ETH, per_units: ETH };
    let sweeper = Sweeper::new(fee_wallet, signer, dearer).unwrap();
    let plan = sweeper.plan(std::slice::from_ref(&c)).await.unwrap();
    assert_eq!(plan.sweeps().count(), 1, "{plan:#?}");
    let report = sweeper.execute(&plan, std::slice::from_ref(&c)).await.unwrap();
    assert!(report.swept[0].mined.success);
    assert_eq!(rpc.token_balance(oz, c.address).await, U256::ZERO);
    assert_eq!(rpc.token_balance(oz, hot).await, U256::from(150 * ETH + ETH / 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_top_ups_fund_existing_accounts_in_one_transaction_and_empty_ones_plainly() {
    let Some(anvil) = Anvil::start(&[]) else { return };
    let Some(disperse_code) = contract_bytecode("Disperse") else { return };
    let rpc = anvil.rpc();
    let owner = rpc.dev(0).await;
    let (oz, _) = deploy(&rpc, owner).await;
    let disperse = rpc.deploy(owner, disperse_code).await;
    let dir = tempfile::tempdir().unwrap();
    let keys =
        SoftwareKeystore::create(&dir.path().join("keys"), b"pass", KdfParams::insecure_for_tests()).unwrap();
    let fee_key = KeyId::new("eth-fee").unwrap();
    keys.generate(&fee_key, Scheme::Secp256k1).await.unwrap();
    let accounts =
        vec![account(&keys, "dep-x").await, account(&keys, "dep-y").await, account(&keys, "dep-z").await];
    let signer: Arc<dyn Signer> = Arc::new(keys);
    let mut wc = WalletConfig::new(
        format!("http://127.0.0.1:{}", anvil.port),
        31337,
        fee_key,
        dir.path().join("fee-wallet.jsonl"),
    );
    wc.confirmations = 1;
    let fee_wallet = Arc::new(EthWallet::open(wc, signer.clone()).await.unwrap());
    rpc.send_eth(owner, fee_wallet.address(), U256::from(10 * ETH)).await;
    // x and y exist on chain (they hold 1 wei); z is empty.
    for a in &accounts[..2] {
        rpc.send_eth(owner, a.address, U256::from(1u64)).await;
    }
    for a in &accounts {
        give(&rpc, owner, oz, a.address, 100 * ETH).await;
    }
    let mut config =
        SweepConfig::new(deposit_address(98), vec![SweepToken { contract: oz, price: OZ_PRICE }]);
    config.poll_interval = Duration::from_millis(20);
    config.topup_batch = Some(molly_chain_eth::sweep::TopUpBatch { contract: disperse, max_recipients: 10 });
    let sweeper = Sweeper::new(fee_wallet, signer, config).unwrap();
    let plan = sweeper.plan(&accounts).await.unwrap();
    let batched: Vec<(Address, bool)> = plan.topups.iter().map(|t| (t.address, t.batched)).collect();
    assert_eq!(
        batched,
        [(accounts[0].address, true), (accounts[1].address, true), (accounts[2].address, false)]
    );
    let report = sweeper.execute(&plan, &accounts).await.unwrap();
    assert_eq!(report.topup_batches.len(), 1, "{report:#?}");
    assert_eq!(report.topup_batches[0].recipients.len(), 2);
    assert_eq!(report.topups.len(), 1);
    assert!(report.swept.iter().all(|s| s.mined.success), "{report:#?}");
    for (a, t) in accounts.iter().zip(&plan.topups) {
        let swept = report.swept.iter().find(|s| s.address == a.address).unwrap();
        assert_eq!(rpc.token_balance(oz, a.address).await, U256::ZERO);
        // Each address got exactly its top-up: what is left = held + top-up − fee.
        assert_eq!(rpc.balance(a.address).await, U256::from(t.held_wei + t.amount - swept.mined.fee_wei));
    }
    assert_eq!(rpc.token_balance(oz, deposit_address(98)).await, U256::from(300 * ETH));
}

/// The address the deposit side derives from the account xpub *text* (no
/// seed, no private key), as `molly wallets xpub` hands it out.
fn xpub_address(account_xpub: &str, account: u32, index: u32) -> Address {
    use molly_chains::{secp::AccountXpub, Chain, Network};
    let xpub = AccountXpub::parse(account_xpub, Chain::Eth, Network::Mainnet).unwrap();
    molly_chains::derive_from_xpub(&xpub, account, index).unwrap().address.parse().unwrap()
}

/// The signer side: key `name` derived inside the keystore from its sealed
/// seed, at the same path, paired with the deposit side's address (the
/// Sweeper refuses a key whose public key does not give that address).
async fn derived_account(
    keys: &SoftwareKeystore,
    name: &str,
    address: Address,
    account: u32,
    index: u32,
) -> DepositAccount {
    use molly_chains::{path::deposit_path, Chain, Network};
    let key = KeyId::new(name).unwrap();
    let path = deposit_path(Chain::Eth, Network::Mainnet, account, index).unwrap();
    let info = keys.derive(&key, &KeyId::new("install").unwrap(), Scheme::Secp256k1, &path).await.unwrap();
    assert_eq!(Address::from(info.public_key.eth_address().unwrap()), address, "{path}");
    DepositAccount { address, key }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hd_deposit_addresses_from_the_xpub_are_swept_with_keys_derived_inside_the_keystore() {
    let Some(anvil) = Anvil::start(&[]) else { return };
    if contract_bytecode("TestToken").is_none() {
        return;
    }
    let rpc = anvil.rpc();
    let owner = rpc.dev(0).await;
    let (oz, _) = deploy(&rpc, owner).await;

    // Deposit side: account xpubs only (deposits account 0, hot account 1).
    let seed = molly_chains::Seed::from_mnemonic(common::MNEMONIC, "").unwrap();
    let xpub = |account| {
        molly_chains::secp::AccountXpub::from_seed(
            &seed,
            molly_chains::Chain::Eth,
            molly_chains::Network::Mainnet,
            account,
        )
        .unwrap()
        .to_string()
    };
    let (deposit_xpub, hot_xpub) = (xpub(0), xpub(1));
    drop(seed);
    let (dep_token, dep_eth) = (xpub_address(&deposit_xpub, 0, 3), xpub_address(&deposit_xpub, 0, 4));
    let hot = xpub_address(&hot_xpub, 1, 0);
    let fee_address = xpub_address(&hot_xpub, 1, 1);

    // Signer side: the mnemonic is sealed once; every key is derived inside.
    let dir = tempfile::tempdir().unwrap();
    let keys =
        SoftwareKeystore::create(&dir.path().join("keys"), b"pass", KdfParams::insecure_for_tests()).unwrap();
    keys.import_seed(&KeyId::new("install").unwrap(), common::MNEMONIC, "").unwrap();
    let a = derived_account(&keys, "dep-eth-3", dep_token, 0, 3).await;
    let b = derived_account(&keys, "dep-eth-4", dep_eth, 0, 4).await;
    // The fee wallet is an HD hot-account key too (m/44'/60'/1'/0/1).
    let fee = derived_account(&keys, "fee-eth", fee_address, 1, 1).await;
    let signer: Arc<dyn Signer> = Arc::new(keys);
    let mut wc = WalletConfig::new(
        format!("http://127.0.0.1:{}", anvil.port),
        31337,
        fee.key,
        dir.path().join("fee-wallet.jsonl"),
    );
    wc.confirmations = 1;
    let fee_wallet = Arc::new(EthWallet::open(wc, signer.clone()).await.unwrap());
    assert_eq!(fee_wallet.address(), fee_address);
    rpc.send_eth(owner, fee_address, U256::from(ETH)).await;

    give(&rpc, owner, oz, dep_token, 100 * ETH).await;
    rpc.send_eth(owner, dep_eth, U256::from(ETH)).await;
    let accounts = vec![a.clone(), b.clone()];
    let mut config = SweepConfig::new(hot, vec![SweepToken { contract: oz, price: OZ_PRICE }]);
    config.poll_interval = Duration::from_millis(20);
    config.receipt_timeout = Duration::from_secs(60);
    let sweeper = Sweeper::new(fee_wallet, signer, config).unwrap();

    let plan = sweeper.plan(&accounts).await.unwrap();
    assert_eq!(plan.sweeps().count(), 2, "{plan:#?}");
    assert_eq!(plan.topups.iter().map(|t| t.address).collect::<Vec<_>>(), [dep_token], "{plan:#?}");
    let eth_amount = plan
        .items
        .iter()
        .find(|i| i.address == dep_eth && i.asset == SweepAsset::Native)
        .and_then(|i| i.decision.as_ref().ok())
        .expect("the ETH deposit is swept")
        .amount;
    let report = sweeper.execute(&plan, &accounts).await.unwrap();
    assert!(report.not_sent.is_empty() && report.swept.iter().all(|s| s.mined.success), "{report:#?}");
    // Signed by the derived keys: everything reached the hot wallet.
    assert_eq!(rpc.token_balance(oz, dep_token).await, U256::ZERO);
    assert_eq!(rpc.token_balance(oz, hot).await, U256::from(100 * ETH));
    assert_eq!(rpc.balance(dep_eth).await, U256::ZERO);
    assert_eq!(rpc.balance(hot).await, U256::from(eth_amount));
}
