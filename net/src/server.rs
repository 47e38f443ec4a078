//! The TCP server on the shards: every shard's executor accepts
//! connections on the same port (`SO_REUSEPORT`: the kernel spreads them),
//! reads frames, routes each event to the shard that owns it, and answers
//! every request with one reply, in request order per connection.
//!
//! ```text
//!  shard k's executor (pinned)                            any shard's inbox
//!  accept ─► connection: reader ──frame──► check, verify ─► split by owner ─► Write / lookups
//!                          │ (at most in_flight_max replies pending)               │
//!                          └─► ordered queue of pending replies ─► writer ◄─ answers (durable)
//! ```
//!
//! - Reading stops while `in_flight_max` replies are pending: TCP carries the
//!   backpressure to the client, the server never buffers without bound.
//! - A frame failing any check gets an error frame after the replies before
//!   it, then the connection closes; nothing of it was submitted.
//! - Routing ([`molly_shards::route`]): accounts and their lookups go to
//!   `shard_for(id)`, sharded (hot system) accounts to every shard (one part
//!   each; a create answers `ok` once every part exists, a lookup sums the
//!   parts, a history query merges them by timestamp); transfers to the shard
//!   of their debit account, or of their credit account when the debit
//!   account is sharded (post/void not naming a plain debit account to the
//!   shard holding the pending transfer); linked chains must be routed to
//!   one shard whole (a sharded account create stands alone), or every event
//!   of the chain answers `linked_event_chain_cross_shard`. Transfer lookups
//!   ask every shard.
//! - A request split over shards is not atomic as a whole (each event is);
//!   if one shard fails its part, the reply says `shard_unavailable` and a
//!   retry of the same request is safe (ids are idempotent).
//! - Only the accept loop uses glommio's listener and tasks. The accept
//!   decision ([`Server::admit`], [`refuse`]) and the per-connection loop
//!   ([`Server::connection`]) are generic over the byte stream and the
//!   executor ([`Spawn`]); the frame intake ([`Server::check_head`],
//!   [`Server::intake`]) is pure; the request handling ([`Server::start`])
//!   is async code over the [`Inboxes`] trait; draining is
//!   [`Server::drain`] and [`Server::idle`]. So the simulator (`molly sim
//!   --net`, module `sim` with the `sim` feature) runs the same code on
//!   simulated connections, on a server from [`Server::unbound`].

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::TcpListener;
use molly_engine::{
    Account, AccountBalance, AccountFilter, AccountFilterFlags, AccountFlags, CreateAccountResult,
    CreateTransferResult, Transfer, TransferFlags,
};
use molly_shards::durable::Outcome;
use molly_shards::journal::CommandBuf;
use molly_shards::route::{account_route, is_sharded, transfer_route, AccountRoute, TransferRoute};
use molly_shards::runtime::{reply_channel, Answer, Backpressure, Request, Router, ShardError};
use molly_shards::runtime::{LocalTask, ShardHandle, ShardTask};

use crate::frame::{self, status, FrameError, FrameHeader, Operation, ServerInfo, HEADER_SIZE};
use crate::keys::ClientKeys;

/// Default connections held at most.
pub const CONNECTIONS_MAX_DEFAULT: usize = 1024;
/// Default requests read ahead per connection.
pub const IN_FLIGHT_MAX_DEFAULT: usize = 64;
/// Default listen backlog per shard.
pub const BACKLOG_DEFAULT: i32 = 1024;
/// How long a submit waits before retrying a full inbox.
const BACKPRESSURE_RETRY: Duration = Duration::from_micros(50);

/// Server limits (each has a default; see `molly serve --print-config`).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Connections held at most; one more gets `too many connections`.
    pub connections_max: usize,
    /// Requests read ahead per connection before reading pauses.
    pub in_flight_max: usize,
    /// Largest request body, bytes.
    pub body_size_max: u32,
    /// Most events in one request (the engine's `batch_events_max`).
    pub batch_events_max: u32,
    /// Most records in one query reply (the engine's `query_results_max`).
    pub query_results_max: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            connections_max: CONNECTIONS_MAX_DEFAULT,
            in_flight_max: IN_FLIGHT_MAX_DEFAULT,
            body_size_max: frame::BODY_SIZE_MAX_DEFAULT,
            batch_events_max: 8190,
            query_results_max: 8190,
        }
    }
}

/// Counters any thread may read.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections open now.
    pub connections: AtomicUsize,
    /// Requests read and not yet answered.
    pub in_flight: AtomicUsize,
    /// Requests answered.
    pub requests: AtomicU64,
    /// Frames refused with an error frame.
    pub frame_errors: AtomicU64,
    /// Connections refused at the limit.
    pub connections_refused: AtomicU64,
}

/// The server: listeners bound before the shards start, handed to them as
/// a [`ShardTask`].
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    keys: ClientKeys,
    listeners: Mutex<Vec<Option<OwnedFd>>>,
    addr: SocketAddr,
    shards: usize,
    draining: AtomicBool,
    stats: ServerStats,
}

