//! Journal rotation: the journal as numbered files, read across in order at
//! recovery, and deleted once the snapshots recovery may fall back to cover
//! them (see `molly_shards::journal_files`).

use std::path::{Path, PathBuf};

use molly_engine::{Account, Config, Transfer};
use molly_shards::durable::{replay, DurableError, DurableLedger, GROUP_BYTES_MAX_DEFAULT, JOURNAL_FILE};
use molly_shards::journal::{CommandBuf, JournalError, SECTOR_SIZE};
use molly_shards::journal_files::{self, file_name};
use molly_shards::runtime::{Runtime, RuntimeConfig};
use molly_shards::snapshot::Disk;

/// A fresh directory, removed on drop (`.0` is its path).
struct TempDir(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(&format!("molly-{name}-")).tempdir().unwrap();
        Self(dir.path().to_path_buf(), dir)
    }
}

/// Journal files of 8 KiB: a new file every two or three groups.
const FILE_BYTES: u64 = 2 * SECTOR_SIZE as u64;

fn open(dir: &Path, keep: bool) -> Result<DurableLedger, DurableError> {
    let mut ledger = DurableLedger::open(dir, Config::default(), GROUP_BYTES_MAX_DEFAULT)?;
    ledger.set_journal_file_bytes(FILE_BYTES);
    ledger.set_keep_journal(keep);
    Ok(ledger)
}

/// One command per group: accounts first, then transfers between them
/// (each group a few sectors, so files fill after a few groups).
fn commands(n: usize) -> Vec<CommandBuf> {
    let accounts = (1..=4u128).map(|id| Account { id, ledger: 1, code: 1, ..Account::default() }).collect();
    let mut out = vec![CommandBuf::CreateAccounts(accounts)];
    for g in 0..n as u128 {
        let batch = (0..20u128)
            .map(|i| {
                let id = 1 + g * 20 + i;
                Transfer {
                    id,
                    debit_account_id: 1 + id % 4,
                    credit_account_id: 1 + (id + 1) % 4,
                    amount: id,
                    ledger: 1,
                    code: 1,
                    ..Transfer::default()
                }
            })
            .collect();
        out.push(CommandBuf::CreateTransfers(batch));
    }
    out
}

fn run(ledger: &mut DurableLedger, command: &CommandBuf) {
    ledger.execute(&[command.as_command()]).unwrap();
}

/// The journal files in `dir`, by first sequence.
fn journals(dir: &Path) -> Vec<u64> {
    journal_files::list_in(&Disk, dir).unwrap().into_iter().map(|(first, _)| first).collect()
}

/// The ledger holds exactly `all` (every acknowledged command).
fn assert_holds(ledger: &DurableLedger, all: &[CommandBuf]) {
    assert_eq!(ledger.next_sequence() as usize - 1, all.len(), "{:?}", ledger.recovery());
    let expected = replay(Config::default(), all).unwrap();
    assert_eq!(ledger.engine().accounts(), expected.accounts());
    assert_eq!(ledger.engine().transfers(), expected.transfers());
    ledger.engine().check_invariants().unwrap();
}

/// Writes `all` with a snapshot after every `every` commands; returns the
/// snapshot files' next sequences, oldest first.
fn write_with_snapshots(dir: &Path, all: &[CommandBuf], every: usize, keep: bool) -> Vec<u64> {
    let mut ledger = open(dir, keep).unwrap();
    let mut snapshots = Vec::new();
    for (i, command) in all.iter().enumerate() {
        run(&mut ledger, command);
        if (i + 1) % every == 0 {
            ledger.snapshot(0).unwrap();
            snapshots.push(ledger.next_sequence());
            let files = journals(dir);
            // The snapshot's position is the start of a file (created by the next group).
            assert_eq!(ledger.journal_file(), ledger.next_sequence());
            if let [.., older, _] = snapshots[..] {
                // Deleted: exactly the files wholly before the older kept snapshot.
                assert!(files[0] <= older, "file {} holding sequence {older} is gone: {files:?}", files[0]);
                assert!(files.get(1).is_none_or(|&next| next > older), "a covered file is left: {files:?}");
            } else {
                assert_eq!(files[0], 1, "with one snapshot the whole journal stays: {files:?}");
            }
        }
    }
    snapshots
}

