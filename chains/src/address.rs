//! Address encoding (derivation side) and validation (withdrawal side).
//!
//! | chain | encoding |
//! |---|---|
//! | eth  | `0x` + EIP-55 mixed-case hex of `keccak256(X‖Y)[12..]` |
//! | tron | base58check(`0x41` ‖ `keccak256(X‖Y)[12..]`) |
//! | btc  | bech32 segwit v0 of `hash160(compressed key)` (P2WPKH): `bc1`/`tb1`/`bcrt1` |
//! | sol  | base58 of the 32-byte ed25519 public key |
//!
//! Encoders write into an [`AddressBuf`] so bulk generation allocates nothing
//! per key.

use std::fmt;
use std::str::FromStr;

use bitcoin::address::{Address, AddressType, KnownHrp, NetworkUnchecked};
use bitcoin::base58;
use bitcoin::hashes::{hash160, Hash};
use bitcoin::{WitnessProgram, WitnessVersion};
use sha3::{Digest, Keccak256};

use crate::chain::{Chain, Network};

/// Capacity of [`AddressBuf`]: the longest address Molly produces is 44 bytes.
const ADDRESS_CAP: usize = 62;

/// A fixed-capacity ASCII address, so encoding a million addresses does not
/// allocate a million strings.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct AddressBuf {
    len: u8,
    bytes: [u8; ADDRESS_CAP],
}

impl Default for AddressBuf {
    fn default() -> Self {
        AddressBuf { len: 0, bytes: [0; ADDRESS_CAP] }
    }
}

impl AddressBuf {
    /// The address text.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever written (hex, base58, bech32 alphabets).
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }

    /// Empties the buffer.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    fn push_bytes(&mut self, s: &[u8]) -> fmt::Result {
        let start = usize::from(self.len);
        let end = start + s.len();
        if end > ADDRESS_CAP || !s.is_ascii() {
            return Err(fmt::Error);
        }
        self.bytes[start..end].copy_from_slice(s);
        self.len = end as u8;
        Ok(())
    }
}

impl fmt::Write for AddressBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_bytes(s.as_bytes())
    }
}

impl fmt::Display for AddressBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for AddressBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// The 20-byte account id shared by ETH and Tron: `keccak256(X‖Y)[12..]`
/// from an uncompressed SEC1 key (`0x04‖X‖Y`).
pub fn keccak_account_id(uncompressed: &[u8; 65]) -> [u8; 20] {
    let hash = Keccak256::digest(&uncompressed[1..]);
    let mut id = [0u8; 20];
    id.copy_from_slice(&hash[12..]);
    id
}

/// EIP-55: lower-case hex, then each letter upper-cased where the matching
/// nibble of `keccak256(lower-case hex)` is 8 or more.
pub fn eip55(id: &[u8; 20], out: &mut AddressBuf) {
    let mut hex_lower = [0u8; 40];
    // Cannot fail: the output is exactly twice the input.
    let _ = hex::encode_to_slice(id, &mut hex_lower);
    let hash = Keccak256::digest(hex_lower);
    for (i, c) in hex_lower.iter_mut().enumerate() {
        let nibble = if i % 2 == 0 { hash[i / 2] >> 4 } else { hash[i / 2] & 0x0f };
        if nibble >= 8 {
            c.make_ascii_uppercase();
        }
    }
    out.clear();
    let _ = out.push_bytes(b"0x");
    let _ = out.push_bytes(&hex_lower);
}

/// ETH address of an uncompressed public key.
pub fn encode_eth(uncompressed: &[u8; 65], out: &mut AddressBuf) {
    eip55(&keccak_account_id(uncompressed), out);
}

struct Base58Check<'a>(&'a [u8]);

impl fmt::Display for Base58Check<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        base58::encode_check_to_fmt(f, self.0)
    }
}

/// Tron address of an uncompressed public key.
pub fn encode_tron(uncompressed: &[u8; 65], out: &mut AddressBuf) {
    let mut payload = [0u8; 21];
    payload[0] = TRON_VERSION;
    payload[1..].copy_from_slice(&keccak_account_id(uncompressed));
    out.clear();
    let _ = fmt::Write::write_fmt(out, format_args!("{}", Base58Check(&payload)));
}

