//! Journal rotation: a shard's journal as numbered files, read across in
//! order at recovery, and deleted once no snapshot recovery may fall back
//! to needs them.
//!
//! ```text
//!  shard-N/journal-<first sequence, 20 digits>.molly     e.g. journal-00000000000000000001.molly
//!          journal-00000000000000052407.molly                  journal-00000000000000104811.molly
//!  each file: groups as in `journal` (offsets start at 0 in every file); the
//!  sequence continues from one file to the next (no gap, no overlap)
//! ```
//!
//! - **Rotation** ([`crate::durable::JournalWriter`], I/O-free, so every
//!   driver rotates at the same points): a new file starts when a snapshot
//!   is taken (its position becomes `{next_sequence, offset 0}` of the file
//!   named after that sequence) and when the file being written holds
//!   `journal_file_bytes` or more before a group (the group goes to a new
//!   file). A new file is created by the driver when the first group goes
//!   into it: created (truncated: nothing in it was acknowledged), the
//!   directory fsynced, then the group written and fdatasynced — so both
//!   the file and its directory entry are durable before the group is
//!   acknowledged ([`JournalFiles`], and the runtime's DMA path).
//! - **Snapshot positions**: `{s, 0}` is the start of `journal-s` (which
//!   may not exist yet: nothing was written after the snapshot); `{s, o}`
//!   with `o > 0` is offset `o` of the newest file whose first sequence is
//!   below `s` (a snapshot taken before rotation existed, in the old
//!   single `journal.molly`).
//! - **Recovery** ([`recover`]): the files from the one holding the start
//!   position on are read in order. Each file must start with the sequence
//!   the previous one ended at (else: refused, naming both files); a file
//!   before the last must end cleanly (a bad entry or non-zero bytes after
//!   its last entry: refused, naming the file and offset); only the last
//!   file may end in a torn tail, which is cut. A file recovery needs that
//!   is gone (deleted because the snapshots covered it, and those
//!   snapshots are now damaged) is refused, naming it.
//! - **Deletion** ([`prune`], after a snapshot is durable): only when the
//!   newest [`snapshot::KEEP`] snapshot files in the directory are all known
//!   to be good (written successfully by this process, or loaded at its
//!   start) — the ones recovery would fall back to — the journal files
//!   wholly before the oldest of them are deleted: a file goes when the
//!   next file starts at or before that snapshot's sequence. A snapshot
//!   that failed, or one recovery skipped, is not known good, so nothing is
//!   deleted until two newer ones are written.
//! - **Compatibility**: an old single `journal.molly` is renamed to
//!   `journal-00000000000000000001.molly` at start (it starts at sequence
//!   1 at offset 0; snapshots' offsets into it stay valid).

use std::path::{Path, PathBuf};

use crate::durable::DurableError;
use crate::journal::{self, CommandBuf, JournalError, ReadAt, ScanEnd, StopReason};
use crate::snapshot::{self, Position, Storage};

/// The single journal file of data directories written before rotation.
pub const LEGACY_FILE: &str = "journal.molly";
const PREFIX: &str = "journal-";
const SUFFIX: &str = ".molly";
const DIGITS: usize = 20;

/// Default size at which the journal moves to a new file (besides every
/// snapshot): 256 MiB.
pub const JOURNAL_FILE_BYTES_DEFAULT: u64 = 256 << 20;

/// The name of the journal file whose first entry has `first_sequence`.
pub fn file_name(first_sequence: u64) -> String {
    format!("{PREFIX}{first_sequence:0DIGITS$}{SUFFIX}")
}

/// The first sequence a journal file's name says, if it is one.
pub fn parse_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&first| first > 0)
}

