//! The append-only, hash-chained audit log.
//!
//! One line per event: `<hash hex> <entry json>\n`, where `hash` =
//! SHA-256(previous line's hash ‖ the entry's JSON bytes exactly as written)
//! and every entry also carries `prev` (the previous hash) and `seq`. The
//! first entry chains from 32 zero bytes. Editing, deleting, reordering or
//! inserting any line breaks the chain at that line, which [`verify`]
//! reports. Cutting lines off the end is only detectable against an anchor
//! kept elsewhere: [`verify`] returns the head (last `seq` and hash) for that.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Result, SignerError};

/// One approval as recorded (enough to refuse its replay after a restart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditApproval {
    /// Approver id.
    pub approver: String,
    /// Its nonce.
    #[serde(with = "crate::hexser")]
    pub nonce: [u8; 16],
    /// Its issue time.
    pub issued_unix: u64,
}

/// One audited request and its outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 0.
    pub seq: u64,
    /// Hash of the previous line (hex; zeros for the first).
    pub prev: String,
    /// Wall-clock time, Unix milliseconds.
    pub unix_ms: u64,
    /// Peer uid from SO_PEERCRED.
    pub uid: u32,
    /// Client name as claimed (authenticated only if the outcome is not an auth refusal).
    pub client: Option<String>,
    /// Request counter.
    pub counter: Option<u64>,
    /// Operation (`connect`, `ping`, `list`, `public_key`, `generate`, `derive`, `sign_digest`, `sign_message`, `invalid`).
    pub op: String,
    /// Key id.
    pub key_id: Option<String>,
    /// For `derive`: `<scheme> <seed id> <path>` (absent otherwise, so older
    /// logs read and verify unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derivation: Option<String>,
    /// Digest signed or refused (hex), SHA-256 of the message for Ed25519.
    pub digest: Option<String>,
    /// Asset.
    pub asset: Option<String>,
    /// Amount in base units (decimal string).
    pub amount: Option<String>,
    /// Authorisation level decided.
    pub level: Option<u8>,
    /// Approvals presented.
    pub approvals: Vec<AuditApproval>,
    /// `ok` or `refused: <reason>`.
    pub outcome: String,
}

/// What recovery from an existing log yields.
#[derive(Debug, Default, Clone)]
pub struct Recovered {
    /// Highest request counter per authenticated client.
    pub counters: HashMap<String, u64>,
    /// Approvals consumed by successful signatures.
    pub approvals: Vec<AuditApproval>,
    /// Entries in the log.
    pub entries: u64,
}

/// The chain head after verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Number of entries.
    pub entries: u64,
    /// Hash of the last line (hex), zeros if empty.
    pub hash: String,
}

/// Errors of [`verify`]: which line broke and how.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// Unreadable file.
    #[error("read {path}: {source}", path = path.display())]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A line that breaks the chain or the format.
    #[error("{path} line {line}: {reason}", path = path.display())]
    Broken {
        /// File.
        path: PathBuf,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        reason: String,
    },
}

const ZERO: [u8; 32] = [0; 32];

fn chain(prev: &[u8; 32], entry_json: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(entry_json);
    h.finalize().into()
}

/// Verifies the whole chain; returns its head and what a restarting signer
/// must remember (counters, used approvals).
pub fn verify(path: &Path) -> std::result::Result<(Head, Recovered), AuditError> {
    let io = |source| AuditError::Io { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(io)?;
    let mut prev = ZERO;
    let mut recovered = Recovered::default();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        let n = index as u64 + 1;
        let broken = |reason: String| AuditError::Broken { path: path.to_path_buf(), line: n, reason };
        let (hash_hex, json) =
            line.split_once(' ').ok_or_else(|| broken("no '<hash> <entry>' separator".into()))?;
        let expected = chain(&prev, json.as_bytes());
        if hex::encode(expected) != hash_hex {
            return Err(broken("hash does not match the previous line and this entry".into()));
        }
        let entry: AuditEntry =
            serde_json::from_str(json).map_err(|e| broken(format!("entry is not valid: {e}")))?;
        if entry.seq != index as u64 {
            return Err(broken(format!("seq {} where {} was expected", entry.seq, index)));
        }
        if entry.prev != hex::encode(prev) {
            return Err(broken("prev does not name the previous hash".into()));
        }
        if entry.outcome == "ok" {
            if let (Some(client), Some(counter)) = (&entry.client, entry.counter) {
                let c = recovered.counters.entry(client.clone()).or_insert(0);
                *c = (*c).max(counter);
            }
            recovered.approvals.extend(entry.approvals.iter().cloned());
        } else if let (Some(client), Some(counter), false) =
            (&entry.client, entry.counter, entry.outcome.starts_with("refused: authentication"))
        {
            // Authenticated but refused requests also consumed their counter.
            let c = recovered.counters.entry(client.clone()).or_insert(0);
            *c = (*c).max(counter);
        }
        prev = expected;
        recovered.entries = n;
    }
    Ok((Head { entries: recovered.entries, hash: hex::encode(prev) }, recovered))
}

