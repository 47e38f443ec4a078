//! The signer process boundary: socket auth, replay protection, approvals,
//! audit log. Runs the real server on a real Unix socket in this process.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use molly_hsm_bridge::approvals::{
    Approval, ApproverConfig, KeyPolicy, Policy, PolicyConfig, Spend, Thresholds, Tier,
};
use molly_hsm_bridge::audit;
use molly_hsm_bridge::client::{ClientError, SignerClient};
use molly_hsm_bridge::config::Limits;
use molly_hsm_bridge::ecdsa::keccak256;
use molly_hsm_bridge::keystore::{KdfParams, SoftwareKeystore};
use molly_hsm_bridge::server::{bind, ClientEntry, SignerService};
use molly_hsm_bridge::{
    DerivationPath, EcdsaSignature, Ed25519Signature, KeyId, KeyInfo, PublicKey, Scheme, Signer,
};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use zeroize::Zeroizing;

/// Wraps a signer and counts signatures, so tests can assert that a refused
/// request signed nothing.
#[derive(Debug)]
struct Counting {
    inner: SoftwareKeystore,
    signed: AtomicUsize,
}

#[async_trait]
impl Signer for Counting {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    async fn generate(&self, id: &KeyId, scheme: Scheme) -> molly_hsm_bridge::Result<KeyInfo> {
        self.inner.generate(id, scheme).await
    }
    async fn derive(
        &self,
        id: &KeyId,
        seed_id: &KeyId,
        scheme: Scheme,
        path: &DerivationPath,
    ) -> molly_hsm_bridge::Result<KeyInfo> {
        self.inner.derive(id, seed_id, scheme, path).await
    }
    async fn public_key(&self, id: &KeyId) -> molly_hsm_bridge::Result<PublicKey> {
        self.inner.public_key(id).await
    }
    async fn sign_digest(&self, id: &KeyId, digest: &[u8; 32]) -> molly_hsm_bridge::Result<EcdsaSignature> {
        self.signed.fetch_add(1, Ordering::SeqCst);
        self.inner.sign_digest(id, digest).await
    }
    async fn sign_message(&self, id: &KeyId, message: &[u8]) -> molly_hsm_bridge::Result<Ed25519Signature> {
        self.signed.fetch_add(1, Ordering::SeqCst);
        self.inner.sign_message(id, message).await
    }
    async fn list(&self) -> molly_hsm_bridge::Result<Vec<KeyInfo>> {
        self.inner.list().await
    }
}

const CLIENT_KEY: [u8; 32] = [0x11; 32];

