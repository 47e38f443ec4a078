//! Key ids, schemes, public keys and signatures: the values that cross the
//! signer's boundary (never secrets).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Result, SignerError};

/// Longest key id, in bytes.
pub const MAX_KEY_ID_LEN: usize = 64;

/// A key's name inside a backend: 1 to [`MAX_KEY_ID_LEN`] bytes of
/// `[A-Za-z0-9._-]`, not starting with `.` (ids become file names and
/// PKCS#11 labels).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId(String);

impl KeyId {
    /// Validates `id`.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let reason = if id.is_empty() {
            Some("empty")
        } else if id.len() > MAX_KEY_ID_LEN {
            Some("longer than 64 bytes")
        } else if id.starts_with('.') {
            Some("starts with '.'")
        } else if !id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')) {
            Some("only A-Z, a-z, 0-9, '.', '_' and '-' are allowed")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(SignerError::InvalidKeyId { id, reason }),
            None => Ok(KeyId(id)),
        }
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for KeyId {
    type Error = SignerError;
    fn try_from(s: String) -> Result<Self> {
        KeyId::new(s)
    }
}

impl From<KeyId> for String {
    fn from(id: KeyId) -> String {
        id.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Signature scheme of a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// ECDSA over secp256k1 (Bitcoin, Ethereum, Tron): signs 32-byte digests.
    Secp256k1,
    /// Ed25519 (Solana): signs whole messages.
    Ed25519,
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::Secp256k1 => "secp256k1",
            Scheme::Ed25519 => "ed25519",
        })
    }
}

/// A public key: secp256k1 as 33-byte compressed SEC1, Ed25519 as its 32 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    /// The scheme.
    pub scheme: Scheme,
    /// The encoded key.
    #[serde(with = "crate::hexser")]
    pub bytes: Vec<u8>,
}

impl PublicKey {
    /// Builds a secp256k1 public key (stored compressed).
    pub fn secp256k1(key: &k256::ecdsa::VerifyingKey) -> Self {
        PublicKey { scheme: Scheme::Secp256k1, bytes: key.to_encoded_point(true).as_bytes().to_vec() }
    }

    /// Builds an Ed25519 public key.
    pub fn ed25519(key: &ed25519_dalek::VerifyingKey) -> Self {
        PublicKey { scheme: Scheme::Ed25519, bytes: key.to_bytes().to_vec() }
    }

    /// The secp256k1 verifying key, if this is one.
    pub fn to_k256(&self) -> Result<k256::ecdsa::VerifyingKey> {
        if self.scheme != Scheme::Secp256k1 {
            return Err(bad_key("not a secp256k1 key"));
        }
        k256::ecdsa::VerifyingKey::from_sec1_bytes(&self.bytes).map_err(|e| bad_key(&e.to_string()))
    }

    /// The Ed25519 verifying key, if this is one.
    pub fn to_ed25519(&self) -> Result<ed25519_dalek::VerifyingKey> {
        if self.scheme != Scheme::Ed25519 {
            return Err(bad_key("not an ed25519 key"));
        }
        let bytes: [u8; 32] =
            self.bytes.as_slice().try_into().map_err(|_| bad_key("ed25519 key is not 32 bytes"))?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| bad_key(&e.to_string()))
    }

    /// The address of this key on `chain` (`network` matters for Bitcoin
    /// only), encoded by `molly-chains` exactly as deposit addresses are:
    /// EIP-55 for ETH, base58check `0x41` for Tron, bech32 P2WPKH for BTC,
    /// base58 for Solana. A key of the wrong scheme for the chain is refused.
    pub fn address(&self, chain: molly_chains::Chain, network: molly_chains::Network) -> Result<String> {
        use molly_chains::address;
        let mut buf = address::AddressBuf::default();
        if chain == molly_chains::Chain::Sol {
            let key = self.to_ed25519()?;
            address::encode_sol(&key.to_bytes(), &mut buf);
            return Ok(buf.as_str().to_owned());
        }
        let key = self.to_k256()?;
        let uncompressed: [u8; 65] = key
            .to_encoded_point(false)
            .as_bytes()
            .try_into()
            .map_err(|_| bad_key("uncompressed point is not 65 bytes"))?;
        match chain {
            molly_chains::Chain::Eth => address::encode_eth(&uncompressed, &mut buf),
            molly_chains::Chain::Tron => address::encode_tron(&uncompressed, &mut buf),
            _ => {
                let compressed: [u8; 33] = key
                    .to_encoded_point(true)
                    .as_bytes()
                    .try_into()
                    .map_err(|_| bad_key("compressed point is not 33 bytes"))?;
                address::encode_btc_p2wpkh(&compressed, network, &mut buf)
            }
        }
        Ok(buf.as_str().to_owned())
    }

    /// The Ethereum address of a secp256k1 key: the last 20 bytes of the
    /// Keccak-256 of the uncompressed point without its `04` prefix.
    pub fn eth_address(&self) -> Result<[u8; 20]> {
        Ok(crate::ecdsa::eth_address(&self.to_k256()?))
    }
}

