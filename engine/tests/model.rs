//! Property tests: random batches against a simple reference model.
//!
//! The model below is written for obviousness, not speed: maps keyed by id,
//! linked chains undone by restoring a clone taken at the chain's start, and
//! expiry by scanning every transfer. After every command, the engine must
//! agree with it on every result code, every account and transfer record,
//! every transfer state, and every history query; and the engine's own
//! invariants (conservation per ledger, limits, timestamps) must hold.

use std::collections::BTreeMap;

use molly_engine::{
    Account, AccountBalance, AccountFilter, AccountFilterFlags, AccountFlags as AF, Config,
    CreateAccountResult as AR, CreateTransferResult as TR, Engine, Transfer, TransferFlags as TF,
    TransferState as S,
};
use proptest::prelude::*;

const NS: u64 = 1_000_000_000;

#[derive(Clone, Debug)]
struct Model {
    accounts: Vec<Account>,
    transfers: Vec<Transfer>,
    states: BTreeMap<u128, S>,
    history: BTreeMap<u128, Vec<AccountBalance>>,
    clock: u64,
    last: u64,
    accounts_max: usize,
    transfers_max: usize,
}

impl Model {
    fn new(config: &Config) -> Self {
        Self {
            accounts: Vec::new(),
            transfers: Vec::new(),
            states: BTreeMap::new(),
            history: BTreeMap::new(),
            clock: 0,
            last: 0,
            accounts_max: config.accounts_max as usize,
            transfers_max: config.transfers_max as usize,
        }
    }

    fn account(&self, id: u128) -> Option<Account> {
        self.accounts.iter().copied().find(|a| a.id == id)
    }

    fn account_mut(&mut self, id: u128) -> &mut Account {
        self.accounts.iter_mut().find(|a| a.id == id).unwrap()
    }

    fn transfer(&self, id: u128) -> Option<Transfer> {
        self.transfers.iter().copied().find(|t| t.id == id)
    }

    fn next_ts(&mut self) -> u64 {
        self.last = self.last.max(self.clock) + 1;
        self.last
    }

    /// Runs a batch with TigerBeetle's linked-chain rules, by cloning.
    fn batch<E: Copy, R: Copy + PartialEq>(
        &mut self,
        events: &[E],
        linked: impl Fn(&E) -> bool,
        mut apply: impl FnMut(&mut Self, &E) -> R,
        ok: R,
        failed: R,
        open: R,
    ) -> Vec<R> {
        let mut results = Vec::new();
        let mut i = 0;
        while i < events.len() {
            // The chain starting at i ends at the first event without `linked`.
            let mut end = i;
            while end < events.len() && linked(&events[end]) {
                end += 1;
            }
            if end == events.len() {
                results.extend(std::iter::repeat_n(open, events.len() - i));
                break;
            }
            let saved = self.clone();
            let mut chain = Vec::new();
            for event in &events[i..=end] {
                let r = apply(self, event);
                chain.push(r);
                if r != ok {
                    break;
                }
            }
            if chain.last() != Some(&ok) && end > i {
                *self = saved;
                let failed_at = chain.len() - 1;
                let code = chain[failed_at];
                chain = vec![failed; end - i + 1];
                chain[failed_at] = code;
            }
            results.extend(chain);
            i = end + 1;
        }
        results
    }

