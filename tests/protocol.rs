//! The binary protocol end to end: a real `molly serve` process (two
//! shards, journals on disk) and the Rust client, over loopback.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use molly_client::{Client, ClientConfig, Error};
use molly_engine::{
    Account, AccountBalance, AccountFilter, AccountFilterFlags, AccountFlags, CreateAccountResult as AR,
    CreateTransferResult as TR, Transfer, TransferFlags,
};
use molly_net::frame::{self, status, Operation, HEADER_SIZE};
use molly_shards::runtime::shard_for;
use molly_shards::sim::Prng;

struct Server {
    child: Child,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        let temp = tempfile::Builder::new().prefix("molly-protocol-").tempdir().unwrap();
        let dir = temp.path().to_path_buf();
        let mut server = Self::start_in(&dir, extra);
        server._temp = Some(temp);
        server
    }

    fn start_in(dir: &Path, extra: &[&str]) -> Self {
        let _ = std::fs::remove_file(dir.join("server.addr"));
        let child = Command::new(env!("CARGO_BIN_EXE_molly"))
            .args(["serve", "--shards", "2", "--no-pin", "--metrics-addr", "off", "--data-dir"])
            .arg(dir)
            .args(if extra.contains(&"--listen") { &[][..] } else { &["--listen", "127.0.0.1:0"][..] })
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while !dir.join("server.addr").exists() {
            assert!(started.elapsed() < Duration::from_secs(30), "the server did not write server.addr");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, dir: dir.to_path_buf(), _temp: None }
    }

    fn addr(&self) -> std::net::SocketAddr {
        std::fs::read_to_string(self.dir.join("server.addr")).unwrap().trim().parse().unwrap()
    }

    fn key(&self) -> (u32, Vec<u8>) {
        let (id, key) = molly_client::read_key_file(&self.dir.join("client-keys")).unwrap();
        (id, key.to_vec())
    }

    async fn client(&self) -> Client {
        Client::connect(ClientConfig::from_data_dir(&self.dir).unwrap()).await.unwrap()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn account(id: u128) -> Account {
    Account { id, ledger: 1, code: 1, ..Account::default() }
}

fn transfer(id: u128, debit: u128, credit: u128, amount: u128) -> Transfer {
    Transfer {
        id,
        debit_account_id: debit,
        credit_account_id: credit,
        amount,
        ledger: 1,
        code: 1,
        ..Transfer::default()
    }
}

/// Accounts 1..=n grouped by their shard (of 2).
fn by_shard(n: u128) -> [Vec<u128>; 2] {
    let mut owned = [Vec::new(), Vec::new()];
    for id in 1..=n {
        owned[shard_for(id, 2) as usize].push(id);
    }
    owned
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn accounts_transfers_lookups_and_queries_round_trip() {
    let server = Server::start(&[]);
    runtime().block_on(async {
        let client = server.client().await;
        client.ping().await.unwrap();
        let info = client.server_info().await.unwrap();
        assert_eq!((info.protocol_version, info.shards, info.batch_events_max), (2, 2, 8190));

        let accounts: Vec<Account> = (1..=40).map(account).collect();
        assert!(client.create_accounts(&accounts).await.unwrap().iter().all(|r| *r == AR::Ok));
        // A retry is idempotent, on both shards.
        assert!(client.create_accounts(&accounts).await.unwrap().iter().all(|r| *r == AR::Exists));

        let [a, b] = by_shard(40);
        // Same-shard transfers on both shards in one request.
        let transfers =
            vec![transfer(1, a[0], a[1], 100), transfer(2, b[0], b[1], 50), transfer(3, a[1], a[2], 30)];
        assert_eq!(client.create_transfers(&transfers).await.unwrap(), [TR::Ok, TR::Ok, TR::Ok]);
        assert_eq!(client.create_transfers(&transfers[..1]).await.unwrap(), [TR::Exists]);

        // Lookups come back in the order asked, unknown ids skipped.
        let found = client.lookup_accounts(&[a[1], 999, b[0], a[0]]).await.unwrap();
        let ids: Vec<u128> = found.iter().map(|x| x.id).collect();
        assert_eq!(ids, [a[1], b[0], a[0]]);
        assert_eq!((found[0].credits_posted, found[0].debits_posted), (100, 30));
        assert_eq!(found[1].debits_posted, 50);
        let found = client.lookup_transfers(&[3, 2, 77]).await.unwrap();
        assert_eq!(found.iter().map(|t| (t.id, t.amount)).collect::<Vec<_>>(), [(3, 30), (2, 50)]);

        let filter = AccountFilter {
            account_id: a[1],
            limit: 10,
            flags: AccountFilterFlags(AccountFilterFlags::DEBITS.0 | AccountFilterFlags::CREDITS.0),
            ..AccountFilter::default()
        };
        let history = client.get_account_transfers(&filter).await.unwrap();
        assert_eq!(history.iter().map(|t| t.id).collect::<Vec<_>>(), [1, 3]);
        let bad = AccountFilter { limit: 0, ..filter };
        match client.get_account_transfers(&bad).await {
            Err(Error::Status { status: s, message }) => {
                assert_eq!(s, status::INVALID_QUERY);
                assert!(message.contains("limit"), "{message}");
            }
            other => panic!("an invalid filter answered {other:?}"),
        }
        // The connection is still usable after a request-level failure.
        client.ping().await.unwrap();
    });
}

#[test]
fn linked_chains_across_shards_are_rejected_whole_and_post_finds_its_pending() {
    let server = Server::start(&[]);
    runtime().block_on(async {
        let client = server.client().await;
        let [a, b] = by_shard(40);
        // An account chain spanning both shards: nothing of it is created.
        let mut first = account(a[0]);
        first.flags = AccountFlags::LINKED;
        let results = client.create_accounts(&[first, account(b[0]), account(a[1])]).await.unwrap();
        assert_eq!(results, [AR::LinkedEventChainCrossShard, AR::LinkedEventChainCrossShard, AR::Ok]);
        assert_eq!(client.lookup_accounts(&[a[0], b[0]]).await.unwrap(), []);
        let all: Vec<Account> = (1..=40).map(account).collect();
        client.create_accounts(&all).await.unwrap();

        // A transfer chain whose debit accounts live on different shards.
        let mut head = transfer(10, a[0], a[1], 5);
        head.flags = TransferFlags::LINKED;
        let results = client.create_transfers(&[head, transfer(11, b[0], b[1], 5)]).await.unwrap();
        assert_eq!(results, [TR::LinkedEventChainCrossShard, TR::LinkedEventChainCrossShard]);
        assert!(client.lookup_transfers(&[10, 11]).await.unwrap().is_empty());

        // Two-phase on shard 1's accounts; the post names only the pending id
        // (debit 0) and is routed to the shard holding it.
        let mut hold = transfer(20, b[0], b[1], 70);
        hold.flags = TransferFlags::PENDING;
        assert_eq!(client.create_transfers(&[hold]).await.unwrap(), [TR::Ok]);
        let post = Transfer {
            id: 21,
            pending_id: 20,
            amount: 70,
            flags: TransferFlags::POST_PENDING,
            ..Transfer::default()
        };
        assert_eq!(client.create_transfers(&[post]).await.unwrap(), [TR::Ok]);
        let moved = client.lookup_accounts(&[b[0]]).await.unwrap();
        assert_eq!((moved[0].debits_posted, moved[0].debits_pending), (70, 0));
        // A post of an unknown pending transfer is the engine's answer, not a routing failure.
        let orphan = Transfer { id: 22, pending_id: 12345, ..post };
        assert_eq!(client.create_transfers(&[orphan]).await.unwrap(), [TR::PendingTransferNotFound]);
    });
}

#[test]
fn cross_shard_transfers_are_atomic_idempotent_and_look_as_sent() {
    let server = Server::start(&[]);
    runtime().block_on(async {
        let client = server.client().await;
        let [a, b] = by_shard(40);
        client.create_accounts(&(1..=40).map(account).collect::<Vec<_>>()).await.unwrap();
        let mut limited = account(1000);
        // Account 1000 may not be credited beyond its debits: a credit-side refusal.
        limited.flags = AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS;
        assert_eq!(client.create_accounts(&[limited]).await.unwrap(), [AR::Ok]);
        let other = if shard_for(1000, 2) == 0 { &b } else { &a };
        let transfers =
            vec![transfer(30, a[0], b[0], 25), transfer(31, b[1], a[1], 7), transfer(32, other[2], 1000, 5)];
        assert_eq!(client.create_transfers(&transfers).await.unwrap(), [TR::Ok, TR::Ok, TR::ExceedsDebits],);
        // A retry answers exists, or the recorded failure; nothing moves twice.
        assert_eq!(
            client.create_transfers(&transfers).await.unwrap(),
            [TR::Exists, TR::Exists, TR::ExceedsDebits],
        );
        let found = client.lookup_transfers(&[30, 31, 32]).await.unwrap();
        let seen: Vec<(u128, u128, u128, u128)> =
            found.iter().map(|t| (t.id, t.debit_account_id, t.credit_account_id, t.amount)).collect();
        assert_eq!(seen, [(30, a[0], b[0], 25), (31, b[1], a[1], 7)], "as sent; the failed one is absent");
        let balances = client.lookup_accounts(&[a[0], b[0], other[2], 1000]).await.unwrap();
        assert_eq!(balances[0].debits_posted, 25);
        assert_eq!(balances[1].credits_posted, 25);
        assert_eq!((balances[2].debits_posted, balances[2].debits_pending), (0, 0), "voided");
        assert_eq!(balances[3].credits_posted, 0);
    });
}

/// Hot system accounts are sharded: created on every shard by one call,
/// looked up as the sum of their parts, their history merged; transfers
/// between them and users never cross shards; a move between parts is a
/// cross-shard transfer that leaves the account's balance alone.
#[test]
fn sharded_accounts_are_one_account_to_clients() {
    use molly_shards::route::{part_move_shards, sharded_id};
    // The moves here are the test's own: the rebalancer is off (it would
    // refill the part this test empties; it is tested in shards/tests/runtime.rs).
    let temp = tempfile::Builder::new().prefix("molly-protocol-").tempdir().unwrap();
    let config = temp.path().join("molly.toml");
    std::fs::write(&config, "[serve]\nrebalance_interval_ms = 0\n").unwrap();
    let server = Server::start_in(temp.path(), &["--config", config.to_str().unwrap()]);
    runtime().block_on(async {
        let client = server.client().await;
        let [a, b] = by_shard(40);
        let (fees, clearing) = (sharded_id(1), sharded_id(2));
        let mut accounts: Vec<Account> = (1..=40).map(account).collect();
        let flags = AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags::HISTORY;
        accounts.push(Account { flags, ..account(fees) });
        accounts.push(account(clearing));
        assert!(client.create_accounts(&accounts).await.unwrap().iter().all(|r| *r == AR::Ok));
        assert!(client.create_accounts(&accounts).await.unwrap().iter().all(|r| *r == AR::Exists));
        // A different definition is refused by the parts as by any account.
        let changed = Account { code: 2, ..account(clearing) };
        assert_eq!(client.create_accounts(&[changed]).await.unwrap(), [AR::ExistsWithDifferentCode]);

        // Deposits from the clearing account and fees from users, on both shards, one request.
        let mut transfers = Vec::new();
        for (i, &user) in a.iter().take(3).chain(b.iter().take(3)).enumerate() {
            transfers.push(transfer(100 + i as u128, clearing, user, 1_000));
            transfers.push(transfer(200 + i as u128, user, fees, 10 + i as u128));
        }
        let results = client.create_transfers(&transfers).await.unwrap();
        assert!(results.iter().all(|r| *r == TR::Ok), "{results:?}");
        let found = client.lookup_accounts(&[fees, clearing, a[0]]).await.unwrap();
        assert_eq!(found.len(), 3);
        assert_eq!(found[0].credits_posted, (10..16).sum::<u128>(), "the parts of both shards, summed");
        assert_eq!(found[1].debits_posted, 6_000);
        assert_eq!(found[2].credits_posted - found[2].debits_posted, 990);

        // Its history merges both parts by timestamp.
        let filter = AccountFilter {
            account_id: fees,
            limit: 100,
            flags: AccountFilterFlags(AccountFilterFlags::DEBITS.0 | AccountFilterFlags::CREDITS.0),
            ..AccountFilter::default()
        };
        let history = client.get_account_transfers(&filter).await.unwrap();
        let mut ids: Vec<u128> = history.iter().map(|t| t.id).collect();
        assert!(history.windows(2).all(|w| w[0].timestamp <= w[1].timestamp), "oldest first");
        ids.sort_unstable();
        assert_eq!(ids, (200..206).collect::<Vec<_>>());
        let newest = AccountFilter {
            limit: 2,
            flags: AccountFilterFlags(filter.flags.0 | AccountFilterFlags::REVERSED.0),
            ..filter
        };
        let two = client.get_account_transfers(&newest).await.unwrap();
        assert_eq!(two.len(), 2);
        assert_eq!(two[0].timestamp, history.iter().map(|t| t.timestamp).max().unwrap());
        // Its balance history: the sum of the parts after each change to any part.
        let balances = client.get_account_balances(&filter).await.unwrap();
        let stamps: Vec<u64> = history.iter().map(|t| t.timestamp).collect();
        assert_eq!(balances.iter().map(|b| b.timestamp).collect::<Vec<_>>(), stamps);
        let mut running = 0;
        for (point, t) in balances.iter().zip(&history) {
            running += t.amount;
            assert_eq!((point.credits_posted, point.debits_posted), (running, 0), "after {}", t.id);
        }
        assert_balance_history_pages(&client, filter, &balances).await;

        // Move everything the part on shard 0 holds to shard 1's part.
        let part0 = (10..13).sum::<u128>();
        let mut moved = transfer(300, fees, fees, part0);
        moved.user_data_32 = part_move_shards(0, 1);
        assert_eq!(client.create_transfers(&[moved]).await.unwrap(), [TR::Ok]);
        assert_eq!(client.create_transfers(&[moved]).await.unwrap(), [TR::Exists]);
        let again = Transfer { id: 301, amount: 1, ..moved };
        assert_eq!(client.create_transfers(&[again]).await.unwrap(), [TR::ExceedsCredits], "part 0 is empty");
        let found = client.lookup_transfers(&[300]).await.unwrap();
        assert_eq!(
            (found[0].debit_account_id, found[0].credit_account_id, found[0].amount),
            (fees, fees, part0)
        );
        let sum = client.lookup_accounts(&[fees]).await.unwrap()[0];
        assert_eq!(
            sum.credits_posted - sum.debits_posted,
            (10..16).sum::<u128>(),
            "the balance is unchanged"
        );
        // Paying out all the fees now works from shard 1's part alone.
        let payout = transfer(400, fees, b[5], (10..16).sum::<u128>());
        assert_eq!(client.create_transfers(&[payout]).await.unwrap(), [TR::Ok]);

        // The history through the move (a pending debit on one part, a
        // credit on the other, the post) ends at the account's balance.
        let balances = client.get_account_balances(&filter).await.unwrap();
        let last = *balances.last().unwrap();
        let sum = client.lookup_accounts(&[fees]).await.unwrap()[0];
        assert_eq!(
            (last.debits_pending, last.debits_posted, last.credits_pending, last.credits_posted),
            (sum.debits_pending, sum.debits_posted, sum.credits_pending, sum.credits_posted)
        );
        let fees_total = (10..16).sum::<u128>();
        assert_eq!((last.credits_posted, last.debits_posted), (fees_total + part0, part0 + fees_total));
        assert!(balances.windows(2).all(|w| w[0].timestamp < w[1].timestamp));
        assert_balance_history_pages(&client, filter, &balances).await;
    });
}

/// Paging through `all` one point at a time, oldest first and newest first,
/// finds every point once, the same as the whole answer.
async fn assert_balance_history_pages(client: &Client, filter: AccountFilter, all: &[AccountBalance]) {
    let mut paged = Vec::new();
    let mut page = AccountFilter { limit: 1, ..filter };
    while let Some(&point) = client.get_account_balances(&page).await.unwrap().first() {
        paged.push(point);
        page.timestamp_min = point.timestamp + 1;
    }
    assert_eq!(paged, all, "oldest first");
    let mut paged = Vec::new();
    let mut page = AccountFilter {
        limit: 1,
        flags: AccountFilterFlags(filter.flags.0 | AccountFilterFlags::REVERSED.0),
        ..filter
    };
    while let Some(&point) = client.get_account_balances(&page).await.unwrap().first() {
        paged.push(point);
        page.timestamp_max = point.timestamp - 1;
    }
    paged.reverse();
    assert_eq!(paged, all, "newest first");
}

#[test]
fn concurrent_calls_share_the_connection_and_each_gets_its_own_results() {
    let server = Server::start(&[]);
    runtime().block_on(async {
        let client = server.client().await;
        let [a, _] = by_shard(200);
        let accounts: Vec<Account> = (1..=200).map(account).collect();
        client.create_accounts(&accounts).await.unwrap();
        let mut tasks = Vec::new();
        for task in 0..50u128 {
            let client = client.clone();
            let a = a.clone();
            tasks.push(tokio::spawn(async move {
                let transfers: Vec<Transfer> = (0..10u128)
                    .map(|i| {
                        let id = 1000 + task * 10 + i;
                        // Every third transfer of task 7 is invalid: its results must stay its own.
                        let amount = if task == 7 && i % 3 == 0 { 0 } else { 1 };
                        transfer(id, a[(i as usize) % a.len()], a[(i as usize + 1) % a.len()], amount)
                    })
                    .collect();
                (task, client.create_transfers(&transfers).await.unwrap())
            }));
        }
        for handle in tasks {
            let (task, results) = handle.await.unwrap();
            for (i, result) in results.iter().enumerate() {
                let want = if task == 7 && i % 3 == 0 { TR::AmountMustNotBeZero } else { TR::Ok };
                assert_eq!(*result, want, "task {task} event {i}");
            }
        }
        let ids: Vec<u128> = (1000..1500).collect();
        assert_eq!(client.lookup_transfers(&ids).await.unwrap().len(), 500 - 4);
    });
}

/// Reads frames until the server closes; returns the error frame's (status, message).
fn read_error_frame(stream: &mut TcpStream) -> Option<(u32, String)> {
    let mut head = [0u8; HEADER_SIZE];
    stream.read_exact(&mut head).ok()?;
    let header: frame::FrameHeader = bytemuck::pod_read_unaligned(&head);
    let mut body = vec![0u8; header.body_len as usize];
    stream.read_exact(&mut body).ok()?;
    (header.operation == Operation::Error as u16)
        .then(|| (header.status, String::from_utf8_lossy(&body).into()))
}

#[test]
fn bad_frames_get_error_frames_and_change_nothing_while_others_carry_on() {
    let server = Server::start(&[]);
    let (client_id, key) = server.key();
    let addr = server.addr();
    let rt = runtime();
    let client = rt.block_on(server.client());
    rt.block_on(async {
        client.create_accounts(&(1..=20).map(account).collect::<Vec<_>>()).await.unwrap();
    });
    let [a, _] = by_shard(20);
    let good_transfers: Vec<Transfer> = (0..4u128).map(|i| transfer(500 + i, a[0], a[1], 1)).collect();
    let good = frame::encode(
        Operation::CreateTransfers,
        9,
        client_id,
        0,
        4,
        bytemuck::cast_slice(&good_transfers),
        &key,
    );
    let send = |bytes: &[u8], close_write: bool| {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        stream.write_all(bytes).unwrap();
        if close_write {
            stream.shutdown(std::net::Shutdown::Write).unwrap();
        }
        read_error_frame(&mut stream)
    };
    let patched = |offset: usize, value: &[u8]| {
        let mut bytes = good.clone();
        bytes[offset..offset + value.len()].copy_from_slice(value);
        bytes
    };
    // Each documented check, with its code.
    let cases: Vec<(&str, Vec<u8>, u32, bool)> = vec![
        ("bad magic", patched(40, b"XXXX"), 1, false),
        ("bad version", patched(44, &7u16.to_le_bytes()), 2, false),
        ("unknown operation", patched(46, &77u16.to_le_bytes()), 3, false),
        ("body too large", patched(52, &(2u32 << 20).to_le_bytes()), 4, false),
        ("event count mismatch", patched(48, &5u32.to_le_bytes()), 5, false),
        ("bad checksum", patched(HEADER_SIZE + 17, &[0xee]), 6, false),
        ("unknown client", frame::encode(Operation::Ping, 1, client_id + 1, 0, 0, &[], &key), 7, false),
        (
            "bad mac",
            frame::encode(
                Operation::CreateTransfers,
                9,
                client_id,
                0,
                4,
                bytemuck::cast_slice(&good_transfers),
                b"not the key at all",
            ),
            8,
            false,
        ),
        ("truncated", good[..HEADER_SIZE + 100].to_vec(), 9, true),
    ];
    for (name, bytes, code, close_write) in cases {
        let (got, message) = send(&bytes, close_write).unwrap_or_else(|| panic!("{name}: no error frame"));
        assert_eq!(got, code, "{name}: {message}");
    }
    // Random and mutated frames: never applied, the server stays up.
    let mut rng = Prng(0x5eed);
    for round in 0..300 {
        let mut bytes = if round % 3 == 0 {
            (0..(rng.next_u64() % 300) as usize).map(|_| rng.next_u64() as u8).collect()
        } else {
            let mut bytes = good.clone();
            for _ in 0..1 + rng.next_u64() % 4 {
                let at = (rng.next_u64() as usize) % bytes.len();
                bytes[at] ^= 1 << (rng.next_u64() % 8);
            }
            bytes
        };
        if round % 5 == 0 {
            bytes.truncate((rng.next_u64() as usize) % (bytes.len() + 1));
        }
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = stream.write_all(&bytes);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    }
    rt.block_on(async {
        // Nothing of any bad frame was applied; the long-lived connection carried on.
        let ids: Vec<u128> = (500..504).collect();
        assert!(client.lookup_transfers(&ids).await.unwrap().is_empty());
        let accounts = client.lookup_accounts(&[a[0], a[1]]).await.unwrap();
        assert!(accounts.iter().all(|x| x.debits_posted == 0 && x.credits_posted == 0));
    });
    // The unmodified frame is applied.
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.write_all(&good).unwrap();
    let mut head = [0u8; HEADER_SIZE];
    stream.read_exact(&mut head).unwrap();
    let header: frame::FrameHeader = bytemuck::pod_read_unaligned(&head);
    assert_eq!(
        (header.operation, header.status, header.event_count),
        (Operation::CreateTransfers as u16, 0, 4)
    );
}

#[test]
fn the_connection_limit_is_enforced_with_an_error_frame() {
    let temp = tempfile::tempdir().unwrap();
    let config = temp.path().join("molly.toml");
    std::fs::write(&config, "[net]\nconnections_max = 2\n").unwrap();
    let server = Server::start(&["--config", config.to_str().unwrap()]);
    let addr = server.addr();
    let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = TcpStream::connect(addr).unwrap();
    third.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (code, message) = read_error_frame(&mut third).expect("an error frame");
    assert_eq!(code, 10, "{message}");
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    runtime().block_on(async { server.client().await.ping().await.unwrap() });
}

#[test]
fn a_client_reconnects_after_a_crash_and_its_retry_is_safe() {
    let temp = tempfile::tempdir().unwrap();
    let mut server = Server::start_in(temp.path(), &[]);
    let addr = server.addr().to_string();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut config = ClientConfig::from_data_dir(temp.path()).unwrap();
    config.request_timeout = Duration::from_millis(500);
    let client = rt.block_on(Client::connect(config)).unwrap();
    rt.block_on(async { client.create_accounts(&(1..=20).map(account).collect::<Vec<_>>()).await.unwrap() });
    let [a, _] = by_shard(20);
    // Kill -9, then start again on the same port; calls made meanwhile wait and complete.
    server.kill();
    let pending = {
        let client = client.clone();
        let a = a.clone();
        rt.spawn(async move {
            let transfers: Vec<Transfer> = (0..5u128).map(|i| transfer(700 + i, a[0], a[1], 3)).collect();
            client.create_transfers(&transfers).await
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let _restarted = Server::start_in(temp.path(), &["--listen", &addr]);
    let results = rt.block_on(pending).unwrap().unwrap();
    assert!(results.iter().all(|r| *r == TR::Ok || *r == TR::Exists), "{results:?}");
    rt.block_on(async {
        let found = client.lookup_transfers(&(700..705).collect::<Vec<_>>()).await.unwrap();
        assert_eq!(found.len(), 5);
        let debited = client.lookup_accounts(&[a[0]]).await.unwrap();
        assert_eq!(debited[0].debits_posted, 15, "each transfer applied exactly once");
    });
}

#[test]
fn molly_bench_drives_a_server_it_starts_and_verifies_the_ledger() {
    let temp = tempfile::tempdir().unwrap();
    let dir = temp.path().join("data");
    let json = temp.path().join("bench.json");
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_molly"))
            .args(["bench", "--shards", "2", "--transfers", "40000", "--batch", "1000", "--accounts", "100"])
            .args(["--warmup", "2", "--verify", "--data-dir"])
            .arg(&dir)
            .args(["--json"])
            .arg(&json)
            .args(extra)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        stdout
    };
    let stdout = run(&[]);
    assert!(stdout.contains("server started by this command"), "{stdout}");
    assert!(stdout.contains("verified: all"), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(report["transfers_per_second"].as_f64().unwrap() > 0.0);
    assert!(report["p99_batch_ms"].as_f64().unwrap() > 0.0);
    assert!(report["report"]["transfers"].as_u64().unwrap() >= 40_000);
    assert!(report["server_peak_rss_bytes"].as_u64().unwrap() > 0);
    // Again on the same data (recovered from its journal), compared with the first run.
    let first = temp.path().join("first.json");
    std::fs::rename(&json, &first).unwrap();
    let trace = temp.path().join("batches.csv");
    let stdout = run(&[
        "--compare",
        first.to_str().unwrap(),
        "--cross-shard",
        "0",
        "--trace",
        trace.to_str().unwrap(),
    ]);
    assert!(stdout.contains("compared with") && stdout.contains("transfers_per_second"), "{stdout}");
    // Every measured batch, one row each, in reply order.
    let trace = std::fs::read_to_string(&trace).unwrap();
    let mut lines = trace.lines();
    assert_eq!(lines.next(), Some("sent_ms,latency_ms,transfers"));
    let rows: Vec<(f64, f64, u64)> = lines
        .map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect();
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(rows.iter().map(|r| r.2).sum::<u64>(), report["report"]["transfers"].as_u64().unwrap());
    assert_eq!(rows.len(), 40, "40,000 transfers in batches of 1,000");
    assert_eq!(rows[0].0, 0.0, "times count from the first measured batch");
    assert!(rows.iter().all(|r| r.0 >= 0.0 && r.1 > 0.0), "{rows:?}");
    assert!(!dir.join("server.addr").exists(), "the server the bench started was stopped");
    // The payment shape: half the transfers with sharded system accounts,
    // verified through their summed parts; none of those cross shards.
    let stdout = run(&["--hot", "0.5", "--cross-shard", "0"]);
    assert!(stdout.contains("sharded system accounts") && stdout.contains("verified: all"), "{stdout}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(report["report"]["cross_shard_measured"].as_f64(), Some(0.0), "{report}");
}
