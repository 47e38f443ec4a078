//! Cross-shard transfers: a two-phase protocol between the debit shard (which
//! coordinates) and the credit shard, every step journaled.
//!
//! ```text
//!  debit shard Sd (owns A)                            credit shard Sc (owns B)
//!  1. client batch journaled as sent; applying it turns T into
//!     pending T.id  A → bridge(Sd→Sc, ledger)  (A's checks)
//!     and opens the intent {T as sent}
//!  2. ── Credits[legs] (rkyv, ring Sd→Sc) ──────────►  journal Credits: T.id bridge(Sc→Sd) → B
//!                                                     (B's checks; a re-sent leg answers ok;
//!                                                      a failure leaves a tombstone so every
//!                                                      later copy gets the same answer)
//!     ◄──────────────── Answers[(T.id, code)] ──────
//!  3. journal Settles: post (ok) or void (code) of the pending leg → reply to the caller
//! ```
//!
//! Everything here is deterministic and I/O-free: [`Cross::apply`] turns one
//! journaled command into engine commands against the current state, so live
//! application and replay after a crash give the same state. The client's
//! batch is journaled *as sent*; which of its events are cross-shard, which
//! are rejected by the shard layer, and the legs they become are derived
//! again on replay.
//!
//! **Reserved ids.** Ids with `id >> 96 == 0xFFFF_FFFF` ([`RESERVED_ID_MIN`]
//! and up) belong to the shards; clients get `id_must_not_be_reserved` (and
//! `debit/credit_account_id_must_not_be_reserved`). Inside the range, bits
//! 88..96 name the kind:
//!
//! | kind | id | what |
//! |---|---|---|
//! | 1 bridge account | `shard << 64 \| peer << 32 \| ledger` | carries value in flight between `shard` and `peer`, on `shard` |
//! | 2 sink account | `shard << 64 \| ledger` | the credit side of tombstones (zero-amount records of failed credits) |
//! | 3 settle transfer | `shard << 64 \| timestamp of the pending leg` | the post or void of a pending leg: `user_data_128` = the credit account, `user_data_32` = the failure code of a void |
//! | 4 move transfer | `shard << 64 \| nonce` | a move between the parts of a sharded account made by the rebalancer ([`crate::rebalance`]) from `shard`; the only reserved id a write may carry, and only on a move ([`crate::route::part_move`]) |
//!
//! **Invariants**: every shard balances on its own (the engine checks it);
//! per ledger, the bridges of a pair of shards net to zero once no intent is
//! open ([`check_bridges`]); every open intent has exactly one pending leg
//! and every pending leg an intent ([`Cross::check`]); a transfer slot is
//! kept free for the settle of every open intent (so a settle never fails).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use molly_engine::{
    Account, AccountFlags, BatchError, CreateAccountResult as AR, CreateTransferResult as TR, Engine,
    Transfer, TransferFlags as TF,
};

use crate::buggify::buggify;
use crate::durable::Outcome;
use crate::journal::Command;
use crate::route::{credit_peer, is_sharded, owns, part_move};

/// The first id reserved for the shards' own accounts and transfers.
pub const RESERVED_ID_MIN: u128 = 0xFFFF_FFFF << 96;
/// Shard numbers fit 16 bits of a reserved id.
pub const SHARDS_MAX: u32 = 1 << 16;
/// `code` of bridge and sink accounts.
pub const ACCOUNT_CODE_SHARD: u16 = u16::MAX;

const KIND_BRIDGE: u128 = 1;
const KIND_SINK: u128 = 2;
const KIND_SETTLE: u128 = 3;
const KIND_MOVE: u128 = 4;

/// True for ids the shards reserve (clients cannot use them).
#[inline(always)]
pub fn is_reserved(id: u128) -> bool {
    id >= RESERVED_ID_MIN
}

fn reserved(kind: u128, shard: u32, low: u128) -> u128 {
    assert!(shard < SHARDS_MAX);
    RESERVED_ID_MIN | (kind << 88) | (u128::from(shard) << 64) | low
}

/// The bridge account on `shard` for value in flight to or from `peer`, in `ledger`.
pub fn bridge_id(shard: u32, peer: u32, ledger: u32) -> u128 {
    assert!(peer < SHARDS_MAX);
    assert_ne!(shard, peer);
    reserved(KIND_BRIDGE, shard, (u128::from(peer) << 32) | u128::from(ledger))
}

/// The sink account on `shard` in `ledger` (credit side of tombstones).
pub fn sink_id(shard: u32, ledger: u32) -> u128 {
    reserved(KIND_SINK, shard, u128::from(ledger))
}

/// The id of the post or void that settles the pending leg created at `timestamp` on `shard`.
pub fn settle_id(shard: u32, timestamp: u64) -> u128 {
    reserved(KIND_SETTLE, shard, u128::from(timestamp))
}

/// The id of the rebalancer's move between parts number `nonce`, from `shard`.
pub fn move_id(shard: u32, nonce: u64) -> u128 {
    reserved(KIND_MOVE, shard, u128::from(nonce))
}

/// True for a rebalancer's move id.
pub fn is_move_id(id: u128) -> bool {
    is_reserved(id) && (id >> 88) & 0xFF == KIND_MOVE
}

/// A bridge account's place: it lives on `shard`, faces `peer`, in `ledger`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bridge {
    /// The shard holding it.
    pub shard: u32,
    /// The shard on the other side.
    pub peer: u32,
    /// The ledger.
    pub ledger: u32,
}

/// Decodes a bridge account id.
pub fn bridge_of(id: u128) -> Option<Bridge> {
    let kind = (id >> 88) & 0xFF;
    let spare = (id >> 80) & 0xFF | (id >> 48) & 0xFFFF;
    if !is_reserved(id) || kind != KIND_BRIDGE || spare != 0 {
        return None;
    }
    let shard = ((id >> 64) & 0xFFFF) as u32;
    let peer = ((id >> 32) & 0xFFFF) as u32;
    (shard != peer).then_some(Bridge { shard, peer, ledger: id as u32 })
}

