//! What the simulated clients send: account batches (new, re-sent, changed,
//! invalid, linked), transfer batches of every kind (plain, pending with
//! timeouts, full and partial posts, voids, balancing, closing, linked
//! chains open and closed, invalid fields, same account, missing accounts,
//! ledger and code mismatches, amounts that overflow), cross-shard transfers,
//! and retries of earlier batches, exact or changed. With two or three
//! shards also sharded (hot system) accounts: their parts created on every
//! shard, transfers between users and the local part, from the local part
//! to another shard's account, between sharded accounts, and moves between
//! the parts of one (valid, over the `from` part's limit, with the
//! rebalancer's reserved ids, malformed, misrouted).

use std::collections::VecDeque;

use molly_engine::{Account, AccountFlags as AF, Transfer, TransferFlags as TF};

use super::model::part_move;
use super::Prng;
use crate::cross::{move_id, settle_id, RESERVED_ID_MIN};
use crate::journal::CommandBuf;
use crate::route::{is_sharded, part_move_shards, sharded_id, SHARDED_ID_MIN};
use crate::runtime::shard_for;

/// Batches kept per shard for retries.
const SENT_KEPT: usize = 256;
/// Pending transfers kept per shard for posts and voids.
const PENDINGS_KEPT: usize = 64;
/// Events in one new transfer batch, at most.
pub const BATCH_EVENTS_MAX: u64 = 12;
/// With several shards, the first writes to each shard create all its
/// accounts and parts.
const CREATES_FIRST: u32 = 3;
/// Sharded accounts (two or three shards): `sharded_id(n)` for these `n`.
const SHARDED: [u128; 3] = [1, 2, 3];

/// The clients' side: what was sent where, for retries and completions.
#[derive(Debug)]
pub struct Workload {
    shards: u32,
    /// Plain account ids clients create, by owning shard.
    owned: Vec<Vec<u128>>,
    /// Account ids a shard may be sent (created there, debited there):
    /// its plain ones and the sharded ones (a part on every shard).
    local: Vec<Vec<u128>>,
    /// The same, with the ids no one creates that the shard would own.
    local_or_missing: Vec<Vec<u128>>,
    /// Every id clients create, and two that no one ever creates.
    all: Vec<u128>,
    /// Sharded account ids (none with one shard).
    sharded: Vec<u128>,
    /// Per shard: writes of all its accounts (and parts) sent first (several shards).
    creates_sent: Vec<u32>,
    next_id: u128,
    sent: Vec<VecDeque<Vec<Transfer>>>,
    pendings: Vec<VecDeque<(u128, u128)>>,
}

/// One client write.
#[derive(Debug)]
pub struct Write {
    /// What is sent.
    pub commands: Vec<CommandBuf>,
    /// Per command: a transfer batch whose ids were never sent before.
    pub fresh: Vec<bool>,
    /// Sent to the wrong shard on purpose: it must be refused whole.
    pub misrouted: bool,
}

/// The account clients create with `id`: ledger, code and flags follow from
/// the id, so a re-sent account answers `exists`. Sharded accounts: a
/// clearing account without a limit, a hot wallet whose parts must not go
/// below zero, and one whose parts' credits must not exceed their debits.
pub fn account(id: u128) -> Account {
    if is_sharded(id) {
        let flags = match id - SHARDED_ID_MIN {
            2 => AF::DEBITS_MUST_NOT_EXCEED_CREDITS | AF::HISTORY,
            3 => AF::CREDITS_MUST_NOT_EXCEED_DEBITS,
            _ => AF::NONE,
        };
        return Account { id, ledger: 1, code: 9, flags, ..Account::default() };
    }
    let flags = match id % 5 {
        1 => AF::DEBITS_MUST_NOT_EXCEED_CREDITS,
        2 => AF::CREDITS_MUST_NOT_EXCEED_DEBITS,
        3 => AF::HISTORY,
        _ => AF::NONE,
    };
    Account {
        id,
        ledger: if id.is_multiple_of(7) { 2 } else { 1 },
        code: 1 + (id % 2) as u16,
        flags,
        user_data_64: id as u64,
        ..Account::default()
    }
}

