//! Seeded randomized tests of the frame decoder and the request parser: valid streams
//! cut at random points decode to exactly the frames sent; random and mutated input
//! never panics and is classified from the header alone. (The coverage-guided fuzz
//! targets in scripts/fuzz/ explore further; these run in every `cargo test`.)

use bytes::{Buf, BytesMut};
use queue_server::frame::{check_frame, FrameError, HEADER_BYTES};
use queue_server::protocol::{parse_heartbeat, parse_login, parse_request, Cmd};

const MAX: u32 = 4096;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_request(rng: &mut Rng) -> (String, u32) {
    let seq = rng.next() as u32;
    let body = match rng.below(5) {
        0 => format!(
            r#"{{"cmd":"login","seq":{seq},"data":{{"user_id":{},"queue":"q\u002d{}","ticket":"t\"{}"}}}}"#,
            rng.next(),
            rng.below(100),
            rng.below(100)
        ),
        1 => format!(
            r#"{{"seq":{seq},"cmd":"heartbeat","data":{{"ts":{}}}}}"#,
            rng.next()
        ),
        2 => format!(r#" {{ "cmd" : "position" , "seq" : {seq} , "extra":[1,{{"a":null}}] }} "#),
        3 => format!(r#"{{"cmd":"leave","seq":{seq},"ver":1}}"#),
        _ => format!(r#"{{"cmd":"x{}","seq":{seq}}}"#, rng.below(1000)),
    };
    (body, seq)
}

#[test]
fn random_cuts_of_valid_streams_decode_exactly() {
    for seed in 1..=200u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let frames: Vec<(String, u32)> = (0..rng.below(40) + 1)
            .map(|_| random_request(&mut rng))
            .collect();
        let mut stream = Vec::new();
        for (body, _) in &frames {
            stream.extend_from_slice(&(body.len() as u32).to_be_bytes());
            stream.extend_from_slice(body.as_bytes());
        }
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        let mut at = 0;
        while at < stream.len() {
            let cut = (rng.below(9) as usize).min(stream.len() - at).max(1);
            buf.extend_from_slice(&stream[at..at + cut]);
            at += cut;
            while let Some(len) = check_frame(&buf, MAX).expect("valid stream") {
                let body = &buf[HEADER_BYTES..HEADER_BYTES + len];
                let req = parse_request(body).expect("valid request");
                match req.cmd {
                    Cmd::Login => {
                        let login = parse_login(&req).expect("valid login");
                        assert!(login.queue.starts_with("q-"));
                        assert!(login.ticket.unwrap().starts_with("t\""));
                    }
                    Cmd::Heartbeat => assert!(parse_heartbeat(&req).unwrap().is_some()),
                    _ => {}
                }
                got.push((String::from_utf8(body.to_vec()).unwrap(), req.seq));
                buf.advance(HEADER_BYTES + len);
            }
        }
        assert!(buf.is_empty(), "seed {seed}: leftover bytes");
        assert_eq!(got, frames, "seed {seed}");
    }
}

#[test]
fn random_bytes_are_classified_from_the_header_alone() {
    let mut rng = Rng(0xdead_beef);
    for _ in 0..20_000 {
        let len = rng.below(64) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let verdict = check_frame(&bytes, MAX);
        if bytes.len() < HEADER_BYTES {
            assert_eq!(verdict, Ok(None));
            continue;
        }
        let declared = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        match verdict {
            Err(FrameError::ZeroLength) => assert_eq!(declared, 0),
            Err(FrameError::TooLong { len, max }) => {
                assert_eq!(len, declared);
                assert!(len > max);
            }
            Ok(None) => assert!(declared as usize > bytes.len() - HEADER_BYTES),
            Ok(Some(n)) => assert_eq!(n, declared as usize),
        }
        // Whatever the bytes, parsing never panics.
        let _ = parse_request(&bytes);
    }
}

#[test]
fn mutated_requests_never_panic() {
    let mut rng = Rng(0x1234_5678);
    for _ in 0..20_000 {
        let (body, _) = random_request(&mut rng);
        let mut bytes = body.into_bytes();
        for _ in 0..rng.below(4) + 1 {
            let i = rng.below(bytes.len() as u64) as usize;
            match rng.below(3) {
                0 => bytes[i] = rng.next() as u8,
                1 => {
                    bytes.remove(i);
                }
                _ => bytes.insert(i, b"{}[]\",:\\0"[rng.below(9) as usize]),
            }
            if bytes.is_empty() {
                break;
            }
        }
        if let Ok(req) = parse_request(&bytes) {
            let _ = parse_login(&req);
            let _ = parse_heartbeat(&req);
        }
    }
}
