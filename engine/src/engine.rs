//! The state machine: batches of commands in, one result per event out.
//!
//! Every operation runs `validate → apply` per event: all checks happen
//! before the first write, so a rejected event changes nothing, and a linked
//! chain that fails part-way is undone from an undo log. Time is logical: it
//! only moves through [`Engine::tick`], and every created object gets a
//! strictly increasing timestamp derived from it.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use crate::config::{Config, ConfigError};
use crate::index::IdIndex;
use crate::lists::SlotLists;
use crate::result::{CreateAccountResult, CreateTransferResult};
use crate::store::{Block, ColdBlock, TransferStore, BLOCK_TRANSFERS};
use crate::types::{
    Account, AccountBalance, AccountFilter, AccountFilterFlags, AccountFlags, Transfer, TransferFlags,
};

/// Nanoseconds per second: pending `timeout`s are in seconds, time in ns.
const NS_PER_S: u64 = 1_000_000_000;

/// The furthest logical time [`Engine::tick`] moves to: later inputs are
/// clamped here, which leaves room for 2^40 more timestamps after it (one
/// per event), so timestamps never overflow.
pub const CLOCK_NS_MAX: u64 = u64::MAX - (1 << 40);

/// How many events ahead a batch prefetches index slots (far), and then,
/// with those slots in cache, the records they point to (near).
const PREFETCH_DISTANCE_FAR: usize = 16;
const PREFETCH_DISTANCE_NEAR: usize = 6;
const _: () = assert!(PREFETCH_DISTANCE_NEAR < PREFETCH_DISTANCE_FAR);

/// Where a transfer stands. Pending transfers start in `Pending` and end in
/// `Posted`, `Voided` or `Expired`; every other transfer is `Final` at once.
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum TransferState {
    /// An ordinary, post or void transfer: done when created.
    Final = 0,
    /// A pending transfer still holding its reservation.
    Pending = 1,
    /// A pending transfer that was posted.
    Posted = 2,
    /// A pending transfer that was voided.
    Voided = 3,
    /// A pending transfer whose timeout passed.
    Expired = 4,
}

/// An operating error for a whole batch: nothing of it was applied.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BatchError {
    /// More events than `batch_events_max`.
    #[error("batch of {events} events exceeds the maximum of {max}")]
    TooManyEvents {
        /// Events sent.
        events: usize,
        /// The configured maximum.
        max: u32,
    },
}

/// An invalid query: nothing was read.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum QueryError {
    /// `account_id` is 0 or `u128::MAX`.
    #[error("account_id must be neither 0 nor u128::MAX")]
    AccountIdInvalid,
    /// `reserved` bytes are not zero.
    #[error("reserved bytes of the filter must be zero")]
    ReservedNotZero,
    /// Flag bits outside debits/credits/reversed, or neither debits nor credits.
    #[error("filter flags {0:#x} must set debits and/or credits and nothing undefined")]
    FlagsInvalid(u32),
    /// `timestamp_min > timestamp_max`.
    #[error("timestamp_min {min} is after timestamp_max {max}")]
    TimestampRangeInvalid {
        /// The lower bound.
        min: u64,
        /// The upper bound.
        max: u64,
    },
    /// `limit` is 0.
    #[error("limit must be at least 1")]
    LimitZero,
}

/// A broken invariant: a bug in the engine, never the client's doing.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvariantViolation {
    /// Posted debits and credits of a ledger differ.
    #[error("ledger {ledger}: debits_posted {debits} != credits_posted {credits}")]
    PostedUnbalanced {
        /// The ledger.
        ledger: u32,
        /// Sum of debits_posted.
        debits: u128,
        /// Sum of credits_posted.
        credits: u128,
    },
    /// Pending debits and credits of a ledger differ.
    #[error("ledger {ledger}: debits_pending {debits} != credits_pending {credits}")]
    PendingUnbalanced {
        /// The ledger.
        ledger: u32,
        /// Sum of debits_pending.
        debits: u128,
        /// Sum of credits_pending.
        credits: u128,
    },
    /// The pending transfers still open do not add up to the accounts' pending balances.
    #[error("ledger {ledger}: open pending transfers sum to {transfers}, accounts hold {accounts} pending")]
    PendingMismatch {
        /// The ledger.
        ledger: u32,
        /// Sum of open pending transfers.
        transfers: u128,
        /// Sum of debits_pending.
        accounts: u128,
    },
    /// An account's balance crossed its flag's limit.
    #[error("account {id}: balance crosses the limit of its flags")]
    LimitCrossed {
        /// The account.
        id: u128,
    },
    /// Timestamps do not strictly increase in creation order.
    #[error("{kind} timestamps do not strictly increase at slot {slot}")]
    TimestampOrder {
        /// Accounts or transfers.
        kind: &'static str,
        /// Where.
        slot: usize,
    },
    /// An index does not agree with the records.
    #[error("{0} index disagrees with its records")]
    Index(&'static str),
}

/// The state that defines an engine (see [`Engine::export`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EngineState {
    /// Accounts, in creation order.
    pub accounts: Vec<Account>,
    /// Transfers, in creation order.
    pub transfers: Vec<Transfer>,
    /// One [`TransferState`] (as u8) per transfer.
    pub transfer_states: Vec<u8>,
    /// Balance history of `history` accounts: (account slot, points).
    pub balances: Vec<(u32, Vec<AccountBalance>)>,
    /// Logical time.
    pub clock_ns: u64,
    /// The last timestamp given.
    pub timestamp_last: u64,
}

/// Why an exported state cannot become an engine.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ImportError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// More accounts or transfers than the configuration holds.
    #[error("the state holds more accounts or transfers than the configured limits")]
    OverLimits,
    /// The records contradict each other.
    #[error("malformed state: {0}")]
    Malformed(&'static str),
    /// The records are consistent but break an invariant.
    #[error("state breaks an invariant: {0}")]
    Invariant(InvariantViolation),
}

/// Per-ledger totals, as [`Engine::ledger_totals`] reports them.
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
pub struct LedgerTotals {
    /// Accounts in the ledger.
    pub accounts: u64,
    /// Σ debits_posted (mod 2^128).
    pub debits_posted: u128,
    /// Σ credits_posted (mod 2^128).
    pub credits_posted: u128,
    /// Σ debits_pending (mod 2^128).
    pub debits_pending: u128,
    /// Σ credits_pending (mod 2^128).
    pub credits_pending: u128,
}

/// One step to undo if the linked chain being applied fails.
#[derive(Clone, Copy, Debug)]
enum Undo {
    /// Restore an account record (balances and flags) as it was.
    Account { slot: u32, before: Account },
    /// Remove the account created at `slot` (the last one).
    AccountCreated { slot: u32 },
    /// Remove the transfer created at `slot` (the last one) and its history.
    TransferCreated { slot: u32, debit: u32, credit: u32 },
    /// Restore a pending transfer's state.
    State { slot: u32, before: TransferState },
}

/// Result codes that carry the linked-chain outcomes, so one batch loop
/// serves accounts and transfers.
trait EventResult: Copy {
    const LINKED_EVENT_FAILED: Self;
    const LINKED_EVENT_CHAIN_OPEN: Self;
    fn ok(self) -> bool;
}

impl EventResult for CreateAccountResult {
    const LINKED_EVENT_FAILED: Self = Self::LinkedEventFailed;
    const LINKED_EVENT_CHAIN_OPEN: Self = Self::LinkedEventChainOpen;
    fn ok(self) -> bool {
        self.is_ok()
    }
}

impl EventResult for CreateTransferResult {
    const LINKED_EVENT_FAILED: Self = Self::LinkedEventFailed;
    const LINKED_EVENT_CHAIN_OPEN: Self = Self::LinkedEventChainOpen;
    fn ok(self) -> bool {
        self.is_ok()
    }
}

