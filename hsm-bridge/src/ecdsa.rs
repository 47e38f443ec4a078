//! secp256k1 helpers shared by the backends: low-S normalisation, recovery id
//! by trial recovery, Ethereum addresses. All arithmetic is k256's.

use k256::ecdsa::{RecoveryId, Signature, VerifyingKey};
use sha3::{Digest, Keccak256};

use crate::error::{Result, SignerError};
use crate::types::EcdsaSignature;

/// Turns a backend's raw `r ‖ s` (PKCS#11 CKM_ECDSA output, or a decoded
/// DER signature) over `digest` into a low-S signature with its recovery id,
/// found by recovering the public key with each candidate id and comparing
/// with `expected`. Fails if no candidate recovers `expected`: the backend
/// signed with another key or returned garbage.
pub fn normalise_and_recover(
    backend: &'static str,
    digest: &[u8; 32],
    signature: Signature,
    expected: &VerifyingKey,
) -> Result<EcdsaSignature> {
    let signature = signature.normalize_s().unwrap_or(signature);
    for byte in 0u8..4 {
        let Some(rid) = RecoveryId::from_byte(byte) else {
            continue;
        };
        if let Ok(found) = VerifyingKey::recover_from_prehash(digest, &signature, rid) {
            if &found == expected {
                return Ok(to_ours(&signature, rid));
            }
        }
    }
    Err(SignerError::BadBackendOutput {
        backend,
        what: "ecdsa signature",
        detail: "no recovery id recovers the key's public key".into(),
    })
}

/// Parses a 64-byte `r ‖ s`.
pub fn from_raw(backend: &'static str, raw: &[u8]) -> Result<Signature> {
    Signature::from_slice(raw).map_err(|e| SignerError::BadBackendOutput {
        backend,
        what: "ecdsa signature",
        detail: format!("{} bytes of r||s: {e}", raw.len()),
    })
}

/// Low-S form of a signature that k256 produced together with its recovery
/// id: flipping s to n - s flips the parity of the nonce point's y.
pub fn low_s(signature: Signature, rid: RecoveryId) -> EcdsaSignature {
    match signature.normalize_s() {
        Some(normalised) => to_ours(&normalised, RecoveryId::new(!rid.is_y_odd(), rid.is_x_reduced())),
        None => to_ours(&signature, rid),
    }
}

fn to_ours(signature: &Signature, rid: RecoveryId) -> EcdsaSignature {
    let (r, s) = signature.split_bytes();
    EcdsaSignature { r: r.into(), s: s.into(), recovery_id: rid.to_byte() }
}

/// Keccak-256 of `data`.
pub fn keccak256(data: &[u8]) -> [u8; 32] {
    Keccak256::digest(data).into()
}

/// Ethereum address of a secp256k1 key.
pub fn eth_address(key: &VerifyingKey) -> [u8; 20] {
    let point = key.to_encoded_point(false);
    let hash = keccak256(&point.as_bytes()[1..]);
    let mut out = [0u8; 20];
    out.copy_from_slice(&hash[12..]);
    out
}

/// k256's signature type, re-exported for callers without a k256 dependency.
pub type K256Signature = Signature;
/// k256's recovery id.
pub type K256RecoveryId = RecoveryId;
/// k256's verifying key.
pub type K256VerifyingKey = VerifyingKey;

#[cfg(test)]
mod tests {
    use super::*;
    use k256::ecdsa::SigningKey;
    use rand_core::OsRng;

    #[test]
    fn high_s_is_normalised_and_recovers() {
        let key = SigningKey::random(&mut OsRng);
        let digest = [7u8; 32];
        let (sig, _) = key.sign_prehash_recoverable(&digest).expect("sign");
        // Build the high-S twin the way an HSM may return it.
        let high = Signature::from_scalars(sig.r(), -*sig.s()).expect("scalars");
        assert!(high.normalize_s().is_some(), "twin must be high-S");
        let ours = normalise_and_recover("test", &digest, high, key.verifying_key()).expect("recover");
        let (back, rid) = ours.to_k256().expect("valid");
        assert!(back.normalize_s().is_none(), "result must be low-S");
        let recovered = VerifyingKey::recover_from_prehash(&digest, &back, rid).expect("recover");
        assert_eq!(&recovered, key.verifying_key());
    }

    #[test]
    fn signature_from_another_key_is_refused() {
        let key = SigningKey::random(&mut OsRng);
        let other = SigningKey::random(&mut OsRng);
        let digest = [9u8; 32];
        let (sig, _) = other.sign_prehash_recoverable(&digest).expect("sign");
        assert!(normalise_and_recover("test", &digest, sig, key.verifying_key()).is_err());
    }

    #[test]
    fn eth_address_matches_known_vector() {
        // Private key 1: address 0x7e5f4552091a69125d5dfcb7b8c2659029395bdf.
        let mut one = [0u8; 32];
        one[31] = 1;
        let key = SigningKey::from_bytes(&one.into()).expect("key");
        assert_eq!(hex::encode(eth_address(key.verifying_key())), "7e5f4552091a69125d5dfcb7b8c2659029395bdf");
    }
}
