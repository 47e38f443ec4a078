//! The bulk (batched, parallel) derivation gives exactly the keys of the
//! one-at-a-time reference derivation, and wallet files round-trip and
//! refuse corruption.

use std::sync::atomic::AtomicU64;

use molly_chains::address::AddressBuf;
use molly_chains::batch::{DepositKeys, DeriveError, BATCH};
use molly_chains::generate::{derive_parallel, generate, Role, WalletPlan};
use molly_chains::path::HARDENED;
use molly_chains::secp::AccountXpub;
use molly_chains::{derive_address, derive_from_xpub, walletfile, Chain, Network, Seed};
use proptest::prelude::*;

fn seed() -> Seed {
    Seed::from_mnemonic("all all all all all all all all all all all all", "").unwrap()
}

fn bulk(keys: &DepositKeys, start: u32, n: usize) -> Vec<AddressBuf> {
    let mut out = vec![AddressBuf::default(); n];
    keys.encode_range(start, &mut out).unwrap();
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]

    #[test]
    fn secp_bulk_matches_reference(
        chain in prop::sample::select(vec![Chain::Eth, Chain::Tron, Chain::Btc]),
        net in prop::sample::select(vec![Network::Mainnet, Network::Testnet, Network::Regtest]),
        account in 0u32..4,
        start in prop_oneof![0u32..1000, (HARDENED - 400)..(HARDENED - 5)],
        n in 1usize..(BATCH + 9),
    ) {
        let n = n.min((HARDENED - start) as usize);
        let acct = AccountXpub::from_seed(&seed(), chain, net, account).unwrap();
        let keys = DepositKeys::from_seed(&seed(), chain, net, account).unwrap();
        let got = bulk(&keys, start, n);
        for (k, a) in got.iter().enumerate() {
            let i = start + k as u32;
            let want = derive_from_xpub(&acct, account, i).unwrap();
            prop_assert_eq!(a.as_str(), want.address.as_str(), "index {}", i);
        }
    }

    #[test]
    fn sol_bulk_matches_reference(account in 0u32..3, start in 0u32..100_000, n in 1usize..6) {
        let keys = DepositKeys::from_seed(&seed(), Chain::Sol, Network::Mainnet, account).unwrap();
        for (k, a) in bulk(&keys, start, n).iter().enumerate() {
            let i = start + k as u32;
            let want = derive_address(&seed(), Chain::Sol, Network::Mainnet, account, i).unwrap();
            prop_assert_eq!(a.as_str(), want.address.as_str());
        }
    }
}

#[test]
fn deposit_side_needs_only_the_xpub_text() {
    for (chain, net) in [
        (Chain::Eth, Network::Mainnet),
        (Chain::Tron, Network::Mainnet),
        (Chain::Btc, Network::Mainnet),
        (Chain::Btc, Network::Regtest),
    ] {
        let text = AccountXpub::from_seed(&seed(), chain, net, 3).unwrap().to_string();
        // From here on: no seed.
        let acct = AccountXpub::parse(&text, chain, net).unwrap();
        let keys = DepositKeys::from_account_xpub(&acct).unwrap();
        let from_seed = DepositKeys::from_seed(&seed(), chain, net, 3).unwrap();
        assert_eq!(bulk(&keys, 40, 5), bulk(&from_seed, 40, 5), "{chain} {net}");
    }
}

#[test]
fn ranges_past_the_hardened_boundary_are_refused() {
    let keys = DepositKeys::from_seed(&seed(), Chain::Eth, Network::Mainnet, 0).unwrap();
    let mut out = vec![AddressBuf::default(); 2];
    let e = keys.encode_range(HARDENED - 1, &mut out).unwrap_err();
    assert!(matches!(e, DeriveError::Path(_)), "{e}");
    let done = AtomicU64::new(0);
    assert!(derive_parallel(&keys, HARDENED - 1, 2, 2, &done).is_err());
}

#[test]
fn parallel_equals_sequential_and_counts_progress() {
    for chain in [Chain::Eth, Chain::Sol] {
        let keys = DepositKeys::from_seed(&seed(), chain, Network::Mainnet, 0).unwrap();
        let n = 9_000; // spans several work chunks, the last one partial
        let n = if chain == Chain::Sol { 300 } else { n };
        let done = AtomicU64::new(0);
        let par = derive_parallel(&keys, 7, n, 3, &done).unwrap();
        assert_eq!(done.into_inner(), u64::from(n));
        assert_eq!(par, bulk(&keys, 7, n as usize));
    }
}

