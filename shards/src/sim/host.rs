//! The shard world as a host for a simulated network (`molly sim --net`,
//! in `molly_net::sim`): the same shards, disks, rings, clock and faults as
//! the shard simulation, but the requests come from the network edge —
//! the real server's request handling submitting [`Request`]s to inboxes —
//! instead of from [`super::workload`]. molly-net cannot be a dependency of
//! this crate, so this is the door it comes in by.
//!
//! ```text
//!  molly_net::sim: clients ─frames─► server core ─Request─► inboxes ─► Host::offer(shard, request)
//!                                                                       │ (a write: staged in the open group,
//!                  answers ◄──────────────── relayed when durable ◄─────┘  its answer relayed once acknowledged)
//!  Host::step_shard: write/sync a group, deliver a ring message, move the clock, crash, fail a sync
//! ```
//!
//! Every check of the shard simulation still runs on what the network
//! sends: every write's results are compared with the reference model
//! (with one shard the engine's, with two or three the cross-shard model),
//! the journal must hold exactly what was offered, and so on
//! ([`super::check`]).

use std::cell::RefCell;

use molly_engine::Engine;

use super::{check, fail, ClientWrite, Options, Prng, SimReport, World};
use crate::journal::CommandBuf;
use crate::runtime::{reply_channel, Request};

/// A violated check: its name (one of [`check`]) and what was found.
pub type Failure = (&'static str, String);

/// What one [`Host::step_shard`] did that the network must know about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stepped {
    /// Nothing the network sees.
    Quiet,
    /// Shard `n` lost power and restarted (or failed its fdatasync and
    /// restarted): writes it had not acknowledged are answered by a closed
    /// channel (the server replies `shard_unavailable`).
    Restarted(usize),
    /// Every shard lost power at once: the process died, and with it the
    /// server and every connection.
    ProcessDied,
}

/// The shard world, driven from outside.
pub struct Host {
    world: World,
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Host").field("shards", &self.world.shards).field("step", &self.world.step).finish()
    }
}

impl Host {
    /// The world for `options` (its seed seeds the PRNG the network shares:
    /// [`Host::prng`]).
    pub fn new(options: Options) -> Self {
        // With several shards the cross-shard model follows every write the
        // server submits (sharded accounts and moves between parts too), as
        // it follows the shard world's own clients.
        Self { world: World::new(options) }
    }

    /// Shards.
    pub fn shards(&self) -> u32 {
        self.world.shards
    }

    /// The run's one PRNG.
    pub fn prng(&mut self) -> &mut Prng {
        &mut self.world.prng
    }

    /// The step reports name.
    pub fn set_step(&mut self, step: u64) {
        self.world.step = step;
        self.world.report.steps = step + 1;
    }

    /// The report so far.
    pub fn report(&self) -> &SimReport {
        &self.world.report
    }

    /// The shards' engines (for checks).
    pub fn engines(&self) -> Vec<&Engine> {
        self.world.nodes.iter().map(|node| node.core.engine()).collect()
    }

    /// True when shard `n` can take a request: no group is being written
    /// (the real driver waits for the fdatasync in flight).
    pub fn ready(&self, n: usize) -> bool {
        self.world.nodes[n].in_flight.is_none()
    }

    /// Shard `n` takes one request from its inbox, as the runtime's loop
    /// does. Reads are answered at once; a write is staged in the open group
    /// and answered (through the request's own reply) once durable. `Ok(Some)`:
    /// the open group had no room (it was written) or the intents limit is
    /// reached: offer it again later, first in line.
    pub fn offer(&mut self, n: usize, request: Request) -> Result<Option<Request>, Failure> {
        assert!(self.ready(n), "nothing joins a group being written");
        let world = &mut self.world;
        let now_ns = world.now_ns;
        let Request::Write { commands, reply } = request else {
            return match world.nodes[n].core.offer(request, now_ns) {
                Ok(()) => Ok(None),
                Err(back) => fail(check::READS, format!("shard {n} handed back a read: {back:?}")),
            };
        };
        // The world keeps the answer (its checks read it) and relays it to
        // the server's request once it has looked at it.
        let (inner, mut answer) = reply_channel();
        let staged = commands.clone();
        match world.nodes[n].core.offer(Request::Write { commands, reply: inner }, now_ns) {
            Ok(()) => {
                if let Ok(early) = answer.try_recv() {
                    let detail = format!("shard {n} answered a write from the server at once: {early:?}");
                    let _ = reply.send(early);
                    return fail(check::ROUTING, detail);
                }
                let fresh = vec![false; staged.len()];
                for command in &staged {
                    if let CommandBuf::CreateTransfers(batch) = command {
                        // The network re-sends: no write of it is "never sent before".
                        world.resent.extend(batch.iter().map(|t| t.id));
                    }
                }
                world.nodes[n].open.push(ClientWrite {
                    commands: staged,
                    fresh,
                    answer,
                    relay: RefCell::new(Some(reply)),
                    predicted: None,
                });
                Ok(None)
            }
            Err(Request::Write { commands, .. }) => {
                world.write_group(n, true)?;
                Ok(Some(Request::Write { commands, reply }))
            }
            Err(other) => unreachable!("a write is handed back as a write: {other:?}"),
        }
    }

