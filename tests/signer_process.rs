//! `molly signer serve` as its own process, driven only through the CLI and
//! the socket, the way an operator and the engine use it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use molly_hsm_bridge::approvals::Approval;
use molly_hsm_bridge::ecdsa::keccak256;
use molly_hsm_bridge::process::call;
use molly_hsm_bridge::protocol::{Request, Response};
use molly_hsm_bridge::{KeyId, Scheme};

const MOLLY: &str = env!("CARGO_BIN_EXE_molly");

fn molly(args: &[&str]) -> String {
    let out = Command::new(MOLLY).args(args).output().expect("run molly");
    assert!(out.status.success(), "molly {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8")
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "signer did not create {path:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn signer_process_signs_only_with_quorum_and_audits_everything() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    molly(&["signer", "new-secret", &d("engine.key")]);
    let mut approvers = Vec::new();
    for i in 1..=5 {
        let seed = d(&format!("approver{i}.seed"));
        molly(&["signer", "new-secret", &seed]);
        let public = molly(&["signer", "approver-public-key", &seed]).trim().to_string();
        approvers.push(serde_json::json!({"id": format!("approver{i}"), "public_key": public}));
    }
    let uid = std::fs::metadata("/proc/self").expect("proc").uid();
    let config = serde_json::json!({
        "socket": d("signer.sock"),
        "audit_log": d("audit.log"),
        "backend": {"software": {
            "dir": d("keystore"),
            "passphrase_env": "MOLLY_TEST_PASSPHRASE",
            "kdf": {"m_cost_kib": 1024, "t_cost": 1, "p_cost": 1}
        }},
        "clients": [{"name": "engine", "uid": uid, "key_file": d("engine.key"), "may_generate": true}],
        "limits": {"max_connections": 4, "max_frame_bytes": 65536, "max_message_bytes": 4096, "idle_timeout_ms": 5000},
        "policy": {
            "quorum": 3,
            "approvers": approvers,
            "max_approval_age_secs": 300,
            "max_clock_skew_secs": 30,
            "max_remembered_approvals": 1000,
            "keys": {"hot-eth": {"tier": "hot"}},
            "assets": {"ETH": {"level2_from": "1000", "level3_from": "1000000"}}
        }
    });
    std::fs::write(d("signer.json"), config.to_string()).expect("config");
    let server = Server(
        Command::new(MOLLY)
            .args(["signer", "serve", "--config", &d("signer.json")])
            .env("MOLLY_TEST_PASSPHRASE", "correct horse")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn signer"),
    );
    let socket = dir.path().join("signer.sock");
    wait_for(&socket);
    let key_file = dir.path().join("engine.key");
    let req = |r: &Request| call(&socket, "engine", &key_file, r);

    let hot = KeyId::new("hot-eth").expect("id");
    let Ok(Response::Generated(info)) =
        req(&Request::Generate { key_id: hot.clone(), scheme: Scheme::Secp256k1 })
    else {
        panic!("generate failed");
    };
    let digest = keccak256(b"sweep hot to cold");
    let sign = |approvals: Vec<Approval>| {
        req(&Request::SignDigest { key_id: hot.clone(), digest, asset: "ETH".into(), amount: 42, approvals })
    };
    // Two approvals are not enough for a hot wallet.
    let approve = |i: usize| -> Approval {
        let out = molly(&[
            "signer",
            "approve",
            "--approver",
            &format!("approver{i}"),
            "--seed-file",
            &d(&format!("approver{i}.seed")),
            "--key-id",
            "hot-eth",
            "--asset",
            "ETH",
            "--amount",
            "42",
            "--digest",
            &hex::encode(digest),
        ]);
        serde_json::from_str(&out).expect("approval json")
    };
    let err = sign(vec![approve(1), approve(2)]).expect_err("2 of 5 must be refused");
    assert!(err.contains("level 3 needs 3 approval(s), got 2"), "{err}");
    let Ok(Response::EcdsaSignature(sig)) = sign(vec![approve(1), approve(3), approve(5)]) else {
        panic!("3 of 5 must sign");
    };
    let (signature, rid) = sig.to_k256().expect("signature");
    let recovered = k256_recover(&digest, &signature, rid).expect("recovery id recovers the signer key");
    assert_eq!(recovered, info.public_key.to_k256().expect("key"));

    // Stop it the way an init system does; the socket goes away.
    let pid = server.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
    let start = Instant::now();
    while socket.exists() && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!socket.exists(), "socket removed on SIGTERM");
    drop(server);

    let out = molly(&["signer", "verify-audit", &d("audit.log")]);
    assert!(out.starts_with("audit log ok: 3 entries"), "{out}");
    // Tampering is reported with the line number and a failing exit code.
    let log = std::fs::read_to_string(d("audit.log")).expect("log");
    std::fs::write(d("audit.log"), log.replacen("\"amount\":\"42\"", "\"amount\":\"4\"", 1)).expect("tamper");
    let out = Command::new(MOLLY).args(["signer", "verify-audit", &d("audit.log")]).output().expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("line 2"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn k256_recover(
    digest: &[u8; 32],
    signature: &molly_hsm_bridge::ecdsa::K256Signature,
    rid: molly_hsm_bridge::ecdsa::K256RecoveryId,
) -> Option<molly_hsm_bridge::ecdsa::K256VerifyingKey> {
    molly_hsm_bridge::ecdsa::K256VerifyingKey::recover_from_prehash(digest, signature, rid).ok()
}

#[test]
fn signer_process_on_a_softhsm_token() {
    if std::env::var("MOLLY_SKIP_SOFTHSM").is_ok_and(|v| v == "1") {
        eprintln!("MOLLY_SKIP_SOFTHSM=1: skipping");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    std::fs::create_dir(d("tokens")).expect("tokens dir");
    std::fs::write(
        d("softhsm2.conf"),
        format!("directories.tokendir = {}\nobjectstore.backend = file\n", d("tokens")),
    )
    .expect("softhsm conf");
    let init = Command::new("softhsm2-util")
        .args(["--init-token", "--free", "--label", "molly-e2e"])
        .args(["--so-pin", "5678", "--pin", "1234"])
        .env("SOFTHSM2_CONF", d("softhsm2.conf"))
        .output()
        .expect("softhsm2-util must be installed (scripts/setup/softhsm2.sh)");
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));

    molly(&["signer", "new-secret", &d("engine.key")]);
    molly(&["signer", "new-secret", &d("a.seed")]);
    let approver = molly(&["signer", "approver-public-key", &d("a.seed")]);
    let uid = std::fs::metadata("/proc/self").expect("proc").uid();
    let module =
        std::env::var("MOLLY_SOFTHSM_MODULE").unwrap_or_else(|_| "/usr/lib/softhsm/libsofthsm2.so".into());
    let config = serde_json::json!({
        "socket": d("signer.sock"),
        "audit_log": d("audit.log"),
        "backend": {"pkcs11": {"module": module, "token_label": "molly-e2e", "pin_env": "MOLLY_TEST_PIN"}},
        "clients": [{"name": "engine", "uid": uid, "key_file": d("engine.key"), "may_generate": true}],
        "policy": {
            "quorum": 1,
            "approvers": [{"id": "a", "public_key": approver.trim()}],
            "max_approval_age_secs": 300,
            "max_clock_skew_secs": 30,
            "max_remembered_approvals": 100,
            "keys": {"wd-eth": {"tier": "withdrawal"}, "wd-sol": {"tier": "withdrawal"}},
            "assets": {"ETH": {"level2_from": "100", "level3_from": "1000"},
                       "SOL": {"level2_from": "100", "level3_from": "1000"}}
        }
    });
    std::fs::write(d("signer.json"), config.to_string()).expect("config");
    let _server = Server(
        Command::new(MOLLY)
            .args(["signer", "serve", "--config", &d("signer.json")])
            .env("SOFTHSM2_CONF", d("softhsm2.conf"))
            .env("MOLLY_TEST_PIN", "1234")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn signer"),
    );
    let socket = dir.path().join("signer.sock");
    wait_for(&socket);
    let key_file = dir.path().join("engine.key");
    let req = |r: &Request| call(&socket, "engine", &key_file, r).expect("request");

    let eth = KeyId::new("wd-eth").expect("id");
    let sol = KeyId::new("wd-sol").expect("id");
    let Response::Generated(eth_info) =
        req(&Request::Generate { key_id: eth.clone(), scheme: Scheme::Secp256k1 })
    else {
        panic!("generate secp256k1");
    };
    let Response::Generated(sol_info) =
        req(&Request::Generate { key_id: sol.clone(), scheme: Scheme::Ed25519 })
    else {
        panic!("generate ed25519");
    };
    assert_eq!(eth_info.backend, "pkcs11");

    let digest = keccak256(b"tx");
    let Response::EcdsaSignature(sig) = req(&Request::SignDigest {
        key_id: eth.clone(),
        digest,
        asset: "ETH".into(),
        amount: 99,
        approvals: vec![],
    }) else {
        panic!("sign digest");
    };
    let (signature, rid) = sig.to_k256().expect("sig");
    assert!(signature.normalize_s().is_none(), "low-S");
    let recovered = k256_recover(&digest, &signature, rid).expect("recovers");
    assert_eq!(
        molly_hsm_bridge::ecdsa::eth_address(&recovered),
        eth_info.public_key.eth_address().expect("address")
    );

    let message = b"solana message".to_vec();
    let Response::Ed25519Signature(sig) = req(&Request::SignMessage {
        key_id: sol.clone(),
        message: message.clone(),
        asset: "SOL".into(),
        amount: 1,
        approvals: vec![],
    }) else {
        panic!("sign message");
    };
    sol_info
        .public_key
        .to_ed25519()
        .expect("ed25519 key")
        .verify_strict(&message, &sig.to_dalek())
        .expect("ed25519 signature verifies");

    let Response::Keys(keys) = req(&Request::List) else {
        panic!("list");
    };
    let ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
    assert_eq!(ids, vec!["wd-eth", "wd-sol"]);
}

