//! Configuration of the signer process (`molly signer serve --config FILE`, JSON).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::approvals::PolicyConfig;
use crate::error::{Result, SignerError};
use crate::keystore::KdfParams;

/// The whole signer configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignerConfig {
    /// Unix socket path (a stale socket file is replaced).
    pub socket: PathBuf,
    /// Permission bits of the socket file (default 0o660); SO_PEERCRED is the real gate.
    #[serde(default = "default_socket_mode")]
    pub socket_mode: u32,
    /// Audit log path.
    pub audit_log: PathBuf,
    /// fsync the audit log after every entry (default true).
    #[serde(default = "default_true")]
    pub audit_fsync: bool,
    /// Which backend holds the keys.
    pub backend: BackendConfig,
    /// Clients allowed to connect.
    pub clients: Vec<ClientConfig>,
    /// Limits.
    #[serde(default)]
    pub limits: Limits,
    /// Approval policy.
    pub policy: PolicyConfig,
}

fn default_socket_mode() -> u32 {
    0o660
}

fn default_true() -> bool {
    true
}

/// Backend selection. Secrets (passphrase, PIN) come from environment
/// variables named here, never from the file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BackendConfig {
    /// Encrypted software keystore.
    Software {
        /// Keystore directory (created on first start).
        dir: PathBuf,
        /// Environment variable holding the passphrase.
        passphrase_env: String,
        /// argon2id cost for a new keystore (default 64 MiB, 3 passes).
        #[serde(default)]
        kdf: Option<KdfParams>,
    },
    /// PKCS#11 token.
    Pkcs11 {
        /// Module path.
        module: PathBuf,
        /// Token label.
        token_label: String,
        /// Environment variable holding the user PIN.
        pin_env: String,
    },
    /// AWS KMS (build feature `kms`).
    AwsKms {
        /// Region.
        region: String,
        /// Endpoint override (a local emulator); None for AWS itself.
        #[serde(default)]
        endpoint: Option<String>,
    },
}

/// One client allowed to talk to the signer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Name the client authenticates as.
    pub name: String,
    /// The only uid this client may connect from (SO_PEERCRED).
    pub uid: u32,
    /// File holding the client's HMAC key as hex (32 bytes or more); must not
    /// be readable by group or others.
    pub key_file: PathBuf,
    /// May create keys.
    #[serde(default)]
    pub may_generate: bool,
}

/// Every limit of the signer process.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Concurrent connections; more are refused (and audited).
    pub max_connections: usize,
    /// Largest frame either way, bytes.
    pub max_frame_bytes: usize,
    /// Largest Ed25519 message, bytes.
    pub max_message_bytes: usize,
    /// A connection idle this long is closed, milliseconds.
    pub idle_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 16,
            max_frame_bytes: 64 * 1024,
            max_message_bytes: 16 * 1024,
            idle_timeout_ms: 60_000,
        }
    }
}

impl SignerConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| SignerError::io("read", path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| SignerError::Config(format!("{}: {e}", path.display())))
    }
}

/// Reads a client key file: hex, at least 32 bytes, mode without group/other bits.
pub fn read_client_key(path: &Path) -> Result<Zeroizing<Vec<u8>>> {
    let meta = std::fs::metadata(path).map_err(|e| SignerError::io("stat", path, e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(SignerError::Config(format!(
            "client key {} is readable by group or others (chmod 600 it)",
            path.display()
        )));
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| SignerError::io("read", path, e))?);
    let key = Zeroizing::new(
        hex::decode(text.trim())
            .map_err(|e| SignerError::Config(format!("client key {}: not hex: {e}", path.display())))?,
    );
    if key.len() < 32 {
        return Err(SignerError::Config(format!(
            "client key {} is {} bytes; at least 32 are required",
            path.display(),
            key.len()
        )));
    }
    Ok(key)
}

/// Writes a fresh random 32-byte client key as hex, mode 0600 (never overwrites).
pub fn write_new_client_key(path: &Path) -> Result<()> {
    use rand_core::{OsRng, RngCore};
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut key = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(key.as_mut());
    let text = Zeroizing::new(hex::encode(&key[..]));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| SignerError::io("create", path, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .map_err(|e| SignerError::io("write", path, e))
}
