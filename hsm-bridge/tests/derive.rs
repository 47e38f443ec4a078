//! HD keys inside the software keystore: a BIP39 seed is sealed once, keys
//! are derived from it inside the keystore, and their addresses are the ones
//! `molly-chains` derives from the account xpub (the deposit side's view).
//! Vectors come from `chains/testdata/` (BIP-0084 with the public
//! "abandon … about" mnemonic, Trezor's fixtures with "all … all").

mod common;

use ed25519_dalek::Verifier as _;
use k256::ecdsa::signature::hazmat::PrehashVerifier;
use molly_chains::address::{self, AddressBuf};
use molly_chains::path::deposit_path;
use molly_chains::secp::AccountXpub;
use molly_chains::{derive_address, derive_from_xpub, Chain, Network, Seed};
use molly_hsm_bridge::ecdsa::keccak256;
use molly_hsm_bridge::keystore::{KdfParams, SoftwareKeystore};
use molly_hsm_bridge::{DerivationPath, KeyId, KeyInfo, PublicKey, Scheme, Signer, SignerError};

const ABOUT: &str =
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
const ALL: &str = "all all all all all all all all all all all all";

fn id(s: &str) -> KeyId {
    KeyId::new(s).expect("id")
}

fn testdata(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../chains/testdata").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn keystore(dir: &std::path::Path) -> SoftwareKeystore {
    SoftwareKeystore::create(dir, b"keystore pass", KdfParams::insecure_for_tests()).expect("create")
}

fn scheme_of(chain: Chain) -> Scheme {
    if chain == Chain::Sol {
        Scheme::Ed25519
    } else {
        Scheme::Secp256k1
    }
}

/// The address of a keystore public key, encoded by `molly-chains`.
fn address_of(chain: Chain, network: Network, public: &PublicKey) -> String {
    let mut buf = AddressBuf::default();
    match chain {
        Chain::Sol => {
            let bytes: [u8; 32] = public.bytes.as_slice().try_into().expect("32-byte ed25519 key");
            address::encode_sol(&bytes, &mut buf);
        }
        _ => {
            let key = public.to_k256().expect("secp256k1 key");
            let compressed: [u8; 33] =
                key.to_encoded_point(true).as_bytes().try_into().expect("33-byte compressed key");
            let uncompressed: [u8; 65] =
                key.to_encoded_point(false).as_bytes().try_into().expect("65-byte uncompressed key");
            match chain {
                Chain::Eth => address::encode_eth(&uncompressed, &mut buf),
                Chain::Tron => address::encode_tron(&uncompressed, &mut buf),
                _ => address::encode_btc_p2wpkh(&compressed, network, &mut buf),
            }
        }
    }
    buf.as_str().to_owned()
}

/// Derives `chain` wallet `index` of `account` inside the keystore.
async fn derive(
    ks: &SoftwareKeystore,
    seed_id: &KeyId,
    chain: Chain,
    network: Network,
    account: u32,
    index: u32,
) -> KeyInfo {
    let path = deposit_path(chain, network, account, index).expect("path");
    let key = id(&format!("{chain}-{network}-{account}-{index}"));
    ks.derive(&key, seed_id, scheme_of(chain), &path).await.expect("derive")
}

#[tokio::test]
async fn derived_keys_have_the_addresses_molly_chains_derives_from_the_xpub() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ks = keystore(dir.path());
    let seed_id = id("install");
    ks.import_seed(&seed_id, ABOUT, "").expect("import");
    let seed = Seed::from_mnemonic(ABOUT, "").expect("seed");
    for (chain, network) in [
        (Chain::Eth, Network::Mainnet),
        (Chain::Tron, Network::Mainnet),
        (Chain::Btc, Network::Mainnet),
        (Chain::Btc, Network::Regtest),
    ] {
        for (account, index) in [(0, 0), (0, 1), (0, 77), (1, 0), (2, 5)] {
            // The deposit side's view: only the account xpub, as text.
            let xpub_text = AccountXpub::from_seed(&seed, chain, network, account).expect("xpub").to_string();
            let xpub = AccountXpub::parse(&xpub_text, chain, network).expect("parse xpub");
            let want = derive_from_xpub(&xpub, account, index).expect("public derivation");
            let info = derive(&ks, &seed_id, chain, network, account, index).await;
            assert_eq!(info.public_key.bytes, want.public_key, "{chain} {network} {}", want.path);
            assert_eq!(address_of(chain, network, &info.public_key), want.address, "{}", want.path);
            let derivation = info.derivation.expect("derivation recorded");
            assert_eq!((derivation.seed_id, derivation.path), (seed_id.clone(), want.path));
        }
    }
    // Solana: no xpub exists; the reference is molly-chains' SLIP-0010 path.
    for (account, index) in [(0, 0), (0, 1), (1, 3)] {
        let want = derive_address(&seed, Chain::Sol, Network::Mainnet, account, index).expect("sol");
        let info = derive(&ks, &seed_id, Chain::Sol, Network::Mainnet, account, index).await;
        assert_eq!(info.scheme, Scheme::Ed25519);
        assert_eq!(info.public_key.bytes, want.public_key);
        assert_eq!(address_of(Chain::Sol, Network::Mainnet, &info.public_key), want.address);
    }
}

