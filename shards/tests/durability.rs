//! The journal against crashes and corruption: whatever happens to the
//! file, reopening gives exactly the state of a prefix of the acknowledged
//! commands (a torn tail is cut), or refuses with the file and offset (a
//! corrupt entry with valid entries after it). Never wrong balances.

use std::path::{Path, PathBuf};

use molly_engine::{Account, AccountFlags, Config, Transfer, TransferFlags};
use molly_shards::durable::{replay, DurableError, DurableLedger, Outcome, GROUP_BYTES_MAX_DEFAULT};
use molly_shards::journal::{Command, CommandBuf, JournalError, StopReason, SECTOR_SIZE};
use molly_shards::journal_files::{self, file_name};
use molly_shards::snapshot::Disk;

/// The first journal file (a ledger that never snapshots writes only it).
fn first_journal(dir: &Path) -> PathBuf {
    dir.join(file_name(1))
}

/// The journal files in `dir`, by first sequence.
fn journals(dir: &Path) -> Vec<u64> {
    journal_files::list_in(&Disk, dir).unwrap().into_iter().map(|(first, _)| first).collect()
}

/// A fresh directory, removed on drop (`.0` is its path).
struct TempDir(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(&format!("molly-{name}-")).tempdir().unwrap();
        Self(dir.path().to_path_buf(), dir)
    }
}

/// A small deterministic PRNG for workloads (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Groups of commands: accounts first, then transfers of every kind and ticks.
fn workload(seed: u64, groups: usize) -> Vec<Vec<CommandBuf>> {
    let mut rng = Rng(seed | 1);
    let accounts: Vec<Account> = (1..=12u128)
        .map(|id| Account {
            id,
            ledger: 1,
            code: 1,
            flags: if id % 3 == 0 {
                AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS
            } else {
                AccountFlags::NONE
            },
            ..Account::default()
        })
        .collect();
    let mut out = vec![vec![CommandBuf::CreateAccounts(accounts)]];
    let mut next_id = 1u128;
    let mut clock = 0u64;
    for _ in 0..groups {
        let mut group = Vec::new();
        for _ in 0..1 + rng.below(3) {
            if rng.below(5) == 0 {
                clock += rng.below(3_000_000_000);
                group.push(CommandBuf::Tick { now_ns: clock });
                continue;
            }
            let batch: Vec<Transfer> = (0..1 + rng.below(40))
                .map(|_| {
                    let debit = 1 + rng.below(12) as u128;
                    let credit = 1 + (debit + u128::from(rng.below(11))) % 12;
                    let kind = rng.below(10);
                    let id = next_id;
                    next_id += 1;
                    let mut t = Transfer {
                        id,
                        debit_account_id: debit,
                        credit_account_id: credit,
                        amount: 1 + u128::from(rng.below(1000)),
                        ledger: 1,
                        code: 1,
                        ..Transfer::default()
                    };
                    if kind < 2 {
                        t.flags = TransferFlags::PENDING;
                        t.timeout = rng.below(3) as u32;
                    } else if kind == 2 && id > 1 {
                        t = Transfer {
                            id,
                            pending_id: 1 + u128::from(rng.below(id as u64 - 1)),
                            flags: TransferFlags::POST_PENDING,
                            ..Transfer::default()
                        };
                    } else if kind == 3 {
                        t.flags = TransferFlags::LINKED;
                    }
                    t
                })
                .collect();
            group.push(CommandBuf::CreateTransfers(batch));
        }
        out.push(group);
    }
    out
}

fn open(dir: &Path) -> Result<DurableLedger, DurableError> {
    DurableLedger::open(dir, Config::default(), GROUP_BYTES_MAX_DEFAULT)
}

/// [`open`], keeping every journal file (the whole history replays when no snapshot loads).
fn open_keeping(dir: &Path) -> DurableLedger {
    let mut ledger = open(dir).unwrap();
    ledger.set_keep_journal(true);
    ledger
}