#[test]
fn writes_across_rotations_and_snapshots_recover_whole_and_covered_files_go() {
    let dir = TempDir::new("rotate");
    let all = commands(60);
    let snapshots = write_with_snapshots(&dir.0, &all, 13, false);
    assert!(snapshots.len() >= 4);
    let files = journals(&dir.0);
    assert!(files.len() >= 3, "size rotation made several files: {files:?}");
    assert!(files[0] > 1, "the first files are gone: {files:?}");
    // Each file holds at most the limit plus one group.
    for (_, path) in journal_files::list_in(&Disk, &dir.0).unwrap() {
        assert!(std::fs::metadata(&path).unwrap().len() <= FILE_BYTES + 2 * SECTOR_SIZE as u64);
    }
    let ledger = open(&dir.0, false).unwrap();
    let report = ledger.recovery();
    assert_eq!(
        report.snapshot.as_ref().unwrap(),
        &dir.0.join(format!("snapshot-{:020}.molly", snapshots[3]))
    );
    assert_holds(&ledger, &all);
    drop(ledger);
    // Every acknowledged command is there after a restart, and writing goes on in a new file.
    let mut ledger = open(&dir.0, false).unwrap();
    let more = commands(61);
    run(&mut ledger, &more[61]);
    drop(ledger);
    let ledger = open(&dir.0, false).unwrap();
    assert_holds(&ledger, &more);
}

#[test]
fn a_damaged_newest_snapshot_falls_back_to_the_older_one_and_its_journal_files() {
    let dir = TempDir::new("fallback");
    let all = commands(50);
    let snapshots = write_with_snapshots(&dir.0, &all, 12, false);
    let kept = molly_shards::snapshot::list(&dir.0);
    assert_eq!(kept.len(), 2);
    let newest = kept[1].clone();
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes[70] ^= 0x20;
    std::fs::write(&newest, &bytes).unwrap();
    let ledger = open(&dir.0, false).unwrap();
    let report = ledger.recovery();
    assert_eq!(report.snapshot.as_ref(), Some(&kept[0]));
    assert_eq!(report.snapshots_skipped.len(), 1);
    assert!(report.journal_files >= 2, "replayed across files: {report:?}");
    assert_eq!(
        report.scan.entries as usize,
        all.len() + 1 - snapshots[snapshots.len() - 2] as usize,
        "from the older snapshot on"
    );
    assert_holds(&ledger, &all);
}

#[test]
fn both_snapshots_damaged_with_the_journal_before_them_deleted_is_refused_naming_the_file() {
    let dir = TempDir::new("refuse");
    let all = commands(50);
    let snapshots = write_with_snapshots(&dir.0, &all, 12, false);
    let files_before = journals(&dir.0);
    for snapshot in molly_shards::snapshot::list(&dir.0) {
        let mut bytes = std::fs::read(&snapshot).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&snapshot, &bytes).unwrap();
    }
    let err = open(&dir.0, false).unwrap_err();
    let DurableError::JournalMissing { needed, oldest, start } = &err else {
        panic!("expected a refusal naming the missing file, got {err:?}");
    };
    assert_eq!(needed, &dir.0.join(file_name(1)));
    assert_eq!(oldest.as_ref(), Some(&dir.0.join(file_name(files_before[0]))));
    assert!(start.contains("no usable snapshot") && start.contains("fails its checksum"), "{start}");
    let message = err.to_string();
    assert!(message.contains(&file_name(1)) && message.contains("refusing to start"), "{message}");
    // Nothing changed on disk.
    assert_eq!(journals(&dir.0), files_before);
    assert!(snapshots.len() >= 2);
}