impl Workload {
    /// Clients of `shards` shards.
    pub fn new(shards: u32) -> Self {
        let created = 6 * u128::from(shards) + 6;
        let mut owned = vec![Vec::new(); shards as usize];
        for id in 1..=created {
            owned[shard_for(id, shards) as usize].push(id);
        }
        assert!(owned.iter().all(|ids| ids.len() >= 2), "every shard owns accounts: {owned:?}");
        // With one shard a sharded id is an ordinary account: none then (so
        // one shard's seeds run as before sharded accounts were added).
        let sharded: Vec<u128> =
            if shards > 1 { SHARDED.iter().map(|&n| sharded_id(n)).collect() } else { Vec::new() };
        let mut local = owned.clone();
        let mut local_or_missing = owned.clone();
        for id in created + 1..=created + 2 {
            local_or_missing[shard_for(id, shards) as usize].push(id);
        }
        for ids in local.iter_mut().chain(local_or_missing.iter_mut()) {
            ids.extend(&sharded);
        }
        let mut all: Vec<u128> = (1..=created + 2).collect();
        all.extend(&sharded);
        Self {
            shards,
            owned,
            local,
            local_or_missing,
            all,
            sharded,
            creates_sent: vec![0; shards as usize],
            next_id: 1,
            sent: (0..shards).map(|_| VecDeque::new()).collect(),
            pendings: (0..shards).map(|_| VecDeque::new()).collect(),
        }
    }

    /// Transfer ids handed out so far (the next one is this plus one).
    pub fn transfer_ids(&self) -> u128 {
        self.next_id - 1
    }

    /// A write for `shard`.
    pub fn write(&mut self, prng: &mut Prng, shard: usize) -> Write {
        if self.shards > 1 && self.creates_sent[shard] < CREATES_FIRST {
            // Every account of the shard and every part first (a crash may
            // lose a write before it is durable), so moves between parts
            // find their parts (later writes create them again too).
            self.creates_sent[shard] += 1;
            let commands =
                vec![CommandBuf::CreateAccounts(self.local[shard].iter().map(|&id| account(id)).collect())];
            return Write { commands, fresh: vec![false], misrouted: false };
        }
        if self.shards > 1 && prng.chance(1) {
            // An account of another shard, or a move from another shard's
            // part: refused before anything is journaled.
            let other = (shard + 1 + prng.below(u64::from(self.shards) - 1) as usize) % self.shards as usize;
            if prng.chance(50) {
                let id = self.owned[other][0];
                let commands = vec![CommandBuf::CreateAccounts(vec![account(id)])];
                return Write { commands, fresh: vec![false], misrouted: true };
            }
            // With a transfer of its own before it: the write is refused whole.
            let mut first = self.transfer(prng, shard);
            let id = self.next_id;
            self.next_id += 1;
            let mut move_ = self.move_between_parts(prng, shard, id);
            first.flags = TF::NONE;
            move_.credit_account_id = move_.debit_account_id;
            move_.user_data_32 = part_move_shards(other as u32, shard as u32);
            let commands = vec![CommandBuf::CreateTransfers(vec![first, move_])];
            return Write { commands, fresh: vec![false], misrouted: true };
        }
        if prng.chance(4) {
            let commands = vec![CommandBuf::CreateAccounts(self.accounts(prng, shard))];
            return Write { commands, fresh: vec![false], misrouted: false };
        }
        let (mut commands, mut fresh) = (Vec::new(), Vec::new());
        let mut misrouted = false;
        for _ in 0..1 + prng.below(2) {
            let (batch, new) = self.transfers(prng, shard);
            // A retry changed into a move from another shard's part (a
            // sharded account to itself whose `user_data_32` was changed).
            misrouted |= batch
                .iter()
                .any(|t| part_move(t, self.shards).is_some_and(|(from, _)| from as usize != shard));
            commands.push(CommandBuf::CreateTransfers(batch));
            fresh.push(new);
        }
        Write { commands, fresh, misrouted }
    }

    fn pick(prng: &mut Prng, ids: &[u128]) -> u128 {
        ids[prng.below(ids.len() as u64) as usize]
    }

