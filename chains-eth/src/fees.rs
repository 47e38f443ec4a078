//! EIP-1559 fees from `eth_feeHistory` percentiles.
//!
//! The priority fee (tip) is the median, over the last `blocks` blocks, of
//! the policy's reward percentile (economy 10th, normal 50th, urgent 90th),
//! floored at `min_priority_fee`. The max fee is twice the next block's base
//! fee plus the tip (a tx stays includable through six full blocks of +12.5%
//! base-fee growth), capped at `max_fee_cap`.

use alloy::eips::BlockNumberOrTag;
use alloy::primitives::U256;
use alloy::providers::{Provider, RootProvider};
use alloy::rpc::types::FeeHistory;
use molly_chains::gateway::FeePolicy;

use crate::error::EthError;

/// The percentiles asked of `eth_feeHistory`, in [`FeePolicy`] order
/// (economy, normal, urgent). Percentiles, not money.
pub const PERCENTILES: [f64; 3] = [10.0, 50.0, 90.0];

/// Fee configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeeConfig {
    /// Blocks of history to look at.
    pub blocks: u64,
    /// Lowest tip offered, wei per gas.
    pub min_priority_fee: u128,
    /// Highest max fee ever offered, wei per gas (also caps `FeePolicy::Fixed`
    /// and replacements).
    pub max_fee_cap: u128,
}

impl Default for FeeConfig {
    fn default() -> Self {
        FeeConfig { blocks: 20, min_priority_fee: 1_000_000_000, max_fee_cap: 500_000_000_000 }
    }
}

/// A chosen fee: (max fee per gas, max priority fee per gas), wei.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fees {
    /// Max fee per gas.
    pub max_fee_per_gas: u128,
    /// Max priority fee per gas.
    pub max_priority_fee_per_gas: u128,
}

/// Fees for `policy` from a fee history.
pub fn from_history(history: &FeeHistory, policy: FeePolicy, config: &FeeConfig) -> Result<Fees, EthError> {
    let next_base = *history
        .base_fee_per_gas
        .last()
        .ok_or_else(|| EthError::bad("fee history", "no base fee (is the chain pre-London?)"))?;
    let column = match policy {
        FeePolicy::Economy => 0,
        FeePolicy::Normal => 1,
        FeePolicy::Urgent => 2,
        FeePolicy::Fixed { per_unit } => {
            let max_fee = per_unit.min(config.max_fee_cap);
            return Ok(Fees {
                max_fee_per_gas: max_fee,
                max_priority_fee_per_gas: max_fee.saturating_sub(next_base).min(max_fee),
            });
        }
    };
    let mut tips: Vec<u128> = history
        .reward
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|row| {
            row.get(column).copied().ok_or_else(|| EthError::bad("fee history", "reward row too short"))
        })
        .collect::<Result<_, _>>()?;
    tips.sort_unstable();
    let median = tips.get(tips.len() / 2).copied().unwrap_or(0);
    let tip = median.max(config.min_priority_fee);
    let max_fee = next_base
        .checked_mul(2)
        .and_then(|b| b.checked_add(tip))
        .ok_or_else(|| EthError::bad("fee history", "base fee overflows"))?
        .min(config.max_fee_cap);
    Ok(Fees { max_fee_per_gas: max_fee, max_priority_fee_per_gas: tip.min(max_fee) })
}

/// Asks the node and picks fees for `policy`.
pub async fn estimate(p: &RootProvider, policy: FeePolicy, config: &FeeConfig) -> Result<Fees, EthError> {
    let history = p
        .get_fee_history(config.blocks, BlockNumberOrTag::Latest, &PERCENTILES)
        .await
        .map_err(|e| EthError::node("eth_feeHistory", e))?;
    from_history(&history, policy, config)
}

/// The base fee of the block after the head (the last entry of a one-block
/// fee history), wei per gas.
pub async fn next_base_fee(p: &RootProvider) -> Result<u128, EthError> {
    let history = p
        .get_fee_history(1, BlockNumberOrTag::Latest, &[])
        .await
        .map_err(|e| EthError::node("eth_feeHistory", e))?;
    history
        .base_fee_per_gas
        .last()
        .copied()
        .ok_or_else(|| EthError::bad("fee history", "no base fee (is the chain pre-London?)"))
}