/// The ledger state machine. See the crate documentation.
pub struct Engine {
    config: Config,
    accounts: Vec<Account>,
    account_index: IdIndex,
    /// Per account slot: the slots of its transfers, oldest first.
    account_transfers: SlotLists,
    /// Per account slot: its balance after each change (`HISTORY` accounts only).
    account_balances: Vec<Vec<AccountBalance>>,
    transfers: TransferStore,
    transfer_index: IdIndex,
    transfer_states: Vec<TransferState>,
    /// Pending transfers with a timeout, by expiry time; stale entries are skipped.
    expiries: BinaryHeap<Reverse<(u64, u32)>>,
    /// Logical time in nanoseconds, advanced only by `tick`.
    clock_ns: u64,
    /// The last timestamp given to an event; every next one is larger.
    timestamp_last: u64,
    /// Undo log of the linked chain being applied, if any.
    undo: Vec<Undo>,
    chain_active: bool,
    /// `timestamp_last` when the active chain began, restored if it fails.
    chain_timestamp_last: u64,
}

impl core::fmt::Debug for Engine {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Engine")
            .field("accounts", &self.accounts.len())
            .field("transfers", &self.transfers.len())
            .field("clock_ns", &self.clock_ns)
            .field("timestamp_last", &self.timestamp_last)
            .finish()
    }
}

