//! The reference models in the simulator.
//!
//! - One shard: the engine's reference model ([`molly_engine::model`], an
//!   independent implementation of the documented semantics) with the shard
//!   layer's reserved ids, fed exactly the commands each acknowledged
//!   journal group holds (ticks, account batches, transfer batches as the
//!   clients sent them): [`new`] and [`apply`].
//! - Two or three shards: [`CrossModel`], the cross-shard protocol as
//!   docs/shards.md describes it ("Cross-shard transfers (as built)", "What
//!   clients see", "Crashes and idempotency"), written again here on top of
//!   one engine model per shard. It calls nothing of `cross.rs` but the id
//!   formats of the shard layer's own accounts (bridges, sinks), so that its
//!   per-shard state can be compared with the engine's record for record.

use std::collections::{BTreeMap, BTreeSet};

use molly_engine::model::exists_code;
pub use molly_engine::model::Model;
use molly_engine::{Account, Config, CreateAccountResult as AR, CreateTransferResult as TR, Engine};
use molly_engine::{Transfer, TransferFlags as TF};

use crate::cross::{bridge_id, is_reserved, sink_id, ACCOUNT_CODE_SHARD};
use crate::durable::Outcome;
use crate::journal::CommandBuf;
use crate::route::is_sharded;
use crate::runtime::shard_for;

/// A model of one shard with `config`'s limits and assets.
pub fn new(config: Config) -> Model {
    Model::new(config).reserving(is_reserved)
}

/// Applies one journaled command; returns what the shard answers for it.
pub fn apply(model: &mut Model, command: &CommandBuf) -> Outcome {
    match command {
        CommandBuf::Tick { now_ns } => Outcome::Ticked { expired: model.tick(*now_ns) },
        CommandBuf::CreateAccounts(batch) => Outcome::Accounts(model.create_accounts(batch)),
        CommandBuf::CreateTransfers(batch) => Outcome::Transfers(model.create_transfers(batch)),
        CommandBuf::Credits(_) | CommandBuf::Settles(_) => {
            unreachable!("the model is of one shard: no cross-shard legs")
        }
    }
}

/// What the model predicts a client is answered for one transfer event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Decided when the batch was applied.
    Final(TR),
    /// Decided when cross-shard transfer `id` is settled: its final code
    /// (`original`: the event that opened it), or for an identical retry
    /// of an open one, `exists` if it posted, else its failure.
    Waits {
        /// The transfer.
        id: u128,
        /// True for the event that opened the intent.
        original: bool,
    },
}

/// The model's prediction for one journaled command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Predicted {
    /// A client's account batch: its results.
    Accounts(Vec<AR>),
    /// A client's transfer batch: per event, its result or what it waits for.
    Transfers(Vec<Event>),
    /// A tick, credit legs or settles: nothing a client is answered.
    Internal,
}

/// Why the model could not follow a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelError {
    /// The journal holds what the model says cannot be (a leg or a settle
    /// the protocol would not make).
    Mismatch(String),
}

/// How the shard layer treats a client's event (docs/shards.md, "What clients see").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// To the ledger as sent.
    Local,
    /// Credits an account of shard `peer`: two-phase.
    Cross(u32),
    /// Refused by the shard layer with this code before the ledger checks it
    /// (inside a linked chain, it fails the chain like any failed event).
    Refused(TR),
    /// In a closed linked chain naming another shard's account.
    Chain,
}

/// One shard: its ledger (user accounts, its bridges and sinks, pending and
/// credit legs, tombstones, settles) and its open intents.
#[derive(Clone, Debug)]
struct ShardModel {
    model: Model,
    /// Open intents: the transfer as sent and the credit shard.
    intents: BTreeMap<u128, (Transfer, u32)>,
    /// Every cross-shard transfer opened here, as sent (retries are compared with it).
    sent: BTreeMap<u128, Transfer>,
}

/// The cross-shard protocol at the level a client sees, one ledger model
/// per shard fed in that shard's journal order.
#[derive(Clone, Debug)]
pub struct CrossModel {
    shards: u32,
    nodes: Vec<ShardModel>,
    /// The credit leg of every intent ever opened and its debit shard, as
    /// the model derives it from the transfer sent.
    legs: BTreeMap<u128, (Transfer, u32)>,
    /// The credit shard's answer to each leg (every copy answers alike).
    answers: BTreeMap<u128, TR>,
    /// The final code of each settled cross-shard transfer.
    finals: BTreeMap<u128, TR>,
}

