//! Frames of the binary protocol (version 2): a fixed 64-byte little-endian
//! header and a body of fixed-size records. The specification is
//! docs/protocol.md; this module is its reference implementation.
//!
//! ```text
//!  0        16       32          40      44      46        48           52         56          60       64
//!  checksum  mac      request_id  magic   version operation event_count  body_len   client_id   status
//!  u128      u128     u64         "MOLY"  u16     u16       u32          u32        u32         u32
//! ```
//!
//! - `checksum`: xxh3-128 over header bytes 16..64 and the body (catches
//!   corruption before anything else is read).
//! - `mac`: BLAKE3 in keyed mode, truncated to 128 bits, keyed with a key
//!   derived from the client's key, over header bytes 32..64 and the body
//!   (authenticates every frame). Version 1 used HMAC-SHA256, 3.6× slower
//!   here over a 1 MiB body (docs/protocol.md, "Version history").
//! - Decoding checks, in order: magic, version, operation, body length
//!   against the limit, body length against the event count, then (with the
//!   whole frame) checksum, then MAC. The first failure is the error, and a
//!   frame that fails any check is never applied.

use bytemuck::{Pod, Zeroable};
use subtle::ConstantTimeEq;
use xxhash_rust::xxh3::Xxh3;

/// `b"MOLY"` little-endian.
pub const MAGIC: u32 = u32::from_le_bytes(*b"MOLY");
/// The protocol version this code speaks.
pub const VERSION: u16 = 2;
/// The BLAKE3 key-derivation context of frame MAC keys (docs/protocol.md).
pub const MAC_KEY_CONTEXT: &str = "molly protocol v2 frame mac";
/// Header size in bytes.
pub const HEADER_SIZE: usize = 64;
/// Default largest body: 8190 records of 128 bytes (1 MiB frames with the header room).
pub const BODY_SIZE_MAX_DEFAULT: u32 = 8190 * 128;

/// What a frame asks for (requests) or answers (replies carry the request's operation).
#[repr(u16)]
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Operation {
    /// Liveness; empty body both ways.
    Ping = 1,
    /// Server version, limits and shard count (reply body: see docs/protocol.md).
    ServerInfo = 2,
    /// Body: `Account` records; reply: one u32 result code per event.
    CreateAccounts = 10,
    /// Body: `Transfer` records; reply: one u32 result code per event.
    CreateTransfers = 11,
    /// Body: u128 ids; reply: the `Account` records found.
    LookupAccounts = 12,
    /// Body: u128 ids; reply: the `Transfer` records found.
    LookupTransfers = 13,
    /// Body: one `AccountFilter`; reply: `Transfer` records.
    GetAccountTransfers = 14,
    /// Body: one `AccountFilter`; reply: `AccountBalance` records.
    GetAccountBalances = 15,
    /// The server refuses a frame: `status` holds the [`FrameError`] code,
    /// the body a UTF-8 message; the connection closes after it.
    Error = 0xffff,
}

impl Operation {
    /// The operation for a wire value.
    pub fn from_u16(value: u16) -> Option<Self> {
        Some(match value {
            1 => Self::Ping,
            2 => Self::ServerInfo,
            10 => Self::CreateAccounts,
            11 => Self::CreateTransfers,
            12 => Self::LookupAccounts,
            13 => Self::LookupTransfers,
            14 => Self::GetAccountTransfers,
            15 => Self::GetAccountBalances,
            0xffff => Self::Error,
            _ => return None,
        })
    }

    /// Size of one request event of this operation (0: no events; the body is free-form).
    pub fn request_event_size(self) -> usize {
        match self {
            Self::Ping | Self::ServerInfo | Self::Error => 0,
            Self::CreateAccounts
            | Self::CreateTransfers
            | Self::GetAccountTransfers
            | Self::GetAccountBalances => 128,
            Self::LookupAccounts | Self::LookupTransfers => 16,
        }
    }
}

