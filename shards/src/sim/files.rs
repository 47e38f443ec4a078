//! The simulated file system of a shard's directory, for snapshot files
//! and segments ([`crate::snapshot::Storage`]): the same operations the real
//! one offers, with what a power loss does to them.
//!
//! - **File data** is a [`SimDisk`] per file: written bytes stay in the
//!   cache until the file is synced; a power loss loses, keeps or tears
//!   (per 512-byte sector) each unsynced write, with now and then a flipped
//!   bit in what reaches the disk.
//! - **Names** (create, rename, remove) change the directory at once, but
//!   are durable only once the directory is synced; a power loss keeps a
//!   random prefix of the changes since (a journaling file system commits
//!   them in order), so a renamed file may come back under its old name,
//!   and a created one not at all.
//! - **Faults**: reads that fail (at a random offset of a file opened while
//!   they are on), writes, syncs and renames that fail, a power loss after
//!   a chosen number of operations (every later one fails: the process is
//!   gone), and bits flipped at rest in synced data.
//! - **Mappings**: a mapped block is a copy of the file's bytes when it was
//!   mapped (a segment never changes once renamed into place; what the page
//!   cache holds stays right while the process lives).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use molly_engine::{ColdBlock, Transfer};

use super::disk::SimDisk;
use super::Prng;
use crate::journal::ReadAt;
use crate::snapshot::Storage;

/// What a simulated file read error says.
pub const READ_ERROR: &str = "simulated file read error";
/// What a simulated failed write, sync or rename says.
pub const WRITE_ERROR: &str = "simulated file write error";
/// What every operation says once the power is gone.
pub const POWER_LOSS: &str = "simulated power loss";

/// A change of names since the directory was last synced.
#[derive(Clone, Debug)]
enum NameChange {
    Create(PathBuf, u64),
    Rename(PathBuf, PathBuf),
    Remove(PathBuf),
}

impl NameChange {
    fn apply(&self, names: &mut BTreeMap<PathBuf, u64>) {
        match self {
            Self::Create(path, inode) => {
                names.insert(path.clone(), *inode);
            }
            Self::Rename(from, to) => {
                if let Some(inode) = names.remove(from) {
                    names.insert(to.clone(), inode);
                }
            }
            Self::Remove(path) => {
                names.remove(path);
            }
        }
    }

    fn dir(&self) -> Option<&Path> {
        match self {
            Self::Create(path, _) | Self::Remove(path) => path.parent(),
            Self::Rename(_, to) => to.parent(),
        }
    }
}

/// Faults the simulator switches on and off.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Percent of opened files in which one read fails.
    pub read_error_percent: u64,
    /// Percent of writes, syncs and renames that fail.
    pub write_error_percent: u64,
    /// Operations until the power goes; then every operation fails.
    pub power_loss_after: Option<u64>,
}

#[derive(Clone, Debug, Default)]
struct Fs {
    files: BTreeMap<u64, SimDisk>,
    next_inode: u64,
    /// Names as they are now.
    names: BTreeMap<PathBuf, u64>,
    /// Names as a power loss would find them (before the pending changes).
    durable_names: BTreeMap<PathBuf, u64>,
    pending: Vec<NameChange>,
    faults: Faults,
    prng: Prng,
    /// Bits flipped by crashes in unsynced file data, and at rest.
    bits_flipped: u64,
    /// Reads and writes that failed on purpose.
    errors_injected: u64,
}

/// A shard directory's files, simulated (see the module's documentation).
#[derive(Debug)]
pub struct SimFiles(RefCell<Fs>);

/// A file open for writing: its inode and the write position.
#[derive(Debug)]
pub struct SimWriter {
    inode: u64,
    offset: u64,
}

/// A file open for reading: its bytes when opened, and the offset whose
/// read fails, if any.
#[derive(Debug)]
pub struct SimReader {
    bytes: Arc<Vec<u8>>,
    fail_at: Option<u64>,
}