/// True for a sink account id.
pub fn is_sink(id: u128) -> bool {
    is_reserved(id) && (id >> 88) & 0xFF == KIND_SINK
}

/// A pending leg on its debit shard: credits a bridge of that shard, pending.
pub fn is_debit_leg(t: &Transfer) -> bool {
    t.flags.contains(TF::PENDING) && bridge_of(t.credit_account_id).is_some()
}

/// A credit leg on its credit shard: debits a bridge, credits a client account.
pub fn is_credit_leg(t: &Transfer) -> bool {
    bridge_of(t.debit_account_id).is_some() && !is_reserved(t.credit_account_id)
}

/// An open intent: a cross-shard transfer whose pending leg is journaled and
/// whose credit leg's answer has not been settled yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intent {
    /// The transfer exactly as the client sent it.
    pub sent: Transfer,
    /// The amount reserved on the debit account (a `balancing_debit` cap clamped).
    pub amount: u128,
    /// The credit shard.
    pub peer: u32,
    /// The pending leg's timestamp (names its settle: [`settle_id`]).
    pub leg_timestamp: u64,
}

impl Intent {
    /// The credit leg the peer journals.
    pub fn credit_leg(&self, shard: u32) -> Transfer {
        let t = &self.sent;
        Transfer {
            id: t.id,
            debit_account_id: bridge_id(self.peer, shard, t.ledger),
            credit_account_id: t.credit_account_id,
            amount: self.amount,
            pending_id: 0,
            user_data_128: t.user_data_128,
            user_data_64: t.user_data_64,
            user_data_32: t.user_data_32,
            timeout: 0,
            ledger: t.ledger,
            code: t.code,
            // A clamped amount of 0 is recorded as the engine records a
            // balancing transfer of 0 (a 0 cap clamps to 0 on any bridge).
            flags: if self.amount == 0 { TF::BALANCING_DEBIT } else { TF::NONE },
            timestamp: 0,
        }
    }
}

/// What applying one command produced for the shard's driver.
#[derive(Debug, Default)]
pub struct Effects {
    /// Events whose result waits for an open intent: (event index, T.id,
    /// true when this event opened it, false for an identical retry).
    pub waits: Vec<(u32, u128, bool)>,
    /// Intents opened, in event order.
    pub opened: Vec<u128>,
    /// The peer a `Credits` command came from, and the answer per leg.
    pub answers: Option<(u32, Vec<(u128, TR)>)>,
    /// Intents settled, with the final code of the transfer.
    pub settled: Vec<(u128, TR)>,
}

impl Effects {
    /// Empties it for the next command.
    pub fn clear(&mut self) {
        self.waits.clear();
        self.opened.clear();
        self.answers = None;
        self.settled.clear();
    }
}

/// How the shard layer treats one client event.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// To the engine as sent.
    Raw,
    /// Cross-shard: becomes a pending leg to the bridge of `peer`.
    Cross(u32),
    /// Rejected by the shard layer with this code (the engine sees it with
    /// `timestamp = 1`, so a linked chain fails exactly as the engine fails it).
    Poison(TR),
    /// In a closed linked chain that spans shards.
    Chain,
}

/// A fast hasher with a fixed seed (foldhash): the same inserts give the same
/// map on every run. Like the engine's id index, it is not keyed per process:
/// ids come from authenticated clients, and every map it serves is bounded.
pub type FixedHasher = foldhash::fast::FixedState;

/// One shard's cross-shard state: the open intents (the only state the
/// engine does not hold; snapshots carry it).
#[derive(Clone, Debug)]
pub struct Cross {
    shard: u32,
    shards: u32,
    intents: HashMap<u128, Intent, FixedHasher>,
    /// Sharded accounts with a balance limit that have a part here: what
    /// the rebalancer watches.
    limited_parts: BTreeSet<u128>,
    scratch_accounts: Vec<Account>,
    scratch_transfers: Vec<Transfer>,
    /// The batch as the engine runs it (kept to avoid a large allocation per batch).
    scratch_events: Vec<Transfer>,
    scratch_kinds: Vec<Kind>,
    scratch_bridges: Vec<u128>,
}

impl Cross {
    /// No open intents, for shard `shard` of `shards`.
    pub fn new(shard: u32, shards: u32) -> Self {
        assert!((1..=SHARDS_MAX).contains(&shards));
        assert!(shard < shards);
        Self {
            shard,
            shards,
            intents: HashMap::default(),
            limited_parts: BTreeSet::new(),
            scratch_accounts: Vec::new(),
            scratch_transfers: Vec::new(),
            scratch_events: Vec::new(),
            scratch_kinds: Vec::new(),
            scratch_bridges: Vec::new(),
        }
    }

    /// Rebuilds the open intents from a snapshot's list (transfers as sent)
    /// and checks them against the engine.
    pub fn import(shard: u32, shards: u32, engine: &Engine, sent: &[Transfer]) -> Result<Self, String> {
        let mut cross = Self::new(shard, shards);
        cross.limited_parts = engine.accounts().iter().filter(|a| is_limited_part(a)).map(|a| a.id).collect();
        for t in sent {
            let Some(leg) = cross.transfer(engine, t.id) else {
                return Err(format!("intent {} has no pending leg", t.id));
            };
            let peer = credit_peer(t, shard, shards);
            let Some(peer) = peer.filter(|_| is_debit_leg(&leg) && !cross.intents.contains_key(&t.id)) else {
                return Err(format!("intent {} does not match its pending leg", t.id));
            };
            cross
                .intents
                .insert(t.id, Intent { sent: *t, amount: leg.amount, peer, leg_timestamp: leg.timestamp });
        }
        cross.check(engine)?;
        Ok(cross)
    }

    /// The shard.
    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// The open intents, by transfer id.
    pub fn intents(&self) -> &HashMap<u128, Intent, FixedHasher> {
        &self.intents
    }