fn small_set(chain: Chain) -> molly_chains::generate::WalletSet {
    let mut plan = WalletPlan::new(chain, Network::Mainnet, 25);
    plan.group_size = 10;
    generate(&seed(), &plan, 2, &AtomicU64::new(0)).unwrap()
}

#[test]
fn generate_assigns_one_hot_and_one_warm_wallet_per_group() {
    for chain in [Chain::Tron, Chain::Sol] {
        let set = small_set(chain);
        assert_eq!((set.deposits.len(), set.hot.len(), set.warm.len()), (25, 3, 3));
        let plan = set.plan;
        // Deposit 24 is in group 2; its hot wallet is group 2 of the hot account.
        assert_eq!(set.group_of(24), 2);
        let hot2 = derive_address(&seed(), chain, plan.network, plan.hot_account, 2).unwrap();
        assert_eq!(set.hot_for(24).unwrap().as_str(), hot2.address);
        let warm0 = derive_address(&seed(), chain, plan.network, plan.warm_account, 0).unwrap();
        assert_eq!(set.warm_for(9).unwrap().as_str(), warm0.address);
        assert_eq!(plan.path(Role::Hot, 2).unwrap(), hot2.path);
        // Hot, warm and deposit keys are all different.
        assert_ne!(set.hot[0], set.deposits[0]);
        assert_ne!(set.hot[0], set.warm[0]);
    }
}

#[test]
fn wallet_file_round_trips_and_leaves_no_temp_file() {
    let dir = std::env::temp_dir().join(format!("molly-chains-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("eth-mainnet.wallets");
    let set = small_set(Chain::Eth);
    walletfile::write(&path, &set).unwrap();
    assert_eq!(walletfile::read(&path).unwrap(), set);
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    // Overwriting is atomic too.
    walletfile::write(&path, &set).unwrap();
    assert_eq!(walletfile::read(&path).unwrap(), set);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("molly-wallets 1\nchain eth\n"));
    assert!(text.contains("\ndeposit 24 2 m/44'/60'/0'/0/24 0x"));
    assert!(text.contains("\nhot 2 2 m/44'/60'/1'/0/2 0x"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn wallet_file_refuses_corruption_truncation_and_wrong_paths() {
    let set = small_set(Chain::Btc);
    let mut bytes = Vec::new();
    let dir = std::env::temp_dir().join(format!("molly-chains-test2-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("btc.wallets");
    walletfile::write(&path, &set).unwrap();
    bytes.extend(std::fs::read(&path).unwrap());
    let text = String::from_utf8(bytes).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(walletfile::parse(&text).is_ok());

    // One address character changed.
    let pos = text.find("bc1q").unwrap() + 10;
    let mut edited = text.clone().into_bytes();
    edited[pos] = if edited[pos] == b'q' { b'p' } else { b'q' };
    let (_, why) = walletfile::parse(std::str::from_utf8(&edited).unwrap()).unwrap_err();
    assert!(why.contains("sha256 does not match"), "{why}");

    // Truncated: the checksum line is gone.
    let cut = &text[..text.len() / 2];
    let cut = &cut[..cut.rfind('\n').unwrap() + 1];
    let (_, why) = walletfile::parse(cut).unwrap_err();
    assert!(why.contains("truncated"), "{why}");

    // Consistent checksum but a path that does not belong to the plan.
    let body_end = text.trim_end_matches('\n').rfind('\n').unwrap() + 1;
    let body = text[..body_end].replacen("m/84'/0'/0'/0/3 ", "m/84'/0'/0'/0/4 ", 1);
    use bitcoin::hashes::{sha256, Hash};
    let forged = format!("{body}sha256 {}\n", sha256::Hash::hash(body.as_bytes()));
    let (line, why) = walletfile::parse(&forged).unwrap_err();
    assert!(why.contains("expected path m/84'/0'/0'/0/3"), "{why}");
    assert!(line > 10);
}
