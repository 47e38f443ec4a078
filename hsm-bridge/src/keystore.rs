//! The encrypted software keystore: the development default.
//!
//! Layout of a keystore directory:
//!
//! ```text
//! <dir>/keystore.json         argon2id parameters + salt, and a check value
//! <dir>/keys/<key id>.json    one key: scheme, public key, [seed id + path], nonce, ciphertext
//! <dir>/seeds/<seed id>.json  one BIP39 seed (64 bytes, not the mnemonic): nonce, ciphertext
//! ```
//!
//! The passphrase goes through argon2id once (when the keystore is opened) to
//! a 32-byte key; every private key is sealed with XChaCha20-Poly1305 under a
//! fresh random 24-byte nonce, with `molly-keystore-v1 ‖ id ‖ scheme` as
//! associated data so a key file cannot be renamed or relabelled (a derived
//! key adds `‖ seed id ‖ path`, so its origin cannot be relabelled either).
//! Seeds are sealed the same way with `molly-keystore-seed-v1 ‖ id ‖
//! bip39-seed`. Secrets in memory (derived key, decrypted key and seed
//! bytes, signing keys) are zeroized on drop.
//!
//! **HD keys.** [`SoftwareKeystore::import_seed`] seals an installation's
//! BIP39 seed once; [`Signer::derive`] then derives a key from it *inside*
//! the keystore (`molly-chains`' BIP32 for secp256k1, SLIP-0010 for
//! Ed25519), seals the derived private key like a generated one and records
//! its seed id and path. Seeds are not kept in memory: each `derive` reads
//! and decrypts its seed file and drops it. Derived keys are persisted, not
//! re-derived on open, so they keep working if the seed file is later
//! removed from this signer (an operator may import, derive what a signer
//! needs, and delete the seed from it).

use std::collections::{BTreeMap, HashMap};
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
use crate::types::{
    Derivation, DerivationPath, EcdsaSignature, Ed25519Signature, KeyId, KeyInfo, PublicKey, Scheme,
};

const BACKEND: &str = "software";
const CHECK_PLAINTEXT: &[u8] = b"molly-keystore-check-v1";
const AAD_PREFIX: &[u8] = b"molly-keystore-v1\0";
const SEED_AAD_PREFIX: &[u8] = b"molly-keystore-seed-v1\0";
const SEED_KIND: &str = "bip39-seed";

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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    derivation: Option<Derivation>,
    #[serde(with = "crate::hexser")]
    nonce: [u8; 24],
    #[serde(with = "crate::hexser")]
    ciphertext: Vec<u8>,
}

