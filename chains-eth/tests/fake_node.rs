//! A fake node on a real WebSocket: a tiny JSON-RPC server (tokio-tungstenite)
//! that answers from a real anvil but corrupts a scripted sequence of
//! answers about the block holding a deposit — wrong JSON types, a number
//! over 256 bits, missing fields, a block of another height, truncated JSON,
//! a dropped connection, a receipt of another block. The watcher must give
//! a clear error for each, never a deposit event from them, reconnect with
//! backoff, and report the deposit exactly once when the node answers truly.

mod common;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use common::{deposit_address, Anvil, Rpc};
use futures_util::{SinkExt, StreamExt};
use molly_chain_eth::config::WatcherConfig;
use molly_chain_eth::watchset::WatchSet;
use molly_chain_eth::EthWatcher;
use molly_chains::gateway::DepositEvent;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// One scripted lie, applied to the next matching answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lie {
    /// The block's `number` as a JSON float.
    BlockNumberFloat,
    /// The deposit transaction's `value` with 257 bits.
    ValueOver256Bits,
    /// The block without its `hash`.
    BlockWithoutHash,
    /// A well-formed block of the next height.
    BlockOfAnotherHeight,
    /// The answer's JSON text cut in half.
    TruncatedJson,
    /// The connection closed instead of an answer.
    Disconnect,
    /// The deposit's receipt claiming another block.
    ReceiptOfAnotherBlock,
    /// The receipt's `status` as a JSON bool.
    ReceiptStatusWrongType,
}

impl Lie {
    fn about_receipt(self) -> bool {
        matches!(self, Lie::ReceiptOfAnotherBlock | Lie::ReceiptStatusWrongType)
    }
}

#[derive(Debug)]
struct Node {
    port: u16,
    script: Arc<Mutex<VecDeque<Lie>>>,
    connections: Arc<Mutex<Vec<Instant>>>,
}

impl Node {
    async fn start(upstream: Rpc, target_block: u64, script: Vec<Lie>) -> Node {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let connections = Arc::new(Mutex::new(Vec::new()));
        let (s, c) = (script.clone(), connections.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                c.lock().unwrap().push(Instant::now());
                tokio::spawn(serve(tcp, upstream.clone(), target_block, s.clone()));
            }
        });
        Node { port, script, connections }
    }

    fn lies_left(&self) -> usize {
        self.script.lock().unwrap().len()
    }
}