/// The journal files in `dir`, by first sequence.
pub fn list_in<S: Storage>(storage: &S, dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut files: Vec<(u64, PathBuf)> = storage
        .list(dir)?
        .into_iter()
        .filter_map(|path| {
            let first = parse_name(path.file_name()?.to_str()?)?;
            Some((first, path))
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Journal files in `dir` and their bytes (for the metrics).
pub fn usage<S: Storage>(storage: &S, dir: &Path) -> (usize, u64) {
    let files = list_in(storage, dir).unwrap_or_default();
    let bytes = files.iter().filter_map(|(_, path)| storage.open(path).ok()?.byte_len().ok()).sum();
    (files.len(), bytes)
}

/// The file operations the journal needs beyond those of snapshots
/// ([`Storage`]): positioned writes, opening a file to append to, cutting a
/// torn tail. On the real file system ([`snapshot::Disk`]) and the
/// simulator's (`sim::files`), like snapshots.
pub trait JournalStorage: Storage {
    /// A journal file open for positioned writes (on the real file system a
    /// `File`; kept apart from snapshots' sequential [`Storage::Writer`] so
    /// either can change how it writes).
    type JournalFile;
    /// Creates (or truncates) `path` for positioned writes.
    fn create_journal(&self, path: &Path) -> std::io::Result<Self::JournalFile>;
    /// Opens an existing file for writing (no truncation).
    fn open_write(&self, path: &Path) -> std::io::Result<Self::JournalFile>;
    /// Writes `bytes` at `offset`.
    fn write_at(&self, file: &mut Self::JournalFile, offset: u64, bytes: &[u8]) -> std::io::Result<()>;
    /// Makes what was written durable.
    fn sync_journal(&self, file: &mut Self::JournalFile) -> std::io::Result<()>;
    /// Cuts `path` to `len` bytes, durably.
    fn truncate(&self, path: &Path, len: u64) -> std::io::Result<()>;
}

impl JournalStorage for snapshot::Disk {
    type JournalFile = std::fs::File;

    fn create_journal(&self, path: &Path) -> std::io::Result<std::fs::File> {
        std::fs::File::create(path)
    }

    fn open_write(&self, path: &Path) -> std::io::Result<std::fs::File> {
        std::fs::OpenOptions::new().read(true).write(true).open(path)
    }

    fn sync_journal(&self, file: &mut std::fs::File) -> std::io::Result<()> {
        file.sync_all()
    }

    fn write_at(&self, file: &mut std::fs::File, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(file, bytes, offset)
    }

    fn truncate(&self, path: &Path, len: u64) -> std::io::Result<()> {
        let file = std::fs::OpenOptions::new().write(true).open(path)?;
        file.set_len(len)?;
        file.sync_all()
    }
}

/// Where recovery found the journal's end.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalEnd {
    /// The last file's scan (`valid_end` is an offset in that file;
    /// `entries` counts the entries of every file read).
    pub scan: ScanEnd,
    /// The first sequence of the file appends continue in.
    pub file_first: u64,
    /// Bytes cut from the last file's torn tail.
    pub truncated_bytes: u64,
    /// Journal files read.
    pub files_read: usize,
}

use crate::durable::io_error;

impl JournalEnd {
    /// The writer that continues the journal: in a new file at the next
    /// sequence (nothing is appended after a cut tail, and a snapshot file
    /// at `{s, 0}` always names the file its sequence `s` went to, even one
    /// recovery skipped).
    pub fn writer(&self, group_bytes_max: usize, batch_events_max: usize) -> crate::durable::JournalWriter {
        let mut writer = crate::durable::JournalWriter::new(
            self.scan.valid_end,
            self.scan.next_sequence,
            group_bytes_max,
            batch_events_max,
        )
        .in_file(self.file_first);
        writer.rotate();
        writer
    }
}

/// Renames an old single `journal.molly` to the first numbered file.
fn migrate<S: JournalStorage>(
    storage: &S,
    dir: &Path,
    files: &[(u64, PathBuf)],
) -> Result<bool, DurableError> {
    let legacy = dir.join(LEGACY_FILE);
    let names = storage.list(dir).map_err(io_error(dir, "listing the data directory"))?;
    if !names.contains(&legacy) {
        return Ok(false);
    }
    if let Some((_, numbered)) = files.first() {
        return Err(DurableError::JournalNames { legacy, numbered: numbered.clone() });
    }
    let first = dir.join(file_name(1));
    storage
        .rename(&legacy, &first)
        .map_err(io_error(&legacy, "renaming the journal to its numbered name"))?;
    storage.sync_dir(dir).map_err(io_error(dir, "syncing the data directory"))?;
    Ok(true)
}

/// Replays the journal files in `dir` from `start` (a snapshot's position,
/// or `{1, 0}`), calling `apply` for each entry in order, and cuts a torn
/// tail off the last file (see the module's rules). `start_what` names
/// where `start` comes from, for the error when a file it needs is gone.
pub fn recover<S: JournalStorage>(
    storage: &S,
    dir: &Path,
    start: Position,
    start_what: &str,
    body_len_max: u32,
    mut apply: impl FnMut(u64, CommandBuf),
) -> Result<JournalEnd, DurableError> {
    let mut files = list_in(storage, dir).map_err(io_error(dir, "listing the data directory"))?;
    if migrate(storage, dir, &files)? {
        files = list_in(storage, dir).map_err(io_error(dir, "listing the data directory"))?;
    }
    let missing = |needed: String| DurableError::JournalMissing {
        needed: dir.join(needed),
        oldest: files.first().map(|(_, p)| p.clone()),
        start: start_what.to_string(),
    };
    // The file holding the start position.
    let first_index = if start.journal_offset == 0 {
        match files.iter().position(|(first, _)| *first >= start.next_sequence) {
            Some(i) if files[i].0 == start.next_sequence => Some(i),
            Some(_) => return Err(missing(file_name(start.next_sequence))),
            // Nothing was written after the start: appends begin its file.
            None => None,
        }
    } else {
        match files.iter().rposition(|(first, _)| *first < start.next_sequence) {
            Some(i) => Some(i),
            None => {
                return Err(missing(format!("the file holding sequence {}", start.next_sequence)));
            }
        }
    };
    let Some(first_index) = first_index else {
        return Ok(JournalEnd {
            scan: ScanEnd {
                valid_end: 0,
                next_sequence: start.next_sequence,
                entries: 0,
                reason: StopReason::EndOfFile,
                torn_tail: false,
            },
            file_first: start.next_sequence,
            truncated_bytes: 0,
            files_read: 0,
        });
    };
    let needed = &files[first_index..];
    let mut sequence = start.next_sequence;
    let mut offset = start.journal_offset;
    let mut entries = 0u64;
    for (i, (first, path)) in needed.iter().enumerate() {
        let last = i + 1 == needed.len();
        if i > 0 && *first != sequence {
            return Err(DurableError::JournalGap {
                previous: needed[i - 1].1.clone(),
                ends_before: sequence,
                next: path.clone(),
                next_first: *first,
            });
        }
        let file = storage.open(path).map_err(io_error(path, "opening the journal"))?;
        let len = file.byte_len().map_err(io_error(path, "reading the journal's length"))?;
        // A snapshot stands at a sector boundary; the file may end short of
        // it only by the zero padding an earlier recovery cut.
        if offset > len.next_multiple_of(journal::SECTOR_SIZE as u64) {
            return Err(DurableError::SnapshotBeyondJournal {
                snapshot: PathBuf::from(start_what),
                offset,
                journal: path.clone(),
                len,
            });
        }
        let name = path.display().to_string();
        let scan = if offset >= len {
            ScanEnd {
                valid_end: offset,
                next_sequence: sequence,
                entries: 0,
                reason: StopReason::EndOfFile,
                torn_tail: false,
            }
        } else {
            journal::scan(&name, &file, offset, sequence, body_len_max, &mut apply)?
        };
        drop(file);
        entries += scan.entries;
        sequence = scan.next_sequence;
        if last {
            let truncated_bytes = len.saturating_sub(scan.valid_end);
            if truncated_bytes > 0 {
                storage.truncate(path, scan.valid_end).map_err(io_error(path, "cutting the torn tail"))?;
            }
            return Ok(JournalEnd {
                scan: ScanEnd { entries, ..scan },
                file_first: *first,
                truncated_bytes,
                files_read: needed.len(),
            });
        }
        // A file before the last ends where its last group ends: anything
        // else lost or damaged entries the next file's acknowledgements
        // came after.
        let clean = matches!(scan.reason, StopReason::EndOfFile | StopReason::Unwritten) && !scan.torn_tail;
        if !clean {
            let reason = if scan.torn_tail && scan.reason == StopReason::EndOfFile {
                "non-zero bytes after the last entry".to_string()
            } else {
                scan.reason.to_string()
            };
            return Err(JournalError::CorruptBeforeNextFile {
                name,
                offset: scan.valid_end,
                reason,
                next: needed[i + 1].1.display().to_string(),
            }
            .into());
        }
        offset = 0;
    }
    unreachable!("the last file returns")
}

/// After a snapshot is durable: deletes the journal files no snapshot
/// recovery may fall back to needs, when the newest [`snapshot::KEEP`]
/// snapshot files are all in `good` (their next sequences: snapshots
/// written successfully or loaded at start). Returns the files deleted.
pub fn prune<S: Storage>(storage: &S, dir: &Path, good: &[u64]) -> std::io::Result<Vec<PathBuf>> {
    let kept: Vec<u64> = snapshot::list_in(storage, dir)
        .iter()
        .rev()
        .take(snapshot::KEEP)
        .filter_map(|path| snapshot_sequence(path))
        .collect();
    if kept.len() < snapshot::KEEP || !kept.iter().all(|s| good.contains(s)) {
        return Ok(Vec::new());
    }
    let oldest = *kept.iter().min().expect("KEEP > 0");
    let files = list_in(storage, dir)?;
    let deletable = deletable(&files, oldest);
    for path in &deletable {
        storage.remove(path)?;
    }
    if !deletable.is_empty() {
        storage.sync_dir(dir)?;
    }
    Ok(deletable)
}

/// The files (sorted by first sequence) wholly before sequence `oldest`:
/// those whose next file starts at or before it.
pub fn deletable(files: &[(u64, PathBuf)], oldest: u64) -> Vec<PathBuf> {
    files.windows(2).take_while(|pair| pair[1].0 <= oldest).map(|pair| pair[0].1.clone()).collect()
}

/// The next sequence a snapshot file's name says.
fn snapshot_sequence(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    name.strip_prefix("snapshot-")?.strip_suffix(".molly")?.parse().ok()
}

/// Writes a snapshot ([`snapshot::write_to`]), then deletes the journal
/// files it and the other kept snapshot make unneeded ([`prune`]; `good`:
/// the snapshots known good before this one). A failed deletion is
/// reported, not an error: the snapshot is written.
pub fn write_snapshot<S: Storage>(
    storage: &S,
    job: snapshot::SnapshotJob,
    good: &[u64],
    delete: bool,
) -> Result<(snapshot::SnapshotDone, Result<Vec<PathBuf>, std::io::Error>), snapshot::SnapshotError> {
    let dir = job.dir.clone();
    let sequence = job.position.next_sequence;
    let done = snapshot::write_to(storage, job)?;
    let pruned = if delete {
        let mut good = good.to_vec();
        good.push(sequence);
        prune(storage, &dir, &good)
    } else {
        Ok(Vec::new())
    };
    Ok((done, pruned))
}

/// The journal file being appended to, for a synchronous driver
/// ([`crate::durable::DurableLedger`], the simulator): opens the file a
/// rotated writer moved to before the group goes in (created, directory
/// synced), so a group is acknowledged only once its file's name is durable.
#[derive(Debug)]
pub struct JournalFiles<W> {
    dir: PathBuf,
    current: Option<(u64, W)>,
}

impl<W> JournalFiles<W> {
    /// The journal in `dir`, with no file open yet.
    pub fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf(), current: None }
    }

    /// The first sequence of the open file.
    pub fn open_file(&self) -> Option<u64> {
        self.current.as_ref().map(|(first, _)| *first)
    }

    /// Writes a sealed group at `offset` of the file starting at `first`
    /// (the writer's [`crate::durable::JournalWriter::file`]): a new file is
    /// created (or, at `offset > 0`, the existing one opened) first.
    pub fn write<S: JournalStorage<JournalFile = W>>(
        &mut self,
        storage: &S,
        first: u64,
        offset: u64,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        if self.open_file() != Some(first) {
            self.current = None;
            let path = self.dir.join(file_name(first));
            let file = if offset == 0 {
                let file = storage.create_journal(&path)?;
                storage.sync_dir(&self.dir)?;
                file
            } else {
                storage.open_write(&path)?
            };
            self.current = Some((first, file));
        }
        let (_, file) = self.current.as_mut().expect("opened above");
        storage.write_at(file, offset, bytes)
    }

    /// fdatasync of the open file.
    pub fn sync<S: JournalStorage<JournalFile = W>>(&mut self, storage: &S) -> std::io::Result<()> {
        match &mut self.current {
            Some((_, file)) => storage.sync_journal(file),
            None => Ok(()),
        }
    }

    /// The path of the file starting at `first`.
    pub fn path(&self, first: u64) -> PathBuf {
        self.dir.join(file_name(first))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_first_sequence_and_parse_back() {
        assert_eq!(file_name(1), "journal-00000000000000000001.molly");
        assert_eq!(parse_name(&file_name(52_407)), Some(52_407));
        assert_eq!(parse_name(&file_name(u64::MAX)), Some(u64::MAX));
        for bad in [
            "journal.molly",
            "journal-1.molly",
            "journal-00000000000000000000.molly",
            "journal-0000000000000000000x.molly",
            "journal-00000000000000000001.molly.tmp",
            "snapshot-00000000000000000001.molly",
        ] {
            assert_eq!(parse_name(bad), None, "{bad}");
        }
        let mut names: Vec<String> = [9u64, 10, 1, 100_000].iter().map(|&s| file_name(s)).collect();
        names.sort();
        let firsts: Vec<u64> = names.iter().map(|n| parse_name(n).unwrap()).collect();
        assert_eq!(firsts, [1, 9, 10, 100_000], "names sort as their sequences");
    }

    #[test]
    fn a_file_is_deletable_only_when_the_next_one_starts_at_or_before_the_oldest_snapshot() {
        let files: Vec<(u64, PathBuf)> =
            [1u64, 50, 120, 200].iter().map(|&s| (s, PathBuf::from(file_name(s)))).collect();
        let names = |v: Vec<PathBuf>| {
            v.into_iter().map(|p| parse_name(p.to_str().unwrap()).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(names(deletable(&files, 1)), Vec::<u64>::new());
        assert_eq!(names(deletable(&files, 49)), Vec::<u64>::new(), "file 1 holds sequence 49");
        assert_eq!(names(deletable(&files, 50)), [1]);
        assert_eq!(names(deletable(&files, 119)), [1]);
        assert_eq!(names(deletable(&files, 120)), [1, 50]);
        // The newest file is never deleted, whatever the snapshot.
        assert_eq!(names(deletable(&files, 10_000)), [1, 50, 120]);
    }

    #[test]
    fn prune_deletes_only_when_both_kept_snapshots_are_known_good() {
        let dir = tempfile::tempdir().unwrap();
        let touch = |name: String| std::fs::write(dir.path().join(name), b"x").unwrap();
        for first in [1u64, 50, 120, 200] {
            touch(file_name(first));
        }
        let journals =
            || list_in(&snapshot::Disk, dir.path()).unwrap().into_iter().map(|(s, _)| s).collect::<Vec<_>>();
        touch("snapshot-00000000000000000120.molly".into());
        // One snapshot: the full journal is its fallback.
        assert!(prune(&snapshot::Disk, dir.path(), &[120]).unwrap().is_empty());
        touch("snapshot-00000000000000000200.molly".into());
        // The older one is not known good (say, recovery skipped it).
        assert!(prune(&snapshot::Disk, dir.path(), &[200]).unwrap().is_empty());
        assert_eq!(journals(), [1, 50, 120, 200]);
        assert_eq!(prune(&snapshot::Disk, dir.path(), &[120, 200]).unwrap().len(), 2);
        assert_eq!(journals(), [120, 200]);
    }
}
