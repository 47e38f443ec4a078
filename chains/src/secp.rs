//! secp256k1 keys for ETH, Tron and Bitcoin: BIP32 through the `bitcoin` crate.
//!
//! The private side ([`AccountXpub::from_seed`]) runs once per account, where
//! the seed lives. Everything below the account (`0/i`) is public derivation,
//! so the deposit side only ever holds an [`AccountXpub`].

use std::fmt;
use std::sync::OnceLock;

use bitcoin::base58;
use bitcoin::bip32::{ChildNumber, Xpriv, Xpub};
use bitcoin::secp256k1::{self, Secp256k1, VerifyOnly};

use crate::chain::{Chain, Network};
use crate::path::{self, Path, PathError, HARDENED};
use crate::seed::Seed;

/// Why a secp256k1 key could not be derived or parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The path is malformed or misuses hardened levels.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The chain has no secp256k1 keys (Solana).
    #[error("{0} does not use secp256k1 bip32 keys")]
    NotSecp256k1(Chain),
    /// BIP32 refused a derivation step (an invalid child, probability ~2^-127).
    #[error("bip32 derivation failed at {path}: {reason}")]
    Derivation {
        /// The path being derived.
        path: String,
        /// The library's reason.
        reason: String,
    },
    /// An extended public key string could not be read.
    #[error("invalid extended public key: {0}")]
    BadXpub(String),
}

/// Secp256k1 verification context, built once.
pub(crate) fn secp() -> &'static Secp256k1<VerifyOnly> {
    static CTX: OnceLock<Secp256k1<VerifyOnly>> = OnceLock::new();
    CTX.get_or_init(Secp256k1::verification_only)
}

fn child(c: u32) -> ChildNumber {
    if c & HARDENED != 0 {
        ChildNumber::Hardened { index: c & !HARDENED }
    } else {
        ChildNumber::Normal { index: c }
    }
}

/// BIP32 private derivation from the seed along `path`. Each intermediate
/// private key is erased once its child exists (best effort: `bitcoin`'s
/// keys do not zero themselves on drop, see [`derive_secret_key`]).
pub fn derive_xpriv(seed: &Seed, path: &Path) -> Result<Xpriv, KeyError> {
    let fail =
        |e: bitcoin::bip32::Error| KeyError::Derivation { path: path.to_string(), reason: e.to_string() };
    let signing = Secp256k1::signing_only();
    let mut key = Xpriv::new_master(bitcoin::NetworkKind::Main, seed.as_bytes()).map_err(fail)?;
    for &c in path.children() {
        let next = key.derive_priv(&signing, &[child(c)]);
        key.private_key.non_secure_erase();
        key = next.map_err(fail)?;
    }
    Ok(key)
}

/// The 32-byte BIP32 private key at `path`, for a signer that keeps it
/// (`molly-hsm-bridge`'s keystore derives its keys with this). The bytes
/// zero themselves on drop and the `bitcoin` key they came from is erased
/// before returning; any copy the compiler made on the way is beyond reach
/// (see `secp256k1::SecretKey::non_secure_erase`).
pub fn derive_secret_key(seed: &Seed, path: &Path) -> Result<zeroize::Zeroizing<[u8; 32]>, KeyError> {
    let mut xpriv = derive_xpriv(seed, path)?;
    let secret = zeroize::Zeroizing::new(xpriv.private_key.secret_bytes());
    xpriv.private_key.non_secure_erase();
    Ok(secret)
}

/// SLIP-0132 version bytes for the account key's text form.
fn public_version(chain: Chain, network: Network) -> [u8; 4] {
    match (chain, network) {
        // zpub / vpub: BIP84 P2WPKH accounts.
        (Chain::Btc, Network::Mainnet) => [0x04, 0xb2, 0x47, 0x46],
        (Chain::Btc, _) => [0x04, 0x5f, 0x1c, 0xf6],
        // xpub: BIP44 accounts (ETH and Tron wallets use it on every network).
        _ => [0x04, 0x88, 0xb2, 0x1e],
    }
}

