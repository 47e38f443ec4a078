//! Derivation paths: which path each chain uses, and parsing/printing them.
//!
//! | chain | deposit path (account `a`, index `i`) | standard |
//! |---|---|---|
//! | eth  | `m/44'/60'/a'/0/i`  | BIP44, coin type 60 |
//! | tron | `m/44'/195'/a'/0/i` | BIP44, coin type 195 |
//! | btc  | `m/84'/0'/a'/0/i` (testnet/regtest `m/84'/1'/a'/0/i`) | BIP84 |
//! | sol  | `m/44'/501'/i'/a'` (every level hardened) | SLIP-0010 ed25519 |
//!
//! For Solana the common wallet path is `m/44'/501'/i'/0'`: the wallet index is
//! the hardened *account* level. Molly keeps that meaning of `i` and uses the
//! last level for its role account (0 for deposits, as wallets do).

use std::fmt;
use std::str::FromStr;

use crate::chain::{Chain, Network};

/// Bit that marks a hardened child number.
pub const HARDENED: u32 = 1 << 31;

/// Why a path or index was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// An account or wallet index does not fit below 2^31.
    #[error("{what} {value} is out of range: it must be below 2^31 = 2147483648 (the path adds the hardened marker itself)")]
    OutOfRange {
        /// Which number ("account", "index", ...).
        what: &'static str,
        /// The value given.
        value: u64,
    },
    /// The text is not a path of the form `m/44'/60'/0'/0/5`.
    #[error("invalid derivation path {path:?}: {reason}")]
    Parse {
        /// The text given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Public (xpub) derivation was asked for a hardened child.
    #[error("level {level} of the path is hardened ({child}'): hardened children cannot be derived from an extended public key")]
    HardenedFromPublic {
        /// 1-based position in the path below the xpub.
        level: usize,
        /// The child number without the hardened bit.
        child: u32,
    },
    /// SLIP-0010 ed25519 was asked for a non-hardened child.
    #[error("level {level} of the path is not hardened ({child}): slip-0010 ed25519 supports hardened derivation only")]
    NotHardenedEd25519 {
        /// 1-based position in the path.
        level: usize,
        /// The child number.
        child: u32,
    },
}

/// A BIP32/SLIP-0010 derivation path: child numbers with the hardened bit.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Path(Vec<u32>);

impl Path {
    /// The child numbers, hardened ones with [`HARDENED`] set.
    pub fn children(&self) -> &[u32] {
        &self.0
    }

    /// A path from raw child numbers.
    pub fn from_children(children: Vec<u32>) -> Path {
        Path(children)
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("m")?;
        for &c in &self.0 {
            if c & HARDENED != 0 {
                write!(f, "/{}'", c & !HARDENED)?;
            } else {
                write!(f, "/{c}")?;
            }
        }
        Ok(())
    }
}

impl FromStr for Path {
    type Err = PathError;

    /// Parses `m/44'/60'/0'/0/5`; `h` or `H` may stand for `'`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| PathError::Parse { path: s.to_owned(), reason };
        let mut parts = s.trim().split('/');
        if parts.next() != Some("m") {
            return Err(err("it must start with \"m\"".into()));
        }
        let mut children = Vec::new();
        for (level, part) in parts.enumerate() {
            let (digits, hardened) = match part.strip_suffix(['\'', 'h', 'H']) {
                Some(d) => (d, true),
                None => (part, false),
            };
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err(format!("level {} ({part:?}) is not a number", level + 1)));
            }
            let n: u64 =
                digits.parse().map_err(|_| err(format!("level {} ({part:?}) is too large", level + 1)))?;
            if n >= u64::from(HARDENED) {
                return Err(err(format!(
                    "level {} ({part:?}) must be below 2^31; mark hardened levels with '",
                    level + 1
                )));
            }
            let n = n as u32;
            children.push(if hardened { n | HARDENED } else { n });
        }
        Ok(Path(children))
    }
}

/// Checks that `value` can be a child number (below 2^31).
pub fn check_index(what: &'static str, value: u64) -> Result<u32, PathError> {
    if value >= u64::from(HARDENED) {
        return Err(PathError::OutOfRange { what, value });
    }
    Ok(value as u32)
}