impl Server {
    /// Binds `addr` once per shard with `SO_REUSEPORT`. The address is
    /// first bound without it, so a port in use by anyone (even another
    /// Molly) is an error rather than silently shared; port 0 picks a free
    /// port, the same for every shard.
    pub fn bind(
        addr: SocketAddr,
        shards: usize,
        config: ServerConfig,
        keys: ClientKeys,
    ) -> io::Result<Arc<Self>> {
        check_limits(shards, &config)?;
        let addr = std::net::TcpListener::bind(addr)?.local_addr()?;
        let mut listeners = Vec::with_capacity(shards);
        for _ in 0..shards {
            let domain = if addr.is_ipv6() { socket2::Domain::IPV6 } else { socket2::Domain::IPV4 };
            let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
            socket.set_reuse_port(true)?;
            socket.set_reuse_address(true)?;
            socket.bind(&addr.into())?;
            socket.listen(BACKLOG_DEFAULT)?;
            listeners.push(Some(OwnedFd::from(socket)));
        }
        Ok(Arc::new(Self {
            config,
            keys,
            listeners: Mutex::new(listeners),
            addr,
            shards,
            draining: AtomicBool::new(false),
            stats: ServerStats::default(),
        }))
    }

    /// A server with no listener (no socket is bound; [`Server::shard_task`]
    /// accepts nothing): its request handling ([`Server::check_head`],
    /// [`Server::intake`], [`Server::start`]) driven by the caller, as the
    /// simulator does. [`Server::local_addr`] is `0.0.0.0:0`.
    pub fn unbound(shards: usize, config: ServerConfig, keys: ClientKeys) -> io::Result<Arc<Self>> {
        check_limits(shards, &config)?;
        Ok(Arc::new(Self {
            config,
            keys,
            listeners: Mutex::new((0..shards).map(|_| None).collect()),
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            shards,
            draining: AtomicBool::new(false),
            stats: ServerStats::default(),
        }))
    }

    /// The limits it runs with.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counters.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Stops taking requests: a frame read from now on is answered
    /// `shutting_down` (not applied) and its connection closed. Requests
    /// already taken complete; wait for [`Server::idle`] before stopping the shards.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// True when no request is in flight.
    pub fn idle(&self) -> bool {
        self.stats.in_flight.load(Ordering::SeqCst) == 0
    }

    /// The task each shard runs: its listener's accept loop.
    pub fn shard_task(self: &Arc<Self>) -> ShardTask {
        let server = self.clone();
        ShardTask(Arc::new(move |handle: ShardHandle| {
            let server = server.clone();
            Box::pin(async move { server.accept_loop(handle).await }) as LocalTask
        }))
    }

