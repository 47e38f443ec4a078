//! Fuzz target: the frame decoder never panics, and what it accepts
//! re-encodes to the same bytes (nothing is read that was not checked).
//!
//! Run: `cd net/fuzz && cargo +nightly fuzz run frame_decode -- -max_total_time=60`
#![no_main]

use libfuzzer_sys::fuzz_target;
use molly_net::frame::{check_reply_header, decode, encode, BODY_SIZE_MAX_DEFAULT, HEADER_SIZE};

const KEY: &[u8] = b"fuzz-client-key-0123456789abcdef";

fuzz_target!(|data: &[u8]| {
    // The first byte picks the body limit, so small limits are exercised too.
    let Some((&limit_byte, bytes)) = data.split_first() else { return };
    let limit = if limit_byte < 128 { u32::from(limit_byte) * 128 } else { BODY_SIZE_MAX_DEFAULT };
    if let Ok((frame, len)) = decode(bytes, limit, |id| (id == 7).then_some(KEY)) {
        assert!(len <= bytes.len() && len == HEADER_SIZE + frame.body.len());
        assert!(frame.body.len() as u32 <= limit);
        let again = encode(
            frame.operation,
            frame.header.request_id,
            frame.header.client_id,
            frame.header.status,
            frame.header.event_count,
            frame.body,
            KEY,
        );
        assert_eq!(&again[..], &bytes[..len], "an accepted frame re-encodes to the same bytes");
    }
    if let Some(head) = bytes.first_chunk::<HEADER_SIZE>() {
        let _ = check_reply_header(head, limit);
    }
});