/// Writes `all` with every journal file kept; the files (three or more).
fn write_kept(dir: &Path, all: &[CommandBuf]) -> Vec<(u64, PathBuf)> {
    let mut ledger = open(dir, true).unwrap();
    for command in all {
        run(&mut ledger, command);
    }
    drop(ledger);
    let files = journal_files::list_in(&Disk, dir).unwrap();
    assert!(files.len() >= 3, "{files:?}");
    files
}

#[test]
fn a_torn_tail_in_the_last_file_is_cut_and_writing_goes_on() {
    let dir = TempDir::new("torn-last");
    let all = commands(20);
    let files = write_kept(&dir.0, &all);
    let (last_first, last) = files.last().unwrap().clone();
    let len = std::fs::metadata(&last).unwrap().len();
    // Cut inside the last file's last group: that group was never acknowledged.
    let cut = len - SECTOR_SIZE as u64 + 1000;
    std::fs::OpenOptions::new().write(true).open(&last).unwrap().set_len(cut).unwrap();
    let ledger = open(&dir.0, true).unwrap();
    assert!(ledger.recovery().scan.torn_tail);
    assert_eq!(ledger.recovery().journal_files, files.len());
    assert_holds(&ledger, &all[..all.len() - 1]);
    // The cut file ends at its last whole group; the next group starts a new file.
    assert!(std::fs::metadata(&last).unwrap().len() < cut);
    assert_eq!(ledger.journal_file(), ledger.next_sequence());
    assert!(ledger.journal_file() >= last_first);
}

#[test]
fn damage_in_a_file_before_the_last_is_refused_naming_the_file_and_offset() {
    let dir = TempDir::new("middle-file");
    let all = commands(20);
    let files = write_kept(&dir.0, &all);
    let (_, middle) = files[1].clone();
    let original = std::fs::read(&middle).unwrap();
    // Its last group: in the last file this would be a torn tail and cut;
    // here the next file's groups came after it, so it is refused.
    let last_group = original.len() - SECTOR_SIZE;
    for (at, what) in [(last_group + 70, "last group"), (70, "first group")] {
        let mut bytes = original.clone();
        bytes[at] ^= 0x04;
        std::fs::write(&middle, &bytes).unwrap();
        let err = open(&dir.0, true).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(&middle.display().to_string()) && message.contains("refusing to start"),
            "{what}: {message}"
        );
        let offset = match &err {
            DurableError::Journal(JournalError::CorruptBeforeNextFile { offset, next, .. }) => {
                assert_eq!(next, &files[2].1.display().to_string());
                *offset
            }
            DurableError::Journal(JournalError::CorruptInTheMiddle { offset, .. }) => *offset,
            other => panic!("{what}: expected a refusal naming the file, got {other:?}"),
        };
        assert!(offset <= at as u64, "{what}: offset {offset} is after the damage at {at}");
        // The refusal changed nothing on disk.
        assert_eq!(std::fs::read(&middle).unwrap(), bytes);
    }
    // A missing middle file: the next one does not continue the sequence.
    std::fs::remove_file(&middle).unwrap();
    let err = open(&dir.0, true).unwrap_err();
    assert!(
        matches!(&err, DurableError::JournalGap { next_first, .. } if *next_first == files[2].0),
        "{err}"
    );
}

