//! Withdrawals against a real anvil, signed by the hsm-bridge software
//! keystore: exact amounts for ETH and ERC-20 (including a token whose
//! `transfer` returns nothing), a revert reported with its reason, a restart
//! between signing and broadcasting, a stuck transaction replaced.

mod common;

use std::sync::Arc;

use alloy::primitives::{Address, B256, U256};
use alloy::sol_types::{SolCall, SolConstructor};
use common::{contract_bytecode, deposit_address, Anvil, Rpc};
use molly_chain_eth::withdraw::{EthWallet, WalletConfig};
use molly_chains::gateway::{Asset, FeePolicy, WithdrawalRequest, WithdrawalStatus};
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

struct Fixture {
    _dir: tempfile::TempDir,
    signer: Arc<dyn Signer>,
    config: WalletConfig,
}

async fn fixture(anvil: &Anvil, rpc: &Rpc) -> (Fixture, EthWallet) {
    let dir = tempfile::tempdir().unwrap();
    let keys =
        SoftwareKeystore::create(&dir.path().join("keys"), b"pass", KdfParams::insecure_for_tests()).unwrap();
    let key = KeyId::new("eth-hot-0").unwrap();
    keys.generate(&key, Scheme::Secp256k1).await.unwrap();
    fixture_with(anvil, rpc, dir, Arc::new(keys), key).await
}

async fn fixture_with(
    anvil: &Anvil,
    rpc: &Rpc,
    dir: tempfile::TempDir,
    signer: Arc<dyn Signer>,
    key: KeyId,
) -> (Fixture, EthWallet) {
    let mut config = WalletConfig::new(
        format!("http://127.0.0.1:{}", anvil.port),
        31337,
        key,
        dir.path().join("eth-withdrawals.jsonl"),
    );
    config.confirmations = 1;
    let wallet = EthWallet::open(config.clone(), signer.clone()).await.unwrap();
    let dev = rpc.dev(0).await;
    rpc.send_eth(dev, wallet.address(), U256::from(10 * ETH)).await;
    (Fixture { _dir: dir, signer, config }, wallet)
}

fn request(id: &str, to: Address, asset: Asset, amount: u128) -> WithdrawalRequest {
    WithdrawalRequest { id: id.into(), to: to.to_checksum(None), asset, amount, fee: FeePolicy::Normal }
}

fn hash_of(s: &WithdrawalStatus) -> B256 {
    match s {
        WithdrawalStatus::Pending { tx_hash }
        | WithdrawalStatus::Mined { tx_hash, .. }
        | WithdrawalStatus::Final { tx_hash, .. } => tx_hash.parse().unwrap(),
        other => panic!("no single tx hash in {other:?}"),
    }
}