struct Harness {
    dir: tempfile::TempDir,
    approvers: Vec<(String, ed25519_dalek::SigningKey)>,
    signer: Arc<Counting>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

fn my_uid() -> u32 {
    std::fs::metadata("/proc/self").expect("/proc/self").uid()
}

fn id(s: &str) -> KeyId {
    KeyId::new(s).expect("key id")
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

fn policy_config(approvers: &[(String, ed25519_dalek::SigningKey)]) -> PolicyConfig {
    let mut keys = BTreeMap::new();
    keys.insert(id("hot-eth"), KeyPolicy { tier: Tier::Hot });
    keys.insert(id("warm-eth"), KeyPolicy { tier: Tier::Warm });
    keys.insert(id("wd-eth"), KeyPolicy { tier: Tier::Withdrawal });
    keys.insert(id("wd-sol"), KeyPolicy { tier: Tier::Withdrawal });
    let mut assets = BTreeMap::new();
    assets.insert("ETH".to_string(), Thresholds { level2_from: 1_000, level3_from: 1_000_000 });
    assets.insert("SOL".to_string(), Thresholds { level2_from: 10, level3_from: 100 });
    PolicyConfig {
        quorum: 3,
        approvers: approvers
            .iter()
            .map(|(name, key)| ApproverConfig {
                id: name.clone(),
                public_key: key.verifying_key().to_bytes(),
            })
            .collect(),
        max_approval_age_secs: 300,
        max_clock_skew_secs: 30,
        max_remembered_approvals: 1000,
        keys,
        assets,
    }
}

impl Harness {
    fn socket(&self) -> PathBuf {
        self.dir.path().join("signer.sock")
    }

    fn audit_path(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }

    async fn start(allowed_uid: u32) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let approvers: Vec<_> = (1..=5)
            .map(|i| (format!("approver{i}"), ed25519_dalek::SigningKey::from_bytes(&[i as u8; 32])))
            .collect();
        let keystore =
            SoftwareKeystore::create(&dir.path().join("keys"), b"pass", KdfParams::insecure_for_tests())
                .expect("keystore");
        let signer = Arc::new(Counting { inner: keystore, signed: AtomicUsize::new(0) });
        let mut h = Harness { dir, approvers, signer, stop: None, task: None };
        h.serve(allowed_uid).await;
        h
    }

    async fn serve(&mut self, allowed_uid: u32) {
        let mut clients = HashMap::new();
        clients.insert(
            "engine".to_string(),
            ClientEntry { uid: allowed_uid, key: Zeroizing::new(CLIENT_KEY.to_vec()), may_generate: true },
        );
        clients.insert(
            "gateway".to_string(),
            ClientEntry { uid: allowed_uid, key: Zeroizing::new(vec![0x22; 32]), may_generate: false },
        );
        let policy = Policy::new(policy_config(&self.approvers)).expect("policy");
        let service = SignerService::new(
            self.signer.clone(),
            policy,
            clients,
            &self.audit_path(),
            true,
            Limits {
                max_connections: 8,
                max_frame_bytes: 64 * 1024,
                max_message_bytes: 4096,
                idle_timeout_ms: 10_000,
            },
        )
        .expect("service");
        let listener = bind(&self.socket(), 0o600).expect("bind");
        let (tx, rx) = oneshot::channel::<()>();
        self.stop = Some(tx);
        self.task = Some(tokio::spawn(async move {
            Arc::new(service)
                .serve(listener, async {
                    let _ = rx.await;
                })
                .await
                .expect("serve");
        }));
    }

    async fn restart(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task");
        }
        self.serve(my_uid()).await;
    }

    async fn client(&self, name: &str, key: &[u8]) -> SignerClient {
        SignerClient::connect(&self.socket(), name, Zeroizing::new(key.to_vec()), 64 * 1024)
            .await
            .expect("connect")
    }

    fn approve(&self, who: &[usize], spend: &Spend<'_>) -> Vec<Approval> {
        who.iter()
            .map(|&i| {
                let (name, key) = &self.approvers[i];
                Approval::sign(name, key, spend, now())
            })
            .collect()
    }

    fn signed(&self) -> usize {
        self.signer.signed.load(Ordering::SeqCst)
    }
}