    fn create_account(&mut self, a: &Account) -> AR {
        if a.timestamp != 0 {
            return AR::TimestampMustBeZero;
        }
        if a.reserved != 0 {
            return AR::ReservedField;
        }
        if a.flags.0 >= 1 << 5 {
            return AR::ReservedFlag;
        }
        if a.id == 0 {
            return AR::IdMustNotBeZero;
        }
        if a.id == u128::MAX {
            return AR::IdMustNotBeIntMax;
        }
        if let Some(e) = self.account(a.id) {
            let closed = AF::CLOSED.0;
            return if a.flags.0 & !closed != e.flags.0 & !closed {
                AR::ExistsWithDifferentFlags
            } else if a.user_data_128 != e.user_data_128 {
                AR::ExistsWithDifferentUserData128
            } else if a.user_data_64 != e.user_data_64 {
                AR::ExistsWithDifferentUserData64
            } else if a.user_data_32 != e.user_data_32 {
                AR::ExistsWithDifferentUserData32
            } else if a.ledger != e.ledger {
                AR::ExistsWithDifferentLedger
            } else if a.code != e.code {
                AR::ExistsWithDifferentCode
            } else {
                AR::Exists
            };
        }
        if a.flags.contains(AF::DEBITS_MUST_NOT_EXCEED_CREDITS)
            && a.flags.contains(AF::CREDITS_MUST_NOT_EXCEED_DEBITS)
        {
            return AR::FlagsAreMutuallyExclusive;
        }
        if a.debits_pending != 0 {
            return AR::DebitsPendingMustBeZero;
        }
        if a.debits_posted != 0 {
            return AR::DebitsPostedMustBeZero;
        }
        if a.credits_pending != 0 {
            return AR::CreditsPendingMustBeZero;
        }
        if a.credits_posted != 0 {
            return AR::CreditsPostedMustBeZero;
        }
        if a.ledger == 0 {
            return AR::LedgerMustNotBeZero;
        }
        if a.code == 0 {
            return AR::CodeMustNotBeZero;
        }
        if ![1, 2, 3, 10, 11, 20, 21, 30].contains(&a.ledger) {
            return AR::LedgerNotRegistered;
        }
        if self.accounts.len() >= self.accounts_max {
            return AR::AccountsLimitReached;
        }
        let ts = self.next_ts();
        self.accounts.push(Account { timestamp: ts, ..*a });
        AR::Ok
    }

    fn snapshot_history(&mut self, ids: [u128; 2], ts: u64) {
        for id in ids {
            let a = self.account(id).unwrap();
            if a.flags.contains(AF::HISTORY) {
                self.history.entry(id).or_default().push(AccountBalance {
                    debits_pending: a.debits_pending,
                    debits_posted: a.debits_posted,
                    credits_pending: a.credits_pending,
                    credits_posted: a.credits_posted,
                    timestamp: ts,
                    reserved: [0; 56],
                });
            }
        }
    }