#[test]
fn hd_keys_are_imported_on_the_host_and_derived_inside_the_signer_process() {
    const ABOUT: &str =
        "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";
    let dir = tempfile::tempdir().expect("tempdir");
    let d = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    molly(&["signer", "new-secret", &d("engine.key")]);
    std::fs::write(d("mnemonic.txt"), format!("{ABOUT}\n")).expect("mnemonic");
    molly(&["signer", "new-secret", &d("approver1.seed")]);
    let approver = molly(&["signer", "approver-public-key", &d("approver1.seed")]).trim().to_string();
    let uid = std::fs::metadata("/proc/self").expect("proc").uid();
    let config = serde_json::json!({
        "socket": d("signer.sock"),
        "audit_log": d("audit.log"),
        "backend": {"software": {
            "dir": d("keystore"),
            "passphrase_env": "MOLLY_TEST_PASSPHRASE",
            "kdf": {"m_cost_kib": 1024, "t_cost": 1, "p_cost": 1}
        }},
        "clients": [{"name": "engine", "uid": uid, "key_file": d("engine.key"), "may_generate": true}],
        "policy": {
            "quorum": 1,
            "approvers": [{"id": "approver1", "public_key": approver}],
            "max_approval_age_secs": 300,
            "max_clock_skew_secs": 30,
            "max_remembered_approvals": 1000,
            "keys": {"dep-eth-5": {"tier": "withdrawal"}},
            "assets": {"ETH": {"level2_from": "1000", "level3_from": "1000000"}}
        }
    });
    std::fs::write(d("signer.json"), config.to_string()).expect("config");
    let server = Server(
        Command::new(MOLLY)
            .args(["signer", "serve", "--config", &d("signer.json")])
            .env("MOLLY_TEST_PASSPHRASE", "correct horse")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn signer"),
    );
    let socket = dir.path().join("signer.sock");
    wait_for(&socket);

    // Imported on the host while the signer serves (the keystore passphrase
    // comes from the config's environment variable).
    let import = |env_pass: &str| {
        Command::new(MOLLY)
            .args(["signer", "import-seed", "--config", &d("signer.json")])
            .args(["--mnemonic-file", &d("mnemonic.txt"), "--seed-id", "install"])
            .env("MOLLY_TEST_PASSPHRASE", env_pass)
            .output()
            .expect("run import-seed")
    };
    let wrong = import("wrong horse");
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong passphrase"));
    let out = import("correct horse");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "sealed seed install");
    let again = import("correct horse");
    assert!(String::from_utf8_lossy(&again.stderr).contains("seed id \"install\" already exists"));

    let derive = |chain: &str, index: &str, key_id: &str, seed_id: &str| {
        Command::new(MOLLY)
            .args(["signer", "derive", "--socket", &d("signer.sock"), "--client", "engine"])
            .args(["--key-file", &d("engine.key"), "--seed-id", seed_id, "--chain", chain])
            .args(["--index", index, "--key-id", key_id])
            .output()
            .expect("run derive")
    };
    for (chain, index, key_id) in
        [("eth", "5", "dep-eth-5"), ("tron", "2", "dep-tron-2"), ("sol", "1", "dep-sol-1")]
    {
        let out = derive(chain, index, key_id, "install");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("derive json");
        // The reference: molly-chains from the mnemonic (`molly wallets derive`).
        let want: serde_json::Value = serde_json::from_str(&molly(&[
            "wallets",
            "derive",
            "--chain",
            chain,
            "--mnemonic-file",
            &d("mnemonic.txt"),
            "--index",
            index,
            "--json",
        ]))
        .expect("wallets json");
        assert_eq!(got["address"], want["address"], "{chain}: {got} vs {want}");
        assert_eq!(got["path"], want["path"]);
        assert_eq!(got["key_id"], key_id);
    }
    let out = derive("eth", "6", "dep-eth-6", "nope");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown seed id \"nope\""));

    // The derived key signs through the socket; the signature recovers its address.
    let key_file = dir.path().join("engine.key");
    let digest = keccak256(b"sweep deposit 5");
    let key_id = KeyId::new("dep-eth-5").expect("id");
    let Ok(Response::EcdsaSignature(sig)) = call(
        &socket,
        "engine",
        &key_file,
        &Request::SignDigest {
            key_id: key_id.clone(),
            digest,
            asset: "ETH".into(),
            amount: 1,
            approvals: vec![],
        },
    ) else {
        panic!("level-1 signature by the derived key");
    };
    let Ok(Response::PublicKey(public)) = call(&socket, "engine", &key_file, &Request::PublicKey { key_id })
    else {
        panic!("public key");
    };
    let (signature, rid) = sig.to_k256().expect("signature");
    assert_eq!(k256_recover(&digest, &signature, rid).expect("recover"), public.to_k256().expect("key"));
    drop(server);

    let out = molly(&["signer", "verify-audit", &d("audit.log")]);
    assert!(out.starts_with("audit log ok: 6 entries"), "{out}");
    let log = std::fs::read_to_string(d("audit.log")).expect("log");
    assert_eq!(log.matches("\"op\":\"derive\"").count(), 4, "{log}");
    assert!(!log.contains("abandon"));
    let seed_file = std::fs::read_to_string(dir.path().join("keystore/seeds/install.json")).expect("seed");
    assert!(!seed_file.contains("abandon"));
}
