//! The rebalancer: keeps the parts of sharded accounts with a balance
//! limit from running dry while other parts are rich.
//!
//! A sharded account ([`crate::route`]) has a part on every shard, and its
//! limit holds per part: a hot wallet's part on shard 1 cannot pay a
//! withdrawal its part on shard 0 could. Every `interval`, the rebalancer
//! asks every shard for its parts of the sharded accounts with a limit
//! ([`crate::runtime::Request::LimitedParts`]), and for each account whose
//! poorest part's room is below `low_water_percent` of the mean room, moves
//! value from the richest parts so the poor ones reach the mean. A move is
//! an ordinary write: a transfer from the account to itself between two
//! parts ([`crate::route::part_move`]), with a reserved id
//! ([`crate::cross::move_id`]), applied by the cross-shard protocol (all or
//! nothing, journaled on both sides, checked against the giving part's
//! limit at that moment). The rebalancer holds no state: a move that fails
//! because the part changed meanwhile is planned again from fresh figures
//! next time. It only reads balances and writes moves, so it cannot change
//! any account's balance (the parts' sum), only where it is held.
//!
//! ```text
//!  room of a part    debits_must_not_exceed_credits: credits_posted − debits_posted − debits_pending
//!                    credits_must_not_exceed_debits: debits_posted − credits_posted − credits_pending
//!  a move gives room by  debit-limited: rich part → poor part · credit-limited: poor part → rich part
//! ```
//!
//! Accounts with both limits have no room to share and are left alone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use molly_engine::{Account, AccountFlags as AF, CreateTransferResult as TR, Transfer};

use crate::cross::move_id;
use crate::durable::Outcome;
use crate::journal::CommandBuf;
use crate::route::part_move_shards;
use crate::runtime::{reply_channel, Request, Router};

/// Default time between two rebalancing rounds.
pub const INTERVAL_DEFAULT: Duration = Duration::from_millis(100);
/// Default threshold: a part below this share of the mean room is topped up.
pub const LOW_WATER_PERCENT_DEFAULT: u32 = 50;
/// `code` of the rebalancer's moves.
pub const MOVE_CODE: u16 = u16::MAX;
/// Moves sent in one write (one per account and poor part at most).
pub const MOVES_PER_ROUND_MAX: usize = 1024;

/// When and how much to rebalance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RebalanceConfig {
    /// Time between rounds.
    pub interval: Duration,
    /// A part whose room is below this percentage of the mean room (over
    /// the parts) is topped up to the mean. 1..=100.
    pub low_water_percent: u32,
}

impl Default for RebalanceConfig {
    fn default() -> Self {
        Self { interval: INTERVAL_DEFAULT, low_water_percent: LOW_WATER_PERCENT_DEFAULT }
    }
}

/// One move to make: `amount` of `account` from its part on `from` to its part on `to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Move {
    /// The sharded account.
    pub account: u128,
    /// Its ledger.
    pub ledger: u32,
    /// The shard whose part is debited.
    pub from: u32,
    /// The shard whose part is credited.
    pub to: u32,
    /// How much.
    pub amount: u128,
}

impl Move {
    /// The write that makes it, with id `move_id(from, nonce)`.
    pub fn transfer(&self, nonce: u64) -> Transfer {
        Transfer {
            id: move_id(self.from, nonce),
            debit_account_id: self.account,
            credit_account_id: self.account,
            amount: self.amount,
            user_data_32: part_move_shards(self.from, self.to),
            ledger: self.ledger,
            code: MOVE_CODE,
            ..Transfer::default()
        }
    }
}

/// The room a part has before its limit, and whether a move gives it room
/// by crediting it (debit-limited) or by debiting it (credit-limited).
fn room(part: &Account) -> Option<(u128, bool)> {
    let debit_limited = part.flags.contains(AF::DEBITS_MUST_NOT_EXCEED_CREDITS);
    let credit_limited = part.flags.contains(AF::CREDITS_MUST_NOT_EXCEED_DEBITS);
    match (debit_limited, credit_limited) {
        (true, false) => Some((
            part.credits_posted.saturating_sub(part.debits_posted).saturating_sub(part.debits_pending),
            true,
        )),
        (false, true) => Some((
            part.debits_posted.saturating_sub(part.credits_posted).saturating_sub(part.credits_pending),
            false,
        )),
        _ => None,
    }
}