impl ReadAt for SimReader {
    fn byte_len(&self) -> std::io::Result<u64> {
        Ok(self.bytes.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if self.fail_at.is_some_and(|at| (offset..offset + buf.len() as u64).contains(&at)) {
            return Err(std::io::Error::other(READ_ERROR));
        }
        self.bytes[..].read_exact_at(buf, offset)
    }
}

/// A block of a segment, as mapped: a copy of its records.
struct SimBlock(Vec<Transfer>);

impl ColdBlock for SimBlock {
    fn records(&self) -> &[Transfer] {
        &self.0
    }
}

impl SimFiles {
    /// An empty file system whose own faults follow `seed`.
    pub fn new(seed: u64) -> Self {
        Self(RefCell::new(Fs { prng: Prng(seed), ..Fs::default() }))
    }

    /// Switches faults on or off.
    pub fn set_faults(&self, faults: Faults) {
        self.0.borrow_mut().faults = faults;
    }

    /// Bits flipped so far (by crashes in unsynced data, and at rest).
    pub fn bits_flipped(&self) -> u64 {
        let fs = self.0.borrow();
        fs.bits_flipped + fs.files.values().map(|f| f.bits_flipped).sum::<u64>()
    }

    /// Reads and writes failed on purpose so far.
    pub fn errors_injected(&self) -> u64 {
        self.0.borrow().errors_injected
    }

    /// The file names there are now, in order.
    pub fn names(&self) -> Vec<PathBuf> {
        self.0.borrow().names.keys().cloned().collect()
    }

    /// Power loss: names come back as last synced plus a random prefix of
    /// the changes since; each file loses, keeps or tears what was not
    /// synced; files no name holds are gone. The power is back after.
    pub fn crash(&self, prng: &mut Prng) {
        let fs = &mut *self.0.borrow_mut();
        let kept = prng.below(fs.pending.len() as u64 + 1) as usize;
        for change in fs.pending.drain(..).take(kept) {
            change.apply(&mut fs.durable_names);
        }
        fs.names = fs.durable_names.clone();
        let live: std::collections::BTreeSet<u64> = fs.names.values().copied().collect();
        fs.files.retain(|inode, _| live.contains(inode));
        for file in fs.files.values_mut() {
            file.crash(prng);
        }
        fs.faults = Faults::default();
    }

    /// A copy of this file system as it is now (to recover from apart).
    pub fn copy(&self) -> SimFiles {
        SimFiles(RefCell::new(self.0.borrow().clone()))
    }

    /// The synced length of `path`, if it exists.
    pub fn durable_len(&self, path: &Path) -> Option<u64> {
        let fs = self.0.borrow();
        let inode = fs.names.get(path)?;
        Some(fs.files[inode].durable.len() as u64)
    }

    /// Loses what was written to `path` since its last sync (as if never written).
    pub fn drop_unsynced(&self, path: &Path) {
        let fs = &mut *self.0.borrow_mut();
        let inode = fs.names[path];
        fs.files.get_mut(&inode).expect("named").unsynced.clear();
    }

    /// Removes every snapshot file in `dir`, durably.
    pub fn remove_snapshots(&self, dir: &Path) {
        for path in crate::snapshot::list_in(self, dir) {
            self.remove(&path).expect("listed");
        }
        self.sync_dir(dir).expect("no faults");
    }

    /// Flips bit `bit` of byte `at` of `path`'s synced data (at rest).
    pub fn flip(&self, path: &Path, at: u64, bit: u8) {
        let fs = &mut *self.0.borrow_mut();
        let inode = fs.names[path];
        fs.files.get_mut(&inode).expect("named").durable[at as usize] ^= 1 << bit;
        fs.bits_flipped += 1;
    }