    /// The ids of the open intents, in order.
    pub fn open_ids(&self) -> Vec<u128> {
        let mut ids: Vec<u128> = self.intents.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// The sharded accounts with a balance limit that have a part here, by id.
    pub fn limited_parts(&self) -> &BTreeSet<u128> {
        &self.limited_parts
    }

    /// The open intents as the client sent them, by id (what a snapshot keeps).
    pub fn export(&self) -> Vec<Transfer> {
        self.open_ids().iter().map(|id| self.intents[id].sent).collect()
    }

    /// Every open intent has one pending leg in the engine, and every pending
    /// leg of this shard an open intent. Reads only the pending transfers'
    /// records (recovery runs it: evicted history stays on disk).
    pub fn check(&self, engine: &Engine) -> Result<(), String> {
        let mut legs = 0usize;
        for t in engine.pending_transfers() {
            if is_debit_leg(t) {
                legs += 1;
                let Some(intent) = self.intents.get(&t.id) else {
                    return Err(format!("pending leg {} has no open intent", t.id));
                };
                if intent.amount != t.amount || t.debit_account_id != intent.sent.debit_account_id {
                    return Err(format!("pending leg {} differs from its intent", t.id));
                }
            }
        }
        if legs != self.intents.len() {
            return Err(format!("{} open intents but {legs} pending legs", self.intents.len()));
        }
        Ok(())
    }

    fn transfer(&mut self, engine: &Engine, id: u128) -> Option<Transfer> {
        self.scratch_transfers.clear();
        engine.lookup_transfers(&[id], &mut self.scratch_transfers).expect("one id");
        self.scratch_transfers.first().copied()
    }

    fn account(&mut self, engine: &Engine, id: u128) -> Option<Account> {
        self.scratch_accounts.clear();
        engine.lookup_accounts(&[id], &mut self.scratch_accounts).expect("one id");
        self.scratch_accounts.first().copied()
    }

    /// Transfers this shard may still create, keeping one slot per open
    /// intent for its settle.
    fn budget(&self, engine: &Engine) -> usize {
        let used = engine.transfers().len() + self.intents.len();
        let max = engine.config().transfers_max as usize;
        assert!(used <= max, "a settle slot is kept for every open intent");
        max - used
    }

    /// Applies one journaled command: the only way a sharded core changes
    /// its engine, live and on replay alike.
    pub fn apply(
        &mut self,
        engine: &mut Engine,
        command: &Command<'_>,
        expired: &mut Vec<u128>,
        effects: &mut Effects,
    ) -> Result<Outcome, BatchError> {
        effects.clear();
        let max = engine.config().batch_events_max as usize;
        let events = match command {
            Command::Tick { .. } => 0,
            Command::CreateAccounts(a) => a.len(),
            Command::CreateTransfers(t) | Command::Credits(t) | Command::Settles(t) => t.len(),
        };
        if events > max {
            return Err(BatchError::TooManyEvents { events, max: max as u32 });
        }
        Ok(match command {
            Command::Tick { .. } => crate::durable::apply(engine, command, expired)?,
            Command::CreateAccounts(accounts) => Outcome::Accounts(self.create_accounts(engine, accounts)?),
            Command::CreateTransfers(batch) => {
                Outcome::Transfers(self.create_transfers(engine, batch, effects)?)
            }
            Command::Credits(legs) => Outcome::Transfers(self.credits(engine, legs, effects)?),
            Command::Settles(legs) => Outcome::Transfers(self.settles(engine, legs, effects)?),
        })
    }

    fn create_accounts(&mut self, engine: &mut Engine, accounts: &[Account]) -> Result<Vec<AR>, BatchError> {
        let mut results = Vec::with_capacity(accounts.len());
        let poisoned = |a: &Account| {
            a.timestamp == 0
                && a.reserved == 0
                && !a.flags.has_reserved()
                && a.id != u128::MAX
                && is_reserved(a.id)
        };
        if !accounts.iter().any(poisoned) {
            engine.create_accounts(accounts, &mut results)?;
        } else {
            let events: Vec<Account> = accounts
                .iter()
                .map(|a| if poisoned(a) { Account { timestamp: 1, ..*a } } else { *a })
                .collect();
            engine.create_accounts(&events, &mut results)?;
            for (result, a) in results.iter_mut().zip(accounts) {
                if poisoned(a) && *result == AR::TimestampMustBeZero {
                    *result = AR::IdMustNotBeReserved;
                }
            }
        }
        for (a, result) in accounts.iter().zip(&results) {
            if *result == AR::Ok && is_limited_part(a) {
                self.limited_parts.insert(a.id);
            }
        }
        Ok(results)
    }

    /// How the shard layer treats `t`. Only a rejection looks up whether
    /// the id exists (the engine's `exists*` comes first); a cross-shard
    /// event whose id exists becomes a pending leg all the same, the engine
    /// answers `exists*` and `resolve_exists` re-checks it against what the
    /// client sent.
    fn classify(&mut self, engine: &Engine, t: &Transfer, legs_in_batch: &BTreeSet<u128>) -> Kind {
        if t.timestamp != 0 || t.flags.has_reserved() || t.id == 0 || t.id == u128::MAX {
            return Kind::Raw;
        }
        if is_reserved(t.id) && !(is_move_id(t.id) && part_move(t, self.shards).is_some()) {
            return Kind::Poison(TR::IdMustNotBeReserved);
        }
        let poison = |cross: &mut Self, code| {
            if cross.transfer(engine, t.id).is_some() {
                Kind::Raw
            } else {
                Kind::Poison(code)
            }
        };
        let phase = TF::PENDING.0 | TF::POST_PENDING.0 | TF::VOID_PENDING.0;
        if (t.flags.0 & phase).count_ones() > 1 {
            return Kind::Raw;
        }
        if t.flags.intersects(TF::POST_PENDING | TF::VOID_PENDING) {
            let balancing_or_closing =
                TF::BALANCING_DEBIT | TF::BALANCING_CREDIT | TF::CLOSING_DEBIT | TF::CLOSING_CREDIT;
            if t.flags.intersects(balancing_or_closing)
                || t.pending_id == 0
                || t.pending_id == u128::MAX
                || t.pending_id == t.id
                || t.timeout != 0
            {
                return Kind::Raw;
            }
            // A cross-shard transfer is plain to its client: its pending leg
            // is the shard's, never the client's to post or void.
            let leg = legs_in_batch.contains(&t.pending_id)
                || self.transfer(engine, t.pending_id).is_some_and(|p| is_debit_leg(&p));
            return if leg { poison(self, TR::PendingTransferNotPending) } else { Kind::Raw };
        }
        let (debit, credit) = (t.debit_account_id, t.credit_account_id);
        if debit == 0 || debit == u128::MAX || credit == 0 || credit == u128::MAX {
            return Kind::Raw;
        }
        if is_reserved(debit) {
            return poison(self, TR::DebitAccountIdMustNotBeReserved);
        }
        if is_reserved(credit) {
            return poison(self, TR::CreditAccountIdMustNotBeReserved);
        }
        let Some(peer) = credit_peer(t, self.shard, self.shards) else {
            return Kind::Raw;
        };
        let unsupported = TF::PENDING | TF::BALANCING_CREDIT | TF::CLOSING_DEBIT | TF::CLOSING_CREDIT;
        if t.flags.intersects(unsupported) {
            return poison(self, TR::CrossShardFlagsNotSupported);
        }
        if t.pending_id != 0 || t.timeout != 0 {
            // The engine rejects these before it looks at accounts.
            return Kind::Raw;
        }
        Kind::Cross(peer)
    }

    /// True when `t` credits an account on another shard (so a linked
    /// chain holding it spans shards).
    fn remote(&self, t: &Transfer) -> bool {
        credit_peer(t, self.shard, self.shards).is_some()
    }

    fn create_transfers(
        &mut self,
        engine: &mut Engine,
        batch: &[Transfer],
        effects: &mut Effects,
    ) -> Result<Vec<TR>, BatchError> {
        let mut results = Vec::with_capacity(batch.len());
        let touches_reserved = |t: &Transfer| {
            is_reserved(t.id) || is_reserved(t.debit_account_id) || is_reserved(t.credit_account_id)
        };
        let simple = !batch.iter().any(|t| t.pending_id != 0 || touches_reserved(t) || self.remote(t));
        // Fault point: a simple batch takes the general path (both must answer alike).
        if simple && 2 * batch.len() <= self.budget(engine) && !buggify!(10) {
            // Nothing for the shard layer to decide before the engine runs;
            // only an `exists*` answer may need the client's view.
            engine.create_transfers(batch, &mut results)?;
            if !self.intents.is_empty() || self.shards > 1 {
                for i in 0..batch.len() {
                    if is_exists(results[i]) {
                        results[i] = self.resolve_exists(engine, &batch[i], i as u32, results[i], effects);
                    }
                }
            }
            return Ok(results);
        }

        // 1. Classify every event against the state before the batch.
        let mut kinds = std::mem::take(&mut self.scratch_kinds);
        kinds.clear();
        kinds.resize(batch.len(), Kind::Raw);
        let mut open_from = batch.len();
        while open_from > 0 && batch[open_from - 1].flags.contains(TF::LINKED) {
            open_from -= 1;
        }
        // Only a post or void can name a pending leg made earlier in the batch.
        let completes = batch.iter().any(|t| t.flags.intersects(TF::POST_PENDING | TF::VOID_PENDING));
        let mut legs_in_batch = BTreeSet::new();
        for i in 0..open_from {
            kinds[i] = self.classify(engine, &batch[i], &legs_in_batch);
            if completes && matches!(kinds[i], Kind::Cross(_)) {
                legs_in_batch.insert(batch[i].id);
            }
        }
        // 2. A closed chain naming another shard's account is rejected whole.
        let mut start = 0;
        for i in 0..open_from {
            if batch[i].flags.contains(TF::LINKED) {
                continue;
            }
            if i > start && batch[start..=i].iter().any(|t| self.remote(t)) {
                kinds[start..=i].fill(Kind::Chain);
            }
            start = i + 1;
        }
        // 3. Keep a transfer slot for the settle of every intent. With none
        //    open and none to open, the engine's own limit is exact (checked
        //    last, as documented); a re-sent id creates nothing (`exists*`).
        let settles = !self.intents.is_empty() || kinds.iter().any(|k| matches!(k, Kind::Cross(_)));
        let mut budget = if settles { self.budget(engine) } else { usize::MAX };
        for (i, kind) in kinds.iter_mut().enumerate().take(open_from) {
            let cost = match kind {
                Kind::Raw => 1,
                Kind::Cross(_) => 2,
                Kind::Poison(_) | Kind::Chain => 0,
            };
            if cost <= budget {
                budget -= cost;
            } else if self.transfer(engine, batch[i].id).is_none() {
                *kind = Kind::Poison(TR::TransfersLimitReached);
            }
        }
        // 4. Bridges, created the first time a (peer, ledger) is needed: the
        //    transfer's ledger, or the debit account's when they differ (so the
        //    pending leg fails as a local transfer would).
        let mut bridges = std::mem::take(&mut self.scratch_bridges);
        bridges.clear();
        bridges.resize(batch.len(), 0);
        let mut known: Vec<(u32, u32)> = Vec::new();
        let mut missing: BTreeSet<(u32, u32)> = BTreeSet::new();
        for (i, kind) in kinds.iter().enumerate() {
            if let Kind::Cross(peer) = *kind {
                let t = &batch[i];
                let mut ledger = t.ledger;
                if !known.contains(&(peer, ledger)) {
                    if self.account(engine, bridge_id(self.shard, peer, ledger)).is_some() {
                        known.push((peer, ledger));
                    } else {
                        ledger = self.account(engine, t.debit_account_id).map_or(t.ledger, |a| a.ledger);
                        if ledger != 0 && self.account(engine, bridge_id(self.shard, peer, ledger)).is_none()
                        {
                            missing.insert((peer, ledger));
                        }
                    }
                }
                bridges[i] = bridge_id(self.shard, peer, ledger);
            }
        }
        if !missing.is_empty() {
            let accounts: Vec<Account> = missing
                .iter()
                .map(|&(peer, ledger)| shard_account(bridge_id(self.shard, peer, ledger), ledger))
                .collect();
            let mut created = Vec::new();
            // A bridge that cannot be created (unregistered ledger, account
            // limit) leaves its pending legs to fail `credit_account_not_found`.
            engine.create_accounts(&accounts, &mut created)?;
        }
        // 5. The engine runs the batch with pending legs and poisoned events in place.
        let mut events = std::mem::take(&mut self.scratch_events);
        events.clear();
        events.extend(batch.iter().zip(&kinds).enumerate().map(|(i, (t, kind))| match kind {
            Kind::Raw => *t,
            Kind::Poison(_) | Kind::Chain => Transfer { timestamp: 1, ..*t },
            Kind::Cross(_) => Transfer {
                credit_account_id: bridges[i],
                flags: TF(TF::PENDING.0 | (t.flags.0 & TF::BALANCING_DEBIT.0)),
                timeout: 0,
                ..*t
            },
        }));
        let created_from = engine.transfers().len();
        let ran = engine.create_transfers(&events, &mut results);
        self.scratch_events = events;
        self.scratch_bridges = bridges;
        ran?;
        // 6. Open an intent for every pending leg created. The engine appends
        //    one record per event that applied, in event order, so each leg
        //    is read from its slot (no id lookup).
        let mut slot = created_from;
        for (i, kind) in kinds.iter().enumerate() {
            if results[i] != TR::Ok {
                continue;
            }
            let record = engine.transfers().get(slot as u32);
            slot += 1;
            if let Kind::Cross(peer) = *kind {
                let t = batch[i];
                assert!(record.id == t.id && is_debit_leg(record), "the pending leg was just created");
                // What `settle_leg` names as the leg's accounts.
                assert!(record.debit_account_id == t.debit_account_id);
                assert!(record.credit_account_id == bridge_id(self.shard, peer, t.ledger));
                // Only a balancing transfer's amount can differ from the one sent.
                let (amount, leg_timestamp) = (record.amount, record.timestamp);
                let previous = self.intents.insert(t.id, Intent { sent: t, amount, peer, leg_timestamp });
                assert!(previous.is_none(), "a transfer id opens one intent");
                effects.opened.push(t.id);
                effects.waits.push((i as u32, t.id, true));
            }
        }
        assert_eq!(slot, engine.transfers().len(), "one record per event applied");
        // 7. Results as the client sees them.
        for (i, kind) in kinds.iter().enumerate() {
            let result = results[i];
            results[i] = match *kind {
                Kind::Chain => TR::LinkedEventChainCrossShard,
                Kind::Poison(code) if result == TR::TimestampMustBeZero => code,
                Kind::Poison(_) => result,
                Kind::Raw | Kind::Cross(_) if is_exists(result) => {
                    self.resolve_exists(engine, &batch[i], i as u32, result, effects)
                }
                Kind::Cross(_) => match result {
                    TR::OverflowsDebitsPending => TR::OverflowsDebitsPosted,
                    TR::OverflowsCreditsPending => TR::OverflowsCreditsPosted,
                    other => other,
                },
                Kind::Raw => result,
            };
        }
        self.scratch_kinds = kinds;
        Ok(results)
    }

    /// The answer to an event whose id exists: compared with the transfer
    /// the client sent (not with the legs it became). An identical retry of
    /// an open intent waits for it; of a settled one answers `exists` or the
    /// recorded failure.
    fn resolve_exists(
        &mut self,
        engine: &Engine,
        sent: &Transfer,
        event: u32,
        engine_result: TR,
        effects: &mut Effects,
    ) -> TR {
        let stored = self.transfer(engine, sent.id).expect("exists");
        if !is_debit_leg(&stored) {
            // For an event sent to the engine as it is, this is the engine's
            // own answer; for one turned into a pending leg, the answer for
            // what the client sent.
            let _ = engine_result;
            return exists_code(sent, &stored);
        }
        if let Some(intent) = self.intents.get(&sent.id) {
            let code = exists_code(sent, &user_view_of_leg(&stored, intent.sent.credit_account_id));
            if code == TR::Exists {
                effects.waits.push((event, sent.id, false));
            }
            return code;
        }
        let settle = self
            .transfer(engine, settle_id(self.shard, stored.timestamp))
            .expect("a settled leg has its settle");
        let code = exists_code(sent, &user_view_of_leg(&stored, settle.user_data_128));
        match (code, settle.flags.contains(TF::VOID_PENDING)) {
            (TR::Exists, true) => TR::from_u32(settle.user_data_32).expect("a void records a code"),
            _ => code,
        }
    }

    fn credits(
        &mut self,
        engine: &mut Engine,
        legs: &[Transfer],
        effects: &mut Effects,
    ) -> Result<Vec<TR>, BatchError> {
        let Some(first) = legs.first() else {
            effects.answers = Some((0, Vec::new()));
            return Ok(Vec::new());
        };
        let peer = bridge_of(first.debit_account_id).expect("a credit leg debits a bridge").peer;
        let mut ledgers = BTreeSet::new();
        for leg in legs {
            let bridge = bridge_of(leg.debit_account_id).expect("a credit leg debits a bridge");
            assert_eq!(
                bridge,
                Bridge { shard: self.shard, peer, ledger: leg.ledger },
                "legs of one peer, to this shard"
            );
            assert!(!is_reserved(leg.credit_account_id));
            assert!(owns(leg.credit_account_id, self.shard, self.shards), "the credit account is ours");
            assert!(leg.flags == TF::NONE || (leg.flags == TF::BALANCING_DEBIT && leg.amount == 0));
            ledgers.insert(leg.ledger);
        }
        let mut accounts = Vec::new();
        for &ledger in &ledgers {
            for id in [bridge_id(self.shard, peer, ledger), sink_id(self.shard, ledger)] {
                if self.account(engine, id).is_none() {
                    accounts.push(shard_account(id, ledger));
                }
            }
        }
        if !accounts.is_empty() {
            let mut created = Vec::new();
            engine.create_accounts(&accounts, &mut created)?;
        }
        // A new leg or its tombstone takes one slot; new legs past the budget
        // fail (the budget never grows back, so the answer is stable). A
        // copy of a leg already recorded takes none: it gets its answer.
        let budget = self.budget(engine);
        let mut results = Vec::with_capacity(legs.len());
        let mut over = Vec::new();
        if legs.len() <= budget {
            engine.create_transfers(legs, &mut results)?;
        } else {
            let mut room = budget;
            for leg in legs {
                let new = self.transfer(engine, leg.id).is_none();
                over.push(new && room == 0);
                room -= usize::from(new && room > 0);
            }
            let events: Vec<Transfer> = legs
                .iter()
                .zip(&over)
                .map(|(leg, &over)| if over { Transfer { timestamp: 1, ..*leg } } else { *leg })
                .collect();
            engine.create_transfers(&events, &mut results)?;
        }
        let mut tombstones = Vec::new();
        for (i, leg) in legs.iter().enumerate() {
            let result = results[i];
            results[i] = if over.get(i) == Some(&true) {
                TR::TransfersLimitReached
            } else if result.is_ok() {
                TR::Ok
            } else if is_exists(result) {
                let stored = self.transfer(engine, leg.id).expect("exists");
                if stored.debit_account_id != leg.debit_account_id {
                    result
                } else if is_sink(stored.credit_account_id) {
                    TR::from_u32(stored.user_data_32).expect("a tombstone records a code")
                } else {
                    assert_eq!(result, TR::Exists, "a re-sent credit leg is identical");
                    TR::Ok
                }
            } else {
                // Remember the failure, so a copy of this leg that arrives
                // later (after a crash of either side) gets the same answer.
                tombstones.push(Transfer {
                    credit_account_id: sink_id(self.shard, leg.ledger),
                    amount: 0,
                    user_data_128: 0,
                    user_data_64: 0,
                    user_data_32: result as u32,
                    flags: TF::BALANCING_DEBIT,
                    ..*leg
                });
                result
            };
        }
        if !tombstones.is_empty() {
            let mut created = Vec::new();
            // Without its bridge (unregistered ledger, account limit) a
            // tombstone cannot be written: then the failure is stable anyway.
            engine.create_transfers(&tombstones, &mut created)?;
        }
        effects.answers =
            Some((peer, legs.iter().zip(&results).map(|(leg, &code)| (leg.id, code)).collect()));
        Ok(results)
    }

    fn settles(
        &mut self,
        engine: &mut Engine,
        legs: &[Transfer],
        effects: &mut Effects,
    ) -> Result<Vec<TR>, BatchError> {
        for s in legs {
            let intent = self.intents.get(&s.pending_id).expect("a settle names an open intent");
            assert_eq!(s.user_data_128, intent.sent.credit_account_id);
            assert!(s.flags == TF::POST_PENDING || s.flags == TF::VOID_PENDING);
        }
        let mut results = Vec::with_capacity(legs.len());
        engine.create_transfers(legs, &mut results)?;
        for (s, result) in legs.iter().zip(&results) {
            assert_eq!(*result, TR::Ok, "settling an open intent cannot fail (its slot is kept)");
            self.intents.remove(&s.pending_id).expect("open");
            let code = if s.flags.contains(TF::VOID_PENDING) {
                TR::from_u32(s.user_data_32).expect("a void records a code")
            } else {
                TR::Ok
            };
            effects.settled.push((s.pending_id, code));
        }
        Ok(results)
    }

    /// The post (answer ok) or void (any other answer, recorded) of intent
    /// `id`, to journal as part of a `Settles` command.
    pub fn settle_leg(&self, id: u128, answer: TR) -> Transfer {
        let intent = &self.intents[&id];
        Transfer {
            id: settle_id(self.shard, intent.leg_timestamp),
            pending_id: id,
            // The pending leg's accounts: the engine checks they match, and
            // prefetches them ahead of the settle like any transfer's.
            debit_account_id: intent.sent.debit_account_id,
            credit_account_id: bridge_id(self.shard, intent.peer, intent.sent.ledger),
            user_data_128: intent.sent.credit_account_id,
            user_data_32: if answer.is_ok() { 0 } else { answer as u32 },
            flags: if answer.is_ok() { TF::POST_PENDING } else { TF::VOID_PENDING },
            ..Transfer::default()
        }
    }
}

/// A part of a sharded account with a balance limit.
fn is_limited_part(a: &Account) -> bool {
    is_sharded(a.id)
        && a.flags.intersects(
            AccountFlags::DEBITS_MUST_NOT_EXCEED_CREDITS | AccountFlags::CREDITS_MUST_NOT_EXCEED_DEBITS,
        )
}

fn shard_account(id: u128, ledger: u32) -> Account {
    Account { id, ledger, code: ACCOUNT_CODE_SHARD, flags: AccountFlags::NONE, ..Account::default() }
}

fn is_exists(result: TR) -> bool {
    matches!(
        result,
        TR::Exists
            | TR::ExistsWithDifferentFlags
            | TR::ExistsWithDifferentPendingId
            | TR::ExistsWithDifferentTimeout
            | TR::ExistsWithDifferentDebitAccountId
            | TR::ExistsWithDifferentCreditAccountId
            | TR::ExistsWithDifferentAmount
            | TR::ExistsWithDifferentUserData128
            | TR::ExistsWithDifferentUserData64
            | TR::ExistsWithDifferentUserData32
            | TR::ExistsWithDifferentLedger
            | TR::ExistsWithDifferentCode
    )
}

/// The transfer the client sent, seen through its pending leg and credit account.
fn user_view_of_leg(leg: &Transfer, credit_account_id: u128) -> Transfer {
    Transfer { credit_account_id, flags: TF(leg.flags.0 & !TF::PENDING.0), timeout: 0, ..*leg }
}

/// The engine's answer to re-sending `sent` when `stored` has its id, in the
/// engine's order (`exists` or the first `exists_with_different_*`).
pub fn exists_code(sent: &Transfer, stored: &Transfer) -> TR {
    let (t, e) = (sent, stored);
    if t.flags != e.flags {
        return TR::ExistsWithDifferentFlags;
    }
    let inherits = t.flags.intersects(TF::POST_PENDING | TF::VOID_PENDING);
    let same = |sent: u128, stored: u128| sent == stored || (inherits && sent == 0);
    if t.pending_id != e.pending_id {
        return TR::ExistsWithDifferentPendingId;
    }
    if t.timeout != e.timeout {
        return TR::ExistsWithDifferentTimeout;
    }
    if !same(t.debit_account_id, e.debit_account_id) {
        return TR::ExistsWithDifferentDebitAccountId;
    }
    if !same(t.credit_account_id, e.credit_account_id) {
        return TR::ExistsWithDifferentCreditAccountId;
    }
    let balancing = t.flags.intersects(TF::BALANCING_DEBIT | TF::BALANCING_CREDIT);
    if !(if balancing { t.amount >= e.amount } else { same(t.amount, e.amount) }) {
        return TR::ExistsWithDifferentAmount;
    }
    if !same(t.user_data_128, e.user_data_128) {
        return TR::ExistsWithDifferentUserData128;
    }
    if !same(u128::from(t.user_data_64), u128::from(e.user_data_64)) {
        return TR::ExistsWithDifferentUserData64;
    }
    if !same(u128::from(t.user_data_32), u128::from(e.user_data_32)) {
        return TR::ExistsWithDifferentUserData32;
    }
    if !same(u128::from(t.ledger), u128::from(e.ledger)) {
        return TR::ExistsWithDifferentLedger;
    }
    if !same(u128::from(t.code), u128::from(e.code)) {
        return TR::ExistsWithDifferentCode;
    }
    TR::Exists
}

/// Merges what `lookup_transfers(id)` found on every shard into the transfer
/// the client sent: a plain transfer as it is; a cross-shard one from its
/// pending leg (debit shard) and credit leg (credit shard) as debit account,
/// credit account, amount (as applied), ledger, code, user data and flags as
/// sent, and the pending leg's timestamp. `None` when nothing was applied,
/// or the transfer is still in flight without its credit leg, or it failed.
pub fn user_view(found: &[Transfer]) -> Option<Transfer> {
    let debit = found.iter().find(|t| is_debit_leg(t));
    let credit = found.iter().find(|t| is_credit_leg(t));
    match (debit, credit) {
        (Some(d), Some(c)) => {
            let bridge = bridge_of(d.credit_account_id)?;
            let matches = c.id == d.id
                && c.debit_account_id == bridge_id(bridge.peer, bridge.shard, d.ledger)
                && c.amount == d.amount;
            matches.then(|| user_view_of_leg(d, c.credit_account_id))
        }
        (Some(_), None) => None,
        _ => found
            .iter()
            .find(|t| !is_reserved(t.debit_account_id) && !is_reserved(t.credit_account_id))
            .copied(),
    }
}

/// The bridges of every ledger net to zero across shards, pair by pair, and
/// hold nothing pending: true once no intent is open. `accounts[i]` are
/// shard `i`'s accounts (any superset of its bridges).
pub fn check_bridges(accounts: &[&[Account]]) -> Result<(), String> {
    let mut net: BTreeMap<(u32, u32, u32), u128> = BTreeMap::new();
    for (shard, list) in accounts.iter().enumerate() {
        for a in list.iter() {
            let Some(bridge) = bridge_of(a.id) else { continue };
            if bridge.shard as usize != shard {
                return Err(format!("bridge {:#x} is on shard {shard}", a.id));
            }
            if a.debits_pending != 0 || a.credits_pending != 0 {
                return Err(format!("bridge {:?} holds value pending: an intent is open", bridge));
            }
            // Key the pair by (low shard, high shard, ledger), each side's net
            // credit signed by which side it is.
            let key = (bridge.shard.min(bridge.peer), bridge.shard.max(bridge.peer), bridge.ledger);
            let side = a.credits_posted.wrapping_sub(a.debits_posted);
            let entry = net.entry(key).or_default();
            *entry = entry.wrapping_add(side);
        }
    }
    match net.iter().find(|(_, &sum)| sum != 0) {
        Some(((low, high, ledger), sum)) => Err(format!(
            "ledger {ledger}: bridges between shards {low} and {high} net to {} instead of 0",
            *sum as i128
        )),
        None => Ok(()),
    }
}

/// A message between two shards (carried rkyv-encoded, see [`encode`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Step 2: credit legs for the receiver to journal.
    Credits(Vec<Transfer>),
    /// The receiver's answers to credit legs: (transfer id, code).
    Answers(Vec<(u128, TR)>),
    /// The sender (re)started and lost what was in flight to it: the
    /// receiver sends again the credit legs of its intents open with the sender.
    Restarted,
}