/// BIP44 purpose for the chain (84 for BIP84 segwit Bitcoin).
pub fn purpose(chain: Chain) -> u32 {
    match chain {
        Chain::Btc => 84,
        _ => 44,
    }
}

/// SLIP-0044 coin type. Bitcoin test networks use 1; ETH, Tron and Solana
/// test networks share their mainnet addresses, and wallets keep the mainnet
/// coin type for them, so Molly does too.
pub fn coin_type(chain: Chain, network: Network) -> u32 {
    match (chain, network) {
        (Chain::Eth, _) => 60,
        (Chain::Tron, _) => 195,
        (Chain::Btc, Network::Mainnet) => 0,
        (Chain::Btc, _) => 1,
        (Chain::Sol, _) => 501,
    }
}

/// Account-level path of a secp256k1 chain: `m/purpose'/coin'/account'`.
/// The account xpub is derived here; deposits hang below it at `0/i`.
/// Solana has no account-level public key (see [`deposit_path`]).
pub fn account_path(chain: Chain, network: Network, account: u32) -> Result<Path, PathError> {
    let account = check_index("account", u64::from(account))?;
    Ok(Path(vec![purpose(chain) | HARDENED, coin_type(chain, network) | HARDENED, account | HARDENED]))
}

/// Full path of wallet `index` of `account` on `chain` (see the module table).
pub fn deposit_path(chain: Chain, network: Network, account: u32, index: u32) -> Result<Path, PathError> {
    let account = check_index("account", u64::from(account))?;
    let index = check_index("index", u64::from(index))?;
    Ok(match chain {
        Chain::Sol => Path(vec![44 | HARDENED, 501 | HARDENED, index | HARDENED, account | HARDENED]),
        _ => {
            let mut p = account_path(chain, network, account)?;
            p.0.extend([0, index]);
            p
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_paths_per_chain() {
        let p = |c, n, a, i| deposit_path(c, n, a, i).unwrap().to_string();
        assert_eq!(p(Chain::Eth, Network::Mainnet, 0, 7), "m/44'/60'/0'/0/7");
        assert_eq!(p(Chain::Tron, Network::Mainnet, 2, 0), "m/44'/195'/2'/0/0");
        assert_eq!(p(Chain::Btc, Network::Mainnet, 0, 1), "m/84'/0'/0'/0/1");
        assert_eq!(p(Chain::Btc, Network::Testnet, 0, 1), "m/84'/1'/0'/0/1");
        assert_eq!(p(Chain::Btc, Network::Regtest, 3, 1), "m/84'/1'/3'/0/1");
        assert_eq!(p(Chain::Sol, Network::Mainnet, 0, 9), "m/44'/501'/9'/0'");
    }

    #[test]
    fn hardened_range_is_refused_for_indices_and_accounts() {
        assert_eq!(
            deposit_path(Chain::Eth, Network::Mainnet, 0, HARDENED).unwrap_err(),
            PathError::OutOfRange { what: "index", value: u64::from(HARDENED) }
        );
        assert!(deposit_path(Chain::Sol, Network::Mainnet, HARDENED, 0).is_err());
        assert!(deposit_path(Chain::Eth, Network::Mainnet, 0, HARDENED - 1).is_ok());
        assert!(check_index("index", u64::MAX).unwrap_err().to_string().contains("2^31"));
    }

    #[test]
    fn path_parse_round_trip_and_invalid_paths() {
        for s in ["m", "m/0'", "m/44'/60'/0'/0/5", "m/0/2147483647'/1"] {
            assert_eq!(s.parse::<Path>().unwrap().to_string(), s);
        }
        assert_eq!("m/44h/0H".parse::<Path>().unwrap().to_string(), "m/44'/0'");
        for bad in
            ["", "44'/0'", "m/", "m//1", "m/x", "m/-1", "m/1''", "m/2147483648", "m/2147483648'", "n/0"]
        {
            let e = bad.parse::<Path>().unwrap_err();
            assert!(matches!(e, PathError::Parse { .. }), "{bad}: {e}");
        }
    }
}
