//! Where accounts and transfers live: the one place that says which shard
//! applies an event, for the server, the in-process drivers and the shard
//! layer alike.
//!
//! **Plain accounts** live on one shard, [`shard_for`] of their id.
//!
//! **Sharded accounts** — the hot system accounts of a payment gateway (a
//! chain's deposit clearing account, the fee account, a hot wallet's ledger
//! account) — have a *part* on every shard, with the same id and definition;
//! the account's balance is the sum of its parts. An id is sharded when its
//! top 16 bits are `0xFFFE` ([`SHARDED_ID_MIN`]..[`SHARDED_ID_END`]; build
//! one with [`sharded_id`]): a pure function of the id, so every router and
//! every shard agrees without asking anyone.
//!
//! ```text
//!  transfer                                   applied on
//!  plain A → anything                         shard_for(A)
//!  sharded S → plain B                        shard_for(B)   (S's part there: single-shard)
//!  sharded S → sharded S'                     shard_for(transfer id)
//!  S → S (a move between S's parts)           the `from` shard of user_data_32 (see below)
//!  post/void not naming a plain debit account the shard holding the pending transfer (located)
//! ```
//!
//! So a transfer between a user and a system account never crosses shards,
//! and the system account is never one shard's bottleneck. Limits
//! (`debits_must_not_exceed_credits` and the reverse) hold per part: a part
//! can run dry while another is rich. A **move between parts** is a transfer
//! whose debit and credit account are the same sharded account, with
//! `user_data_32 = from_shard << 16 | to_shard`: it runs as a cross-shard
//! transfer from the part on `from` to the part on `to` (all or nothing,
//! checked against `from`'s limits), leaving the account's balance as it
//! was (both its debits and credits grow by the amount). Any other transfer
//! from an account to itself gets `accounts_must_be_different`.

use molly_engine::{Config, Transfer, TransferFlags as TF};

use crate::cross::is_reserved;
pub use crate::runtime::shard_for;

/// The engine configuration of shard `shard` of `shards`: `config` with
/// the shard's timestamp residue (`timestamp_stride = shards`,
/// `timestamp_offset = shard`), so no two shards ever stamp the same
/// nanosecond and the parts of a sharded account merge into one history
/// order. Every engine of a shard — started, recovered, loaded from a
/// snapshot, simulated — is built with it.
pub fn engine_config(config: &Config, shard: u32, shards: u32) -> Config {
    assert!(shard < shards, "shard {shard} of {shards}");
    Config { timestamp_stride: shards, timestamp_offset: shard, ..config.clone() }
}

/// The first sharded account id (`0xFFFE << 112`).
pub const SHARDED_ID_MIN: u128 = 0xFFFE << 112;
/// One past the last sharded account id.
pub const SHARDED_ID_END: u128 = 0xFFFF << 112;

/// True for a sharded account id (a part on every shard).
#[inline(always)]
pub fn is_sharded(id: u128) -> bool {
    id >> 112 == 0xFFFE
}

/// The sharded account id number `n` (`n < 2^112`).
pub const fn sharded_id(n: u128) -> u128 {
    assert!(n < 1 << 112, "a sharded id has 112 bits of its own");
    SHARDED_ID_MIN | n
}

/// True for an id that lives on exactly one shard (not 0, `u128::MAX`,
/// sharded or reserved).
#[inline(always)]
pub fn is_plain(id: u128) -> bool {
    id != 0 && id != u128::MAX && !is_sharded(id) && !is_reserved(id)
}

/// Where an account's writes go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AccountRoute {
    /// Its one shard.
    Shard(u32),
    /// Every shard (a sharded account: one part each).
    Every,
}

/// The shard(s) holding account `id`. Ids no shard can hold (0,
/// `u128::MAX`, reserved) go to shard 0, whose engine or shard layer answers
/// them with their result code.
pub fn account_route(id: u128, shards: u32) -> AccountRoute {
    if is_sharded(id) && shards > 1 {
        AccountRoute::Every
    } else if is_plain(id) {
        AccountRoute::Shard(shard_for(id, shards))
    } else {
        AccountRoute::Shard(0)
    }
}

