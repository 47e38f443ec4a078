//! The encrypted software keystore.

mod common;

use molly_hsm_bridge::keystore::{KdfParams, SoftwareKeystore};
use molly_hsm_bridge::{KeyId, Scheme, Signer, SignerError};

#[tokio::test]
async fn keystore_passes_conformance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ks = SoftwareKeystore::create(dir.path(), b"pass", KdfParams::insecure_for_tests()).expect("create");
    common::conformance(&ks, "soft").await;
}

#[tokio::test]
async fn keys_survive_reopen_and_files_hold_no_plaintext() {
    let dir = tempfile::tempdir().expect("tempdir");
    let id = KeyId::new("reopen").expect("id");
    let public = {
        let ks =
            SoftwareKeystore::create(dir.path(), b"pass", KdfParams::insecure_for_tests()).expect("create");
        ks.generate(&id, Scheme::Secp256k1).await.expect("generate").public_key
    };
    let ks = SoftwareKeystore::open(dir.path(), b"pass").expect("reopen");
    assert_eq!(ks.public_key(&id).await.expect("public"), public);
    let digest = [3u8; 32];
    let sig = ks.sign_digest(&id, &digest).await.expect("sign");
    common::check_ecdsa(&public, &digest, &sig);

    let file = std::fs::read_to_string(dir.path().join("keys/reopen.json")).expect("key file");
    assert!(file.contains("ciphertext"));
    assert!(!file.contains("secret") && !file.contains("private"));
}

#[tokio::test]
async fn wrong_passphrase_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    SoftwareKeystore::create(dir.path(), b"right", KdfParams::insecure_for_tests()).expect("create");
    match SoftwareKeystore::open(dir.path(), b"wrong") {
        Err(SignerError::Keystore(msg)) => assert_eq!(msg, "wrong passphrase"),
        other => panic!("expected wrong passphrase, got {other:?}"),
    }
}

#[tokio::test]
async fn tampered_or_renamed_key_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ks = SoftwareKeystore::create(dir.path(), b"pass", KdfParams::insecure_for_tests()).expect("create");
    ks.generate(&KeyId::new("a").expect("id"), Scheme::Ed25519).await.expect("generate");
    drop(ks);

    // Relabel key "a" as key "b": the AEAD's associated data binds the id.
    let body = std::fs::read_to_string(dir.path().join("keys/a.json")).expect("read");
    std::fs::remove_file(dir.path().join("keys/a.json")).expect("rm");
    std::fs::write(dir.path().join("keys/b.json"), body.replace("\"a\"", "\"b\"")).expect("write");
    let err = SoftwareKeystore::open(dir.path(), b"pass").expect_err("relabelled key must fail");
    assert!(err.to_string().contains("authentication failed"), "{err}");
}

#[test]
fn key_ids_are_validated() {
    for bad in ["", ".hidden", "a/b", "x y", &"k".repeat(65)] {
        assert!(KeyId::new(bad).is_err(), "{bad:?} must be refused");
    }
    for good in ["eth-hot-1", "sol.warm_2", &"k".repeat(64)] {
        assert!(KeyId::new(good).is_ok(), "{good:?} must be accepted");
    }
}