/// The moves that bring one account's poor parts up to the mean room.
/// `parts[shard]` is the part on that shard (`None`: missing there, left
/// out). Pure: the same parts give the same moves.
pub fn plan(parts: &[Option<Account>], low_water_percent: u32) -> Vec<Move> {
    let present: Vec<(u32, &Account)> =
        parts.iter().enumerate().filter_map(|(s, p)| p.as_ref().map(|p| (s as u32, p))).collect();
    let Some(&(_, first)) = present.first() else { return Vec::new() };
    let Some((_, credit_gives)) = room(first) else { return Vec::new() };
    let mut rooms: Vec<(u32, u128)> = Vec::with_capacity(present.len());
    for &(shard, part) in &present {
        match room(part) {
            Some((r, gives)) if gives == credit_gives && part.ledger == first.ledger => {
                rooms.push((shard, r))
            }
            _ => return Vec::new(), // parts that disagree: leave them for an operator
        }
    }
    if rooms.len() < 2 {
        return Vec::new();
    }
    // The mean, without overflow (each room fits u128; so does their sum / n piecewise).
    let n = rooms.len() as u128;
    let mean =
        rooms.iter().map(|&(_, r)| r / n).sum::<u128>() + rooms.iter().map(|&(_, r)| r % n).sum::<u128>() / n;
    let low = mean / 100 * u128::from(low_water_percent) + mean % 100 * u128::from(low_water_percent) / 100;
    let mut poor: Vec<(u32, u128)> =
        rooms.iter().filter(|&&(_, r)| r < low).map(|&(s, r)| (s, mean - r)).collect();
    let mut rich: Vec<(u32, u128)> =
        rooms.iter().filter(|&&(_, r)| r > mean).map(|&(s, r)| (s, r - mean)).collect();
    // Richest first, poorest first; ties by shard (deterministic).
    rich.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    poor.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut moves = Vec::new();
    let mut giver = 0;
    for (to_part, mut need) in poor {
        while need > 0 && giver < rich.len() {
            let amount = need.min(rich[giver].1);
            let (rich_part, poor_part) = (rich[giver].0, to_part);
            // Room moves to the poor part: credit it (debit-limited), or debit it (credit-limited).
            let (from, to) = if credit_gives { (rich_part, poor_part) } else { (poor_part, rich_part) };
            moves.push(Move { account: first.id, ledger: first.ledger, from, to, amount });
            need -= amount;
            rich[giver].1 -= amount;
            if rich[giver].1 == 0 {
                giver += 1;
            }
        }
    }
    moves
}

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Round {
    /// Accounts looked at.
    pub accounts: usize,
    /// Moves applied.
    pub moved: usize,
    /// Moves refused (the part changed meanwhile; planned again next round).
    pub refused: usize,
}

/// One round over every shard: ask, plan, move, wait for the answers.
/// `None` when a shard did not answer (stopping).
pub fn round(router: &Router, config: &RebalanceConfig, nonce: &mut u64) -> Option<Round> {
    let shards = router.shards();
    let mut parts: BTreeMap<u128, Vec<Option<Account>>> = BTreeMap::new();
    for shard in 0..shards {
        let (reply, answer) = reply_channel();
        submit(router, shard, Request::LimitedParts { reply })?;
        for part in answer.blocking_recv().ok()? {
            parts.entry(part.id).or_insert_with(|| vec![None; shards])[shard] = Some(part);
        }
    }
    let mut round = Round { accounts: parts.len(), ..Round::default() };
    let mut per_shard: Vec<Vec<Transfer>> = vec![Vec::new(); shards];
    let mut planned = 0;
    for account_parts in parts.values() {
        for m in plan(account_parts, config.low_water_percent) {
            if planned == MOVES_PER_ROUND_MAX {
                break;
            }
            *nonce += 1;
            per_shard[m.from as usize].push(m.transfer(*nonce));
            planned += 1;
        }
    }
    let mut answers = Vec::new();
    for (shard, moves) in per_shard.into_iter().enumerate().filter(|(_, m)| !m.is_empty()) {
        let (reply, answer) = reply_channel();
        let commands = vec![CommandBuf::CreateTransfers(moves)];
        submit(router, shard, Request::Write { commands, reply })?;
        answers.push(answer);
    }
    for answer in answers {
        let Ok(Ok(outcomes)) = answer.blocking_recv() else { continue };
        for outcome in outcomes {
            if let Outcome::Transfers(results) = outcome {
                let moved = results.iter().filter(|r| **r == TR::Ok).count();
                round.moved += moved;
                round.refused += results.len() - moved;
            }
        }
    }
    Some(round)
}