impl Engine {
    /// An empty engine with `config`'s limits; the indexes and record stores
    /// are sized here, once.
    pub fn new(config: Config) -> Result<Self, ConfigError> {
        config.validate()?;
        let accounts_max = config.accounts_max as usize;
        let transfers_max = config.transfers_max as usize;
        Ok(Self {
            accounts: Vec::with_capacity(accounts_max),
            account_index: IdIndex::with_entries_max(accounts_max),
            // Every transfer is listed under both of its accounts.
            account_transfers: SlotLists::new(accounts_max, transfers_max * 2),
            account_balances: Vec::with_capacity(accounts_max),
            transfers: TransferStore::new(transfers_max),
            transfer_index: IdIndex::with_entries_max(transfers_max),
            transfer_states: Vec::with_capacity(transfers_max),
            expiries: BinaryHeap::new(),
            clock_ns: 0,
            timestamp_last: 0,
            undo: Vec::new(),
            chain_active: false,
            chain_timestamp_last: 0,
            config,
        })
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Logical time (ns), as last advanced by [`Engine::tick`].
    pub fn clock_ns(&self) -> u64 {
        self.clock_ns
    }

    /// The largest timestamp given so far.
    pub fn timestamp_last(&self) -> u64 {
        self.timestamp_last
    }

    /// Every account, in creation order.
    pub fn accounts(&self) -> &[Account] {
        &self.accounts
    }

    /// Every transfer, in creation order (older ones may be read through
    /// cold blocks: see [`TransferStore`]).
    pub fn transfers(&self) -> &TransferStore {
        &self.transfers
    }

    /// The state of transfer `id`, if it exists.
    pub fn transfer_state(&self, id: u128) -> Option<TransferState> {
        if id == 0 {
            return None;
        }
        self.transfer_slot(id).map(|slot| self.transfer_states[slot as usize])
    }

    /// The slot of account `id`, if it exists.
    #[inline(always)]
    fn account_slot(&self, id: u128) -> Option<u32> {
        self.account_index.get(id, |slot| self.accounts[slot as usize].id)
    }

    /// The slot of transfer `id`, if it exists.
    #[inline(always)]
    fn transfer_slot(&self, id: u128) -> Option<u32> {
        self.transfer_index.get(id, |slot| self.transfers.get(slot).id)
    }

    fn next_timestamp(&mut self) -> u64 {
        let timestamp = self.config.timestamp_after(self.clock_ns.max(self.timestamp_last));
        assert!(timestamp > self.timestamp_last);
        self.timestamp_last = timestamp;
        timestamp
    }

    fn check_batch(&self, events: usize) -> Result<(), BatchError> {
        if events > self.config.batch_events_max as usize {
            return Err(BatchError::TooManyEvents { events, max: self.config.batch_events_max });
        }
        Ok(())
    }

    // ------------------------------------------------------------------
    // Batches and linked chains.

    /// Runs one batch: applies events in order, keeps linked chains all or
    /// nothing, and writes exactly one result per event into `results`.
    fn execute<E, R: EventResult>(
        &mut self,
        events: &[E],
        results: &mut Vec<R>,
        is_linked: fn(&E) -> bool,
        prefetch_far: fn(&Self, &E),
        prefetch_near: fn(&Self, &E),
        apply: fn(&mut Self, &E) -> R,
    ) {
        assert!(!self.chain_active);
        assert!(self.undo.is_empty());
        results.clear();
        results.reserve(events.len());

        // Events from `open_from` on belong to a chain the batch never closes.
        let mut open_from = events.len();
        while open_from > 0 && is_linked(&events[open_from - 1]) {
            open_from -= 1;
        }

        for event in events.iter().take(PREFETCH_DISTANCE_FAR.min(open_from)) {
            prefetch_far(self, event);
        }
        let mut chain_start: Option<usize> = None;
        let mut chain_failed = false;
        for (i, event) in events.iter().enumerate() {
            if i >= open_from {
                results.push(R::LINKED_EVENT_CHAIN_OPEN);
                continue;
            }
            if i + PREFETCH_DISTANCE_FAR < open_from {
                prefetch_far(self, &events[i + PREFETCH_DISTANCE_FAR]);
            }
            if i + PREFETCH_DISTANCE_NEAR < open_from {
                prefetch_near(self, &events[i + PREFETCH_DISTANCE_NEAR]);
            }
            let linked = is_linked(event);
            if linked && chain_start.is_none() {
                chain_start = Some(i);
                self.chain_active = true;
                self.chain_timestamp_last = self.timestamp_last;
            }
            let result = if chain_failed { R::LINKED_EVENT_FAILED } else { apply(self, event) };
            results.push(result);
            if let Some(start) = chain_start {
                if !chain_failed && !result.ok() {
                    self.rollback();
                    for earlier in &mut results[start..i] {
                        *earlier = R::LINKED_EVENT_FAILED;
                    }
                    chain_failed = true;
                }
                if !linked {
                    // The chain's last event: commit what it did.
                    self.undo.clear();
                    self.chain_active = false;
                    chain_start = None;
                    chain_failed = false;
                }
            }
        }
        assert!(!self.chain_active);
        assert!(self.undo.is_empty());
        assert_eq!(results.len(), events.len());
    }

    fn rollback(&mut self) {
        self.timestamp_last = self.chain_timestamp_last;
        while let Some(step) = self.undo.pop() {
            match step {
                Undo::Account { slot, before } => self.accounts[slot as usize] = before,
                Undo::AccountCreated { slot } => {
                    assert_eq!(slot as usize, self.accounts.len() - 1);
                    let id = self.accounts[slot as usize].id;
                    // The index reads ids from the records: remove before popping.
                    let accounts = &self.accounts;
                    self.account_index.remove(id, |s| accounts[s as usize].id);
                    self.accounts.pop();
                    self.account_transfers.pop_list();
                    self.account_balances.pop();
                }
                Undo::TransferCreated { slot, debit, credit } => {
                    assert_eq!(slot as usize, self.transfers.len() - 1);
                    let transfer = *self.transfers.get(slot);
                    let transfers = &self.transfers;
                    self.transfer_index.remove(transfer.id, |s| transfers.get(s).id);
                    self.transfers.pop();
                    self.transfer_states.pop();
                    // Pushed debit then credit: pop in reverse.
                    for account in [credit, debit] {
                        let popped = self.account_transfers.pop(account);
                        assert_eq!(popped, Some(slot));
                        let balances = &mut self.account_balances[account as usize];
                        if balances.last().is_some_and(|b| b.timestamp == transfer.timestamp) {
                            balances.pop();
                        }
                    }
                }
                Undo::State { slot, before } => self.transfer_states[slot as usize] = before,
            }
        }
    }

    // ------------------------------------------------------------------
    // Accounts.

    /// Creates accounts. Writes one result per event into `results` (cleared
    /// first). Fails only when the batch is over the limit, and then applies
    /// nothing.
    pub fn create_accounts(
        &mut self,
        accounts: &[Account],
        results: &mut Vec<CreateAccountResult>,
    ) -> Result<(), BatchError> {
        self.check_batch(accounts.len())?;
        self.execute(
            accounts,
            results,
            |a| a.flags.contains(AccountFlags::LINKED),
            |engine, a| {
                if a.id != 0 {
                    engine.account_index.prefetch(a.id);
                }
            },
            |_, _| {},
            Self::create_account,
        );
        Ok(())
    }

    fn create_account(&mut self, a: &Account) -> CreateAccountResult {
        use CreateAccountResult as R;
        if a.timestamp != 0 {
            return R::TimestampMustBeZero;
        }
        if a.reserved != 0 {
            return R::ReservedField;
        }
        if a.flags.has_reserved() {
            return R::ReservedFlag;
        }
        if a.id == 0 {
            return R::IdMustNotBeZero;
        }
        if a.id == u128::MAX {
            return R::IdMustNotBeIntMax;
        }
        if let Some(slot) = self.account_slot(a.id) {
            return account_exists(a, &self.accounts[slot as usize]);
        }
        if a.flags.contains(
            AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
        ) {
            return R::FlagsAreMutuallyExclusive;
        }
        if a.debits_pending != 0 {
            return R::DebitsPendingMustBeZero;
        }
        if a.debits_posted != 0 {
            return R::DebitsPostedMustBeZero;
        }
        if a.credits_pending != 0 {
            return R::CreditsPendingMustBeZero;
        }
        if a.credits_posted != 0 {
            return R::CreditsPostedMustBeZero;
        }
        if a.ledger == 0 {
            return R::LedgerMustNotBeZero;
        }
        if a.code == 0 {
            return R::CodeMustNotBeZero;
        }
        if !self.config.assets.contains(a.ledger) {
            return R::LedgerNotRegistered;
        }
        if self.accounts.len() >= self.config.accounts_max as usize {
            return R::AccountsLimitReached;
        }

        let slot = self.accounts.len() as u32;
        let record = Account { timestamp: self.next_timestamp(), ..*a };
        self.accounts.push(record);
        self.account_index.insert_new(record.id, slot);
        self.account_transfers.push_list();
        self.account_balances.push(Vec::new());
        if self.chain_active {
            self.undo.push(Undo::AccountCreated { slot });
        }
        R::Ok
    }

    // ------------------------------------------------------------------
    // Transfers.

    /// Creates transfers (plain, pending, post, void, balancing, closing).
    /// Writes one result per event into `results` (cleared first). Fails
    /// only when the batch is over the limit, and then applies nothing.
    pub fn create_transfers(
        &mut self,
        transfers: &[Transfer],
        results: &mut Vec<CreateTransferResult>,
    ) -> Result<(), BatchError> {
        self.check_batch(transfers.len())?;
        self.execute(
            transfers,
            results,
            |t| t.flags.contains(TransferFlags::LINKED),
            Self::prefetch_transfer_far,
            Self::prefetch_transfer_near,
            Self::create_transfer,
        );
        Ok(())
    }

    /// Far ahead: the index slots of the transfer id (and the pending
    /// transfer it completes) and of both accounts.
    #[inline(always)]
    fn prefetch_transfer_far(&self, t: &Transfer) {
        for id in [t.id, t.pending_id] {
            if id != 0 {
                self.transfer_index.prefetch(id);
            }
        }
        for id in [t.debit_account_id, t.credit_account_id] {
            if id != 0 {
                self.account_index.prefetch(id);
            }
        }
    }

    /// Near: with the index slots in cache, the account records and the
    /// chunks their transfer lists append to, and the pending transfer's
    /// record and state. The slot is the index's candidate (its fingerprint
    /// matches), not a confirmed lookup: confirming would read the very record
    /// this prefetches, and wait for it.
    #[inline(always)]
    fn prefetch_transfer_near(&self, t: &Transfer) {
        for id in [t.debit_account_id, t.credit_account_id] {
            if id != 0 {
                if let Some(slot) = self.account_index.candidate(id) {
                    if let Some(account) = self.accounts.get(slot as usize) {
                        crate::prefault::prefetch(account);
                        self.account_transfers.prefetch_head(slot);
                    }
                }
            }
        }
        if t.pending_id != 0 {
            if let Some(slot) = self.transfer_index.candidate(t.pending_id) {
                if let Some(state) = self.transfer_states.get(slot as usize) {
                    crate::prefault::prefetch(self.transfers.get(slot));
                    crate::prefault::prefetch(state);
                }
            }
        }
    }

    fn create_transfer(&mut self, t: &Transfer) -> CreateTransferResult {
        use CreateTransferResult as R;
        if t.timestamp != 0 {
            return R::TimestampMustBeZero;
        }
        if t.flags.has_reserved() {
            return R::ReservedFlag;
        }
        if t.id == 0 {
            return R::IdMustNotBeZero;
        }
        if t.id == u128::MAX {
            return R::IdMustNotBeIntMax;
        }
        if let Some(slot) = self.transfer_slot(t.id) {
            return transfer_exists(t, self.transfers.get(slot));
        }

        let phase = TransferFlags::PENDING | TransferFlags::POST_PENDING | TransferFlags::VOID_PENDING;
        if (t.flags.0 & phase.0).count_ones() > 1 {
            return R::FlagsAreMutuallyExclusive;
        }
        let post_or_void = t.flags.intersects(TransferFlags::POST_PENDING | TransferFlags::VOID_PENDING);
        let balancing = TransferFlags::BALANCING_DEBIT | TransferFlags::BALANCING_CREDIT;
        let closing = TransferFlags::CLOSING_DEBIT | TransferFlags::CLOSING_CREDIT;
        if post_or_void && t.flags.intersects(balancing | closing) {
            return R::FlagsAreMutuallyExclusive;
        }
        if post_or_void {
            return self.post_or_void_pending_transfer(t);
        }

        if t.debit_account_id == 0 {
            return R::DebitAccountIdMustNotBeZero;
        }
        if t.debit_account_id == u128::MAX {
            return R::DebitAccountIdMustNotBeIntMax;
        }
        if t.credit_account_id == 0 {
            return R::CreditAccountIdMustNotBeZero;
        }
        if t.credit_account_id == u128::MAX {
            return R::CreditAccountIdMustNotBeIntMax;
        }
        if t.debit_account_id == t.credit_account_id {
            return R::AccountsMustBeDifferent;
        }
        if t.pending_id != 0 {
            return R::PendingIdMustBeZero;
        }
        let pending = t.flags.contains(TransferFlags::PENDING);
        if !pending && t.timeout != 0 {
            return R::TimeoutReservedForPendingTransfer;
        }
        if !pending && t.flags.intersects(closing) {
            return R::ClosingTransferMustBePending;
        }
        if t.amount == 0 && !t.flags.intersects(balancing) {
            return R::AmountMustNotBeZero;
        }
        if t.ledger == 0 {
            return R::LedgerMustNotBeZero;
        }
        if t.code == 0 {
            return R::CodeMustNotBeZero;
        }
        let Some(dr_slot) = self.account_slot(t.debit_account_id) else {
            return R::DebitAccountNotFound;
        };
        let Some(cr_slot) = self.account_slot(t.credit_account_id) else {
            return R::CreditAccountNotFound;
        };
        let dr = &self.accounts[dr_slot as usize];
        let cr = &self.accounts[cr_slot as usize];
        if dr.ledger != cr.ledger {
            return R::AccountsMustHaveTheSameLedger;
        }
        if t.ledger != dr.ledger {
            return R::TransferMustHaveTheSameLedgerAsAccounts;
        }
        if dr.flags.contains(AccountFlags::CLOSED) {
            return R::DebitAccountAlreadyClosed;
        }
        if cr.flags.contains(AccountFlags::CLOSED) {
            return R::CreditAccountAlreadyClosed;
        }

        let mut amount = t.amount;
        if t.flags.contains(TransferFlags::BALANCING_DEBIT) {
            let debits = dr.debits_pending.saturating_add(dr.debits_posted);
            amount = amount.min(dr.credits_posted.saturating_sub(debits));
        }
        if t.flags.contains(TransferFlags::BALANCING_CREDIT) {
            let credits = cr.credits_pending.saturating_add(cr.credits_posted);
            amount = amount.min(cr.debits_posted.saturating_sub(credits));
        }

        if pending {
            if dr.debits_pending.checked_add(amount).is_none() {
                return R::OverflowsDebitsPending;
            }
            if cr.credits_pending.checked_add(amount).is_none() {
                return R::OverflowsCreditsPending;
            }
        } else {
            if dr.debits_posted.checked_add(amount).is_none() {
                return R::OverflowsDebitsPosted;
            }
            if cr.credits_posted.checked_add(amount).is_none() {
                return R::OverflowsCreditsPosted;
            }
        }
        let Some(dr_debits) =
            dr.debits_pending.checked_add(dr.debits_posted).and_then(|d| d.checked_add(amount))
        else {
            return R::OverflowsDebits;
        };
        let Some(cr_credits) =
            cr.credits_pending.checked_add(cr.credits_posted).and_then(|c| c.checked_add(amount))
        else {
            return R::OverflowsCredits;
        };
        // The timestamp this transfer will get if it applies.
        let timestamp = self.config.timestamp_after(self.clock_ns.max(self.timestamp_last));
        if pending && t.timeout != 0 && timestamp.checked_add(u64::from(t.timeout) * NS_PER_S).is_none() {
            return R::OverflowsTimeout;
        }
        if dr.flags.contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS) && dr_debits > dr.credits_posted {
            return R::ExceedsCredits;
        }
        if cr.flags.contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS) && cr_credits > cr.debits_posted {
            return R::ExceedsDebits;
        }
        if self.transfers.len() >= self.config.transfers_max as usize {
            return R::TransfersLimitReached;
        }