/// Where a transfer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferRoute {
    /// This shard applies it.
    Shard(u32),
    /// A post or void whose shard is the one holding its pending transfer
    /// (`pending_id`): the caller finds it (by asking every shard).
    Pending,
}

/// A move between the parts of a sharded account: `(from, to)`, when `t`
/// is one for `shards` shards.
pub fn part_move(t: &Transfer, shards: u32) -> Option<(u32, u32)> {
    if t.debit_account_id != t.credit_account_id || !is_sharded(t.debit_account_id) {
        return None;
    }
    let (from, to) = (t.user_data_32 >> 16, t.user_data_32 & 0xFFFF);
    (from < shards && to < shards && from != to).then_some((from, to))
}

/// The `user_data_32` of a move between parts from shard `from` to `to`.
pub fn part_move_shards(from: u32, to: u32) -> u32 {
    assert!(from < 1 << 16 && to < 1 << 16);
    from << 16 | to
}

/// The shard that applies transfer `t` (see the module's table).
pub fn transfer_route(t: &Transfer, shards: u32) -> TransferRoute {
    if shards == 1 {
        return TransferRoute::Shard(0);
    }
    let (debit, credit) = (t.debit_account_id, t.credit_account_id);
    if is_plain(debit) {
        return TransferRoute::Shard(shard_for(debit, shards));
    }
    if t.flags.intersects(TF::POST_PENDING | TF::VOID_PENDING) && t.pending_id != 0 {
        return TransferRoute::Pending;
    }
    if let Some((from, _)) = part_move(t, shards) {
        return TransferRoute::Shard(from);
    }
    if is_sharded(debit) && is_plain(credit) {
        return TransferRoute::Shard(shard_for(credit, shards));
    }
    if is_sharded(debit) && is_sharded(credit) {
        return TransferRoute::Shard(shard_for(t.id, shards));
    }
    // Invalid or reserved debit accounts: shard 0 answers with the code.
    TransferRoute::Shard(0)
}

/// The shard an account a transfer credits lives on, if not `shard`: the
/// peer of a cross-shard transfer applied on `shard` (`None`: credited
/// here). Posts and voids credit no one new.
pub fn credit_peer(t: &Transfer, shard: u32, shards: u32) -> Option<u32> {
    if shards == 1 || t.flags.intersects(TF::POST_PENDING | TF::VOID_PENDING) {
        return None;
    }
    if let Some((from, to)) = part_move(t, shards) {
        return (from == shard).then_some(to);
    }
    let credit = t.credit_account_id;
    if !is_plain(credit) {
        return None;
    }
    let peer = shard_for(credit, shards);
    (peer != shard).then_some(peer)
}

