//! `ShardCore`: one shard's logic with no I/O, clock or thread of its own.
//!
//! A driver feeds it requests and the current time, writes the groups it
//! seals wherever the journal lives, and reports back when each is durable
//! (or failed). The glommio runtime drives it with io_uring and the wall
//! clock; the simulator (issue 8) will drive the same code with a simulated
//! disk and clock.
//!
//! ```text
//!  offer(request, now) ─► reads answered · writes staged (Err(request) = group full
//!                         or its cross-shard transfers would pass `intents_max`)
//!  deliver(peer, message, now) ─► credit legs / answers staged (Err(message) = group full);
//!                         an answer also answers the writes it decides (reads then
//!                         wait until its settle is applied)
//!  seal(now) ─► Some((offset, bytes)) to write durably   (None: nothing to do)
//!  apply_ahead() ─► (optional, while the write is in flight) apply the group,
//!              holding its answers, and its messages in the outboxes
//!  durable() ─► apply the group (unless applied ahead); reply to writes with no
//!              cross-shard transfer undecided, park the others; queue messages
//!              in outbox(peer); answer the reads deferred for it
//!  write_failed(reason) ─► refuse writes from now on (and reads, if the group
//!              was applied ahead: the engine then holds what the journal does not)
//! ```
//!
//! Ring messages are inputs like requests: the core stays deterministic and
//! I/O-free, and the two-core tests drive two of them step by step
//! (`shards/tests/cross_shard.rs`).

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use molly_engine::{CreateTransferResult as TR, Engine, Transfer};
use smallvec::SmallVec;

use crate::buggify::buggify;
use crate::cross::{Cross, Effects, FixedHasher, Message};
use crate::durable::{JournalWriter, Outcome};
use crate::journal::{Command, CommandBuf, HEADER_SIZE};
use crate::metrics::ShardMetrics;
use crate::route::{credit_peer, owns, part_move};
use crate::runtime::{shard_for, Reply, Request, ShardError, ShardStats, WriteReply};
use crate::snapshot::{SegmentRef, SnapshotDone, SnapshotError, SnapshotJob};

/// Default limit of open cross-shard intents per shard: 8 full batches.
pub const INTENTS_MAX_DEFAULT: usize = 8 * molly_engine::config::BATCH_EVENTS_MAX_DEFAULT as usize;

/// Default full transfer blocks kept in memory once durable in a segment:
/// 16 × 65,536 = 1,048,576 transfers (128 MiB).
pub const BLOCKS_IN_MEMORY_DEFAULT: usize = 16;

/// Where a staged command came from.
enum Source {
    /// A caller's write.
    Client {
        reply: Reply<WriteReply>,
        /// For the batch-latency metric only.
        taken: Instant,
        /// Intents it may open (counted against `intents_max` while staged).
        bound: usize,
    },
    /// The shard's own tick: no caller waits for it.
    Tick,
    /// Credit legs from a peer, or settles of our intents.
    Peer,
}

/// A write taken into the current group.
struct Pending {
    commands: Vec<CommandBuf>,
    source: Source,
}

/// A caller's write whose cross-shard transfers are still in flight: it is
/// answered once every one of them is settled.
struct Parked {
    reply: Reply<WriteReply>,
    outcomes: Vec<Outcome>,
    waiting: usize,
    taken: Instant,
}

/// An event of a parked write waiting for intent settle.
struct Waiter {
    parked: u64,
    command: usize,
    event: usize,
    /// True for the event that opened the intent; false for an identical retry.
    original: bool,
}

/// One shard's engine, journal position, open group and cross-shard state.
pub struct ShardCore {
    shard: usize,
    shards: u32,
    engine: Engine,
    writer: JournalWriter,
    group: Vec<Pending>,
    failed: Option<String>,
    expired: Vec<u128>,
    metrics: Arc<ShardMetrics>,
    cross: Cross,
    effects: Effects,
    /// Limit of open intents plus those the staged writes may open.
    intents_max: usize,
    /// Intents the staged writes may open (an upper bound).
    intents_staged: usize,
    /// Intents whose settle is staged in the open group.
    settling: HashSet<u128, FixedHasher>,
    /// Messages for each peer, oldest first (bounded by the intents in flight).
    outbox: Vec<VecDeque<Message>>,
    parked: BTreeMap<u64, Parked>,
    parked_next: u64,
    waiters: HashMap<u128, SmallVec<[Waiter; 1]>, FixedHasher>,
    /// Legs per message: a message becomes one journal entry on its receiver.
    message_legs_max: usize,
    /// A group is sealed and being written: nothing may join it.
    sealed: bool,
    /// The sealed group was applied while it was written
    /// ([`ShardCore::apply_ahead`]): what it answers waits in here, and what it
    /// sends waits in the outboxes past `outbox_marks`, until it is durable.
    held: Option<Vec<HeldAnswer>>,
    /// Each outbox's length when the group applied ahead began: messages past
    /// it are the group's, dropped if its write fails.
    outbox_marks: Vec<usize>,
    /// A group applied ahead was never made durable: the engine holds what
    /// the journal does not, so reads are refused until a restart.
    diverged: bool,
    /// The open group holds settles of writes already answered (see
    /// [`ShardCore::deliver`]): reads wait until it is applied. (Answers
    /// are delivered only while no group is sealed, so the open group is
    /// the next one [`ShardCore::durable`] applies.)
    answered_unsettled: bool,
    /// Intents found open at start that are not settled yet: any of them
    /// may have been answered before the crash (see [`ShardCore::deliver`]),
    /// so reads wait for them too.
    recovered_open: HashSet<u128, FixedHasher>,
    /// Reads taken while `answered_unsettled` or `recovered_open` held
    /// them back, oldest first.
    reads_deferred: VecDeque<Request>,
    /// Segment files holding the full transfer blocks written so far.
    segments: Vec<SegmentRef>,
    /// A snapshot is being written (by whoever took its job).
    snapshot_running: bool,
    /// The last snapshot's parts, handed back empty of blocks: the next
    /// capture copies into them. Kept between snapshots: a copy of the
    /// accounts (128 B each), the tail (≤ 8 MiB) and the transfer states
    /// (1 B each, with room to grow); the peak is unchanged (a capture held
    /// as much while it was written).
    capture: Option<molly_engine::SnapshotParts>,
    /// Snapshots known good, oldest first (their next sequences): loaded at
    /// start or written by this core. Journal files are deleted only behind
    /// snapshots in this list ([`crate::journal_files::prune`]).
    snapshots_good: Vec<u64>,
    /// The next sequence of the snapshot being written.
    snapshot_sequence: u64,
    /// Keep every journal file (no deletion after snapshots).
    keep_journal: bool,
    /// Full transfer blocks kept in memory once they have a durable copy.
    blocks_in_memory: usize,
}

