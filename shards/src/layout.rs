//! The shard count a data directory is laid out for, and the count a new
//! one gets.
//!
//! An account lives on the shard [`shard_for`](crate::runtime::shard_for)
//! names for the shard count, so a data directory holds its accounts
//! correctly for one count only: started with another, lookups would go to
//! shards that never saw the account and creates would make a second copy.
//! The runtime records the count in `DATA_DIR/shards` at the first start
//! and refuses any other count after ([`check`]); a directory from before
//! the record is read by its `shard-N` directories. Resharding (moving
//! accounts between shards) is not built.
//!
//! A new directory's count, when none is configured, is [`default_shards`]:
//! one shard per CPU but one. Shard threads are pinned, one per CPU; the
//! work that is not (snapshot and journal-spare writers, io_uring workers,
//! metrics, the rebalancer, the operating system, and on a small machine
//! the clients) needs a CPU too, or it preempts a shard in the middle of a
//! batch (docs/benchmarks.md: on 2 CPUs one shard beats two).
//!
//! Must not: choose a count for a directory that has one.

use std::io::Write;
use std::path::Path;

/// The file in the data directory holding its shard count (decimal, one line).
pub const FILE_NAME: &str = "shards";

/// The shard count for a new data directory when none is configured: the
/// CPUs available but one, at least one.
pub fn default_shards() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpus.saturating_sub(1).max(1)
}

/// The shard count `data_dir` is laid out for: its record, else (a directory
/// from before the record) the number of its `shard-N` directories, which
/// must be `shard-0` to `shard-(N-1)`; `None` for a new directory.
pub fn recorded(data_dir: &Path) -> Result<Option<usize>, String> {
    match read_record(data_dir)? {
        Some(shards) => Ok(Some(shards)),
        None => count_shard_dirs(data_dir),
    }
}

/// Checks that `data_dir` is laid out for `shards`, recording the count if
/// it has no record yet (durably: written, synced, renamed into place, the
/// directory synced). An error names both counts.
pub fn check(data_dir: &Path, shards: usize) -> Result<(), String> {
    assert!(shards > 0);
    let record = read_record(data_dir)?;
    let laid_out = match record {
        Some(laid_out) => Some(laid_out),
        None => count_shard_dirs(data_dir)?,
    };
    if let Some(laid_out) = laid_out.filter(|&laid_out| laid_out != shards) {
        return Err(format!(
            "{} holds {laid_out} shard(s); starting it with {shards} would look for accounts on \
             the wrong shards (resharding is not built): start it with {laid_out}, or use a new data directory",
            data_dir.display()
        ));
    }
    if record.is_none() {
        write_record(data_dir, shards)
            .map_err(|e| format!("recording the shard count in {}: {e}", data_dir.display()))?;
    }
    Ok(())
}

/// The count in `DATA_DIR/shards`, if the file exists.
fn read_record(data_dir: &Path) -> Result<Option<usize>, String> {
    let file = data_dir.join(FILE_NAME);
    match std::fs::read_to_string(&file) {
        Ok(text) => match text.trim().parse::<usize>() {
            Ok(shards) if shards > 0 => Ok(Some(shards)),
            _ => Err(format!("{}: {:?} is not a shard count", file.display(), text.trim())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("reading {}: {e}", file.display())),
    }
}

/// The number of `shard-N` directories in `data_dir` (a directory from
/// before the record), which must be `shard-0` to `shard-(N-1)`; `None` if
/// there are none.
fn count_shard_dirs(data_dir: &Path) -> Result<Option<usize>, String> {
    let entries = match std::fs::read_dir(data_dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("listing {}: {e}", data_dir.display())),
    };
    let mut shards = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| format!("listing {}: {e}", data_dir.display()))?;
        let name = entry.file_name();
        let Some(n) =
            name.to_str().and_then(|n| n.strip_prefix("shard-")).and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if entry.path().is_dir() {
            shards.push(n);
        }
    }
    shards.sort_unstable();
    if shards.is_empty() {
        return Ok(None);
    }
    if shards.iter().enumerate().any(|(i, &n)| i != n) {
        return Err(format!(
            "{} has shard directories {shards:?}, not shard-0 to shard-{}: its shard count is unknown",
            data_dir.display(),
            shards.len() - 1
        ));
    }
    Ok(Some(shards.len()))
}

fn write_record(data_dir: &Path, shards: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(data_dir)?;
    let temporary = data_dir.join(format!("{FILE_NAME}.tmp"));
    let mut file = std::fs::File::create(&temporary)?;
    writeln!(file, "{shards}")?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&temporary, data_dir.join(FILE_NAME))?;
    std::fs::File::open(data_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory path inside a fresh temporary directory (not created).
    fn temp_dir() -> (tempfile::TempDir, std::path::PathBuf) {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("data");
        (parent, dir)
    }

    #[test]
    fn a_new_directory_takes_the_count_it_is_first_started_with_and_refuses_another() {
        let (_dir, dir) = temp_dir();
        assert_eq!(recorded(&dir).unwrap(), None, "a directory that does not exist yet is new");
        check(&dir, 2).unwrap();
        assert_eq!(recorded(&dir).unwrap(), Some(2));
        check(&dir, 2).unwrap();
        let refused = check(&dir, 1).unwrap_err();
        assert!(refused.contains("holds 2 shard(s)") && refused.contains("with 1"), "{refused}");
        assert_eq!(recorded(&dir).unwrap(), Some(2), "a refused start changes nothing");
    }

    #[test]
    fn a_directory_from_before_the_record_is_read_by_its_shard_directories() {
        let (_dir, dir) = temp_dir();
        for shard in 0..3 {
            std::fs::create_dir_all(dir.join(format!("shard-{shard}"))).unwrap();
        }
        std::fs::write(dir.join("shard-9"), b"a file, not a shard").unwrap();
        assert_eq!(recorded(&dir).unwrap(), Some(3));
        assert!(check(&dir, 2).unwrap_err().contains("holds 3 shard(s)"));
        assert!(!dir.join(FILE_NAME).exists(), "nothing recorded on a refusal");
        check(&dir, 3).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join(FILE_NAME)).unwrap(), "3\n", "recorded once accepted");

        let (_holes, holes) = temp_dir();
        for shard in [0, 2] {
            std::fs::create_dir_all(holes.join(format!("shard-{shard}"))).unwrap();
        }
        assert!(recorded(&holes).unwrap_err().contains("[0, 2]"));
    }

    #[test]
    fn a_damaged_record_is_an_error_not_a_guess() {
        let (_dir, dir) = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        for text in ["", "0\n", "two\n"] {
            std::fs::write(dir.join(FILE_NAME), text).unwrap();
            assert!(check(&dir, 1).unwrap_err().contains("is not a shard count"), "{text:?}");
        }
    }
}
