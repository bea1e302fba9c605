//! Fuzz target: the frame decoder fed an arbitrary byte stream in arbitrary chunks.
//! Invariants checked: never panics; a verdict depends on the 4-byte header only;
//! every frame it returns lies inside the buffer and has a length in 1..=max.
#![no_main]

use bytes::{Buf, BytesMut};
use libfuzzer_sys::fuzz_target;
use queue_server::frame::{check_frame, HEADER_BYTES};

const MAX: u32 = 1024;

fuzz_target!(|data: &[u8]| {
    // First byte picks the chunk size, the rest is the stream.
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk % 16) + 1;
    let mut buf = BytesMut::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match check_frame(&buf, MAX) {
                Ok(Some(len)) => {
                    assert!(len >= 1 && len <= MAX as usize);
                    assert!(HEADER_BYTES + len <= buf.len());
                    let _ = queue_server::protocol::parse_request(
                        &buf[HEADER_BYTES..HEADER_BYTES + len],
                    );
                    buf.advance(HEADER_BYTES + len);
                }
                Ok(None) => break,
                Err(_) => {
                    // Decided from the header alone: the header says 0 or > MAX.
                    let n = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                    assert!(n == 0 || n > MAX);
                    return;
                }
            }
        }
    }
});