/// An answer held until its group is durable: the reply, its outcomes, and
/// when the write was taken.
type HeldAnswer = (Reply<WriteReply>, Vec<Outcome>, Instant);

impl std::fmt::Debug for ShardCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardCore")
            .field("shard", &self.shard)
            .field("engine", &self.engine)
            .field("group", &self.group.len())
            .field("intents", &self.cross.intents().len())
            .field("parked", &self.parked.len())
            .field("failed", &self.failed)
            .finish()
    }
}

impl ShardCore {
    /// A core for shard `shard` of `shards`, from its recovered engine and
    /// journal position (see [`crate::durable::recover`]), with no open
    /// cross-shard intents (see [`ShardCore::with_cross`]).
    pub fn new(
        shard: usize,
        shards: u32,
        engine: Engine,
        writer: JournalWriter,
        metrics: Arc<ShardMetrics>,
    ) -> Self {
        let message_legs_max = engine.config().batch_events_max as usize;
        Self {
            shard,
            shards,
            engine,
            writer,
            group: Vec::new(),
            failed: None,
            expired: Vec::new(),
            metrics,
            cross: Cross::new(shard as u32, shards),
            effects: Effects::default(),
            intents_max: INTENTS_MAX_DEFAULT,
            intents_staged: 0,
            settling: HashSet::default(),
            outbox: (0..shards).map(|_| VecDeque::new()).collect(),
            parked: BTreeMap::new(),
            parked_next: 0,
            waiters: HashMap::default(),
            message_legs_max,
            sealed: false,
            held: None,
            outbox_marks: Vec::new(),
            diverged: false,
            answered_unsettled: false,
            recovered_open: HashSet::default(),
            reads_deferred: VecDeque::new(),
            segments: Vec::new(),
            snapshot_running: false,
            capture: None,
            snapshots_good: Vec::new(),
            snapshot_sequence: 0,
            keep_journal: false,
            blocks_in_memory: BLOCKS_IN_MEMORY_DEFAULT,
        }
    }

    /// Continues from the transfer segments recovery found.
    pub fn with_segments(mut self, segments: Vec<SegmentRef>) -> Self {
        self.segments = segments;
        self.update_block_metrics();
        self
    }

    /// Continues after recovery loaded the snapshot at `position` (a
    /// snapshot known good, behind which journal files may go).
    pub fn with_snapshot_loaded(mut self, position: Option<crate::snapshot::Position>) -> Self {
        self.snapshots_good = position.map(|p| p.next_sequence).into_iter().collect();
        self
    }

    /// Starts a new journal file once the current one holds `bytes` (it
    /// also starts one at every snapshot).
    pub fn set_journal_file_bytes(&mut self, bytes: u64) {
        self.writer.set_file_bytes_max(bytes);
    }

    /// Keeps every journal file when `keep` (no deletion after snapshots).
    pub fn set_keep_journal(&mut self, keep: bool) {
        self.keep_journal = keep;
    }

    /// True when journal files are kept whatever the snapshots cover.
    pub fn keep_journal(&self) -> bool {
        self.keep_journal
    }

    /// Snapshots known good, oldest first (their next sequences).
    pub fn snapshots_good(&self) -> &[u64] {
        &self.snapshots_good
    }

    /// The first sequence of the journal file the next group goes to (after
    /// [`ShardCore::seal`]: the sealed group's), named by
    /// [`crate::journal_files::file_name`].
    pub fn journal_file(&self) -> u64 {
        self.writer.file()
    }

    /// Starts a new journal file with the next group (between groups; a
    /// no-op while the current file is empty).
    pub fn rotate_journal(&mut self) {
        self.writer.rotate();
    }

    /// Sets how many full transfer blocks stay in memory once they have a
    /// durable copy in a segment (older ones are read through a mapping).
    pub fn set_blocks_in_memory(&mut self, blocks: usize) {
        self.blocks_in_memory = blocks;
    }

    /// Takes the recovered open intents and queues their credit legs again:
    /// the debit shard finishes what it started; credit shards answer copies
    /// idempotently.
    pub fn with_cross(mut self, cross: Cross) -> Self {
        assert_eq!(cross.shard() as usize, self.shard);
        self.cross = cross;
        let open = self.cross.open_ids();
        self.send_credits(&open);
        self.recovered_open = open.iter().copied().collect();
        // What peers had in flight to this shard is lost: they send it again.
        for peer in (0..self.shards as usize).filter(|&p| p != self.shard) {
            self.outbox[peer].push_back(Message::Restarted);
        }
        self
    }

