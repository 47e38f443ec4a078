//! Official test vectors, loaded from `chains/testdata/` (each file names its source).

use bitcoin::base58;
use bitcoin::bip32::{Xpriv, Xpub};
use bitcoin::secp256k1::Secp256k1;
use molly_chains::address::{self, AddressBuf};
use molly_chains::path::Path;
use molly_chains::secp::{derive_xpriv, AccountXpub};
use molly_chains::slip10::Ed25519Xpriv;
use molly_chains::{derive_address, Chain, Network, Seed};

fn testdata(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Non-empty, non-comment lines.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'))
}

fn seed_hex(h: &str) -> Seed {
    Seed::from_bytes(&hex::decode(h).unwrap()).unwrap()
}

/// Re-encodes an extended key with other SLIP-0132 version bytes.
fn with_version(encoded: [u8; 78], version: [u8; 4]) -> String {
    let mut data = encoded;
    data[..4].copy_from_slice(&version);
    base58::encode_check(&data)
}

fn from_slip132_private(s: &str) -> Xpriv {
    let mut data = base58::decode_check(s).unwrap();
    data[..4].copy_from_slice(&[0x04, 0x88, 0xad, 0xe4]);
    Xpriv::decode(&data).unwrap()
}

#[test]
fn bip32_test_vectors_1_to_3() {
    let text = testdata("bip32_vectors.txt");
    let secp = Secp256k1::new();
    let mut seed = None;
    let mut checked = 0;
    for line in lines(&text) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f[0] == "seed" {
            seed = Some(seed_hex(f[1]));
            continue;
        }
        let seed = seed.as_ref().expect("seed line first");
        let path: Path = f[0].parse().unwrap();
        let xprv = derive_xpriv(seed, &path).unwrap();
        assert_eq!(xprv.to_string(), f[2], "xprv at {}", f[0]);
        assert_eq!(Xpub::from_priv(&secp, &xprv).to_string(), f[1], "xpub at {}", f[0]);
        checked += 1;
    }
    assert_eq!(checked, 6 + 6 + 2, "every vector line was read");
}

#[test]
fn bip39_english_vectors_with_passphrase_trezor() {
    let v: serde_json::Value = serde_json::from_str(&testdata("bip39_vectors.json")).unwrap();
    let pass = v["passphrase"].as_str().unwrap();
    let cases = v["english"].as_array().unwrap();
    assert_eq!(cases.len(), 24);
    for case in cases {
        let [_, mnemonic, seed, xprv] = [0, 1, 2, 3].map(|i| case[i].as_str().unwrap());
        let s = Seed::from_mnemonic(mnemonic, pass).unwrap();
        assert_eq!(hex::encode(s.as_bytes()), seed, "{mnemonic}");
        let master = derive_xpriv(&s, &Path::default()).unwrap();
        assert_eq!(master.to_string(), xprv, "{mnemonic}");
    }
}

fn kv(text: &str) -> std::collections::HashMap<&str, &str> {
    lines(text).filter_map(|l| l.split_once(" = ")).collect()
}

