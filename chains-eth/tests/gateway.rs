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