async fn final_status(wallet: &EthWallet, rpc: &Rpc, id: &str) -> WithdrawalStatus {
    for _ in 0..200 {
        let s = wallet.status(id).await.unwrap();
        if !matches!(s, WithdrawalStatus::Pending { .. } | WithdrawalStatus::Mined { .. }) {
            return s;
        }
        rpc.mine(1).await;
    }
    panic!("withdrawal {id} never became final");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eth_withdrawal_is_mined_with_the_exact_amount_and_resubmitting_sends_nothing() {
    let Some(anvil) = Anvil::start(&[]) else { return };
    let rpc = anvil.rpc();
    let (_f, wallet) = fixture(&anvil, &rpc).await;
    let to = deposit_address(30);
    let before = rpc.balance(wallet.address()).await;
    let amount = 1_234_567_890_123_456_789u128;
    wallet.submit(&request("w-eth-1", to, Asset::Native, amount)).await.unwrap();
    let WithdrawalStatus::Final { fee_paid, tx_hash, .. } = final_status(&wallet, &rpc, "w-eth-1").await
    else {
        panic!("expected Final")
    };
    assert_eq!(rpc.balance(to).await, U256::from(amount));
    assert_eq!(rpc.balance(wallet.address()).await, before - U256::from(amount) - U256::from(fee_paid));
    // The signed transaction's sender, as the node recovered it, is the wallet.
    let tx = rpc.call("eth_getTransactionByHash", serde_json::json!([tx_hash])).await;
    assert_eq!(tx["from"].as_str().unwrap().parse::<Address>().unwrap(), wallet.address());
    assert_eq!(tx["type"], "0x2", "EIP-1559");

    let again = wallet.submit(&request("w-eth-1", to, Asset::Native, amount)).await.unwrap();
    assert_eq!(format!("{:#x}", hash_of(&again)), tx_hash, "same id, same transaction");
    rpc.mine(1).await;
    assert_eq!(rpc.balance(to).await, U256::from(amount), "never sent twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erc20_withdrawals_move_exact_amounts_and_a_revert_is_failed_with_its_reason() {
    let Some(anvil) = Anvil::start(&[]) else { return };
    let (Some(oz), Some(noret)) = (contract_bytecode("TestToken"), contract_bytecode("NoReturnToken")) else {
        return;
    };
    let rpc = anvil.rpc();
    let (_f, wallet) = fixture(&anvil, &rpc).await;
    let owner = rpc.dev(0).await;
    let supply = U256::from(10u64).pow(U256::from(27u64));
    let mut code = oz;
    code.extend(
        TestToken::constructorCall { name_: "M".into(), symbol_: "M".into(), decimals_: 18, supply }
            .abi_encode(),
    );
    let token = rpc.deploy(owner, code).await;
    let mut code = noret;
    code.extend(NoReturnToken::constructorCall { supply }.abi_encode());
    let usdt = rpc.deploy(owner, code).await;
    for t in [token, usdt] {
        rpc.send_call(
            owner,
            t,
            TestToken::transferCall { to: wallet.address(), amount: U256::from(1_000_000u64) }.abi_encode(),
        )
        .await;
    }
    let to = deposit_address(31);
    for (id, t, amount) in [("w-oz", token, 250_000u128), ("w-usdt", usdt, 999_999)] {
        wallet.submit(&request(id, to, Asset::Token(t.to_checksum(None)), amount)).await.unwrap();
        let s = final_status(&wallet, &rpc, id).await;
        assert!(matches!(s, WithdrawalStatus::Final { .. }), "{id}: {s:?}");
        assert_eq!(rpc.token_balance(t, to).await, U256::from(amount), "{id}");
    }
    // The wallet holds 1 unit of the no-return token: this transfer reverts on chain.
    wallet.submit(&request("w-over", to, Asset::Token(usdt.to_checksum(None)), 2)).await.unwrap();
    let WithdrawalStatus::Failed { reason, tx_hash } = final_status(&wallet, &rpc, "w-over").await else {
        panic!("expected Failed")
    };
    assert!(tx_hash.is_some());
    assert!(reason.contains("insufficient balance"), "{reason}");
    assert_eq!(rpc.token_balance(usdt, to).await, U256::from(999_999u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_between_signing_and_broadcast_neither_loses_nor_double_sends() {
    let Some(anvil) = Anvil::start(&[]) else { return };
    let rpc = anvil.rpc();
    let (f, wallet) = fixture(&anvil, &rpc).await;
    let to = deposit_address(32);
    let record = wallet.prepare(&request("w-crash", to, Asset::Native, 777)).await.unwrap();
    drop(wallet); // "crash": journaled, never broadcast
    rpc.mine(1).await;
    assert_eq!(rpc.balance(to).await, U256::ZERO);

    let wallet = EthWallet::open(f.config.clone(), f.signer.clone()).await.unwrap();
    let s = final_status(&wallet, &rpc, "w-crash").await;
    assert_eq!(hash_of_final(&s), record.txs[0].hash);
    assert_eq!(rpc.balance(to).await, U256::from(777u64));
    wallet.submit(&request("w-crash", to, Asset::Native, 777)).await.unwrap();
    drop(wallet);
    let wallet = EthWallet::open(f.config.clone(), f.signer.clone()).await.unwrap();
    rpc.mine(2).await;
    assert_eq!(rpc.balance(to).await, U256::from(777u64), "not sent twice across restarts");
    // The next withdrawal takes the next nonce.
    let next = wallet.prepare(&request("w-next", to, Asset::Native, 1)).await.unwrap();
    assert_eq!(next.nonce, record.nonce + 1);
}

fn hash_of_final(s: &WithdrawalStatus) -> B256 {
    match s {
        WithdrawalStatus::Final { tx_hash, .. } => tx_hash.parse().unwrap(),
        other => panic!("expected Final, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_transaction_is_replaced_and_only_the_replacement_is_mined() {
    let Some(anvil) = Anvil::start(&[]) else { return };
    let rpc = anvil.rpc();
    let (_f, wallet) = fixture(&anvil, &rpc).await;
    rpc.call("evm_setAutomine", serde_json::json!([false])).await;
    let to = deposit_address(33);
    let first = wallet.submit(&request("w-stuck", to, Asset::Native, 5_000)).await.unwrap();
    let WithdrawalStatus::Pending { .. } = first else { panic!("expected Pending, got {first:?}") };
    let old = hash_of(&first);
    let new = wallet.replace("w-stuck", FeePolicy::Urgent, false).await.unwrap();
    assert_ne!(old, new);
    let (o, n) = (
        wallet.record("w-stuck").await.unwrap().txs[0].clone(),
        wallet.record("w-stuck").await.unwrap().txs[1].clone(),
    );
    assert!(
        n.max_fee_per_gas * 100 >= o.max_fee_per_gas * 113
            && n.max_priority_fee_per_gas * 100 >= o.max_priority_fee_per_gas * 113
    );
    rpc.mine(1).await;
    let s = wallet.status("w-stuck").await.unwrap();
    assert_eq!(hash_of(&s), new, "{s:?}");
    assert_eq!(
        wallet.tx_status("w-stuck", old).await.unwrap(),
        WithdrawalStatus::Replaced { tx_hash: format!("{old:#x}"), by: format!("{new:#x}") }
    );
    rpc.mine(2).await;
    assert_eq!(rpc.balance(to).await, U256::from(5_000u64), "exactly once");

    // Cancel: a stuck withdrawal replaced by 0 ETH to self is failed as cancelled.
    wallet.submit(&request("w-cancel", to, Asset::Native, 9)).await.unwrap();
    wallet.replace("w-cancel", FeePolicy::Urgent, true).await.unwrap();
    rpc.mine(1).await;
    let s = wallet.status("w-cancel").await.unwrap();
    assert!(matches!(&s, WithdrawalStatus::Failed { reason, .. } if reason == "cancelled"), "{s:?}");
    assert_eq!(rpc.balance(to).await, U256::from(5_000u64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_signed_on_softhsm2_is_mined_from_the_hsm_key_address() {
    use molly_hsm_bridge::softhsm::{process_token, skip_requested};
    if skip_requested() {
        eprintln!("MOLLY_SKIP_SOFTHSM=1: skipping");
        return;
    }
    let Some(anvil) = Anvil::start(&[]) else { return };
    let rpc = anvil.rpc();
    let token = process_token().expect("SoftHSM2 must be installed (scripts/setup/softhsm2.sh)");
    let hsm = token.signer().expect("open a PKCS#11 session");
    let key = KeyId::new(format!("eth-hot-hsm-{}", anvil.port)).unwrap();
    let info = hsm.generate(&key, Scheme::Secp256k1).await.unwrap();
    let (_f, wallet) = fixture_with(&anvil, &rpc, tempfile::tempdir().unwrap(), Arc::new(hsm), key).await;
    assert_eq!(wallet.address(), Address::from(info.public_key.eth_address().unwrap()));
    let to = deposit_address(34);
    wallet.submit(&request("w-hsm", to, Asset::Native, 31_337)).await.unwrap();
    let WithdrawalStatus::Final { tx_hash, .. } = final_status(&wallet, &rpc, "w-hsm").await else {
        panic!("expected Final")
    };
    assert_eq!(rpc.balance(to).await, U256::from(31_337u64));
    let tx = rpc.call("eth_getTransactionByHash", serde_json::json!([tx_hash])).await;
    assert_eq!(tx["from"].as_str().unwrap().parse::<Address>().unwrap(), wallet.address());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eth_sweep_leaves_exactly_zero_behind() {
    let Some(anvil) = Anvil::start(&[]) else { return };
    let rpc = anvil.rpc();
    let (_f, wallet) = fixture(&anvil, &rpc).await; // funded with 10 ETH
    let hot = deposit_address(35);
    let funded = rpc.balance(wallet.address()).await;
    wallet.sweep_native("sweep-1", hot, FeePolicy::Normal).await.unwrap();
    let WithdrawalStatus::Final { fee_paid, .. } = final_status(&wallet, &rpc, "sweep-1").await else {
        panic!("expected Final")
    };
    assert_eq!(rpc.balance(wallet.address()).await, U256::ZERO, "no dust");
    assert_eq!(rpc.balance(hot).await, funded - U256::from(fee_paid));
    let again = wallet.sweep_native("sweep-2", hot, FeePolicy::Normal).await.unwrap_err();
    assert!(again.to_string().contains("does not cover the fee"), "{again}");
}
