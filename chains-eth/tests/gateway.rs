//! The chain-gateway interface end to end on Ethereum: watch a derived
//! address, receive its deposit as events, estimate a fee, withdraw to it
//! (which is then seen as a deposit from the hot wallet), read the head.

mod common;

use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::U256;
use common::{deposit_address, Anvil};
use molly_chain_eth::config::WatcherConfig;
use molly_chain_eth::withdraw::WalletConfig;
use molly_chain_eth::EthGateway;
use molly_chains::gateway::{
    Asset, ChainGateway, DepositEvent, FeePolicy, GatewayError, WithdrawalRequest, WithdrawalStatus,
};
use molly_hsm_bridge::keystore::{KdfParams, SoftwareKeystore};
use molly_hsm_bridge::{KeyId, Scheme, Signer};

async fn next(gw: &EthGateway) -> DepositEvent {
    let mut events =
        tokio::time::timeout(Duration::from_secs(60), gw.next_events(1)).await.expect("hang guard").unwrap();
    assert_eq!(events.len(), 1);
    events.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_withdrawals_fees_and_head_through_the_chain_gateway_interface() {
    let Some(anvil) = Anvil::start(&[]) else { return };
    let rpc = anvil.rpc();
    let dir = tempfile::tempdir().unwrap();
    let keys =
        SoftwareKeystore::create(&dir.path().join("keys"), b"pass", KdfParams::insecure_for_tests()).unwrap();
    let key = KeyId::new("eth-hot-0").unwrap();
    keys.generate(&key, Scheme::Secp256k1).await.unwrap();
    let signer: Arc<dyn Signer> = Arc::new(keys);

    let mut watcher = WatcherConfig::new(anvil.ws_url());
    watcher.confirmations_native = 2;
    watcher.reorg_window = 8;
    watcher.start_block = Some(rpc.head().await + 1);
    watcher.head_timeout = Duration::from_millis(500);
    let mut wallet =
        WalletConfig::new(format!("http://127.0.0.1:{}", anvil.port), 31337, key, dir.path().join("journal"));
    wallet.confirmations = 2;
    let gw = EthGateway::start(watcher, wallet, signer).await.unwrap();
    assert_eq!(gw.chain(), molly_chains::Chain::Eth);

    let to = deposit_address(40);
    gw.watch(&[to.to_checksum(None)]).await.unwrap();
    let bad = gw.watch(&["0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAeD".into()]).await.unwrap_err();
    assert!(matches!(bad, GatewayError::Rejected { .. }), "a bad EIP-55 checksum is refused: {bad}");

    let dev = rpc.dev(0).await;
    rpc.send_eth(dev, gw.wallet().address(), U256::from(5_000_000_000_000_000_000u128)).await;
    let (tx, _) = rpc.send_eth(dev, to, U256::from(42u64)).await;
    let DepositEvent::DepositSeen(d) = next(&gw).await else { panic!("expected DepositSeen") };
    assert_eq!((d.key.tx_hash.as_str(), d.amount), (tx.as_str(), 42));

    let fee = gw.estimate_fee(&Asset::Native, FeePolicy::Normal).await.unwrap();
    assert_eq!(fee.units, 21_000);
    assert_eq!(fee.max_total, fee.per_unit * 21_000);
    assert!(fee.priority_per_unit <= fee.per_unit && fee.priority_per_unit > 0);

    let request = WithdrawalRequest {
        id: "gw-1".into(),
        to: to.to_checksum(None),
        asset: Asset::Native,
        amount: 1_000,
        fee: FeePolicy::Normal,
    };
    let mut status = gw.submit_withdrawal(&request).await.unwrap();
    // anvil automines; the receipt may lag the submission by a moment.
    for _ in 0..600 {
        if !matches!(status, WithdrawalStatus::Pending { .. }) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        status = gw.withdrawal_status("gw-1").await.unwrap();
    }
    assert!(matches!(status, WithdrawalStatus::Mined { confirmations: 1, .. }), "{status:?}");
    // The first deposit's second confirmation (this block) and the withdrawal arriving as a deposit.
    let mut from_wallet = None;
    for _ in 0..2 {
        match next(&gw).await {
            DepositEvent::DepositSeen(w) => from_wallet = Some(w),
            DepositEvent::DepositConfirmed { confirmations: 2, deposit, .. } => {
                assert_eq!(deposit.key, d.key)
            }
            e => panic!("unexpected {e:?}"),
        }
    }
    let w = from_wallet.expect("the withdrawal is seen at the watched destination");
    assert_eq!((w.from, w.amount), (gw.wallet().address().to_checksum(None), 1_000));
    rpc.mine(1).await;
    assert!(matches!(gw.withdrawal_status("gw-1").await.unwrap(), WithdrawalStatus::Final { .. }));
    assert!(matches!(
        gw.withdrawal_status("nope").await.unwrap_err(),
        GatewayError::UnknownWithdrawal { .. }
    ));

    let head = gw.head().await.unwrap();
    assert_eq!(head.head.number, rpc.head().await);
    assert!(head.processed <= head.head.number);
}

const GWEI: u128 = 1_000_000_000;

/// Waits (hang guard 60 s) until withdrawal `id` has `n` transactions.
async fn txs_reach(gw: &EthGateway, id: &str, n: usize) -> Vec<molly_chain_eth::withdraw::SentTx> {
    for _ in 0..1200 {
        let txs = gw.wallet().record(id).await.unwrap().txs;
        if txs.len() >= n {
            return txs;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("withdrawal {id} never got {n} transactions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_stuck_below_the_base_fee_is_replaced_automatically_never_above_the_cap() {
    let Some(anvil) = Anvil::start(&[]) else { return };
    let rpc = anvil.rpc();
    let dir = tempfile::tempdir().unwrap();
    let keys =
        SoftwareKeystore::create(&dir.path().join("keys"), b"pass", KdfParams::insecure_for_tests()).unwrap();
    let key = KeyId::new("eth-hot-0").unwrap();
    keys.generate(&key, Scheme::Secp256k1).await.unwrap();
    let mut watcher = WatcherConfig::new(anvil.ws_url());
    watcher.confirmations_native = 2;
    watcher.reorg_window = 8;
    let mut wallet =
        WalletConfig::new(format!("http://127.0.0.1:{}", anvil.port), 31337, key, dir.path().join("journal"));
    wallet.confirmations = 1;
    wallet.stuck_check_interval = Duration::from_millis(100);
    wallet.stuck_after_blocks = 3;
    wallet.fees.max_fee_cap = 60 * GWEI;
    let gw = EthGateway::start(watcher, wallet, Arc::new(keys)).await.unwrap();
    let dev = rpc.dev(0).await;
    rpc.send_eth(dev, gw.wallet().address(), U256::from(5_000_000_000_000_000_000u128)).await;
    rpc.call("evm_setAutomine", serde_json::json!([false])).await;
    let to = deposit_address(41);
    let request = |id: &str, amount| WithdrawalRequest {
        id: id.into(),
        to: to.to_checksum(None),
        asset: Asset::Native,
        amount,
        fee: FeePolicy::Normal,
    };

    // The base fee jumps to 20 gwei: the withdrawal's max fee (~2-3 gwei) is below it.
    gw.submit_withdrawal(&request("gw-stuck", 777)).await.unwrap();
    let first = gw.wallet().record("gw-stuck").await.unwrap().txs[0].clone();
    assert!(first.max_fee_per_gas < 20 * GWEI, "{first:?}");
    rpc.call("anvil_setNextBlockBaseFeePerGas", serde_json::json!([format!("{:#x}", 20 * GWEI)])).await;
    rpc.mine(1).await;
    assert_eq!(rpc.balance(to).await, U256::ZERO, "not includable under a 20 gwei base fee");
    // Replaced by the background check, with both fees up ≥ 13 % and the max
    // fee at least 2 × the next base fee (17.5 gwei) + tip.
    let txs = txs_reach(&gw, "gw-stuck", 2).await;
    let new = &txs[1];
    assert!(new.max_fee_per_gas * 100 >= first.max_fee_per_gas * 113);
    assert!(new.max_priority_fee_per_gas * 100 >= first.max_priority_fee_per_gas * 113);
    assert!(new.max_fee_per_gas >= 35 * GWEI && new.max_fee_per_gas <= 60 * GWEI, "{new:?}");
    rpc.mine(1).await;
    let status = gw.withdrawal_status("gw-stuck").await.unwrap();
    let hash = match &status {
        WithdrawalStatus::Mined { tx_hash, .. } | WithdrawalStatus::Final { tx_hash, .. } => tx_hash.clone(),
        s => panic!("expected mined, got {s:?}"),
    };
    assert_eq!(hash, format!("{:#x}", new.hash), "the replacement is what was mined");
    assert_eq!(rpc.balance(to).await, U256::from(777u64), "exactly once");

    // Under a 100 gwei base fee the cap (60 gwei) bounds the bumps: one
    // replacement at the cap, then none (a second would be under +10 %).
    gw.submit_withdrawal(&request("gw-capped", 888)).await.unwrap();
    rpc.call("anvil_setNextBlockBaseFeePerGas", serde_json::json!([format!("{:#x}", 100 * GWEI)])).await;
    rpc.mine(1).await;
    let txs = txs_reach(&gw, "gw-capped", 2).await;
    assert_eq!(txs[1].max_fee_per_gas, 60 * GWEI, "{txs:?}");
    tokio::time::sleep(Duration::from_millis(1_000)).await; // ~10 more checks
    let txs = gw.wallet().record("gw-capped").await.unwrap().txs;
    assert_eq!(txs.len(), 2, "no replacement beyond the cap: {txs:?}");
    assert_eq!(rpc.balance(to).await, U256::from(777u64));
    // anvil refused the 60 gwei replacement under a 87.5 gwei base fee (geth
    // would queue it); empty blocks lower the base fee 12.5 % each, and once
    // it is under 60 gwei the background check offers the journaled
    // replacement again and it is mined.
    for _ in 0..10 {
        rpc.mine(1).await;
        tokio::time::sleep(Duration::from_millis(400)).await; // ~4 checks
        if rpc.balance(to).await > U256::from(777u64) {
            break;
        }
    }
    assert_eq!(rpc.balance(to).await, U256::from(777u64 + 888), "exactly once");
    let status = gw.withdrawal_status("gw-capped").await.unwrap();
    let hash = match &status {
        WithdrawalStatus::Mined { tx_hash, .. } | WithdrawalStatus::Final { tx_hash, .. } => tx_hash.clone(),
        s => panic!("expected mined, got {s:?}"),
    };
    assert_eq!(hash, format!("{:#x}", txs[1].hash), "the capped replacement, not the original");
    assert_eq!(gw.wallet().record("gw-capped").await.unwrap().txs.len(), 2);
}
