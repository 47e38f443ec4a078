//! PKCS#11 backend through `cryptoki`, tested against SoftHSM2.
//!
//! * secp256k1: `CKM_EC_KEY_PAIR_GEN` with `CKA_EC_PARAMS` = the DER OID
//!   1.3.132.0.10 (`06 05 2B 81 04 00 0A`); `CKM_ECDSA` over the 32-byte digest
//!   returns `r ‖ s`, which is normalised to low-S and given its recovery id by
//!   trial recovery with k256 against the key's public point.
//! * Ed25519: `CKM_EC_EDWARDS_KEY_PAIR_GEN` with the curve name
//!   `edwards25519` as `CKA_EC_PARAMS`; `CKM_EDDSA` (pure Ed25519).
//! * `CKA_EC_POINT` comes back DER-wrapped (an OCTET STRING around the point).
//!
//! Keys are token objects labelled and identified (`CKA_LABEL`, `CKA_ID`) by
//! the key id; private keys are `CKA_SENSITIVE`, not `CKA_EXTRACTABLE`.
//! cryptoki calls block, so each runs on tokio's blocking pool; one logged-in
//! read-write session is shared behind a mutex.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Function, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::eddsa::{EddsaParams, EddsaSignatureScheme};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use k256::pkcs8::der::asn1::OctetStringRef;
use k256::pkcs8::der::Decode;
use zeroize::Zeroizing;

use crate::error::{Result, SignerError};
use crate::signer::Signer;
use crate::types::{DerivationPath, EcdsaSignature, Ed25519Signature, KeyId, KeyInfo, PublicKey, Scheme};

const BACKEND: &str = "pkcs11";

/// DER of the secp256k1 OID 1.3.132.0.10.
pub const SECP256K1_PARAMS: [u8; 7] = [0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x0A];
/// DER PrintableString "edwards25519" (the form SoftHSM2 2.6 accepts).
pub const ED25519_PARAMS: [u8; 14] =
    [0x13, 0x0c, b'e', b'd', b'w', b'a', b'r', b'd', b's', b'2', b'5', b'5', b'1', b'9'];

/// Where the PKCS#11 module and token are.
#[derive(Clone)]
pub struct Pkcs11Config {
    /// Path of the module (`/usr/lib/softhsm/libsofthsm2.so` for SoftHSM2).
    pub module: PathBuf,
    /// Token label.
    pub token_label: String,
    /// User PIN.
    pub user_pin: Zeroizing<String>,
}

impl std::fmt::Debug for Pkcs11Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Config")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("user_pin", &"<redacted>")
            .finish()
    }
}

#[derive(Clone)]
struct Cached {
    private: ObjectHandle,
    public: PublicKey,
}

struct Inner {
    session: Mutex<Session>,
    cache: Mutex<HashMap<KeyId, Cached>>,
}

/// Signer over one PKCS#11 token.
#[derive(Clone)]
pub struct Pkcs11Signer {
    inner: Arc<Inner>,
    label: String,
}

impl std::fmt::Debug for Pkcs11Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkcs11Signer").field("token", &self.label).finish_non_exhaustive()
    }
}

/// Serialises key generation in this process (see `generate`).
static GENERATE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn ck(op: &'static str) -> impl FnOnce(CkError) -> SignerError {
    move |source| SignerError::Pkcs11 { op, source }
}

/// Loads and initialises a PKCS#11 module (an already-initialised module is fine).
pub fn load_module(module: &std::path::Path) -> Result<Pkcs11> {
    let ctx = Pkcs11::new(module).map_err(ck("load module"))?;
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, Function::Initialize)) => Ok(ctx),
        Err(e) => Err(ck("initialize")(e)),
    }
}

impl Pkcs11Signer {
    /// Loads the module, finds the token by label, opens a session and logs in.
    pub fn open(config: &Pkcs11Config) -> Result<Self> {
        let ctx = load_module(&config.module)?;
        Self::with_context(&ctx, &config.token_label, &config.user_pin)
    }

    /// Same as [`Pkcs11Signer::open`] over an already-loaded module.
    pub fn with_context(ctx: &Pkcs11, token_label: &str, user_pin: &str) -> Result<Self> {
        let mut found = None;
        for slot in ctx.get_slots_with_token().map_err(ck("list slots"))? {
            let info = ctx.get_token_info(slot).map_err(ck("token info"))?;
            if info.label().trim_end() == token_label {
                found = Some(slot);
                break;
            }
        }
        let slot =
            found.ok_or_else(|| SignerError::Config(format!("no pkcs#11 token labelled {token_label:?}")))?;
        let session = ctx.open_rw_session(slot).map_err(ck("open session"))?;
        match session.login(UserType::User, Some(&AuthPin::new(user_pin.into()))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(e) => return Err(ck("login")(e)),
        }
        Ok(Pkcs11Signer {
            inner: Arc::new(Inner { session: Mutex::new(session), cache: Mutex::new(HashMap::new()) }),
            label: token_label.to_string(),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner)).await.map_err(|e| SignerError::Task(e.to_string()))?
    }
}