/// `status` of a reply that answers its request with a request-level
/// failure instead of results: the body is a UTF-8 message and the
/// connection stays open. (Error frames, which close the connection, carry
/// a [`FrameError`] code instead.)
pub mod status {
    /// The reply carries its results.
    pub const OK: u32 = 0;
    /// A shard could not make its part of the request durable (its journal
    /// failed; it refuses writes until restarted). Other shards' parts may
    /// have been applied: retrying the same request is safe, because ids are
    /// idempotent (applied events answer `exists`).
    pub const SHARD_UNAVAILABLE: u32 = 100;
    /// The query's filter is invalid (the message says why); nothing was read.
    pub const INVALID_QUERY: u32 = 101;
    /// The server is shutting down and did not apply the request; retry on
    /// the restarted server.
    pub const SHUTTING_DOWN: u32 = 102;
    /// A shard refused its part for breaking a configured limit (the
    /// message says which); nothing of that part was applied.
    pub const REFUSED: u32 = 103;
}

/// The body of a `server_info` reply (64 bytes, little-endian).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Pod, Zeroable)]
pub struct ServerInfo {
    /// The protocol version ([`VERSION`]).
    pub protocol_version: u32,
    /// Shards serving the ledger.
    pub shards: u32,
    /// Most events in one request.
    pub batch_events_max: u32,
    /// Largest request body, bytes.
    pub body_size_max: u32,
    /// Requests read ahead per connection before the server stops reading.
    pub in_flight_max: u32,
    /// Connections the server holds at most.
    pub connections_max: u32,
    /// Most records in one query reply.
    pub query_results_max: u32,
    /// Zero.
    pub reserved: u32,
    /// The server's version, UTF-8, zero-padded.
    pub server_version: [u8; 32],
}

const _: () = assert!(core::mem::size_of::<ServerInfo>() == 64);

/// The header, exactly as on the wire.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq, Debug, Pod, Zeroable)]
pub struct FrameHeader {
    /// xxh3-128 of header bytes 16..64 and the body.
    pub checksum: u128,
    /// BLAKE3-keyed/128 of header bytes 32..64 and the body, with the client's derived key.
    pub mac: u128,
    /// Chosen by the client; a reply carries its request's id.
    pub request_id: u64,
    /// [`MAGIC`].
    pub magic: u32,
    /// [`VERSION`].
    pub version: u16,
    /// An [`Operation`].
    pub operation: u16,
    /// Events in the body.
    pub event_count: u32,
    /// Body bytes.
    pub body_len: u32,
    /// Which client key signs the frame.
    pub client_id: u32,
    /// 0 in requests and successful replies; a [`FrameError`] code in error frames.
    pub status: u32,
}

const _: () = assert!(core::mem::size_of::<FrameHeader>() == HEADER_SIZE);

/// Why a frame is refused. Codes are stable (they travel in error frames).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// Not a Molly frame.
    #[error("bad magic {0:#010x}")]
    BadMagic(u32),
    /// A version this server does not speak.
    #[error("unsupported protocol version {0} (this server speaks {VERSION})")]
    BadVersion(u16),
    /// An operation this server does not know.
    #[error("unknown operation {0}")]
    UnknownOperation(u16),
    /// The body is over the configured limit.
    #[error("body of {len} bytes exceeds the limit of {max}")]
    BodyTooLarge {
        /// Announced length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The body length does not match the event count for the operation.
    #[error("body of {len} bytes does not hold {events} events of {size} bytes")]
    EventCountMismatch {
        /// Body bytes.
        len: u32,
        /// Announced events.
        events: u32,
        /// Bytes per event.
        size: u32,
    },
    /// The checksum does not match: the frame was corrupted.
    #[error("checksum mismatch")]
    BadChecksum,
    /// The client id has no key.
    #[error("unknown client {0}")]
    UnknownClient(u32),
    /// The MAC does not match: not signed with the client's key.
    #[error("authentication failed for client {0}")]
    BadMac(u32),
    /// The connection ended inside a frame.
    #[error("truncated frame: {have} of {need} bytes")]
    Truncated {
        /// Bytes received.
        have: usize,
        /// Bytes the header announced.
        need: usize,
    },
    /// The server holds `connections_max` connections already.
    #[error("too many connections (the server's limit is {0})")]
    TooManyConnections(usize),
}