        // Every check passed: apply.
        self.save_accounts(dr_slot, cr_slot);
        let timestamp_applied = self.next_timestamp();
        assert_eq!(timestamp_applied, timestamp);
        let (dr, cr) = self.account_pair_mut(dr_slot, cr_slot);
        if pending {
            dr.debits_pending += amount;
            cr.credits_pending += amount;
            if t.flags.contains(TransferFlags::CLOSING_DEBIT) {
                dr.flags |= AccountFlags::CLOSED;
            }
            if t.flags.contains(TransferFlags::CLOSING_CREDIT) {
                cr.flags |= AccountFlags::CLOSED;
            }
        } else {
            dr.debits_posted += amount;
            cr.credits_posted += amount;
        }
        assert_within_limits(dr);
        assert_within_limits(cr);

        let record = Transfer { amount, timestamp, ..*t };
        let state = if pending { TransferState::Pending } else { TransferState::Final };
        let slot = self.insert_transfer(record, state, dr_slot, cr_slot);
        if pending && t.timeout != 0 {
            let expires_at = timestamp + u64::from(t.timeout) * NS_PER_S;
            self.expiries.push(Reverse((expires_at, slot)));
        }
        R::Ok
    }

    fn post_or_void_pending_transfer(&mut self, t: &Transfer) -> CreateTransferResult {
        use CreateTransferResult as R;
        let post = t.flags.contains(TransferFlags::POST_PENDING);
        if t.pending_id == 0 {
            return R::PendingIdMustNotBeZero;
        }
        if t.pending_id == u128::MAX {
            return R::PendingIdMustNotBeIntMax;
        }
        if t.pending_id == t.id {
            return R::PendingIdMustBeDifferent;
        }
        if t.timeout != 0 {
            return R::TimeoutReservedForPendingTransfer;
        }
        let Some(p_slot) = self.transfer_slot(t.pending_id) else {
            return R::PendingTransferNotFound;
        };
        let p = *self.transfers.get(p_slot);
        if !p.flags.contains(TransferFlags::PENDING) {
            return R::PendingTransferNotPending;
        }
        if t.debit_account_id != 0 && t.debit_account_id != p.debit_account_id {
            return R::PendingTransferHasDifferentDebitAccountId;
        }
        if t.credit_account_id != 0 && t.credit_account_id != p.credit_account_id {
            return R::PendingTransferHasDifferentCreditAccountId;
        }
        if t.ledger != 0 && t.ledger != p.ledger {
            return R::PendingTransferHasDifferentLedger;
        }
        if t.code != 0 && t.code != p.code {
            return R::PendingTransferHasDifferentCode;
        }
        let amount = if post {
            // 0 posts the full pending amount; less posts part and releases the rest.
            let amount = if t.amount == 0 { p.amount } else { t.amount };
            if amount > p.amount {
                return R::AmountExceedsPending;
            }
            amount
        } else {
            if t.amount != 0 && t.amount != p.amount {
                return R::PendingTransferHasDifferentAmount;
            }
            p.amount
        };
        match self.transfer_states[p_slot as usize] {
            TransferState::Pending => {}
            TransferState::Posted => return R::PendingTransferAlreadyPosted,
            TransferState::Voided => return R::PendingTransferAlreadyVoided,
            TransferState::Expired => return R::PendingTransferExpired,
            TransferState::Final => unreachable!("a pending transfer is never final"),
        }
        let dr_slot = self.account_slot(p.debit_account_id).expect("pending debit account");
        let cr_slot = self.account_slot(p.credit_account_id).expect("pending credit account");
        let dr = &self.accounts[dr_slot as usize];
        let cr = &self.accounts[cr_slot as usize];
        assert!(dr.debits_pending >= p.amount);
        assert!(cr.credits_pending >= p.amount);
        if post {
            if dr.debits_posted.checked_add(amount).is_none() {
                return R::OverflowsDebitsPosted;
            }
            if cr.credits_posted.checked_add(amount).is_none() {
                return R::OverflowsCreditsPosted;
            }
        }
        if self.transfers.len() >= self.config.transfers_max as usize {
            return R::TransfersLimitReached;
        }

        // Every check passed: apply.
        self.save_accounts(dr_slot, cr_slot);
        let timestamp = self.next_timestamp();
        let (dr, cr) = self.account_pair_mut(dr_slot, cr_slot);
        dr.debits_pending -= p.amount;
        cr.credits_pending -= p.amount;
        if post {
            dr.debits_posted += amount;
            cr.credits_posted += amount;
        } else {
            reopen_if_closing(&p, dr, cr);
        }
        assert_within_limits(dr);
        assert_within_limits(cr);

        if self.chain_active {
            self.undo.push(Undo::State { slot: p_slot, before: TransferState::Pending });
        }
        self.transfer_states[p_slot as usize] =
            if post { TransferState::Posted } else { TransferState::Voided };
        let record = Transfer {
            id: t.id,
            debit_account_id: p.debit_account_id,
            credit_account_id: p.credit_account_id,
            amount,
            pending_id: t.pending_id,
            user_data_128: if t.user_data_128 == 0 { p.user_data_128 } else { t.user_data_128 },
            user_data_64: if t.user_data_64 == 0 { p.user_data_64 } else { t.user_data_64 },
            user_data_32: if t.user_data_32 == 0 { p.user_data_32 } else { t.user_data_32 },
            timeout: 0,
            ledger: p.ledger,
            code: p.code,
            flags: t.flags,
            timestamp,
        };
        self.insert_transfer(record, TransferState::Final, dr_slot, cr_slot);
        R::Ok
    }

    /// Saves both accounts for the undo log when inside a linked chain.
    #[inline(always)]
    fn save_accounts(&mut self, dr_slot: u32, cr_slot: u32) {
        if self.chain_active {
            for slot in [dr_slot, cr_slot] {
                self.undo.push(Undo::Account { slot, before: self.accounts[slot as usize] });
            }
        }
    }

    #[inline(always)]
    fn account_pair_mut(&mut self, a: u32, b: u32) -> (&mut Account, &mut Account) {
        assert_ne!(a, b);
        let (a, b) = (a as usize, b as usize);
        if a < b {
            let (low, high) = self.accounts.split_at_mut(b);
            (&mut low[a], &mut high[0])
        } else {
            let (low, high) = self.accounts.split_at_mut(a);
            (&mut high[0], &mut low[b])
        }
    }

    /// Stores a new transfer record and indexes it; returns its slot.
    #[inline(always)]
    fn insert_transfer(&mut self, record: Transfer, state: TransferState, dr_slot: u32, cr_slot: u32) -> u32 {
        let slot = self.transfers.len() as u32;
        self.transfers.push(record);
        self.transfer_states.push(state);
        self.transfer_index.insert_new(record.id, slot);
        self.account_transfers.push(dr_slot, slot);
        self.account_transfers.push(cr_slot, slot);
        self.record_balances(dr_slot, cr_slot, record.timestamp);
        if self.chain_active {
            self.undo.push(Undo::TransferCreated { slot, debit: dr_slot, credit: cr_slot });
        }
        slot
    }

    #[inline(always)]
    fn record_balances(&mut self, dr_slot: u32, cr_slot: u32, timestamp: u64) {
        for slot in [dr_slot, cr_slot] {
            let account = &self.accounts[slot as usize];
            if account.flags.contains(AccountFlags::HISTORY) {
                let balance = AccountBalance {
                    debits_pending: account.debits_pending,
                    debits_posted: account.debits_posted,
                    credits_pending: account.credits_pending,
                    credits_posted: account.credits_posted,
                    timestamp,
                    reserved: [0; 56],
                };
                self.account_balances[slot as usize].push(balance);
            }
        }
    }

    // ------------------------------------------------------------------
    // Time.

    /// Advances logical time to `now_ns` (never backwards, never past
    /// [`CLOCK_NS_MAX`]) and expires every
    /// pending transfer whose timeout has passed, releasing its reservation.
    /// Appends the ids of the expired transfers to `expired`.
    pub fn tick(&mut self, now_ns: u64, expired: &mut Vec<u128>) {
        assert!(!self.chain_active);
        self.clock_ns = self.clock_ns.max(now_ns.min(CLOCK_NS_MAX));
        while let Some(&Reverse((expires_at, slot))) = self.expiries.peek() {
            if expires_at > self.clock_ns {
                break;
            }
            self.expiries.pop();
            // Entries of transfers since posted or voided (or undone) are
            // stale. An undone transfer's slot may hold a later transfer:
            // it expires here only if it has a timeout that ends exactly
            // now (then this is its own expiry time); one without a timeout
            // never expires (a failed chain's entry once expired a pending
            // transfer without timeout that took its slot at that very
            // nanosecond: found by `molly sim --net --seed 168`).
            let live = (slot as usize) < self.transfers.len()
                && self.transfer_states[slot as usize] == TransferState::Pending
                && {
                    let p = self.transfers.get(slot);
                    p.timeout != 0 && p.timestamp + u64::from(p.timeout) * NS_PER_S == expires_at
                };
            if live {
                self.expire(slot);
                expired.push(self.transfers.get(slot).id);
            }
        }
    }

    /// The earliest time a pending transfer may expire, if any is waiting
    /// (it may belong to one since posted or voided: a tick then does nothing).
    pub fn next_expiry_ns(&self) -> Option<u64> {
        self.expiries.peek().map(|Reverse((at, _))| *at)
    }

    fn expire(&mut self, slot: u32) {
        let p = *self.transfers.get(slot);
        let dr_slot = self.account_slot(p.debit_account_id).expect("pending debit account");
        let cr_slot = self.account_slot(p.credit_account_id).expect("pending credit account");
        let timestamp = self.next_timestamp();
        let (dr, cr) = self.account_pair_mut(dr_slot, cr_slot);
        dr.debits_pending = dr.debits_pending.checked_sub(p.amount).expect("reserved amount");
        cr.credits_pending = cr.credits_pending.checked_sub(p.amount).expect("reserved amount");
        reopen_if_closing(&p, dr, cr);
        self.transfer_states[slot as usize] = TransferState::Expired;
        self.record_balances(dr_slot, cr_slot, timestamp);
    }

    // ------------------------------------------------------------------
    // Queries.

    /// Appends the accounts found among `ids` to `out`, in `ids` order.
    pub fn lookup_accounts(&self, ids: &[u128], out: &mut Vec<Account>) -> Result<(), BatchError> {
        self.check_batch(ids.len())?;
        out.extend(
            ids.iter()
                .filter(|&&id| id != 0)
                .filter_map(|&id| self.account_slot(id))
                .map(|slot| self.accounts[slot as usize]),
        );
        Ok(())
    }

    /// Appends the transfers found among `ids` to `out`, in `ids` order.
    pub fn lookup_transfers(&self, ids: &[u128], out: &mut Vec<Transfer>) -> Result<(), BatchError> {
        self.check_batch(ids.len())?;
        out.extend(
            ids.iter()
                .filter(|&&id| id != 0)
                .filter_map(|&id| self.transfer_slot(id))
                .map(|slot| *self.transfers.get(slot)),
        );
        Ok(())
    }

    fn check_filter(&self, filter: &AccountFilter) -> Result<Option<u32>, QueryError> {
        if filter.account_id == 0 || filter.account_id == u128::MAX {
            return Err(QueryError::AccountIdInvalid);
        }
        if filter.reserved.iter().any(|&b| b != 0) {
            return Err(QueryError::ReservedNotZero);
        }
        let flags = filter.flags;
        let sides = AccountFilterFlags::DEBITS.0 | AccountFilterFlags::CREDITS.0;
        if flags.0 & !AccountFilterFlags::ALL.0 != 0 || flags.0 & sides == 0 {
            return Err(QueryError::FlagsInvalid(flags.0));
        }
        if filter.timestamp_max != 0 && filter.timestamp_min > filter.timestamp_max {
            return Err(QueryError::TimestampRangeInvalid {
                min: filter.timestamp_min,
                max: filter.timestamp_max,
            });
        }
        if filter.limit == 0 {
            return Err(QueryError::LimitZero);
        }
        Ok(self.account_slot(filter.account_id))
    }

    /// Appends to `out` the account's transfers matching `filter`, oldest
    /// first (newest first with `REVERSED`), at most `min(limit,
    /// query_results_max)` of them. An unknown account has no transfers.
    pub fn get_account_transfers(
        &self,
        filter: &AccountFilter,
        out: &mut Vec<Transfer>,
    ) -> Result<(), QueryError> {
        let Some(slot) = self.check_filter(filter)? else {
            return Ok(());
        };
        let limit = filter.limit.min(self.config.query_results_max) as usize;
        let lists = &self.account_transfers;
        let timestamp = |s: u32| self.transfers.get(s).timestamp;
        let max = if filter.timestamp_max == 0 { u64::MAX } else { filter.timestamp_max };
        let start = lists.partition_point(slot, |s| timestamp(s) < filter.timestamp_min);
        let end = lists.partition_point(slot, |s| timestamp(s) <= max).max(start);
        let want_debits = filter.flags.contains(AccountFilterFlags::DEBITS);
        let want_credits = filter.flags.contains(AccountFilterFlags::CREDITS);
        let matches = |t: &&Transfer| {
            ((want_debits && t.debit_account_id == filter.account_id)
                || (want_credits && t.credit_account_id == filter.account_id))
                && (filter.user_data_128 == 0 || t.user_data_128 == filter.user_data_128)
                && (filter.user_data_64 == 0 || t.user_data_64 == filter.user_data_64)
                && (filter.user_data_32 == 0 || t.user_data_32 == filter.user_data_32)
                && (filter.code == 0 || t.code == filter.code)
        };
        let slots = (start..end).map(|i| self.transfers.get(lists.get(slot, i)));
        if filter.flags.contains(AccountFilterFlags::REVERSED) {
            out.extend(slots.rev().filter(matches).take(limit).copied());
        } else {
            out.extend(slots.filter(matches).take(limit).copied());
        }
        Ok(())
    }

    /// Appends to `out` the balance history of a `HISTORY` account in the
    /// filter's timestamp range, at most `min(limit, query_results_max)`
    /// points. Other accounts have no history.
    pub fn get_account_balances(
        &self,
        filter: &AccountFilter,
        out: &mut Vec<AccountBalance>,
    ) -> Result<(), QueryError> {
        let Some(slot) = self.check_filter(filter)? else {
            return Ok(());
        };
        let limit = filter.limit.min(self.config.query_results_max) as usize;
        let list = &self.account_balances[slot as usize];
        let range = timestamp_range(list, filter, |b| b.timestamp);
        let points = list[range].iter();
        if filter.flags.contains(AccountFilterFlags::REVERSED) {
            out.extend(points.rev().take(limit).copied());
        } else {
            out.extend(points.take(limit).copied());
        }
        Ok(())
    }

    /// Touches every page reserved at start-up (record stores — a buffer for
    /// every transfer block `transfers_max` allows —, indexes, per-account
    /// lists) so that later events never wait on a page fault.
    /// Servers and benchmarks call it once after `new`; it changes no state.
    pub fn prefault(&mut self) {
        crate::prefault::spare_capacity(&mut self.accounts);
        self.transfers.prefault();
        crate::prefault::spare_capacity(&mut self.transfer_states);
        self.account_index.prefault();
        self.transfer_index.prefault();
        self.account_transfers.prefault();
    }

    // ------------------------------------------------------------------
    // Snapshots.

    /// Everything that defines the engine's state, for a snapshot. Indexes,
    /// per-account lists and the expiry queue are derived, so not included.
    pub fn export(&self) -> EngineState {
        EngineState {
            accounts: self.accounts.clone(),
            transfers: self.transfers.to_vec(),
            transfer_states: self.transfer_states.iter().map(|s| *s as u8).collect(),
            balances: self.export_balances(),
            clock_ns: self.clock_ns,
            timestamp_last: self.timestamp_last,
        }
    }

    /// Rebuilds an engine from an exported state, re-deriving its indexes,
    /// and refuses a state that breaks any limit or invariant (a snapshot
    /// that passed its checksum but is still wrong never becomes balances).
    pub fn import(config: Config, state: EngineState) -> Result<Self, ImportError> {
        let mut importer = Self::importer(config, state.accounts, state.transfer_states)?;
        let mut blocks = state.transfers.chunks_exact(BLOCK_TRANSFERS);
        for block in blocks.by_ref() {
            importer.block(Block::Memory(std::sync::Arc::new(block.to_vec())), block)?;
        }
        importer.tail(blocks.remainder())?;
        importer.finish(state.balances, state.clock_ns, state.timestamp_last)
    }

    /// Starts rebuilding an engine from a snapshot, block by block (see
    /// [`Importer`]): the accounts, and one state per transfer to come.
    pub fn importer(
        config: Config,
        accounts: Vec<Account>,
        transfer_states: Vec<u8>,
    ) -> Result<Importer, ImportError> {
        let mut engine = Self::new(config)?;
        if accounts.len() > engine.config.accounts_max as usize
            || transfer_states.len() > engine.config.transfers_max as usize
        {
            return Err(ImportError::OverLimits);
        }
        for (slot, account) in accounts.iter().enumerate() {
            if account.id == 0 || account.id == u128::MAX || engine.account_slot(account.id).is_some() {
                return Err(ImportError::Malformed("account ids are valid and unique"));
            }
            engine.accounts.push(*account);
            engine.account_index.insert_new(account.id, slot as u32);
            engine.account_transfers.push_list();
            engine.account_balances.push(Vec::new());
        }
        let mut states = Vec::with_capacity(engine.config.transfers_max as usize);
        for &byte in &transfer_states {
            states.push(match byte {
                0 => TransferState::Final,
                1 => TransferState::Pending,
                2 => TransferState::Posted,
                3 => TransferState::Voided,
                4 => TransferState::Expired,
                _ => return Err(ImportError::Malformed("transfer states are 0..=4")),
            });
        }
        Ok(Importer { engine, states, pending: BTreeMap::new(), timestamp_last: 0 })
    }

    /// Records that full block `block` is also held, durably, by `cold`, so
    /// [`Engine::evict_transfers`] may drop it from memory (see
    /// [`TransferStore::attach`]).
    pub fn attach_cold(&mut self, block: usize, cold: std::sync::Arc<dyn ColdBlock>) {
        self.transfers.attach(block, cold);
    }

    /// Drops from memory the full transfer blocks that have a cold copy,
    /// except the newest `keep`; returns how many were dropped.
    pub fn evict_transfers(&mut self, keep: usize) -> usize {
        self.transfers.evict(keep)
    }

    /// What a snapshot needs, taken between batches without copying the
    /// transfer history: the full blocks from `from_block` on are shared
    /// (they never change), the rest (accounts, states, balance history, the
    /// tail block) is copied.
    pub fn snapshot_parts(&self, from_block: usize) -> SnapshotParts {
        self.snapshot_parts_reusing(from_block, SnapshotParts::default())
    }

    /// [`Engine::snapshot_parts`] into the buffers of an earlier snapshot's
    /// parts (emptied first): the copy then goes into memory already faulted
    /// in, not fresh pages the kernel zeroes while the shard waits.
    pub fn snapshot_parts_reusing(&self, from_block: usize, mut parts: SnapshotParts) -> SnapshotParts {
        assert!(!self.chain_active);
        parts.accounts.clear();
        parts.accounts.extend_from_slice(&self.accounts);
        parts.first_block = from_block;
        parts.blocks.clear();
        parts.blocks.extend_from_slice(&self.transfers.blocks()[from_block..]);
        parts.tail.clear();
        parts.tail.extend_from_slice(self.transfers.tail());
        parts.transfer_states.clear();
        let states = self.transfer_states.len();
        if parts.transfer_states.capacity() < states {
            // Growing the old buffer would copy it first: a new one, with
            // room for the states the next capture adds.
            parts.transfer_states = Vec::with_capacity(states + states / 2);
        }
        parts.transfer_states.extend(self.transfer_states.iter().map(|s| *s as u8));
        parts.balances = self.export_balances();
        parts.clock_ns = self.clock_ns;
        parts.timestamp_last = self.timestamp_last;
        parts
    }

    fn export_balances(&self) -> Vec<(u32, Vec<AccountBalance>)> {
        self.account_balances
            .iter()
            .enumerate()
            .filter(|(_, b)| !b.is_empty())
            .map(|(slot, b)| (slot as u32, b.clone()))
            .collect()
    }

    /// The pending transfers still holding their reservation, in slot order
    /// (reads only those records).
    pub fn pending_transfers(&self) -> impl Iterator<Item = &Transfer> + '_ {
        self.transfer_states
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == TransferState::Pending)
            .map(|(slot, _)| self.transfers.get(slot as u32))
    }

    // ------------------------------------------------------------------
    // Invariants.

    /// Per-ledger sums over every account (mod 2^128).
    pub fn ledger_totals(&self) -> BTreeMap<u32, LedgerTotals> {
        let mut totals: BTreeMap<u32, LedgerTotals> = BTreeMap::new();
        for a in &self.accounts {
            let t = totals.entry(a.ledger).or_default();
            t.accounts += 1;
            t.debits_posted = t.debits_posted.wrapping_add(a.debits_posted);
            t.credits_posted = t.credits_posted.wrapping_add(a.credits_posted);
            t.debits_pending = t.debits_pending.wrapping_add(a.debits_pending);
            t.credits_pending = t.credits_pending.wrapping_add(a.credits_pending);
        }
        totals
    }

    /// Checks every global invariant (O(accounts + transfers), reading every
    /// record, cold ones too): per ledger, debits equal credits, posted and
    /// pending; open pending transfers add up to the pending balances; no
    /// account crosses its flag's limit; timestamps strictly increase;
    /// indexes agree with the records.
    pub fn check_invariants(&self) -> Result<(), InvariantViolation> {
        let mut open: BTreeMap<u32, u128> = BTreeMap::new();
        for t in self.pending_transfers() {
            let sum = open.entry(t.ledger).or_default();
            *sum = sum.wrapping_add(t.amount);
        }
        self.check_accounts(&open)?;
        let stamps: Vec<u64> = self.transfers.iter().map(|t| t.timestamp).collect();
        if let Some(slot) = stamps.windows(2).position(|w| w[0] >= w[1]) {
            return Err(InvariantViolation::TimestampOrder { kind: "transfer", slot: slot + 1 });
        }
        if stamps.last().is_some_and(|&last| last > self.timestamp_last) {
            return Err(InvariantViolation::TimestampOrder { kind: "transfer", slot: stamps.len() - 1 });
        }
        if self.transfer_index.len() != self.transfers.len()
            || self.transfers.iter().enumerate().any(|(i, t)| self.transfer_slot(t.id) != Some(i as u32))
        {
            return Err(InvariantViolation::Index("transfer"));
        }
        Ok(())
    }

    /// The invariants over accounts, given the open pending amount per ledger.
    fn check_accounts(&self, open: &BTreeMap<u32, u128>) -> Result<(), InvariantViolation> {
        let totals = self.ledger_totals();
        for (&ledger, t) in &totals {
            if t.debits_posted != t.credits_posted {
                return Err(InvariantViolation::PostedUnbalanced {
                    ledger,
                    debits: t.debits_posted,
                    credits: t.credits_posted,
                });
            }
            if t.debits_pending != t.credits_pending {
                return Err(InvariantViolation::PendingUnbalanced {
                    ledger,
                    debits: t.debits_pending,
                    credits: t.credits_pending,
                });
            }
        }
        for (&ledger, t) in &totals {
            let transfers = open.get(&ledger).copied().unwrap_or(0);
            if transfers != t.debits_pending {
                return Err(InvariantViolation::PendingMismatch {
                    ledger,
                    transfers,
                    accounts: t.debits_pending,
                });
            }
        }
        for a in &self.accounts {
            if !within_limits(a) {
                return Err(InvariantViolation::LimitCrossed { id: a.id });
            }
        }
        if let Some(slot) = self.accounts.windows(2).position(|w| w[0].timestamp >= w[1].timestamp) {
            return Err(InvariantViolation::TimestampOrder { kind: "account", slot: slot + 1 });
        }
        if self.accounts.last().is_some_and(|a| a.timestamp > self.timestamp_last) {
            return Err(InvariantViolation::TimestampOrder {
                kind: "account",
                slot: self.accounts.len() - 1,
            });
        }
        if self.account_index.len() != self.accounts.len()
            || self.accounts.iter().enumerate().any(|(i, a)| self.account_slot(a.id) != Some(i as u32))
        {
            return Err(InvariantViolation::Index("account"));
        }
        Ok(())
    }
}

