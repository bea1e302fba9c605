//! No server bytes make the client panic: a seeded randomized run of the decoder the
//! SDK uses (random bytes, mutated and truncated valid frames, hostile JSON), and a
//! fake server that answers `login` with garbage, over a real socket.
//!
//! The seed is fixed (reproducible in CI) and can be changed with `QC_FUZZ_SEED`;
//! coverage-guided fuzzing of the same function is `client/fuzz` (cargo-fuzz).

use queue_client::codec::{decode_stream, Message, Push};
use queue_client::{Client, Error};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// splitmix64: small, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn seed() -> u64 {
    std::env::var("QC_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_C11E)
}

/// Valid server frames of every kind, and some near misses.
const BODIES: &[&str] = &[
    r#"{"cmd":"login","seq":1,"code":0,"msg":"ok","data":{"state":"waiting","position":3,"queue_len":9,"eta_secs":null,"resumed":false}}"#,
    r#"{"cmd":"login","seq":1,"code":0,"msg":"ok","data":{"state":"admitted","position":0,"queue_len":9,"eta_secs":0,"resumed":true}}"#,
    r#"{"cmd":"position","seq":0,"code":0,"msg":"ok","data":{"position":1,"queue_len":2,"eta_secs":4}}"#,
    r#"{"cmd":"admitted","seq":0,"code":0,"msg":"ok","data":{"token":"a.b.c","expires_at":1700000000,"login_addr":"10.0.0.1:9000"}}"#,
    r#"{"cmd":"kicked","seq":0,"code":0,"msg":"ok","data":{"reason":"shutdown","retry_after_secs":10}}"#,
    r#"{"cmd":"heartbeat","seq":7,"code":0,"msg":"ok","data":{"ts":null,"server_ms":1}}"#,
    r#"{"cmd":"login","seq":1,"code":9,"msg":"draining","data":{"retry_after_secs":30}}"#,
    r#"{"cmd":"","seq":0,"code":1,"msg":"bad frame","data":{}}"#,
    r#"{"cmd":"position","seq":0,"code":0,"data":{"position":-1,"queue_len":1e400}}"#,
    r#"{"cmd":"admitted","seq":0,"code":0,"data":{"token":7}}"#,
    r#"{"cmd":"kicked","data":null}"#,
    r#"{"seq":4294967296}"#,
    r#"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["#,
    "\u{0}\u{ffff}",
];

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// One random input: a stream of frames, some mutated.
fn input(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for _ in 0..1 + rng.below(4) {
        match rng.below(6) {
            0 => {
                // Pure noise.
                let n = rng.below(64);
                out.extend((0..n).map(|_| rng.next() as u8));
            }
            1 => {
                // A header announcing anything at all.
                out.extend_from_slice(&(rng.next() as u32).to_be_bytes());
            }
            _ => {
                let mut body = BODIES[rng.below(BODIES.len())].as_bytes().to_vec();
                for _ in 0..rng.below(4) {
                    if body.is_empty() {
                        break;
                    }
                    let at = rng.below(body.len());
                    match rng.below(4) {
                        0 => body[at] = rng.next() as u8,
                        1 => {
                            body.remove(at);
                        }
                        2 => body.insert(at, b"{}[]\",:0-e9\\"[rng.below(12)]),
                        _ => body.truncate(at),
                    }
                }
                let mut f = frame(&body);
                if rng.below(8) == 0 {
                    let cut = rng.below(f.len());
                    f.truncate(cut);
                }
                out.extend(f);
            }
        }
    }
    out
}

#[test]
fn random_server_bytes_never_panic_the_decoder() {
    let mut rng = Rng(seed());
    let mut decoded = 0usize;
    for _ in 0..30_000 {
        let bytes = input(&mut rng);
        let max = [16u32, 256, 65536][rng.below(3)];
        let (messages, _error) = decode_stream(&bytes, max);
        decoded += messages.len();
    }
    // The generator is not all noise: plenty of frames decode.
    assert!(decoded > 2_000, "only {decoded} frames decoded");
}

#[test]
fn valid_frames_decode_to_their_pushes() {
    let mut bytes = Vec::new();
    for b in &BODIES[2..5] {
        bytes.extend(frame(b.as_bytes()));
    }
    let (messages, error) = decode_stream(&bytes, 4096);
    assert_eq!(error, None);
    assert!(matches!(messages[0], Message::Push(Push::Position(_))));
    assert!(matches!(messages[1], Message::Push(Push::Admitted { .. })));
    assert!(matches!(messages[2], Message::Push(Push::Kicked { .. })));
}

/// A fake server answers `login` with random bytes and closes: `connect` returns an
/// error (never a panic, never a hang past the answer timeout).
#[tokio::test(flavor = "current_thread")]
async fn a_server_answering_garbage_is_an_error() {
    let mut rng = Rng(seed() ^ 1);
    let inputs: Vec<Vec<u8>> = (0..40).map(|_| input(&mut rng)).collect();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let replies = inputs.clone();
    let server = tokio::spawn(async move {
        for garbage in replies {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(&garbage).await;
        }
    });
    for garbage in &inputs {
        let result = Client::builder(addr.to_string())
            .user(1)
            .answer_timeout(std::time::Duration::from_secs(5))
            // SHUTTING_DOWN / RATE_LIMITED garbage would be waited out: give up at once.
            .max_reconnect_attempts(0)
            .connect()
            .await;
        match result {
            Err(Error::Decode(_) | Error::ConnectionLost { .. }) => {}
            Err(e) if e.is_refusal() => {}
            Err(Error::GaveUp { .. }) => {}
            Ok(_) => {} // the garbage happened to hold a valid login answer
            Err(e) => panic!("unexpected error {e:?} for {garbage:?}"),
        }
    }
    server.await.unwrap();
}