impl Message {
    /// Legs or answers carried.
    pub fn len(&self) -> usize {
        match self {
            Message::Credits(legs) => legs.len(),
            Message::Answers(answers) => answers.len(),
            Message::Restarted => 0,
        }
    }

    /// True when it carries no legs or answers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
struct WireAnswer {
    id: u128,
    code: u32,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
enum Wire {
    Credits(Vec<u8>),
    Answers(Vec<WireAnswer>),
    Restarted,
}

/// Encodes a message for a ring (rkyv).
pub fn encode(message: &Message) -> rkyv::util::AlignedVec {
    let wire = match message {
        Message::Credits(legs) => Wire::Credits(bytemuck::cast_slice(legs).to_vec()),
        Message::Answers(answers) => {
            Wire::Answers(answers.iter().map(|&(id, code)| WireAnswer { id, code: code as u32 }).collect())
        }
        Message::Restarted => Wire::Restarted,
    };
    rkyv::to_bytes::<rkyv::rancor::Error>(&wire).expect("encoding into memory does not fail")
}

/// Decodes and validates a message from a ring (reads the archive in place
/// when `bytes` is aligned, as ring buffers are).
pub fn decode(bytes: &[u8]) -> Result<Message, String> {
    let copy;
    let aligned: &[u8] = if (bytes.as_ptr() as usize).is_multiple_of(16) {
        bytes
    } else {
        let mut buffer = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        buffer.extend_from_slice(bytes);
        copy = buffer;
        &copy
    };
    let wire = rkyv::access::<ArchivedWire, rkyv::rancor::Error>(aligned).map_err(|e| e.to_string())?;
    Ok(match wire {
        ArchivedWire::Credits(raw) => {
            if !raw.len().is_multiple_of(128) {
                return Err("credit legs are not whole 128-byte records".into());
            }
            Message::Credits(bytemuck::pod_collect_to_vec(raw.as_slice()))
        }
        ArchivedWire::Answers(answers) => Message::Answers(
            answers
                .iter()
                .map(|a| {
                    TR::from_u32(a.code.to_native())
                        .map(|code| (a.id.to_native(), code))
                        .ok_or("unknown result code")
                })
                .collect::<Result<_, _>>()?,
        ),
        ArchivedWire::Restarted => Message::Restarted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use molly_engine::Config;

    #[test]
    fn reserved_ids_decode_and_never_collide() {
        let b = bridge_id(3, 7, 30);
        assert!(is_reserved(b));
        assert_eq!(bridge_of(b), Some(Bridge { shard: 3, peer: 7, ledger: 30 }));
        assert_ne!(bridge_id(7, 3, 30), b);
        assert_eq!(bridge_of(sink_id(3, 30)), None);
        assert!(is_sink(sink_id(3, 30)));
        assert!(!is_sink(b));
        assert_eq!(bridge_of(settle_id(3, 99)), None);
        assert!(!is_reserved(RESERVED_ID_MIN - 1));
        assert!(is_reserved(u128::MAX));
        assert_eq!(bridge_of(u128::MAX), None);
    }

    #[test]
    fn messages_round_trip_through_rkyv() {
        let leg = Transfer {
            id: 5,
            debit_account_id: bridge_id(1, 0, 1),
            credit_account_id: 9,
            amount: 3,
            ledger: 1,
            code: 1,
            ..Transfer::default()
        };
        for message in [
            Message::Credits(vec![leg, leg]),
            Message::Answers(vec![(5, TR::Ok), (6, TR::ExceedsDebits)]),
            Message::Restarted,
        ] {
            assert_eq!(decode(&encode(&message)).unwrap(), message);
        }
        assert!(decode(&[1, 2, 3]).is_err());
    }

    /// `exists_code` must answer exactly what the engine answers.
    #[test]
    fn exists_code_agrees_with_the_engine() {
        let mut engine = Engine::new(Config::default()).unwrap();
        let accounts: Vec<Account> =
            (1..=3).map(|id| Account { id, ledger: 1, code: 1, ..Account::default() }).collect();
        let mut out = Vec::new();
        engine.create_accounts(&accounts, &mut out).unwrap();
        let base = Transfer {
            id: 10,
            debit_account_id: 1,
            credit_account_id: 2,
            amount: 5,
            user_data_128: 7,
            user_data_64: 8,
            user_data_32: 9,
            ledger: 1,
            code: 1,
            ..Transfer::default()
        };
        let pending = Transfer { id: 11, flags: TF::PENDING, timeout: 60, ..base };
        let post = Transfer {
            id: 12,
            pending_id: 11,
            flags: TF::POST_PENDING,
            amount: 0,
            ledger: 0,
            code: 0,
            debit_account_id: 0,
            credit_account_id: 0,
            user_data_128: 0,
            user_data_64: 0,
            user_data_32: 0,
            ..Transfer::default()
        };
        let balancing = Transfer { id: 13, flags: TF::BALANCING_DEBIT, amount: 100, ..base };
        let mut results = Vec::new();
        engine.create_transfers(&[base, pending, post, balancing], &mut results).unwrap();
        let stored: Vec<Transfer> = engine.transfers().to_vec();
        let mut variants = Vec::new();
        for s in [base, pending, post, balancing] {
            variants.push(s);
            variants.push(Transfer { flags: TF::NONE, ..s });
            variants.push(Transfer { pending_id: 3, ..s });
            variants.push(Transfer { timeout: 1, ..s });
            variants.push(Transfer { debit_account_id: 3, ..s });
            variants.push(Transfer { credit_account_id: 3, ..s });
            variants.push(Transfer { amount: s.amount + 1, ..s });
            variants.push(Transfer { amount: 1, ..s });
            variants.push(Transfer { user_data_128: 1, ..s });
            variants.push(Transfer { user_data_64: 1, ..s });
            variants.push(Transfer { user_data_32: 1, ..s });
            variants.push(Transfer { ledger: 2, ..s });
            variants.push(Transfer { code: 2, ..s });
        }
        for sent in variants {
            let mut engine_says = Vec::new();
            engine.create_transfers(&[sent], &mut engine_says).unwrap();
            if !is_exists(engine_says[0]) {
                continue;
            }
            let e = stored.iter().find(|t| t.id == sent.id).unwrap();
            assert_eq!(exists_code(&sent, e), engine_says[0], "{sent:?}");
        }
    }
}