/// What a snapshot holds, as [`Engine::snapshot_parts`] takes it.
#[derive(Debug, Default)]
pub struct SnapshotParts {
    /// Every account.
    pub accounts: Vec<Account>,
    /// The index of the first block in `blocks`.
    pub first_block: usize,
    /// Full transfer blocks from `first_block` on, shared.
    pub blocks: Vec<Block>,
    /// The records of the block being filled.
    pub tail: Vec<Transfer>,
    /// One [`TransferState`] (as u8) per transfer, all of them.
    pub transfer_states: Vec<u8>,
    /// Balance history of `history` accounts: (account slot, points).
    pub balances: Vec<(u32, Vec<AccountBalance>)>,
    /// Logical time.
    pub clock_ns: u64,
    /// The last timestamp given.
    pub timestamp_last: u64,
}

/// Rebuilds an engine from a snapshot one full block at a time, then the
/// tail ([`Engine::importer`] → [`Importer::block`]… → [`Importer::tail`] →
/// [`Importer::finish`]). Each block comes with its records as the host read
/// and checked them: the indexes are built from those, so a cold block's own
/// copy (a mapped file, say) is not read. Every check of [`Engine::import`]
/// holds: a state that breaks a limit or an invariant is refused.
pub struct Importer {
    engine: Engine,
    states: Vec<TransferState>,
    /// Per ledger: the open pending amount (mod 2^128).
    pending: BTreeMap<u32, u128>,
    /// The newest transfer timestamp seen.
    timestamp_last: u64,
}

