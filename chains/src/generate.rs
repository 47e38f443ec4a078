//! Million-wallet generation: deposit addresses in parallel, plus one hot and
//! one warm wallet per group of deposits, so sweeping knows where each
//! deposit goes.
//!
//! Deposit `i` belongs to group `i / group_size`; group `g` sweeps to hot
//! wallet `g` and keeps its reserve in warm wallet `g`. Hot and warm wallets
//! are derived like deposits but under their own accounts (by default 1 and
//! 2, deposits using 0), so each signer can be given only its own account
//! key.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::address::AddressBuf;
use crate::batch::{DepositKeys, DeriveError};
use crate::chain::{Chain, Network};
use crate::path::{self, check_index, Path, PathError};
use crate::seed::Seed;

/// Default number of deposit wallets per hot/warm pair.
pub const DEFAULT_GROUP_SIZE: u32 = 10_000;

/// Indices handed to a worker at a time.
const CHUNK: usize = 4096;

/// The three kinds of wallet a plan holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// A user's deposit address.
    Deposit,
    /// Where a group's deposits are swept to (online signer).
    Hot,
    /// A group's reserve (offline or HSM signer).
    Warm,
}

impl Role {
    /// The lower-case name used in wallet files.
    pub fn name(self) -> &'static str {
        match self {
            Role::Deposit => "deposit",
            Role::Hot => "hot",
            Role::Warm => "warm",
        }
    }
}

/// Why a plan was rejected or generation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenerateError {
    /// Deriving a key failed.
    #[error(transparent)]
    Derive(#[from] DeriveError),
    /// A path parameter is out of range.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The plan itself is inconsistent.
    #[error("invalid wallet plan: {0}")]
    Plan(String),
}

/// What to generate for one chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalletPlan {
    /// The chain.
    pub chain: Chain,
    /// The network.
    pub network: Network,
    /// Number of deposit wallets (indices `0..count`).
    pub count: u32,
    /// Deposits per hot/warm pair.
    pub group_size: u32,
    /// Account of deposit wallets.
    pub deposit_account: u32,
    /// Account of hot wallets.
    pub hot_account: u32,
    /// Account of warm wallets.
    pub warm_account: u32,
}

impl WalletPlan {
    /// A plan with the default group size and accounts 0 (deposit), 1 (hot), 2 (warm).
    pub fn new(chain: Chain, network: Network, count: u32) -> WalletPlan {
        WalletPlan {
            chain,
            network,
            count,
            group_size: DEFAULT_GROUP_SIZE,
            deposit_account: 0,
            hot_account: 1,
            warm_account: 2,
        }
    }

    /// Number of groups, and so of hot and of warm wallets.
    pub fn groups(&self) -> u32 {
        if self.group_size == 0 {
            return 0;
        }
        self.count.div_ceil(self.group_size)
    }

    /// Account of a role.
    pub fn account(&self, role: Role) -> u32 {
        match role {
            Role::Deposit => self.deposit_account,
            Role::Hot => self.hot_account,
            Role::Warm => self.warm_account,
        }
    }

    /// Path of wallet `index` of `role`.
    pub fn path(&self, role: Role, index: u32) -> Result<Path, PathError> {
        path::deposit_path(self.chain, self.network, self.account(role), index)
    }

    /// Checks the plan: a non-zero group size, indices and accounts below
    /// 2^31, and three distinct accounts (a hot key must never be a deposit key).
    pub fn check(&self) -> Result<(), GenerateError> {
        if self.group_size == 0 {
            return Err(GenerateError::Plan("group size must be at least 1".into()));
        }
        if self.count > 0 {
            check_index("index", u64::from(self.count) - 1)?;
        }
        for role in [Role::Deposit, Role::Hot, Role::Warm] {
            check_index("account", u64::from(self.account(role)))?;
        }
        let (d, h, w) = (self.deposit_account, self.hot_account, self.warm_account);
        if d == h || d == w || h == w {
            return Err(GenerateError::Plan(format!(
                "deposit, hot and warm accounts must differ (got {d}, {h}, {w})"
            )));
        }
        Ok(())
    }
}

