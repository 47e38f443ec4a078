//! `molly signer ...`: the isolated signer process and its operator tools
//! (the logic lives in `molly-hsm-bridge`; see docs/hsm-bridge.md).

use std::path::PathBuf;

use anyhow::Context as _;
use molly_hsm_bridge::approvals::Spend;
use molly_hsm_bridge::protocol::{Request, Response};
use molly_hsm_bridge::{process, KeyId, Scheme};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Run the signer on its Unix socket until SIGINT/SIGTERM.
    Serve {
        /// JSON config (socket, audit log, backend, clients, limits, policy).
        #[arg(long)]
        config: PathBuf,
    },
    /// Verify the audit log's hash chain; prints entries and head hash.
    VerifyAudit {
        /// Audit log file.
        file: PathBuf,
    },
    /// Write a new random 32-byte secret (client HMAC key or approver seed), hex, mode 0600.
    NewSecret {
        /// File to create (never overwritten).
        file: PathBuf,
    },
    /// Print the Ed25519 public key of an approver seed file (for the policy config).
    ApproverPublicKey {
        /// Approver seed file.
        file: PathBuf,
    },
    /// Sign off a spend as an approver; prints the approval JSON.
    Approve {
        /// Approver id as registered.
        #[arg(long)]
        approver: String,
        /// Approver seed file.
        #[arg(long)]
        seed_file: PathBuf,
        /// Signing key id.
        #[arg(long)]
        key_id: String,
        /// Asset symbol.
        #[arg(long)]
        asset: String,
        /// Amount in base units.
        #[arg(long)]
        amount: u128,
        /// Digest to approve, 64 hex characters (SHA-256 of the message for Ed25519 keys).
        #[arg(long)]
        digest: String,
    },
    /// Seal a BIP39 seed (English mnemonic, optional passphrase) in the software
    /// keystore of a signer config, on the signer host. Only the sealed seed is
    /// stored; the mnemonic never crosses the signer socket.
    ImportSeed {
        /// Signer config (its backend must be `software`; passphrase from its `passphrase_env`).
        #[arg(long)]
        config: PathBuf,
        /// File holding the mnemonic (12-24 English words).
        #[arg(long)]
        mnemonic_file: PathBuf,
        /// File holding the BIP39 passphrase (one trailing newline is ignored).
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// Id to give the seed (same rules as key ids).
        #[arg(long)]
        seed_id: String,
    },
    /// Derive a key inside the running signer from an imported seed (a `derive`
    /// request over the socket, audited): wallet `index` of `account` on `chain`
    /// at molly-chains' path. Prints the key, its path and its address.
    Derive {
        /// Signer socket.
        #[arg(long)]
        socket: PathBuf,
        /// Client name (needs `may_generate`).
        #[arg(long)]
        client: String,
        /// Client HMAC key file.
        #[arg(long)]
        key_file: PathBuf,
        /// Seed id given to `import-seed`.
        #[arg(long)]
        seed_id: String,
        /// eth, tron, btc or sol.
        #[arg(long)]
        chain: molly_chains::Chain,
        /// Wallet index (below 2^31).
        #[arg(long)]
        index: u32,
        /// Account (0 deposits, 1 hot, 2 warm by default in `molly wallets generate`).
        #[arg(long, default_value_t = 0)]
        account: u32,
        /// mainnet, testnet or regtest (changes Bitcoin's coin type and address only).
        #[arg(long, default_value = "mainnet")]
        network: molly_chains::Network,
        /// Id of the key to create.
        #[arg(long)]
        key_id: String,
    },
    /// Send one request (JSON, e.g. '{"op":"list"}') as a configured client.
    Call {
        /// Signer socket.
        #[arg(long)]
        socket: PathBuf,
        /// Client name.
        #[arg(long)]
        client: String,
        /// Client HMAC key file.
        #[arg(long)]
        key_file: PathBuf,
        /// Request JSON.
        request: String,
    },
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => process::serve(&config).context("molly signer serve"),
        Command::VerifyAudit { file } => {
            let head = process::verify_audit(&file)?;
            println!("audit log ok: {} entries, head {}", head.entries, head.hash);
            Ok(())
        }
        Command::NewSecret { file } => {
            molly_hsm_bridge::config::write_new_client_key(&file)?;
            println!("wrote {}", file.display());
            Ok(())
        }
        Command::ApproverPublicKey { file } => {
            let key = process::read_approver_key(&file)?;
            println!("{}", hex::encode(key.verifying_key().to_bytes()));
            Ok(())
        }
        Command::Approve { approver, seed_file, key_id, asset, amount, digest } => {
            let key_id = KeyId::new(key_id)?;
            let mut d = [0u8; 32];
            hex::decode_to_slice(digest.trim_start_matches("0x"), &mut d)
                .context("--digest must be 64 hex characters")?;
            let approval = process::approve(
                &seed_file,
                &approver,
                &Spend { key_id: &key_id, asset: &asset, amount, digest: &d },
            )?;
            println!("{}", serde_json::to_string(&approval)?);
            Ok(())
        }
        Command::ImportSeed { config, mnemonic_file, passphrase_file, seed_id } => {
            let seed_id = KeyId::new(seed_id)?;
            process::import_seed(&config, &seed_id, &mnemonic_file, passphrase_file.as_deref())
                .context("molly signer import-seed")?;
            println!("sealed seed {seed_id}");
            Ok(())
        }
        Command::Derive { socket, client, key_file, seed_id, chain, index, account, network, key_id } => {
            let path = molly_chains::path::deposit_path(chain, network, account, index)?;
            let scheme = if chain == molly_chains::Chain::Sol { Scheme::Ed25519 } else { Scheme::Secp256k1 };
            let request =
                Request::Derive { key_id: KeyId::new(key_id)?, seed_id: KeyId::new(seed_id)?, scheme, path };
            let info =
                match process::call(&socket, &client, &key_file, &request).map_err(anyhow::Error::msg)? {
                    Response::Derived(info) => info,
                    other => anyhow::bail!("unexpected answer from the signer: {other:?}"),
                };
            let derivation = info.derivation.as_ref().context("the signer did not report a derivation")?;
            let out = serde_json::json!({
                "key_id": info.id,
                "scheme": info.scheme,
                "seed_id": derivation.seed_id,
                "path": derivation.path.to_string(),
                "public_key": hex::encode(&info.public_key.bytes),
                "chain": chain.name(),
                "network": network.name(),
                "address": info.public_key.address(chain, network)?,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
        Command::Call { socket, client, key_file, request } => {
            let request: Request =
                serde_json::from_str(&request).context("request is not a valid request JSON")?;
            let response =
                process::call(&socket, &client, &key_file, &request).map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string_pretty(&response)?);
            Ok(())
        }
    }
}
