//! The signer's wire protocol over its Unix domain socket.
//!
//! Frames: a 4-byte big-endian length, then that many bytes of JSON; frames
//! above the configured `max_frame_bytes` close the connection.
//!
//! Client → signer: [`RequestEnvelope`]. `body` is the JSON of a [`Request`]
//! carried as a string so the MAC covers its exact bytes; `mac` is
//! HMAC-SHA256 under the client's key of
//! `"molly-signer-req-v1\0" ‖ client ‖ "\0" ‖ counter (8 bytes BE) ‖ body`.
//! `counter` must be strictly greater than every counter the signer has seen
//! from that client (also across restarts: the signer recovers the last one
//! from its audit log); clients start from the current time in microseconds.
//!
//! Signer → client: [`ResponseEnvelope`] with the same counter, `body` the JSON
//! of a [`Response`], `mac` = HMAC-SHA256 of `"molly-signer-resp-v1\0" ‖
//! counter ‖ body` under the same key (empty when the request could not be
//! authenticated). Only key ids, digests, messages, public keys and
//! signatures cross the socket.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::approvals::Approval;
use crate::types::{DerivationPath, EcdsaSignature, Ed25519Signature, KeyId, KeyInfo, PublicKey, Scheme};

type HmacSha256 = Hmac<Sha256>;

/// Authenticated request wrapper.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RequestEnvelope {
    /// Client name (configured).
    pub client: String,
    /// Strictly increasing per client.
    pub counter: u64,
    /// JSON of a [`Request`].
    pub body: String,
    /// HMAC, hex.
    pub mac: String,
}

/// Authenticated response wrapper.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResponseEnvelope {
    /// The request's counter.
    pub counter: u64,
    /// JSON of a [`Response`].
    pub body: String,
    /// HMAC, hex; empty if the request was not authenticated.
    pub mac: String,
}

/// What a client asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Round trip only.
    Ping,
    /// Keys with metadata.
    List,
    /// One public key.
    PublicKey {
        /// Key.
        key_id: KeyId,
    },
    /// New key (clients with `may_generate` only).
    Generate {
        /// Key.
        key_id: KeyId,
        /// Scheme.
        scheme: Scheme,
    },
    /// New key derived inside the signer from a seed it holds (clients with
    /// `may_generate` only). Only ids and the path cross the socket.
    Derive {
        /// Key to create.
        key_id: KeyId,
        /// Seed to derive from (imported with `molly signer import-seed`).
        seed_id: KeyId,
        /// Scheme: `secp256k1` (BIP32) or `ed25519` (SLIP-0010, hardened levels only).
        scheme: Scheme,
        /// Path, e.g. `m/44'/60'/0'/0/5`.
        #[serde(with = "crate::types::path_text")]
        path: DerivationPath,
    },
    /// secp256k1 over a digest, subject to the approval policy.
    SignDigest {
        /// Key.
        key_id: KeyId,
        /// Digest.
        #[serde(with = "crate::hexser")]
        digest: [u8; 32],
        /// Asset symbol.
        asset: String,
        /// Amount, base units.
        #[serde(with = "crate::hexser::dec128")]
        amount: u128,
        /// Approvals (may be empty at level 1).
        approvals: Vec<Approval>,
    },
    /// Ed25519 over a message, subject to the approval policy (approvals
    /// cover SHA-256 of the message).
    SignMessage {
        /// Key.
        key_id: KeyId,
        /// Message.
        #[serde(with = "crate::hexser")]
        message: Vec<u8>,
        /// Asset symbol.
        asset: String,
        /// Amount, base units.
        #[serde(with = "crate::hexser::dec128")]
        amount: u128,
        /// Approvals.
        approvals: Vec<Approval>,
    },
}

impl Request {
    /// Operation name as audited.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Ping => "ping",
            Request::List => "list",
            Request::PublicKey { .. } => "public_key",
            Request::Generate { .. } => "generate",
            Request::Derive { .. } => "derive",
            Request::SignDigest { .. } => "sign_digest",
            Request::SignMessage { .. } => "sign_message",
        }
    }
}

/// The signer's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Ping answered.
    Pong,
    /// Key list.
    Keys(Vec<KeyInfo>),
    /// A public key.
    PublicKey(PublicKey),
    /// A new key.
    Generated(KeyInfo),
    /// A derived key (new, or the same derivation asked again).
    Derived(KeyInfo),
    /// A secp256k1 signature.
    EcdsaSignature(EcdsaSignature),
    /// An Ed25519 signature.
    Ed25519Signature(Ed25519Signature),
    /// Refused; nothing was signed.
    Error {
        /// Category: `auth`, `replay`, `policy`, `signer`, `request`, `audit`.
        kind: String,
        /// Human-readable reason.
        message: String,
    },
}

/// MAC of a request.
pub fn request_mac(key: &[u8], client: &str, counter: u64, body: &str) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac accepts any key length");
    mac.update(b"molly-signer-req-v1\0");
    mac.update(client.as_bytes());
    mac.update(b"\0");
    mac.update(&counter.to_be_bytes());
    mac.update(body.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Constant-time check of a request MAC.
pub fn verify_request_mac(key: &[u8], env: &RequestEnvelope) -> bool {
    let Ok(given) = hex::decode(&env.mac) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac accepts any key length");
    mac.update(b"molly-signer-req-v1\0");
    mac.update(env.client.as_bytes());
    mac.update(b"\0");
    mac.update(&env.counter.to_be_bytes());
    mac.update(env.body.as_bytes());
    mac.verify_slice(&given).is_ok()
}

/// MAC of a response.
pub fn response_mac(key: &[u8], counter: u64, body: &str) -> [u8; 32] {
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac accepts any key length");
    mac.update(b"molly-signer-resp-v1\0");
    mac.update(&counter.to_be_bytes());
    mac.update(body.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Constant-time check of a response MAC.
pub fn verify_response_mac(key: &[u8], env: &ResponseEnvelope) -> bool {
    let Ok(given) = hex::decode(&env.mac) else {
        return false;
    };
    let mut mac = HmacSha256::new_from_slice(key).expect("hmac accepts any key length");
    mac.update(b"molly-signer-resp-v1\0");
    mac.update(&env.counter.to_be_bytes());
    mac.update(env.body.as_bytes());
    mac.verify_slice(&given).is_ok()
}
