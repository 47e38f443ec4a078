//! `ShardCore`: one shard's logic with no I/O, clock or thread of its own.
//!
//! A driver feeds it requests and the current time, writes the groups it
//! seals wherever the journal lives, and reports back when each is durable
//! (or failed). The glommio runtime drives it with io_uring and the wall
//! clock; the simulator (issue 8) will drive the same code with a simulated
//! disk and clock.
//!
//! ```text
//!  offer(request, now) ─► reads answered · writes staged (Err(request) = group full)
//!  seal(now) ─► Some((offset, bytes)) to write + fdatasync   (None: nothing to do)
//!  durable() ─► apply the group, reply   ·   write_failed(reason) ─► refuse writes from now on
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use molly_engine::Engine;

use crate::durable::{apply, JournalWriter, Outcome};
use crate::journal::{Command, CommandBuf, HEADER_SIZE};
use crate::metrics::ShardMetrics;
use crate::runtime::{reply_channel, shard_for, Reply, Request, ShardError, ShardStats, WriteReply};
use crate::snapshot::SnapshotError;

/// A write taken into the current group.
struct Pending {
    commands: Vec<CommandBuf>,
    reply: Reply<WriteReply>,
    /// For the batch-latency metric only.
    taken: Instant,
    /// The shard's own tick: no caller waits for it, no batch metric.
    internal: bool,
}

impl Pending {
    fn tick(now_ns: u64) -> Self {
        Self {
            commands: vec![CommandBuf::Tick { now_ns }],
            reply: reply_channel().0,
            taken: Instant::now(),
            internal: true,
        }
    }
}

/// One shard's engine, journal position and open group.
pub struct ShardCore {
    shard: usize,
    shards: u32,
    engine: Engine,
    writer: JournalWriter,
    group: Vec<Pending>,
    failed: Option<String>,
    expired: Vec<u128>,
    metrics: Arc<ShardMetrics>,
}

impl std::fmt::Debug for ShardCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardCore")
            .field("shard", &self.shard)
            .field("engine", &self.engine)
            .field("group", &self.group.len())
            .field("failed", &self.failed)
            .finish()
    }
}

impl ShardCore {
    /// A core for shard `shard` of `shards`, from its recovered engine and
    /// journal position (see [`crate::durable::recover`]).
    pub fn new(
        shard: usize,
        shards: u32,
        engine: Engine,
        writer: JournalWriter,
        metrics: Arc<ShardMetrics>,
    ) -> Self {
        Self { shard, shards, engine, writer, group: Vec::new(), failed: None, expired: Vec::new(), metrics }
    }

    /// The engine (read-only).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Touches the engine's reserved memory (see `Engine::prefault`).
    pub fn prefault(&mut self) {
        self.engine.prefault();
    }

    /// True once a journal write failed: writes are refused from then on.
    pub fn failed(&self) -> bool {
        self.failed.is_some()
    }

    /// Takes one request at time `now_ns`: answers reads at once; stages a
    /// write into the open group, or refuses it (misrouted, over a limit,
    /// shard failed). Hands the request back when the open group has no room
    /// for it: write the group first.
    pub fn offer(&mut self, request: Request, now_ns: u64) -> Result<(), Request> {
        let shard = self.shard;
        match request {
            Request::Write { commands, reply } => {
                if let Some(reason) = &self.failed {
                    let _ = reply.send(Err(ShardError::Failed { shard, reason: reason.clone() }));
                    return Ok(());
                }
                if let Err(reason) = check_ownership(&commands, shard, self.shards) {
                    let _ = reply.send(Err(ShardError::Refused(reason)));
                    return Ok(());
                }
                let borrowed: Vec<Command<'_>> = commands.iter().map(CommandBuf::as_command).collect();
                let bytes = match self.writer.check(&borrowed) {
                    Ok(bytes) => bytes,
                    Err(error) => {
                        let _ = reply.send(Err(ShardError::Refused(error.to_string())));
                        return Ok(());
                    }
                };
                // Room for these, and for a tick if they open the group
                // (`check` guarantees both fit an empty group).
                let tick_room = if self.writer.is_empty() { HEADER_SIZE } else { 0 };
                if !self.writer.has_room(bytes + tick_room) {
                    drop(borrowed);
                    return Err(Request::Write { commands, reply });
                }
                if self.writer.is_empty() && now_ns > self.engine.clock_ns() {
                    self.stage_tick(now_ns);
                }
                self.writer.stage(&borrowed, self.engine.clock_ns());
                drop(borrowed);
                self.group.push(Pending { commands, reply, taken: Instant::now(), internal: false });
            }
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
            Request::Stats { reply } => {
                let _ = reply.send(stats(shard, &self.engine));
            }
        }
        Ok(())
    }