    async fn accept_loop(self: Arc<Self>, handle: ShardHandle) {
        assert_eq!(handle.router.shards(), self.shards, "the server was bound for another shard count");
        let Some(fd) =
            self.listeners.lock().expect("not poisoned").get_mut(handle.shard).and_then(Option::take)
        else {
            tracing::error!(shard = handle.shard, "no listener for this shard");
            return;
        };
        // SAFETY: the descriptor is a bound, listening TCP socket that this
        // task now owns alone (taken out of the list above).
        let listener = unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) };
        let router = Rc::new(handle.router);
        loop {
            let stream = match listener.accept().await {
                Ok(stream) => stream,
                Err(error) => {
                    tracing::warn!(shard = handle.shard, %error, "accept failed");
                    glommio::timer::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            match self.admit() {
                Ok(slot) => {
                    let server = self.clone();
                    let router = router.clone();
                    glommio::spawn_local(async move {
                        server.connection(stream, router, &Glommio).await;
                        drop(slot);
                    })
                    .detach();
                }
                Err(refusal) => {
                    glommio::spawn_local(refuse(stream, refusal)).detach();
                }
            }
        }
    }

    /// The accept decision: a slot among `connections_max` (held until the
    /// [`Admitted`] is dropped, when the connection ends), or, at the limit,
    /// the `too many connections` error frame to send before closing
    /// ([`refuse`]); a refused connection is never read.
    pub fn admit(self: &Arc<Self>) -> Result<Admitted, Vec<u8>> {
        if self.stats.connections.fetch_add(1, Ordering::SeqCst) >= self.config.connections_max {
            self.stats.connections.fetch_sub(1, Ordering::SeqCst);
            self.stats.connections_refused.fetch_add(1, Ordering::Relaxed);
            let error = FrameError::TooManyConnections(self.config.connections_max);
            return Err(error_frame(0, 0, &error, &[]));
        }
        Ok(Admitted(self.clone()))
    }

    /// One connection, from its first byte to its close: reads frames
    /// (reading pauses while `in_flight_max` replies are queued), starts
    /// serving each at once, and a writer task (spawned on `tasks`) awaits
    /// the replies in request order and writes them; an error frame ends
    /// the connection after the replies before it; a failed write drops the
    /// rest. Generic over the byte stream and the executor: glommio's TCP
    /// sockets and tasks in production ([`Server::shard_task`]), simulated
    /// connections and the simulator's executor in `molly sim --net`.
    pub async fn connection<S, R, X>(self: &Arc<Self>, stream: S, router: Rc<R>, tasks: &X)
    where
        S: AsyncRead + AsyncWrite + Unpin + 'static,
        R: Inboxes + 'static,
        X: Spawn,
    {
        let (mut reader, mut writer) = futures_lite::io::split(stream);
        let (queue, pending) = local_channel::new_bounded::<PendingReply>(self.config.in_flight_max);
        let writer_task = tasks.spawn(async move {
            while let Some(reply) = pending.recv().await {
                let (bytes, close) = reply.await;
                if writer.write_all(&bytes).await.is_err() || close {
                    break;
                }
            }
            let _ = writer.close().await;
            // The replies still queued are dropped unpolled (nothing of them
            // was submitted). The queue is emptied before it is dropped: a
            // reader waiting for room in a full queue waits for room, not
            // for the writer (glommio's bounded channel), and would wait
            // forever, holding the connection's slot and its requests in
            // flight (found by `molly sim --net`). Given room, its send
            // fails and it stops.
            while let Some(Some(reply)) = futures_lite::future::poll_once(pending.recv()).await {
                drop(reply);
            }
        });
        loop {
            let next = self.read_request(&mut reader, &router).await;
            let Some(reply) = next else { break };
            if queue.send(reply).await.is_err() {
                break;
            }
        }
        drop(queue);
        writer_task.await;
    }

    /// Reads one frame and starts serving it. `None`: the client closed
    /// cleanly between frames (or the connection broke).
    async fn read_request<S: AsyncRead + Unpin, R: Inboxes + 'static>(
        self: &Arc<Self>,
        reader: &mut S,
        router: &Rc<R>,
    ) -> Option<PendingReply> {
        let mut head = [0u8; HEADER_SIZE];
        match read_full(reader, &mut head).await {
            Ok(0) | Err(_) => return None,
            Ok(n) if n < HEADER_SIZE => return Some(closing(self.truncated(&head, n, HEADER_SIZE))),
            Ok(_) => {}
        }
        let (header, operation) = match self.check_head(&head) {
            Ok(checked) => checked,
            Err(reply) => return Some(closing(reply)),
        };
        let body_len = header.body_len as usize;
        // Aligned for the engine's records (16 bytes), read in place.
        let mut body = vec![0u128; body_len.div_ceil(16)];
        let bytes = &mut bytemuck::cast_slice_mut::<u128, u8>(&mut body)[..body_len];
        match read_full(reader, bytes).await {
            Ok(n) if n == body_len => {}
            Ok(n) => return Some(closing(self.truncated(&head, HEADER_SIZE + n, HEADER_SIZE + body_len))),
            Err(_) => return None,
        }
        match self.intake(&head, header, operation, body) {
            Ok(request) => {
                let reply = self.start(router, request);
                Some(Box::pin(async move { (reply.await, false) }))
            }
            Err(reply) => Some(closing(reply)),
        }
    }

    /// The frame intake's first half, pure: the header checks (magic,
    /// version, operation, body limit, event count) of a frame's first
    /// [`HEADER_SIZE`] bytes. `Err`: the error frame to send before closing.
    pub fn check_head(&self, head: &[u8; HEADER_SIZE]) -> Result<(FrameHeader, Operation), Vec<u8>> {
        frame::check_header(head, self.config.body_size_max).map_err(|error| self.refusal(head, error))
    }

    /// The error frame for a connection that ended inside a frame (`have`
    /// of its `need` bytes read).
    pub fn truncated(&self, head: &[u8; HEADER_SIZE], have: usize, need: usize) -> Vec<u8> {
        self.refusal(head, FrameError::Truncated { have, need })
    }

    /// The frame intake's second half, pure: the whole frame (`head`
    /// passed [`Server::check_head`]; `body` holds its `body_len` bytes)
    /// checked (checksum, client key, MAC), then refused while draining
    /// (`shutting_down`) or when it is an error frame. `Err`: the frame to
    /// send before closing; nothing of the request is served.
    pub fn intake(
        &self,
        head: &[u8; HEADER_SIZE],
        header: FrameHeader,
        operation: Operation,
        body: Vec<u128>,
    ) -> Result<CheckedRequest, Vec<u8>> {
        assert!(body.len() * 16 >= header.body_len as usize, "the caller read the whole body");
        let bytes = &bytemuck::cast_slice::<u128, u8>(&body)[..header.body_len as usize];
        if let Err(error) = frame::verify(&header, bytes, |id| self.keys.get(id)) {
            return Err(self.refusal(head, error));
        }
        let key: Rc<[u8]> = self.keys.get(header.client_id).expect("verified").into();
        if self.draining.load(Ordering::SeqCst) {
            let message = b"the server is shutting down; the request was not applied";
            return Err(frame::encode(
                operation,
                header.request_id,
                header.client_id,
                status::SHUTTING_DOWN,
                0,
                message,
                &key,
            ));
        }
        if operation == Operation::Error {
            return Err(self.refusal(head, FrameError::UnknownOperation(header.operation)));
        }
        Ok(CheckedRequest { operation, header, body, key })
    }

    /// Starts serving a checked request (counted in flight from now until
    /// answered or dropped): the future of its reply frame. It submits to
    /// the shards' inboxes when first polled, and only waits afterwards.
    pub fn start<R: Inboxes + 'static>(
        self: &Arc<Self>,
        router: &Rc<R>,
        request: CheckedRequest,
    ) -> impl Future<Output = Vec<u8>> + 'static {
        self.stats.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self.clone());
        let server = self.clone();
        let router = router.clone();
        async move {
            let CheckedRequest { operation, header, body, key } = request;
            let (status, events, body) = server.serve(&*router, operation, &header, body).await;
            drop(guard);
            server.stats.requests.fetch_add(1, Ordering::Relaxed);
            frame::encode(operation, header.request_id, header.client_id, status, events, &body, &key)
        }
    }

    /// An error frame for a refused frame (signed with the client's key when
    /// the client is known).
    fn refusal(&self, head: &[u8; HEADER_SIZE], error: FrameError) -> Vec<u8> {
        self.stats.frame_errors.fetch_add(1, Ordering::Relaxed);
        let header: FrameHeader = bytemuck::pod_read_unaligned(head);
        let key = self.keys.get(header.client_id).unwrap_or(&[]);
        error_frame(header.request_id, header.client_id, &error, key)
    }

    /// Serves one verified request: (status, event count, body) of the reply.
    async fn serve<R: Inboxes>(
        &self,
        router: &R,
        operation: Operation,
        header: &FrameHeader,
        body: Vec<u128>,
    ) -> (u32, u32, Vec<u8>) {
        let events = header.event_count as usize;
        match operation {
            Operation::Ping => (status::OK, 0, Vec::new()),
            Operation::ServerInfo => {
                let mut info = ServerInfo {
                    protocol_version: u32::from(frame::VERSION),
                    shards: self.shards as u32,
                    batch_events_max: self.config.batch_events_max,
                    body_size_max: self.config.body_size_max,
                    in_flight_max: self.config.in_flight_max as u32,
                    connections_max: self.config.connections_max as u32,
                    query_results_max: self.config.query_results_max,
                    reserved: 0,
                    server_version: [0; 32],
                };
                let version = env!("CARGO_PKG_VERSION").as_bytes();
                info.server_version[..version.len()].copy_from_slice(version);
                (status::OK, 1, bytemuck::bytes_of(&info).to_vec())
            }
            Operation::CreateAccounts => {
                let accounts: &[Account] = bytemuck::cast_slice(&body[..events * 8]);
                self.create_accounts(router, accounts).await
            }
            Operation::CreateTransfers => {
                let transfers: &[Transfer] = bytemuck::cast_slice(&body[..events * 8]);
                self.create_transfers(router, transfers).await
            }
            Operation::LookupAccounts => {
                let ids: Vec<u128> = body[..events].to_vec();
                let found = lookup_accounts(router, &ids).await;
                (status::OK, found.len() as u32, bytemuck::cast_slice(&found).to_vec())
            }
            Operation::LookupTransfers => {
                let ids: Vec<u128> = body[..events].to_vec();
                let found = lookup_transfers(router, &ids).await;
                let found: Vec<Transfer> = ids.iter().filter_map(|id| found.get(id).copied()).collect();
                (status::OK, found.len() as u32, bytemuck::cast_slice(&found).to_vec())
            }
            Operation::GetAccountTransfers | Operation::GetAccountBalances => {
                if events != 1 {
                    let message = format!("a query carries exactly one filter, not {events}");
                    return (status::INVALID_QUERY, 0, message.into_bytes());
                }
                let filter: AccountFilter = bytemuck::cast_slice::<u128, AccountFilter>(&body[..8])[0];
                let shard = match account_route(filter.account_id, router.shards() as u32) {
                    AccountRoute::Shard(shard) => shard as usize,
                    AccountRoute::Every => {
                        let limit = filter.limit.min(self.config.query_results_max);
                        return if operation == Operation::GetAccountTransfers {
                            sharded_account_transfers(router, filter, limit).await
                        } else {
                            sharded_account_balances(router, filter, limit).await
                        };
                    }
                };
                let filter = Box::new(filter);
                if operation == Operation::GetAccountTransfers {
                    let (reply, answer) = reply_channel();
                    submit(router, shard, Request::GetAccountTransfers { filter, reply }).await;
                    query_reply(shard, answer.await)
                } else {
                    let (reply, answer) = reply_channel();
                    submit(router, shard, Request::GetAccountBalances { filter, reply }).await;
                    query_reply(shard, answer.await)
                }
            }
            Operation::Error => unreachable!("refused before serving"),
        }
    }

    async fn create_accounts<R: Inboxes>(&self, router: &R, accounts: &[Account]) -> (u32, u32, Vec<u8>) {
        let shards = router.shards();
        let plan = plan(
            accounts.len(),
            |i| accounts[i].flags.contains(AccountFlags::LINKED),
            |i| match account_route(accounts[i].id, shards as u32) {
                AccountRoute::Shard(shard) => Target::One(shard as usize),
                AccountRoute::Every => Target::Every,
            },
            shards,
        );
        let codes = apply_plan(
            router,
            accounts,
            &plan,
            CreateAccountResult::LinkedEventChainCrossShard as u32,
            CreateAccountResult::Exists as u32,
            CommandBuf::CreateAccounts,
            |outcome| match outcome {
                Outcome::Accounts(results) => Some(results.iter().map(|r| *r as u32).collect()),
                _ => None,
            },
        )
        .await;
        codes.map_or_else(
            |reply| reply,
            |codes| (status::OK, codes.len() as u32, bytemuck::cast_slice(&codes).to_vec()),
        )
    }

    async fn create_transfers<R: Inboxes>(&self, router: &R, transfers: &[Transfer]) -> (u32, u32, Vec<u8>) {
        let shards = router.shards();
        let pending_shard = locate_pending(router, transfers).await;
        let route = |i: usize| {
            let t = &transfers[i];
            Target::One(match transfer_route(t, shards as u32) {
                TransferRoute::Shard(shard) => shard as usize,
                TransferRoute::Pending => pending_shard.get(&t.pending_id).copied().unwrap_or(0),
            })
        };
        let plan =
            plan(transfers.len(), |i| transfers[i].flags.contains(TransferFlags::LINKED), route, shards);
        let codes = apply_plan(
            router,
            transfers,
            &plan,
            CreateTransferResult::LinkedEventChainCrossShard as u32,
            CreateTransferResult::Exists as u32,
            CommandBuf::CreateTransfers,
            |outcome| match outcome {
                Outcome::Transfers(results) => Some(results.iter().map(|r| *r as u32).collect()),
                _ => None,
            },
        )
        .await;
        codes.map_or_else(
            |reply| reply,
            |codes| (status::OK, codes.len() as u32, bytemuck::cast_slice(&codes).to_vec()),
        )
    }
}