    /// Sets the limit of open cross-shard intents (at least one full batch).
    pub fn set_intents_max(&mut self, intents_max: usize) {
        assert!(intents_max >= self.message_legs_max, "a full batch of cross-shard transfers must fit");
        self.intents_max = intents_max;
    }

    /// The engine (read-only).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The cross-shard state (read-only).
    pub fn cross(&self) -> &Cross {
        &self.cross
    }

    /// Touches the engine's reserved memory (see `Engine::prefault`).
    pub fn prefault(&mut self) {
        self.engine.prefault();
    }

    /// True once a journal write failed: writes are refused from then on.
    pub fn failed(&self) -> bool {
        self.failed.is_some()
    }

    /// True when nothing is open: no intent, no caller waiting, nothing
    /// staged, nothing to send.
    pub fn idle(&self) -> bool {
        self.cross.intents().is_empty()
            && self.parked.is_empty()
            && self.group.is_empty()
            && self.reads_deferred.is_empty()
            && self.outbox.iter().all(VecDeque::is_empty)
    }

    /// Messages waiting for `peer`'s ring, oldest first. The driver pops
    /// them, and pushes one back to the front when the ring is full.
    pub fn outbox(&mut self, peer: usize) -> &mut VecDeque<Message> {
        &mut self.outbox[peer]
    }

    /// Takes one request at time `now_ns`: answers reads at once; stages a
    /// write into the open group, or refuses it (misrouted, over a limit,
    /// shard failed). Hands the request back when the open group has no room
    /// for it, or its cross-shard transfers would pass the intents limit:
    /// write the group first.
    pub fn offer(&mut self, request: Request, now_ns: u64) -> Result<(), Request> {
        let shard = self.shard;
        match request {
            Request::Write { commands, reply } => {
                // Reads may be answered while a group is written; writes wait for it.
                assert!(!self.sealed, "nothing joins a group being written");
                if let Some(reason) = &self.failed {
                    let _ = reply.send(Err(ShardError::Failed { shard, reason: reason.clone() }));
                    return Ok(());
                }
                if let Err(reason) = check_ownership(&commands, shard, self.shards) {
                    let _ = reply.send(Err(ShardError::Refused(reason)));
                    return Ok(());
                }
                let bound = cross_bound(&commands, shard, self.shards);
                if bound > self.intents_max {
                    let _ = reply.send(Err(ShardError::Refused(format!(
                        "{bound} cross-shard transfers in one write, over the limit of {} open intents",
                        self.intents_max
                    ))));
                    return Ok(());
                }
                if self.cross.intents().len() + self.intents_staged + bound > self.intents_max {
                    return Err(Request::Write { commands, reply });
                }
                let borrowed: Vec<Command<'_>> = commands.iter().map(CommandBuf::as_command).collect();
                let bytes = match self.writer.check(&borrowed) {
                    Ok(bytes) => bytes,
                    Err(error) => {
                        let _ = reply.send(Err(ShardError::Refused(error.to_string())));
                        return Ok(());
                    }
                };
                drop(borrowed);
                if !self.room(bytes) {
                    return Err(Request::Write { commands, reply });
                }
                self.intents_staged += bound;
                self.stage(commands, Source::Client { reply, taken: Instant::now(), bound }, now_ns);
            }
            // Dropping the reply refuses the read: the engine holds a group
            // the journal does not.
            _ if self.diverged => {}
            read if self.held.is_some() || self.reads_wait() => {
                // A group was applied ahead of its write (reads wait until it
                // is durable, so they never see more than is), or a write
                // was answered before its settle was applied (reads wait for
                // it, so they never see less than was answered).
                self.reads_deferred.push_back(read);
            }
            read => self.read(read),
        }
        Ok(())
    }

    /// Answers a read from the applied state.
    fn read(&self, request: Request) {
        let shard = self.shard;
        match request {
            Request::Write { .. } => unreachable!("writes are staged"),
            Request::LookupAccounts { ids, reply } => {
                let mut out = Vec::with_capacity(ids.len());
                let _ = self.engine.lookup_accounts(&ids, &mut out);
                let _ = reply.send(out);
            }
            Request::LookupTransfers { ids, reply } => {
                let mut out = Vec::with_capacity(ids.len());
                let _ = self.engine.lookup_transfers(&ids, &mut out);
                let _ = reply.send(out);
            }
            Request::GetAccountTransfers { filter, reply } => {
                let mut out = Vec::new();
                let _ = reply.send(self.engine.get_account_transfers(&filter, &mut out).map(|()| out));
            }
            Request::GetAccountBalances { filter, reply } => {
                let mut out = Vec::new();
                let _ = reply.send(self.engine.get_account_balances(&filter, &mut out).map(|()| out));
            }
            Request::LimitedParts { reply } => {
                let ids: Vec<u128> = self.cross.limited_parts().iter().copied().collect();
                let mut out = Vec::with_capacity(ids.len());
                for chunk in ids.chunks(self.engine.config().batch_events_max as usize) {
                    let _ = self.engine.lookup_accounts(chunk, &mut out);
                }
                let _ = reply.send(out);
            }
            Request::Stats { reply } => {
                let _ = reply.send(stats(shard, &self.engine, &self.cross));
            }
        }
    }

    /// True while reads must wait: a settle of a write already answered
    /// is staged but not applied, or an intent found open at start (perhaps
    /// answered before the crash) is not settled yet. A failed shard
    /// applies nothing more: reads see what was applied.
    fn reads_wait(&self) -> bool {
        (self.answered_unsettled || !self.recovered_open.is_empty()) && self.failed.is_none()
    }