    fn create_transfer(&mut self, t: &Transfer) -> TR {
        if t.timestamp != 0 {
            return TR::TimestampMustBeZero;
        }
        if t.flags.0 >= 1 << 8 {
            return TR::ReservedFlag;
        }
        if t.id == 0 {
            return TR::IdMustNotBeZero;
        }
        if t.id == u128::MAX {
            return TR::IdMustNotBeIntMax;
        }
        let post = t.flags.contains(TF::POST_PENDING);
        let void = t.flags.contains(TF::VOID_PENDING);
        let is_pending = t.flags.contains(TF::PENDING);
        let balancing = t.flags.contains(TF::BALANCING_DEBIT) || t.flags.contains(TF::BALANCING_CREDIT);
        let closing = t.flags.contains(TF::CLOSING_DEBIT) || t.flags.contains(TF::CLOSING_CREDIT);
        if let Some(e) = self.transfer(t.id) {
            let inherit = post || void;
            let same = |a: u128, b: u128| a == b || (inherit && a == 0);
            return if t.flags != e.flags {
                TR::ExistsWithDifferentFlags
            } else if t.pending_id != e.pending_id {
                TR::ExistsWithDifferentPendingId
            } else if t.timeout != e.timeout {
                TR::ExistsWithDifferentTimeout
            } else if !same(t.debit_account_id, e.debit_account_id) {
                TR::ExistsWithDifferentDebitAccountId
            } else if !same(t.credit_account_id, e.credit_account_id) {
                TR::ExistsWithDifferentCreditAccountId
            } else if if balancing { t.amount < e.amount } else { !same(t.amount, e.amount) } {
                TR::ExistsWithDifferentAmount
            } else if !same(t.user_data_128, e.user_data_128) {
                TR::ExistsWithDifferentUserData128
            } else if !same(t.user_data_64.into(), e.user_data_64.into()) {
                TR::ExistsWithDifferentUserData64
            } else if !same(t.user_data_32.into(), e.user_data_32.into()) {
                TR::ExistsWithDifferentUserData32
            } else if !same(t.ledger.into(), e.ledger.into()) {
                TR::ExistsWithDifferentLedger
            } else if !same(t.code.into(), e.code.into()) {
                TR::ExistsWithDifferentCode
            } else {
                TR::Exists
            };
        }
        if [is_pending, post, void].iter().filter(|&&f| f).count() > 1
            || ((post || void) && (balancing || closing))
        {
            return TR::FlagsAreMutuallyExclusive;
        }
        if post || void {
            return self.post_or_void(t, post);
        }
        if t.debit_account_id == 0 {
            return TR::DebitAccountIdMustNotBeZero;
        }
        if t.debit_account_id == u128::MAX {
            return TR::DebitAccountIdMustNotBeIntMax;
        }
        if t.credit_account_id == 0 {
            return TR::CreditAccountIdMustNotBeZero;
        }
        if t.credit_account_id == u128::MAX {
            return TR::CreditAccountIdMustNotBeIntMax;
        }
        if t.debit_account_id == t.credit_account_id {
            return TR::AccountsMustBeDifferent;
        }
        if t.pending_id != 0 {
            return TR::PendingIdMustBeZero;
        }
        if !is_pending && t.timeout != 0 {
            return TR::TimeoutReservedForPendingTransfer;
        }
        if !is_pending && closing {
            return TR::ClosingTransferMustBePending;
        }
        if t.amount == 0 && !balancing {
            return TR::AmountMustNotBeZero;
        }
        if t.ledger == 0 {
            return TR::LedgerMustNotBeZero;
        }
        if t.code == 0 {
            return TR::CodeMustNotBeZero;
        }
        let Some(dr) = self.account(t.debit_account_id) else {
            return TR::DebitAccountNotFound;
        };
        let Some(cr) = self.account(t.credit_account_id) else {
            return TR::CreditAccountNotFound;
        };
        if dr.ledger != cr.ledger {
            return TR::AccountsMustHaveTheSameLedger;
        }
        if t.ledger != dr.ledger {
            return TR::TransferMustHaveTheSameLedgerAsAccounts;
        }
        if dr.flags.contains(AF::CLOSED) {
            return TR::DebitAccountAlreadyClosed;
        }
        if cr.flags.contains(AF::CLOSED) {
            return TR::CreditAccountAlreadyClosed;
        }
        // Work in u256-ish space with checked ops on small terms.
        let mut amount = t.amount;
        if t.flags.contains(TF::BALANCING_DEBIT) {
            let available =
                dr.credits_posted.saturating_sub(dr.debits_pending.saturating_add(dr.debits_posted));
            amount = amount.min(available);
        }
        if t.flags.contains(TF::BALANCING_CREDIT) {
            let available =
                cr.debits_posted.saturating_sub(cr.credits_pending.saturating_add(cr.credits_posted));
            amount = amount.min(available);
        }
        if is_pending {
            if dr.debits_pending.checked_add(amount).is_none() {
                return TR::OverflowsDebitsPending;
            }
            if cr.credits_pending.checked_add(amount).is_none() {
                return TR::OverflowsCreditsPending;
            }
        } else {
            if dr.debits_posted.checked_add(amount).is_none() {
                return TR::OverflowsDebitsPosted;
            }
            if cr.credits_posted.checked_add(amount).is_none() {
                return TR::OverflowsCreditsPosted;
            }
        }
        let Some(debits) =
            dr.debits_pending.checked_add(dr.debits_posted).and_then(|x| x.checked_add(amount))
        else {
            return TR::OverflowsDebits;
        };
        let Some(credits) =
            cr.credits_pending.checked_add(cr.credits_posted).and_then(|x| x.checked_add(amount))
        else {
            return TR::OverflowsCredits;
        };
        let ts = self.last.max(self.clock) + 1;
        if is_pending && t.timeout != 0 && ts.checked_add(u64::from(t.timeout) * NS).is_none() {
            return TR::OverflowsTimeout;
        }
        if dr.flags.contains(AF::DEBITS_MUST_NOT_EXCEED_CREDITS) && debits > dr.credits_posted {
            return TR::ExceedsCredits;
        }
        if cr.flags.contains(AF::CREDITS_MUST_NOT_EXCEED_DEBITS) && credits > cr.debits_posted {
            return TR::ExceedsDebits;
        }
        if self.transfers.len() >= self.transfers_max {
            return TR::TransfersLimitReached;
        }
        let ts = self.next_ts();
        {
            let dr = self.account_mut(t.debit_account_id);
            if is_pending {
                dr.debits_pending += amount;
                if t.flags.contains(TF::CLOSING_DEBIT) {
                    dr.flags.0 |= AF::CLOSED.0;
                }
            } else {
                dr.debits_posted += amount;
            }
        }
        {
            let cr = self.account_mut(t.credit_account_id);
            if is_pending {
                cr.credits_pending += amount;
                if t.flags.contains(TF::CLOSING_CREDIT) {
                    cr.flags.0 |= AF::CLOSED.0;
                }
            } else {
                cr.credits_posted += amount;
            }
        }
        self.transfers.push(Transfer { amount, timestamp: ts, ..*t });
        self.states.insert(t.id, if is_pending { S::Pending } else { S::Final });
        self.snapshot_history([t.debit_account_id, t.credit_account_id], ts);
        TR::Ok
    }

