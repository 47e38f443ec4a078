//! The signer's one error type.

use std::path::PathBuf;

use crate::types::Scheme;

/// Everything a signer backend, the keystore, the approval policy or the
/// signer process can refuse or fail with. Messages are lower-case and name
/// the key, file or limit involved.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    /// A key id that is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid key id {id:?}: {reason}")]
    InvalidKeyId {
        /// The id as given.
        id: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// No key with that id in this backend.
    #[error("unknown key id {0:?}")]
    UnknownKey(String),
    /// `generate` with an id that is already taken.
    #[error("key id {0:?} already exists")]
    KeyExists(String),
    /// A secp256k1 operation on an Ed25519 key or the other way round.
    #[error("key {id:?} is a {actual} key, not {wanted}")]
    WrongScheme {
        /// The key.
        id: String,
        /// Its scheme.
        actual: Scheme,
        /// The scheme the operation needs.
        wanted: Scheme,
    },
    /// A scheme this backend cannot hold (AWS KMS has no Ed25519 signing keys).
    #[error("the {backend} backend does not support {scheme} keys")]
    UnsupportedScheme {
        /// The backend.
        backend: &'static str,
        /// The scheme asked for.
        scheme: Scheme,
    },
    /// No seed with that id in this keystore.
    #[error("unknown seed id {0:?}")]
    UnknownSeed(String),
    /// `import_seed` with an id that is already taken.
    #[error("seed id {0:?} already exists")]
    SeedExists(String),
    /// A mnemonic or derivation path that cannot be used (the message never
    /// contains mnemonic words).
    #[error("derivation: {0}")]
    Derivation(String),
    /// An operation this backend cannot perform, and what to do instead.
    #[error("the {backend} backend does not support {what}: {advice}")]
    Unsupported {
        /// The backend.
        backend: &'static str,
        /// The operation.
        what: &'static str,
        /// Why, and what an operator does instead.
        advice: &'static str,
    },
    /// A message above the configured limit.
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    MessageTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Wrong passphrase, tampered or unreadable keystore file.
    #[error("keystore: {0}")]
    Keystore(String),
    /// A PKCS#11 call failed.
    #[error("pkcs#11 {op}: {source}")]
    Pkcs11 {
        /// What was being done.
        op: &'static str,
        /// The module's error.
        #[source]
        source: cryptoki::error::Error,
    },
    /// A KMS call failed.
    #[error("kms {op}: {detail}")]
    Kms {
        /// What was being done.
        op: &'static str,
        /// The service's or SDK's error.
        detail: String,
    },
    /// A backend answered with something that is not a valid key or signature.
    #[error("backend {backend} returned an invalid {what}: {detail}")]
    BadBackendOutput {
        /// The backend.
        backend: &'static str,
        /// What it returned.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// File-system error with the path involved.
    #[error("{op} {path}: {source}", path = path.display())]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A configuration that cannot work (missing token, bad limit, unreadable config).
    #[error("configuration: {0}")]
    Config(String),
    /// A blocking backend task panicked or was cancelled.
    #[error("backend task failed: {0}")]
    Task(String),
}

/// Shorthand.
pub type Result<T, E = SignerError> = std::result::Result<T, E>;

impl SignerError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        SignerError::Io { op, path: path.into(), source }
    }
}
