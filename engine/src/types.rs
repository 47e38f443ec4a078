//! Fixed-size, little-endian records: the engine's state, its wire format and
//! its journal format are the same 128-byte layouts.
//!
//! Every record is `#[repr(C)]`, has no padding (proved by `bytemuck::Pod`
//! and the size asserts below) and can be cast to and from bytes without
//! copying. The layouts follow TigerBeetle's so that clients and tooling
//! written for that shape map one to one.

use bytemuck::{Pod, Zeroable};

// The records are cast to and from bytes as they are: the format is
// little-endian, so the engine only builds on little-endian targets.
#[cfg(not(target_endian = "little"))]
compile_error!("molly-engine records are little-endian; big-endian targets are not supported");

/// Generates a `u16` flag set with named bits, `contains`, `|` and a mask of
/// every defined bit (anything outside the mask is a reserved flag).
macro_rules! flags16 {
    ($(#[$meta:meta])* $name:ident { $($(#[$fmeta:meta])* $flag:ident = $bit:expr,)+ }) => {
        $(#[$meta])*
        #[repr(transparent)]
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
        pub struct $name(pub u16);

        impl $name {
            $($(#[$fmeta])* pub const $flag: Self = Self(1 << $bit);)+
            /// Every defined bit; the others are reserved and must be zero.
            pub const ALL: Self = Self(0 $(| (1 << $bit))+);
            /// No flag set.
            pub const NONE: Self = Self(0);

            /// True when every bit of `other` is set in `self`.
            #[inline(always)]
            pub const fn contains(self, other: Self) -> bool {
                self.0 & other.0 == other.0
            }

            /// True when any bit of `other` is set in `self`.
            #[inline(always)]
            pub const fn intersects(self, other: Self) -> bool {
                self.0 & other.0 != 0
            }

            /// True when a bit outside [`Self::ALL`] is set.
            #[inline(always)]
            pub const fn has_reserved(self) -> bool {
                self.0 & !Self::ALL.0 != 0
            }
        }

        impl core::ops::BitOr for $name {
            type Output = Self;
            #[inline(always)]
            fn bitor(self, rhs: Self) -> Self {
                Self(self.0 | rhs.0)
            }
        }

        impl core::ops::BitOrAssign for $name {
            #[inline(always)]
            fn bitor_assign(&mut self, rhs: Self) {
                self.0 |= rhs.0;
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                let mut first = true;
                write!(f, "{}(", stringify!($name))?;
                $(
                    if self.contains(Self::$flag) {
                        if !first { write!(f, " | ")?; }
                        write!(f, "{}", stringify!($flag))?;
                        first = false;
                    }
                )+
                if self.has_reserved() {
                    if !first { write!(f, " | ")?; }
                    write!(f, "reserved:{:#06x}", self.0 & !Self::ALL.0)?;
                }
                write!(f, ")")
            }
        }
    };
}

flags16! {
    /// Account flags.
    AccountFlags {
        /// Links this event to the next one in the batch: the chain applies
        /// all or nothing.
        LINKED = 0,
        /// `debits_pending + debits_posted <= credits_posted` always holds
        /// (a user's balance never goes negative).
        DEBITS_MUST_NOT_EXCEED_CREDITS = 1,
        /// `credits_pending + credits_posted <= debits_posted` always holds.
        CREDITS_MUST_NOT_EXCEED_DEBITS = 2,
        /// Keep the account's balance after every change, queryable with
        /// `get_account_balances`.
        HISTORY = 3,
        /// The account takes no new transfers (posting or voiding pending
        /// transfers still works).
        CLOSED = 4,
    }
}

flags16! {
    /// Transfer flags.
    TransferFlags {
        /// Links this event to the next one in the batch.
        LINKED = 0,
        /// Two-phase: reserve the amount (pending) until posted, voided or expired.
        PENDING = 1,
        /// Post (complete) the pending transfer `pending_id`, fully or partly.
        POST_PENDING = 2,
        /// Void (cancel) the pending transfer `pending_id`.
        VOID_PENDING = 3,
        /// Clamp the amount so the debit account's debits do not exceed its credits.
        BALANCING_DEBIT = 4,
        /// Clamp the amount so the credit account's credits do not exceed its debits.
        BALANCING_CREDIT = 5,
        /// Close the debit account (pending transfers only; voiding reopens it).
        CLOSING_DEBIT = 6,
        /// Close the credit account (pending transfers only; voiding reopens it).
        CLOSING_CREDIT = 7,
    }
}

/// An account: one user's (or system's) balance in one asset (ledger).
///
/// Balances are four u128 counters; the engine is the only writer of them and
/// of `timestamp`. Clients send them as zero.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug, Pod, Zeroable)]
pub struct Account {
    /// Client-chosen identifier, neither 0 nor `u128::MAX`.
    pub id: u128,
    /// Amounts reserved by pending transfers that debit this account.
    pub debits_pending: u128,
    /// Amounts posted as debits.
    pub debits_posted: u128,
    /// Amounts reserved by pending transfers that credit this account.
    pub credits_pending: u128,
    /// Amounts posted as credits.
    pub credits_posted: u128,
    /// Opaque client data (for example a user id).
    pub user_data_128: u128,
    /// Opaque client data.
    pub user_data_64: u64,
    /// Opaque client data.
    pub user_data_32: u32,
    /// Must be zero.
    pub reserved: u32,
    /// Asset code: the account's ledger. Transfers only move value between
    /// accounts of the same ledger.
    pub ledger: u32,
    /// Account kind (see [`AccountCode`] for Molly's own kinds).
    pub code: u16,
    /// See [`AccountFlags`].
    pub flags: AccountFlags,
    /// Set by the engine when the account is created (logical nanoseconds).
    pub timestamp: u64,
}

/// A transfer: an immutable double-entry movement of `amount` from the debit
/// account to the credit account of one ledger.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug, Pod, Zeroable)]
pub struct Transfer {
    /// Client-chosen identifier, neither 0 nor `u128::MAX`: the idempotency key.
    pub id: u128,
    /// The account debited.
    pub debit_account_id: u128,
    /// The account credited.
    pub credit_account_id: u128,
    /// Amount in the asset's base units (wei, sun, lamports, satoshi, ...).
    pub amount: u128,
    /// For post/void: the pending transfer this one completes.
    pub pending_id: u128,
    /// Opaque client data (for example an invoice or withdrawal id).
    pub user_data_128: u128,
    /// Opaque client data.
    pub user_data_64: u64,
    /// Opaque client data.
    pub user_data_32: u32,
    /// For pending transfers: seconds until the reservation expires; 0 = never.
    pub timeout: u32,
    /// Asset code; must equal both accounts' ledger.
    pub ledger: u32,
    /// Transfer kind (see [`TransferCode`] for Molly's own kinds).
    pub code: u16,
    /// See [`TransferFlags`].
    pub flags: TransferFlags,
    /// Set by the engine when the transfer is created (logical nanoseconds).
    pub timestamp: u64,
}

/// Flags of an [`AccountFilter`].
#[repr(transparent)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Debug, Pod, Zeroable)]
pub struct AccountFilterFlags(pub u32);

impl AccountFilterFlags {
    /// Include transfers where the account is debited.
    pub const DEBITS: Self = Self(1 << 0);
    /// Include transfers where the account is credited.
    pub const CREDITS: Self = Self(1 << 1);
    /// Newest first.
    pub const REVERSED: Self = Self(1 << 2);
    /// Every defined bit.
    pub const ALL: Self = Self(0b111);

    /// True when every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }
}

/// The query of `get_account_transfers` and `get_account_balances`.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Pod, Zeroable)]
pub struct AccountFilter {
    /// The account whose history is read.
    pub account_id: u128,
    /// Only transfers with this `user_data_128` (0 = any).
    pub user_data_128: u128,
    /// Only transfers with this `user_data_64` (0 = any).
    pub user_data_64: u64,
    /// Only transfers with this `user_data_32` (0 = any).
    pub user_data_32: u32,
    /// Only transfers with this code (0 = any).
    pub code: u16,
    /// Must be zero.
    pub reserved: [u8; 58],
    /// Inclusive lower bound on the timestamp (0 = none).
    pub timestamp_min: u64,
    /// Inclusive upper bound on the timestamp (0 = none).
    pub timestamp_max: u64,
    /// At most this many results (and never more than the configured maximum).
    pub limit: u32,
    /// See [`AccountFilterFlags`].
    pub flags: AccountFilterFlags,
}

impl Default for AccountFilter {
    fn default() -> Self {
        Self::zeroed()
    }
}

impl AccountFilter {
    /// A filter for both sides of `account_id`'s history, oldest first, up to `limit`.
    pub fn for_account(account_id: u128, limit: u32) -> Self {
        Self {
            account_id,
            limit,
            flags: AccountFilterFlags(AccountFilterFlags::DEBITS.0 | AccountFilterFlags::CREDITS.0),
            ..Self::zeroed()
        }
    }
}

/// One point of an account's balance history (accounts flagged `HISTORY`).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Pod, Zeroable)]
pub struct AccountBalance {
    /// `debits_pending` after the change.
    pub debits_pending: u128,
    /// `debits_posted` after the change.
    pub debits_posted: u128,
    /// `credits_pending` after the change.
    pub credits_pending: u128,
    /// `credits_posted` after the change.
    pub credits_posted: u128,
    /// The timestamp of the transfer (or expiry) that made the change.
    pub timestamp: u64,
    /// Must be zero.
    pub reserved: [u8; 56],
}

/// Molly's own account kinds (the `code` of an [`Account`]). The engine
/// accepts any non-zero code; these are the ones the gateway uses.
#[repr(u16)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AccountCode {
    /// A customer's balance.
    User = 1,
    /// The liability side of one deposit address.
    Deposit = 2,
    /// A hot wallet (signs routinely, small balance).
    Hot = 3,
    /// A warm wallet (quorum-signed).
    Warm = 4,
    /// Cold storage.
    Cold = 5,
    /// Fees earned.
    Fees = 6,
    /// Settlement and clearing between parts of the system.
    Clearing = 7,
    /// The operator's view of a chain (the other side of every deposit and withdrawal).
    Chain = 8,
}

/// Molly's own transfer kinds (the `code` of a [`Transfer`]).
#[repr(u16)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TransferCode {
    /// Money moved between two users or accounts of Molly.
    Internal = 1,
    /// A confirmed on-chain deposit credited.
    Deposit = 2,
    /// A withdrawal (reserved pending, posted when broadcast and final).
    Withdrawal = 3,
    /// A fee.
    Fee = 4,
    /// Sweeping a deposit address into its hot wallet.
    Sweep = 5,
    /// A referral reward.
    Reward = 6,
}

const _: () = assert!(core::mem::size_of::<Account>() == 128);
const _: () = assert!(core::mem::size_of::<Transfer>() == 128);
const _: () = assert!(core::mem::size_of::<AccountFilter>() == 128);
const _: () = assert!(core::mem::size_of::<AccountBalance>() == 128);
const _: () = assert!(core::mem::align_of::<Account>() == 16);
const _: () = assert!(core::mem::align_of::<Transfer>() == 16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_little_endian_bytes() {
        let t = Transfer {
            id: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
            debit_account_id: 7,
            credit_account_id: 8,
            amount: 1_000_000_000_000_000_000,
            ledger: 1,
            code: 2,
            flags: TransferFlags::PENDING | TransferFlags::LINKED,
            timeout: 60,
            ..Transfer::default()
        };
        let bytes = bytemuck::bytes_of(&t);
        assert_eq!(bytes.len(), 128);
        // id is little-endian at offset 0, flags at offset 118, timestamp at 120.
        assert_eq!(bytes[0], 0x10);
        assert_eq!(bytes[15], 0x01);
        assert_eq!(u16::from_le_bytes([bytes[118], bytes[119]]), 0b11);
        assert_eq!(u32::from_le_bytes(bytes[108..112].try_into().unwrap()), 60);
        let back: Transfer = bytemuck::pod_read_unaligned(bytes);
        assert_eq!(back, t);
    }

    #[test]
    fn reserved_flag_bits_are_detected() {
        assert!(!TransferFlags::ALL.has_reserved());
        assert!(TransferFlags(1 << 8).has_reserved());
        assert!(AccountFlags(1 << 5).has_reserved());
        assert_eq!(
            format!("{:?}", TransferFlags::PENDING | TransferFlags(1 << 12)),
            "TransferFlags(PENDING | reserved:0x1000)"
        );
    }
}