/// True when account `id` may be written on `shard` (created, or debited
/// by a transfer): its own shard, or any shard for sharded, reserved and
/// invalid ids (the engine or shard layer answers those per event).
pub fn owns(id: u128, shard: u32, shards: u32) -> bool {
    shards == 1 || !is_plain(id) || shard_for(id, shards) == shard
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transfer(id: u128, debit: u128, credit: u128) -> Transfer {
        Transfer {
            id,
            debit_account_id: debit,
            credit_account_id: credit,
            amount: 1,
            ledger: 1,
            code: 1,
            ..Default::default()
        }
    }

    #[test]
    fn user_and_system_transfers_stay_on_the_users_shard() {
        let hot = sharded_id(7);
        assert!(is_sharded(hot) && !is_plain(hot) && !is_reserved(hot));
        assert!(!is_sharded(SHARDED_ID_MIN - 1) && !is_sharded(SHARDED_ID_END));
        for user in 1..200u128 {
            let home = shard_for(user, 4);
            assert_eq!(transfer_route(&transfer(9, user, hot), 4), TransferRoute::Shard(home));
            assert_eq!(transfer_route(&transfer(9, hot, user), 4), TransferRoute::Shard(home));
            assert_eq!(credit_peer(&transfer(9, user, hot), home, 4), None);
            assert_eq!(credit_peer(&transfer(9, hot, user), home, 4), None);
        }
        // Two plain accounts: the debit's shard, the credit's is the peer.
        let (a, b) = (1..).map(|i| (i, i + 1)).find(|&(a, b)| shard_for(a, 2) != shard_for(b, 2)).unwrap();
        let t = transfer(9, a, b);
        assert_eq!(transfer_route(&t, 2), TransferRoute::Shard(shard_for(a, 2)));
        assert_eq!(credit_peer(&t, shard_for(a, 2), 2), Some(shard_for(b, 2)));
        // Two sharded accounts: by the transfer id, never across shards.
        let t = transfer(12345, hot, sharded_id(8));
        assert_eq!(transfer_route(&t, 3), TransferRoute::Shard(shard_for(12345, 3)));
        assert_eq!(credit_peer(&t, 1, 3), None);
        assert_eq!(account_route(hot, 3), AccountRoute::Every);
        assert_eq!(account_route(hot, 1), AccountRoute::Shard(0));
        assert_eq!(account_route(0, 3), AccountRoute::Shard(0));
    }

    #[test]
    fn moves_between_parts_name_both_shards() {
        let hot = sharded_id(1);
        let mut t = transfer(5, hot, hot);
        t.user_data_32 = part_move_shards(2, 0);
        assert_eq!(part_move(&t, 3), Some((2, 0)));
        assert_eq!(transfer_route(&t, 3), TransferRoute::Shard(2));
        assert_eq!(credit_peer(&t, 2, 3), Some(0));
        // Not a move: a shard out of range, the same shard twice, a plain account.
        for bad in [part_move_shards(3, 0), part_move_shards(1, 1)] {
            t.user_data_32 = bad;
            assert_eq!(part_move(&t, 3), None);
            assert_eq!(credit_peer(&t, 1, 3), None);
        }
        assert_eq!(part_move(&transfer(5, 4, 4), 3), None);
        // Posts and voids not naming a plain debit account are located.
        let post = Transfer { pending_id: 77, flags: TF::POST_PENDING, ..transfer(6, hot, 0) };
        assert_eq!(transfer_route(&post, 2), TransferRoute::Pending);
        let post = Transfer { pending_id: 77, flags: TF::VOID_PENDING, ..transfer(6, 0, 0) };
        assert_eq!(transfer_route(&post, 2), TransferRoute::Pending);
        assert_eq!(transfer_route(&post, 1), TransferRoute::Shard(0));
    }

    #[test]
    fn ownership() {
        let hot = sharded_id(3);
        for shard in 0..3 {
            assert!(owns(hot, shard, 3));
            assert!(owns(0, shard, 3));
        }
        let a = 42u128;
        assert!(owns(a, shard_for(a, 3), 3));
        assert!(!owns(a, (shard_for(a, 3) + 1) % 3, 3));
    }

    /// The parts of a sharded account on two shards that see the same
    /// clock and the same writes still stamp different nanoseconds: their
    /// merged history has one order, and paging by timestamp skips nothing.
    #[test]
    fn shards_stamp_disjoint_nanoseconds() {
        use molly_engine::{Account, Engine};
        let config = Config::default();
        let part = sharded_id(7);
        let mut stamps = std::collections::BTreeMap::new();
        for shard in 0..2 {
            let mut engine = Engine::new(engine_config(&config, shard, 2)).unwrap();
            let accounts = [part, 1].map(|id| Account { id, ledger: 1, code: 1, ..Account::default() });
            engine.create_accounts(&accounts, &mut Vec::new()).unwrap();
            engine.tick(5_000, &mut Vec::new());
            let transfers: Vec<Transfer> = (10..14).map(|id| transfer(id, 1, part)).collect();
            engine.create_transfers(&transfers, &mut Vec::new()).unwrap();
            let mut found = Vec::new();
            engine.lookup_transfers(&(10..14).collect::<Vec<u128>>(), &mut found).unwrap();
            assert_eq!(found.len(), 4);
            for t in found {
                assert!(
                    stamps.insert(t.timestamp, shard).is_none(),
                    "timestamp {} stamped twice",
                    t.timestamp
                );
            }
        }
        // Interleaved: both shards' transfers fall in one short span.
        let order: Vec<u32> = stamps.values().copied().collect();
        assert_eq!(order, [1, 0, 1, 0, 1, 0, 1, 0]);
    }
}