/// The account-level extended public key of a secp256k1 chain
/// (`m/purpose'/coin'/account'`), from which every deposit key is derived
/// without a private key.
#[derive(Clone, PartialEq, Eq)]
pub struct AccountXpub {
    chain: Chain,
    network: Network,
    xpub: Xpub,
}

impl fmt::Debug for AccountXpub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AccountXpub({} {} {self})", self.chain, self.network)
    }
}

impl AccountXpub {
    /// Derives the account key from the seed (the only private step).
    pub fn from_seed(
        seed: &Seed,
        chain: Chain,
        network: Network,
        account: u32,
    ) -> Result<AccountXpub, KeyError> {
        if !chain.is_secp256k1() {
            return Err(KeyError::NotSecp256k1(chain));
        }
        let path = path::account_path(chain, network, account)?;
        let xpriv = derive_xpriv(seed, &path)?;
        Ok(AccountXpub { chain, network, xpub: Xpub::from_priv(&Secp256k1::signing_only(), &xpriv) })
    }

    /// Reads the text form written by `Display` (xpub, or zpub/vpub for Bitcoin).
    /// The version prefix must match the chain and network, and the key must
    /// be an account-level key (depth 3, hardened child number).
    pub fn parse(s: &str, chain: Chain, network: Network) -> Result<AccountXpub, KeyError> {
        if !chain.is_secp256k1() {
            return Err(KeyError::NotSecp256k1(chain));
        }
        let mut data =
            base58::decode_check(s.trim()).map_err(|e| KeyError::BadXpub(format!("base58check: {e}")))?;
        if data.len() != 78 {
            return Err(KeyError::BadXpub(format!("decoded to {} bytes, expected 78", data.len())));
        }
        let want = public_version(chain, network);
        if data[..4] != want {
            return Err(KeyError::BadXpub(format!(
                "version bytes {} do not belong to a {chain} {network} account key (expected {})",
                hex::encode(&data[..4]),
                hex::encode(want)
            )));
        }
        data[..4].copy_from_slice(&[0x04, 0x88, 0xb2, 0x1e]);
        let xpub = Xpub::decode(&data).map_err(|e| KeyError::BadXpub(e.to_string()))?;
        if xpub.depth != 3 || xpub.child_number.is_normal() {
            return Err(KeyError::BadXpub(format!(
                "depth {} key with child {}: expected an account-level key (depth 3, hardened)",
                xpub.depth, xpub.child_number
            )));
        }
        Ok(AccountXpub { chain, network, xpub })
    }

    /// The chain this account belongs to.
    pub fn chain(&self) -> Chain {
        self.chain
    }

    /// The network this account belongs to.
    pub fn network(&self) -> Network {
        self.network
    }

    /// The underlying BIP32 key.
    pub fn xpub(&self) -> &Xpub {
        &self.xpub
    }

    /// Public derivation of a path below the account (every level non-hardened).
    pub fn derive(&self, below: &[u32]) -> Result<Xpub, KeyError> {
        let mut key = self.xpub;
        for (level, &c) in below.iter().enumerate() {
            if c & HARDENED != 0 {
                return Err(PathError::HardenedFromPublic { level: level + 1, child: c & !HARDENED }.into());
            }
            key = key.ckd_pub(secp(), child(c)).map_err(|e| KeyError::Derivation {
                path: format!(
                    "account/{}",
                    below[..=level].iter().map(u32::to_string).collect::<Vec<_>>().join("/")
                ),
                reason: e.to_string(),
            })?;
        }
        Ok(key)
    }

    /// The external (receive) chain key `account/0`, parent of every deposit key.
    pub fn external(&self) -> Result<Xpub, KeyError> {
        self.derive(&[0])
    }

