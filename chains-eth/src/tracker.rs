//! The watcher's memory of the current branch: the last `window` blocks
//! (hash, parent, deposits found in them) and the deposits not yet final.
//! Pure: the driver ([`crate::watcher`]) feeds it blocks in order and
//! rewinds it when the node switches branch; it answers with events.

use std::collections::{BTreeMap, VecDeque};

use alloy::primitives::B256;
use molly_chains::gateway::{DepositEvent, DepositKey};

use crate::error::EthError;
use crate::persist::{StoredBlock, StoredDeposit, TrackerState};
use crate::scan::{BlockMeta, Found};

/// Recent canonical blocks and pending deposits.
#[derive(Debug)]
pub struct Tracker {
    window: u64,
    blocks: VecDeque<(BlockMeta, Vec<Found>)>,
    /// The parent of the oldest kept block (height, hash): the deepest point
    /// a branch switch can be traced back to.
    floor: Option<(u64, B256)>,
    /// Not-yet-final deposits and the confirmations last reported.
    pending: BTreeMap<DepositKey, (Found, u64)>,
}

impl Tracker {
    /// Keeps `window` blocks (≥ 1).
    pub fn new(window: u64) -> Self {
        assert!(window >= 1);
        Tracker { window, blocks: VecDeque::new(), floor: None, pending: BTreeMap::new() }
    }

    /// The newest block processed.
    pub fn last(&self) -> Option<&BlockMeta> {
        self.blocks.back().map(|(m, _)| m)
    }

    /// The oldest block still kept.
    pub fn oldest(&self) -> Option<&BlockMeta> {
        self.blocks.front().map(|(m, _)| m)
    }

    /// The newest point on the current branch: the last block, or the floor
    /// when every block was rewound.
    pub fn tip(&self) -> Option<(u64, B256)> {
        self.last().map(|m| (m.number, m.hash)).or(self.floor)
    }

    /// The lowest height whose hash is known (the floor).
    pub fn floor(&self) -> Option<u64> {
        self.floor.map(|(n, _)| n)
    }

    /// The kept hash at height `number` (the floor included).
    pub fn hash_at(&self, number: u64) -> Option<B256> {
        if let Some((n, h)) = self.floor {
            if n == number {
                return Some(h);
            }
        }
        let first = self.oldest()?.number;
        let i = number.checked_sub(first)?;
        self.blocks.get(i as usize).map(|(m, _)| m.hash)
    }

    /// How many deposits wait for confirmations.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Everything needed to resume (see [`crate::persist`]).
    pub fn snapshot(&self) -> TrackerState {
        TrackerState {
            floor: self.floor,
            blocks: self
                .blocks
                .iter()
                .map(|(m, found)| StoredBlock {
                    number: m.number,
                    hash: m.hash,
                    parent_hash: m.parent_hash,
                    timestamp: m.timestamp,
                    found: found.iter().map(StoredDeposit::from_found).collect(),
                })
                .collect(),
            pending: self.pending.values().map(|(f, n)| (StoredDeposit::from_found(f), *n)).collect(),
        }
    }

    /// A tracker resumed from `state`, keeping at most `window` blocks.
    /// The blocks must form one chain (each the parent of the next, the
    /// first on the floor).
    pub fn restore(window: u64, state: &TrackerState) -> Result<Self, EthError> {
        let mut t = Tracker::new(window);
        let bad = |why: String| EthError::Journal(format!("watcher state: {why}"));
        t.floor = state.floor;
        for b in &state.blocks {
            let found = b.found.iter().map(StoredDeposit::to_found).collect::<Result<Vec<_>, _>>()?;
            let meta = b.meta();
            if let Some((n, h)) = t.tip() {
                if meta.number != n + 1 || meta.parent_hash != h {
                    return Err(bad(format!("block {} does not extend block {n}", meta.number)));
                }
            }
            t.blocks.push_back((meta, found));
            while t.blocks.len() as u64 > t.window {
                if let Some((m, _)) = t.blocks.pop_front() {
                    t.floor = Some((m.number, m.hash));
                }
            }
        }
        for (d, reported) in &state.pending {
            let f = d.to_found()?;
            t.pending.insert(f.deposit.key.clone(), (f, *reported));
        }
        Ok(t)
    }