fn is_exists(result: TR) -> bool {
    use TR::*;
    matches!(
        result,
        Exists
            | ExistsWithDifferentFlags
            | ExistsWithDifferentPendingId
            | ExistsWithDifferentTimeout
            | ExistsWithDifferentDebitAccountId
            | ExistsWithDifferentCreditAccountId
            | ExistsWithDifferentAmount
            | ExistsWithDifferentUserData128
            | ExistsWithDifferentUserData64
            | ExistsWithDifferentUserData32
            | ExistsWithDifferentLedger
            | ExistsWithDifferentCode
    )
}

/// A move between the parts of a sharded account, as docs/shards.md ("Hot
/// accounts") defines it: debit and credit the same sharded account,
/// `user_data_32 = from << 16 | to` naming two different shards of the
/// `shards`; `(from, to)`. (The model's own reading, not `route::part_move`:
/// the workload uses it to know which writes must be refused as misrouted.)
pub fn part_move(t: &Transfer, shards: u32) -> Option<(u32, u32)> {
    let (from, to) = (t.user_data_32 >> 16, t.user_data_32 & 0xFFFF);
    let moves = t.debit_account_id == t.credit_account_id
        && is_sharded(t.debit_account_id)
        && from < shards
        && to < shards
        && from != to;
    moves.then_some((from, to))
}

/// A reserved transfer id of kind 4, a move between parts (docs/shards.md,
/// "Reserved ids" and "Hot accounts"), decoded from the documented layout.
fn is_move_kind(id: u128) -> bool {
    is_reserved(id) && (id >> 88) & 0xFF == 4
}

fn layer_account(id: u128, ledger: u32) -> Account {
    Account { id, ledger, code: ACCOUNT_CODE_SHARD, ..Account::default() }
}

impl CrossModel {
    /// `shards` empty shards with `config`'s limits and assets.
    pub fn new(config: &Config, shards: u32) -> Self {
        assert!(shards > 1);
        // Shard n of `shards` stamps only nanoseconds ≡ n (mod shards) (docs/engine.md, Time).
        let node = |n| ShardModel {
            model: new(Config { timestamp_stride: shards, timestamp_offset: n, ..config.clone() }),
            intents: BTreeMap::new(),
            sent: BTreeMap::new(),
        };
        Self {
            shards,
            nodes: (0..shards).map(node).collect(),
            legs: BTreeMap::new(),
            answers: BTreeMap::new(),
            finals: BTreeMap::new(),
        }
    }

    /// Shards.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// Shard `n`'s ledger model.
    pub fn model(&self, n: usize) -> &Model {
        &self.nodes[n].model
    }

    /// Compares shard `n`'s engine with its model (every record when `full`),
    /// and the model's own conservation.
    pub fn check_shard(&mut self, n: usize, engine: &Engine, full: bool) -> Result<(), String> {
        let model = &mut self.nodes[n].model;
        model.check_conservation().map_err(|e| format!("shard {n}: {e}"))?;
        model.check(engine, full).map_err(|e| format!("shard {n}: {e}"))
    }

    /// What a client is answered for `event`, once the outcome of every
    /// transfer it waits for is decided; `None` while one is not. A
    /// cross-shard transfer's outcome is decided once its credit shard
    /// journaled the answer to its credit leg (docs/shards.md: the debit
    /// shard answers its caller when that answer arrives, before the
    /// settle is applied): the final code is that answer.
    pub fn resolve(&self, event: Event) -> Option<TR> {
        match event {
            Event::Final(code) => Some(code),
            Event::Waits { id, original } => {
                let code = *self.finals.get(&id).or_else(|| self.answers.get(&id))?;
                Some(match (original, code) {
                    (true, code) => code,
                    (false, TR::Ok) => TR::Exists,
                    (false, failure) => failure,
                })
            }
        }
    }

    fn part_move(&self, t: &Transfer) -> Option<(u32, u32)> {
        part_move(t, self.shards)
    }

    /// The shard a transfer's credit account lives on, when it is another
    /// than `shard` (a post or void names no account of its own); for a
    /// move between parts applied on its `from` shard, the `to` shard.
    fn peer(&self, shard: usize, t: &Transfer) -> Option<u32> {
        let credit = t.credit_account_id;
        if t.flags.intersects(TF::POST_PENDING | TF::VOID_PENDING) {
            return None;
        }
        if let Some((from, to)) = self.part_move(t) {
            return (from as usize == shard).then_some(to);
        }
        if credit == 0 || credit == u128::MAX || is_reserved(credit) || is_sharded(credit) {
            return None;
        }
        let peer = shard_for(credit, self.shards);
        (peer as usize != shard).then_some(peer)
    }

