//! The `molly` binary end to end: the README's main command and the engine
//! benchmark's JSON report.

use std::process::Command;

fn molly() -> Command {
    Command::new(env!("CARGO_BIN_EXE_molly"))
}

#[test]
fn demo_moves_money_and_stays_balanced() {
    let out = molly().arg("demo").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("alice tries to send 2 ETH she does not have"), "{stdout}");
    assert!(stdout.contains("-> exceeds_credits"), "{stdout}");
    assert!(stdout.contains("-> exists"), "{stdout}");
    // Alice: 1.5 in, 0.4 + 0.001 out.
    assert!(
        stdout.lines().any(|l| l.starts_with("alice") && l.trim_end().ends_with(" 1.099000000000000000")),
        "{stdout}"
    );
    assert!(stdout.contains("debits 2.101000000000000000 = credits 2.101000000000000000"), "{stdout}");
}

#[test]
fn bench_engine_writes_a_json_report() {
    let dir = std::env::temp_dir().join(format!("molly-cli-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("engine.json");
    let out = molly()
        .args([
            "bench",
            "engine",
            "--accounts",
            "1000",
            "--transfers",
            "50000",
            "--lookups",
            "10000",
            "--json",
        ])
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(report["transfers_per_second"].as_f64().unwrap() > 0.0);
    assert_eq!(report["scenarios"][0]["transfers"], 50_000);
    assert_eq!(report["scenarios"][0]["rejected"], 0);
    assert!(report["lookups"]["transfer_lookups_per_second"].as_f64().unwrap() > 0.0);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_arguments_are_refused_with_a_message() {
    let out = molly().args(["bench", "engine", "--zipf", "1.0"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--accounts"));
    let out = molly()
        .args(["bench", "engine", "--accounts", "1", "--transfers", "10", "--lookups", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("need at least 2 accounts"));
}

#[test]
fn bench_shards_writes_a_json_report() {
    let dir = std::env::temp_dir().join(format!("molly-cli-shards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("shards.json");
    let out = molly()
        .args([
            "bench",
            "shards",
            "--shards",
            "1,2",
            "--transfers",
            "40000",
            "--accounts",
            "1000",
            "--batch",
            "1000",
        ])
        .arg("--data-dir")
        .arg(&dir)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(report["transfers_per_second"].as_f64().unwrap() > 0.0);
    assert!(report["p99_batch_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(report["runs"][1]["scenario"]["shards"], 2);
    assert_eq!(report["runs"][1]["transfers"], 40_000);
    assert_eq!(report["runs"][1]["rejected"], 0);
    // The default shape sends 10% of the transfers across shards, all applied.
    assert_eq!(report["runs"][1]["scenario"]["cross_shard"], 0.1);
    assert!(report["runs"][1]["cross_shard_transfers"].as_u64().unwrap() > 2_000);
    // The journals were removed; only the report is left.
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, [std::ffi::OsString::from("shards.json")]);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sim_replays_a_seed_and_sweeps() {
    let one = || molly().args(["sim", "--seed", "11", "--steps", "500"]).output().unwrap();
    let (a, b) = (one(), one());
    assert!(a.status.success(), "stderr: {}", String::from_utf8_lossy(&a.stderr));
    // Everything but the speed is the same on a replay.
    let strip = |out: &std::process::Output| {
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.split(" (").next().unwrap().to_string()
    };
    assert_eq!(strip(&a), strip(&b));
    assert!(strip(&a).starts_with("seed 11: 3 shard(s), 500 steps"), "{}", strip(&a));
    let sweep = molly().args(["sim", "--seeds", "1..21", "--steps", "300"]).output().unwrap();
    assert!(sweep.status.success(), "stderr: {}", String::from_utf8_lossy(&sweep.stderr));
    assert!(String::from_utf8_lossy(&sweep.stdout).contains("seeds 1..21: 20 clean, 0 failing"));
    let bad = molly().args(["sim", "--seeds", "5..5"]).output().unwrap();
    assert!(!bad.status.success());
}
