//! Result codes: one per event, in the documented order the engine checks them.
//!
//! A rejection is a value, not an error: `Result` is kept for operating
//! errors (a batch over the limit, a bad query). Codes are `#[repr(u32)]`
//! and stable: they travel over the wire and into the journal. New codes are
//! only ever appended.

/// Generates a `#[repr(u32)]` result enum with `name()` (the snake_case
/// name clients see), `from_u32`, and a list of every code.
macro_rules! result_codes {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:expr => $text:literal,)+ }) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// Every code, in numeric order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The code's stable snake_case name.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)+
                }
            }

            /// The code for a wire value, if it is one.
            pub const fn from_u32(value: u32) -> Option<Self> {
                match value {
                    $($value => Some(Self::$variant),)+
                    _ => None,
                }
            }

            /// True for `ok`.
            #[inline(always)]
            pub fn is_ok(self) -> bool {
                self as u32 == 0
            }
        }

        impl core::fmt::Display for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

result_codes! {
    /// The result of one event of `create_accounts`, checked in this order.
    CreateAccountResult {
        /// Created.
        Ok = 0 => "ok",
        /// Another event of its linked chain failed; nothing of the chain applied.
        LinkedEventFailed = 1 => "linked_event_failed",
        /// The batch's last event has `linked` set: the chain never closes.
        LinkedEventChainOpen = 2 => "linked_event_chain_open",
        /// Clients must send `timestamp = 0`; the engine sets it.
        TimestampMustBeZero = 3 => "timestamp_must_be_zero",
        /// `reserved` must be zero.
        ReservedField = 4 => "reserved_field",
        /// A flag bit outside the defined set is set.
        ReservedFlag = 5 => "reserved_flag",
        /// `id` is 0.
        IdMustNotBeZero = 6 => "id_must_not_be_zero",
        /// `id` is `u128::MAX`.
        IdMustNotBeIntMax = 7 => "id_must_not_be_int_max",
        /// An account with this id exists with other flags.
        ExistsWithDifferentFlags = 8 => "exists_with_different_flags",
        /// An account with this id exists with another `user_data_128`.
        ExistsWithDifferentUserData128 = 9 => "exists_with_different_user_data_128",
        /// An account with this id exists with another `user_data_64`.
        ExistsWithDifferentUserData64 = 10 => "exists_with_different_user_data_64",
        /// An account with this id exists with another `user_data_32`.
        ExistsWithDifferentUserData32 = 11 => "exists_with_different_user_data_32",
        /// An account with this id exists with another ledger.
        ExistsWithDifferentLedger = 12 => "exists_with_different_ledger",
        /// An account with this id exists with another code.
        ExistsWithDifferentCode = 13 => "exists_with_different_code",
        /// The same account exists already: nothing changed (a safe retry).
        Exists = 14 => "exists",
        /// Both `debits_must_not_exceed_credits` and `credits_must_not_exceed_debits`.
        FlagsAreMutuallyExclusive = 15 => "flags_are_mutually_exclusive",
        /// Balances are the engine's; clients send zero.
        DebitsPendingMustBeZero = 16 => "debits_pending_must_be_zero",
        /// Balances are the engine's; clients send zero.
        DebitsPostedMustBeZero = 17 => "debits_posted_must_be_zero",
        /// Balances are the engine's; clients send zero.
        CreditsPendingMustBeZero = 18 => "credits_pending_must_be_zero",
        /// Balances are the engine's; clients send zero.
        CreditsPostedMustBeZero = 19 => "credits_posted_must_be_zero",
        /// `ledger` is 0.
        LedgerMustNotBeZero = 20 => "ledger_must_not_be_zero",
        /// `code` is 0.
        CodeMustNotBeZero = 21 => "code_must_not_be_zero",
        /// `ledger` is not an asset in the registry.
        LedgerNotRegistered = 22 => "ledger_not_registered",
        /// The engine holds `accounts_max` accounts already.
        AccountsLimitReached = 23 => "accounts_limit_reached",
        /// `id` lies in the range the shards reserve for their own accounts
        /// (`id >> 96 == 0xFFFF_FFFF`, see `molly_shards::cross`). Returned by
        /// the shard layer, checked after `id_must_not_be_int_max`.
        IdMustNotBeReserved = 24 => "id_must_not_be_reserved",
        /// Assigned by the shard router, not the engine: the linked chain's
        /// accounts live on different shards; nothing of the chain applied.
        LinkedEventChainCrossShard = 25 => "linked_event_chain_cross_shard",
    }
}

