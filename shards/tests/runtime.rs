//! The pinned io_uring runtime end to end, in process: durable writes,
//! routing, restart recovery, expiry by the shard's clock, refusals and
//! backpressure.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use molly_engine::{Account, Config, CreateTransferResult, Transfer, TransferFlags};
use molly_shards::durable::Outcome;
use molly_shards::journal::CommandBuf;
use molly_shards::runtime::{shard_for, Backpressure, Request, Runtime, RuntimeConfig, ShardError};

/// A fresh directory, removed on drop (`.0` is its path).
struct TempDir(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(&format!("molly-{name}-")).tempdir().unwrap();
        Self(dir.path().to_path_buf(), dir)
    }
}

fn config(dir: &TempDir, shards: usize) -> RuntimeConfig {
    RuntimeConfig { shards, ..RuntimeConfig::new(dir.0.clone()) }
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

/// Accounts 1..=n grouped by their owning shard.
fn by_shard(n: u128, shards: u32) -> Vec<Vec<u128>> {
    let mut out = vec![Vec::new(); shards as usize];
    for id in 1..=n {
        out[shard_for(id, shards) as usize].push(id);
    }
    out
}

fn transfer_results(outcomes: &[Outcome]) -> Vec<CreateTransferResult> {
    outcomes
        .iter()
        .flat_map(|o| match o {
            Outcome::Transfers(r) => r.clone(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn writes_are_durable_across_restarts_on_every_shard() {
    let dir = TempDir::new("restart");
    let shards = 2u32;
    let owned = by_shard(40, shards);
    let mut expected_transfers = Vec::new();
    {
        let runtime = Runtime::start(config(&dir, shards as usize)).unwrap();
        assert_eq!(runtime.shards(), 2);
        for (shard, ids) in owned.iter().enumerate() {
            let accounts = ids.iter().map(|&id| account(id)).collect();
            let outcomes = runtime.write(shard, vec![CommandBuf::CreateAccounts(accounts)]).unwrap();
            assert!(
                matches!(&outcomes[..], [Outcome::Accounts(r)] if r.iter().all(|r| r.is_ok())),
                "{outcomes:?}"
            );
            // Transfers between accounts of the same shard.
            let transfers: Vec<Transfer> = ids
                .windows(2)
                .enumerate()
                .map(|(i, pair)| {
                    transfer(1000 * (shard as u128 + 1) + i as u128, pair[0], pair[1], 10 + i as u128)
                })
                .collect();
            let results = transfer_results(
                &runtime.write(shard, vec![CommandBuf::CreateTransfers(transfers.clone())]).unwrap(),
            );
            assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
            expected_transfers.push(transfers);
        }
        let stats = runtime.stats(0).unwrap();
        assert_eq!(stats.accounts, owned[0].len());
        assert_eq!(stats.invariants, Ok(()));
    }
    // Restart: the clean stop left a snapshot at each journal's end, so
    // recovery loads it and replays nothing.
    let runtime = Runtime::start(config(&dir, shards as usize)).unwrap();
    for (shard, transfers) in expected_transfers.iter().enumerate() {
        assert!(runtime.recoveries()[shard].snapshot.is_some());
        assert_eq!(runtime.recoveries()[shard].scan.entries, 0);
        let ids: Vec<u128> = transfers.iter().map(|t| t.id).collect();
        let found = runtime.lookup_transfers(shard, ids);
        assert_eq!(found.len(), transfers.len());
        for (found, sent) in found.iter().zip(transfers) {
            assert_eq!(
                (found.id, found.amount, found.debit_account_id),
                (sent.id, sent.amount, sent.debit_account_id)
            );
        }
        // Retrying after the restart is safe.
        let results = transfer_results(
            &runtime.write(shard, vec![CommandBuf::CreateTransfers(transfers.clone())]).unwrap(),
        );
        assert!(results.iter().all(|r| *r == CreateTransferResult::Exists), "{results:?}");
        let stats = runtime.stats(shard).unwrap();
        assert_eq!(stats.transfers, transfers.len());
        assert_eq!(stats.invariants, Ok(()));
    }
}

#[test]
fn pending_transfers_expire_by_the_shards_clock() {
    let dir = TempDir::new("expiry");
    let runtime = Runtime::start(config(&dir, 1)).unwrap();
    runtime.write(0, vec![CommandBuf::CreateAccounts(vec![account(1), account(2)])]).unwrap();
    let hold = Transfer { flags: TransferFlags::PENDING, timeout: 1, ..transfer(1, 1, 2, 500) };
    let results = transfer_results(&runtime.write(0, vec![CommandBuf::CreateTransfers(vec![hold])]).unwrap());
    assert_eq!(results, [CreateTransferResult::Ok]);
    assert_eq!(runtime.lookup_accounts(0, vec![1])[0].debits_pending, 500);
    // No client activity: the idle shard journals a tick once the timeout passes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while runtime.lookup_accounts(0, vec![1])[0].debits_pending != 0 {
        assert!(Instant::now() < deadline, "the pending transfer never expired");
        std::thread::sleep(Duration::from_millis(50));
    }
    let post = Transfer { id: 2, pending_id: 1, flags: TransferFlags::POST_PENDING, ..Transfer::default() };
    let results = transfer_results(&runtime.write(0, vec![CommandBuf::CreateTransfers(vec![post])]).unwrap());
    assert_eq!(results, [CreateTransferResult::PendingTransferExpired]);
}

#[test]
fn refusals_and_backpressure_are_values() {
    let dir = TempDir::new("limits");
    let mut cfg = config(&dir, 1);
    cfg.engine = Config { batch_events_max: 2, ..Config::default() };
    cfg.inbox_depth = 1;
    let runtime = Runtime::start(cfg).unwrap();
    let err = runtime
        .write(0, vec![CommandBuf::CreateAccounts(vec![account(1), account(2), account(3)])])
        .unwrap_err();
    assert!(matches!(&err, ShardError::Refused(m) if m.contains("exceeds the maximum of 2")), "{err}");
    assert_eq!(runtime.stats(0).unwrap().accounts, 0);
    // With an inbox of one, a burst of submissions meets backpressure.
    let mut refused = 0;
    let mut answers = Vec::new();
    for i in 0..200u128 {
        let (reply, answer) = molly_shards::runtime::reply_channel();
        match runtime.submit(0, Request::LookupAccounts { ids: vec![i + 1], reply }) {
            Ok(()) => answers.push(answer),
            Err(Backpressure(Request::LookupAccounts { ids, .. })) => {
                assert_eq!(ids, [i + 1], "the refused request is handed back whole");
                refused += 1;
            }
            Err(Backpressure(other)) => panic!("handed back the wrong request: {other:?}"),
        }
    }
    assert!(refused > 0, "200 submissions into an inbox of 1 all fitted");
    for answer in answers {
        assert!(answer.blocking_recv().unwrap().is_empty());
    }
}

#[test]
fn a_corrupt_journal_stops_start_up_with_the_file_and_offset() {
    let dir = TempDir::new("corrupt");
    {
        let runtime = Runtime::start(config(&dir, 1)).unwrap();
        for i in 0..3u128 {
            runtime.write(0, vec![CommandBuf::CreateAccounts(vec![account(i + 1)])]).unwrap();
        }
    }
    let journal = dir.0.join("shard-0").join(molly_shards::journal_files::file_name(1));
    let mut bytes = std::fs::read(&journal).unwrap();
    bytes[4096 + 100] ^= 0xff;
    std::fs::write(&journal, &bytes).unwrap();
    // The clean stop's snapshot covers the corrupt entry: nothing is lost, start-up proceeds.
    let snapshots = molly_shards::snapshot::list(&dir.0.join("shard-0"));
    assert_eq!(snapshots.len(), 1);
    drop(Runtime::start(config(&dir, 1)).unwrap());
    // Without a snapshot (a crash before any), the corrupt middle entry stops start-up.
    for snapshot in molly_shards::snapshot::list(&dir.0.join("shard-0")) {
        std::fs::remove_file(snapshot).unwrap();
    }
    let err = Runtime::start(config(&dir, 1)).unwrap_err().to_string();
    // The second group starts at 4096 with a 64-byte tick; byte 4196 is in
    // the header of the accounts entry after it, at 4160.
    assert!(
        err.contains("shard 0") && err.contains("offset 4160") && err.contains("refusing to start"),
        "{err}"
    );
    assert!(err.contains(&journal.display().to_string()), "{err}");
}

#[test]
fn a_misrouted_request_is_refused_whole() {
    let dir = TempDir::new("routing");
    let runtime = Runtime::start(config(&dir, 2)).unwrap();
    let owned = by_shard(20, 2);
    let (mine, theirs) = (owned[0][0], owned[1][0]);
    // An account created on the wrong shard.
    let err =
        runtime.write(0, vec![CommandBuf::CreateAccounts(vec![account(mine), account(theirs)])]).unwrap_err();
    assert!(
        matches!(&err, ShardError::Refused(m) if m.contains(&format!("account {theirs} belongs to shard 1"))),
        "{err}"
    );
    assert_eq!(runtime.stats(0).unwrap().accounts, 0, "nothing of the refused request applied");
    // A transfer debiting an account of the other shard (crediting one is a
    // cross-shard transfer, see tests/cross_shard.rs).
    runtime.write(0, vec![CommandBuf::CreateAccounts(vec![account(mine)])]).unwrap();
    runtime.write(1, vec![CommandBuf::CreateAccounts(vec![account(theirs)])]).unwrap();
    let err =
        runtime.write(0, vec![CommandBuf::CreateTransfers(vec![transfer(1, theirs, mine, 5)])]).unwrap_err();
    assert!(
        matches!(&err, ShardError::Refused(m) if m.contains(&format!("debits account {theirs}, which belongs to shard 1"))),
        "{err}"
    );
    assert_eq!(runtime.stats(0).unwrap().transfers, 0);
}

#[test]
fn a_request_that_fills_a_whole_group_is_refused_not_stuck() {
    let dir = TempDir::new("full-group");
    let mut cfg = config(&dir, 1);
    // One sector per group.
    cfg.group_bytes_max = 4096;
    let runtime = Runtime::start(cfg).unwrap();
    let fits: Vec<Account> = (1..=30u128).map(account).collect();
    runtime.write(0, vec![CommandBuf::CreateAccounts(fits)]).unwrap();
    // Two entries of 16 and 15 records: 2 × 64 + 31 × 128 = 4096 bytes, the whole
    // group, leaving no room for the tick a group starts with. Refused, where
    // it once waited forever for a group with room.
    let first: Vec<Account> = (100..116u128).map(account).collect();
    let second: Vec<Account> = (116..131u128).map(account).collect();
    let err = runtime
        .write(0, vec![CommandBuf::CreateAccounts(first), CommandBuf::CreateAccounts(second)])
        .unwrap_err();
    assert!(matches!(&err, ShardError::Refused(m) if m.contains("over the group limit")), "{err}");
    assert_eq!(runtime.stats(0).unwrap().accounts, 30);
}

/// Every bridge account on every shard, for `check_bridges`.
fn bridges(runtime: &Runtime, shards: u32, ledgers: &[u32]) -> Vec<Vec<Account>> {
    (0..shards)
        .map(|shard| {
            let ids = (0..shards)
                .filter(|&peer| peer != shard)
                .flat_map(|peer| ledgers.iter().map(move |&l| molly_shards::cross::bridge_id(shard, peer, l)))
                .collect();
            runtime.lookup_accounts(shard as usize, ids)
        })
        .collect()
}

/// Both shards of `runtime` settled: invariants hold, no intent is open,
/// the bridges (ledger 1) net to zero. Returns the bridges found per shard.
fn assert_settled(runtime: &Runtime) -> Vec<Vec<Account>> {
    for shard in 0..2 {
        let stats = runtime.stats(shard).unwrap();
        stats.invariants.unwrap();
        assert_eq!(stats.intents_open, 0);
    }
    let bridges = bridges(runtime, 2, &[1]);
    molly_shards::cross::check_bridges(&bridges.iter().map(Vec::as_slice).collect::<Vec<_>>()).unwrap();
    bridges
}

#[test]
fn cross_shard_transfers_are_atomic_idempotent_and_survive_a_restart() {
    use molly_engine::AccountFlags as AF;
    use molly_shards::cross::user_view;
    use CreateTransferResult as TR;
    let dir = TempDir::new("cross");
    let owned = by_shard(40, 2);
    let (a, b) = (&owned[0], &owned[1]);
    let batch = vec![
        transfer(1, a[1], b[1], 10),                                             // ok
        transfer(2, a[1], b[2], 5),                                              // B's limit: exceeds_debits
        Transfer { flags: TransferFlags::LINKED, ..transfer(3, a[0], a[1], 1) }, // a chain across shards
        transfer(4, a[0], b[0], 1),
        Transfer { flags: TransferFlags::PENDING, ..transfer(5, a[0], b[0], 1) }, // not supported yet
        transfer(6, a[0], a[3], 2),                                               // local
    ];
    let first = [
        TR::Ok,
        TR::ExceedsDebits,
        TR::LinkedEventChainCrossShard,
        TR::LinkedEventChainCrossShard,
        TR::CrossShardFlagsNotSupported,
        TR::Ok,
    ];
    let retried = [
        TR::Exists,
        TR::ExceedsDebits,
        TR::LinkedEventChainCrossShard,
        TR::LinkedEventChainCrossShard,
        TR::CrossShardFlagsNotSupported,
        TR::Exists,
    ];
    {
        let runtime = Runtime::start(config(&dir, 2)).unwrap();
        for (shard, ids) in owned.iter().enumerate() {
            let accounts = ids
                .iter()
                .enumerate()
                .map(|(i, &id)| {
                    let flags = match i {
                        1 => AF::DEBITS_MUST_NOT_EXCEED_CREDITS,
                        2 => AF::CREDITS_MUST_NOT_EXCEED_DEBITS,
                        _ => AF::NONE,
                    };
                    Account { flags, ..account(id) }
                })
                .collect();
            runtime.write(shard, vec![CommandBuf::CreateAccounts(accounts)]).unwrap();
            let fund = transfer(900 + shard as u128, ids[0], ids[1], 100);
            runtime.write(shard, vec![CommandBuf::CreateTransfers(vec![fund])]).unwrap();
        }
        let outcomes = runtime.write(0, vec![CommandBuf::CreateTransfers(batch.clone())]).unwrap();
        assert_eq!(transfer_results(&outcomes), first);
        let outcomes = runtime.write(0, vec![CommandBuf::CreateTransfers(batch.clone())]).unwrap();
        assert_eq!(transfer_results(&outcomes), retried, "a retry moves nothing twice");
        // Both legs are found, one per shard; merged they are the transfer sent.
        let legs: Vec<Transfer> = (0..2).flat_map(|s| runtime.lookup_transfers(s, vec![1])).collect();
        assert_eq!(legs.len(), 2);
        let view = user_view(&legs).unwrap();
        assert_eq!(view, Transfer { timestamp: view.timestamp, ..batch[0] });
        let legs: Vec<Transfer> = (0..2).flat_map(|s| runtime.lookup_transfers(s, vec![2])).collect();
        assert_eq!(user_view(&legs), None, "the failed transfer moved nothing");
        let balance = |shard: usize, id: u128| runtime.lookup_accounts(shard, vec![id])[0];
        assert_eq!(balance(0, a[1]).debits_posted, 10);
        assert_eq!(balance(0, a[1]).debits_pending, 0);
        assert_eq!(balance(1, b[1]).credits_posted, 110);
        assert_eq!(balance(1, b[2]).credits_posted, 0);
        assert_settled(&runtime);
    }
    // After a restart (recovery from the clean stop's snapshot), the same answers.
    let runtime = Runtime::start(config(&dir, 2)).unwrap();
    let outcomes = runtime.write(0, vec![CommandBuf::CreateTransfers(batch)]).unwrap();
    assert_eq!(transfer_results(&outcomes), retried);
}

/// Many writes in flight on both shards, cross-shard both ways: every one
/// applies, the bridges net to zero, each shard balances.
#[test]
fn cross_shard_transfers_both_ways_under_load() {
    let dir = TempDir::new("cross-load");
    let mut cfg = config(&dir, 2);
    cfg.ring_depth = 2;
    let runtime = Runtime::start(cfg).unwrap();
    let owned = by_shard(200, 2);
    for (shard, ids) in owned.iter().enumerate() {
        runtime
            .write(shard, vec![CommandBuf::CreateAccounts(ids.iter().map(|&id| account(id)).collect())])
            .unwrap();
    }
    let mut answers = Vec::new();
    let mut id = 0u128;
    for round in 0..40 {
        for shard in 0..2usize {
            let batch: Vec<Transfer> = (0..50)
                .map(|i| {
                    id += 1;
                    let debit = owned[shard][(i + round) % owned[shard].len()];
                    let other = if i % 2 == 0 { 1 - shard } else { shard };
                    let credit = owned[other][(i * 7 + round + 1) % owned[other].len()];
                    transfer(id, debit, credit, 1 + (i as u128 % 5))
                })
                .filter(|t| t.debit_account_id != t.credit_account_id)
                .collect();
            let (reply, answer) = molly_shards::runtime::reply_channel();
            let mut request = Request::Write { commands: vec![CommandBuf::CreateTransfers(batch)], reply };
            loop {
                match runtime.submit(shard, request) {
                    Ok(()) => break,
                    Err(Backpressure(back)) => {
                        request = back;
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
            }
            answers.push(answer);
        }
    }
    let mut ok = 0;
    for answer in answers {
        let outcomes = answer.blocking_recv().unwrap().unwrap();
        let results = transfer_results(&outcomes);
        assert!(results.iter().all(|r| r.is_ok()), "{results:?}");
        ok += results.len();
    }
    assert!(ok > 3_000);
    assert_settled(&runtime);
    let posted: u128 = (0..2).map(|shard| runtime.stats(shard).unwrap().totals[&1].debits_posted).sum();
    assert!(posted > 0);
}

/// Snapshots run in the background while writes go on: full transfer
/// blocks go to segment files and leave memory, old transfers still answer,
/// and a restart loads them back from the segments.
#[test]
#[cfg_attr(
    feature = "sim",
    ignore = "counts 65,536-record blocks; `sim` makes them 64 (its simulator sweep covers segments and eviction)"
)]
fn background_snapshots_move_history_to_segments() {
    let dir = TempDir::new("background-snapshots");
    let blocks = 3;
    let total = (blocks * molly_engine::BLOCK_TRANSFERS) as u128;
    let start = || {
        Runtime::start(RuntimeConfig {
            snapshot_every_bytes: 4 << 20,
            transfers_in_memory: 0,
            ..config(&dir, 1)
        })
        .unwrap()
    };
    {
        let runtime = start();
        runtime.write(0, vec![CommandBuf::CreateAccounts(vec![account(1), account(2)])]).unwrap();
        let mut id = 1u128;
        while id <= total {
            let batch: Vec<Transfer> =
                (id..(id + 8190).min(total + 1)).map(|i| transfer(i, 1 + i % 2, 2 - i % 2, i)).collect();
            id += batch.len() as u128;
            let results =
                transfer_results(&runtime.write(0, vec![CommandBuf::CreateTransfers(batch)]).unwrap());
            assert!(results.iter().all(|r| r.is_ok()));
        }
        // The shard takes a finished snapshot's outcome between groups: keep it busy until the
        // blocks written so far have left memory (a liveness wait, not a timing assertion).
        let metrics = runtime.metrics()[0].clone();
        let deadline = Instant::now() + Duration::from_secs(120);
        while metrics.transfer_blocks_cold.get() < 2 {
            assert!(
                Instant::now() < deadline,
                "blocks never left memory: {} snapshots",
                metrics.snapshots.get()
            );
            runtime.write(0, vec![CommandBuf::CreateTransfers(vec![transfer(1, 2, 1, 1)])]).unwrap();
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(metrics.snapshots.get() >= 1);
        let found = runtime.lookup_transfers(0, vec![1, 7, total]);
        assert_eq!(found.iter().map(|t| t.amount).collect::<Vec<_>>(), [1, 7, total]);
        let stats = runtime.stats(0).unwrap();
        assert_eq!(stats.transfers, total as usize);
        assert_eq!(stats.invariants, Ok(()));
    }
    let runtime = start();
    let recovery = &runtime.recoveries()[0];
    assert!(recovery.snapshot.is_some());
    assert_eq!(recovery.scan.entries, 0, "the clean stop's snapshot covers everything");
    assert_eq!(runtime.metrics()[0].transfer_blocks_cold.get(), blocks as i64, "history loads cold");
    let found = runtime.lookup_transfers(0, vec![1, 65_536, 65_537, total]);
    assert_eq!(found.iter().map(|t| t.amount).collect::<Vec<_>>(), [1, 65_536, 65_537, total]);
    let results = transfer_results(
        &runtime
            .write(0, vec![CommandBuf::CreateTransfers(vec![transfer(2, 1, 2, 2), transfer(2, 1, 2, 3)])])
            .unwrap(),
    );
    assert_eq!(results, [CreateTransferResult::Exists, CreateTransferResult::ExistsWithDifferentAmount]);
    assert_eq!(runtime.stats(0).unwrap().invariants, Ok(()));
}

/// Hot system accounts are sharded: a part on every shard. Transfers
/// between users and them stay on the user's shard; limits hold per part;
/// a move between parts is all or nothing and leaves the sum alone.
#[test]
fn sharded_accounts_keep_user_transfers_single_shard_and_move_value_between_parts() {
    use molly_engine::AccountFlags as AF;
    use molly_shards::route::{part_move_shards, sharded_id, transfer_route, TransferRoute};
    use CreateTransferResult as TR;
    let dir = TempDir::new("sharded");
    let owned = by_shard(40, 2);
    let (a, b) = (&owned[0], &owned[1]);
    // A hot wallet's ledger account (may not go below zero) and a deposit
    // clearing account (goes negative as deposits are credited).
    let (hot, clearing) = (sharded_id(1), sharded_id(2));
    let route = |t: &Transfer| match transfer_route(t, 2) {
        TransferRoute::Shard(s) => s as usize,
        TransferRoute::Pending => panic!("no posts here"),
    };
    let send = |runtime: &Runtime, batch: Vec<Transfer>| -> Vec<TR> {
        let shard = route(&batch[0]);
        assert!(batch.iter().all(|t| route(t) == shard), "one shard per batch here");
        transfer_results(&runtime.write(shard, vec![CommandBuf::CreateTransfers(batch)]).unwrap())
    };
    let part = |runtime: &Runtime, shard: usize| runtime.lookup_accounts(shard, vec![hot])[0];
    let moved = Transfer { user_data_32: part_move_shards(0, 1), ..transfer(30, hot, hot, 40) };
    // The moves here are the test's own: no rebalancer.
    let config = |dir: &TempDir, shards| RuntimeConfig { rebalance: None, ..config(dir, shards) };
    {
        let runtime = Runtime::start(config(&dir, 2)).unwrap();
        for (shard, ids) in owned.iter().enumerate() {
            let mut accounts: Vec<Account> = ids.iter().map(|&id| account(id)).collect();
            accounts.push(Account { flags: AF::DEBITS_MUST_NOT_EXCEED_CREDITS, ..account(hot) });
            accounts.push(account(clearing));
            let outcomes = runtime.write(shard, vec![CommandBuf::CreateAccounts(accounts)]).unwrap();
            assert!(matches!(&outcomes[..], [Outcome::Accounts(r)] if r.iter().all(|r| r.is_ok())));
        }
        // Deposits credited from the clearing account, on each user's shard.
        for (i, &user) in a.iter().chain(b).enumerate() {
            assert_eq!(send(&runtime, vec![transfer(100 + i as u128, clearing, user, 100)]), [TR::Ok]);
        }
        // Users pay into the hot wallet: 50 on shard 0, 30 on shard 1.
        assert_eq!(send(&runtime, vec![transfer(10, a[0], hot, 50)]), [TR::Ok]);
        assert_eq!(send(&runtime, vec![transfer(11, b[0], hot, 30)]), [TR::Ok]);
        assert_eq!(route(&transfer(11, b[0], hot, 30)), 1);
        // None of it crossed shards: no bridge was ever needed.
        assert!(bridges(&runtime, 2, &[1]).iter().all(Vec::is_empty));
        // A withdrawal of 60 from the part on shard 1 (30) fails though the
        // account holds 80: limits hold per part.
        let withdrawal = transfer(20, hot, b[1], 60);
        assert_eq!(route(&withdrawal), 1);
        assert_eq!(send(&runtime, vec![withdrawal]), [TR::ExceedsCredits]);
        // Move 40 from the part on shard 0 to the part on shard 1.
        assert_eq!(route(&moved), 0);
        // Sent to the receiving shard instead, it is refused whole, like any misrouted write.
        let misrouted = runtime.write(1, vec![CommandBuf::CreateTransfers(vec![moved])]);
        assert!(
            matches!(misrouted, Err(ShardError::Refused(ref why)) if why.contains("from")),
            "{misrouted:?}"
        );
        assert_eq!(send(&runtime, vec![moved]), [TR::Ok]);
        assert_eq!(send(&runtime, vec![moved]), [TR::Exists], "a retried move moves nothing twice");
        // Now the part on shard 1 holds 70: the same withdrawal, retried, goes through.
        assert_eq!(send(&runtime, vec![withdrawal]), [TR::Ok]);
        // A move over the part's balance fails on its limit, whole; a move
        // naming no other shard is a transfer to itself.
        let too_much = Transfer { id: 31, amount: 11, ..moved };
        assert_eq!(send(&runtime, vec![too_much]), [TR::ExceedsCredits]);
        let nowhere = Transfer { id: 32, user_data_32: part_move_shards(0, 0), ..moved };
        assert_eq!(send(&runtime, vec![nowhere]), [TR::AccountsMustBeDifferent]);
        let (p0, p1) = (part(&runtime, 0), part(&runtime, 1));
        assert_eq!((p0.credits_posted, p0.debits_posted), (50, 40));
        assert_eq!((p1.credits_posted, p1.debits_posted), (30 + 40, 60));
        assert_eq!(p0.debits_pending + p1.debits_pending, 0);
        let bridges = assert_settled(&runtime);
        assert!(!bridges[0].is_empty(), "the move crossed shards");
    }
    // After a restart: the same parts, and the move is still spent.
    let runtime = Runtime::start(config(&dir, 2)).unwrap();
    assert_eq!(part(&runtime, 0).credits_posted - part(&runtime, 0).debits_posted, 10);
    assert_eq!(part(&runtime, 1).credits_posted - part(&runtime, 1).debits_posted, 10);
    assert_eq!(send(&runtime, vec![moved]), [TR::Exists]);
}

/// The rebalancer tops up a part that ran dry from the rich ones, in the
/// background, without changing the account's balance.
#[test]
fn the_rebalancer_refills_a_dry_part_from_a_rich_one() {
    use molly_engine::AccountFlags as AF;
    use molly_shards::rebalance::RebalanceConfig;
    use molly_shards::route::sharded_id;
    use CreateTransferResult as TR;
    let dir = TempDir::new("rebalance");
    let owned = by_shard(40, 2);
    let hot = sharded_id(9);
    let rebalance = RebalanceConfig { interval: Duration::from_millis(5), low_water_percent: 50 };
    let runtime = Runtime::start(RuntimeConfig { rebalance: Some(rebalance), ..config(&dir, 2) }).unwrap();
    for (shard, ids) in owned.iter().enumerate() {
        let mut accounts: Vec<Account> = ids.iter().map(|&id| account(id)).collect();
        accounts.push(Account { flags: AF::DEBITS_MUST_NOT_EXCEED_CREDITS, ..account(hot) });
        runtime.write(shard, vec![CommandBuf::CreateAccounts(accounts)]).unwrap();
    }
    // Users of shard 0 pay 1,000 into the hot wallet: all of it in part 0.
    let pay = transfer(1, owned[0][0], hot, 1_000);
    assert_eq!(
        transfer_results(&runtime.write(0, vec![CommandBuf::CreateTransfers(vec![pay])]).unwrap()),
        [TR::Ok]
    );
    let room = |shard: usize| {
        let p = runtime.lookup_accounts(shard, vec![hot])[0];
        p.credits_posted - p.debits_posted - p.debits_pending
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    // (The move's count lands once its write is answered, after its credit.)
    while room(1) < 500 || runtime.rebalance_metrics().moves.get() == 0 {
        assert!(Instant::now() < deadline, "part 1 was never refilled (room {})", room(1));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!((room(0), room(1)), (500, 500), "topped up to the mean, no more");
    // A withdrawal on shard 1 that its part could not have paid before.
    let withdrawal = transfer(2, hot, owned[1][0], 400);
    let results =
        transfer_results(&runtime.write(1, vec![CommandBuf::CreateTransfers(vec![withdrawal])]).unwrap());
    assert_eq!(results, [TR::Ok]);
    // It drained part 1 below the mark again: the rebalancer splits what is left.
    while room(1) != 300 {
        assert!(Instant::now() < deadline, "not rebalanced after the withdrawal: {} / {}", room(0), room(1));
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(room(0), 300, "the balance is the sum of the parts: 1,000 − 400");
    // The move's credit has landed; its post on the debit shard may still be
    // on its way (the rebalancer does not wait for it here).
    while (0..2).any(|shard| runtime.stats(shard).unwrap().intents_open != 0) {
        assert!(Instant::now() < deadline, "the last move was never settled");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_settled(&runtime);
}

/// A group holding only settles lingers for company, but never holds up a
/// read (which waits for those settles) or a stop: with a linger of a
/// minute, a read after a cross-shard write is answered, posted, and the
/// runtime stops, all long before it (liveness waits, not timings).
#[test]
fn a_lingering_settle_group_gives_way_to_a_read_and_a_stop() {
    let dir = TempDir::new("linger");
    let owned = by_shard(40, 2);
    let lingering =
        RuntimeConfig { settle_linger: Duration::from_secs(60), rebalance: None, ..config(&dir, 2) };
    let mut runtime = Runtime::start(lingering).unwrap();
    for (shard, ids) in owned.iter().enumerate() {
        let accounts = ids.iter().map(|&id| account(id)).collect();
        runtime.write(shard, vec![CommandBuf::CreateAccounts(accounts)]).unwrap();
    }
    let started = Instant::now();
    let sent = transfer(1, owned[0][0], owned[1][0], 5);
    let results = transfer_results(&runtime.write(0, vec![CommandBuf::CreateTransfers(vec![sent])]).unwrap());
    assert_eq!(results, [CreateTransferResult::Ok]);
    // The settle waits in a lingering group; this read must end the wait.
    let payer = runtime.lookup_accounts(0, vec![owned[0][0]])[0];
    assert_eq!((payer.debits_posted, payer.debits_pending), (5, 0), "the read sees the transfer posted");
    assert_eq!(runtime.stats(0).unwrap().intents_open, 0);
    // Another answered transfer, then a stop: the stop writes its settle.
    let sent = transfer(2, owned[0][0], owned[1][0], 7);
    let results = transfer_results(&runtime.write(0, vec![CommandBuf::CreateTransfers(vec![sent])]).unwrap());
    assert_eq!(results, [CreateTransferResult::Ok]);
    runtime.shutdown();
    assert!(started.elapsed() < Duration::from_secs(50), "a lingering group held a read or the stop");
    drop(runtime);
    let runtime = Runtime::start(RuntimeConfig { rebalance: None, ..config(&dir, 2) }).unwrap();
    let payer = runtime.lookup_accounts(0, vec![owned[0][0]])[0];
    assert_eq!((payer.debits_posted, payer.debits_pending), (12, 0), "both posted, durably");
    assert_settled(&runtime);
}

/// A shard with nothing to do parks (here for up to a minute) and is woken
/// by its doorbell: a caller's request, a peer's cross-shard message (both
/// ways) and the stop each end its park at once. With `idle_park` zero it
/// polls instead, and the same work gets done.
#[test]
fn a_parked_shard_is_woken_by_a_request_a_peer_and_the_stop() {
    for idle_park in [Duration::from_secs(60), Duration::ZERO] {
        let dir = TempDir::new("doorbell");
        let owned = by_shard(40, 2);
        let parking = RuntimeConfig { idle_park, rebalance: None, ..config(&dir, 2) };
        let started = Instant::now();
        let mut runtime = Runtime::start(parking).unwrap();
        for (shard, ids) in owned.iter().enumerate() {
            // Let both shards park before each request.
            std::thread::sleep(Duration::from_millis(20));
            let accounts = ids.iter().map(|&id| account(id)).collect();
            runtime.write(shard, vec![CommandBuf::CreateAccounts(accounts)]).unwrap();
        }
        for (id, (from, to)) in [(1, (0, 1)), (2, (1, 0))] {
            std::thread::sleep(Duration::from_millis(20));
            let sent = transfer(id, owned[from][0], owned[to][0], 5);
            let outcomes = runtime.write(from, vec![CommandBuf::CreateTransfers(vec![sent])]).unwrap();
            assert_eq!(transfer_results(&outcomes), [CreateTransferResult::Ok], "{idle_park:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
        let credited = runtime.lookup_accounts(1, vec![owned[1][0]])[0];
        assert_eq!((credited.credits_posted, credited.debits_posted), (5, 5), "{idle_park:?}");
        std::thread::sleep(Duration::from_millis(20));
        runtime.shutdown();
        assert!(started.elapsed() < Duration::from_secs(50), "a parked shard was not woken ({idle_park:?})");
        drop(runtime);
        let runtime = Runtime::start(RuntimeConfig { rebalance: None, ..config(&dir, 2) }).unwrap();
        assert_settled(&runtime);
    }
}

/// Whether the block device holding `path` has poll queues (its
/// `queue/io_poll` in sysfs reads 1); false off a block device.
fn device_polls(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(path).unwrap().dev();
    let base = format!("/sys/dev/block/{}:{}", libc::major(dev), libc::minor(dev));
    // A partition's queue is its disk's.
    [format!("{base}/queue/io_poll"), format!("{base}/../queue/io_poll")]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .is_some_and(|v| v.trim() == "1")
}

#[test]
fn journal_writes_are_not_busy_polled_on_a_device_without_poll_queues() {
    let dir = TempDir::new("polled");
    if device_polls(&dir.0) {
        eprintln!("{} is on a device with poll queues: polled writes are its right", dir.0.display());
        return;
    }
    // No spare: the first group creates its journal file, empty, which is
    // what glommio's device probe misread when it was the first file opened.
    let runtime =
        Runtime::start(RuntimeConfig { journal_prealloc_bytes_per_s: 0, ..config(&dir, 1) }).unwrap();
    let ids: Vec<u128> = (1..=8).collect();
    let outcomes = runtime
        .write(0, vec![CommandBuf::CreateAccounts(ids.iter().map(|&id| account(id)).collect())])
        .unwrap();
    assert!(matches!(&outcomes[..], [Outcome::Accounts(r)] if r.iter().all(|r| r.is_ok())), "{outcomes:?}");
    for i in 0..16u128 {
        let results = transfer_results(
            &runtime
                .write(0, vec![CommandBuf::CreateTransfers(vec![transfer(100 + i, 1, 2 + i % 7, 5)])])
                .unwrap(),
        );
        assert_eq!(results, vec![CreateTransferResult::Ok]);
    }
    let metrics = runtime.metrics()[0].clone();
    assert!(metrics.groups.get() >= 17, "one group per write: {}", metrics.groups.get());
    assert_eq!(metrics.journal_writes_polled.get(), 0, "journal writes went to the busy-polled ring");
}
