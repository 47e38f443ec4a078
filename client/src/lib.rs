//! # molly-client: the Rust client for Molly's binary protocol
//!
//! **Owns**: one connection's session with a Molly server (docs/protocol.md):
//! framing and MACs with the client's key, request ids, pipelining,
//! automatic batching of concurrent calls into frames, timeouts, and
//! reconnecting with a safe retry of every unanswered request.
//!
//! **Must not**: change what the server answers (results are returned as
//! sent), or resend anything whose retry is not safe: every write names its
//! events by id, so a resent request's events that were already applied
//! answer `exists` (for accounts and transfers with the same fields) instead
//! of being applied twice.
//!
//! ```text
//!  callers ─► create_transfers(&[..]) ─┐  calls queue (bounded)
//!  callers ─► create_transfers(&[..]) ─┴► session task: batches calls of one
//!             operation into a frame (≤ batch_events_max events, a call never
//!             split) ─► socket ─► server ─► reply ─► each call gets its slice
//!  unanswered after request_timeout, or the connection breaks:
//!             reconnect (backoff) and resend every unanswered frame in order
//! ```
//!
//! ```no_run
//! # async fn demo() -> Result<(), molly_client::Error> {
//! use molly_client::{Client, ClientConfig};
//! use molly_engine::{Account, Transfer};
//! let config = ClientConfig::from_data_dir("./data".as_ref())?;
//! let client = Client::connect(config).await?;
//! let accounts = [1u128, 2].map(|id| Account { id, ledger: 1, code: 1, ..Account::default() });
//! assert!(client.create_accounts(&accounts).await?.iter().all(|r| r.is_ok()));
//! let transfer =
//!     Transfer { id: 7, debit_account_id: 1, credit_account_id: 2, amount: 10, ledger: 1, code: 1, ..Transfer::default() };
//! let results = client.create_transfers(&[transfer]).await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use molly_engine::{
    Account, AccountBalance, AccountFilter, CreateAccountResult, CreateTransferResult, Transfer,
};
use molly_net::frame::{self, status, Operation, ServerInfo, HEADER_SIZE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use zeroize::Zeroizing;

/// Client settings.
#[derive(Clone)]
pub struct ClientConfig {
    /// The server's protocol address.
    pub addr: SocketAddr,
    /// This client's id (a line of the server's key file).
    pub client_id: u32,
    /// This client's key.
    pub key: Zeroizing<Vec<u8>>,
    /// Most events per frame (the server's `batch_events_max`).
    pub batch_events_max: u32,
    /// Frames sent and not yet answered, at most (the server reads up to its
    /// own `in_flight_max` ahead).
    pub in_flight_max: usize,
    /// Calls waiting for the session, at most (callers wait beyond it).
    pub queue_depth: usize,
    /// A frame unanswered this long makes the session reconnect and resend.
    pub request_timeout: Duration,
    /// A call unanswered this long returns [`Error::Timeout`] (its request
    /// may still be applied: retry with the same ids to find out).
    pub call_timeout: Duration,
    /// Longest wait between reconnection attempts (doubling from 10 ms).
    pub reconnect_backoff_max: Duration,
    /// Largest reply body accepted, bytes.
    pub reply_body_max: u32,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("addr", &self.addr)
            .field("client_id", &self.client_id)
            .field("key", &"<secret>")
            .field("batch_events_max", &self.batch_events_max)
            .field("in_flight_max", &self.in_flight_max)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl ClientConfig {
    /// Defaults for a server at `addr`, as client `client_id` with `key`.
    pub fn new(addr: SocketAddr, client_id: u32, key: &[u8]) -> Self {
        Self {
            addr,
            client_id,
            key: Zeroizing::new(key.to_vec()),
            batch_events_max: 8190,
            in_flight_max: 32,
            queue_depth: 4096,
            request_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(60),
            reconnect_backoff_max: Duration::from_secs(1),
            reply_body_max: 8190 * 128,
        }
    }

    /// The server a local `molly serve --data-dir DIR` runs: its address
    /// from `DIR/server.addr`, the first client of `DIR/client-keys`.
    pub fn from_data_dir(dir: &Path) -> Result<Self, Error> {
        let addr_file = dir.join("server.addr");
        let addr = std::fs::read_to_string(&addr_file).map_err(|e| {
            Error::Config(format!("{}: {e} (is `molly serve` running there?)", addr_file.display()))
        })?;
        let addr = addr
            .trim()
            .parse()
            .map_err(|_| Error::Config(format!("{}: {addr:?} is not HOST:PORT", addr_file.display())))?;
        let (client_id, key) = read_key_file(&dir.join("client-keys"))?;
        Ok(Self::new(addr, client_id, &key))
    }
}

/// The first client of a key file (`<client_id> <hex key>` per line).
pub fn read_key_file(path: &Path) -> Result<(u32, Zeroizing<Vec<u8>>), Error> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?,
    );
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut fields = line.split_whitespace();
        let bad = || Error::Config(format!("{}: expected `<client_id> <hex key>`", path.display()));
        let id = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
        let key = fields.next().and_then(|f| hex::decode(f).ok()).ok_or_else(bad)?;
        return Ok((id, Zeroizing::new(key)));
    }
    Err(Error::Config(format!("{}: no client key", path.display())))
}

