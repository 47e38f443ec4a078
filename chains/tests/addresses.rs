//! Withdrawal-destination validation: every malformed kind gets an error that
//! names what is wrong; addresses Molly derives validate on their own network.

use molly_chains::address::{validate, AddressError};
use molly_chains::{derive_address, Chain, Network, Seed};

fn err(chain: Chain, net: Network, s: &str) -> AddressError {
    match validate(chain, net, s) {
        Ok(()) => panic!("{chain} {net} accepted {s:?}"),
        Err(e) => e,
    }
}

const ETH: &str = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"; // EIP-55 test case
const TRON: &str = "TY72iA3SBtrds3QLYsS7LwYfkzXwAXCRWT"; // Trezor fixture
const BTC: &str = "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu"; // BIP84 vector
const SOL: &str = "14CCvQzQzHCVgZM3j9soPnXuJXh1RmCfwLVUcdfbZVBS"; // Trezor fixture

#[test]
fn known_good_addresses_pass() {
    for (chain, a) in [(Chain::Eth, ETH), (Chain::Tron, TRON), (Chain::Btc, BTC), (Chain::Sol, SOL)] {
        validate(chain, Network::Mainnet, a).unwrap();
    }
    // No checksum in all-lower / all-upper hex (EIP-55), still a valid address.
    validate(Chain::Eth, Network::Mainnet, &ETH.to_lowercase()).unwrap();
    // Legacy and other segwit kinds are valid withdrawal destinations.
    validate(Chain::Btc, Network::Mainnet, "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2").unwrap();
    validate(Chain::Btc, Network::Mainnet, "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy").unwrap();
    // BIP86 test vector (first receiving address, m/86'/0'/0'/0/0): P2TR.
    validate(Chain::Btc, Network::Mainnet, "bc1p5cyxnuxmeuwuvkwfem96lqzszd02n6xdcjrs20cac6yqjjwudpxqkedrcr")
        .unwrap();
}

#[test]
fn eth_malformed_kinds() {
    let net = Network::Mainnet;
    assert!(matches!(err(Chain::Eth, net, ""), AddressError::Empty { .. }));
    assert!(matches!(err(Chain::Eth, net, &ETH[2..]), AddressError::MissingPrefix { .. }));
    assert!(matches!(err(Chain::Eth, net, &format!(" {ETH}")), AddressError::MissingPrefix { .. }));
    assert!(matches!(err(Chain::Eth, net, &ETH[..41]), AddressError::WrongLength { found: 39, .. }));
    assert!(matches!(err(Chain::Eth, net, &format!("{ETH}0")), AddressError::WrongLength { found: 41, .. }));
    let e = err(Chain::Eth, net, &format!("{}g", &ETH[..41]));
    assert_eq!(
        e,
        AddressError::InvalidCharacter {
            chain: Chain::Eth,
            ch: 'g',
            position: 42,
            alphabet: "hex digits 0-9 a-f A-F"
        }
    );
    assert!(e.to_string().contains("'g' at position 42"), "{e}");
    // One letter's case flipped: checksum must catch it.
    let typo = ETH.replacen("aA", "aa", 1);
    let e = err(Chain::Eth, net, &typo);
    assert!(matches!(e, AddressError::BadChecksum { .. }), "{e}");
    assert!(e.to_string().contains("eip-55"), "{e}");
    assert!(!e.to_string().contains(ETH), "the error must not offer a corrected address");
    assert!(matches!(
        err(Chain::Eth, net, "0x0000000000000000000000000000000000000000"),
        AddressError::Zero { .. }
    ));
}

#[test]
fn tron_malformed_kinds() {
    let net = Network::Mainnet;
    assert!(matches!(err(Chain::Tron, net, &TRON[..33]), AddressError::WrongLength { found: 33, .. }));
    assert!(matches!(
        err(Chain::Tron, net, &format!("{}0", &TRON[..33])),
        AddressError::InvalidCharacter { ch: '0', position: 34, .. }
    ));
    assert!(matches!(err(Chain::Tron, net, &format!("{}U", &TRON[..33])), AddressError::BadChecksum { .. }));
    // A valid base58check address of another chain (Bitcoin P2PKH, version 0x00).
    let e = err(Chain::Tron, net, "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2");
    assert_eq!(e, AddressError::WrongVersion { chain: Chain::Tron, found: 0, expected: 0x41 });
    assert!(matches!(err(Chain::Tron, net, ETH), AddressError::InvalidCharacter { .. }));
}