/// The smallest increase, percent, that geth's and anvil's pools accept for
/// a replacement of the same nonce: both fees must rise by at least this.
pub const NODE_REPLACEMENT_BUMP_PERCENT: u128 = 10;

/// Whether `new` may replace `old` in a node's pool: max fee and tip each
/// at least [`NODE_REPLACEMENT_BUMP_PERCENT`] higher.
pub fn is_valid_replacement(old: Fees, new: Fees) -> bool {
    let enough = |old: u128, new: u128| {
        U256::from(new) * U256::from(100u8)
            >= U256::from(old) * U256::from(100 + NODE_REPLACEMENT_BUMP_PERCENT)
    };
    enough(old.max_fee_per_gas, new.max_fee_per_gas)
        && enough(old.max_priority_fee_per_gas, new.max_priority_fee_per_gas)
}

/// A replacement's fees: each at least `bump_percent` above the old one
/// (nodes require +10%), and at least the current estimate.
pub fn bumped(old: Fees, now: Fees, bump_percent: u128, config: &FeeConfig) -> Fees {
    let bump = |v: u128| v.saturating_mul(100 + bump_percent).div_ceil(100);
    let max_fee = bump(old.max_fee_per_gas).max(now.max_fee_per_gas).min(config.max_fee_cap);
    let tip = bump(old.max_priority_fee_per_gas).max(now.max_priority_fee_per_gas).min(max_fee);
    Fees { max_fee_per_gas: max_fee, max_priority_fee_per_gas: tip }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(base: Vec<u128>, rewards: Vec<[u128; 3]>) -> FeeHistory {
        FeeHistory {
            base_fee_per_gas: base,
            reward: Some(rewards.into_iter().map(|r| r.to_vec()).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn percentiles_pick_the_tip_and_the_next_base_fee_sets_the_cap() {
        let h = history(vec![10, 20, 30], vec![[1, 5, 9], [2, 6, 50], [3, 7, 11]]);
        let c = FeeConfig { blocks: 3, min_priority_fee: 2, max_fee_cap: 1_000 };
        assert_eq!(
            from_history(&h, FeePolicy::Normal, &c).unwrap(),
            Fees { max_fee_per_gas: 66, max_priority_fee_per_gas: 6 }
        );
        assert_eq!(from_history(&h, FeePolicy::Economy, &c).unwrap().max_priority_fee_per_gas, 2);
        assert_eq!(from_history(&h, FeePolicy::Urgent, &c).unwrap().max_priority_fee_per_gas, 11);
        let capped = FeeConfig { max_fee_cap: 40, ..c };
        assert_eq!(from_history(&h, FeePolicy::Urgent, &capped).unwrap().max_fee_per_gas, 40);
        assert!(from_history(&history(vec![], vec![]), FeePolicy::Normal, &c).is_err());
    }

    #[test]
    fn replacements_bump_both_fees_by_at_least_the_percentage() {
        let c = FeeConfig::default();
        let old = Fees { max_fee_per_gas: 100, max_priority_fee_per_gas: 10 };
        let b = bumped(old, Fees { max_fee_per_gas: 50, max_priority_fee_per_gas: 1 }, 13, &c);
        assert_eq!(b, Fees { max_fee_per_gas: 113, max_priority_fee_per_gas: 12 });
        assert!(is_valid_replacement(old, b));
        // The cap can leave less than the nodes' +10 %: not a valid replacement.
        let capped = bumped(old, old, 13, &FeeConfig { max_fee_cap: 105, ..c });
        assert_eq!(capped.max_fee_per_gas, 105);
        assert!(!is_valid_replacement(old, capped));
        // Exactly +10 % on both is accepted; one unit less on either is not.
        let ten = Fees { max_fee_per_gas: 110, max_priority_fee_per_gas: 11 };
        assert!(is_valid_replacement(old, ten));
        assert!(!is_valid_replacement(old, Fees { max_priority_fee_per_gas: 10, ..ten }));
        assert!(!is_valid_replacement(old, Fees { max_fee_per_gas: 109, ..ten }));
    }
}