    fn post_or_void(&mut self, t: &Transfer, post: bool) -> TR {
        if t.pending_id == 0 {
            return TR::PendingIdMustNotBeZero;
        }
        if t.pending_id == u128::MAX {
            return TR::PendingIdMustNotBeIntMax;
        }
        if t.pending_id == t.id {
            return TR::PendingIdMustBeDifferent;
        }
        if t.timeout != 0 {
            return TR::TimeoutReservedForPendingTransfer;
        }
        let Some(p) = self.transfer(t.pending_id) else {
            return TR::PendingTransferNotFound;
        };
        if !p.flags.contains(TF::PENDING) {
            return TR::PendingTransferNotPending;
        }
        if t.debit_account_id != 0 && t.debit_account_id != p.debit_account_id {
            return TR::PendingTransferHasDifferentDebitAccountId;
        }
        if t.credit_account_id != 0 && t.credit_account_id != p.credit_account_id {
            return TR::PendingTransferHasDifferentCreditAccountId;
        }
        if t.ledger != 0 && t.ledger != p.ledger {
            return TR::PendingTransferHasDifferentLedger;
        }
        if t.code != 0 && t.code != p.code {
            return TR::PendingTransferHasDifferentCode;
        }
        let amount = if post {
            if t.amount == 0 {
                p.amount
            } else {
                t.amount
            }
        } else {
            p.amount
        };
        if post && amount > p.amount {
            return TR::AmountExceedsPending;
        }
        if !post && t.amount != 0 && t.amount != p.amount {
            return TR::PendingTransferHasDifferentAmount;
        }
        match self.states[&p.id] {
            S::Posted => return TR::PendingTransferAlreadyPosted,
            S::Voided => return TR::PendingTransferAlreadyVoided,
            S::Expired => return TR::PendingTransferExpired,
            _ => {}
        }
        let dr = self.account(p.debit_account_id).unwrap();
        let cr = self.account(p.credit_account_id).unwrap();
        if post && dr.debits_posted.checked_add(amount).is_none() {
            return TR::OverflowsDebitsPosted;
        }
        if post && cr.credits_posted.checked_add(amount).is_none() {
            return TR::OverflowsCreditsPosted;
        }
        if self.transfers.len() >= self.transfers_max {
            return TR::TransfersLimitReached;
        }
        let ts = self.next_ts();
        self.release(&p, !post);
        if post {
            self.account_mut(p.debit_account_id).debits_posted += amount;
            self.account_mut(p.credit_account_id).credits_posted += amount;
        }
        self.states.insert(p.id, if post { S::Posted } else { S::Voided });
        let or = |a: u128, b: u128| if a == 0 { b } else { a };
        self.transfers.push(Transfer {
            id: t.id,
            debit_account_id: p.debit_account_id,
            credit_account_id: p.credit_account_id,
            amount,
            pending_id: p.id,
            user_data_128: or(t.user_data_128, p.user_data_128),
            user_data_64: or(t.user_data_64.into(), p.user_data_64.into()) as u64,
            user_data_32: or(t.user_data_32.into(), p.user_data_32.into()) as u32,
            timeout: 0,
            ledger: p.ledger,
            code: p.code,
            flags: t.flags,
            timestamp: ts,
        });
        self.states.insert(t.id, S::Final);
        self.snapshot_history([p.debit_account_id, p.credit_account_id], ts);
        TR::Ok
    }