    /// A bit flips at rest in the synced data of a file whose name starts
    /// with `prefix`; returns the file and the byte offset, if there was one.
    pub fn flip_at_rest(&self, prng: &mut Prng, prefix: &str) -> Option<(PathBuf, u64)> {
        let fs = &mut *self.0.borrow_mut();
        let candidates: Vec<(PathBuf, u64)> = fs
            .durable_names
            .iter()
            .filter(|(path, inode)| {
                path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix))
                    && fs.files.get(inode).is_some_and(|f| !f.durable.is_empty())
            })
            .map(|(path, inode)| (path.clone(), *inode))
            .collect();
        if candidates.is_empty() {
            return None;
        }
        let (path, inode) = candidates[prng.below(candidates.len() as u64) as usize].clone();
        let file = fs.files.get_mut(&inode).expect("named");
        let bit = prng.below(file.durable.len() as u64 * 8);
        file.durable[(bit / 8) as usize] ^= 1 << (bit % 8);
        fs.bits_flipped += 1;
        Some((path, bit / 8))
    }
}

impl Fs {
    /// Counts an operation against a coming power loss; fails once it came.
    fn operation(&mut self) -> std::io::Result<()> {
        match &mut self.faults.power_loss_after {
            Some(0) => Err(std::io::Error::other(POWER_LOSS)),
            Some(left) => {
                *left -= 1;
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// An operation that changes something: it may fail on purpose.
    fn change(&mut self) -> std::io::Result<()> {
        self.operation()?;
        let percent = self.faults.write_error_percent;
        if percent > 0 && self.prng.chance(percent) {
            self.errors_injected += 1;
            return Err(std::io::Error::other(WRITE_ERROR));
        }
        Ok(())
    }
}

fn not_found(path: &Path) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, format!("{}: no such file", path.display()))
}

impl Storage for SimFiles {
    type Writer = SimWriter;
    type Reader = SimReader;

    fn create(&self, path: &Path) -> std::io::Result<SimWriter> {
        let fs = &mut *self.0.borrow_mut();
        fs.change()?;
        let inode = fs.next_inode;
        fs.next_inode += 1;
        fs.files.insert(inode, SimDisk::default());
        fs.names.insert(path.to_path_buf(), inode);
        fs.pending.push(NameChange::Create(path.to_path_buf(), inode));
        Ok(SimWriter { inode, offset: 0 })
    }

    fn write_all(&self, file: &mut SimWriter, bytes: &[u8]) -> std::io::Result<()> {
        let fs = &mut *self.0.borrow_mut();
        fs.change()?;
        if let Some(data) = fs.files.get_mut(&file.inode) {
            data.write(file.offset, bytes);
        }
        file.offset += bytes.len() as u64;
        Ok(())
    }

    fn sync(&self, file: &mut SimWriter) -> std::io::Result<()> {
        let fs = &mut *self.0.borrow_mut();
        fs.change()?;
        if let Some(data) = fs.files.get_mut(&file.inode) {
            data.sync();
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        let fs = &mut *self.0.borrow_mut();
        fs.change()?;
        let inode = fs.names.remove(from).ok_or_else(|| not_found(from))?;
        fs.names.insert(to.to_path_buf(), inode);
        fs.pending.push(NameChange::Rename(from.to_path_buf(), to.to_path_buf()));
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> std::io::Result<()> {
        let fs = &mut *self.0.borrow_mut();
        fs.change()?;
        let (here, elsewhere): (Vec<NameChange>, Vec<NameChange>) =
            std::mem::take(&mut fs.pending).into_iter().partition(|c| c.dir() == Some(dir));
        for change in &here {
            change.apply(&mut fs.durable_names);
        }
        fs.pending = elsewhere;
        Ok(())
    }

    fn open(&self, path: &Path) -> std::io::Result<SimReader> {
        let fs = &mut *self.0.borrow_mut();
        fs.operation()?;
        let inode = *fs.names.get(path).ok_or_else(|| not_found(path))?;
        let bytes = Arc::new(fs.files[&inode].current());
        let percent = fs.faults.read_error_percent;
        let fail_at = (percent > 0 && !bytes.is_empty() && fs.prng.chance(percent)).then(|| {
            fs.errors_injected += 1;
            fs.prng.below(bytes.len() as u64)
        });
        Ok(SimReader { bytes, fail_at })
    }

    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        let fs = &mut *self.0.borrow_mut();
        fs.operation()?;
        Ok(fs.names.keys().filter(|p| p.parent() == Some(dir)).cloned().collect())
    }

    fn remove(&self, path: &Path) -> std::io::Result<()> {
        let fs = &mut *self.0.borrow_mut();
        fs.change()?;
        fs.names.remove(path).ok_or_else(|| not_found(path))?;
        fs.pending.push(NameChange::Remove(path.to_path_buf()));
        Ok(())
    }

    fn map_blocks(
        &self,
        _path: &Path,
        file: &SimReader,
        offset: usize,
        blocks: usize,
        block_bytes: usize,
    ) -> std::io::Result<Vec<Arc<dyn ColdBlock>>> {
        self.0.borrow_mut().operation()?;
        if file.bytes.len() < offset + blocks * block_bytes {
            return Err(std::io::Error::other("shorter than its blocks"));
        }
        Ok((0..blocks)
            .map(|i| {
                let start = offset + i * block_bytes;
                let records =
                    bytemuck::pod_collect_to_vec::<u8, Transfer>(&file.bytes[start..start + block_bytes]);
                Arc::new(SimBlock(records)) as Arc<dyn ColdBlock>
            })
            .collect())
    }
}

impl crate::journal_files::JournalStorage for SimFiles {
    type JournalFile = SimWriter;