#[test]
fn btc_malformed_kinds() {
    let net = Network::Mainnet;
    // Last character changed: bech32 checksum.
    let e = err(Chain::Btc, net, &format!("{}v", &BTC[..BTC.len() - 1]));
    assert!(matches!(e, AddressError::BadChecksum { scheme: "bech32/bech32m", .. }), "{e}");
    // Mainnet address where testnet is expected, and the reverse.
    let e = err(Chain::Btc, Network::Testnet, BTC);
    assert!(matches!(e, AddressError::WrongNetwork { .. }), "{e}");
    assert!(e.to_string().contains("is for mainnet, not testnet"), "{e}");
    let seed = Seed::from_mnemonic("all all all all all all all all all all all all", "").unwrap();
    let tb = derive_address(&seed, Chain::Btc, Network::Testnet, 0, 0).unwrap().address;
    let rt = derive_address(&seed, Chain::Btc, Network::Regtest, 0, 0).unwrap().address;
    assert!(tb.starts_with("tb1q") && rt.starts_with("bcrt1q"), "{tb} {rt}");
    validate(Chain::Btc, Network::Testnet, &tb).unwrap();
    validate(Chain::Btc, Network::Regtest, &rt).unwrap();
    assert!(matches!(err(Chain::Btc, net, &tb), AddressError::WrongNetwork { .. }));
    assert!(matches!(err(Chain::Btc, Network::Testnet, &rt), AddressError::WrongNetwork { .. }));
    // 'b' is not in the bech32 alphabet.
    let e = err(Chain::Btc, net, &format!("{}b", &BTC[..BTC.len() - 1]));
    assert!(matches!(e, AddressError::Segwit(_)), "{e}");
    // Mixed case is forbidden by BIP173.
    let e = err(Chain::Btc, net, &BTC.replacen('q', "Q", 1));
    assert!(matches!(e, AddressError::Segwit(_)), "{e}");
    // Legacy: checksum, alphabet, length.
    let e = err(Chain::Btc, net, "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN3");
    assert!(matches!(e, AddressError::BadChecksum { scheme: "base58check", .. }), "{e}");
    let e = err(Chain::Btc, net, "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN0");
    assert!(matches!(e, AddressError::InvalidCharacter { ch: '0', .. }), "{e}");
    assert!(validate(Chain::Btc, net, "1BvBMSEYstWetqTFn5Au4m4GFg7xJa").is_err());
    // Future witness version (BIP350 valid-address vector, witness v2): not payable by us.
    let e = err(Chain::Btc, net, "bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs");
    assert!(matches!(e, AddressError::UnsupportedScript(_)), "{e}");
    // Pay-to-anchor is a standard output type but not a withdrawal destination.
    let e = err(Chain::Btc, net, "bc1pfeessrawgf");
    assert!(matches!(e, AddressError::UnsupportedScript(_)), "{e}");
    assert!(matches!(err(Chain::Btc, net, ""), AddressError::Empty { .. }));
}

#[test]
fn sol_malformed_kinds() {
    let net = Network::Mainnet;
    assert!(matches!(
        err(Chain::Sol, net, &format!("{}0", &SOL[..SOL.len() - 1])),
        AddressError::InvalidCharacter { ch: '0', .. }
    ));
    assert!(matches!(err(Chain::Sol, net, &SOL[..20]), AddressError::WrongLength { found: 20, .. }));
    // 44 base58 characters that decode to 33 bytes.
    let e = err(Chain::Sol, net, &"z".repeat(44));
    assert!(matches!(e, AddressError::WrongLength { found: 33, unit: "decoded bytes", .. }), "{e}");
    assert!(matches!(err(Chain::Sol, net, ETH), AddressError::InvalidCharacter { .. }));
}
