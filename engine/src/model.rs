//! The reference model: the ledger's documented semantics (docs/engine.md,
//! "Semantics" and "Result codes and the order they are checked", plus the
//! shard layer's reserved-id codes when asked for) written a second time,
//! for obviousness rather than speed: maps keyed by id, a linked chain undone
//! by restoring what it saved, expiry by scanning every open pending
//! transfer. It calls nothing of the engine's: it is an independent
//! implementation to compare the engine with.
//!
//! Compiled only with the `model` feature. Two callers:
//! - the engine's property tests (`engine/tests/model.rs`) apply random
//!   commands to both and compare after every one ([`Model::check`], plus
//!   queries);
//! - the simulator (`molly_shards::sim`) feeds it exactly the commands each
//!   acknowledged journal group holds (ticks, account batches, transfer
//!   batches as the clients sent them) and compares, group by group, its
//!   per-event results, balances, records and pending states with the real
//!   shard's.
//!
//! Where the two disagree, the documentation decides which one is wrong.
//!
//! ```
//! use molly_engine::model::Model;
//! use molly_engine::{Account, Config, CreateAccountResult, Engine};
//!
//! let config = Config::default();
//! let mut engine = Engine::new(config.clone()).unwrap();
//! let mut model = Model::new(config);
//! let batch = [Account { id: 1, ledger: 1, code: 1, ..Account::default() }];
//! let mut results = Vec::new();
//! engine.create_accounts(&batch, &mut results).unwrap();
//! assert_eq!(results, model.create_accounts(&batch));
//! assert_eq!(results, [CreateAccountResult::Ok]);
//! model.check(&engine, true).unwrap();
//! ```

use std::collections::BTreeMap;

use crate::{
    Account, AccountBalance, AccountFilter, AccountFlags as AF, Config, CreateAccountResult as AR,
    CreateTransferResult as TR, Engine, Transfer, TransferFlags as TF, TransferState, CLOCK_NS_MAX,
};

const NS_PER_S: u64 = 1_000_000_000;

/// What became of a pending transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finished {
    /// Posted (fully or partly).
    Posted,
    /// Voided.
    Voided,
    /// Its timeout passed.
    Expired,
}

/// What a linked chain saves before it starts, to put back if it fails.
struct Saved {
    accounts: BTreeMap<u128, Account>,
    accounts_created: usize,
    transfers_created: usize,
    open: BTreeMap<u128, u64>,
    history_lens: BTreeMap<u128, usize>,
    timestamp_last: u64,
}

/// The ledger, as the documentation describes it.
#[derive(Clone, Debug)]
pub struct Model {
    config: Config,
    /// Ids a client may not use (the shard layer's reserved ids): `None`
    /// for the engine alone, which reserves none.
    reserved: Option<fn(u128) -> bool>,
    /// Accounts by id (balances and flags as they stand now).
    accounts: BTreeMap<u128, Account>,
    /// Account ids in creation order.
    account_order: Vec<u128>,
    /// Transfers in creation order.
    transfers: Vec<Transfer>,
    /// Transfer id → place in `transfers`.
    transfer_index: BTreeMap<u128, usize>,
    /// Pending transfers still holding their reservation → when they expire
    /// (`u64::MAX`: no timeout).
    open: BTreeMap<u128, u64>,
    /// Pending transfers no longer pending.
    finished: BTreeMap<u128, Finished>,
    /// Balance after every change of `history` accounts.
    history: BTreeMap<u128, Vec<AccountBalance>>,
    clock_ns: u64,
    timestamp_last: u64,
    /// Transfers compared by [`Model::check`] so far.
    checked_transfers: usize,
    /// Pending transfers finished since the last [`Model::check`].
    finished_unchecked: Vec<u128>,
    /// Pending transfers that are not the client's to post or void (the
    /// shard layer's pending legs of cross-shard transfers): a post or void
    /// naming one gets `pending_transfer_not_pending`, unless `settling`.
    held: std::collections::BTreeSet<u128>,
    /// The shard layer is settling its own pending legs.
    settling: bool,
}