#[tokio::test]
async fn derived_keys_match_published_vectors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ks = keystore(dir.path());
    // BIP-0084 test vectors: "abandon … about", m/84'/0'/0'/0/{0,1}.
    ks.import_seed(&id("about"), ABOUT, "").expect("import about");
    let bip84 = testdata("bip84_vectors.txt");
    let kv = |key: &str| {
        bip84
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.trim_start().strip_prefix('=')))
            .map(str::trim)
            .unwrap_or_else(|| panic!("{key} in bip84_vectors.txt"))
    };
    for index in [0u32, 1] {
        let info = derive(&ks, &id("about"), Chain::Btc, Network::Mainnet, 0, index).await;
        assert_eq!(hex::encode(&info.public_key.bytes), kv(&format!("receive{index}_pubkey")));
        assert_eq!(
            address_of(Chain::Btc, Network::Mainnet, &info.public_key),
            kv(&format!("receive{index}_address"))
        );
    }
    // Trezor fixtures: "all … all" for ETH, Tron and Solana.
    ks.import_seed(&id("all"), ALL, "").expect("import all");
    let fixtures = testdata("cross_chain_vectors.txt");
    let mut checked = 0;
    for line in fixtures.lines().filter(|l| !l.starts_with('#') && !l.starts_with("mnemonic")) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let [chain, account, index, path, want] = f[..] else { continue };
        let chain: Chain = chain.parse().expect("chain");
        let path: DerivationPath = path.parse().expect("path");
        let key = id(&format!("all-{chain}-{account}-{index}"));
        let info = ks.derive(&key, &id("all"), scheme_of(chain), &path).await.expect("derive");
        assert_eq!(address_of(chain, Network::Mainnet, &info.public_key), want, "{line}");
        checked += 1;
    }
    assert!(checked >= 9, "fixtures read: {checked}");
}

#[tokio::test]
async fn signatures_of_derived_keys_verify_against_the_xpub_derived_public_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ks = keystore(dir.path());
    let seed_id = id("install");
    ks.import_seed(&seed_id, ABOUT, "").expect("import");
    let seed = Seed::from_mnemonic(ABOUT, "").expect("seed");
    let xpub = AccountXpub::from_seed(&seed, Chain::Eth, Network::Mainnet, 0).expect("xpub");
    let want = derive_from_xpub(&xpub, 0, 42).expect("xpub child");
    let xpub_key = k256::ecdsa::VerifyingKey::from_sec1_bytes(&want.public_key).expect("point");
    let info = derive(&ks, &seed_id, Chain::Eth, Network::Mainnet, 0, 42).await;
    for i in 0u8..16 {
        let digest = keccak256(&[i, 42]);
        let sig = ks.sign_digest(&info.id, &digest).await.expect("sign");
        common::check_ecdsa(&info.public_key, &digest, &sig);
        let (signature, rid) = sig.to_k256().expect("signature");
        xpub_key.verify_prehash(&digest, &signature).expect("verifies under the xpub child key");
        let recovered =
            k256::ecdsa::VerifyingKey::recover_from_prehash(&digest, &signature, rid).expect("recover");
        let mut addr = AddressBuf::default();
        let uncompressed: [u8; 65] = recovered.to_encoded_point(false).as_bytes().try_into().expect("65");
        address::encode_eth(&uncompressed, &mut addr);
        assert_eq!(addr.as_str(), want.address);
    }
    let sol_want = derive_address(&seed, Chain::Sol, Network::Mainnet, 0, 4).expect("sol");
    let sol = derive(&ks, &seed_id, Chain::Sol, Network::Mainnet, 0, 4).await;
    let sol_key =
        ed25519_dalek::VerifyingKey::from_bytes(&sol_want.public_key.try_into().expect("32")).expect("key");
    let message = b"a solana transaction message";
    let sig = ks.sign_message(&sol.id, message).await.expect("sign message");
    sol_key.verify_strict(message, &sig.to_dalek()).expect("verifies under the slip-0010 key");
    sol_key.verify(message, &sig.to_dalek()).expect("verifies");
}