    /// Answers the deferred reads once they need not wait any more.
    fn answer_deferred_reads(&mut self) {
        if self.diverged {
            self.reads_deferred.clear();
        } else if !self.reads_wait() {
            for read in std::mem::take(&mut self.reads_deferred) {
                self.read(read);
            }
        }
    }

    /// Reads waiting for a group to be applied (see [`ShardCore::deliver`]).
    pub fn reads_deferred(&self) -> usize {
        self.reads_deferred.len()
    }

    /// Takes one message from shard `from` at time `now_ns`: credit legs are
    /// staged for journaling (answered once durable); answers to our credit
    /// legs stage the post or void of each intent still open. Hands the
    /// message back when the open group has no room for it.
    pub fn deliver(&mut self, from: usize, message: Message, now_ns: u64) -> Result<(), Message> {
        assert!(!self.sealed, "nothing joins a group being written");
        assert_ne!(from, self.shard);
        assert!(message.len() <= self.message_legs_max, "a message fits one journal entry");
        if self.failed.is_some() {
            // A failed shard journals nothing: its peers re-send after its restart.
            return Ok(());
        }
        if let Message::Credits(legs) = &message {
            let entry = crate::journal::HEADER_SIZE + legs.len() * crate::journal::RECORD_SIZE;
            if !self.room(entry) {
                return Err(message);
            }
        }
        let command = match message {
            Message::Restarted => {
                let again: Vec<u128> = self
                    .cross
                    .open_ids()
                    .into_iter()
                    .filter(|id| {
                        self.cross.intents()[id].peer as usize == from && !self.settling.contains(id)
                    })
                    .collect();
                self.send_credits(&again);
                return Ok(());
            }
            Message::Credits(legs) if legs.is_empty() => return Ok(()),
            Message::Credits(legs) => CommandBuf::Credits(legs),
            Message::Answers(answers) => {
                let mut legs = Vec::with_capacity(answers.len());
                let mut codes = Vec::with_capacity(answers.len());
                for &(id, code) in &answers {
                    // Copies of an answer (after a restart of either side) find the intent settled or settling.
                    let open = self.cross.intents().get(&id).is_some_and(|i| i.peer as usize == from);
                    if open && !self.settling.contains(&id) {
                        legs.push(self.cross.settle_leg(id, code));
                        codes.push((id, code));
                    }
                }
                if legs.is_empty() {
                    return Ok(());
                }
                let entry = crate::journal::HEADER_SIZE + legs.len() * crate::journal::RECORD_SIZE;
                if !self.room(entry) {
                    return Err(Message::Answers(answers));
                }
                for s in &legs {
                    let fresh = self.settling.insert(s.pending_id);
                    assert!(fresh, "one answer per intent in a message");
                }
                self.stage(vec![CommandBuf::Settles(legs)], Source::Peer, now_ns);
                // The outcome of each of these transfers is final now: its
                // pending leg is durable here, and the peer answered only
                // once its credit leg (or tombstone) was durable there. A
                // crash before the settle is durable re-sends the leg and
                // gets the same answer. So the writes waiting for them are
                // answered now, a group earlier than the settle's apply;
                // reads wait for that apply (`answered_unsettled`), and later
                // writes are applied after it (journal order).
                for (id, code) in codes {
                    self.settle_waiters(id, code);
                }
                self.answered_unsettled = true;
                return Ok(());
            }
        };
        self.stage(vec![command], Source::Peer, now_ns);
        Ok(())
    }

    /// True when `bytes` of entries fit the open group, with a tick if they open it.
    fn room(&self, bytes: usize) -> bool {
        let tick_room = if self.writer.is_empty() { HEADER_SIZE } else { 0 };
        // Fault point: a group cut short (sealed early, the rest waits for the next).
        self.writer.has_room(bytes + tick_room) && (self.writer.is_empty() || !buggify!(3))
    }

    fn stage(&mut self, commands: Vec<CommandBuf>, source: Source, now_ns: u64) {
        if self.writer.is_empty() && now_ns > self.engine.clock_ns() {
            self.stage_tick(now_ns);
        }
        let borrowed: Vec<Command<'_>> = commands.iter().map(CommandBuf::as_command).collect();
        self.writer.stage(&borrowed, self.engine.clock_ns());
        drop(borrowed);
        self.group.push(Pending { commands, source });
    }

    fn stage_tick(&mut self, now_ns: u64) {
        self.writer.stage(&[Command::Tick { now_ns }], self.engine.clock_ns());
        self.group.push(Pending { commands: vec![CommandBuf::Tick { now_ns }], source: Source::Tick });
    }

    /// True when a group is staged (a client write, a peer message, a tick).
    pub fn has_group(&self) -> bool {
        !self.group.is_empty()
    }

    /// True when the open group holds nothing anyone waits for: only
    /// settles (their writes were answered when the answers came) and
    /// ticks, and no read waits for it. The driver may hold such a group
    /// open a little, so the next client write shares its commit.
    pub fn group_can_wait(&self) -> bool {
        !self.group.is_empty()
            && self.reads_deferred.is_empty()
            && self.group.iter().all(|p| {
                matches!(p.source, Source::Tick)
                    || (matches!(p.source, Source::Peer)
                        && p.commands.iter().all(|c| matches!(c, CommandBuf::Settles(_))))
            })
    }

    /// The group to write now, with its journal offset: the open group, or
    /// with nothing open, a tick when a pending transfer is due to expire at
    /// `now_ns`. `None` when there is nothing to write.
    pub fn seal(&mut self, now_ns: u64) -> Option<(u64, &[u8])> {
        if self.group.is_empty() {
            let due = self.engine.next_expiry_ns().is_some_and(|at| at <= now_ns);
            if self.failed.is_some() || !due {
                return None;
            }
            self.stage_tick(now_ns);
        }
        self.sealed = true;
        Some(self.writer.seal())
    }

