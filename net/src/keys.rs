//! Client keys: which clients may talk to the server, and the key each
//! signs its frames with (keyed BLAKE3, see [`crate::frame`]).
//!
//! The file is text, one client per line: `<client_id> <key as hex>`
//! (16 to 64 bytes), `#` comments and blank lines ignored. It holds secrets:
//! Molly writes it with mode 0600 and refuses keys shorter than 16 bytes.
//!
//! ```text
//! # molly client keys
//! 1 9f1c0b2e...   (32 bytes as 64 hex digits)
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};
use zeroize::Zeroizing;

/// Shortest key accepted, bytes.
pub const KEY_BYTES_MIN: usize = 16;
/// Longest key accepted, bytes.
pub const KEY_BYTES_MAX: usize = 64;
/// Size of generated keys, bytes.
pub const KEY_BYTES_GENERATED: usize = 32;

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyFileError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `<client_id> <hex key>`.
    #[error("{path} line {line}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong (never the key itself).
        reason: String,
    },
    /// The file names no client.
    #[error("{0}: no client keys")]
    Empty(PathBuf),
}

/// The clients a server accepts, with their keys.
#[derive(Default)]
pub struct ClientKeys {
    keys: HashMap<u32, Zeroizing<Vec<u8>>>,
}

impl std::fmt::Debug for ClientKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut ids: Vec<u32> = self.keys.keys().copied().collect();
        ids.sort_unstable();
        f.debug_struct("ClientKeys").field("clients", &ids).finish()
    }
}

impl ClientKeys {
    /// Keys from text (the file format above); `path` names the source in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, KeyFileError> {
        let mut keys = HashMap::new();
        for (index, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let malformed = |reason: String| KeyFileError::Malformed {
                path: path.to_path_buf(),
                line: index + 1,
                reason,
            };
            let mut fields = line.split_whitespace();
            let (Some(id), Some(key), None) = (fields.next(), fields.next(), fields.next()) else {
                return Err(malformed("expected `<client_id> <hex key>`".into()));
            };
            let id: u32 = id
                .parse()
                .map_err(|_| malformed(format!("client id {id:?} is not a number up to 2^32-1")))?;
            let key = Zeroizing::new(hex::decode(key).map_err(|_| malformed("the key is not hex".into()))?);
            if !(KEY_BYTES_MIN..=KEY_BYTES_MAX).contains(&key.len()) {
                return Err(malformed(format!(
                    "the key has {} bytes; keys have {KEY_BYTES_MIN} to {KEY_BYTES_MAX}",
                    key.len()
                )));
            }
            if keys.insert(id, key).is_some() {
                return Err(malformed(format!("client {id} appears twice")));
            }
        }
        if keys.is_empty() {
            return Err(KeyFileError::Empty(path.to_path_buf()));
        }
        Ok(Self { keys })
    }

    /// Reads the key file at `path`.
    pub fn load(path: &Path) -> Result<Self, KeyFileError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|source| KeyFileError::Io { path: path.to_path_buf(), source })?,
        );
        Self::parse(&text, path)
    }

    /// Reads the key file at `path`, or, if there is none, creates it with
    /// one freshly generated key for client 1 (the development key that
    /// `molly bench --data-dir` finds). Returns the keys and whether the file was created.
    pub fn load_or_generate(path: &Path) -> Result<(Self, bool), KeyFileError> {
        if path.exists() {
            return Ok((Self::load(path)?, false));
        }
        let mut key = Zeroizing::new(vec![0u8; KEY_BYTES_GENERATED]);
        OsRng.fill_bytes(&mut key);
        let text = Zeroizing::new(format!(
            "# Molly client keys: <client_id> <hex key>, one per line (see docs/protocol.md).\n\
             # Generated for development by `molly serve`; keep this file private.\n1 {}\n",
            hex::encode(&*key)
        ));
        let io = |source| KeyFileError::Io { path: path.to_path_buf(), source };
        let tmp = path.with_extension("tmp");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok((Self::parse(&text, path)?, true))
    }

    /// The key of `client_id`.
    pub fn get(&self, client_id: u32) -> Option<&[u8]> {
        self.keys.get(&client_id).map(|k| k.as_slice())
    }

    /// The client with the lowest id and its key (what a benchmark or a
    /// single-client tool picks from a key file).
    pub fn first(&self) -> Option<(u32, &[u8])> {
        self.keys.iter().min_by_key(|(id, _)| **id).map(|(id, key)| (*id, key.as_slice()))
    }

    /// Number of clients.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True with no clients.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_keys_and_names_the_bad_line() {
        let keys = ClientKeys::parse(
            "# comment\n\n7 000102030405060708090a0b0c0d0e0f # trailing\n2 ffffffffffffffffffffffffffffffffffff\n",
            Path::new("k"),
        )
        .unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.get(7).unwrap(), (0u8..16).collect::<Vec<_>>());
        assert_eq!(keys.first().unwrap().0, 2);
        assert!(keys.get(3).is_none());
        for (text, needle) in [
            ("1 00", "has 1 bytes"),
            ("x 000102030405060708090a0b0c0d0e0f", "not a number"),
            ("1 zz0102030405060708090a0b0c0d0e0f", "not hex"),
            ("1", "expected"),
            ("1 000102030405060708090a0b0c0d0e0f\n1 000102030405060708090a0b0c0d0e0f", "twice"),
        ] {
            let error = ClientKeys::parse(text, Path::new("k")).unwrap_err().to_string();
            assert!(error.contains(needle), "{text:?}: {error}");
        }
        assert!(matches!(ClientKeys::parse("# nothing\n", Path::new("k")), Err(KeyFileError::Empty(_))));
    }

    #[test]
    fn generates_a_private_key_file_once() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client-keys");
        let (keys, created) = ClientKeys::load_or_generate(&path).unwrap();
        assert!(created);
        let (id, key) = keys.first().unwrap();
        assert_eq!((id, key.len()), (1, KEY_BYTES_GENERATED));
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let (again, created) = ClientKeys::load_or_generate(&path).unwrap();
        assert!(!created);
        assert_eq!(again.get(1).unwrap(), keys.get(1).unwrap(), "the second start reads the same key");
    }
}