impl FrameError {
    /// The stable code carried in an error frame's `status`.
    pub fn code(&self) -> u32 {
        match self {
            Self::BadMagic(_) => 1,
            Self::BadVersion(_) => 2,
            Self::UnknownOperation(_) => 3,
            Self::BodyTooLarge { .. } => 4,
            Self::EventCountMismatch { .. } => 5,
            Self::BadChecksum => 6,
            Self::UnknownClient(_) => 7,
            Self::BadMac(_) => 8,
            Self::Truncated { .. } => 9,
            Self::TooManyConnections(_) => 10,
        }
    }
}

fn checksum(header: &FrameHeader, body: &[u8]) -> u128 {
    let mut hasher = Xxh3::new();
    hasher.update(&bytemuck::bytes_of(header)[16..]);
    hasher.update(body);
    hasher.digest128()
}

/// The frame MAC: BLAKE3 keyed with `derive_key(MAC_KEY_CONTEXT, key)` (a
/// client key is 16 to 64 bytes; keyed BLAKE3 takes exactly 32), over header
/// bytes 32..64 and the body, the first 16 bytes of the tag.
fn mac(key: &[u8], header: &FrameHeader, body: &[u8]) -> u128 {
    let mut hasher = blake3::Hasher::new_keyed(&blake3::derive_key(MAC_KEY_CONTEXT, key));
    hasher.update(&bytemuck::bytes_of(header)[32..]);
    hasher.update(body);
    let tag = hasher.finalize();
    u128::from_le_bytes(tag.as_bytes()[..16].try_into().expect("32-byte tag"))
}

/// Constant-time check of the header's MAC.
fn mac_matches(key: &[u8], header: &FrameHeader, body: &[u8]) -> bool {
    mac(key, header, body).to_le_bytes().ct_eq(&header.mac.to_le_bytes()).into()
}

/// Builds a frame: header fields, then MAC with `key`, then checksum.
pub fn encode(
    operation: Operation,
    request_id: u64,
    client_id: u32,
    status: u32,
    event_count: u32,
    body: &[u8],
    key: &[u8],
) -> Vec<u8> {
    let mut header = FrameHeader {
        checksum: 0,
        mac: 0,
        request_id,
        magic: MAGIC,
        version: VERSION,
        operation: operation as u16,
        event_count,
        body_len: u32::try_from(body.len()).expect("bodies are far below 4 GiB"),
        client_id,
        status,
    };
    header.mac = mac(key, &header, body);
    header.checksum = checksum(&header, body);
    let mut frame = Vec::with_capacity(HEADER_SIZE + body.len());
    frame.extend_from_slice(bytemuck::bytes_of(&header));
    frame.extend_from_slice(body);
    frame
}

/// Checks a header on its own (before the body has arrived): magic,
/// version, operation, body length against `body_size_max` and against the
/// event count. Returns the header and the operation.
pub fn check_header(
    bytes: &[u8; HEADER_SIZE],
    body_size_max: u32,
) -> Result<(FrameHeader, Operation), FrameError> {
    let (header, operation) = check_reply_header(bytes, body_size_max)?;
    let size = operation.request_event_size() as u32;
    if size > 0 && u64::from(header.body_len) != u64::from(header.event_count) * u64::from(size) {
        return Err(FrameError::EventCountMismatch {
            len: header.body_len,
            events: header.event_count,
            size,
        });
    }
    Ok((header, operation))
}

/// The checks a client makes on a reply's header: magic, version,
/// operation, body length against `body_size_max`. (A reply's body is
/// result codes or found records, not the request's event layout, so the
/// event-size check of [`check_header`] does not apply; [`verify`] follows.)
pub fn check_reply_header(
    bytes: &[u8; HEADER_SIZE],
    body_size_max: u32,
) -> Result<(FrameHeader, Operation), FrameError> {
    let header: FrameHeader = bytemuck::pod_read_unaligned(bytes);
    if header.magic != MAGIC {
        return Err(FrameError::BadMagic(header.magic));
    }
    if header.version != VERSION {
        return Err(FrameError::BadVersion(header.version));
    }
    let operation =
        Operation::from_u16(header.operation).ok_or(FrameError::UnknownOperation(header.operation))?;
    if header.body_len > body_size_max {
        return Err(FrameError::BodyTooLarge { len: header.body_len, max: body_size_max });
    }
    Ok((header, operation))
}

