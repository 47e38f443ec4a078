//! # molly-net: Molly's network edge
//!
//! **Owns**: the binary wire protocol exchanges use (frames: [`frame`]);
//! with the `server` feature (default), the client keys ([`keys`]) and the
//! TCP server that runs on the shards' executors ([`server`]): listeners,
//! per-connection pipelining with replies in request order, routing of each
//! event to its owning shard, error frames. The client is crate
//! `molly-client` (which uses this crate without the `server` feature).
//!
//! **Must not**: apply any part of a frame that fails a check (magic,
//! version, operation, length limits, checksum, MAC), panic on any input, or
//! reach into engine internals: it moves the engine's 128-byte records as
//! they are.
//!
//! ```text
//!  bytes ─► check_header (magic, version, operation, limits) ─► wait for the body
//!        ─► checksum (xxh3-128) ─► MAC (BLAKE3-keyed/128, client key) ─► Frame { header, body }
//!        └─ any failure ─► FrameError (a stable code for the error frame), nothing applied
//! ```
//!
//! **Limits**: the body size limit is the caller's (default
//! [`frame::BODY_SIZE_MAX_DEFAULT`]: 8190 records of 128 bytes); the server
//! also limits connections and requests read ahead per connection
//! ([`server::ServerConfig`]).
//!
//! ```
//! use molly_net::frame::{decode, encode, Operation, BODY_SIZE_MAX_DEFAULT};
//! let key: &[u8] = b"a client key";
//! let frame = encode(Operation::Ping, 1, 7, 0, 0, &[], key);
//! let (ping, len) = decode(&frame, BODY_SIZE_MAX_DEFAULT, |id| (id == 7).then_some(key)).unwrap();
//! assert_eq!((ping.operation, len), (Operation::Ping, 64));
//! ```

pub mod frame;
#[cfg(feature = "server")]
pub mod keys;
#[cfg(feature = "server")]
pub mod server;
#[cfg(all(feature = "server", any(test, feature = "sim")))]
pub mod sim;