fn run(ledger: &mut DurableLedger, group: &[CommandBuf]) -> Vec<Outcome> {
    let commands: Vec<Command<'_>> = group.iter().map(CommandBuf::as_command).collect();
    ledger.execute(&commands).unwrap()
}

/// The recovered ledger must equal a replay of exactly the commands it says it holds.
fn assert_is_prefix(ledger: &DurableLedger, all: &[CommandBuf], at_least: usize) {
    let held = (ledger.next_sequence() - 1) as usize;
    assert!(held >= at_least, "recovered {held} commands, {at_least} were acknowledged");
    let expected = replay(Config::default(), &all[..held]).unwrap();
    assert_eq!(ledger.engine().accounts(), expected.accounts());
    assert_eq!(ledger.engine().transfers(), expected.transfers());
    ledger.engine().check_invariants().unwrap();
}

#[test]
fn reopening_replays_to_the_same_state_and_results() {
    let dir = TempDir::new("reopen");
    let groups = workload(7, 30);
    let all: Vec<CommandBuf> = groups.concat();
    let mut outcomes = Vec::new();
    {
        let mut ledger = open(&dir.0).unwrap();
        for group in &groups {
            outcomes.extend(run(&mut ledger, group));
        }
        assert!(outcomes.iter().any(|o| matches!(o, Outcome::Transfers(r) if r.iter().any(|r| !r.is_ok()))));
    }
    let ledger = open(&dir.0).unwrap();
    let report = ledger.recovery();
    assert_eq!(report.scan.entries as usize, all.len());
    assert!(!report.scan.torn_tail);
    // Only the last group's zero padding is cut.
    assert!(report.truncated_bytes < SECTOR_SIZE as u64);
    assert_is_prefix(&ledger, &all, all.len());
    // Replaying gives the same results, not only the same state.
    let mut engine = molly_engine::Engine::new(Config::default()).unwrap();
    let mut expired = Vec::new();
    let replayed: Vec<Outcome> = all
        .iter()
        .map(|c| molly_shards::durable::apply(&mut engine, &c.as_command(), &mut expired).unwrap())
        .collect();
    assert_eq!(replayed, outcomes);
}

#[test]
fn a_torn_tail_is_cut_at_every_offset_and_writing_resumes() {
    let dir = TempDir::new("torn");
    let groups = workload(11, 12);
    let all: Vec<CommandBuf> = groups.concat();
    let journal = first_journal(&dir.0);
    let mut acknowledged_before_last = 0;
    {
        let mut ledger = open(&dir.0).unwrap();
        for (i, group) in groups.iter().enumerate() {
            if i == groups.len() - 1 {
                acknowledged_before_last = (ledger.next_sequence() - 1) as usize;
            }
            run(&mut ledger, group);
        }
    }
    let full = std::fs::read(&journal).unwrap();
    let last_group_start = {
        // Replay the group boundaries: reopen a copy cut just before the last group.
        let mut offset = 0usize;
        let mut ledger_len = Vec::new();
        let probe = TempDir::new("torn-probe");
        let mut ledger = open(&probe.0).unwrap();
        for group in &groups {
            ledger_len.push(offset);
            run(&mut ledger, group);
            offset = std::fs::metadata(first_journal(&probe.0)).unwrap().len() as usize;
        }
        *ledger_len.last().unwrap()
    };
    // Cut the file at many points inside the last group (a write that never completed).
    for cut in (last_group_start..full.len()).step_by(61) {
        // (The file the last round's writes went to goes: this round starts from the cut file alone.)
        for (first, path) in journal_files::list_in(&Disk, &dir.0).unwrap() {
            if first > 1 {
                std::fs::remove_file(path).unwrap();
            }
        }
        std::fs::write(&journal, &full[..cut]).unwrap();
        let mut ledger = open(&dir.0).unwrap();
        assert_is_prefix(&ledger, &all, acknowledged_before_last);
        let report = ledger.recovery();
        assert!(report.scan.valid_end as usize <= cut);
        // The ledger keeps working after the cut, and reopens cleanly.
        let held = (ledger.next_sequence() - 1) as usize;
        let extra = vec![CommandBuf::Tick { now_ns: u64::MAX / 4 }];
        run(&mut ledger, &extra);
        drop(ledger);
        let ledger = open(&dir.0).unwrap();
        assert!(!ledger.recovery().scan.torn_tail, "cut at {cut}: {:?}", ledger.recovery());
        assert_eq!(ledger.next_sequence() as usize, held + 2);
    }
}