    /// Releases a pending reservation; reopens closed accounts if asked.
    fn release(&mut self, p: &Transfer, reopen: bool) {
        let dr = self.account_mut(p.debit_account_id);
        dr.debits_pending -= p.amount;
        if reopen && p.flags.contains(TF::CLOSING_DEBIT) {
            dr.flags.0 &= !AF::CLOSED.0;
        }
        let cr = self.account_mut(p.credit_account_id);
        cr.credits_pending -= p.amount;
        if reopen && p.flags.contains(TF::CLOSING_CREDIT) {
            cr.flags.0 &= !AF::CLOSED.0;
        }
    }

    fn tick(&mut self, now: u64) -> Vec<u128> {
        self.clock = self.clock.max(now.min(molly_engine::CLOCK_NS_MAX));
        let mut due: Vec<(u64, usize)> = self
            .transfers
            .iter()
            .enumerate()
            .filter(|(_, t)| self.states[&t.id] == S::Pending && t.timeout != 0)
            .map(|(i, t)| (t.timestamp + u64::from(t.timeout) * NS, i))
            .filter(|&(at, _)| at <= self.clock)
            .collect();
        due.sort();
        let mut expired = Vec::new();
        for (_, i) in due {
            let p = self.transfers[i];
            let ts = self.next_ts();
            self.release(&p, true);
            self.states.insert(p.id, S::Expired);
            self.snapshot_history([p.debit_account_id, p.credit_account_id], ts);
            expired.push(p.id);
        }
        expired
    }
}

#[derive(Clone, Debug)]
enum Command {
    Accounts(Vec<Account>),
    Transfers(Vec<Transfer>),
    Tick(u64),
}

fn small_amount() -> impl Strategy<Value = u128> {
    prop_oneof![
        4 => 0u128..200,
        1 => Just(0u128),
        1 => Just(u128::MAX),
        1 => Just(u128::MAX - 1),
        1 => (u128::MAX / 2 - 2)..(u128::MAX / 2 + 2),
    ]
}

fn account_strategy() -> impl Strategy<Value = Account> {
    (
        0u128..10,
        prop_oneof![8 => Just(1u32), 2 => Just(2u32), 1 => Just(0u32), 1 => Just(77u32)],
        prop_oneof![8 => Just(1u16), 1 => Just(0u16), 1 => Just(2u16)],
        prop_oneof![
            4 => Just(0u16),
            3 => Just(AF::DEBITS_MUST_NOT_EXCEED_CREDITS.0),
            1 => Just(AF::CREDITS_MUST_NOT_EXCEED_DEBITS.0),
            2 => Just(AF::HISTORY.0),
            2 => Just(AF::LINKED.0),
            1 => 0u16..64,
        ],
        prop_oneof![20 => Just(0u128), 1 => 1u128..3],
        prop_oneof![20 => Just(0u64), 1 => Just(1u64)],
    )
        .prop_map(|(id, ledger, code, flags, user_data_128, timestamp)| Account {
            id,
            ledger,
            code,
            flags: AF(flags),
            user_data_128,
            timestamp,
            ..Account::default()
        })
}