/// Writes each shard's part of a create request (all parts submitted before
/// any is awaited) and assembles one result code per event in request order;
/// events of refused cross-shard chains get `cross_shard_code`. An event
/// applied on every shard (a sharded account's parts) answers the first
/// failure of any part (shard order), else `ok` if any part was created, else
/// `exists_code`. `Err` is the request-level reply when a shard failed its part.
async fn apply_plan<T: Copy, R: Inboxes>(
    router: &R,
    events: &[T],
    plan: &Plan,
    cross_shard_code: u32,
    exists_code: u32,
    command: fn(Vec<T>) -> CommandBuf,
    codes_of: fn(&Outcome) -> Option<Vec<u32>>,
) -> Result<Vec<u32>, (u32, u32, Vec<u8>)> {
    let mut codes = vec![0u32; events.len()];
    let mut answered = vec![false; events.len()];
    for &i in &plan.cross_shard {
        codes[i as usize] = cross_shard_code;
    }
    let mut answers = Vec::new();
    for (shard, indices) in plan.per_shard.iter().enumerate().filter(|(_, v)| !v.is_empty()) {
        let batch: Vec<T> = if indices.len() == events.len() {
            events.to_vec()
        } else {
            indices.iter().map(|&i| events[i as usize]).collect()
        };
        answers.push((shard, write(router, shard, command(batch)).await));
    }
    for (shard, answer) in answers {
        match answer.await {
            Ok(Ok(outcomes)) => {
                let Some(results) = outcomes.first().and_then(codes_of) else {
                    panic!("shard {shard} answered a create request with {:?}", outcomes.first());
                };
                let failed = |code: u32| code != 0 && code != exists_code;
                for (&i, new) in plan.per_shard[shard].iter().zip(results) {
                    let (i, old) = (i as usize, codes[i as usize]);
                    codes[i] = if !answered[i] || (failed(new) && !failed(old)) {
                        new
                    } else if failed(old) {
                        old
                    } else {
                        old.min(new) // ok (0) when any part was created now
                    };
                    answered[i] = true;
                }
            }
            Ok(Err(error)) => return Err(shard_failed(shard, &error)),
            Err(_) => return Err(unavailable(shard)),
        }
    }
    Ok(codes)
}