/// What a call can fail with.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Settings or key file unusable.
    #[error("client configuration: {0}")]
    Config(String),
    /// More events than `batch_events_max` in one call (split it; a linked
    /// chain must stay in one call).
    #[error("{events} events in one call; the limit is {max}")]
    TooManyEvents {
        /// Events in the call.
        events: usize,
        /// The limit.
        max: u32,
    },
    /// The server refused the frame with an error frame (the connection was closed).
    #[error("the server refused the request: {message} (error {code})")]
    Refused {
        /// The [`FrameError`] code.
        code: u32,
        /// The server's message.
        message: String,
    },
    /// The server answered the request with a request-level status
    /// ([`status`]): nothing of it, or (for `shard_unavailable`) not all of
    /// it, was applied; retrying is safe.
    #[error("the server answered status {status}: {message}")]
    Status {
        /// The status code.
        status: u32,
        /// The server's message.
        message: String,
    },
    /// No answer within `call_timeout`. The request may have been applied.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The reply broke the protocol (a bug or a hostile peer).
    #[error("malformed reply: {0}")]
    Protocol(String),
    /// The client was dropped.
    #[error("the client session has stopped")]
    Closed,
}

/// A connection to a Molly server. Cheap to clone; calls from many tasks
/// share the connection and are batched together.
#[derive(Clone, Debug)]
pub struct Client {
    calls: mpsc::Sender<Call>,
    config: Arc<ClientConfig>,
}

#[derive(Debug)]
struct Call {
    operation: Operation,
    events: u32,
    body: Vec<u8>,
    /// For lookups: the ids asked, to pick this call's records out of a shared reply.
    ids: Option<Vec<u128>>,
    reply: oneshot::Sender<Result<Vec<u8>, Error>>,
}

impl Client {
    /// Connects (the first connection must succeed) and starts the session task
    /// on the current tokio runtime.
    pub async fn connect(config: ClientConfig) -> Result<Self, Error> {
        if config.in_flight_max == 0 || config.queue_depth == 0 || config.batch_events_max == 0 {
            return Err(Error::Config(
                "in_flight_max, queue_depth and batch_events_max must be at least 1".into(),
            ));
        }
        let stream = TcpStream::connect(config.addr)
            .await
            .map_err(|e| Error::Config(format!("connecting to {}: {e}", config.addr)))?;
        let _ = stream.set_nodelay(true);
        let (calls, queue) = mpsc::channel(config.queue_depth);
        let config = Arc::new(config);
        tokio::spawn(Session::new(config.clone(), queue).run(stream));
        Ok(Self { calls, config })
    }

