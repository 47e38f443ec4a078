//! `molly signer ...`: the isolated signer process and its operator tools
//! (the logic lives in `molly-hsm-bridge`; see docs/hsm-bridge.md).

use std::path::PathBuf;

use anyhow::Context as _;
use molly_hsm_bridge::approvals::Spend;
use molly_hsm_bridge::protocol::Request;
use molly_hsm_bridge::{process, KeyId};

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