fn transfer_strategy() -> impl Strategy<Value = Transfer> {
    let flags = prop_oneof![
        6 => Just(0u16),
        4 => Just(TF::PENDING.0),
        3 => Just(TF::POST_PENDING.0),
        2 => Just(TF::VOID_PENDING.0),
        2 => Just(TF::LINKED.0),
        1 => Just(TF::LINKED.0 | TF::PENDING.0),
        1 => Just(TF::BALANCING_DEBIT.0),
        1 => Just(TF::BALANCING_CREDIT.0),
        1 => Just(TF::PENDING.0 | TF::CLOSING_DEBIT.0),
        1 => Just(TF::PENDING.0 | TF::CLOSING_CREDIT.0),
        1 => 0u16..512,
    ];
    (
        (0u128..40, 0u128..11, 0u128..11, small_amount()),
        (
            prop_oneof![4 => Just(0u128), 3 => 1u128..40],
            prop_oneof![3 => Just(0u32), 1 => 1u32..4, 1 => 1099u32..1101, 1 => Just(u32::MAX)],
            prop_oneof![6 => Just(1u32), 1 => Just(2u32), 1 => Just(0u32)],
            prop_oneof![6 => Just(1u16), 1 => Just(0u16), 1 => Just(2u16)],
            flags,
            prop_oneof![6 => Just(0u64), 1 => 1u64..3],
        ),
    )
        .prop_map(
            |((id, debit, credit, amount), (pending_id, timeout, ledger, code, flags, user_data_64))| {
                Transfer {
                    id,
                    debit_account_id: debit,
                    credit_account_id: credit,
                    amount,
                    pending_id,
                    timeout,
                    ledger,
                    code,
                    flags: TF(flags),
                    user_data_64,
                    ..Transfer::default()
                }
            },
        )
}

fn command_strategy() -> impl Strategy<Value = Command> {
    prop_oneof![
        2 => prop::collection::vec(account_strategy(), 0..8).prop_map(Command::Accounts),
        6 => prop::collection::vec(transfer_strategy(), 0..16).prop_map(Command::Transfers),
        1 => prop_oneof![4 => 0u64..3 * NS, 1 => Just(u64::MAX - NS)].prop_map(Command::Tick),
    ]
}

fn config() -> Config {
    Config { accounts_max: 8, transfers_max: 48, ..Config::default() }
}

