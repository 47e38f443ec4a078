//! placeholder
pub mod approvals;
pub mod audit;
pub mod bench;
pub mod client;
pub mod config;
pub mod ecdsa;
pub mod error;
mod hexser;
pub mod keystore;
pub mod pkcs11;
pub mod process;
pub mod protocol;
pub mod server;
pub mod signer;
pub mod softhsm;
pub mod types;

pub use error::{Result, SignerError};
pub use signer::Signer;
pub use types::{EcdsaSignature, Ed25519Signature, KeyId, KeyInfo, PublicKey, Scheme};