async fn serve(tcp: tokio::net::TcpStream, upstream: Rpc, target: u64, script: Arc<Mutex<VecDeque<Lie>>>) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else { return };
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let req: Value = serde_json::from_str(&text).unwrap();
        let (id, method, params) =
            (req["id"].clone(), req["method"].as_str().unwrap().to_owned(), req["params"].clone());
        let result: Result<Value, String> = match method.as_str() {
            // Heads are never pushed: the watcher polls after head_timeout.
            "eth_subscribe" => Ok(json!("0x6d6f6c6c79")),
            "eth_unsubscribe" => Ok(json!(true)),
            m => upstream
                .0
                .raw_request::<Value, Value>(m.to_owned().into(), params.clone())
                .await
                .map_err(|e| e.to_string()),
        };
        let mut answer = match result {
            Ok(r) => json!({ "jsonrpc": "2.0", "id": id, "result": r }),
            Err(e) => json!({ "jsonrpc": "2.0", "id": id, "error": { "code": -32000, "message": e } }),
        };
        let about_block = method == "eth_getBlockByNumber"
            && params[0] == json!(format!("{target:#x}"))
            && params[1] == json!(true);
        let about_receipt = method == "eth_getTransactionReceipt";
        let lie = {
            let mut s = script.lock().unwrap();
            match s.front() {
                Some(l) if (about_block && !l.about_receipt()) || (about_receipt && l.about_receipt()) => {
                    s.pop_front()
                }
                _ => None,
            }
        };
        let r = &mut answer["result"];
        let text = match lie {
            None => answer.to_string(),
            Some(Lie::BlockNumberFloat) => {
                r["number"] = json!(7.5);
                answer.to_string()
            }
            Some(Lie::ValueOver256Bits) => {
                r["transactions"][0]["value"] = json!(format!("0x1{}", "0".repeat(64)));
                answer.to_string()
            }
            Some(Lie::BlockWithoutHash) => {
                r.as_object_mut().unwrap().remove("hash");
                answer.to_string()
            }
            Some(Lie::BlockOfAnotherHeight) => {
                r["number"] = json!(format!("{:#x}", target + 1));
                answer.to_string()
            }
            Some(Lie::TruncatedJson) => {
                let t = answer.to_string();
                t[..t.len() / 2].to_owned()
            }
            Some(Lie::Disconnect) => return,
            Some(Lie::ReceiptOfAnotherBlock) => {
                r["blockHash"] = json!(format!("{:#x}", alloy::primitives::B256::repeat_byte(0xee)));
                answer.to_string()
            }
            Some(Lie::ReceiptStatusWrongType) => {
                r["status"] = json!(true);
                answer.to_string()
            }
        };
        if ws.send(Message::text(text)).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_node_gives_clear_errors_never_a_deposit_and_is_reconnected_with_backoff() {
    let Some(anvil) = Anvil::start(&[]) else { return };
    let rpc = anvil.rpc();
    let to = deposit_address(60);
    let from = rpc.dev(4).await;
    let (tx, block) = rpc.send_eth(from, to, U256::from(4_242u64)).await;
    let script = vec![
        Lie::BlockNumberFloat,
        Lie::ValueOver256Bits,
        Lie::BlockWithoutHash,
        Lie::BlockOfAnotherHeight,
        Lie::TruncatedJson,
        Lie::Disconnect,
        Lie::ReceiptOfAnotherBlock,
        Lie::ReceiptStatusWrongType,
    ];
    let node = Node::start(rpc.clone(), block, script.clone()).await;

    let watch = WatchSet::new(10);
    watch.add(&[to, Address::repeat_byte(0x42)]).unwrap();
    let mut c = WatcherConfig::new(format!("ws://127.0.0.1:{}", node.port));
    c.confirmations_native = 2;
    c.reorg_window = 8;
    c.start_block = Some(block);
    c.head_timeout = Duration::from_millis(200);
    c.rpc_timeout = Duration::from_secs(5);
    c.backoff_min = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(400);
    let started = Instant::now();
    let (w, mut rx) = EthWatcher::spawn(c, watch).unwrap();

    // Record every error the watcher reports until the lies run out and it catches up.
    let mut errors: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while node.lies_left() > 0 || w.progress().idle_at < Some(block) {
        assert!(Instant::now() < deadline, "hang guard: {:?}, {} lies left", w.progress(), node.lies_left());
        if let Some(e) = w.progress().last_error {
            if errors.last() != Some(&e) {
                errors.push(e);
            }
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let elapsed = started.elapsed();
    for e in &errors {
        eprintln!("watcher error: {e}");
    }

    // Each lie the watcher itself saw is a clear error naming the call.
    let phrases = [
        ("eth_getBlockByNumber", "invalid type: floating point `7.5`"),
        ("eth_getBlockByNumber", "did not match any variant of untagged enum BlockTransactions"),
        ("eth_getBlockByNumber", "missing field `hash`"),
        ("bad block", &format!("asked for block {block}, got {}", block + 1)),
        ("bad receipt", "is for block"),
        ("eth_getTransactionReceipt", "deserialization error"),
    ];
    // Clear means short too: alloy appends the whole answer, which is cut.
    assert!(errors.iter().all(|e| e.len() < 600), "{errors:#?}");
    for (what, detail) in phrases {
        assert!(
            errors.iter().any(|e| e.contains(what) && e.contains(detail)),
            "no error with {what:?} and {detail:?} in {errors:#?}"
        );
    }
    // The watcher reconnected after each of them, with backoff: 6 errors
    // before any successful round wait at least 50+100+200+400+400+400 ms.
    let p = w.progress();
    assert!(p.reconnects >= 6, "{p:?}");
    assert!(elapsed >= Duration::from_millis(1_550), "{elapsed:?}");
    // Truncated JSON and the dropped socket were healed by reconnecting too.
    assert!(
        node.connections.lock().unwrap().len() >= 8,
        "{} connections",
        node.connections.lock().unwrap().len()
    );

    // From the lies nothing; from the truth, the deposit exactly once, exact.
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    assert_eq!(events.len(), 1, "{events:?}");
    let DepositEvent::DepositSeen(d) = &events[0] else { panic!("{events:?}") };
    assert_eq!((d.key.tx_hash.as_str(), d.amount, d.block.number), (tx.as_str(), 4_242, block));
    let real = rpc.0.get_block_by_number(block.into()).await.unwrap().unwrap();
    assert_eq!(d.block.hash, format!("{:#x}", real.header.hash));
    w.stop().await.unwrap();
}