/// Generated addresses of one chain: deposits, and a hot and a warm wallet per group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalletSet {
    /// What was generated.
    pub plan: WalletPlan,
    /// Deposit addresses, by index.
    pub deposits: Vec<AddressBuf>,
    /// Hot wallet addresses, by group.
    pub hot: Vec<AddressBuf>,
    /// Warm wallet addresses, by group.
    pub warm: Vec<AddressBuf>,
}

impl WalletSet {
    /// Group of deposit `index`.
    pub fn group_of(&self, index: u32) -> u32 {
        index / self.plan.group_size.max(1)
    }

    /// The hot wallet deposit `index` is swept to.
    pub fn hot_for(&self, index: u32) -> Option<&AddressBuf> {
        self.hot.get(self.group_of(index) as usize)
    }

    /// The warm wallet of deposit `index`'s group.
    pub fn warm_for(&self, index: u32) -> Option<&AddressBuf> {
        self.warm.get(self.group_of(index) as usize)
    }
}

/// Derives addresses `start..start + count` of `keys` on `threads` threads,
/// adding each finished address to `done`.
pub fn derive_parallel(
    keys: &DepositKeys,
    start: u32,
    count: u32,
    threads: usize,
    done: &AtomicU64,
) -> Result<Vec<AddressBuf>, DeriveError> {
    if count > 0 {
        check_index("index", u64::from(start) + u64::from(count) - 1)?;
    }
    let mut out = vec![AddressBuf::default(); count as usize];
    let work = Mutex::new(out.chunks_mut(CHUNK).enumerate());
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<DeriveError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                if failed.load(Ordering::Relaxed) {
                    return;
                }
                let next = match work.lock() {
                    Ok(mut it) => it.next(),
                    Err(_) => return,
                };
                let Some((n, chunk)) = next else { return };
                let first = start + (n * CHUNK) as u32;
                if let Err(e) = keys.encode_range(first, chunk) {
                    failed.store(true, Ordering::Relaxed);
                    if let Ok(mut slot) = first_error.lock() {
                        slot.get_or_insert(e);
                    }
                    return;
                }
                done.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            });
        }
    });
    if let Some(e) = first_error.into_inner().ok().flatten() {
        return Err(e);
    }
    Ok(out)
}

/// Generates every wallet of `plan` from the seed.
pub fn generate(
    seed: &Seed,
    plan: &WalletPlan,
    threads: usize,
    done: &AtomicU64,
) -> Result<WalletSet, GenerateError> {
    plan.check()?;
    let role_keys = |role| DepositKeys::from_seed(seed, plan.chain, plan.network, plan.account(role));
    let deposits = derive_parallel(&role_keys(Role::Deposit)?, 0, plan.count, threads, done)?;
    let ignore = AtomicU64::new(0);
    let hot = derive_parallel(&role_keys(Role::Hot)?, 0, plan.groups(), threads, &ignore)?;
    let warm = derive_parallel(&role_keys(Role::Warm)?, 0, plan.groups(), threads, &ignore)?;
    Ok(WalletSet { plan: *plan, deposits, hot, warm })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_checks_and_grouping() {
        let mut plan = WalletPlan::new(Chain::Eth, Network::Mainnet, 25_001);
        assert_eq!(plan.groups(), 3);
        plan.check().unwrap();
        plan.hot_account = 0;
        assert!(plan.check().unwrap_err().to_string().contains("must differ"));
        plan.hot_account = 1;
        plan.group_size = 0;
        assert!(plan.check().is_err());
        plan.group_size = 10;
        plan.warm_account = 1 << 31;
        assert!(plan.check().is_err());
        let exact = WalletPlan::new(Chain::Eth, Network::Mainnet, 20_000);
        assert_eq!(exact.groups(), 2);
        assert_eq!(WalletPlan::new(Chain::Eth, Network::Mainnet, 0).groups(), 0);
    }
}
