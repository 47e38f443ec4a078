//! AWS KMS backend (feature `kms`): secp256k1 keys of spec `ECC_SECG_P256K1`.
//!
//! * A key `id` is the KMS key behind the alias `alias/molly/<id>`, created
//!   with `KeyUsage=SIGN_VERIFY` and tagged `molly-key-id=<id>`.
//! * `GetPublicKey` returns SubjectPublicKeyInfo DER, parsed with k256.
//! * `sign_digest` sends `Sign` with `MessageType=DIGEST`,
//!   `SigningAlgorithm=ECDSA_SHA_256` and the 32-byte digest as the message:
//!   KMS signs the digest as given (no hashing), which is what Ethereum's
//!   Keccak-256 and Bitcoin's sighash need. The DER signature is decoded,
//!   normalised to low-S and given its recovery id by trial recovery.
//! * [`KmsSigner::sign_raw_sha256`] sends `MessageType=RAW` (KMS hashes the
//!   message with SHA-256). Molly does not use it for chains; it exists
//!   because the local emulator (moto 5.2.5) signs DIGEST requests wrongly
//!   (it hashes the digest again) and RAW correctly, so the tests exercise
//!   key creation, SPKI/DER parsing, low-S and recovery through RAW.
//! * Ed25519 is refused: AWS has `ECC_NIST_EDWARDS25519`, but the emulator
//!   does not, so it could not be tested here.
//!
//! Credentials come from `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
//! optionally `AWS_SESSION_TOKEN` (no instance-role chain: that needs
//! `aws-config`, left out to keep the build lean).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use aws_sdk_kms::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kms::error::DisplayErrorContext;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{KeySpec, KeyUsageType, MessageType, SigningAlgorithmSpec, Tag};
use k256::pkcs8::DecodePublicKey;
use sha2::{Digest, Sha256};

use crate::error::{Result, SignerError};
use crate::signer::Signer;
use crate::types::{DerivationPath, EcdsaSignature, Ed25519Signature, KeyId, KeyInfo, PublicKey, Scheme};

const BACKEND: &str = "aws-kms";
const ALIAS_PREFIX: &str = "alias/molly/";

/// Signer over AWS KMS.
#[derive(Debug)]
pub struct KmsSigner {
    client: aws_sdk_kms::Client,
    keys: Mutex<HashMap<KeyId, k256::ecdsa::VerifyingKey>>,
}

fn kms(op: &'static str) -> impl FnOnce(String) -> SignerError {
    move |detail| SignerError::Kms { op, detail }
}

fn alias(id: &KeyId) -> String {
    format!("{ALIAS_PREFIX}{id}")
}

impl KmsSigner {
    /// Client for `region`, optionally at `endpoint` (an emulator), with
    /// credentials from the standard `AWS_*` environment variables.
    pub async fn connect(region: &str, endpoint: Option<&str>) -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok();
        let (Some(access), Some(secret)) = (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) else {
            return Err(SignerError::Config(
                "aws kms: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set".into(),
            ));
        };
        let credentials = Credentials::new(access, secret, var("AWS_SESSION_TOKEN"), None, "env");
        let mut config = aws_sdk_kms::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.to_string()))
            .credentials_provider(credentials);
        if let Some(endpoint) = endpoint {
            config = config.endpoint_url(endpoint);
        }
        Ok(Self::with_client(aws_sdk_kms::Client::from_conf(config.build())))
    }

    /// Over an existing SDK client.
    pub fn with_client(client: aws_sdk_kms::Client) -> Self {
        KmsSigner { client, keys: Mutex::new(HashMap::new()) }
    }

    async fn verifying_key(&self, id: &KeyId) -> Result<k256::ecdsa::VerifyingKey> {
        if let Some(k) = self.keys.lock().ok().and_then(|m| m.get(id).copied()) {
            return Ok(k);
        }
        let out = self.client.get_public_key().key_id(alias(id)).send().await.map_err(|e| {
            let not_found = e.as_service_error().is_some_and(|s| s.is_not_found_exception());
            if not_found {
                SignerError::UnknownKey(id.to_string())
            } else {
                kms("get public key")(DisplayErrorContext(e).to_string())
            }
        })?;
        let der =
            out.public_key().ok_or_else(|| kms("get public key")("response has no public key".into()))?;
        let key = k256::PublicKey::from_public_key_der(der.as_ref()).map_err(|e| {
            SignerError::BadBackendOutput {
                backend: BACKEND,
                what: "public key",
                detail: format!("not a secp256k1 SubjectPublicKeyInfo: {e}"),
            }
        })?;
        let key = k256::ecdsa::VerifyingKey::from(key);
        if let Ok(mut m) = self.keys.lock() {
            m.insert(id.clone(), key);
        }
        Ok(key)
    }

    async fn sign(
        &self,
        id: &KeyId,
        message: &[u8],
        message_type: MessageType,
        digest: &[u8; 32],
    ) -> Result<EcdsaSignature> {
        let key = self.verifying_key(id).await?;
        let out = self
            .client
            .sign()
            .key_id(alias(id))
            .message(Blob::new(message))
            .message_type(message_type)
            .signing_algorithm(SigningAlgorithmSpec::EcdsaSha256)
            .send()
            .await
            .map_err(|e| kms("sign")(DisplayErrorContext(e).to_string()))?;
        let der = out.signature().ok_or_else(|| kms("sign")("response has no signature".into()))?;
        let sig =
            k256::ecdsa::Signature::from_der(der.as_ref()).map_err(|e| SignerError::BadBackendOutput {
                backend: BACKEND,
                what: "ecdsa signature",
                detail: format!("not a DER ECDSA signature: {e}"),
            })?;
        crate::ecdsa::normalise_and_recover(BACKEND, digest, sig, &key)
    }

    /// Signs SHA-256(`message`) through `MessageType=RAW` (see the module
    /// docs: for emulators; chains use [`Signer::sign_digest`]).
    pub async fn sign_raw_sha256(&self, id: &KeyId, message: &[u8]) -> Result<EcdsaSignature> {
        let digest: [u8; 32] = Sha256::digest(message).into();
        self.sign(id, message, MessageType::Raw, &digest).await
    }
}