/// An open audit log, appending.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    file: File,
    prev: [u8; 32],
    seq: u64,
    fsync: bool,
}

impl AuditLog {
    /// Opens (verifying the existing chain) or creates the log.
    pub fn open(path: &Path, fsync: bool) -> Result<(Self, Recovered)> {
        let (head, recovered) = if path.exists() {
            verify(path).map_err(|e| SignerError::Config(format!("audit log: {e}")))?
        } else {
            (Head { entries: 0, hash: hex::encode(ZERO) }, Recovered::default())
        };
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| SignerError::io("open", path, e))?;
        let mut prev = ZERO;
        hex::decode_to_slice(&head.hash, &mut prev)
            .map_err(|e| SignerError::Config(format!("audit log head: {e}")))?;
        Ok((AuditLog { path: path.to_path_buf(), file, prev, seq: head.entries, fsync }, recovered))
    }

    /// Appends one entry (its `seq` and `prev` are filled in here). When this
    /// fails the caller must not release the result of the request.
    pub fn append(&mut self, mut entry: AuditEntry) -> Result<()> {
        entry.seq = self.seq;
        entry.prev = hex::encode(self.prev);
        let json =
            serde_json::to_string(&entry).map_err(|e| SignerError::Config(format!("audit entry: {e}")))?;
        let hash = chain(&self.prev, json.as_bytes());
        let line = format!("{} {}\n", hex::encode(hash), json);
        self.file.write_all(line.as_bytes()).map_err(|e| SignerError::io("append", &self.path, e))?;
        if self.fsync {
            self.file.sync_data().map_err(|e| SignerError::io("fsync", &self.path, e))?;
        }
        self.prev = hash;
        self.seq += 1;
        Ok(())
    }

    /// Entries written so far.
    pub fn len(&self) -> u64 {
        self.seq
    }

    /// True when nothing was logged yet.
    pub fn is_empty(&self) -> bool {
        self.seq == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(op: &str, outcome: &str) -> AuditEntry {
        AuditEntry {
            seq: 0,
            prev: String::new(),
            unix_ms: 1,
            uid: 0,
            client: Some("c".into()),
            counter: Some(7),
            op: op.into(),
            key_id: None,
            derivation: None,
            digest: None,
            asset: None,
            amount: None,
            level: None,
            approvals: vec![],
            outcome: outcome.into(),
        }
    }

    #[test]
    fn chain_verifies_and_any_edit_breaks_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("audit.log");
        {
            let (mut log, _) = AuditLog::open(&path, false).expect("open");
            log.append(entry("ping", "ok")).expect("append");
            log.append(entry("sign_digest", "refused: x")).expect("append");
        }
        {
            // Reopen continues the chain.
            let (mut log, rec) = AuditLog::open(&path, false).expect("reopen");
            assert_eq!(rec.entries, 2);
            assert_eq!(rec.counters.get("c"), Some(&7));
            log.append(entry("list", "ok")).expect("append");
        }
        let (head, _) = verify(&path).expect("verifies");
        assert_eq!(head.entries, 3);

        let text = std::fs::read_to_string(&path).expect("read");
        // Edit an outcome in line 2.
        let edited = text.replacen("refused: x", "ok", 1);
        std::fs::write(&path, &edited).expect("write");
        match verify(&path) {
            Err(AuditError::Broken { line, .. }) => assert_eq!(line, 2),
            other => panic!("edit must break line 2, got {other:?}"),
        }
        // Delete line 1.
        let dropped: String = text.lines().skip(1).map(|l| format!("{l}\n")).collect();
        std::fs::write(&path, dropped).expect("write");
        match verify(&path) {
            Err(AuditError::Broken { line, .. }) => assert_eq!(line, 1),
            other => panic!("deletion must break line 1, got {other:?}"),
        }
        // A broken log refuses to be reopened for appending.
        assert!(AuditLog::open(&path, false).is_err());
    }
}
