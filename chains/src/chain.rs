//! The chains and networks Molly derives keys for.

use std::fmt;
use std::str::FromStr;

/// A chain whose deposit addresses Molly derives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Chain {
    /// Ethereum (and EVM chains sharing its addresses): BIP44 coin type 60.
    Eth,
    /// Tron: BIP44 coin type 195.
    Tron,
    /// Bitcoin native segwit (P2WPKH): BIP84.
    Btc,
    /// Solana: SLIP-0010 ed25519, coin type 501.
    Sol,
}

impl Chain {
    /// Every chain, in the order Molly reports them.
    pub const ALL: [Chain; 4] = [Chain::Eth, Chain::Tron, Chain::Btc, Chain::Sol];

    /// The short lower-case name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Chain::Eth => "eth",
            Chain::Tron => "tron",
            Chain::Btc => "btc",
            Chain::Sol => "sol",
        }
    }

    /// Whether the chain uses secp256k1 BIP32 keys (and so has an account xpub).
    pub fn is_secp256k1(self) -> bool {
        !matches!(self, Chain::Sol)
    }
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A chain or network name that Molly does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseNameError {
    /// Not one of eth, tron, btc, sol.
    #[error("unknown chain {0:?}: expected one of eth, tron, btc, sol")]
    Chain(String),
    /// Not one of mainnet, testnet, regtest.
    #[error("unknown network {0:?}: expected one of mainnet, testnet, regtest")]
    Network(String),
}

impl FromStr for Chain {
    type Err = ParseNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "eth" | "ethereum" => Ok(Chain::Eth),
            "tron" | "trx" => Ok(Chain::Tron),
            "btc" | "bitcoin" => Ok(Chain::Btc),
            "sol" | "solana" => Ok(Chain::Sol),
            _ => Err(ParseNameError::Chain(s.to_owned())),
        }
    }
}

/// Which network an address or key belongs to.
///
/// Only Bitcoin encodes the network in its keys and addresses (coin type 1,
/// `tb1`/`bcrt1` prefixes, `vpub`); ETH, Tron and Solana addresses look the
/// same on every network, so for them the network changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Network {
    /// The main network.
    #[default]
    Mainnet,
    /// The public test network (Bitcoin testnet3/testnet4/signet share `tb`).
    Testnet,
    /// A local regression-test network (Bitcoin `bcrt`).
    Regtest,
}

impl Network {
    /// The short lower-case name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Network::Mainnet => "mainnet",
            Network::Testnet => "testnet",
            Network::Regtest => "regtest",
        }
    }

    /// The `bitcoin` crate's network for this one.
    pub(crate) fn bitcoin(self) -> bitcoin::Network {
        match self {
            Network::Mainnet => bitcoin::Network::Bitcoin,
            Network::Testnet => bitcoin::Network::Testnet,
            Network::Regtest => bitcoin::Network::Regtest,
        }
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Network {
    type Err = ParseNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "mainnet" | "main" => Ok(Network::Mainnet),
            "testnet" | "test" => Ok(Network::Testnet),
            "regtest" => Ok(Network::Regtest),
            _ => Err(ParseNameError::Network(s.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_rejected() {
        for chain in Chain::ALL {
            assert_eq!(chain.name().parse::<Chain>(), Ok(chain));
        }
        for net in [Network::Mainnet, Network::Testnet, Network::Regtest] {
            assert_eq!(net.name().parse::<Network>(), Ok(net));
        }
        let err = "doge".parse::<Chain>().unwrap_err();
        assert!(err.to_string().contains("unknown chain \"doge\""));
        assert!("signet2".parse::<Network>().is_err());
    }
}
