//! The encrypted software keystore: the development default.
//!
//! Layout of a keystore directory:
//!
//! ```text
//! <dir>/keystore.json       argon2id parameters + salt, and a check value
//! <dir>/keys/<key id>.json  one key: scheme, public key, nonce, ciphertext
//! ```
//!
//! The passphrase goes through argon2id once (when the keystore is opened) to
//! a 32-byte key; every private key is sealed with XChaCha20-Poly1305 under a
//! fresh random 24-byte nonce, with `molly-keystore-v1 ‖ id ‖ scheme` as
//! associated data so a key file cannot be renamed or relabelled. Secrets in
//! memory (derived key, decrypted key bytes, signing keys) are zeroized on drop.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::RwLock;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use ed25519_dalek::Signer as _;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::error::{Result, SignerError};
use crate::signer::Signer;
use crate::types::{EcdsaSignature, Ed25519Signature, KeyId, KeyInfo, PublicKey, Scheme};

const BACKEND: &str = "software";
const CHECK_PLAINTEXT: &[u8] = b"molly-keystore-check-v1";
const AAD_PREFIX: &[u8] = b"molly-keystore-v1\0";

/// argon2id cost parameters, stored in `keystore.json` when it is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// 64 MiB, 3 passes, 1 lane (above OWASP's argon2id minimum).
    fn default() -> Self {
        KdfParams { m_cost_kib: 64 * 1024, t_cost: 3, p_cost: 1 }
    }
}