/// The shards' inboxes as the server's request handling sees them: the
/// runtime's [`Router`] in production; the simulator's inboxes in `molly
/// sim` (feature `sim`), which runs the same handling on its own
/// single-threaded executor.
pub trait Inboxes {
    /// Number of shards.
    fn shards(&self) -> usize;
    /// Queues a request on `shard`; a full inbox hands it back.
    fn submit(&self, shard: usize, request: Request) -> Result<(), Backpressure>;
    /// Waits a little before a full inbox is tried again.
    fn backoff(&self) -> impl Future<Output = ()>;
}

impl Inboxes for Router {
    #[inline]
    fn shards(&self) -> usize {
        Router::shards(self)
    }

    #[inline]
    fn submit(&self, shard: usize, request: Request) -> Result<(), Backpressure> {
        Router::submit(self, shard, request)
    }

    async fn backoff(&self) {
        glommio::timer::sleep(BACKPRESSURE_RETRY).await;
    }
}

/// A frame that passed every check ([`Server::intake`]), ready to serve
/// ([`Server::start`]).
#[derive(Debug)]
pub struct CheckedRequest {
    /// What it asks.
    pub operation: Operation,
    /// Its header.
    pub header: FrameHeader,
    /// Its body (`header.body_len` bytes), aligned for the engine's records.
    pub body: Vec<u128>,
    /// The client's key, which signs the reply.
    key: Rc<[u8]>,
}

fn check_limits(shards: usize, config: &ServerConfig) -> io::Result<()> {
    if shards == 0 || config.connections_max == 0 || config.in_flight_max == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "shards, connections_max and in_flight_max must be at least 1",
        ));
    }
    Ok(())
}

/// A frame to send, after which the connection closes.
fn closing(reply: Vec<u8>) -> PendingReply {
    Box::pin(async move { (reply, true) })
}

/// A reply being prepared: its bytes, and whether the connection closes after it.
type PendingReply = Pin<Box<dyn Future<Output = (Vec<u8>, bool)>>>;

/// A connection's slot among `connections_max` ([`Server::admit`]), given
/// back when dropped.
#[derive(Debug)]
pub struct Admitted(Arc<Server>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.stats.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A connection refused at accept ([`Server::admit`]): its error frame
/// written, then the connection closed; nothing of it is read.
pub async fn refuse<S: AsyncWrite + Unpin>(mut stream: S, refusal: Vec<u8>) {
    let _ = stream.write_all(&refusal).await;
    let _ = stream.close().await;
}

/// Where a connection's writer task runs: glommio's executor in production
/// ([`Glommio`]); the simulator's in `molly sim --net`.
pub trait Spawn {
    /// A spawned task, awaited for its output.
    type Task<T: 'static>: Future<Output = T>;
    /// Runs `future` beside the caller's task.
    fn spawn<T: 'static>(&self, future: impl Future<Output = T> + 'static) -> Self::Task<T>;
}

/// glommio's executor: [`glommio::spawn_local`].
#[derive(Clone, Copy, Debug)]
pub struct Glommio;

impl Spawn for Glommio {
    type Task<T: 'static> = glommio::Task<T>;

