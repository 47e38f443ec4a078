//! # molly-hsm-bridge: Molly's signer
//!
//! **What it owns.** Every private key Molly signs with, behind one async
//! [`Signer`] trait: generate a key (id + scheme), export its public key,
//! sign a 32-byte digest with secp256k1 ECDSA (low-S `r`, `s` and the
//! recovery id), sign a message with Ed25519, list keys with metadata, and
//! derive a key from the installation's BIP39 seed sealed in the software
//! keystore (BIP32 / SLIP-0010 through `molly-chains`, so a derived key's
//! address is the deposit address the xpub gives; PKCS#11 and KMS refuse).
//! Backends: the encrypted software keystore ([`keystore`], argon2id +
//! XChaCha20-Poly1305, the development default), PKCS#11 ([`pkcs11`],
//! tested on SoftHSM2) and AWS KMS (`kms`, feature `kms`, secp256k1 only).
//! Around it: the signer process ([`server`], `molly signer serve`) that is
//! the only way other processes reach a key, the approval policy
//! ([`approvals`]: 3-of-5 quorum for hot/warm spends, three levels by
//! per-asset thresholds for withdrawals) and the hash-chained audit log
//! ([`audit`]).
//!
//! **What it must not do.** Hand out key material. Nothing in this crate
//! returns or serialises a private key or a seed; the socket protocol ([`protocol`])
//! has no message that could carry one: only key ids, digests, messages,
//! public keys and signatures cross it. It never signs before the policy has
//! authorised the request and never releases a signature it failed to audit.
//!
//! ```text
//!  engine / chain gateway                       molly signer (own process, own uid)
//!  ┌──────────────────┐   Unix socket    ┌─────────────────────────────────────────────┐
//!  │ SignerClient     │ ───────────────▶ │ SO_PEERCRED uid allowlist                   │
//!  │  HMAC(key, ctr,  │  len ‖ JSON      │ HMAC check ─▶ counter > last ─▶ policy:     │
//!  │       request)   │                  │   level 1/2/3, approvals (Ed25519, 3 of 5)  │
//!  │                  │ ◀─────────────── │ ─▶ Signer backend ─▶ audit log (hash chain) │
//!  └──────────────────┘  HMAC'd answer   │    software │ PKCS#11 (HSM) │ AWS KMS      │
//!                                        └─────────────────────────────────────────────┘
//! ```
//!
//! **Limits.** Key ids are 1–64 bytes of `[A-Za-z0-9._-]`; frames,
//! messages, connections and idle time are bounded by [`config::Limits`];
//! approvals per request by the number of registered approvers; the replay
//! memory by `max_remembered_approvals` (it fails closed when full). One
//! backend per signer process. The PKCS#11 backend serialises calls on one
//! session. The audit log detects edits anywhere but a cut-off tail only
//! against an anchored head ([`audit::verify`] returns it). AWS KMS has no
//! Ed25519 here.
//!
//! ```
//! use molly_hsm_bridge::keystore::{KdfParams, SoftwareKeystore};
//! use molly_hsm_bridge::{KeyId, Scheme, Signer};
//!
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let keys = SoftwareKeystore::create(dir.path(), b"passphrase", KdfParams::insecure_for_tests()).unwrap();
//! let id = KeyId::new("eth-withdrawals-1").unwrap();
//! let info = keys.generate(&id, Scheme::Secp256k1).await.unwrap();
//!
//! let digest = molly_hsm_bridge::ecdsa::keccak256(b"an rlp-encoded transaction");
//! let sig = keys.sign_digest(&id, &digest).await.unwrap();
//! let (signature, recovery_id) = sig.to_k256().unwrap();
//! assert!(signature.normalize_s().is_none()); // low-S
//! let recovered = k256::ecdsa::VerifyingKey::recover_from_prehash(&digest, &signature, recovery_id).unwrap();
//! assert_eq!(molly_hsm_bridge::ecdsa::eth_address(&recovered), info.public_key.eth_address().unwrap());
//! # });
//! ```
pub mod approvals;
pub mod audit;
pub mod bench;
pub mod client;
pub mod config;
pub mod ecdsa;
pub mod error;
mod hexser;
pub mod keystore;
#[cfg(feature = "kms")]
pub mod kms;
pub mod pkcs11;
pub mod process;
pub mod protocol;
pub mod server;
pub mod signer;
pub mod softhsm;
pub mod types;

pub use error::{Result, SignerError};
pub use signer::Signer;
pub use types::{
    Derivation, DerivationPath, EcdsaSignature, Ed25519Signature, KeyId, KeyInfo, PublicKey, Scheme,
};