result_codes! {
    /// The result of one event of `create_transfers`, checked in this order.
    CreateTransferResult {
        /// Created.
        Ok = 0 => "ok",
        /// Another event of its linked chain failed; nothing of the chain applied.
        LinkedEventFailed = 1 => "linked_event_failed",
        /// The batch's last event has `linked` set: the chain never closes.
        LinkedEventChainOpen = 2 => "linked_event_chain_open",
        /// Clients must send `timestamp = 0`; the engine sets it.
        TimestampMustBeZero = 3 => "timestamp_must_be_zero",
        /// A flag bit outside the defined set is set.
        ReservedFlag = 4 => "reserved_flag",
        /// `id` is 0.
        IdMustNotBeZero = 5 => "id_must_not_be_zero",
        /// `id` is `u128::MAX`.
        IdMustNotBeIntMax = 6 => "id_must_not_be_int_max",
        /// A transfer with this id exists with other flags.
        ExistsWithDifferentFlags = 7 => "exists_with_different_flags",
        /// ... with another `pending_id`.
        ExistsWithDifferentPendingId = 8 => "exists_with_different_pending_id",
        /// ... with another `timeout`.
        ExistsWithDifferentTimeout = 9 => "exists_with_different_timeout",
        /// ... with another debit account.
        ExistsWithDifferentDebitAccountId = 10 => "exists_with_different_debit_account_id",
        /// ... with another credit account.
        ExistsWithDifferentCreditAccountId = 11 => "exists_with_different_credit_account_id",
        /// ... with another amount.
        ExistsWithDifferentAmount = 12 => "exists_with_different_amount",
        /// ... with another `user_data_128`.
        ExistsWithDifferentUserData128 = 13 => "exists_with_different_user_data_128",
        /// ... with another `user_data_64`.
        ExistsWithDifferentUserData64 = 14 => "exists_with_different_user_data_64",
        /// ... with another `user_data_32`.
        ExistsWithDifferentUserData32 = 15 => "exists_with_different_user_data_32",
        /// ... with another ledger.
        ExistsWithDifferentLedger = 16 => "exists_with_different_ledger",
        /// ... with another code.
        ExistsWithDifferentCode = 17 => "exists_with_different_code",
        /// The same transfer exists already: nothing changed (a safe retry).
        Exists = 18 => "exists",
        /// More than one of pending/post/void, or balancing or closing with post/void.
        FlagsAreMutuallyExclusive = 19 => "flags_are_mutually_exclusive",
        /// `debit_account_id` is 0.
        DebitAccountIdMustNotBeZero = 20 => "debit_account_id_must_not_be_zero",
        /// `debit_account_id` is `u128::MAX`.
        DebitAccountIdMustNotBeIntMax = 21 => "debit_account_id_must_not_be_int_max",
        /// `credit_account_id` is 0.
        CreditAccountIdMustNotBeZero = 22 => "credit_account_id_must_not_be_zero",
        /// `credit_account_id` is `u128::MAX`.
        CreditAccountIdMustNotBeIntMax = 23 => "credit_account_id_must_not_be_int_max",
        /// Debit and credit account are the same.
        AccountsMustBeDifferent = 24 => "accounts_must_be_different",
        /// `pending_id` is only for post/void.
        PendingIdMustBeZero = 25 => "pending_id_must_be_zero",
        /// Post/void needs `pending_id`.
        PendingIdMustNotBeZero = 26 => "pending_id_must_not_be_zero",
        /// `pending_id` is `u128::MAX`.
        PendingIdMustNotBeIntMax = 27 => "pending_id_must_not_be_int_max",
        /// `pending_id` equals the transfer's own id.
        PendingIdMustBeDifferent = 28 => "pending_id_must_be_different",
        /// `timeout` is only for pending transfers.
        TimeoutReservedForPendingTransfer = 29 => "timeout_reserved_for_pending_transfer",
        /// `closing_debit`/`closing_credit` need `pending`.
        ClosingTransferMustBePending = 30 => "closing_transfer_must_be_pending",
        /// `amount` is 0 (balancing transfers and post excepted).
        AmountMustNotBeZero = 31 => "amount_must_not_be_zero",
        /// `ledger` is 0.
        LedgerMustNotBeZero = 32 => "ledger_must_not_be_zero",
        /// `code` is 0.
        CodeMustNotBeZero = 33 => "code_must_not_be_zero",
        /// No account has `debit_account_id`.
        DebitAccountNotFound = 34 => "debit_account_not_found",
        /// No account has `credit_account_id`.
        CreditAccountNotFound = 35 => "credit_account_not_found",
        /// The two accounts are on different ledgers (a ledger mismatch).
        AccountsMustHaveTheSameLedger = 36 => "accounts_must_have_the_same_ledger",
        /// The transfer's ledger differs from its accounts' (a ledger mismatch).
        TransferMustHaveTheSameLedgerAsAccounts = 37 => "transfer_must_have_the_same_ledger_as_accounts",
        /// No transfer has `pending_id`.
        PendingTransferNotFound = 38 => "pending_transfer_not_found",
        /// The transfer `pending_id` is not a pending transfer.
        PendingTransferNotPending = 39 => "pending_transfer_not_pending",
        /// Post/void names a debit account other than the pending transfer's.
        PendingTransferHasDifferentDebitAccountId = 40 => "pending_transfer_has_different_debit_account_id",
        /// Post/void names a credit account other than the pending transfer's.
        PendingTransferHasDifferentCreditAccountId = 41 => "pending_transfer_has_different_credit_account_id",
        /// Post/void names a ledger other than the pending transfer's.
        PendingTransferHasDifferentLedger = 42 => "pending_transfer_has_different_ledger",
        /// Post/void names a code other than the pending transfer's.
        PendingTransferHasDifferentCode = 43 => "pending_transfer_has_different_code",
        /// Post amount is larger than the pending amount.
        AmountExceedsPending = 44 => "amount_exceeds_pending",
        /// Void names an amount other than the pending amount.
        PendingTransferHasDifferentAmount = 45 => "pending_transfer_has_different_amount",
        /// The pending transfer was posted already.
        PendingTransferAlreadyPosted = 46 => "pending_transfer_already_posted",
        /// The pending transfer was voided already.
        PendingTransferAlreadyVoided = 47 => "pending_transfer_already_voided",
        /// The pending transfer expired.
        PendingTransferExpired = 48 => "pending_transfer_expired",
        /// `debits_pending` would pass `u128::MAX`.
        OverflowsDebitsPending = 49 => "overflows_debits_pending",
        /// `credits_pending` would pass `u128::MAX`.
        OverflowsCreditsPending = 50 => "overflows_credits_pending",
        /// `debits_posted` would pass `u128::MAX`.
        OverflowsDebitsPosted = 51 => "overflows_debits_posted",
        /// `credits_posted` would pass `u128::MAX`.
        OverflowsCreditsPosted = 52 => "overflows_credits_posted",
        /// `debits_pending + debits_posted` would pass `u128::MAX`.
        OverflowsDebits = 53 => "overflows_debits",
        /// `credits_pending + credits_posted` would pass `u128::MAX`.
        OverflowsCredits = 54 => "overflows_credits",
        /// `timestamp + timeout` would pass `u64::MAX` nanoseconds.
        OverflowsTimeout = 55 => "overflows_timeout",
        /// The debit account has `debits_must_not_exceed_credits` and too little credit.
        ExceedsCredits = 56 => "exceeds_credits",
        /// The credit account has `credits_must_not_exceed_debits` and too little debit.
        ExceedsDebits = 57 => "exceeds_debits",
        /// The debit account is closed.
        DebitAccountAlreadyClosed = 58 => "debit_account_already_closed",
        /// The credit account is closed.
        CreditAccountAlreadyClosed = 59 => "credit_account_already_closed",
        /// The engine holds `transfers_max` transfers already.
        TransfersLimitReached = 60 => "transfers_limit_reached",
        /// `id` lies in the range the shards reserve for their own transfers
        /// (`id >> 96 == 0xFFFF_FFFF`). Returned by the shard layer, checked
        /// after `id_must_not_be_int_max`.
        IdMustNotBeReserved = 61 => "id_must_not_be_reserved",
        /// `debit_account_id` is a shard's own (reserved) account. Shard layer.
        DebitAccountIdMustNotBeReserved = 62 => "debit_account_id_must_not_be_reserved",
        /// `credit_account_id` is a shard's own (reserved) account. Shard layer.
        CreditAccountIdMustNotBeReserved = 63 => "credit_account_id_must_not_be_reserved",
        /// A closed linked chain names accounts on more than one shard: every
        /// event of the chain gets this code and nothing of it applies. Shard layer.
        LinkedEventChainCrossShard = 64 => "linked_event_chain_cross_shard",
        /// A cross-shard transfer with a flag the two-shard protocol does not
        /// support yet (`pending`, `balancing_credit`, `closing_debit`,
        /// `closing_credit`). Shard layer.
        CrossShardFlagsNotSupported = 65 => "cross_shard_flags_not_supported",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_dense_stable_and_named_uniquely() {
        for (i, code) in CreateTransferResult::ALL.iter().enumerate() {
            assert_eq!(*code as u32, i as u32);
            assert_eq!(CreateTransferResult::from_u32(i as u32), Some(*code));
        }
        for (i, code) in CreateAccountResult::ALL.iter().enumerate() {
            assert_eq!(*code as u32, i as u32);
        }
        let mut names: Vec<_> = CreateTransferResult::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), CreateTransferResult::ALL.len());
        assert_eq!(CreateTransferResult::from_u32(66), None);
        assert_eq!(CreateTransferResult::ExceedsCredits.to_string(), "exceeds_credits");
    }
}