    /// The sealed group is durable: apply it (unless it was applied ahead),
    /// answer every write in it whose cross-shard transfers are settled, and
    /// queue the messages it makes (credit legs for new intents, answers to
    /// credit legs).
    pub fn durable(&mut self) {
        self.commit_group();
        if let Some(held) = self.held.take() {
            // Applied while it was written: release what it answers (its
            // messages are in the outboxes already, for the driver to send).
            assert!(self.group.is_empty(), "a group applied ahead is applied whole");
            for (reply, outcomes, taken) in held {
                self.answer(reply, outcomes, taken);
            }
        } else {
            let mut opened = Vec::new();
            for pending in std::mem::take(&mut self.group) {
                self.apply_pending(pending, &mut opened);
            }
            self.send_credits(&opened);
        }
        self.answered_unsettled = false;
        self.answer_deferred_reads();
    }

    /// Applies the sealed group while its write is in flight, so the apply
    /// and the disk's sync take their time together instead of one after
    /// the other. Nothing leaves the core until [`ShardCore::durable`]: the
    /// group's answers are held here, and the messages it makes (credit legs,
    /// answers to peers) wait in the outboxes, which the driver must not send
    /// from until then. A read offered meanwhile waits until the group is
    /// durable, so none sees an undurable state. If the
    /// write fails ([`ShardCore::write_failed`]) the held answers fail, the
    /// group's messages are dropped, and the shard refuses reads as well as
    /// writes until a restart recovers what is durable. Optional: without
    /// it, `durable` applies the group.
    pub fn apply_ahead(&mut self) {
        assert!(self.sealed && self.held.is_none(), "a sealed group, applied once");
        self.held = Some(Vec::new());
        self.outbox_marks = self.outbox.iter().map(VecDeque::len).collect();
        let mut opened = Vec::new();
        for pending in std::mem::take(&mut self.group) {
            self.apply_pending(pending, &mut opened);
        }
        self.send_credits(&opened);
    }

    /// The sealed group is written: the writer moves past it (once per group).
    fn commit_group(&mut self) {
        assert!(self.sealed, "a group was sealed and made durable");
        self.sealed = false;
        let bytes = self.writer.seal().1.len() as u64;
        self.writer.committed();
        self.metrics.groups.inc();
        self.metrics.journal_bytes.inc_by(bytes);
    }

    /// Applies one staged write of the durable group and answers it (or
    /// parks it until its cross-shard transfers settle).
    fn apply_pending(&mut self, pending: Pending, opened: &mut Vec<u128>) {
        let mut outcomes = Vec::with_capacity(pending.commands.len());
        let mut waits = Vec::new();
        for (index, command) in pending.commands.iter().enumerate() {
            let outcome = self
                .cross
                .apply(&mut self.engine, &command.as_command(), &mut self.expired, &mut self.effects)
                .expect("checked before staging");
            outcomes.push(outcome);
            waits
                .extend(self.effects.waits.iter().map(|&(event, id, original)| (index, event, id, original)));
            opened.extend_from_slice(&self.effects.opened);
            if let Some((peer, answers)) = self.effects.answers.take() {
                self.outbox[peer as usize].push_back(Message::Answers(answers));
            }
            for (id, code) in std::mem::take(&mut self.effects.settled) {
                self.settling.remove(&id);
                if !self.recovered_open.is_empty() {
                    self.recovered_open.remove(&id);
                }
                self.settle_waiters(id, code);
            }
        }
        if let Source::Client { reply, taken, bound } = pending.source {
            self.intents_staged -= bound;
            if waits.is_empty() {
                self.answer(reply, outcomes, taken);
            } else {
                let parked = self.parked_next;
                self.parked_next += 1;
                for &(command, event, id, original) in &waits {
                    let waiter = Waiter { parked, command, event: event as usize, original };
                    self.waiters.entry(id).or_default().push(waiter);
                }
                self.parked.insert(parked, Parked { reply, outcomes, waiting: waits.len(), taken });
            }
        }
    }

    /// Queues the credit legs of intents `ids`, batched per peer.
    fn send_credits(&mut self, ids: &[u128]) {
        let shard = self.shard as u32;
        let mut legs: Vec<Vec<Transfer>> = vec![Vec::new(); self.shards as usize];
        for id in ids {
            let intent = &self.cross.intents()[id];
            legs[intent.peer as usize].push(intent.credit_leg(shard));
        }
        for (peer, legs) in legs.into_iter().enumerate() {
            // Fault point: legs split one per message.
            let per_message = if buggify!(10) { 1 } else { self.message_legs_max };
            if legs.len() <= per_message {
                if !legs.is_empty() {
                    self.outbox[peer].push_back(Message::Credits(legs));
                }
                continue;
            }
            for chunk in legs.chunks(per_message) {
                self.outbox[peer].push_back(Message::Credits(chunk.to_vec()));
            }
        }
    }

    /// Intent `id` settled with `code`: fill in every event waiting for it.
    fn settle_waiters(&mut self, id: u128, code: TR) {
        for waiter in self.waiters.remove(&id).unwrap_or_default() {
            let parked = self.parked.get_mut(&waiter.parked).expect("a waiter's write is parked");
            let result = match (waiter.original, code) {
                (true, code) => code,
                (false, TR::Ok) => TR::Exists,
                (false, failure) => failure,
            };
            let Outcome::Transfers(results) = &mut parked.outcomes[waiter.command] else {
                unreachable!("waiters are transfer events")
            };
            results[waiter.event] = result;
            parked.waiting -= 1;
            if parked.waiting == 0 {
                let parked = self.parked.remove(&waiter.parked).expect("parked");
                self.answer(parked.reply, parked.outcomes, parked.taken);
            }
        }
    }