/// Bitcoin P2WPKH address of a compressed public key.
pub fn encode_btc_p2wpkh(compressed: &[u8; 33], network: Network, out: &mut AddressBuf) {
    let hash = hash160::Hash::hash(compressed);
    out.clear();
    // A 20-byte v0 program is always valid.
    if let Ok(program) = WitnessProgram::new(WitnessVersion::V0, hash.as_byte_array()) {
        let address = Address::from_witness_program(program, KnownHrp::from(network.bitcoin()));
        let _ = fmt::Write::write_fmt(out, format_args!("{address}"));
    }
}

/// Solana address of an ed25519 public key.
pub fn encode_sol(public_key: &[u8; 32], out: &mut AddressBuf) {
    out.clear();
    let _ = out.push_bytes(base58::encode(public_key).as_bytes());
}

/// Address of a secp256k1 public key on `chain`.
pub fn encode_secp(chain: Chain, network: Network, key: &bitcoin::secp256k1::PublicKey) -> AddressBuf {
    let mut out = AddressBuf::default();
    match chain {
        Chain::Eth => encode_eth(&key.serialize_uncompressed(), &mut out),
        Chain::Tron => encode_tron(&key.serialize_uncompressed(), &mut out),
        Chain::Btc => encode_btc_p2wpkh(&key.serialize(), network, &mut out),
        Chain::Sol => {}
    }
    out
}

/// Tron's address version byte.
pub const TRON_VERSION: u8 = 0x41;

const BASE58_ALPHABET: &str = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";

/// Why a withdrawal destination was rejected. Each message names the chain
/// and what is wrong, never a "corrected" address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Nothing was given.
    #[error("{chain} address is empty")]
    Empty {
        /// Chain being validated.
        chain: Chain,
    },
    /// The address does not start with the required prefix.
    #[error("{chain} address must start with {expected:?}")]
    MissingPrefix {
        /// Chain being validated.
        chain: Chain,
        /// The required prefix.
        expected: &'static str,
    },
    /// A character outside the address alphabet.
    #[error("{chain} address has invalid character {ch:?} at position {position} (counting from 1): {alphabet} only")]
    InvalidCharacter {
        /// Chain being validated.
        chain: Chain,
        /// The character.
        ch: char,
        /// 1-based position in the text.
        position: usize,
        /// The allowed alphabet.
        alphabet: &'static str,
    },
    /// Wrong length.
    #[error("{chain} address has wrong length: {found} {unit}, expected {expected}")]
    WrongLength {
        /// Chain being validated.
        chain: Chain,
        /// What was counted (characters, bytes, hex digits).
        unit: &'static str,
        /// What was found.
        found: usize,
        /// What is expected.
        expected: &'static str,
    },
    /// The checksum does not match: a typo or an altered address.
    #[error("{chain} address checksum ({scheme}) does not match: the address has a typo or was altered")]
    BadChecksum {
        /// Chain being validated.
        chain: Chain,
        /// Checksum scheme (EIP-55, base58check, bech32).
        scheme: &'static str,
    },
    /// The version byte is not the chain's.
    #[error("{chain} address has version byte 0x{found:02x}, expected 0x{expected:02x}")]
    WrongVersion {
        /// Chain being validated.
        chain: Chain,
        /// Byte found.
        found: u8,
        /// Byte expected.
        expected: u8,
    },
    /// The address belongs to another network.
    #[error("{chain} address is for {found}, not {expected}")]
    WrongNetwork {
        /// Chain being validated.
        chain: Chain,
        /// The network asked for.
        expected: Network,
        /// The network(s) the address is for.
        found: String,
    },
    /// A script type Molly does not pay to.
    #[error("btc address type is not supported for withdrawals: {0}")]
    UnsupportedScript(String),
    /// Malformed bech32/segwit data other than a plain checksum failure.
    #[error("btc segwit address is malformed: {0}")]
    Segwit(String),
    /// Malformed base58 data other than a checksum failure.
    #[error("btc base58 address is malformed: {0}")]
    Base58(String),
    /// An address that burns funds.
    #[error("{chain} address is the all-zero address, which burns funds")]
    Zero {
        /// Chain being validated.
        chain: Chain,
    },
}

