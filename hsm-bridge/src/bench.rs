//! `molly bench signer`: signatures per second per backend and the IPC round trip.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use zeroize::Zeroizing;

use crate::approvals::{Policy, PolicyConfig};
use crate::client::SignerClient;
use crate::config::Limits;
use crate::error::{Result, SignerError};
use crate::keystore::{KdfParams, SoftwareKeystore};
use crate::server::{bind, ClientEntry, SignerService};
use crate::signer::Signer;
use crate::types::{KeyId, Scheme};

/// The report written to `--json FILE`.
#[derive(Debug, Serialize)]
pub struct SignerBench {
    /// Seconds spent per measurement.
    pub seconds_per_measurement: f64,
    /// Software keystore, secp256k1 digests signed per second (one task).
    pub software_secp256k1_per_second: f64,
    /// Software keystore, Ed25519 messages (32 bytes) signed per second.
    pub software_ed25519_per_second: f64,
    /// SoftHSM2 over PKCS#11, secp256k1 (includes low-S + trial recovery).
    pub softhsm_secp256k1_per_second: Option<f64>,
    /// SoftHSM2 over PKCS#11, Ed25519.
    pub softhsm_ed25519_per_second: Option<f64>,
    /// Mean round trip of an authenticated, audited `ping` over the socket
    /// (framing, JSON, HMAC both ways, counter, audit append without fsync),
    /// microseconds: the cost of the IPC channel itself.
    pub ipc_round_trip_us: f64,
    /// Same with the audit log fsynced per entry (the default config):
    /// dominated by the disk, microseconds.
    pub ipc_round_trip_fsync_us: f64,
    /// Mean round trip of a level-1 secp256k1 `sign_digest` over the socket
    /// (software keystore, fsync on), microseconds.
    pub ipc_sign_digest_us: f64,
}

