//! The signer process: a Unix-socket server in front of one [`Signer`].
//!
//! Per connection: SO_PEERCRED uid must be on the allowlist (the union of the
//! configured clients' uids), and the connection count under
//! `max_connections`. Per request: the envelope parses, the client is known
//! and bound to that uid, the HMAC verifies, the counter is above the last
//! one seen, the request parses, the approval policy authorises it — only
//! then is the backend asked to sign. Every request and every refused
//! connection is appended to the audit log before the answer is sent; if
//! the log cannot be written, the answer is an error and the signature is
//! dropped.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use zeroize::Zeroizing;

use crate::approvals::{Approval, Policy, PolicyError, Spend};
use crate::audit::{AuditApproval, AuditEntry, AuditLog};
use crate::config::{read_client_key, Limits, SignerConfig};
use crate::error::{Result, SignerError};
use crate::protocol::{
    response_mac, verify_request_mac, Request, RequestEnvelope, Response, ResponseEnvelope,
};
use crate::signer::Signer;
use crate::types::KeyId;

/// A client as the server knows it.
#[derive(Debug)]
pub struct ClientEntry {
    /// The uid it must connect from.
    pub uid: u32,
    /// HMAC key.
    pub key: Zeroizing<Vec<u8>>,
    /// May create keys.
    pub may_generate: bool,
}

/// The signer service state shared by all connections.
#[derive(Debug)]
pub struct SignerService {
    signer: Arc<dyn Signer>,
    policy: Policy,
    clients: HashMap<String, ClientEntry>,
    allowed_uids: HashSet<u32>,
    counters: Mutex<HashMap<String, u64>>,
    audit: Mutex<AuditLog>,
    limits: Limits,
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

struct Refusal {
    kind: &'static str,
    message: String,
}

impl Refusal {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Refusal { kind, message: message.into() }
    }
}

impl SignerService {
    /// Builds the service from parts (the config loader and tests use this).
    pub fn new(
        signer: Arc<dyn Signer>,
        policy: Policy,
        clients: HashMap<String, ClientEntry>,
        audit_log: &Path,
        audit_fsync: bool,
        limits: Limits,
    ) -> Result<Self> {
        if limits.max_connections == 0 || limits.max_frame_bytes < 256 {
            return Err(SignerError::Config(
                "max_connections must be positive and max_frame_bytes at least 256".into(),
            ));
        }
        let (audit, recovered) = AuditLog::open(audit_log, audit_fsync)?;
        for a in &recovered.approvals {
            policy.remember(&a.approver, a.nonce, a.issued_unix);
        }
        let allowed_uids = clients.values().map(|c| c.uid).collect();
        Ok(SignerService {
            signer,
            policy,
            clients,
            allowed_uids,
            counters: Mutex::new(recovered.counters),
            audit: Mutex::new(audit),
            limits,
        })
    }