fn check_base58_chars(chain: Chain, s: &str) -> Result<(), AddressError> {
    for (i, ch) in s.chars().enumerate() {
        if !BASE58_ALPHABET.contains(ch) {
            return Err(AddressError::InvalidCharacter {
                chain,
                ch,
                position: i + 1,
                alphabet: "base58 (no 0, O, I or l)",
            });
        }
    }
    Ok(())
}

/// Validates a withdrawal destination for `chain` on `network`.
/// Surrounding whitespace is an error too: copy-paste accidents should be seen.
pub fn validate(chain: Chain, network: Network, address: &str) -> Result<(), AddressError> {
    if address.is_empty() {
        return Err(AddressError::Empty { chain });
    }
    match chain {
        Chain::Eth => validate_eth(address),
        Chain::Tron => validate_tron(address),
        Chain::Btc => validate_btc(network, address),
        Chain::Sol => validate_sol(address),
    }
}

fn validate_eth(s: &str) -> Result<(), AddressError> {
    let chain = Chain::Eth;
    let Some(digits) = s.strip_prefix("0x") else {
        return Err(AddressError::MissingPrefix { chain, expected: "0x" });
    };
    for (i, ch) in digits.chars().enumerate() {
        if !ch.is_ascii_hexdigit() {
            return Err(AddressError::InvalidCharacter {
                chain,
                ch,
                position: i + 3,
                alphabet: "hex digits 0-9 a-f A-F",
            });
        }
    }
    if digits.len() != 40 {
        return Err(AddressError::WrongLength {
            chain,
            unit: "hex digits after 0x",
            found: digits.len(),
            expected: "40",
        });
    }
    let mut id = [0u8; 20];
    hex::decode_to_slice(digits, &mut id).map_err(|_| AddressError::WrongLength {
        chain,
        unit: "hex digits after 0x",
        found: digits.len(),
        expected: "40",
    })?;
    if id == [0u8; 20] {
        return Err(AddressError::Zero { chain });
    }
    let has_lower = digits.bytes().any(|b| b.is_ascii_lowercase());
    let has_upper = digits.bytes().any(|b| b.is_ascii_uppercase());
    // All-lower or all-upper hex carries no checksum (EIP-55); mixed case must match it.
    if has_lower && has_upper {
        let mut expected = AddressBuf::default();
        eip55(&id, &mut expected);
        if expected.as_str() != s {
            return Err(AddressError::BadChecksum { chain, scheme: "eip-55" });
        }
    }
    Ok(())
}

fn validate_tron(s: &str) -> Result<(), AddressError> {
    let chain = Chain::Tron;
    check_base58_chars(chain, s)?;
    if s.len() != 34 {
        return Err(AddressError::WrongLength { chain, unit: "characters", found: s.len(), expected: "34" });
    }
    let raw = base58::decode(s).map_err(|_| AddressError::InvalidCharacter {
        chain,
        ch: '?',
        position: 0,
        alphabet: "base58",
    })?;
    if raw.len() != 25 {
        return Err(AddressError::WrongLength {
            chain,
            unit: "decoded bytes",
            found: raw.len(),
            expected: "25 (version, 20-byte id, 4-byte checksum)",
        });
    }
    let payload =
        base58::decode_check(s).map_err(|_| AddressError::BadChecksum { chain, scheme: "base58check" })?;
    if payload[0] != TRON_VERSION {
        return Err(AddressError::WrongVersion { chain, found: payload[0], expected: TRON_VERSION });
    }
    if payload[1..].iter().all(|&b| b == 0) {
        return Err(AddressError::Zero { chain });
    }
    Ok(())
}

fn btc_networks_of(address: &Address<NetworkUnchecked>) -> String {
    let found: Vec<&str> = [Network::Mainnet, Network::Testnet, Network::Regtest]
        .into_iter()
        .filter(|n| address.is_valid_for_network(n.bitcoin()))
        .map(Network::name)
        .collect();
    if found.is_empty() {
        "an unknown network".into()
    } else {
        found.join("/")
    }
}