impl KdfParams {
    /// Cheap parameters for tests and benches only.
    pub fn insecure_for_tests() -> Self {
        KdfParams { m_cost_kib: 1024, t_cost: 1, p_cost: 1 }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    version: u32,
    kdf: String,
    params: KdfParams,
    #[serde(with = "crate::hexser")]
    salt: [u8; 16],
    #[serde(with = "crate::hexser")]
    check_nonce: [u8; 24],
    #[serde(with = "crate::hexser")]
    check: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
struct KeyFile {
    version: u32,
    id: KeyId,
    scheme: Scheme,
    created_unix: u64,
    public_key: PublicKey,
    #[serde(with = "crate::hexser")]
    nonce: [u8; 24],
    #[serde(with = "crate::hexser")]
    ciphertext: Vec<u8>,
}

enum Secret {
    Secp256k1(k256::ecdsa::SigningKey),
    Ed25519(ed25519_dalek::SigningKey),
}

struct Entry {
    info: KeyInfo,
    secret: Secret,
}

/// The encrypted software keystore. See the module docs for the format.
pub struct SoftwareKeystore {
    dir: PathBuf,
    cipher: XChaCha20Poly1305,
    keys: RwLock<BTreeMap<KeyId, Entry>>,
}

impl std::fmt::Debug for SoftwareKeystore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SoftwareKeystore").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl SoftwareKeystore {
    /// Creates an empty keystore in `dir` (created if missing; must not
    /// already hold a keystore).
    pub fn create(dir: &Path, passphrase: &[u8], params: KdfParams) -> Result<Self> {
        let header_path = dir.join("keystore.json");
        if header_path.exists() {
            return Err(SignerError::Keystore(format!("{} already exists", header_path.display())));
        }
        fs::create_dir_all(dir.join("keys")).map_err(|e| SignerError::io("create", dir.join("keys"), e))?;
        let mut salt = [0u8; 16];
        OsRng.fill_bytes(&mut salt);
        let key = derive(passphrase, &salt, params)?;
        let cipher = XChaCha20Poly1305::new(key.as_ref().into());
        let mut check_nonce = [0u8; 24];
        OsRng.fill_bytes(&mut check_nonce);
        let check = cipher
            .encrypt(XNonce::from_slice(&check_nonce), CHECK_PLAINTEXT)
            .map_err(|_| SignerError::Keystore("sealing the check value failed".into()))?;
        let header = Header { version: 1, kdf: "argon2id".into(), params, salt, check_nonce, check };
        write_new(&header_path, &header)?;
        Ok(SoftwareKeystore { dir: dir.to_path_buf(), cipher, keys: RwLock::new(BTreeMap::new()) })
    }

    /// Opens an existing keystore, checks the passphrase and decrypts every key.
    pub fn open(dir: &Path, passphrase: &[u8]) -> Result<Self> {
        let header_path = dir.join("keystore.json");
        let header: Header = read_json(&header_path)?;
        if header.version != 1 || header.kdf != "argon2id" {
            return Err(SignerError::Keystore(format!(
                "{}: unsupported version {} / kdf {}",
                header_path.display(),
                header.version,
                header.kdf
            )));
        }
        let key = derive(passphrase, &header.salt, header.params)?;
        let cipher = XChaCha20Poly1305::new(key.as_ref().into());
        let check = cipher
            .decrypt(XNonce::from_slice(&header.check_nonce), header.check.as_slice())
            .map_err(|_| SignerError::Keystore("wrong passphrase".into()))?;
        if check != CHECK_PLAINTEXT {
            return Err(SignerError::Keystore("wrong passphrase".into()));
        }
        let keys_dir = dir.join("keys");
        let mut keys = BTreeMap::new();
        let listing = fs::read_dir(&keys_dir).map_err(|e| SignerError::io("read", &keys_dir, e))?;
        for item in listing {
            let item = item.map_err(|e| SignerError::io("read", &keys_dir, e))?;
            let path = item.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let file: KeyFile = read_json(&path)?;
            if path.file_stem().and_then(|s| s.to_str()) != Some(file.id.as_str()) {
                return Err(SignerError::Keystore(format!(
                    "{}: file name does not match key id {}",
                    path.display(),
                    file.id
                )));
            }
            let plain = Zeroizing::new(
                cipher
                    .decrypt(
                        XNonce::from_slice(&file.nonce),
                        Payload { msg: &file.ciphertext, aad: &aad(&file.id, file.scheme) },
                    )
                    .map_err(|_| {
                        SignerError::Keystore(format!(
                            "{}: authentication failed (tampered or renamed)",
                            path.display()
                        ))
                    })?,
            );
            let secret = secret_from_bytes(&file.id, file.scheme, &plain)?;
            let public = public_of(&secret);
            if public != file.public_key {
                return Err(SignerError::Keystore(format!(
                    "{}: stored public key does not match the private key",
                    path.display()
                )));
            }
            keys.insert(
                file.id.clone(),
                Entry {
                    info: KeyInfo {
                        id: file.id,
                        scheme: file.scheme,
                        public_key: public,
                        backend: BACKEND.into(),
                        created_unix: Some(file.created_unix),
                    },
                    secret,
                },
            );
        }
        Ok(SoftwareKeystore { dir: dir.to_path_buf(), cipher, keys: RwLock::new(keys) })
    }

    /// Opens `dir` if it holds a keystore, otherwise creates one.
    pub fn open_or_create(dir: &Path, passphrase: &[u8], params: KdfParams) -> Result<Self> {
        if dir.join("keystore.json").exists() {
            Self::open(dir, passphrase)
        } else {
            Self::create(dir, passphrase, params)
        }
    }

    fn with_entry<T>(&self, id: &KeyId, f: impl FnOnce(&Entry) -> Result<T>) -> Result<T> {
        let keys = self.keys.read().map_err(|_| SignerError::Keystore("key table lock poisoned".into()))?;
        let entry = keys.get(id).ok_or_else(|| SignerError::UnknownKey(id.to_string()))?;
        f(entry)
    }
}

#[async_trait]
impl Signer for SoftwareKeystore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn generate(&self, id: &KeyId, scheme: Scheme) -> Result<KeyInfo> {
        let mut keys =
            self.keys.write().map_err(|_| SignerError::Keystore("key table lock poisoned".into()))?;
        if keys.contains_key(id) {
            return Err(SignerError::KeyExists(id.to_string()));
        }
        let (secret, plain) = match scheme {
            Scheme::Secp256k1 => {
                let key = k256::ecdsa::SigningKey::random(&mut OsRng);
                let bytes = Zeroizing::new(key.to_bytes().to_vec());
                (Secret::Secp256k1(key), bytes)
            }
            Scheme::Ed25519 => {
                let key = ed25519_dalek::SigningKey::generate(&mut OsRng);
                let bytes = Zeroizing::new(key.to_bytes().to_vec());
                (Secret::Ed25519(key), bytes)
            }
        };
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: &plain, aad: &aad(id, scheme) })
            .map_err(|_| SignerError::Keystore("sealing the key failed".into()))?;
        let created_unix = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        let info = KeyInfo {
            id: id.clone(),
            scheme,
            public_key: public_of(&secret),
            backend: BACKEND.into(),
            created_unix: Some(created_unix),
        };
        let file = KeyFile {
            version: 1,
            id: id.clone(),
            scheme,
            created_unix,
            public_key: info.public_key.clone(),
            nonce,
            ciphertext,
        };
        write_new(&self.dir.join("keys").join(format!("{id}.json")), &file)?;
        keys.insert(id.clone(), Entry { info: info.clone(), secret });
        Ok(info)
    }

    async fn public_key(&self, id: &KeyId) -> Result<PublicKey> {
        self.with_entry(id, |e| Ok(e.info.public_key.clone()))
    }

    async fn sign_digest(&self, id: &KeyId, digest: &[u8; 32]) -> Result<EcdsaSignature> {
        self.with_entry(id, |e| match &e.secret {
            Secret::Secp256k1(key) => {
                let (sig, rid) =
                    key.sign_prehash_recoverable(digest).map_err(|err| SignerError::BadBackendOutput {
                        backend: BACKEND,
                        what: "ecdsa signature",
                        detail: err.to_string(),
                    })?;
                Ok(crate::ecdsa::low_s(sig, rid))
            }
            Secret::Ed25519(_) => Err(SignerError::WrongScheme {
                id: id.to_string(),
                actual: Scheme::Ed25519,
                wanted: Scheme::Secp256k1,
            }),
        })
    }

    async fn sign_message(&self, id: &KeyId, message: &[u8]) -> Result<Ed25519Signature> {
        self.with_entry(id, |e| match &e.secret {
            Secret::Ed25519(key) => Ok(Ed25519Signature(key.sign(message).to_bytes())),
            Secret::Secp256k1(_) => Err(SignerError::WrongScheme {
                id: id.to_string(),
                actual: Scheme::Secp256k1,
                wanted: Scheme::Ed25519,
            }),
        })
    }

    async fn list(&self) -> Result<Vec<KeyInfo>> {
        let keys = self.keys.read().map_err(|_| SignerError::Keystore("key table lock poisoned".into()))?;
        Ok(keys.values().map(|e| e.info.clone()).collect())
    }
}