    /// Appends the next block. Its parent must be the last block (the caller
    /// rewinds first on a branch switch). Emits `DepositSeen` for its deposits.
    pub fn push(&mut self, meta: BlockMeta, found: Vec<Found>) -> Result<Vec<DepositEvent>, EthError> {
        match self.tip() {
            Some((number, hash)) if meta.number != number + 1 || meta.parent_hash != hash => {
                return Err(EthError::bad(
                    "block",
                    format!(
                        "block {} ({:#x}, parent {:#x}) does not extend block {number} ({hash:#x})",
                        meta.number, meta.hash, meta.parent_hash
                    ),
                ));
            }
            Some(_) => {}
            None => self.floor = meta.number.checked_sub(1).map(|n| (n, meta.parent_hash)),
        }
        let mut events = Vec::with_capacity(found.len());
        for f in &found {
            events.push(DepositEvent::DepositSeen(f.deposit.clone()));
            self.pending.insert(f.deposit.key.clone(), (f.clone(), 1));
        }
        self.blocks.push_back((meta, found));
        while self.blocks.len() as u64 > self.window {
            if let Some((m, _)) = self.blocks.pop_front() {
                self.floor = Some((m.number, m.hash));
            }
        }
        Ok(events)
    }

    /// Drops every block above `ancestor` (the newest block both branches
    /// share) and reverts the deposits found in them.
    pub fn rewind(&mut self, ancestor: u64) -> Vec<DepositEvent> {
        let mut events = Vec::new();
        while self.last().is_some_and(|m| m.number > ancestor) {
            let Some((_, found)) = self.blocks.pop_back() else { break };
            for f in found.into_iter().rev() {
                self.pending.remove(&f.deposit.key);
                events.push(DepositEvent::DepositReverted(f.deposit));
            }
        }
        events.reverse();
        events
    }