fn submit(router: &Router, shard: usize, request: Request) -> Option<()> {
    router.submit_blocking(shard, request).ok()
}

/// Runs rounds every `config.interval` on a thread of its own until `stop`
/// is set; `on_round` sees each round's figures.
pub fn spawn(
    router: Router,
    config: RebalanceConfig,
    stop: Arc<AtomicBool>,
    on_round: impl Fn(&Round) + Send + 'static,
) -> std::io::Result<JoinHandle<()>> {
    assert!((1..=100).contains(&config.low_water_percent) && !config.interval.is_zero());
    std::thread::Builder::new().name("molly-rebalance".into()).spawn(move || {
        // Ids unique across restarts: this start's wall clock, then a counter.
        let mut nonce = SystemTime::now().duration_since(UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(config.interval);
            if stop.load(Ordering::Relaxed) {
                break;
            }
            match round(&router, &config, &mut nonce) {
                Some(round) => on_round(&round),
                None => break,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::sharded_id;

    fn part(credits: u128, debits: u128, flags: AF) -> Option<Account> {
        Some(Account {
            id: sharded_id(1),
            ledger: 1,
            code: 1,
            flags,
            credits_posted: credits,
            debits_posted: debits,
            ..Account::default()
        })
    }

    #[test]
    fn poor_parts_are_topped_up_from_rich_ones() {
        let d = AF::DEBITS_MUST_NOT_EXCEED_CREDITS;
        // Rooms 900, 0, 300: mean 400, low water 200: shard 1 needs 400, from shard 0.
        let moves = plan(&[part(1000, 100, d), part(0, 0, d), part(300, 0, d)], 50);
        assert_eq!(moves, [Move { account: sharded_id(1), ledger: 1, from: 0, to: 1, amount: 400 }]);
        // Balanced enough: nothing to do.
        assert_eq!(plan(&[part(500, 0, d), part(300, 0, d)], 50), []);
        // Two poor parts share two rich ones, the sum is kept.
        let moves = plan(&[part(1000, 0, d), part(0, 0, d), part(1000, 0, d), part(0, 0, d)], 50);
        assert_eq!(moves.iter().map(|m| m.amount).sum::<u128>(), 1000);
        assert!(moves.iter().all(|m| [0, 2].contains(&m.from) && [1, 3].contains(&m.to)));
        // Pending debits count against the room.
        let mut pending = part(1000, 0, d);
        pending.as_mut().unwrap().debits_pending = 1000;
        let moves = plan(&[pending, part(600, 0, d)], 50);
        assert_eq!(moves, [Move { account: sharded_id(1), ledger: 1, from: 1, to: 0, amount: 300 }]);
    }

    #[test]
    fn credit_limited_parts_get_room_by_giving() {
        let c = AF::CREDITS_MUST_NOT_EXCEED_DEBITS;
        // Rooms (debits − credits) 1000 and 0: the poor part (1) debits itself to the rich part (0).
        let moves = plan(&[part(0, 1000, c), part(0, 0, c)], 50);
        assert_eq!(moves, [Move { account: sharded_id(1), ledger: 1, from: 1, to: 0, amount: 500 }]);
    }

    #[test]
    fn unlimited_disagreeing_or_single_parts_are_left_alone() {
        let d = AF::DEBITS_MUST_NOT_EXCEED_CREDITS;
        let both = AF(d.0 | AF::CREDITS_MUST_NOT_EXCEED_DEBITS.0);
        assert_eq!(plan(&[part(1000, 0, AF::NONE), part(0, 0, AF::NONE)], 50), []);
        assert_eq!(plan(&[part(1000, 0, both), part(0, 0, both)], 50), []);
        assert_eq!(plan(&[part(1000, 0, d), part(0, 0, AF::CREDITS_MUST_NOT_EXCEED_DEBITS)], 50), []);
        assert_eq!(plan(&[part(1000, 0, d), None], 50), []);
        // Huge rooms do not overflow.
        let moves = plan(&[part(u128::MAX, 0, d), part(0, 0, d)], 100);
        assert_eq!(moves[0].amount, u128::MAX / 2);
    }
}
