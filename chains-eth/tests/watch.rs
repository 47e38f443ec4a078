//! Deposit watching against a real anvil: seen in the block that mined it,
//! confirmations counting up, a reorg reverting, a dropped connection's gap
//! re-scanned without duplicates.

mod common;

use std::time::Duration;

use alloy::primitives::{Address, U256};
use common::{deposit_address, Anvil};
use molly_chain_eth::config::WatcherConfig;
use molly_chain_eth::watchset::WatchSet;
use molly_chain_eth::EthWatcher;
use molly_chains::gateway::{Asset, DepositEvent, DepositKey};
use tokio::sync::mpsc::Receiver;

/// Generous hang guard; not a performance assertion.
const HANG: Duration = Duration::from_secs(60);

fn config(url: String, depth: u64, start: u64) -> WatcherConfig {
    let mut c = WatcherConfig::new(url);
    c.confirmations_native = depth;
    c.reorg_window = 32;
    c.start_block = Some(start);
    c.head_timeout = Duration::from_millis(500);
    c.backoff_min = Duration::from_millis(50);
    c.backoff_max = Duration::from_millis(400);
    c
}

async fn next(rx: &mut Receiver<DepositEvent>) -> DepositEvent {
    tokio::time::timeout(HANG, rx.recv()).await.expect("no event (hang guard)").expect("watcher stopped")
}

/// Waits until the watcher has processed the node's head, then returns what
/// it emitted meanwhile.
async fn drain_at_head(
    w: &EthWatcher,
    rpc: &common::Rpc,
    rx: &mut Receiver<DepositEvent>,
) -> Vec<DepositEvent> {
    let head = rpc.head().await;
    let t = tokio::time::Instant::now();
    while w.progress().idle_at < Some(head) {
        assert!(t.elapsed() < HANG, "watcher never reached head {head}: {:?}", w.progress());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eth_deposit_is_seen_in_its_block_and_confirms_up_to_depth() {
    let Some(anvil) = Anvil::start(&[]) else { return };
    let rpc = anvil.rpc();
    let to = deposit_address(3);
    let watch = WatchSet::new(10);
    watch.add(&[to, deposit_address(4)]).unwrap();
    let start = rpc.head().await + 1;
    let (w, mut rx) = EthWatcher::spawn(config(anvil.ws_url(), 3, start), watch).unwrap();

    let from = rpc.dev(0).await;
    // Not watched: must produce nothing.
    rpc.send_eth(from, Address::repeat_byte(0x42), U256::from(7)).await;
    let wei = U256::from(1_500_000_000_000_000_000u128);
    let (tx_hash, block) = rpc.send_eth(from, to, wei).await;

    let DepositEvent::DepositSeen(d) = next(&mut rx).await else { panic!("expected DepositSeen") };
    assert_eq!(
        d.key,
        DepositKey { chain: molly_chains::Chain::Eth, tx_hash: tx_hash.clone(), index: DepositKey::NATIVE }
    );
    assert_eq!(d.to, to.to_checksum(None));
    assert_eq!(d.from, from.to_checksum(None));
    assert_eq!(d.asset, Asset::Native);
    assert_eq!(d.amount, 1_500_000_000_000_000_000);
    assert_eq!(d.block.number, block);
    // Seen before any further block exists: within one block of mining.
    assert_eq!(rpc.head().await, block);

    let mut counts = Vec::new();
    for _ in 0..2 {
        rpc.mine(1).await;
        match next(&mut rx).await {
            DepositEvent::DepositConfirmed { deposit, confirmations, required } => {
                assert_eq!(deposit.key, d.key);
                assert_eq!(required, 3);
                counts.push(confirmations);
            }
            e => panic!("expected DepositConfirmed, got {e:?}"),
        }
    }
    assert_eq!(counts, [2, 3]);
    rpc.mine(3).await;
    let after = drain_at_head(&w, &rpc, &mut rx).await;
    assert!(after.is_empty(), "a final deposit is not reported again: {after:?}");
    w.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reorg_before_depth_reverts_the_deposit_and_it_never_confirms() {
    let Some(anvil) = Anvil::start(&[]) else { return };
    let rpc = anvil.rpc();
    let to = deposit_address(7);
    let watch = WatchSet::new(10);
    watch.add(&[to]).unwrap();
    rpc.mine(3).await;
    let start = rpc.head().await + 1;
    let (w, mut rx) = EthWatcher::spawn(config(anvil.ws_url(), 4, start), watch).unwrap();
    let from = rpc.dev(1).await;
    let (tx_hash, block) = rpc.send_eth(from, to, U256::from(12345u64)).await;
    let DepositEvent::DepositSeen(seen) = next(&mut rx).await else { panic!("expected DepositSeen") };
    assert_eq!(seen.key.tx_hash, tx_hash);
    rpc.mine(1).await;
    assert!(matches!(next(&mut rx).await, DepositEvent::DepositConfirmed { confirmations: 2, .. }));

    // Replace the deposit's block and the one after it with empty blocks.
    rpc.call("anvil_reorg", serde_json::json!([2, []])).await;
    let new_hash = rpc.call("eth_getBlockByNumber", serde_json::json!([format!("{block:#x}"), false])).await;
    assert_ne!(new_hash["hash"].as_str().unwrap(), seen.block.hash, "anvil_reorg did not replace the block");

    let DepositEvent::DepositReverted(r) = next(&mut rx).await else { panic!("expected DepositReverted") };
    assert_eq!(r.key, seen.key);
    assert_eq!(r.block, seen.block);

    rpc.mine(6).await;
    let after = drain_at_head(&w, &rpc, &mut rx).await;
    assert!(
        after.iter().all(|e| e.deposit().key != seen.key),
        "an orphaned deposit must never be seen or confirmed again: {after:?}"
    );
    w.stop().await.unwrap();
}

/// A TCP proxy between the watcher and anvil that can cut every connection
/// and refuse new ones, as a node restart or network drop would.
struct Proxy {
    port: u16,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, k) = (cut.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                k.lock().unwrap().push(task.abort_handle());
            }
        });
        Proxy { port, cut, conns }
    }

    fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_is_reconnected_and_its_gap_rescanned_without_duplicates() {
    let Some(anvil) = Anvil::start(&[]) else { return };
    let rpc = anvil.rpc();
    let proxy = Proxy::start(anvil.port).await;
    let addrs: Vec<Address> = (0..3).map(deposit_address).collect();
    let watch = WatchSet::new(10);
    watch.add(&addrs).unwrap();
    let start = rpc.head().await + 1;
    let (w, mut rx) =
        EthWatcher::spawn(config(format!("ws://127.0.0.1:{}", proxy.port), 2, start), watch).unwrap();
    let from = rpc.dev(2).await;
    let (first, _) = rpc.send_eth(from, addrs[0], U256::from(1u64)).await;
    let DepositEvent::DepositSeen(d) = next(&mut rx).await else { panic!("expected DepositSeen") };
    assert_eq!(d.key.tx_hash, first);

    proxy.cut();
    let mut gap = Vec::new();
    for (i, to) in addrs.iter().enumerate().skip(1) {
        gap.push(rpc.send_eth(from, *to, U256::from(10u64 + i as u64)).await.0);
    }
    rpc.mine(2).await;
    proxy.restore();

    let events = drain_at_head(&w, &rpc, &mut rx).await;
    let seen: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            DepositEvent::DepositSeen(d) => Some(d.key.tx_hash.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        seen,
        gap.iter().map(String::as_str).collect::<Vec<_>>(),
        "each gap deposit exactly once, in order"
    );
    // After a gap the count may jump past the depth (it is the real depth); each deposit is final once.
    let finals = events.iter().filter(|e| e.is_final()).count();
    assert_eq!(finals, 3, "all three deposits reach depth 2 exactly once: {events:?}");
    w.stop().await.unwrap();
}