#[tokio::test]
async fn the_seed_file_holds_neither_the_mnemonic_nor_the_seed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ks = keystore(dir.path());
    ks.import_seed(&id("install"), ABOUT, "extra words").expect("import");
    let info = derive(&ks, &id("install"), Chain::Eth, Network::Mainnet, 0, 0).await;
    let seed = Seed::from_mnemonic(ABOUT, "extra words").expect("seed");
    // The BIP39 passphrase is part of the seed.
    let want = derive_address(&seed, Chain::Eth, Network::Mainnet, 0, 0).expect("with passphrase");
    assert_eq!(info.public_key.bytes, want.public_key);
    let seed_file = std::fs::read(dir.path().join("seeds/install.json")).expect("seed file");
    let text = String::from_utf8_lossy(&seed_file).to_lowercase();
    assert!(text.contains("ciphertext") && text.contains("bip39-seed"), "{text}");
    for needle in ["abandon", "about", "extra words"] {
        assert!(!text.contains(needle), "seed file contains {needle:?}");
    }
    assert!(!text.contains(&hex::encode(seed.as_bytes())), "seed file holds the seed in hex");
    assert!(!text.contains(&hex::encode(&seed.as_bytes()[..16])), "seed file holds part of the seed");
    assert!(!seed_file.windows(16).any(|w| w == &seed.as_bytes()[..16]), "seed file holds raw seed bytes");
    // Nor does the derived key's file hold its private key.
    let path = deposit_path(Chain::Eth, Network::Mainnet, 0, 0).expect("path");
    let secret = molly_chains::secp::derive_secret_key(&seed, &path).expect("secret");
    let key_file = std::fs::read_to_string(dir.path().join(format!("keys/{}.json", info.id))).expect("key");
    assert!(!key_file.to_lowercase().contains(&hex::encode(&secret[..])), "key file holds the private key");
    assert!(key_file.contains("m/44'/60'/0'/0/0"), "key file records its path: {key_file}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode =
            std::fs::metadata(dir.path().join("seeds/install.json")).expect("meta").permissions().mode();
        assert_eq!(mode & 0o077, 0, "seed file mode {mode:o}");
    }
}

#[tokio::test]
async fn derived_keys_survive_reopening_and_a_wrong_passphrase_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (eth, sol) = {
        let ks = keystore(dir.path());
        ks.import_seed(&id("install"), ABOUT, "").expect("import");
        (
            derive(&ks, &id("install"), Chain::Eth, Network::Mainnet, 0, 3).await,
            derive(&ks, &id("install"), Chain::Sol, Network::Mainnet, 0, 3).await,
        )
    };
    match SoftwareKeystore::open(dir.path(), b"wrong pass") {
        Err(SignerError::Keystore(msg)) => assert_eq!(msg, "wrong passphrase"),
        other => panic!("expected wrong passphrase, got {other:?}"),
    }
    let ks = SoftwareKeystore::open(dir.path(), b"keystore pass").expect("reopen");
    let listed = ks.list().await.expect("list");
    assert_eq!(listed, vec![eth.clone(), sol.clone()]);
    let digest = [9u8; 32];
    common::check_ecdsa(&eth.public_key, &digest, &ks.sign_digest(&eth.id, &digest).await.expect("sign"));
    common::check_ed25519(&sol.public_key, b"m", &ks.sign_message(&sol.id, b"m").await.expect("sign"));
    assert_eq!(ks.seed_ids().expect("seeds"), vec![id("install")]);
    // Asking for the same derivation again is idempotent after a reopen too.
    assert_eq!(derive(&ks, &id("install"), Chain::Eth, Network::Mainnet, 0, 3).await, eth);
    drop(ks);

    // Derived keys do not need the seed once derived (it may be removed).
    std::fs::remove_file(dir.path().join("seeds/install.json")).expect("rm seed");
    let ks = SoftwareKeystore::open(dir.path(), b"keystore pass").expect("reopen without the seed");
    common::check_ecdsa(&eth.public_key, &digest, &ks.sign_digest(&eth.id, &digest).await.expect("sign"));
    drop(ks);

    // A relabelled origin (another path in the key file) fails authentication.
    let file = dir.path().join(format!("keys/{}.json", eth.id));
    let body = std::fs::read_to_string(&file).expect("read");
    std::fs::write(&file, body.replace("m/44'/60'/0'/0/3", "m/44'/60'/0'/0/4")).expect("write");
    let err = SoftwareKeystore::open(dir.path(), b"keystore pass").expect_err("relabelled path must fail");
    assert!(err.to_string().contains("authentication failed"), "{err}");
}