fn bad_key(detail: &str) -> SignerError {
    SignerError::BadBackendOutput { backend: "public key", what: "public key", detail: detail.to_string() }
}

/// A derivation path (`m/44'/60'/0'/0/5`): BIP32 for secp256k1 keys,
/// SLIP-0010 (hardened levels only) for Ed25519 keys. It is
/// `molly-chains`' path type, written as text on the wire and on disk.
pub type DerivationPath = molly_chains::path::Path;

/// Where a derived key comes from: a seed sealed in the same keystore and a
/// path below it. Public information (no key material).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Derivation {
    /// The seed's id (same rules as key ids).
    pub seed_id: KeyId,
    /// The path below the seed's master key.
    #[serde(with = "path_text")]
    pub path: DerivationPath,
}

impl fmt::Display for Derivation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.seed_id, self.path)
    }
}

/// Serde for a [`DerivationPath`] as its text form.
pub mod path_text {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::DerivationPath;

    /// Writes `m/44'/60'/0'/0/5`.
    pub fn serialize<S: Serializer>(path: &DerivationPath, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(path)
    }

    /// Reads `m/44'/60'/0'/0/5` (`h` or `H` may stand for `'`).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DerivationPath, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What `list` reports about a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The id.
    pub id: KeyId,
    /// The scheme.
    pub scheme: Scheme,
    /// The public key.
    pub public_key: PublicKey,
    /// Which backend holds it (`software`, `pkcs11`, `aws-kms`).
    pub backend: String,
    /// When it was generated (Unix seconds), where the backend records it.
    pub created_unix: Option<u64>,
    /// Seed and path, for a key derived inside the backend; `None` for a
    /// generated key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derivation: Option<Derivation>,
}

/// A secp256k1 ECDSA signature, always low-S, with the recovery id that
/// recovers the signing key from the digest (`v` = 27 + `recovery_id` for
/// legacy Ethereum, `recovery_id` itself for EIP-2718 transactions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EcdsaSignature {
    /// r, big-endian.
    #[serde(with = "crate::hexser")]
    pub r: [u8; 32],
    /// s, big-endian, at most n/2.
    #[serde(with = "crate::hexser")]
    pub s: [u8; 32],
    /// 0 or 1 (2 and 3 only when r overflowed the order, which the signer normalises away).
    pub recovery_id: u8,
}

impl EcdsaSignature {
    /// As a k256 signature and recovery id.
    pub fn to_k256(&self) -> Result<(k256::ecdsa::Signature, k256::ecdsa::RecoveryId)> {
        let sig =
            k256::ecdsa::Signature::from_scalars(self.r, self.s).map_err(|e| bad_sig(&e.to_string()))?;
        let rid = k256::ecdsa::RecoveryId::from_byte(self.recovery_id)
            .ok_or_else(|| bad_sig("recovery id above 3"))?;
        Ok((sig, rid))
    }

    /// r ‖ s.
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&self.r);
        out[32..].copy_from_slice(&self.s);
        out
    }
}

fn bad_sig(detail: &str) -> SignerError {
    SignerError::BadBackendOutput { backend: "signature", what: "signature", detail: detail.to_string() }
}

/// An Ed25519 signature (R ‖ S).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ed25519Signature(#[serde(with = "crate::hexser")] pub [u8; 64]);

impl Ed25519Signature {
    /// As an ed25519-dalek signature.
    pub fn to_dalek(&self) -> ed25519_dalek::Signature {
        ed25519_dalek::Signature::from_bytes(&self.0)
    }
}