/// What a seed file holds: a BIP39 seed (never the mnemonic), sealed.
#[derive(Debug, Serialize, Deserialize)]
struct SeedFile {
    version: u32,
    id: KeyId,
    kind: String,
    created_unix: u64,
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

#[derive(Default)]
struct Table {
    keys: BTreeMap<KeyId, Entry>,
    /// Which key holds each (scheme, seed, path): one key per derivation.
    derived: HashMap<(Scheme, Derivation), KeyId>,
}

impl Table {
    fn insert(&mut self, entry: Entry) {
        if let Some(d) = &entry.info.derivation {
            self.derived.insert((entry.info.scheme, d.clone()), entry.info.id.clone());
        }
        self.keys.insert(entry.info.id.clone(), entry);
    }
}

/// The encrypted software keystore. See the module docs for the format.
pub struct SoftwareKeystore {
    dir: PathBuf,
    cipher: XChaCha20Poly1305,
    keys: RwLock<Table>,
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
        let cipher = XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(&key[..]));
        let mut check_nonce = [0u8; 24];
        OsRng.fill_bytes(&mut check_nonce);
        let check = cipher
            .encrypt(XNonce::from_slice(&check_nonce), CHECK_PLAINTEXT)
            .map_err(|_| SignerError::Keystore("sealing the check value failed".into()))?;
        let header = Header { version: 1, kdf: "argon2id".into(), params, salt, check_nonce, check };
        write_new(&header_path, &header)?;
        Ok(SoftwareKeystore { dir: dir.to_path_buf(), cipher, keys: RwLock::new(Table::default()) })
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
        let cipher = XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(&key[..]));
        let check = cipher
            .decrypt(XNonce::from_slice(&header.check_nonce), header.check.as_slice())
            .map_err(|_| SignerError::Keystore("wrong passphrase".into()))?;
        if check != CHECK_PLAINTEXT {
            return Err(SignerError::Keystore("wrong passphrase".into()));
        }
        let keys_dir = dir.join("keys");
        let mut keys = Table::default();
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
                        Payload {
                            msg: &file.ciphertext,
                            aad: &aad(&file.id, file.scheme, file.derivation.as_ref()),
                        },
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
            keys.insert(Entry {
                info: KeyInfo {
                    id: file.id,
                    scheme: file.scheme,
                    public_key: public,
                    backend: BACKEND.into(),
                    created_unix: Some(file.created_unix),
                    derivation: file.derivation,
                },
                secret,
            });
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
        let entry = keys.keys.get(id).ok_or_else(|| SignerError::UnknownKey(id.to_string()))?;
        f(entry)
    }

    /// Seals the BIP39 seed of an English `mnemonic` (checksum verified) and
    /// `passphrase` as seed `seed_id`. Only the 64-byte seed is stored, never
    /// the mnemonic; the file is never overwritten (`SeedExists`). Errors
    /// name a bad word's position, never the words. Seeds cannot be read
    /// back: they are used only by [`Signer::derive`].
    pub fn import_seed(&self, seed_id: &KeyId, mnemonic: &str, passphrase: &str) -> Result<()> {
        let seed = molly_chains::Seed::from_mnemonic(mnemonic, passphrase)
            .map_err(|e| SignerError::Derivation(e.to_string()))?;
        let seeds_dir = self.dir.join("seeds");
        fs::create_dir_all(&seeds_dir).map_err(|e| SignerError::io("create", &seeds_dir, e))?;
        let path = seeds_dir.join(format!("{seed_id}.json"));
        if path.exists() {
            return Err(SignerError::SeedExists(seed_id.to_string()));
        }
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: seed.as_bytes(), aad: &seed_aad(seed_id) })
            .map_err(|_| SignerError::Keystore("sealing the seed failed".into()))?;
        let file = SeedFile {
            version: 1,
            id: seed_id.clone(),
            kind: SEED_KIND.into(),
            created_unix: now_unix(),
            nonce,
            ciphertext,
        };
        write_new(&path, &file).map_err(|e| match e {
            SignerError::Io { source, .. } if source.kind() == std::io::ErrorKind::AlreadyExists => {
                SignerError::SeedExists(seed_id.to_string())
            }
            other => other,
        })
    }

    /// The ids of the sealed seeds, sorted.
    pub fn seed_ids(&self) -> Result<Vec<KeyId>> {
        let seeds_dir = self.dir.join("seeds");
        let listing = match fs::read_dir(&seeds_dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(SignerError::io("read", &seeds_dir, e)),
        };
        let mut ids = Vec::new();
        for item in listing {
            let path = item.map_err(|e| SignerError::io("read", &seeds_dir, e))?.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let file: SeedFile = read_json(&path)?;
            ids.push(file.id);
        }
        ids.sort();
        Ok(ids)
    }

    /// Reads and unseals seed `seed_id` (the caller drops it, zeroizing it, as
    /// soon as it has derived).
    fn open_seed(&self, seed_id: &KeyId) -> Result<molly_chains::Seed> {
        let path = self.dir.join("seeds").join(format!("{seed_id}.json"));
        if !path.exists() {
            return Err(SignerError::UnknownSeed(seed_id.to_string()));
        }
        let file: SeedFile = read_json(&path)?;
        if file.version != 1 || file.kind != SEED_KIND || &file.id != seed_id {
            return Err(SignerError::Keystore(format!(
                "{}: not a version 1 {SEED_KIND} file for seed {seed_id}",
                path.display()
            )));
        }
        let plain = Zeroizing::new(
            self.cipher
                .decrypt(
                    XNonce::from_slice(&file.nonce),
                    Payload { msg: &file.ciphertext, aad: &seed_aad(seed_id) },
                )
                .map_err(|_| {
                    SignerError::Keystore(format!(
                        "{}: authentication failed (tampered or renamed)",
                        path.display()
                    ))
                })?,
        );
        molly_chains::Seed::from_bytes(&plain)
            .map_err(|e| SignerError::Keystore(format!("{}: {e}", path.display())))
    }

    /// Seals `secret` as key `id`, writes its file and adds it to the table.
    fn store(
        &self,
        keys: &mut Table,
        id: &KeyId,
        scheme: Scheme,
        secret: Secret,
        plain: &[u8],
        derivation: Option<Derivation>,
    ) -> Result<KeyInfo> {
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut nonce);
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload { msg: plain, aad: &aad(id, scheme, derivation.as_ref()) },
            )
            .map_err(|_| SignerError::Keystore("sealing the key failed".into()))?;
        let created_unix = now_unix();
        let info = KeyInfo {
            id: id.clone(),
            scheme,
            public_key: public_of(&secret),
            backend: BACKEND.into(),
            created_unix: Some(created_unix),
            derivation,
        };
        let file = KeyFile {
            version: 1,
            id: id.clone(),
            scheme,
            created_unix,
            public_key: info.public_key.clone(),
            derivation: info.derivation.clone(),
            nonce,
            ciphertext,
        };
        write_new(&self.dir.join("keys").join(format!("{id}.json")), &file)?;
        keys.insert(Entry { info: info.clone(), secret });
        Ok(info)
    }
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[async_trait]
impl Signer for SoftwareKeystore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn generate(&self, id: &KeyId, scheme: Scheme) -> Result<KeyInfo> {
        let mut keys =
            self.keys.write().map_err(|_| SignerError::Keystore("key table lock poisoned".into()))?;
        if keys.keys.contains_key(id) {
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
        self.store(&mut keys, id, scheme, secret, &plain, None)
    }

