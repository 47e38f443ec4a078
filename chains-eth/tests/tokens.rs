//! ERC-20 deposits against a real anvil, with tokens compiled from Solidity
//! by the test setup: an OpenZeppelin ERC-20 and a USDT-like token whose
//! `transfer` returns nothing. A token that is not configured is ignored,
//! whatever its logs claim.

mod common;

use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::sol_types::{SolCall, SolConstructor};
use common::{contract_bytecode, deposit_address, Anvil};
use molly_chain_eth::config::{TokenConfig, WatcherConfig};
use molly_chain_eth::watchset::WatchSet;
use molly_chain_eth::EthWatcher;
use molly_chains::gateway::{Asset, DepositEvent};

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

fn with_ctor(mut code: Vec<u8>, args: Vec<u8>) -> Vec<u8> {
    code.extend(args);
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erc20_deposits_to_derived_addresses_are_seen_and_confirmed_and_unconfigured_tokens_ignored() {
    let Some(anvil) = Anvil::start(&[]) else { return };
    let (Some(oz), Some(noret)) = (contract_bytecode("TestToken"), contract_bytecode("NoReturnToken")) else {
        return;
    };
    let rpc = anvil.rpc();
    let owner = rpc.dev(0).await;
    let supply = U256::from(10u64).pow(U256::from(30u64));
    let ctor = |symbol: &str| {
        TestToken::constructorCall { name_: symbol.into(), symbol_: symbol.into(), decimals_: 18, supply }
            .abi_encode()
    };
    let token = rpc.deploy(owner, with_ctor(oz.clone(), ctor("MOLLY"))).await;
    let usdt =
        rpc.deploy(owner, with_ctor(noret, NoReturnToken::constructorCall { supply }.abi_encode())).await;
    let stranger = rpc.deploy(owner, with_ctor(oz, ctor("FAKE"))).await;

    let to = deposit_address(11);
    let watch = WatchSet::new(10);
    watch.add(&[to]).unwrap();
    let mut config = WatcherConfig::new(anvil.ws_url());
    config.tokens = vec![
        TokenConfig { contract: token, confirmations: Some(2) },
        TokenConfig { contract: usdt, confirmations: Some(3) },
    ];
    config.reorg_window = 16;
    config.start_block = Some(rpc.head().await + 1);
    config.head_timeout = Duration::from_millis(500);
    let (w, mut rx) = EthWatcher::spawn(config, watch).unwrap();

    let amount = U256::from(123_456_789_000_000_000_000u128);
    let (oz_tx, oz_block) =
        rpc.send_call(owner, token, TestToken::transferCall { to, amount }.abi_encode()).await;
    let (usdt_tx, usdt_block) = rpc
        .send_call(
            owner,
            usdt,
            NoReturnToken::transferCall { to, value: U256::from(5_000_000u64) }.abi_encode(),
        )
        .await;
    rpc.send_call(owner, stranger, TestToken::transferCall { to, amount }.abi_encode()).await;
    rpc.send_call(owner, token, TestToken::transferCall { to: Address::repeat_byte(9), amount }.abi_encode())
        .await;
    rpc.mine(3).await;

    let events = drain(&w, &rpc, &mut rx).await;
    let seen: Vec<_> = events
        .iter()
        .filter_map(|e| if let DepositEvent::DepositSeen(d) = e { Some(d.clone()) } else { None })
        .collect();
    assert_eq!(seen.len(), 2, "only the configured tokens' transfers to the watched address: {seen:?}");
    assert_eq!(seen[0].key.tx_hash, oz_tx);
    assert_eq!(seen[0].asset, Asset::Token(token.to_checksum(None)));
    assert_eq!(seen[0].amount, 123_456_789_000_000_000_000);
    assert_eq!(seen[0].block.number, oz_block);
    assert_eq!(seen[0].to, to.to_checksum(None));
    assert_eq!(seen[0].from, owner.to_checksum(None));
    assert_eq!(seen[1].key.tx_hash, usdt_tx);
    assert_eq!(seen[1].asset, Asset::Token(usdt.to_checksum(None)));
    assert_eq!(seen[1].amount, 5_000_000);
    assert_eq!(seen[1].block.number, usdt_block);
    let mut finals: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            DepositEvent::DepositConfirmed { deposit, required, .. } if e.is_final() => {
                Some((deposit.key.clone(), *required))
            }
            _ => None,
        })
        .collect();
    finals.sort();
    let mut expected = vec![(seen[0].key.clone(), 2), (seen[1].key.clone(), 3)];
    expected.sort();
    assert_eq!(finals, expected, "each final once, at its token's depth");
    w.stop().await.unwrap();
}

async fn drain(
    w: &EthWatcher,
    rpc: &common::Rpc,
    rx: &mut tokio::sync::mpsc::Receiver<DepositEvent>,
) -> Vec<DepositEvent> {
    let head = rpc.head().await;
    for _ in 0..3000 {
        if w.progress().idle_at >= Some(head) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(w.progress().idle_at >= Some(head), "watcher never reached head {head}: {:?}", w.progress());
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}