impl Inner {
    fn session(&self) -> Result<std::sync::MutexGuard<'_, Session>> {
        self.session.lock().map_err(|_| SignerError::Task("pkcs#11 session lock poisoned".into()))
    }

    fn lookup(&self, id: &KeyId) -> Result<Cached> {
        if let Some(hit) = self.cache.lock().ok().and_then(|c| c.get(id).cloned()) {
            return Ok(hit);
        }
        let session = self.session()?;
        let private = find_one(&session, id, ObjectClass::PRIVATE_KEY)?
            .ok_or_else(|| SignerError::UnknownKey(id.to_string()))?;
        let public_handle = find_one(&session, id, ObjectClass::PUBLIC_KEY)?
            .ok_or_else(|| SignerError::UnknownKey(id.to_string()))?;
        let public = read_public(&session, public_handle)?;
        drop(session);
        let hit = Cached { private, public };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(id.clone(), hit.clone());
        }
        Ok(hit)
    }
}

fn find_one(session: &Session, id: &KeyId, class: ObjectClass) -> Result<Option<ObjectHandle>> {
    let found = session
        .find_objects(&[Attribute::Class(class), Attribute::Id(id.as_str().as_bytes().to_vec())])
        .map_err(ck("find objects"))?;
    Ok(found.into_iter().next())
}

fn read_public(session: &Session, handle: ObjectHandle) -> Result<PublicKey> {
    let attrs = session
        .get_attributes(handle, &[AttributeType::KeyType, AttributeType::EcPoint])
        .map_err(ck("read public key"))?;
    let mut key_type = None;
    let mut point = None;
    for attr in attrs {
        match attr {
            Attribute::KeyType(t) => key_type = Some(t),
            Attribute::EcPoint(p) => point = Some(p),
            _ => {}
        }
    }
    let bad = |detail: String| SignerError::BadBackendOutput { backend: BACKEND, what: "public key", detail };
    let point = point.ok_or_else(|| bad("no CKA_EC_POINT".into()))?;
    let raw = unwrap_point(&point).map_err(bad)?;
    match key_type {
        Some(KeyType::EC) => {
            let key = k256::ecdsa::VerifyingKey::from_sec1_bytes(raw)
                .map_err(|e| bad(format!("secp256k1 point: {e}")))?;
            Ok(PublicKey::secp256k1(&key))
        }
        Some(KeyType::EC_EDWARDS) => {
            let bytes: [u8; 32] =
                raw.try_into().map_err(|_| bad(format!("ed25519 point of {} bytes", raw.len())))?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes)
                .map_err(|e| bad(format!("ed25519 point: {e}")))?;
            Ok(PublicKey::ed25519(&key))
        }
        other => Err(bad(format!("unexpected key type {other:?}"))),
    }
}

/// `CKA_EC_POINT` is specified as a DER OCTET STRING around the point; some
/// modules return the bare point. Accept both.
fn unwrap_point(value: &[u8]) -> std::result::Result<&[u8], String> {
    match OctetStringRef::from_der(value) {
        Ok(octets) => Ok(octets.as_bytes()),
        Err(_) if value.len() == 32 || (value.len() == 65 && value[0] == 0x04) => Ok(value),
        Err(e) => Err(format!("CKA_EC_POINT is not a DER octet string: {e}")),
    }
}

#[async_trait]
impl Signer for Pkcs11Signer {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    /// Refused: standard PKCS#11 (and SoftHSM2) has no BIP32/SLIP-0010
    /// mechanism, and deriving outside the token and importing the result
    /// would put the seed and keys outside the HSM.
    async fn derive(
        &self,
        _id: &KeyId,
        _seed_id: &KeyId,
        _scheme: Scheme,
        _path: &DerivationPath,
    ) -> Result<KeyInfo> {
        Err(SignerError::Unsupported {
            backend: BACKEND,
            what: "deriving keys from a seed",
            advice: "pkcs#11 defines no bip32/slip-0010 mechanism (softhsm2 has none); derive inside an hsm \
                     that offers vendor bip32 mechanisms, or keep hd-derived keys in a software keystore \
                     signer",
        })
    }