    /// Applies one command journaled by shard `n`, in its journal order.
    pub fn apply(&mut self, n: usize, command: &CommandBuf) -> Result<Predicted, ModelError> {
        match command {
            CommandBuf::Tick { now_ns } => {
                self.nodes[n].model.tick(*now_ns);
                Ok(Predicted::Internal)
            }
            CommandBuf::CreateAccounts(batch) => {
                Ok(Predicted::Accounts(self.nodes[n].model.create_accounts(batch)))
            }
            CommandBuf::CreateTransfers(batch) => self.client_transfers(n, batch).map(Predicted::Transfers),
            CommandBuf::Credits(legs) => self.credits(n, legs).map(|()| Predicted::Internal),
            CommandBuf::Settles(settles) => self.settles(n, settles).map(|()| Predicted::Internal),
        }
    }

    /// The shard layer's view of one event, against the state before the batch.
    fn kind(&self, n: usize, t: &Transfer, cross_in_batch: &BTreeSet<u128>) -> Kind {
        let model = &self.nodes[n].model;
        // What the ledger refuses first (timestamp, flags, id 0 or max) stays the ledger's.
        if t.timestamp != 0 || t.flags.0 & !TF::ALL.0 != 0 || t.id == 0 || t.id == u128::MAX {
            return Kind::Local;
        }
        // A move between parts may carry a reserved id of kind 4 (bits
        // 88..96), the rebalancer's: the only reserved id a write may carry.
        if is_reserved(t.id) && !(is_move_kind(t.id) && self.part_move(t).is_some()) {
            return Kind::Refused(TR::IdMustNotBeReserved);
        }
        // An id that exists gets its `exists*` answer before any refusal.
        let refuse = |code| if model.transfer(t.id).is_some() { Kind::Local } else { Kind::Refused(code) };
        let phases = [TF::PENDING, TF::POST_PENDING, TF::VOID_PENDING];
        if phases.iter().filter(|&&f| t.flags.contains(f)).count() > 1 {
            return Kind::Local;
        }
        if t.flags.intersects(TF::POST_PENDING | TF::VOID_PENDING) {
            let shaped = !t.flags.intersects(
                TF::BALANCING_DEBIT | TF::BALANCING_CREDIT | TF::CLOSING_DEBIT | TF::CLOSING_CREDIT,
            ) && t.pending_id != 0
                && t.pending_id != u128::MAX
                && t.pending_id != t.id
                && t.timeout == 0;
            // A cross-shard transfer is plain to its client.
            let cross = cross_in_batch.contains(&t.pending_id) || model.is_held(t.pending_id);
            return if shaped && cross { refuse(TR::PendingTransferNotPending) } else { Kind::Local };
        }
        let (debit, credit) = (t.debit_account_id, t.credit_account_id);
        if debit == 0 || debit == u128::MAX || credit == 0 || credit == u128::MAX {
            return Kind::Local;
        }
        if is_reserved(debit) {
            return refuse(TR::DebitAccountIdMustNotBeReserved);
        }
        if is_reserved(credit) {
            return refuse(TR::CreditAccountIdMustNotBeReserved);
        }
        let Some(peer) = self.peer(n, t) else { return Kind::Local };
        if t.flags.intersects(TF::PENDING | TF::BALANCING_CREDIT | TF::CLOSING_DEBIT | TF::CLOSING_CREDIT) {
            return refuse(TR::CrossShardFlagsNotSupported);
        }
        if t.pending_id != 0 || t.timeout != 0 {
            // The ledger refuses these before it looks at accounts.
            return Kind::Local;
        }
        Kind::Cross(peer)
    }