    async fn call(
        &self,
        operation: Operation,
        events: u32,
        body: Vec<u8>,
        ids: Option<Vec<u128>>,
    ) -> Result<Vec<u8>, Error> {
        if events > self.config.batch_events_max {
            return Err(Error::TooManyEvents { events: events as usize, max: self.config.batch_events_max });
        }
        let (reply, answer) = oneshot::channel();
        self.calls.send(Call { operation, events, body, ids, reply }).await.map_err(|_| Error::Closed)?;
        match tokio::time::timeout(self.config.call_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout(self.config.call_timeout)),
        }
    }

    /// Liveness round trip.
    pub async fn ping(&self) -> Result<(), Error> {
        self.call(Operation::Ping, 0, Vec::new(), None).await.map(|_| ())
    }

    /// The server's version, limits and shard count.
    pub async fn server_info(&self) -> Result<ServerInfo, Error> {
        let body = self.call(Operation::ServerInfo, 0, Vec::new(), None).await?;
        bytemuck::try_pod_read_unaligned(&body)
            .map_err(|_| Error::Protocol(format!("server_info body of {} bytes", body.len())))
    }

    /// Creates accounts: one result per account, in order.
    pub async fn create_accounts(&self, accounts: &[Account]) -> Result<Vec<CreateAccountResult>, Error> {
        let body = self
            .call(
                Operation::CreateAccounts,
                accounts.len() as u32,
                bytemuck::cast_slice(accounts).to_vec(),
                None,
            )
            .await?;
        codes(&body, accounts.len(), CreateAccountResult::from_u32)
    }

    /// Creates transfers: one result per transfer, in order.
    pub async fn create_transfers(&self, transfers: &[Transfer]) -> Result<Vec<CreateTransferResult>, Error> {
        let body = self
            .call(
                Operation::CreateTransfers,
                transfers.len() as u32,
                bytemuck::cast_slice(transfers).to_vec(),
                None,
            )
            .await?;
        codes(&body, transfers.len(), CreateTransferResult::from_u32)
    }

    /// The accounts found, in the order asked.
    pub async fn lookup_accounts(&self, ids: &[u128]) -> Result<Vec<Account>, Error> {
        let body = self
            .call(
                Operation::LookupAccounts,
                ids.len() as u32,
                bytemuck::cast_slice(ids).to_vec(),
                Some(ids.to_vec()),
            )
            .await?;
        records(&body)
    }

    /// The transfers found, in the order asked.
    pub async fn lookup_transfers(&self, ids: &[u128]) -> Result<Vec<Transfer>, Error> {
        let body = self
            .call(
                Operation::LookupTransfers,
                ids.len() as u32,
                bytemuck::cast_slice(ids).to_vec(),
                Some(ids.to_vec()),
            )
            .await?;
        records(&body)
    }

    /// An account's transfers matching `filter`.
    pub async fn get_account_transfers(&self, filter: &AccountFilter) -> Result<Vec<Transfer>, Error> {
        let body =
            self.call(Operation::GetAccountTransfers, 1, bytemuck::bytes_of(filter).to_vec(), None).await?;
        records(&body)
    }

    /// An account's balance history matching `filter`.
    pub async fn get_account_balances(&self, filter: &AccountFilter) -> Result<Vec<AccountBalance>, Error> {
        let body =
            self.call(Operation::GetAccountBalances, 1, bytemuck::bytes_of(filter).to_vec(), None).await?;
        records(&body)
    }
}

fn codes<T>(body: &[u8], events: usize, from: fn(u32) -> Option<T>) -> Result<Vec<T>, Error> {
    if body.len() != events * 4 {
        return Err(Error::Protocol(format!("{} result bytes for {events} events", body.len())));
    }
    body.chunks_exact(4)
        .map(|c| {
            let code = u32::from_le_bytes(c.try_into().expect("4 bytes"));
            from(code).ok_or_else(|| Error::Protocol(format!("unknown result code {code}")))
        })
        .collect()
}

fn records<T: bytemuck::Pod>(body: &[u8]) -> Result<Vec<T>, Error> {
    let size = std::mem::size_of::<T>();
    if !body.len().is_multiple_of(size) {
        return Err(Error::Protocol(format!("{} bytes are not whole {size}-byte records", body.len())));
    }
    Ok(body.chunks_exact(size).map(bytemuck::pod_read_unaligned).collect())
}

/// The calls one frame answers.
struct Sent {
    operation: Operation,
    frame: Vec<u8>,
    parts: Vec<Part>,
    sent: Instant,
}

struct Part {
    /// First event of this call in the frame, and its event count.
    offset: u32,
    events: u32,
    ids: Option<Vec<u128>>,
    reply: oneshot::Sender<Result<Vec<u8>, Error>>,
}

/// What the reader task hands the session.
enum Incoming {
    Frame { request_id: u64, operation: Operation, status: u32, body: Vec<u8> },
    Broken(String),
}

struct Session {
    config: Arc<ClientConfig>,
    calls: mpsc::Receiver<Call>,
    /// A call taken but not fitting the last frame.
    held: Option<Call>,
    in_flight: BTreeMap<u64, Sent>,
    next_request_id: u64,
}

impl Session {
    fn new(config: Arc<ClientConfig>, calls: mpsc::Receiver<Call>) -> Self {
        Self { config, calls, held: None, in_flight: BTreeMap::new(), next_request_id: 1 }
    }