impl Model {
    /// An empty ledger with `config`'s limits and assets.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            reserved: None,
            accounts: BTreeMap::new(),
            account_order: Vec::new(),
            transfers: Vec::new(),
            transfer_index: BTreeMap::new(),
            open: BTreeMap::new(),
            finished: BTreeMap::new(),
            history: BTreeMap::new(),
            clock_ns: 0,
            timestamp_last: 0,
            checked_transfers: 0,
            finished_unchecked: Vec::new(),
            held: std::collections::BTreeSet::new(),
            settling: false,
        }
    }

    /// Runs `f` with no id reserved: the shard layer's own accounts and
    /// transfers (bridges, sinks, pending and credit legs, tombstones,
    /// settles) carry reserved ids; the layer refuses a client's before.
    pub fn unreserved<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let reserved = self.reserved.take();
        let result = f(self);
        self.reserved = reserved;
        result
    }

    /// Pending transfer `id` is the shard layer's (a cross-shard pending
    /// leg): a client's post or void of it gets `pending_transfer_not_pending`,
    /// as for a plain transfer (docs/shards.md, "What clients see").
    pub fn hold(&mut self, id: u128) {
        self.held.insert(id);
    }

    /// True when `id` was held by [`Model::hold`].
    pub fn is_held(&self, id: u128) -> bool {
        self.held.contains(&id)
    }

    /// The shard layer posts or voids its held pending transfer `s.pending_id`
    /// (no id reserved); one result.
    pub fn settle(&mut self, s: &Transfer) -> TR {
        self.settling = true;
        let result = self.unreserved(|m| m.create_transfers(std::slice::from_ref(s)));
        self.settling = false;
        result[0]
    }

    /// The same model, refusing the ids `is_reserved` names as a client's
    /// account or transfer ids, debit or credit accounts — the codes the
    /// shard layer answers before the engine sees an event
    /// (`id_must_not_be_reserved`, `debit_account_id_must_not_be_reserved`,
    /// `credit_account_id_must_not_be_reserved`).
    pub fn reserving(self, is_reserved: fn(u128) -> bool) -> Self {
        Self { reserved: Some(is_reserved), ..self }
    }

    fn is_reserved(&self, id: u128) -> bool {
        self.reserved.is_some_and(|is_reserved| is_reserved(id))
    }

    /// The limits and assets it was made with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Accounts in creation order, as they stand now.
    pub fn accounts(&self) -> Vec<Account> {
        self.account_order.iter().map(|id| self.accounts[id]).collect()
    }

    /// The account `id`, if created.
    pub fn account(&self, id: u128) -> Option<&Account> {
        self.accounts.get(&id)
    }

    /// The balance history of account `id` (empty without `history`).
    pub fn history(&self, id: u128) -> &[AccountBalance] {
        self.history.get(&id).map_or(&[][..], Vec::as_slice)
    }

    /// The state of transfer `id`, if created.
    pub fn transfer_state(&self, id: u128) -> Option<TransferState> {
        let t = self.transfer(id)?;
        Some(if !t.flags.contains(TF::PENDING) {
            TransferState::Final
        } else {
            match self.finished.get(&id) {
                None => TransferState::Pending,
                Some(Finished::Posted) => TransferState::Posted,
                Some(Finished::Voided) => TransferState::Voided,
                Some(Finished::Expired) => TransferState::Expired,
            }
        })
    }

    /// The last timestamp given.
    pub fn timestamp_last(&self) -> u64 {
        self.timestamp_last
    }

    /// Transfers held, in creation order.
    pub fn transfers(&self) -> &[Transfer] {
        &self.transfers
    }

    /// The transfer `id`, if created.
    pub fn transfer(&self, id: u128) -> Option<&Transfer> {
        self.transfer_index.get(&id).map(|&i| &self.transfers[i])
    }

    /// Logical time.
    pub fn clock_ns(&self) -> u64 {
        self.clock_ns
    }

    fn next_timestamp(&mut self) -> u64 {
        self.timestamp_last = self.timestamp_candidate();
        self.timestamp_last
    }

    /// The next timestamp: the first nanosecond after the clock and the
    /// last timestamp that is this engine's residue modulo the stride
    /// (counted one by one: a second reading of the rule, not the engine's).
    fn timestamp_candidate(&self) -> u64 {
        let stride = u64::from(self.config.timestamp_stride);
        let mut t = self.timestamp_last.max(self.clock_ns) + 1;
        while t % stride != u64::from(self.config.timestamp_offset) {
            t += 1;
        }
        t
    }

    // ------------------------------------------------------------------
    // Linked chains.

    fn save(&self) -> Saved {
        Saved {
            accounts: self.accounts.clone(),
            accounts_created: self.account_order.len(),
            transfers_created: self.transfers.len(),
            open: self.open.clone(),
            history_lens: self.history.iter().map(|(&id, points)| (id, points.len())).collect(),
            timestamp_last: self.timestamp_last,
        }
    }

    fn restore(&mut self, saved: Saved) {
        self.accounts = saved.accounts;
        self.account_order.truncate(saved.accounts_created);
        for t in self.transfers.drain(saved.transfers_created..) {
            self.transfer_index.remove(&t.id);
            // A pending transfer the chain created and then posted or voided
            // is gone with it, end included.
            if self.finished.remove(&t.id).is_some() {
                self.finished_unchecked.retain(|f| *f != t.id);
            }
        }
        // Pending transfers the chain posted or voided are open again.
        for id in saved.open.keys() {
            if self.finished.remove(id).is_some() {
                self.finished_unchecked.retain(|f| f != id);
            }
        }
        self.open = saved.open;
        self.history.retain(|id, _| saved.history_lens.contains_key(id));
        for (id, points) in &mut self.history {
            points.truncate(saved.history_lens[id]);
        }
        self.timestamp_last = saved.timestamp_last;
    }

    /// A batch under the linked-chain rules: a chain (events up to and
    /// including the first without `linked`) applies all or nothing; the
    /// failing event keeps its code, the rest of its chain gets
    /// `linked_event_failed`; a chain the batch never closes gets
    /// `linked_event_chain_open` throughout.
    fn batch<E, R: Copy + PartialEq>(
        &mut self,
        events: &[E],
        linked: impl Fn(&E) -> bool,
        mut apply: impl FnMut(&mut Self, &E) -> R,
        [ok, failed, open]: [R; 3],
    ) -> Vec<R> {
        let mut results = Vec::with_capacity(events.len());
        let mut start = 0;
        while start < events.len() {
            let mut end = start;
            while end < events.len() && linked(&events[end]) {
                end += 1;
            }
            if end == events.len() {
                results.resize(events.len(), open);
                break;
            }
            if end == start {
                results.push(apply(self, &events[start]));
            } else {
                let saved = self.save();
                let mut chain = vec![failed; end - start + 1];
                for (i, event) in events[start..=end].iter().enumerate() {
                    chain[i] = apply(self, event);
                    if chain[i] != ok {
                        for earlier in &mut chain[..i] {
                            *earlier = failed;
                        }
                        self.restore(saved);
                        break;
                    }
                }
                results.extend(chain);
            }
            start = end + 1;
        }
        assert_eq!(results.len(), events.len());
        results
    }

    // ------------------------------------------------------------------
    // Accounts.

    /// Creates accounts; one result per event.
    pub fn create_accounts(&mut self, batch: &[Account]) -> Vec<AR> {
        self.batch(
            batch,
            |a| a.flags.contains(AF::LINKED),
            Self::create_account,
            [AR::Ok, AR::LinkedEventFailed, AR::LinkedEventChainOpen],
        )
    }

    fn create_account(&mut self, a: &Account) -> AR {
        if a.timestamp != 0 {
            return AR::TimestampMustBeZero;
        }
        if a.reserved != 0 {
            return AR::ReservedField;
        }
        if a.flags.0 & !AF::ALL.0 != 0 {
            return AR::ReservedFlag;
        }
        if a.id == 0 {
            return AR::IdMustNotBeZero;
        }
        if a.id == u128::MAX {
            return AR::IdMustNotBeIntMax;
        }
        if self.is_reserved(a.id) {
            return AR::IdMustNotBeReserved;
        }
        if let Some(e) = self.accounts.get(&a.id) {
            // `closed` is the engine's to change after creation: not compared.
            let flags = |f: AF| f.0 & !AF::CLOSED.0;
            return if flags(a.flags) != flags(e.flags) {
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
        if !self.config.assets.contains(a.ledger) {
            return AR::LedgerNotRegistered;
        }
        if self.accounts.len() >= self.config.accounts_max as usize {
            return AR::AccountsLimitReached;
        }
        let timestamp = self.next_timestamp();
        self.accounts.insert(a.id, Account { timestamp, ..*a });
        self.account_order.push(a.id);
        AR::Ok
    }

    // ------------------------------------------------------------------
    // Transfers.

    /// Creates transfers; one result per event.
    pub fn create_transfers(&mut self, batch: &[Transfer]) -> Vec<TR> {
        self.batch(
            batch,
            |t| t.flags.contains(TF::LINKED),
            Self::create_transfer,
            [TR::Ok, TR::LinkedEventFailed, TR::LinkedEventChainOpen],
        )
    }

    fn create_transfer(&mut self, t: &Transfer) -> TR {
        if t.timestamp != 0 {
            return TR::TimestampMustBeZero;
        }
        if t.flags.0 & !TF::ALL.0 != 0 {
            return TR::ReservedFlag;
        }
        if t.id == 0 {
            return TR::IdMustNotBeZero;
        }
        if t.id == u128::MAX {
            return TR::IdMustNotBeIntMax;
        }
        if self.is_reserved(t.id) {
            return TR::IdMustNotBeReserved;
        }
        let post = t.flags.contains(TF::POST_PENDING);
        let void = t.flags.contains(TF::VOID_PENDING);
        let pending = t.flags.contains(TF::PENDING);
        let balancing = t.flags.contains(TF::BALANCING_DEBIT) || t.flags.contains(TF::BALANCING_CREDIT);
        let closing = t.flags.contains(TF::CLOSING_DEBIT) || t.flags.contains(TF::CLOSING_CREDIT);
        if let Some(e) = self.transfer(t.id) {
            return exists_code(t, e);
        }
        if [pending, post, void].iter().filter(|&&f| f).count() > 1 {
            return TR::FlagsAreMutuallyExclusive;
        }
        if (post || void) && (balancing || closing) {
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
        if self.is_reserved(t.debit_account_id) {
            return TR::DebitAccountIdMustNotBeReserved;
        }
        if self.is_reserved(t.credit_account_id) {
            return TR::CreditAccountIdMustNotBeReserved;
        }
        if t.debit_account_id == t.credit_account_id {
            return TR::AccountsMustBeDifferent;
        }
        if t.pending_id != 0 {
            return TR::PendingIdMustBeZero;
        }
        if !pending && t.timeout != 0 {
            return TR::TimeoutReservedForPendingTransfer;
        }
        if !pending && closing {
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
        let Some(&dr) = self.accounts.get(&t.debit_account_id) else {
            return TR::DebitAccountNotFound;
        };
        let Some(&cr) = self.accounts.get(&t.credit_account_id) else {
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
        // Balancing: the amount is a cap, clamped to what the account has available.
        let mut amount = t.amount;
        if t.flags.contains(TF::BALANCING_DEBIT) {
            let used = dr.debits_pending.saturating_add(dr.debits_posted);
            amount = amount.min(dr.credits_posted.saturating_sub(used));
        }
        if t.flags.contains(TF::BALANCING_CREDIT) {
            let used = cr.credits_pending.saturating_add(cr.credits_posted);
            amount = amount.min(cr.debits_posted.saturating_sub(used));
        }
        if pending {
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
            dr.debits_pending.checked_add(dr.debits_posted).and_then(|d| d.checked_add(amount))
        else {
            return TR::OverflowsDebits;
        };
        let Some(credits) =
            cr.credits_pending.checked_add(cr.credits_posted).and_then(|c| c.checked_add(amount))
        else {
            return TR::OverflowsCredits;
        };
        let timestamp = self.timestamp_candidate();
        let expires_at = if pending && t.timeout != 0 {
            let Some(at) = timestamp.checked_add(u64::from(t.timeout) * NS_PER_S) else {
                return TR::OverflowsTimeout;
            };
            at
        } else {
            u64::MAX
        };
        if dr.flags.contains(AF::DEBITS_MUST_NOT_EXCEED_CREDITS) && debits > dr.credits_posted {
            return TR::ExceedsCredits;
        }
        if cr.flags.contains(AF::CREDITS_MUST_NOT_EXCEED_DEBITS) && credits > cr.debits_posted {
            return TR::ExceedsDebits;
        }
        if self.transfers.len() >= self.config.transfers_max as usize {
            return TR::TransfersLimitReached;
        }

        assert_eq!(self.next_timestamp(), timestamp);
        let dr = self.accounts.get_mut(&t.debit_account_id).expect("found above");
        if pending {
            dr.debits_pending += amount;
            if t.flags.contains(TF::CLOSING_DEBIT) {
                dr.flags.0 |= AF::CLOSED.0;
            }
        } else {
            dr.debits_posted += amount;
        }
        let cr = self.accounts.get_mut(&t.credit_account_id).expect("found above");
        if pending {
            cr.credits_pending += amount;
            if t.flags.contains(TF::CLOSING_CREDIT) {
                cr.flags.0 |= AF::CLOSED.0;
            }
        } else {
            cr.credits_posted += amount;
        }
        if pending {
            self.open.insert(t.id, expires_at);
        }
        self.push_transfer(Transfer { amount, timestamp, ..*t });
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
        let Some(&p) = self.transfer(t.pending_id) else {
            return TR::PendingTransferNotFound;
        };
        if !p.flags.contains(TF::PENDING) || (self.held.contains(&p.id) && !self.settling) {
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
        // A post moves all (amount 0 or the full amount) or part; a void all.
        let amount = if t.amount == 0 { p.amount } else { t.amount };
        if post && amount > p.amount {
            return TR::AmountExceedsPending;
        }
        if !post && amount != p.amount {
            return TR::PendingTransferHasDifferentAmount;
        }
        match self.finished.get(&p.id) {
            Some(Finished::Posted) => return TR::PendingTransferAlreadyPosted,
            Some(Finished::Voided) => return TR::PendingTransferAlreadyVoided,
            Some(Finished::Expired) => return TR::PendingTransferExpired,
            None => assert!(self.open.contains_key(&p.id), "a pending transfer is open or finished"),
        }
        let dr = self.accounts[&p.debit_account_id];
        let cr = self.accounts[&p.credit_account_id];
        if post && dr.debits_posted.checked_add(amount).is_none() {
            return TR::OverflowsDebitsPosted;
        }
        if post && cr.credits_posted.checked_add(amount).is_none() {
            return TR::OverflowsCreditsPosted;
        }
        if self.transfers.len() >= self.config.transfers_max as usize {
            return TR::TransfersLimitReached;
        }

        let timestamp = self.next_timestamp();
        self.release(&p, if post { Finished::Posted } else { Finished::Voided });
        if post {
            self.accounts.get_mut(&p.debit_account_id).expect("held").debits_posted += amount;
            self.accounts.get_mut(&p.credit_account_id).expect("held").credits_posted += amount;
        }
        let or = |sent: u128, pending: u128| if sent == 0 { pending } else { sent };
        self.push_transfer(Transfer {
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
            timestamp,
        });
        TR::Ok
    }

    /// Ends pending transfer `p`: its reservation is released; a void or an
    /// expiry reopens the accounts it closed.
    fn release(&mut self, p: &Transfer, how: Finished) {
        assert!(self.open.remove(&p.id).is_some(), "only an open pending transfer is released");
        self.finished.insert(p.id, how);
        self.finished_unchecked.push(p.id);
        let reopen = how != Finished::Posted;
        let dr = self.accounts.get_mut(&p.debit_account_id).expect("held");
        dr.debits_pending = dr.debits_pending.checked_sub(p.amount).expect("reserved");
        if reopen && p.flags.contains(TF::CLOSING_DEBIT) {
            dr.flags.0 &= !AF::CLOSED.0;
        }
        let cr = self.accounts.get_mut(&p.credit_account_id).expect("held");
        cr.credits_pending = cr.credits_pending.checked_sub(p.amount).expect("reserved");
        if reopen && p.flags.contains(TF::CLOSING_CREDIT) {
            cr.flags.0 &= !AF::CLOSED.0;
        }
    }

    fn push_transfer(&mut self, t: Transfer) {
        self.transfer_index.insert(t.id, self.transfers.len());
        self.transfers.push(t);
        self.record_history([t.debit_account_id, t.credit_account_id], t.timestamp);
    }

    fn record_history(&mut self, ids: [u128; 2], timestamp: u64) {
        for id in ids {
            let a = self.accounts[&id];
            if a.flags.contains(AF::HISTORY) {
                self.history.entry(id).or_default().push(AccountBalance {
                    debits_pending: a.debits_pending,
                    debits_posted: a.debits_posted,
                    credits_pending: a.credits_pending,
                    credits_posted: a.credits_posted,
                    timestamp,
                    reserved: [0; 56],
                });
            }
        }
    }

    // ------------------------------------------------------------------
    // Time.

    /// Moves logical time to `now_ns` (never back, clamped at
    /// `CLOCK_NS_MAX`) and expires every open pending transfer whose
    /// timeout has passed, earliest first (then oldest first). Returns
    /// their ids.
    pub fn tick(&mut self, now_ns: u64) -> Vec<u128> {
        self.clock_ns = self.clock_ns.max(now_ns.min(CLOCK_NS_MAX));
        let mut due: Vec<(u64, usize, u128)> = self
            .open
            .iter()
            .filter(|(_, &at)| at <= self.clock_ns)
            .map(|(&id, &at)| (at, self.transfer_index[&id], id))
            .collect();
        due.sort_unstable();
        let mut expired = Vec::with_capacity(due.len());
        for (_, place, id) in due {
            let p = self.transfers[place];
            let timestamp = self.next_timestamp();
            self.release(&p, Finished::Expired);
            self.record_history([p.debit_account_id, p.credit_account_id], timestamp);
            expired.push(id);
        }
        expired
    }

    // ------------------------------------------------------------------
    // Checks.

    /// Per ledger, debits equal credits, posted and pending, and the open
    /// pending transfers add up to the pending balances: the model's own
    /// invariant, so a wrong model fails loudly rather than agreeing with a
    /// wrong engine.
    pub fn check_conservation(&self) -> Result<(), String> {
        let mut sums: BTreeMap<u32, [u128; 5]> = BTreeMap::new();
        for a in self.accounts.values() {
            let s = sums.entry(a.ledger).or_default();
            // Modulo 2^128, as the engine sums them: amounts near u128::MAX are sent.
            for (sum, balance) in
                s.iter_mut().zip([a.debits_posted, a.credits_posted, a.debits_pending, a.credits_pending])
            {
                *sum = sum.wrapping_add(balance);
            }
        }
        for id in self.open.keys() {
            let t = self.transfer(*id).expect("open pending transfers exist");
            let sum = &mut sums.entry(t.ledger).or_default()[4];
            *sum = sum.wrapping_add(t.amount);
        }
        for (ledger, [dp, cp, dq, cq, open]) in sums {
            if dp != cp || dq != cq || dq != open {
                return Err(format!(
                    "model, ledger {ledger}: debits_posted {dp} credits_posted {cp} debits_pending {dq} \
                     credits_pending {cq} open pending transfers {open}"
                ));
            }
        }
        Ok(())
    }

    /// Compares the engine with the model: every account, the transfers
    /// created since the last check (every one when `full`), the state of
    /// every pending transfer created or finished since the last check
    /// (every one when `full`), the clock and the last timestamp;
    /// when `full` also every balance history. Also checks that no open
    /// pending transfer is past its expiry: expiry happens exactly when the
    /// logical clock says.
    pub fn check(&mut self, engine: &Engine, full: bool) -> Result<(), String> {
        if engine.clock_ns() != self.clock_ns {
            return Err(format!("clock: engine {} model {}", engine.clock_ns(), self.clock_ns));
        }
        if engine.timestamp_last() != self.timestamp_last {
            return Err(format!(
                "timestamp_last: engine {} model {}",
                engine.timestamp_last(),
                self.timestamp_last
            ));
        }
        let accounts = engine.accounts();
        if accounts.len() != self.account_order.len() {
            return Err(format!(
                "accounts: engine holds {} model {}",
                accounts.len(),
                self.account_order.len()
            ));
        }
        for (a, id) in accounts.iter().zip(&self.account_order) {
            if a != &self.accounts[id] {
                return Err(format!("account {id}: engine {a:?} model {:?}", self.accounts[id]));
            }
        }
        let transfers = engine.transfers();
        if transfers.len() != self.transfers.len() {
            return Err(format!(
                "transfers: engine holds {} model {}",
                transfers.len(),
                self.transfers.len()
            ));
        }
        let from = if full { 0 } else { self.checked_transfers.min(self.transfers.len()) };
        let ids: Vec<u128> = self.transfers[from..].iter().map(|t| t.id).collect();
        let mut found = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(engine.config().batch_events_max as usize) {
            engine.lookup_transfers(chunk, &mut found).map_err(|e| e.to_string())?;
        }
        if found[..] != self.transfers[from..]
            || (from..transfers.len()).any(|i| transfers[i] != self.transfers[i])
        {
            let i = (from..self.transfers.len())
                .find(|&i| {
                    transfers[i] != self.transfers[i] || found.get(i - from) != Some(&self.transfers[i])
                })
                .unwrap_or(from);
            return Err(format!(
                "transfer {}: engine {:?} (lookup {:?}) model {:?}",
                self.transfers[i].id,
                transfers[i],
                found.get(i - from),
                self.transfers[i]
            ));
        }
        // Pending transfers created since the last check (all, when full).
        let created: Vec<u128> =
            self.transfers[from..].iter().filter(|t| t.flags.contains(TF::PENDING)).map(|t| t.id).collect();
        self.checked_transfers = self.transfers.len();
        let state = |finished: Option<Finished>| match finished {
            None => TransferState::Pending,
            Some(Finished::Posted) => TransferState::Posted,
            Some(Finished::Voided) => TransferState::Voided,
            Some(Finished::Expired) => TransferState::Expired,
        };
        let finished: Vec<u128> = if full {
            self.finished.keys().copied().collect()
        } else {
            std::mem::take(&mut self.finished_unchecked)
        };
        self.finished_unchecked.clear();
        // A pending transfer the engine ended on its own would show in the
        // accounts (compared above): between full checks, only those that
        // began or ended are looked up.
        for id in created.iter().chain(&finished) {
            let expected = state(self.finished.get(id).copied());
            if engine.transfer_state(*id) != Some(expected) {
                return Err(format!(
                    "pending transfer {id}: engine {:?} model {expected:?}",
                    engine.transfer_state(*id)
                ));
            }
        }
        if let Some((id, at)) = self.open.iter().find(|(_, &at)| at <= self.clock_ns) {
            return Err(format!("pending transfer {id} is open at {} past its expiry {at}", self.clock_ns));
        }
        if full {
            for (t, i) in self.transfers.iter().zip(0..) {
                if !t.flags.contains(TF::PENDING) && engine.transfer_state(t.id) != Some(TransferState::Final)
                {
                    return Err(format!(
                        "transfer {} (slot {i}): engine state {:?}, not final",
                        t.id,
                        engine.transfer_state(t.id)
                    ));
                }
            }
            for id in &self.account_order {
                let mut filter = AccountFilter::for_account(*id, engine.config().query_results_max);
                let mut got = Vec::new();
                loop {
                    let mut page = Vec::new();
                    engine.get_account_balances(&filter, &mut page).map_err(|e| e.to_string())?;
                    let Some(last) = page.last() else { break };
                    filter.timestamp_min = last.timestamp + 1;
                    got.extend(page);
                }
                let expected = self.history.get(id).map_or(&[][..], Vec::as_slice);
                if got != expected {
                    return Err(format!(
                        "balance history of {id}: engine {} points, model {}",
                        got.len(),
                        expected.len()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// The answer to re-sending `t` when `e` holds its id: `exists`, or the
/// first field that differs, in the documented order. Post and void inherit
/// from the pending transfer what they send as 0, so a 0 matches; a
/// balancing transfer's amount is a cap, so any cap at least the amount
/// applied matches.
pub fn exists_code(t: &Transfer, e: &Transfer) -> TR {
    let inherits = t.flags.contains(TF::POST_PENDING) || t.flags.contains(TF::VOID_PENDING);
    let same = |sent: u128, stored: u128| sent == stored || (inherits && sent == 0);
    let balancing = t.flags.contains(TF::BALANCING_DEBIT) || t.flags.contains(TF::BALANCING_CREDIT);
    if t.flags != e.flags {
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(id: u128, flags: AF) -> Account {
        Account { id, ledger: 1, code: 1, flags, ..Account::default() }
    }

    fn transfer(id: u128, debit: u128, credit: u128, amount: u128) -> Transfer {
        Transfer {
            id,
            debit_account_id: debit,
            credit_account_id: credit,
            amount,
            ledger: 1,
            code: 1,
            ..Transfer::default()
        }
    }

    /// The model is a table of the documented results: a few rows that the
    /// sim's agreement with the engine would not prove on its own.
    #[test]
    fn the_model_gives_the_documented_codes() {
        let mut m = Model::new(Config { transfers_max: 4, ..Config::default() });
        assert_eq!(
            m.create_accounts(&[
                account(1, AF::NONE),
                account(2, AF::DEBITS_MUST_NOT_EXCEED_CREDITS),
                account(1, AF::HISTORY)
            ]),
            [AR::Ok, AR::Ok, AR::ExistsWithDifferentFlags]
        );
        m.tick(10 * NS_PER_S);
        let pending = Transfer { flags: TF::PENDING, timeout: 2, ..transfer(11, 1, 2, 50) };
        let results = m.create_transfers(&[
            transfer(10, 1, 2, 100),
            transfer(10, 1, 2, 100),
            transfer(12, 2, 1, 101),
            pending,
            Transfer { flags: TF::POST_PENDING, pending_id: 11, ..transfer(13, 0, 0, 20) },
            Transfer { flags: TF::VOID_PENDING, pending_id: 11, ..transfer(14, 0, 0, 0) },
            Transfer { flags: TF::LINKED, ..transfer(15, 2, 1, 10) },
            transfer(16, 2, 3, 1),
            Transfer { flags: TF::LINKED, ..transfer(17, 2, 1, 1) },
        ]);
        assert_eq!(
            results,
            [
                TR::Ok,
                TR::Exists,
                TR::ExceedsCredits,
                TR::Ok,
                TR::Ok,
                TR::PendingTransferAlreadyPosted,
                TR::LinkedEventFailed,
                TR::CreditAccountNotFound,
                TR::LinkedEventChainOpen,
            ]
        );
        // A partial post moved 20 and released the other 30.
        assert_eq!(m.accounts[&2].credits_posted, 120);
        assert_eq!(m.accounts[&1].debits_pending, 0);
        m.check_conservation().unwrap();
        // Expiry: a pending transfer with a 2 s timeout expires at exactly
        // its timestamp + 2 s, and not a nanosecond before.
        let results = m.create_transfers(&[Transfer { id: 18, ..pending }]);
        assert_eq!(results, [TR::Ok]);
        let at = m.transfer(18).unwrap().timestamp + 2 * NS_PER_S;
        assert_eq!(m.tick(at - 1), Vec::<u128>::new());
        assert_eq!(m.tick(at), [18]);
        assert_eq!(m.create_transfers(&[transfer(19, 1, 2, 1)]), [TR::TransfersLimitReached]);
        m.check_conservation().unwrap();
    }
}