    /// A client's transfer batch on its debit shard `n`: local events as
    /// the ledger applies them, cross-shard ones as a pending leg from the
    /// debit account to the bridge toward the credit shard (the debit
    /// side's checks), refused shapes with their documented codes.
    fn client_transfers(&mut self, n: usize, batch: &[Transfer]) -> Result<Vec<Event>, ModelError> {
        let mut open_from = batch.len();
        while open_from > 0 && batch[open_from - 1].flags.contains(TF::LINKED) {
            open_from -= 1;
        }
        let mut kinds = vec![Kind::Local; batch.len()];
        let mut cross_in_batch = BTreeSet::new();
        for i in 0..open_from {
            kinds[i] = self.kind(n, &batch[i], &cross_in_batch);
            if matches!(kinds[i], Kind::Cross(_)) {
                cross_in_batch.insert(batch[i].id);
            }
        }
        // A closed linked chain naming another shard's account is refused whole.
        let mut start = 0;
        for i in 0..open_from {
            if batch[i].flags.contains(TF::LINKED) {
                continue;
            }
            if i > start && batch[start..=i].iter().any(|t| self.peer(n, t).is_some()) {
                kinds[start..=i].fill(Kind::Chain);
            }
            start = i + 1;
        }
        let node = &mut self.nodes[n];
        // The transfer room (docs/shards.md, "Limits"): while settles are
        // owed (an intent open, or one to open in this batch), a slot is
        // kept for each, and the batch's events are charged in order
        // against `transfers_max − transfers − open intents`: one slot for
        // an event the ledger sees, two for a cross-shard transfer (its
        // pending leg and its settle), none for a refused one, whatever
        // the event's fate. A new id past the room gets
        // `transfers_limit_reached`; an id that exists, its `exists*`
        // answer. With no settle owed the ledger's own limit decides.
        if !node.intents.is_empty() || kinds.iter().any(|k| matches!(k, Kind::Cross(_))) {
            let mut room = (node.model.config().transfers_max as usize)
                .checked_sub(node.model.transfers().len() + node.intents.len())
                .expect("a slot is kept for every settle");
            for i in 0..open_from {
                let cost = match kinds[i] {
                    Kind::Local => 1,
                    Kind::Cross(_) => 2,
                    Kind::Refused(_) | Kind::Chain => 0,
                };
                if cost <= room {
                    room -= cost;
                } else if node.model.transfer(batch[i].id).is_none() {
                    kinds[i] = Kind::Refused(TR::TransfersLimitReached);
                }
            }
        }
        // The bridge toward each credit shard, per ledger: the transfer's
        // ledger's if it exists, else the debit account's (created now, the
        // first time it is needed; one of an unregistered ledger cannot be).
        let mut bridges = vec![0; batch.len()];
        let mut missing = BTreeSet::new();
        for (i, t) in batch.iter().enumerate() {
            let Kind::Cross(peer) = kinds[i] else { continue };
            let mut ledger = t.ledger;
            if node.model.account(bridge_id(n as u32, peer, ledger)).is_none() {
                ledger = node.model.account(t.debit_account_id).map_or(t.ledger, |a| a.ledger);
                if ledger != 0 && node.model.account(bridge_id(n as u32, peer, ledger)).is_none() {
                    missing.insert((peer, ledger));
                }
            }
            bridges[i] = bridge_id(n as u32, peer, ledger);
        }
        let accounts: Vec<Account> = missing
            .iter()
            .map(|&(peer, ledger)| layer_account(bridge_id(n as u32, peer, ledger), ledger))
            .collect();
        if !accounts.is_empty() {
            node.model.unreserved(|m| m.create_accounts(&accounts));
        }
        let events: Vec<Transfer> = batch
            .iter()
            .zip(&kinds)
            .enumerate()
            .map(|(i, (t, kind))| match kind {
                Kind::Local => *t,
                // Fails first, so a chain holding it fails as for any failed event.
                Kind::Refused(_) | Kind::Chain => Transfer { timestamp: 1, ..*t },
                Kind::Cross(_) => Transfer {
                    credit_account_id: bridges[i],
                    flags: TF(TF::PENDING.0 | (t.flags.0 & TF::BALANCING_DEBIT.0)),
                    ..*t
                },
            })
            .collect();
        let results = node.model.unreserved(|m| m.create_transfers(&events));
        let mut predicted = Vec::with_capacity(batch.len());
        for (i, (t, kind)) in batch.iter().zip(&kinds).enumerate() {
            let result = results[i];
            let event = match *kind {
                Kind::Chain => Event::Final(TR::LinkedEventChainCrossShard),
                Kind::Refused(code) if result == TR::TimestampMustBeZero => Event::Final(code),
                Kind::Refused(_) => Event::Final(result),
                Kind::Local | Kind::Cross(_) if is_exists(result) => self.retry(n, t),
                Kind::Cross(peer) if result == TR::Ok => {
                    let node = &mut self.nodes[n];
                    let amount = node.model.transfer(t.id).expect("the pending leg").amount;
                    node.model.hold(t.id);
                    node.intents.insert(t.id, (*t, peer));
                    node.sent.insert(t.id, *t);
                    let leg = Transfer {
                        id: t.id,
                        debit_account_id: bridge_id(peer, n as u32, t.ledger),
                        credit_account_id: t.credit_account_id,
                        amount,
                        pending_id: 0,
                        user_data_128: t.user_data_128,
                        user_data_64: t.user_data_64,
                        user_data_32: t.user_data_32,
                        timeout: 0,
                        ledger: t.ledger,
                        code: t.code,
                        // A balancing amount clamped to 0 stays a balancing transfer.
                        flags: if amount == 0 { TF::BALANCING_DEBIT } else { TF::NONE },
                        timestamp: 0,
                    };
                    self.legs.insert(t.id, (leg, n as u32));
                    Event::Waits { id: t.id, original: true }
                }
                // The checks the client sees are of a plain transfer.
                Kind::Cross(_) => Event::Final(match result {
                    TR::OverflowsDebitsPending => TR::OverflowsDebitsPosted,
                    TR::OverflowsCreditsPending => TR::OverflowsCreditsPosted,
                    other => other,
                }),
                Kind::Local => Event::Final(result),
            };
            predicted.push(event);
        }
        Ok(predicted)
    }

