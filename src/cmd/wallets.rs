//! `molly wallets ...`: derive, show account keys, validate addresses and
//! generate wallets in bulk; plus the `molly bench wallets` driver.

use std::path::{Path as FsPath, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use molly_chains::batch::DepositKeys;
use molly_chains::generate::{self, WalletPlan, DEFAULT_GROUP_SIZE};
use molly_chains::path::check_index;
use molly_chains::secp::AccountXpub;
use molly_chains::{address, derive_address, walletfile, Chain, Network, Seed};
use zeroize::Zeroizing;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print the deposit address of wallet INDEX (with --json: path, public key, address).
    Derive(DeriveArgs),
    /// Print the account-level extended public key (xpub; zpub/vpub for btc).
    Xpub(XpubArgs),
    /// Check a withdrawal destination: exit 0 if valid, non-zero with the reason if not.
    Validate(ValidateArgs),
    /// Generate N wallets per chain in parallel and write them durably (addresses and paths only).
    Generate(GenerateArgs),
}

/// Where the secret comes from.
#[derive(Debug, clap::Args)]
pub struct SeedArgs {
    /// File holding the BIP39 mnemonic (English words).
    #[arg(long)]
    mnemonic_file: PathBuf,
    /// File holding the BIP39 passphrase (one trailing newline is ignored).
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct DeriveArgs {
    /// eth, tron, btc or sol.
    #[arg(long)]
    chain: Chain,
    #[command(flatten)]
    seed: SeedArgs,
    /// Wallet index (below 2^31).
    #[arg(long)]
    index: u64,
    /// Account (below 2^31).
    #[arg(long, default_value_t = 0)]
    account: u64,
    /// mainnet, testnet or regtest.
    #[arg(long, default_value = "mainnet")]
    network: Network,
    /// Print path, public key and address as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
pub struct XpubArgs {
    /// eth, tron or btc (sol has no extended public key).
    #[arg(long)]
    chain: Chain,
    #[command(flatten)]
    seed: SeedArgs,
    /// Account (below 2^31).
    #[arg(long, default_value_t = 0)]
    account: u64,
    /// mainnet, testnet or regtest.
    #[arg(long, default_value = "mainnet")]
    network: Network,
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// eth, tron, btc or sol.
    #[arg(long)]
    chain: Chain,
    /// mainnet, testnet or regtest.
    #[arg(long, default_value = "mainnet")]
    network: Network,
    /// The address to check.
    address: String,
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Deposit wallets per chain.
    #[arg(long)]
    count: u64,
    /// Chains, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "eth,tron,btc,sol")]
    chains: Vec<Chain>,
    #[command(flatten)]
    seed: SeedArgs,
    /// mainnet, testnet or regtest.
    #[arg(long, default_value = "mainnet")]
    network: Network,
    /// Account of deposit wallets.
    #[arg(long, default_value_t = 0)]
    account: u32,
    /// Account of hot wallets (one per group).
    #[arg(long, default_value_t = 1)]
    hot_account: u32,
    /// Account of warm wallets (one per group).
    #[arg(long, default_value_t = 2)]
    warm_account: u32,
    /// Deposit wallets per hot/warm pair.
    #[arg(long, default_value_t = DEFAULT_GROUP_SIZE)]
    group_size: u32,
    /// Output directory; one file per chain, `<chain>-<network>.wallets`.
    #[arg(long, default_value = "wallets")]
    out: PathBuf,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
}

pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Derive(a) => derive(a),
        Command::Xpub(a) => xpub(a),
        Command::Validate(a) => validate(a),
        Command::Generate(a) => generate(a),
    }
}

fn read_seed(args: &SeedArgs) -> anyhow::Result<Seed> {
    let phrase = Zeroizing::new(
        std::fs::read_to_string(&args.mnemonic_file)
            .with_context(|| format!("reading mnemonic file {}", args.mnemonic_file.display()))?,
    );
    let passphrase = match &args.passphrase_file {
        None => Zeroizing::new(String::new()),
        Some(p) => {
            let mut s = Zeroizing::new(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading passphrase file {}", p.display()))?,
            );
            if s.ends_with('\n') {
                s.pop();
                if s.ends_with('\r') {
                    s.pop();
                }
            }
            s
        }
    };
    Seed::from_mnemonic(&phrase, &passphrase)
        .with_context(|| format!("mnemonic file {}", args.mnemonic_file.display()))
}

fn derive(a: DeriveArgs) -> anyhow::Result<()> {
    let index = check_index("index", a.index)?;
    let account = check_index("account", a.account)?;
    let seed = read_seed(&a.seed)?;
    let d = derive_address(&seed, a.chain, a.network, account, index)?;
    if a.json {
        let v = serde_json::json!({
            "chain": a.chain.name(),
            "network": a.network.name(),
            "path": d.path.to_string(),
            "public_key": hex_lower(&d.public_key),
            "address": d.address,
        });
        println!("{v}");
    } else {
        println!("{}", d.address);
    }
    Ok(())
}