#[async_trait]
impl Signer for KmsSigner {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    /// Refused: KMS generates its keys inside the service and has no
    /// operation that derives a key from a seed (nor imports one for
    /// `ECC_SECG_P256K1` signing keys here).
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
            advice: "aws kms has no bip32/slip-0010 derivation; keep hd-derived deposit keys in a software \
                     keystore signer (or an hsm with vendor bip32 mechanisms) and use kms for generated \
                     hot/warm keys",
        })
    }

    async fn generate(&self, id: &KeyId, scheme: Scheme) -> Result<KeyInfo> {
        if scheme != Scheme::Secp256k1 {
            return Err(SignerError::UnsupportedScheme { backend: BACKEND, scheme });
        }
        match self.client.describe_key().key_id(alias(id)).send().await {
            Ok(_) => return Err(SignerError::KeyExists(id.to_string())),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found_exception()) => {}
            Err(e) => return Err(kms("describe key")(DisplayErrorContext(e).to_string())),
        }
        let tag = Tag::builder()
            .tag_key("molly-key-id")
            .tag_value(id.as_str())
            .build()
            .map_err(|e| kms("create key")(e.to_string()))?;
        let created = self
            .client
            .create_key()
            .key_spec(KeySpec::EccSecgP256K1)
            .key_usage(KeyUsageType::SignVerify)
            .description(format!("molly signer key {id}"))
            .tags(tag)
            .send()
            .await
            .map_err(|e| kms("create key")(DisplayErrorContext(e).to_string()))?;
        let key_id = created
            .key_metadata()
            .map(|m| m.key_id().to_string())
            .ok_or_else(|| kms("create key")("response has no key metadata".into()))?;
        self.client
            .create_alias()
            .alias_name(alias(id))
            .target_key_id(key_id)
            .send()
            .await
            .map_err(|e| kms("create alias")(DisplayErrorContext(e).to_string()))?;
        let key = self.verifying_key(id).await?;
        Ok(KeyInfo {
            id: id.clone(),
            scheme,
            public_key: PublicKey::secp256k1(&key),
            backend: BACKEND.into(),
            created_unix: created
                .key_metadata()
                .and_then(|m| m.creation_date())
                .and_then(|d| u64::try_from(d.secs()).ok()),
            derivation: None,
        })
    }

    async fn public_key(&self, id: &KeyId) -> Result<PublicKey> {
        Ok(PublicKey::secp256k1(&self.verifying_key(id).await?))
    }

    async fn sign_digest(&self, id: &KeyId, digest: &[u8; 32]) -> Result<EcdsaSignature> {
        self.sign(id, digest, MessageType::Digest, digest).await
    }

    async fn sign_message(&self, _id: &KeyId, _message: &[u8]) -> Result<Ed25519Signature> {
        Err(SignerError::UnsupportedScheme { backend: BACKEND, scheme: Scheme::Ed25519 })
    }

    async fn list(&self) -> Result<Vec<KeyInfo>> {
        let mut ids = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_aliases()
                .set_marker(marker.clone())
                .limit(100)
                .send()
                .await
                .map_err(|e| kms("list aliases")(DisplayErrorContext(e).to_string()))?;
            for a in page.aliases() {
                if let Some(name) = a.alias_name().and_then(|n| n.strip_prefix(ALIAS_PREFIX)) {
                    if let Ok(id) = KeyId::new(name) {
                        ids.push(id);
                    }
                }
            }
            match (page.truncated(), page.next_marker()) {
                (true, Some(next)) => marker = Some(next.to_string()),
                _ => break,
            }
        }
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let key = self.verifying_key(&id).await?;
            out.push(KeyInfo {
                id,
                scheme: Scheme::Secp256k1,
                public_key: PublicKey::secp256k1(&key),
                backend: BACKEND.into(),
                created_unix: None,
                derivation: None,
            });
        }
        Ok(out)
    }
}
