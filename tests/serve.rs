//! `molly serve` as a real process: kill -9 at random moments and check that
//! every acknowledged transfer survives, linked chains stay whole, and
//! debits equal credits; clean shutdown on SIGTERM; configuration.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use molly_engine::{Config, TransferFlags, TransferState};
use molly_shards::durable::{DurableLedger, GROUP_BYTES_MAX_DEFAULT};

/// A fresh directory, removed on drop (`.0` is its path).
struct TempDir(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new().prefix(&format!("molly-{name}-")).tempdir().unwrap();
        Self(dir.path().to_path_buf(), dir)
    }
}

fn molly() -> Command {
    Command::new(env!("CARGO_BIN_EXE_molly"))
}

fn serve(dir: &Path, extra: &[&str]) -> Child {
    molly()
        .args([
            "serve",
            "--shards",
            "2",
            "--metrics-addr",
            "127.0.0.1:0",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// One acknowledged batch: `acked SHARD FIRST LAST OK CROSS_OK_IDS`.
#[derive(Debug, Clone)]
struct Ack {
    shard: usize,
    first: u128,
    last: u128,
    ok: usize,
    /// The cross-shard transfers answered `ok`.
    cross: Vec<u128>,
}

fn parse_ack(line: &str) -> Option<Ack> {
    let mut parts = line.strip_prefix("acked ")?.split(' ');
    Some(Ack {
        shard: parts.next()?.parse().ok()?,
        first: parts.next()?.parse().ok()?,
        last: parts.next()?.parse().ok()?,
        ok: parts.next()?.parse().ok()?,
        cross: match parts.next()? {
            "-" => Vec::new(),
            ids => ids.split(',').map(|id| id.parse().ok()).collect::<Option<Vec<u128>>>()?,
        },
    })
}

/// Recovers both shards' journals offline, as shard `i` of 2 (the server's
/// own recovery code), with their open cross-shard intents.
fn recover_both(dir: &Path, cycle: u64) -> Vec<molly_shards::durable::Recovered> {
    (0..2u32)
        .map(|shard| {
            molly_shards::durable::recover_shard(
                &dir.join(format!("shard-{shard}")),
                Config::default(),
                GROUP_BYTES_MAX_DEFAULT,
                shard,
                2,
            )
            .unwrap_or_else(|e| panic!("cycle {cycle}: shard {shard} does not recover: {e}"))
        })
        .collect()
}

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

#[test]
fn kill_9_at_random_moments_loses_no_acknowledged_transfer() {
    let cycles: u64 = std::env::var("MOLLY_CRASH_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(20);
    let seed: u64 =
        std::env::var("MOLLY_CRASH_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x006d_6f6c_6c79);
    eprintln!("crash test: {cycles} cycles, seed {seed} (MOLLY_CRASH_SEED to replay the kill timings)");
    let mut rng = Rng(seed | 1);
    let dir = TempDir::new("crash");
    let mut acks: Vec<Ack> = Vec::new();
    let mut cycles_with_acks = 0;
    // Acknowledged cross-shard transfers a kill left with their post not yet durable.
    let mut open_when_killed = 0;
    // Small journal files and frequent snapshots: kills land on rotations,
    // background snapshots and the deletion of covered journal files.
    let config = dir.0.join("crash.toml");
    std::fs::write(&config, "[serve]\nsnapshot_every_bytes = 1048576\njournal_file_bytes = 262144\n")
        .unwrap();
    let config = config.to_str().unwrap().to_string();
    for cycle in 1..=cycles {
        let mut child = serve(&dir.0, &["--crash-test-driver", &cycle.to_string(), "--config", &config]);
        let stdout = child.stdout.take().unwrap();
        let (lines_tx, lines_rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if lines_tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Kill at a random moment: one cycle in four during start-up and
        // recovery; the others mid-load, a random time after the first
        // acknowledgement (start-up time varies with the machine's load).
        let mut early = Vec::new();
        if rng.below(4) == 0 {
            std::thread::sleep(Duration::from_millis(rng.below(400)));
        } else if let Ok(first) = lines_rx.recv_timeout(Duration::from_secs(60)) {
            early.push(first);
            std::thread::sleep(Duration::from_millis(rng.below(600)));
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success(), "cycle {cycle}: the server exited on its own: {status}");
        reader.join().unwrap();
        let before = acks.len();
        // Only whole lines count: a line cut by the kill was never fully acknowledged.
        acks.extend(early.into_iter().chain(lines_rx.try_iter()).filter_map(|line| parse_ack(&line)));
        if acks.len() > before {
            cycles_with_acks += 1;
        }

        // Recover (the same code the server runs at start) and check.
        let shards = recover_both(&dir.0, cycle);
        for (shard, recovered) in shards.iter().enumerate() {
            let engine = &recovered.engine;
            engine.check_invariants().unwrap_or_else(|v| panic!("cycle {cycle}: shard {shard}: {v}"));
            recovered.cross.check(engine).unwrap_or_else(|v| panic!("cycle {cycle}: shard {shard}: {v}"));
            for ack in acks.iter().filter(|a| a.shard == shard) {
                let ids: Vec<u128> = (ack.first..=ack.last).collect();
                let mut found = Vec::new();
                engine.lookup_transfers(&ids, &mut found).unwrap();
                assert_eq!(
                    found.len(),
                    ack.ok,
                    "cycle {cycle}: shard {shard}: acknowledged batch {ack:?} lost transfers"
                );
                // An acknowledged cross-shard transfer is credited there and
                // posted here, or its post was not durable yet: then its
                // intent is open (the answer comes before the settle is
                // journaled), and the next start posts it.
                for &id in &ack.cross {
                    match engine.transfer_state(id) {
                        Some(TransferState::Posted) => {}
                        Some(TransferState::Pending) if recovered.cross.intents().contains_key(&id) => {
                            open_when_killed += 1;
                        }
                        other => panic!("cycle {cycle}: acknowledged cross-shard {id} is {other:?}"),
                    }
                    let mut credit = Vec::new();
                    shards[1 - shard].engine.lookup_transfers(&[id], &mut credit).unwrap();
                    assert_eq!(
                        credit.len(),
                        1,
                        "cycle {cycle}: acknowledged cross-shard {id} has no credit leg"
                    );
                }
            }
            // Linked pairs: both or neither.
            let present: std::collections::HashSet<u128> = engine.transfers().iter().map(|t| t.id).collect();
            for t in engine.transfers().iter().filter(|t| t.flags.contains(TransferFlags::LINKED)) {
                assert!(present.contains(&(t.id + 1)), "cycle {cycle}: half of linked pair {} applied", t.id);
            }
        }
    }
    // A last start with no load lets the shards finish every cross-shard
    // transfer a kill left open (the debit shard sends its credits again);
    // a clean stop waits for that. Then all or nothing holds across shards:
    // no intent open, the bridges net to zero, user accounts balance.
    let _ = std::fs::remove_file(dir.0.join("server.addr")); // a killed server leaves its own
    let mut child = serve(&dir.0, &[]);
    wait_for_file(&dir.0.join("server.addr"), Duration::from_secs(60));
    // SAFETY: kill(2) with a valid pid of our own child and a valid signal.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    assert!(child.wait().unwrap().success());
    let shards = recover_both(&dir.0, cycles + 1);
    for recovered in &shards {
        assert!(recovered.cross.intents().is_empty(), "an intent is still open after a clean stop");
    }
    // Every acknowledged cross-shard transfer is posted now (some were
    // found open after a kill).
    for ack in &acks {
        for &id in &ack.cross {
            let state = shards[ack.shard].engine.transfer_state(id);
            assert_eq!(
                state,
                Some(TransferState::Posted),
                "acknowledged cross-shard {id} after the last start"
            );
        }
    }
    // The journal rotated, and files the snapshots covered were deleted.
    let journals: Vec<Vec<u64>> = (0..2)
        .map(|shard| {
            let dir = dir.0.join(format!("shard-{shard}"));
            let files = molly_shards::journal_files::list_in(&molly_shards::snapshot::Disk, &dir).unwrap();
            files.into_iter().map(|(first, _)| first).collect()
        })
        .collect();
    eprintln!("journal files left (first sequences): {journals:?}");
    assert!(journals.iter().any(|files| files.first().is_some_and(|&first| first > 1)), "{journals:?}");
    let accounts: Vec<&[molly_engine::Account]> = shards.iter().map(|r| r.engine.accounts()).collect();
    molly_shards::cross::check_bridges(&accounts).unwrap();
    let (mut debits, mut credits) = (0u128, 0u128);
    for a in accounts.iter().flat_map(|list| list.iter()).filter(|a| !molly_shards::cross::is_reserved(a.id))
    {
        debits += a.debits_posted;
        credits += a.credits_posted;
    }
    let crossed: usize = acks.iter().map(|a| a.cross.len()).sum();
    // The hot wallet's part on shard 1 only pays out: what it paid came from
    // shard 0's part through the rebalancer's moves, each all or nothing.
    let hot = molly_shards::route::sharded_id(1);
    let parts: Vec<molly_engine::Account> =
        accounts.iter().map(|l| *l.iter().find(|a| a.id == hot).unwrap()).collect();
    let moves: usize = shards
        .iter()
        .map(|r| r.engine.transfers().iter().filter(|t| molly_shards::cross::is_move_id(t.id)).count())
        .sum();
    eprintln!("hot wallet parts {parts:?}; {moves} move records");
    assert!(parts[1].debits_posted > 0 && moves > 0, "the rebalancer never refilled the paying part");
    assert!(
        parts.iter().all(|p| p.debits_posted + p.debits_pending <= p.credits_posted),
        "a part went below zero"
    );
    eprintln!("user accounts across shards: debits {debits} = credits {credits}; {crossed} cross-shard acknowledged");
    assert_eq!(debits, credits, "user accounts across shards do not balance");
    assert!(crossed > 0, "the driver acknowledged no cross-shard transfer");
    eprintln!(
        "{} acknowledged batches over {cycles} cycles ({cycles_with_acks} cycles acknowledged something; \
         {open_when_killed} acknowledged cross-shard transfers found open after a kill, posted by the next start)",
        acks.len()
    );
    assert!(cycles_with_acks >= cycles / 2, "too few cycles got as far as acknowledging: {cycles_with_acks}");
}

fn wait_for_file(path: &Path, timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if text.ends_with('\n') {
                return text.trim().to_string();
            }
        }
        assert!(Instant::now() < deadline, "{} never appeared", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigterm_stops_cleanly_and_metrics_are_served() {
    let dir = TempDir::new("term");
    let _ = std::fs::remove_file(dir.0.join("metrics.addr"));
    let mut child = serve(&dir.0, &["--crash-test-driver", "1"]);
    // Drain the driver's `acked` lines: a full pipe would stall it (and the stop).
    let mut stdout = child.stdout.take().unwrap();
    let drain = std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    let addr = wait_for_file(&dir.0.join("metrics.addr"), Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let body =
        ureq::get(&format!("http://{addr}/metrics")).call().unwrap().into_body().read_to_string().unwrap();
    for metric in [
        "molly_transfers_created_total{shard=\"0\"}",
        "molly_journal_fsync_seconds_bucket",
        "molly_batch_seconds_count",
        "molly_inbox_depth",
        "molly_recovery_seconds{shard=\"1\"}",
        "molly_net_connections 0",
        "molly_net_requests_total",
        "molly_net_frame_errors_total",
    ] {
        assert!(body.contains(metric), "missing {metric} in:\n{body}");
    }
    assert!(ureq::get(&format!("http://{addr}/other")).call().is_err(), "unknown paths are 404");
    // A second server on the same data directory is refused: it would corrupt the journals.
    let second = molly()
        .args(["serve", "--listen", "127.0.0.1:0", "--metrics-addr", "off", "--data-dir"])
        .arg(&dir.0)
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("is locked"), "{second:?}");
    // SAFETY: kill(2) with a valid pid of our own child and a valid signal.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "molly serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(status.success(), "exit {status}, stderr:\n{stderr}");
    assert!(stderr.contains("stopped cleanly"), "{stderr}");
    drain.join().unwrap().unwrap();
    // What was acknowledged is there after a clean stop too, with no torn tail.
    let ledger =
        DurableLedger::open(&dir.0.join("shard-0"), Config::default(), GROUP_BYTES_MAX_DEFAULT).unwrap();
    assert!(!ledger.recovery().scan.torn_tail);
    assert!(!ledger.engine().transfers().is_empty());
    drop(ledger);
    // The directory holds two shards for good: another count would look for
    // accounts on the wrong shards, and is refused at start, naming both.
    let other = molly()
        .args(["serve", "--shards", "1", "--listen", "127.0.0.1:0", "--metrics-addr", "off", "--data-dir"])
        .arg(&dir.0)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(!other.status.success(), "{stderr}");
    assert!(stderr.contains("holds 2 shard(s)") && stderr.contains("with 1"), "{stderr}");
    assert_eq!(std::fs::read_to_string(dir.0.join("shards")).unwrap(), "2\n");
}

#[test]
fn configuration_file_defaults_and_refusals() {
    let dir = TempDir::new("config");
    let out = molly().args(["serve", "--print-config"]).output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for line in [
        "data_dir = \"data\"",
        "metrics_addr = \"127.0.0.1:9464\"",
        "batch_events_max = 8190",
        "pin = true",
        "listen = \"127.0.0.1:3000\"",
        "connections_max = 1024",
        "transfers_max = 12582912",
        "rebalance_interval_ms = 100",
        "idle_park_us = 10000",
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
    // A file sets values; flags override the file.
    let file = dir.0.join("molly.toml");
    std::fs::write(&file, "[serve]\nshards = 3\ninbox_depth = 64\n[engine]\ntransfers_max = 1000\n").unwrap();
    let out =
        molly().args(["serve", "--print-config", "--shards", "5", "--config"]).arg(&file).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("shards = 5")
            && text.contains("inbox_depth = 64")
            && text.contains("transfers_max = 1000"),
        "{text}"
    );
    // Unknown keys are refused with the key's name.
    std::fs::write(&file, "[serve]\nshard = 3\n").unwrap();
    let out = molly().args(["serve", "--print-config", "--config"]).arg(&file).output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("shard"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
