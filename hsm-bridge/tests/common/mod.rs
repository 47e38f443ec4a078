//! Shared checks: every backend must pass the same conformance suite, and
//! every signature is checked with k256 / ed25519-dalek, never with the
//! backend that made it.
#![allow(dead_code)]

use ed25519_dalek::Verifier as _;
use k256::ecdsa::signature::hazmat::PrehashVerifier;
use molly_hsm_bridge::ecdsa::{eth_address, keccak256};
use molly_hsm_bridge::{EcdsaSignature, KeyId, PublicKey, Scheme, Signer, SignerError};

/// Checks a secp256k1 signature: low-S, verifies, and the recovery id
/// recovers the key, whose keccak address is the key's ETH address.
pub fn check_ecdsa(public: &PublicKey, digest: &[u8; 32], sig: &EcdsaSignature) {
    let key = public.to_k256().expect("secp256k1 public key");
    let (signature, rid) = sig.to_k256().expect("well-formed signature");
    assert!(signature.normalize_s().is_none(), "signature must be low-S");
    key.verify_prehash(digest, &signature).expect("signature verifies with k256");
    let recovered = k256::ecdsa::VerifyingKey::recover_from_prehash(digest, &signature, rid)
        .expect("recovery id recovers a key");
    assert_eq!(recovered, key, "recovered key is the signing key");
    assert_eq!(
        eth_address(&recovered),
        public.eth_address().expect("eth address"),
        "recovered ETH address equals the key's"
    );
    // And the address really is keccak(uncompressed point)[12..].
    let point = key.to_encoded_point(false);
    assert_eq!(&keccak256(&point.as_bytes()[1..])[12..], &public.eth_address().expect("eth address")[..]);
}

/// Checks an Ed25519 signature with ed25519-dalek (strict verification).
pub fn check_ed25519(public: &PublicKey, message: &[u8], sig: &molly_hsm_bridge::Ed25519Signature) {
    let key = public.to_ed25519().expect("ed25519 public key");
    key.verify_strict(message, &sig.to_dalek()).expect("ed25519 signature verifies");
    key.verify(message, &sig.to_dalek()).expect("verifies");
}

/// The behaviour every backend owes its callers.
pub async fn conformance(signer: &dyn Signer, prefix: &str) {
    let eth = KeyId::new(format!("{prefix}-eth")).expect("id");
    let sol = KeyId::new(format!("{prefix}-sol")).expect("id");

    let info = signer.generate(&eth, Scheme::Secp256k1).await.expect("generate secp256k1");
    assert_eq!(info.scheme, Scheme::Secp256k1);
    assert_eq!(info.public_key.bytes.len(), 33);
    assert_eq!(signer.public_key(&eth).await.expect("public key"), info.public_key);

    let sol_info = signer.generate(&sol, Scheme::Ed25519).await.expect("generate ed25519");
    assert_eq!(sol_info.public_key.bytes.len(), 32);

    // Many digests, so both recovery ids and (before normalisation) high-S occur.
    for i in 0u8..32 {
        let digest = keccak256(&[i, 1, 2, 3]);
        let sig = signer.sign_digest(&eth, &digest).await.expect("sign digest");
        check_ecdsa(&info.public_key, &digest, &sig);
    }
    for msg in [&b""[..], b"solana message", &[0xAB; 1232][..]] {
        let sig = signer.sign_message(&sol, msg).await.expect("sign message");
        check_ed25519(&sol_info.public_key, msg, &sig);
    }

    // Refusals.
    match signer.generate(&eth, Scheme::Secp256k1).await {
        Err(SignerError::KeyExists(id)) => assert_eq!(id, eth.as_str()),
        other => panic!("duplicate generate must fail with KeyExists, got {other:?}"),
    }
    let missing = KeyId::new(format!("{prefix}-missing")).expect("id");
    assert!(matches!(signer.sign_digest(&missing, &[1; 32]).await, Err(SignerError::UnknownKey(_))));
    assert!(matches!(signer.public_key(&missing).await, Err(SignerError::UnknownKey(_))));
    assert!(matches!(signer.sign_message(&eth, b"x").await, Err(SignerError::WrongScheme { .. })));
    assert!(matches!(signer.sign_digest(&sol, &[1; 32]).await, Err(SignerError::WrongScheme { .. })));

    let listed = signer.list().await.expect("list");
    let mine: Vec<_> = listed.iter().filter(|k| k.id.as_str().starts_with(&format!("{prefix}-"))).collect();
    assert_eq!(mine.len(), 2, "list shows both keys: {listed:?}");
    assert!(mine.iter().any(|k| k.id == eth && k.public_key == info.public_key));
    assert!(mine.iter().any(|k| k.id == sol && k.scheme == Scheme::Ed25519));
    assert!(mine.iter().all(|k| k.backend == signer.backend()));
}

/// Backends that keep keys in hardware or a service cannot derive from a
/// seed: they must say so clearly (and create nothing).
pub async fn derive_is_unsupported(signer: &dyn Signer, prefix: &str) {
    let key = KeyId::new(format!("{prefix}-derived")).expect("id");
    let path = "m/44'/60'/0'/0/0".parse().expect("path");
    match signer.derive(&key, &KeyId::new("install").expect("id"), Scheme::Secp256k1, &path).await {
        Err(e @ SignerError::Unsupported { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("does not support deriving keys from a seed"), "{msg}");
        }
        other => panic!("derive must be unsupported on {}, got {other:?}", signer.backend()),
    }
    assert!(matches!(signer.public_key(&key).await, Err(SignerError::UnknownKey(_))));
}
