//! Proof that the codec's hot path allocates nothing: framing, parsing `heartbeat` and
//! `position` requests, and encoding their answers into a buffer that already has room.
//!
//! Installs the counting allocator for this test binary and measures with the calling
//! thread's own counter (`thread_allocations`), so the test harness and the other tests
//! in this file, running on other threads, cannot disturb the count. Each case is warmed
//! up first (lazy statics, CPU feature detection) and then run 10,000 times; the
//! assertion is on allocation counts only, never on time.

use std::hint::black_box;

use bytes::{BufMut, BytesMut};
use queue_server::alloc_count::{self, CountingAlloc};
use queue_server::frame::{check_frame, HEADER_BYTES};
use queue_server::protocol::{
    encode_heartbeat_ok, encode_position, parse_heartbeat, parse_request, Cmd,
};

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Iterations measured per case.
const ROUNDS: usize = 10_000;
/// Iterations run before measuring.
const WARM_UP: usize = 100;

/// Runs `f` WARM_UP times, then ROUNDS times under measurement; returns the number of
/// allocations the calling thread made during the measured rounds.
fn allocations_during(mut f: impl FnMut()) -> u64 {
    for _ in 0..WARM_UP {
        f();
    }
    let before = alloc_count::thread_allocations();
    for _ in 0..ROUNDS {
        f();
    }
    alloc_count::thread_allocations() - before
}

/// A frame (header + body) as it arrives on the wire.
fn frame(body: &str) -> BytesMut {
    let mut wire = BytesMut::with_capacity(HEADER_BYTES + body.len());
    wire.put_u32(body.len() as u32);
    wire.extend_from_slice(body.as_bytes());
    wire
}

#[test]
fn counter_sees_allocations() {
    // Guards the other tests: a counter that never moves would make them pass vacuously.
    let before = alloc_count::thread_allocations();
    let global_before = alloc_count::allocations();
    let v = black_box(vec![1u8; 100]);
    drop(v);
    assert_eq!(alloc_count::thread_allocations() - before, 1);
    assert!(alloc_count::allocations() > global_before);
    assert!(alloc_count::allocated_bytes() >= 100);
}

#[test]
fn heartbeat_request_path_allocates_nothing() {
    let wires = [
        frame(r#"{"cmd":"heartbeat","seq":17,"data":{"ts":1700000000123}}"#),
        frame(r#"{"cmd":"heartbeat"}"#),
        frame(
            r#" {"seq":4294967295, "cmd":"heartbeat", "data":{}, "client":"v1.2 \"beta\"", "x":[1,{"y":null}]} "#,
        ),
    ];
    for wire in &wires {
        let allocs = allocations_during(|| {
            let wire = black_box(&wire[..]);
            let len = check_frame(wire, 4096).unwrap().unwrap();
            let req = parse_request(&wire[HEADER_BYTES..HEADER_BYTES + len]).unwrap();
            assert_eq!(req.cmd, Cmd::Heartbeat);
            black_box(parse_heartbeat(&req).unwrap());
        });
        assert_eq!(allocs, 0, "heartbeat frame {wire:?}");
    }
}

#[test]
fn position_request_path_allocates_nothing() {
    let wires = [
        frame(r#"{"cmd":"position","seq":3}"#),
        frame(r#"{"cmd":"position","seq":3,"ver":1,"data":{"unused":[1,2,3]}}"#),
    ];
    for wire in &wires {
        let allocs = allocations_during(|| {
            let wire = black_box(&wire[..]);
            let len = check_frame(wire, 4096).unwrap().unwrap();
            let req = parse_request(&wire[HEADER_BYTES..HEADER_BYTES + len]).unwrap();
            assert_eq!(req.cmd, Cmd::Position);
            black_box(req);
        });
        assert_eq!(allocs, 0, "position frame {wire:?}");
    }
}

#[test]
fn encoding_answers_allocates_nothing() {
    let mut out = BytesMut::with_capacity(4096);
    let allocs = allocations_during(|| {
        out.clear();
        encode_heartbeat_ok(&mut out, black_box(17), Some(1_700_000_000_123), u64::MAX);
        encode_heartbeat_ok(&mut out, black_box(18), None, 1_700_000_000_456);
        encode_position(&mut out, black_box(3), 123_456, 1_000_000, Some(600));
        encode_position(&mut out, black_box(0), 1, 1, None);
        black_box(&out);
    });
    assert_eq!(allocs, 0);
    assert_eq!(out.capacity(), 4096, "the buffer never had to grow");
}