    /// A retry of an id that exists on shard `n`: compared with what the
    /// client sent the first time (not with the legs it became); an
    /// identical retry of an open cross-shard transfer waits for it, of a
    /// settled one answers `exists` or its recorded failure, forever.
    fn retry(&self, n: usize, t: &Transfer) -> Event {
        let node = &self.nodes[n];
        let stored = *node.model.transfer(t.id).expect("exists");
        let Some(first) = node.sent.get(&t.id) else {
            return Event::Final(exists_code(t, &stored));
        };
        let view = Transfer {
            credit_account_id: first.credit_account_id,
            flags: TF(stored.flags.0 & !TF::PENDING.0),
            timeout: 0,
            ..stored
        };
        let code = exists_code(t, &view);
        if code != TR::Exists {
            return Event::Final(code);
        }
        if node.intents.contains_key(&t.id) {
            return Event::Waits { id: t.id, original: false };
        }
        Event::Final(match self.finals[&t.id] {
            TR::Ok => TR::Exists,
            failure => failure,
        })
    }

    /// Credit legs on their credit shard `n`: each must be the leg its
    /// intent makes; applied from the bridge toward the debit shard to the
    /// credit account (the credit side's checks). A new leg answers `ok` or
    /// its failure, which a tombstone records; a copy answers as the first.
    fn credits(&mut self, n: usize, legs: &[Transfer]) -> Result<(), ModelError> {
        let mut ledgers = BTreeSet::new();
        let mut from = None;
        for leg in legs {
            let Some((expected, debit_shard)) = self.legs.get(&leg.id) else {
                return Err(ModelError::Mismatch(format!(
                    "shard {n} journaled credit leg {} of no intent the model opened: {leg:?}",
                    leg.id
                )));
            };
            if expected != leg {
                return Err(ModelError::Mismatch(format!(
                    "shard {n} journaled credit leg {leg:?}\n  model expects {expected:?}"
                )));
            }
            if *from.get_or_insert(*debit_shard) != *debit_shard {
                return Err(ModelError::Mismatch(format!("shard {n}: one Credits entry from two shards")));
            }
            ledgers.insert(leg.ledger);
        }
        let Some(peer) = from else { return Ok(()) };
        let node = &mut self.nodes[n];
        let mut accounts = Vec::new();
        for &ledger in &ledgers {
            for id in [bridge_id(n as u32, peer, ledger), sink_id(n as u32, ledger)] {
                if node.model.account(id).is_none() {
                    accounts.push(layer_account(id, ledger));
                }
            }
        }
        if !accounts.is_empty() {
            node.model.unreserved(|m| m.create_accounts(&accounts));
        }
        // The room (docs/shards.md, "Limits"): a new leg takes a slot (for
        // itself or its tombstone); a new leg past the room answers
        // `transfers_limit_reached` and records nothing (the room never
        // grows back, so every copy answers alike); a copy of a leg
        // already recorded takes none and gets its recorded answer.
        let mut room = (node.model.config().transfers_max as usize)
            .checked_sub(node.model.transfers().len() + node.intents.len())
            .expect("a slot is kept for every settle");
        let over: Vec<bool> = legs
            .iter()
            .map(|leg| {
                let new = node.model.transfer(leg.id).is_none();
                let over = new && room == 0;
                room -= usize::from(new && room > 0);
                over
            })
            .collect();
        let events: Vec<Transfer> = legs
            .iter()
            .zip(&over)
            .map(|(leg, &over)| if over { Transfer { timestamp: 1, ..*leg } } else { *leg })
            .collect();
        let results = node.model.unreserved(|m| m.create_transfers(&events));
        let mut tombstones = Vec::new();
        let mut answers = Vec::with_capacity(legs.len());
        for ((leg, &result), &over) in legs.iter().zip(&results).zip(&over) {
            let answer = if over {
                TR::TransfersLimitReached
            } else if result == TR::Ok {
                TR::Ok
            } else if is_exists(result) {
                let stored = node.model.transfer(leg.id).expect("exists");
                if stored.debit_account_id != leg.debit_account_id {
                    result
                } else if stored.credit_account_id == sink_id(n as u32, leg.ledger) {
                    TR::from_u32(stored.user_data_32).expect("a tombstone records a code")
                } else {
                    TR::Ok
                }
            } else {
                tombstones.push(Transfer {
                    credit_account_id: sink_id(n as u32, leg.ledger),
                    amount: 0,
                    user_data_128: 0,
                    user_data_64: 0,
                    user_data_32: result as u32,
                    flags: TF::BALANCING_DEBIT,
                    ..*leg
                });
                result
            };
            answers.push((leg.id, answer));
        }
        if !tombstones.is_empty() {
            node.model.unreserved(|m| m.create_transfers(&tombstones));
        }
        for (id, answer) in answers {
            if let Some(&first) = self.answers.get(&id) {
                if first != answer {
                    return Err(ModelError::Mismatch(format!(
                        "shard {n}: a copy of credit leg {id} answers {answer}, the first answered {first}"
                    )));
                }
            }
            self.answers.insert(id, answer);
        }
        Ok(())
    }

