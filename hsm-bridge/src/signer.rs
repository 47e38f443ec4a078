//! The one `Signer` trait every backend implements.

use async_trait::async_trait;

use crate::error::Result;
use crate::types::{DerivationPath, EcdsaSignature, Ed25519Signature, KeyId, KeyInfo, PublicKey, Scheme};

/// A holder of private keys that signs on request and never hands a private
/// key out. Implementations: [`crate::keystore::SoftwareKeystore`],
/// [`crate::pkcs11::Pkcs11Signer`] and (feature `kms`) `crate::kms::KmsSigner`.
#[async_trait]
pub trait Signer: Send + Sync + std::fmt::Debug {
    /// Short backend name (`software`, `pkcs11`, `aws-kms`).
    fn backend(&self) -> &'static str;

    /// Generates a new key named `id`. Fails with `KeyExists` if the id is taken.
    async fn generate(&self, id: &KeyId, scheme: Scheme) -> Result<KeyInfo>;

    /// Creates key `id` whose private key is derived inside the backend from
    /// the seed `seed_id` it already holds, along `path` (BIP32 for
    /// secp256k1, SLIP-0010 with every level hardened for Ed25519). Neither
    /// the seed nor the derived key leaves the backend. Deriving the same
    /// id, seed, scheme and path again returns the existing key; a taken id
    /// is `KeyExists`; a path already derived under another id is refused.
    /// Backends that cannot derive answer [`crate::SignerError::Unsupported`].
    async fn derive(
        &self,
        id: &KeyId,
        seed_id: &KeyId,
        scheme: Scheme,
        path: &DerivationPath,
    ) -> Result<KeyInfo>;

    /// The public key of `id`.
    async fn public_key(&self, id: &KeyId) -> Result<PublicKey>;

    /// secp256k1 ECDSA over a 32-byte digest (the caller hashes: Keccak-256
    /// for Ethereum/Tron, double SHA-256 or BIP-143/341 sighash for Bitcoin).
    /// Returns a low-S signature and its recovery id.
    async fn sign_digest(&self, id: &KeyId, digest: &[u8; 32]) -> Result<EcdsaSignature>;

    /// Ed25519 over a whole message (Solana signs the serialized message).
    async fn sign_message(&self, id: &KeyId, message: &[u8]) -> Result<Ed25519Signature>;

    /// Every key this backend holds, sorted by id.
    async fn list(&self) -> Result<Vec<KeyInfo>>;
}
