//! # molly-chains: keys and addresses for ETH, Tron, Bitcoin and Solana
//!
//! **Owns:** turning one installation's BIP39 mnemonic into deposit
//! addresses on every chain Molly serves, validating withdrawal destinations,
//! and generating (and durably recording) millions of wallets with their hot
//! and warm sweep targets. It also defines the chain-gateway interface
//! ([`gateway::ChainGateway`]: deposit events, withdrawals, fees, head) that
//! each chain's gateway crate implements; no network code lives here.
//!
//! **Must not:** hold private keys for ETH, Tron or Bitcoin deposit
//! addresses (they come from the account-level xpub by public derivation;
//! only the one-off [`secp::AccountXpub::from_seed`] step touches the seed);
//! do I/O during derivation (only [`walletfile`] touches the disk); sign
//! anything. Solana is the exception: SLIP-0010 ed25519 has no public
//! derivation, so Solana addresses are derived from the seed where the key
//! lives (the signer), and [`batch::SolDeriver`] holds a private key.
//!
//! ```text
//!  mnemonic ──BIP39──▶ seed ──BIP32 (hardened, private)──▶ account xpub  m/44'/60'/a'  (eth)
//!                        │                                       │         m/44'/195'/a' (tron)
//!                        │                                       │         m/84'/0'/a'   (btc, zpub)
//!                        │                       public, non-hardened 0/i (batch::SecpDeriver)
//!                        │                                       ▼
//!                        │                          deposit key ──▶ EIP-55 / base58check 0x41 / bech32
//!                        └──SLIP-0010 ed25519, all hardened──▶ m/44'/501'/i'/0' ──▶ base58 (sol)
//! ```
//!
//! **Limits:** English mnemonics only; Bitcoin deposits are P2WPKH only
//! (withdrawals may go to P2PKH, P2SH, P2WPKH, P2WSH or P2TR); indices and
//! accounts are below 2^31; a BIP32 child that is invalid (probability about
//! 2^-127) is reported as an error, not skipped.
//!
//! ```
//! use molly_chains::{address, derive_address, Chain, Network, Seed};
//!
//! let seed = Seed::from_mnemonic(
//!     "all all all all all all all all all all all all", "").unwrap();
//! // Trezor's published test fixture for m/44'/60'/0'/0/0.
//! let addr = derive_address(&seed, Chain::Eth, Network::Mainnet, 0, 0).unwrap();
//! assert_eq!(addr.address, "0x73d0385F4d8E00C5e6504C6030F47BF6212736A8");
//! assert_eq!(addr.path.to_string(), "m/44'/60'/0'/0/0");
//! assert!(address::validate(Chain::Eth, Network::Mainnet, &addr.address).is_ok());
//! ```

pub mod address;
pub mod batch;
pub mod chain;
pub mod gateway;
pub mod generate;
pub mod path;
pub mod secp;
pub mod seed;
pub mod slip10;
pub mod walletfile;

pub use chain::{Chain, Network};
pub use seed::Seed;

use crate::path::Path;

/// One derived wallet: where it is in the tree and what it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivedAddress {
    /// The chain.
    pub chain: Chain,
    /// Full derivation path from the master key.
    pub path: Path,
    /// Public key: compressed SEC1 for secp256k1 chains, 32 bytes for Solana.
    pub public_key: Vec<u8>,
    /// The address text.
    pub address: String,
}

/// Why a single derivation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeriveAddressError {
    /// A secp256k1 key error.
    #[error(transparent)]
    Key(#[from] secp::KeyError),
    /// A path error.
    #[error(transparent)]
    Path(#[from] path::PathError),
}

/// Derives wallet `index` of `account` on `chain` the reference way (one key
/// at a time, through the `bitcoin` crate's BIP32 for secp256k1 chains and
/// SLIP-0010 for Solana). ETH/Tron/BTC go through the account xpub, exactly
/// as the deposit side does.
pub fn derive_address(
    seed: &Seed,
    chain: Chain,
    network: Network,
    account: u32,
    index: u32,
) -> Result<DerivedAddress, DeriveAddressError> {
    let path = path::deposit_path(chain, network, account, index)?;
    if chain == Chain::Sol {
        let key = slip10::Ed25519Xpriv::derive(seed, &path)?;
        let public = key.public_key();
        let mut buf = address::AddressBuf::default();
        address::encode_sol(&public, &mut buf);
        return Ok(DerivedAddress {
            chain,
            path,
            public_key: public.to_vec(),
            address: buf.as_str().to_owned(),
        });
    }
    let account_key = secp::AccountXpub::from_seed(seed, chain, network, account)?;
    derive_from_xpub(&account_key, account, index)
}

/// Derives deposit `index` from an account xpub (no private key involved).
pub fn derive_from_xpub(
    account_key: &secp::AccountXpub,
    account: u32,
    index: u32,
) -> Result<DerivedAddress, DeriveAddressError> {
    let (chain, network) = (account_key.chain(), account_key.network());
    let path = path::deposit_path(chain, network, account, index)?;
    let key = account_key.deposit_pubkey(index)?;
    Ok(DerivedAddress {
        chain,
        path,
        public_key: key.serialize().to_vec(),
        address: address::encode_secp(chain, network, &key).as_str().to_owned(),
    })
}