    /// Settles on the debit shard `n`: each must post (the credit shard
    /// answered `ok`) or void (recording the answer) an open intent; the
    /// transfer's final code is then known.
    fn settles(&mut self, n: usize, settles: &[Transfer]) -> Result<(), ModelError> {
        for s in settles {
            let id = s.pending_id;
            let node = &mut self.nodes[n];
            let Some(&(sent, _)) = node.intents.get(&id) else {
                return Err(ModelError::Mismatch(format!(
                    "shard {n} settles {id}, not an open intent: {s:?}"
                )));
            };
            let Some(&answer) = self.answers.get(&id) else {
                return Err(ModelError::Mismatch(format!(
                    "shard {n} settles {id} before its credit shard journaled an answer: {s:?}"
                )));
            };
            let (flags, code) =
                if answer == TR::Ok { (TF::POST_PENDING, 0) } else { (TF::VOID_PENDING, answer as u32) };
            if s.flags != flags || s.user_data_32 != code || s.user_data_128 != sent.credit_account_id {
                return Err(ModelError::Mismatch(format!(
                    "shard {n} settles {id} as {s:?}; the credit shard's answer is {answer}"
                )));
            }
            let result = node.model.settle(s);
            if result != TR::Ok {
                return Err(ModelError::Mismatch(format!(
                    "shard {n}: settle of {id} fails in the model: {result}"
                )));
            }
            node.intents.remove(&id);
            self.finals.insert(id, answer);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use molly_engine::AccountFlags as AF;

    use super::*;
    use crate::cross::RESERVED_ID_MIN;

    fn account(id: u128, flags: AF) -> Account {
        Account { id, ledger: 1, code: 1, flags, ..Account::default() }
    }

    fn transfer(id: u128, debit: u128, credit: u128, flags: TF) -> Transfer {
        Transfer {
            id,
            debit_account_id: debit,
            credit_account_id: credit,
            amount: 10,
            ledger: 1,
            code: 1,
            flags,
            ..Transfer::default()
        }
    }

    /// The documented answers of the cross-shard protocol, scripted: the
    /// sweep's agreement with the shards would not prove them on its own.
    #[test]
    fn the_cross_shard_model_gives_the_documented_codes() {
        let mut m = CrossModel::new(&Config::default(), 2);
        let on = |shard: u32| (1..).find(|&id| shard_for(id, 2) == shard).unwrap();
        let (a, b) = (on(0), on(1));
        let a2 = (a + 1..).find(|&id| shard_for(id, 2) == 0).unwrap();
        let accounts = |ids: &[(u128, AF)]| {
            CommandBuf::CreateAccounts(ids.iter().map(|&(id, f)| account(id, f)).collect())
        };
        assert_eq!(
            m.apply(0, &accounts(&[(a, AF::NONE), (a2, AF::NONE)])),
            Ok(Predicted::Accounts(vec![AR::Ok; 2]))
        );
        assert_eq!(
            m.apply(1, &accounts(&[(b, AF::CREDITS_MUST_NOT_EXCEED_DEBITS)])),
            Ok(Predicted::Accounts(vec![AR::Ok]))
        );
        let batch = vec![
            transfer(1, a, b, TF::NONE),
            transfer(2, a, b, TF::PENDING),
            transfer(3, a, b, TF::LINKED),
            transfer(4, a, a2, TF::NONE),
            Transfer { pending_id: 1, ..transfer(5, 0, 0, TF::POST_PENDING) },
            transfer(RESERVED_ID_MIN + 6, a, b, TF::NONE),
        ];
        let expected = vec![
            Event::Waits { id: 1, original: true },
            Event::Final(TR::CrossShardFlagsNotSupported),
            Event::Final(TR::LinkedEventChainCrossShard),
            Event::Final(TR::LinkedEventChainCrossShard),
            Event::Final(TR::PendingTransferNotPending),
            Event::Final(TR::IdMustNotBeReserved),
        ];
        assert_eq!(
            m.apply(0, &CommandBuf::CreateTransfers(batch.clone())),
            Ok(Predicted::Transfers(expected))
        );
        // The credit leg: bridge(1 → 0) to b; b's limit refuses it.
        let leg = Transfer { debit_account_id: bridge_id(1, 0, 1), ..transfer(1, 0, b, TF::NONE) };
        let wrong = Transfer { amount: 11, ..leg };
        assert!(matches!(m.apply(1, &CommandBuf::Credits(vec![wrong])), Err(ModelError::Mismatch(_))));
        assert_eq!(m.apply(1, &CommandBuf::Credits(vec![leg])), Ok(Predicted::Internal));
        assert_eq!(m.answers[&1], TR::ExceedsDebits);
        // A copy answers as the first (the tombstone).
        assert_eq!(m.apply(1, &CommandBuf::Credits(vec![leg])), Ok(Predicted::Internal));
        let settle =
            Transfer { id: RESERVED_ID_MIN + 100, pending_id: 1, user_data_128: b, ..Transfer::default() };
        let post = Transfer { flags: TF::POST_PENDING, ..settle };
        assert!(matches!(m.apply(0, &CommandBuf::Settles(vec![post])), Err(ModelError::Mismatch(_))));
        let void = Transfer { flags: TF::VOID_PENDING, user_data_32: TR::ExceedsDebits as u32, ..settle };
        assert_eq!(m.apply(0, &CommandBuf::Settles(vec![void])), Ok(Predicted::Internal));
        assert_eq!(m.resolve(Event::Waits { id: 1, original: true }), Some(TR::ExceedsDebits));
        assert_eq!(m.resolve(Event::Waits { id: 1, original: false }), Some(TR::ExceedsDebits));
        // The id is spent: an identical retry answers the recorded failure, a changed one its difference.
        let retry = vec![batch[0], Transfer { amount: 9, ..batch[0] }];
        assert_eq!(
            m.apply(0, &CommandBuf::CreateTransfers(retry)),
            Ok(Predicted::Transfers(vec![
                Event::Final(TR::ExceedsDebits),
                Event::Final(TR::ExistsWithDifferentAmount)
            ]))
        );
        // Nothing moved: the void released a's pending debit.
        let a = m.model(0).account(a).unwrap();
        assert_eq!((a.debits_pending, a.debits_posted), (0, 0));
        assert_eq!(m.model(1).account(b).unwrap().credits_posted, 0);
    }

    /// Sharded accounts (docs/shards.md, "Hot accounts"), scripted: a part
    /// per shard, user ↔ part transfers single-shard, a transfer from the
    /// local part to another shard's account two-phase, moves between parts
    /// (the `from` part's limit, a reserved id of kind 4, every refusal).
    #[test]
    fn the_cross_shard_model_gives_the_documented_codes_for_sharded_accounts() {
        use crate::cross::{move_id, settle_id};
        use crate::route::{part_move_shards, sharded_id};
        let mut m = CrossModel::new(&Config::default(), 2);
        let on = |shard: u32| (1..).find(|&id| shard_for(id, 2) == shard).unwrap();
        let (a, b) = (on(0), on(1));
        let hot = sharded_id(5);
        let wallet = account(hot, AF::DEBITS_MUST_NOT_EXCEED_CREDITS);
        // A create of a sharded account: each shard creates its part and answers for it.
        let create = |id| CommandBuf::CreateAccounts(vec![wallet, account(id, AF::NONE)]);
        assert_eq!(m.apply(0, &create(a)), Ok(Predicted::Accounts(vec![AR::Ok; 2])));
        assert_eq!(m.apply(1, &create(b)), Ok(Predicted::Accounts(vec![AR::Ok; 2])));
        assert_eq!(
            m.apply(1, &CommandBuf::CreateAccounts(vec![wallet])),
            Ok(Predicted::Accounts(vec![AR::Exists]))
        );
        let send = |id: u128, debit, credit, amount, flags, user_data_32| Transfer {
            amount,
            user_data_32,
            ..transfer(id, debit, credit, flags)
        };
        let move_0_1 = part_move_shards(0, 1);
        let (kind_4, kind_3) = (move_id(0, 7), settle_id(0, 7));
        let batch = vec![
            send(1, a, hot, 100, TF::NONE, 0),
            send(2, hot, b, 10, TF::NONE, 0),
            send(3, hot, hot, 50, TF::NONE, move_0_1),
            send(4, hot, hot, 41, TF::NONE, move_0_1),
            send(kind_4, hot, hot, 40, TF::NONE, move_0_1),
            send(5, hot, hot, 1, TF::NONE, part_move_shards(0, 0)),
            send(6, hot, hot, 1, TF::NONE, part_move_shards(0, 2)),
            send(move_id(0, 8), hot, a, 1, TF::NONE, 0),
            send(kind_3, hot, hot, 1, TF::NONE, move_0_1),
            send(7, hot, hot, 1, TF::PENDING, move_0_1),
            send(8, hot, hot, 1, TF::LINKED, move_0_1),
            send(9, a, hot, 1, TF::NONE, 0),
        ];
        let expected = vec![
            Event::Final(TR::Ok),
            Event::Waits { id: 2, original: true },
            Event::Waits { id: 3, original: true },
            // The `from` part's limit: 100 credited, 60 reserved.
            Event::Final(TR::ExceedsCredits),
            Event::Waits { id: kind_4, original: true },
            Event::Final(TR::AccountsMustBeDifferent),
            Event::Final(TR::AccountsMustBeDifferent),
            Event::Final(TR::IdMustNotBeReserved),
            Event::Final(TR::IdMustNotBeReserved),
            Event::Final(TR::CrossShardFlagsNotSupported),
            Event::Final(TR::LinkedEventChainCrossShard),
            Event::Final(TR::LinkedEventChainCrossShard),
        ];
        assert_eq!(m.apply(0, &CommandBuf::CreateTransfers(batch)), Ok(Predicted::Transfers(expected)));
        // The credit legs on shard 1: from the bridge toward shard 0, to b and to the part there.
        // (User data as sent: a move's leg carries its `user_data_32`.)
        let leg = |id, credit, amount, user_data_32| Transfer {
            debit_account_id: bridge_id(1, 0, 1),
            amount,
            user_data_32,
            ..transfer(id, 0, credit, TF::NONE)
        };
        let legs = vec![leg(2, b, 10, 0), leg(3, hot, 50, move_0_1), leg(kind_4, hot, 40, move_0_1)];
        assert_eq!(m.apply(1, &CommandBuf::Credits(legs)), Ok(Predicted::Internal));
        let settles: Vec<Transfer> = [(2, b), (3, hot), (kind_4, hot)]
            .iter()
            .enumerate()
            .map(|(i, &(id, credit))| Transfer {
                id: settle_id(0, 100 + i as u64),
                pending_id: id,
                user_data_128: credit,
                flags: TF::POST_PENDING,
                ..Transfer::default()
            })
            .collect();
        assert_eq!(m.apply(0, &CommandBuf::Settles(settles)), Ok(Predicted::Internal));
        for id in [2, 3, kind_4] {
            assert_eq!(m.resolve(Event::Waits { id, original: true }), Some(TR::Ok));
        }
        // The account's balance is unchanged by the moves; both columns grew on the parts.
        let (part_0, part_1) = (m.model(0).account(hot).unwrap(), m.model(1).account(hot).unwrap());
        assert_eq!((part_0.debits_posted, part_0.credits_posted), (100, 100));
        assert_eq!((part_1.debits_posted, part_1.credits_posted), (0, 90));
        // A retry of a move answers `exists`; changed, its difference.
        let retry =
            vec![send(3, hot, hot, 50, TF::NONE, move_0_1), send(3, hot, hot, 51, TF::NONE, move_0_1)];
        assert_eq!(
            m.apply(0, &CommandBuf::CreateTransfers(retry)),
            Ok(Predicted::Transfers(vec![
                Event::Final(TR::Exists),
                Event::Final(TR::ExistsWithDifferentAmount)
            ]))
        );
    }
}