fn derive(passphrase: &[u8], salt: &[u8; 16], p: KdfParams) -> Result<Zeroizing<[u8; 32]>> {
    let params = argon2::Params::new(p.m_cost_kib, p.t_cost, p.p_cost, Some(32))
        .map_err(|e| SignerError::Keystore(format!("argon2 parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut out = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, out.as_mut())
        .map_err(|e| SignerError::Keystore(format!("argon2: {e}")))?;
    Ok(out)
}

fn aad(id: &KeyId, scheme: Scheme) -> Vec<u8> {
    let mut out = AAD_PREFIX.to_vec();
    out.extend_from_slice(id.as_str().as_bytes());
    out.push(0);
    out.extend_from_slice(scheme.to_string().as_bytes());
    out
}

fn secret_from_bytes(id: &KeyId, scheme: Scheme, bytes: &[u8]) -> Result<Secret> {
    let bad = || SignerError::Keystore(format!("key {id}: decrypted key has the wrong form"));
    match scheme {
        Scheme::Secp256k1 => {
            k256::ecdsa::SigningKey::from_slice(bytes).map(Secret::Secp256k1).map_err(|_| bad())
        }
        Scheme::Ed25519 => {
            let arr: Zeroizing<[u8; 32]> = Zeroizing::new(bytes.try_into().map_err(|_| bad())?);
            Ok(Secret::Ed25519(ed25519_dalek::SigningKey::from_bytes(&arr)))
        }
    }
}

fn public_of(secret: &Secret) -> PublicKey {
    match secret {
        Secret::Secp256k1(k) => PublicKey::secp256k1(k.verifying_key()),
        Secret::Ed25519(k) => PublicKey::ed25519(&k.verifying_key()),
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let bytes = fs::read(path).map_err(|e| SignerError::io("read", path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| SignerError::Keystore(format!("{}: {e}", path.display())))
}

/// Writes a new file (never overwrites), flushed to disk before returning.
fn write_new<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let body = serde_json::to_vec_pretty(value)
        .map_err(|e| SignerError::Keystore(format!("{}: {e}", path.display())))?;
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| SignerError::io("create", path, e))?;
    file.write_all(&body).and_then(|()| file.sync_all()).map_err(|e| SignerError::io("write", path, e))
}