    /// Builds the service from a loaded config and an opened backend.
    pub fn from_config(config: &SignerConfig, signer: Arc<dyn Signer>) -> Result<Self> {
        let policy = Policy::new(config.policy.clone()).map_err(SignerError::Config)?;
        let mut clients = HashMap::new();
        for c in &config.clients {
            let entry =
                ClientEntry { uid: c.uid, key: read_client_key(&c.key_file)?, may_generate: c.may_generate };
            if clients.insert(c.name.clone(), entry).is_some() {
                return Err(SignerError::Config(format!("client {:?} listed twice", c.name)));
            }
        }
        Self::new(signer, policy, clients, &config.audit_log, config.audit_fsync, config.limits)
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn audit(&self, entry: AuditEntry) -> Result<()> {
        let mut log = self.audit.lock().map_err(|_| SignerError::Task("audit log lock poisoned".into()))?;
        log.append(entry)
    }

    fn blank_entry(uid: u32, op: &str) -> AuditEntry {
        AuditEntry {
            seq: 0,
            prev: String::new(),
            unix_ms: now_unix_ms(),
            uid,
            client: None,
            counter: None,
            op: op.into(),
            key_id: None,
            derivation: None,
            digest: None,
            asset: None,
            amount: None,
            level: None,
            approvals: vec![],
            outcome: String::new(),
        }
    }

    /// Audits a refused connection (uid not allowed, too many connections).
    fn refuse_connection(&self, uid: u32, reason: &str) {
        let mut entry = Self::blank_entry(uid, "connect");
        entry.outcome = format!("refused: {reason}");
        if let Err(e) = self.audit(entry) {
            eprintln!("molly signer: audit log write failed: {e}");
        }
    }

    /// Handles one request frame from a peer with `uid`; returns the response frame.
    pub async fn handle(&self, uid: u32, frame: &[u8]) -> Vec<u8> {
        let mut entry = Self::blank_entry(uid, "invalid");
        let (counter, key, result) = self.process(uid, frame, &mut entry).await;
        entry.outcome = match &result {
            Ok(_) => "ok".into(),
            Err(r) => format!("refused: {}: {}", r.kind, r.message),
        };
        let response = match self.audit(entry) {
            Ok(()) => match result {
                Ok(response) => response,
                Err(r) => Response::Error { kind: r.kind.into(), message: r.message },
            },
            Err(e) => Response::Error {
                kind: "audit".into(),
                message: format!("audit log write failed, result withheld: {e}"),
            },
        };
        let body = serde_json::to_string(&response).unwrap_or_else(|e| {
            format!(r#"{{"error":{{"kind":"internal","message":"encoding response: {e}"}}}}"#)
        });
        let mac = key.map(|k| hex::encode(response_mac(k, counter, &body))).unwrap_or_default();
        serde_json::to_vec(&ResponseEnvelope { counter, body, mac }).unwrap_or_default()
    }

    async fn process<'s>(
        &'s self,
        uid: u32,
        frame: &[u8],
        entry: &mut AuditEntry,
    ) -> (u64, Option<&'s [u8]>, std::result::Result<Response, Refusal>) {
        let env: RequestEnvelope = match serde_json::from_slice(frame) {
            Ok(env) => env,
            Err(e) => return (0, None, Err(Refusal::new("request", format!("bad envelope: {e}")))),
        };
        entry.client = Some(env.client.clone());
        entry.counter = Some(env.counter);
        let Some(client) = self.clients.get(&env.client) else {
            return (
                env.counter,
                None,
                Err(Refusal::new("authentication", format!("unknown client {:?}", env.client))),
            );
        };
        if client.uid != uid {
            return (
                env.counter,
                None,
                Err(Refusal::new(
                    "authentication",
                    format!("client {:?} may not connect from uid {uid}", env.client),
                )),
            );
        }
        if !verify_request_mac(&client.key, &env) {
            return (env.counter, None, Err(Refusal::new("authentication", "bad request mac")));
        }
        let key = Some(client.key.as_slice());
        // Replay protection: strictly increasing counter per client.
        {
            let Ok(mut counters) = self.counters.lock() else {
                return (env.counter, key, Err(Refusal::new("internal", "counter lock poisoned")));
            };
            let last = counters.entry(env.client.clone()).or_insert(0);
            if env.counter <= *last {
                return (
                    env.counter,
                    key,
                    Err(Refusal::new(
                        "replay",
                        format!("counter {} is not above the last accepted {}", env.counter, last),
                    )),
                );
            }
            *last = env.counter;
        }
        let request: Request = match serde_json::from_str(&env.body) {
            Ok(r) => r,
            Err(e) => return (env.counter, key, Err(Refusal::new("request", format!("bad request: {e}")))),
        };
        entry.op = request.op().into();
        let result = self.dispatch(client, request, entry).await;
        (env.counter, key, result)
    }

    async fn dispatch(
        &self,
        client: &ClientEntry,
        request: Request,
        entry: &mut AuditEntry,
    ) -> std::result::Result<Response, Refusal> {
        let signer_err = |e: SignerError| Refusal::new("signer", e.to_string());
        match request {
            Request::Ping => Ok(Response::Pong),
            Request::List => self.signer.list().await.map(Response::Keys).map_err(signer_err),
            Request::PublicKey { key_id } => {
                entry.key_id = Some(key_id.to_string());
                self.signer.public_key(&key_id).await.map(Response::PublicKey).map_err(signer_err)
            }
            Request::Generate { key_id, scheme } => {
                entry.key_id = Some(key_id.to_string());
                if !client.may_generate {
                    return Err(Refusal::new("authorisation", "this client may not create keys"));
                }
                self.signer.generate(&key_id, scheme).await.map(Response::Generated).map_err(signer_err)
            }
            Request::Derive { key_id, seed_id, scheme, path } => {
                entry.key_id = Some(key_id.to_string());
                entry.derivation = Some(format!("{scheme} {seed_id} {path}"));
                if !client.may_generate {
                    return Err(Refusal::new("authorisation", "this client may not create keys"));
                }
                self.signer
                    .derive(&key_id, &seed_id, scheme, &path)
                    .await
                    .map(Response::Derived)
                    .map_err(signer_err)
            }
            Request::SignDigest { key_id, digest, asset, amount, approvals } => {
                self.authorise(entry, &key_id, &asset, amount, &digest, &approvals)?;
                self.signer
                    .sign_digest(&key_id, &digest)
                    .await
                    .map(Response::EcdsaSignature)
                    .map_err(signer_err)
            }
            Request::SignMessage { key_id, message, asset, amount, approvals } => {
                if message.len() > self.limits.max_message_bytes {
                    entry.key_id = Some(key_id.to_string());
                    return Err(signer_err(SignerError::MessageTooLarge {
                        len: message.len(),
                        limit: self.limits.max_message_bytes,
                    }));
                }
                let digest: [u8; 32] = Sha256::digest(&message).into();
                self.authorise(entry, &key_id, &asset, amount, &digest, &approvals)?;
                self.signer
                    .sign_message(&key_id, &message)
                    .await
                    .map(Response::Ed25519Signature)
                    .map_err(signer_err)
            }
        }
    }

    fn authorise(
        &self,
        entry: &mut AuditEntry,
        key_id: &KeyId,
        asset: &str,
        amount: u128,
        digest: &[u8; 32],
        approvals: &[Approval],
    ) -> std::result::Result<(), Refusal> {
        entry.key_id = Some(key_id.to_string());
        entry.digest = Some(hex::encode(digest));
        entry.asset = Some(asset.to_string());
        entry.amount = Some(amount.to_string());
        entry.approvals = approvals
            .iter()
            .map(|a| AuditApproval {
                approver: a.approver.clone(),
                nonce: a.nonce,
                issued_unix: a.issued_unix,
            })
            .collect();
        let spend = Spend { key_id, asset, amount, digest };
        let now = now_unix_ms() / 1000;
        match self.policy.authorise(&spend, approvals, now) {
            Ok(decision) => {
                entry.level = Some(decision.level);
                Ok(())
            }
            Err(e) => {
                entry.level = self.policy.level(&spend).ok();
                Err(Refusal::new(policy_kind(&e), e.to_string()))
            }
        }
    }

    /// Serves connections on `listener` until `shutdown` resolves.
    pub async fn serve(
        self: Arc<Self>,
        listener: UnixListener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        let slots = Arc::new(Semaphore::new(self.limits.max_connections));
        tokio::pin!(shutdown);
        loop {
            let (stream, _) = tokio::select! {
                _ = &mut shutdown => return Ok(()),
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        eprintln!("molly signer: accept failed: {e}");
                        continue;
                    }
                },
            };
            let uid = match stream.peer_cred() {
                Ok(cred) => cred.uid(),
                Err(e) => {
                    eprintln!("molly signer: SO_PEERCRED failed, dropping connection: {e}");
                    continue;
                }
            };
            if !self.allowed_uids.contains(&uid) {
                self.refuse_connection(uid, &format!("uid {uid} is not on the allowlist"));
                continue;
            }
            let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
                self.refuse_connection(
                    uid,
                    &format!("{} connections already open", self.limits.max_connections),
                );
                continue;
            };
            let service = Arc::clone(&self);
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = service.connection(stream, uid).await {
                    eprintln!("molly signer: connection from uid {uid} closed: {e}");
                }
            });
        }
    }

    async fn connection(&self, mut stream: UnixStream, uid: u32) -> std::io::Result<()> {
        let idle = Duration::from_millis(self.limits.idle_timeout_ms);
        loop {
            let frame = match tokio::time::timeout(idle, read_frame(&mut stream, self.limits.max_frame_bytes))
                .await
            {
                Err(_) => return Ok(()),
                Ok(Ok(None)) => return Ok(()),
                Ok(Ok(Some(frame))) => frame,
                Ok(Err(e)) => {
                    if e.kind() == std::io::ErrorKind::InvalidData {
                        let mut entry = Self::blank_entry(uid, "invalid");
                        entry.outcome = format!("refused: request: {e}");
                        if let Err(audit) = self.audit(entry) {
                            eprintln!("molly signer: audit log write failed: {audit}");
                        }
                    }
                    return Err(e);
                }
            };
            let response = self.handle(uid, &frame).await;
            write_frame(&mut stream, &response).await?;
        }
    }
}

fn policy_kind(e: &PolicyError) -> &'static str {
    match e {
        PolicyError::Replayed(_) => "replay",
        _ => "policy",
    }
}

/// Binds the socket (replacing a stale socket file) with `mode` permissions.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path).map_err(|e| SignerError::io("remove stale socket", path, e))?;
        } else {
            return Err(SignerError::Config(format!("{} exists and is not a socket", path.display())));
        }
    }
    let listener = UnixListener::bind(path).map_err(|e| SignerError::io("bind", path, e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| SignerError::io("chmod", path, e))?;
    Ok(listener)
}

/// Reads one length-prefixed frame; `None` on a clean end of stream.
pub async fn read_frame(stream: &mut UnixStream, max: usize) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {max}"),
        ));
    }
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

/// Writes one length-prefixed frame.
pub async fn write_frame(stream: &mut UnixStream, body: &[u8]) -> std::io::Result<()> {
    let len = u32::try_from(body.len())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "frame too large"))?;
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    stream.write_all(&out).await
}