fn refused(result: Result<impl std::fmt::Debug, ClientError>, kind: &str, needle: &str) {
    match result {
        Err(ClientError::Refused { kind: k, message }) => {
            assert_eq!(k, kind, "kind of refusal ({message})");
            assert!(message.contains(needle), "{message:?} should mention {needle:?}");
        }
        other => panic!("expected a {kind} refusal mentioning {needle:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn level_one_withdrawal_signs_and_recovers_eth_address() {
    let h = Harness::start(my_uid()).await;
    let mut c = h.client("engine", &CLIENT_KEY).await;
    c.ping().await.expect("ping");
    let info = c.generate(&id("wd-eth"), Scheme::Secp256k1).await.expect("generate");
    let digest = keccak256(b"rlp of an eth transaction");
    let sig = c.sign_digest(&id("wd-eth"), digest, "ETH", 999, vec![]).await.expect("level 1 is automatic");
    common::check_ecdsa(&info.public_key, &digest, &sig);
    let listed = c.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(c.public_key(&id("wd-eth")).await.expect("pk"), info.public_key);
    audit::verify(&h.audit_path()).expect("audit log verifies");
}

#[tokio::test]
async fn hot_and_warm_spends_need_three_of_five() {
    let h = Harness::start(my_uid()).await;
    let mut c = h.client("engine", &CLIENT_KEY).await;
    let hot = c.generate(&id("hot-eth"), Scheme::Secp256k1).await.expect("gen");
    c.generate(&id("warm-eth"), Scheme::Secp256k1).await.expect("gen");
    let digest = keccak256(b"sweep to cold");
    let spend = Spend {
        key_id: &id("hot-eth"),
        asset: "ETH",
        amount: 1, // tiny, but hot-wallet spends always need the quorum
        digest: &digest,
    };
    refused(
        c.sign_digest(&id("hot-eth"), digest, "ETH", 1, vec![]).await,
        "policy",
        "level 3 needs 3 approval(s), got 0",
    );
    refused(
        c.sign_digest(&id("hot-eth"), digest, "ETH", 1, h.approve(&[0, 1], &spend)).await,
        "policy",
        "needs 3 approval(s), got 2",
    );
    assert_eq!(h.signed(), 0, "nothing signed without the quorum");
    let sig = c
        .sign_digest(&id("hot-eth"), digest, "ETH", 1, h.approve(&[0, 2, 4], &spend))
        .await
        .expect("3 of 5 signs");
    common::check_ecdsa(&hot.public_key, &digest, &sig);

    let warm_spend = Spend { key_id: &id("warm-eth"), ..spend };
    refused(
        c.sign_digest(&id("warm-eth"), digest, "ETH", 1, h.approve(&[3], &warm_spend)).await,
        "policy",
        "got 1",
    );
    c.sign_digest(&id("warm-eth"), digest, "ETH", 1, h.approve(&[1, 2, 3], &warm_spend))
        .await
        .expect("warm with quorum");
    assert_eq!(h.signed(), 2);
}

#[tokio::test]
async fn withdrawal_levels_follow_asset_thresholds() {
    let h = Harness::start(my_uid()).await;
    let mut c = h.client("engine", &CLIENT_KEY).await;
    c.generate(&id("wd-eth"), Scheme::Secp256k1).await.expect("gen");
    let sol = c.generate(&id("wd-sol"), Scheme::Ed25519).await.expect("gen");
    let digest = keccak256(b"withdrawal");
    let wd = id("wd-eth");
    let spend = |amount| Spend { key_id: &wd, asset: "ETH", amount, digest: &digest };
    // Level 2: one approver.
    refused(c.sign_digest(&wd, digest, "ETH", 1_000, vec![]).await, "policy", "level 2 needs 1");
    c.sign_digest(&wd, digest, "ETH", 1_000, h.approve(&[2], &spend(1_000)))
        .await
        .expect("level 2 with one approval");
    // Level 3: the quorum.
    refused(
        c.sign_digest(&wd, digest, "ETH", 1_000_000, h.approve(&[2], &spend(1_000_000))).await,
        "policy",
        "level 3 needs 3",
    );
    c.sign_digest(&wd, digest, "ETH", 1_000_000, h.approve(&[0, 1, 2], &spend(1_000_000)))
        .await
        .expect("level 3 with quorum");
    // An asset without thresholds is refused.
    refused(
        c.sign_digest(&wd, digest, "DOGE", 1, vec![]).await,
        "policy",
        "no thresholds configured for asset \"DOGE\"",
    );
    // Ed25519: approvals cover SHA-256 of the message.
    let message = b"solana transfer message".to_vec();
    let msg_digest: [u8; 32] = Sha256::digest(&message).into();
    let sol_spend = Spend { key_id: &id("wd-sol"), asset: "SOL", amount: 50, digest: &msg_digest };
    refused(
        c.sign_message(&id("wd-sol"), message.clone(), "SOL", 50, vec![]).await,
        "policy",
        "level 2 needs 1",
    );
    let sig = c
        .sign_message(&id("wd-sol"), message.clone(), "SOL", 50, h.approve(&[4], &sol_spend))
        .await
        .expect("sol level 2");
    common::check_ed25519(&sol.public_key, &message, &sig);
    audit::verify(&h.audit_path()).expect("audit verifies");
}

#[tokio::test]
async fn bad_approvals_are_refused_and_nothing_is_signed() {
    let h = Harness::start(my_uid()).await;
    let mut c = h.client("engine", &CLIENT_KEY).await;
    c.generate(&id("hot-eth"), Scheme::Secp256k1).await.expect("gen");
    let hot = id("hot-eth");
    let digest = keccak256(b"the approved transaction");
    let spend = Spend { key_id: &hot, asset: "ETH", amount: 5, digest: &digest };

    // Wrong: signed by a key that is not approver 2's.
    let mut wrong = h.approve(&[0, 1, 2], &spend);
    let outsider = ed25519_dalek::SigningKey::from_bytes(&[99; 32]);
    wrong[2] = Approval::sign("approver3", &outsider, &spend, now());
    refused(
        c.sign_digest(&hot, digest, "ETH", 5, wrong).await,
        "policy",
        "approval from \"approver3\" has an invalid signature",
    );
    // Wrong: a registered approver's signature with a tampered amount.
    let mut tampered = h.approve(&[0, 1, 2], &spend);
    tampered[0].amount = 6;
    refused(c.sign_digest(&hot, digest, "ETH", 6, tampered).await, "policy", "invalid signature");
    // Unknown approver.
    let mut unknown = h.approve(&[0, 1], &spend);
    unknown.push(Approval::sign("mallory", &outsider, &spend, now()));
    refused(c.sign_digest(&hot, digest, "ETH", 5, unknown).await, "policy", "unknown approver \"mallory\"");
    // Duplicate approver (two fresh approvals by the same person).
    let dup = h.approve(&[0, 1, 1], &spend);
    refused(
        c.sign_digest(&hot, digest, "ETH", 5, dup).await,
        "policy",
        "duplicate approval from approver \"approver2\"",
    );
    // Stale.
    let stale: Vec<_> = [0, 1, 2]
        .iter()
        .map(|&i| Approval::sign(&h.approvers[i].0, &h.approvers[i].1, &spend, now() - 3_600))
        .collect();
    refused(c.sign_digest(&hot, digest, "ETH", 5, stale).await, "policy", "stale approval");
    // Digest differs from the approved one.
    let other_digest = keccak256(b"a different transaction");
    refused(
        c.sign_digest(&hot, other_digest, "ETH", 5, h.approve(&[0, 1, 2], &spend)).await,
        "policy",
        &format!("not the requested {}", hex::encode(other_digest)),
    );
    // Approvals for another key.
    refused(
        c.sign_digest(&id("warm-eth"), digest, "ETH", 5, h.approve(&[0, 1, 2], &spend)).await,
        "policy",
        "is for another key id",
    );
    // Unknown key id (no policy) and a key with policy but not generated.
    refused(
        c.sign_digest(&id("nope"), digest, "ETH", 5, vec![]).await,
        "policy",
        "key \"nope\" has no signing policy",
    );
    refused(
        c.sign_digest(&id("wd-eth"), digest, "ETH", 1, vec![]).await,
        "signer",
        "unknown key id \"wd-eth\"",
    );
    assert_eq!(h.signed(), 1, "only the unknown-key attempt reached the backend");

    // Replayed: a valid set works once, then is refused.
    let good = h.approve(&[2, 3, 4], &spend);
    c.sign_digest(&hot, digest, "ETH", 5, good.clone()).await.expect("valid set signs");
    refused(c.sign_digest(&hot, digest, "ETH", 5, good.clone()).await, "replay", "replayed approval");
    // Mixing one used approval into an otherwise fresh set is refused too.
    let mut mixed = h.approve(&[0, 1], &spend);
    mixed.push(good[0].clone());
    refused(c.sign_digest(&hot, digest, "ETH", 5, mixed).await, "replay", "replayed approval");
    assert_eq!(h.signed(), 2);
}

#[tokio::test]
async fn requests_are_authenticated_and_replay_protected() {
    let h = Harness::start(my_uid()).await;
    // Wrong HMAC key.
    let mut forged = h.client("engine", &[0x99; 32]).await;
    refused(forged.ping().await, "authentication", "bad request mac");
    // Unknown client name.
    let mut stranger = h.client("stranger", &CLIENT_KEY).await;
    refused(stranger.ping().await, "authentication", "unknown client \"stranger\"");
    // A client without may_generate.
    let mut gw = h.client("gateway", &[0x22; 32]).await;
    refused(gw.generate(&id("wd-eth"), Scheme::Secp256k1).await, "authorisation", "may not create keys");
    // Counter replay: the same (validly MACed) request twice.
    let mut c = h.client("engine", &CLIENT_KEY).await;
    let body = r#"{"op":"ping"}"#;
    let counter = u64::MAX / 2;
    c.send_raw(body, counter).await.expect("first use");
    refused(c.send_raw(body, counter).await, "replay", "is not above the last accepted");
    refused(c.send_raw(body, counter - 1).await, "replay", "is not above");
    // Another connection of the same client cannot go back either.
    let mut c2 = h.client("engine", &CLIENT_KEY).await;
    refused(c2.send_raw(body, counter).await, "replay", "is not above");
    assert_eq!(h.signed(), 0);
}

#[tokio::test]
async fn replay_state_survives_a_restart() {
    let mut h = Harness::start(my_uid()).await;
    let mut c = h.client("engine", &CLIENT_KEY).await;
    c.generate(&id("hot-eth"), Scheme::Secp256k1).await.expect("gen");
    let digest = keccak256(b"x");
    let spend = Spend { key_id: &id("hot-eth"), asset: "ETH", amount: 1, digest: &digest };
    let approvals = h.approve(&[0, 1, 2], &spend);
    c.sign_digest(&id("hot-eth"), digest, "ETH", 1, approvals.clone()).await.expect("signs");
    let counter =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_micros() as u64;
    c.send_raw(r#"{"op":"ping"}"#, counter).await.expect("ping");
    drop(c);

    h.restart().await;
    let mut c = h.client("engine", &CLIENT_KEY).await;
    refused(c.send_raw(r#"{"op":"ping"}"#, counter).await, "replay", "not above");
    refused(c.sign_digest(&id("hot-eth"), digest, "ETH", 1, approvals).await, "replay", "replayed approval");
    let (head, _) = audit::verify(&h.audit_path()).expect("audit verifies across restarts");
    assert_eq!(head.entries, 5, "every request is audited: {head:?}");
}

#[tokio::test]
async fn audit_log_records_every_request_and_outcome() {
    let h = Harness::start(my_uid()).await;
    let mut c = h.client("engine", &CLIENT_KEY).await;
    c.generate(&id("wd-eth"), Scheme::Secp256k1).await.expect("gen");
    let digest = keccak256(b"audited");
    c.sign_digest(&id("wd-eth"), digest, "ETH", 1, vec![]).await.expect("sign");
    let _ = c.sign_digest(&id("hot-eth"), digest, "ETH", 1, vec![]).await;
    let mut forged = h.client("engine", &[0x98; 32]).await;
    let _ = forged.ping().await;

    let text = std::fs::read_to_string(h.audit_path()).expect("read audit");
    let entries: Vec<audit::AuditEntry> = text
        .lines()
        .map(|l| serde_json::from_str(l.split_once(' ').expect("line").1).expect("entry"))
        .collect();
    let ops: Vec<(&str, &str)> =
        entries.iter().map(|e| (e.op.as_str(), e.outcome.split(':').next().unwrap_or(""))).collect();
    assert_eq!(
        ops,
        vec![("generate", "ok"), ("sign_digest", "ok"), ("sign_digest", "refused"), ("invalid", "refused"),]
    );
    assert_eq!(entries[1].digest.as_deref(), Some(hex::encode(digest).as_str()));
    assert_eq!(entries[1].level, Some(1));
    assert!(entries[2].outcome.contains("level 3 needs 3"));
    assert!(entries[3].outcome.contains("bad request mac"));
    audit::verify(&h.audit_path()).expect("verifies");

    // Tamper: turn the refusal into an ok; the verifier points at that line.
    let tampered = text.replacen("\"outcome\":\"refused: policy", "\"outcome\":\"ok: policy", 1);
    std::fs::write(h.audit_path(), tampered).expect("write");
    match audit::verify(&h.audit_path()) {
        Err(audit::AuditError::Broken { line, .. }) => assert_eq!(line, 3),
        other => panic!("tampering must be detected, got {other:?}"),
    }
}

#[tokio::test]
async fn peers_outside_the_uid_allowlist_are_dropped() {
    let h = Harness::start(my_uid().wrapping_add(4242)).await;
    let mut c = h.client("engine", &CLIENT_KEY).await;
    assert!(
        matches!(c.ping().await, Err(ClientError::Closed) | Err(ClientError::Io(_))),
        "connection from a uid not on the allowlist must be closed"
    );
    let text = std::fs::read_to_string(h.audit_path()).expect("audit");
    assert!(text.contains("\"op\":\"connect\""), "{text}");
    assert!(text.contains("is not on the allowlist"), "{text}");
}

#[tokio::test]
async fn oversized_frames_and_messages_are_refused() {
    let h = Harness::start(my_uid()).await;
    let mut c = h.client("engine", &CLIENT_KEY).await;
    c.generate(&id("wd-sol"), Scheme::Ed25519).await.expect("gen");
    refused(
        c.sign_message(&id("wd-sol"), vec![0; 5000], "SOL", 1, vec![]).await,
        "signer",
        "exceeds the limit of 4096 bytes",
    );
    // A frame above max_frame_bytes closes the connection.
    let huge = "x".repeat(70 * 1024);
    assert!(c.send_raw(&huge, u64::MAX - 1).await.is_err());
    assert_eq!(h.signed(), 0);
}

#[tokio::test]
async fn derive_over_the_socket_creates_a_signing_key_and_is_audited() {
    use molly_chains::{derive_address, Chain, Network, Seed};
    const ABOUT: &str =
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
    let h = Harness::start(my_uid()).await;
    // The seed is imported on the signer host, never over the socket.
    h.signer.inner.import_seed(&id("install"), ABOUT, "").expect("import seed");
    let want =
        derive_address(&Seed::from_mnemonic(ABOUT, "").expect("seed"), Chain::Eth, Network::Mainnet, 0, 7)
            .expect("reference");

    let mut c = h.client("engine", &CLIENT_KEY).await;
    let info = c.derive(&id("wd-eth"), &id("install"), Scheme::Secp256k1, &want.path).await.expect("derive");
    assert_eq!(info.public_key.bytes, want.public_key);
    let derivation = info.derivation.clone().expect("derivation");
    assert_eq!(
        (derivation.seed_id.as_str(), derivation.path.to_string()),
        ("install", want.path.to_string())
    );
    assert_eq!(c.public_key(&id("wd-eth")).await.expect("public"), info.public_key);
    assert!(c.list().await.expect("list").contains(&info));
    // Asking again returns the same key.
    assert_eq!(
        c.derive(&id("wd-eth"), &id("install"), Scheme::Secp256k1, &want.path).await.expect("again"),
        info
    );

    // The derived key signs through the policy like any key.
    let digest = keccak256(b"sweep a deposit");
    let sig = c.sign_digest(&id("wd-eth"), digest, "ETH", 1, vec![]).await.expect("level 1");
    common::check_ecdsa(&info.public_key, &digest, &sig);

    // Refusals: a client without may_generate; an unknown seed; a
    // non-hardened ed25519 level; the raw JSON op name is "derive".
    let mut g = h.client("gateway", &[0x22; 32]).await;
    refused(
        g.derive(&id("hot-eth"), &id("install"), Scheme::Secp256k1, &want.path).await,
        "authorisation",
        "may not create keys",
    );
    refused(
        c.derive(&id("hot-eth"), &id("missing"), Scheme::Secp256k1, &want.path).await,
        "signer",
        "unknown seed id \"missing\"",
    );
    refused(
        c.derive(&id("wd-sol"), &id("install"), Scheme::Ed25519, &"m/44'/501'/0'/0".parse().expect("path"))
            .await,
        "signer",
        "not hardened",
    );
    let body = r#"{"op":"derive","key_id":"hot-eth","seed_id":"install","scheme":"secp256k1","path":"m/44'/60'/1'/0/0"}"#;
    match c.send_raw(body, u64::MAX / 2).await.expect("raw derive") {
        molly_hsm_bridge::protocol::Response::Derived(k) => assert_eq!(k.id, id("hot-eth")),
        other => panic!("expected Derived, got {other:?}"),
    }

    let text = std::fs::read_to_string(h.audit_path()).expect("read audit");
    let entries: Vec<audit::AuditEntry> = text
        .lines()
        .map(|l| serde_json::from_str(l.split_once(' ').expect("line").1).expect("entry"))
        .collect();
    let derives: Vec<_> = entries.iter().filter(|e| e.op == "derive").collect();
    assert_eq!(derives.len(), 6, "every derive is audited: {entries:?}");
    assert_eq!(derives[0].outcome, "ok");
    assert_eq!(derives[0].key_id.as_deref(), Some("wd-eth"));
    assert_eq!(derives[0].derivation.as_deref(), Some("secp256k1 install m/44'/60'/0'/0/7"));
    assert!(derives[2].outcome.starts_with("refused: authorisation"), "{:?}", derives[2]);
    assert!(derives[3].outcome.contains("unknown seed id"), "{:?}", derives[3]);
    assert_eq!(derives[5].outcome, "ok");
    audit::verify(&h.audit_path()).expect("audit verifies");
    assert!(!text.contains("abandon"), "no mnemonic in the audit log");
}
