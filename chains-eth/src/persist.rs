//! The watcher's position on disk: its [`Tracker`] (the last `reorg_window`
//! block hashes with the deposits found in each, the floor, and the
//! not-yet-final deposits with the confirmations already reported), so a
//! restarted watcher resumes where it stopped, detects a reorg that
//! happened while it was down, and neither skips nor repeats an event.
//!
//! File layout (text): one header line `molly-eth-watcher 1 keccak256=<64
//! hex digits>\n`, then the JSON body the hash is of. Written to
//! `<path>.tmp`, fsynced, renamed over `<path>`, and the directory fsynced:
//! a crash leaves the old file or the new one, never a mix. A file whose
//! hash does not match refuses to load (the watcher does not start on a
//! corrupt position; an operator removes the file to start from
//! `start_block` instead).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use alloy::primitives::{keccak256, B256};
use molly_chains::gateway::{Asset, BlockRef, Deposit, DepositKey};
use molly_chains::Chain;
use serde::{Deserialize, Serialize};

use crate::error::EthError;
use crate::scan::{BlockMeta, Found};

const MAGIC: &str = "molly-eth-watcher";
const VERSION: u32 = 1;

/// A deposit as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredDeposit {
    /// Transaction hash text.
    pub tx_hash: String,
    /// Log index or `DepositKey::NATIVE`.
    pub index: u64,
    /// Sender.
    pub from: String,
    /// Watched recipient.
    pub to: String,
    /// `None`: ETH; else the token contract.
    pub token: Option<String>,
    /// Base units, decimal text (JSON numbers cannot hold u128).
    pub amount: String,
    /// Block height.
    pub block_number: u64,
    /// Block hash text.
    pub block_hash: String,
    /// Confirmation depth required.
    pub required: u64,
}

impl StoredDeposit {
    /// From a found deposit.
    pub fn from_found(f: &Found) -> Self {
        let d = &f.deposit;
        StoredDeposit {
            tx_hash: d.key.tx_hash.clone(),
            index: d.key.index,
            from: d.from.clone(),
            to: d.to.clone(),
            token: match &d.asset {
                Asset::Native => None,
                Asset::Token(t) => Some(t.clone()),
            },
            amount: d.amount.to_string(),
            block_number: d.block.number,
            block_hash: d.block.hash.clone(),
            required: f.required,
        }
    }

    /// Back to a found deposit.
    pub fn to_found(&self) -> Result<Found, EthError> {
        let amount = self.amount.parse::<u128>().map_err(|e| {
            EthError::Journal(format!("watcher state: amount {:?} of {}: {e}", self.amount, self.tx_hash))
        })?;
        Ok(Found {
            deposit: Deposit {
                key: DepositKey { chain: Chain::Eth, tx_hash: self.tx_hash.clone(), index: self.index },
                from: self.from.clone(),
                to: self.to.clone(),
                asset: self.token.clone().map_or(Asset::Native, Asset::Token),
                amount,
                block: BlockRef { number: self.block_number, hash: self.block_hash.clone() },
            },
            required: self.required,
        })
    }
}

/// A kept block as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredBlock {
    /// Height.
    pub number: u64,
    /// Hash.
    pub hash: B256,
    /// Parent hash.
    pub parent_hash: B256,
    /// Unix seconds.
    pub timestamp: u64,
    /// Deposits found in it.
    pub found: Vec<StoredDeposit>,
}

impl StoredBlock {
    /// The block's header part.
    pub fn meta(&self) -> BlockMeta {
        BlockMeta {
            number: self.number,
            hash: self.hash,
            parent_hash: self.parent_hash,
            timestamp: self.timestamp,
        }
    }
}

/// Everything a watcher needs to resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackerState {
    /// The parent of the oldest kept block.
    pub floor: Option<(u64, B256)>,
    /// Kept blocks, oldest first.
    pub blocks: Vec<StoredBlock>,
    /// Not-yet-final deposits and the confirmations last reported.
    pub pending: Vec<(StoredDeposit, u64)>,
}