#[test]
fn an_old_single_journal_file_is_renamed_and_recovered() {
    let dir = TempDir::new("legacy");
    let all = commands(3);
    {
        // Sizes large enough that everything stays in one file, as before rotation.
        let mut ledger = DurableLedger::open(&dir.0, Config::default(), GROUP_BYTES_MAX_DEFAULT).unwrap();
        for command in &all {
            run(&mut ledger, command);
        }
    }
    assert_eq!(journals(&dir.0), [1]);
    std::fs::rename(dir.0.join(file_name(1)), dir.0.join(JOURNAL_FILE)).unwrap();
    let ledger = open(&dir.0, false).unwrap();
    assert_holds(&ledger, &all);
    assert_eq!(journals(&dir.0), [1]);
    assert!(!dir.0.join(JOURNAL_FILE).exists());
    drop(ledger);
    // Both names at once: which is the journal is unclear.
    std::fs::write(dir.0.join(JOURNAL_FILE), b"").unwrap();
    let err = open(&dir.0, false).unwrap_err();
    assert!(matches!(err, DurableError::JournalNames { .. }), "{err}");
}

/// The glommio runtime (O_DIRECT groups): many rotations by size and by
/// snapshot, a restart with every write there, and old files deleted.
#[test]
fn the_runtime_rotates_its_journal_and_deletes_covered_files() {
    // A relative data directory, as `molly serve`'s default `./data` is
    // (the test's working directory is the crate's).
    let temp = tempfile::Builder::new().prefix("molly-runtime-rotate-").tempdir_in(".").unwrap();
    let relative = PathBuf::from(temp.path().file_name().unwrap());
    assert!(relative.is_relative());
    let dir = TempDir(relative, temp);
    let config = || RuntimeConfig {
        shards: 1,
        snapshot_every_bytes: 64 << 10,
        journal_file_bytes: 16 << 10,
        ..RuntimeConfig::new(dir.0.clone())
    };
    let shard_dir = dir.0.join("shard-0");
    let all = commands(400);
    let metrics = {
        let runtime = Runtime::start(config()).unwrap();
        for command in &all {
            runtime.write(0, vec![command.clone()]).unwrap();
        }
        assert!(runtime.metrics()[0].journal_files.get() > 0);
        runtime.metrics()[0].clone()
    };
    // (The clean stop's snapshot deletes on the shard's thread: counted by now.)
    assert!(metrics.snapshots.get() >= 2);
    assert!(metrics.journal_files_deleted.get() > 0);
    let files = journals(&shard_dir);
    assert!(files[0] > 1, "the first files are gone: {files:?}");
    let total: u64 = journal_files::usage(&Disk, &shard_dir).1;
    assert!(total < 512 << 10, "journal bytes on disk {total}");
    let runtime = Runtime::start(config()).unwrap();
    let stats = runtime.stats(0).unwrap();
    assert_eq!(stats.transfers, 400 * 20);
    assert_eq!(stats.invariants, Ok(()));
    drop(runtime);
    // Every acknowledged transfer, from the snapshot and the files after it.
    assert_recovers_what_the_runtime_wrote(&shard_dir, false, &all);
}

/// Opens `dir` as a ledger and compares it with `all` replayed (the runtime
/// stamps times from its clock: balances and counts compare).
fn assert_recovers_what_the_runtime_wrote(dir: &Path, keep: bool, all: &[CommandBuf]) {
    let ledger = open(dir, keep).unwrap();
    let expected = replay(Config::default(), all).unwrap();
    let balances = |accounts: &[Account]| {
        accounts.iter().map(|a| (a.id, a.debits_posted, a.credits_posted)).collect::<Vec<_>>()
    };
    assert_eq!(balances(ledger.engine().accounts()), balances(expected.accounts()));
    assert_eq!(ledger.engine().transfers().len(), expected.transfers().len());
}

