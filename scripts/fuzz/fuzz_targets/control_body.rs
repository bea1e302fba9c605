//! Fuzz target: the control port's body parser (`queue_server::control::body`) on
//! arbitrary bodies, for every body kind. Invariants checked: never panics, never
//! recurses past the depth limit (a stack overflow would abort the fuzzer), and every
//! accepted number is within its documented range.
#![no_main]

use libfuzzer_sys::fuzz_target;
use queue_server::control::body::{parse_body, BodyKind, ControlBody};
use queue_server::queue::core::ADMIT_MAX;
use queue_server::queue::pacing::{CAPACITY_MAX, RATE_MAX_PER_S};

fuzz_target!(|body: &[u8]| {
    for kind in [
        BodyKind::Admit,
        BodyKind::Rate,
        BodyKind::Capacity,
        BodyKind::Verify,
    ] {
        match parse_body(kind, body) {
            Ok(ControlBody::Admit { count }) => assert!(count <= ADMIT_MAX),
            Ok(ControlBody::Rate { per_second }) => {
                assert!(per_second.is_finite() && (0.0..=RATE_MAX_PER_S).contains(&per_second))
            }
            Ok(ControlBody::Capacity { online, capacity }) => {
                assert!(online <= CAPACITY_MAX && capacity <= CAPACITY_MAX)
            }
            Ok(ControlBody::Verify { .. }) => assert_eq!(kind, BodyKind::Verify),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
});