/// An error and its sources, joined: the `bitcoin` crates put the detail in `source()`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(inner) = cur {
        out.push_str(": ");
        out.push_str(&inner.to_string());
        cur = inner.source();
    }
    out
}

fn looks_segwit(s: &str) -> bool {
    let lower = s.to_ascii_lowercase();
    ["bc1", "tb1", "bcrt1"].iter().any(|p| lower.starts_with(p))
}

fn validate_btc(network: Network, s: &str) -> Result<(), AddressError> {
    let chain = Chain::Btc;
    let parsed = match Address::<NetworkUnchecked>::from_str(s) {
        Ok(a) => a,
        Err(e) => {
            if looks_segwit(s) {
                use bitcoin::bech32::primitives::decode::{ChecksumError, SegwitHrpstringError};
                return Err(match bitcoin::bech32::segwit::decode(s) {
                    Err(ref d)
                        if matches!(d.0, SegwitHrpstringError::Checksum(ChecksumError::InvalidResidue)) =>
                    {
                        AddressError::BadChecksum { chain, scheme: "bech32/bech32m" }
                    }
                    Err(other) => AddressError::Segwit(error_chain(&other)),
                    Ok(_) => AddressError::Segwit(error_chain(&e)),
                });
            }
            if let Some((i, ch)) = s.chars().enumerate().find(|(_, c)| !BASE58_ALPHABET.contains(*c)) {
                return Err(AddressError::InvalidCharacter {
                    chain,
                    ch,
                    position: i + 1,
                    alphabet: "base58 (no 0, O, I or l) or bech32 starting bc1/tb1/bcrt1",
                });
            }
            return Err(match e {
                bitcoin::address::ParseError::Base58(base58::Error::IncorrectChecksum(_)) => {
                    AddressError::BadChecksum { chain, scheme: "base58check" }
                }
                other => AddressError::Base58(error_chain(&other)),
            });
        }
    };
    if !parsed.is_valid_for_network(network.bitcoin()) {
        return Err(AddressError::WrongNetwork { chain, expected: network, found: btc_networks_of(&parsed) });
    }
    let checked = parsed.assume_checked();
    match checked.address_type() {
        Some(
            AddressType::P2pkh
            | AddressType::P2sh
            | AddressType::P2wpkh
            | AddressType::P2wsh
            | AddressType::P2tr,
        ) => Ok(()),
        Some(AddressType::P2a) => {
            Err(AddressError::UnsupportedScript("pay-to-anchor outputs cannot receive withdrawals".into()))
        }
        Some(other) => Err(AddressError::UnsupportedScript(other.to_string())),
        None => Err(AddressError::UnsupportedScript(
            "unknown witness version or program length (not p2pkh, p2sh, p2wpkh, p2wsh or p2tr)".into(),
        )),
    }
}

fn validate_sol(s: &str) -> Result<(), AddressError> {
    let chain = Chain::Sol;
    check_base58_chars(chain, s)?;
    if !(32..=44).contains(&s.len()) {
        return Err(AddressError::WrongLength {
            chain,
            unit: "characters",
            found: s.len(),
            expected: "32 to 44",
        });
    }
    let raw = base58::decode(s).map_err(|_| AddressError::InvalidCharacter {
        chain,
        ch: '?',
        position: 0,
        alphabet: "base58",
    })?;
    if raw.len() != 32 {
        return Err(AddressError::WrongLength {
            chain,
            unit: "decoded bytes",
            found: raw.len(),
            expected: "32",
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn address_buf_refuses_overflow_and_non_ascii() {
        let mut b = AddressBuf::default();
        assert!(fmt::Write::write_str(&mut b, "é").is_err());
        assert!(fmt::Write::write_str(&mut b, &"x".repeat(ADDRESS_CAP + 1)).is_err());
        assert!(fmt::Write::write_str(&mut b, "abc").is_ok());
        assert_eq!(b.as_str(), "abc");
    }
}