#[test]
fn a_corrupt_middle_entry_is_refused_with_file_and_offset() {
    let dir = TempDir::new("middle");
    let groups = workload(3, 10);
    {
        let mut ledger = open(&dir.0).unwrap();
        for group in &groups {
            run(&mut ledger, group);
        }
    }
    let journal = first_journal(&dir.0);
    let mut bytes = std::fs::read(&journal).unwrap();
    let original = bytes.clone();
    // Flip one bit in the second group's first entry (header, then body).
    for (position, expected_reason) in
        [(SECTOR_SIZE + 40, StopReason::BadHeader), (SECTOR_SIZE + 64 + 5, StopReason::BadBody)]
    {
        bytes.copy_from_slice(&original);
        bytes[position] ^= 0x10;
        std::fs::write(&journal, &bytes).unwrap();
        let err = open(&dir.0).unwrap_err();
        let DurableError::Journal(JournalError::CorruptInTheMiddle { name, offset, reason, next_valid }) =
            &err
        else {
            panic!("expected a refusal, got {err:?}");
        };
        assert_eq!(*offset, SECTOR_SIZE as u64);
        assert_eq!(*reason, expected_reason);
        assert!(*next_valid > *offset);
        assert!(name.ends_with(&file_name(1)));
        let message = err.to_string();
        assert!(
            message.contains(&journal.display().to_string()) && message.contains("offset 4096"),
            "{message}"
        );
        // The refusal changed nothing on disk.
        assert_eq!(std::fs::read(&journal).unwrap(), bytes);
    }
}

#[test]
fn a_flipped_bit_in_the_last_group_is_cut_like_a_torn_write() {
    let dir = TempDir::new("last");
    let groups = workload(5, 6);
    let all: Vec<CommandBuf> = groups.concat();
    let before_last: usize;
    {
        let mut ledger = open(&dir.0).unwrap();
        for group in &groups[..groups.len() - 1] {
            run(&mut ledger, group);
        }
        before_last = (ledger.next_sequence() - 1) as usize;
        run(&mut ledger, groups.last().unwrap());
    }
    let journal = first_journal(&dir.0);
    let mut bytes = std::fs::read(&journal).unwrap();
    let last = bytes.len() - SECTOR_SIZE;
    bytes[last + 70] ^= 1;
    std::fs::write(&journal, &bytes).unwrap();
    let ledger = open(&dir.0).unwrap();
    assert_is_prefix(&ledger, &all, before_last);
    assert!(ledger.recovery().scan.torn_tail);
}

#[test]
fn a_batch_over_the_limit_writes_nothing() {
    let dir = TempDir::new("limit");
    let config = Config { batch_events_max: 4, ..Config::default() };
    let mut ledger = DurableLedger::open(&dir.0, config.clone(), GROUP_BYTES_MAX_DEFAULT).unwrap();
    let accounts: Vec<Account> =
        (1..=5u128).map(|id| Account { id, ledger: 1, code: 1, ..Account::default() }).collect();
    let err = ledger
        .execute(&[Command::CreateAccounts(&accounts[..4]), Command::CreateAccounts(&accounts)])
        .unwrap_err();
    assert!(matches!(err, DurableError::Batch(_)), "{err}");
    assert!(journals(&dir.0).is_empty(), "no journal file was even created");
    assert!(ledger.engine().accounts().is_empty());
    // A group over the byte limit is refused too.
    let mut small = DurableLedger::open(&dir.0.join("small"), config, 4096).unwrap();
    let err = small.execute(&vec![Command::CreateAccounts(&accounts[..4]); 10]).unwrap_err();
    assert!(matches!(err, DurableError::GroupTooLarge { .. }), "{err}");
}