    /// An account batch: usually every account of the shard (created once,
    /// then `exists`), else a few of them, some changed or invalid, some linked.
    fn accounts(&mut self, prng: &mut Prng, shard: usize) -> Vec<Account> {
        let owned = &self.local[shard];
        if prng.chance(60) {
            return owned.iter().map(|&id| account(id)).collect();
        }
        let mut batch: Vec<Account> =
            (0..1 + prng.below(4)).map(|_| account(Self::pick(prng, owned))).collect();
        for a in &mut batch {
            match prng.below(40) {
                0 => a.user_data_128 = 1,
                1 => a.flags = AF(a.flags.0 ^ AF::HISTORY.0),
                2 => a.ledger = 3,
                3 => a.code += 1,
                4 => a.timestamp = 1,
                5 => a.reserved = 1,
                6 => a.id = 0,
                7 => a.flags = AF(1 << 9),
                8 => a.ledger = 0,
                9 => a.credits_posted = 1,
                10 => a.flags = AF::DEBITS_MUST_NOT_EXCEED_CREDITS | AF::CREDITS_MUST_NOT_EXCEED_DEBITS,
                11 => a.id = RESERVED_ID_MIN + u128::from(prng.below(4)),
                12..=17 => a.flags |= AF::LINKED,
                _ => {}
            }
        }
        batch
    }

    /// A transfer batch for `shard`: new events of every kind (`true`), or a
    /// retry of an earlier batch, exact or with one event changed.
    fn transfers(&mut self, prng: &mut Prng, shard: usize) -> (Vec<Transfer>, bool) {
        let sent = &self.sent[shard];
        if !sent.is_empty() && prng.chance(12) {
            let mut batch = sent[prng.below(sent.len() as u64) as usize].clone();
            if prng.chance(25) {
                let i = prng.below(batch.len() as u64) as usize;
                let t = &mut batch[i];
                // Every field a retry can differ in, in the order they are compared.
                match prng.below(11) {
                    0 => t.flags = TF(t.flags.0 ^ TF::BALANCING_DEBIT.0),
                    1 => t.pending_id = t.pending_id.wrapping_add(1),
                    2 => t.timeout = t.timeout.wrapping_add(1),
                    // Still an account of this shard: a write is routed by its debit accounts.
                    3 => t.debit_account_id = Self::pick(prng, &self.local[shard]),
                    4 => t.credit_account_id = t.credit_account_id.wrapping_add(1),
                    5 => t.amount = t.amount.wrapping_add(1),
                    6 => t.user_data_128 ^= 1,
                    7 => t.user_data_64 ^= 1,
                    8 => t.user_data_32 ^= 1,
                    9 => t.ledger ^= 1,
                    _ => t.code = t.code.wrapping_add(1),
                }
            }
            return (batch, false);
        }
        let size = 1 + prng.below(BATCH_EVENTS_MAX);
        let batch: Vec<Transfer> = (0..size).map(|_| self.transfer(prng, shard)).collect();
        self.sent[shard].push_back(batch.clone());
        if self.sent[shard].len() > SENT_KEPT {
            self.sent[shard].pop_front();
        }
        (batch, true)
    }

