//! Fuzz target: the request parser and the per-command data parsers on arbitrary
//! bodies. Invariants checked: never panics, never recurses past the depth limit
//! (a stack overflow would abort the fuzzer), `data` when present is an object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use queue_server::protocol::{parse_heartbeat, parse_login, parse_request};

fuzz_target!(|body: &[u8]| {
    if let Ok(req) = parse_request(body) {
        if let Some(data) = req.data {
            assert!(data.starts_with('{'));
        }
        let _ = parse_login(&req);
        let _ = parse_heartbeat(&req);
    }
});