    async fn derive(
        &self,
        id: &KeyId,
        seed_id: &KeyId,
        scheme: Scheme,
        path: &DerivationPath,
    ) -> Result<KeyInfo> {
        let derivation = Derivation { seed_id: seed_id.clone(), path: path.clone() };
        let mut keys =
            self.keys.write().map_err(|_| SignerError::Keystore("key table lock poisoned".into()))?;
        if let Some(entry) = keys.keys.get(id) {
            if entry.info.scheme == scheme && entry.info.derivation.as_ref() == Some(&derivation) {
                return Ok(entry.info.clone());
            }
            return Err(SignerError::KeyExists(id.to_string()));
        }
        if let Some(other) = keys.derived.get(&(scheme, derivation.clone())) {
            return Err(SignerError::Derivation(format!(
                "the {scheme} key of seed {:?} at {path} is already derived as key {:?}",
                seed_id.as_str(),
                other.as_str()
            )));
        }
        let seed = self.open_seed(seed_id)?;
        let plain: Zeroizing<Vec<u8>> = match scheme {
            Scheme::Secp256k1 => {
                let secret = molly_chains::secp::derive_secret_key(&seed, path)
                    .map_err(|e| SignerError::Derivation(e.to_string()))?;
                Zeroizing::new(secret.to_vec())
            }
            Scheme::Ed25519 => {
                let xpriv = molly_chains::slip10::Ed25519Xpriv::derive(&seed, path)
                    .map_err(|e| SignerError::Derivation(e.to_string()))?;
                Zeroizing::new(xpriv.secret().to_vec())
            }
        };
        drop(seed);
        let secret = secret_from_bytes(id, scheme, &plain)?;
        self.store(&mut keys, id, scheme, secret, &plain, Some(derivation))
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
        Ok(keys.keys.values().map(|e| e.info.clone()).collect())
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

/// `molly-keystore-v1 ‖ id ‖ 0 ‖ scheme`, and for a derived key
/// `‖ 0 ‖ derived ‖ 0 ‖ seed id ‖ 0 ‖ path` (generated keys keep the
/// original form, so existing key files still open).
fn aad(id: &KeyId, scheme: Scheme, derivation: Option<&Derivation>) -> Vec<u8> {
    let mut out = AAD_PREFIX.to_vec();
    out.extend_from_slice(id.as_str().as_bytes());
    out.push(0);
    out.extend_from_slice(scheme.to_string().as_bytes());
    if let Some(d) = derivation {
        out.extend_from_slice(b"\0derived\0");
        out.extend_from_slice(d.seed_id.as_str().as_bytes());
        out.push(0);
        out.extend_from_slice(d.path.to_string().as_bytes());
    }
    out
}

/// `molly-keystore-seed-v1 ‖ seed id ‖ 0 ‖ bip39-seed`.
fn seed_aad(seed_id: &KeyId) -> Vec<u8> {
    let mut out = SEED_AAD_PREFIX.to_vec();
    out.extend_from_slice(seed_id.as_str().as_bytes());
    out.push(0);
    out.extend_from_slice(SEED_KIND.as_bytes());
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