/// Applies one command to both and checks that they agree on everything.
fn step(engine: &mut Engine, model: &mut Model, command: &Command) -> Result<(), TestCaseError> {
    match command {
        Command::Accounts(batch) => {
            let mut results = Vec::new();
            engine.create_accounts(batch, &mut results).unwrap();
            let expected = model.batch(
                batch,
                |a| a.flags.contains(AF::LINKED),
                Model::create_account,
                AR::Ok,
                AR::LinkedEventFailed,
                AR::LinkedEventChainOpen,
            );
            prop_assert_eq!(results, expected);
        }
        Command::Transfers(batch) => {
            let mut results = Vec::new();
            engine.create_transfers(batch, &mut results).unwrap();
            let expected = model.batch(
                batch,
                |t| t.flags.contains(TF::LINKED),
                Model::create_transfer,
                TR::Ok,
                TR::LinkedEventFailed,
                TR::LinkedEventChainOpen,
            );
            prop_assert_eq!(results, expected);
        }
        Command::Tick(advance) => {
            let now = engine.clock_ns().saturating_add(*advance);
            let mut expired = Vec::new();
            engine.tick(now, &mut expired);
            prop_assert_eq!(expired, model.tick(now));
        }
    }
    prop_assert_eq!(engine.accounts(), &model.accounts[..]);
    prop_assert_eq!(engine.transfers(), &model.transfers[..]);
    prop_assert_eq!(engine.timestamp_last(), model.last);
    for (id, state) in &model.states {
        prop_assert_eq!(engine.transfer_state(*id), Some(*state));
    }
    for account in &model.accounts {
        let mut filter = AccountFilter::for_account(account.id, 1000);
        let mut transfers = Vec::new();
        engine.get_account_transfers(&filter, &mut transfers).unwrap();
        let expected: Vec<Transfer> = model
            .transfers
            .iter()
            .filter(|t| t.debit_account_id == account.id || t.credit_account_id == account.id)
            .copied()
            .collect();
        prop_assert_eq!(&transfers, &expected);
        // Debits only, newest first, limited.
        filter.flags = AccountFilterFlags(AccountFilterFlags::DEBITS.0 | AccountFilterFlags::REVERSED.0);
        filter.limit = 3;
        transfers.clear();
        engine.get_account_transfers(&filter, &mut transfers).unwrap();
        let expected: Vec<Transfer> =
            expected.iter().rev().filter(|t| t.debit_account_id == account.id).take(3).copied().collect();
        prop_assert_eq!(&transfers, &expected);
        let mut balances = Vec::new();
        engine.get_account_balances(&AccountFilter::for_account(account.id, 1000), &mut balances).unwrap();
        prop_assert_eq!(&balances, model.history.get(&account.id).map(Vec::as_slice).unwrap_or(&[]));
    }
    if let Err(violation) = engine.check_invariants() {
        return Err(TestCaseError::fail(format!("invariant: {violation}")));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    /// Every result, balance, record, state and query agrees with the model;
    /// debits equal credits per ledger after any batch.
    #[test]
    fn engine_agrees_with_reference_model(commands in prop::collection::vec(command_strategy(), 1..40)) {
        let config = config();
        let mut engine = Engine::new(config.clone()).unwrap();
        let mut model = Model::new(&config);
        for command in &commands {
            step(&mut engine, &mut model, command)?;
        }
    }

    /// A snapshot round trip (export, import) gives an engine that answers
    /// every later command exactly like the original.
    #[test]
    fn export_import_round_trips(
        before in prop::collection::vec(command_strategy(), 1..25),
        after in prop::collection::vec(command_strategy(), 1..15),
    ) {
        let config = config();
        let mut original = Engine::new(config.clone()).unwrap();
        let mut model = Model::new(&config);
        for command in &before {
            step(&mut original, &mut model, command)?;
        }
        let mut restored = Engine::import(config.clone(), original.export()).unwrap();
        prop_assert_eq!(restored.export(), original.export());
        let mut model_copy = model.clone();
        for command in &after {
            step(&mut original, &mut model, command)?;
            step(&mut restored, &mut model_copy, command)?;
        }
        prop_assert_eq!(restored.export(), original.export());
    }

    /// The same commands give the same state and results; replaying an
    /// applied prefix of transfer batches again changes nothing (every event
    /// answers `exists` or a rejection, and no balance moves).
    #[test]
    fn replay_is_deterministic_and_idempotent(commands in prop::collection::vec(command_strategy(), 1..30)) {
        let run = |commands: &[Command]| {
            let mut engine = Engine::new(config()).unwrap();
            let mut all = Vec::new();
            for command in commands {
                match command {
                    Command::Accounts(b) => {
                        let mut r = Vec::new();
                        engine.create_accounts(b, &mut r).unwrap();
                        all.extend(r.iter().map(|r| *r as u32));
                    }
                    Command::Transfers(b) => {
                        let mut r = Vec::new();
                        engine.create_transfers(b, &mut r).unwrap();
                        all.extend(r.iter().map(|r| *r as u32 + 1000));
                    }
                    Command::Tick(advance) => {
                        let now = engine.clock_ns().saturating_add(*advance);
                        engine.tick(now, &mut Vec::new());
                    }
                }
            }
            (engine, all)
        };
        let (mut first, results_first) = run(&commands);
        let (second, results_second) = run(&commands);
        prop_assert_eq!(results_first, results_second);
        prop_assert_eq!(first.accounts(), second.accounts());
        prop_assert_eq!(first.transfers(), second.transfers());

        // Replay every transfer event that applied, one at a time, as a client
        // retry would: each must answer `exists` and change nothing.
        let applied: Vec<Transfer> = first.transfers().to_vec();
        let accounts_before = first.accounts().to_vec();
        for t in &applied {
            let mut retry = Transfer { timestamp: 0, ..*t };
            retry.flags.0 &= !TF::LINKED.0;
            if t.flags.intersects(TF::BALANCING_DEBIT | TF::BALANCING_CREDIT) {
                retry.amount = u128::MAX;
            }
            let mut r = Vec::new();
            first.create_transfers(&[retry], &mut r).unwrap();
            if t.flags.contains(TF::LINKED) {
                prop_assert_eq!(r[0], TR::ExistsWithDifferentFlags);
            } else {
                prop_assert_eq!(r[0], TR::Exists);
            }
        }
        prop_assert_eq!(first.accounts(), &accounts_before[..]);
        prop_assert_eq!(first.transfers(), &applied[..]);
    }
}