impl core::fmt::Debug for Importer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Importer").field("transfers", &self.engine.transfers.len()).finish()
    }
}

impl Importer {
    /// Adds the next full block; `records` are its records (for a memory
    /// block, the same ones).
    pub fn block(&mut self, block: Block, records: &[Transfer]) -> Result<(), ImportError> {
        let first = self.engine.transfers.len();
        if records.len() != BLOCK_TRANSFERS
            || block.records().len() != BLOCK_TRANSFERS
            || !self.engine.transfers.tail().is_empty()
        {
            return Err(ImportError::Malformed("full transfer blocks come before the tail"));
        }
        if first + BLOCK_TRANSFERS > self.states.len() {
            return Err(ImportError::Malformed("one state per transfer"));
        }
        self.engine.transfers.push_block(block);
        for (i, t) in records.iter().enumerate() {
            self.index((first + i) as u32, t)?;
        }
        Ok(())
    }

    /// Adds the records of the block being filled (fewer than a block).
    pub fn tail(&mut self, records: &[Transfer]) -> Result<(), ImportError> {
        if records.len() >= BLOCK_TRANSFERS || self.engine.transfers.len() + records.len() > self.states.len()
        {
            return Err(ImportError::Malformed("one state per transfer"));
        }
        for t in records {
            let slot = self.engine.transfers.len() as u32;
            self.engine.transfers.push(*t);
            self.index(slot, t)?;
        }
        Ok(())
    }