async fn rate<F, Fut>(budget: Duration, mut op: F) -> Result<f64>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    // Warm up.
    for i in 0..10 {
        op(i).await?;
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        op(n).await?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

async fn signer_rates(signer: &dyn Signer, tag: &str, budget: Duration) -> Result<(f64, f64)> {
    let eth = KeyId::new(format!("bench-{tag}-eth"))?;
    let sol = KeyId::new(format!("bench-{tag}-sol"))?;
    signer.generate(&eth, Scheme::Secp256k1).await?;
    signer.generate(&sol, Scheme::Ed25519).await?;
    let secp = rate(budget, |i| {
        let eth = &eth;
        async move {
            let mut digest = [0u8; 32];
            digest[..8].copy_from_slice(&i.to_be_bytes());
            signer.sign_digest(eth, &digest).await.map(|_| ())
        }
    })
    .await?;
    let ed = rate(budget, |i| {
        let sol = &sol;
        async move {
            let mut message = [0u8; 32];
            message[..8].copy_from_slice(&i.to_be_bytes());
            signer.sign_message(sol, &message).await.map(|_| ())
        }
    })
    .await?;
    Ok((secp, ed))
}

async fn ipc_rates(dir: &Path, budget: Duration) -> Result<(f64, f64, f64)> {
    let keystore =
        Arc::new(SoftwareKeystore::create(&dir.join("ipc-keys"), b"bench", KdfParams::insecure_for_tests())?);
    let key_id = KeyId::new("bench-wd")?;
    keystore.generate(&key_id, Scheme::Secp256k1).await?;
    let uid = std::os::unix::fs::MetadataExt::uid(
        &std::fs::metadata("/proc/self").map_err(|e| SignerError::io("stat", "/proc/self", e))?,
    );
    let approver = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let mut keys = BTreeMap::new();
    keys.insert(key_id.clone(), crate::approvals::KeyPolicy { tier: crate::approvals::Tier::Withdrawal });
    let mut assets = BTreeMap::new();
    assets.insert(
        "ETH".to_string(),
        crate::approvals::Thresholds { level2_from: u128::MAX, level3_from: u128::MAX },
    );
    let mut out = Vec::new();
    for (fsync, sign) in [(true, false), (false, false), (true, true)] {
        let policy = Policy::new(PolicyConfig {
            quorum: 1,
            approvers: vec![crate::approvals::ApproverConfig {
                id: "a".into(),
                public_key: approver.verifying_key().to_bytes(),
            }],
            max_approval_age_secs: 60,
            max_clock_skew_secs: 5,
            max_remembered_approvals: 1000,
            keys: keys.clone(),
            assets: assets.clone(),
        })
        .map_err(SignerError::Config)?;
        let mut clients = HashMap::new();
        clients.insert(
            "bench".to_string(),
            ClientEntry { uid, key: Zeroizing::new(vec![1; 32]), may_generate: false },
        );
        let tag = format!("{fsync}-{sign}");
        let service = Arc::new(SignerService::new(
            keystore.clone(),
            policy,
            clients,
            &dir.join(format!("audit-{tag}.log")),
            fsync,
            Limits::default(),
        )?);
        let socket = dir.join(format!("signer-{tag}.sock"));
        let listener = bind(&socket, 0o600)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(service.serve(listener, async {
            let _ = stopped.await;
        }));
        let client = SignerClient::connect(&socket, "bench", Zeroizing::new(vec![1; 32]), 1 << 16)
            .await
            .map_err(|e| SignerError::Task(e.to_string()))?;
        let client = tokio::sync::Mutex::new(client);
        let per_second = rate(budget, |i| {
            let client = &client;
            let key_id = &key_id;
            async move {
                let mut c = client.lock().await;
                let r = if sign {
                    let mut digest = [0u8; 32];
                    digest[..8].copy_from_slice(&i.to_be_bytes());
                    c.sign_digest(key_id, digest, "ETH", 1, vec![]).await.map(|_| ())
                } else {
                    c.ping().await
                };
                r.map_err(|e| SignerError::Task(e.to_string()))
            }
        })
        .await?;
        out.push(1e6 / per_second);
        let _ = stop.send(());
        let _ = server.await;
    }
    Ok((out[0], out[1], out[2]))
}

/// Runs every measurement, `seconds` each. SoftHSM2 is required unless
/// `MOLLY_SKIP_SOFTHSM=1` (then its figures are null).
pub fn run(seconds: f64) -> Result<SignerBench> {
    if !(seconds > 0.0 && seconds <= 600.0) {
        return Err(SignerError::Config(format!("--seconds must be above 0 and at most 600, got {seconds}")));
    }
    let budget = Duration::from_secs_f64(seconds);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| SignerError::Task(format!("tokio runtime: {e}")))?;
    rt.block_on(async {
        let dir = tempfile::tempdir().map_err(|e| SignerError::io("create", std::env::temp_dir(), e))?;
        let soft =
            SoftwareKeystore::create(&dir.path().join("soft"), b"bench", KdfParams::insecure_for_tests())?;
        let (software_secp256k1_per_second, software_ed25519_per_second) =
            signer_rates(&soft, "soft", budget).await?;
        let (softhsm_secp256k1_per_second, softhsm_ed25519_per_second) = if crate::softhsm::skip_requested() {
            (None, None)
        } else {
            let token = crate::softhsm::process_token()?;
            let hsm = token.signer()?;
            let (a, b) = signer_rates(&hsm, "hsm", budget).await?;
            (Some(a), Some(b))
        };
        let (ipc_round_trip_fsync_us, ipc_round_trip_us, ipc_sign_digest_us) =
            ipc_rates(dir.path(), budget).await?;
        Ok(SignerBench {
            seconds_per_measurement: seconds,
            software_secp256k1_per_second,
            software_ed25519_per_second,
            softhsm_secp256k1_per_second,
            softhsm_ed25519_per_second,
            ipc_round_trip_us,
            ipc_round_trip_fsync_us,
            ipc_sign_digest_us,
        })
    })
}