    fn answer(&mut self, reply: Reply<WriteReply>, outcomes: Vec<Outcome>, taken: Instant) {
        if let Some(held) = &mut self.held {
            held.push((reply, outcomes, taken));
            return;
        }
        self.metrics.record(&outcomes);
        self.metrics.batch_seconds.observe(taken.elapsed().as_secs_f64());
        let _ = reply.send(Ok(outcomes));
    }

    /// Writing or syncing the sealed group failed: the file's state is
    /// unknown, so the group's writes fail and no more are taken; a restart
    /// recovers exactly what is durable. Writes waiting for cross-shard
    /// transfers fail too (their outcome is decided by the restart).
    pub fn write_failed(&mut self, reason: String) {
        self.sealed = false;
        let shard = self.shard;
        let failed = || Err(ShardError::Failed { shard, reason: reason.clone() });
        for pending in self.group.drain(..) {
            if let Source::Client { reply, .. } = pending.source {
                let _ = reply.send(failed());
            }
        }
        if let Some(held) = self.held.take() {
            // The group was applied ahead of a write that failed.
            for (reply, _, _) in held {
                let _ = reply.send(failed());
            }
            for (outbox, &mark) in self.outbox.iter_mut().zip(&self.outbox_marks) {
                outbox.truncate(mark);
            }
            self.diverged = true;
        }
        for (_, parked) in std::mem::take(&mut self.parked) {
            let _ = parked.reply.send(failed());
        }
        self.waiters.clear();
        self.settling.clear();
        self.intents_staged = 0;
        self.failed = Some(reason);
        // Nothing more will be applied: reads see what was.
        self.answer_deferred_reads();
    }

    /// Takes a snapshot's state at the journal's position (between groups;
    /// cheap: full transfer blocks are shared, not copied) for [`snapshot::write`](crate::snapshot::write)
    /// to write anywhere. `None` while an earlier job is still being written
    /// or after a failed write.
    pub fn snapshot_start(&mut self, dir: &Path) -> Option<SnapshotJob> {
        if self.snapshot_running || self.failed() {
            return None;
        }
        let started = Instant::now();
        // The snapshot's position is the start of a new journal file.
        self.writer.rotate();
        let job = SnapshotJob {
            dir: dir.to_path_buf(),
            position: self.writer.position(),
            parts: self.engine.snapshot_parts_reusing(
                crate::snapshot::segment_blocks(&self.segments),
                self.capture.take().unwrap_or_default(),
            ),
            intents: self.cross.export(),
            segments: self.segments.clone(),
        };
        self.snapshot_running = true;
        self.snapshot_sequence = job.position.next_sequence;
        self.metrics.snapshot_capture_seconds.set(started.elapsed().as_secs_f64());
        Some(job)
    }

    /// Takes back a snapshot job's outcome: on success, the blocks it wrote
    /// to segments may leave memory (all but the newest
    /// `blocks_in_memory`); a failure only costs recovery time (the journal
    /// holds everything) and the next snapshot writes the same blocks again.
    pub fn snapshot_finished(
        &mut self,
        outcome: Result<SnapshotDone, SnapshotError>,
        seconds: f64,
    ) -> Result<PathBuf, SnapshotError> {
        assert!(self.snapshot_running, "a snapshot job was taken");
        self.snapshot_running = false;
        let done = outcome?;
        self.snapshots_good.push(self.snapshot_sequence);
        if self.snapshots_good.len() > crate::snapshot::KEEP {
            self.snapshots_good.remove(0);
        }
        for (block, cold) in done.cold {
            self.engine.attach_cold(block, cold);
        }
        assert!(
            done.reuse.blocks.is_empty(),
            "a finished snapshot holds no block (else none could be evicted)"
        );
        self.capture = Some(done.reuse);
        self.engine.evict_transfers(self.blocks_in_memory);
        self.segments = done.segments;
        self.metrics.snapshots.inc();
        self.metrics.snapshot_seconds.set(seconds);
        self.update_block_metrics();
        Ok(done.path)
    }

    /// True while a snapshot job taken by [`ShardCore::snapshot_start`] is out.
    pub fn snapshot_running(&self) -> bool {
        self.snapshot_running
    }

    /// Writes a snapshot into `dir` at the journal's position (between
    /// groups), on the caller's thread.
    pub fn snapshot(&mut self, dir: &Path) -> Result<PathBuf, SnapshotError> {
        let Some(job) = self.snapshot_start(dir) else {
            return Err(SnapshotError::Busy);
        };
        let started = Instant::now();
        let good = self.snapshots_good.clone();
        let outcome =
            crate::journal_files::write_snapshot(&crate::snapshot::Disk, job, &good, !self.keep_journal);
        let outcome = outcome.map(|(done, pruned)| {
            self.journal_pruned(&pruned);
            done
        });
        self.snapshot_finished(outcome, started.elapsed().as_secs_f64())
    }

    /// Counts the journal files a snapshot's pruning deleted (or its failure).
    pub fn journal_pruned(&self, pruned: &Result<Vec<PathBuf>, std::io::Error>) {
        match pruned {
            Ok(deleted) => self.metrics.journal_files_deleted.inc_by(deleted.len() as u64),
            Err(_) => self.metrics.journal_delete_errors.inc(),
        }
    }