    /// Reports confirmations that grew since last time, at the last block's
    /// height; deposits that reach their depth are reported final and forgotten.
    pub fn confirm(&mut self) -> Vec<DepositEvent> {
        let Some((tip, _)) = self.tip() else { return Vec::new() };
        let mut events = Vec::new();
        self.pending.retain(|_, (f, reported)| {
            let confirmations = tip + 1 - f.deposit.block.number;
            if confirmations > *reported {
                *reported = confirmations;
                events.push(DepositEvent::DepositConfirmed {
                    deposit: f.deposit.clone(),
                    confirmations,
                    required: f.required,
                });
            }
            confirmations < f.required
        });
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use molly_chains::gateway::{Asset, Deposit};
    use molly_chains::Chain;

    /// Block `n` of `branch`; every branch shares blocks up to 10.
    fn h(n: u64, branch: u8) -> B256 {
        let mut x = B256::repeat_byte(if n <= 10 { 0 } else { branch });
        x.0[..8].copy_from_slice(&n.to_be_bytes());
        x
    }

    fn meta(number: u64, branch: u8) -> BlockMeta {
        BlockMeta { number, hash: h(number, branch), parent_hash: h(number - 1, branch), timestamp: number }
    }

    fn found(m: &BlockMeta, tx: u8, required: u64) -> Found {
        Found {
            deposit: Deposit {
                key: DepositKey {
                    chain: Chain::Eth,
                    tx_hash: format!("0x{tx:02x}"),
                    index: DepositKey::NATIVE,
                },
                from: String::new(),
                to: String::new(),
                asset: Asset::Native,
                amount: 5,
                block: m.to_ref(),
            },
            required,
        }
    }

    #[test]
    fn confirmations_count_up_to_the_depth_then_stop() {
        let mut t = Tracker::new(8);
        let b1 = meta(1, 0);
        let seen = t.push(b1, vec![found(&b1, 1, 3)]).unwrap();
        assert!(matches!(&seen[..], [DepositEvent::DepositSeen(_)]));
        assert!(t.confirm().is_empty(), "one confirmation was reported by DepositSeen");
        let mut counts = Vec::new();
        for n in 2..=5 {
            t.push(meta(n, 0), vec![]).unwrap();
            for e in t.confirm() {
                let DepositEvent::DepositConfirmed { confirmations, .. } = e else { panic!("{e:?}") };
                counts.push(confirmations);
            }
        }
        assert_eq!(counts, [2, 3]);
        assert_eq!(t.pending_len(), 0);
    }

    #[test]
    fn a_branch_switch_reverts_orphaned_deposits_and_keeps_older_ones() {
        let mut t = Tracker::new(64);
        for n in 1..=12 {
            let m = meta(n, 0);
            let f = if n == 10 || n == 12 { vec![found(&m, n as u8, 6)] } else { vec![] };
            t.push(m, f).unwrap();
        }
        // blocks 11 and 12 are replaced by branch 1.
        let err = t.push(meta(13, 1), vec![]).unwrap_err();
        assert!(err.to_string().contains("does not extend"), "{err}");
        let reverted = t.rewind(10);
        assert_eq!(reverted.len(), 1);
        assert_eq!(reverted[0].deposit().key.tx_hash, "0x0c");
        assert!(matches!(reverted[0], DepositEvent::DepositReverted(_)));
        t.push(meta(11, 1), vec![]).unwrap();
        let events = t.confirm();
        // the deposit of block 10 goes on counting on the new branch; block 12's never confirms.
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].deposit().key.tx_hash, "0x0a");
        assert_eq!(t.hash_at(11), Some(meta(11, 1).hash));
    }

    #[test]
    fn rewinding_every_block_keeps_the_floor_to_resume_from() {
        let mut t = Tracker::new(8);
        let b11 = meta(11, 0);
        t.push(b11, vec![found(&b11, 1, 3)]).unwrap();
        assert_eq!(t.floor(), Some(10));
        assert_eq!(t.rewind(10).len(), 1);
        assert_eq!(t.tip(), Some((10, meta(10, 0).hash)));
        t.push(meta(11, 2), vec![]).unwrap();
        assert!(t.confirm().is_empty());
    }

    #[test]
    fn a_restored_tracker_goes_on_exactly_where_the_snapshot_stopped() {
        let mut t = Tracker::new(8);
        let b1 = meta(1, 0);
        t.push(b1, vec![found(&b1, 1, 4)]).unwrap();
        t.push(meta(2, 0), vec![]).unwrap();
        assert_eq!(t.confirm().len(), 1); // 2 confirmations reported
        let mut r = Tracker::restore(8, &t.snapshot()).unwrap();
        assert_eq!(r.snapshot(), t.snapshot());
        assert_eq!(r.tip(), t.tip());
        assert!(r.confirm().is_empty(), "2 confirmations are not reported again");
        r.push(meta(3, 0), vec![]).unwrap();
        let e = r.confirm();
        assert!(matches!(&e[..], [DepositEvent::DepositConfirmed { confirmations: 3, .. }]), "{e:?}");
        // A reorg across the restart still reverts the deposit.
        assert_eq!(r.rewind(0).len(), 1);
        // A broken chain in the file is refused.
        let mut s = t.snapshot();
        s.blocks.push(crate::persist::StoredBlock { number: 9, ..s.blocks[0].clone() });
        assert!(Tracker::restore(8, &s).is_err());
    }

    #[test]
    fn the_window_bounds_memory() {
        let mut t = Tracker::new(4);
        for n in 1..=20 {
            t.push(meta(n, 0), vec![]).unwrap();
        }
        assert_eq!(t.oldest().unwrap().number, 17);
        assert_eq!(t.floor(), Some(16));
        assert!(t.hash_at(16).is_some());
        assert_eq!(t.hash_at(15), None);
    }
}