    fn create_journal(&self, path: &Path) -> std::io::Result<SimWriter> {
        Storage::create(self, path)
    }

    fn sync_journal(&self, file: &mut SimWriter) -> std::io::Result<()> {
        Storage::sync(self, file)
    }

    fn open_write(&self, path: &Path) -> std::io::Result<SimWriter> {
        let fs = &mut *self.0.borrow_mut();
        fs.operation()?;
        let inode = *fs.names.get(path).ok_or_else(|| not_found(path))?;
        let offset = fs.files[&inode].current().len() as u64;
        Ok(SimWriter { inode, offset })
    }

    fn write_at(&self, file: &mut SimWriter, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
        let fs = &mut *self.0.borrow_mut();
        fs.change()?;
        if let Some(data) = fs.files.get_mut(&file.inode) {
            data.write(offset, bytes);
        }
        Ok(())
    }

    fn truncate(&self, path: &Path, len: u64) -> std::io::Result<()> {
        let fs = &mut *self.0.borrow_mut();
        fs.operation()?;
        let inode = *fs.names.get(path).ok_or_else(|| not_found(path))?;
        let data = fs.files.get_mut(&inode).expect("named");
        data.sync();
        data.durable.truncate(len as usize);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_file(files: &SimFiles, path: &Path, bytes: &[u8], sync: bool) {
        let mut file = files.create(path).unwrap();
        files.write_all(&mut file, bytes).unwrap();
        if sync {
            files.sync(&mut file).unwrap();
        }
    }

    fn read(files: &SimFiles, path: &Path) -> Option<Vec<u8>> {
        let file = files.open(path).ok()?;
        let mut bytes = vec![0; file.byte_len().unwrap() as usize];
        file.read_exact_at(&mut bytes, 0).unwrap();
        Some(bytes)
    }

    /// A rename is durable only once its directory is synced: before, a
    /// power loss finds the file under its old name or its new one, never
    /// both, never neither; after, always the new one.
    #[test]
    fn a_rename_is_durable_once_the_directory_is_synced() {
        let (dir, tmp, done) = (Path::new("/d"), Path::new("/d/a.tmp"), Path::new("/d/a"));
        let mut seen = BTreeMap::new();
        for seed in 0..64 {
            let files = SimFiles::new(seed);
            write_file(&files, tmp, b"data", true);
            files.sync_dir(dir).unwrap();
            files.rename(tmp, done).unwrap();
            files.crash(&mut Prng(seed));
            let names = files.names();
            assert_eq!(names.len(), 1, "{names:?}");
            assert_eq!(read(&files, &names[0]).unwrap(), b"data", "synced data survives");
            *seen.entry(names[0].clone()).or_insert(0) += 1;

            let files = SimFiles::new(seed);
            write_file(&files, tmp, b"data", true);
            files.rename(tmp, done).unwrap();
            files.sync_dir(dir).unwrap();
            files.crash(&mut Prng(seed));
            assert_eq!(files.names(), [done.to_path_buf()]);
        }
        assert_eq!(seen.len(), 2, "both outcomes happen: {seen:?}");
    }

    /// Unsynced data is lost, kept or torn by a power loss; synced data is
    /// kept; a file whose creation was never made durable may be gone.
    #[test]
    fn unsynced_data_may_be_lost_synced_data_is_kept() {
        let (dir, path) = (Path::new("/d"), Path::new("/d/f"));
        let (mut lost, mut kept) = (0, 0);
        for seed in 0..64 {
            let files = SimFiles::new(seed);
            let mut file = files.create(path).unwrap();
            files.write_all(&mut file, &[1; 1024]).unwrap();
            files.sync(&mut file).unwrap();
            files.sync_dir(dir).unwrap();
            files.write_all(&mut file, &[2; 1024]).unwrap();
            files.crash(&mut Prng(seed));
            let bytes = read(&files, path).unwrap();
            assert_eq!(bytes[..1024], [1; 1024], "synced data is kept");
            if bytes.len() == 1024 {
                lost += 1;
            } else {
                kept += 1;
            }
        }
        assert!(lost > 0 && kept > 0, "lost {lost} kept {kept}");
        // A creation whose directory was never synced may be gone.
        let mut gone = 0;
        for seed in 0..32 {
            let files = SimFiles::new(seed);
            write_file(&files, path, b"x", true);
            files.crash(&mut Prng(seed));
            match read(&files, path) {
                None => gone += 1,
                Some(bytes) => assert_eq!(bytes, b"x"),
            }
        }
        assert!(gone > 0);
    }

    /// After a power loss at a chosen operation, every operation fails.
    #[test]
    fn nothing_happens_after_a_power_loss() {
        let files = SimFiles::new(1);
        files.set_faults(Faults { power_loss_after: Some(1), ..Faults::default() });
        let mut file = files.create(Path::new("/d/f")).unwrap();
        let error = files.write_all(&mut file, b"x").unwrap_err();
        assert!(error.to_string().contains(POWER_LOSS));
        assert!(files.open(Path::new("/d/f")).is_err());
    }

    /// A bit flipped at rest anywhere in the newest snapshot file makes
    /// loading skip it, with its reason, for the older one.
    #[test]
    fn a_flipped_bit_in_a_synced_snapshot_is_skipped_for_an_older_one() {
        use crate::snapshot::{self, Position, SnapshotJob};
        use molly_engine::{Account, Config, Engine};

        let dir = Path::new("/d");
        let config = Config::default();
        for seed in 0..16 {
            let files = SimFiles::new(seed);
            let mut engine = Engine::new(config.clone()).unwrap();
            let mut exports = Vec::new();
            for (sequence, id) in [(2, 1), (3, 2)] {
                let account = Account { id, ledger: 1, code: 1, ..Account::default() };
                engine.create_accounts(&[account], &mut Vec::new()).unwrap();
                let job = SnapshotJob {
                    dir: dir.to_path_buf(),
                    position: Position { next_sequence: sequence, journal_offset: 4096 * sequence },
                    parts: engine.snapshot_parts(0),
                    intents: Vec::new(),
                    segments: Vec::new(),
                };
                snapshot::write_to(&files, job).unwrap();
                exports.push(engine.export());
            }
            let mut prng = Prng(seed);
            let (flipped, _) = files.flip_at_rest(&mut prng, "snapshot-00000000000000000003").unwrap();
            files.crash(&mut prng);
            let loaded = snapshot::load_newest_from(&files, dir, &config);
            assert_eq!(loaded.skipped.len(), 1);
            assert_eq!(loaded.skipped[0].0, flipped);
            let (used, _) = loaded.used.expect("the older snapshot loads");
            assert_eq!(used.position.next_sequence, 2);
            assert_eq!(used.engine.export(), exports[0]);
        }
    }
}