/// A decoded, verified frame.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The header.
    pub header: FrameHeader,
    /// Its operation.
    pub operation: Operation,
    /// The body.
    pub body: &'a [u8],
}

/// Decodes and verifies the frame at the start of `bytes`: the header
/// checks, then the checksum, then the MAC with the key `key_of(client_id)`
/// returns. On success also returns the frame's total length. A frame that
/// is not complete yet is `Truncated`.
pub fn decode<'a, K: AsRef<[u8]>>(
    bytes: &'a [u8],
    body_size_max: u32,
    key_of: impl Fn(u32) -> Option<K>,
) -> Result<(Frame<'a>, usize), FrameError> {
    let Some(head) = bytes.first_chunk::<HEADER_SIZE>() else {
        return Err(FrameError::Truncated { have: bytes.len(), need: HEADER_SIZE });
    };
    let (header, operation) = check_header(head, body_size_max)?;
    let total = HEADER_SIZE + header.body_len as usize;
    if bytes.len() < total {
        return Err(FrameError::Truncated { have: bytes.len(), need: total });
    }
    let body = &bytes[HEADER_SIZE..total];
    verify(&header, body, key_of)?;
    Ok((Frame { header, operation, body }, total))
}

/// The checks that need the whole body, for a header that passed
/// [`check_header`] and its body read separately (how the server reads a
/// body straight into aligned records): checksum, then the client's MAC.
pub fn verify<K: AsRef<[u8]>>(
    header: &FrameHeader,
    body: &[u8],
    key_of: impl Fn(u32) -> Option<K>,
) -> Result<(), FrameError> {
    if checksum(header, body) != header.checksum {
        return Err(FrameError::BadChecksum);
    }
    let key = key_of(header.client_id).ok_or(FrameError::UnknownClient(header.client_id))?;
    if !mac_matches(key.as_ref(), header, body) {
        return Err(FrameError::BadMac(header.client_id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &[u8] = b"client-7-key-0123456789abcdef";

    fn keys(id: u32) -> Option<&'static [u8]> {
        (id == 7).then_some(KEY)
    }

    fn transfers_frame(events: u32) -> Vec<u8> {
        let body = vec![0xabu8; events as usize * 128];
        encode(Operation::CreateTransfers, 42, 7, 0, events, &body, KEY)
    }

    #[test]
    fn a_frame_round_trips() {
        let frame = transfers_frame(3);
        let (decoded, len) = decode(&frame, BODY_SIZE_MAX_DEFAULT, keys).unwrap();
        assert_eq!(len, frame.len());
        assert_eq!(decoded.operation, Operation::CreateTransfers);
        assert_eq!((decoded.header.request_id, decoded.header.event_count), (42, 3));
        assert_eq!(decoded.body.len(), 384);
        // The header layout is the documented one.
        assert_eq!(&frame[40..44], b"MOLY");
        assert_eq!(u16::from_le_bytes([frame[46], frame[47]]), 11);
    }

    #[test]
    fn the_mac_is_the_documented_one() {
        // docs/protocol.md: BLAKE3 keyed with derive_key("molly protocol v2
        // frame mac", client key), over header bytes 32..64 then the body,
        // first 16 bytes, little-endian; the checksum is xxh3-128 over header
        // bytes 16..64 then the body. Computed here in one shot, the way
        // another language's client would.
        let frame = transfers_frame(2);
        let mut signed = frame[32..].to_vec();
        let key = blake3::derive_key("molly protocol v2 frame mac", KEY);
        let tag = blake3::keyed_hash(&key, &signed);
        assert_eq!(&frame[16..32], &tag.as_bytes()[..16]);
        signed = frame[16..].to_vec();
        assert_eq!(&frame[..16], &xxhash_rust::xxh3::xxh3_128(&signed).to_le_bytes());
        assert_eq!(u16::from_le_bytes([frame[44], frame[45]]), 2, "version 2");
    }

    #[test]
    fn every_check_has_its_error() {
        let good = transfers_frame(2);
        let with = |at: usize, bytes: &[u8]| {
            let mut frame = good.clone();
            frame[at..at + bytes.len()].copy_from_slice(bytes);
            frame
        };
        let decode = |frame: &[u8]| decode(frame, BODY_SIZE_MAX_DEFAULT, keys).map(|(f, _)| f.operation);
        assert_eq!(decode(&with(40, b"XOLY")), Err(FrameError::BadMagic(u32::from_le_bytes(*b"XOLY"))));
        assert_eq!(decode(&with(44, &1u16.to_le_bytes())), Err(FrameError::BadVersion(1)));
        assert_eq!(decode(&with(46, &99u16.to_le_bytes())), Err(FrameError::UnknownOperation(99)));
        assert_eq!(
            decode(&with(52, &(BODY_SIZE_MAX_DEFAULT + 128).to_le_bytes())),
            Err(FrameError::BodyTooLarge { len: BODY_SIZE_MAX_DEFAULT + 128, max: BODY_SIZE_MAX_DEFAULT })
        );
        assert_eq!(
            decode(&with(48, &3u32.to_le_bytes())),
            Err(FrameError::EventCountMismatch { len: 256, events: 3, size: 128 })
        );
        assert_eq!(decode(&with(100, &[0])), Err(FrameError::BadChecksum));
        assert_eq!(decode(&good[..100]), Err(FrameError::Truncated { have: 100, need: 320 }));
        assert_eq!(decode(&good[..10]), Err(FrameError::Truncated { have: 10, need: 64 }));
        let stranger = encode(Operation::Ping, 1, 8, 0, 0, &[], KEY);
        assert_eq!(decode(&stranger), Err(FrameError::UnknownClient(8)));
        let forged = encode(Operation::Ping, 1, 7, 0, 0, &[], b"not the key");
        assert_eq!(decode(&forged), Err(FrameError::BadMac(7)));
        let codes: Vec<u32> = [
            FrameError::BadMagic(0),
            FrameError::BadVersion(0),
            FrameError::UnknownOperation(0),
            FrameError::BodyTooLarge { len: 0, max: 0 },
            FrameError::EventCountMismatch { len: 0, events: 0, size: 0 },
            FrameError::BadChecksum,
            FrameError::UnknownClient(0),
            FrameError::BadMac(0),
            FrameError::Truncated { have: 0, need: 0 },
        ]
        .iter()
        .map(FrameError::code)
        .collect();
        assert_eq!(codes, (1..=9).collect::<Vec<_>>());
    }

    proptest! {
        /// Any single flipped bit anywhere in a frame is caught: no corrupted
        /// frame ever decodes.
        #[test]
        fn any_flipped_bit_is_refused(events in 0u32..4, bit in 0usize..(64 + 3 * 128) * 8) {
            let mut frame = transfers_frame(events);
            let bit = bit % (frame.len() * 8);
            frame[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(decode(&frame, BODY_SIZE_MAX_DEFAULT, keys).is_err());
        }

        /// Random bytes never panic the decoder and never decode.
        #[test]
        fn random_bytes_never_decode(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            prop_assert!(decode(&bytes, BODY_SIZE_MAX_DEFAULT, keys).is_err());
        }

        /// Frames decode one after another from a stream, whatever their sizes.
        #[test]
        fn frames_decode_back_to_back(sizes in prop::collection::vec(0u32..5, 1..6)) {
            let stream: Vec<u8> = sizes.iter().flat_map(|&n| transfers_frame(n)).collect();
            let mut at = 0;
            for &n in &sizes {
                let (frame, len) = decode(&stream[at..], BODY_SIZE_MAX_DEFAULT, keys).unwrap();
                prop_assert_eq!(frame.header.event_count, n);
                at += len;
            }
            prop_assert_eq!(at, stream.len());
        }
    }
}