    /// One event of shard `n`'s own life (no client request): while its
    /// group is in flight, the completion, time, a crash or a failed
    /// fdatasync; else write the open group (synced or left in flight),
    /// deliver a message from a peer, move the clock, crash it, or crash
    /// every shard — the mix of the shard simulation's steps, without its
    /// clients.
    pub fn step_shard(&mut self, n: usize) -> Result<Stepped, Failure> {
        let world = &mut self.world;
        let shards = u64::from(world.shards);
        let stepped = if world.nodes[n].in_flight.is_some() {
            match world.prng.below(100) {
                0..=79 => {
                    world.sync_and_acknowledge(n)?;
                    Stepped::Quiet
                }
                80..=89 => {
                    world.now_ns += world.prng.below(1_000_000);
                    Stepped::Quiet
                }
                90..=96 => {
                    world.crash(n)?;
                    Stepped::Restarted(n)
                }
                _ => {
                    world.failed_write(n)?;
                    Stepped::Restarted(n)
                }
            }
        } else if world.nodes[n].job.is_some() && world.prng.chance(25) {
            // The background write of the snapshot taken earlier finishes.
            world.finish_snapshot(n, true)?;
            Stepped::Quiet
        } else {
            match world.prng.below(100) {
                0..=29 if shards > 1 => {
                    let from = (n + 1 + world.prng.below(shards - 1) as usize) % shards as usize;
                    world.deliver(from, n)?;
                    Stepped::Quiet
                }
                0..=64 => {
                    let sync = world.prng.chance(70);
                    world.write_group(n, sync)?;
                    Stepped::Quiet
                }
                65..=95 => {
                    world.clock_moves(n);
                    Stepped::Quiet
                }
                96..=97 => {
                    world.crash(n)?;
                    Stepped::Restarted(n)
                }
                _ if shards > 1 => {
                    world.crash_all()?;
                    Stepped::ProcessDied
                }
                _ => {
                    world.crash(n)?;
                    Stepped::ProcessDied
                }
            }
        };
        world.flush();
        Ok(stepped)
    }

    /// The shard simulation's full checks (every shard's invariants and
    /// intents, balances from records, the model, all or nothing and
    /// bridges, acknowledged transfers present). `settled`: nothing may be
    /// in flight any more.
    pub fn check_full(&mut self, settled: bool) -> Result<(), Failure> {
        self.world.check_full(settled)
    }

    /// Faults stop (the fault points inside production code too).
    pub fn stop_faults(&mut self) {
        self.world.report.faults_injected += crate::buggify::disable();
    }

    /// One round of the final drain: every group in flight completes,
    /// every ring is delivered, every open group is written and synced.
    /// True when anything happened.
    pub fn drain_round(&mut self) -> Result<bool, Failure> {
        let busy = self.world.drain_round()?;
        for n in 0..self.world.shards as usize {
            self.world.poll_parked(n)?;
        }
        Ok(busy)
    }

    /// True when every shard is idle: no group open or in flight, no
    /// message in a ring, no durable write waiting for its cross-shard
    /// transfers.
    pub fn quiet(&self) -> bool {
        let world = &self.world;
        world.nodes.iter().all(|node| {
            node.core.idle()
                && node.in_flight.is_none()
                && node.job.is_none()
                && node.open.is_empty()
                && node.parked.is_empty()
                && node.reads.is_empty()
        }) && world.rings.iter().flatten().all(std::collections::VecDeque::is_empty)
    }

    /// Writes whose answers never came (for the liveness check's message).
    pub fn unanswered(&self) -> usize {
        let nodes = &self.world.nodes;
        nodes.iter().map(|node| node.open.len() + node.parked.len() + node.reads.len()).sum::<usize>()
            + nodes.iter().filter_map(|node| node.in_flight.as_ref()).map(|f| f.clients.len()).sum::<usize>()
    }

    /// Ends the run: the report, with `failure` as its violation.
    pub fn finish(mut self, step: u64, failure: Option<Failure>) -> SimReport {
        let world = &mut self.world;
        world.report.bits_flipped = world.nodes.iter().map(|node| node.files.bits_flipped()).sum();
        if let Some((check, detail)) = failure {
            world.report.faults_injected = world.report.faults_injected.max(crate::buggify::disable());
            world.report.violation = Some(super::Violation { step, check, detail });
        }
        std::mem::take(&mut world.report)
    }
}