    fn index(&mut self, slot: u32, transfer: &Transfer) -> Result<(), ImportError> {
        let engine = &mut self.engine;
        let state = self.states[slot as usize];
        let pending = transfer.flags.contains(TransferFlags::PENDING);
        if pending == (state == TransferState::Final) {
            return Err(ImportError::Malformed("only pending transfers have a pending state"));
        }
        if transfer.id == 0 || transfer.id == u128::MAX || engine.transfer_slot(transfer.id).is_some() {
            return Err(ImportError::Malformed("transfer ids are valid and unique"));
        }
        if transfer.timestamp <= self.timestamp_last {
            return Err(ImportError::Invariant(InvariantViolation::TimestampOrder {
                kind: "transfer",
                slot: slot as usize,
            }));
        }
        self.timestamp_last = transfer.timestamp;
        let (Some(dr), Some(cr)) =
            (engine.account_slot(transfer.debit_account_id), engine.account_slot(transfer.credit_account_id))
        else {
            return Err(ImportError::Malformed("transfers name existing accounts"));
        };
        engine.transfer_states.push(state);
        engine.transfer_index.insert_new(transfer.id, slot);
        engine.account_transfers.push(dr, slot);
        engine.account_transfers.push(cr, slot);
        if state == TransferState::Pending {
            let sum = self.pending.entry(transfer.ledger).or_default();
            *sum = sum.wrapping_add(transfer.amount);
            if transfer.timeout != 0 {
                let expires_at = transfer
                    .timestamp
                    .checked_add(u64::from(transfer.timeout) * NS_PER_S)
                    .ok_or(ImportError::Malformed("pending timeouts fit in u64"))?;
                engine.expiries.push(Reverse((expires_at, slot)));
            }
        }
        Ok(())
    }