    fn stage_tick(&mut self, now_ns: u64) {
        self.writer.stage(&[Command::Tick { now_ns }], self.engine.clock_ns());
        self.group.push(Pending::tick(now_ns));
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
        Some(self.writer.seal())
    }

    /// The sealed group is durable: apply it and answer every write in it.
    pub fn durable(&mut self) {
        let bytes = self.writer.seal().1.len() as u64;
        self.writer.committed();
        self.metrics.groups.inc();
        self.metrics.journal_bytes.inc_by(bytes);
        for pending in self.group.drain(..) {
            let outcomes: Vec<Outcome> = pending
                .commands
                .iter()
                .map(|c| {
                    apply(&mut self.engine, &c.as_command(), &mut self.expired)
                        .expect("checked before staging")
                })
                .collect();
            if !pending.internal {
                self.metrics.record(&outcomes);
                self.metrics.batch_seconds.observe(pending.taken.elapsed().as_secs_f64());
                let _ = pending.reply.send(Ok(outcomes));
            }
        }
    }

    /// Writing or syncing the sealed group failed: the file's state is
    /// unknown, so the group's writes fail and no more are taken; a restart
    /// recovers exactly what is durable.
    pub fn write_failed(&mut self, reason: String) {
        let shard = self.shard;
        for pending in self.group.drain(..) {
            let _ = pending.reply.send(Err(ShardError::Failed { shard, reason: reason.clone() }));
        }
        self.failed = Some(reason);
    }

    /// Writes a snapshot into `dir` at the journal's position (between groups).
    pub fn snapshot(&self, dir: &Path) -> Result<PathBuf, SnapshotError> {
        let started = Instant::now();
        let written = crate::snapshot::write(dir, self.writer.position(), &self.engine.export());
        self.metrics.snapshot_seconds.set(started.elapsed().as_secs_f64());
        if written.is_ok() {
            self.metrics.snapshots.inc();
        }
        written
    }
}

/// Every account a write names must live on this shard (`shard_for`); a
/// misrouted request is refused whole, before anything is journaled. Post
/// and void name their pending transfer, which the engine finds locally.
pub(crate) fn check_ownership(commands: &[CommandBuf], shard: usize, shards: u32) -> Result<(), String> {
    if shards == 1 {
        return Ok(());
    }
    let owned = |id: u128| id == 0 || shard_for(id, shards) as usize == shard;
    for command in commands {
        match command {
            CommandBuf::Tick { .. } => {}
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
                for t in transfers {
                    for id in [t.debit_account_id, t.credit_account_id] {
                        if !owned(id) {
                            return Err(format!(
                                "transfer {} names account {id}, which belongs to shard {}, not {shard} \
                                 (cross-shard transfers are not supported yet)",
                                t.id,
                                shard_for(id, shards)
                            ));
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// A shard's counts, totals and invariants.
pub(crate) fn stats(shard: usize, engine: &Engine) -> ShardStats {
    ShardStats {
        shard,
        accounts: engine.accounts().len(),
        transfers: engine.transfers().len(),
        totals: engine.ledger_totals(),
        invariants: engine.check_invariants().map_err(|v| v.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal;
    use crate::runtime::Answer;
    use molly_engine::{Account, Config, Transfer};

    fn write(commands: Vec<CommandBuf>) -> (Request, Answer<WriteReply>) {
        let (reply, answer) = reply_channel();
        (Request::Write { commands, reply }, answer)
    }

    /// The core with a disk that is a byte vector and a clock that is a
    /// number: what the simulator will do.
    #[test]
    fn the_core_runs_on_a_simulated_disk_and_clock_and_replays_identically() {
        let config = Config::default();
        let writer = JournalWriter::new(0, 1, 1 << 20, config.batch_events_max as usize);
        let mut core = ShardCore::new(
            0,
            1,
            Engine::new(config.clone()).unwrap(),
            writer,
            Arc::new(ShardMetrics::new(0)),
        );
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
        let mut replayed = Engine::new(config).unwrap();
        let mut expired = Vec::new();
        journal::scan("simulated", &disk[..], 0, 1, 8190 * 128, |_, command| {
            apply(&mut replayed, &command.as_command(), &mut expired).unwrap();
        })
        .unwrap();
        assert_eq!(replayed.export(), core.engine().export());
        assert_eq!(core.engine().transfers().len(), 2);
    }
}
