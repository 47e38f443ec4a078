//! `molly wallets ...` as a user runs it.

use std::path::PathBuf;
use std::process::{Command, Output};

use molly_chains::{walletfile, Chain};

const MNEMONIC: &str = "all all all all all all all all all all all all";

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("molly-cli-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn file(&self, name: &str, content: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn molly(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_molly")).args(args).output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn derive_prints_the_address_and_json() {
    let dir = TempDir::new("derive");
    let m = dir.file("m.txt", &format!("{MNEMONIC}\n"));
    let m = m.to_str().unwrap();
    let o = molly(&["wallets", "derive", "--chain", "eth", "--mnemonic-file", m, "--index", "100"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "0x1e6E3708a059aEa1241a81c7aAe84b6CDbC54d59");

    let o = molly(&["wallets", "derive", "--chain", "sol", "--mnemonic-file", m, "--index", "1", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["path"], "m/44'/501'/1'/0'");
    assert_eq!(v["address"], "CqPFGxxzrE2bgLGC98x9rYix7Nq17mh8L7pWseJt3c9N");
    assert_eq!(v["public_key"].as_str().unwrap().len(), 64);

    let o = molly(&[
        "wallets",
        "derive",
        "--chain",
        "tron",
        "--mnemonic-file",
        m,
        "--index",
        "0",
        "--account",
        "2",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["address"], "TUKx4Z56RMrYWzAu1qoiDSHQTNiSgYHYyF");
    assert_eq!(v["public_key"].as_str().unwrap().len(), 66, "compressed secp256k1 key");
}

#[test]
fn derive_reports_bad_input() {
    let dir = TempDir::new("bad");
    let bad = dir.file("bad.txt", &MNEMONIC.replacen("all", "zoo", 1));
    let o = molly(&[
        "wallets",
        "derive",
        "--chain",
        "eth",
        "--mnemonic-file",
        bad.to_str().unwrap(),
        "--index",
        "0",
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("checksum does not match"), "{}", stderr(&o));

    let m = dir.file("m.txt", MNEMONIC);
    let m = m.to_str().unwrap();
    let o = molly(&["wallets", "derive", "--chain", "eth", "--mnemonic-file", m, "--index", "2147483648"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("index 2147483648 is out of range"), "{}", stderr(&o));

    let o = molly(&["wallets", "derive", "--chain", "doge", "--mnemonic-file", m, "--index", "0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("unknown chain"), "{}", stderr(&o));

    let o =
        molly(&["wallets", "derive", "--chain", "eth", "--mnemonic-file", "/nonexistent/m", "--index", "0"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("reading mnemonic file"), "{}", stderr(&o));
}

#[test]
fn passphrase_file_changes_the_keys_and_its_newline_is_ignored() {
    let dir = TempDir::new("pass");
    let m = dir.file("m.txt", MNEMONIC);
    let p1 = dir.file("p1.txt", "correct horse\n");
    let p2 = dir.file("p2.txt", "correct horse");
    let run = |p: &PathBuf| {
        stdout(&molly(&[
            "wallets",
            "derive",
            "--chain",
            "eth",
            "--mnemonic-file",
            m.to_str().unwrap(),
            "--passphrase-file",
            p.to_str().unwrap(),
            "--index",
            "0",
        ]))
    };
    assert_eq!(run(&p1), run(&p2));
    assert_ne!(run(&p1), "0x73d0385F4d8E00C5e6504C6030F47BF6212736A8");
}

#[test]
fn xpub_prints_account_keys_and_refuses_solana() {
    let dir = TempDir::new("xpub");
    let m = dir.file("m.txt", MNEMONIC);
    let m = m.to_str().unwrap();
    let z = molly(&["wallets", "xpub", "--chain", "btc", "--mnemonic-file", m]);
    assert!(stdout(&z).starts_with("zpub"), "{}", stderr(&z));
    let v = molly(&["wallets", "xpub", "--chain", "btc", "--mnemonic-file", m, "--network", "testnet"]);
    assert!(stdout(&v).starts_with("vpub"));
    let x = molly(&["wallets", "xpub", "--chain", "eth", "--mnemonic-file", m, "--account", "1"]);
    assert!(stdout(&x).starts_with("xpub"));
    let s = molly(&["wallets", "xpub", "--chain", "sol", "--mnemonic-file", m]);
    assert!(!s.status.success());
    assert!(stderr(&s).contains("hardened only"), "{}", stderr(&s));
}

#[test]
fn validate_exit_codes_and_reasons() {
    let ok = molly(&["wallets", "validate", "--chain", "eth", "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let bad = molly(&["wallets", "validate", "--chain", "eth", "0x5aaeb6053F3E94C9b9A09f33669435E7Ef1BeAed"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("checksum (eip-55) does not match"), "{}", stderr(&bad));
    let net = molly(&[
        "wallets",
        "validate",
        "--chain",
        "btc",
        "--network",
        "regtest",
        "bc1qcr8te4kr609gcawutmrza0j4xv80jy8z306fyu",
    ]);
    assert!(!net.status.success());
    assert!(stderr(&net).contains("is for mainnet, not regtest"), "{}", stderr(&net));
}

#[test]
fn generate_writes_loadable_files_with_hot_and_warm_wallets() {
    let dir = TempDir::new("gen");
    let m = dir.file("m.txt", MNEMONIC);
    let out = dir.0.join("out");
    let o = molly(&[
        "wallets",
        "generate",
        "--count",
        "25",
        "--group-size",
        "10",
        "--chains",
        "eth,sol",
        "--mnemonic-file",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("eth: 25 deposit wallets, 3 hot + 3 warm"), "{}", stdout(&o));
    let eth = walletfile::read(&out.join("eth-mainnet.wallets")).unwrap();
    assert_eq!(eth.plan.chain, Chain::Eth);
    assert_eq!((eth.deposits.len(), eth.hot.len(), eth.warm.len()), (25, 3, 3));
    assert_eq!(eth.deposits[0].as_str(), "0x73d0385F4d8E00C5e6504C6030F47BF6212736A8");
    let sol = walletfile::read(&out.join("sol-mainnet.wallets")).unwrap();
    assert_eq!(sol.deposits[1].as_str(), "CqPFGxxzrE2bgLGC98x9rYix7Nq17mh8L7pWseJt3c9N");
    assert!(!out.join("tron-mainnet.wallets").exists());
    let text = std::fs::read_to_string(out.join("eth-mainnet.wallets")).unwrap();
    assert!(!text.to_lowercase().contains("prv"), "no private material in the file");

    let bad = molly(&[
        "wallets",
        "generate",
        "--count",
        "5",
        "--hot-account",
        "0",
        "--mnemonic-file",
        m.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("must differ"), "{}", stderr(&bad));
}