#[tokio::test]
async fn bad_seeds_ids_and_paths_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ks = keystore(dir.path());
    let path = deposit_path(Chain::Eth, Network::Mainnet, 0, 0).expect("path");

    // Unknown seed id.
    match ks.derive(&id("k"), &id("nope"), Scheme::Secp256k1, &path).await {
        Err(SignerError::UnknownSeed(s)) => assert_eq!(s, "nope"),
        other => panic!("expected UnknownSeed, got {other:?}"),
    }
    // A bad mnemonic is refused without echoing words, and nothing is written.
    let bad = ABOUT.replacen("abandon", "abandonn", 1);
    let err = ks.import_seed(&id("s"), &bad, "").expect_err("unknown word");
    assert!(err.to_string().contains("word 1") && !err.to_string().contains("abandonn"), "{err}");
    let err = ks.import_seed(&id("s"), &ABOUT.replace("about", "abandon"), "").expect_err("checksum");
    assert!(err.to_string().contains("checksum"), "{err}");
    assert!(ks.seed_ids().expect("seeds").is_empty());

    ks.import_seed(&id("s"), ABOUT, "").expect("import");
    assert!(matches!(ks.import_seed(&id("s"), ALL, ""), Err(SignerError::SeedExists(_))));

    // SLIP-0010 ed25519 refuses a non-hardened level, naming it.
    let err = ks
        .derive(&id("sol"), &id("s"), Scheme::Ed25519, &"m/44'/501'/0'/0".parse().expect("path"))
        .await
        .expect_err("non-hardened ed25519");
    assert!(err.to_string().contains("level 4") && err.to_string().contains("not hardened"), "{err}");

    // Same derivation twice: the same key; the id taken by another key or
    // derivation: KeyExists; the same path under a second id: refused.
    let first = ks.derive(&id("k"), &id("s"), Scheme::Secp256k1, &path).await.expect("derive");
    assert_eq!(ks.derive(&id("k"), &id("s"), Scheme::Secp256k1, &path).await.expect("again"), first);
    let other = deposit_path(Chain::Eth, Network::Mainnet, 0, 1).expect("path");
    assert!(matches!(
        ks.derive(&id("k"), &id("s"), Scheme::Secp256k1, &other).await,
        Err(SignerError::KeyExists(_))
    ));
    ks.generate(&id("random"), Scheme::Secp256k1).await.expect("generate");
    assert!(matches!(
        ks.derive(&id("random"), &id("s"), Scheme::Secp256k1, &path).await,
        Err(SignerError::KeyExists(_))
    ));
    let err = ks.derive(&id("k2"), &id("s"), Scheme::Secp256k1, &path).await.expect_err("second id");
    assert!(err.to_string().contains("already derived as key \"k\""), "{err}");

    // A seed file renamed to another id fails authentication.
    std::fs::rename(dir.path().join("seeds/s.json"), dir.path().join("seeds/t.json")).expect("rename");
    let body = std::fs::read_to_string(dir.path().join("seeds/t.json")).expect("read");
    std::fs::write(dir.path().join("seeds/t.json"), body.replace("\"s\"", "\"t\"")).expect("write");
    let err = ks.derive(&id("k3"), &id("t"), Scheme::Secp256k1, &other).await.expect_err("relabelled seed");
    assert!(err.to_string().contains("authentication failed"), "{err}");
    assert!(matches!(ks.public_key(&id("k3")).await, Err(SignerError::UnknownKey(_))));
}
