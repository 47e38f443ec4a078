//! Limits and configuration. Every limit is explicit, has a documented
//! default, and is checked.

use crate::asset::AssetRegistry;

/// Default maximum events per batch: a 1 MiB message minus a 256-byte header,
/// in 128-byte records (the same figure TigerBeetle uses, so batches compare).
pub const BATCH_EVENTS_MAX_DEFAULT: u32 = 8190;
/// Size of one record (account, transfer, filter, balance) in bytes.
pub const RECORD_SIZE: usize = 128;
/// The message size the default batch limit is derived from.
pub const MESSAGE_SIZE_MAX: usize = 1 << 20;
/// The message header the batch limit leaves room for.
pub const MESSAGE_HEADER_SIZE: usize = 256;
const _: () =
    assert!(BATCH_EVENTS_MAX_DEFAULT as usize * RECORD_SIZE + MESSAGE_HEADER_SIZE == MESSAGE_SIZE_MAX);

/// Default maximum accounts one engine holds.
pub const ACCOUNTS_MAX_DEFAULT: u32 = 1 << 20;
/// Default maximum transfers one engine holds in memory.
pub const TRANSFERS_MAX_DEFAULT: u32 = 1 << 22;
/// Default maximum results of one query.
pub const QUERY_RESULTS_MAX_DEFAULT: u32 = 8190;
/// Slots are u32 and `u32::MAX` is never a slot.
pub const SLOTS_MAX: u32 = u32::MAX - 1;

/// The engine's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Most events one `create_accounts`/`create_transfers`/lookup batch may carry.
    pub batch_events_max: u32,
    /// Most accounts held; beyond it `accounts_limit_reached`.
    pub accounts_max: u32,
    /// Most transfers held; beyond it `transfers_limit_reached`.
    pub transfers_max: u32,
    /// Most results one `get_account_transfers`/`get_account_balances` returns.
    pub query_results_max: u32,
    /// The assets accounts may be opened in.
    pub assets: AssetRegistry,
    /// Timestamps this engine gives are `timestamp_offset` modulo
    /// `timestamp_stride` (default 1 and 0: every nanosecond). Engines that
    /// share a ledger — the shards — each take their own residue, so no two
    /// of them ever give the same timestamp and their histories merge into
    /// one order.
    pub timestamp_stride: u32,
    /// This engine's residue modulo `timestamp_stride`.
    pub timestamp_offset: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            batch_events_max: BATCH_EVENTS_MAX_DEFAULT,
            accounts_max: ACCOUNTS_MAX_DEFAULT,
            transfers_max: TRANSFERS_MAX_DEFAULT,
            query_results_max: QUERY_RESULTS_MAX_DEFAULT,
            assets: AssetRegistry::builtin(),
            timestamp_stride: 1,
            timestamp_offset: 0,
        }
    }
}

/// A configuration the engine cannot run with.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConfigError {
    /// A limit is zero.
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    /// A limit is above what the engine's u32 slots can address.
    #[error("{name} = {value} exceeds the maximum of {max}")]
    TooLarge {
        /// The setting.
        name: &'static str,
        /// Its value.
        value: u32,
        /// The maximum.
        max: u32,
    },
    /// `timestamp_offset` is not below `timestamp_stride`.
    #[error("timestamp_offset = {offset} must be below timestamp_stride = {stride}")]
    TimestampOffset {
        /// The offset.
        offset: u32,
        /// The stride.
        stride: u32,
    },
}

impl Config {
    /// Checks every limit.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let limits = [
            ("batch_events_max", self.batch_events_max),
            ("accounts_max", self.accounts_max),
            ("transfers_max", self.transfers_max),
            ("query_results_max", self.query_results_max),
        ];
        for (name, value) in limits {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
            if value > SLOTS_MAX {
                return Err(ConfigError::TooLarge { name, value, max: SLOTS_MAX });
            }
        }
        if self.timestamp_stride == 0 {
            return Err(ConfigError::Zero("timestamp_stride"));
        }
        if self.timestamp_offset >= self.timestamp_stride {
            return Err(ConfigError::TimestampOffset {
                offset: self.timestamp_offset,
                stride: self.timestamp_stride,
            });
        }
        Ok(())
    }

    /// The first timestamp after `after` this engine may give: the smallest
    /// `t > after` with `t mod timestamp_stride = timestamp_offset`.
    #[inline]
    pub fn timestamp_after(&self, after: u64) -> u64 {
        let next = after + 1;
        let stride = u64::from(self.timestamp_stride);
        if stride == 1 {
            return next;
        }
        // On the hot path (twice per transfer): a mask, not a division, for
        // the power-of-two shard counts machines have.
        let residue = if stride.is_power_of_two() { next & (stride - 1) } else { next % stride };
        let ahead = u64::from(self.timestamp_offset) + stride - residue;
        next + if ahead >= stride { ahead - stride } else { ahead }
    }
}