    fn update_block_metrics(&self) {
        let blocks = self.engine.transfers().blocks().len();
        let memory = self.engine.transfers().blocks_in_memory();
        self.metrics.transfer_blocks_memory.set(memory as i64);
        self.metrics.transfer_blocks_cold.set((blocks - memory) as i64);
    }
}

/// Upper bound of the cross-shard transfers in a write: events whose debit
/// account is ours and whose credit account is another shard's.
fn cross_bound(commands: &[CommandBuf], shard: usize, shards: u32) -> usize {
    if shards == 1 {
        return 0;
    }
    commands
        .iter()
        .map(|command| match command {
            CommandBuf::CreateTransfers(transfers) => transfers
                .iter()
                .filter(|t| t.pending_id == 0 && credit_peer(t, shard as u32, shards).is_some())
                .count(),
            _ => 0,
        })
        .sum()
}

/// Every account a write creates, and the debit account of every transfer,
/// must live on this shard (`shard_for`, [`crate::route::owns`]: sharded
/// accounts have a part on every shard); a misrouted request is refused
/// whole, before anything is journaled. A transfer's credit account may live
/// on another shard (a cross-shard transfer, see [`crate::cross`]). Post and
/// void name their pending transfer, which the engine finds locally (a 0
/// debit account is routed by the caller). Reserved ids are the shard
/// layer's to reject per event; credit and settle legs are shard-internal.
pub(crate) fn check_ownership(commands: &[CommandBuf], shard: usize, shards: u32) -> Result<(), String> {
    let owned = |id: u128| owns(id, shard as u32, shards);
    for command in commands {
        match command {
            CommandBuf::Tick { .. } => {}
            CommandBuf::Credits(_) | CommandBuf::Settles(_) => {
                return Err("credit and settle legs are shard-internal commands".into());
            }
            CommandBuf::CreateAccounts(accounts) => {
                if let Some(a) = accounts.iter().find(|a| !owned(a.id)) {
                    return Err(format!(
                        "account {} belongs to shard {}, not {shard}",
                        a.id,
                        shard_for(a.id, shards)
                    ));
                }
            }
            CommandBuf::CreateTransfers(transfers) => {
                // A move between a sharded account's parts debits the part on its `from` shard.
                let misrouted = transfers
                    .iter()
                    .filter_map(|t| part_move(t, shards).map(|m| (t, m)))
                    .find(|(_, (from, _))| *from as usize != shard);
                if let Some((t, (from, _))) = misrouted {
                    return Err(format!(
                        "transfer {} moves value from the part on shard {from}, not {shard} \
                         (route a move to its `from` shard)",
                        t.id
                    ));
                }
                if let Some(t) = transfers.iter().find(|t| !owned(t.debit_account_id)) {
                    return Err(format!(
                        "transfer {} debits account {}, which belongs to shard {}, not {shard} \
                         (route a transfer to its debit account's shard)",
                        t.id,
                        t.debit_account_id,
                        shard_for(t.debit_account_id, shards)
                    ));
                }
            }
        }
    }
    Ok(())
}