#[test]
fn bip84_vectors() {
    let text = testdata("bip84_vectors.txt");
    let v = kv(&text);
    let seed = Seed::from_mnemonic(v["mnemonic"], "").unwrap();
    let zprv = [0x04, 0xb2, 0x43, 0x0c];

    let root = derive_xpriv(&seed, &Path::default()).unwrap();
    assert_eq!(with_version(root.encode(), zprv), v["rootnode"]);
    let account_path: Path = "m/84'/0'/0'".parse().unwrap();
    let account = derive_xpriv(&seed, &account_path).unwrap();
    assert_eq!(with_version(account.encode(), zprv), v["account0_xpriv"]);

    // The BIP gives the account zprv only: our zpub must be its public half.
    let official = from_slip132_private(v["account0_xpriv"]);
    let official_pub = Xpub::from_priv(&Secp256k1::new(), &official);
    let zpub = AccountXpub::from_seed(&seed, Chain::Btc, Network::Mainnet, 0).unwrap();
    assert_eq!(zpub.to_string(), with_version(official_pub.encode(), [0x04, 0xb2, 0x47, 0x46]));
    assert!(zpub.to_string().starts_with("zpub"));

    for (i, key) in [(0, "receive0"), (1, "receive1")] {
        let d = derive_address(&seed, Chain::Btc, Network::Mainnet, 0, i).unwrap();
        assert_eq!(d.path.to_string(), format!("m/84'/0'/0'/0/{i}"));
        assert_eq!(hex::encode(&d.public_key), v[format!("{key}_pubkey").as_str()]);
        assert_eq!(d.address, v[format!("{key}_address").as_str()]);
        assert!(address::validate(Chain::Btc, Network::Mainnet, &d.address).is_ok());
    }
    // Change chain m/84'/0'/0'/1/0, through public derivation from the zpub.
    let change = zpub.derive(&[1, 0]).unwrap().public_key;
    assert_eq!(hex::encode(change.serialize()), v["change0_pubkey"]);
    let addr = address::encode_secp(Chain::Btc, Network::Mainnet, &change);
    assert_eq!(addr.as_str(), v["change0_address"]);
}

#[test]
fn slip10_ed25519_vectors_1_and_2() {
    let text = testdata("slip10_ed25519_vectors.txt");
    let mut seed = None;
    let mut checked = 0;
    for line in lines(&text) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f[0] == "seed" {
            seed = Some(seed_hex(f[1]));
            continue;
        }
        let seed = seed.as_ref().expect("seed line first");
        let path: Path = f[0].parse().unwrap();
        let key = Ed25519Xpriv::derive(seed, &path).unwrap();
        assert_eq!(hex::encode(key.chain_code()), f[2], "chain code at {}", f[0]);
        assert_eq!(hex::encode(key.secret()), f[3], "private key at {}", f[0]);
        assert_eq!(format!("00{}", hex::encode(key.public_key())), f[4], "public key at {}", f[0]);
        checked += 1;
    }
    assert_eq!(checked, 12);
}

#[test]
fn eip55_vectors_encode_and_validate() {
    let text = testdata("eip55_vectors.txt");
    let mut n = 0;
    for expected in lines(&text) {
        let mut id = [0u8; 20];
        hex::decode_to_slice(&expected[2..], &mut id).unwrap();
        let mut buf = AddressBuf::default();
        address::eip55(&id, &mut buf);
        assert_eq!(buf.as_str(), expected);
        address::validate(Chain::Eth, Network::Mainnet, expected).unwrap();
        n += 1;
    }
    assert_eq!(n, 8);
}

#[test]
fn cross_chain_trezor_fixtures() {
    let text = testdata("cross_chain_vectors.txt");
    let mut all = lines(&text);
    let mnemonic = all.next().unwrap().strip_prefix("mnemonic ").unwrap();
    let seed = Seed::from_mnemonic(mnemonic, "").unwrap();
    let mut n = 0;
    for line in all {
        let f: Vec<&str> = line.split_whitespace().collect();
        let chain: Chain = f[0].parse().unwrap();
        let (account, index) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        let d = derive_address(&seed, chain, Network::Mainnet, account, index).unwrap();
        assert_eq!(d.path.to_string(), f[3]);
        assert_eq!(d.address, f[4], "{line}");
        address::validate(chain, Network::Mainnet, f[4]).unwrap();
        // The bulk path must agree with the reference path.
        let keys =
            molly_chains::batch::DepositKeys::from_seed(&seed, chain, Network::Mainnet, account).unwrap();
        let mut out = [AddressBuf::default()];
        keys.encode_range(index, &mut out).unwrap();
        assert_eq!(out[0].as_str(), f[4], "bulk {line}");
        n += 1;
    }
    assert_eq!(n, 9);
}