    /// Adds the balance history and the clock, checks every invariant, and
    /// returns the engine.
    pub fn finish(
        self,
        balances: Vec<(u32, Vec<AccountBalance>)>,
        clock_ns: u64,
        timestamp_last: u64,
    ) -> Result<Engine, ImportError> {
        let Importer { mut engine, states, pending, timestamp_last: transfers_last } = self;
        if engine.transfers.len() != states.len() {
            return Err(ImportError::Malformed("one state per transfer"));
        }
        for (slot, balances) in balances {
            let account =
                engine.accounts.get(slot as usize).ok_or(ImportError::Malformed("balances name accounts"))?;
            if !account.flags.contains(AccountFlags::HISTORY)
                || !balances.windows(2).all(|w| w[0].timestamp < w[1].timestamp)
            {
                return Err(ImportError::Malformed("balance history belongs to history accounts, in order"));
            }
            engine.account_balances[slot as usize] = balances;
        }
        engine.clock_ns = clock_ns.min(CLOCK_NS_MAX);
        engine.timestamp_last = timestamp_last;
        if transfers_last > timestamp_last {
            return Err(ImportError::Invariant(InvariantViolation::TimestampOrder {
                kind: "transfer",
                slot: engine.transfers.len() - 1,
            }));
        }
        engine.check_accounts(&pending).map_err(ImportError::Invariant)?;
        Ok(engine)
    }
}

/// The range of `list` (sorted by timestamp) inside the filter's bounds.
fn timestamp_range<T>(
    list: &[T],
    filter: &AccountFilter,
    timestamp: impl Fn(&T) -> u64,
) -> core::ops::Range<usize> {
    let max = if filter.timestamp_max == 0 { u64::MAX } else { filter.timestamp_max };
    let start = list.partition_point(|x| timestamp(x) < filter.timestamp_min);
    let end = list.partition_point(|x| timestamp(x) <= max);
    start..end.max(start)
}

#[inline(always)]
fn within_limits(a: &Account) -> bool {
    let debits_ok = !a.flags.contains(AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS)
        || a.debits_pending.checked_add(a.debits_posted).is_some_and(|d| d <= a.credits_posted);
    let credits_ok = !a.flags.contains(AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS)
        || a.credits_pending.checked_add(a.credits_posted).is_some_and(|c| c <= a.debits_posted);
    debits_ok && credits_ok
}

/// The state machine's own contract, kept on in release: no applied
/// transfer leaves an account past its flag's limit.
#[inline(always)]
fn assert_within_limits(a: &Account) {
    assert!(within_limits(a), "account {} crossed its balance limit", a.id);
}

fn reopen_if_closing(p: &Transfer, dr: &mut Account, cr: &mut Account) {
    if p.flags.contains(TransferFlags::CLOSING_DEBIT) {
        dr.flags.0 &= !AccountFlags::CLOSED.0;
    }
    if p.flags.contains(TransferFlags::CLOSING_CREDIT) {
        cr.flags.0 &= !AccountFlags::CLOSED.0;
    }
}

fn account_exists(a: &Account, e: &Account) -> CreateAccountResult {
    use CreateAccountResult as R;
    // `closed` is the engine's to change after creation; compare the rest.
    let mask = !AccountFlags::CLOSED.0;
    if a.flags.0 & mask != e.flags.0 & mask {
        return R::ExistsWithDifferentFlags;
    }
    if a.user_data_128 != e.user_data_128 {
        return R::ExistsWithDifferentUserData128;
    }
    if a.user_data_64 != e.user_data_64 {
        return R::ExistsWithDifferentUserData64;
    }
    if a.user_data_32 != e.user_data_32 {
        return R::ExistsWithDifferentUserData32;
    }
    if a.ledger != e.ledger {
        return R::ExistsWithDifferentLedger;
    }
    if a.code != e.code {
        return R::ExistsWithDifferentCode;
    }
    R::Exists
}

fn transfer_exists(t: &Transfer, e: &Transfer) -> CreateTransferResult {
    use CreateTransferResult as R;
    if t.flags != e.flags {
        return R::ExistsWithDifferentFlags;
    }
    // Post and void inherit accounts, amount, ledger, code and user data from
    // the pending transfer when sent as 0: a 0 matches what was stored.
    let inherits = t.flags.intersects(TransferFlags::POST_PENDING | TransferFlags::VOID_PENDING);
    let same_u128 = |sent: u128, stored: u128| sent == stored || (inherits && sent == 0);
    if t.pending_id != e.pending_id {
        return R::ExistsWithDifferentPendingId;
    }
    if t.timeout != e.timeout {
        return R::ExistsWithDifferentTimeout;
    }
    if !same_u128(t.debit_account_id, e.debit_account_id) {
        return R::ExistsWithDifferentDebitAccountId;
    }
    if !same_u128(t.credit_account_id, e.credit_account_id) {
        return R::ExistsWithDifferentCreditAccountId;
    }
    let balancing = t.flags.intersects(TransferFlags::BALANCING_DEBIT | TransferFlags::BALANCING_CREDIT);
    // A balancing transfer's amount is a cap; the stored amount is what applied.
    let amount_ok = if balancing { t.amount >= e.amount } else { same_u128(t.amount, e.amount) };
    if !amount_ok {
        return R::ExistsWithDifferentAmount;
    }
    if !same_u128(t.user_data_128, e.user_data_128) {
        return R::ExistsWithDifferentUserData128;
    }
    if !(t.user_data_64 == e.user_data_64 || (inherits && t.user_data_64 == 0)) {
        return R::ExistsWithDifferentUserData64;
    }
    if !(t.user_data_32 == e.user_data_32 || (inherits && t.user_data_32 == 0)) {
        return R::ExistsWithDifferentUserData32;
    }
    if !(t.ledger == e.ledger || (inherits && t.ledger == 0)) {
        return R::ExistsWithDifferentLedger;
    }
    if !(t.code == e.code || (inherits && t.code == 0)) {
        return R::ExistsWithDifferentCode;
    }
    R::Exists
}