/// Preallocated journal files (`molly_shards::prealloc`): the runtime
/// renames spares full of zeros into place and overwrites them group by
/// group; recovery reads each file up to its zeros, across every file, and
/// finds every acknowledged write.
#[test]
fn groups_in_preallocated_journal_files_recover_whole() {
    let dir = TempDir::new("prealloc");
    let config = || RuntimeConfig {
        shards: 1,
        // Rotations at snapshots leave zeros after a file's last group.
        snapshot_every_bytes: 24 << 10,
        journal_file_bytes: 64 << 10,
        journal_prealloc_bytes_per_s: 1 << 30,
        keep_journal: true,
        ..RuntimeConfig::new(dir.0.clone())
    };
    let shard_dir = dir.0.join("shard-0");
    let all = commands(200);
    let preallocated = {
        let runtime = Runtime::start(config()).unwrap();
        for (i, command) in all.iter().enumerate() {
            runtime.write(0, vec![command.clone()]).unwrap();
            if i % 4 == 0 {
                // Time for the next spare.
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        let metrics = &runtime.metrics()[0];
        assert_eq!(metrics.journal_spare_errors.get(), 0);
        metrics.journal_files_preallocated.get()
    };
    let files = journals(&shard_dir);
    assert!(preallocated >= 5, "{preallocated} of {} files were spares", files.len());
    // Files before the last end in zeros past their last group.
    let zero_tailed = files[..files.len() - 1]
        .iter()
        .filter(|&&first| {
            let bytes = std::fs::read(shard_dir.join(file_name(first))).unwrap();
            bytes.len() >= 64 << 10 && bytes[bytes.len() - SECTOR_SIZE..].iter().all(|&b| b == 0)
        })
        .count();
    assert!(zero_tailed > 0, "some files keep the spare's zeros after their groups");
    // Without the snapshots, recovery replays every file from the first.
    for entry in std::fs::read_dir(&shard_dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        if name.starts_with("snapshot-") || name.ends_with(".seg") {
            std::fs::remove_file(&path).unwrap();
        }
    }
    assert_recovers_what_the_runtime_wrote(&shard_dir, true, &all);
    // And the runtime starts on them and goes on writing.
    let runtime = Runtime::start(config()).unwrap();
    let stats = runtime.stats(0).unwrap();
    assert_eq!(stats.transfers, 200 * 20);
    assert_eq!(stats.invariants, Ok(()));
}

/// A journal file the runtime created itself (no spare was ready) grows with
/// every group, and each commit then carries file system metadata too: the
/// runtime leaves it for a spare as soon as one is ready, long before the
/// file is full, and recovery reads both.
#[test]
fn a_growing_journal_file_is_left_for_a_spare_once_one_is_ready() {
    let dir = TempDir::new("leave-growing");
    let config = || RuntimeConfig {
        shards: 1,
        // No snapshots (they rotate too), and files that never fill here.
        snapshot_every_bytes: 0,
        journal_file_bytes: 4 << 20,
        journal_prealloc_bytes_per_s: 1 << 30,
        ..RuntimeConfig::new(dir.0.clone())
    };
    let shard_dir = dir.0.join("shard-0");
    let all = commands(100);
    let preallocated = {
        let runtime = Runtime::start(config()).unwrap();
        for (i, command) in all.iter().enumerate() {
            runtime.write(0, vec![command.clone()]).unwrap();
            if i == 10 {
                // The first group went to a file the runtime created; give
                // the first spare time to be written.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
                while !shard_dir.join(molly_shards::prealloc::SPARE_NAME).exists()
                    || std::fs::metadata(shard_dir.join(molly_shards::prealloc::SPARE_NAME)).unwrap().len()
                        < 4 << 20
                {
                    assert!(std::time::Instant::now() < deadline, "the spare is written");
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        runtime.metrics()[0].journal_files_preallocated.get()
    };
    let files = journals(&shard_dir);
    assert!(preallocated >= 1, "no spare was taken: {files:?}");
    assert!(files.len() >= 2, "the growing file was not left: {files:?}");
    let sizes: Vec<u64> =
        files.iter().map(|&f| std::fs::metadata(shard_dir.join(file_name(f))).unwrap().len()).collect();
    assert!(sizes[0] < 1 << 20, "the first file was left early, not filled: {sizes:?}");
    assert_eq!(sizes[1], 4 << 20, "the next file is a spare, written over: {sizes:?}");
    assert_recovers_what_the_runtime_wrote(&shard_dir, false, &all);
}