    async fn generate(&self, id: &KeyId, scheme: Scheme) -> Result<KeyInfo> {
        let id = id.clone();
        self.blocking(move |inner| {
            // One generation at a time in this process: the exists-check and
            // the creation must not interleave with another generate of the
            // same id. Generation is rare; signing is not serialised.
            let _one_at_a_time = GENERATE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let session = inner.session()?;
            if find_one(&session, &id, ObjectClass::PRIVATE_KEY)?.is_some()
                || find_one(&session, &id, ObjectClass::PUBLIC_KEY)?.is_some()
            {
                return Err(SignerError::KeyExists(id.to_string()));
            }
            let (mechanism, params) = match scheme {
                Scheme::Secp256k1 => (Mechanism::EccKeyPairGen, SECP256K1_PARAMS.to_vec()),
                Scheme::Ed25519 => (Mechanism::EccEdwardsKeyPairGen, ED25519_PARAMS.to_vec()),
            };
            let name = id.as_str().as_bytes().to_vec();
            let public_template = [
                Attribute::Token(true),
                Attribute::Private(false),
                Attribute::Verify(true),
                Attribute::EcParams(params),
                Attribute::Label(name.clone()),
                Attribute::Id(name.clone()),
            ];
            let private_template = [
                Attribute::Token(true),
                Attribute::Private(true),
                Attribute::Sensitive(true),
                Attribute::Extractable(false),
                Attribute::Sign(true),
                Attribute::Label(name.clone()),
                Attribute::Id(name),
            ];
            let (public_handle, private) = session
                .generate_key_pair(&mechanism, &public_template, &private_template)
                .map_err(ck("generate key pair"))?;
            let public = read_public(&session, public_handle)?;
            drop(session);
            if let Ok(mut cache) = inner.cache.lock() {
                cache.insert(id.clone(), Cached { private, public: public.clone() });
            }
            Ok(KeyInfo {
                id,
                scheme,
                public_key: public,
                backend: BACKEND.into(),
                created_unix: None,
                derivation: None,
            })
        })
        .await
    }

    async fn public_key(&self, id: &KeyId) -> Result<PublicKey> {
        let id = id.clone();
        self.blocking(move |inner| Ok(inner.lookup(&id)?.public)).await
    }

    async fn sign_digest(&self, id: &KeyId, digest: &[u8; 32]) -> Result<EcdsaSignature> {
        let id = id.clone();
        let digest = *digest;
        self.blocking(move |inner| {
            let key = inner.lookup(&id)?;
            if key.public.scheme != Scheme::Secp256k1 {
                return Err(SignerError::WrongScheme {
                    id: id.to_string(),
                    actual: key.public.scheme,
                    wanted: Scheme::Secp256k1,
                });
            }
            let raw = inner
                .session()?
                .sign(&Mechanism::Ecdsa, key.private, &digest)
                .map_err(ck("sign (CKM_ECDSA)"))?;
            let sig = crate::ecdsa::from_raw(BACKEND, &raw)?;
            crate::ecdsa::normalise_and_recover(BACKEND, &digest, sig, &key.public.to_k256()?)
        })
        .await
    }

    async fn sign_message(&self, id: &KeyId, message: &[u8]) -> Result<Ed25519Signature> {
        let id = id.clone();
        let message = message.to_vec();
        self.blocking(move |inner| {
            let key = inner.lookup(&id)?;
            if key.public.scheme != Scheme::Ed25519 {
                return Err(SignerError::WrongScheme {
                    id: id.to_string(),
                    actual: key.public.scheme,
                    wanted: Scheme::Ed25519,
                });
            }
            let mechanism = Mechanism::Eddsa(EddsaParams::new(EddsaSignatureScheme::Pure));
            let raw =
                inner.session()?.sign(&mechanism, key.private, &message).map_err(ck("sign (CKM_EDDSA)"))?;
            let bytes: [u8; 64] = raw.as_slice().try_into().map_err(|_| SignerError::BadBackendOutput {
                backend: BACKEND,
                what: "ed25519 signature",
                detail: format!("{} bytes, expected 64", raw.len()),
            })?;
            Ok(Ed25519Signature(bytes))
        })
        .await
    }

    async fn list(&self) -> Result<Vec<KeyInfo>> {
        self.blocking(move |inner| {
            let session = inner.session()?;
            let handles = session
                .find_objects(&[Attribute::Class(ObjectClass::PUBLIC_KEY)])
                .map_err(ck("find objects"))?;
            let mut out = Vec::new();
            for handle in handles {
                let attrs =
                    session.get_attributes(handle, &[AttributeType::Id]).map_err(ck("read key id"))?;
                let Some(Attribute::Id(raw_id)) = attrs.into_iter().next() else {
                    continue;
                };
                // Objects not created by Molly (ids that are not key ids) are skipped.
                let Ok(id) =
                    String::from_utf8(raw_id).map_err(|_| ()).and_then(|s| KeyId::new(s).map_err(|_| ()))
                else {
                    continue;
                };
                let public = read_public(&session, handle)?;
                out.push(KeyInfo {
                    id,
                    scheme: public.scheme,
                    public_key: public,
                    backend: BACKEND.into(),
                    created_unix: None,
                    derivation: None,
                });
            }
            out.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(out)
        })
        .await
    }
}
