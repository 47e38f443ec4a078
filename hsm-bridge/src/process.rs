//! Entry points of `molly signer ...`: each builds its own tokio runtime so
//! the `molly` binary needs no async runtime of its own.

use std::path::Path;
use std::sync::Arc;

use zeroize::Zeroizing;

use crate::audit;
use crate::config::{BackendConfig, SignerConfig};
use crate::error::{Result, SignerError};
use crate::keystore::SoftwareKeystore;
use crate::pkcs11::{Pkcs11Config, Pkcs11Signer};
use crate::server::{bind, SignerService};
use crate::signer::Signer;

fn secret_from_env(var: &str, what: &str) -> Result<Zeroizing<String>> {
    std::env::var(var)
        .map(Zeroizing::new)
        .map_err(|_| SignerError::Config(format!("{what}: environment variable {var} is not set")))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| SignerError::Task(format!("tokio runtime: {e}")))
}

/// Opens the configured backend.
pub async fn open_backend(backend: &BackendConfig) -> Result<Arc<dyn Signer>> {
    match backend {
        BackendConfig::Software { dir, passphrase_env, kdf } => {
            let pass = secret_from_env(passphrase_env, "keystore passphrase")?;
            let ks = SoftwareKeystore::open_or_create(dir, pass.as_bytes(), kdf.unwrap_or_default())?;
            Ok(Arc::new(ks))
        }
        BackendConfig::Pkcs11 { module, token_label, pin_env } => {
            let cfg = Pkcs11Config {
                module: module.clone(),
                token_label: token_label.clone(),
                user_pin: secret_from_env(pin_env, "pkcs#11 user pin")?,
            };
            Ok(Arc::new(
                tokio::task::spawn_blocking(move || Pkcs11Signer::open(&cfg))
                    .await
                    .map_err(|e| SignerError::Task(e.to_string()))??,
            ))
        }
        #[cfg(feature = "kms")]
        BackendConfig::AwsKms { region, endpoint } => {
            Ok(Arc::new(crate::kms::KmsSigner::connect(region, endpoint.as_deref()).await?))
        }
        #[cfg(not(feature = "kms"))]
        BackendConfig::AwsKms { .. } => Err(SignerError::Config(
            "this build has no AWS KMS backend (build with the `kms` feature)".into(),
        )),
    }
}

/// `molly signer serve --config FILE`: runs until SIGINT or SIGTERM.
pub fn serve(config_path: &Path) -> Result<()> {
    let config = SignerConfig::load(config_path)?;
    runtime()?.block_on(async {
        let signer = open_backend(&config.backend).await?;
        let service = Arc::new(SignerService::from_config(&config, signer)?);
        let listener = bind(&config.socket, config.socket_mode)?;
        eprintln!(
            "molly signer: {} backend, listening on {}, audit log {}",
            config_backend_name(&config.backend),
            config.socket.display(),
            config.audit_log.display()
        );
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
        };
        let result = service.serve(listener, shutdown).await;
        let _ = std::fs::remove_file(&config.socket);
        eprintln!("molly signer: stopped");
        result
    })
}

fn config_backend_name(b: &BackendConfig) -> &'static str {
    match b {
        BackendConfig::Software { .. } => "software",
        BackendConfig::Pkcs11 { .. } => "pkcs11",
        BackendConfig::AwsKms { .. } => "aws-kms",
    }
}

/// `molly signer verify-audit FILE`: checks the chain, returns the head.
pub fn verify_audit(path: &Path) -> std::result::Result<audit::Head, audit::AuditError> {
    audit::verify(path).map(|(head, _)| head)
}

/// Reads an approver's Ed25519 seed file (hex, 32 bytes, mode 0600).
pub fn read_approver_key(path: &Path) -> Result<ed25519_dalek::SigningKey> {
    let bytes = crate::config::read_client_key(path)?;
    let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
        bytes
            .as_slice()
            .try_into()
            .map_err(|_| SignerError::Config(format!("approver key {} must be 32 bytes", path.display())))?,
    );
    Ok(ed25519_dalek::SigningKey::from_bytes(&seed))
}

/// `molly signer approve`: an approver signs off a spend; prints the approval JSON.
pub fn approve(
    seed_file: &Path,
    approver: &str,
    spend: &crate::approvals::Spend<'_>,
) -> Result<crate::approvals::Approval> {
    let key = read_approver_key(seed_file)?;
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    Ok(crate::approvals::Approval::sign(approver, &key, spend, now))
}

/// `molly signer call`: one request as a configured client; returns the response.
pub fn call(
    socket: &Path,
    client: &str,
    key_file: &Path,
    request: &crate::protocol::Request,
) -> std::result::Result<crate::protocol::Response, String> {
    let key = crate::config::read_client_key(key_file).map_err(|e| e.to_string())?;
    let rt = runtime().map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut c = crate::client::SignerClient::connect(socket, client, key, 1 << 20)
            .await
            .map_err(|e| e.to_string())?;
        c.call(request).await.map_err(|e| e.to_string())
    })
}

/// Reads a secret text file (mnemonic or BIP39 passphrase); one trailing
/// newline (`\n` or `\r\n`) is ignored, as `molly wallets` does.
fn read_secret_text(path: &Path) -> Result<Zeroizing<String>> {
    let mut text =
        Zeroizing::new(std::fs::read_to_string(path).map_err(|e| SignerError::io("read", path, e))?);
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(text)
}

/// `molly signer import-seed`: seals the BIP39 seed of the mnemonic in
/// `mnemonic_file` (and optional BIP39 passphrase file) as `seed_id` in the
/// software keystore that `config_path` names, on the signer host. The
/// mnemonic never crosses the signer socket. It may run while the signer
/// serves: `derive` reads seed files when it needs them.
pub fn import_seed(
    config_path: &Path,
    seed_id: &crate::types::KeyId,
    mnemonic_file: &Path,
    passphrase_file: Option<&Path>,
) -> Result<()> {
    let config = SignerConfig::load(config_path)?;
    let BackendConfig::Software { dir, passphrase_env, kdf } = &config.backend else {
        return Err(SignerError::Unsupported {
            backend: config_backend_name(&config.backend),
            what: "importing a seed",
            advice: "seeds live only in a software keystore signer; run a separate signer process with a \
                     software backend for hd-derived keys (see docs/hsm-bridge.md)",
        });
    };
    let pass = secret_from_env(passphrase_env, "keystore passphrase")?;
    let keystore = SoftwareKeystore::open_or_create(dir, pass.as_bytes(), kdf.unwrap_or_default())?;
    let mnemonic = read_secret_text(mnemonic_file)?;
    let bip39_passphrase = match passphrase_file {
        Some(p) => read_secret_text(p)?,
        None => Zeroizing::new(String::new()),
    };
    keystore.import_seed(seed_id, &mnemonic, &bip39_passphrase)
}
