//! Fuzz target: the client's decoder (framing, envelope, pushes, login answers) fed an
//! arbitrary server byte stream in arbitrary chunks, as the SDK reads a socket.
//! Invariants checked: never panics; a frame is taken only whole; a chunked stream
//! decodes to the same messages as the whole stream at once.
//!
//! Run (stable toolchain; cargo-fuzz needs nightly-only flags):
//!   RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir client/fuzz server_bytes -- -max_total_time=60
#![no_main]

use libfuzzer_sys::fuzz_target;
use queue_client::codec::{classify, decode_stream, take_frame, Message};

const MAX: u32 = 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let (whole, whole_error) = decode_stream(stream, MAX);
    let chunk = usize::from(chunk % 16) + 1;
    let mut buf = Vec::new();
    let mut got: Vec<Message> = Vec::new();
    let mut error = None;
    'feed: for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match take_frame(&mut buf, MAX) {
                Ok(Some(frame)) => match classify(frame) {
                    Ok(m) => got.push(m),
                    Err(e) => {
                        error = Some(e);
                        break 'feed;
                    }
                },
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'feed;
                }
            }
        }
    }
    assert_eq!(got, whole);
    assert_eq!(error, whole_error);
});
