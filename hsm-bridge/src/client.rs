//! Client side of the signer socket (what the engine and chain gateways link).

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::net::UnixStream;
use zeroize::Zeroizing;

use crate::approvals::Approval;
use crate::protocol::{
    request_mac, verify_response_mac, Request, RequestEnvelope, Response, ResponseEnvelope,
};
use crate::server::{read_frame, write_frame};
use crate::types::{DerivationPath, EcdsaSignature, Ed25519Signature, KeyId, KeyInfo, PublicKey, Scheme};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket error.
    #[error("signer socket: {0}")]
    Io(#[from] std::io::Error),
    /// The signer closed the connection.
    #[error("signer closed the connection")]
    Closed,
    /// The response did not authenticate.
    #[error("signer response failed authentication")]
    BadMac,
    /// The response was not understood.
    #[error("signer protocol: {0}")]
    Protocol(String),
    /// The signer refused; nothing was signed.
    #[error("signer refused ({kind}): {message}")]
    Refused {
        /// `authentication`, `replay`, `policy`, `signer`, `request`, `audit`, ...
        kind: String,
        /// Reason.
        message: String,
    },
}

/// A connection to the signer as one configured client.
pub struct SignerClient {
    stream: UnixStream,
    name: String,
    key: Zeroizing<Vec<u8>>,
    counter: u64,
    max_frame_bytes: usize,
}

impl std::fmt::Debug for SignerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerClient")
            .field("name", &self.name)
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

fn now_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

impl SignerClient {
    /// Connects to the signer socket as client `name` with its HMAC key.
    pub async fn connect(
        socket: &Path,
        name: &str,
        key: Zeroizing<Vec<u8>>,
        max_frame_bytes: usize,
    ) -> Result<Self, ClientError> {
        Ok(SignerClient {
            stream: UnixStream::connect(socket).await?,
            name: name.to_string(),
            key,
            counter: 0,
            max_frame_bytes,
        })
    }

    /// Sends a request with the next counter and returns the authenticated response.
    pub async fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        let body = serde_json::to_string(request).map_err(|e| ClientError::Protocol(e.to_string()))?;
        self.counter = (self.counter + 1).max(now_micros());
        self.send_raw(&body, self.counter).await
    }

    /// Sends `body` with an explicit counter (tests use it to replay).
    pub async fn send_raw(&mut self, body: &str, counter: u64) -> Result<Response, ClientError> {
        self.counter = self.counter.max(counter);
        let env = RequestEnvelope {
            client: self.name.clone(),
            counter,
            body: body.to_string(),
            mac: hex::encode(request_mac(&self.key, &self.name, counter, body)),
        };
        let frame = serde_json::to_vec(&env).map_err(|e| ClientError::Protocol(e.to_string()))?;
        write_frame(&mut self.stream, &frame).await?;
        let reply = read_frame(&mut self.stream, self.max_frame_bytes).await?.ok_or(ClientError::Closed)?;
        let env: ResponseEnvelope =
            serde_json::from_slice(&reply).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let response: Response =
            serde_json::from_str(&env.body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if env.mac.is_empty() {
            // Unauthenticated refusal (the signer could not authenticate us).
            return match response {
                Response::Error { kind, message } => Err(ClientError::Refused { kind, message }),
                _ => Err(ClientError::BadMac),
            };
        }
        if env.counter != counter || !verify_response_mac(&self.key, &env) {
            return Err(ClientError::BadMac);
        }
        match response {
            Response::Error { kind, message } => Err(ClientError::Refused { kind, message }),
            other => Ok(other),
        }
    }

    /// Round trip.
    pub async fn ping(&mut self) -> Result<(), ClientError> {
        match self.call(&Request::Ping).await? {
            Response::Pong => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Keys with metadata.
    pub async fn list(&mut self) -> Result<Vec<KeyInfo>, ClientError> {
        match self.call(&Request::List).await? {
            Response::Keys(keys) => Ok(keys),
            other => Err(unexpected(&other)),
        }
    }

    /// A public key.
    pub async fn public_key(&mut self, key_id: &KeyId) -> Result<PublicKey, ClientError> {
        match self.call(&Request::PublicKey { key_id: key_id.clone() }).await? {
            Response::PublicKey(k) => Ok(k),
            other => Err(unexpected(&other)),
        }
    }

    /// Creates a key.
    pub async fn generate(&mut self, key_id: &KeyId, scheme: Scheme) -> Result<KeyInfo, ClientError> {
        match self.call(&Request::Generate { key_id: key_id.clone(), scheme }).await? {
            Response::Generated(info) => Ok(info),
            other => Err(unexpected(&other)),
        }
    }

    /// Derives key `key_id` inside the signer from seed `seed_id` along `path`.
    pub async fn derive(
        &mut self,
        key_id: &KeyId,
        seed_id: &KeyId,
        scheme: Scheme,
        path: &DerivationPath,
    ) -> Result<KeyInfo, ClientError> {
        let request =
            Request::Derive { key_id: key_id.clone(), seed_id: seed_id.clone(), scheme, path: path.clone() };
        match self.call(&request).await? {
            Response::Derived(info) => Ok(info),
            other => Err(unexpected(&other)),
        }
    }

    /// secp256k1 signature over `digest`.
    pub async fn sign_digest(
        &mut self,
        key_id: &KeyId,
        digest: [u8; 32],
        asset: &str,
        amount: u128,
        approvals: Vec<Approval>,
    ) -> Result<EcdsaSignature, ClientError> {
        match self
            .call(&Request::SignDigest {
                key_id: key_id.clone(),
                digest,
                asset: asset.to_string(),
                amount,
                approvals,
            })
            .await?
        {
            Response::EcdsaSignature(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    /// Ed25519 signature over `message`.
    pub async fn sign_message(
        &mut self,
        key_id: &KeyId,
        message: Vec<u8>,
        asset: &str,
        amount: u128,
        approvals: Vec<Approval>,
    ) -> Result<Ed25519Signature, ClientError> {
        match self
            .call(&Request::SignMessage {
                key_id: key_id.clone(),
                message,
                asset: asset.to_string(),
                amount,
                approvals,
            })
            .await?
        {
            Response::Ed25519Signature(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(response: &Response) -> ClientError {
    ClientError::Protocol(format!("unexpected response {response:?}"))
}