fn hex_lower(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn xpub(a: XpubArgs) -> anyhow::Result<()> {
    if a.chain == Chain::Sol {
        bail!("sol has no extended public key: slip-0010 ed25519 derivation is hardened only, so solana addresses are derived where the seed lives (use `molly wallets derive --chain sol`)");
    }
    let account = check_index("account", a.account)?;
    let seed = read_seed(&a.seed)?;
    println!("{}", AccountXpub::from_seed(&seed, a.chain, a.network, account)?);
    Ok(())
}

fn validate(a: ValidateArgs) -> anyhow::Result<()> {
    address::validate(a.chain, a.network, &a.address)?;
    println!("valid {} {} address", a.chain, a.network);
    Ok(())
}

/// The chains in the order given, each once.
fn unique(chains: &[Chain]) -> Vec<Chain> {
    let mut out: Vec<Chain> = Vec::new();
    for &c in chains {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out
}

fn threads(requested: Option<usize>) -> usize {
    requested.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1)
}

/// Checks a few generated addresses against the one-at-a-time reference derivation.
fn spot_check(seed: &Seed, plan: &WalletPlan, deposits: &[address::AddressBuf]) -> anyhow::Result<()> {
    let n = deposits.len();
    for i in [0, n / 2, n.saturating_sub(1)] {
        let Some(got) = deposits.get(i) else { continue };
        let want = derive_address(seed, plan.chain, plan.network, plan.deposit_account, i as u32)?;
        if got.as_str() != want.address {
            bail!(
                "self-check failed: {} deposit {i} is {} in bulk but {} one at a time",
                plan.chain,
                got,
                want.address
            );
        }
    }
    Ok(())
}

fn generate(a: GenerateArgs) -> anyhow::Result<()> {
    let count = check_index("count", a.count).map_err(|_| {
        anyhow::anyhow!("count {} is too large: wallet indices must stay below 2^31", a.count)
    })?;
    let plans: Vec<WalletPlan> = unique(&a.chains)
        .iter()
        .map(|&chain| WalletPlan {
            chain,
            network: a.network,
            count,
            group_size: a.group_size,
            deposit_account: a.account,
            hot_account: a.hot_account,
            warm_account: a.warm_account,
        })
        .collect();
    for plan in &plans {
        plan.check()?;
    }
    let seed = read_seed(&a.seed)?;
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("creating output directory {}", a.out.display()))?;
    let threads = threads(a.threads);

    let total = u64::from(count) * plans.len() as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {msg} [{bar:40}] {human_pos}/{human_len} (elapsed {elapsed}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let done = AtomicU64::new(0);
    let finished = AtomicBool::new(false);
    let started = Instant::now();
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while !finished.load(Ordering::Relaxed) {
                bar.set_position(done.load(Ordering::Relaxed));
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let result = (|| -> anyhow::Result<Vec<(PathBuf, WalletPlan)>> {
            let mut written = Vec::new();
            for plan in &plans {
                bar.set_message(format!("{} derive", plan.chain));
                let set = generate::generate(&seed, plan, threads, &done)?;
                spot_check(&seed, plan, &set.deposits)?;
                bar.set_message(format!("{} write", plan.chain));
                let path = a.out.join(format!("{}-{}.wallets", plan.chain, plan.network));
                walletfile::write(&path, &set)?;
                written.push((path, *plan));
            }
            Ok(written)
        })();
        finished.store(true, Ordering::Relaxed);
        result
    });
    bar.finish_and_clear();
    let written = result?;
    for (path, plan) in &written {
        println!(
            "{}: {} deposit wallets, {} hot + {} warm (one pair per {}) -> {}",
            plan.chain,
            plan.count,
            plan.groups(),
            plan.groups(),
            plan.group_size,
            path.display()
        );
    }
    println!("generated {total} wallets on {threads} threads in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// The public BIP39 test mnemonic: benchmarks never touch a real seed.
const BENCH_MNEMONIC: &str =
    "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about";

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Addresses per chain.
    #[arg(long, default_value_t = 1_000_000)]
    count: u32,
    /// Chains, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "eth,tron,btc,sol")]
    chains: Vec<Chain>,
    /// Worker threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Write the results as JSON (`<chain>_seconds` keys) to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// `molly bench wallets`: time to derive and encode COUNT deposit addresses
/// per chain (in memory; file writing is not timed), from the public BIP39
/// test mnemonic.
pub fn bench(a: BenchArgs) -> anyhow::Result<()> {
    check_index("count", u64::from(a.count))?;
    let seed = Seed::from_mnemonic(BENCH_MNEMONIC, "")?;
    let threads = threads(a.threads);
    let mut report = serde_json::Map::new();
    report.insert("count".into(), a.count.into());
    report.insert("threads".into(), threads.into());
    report.insert("mnemonic".into(), "bip39 test mnemonic (abandon x11 about)".into());
    for chain in unique(&a.chains) {
        let plan = WalletPlan::new(chain, Network::Mainnet, a.count);
        let done = AtomicU64::new(0);
        let t = Instant::now();
        let keys = DepositKeys::from_seed(&seed, chain, Network::Mainnet, 0)?;
        let addrs = generate::derive_parallel(&keys, 0, a.count, threads, &done)?;
        let secs = t.elapsed().as_secs_f64();
        spot_check(&seed, &plan, &addrs)?;
        let rate = f64::from(a.count) / secs;
        println!("{chain}: {} addresses in {secs:.3} s ({rate:.0}/s, {threads} threads)", a.count);
        report.insert(format!("{chain}_seconds"), secs.into());
        report.insert(format!("{chain}_per_second"), rate.round().into());
    }
    if let Some(path) = &a.json {
        write_json(path, &serde_json::Value::Object(report))?;
    }
    Ok(())
}

fn write_json(path: &FsPath, v: &serde_json::Value) -> anyhow::Result<()> {
    std::fs::write(path, format!("{v:#}\n")).with_context(|| format!("writing {}", path.display()))
}