/// A shard's counts, totals and invariants.
pub(crate) fn stats(shard: usize, engine: &Engine, cross: &Cross) -> ShardStats {
    ShardStats {
        shard,
        accounts: engine.accounts().len(),
        transfers: engine.transfers().len(),
        intents_open: cross.intents().len(),
        totals: engine.ledger_totals(),
        invariants: engine.check_invariants().map_err(|v| v.to_string()).and_then(|()| cross.check(engine)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::apply;
    use crate::journal;
    use crate::runtime::{reply_channel, Answer};
    use molly_engine::{Account, Config, Transfer};

    /// Shard 0 of `shards` on an empty journal, and its engine's config.
    fn core_of(shards: u32) -> (Config, ShardCore) {
        let config = Config::default();
        let writer = JournalWriter::new(0, 1, 1 << 20, config.batch_events_max as usize);
        let engine = Engine::new(config.clone()).unwrap();
        (config.clone(), ShardCore::new(0, shards, engine, writer, Arc::new(ShardMetrics::new(0))))
    }

    /// The engine a restart recovers from the simulated journal `disk`.
    fn replay(config: Config, disk: &[u8]) -> Engine {
        let mut replayed = Engine::new(config).unwrap();
        let mut expired = Vec::new();
        journal::scan("simulated", disk, 0, 1, 8190 * 128, |_, command| {
            apply(&mut replayed, &command.as_command(), &mut expired).unwrap();
        })
        .unwrap();
        replayed
    }

    fn write(commands: Vec<CommandBuf>) -> (Request, Answer<WriteReply>) {
        let (reply, answer) = reply_channel();
        (Request::Write { commands, reply }, answer)
    }

    /// The core with a disk that is a byte vector and a clock that is a
    /// number: what the simulator will do.
    #[test]
    fn the_core_runs_on_a_simulated_disk_and_clock_and_replays_identically() {
        let (config, mut core) = core_of(1);
        let mut disk: Vec<u8> = Vec::new();
        let mut now = 1_000_000_000u64;
        let accounts =
            (1..=4u128).map(|id| Account { id, ledger: 1, code: 1, ..Account::default() }).collect();
        let (request, mut accounts_answer) = write(vec![CommandBuf::CreateAccounts(accounts)]);
        core.offer(request, now).unwrap();
        let transfer = |id, amount| Transfer {
            id,
            debit_account_id: 1,
            credit_account_id: 2,
            amount,
            ledger: 1,
            code: 1,
            ..Transfer::default()
        };
        let (request, mut transfers_answer) =
            write(vec![CommandBuf::CreateTransfers(vec![transfer(1, 5), transfer(2, 6)])]);
        core.offer(request, now).unwrap();
        // Nothing is answered before the group is durable.
        assert!(accounts_answer.try_recv().is_err());
        let (offset, bytes) = core.seal(now).unwrap();
        let end = offset as usize + bytes.len();
        disk.resize(disk.len().max(end), 0);
        disk[offset as usize..end].copy_from_slice(bytes);
        core.durable();
        assert!(
            matches!(&accounts_answer.try_recv().unwrap().unwrap()[..], [Outcome::Accounts(r)] if r.iter().all(|r| r.is_ok()))
        );
        assert!(transfers_answer.try_recv().unwrap().is_ok());
        assert!(core.seal(now).is_none(), "nothing left to write");

        // A failed write: the group's writes fail, later ones are refused.
        now += 1_000;
        let (request, mut answer) = write(vec![CommandBuf::CreateTransfers(vec![transfer(3, 7)])]);
        core.offer(request, now).unwrap();
        assert!(core.seal(now).is_some());
        core.write_failed("simulated torn write".into());
        assert!(matches!(answer.try_recv().unwrap(), Err(ShardError::Failed { .. })));
        let (request, mut answer) = write(vec![CommandBuf::CreateTransfers(vec![transfer(4, 8)])]);
        core.offer(request, now).unwrap();
        assert!(matches!(answer.try_recv().unwrap(), Err(ShardError::Failed { .. })));
        assert!(core.seal(now).is_none());

        // Replaying the simulated disk gives the same engine state.
        let replayed = replay(config, &disk);
        assert_eq!(replayed.export(), core.engine().export());
        assert_eq!(core.engine().transfers().len(), 2);
    }

    /// A group applied while it is written ([`ShardCore::apply_ahead`])
    /// answers nothing and sends nothing before it is durable; if its write
    /// fails, its answers fail, its messages are dropped, and reads are
    /// refused (the engine holds what the journal does not).
    #[test]
    fn a_group_applied_ahead_releases_nothing_until_durable() {
        use tokio::sync::oneshot::error::TryRecvError;
        let (config, mut core) = core_of(2);
        let mut disk: Vec<u8> = Vec::new();
        let mut write_to_disk = |offset: u64, bytes: &[u8]| {
            let end = offset as usize + bytes.len();
            disk.resize(disk.len().max(end), 0);
            disk[offset as usize..end].copy_from_slice(bytes);
        };
        let now = 1_000_000_000u64;
        // Two accounts of shard 0, and one of shard 1 to credit across.
        let mine: Vec<u128> = (1..).filter(|&id| crate::runtime::shard_for(id, 2) == 0).take(2).collect();
        let theirs = (1..).find(|&id| crate::runtime::shard_for(id, 2) == 1).unwrap();
        let accounts =
            mine.iter().map(|&id| Account { id, ledger: 1, code: 1, ..Account::default() }).collect();
        let (request, mut created) = write(vec![CommandBuf::CreateAccounts(accounts)]);
        core.offer(request, now).unwrap();
        let (offset, bytes) = core.seal(now).unwrap();
        write_to_disk(offset, bytes);
        core.apply_ahead();
        assert_eq!(core.engine().accounts().len(), 2, "applied");
        assert!(matches!(created.try_recv(), Err(TryRecvError::Empty)), "not answered before durable");
        // A read meanwhile waits for the group to be durable.
        let (reply, mut looked_up) = crate::runtime::reply_channel();
        core.offer(Request::LookupAccounts { ids: mine.clone(), reply }, now).unwrap();
        assert!(matches!(looked_up.try_recv(), Err(TryRecvError::Empty)));
        core.durable();
        assert!(
            matches!(&created.try_recv().unwrap().unwrap()[..], [Outcome::Accounts(r)] if r.iter().all(|r| r.is_ok()))
        );
        assert_eq!(looked_up.try_recv().unwrap().len(), 2, "answered once durable");

        let transfer = |id, credit_account_id| Transfer {
            id,
            debit_account_id: mine[0],
            credit_account_id,
            amount: 5,
            ledger: 1,
            code: 1,
            ..Transfer::default()
        };
        // A local transfer and a cross-shard one, applied ahead: the credit
        // leg for shard 1 waits in its outbox, the caller waits for it.
        let (request, mut moved) =
            write(vec![CommandBuf::CreateTransfers(vec![transfer(10, mine[1]), transfer(11, theirs)])]);
        core.offer(request, now).unwrap();
        // (Its bytes never reach the disk: the write fails below.)
        assert!(core.seal(now).is_some());
        core.apply_ahead();
        assert_eq!(core.engine().transfers().len(), 2, "the local transfer and the pending leg");
        assert_eq!(core.outbox(1).len(), 1, "the credit leg, held until durable");
        assert!(matches!(moved.try_recv(), Err(TryRecvError::Empty)));
        // The write fails: the answer fails, the credit leg is never sent.
        core.write_failed("simulated failed write".into());
        assert!(matches!(moved.try_recv(), Ok(Err(ShardError::Failed { .. }))));
        assert!(core.outbox(1).is_empty(), "the failed group's message is dropped");
        // Reads are refused: what the engine holds is not what is durable.
        let (reply, mut looked_up) = crate::runtime::reply_channel();
        core.offer(Request::LookupAccounts { ids: mine.clone(), reply }, now).unwrap();
        assert!(matches!(looked_up.try_recv(), Err(TryRecvError::Closed)));

        // The disk holds only the accounts: a restart recovers exactly that.
        let replayed = replay(config, &disk);
        assert_eq!(replayed.accounts().len(), 2);
        assert_eq!(replayed.transfers().len(), 0);
    }
}