    #[inline]
    fn spawn<T: 'static>(&self, future: impl Future<Output = T> + 'static) -> Self::Task<T> {
        glommio::spawn_local(future)
    }
}

/// Counts a request in flight until dropped (answered, or abandoned with its connection).
struct InFlight(Arc<Server>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.stats.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn error_frame(request_id: u64, client_id: u32, error: &FrameError, key: &[u8]) -> Vec<u8> {
    let message = error.to_string();
    frame::encode(Operation::Error, request_id, client_id, error.code(), 0, message.as_bytes(), key)
}

/// The reply to a query: its records, or why the filter is invalid.
fn query_reply<T: bytemuck::Pod, E: std::fmt::Display>(
    shard: usize,
    answer: Result<Result<Vec<T>, E>, impl Sized>,
) -> (u32, u32, Vec<u8>) {
    match answer {
        Ok(Ok(found)) => (status::OK, found.len() as u32, bytemuck::cast_slice(&found).to_vec()),
        Ok(Err(error)) => (status::INVALID_QUERY, 0, error.to_string().into_bytes()),
        Err(_) => unavailable(shard),
    }
}

fn unavailable(shard: usize) -> (u32, u32, Vec<u8>) {
    let message = format!("shard {shard} stopped before answering; retrying the request is safe");
    (status::SHARD_UNAVAILABLE, 0, message.into_bytes())
}

fn shard_failed(shard: usize, error: &ShardError) -> (u32, u32, Vec<u8>) {
    match error {
        ShardError::Refused(reason) => (status::REFUSED, 0, format!("shard {shard}: {reason}").into_bytes()),
        _ => {
            let message = format!("shard {shard}: {error}; retrying the request is safe");
            (status::SHARD_UNAVAILABLE, 0, message.into_bytes())
        }
    }
}

/// Reads until `buf` is full or the peer closes; the bytes read.
async fn read_full<R: AsyncRead + Unpin>(reader: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

/// Queues `request` on `shard`, waiting politely while its inbox is full.
async fn submit<R: Inboxes>(router: &R, shard: usize, mut request: Request) {
    loop {
        match router.submit(shard, request) {
            Ok(()) => return,
            Err(Backpressure(back)) => {
                request = back;
                router.backoff().await;
            }
        }
    }
}

/// Submits one write; the answer comes when it is durable.
async fn write<R: Inboxes>(
    router: &R,
    shard: usize,
    command: CommandBuf,
) -> Answer<molly_shards::runtime::WriteReply> {
    let (reply, answer) = reply_channel();
    submit(router, shard, Request::Write { commands: vec![command], reply }).await;
    answer
}

/// Where each event of a request goes: indices per shard (in request
/// order), and the indices of linked chains that would span shards.
#[derive(Debug, PartialEq, Eq)]
struct Plan {
    per_shard: Vec<Vec<u32>>,
    cross_shard: Vec<u32>,
}

/// Where one event is applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// On this shard.
    One(usize),
    /// On every shard (a sharded account's parts).
    Every,
}

/// Splits `n` events by `target`, keeping each linked chain (events
/// with `linked` set, closed by the next event without it, or by the end of
/// the request) whole on one shard, or refusing it (a chain of events for
/// every shard too: it could not be atomic across them).
fn plan(n: usize, linked: impl Fn(usize) -> bool, target: impl Fn(usize) -> Target, shards: usize) -> Plan {
    let mut plan = Plan { per_shard: vec![Vec::new(); shards], cross_shard: Vec::new() };
    let mut start = 0;
    while start < n {
        let mut end = start;
        while end + 1 < n && linked(end) {
            end += 1;
        }
        let first = target(start);
        // A chain applied on every shard would not be atomic across them:
        // a sharded account is created by an event of its own.
        let whole = (start..=end).all(|i| target(i) == first) && !(first == Target::Every && end > start);
        if whole {
            let shards = match first {
                Target::One(shard) => shard..shard + 1,
                Target::Every => 0..shards,
            };
            for shard in shards {
                plan.per_shard[shard].extend((start..=end).map(|i| i as u32));
            }
        } else {
            plan.cross_shard.extend((start..=end).map(|i| i as u32));
        }
        start = end + 1;
    }
    plan
}

/// For post/void events that leave `debit_account_id` 0: the shard holding
/// their pending transfer, from earlier events of the same request or by
/// asking every shard. Unknown pending ids are absent (routed to shard 0,
/// whose engine answers `pending_transfer_not_found`).
async fn locate_pending<R: Inboxes>(router: &R, transfers: &[Transfer]) -> HashMap<u128, usize> {
    let shards = router.shards();
    let mut located = HashMap::new();
    let needs = |t: &Transfer| transfer_route(t, shards as u32) == TransferRoute::Pending;
    if shards == 1 || !transfers.iter().any(needs) {
        return located;
    }
    let mut in_request = HashMap::new();
    let mut unknown = Vec::new();
    for t in transfers {
        if needs(t) {
            match in_request.get(&t.pending_id) {
                Some(&shard) => {
                    located.insert(t.pending_id, shard);
                }
                None => unknown.push(t.pending_id),
            }
        }
        if let TransferRoute::Shard(shard) = transfer_route(t, shards as u32) {
            in_request.entry(t.id).or_insert(shard as usize);
        }
    }
    unknown.retain(|id| !located.contains_key(id));
    if unknown.is_empty() {
        return located;
    }
    for (shard, found) in lookup_transfers_per_shard(router, &unknown).await.into_iter().enumerate() {
        for t in found {
            if t.flags.contains(TransferFlags::PENDING) {
                located.entry(t.id).or_insert(shard);
            }
        }
    }
    located
}

/// What every shard holds of `ids` (all asked before any answer is awaited), by shard.
async fn lookup_transfers_per_shard<R: Inboxes>(router: &R, ids: &[u128]) -> Vec<Vec<Transfer>> {
    let mut answers = Vec::new();
    for shard in 0..router.shards() {
        let (reply, answer) = reply_channel();
        submit(router, shard, Request::LookupTransfers { ids: ids.to_vec(), reply }).await;
        answers.push(answer);
    }
    let mut found = Vec::with_capacity(answers.len());
    for answer in answers {
        found.push(answer.await.unwrap_or_default());
    }
    found
}

/// Accounts found, in request order. A sharded account is the sum of its
/// parts (found when any part is; its timestamp is the oldest part's).
async fn lookup_accounts<R: Inboxes>(router: &R, ids: &[u128]) -> Vec<Account> {
    let shards = router.shards();
    let mut per_shard: Vec<Vec<u128>> = vec![Vec::new(); shards];
    // Each shard is asked each id once: a part found twice would be added
    // into its sum twice (and a plain account asked twice summed with itself).
    let mut asked = HashSet::with_capacity(ids.len());
    for &id in ids {
        if !asked.insert(id) {
            continue;
        }
        match account_route(id, shards as u32) {
            AccountRoute::Shard(shard) => per_shard[shard as usize].push(id),
            AccountRoute::Every => per_shard.iter_mut().for_each(|ids| ids.push(id)),
        }
    }
    let mut answers = Vec::new();
    for (shard, ids) in per_shard.into_iter().enumerate().filter(|(_, v)| !v.is_empty()) {
        let (reply, answer) = reply_channel();
        submit(router, shard, Request::LookupAccounts { ids, reply }).await;
        answers.push(answer);
    }
    let mut found: HashMap<u128, Account> = HashMap::new();
    for answer in answers {
        for part in answer.await.unwrap_or_default() {
            found.entry(part.id).and_modify(|sum| add_part(sum, &part)).or_insert(part);
        }
    }
    ids.iter().filter_map(|id| found.get(id).copied()).collect()
}

/// Adds a sharded account's part into the sum of the others. The amounts
/// saturate at `u128::MAX` (each part is bounded by its shard's checks; the
/// sum of all of them reaching 2^128 base units is not a real ledger).
fn add_part(sum: &mut Account, part: &Account) {
    debug_assert!(is_sharded(part.id) && sum.id == part.id);
    sum.debits_pending = sum.debits_pending.saturating_add(part.debits_pending);
    sum.debits_posted = sum.debits_posted.saturating_add(part.debits_posted);
    sum.credits_pending = sum.credits_pending.saturating_add(part.credits_pending);
    sum.credits_posted = sum.credits_posted.saturating_add(part.credits_posted);
    sum.timestamp = sum.timestamp.min(part.timestamp);
}

/// `get_account_transfers` of a sharded account: every part's answer to the
/// same filter, merged by timestamp (newest first when reversed), cut to the
/// limit. Timestamps are unique across shards (`route::engine_config`), so
/// the merge is one order and paging by `timestamp_min`/`max` skips nothing.
async fn sharded_account_transfers<R: Inboxes>(
    router: &R,
    filter: AccountFilter,
    limit: u32,
) -> (u32, u32, Vec<u8>) {
    let mut answers = Vec::new();
    for shard in 0..router.shards() {
        let (reply, answer) = reply_channel();
        let request = Request::GetAccountTransfers { filter: Box::new(filter), reply };
        submit(router, shard, request).await;
        answers.push(answer);
    }
    let mut merged: Vec<Transfer> = Vec::new();
    for (shard, answer) in answers.into_iter().enumerate() {
        match answer.await {
            Ok(Ok(found)) => merged.extend(found),
            Ok(Err(error)) => return (status::INVALID_QUERY, 0, error.to_string().into_bytes()),
            Err(_) => return unavailable(shard),
        }
    }
    let reversed = filter.flags.contains(AccountFilterFlags::REVERSED);
    merged.sort_by_key(|t| if reversed { u64::MAX - t.timestamp } else { t.timestamp });
    // Each part answered its `limit` oldest (newest) matches: the merged
    // first `limit` are among them.
    merged.truncate(limit as usize);
    (status::OK, merged.len() as u32, bytemuck::cast_slice(&merged).to_vec())
}

/// `get_account_balances` of a sharded account: the account's balance (the
/// sum of its parts) after each change to any part.
///
/// Every part answers the filter (its own points, at most `limit`); merged
/// by timestamp and cut to the limit they are the changes to report, `L`.
/// The other parts' balances at each of those moments are their latest
/// point at or before it: within `L`'s span every part's points are in `L`
/// (it is the merge of all of them), so only the balance each part had just
/// before `L` begins is asked for (its newest point before `L`'s first
/// timestamp; none: zero, as history starts when the account is created).
async fn sharded_account_balances<R: Inboxes>(
    router: &R,
    filter: AccountFilter,
    limit: u32,
) -> (u32, u32, Vec<u8>) {
    let parts = match balances_per_part(router, filter).await {
        Ok(parts) => parts,
        Err(answer) => return answer,
    };
    let mut points: Vec<(u64, usize)> = Vec::new();
    for (part, found) in parts.iter().enumerate() {
        points.extend(found.iter().map(|b| (b.timestamp, part)));
    }
    let reversed = filter.flags.contains(AccountFilterFlags::REVERSED);
    points.sort_unstable_by_key(|&(timestamp, _)| if reversed { u64::MAX - timestamp } else { timestamp });
    points.truncate(limit as usize);
    points.sort_unstable();
    let Some(&(first, _)) = points.first() else {
        return (status::OK, 0, Vec::new());
    };
    // Each part's balance just before `first`.
    let mut current = vec![bytemuck::Zeroable::zeroed(); parts.len()];
    if first > 1 {
        let before = AccountFilter {
            timestamp_min: 0,
            timestamp_max: first - 1,
            limit: 1,
            flags: AccountFilterFlags(filter.flags.0 | AccountFilterFlags::REVERSED.0),
            ..filter
        };
        match balances_per_part(router, before).await {
            Ok(latest) => {
                for (part, found) in latest.into_iter().enumerate() {
                    if let Some(point) = found.first() {
                        current[part] = *point;
                    }
                }
            }
            Err(answer) => return answer,
        }
    }
    // Each part's points in `L` are the first `taken` of its answer (its
    // newest ones when reversed): walked oldest first.
    let mut taken = vec![0usize; parts.len()];
    for &(_, part) in &points {
        taken[part] += 1;
    }
    let mut index = vec![0usize; parts.len()];
    let mut merged = Vec::with_capacity(points.len());
    for (timestamp, part) in points {
        let found = &parts[part];
        let at = if reversed { taken[part] - 1 - index[part] } else { index[part] };
        index[part] += 1;
        debug_assert_eq!(found[at].timestamp, timestamp);
        current[part] = found[at];
        let mut sum = AccountBalance { timestamp, ..bytemuck::Zeroable::zeroed() };
        for b in &current {
            sum.debits_pending = sum.debits_pending.saturating_add(b.debits_pending);
            sum.debits_posted = sum.debits_posted.saturating_add(b.debits_posted);
            sum.credits_pending = sum.credits_pending.saturating_add(b.credits_pending);
            sum.credits_posted = sum.credits_posted.saturating_add(b.credits_posted);
        }
        merged.push(sum);
    }
    if reversed {
        merged.reverse();
    }
    (status::OK, merged.len() as u32, bytemuck::cast_slice(&merged).to_vec())
}

/// Every shard's answer to `get_account_balances` with `filter` (the parts
/// of a sharded account), or the reply to send on the first failure.
async fn balances_per_part<R: Inboxes>(
    router: &R,
    filter: AccountFilter,
) -> Result<Vec<Vec<AccountBalance>>, (u32, u32, Vec<u8>)> {
    let mut answers = Vec::new();
    for shard in 0..router.shards() {
        let (reply, answer) = reply_channel();
        submit(router, shard, Request::GetAccountBalances { filter: Box::new(filter), reply }).await;
        answers.push(answer);
    }
    let mut parts = Vec::with_capacity(answers.len());
    for (shard, answer) in answers.into_iter().enumerate() {
        match answer.await {
            Ok(Ok(found)) => parts.push(found),
            Ok(Err(error)) => return Err((status::INVALID_QUERY, 0, error.to_string().into_bytes())),
            Err(_) => return Err(unavailable(shard)),
        }
    }
    Ok(parts)
}

/// Transfers found on any shard, by id, as the client sent them: the legs
/// of a cross-shard transfer (one on each shard) merged by
/// `molly_shards::cross::user_view`; a transfer whose cross-shard legs have
/// not both settled (or failed) is not found.
async fn lookup_transfers<R: Inboxes>(router: &R, ids: &[u128]) -> HashMap<u128, Transfer> {
    let mut legs: HashMap<u128, Vec<Transfer>> = HashMap::new();
    for transfer in lookup_transfers_per_shard(router, ids).await.into_iter().flatten() {
        legs.entry(transfer.id).or_default().push(transfer);
    }
    legs.into_iter()
        .filter_map(|(id, found)| molly_shards::cross::user_view(&found).map(|t| (id, t)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_stay_whole_or_are_refused() {
        // Events 0..6: shards [0, 1, 1, 0, 0, 1]; links 1→2 and 3→4→5.
        let shard = [0, 1, 1, 0, 0, 1];
        let linked = [false, true, false, true, true, false];
        let got = plan(6, |i| linked[i], |i| Target::One(shard[i]), 2);
        assert_eq!(got, Plan { per_shard: vec![vec![0], vec![1, 2]], cross_shard: vec![3, 4, 5] });
        // An open chain at the end is kept whole too (the engine answers it
        // `linked_event_chain_open`).
        let got = plan(3, |i| i >= 1, |i| Target::One([0, 1, 1][i]), 2);
        assert_eq!(got, Plan { per_shard: vec![vec![0], vec![1, 2]], cross_shard: vec![] });
        assert_eq!(
            plan(0, |_| false, |_| Target::One(0), 1),
            Plan { per_shard: vec![vec![]], cross_shard: vec![] }
        );
        // Sharded accounts go to every shard, one event at a time: a chain
        // of them, or mixing them with one shard's accounts, is refused
        // (applied on every shard, it would not be atomic across them).
        use Target::{Every, One};
        let target = [Every, One(1), Every, Every, Every, One(0)];
        let linked = [false, false, true, false, true, false];
        let got = plan(6, |i| linked[i], |i| target[i], 2);
        assert_eq!(got, Plan { per_shard: vec![vec![0], vec![0, 1]], cross_shard: vec![2, 3, 4, 5] });
    }
}