    /// Public key of deposit `index` (`account/0/index`), one at a time.
    /// Bulk generation uses [`crate::batch`] instead, which gives the same keys.
    pub fn deposit_pubkey(&self, index: u32) -> Result<secp256k1::PublicKey, KeyError> {
        let index = path::check_index("index", u64::from(index))?;
        Ok(self.derive(&[0, index])?.public_key)
    }
}

impl fmt::Display for AccountXpub {
    /// xpub for ETH/Tron, zpub (mainnet) or vpub (test networks) for Bitcoin.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut data = self.xpub.encode();
        data[..4].copy_from_slice(&public_version(self.chain, self.network));
        f.write_str(&base58::encode_check(&data))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed() -> Seed {
        Seed::from_bytes(&[1u8; 32]).unwrap()
    }

    #[test]
    fn account_xpub_text_round_trips_and_checks_its_prefix() {
        for (chain, net, prefix) in [
            (Chain::Eth, Network::Mainnet, "xpub"),
            (Chain::Tron, Network::Mainnet, "xpub"),
            (Chain::Btc, Network::Mainnet, "zpub"),
            (Chain::Btc, Network::Testnet, "vpub"),
        ] {
            let acct = AccountXpub::from_seed(&seed(), chain, net, 0).unwrap();
            let s = acct.to_string();
            assert!(s.starts_with(prefix), "{s}");
            assert_eq!(AccountXpub::parse(&s, chain, net).unwrap(), acct);
        }
        let z = AccountXpub::from_seed(&seed(), Chain::Btc, Network::Mainnet, 0).unwrap().to_string();
        let e = AccountXpub::parse(&z, Chain::Btc, Network::Testnet).unwrap_err();
        assert!(e.to_string().contains("version bytes"), "{e}");
        assert!(AccountXpub::parse(&z, Chain::Eth, Network::Mainnet).is_err());
        let mut broken = z.clone();
        broken.pop();
        broken.push(if z.ends_with('a') { 'b' } else { 'a' });
        assert!(AccountXpub::parse(&broken, Chain::Btc, Network::Mainnet).is_err());
        assert!(matches!(
            AccountXpub::from_seed(&seed(), Chain::Sol, Network::Mainnet, 0),
            Err(KeyError::NotSecp256k1(Chain::Sol))
        ));
    }

    #[test]
    fn public_derivation_matches_private_derivation_and_refuses_hardened() {
        let acct = AccountXpub::from_seed(&seed(), Chain::Eth, Network::Mainnet, 0).unwrap();
        let path = path::deposit_path(Chain::Eth, Network::Mainnet, 0, 5).unwrap();
        let xpriv = derive_xpriv(&seed(), &path).unwrap();
        let via_priv = Xpub::from_priv(&Secp256k1::signing_only(), &xpriv).public_key;
        assert_eq!(acct.deposit_pubkey(5).unwrap(), via_priv);
        let e = acct.derive(&[0, 5 | HARDENED]).unwrap_err();
        assert_eq!(e, KeyError::Path(PathError::HardenedFromPublic { level: 2, child: 5 }));
        assert!(acct.deposit_pubkey(HARDENED).is_err());
    }

    #[test]
    fn secret_key_is_the_xpriv_key_at_the_same_path() {
        let path = path::deposit_path(Chain::Tron, Network::Mainnet, 1, 9).unwrap();
        let secret = derive_secret_key(&seed(), &path).unwrap();
        assert_eq!(*secret, derive_xpriv(&seed(), &path).unwrap().private_key.secret_bytes());
        let acct = AccountXpub::from_seed(&seed(), Chain::Tron, Network::Mainnet, 1).unwrap();
        let public =
            secp256k1::SecretKey::from_slice(&secret[..]).unwrap().public_key(&Secp256k1::signing_only());
        assert_eq!(acct.deposit_pubkey(9).unwrap(), public);
    }
}