#[test]
fn a_snapshot_bounds_replay_and_a_broken_one_is_skipped() {
    let dir = TempDir::new("snapshot");
    let groups = workload(13, 20);
    let all: Vec<CommandBuf> = groups.concat();
    let (first_snapshot, second_snapshot);
    {
        // Keeping the whole journal: the last step replays it all.
        let mut ledger = open_keeping(&dir.0);
        for group in &groups[..8] {
            run(&mut ledger, group);
        }
        first_snapshot = ledger.snapshot(0).unwrap();
        for group in &groups[8..14] {
            run(&mut ledger, group);
        }
        second_snapshot = ledger.snapshot(0).unwrap();
        for group in &groups[14..] {
            run(&mut ledger, group);
        }
    }
    let tail: usize = groups[14..].iter().map(Vec::len).sum();
    let ledger = open(&dir.0).unwrap();
    let report = ledger.recovery();
    assert_eq!(report.snapshot.as_ref(), Some(&second_snapshot));
    assert_eq!(report.scan.entries as usize, tail, "only the journal after the snapshot is replayed");
    assert_is_prefix(&ledger, &all, all.len());
    drop(ledger);

    // Corrupt the newest snapshot: it is skipped for the older one, with the same result.
    let mut bytes = std::fs::read(&second_snapshot).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&second_snapshot, &bytes).unwrap();
    let ledger = open(&dir.0).unwrap();
    let report = ledger.recovery();
    assert_eq!(report.snapshot.as_ref(), Some(&first_snapshot));
    assert_eq!(report.snapshots_skipped.len(), 1);
    assert!(report.snapshots_skipped[0].1.contains("checksum"), "{:?}", report.snapshots_skipped);
    assert_is_prefix(&ledger, &all, all.len());
    drop(ledger);

    // Truncate the older one too: full replay from the journal, still exact.
    let len = std::fs::metadata(&first_snapshot).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&first_snapshot).unwrap().set_len(len / 3).unwrap();
    let ledger = open(&dir.0).unwrap();
    assert_eq!(ledger.recovery().snapshot, None);
    assert_eq!(ledger.recovery().snapshots_skipped.len(), 2);
    assert_eq!(ledger.recovery().scan.entries as usize, all.len());
    assert_is_prefix(&ledger, &all, all.len());
}

#[test]
fn snapshots_keep_the_newest_two() {
    let dir = TempDir::new("keep");
    let mut ledger = open(&dir.0).unwrap();
    // What a crash in the middle of writing leaves: removed by the next snapshot.
    let leftovers = ["snapshot-00000000000000000003.molly.tmp", "transfers-0000000000.seg.tmp"];
    for name in leftovers {
        std::fs::write(dir.0.join(name), b"torn").unwrap();
    }
    for group in workload(17, 4) {
        run(&mut ledger, &group);
        ledger.snapshot(0).unwrap();
    }
    for name in leftovers {
        assert!(!dir.0.join(name).exists(), "{name} left behind");
    }
    let kept = molly_shards::snapshot::list(&dir.0);
    assert_eq!(kept.len(), molly_shards::snapshot::KEEP);
    // Named by journal sequence: the newest is the last position.
    assert!(kept[1].to_string_lossy().contains(&format!("{:020}", ledger.next_sequence())));
}

mod corruption {
    use super::*;
    use proptest::prelude::*;