    fn transfer(&mut self, prng: &mut Prng, shard: usize) -> Transfer {
        let id = self.next_id;
        self.next_id += 1;
        // A transfer goes to its debit account's shard (else the write is refused whole).
        // (Sharded accounts have a part on every shard: with a plain credit
        // account of another shard, a transfer from the local part is
        // cross-shard.)
        let debit = if prng.chance(3) {
            Self::pick(prng, &self.local_or_missing[shard])
        } else {
            Self::pick(prng, &self.local[shard])
        };
        // Mostly local; a third of the rest name any account (another shard's, or none's).
        let credit =
            if prng.chance(70) { Self::pick(prng, &self.local[shard]) } else { Self::pick(prng, &self.all) };
        let ledger =
            if prng.chance(95) { account(debit).ledger } else { [0, 1, 2, 77][prng.below(4) as usize] };
        let amount = if prng.chance(1) { u128::MAX / 3 } else { 1 + u128::from(prng.below(500)) };
        let mut t = Transfer {
            id,
            debit_account_id: debit,
            credit_account_id: credit,
            amount,
            ledger,
            code: if prng.chance(2) { 0 } else { 1 },
            user_data_64: prng.below(3),
            ..Transfer::default()
        };
        match prng.below(100) {
            0..=24 => {}
            25..=41 => {
                t.flags = TF::PENDING;
                t.timeout = prng.below(4) as u32;
                match prng.below(40) {
                    0 => t.flags |= TF::CLOSING_DEBIT,
                    1 => t.flags |= TF::CLOSING_CREDIT,
                    _ => {}
                }
                self.pendings[shard].push_back((id, t.amount));
                if self.pendings[shard].len() > PENDINGS_KEPT {
                    self.pendings[shard].pop_front();
                }
            }
            42..=58 => {
                let post = prng.chance(60);
                let (pending_id, pending_amount) = match self.pendings[shard].len() {
                    0 => (1 + u128::from(prng.below(id as u64)), 1),
                    n => self.pendings[shard][prng.below(n as u64) as usize],
                };
                let amount = match prng.below(10) {
                    0..=4 => 0,
                    5..=6 if post => 1 + prng.below(pending_amount.min(1 << 20) as u64) as u128,
                    7 => pending_amount.saturating_add(1),
                    _ => pending_amount,
                };
                t = Transfer {
                    id,
                    pending_id,
                    amount,
                    flags: if post { TF::POST_PENDING } else { TF::VOID_PENDING },
                    ..Transfer::default()
                };
                match prng.below(20) {
                    0 => t.debit_account_id = debit,
                    1 => t.code = 1,
                    2 => t.ledger = 1,
                    3 => t.user_data_128 = 5,
                    4 => t.timeout = 1,
                    _ => {}
                }
            }
            59..=65 => {
                t.flags = if prng.chance(50) { TF::BALANCING_DEBIT } else { TF::BALANCING_CREDIT };
                t.amount = if prng.chance(20) { u128::MAX } else { u128::from(prng.below(1000)) };
            }
            66..=78 => t.flags = TF::LINKED,
            79..=81 => t.credit_account_id = t.debit_account_id,
            82 => t.id = 0,
            83 => t.id = RESERVED_ID_MIN + u128::from(id as u32),
            84 => t.timestamp = 1,
            85 => t.flags = TF(1 << 12),
            86 => t.pending_id = 1,
            87 => t.timeout = 1,
            88 => t.flags = TF::PENDING | TF::POST_PENDING,
            89 => t.credit_account_id = RESERVED_ID_MIN + 1,
            90 => t.amount = 0,
            91..=95 if self.shards > 1 => t = self.move_between_parts(prng, shard, id),
            _ => {}
        }
        t
    }

    /// A move between the parts of a sharded account, from this shard's
    /// part (docs/shards.md, "Hot accounts"): mostly valid, sometimes with
    /// the rebalancer's kind of reserved id, or refused (`from` = `to`, a
    /// shard out of range, a reserved id of another kind or on a transfer
    /// that is not a move, unsupported flags). `id`: a new one.
    fn move_between_parts(&mut self, prng: &mut Prng, shard: usize, id: u128) -> Transfer {
        assert!(self.shards > 1);
        let hot = Self::pick(prng, &self.sharded);
        let to = (shard as u32 + 1 + prng.below(u64::from(self.shards) - 1) as u32) % self.shards;
        let mut t = Transfer {
            id,
            debit_account_id: hot,
            credit_account_id: hot,
            amount: 1 + u128::from(prng.below(300)),
            ledger: account(hot).ledger,
            code: 1,
            user_data_32: part_move_shards(shard as u32, to),
            ..Transfer::default()
        };
        match prng.below(20) {
            0..=3 => t.id = move_id(shard as u32, id as u64),
            4 => t.user_data_32 = part_move_shards(shard as u32, shard as u32),
            5 => t.user_data_32 = part_move_shards(shard as u32, self.shards),
            6 => t.id = settle_id(shard as u32, id as u64),
            7 => {
                // The rebalancer's kind of id on a transfer between two sharded accounts.
                t.id = move_id(shard as u32, id as u64);
                t.credit_account_id = Self::pick(prng, &self.sharded);
            }
            8 => t.flags = TF::PENDING,
            9 => t.flags = TF::BALANCING_CREDIT,
            10..=11 => {
                t.flags = TF::BALANCING_DEBIT;
                t.amount = if prng.chance(20) { u128::MAX } else { u128::from(prng.below(1000)) };
            }
            12 => t.amount = u128::MAX / 3,
            _ => {}
        }
        t
    }
}
