//! A real anvil per test, on a free loopback port, killed on drop.
//!
//! The binary comes from `MOLLY_ANVIL` (exported by scripts/setup/anvil.sh)
//! or the setup script's cache path. A missing anvil fails the test, unless
//! `MOLLY_SKIP_ANVIL=1`.
#![allow(dead_code)] // reason: each test binary uses a different part of the harness

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::network::Ethereum;
use alloy::primitives::{Address, U256};
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::client::ClientBuilder;
use serde_json::{json, Value};

/// A running anvil.
#[derive(Debug)]
pub struct Anvil {
    child: Child,
    /// Its loopback port (HTTP and WebSocket).
    pub port: u16,
}

fn anvil_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MOLLY_ANVIL") {
        return Some(PathBuf::from(p));
    }
    let cache = std::env::var_os("MOLLY_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/molly")))?;
    let p = cache.join("node/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil");
    p.exists().then_some(p)
}

impl Anvil {
    /// Starts anvil with `args` added; `None` only when `MOLLY_SKIP_ANVIL=1`
    /// and no anvil is installed.
    pub fn start(args: &[&str]) -> Option<Anvil> {
        let Some(bin) = anvil_binary().filter(|p| p.exists()) else {
            if std::env::var("MOLLY_SKIP_ANVIL").as_deref() == Ok("1") {
                eprintln!("anvil not installed and MOLLY_SKIP_ANVIL=1: skipping");
                return None;
            }
            panic!(
                "anvil is not installed: run ./scripts/test.sh (scripts/setup/anvil.sh) or set MOLLY_ANVIL"
            );
        };
        for _attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let mut child = Command::new(&bin)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(Anvil { child, port });
                }
                if child.try_wait().unwrap().is_some() {
                    break; // lost the port race; try another
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("anvil did not start on a loopback port after 5 attempts");
    }

    /// `ws://127.0.0.1:port`.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// An HTTP client for test-side calls.
    pub fn rpc(&self) -> Rpc {
        let url = format!("http://127.0.0.1:{}", self.port).parse().unwrap();
        Rpc(RootProvider::new(ClientBuilder::default().http(url)))
    }
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Test-side RPC: anvil's own methods and unlocked-account sends.
#[derive(Debug, Clone)]
pub struct Rpc(pub RootProvider<Ethereum>);

impl Rpc {
    /// A raw call.
    pub async fn call(&self, method: &'static str, params: Value) -> Value {
        self.0.raw_request(method.into(), params).await.unwrap_or_else(|e| panic!("{method}: {e}"))
    }

    /// Head height.
    pub async fn head(&self) -> u64 {
        self.0.get_block_number().await.unwrap()
    }

    /// Mines `n` blocks.
    pub async fn mine(&self, n: u64) {
        self.call("anvil_mine", json!([n])).await;
    }

    /// Dev account `i` (funded, unlocked).
    pub async fn dev(&self, i: usize) -> Address {
        let accounts = self.call("eth_accounts", json!([])).await;
        accounts[i].as_str().unwrap().parse().unwrap()
    }

    /// Sends `wei` from an unlocked account and returns (tx hash, block number).
    pub async fn send_eth(&self, from: Address, to: Address, wei: U256) -> (String, u64) {
        let hash = self.call("eth_sendTransaction", json!([{ "from": from, "to": to, "value": wei }])).await;
        let hash = hash.as_str().unwrap().to_owned();
        (hash.clone(), self.mined_in(&hash).await)
    }

    /// The block a transaction was mined in (waits for automine).
    pub async fn mined_in(&self, hash: &str) -> u64 {
        for _ in 0..600 {
            let receipt = self.call("eth_getTransactionReceipt", json!([hash])).await;
            if let Some(n) = receipt["blockNumber"].as_str() {
                return u64::from_str_radix(n.trim_start_matches("0x"), 16).unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{hash} was not mined after 30 s");
    }
}

/// The public BIP39 test mnemonic (Trezor's fixtures).
pub const MNEMONIC: &str = "all all all all all all all all all all all all";

/// Deposit address `index` of account 0, derived as Molly derives it.
pub fn deposit_address(index: u32) -> Address {
    let seed = molly_chains::Seed::from_mnemonic(MNEMONIC, "").unwrap();
    let d = molly_chains::derive_address(
        &seed,
        molly_chains::Chain::Eth,
        molly_chains::Network::Mainnet,
        0,
        index,
    )
    .unwrap();
    d.address.parse().unwrap()
}

/// The creation bytecode of a test contract compiled by
/// scripts/setup/eth-contracts.sh; `None` only with `MOLLY_SKIP_ANVIL=1`.
pub fn contract_bytecode(name: &str) -> Option<Vec<u8>> {
    let Some(dir) = std::env::var_os("MOLLY_ETH_CONTRACTS") else {
        if std::env::var("MOLLY_SKIP_ANVIL").as_deref() == Ok("1") {
            eprintln!("MOLLY_ETH_CONTRACTS unset and MOLLY_SKIP_ANVIL=1: skipping");
            return None;
        }
        panic!("MOLLY_ETH_CONTRACTS is unset: run ./scripts/test.sh (scripts/setup/eth-contracts.sh)");
    };
    let path = PathBuf::from(dir).join(format!("{name}.bin"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Some(alloy::primitives::hex::decode(text.trim()).unwrap())
}

impl Rpc {
    /// Deploys `code` (creation bytecode + encoded constructor arguments) from an unlocked account.
    pub async fn deploy(&self, from: Address, code: Vec<u8>) -> Address {
        let data = alloy::primitives::Bytes::from(code);
        let hash = self
            .call("eth_sendTransaction", json!([{ "from": from, "data": data, "gas": "0x1c9c380" }]))
            .await;
        let hash = hash.as_str().unwrap().to_owned();
        self.mined_in(&hash).await;
        let receipt = self.call("eth_getTransactionReceipt", json!([hash])).await;
        assert_eq!(receipt["status"], "0x1", "deployment failed: {receipt}");
        receipt["contractAddress"].as_str().unwrap().parse().unwrap()
    }

    /// Calls `to` with `data` from an unlocked account; returns (tx hash, block).
    pub async fn send_call(&self, from: Address, to: Address, data: Vec<u8>) -> (String, u64) {
        let data = alloy::primitives::Bytes::from(data);
        let hash = self.call("eth_sendTransaction", json!([{ "from": from, "to": to, "data": data }])).await;
        let hash = hash.as_str().unwrap().to_owned();
        (hash.clone(), self.mined_in(&hash).await)
    }
}

impl Rpc {
    /// ETH balance at the head.
    pub async fn balance(&self, a: Address) -> U256 {
        self.0.get_balance(a).await.unwrap()
    }

    /// ERC-20 `balanceOf` at the head.
    pub async fn token_balance(&self, token: Address, owner: Address) -> U256 {
        use alloy::sol_types::SolCall;
        alloy::sol! { function balanceOf(address owner) returns (uint256); }
        let data = balanceOfCall { owner }.abi_encode();
        let out = self
            .call(
                "eth_call",
                json!([{ "to": token, "data": alloy::primitives::Bytes::from(data) }, "latest"]),
            )
            .await;
        let bytes = alloy::primitives::hex::decode(out.as_str().unwrap()).unwrap();
        balanceOfCall::abi_decode_returns(&bytes).unwrap()
    }
}