/// The position file.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    /// The file at `path` (its directory must exist).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StateFile { path: path.into() }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Encodes `state` as the file's bytes (header with checksum, then body).
    pub fn encode(state: &TrackerState) -> Result<Vec<u8>, EthError> {
        let body = serde_json::to_vec(state).map_err(|e| EthError::Journal(format!("watcher state: {e}")))?;
        let mut out = format!("{MAGIC} {VERSION} keccak256={:x}\n", keccak256(&body)).into_bytes();
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Decodes and checks a file's bytes.
    pub fn decode(bytes: &[u8]) -> Result<TrackerState, EthError> {
        let bad = |why: String| EthError::Journal(format!("watcher state: {why}"));
        let newline = bytes.iter().position(|b| *b == b'\n').ok_or_else(|| bad("no header line".into()))?;
        let header = std::str::from_utf8(&bytes[..newline]).map_err(|_| bad("header is not text".into()))?;
        let body = &bytes[newline + 1..];
        let mut parts = header.split(' ');
        if parts.next() != Some(MAGIC) {
            return Err(bad(format!("not a watcher state file (header {header:?})")));
        }
        if parts.next() != Some(&VERSION.to_string()) {
            return Err(bad(format!("unknown version (header {header:?})")));
        }
        let want = parts
            .next()
            .and_then(|p| p.strip_prefix("keccak256="))
            .ok_or_else(|| bad("no checksum".into()))?;
        let have = format!("{:x}", keccak256(body));
        if want != have {
            return Err(bad(format!("checksum mismatch (header {want}, body {have}): the file is corrupt")));
        }
        serde_json::from_slice(body).map_err(|e| bad(e.to_string()))
    }

    /// Reads the file; `None` when it does not exist.
    pub fn load(&self) -> Result<Option<TrackerState>, EthError> {
        match fs::read(&self.path) {
            Ok(bytes) => Self::decode(&bytes)
                .map(Some)
                .map_err(|e| EthError::Journal(format!("{}: {e}", self.path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(EthError::Journal(format!("{}: {e}", self.path.display()))),
        }
    }

    /// Replaces the file with `bytes` durably: write `<path>.tmp`, fsync,
    /// rename over `<path>`, fsync the directory.
    pub fn store(&self, bytes: &[u8]) -> Result<(), EthError> {
        let err =
            |what: &str, e: std::io::Error| EthError::Journal(format!("{what} {}: {e}", self.path.display()));
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = File::create(&tmp).map_err(|e| err("create temp for", e))?;
        f.write_all(bytes).map_err(|e| err("write temp for", e))?;
        f.sync_all().map_err(|e| err("fsync temp for", e))?;
        drop(f);
        fs::rename(&tmp, &self.path).map_err(|e| err("rename temp over", e))?;
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        File::open(&dir).and_then(|d| d.sync_all()).map_err(|e| err("fsync the directory of", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> TrackerState {
        let d = StoredDeposit {
            tx_hash: format!("{:#x}", B256::repeat_byte(3)),
            index: 7,
            from: "0x1".into(),
            to: "0x2".into(),
            token: Some("0x70".into()),
            amount: u128::MAX.to_string(),
            block_number: 11,
            block_hash: format!("{:#x}", B256::repeat_byte(11)),
            required: 12,
        };
        TrackerState {
            floor: Some((10, B256::repeat_byte(10))),
            blocks: vec![StoredBlock {
                number: 11,
                hash: B256::repeat_byte(11),
                parent_hash: B256::repeat_byte(10),
                timestamp: 5,
                found: vec![d.clone()],
            }],
            pending: vec![(d, 1)],
        }
    }

    #[test]
    fn a_state_round_trips_through_the_file_and_u128_amounts_survive() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::new(dir.path().join("eth-watcher.state"));
        assert_eq!(file.load().unwrap(), None, "no file: start fresh");
        file.store(&StateFile::encode(&state()).unwrap()).unwrap();
        let back = file.load().unwrap().unwrap();
        assert_eq!(back, state());
        assert_eq!(back.pending[0].0.to_found().unwrap().deposit.amount, u128::MAX);
        assert!(!dir.path().join("eth-watcher.state.tmp").exists(), "the temp file was renamed");
    }

    /// Each row: a damaged file and a phrase the error must contain.
    #[test]
    fn a_damaged_file_refuses_to_load() {
        let good = StateFile::encode(&state()).unwrap();
        let mut flipped = good.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 1;
        let mut truncated = good.clone();
        truncated.truncate(good.len() - 10);
        let rows: Vec<(Vec<u8>, &str)> = vec![
            (flipped, "checksum mismatch"),
            (truncated, "checksum mismatch"),
            (b"molly-eth-watcher 2 keccak256=00\n{}".to_vec(), "unknown version"),
            (b"something else\n{}".to_vec(), "not a watcher state file"),
            (b"no newline".to_vec(), "no header line"),
        ];
        for (bytes, phrase) in rows {
            let err = StateFile::decode(&bytes).unwrap_err().to_string();
            assert!(err.contains(phrase), "{err:?} lacks {phrase:?}");
        }
    }
}