    async fn run(mut self, first: TcpStream) {
        let mut stream = Some(first);
        let mut backoff = Duration::from_millis(10);
        loop {
            let connection = match stream.take() {
                Some(connection) => connection,
                None => match TcpStream::connect(self.config.addr).await {
                    Ok(connection) => {
                        backoff = Duration::from_millis(10);
                        let _ = connection.set_nodelay(true);
                        connection
                    }
                    Err(error) => {
                        tracing::debug!(%error, "reconnect failed");
                        if self.calls.is_closed() && self.in_flight.is_empty() {
                            return;
                        }
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.config.reconnect_backoff_max);
                        continue;
                    }
                },
            };
            match self.serve(connection).await {
                Ok(()) => return,
                Err(reason) => tracing::debug!(reason, "connection lost; reconnecting and resending"),
            }
        }
    }

    /// Runs one connection: resends what is unanswered, then sends new
    /// frames and routes replies. `Ok` once the client is gone and nothing is
    /// pending; `Err` when the connection must be replaced.
    async fn serve(&mut self, connection: TcpStream) -> Result<(), String> {
        let (mut read, mut write) = connection.into_split();
        let (incoming_tx, mut incoming) = mpsc::channel(self.config.in_flight_max + 1);
        let config = self.config.clone();
        let reader = tokio::spawn(async move {
            loop {
                let frame = read_frame(&mut read, &config).await;
                let broken = matches!(frame, Incoming::Broken(_));
                if incoming_tx.send(frame).await.is_err() || broken {
                    return;
                }
            }
        });
        let _abort = AbortOnDrop(reader);
        for sent in self.in_flight.values_mut() {
            sent.sent = Instant::now();
            write.write_all(&sent.frame).await.map_err(|e| format!("resending: {e}"))?;
        }
        loop {
            let room = self.in_flight.len() < self.config.in_flight_max;
            let deadline = self
                .in_flight
                .values()
                .map(|s| s.sent + self.config.request_timeout)
                .min()
                .unwrap_or_else(|| Instant::now() + self.config.request_timeout);
            tokio::select! {
                call = self.calls.recv(), if room && self.held.is_none() => {
                    let Some(call) = call else {
                        if self.in_flight.is_empty() { return Ok(()); }
                        continue;
                    };
                    let sent = self.frame(call);
                    write.write_all(&sent.frame).await.map_err(|e| format!("writing: {e}"))?;
                    self.in_flight.insert(self.next_request_id - 1, sent);
                }
                _ = std::future::ready(()), if room && self.held.is_some() => {
                    let call = self.held.take().expect("held");
                    let sent = self.frame(call);
                    write.write_all(&sent.frame).await.map_err(|e| format!("writing: {e}"))?;
                    self.in_flight.insert(self.next_request_id - 1, sent);
                }
                frame = incoming.recv() => match frame {
                    Some(Incoming::Frame { request_id, operation, status, body }) => {
                        self.answer(request_id, operation, status, body)?;
                        if self.calls.is_closed() && self.in_flight.is_empty() && self.held.is_none() {
                            return Ok(());
                        }
                    }
                    Some(Incoming::Broken(reason)) => return Err(reason),
                    None => return Err("the reader stopped".into()),
                },
                _ = tokio::time::sleep_until(deadline.into()), if !self.in_flight.is_empty() => {
                    return Err(format!("no reply within {:?}", self.config.request_timeout));
                }
            }
        }
    }

    /// Builds the next frame from `first` and, for batchable operations,
    /// the calls of the same operation waiting behind it (a call is never split).
    fn frame(&mut self, first: Call) -> Sent {
        let operation = first.operation;
        let batchable = matches!(
            operation,
            Operation::CreateAccounts
                | Operation::CreateTransfers
                | Operation::LookupAccounts
                | Operation::LookupTransfers
        );
        let mut events = first.events;
        let mut body = first.body;
        let mut parts = vec![Part { offset: 0, events: first.events, ids: first.ids, reply: first.reply }];
        while let Some(next) = batchable.then(|| self.calls.try_recv().ok()).flatten() {
            if next.operation != operation || events + next.events > self.config.batch_events_max {
                self.held = Some(next);
                break;
            }
            parts.push(Part { offset: events, events: next.events, ids: next.ids, reply: next.reply });
            events += next.events;
            body.extend_from_slice(&next.body);
        }
        let request_id = self.next_request_id;
        self.next_request_id += 1;
        let frame =
            frame::encode(operation, request_id, self.config.client_id, 0, events, &body, &self.config.key);
        Sent { operation, frame, parts, sent: Instant::now() }
    }

    /// Routes a reply to its calls. A reply to no request, or for another
    /// operation, breaks the connection.
    fn answer(
        &mut self,
        request_id: u64,
        operation: Operation,
        status: u32,
        body: Vec<u8>,
    ) -> Result<(), String> {
        if operation == Operation::Error {
            // The server closes after an error frame: fail the request it names
            // (or, unnamed, the oldest), and resend the rest on a new connection.
            let id = if self.in_flight.contains_key(&request_id) {
                request_id
            } else {
                *self.in_flight.keys().next().ok_or("an error frame with nothing in flight")?
            };
            let sent = self.in_flight.remove(&id).expect("present");
            let error = Error::Refused { code: status, message: String::from_utf8_lossy(&body).into_owned() };
            for part in sent.parts {
                let _ = part.reply.send(Err(error.clone()));
            }
            return Err(format!("the server refused request {id}"));
        }
        let Some(sent) = self.in_flight.remove(&request_id) else {
            return Err(format!("a reply to request {request_id}, which is not in flight"));
        };
        if sent.operation != operation {
            return Err(format!("request {request_id} was {:?}, the reply is {operation:?}", sent.operation));
        }
        if status != status::OK {
            let error = Error::Status { status, message: String::from_utf8_lossy(&body).into_owned() };
            for part in sent.parts {
                let _ = part.reply.send(Err(error.clone()));
            }
            return Ok(());
        }
        match operation {
            Operation::CreateAccounts | Operation::CreateTransfers => {
                let total: u32 = sent.parts.iter().map(|p| p.events).sum();
                if body.len() != total as usize * 4 {
                    return Err(format!("{} result bytes for {total} events", body.len()));
                }
                for part in sent.parts {
                    let range = part.offset as usize * 4..(part.offset + part.events) as usize * 4;
                    let _ = part.reply.send(Ok(body[range].to_vec()));
                }
            }
            Operation::LookupAccounts | Operation::LookupTransfers => {
                if !body.len().is_multiple_of(128) {
                    return Err(format!("{} bytes are not whole records", body.len()));
                }
                // Records carry their id first: each call gets the ones it asked for, in its order.
                for part in sent.parts {
                    let asked: HashSet<u128> = part.ids.iter().flatten().copied().collect();
                    let mut mine = Vec::new();
                    for record in body.chunks_exact(128) {
                        let id = u128::from_le_bytes(record[..16].try_into().expect("16 bytes"));
                        if asked.contains(&id) {
                            mine.extend_from_slice(record);
                        }
                    }
                    let _ = part.reply.send(Ok(mine));
                }
            }
            _ => {
                for part in sent.parts {
                    let _ = part.reply.send(Ok(body.clone()));
                }
            }
        }
        Ok(())
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads and verifies one reply frame.
async fn read_frame(read: &mut tokio::net::tcp::OwnedReadHalf, config: &ClientConfig) -> Incoming {
    let mut head = [0u8; HEADER_SIZE];
    if let Err(error) = read.read_exact(&mut head).await {
        return Incoming::Broken(format!("reading a reply header: {error}"));
    }
    let (header, operation) = match frame::check_reply_header(&head, config.reply_body_max) {
        Ok(checked) => checked,
        Err(error) => return Incoming::Broken(format!("a reply header fails its checks: {error}")),
    };
    let mut body = vec![0u8; header.body_len as usize];
    if let Err(error) = read.read_exact(&mut body).await {
        return Incoming::Broken(format!("reading a reply body: {error}"));
    }
    // Error frames for an unknown client are signed with an empty key.
    let key: &[u8] = &config.key;
    let verified = frame::verify(&header, &body, |_| Some(key)).or_else(|error| {
        if operation == Operation::Error {
            frame::verify(&header, &body, |_| Some(&[][..]))
        } else {
            Err(error)
        }
    });
    if let Err(error) = verified {
        return Incoming::Broken(format!("a reply fails verification: {error}"));
    }
    Incoming::Frame { request_id: header.request_id, operation, status: header.status, body }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_codes_and_records_are_checked() {
        let body: Vec<u8> = [0u32, 18].iter().flat_map(|c| c.to_le_bytes()).collect();
        let got = codes(&body, 2, CreateTransferResult::from_u32).unwrap();
        assert_eq!(got, [CreateTransferResult::Ok, CreateTransferResult::Exists]);
        assert!(matches!(codes(&body, 3, CreateTransferResult::from_u32), Err(Error::Protocol(_))));
        let bad: Vec<u8> = 9999u32.to_le_bytes().to_vec();
        assert!(matches!(codes(&bad, 1, CreateTransferResult::from_u32), Err(Error::Protocol(_))));
        assert!(matches!(records::<Account>(&[0u8; 100]), Err(Error::Protocol(_))));
        assert_eq!(records::<Account>(&[0u8; 256]).unwrap().len(), 2);
    }
}