/// An event as a consumer deduplicates it: (tx hash, kind, confirmations).
fn id(e: &DepositEvent) -> (String, &'static str, u64) {
    match e {
        DepositEvent::DepositSeen(d) => (d.key.tx_hash.clone(), "seen", 1),
        DepositEvent::DepositConfirmed { deposit, confirmations, .. } => {
            (deposit.key.tx_hash.clone(), "confirmed", *confirmations)
        }
        DepositEvent::DepositReverted(d) => (d.key.tx_hash.clone(), "reverted", 0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_watcher_resumes_from_its_saved_position_without_missing_or_repeating_events() {
    let Some(anvil) = Anvil::start(&[]) else { return };
    let rpc = anvil.rpc();
    let dir = tempfile::tempdir().unwrap();
    let addrs: Vec<Address> = (50..53).map(deposit_address).collect();
    let watch = WatchSet::new(10);
    watch.add(&addrs).unwrap();
    let start = rpc.head().await + 1;
    let mut c = config(anvil.ws_url(), 4, start);
    c.state_path = Some(dir.path().join("eth-watcher.state"));
    let from = rpc.dev(3).await;

    // Run 1: deposit 1 is seen and confirmed twice; every event acknowledged; stop.
    let (w, mut rx) = EthWatcher::spawn(c.clone(), watch.clone()).unwrap();
    let (d1, _) = rpc.send_eth(from, addrs[0], U256::from(101u64)).await;
    rpc.mine(1).await;
    let mut run1 = drain_at_head(&w, &rpc, &mut rx).await;
    while run1.len() < 2 {
        run1.push(next(&mut rx).await);
    }
    assert_eq!(
        run1.iter().map(id).collect::<Vec<_>>(),
        [(d1.clone(), "seen", 1), (d1.clone(), "confirmed", 2)]
    );
    w.ack(run1.len() as u64);
    w.stop().await.unwrap();
    assert!(dir.path().join("eth-watcher.state").exists(), "the position is on disk");

    // While it is down: deposits 2 and 3, and blocks.
    let (d2, _) = rpc.send_eth(from, addrs[1], U256::from(102u64)).await;
    rpc.mine(1).await;
    let (d3, _) = rpc.send_eth(from, addrs[2], U256::from(103u64)).await;
    rpc.mine(1).await;

    // Run 2: exactly the missing events, once: 2 and 3 seen; 1 confirmed on
    // from its last reported count (never seen again); each confirmation
    // count is the real depth at the head.
    let (w, mut rx) = EthWatcher::spawn(c.clone(), watch.clone()).unwrap();
    let mut run2: Vec<_> = drain_at_head(&w, &rpc, &mut rx).await.iter().map(id).collect();
    let head = rpc.head().await;
    let mut expected = vec![(d2.clone(), "seen", 1), (d3.clone(), "seen", 1)];
    for tx in [&d1, &d2, &d3] {
        let depth = head + 1 - rpc.mined_in(tx).await;
        expected.push((tx.clone(), "confirmed", depth));
    }
    expected.sort();
    run2.sort();
    assert_eq!(run2, expected, "run 1 got {run1:?}");

    // Run 2 acknowledged nothing: a restart delivers the same events again
    // (a repeat, never a gap).
    w.stop().await.unwrap();
    let (w, mut rx) = EthWatcher::spawn(c, watch).unwrap();
    let mut run3: Vec<_> = drain_at_head(&w, &rpc, &mut rx).await.iter().map(id).collect();
    run3.sort();
    assert_eq!(run3, run2);
    w.stop().await.unwrap();
}