    /// Builds a journal (and optionally a snapshot in the middle) once per case.
    fn build(dir: &Path, groups: &[Vec<CommandBuf>], snapshot_after: Option<usize>) {
        let mut ledger = open(dir).unwrap();
        for (i, group) in groups.iter().enumerate() {
            run(&mut ledger, group);
            if snapshot_after == Some(i) {
                ledger.snapshot(0).unwrap();
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Flipped bytes and truncations anywhere in the journal and the
        /// snapshot: recovery either refuses with an error, or gives exactly
        /// the state of a prefix of the commands. Never wrong balances.
        #[test]
        fn damage_gives_a_prefix_or_a_refusal(
            seed in 1u64..1000,
            snapshot_after in prop::option::of(0usize..6),
            flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 0..4),
            cut in prop::option::of(any::<prop::sample::Index>()),
            damage_snapshot in any::<bool>(),
            journal_file in any::<prop::sample::Index>(),
        ) {
            let dir = TempDir::new("damage");
            let groups = workload(seed, 6);
            let all: Vec<CommandBuf> = groups.concat();
            build(&dir.0, &groups, snapshot_after);
            // Any journal file (a snapshot starts a new one).
            let files = journal_files::list_in(&Disk, &dir.0).unwrap();
            let journal = files[journal_file.index(files.len())].1.clone();
            let snapshots = molly_shards::snapshot::list(&dir.0);
            let target = if damage_snapshot && !snapshots.is_empty() { snapshots[0].clone() } else { journal.clone() };
            let mut bytes = std::fs::read(&target).unwrap();
            for (index, xor) in &flips {
                let i = index.index(bytes.len());
                bytes[i] ^= xor;
            }
            if let Some(cut) = cut {
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            std::fs::write(&target, &bytes).unwrap();
            match open(&dir.0) {
                Err(error) => {
                    // A refusal must name the file.
                    prop_assert!(error.to_string().contains(&dir.0.display().to_string()), "{error}");
                }
                Ok(ledger) => {
                    let held = (ledger.next_sequence() - 1) as usize;
                    prop_assert!(held <= all.len());
                    let expected = replay(Config::default(), &all[..held]).unwrap();
                    prop_assert_eq!(ledger.engine().accounts(), expected.accounts());
                    prop_assert_eq!(ledger.engine().transfers(), expected.transfers());
                    prop_assert!(ledger.engine().check_invariants().is_ok());
                }
            }
        }
    }
}

/// History beyond memory: at each snapshot the full transfer blocks go to a
/// segment file and may leave memory; old transfers still answer (lookups,
/// idempotent retries, posting an old pending transfer, account history),
/// after a restart too; a damaged segment costs only the snapshots that name
/// it (an older snapshot or the journal takes over), never wrong balances.
#[test]
#[cfg_attr(
    feature = "sim",
    ignore = "counts 65,536-record blocks; `sim` makes them 64 (its simulator sweep covers segments and eviction)"
)]
fn history_leaves_memory_for_segments_and_still_answers() {
    use molly_engine::{AccountFilter, AccountFilterFlags, CreateTransferResult, BLOCK_TRANSFERS};
    let dir = TempDir::new("segments");
    let accounts: Vec<Account> =
        (1..=4u128).map(|id| Account { id, ledger: 1, code: 1, ..Account::default() }).collect();
    let transfer = |id: u128| Transfer {
        id,
        debit_account_id: 1 + id % 3,
        credit_account_id: 4,
        amount: id,
        ledger: 1,
        code: 1,
        flags: if id.is_multiple_of(1000) { TransferFlags::PENDING } else { TransferFlags::NONE },
        ..Transfer::default()
    };
    let create = |ledger: &mut DurableLedger, ids: std::ops::Range<u128>| {
        let all: Vec<Transfer> = ids.map(transfer).collect();
        for batch in all.chunks(8190) {
            let outcomes = run(ledger, &[CommandBuf::CreateTransfers(batch.to_vec())]);
            let Outcome::Transfers(results) = &outcomes[0] else { panic!("transfer results") };
            assert!(results.iter().all(|r| r.is_ok()));
        }
    };
    let first_block_end = 2 * BLOCK_TRANSFERS as u128;
    // Keeping the whole journal: the last step replays it all.
    let mut ledger = open_keeping(&dir.0);
    run(&mut ledger, &[CommandBuf::CreateAccounts(accounts)]);
    create(&mut ledger, 1..first_block_end + 1001);
    let first = ledger.snapshot(0).unwrap();
    assert_eq!(ledger.engine().transfers().blocks().len(), 2);
    assert_eq!(ledger.engine().transfers().blocks_in_memory(), 0, "both full blocks left memory");

    // Old history answers from the segment.
    let post = Transfer {
        id: 10_000_000,
        pending_id: 1000,
        flags: TransferFlags::POST_PENDING,
        ..Transfer::default()
    };
    let outcomes = run(&mut ledger, &[CommandBuf::CreateTransfers(vec![transfer(1), transfer(2000), post])]);
    let Outcome::Transfers(results) = &outcomes[0] else { panic!("transfer results") };
    assert_eq!(
        results,
        &[CreateTransferResult::Exists, CreateTransferResult::Exists, CreateTransferResult::Ok]
    );
    let mut found = Vec::new();
    ledger.engine().lookup_transfers(&[3, 65_537, 1000], &mut found).unwrap();
    assert_eq!(
        found.iter().map(|t| (t.id, t.amount)).collect::<Vec<_>>(),
        [(3, 3), (65_537, 65_537), (1000, 1000)]
    );
    let filter = AccountFilter {
        account_id: 2,
        limit: 8190,
        flags: AccountFilterFlags(AccountFilterFlags::DEBITS.0 | AccountFilterFlags::CREDITS.0),
        ..AccountFilter::default()
    };
    let mut history = Vec::new();
    ledger.engine().get_account_transfers(&filter, &mut history).unwrap();
    assert_eq!(history.len(), 8190);
    assert!(history.iter().zip([1u128, 4, 7]).all(|(t, id)| t.id == id), "oldest first, from the cold block");

    // A second snapshot writes only the new blocks, and keeps the newest one in memory.
    create(&mut ledger, first_block_end + 1001..2 * first_block_end);
    let second = ledger.snapshot(1).unwrap();
    assert_eq!(ledger.engine().transfers().blocks().len(), 4);
    assert_eq!(ledger.engine().transfers().blocks_in_memory(), 1);
    let segments: Vec<PathBuf> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    assert_eq!(segments.len(), 2, "{segments:?}");
    let expected = ledger.engine().export();
    let journal_entries = ledger.next_sequence() - 1;
    drop(ledger);

    // Restart: the snapshot and its segments give the same state; history loads cold.
    let ledger = open(&dir.0).unwrap();
    assert_eq!(ledger.recovery().snapshot.as_ref(), Some(&second));
    assert_eq!(ledger.recovery().scan.entries, 0);
    assert_eq!(ledger.engine().export(), expected);
    assert_eq!(ledger.engine().transfers().blocks_in_memory(), 0);
    ledger.engine().check_invariants().unwrap();
    drop(ledger);

    // A flipped byte in the second segment: its snapshot is skipped, the first one and the journal take over.
    let second_segment = dir.0.join(format!("transfers-{:010}.seg", 2));
    let mut bytes = std::fs::read(&second_segment).unwrap();
    bytes[4096 + 128 * 70_000 + 17] ^= 0x08;
    std::fs::write(&second_segment, &bytes).unwrap();
    let ledger = open(&dir.0).unwrap();
    let report = ledger.recovery();
    assert_eq!(report.snapshot.as_ref(), Some(&first));
    assert!(
        report.snapshots_skipped[0].1.contains("block 1 fails its checksum"),
        "{:?}",
        report.snapshots_skipped
    );
    assert_eq!(ledger.engine().export(), expected);
    drop(ledger);

    // The first segment truncated too: no snapshot loads; the whole journal replays, exactly.
    let first_segment = dir.0.join(format!("transfers-{:010}.seg", 0));
    let len = std::fs::metadata(&first_segment).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&first_segment).unwrap().set_len(len - 1).unwrap();
    let ledger = open(&dir.0).unwrap();
    assert_eq!(ledger.recovery().snapshot, None);
    assert_eq!(ledger.recovery().scan.entries, journal_entries);
    assert_eq!(ledger.engine().export(), expected);
}
